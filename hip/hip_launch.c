/* Kernel ops of the HIP backend: launch shapes, per-queue scratch. Layer 4 of the backend:
 * errors -> memory -> submission -> kernels -> device.
 *
 * The dispatch layer has checked everything the host can see (queue, geometry, offsets, sizes
 * and alignment of the actual addresses, recall_direct's host offsets) and kept zero work
 * away; indices that live in device buffers are bounds-checked by the kernels.
 * Kernel arguments travel by value, so launches need no lock; a queue's lock guards only its
 * scratch (split attention partials, recall offsets) from first use to the last enqueue. */
#include <limits.h>
#include <string.h>

#include "../backends/launch.h"
#include "../common/error.h"
#include "hip_internal.h"
#include "hip_kernels.h"

_Static_assert(FKV_HIP_SCORE_LANES == FKV_SCORE_LANES && FKV_HIP_SCORES_PAD == FKV_SCORES_PAD,
               "the scores kernel's lanes and padding are launch.h's");


typedef struct launch_ctx {
    fkv_bdev *d;
    fkv_queue q;
    hipStream_t stream;
    const char *op;
} launch_ctx;

static void *at(const fkv_bbuf *b, size_t off) { return (char *)b->ptr + off; }


static void prepare(fkv_bdev *d, fkv_queue q, const fkv_deps *deps, const char *op,
                    launch_ctx *lc) {
    fkv_hip_clear_done(deps);
    lc->d = d;
    lc->q = q;
    lc->stream = d->streams[q];
    lc->op = op;
}

static uint32_t clamp_u32(size_t n) { return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n; }

/* Binds the device and makes the stream wait for deps (after every check passed). */
static fkv_status begin(const launch_ctx *lc, const fkv_deps *deps) {
    fkv_status st = fkv_hip_bind(lc->d);
    if (st == FKV_OK)
        st = fkv_hip_wait(lc->stream, deps);
    return st;
}

/* The launch's status, then the completion event. */
static fkv_status end(const launch_ctx *lc, hipError_t e, const char *kernel,
                      const fkv_deps *deps) {
    if (e != hipSuccess)
        return fkv_error_prefix(fkv_hip_fail(e, HIP_NOT_ALLOC, "kernel launch"), "hip %s (%s)",
                                lc->op, kernel);
    fkv_hip_count(lc->d, lc->q, 1, FKV_COPY_D2D, 0);
    return fkv_hip_done(lc->stream, deps);
}

/* ---- append, summarize, scores, cosine ---- */

fkv_status fkv_hip_append(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                          const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src,
                          size_t v_off, uint32_t n_rows, const fkv_bbuf *rows, size_t rows_off,
                          fkv_bbuf *kpool, fkv_bbuf *vpool) {
    const char *op = "append";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint64_t row_elems = (uint64_t)g->n_kv_heads * g->head_dim;
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size);
    fkv_hip_append_args a = {
        .k_src = at(k_src, k_off),
        .v_src = at(v_src, v_off),
        .rows = at(rows, rows_off),
        .n_rows = n_rows,
        .row_elems = (uint32_t)row_elems,
        .pool_rows = n_slots * g->page_size,
        .kpool = kpool->ptr,
        .vpool = vpool->ptr,
    };
    if ((st = begin(&lc, &deps)) != FKV_OK)
        return st;
    return end(&lc, fkv_hip_launch_append(lc.stream, g->dtype, &a), "k_append", &deps);
}

