/* Kernel launches of the Vulkan backend: descriptor bindings of buffer ranges, workgroup
 * grids, the ops. The dispatch layer has checked the arguments; pipelines come from
 * vk_pipeline.c. Layer 4 of the backend: errors -> memory -> submission -> kernels (pipelines,
 * then launches) -> device.
 *
 * Every storage buffer is bound at an offset aligned down to minStorageBufferOffsetAlignment,
 * the rest of the offset travels in push constants (in elements), and a binding never spans
 * more than maxStorageBufferRange (lavapipe: 128 MiB). KV pools and summaries beyond it, and
 * host memory read by recall_direct, are bound in windows (one dispatch per window, see
 * plan_windows); anything else a kernel needs beyond it is refused as unsupported. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "../backends/launch.h"
#include "../common/error.h"
#include "vk_internal.h"

#define DESCRIPTOR_SETS_PER_COMMAND 256 /* windows x windows of one command: its descriptor sets */
#define ELEMENTWISE_WG 128
#define SCORES_WG 64
#define COSINE_WG 64
#define SELECT_WG 128
#define TEMP_ALLOCS 64 /* allocations of commands in flight: write staging, partials, unit lists */

/* ---- launches ---- */

typedef struct bind {
    VkBuffer buf;
    VkDeviceSize off, range;
} bind;

/* Buffers a kernel indexes in units (KV slots, page summaries) may exceed what one binding
 * reaches (maxStorageBufferRange: 128 MiB on lavapipe). The kernel then runs once per window
 * of `per` whole units, bound at the window's first unit (an offset the device's alignment
 * allows), and skips the units outside it: every unit is read or written in exactly one run. */
typedef struct unit_windows {
    uint64_t unit_bytes, n_units, per;
    uint32_t count;
} unit_windows;

/* A windowed binding: buffers at bindings b0 and b1 (-1: none) share the windows; the
 * window's first unit and unit count, times mult, go to push constants pc_first, pc_count. */
typedef struct win_bind {
    unit_windows w;
    int b0, b1;
    VkBuffer buf0, buf1;
    VkDeviceSize size0, size1;
    int pc_first, pc_count;
    uint32_t mult;
} win_bind;

typedef struct launch {
    fkv_bdev *d;
    const char *op;
    fkv_queue q;
    bind b[VK_N_BINDINGS];
    uint32_t pc[VK_PUSH_BYTES / 4];
    win_bind win[2]; /* pools, summaries */
    int n_win;
} launch;

static void prepare(fkv_bdev *d, fkv_queue q, const fkv_deps *deps, const char *op, launch *L) {
    fkv_vk_clear_done(deps);
    memset(L, 0, sizeof *L);
    L->d = d;
    L->op = op;
    L->q = q;
    for (int i = 0; i < VK_N_BINDINGS; i++)
        L->b[i] = (bind){d->dummy.buf, 0, VK_WHOLE_SIZE};
}

/* Where one binding of [off, off + need) of a buffer of `size` bytes starts (off aligned
 * down) and how far it reaches (to the buffer's end or the device's range limit); refused
 * when `need` lies beyond. The launches and check_geometry both ask this. */
static fkv_status binding_fits(const fkv_bdev *d, const char *op, const char *what,
                               VkDeviceSize size, VkDeviceSize off, uint64_t need, bind *out) {
    VkDeviceSize base = off / d->align * d->align;
    VkDeviceSize range = size - base;
    if (range > d->max_range)
        range = d->max_range / d->align * d->align;
    if (off - base + need > range)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan %s: %s needs %llu bytes in one binding, beyond the device's "
                         "maxStorageBufferRange (%llu)",
                         op, what, (unsigned long long)(off - base + need),
                         (unsigned long long)d->max_range);
    out->off = base;
    out->range = range;
    return FKV_OK;
}

/* Binds [off, off + need) of buffer b (size) at binding i; *elem = off's remainder past the
 * aligned binding start, in elements of `elem_size`. */
static fkv_status bind_range(launch *L, int i, VkBuffer buf, size_t size, size_t off,
                             uint64_t need, size_t elem_size, uint32_t *elem, const char *what) {
    bind b = {buf, 0, 0};
    fkv_status st = binding_fits(L->d, L->op, what, size, off, need, &b);
    if (st != FKV_OK)
        return st;
    L->b[i] = b;
    if (elem)
        *elem = (uint32_t)((off - b.off) / elem_size);
    return FKV_OK;
}

static fkv_status bind_buf(launch *L, int i, const fkv_bbuf *b, size_t off, uint64_t need,
                           size_t elem_size, uint32_t *elem, const char *what) {
    return bind_range(L, i, b->buf, b->bound, off, need, elem_size, elem, what);
}

static uint64_t gcd_u64(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Windows over n_units units of unit_bytes: one when they fit one binding. */
static fkv_status plan_windows(const fkv_bdev *d, const char *op, uint64_t unit_bytes,
                               uint64_t n_units, const char *what, unit_windows *w) {
    uint64_t range = d->window_override ? d->window_override : d->max_range;
    w->unit_bytes = unit_bytes;
    w->n_units = n_units;
    w->per = n_units;
    w->count = 1;
    if (n_units * unit_bytes <= range)
        return FKV_OK;
    uint64_t step = d->align / gcd_u64(unit_bytes, d->align); /* units per aligned offset */
    uint64_t per = range / unit_bytes / step * step;
    if (per == 0)
        per = step;
    if (per * unit_bytes > d->max_range)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan %s: a window of %s (%llu units of %llu bytes, at offsets aligned "
                         "to %llu) exceeds maxStorageBufferRange (%llu)",
                         op, what, (unsigned long long)per, (unsigned long long)unit_bytes,
                         (unsigned long long)d->align, (unsigned long long)d->max_range);
    uint64_t count = (n_units + per - 1) / per;
    if (count > DESCRIPTOR_SETS_PER_COMMAND)
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan %s: %s needs %llu windows", op, what,
                         (unsigned long long)count);
    w->per = per;
    w->count = (uint32_t)count;
    return FKV_OK;
}

/* Inner windows span exactly their units; the last runs on to the buffer's end (within the
 * range): the 32-bit words of 16-bit data past an odd end, a partial last page of dense K/V,
 * and a window of no units all stay inside a valid, non-empty binding. */
static VkDeviceSize window_range(const fkv_bdev *d, VkDeviceSize len, VkDeviceSize to_end,
                                 int last) {
    if (!last)
        return len;
    return to_end < d->max_range ? to_end : d->max_range / d->align * d->align;
}

/* Binds window k of b (see win_bind) and sets its push constants. */
static void apply_window(launch *L, const win_bind *b, uint32_t k) {
    uint64_t first = (uint64_t)k * b->w.per, rest = b->w.n_units - first;
    uint64_t n = rest < b->w.per ? rest : b->w.per;
    VkDeviceSize off = first * b->w.unit_bytes, len = n * b->w.unit_bytes;
    int last = first + n >= b->w.n_units;
    L->b[b->b0] = (bind){b->buf0, off, window_range(L->d, len, b->size0 - off, last)};
    if (b->b1 >= 0)
        L->b[b->b1] = (bind){b->buf1, off, window_range(L->d, len, b->size1 - off, last)};
    L->pc[b->pc_first] = (uint32_t)(first * b->mult);
    L->pc[b->pc_count] = (uint32_t)(n * b->mult);
}

/* Adds a windowed binding of buffers (buf0, size0) at b0 and (buf1, size1) at b1 (-1: none),
 * whose first n_units units of unit_bytes the kernel indexes; window 0 is bound. */
static fkv_status bind_windows(launch *L, int b0, VkBuffer buf0, VkDeviceSize size0, int b1,
                               VkBuffer buf1, VkDeviceSize size1, uint64_t unit_bytes,
                               uint64_t n_units, int pc_first, int pc_count, uint32_t mult,
                               const char *what) {
    win_bind *b = &L->win[L->n_win];
    fkv_status st = plan_windows(L->d, L->op, unit_bytes, n_units, what, &b->w);
    if (st != FKV_OK)
        return st;
    b->b0 = b0;
    b->b1 = b1;
    b->buf0 = buf0;
    b->buf1 = buf1;
    b->size0 = size0;
    b->size1 = size1;
    b->pc_first = pc_first;
    b->pc_count = pc_count;
    b->mult = mult;
    L->n_win++;
    apply_window(L, b, 0);
    return FKV_OK;
}

