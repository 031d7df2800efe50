/* Decode (fkv_decode_layer): one token of a batch of sequences through one layer, as the
 * sequence of the method's steps: wait for the layer's speculative task, reserve host memory,
 * append, finish completed pages, select by policy (correction for freekv), attention, keep
 * the query for the next step's speculation, output, then commit or roll back. The steps live
 * in their own files; this one holds their order and what a failed call must undo. */
#include <string.h>

#include "../common/error.h"
#include "attention.h"
#include "correction.h"
#include "offload.h"
#include "retrieval.h"
#include "speculative.h"

/* One decode call: what it has done so far (for the rollback) and its events. */
typedef struct decode_call {
    uint32_t layer, n;
    const uint32_t *seqs;
    fkv_stats stats;    /* this call's work, counted when it succeeds */
    fkv_stats consumed; /* the background task's work: counted whatever the call does */
    int appended, selected, recalled;
    fkv_bevent *corr;    /* recall of this call's selection (sync) or correction (freekv) */
    fkv_bevent *attn, *end;
    fkv_bevent *attn_wait[2]; /* the speculative recall and corr, when there are */
    uint32_t n_attn_wait;
} decode_call;

static fkv_status check_batch(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs) {
    static const char fn[] = "fkv_decode_layer";
    const fkv_config *cfg = &ctx->cfg;
    if (layer >= cfg->n_layers)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: layer %u out of range (%u layers)", fn,
                         layer, cfg->n_layers);
    if (n == 0 || n > cfg->max_seqs || seqs == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: %u sequences (1..%u, non-NULL list)", fn,
                         n, cfg->max_seqs);
    for (uint32_t i = 0; i < n; i++) {
        if (seqs[i] >= cfg->max_seqs)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: sequence %u out of range", fn, seqs[i]);
        for (uint32_t j = 0; j < i; j++)
            if (seqs[j] == seqs[i])
                return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: sequence %u listed twice", fn,
                                 seqs[i]);
        const seq_state *s = &ctx->seqs[seqs[i]];
        if (s->prefilled != 0 && s->prefilled != cfg->n_layers)
            return fkv_error(FKV_ERR_BAD_STATE, "%s: sequence %u is prefilled up to layer %u only",
                             fn, seqs[i], s->prefilled);
        if (s->next_layer != layer)
            return fkv_error(FKV_ERR_BAD_STATE, "%s: sequence %u expects layer %u, got %u", fn,
                             seqs[i], s->next_layer, layer);
        if (s->layers[layer].n_tokens >= cfg->max_context)
            return fkv_error(FKV_ERR_CONTEXT_FULL, "%s: sequence %u holds max_context (%u) tokens",
                             fn, seqs[i], cfg->max_context);
    }
    return FKV_OK;
}

static fkv_status check_decode(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                               const fkv_tensor *q, const fkv_tensor *k, const fkv_tensor *v,
                               const fkv_tensor *out) {
    static const char fn[] = "fkv_decode_layer";
    fkv_status st = check_batch(ctx, layer, n, seqs);
    size_t qbytes = (size_t)n * ctx->q_row_bytes, kbytes = (size_t)n * ctx->kv_row_bytes;
    if (st == FKV_OK && (st = fkv_check_tensor(ctx, q, qbytes, fn, "q")) == FKV_OK &&
        (st = fkv_check_tensor(ctx, k, kbytes, fn, "k")) == FKV_OK &&
        (st = fkv_check_tensor(ctx, v, kbytes, fn, "v")) == FKV_OK)
        st = fkv_check_tensor(ctx, out, qbytes, fn, "out");
    return st;
}

/* Host memory for pages this step completes, before anything changes; ctx->call.full[i] is
 * the page sequence i fills, or -1. On failure nothing is reserved. */
static fkv_status reserve_host_pages(fkv_context *ctx, const decode_call *dc) {
    call_scratch *cs = &ctx->call;
    uint32_t p = ctx->cfg.page_size;
    for (uint32_t i = 0; i < dc->n; i++) {
        seq_layer *sl = &ctx->seqs[dc->seqs[i]].layers[dc->layer];
        cs->full[i] = (sl->n_tokens + 1) % p == 0 ? (int32_t)(sl->n_tokens / p) : -1;
        if (!ctx->offload)
            continue;
        cs->had_chunks[i] = sl->hp.n_chunks;
        if (cs->full[i] < 0)
            continue;
        fkv_status st = fkv_hostpool_reserve(&sl->hp, ctx->dev, (uint32_t)cs->full[i] + 1);
        if (st != FKV_OK) {
            for (uint32_t j = 0; j < i; j++) {
                seq_layer *sj = &ctx->seqs[dc->seqs[j]].layers[dc->layer];
                fkv_hostpool_trim(&sj->hp, ctx->dev,
                                  cs->had_chunks[j] * sj->hp.chunk_pages);
            }
            return st;
        }
    }
    return FKV_OK;
}

