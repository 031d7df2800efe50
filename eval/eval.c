/* freekv eval: accuracy of each policy against dense attention on the same trace.
 *
 * Every policy decodes the same prefill and decode inputs on the chosen device. Per decode
 * step and layer we compare its attention output with the dense run's (relative L2 over
 * all query heads), measure how much of the exact attention mass the pages it attended
 * cover (the mass is computed on the host from the trace, once, per query head), and
 * check whether each planted needle's page was attended at the step whose query matches
 * it. A host-side "oracle" row shows the best any page set of the same budget could cover. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "freekv.h"
#include "trace.h"

int fkv_eval_main(int argc, char **argv);

#define N_POLICIES 5

typedef struct options {
    fkv_synth_params synth;
    const char *trace_dir, *save_trace, *csv, *json, *backend, *device;
    uint32_t page, budget, sink, window;
    uint32_t max_layers, max_steps; /* trace directories: 0 = all */
    float tau;
    fkv_dtype dtype;
    fkv_group_reduce reduce;
    int want[N_POLICIES]; /* chosen policies, by fkv_policy value */
    int geometry_given;   /* a flag that a trace directory fixes was given */
} options;

typedef struct result {
    fkv_policy policy;
    int ok;
    char error[256];
    double l2_mean, l2_max;
    double cov_mean, cov_min;
    uint32_t needle_hits, needles;
    double correction_rate, recalled_per_step, seconds;
} result;

static void usage(FILE *f) {
    fprintf(f,
        "usage: freekv eval [options]\n"
        "Runs each policy on the same trace and compares it with dense attention: relative L2\n"
        "error of the attention outputs, fraction of the exact attention mass the attended pages\n"
        "cover, and needle retrieval. Exit status: 0 ok, 1 run or file error, 2 bad arguments.\n"
        "\n"
        "input (default: the built-in synthetic trace):\n"
        "  --trace DIR          a trace directory (header.json, k_<l>.npy, v_<l>.npy, q_<l>.npy;\n"
        "                       docs/eval.md, tools/dump_trace.py)\n"
        "  --layers N           layers (4); with --trace: use only the first N\n"
        "  --steps N            decode steps (32); with --trace: at most N\n"
        "  --q-heads N (8)  --kv-heads N (2)  --head-dim N (64)  --context N (4096 prompt tokens)\n"
        "  --seed N (1)\n"
        "synthetic trace structure (logits are q.k/sqrt(d) contributions):\n"
        "  --drift X (0.8)        AR(1) coefficient of each query head's moving part per step\n"
        "                         (adjacent-step query cosine about 0.9)\n"
        "  --jump-prob X (0.02)   chance per head and step that the moving part is redrawn\n"
        "  --sink-tokens N (4)  --sink-logit X (8)       attention sinks\n"
        "  --locality X (24)    --local-logit X (5)      recency: correlation length in tokens\n"
        "  --topics N (8)  --heavy-pages N (16)  --heavy-span N (16, at most context/4)\n"
        "  --heavy-logit X (10)\n"
        "                         heavy-hitter spans, each on one of the topics queries mix\n"
        "  --key-noise X (0.4)  per-channel key noise\n"
        "  --needles N (2)      needles per layer (at most --steps)  --needle-logit X (12)\n"
        "  --save-trace DIR     also write the trace as a trace directory (DIR must exist)\n"
        "budget and policy:\n"
        "  --page N (16)  --budget N (512)  --sink N (64)  --window N (64)   tokens\n"
        "  --tau X (0.9)        freekv correction threshold\n"
        "  --dtype f32|f16|bf16 (f16)   KV storage\n"
        "  --group-reduce softmax-mean|mean|max (softmax-mean)\n"
        "  --policies LIST      comma list of dense,quest,sync,speculative,freekv (all);\n"
        "                       dense always runs as the reference\n"
        "device and output:\n"
        "  --backend NAME --device SEL   override FREEKV_BACKEND / FREEKV_DEVICE\n"
        "  --csv FILE  --json FILE       also write the results\n");
}

static int parse_u32(const char *s, uint32_t *out) {
    char *end;
    errno = 0;
    if (s[0] < '0' || s[0] > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > 0xffffffffull)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || fabs(v) > 1e30)
        return -1;
    *out = (float)v;
    return 0;
}

