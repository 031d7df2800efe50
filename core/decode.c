/* Prefill, per-layer decode and the speculative worker: the FreeKV pipeline over the device
 * interface. Ownership of a layer's state alternates: the main thread owns it until it submits
 * the layer's speculative task; the worker owns it until it publishes the task's plan. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "context.h"

#define MAX_WAIT 8

/* ---- small helpers ---------------------------------------------------------------------- */

static fkv_status wait_release(fkv_context *ctx, fkv_bevent **ev) {
    if (*ev == NULL)
        return FKV_OK;
    fkv_status st = ctx->ops->event_wait(ctx->bd, 1, ev);
    fkv_release_event(ctx, ev);
    return st;
}

/* s += d; blocked_seconds is kept as the sum of its three parts. */
static void stats_sum(fkv_stats *s, const fkv_stats *d) {
    s->steps += d->steps;
    s->layer_calls += d->layer_calls;
    s->selections += d->selections;
    s->corrections += d->corrections;
    s->heads_checked += d->heads_checked;
    s->pages_recalled += d->pages_recalled;
    s->bytes_recalled += d->bytes_recalled;
    s->pages_offloaded += d->pages_offloaded;
    s->bytes_offloaded += d->bytes_offloaded;
    s->recall_seconds += d->recall_seconds;
    s->blocked_recall_seconds += d->blocked_recall_seconds;
    s->blocked_select_seconds += d->blocked_select_seconds;
    s->blocked_correction_seconds += d->blocked_correction_seconds;
    s->blocked_seconds +=
        d->blocked_recall_seconds + d->blocked_select_seconds + d->blocked_correction_seconds;
}

static void stats_add(fkv_context *ctx, const fkv_stats *d) {
    pthread_mutex_lock(&ctx->lock);
    stats_sum(&ctx->stats, d);
    pthread_mutex_unlock(&ctx->lock);
}

/* Checks a tensor argument of `bytes` bytes: host memory, or a buffer of this device. */
static fkv_status check_tensor(const fkv_context *ctx, const fkv_tensor *t, size_t bytes,
                               const char *fn, const char *name) {
    if (t == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, name);
    if ((t->host == NULL) == (t->buffer == NULL))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: %s must have exactly one of host or buffer",
                         fn, name);
    if (t->buffer) {
        if (t->buffer->dev != ctx->dev)
            return fkv_error(FKV_ERR_WRONG_DEVICE, "%s: %s belongs to device '%s', not '%s'", fn,
                             name, t->buffer->dev->info.name, ctx->dev->info.name);
        if (t->offset > t->buffer->size || bytes > t->buffer->size - t->offset)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "%s: %s needs %zu bytes at offset %zu of a %zu-byte buffer", fn, name,
                             bytes, t->offset, t->buffer->size);
    }
    return FKV_OK;
}

/* Brings `bytes` of a tensor (from byte `src_off`) into dst: host data is copied into the
 * pinned staging first, so the caller's memory is free when this returns. */
static fkv_status tensor_to_device(fkv_context *ctx, const fkv_tensor *t, size_t src_off,
                                   void *staging, fkv_bbuf *dst, size_t dst_off, size_t bytes) {
    if (bytes == 0)
        return FKV_OK;
    if (t->host) {
        memcpy(staging, (const unsigned char *)t->host + src_off, bytes);
        return ctx->ops->write(ctx->bd, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, NULL}, dst, dst_off,
                               staging, bytes);
    }
    return ctx->ops->copy(ctx->bd, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, NULL}, dst, dst_off,
                          t->buffer->bbuf, t->offset + src_off, bytes);
}

fkv_status fkv_task_wait(fkv_context *ctx, uint32_t layer, fkv_stats *caller) {
    layer_state *L = &ctx->layers[layer];
    double t0 = fkv_now();
    pthread_mutex_lock(&ctx->lock);
    int waits = L->pending;
    while (L->pending)
        pthread_cond_wait(&ctx->cond, &ctx->lock);
    fkv_status st = L->task_status;
    char msg[sizeof L->task_error];
    memcpy(msg, L->task_error, sizeof msg);
    L->task_status = FKV_OK;
    fkv_stats task = L->task_stats;
    memset(&L->task_stats, 0, sizeof L->task_stats);
    double select_end = L->task_select_end;
    if (caller == NULL)
        stats_sum(&ctx->stats, &task);
    pthread_mutex_unlock(&ctx->lock);
    if (caller)
        stats_sum(caller, &task);
    if (caller && waits) {
        /* until the worker finished this layer's selection: selection; after: recall issue */
        double waited = fkv_now() - t0;
        double select = select_end > t0 ? select_end - t0 : 0;
        if (select > waited)
            select = waited;
        caller->blocked_select_seconds += select;
        caller->blocked_recall_seconds += waited - select;
    }
    if (st != FKV_OK)
        return fkv_error(st, "speculative recall of layer %u failed: %s", layer, msg);
    return FKV_OK;
}

/* ---- selection ------------------------------------------------------------------------- */

/* Candidate pages [sink, end) for a sequence that holds n_now tokens and will attend with
 * n_target tokens: outside sink and window, and full (summarised) already. */
static uint32_t candidates_end(const fkv_context *ctx, uint32_t n_now, uint32_t n_target) {
    uint32_t end = fkv_window_begin(ctx, n_target);
    uint32_t full = n_now / ctx->cfg.page_size;
    return end < full ? end : full;
}

typedef struct select_args {
    fkv_queue queue;
    fkv_recaller *rec;  /* NULL: quest (no recall, the selection is the attention set) */
    planner *pl;
    uint32_t n;
    const uint32_t *seqs;
    int use_qprev;        /* query rows: the previous query (qprev[qcur], row = sequence id)
                           * or this call's (qin, row = batch position) */
    uint32_t extra_tokens; /* target = n_tokens + extra_tokens */
    const int32_t *mask;   /* [n][Hk] heads to select for; NULL = all */
    uint32_t n_wait;
    fkv_bevent *const *wait; /* recall waits on these before overwriting slots */
    fkv_bevent **done;       /* recall completion */
    fkv_stats *st;
} select_args;

