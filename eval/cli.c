/* `freekv eval`'s command line (cli.h). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/args.h"

#define TOOL "freekv eval"

static void usage(FILE *f) {
    fprintf(f,
        "usage: freekv eval [options]\n"
        "Runs each policy on the same trace and compares it with dense attention: relative L2\n"
        "error of the attention outputs, fraction of the exact attention mass the attended pages\n"
        "cover, needle retrieval, and each policy relative to quest (exact selection). Exit\n"
        "status: 0 ok; 1 a run or file error, or a result that is not finite (NaN or Inf); 2 bad\n"
        "arguments or settings (checked before any work).\n"
        "\n"
        "input (default: the built-in synthetic trace):\n"
        "  --trace DIR          a trace directory (header.json, k_<l>.npy, v_<l>.npy, q_<l>.npy,\n"
        "                       needles.json; docs/eval.md, tools/dump_trace.py)\n"
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
        "  --save-trace DIR     also write the trace, needles.json included, as a trace\n"
        "                       directory (DIR must exist)\n"
        "budget and policy:\n"
        "  --page N (16)  --budget N (512)  --sink N (64)  --window N (64)   tokens\n"
        "  --tau X (0.9)        freekv correction threshold\n"
        "  --dtype f32|f16|bf16 (f16)   KV storage\n"
        "  --group-reduce softmax-mean|mean|max (softmax-mean)\n"
        "  --group-temperature raw|sqrt-d (raw)   softmax-mean's temperature: the raw Quest\n"
        "                       bounds (FreeKV's accuracy code) or the bounds times 1/sqrt(d)\n"
        "  --host-format same|q8|q4 (same)   host pool of sync, speculative, freekv: the\n"
        "                       KV dtype, or 8/4-bit codes dequantized at recall\n"
        "  --policies LIST      comma list of dense,quest,sync,speculative,freekv (all);\n"
        "                       dense and quest always run as the references\n"
        "sweep (freekv at every combination, each against quest at its own settings):\n"
        "  --sweep AXIS=LIST... one or more of tau=0.8,0.9  budget=512,1024  page=16,32\n"
        "                       temp=raw,sqrt-d (an axis not given keeps its flag's value)\n"
        "  --target LIST        least values the recommendation must meet, fractions of quest's:\n"
        "                       mass=X (mean mass), mass-worst=X (the worst step's),\n"
        "                       needles=X (needles found of those quest finds); default mass=0.99\n"
        "device and output:\n"
        "  --backend NAME --device SEL   override FREEKV_BACKEND / FREEKV_DEVICE\n"
        "  --csv FILE  --json FILE       also write the results (a sweep: its rows)\n"
        "  --dump FILE.jsonl    one record per (policy, step, layer, KV head): attended pages,\n"
        "                       correction and group cosine, mass, exact selection kept\n");
}

static int parse_policies(const char *list, int *want) {
    char buf[256];
    if (strlen(list) >= sizeof buf || list[0] == '\0') {
        fprintf(stderr, TOOL ": --policies: bad list '%.40s'\n", list);
        return -1;
    }
    snprintf(buf, sizeof buf, "%s", list);
    memset(want, 0, sizeof(int) * FKV_EVAL_POLICIES);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcmp(tok, "all") == 0) {
            for (int i = 0; i < FKV_EVAL_POLICIES; i++)
                want[i] = 1;
            continue;
        }
        fkv_policy p;
        if (fkv_policy_parse(tok, &p) != FKV_OK) {
            fprintf(stderr, TOOL ": --policies: unknown policy '%s' (dense, quest, sync, "
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
    fprintf(stderr, TOOL ": --backend: '%s' is not a backend of this build (%s)\n", name, list);
    return -1;
}

/* An output file can be written: it is a writable file, or its directory exists and is
 * writable. Checked (not created) before any work, so a bad path does not waste a run. */
