/* freekv eval: accuracy of each policy against dense attention on the same trace.
 *
 * Every policy decodes the same prefill and decode inputs on the chosen device. Per decode
 * step and layer we compare its attention output with the dense run's (relative L2 over
 * all query heads), measure how much of the exact attention mass the pages it attended
 * cover (the mass is computed on the host from the trace, once, per query head), check
 * whether each needle's page was attended at the step whose query looks for it, and set each
 * policy against quest, the exact selection at the same settings. A host-side "oracle" row
 * shows the best any page set of the same budget could cover. --sweep runs freekv over a grid
 * of settings instead (sweep_run.c).
 *
 * This file: checking the settings against the trace and the device before any work, and
 * one run of the chosen policies. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "freekv.h"
#include "mass.h"
#include "report.h"
#include "run.h"
#include "sweep_run.h"
#include "trace.h"

int fkv_eval_main(int argc, char **argv);

/* A failed setting is the caller's to fix (status 2); anything else is a run error. */
static int exit_for(fkv_status st) {
    return st == FKV_ERR_INVALID_ARGUMENT || st == FKV_ERR_INVALID_CONFIG ||
                   st == FKV_ERR_BAD_ENVIRONMENT || st == FKV_ERR_UNSUPPORTED
               ? FKV_EVAL_EXIT_USAGE
               : FKV_EVAL_EXIT_RUN;
}

/* One setting, base with the point's values, against the trace's geometry (from its header
 * alone) and the library; a sweep's messages name the combination. With dev, each policy of
 * `want` gets a context created and destroyed at once, so a setting the library or the
 * device refuses stops the run before any work. */
static int check_setting(const fkv_eval_options *o, const fkv_trace_info *in,
                         const fkv_config *base, const fkv_sweep_point *p, const int *want,
                         fkv_device *dev) {
    fkv_config config = *base, *cfg = &config;
    cfg->page_size = p->page;
    cfg->budget_tokens = p->budget;
    cfg->group_temperature = p->temp;
    cfg->tau = p->tau;
    char label[96] = "";
    if (o->sweep.given)
        snprintf(label, sizeof label, "--sweep page %u, budget %u, temp %s, tau %g: ", p->page,
                 p->budget, fkv_sweep_temp_name(p->temp), (double)p->tau);
    uint64_t tokens = (uint64_t)in->prompt_tokens + in->decode_steps;
    /* the budget against the trace first: its message names the flag and the trace */
    if (cfg->budget_tokens > tokens) {
        fprintf(stderr, "freekv eval: %s%s %u is more than the %llu tokens of the trace "
                        "(prompt %u + %u steps): every page would stay resident\n",
                label, label[0] ? "budget" : "--budget", cfg->budget_tokens,
                (unsigned long long)tokens, in->prompt_tokens, in->decode_steps);
        return FKV_EVAL_EXIT_USAGE;
    }
    const char *what = o->trace_dir ? "the trace does not fit these settings: " : "";
    if (fkv_config_validate(cfg) != FKV_OK) {
        fprintf(stderr, "freekv eval: %s%s%s\n", label, what, fkv_last_error());
        return FKV_EVAL_EXIT_USAGE;
    }
    size_t floats;
    if (fkv_eval_mass_size(in, cfg->page_size, &floats) != FKV_OK) {
        fprintf(stderr, "freekv eval: %s%s\n", label, fkv_last_error());
        return FKV_EVAL_EXIT_USAGE;
    }
    for (int p = 0; p < FKV_EVAL_POLICIES && dev; p++) {
        if (!want[p])
            continue;
        fkv_config c = *cfg;
        c.policy = (fkv_policy)p;
        fkv_context *ctx = NULL;
        fkv_status st = fkv_context_create(dev, &c, &ctx);
        fkv_context_destroy(ctx);
        if (st != FKV_OK) {
            fprintf(stderr, "freekv eval: %s%s: %s\n", label, fkv_policy_name(c.policy),
                    fkv_last_error());
            return exit_for(st);
        }
    }
    return 0;
}

/* Everything checked before any work: the settings (each combination of a sweep) against
 * the trace and the library, the targets against the trace's needles, the device, and each
 * policy's context. */
