/* One run's table, CSV and JSON (report.h). */
#include "report.h"

#include <errno.h>
#include <math.h>
#include <string.h>

#include "json.h"
#include "sweep.h"

const char *fkv_eval_reduce_name(fkv_group_reduce r) {
    return r == FKV_GROUP_SOFTMAX_MEAN ? "softmax-mean"
           : r == FKV_GROUP_MEAN       ? "mean"
           : r == FKV_GROUP_MAX        ? "max"
                                       : "unknown";
}

FILE *fkv_eval_open_output(const char *flag, const char *path) {
    FILE *f = fopen(path, "w");
    if (f == NULL)
        fprintf(stderr, "freekv eval: %s %s: %s\n", flag, path, strerror(errno));
    return f;
}

int fkv_eval_close_output(FILE *f, const char *flag, const char *path) {
    int failed = ferror(f);
    if (fclose(f) != 0 || failed) {
        fprintf(stderr, "freekv eval: %s %s: write failed\n", flag, path);
        return -1;
    }
    return 0;
}

/* "a/b", or "-" when the trace has no needles. */
static void fraction(char *buf, size_t size, uint32_t a, uint32_t b, uint32_t needles) {
    if (needles)
        snprintf(buf, size, "%u/%u", a, b);
    else
        snprintf(buf, size, "-");
}

/* A share in percent, or "-" when it does not apply (NaN). */
static void percent(char *buf, size_t size, double x) {
    if (isnan(x))
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%.1f%%", 100.0 * x);
}

void fkv_eval_print_table(FILE *f, const fkv_eval_result *res, int n, double oracle_mean,
                          double oracle_min) {
    fprintf(f, "%-12s %11s %11s %10s %10s %9s %11s %8s %12s %8s\n", "policy", "rel_l2_mean",
            "rel_l2_max", "mass_mean", "mass_min", "needles", "corrections", "cos<tau",
            "recall/step", "time_s");
    for (int i = 0; i < n; i++) {
        const fkv_eval_result *r = &res[i];
        if (!r->ran) {
            fprintf(f, "%-12s failed: %s\n", fkv_policy_name(r->policy), r->error);
            continue;
        }
        char needles[24], below[16];
        fraction(needles, sizeof needles, r->needle_hits, r->needles, r->needles);
        percent(below, sizeof below, r->below_tau);
        fprintf(f, "%-12s %11.2e %11.2e %10.4f %10.4f %9s %10.1f%% %8s %12.1f %8.2f%s%s\n",
                fkv_policy_name(r->policy), r->l2_mean, r->l2_max, r->cov_mean, r->cov_min,
                needles, 100.0 * r->correction_rate, below, r->recalled_per_step, r->seconds,
                r->ok ? "" : "  FAILED: ", r->ok ? "" : r->error);
    }
    fprintf(f, "%-12s %11s %11s %10.4f %10.4f %9s %11s %8s %12s %8s\n", "oracle", "-", "-",
            oracle_mean, oracle_min, "-", "-", "-", "-", "-");
    fprintf(f, "\nrelative to quest (exact selection with the step's own query, same settings):\n");
    fprintf(f, "%-12s %10s %10s %17s %8s\n", "policy", "mass/quest", "worst_step",
            "quest_pages_kept", "needles");
    for (int i = 0; i < n; i++) {
        const fkv_eval_result *r = &res[i];
        if (!r->ran)
            continue;
        char needles[24], kept[16];
        fraction(needles, sizeof needles, r->needles_of_quest, r->quest_needles, r->needles);
        percent(kept, sizeof kept, r->quest_kept_share);
        fprintf(f, "%-12s %10.4f %10.4f %17s %8s\n", fkv_policy_name(r->policy),
                r->mass_vs_quest, r->worst_step_vs_quest, kept, needles);
    }
}

int fkv_eval_write_csv(const char *path, const fkv_eval_result *res, int n, double oracle_mean,
                       double oracle_min) {
    FILE *f = fkv_eval_open_output("--csv", path);
    if (f == NULL)
        return -1;
    fprintf(f, "policy,ok,rel_l2_mean,rel_l2_max,mass_mean,mass_min,needle_hits,needles,"
               "correction_rate,recalled_pages_per_step,seconds,nonfinite_outputs,"
               "group_cosine_below_tau,bytes_recalled_per_step,mass_vs_quest,"
               "worst_step_vs_quest,quest_kept_share,needles_of_quest,quest_needles\n");
    for (int i = 0; i < n; i++) {
        const fkv_eval_result *r = &res[i];
        fprintf(f, "%s,%d,%.6g,%.6g,%.6f,%.6f,%u,%u,%.6f,%.3f,%.3f,%llu,%.6f,%.1f,%.6f,%.6f,%.6f,"
                   "%u,%u\n",
                fkv_policy_name(r->policy), r->ok, r->l2_mean, r->l2_max, r->cov_mean,
                r->cov_min, r->needle_hits, r->needles, r->correction_rate, r->recalled_per_step,
                r->seconds, (unsigned long long)r->nonfinite, r->below_tau, r->bytes_per_step,
                r->mass_vs_quest, r->worst_step_vs_quest, r->quest_kept_share,
                r->needles_of_quest, r->quest_needles);
    }
    fprintf(f, "oracle,1,,,%.6f,%.6f,,,,,,,,,,,,,\n", oracle_mean, oracle_min);
    return fkv_eval_close_output(f, "--csv", path);
}

