/* Running `freekv eval --sweep` on a loaded trace (sweep.h has the rest). */
#ifndef FKV_EVAL_SWEEP_RUN_H
#define FKV_EVAL_SWEEP_RUN_H

#include "cli.h"
#include "report.h"

/* Runs freekv at every combination of o->sweep, in sweep order, with dense once per page size
 * and quest once per (page size, budget, temperature), the exact masses rebuilt per page size;
 * prints the table and the recommendation, writes --csv and --json. base: the configuration
 * of the axes not swept. A progress bar goes to stderr when it is a terminal. Returns the exit
 * status: 0, or 1 when a run failed or an output could not be written. */
int fkv_eval_sweep_run(fkv_device *dev, const fkv_config *base, const fkv_eval_options *o,
                       const fkv_trace *tr, const double *group_cos,
                       const fkv_eval_about *about);

#endif
