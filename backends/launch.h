/* Launch heuristics shared by the GPU backends (OpenCL, Vulkan, HIP), written once: the
 * shared-memory plans of the attention and scores kernels, how many splits over pages an
 * attention launch takes, the word size of the layout-moving copy kernels, and the slots a KV
 * pool pair holds. Each backend's launch code and its check_geometry compute their plans with
 * these, from the same limits, so a geometry the check accepts is one the launches can run. */
#ifndef FKV_BACKENDS_LAUNCH_H
#define FKV_BACKENDS_LAUNCH_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* Attention tokens per shared-memory tile (at most one page). */
#define FKV_ATTENTION_MAX_TILE 32
/* Splits over pages: at most this many chosen automatically, at most FKV_MAX_SPLITS forced
 * (the attention_splits option). */
#define FKV_MAX_AUTO_SPLITS 16
#define FKV_MAX_SPLITS 256

/* ---- attention: shared memory and work-group size ----
 * A work group serves `heads` query heads of one (sequence, KV head), at most
 * FKV_ATTENTION_MAX_HEADS (each work item keeps one accumulator per head in registers), so
 * the group takes `blocks` work groups when it is larger or does not fit at once (each
 * re-reads the K/V rows), over tiles of `tile` tokens of one page. With dq = head_dim rounded
 * up to FKV_ATTENTION_PAD (fkv_attention_dq) and tp the tile so rounded, shared floats
 * (fkv_attention_floats): qs [heads*dq]; kt [tile*(dq+4)]; sc [heads*tp]; st [3*heads]. Work
 * items (fkv_attention_threads): one per `vec` channels of a row (K tile copy, values) and at
 * least one per head (softmax); each scores the tokens of a tile at its index modulo their
 * number. */
#define FKV_ATTENTION_MAX_HEADS 8
/* Rows in shared memory are padded to a multiple of this many floats, so that a kernel may
 * read them in vectors of up to this many channels or tokens. */
#define FKV_ATTENTION_PAD 16

typedef struct fkv_attention_plan {
    uint32_t heads, blocks, tile;
    size_t floats;
} fkv_attention_plan;

/* n rounded up to FKV_ATTENTION_PAD. */
uint32_t fkv_attention_dq(uint32_t n);
size_t fkv_attention_floats(uint32_t heads, uint32_t head_dim, uint32_t tile);

/* The plan for `avail_bytes` of shared memory (named `limit` in messages): the fewest blocks
 * of at most FKV_ATTENTION_MAX_HEADS heads whose tile keeps at least 8 tokens (or the page),
 * with the largest such tile up to max_tile; failing that, the fewest blocks with any tile.
 * FKV_ERR_UNSUPPORTED with a message naming the limit when not even one query head and one
 * token fit. */
fkv_status fkv_plan_attention(const char *backend, const char *op, const fkv_kv_geom *g,
                              size_t avail_bytes, uint32_t max_tile, const char *limit,
                              fkv_attention_plan *p);

/* Work items of the plan's work groups for a kernel that reads `vec` channels a work item:
 * max(dq / vec, heads). */
uint32_t fkv_attention_threads(const fkv_kv_geom *g, const fkv_attention_plan *p, uint32_t vec);

/* FKV_ERR_UNSUPPORTED naming `limit` when the plan's work groups need more than max_threads
 * work items (a head_dim above vec x max_threads). */
fkv_status fkv_check_attention_threads(const char *backend, const char *op, const fkv_kv_geom *g,
                                       const fkv_attention_plan *p, uint32_t vec,
                                       size_t max_threads, const char *limit);

/* ---- attention: splits over pages ----
 * How many parts each (sequence, KV head, query-head block) work group's pages are split
 * into, when the n_groups work groups alone cannot fill 2 x compute_units: enough to, at most
 * FKV_MAX_AUTO_SPLITS. forced > 0 (the attention_splits option) is taken as it is. */
uint32_t fkv_attention_splits(uint64_t n_groups, uint32_t compute_units, uint32_t forced);
/* Bytes of the split partials of n_bh (sequence, KV head) pairs: [n_bh][splits][group][d+2]
 * floats (a running max, a sum and the d-wide accumulator per query head). */
uint64_t fkv_attention_partials_bytes(const fkv_kv_geom *g, uint64_t n_bh, uint32_t splits);

/* ---- scores: shared memory ----
 * `heads` query heads per work group (shared: heads*d floats of queries and FKV_SCORES_PAD),
 * `blocks` work groups per (sequence, KV head) along the same grid dimension. */
typedef struct fkv_scores_plan {
    uint32_t heads, blocks;
} fkv_scores_plan;

fkv_status fkv_plan_scores(const char *backend, const fkv_kv_geom *g, size_t avail_bytes,
                           const char *limit, fkv_scores_plan *p);
/* Query heads per pass of the scores kernels over a summary (a vector's lanes), and the floats
 * after a block's heads * head_dim queries in shared memory that their last vector load of
 * the transposed queries reaches: shared memory holds heads * head_dim + FKV_SCORES_PAD. */
#define FKV_SCORE_LANES 8
#define FKV_SCORES_PAD (FKV_SCORE_LANES - 1)
/* scores_check (backend.h): the check's arguments as the OpenCL and Vulkan launches pass them
 * to the scores launch, and the cosine kernel's lane count w (its reduction tree), with which
 * the fused kernel runs the check so that its bits are cosine_flags'. */
typedef struct fkv_check_launch {
    size_t cur_off;
    const fkv_bbuf *prev_rows;
    size_t rows_off;
    float tau;
    fkv_bbuf *sims, *flags;
    size_t sims_off, flags_off;
    uint32_t w;
} fkv_check_launch;
/* Work groups per (sequence, KV head, query-head block) row of the scores grid, each striding
 * over its sequence's pages: enough for the n_rows rows to fill 2 x compute_units, 1 to 16. */
uint32_t fkv_scores_chunks(uint64_t n_rows, uint32_t compute_units);

/* ---- copy kernels (pack_hnd, scatter_hnd, recall_direct) ----
 * The word they move a (token, head) row in: 16 bytes when the row and every address or
 * offset involved (OR-ed into addr_bits) allow it, else 4 bytes where the backend has 4-byte
 * variants (with_4) and they allow it, else one element of the dtype. */
typedef struct fkv_copy_words {
    size_t word;        /* bytes per word */
    uint32_t row_words; /* words per (token, head) row */
} fkv_copy_words;

fkv_copy_words fkv_pick_copy_words(const fkv_kv_geom *g, uint64_t addr_bits, int with_4);

/* ---- KV pools ----
 * Whole slots both pools hold, capped so rows (slot * page + token) fit 32 bits; kernels skip
 * slot indices at or beyond it. The dispatch layer has checked that both hold one slot. */
uint32_t fkv_pool_slots(const fkv_kv_geom *g, size_t k_size, size_t v_size);

#endif