/* Uploads q/k/v and appends k/v at each sequence's next row, in its current page's home slot.
 * The append wrote a row no one reads yet, past the tokens the page holds: undoing it is
 * undoing the count. */
static fkv_status append_token(fkv_context *ctx, decode_call *dc, const fkv_tensor *q,
                               const fkv_tensor *k, const fkv_tensor *v) {
    layer_state *ls = &ctx->layers[dc->layer];
    uint32_t p = ctx->cfg.page_size;
    for (uint32_t i = 0; i < dc->n; i++) {
        uint32_t t = ctx->seqs[dc->seqs[i]].layers[dc->layer].n_tokens;
        ls->host.rows[i] = fkv_row(ctx, dc->seqs[i], fkv_home_slot(ctx, t / p), t % p);
    }
    size_t qbytes = (size_t)dc->n * ctx->q_row_bytes, kbytes = (size_t)dc->n * ctx->kv_row_bytes;
    fkv_status st = fkv_op_write(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->rows, 0,
                                    ls->host.rows, (size_t)dc->n * FKV_INDEX_BYTES);
    if (st == FKV_OK)
        st = fkv_tensor_to_device(ctx, q, 0, ls->host.q, ls->qin, 0, qbytes);
    if (st == FKV_OK)
        st = fkv_tensor_to_device(ctx, k, 0, ls->host.k, ls->kin, 0, kbytes);
    if (st == FKV_OK)
        st = fkv_tensor_to_device(ctx, v, 0, ls->host.v, ls->vin, 0, kbytes);
    if (st == FKV_OK)
        st = fkv_op_append(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, &ctx->geom, ls->kin, 0,
                              ls->vin, 0, dc->n, ls->rows, 0, ls->kpool, ls->vpool);
    if (st != FKV_OK)
        return st;
    for (uint32_t i = 0; i < dc->n; i++)
        ctx->seqs[dc->seqs[i]].layers[dc->layer].n_tokens++;
    dc->appended = 1;
    return FKV_OK;
}

/* quest: selection in place, with this step's query. */
static fkv_status select_quest(fkv_context *ctx, decode_call *dc) {
    double t0 = fkv_now();
    select_args a = {.queue = FKV_QUEUE_COMPUTE,
                     .pl = &ctx->plan_main,
                     .n = dc->n,
                     .seqs = dc->seqs,
                     .stats = &dc->stats};
    fkv_status st = fkv_select_pages(ctx, dc->layer, &a);
    dc->stats.blocked_select_seconds += fkv_now() - t0;
    return st;
}

/* sync: selection with this step's query and its recall, the caller waiting (ArkVale's
 * cost). */
static fkv_status select_sync(fkv_context *ctx, decode_call *dc) {
    layer_state *ls = &ctx->layers[dc->layer];
    fkv_bevent *slot_readers[1] = {ls->ev_attn};
    double t0 = fkv_now(), engine0 = dc->stats.recall_seconds;
    select_args a = {.queue = FKV_QUEUE_COMPUTE,
                     .rec = ctx->rec_main,
                     .pl = &ctx->plan_main,
                     .n = dc->n,
                     .seqs = dc->seqs,
                     .n_wait = ls->ev_attn ? 1 : 0,
                     .wait = slot_readers,
                     .done = &dc->corr,
                     .stats = &dc->stats};
    fkv_status st = fkv_select_pages(ctx, dc->layer, &a);
    double t1 = fkv_now(), engine = dc->stats.recall_seconds - engine0;
    if (st == FKV_OK)
        st = fkv_op_event_wait(ctx->dev, 1, &dc->corr);
    /* fkv_select_pages ends with the recall engine's run */
    dc->stats.blocked_select_seconds += t1 - t0 - engine;
    dc->stats.blocked_recall_seconds += engine + (fkv_now() - t1);
    return st;
}

/* speculative, freekv: the pages the worker recalled after the previous step (freekv first
 * corrects the heads whose query changed too much); attention waits for that recall. */