/* Whole slots both pools hold (kernels skip slots beyond), bound at ki and vi (-1: K only) in
 * windows; *n_slots is the pools' total. */
static fkv_status bind_pools(launch *L, const fkv_kv_geom *g, const fkv_bbuf *k,
                             const fkv_bbuf *v, int ki, int vi, int pc_first, int pc_count,
                             uint32_t mult, uint32_t *n_slots) {
    *n_slots = fkv_pool_slots(g, k->desc.size, v->desc.size);
    uint64_t slot_bytes = fkv_slot_bytes(g);
    return bind_windows(L, ki, k->buf, k->bound, vi, vi >= 0 ? v->buf : VK_NULL_HANDLE,
                        vi >= 0 ? v->bound : 0, slot_bytes, *n_slots, pc_first, pc_count,
                        mult, "the KV pools");
}

static void pc_f32(launch *L, int i, float f) { memcpy(&L->pc[i], &f, 4); }

/* Records one dispatch of `groups` workgroups (spilling into y past the x limit). */
static fkv_status record(vk_cmd *c, launch *L, VkPipeline p, uint32_t gx, uint32_t gy) {
    VkDescriptorSet set;
    fkv_status st = fkv_vk_cmd_set(c, &set);
    if (st != FKV_OK)
        return st;
    VkDescriptorBufferInfo bi[VK_N_BINDINGS];
    VkWriteDescriptorSet w[VK_N_BINDINGS];
    for (uint32_t i = 0; i < VK_N_BINDINGS; i++) {
        bi[i] = (VkDescriptorBufferInfo){L->b[i].buf, L->b[i].off, L->b[i].range};
        w[i] = (VkWriteDescriptorSet){VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, NULL, set, i, 0, 1,
                                      VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, NULL, &bi[i], NULL};
    }
    vkUpdateDescriptorSets(c->d->dev, VK_N_BINDINGS, w, 0, NULL);
    if (c->n_dispatch++) { /* dispatches of one command see each other's writes */
        VkMemoryBarrier mb = {VK_STRUCTURE_TYPE_MEMORY_BARRIER, NULL, VK_ACCESS_SHADER_WRITE_BIT,
                              VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT};
        vkCmdPipelineBarrier(c->rec.cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                             VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
    }
    vkCmdBindPipeline(c->rec.cb, VK_PIPELINE_BIND_POINT_COMPUTE, p);
    vkCmdBindDescriptorSets(c->rec.cb, VK_PIPELINE_BIND_POINT_COMPUTE, c->d->layout, 0, 1, &set,
                            0, NULL);
    vkCmdPushConstants(c->rec.cb, c->d->layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, sizeof L->pc,
                       L->pc);
    vkCmdDispatch(c->rec.cb, gx, gy, 1);
    fkv_vk_count(c, 1, FKV_COPY_D2D, 0);
    return FKV_OK;
}

/* Records the dispatch once per combination of windows (once when nothing is windowed). */
static fkv_status record_windows(vk_cmd *c, launch *L, VkPipeline p, uint32_t gx, uint32_t gy) {
    uint32_t n0 = L->n_win > 0 ? L->win[0].w.count : 1, n1 = L->n_win > 1 ? L->win[1].w.count : 1;
    fkv_status st = FKV_OK;
    for (uint32_t i = 0; i < n0 && st == FKV_OK; i++)
        for (uint32_t j = 0; j < n1 && st == FKV_OK; j++) {
            if (L->n_win > 0)
                apply_window(L, &L->win[0], i);
            if (L->n_win > 1)
                apply_window(L, &L->win[1], j);
            st = record(c, L, p, gx, gy);
        }
    return st;
}

static void grid_1d(const fkv_bdev *d, uint64_t items, uint32_t wg, uint32_t *gx, uint32_t *gy) {
    uint64_t groups = (items + wg - 1) / wg;
    uint64_t x = groups < d->max_groups[0] ? groups : d->max_groups[0];
    *gx = (uint32_t)(x ? x : 1);
    *gy = (uint32_t)((groups + *gx - 1) / *gx);
    if (*gy == 0)
        *gy = 1;
}

static uint32_t pick_wg(const fkv_bdev *d, uint32_t want) {
    uint32_t w = want < d->max_wg ? want : d->max_wg;
    /* a multiple of the subgroup size where possible */
    if (w >= d->subgroup)
        w = w / d->subgroup * d->subgroup;
    return w ? w : 1;
}

/* One command with one dispatch over `items` invocations of shader s. */
/* The workgroups of a 1-D launch of `items` invocations (x, spilling into y). The shaders'
 * flat invocation id is 32-bit (common.glsl, flat_id): more would wrap and redo early items. */
static fkv_status grid_1d_fits(const fkv_bdev *d, const char *op, uint64_t items, uint32_t *wg,
                               uint32_t *gx, uint32_t *gy) {
    if (items > UINT32_MAX)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan %s: %llu work items in one call is more than 32-bit invocation "
                         "ids count",
                         op, (unsigned long long)items);
    *wg = pick_wg(d, ELEMENTWISE_WG);
    grid_1d(d, items, *wg, gx, gy);
    if ((uint64_t)*gy > d->max_groups[1])
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan %s: %llu work items is more workgroups than "
                         "maxComputeWorkGroupCount allows",
                         op, (unsigned long long)items);
    return FKV_OK;
}

/* One command: shader s (workgroup size wg, smem shared floats) over gx x gy workgroups, once
 * per combination of windows. */
static fkv_status run_groups(launch *L, uint32_t shader, uint32_t wg, uint32_t smem, uint32_t gx,
                             uint32_t gy, const fkv_deps *deps) {
    VkPipeline p;
    fkv_status st = fkv_vk_pipeline(L->d, shader, wg, smem, &p);
    vk_cmd c;
    if (st != FKV_OK || (st = fkv_vk_cmd_begin(L->d, L->q, 0, &c)) != FKV_OK)
        return st;
    if ((st = record_windows(&c, L, p, gx, gy)) != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, deps, NULL);
}

static fkv_status run_1d(launch *L, uint32_t shader, uint64_t items, const fkv_deps *deps) {
    uint32_t wg, gx, gy;
    fkv_status st = grid_1d_fits(L->d, L->op, items, &wg, &gx, &gy);
    if (st != FKV_OK)
        return st;
    return run_groups(L, shader, wg, 1, gx, gy, deps);
}

static uint32_t dtype_variant(const fkv_bdev *d, fkv_dtype t) {
    if (t == FKV_F32)
        return 0;
    return (t == FKV_F16 ? 1 : 2) + (d->s16 ? 0 : 2);
}

/* ---- ops ---- */

fkv_status fkv_vk_append(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src, size_t v_off,
                         uint32_t n_rows, const fkv_bbuf *rows, size_t rows_off, fkv_bbuf *kpool,
                         fkv_bbuf *vpool) {
    launch L;
    prepare(dev, q, &deps, "append", &L);
    fkv_status st;
    uint64_t row_elems = (uint64_t)g->n_kv_heads * g->head_dim, n = n_rows * row_elems;
    uint32_t n_slots;
    if ((st = bind_pools(&L, g, kpool, vpool, 3, 4, 6, 5, g->page_size, &n_slots)) != FKV_OK)
        return st;
    if ((st = bind_buf(&L, 0, k_src, k_off, n * 4, 4, &L.pc[0], "k_src")) != FKV_OK ||
        (st = bind_buf(&L, 1, v_src, v_off, n * 4, 4, &L.pc[1], "v_src")) != FKV_OK ||
        (st = bind_buf(&L, 2, rows, rows_off, n_rows * 4ull, 4, &L.pc[2], "rows")) != FKV_OK)
        return st;
    L.pc[3] = n_rows;
    L.pc[4] = (uint32_t)row_elems;
    return run_1d(&L, S_APPEND + dtype_variant(dev, g->dtype), n, &deps);
}