/* Scores on the device, reduction/top-k/plan on the host, then the recall of missing pages. */
static fkv_status select_pages(fkv_context *ctx, uint32_t layer, const select_args *a) {
    const fkv_backend_ops *o = ctx->ops;
    layer_state *L = &ctx->layers[layer];
    const fkv_config *c = &ctx->cfg;
    uint32_t hq = c->n_q_heads, hk = c->n_kv_heads, S = ctx->sink_pages;
    size_t per_seq = (size_t)hq * ctx->max_pages;
    fkv_status st = FKV_OK;
    fkv_bevent *ev = NULL;
    if (a->done)
        *a->done = NULL;
    for (uint32_t i = 0; i < a->n; i++) {
        seq_layer *sl = &ctx->seqs[a->seqs[i]].layers[layer];
        uint32_t ce = candidates_end(ctx, sl->n_tokens, sl->n_tokens + a->extra_tokens);
        L->h.desc[3 * i] = fkv_summary_index(ctx, a->seqs[i], 0);
        L->h.desc[3 * i + 1] = (int32_t)ce;
        L->h.desc[3 * i + 2] = 0; /* each sequence's scores start at its own byte offset */
    }
    st = o->write(ctx->bd, a->queue, (fkv_deps){0, NULL, NULL}, L->desc, 0, L->h.desc,
                  (size_t)a->n * 3 * 4);
    for (uint32_t i = 0; i < a->n && st == FKV_OK; i++) {
        uint32_t ce = (uint32_t)L->h.desc[3 * i + 1];
        if (ce <= S || ctx->n_mid == 0)
            continue;
        const seq_layer *sl = &ctx->seqs[a->seqs[i]].layers[layer];
        const fkv_bbuf *qbuf = a->use_qprev ? L->qprev[sl->qcur] : L->qin;
        size_t q_row = a->use_qprev ? a->seqs[i] : i;
        st = o->scores(ctx->bd, a->queue, (fkv_deps){0, NULL, NULL}, &ctx->g, qbuf,
                       q_row * hq * c->head_dim * 4, 1, L->desc, (size_t)i * 12, L->summ, L->scores,
                       i * per_seq * 4);
        if (st == FKV_OK) {
            fkv_release_event(ctx, &ev);
            st = o->read(ctx->bd, a->queue, (fkv_deps){0, NULL, &ev}, L->scores, i * per_seq * 4,
                         L->h.scores + i * per_seq, (size_t)hq * ce * 4);
        }
    }
    if (st == FKV_OK && ev == NULL) /* nothing scored: make sure the desc write is done */
        st = o->marker(ctx->bd, a->queue, (fkv_deps){0, NULL, &ev});
    if (st == FKV_OK)
        st = wait_release(ctx, &ev);
    fkv_release_event(ctx, &ev);
    if (st != FKV_OK) {
        /* Commands already queued read the host desc and write the host scores: they must be
         * done before this layer's staging is used again (by the other thread, too). */
        char *msg = fkv_error_save();
        o->finish(ctx->bd, a->queue);
        fkv_error_restore(msg);
        return st;
    }

    planner *pl = a->pl;
    uint32_t n_units = 0;
    for (uint32_t i = 0; i < a->n; i++) {
        uint32_t seq = a->seqs[i];
        seq_layer *sl = &ctx->seqs[seq].layers[layer];
        uint32_t ce = (uint32_t)L->h.desc[3 * i + 1];
        uint32_t n_cand = ce > S ? ce - S : 0;
        const float *scores = L->h.scores + i * per_seq;
        for (uint32_t h = 0; h < hk; h++) {
            if (a->mask && !a->mask[(size_t)i * hk + h])
                continue;
            int32_t *mid = sl->mid_page + (size_t)h * ctx->n_mid;
            float *mscore = sl->mid_score + (size_t)h * ctx->n_mid;
            uint32_t n_sel = 0;
            if (n_cand > 0 && ctx->n_mid > 0) {
                fkv_reduce_group(scores + (size_t)h * ctx->group * ce, ce, ctx->group, S, ce,
                                 c->group_reduce, fkv_group_temp_scale(c), pl->reduced);
                n_sel = fkv_topk(pl->reduced, n_cand, ctx->n_mid, pl->topk);
                for (uint32_t k = 0; k < n_sel; k++) {
                    pl->top_score[k] = pl->reduced[pl->topk[k]];
                    pl->topk[k] += S;
                }
            }
            if (a->rec == NULL) { /* quest: the selection is read in place */
                for (uint32_t m = 0; m < ctx->n_mid; m++)
                    mid[m] = m < n_sel ? (int32_t)pl->topk[m] : -1;
                continue;
            }
            uint32_t n_fill = fkv_plan_slots(mid, mscore, ctx->n_mid, pl->topk, pl->top_score,
                                             n_sel, pl->fill_slot, pl->fill_page);
            for (uint32_t f = 0; f < n_fill; f++) {
                fkv_recall_unit *u = &pl->units[n_units++];
                const unsigned char *page = fkv_hostpool_page(&sl->hp, pl->fill_page[f], &u->host,
                                                              &u->host_offset);
                u->host_offset += (uint64_t)h * ctx->unit_bytes;
                u->src = page + (size_t)h * ctx->unit_bytes;
                u->gslot = fkv_gslot(ctx, seq, S + ctx->window_pages + pl->fill_slot[f]);
                u->kv_head = (int32_t)h;
            }
        }
    }
    a->st->selections += a->n;
    if (a->rec == NULL)
        return FKV_OK;
    double t0 = fkv_now();
    st = fkv_recaller_run(a->rec, a->queue, n_units, pl->units, L->kpool, L->vpool,
                          (fkv_deps){a->n_wait, a->wait, a->done});
    a->st->recall_seconds += fkv_now() - t0;
    a->st->pages_recalled += n_units;
    a->st->bytes_recalled += (uint64_t)n_units * ctx->unit_bytes;
    return st;
}

/* ---- undoing a selection ---------------------------------------------------------------- */

static int32_t *mid_of(fkv_context *ctx, uint32_t seq, uint32_t layer) {
    return ctx->seqs[seq].layers[layer].mid_page;
}

/* Keeps the middle slots of the batch in pl before a selection changes them. */
static void mid_save(fkv_context *ctx, planner *pl, uint32_t layer, uint32_t n,
                     const uint32_t *seqs) {
    size_t per = (size_t)ctx->cfg.n_kv_heads * ctx->n_mid;
    for (uint32_t i = 0; i < n; i++) {
        const seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        memcpy(pl->mid_saved + i * per, sl->mid_page, per * sizeof(int32_t));
        memcpy(pl->score_saved + i * per, sl->mid_score, per * sizeof(float));
    }
}