static int parse_policies(const char *list, int *want) {
    char buf[256];
    if (strlen(list) >= sizeof buf || list[0] == '\0')
        return -1;
    snprintf(buf, sizeof buf, "%s", list);
    memset(want, 0, sizeof(int) * N_POLICIES);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "all") == 0) {
            for (int i = 0; i < N_POLICIES; i++)
                want[i] = 1;
            continue;
        }
        fkv_policy p;
        if (fkv_policy_parse(tok, &p) != FKV_OK) {
            fprintf(stderr, "freekv eval: --policies: unknown policy '%s' (dense, quest, sync, "
                            "speculative, freekv)\n", tok);
            return -1;
        }
        want[p] = 1;
    }
    return 0;
}

typedef struct u32_flag {
    const char *name;
    uint32_t *dst;
    int geometry; /* fixed by a trace directory */
} u32_flag;

typedef struct f32_flag {
    const char *name;
    float *dst;
} f32_flag;

/* Returns 0, 1 for --help, or -1 after printing a message. */
static int parse_args(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    fkv_synth_defaults(&o->synth);
    o->page = 16;
    o->budget = 512;
    o->sink = 64;
    o->window = 64;
    o->tau = 0.9f;
    o->dtype = FKV_F16;
    o->reduce = FKV_GROUP_SOFTMAX_MEAN;
    for (int i = 0; i < N_POLICIES; i++)
        o->want[i] = 1;
    uint32_t layers = 0, steps = 0, seed = 1;
    int layers_given = 0, steps_given = 0, needles_given = 0, span_given = 0;
    fkv_synth_params *s = &o->synth;
    const u32_flag u32_flags[] = {
        {"--layers", &layers, 0},         {"--steps", &steps, 0},
        {"--q-heads", &s->q_heads, 1},    {"--kv-heads", &s->kv_heads, 1},
        {"--head-dim", &s->head_dim, 1},  {"--context", &s->prompt_tokens, 1},
        {"--seed", &seed, 1},             {"--sink-tokens", &s->sink_tokens, 1},
        {"--topics", &s->topics, 1},      {"--heavy-pages", &s->heavy_pages, 1},
        {"--heavy-span", &s->heavy_span, 1}, {"--needles", &s->needles, 1},
        {"--page", &o->page, 0},          {"--budget", &o->budget, 0},
        {"--sink", &o->sink, 0},          {"--window", &o->window, 0},
    };
    const f32_flag f32_flags[] = {
        {"--drift", &s->drift},           {"--jump-prob", &s->jump_prob},
        {"--sink-logit", &s->sink_logit}, {"--locality", &s->locality},
        {"--local-logit", &s->local_logit}, {"--heavy-logit", &s->heavy_logit},
        {"--key-noise", &s->key_noise},   {"--needle-logit", &s->needle_logit},
        {"--tau", &o->tau},
    };
    const char *geometry_flag = NULL;
    for (int i = 1; i < argc; i++) {
        char flag[64];
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "freekv eval: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
        const char *eq = strchr(a, '=');
        if (eq) { /* --flag=value */
            size_t n = (size_t)(eq - a);
            if (n >= sizeof flag) {
                fprintf(stderr, "freekv eval: unknown option '%.40s...'\n", a);
                return -1;
            }
            memcpy(flag, a, n);
            flag[n] = '\0';
            v = eq + 1;
        } else {
            snprintf(flag, sizeof flag, "%s", a);
        }
        int matched = 0;
        for (size_t f = 0; f < sizeof u32_flags / sizeof *u32_flags; f++)
            matched |= strcmp(flag, u32_flags[f].name) == 0;
        for (size_t f = 0; f < sizeof f32_flags / sizeof *f32_flags; f++)
            matched |= strcmp(flag, f32_flags[f].name) == 0;
        static const char *const str_flags[] = {"--trace", "--save-trace", "--csv", "--json",
                                                "--backend", "--device", "--policies",
                                                "--dtype", "--group-reduce"};
        for (size_t f = 0; f < sizeof str_flags / sizeof *str_flags; f++)
            matched |= strcmp(flag, str_flags[f]) == 0;
        if (!matched) {
            fprintf(stderr, "freekv eval: unknown option '%s' (see --help)\n", flag);
            return -1;
        }
        if (v == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "freekv eval: %s needs a value\n", flag);
                return -1;
            }
            v = argv[++i];
        }
        for (size_t f = 0; f < sizeof u32_flags / sizeof *u32_flags; f++) {
            if (strcmp(flag, u32_flags[f].name) != 0)
                continue;
            if (parse_u32(v, u32_flags[f].dst)) {
                fprintf(stderr, "freekv eval: %s: '%s' is not a non-negative integer\n", flag, v);
                return -1;
            }
            if (u32_flags[f].geometry)
                geometry_flag = u32_flags[f].name;
            layers_given |= u32_flags[f].dst == &layers;
            steps_given |= u32_flags[f].dst == &steps;
            needles_given |= u32_flags[f].dst == &s->needles;
            span_given |= u32_flags[f].dst == &s->heavy_span;
        }
        for (size_t f = 0; f < sizeof f32_flags / sizeof *f32_flags; f++) {
            if (strcmp(flag, f32_flags[f].name) != 0)
                continue;
            if (parse_float(v, f32_flags[f].dst)) {
                fprintf(stderr, "freekv eval: %s: '%s' is not a number\n", flag, v);
                return -1;
            }
            if (f32_flags[f].dst != &o->tau)
                geometry_flag = f32_flags[f].name;
        }
        if (strcmp(flag, "--trace") == 0)
            o->trace_dir = v;
        else if (strcmp(flag, "--save-trace") == 0)
            o->save_trace = v;
        else if (strcmp(flag, "--csv") == 0)
            o->csv = v;
        else if (strcmp(flag, "--json") == 0)
            o->json = v;
        else if (strcmp(flag, "--backend") == 0)
            o->backend = v;
        else if (strcmp(flag, "--device") == 0)
            o->device = v;
        else if (strcmp(flag, "--policies") == 0) {
            if (parse_policies(v, o->want)) {
                if (v[0] == '\0' || strlen(v) >= 256)
                    fprintf(stderr, "freekv eval: --policies: bad list '%.40s'\n", v);
                return -1;
            }
        } else if (strcmp(flag, "--dtype") == 0) {
            if (strcmp(v, "f32") == 0)
                o->dtype = FKV_F32;
            else if (strcmp(v, "f16") == 0)
                o->dtype = FKV_F16;
            else if (strcmp(v, "bf16") == 0)
                o->dtype = FKV_BF16;
            else {
                fprintf(stderr, "freekv eval: --dtype: '%s' is not f32, f16 or bf16\n", v);
                return -1;
            }
        } else if (strcmp(flag, "--group-reduce") == 0) {
            if (strcmp(v, "softmax-mean") == 0)
                o->reduce = FKV_GROUP_SOFTMAX_MEAN;
            else if (strcmp(v, "mean") == 0)
                o->reduce = FKV_GROUP_MEAN;
            else if (strcmp(v, "max") == 0)
                o->reduce = FKV_GROUP_MAX;
            else {
                fprintf(stderr, "freekv eval: --group-reduce: '%s' is not softmax-mean, mean "
                                "or max\n", v);
                return -1;
            }
        }
    }
    s->seed = seed;
    if (o->trace_dir) {
        if (geometry_flag) {
            fprintf(stderr, "freekv eval: %s describes the synthetic trace; a --trace directory "
                            "fixes it\n", geometry_flag);
            return -1;
        }
        if (o->save_trace) {
            fprintf(stderr, "freekv eval: --save-trace writes the synthetic trace; it cannot be "
                            "used with --trace\n");
            return -1;
        }
        struct stat sb;
        if (stat(o->trace_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "freekv eval: --trace %s: not a directory\n", o->trace_dir);
            return -1;
        }
        if ((layers_given && layers == 0) || (steps_given && steps == 0)) {
            fprintf(stderr, "freekv eval: --%s must be at least 1\n",
                    layers_given && layers == 0 ? "layers" : "steps");
            return -1;
        }
        o->max_layers = layers;
        o->max_steps = steps;
    } else {
        if (layers_given)
            s->layers = layers;
        if (steps_given)
            s->decode_steps = steps;
        /* defaults that a short run cannot hold shrink with it; explicit values are checked */
        if (!needles_given && s->needles > s->decode_steps)
            s->needles = s->decode_steps;
        if (!span_given && s->heavy_span > s->prompt_tokens / 4)
            s->heavy_span = s->prompt_tokens / 4 ? s->prompt_tokens / 4 : 1;
        if (fkv_synth_validate(s) != FKV_OK) {
            /* the message is "invalid argument: --flag ...: why" */
            const char *m = fkv_last_error(), *c = strstr(m, ": ");
            fprintf(stderr, "freekv eval: %s\n", c ? c + 2 : m);
            return -1;
        }
    }
    return 0;
}