fkv_status fkv_vk_summarize(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *kpool, uint32_t n_pages, const fkv_bbuf *pages,
                            size_t pages_off, fkv_bbuf *summaries) {
    launch L;
    prepare(dev, q, &deps, "summarize", &L);
    fkv_status st;
    uint32_t n_slots;
    size_t summary_bytes = fkv_summary_bytes(g);
    if ((st = bind_pools(&L, g, kpool, kpool, 0, -1, 7, 5, 1, &n_slots)) != FKV_OK)
        return st;
    size_t n_summ = summaries->desc.size / summary_bytes;
    if (n_summ > INT32_MAX)
        n_summ = INT32_MAX; /* summary indices are int32 */
    if ((st = bind_buf(&L, 1, pages, pages_off, n_pages * 8ull, 4, &L.pc[0], "pages")) != FKV_OK ||
        (st = bind_windows(&L, 2, summaries->buf, summaries->desc.size, -1, VK_NULL_HANDLE, 0,
                           summary_bytes, n_summ, 8, 6, 1, "the summaries")) != FKV_OK)
        return st;
    if ((uint64_t)L.win[0].w.count * L.win[1].w.count > DESCRIPTOR_SETS_PER_COMMAND)
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan summarize: %u x %u windows", L.win[0].w.count,
                         L.win[1].w.count);
    L.pc[1] = n_pages;
    L.pc[2] = g->n_kv_heads;
    L.pc[3] = g->head_dim;
    L.pc[4] = g->page_size;
    L.pc[9] = g->summary_format == FKV_SUMMARY_F16;
    return run_1d(&L, S_SUMMARIZE + dtype_variant(dev, g->dtype),
                  (uint64_t)n_pages * g->n_kv_heads * g->head_dim, &deps);
}

static uint32_t pow2_at_least(uint32_t n, uint32_t min) {
    uint32_t p = min;
    while (p < n)
        p *= 2;
    return p;
}

/* ---- launch plans (the launches and check_geometry use these, so they agree) ---- */

#define SHARED_LIMIT "maxComputeSharedMemorySize"

/* Shared floats of a pipeline: a power of two (fewer pipeline variants) where it fits. */
static uint32_t smem_floats(const fkv_bdev *d, size_t floats, uint32_t min) {
    uint32_t p = pow2_at_least((uint32_t)floats, min);
    return (uint64_t)p * 4 <= d->max_shared ? p : (uint32_t)floats;
}

typedef struct scores_launch {
    fkv_scores_plan p;
    uint32_t smem, rows; /* rows: workgroups along y, (sequence, KV head, head block) */
} scores_launch;

static fkv_status scores_plan(const fkv_bdev *d, const fkv_kv_geom *g, uint32_t n_seqs,
                              scores_launch *s) {
    fkv_status st = fkv_plan_scores("vulkan", g, d->max_shared, SHARED_LIMIT, &s->p);
    if (st != FKV_OK)
        return st;
    s->smem = smem_floats(d, (size_t)s->p.heads * g->head_dim + FKV_SCORES_PAD, 64);
    uint64_t rows = (uint64_t)n_seqs * g->n_kv_heads * s->p.blocks;
    if (rows > d->max_groups[1])
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan scores: %u sequences x %u KV heads x %u query-head blocks is "
                         "more workgroups than maxComputeWorkGroupCount[1] (%u)",
                         n_seqs, g->n_kv_heads, s->p.blocks, d->max_groups[1]);
    s->rows = (uint32_t)rows;
    return FKV_OK;
}

/* The cosine kernel's workgroup: a power of two for its tree, 3 shared floats per invocation,
 * one workgroup per (sequence, KV head). */
static fkv_status cosine_plan(const fkv_bdev *d, uint64_t n_bh, uint32_t *w) {
    uint32_t cap = pick_wg(d, COSINE_WG);
    *w = 1;
    while (*w * 2 <= cap && (uint64_t)*w * 2 * 12 <= d->max_shared)
        *w *= 2;
    if ((uint64_t)*w * 12 > d->max_shared)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan cosine_flags: 12 bytes of shared memory are more than the "
                         "device has (" SHARED_LIMIT ")");
    if (n_bh > d->max_groups[0])
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan cosine_flags: %llu (sequence, KV head) pairs is more "
                         "workgroups than maxComputeWorkGroupCount[0] (%u)",
                         (unsigned long long)n_bh, d->max_groups[0]);
    return FKV_OK;
}

/* select_pages' workgroup: a power of two for its scans and folds, with a float and a uint of
 * shared memory per invocation besides the 256-bin histogram; one workgroup per (sequence, KV
 * head). */
static uint64_t select_shared(uint32_t w) { return 8ull * w + 258 * 4; }

static fkv_status select_plan(const fkv_bdev *d, uint64_t n_bh, uint32_t *w) {
    uint32_t cap = pick_wg(d, SELECT_WG);
    *w = 1;
    while (*w * 2 <= cap && select_shared(*w * 2) <= d->max_shared)
        *w *= 2;
    if (select_shared(*w) > d->max_shared)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan select_pages: %llu bytes of shared memory are more than the "
                         "device has (" SHARED_LIMIT ")",
                         (unsigned long long)select_shared(1));
    if (n_bh > d->max_groups[0])
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan select_pages: %llu (sequence, KV head) pairs is more "
                         "workgroups than maxComputeWorkGroupCount[0] (%u)",
                         (unsigned long long)n_bh, d->max_groups[0]);
    return FKV_OK;
}

