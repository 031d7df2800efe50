/* freekv bench: a model-shaped decode loop that runs each policy on one device and reports
 * latency, throughput, recall traffic, how much recall hid behind compute, and memory.
 * Between layers it runs the rest of the layer as a memory-bound device pass over that
 * layer's weight bytes, so the speculative recall has real work to overlap with. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backends/device.h"
#include "freekv.h"

typedef struct preset {
    const char *name;
    uint32_t layers, q_heads, kv_heads, head_dim;
    double weight_mib; /* bytes per layer besides attention (projections + MLP), MiB */
    uint32_t page, budget, sink, window, context, steps;
    fkv_dtype dtype;
} preset;

/* Llama-3.1-8B: 218M parameters per layer (q,k,v,o + 3 MLP matrices) in bf16 = 436 MB. */
static const preset presets[] = {
    {"small", 8, 8, 2, 64, 8.0, 16, 512, 64, 128, 16384, 32, FKV_F16},
    {"llama-3.1-8b", 32, 32, 8, 128, 416.0, 32, 2048, 512, 512, 32768, 32, FKV_BF16},
    {"qwen-2.5-7b", 28, 28, 4, 128, 444.0, 32, 2048, 512, 512, 32768, 32, FKV_BF16},
};

typedef struct options {
    preset p;
    uint32_t contexts[16], n_contexts;
    uint32_t warmup, batch;
    float tau;
    char policies[256];
    const char *csv, *json, *plot, *backend, *device;
    unsigned seed;
} options;

typedef struct result {
    char policy[32];
    uint32_t context;
    int skipped;
    char note[160];
    double median_ms, p99_ms, tokens_per_s;
    double recall_gb, recall_gbps, hidden, correction_rate;
    double host_mib, device_mib;
} result;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: freekv bench [options]\n"
            "  --preset NAME       small (default on CPU devices), llama-3.1-8b (default on GPUs),\n"
            "                      qwen-2.5-7b\n"
            "  --layers N --q-heads N --kv-heads N --head-dim N   geometry (override the preset)\n"
            "  --weights-mib X     device bytes per layer outside attention (memory-bound pass)\n"
            "  --page N --budget N --sink N --window N            tokens\n"
            "  --dtype f32|f16|bf16  --tau X (freekv correction threshold, default 0.9)\n"
            "  --context N[,N...]  context length(s) before decoding\n"
            "  --steps N --warmup N --batch N\n"
            "  --policies LIST     comma list of dense,quest,sync,speculative,freekv,freekv-perpage\n"
            "                      (default: all; dense only where the whole KV fits)\n"
            "  --csv FILE --json FILE   write the results\n"
            "  --plot FILE.png     latency against context length (needs gnuplot)\n"
            "  --backend NAME --device SEL   override FREEKV_BACKEND / FREEKV_DEVICE\n"
            "  --seed N\n");
}

