/* One policy decoding a whole trace on a device, measured against the references: dense
 * attention's outputs (relative L2), the exact attention mass (mass.h), the trace's needles,
 * and quest's selection at the same settings (the quest-relative view). */
#ifndef FKV_EVAL_RUN_H
#define FKV_EVAL_RUN_H

#include <stdint.h>
#include <stdio.h>

#include "freekv.h"
#include "mass.h"
#include "trace.h"

typedef struct fkv_eval_result {
    fkv_policy policy;
    int ran;            /* the run completed */
    int ok;             /* ... and every output and measure is finite */
    uint64_t nonfinite; /* attention output values that are NaN or Inf */
    char error[256];
    double l2_mean, l2_max;   /* against dense; 0 for dense itself */
    double cov_mean, cov_min; /* attention mass covered per (step, layer, query head) */
    uint32_t needle_hits, needles, steps;
    uint64_t corrections, heads_checked, pages_recalled, bytes_recalled; /* fkv_stats */
    double correction_rate, recalled_per_step, bytes_per_step, seconds;
    /* (step, layer, KV head) whose group cosine is below tau, over all of them: what freekv's
     * check flags (speculative and freekv only; NaN otherwise) */
    double below_tau;
    /* FNV-1a 64 of every attention output's bytes and of every attended page list, in decode
     * order: equal digests mean bit-identical outputs and identical selections */
    uint64_t output_digest, pages_digest;
    /* what the quest-relative view needs (owned; fkv_eval_result_free) */
    double *step_mass;          /* [steps]: cov mean per step */
    unsigned char *needle_hit;  /* [needles] */
    int32_t *mid;               /* quest only: [steps][layers][kv_heads][n_mid] selected middle
                                 * pages, ascending, -1 after the last */
    uint32_t n_mid;
    uint64_t quest_pages, quest_pages_kept; /* quest's middle pages, and those attended */
    /* the quest-relative view (fkv_eval_relate; NaN or 0 when there is no quest run) */
    double mass_vs_quest, worst_step_vs_quest, quest_kept_share;
    uint32_t needles_of_quest, quest_needles; /* found by both; found by quest */
} fkv_eval_result;

/* What a policy run compares with. */
typedef struct fkv_eval_ref {
    const fkv_trace *trace;
    const fkv_eval_mass *mass;
    const double *group_cos;  /* [steps][layers][kv_heads]: fkv_trace_query_cosine */
    float *dense_out;         /* [steps][layers][q_heads * head_dim] */
    const fkv_eval_result *quest; /* quest at the same settings, already run; or NULL */
} fkv_eval_ref;

/* Runs cfg->policy over the whole trace. Dense writes ref->dense_out; the others compare with
 * it. Quest keeps its middle pages (res->mid) for the runs after it. dump (may be NULL): one
 * JSON line per (step, layer, KV head) for every policy but dense (dump.h). res->policy must
 * be cfg->policy; the rest of *res is filled (fkv_eval_result_free releases its arrays, also
 * after a failed run, whose reason is in res->error). */
void fkv_eval_run_policy(fkv_device *dev, const fkv_config *cfg, const fkv_eval_ref *ref,
                         FILE *dump, fkv_eval_result *res);

/* Fills the quest-relative view of r from quest's result at the same settings (r may be
 * quest itself): mean mass / quest's mean mass, the worst step's ratio of per-step means,
 * the needles both found out of those quest found, and the share of quest's middle pages r
 * attended (NaN for dense, which does not select). */
void fkv_eval_relate(fkv_eval_result *r, const fkv_eval_result *quest);

void fkv_eval_result_free(fkv_eval_result *r);

/* The fraction of n group cosines that freekv's check flags at tau: !(cos >= tau). */
double fkv_eval_below_tau(const double *group_cos, size_t n, float tau);

#endif
