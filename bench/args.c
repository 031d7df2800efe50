/* freekv bench: the command line. Every value is checked before any work: numbers strictly
 * and in 64 bits, the derived library configuration with fkv_config_validate, the output
 * paths; a message names the flag at fault. */
#define _DEFAULT_SOURCE /* access(), X_OK */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "number.h"

/* Llama-3.1-8B: 218M parameters per layer (q,k,v,o + 3 MLP matrices) in bf16 = 436 MB. */
static const bench_preset presets[] = {
    {.name = "small", .layers = 8, .q_heads = 8, .kv_heads = 2, .head_dim = 64,
     .weight_mib = 8.0, .page = 16, .budget = 512, .sink = 64, .window = 128, .context = 16384,
     .dtype = FKV_F16},
    {.name = "llama-3.1-8b", .layers = 32, .q_heads = 32, .kv_heads = 8, .head_dim = 128,
     .weight_mib = 416.0, .page = 32, .budget = 2048, .sink = 512, .window = 512,
     .context = 32768, .dtype = FKV_BF16},
    {.name = "qwen-2.5-7b", .layers = 28, .q_heads = 28, .kv_heads = 4, .head_dim = 128,
     .weight_mib = 444.0, .page = 32, .budget = 2048, .sink = 512, .window = 512,
     .context = 32768, .dtype = FKV_BF16},
};
enum { N_PRESETS = sizeof presets / sizeof *presets };

static const char *const policy_names[BENCH_MAX_POLICIES] = {
    "dense", "quest", "sync", "speculative", "freekv", "freekv-perpage"};

static void usage(FILE *f) {
    fprintf(f,
            "usage: freekv bench [options]\n"
            "Prepares every policy's context (one prefill each), then steps them round-robin in\n"
            "blocks, so background load hits all alike; reports per policy the median step\n"
            "latency, the ratio to freekv (median of per-round ratios, bootstrap 95%% interval),\n"
            "where the caller waited, recall traffic, corrections and memory.\n"
            "  --preset NAME       small (default on CPU devices), llama-3.1-8b (default on GPUs),\n"
            "                      qwen-2.5-7b\n"
            "  --layers N --q-heads N --kv-heads N --head-dim N   geometry (override the preset)\n"
            "  --weights-mib X     device bytes per layer outside attention (memory-bound pass)\n"
            "  --page N --budget N --sink N --window N            tokens\n"
            "  --dtype f32|f16|bf16  --tau X (freekv correction threshold, default 0.9)\n"
            "  --host-format same|q8|q4  how the offload policies' host pool stores pages (default\n"
            "                      same: the dtype; q8/q4: quantized, docs/pipeline.md)\n"
            "  --summary-format f32|f16  page summaries the selection scores (default f32; f16\n"
            "                      halves their bytes, min/max rounded outwards)\n"
            "  --context N[,N...]  context length(s) before decoding\n"
            "  --workload LIST     comma list of long-input, reasoning, custom (default:\n"
            "                      long-input,reasoning): how fast queries drift\n"
            "  --drift X --drift-spread X --drift-share X   the custom workload's drift model\n"
            "                      (median 1 - adjacent cosine over KV heads, its log-normal\n"
            "                      sigma, the moving share of a query; docs/bench.md)\n"
            "  --rounds N          rounds of the round-robin (default 16)\n"
            "  --warmup N --steps N  per block: steps dropped (default 1), then measured (3)\n"
            "  --repeat N          run the rounds N times (same prepared contexts), report the\n"
            "                      spread\n"
            "  --batch N           sequences decoded together (default 1)\n"
            "  --policies LIST     comma list of dense,quest,sync,speculative,freekv,freekv-perpage\n"
            "                      (default: all; dense only where the whole KV fits)\n"
            "  --counters          print the device command counters per layer-step (launches,\n"
            "                      copies, submits, host waits, allocations, bytes) and per\n"
            "                      prefill; --json always has the steps'\n"
            "  --csv FILE --json FILE   write the results\n"
            "  --plot FILE.png     latency against context length (needs gnuplot)\n"
            "  --backend NAME --device SEL   override FREEKV_BACKEND / FREEKV_DEVICE\n"
            "  --seed N\n");
}

static int bad(const char *flag, const char *value, const char *what) {
    fprintf(stderr, "freekv bench: %s '%s': %s\n", flag, value, what);
    return -1;
}

