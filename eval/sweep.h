/* `freekv eval --sweep`: freekv at every combination of page size, budget, group-reduction
 * temperature and tau on one trace, each compared with quest (exact selection) at its own
 * page size, budget and temperature, and a recommendation: the cheapest setting that meets
 * every --target.
 *
 * This file holds what needs no device: the axes and targets as the command line gives them,
 * the combinations in sweep order, the recommendation rule, and the table, CSV and JSON
 * output. sweep_run.c runs the combinations. */
#ifndef FKV_EVAL_SWEEP_H
#define FKV_EVAL_SWEEP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "freekv.h"

#define FKV_SWEEP_MAX_VALUES 32          /* per axis */
#define FKV_SWEEP_MAX_COMBINATIONS 4096

typedef struct fkv_sweep_spec {
    int given; /* --sweep was given */
    float tau[FKV_SWEEP_MAX_VALUES];
    uint32_t budget[FKV_SWEEP_MAX_VALUES], page[FKV_SWEEP_MAX_VALUES];
    fkv_group_temp temp[FKV_SWEEP_MAX_VALUES];
    size_t n_tau, n_budget, n_page, n_temp; /* 0: the axis is not swept */
} fkv_sweep_spec;

/* Each target is a least value; NaN: not targeted. */
typedef struct fkv_sweep_targets {
    double mass;       /* mean mass / quest's mean mass */
    double mass_worst; /* the worst step's mass / quest's mass at that step */
    double needles;    /* needles found / needles quest found */
    int given;         /* any --target was given */
} fkv_sweep_targets;

/* One combination. */
typedef struct fkv_sweep_point {
    uint32_t page, budget;
    fkv_group_temp temp;
    float tau;
} fkv_sweep_point;

/* One combination's measurements (quest-relative where it says so). */
typedef struct fkv_sweep_row {
    fkv_sweep_point at;
    int ok;                        /* freekv and quest ran, every measure finite */
    double mass_vs_quest;          /* mean mass / quest's */
    double worst_step_vs_quest;    /* min over steps of the per-step ratio */
    double quest_kept_share;       /* quest's middle pages freekv attended */
    uint32_t needles_of_quest, quest_needles, needles;
    double quest_mass, mass, rel_l2_mean;
    double correction_rate, below_tau, recalled_per_step, bytes_per_step, seconds;
    uint64_t corrections, bytes_recalled; /* totals: the rule compares these exactly */
} fkv_sweep_row;

const char *fkv_sweep_temp_name(fkv_group_temp t); /* "raw", "sqrt-d" */

/* Parses one --sweep word, "tau=0.8,0.9", "budget=512,1024", "page=16,32" or
 * "temp=raw,sqrt-d", into spec. Returns 0, or -1 after printing "freekv eval: --sweep: ..."
 * (an unknown axis, an axis given twice, a bad, repeated or out-of-range value). */
int fkv_sweep_parse_axis(const char *word, fkv_sweep_spec *spec);

/* Parses one --target argument, a comma list of mass=X, mass-worst=X, needles=X. Returns 0,
 * or -1 after printing a message. */
int fkv_sweep_parse_target(const char *arg, fkv_sweep_targets *t);

/* The number of combinations, and the i-th in sweep order (page, budget, temperature, tau
 * from the outermost to the innermost loop); an axis not swept takes its value from base. */
size_t fkv_sweep_count(const fkv_sweep_spec *spec);
fkv_sweep_point fkv_sweep_point_at(const fkv_sweep_spec *spec, const fkv_sweep_point *base,
                                   size_t i);

/* Whether a row that ran meets every target. A needles target is met when quest found no
 * needle at that setting (there is nothing of quest's to keep). */
int fkv_sweep_meets(const fkv_sweep_row *row, const fkv_sweep_targets *t);

/* The recommendation: among the rows that are ok and meet every target, the one with the
 * fewest bytes recalled, then the fewest corrections, then the first in sweep order. -1 when
 * no row qualifies. */
long fkv_sweep_recommend(const fkv_sweep_row *rows, size_t n, const fkv_sweep_targets *t);

/* "mass >= 0.99 x quest (mean), needles >= 1 of quest's" */
void fkv_sweep_targets_string(const fkv_sweep_targets *t, char *buf, size_t size);

/* The table and the recommendation (or the statement that none qualifies). */
void fkv_sweep_print(FILE *f, const fkv_sweep_row *rows, size_t n,
                     const fkv_sweep_targets *t);
/* The same rows as CSV, and as JSON with the targets and the recommendation ("trace" and
 * "device" are written by the caller's fn into the JSON object first). Return 0 or -1 after a
 * message. */
int fkv_sweep_write_csv(const char *path, const fkv_sweep_row *rows, size_t n,
                        const fkv_sweep_targets *t);
int fkv_sweep_write_json(const char *path, const fkv_sweep_row *rows, size_t n,
                         const fkv_sweep_targets *t, void (*head)(FILE *f, void *ctx),
                         void *ctx);

#endif
