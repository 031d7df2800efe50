/* Prefill (prefill.c) as the per-layer calls run it: with or without the engine's external
 * synchronisation (interop.c imports the engine's events and calls in here). */
#ifndef FKV_CORE_PREFILL_H
#define FKV_CORE_PREFILL_H

#include "engine_sync.h"

/* fkv_prefill, ordered by sync (NULL: none). */
fkv_status fkv_prefill_run(fkv_context *ctx, uint32_t seq, uint32_t layer, uint32_t n_tokens,
                           const fkv_tensor *k, const fkv_tensor *v, const fkv_tensor *q_last,
                           const fkv_engine_sync *sync);

#endif
