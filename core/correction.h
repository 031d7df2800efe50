/* Fine-grained correction (freekv policy): per (sequence, KV head), the mean cosine of q[t]
 * and q[t-1] over the group; a head below tau had its speculative pages chosen with a query
 * too different from this one, so its selection is redone with q[t] before attention. */
#ifndef FKV_CORE_CORRECTION_H
#define FKV_CORE_CORRECTION_H

#include "state.h"

/* Checks every KV head of the batch and corrects the flagged ones, with one caller wait for
 * the flags and the selection together: their missing pages are recalled after the layer's
 * speculative recall and the last attention; *corr is that recall's event (NULL when no head
 * was flagged), which attention waits for on the device. Counts the heads checked and
 * corrected into *stats and ctx->call.corrections, and the time the caller was blocked into
 * stats->blocked_correction_seconds. */
fkv_status fkv_correct_heads(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                             fkv_bevent **corr, fkv_stats *stats);

#endif