fkv_status fkv_vk_select_pages(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                               const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                               size_t scores_off, const fkv_select_params *p, fkv_bbuf *out,
                               size_t out_off) {
    launch L;
    prepare(dev, q, &deps, "select_pages", &L);
    fkv_status st;
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    uint32_t w;
    if ((st = select_plan(dev, n_bh, &w)) != FKV_OK)
        return st;
    if ((st = bind_buf(&L, 0, desc, desc_off, n_seqs * 16ull, 4, &L.pc[0], "desc")) != FKV_OK ||
        /* read and written at offsets from device data: all of it must be reachable */
        (st = bind_buf(&L, 1, scores, scores_off, scores->desc.size - scores_off, 4, &L.pc[1],
                       "scores")) != FKV_OK ||
        (st = bind_buf(&L, 2, out, out_off, n_bh * 8 * p->k, 4, &L.pc[8], "out")) != FKV_OK ||
        (mask && (st = bind_buf(&L, 3, mask, mask_off, n_bh * 4, 4, &L.pc[10], "mask")) !=
                     FKV_OK))
        return st;
    L.pc[11] = mask != NULL;
    uint64_t len = (L.b[1].range - (scores_off - L.b[1].off)) / 4;
    L.pc[2] = len > UINT32_MAX ? UINT32_MAX : (uint32_t)len;
    L.pc[3] = g->n_kv_heads;
    L.pc[4] = g->group;
    L.pc[5] = p->first_page;
    L.pc[6] = p->k;
    L.pc[7] = (uint32_t)p->reduce;
    pc_f32(&L, 9, p->temp_scale);
    VkPipeline pl;
    vk_cmd c;
    if ((st = fkv_vk_pipeline(dev, S_SELECT, w, 1, &pl)) != FKV_OK ||
        (st = fkv_vk_cmd_begin(dev, q, 0, &c)) != FKV_OK)
        return st;
    if ((st = record(&c, &L, pl, (uint32_t)n_bh, 1)) != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

/* One command of scores.comp: S_SCORES with an optional mask, or (ck) S_SCORES_CHECK, whose
 * check binds the current queries, the rows, sims and flags at 4 to 7 (no mask) and runs its
 * tree in the queries' shared memory (at least 3 ck->w floats). */
static fkv_status scores_run(launch *L, const fkv_deps *deps, const fkv_kv_geom *g,
                             const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                             const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                             size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                             size_t out_off, const fkv_check_launch *ck) {
    fkv_bdev *dev = L->d;
    fkv_status st;
    uint64_t q_row = (uint64_t)g->n_kv_heads * g->group * g->head_dim * 4;
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    size_t summary_bytes = fkv_summary_bytes(g);
    scores_launch sp;
    if ((st = scores_plan(dev, g, n_seqs, &sp)) != FKV_OK)
        return st;
    /* rows from device data: what one binding reaches of the buffer from q_off */
    if ((st = bind_buf(L, 0, qbuf, q_off, q_row, 4, &L->pc[0], "q")) != FKV_OK ||
        (st = bind_buf(L, 1, desc, desc_off, n_seqs * 16ull, 4, &L->pc[1], "desc")) != FKV_OK ||
        /* written at indices from device data: all of it must be reachable */
        (st = bind_buf(L, 3, out, out_off, out->desc.size - out_off, 4, &L->pc[3], "out")) !=
            FKV_OK ||
        (mask && (st = bind_buf(L, 4, mask, mask_off, n_bh * 4, 4, &L->pc[11], "mask")) !=
                     FKV_OK) ||
        (ck && ((st = bind_buf(L, 4, qbuf, ck->cur_off, n_seqs * q_row, 4, &L->pc[14],
                               "q_cur")) != FKV_OK ||
                (st = bind_buf(L, 5, ck->prev_rows, ck->rows_off, n_seqs * 4ull, 4, &L->pc[15],
                               "prev_rows")) != FKV_OK ||
                (st = bind_buf(L, 6, ck->sims, ck->sims_off, n_bh * 4, 4, &L->pc[16], "sims")) !=
                    FKV_OK ||
                (st = bind_buf(L, 7, ck->flags, ck->flags_off, n_bh * 4, 4, &L->pc[17],
                               "flags")) != FKV_OK)))
        return st;
    L->pc[12] = mask != NULL;
    L->pc[13] = g->summary_format == FKV_SUMMARY_F16;
    size_t n_summ = summaries->desc.size / summary_bytes;
    if ((st = bind_windows(L, 2, summaries->buf, summaries->desc.size, -1, VK_NULL_HANDLE, 0,
                           summary_bytes, n_summ < INT32_MAX ? n_summ : INT32_MAX, 8, 2, 1,
                           "the summaries")) != FKV_OK)
        return st;
    uint64_t out_len = (L->b[3].range - (out_off - L->b[3].off)) / 4;
    L->pc[4] = out_len > UINT32_MAX ? UINT32_MAX : (uint32_t)out_len;
    L->pc[5] = g->n_kv_heads;
    L->pc[6] = g->group;
    L->pc[7] = g->head_dim;
    L->pc[9] = sp.p.heads;
    uint64_t q_rows = (L->b[0].range - (q_off - L->b[0].off)) / q_row;
    L->pc[10] = q_rows > UINT32_MAX ? UINT32_MAX : (uint32_t)q_rows;
    uint32_t smem = sp.smem;
    if (ck) {
        pc_f32(L, 18, ck->tau);
        L->pc[19] = ck->w;
        smem = smem > 3 * ck->w ? smem : 3 * ck->w;
    }
    uint32_t chunks = fkv_scores_chunks(sp.rows, dev->compute_units);
    VkPipeline p;
    vk_cmd c;
    if ((st = fkv_vk_pipeline(dev, ck ? S_SCORES_CHECK : S_SCORES, pick_wg(dev, SCORES_WG), smem,
                              &p)) != FKV_OK ||
        (st = fkv_vk_cmd_begin(dev, L->q, 0, &c)) != FKV_OK)
        return st;
    if ((st = record_windows(&c, L, p, chunks, sp.rows)) != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, deps, NULL);
}

fkv_status fkv_vk_scores(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs, const fkv_bbuf *desc,
                         size_t desc_off, const fkv_bbuf *mask, size_t mask_off,
                         const fkv_bbuf *summaries, fkv_bbuf *out,
                         size_t out_off) {
    launch L;
    prepare(dev, q, &deps, "scores", &L);
    return scores_run(&L, &deps, g, qbuf, q_off, n_seqs, desc, desc_off, mask, mask_off,
                      summaries, out, out_off, NULL);
}

/* The check runs with cosine.comp's lane count (cosine_plan), so its bits are cosine_flags'. */
fkv_status fkv_vk_scores_check(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                               const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *summaries,
                               fkv_bbuf *out, size_t out_off, size_t cur_off,
                               const fkv_bbuf *prev_rows, size_t rows_off, float tau,
                               fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                               size_t flags_off) {
    launch L;
    prepare(dev, q, &deps, "scores_check", &L);
    fkv_check_launch ck = {.cur_off = cur_off, .prev_rows = prev_rows, .rows_off = rows_off,
                           .tau = tau, .sims = sims, .sims_off = sims_off, .flags = flags,
                           .flags_off = flags_off};
    fkv_status st = cosine_plan(dev, (uint64_t)n_seqs * g->n_kv_heads, &ck.w);
    if (st != FKV_OK)
        return st;
    return scores_run(&L, &deps, g, qbuf, q_off, n_seqs, desc, desc_off, NULL, 0, summaries, out,
                      out_off, &ck);
}

fkv_status fkv_vk_cosine_flags(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *q_cur, size_t cur_off, const fkv_bbuf *q_prev,
                               size_t prev_off, const fkv_bbuf *prev_rows, size_t rows_off,
                               uint32_t n_seqs, float tau, fkv_bbuf *sims, size_t sims_off,
                               fkv_bbuf *flags, size_t flags_off) {
    launch L;
    prepare(dev, q, &deps, "cosine_flags", &L);
    fkv_status st;
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    uint64_t q_row = (uint64_t)g->n_kv_heads * g->group * g->head_dim * 4;
    uint32_t w;
    if ((st = cosine_plan(dev, n_bh, &w)) != FKV_OK)
        return st;
    /* q_prev's rows come from device data: what one binding reaches from prev_off */
    if ((st = bind_buf(&L, 0, q_cur, cur_off, n_seqs * q_row, 4, &L.pc[0], "q_cur")) !=
            FKV_OK ||
        (st = bind_buf(&L, 1, q_prev, prev_off, 0, 4, &L.pc[1], "q_prev")) != FKV_OK ||
        (st = bind_buf(&L, 2, sims, sims_off, n_bh * 4, 4, &L.pc[5], "sims")) != FKV_OK ||
        (st = bind_buf(&L, 3, flags, flags_off, n_bh * 4, 4, &L.pc[6], "flags")) != FKV_OK ||
        (st = bind_buf(&L, 4, prev_rows, rows_off, n_seqs * 4ull, 4, &L.pc[8], "prev_rows")) !=
            FKV_OK)
        return st;
    L.pc[2] = g->n_kv_heads;
    L.pc[3] = g->group;
    L.pc[4] = g->head_dim;
    pc_f32(&L, 7, tau);
    uint64_t prev_count = (L.b[1].range - (prev_off - L.b[1].off)) / q_row;
    L.pc[9] = prev_count > UINT32_MAX ? UINT32_MAX : (uint32_t)prev_count;
    VkPipeline p;
    vk_cmd c;
    if ((st = fkv_vk_pipeline(dev, S_COSINE, w, 1, &p)) != FKV_OK ||
        (st = fkv_vk_cmd_begin(dev, q, 0, &c)) != FKV_OK)
        return st;
    if ((st = record(&c, &L, p, (uint32_t)n_bh, 1)) != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

/* Copy words (backends/launch.h): 16 bytes when rows and offsets allow, else 4, else one
 * 16-bit element. The copy shader's word variant: 16, 4, 16-bit storage, or the fallback
 * without it (shaders.def). */
static uint32_t copy_variant(const fkv_bdev *d, const fkv_copy_words *cw) {
    return cw->word == 16 ? 0 : cw->word == 4 ? 1 : d->s16 ? 2 : 3;
}

/* ---- quantized host formats (q8/q4, common/hostfmt.h; quant.comp): pack_hnd quantizes,
 * scatter_hnd and recall_direct dequantize into the slot dtype ---- */

/* The quantizing pack's shared memory in bytes: f32 (zero, scale) of the D + P groups of a
 * unit, a value token's pair in a vec4 of its own (quant.comp). */
static uint64_t quant_shared(const fkv_kv_geom *g) {
    return (2 * (uint64_t)g->head_dim + 4 * (uint64_t)g->page_size) * 4;
}

static fkv_status quant_plan(const fkv_bdev *d, const fkv_kv_geom *g, uint64_t units) {
    if (g->host_format == FKV_HOST_SAME)
        return FKV_OK;
    if (quant_shared(g) > d->max_shared)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan pack_hnd (host format %s): %llu bytes of shared memory, more "
                         "than " SHARED_LIMIT " (%u)",
                         fkv_host_format_name(g->host_format),
                         (unsigned long long)quant_shared(g), d->max_shared);
    uint32_t gx, gy;
    grid_1d(d, units, 1, &gx, &gy);
    if (gy > d->max_groups[1])
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan pack_hnd: %llu units in one call is too many",
                         (unsigned long long)units);
    return FKV_OK;
}

/* One workgroup per (page, KV head) unit; pools bound by the caller. */
static fkv_status quant_pack(launch *L, const fkv_kv_geom *g, uint32_t n_pages,
                             const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                             size_t dst_off, const fkv_deps *deps) {
    uint64_t units = (uint64_t)n_pages * g->n_kv_heads;
    fkv_status st = quant_plan(L->d, g, units);
    if (st != FKV_OK ||
        (st = bind_buf(L, 2, gslots, gslots_off, n_pages * 4ull, 4, &L->pc[2], "gslots")) !=
            FKV_OK ||
        (st = bind_buf(L, 3, dst, dst_off, units * fkv_unit_bytes(g), 1, &L->pc[0], "dst")) !=
            FKV_OK)
        return st;
    L->pc[1] = n_pages;
    L->pc[3] = g->n_kv_heads;
    L->pc[4] = g->head_dim;
    L->pc[5] = g->page_size;
    L->pc[8] = fkv_hostfmt_bits(g->host_format);
    uint32_t gx, gy;
    grid_1d(L->d, units, 1, &gx, &gy); /* one workgroup per unit */
    /* A CPU device runs a workgroup's lanes a vector at a time, and each loop of quant.comp
     * once more with none active: lanes beyond the D/4 + P groups of a unit only add that. */
    uint32_t groups = g->head_dim / 4 + g->page_size;
    uint32_t wg = L->d->is_cpu && groups < ELEMENTWISE_WG ? groups : ELEMENTWISE_WG;
    return run_groups(L, S_QUANT + dtype_variant(L->d, g->dtype), pick_wg(L->d, wg),
                      (uint32_t)(quant_shared(g) / 4), gx, gy, deps);
}

/* Invocations per unit of the dequantizing shaders: one per quad of key channels, one per
 * value token (quant.comp; a quantized format's head dim is a multiple of 4). */
static uint64_t dequant_per_unit(const fkv_kv_geom *g) {
    return g->head_dim / 4 + (uint64_t)g->page_size;
}

/* Pools bound by the caller. */
static fkv_status dequant_scatter(launch *L, const fkv_kv_geom *g, const fkv_bbuf *src,
                                  size_t src_off, uint32_t n_units, const fkv_bbuf *units,
                                  size_t units_off, const fkv_deps *deps) {
    uint64_t total = (uint64_t)n_units * dequant_per_unit(g);
    fkv_status st;
    if ((st = bind_buf(L, 2, units, units_off, n_units * 8ull, 4, &L->pc[2], "units")) !=
            FKV_OK ||
        (st = bind_buf(L, 3, src, src_off, n_units * fkv_unit_bytes(g), 1, &L->pc[0], "src")) !=
            FKV_OK)
        return st;
    L->pc[1] = n_units;
    L->pc[3] = g->n_kv_heads;
    L->pc[4] = g->head_dim;
    L->pc[5] = g->page_size;
    L->pc[7] = (uint32_t)total; /* run_1d refuses more than 32 bits */
    L->pc[8] = fkv_hostfmt_bits(g->host_format);
    return run_1d(L, S_QUANT + 1 * 5 + dtype_variant(L->d, g->dtype), total, deps);
}

/* pack_hnd, scatter_hnd and recall_direct implement q8 and q4 (quant.comp). */
uint32_t fkv_vk_host_formats(fkv_bdev *d) {
    (void)d;
    return 1u << FKV_HOST_SAME | 1u << FKV_HOST_Q8 | 1u << FKV_HOST_Q4;
}

fkv_status fkv_vk_pack_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                           const fkv_bbuf *kpool, const fkv_bbuf *vpool, uint32_t n_pages,
                           const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                           size_t dst_off) {
    launch L;
    prepare(dev, q, &deps, "pack_hnd", &L);
    fkv_status st;
    uint64_t page_bytes =
        (uint64_t)g->n_kv_heads * 2 * g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
    uint32_t n_slots;
    if ((st = bind_pools(&L, g, kpool, vpool, 0, 1, 9, 6, 1, &n_slots)) != FKV_OK)
        return st;
    if (g->host_format != FKV_HOST_SAME)
        return quant_pack(&L, g, n_pages, gslots, gslots_off, dst, dst_off, &deps);
    fkv_copy_words cw = fkv_pick_copy_words(g, dst_off, 1);
    uint32_t variant = copy_variant(dev, &cw), row_words = cw.row_words;
    size_t word = cw.word;
    uint64_t total = (uint64_t)n_pages * g->n_kv_heads * 2 * g->page_size * row_words;
    if (total > UINT32_MAX)
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan pack_hnd: %u pages in one call is too many",
                         n_pages);
    if ((st = bind_buf(&L, 2, gslots, gslots_off, n_pages * 4ull, 4, &L.pc[2], "gslots")) != FKV_OK ||
        (st = bind_buf(&L, 3, dst, dst_off, n_pages * page_bytes, word, &L.pc[0], "dst")) != FKV_OK)
        return st;
    L.pc[1] = n_pages;
    L.pc[3] = g->n_kv_heads;
    L.pc[4] = row_words;
    L.pc[5] = g->page_size;
    L.pc[7] = (uint32_t)total;
    return run_1d(&L, S_COPY + 0 * 4 + variant, total, &deps);
}

