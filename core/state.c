/* The small helpers every step of the pipeline uses: time, events, statistics, tensor
 * arguments. Kept apart from the steps so that no step has to call another one for them (and
 * the files of core/ form no call loop). */
#include <string.h>
#include <time.h>

#include "../common/error.h"
#include "state.h"

double fkv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void fkv_release_event(fkv_context *ctx, fkv_bevent **ev) {
    if (*ev) {
        fkv_op_event_release(ctx->dev, *ev);
        *ev = NULL;
    }
}

fkv_status fkv_wait_release(fkv_context *ctx, fkv_bevent **ev) {
    if (*ev == NULL)
        return FKV_OK;
    fkv_status st = fkv_op_event_wait(ctx->dev, 1, ev);
    fkv_release_event(ctx, ev);
    return st;
}

void fkv_drain_queue(fkv_context *ctx, fkv_queue q) {
    char *msg = fkv_error_save();
    fkv_op_finish(ctx->dev, q);
    fkv_error_restore(msg);
}

void fkv_stats_sum(fkv_stats *sum, const fkv_stats *delta) {
    sum->steps += delta->steps;
    sum->layer_calls += delta->layer_calls;
    sum->selections += delta->selections;
    sum->corrections += delta->corrections;
    sum->heads_checked += delta->heads_checked;
    sum->pages_recalled += delta->pages_recalled;
    sum->bytes_recalled += delta->bytes_recalled;
    sum->pages_offloaded += delta->pages_offloaded;
    sum->bytes_offloaded += delta->bytes_offloaded;
    sum->recall_seconds += delta->recall_seconds;
    sum->blocked_recall_seconds += delta->blocked_recall_seconds;
    sum->blocked_select_seconds += delta->blocked_select_seconds;
    sum->blocked_correction_seconds += delta->blocked_correction_seconds;
    sum->host_select_seconds += delta->host_select_seconds;
    sum->blocked_seconds += delta->blocked_recall_seconds + delta->blocked_select_seconds +
                            delta->blocked_correction_seconds;
}

void fkv_stats_add(fkv_context *ctx, const fkv_stats *delta) {
    pthread_mutex_lock(&ctx->lock);
    fkv_stats_sum(&ctx->stats, delta);
    pthread_mutex_unlock(&ctx->lock);
}

fkv_status fkv_check_tensor(const fkv_context *ctx, const fkv_tensor *t, size_t bytes,
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

fkv_status fkv_tensor_to_device(fkv_context *ctx, const fkv_tensor *t, size_t src_off,
                                void *staging, fkv_bbuf *dst, size_t dst_off, size_t bytes) {
    if (bytes == 0)
        return FKV_OK;
    if (t->host) {
        memcpy(staging, (const unsigned char *)t->host + src_off, bytes);
        return fkv_op_write(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, dst,
                               dst_off, staging, bytes);
    }
    return fkv_op_copy(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, dst, dst_off,
                          t->buffer->bbuf, t->offset + src_off, bytes);
}

void fkv_mid_clear(const fkv_context *ctx, seq_layer *sl) {
    for (size_t i = 0; i < (size_t)ctx->cfg.n_kv_heads * ctx->n_mid; i++)
        sl->mid_page[i] = -1;
}
