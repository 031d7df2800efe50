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

/* The index of the pages a decode call completes (full[i]: the page of seqs[i] that fills, or
 * -1) into out, as fkv_summarize_pages lays it out (the pairs, then for the offload policies
 * the slots), so that it goes up with the call's inputs; returns the number of pages. */
uint32_t fkv_describe_full(fkv_context *ctx, uint32_t n, const uint32_t *seqs,
                           const int32_t *full, int32_t *out);

/* Summaries (and, for offload policies, the host copy) of the pages that the tokens just
 * appended completed, from their index (fkv_describe_full) on the device at idx, idx_off.
 * full[i] is the page of seqs[i] that filled, or -1. The host reads go to the transfer
 * queue, each after the one before; ls->ev_offload is the last. */
fkv_status fkv_finish_pages(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                            const int32_t *full, const fkv_bbuf *idx, size_t idx_off,
                            fkv_stats *stats);

#endif
