/* Completed pages at decode: when a token fills a page, the page gets its summary (the key
 * min/max that scoring reads) and, for the offload policies, its HND copy in the host pool. */
#ifndef FKV_CORE_OFFLOAD_H
#define FKV_CORE_OFFLOAD_H

#include "state.h"

/* Completed pages are listed in the layer's index staging ls->host.summ_idx as n (slot,
 * summary index) pairs, then, for the offload policies, n_slots slots for pack_hnd, so that
 * one write carries both: the slots start at this byte offset of ls->summ_idx. */
static inline size_t fkv_pack_slots_offset(uint32_t n) { return (size_t)n * FKV_PAIR_BYTES; }

/* Writes the index staging (n pairs, then n_slots slots) to the device in one write and
 * launches the summaries of the n pages of kpool into the layer's summaries (compute
 * queue). */
fkv_status fkv_summarize_pages(fkv_context *ctx, layer_state *ls, const fkv_bbuf *kpool,
                               uint32_t n, uint32_t n_slots);

/* Summaries (and, for offload policies, the host copy) of the pages that the tokens just
 * appended completed. full[i] is the page of seqs[i] that filled, or -1. The host reads go
 * to the transfer queue, each after the one before; ls->ev_offload is the last. */
fkv_status fkv_finish_pages(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                            const int32_t *full, fkv_stats *stats);

#endif
