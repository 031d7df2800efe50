/* Running the sweep's combinations (sweep_run.h). */
#include "sweep_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mass.h"
#include "run.h"

static fkv_config config_at(const fkv_config *base, const fkv_sweep_point *p) {
    fkv_config c = *base;
    c.page_size = p->page;
    c.budget_tokens = p->budget;
    c.group_temperature = p->temp;
    c.tau = p->tau;
    return c;
}

/* A progress bar on stderr, only when it is a terminal (never in logs or tests); p NULL
 * clears it. */
static void progress(size_t done, size_t total, const fkv_sweep_point *p) {
    if (!isatty(STDERR_FILENO))
        return;
    if (p == NULL) {
        fprintf(stderr, "\r\033[K");
        return;
    }
    enum { WIDTH = 30 };
    char bar[WIDTH + 1];
    size_t fill = total ? done * WIDTH / total : WIDTH;
    for (size_t i = 0; i < WIDTH; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = '\0';
    fprintf(stderr, "\r\033[Ksweep [%s] %zu/%zu  page %u budget %u temp %s tau %g", bar, done,
            total, p->page, p->budget, fkv_sweep_temp_name(p->temp), (double)p->tau);
    fflush(stderr);
}

static void report_failure(const fkv_sweep_point *p, const fkv_eval_result *r) {
    progress(0, 0, NULL);
    fprintf(stderr, "freekv eval: page %u, budget %u, temp %s, tau %g: %s: %s\n", p->page,
            p->budget, fkv_sweep_temp_name(p->temp), (double)p->tau, fkv_policy_name(r->policy),
            r->error);
}

int fkv_eval_sweep_run(fkv_device *dev, const fkv_config *base, const fkv_eval_options *o,
                       const fkv_trace *tr, const double *group_cos,
                       const fkv_eval_about *about) {
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    const size_t n = fkv_sweep_count(&o->sweep);
    const fkv_sweep_point base_pt = {.page = base->page_size, .budget = base->budget_tokens,
                                     .temp = base->group_temperature, .tau = base->tau};
    size_t n_out = (size_t)in->decode_steps * in->layers * in->q_heads * in->head_dim;
    fkv_sweep_row *rows = calloc(n, sizeof *rows);
    float *dense_out = malloc(sizeof(float) * (n_out ? n_out : 1));
    fkv_eval_mass mass = {0};
    fkv_eval_result dense = {0}, quest = {0};
    int rc = 0, have_quest = 0;
    if (rows == NULL || dense_out == NULL) {
        fprintf(stderr, "freekv eval: out of host memory for the sweep\n");
        rc = FKV_EVAL_EXIT_RUN;
        goto out;
    }
    char targets[256];
    fkv_sweep_targets_string(&o->targets, targets, sizeof targets);
    printf("sweep: %zu combinations of page x budget x temp x tau; freekv against quest at each "
           "page, budget and temp\ntargets: %s%s\n\n",
           n, targets, o->targets.given ? "" : " (the default; --target sets them)");
    fflush(stdout);
    fkv_sweep_point prev = {0};
    for (size_t i = 0; i < n; i++) {
        const fkv_sweep_point p = fkv_sweep_point_at(&o->sweep, &base_pt, i);
        const fkv_config c = config_at(base, &p);
        progress(i, n, &p);
        if (i == 0 || p.page != prev.page) { /* the references that depend on the page only */
            fkv_eval_mass_free(&mass);
            if (fkv_eval_mass_build(tr, p.page, &mass) != FKV_OK) {
                progress(0, 0, NULL);
                fprintf(stderr, "freekv eval: %s\n", fkv_last_error());
                rc = FKV_EVAL_EXIT_RUN;
                goto out;
            }
            fkv_eval_result_free(&dense);
            dense = (fkv_eval_result){.policy = FKV_POLICY_DENSE};
            fkv_eval_ref ref = {.trace = tr, .mass = &mass, .group_cos = group_cos,
                                .dense_out = dense_out};
            fkv_eval_run_policy(dev, &c, &ref, NULL, &dense);
            if (!dense.ok)
                report_failure(&p, &dense);
        }
        if (!have_quest || p.page != prev.page || p.budget != prev.budget ||
            p.temp != prev.temp) {
            fkv_eval_result_free(&quest);
            quest = (fkv_eval_result){.policy = FKV_POLICY_QUEST};
            fkv_eval_ref ref = {.trace = tr, .mass = &mass, .group_cos = group_cos,
                                .dense_out = dense_out};
            fkv_eval_run_policy(dev, &c, &ref, NULL, &quest);
            fkv_eval_relate(&quest, &quest);
            have_quest = 1;
            if (!quest.ok)
                report_failure(&p, &quest);
        }
        prev = p;
        fkv_eval_result r = {.policy = FKV_POLICY_FREEKV};
        /* a failed quest run's pages are incomplete: nothing to compare with */
        fkv_eval_ref ref = {.trace = tr, .mass = &mass, .group_cos = group_cos,
                            .dense_out = dense_out, .quest = quest.ran ? &quest : NULL};
        fkv_eval_run_policy(dev, &c, &ref, NULL, &r);
        fkv_eval_relate(&r, &quest);
        if (!r.ok)
            report_failure(&p, &r);
        rows[i] = (fkv_sweep_row){
            .at = p,
            .ok = dense.ok && quest.ok && r.ok && isfinite(r.mass_vs_quest) &&
                  isfinite(r.worst_step_vs_quest),
            .mass_vs_quest = r.mass_vs_quest,
            .worst_step_vs_quest = r.worst_step_vs_quest,
            .quest_kept_share = r.quest_kept_share,
            .needles_of_quest = r.needles_of_quest,
            .quest_needles = r.quest_needles,
            .needles = r.needles,
            .quest_mass = quest.cov_mean,
            .mass = r.cov_mean,
            .rel_l2_mean = r.l2_mean,
            .correction_rate = r.correction_rate,
            .below_tau = r.below_tau,
            .recalled_per_step = r.recalled_per_step,
            .bytes_per_step = r.bytes_per_step,
            .seconds = r.seconds,
            .corrections = r.corrections,
            .bytes_recalled = r.bytes_recalled};
        if (!rows[i].ok)
            rc = FKV_EVAL_EXIT_RUN;
        fkv_eval_result_free(&r);
    }
    progress(n, n, NULL);
    fkv_sweep_print(stdout, rows, n, &o->targets);
    if (o->csv && fkv_sweep_write_csv(o->csv, rows, n, &o->targets) != 0)
        rc = FKV_EVAL_EXIT_RUN;
    if (o->json && fkv_sweep_write_json(o->json, rows, n, &o->targets, fkv_eval_json_head,
                                        (void *)about) != 0)
        rc = FKV_EVAL_EXIT_RUN;
out:
    fkv_eval_result_free(&dense);
    fkv_eval_result_free(&quest);
    fkv_eval_mass_free(&mass);
    free(dense_out);
    free(rows);
    return rc;
}
