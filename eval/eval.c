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
#include <unistd.h>

#include "freekv.h"
#include "mass.h"
#include "tools/args.h"
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
    int ran;            /* the run completed */
    int ok;             /* ... and every output and measure is finite */
    uint64_t nonfinite; /* attention output values that are NaN or Inf */
    char error[256];
    double l2_mean, l2_max;
    double cov_mean, cov_min;
    uint32_t needle_hits, needles;
    double correction_rate, recalled_per_step, seconds;
    /* FNV-1a 64 of every attention output's bytes and of every attended page list, in decode
     * order: equal digests mean bit-identical outputs and identical selections */
    uint64_t output_digest, pages_digest;
} result;

#define DIGEST_SEED 0xcbf29ce484222325ull

static uint64_t digest(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void usage(FILE *f) {
    fprintf(f,
        "usage: freekv eval [options]\n"
        "Runs each policy on the same trace and compares it with dense attention: relative L2\n"
        "error of the attention outputs, fraction of the exact attention mass the attended pages\n"
        "cover, and needle retrieval. Exit status: 0 ok; 1 a run or file error, or a result\n"
        "that is not finite (NaN or Inf); 2 bad arguments or settings (checked before any work).\n"
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

/* --backend names a backend compiled into this build (or auto): anything else is a bad
 * argument, refused here rather than by the device registry. */
static int check_backend(const char *name) {
    if (name == NULL || strcmp(name, "auto") == 0)
        return 0;
    char list[160] = "auto";
    for (size_t i = 0; i < fkv_backend_count(); i++) {
        if (strcmp(name, fkv_backend_name(i)) == 0)
            return 0;
        size_t len = strlen(list);
        snprintf(list + len, sizeof list - len, ", %s", fkv_backend_name(i));
    }
    fprintf(stderr, "freekv eval: --backend: '%s' is not a backend of this build (%s)\n", name,
            list);
    return -1;
}

/* An output file can be written: it is a writable file, or its directory exists and is
 * writable. Checked (not created) before any work, so a bad path does not waste a run. */
static int check_output_file(const char *flag, const char *path) {
    struct stat sb;
    if (path[0] == '\0') {
        fprintf(stderr, "freekv eval: %s: empty path\n", flag);
        return -1;
    }
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode) || access(path, W_OK) != 0) {
            fprintf(stderr, "freekv eval: %s %s: %s\n", flag, path,
                    S_ISDIR(sb.st_mode) ? "is a directory" : strerror(errno));
            return -1;
        }
        return 0;
    }
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "freekv eval: %s %s: directory %s %s\n", flag, path, dir,
                stat(dir, &sb) != 0 ? "does not exist" : "is not a writable directory");
        return -1;
    }
    return 0;
}

static int check_output_dir(const char *flag, const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "freekv eval: %s %s: not an existing writable directory\n", flag, dir);
        return -1;
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
            if (fkv_arg_u32("freekv eval", flag, v, 0, UINT32_MAX, u32_flags[f].dst))
                return -1;
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
            double x;
            if (fkv_arg_double("freekv eval", flag, v, -1e30, 1e30, &x))
                return -1;
            *f32_flags[f].dst = (float)x;
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
    if (check_backend(o->backend) != 0 || (o->csv && check_output_file("--csv", o->csv)) ||
        (o->json && check_output_file("--json", o->json)) ||
        (o->save_trace && check_output_dir("--save-trace", o->save_trace)))
        return -1;
    return 0;
}

/* ---- running a policy --------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* `what` prefixes the library's message; NULL where the library already names the step. */
#define TRY(call, what)                                                                      \
    do {                                                                                     \
        fkv_status st_ = (call);                                                             \
        if (st_ != FKV_OK) {                                                                 \
            snprintf(res->error, sizeof res->error, "%s%s%s", what ? what : "",              \
                     what ? ": " : "", fkv_last_error());                                    \
            goto done;                                                                       \
        }                                                                                    \
    } while (0)

/* The worst of a series so far and a new value: NaN once any value is NaN (a NaN never
 * compares greater, so a plain max drops it and shows a finite worst next to a NaN mean). */
