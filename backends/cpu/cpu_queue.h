/* In-order command queues of the CPU reference backend: one worker thread per queue.
 *
 * A command is a function, its heap-allocated argument block, a wait list of events and its
 * own completion event. The worker pops commands in submission order, blocks until every
 * event of the wait list has completed, runs the function and completes the command's event.
 *
 * Events are refcounted and self-contained (own mutex and condition variable), so waiting on
 * or releasing one never touches the queue or the device. An event fails when its command
 * returns an error (the message the command set with fkv_error is kept in the event), and a
 * command whose wait list holds a failed event is not run: its event fails too, so failures
 * propagate along dependencies instead of feeding garbage to later commands.
 */
#ifndef FKV_CPU_QUEUE_H
#define FKV_CPU_QUEUE_H

#include <stdint.h>

#include "../backend.h"

/* Runs one command on the queue's worker thread. Returns FKV_OK or an error set with
 * fkv_error (the message is captured into the command's event). */
typedef fkv_status (*cpu_cmd_fn)(void *args);

typedef struct cpu_queue cpu_queue;

/* Starts a queue and its worker thread; `name` appears in error messages. */
fkv_status cpu_queue_create(const char *name, cpu_queue **out);

/* Runs every command already submitted, then stops and joins the worker and frees the queue.
 * Events handed out stay valid until released. */
void cpu_queue_destroy(cpu_queue *q);

/* Appends a command. The wait list is as the dispatch layer checked it (backend.h): n_wait
 * events in `wait`, NULL entries ignored. On success the queue owns `args` (freed with free()
 * after the command ran) and, when done != NULL, *done receives a new event reference for the
 * caller. On error (out of memory, queue stopping) `args` is freed, nothing is queued and
 * *done is set to NULL. `done` must not point into `wait`. */
fkv_status cpu_queue_submit(cpu_queue *q, cpu_cmd_fn fn, void *args, uint32_t n_wait,
                            fkv_bevent *const *wait, fkv_bevent **done);

/* Like cpu_queue_submit, but a failure of fn is a device error: the commands after it on
 * the queue fail without running (a later command may read what this one should have
 * written), until a marker has reported the failure. A failure of an ordinary command
 * fails that command only. */
fkv_status cpu_queue_submit_device_error(cpu_queue *q, cpu_cmd_fn fn, void *args, uint32_t n_wait,
                                         fkv_bevent *const *wait, fkv_bevent **done);

/* Blocks until all n events (none NULL) completed; returns the first failure among them
 * (with its message), else FKV_OK. */
fkv_status cpu_event_wait(uint32_t n, fkv_bevent *const *events);

/* Whether ev completed (successfully or not), without blocking. */
int cpu_event_done(fkv_bevent *ev);

/* Drops one reference; the event is freed with its last reference. NULL is a no-op. */
void cpu_event_release(fkv_bevent *ev);

#endif
