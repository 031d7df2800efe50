/* Decode (fkv_decode_layer): one token of a batch of sequences through one layer, as the
 * sequence of the method's steps: wait for the layer's speculative task, reserve host memory,
 * upload and append, finish completed pages, select by policy (correction for freekv),
 * attention, output, then commit (the query stays where it was uploaded, for the next step's
 * speculation) or roll back. The steps live
 * in their own files; this one holds their order and what a failed call must undo. */
#include <string.h>

#include "../common/error.h"
#include "attention.h"
#include "correction.h"
#include "decode.h"
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
    int lists_sent; /* the attention lists went up with the inputs (selection known then) */
    fkv_recall_carry lists; /* the lists as the call's selection left them, carried by its
                             * recall (lists.buf: where), so the attention reads them there */
    fkv_bevent *held; /* the recaller's marker after that attention (fkv_recaller_hold) */
    fkv_bevent *corr;    /* recall of this call's selection (sync) or correction (freekv) */
    fkv_bevent *attn, *end;
    fkv_bevent *attn_wait[2]; /* the speculative recall and corr, when there are */
    uint32_t n_attn_wait;
    const fkv_engine_sync *sync; /* the engine's events, or NULL */
    /* the descriptors that went up with the inputs (describe_selections), or NULL */
    const int32_t *desc_now, *desc_next;
    size_t desc_now_off, desc_next_off; /* in the layer's io buffer */
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

/* The input block this call uploads into (ls->in_block): one that holds no sequence's
 * previous query of the layer, which while the same batch repeats is the block the batch did
 * not use last step. When every block holds some (batches of changing composition), the
 * queries in the least used one move to their parking rows first, and the call waits for
 * those copies, so that a failure leaves every pointer on a valid query. */
static fkv_status choose_block(fkv_context *ctx, const decode_call *dc) {
    layer_state *ls = &ctx->layers[dc->layer];
    uint32_t users[FKV_IN_BLOCKS] = {0}, best = 0;
    for (uint32_t s = 0; s < ctx->cfg.max_seqs; s++) {
        int32_t b = ctx->seqs[s].layers[dc->layer].qblock;
        if (b >= 0 && b < FKV_IN_BLOCKS)
            users[b]++;
    }
    for (uint32_t b = 1; b < FKV_IN_BLOCKS; b++)
        if (users[b] < users[best])
            best = b;
    ls->in_block = best;
    if (users[best] == 0)
        return FKV_OK;
    fkv_status st = FKV_OK;
    for (uint32_t s = 0; s < ctx->cfg.max_seqs && st == FKV_OK; s++) {
        const seq_layer *sl = &ctx->seqs[s].layers[dc->layer];
        if (sl->qblock == (int32_t)best)
            st = fkv_op_copy(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->io,
                             fkv_q_offset(ctx, FKV_QPARK, s), ls->io, fkv_qprev_offset(ctx, sl),
                             ctx->q_row_bytes);
    }
    fkv_bevent *moved = NULL;
    if (st == FKV_OK)
        st = fkv_op_marker(ctx->dev, FKV_QUEUE_COMPUTE, (fkv_deps){.done = &moved});
    if (st == FKV_OK)
        st = fkv_wait_release(ctx, &moved);
    for (uint32_t s = 0; s < ctx->cfg.max_seqs && st == FKV_OK; s++) {
        seq_layer *sl = &ctx->seqs[s].layers[dc->layer];
        if (sl->qblock == (int32_t)best)
            fkv_qprev_park(sl, s);
    }
    return st;
}

/* The call's inputs into its input block: the host parts of q, k, v, the rows table and the
 * attention lists (when the selection is known before the upload) in one write, back to back
 * (fkv_in_layout); a q in device memory is copied in (the next step's speculation and
 * correction read it there); k and v in device memory are read in place by the append. */