/* Undoes a selection made since mid_save. Without a recall (quest) the slots are as saved.
 * With one, a slot that received another page may hold part of it, so it becomes empty
 * rather than claiming either page; slots that kept or merely dropped their page are as
 * saved (their contents were not written). The next selection brings what is missing. */
static void mid_restore(fkv_context *ctx, const planner *pl, uint32_t layer, uint32_t n,
                        const uint32_t *seqs, int recalled) {
    size_t per = (size_t)ctx->cfg.n_kv_heads * ctx->n_mid;
    for (uint32_t i = 0; i < n; i++) {
        seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        const int32_t *saved = pl->mid_saved + i * per;
        for (size_t m = 0; m < per; m++) {
            int refilled = recalled && sl->mid_page[m] >= 0 && sl->mid_page[m] != saved[m];
            sl->mid_page[m] = refilled ? -1 : saved[m];
            sl->mid_score[m] = pl->score_saved[i * per + m];
        }
    }
}

fkv_status fkv_settle_recall(fkv_context *ctx, uint32_t layer) {
    layer_state *L = &ctx->layers[layer];
    if (L->ev_recall == NULL)
        return FKV_OK;
    fkv_status st = ctx->ops->event_wait(ctx->bd, 1, &L->ev_recall);
    if (st == FKV_OK)
        return FKV_OK;
    /* The recall left the slots it was filling undefined: its sequences' middle slots are
     * emptied, and the next selection fills them again. */
    for (uint32_t i = 0; i < L->task_n; i++) {
        int32_t *mid = mid_of(ctx, L->task_seqs[i], layer);
        for (size_t m = 0; m < (size_t)ctx->cfg.n_kv_heads * ctx->n_mid; m++)
            mid[m] = -1;
    }
    fkv_release_event(ctx, &L->ev_recall);
    return fkv_error_prefix(st, "speculative recall of layer %u", layer);
}

/* ---- the speculative worker ------------------------------------------------------------ */

static fkv_status run_task(fkv_context *ctx, uint32_t layer) {
    layer_state *L = &ctx->layers[layer];
    fkv_stats st_delta;
    memset(&st_delta, 0, sizeof st_delta);
    /* The call that submitted the task waited for its commands and for the offload of the
     * pages it filled, which the gather reads; the wait below only makes that explicit. */
    fkv_status st = FKV_OK;
    if (L->ev_offload)
        st = ctx->ops->event_wait(ctx->bd, 1, &L->ev_offload);
    if (st != FKV_OK)
        return st;
    fkv_bevent *wait[1] = {L->ev_attn};
    fkv_bevent *done = NULL;
    select_args a = {.queue = FKV_QUEUE_BACKGROUND,
                     .rec = ctx->rec_worker,
                     .pl = &ctx->plan_worker,
                     .n = L->task_n,
                     .seqs = L->task_seqs,
                     .use_qprev = 1,
                     .extra_tokens = 1,
                     .n_wait = L->ev_attn ? 1 : 0,
                     .wait = wait,
                     .done = &done,
                     .st = &st_delta};
    mid_save(ctx, a.pl, layer, a.n, a.seqs);
    st = select_pages(ctx, layer, &a);
    if (st == FKV_OK) {
        fkv_release_event(ctx, &L->ev_recall);
        L->ev_recall = done;
    } else {
        fkv_release_event(ctx, &done);
        mid_restore(ctx, a.pl, layer, a.n, a.seqs, 1);
    }
    /* the recall run is the last part of select_pages */
    L->task_select_end = fkv_now() - st_delta.recall_seconds;
    stats_sum(&L->task_stats, &st_delta); /* the caller reads it once the task is published */
    return st;
}

void *fkv_worker_main(void *arg) {
    fkv_context *ctx = arg;
    pthread_mutex_lock(&ctx->lock);
    for (;;) {
        while (!ctx->stop && ctx->fifo_len == 0)
            pthread_cond_wait(&ctx->cond, &ctx->lock);
        if (ctx->stop)
            break;
        uint32_t layer = ctx->fifo[ctx->fifo_head];
        pthread_mutex_unlock(&ctx->lock);
        fkv_status st = run_task(ctx, layer);
        char msg[sizeof ctx->layers[0].task_error];
        snprintf(msg, sizeof msg, "%s", st != FKV_OK ? fkv_last_error() : "");
        pthread_mutex_lock(&ctx->lock);
        layer_state *L = &ctx->layers[layer];
        L->task_status = st;
        memcpy(L->task_error, msg, sizeof msg);
        L->pending = 0;
        ctx->fifo_head = (ctx->fifo_head + 1) % ctx->cfg.n_layers;
        ctx->fifo_len--;
        pthread_cond_broadcast(&ctx->cond);
    }
    pthread_mutex_unlock(&ctx->lock);
    return NULL;
}

static void submit_task(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs) {
    layer_state *L = &ctx->layers[layer];
    pthread_mutex_lock(&ctx->lock);
    L->task_n = n;
    memcpy(L->task_seqs, seqs, sizeof *seqs * n);
    L->pending = 1;
    ctx->fifo[(ctx->fifo_head + ctx->fifo_len) % ctx->cfg.n_layers] = layer;
    ctx->fifo_len++;
    pthread_cond_broadcast(&ctx->cond);
    pthread_mutex_unlock(&ctx->lock);
}

/* ---- attention lists ------------------------------------------------------------------- */

