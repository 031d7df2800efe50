/* The argument checks every device backend makes before it enqueues a kernel, written once.
 * Each refuses with FKV_ERR_INVALID_ARGUMENT and a message that starts "<backend> <op>:".
 * Buffers are passed as (present, size, address) because each backend has its own fkv_bbuf;
 * `addr` is what must be aligned: the offset itself where the API aligns every allocation
 * (OpenCL, Vulkan), the real address where buffers may be imported pointers (HIP). */
#ifndef FKV_BACKENDS_CHECK_H
#define FKV_BACKENDS_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* Any enqueue: one of the FKV_QUEUE_COUNT queues. */
fkv_status fkv_check_queue(const char *backend, const char *op, fkv_queue q);

/* write/read: a queue, `size` bytes at `off` of the buffer, a host pointer unless size is 0. */
fkv_status fkv_check_host_transfer(const char *backend, const char *op, fkv_queue q, int present,
                                   size_t buf_size, size_t off, size_t size, const void *host);

/* copy: a queue and both ranges. */
fkv_status fkv_check_device_copy(const char *backend, fkv_queue q, int dst_present,
                                 size_t dst_size, size_t dst_off, int src_present,
                                 size_t src_size, size_t src_off, size_t size);

/* A kernel call: a device, the compute or background queue, a valid geometry whose slot and
 * (sequence, KV head) query block fit the kernels' 32-bit indices. */
fkv_status fkv_check_kernel_call(const char *backend, const char *op, const void *dev,
                                 fkv_queue q, const fkv_kv_geom *g);

/* `bytes` at `off` inside a buffer of `size` bytes, `addr` aligned to `align`. */
fkv_status fkv_check_span(const char *backend, const char *op, const char *what, int present,
                          size_t size, size_t off, uint64_t bytes, size_t align, uintptr_t addr);

/* Whole slots both KV pools hold, capped so rows (slot * page + token) fit 32 bits; kernels
 * skip slot indices at or beyond it. k_addr/v_addr must be aligned to the dtype. */
fkv_status fkv_check_pool_slots(const char *backend, const char *op, const fkv_kv_geom *g,
                                int present, size_t k_size, size_t v_size, uintptr_t k_addr,
                                uintptr_t v_addr, uint32_t *n_slots);

/* ---- one check per kernel entry of backend.h (after fkv_check_kernel_call) ----
 * A buffer as the checks see it: whether it was given, its size, and the address offsets
 * are aligned against (0 where the API aligns every allocation, OpenCL and Vulkan; the
 * buffer's real address where it may be an imported pointer, HIP). */
typedef struct fkv_bview {
    int present;
    size_t size;
    uintptr_t base;
} fkv_bview;

/* Each checks the sizes, offsets and alignment backend.h documents for the op; those with
 * KV pools return the slots both hold in *n_slots (fkv_check_pool_slots). */
fkv_status fkv_check_append(const char *backend, const fkv_kv_geom *g, fkv_bview k_src,
                            size_t k_off, fkv_bview v_src, size_t v_off, uint32_t n_rows,
                            fkv_bview rows, size_t rows_off, fkv_bview kpool, fkv_bview vpool,
                            uint32_t *n_slots);
fkv_status fkv_check_summarize(const char *backend, const fkv_kv_geom *g, fkv_bview kpool,
                               uint32_t n_pages, fkv_bview pages, size_t pages_off,
                               fkv_bview summaries, uint32_t *n_slots);
fkv_status fkv_check_scores(const char *backend, const fkv_kv_geom *g, fkv_bview q, size_t q_off,
                            uint32_t n_seqs, fkv_bview desc, size_t desc_off,
                            fkv_bview summaries, fkv_bview out, size_t out_off);
fkv_status fkv_check_cosine_flags(const char *backend, const fkv_kv_geom *g, fkv_bview q_cur,
                                  size_t cur_off, fkv_bview q_prev, size_t prev_off,
                                  uint32_t n_seqs, fkv_bview sims, size_t sims_off,
                                  fkv_bview flags, size_t flags_off);
fkv_status fkv_check_pack_hnd(const char *backend, const fkv_kv_geom *g, fkv_bview kpool,
                              fkv_bview vpool, uint32_t n_pages, fkv_bview gslots,
                              size_t gslots_off, fkv_bview dst, size_t dst_off,
                              uint32_t *n_slots);
fkv_status fkv_check_scatter_hnd(const char *backend, const fkv_kv_geom *g, fkv_bview src,
                                 size_t src_off, uint32_t n_units, fkv_bview units,
                                 size_t units_off, fkv_bview kpool, fkv_bview vpool,
                                 uint32_t *n_slots);
/* host_size: the host allocation every unit offset must lie in. */
fkv_status fkv_check_recall_direct(const char *backend, const fkv_kv_geom *g, size_t host_size,
                                   uint32_t n_units, const uint64_t *units_host,
                                   fkv_bview units, size_t units_off, fkv_bview kpool,
                                   fkv_bview vpool, uint32_t *n_slots);
fkv_status fkv_check_attention(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                               size_t q_off, uint32_t n_seqs, fkv_bview heads, size_t heads_off,
                               fkv_bview entries, size_t entries_off, fkv_bview kpool,
                               fkv_bview vpool, fkv_bview out, size_t out_off,
                               uint32_t *n_slots);
fkv_status fkv_check_attention_dense(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                                     size_t q_off, uint32_t n_tokens, fkv_bview k, fkv_bview v,
                                     fkv_bview out, size_t out_off);

/* ---- launch plans: shared-memory layouts of the attention and scores kernels ----
 * Written once so that every GPU backend's launch and its check_geometry compute the same
 * plan from the same limit: a geometry the check accepts is one the launches can run. */

/* Attention: a work group serves `heads` query heads of one (sequence, KV head), so the group
 * takes `blocks` work groups when it does not fit at once (each re-reads the K/V rows), over
 * tiles of `tile` tokens of one page. Shared floats (fkv_attention_floats): qs, acc
 * [heads*d]; kt [tile*(d+1)]; sc [heads*tile]; st [3*heads]. */
typedef struct fkv_attention_plan {
    uint32_t heads, blocks, tile;
    size_t floats;
} fkv_attention_plan;

size_t fkv_attention_floats(uint32_t heads, uint32_t head_dim, uint32_t tile);

/* The plan for `avail_bytes` of shared memory (named `limit` in messages): the fewest blocks
 * whose tile keeps at least 8 tokens (or the page), with the largest such tile up to
 * max_tile; failing that, the fewest blocks with any tile. FKV_ERR_UNSUPPORTED with a message
 * naming the limit when not even one query head and one token fit. */
fkv_status fkv_plan_attention(const char *backend, const char *op, const fkv_kv_geom *g,
                              size_t avail_bytes, uint32_t max_tile, const char *limit,
                              fkv_attention_plan *p);

/* Scores: `heads` query heads per work group (shared: heads*d floats of queries), `blocks`
 * work groups per (sequence, KV head) along the same grid dimension. */
typedef struct fkv_scores_plan {
    uint32_t heads, blocks;
} fkv_scores_plan;

fkv_status fkv_plan_scores(const char *backend, const fkv_kv_geom *g, size_t avail_bytes,
                           const char *limit, fkv_scores_plan *p);

#endif