static int parse_u32(const char *s, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || end == s || *end || v > 0xffffffffu || s[0] == '-')
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* 0: parsed; 1: --help was printed; -1: bad arguments (message printed). */
static int parse_args(int argc, char **argv, size_t default_preset, options *o,
                      int *explicit_preset) {
    memset(o, 0, sizeof *o);
    o->p = presets[default_preset];
    o->warmup = 2;
    o->batch = 1;
    o->tau = 0.9f;
    o->seed = 1;
    snprintf(o->policies, sizeof o->policies, "dense,quest,sync,speculative,freekv,freekv-perpage");
    uint32_t overrides[16];
    int has[16] = {0};
    double weights = -1;
    int ctx_given = 0;
    *explicit_preset = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "freekv bench: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        const char *v = argv[++i];
        static const char *const u32_flags[] = {"--layers", "--q-heads", "--kv-heads", "--head-dim",
                                                "--page", "--budget", "--sink", "--window",
                                                "--steps", "--warmup", "--batch"};
        int matched = 0;
        for (int f = 0; f < 11; f++)
            if (strcmp(a, u32_flags[f]) == 0) {
                if (parse_u32(v, &overrides[f])) {
                    fprintf(stderr, "freekv bench: %s: '%s' is not a non-negative integer\n", a, v);
                    return -1;
                }
                has[f] = 1;
                matched = 1;
            }
        if (matched)
            continue;
        if (strcmp(a, "--preset") == 0) {
            int found = 0;
            for (size_t p = 0; p < sizeof presets / sizeof *presets; p++)
                if (strcmp(v, presets[p].name) == 0) {
                    o->p = presets[p];
                    found = 1;
                }
            if (!found) {
                fprintf(stderr, "freekv bench: unknown preset '%s' (small, llama-3.1-8b, "
                                "qwen-2.5-7b)\n", v);
                return -1;
            }
            *explicit_preset = 1;
        } else if (strcmp(a, "--context") == 0) {
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            o->n_contexts = 0;
            for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                if (o->n_contexts == 16 || parse_u32(tok, &o->contexts[o->n_contexts]) ||
                    o->contexts[o->n_contexts] == 0) {
                    fprintf(stderr, "freekv bench: --context: bad list '%s' (1..16 positive "
                                    "integers)\n", v);
                    return -1;
                }
                o->n_contexts++;
            }
            ctx_given = 1;
        } else if (strcmp(a, "--dtype") == 0) {
            if (strcmp(v, "f32") == 0)
                o->p.dtype = FKV_F32;
            else if (strcmp(v, "f16") == 0)
                o->p.dtype = FKV_F16;
            else if (strcmp(v, "bf16") == 0)
                o->p.dtype = FKV_BF16;
            else {
                fprintf(stderr, "freekv bench: --dtype must be f32, f16 or bf16\n");
                return -1;
            }
        } else if (strcmp(a, "--tau") == 0) {
            char *end;
            o->tau = strtof(v, &end);
            if (*end || end == v || !(o->tau >= -1 && o->tau <= 1)) {
                fprintf(stderr, "freekv bench: --tau must be a number in [-1, 1]\n");
                return -1;
            }
        } else if (strcmp(a, "--weights-mib") == 0) {
            char *end;
            weights = strtod(v, &end);
            if (*end || end == v || !(weights >= 0 && weights <= 65536)) {
                fprintf(stderr, "freekv bench: --weights-mib must be in [0, 65536]\n");
                return -1;
            }
        } else if (strcmp(a, "--policies") == 0) {
            snprintf(o->policies, sizeof o->policies, "%s", v);
        } else if (strcmp(a, "--csv") == 0) {
            o->csv = v;
        } else if (strcmp(a, "--json") == 0) {
            o->json = v;
        } else if (strcmp(a, "--plot") == 0) {
            o->plot = v;
        } else if (strcmp(a, "--backend") == 0) {
            o->backend = v;
        } else if (strcmp(a, "--device") == 0) {
            o->device = v;
        } else if (strcmp(a, "--seed") == 0) {
            uint32_t s;
            if (parse_u32(v, &s)) {
                fprintf(stderr, "freekv bench: --seed must be a non-negative integer\n");
                return -1;
            }
            o->seed = s;
        } else {
            fprintf(stderr, "freekv bench: unknown option '%s'\n", a);
            return -1;
        }
    }
    /* overrides are applied after the preset, whatever the order on the command line */
    uint32_t *fields[] = {&o->p.layers, &o->p.q_heads, &o->p.kv_heads, &o->p.head_dim,
                          &o->p.page,   &o->p.budget,  &o->p.sink,     &o->p.window,
                          &o->p.steps,  &o->warmup,    &o->batch};
    for (int f = 0; f < 11; f++)
        if (has[f])
            *fields[f] = overrides[f];
    if (weights >= 0)
        o->p.weight_mib = weights;
    if (!ctx_given) {
        o->contexts[0] = o->p.context;
        o->n_contexts = 1;
    }
    if (o->p.steps == 0 || o->batch == 0) {
        fprintf(stderr, "freekv bench: --steps and --batch must be at least 1\n");
        return -1;
    }
    char check[256];
    snprintf(check, sizeof check, "%s", o->policies);
    for (char *tok = strtok(check, ","); tok; tok = strtok(NULL, ",")) {
        fkv_policy pol;
        if (strcmp(tok, "freekv-perpage") != 0 && fkv_policy_parse(tok, &pol) != FKV_OK) {
            fprintf(stderr, "freekv bench: --policies: %s\n", fkv_last_error());
            return -1;
        }
    }
    return 0;
}