fkv_status fkv_hip_summarize(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                             const fkv_bbuf *kpool, uint32_t n_pages, const fkv_bbuf *pages,
                             size_t pages_off, fkv_bbuf *summaries) {
    const char *op = "summarize";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, kpool->desc.size);
    size_t summary_bytes = fkv_summary_bytes(g);
    fkv_hip_summarize_args a = {
        .kpool = kpool->ptr,
        .pages = at(pages, pages_off),
        .n_pages = n_pages,
        .n_kv_heads = g->n_kv_heads,
        .head_dim = g->head_dim,
        .page_size = g->page_size,
        .n_slots = n_slots,
        .n_summaries = clamp_u32(summaries->desc.size / summary_bytes),
        .summaries = summaries->ptr,
        .summ_f16 = g->summary_format == FKV_SUMMARY_F16,
    };
    if ((st = begin(&lc, &deps)) != FKV_OK)
        return st;
    return end(&lc, fkv_hip_launch_summarize(lc.stream, g->dtype, &a), "k_summarize", &deps);
}

/* ---- launch plans (the launches and check_geometry use these, so they agree) ---- */

#define SHARED_LIMIT "sharedMemPerBlock"
#define MAX_GRID_X 0x7fffffffu /* hip/kernels.hip: grid x of every launcher */

static fkv_status scores_plan(const fkv_bdev *d, const fkv_kv_geom *g, uint32_t n_seqs,
                              fkv_scores_plan *p) {
    fkv_status st = fkv_plan_scores("hip", g, d->shared_per_block, SHARED_LIMIT, p);
    if (st == FKV_OK && (uint64_t)n_seqs * g->n_kv_heads * p->blocks > MAX_GRID_X)
        st = fkv_error(FKV_ERR_UNSUPPORTED, "hip scores: %u sequences is too many blocks", n_seqs);
    return st;
}

static fkv_hip_scores_args scores_args(const fkv_kv_geom *g, const fkv_scores_plan *sp,
                                       const fkv_bbuf *qbuf, size_t q_off, const fkv_bbuf *desc,
                                       size_t desc_off, const fkv_bbuf *mask, size_t mask_off,
                                       const fkv_bbuf *summaries, fkv_bbuf *out,
                                       size_t out_off) {
    return (fkv_hip_scores_args){
        .q = at(qbuf, q_off),
        .q_rows = (qbuf->desc.size - q_off) /
                  (sizeof(float) * g->n_kv_heads * g->group * g->head_dim),
        .desc = at(desc, desc_off),
        .mask = mask ? at(mask, mask_off) : NULL,
        .summaries = summaries->ptr,
        .n_summaries = clamp_u32(summaries->desc.size / fkv_summary_bytes(g)),
        .summ_f16 = g->summary_format == FKV_SUMMARY_F16,
        .out = at(out, out_off),
        .out_len = (out->desc.size - out_off) / 4,
        .n_kv_heads = g->n_kv_heads,
        .group = g->group,
        .head_dim = g->head_dim,
        .heads = sp->heads,
    };
}

static fkv_hip_cosine_args cosine_args(const fkv_kv_geom *g, const fkv_bbuf *q_cur,
                                       size_t cur_off, const fkv_bbuf *q_prev, size_t prev_off,
                                       const fkv_bbuf *prev_rows, size_t rows_off, float tau,
                                       fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                                       size_t flags_off) {
    return (fkv_hip_cosine_args){
        .q_cur = at(q_cur, cur_off),
        .q_prev = at(q_prev, prev_off),
        .prev_count = (q_prev->desc.size - prev_off) /
                      (sizeof(float) * g->n_kv_heads * g->group * g->head_dim),
        .prev_rows = at(prev_rows, rows_off),
        .n_kv_heads = g->n_kv_heads,
        .group = g->group,
        .head_dim = g->head_dim,
        .tau = tau,
        .sims = at(sims, sims_off),
        .flags = at(flags, flags_off),
    };
}