static int check_output_file(const char *flag, const char *path) {
    struct stat sb;
    if (path == NULL)
        return 0;
    if (path[0] == '\0') {
        fprintf(stderr, TOOL ": %s: empty path\n", flag);
        return -1;
    }
    if (stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode) || access(path, W_OK) != 0) {
            fprintf(stderr, TOOL ": %s %s: %s\n", flag, path,
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
        fprintf(stderr, TOOL ": %s %s: directory %s %s\n", flag, path, dir,
                stat(dir, &sb) != 0 ? "does not exist" : "is not a writable directory");
        return -1;
    }
    return 0;
}

static int check_output_dir(const char *flag, const char *dir) {
    struct stat sb;
    if (dir == NULL)
        return 0;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, TOOL ": %s %s: not an existing writable directory\n", flag, dir);
        return -1;
    }
    return 0;
}

/* Two outputs must not be one file: the second would overwrite the first. */
static int check_distinct_outputs(const fkv_eval_options *o) {
    const char *flags[] = {"--csv", "--json", "--dump"}, *paths[] = {o->csv, o->json, o->dump};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < i; j++)
            if (paths[i] && paths[j] && strcmp(paths[i], paths[j]) == 0) {
                fprintf(stderr, TOOL ": %s and %s name the same file %s\n", flags[j], flags[i],
                        paths[i]);
                return -1;
            }
    return 0;
}

/* Flags whose presence matters beyond their value (check_options). */
enum { GIVEN_TAU, GIVEN_BUDGET, GIVEN_PAGE, GIVEN_TEMP, GIVEN_POLICIES, N_GIVEN };

typedef struct u32_flag {
    const char *name;
    uint32_t *dst;
    int geometry; /* fixed by a trace directory */
} u32_flag;

typedef struct f32_flag {
    const char *name;
    float *dst;
} f32_flag;

/* A name among `names` (n of them) into *out, its index; -1 after a message listing them. */
static int parse_choice(const char *flag, const char *v, const char *const *names, int n,
                        int *out) {
    for (int i = 0; i < n; i++)
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
    fprintf(stderr, TOOL ": %s: '%s' is not", flag, v);
    for (int i = 0; i < n; i++)
        fprintf(stderr, "%s %s", i == 0 ? "" : i + 1 == n ? " or" : ",", names[i]);
    fprintf(stderr, "\n");
    return -1;
}

