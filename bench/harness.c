/* freekv bench: the interleaved measurement. Every policy's context is prepared first (one
 * prefill each, from the same data), then the policies are stepped round-robin in blocks of
 * warm-up + measured steps, the starting policy rotating each round, so a change in
 * background load hits all of them alike. Between layers a step runs the rest of the layer as
 * a memory-bound device pass over the layer's weight bytes, so background recall has real
 * device work to overlap with. Statistics are read between steps (no sync), so the measured
 * steps' figures hold exactly their own work (fkv_stats counts a background task when the
 * step that uses it consumes it); each block ends with fkv_context_sync, untimed, so no
 * policy's background work spills into another's block. The device command counters are
 * read the same way, per block: after the warm-up steps and after the measured ones (before
 * the sync), less the bench's own commands (the layer pass and the end-of-step finish). */
#define _DEFAULT_SOURCE /* setenv, unsetenv */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backends/dispatch.h"
#include "bench.h"
#include "stats.h"

typedef struct slot {
    const char *name;
    fkv_policy policy;
    fkv_device *dev;  /* the run's device, or the per-page one */
    fkv_bbuf *weights; /* that device's weight buffer (borrowed) */
    fkv_context *ctx;
    int active;
    char note[256]; /* why it did not run (or stopped) */
    /* per workload: measured latencies [repeat][rounds][steps], each block's median
     * [repeat][rounds] (NAN where the block did not run), summed statistics */
    double *lat[BENCH_MAX_WORKLOADS], *round_value[BENCH_MAX_WORKLOADS];
    fkv_stats sum[BENCH_MAX_WORKLOADS];
    uint64_t measured[BENCH_MAX_WORKLOADS];
    fkv_counters counted[BENCH_MAX_WORKLOADS]; /* the measured steps' device commands */
    int uncounted; /* the device does not count commands */
    double prefill_s;           /* its fkv_prefill calls, all layers and sequences */
    fkv_counters prefill_cmds;  /* their device commands */
} slot;

typedef struct device_weights {
    fkv_device *dev;
    fkv_bbuf *buf;
} device_weights;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void progress(double start, size_t done, size_t total, const char *what) {
    static double last;
    double t = now_s();
    if (t - start < 2.0 || (t - last < 0.25 && done < total) || !isatty(2))
        return;
    last = t;
    int width = 30, fill = (int)(width * done / (total ? total : 1));
    fprintf(stderr, "\r%-26s [%.*s%*s] %3d%%", what, fill, "##############################",
            width - fill, "", (int)(100 * done / (total ? total : 1)));
    if (done == total)
        fprintf(stderr, "\n");
}

/* Opens the run's device again with the backend's recall mechanism set to per-page copies
 * (a setting read when a device opens); the caller's own setting is restored. */
static fkv_status open_perpage(fkv_device *dev, fkv_device **out) {
    fkv_device_info info;
    fkv_device_get_info(dev, &info);
    char var[64], idx[16], *saved = NULL;
    snprintf(var, sizeof var, "FREEKV_%s_RECALL", info.backend);
    for (char *c = var; *c; c++)
        if (*c >= 'a' && *c <= 'z')
            *c -= 32;
    const char *old = getenv(var);
    if (old && !(saved = strdup(old)))
        return FKV_ERR_OUT_OF_HOST_MEMORY;
    setenv(var, "perpage", 1);
    snprintf(idx, sizeof idx, "%u", info.index);
    fkv_status st = fkv_device_open(info.backend, idx, out);
    if (saved)
        setenv(var, saved, 1);
    else
        unsetenv(var);
    free(saved);
    return st;
}

static fkv_bbuf *weights_of(const device_weights *w, size_t n, const fkv_device *dev) {
    for (size_t i = 0; i < n; i++)
        if (w[i].dev == dev)
            return w[i].buf;
    return NULL;
}

double bench_mem_available_mib(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
            fclose(f);
            return kb / 1024.0;
        }
    if (f)
        fclose(f);
    long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    return pages > 0 && size > 0 ? (double)pages * size / 1048576.0 : 0;
}