/* scores, or (c: the check's arguments) scores_check, on lc's stream. */
static fkv_status scores_run(launch_ctx *lc, fkv_deps *deps, const fkv_kv_geom *g,
                             const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                             const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                             size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                             size_t out_off, const fkv_hip_cosine_args *c) {
    fkv_status st;
    fkv_scores_plan sp;
    if ((st = scores_plan(lc->d, g, n_seqs, &sp)) != FKV_OK)
        return st;
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    /* Enough blocks to fill the device; each strides over its sequence's pages. */
    uint32_t chunks = fkv_scores_chunks(n_bh * sp.blocks, lc->d->compute_units);
    fkv_hip_scores_args a =
        scores_args(g, &sp, qbuf, q_off, desc, desc_off, mask, mask_off, summaries, out, out_off);
    if ((st = begin(lc, deps)) != FKV_OK)
        return st;
    if (c)
        return end(lc, fkv_hip_launch_scores_check(lc->stream, &a, c, (uint32_t)n_bh, chunks),
                   "k_scores_check", deps);
    return end(lc, fkv_hip_launch_scores(lc->stream, &a, (uint32_t)n_bh, chunks), "k_scores",
               deps);
}

fkv_status fkv_hip_scores(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                          const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                          const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                          size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                          size_t out_off) {
    launch_ctx lc;
    prepare(dev, q, &deps, "scores", &lc);
    return scores_run(&lc, &deps, g, qbuf, q_off, n_seqs, desc, desc_off, mask, mask_off,
                      summaries, out, out_off, NULL);
}

/* k_scores_check runs k_cosine's check in blocks of the same size: cosine_flags' bits. */
fkv_status fkv_hip_scores_check(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                                const fkv_bbuf *desc, size_t desc_off,
                                const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off,
                                size_t cur_off, const fkv_bbuf *prev_rows, size_t rows_off,
                                float tau, fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                                size_t flags_off) {
    launch_ctx lc;
    prepare(dev, q, &deps, "scores_check", &lc);
    fkv_hip_cosine_args c = cosine_args(g, qbuf, cur_off, qbuf, q_off, prev_rows, rows_off, tau,
                                        sims, sims_off, flags, flags_off);
    return scores_run(&lc, &deps, g, qbuf, q_off, n_seqs, desc, desc_off, NULL, 0, summaries,
                      out, out_off, &c);
}

fkv_status fkv_hip_cosine_flags(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *q_cur, size_t cur_off, const fkv_bbuf *q_prev,
                                size_t prev_off, const fkv_bbuf *prev_rows, size_t rows_off,
                                uint32_t n_seqs, float tau, fkv_bbuf *sims, size_t sims_off,
                                fkv_bbuf *flags, size_t flags_off) {
    launch_ctx lc;
    prepare(dev, q, &deps, "cosine_flags", &lc);
    fkv_status st;
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    fkv_hip_cosine_args a = cosine_args(g, q_cur, cur_off, q_prev, prev_off, prev_rows, rows_off,
                                        tau, sims, sims_off, flags, flags_off);
    if ((st = begin(&lc, &deps)) != FKV_OK)
        return st;
    return end(&lc, fkv_hip_launch_cosine(lc.stream, &a, (uint32_t)n_bh), "k_cosine", &deps);
}

fkv_status fkv_hip_select_pages(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                                const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                                size_t scores_off, const fkv_select_params *p, fkv_bbuf *out,
                                size_t out_off) {
    launch_ctx lc;
    prepare(dev, q, &deps, "select_pages", &lc);
    fkv_status st;
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    fkv_hip_select_args a = {
        .desc = at(desc, desc_off),
        .mask = mask ? at(mask, mask_off) : NULL,
        .scores = at(scores, scores_off),
        .scores_len = (scores->desc.size - scores_off) / sizeof(float),
        .n_kv_heads = g->n_kv_heads,
        .group = g->group,
        .first = p->first_page,
        .k = p->k,
        .reduce = (uint32_t)p->reduce,
        .temp_scale = p->temp_scale,
        .out = at(out, out_off),
    };
    if (n_bh > UINT32_MAX)
        return fkv_error(FKV_ERR_UNSUPPORTED, "hip select_pages: %llu blocks is too many",
                         (unsigned long long)n_bh);
    if ((st = begin(&lc, &deps)) != FKV_OK)
        return st;
    return end(&lc, fkv_hip_launch_select(lc.stream, &a, (uint32_t)n_bh), "k_select_pages",
               &deps);
}