/* Deterministic pseudo-random normal-ish numbers, cheap enough for GiB of prefill data. */
static uint64_t rng_state;
static float rnd(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    uint32_t a = (uint32_t)(rng_state >> 40), b = (uint32_t)(rng_state >> 16) & 0xffffff;
    return ((float)a + (float)b) * (1.0f / 16777216.0f) - 1.0f; /* triangular on [-1, 1) */
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void progress(double start, size_t done, size_t total, const char *what) {
    static double last;
    double t = now_s();
    if (t - start < 2.0 || (t - last < 0.25 && done < total) || !isatty(2))
        return;
    last = t;
    int width = 30, fill = (int)(width * done / (total ? total : 1));
    fprintf(stderr, "\r%-22s [%.*s%*s] %3d%%", what, fill, "##############################",
            width - fill, "", (int)(100 * done / (total ? total : 1)));
    if (done == total)
        fprintf(stderr, "\n");
}

/* One policy at one context length. */
static int run_one(const options *o, fkv_device *dev, const char *policy_name, uint32_t context,
                   result *r) {
    memset(r, 0, sizeof *r);
    snprintf(r->policy, sizeof r->policy, "%s", policy_name);
    r->context = context;
    fkv_config c;
    fkv_config_init(&c);
    c.n_layers = o->p.layers;
    c.n_q_heads = o->p.q_heads;
    c.n_kv_heads = o->p.kv_heads;
    c.head_dim = o->p.head_dim;
    c.page_size = o->p.page;
    c.budget_tokens = o->p.budget;
    c.sink_tokens = o->p.sink;
    c.window_tokens = o->p.window;
    c.dtype = o->p.dtype;
    c.tau = o->tau;
    c.max_seqs = o->batch;
    c.max_context = context + o->warmup + o->p.steps;
    const char *base = strcmp(policy_name, "freekv-perpage") == 0 ? "freekv" : policy_name;
    if (fkv_policy_parse(base, &c.policy) != FKV_OK)
        return -1;
    fkv_device_info info;
    fkv_device_get_info(dev, &info);
    double kv_bytes = (double)c.n_layers * c.max_context * c.n_kv_heads * c.head_dim * 2 *
                      fkv_dtype_size(c.dtype) * o->batch;
    if (c.policy <= FKV_POLICY_QUEST && info.memory_bytes && kv_bytes > 0.6 * info.memory_bytes) {
        r->skipped = 1;
        snprintf(r->note, sizeof r->note, "KV cache (%.1f GiB) does not fit the device",
                 kv_bytes / 1073741824.0);
        return 0;
    }
    fkv_context *ctx;
    if (fkv_context_create(dev, &c, &ctx) != FKV_OK) {
        r->skipped = 1;
        snprintf(r->note, sizeof r->note, "%s", fkv_last_error());
        return 0;
    }
    const fkv_backend_ops *ops = dev->ops;
    size_t weight_bytes = (size_t)(o->p.weight_mib * 1048576.0) & ~(size_t)255;
    fkv_bbuf *weights = NULL;
    if (weight_bytes && ops->buffer_alloc(dev->bdev, weight_bytes, &weights) != FKV_OK) {
        fkv_context_destroy(ctx);
        r->skipped = 1;
        snprintf(r->note, sizeof r->note, "weights buffer: %s", fkv_last_error());
        return 0;
    }
    size_t kv_row = (size_t)c.n_kv_heads * c.head_dim, q_row = (size_t)c.n_q_heads * c.head_dim;
    /* A pool of random rows reused with per-layer offsets keeps prefill data cheap. */
    size_t pool_rows = 8192;
    float *pool = malloc(sizeof(float) * pool_rows * kv_row);
    float *kbuf = malloc(sizeof(float) * context * kv_row);
    float *vbuf = malloc(sizeof(float) * context * kv_row);
    float *qbase = malloc(sizeof(float) * q_row * o->batch * c.n_layers);
    float *q = malloc(sizeof(float) * q_row * o->batch), *out = malloc(sizeof(float) * q_row * o->batch);
    float *k = malloc(sizeof(float) * kv_row * o->batch), *v = malloc(sizeof(float) * kv_row * o->batch);
    uint32_t *seqs = malloc(sizeof(uint32_t) * o->batch);
    size_t total_steps = o->warmup + o->p.steps;
    double *lat = malloc(sizeof(double) * total_steps);
    int rc = 0;
    if (!pool || !kbuf || !vbuf || !qbase || !q || !out || !k || !v || !seqs || !lat) {
        fprintf(stderr, "freekv bench: out of host memory for %u tokens\n", context);
        rc = -1;
        goto done;
    }
    rng_state = o->seed;
    for (size_t i = 0; i < pool_rows * kv_row; i++)
        pool[i] = rnd();
    for (size_t i = 0; i < q_row * o->batch * c.n_layers; i++)
        qbase[i] = rnd() * 2.0f;
    for (uint32_t b = 0; b < o->batch; b++)
        seqs[b] = b;
    double start = now_s();
    for (uint32_t b = 0; b < o->batch && rc == 0; b++)
        for (uint32_t l = 0; l < c.n_layers && rc == 0; l++) {
            size_t off = ((size_t)l * 977 + b * 131) % pool_rows;
            for (size_t t = 0; t < context; t++) {
                memcpy(kbuf + t * kv_row, pool + ((off + t) % pool_rows) * kv_row, kv_row * 4);
                memcpy(vbuf + t * kv_row, pool + ((off + 3 * t + 1) % pool_rows) * kv_row, kv_row * 4);
            }
            fkv_tensor tk = {kbuf, NULL, 0}, tv = {vbuf, NULL, 0},
                       tq = {qbase + ((size_t)l * o->batch + b) * q_row, NULL, 0};
            if (fkv_prefill(ctx, b, l, context, &tk, &tv, &tq) != FKV_OK) {
                fprintf(stderr, "freekv bench: prefill: %s\n", fkv_last_error());
                rc = -1;
            }
            progress(start, (size_t)b * c.n_layers + l + 1, (size_t)o->batch * c.n_layers,
                     "prefill");
        }
    double ws = now_s();
    for (size_t s = 0; s < total_steps && rc == 0; s++) {
        if (s == o->warmup)
            fkv_context_reset_stats(ctx);
        double t0 = now_s();
        for (uint32_t l = 0; l < c.n_layers && rc == 0; l++) {
            /* this step's query: the layer's base direction plus noise whose size varies by
             * head, so adjacent-step cosines spread around 0.9 (0.86 to 0.98) */
            for (size_t i = 0; i < q_row * o->batch; i++) {
                uint32_t head = (uint32_t)(i / c.head_dim) % c.n_q_heads;
                float amp = 0.3f + 0.5f * (float)(head % 4) / 3.0f;
                q[i] = qbase[(size_t)l * o->batch * q_row + i] + amp * rnd();
            }
            for (size_t i = 0; i < kv_row * o->batch; i++) {
                k[i] = rnd();
                v[i] = rnd();
            }
            fkv_tensor tq = {q, NULL, 0}, tk = {k, NULL, 0}, tv = {v, NULL, 0}, to = {out, NULL, 0};
            if (fkv_decode_layer(ctx, l, o->batch, seqs, &tq, &tk, &tv, &to) != FKV_OK) {
                fprintf(stderr, "freekv bench: decode: %s\n", fkv_last_error());
                rc = -1;
                break;
            }
            /* the rest of the layer: stream its weights once (half read, half written) */
            if (weights && ops->copy(dev->bdev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, NULL},
                                     weights, weight_bytes / 2, weights, 0,
                                     weight_bytes / 2) != FKV_OK) {
                fprintf(stderr, "freekv bench: layer work: %s\n", fkv_last_error());
                rc = -1;
            }
        }
        if (rc == 0 && ops->finish(dev->bdev, FKV_QUEUE_COMPUTE) != FKV_OK)
            rc = -1;
        lat[s] = now_s() - t0;
        progress(ws, s + 1, total_steps, policy_name);
    }
    if (rc == 0) {
        fkv_stats st;
        fkv_context_sync(ctx);
        fkv_context_get_stats(ctx, &st);
        double *m = lat + o->warmup, sum = 0;
        size_t n = o->p.steps;
        for (size_t i = 0; i < n; i++)
            sum += m[i];
        qsort(m, n, sizeof *m, cmp_double);
        r->median_ms = 1e3 * (n % 2 ? m[n / 2] : 0.5 * (m[n / 2 - 1] + m[n / 2]));
        size_t i99 = (size_t)ceil(0.99 * n) - 1;
        r->p99_ms = 1e3 * m[i99 < n ? i99 : n - 1];
        r->tokens_per_s = o->batch * n / sum;
        r->recall_gb = st.bytes_recalled / 1e9;
        r->recall_gbps = st.recall_seconds > 0 ? st.bytes_recalled / 1e9 / st.recall_seconds : 0;
        r->hidden = st.recall_seconds > 0 ? 1.0 - st.blocked_seconds / st.recall_seconds : NAN;
        if (r->hidden < 0)
            r->hidden = 0;
        r->correction_rate = st.heads_checked ? (double)st.corrections / st.heads_checked : NAN;
        r->host_mib = st.host_bytes / 1048576.0;
        r->device_mib = (st.device_bytes + weight_bytes) / 1048576.0;
    }
done:
    if (weights)
        ops->buffer_free(dev->bdev, weights);
    fkv_context_destroy(ctx);
    free(pool), free(kbuf), free(vbuf), free(qbase), free(q), free(out), free(k), free(v);
    free(seqs), free(lat);
    return rc;
}

