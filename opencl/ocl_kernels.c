/* Kernel launches of the OpenCL backend: work sizes, scratch buffers.
 *
 * Each kernel queue (COMPUTE, BACKGROUND) has its own kernel objects and scratch, guarded by
 * its lock from the first clSetKernelArg to the last enqueue of an operation. The dispatch
 * layer has checked everything the host can see (queue, geometry, offsets, sizes) and kept
 * zero work away; indices that live in device buffers are bounds-checked by the kernels. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../backends/launch.h"
#include "../common/error.h"
#include "ocl_internal.h"

#define ELEMENTWISE_WG 128
#define COPY_WG 256 /* fewer, larger groups: per-group overhead dominates big copies on CPUs */
#define SCORES_WG 64
/* fkv_scores' summ_flags (kernels.cl FKV_SUMM_F16_FLAG, FKV_SUMM_WIDE_FLAG) */
#define SUMM_F16_FLAG 1u
#define SUMM_WIDE_FLAG 2u
#define COSINE_WG 64
#define SELECT_WG 128

typedef struct launch_ctx {
    fkv_bdev *d;
    ocl_program *prog;
    ocl_kqueue *kq;
    int kqi;
    cl_command_queue queue;
    const char *op;
} launch_ctx;

typedef struct kargs {
    cl_kernel k;
    const char *name;
    cl_uint i;
    cl_int err;
    cl_uint bad;
} kargs;

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

/* The launch context of an op on a kernel queue; the program comes later (load). */
static void prepare(fkv_bdev *d, fkv_queue q, const fkv_deps *deps, const char *op,
                    launch_ctx *lc) {
    fkv_ocl_clear_done(deps);
    lc->d = d;
    lc->op = op;
    lc->kqi = q == FKV_QUEUE_COMPUTE ? OCL_KQ_COMPUTE : OCL_KQ_BACKGROUND;
    lc->kq = &d->kq[lc->kqi];
    lc->queue = d->queues[q];
    lc->prog = NULL;
}

/* The program of the geometry's dtype, built (or loaded from the cache) on first use. */
static fkv_status load(launch_ctx *lc, const fkv_kv_geom *g) {
    return fkv_ocl_program(lc->d, g->dtype, &lc->prog);
}

static size_t wg_for(const launch_ctx *lc, ocl_kernel_id id, size_t want) {
    size_t m = lc->prog->wg_max[id];
    if (m == 0)
        m = 1;
    return want < m ? want : m;
}

static size_t local_avail(const launch_ctx *lc, ocl_kernel_id id) {
    cl_ulong used = lc->prog->local_used[id];
    return lc->d->local_mem > used ? (size_t)(lc->d->local_mem - used) : 0;
}

/* ---- launch plans (the launches and check_geometry use these, so they agree) ---- */

#define LOCAL_LIMIT "CL_DEVICE_LOCAL_MEM_SIZE less the kernel's own"

static fkv_status attention_plan(const launch_ctx *lc, const fkv_kv_geom *g,
                                 fkv_attention_plan *p) {
    fkv_status st = fkv_plan_attention("opencl", lc->op, g, local_avail(lc, K_ATTENTION),
                                       FKV_ATTENTION_MAX_TILE, LOCAL_LIMIT, p);
    if (st != FKV_OK)
        return st;
    return fkv_check_attention_threads("opencl", lc->op, g, p, lc->prog->attention_vec,
                                       lc->prog->wg_max[K_ATTENTION],
                                       "CL_KERNEL_WORK_GROUP_SIZE");
}

/* id: K_SCORES or K_SCORES_CHECK (the same queries in local memory) */
static fkv_status scores_plan(const launch_ctx *lc, ocl_kernel_id id, const fkv_kv_geom *g,
                              fkv_scores_plan *p) {
    return fkv_plan_scores("opencl", g, local_avail(lc, id), LOCAL_LIMIT, p);
}

/* The cosine kernel's work-group size: a power of two for its reduction tree, with three
 * floats of local memory per work item. */
static fkv_status cosine_plan(const launch_ctx *lc, size_t *w) {
    size_t cap = wg_for(lc, K_COSINE, COSINE_WG);
    *w = 1;
    while (*w * 2 <= cap)
        *w *= 2;
    while (*w > 1 && 3 * *w * sizeof(float) > local_avail(lc, K_COSINE))
        *w /= 2;
    if (3 * *w * sizeof(float) > local_avail(lc, K_COSINE))
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "opencl cosine_flags: 12 bytes of local memory are more than the device "
                         "has (" LOCAL_LIMIT ")");
    return FKV_OK;
}

/* select_pages' work-group size: a power of two (its scans and folds), with one float and one
 * uint of local memory per work item besides the 256-bin histogram. */
static size_t select_local(size_t w) { return w * sizeof(float) + (256 + w + 2) * sizeof(cl_uint); }

static fkv_status select_plan(const launch_ctx *lc, size_t *w) {
    size_t cap = wg_for(lc, K_SELECT, SELECT_WG);
    *w = 1;
    while (*w * 2 <= cap)
        *w *= 2;
    while (*w > 1 && select_local(*w) > local_avail(lc, K_SELECT))
        *w /= 2;
    if (select_local(*w) > local_avail(lc, K_SELECT))
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "opencl select_pages: %zu bytes of local memory are more than the "
                         "device has (" LOCAL_LIMIT ")", select_local(1));
    return FKV_OK;
}

/* The quantizing pack's local memory: (zero, scale) of the D key channel and P value token
 * groups of its unit, in f32. */