/* ---- layout moves ---- */

/* The copy kernels move 16-byte words when rows and every address involved allow, else
 * single elements (backends/launch.h). */
static uint64_t address_bits(const void *a, const void *b, const void *c) {
    return (uint64_t)((uintptr_t)a | (uintptr_t)b | (uintptr_t)c);
}

/* ---- quantized host formats (q8/q4, common/hostfmt.h): pack_hnd quantizes, scatter_hnd and
 * recall_direct dequantize into the slot dtype (k_quant_pack, k_dequant) ---- */

/* The quantizing pack's dynamic shared memory: (zero, scale) of a unit's D + P groups. */
static fkv_status quant_plan(const fkv_bdev *dev, const fkv_kv_geom *g) {
    size_t shared = 2 * ((size_t)g->head_dim + g->page_size) * sizeof(float);
    if (g->host_format != FKV_HOST_SAME && shared > dev->shared_per_block)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "hip pack_hnd (host format %s): %zu bytes of shared memory, more than "
                         "a block may use (%zu)",
                         fkv_host_format_name(g->host_format), shared, dev->shared_per_block);
    return FKV_OK;
}

/* pack_hnd, scatter_hnd and recall_direct implement q8 and q4. */
uint32_t fkv_hip_host_formats(fkv_bdev *dev) {
    (void)dev;
    return 1u << FKV_HOST_SAME | 1u << FKV_HOST_Q8 | 1u << FKV_HOST_Q4;
}

fkv_status fkv_hip_pack_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *kpool, const fkv_bbuf *vpool, uint32_t n_pages,
                            const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                            size_t dst_off) {
    const char *op = "pack_hnd";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size);
    if (g->host_format != FKV_HOST_SAME) {
        fkv_hip_quant_args qa = {
            .kpool = kpool->ptr,
            .vpool = vpool->ptr,
            .gslots = at(gslots, gslots_off),
            .n_pages = n_pages,
            .n_kv_heads = g->n_kv_heads,
            .head_dim = g->head_dim,
            .page_size = g->page_size,
            .n_slots = n_slots,
            .bits = fkv_hostfmt_bits(g->host_format),
            .unit_bytes = fkv_unit_bytes(g),
            .dst = at(dst, dst_off),
        };
        if ((st = quant_plan(dev, g)) != FKV_OK || (st = begin(&lc, &deps)) != FKV_OK)
            return st;
        return end(&lc, fkv_hip_launch_quant(lc.stream, g->dtype, &qa), "k_quant_pack", &deps);
    }
    fkv_copy_words cw =
        fkv_pick_copy_words(g, address_bits(at(dst, dst_off), kpool->ptr, vpool->ptr), 0);
    fkv_hip_pack_args a = {
        .kpool = kpool->ptr,
        .vpool = vpool->ptr,
        .gslots = at(gslots, gslots_off),
        .n_pages = n_pages,
        .n_kv_heads = g->n_kv_heads,
        .row_words = cw.row_words,
        .page_size = g->page_size,
        .n_slots = n_slots,
        .dst = at(dst, dst_off),
    };
    if ((st = begin(&lc, &deps)) != FKV_OK)
        return st;
    return end(&lc, fkv_hip_launch_pack(lc.stream, cw.word, &a), "k_pack", &deps);
}

