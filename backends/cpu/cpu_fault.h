/* Fault injection in the CPU reference backend, for tests of the library's failure paths.
 *
 * A test arms one fault on an opened CPU device: the n-th command enqueued from then on
 * fails. A command is any enqueue entry of the ops table (copies, kernels, markers, and so
 * the marker inside finish). Either only the arming thread's commands count, or only other
 * threads': the speculative worker enqueues from its own thread at times the test does not
 * control, so counting one side only makes "the n-th command of this call" (or "of the
 * background task") the same in every run.
 *
 * FKV_CPU_FAULT_ENQUEUE: the enqueue call returns FKV_ERR_BACKEND and queues nothing.
 * FKV_CPU_FAULT_RUN: the command is queued and fails when it runs, as on a device error: its
 * event fails with FKV_ERR_BACKEND, commands waiting on it fail, the commands after it on its
 * queue fail without running until the next marker of that queue reports the failure
 * (cpu_queue_submit_device_error).
 */
#ifndef FKV_CPU_FAULT_H
#define FKV_CPU_FAULT_H

#include <stdint.h>

#include "../device.h"

typedef enum fkv_cpu_fault {
    FKV_CPU_FAULT_ENQUEUE = 0,
    FKV_CPU_FAULT_RUN = 1
} fkv_cpu_fault;

typedef enum fkv_cpu_fault_threads {
    FKV_CPU_FAULT_THIS_THREAD = 0,  /* commands enqueued by the thread that arms */
    FKV_CPU_FAULT_OTHER_THREADS = 1 /* commands enqueued by any other thread */
} fkv_cpu_fault_threads;

/* Arms a fault (n >= 1) on a device of the CPU backend, replacing any armed one and
 * restarting the count. */
fkv_status fkv_cpu_fault_arm(fkv_device *dev, uint64_t n, fkv_cpu_fault kind,
                             fkv_cpu_fault_threads threads);
/* Disarms. *fired (may be NULL): whether the fault happened; *counted (may be NULL): the
 * commands counted since arming. */
fkv_status fkv_cpu_fault_disarm(fkv_device *dev, int *fired, uint64_t *counted);

#endif