static fkv_status upload_inputs(fkv_context *ctx, const decode_call *dc, const fkv_tensor *q,
                                const fkv_tensor *k, const fkv_tensor *v, size_t lists_bytes) {
    layer_state *ls = &ctx->layers[dc->layer];
    fkv_in_layout in = fkv_in_layout_of(ctx, dc->n);
    const fkv_tensor *parts[3] = {q, k, v};
    size_t at[3] = {in.q, in.k, in.v}, to[3] = {in.k, in.v, in.rows}, first = in.rows;
    for (int j = 2; j >= 0; j--)
        if (parts[j]->host) {
            memcpy(ls->host.in + at[j], parts[j]->host, to[j] - at[j]);
            first = at[j];
        }
    size_t block = fkv_q_offset(ctx, ls->in_block, 0), end = in.heads + lists_bytes;
    /* the first command reading the caller's inputs: it (and, in order, the rest) waits for
     * the engine's events */
    fkv_deps engine = {.n_wait = dc->sync ? dc->sync->n_wait : 0,
                       .wait = dc->sync ? dc->sync->wait : NULL};
    fkv_status st = fkv_op_write(ctx->dev, FKV_QUEUE_COMPUTE, engine, ls->io, block + first,
                                 ls->host.in + first, end - first);
    if (st == FKV_OK && q->buffer)
        st = fkv_op_copy(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->io, block + in.q,
                         q->buffer->bbuf, q->offset, in.k - in.q);
    return st;
}

/* The scores descriptors of the call's selection (quest, sync: this query; freekv: the
 * correction's, with the previous-query rows) and of the speculative task it submits (this
 * query, for the next step) into the input staging, so that the inputs' write carries them:
 * everything they hold (the batch, the token counts after the append, the query rows) is
 * known before the upload, and the layer's next call waits for the task. */
static void describe_selections(fkv_context *ctx, decode_call *dc) {
    layer_state *ls = &ctx->layers[dc->layer];
    fkv_in_layout in = fkv_in_layout_of(ctx, dc->n);
    size_t block = fkv_q_offset(ctx, ls->in_block, 0);
    fkv_policy policy = ctx->cfg.policy;
    select_args now = {.n = dc->n, .seqs = dc->seqs}, next = now;
    next.extra_tokens = 1;
    int32_t *host_now = (int32_t *)(ls->host.in + in.desc_now);
    int32_t *host_next = (int32_t *)(ls->host.in + in.desc_next);
    if (policy == FKV_POLICY_FREEKV)
        fkv_correction_describe(ctx, dc->layer, &now, host_now);
    else if (policy == FKV_POLICY_QUEST || policy == FKV_POLICY_SYNC)
        fkv_selection_describe(ctx, dc->layer, &now, host_now);
    else
        host_now = NULL; /* dense, speculative: no selection in the call */
    dc->desc_now = host_now;
    dc->desc_now_off = block + in.desc_now;
    if (fkv_is_speculative(ctx)) {
        fkv_selection_describe(ctx, dc->layer, &next, host_next);
        dc->desc_next = host_next;
        dc->desc_next_off = block + in.desc_next;
    }
}

/* Appends k/v at each sequence's next row, in its current page's home slot, after the upload
 * of the inputs. The append wrote a row no one reads yet, past the tokens the page holds:
 * undoing it is undoing the count. Policies whose selection is known before the upload (dense,
 * speculative, and freekv until a correction) send the attention lists with the inputs. */
static fkv_status append_token(fkv_context *ctx, decode_call *dc, const fkv_tensor *q,
                               const fkv_tensor *k, const fkv_tensor *v) {
    layer_state *ls = &ctx->layers[dc->layer];
    fkv_status st = choose_block(ctx, dc);
    if (st != FKV_OK)
        return st;
    uint32_t p = ctx->cfg.page_size;
    fkv_in_layout in = fkv_in_layout_of(ctx, dc->n);
    int32_t *rows = (int32_t *)(ls->host.in + in.rows);
    for (uint32_t i = 0; i < dc->n; i++) {
        seq_layer *sl = &ctx->seqs[dc->seqs[i]].layers[dc->layer];
        rows[i] = fkv_row(ctx, dc->seqs[i], fkv_home_slot(ctx, sl->n_tokens / p),
                          sl->n_tokens % p);
        sl->n_tokens++;
    }
    dc->appended = 1;
    describe_selections(ctx, dc);
    /* the pages this call completes: their index goes up with the inputs */
    fkv_describe_full(ctx, dc->n, dc->seqs, ctx->call.full,
                      (int32_t *)(ls->host.in + in.summ));
    fkv_policy policy = ctx->cfg.policy;
    dc->lists_sent = policy == FKV_POLICY_DENSE || fkv_is_speculative(ctx);
    size_t lists = dc->lists_sent ? fkv_attention_lists(ctx, dc->layer, dc->n, dc->seqs) : 0;
    st = upload_inputs(ctx, dc, q, k, v, lists);
    size_t block = fkv_q_offset(ctx, ls->in_block, 0);
    const fkv_bbuf *kb = k->buffer ? k->buffer->bbuf : ls->io;
    const fkv_bbuf *vb = v->buffer ? v->buffer->bbuf : ls->io;
    size_t ko = k->buffer ? k->offset : block + in.k, vo = v->buffer ? v->offset : block + in.v;
    if (st == FKV_OK)
        st = fkv_op_append(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, &ctx->geom, kb, ko, vb, vo,
                           dc->n, ls->io, block + in.rows, ls->kpool, ls->vpool);
    return st;
}