fkv_status fkv_hip_scatter_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                               const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                               fkv_bbuf *vpool) {
    const char *op = "scatter_hnd";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size);
    fkv_copy_words cw =
        fkv_pick_copy_words(g, address_bits(at(src, src_off), kpool->ptr, vpool->ptr), 0);
    fkv_hip_scatter_args a = {
        .src = at(src, src_off),
        .units = at(units, units_off),
        .n_units = n_units,
        .n_kv_heads = g->n_kv_heads,
        .row_words = cw.row_words,
        .page_size = g->page_size,
        .n_slots = n_slots,
        .kpool = kpool->ptr,
        .vpool = vpool->ptr,
        .head_dim = g->head_dim,
        .bits = fkv_hostfmt_bits(g->host_format),
    };
    if ((st = begin(&lc, &deps)) != FKV_OK)
        return st;
    if (g->host_format != FKV_HOST_SAME)
        return end(&lc, fkv_hip_launch_dequant(lc.stream, g->dtype, &a), "k_dequant", &deps);
    return end(&lc, fkv_hip_launch_scatter(lc.stream, cw.word, &a), "k_scatter", &deps);
}

/* The device pointer and byte size of each host allocation, as the units table's host words
 * (backend.h direct_host_words): the caller's one table write carries them, so one launch
 * reaches every allocation. A device that cannot map host memory has no direct recall (its
 * words are 0; recall_direct refuses it). */
void fkv_hip_direct_host_words(fkv_bdev *dev, uint32_t n_hosts, const fkv_bhost *const *hosts,
                               int32_t *out) {
    (void)dev;
    for (uint32_t j = 0; j < n_hosts; j++, out += FKV_DIRECT_HOST_INTS) {
        uint64_t p = (uint64_t)(uintptr_t)hosts[j]->dev_ptr, size = hosts[j]->desc.size;
        out[0] = (int32_t)(uint32_t)p;
        out[1] = (int32_t)(uint32_t)(p >> 32);
        out[2] = (int32_t)(uint32_t)size;
        out[3] = (int32_t)(uint32_t)(size >> 32);
    }
}

/* One launch over every unit, whatever host allocation each lies in: the kernel takes each
 * allocation's device pointer and size from the units table after its entries
 * (fkv_hip_direct_host_words). The table is the caller's device buffer: nothing is copied or
 * waited for here. */
fkv_status fkv_hip_recall_direct(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                 uint32_t n_hosts, const fkv_bhost *const *hosts,
                                 uint32_t n_units, const fkv_direct_src *srcs,
                                 const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                                 fkv_bbuf *vpool) {
    const char *op = "recall_direct";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    fkv_status st;
    uint64_t bits = address_bits(NULL, kpool->ptr, vpool->ptr);
    for (uint32_t h = 0; h < n_hosts; h++) {
        if (hosts[h]->dev_ptr == NULL)
            return fkv_error(FKV_ERR_UNSUPPORTED,
                             "hip %s: device '%s' cannot map host memory (recall mode staged or "
                             "perpage)",
                             op, dev->info.name);
        bits |= (uintptr_t)hosts[h]->dev_ptr;
    }
    for (uint32_t i = 0; i < n_units; i++)
        bits |= srcs[i].offset;
    fkv_copy_words cw = fkv_pick_copy_words(g, bits, 0);
    const int32_t *table = at(units, units_off);
    fkv_hip_scatter_args a = {
        .host_words = table + (size_t)n_units * FKV_DIRECT_UNIT_INTS,
        .n_hosts = n_hosts,
        .elem_bytes = (uint32_t)fkv_dtype_size(g->dtype),
        .units = table,
        .n_units = n_units,
        .n_kv_heads = g->n_kv_heads,
        .row_words = cw.row_words,
        .page_size = g->page_size,
        .n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size),
        .kpool = kpool->ptr,
        .vpool = vpool->ptr,
        .head_dim = g->head_dim,
        .bits = fkv_hostfmt_bits(g->host_format),
    };
    if ((st = begin(&lc, &deps)) != FKV_OK)
        return st;
    hipError_t e = g->host_format != FKV_HOST_SAME ? fkv_hip_launch_dequant(lc.stream, g->dtype, &a)
                                                   : fkv_hip_launch_scatter(lc.stream, cw.word, &a);
    return end(&lc, e, "k_scatter (zero-copy)", &deps);
}