static int cmp_page(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Per-head lists of (slot, tokens) in ascending page order, so every policy sums the same
 * pages in the same order and equal selections give bitwise-equal outputs. */
static void build_lists(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs) {
    layer_state *L = &ctx->layers[layer];
    uint32_t hk = ctx->cfg.n_kv_heads, p = ctx->cfg.page_size, S = ctx->sink_pages;
    uint32_t e = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t seq = seqs[i];
        seq_layer *sl = &ctx->seqs[seq].layers[layer];
        uint32_t nt = sl->n_tokens, cur = nt / p, wb = fkv_window_begin(ctx, nt);
        for (uint32_t h = 0; h < hk; h++) {
            /* the call's copy: the sequence's attended pages change only if the call succeeds */
            size_t ih = (size_t)i * hk + h;
            int32_t *att = ctx->call.attended + ih * ctx->list_cap;
            uint32_t na = 0, start = e;
            /* (page, slot) pairs */
            static _Thread_local int32_t pairs[2 * (FKV_MAX_MIDDLE_SLOTS + 1)];
            uint32_t np = 0;
            if (ctx->cfg.policy == FKV_POLICY_DENSE) {
                wb = 0; /* every page is "window": emitted in order below */
            } else {
                for (uint32_t m = 0; m < ctx->n_mid; m++) {
                    int32_t pg = sl->mid_page[(size_t)h * ctx->n_mid + m];
                    if (pg < (int32_t)S || (uint32_t)pg >= wb)
                        continue; /* empty, or no longer a candidate */
                    pairs[2 * np] = pg;
                    pairs[2 * np + 1] = (int32_t)(ctx->offload ? S + ctx->window_pages + m
                                                               : (uint32_t)pg);
                    np++;
                }
                qsort(pairs, np, 2 * sizeof *pairs, cmp_page);
            }
            uint32_t sink_end = ctx->cfg.policy == FKV_POLICY_DENSE ? 0 : S;
            for (uint32_t k = 0, j = 0;; ) {
                /* merge: sink pages, then selected middle pages, then the window */
                uint32_t page, slot;
                if (j < sink_end && j <= cur) {
                    page = j;
                    slot = j;
                    j++;
                } else if (k < np) {
                    page = (uint32_t)pairs[2 * k];
                    slot = (uint32_t)pairs[2 * k + 1];
                    k++;
                } else {
                    if (j < wb)
                        j = wb;
                    if (j > cur)
                        break;
                    page = j;
                    slot = fkv_home_slot(ctx, j);
                    j++;
                }
                if ((size_t)page * p >= nt)
                    continue; /* the current page may still be empty */
                uint32_t left = nt - page * p;
                L->h.entries[2 * e] = fkv_gslot(ctx, seq, slot);
                L->h.entries[2 * e + 1] = (int32_t)(left < p ? left : p);
                e++;
                att[na++] = (int32_t)page;
            }
            ctx->call.n_attended[ih] = na;
            L->h.heads[2 * ih] = (int32_t)start;
            L->h.heads[2 * ih + 1] = (int32_t)(e - start);
        }
    }
}

/* ---- append and offload ---------------------------------------------------------------- */

/* Summaries (and, for offload policies, the host copy) of the pages that the tokens just
 * appended completed. `full[i]` is the page of seq i that filled, or -1. */
static fkv_status finish_pages(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                               const int32_t *full, fkv_stats *d) {
    const fkv_backend_ops *o = ctx->ops;
    layer_state *L = &ctx->layers[layer];
    uint32_t nf = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (full[i] < 0)
            continue;
        int32_t gslot = fkv_gslot(ctx, seqs[i], fkv_home_slot(ctx, (uint32_t)full[i]));
        L->h.summ_idx[2 * nf] = gslot;
        L->h.summ_idx[2 * nf + 1] = fkv_summary_index(ctx, seqs[i], (uint32_t)full[i]);
        L->h.pack_idx[nf] = gslot;
        nf++;
    }
    if (nf == 0)
        return FKV_OK;
    fkv_deps none = {0, NULL, NULL};
    fkv_status st = o->write(ctx->bd, FKV_QUEUE_COMPUTE, none, L->summ_idx, 0, L->h.summ_idx,
                             (size_t)nf * 8);
    if (st == FKV_OK)
        st = o->summarize(ctx->bd, FKV_QUEUE_COMPUTE, none, &ctx->g, L->kpool, nf, L->summ_idx, 0,
                          L->summ);
    if (st != FKV_OK || !ctx->offload)
        return st;
    st = o->write(ctx->bd, FKV_QUEUE_COMPUTE, none, L->pack_idx, 0, L->h.pack_idx, (size_t)nf * 4);
    /* the pack staging is free once the previous offload read it */
    fkv_bevent *packed = NULL;
    fkv_deps after_prev = {L->ev_offload ? 1 : 0, &L->ev_offload, &packed};
    if (st == FKV_OK)
        st = o->pack_hnd(ctx->bd, FKV_QUEUE_COMPUTE, after_prev, &ctx->g, L->kpool, L->vpool, nf,
                         L->pack_idx, 0, L->pack, 0);
    for (uint32_t i = 0, k = 0; i < n && st == FKV_OK; i++) {
        if (full[i] < 0)
            continue;
        seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        unsigned char *dst = fkv_hostpool_page(&sl->hp, (uint32_t)full[i], NULL, NULL);
        fkv_bevent *ev = NULL;
        /* Each read also waits on the one before, so a failure of any of them fails the last,
         * which the call waits on before it succeeds. */
        fkv_bevent *wait[2] = {packed, L->ev_offload};
        st = o->read(ctx->bd, FKV_QUEUE_TRANSFER, (fkv_deps){L->ev_offload ? 2 : 1, wait, &ev},
                     L->pack, (size_t)k * ctx->page_bytes, dst, ctx->page_bytes);
        if (st == FKV_OK) {
            fkv_release_event(ctx, &L->ev_offload);
            L->ev_offload = ev;
        }
        k++;
    }
    fkv_release_event(ctx, &packed);
    d->pages_offloaded += nf;
    d->bytes_offloaded += (uint64_t)nf * ctx->page_bytes;
    return st;
}

/* ---- prefill --------------------------------------------------------------------------- */

