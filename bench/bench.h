/* freekv bench: the types its parts share (arguments, harness, report). */
#ifndef FKV_BENCH_H
#define FKV_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "counts.h"
#include "freekv.h"
#include "workload.h"

enum { BENCH_MAX_CONTEXTS = 16, BENCH_MAX_POLICIES = 6, BENCH_MAX_WORKLOADS = 3 };

typedef struct bench_preset {
    const char *name;
    uint32_t layers, q_heads, kv_heads, head_dim;
    double weight_mib; /* device bytes per layer besides attention (projections + MLP), MiB */
    uint32_t page, budget, sink, window, context;
    fkv_dtype dtype;
} bench_preset;

typedef struct bench_options {
    bench_preset p;
    uint32_t contexts[BENCH_MAX_CONTEXTS], n_contexts;
    uint32_t warmup, steps; /* per block: dropped steps, then measured steps */
    uint32_t rounds, repeat, batch;
    float tau;
    fkv_host_format host_format; /* the offload policies' host pool format (--host-format) */
    fkv_summary_format summary_format; /* page summaries (--summary-format) */
    char policies[BENCH_MAX_POLICIES][16];
    uint32_t n_policies;
    bench_drift workloads[BENCH_MAX_WORKLOADS];
    uint32_t n_workloads;
    const char *csv, *json, *plot, *backend, *device;
    uint64_t seed;
    int counters; /* --counters: print the device command counters per policy */
} bench_options;

/* Parses argv (after the command name) over the preset `default_preset` (0: small,
 * 1: llama-3.1-8b) and checks every value, the derived geometry (fkv_config_validate) and
 * the output paths. Returns 0, 1 when --help was printed, or -1 after printing a message
 * that names the offending flag. */
int bench_parse_args(int argc, char **argv, int default_preset, bench_options *o,
                     int *explicit_preset);
/* Whether an executable `program` is found in PATH. */
int bench_in_path(const char *program);
/* Decode steps each context takes after its prompt: 64-bit, saturating. */
uint64_t bench_steps_per_context(const bench_options *o);
/* The library configuration of one policy at one context length. */
void bench_config(const bench_options *o, uint32_t context, fkv_policy policy, fkv_config *c);

/* One (workload, context, policy) cell, pooled over the repeats. Times are per measured
 * step; NAN where a figure does not apply. */
typedef struct bench_result {
    char workload[16], policy[16];
    uint32_t context;
    int ran;
    char note[256];
    size_t samples;
    double median_ms, tail_ms, tokens_per_s;
    const char *tail_label;
    double ratio, ratio_lo, ratio_hi; /* latency / freekv's: median of per-round ratios, CI */
    double blocked_recall_ms, blocked_select_ms, blocked_correction_ms;
    double host_select_ms; /* per layer-step (fkv_stats.host_select_seconds / layer calls) */
    double recall_bytes, engine_ms, correction_rate;
    double host_mib, device_mib;
    /* device commands per layer-step (fkv_decode_layer call) of the measured steps, without
     * the bench's own layer pass and end-of-step finish; NAN where the device does not count */
    bench_counts counts;
    double *rep_median_ms, *rep_ratio, *rep_lo, *rep_hi; /* [repeat] */
} bench_result;

/* What one workload exercised at one context length, measured from its own queries. */
typedef struct bench_exercise {
    bench_drift drift;
    uint32_t context;
    size_t n_cos;
    double cos_p10, cos_p50, cos_p90, below_tau; /* group-mean adjacent-step cosine */
    double freekv_rate;                          /* freekv's corrected share, NAN if not run */
} bench_exercise;

typedef struct bench_run_info {
    char date[32];
    long cores;
    double load_start[3], load_end[3];
    double mem_available_mib;
} bench_run_info;

/* harness.c: prepares every policy at one context, then steps them round-robin.
 * res: [n_workloads][n_policies], ex: [n_workloads]. Returns 0, or -1 when a policy failed
 * while running (its cell carries the message). */
struct fkv_device;
int bench_run_context(const bench_options *o, struct fkv_device *dev, uint32_t context,
                      bench_result *res, bench_exercise *ex);

void bench_results_free(bench_result *res, size_t n);
/* MemAvailable of /proc/meminfo (or the free pages), MiB; 0 if unknown. */
double bench_mem_available_mib(void);

/* report.c: tables and files. Results are printed per workload (those named `workload`). */
void bench_print_exercise(const bench_exercise *ex, float tau);
void bench_print_table(const bench_result *res, size_t n, const char *workload);
/* --counters: the device command counters per layer-step of each policy. */
void bench_print_counters(const bench_result *res, size_t n, const char *workload);
/* Warns when repeats disagree beyond their intervals; returns how many cells did. */
int bench_check_repeats(const bench_options *o, const bench_result *res, size_t n);
int bench_write_csv(const char *path, const bench_result *res, size_t n);
int bench_write_json(const char *path, const bench_options *o, const fkv_device_info *info,
                     const bench_run_info *run, const bench_exercise *ex, size_t n_ex,
                     const bench_result *res, size_t n);
int bench_write_plot(const char *path, const bench_result *res, size_t n);

#endif