/* ---- attention ---- */

/* Splits over pages when (sequence, KV head) blocks alone cannot fill the device. */
static uint32_t attention_splits(const fkv_bdev *d, uint64_t n_groups) {
    return fkv_attention_splits(n_groups, d->compute_units, d->forced_splits);
}

/* The attention plan and its splits for n_bh (sequence, KV head) pairs. */
static fkv_status attention_plan(const fkv_bdev *d, const char *op, const fkv_kv_geom *g,
                                 uint64_t n_bh, fkv_attention_plan *p, uint32_t *splits) {
    fkv_status st = fkv_plan_attention("hip", op, g, d->shared_per_block, FKV_ATTENTION_MAX_TILE,
                                       SHARED_LIMIT, p);
    if (st == FKV_OK) /* four channels a thread (k_attention) */
        st = fkv_check_attention_threads("hip", op, g, p, 4, FKV_HIP_ATTENTION_BLOCK,
                                         "k_attention's FKV_HIP_ATTENTION_BLOCK");
    if (st != FKV_OK)
        return st;
    *splits = attention_splits(d, n_bh * p->blocks);
    if (n_bh * p->blocks * *splits > MAX_GRID_X)
        return fkv_error(FKV_ERR_UNSUPPORTED, "hip %s: %llu (sequence, KV head) pairs is too "
                         "many blocks", op, (unsigned long long)n_bh);
    return FKV_OK;
}

static fkv_status attention_launch(const launch_ctx *lc, const fkv_kv_geom *g, uint32_t n_seqs,
                                   fkv_hip_attention_args *a, const fkv_deps *deps) {
    fkv_bdev *d = lc->d;
    uint32_t n_bh = n_seqs * g->n_kv_heads, splits;
    fkv_attention_plan plan;
    fkv_status st0 = attention_plan(d, lc->op, g, n_bh, &plan, &splits);
    if (st0 != FKV_OK)
        return st0;
    a->n_kv_heads = g->n_kv_heads;
    a->group = g->group;
    a->head_dim = g->head_dim;
    a->page_size = g->page_size;
    a->tile = plan.tile;
    a->heads = plan.heads;
    a->threads = fkv_attention_threads(g, &plan, 4);
    a->shared_bytes = plan.floats * sizeof(float);
    a->n_splits = splits;

    hip_scratch *s = &d->scratch[lc->q];
    pthread_mutex_lock(&s->lock);
    /* Scratch first: growing it drains the stream, which must not wait for deps yet. */
    fkv_status st = fkv_hip_bind(d);
    if (st == FKV_OK && splits > 1)
        st = fkv_hip_scratch(d, lc->q, &s->partials, &s->partials_size,
                             (size_t)fkv_attention_partials_bytes(g, n_bh, splits));
    /* fused: the last block of each (pair, block) combines the splits (k_attention) */
    int fused = splits > 1 && d->fused_reduce;
    void *old_arrivals = s->arrivals;
    if (st == FKV_OK && fused)
        st = fkv_hip_scratch(d, lc->q, &s->arrivals, &s->arrivals_size,
                             (size_t)n_bh * plan.blocks * sizeof(unsigned int));
    if (st == FKV_OK)
        st = fkv_hip_wait(lc->stream, deps);
    if (st == FKV_OK) {
        a->part = splits > 1 ? s->partials : NULL;
        a->arrivals = fused ? (unsigned int *)s->arrivals : NULL;
        hipError_t e = hipSuccess;
        if (fused && s->arrivals != old_arrivals) { /* new counters start at zero */
            e = hipMemsetAsync(s->arrivals, 0, s->arrivals_size, lc->stream);
            if (e == hipSuccess)
                fkv_hip_count(lc->d, lc->q, 0, FKV_COPY_D2D, 0);
            else /* never zeroed: the next call replaces them */
                s->arrivals_size = 0;
        }
        if (e == hipSuccess)
            e = fkv_hip_launch_attention(lc->stream, g->dtype, a, n_bh);
        if (e == hipSuccess && splits > 1 && !fused)
            e = fkv_hip_launch_attention_reduce(lc->stream, s->partials, n_bh, g->group,
                                                g->head_dim, splits, a->out);
        if (e == hipSuccess && splits > 1 && !fused) /* end counts one launch, this the other */
            fkv_hip_count(lc->d, lc->q, 1, FKV_COPY_D2D, 0);
        st = end(lc, e, splits > 1 && !fused ? "k_attention + k_attention_reduce" : "k_attention",
                 deps);
    }
    pthread_mutex_unlock(&s->lock);
    return st;
}

