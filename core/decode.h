/* Decode (decode.c) as the per-layer calls run it: with or without the engine's external
 * synchronisation (interop.c imports the engine's events and calls in here). */
#ifndef FKV_CORE_DECODE_H
#define FKV_CORE_DECODE_H

#include "state.h"

/* The engine's events of one call, imported: the call's first device command waits for
 * wait[0..n_wait); signal (when not NULL) is signalled once the output is written. */
typedef struct fkv_decode_sync {
    uint32_t n_wait;
    fkv_bevent *const *wait;
    fkv_native_event *signal;
} fkv_decode_sync;

/* fkv_decode_layer, ordered by sync (NULL: none). */
fkv_status fkv_decode_run(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                          const fkv_tensor *q, const fkv_tensor *k, const fkv_tensor *v,
                          fkv_tensor *out, const fkv_decode_sync *sync);

#endif