static void print_table(const result *res, size_t n) {
    printf("\n%-15s %8s %10s %10s %10s %10s %10s %8s %8s %10s %10s\n", "policy", "context",
           "median ms", "p99 ms", "tokens/s", "recall GB", "recall GB/s", "hidden", "correct",
           "host MiB", "dev MiB");
    for (size_t i = 0; i < n; i++) {
        const result *r = &res[i];
        if (r->skipped) {
            printf("%-15s %8u   skipped: %s\n", r->policy, r->context, r->note);
            continue;
        }
        char hidden[16] = "-", corr[16] = "-";
        if (!isnan(r->hidden))
            snprintf(hidden, sizeof hidden, "%.0f%%", 100 * r->hidden);
        if (!isnan(r->correction_rate))
            snprintf(corr, sizeof corr, "%.0f%%", 100 * r->correction_rate);
        printf("%-15s %8u %10.2f %10.2f %10.1f %10.3f %10.2f %8s %8s %10.1f %10.1f\n", r->policy,
               r->context, r->median_ms, r->p99_ms, r->tokens_per_s, r->recall_gb, r->recall_gbps,
               hidden, corr, r->host_mib, r->device_mib);
    }
}

static int write_csv(const char *path, const result *res, size_t n) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "freekv bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "policy,context,skipped,median_ms,p99_ms,tokens_per_s,recall_gb,recall_gbps,"
               "hidden_fraction,correction_rate,host_mib,device_mib,note\n");
    for (size_t i = 0; i < n; i++) {
        const result *r = &res[i];
        fprintf(f, "%s,%u,%d,%.4f,%.4f,%.3f,%.6f,%.4f,%.4f,%.4f,%.2f,%.2f,\"%s\"\n", r->policy,
                r->context, r->skipped, r->median_ms, r->p99_ms, r->tokens_per_s, r->recall_gb,
                r->recall_gbps, r->hidden, r->correction_rate, r->host_mib, r->device_mib,
                r->note);
    }
    return fclose(f) == 0 ? 0 : -1;
}

