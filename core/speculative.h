/* The speculative worker: after a layer's attention at step t, the selection with q[t] and
 * the recall for step t+1 run on a thread of their own, so that they overlap the rest of the
 * step (with freekv, the selection came back with the correction's round trip: the worker
 * plans and recalls). A layer's host state belongs to the worker from fkv_task_submit until the task is
 * published; every main-thread entry that touches a layer first calls fkv_task_wait. */
#ifndef FKV_CORE_SPECULATIVE_H
#define FKV_CORE_SPECULATIVE_H

#include "state.h"

/* Starts the worker thread (speculative and freekv policies). */
fkv_status fkv_worker_start(fkv_context *ctx);
/* Stops and joins it, if it was started; pending tasks are dropped. */
void fkv_worker_stop(fkv_context *ctx);

/* Hands the layer's selection for the next step, for these sequences, to the worker; its
 * scores descriptors are at desc_off of the layer's io buffer (the call's desc_next), host
 * copy in the layer's input staging. selected: the call selected already (freekv's
 * correction round trip) and its records are in the layer's host.flags, so the task plans
 * and recalls only; else it scores, selects and reads them first. */
void fkv_task_submit(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                     size_t desc_off, int selected);
/* Waits for the layer's background task and consumes its statistics: into *caller (with the
 * wait split into blocked selection and recall time) or, when NULL, into the context's. Then
 * the layer's previous decode call is retired: when it returned without waiting (device
 * output) and no task waited for it, this waits for its marker. Returns the task's failure or
 * that call's (each reported once). */
fkv_status fkv_task_wait(fkv_context *ctx, uint32_t layer, fkv_stats *caller);
/* Waits for the layer's last speculative recall; when it failed, drops the middle slots it
 * was filling and the event, and returns its error (reported once). No task may be pending. */
fkv_status fkv_settle_recall(fkv_context *ctx, uint32_t layer);

#endif
