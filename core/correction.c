/* Correction: query cosine -> flags -> re-selection of the flagged heads. Its own step
 * because it is the one place where the method blocks the caller for a result (the flags),
 * and where its cost is decided: the flagged heads' recall is one batched command. */
#include "correction.h"
#include "retrieval.h"

/* Per (sequence, KV head) of the batch: whether the head needs correction, into the layer's
 * host flags (the one blocking read the method needs): one write of the previous-query rows,
 * one cosine_flags launch and one read for the whole batch. A sequence without a previous
 * query has row -1: every head of it is flagged. *any: whether one is. */
static fkv_status correction_flags(fkv_context *ctx, uint32_t layer, uint32_t n,
                                   const uint32_t *seqs, int *any) {
    layer_state *ls = &ctx->layers[layer];
    uint32_t hk = ctx->cfg.n_kv_heads;
    size_t rows_off = (size_t)n * FKV_DESC_BYTES; /* after the batch's scores descriptors */
    int32_t *rows = ls->host.desc + (size_t)FKV_SCORES_DESC_INTS * n;
    for (uint32_t i = 0; i < n; i++) {
        const seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        rows[i] = sl->has_qprev ? fkv_qprev_row(ctx, sl->qcur, seqs[i]) : -1;
    }
    fkv_bevent *ev = NULL;
    fkv_status st = fkv_op_write(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->desc, rows_off,
                                 rows, (size_t)n * FKV_INDEX_BYTES);
    if (st == FKV_OK)
        st = fkv_op_cosine_flags(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, &ctx->geom, ls->qin, 0,
                                 ls->qprev, 0, ls->desc, rows_off, n, ctx->cfg.tau, ls->sims, 0,
                                 ls->flags, 0);
    if (st == FKV_OK) /* the method needs the flags now */
        st = fkv_op_read(ctx->dev, FKV_QUEUE_COMPUTE, (fkv_deps){.done = &ev}, ls->flags, 0,
                         ls->host.flags, (size_t)n * hk * FKV_INDEX_BYTES);
    if (st == FKV_OK)
        st = fkv_wait_release(ctx, &ev);
    fkv_release_event(ctx, &ev);
    if (st != FKV_OK) /* the write may still read the host rows */
        fkv_drain_queue(ctx, FKV_QUEUE_COMPUTE);
    *any = 0;
    for (uint32_t i = 0; i < n * hk && st == FKV_OK; i++)
        *any |= ls->host.flags[i] != 0;
    return st;
}

/* Selection with q[t] for the flagged heads only, after the speculative recall (which fills
 * the same middle slots) and the last attention (which reads them); the caller waits. */
static fkv_status reselect_flagged(fkv_context *ctx, uint32_t layer, uint32_t n,
                                   const uint32_t *seqs, fkv_bevent **corr, fkv_stats *stats) {
    layer_state *ls = &ctx->layers[layer];
    uint32_t hk = ctx->cfg.n_kv_heads;
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
                     .n_wait = n_users,
                     .wait = slot_users,
                     .done = corr,
                     .stats = stats};
    fkv_status st = fkv_select_pages(ctx, layer, &a);
    for (uint32_t i = 0; i < n * hk; i++)
        if (ls->host.flags[i]) {
            stats->corrections++;
            ctx->call.corrections[i % hk]++;
        }
    if (st == FKV_OK)
        st = fkv_op_event_wait(ctx->dev, 1, corr);
    return st;
}

fkv_status fkv_correct_heads(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                             fkv_bevent **corr, fkv_stats *stats) {
    double t_check = fkv_now();
    int any = 0;
    fkv_status st = correction_flags(ctx, layer, n, seqs, &any);
    stats->heads_checked += (uint64_t)n * ctx->cfg.n_kv_heads;
    if (st == FKV_OK && any)
        st = reselect_flagged(ctx, layer, n, seqs, corr, stats);
    /* the check (the one blocking read) and any correction */
    stats->blocked_correction_seconds += fkv_now() - t_check;
    return st;
}
