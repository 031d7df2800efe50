/* Command counters of a backend device (what fkv_device_get_counters reports): one
 * fkv_bcounters embedded in each backend's device object, incremented next to the driver
 * calls themselves (one command may be several driver calls; one op several commands), with
 * atomics, since the caller's thread, the speculative worker and driver callbacks count at
 * once. A zero-initialised struct (calloc) is a valid start. */
#ifndef FKV_BACKENDS_COUNTERS_H
#define FKV_BACKENDS_COUNTERS_H

#include <stdatomic.h>
#include <stdint.h>

#include "backend.h"

typedef struct fkv_bcounters {
    _Atomic uint64_t launches[FKV_QUEUE_COUNT];
    _Atomic uint64_t copies[FKV_QUEUE_COUNT];
    _Atomic uint64_t submits[FKV_QUEUE_COUNT];
    _Atomic uint64_t h2d_bytes[FKV_QUEUE_COUNT];
    _Atomic uint64_t d2h_bytes[FKV_QUEUE_COUNT];
    _Atomic uint64_t caller_waits, worker_waits;
    _Atomic uint64_t device_allocs, host_allocs;
} fkv_bcounters;

typedef enum fkv_copy_dir {
    FKV_COPY_H2D = 0,
    FKV_COPY_D2H = 1,
    FKV_COPY_D2D = 2 /* and fills: no host bytes */
} fkv_copy_dir;

/* One kernel launch recorded or enqueued on q. */
void fkv_count_launch(fkv_bcounters *c, fkv_queue q);
/* One copy (or fill) command on q moving `bytes` in direction dir. */
void fkv_count_copy(fkv_bcounters *c, fkv_queue q, fkv_copy_dir dir, uint64_t bytes);
/* One submission to the driver's queue for q (backend.h's model: see freekv.h). */
void fkv_count_submit(fkv_bcounters *c, fkv_queue q);
/* One blocking host wait, the caller's or the worker's by the thread's role. */
void fkv_count_wait(fkv_bcounters *c);
void fkv_count_device_alloc(fkv_bcounters *c);
void fkv_count_host_alloc(fkv_bcounters *c);

/* A snapshot of the totals. */
void fkv_bcounters_read(const fkv_bcounters *c, fkv_counters *out);

#endif