static int preflight(const fkv_eval_options *o, const fkv_trace_info *in, fkv_config *cfg,
                     fkv_device **dev) {
    cfg->n_layers = in->layers;
    cfg->n_q_heads = in->q_heads;
    cfg->n_kv_heads = in->kv_heads;
    cfg->head_dim = in->head_dim;
    uint64_t tokens = (uint64_t)in->prompt_tokens + in->decode_steps;
    cfg->max_context = tokens > UINT32_MAX ? UINT32_MAX : (uint32_t)tokens;
    if (!isnan(o->targets.needles) && in->needles == 0) {
        fprintf(stderr, "freekv eval: --target needles: the trace has no needles%s\n",
                o->trace_dir ? " (needles.json) within these layers and steps" : "");
        return FKV_EVAL_EXIT_USAGE;
    }
    /* the references always run; a sweep runs freekv */
    int want[FKV_EVAL_POLICIES];
    for (int p = 0; p < FKV_EVAL_POLICIES; p++)
        want[p] = o->sweep.given ? p == FKV_POLICY_FREEKV : o->want[p];
    want[FKV_POLICY_DENSE] = want[FKV_POLICY_QUEST] = 1;
    size_t n = o->sweep.given ? fkv_sweep_count(&o->sweep) : 1;
    const fkv_sweep_point base = {.page = cfg->page_size, .budget = cfg->budget_tokens,
                                  .temp = cfg->group_temperature, .tau = cfg->tau};
    /* every combination's numbers first, then the device and its contexts, which depend on
     * the page size and the budget only */
    for (size_t i = 0; i < n; i++) {
        fkv_sweep_point p = fkv_sweep_point_at(&o->sweep, &base, i);
        int rc = check_setting(o, in, cfg, &p, want, NULL);
        if (rc != 0)
            return rc;
    }
    fkv_status st = fkv_device_open(o->backend, o->device, dev);
    if (st != FKV_OK) {
        fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
        return exit_for(st);
    }
    for (size_t i = 0; i < n; i++) {
        fkv_sweep_point p = fkv_sweep_point_at(&o->sweep, &base, i);
        int fresh = 1;
        for (size_t j = 0; j < i && fresh; j++) {
            fkv_sweep_point q = fkv_sweep_point_at(&o->sweep, &base, j);
            fresh = q.page != p.page || q.budget != p.budget;
        }
        int rc = fresh ? check_setting(o, in, cfg, &p, want, *dev) : 0;
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* One run of the chosen policies: dense, then quest (the references), then the others, each
 * set against quest. Returns the exit status. */
static int run_once(const fkv_eval_options *o, fkv_device *dev, const fkv_config *cfg,
                    const fkv_trace *tr, const double *group_cos, const fkv_eval_about *about) {
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    fkv_eval_mass ref = {0};
    float *dense_out = NULL;
    FILE *dump = NULL;
    fkv_eval_result res[FKV_EVAL_POLICIES];
    memset(res, 0, sizeof res);
    int rc = 0;
    if (fkv_eval_mass_build(tr, cfg->page_size, &ref) != FKV_OK) {
        fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
        rc = FKV_EVAL_EXIT_RUN;
        goto out;
    }
    size_t n_out = (size_t)in->decode_steps * in->layers * in->q_heads * in->head_dim;
    dense_out = malloc(sizeof(float) * (n_out ? n_out : 1));
    if (dense_out == NULL) {
        fprintf(stderr, "freekv eval: out of host memory for the dense outputs\n");
        rc = FKV_EVAL_EXIT_RUN;
        goto out;
    }
    if (o->dump && (dump = fkv_eval_open_output("--dump", o->dump)) == NULL) {
        rc = FKV_EVAL_EXIT_RUN;
        goto out;
    }
    fkv_eval_ref r = {.trace = tr, .mass = &ref, .group_cos = group_cos, .dense_out = dense_out};
    for (int p = 0; p < FKV_EVAL_POLICIES; p++) {
        res[p].policy = (fkv_policy)p;
        if (!o->want[p] && p != FKV_POLICY_DENSE && p != FKV_POLICY_QUEST)
            continue;
        fkv_eval_run_policy(dev, cfg, &r, o->want[p] ? dump : NULL, &res[p]);
        if (p == FKV_POLICY_DENSE && !res[p].ran) {
            fprintf(stderr, "freekv eval: the dense reference run failed: %s\n", res[p].error);
            rc = FKV_EVAL_EXIT_RUN;
            goto out;
        }
        if (p == FKV_POLICY_QUEST && res[p].ran) /* a failed run's pages are incomplete */
            r.quest = &res[p];
    }
    /* the rows shown: the chosen policies, and a reference that failed */
    fkv_eval_result shown[FKV_EVAL_POLICIES];
    int n_shown = 0;
    for (int p = 0; p < FKV_EVAL_POLICIES; p++) {
        fkv_eval_relate(&res[p], &res[FKV_POLICY_QUEST]);
        if (o->want[p] || ((p == FKV_POLICY_DENSE || p == FKV_POLICY_QUEST) && !res[p].ok))
            shown[n_shown++] = res[p];
    }
    double oracle_mean, oracle_min;
    fkv_eval_oracle(in, cfg, &ref, &oracle_mean, &oracle_min);
    printf("\n");
    fkv_eval_print_table(stdout, shown, n_shown, oracle_mean, oracle_min);
    printf("\nrel_l2: ||out - dense|| / ||dense|| per (step, layer); mass: exact attention mass on "
           "the attended pages\nper (step, layer, query head); needles: keys whose page was "
           "attended at the step that looks\nfor them; cos<tau: (step, layer, KV head) whose "
           "group cosine is below tau, which freekv corrects;\noracle: best page set of the "
           "same budget (host). Relative to quest: mass / quest's (mean, worst\nstep), quest's "
           "middle pages attended, needles found of those quest found.\n");
    for (int i = 0; i < n_shown; i++)
        if (!shown[i].ok) {
            fprintf(stderr, "freekv eval: %s: %s\n", fkv_policy_name(shown[i].policy),
                    shown[i].error);
            rc = FKV_EVAL_EXIT_RUN;
        }
    if (!isfinite(oracle_mean) || !isfinite(oracle_min)) {
        fprintf(stderr, "freekv eval: the oracle's coverage is not finite\n");
        rc = FKV_EVAL_EXIT_RUN;
    }
    if (o->csv && fkv_eval_write_csv(o->csv, shown, n_shown, oracle_mean, oracle_min) != 0)
        rc = FKV_EVAL_EXIT_RUN;
    if (o->json && fkv_eval_write_json(o->json, about, shown, n_shown, oracle_mean,
                                       oracle_min) != 0)
        rc = FKV_EVAL_EXIT_RUN;
out:
    if (dump && fkv_eval_close_output(dump, "--dump", o->dump) != 0)
        rc = FKV_EVAL_EXIT_RUN;
    for (int p = 0; p < FKV_EVAL_POLICIES; p++)
        fkv_eval_result_free(&res[p]);
    free(dense_out);
    fkv_eval_mass_free(&ref);
    return rc;
}

int fkv_eval_main(int argc, char **argv) {
    fkv_eval_options o;
    int pr = fkv_eval_parse_args(argc, argv, &o);
    if (pr != 0)
        return pr > 0 ? 0 : FKV_EVAL_EXIT_USAGE;

    fkv_config cfg;
    fkv_config_init(&cfg);
    cfg.page_size = o.page;
    cfg.budget_tokens = o.budget;
    cfg.sink_tokens = o.sink;
    cfg.window_tokens = o.window;
    cfg.tau = o.tau;
    cfg.dtype = o.dtype;
    cfg.group_reduce = o.reduce;
    cfg.group_temperature = o.temp;
    cfg.host_format = o.host_format;
    cfg.max_seqs = 1;

    fkv_trace_info geom;
    if (o.trace_dir) {
        if (fkv_trace_dir_info(o.trace_dir, o.max_layers, o.max_steps, &geom) != FKV_OK) {
            fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
            return FKV_EVAL_EXIT_RUN;
        }
    } else {
        const fkv_synth_params *s = &o.synth;
        geom = (fkv_trace_info){.layers = s->layers, .q_heads = s->q_heads,
                                .kv_heads = s->kv_heads, .head_dim = s->head_dim,
                                .prompt_tokens = s->prompt_tokens,
                                .decode_steps = s->decode_steps,
                                .needles = s->needles * s->layers};
    }
    fkv_device *dev = NULL;
    int rc = preflight(&o, &geom, &cfg, &dev);
    if (rc != 0) {
        fkv_device_close(dev);
        return rc;
    }

    fkv_trace *tr = NULL;
    double *group_cos = NULL;
    fkv_status st = o.trace_dir ? fkv_trace_load_dir(o.trace_dir, o.max_layers, o.max_steps,
                                                     cfg.dtype, &tr)
                                : fkv_trace_synthetic(&o.synth, &tr);
    if (st != FKV_OK) {
        fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
        rc = FKV_EVAL_EXIT_RUN;
        goto out;
    }
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    if (o.save_trace && fkv_trace_save_dir(tr, o.save_trace, o.dtype) != FKV_OK) {
        fprintf(stderr, "freekv eval: --save-trace: %s\n", fkv_last_error());
        rc = FKV_EVAL_EXIT_RUN;
        goto out;
    }
    size_t n_cos = (size_t)in->decode_steps * in->layers * in->kv_heads;
    group_cos = malloc(sizeof(double) * (n_cos ? n_cos : 1));
    if (group_cos == NULL) {
        fprintf(stderr, "freekv eval: out of host memory for the query cosines\n");
        rc = FKV_EVAL_EXIT_RUN;
        goto out;
    }
    fkv_device_info di;
    fkv_device_get_info(dev, &di);
    double cos_mean;
    fkv_trace_query_cosine(tr, &cos_mean, group_cos);
    printf("freekv eval: trace %s: %u layers, %u/%u heads, d %u, prompt %u, %u steps, ",
           in->source, in->layers, in->q_heads, in->kv_heads, in->head_dim, in->prompt_tokens,
           in->decode_steps);
    if (in->needles)
        printf("%u needles\n", in->needles);
    else
        printf("no needles\n");
    fkv_eval_about about = {.trace = in, .device = &di, .cfg = &cfg, .cos_mean = cos_mean,
                            .group_below = NAN, .sweep = o.sweep.given};
    if (o.sweep.given) {
        printf("device %s %u: %s; kv %s, sink %u, window %u, group reduction %s\n", di.backend,
               di.index, di.name, fkv_dtype_name(cfg.dtype), cfg.sink_tokens, cfg.window_tokens,
               fkv_eval_reduce_name(cfg.group_reduce));
        printf("adjacent-step query cosine: mean %.3f over (step, layer, query head)\n",
               cos_mean);
        fflush(stdout);
        rc = fkv_eval_sweep_run(dev, &cfg, &o, tr, group_cos, &about);
        goto out;
    }
    about.group_below = fkv_eval_below_tau(group_cos, n_cos, cfg.tau);
    printf("device %s %u: %s; kv %s, page %u, budget %u (sink %u, window %u), tau %.2f, group "
           "reduction %s",
           di.backend, di.index, di.name, fkv_dtype_name(cfg.dtype), cfg.page_size,
           cfg.budget_tokens, cfg.sink_tokens, cfg.window_tokens, (double)cfg.tau,
           fkv_eval_reduce_name(cfg.group_reduce));
    if (cfg.group_reduce == FKV_GROUP_SOFTMAX_MEAN)
        printf(" (%s bounds)", cfg.group_temperature == FKV_TEMP_RAW ? "raw" : "1/sqrt(d)");
    printf(", host format %s", fkv_host_format_name(cfg.host_format));
    printf("\nadjacent-step query cosine: mean %.3f over (step, layer, query head); the KV "
           "heads' group\nmean is below tau at %.1f%% of (step, layer, KV head), what freekv "
           "corrects\n",
           cos_mean, 100.0 * about.group_below);
    fflush(stdout);
    rc = run_once(&o, dev, &cfg, tr, group_cos, &about);
out:
    free(group_cos);
    fkv_device_close(dev);
    fkv_trace_free(tr);
    return rc;
}
