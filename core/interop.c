/* The engine's external synchronisation of the per-layer calls (fkv_decode_layer_sync): its
 * events are imported as wait-list entries for the call, which decode.c orders its first
 * command after, and released when the call returns; the signal is decode.c's last command. */
#include <stdlib.h>

#include "../common/error.h"
#include "decode.h"

fkv_status fkv_decode_layer_sync(fkv_context *ctx, uint32_t layer, uint32_t n_seqs,
                                 const uint32_t *seqs, const fkv_tensor *q, const fkv_tensor *k,
                                 const fkv_tensor *v, fkv_tensor *out,
                                 const fkv_external_sync *sync) {
    static const char fn[] = "fkv_decode_layer_sync";
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: NULL context", fn);
    if (sync == NULL || (sync->n_wait == 0 && sync->signal == NULL))
        return fkv_decode_run(ctx, layer, n_seqs, seqs, q, k, v, out, NULL);
    if (fkv_op_native_api(ctx->dev) == FKV_NATIVE_NONE) /* before any work of the call */
        return fkv_error(FKV_ERR_UNSUPPORTED, "%s: device '%s' (backend '%s') has no native API "
                         "to synchronise with",
                         fn, ctx->dev->info.name, ctx->dev->info.backend);
    if (sync->n_wait > 0 && sync->wait == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: %u events to wait for but a NULL list",
                         fn, sync->n_wait);
    fkv_bevent **wait = NULL;
    if (sync->n_wait > 0 && (wait = calloc(sync->n_wait, sizeof *wait)) == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s: wait list", fn);
    fkv_status st = FKV_OK;
    uint32_t imported = 0;
    for (; imported < sync->n_wait && st == FKV_OK; imported++)
        if ((st = fkv_op_event_import(ctx->dev, &sync->wait[imported], &wait[imported])) !=
            FKV_OK)
            st = fkv_error_prefix(st, "%s: wait event %u", fn, imported);
    if (st == FKV_OK) {
        fkv_decode_sync ds = {.n_wait = sync->n_wait, .wait = wait, .signal = sync->signal};
        st = fkv_decode_run(ctx, layer, n_seqs, seqs, q, k, v, out, &ds);
    }
    for (uint32_t i = 0; i < imported; i++) /* the enqueued commands hold what they need */
        fkv_op_event_unimport(ctx->dev, wait[i]);
    free(wait);
    return st;
}