/* quest: selection in place, with this step's query. */
static fkv_status select_quest(fkv_context *ctx, decode_call *dc) {
    double t0 = fkv_now();
    select_args a = {.queue = FKV_QUEUE_COMPUTE,
                     .pl = &ctx->plan_main,
                     .n = dc->n,
                     .seqs = dc->seqs,
                     .stats = &dc->stats,
                     .desc = dc->desc_now,
                     .desc_off = dc->desc_now_off};
    fkv_status st = fkv_select_pages(ctx, dc->layer, &a);
    dc->stats.blocked_select_seconds += fkv_now() - t0;
    return st;
}

/* sync: selection with this step's query and its recall on the caller's thread (ArkVale's
 * cost); attention waits for the recall on the device. */
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
                     .stats = &dc->stats,
                     .desc = dc->desc_now,
                     .desc_off = dc->desc_now_off,
                     .lists = &dc->lists};
    fkv_status st = fkv_select_pages(ctx, dc->layer, &a);
    /* fkv_select_pages ends with the recall engine's run */
    double engine = dc->stats.recall_seconds - engine0;
    dc->stats.blocked_select_seconds += fkv_now() - t0 - engine;
    dc->stats.blocked_recall_seconds += engine;
    return st;
}

/* speculative, freekv: the pages the worker recalled after the previous step (freekv first
 * corrects the heads whose query changed too much); attention waits for that recall on the
 * device, the caller does not. */