fkv_status fkv_vk_scatter_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                              const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                              const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                              fkv_bbuf *vpool) {
    launch L;
    prepare(dev, q, &deps, "scatter_hnd", &L);
    fkv_status st;
    uint64_t unit_bytes = fkv_unit_bytes(g);
    uint32_t n_slots;
    if ((st = bind_pools(&L, g, kpool, vpool, 0, 1, 9, 6, 1, &n_slots)) != FKV_OK)
        return st;
    if (g->host_format != FKV_HOST_SAME)
        return dequant_scatter(&L, g, src, src_off, n_units, units, units_off, &deps);
    fkv_copy_words cw = fkv_pick_copy_words(g, src_off, 1);
    uint32_t variant = copy_variant(dev, &cw), row_words = cw.row_words;
    size_t word = cw.word;
    uint64_t total = (uint64_t)n_units * 2 * g->page_size * row_words;
    if (total > UINT32_MAX)
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan scatter_hnd: %u units in one call is too many",
                         n_units);
    if ((st = bind_buf(&L, 2, units, units_off, n_units * 8ull, 4, &L.pc[2], "units")) != FKV_OK ||
        (st = bind_buf(&L, 3, src, src_off, n_units * unit_bytes, word, &L.pc[0], "src")) != FKV_OK)
        return st;
    L.pc[1] = n_units;
    L.pc[3] = g->n_kv_heads;
    L.pc[4] = row_words;
    L.pc[5] = g->page_size;
    L.pc[7] = (uint32_t)total;
    return run_1d(&L, S_COPY + 1 * 4 + variant, total, &deps);
}

/* Host windows one direct dispatch binds (bindings 3..7; copy.comp). */
#define DIRECT_WINDOWS 5

/* The window of host allocation `h` that serves a unit at byte `off`: a whole allocation that
 * fits one binding is window 0 at 0; a larger one is read in windows of `span` bytes that
 * start every `stride` bytes (aligned, overlapping by a unit), the unit in window off / stride. */
