/* Command counters (counters.h). Relaxed atomics: each counter is a tally read as a snapshot,
 * never used to order memory. */
#include "counters.h"

#include "../common/thread_role.h"

_Static_assert((int)FKV_COUNTER_COMPUTE == (int)FKV_QUEUE_COMPUTE &&
                   (int)FKV_COUNTER_TRANSFER == (int)FKV_QUEUE_TRANSFER &&
                   (int)FKV_COUNTER_BACKGROUND == (int)FKV_QUEUE_BACKGROUND &&
                   (int)FKV_COUNTER_QUEUES == (int)FKV_QUEUE_COUNT,
               "the public counter queues follow fkv_queue");

static void add(_Atomic uint64_t *x, uint64_t n) {
    atomic_fetch_add_explicit(x, n, memory_order_relaxed);
}

static uint64_t get(const _Atomic uint64_t *x) {
    return atomic_load_explicit((_Atomic uint64_t *)x, memory_order_relaxed);
}

void fkv_count_launch(fkv_bcounters *c, fkv_queue q) { add(&c->launches[q], 1); }

void fkv_count_copy(fkv_bcounters *c, fkv_queue q, fkv_copy_dir dir, uint64_t bytes) {
    add(&c->copies[q], 1);
    if (dir == FKV_COPY_H2D)
        add(&c->h2d_bytes[q], bytes);
    else if (dir == FKV_COPY_D2H)
        add(&c->d2h_bytes[q], bytes);
}

void fkv_count_submit(fkv_bcounters *c, fkv_queue q) { add(&c->submits[q], 1); }

void fkv_count_wait(fkv_bcounters *c) {
    add(fkv_thread_role_get() == FKV_ROLE_WORKER ? &c->worker_waits : &c->caller_waits, 1);
}

void fkv_count_device_alloc(fkv_bcounters *c) { add(&c->device_allocs, 1); }

void fkv_count_host_alloc(fkv_bcounters *c) { add(&c->host_allocs, 1); }

void fkv_bcounters_read(const fkv_bcounters *c, fkv_counters *out) {
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        out->queues[q] = (fkv_queue_counters){
            .launches = get(&c->launches[q]),
            .copies = get(&c->copies[q]),
            .submits = get(&c->submits[q]),
            .h2d_bytes = get(&c->h2d_bytes[q]),
            .d2h_bytes = get(&c->d2h_bytes[q]),
        };
    out->caller_waits = get(&c->caller_waits);
    out->worker_waits = get(&c->worker_waits);
    out->device_allocs = get(&c->device_allocs);
    out->host_allocs = get(&c->host_allocs);
}