static size_t quant_local(const fkv_kv_geom *g) {
    return 2 * ((size_t)g->head_dim + g->page_size) * sizeof(float);
}

static fkv_status quant_plan(const launch_ctx *lc, const fkv_kv_geom *g) {
    if (g->host_format != FKV_HOST_SAME && quant_local(g) > local_avail(lc, K_QUANT_PACK))
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "opencl pack_hnd (host format %s): %zu bytes of local memory are more "
                         "than the device has (" LOCAL_LIMIT ")",
                         fkv_host_format_name(g->host_format), quant_local(g));
    return FKV_OK;
}

/* ---- arguments and enqueue (the caller holds the queue's lock) ---- */

static kargs args_of(const launch_ctx *lc, ocl_kernel_id id) {
    kargs a = {lc->prog->kernels[lc->kqi][id], fkv_ocl_kernel_names[id], 0, CL_SUCCESS, 0};
    return a;
}

static void arg(kargs *a, size_t size, const void *v) {
    cl_int e = clSetKernelArg(a->k, a->i, size, v);
    if (e != CL_SUCCESS && a->err == CL_SUCCESS) {
        a->err = e;
        a->bad = a->i;
    }
    a->i++;
}

static void arg_mem(kargs *a, const fkv_bbuf *b) { arg(a, sizeof(cl_mem), &b->mem); }
static void arg_cl_mem(kargs *a, cl_mem m) { arg(a, sizeof m, &m); }
static void arg_u32(kargs *a, uint32_t v) {
    cl_uint x = v;
    arg(a, sizeof x, &x);
}
static void arg_u64(kargs *a, uint64_t v) {
    cl_ulong x = v;
    arg(a, sizeof x, &x);
}
static void arg_i32(kargs *a, int32_t v) {
    cl_int x = v;
    arg(a, sizeof x, &x);
}
static void arg_f32(kargs *a, float v) {
    cl_float x = v;
    arg(a, sizeof x, &x);
}
static void arg_local(kargs *a, size_t bytes) { arg(a, bytes, NULL); }
static void arg_svm(kargs *a, const void *p) {
    cl_int e = clSetKernelArgSVMPointer(a->k, a->i, p);
    if (e != CL_SUCCESS && a->err == CL_SUCCESS) {
        a->err = e;
        a->bad = a->i;
    }
    a->i++;
}

static fkv_status enqueue(const launch_ctx *lc, kargs *a, cl_uint dims, const size_t *global,
                          const size_t *local, const fkv_deps *deps) {
    if (a->err != CL_SUCCESS) {
        return fkv_error_prefix(fkv_ocl_fail(a->err, 0, "clSetKernelArg"), "%s: %s argument %u",
                                lc->op, a->name, a->bad);
    }
    ocl_waits w;
    fkv_status st = fkv_ocl_waits(deps, &w);
    if (st != FKV_OK)
        return st;
    cl_event ev = NULL;
    cl_int err = clEnqueueNDRangeKernel(lc->queue, a->k, dims, NULL, global, local, w.n,
                                        w.n ? w.list : NULL, deps->done ? &ev : NULL);
    fkv_ocl_waits_free(&w);
    if (err != CL_SUCCESS)
        return fkv_error_prefix(fkv_ocl_fail(err, 0, "clEnqueueNDRangeKernel"), "%s (%s)", lc->op,
                                a->name);
    fkv_ocl_count(lc->d, lc->queue, 1, FKV_COPY_D2D, 0);
    fkv_ocl_done(deps, ev);
    return FKV_OK;
}

/* One work item per element, rounded up to whole work groups. */
static fkv_status enqueue_1d(const launch_ctx *lc, ocl_kernel_id id, kargs *a, size_t n,
                             const fkv_deps *deps) {
    size_t local = wg_for(lc, id, ELEMENTWISE_WG);
    size_t global = round_up(n, local);
    return enqueue(lc, a, 1, &global, &local, deps);
}

/* Copy kernels: one flat range of n_rows x row_words work items on dimension 0 (rows there
 * too, so no per-dimension grid cap applies), rounded up to whole work groups. */
static fkv_status enqueue_rows(const launch_ctx *lc, ocl_kernel_id id, kargs *a, size_t n_rows,
                               size_t row_words, const fkv_deps *deps) {
    size_t local = wg_for(lc, id, COPY_WG);
    size_t global = round_up(n_rows * row_words, local);
    return enqueue(lc, a, 1, &global, &local, deps);
}

/* Grows a per-queue scratch buffer (the old one is freed by OpenCL once the commands that
 * use it complete). */
static fkv_status ensure_scratch(fkv_bdev *d, cl_mem *mem, size_t *size, size_t need,
                                 int zeroed) {
    if (*mem && *size >= need)
        return FKV_OK;
    size_t want = need + need / 2;
    if (want > d->max_alloc)
        want = need;
    if (need > d->max_alloc)
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY,
                         "opencl: %zu bytes of scratch exceed the device's largest allocation",
                         need);
    /* zeroed: created from zeroed host memory, so no command fills it */
    void *zeros = zeroed ? calloc(1, want) : NULL;
    if (zeroed && zeros == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opencl: zeros for %zu bytes of scratch",
                         want);
    cl_int err;
    cl_mem m = clCreateBuffer(d->context, CL_MEM_READ_WRITE | (zeroed ? CL_MEM_COPY_HOST_PTR : 0),
                              want, zeros, &err);
    free(zeros);
    if (err != CL_SUCCESS)
        return fkv_ocl_fail(err, 1, "clCreateBuffer (scratch)");
    fkv_count_device_alloc(&d->counters);
    if (*mem)
        clReleaseMemObject(*mem);
    *mem = m;
    *size = want;
    return FKV_OK;
}