/* ---- host reference: exact attention mass per page ---------------------------------------- */

typedef struct reference {
    uint32_t steps, layers, hq, max_pages;
    float *mass; /* [steps][layers][hq][max_pages]: softmax mass of each page */
} reference;

static float *mass_at(const reference *r, uint32_t t, uint32_t l, uint32_t h) {
    return r->mass + (((size_t)t * r->layers + l) * r->hq + h) * r->max_pages;
}

static int build_reference(const fkv_trace *tr, uint32_t page, reference *r) {
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    const uint32_t P = in->prompt_tokens, S = in->decode_steps, d = in->head_dim;
    const uint32_t Hq = in->q_heads, Hk = in->kv_heads, G = Hq / Hk;
    r->steps = S;
    r->layers = in->layers;
    r->hq = Hq;
    r->max_pages = (P + S + page - 1) / page;
    uint64_t n64 = (uint64_t)S * in->layers * Hq * r->max_pages;
    if (n64 > ((uint64_t)1 << 32) || n64 > SIZE_MAX / sizeof(float)) {
        fprintf(stderr, "freekv eval: the reference attention masses would take %llu MiB; use "
                        "fewer --layers or --steps\n", (unsigned long long)(n64 * 4 >> 20));
        return -1;
    }
    size_t n = (size_t)n64;
    r->mass = calloc(n ? n : 1, sizeof(float));
    double *logit = malloc(sizeof(double) * (P + S));
    if (r->mass == NULL || logit == NULL) {
        free(logit);
        fprintf(stderr, "freekv eval: out of host memory for the reference (%zu MiB)\n",
                n * sizeof(float) >> 20);
        return -1;
    }
    const double scale = 1.0 / sqrt((double)d);
    for (uint32_t l = 0; l < in->layers; l++) {
        const float *K = fkv_trace_keys(tr, l), *Q = fkv_trace_queries(tr, l);
        for (uint32_t t = 0; t < S; t++) {
            uint32_t ntok = P + t + 1; /* the step's token is appended before attending */
            for (uint32_t h = 0; h < Hq; h++) {
                const float *q = Q + ((size_t)(t + 1) * Hq + h) * d;
                double mx = -INFINITY, sum = 0;
                for (uint32_t tok = 0; tok < ntok; tok++) {
                    const float *k = K + ((size_t)tok * Hk + h / G) * d;
                    double s = 0;
                    for (uint32_t c = 0; c < d; c++)
                        s += (double)q[c] * k[c];
                    logit[tok] = s * scale;
                    if (logit[tok] > mx)
                        mx = logit[tok];
                }
                for (uint32_t tok = 0; tok < ntok; tok++)
                    sum += logit[tok] = exp(logit[tok] - mx);
                float *m = mass_at(r, t, l, h);
                for (uint32_t tok = 0; tok < ntok; tok++)
                    m[tok / page] += (float)(logit[tok] / sum);
            }
        }
    }
    free(logit);
    return 0;
}