static fkv_status select_speculative(fkv_context *ctx, decode_call *dc) {
    layer_state *ls = &ctx->layers[dc->layer];
    fkv_status st = FKV_OK;
    if (ctx->cfg.policy == FKV_POLICY_FREEKV)
        st = fkv_correct_heads(ctx, dc->layer, dc->n, dc->seqs, &dc->corr, &dc->stats);
    if (st == FKV_OK && ls->ev_recall) {
        /* time the caller would wait for the background recall */
        double t0 = fkv_now();
        st = fkv_op_event_wait(ctx->dev, 1, &ls->ev_recall);
        dc->stats.blocked_recall_seconds += fkv_now() - t0;
        dc->attn_wait[dc->n_attn_wait++] = ls->ev_recall;
    }
    return st;
}

/* The selection this step's attention reads, by policy, and what attention must wait on. */
static fkv_status select_for_attention(fkv_context *ctx, decode_call *dc) {
    fkv_policy policy = ctx->cfg.policy;
    if (policy != FKV_POLICY_DENSE && policy != FKV_POLICY_SPECULATIVE) {
        fkv_selection_save(ctx, &ctx->plan_main, dc->layer, dc->n, dc->seqs);
        dc->selected = 1;
        dc->recalled = policy != FKV_POLICY_QUEST;
    }
    fkv_status st = FKV_OK;
    if (policy == FKV_POLICY_QUEST)
        st = select_quest(ctx, dc);
    else if (policy == FKV_POLICY_SYNC)
        st = select_sync(ctx, dc);
    else if (fkv_is_speculative(ctx))
        st = select_speculative(ctx, dc);
    if (dc->corr)
        dc->attn_wait[dc->n_attn_wait++] = dc->corr;
    return st;
}

/* q[t] becomes the query of the next step's speculative selection; it goes to the other
 * half of qprev, so q[t-1] survives a failure of this call. */
static fkv_status keep_query(fkv_context *ctx, const decode_call *dc) {
    layer_state *ls = &ctx->layers[dc->layer];
    size_t qrow = ctx->q_row_bytes;
    fkv_status st = FKV_OK;
    for (uint32_t i = 0; i < dc->n && st == FKV_OK; i++) {
        const seq_layer *sl = &ctx->seqs[dc->seqs[i]].layers[dc->layer];
        size_t prev_off = (size_t)fkv_qprev_row(ctx, !sl->qcur, dc->seqs[i]) * qrow;
        st = fkv_op_copy(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->qprev, prev_off, ls->qin,
                            i * qrow, qrow);
    }
    return st;
}

/* The output is the caller's when we return, and every command of the call, the offload of
 * a page it filled included, must have succeeded before the call does. */
static fkv_status deliver_output(fkv_context *ctx, decode_call *dc, fkv_tensor *out) {
    layer_state *ls = &ctx->layers[dc->layer];
    size_t qbytes = (size_t)dc->n * ctx->q_row_bytes;
    fkv_status st;
    if (out->host)
        st = fkv_op_read(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->out, 0,
                            (void *)out->host, qbytes);
    else
        st = fkv_op_copy(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, out->buffer->bbuf,
                            out->offset, ls->out, 0, qbytes);
    fkv_deps after_offload = {.n_wait = ls->ev_offload ? 1 : 0, .wait = &ls->ev_offload,
                              .done = &dc->end};
    if (st == FKV_OK)
        st = fkv_op_marker(ctx->dev, FKV_QUEUE_COMPUTE, after_offload);
    if (st == FKV_OK)
        st = fkv_wait_release(ctx, &dc->end);
    return st;
}

/* What the call changes only when it succeeds; nothing here fails. */
static void commit_call(fkv_context *ctx, decode_call *dc) {
    layer_state *ls = &ctx->layers[dc->layer];
    call_scratch *cs = &ctx->call;
    uint32_t hk = ctx->cfg.n_kv_heads;
    fkv_release_event(ctx, &dc->corr);
    fkv_release_event(ctx, &ls->ev_attn);
    ls->ev_attn = dc->attn;
    for (uint32_t i = 0; i < dc->n; i++) {
        seq_state *s = &ctx->seqs[dc->seqs[i]];
        seq_layer *sl = &s->layers[dc->layer];
        for (uint32_t h = 0; h < hk; h++) {
            size_t ih = (size_t)i * hk + h;
            sl->n_attended[h] = cs->n_attended[ih];
            memcpy(sl->attended + (size_t)h * ctx->list_cap, cs->attended + ih * ctx->list_cap,
                   sizeof(int32_t) * cs->n_attended[ih]);
        }
        if (fkv_is_speculative(ctx)) {
            sl->qcur = !sl->qcur;
            sl->has_qprev = 1;
        }
        s->next_layer = (dc->layer + 1) % ctx->cfg.n_layers;
    }
    if (dc->stats.corrections) {
        pthread_mutex_lock(&ctx->lock);
        for (uint32_t h = 0; h < hk; h++)
            ctx->corrections[(size_t)dc->layer * hk + h] += cs->corrections[h];
        pthread_mutex_unlock(&ctx->lock);
    }
    fkv_stats_add(ctx, &dc->stats);
    if (fkv_is_speculative(ctx))
        fkv_task_submit(ctx, dc->layer, dc->n, dc->seqs);
}

