/* Completed pages at decode: when a token fills a page, the page gets its summary (the key
 * min/max that scoring reads) and, for the offload policies, its HND copy in the host pool. */
#ifndef FKV_CORE_OFFLOAD_H
#define FKV_CORE_OFFLOAD_H

#include "state.h"

/* Summaries of n pages of kpool, listed in ls->host.summ_idx as (slot, summary index) pairs,
 * into the layer's summaries (compute queue). */
fkv_status fkv_summarize_pages(fkv_context *ctx, layer_state *ls, const fkv_bbuf *kpool,
                               uint32_t n);

/* Summaries (and, for offload policies, the host copy) of the pages that the tokens just
 * appended completed. full[i] is the page of seqs[i] that filled, or -1. The host reads go
 * to the transfer queue, each after the one before; ls->ev_offload is the last. */
fkv_status fkv_finish_pages(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                            const int32_t *full, fkv_stats *stats);

#endif