/* ---- ops ---- */

fkv_status fkv_ocl_append(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                          const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src,
                          size_t v_off, uint32_t n_rows, const fkv_bbuf *rows, size_t rows_off,
                          fkv_bbuf *kpool, fkv_bbuf *vpool) {
    const char *op = "append";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint64_t row_elems = (uint64_t)g->n_kv_heads * g->head_dim;
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size);
    if ((st = load(&lc, g)) != FKV_OK)
        return st;
    pthread_mutex_lock(&lc.kq->lock);
    kargs a = args_of(&lc, K_APPEND);
    arg_mem(&a, k_src);
    arg_u64(&a, k_off / 4);
    arg_mem(&a, v_src);
    arg_u64(&a, v_off / 4);
    arg_mem(&a, rows);
    arg_u64(&a, rows_off / 4);
    arg_u32(&a, n_rows);
    arg_u32(&a, (uint32_t)row_elems);
    arg_u32(&a, n_slots * g->page_size);
    arg_mem(&a, kpool);
    arg_mem(&a, vpool);
    st = enqueue_1d(&lc, K_APPEND, &a, (size_t)n_rows * row_elems, &deps);
    pthread_mutex_unlock(&lc.kq->lock);
    return st;
}

fkv_status fkv_ocl_summarize(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                             const fkv_bbuf *kpool, uint32_t n_pages, const fkv_bbuf *pages,
                             size_t pages_off, fkv_bbuf *summaries) {
    const char *op = "summarize";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, kpool->desc.size);
    size_t summary_bytes = fkv_summary_bytes(g);
    if ((st = load(&lc, g)) != FKV_OK)
        return st;
    size_t n_summaries = summaries->desc.size / summary_bytes;
    pthread_mutex_lock(&lc.kq->lock);
    kargs a = args_of(&lc, K_SUMMARIZE);
    arg_mem(&a, kpool);
    arg_mem(&a, pages);
    arg_u64(&a, pages_off / 4);
    arg_u32(&a, n_pages);
    arg_u32(&a, g->n_kv_heads);
    arg_u32(&a, g->head_dim);
    arg_u32(&a, g->page_size);
    arg_u32(&a, n_slots);
    arg_u32(&a, n_summaries > UINT32_MAX ? UINT32_MAX : (uint32_t)n_summaries);
    arg_mem(&a, summaries);
    arg_u32(&a, g->summary_format == FKV_SUMMARY_F16);
    st = enqueue_1d(&lc, K_SUMMARIZE, &a, (size_t)n_pages * g->n_kv_heads * g->head_dim, &deps);
    pthread_mutex_unlock(&lc.kq->lock);
    return st;
}

/* The launch of fkv_scores or fkv_scores_check (kernel id), which take the same arguments
 * first: the plan, enough work groups to fill the device (each strides over its sequence's
 * pages) and those arguments; then the check's (ck, NULL: none), whose tree reuses the
 * queries' local memory (at least 3 ck->w floats), and the enqueue. */
static fkv_status scores_launch(launch_ctx *lc, ocl_kernel_id id, fkv_deps *deps,
                                const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                                const fkv_bbuf *mask, size_t mask_off,
                                const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off,
                                const fkv_check_launch *ck) {
    fkv_status st;
    size_t summary_bytes = fkv_summary_bytes(g);
    if ((st = load(lc, g)) != FKV_OK)
        return st;
    fkv_scores_plan plan;
    if ((st = scores_plan(lc, id, g, &plan)) != FKV_OK)
        return st;
    size_t local_bytes = ((size_t)plan.heads * g->head_dim + FKV_SCORES_PAD) * 4;
    if (ck && 3 * ck->w * sizeof(float) > local_bytes)
        local_bytes = 3 * ck->w * sizeof(float);
    /* the CPU variants' wide pass (kernels.cl, FKV_WIDE_SCORES): a group of at most 4 query
     * heads in one block, every KV head's queries in local memory (FKV_WIDE_LOCAL) */
    size_t wide_bytes = ((size_t)g->n_kv_heads * 12 * g->head_dim + 1) * 4;
    int wide = lc->d->cpu_kernels && g->head_dim % 16 == 0 && g->group <= 4 &&
               plan.blocks == 1 && wide_bytes <= local_avail(lc, id);
    if (wide && wide_bytes > local_bytes)
        local_bytes = wide_bytes;
    if (local_bytes > local_avail(lc, id))
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "opencl %s: %zu bytes of local memory are more than the device has "
                         "(" LOCAL_LIMIT ")", lc->op, local_bytes);
    size_t n_summaries = summaries->desc.size / summary_bytes;
    size_t n_groups = (size_t)n_seqs * g->n_kv_heads * plan.blocks;
    size_t chunks = fkv_scores_chunks(n_groups, lc->d->compute_units);
    size_t local[2] = {wg_for(lc, id, SCORES_WG), 1};
    size_t global[2] = {local[0] * chunks, n_groups};
    pthread_mutex_lock(&lc->kq->lock);
    kargs a = args_of(lc, id);
    arg_mem(&a, qbuf);
    arg_u64(&a, q_off / 4);
    arg_u64(&a, (qbuf->desc.size - q_off) / (4 * (size_t)g->n_kv_heads * g->group * g->head_dim));
    arg_mem(&a, desc);
    arg_u64(&a, desc_off / 4);
    arg_mem(&a, mask ? mask : desc); /* any buffer when there is no mask */
    arg_u64(&a, mask_off / 4);
    arg_u32(&a, mask != NULL);
    arg_mem(&a, summaries);
    arg_u32(&a, n_summaries > UINT32_MAX ? UINT32_MAX : (uint32_t)n_summaries);
    arg_mem(&a, out);
    arg_u64(&a, out_off / 4);
    arg_u64(&a, (out->desc.size - out_off) / 4);
    arg_u32(&a, g->n_kv_heads);
    arg_u32(&a, g->group);
    arg_u32(&a, g->head_dim);
    arg_u32(&a, plan.heads);
    arg_local(&a, local_bytes);
    arg_u32(&a, (g->summary_format == FKV_SUMMARY_F16 ? SUMM_F16_FLAG : 0) |
                    (wide ? SUMM_WIDE_FLAG : 0));
    if (ck) {
        arg_u64(&a, ck->cur_off / 4);
        arg_mem(&a, ck->prev_rows);
        arg_u64(&a, ck->rows_off / 4);
        arg_f32(&a, ck->tau);
        arg_mem(&a, ck->sims);
        arg_u64(&a, ck->sims_off / 4);
        arg_mem(&a, ck->flags);
        arg_u64(&a, ck->flags_off / 4);
        arg_u32(&a, ck->w);
    }
    st = enqueue(lc, &a, 2, global, local, deps);
    pthread_mutex_unlock(&lc->kq->lock);
    return st;
}

