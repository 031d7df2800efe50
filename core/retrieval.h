/* Retrieval, one step of the method: score the candidate pages (device), reduce each KV head's
 * group, take the top k, plan which slots receive which page, recall the missing pages. Used
 * by prefill (the initial resident set), decode (quest, sync), correction (the flagged heads)
 * and the speculative worker (the next step's pages). */
#ifndef FKV_CORE_RETRIEVAL_H
#define FKV_CORE_RETRIEVAL_H

#include "state.h"

typedef struct select_args {
    fkv_queue queue;
    fkv_recaller *rec;     /* NULL: quest (no recall, the selection is the attention set) */
    planner *pl;
    uint32_t n;
    const uint32_t *seqs;
    int use_qprev;         /* query rows: the previous query (fkv_qprev_offset)
                            * or this call's (fkv_qin_offset, row = batch position) */
    uint32_t extra_tokens; /* target = n_tokens + extra_tokens */
    const int32_t *mask;   /* [n][n_kv_heads] heads to plan for; NULL = all */
    const fkv_bbuf *dev_mask; /* the same on the device (int32 at 0), so that scores and
                               * select_pages skip the other heads; NULL = all */
    uint32_t n_wait;
    fkv_bevent *const *wait; /* recall waits on these before overwriting slots */
    fkv_bevent **done;       /* recall completion */
    fkv_stats *stats;
    /* The descriptors (for correction, then the previous-query rows), already on the device
     * at desc_off of the layer's io buffer, written with the call's inputs; their host copy.
     * NULL: in the layer's desc buffer at desc_off (0 but in correction.c), host copy in
     * host.desc; fkv_select_pages describes and writes them there. */
    const int32_t *desc;
    size_t desc_off;
    /* The records' place: sequence i's at fkv_selection_records_offset(records_at + i).
     * 0, but for a correction whose candidates differ from the next step's (correction.c). */
    uint32_t records_at;
    /* Non-NULL (the caller's selections: sync, freekv's correction): the batch's attention
     * lists are built after the plan and ride with the recall's table write; lists->buf says
     * where they went (NULL: nothing was recalled, so the attention writes them itself). */
    fkv_recall_carry *lists;
} select_args;

/* Scores, group reduction and top-k on the device (O(budget) values read back), the plan on
 * the host, then the recall of missing pages
 * (its run is the last part, and its time is stats->recall_seconds). It is the steps below,
 * with one write of the descriptors and one read of the records between them. */
fkv_status fkv_select_pages(fkv_context *ctx, uint32_t layer, const select_args *a);

/* The steps of fkv_select_pages, for correction, which checks the queries in the scores
 * launch of a selection and reads its flags with the records. */

/* The batch's scores descriptors (a->desc is not used) into out; their bytes. */
size_t fkv_selection_describe(fkv_context *ctx, uint32_t layer, const select_args *a,
                              int32_t *out);
/* The host copy of a->'s descriptors. */
const int32_t *fkv_selection_host_desc(const fkv_context *ctx, uint32_t layer,
                                       const select_args *a);
/* The correction's check of this call's queries (fkv_qin_offset) against each sequence's
 * previous one, done by a selection's scores launch (the scores_check op): the previous-query
 * rows at rows_off of `rows` (fkv_correction_describe writes them after this step's
 * descriptors); the similarities and flags go to the layer's sims and flags buffers. */
typedef struct selection_check {
    const fkv_bbuf *rows;
    size_t rows_off;
} selection_check;
/* scores and select_pages of the batch on a->queue, after the descriptors' write; the records
 * go to the layer's flags buffer at fkv_selection_records_offset(a->records_at). check: NULL,
 * or the correction's check, in the same launch as the scores (then a->dev_mask is NULL: the
 * check writes the flags). */
fkv_status fkv_selection_enqueue(fkv_context *ctx, uint32_t layer, const select_args *a,
                                 const selection_check *check);
/* Byte offset of record set i in the layer's flags buffer, and in its host copy (host.flags:
 * the same layout): after the flags of max_seqs sequences. There are 2 * max_seqs sets: a
 * correction may select twice (correction.c). */
size_t fkv_selection_records_offset(const fkv_context *ctx, uint32_t i);
/* The plan from the records in host.flags (read back already: the speculative worker's task
 * when its call selected for it, correction), then the recall of the missing pages. */
fkv_status fkv_selection_apply(fkv_context *ctx, uint32_t layer, const select_args *a);

/* Keeps the middle slots of the batch in pl before a selection changes them. */
void fkv_selection_save(fkv_context *ctx, planner *pl, uint32_t layer, uint32_t n,
                        const uint32_t *seqs);
/* Undoes a selection made since fkv_selection_save. Without a recall (quest) the slots are as
 * saved. With one, a slot that received another page may hold part of it, so it becomes
 * empty rather than claiming either page; slots that kept or merely dropped their page are as
 * saved (their contents were not written). The next selection brings what is missing. */
void fkv_selection_restore(fkv_context *ctx, const planner *pl, uint32_t layer, uint32_t n,
                           const uint32_t *seqs, int recalled);

#endif