static fkv_status select_speculative(fkv_context *ctx, decode_call *dc) {
    layer_state *ls = &ctx->layers[dc->layer];
    fkv_status st = FKV_OK;
    if (ctx->cfg.policy == FKV_POLICY_FREEKV) {
        fkv_correction_desc desc = {.now = dc->desc_now,
                                    .next = dc->desc_next,
                                    .now_off = dc->desc_now_off,
                                    .next_off = dc->desc_next_off};
        st = fkv_correct_heads(ctx, dc->layer, dc->n, dc->seqs, &desc, &dc->lists, &dc->corr,
                               &dc->stats);
    }
    if (st == FKV_OK && ls->ev_recall)
        dc->attn_wait[dc->n_attn_wait++] = ls->ev_recall;
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

/* Whether the call's selection (freekv's correction) moved a page of the batch's middle slots
 * since they were saved, so that the attention lists sent with the inputs are stale. */
static int selection_changed(const fkv_context *ctx, const decode_call *dc) {
    if (!dc->selected)
        return 0;
    size_t per = (size_t)ctx->cfg.n_kv_heads * ctx->n_mid;
    for (uint32_t i = 0; i < dc->n; i++) {
        const int32_t *now = ctx->seqs[dc->seqs[i]].layers[dc->layer].mid_page;
        if (memcmp(now, ctx->plan_main.mid_saved + i * per, per * sizeof *now) != 0)
            return 1;
    }
    return 0;
}

/* The output is the caller's when the call returns: host memory is read back and waited
 * for, with every command of the call (the offload of a page it filled included), so that
 * their failure fails the call. A device output was written by the attention itself; the call
 * does not wait: its marker `end` stays with the layer (ls->ev_end, commit_call) until the
 * layer's next task or call waits for it and reports a failure. */
static fkv_status deliver_output(fkv_context *ctx, decode_call *dc, fkv_tensor *out) {
    layer_state *ls = &ctx->layers[dc->layer];
    size_t qbytes = (size_t)dc->n * ctx->q_row_bytes;
    fkv_status st = FKV_OK;
    fkv_bevent *offloaded = NULL;
    if (out->host)
        st = fkv_op_read(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->out, 0, (void *)out->host,
                         qbytes);
    else if (dc->stats.pages_offloaded)
        /* the transfer queue's report of the call's offload reads, so that their failure
         * stays this call's (a host output's failure is reported by the rollback's finish) */
        st = fkv_op_marker(ctx->dev, FKV_QUEUE_TRANSFER, (fkv_deps){.done = &offloaded});
    /* the end also follows the marker that holds the lists' staging: its failure is the
     * call's */
    fkv_bevent *after[2];
    uint32_t n_after = 0;
    if (offloaded || ls->ev_offload)
        after[n_after++] = offloaded ? offloaded : ls->ev_offload;
    if (dc->held)
        after[n_after++] = dc->held;
    if (st == FKV_OK)
        st = fkv_op_marker(ctx->dev, FKV_QUEUE_COMPUTE,
                           (fkv_deps){.n_wait = n_after, .wait = after, .done = &dc->end});
    fkv_release_event(ctx, &offloaded);
    if (st == FKV_OK && out->host)
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
    fkv_release_event(ctx, &ls->ev_end); /* fkv_task_wait retired it: NULL */
    ls->ev_end = dc->end;
    ls->end_n = dc->n;
    memcpy(ls->end_seqs, dc->seqs, sizeof *dc->seqs * dc->n);
    for (uint32_t i = 0; i < dc->n; i++) {
        seq_state *s = &ctx->seqs[dc->seqs[i]];
        seq_layer *sl = &s->layers[dc->layer];
        for (uint32_t h = 0; h < hk; h++) {
            size_t ih = (size_t)i * hk + h;
            sl->n_attended[h] = cs->n_attended[ih];
            memcpy(sl->attended + (size_t)h * ctx->list_cap, cs->attended + ih * ctx->list_cap,
                   sizeof(int32_t) * cs->n_attended[ih]);
        }
        if (fkv_is_speculative(ctx)) { /* q[t]: the next step's previous query */
            sl->qblock = (int32_t)ls->in_block;
            sl->qpos = i;
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
        fkv_task_submit(ctx, dc->layer, dc->n, dc->seqs, dc->desc_next_off,
                        ctx->cfg.policy == FKV_POLICY_FREEKV);
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

fkv_status fkv_decode_run(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                          const fkv_tensor *q, const fkv_tensor *k, const fkv_tensor *v,
                          fkv_tensor *out, const fkv_engine_sync *sync) {
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_decode_layer: NULL context");
    fkv_status st = check_decode(ctx, layer, n, seqs, q, k, v, out);
    if (st != FKV_OK)
        return st;
    decode_call dc = {.layer = layer,
                      .n = n,
                      .seqs = seqs,
                      .stats = {.layer_calls = 1, .steps = layer == 0},
                      .sync = sync};
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
        st = fkv_finish_pages(ctx, layer, n, seqs, ctx->call.full, ctx->layers[layer].io,
                              fkv_q_offset(ctx, ctx->layers[layer].in_block, 0) +
                                  fkv_in_layout_of(ctx, n).summ,
                              &dc.stats);
    if (st == FKV_OK)
        st = select_for_attention(ctx, &dc);
    fkv_bbuf *dst = out->host ? ctx->layers[layer].out : out->buffer->bbuf;
    size_t dst_off = out->host ? 0 : out->offset;
    int rebuild = !dc.lists_sent || selection_changed(ctx, &dc);
    if (st == FKV_OK)
        st = fkv_attention_launch(ctx, layer, n, seqs, rebuild, &dc.lists, dc.n_attn_wait,
                                  dc.attn_wait, dst, dst_off, &dc.attn);
    if (st == FKV_OK && rebuild && dc.lists.buf) /* the attention reads the recall's staging */
        st = fkv_recaller_hold(ctx->rec_main, FKV_QUEUE_COMPUTE, &dc.held);
    if (st == FKV_OK)
        st = deliver_output(ctx, &dc, out);
    if (st == FKV_OK && sync && sync->signal) /* in order after the output's commands */
        st = fkv_op_event_signal(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, sync->signal);
    if (st != FKV_OK)
        return rollback_call(ctx, &dc, st);
    commit_call(ctx, &dc);
    return FKV_OK;
}

fkv_status fkv_decode_layer(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                            const fkv_tensor *q, const fkv_tensor *k, const fkv_tensor *v,
                            fkv_tensor *out) {
    return fkv_decode_run(ctx, layer, n, seqs, q, k, v, out, NULL);
}