/* Memory one prepared context needs: (host, device) bytes, estimated from the geometry. */
static void estimate(const fkv_config *c, double *host, double *device) {
    double row = (double)c->n_kv_heads * c->head_dim * 2 * fkv_dtype_size(c->dtype);
    double kv = (double)c->n_layers * c->max_context * row * c->max_seqs;
    double budget = (double)c->n_layers * (c->budget_tokens + c->page_size) * row * c->max_seqs;
    if (c->policy <= FKV_POLICY_QUEST) {
        *device = kv;
        *host = 0;
    } else {
        *device = budget;
        *host = kv;
    }
}

static int shares_host_memory(const fkv_device_info *info) {
    return info->type == FKV_DEVICE_CPU || info->type == FKV_DEVICE_REFERENCE ||
           info->type == FKV_DEVICE_INTEGRATED_GPU;
}

/* Which policies are prepared: each must fit the device on its own (as a whole KV cache for
 * dense and quest), and all of them together the memory there is, since they are held at
 * once. Too much: dense goes first, then quest, freekv-perpage, sync, speculative, and
 * freekv last (then nothing runs: the prompt's own rows do not fit). */
static void plan_memory(const bench_options *o, const fkv_device_info *info, uint32_t context,
                        slot *s, double weight_bytes) {
    double host[BENCH_MAX_POLICIES], dev[BENCH_MAX_POLICIES];
    double host_avail = bench_mem_available_mib() * 1048576.0;
    double dev_avail = shares_host_memory(info) ? 0 : (double)info->memory_bytes;
    double scratch = 2.0 * context * o->p.kv_heads * o->p.head_dim * 4; /* prefill rows */
    for (uint32_t p = 0; p < o->n_policies; p++) {
        fkv_config c;
        bench_config(o, context, s[p].policy, &c);
        estimate(&c, &host[p], &dev[p]);
        if (shares_host_memory(info)) { /* the device's memory is the host's */
            host[p] += dev[p];
            dev[p] = 0;
        }
        if (s[p].policy <= FKV_POLICY_QUEST && info->memory_bytes &&
            host[p] + dev[p] > 0.6 * (double)info->memory_bytes) {
            snprintf(s[p].note, sizeof s[p].note,
                     "KV cache (%.1f MiB) does not fit the device (%.1f MiB)",
                     (host[p] + dev[p]) / 1048576.0, (double)info->memory_bytes / 1048576.0);
            s[p].active = 0;
        }
    }
    static const char *const drop_order[] = {"dense", "quest", "freekv-perpage", "sync",
                                             "speculative", "freekv"};
    for (size_t d = 0; d < sizeof drop_order / sizeof *drop_order; d++) {
        double h = scratch + (shares_host_memory(info) ? weight_bytes : 0);
        double g = shares_host_memory(info) ? 0 : weight_bytes;
        for (uint32_t p = 0; p < o->n_policies; p++)
            if (s[p].active) {
                h += host[p];
                g += dev[p];
            }
        int host_over = host_avail > 0 && h > 0.8 * host_avail;
        int dev_over = dev_avail > 0 && g > 0.8 * dev_avail;
        if (!host_over && !dev_over)
            return;
        for (uint32_t p = 0; p < o->n_policies; p++)
            if (s[p].active && strcmp(s[p].name, drop_order[d]) == 0) {
                s[p].active = 0;
                snprintf(s[p].note, sizeof s[p].note,
                         "all policies prepared at once would need %.0f MiB of %s memory, "
                         "%.0f MiB available: run it alone with --policies",
                         (host_over ? h : g) / 1048576.0, host_over ? "host" : "device",
                         (host_over ? host_avail : dev_avail) / 1048576.0);
            }
    }
}

