/* Kernels of the CPU reference backend as C over raw pointers.
 *
 * Layouts and index conventions are those of backends/backend.h. Pools hold `pool_rows` rows
 * of n_kv_heads*head_dim elements in g->dtype; every index read from an index array is
 * checked against the sizes passed in, and a bad one makes the kernel return
 * FKV_ERR_INVALID_ARGUMENT (message set with fkv_error) without touching memory out of range.
 * Arrays whose length is implied by the call (n_rows, n_seqs, ...) are trusted: the caller
 * validated them against the buffer sizes before queueing. Arithmetic is f32.
 */
#ifndef FKV_CPU_KERNELS_H
#define FKV_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../backend.h"
#include "cpu_isa.h"

/* Largest head_dim the kernels accept. */
#define FKV_CPU_MAX_HEAD_DIM 1024

/* True when rows [row0, row0 + n) of a pool of pool_rows rows exist. */
static inline int cpu_rows_in_pool(int64_t row0, size_t n, size_t pool_rows) {
    return row0 >= 0 && (uint64_t)row0 <= pool_rows && n <= pool_rows - (size_t)row0;
}

/* rows[i] receives row i of k_src / v_src ([n_kv_heads*head_dim] f32), converted to dtype. */
fkv_status cpu_append(const fkv_kv_geom *g, const float *k_src, const float *v_src,
                      uint32_t n_rows, const int32_t *rows, void *kpool, void *vpool,
                      size_t pool_rows);

/* pages[2i] = gslot of a full page, pages[2i+1] = summary index; summaries is
 * [n_summaries][n_kv_heads][2][head_dim] (min, max per channel) in g->summary_format. */
fkv_status cpu_summarize(const fkv_kv_geom *g, const void *kpool, size_t pool_rows,
                         uint32_t n_pages, const int32_t *pages, void *summaries,
                         size_t n_summaries);

typedef struct cpu_pool cpu_pool; /* cpu_pool.h */

/* Quest bound per query head; desc[4b..4b+3] = (summary base, n_pages, out base, q row) and
 * out[base + h*n_pages + j] for h in [0, n_kv_heads*group). q holds q_rows query rows, out
 * out_len floats. mask: NULL, or [n_seqs][n_kv_heads]: 0 skips the pair. Every sequence is
 * checked before any score is written; the (sequence, KV head) pairs run on `pool`'s threads
 * (NULL: the calling thread alone), with the same bits either way, and at the
 * instruction-set level isa (cpu_score_head_for; one it lacks: FKV_ERR_UNSUPPORTED). */
fkv_status cpu_scores(const fkv_kv_geom *g, const float *q, size_t q_rows, uint32_t n_seqs,
                      const int32_t *desc, const int32_t *mask, const void *summaries,
                      size_t n_summaries, float *out, size_t out_len, cpu_isa isa,
                      cpu_pool *pool);

/* select_pages (backend.h defines the semantics): per (sequence, KV head) the group
 * reduction over candidates [p->first_page, n_pages) and the top p->k by (value desc, page
 * asc), into records of k int32 pages (ascending) then k f32 values in out. desc and mask as
 * for scores (a masked pair's record is left alone); scores (scores_len floats) is scratch:
 * the first query row of each KV head receives the reduced values. Also the dispatch layer's
 * generic fallback (run on the host, pool NULL). Every sequence is checked before any record
 * is written; the pairs run on `pool`'s threads as for scores. */
fkv_status cpu_select_pages(const fkv_kv_geom *g, uint32_t n_seqs, const int32_t *desc,
                            const int32_t *mask, float *scores, size_t scores_len,
                            const fkv_select_params *p, int32_t *out, cpu_pool *pool);

/* sims[b][h] = mean over the group of cos(q_cur row b, q_prev row prev_rows[b]);
 * flags[b][h] = !(sims >= tau); a negative row: NaN and 1. q_prev holds prev_count rows. */
fkv_status cpu_cosine_flags(const fkv_kv_geom *g, const float *q_cur, const float *q_prev,
                            size_t prev_count, const int32_t *prev_rows, uint32_t n_seqs,
                            float tau, float *sims, int32_t *flags);

/* Page gslots[i] of both pools to dst + i*page_bytes as [n_kv_heads][K|V][page_size][d]. */
fkv_status cpu_pack_hnd(const fkv_kv_geom *g, const void *kpool, const void *vpool,
                        size_t pool_rows, uint32_t n_pages, const int32_t *gslots, void *dst);

/* Unit i ([K|V][page_size][d] at src + i*2*page_size*d elements) to KV head units[2i+1] of
 * slot units[2i]. */
fkv_status cpu_scatter_hnd(const fkv_kv_geom *g, const void *src, uint32_t n_units,
                           const int32_t *units, void *kpool, void *vpool, size_t pool_rows);

/* One host allocation recall_direct reads. */
typedef struct cpu_host_view {
    const unsigned char *data;
    size_t size;
} cpu_host_view;
/* As scatter_hnd, from units[4i..4i+3] = {slot, head, host, offset / element size} of hosts. */
fkv_status cpu_recall_direct(const fkv_kv_geom *g, uint32_t n_hosts, const cpu_host_view *hosts,
                             uint32_t n_units, const int32_t *units, void *kpool, void *vpool,
                             size_t pool_rows);

/* The device pool's min_work (cpu_pool.h), in attention K/V elements: reading this many
 * takes about as long as waking a helper thread. The scores and select_pages count their
 * elements in the same unit (cpu_kernels.c). */
#define CPU_MIN_SHARED_ELEMENTS ((size_t)1 << 19)

/* Paged decode attention. heads[2(b*n_kv_heads+h)] = (first entry, entry count); entries
 * (n_entries pairs) = (gslot, valid tokens). q and out are [n_seqs][n_kv_heads*group][d].
 * An isa the CPU lacks: FKV_ERR_UNSUPPORTED. The (sequence, KV head) pairs run on `pool`'s
 * threads (NULL: the calling thread alone), with the same bits either way. */
fkv_status cpu_attention(const fkv_kv_geom *g, const float *q, uint32_t n_seqs,
                         const int32_t *heads, const int32_t *entries, size_t n_entries,
                         const void *kpool, const void *vpool, size_t pool_rows, float scale,
                         float *out, cpu_isa isa, cpu_pool *pool);

/* Attention of one sequence over contiguous K/V [n_tokens][n_kv_heads][d] (dtype), its KV
 * heads on `pool`'s threads as above. */
fkv_status cpu_attention_dense(const fkv_kv_geom *g, const float *q, uint32_t n_tokens,
                               const void *k, const void *v, float scale, float *out,
                               cpu_isa isa, cpu_pool *pool);

#endif