/* Pages a policy must keep (sink and window, as the library defines them) and the middle
 * candidates, for a sequence of n tokens. */
static void page_ranges(const fkv_config *c, uint32_t n, uint32_t *sink_end, uint32_t *wb,
                        uint32_t *cur) {
    uint32_t sp = c->sink_tokens / c->page_size, wp = c->window_tokens / c->page_size;
    *cur = n / c->page_size;
    uint32_t w = *cur + 1 >= wp ? *cur + 1 - wp : 0;
    *wb = w > sp ? w : sp;
    *sink_end = sp;
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* The oracle: per KV head, sink + window + the k middle pages with the most exact group
 * mass. Mean and min coverage over (step, layer, query head). */
static void oracle_coverage(const fkv_trace_info *in, const fkv_config *c, const reference *r,
                            double *mean, double *min) {
    const uint32_t G = in->q_heads / in->kv_heads, P = in->prompt_tokens;
    const uint32_t k = (c->budget_tokens - c->sink_tokens - c->window_tokens) / c->page_size;
    float *group = malloc(sizeof(float) * r->max_pages * 2);
    double sum = 0, lo = 1;
    uint64_t n = 0;
    if (group == NULL) {
        *mean = *min = NAN;
        return;
    }
    float *sorted = group + r->max_pages;
    for (uint32_t t = 0; t < r->steps; t++) {
        uint32_t sink_end, wb, cur;
        page_ranges(c, P + t + 1, &sink_end, &wb, &cur);
        for (uint32_t l = 0; l < r->layers; l++) {
            for (uint32_t kh = 0; kh < in->kv_heads; kh++) {
                uint32_t nc = wb > sink_end ? wb - sink_end : 0;
                for (uint32_t pg = 0; pg < nc; pg++) {
                    group[pg] = 0;
                    for (uint32_t j = 0; j < G; j++)
                        group[pg] += mass_at(r, t, l, kh * G + j)[sink_end + pg];
                }
                memcpy(sorted, group, sizeof(float) * nc);
                qsort(sorted, nc, sizeof(float), cmp_desc);
                float thresh = k == 0 ? INFINITY : k < nc ? sorted[k - 1] : -1.0f;
                for (uint32_t j = 0; j < G; j++) {
                    const float *m = mass_at(r, t, l, kh * G + j);
                    double cov = 0;
                    uint32_t taken = 0;
                    for (uint32_t pg = 0; pg <= cur; pg++) {
                        int keep = pg < sink_end || pg >= wb;
                        if (!keep && group[pg - sink_end] >= thresh && taken < k) {
                            keep = 1;
                            taken++;
                        }
                        if (keep)
                            cov += m[pg];
                    }
                    sum += cov;
                    lo = cov < lo ? cov : lo;
                    n++;
                }
            }
        }
    }
    free(group);
    *mean = n ? sum / (double)n : NAN;
    *min = n ? lo : NAN;
}

/* ---- running a policy --------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define TRY(call, what)                                                                      \
    do {                                                                                     \
        fkv_status st_ = (call);                                                             \
        if (st_ != FKV_OK) {                                                                 \
            snprintf(res->error, sizeof res->error, "%s: %s", what, fkv_last_error());       \
            goto done;                                                                       \
        }                                                                                    \
    } while (0)

/* Runs one policy over the whole trace. dense_out: [steps][layers][hq*d]; written when
 * `record` (the dense reference run), compared against otherwise. */
static void run_policy(fkv_device *dev, const fkv_config *base, const fkv_trace *tr,
                       const reference *ref, float *dense_out, int record, result *res) {
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    const uint32_t P = in->prompt_tokens, S = in->decode_steps, d = in->head_dim;
    const uint32_t Hq = in->q_heads, Hk = in->kv_heads, L = in->layers, G = Hq / Hk;
    const size_t q_row = (size_t)Hq * d, kv_row = (size_t)Hk * d;
    fkv_config cfg = *base;
    cfg.policy = res->policy;
    fkv_context *ctx = NULL;
    float *out = malloc(sizeof(float) * q_row);
    int32_t *pages = malloc(sizeof(int32_t) * ref->max_pages);
    size_t n_needles;
    const fkv_needle *needles = fkv_trace_needles(tr, &n_needles);
    double l2_sum = 0, cov_sum = 0;
    uint64_t l2_n = 0, cov_n = 0;
    res->l2_max = 0;
    res->cov_min = 1;
    res->needles = (uint32_t)n_needles;
    double t0 = now_s();
    if (out == NULL || pages == NULL) {
        snprintf(res->error, sizeof res->error, "out of host memory");
        goto done;
    }
    TRY(fkv_context_create(dev, &cfg, &ctx), "creating the context");
    const uint32_t seq = 0;
    for (uint32_t l = 0; l < L; l++) {
        fkv_tensor k = {fkv_trace_keys(tr, l), NULL, 0}, v = {fkv_trace_values(tr, l), NULL, 0};
        fkv_tensor q = {fkv_trace_queries(tr, l), NULL, 0};
        TRY(fkv_prefill(ctx, seq, l, P, &k, &v, &q), "prefill");
    }
    TRY(fkv_context_reset_stats(ctx), "resetting statistics");
    for (uint32_t t = 0; t < S; t++) {
        for (uint32_t l = 0; l < L; l++) {
            fkv_tensor q = {fkv_trace_queries(tr, l) + (size_t)(t + 1) * q_row, NULL, 0};
            fkv_tensor k = {fkv_trace_keys(tr, l) + (size_t)(P + t) * kv_row, NULL, 0};
            fkv_tensor v = {fkv_trace_values(tr, l) + (size_t)(P + t) * kv_row, NULL, 0};
            fkv_tensor o = {out, NULL, 0};
            TRY(fkv_decode_layer(ctx, l, 1, &seq, &q, &k, &v, &o), "decode");
            float *dref = dense_out + ((size_t)t * L + l) * q_row;
            if (record) {
                memcpy(dref, out, sizeof(float) * q_row);
            } else {
                double num = 0, den = 0;
                for (size_t i = 0; i < q_row; i++) {
                    double e = (double)out[i] - dref[i];
                    num += e * e;
                    den += (double)dref[i] * dref[i];
                }
                double rel = sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
                if (!(rel <= res->l2_max)) /* NaN lands here too, and stays */
                    res->l2_max = rel;
                l2_sum += rel;
                l2_n++;
            }
            for (uint32_t kh = 0; kh < Hk; kh++) {
                size_t np = 0;
                TRY(fkv_context_attended_pages(ctx, seq, l, kh, pages, ref->max_pages, &np),
                    "attended pages");
                if (np > ref->max_pages)
                    np = ref->max_pages;
                for (uint32_t j = 0; j < G; j++) {
                    const float *m = mass_at(ref, t, l, kh * G + j);
                    double cov = 0;
                    for (size_t i = 0; i < np; i++)
                        if (pages[i] >= 0 && (uint32_t)pages[i] < ref->max_pages)
                            cov += m[pages[i]];
                    cov_sum += cov;
                    cov_n++;
                    if (cov < res->cov_min)
                        res->cov_min = cov;
                }
                for (size_t i = 0; i < n_needles; i++) {
                    const fkv_needle *nd = &needles[i];
                    if (nd->step != t || nd->layer != l || nd->kv_head != kh)
                        continue;
                    int32_t want = (int32_t)(nd->token / cfg.page_size);
                    for (size_t e = 0; e < np; e++)
                        if (pages[e] == want) {
                            res->needle_hits++;
                            break;
                        }
                }
            }
        }
    }
    TRY(fkv_context_sync(ctx), "sync");
    fkv_stats s;
    TRY(fkv_context_get_stats(ctx, &s), "statistics");
    res->correction_rate = s.heads_checked ? (double)s.corrections / (double)s.heads_checked : 0;
    res->recalled_per_step = S ? (double)s.pages_recalled / S : 0;
    res->l2_mean = l2_n ? l2_sum / (double)l2_n : 0;
    res->cov_mean = cov_n ? cov_sum / (double)cov_n : 0;
    res->ok = 1;
done:
    res->seconds = now_s() - t0;
    fkv_context_destroy(ctx);
    free(out);
    free(pages);
}

/* ---- output ------------------------------------------------------------------------------- */

static void print_table(FILE *f, const result *res, int n, double oracle_mean, double oracle_min) {
    fprintf(f, "%-12s %11s %11s %10s %10s %9s %11s %12s %8s\n", "policy", "rel_l2_mean",
            "rel_l2_max", "mass_mean", "mass_min", "needles", "corrections", "recall/step",
            "time_s");
    for (int i = 0; i < n; i++) {
        const result *r = &res[i];
        if (!r->ok) {
            fprintf(f, "%-12s failed: %s\n", fkv_policy_name(r->policy), r->error);
            continue;
        }
        char needles[24];
        snprintf(needles, sizeof needles, "%u/%u", r->needle_hits, r->needles);
        fprintf(f, "%-12s %11.2e %11.2e %10.4f %10.4f %9s %10.1f%% %12.1f %8.2f\n",
                fkv_policy_name(r->policy), r->l2_mean, r->l2_max, r->cov_mean, r->cov_min,
                needles, 100.0 * r->correction_rate, r->recalled_per_step, r->seconds);
    }
    fprintf(f, "%-12s %11s %11s %10.4f %10.4f %9s %11s %12s %8s\n", "oracle", "-", "-",
            oracle_mean, oracle_min, "-", "-", "-", "-");
}

static int write_csv(const char *path, const result *res, int n, double oracle_mean,
                     double oracle_min) {
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "freekv eval: --csv %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "policy,ok,rel_l2_mean,rel_l2_max,mass_mean,mass_min,needle_hits,needles,"
               "correction_rate,recalled_pages_per_step,seconds\n");
    for (int i = 0; i < n; i++) {
        const result *r = &res[i];
        fprintf(f, "%s,%d,%.6g,%.6g,%.6f,%.6f,%u,%u,%.6f,%.3f,%.3f\n", fkv_policy_name(r->policy),
                r->ok, r->l2_mean, r->l2_max, r->cov_mean, r->cov_min, r->needle_hits,
                r->needles, r->correction_rate, r->recalled_per_step, r->seconds);
    }
    fprintf(f, "oracle,1,,,%.6f,%.6f,,,,,\n", oracle_mean, oracle_min);
    if (fclose(f) != 0) {
        fprintf(stderr, "freekv eval: --csv %s: write failed\n", path);
        return -1;
    }
    return 0;
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double x) {
    if (isfinite(x))
        fprintf(f, "%.6g", x);
    else
        fprintf(f, "null");
}

