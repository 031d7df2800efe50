/* The engine's external synchronisation of one per-layer call, as interop.c imports it for
 * decode.c and prefill.c. */
#ifndef FKV_CORE_ENGINE_SYNC_H
#define FKV_CORE_ENGINE_SYNC_H

#include "state.h"

/* The engine's events of one call, imported: the call's first device command that can read
 * the engine's inputs waits for wait[0..n_wait); signal (when not NULL) is signalled after the
 * call's last device command. All zero: no synchronisation (the plain call). */
typedef struct fkv_engine_sync {
    uint32_t n_wait;
    fkv_bevent **wait;
    fkv_native_event *signal;
} fkv_engine_sync;

#endif