static double json_num(double x) { return isnan(x) || isinf(x) ? -1 : x; }

static int write_json(const char *path, const options *o, const fkv_device_info *info,
                      const result *res, size_t n) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "freekv bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "{\n  \"device\": {\"backend\": \"%s\", \"name\": \"%s\", \"driver\": \"%s\"},\n",
            info->backend, info->name, info->driver);
    fprintf(f, "  \"geometry\": {\"preset\": \"%s\", \"layers\": %u, \"q_heads\": %u, "
               "\"kv_heads\": %u, \"head_dim\": %u, \"page\": %u, \"budget\": %u, \"sink\": %u, "
               "\"window\": %u, \"dtype\": \"%s\", \"batch\": %u, \"steps\": %u, "
               "\"weights_mib\": %.1f, \"tau\": %.3f},\n  \"results\": [\n",
            o->p.name, o->p.layers, o->p.q_heads, o->p.kv_heads, o->p.head_dim, o->p.page,
            o->p.budget, o->p.sink, o->p.window, fkv_dtype_name(o->p.dtype), o->batch,
            o->p.steps, o->p.weight_mib, o->tau);
    for (size_t i = 0; i < n; i++) {
        const result *r = &res[i];
        fprintf(f, "    {\"policy\": \"%s\", \"context\": %u, \"skipped\": %s, \"note\": \"%s\", "
                   "\"median_ms\": %.4f, \"p99_ms\": %.4f, \"tokens_per_s\": %.3f, "
                   "\"recall_gb\": %.6f, \"recall_gbps\": %.4f, \"hidden_fraction\": %.4f, "
                   "\"correction_rate\": %.4f, \"host_mib\": %.2f, \"device_mib\": %.2f}%s\n",
                r->policy, r->context, r->skipped ? "true" : "false", r->note, r->median_ms,
                r->p99_ms, r->tokens_per_s, r->recall_gb, r->recall_gbps, json_num(r->hidden),
                json_num(r->correction_rate), r->host_mib, r->device_mib, i + 1 < n ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return fclose(f) == 0 ? 0 : -1;
}

/* Latency against context length, one line per policy, through gnuplot. */
static int write_plot(const char *path, const result *res, size_t n) {
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "freekv bench: --plot needs gnuplot (apt-get install gnuplot-nox)\n");
        return -1;
    }
    char data[] = "/tmp/freekv-plot-XXXXXX";
    int fd = mkstemp(data);
    if (fd < 0)
        return -1;
    FILE *f = fdopen(fd, "w");
    const char *names[16];
    size_t n_names = 0;
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < n_names && strcmp(names[j], res[i].policy) != 0)
            j++;
        if (j == n_names && n_names < 16)
            names[n_names++] = res[i].policy;
    }
    for (size_t j = 0; j < n_names; j++) {
        fprintf(f, "\"%s\"\n", names[j]);
        for (size_t i = 0; i < n; i++)
            if (!res[i].skipped && strcmp(res[i].policy, names[j]) == 0)
                fprintf(f, "%u %.4f\n", res[i].context, res[i].median_ms);
        fprintf(f, "\n\n");
    }
    fclose(f);
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        remove(data);
        return -1;
    }
    fprintf(g, "set terminal pngcairo size 900,600\nset output '%s'\n"
               "set xlabel 'context (tokens)'\nset ylabel 'decode latency per token (ms)'\n"
               "set logscale x 2\nset key left top\nset grid\n"
               "plot for [i=0:%zu] '%s' index i using 1:2 with linespoints title columnheader(1)\n",
            path, n_names ? n_names - 1 : 0, data);
    int rc = pclose(g);
    remove(data);
    if (rc != 0)
        fprintf(stderr, "freekv bench: gnuplot failed (%d)\n", rc);
    return rc == 0 ? 0 : -1;
}