/* acc += b - a over the fields the report uses */
static void stats_delta_add(fkv_stats *acc, const fkv_stats *b, const fkv_stats *a) {
    acc->layer_calls += b->layer_calls - a->layer_calls;
    acc->host_select_seconds += b->host_select_seconds - a->host_select_seconds;
    acc->corrections += b->corrections - a->corrections;
    acc->heads_checked += b->heads_checked - a->heads_checked;
    acc->pages_recalled += b->pages_recalled - a->pages_recalled;
    acc->bytes_recalled += b->bytes_recalled - a->bytes_recalled;
    acc->recall_seconds += b->recall_seconds - a->recall_seconds;
    acc->blocked_recall_seconds += b->blocked_recall_seconds - a->blocked_recall_seconds;
    acc->blocked_select_seconds += b->blocked_select_seconds - a->blocked_select_seconds;
    acc->blocked_correction_seconds +=
        b->blocked_correction_seconds - a->blocked_correction_seconds;
}

typedef struct block_io {
    const float *q, *k, *v; /* [block steps][layers][batch][row] */
    float *out;
    const uint32_t *seqs;
    size_t q_step, kv_step, q_layer, kv_layer; /* floats per step, per layer */
} block_io;

/* The bench's own commands (the layer pass, the finish), run between the snapshots before
 * and after: their compute-queue commands and caller waits go to *bench. The speculative
 * worker, which may run meanwhile, issues nothing on the compute queue and never waits as
 * the caller, so these are the bench's alone. */
static fkv_counters compute_and_caller(const fkv_counters *c) {
    fkv_counters m;
    memset(&m, 0, sizeof m);
    m.queues[FKV_COUNTER_COMPUTE] = c->queues[FKV_COUNTER_COMPUTE];
    m.caller_waits = c->caller_waits;
    return m;
}

static void own_span(fkv_counters *bench, const fkv_counters *after, const fkv_counters *before) {
    fkv_counters b = compute_and_caller(after), a = compute_and_caller(before);
    bench_counters_span(bench, &b, &a, 1);
}

/* One policy's prefill of one (sequence, layer), timed and its device commands counted. */
static fkv_status prefill_one(slot *s, uint32_t seq, uint32_t layer, uint32_t context,
                              const fkv_tensor *k, const fkv_tensor *v, const fkv_tensor *q) {
    fkv_counters c0, c1;
    if (fkv_context_get_counters(s->ctx, &c0) != FKV_OK)
        s->uncounted = 1;
    double t0 = now_s();
    fkv_status st = fkv_prefill(s->ctx, seq, layer, context, k, v, q);
    s->prefill_s += now_s() - t0;
    if (!s->uncounted && fkv_context_get_counters(s->ctx, &c1) == FKV_OK)
        bench_counters_span(&s->prefill_cmds, &c1, &c0, 1);
    return st;
}

/* The prefill's wall time per policy; with --counters its commands per (sequence, layer). */
static void print_prefill(const bench_options *o, const slot *s, uint32_t n, uint32_t context) {
    printf("context %u: prefill (s, all layers and sequences):", context);
    for (uint32_t p = 0; p < n; p++)
        if (s[p].active)
            printf(" %s %.3f", s[p].name, s[p].prefill_s);
    printf("\n");
    double calls = (double)o->p.layers * o->batch;
    for (uint32_t p = 0; o->counters && p < n; p++) {
        if (!s[p].active || s[p].uncounted)
            continue;
        const fkv_counters *c = &s[p].prefill_cmds;
        uint64_t launches = 0, copies = 0;
        for (int q = 0; q < FKV_COUNTER_QUEUES; q++)
            launches += c->queues[q].launches, copies += c->queues[q].copies;
        printf("  %s prefill per (sequence, layer): %.1f launches, %.1f copies, %.1f caller "
               "waits\n", s[p].name, launches / calls, copies / calls, c->caller_waits / calls);
    }
}

/* One block of one policy: warm-up steps, then measured steps (latencies into lat; device
 * commands of the measured steps into *counted). */
