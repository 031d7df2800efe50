/* The engine's external synchronisation of the per-layer calls (fkv_decode_layer_sync,
 * fkv_prefill_sync): its events are imported as wait-list entries for the call, which
 * decode.c and prefill.c order their first command that reads the engine's inputs after, and
 * released when the call returns; the signal is the call's last command. */
#include <stdlib.h>

#include "../common/error.h"
#include "decode.h"
#include "prefill.h"

/* sync's events imported into *es (all zero for NULL sync, or no waits and no signal: the
 * plain call); checked before any work of the call. On failure nothing is left imported. */
static fkv_status sync_import(fkv_context *ctx, const char *fn, const fkv_external_sync *sync,
                              fkv_engine_sync *es) {
    *es = (fkv_engine_sync){.n_wait = 0};
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: NULL context", fn);
    if (sync == NULL || (sync->n_wait == 0 && sync->signal == NULL))
        return FKV_OK;
    if (fkv_op_native_api(ctx->dev) == FKV_NATIVE_NONE)
        return fkv_error(FKV_ERR_UNSUPPORTED, "%s: device '%s' (backend '%s') has no native API "
                         "to synchronise with",
                         fn, ctx->dev->info.name, ctx->dev->info.backend);
    if (sync->n_wait > 0 && sync->wait == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: %u events to wait for but a NULL list",
                         fn, sync->n_wait);
    if (sync->n_wait > 0 && (es->wait = calloc(sync->n_wait, sizeof *es->wait)) == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s: wait list", fn);
    fkv_status st = FKV_OK;
    for (; es->n_wait < sync->n_wait && st == FKV_OK; es->n_wait++)
        if ((st = fkv_op_event_import(ctx->dev, &sync->wait[es->n_wait],
                                      &es->wait[es->n_wait])) != FKV_OK) {
            st = fkv_error_prefix(st, "%s: wait event %u", fn, es->n_wait);
            break;
        }
    es->signal = sync->signal;
    return st;
}

/* Releases what sync_import imported (the enqueued commands hold what they need). */
static void sync_release(fkv_context *ctx, fkv_engine_sync *es) {
    for (uint32_t i = 0; i < es->n_wait; i++)
        fkv_op_event_unimport(ctx->dev, es->wait[i]);
    free(es->wait);
    *es = (fkv_engine_sync){.n_wait = 0};
}

fkv_status fkv_decode_layer_sync(fkv_context *ctx, uint32_t layer, uint32_t n_seqs,
                                 const uint32_t *seqs, const fkv_tensor *q, const fkv_tensor *k,
                                 const fkv_tensor *v, fkv_tensor *out,
                                 const fkv_external_sync *sync) {
    fkv_engine_sync es;
    fkv_status st = sync_import(ctx, "fkv_decode_layer_sync", sync, &es);
    if (st == FKV_OK)
        st = fkv_decode_run(ctx, layer, n_seqs, seqs, q, k, v, out, &es);
    if (ctx)
        sync_release(ctx, &es);
    return st;
}

fkv_status fkv_prefill_sync(fkv_context *ctx, uint32_t seq, uint32_t layer, uint32_t n_tokens,
                            const fkv_tensor *k, const fkv_tensor *v, const fkv_tensor *q_last,
                            const fkv_external_sync *sync) {
    fkv_engine_sync es;
    fkv_status st = sync_import(ctx, "fkv_prefill_sync", sync, &es);
    if (st == FKV_OK)
        st = fkv_prefill_run(ctx, seq, layer, n_tokens, k, v, q_last, &es);
    if (ctx)
        sync_release(ctx, &es);
    return st;
}
