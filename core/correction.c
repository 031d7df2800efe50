/* Correction: query cosine -> flags -> re-selection of the flagged heads. Its own step
 * because it is the one place where the method blocks the caller for a result (the flags),
 * and where its cost is decided: one round trip for the check and the selection, and the
 * flagged heads' recall is one batched command that attention waits for on the device. */
#include "correction.h"
#include "retrieval.h"

size_t fkv_correction_describe(fkv_context *ctx, uint32_t layer, const select_args *a,
                               int32_t *out) {
    size_t rows_off = fkv_selection_describe(ctx, layer, a, out);
    int32_t *rows = out + rows_off / FKV_INDEX_BYTES;
    for (uint32_t i = 0; i < a->n; i++) {
        const seq_layer *sl = &ctx->seqs[a->seqs[i]].layers[layer];
        rows[i] = fkv_has_qprev(sl) ? fkv_q_row(ctx, fkv_qprev_offset(ctx, sl)) : -1;
    }
    return rows_off + (size_t)a->n * FKV_INDEX_BYTES;
}

/* Whether some sequence's candidates for this step differ from the next step's: only when the
 * window moves past a page (once every page_size steps of a sequence). */
static int candidates_differ(const int32_t *now, const int32_t *next, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (now[(size_t)FKV_SCORES_DESC_INTS * i + 1] != next[(size_t)FKV_SCORES_DESC_INTS * i + 1])
            return 1;
    return 0;
}

/* The check and both selections of the query in one caller round trip: the descriptors
 * (fkv_correction_describe, then the next step's) in one write, unless they came with the
 * call's inputs; one launch of the check (cosine_flags' semantics) and the scores of every
 * head with the next step's candidates (scores_check), then select_pages, whose records the
 * speculative task plans from (it selects nothing itself) and, where the candidates are the
 * same, the correction too; when they are not, scores and select_pages again with this
 * step's candidates, of the flagged heads only (the flags mask them on the device), into the
 * records after; one read of the flags and the records, one wait. *any: whether a head is
 * flagged. */
static fkv_status check_and_select(fkv_context *ctx, uint32_t layer, select_args *a,
                                   const select_args *next, int *any) {
    layer_state *ls = &ctx->layers[layer];
    uint32_t hk = ctx->cfg.n_kv_heads;
    size_t rows_off = (size_t)a->n * FKV_DESC_BYTES;
    fkv_bevent *ev = NULL;
    fkv_status st = FKV_OK;
    if (a->desc == NULL) { /* this step's descriptors and rows, then the next step's */
        size_t at = fkv_correction_describe(ctx, layer, a, ls->host.desc);
        st = fkv_op_write(ctx->dev, a->queue, FKV_NO_DEPS, ls->desc, 0, ls->host.desc,
                          at + fkv_selection_describe(ctx, layer, next,
                                                      ls->host.desc + at / sizeof(int32_t)));
    }
    const fkv_bbuf *desc = a->desc ? ls->io : ls->desc;
    a->records_at = candidates_differ(fkv_selection_host_desc(ctx, layer, a),
                                      fkv_selection_host_desc(ctx, layer, next), a->n)
                        ? a->n
                        : 0;
    if (st == FKV_OK) /* the check rides in the launch that scores the next step's pages */
        st = fkv_selection_enqueue(
            ctx, layer, next,
            &(selection_check){.rows = desc, .rows_off = a->desc_off + rows_off});
    if (st == FKV_OK && a->records_at) /* the next selection left the scores undefined */
        st = fkv_selection_enqueue(ctx, layer, a, NULL);
    if (st == FKV_OK) /* the method needs the flags now */
        st = fkv_op_read(ctx->dev, a->queue, (fkv_deps){.done = &ev}, ls->flags, 0,
                         ls->host.flags,
                         fkv_selection_records_offset(ctx, a->records_at + a->n));
    if (st == FKV_OK)
        st = fkv_wait_release(ctx, &ev);
    fkv_release_event(ctx, &ev);
    if (st != FKV_OK) /* queued commands may still read the host rows or write the flags */
        fkv_drain_queue(ctx, a->queue);
    *any = 0;
    for (uint32_t i = 0; i < a->n * hk && st == FKV_OK; i++)
        *any |= ls->host.flags[i] != 0;
    return st;
}

fkv_status fkv_correct_heads(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                             const fkv_correction_desc *desc, fkv_recall_carry *lists,
                             fkv_bevent **corr, fkv_stats *stats) {
    double t_check = fkv_now();
    layer_state *ls = &ctx->layers[layer];
    uint32_t hk = ctx->cfg.n_kv_heads;
    /* the recall fills the middle slots after the speculative recall (which fills them too)
     * and the last attention (which reads them) */
    fkv_bevent *slot_users[2];
    uint32_t n_users = 0;
    if (ls->ev_recall)
        slot_users[n_users++] = ls->ev_recall;
    if (ls->ev_attn)
        slot_users[n_users++] = ls->ev_attn;
    select_args a = {.queue = FKV_QUEUE_COMPUTE,
                     .rec = ctx->rec_main,
                     .pl = &ctx->plan_main,
                     .n = n,
                     .seqs = seqs,
                     .mask = ls->host.flags,
                     .dev_mask = ls->flags,
                     .n_wait = n_users,
                     .wait = slot_users,
                     .done = corr,
                     .stats = stats,
                     .desc = desc ? desc->now : NULL,
                     .desc_off = desc ? desc->now_off : 0,
                     .lists = lists};
    /* without descriptors from the inputs, the next step's follow this step's in host.desc */
    select_args next = {.queue = FKV_QUEUE_COMPUTE,
                        .n = n,
                        .seqs = seqs,
                        .extra_tokens = 1,
                        .desc = desc ? desc->next : NULL,
                        .desc_off = desc ? desc->next_off
                                         : (size_t)n * (FKV_DESC_BYTES + FKV_INDEX_BYTES)};
    *corr = NULL;
    int any = 0;
    fkv_status st = check_and_select(ctx, layer, &a, &next, &any);
    stats->heads_checked += (uint64_t)n * hk;
    if (st == FKV_OK && any) {
        for (uint32_t i = 0; i < n * hk; i++)
            if (ls->host.flags[i]) {
                stats->corrections++;
                ctx->call.corrections[i % hk]++;
            }
        /* the plan, then the recall of the flagged heads' missing pages (when there are):
         * attention waits for *corr on the device, never the caller */
        st = fkv_selection_apply(ctx, layer, &a);
    }
    /* the check (the one blocking read) and any correction's plan and recall issue */
    stats->blocked_correction_seconds += fkv_now() - t_check;
    return st;
}