static int write_json(const char *path, const fkv_trace_info *in, const fkv_device_info *di,
                      const fkv_config *c, double cos_mean, double cos_below,
                      const result *res, int n, double oracle_mean, double oracle_min) {
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "freekv eval: --json %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "{\n  \"trace\": {\"source\": ");
    json_str(f, in->source);
    fprintf(f, ", \"layers\": %u, \"q_heads\": %u, \"kv_heads\": %u, \"head_dim\": %u, "
               "\"prompt_tokens\": %u, \"decode_steps\": %u, \"query_cosine_mean\": ",
            in->layers, in->q_heads, in->kv_heads, in->head_dim, in->prompt_tokens,
            in->decode_steps);
    json_num(f, cos_mean);
    fprintf(f, ", \"query_cosine_below_tau\": ");
    json_num(f, cos_below);
    fprintf(f, "},\n  \"device\": {\"backend\": ");
    json_str(f, di->backend);
    fprintf(f, ", \"name\": ");
    json_str(f, di->name);
    fprintf(f, "},\n  \"config\": {\"page_size\": %u, \"budget_tokens\": %u, \"sink_tokens\": %u, "
               "\"window_tokens\": %u, \"tau\": %g, \"dtype\": \"%s\"},\n  \"results\": [\n",
            c->page_size, c->budget_tokens, c->sink_tokens, c->window_tokens, (double)c->tau,
            fkv_dtype_name(c->dtype));
    for (int i = 0; i < n; i++) {
        const result *r = &res[i];
        fprintf(f, "    {\"policy\": \"%s\", \"ok\": %s", fkv_policy_name(r->policy),
                r->ok ? "true" : "false");
        if (r->ok) {
            const char *names[] = {"rel_l2_mean", "rel_l2_max", "mass_mean", "mass_min",
                                   "correction_rate", "recalled_pages_per_step", "seconds"};
            double vals[] = {r->l2_mean, r->l2_max, r->cov_mean, r->cov_min,
                             r->correction_rate, r->recalled_per_step, r->seconds};
            for (int j = 0; j < 7; j++) {
                fprintf(f, ", \"%s\": ", names[j]);
                json_num(f, vals[j]);
            }
            fprintf(f, ", \"needle_hits\": %u, \"needles\": %u", r->needle_hits, r->needles);
        } else {
            fprintf(f, ", \"error\": ");
            json_str(f, r->error);
        }
        fprintf(f, "},\n");
    }
    fprintf(f, "    {\"policy\": \"oracle\", \"ok\": true, \"mass_mean\": ");
    json_num(f, oracle_mean);
    fprintf(f, ", \"mass_min\": ");
    json_num(f, oracle_min);
    fprintf(f, "}\n  ]\n}\n");
    if (fclose(f) != 0) {
        fprintf(stderr, "freekv eval: --json %s: write failed\n", path);
        return -1;
    }
    return 0;
}

