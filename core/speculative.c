/* Speculative retrieval in the background: the worker thread, its task queue (one task per
 * layer at most, in submission order) and the hand-over of a layer's state between the
 * caller's thread and the worker. Separate because it is the one place of core/ that runs
 * on another thread: everything here is about who owns what, and when. */
#include <stdio.h>
#include <string.h>

#include "../common/error.h"
#include "../common/thread_role.h"
#include "retrieval.h"
#include "speculative.h"

/* Waits for the marker of the layer's last decode call when that call returned without waiting
 * (ls->ev_end): then nothing of it still reads the layer's host staging, and a failure of its
 * commands is reported here, once. */
static fkv_status retire_call(fkv_context *ctx, uint32_t layer) {
    layer_state *ls = &ctx->layers[layer];
    if (ls->ev_end == NULL)
        return FKV_OK;
    fkv_status st = fkv_wait_release(ctx, &ls->ev_end);
    if (st == FKV_OK)
        return FKV_OK;
    /* The marker completed after the call's commands: its attention and offload events are
     * complete too, failed with it, and must not fail the layer's next commands again. The
     * slots its recalls were filling are undefined: the next selection fills them again. */
    fkv_release_event(ctx, &ls->ev_attn);
    fkv_release_event(ctx, &ls->ev_offload);
    for (uint32_t i = 0; i < ls->end_n; i++)
        fkv_mid_clear(ctx, &ctx->seqs[ls->end_seqs[i]].layers[layer]);
    return fkv_error_prefix(st, "the commands of layer %u's last decode call (returned without "
                            "waiting: device output) failed",
                            layer);
}

fkv_status fkv_task_wait(fkv_context *ctx, uint32_t layer, fkv_stats *caller) {
    layer_state *ls = &ctx->layers[layer];
    double t0 = fkv_now();
    pthread_mutex_lock(&ctx->lock);
    int waits = ls->pending;
    while (ls->pending)
        pthread_cond_wait(&ctx->cond, &ctx->lock);
    fkv_status st = ls->task_status;
    char msg[sizeof ls->task_error];
    memcpy(msg, ls->task_error, sizeof msg);
    ls->task_status = FKV_OK;
    fkv_stats task = ls->task_stats;
    memset(&ls->task_stats, 0, sizeof ls->task_stats);
    double select_end = ls->task_select_end;
    if (caller == NULL)
        fkv_stats_sum(&ctx->stats, &task);
    pthread_mutex_unlock(&ctx->lock);
    if (caller)
        fkv_stats_sum(caller, &task);
    if (caller && waits) {
        /* until the worker finished this layer's selection: selection; after: recall issue */
        double waited = fkv_now() - t0;
        double select = select_end > t0 ? select_end - t0 : 0;
        if (select > waited)
            select = waited;
        caller->blocked_select_seconds += select;
        caller->blocked_recall_seconds += waited - select;
    }
    if (st != FKV_OK) /* the worker's failure, with its message */
        return fkv_error(st, "%s", msg);
    /* A decode call of the layer that returned without waiting (device output): the worker
     * waited for it before the task; without a task (the other policies) the caller does. */
    return retire_call(ctx, layer);
}

fkv_status fkv_settle_recall(fkv_context *ctx, uint32_t layer) {
    layer_state *ls = &ctx->layers[layer];
    if (ls->ev_recall == NULL)
        return FKV_OK;
    fkv_status st = fkv_op_event_wait(ctx->dev, 1, &ls->ev_recall);
    if (st == FKV_OK)
        return FKV_OK;
    /* The recall left the slots it was filling undefined: its sequences' middle slots are
     * emptied, and the next selection fills them again. */
    for (uint32_t i = 0; i < ls->task_n; i++)
        fkv_mid_clear(ctx, &ctx->seqs[ls->task_seqs[i]].layers[layer]);
    fkv_release_event(ctx, &ls->ev_recall);
    return fkv_error_prefix(st, "speculative recall of layer %u", layer);
}

/* The task of one layer, on the worker: selection with the query of the step that submitted
 * it, for the next step (or only its plan, when the call selected: ls->task_selected), and
 * its recall on the background queue. */