static int run_block(const bench_options *o, slot *s, const block_io *io, size_t weight_bytes,
                     double *lat, fkv_stats *sum, fkv_counters *counted, char *note,
                     size_t note_size) {
    uint32_t block = o->warmup + o->steps;
    fkv_stats a, b;
    memset(&a, 0, sizeof a);
    fkv_counters c0, c1, own, t0c, t1c;
    memset(&c0, 0, sizeof c0);
    memset(&own, 0, sizeof own);
    t0c = t1c = c1 = c0;
    for (uint32_t i = 0; i < block; i++) {
        int measured = i >= o->warmup && !s->uncounted;
        if (i == o->warmup) {
            fkv_context_get_stats(s->ctx, &a);
            if (fkv_context_get_counters(s->ctx, &c0) != FKV_OK)
                s->uncounted = 1, measured = 0;
        }
        double t0 = now_s();
        for (uint32_t l = 0; l < o->p.layers; l++) {
            size_t qo = i * io->q_step + l * io->q_layer, ko = i * io->kv_step + l * io->kv_layer;
            fkv_tensor tq = {io->q + qo, NULL, 0}, tk = {io->k + ko, NULL, 0},
                       tv = {io->v + ko, NULL, 0}, to = {io->out, NULL, 0};
            if (fkv_decode_layer(s->ctx, l, o->batch, io->seqs, &tq, &tk, &tv, &to) != FKV_OK) {
                snprintf(note, note_size, "decode failed: %s", fkv_last_error());
                return -1;
            }
            /* the rest of the layer: stream its weights once (half read, half written) */
            if (s->weights) {
                if (measured)
                    fkv_context_get_counters(s->ctx, &t0c);
                fkv_status st = fkv_op_copy(s->dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, NULL},
                                            s->weights, weight_bytes / 2, s->weights, 0,
                                            weight_bytes / 2);
                if (measured && fkv_context_get_counters(s->ctx, &t1c) == FKV_OK)
                    own_span(&own, &t1c, &t0c);
                if (st != FKV_OK) {
                    snprintf(note, note_size, "layer work failed: %s", fkv_last_error());
                    return -1;
                }
            }
        }
        if (measured)
            fkv_context_get_counters(s->ctx, &t0c);
        fkv_status st = fkv_op_finish(s->dev, FKV_QUEUE_COMPUTE);
        if (measured && fkv_context_get_counters(s->ctx, &t1c) == FKV_OK)
            own_span(&own, &t1c, &t0c);
        if (st != FKV_OK) {
            snprintf(note, note_size, "device failed: %s", fkv_last_error());
            return -1;
        }
        if (i >= o->warmup)
            lat[i - o->warmup] = now_s() - t0;
    }
    fkv_context_get_stats(s->ctx, &b);
    stats_delta_add(sum, &b, &a);
    if (!s->uncounted && fkv_context_get_counters(s->ctx, &c1) == FKV_OK) {
        bench_counters_span(counted, &c1, &c0, 1);
        memset(&c0, 0, sizeof c0);
        bench_counters_span(counted, &own, &c0, -1);
    }
    if (fkv_context_sync(s->ctx) != FKV_OK) {
        snprintf(note, note_size, "sync failed: %s", fkv_last_error());
        return -1;
    }
    return 0;
}

static uint64_t ci_seed(uint32_t w, uint32_t p, uint32_t rep) {
    return 0x5eedb007ull ^ ((uint64_t)w << 40) ^ ((uint64_t)p << 32) ^ rep;
}

/* Ratios of policy p to freekv (slot f) over rounds [r0, r1): median and its interval. */
static void ratio_of(const slot *s, uint32_t p, uint32_t f, uint32_t w, size_t r0, size_t r1,
                     uint64_t seed, double *med, double *lo, double *hi) {
    double *x = malloc(sizeof(double) * (r1 - r0 + 1));
    size_t n = 0;
    for (size_t r = r0; x && r < r1; r++) {
        double a = s[p].round_value[w][r], b = s[f].round_value[w][r];
        if (!isnan(a) && !isnan(b) && b > 0)
            x[n++] = a / b;
    }
    if (n)
        bench_median_ci(x, n, seed, med, lo, hi);
    else
        *med = *lo = *hi = NAN;
    free(x);
}