fkv_status fkv_ocl_scores(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                          const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                          const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                          size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                          size_t out_off) {
    launch_ctx lc;
    prepare(dev, q, &deps, "scores", &lc);
    return scores_launch(&lc, K_SCORES, &deps, g, qbuf, q_off, n_seqs, desc, desc_off, mask,
                         mask_off, summaries, out, out_off, NULL);
}

/* The check runs with fkv_cosine's lane count (cosine_plan), so its bits are cosine_flags'. */
fkv_status fkv_ocl_scores_check(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                                const fkv_bbuf *desc, size_t desc_off,
                                const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off,
                                size_t cur_off, const fkv_bbuf *prev_rows, size_t rows_off,
                                float tau, fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                                size_t flags_off) {
    launch_ctx lc;
    prepare(dev, q, &deps, "scores_check", &lc);
    size_t w;
    fkv_status st = load(&lc, g);
    if (st == FKV_OK)
        st = cosine_plan(&lc, &w);
    if (st != FKV_OK)
        return st;
    fkv_check_launch ck = {.cur_off = cur_off, .prev_rows = prev_rows, .rows_off = rows_off,
                           .tau = tau, .sims = sims, .sims_off = sims_off, .flags = flags,
                           .flags_off = flags_off, .w = (uint32_t)w};
    return scores_launch(&lc, K_SCORES_CHECK, &deps, g, qbuf, q_off, n_seqs, desc, desc_off,
                         NULL, 0, summaries, out, out_off, &ck);
}

fkv_status fkv_ocl_select_pages(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                                const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                                size_t scores_off, const fkv_select_params *p, fkv_bbuf *out,
                                size_t out_off) {
    launch_ctx lc;
    prepare(dev, q, &deps, "select_pages", &lc);
    fkv_status st;
    size_t w;
    if ((st = load(&lc, g)) != FKV_OK || (st = select_plan(&lc, &w)) != FKV_OK)
        return st;
    size_t global = (size_t)n_seqs * g->n_kv_heads * w;
    pthread_mutex_lock(&lc.kq->lock);
    kargs a = args_of(&lc, K_SELECT);
    arg_mem(&a, desc);
    arg_u64(&a, desc_off / 4);
    arg_mem(&a, mask ? mask : desc); /* any buffer when there is no mask */
    arg_u64(&a, mask_off / 4);
    arg_u32(&a, mask != NULL);
    arg_mem(&a, scores);
    arg_u64(&a, scores_off / 4);
    arg_u64(&a, (scores->desc.size - scores_off) / 4);
    arg_u32(&a, g->n_kv_heads);
    arg_u32(&a, g->group);
    arg_u32(&a, p->first_page);
    arg_u32(&a, p->k);
    arg_u32(&a, (uint32_t)p->reduce);
    arg_f32(&a, p->temp_scale);
    arg_mem(&a, out);
    arg_u64(&a, out_off / 4);
    arg_local(&a, w * sizeof(float));
    arg_local(&a, (256 + w + 2) * sizeof(cl_uint));
    st = enqueue(&lc, &a, 1, &global, &w, &deps);
    pthread_mutex_unlock(&lc.kq->lock);
    return st;
}

fkv_status fkv_ocl_cosine_flags(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *q_cur, size_t cur_off, const fkv_bbuf *q_prev,
                                size_t prev_off, const fkv_bbuf *prev_rows, size_t rows_off,
                                uint32_t n_seqs, float tau, fkv_bbuf *sims, size_t sims_off,
                                fkv_bbuf *flags, size_t flags_off) {
    const char *op = "cosine_flags";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    if ((st = load(&lc, g)) != FKV_OK)
        return st;
    size_t w;
    if ((st = cosine_plan(&lc, &w)) != FKV_OK)
        return st;
    size_t global = (size_t)n_bh * w;
    pthread_mutex_lock(&lc.kq->lock);
    kargs a = args_of(&lc, K_COSINE);
    arg_mem(&a, q_cur);
    arg_u64(&a, cur_off / 4);
    arg_mem(&a, q_prev);
    arg_u64(&a, prev_off / 4);
    arg_u64(&a, (q_prev->desc.size - prev_off) /
                    (4 * (size_t)g->n_kv_heads * g->group * g->head_dim));
    arg_mem(&a, prev_rows);
    arg_u64(&a, rows_off / 4);
    arg_u32(&a, g->n_kv_heads);
    arg_u32(&a, g->group);
    arg_u32(&a, g->head_dim);
    arg_f32(&a, tau);
    arg_mem(&a, sims);
    arg_u64(&a, sims_off / 4);
    arg_mem(&a, flags);
    arg_u64(&a, flags_off / 4);
    arg_local(&a, 3 * w * sizeof(float));
    st = enqueue(&lc, &a, 1, &global, &w, &deps);
    pthread_mutex_unlock(&lc.kq->lock);
    return st;
}

