/* The generic fallbacks of optional ops-table entries, written once (backends/fallback.c).
 * Called by the dispatch layer for a table without the entry, after the arguments were
 * checked; they call the table's required entries directly. */
#ifndef FKV_BACKENDS_FALLBACK_H
#define FKV_BACKENDS_FALLBACK_H

#include "backend.h"

/* write_regions: one write per region; only the first waits and only the last signals (the
 * queue is in order, so the last completing means all did). n > 0. */
fkv_status fkv_fallback_write_regions(const fkv_backend_ops *ops, fkv_bdev *dev, fkv_queue q,
                                      fkv_deps deps, fkv_bbuf *dst, uint32_t n,
                                      const fkv_copy_region *regions);
/* attention_dense: paged attention over the contiguous K/V seen as pool slots; waits for its
 * completion (the descriptor buffers are temporary). The last slot is partial when n_tokens
 * is not a multiple of the page: the backend's attention must read the valid rows of a
 * partial last slot (the CPU reference does; the GPU backends have attention_dense). */
fkv_status fkv_fallback_attention_dense(const fkv_backend_ops *ops, fkv_bdev *dev, fkv_queue q,
                                        fkv_deps deps, const fkv_kv_geom *g,
                                        const fkv_bbuf *qbuf, size_t q_off, uint32_t n_tokens,
                                        const fkv_bbuf *k, const fkv_bbuf *v, float scale,
                                        fkv_bbuf *out, size_t out_off);

/* select_pages: reads desc and the scores back, runs the CPU reference's selection on the host
 * (cpu_select_pages, the op's definition) and writes the records; waits for completion (the
 * host copies are temporary). For a table built before the entry. */
fkv_status fkv_fallback_select_pages(const fkv_backend_ops *ops, fkv_bdev *dev, fkv_queue q,
                                     fkv_deps deps, const fkv_kv_geom *g, uint32_t n_seqs,
                                     const fkv_bbuf *desc, size_t desc_off,
                                     const fkv_bbuf *mask, size_t mask_off,
                                     const fkv_bbuf *scores, size_t scores_off,
                                     const fkv_select_params *p, fkv_bbuf *out, size_t out_off);

/* scores_check: cosine_flags (q_cur and q_prev from qbuf), then scores waiting for its event
 * (no mask); only scores signals deps.done. Two commands, no host wait. */
fkv_status fkv_fallback_scores_check(const fkv_backend_ops *ops, fkv_bdev *dev, fkv_queue q,
                                     fkv_deps deps, const fkv_kv_geom *g, const fkv_bbuf *qbuf,
                                     size_t q_off, uint32_t n_seqs, const fkv_bbuf *desc,
                                     size_t desc_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                                     size_t out_off, size_t cur_off, const fkv_bbuf *prev_rows,
                                     size_t rows_off, float tau, fkv_bbuf *sims, size_t sims_off,
                                     fkv_bbuf *flags, size_t flags_off);

#endif