fkv_status fkv_hip_attention(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                             const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                             const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                             size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                             float scale, fkv_bbuf *out, size_t out_off) {
    const char *op = "attention";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    uint32_t n_slots = fkv_pool_slots(g, kpool->desc.size, vpool->desc.size);
    size_t n_entries = (entries->desc.size - entries_off) / 8;
    fkv_hip_attention_args a = {
        .q = at(qbuf, q_off),
        .heads_list = at(heads, heads_off),
        .entries = at(entries, entries_off),
        .n_entries = n_entries > INT32_MAX ? INT32_MAX : (uint32_t)n_entries,
        .dense_tokens = -1,
        .kpool = kpool->ptr,
        .vpool = vpool->ptr,
        .n_slots = n_slots,
        .scale = scale,
        .out = at(out, out_off),
    };
    return attention_launch(&lc, g, n_seqs, &a, &deps);
}

fkv_status fkv_hip_attention_dense(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                   const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                   uint32_t n_tokens, const fkv_bbuf *k, const fkv_bbuf *v,
                                   float scale, fkv_bbuf *out, size_t out_off) {
    const char *op = "attention_dense";
    launch_ctx lc;
    prepare(dev, q, &deps, op, &lc);
    /* Contiguous [n][kv_heads][d] is a pool whose slot j holds tokens j*p..j*p+p-1. */
    fkv_hip_attention_args a = {
        .q = at(qbuf, q_off),
        .heads_list = NULL, /* not read in dense mode */
        .entries = NULL,
        .n_entries = 0,
        .dense_tokens = (int32_t)n_tokens,
        .kpool = k->ptr,
        .vpool = v->ptr,
        .n_slots = (n_tokens + g->page_size - 1) / g->page_size,
        .scale = scale,
        .out = at(out, out_off),
    };
    return attention_launch(&lc, g, 1, &a, &deps);
}

/* ---- device limits of a context's geometry (backend.h, check_geometry) ---- */

fkv_status fkv_hip_check_geometry(fkv_bdev *dev, const fkv_kv_geom *g, const fkv_geom_query *q) {
    fkv_status st;
    fkv_scores_plan sp;
    if ((st = scores_plan(dev, g, q->max_seqs, &sp)) != FKV_OK ||
        (st = quant_plan(dev, g)) != FKV_OK)
        return st;
    for (uint32_t n = 1; n <= q->max_seqs; n++) {
        fkv_attention_plan ap;
        uint32_t splits;
        uint64_t n_bh = (uint64_t)n * g->n_kv_heads;
        if ((st = attention_plan(dev, "attention", g, n_bh, &ap, &splits)) != FKV_OK)
            return st;
        if (splits > 1 &&
            fkv_attention_partials_bytes(g, n_bh, splits) > dev->info.max_buffer_bytes)
            return fkv_error(FKV_ERR_UNSUPPORTED,
                             "hip attention: split partials for %u sequences exceed the "
                             "device's largest buffer",
                             n);
    }
    return FKV_OK;
}
