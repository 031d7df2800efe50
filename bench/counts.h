/* The device command counters as the benchmarks report them (freekv bench, freekv-opbench):
 * spans of fkv_counters snapshots, and their totals over the queues per unit of work. */
#ifndef FKV_BENCH_COUNTS_H
#define FKV_BENCH_COUNTS_H

#include <math.h>

#include "freekv.h"

/* Totals over the device's queues per unit of work (a layer-step, a recall); NAN when the
 * device does not count. commands = launches + copies. */
typedef struct bench_counts {
    double commands, launches, copies, submits;
    double caller_waits, worker_waits, device_allocs, host_allocs;
    double h2d_bytes, d2h_bytes;
} bench_counts;

/* acc += sign * (b - a), every field (modulo 2^64: sign -1 subtracts). */
static inline void bench_counters_span(fkv_counters *acc, const fkv_counters *b,
                                       const fkv_counters *a, int sign) {
#define FKV_SPAN(f) acc->f += (uint64_t)sign * (b->f - a->f)
    for (int q = 0; q < FKV_COUNTER_QUEUES; q++) {
        FKV_SPAN(queues[q].launches);
        FKV_SPAN(queues[q].copies);
        FKV_SPAN(queues[q].submits);
        FKV_SPAN(queues[q].h2d_bytes);
        FKV_SPAN(queues[q].d2h_bytes);
    }
    FKV_SPAN(caller_waits);
    FKV_SPAN(worker_waits);
    FKV_SPAN(device_allocs);
    FKV_SPAN(host_allocs);
#undef FKV_SPAN
}

/* c (a span) per `units`; counted = 0 gives NANs. */
static inline bench_counts bench_counts_per(const fkv_counters *c, int counted, double units) {
    bench_counts r;
    if (!counted || units <= 0) {
        r.commands = r.launches = r.copies = r.submits = NAN;
        r.caller_waits = r.worker_waits = r.device_allocs = r.host_allocs = NAN;
        r.h2d_bytes = r.d2h_bytes = NAN;
        return r;
    }
    double l = 0, cp = 0, sub = 0, h2d = 0, d2h = 0;
    for (int q = 0; q < FKV_COUNTER_QUEUES; q++) {
        l += (double)c->queues[q].launches;
        cp += (double)c->queues[q].copies;
        sub += (double)c->queues[q].submits;
        h2d += (double)c->queues[q].h2d_bytes;
        d2h += (double)c->queues[q].d2h_bytes;
    }
    r.launches = l / units;
    r.copies = cp / units;
    r.commands = (l + cp) / units;
    r.submits = sub / units;
    r.caller_waits = (double)c->caller_waits / units;
    r.worker_waits = (double)c->worker_waits / units;
    r.device_allocs = (double)c->device_allocs / units;
    r.host_allocs = (double)c->host_allocs / units;
    r.h2d_bytes = h2d / units;
    r.d2h_bytes = d2h / units;
    return r;
}

#endif