static void direct_window(const fkv_bdev *d, const fkv_bhost *h, uint64_t unit_bytes,
                          uint64_t off, uint64_t *base, uint64_t *len) {
    uint64_t size = h->desc.size;
    uint64_t span = size < d->max_range ? size : d->max_range / d->align * d->align;
    if (size <= span) {
        *base = 0;
        *len = size;
        return;
    }
    uint64_t stride = (span - unit_bytes) / d->align * d->align;
    *base = off / stride * stride;
    *len = size - *base < span ? size - *base : span;
}

void fkv_vk_direct_host_words(fkv_bdev *dev, uint32_t n_hosts, const fkv_bhost *const *hosts,
                              int32_t *out) {
    (void)dev;
    for (uint32_t j = 0; j < n_hosts; j++, out += FKV_DIRECT_HOST_INTS) {
        VkDeviceAddress a = hosts[j]->addr; /* 0 without bufferDeviceAddress: never read */
        uint64_t size = hosts[j]->desc.size;
        out[0] = (int32_t)(uint32_t)a;
        out[1] = (int32_t)(uint32_t)(a >> 32);
        out[2] = (int32_t)(uint32_t)size;
        out[3] = (int32_t)(uint32_t)(size >> 32);
    }
}

/* recall_direct through device addresses: one dispatch reads every unit from wherever it
 * lies, the allocations' addresses and sizes taken from the caller's units table after the
 * unit entries (fkv_vk_direct_host_words); with windowed pools, one dispatch per pool
 * window. */
static fkv_status direct_by_address(launch *L, const fkv_kv_geom *g, uint32_t n_hosts,
                                    const fkv_bhost *const *hosts, uint32_t n_units,
                                    const fkv_copy_words *cw, uint32_t variant,
                                    const fkv_deps *deps) {
    fkv_bdev *dev = L->d;
    uint64_t unit_words = 2ull * g->page_size * cw->row_words;
    if ((uint64_t)n_units * unit_words > UINT32_MAX)
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan recall_direct: too much in one call");
    for (uint32_t j = 0; j < n_hosts; j++)
        if (hosts[j]->addr == 0)
            return fkv_error(FKV_ERR_UNSUPPORTED,
                             "vulkan recall_direct: host allocation %u has no device address", j);
    uint32_t wg = pick_wg(dev, ELEMENTWISE_WG), gx, gy;
    grid_1d(dev, (uint64_t)n_units * unit_words, wg, &gx, &gy);
    VkPipeline p;
    vk_cmd c;
    fkv_status st = fkv_vk_pipeline(dev, S_COPY + 3 * 4 + variant, wg, 1, &p);
    if (st != FKV_OK || (st = fkv_vk_cmd_begin(dev, L->q, 0, &c)) != FKV_OK)
        return st;
    L->pc[0] = (uint32_t)(cw->word / fkv_dtype_size(g->dtype));
    L->pc[1] = n_units;
    L->pc[3] = g->n_kv_heads;
    L->pc[4] = cw->row_words;
    L->pc[5] = g->page_size;
    L->pc[7] = (uint32_t)((uint64_t)n_units * unit_words);
    L->pc[8] = n_hosts;
    if ((st = record_windows(&c, L, p, gx, gy)) != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, deps, NULL);
}

/* The table in runs of consecutive units that read one window (the recall engine groups units
 * by host, so a run is usually a whole host allocation); up to DIRECT_WINDOWS runs per
 * dispatch, all dispatches in one command buffer and one submit. The kernel reads the unit
 * table the caller wrote; nothing is uploaded here. With device addresses (dev->bda), the
 * same-format recall is direct_by_address: one dispatch however many allocations. */
fkv_status fkv_vk_recall_direct(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                uint32_t n_hosts, const fkv_bhost *const *hosts, uint32_t n_units,
                                const fkv_direct_src *srcs, const fkv_bbuf *units,
                                size_t units_off, fkv_bbuf *kpool, fkv_bbuf *vpool) {
    launch L;
    prepare(dev, q, &deps, "recall_direct", &L);
    fkv_status st;
    uint64_t unit_bytes = fkv_unit_bytes(g);
    size_t es = fkv_dtype_size(g->dtype);
    uint32_t n_slots;
    if ((st = bind_pools(&L, g, kpool, vpool, 0, 1, 9, 6, 1, &n_slots)) != FKV_OK)
        return st;
    uint64_t bits = 0;
    for (uint32_t i = 0; i < n_units; i++)
        bits |= srcs[i].offset;
    if (unit_bytes + dev->align > dev->max_range)
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan recall_direct: a unit exceeds one binding");
    /* window bases are multiples of dev->align: they count for the word too */
    fkv_copy_words cw = fkv_pick_copy_words(g, bits | dev->align, 1);
    uint32_t variant = copy_variant(dev, &cw), row_words = cw.row_words;
    int quantized = g->host_format != FKV_HOST_SAME;
    if (dev->bda && !quantized) {
        /* no window bases: the offsets alone decide the word */
        fkv_copy_words aw = fkv_pick_copy_words(g, bits, 1);
        uint32_t av = copy_variant(dev, &aw);
        uint64_t table = fkv_direct_table_ints(n_units, n_hosts, FKV_DIRECT_HOST_INTS);
        if ((st = bind_buf(&L, 2, units, units_off, table * 4, 4, &L.pc[2], "units")) != FKV_OK)
            return st;
        return direct_by_address(&L, g, n_hosts, hosts, n_units, &aw, av, &deps);
    }
    /* invocations per unit: one per word (copy.comp), dequant_per_unit (quant.comp) */
    uint64_t unit_words = quantized ? dequant_per_unit(g) : 2ull * g->page_size * row_words;
    if ((uint64_t)n_units * unit_words > UINT32_MAX)
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan recall_direct: too much in one call");
    if ((st = bind_buf(&L, 2, units, units_off, (uint64_t)n_units * FKV_DIRECT_UNIT_INTS * 4, 4,
                       &L.pc[2], "units")) != FKV_OK)
        return st;
    L.pc[0] = quantized ? (uint32_t)es | fkv_hostfmt_bits(g->host_format) << 8
                        : (uint32_t)(cw.word / es);
    L.pc[3] = g->n_kv_heads;
    L.pc[4] = quantized ? g->head_dim : row_words;
    L.pc[5] = g->page_size;
    uint32_t wg = pick_wg(dev, ELEMENTWISE_WG);
    uint32_t shader = quantized ? S_QUANT + 2 * 5 + dtype_variant(dev, g->dtype)
                                : S_COPY + 2 * 4 + variant;
    VkPipeline p;
    vk_cmd c;
    if ((st = fkv_vk_pipeline(dev, shader, wg, 1, &p)) != FKV_OK ||
        (st = fkv_vk_cmd_begin(dev, q, 0, &c)) != FKV_OK)
        return st;
    uint64_t n_dispatches = 0;
    for (uint32_t begin = 0; begin < n_units && st == FKV_OK;) {
        /* one dispatch: up to DIRECT_WINDOWS runs from `begin` */
        uint32_t end = begin;
        for (int k = 0; k < DIRECT_WINDOWS; k++) {
            if (end < n_units) {
                const fkv_bhost *h = hosts[srcs[end].host];
                uint64_t base, len, b2, l2;
                direct_window(dev, h, unit_bytes, srcs[end].offset, &base, &len);
                uint32_t run_end = end + 1;
                while (run_end < n_units && hosts[srcs[run_end].host] == h) {
                    direct_window(dev, h, unit_bytes, srcs[run_end].offset, &b2, &l2);
                    if (b2 != base)
                        break;
                    run_end++;
                }
                L.b[3 + k] = (bind){h->buf, base, len};
                L.pc[15 + k] = (uint32_t)(base / es);
                end = run_end;
            } else {
                L.b[3 + k] = (bind){dev->dummy.buf, 0, VK_WHOLE_SIZE};
                L.pc[15 + k] = 0;
            }
            L.pc[10 + k] = end;
        }
        uint64_t total = (uint64_t)(end - begin) * unit_words;
        L.pc[1] = end;
        L.pc[7] = (uint32_t)total;
        L.pc[8] = begin;
        uint32_t gx, gy;
        grid_1d(dev, total, wg, &gx, &gy);
        n_dispatches += L.win[0].w.count;
        if (n_dispatches > DESCRIPTOR_SETS_PER_COMMAND)
            st = fkv_error(FKV_ERR_UNSUPPORTED,
                           "vulkan recall_direct: more than %d host and pool windows in one call",
                           DESCRIPTOR_SETS_PER_COMMAND);
        else
            st = record_windows(&c, &L, p, gx, gy);
        begin = end;
    }
    if (st != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

/* ---- attention ---- */

/* Splits over pages when (sequence, KV head) workgroups alone cannot fill the device. */
static uint32_t attention_splits(const fkv_bdev *d, uint32_t n_groups) {
    return fkv_attention_splits(n_groups, d->compute_units, d->forced_splits);
}

typedef struct attn_launch {
    fkv_attention_plan p;
    uint32_t splits, total_splits, smem, groups; /* groups: workgroups of one window's run */
    uint32_t wg;                                 /* invocations per workgroup */
    VkDeviceSize part_bytes;                       /* split partials, when total_splits > 1 */
} attn_launch;

/* The attention launch for n_bh (sequence, KV head) pairs over n_windows pool windows. */
static fkv_status attention_plan(const fkv_bdev *d, const char *op, const fkv_kv_geom *g,
                                 uint32_t n_bh, uint32_t n_windows, attn_launch *a) {
    fkv_status st = fkv_plan_attention("vulkan", op, g, d->max_shared, FKV_ATTENTION_MAX_TILE,
                                       SHARED_LIMIT, &a->p);
    if (st == FKV_OK)
        st = fkv_check_attention_threads("vulkan", op, g, &a->p, 4, d->max_wg,
                                         "maxComputeWorkGroupSize[0] and "
                                         "maxComputeWorkGroupInvocations");
    if (st != FKV_OK)
        return st;
    /* four channels an invocation (attention.comp), whole subgroups where the device allows */
    uint32_t threads = fkv_attention_threads(g, &a->p, 4);
    uint32_t whole = (threads + d->subgroup - 1) / d->subgroup * d->subgroup;
    a->wg = whole <= d->max_wg ? whole : threads;
    uint64_t per_split = (uint64_t)n_bh * a->p.blocks;
    uint32_t splits = attention_splits(d, per_split > UINT32_MAX ? UINT32_MAX : (uint32_t)per_split);
    if ((uint64_t)splits * n_windows > FKV_MAX_SPLITS) /* windows already split the work */
        splits = FKV_MAX_SPLITS / n_windows > 1 ? FKV_MAX_SPLITS / n_windows : 1;
    if (per_split * splits > d->max_groups[0])
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan %s: %u (sequence, KV head) pairs x %u query-head blocks x %u "
                         "splits is more workgroups than maxComputeWorkGroupCount[0] (%u)",
                         op, n_bh, a->p.blocks, splits, d->max_groups[0]);
    a->splits = splits;
    a->total_splits = splits * n_windows;
    a->groups = (uint32_t)(per_split * splits);
    a->smem = smem_floats(d, a->p.floats, 256);
    a->part_bytes = fkv_attention_partials_bytes(g, n_bh, a->total_splits);
    if (a->total_splits > 1 && a->part_bytes > d->max_range)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan %s: %llu bytes of split partials exceed maxStorageBufferRange",
                         op, (unsigned long long)a->part_bytes);
    return FKV_OK;
}