/* ---- quantized host formats (q8/q4, common/hostfmt.h): pack_hnd quantizes, scatter_hnd and
 * recall_direct dequantize into the slot dtype ---- */

/* One work group per (page, KV head) unit. */
static fkv_status quant_pack(launch_ctx *lc, const fkv_kv_geom *g, const fkv_bbuf *kpool,
                             const fkv_bbuf *vpool, uint32_t n_pages, const fkv_bbuf *gslots,
                             size_t gslots_off, uint32_t n_slots, fkv_bbuf *dst, size_t dst_off,
                             const fkv_deps *deps) {
    fkv_status st = quant_plan(lc, g);
    if (st != FKV_OK)
        return st;
    pthread_mutex_lock(&lc->kq->lock);
    kargs a = args_of(lc, K_QUANT_PACK);
    arg_mem(&a, kpool);
    arg_mem(&a, vpool);
    arg_mem(&a, gslots);
    arg_u64(&a, gslots_off / 4);
    arg_u32(&a, g->n_kv_heads);
    arg_u32(&a, g->head_dim);
    arg_u32(&a, g->page_size);
    arg_u32(&a, n_slots);
    arg_u32(&a, fkv_hostfmt_bits(g->host_format));
    arg_mem(&a, dst);
    arg_u64(&a, dst_off);
    arg_local(&a, quant_local(g));
    size_t local = wg_for(lc, K_QUANT_PACK, ELEMENTWISE_WG);
    size_t global = (size_t)n_pages * g->n_kv_heads * local;
    st = enqueue(lc, &a, 1, &global, &local, deps);
    pthread_mutex_unlock(&lc->kq->lock);
    return st;
}

/* Work items of a dequantizing launch: one per tile of prog->attention_vec channels of K or V
 * of a unit (kernels.cl, fkv_dequant_item). */
static size_t dequant_items(const launch_ctx *lc, const fkv_kv_geom *g, uint32_t n_units) {
    size_t vw = lc->prog->attention_vec;
    return (size_t)n_units * 2 * ((g->head_dim + vw - 1) / vw);
}

static fkv_status dequant_scatter(launch_ctx *lc, const fkv_kv_geom *g, const fkv_bbuf *src,
                                  size_t src_off, uint32_t n_units, const fkv_bbuf *units,
                                  size_t units_off, uint32_t n_slots, fkv_bbuf *kpool,
                                  fkv_bbuf *vpool, const fkv_deps *deps) {
    pthread_mutex_lock(&lc->kq->lock);
    kargs a = args_of(lc, K_DEQUANT_SCATTER);
    arg_mem(&a, src);
    arg_u64(&a, src_off);
    arg_u64(&a, fkv_unit_bytes(g));
    arg_u32(&a, n_units);
    arg_mem(&a, units);
    arg_u64(&a, units_off / 4);
    arg_u32(&a, g->n_kv_heads);
    arg_u32(&a, g->head_dim);
    arg_u32(&a, g->page_size);
    arg_u32(&a, n_slots);
    arg_u32(&a, fkv_hostfmt_bits(g->host_format));
    arg_mem(&a, kpool);
    arg_mem(&a, vpool);
    fkv_status st = enqueue_1d(lc, K_DEQUANT_SCATTER, &a, dequant_items(lc, g, n_units), deps);
    pthread_mutex_unlock(&lc->kq->lock);
    return st;
}

/* Copy kernels move 16-byte words (the _V16 variants) when rows and offsets allow, else
 * single elements (backends/launch.h). */
fkv_status fkv_ocl_pack_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *kpool, const fkv_bbuf *vpool, uint32_t n_pages,
                            const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                            size_t dst_off) {
    const char *op = "pack_hnd";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size);
    if ((st = load(&lc, g)) != FKV_OK)
        return st;
    if (g->host_format != FKV_HOST_SAME)
        return quant_pack(&lc, g, kpool, vpool, n_pages, gslots, gslots_off, n_slots, dst,
                          dst_off, &deps);
    fkv_copy_words cw = fkv_pick_copy_words(g, dst_off, 0);
    ocl_kernel_id id = cw.word == 16 ? K_PACK_V16 : K_PACK;
    pthread_mutex_lock(&lc.kq->lock);
    kargs a = args_of(&lc, id);
    arg_mem(&a, kpool);
    arg_mem(&a, vpool);
    arg_mem(&a, gslots);
    arg_u64(&a, gslots_off / 4);
    arg_u32(&a, n_pages);
    arg_u32(&a, g->n_kv_heads);
    arg_u32(&a, cw.row_words);
    arg_u32(&a, g->page_size);
    arg_u32(&a, n_slots);
    arg_mem(&a, dst);
    arg_u64(&a, dst_off / cw.word);
    st = enqueue_rows(&lc, id, &a, (size_t)n_pages * g->n_kv_heads * 2 * g->page_size,
                      cw.row_words, &deps);
    pthread_mutex_unlock(&lc.kq->lock);
    return st;
}