fkv_status fkv_prefill(fkv_context *ctx, uint32_t seq, uint32_t layer, uint32_t n_tokens,
                       const fkv_tensor *k, const fkv_tensor *v, const fkv_tensor *q_last) {
    static const char fn[] = "fkv_prefill";
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: NULL context", fn);
    const fkv_config *c = &ctx->cfg;
    if (seq >= c->max_seqs || layer >= c->n_layers)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: sequence %u / layer %u out of range", fn,
                         seq, layer);
    if (n_tokens == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: n_tokens is 0", fn);
    if (n_tokens > c->max_context)
        return fkv_error(FKV_ERR_CONTEXT_FULL, "%s: %u tokens exceed max_context %u", fn,
                         n_tokens, c->max_context);
    seq_state *s = &ctx->seqs[seq];
    seq_layer *sl = &s->layers[layer];
    if (s->prefilled != layer || s->next_layer != 0 || sl->n_tokens != 0 ||
        (layer == 0 && s->layers[c->n_layers - 1].n_tokens != 0))
        return fkv_error(FKV_ERR_BAD_STATE,
                         "%s: sequence %u layer %u: prefill needs an empty sequence, layers in "
                         "order (next expected layer: %u)",
                         fn, seq, layer, s->prefilled);
    if (layer > 0 && n_tokens != s->layers[0].n_tokens)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "%s: sequence %u layer %u: %u tokens, but layer 0 holds %u (every layer "
                         "holds the same prompt)",
                         fn, seq, layer, n_tokens, s->layers[0].n_tokens);
    size_t row_bytes = ctx->row_elems * 4;
    fkv_status st;
    if ((st = check_tensor(ctx, k, (size_t)n_tokens * row_bytes, fn, "k")) != FKV_OK ||
        (st = check_tensor(ctx, v, (size_t)n_tokens * row_bytes, fn, "v")) != FKV_OK ||
        (st = check_tensor(ctx, q_last, (size_t)c->n_q_heads * c->head_dim * 4, fn, "q_last")) !=
            FKV_OK)
        return st;
    fkv_stats d;
    memset(&d, 0, sizeof d);
    if ((st = fkv_task_wait(ctx, layer, &d)) != FKV_OK)
        return st;
    layer_state *L = &ctx->layers[layer];
    uint32_t p = c->page_size, n_full = n_tokens / p;
    if (ctx->offload && (st = fkv_hostpool_reserve(&sl->hp, ctx->ops, ctx->bd, n_full)) != FKV_OK)
        return st;

    const fkv_backend_ops *o = ctx->ops;
    fkv_deps none = {0, NULL, NULL};
    uint32_t wb_final = fkv_window_begin(ctx, n_tokens);
    uint32_t chunk_tokens = ctx->scratch_pages * p;
    for (uint32_t t0 = 0; t0 < n_tokens && st == FKV_OK; t0 += chunk_tokens) {
        uint32_t nt = n_tokens - t0 < chunk_tokens ? n_tokens - t0 : chunk_tokens;
        uint32_t page0 = t0 / p, npages = (nt + p - 1) / p;
        for (uint32_t r = 0; r < nt; r++)
            ctx->scr_host_rows[r] = (int32_t)r;
        st = o->write(ctx->bd, FKV_QUEUE_COMPUTE, none, ctx->scr_rows, 0, ctx->scr_host_rows,
                      (size_t)nt * 4);
        if (st == FKV_OK)
            st = tensor_to_device(ctx, k, (size_t)t0 * row_bytes, ctx->scr_host_k, ctx->scr_kin, 0,
                                  (size_t)nt * row_bytes);
        if (st == FKV_OK)
            st = tensor_to_device(ctx, v, (size_t)t0 * row_bytes, ctx->scr_host_v, ctx->scr_vin, 0,
                                  (size_t)nt * row_bytes);
        if (st == FKV_OK)
            st = o->append(ctx->bd, FKV_QUEUE_COMPUTE, none, &ctx->g, ctx->scr_kin, 0,
                           ctx->scr_vin, 0, nt, ctx->scr_rows, 0, ctx->scr_k, ctx->scr_v);
        /* full pages: summary into place; host copy for offload policies */
        uint32_t nfull = nt / p;
        for (uint32_t i = 0; i < nfull; i++) {
            L->h.summ_idx[2 * i] = (int32_t)i;
            L->h.summ_idx[2 * i + 1] = fkv_summary_index(ctx, seq, page0 + i);
        }
        if (st == FKV_OK && nfull)
            st = o->write(ctx->bd, FKV_QUEUE_COMPUTE, none, L->summ_idx, 0, L->h.summ_idx,
                          (size_t)nfull * 8);
        if (st == FKV_OK && nfull)
            st = o->summarize(ctx->bd, FKV_QUEUE_COMPUTE, none, &ctx->g, ctx->scr_k, nfull,
                              L->summ_idx, 0, L->summ);
        for (uint32_t i = 0; i < nfull && st == FKV_OK && ctx->offload; i++) {
            /* pack one page at a time through the layer's pack staging */
            fkv_bevent *packed = NULL, *ev = NULL;
            L->h.pack_idx[0] = (int32_t)i;
            st = o->write(ctx->bd, FKV_QUEUE_COMPUTE, none, L->pack_idx, 0, L->h.pack_idx, 4);
            if (st == FKV_OK)
                st = o->pack_hnd(ctx->bd, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &packed}, &ctx->g,
                                 ctx->scr_k, ctx->scr_v, 1, L->pack_idx, 0, L->pack, 0);
            unsigned char *dst = fkv_hostpool_page(&sl->hp, page0 + i, NULL, NULL);
            if (st == FKV_OK)
                st = o->read(ctx->bd, FKV_QUEUE_TRANSFER, (fkv_deps){1, &packed, &ev}, L->pack, 0,
                             dst, ctx->page_bytes);
            fkv_release_event(ctx, &packed);
            /* the single pack staging page and pack_idx are reused next iteration */
            if (st == FKV_OK)
                st = wait_release(ctx, &ev);
            d.pages_offloaded++;
            d.bytes_offloaded += ctx->page_bytes;
        }
        /* pages that stay resident go to their home slots */
        for (uint32_t i = 0; i < npages && st == FKV_OK; i++) {
            uint32_t j = page0 + i;
            int resident = !ctx->offload || j < ctx->sink_pages || j >= wb_final;
            if (!resident)
                continue;
            size_t dst = fkv_slot_offset(ctx, fkv_gslot(ctx, seq, fkv_home_slot(ctx, j)));
            st = o->copy(ctx->bd, FKV_QUEUE_COMPUTE, none, L->kpool, dst, ctx->scr_k,
                         (size_t)i * ctx->slot_bytes, ctx->slot_bytes);
            if (st == FKV_OK)
                st = o->copy(ctx->bd, FKV_QUEUE_COMPUTE, none, L->vpool, dst, ctx->scr_v,
                             (size_t)i * ctx->slot_bytes, ctx->slot_bytes);
        }
        /* the scratch and the host staging are reused by the next chunk */
        if (st == FKV_OK)
            st = ctx->ops->finish(ctx->bd, FKV_QUEUE_COMPUTE);
    }
    /* the empty sequence has no previous query to keep: q_last goes to qprev[qcur] */
    if (st == FKV_OK)
        st = tensor_to_device(ctx, q_last, 0, L->h.q, L->qprev[sl->qcur],
                              (size_t)seq * c->n_q_heads * c->head_dim * 4,
                              (size_t)c->n_q_heads * c->head_dim * 4);
    if (st == FKV_OK) /* its failure must show here, not as a wrong selection later */
        st = o->finish(ctx->bd, FKV_QUEUE_COMPUTE);
    if (st == FKV_OK) {
        sl->n_tokens = n_tokens;
        sl->has_qprev = 1;
        for (size_t i = 0; i < (size_t)c->n_kv_heads * ctx->n_mid; i++)
            sl->mid_page[i] = -1;
    }
    if (st == FKV_OK && ctx->offload) {
        /* initial resident set, chosen with the last prompt token's query for the next step */
        fkv_bevent *done = NULL;
        fkv_bevent *wait[1] = {L->ev_attn};
        select_args a = {.queue = FKV_QUEUE_COMPUTE,
                         .rec = ctx->rec_main,
                         .pl = &ctx->plan_main,
                         .n = 1,
                         .seqs = &seq,
                         .use_qprev = 1,
                         .extra_tokens = 1,
                         .n_wait = L->ev_attn ? 1 : 0,
                         .wait = wait,
                         .done = &done,
                         .st = &d};
        st = select_pages(ctx, layer, &a);
        if (st == FKV_OK)
            st = wait_release(ctx, &done);
        fkv_release_event(ctx, &done);
    }
    if (st != FKV_OK) {
        /* The sequence stays empty: what the device holds for it is unreachable, and the
         * host pool goes back to its size before the call (empty). */
        char *msg = fkv_error_save();
        o->finish(ctx->bd, FKV_QUEUE_COMPUTE);
        o->finish(ctx->bd, FKV_QUEUE_TRANSFER);
        fkv_error_restore(msg);
        sl->n_tokens = 0;
        sl->has_qprev = 0;
        for (size_t i = 0; i < (size_t)c->n_kv_heads * ctx->n_mid; i++)
            sl->mid_page[i] = -1;
        if (ctx->offload)
            fkv_hostpool_trim(&sl->hp, ctx->ops, ctx->bd, 0);
        return st;
    }
    s->prefilled = layer + 1;
    stats_add(ctx, &d);
    return FKV_OK;
}