typedef struct attn_args {
    const fkv_bbuf *q, *heads, *entries, *kpool, *vpool;
    fkv_bbuf *out;
    size_t q_off, heads_off, entries_off, out_off;
    uint32_t n_seqs, n_entries;
    int32_t dense_tokens;
    float scale;
} attn_args;

/* The stream's arrival counters for a fused split attention recorded into c: allocated and
 * filled with zeros (recorded before the dispatch) by the first command that needs them;
 * *filled says whether c records that fill. */
static fkv_status arrival_counters(vk_cmd *c, int *filled) {
    vk_fqueue *fq = c->fq;
    *filled = 0;
    if (fq->arrivals_zeroed)
        return FKV_OK;
    fkv_status st = FKV_OK;
    if (fq->arrivals.buf == VK_NULL_HANDLE &&
        (st = fkv_vk_temp_alloc(c->d, VK_ARRIVALS * 4ull, 0, 0, &fq->arrivals)) != FKV_OK) {
        fq->arrivals = (vk_temp){0};
        return st;
    }
    vkCmdFillBuffer(c->rec.cb, fq->arrivals.buf, 0, VK_WHOLE_SIZE, 0);
    fkv_vk_count(c, 0, FKV_COPY_D2D, 0);
    VkMemoryBarrier mb = {VK_STRUCTURE_TYPE_MEMORY_BARRIER, NULL, VK_ACCESS_TRANSFER_WRITE_BIT,
                          VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT};
    vkCmdPipelineBarrier(c->rec.cb, VK_PIPELINE_STAGE_TRANSFER_BIT,
                         VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
    fq->arrivals_zeroed = 1; /* under the stream's lock; undone if c is not submitted */
    *filled = 1;
    return FKV_OK;
}

static fkv_status attention_launch(launch *L, const fkv_kv_geom *g, const attn_args *x,
                                   fkv_deps deps) {
    fkv_bdev *d = L->d;
    uint32_t n_slots;
    fkv_status st;
    if (x->dense_tokens >= 0) {
        /* Contiguous [n][kv_heads][d] is a pool whose slot j holds tokens j*p..j*p+p-1; the
         * last slot may be partial (the kernel reads valid rows only). */
        uint64_t slot_bytes = fkv_slot_bytes(g);
        n_slots = (uint32_t)((x->dense_tokens + g->page_size - 1) / g->page_size);
        if ((st = bind_windows(L, 3, x->kpool->buf, x->kpool->bound, 4, x->vpool->buf,
                               x->vpool->bound, slot_bytes, n_slots, 14, 5, 1, "k and v")) !=
            FKV_OK)
            return st;
    } else if ((st = bind_pools(L, g, x->kpool, x->vpool, 3, 4, 14, 5, 1, &n_slots)) != FKV_OK) {
        return st;
    }
    /* Each window writes its own partials, merged by attention_reduce like splits. */
    uint32_t n_windows = L->win[0].w.count;
    uint32_t n_bh = x->n_seqs * g->n_kv_heads;
    attn_launch a;
    if ((st = attention_plan(d, L->op, g, n_bh, n_windows, &a)) != FKV_OK)
        return st;
    uint32_t splits = a.splits, total_splits = a.total_splits;
    size_t gd = (size_t)g->group * g->head_dim;
    uint64_t q_bytes = (uint64_t)n_bh * gd * 4;
    if ((st = bind_buf(L, 0, x->q, x->q_off, q_bytes, 4, &L->pc[0], "q")) != FKV_OK ||
        (st = bind_buf(L, 5, x->out, x->out_off, q_bytes, 4, &L->pc[13], "out")) != FKV_OK)
        return st;
    if (x->dense_tokens < 0 &&
        ((st = bind_buf(L, 1, x->heads, x->heads_off, n_bh * 8ull, 4, &L->pc[1], "heads")) != FKV_OK ||
         (st = bind_buf(L, 2, x->entries, x->entries_off, x->entries->desc.size - x->entries_off, 4,
                        &L->pc[2], "entries")) != FKV_OK))
        return st;
    uint32_t n_entries = x->n_entries;
    if (x->dense_tokens < 0) {
        uint64_t bound = (L->b[2].range - (x->entries_off - L->b[2].off)) / 8;
        if (bound < n_entries)
            n_entries = (uint32_t)bound;
    }
    L->pc[3] = n_entries;
    memcpy(&L->pc[4], &x->dense_tokens, 4);
    L->pc[6] = g->n_kv_heads;
    L->pc[7] = g->group;
    L->pc[8] = g->head_dim;
    L->pc[9] = g->page_size;
    L->pc[10] = a.p.tile;
    L->pc[11] = splits;
    pc_f32(L, 12, x->scale);
    L->pc[16] = total_splits;
    L->pc[17] = a.p.heads;
    /* fused: the last workgroup of each (pair, block) combines the splits (attention.comp) */
    int fused = total_splits > 1 && d->fused_reduce && (uint64_t)n_bh * a.p.blocks <= VK_ARRIVALS;
    L->pc[18] = (uint32_t)fused;
    uint32_t wg = a.wg;
    VkPipeline p, pr = VK_NULL_HANDLE;
    if ((st = fkv_vk_pipeline(d, S_ATTENTION + dtype_variant(d, g->dtype), wg, a.smem, &p)) != FKV_OK ||
        (total_splits > 1 && !fused &&
         (st = fkv_vk_pipeline(d, S_ATTENTION_REDUCE, pick_wg(d, ELEMENTWISE_WG), 1, &pr)) != FKV_OK))
        return st;
    VkDeviceSize part_bytes = a.part_bytes;
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, L->q, 0, &c)) != FKV_OK)
        return st;
    vk_temp part;
    int filled = 0;
    if (total_splits > 1) {
        st = fkv_vk_cmd_temp(&c, part_bytes, 0, &part);
        if (st == FKV_OK)
            L->b[6] = (bind){part.buf, 0, VK_WHOLE_SIZE};
    }
    if (st == FKV_OK && fused && (st = arrival_counters(&c, &filled)) == FKV_OK)
        L->b[7] = (bind){c.fq->arrivals.buf, 0, VK_WHOLE_SIZE};
    for (uint32_t w = 0; w < n_windows && st == FKV_OK; w++) {
        apply_window(L, &L->win[0], w);
        L->pc[15] = w * splits;
        st = record(&c, L, p, a.groups, 1);
    }
    if (st == FKV_OK && total_splits > 1 && !fused) {
        launch R = *L;
        for (int i = 0; i < VK_N_BINDINGS; i++)
            R.b[i] = (bind){d->dummy.buf, 0, VK_WHOLE_SIZE};
        R.b[0] = L->b[6];
        R.b[1] = L->b[5];
        memset(R.pc, 0, sizeof R.pc);
        R.pc[0] = n_bh;
        R.pc[1] = g->group;
        R.pc[2] = g->head_dim;
        R.pc[3] = total_splits;
        R.pc[4] = L->pc[13];
        uint32_t gx, gy;
        grid_1d(d, (uint64_t)n_bh * gd, pick_wg(d, ELEMENTWISE_WG), &gx, &gy);
        st = record(&c, &R, pr, gx, gy);
    }
    vk_fqueue *fq = c.fq;
    if (st != FKV_OK) {
        if (filled)
            fq->arrivals_zeroed = 0;
        fkv_vk_cmd_abort(&c);
        return st;
    }
    st = fkv_vk_cmd_submit(&c, &deps, NULL);
    if (st != FKV_OK && filled) /* the fill may not have run: fill again next time */
        fq->arrivals_zeroed = 0;
    return st;
}