static double median_of(const double *x, size_t n, double *tail, const char **label) {
    double *s = malloc(sizeof(double) * (n ? n : 1));
    if (!s || !n) {
        free(s);
        *tail = NAN;
        *label = "max";
        return NAN;
    }
    memcpy(s, x, sizeof(double) * n);
    bench_sort(s, n);
    double m = bench_median_sorted(s, n);
    *tail = bench_tail(s, n, label);
    free(s);
    return m;
}

static void summarize(const bench_options *o, const slot *s, int freekv, uint32_t w, uint32_t p,
                      double weight_mib, bench_result *r) {
    size_t per_rep = (size_t)o->rounds * o->steps, n = per_rep * o->repeat;
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += s[p].lat[w][i];
    const char *label;
    r->samples = n;
    r->median_ms = 1e3 * median_of(s[p].lat[w], n, &r->tail_ms, &label);
    r->tail_ms *= 1e3;
    r->tail_label = label;
    r->tokens_per_s = sum > 0 ? (double)o->batch * n / sum : NAN;
    if (freekv >= 0)
        ratio_of(s, p, (uint32_t)freekv, w, 0, (size_t)o->rounds * o->repeat,
                 ci_seed(w, p, UINT32_MAX), &r->ratio, &r->ratio_lo, &r->ratio_hi);
    for (uint32_t rep = 0; rep < o->repeat; rep++) {
        double tail;
        r->rep_median_ms[rep] = 1e3 * median_of(s[p].lat[w] + rep * per_rep, per_rep, &tail,
                                                &label);
        if (freekv >= 0)
            ratio_of(s, p, (uint32_t)freekv, w, (size_t)rep * o->rounds,
                     (size_t)(rep + 1) * o->rounds, ci_seed(w, p, rep), &r->rep_ratio[rep],
                     &r->rep_lo[rep], &r->rep_hi[rep]);
    }
    const fkv_stats *st = &s[p].sum[w];
    double steps = (double)s[p].measured[w];
    r->blocked_recall_ms = 1e3 * st->blocked_recall_seconds / steps;
    r->blocked_select_ms = 1e3 * st->blocked_select_seconds / steps;
    r->blocked_correction_ms = 1e3 * st->blocked_correction_seconds / steps;
    r->host_select_ms = st->layer_calls ? 1e3 * st->host_select_seconds / (double)st->layer_calls
                                        : NAN;
    r->recall_bytes = (double)st->bytes_recalled / steps;
    r->engine_ms = 1e3 * st->recall_seconds / steps;
    r->correction_rate =
        st->heads_checked ? (double)st->corrections / (double)st->heads_checked : NAN;
    fkv_stats now;
    fkv_context_get_stats(s[p].ctx, &now);
    r->host_mib = now.host_bytes / 1048576.0;
    r->device_mib = now.device_bytes / 1048576.0 + weight_mib;
    r->counts = bench_counts_per(&s[p].counted[w], !s[p].uncounted, steps * o->p.layers);
}

static void exercise_of(const bench_options *o, uint32_t context, const bench_drift *d,
                        const float *cos, size_t n, double freekv_rate, bench_exercise *ex) {
    memset(ex, 0, sizeof *ex);
    ex->drift = *d;
    ex->context = context;
    ex->n_cos = n;
    ex->freekv_rate = freekv_rate;
    ex->cos_p10 = ex->cos_p50 = ex->cos_p90 = ex->below_tau = NAN;
    double *s = malloc(sizeof(double) * (n ? n : 1));
    if (!s || !n) {
        free(s);
        return;
    }
    size_t below = 0;
    for (size_t i = 0; i < n; i++) {
        s[i] = cos[i];
        below += cos[i] < o->tau;
    }
    bench_sort(s, n);
    ex->cos_p10 = bench_quantile_sorted(s, n, 0.10);
    ex->cos_p50 = bench_median_sorted(s, n);
    ex->cos_p90 = bench_quantile_sorted(s, n, 0.90);
    ex->below_tau = (double)below / n;
    free(s);
}