/* The checks that need every flag: combinations, the synthetic trace, outputs. */
static int check_options(fkv_eval_options *o, const char *geometry_flag, uint32_t layers,
                         uint32_t steps, int layers_given, int steps_given, int needles_given,
                         int span_given, const int *given) {
    fkv_synth_params *s = &o->synth;
    if (o->trace_dir) {
        if (geometry_flag) {
            fprintf(stderr, TOOL ": %s describes the synthetic trace; a --trace directory "
                            "fixes it\n", geometry_flag);
            return -1;
        }
        if (o->save_trace) {
            fprintf(stderr, TOOL ": --save-trace writes the synthetic trace; it cannot be used "
                            "with --trace\n");
            return -1;
        }
        struct stat sb;
        if (stat(o->trace_dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            fprintf(stderr, TOOL ": --trace %s: not a directory\n", o->trace_dir);
            return -1;
        }
        if ((layers_given && layers == 0) || (steps_given && steps == 0)) {
            fprintf(stderr, TOOL ": --%s must be at least 1\n",
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
            /* the message is "invalid argument: --flag ...: why": the flag says it all */
            const char *m = fkv_last_error(), *c = strstr(m, ": ");
            fprintf(stderr, TOOL ": %s\n", c ? c + 2 : m);
            return -1;
        }
    }
    const fkv_sweep_spec *sw = &o->sweep;
    if (sw->given) {
        const struct {
            int given;
            size_t n;
            const char *flag, *axis;
        } both[] = {{given[GIVEN_TAU], sw->n_tau, "--tau", "tau"},
                    {given[GIVEN_BUDGET], sw->n_budget, "--budget", "budget"},
                    {given[GIVEN_PAGE], sw->n_page, "--page", "page"},
                    {given[GIVEN_TEMP], sw->n_temp, "--group-temperature", "temp"}};
        for (size_t i = 0; i < sizeof both / sizeof *both; i++)
            if (both[i].given && both[i].n) {
                fprintf(stderr, TOOL ": %s and --sweep %s= both set it: give one\n",
                        both[i].flag, both[i].axis);
                return -1;
            }
        if (given[GIVEN_POLICIES] || o->dump) {
            fprintf(stderr, TOOL ": %s: a sweep runs freekv (and dense and quest as its "
                            "references) at every combination; run without --sweep for %s\n",
                    o->dump ? "--dump" : "--policies",
                    o->dump ? "one setting's records" : "other policies");
            return -1;
        }
        if (fkv_sweep_count(sw) > FKV_SWEEP_MAX_COMBINATIONS) {
            fprintf(stderr, TOOL ": --sweep: %zu combinations, at most %d\n", fkv_sweep_count(sw),
                    FKV_SWEEP_MAX_COMBINATIONS);
            return -1;
        }
        if (!o->targets.given)
            o->targets.mass = 0.99;
    } else if (o->targets.given) {
        fprintf(stderr, TOOL ": --target sets what --sweep's recommendation must meet; give "
                        "--sweep too\n");
        return -1;
    }
    int temps_vary = sw->n_temp > 1 || (sw->n_temp == 1 && sw->temp[0] != FKV_TEMP_RAW);
    if ((temps_vary || o->temp != FKV_TEMP_RAW) && o->reduce != FKV_GROUP_SOFTMAX_MEAN) {
        fprintf(stderr, TOOL ": the group temperature applies to --group-reduce softmax-mean "
                        "only (%s ranks the same at any temperature)\n",
                o->reduce == FKV_GROUP_MEAN ? "mean" : "max");
        return -1;
    }
    if (check_backend(o->backend) || check_output_file("--csv", o->csv) ||
        check_output_file("--json", o->json) || check_output_file("--dump", o->dump) ||
        check_output_dir("--save-trace", o->save_trace) || check_distinct_outputs(o))
        return -1;
    return 0;
}

int fkv_eval_parse_args(int argc, char **argv, fkv_eval_options *o) {
    memset(o, 0, sizeof *o);
    fkv_synth_defaults(&o->synth);
    o->page = 16;
    o->budget = 512;
    o->sink = 64;
    o->window = 64;
    o->tau = 0.9f;
    o->dtype = FKV_F16;
    o->reduce = FKV_GROUP_SOFTMAX_MEAN;
    o->temp = FKV_TEMP_RAW;
    o->host_format = FKV_HOST_SAME;
    o->targets = (fkv_sweep_targets){.mass = NAN, .mass_worst = NAN, .needles = NAN};
    for (int i = 0; i < FKV_EVAL_POLICIES; i++)
        o->want[i] = 1;
    uint32_t layers = 0, steps = 0, seed = 1;
    int layers_given = 0, steps_given = 0, needles_given = 0, span_given = 0;
    int given[N_GIVEN] = {0};
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
    static const char *const str_flags[] = {"--trace", "--save-trace", "--csv", "--json",
                                            "--dump", "--backend", "--device", "--policies",
                                            "--dtype", "--group-reduce", "--group-temperature",
                                            "--sweep", "--target", "--host-format"};
    const char *geometry_flag = NULL;
    for (int i = 1; i < argc; i++) {
        char flag[64];
        const char *a = argv[i], *v = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, TOOL ": unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
        const char *eq = strchr(a, '=');
        if (eq) { /* --flag=value */
            size_t n = (size_t)(eq - a);
            if (n >= sizeof flag) {
                fprintf(stderr, TOOL ": unknown option '%.40s...'\n", a);
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
        for (size_t f = 0; f < sizeof str_flags / sizeof *str_flags; f++)
            matched |= strcmp(flag, str_flags[f]) == 0;
        if (!matched) {
            fprintf(stderr, TOOL ": unknown option '%s' (see --help)\n", flag);
            return -1;
        }
        if (v == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, TOOL ": %s needs a value\n", flag);
                return -1;
            }
            v = argv[++i];
        }
        for (size_t f = 0; f < sizeof u32_flags / sizeof *u32_flags; f++) {
            if (strcmp(flag, u32_flags[f].name) != 0)
                continue;
            if (fkv_arg_u32(TOOL, flag, v, 0, UINT32_MAX, u32_flags[f].dst))
                return -1;
            if (u32_flags[f].geometry)
                geometry_flag = u32_flags[f].name;
            layers_given |= u32_flags[f].dst == &layers;
            steps_given |= u32_flags[f].dst == &steps;
            needles_given |= u32_flags[f].dst == &s->needles;
            span_given |= u32_flags[f].dst == &s->heavy_span;
            given[GIVEN_BUDGET] |= u32_flags[f].dst == &o->budget;
            given[GIVEN_PAGE] |= u32_flags[f].dst == &o->page;
        }
        for (size_t f = 0; f < sizeof f32_flags / sizeof *f32_flags; f++) {
            if (strcmp(flag, f32_flags[f].name) != 0)
                continue;
            double x;
            if (fkv_arg_double(TOOL, flag, v, -1e30, 1e30, &x))
                return -1;
            *f32_flags[f].dst = (float)x;
            if (f32_flags[f].dst != &o->tau)
                geometry_flag = f32_flags[f].name;
            given[GIVEN_TAU] |= f32_flags[f].dst == &o->tau;
        }
        int choice;
        if (strcmp(flag, "--trace") == 0)
            o->trace_dir = v;
        else if (strcmp(flag, "--save-trace") == 0)
            o->save_trace = v;
        else if (strcmp(flag, "--csv") == 0)
            o->csv = v;
        else if (strcmp(flag, "--json") == 0)
            o->json = v;
        else if (strcmp(flag, "--dump") == 0)
            o->dump = v;
        else if (strcmp(flag, "--backend") == 0)
            o->backend = v;
        else if (strcmp(flag, "--device") == 0)
            o->device = v;
        else if (strcmp(flag, "--policies") == 0) {
            if (parse_policies(v, o->want))
                return -1;
            given[GIVEN_POLICIES] = 1;
        } else if (strcmp(flag, "--dtype") == 0) {
            static const char *const names[] = {"f32", "f16", "bf16"}; /* fkv_dtype order */
            if (parse_choice(flag, v, names, 3, &choice))
                return -1;
            o->dtype = (fkv_dtype)choice;
        } else if (strcmp(flag, "--group-reduce") == 0) {
            static const char *const names[] = {"softmax-mean", "mean", "max"};
            if (parse_choice(flag, v, names, 3, &choice))
                return -1;
            o->reduce = (fkv_group_reduce)choice;
        } else if (strcmp(flag, "--group-temperature") == 0) {
            static const char *const names[] = {"raw", "sqrt-d"};
            if (parse_choice(flag, v, names, 2, &choice))
                return -1;
            o->temp = (fkv_group_temp)choice;
            given[GIVEN_TEMP] = 1;
        } else if (strcmp(flag, "--host-format") == 0) {
            static const char *const names[] = {"same", "q8", "q4"};
            if (parse_choice(flag, v, names, 3, &choice))
                return -1;
            o->host_format = (fkv_host_format)choice;
        } else if (strcmp(flag, "--target") == 0) {
            if (fkv_sweep_parse_target(v, &o->targets))
                return -1;
        } else if (strcmp(flag, "--sweep") == 0) {
            /* the value and every following word that is not a flag: AXIS=LIST each */
            if (fkv_sweep_parse_axis(v, &o->sweep))
                return -1;
            while (i + 1 < argc && argv[i + 1][0] != '-')
                if (fkv_sweep_parse_axis(argv[++i], &o->sweep))
                    return -1;
        }
    }
    s->seed = seed;
    return check_options(o, geometry_flag, layers, steps, layers_given, steps_given,
                         needles_given, span_given, given);
}