fkv_status fkv_ocl_scatter_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                               const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                               fkv_bbuf *vpool) {
    const char *op = "scatter_hnd";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size);
    if ((st = load(&lc, g)) != FKV_OK)
        return st;
    if (g->host_format != FKV_HOST_SAME)
        return dequant_scatter(&lc, g, src, src_off, n_units, units, units_off, n_slots, kpool,
                               vpool, &deps);
    fkv_copy_words cw = fkv_pick_copy_words(g, src_off, 0);
    ocl_kernel_id id = cw.word == 16 ? K_SCATTER_V16 : K_SCATTER;
    pthread_mutex_lock(&lc.kq->lock);
    kargs a = args_of(&lc, id);
    arg_mem(&a, src);
    arg_u64(&a, src_off / cw.word);
    arg_u32(&a, n_units);
    arg_mem(&a, units);
    arg_u64(&a, units_off / 4);
    arg_u32(&a, g->n_kv_heads);
    arg_u32(&a, cw.row_words);
    arg_u32(&a, g->page_size);
    arg_u32(&a, n_slots);
    arg_mem(&a, kpool);
    arg_mem(&a, vpool);
    st = enqueue_rows(&lc, id, &a, (size_t)n_units * 2 * g->page_size, cw.row_words, &deps);
    pthread_mutex_unlock(&lc.kq->lock);
    return st;
}

/* The next table of the queue's ring, once the launch that read it last completed (asked
 * first: it is four recalls old; a host wait only when the device is that far behind), with
 * room for n hosts. Growing frees the old table: nothing reads it any more. */
static fkv_status host_table(fkv_bdev *d, ocl_kqueue *kq, uint32_t n, ocl_host_table **out) {
    ocl_host_table *t = &kq->tables[kq->next_table++ % OCL_HOST_TABLES];
    if (t->last) { /* its failure was the recall's to report: only completion matters */
        fkv_bevent *ev = (fkv_bevent *)(void *)t->last;
        int done = 0;
        if (fkv_ocl_event_query(d, ev, &done) != FKV_OK || !done)
            fkv_ocl_event_wait(d, 1, &ev);
        clReleaseEvent(t->last);
        t->last = NULL;
    }
    size_t per_host = 2 * sizeof(cl_ulong) + sizeof(void *), need = (size_t)n * per_host;
    if (t->cap < need) {
        /* room for 256 allocations (2 GiB of host pool) from the start: a recall's count
         * grows with the context, and growing later would allocate in steady state */
        size_t cap = need > 2 * t->cap ? need : 2 * t->cap;
        if (cap < 256 * per_host)
            cap = 256 * per_host;
        void *mem = clSVMAlloc(d->context, CL_MEM_READ_ONLY | CL_MEM_SVM_FINE_GRAIN_BUFFER, cap,
                               0);
        if (mem == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY,
                             "opencl recall_direct: clSVMAlloc of a %zu-byte host table", cap);
        fkv_count_host_alloc(&d->counters);
        if (t->mem)
            clSVMFree(d->context, t->mem);
        t->mem = mem;
        t->cap = cap;
    }
    *out = t;
    return FKV_OK;
}

/* One launch whatever the number of host allocations: their SVM pointers and sizes go into a
 * host table the kernel reads (fine-grained SVM, filled by the host: no copy command), and
 * clSetKernelExecInfo lists them, as pointers the kernel reaches through memory must be. The
 * unit table is the caller's device buffer: nothing is written to the device here. */
fkv_status fkv_ocl_recall_direct(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                 uint32_t n_hosts, const fkv_bhost *const *hosts,
                                 uint32_t n_units, const fkv_direct_src *srcs,
                                 const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                                 fkv_bbuf *vpool) {
    const char *op = "recall_direct";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    for (uint32_t h = 0; h < n_hosts; h++)
        if (!hosts[h]->svm)
            return fkv_error(FKV_ERR_UNSUPPORTED,
                             "opencl %s: host memory %u is a pinned buffer, not fine-grained SVM "
                             "(recall mode staged/perpage, or a device without SVM)",
                             op, h);
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size);
    uint64_t offset_bits = 0; /* the kernel reads 16-byte words only when every unit allows */
    for (uint32_t i = 0; i < n_units; i++)
        offset_bits |= srcs[i].offset;
    if ((st = load(&lc, g)) != FKV_OK)
        return st;
    int quantized = g->host_format != FKV_HOST_SAME;
    fkv_copy_words cw = fkv_pick_copy_words(g, offset_bits, 0);
    ocl_kernel_id id = quantized ? K_DEQUANT_DIRECT : cw.word == 16 ? K_DIRECT_V16 : K_DIRECT;
    pthread_mutex_lock(&lc.kq->lock);
    ocl_host_table *t = NULL;
    st = host_table(dev, lc.kq, n_hosts, &t);
    if (st != FKV_OK) {
        pthread_mutex_unlock(&lc.kq->lock);
        return st;
    }
    cl_ulong *addr = t->mem; /* n addresses, then n sizes */
    void **ptrs = (void **)(addr + 2 * (size_t)n_hosts); /* clSetKernelExecInfo's list */
    for (uint32_t h = 0; h < n_hosts; h++) {
        addr[h] = (cl_ulong)(uintptr_t)hosts[h]->ptr;
        addr[n_hosts + h] = hosts[h]->desc.size;
        ptrs[h] = hosts[h]->ptr;
    }
    kargs a = args_of(&lc, id);
    cl_int err = clSetKernelExecInfo(a.k, CL_KERNEL_EXEC_INFO_SVM_PTRS,
                                     n_hosts * sizeof(void *), ptrs);
    if (err != CL_SUCCESS) {
        pthread_mutex_unlock(&lc.kq->lock);
        return fkv_ocl_fail(err, 0, "clSetKernelExecInfo (recall_direct's host allocations)");
    }
    arg_svm(&a, addr);
    arg_u32(&a, n_hosts);
    arg_u32(&a, n_units);
    arg_mem(&a, units);
    arg_u64(&a, units_off / 4);
    arg_u32(&a, (uint32_t)fkv_dtype_size(g->dtype));
    if (quantized) {
        arg_u64(&a, fkv_unit_bytes(g));
        arg_u32(&a, g->n_kv_heads);
        arg_u32(&a, g->head_dim);
        arg_u32(&a, g->page_size);
        arg_u32(&a, n_slots);
        arg_u32(&a, fkv_hostfmt_bits(g->host_format));
    } else {
        arg_u32(&a, g->n_kv_heads);
        arg_u32(&a, cw.row_words);
        arg_u32(&a, g->page_size);
        arg_u32(&a, n_slots);
    }
    arg_mem(&a, kpool);
    arg_mem(&a, vpool);
    fkv_bevent *ev = NULL;
    fkv_deps kd = {deps.n_wait, deps.wait, &ev};
    st = quantized ? enqueue_1d(&lc, id, &a, dequant_items(&lc, g, n_units), &kd)
                   : enqueue_rows(&lc, id, &a, (size_t)n_units * 2 * g->page_size,
                                  cw.row_words, &kd);
    if (st == FKV_OK) { /* the table's reader, and the caller's event when asked */
        t->last = (cl_event)(void *)ev;
        if (deps.done) {
            clRetainEvent(t->last);
            *deps.done = ev;
        }
    }
    pthread_mutex_unlock(&lc.kq->lock);
    return st;
}