/* Puts back what a failed call changed: the appended tokens, the host memory it reserved,
 * the selection it made, the offload event. The queues are drained first, so no command of
 * the call is still running. Returns st, with its message. */
static fkv_status rollback_call(fkv_context *ctx, decode_call *dc, fkv_status st) {
    char *msg = fkv_error_save(); /* the cleanup below may set messages of its own */
    layer_state *ls = &ctx->layers[dc->layer];
    fkv_release_event(ctx, &dc->corr);
    fkv_release_event(ctx, &dc->attn);
    fkv_release_event(ctx, &dc->end);
    fkv_op_finish(ctx->dev, FKV_QUEUE_COMPUTE);
    fkv_op_finish(ctx->dev, FKV_QUEUE_TRANSFER);
    for (uint32_t i = 0; i < dc->n; i++) {
        seq_layer *sl = &ctx->seqs[dc->seqs[i]].layers[dc->layer];
        if (dc->appended)
            sl->n_tokens--;
        if (ctx->offload)
            fkv_hostpool_trim(&sl->hp, ctx->dev,
                              ctx->call.had_chunks[i] * sl->hp.chunk_pages);
    }
    if (dc->selected)
        fkv_selection_restore(ctx, &ctx->plan_main, dc->layer, dc->n, dc->seqs, dc->recalled);
    /* Complete now (the transfer queue drained); it may have failed, and a failed event in
     * the next call's wait lists would fail that call too. */
    if (ls->ev_offload) {
        fkv_op_event_wait(ctx->dev, 1, &ls->ev_offload);
        fkv_release_event(ctx, &ls->ev_offload);
    }
    fkv_settle_recall(ctx, dc->layer);
    fkv_stats_add(ctx, &dc->consumed);
    fkv_error_restore(msg);
    return st;
}

fkv_status fkv_decode_layer(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                            const fkv_tensor *q, const fkv_tensor *k, const fkv_tensor *v,
                            fkv_tensor *out) {
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_decode_layer: NULL context");
    fkv_status st = check_decode(ctx, layer, n, seqs, q, k, v, out);
    if (st != FKV_OK)
        return st;
    decode_call dc = {.layer = layer,
                      .n = n,
                      .seqs = seqs,
                      .stats = {.layer_calls = 1, .steps = layer == 0}};
    st = fkv_task_wait(ctx, layer, &dc.stats);
    /* The background task's work was done whatever this call does: a failure still counts it. */
    dc.consumed = dc.stats;
    dc.consumed.layer_calls = 0;
    dc.consumed.steps = 0;
    if (st == FKV_OK)
        st = reserve_host_pages(ctx, &dc);
    if (st != FKV_OK) {
        fkv_stats_add(ctx, &dc.consumed);
        return st;
    }
    memset(ctx->call.corrections, 0, sizeof(uint64_t) * ctx->cfg.n_kv_heads);

    st = append_token(ctx, &dc, q, k, v);
    if (st == FKV_OK)
        st = fkv_finish_pages(ctx, layer, n, seqs, ctx->call.full, &dc.stats);
    if (st == FKV_OK)
        st = select_for_attention(ctx, &dc);
    if (st == FKV_OK)
        st = fkv_attention_launch(ctx, layer, n, seqs, dc.n_attn_wait, dc.attn_wait, &dc.attn);
    if (st == FKV_OK && fkv_is_speculative(ctx))
        st = keep_query(ctx, &dc);
    if (st == FKV_OK)
        st = deliver_output(ctx, &dc, out);
    if (st != FKV_OK)
        return rollback_call(ctx, &dc, st);
    commit_call(ctx, &dc);
    return FKV_OK;
}
