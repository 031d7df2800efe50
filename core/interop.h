/* The per-layer calls (decode.c, prefill.c) as they run with or without the engine's external
 * synchronisation: interop.c imports the engine's events and calls in here. */
#ifndef FKV_CORE_INTEROP_H
#define FKV_CORE_INTEROP_H

#include "state.h"

/* The engine's events of one call, imported: the call's first device command that can read
 * the engine's inputs waits for wait[0..n_wait); signal (when not NULL) is signalled after the
 * call's last device command. All zero: no synchronisation (the plain call). */
typedef struct fkv_engine_sync {
    uint32_t n_wait;
    fkv_bevent **wait;
    fkv_native_event *signal;
} fkv_engine_sync;

/* fkv_decode_layer, ordered by sync (NULL: none). */
fkv_status fkv_decode_run(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                          const fkv_tensor *q, const fkv_tensor *k, const fkv_tensor *v,
                          fkv_tensor *out, const fkv_engine_sync *sync);

/* fkv_prefill, ordered by sync (NULL: none). */
fkv_status fkv_prefill_run(fkv_context *ctx, uint32_t seq, uint32_t layer, uint32_t n_tokens,
                           const fkv_tensor *k, const fkv_tensor *v, const fkv_tensor *q_last,
                           const fkv_engine_sync *sync);

#endif