/* ---- attention ---- */

/* Splits over pages when (sequence, KV head) work groups alone cannot fill the device. */
static uint32_t attention_splits(const fkv_bdev *d, uint32_t n_groups) {
    return fkv_attention_splits(n_groups, d->compute_units, d->forced_splits);
}

typedef struct attn_args {
    const fkv_bbuf *q;
    size_t q_off;
    uint32_t n_seqs;
    cl_mem heads, entries;
    size_t heads_off, entries_off;
    uint32_t n_entries;
    int32_t dense_tokens;
    const fkv_bbuf *kpool, *vpool;
    uint32_t n_slots;
    float scale;
    fkv_bbuf *out;
    size_t out_off;
} attn_args;

static fkv_status attention_launch(launch_ctx *lc, const fkv_kv_geom *g, const attn_args *x,
                                   fkv_deps deps) {
    fkv_bdev *d = lc->d;
    fkv_status st = load(lc, g);
    if (st != FKV_OK)
        return st;
    uint32_t n_bh = x->n_seqs * g->n_kv_heads;
    fkv_attention_plan plan;
    if ((st = attention_plan(lc, g, &plan)) != FKV_OK)
        return st;
    uint32_t splits = attention_splits(d, n_bh * plan.blocks);
    size_t gd = (size_t)g->group * g->head_dim;
    size_t local = fkv_attention_threads(g, &plan, lc->prog->attention_vec);
    uint32_t dq = fkv_attention_dq(g->head_dim);
    size_t global = (size_t)n_bh * plan.blocks * splits * local;

    /* fused: the last work group of each (pair, block) combines the splits (kernels.cl) */
    int fused = splits > 1 && d->fused_reduce;
    pthread_mutex_lock(&lc->kq->lock);
    if (splits > 1)
        st = ensure_scratch(d, &lc->kq->partials, &lc->kq->partials_size,
                            (size_t)fkv_attention_partials_bytes(g, n_bh, splits), 0);
    /* the arrival counters start at zero, and every launch leaves them at zero (its last
     * work groups reset theirs) */
    if (st == FKV_OK && fused)
        st = ensure_scratch(d, &lc->kq->part_counts, &lc->kq->part_counts_size,
                            (size_t)n_bh * plan.blocks * sizeof(cl_uint), 1);
    if (st == FKV_OK) {
        kargs a = args_of(lc, K_ATTENTION);
        arg_mem(&a, x->q);
        arg_u64(&a, x->q_off / 4);
        arg_cl_mem(&a, x->heads);
        arg_u64(&a, x->heads_off / 4);
        arg_cl_mem(&a, x->entries);
        arg_u64(&a, x->entries_off / 4);
        arg_u32(&a, x->n_entries);
        arg_i32(&a, x->dense_tokens);
        arg_mem(&a, x->kpool);
        arg_mem(&a, x->vpool);
        arg_u32(&a, x->n_slots);
        arg_u32(&a, g->n_kv_heads);
        arg_u32(&a, g->group);
        arg_u32(&a, g->head_dim);
        arg_u32(&a, g->page_size);
        arg_u32(&a, plan.tile);
        arg_u32(&a, plan.heads);
        arg_u32(&a, dq);
        arg_u32(&a, splits);
        arg_f32(&a, x->scale);
        arg_mem(&a, x->out);
        arg_u64(&a, x->out_off / 4);
        arg_cl_mem(&a, splits > 1 ? lc->kq->partials : x->out->mem);
        arg_cl_mem(&a, fused ? lc->kq->part_counts : x->out->mem);
        arg_u32(&a, (uint32_t)fused);
        arg_local(&a, (size_t)plan.heads * dq * 4);
        arg_local(&a, (size_t)plan.tile * (dq + 4) * 4);
        arg_local(&a, (size_t)plan.heads * fkv_attention_dq(plan.tile) * 4);
        arg_local(&a, 3 * (size_t)plan.heads * 4);
        fkv_deps d1 = {deps.n_wait, deps.wait, splits > 1 && !fused ? NULL : deps.done};
        st = enqueue(lc, &a, 1, &global, &local, &d1);
    }
    if (st == FKV_OK && splits > 1 && !fused) {
        kargs a = args_of(lc, K_ATTENTION_REDUCE);
        arg_cl_mem(&a, lc->kq->partials);
        arg_u32(&a, n_bh);
        arg_u32(&a, g->group);
        arg_u32(&a, g->head_dim);
        arg_u32(&a, splits);
        arg_mem(&a, x->out);
        arg_u64(&a, x->out_off / 4);
        fkv_deps d2 = {0, NULL, deps.done}; /* in order after the partials */
        st = enqueue_1d(lc, K_ATTENTION_REDUCE, &a, (size_t)n_bh * gd, &d2);
    }
    pthread_mutex_unlock(&lc->kq->lock);
    return st;
}

