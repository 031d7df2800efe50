/* Decode (decode.c) as the per-layer calls run it: with or without the engine's external
 * synchronisation (interop.c imports the engine's events and calls in here). */
#ifndef FKV_CORE_DECODE_H
#define FKV_CORE_DECODE_H

#include "engine_sync.h"

/* fkv_decode_layer, ordered by sync (NULL: none). */
fkv_status fkv_decode_run(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                          const fkv_tensor *q, const fkv_tensor *k, const fkv_tensor *v,
                          fkv_tensor *out, const fkv_engine_sync *sync);

#endif
