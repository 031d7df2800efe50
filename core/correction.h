/* Fine-grained correction (freekv policy): per (sequence, KV head), the mean cosine of q[t]
 * and q[t-1] over the group; a head below tau had its speculative pages chosen with a query
 * too different from this one, so its selection is redone with q[t] before attention. */
#ifndef FKV_CORE_CORRECTION_H
#define FKV_CORE_CORRECTION_H

#include "retrieval.h"

/* The descriptors of a correction, written with the call's inputs: this step's (this call's
 * query rows, then the batch's previous-query rows: fkv_correction_describe) and the next
 * step's (fkv_selection_describe with one token more): host copies, and their offsets in the
 * layer's io buffer. */
typedef struct fkv_correction_desc {
    const int32_t *now, *next;
    size_t now_off, next_off;
} fkv_correction_desc;

/* Checks every KV head of the batch and corrects the flagged ones, with one caller wait for
 * the flags and the selections together: their missing pages are recalled after the layer's
 * speculative recall and the last attention; *corr is that recall's event (NULL when no head
 * was flagged), which attention waits for on the device. The same round trip selects every
 * head for the next step with this query: on success, its records are in the layer's
 * host.flags at fkv_selection_records_offset(0) for the speculative task
 * (fkv_task_submit(..., selected = 1)). Counts the heads checked and corrected into *stats and
 * ctx->call.corrections, and the time the caller was blocked into
 * stats->blocked_correction_seconds. desc: NULL, and they are described and written here.
 * lists: as select_args.lists (NULL: the correction's recall carries no lists). */
fkv_status fkv_correct_heads(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                             const fkv_correction_desc *desc, fkv_recall_carry *lists,
                             fkv_bevent **corr, fkv_stats *stats);

/* The correction's scores descriptors (this call's query rows) then each sequence's
 * previous-query row (-1 without one: every head of it is flagged) into out; their bytes. */
size_t fkv_correction_describe(fkv_context *ctx, uint32_t layer, const select_args *a,
                               int32_t *out);

#endif