fkv_status fkv_vk_attention(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                            const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                            size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                            float scale, fkv_bbuf *out, size_t out_off) {
    launch L;
    prepare(dev, q, &deps, "attention", &L);
    size_t n_entries = (entries->desc.size - entries_off) / 8;
    attn_args x = {qbuf, heads, entries, kpool, vpool, out, q_off, heads_off, entries_off, out_off,
                   n_seqs, n_entries > INT32_MAX ? INT32_MAX : (uint32_t)n_entries, -1, scale};
    return attention_launch(&L, g, &x, deps);
}

fkv_status fkv_vk_attention_dense(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                  const fkv_bbuf *qbuf, size_t q_off, uint32_t n_tokens,
                                  const fkv_bbuf *k, const fkv_bbuf *v, float scale,
                                  fkv_bbuf *out, size_t out_off) {
    launch L;
    prepare(dev, q, &deps, "attention_dense", &L);
    fkv_status st;
    uint64_t q_bytes = (uint64_t)g->n_kv_heads * g->group * g->head_dim * 4;
    if (n_tokens == 0) { /* zeros, as attention over an empty list */
        vk_cmd c;
        if ((st = fkv_vk_cmd_begin(dev, q, 0, &c)) != FKV_OK)
            return st;
        vkCmdFillBuffer(c.rec.cb, out->buf, out_off, q_bytes, 0);
        fkv_vk_count(&c, 0, FKV_COPY_D2D, 0);
        return fkv_vk_cmd_submit(&c, &deps, NULL);
    }
    attn_args x = {qbuf, k, k, k, v, out, q_off, 0, 0, out_off, 1, 0, (int32_t)n_tokens, scale};
    return attention_launch(&L, g, &x, deps);
}

/* ---- device limits of a context's geometry (backend.h, check_geometry) ---- */

fkv_status fkv_vk_check_geometry(fkv_bdev *d, const fkv_kv_geom *g, const fkv_geom_query *q) {
    fkv_status st;
    uint64_t hq = (uint64_t)g->n_kv_heads * g->group, d4 = (uint64_t)g->head_dim * 4;
    uint64_t slot_bytes = fkv_slot_bytes(g);
    uint64_t max_slots = UINT32_MAX / g->page_size; /* fkv_pool_slots' cap */
    unit_windows pools, summ;
    if ((st = plan_windows(d, "attention", slot_bytes,
                           q->pool_slots < max_slots ? q->pool_slots : max_slots, "the KV pools",
                           &pools)) != FKV_OK ||
        (st = plan_windows(d, "summarize", fkv_summary_bytes(g), q->summaries,
                           "the summaries", &summ)) != FKV_OK)
        return st;
    if ((uint64_t)pools.count * summ.count > DESCRIPTOR_SETS_PER_COMMAND)
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan summarize: %u x %u windows", pools.count,
                         summ.count);
    /* Buffers the kernels bind whole (from offset 0, as the context's are). */
    const struct {
        const char *op, *what;
        uint64_t bytes;
    } whole[] = {
        {"attention", "q", q->max_seqs * hq * d4},
        {"scores", "out", q->scores * 4},
        {"attention", "entries", q->list_entries * 8},
        {"append", "k_src", (uint64_t)q->max_rows * g->n_kv_heads * d4},
    };
    for (size_t i = 0; i < sizeof whole / sizeof *whole; i++) {
        bind b;
        if ((st = binding_fits(d, whole[i].op, whole[i].what, whole[i].bytes, 0, whole[i].bytes,
                               &b)) != FKV_OK)
            return st;
    }
    uint32_t wg, gx, gy, w;
    scores_launch sl;
    if ((st = grid_1d_fits(d, "append", (uint64_t)q->max_rows * g->n_kv_heads * g->head_dim, &wg,
                           &gx, &gy)) != FKV_OK ||
        (st = scores_plan(d, g, q->max_seqs, &sl)) != FKV_OK ||
        (st = cosine_plan(d, (uint64_t)q->max_seqs * g->n_kv_heads, &w)) != FKV_OK ||
        (st = select_plan(d, (uint64_t)q->max_seqs * g->n_kv_heads, &w)) != FKV_OK ||
        (st = quant_plan(d, g, g->n_kv_heads)) != FKV_OK)
        return st;
    uint64_t live = atomic_load(&d->live_allocs);
    if (q->allocations + live + TEMP_ALLOCS > d->max_allocs)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan: the context needs %llu memory allocations (layers, host pool "
                         "chunks, staging) and %u for commands in flight, %llu are live, and the "
                         "device allows %u at once (maxMemoryAllocationCount): lower max_seqs, "
                         "n_layers or max_context",
                         (unsigned long long)q->allocations, TEMP_ALLOCS,
                         (unsigned long long)live, d->max_allocs);
    /* Splits and partials depend on the batch: every batch size the context may run. */
    for (uint32_t n = 1; n <= q->max_seqs; n++) {
        attn_launch a;
        if ((st = attention_plan(d, "attention", g, n * g->n_kv_heads, pools.count, &a)) != FKV_OK)
            return st;
    }
    return FKV_OK;
}