void fkv_eval_json_head(FILE *f, void *ctx) {
    const fkv_eval_about *a = ctx;
    const fkv_trace_info *in = a->trace;
    const fkv_config *c = a->cfg;
    fprintf(f, "  \"trace\": {\"source\": ");
    fkv_json_put_str(f, in->source);
    fprintf(f, ", \"layers\": %u, \"q_heads\": %u, \"kv_heads\": %u, \"head_dim\": %u, "
               "\"prompt_tokens\": %u, \"decode_steps\": %u, \"needles\": %u, "
               "\"query_cosine_mean\": ",
            in->layers, in->q_heads, in->kv_heads, in->head_dim, in->prompt_tokens,
            in->decode_steps, in->needles);
    fkv_json_put_num(f, a->cos_mean);
    if (!a->sweep) {
        fprintf(f, ", \"group_cosine_below_tau\": ");
        fkv_json_put_num(f, a->group_below);
    }
    fprintf(f, "},\n  \"device\": {\"backend\": ");
    fkv_json_put_str(f, a->device->backend);
    fprintf(f, ", \"name\": ");
    fkv_json_put_str(f, a->device->name);
    fprintf(f, "},\n  \"config\": {");
    if (!a->sweep) /* in a sweep these are per row */
        fprintf(f, "\"page_size\": %u, \"budget_tokens\": %u, \"tau\": %g, "
                   "\"group_temperature\": \"%s\", ",
                c->page_size, c->budget_tokens, (double)c->tau,
                fkv_sweep_temp_name(c->group_temperature));
    fprintf(f, "\"sink_tokens\": %u, \"window_tokens\": %u, \"dtype\": \"%s\", "
               "\"group_reduce\": \"%s\", \"summary_format\": \"%s\"},\n",
            c->sink_tokens, c->window_tokens, fkv_dtype_name(c->dtype),
            fkv_eval_reduce_name(c->group_reduce), fkv_summary_format_name(c->summary_format));
}

int fkv_eval_write_json(const char *path, const fkv_eval_about *about,
                        const fkv_eval_result *res, int n, double oracle_mean,
                        double oracle_min) {
    FILE *f = fkv_eval_open_output("--json", path);
    if (f == NULL)
        return -1;
    fprintf(f, "{\n");
    fkv_eval_json_head(f, (void *)about);
    fprintf(f, "  \"results\": [\n");
    for (int i = 0; i < n; i++) {
        const fkv_eval_result *r = &res[i];
        fprintf(f, "    {\"policy\": \"%s\", \"ok\": %s", fkv_policy_name(r->policy),
                r->ok ? "true" : "false");
        if (r->ran) {
            const char *names[] = {"rel_l2_mean", "rel_l2_max", "mass_mean", "mass_min",
                                   "correction_rate", "group_cosine_below_tau",
                                   "recalled_pages_per_step", "bytes_recalled_per_step",
                                   "seconds"};
            double vals[] = {r->l2_mean, r->l2_max, r->cov_mean, r->cov_min,
                             r->correction_rate, r->below_tau, r->recalled_per_step,
                             r->bytes_per_step, r->seconds};
            for (size_t j = 0; j < sizeof vals / sizeof *vals; j++) {
                fprintf(f, ", \"%s\": ", names[j]);
                fkv_json_put_num(f, vals[j]);
            }
            fprintf(f, ", \"needle_hits\": %u, \"needles\": %u, \"nonfinite_outputs\": %llu",
                    r->needle_hits, r->needles, (unsigned long long)r->nonfinite);
            fprintf(f, ", \"corrections\": %llu, \"heads_checked\": %llu",
                    (unsigned long long)r->corrections, (unsigned long long)r->heads_checked);
            fprintf(f, ", \"quest_relative\": {\"mass\": ");
            fkv_json_put_num(f, r->mass_vs_quest);
            fprintf(f, ", \"worst_step_mass\": ");
            fkv_json_put_num(f, r->worst_step_vs_quest);
            fprintf(f, ", \"quest_pages_kept\": ");
            fkv_json_put_num(f, r->quest_kept_share);
            fprintf(f, ", \"needles_of_quest\": %u, \"quest_needles\": %u}", r->needles_of_quest,
                    r->quest_needles);
            fprintf(f, ", \"output_digest\": \"%016llx\", \"pages_digest\": \"%016llx\"",
                    (unsigned long long)r->output_digest, (unsigned long long)r->pages_digest);
        }
        if (!r->ok) {
            fprintf(f, ", \"error\": ");
            fkv_json_put_str(f, r->error);
        }
        fprintf(f, "},\n");
    }
    fprintf(f, "    {\"policy\": \"oracle\", \"ok\": true, \"mass_mean\": ");
    fkv_json_put_num(f, oracle_mean);
    fprintf(f, ", \"mass_min\": ");
    fkv_json_put_num(f, oracle_min);
    fprintf(f, "}\n  ]\n}\n");
    return fkv_eval_close_output(f, "--json", path);
}