int bench_run_context(const bench_options *o, fkv_device *dev, uint32_t context,
                      bench_result *res, bench_exercise *ex) {
    uint32_t P = o->n_policies, W = o->n_workloads, block = o->warmup + o->steps;
    fkv_device_info info;
    fkv_device_get_info(dev, &info);
    size_t weight_bytes = (size_t)(o->p.weight_mib * 1048576.0) & ~(size_t)255;
    slot s[BENCH_MAX_POLICIES];
    memset(s, 0, sizeof s);
    int freekv = -1, rc = 0;
    for (uint32_t p = 0; p < P; p++) {
        s[p].name = o->policies[p];
        int perpage = strcmp(s[p].name, "freekv-perpage") == 0;
        fkv_policy_parse(perpage ? "freekv" : s[p].name, &s[p].policy);
        s[p].active = 1;
        if (strcmp(s[p].name, "freekv") == 0)
            freekv = (int)p;
        for (uint32_t w = 0; w < W; w++) {
            bench_result *r = &res[w * P + p];
            snprintf(r->workload, sizeof r->workload, "%s", o->workloads[w].name);
            snprintf(r->policy, sizeof r->policy, "%s", s[p].name);
            r->context = context;
            r->tail_label = "max";
            r->median_ms = r->tail_ms = r->tokens_per_s = r->ratio = r->ratio_lo = r->ratio_hi =
                NAN;
            r->blocked_recall_ms = r->blocked_select_ms = r->blocked_correction_ms = NAN;
            r->host_select_ms = NAN;
            r->recall_bytes = r->engine_ms = r->correction_rate = NAN;
            r->host_mib = r->device_mib = NAN;
            r->counts = bench_counts_per(NULL, 0, 0);
            r->rep_median_ms = calloc(o->repeat, sizeof(double));
            r->rep_ratio = calloc(o->repeat, sizeof(double));
            r->rep_lo = calloc(o->repeat, sizeof(double));
            r->rep_hi = calloc(o->repeat, sizeof(double));
            s[p].lat[w] = calloc((size_t)o->repeat * o->rounds * o->steps, sizeof(double));
            s[p].round_value[w] = malloc(sizeof(double) * o->repeat * o->rounds);
            if (!r->rep_median_ms || !r->rep_ratio || !r->rep_lo || !r->rep_hi ||
                !s[p].lat[w] || !s[p].round_value[w]) {
                fprintf(stderr, "freekv bench: out of host memory\n");
                rc = -1;
            }
            for (size_t i = 0; s[p].round_value[w] && i < (size_t)o->repeat * o->rounds; i++)
                s[p].round_value[w][i] = NAN;
        }
    }
    plan_memory(o, &info, context, s, (double)weight_bytes);

    /* devices and weights: the run's device, and the per-page one if asked for */
    device_weights wts[2] = {{.dev = dev}, {.dev = NULL}};
    size_t n_wts = 1;
    for (uint32_t p = 0; p < P && rc == 0; p++) {
        s[p].dev = dev;
        if (!s[p].active || strcmp(s[p].name, "freekv-perpage") != 0)
            continue;
        if (open_perpage(dev, &wts[1].dev) != FKV_OK) {
            snprintf(s[p].note, sizeof s[p].note, "per-page device: %s", fkv_last_error());
            s[p].active = 0;
            continue;
        }
        n_wts = 2;
        s[p].dev = wts[1].dev;
    }
    for (size_t i = 0; i < n_wts && weight_bytes; i++)
        if (fkv_op_buffer_alloc(wts[i].dev, weight_bytes, &wts[i].buf) != FKV_OK)
            wts[i].buf = NULL;

    /* contexts */
    for (uint32_t p = 0; p < P && rc == 0; p++) {
        if (!s[p].active)
            continue;
        s[p].weights = weights_of(wts, n_wts, s[p].dev);
        fkv_config c;
        bench_config(o, context, s[p].policy, &c);
        if (weight_bytes && !s[p].weights) {
            snprintf(s[p].note, sizeof s[p].note, "weights buffer (%.0f MiB) could not be "
                     "allocated", o->p.weight_mib);
            s[p].active = 0;
        } else if (fkv_context_create(s[p].dev, &c, &s[p].ctx) != FKV_OK) {
            snprintf(s[p].note, sizeof s[p].note, "%s", fkv_last_error());
            s[p].active = 0;
            s[p].ctx = NULL;
        }
    }

    /* prefill: one prompt per (sequence, layer), fed to every context */
    bench_shape shape = {.layers = o->p.layers, .q_heads = o->p.q_heads,
                         .kv_heads = o->p.kv_heads, .head_dim = o->p.head_dim,
                         .page = o->p.page, .batch = o->batch};
    size_t kv_row = (size_t)o->p.kv_heads * o->p.head_dim;
    size_t q_row = (size_t)o->p.q_heads * o->p.head_dim;
    size_t q_step = (size_t)o->p.layers * o->batch * q_row;
    size_t kv_step = (size_t)o->p.layers * o->batch * kv_row;
    float *kbuf = malloc(sizeof(float) * context * kv_row);
    float *vbuf = malloc(sizeof(float) * context * kv_row);
    float *qlast = malloc(sizeof(float) * q_row), *out = malloc(sizeof(float) * o->batch * q_row);
    float *bq = malloc(sizeof(float) * block * q_step);
    float *bk = malloc(sizeof(float) * block * kv_step);
    float *bv = malloc(sizeof(float) * block * kv_step);
    uint32_t *seqs = malloc(sizeof(uint32_t) * o->batch);
    bench_gen *gen = bench_gen_create(&o->workloads[0], &shape, context, o->seed);
    float *cos[BENCH_MAX_WORKLOADS] = {NULL};
    size_t n_cos[BENCH_MAX_WORKLOADS] = {0};
    if (!kbuf || !vbuf || !qlast || !out || !bq || !bk || !bv || !seqs || !gen) {
        fprintf(stderr, "freekv bench: out of host memory for %u tokens\n", context);
        rc = -1;
    }
    for (uint32_t b = 0; rc == 0 && b < o->batch; b++)
        seqs[b] = b;
    double start = now_s();
    for (uint32_t l = 0; rc == 0 && l < o->p.layers; l++)
        for (uint32_t b = 0; b < o->batch; b++) {
            bench_gen_prefill(gen, b, l, kbuf, vbuf, qlast);
            fkv_tensor tk = {kbuf, NULL, 0}, tv = {vbuf, NULL, 0}, tq = {qlast, NULL, 0};
            for (uint32_t p = 0; p < P; p++)
                if (s[p].active && prefill_one(&s[p], b, l, context, &tk, &tv, &tq) != FKV_OK) {
                    snprintf(s[p].note, sizeof s[p].note, "prefill: %s", fkv_last_error());
                    s[p].active = 0;
                }
            progress(start, (size_t)l * o->batch + b + 1, (size_t)o->p.layers * o->batch,
                     "prefill (all policies)");
        }
    bench_gen_destroy(gen);
    gen = NULL;
    double host = 0, devm = 0;
    uint32_t prepared = 0;
    for (uint32_t p = 0; p < P; p++)
        if (s[p].active) {
            fkv_stats st;
            fkv_context_get_stats(s[p].ctx, &st);
            host += st.host_bytes / 1048576.0;
            devm += st.device_bytes / 1048576.0;
            prepared++;
        }
    if (rc == 0)
        print_prefill(o, s, P, context);
    if (rc == 0)
        printf("context %u: %u policies prepared at once: %.1f MiB host, %.1f MiB device (+ %.0f "
               "MiB weights per device); %.0f MiB of host memory still available\n",
               context, prepared, host, devm, weight_bytes / 1048576.0, bench_mem_available_mib());
    fflush(stdout);

    /* the rounds */
    block_io io = {.q = bq, .k = bk, .v = bv, .out = out, .seqs = seqs, .q_step = q_step,
                   .kv_step = kv_step, .q_layer = o->batch * q_row, .kv_layer = o->batch * kv_row};
    size_t total = (size_t)o->repeat * W * o->rounds, done = 0;
    for (uint32_t rep = 0; rc == 0 && prepared && rep < o->repeat; rep++)
        for (uint32_t w = 0; rc == 0 && w < W; w++) {
            gen = bench_gen_create(&o->workloads[w], &shape, context, o->seed);
            if (!gen) {
                rc = -1;
                break;
            }
            char what[64];
            snprintf(what, sizeof what, "%s (%u/%u)", o->workloads[w].name, rep + 1, o->repeat);
            start = now_s();
            for (uint32_t r = 0; rc == 0 && r < o->rounds; r++) {
                for (uint32_t i = 0; i < block && rc == 0; i++)
                    if (bench_gen_step(gen, bq + i * q_step, bk + i * kv_step, bv + i * kv_step))
                        rc = -1;
                for (uint32_t j = 0; j < P && rc == 0; j++) {
                    uint32_t p = (j + r) % P;
                    if (!s[p].active)
                        continue;
                    size_t rr = (size_t)rep * o->rounds + r;
                    double *lat = s[p].lat[w] + rr * o->steps;
                    if (run_block(o, &s[p], &io, weight_bytes, lat, &s[p].sum[w],
                                  &s[p].counted[w], s[p].note, sizeof s[p].note)) {
                        fprintf(stderr, "freekv bench: %s: %s\n", s[p].name, s[p].note);
                        s[p].active = 0;
                        rc = -1;
                        break;
                    }
                    double tail;
                    const char *label;
                    s[p].round_value[w][rr] = median_of(lat, o->steps, &tail, &label);
                    s[p].measured[w] += o->steps;
                }
                progress(start, ++done, total, what);
            }
            size_t n;
            const float *c = bench_gen_cosines(gen, &n);
            float *grown = realloc(cos[w], sizeof(float) * (n_cos[w] + n + 1));
            if (grown) {
                memcpy(grown + n_cos[w], c, sizeof(float) * n);
                cos[w] = grown;
                n_cos[w] += n;
            }
            bench_gen_destroy(gen);
            gen = NULL;
        }

    /* results: only policies that ran every round */
    for (uint32_t w = 0; w < W; w++) {
        for (uint32_t p = 0; p < P; p++) {
            bench_result *r = &res[w * P + p];
            r->ran = s[p].active && rc == 0;
            if (r->ran)
                summarize(o, s, freekv >= 0 && s[freekv].active ? freekv : -1, w, p,
                          weight_bytes / 1048576.0, r);
            else
                snprintf(r->note, sizeof r->note, "%s",
                         s[p].note[0] ? s[p].note : "not run: the run stopped");
        }
        double rate = freekv >= 0 && res[w * P + freekv].ran ? res[w * P + freekv].correction_rate
                                                             : NAN;
        exercise_of(o, context, &o->workloads[w], cos[w], n_cos[w], rate, &ex[w]);
        free(cos[w]);
    }

    for (uint32_t p = 0; p < P; p++) {
        fkv_context_destroy(s[p].ctx);
        for (uint32_t w = 0; w < W; w++)
            free(s[p].lat[w]), free(s[p].round_value[w]);
    }
    for (size_t i = 0; i < n_wts; i++) {
        if (wts[i].buf)
            fkv_op_buffer_free(wts[i].dev, wts[i].buf);
        if (wts[i].dev != dev)
            fkv_device_close(wts[i].dev);
    }
    free(kbuf), free(vbuf), free(qlast), free(out), free(bq), free(bk), free(bv), free(seqs);
    return rc;
}

void bench_results_free(bench_result *res, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(res[i].rep_median_ms), free(res[i].rep_ratio);
        free(res[i].rep_lo), free(res[i].rep_hi);
    }
}