int fkv_bench_main(int argc, char **argv) {
    options o;
    int explicit_preset;
    int parsed = parse_args(argc, argv, 0, &o, &explicit_preset);
    if (parsed == 1) /* --help */
        return 0;
    if (parsed != 0) {
        fprintf(stderr, "(freekv bench --help lists the options)\n");
        return 2;
    }
    fkv_device *dev;
    if (fkv_device_open(o.backend, o.device, &dev) != FKV_OK) {
        fprintf(stderr, "freekv bench: %s\n", fkv_last_error());
        return 1;
    }
    fkv_device_info info;
    fkv_device_get_info(dev, &info);
    /* a GPU gets the model-sized default unless the user chose; flags still override it */
    if (!explicit_preset && info.type == FKV_DEVICE_DISCRETE_GPU)
        parse_args(argc, argv, 1, &o, &explicit_preset);
    printf("freekv bench on %s #%u %s (%s)\n", info.backend, info.index, info.name,
           fkv_device_type_name(info.type));
    printf("preset %s: %u layers, %u/%u heads, d %u, page %u, budget %u (sink %u, window %u), "
           "%s, batch %u, %u steps (+%u warm-up), %.0f MiB layer weights\n",
           o.p.name, o.p.layers, o.p.q_heads, o.p.kv_heads, o.p.head_dim, o.p.page, o.p.budget,
           o.p.sink, o.p.window, fkv_dtype_name(o.p.dtype), o.batch, o.p.steps, o.warmup,
           o.p.weight_mib);
    result res[16 * 8];
    size_t n = 0;
    int rc = 0;
    for (uint32_t ci = 0; ci < o.n_contexts && rc == 0; ci++) {
        char list[256];
        snprintf(list, sizeof list, "%s", o.policies);
        char *save = NULL;
        for (char *tok = strtok_r(list, ",", &save); tok && rc == 0 && n < 16 * 8;
             tok = strtok_r(NULL, ",", &save)) {
            fkv_device *use = dev;
            if (strcmp(tok, "freekv-perpage") == 0) {
                /* the per-page mechanism is a backend setting read when a device opens */
                char var[64];
                snprintf(var, sizeof var, "FREEKV_%s_RECALL", info.backend);
                for (char *c = var; *c; c++)
                    if (*c >= 'a' && *c <= 'z')
                        *c -= 32;
                setenv(var, "perpage", 1);
                char idx[16];
                snprintf(idx, sizeof idx, "%u", info.index);
                fkv_status st = fkv_device_open(info.backend, idx, &use);
                unsetenv(var);
                if (st != FKV_OK) {
                    fprintf(stderr, "freekv bench: %s\n", fkv_last_error());
                    rc = 1;
                    break;
                }
            }
            rc = run_one(&o, use, tok, o.contexts[ci], &res[n]) ? 1 : 0;
            if (use != dev)
                fkv_device_close(use);
            if (rc == 0)
                n++;
        }
    }
    fkv_device_close(dev);
    print_table(res, n);
    if (o.csv && write_csv(o.csv, res, n))
        rc = 1;
    if (o.json && write_json(o.json, &o, &info, res, n))
        rc = 1;
    if (o.plot && write_plot(o.plot, res, n))
        rc = 1;
    return rc;
}