/* ---- main --------------------------------------------------------------------------------- */

int fkv_eval_main(int argc, char **argv) {
    options o;
    int pr = parse_args(argc, argv, &o);
    if (pr != 0)
        return pr > 0 ? 0 : 2;

    /* the configuration is checked before any work, so a bad budget is an argument error */
    fkv_config cfg;
    fkv_config_init(&cfg);
    cfg.page_size = o.page;
    cfg.budget_tokens = o.budget;
    cfg.sink_tokens = o.sink;
    cfg.window_tokens = o.window;
    cfg.tau = o.tau;
    cfg.dtype = o.dtype;
    cfg.group_reduce = o.reduce;
    cfg.max_seqs = 1;
    if (!o.trace_dir) {
        cfg.n_layers = o.synth.layers;
        cfg.n_q_heads = o.synth.q_heads;
        cfg.n_kv_heads = o.synth.kv_heads;
        cfg.head_dim = o.synth.head_dim;
        cfg.max_context = o.synth.prompt_tokens + o.synth.decode_steps;
        if (fkv_config_validate(&cfg) != FKV_OK) {
            fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
            return 2;
        }
    }

    fkv_trace *tr = NULL;
    fkv_status st = o.trace_dir ? fkv_trace_load_dir(o.trace_dir, o.max_layers, o.max_steps, &tr)
                                : fkv_trace_synthetic(&o.synth, &tr);
    if (st != FKV_OK) {
        fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
        return 1;
    }
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    cfg.n_layers = in->layers;
    cfg.n_q_heads = in->q_heads;
    cfg.n_kv_heads = in->kv_heads;
    cfg.head_dim = in->head_dim;
    cfg.max_context = in->prompt_tokens + in->decode_steps;
    int rc = 0;
    fkv_device *dev = NULL;
    reference ref = {0};
    float *dense_out = NULL;
    result res[N_POLICIES];
    int n_res = 0;
    if (fkv_config_validate(&cfg) != FKV_OK) {
        fprintf(stderr, "freekv eval: the trace does not fit these settings: %s\n",
                fkv_last_error());
        rc = 2;
        goto out;
    }
    if (o.save_trace && fkv_trace_save_dir(tr, o.save_trace, o.dtype) != FKV_OK) {
        fprintf(stderr, "freekv eval: --save-trace: %s\n", fkv_last_error());
        rc = 1;
        goto out;
    }
    if (fkv_device_open(o.backend, o.device, &dev) != FKV_OK) {
        fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
        rc = 1;
        goto out;
    }
    fkv_device_info di;
    fkv_device_get_info(dev, &di);
    double cos_mean, cos_below;
    fkv_trace_query_cosine(tr, o.tau, &cos_mean, &cos_below);
    printf("freekv eval: trace %s: %u layers, %u/%u heads, d %u, prompt %u, %u steps\n",
           in->source, in->layers, in->q_heads, in->kv_heads, in->head_dim, in->prompt_tokens,
           in->decode_steps);
    printf("device %s %u: %s; kv %s, page %u, budget %u (sink %u, window %u), tau %.2f\n",
           di.backend, di.index, di.name, fkv_dtype_name(cfg.dtype), cfg.page_size,
           cfg.budget_tokens, cfg.sink_tokens, cfg.window_tokens, (double)cfg.tau);
    printf("adjacent-step query cosine: mean %.3f, %.1f%% of (head, step) below tau\n", cos_mean,
           100.0 * cos_below);
    fflush(stdout);

    if (build_reference(tr, cfg.page_size, &ref) != 0) {
        rc = 1;
        goto out;
    }
    size_t n_out = (size_t)in->decode_steps * in->layers * in->q_heads * in->head_dim;
    dense_out = malloc(sizeof(float) * (n_out ? n_out : 1));
    if (dense_out == NULL) {
        fprintf(stderr, "freekv eval: out of host memory for the dense outputs\n");
        rc = 1;
        goto out;
    }
    result dense = {FKV_POLICY_DENSE, 0, "", 0, 0, 0, 0, 0, 0, 0, 0, 0};
    run_policy(dev, &cfg, tr, &ref, dense_out, 1, &dense);
    if (!dense.ok) {
        fprintf(stderr, "freekv eval: the dense reference run failed: %s\n", dense.error);
        rc = 1;
        goto out;
    }
    if (o.want[FKV_POLICY_DENSE])
        res[n_res++] = dense;
    for (int p = FKV_POLICY_QUEST; p < N_POLICIES; p++) {
        if (!o.want[p])
            continue;
        result *r = &res[n_res++];
        memset(r, 0, sizeof *r);
        r->policy = (fkv_policy)p;
        run_policy(dev, &cfg, tr, &ref, dense_out, 0, r);
        if (!r->ok)
            rc = 1;
    }
    double oracle_mean, oracle_min;
    oracle_coverage(in, &cfg, &ref, &oracle_mean, &oracle_min);
    printf("\n");
    print_table(stdout, res, n_res, oracle_mean, oracle_min);
    printf("\nrel_l2: ||out - dense|| / ||dense|| per (step, layer); mass: exact attention mass on "
           "the attended pages\nper (step, layer, query head); needles: planted keys whose page "
           "was attended at their step;\noracle: best page set of the same budget (host).\n");
    if (o.csv && write_csv(o.csv, res, n_res, oracle_mean, oracle_min) != 0)
        rc = 1;
    if (o.json && write_json(o.json, in, &di, &cfg, cos_mean, cos_below, res, n_res, oracle_mean,
                             oracle_min) != 0)
        rc = 1;
out:
    free(dense_out);
    free(ref.mass);
    fkv_device_close(dev);
    fkv_trace_free(tr);
    return rc;
}