/* ---- decode ---------------------------------------------------------------------------- */

static fkv_status check_batch(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs) {
    static const char fn[] = "fkv_decode_layer";
    const fkv_config *c = &ctx->cfg;
    if (layer >= c->n_layers)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: layer %u out of range (%u layers)", fn,
                         layer, c->n_layers);
    if (n == 0 || n > c->max_seqs || seqs == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: %u sequences (1..%u, non-NULL list)", fn,
                         n, c->max_seqs);
    for (uint32_t i = 0; i < n; i++) {
        if (seqs[i] >= c->max_seqs)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: sequence %u out of range", fn, seqs[i]);
        for (uint32_t j = 0; j < i; j++)
            if (seqs[j] == seqs[i])
                return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: sequence %u listed twice", fn,
                                 seqs[i]);
        const seq_state *s = &ctx->seqs[seqs[i]];
        if (s->prefilled != 0 && s->prefilled != c->n_layers)
            return fkv_error(FKV_ERR_BAD_STATE, "%s: sequence %u is prefilled up to layer %u only",
                             fn, seqs[i], s->prefilled);
        if (s->next_layer != layer)
            return fkv_error(FKV_ERR_BAD_STATE, "%s: sequence %u expects layer %u, got %u", fn,
                             seqs[i], s->next_layer, layer);
        if (s->layers[layer].n_tokens >= c->max_context)
            return fkv_error(FKV_ERR_CONTEXT_FULL, "%s: sequence %u holds max_context (%u) tokens",
                             fn, seqs[i], c->max_context);
    }
    return FKV_OK;
}

/* Puts back what a failed decode call changed: the appended tokens, the host memory it
 * reserved, the selection it made (mid_restore), the offload event. Runs after the queues
 * drained, so no command of the call is still running. */
static void rollback_call(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                          int appended, int selected, int recalled) {
    const fkv_backend_ops *o = ctx->ops;
    layer_state *L = &ctx->layers[layer];
    for (uint32_t i = 0; i < n; i++) {
        seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        if (appended)
            sl->n_tokens--;
        if (ctx->offload)
            fkv_hostpool_trim(&sl->hp, o, ctx->bd,
                              ctx->call.had_chunks[i] * sl->hp.chunk_pages);
    }
    if (selected)
        mid_restore(ctx, &ctx->plan_main, layer, n, seqs, recalled);
    /* Complete now (the transfer queue drained); it may have failed, and a failed event in
     * the next call's wait lists would fail that call too. */
    if (L->ev_offload) {
        o->event_wait(ctx->bd, 1, &L->ev_offload);
        fkv_release_event(ctx, &L->ev_offload);
    }
    fkv_settle_recall(ctx, layer);
}