static double worst_max(double worst, double x) {
    return isnan(worst) || isnan(x) ? NAN : x > worst ? x : worst;
}

static double worst_min(double worst, double x) {
    return isnan(worst) || isnan(x) ? NAN : x < worst ? x : worst;
}

/* Runs one policy over the whole trace. dense_out: [steps][layers][hq*d]; written when
 * `record` (the dense reference run), compared against otherwise. */
static void run_policy(fkv_device *dev, const fkv_config *base, const fkv_trace *tr,
                       const fkv_eval_mass *ref, float *dense_out, int record, result *res) {
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
    res->output_digest = res->pages_digest = DIGEST_SEED;
    double t0 = now_s();
    if (out == NULL || pages == NULL) {
        snprintf(res->error, sizeof res->error, "out of host memory");
        goto done;
    }
    TRY(fkv_context_create(dev, &cfg, &ctx), NULL);
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
            for (size_t i = 0; i < q_row; i++)
                res->nonfinite += !isfinite(out[i]);
            res->output_digest = digest(res->output_digest, out, sizeof(float) * q_row);
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
                res->l2_max = worst_max(res->l2_max, rel);
                l2_sum += rel; /* a NaN makes the mean NaN too */
                l2_n++;
            }
            for (uint32_t kh = 0; kh < Hk; kh++) {
                size_t np = 0;
                TRY(fkv_context_attended_pages(ctx, seq, l, kh, pages, ref->max_pages, &np),
                    "attended pages");
                if (np > ref->max_pages)
                    np = ref->max_pages;
                res->pages_digest = digest(res->pages_digest, &np, sizeof np);
                res->pages_digest = digest(res->pages_digest, pages, sizeof(int32_t) * np);
                for (uint32_t j = 0; j < G; j++) {
                    const float *m = fkv_eval_mass_at(ref, t, l, kh * G + j);
                    double cov = 0;
                    for (size_t i = 0; i < np; i++)
                        if (pages[i] >= 0 && (uint32_t)pages[i] < ref->max_pages)
                            cov += m[pages[i]];
                    cov_sum += cov;
                    cov_n++;
                    res->cov_min = worst_min(res->cov_min, cov);
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
    res->ran = 1;
    /* a run whose outputs or measures are not finite did not succeed */
    double measures[] = {res->l2_mean, res->l2_max, res->cov_mean, res->cov_min};
    int finite = 1;
    for (int i = 0; i < 4; i++)
        finite &= isfinite(measures[i]) != 0;
    if (res->nonfinite)
        snprintf(res->error, sizeof res->error,
                 "%llu of %llu attention output values are not finite (NaN or Inf)",
                 (unsigned long long)res->nonfinite, (unsigned long long)S * L * q_row);
    else if (!finite)
        snprintf(res->error, sizeof res->error,
                 "a measure is not finite (the dense reference's outputs are not)");
    res->ok = res->nonfinite == 0 && finite;
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
        if (!r->ran) {
            fprintf(f, "%-12s failed: %s\n", fkv_policy_name(r->policy), r->error);
            continue;
        }
        char needles[24];
        snprintf(needles, sizeof needles, "%u/%u", r->needle_hits, r->needles);
        fprintf(f, "%-12s %11.2e %11.2e %10.4f %10.4f %9s %10.1f%% %12.1f %8.2f%s%s\n",
                fkv_policy_name(r->policy), r->l2_mean, r->l2_max, r->cov_mean, r->cov_min,
                needles, 100.0 * r->correction_rate, r->recalled_per_step, r->seconds,
                r->ok ? "" : "  FAILED: ", r->ok ? "" : r->error);
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
               "correction_rate,recalled_pages_per_step,seconds,nonfinite_outputs\n");
    for (int i = 0; i < n; i++) {
        const result *r = &res[i];
        fprintf(f, "%s,%d,%.6g,%.6g,%.6f,%.6f,%u,%u,%.6f,%.3f,%.3f,%llu\n",
                fkv_policy_name(r->policy), r->ok, r->l2_mean, r->l2_max, r->cov_mean,
                r->cov_min, r->needle_hits, r->needles, r->correction_rate, r->recalled_per_step,
                r->seconds, (unsigned long long)r->nonfinite);
    }
    fprintf(f, "oracle,1,,,%.6f,%.6f,,,,,,\n", oracle_mean, oracle_min);
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
        if (r->ran) {
            const char *names[] = {"rel_l2_mean", "rel_l2_max", "mass_mean", "mass_min",
                                   "correction_rate", "recalled_pages_per_step", "seconds"};
            double vals[] = {r->l2_mean, r->l2_max, r->cov_mean, r->cov_min,
                             r->correction_rate, r->recalled_per_step, r->seconds};
            for (int j = 0; j < 7; j++) {
                fprintf(f, ", \"%s\": ", names[j]);
                json_num(f, vals[j]);
            }
            fprintf(f, ", \"needle_hits\": %u, \"needles\": %u, \"nonfinite_outputs\": %llu",
                    r->needle_hits, r->needles, (unsigned long long)r->nonfinite);
            fprintf(f, ", \"output_digest\": \"%016llx\", \"pages_digest\": \"%016llx\"",
                    (unsigned long long)r->output_digest, (unsigned long long)r->pages_digest);
        }
        if (!r->ok) {
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

#define EXIT_RUN 1   /* a run, device or file error */
#define EXIT_USAGE 2 /* bad arguments, or settings that cannot suit the trace */

/* A failed setting is the caller's to fix (status 2); anything else is a run error. */
static int exit_for(fkv_status st) {
    return st == FKV_ERR_INVALID_ARGUMENT || st == FKV_ERR_INVALID_CONFIG ||
                   st == FKV_ERR_BAD_ENVIRONMENT || st == FKV_ERR_UNSUPPORTED
               ? EXIT_USAGE
               : EXIT_RUN;
}

/* Everything checked before any work: the settings against the trace's geometry (from its
 * header alone), the device, and each chosen policy's context (created and destroyed at
 * once, so a setting the library refuses stops the run before the dense reference). */
static int preflight(const options *o, const fkv_trace_info *in, fkv_config *cfg,
                     fkv_device **dev) {
    cfg->n_layers = in->layers;
    cfg->n_q_heads = in->q_heads;
    cfg->n_kv_heads = in->kv_heads;
    cfg->head_dim = in->head_dim;
    uint64_t tokens = (uint64_t)in->prompt_tokens + in->decode_steps;
    cfg->max_context = tokens > UINT32_MAX ? UINT32_MAX : (uint32_t)tokens;
    /* the budget against the trace first: its message names the flag and the trace */
    if (cfg->budget_tokens > tokens) {
        fprintf(stderr, "freekv eval: --budget %u is more than the %llu tokens of the trace "
                        "(prompt %u + %u steps): every page would stay resident\n",
                cfg->budget_tokens, (unsigned long long)tokens, in->prompt_tokens,
                in->decode_steps);
        return EXIT_USAGE;
    }
    const char *what = o->trace_dir ? "the trace does not fit these settings: " : "";
    if (fkv_config_validate(cfg) != FKV_OK) {
        fprintf(stderr, "freekv eval: %s%s\n", what, fkv_last_error());
        return EXIT_USAGE;
    }
    size_t floats;
    if (fkv_eval_mass_size(in, cfg->page_size, &floats) != FKV_OK) {
        fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
        return EXIT_USAGE;
    }
    fkv_status st = fkv_device_open(o->backend, o->device, dev);
    if (st != FKV_OK) {
        fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
        return exit_for(st);
    }
    for (int p = 0; p < N_POLICIES; p++) {
        if (!o->want[p] && p != FKV_POLICY_DENSE)
            continue;
        fkv_config c = *cfg;
        c.policy = (fkv_policy)p;
        fkv_context *ctx = NULL;
        st = fkv_context_create(*dev, &c, &ctx);
        fkv_context_destroy(ctx);
        if (st != FKV_OK) {
            fprintf(stderr, "freekv eval: %s: %s\n", fkv_policy_name(c.policy), fkv_last_error());
            return exit_for(st);
        }
    }
    return 0;
}

int fkv_eval_main(int argc, char **argv) {
    options o;
    int pr = parse_args(argc, argv, &o);
    if (pr != 0)
        return pr > 0 ? 0 : EXIT_USAGE;

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

    fkv_trace_info geom;
    if (o.trace_dir) {
        if (fkv_trace_dir_info(o.trace_dir, o.max_layers, o.max_steps, &geom) != FKV_OK) {
            fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
            return EXIT_RUN;
        }
    } else {
        const fkv_synth_params *s = &o.synth;
        geom = (fkv_trace_info){s->layers, s->q_heads, s->kv_heads, s->head_dim,
                                s->prompt_tokens, s->decode_steps, ""};
    }
    fkv_device *dev = NULL;
    int rc = preflight(&o, &geom, &cfg, &dev);
    if (rc != 0) {
        fkv_device_close(dev);
        return rc;
    }

    fkv_trace *tr = NULL;
    fkv_eval_mass ref = {0};
    float *dense_out = NULL;
    result res[N_POLICIES];
    int n_res = 0;
    fkv_status st = o.trace_dir ? fkv_trace_load_dir(o.trace_dir, o.max_layers, o.max_steps,
                                                     cfg.dtype, &tr)
                                : fkv_trace_synthetic(&o.synth, &tr);
    if (st != FKV_OK) {
        fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
        rc = EXIT_RUN;
        goto out;
    }
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    if (o.save_trace && fkv_trace_save_dir(tr, o.save_trace, o.dtype) != FKV_OK) {
        fprintf(stderr, "freekv eval: --save-trace: %s\n", fkv_last_error());
        rc = EXIT_RUN;
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

    if (fkv_eval_mass_build(tr, cfg.page_size, &ref) != FKV_OK) {
        fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
        rc = EXIT_RUN;
        goto out;
    }
    size_t n_out = (size_t)in->decode_steps * in->layers * in->q_heads * in->head_dim;
    dense_out = malloc(sizeof(float) * (n_out ? n_out : 1));
    if (dense_out == NULL) {
        fprintf(stderr, "freekv eval: out of host memory for the dense outputs\n");
        rc = EXIT_RUN;
        goto out;
    }
    result dense = {.policy = FKV_POLICY_DENSE};
    run_policy(dev, &cfg, tr, &ref, dense_out, 1, &dense);
    if (!dense.ran) {
        fprintf(stderr, "freekv eval: the dense reference run failed: %s\n", dense.error);
        rc = EXIT_RUN;
        goto out;
    }
    if (o.want[FKV_POLICY_DENSE] || !dense.ok)
        res[n_res++] = dense;
    for (int p = FKV_POLICY_QUEST; p < N_POLICIES; p++) {
        if (!o.want[p])
            continue;
        result *r = &res[n_res++];
        *r = (result){.policy = (fkv_policy)p};
        run_policy(dev, &cfg, tr, &ref, dense_out, 0, r);
    }
    double oracle_mean, oracle_min;
    fkv_eval_oracle(in, &cfg, &ref, &oracle_mean, &oracle_min);
    printf("\n");
    print_table(stdout, res, n_res, oracle_mean, oracle_min);
    printf("\nrel_l2: ||out - dense|| / ||dense|| per (step, layer); mass: exact attention mass on "
           "the attended pages\nper (step, layer, query head); needles: planted keys whose page "
           "was attended at their step;\noracle: best page set of the same budget (host).\n");
    for (int i = 0; i < n_res; i++)
        if (!res[i].ok) {
            fprintf(stderr, "freekv eval: %s: %s\n", fkv_policy_name(res[i].policy),
                    res[i].error);
            rc = EXIT_RUN;
        }
    if (!isfinite(oracle_mean) || !isfinite(oracle_min)) {
        fprintf(stderr, "freekv eval: the oracle's coverage is not finite\n");
        rc = EXIT_RUN;
    }
    if (o.csv && write_csv(o.csv, res, n_res, oracle_mean, oracle_min) != 0)
        rc = EXIT_RUN;
    if (o.json && write_json(o.json, in, &di, &cfg, cos_mean, cos_below, res, n_res, oracle_mean,
                             oracle_min) != 0)
        rc = EXIT_RUN;
out:
    free(dense_out);
    fkv_eval_mass_free(&ref);
    fkv_device_close(dev);
    fkv_trace_free(tr);
    return rc;
}