/* A comma list: each item passed to `item`; empty lists and empty items are refused. */
static int each_item(const char *flag, const char *list, int (*item)(void *, const char *),
                     void *arg) {
    if (*list == '\0')
        return bad(flag, list, "empty list");
    for (const char *p = list;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char buf[64];
        if (len == 0 || len >= sizeof buf)
            return bad(flag, list, len ? "item too long" : "empty item");
        memcpy(buf, p, len);
        buf[len] = '\0';
        if (item(arg, buf))
            return -1;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

static int context_item(void *arg, const char *s) {
    bench_options *o = arg;
    uint64_t v;
    if (o->n_contexts == BENCH_MAX_CONTEXTS)
        return bad("--context", s, "at most 16 context lengths");
    if (bench_parse_u64(s, 1, UINT32_MAX, &v))
        return bad("--context", s, "not an integer in [1, 4294967295]");
    o->contexts[o->n_contexts++] = (uint32_t)v;
    return 0;
}

static int policy_item(void *arg, const char *s) {
    bench_options *o = arg;
    int known = 0;
    for (int i = 0; i < BENCH_MAX_POLICIES; i++)
        known |= strcmp(s, policy_names[i]) == 0;
    if (!known)
        return bad("--policies", s, "unknown (dense, quest, sync, speculative, freekv, "
                                    "freekv-perpage)");
    for (uint32_t i = 0; i < o->n_policies; i++)
        if (strcmp(o->policies[i], s) == 0)
            return bad("--policies", s, "listed twice");
    snprintf(o->policies[o->n_policies++], sizeof o->policies[0], "%s", s);
    return 0;
}

static int workload_item(void *arg, const char *s) {
    bench_options *o = arg;
    bench_drift d;
    if (bench_drift_named(s, &d))
        return bad("--workload", s, "unknown (long-input, reasoning, custom)");
    for (uint32_t i = 0; i < o->n_workloads; i++)
        if (strcmp(o->workloads[i].name, s) == 0)
            return bad("--workload", s, "listed twice");
    o->workloads[o->n_workloads++] = d;
    return 0;
}

/* a * b, saturating at UINT64_MAX */
static uint64_t mul_sat(uint64_t a, uint64_t b) {
    return a && b > UINT64_MAX / a ? UINT64_MAX : a * b;
}

uint64_t bench_steps_per_context(const bench_options *o) {
    uint64_t block = (uint64_t)o->warmup + o->steps;
    return mul_sat(mul_sat(mul_sat(block, o->rounds), o->n_workloads), o->repeat);
}

void bench_config(const bench_options *o, uint32_t context, fkv_policy policy, fkv_config *c) {
    fkv_config_init(c);
    c->n_layers = o->p.layers;
    c->n_q_heads = o->p.q_heads;
    c->n_kv_heads = o->p.kv_heads;
    c->head_dim = o->p.head_dim;
    c->page_size = o->p.page;
    c->budget_tokens = o->p.budget;
    c->sink_tokens = o->p.sink;
    c->window_tokens = o->p.window;
    c->dtype = o->p.dtype;
    c->host_format = o->host_format;
    c->summary_format = o->summary_format;
    c->tau = o->tau;
    c->policy = policy;
    c->max_seqs = o->batch;
    uint64_t steps = bench_steps_per_context(o);
    c->max_context = steps > UINT32_MAX - context ? UINT32_MAX : context + (uint32_t)steps;
}

/* The flags behind the fields a fkv_config_validate message names. */
static void name_config_flags(const bench_options *o, uint32_t context, const char *msg) {
    const struct {
        const char *field, *flag;
        uint64_t value;
    } map[] = {
        {"n_layers", "--layers", o->p.layers},      {"n_q_heads", "--q-heads", o->p.q_heads},
        {"n_kv_heads", "--kv-heads", o->p.kv_heads}, {"head_dim", "--head-dim", o->p.head_dim},
        {"page_size", "--page", o->p.page},          {"sink_tokens", "--sink", o->p.sink},
        {"window_tokens", "--window", o->p.window},  {"budget_tokens", "--budget", o->p.budget},
        {"max_seqs", "--batch", o->batch},           {"max_context", "--context", context},
    };
    char flags[512] = "";
    size_t len = 0;
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (strstr(msg, map[i].field))
            len += (size_t)snprintf(flags + len, len < sizeof flags ? sizeof flags - len : 0,
                                    "%s%s %llu", len ? ", " : "", map[i].flag,
                                    (unsigned long long)map[i].value);
    if (strstr(msg, "tau"))
        len += (size_t)snprintf(flags + len, len < sizeof flags ? sizeof flags - len : 0,
                                "%s--tau %g", len ? ", " : "", (double)o->tau);
    fprintf(stderr, "freekv bench: %s: %s\n", len ? flags : "bad geometry", msg);
    if (strstr(msg, "max_context"))
        fprintf(stderr, "freekv bench: (a context holds its prompt plus %llu decode steps: "
                        "--workload x --repeat x --rounds x (--warmup + --steps))\n",
                (unsigned long long)bench_steps_per_context(o));
}

/* The directory of `path` must be writable (and the file, if it exists), before any work. */
static int check_output(const char *flag, const char *path) {
    if (*path == '\0')
        return bad(flag, path, "empty path");
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (access(dir, W_OK) != 0)
        return bad(flag, path, strerror(errno));
    if (access(path, F_OK) == 0 && access(path, W_OK) != 0)
        return bad(flag, path, strerror(errno));
    return 0;
}

int bench_in_path(const char *program) {
    const char *path = getenv("PATH");
    if (!path)
        return 0;
    for (const char *p = path;;) {
        const char *colon = strchr(p, ':');
        size_t len = colon ? (size_t)(colon - p) : strlen(p);
        char full[4096];
        if (len && (size_t)snprintf(full, sizeof full, "%.*s/%s", (int)len, p, program) <
                       sizeof full &&
            access(full, X_OK) == 0)
            return 1;
        if (!colon)
            return 0;
        p = colon + 1;
    }
}

enum { U32_FLAGS = 13 };

int bench_parse_args(int argc, char **argv, int default_preset, bench_options *o,
                     int *explicit_preset) {
    memset(o, 0, sizeof *o);
    o->p = presets[default_preset];
    *explicit_preset = 0;
    /* the preset first, whatever the order: the other flags override it */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 1;
        }
        if (strcmp(argv[i], "--preset") == 0 && i + 1 < argc) {
            int found = 0;
            for (int p = 0; p < N_PRESETS; p++)
                if (strcmp(argv[i + 1], presets[p].name) == 0) {
                    o->p = presets[p];
                    found = 1;
                }
            if (!found)
                return bad("--preset", argv[i + 1], "unknown (small, llama-3.1-8b, qwen-2.5-7b)");
            *explicit_preset = 1;
        }
    }
    o->warmup = 1;
    o->steps = 3;
    o->rounds = 16;
    o->repeat = 1;
    o->batch = 1;
    o->tau = 0.9f;
    o->seed = 1;
    double drift = -1, spread = -1, share = -1;
    const struct {
        const char *flag;
        uint32_t *field;
        uint32_t min;
    } u32[U32_FLAGS] = {
        {"--layers", &o->p.layers, 0},   {"--q-heads", &o->p.q_heads, 0},
        {"--kv-heads", &o->p.kv_heads, 0}, {"--head-dim", &o->p.head_dim, 0},
        {"--page", &o->p.page, 0},       {"--budget", &o->p.budget, 0},
        {"--sink", &o->p.sink, 0},       {"--window", &o->p.window, 0},
        {"--steps", &o->steps, 1},       {"--warmup", &o->warmup, 0},
        {"--rounds", &o->rounds, 1},     {"--repeat", &o->repeat, 1},
        {"--batch", &o->batch, 1},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--counters") == 0) { /* the one flag without a value */
            o->counters = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "freekv bench: %s needs a value (or is unknown)\n", a);
            return -1;
        }
        const char *v = argv[++i];
        int matched = 0;
        for (int f = 0; f < U32_FLAGS && !matched; f++)
            if (strcmp(a, u32[f].flag) == 0) {
                uint64_t x;
                if (bench_parse_u64(v, u32[f].min, UINT32_MAX, &x)) {
                    fprintf(stderr, "freekv bench: %s '%s': not an integer in [%u, 4294967295]\n",
                            a, v, u32[f].min);
                    return -1;
                }
                *u32[f].field = (uint32_t)x;
                matched = 1;
            }
        if (matched || strcmp(a, "--preset") == 0)
            continue;
        double x;
        if (strcmp(a, "--context") == 0) {
            o->n_contexts = 0;
            if (each_item(a, v, context_item, o))
                return -1;
        } else if (strcmp(a, "--policies") == 0) {
            o->n_policies = 0;
            if (each_item(a, v, policy_item, o))
                return -1;
        } else if (strcmp(a, "--workload") == 0) {
            o->n_workloads = 0;
            if (each_item(a, v, workload_item, o))
                return -1;
        } else if (strcmp(a, "--dtype") == 0) {
            if (strcmp(v, "f32") == 0)
                o->p.dtype = FKV_F32;
            else if (strcmp(v, "f16") == 0)
                o->p.dtype = FKV_F16;
            else if (strcmp(v, "bf16") == 0)
                o->p.dtype = FKV_BF16;
            else
                return bad(a, v, "must be f32, f16 or bf16");
        } else if (strcmp(a, "--host-format") == 0) {
            if (fkv_host_format_parse(v, &o->host_format) != FKV_OK)
                return bad(a, v, "must be same, q8 or q4");
        } else if (strcmp(a, "--summary-format") == 0) {
            if (fkv_summary_format_parse(v, &o->summary_format) != FKV_OK)
                return bad(a, v, "must be f32 or f16");
        } else if (strcmp(a, "--tau") == 0) {
            if (bench_parse_double(v, -1, 1, &x))
                return bad(a, v, "not a number in [-1, 1]");
            o->tau = (float)x;
        } else if (strcmp(a, "--weights-mib") == 0) {
            if (bench_parse_double(v, 0, 65536, &x))
                return bad(a, v, "not a number in [0, 65536]");
            o->p.weight_mib = x;
        } else if (strcmp(a, "--drift") == 0) {
            if (bench_parse_double(v, 0, 1, &drift))
                return bad(a, v, "not a number in [0, 1]");
        } else if (strcmp(a, "--drift-spread") == 0) {
            if (bench_parse_double(v, 0, 4, &spread))
                return bad(a, v, "not a number in [0, 4]");
        } else if (strcmp(a, "--drift-share") == 0) {
            if (bench_parse_double(v, 0, 1, &share))
                return bad(a, v, "not a number in [0, 1]");
        } else if (strcmp(a, "--seed") == 0) {
            if (bench_parse_u64(v, 0, UINT64_MAX, &o->seed))
                return bad(a, v, "not an integer in [0, 2^64)");
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
        } else {
            fprintf(stderr, "freekv bench: unknown option '%s'\n", a);
            return -1;
        }
    }
    if (o->n_contexts == 0) {
        o->contexts[0] = o->p.context;
        o->n_contexts = 1;
    }
    if (o->n_policies == 0)
        for (int i = 0; i < BENCH_MAX_POLICIES; i++)
            policy_item(o, policy_names[i]);
    if (o->n_workloads == 0) {
        workload_item(o, "long-input");
        workload_item(o, "reasoning");
    }
    bench_drift *custom = NULL;
    for (uint32_t i = 0; i < o->n_workloads; i++)
        if (strcmp(o->workloads[i].name, "custom") == 0)
            custom = &o->workloads[i];
    const char *drift_flag = drift >= 0 ? "--drift" : spread >= 0 ? "--drift-spread"
                             : share >= 0            ? "--drift-share"
                                                     : NULL;
    if (drift_flag && !custom) {
        fprintf(stderr, "freekv bench: %s applies to --workload custom only\n", drift_flag);
        return -1;
    }
    if (custom) {
        custom->drift = drift >= 0 ? drift : custom->drift;
        custom->spread = spread >= 0 ? spread : custom->spread;
        custom->share = share >= 0 ? share : custom->share;
    }

    /* in 64 bits: the decode steps every context must hold after its prompt */
    uint64_t steps = bench_steps_per_context(o);
    for (uint32_t i = 0; i < o->n_contexts; i++) {
        if (steps > UINT32_MAX - o->contexts[i]) {
            fprintf(stderr,
                    "freekv bench: --warmup %u, --steps %u, --rounds %u, --repeat %u: %llu "
                    "decode steps per context (%u workloads x rounds x (warm-up + measured)), "
                    "which with --context %u exceeds any context length\n",
                    o->warmup, o->steps, o->rounds, o->repeat, (unsigned long long)steps,
                    o->n_workloads, o->contexts[i]);
            return -1;
        }
        fkv_config c;
        bench_config(o, o->contexts[i], FKV_POLICY_FREEKV, &c);
        if (fkv_config_validate(&c) != FKV_OK) {
            name_config_flags(o, o->contexts[i], fkv_last_error());
            return -1;
        }
    }
    if ((o->csv && check_output("--csv", o->csv)) || (o->json && check_output("--json", o->json)) ||
        (o->plot && check_output("--plot", o->plot)))
        return -1;
    if (o->plot && !bench_in_path("gnuplot")) {
        fprintf(stderr, "freekv bench: --plot needs gnuplot, which is not in PATH "
                        "(apt-get install gnuplot-nox)\n");
        return -1;
    }
    return 0;
}