static fkv_status run_task(fkv_context *ctx, uint32_t layer) {
    layer_state *ls = &ctx->layers[layer];
    fkv_stats delta;
    memset(&delta, 0, sizeof delta);
    /* The call that submitted the task ordered its commands (the query and the summaries the
     * scores read) and the offload of the pages it filled (which the gather reads) before the
     * task: by waiting for its output, or, with a device output, by leaving its marker, which
     * includes the offload, to this wait. The offload wait then only makes that explicit. */
    fkv_status st = retire_call(ctx, layer);
    int offloaded = 1; /* asked first: a complete offload (the usual case) costs no host wait */
    if (st == FKV_OK && ls->ev_offload &&
        (fkv_op_event_query(ctx->dev, ls->ev_offload, &offloaded) != FKV_OK || !offloaded) &&
        (st = fkv_op_event_wait(ctx->dev, 1, &ls->ev_offload)) != FKV_OK)
        fkv_error_prefix(st, "speculative recall of layer %u failed", layer);
    if (st != FKV_OK)
        return st;
    fkv_bevent *slot_readers[1] = {ls->ev_attn};
    fkv_bevent *done = NULL;
    select_args a = {.queue = FKV_QUEUE_BACKGROUND,
                     .rec = ctx->rec_worker,
                     .pl = &ctx->plan_worker,
                     .n = ls->task_n,
                     .seqs = ls->task_seqs,
                     .use_qprev = 1,
                     .extra_tokens = 1,
                     .n_wait = ls->ev_attn ? 1 : 0,
                     .wait = slot_readers,
                     .done = &done,
                     .stats = &delta,
                     /* the submitting call wrote them with its inputs (its desc_next) */
                     .desc = (const int32_t *)(ls->host.in +
                                               fkv_in_layout_of(ctx, ls->task_n).desc_next),
                     .desc_off = ls->task_desc_off};
    fkv_selection_save(ctx, a.pl, layer, a.n, a.seqs);
    st = ls->task_selected ? fkv_selection_apply(ctx, layer, &a) : fkv_select_pages(ctx, layer, &a);
    if (st == FKV_OK) {
        fkv_release_event(ctx, &ls->ev_recall);
        ls->ev_recall = done;
    } else {
        fkv_error_prefix(st, "speculative recall of layer %u failed", layer);
        fkv_release_event(ctx, &done);
        fkv_selection_restore(ctx, a.pl, layer, a.n, a.seqs, 1);
    }
    /* the recall run is the last part of fkv_select_pages */
    ls->task_select_end = fkv_now() - delta.recall_seconds;
    fkv_stats_sum(&ls->task_stats, &delta); /* the caller reads it once the task is published */
    return st;
}

static void *worker_main(void *arg) {
    fkv_context *ctx = arg;
    fkv_thread_role_set(FKV_ROLE_WORKER); /* its host waits count as the worker's */
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
        layer_state *ls = &ctx->layers[layer];
        ls->task_status = st;
        memcpy(ls->task_error, msg, sizeof msg);
        ls->pending = 0;
        ctx->fifo_head = (ctx->fifo_head + 1) % ctx->cfg.n_layers;
        ctx->fifo_len--;
        pthread_cond_broadcast(&ctx->cond);
    }
    pthread_mutex_unlock(&ctx->lock);
    return NULL;
}

void fkv_task_submit(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                     size_t desc_off, int selected) {
    layer_state *ls = &ctx->layers[layer];
    pthread_mutex_lock(&ctx->lock);
    ls->task_n = n;
    ls->task_desc_off = desc_off;
    ls->task_selected = selected;
    memcpy(ls->task_seqs, seqs, sizeof *seqs * n);
    ls->pending = 1;
    ctx->fifo[(ctx->fifo_head + ctx->fifo_len) % ctx->cfg.n_layers] = layer;
    ctx->fifo_len++;
    pthread_cond_broadcast(&ctx->cond);
    pthread_mutex_unlock(&ctx->lock);
}

fkv_status fkv_worker_start(fkv_context *ctx) {
    if (pthread_create(&ctx->worker, NULL, worker_main, ctx) != 0)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "starting the speculative worker");
    ctx->worker_started = 1;
    return FKV_OK;
}

void fkv_worker_stop(fkv_context *ctx) {
    if (!ctx->worker_started)
        return;
    pthread_mutex_lock(&ctx->lock);
    ctx->stop = 1;
    pthread_cond_broadcast(&ctx->cond);
    pthread_mutex_unlock(&ctx->lock);
    pthread_join(ctx->worker, NULL);
    ctx->worker_started = 0;
}
