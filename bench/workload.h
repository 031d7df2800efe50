/* The bench's synthetic workload: prefill keys that never repeat, grouped by page around a
 * per-page direction so page summaries differ and Quest scores rank pages instead of tying,
 * and decode queries whose direction drifts step to step at a per-KV-head rate. The drift
 * model, per (sequence, layer, query head):
 *   q_t = sqrt(1 - share) * mu + sqrt(share) * x_t,  x_t = rho * x_{t-1} + sqrt(1 - rho^2) * e_t
 * with mu, x_0, e_t standard normal vectors; so E[cos(q_t, q_{t-1})] ~ 1 - share * (1 - rho).
 * Each KV head draws its drift D = 1 - E[cos] from a log-normal distribution (median `drift`,
 * log-sd `spread`, clamped to [0, share]) and its query heads share rho = 1 - D / share.
 * The generator records, for every step, layer, sequence and KV head, the mean over the
 * group of the adjacent-step cosine: the quantity freekv compares with tau. */
#ifndef FKV_BENCH_WORKLOAD_H
#define FKV_BENCH_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

typedef struct bench_drift {
    char name[16];
    double drift;  /* median over KV heads of 1 - expected adjacent-step cosine */
    double spread; /* log-normal sigma of the per-KV-head drift */
    double share;  /* share of a query's energy that moves (0..1) */
} bench_drift;

/* long-input and reasoning; "custom" starts from long-input. 0 if known, else -1. */
int bench_drift_named(const char *name, bench_drift *out);

typedef struct bench_shape {
    uint32_t layers, q_heads, kv_heads, head_dim, page, batch;
} bench_shape;

typedef struct bench_gen bench_gen;

/* NULL when out of memory. The prefill data and the starting queries depend only on
 * (shape, context, seed), not on the drift: every workload starts from the same state. */
bench_gen *bench_gen_create(const bench_drift *drift, const bench_shape *shape, uint32_t context,
                            uint64_t seed);
void bench_gen_destroy(bench_gen *g);

/* The prompt of (seq, layer): k, v [context][kv_heads][head_dim], q_last [q_heads][head_dim]. */
void bench_gen_prefill(bench_gen *g, uint32_t seq, uint32_t layer, float *k, float *v,
                       float *q_last);

/* The next decode step of every layer: q [layers][batch][q_heads][head_dim],
 * k, v [layers][batch][kv_heads][head_dim]; records the step's group-mean cosines.
 * Returns -1 when out of memory for the record. */
int bench_gen_step(bench_gen *g, float *q, float *k, float *v);

/* Group-mean adjacent-step cosines recorded so far, one per (step, layer, seq, KV head). */
const float *bench_gen_cosines(const bench_gen *g, size_t *n);

#endif