fkv_status fkv_decode_layer(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                            const fkv_tensor *q, const fkv_tensor *k, const fkv_tensor *v,
                            fkv_tensor *out) {
    static const char fn[] = "fkv_decode_layer";
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: NULL context", fn);
    const fkv_config *c = &ctx->cfg;
    fkv_status st = check_batch(ctx, layer, n, seqs);
    size_t qbytes = (size_t)n * c->n_q_heads * c->head_dim * 4, kbytes = (size_t)n * ctx->row_elems * 4;
    if (st == FKV_OK && (st = check_tensor(ctx, q, qbytes, fn, "q")) == FKV_OK &&
        (st = check_tensor(ctx, k, kbytes, fn, "k")) == FKV_OK &&
        (st = check_tensor(ctx, v, kbytes, fn, "v")) == FKV_OK)
        st = check_tensor(ctx, out, qbytes, fn, "out");
    if (st != FKV_OK)
        return st;

    const fkv_backend_ops *o = ctx->ops;
    layer_state *L = &ctx->layers[layer];
    call_scratch *cs = &ctx->call;
    uint32_t p = c->page_size, hk = c->n_kv_heads;
    int speculative = c->policy == FKV_POLICY_SPECULATIVE || c->policy == FKV_POLICY_FREEKV;
    fkv_stats d = {.layer_calls = 1, .steps = layer == 0};
    st = fkv_task_wait(ctx, layer, &d);
    /* The background task's work was done whatever this call does: a failure still counts it. */
    fkv_stats consumed = d;
    consumed.layer_calls = 0;
    consumed.steps = 0;
    if (st != FKV_OK) {
        stats_add(ctx, &consumed);
        return st;
    }

    /* Host memory for pages this step completes, before anything changes. */
    for (uint32_t i = 0; i < n; i++) {
        seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        cs->full[i] = (sl->n_tokens + 1) % p == 0 ? (int32_t)(sl->n_tokens / p) : -1;
        if (!ctx->offload)
            continue;
        cs->had_chunks[i] = sl->hp.n_chunks;
        if (cs->full[i] >= 0 &&
            (st = fkv_hostpool_reserve(&sl->hp, o, ctx->bd, (uint32_t)cs->full[i] + 1)) != FKV_OK) {
            for (uint32_t j = 0; j < i; j++) {
                seq_layer *sj = &ctx->seqs[seqs[j]].layers[layer];
                fkv_hostpool_trim(&sj->hp, o, ctx->bd, cs->had_chunks[j] * sj->hp.chunk_pages);
            }
            stats_add(ctx, &consumed);
            return st;
        }
    }
    memset(cs->corrections, 0, sizeof(uint64_t) * hk);
    int appended = 0, selected = 0, recalled = 0;
    fkv_bevent *corr = NULL, *attn = NULL, *end = NULL;

    /* inputs and append */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t t = ctx->seqs[seqs[i]].layers[layer].n_tokens;
        L->h.rows[i] = fkv_row(ctx, seqs[i], fkv_home_slot(ctx, t / p), t % p);
    }
    fkv_deps none = {0, NULL, NULL};
    st = o->write(ctx->bd, FKV_QUEUE_COMPUTE, none, L->rows, 0, L->h.rows, (size_t)n * 4);
    if (st == FKV_OK)
        st = tensor_to_device(ctx, q, 0, L->h.q, L->qin, 0, qbytes);
    if (st == FKV_OK)
        st = tensor_to_device(ctx, k, 0, L->h.k, L->kin, 0, kbytes);
    if (st == FKV_OK)
        st = tensor_to_device(ctx, v, 0, L->h.v, L->vin, 0, kbytes);
    if (st == FKV_OK)
        st = o->append(ctx->bd, FKV_QUEUE_COMPUTE, none, &ctx->g, L->kin, 0, L->vin, 0, n, L->rows,
                       0, L->kpool, L->vpool);
    if (st != FKV_OK)
        goto fail;
    /* The append wrote row t of a slot no one reads yet: the current page's, past the tokens
     * it holds. Undoing it is undoing the count. */
    for (uint32_t i = 0; i < n; i++)
        ctx->seqs[seqs[i]].layers[layer].n_tokens++;
    appended = 1;
    if ((st = finish_pages(ctx, layer, n, seqs, cs->full, &d)) != FKV_OK)
        goto fail;

    /* selection for this step's attention, by policy */
    fkv_bevent *att_wait[MAX_WAIT];
    uint32_t n_att_wait = 0;
    fkv_bevent *slot_readers[1] = {L->ev_attn};
    uint32_t n_readers = L->ev_attn ? 1 : 0;
    if (c->policy != FKV_POLICY_DENSE && c->policy != FKV_POLICY_SPECULATIVE) {
        mid_save(ctx, &ctx->plan_main, layer, n, seqs);
        selected = 1;
        recalled = c->policy != FKV_POLICY_QUEST;
    }
    switch (c->policy) {
    case FKV_POLICY_DENSE:
        break;
    case FKV_POLICY_QUEST: {
        double t0 = fkv_now();
        select_args a = {.queue = FKV_QUEUE_COMPUTE, .pl = &ctx->plan_main, .n = n, .seqs = seqs,
                         .st = &d};
        st = select_pages(ctx, layer, &a);
        d.blocked_select_seconds += fkv_now() - t0;
        break;
    }
    case FKV_POLICY_SYNC: {
        double t0 = fkv_now(), engine0 = d.recall_seconds;
        select_args a = {.queue = FKV_QUEUE_COMPUTE,
                         .rec = ctx->rec_main,
                         .pl = &ctx->plan_main,
                         .n = n,
                         .seqs = seqs,
                         .n_wait = n_readers,
                         .wait = slot_readers,
                         .done = &corr,
                         .st = &d};
        st = select_pages(ctx, layer, &a);
        double t1 = fkv_now(), engine = d.recall_seconds - engine0;
        if (st == FKV_OK) /* the caller waits for this recall: ArkVale's cost */
            st = o->event_wait(ctx->bd, 1, &corr);
        /* select_pages ends with the recall engine's run */
        d.blocked_select_seconds += t1 - t0 - engine;
        d.blocked_recall_seconds += engine + (fkv_now() - t1);
        break;
    }
    case FKV_POLICY_SPECULATIVE:
    case FKV_POLICY_FREEKV:
        if (c->policy == FKV_POLICY_FREEKV) {
            double t_check = fkv_now();
            int any = 0;
            for (uint32_t i = 0; i < n && st == FKV_OK; i++) {
                seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
                if (!sl->has_qprev) { /* nothing to compare with: correct every head */
                    for (uint32_t h = 0; h < hk; h++)
                        L->h.flags[i * hk + h] = 1;
                    continue;
                }
                size_t qrow = (size_t)c->n_q_heads * c->head_dim * 4;
                st = o->cosine_flags(ctx->bd, FKV_QUEUE_COMPUTE, none, &ctx->g, L->qin, i * qrow,
                                     L->qprev[sl->qcur], seqs[i] * qrow, 1, c->tau, L->sims,
                                     (size_t)i * hk * 4, L->flags, (size_t)i * hk * 4);
                if (st == FKV_OK)
                    st = o->read(ctx->bd, FKV_QUEUE_COMPUTE, none, L->flags, (size_t)i * hk * 4,
                                 L->h.flags + (size_t)i * hk, (size_t)hk * 4);
            }
            fkv_bevent *ev = NULL;
            if (st == FKV_OK) /* the method needs the flags now: the one blocking read */
                st = o->marker(ctx->bd, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev});
            if (st == FKV_OK)
                st = wait_release(ctx, &ev);
            for (uint32_t i = 0; i < n * hk && st == FKV_OK; i++)
                any |= L->h.flags[i] != 0;
            d.heads_checked += (uint64_t)n * hk;
            if (st == FKV_OK && any) {
                /* flagged heads: select with q[t] now, after the speculative recall; the
                 * caller waits for it */
                fkv_bevent *w[2];
                uint32_t nw = 0;
                if (L->ev_recall)
                    w[nw++] = L->ev_recall;
                if (L->ev_attn)
                    w[nw++] = L->ev_attn;
                select_args a = {.queue = FKV_QUEUE_COMPUTE,
                                 .rec = ctx->rec_main,
                                 .pl = &ctx->plan_main,
                                 .n = n,
                                 .seqs = seqs,
                                 .mask = L->h.flags,
                                 .n_wait = nw,
                                 .wait = w,
                                 .done = &corr,
                                 .st = &d};
                st = select_pages(ctx, layer, &a);
                for (uint32_t i = 0; i < n * hk; i++)
                    if (L->h.flags[i]) {
                        d.corrections++;
                        cs->corrections[i % hk]++;
                    }
                if (st == FKV_OK)
                    st = o->event_wait(ctx->bd, 1, &corr);
            }
            /* the check (the one blocking read) and any correction */
            d.blocked_correction_seconds += fkv_now() - t_check;
        }
        if (st == FKV_OK && L->ev_recall) {
            /* time the caller would wait for the background recall */
            double t0 = fkv_now();
            st = o->event_wait(ctx->bd, 1, &L->ev_recall);
            d.blocked_recall_seconds += fkv_now() - t0;
            att_wait[n_att_wait++] = L->ev_recall;
        }
        break;
    }
    if (corr)
        att_wait[n_att_wait++] = corr;
    if (st != FKV_OK)
        goto fail;

    /* attention over sink + selected + window */
    build_lists(ctx, layer, n, seqs);
    uint32_t n_entries = 0;
    for (uint32_t i = 0; i < n * hk; i++)
        n_entries += (uint32_t)L->h.heads[2 * i + 1];
    st = o->write(ctx->bd, FKV_QUEUE_COMPUTE, none, L->heads, 0, L->h.heads, (size_t)n * hk * 8);
    if (st == FKV_OK)
        st = o->write(ctx->bd, FKV_QUEUE_COMPUTE, none, L->entries, 0, L->h.entries,
                      (size_t)(n_entries ? n_entries : 1) * 8);
    if (st == FKV_OK)
        st = o->attention(ctx->bd, FKV_QUEUE_COMPUTE, (fkv_deps){n_att_wait, att_wait, &attn},
                          &ctx->g, L->qin, 0, n, L->heads, 0, L->entries, 0, L->kpool, L->vpool,
                          1.0f / sqrtf((float)c->head_dim), L->out, 0);
    if (st == FKV_OK && speculative) {
        /* q[t] becomes the query of the next step's speculative selection; it goes to the
         * other qprev buffer, so q[t-1] survives a failure of this call */
        size_t qrow = (size_t)c->n_q_heads * c->head_dim * 4;
        for (uint32_t i = 0; i < n && st == FKV_OK; i++) {
            const seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
            st = o->copy(ctx->bd, FKV_QUEUE_COMPUTE, none, L->qprev[!sl->qcur], seqs[i] * qrow,
                         L->qin, i * qrow, qrow);
        }
    }
    if (st == FKV_OK) {
        if (out->host)
            st = o->read(ctx->bd, FKV_QUEUE_COMPUTE, none, L->out, 0, (void *)out->host, qbytes);
        else
            st = o->copy(ctx->bd, FKV_QUEUE_COMPUTE, none, out->buffer->bbuf, out->offset, L->out,
                         0, qbytes);
    }
    /* The output is the caller's when we return, and every command of the call, the
     * offload of a page it filled included, must have succeeded before the call does. */
    if (st == FKV_OK)
        st = o->marker(ctx->bd, FKV_QUEUE_COMPUTE,
                       (fkv_deps){L->ev_offload ? 1 : 0, &L->ev_offload, &end});
    if (st == FKV_OK)
        st = wait_release(ctx, &end);
    if (st != FKV_OK)
        goto fail;

    /* Commit: nothing below fails. */
    fkv_release_event(ctx, &corr);
    fkv_release_event(ctx, &L->ev_attn);
    L->ev_attn = attn;
    for (uint32_t i = 0; i < n; i++) {
        seq_state *s = &ctx->seqs[seqs[i]];
        seq_layer *sl = &s->layers[layer];
        for (uint32_t h = 0; h < hk; h++) {
            size_t ih = (size_t)i * hk + h;
            sl->n_attended[h] = cs->n_attended[ih];
            memcpy(sl->attended + (size_t)h * ctx->list_cap, cs->attended + ih * ctx->list_cap,
                   sizeof(int32_t) * cs->n_attended[ih]);
        }
        if (speculative) {
            sl->qcur = !sl->qcur;
            sl->has_qprev = 1;
        }
        s->next_layer = (layer + 1) % c->n_layers;
    }
    if (d.corrections) {
        pthread_mutex_lock(&ctx->lock);
        for (uint32_t h = 0; h < hk; h++)
            ctx->corrections[(size_t)layer * hk + h] += cs->corrections[h];
        pthread_mutex_unlock(&ctx->lock);
    }
    stats_add(ctx, &d);
    if (speculative)
        submit_task(ctx, layer, n, seqs);
    return FKV_OK;

fail: {
    char *msg = fkv_error_save(); /* the cleanup below may set messages of its own */
    fkv_release_event(ctx, &corr);
    fkv_release_event(ctx, &attn);
    fkv_release_event(ctx, &end);
    o->finish(ctx->bd, FKV_QUEUE_COMPUTE);
    o->finish(ctx->bd, FKV_QUEUE_TRANSFER);
    rollback_call(ctx, layer, n, seqs, appended, selected, recalled);
    stats_add(ctx, &consumed);
    fkv_error_restore(msg);
    return st;
}
}