fkv_status fkv_ocl_attention(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                             const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                             const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                             size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                             float scale, fkv_bbuf *out, size_t out_off) {
    const char *op = "attention";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    attn_args x;
    x.n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size);
    size_t n_entries = (entries->desc.size - entries_off) / 8;
    x.q = qbuf;
    x.q_off = q_off;
    x.n_seqs = n_seqs;
    x.heads = heads->mem;
    x.heads_off = heads_off;
    x.entries = entries->mem;
    x.entries_off = entries_off;
    x.n_entries = n_entries > INT32_MAX ? INT32_MAX : (uint32_t)n_entries;
    x.dense_tokens = -1;
    x.kpool = kpool;
    x.vpool = vpool;
    x.scale = scale;
    x.out = out;
    x.out_off = out_off;
    return attention_launch(&lc, g, &x, deps);
}

fkv_status fkv_ocl_attention_dense(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                   const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                   uint32_t n_tokens, const fkv_bbuf *k, const fkv_bbuf *v,
                                   float scale, fkv_bbuf *out, size_t out_off) {
    const char *op = "attention_dense";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    /* Contiguous [n][kv_heads][d] is a pool whose slot j holds tokens j*p..j*p+p-1. */
    attn_args x;
    x.q = qbuf;
    x.q_off = q_off;
    x.n_seqs = 1;
    x.heads = k->mem; /* not read in dense mode */
    x.heads_off = 0;
    x.entries = k->mem;
    x.entries_off = 0;
    x.n_entries = 0;
    x.dense_tokens = (int32_t)n_tokens;
    x.kpool = k;
    x.vpool = v;
    x.n_slots = (n_tokens + g->page_size - 1) / g->page_size;
    x.scale = scale;
    x.out = out;
    x.out_off = out_off;
    return attention_launch(&lc, g, &x, deps);
}

/* ---- device limits of a context's geometry (backend.h, check_geometry) ---- */

fkv_status fkv_ocl_check_geometry(fkv_bdev *dev, const fkv_kv_geom *g, const fkv_geom_query *q) {
    launch_ctx lc;
    fkv_deps none = {0, NULL, NULL};
    prepare(dev, FKV_QUEUE_COMPUTE, &none, "check_geometry", &lc);
    fkv_status st = load(&lc, g);
    if (st != FKV_OK)
        return st;
    fkv_attention_plan ap;
    fkv_scores_plan sp;
    size_t w;
    lc.op = "attention";
    if ((st = attention_plan(&lc, g, &ap)) != FKV_OK ||
        (st = scores_plan(&lc, K_SCORES, g, &sp)) != FKV_OK ||
        (st = scores_plan(&lc, K_SCORES_CHECK, g, &sp)) != FKV_OK ||
        (st = select_plan(&lc, &w)) != FKV_OK || (st = quant_plan(&lc, g)) != FKV_OK ||
        (st = cosine_plan(&lc, &w)) != FKV_OK)
        return st;
    if (3 * w * sizeof(float) > local_avail(&lc, K_SCORES_CHECK)) /* its tree, in the queries' */
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "opencl scores_check: %zu bytes of local memory are more than the "
                         "device has (" LOCAL_LIMIT ")", 3 * w * sizeof(float));
    /* split partials live in one scratch buffer per queue */
    for (uint32_t n = 1; n <= q->max_seqs; n++) {
        uint32_t n_bh = n * g->n_kv_heads;
        uint64_t need =
            fkv_attention_partials_bytes(g, n_bh, attention_splits(dev, n_bh * ap.blocks));
        if (need > dev->max_alloc)
            return fkv_error(FKV_ERR_UNSUPPORTED,
                             "opencl attention: %llu bytes of split partials for %u sequences "
                             "exceed the device's largest allocation (%llu, "
                             "CL_DEVICE_MAX_MEM_ALLOC_SIZE)",
                             (unsigned long long)need, n, (unsigned long long)dev->max_alloc);
    }
    return FKV_OK;
}

/* pack_hnd, scatter_hnd and recall_direct implement q8 and q4 (the kernels fkv_quant_pack,
 * fkv_dequant_scatter, fkv_dequant_direct). */
uint32_t fkv_ocl_host_formats(fkv_bdev *dev) {
    (void)dev;
    return 1u << FKV_HOST_SAME | 1u << FKV_HOST_Q8 | 1u << FKV_HOST_Q4;
}
