/* `freekv eval`'s command line: the options, their parsing and every check that needs no
 * trace and no device (the flags, their combinations, the synthetic trace's parameters, the
 * output paths). eval.c checks the rest against the trace's geometry before any work. */
#ifndef FKV_EVAL_CLI_H
#define FKV_EVAL_CLI_H

#include <stdint.h>

#include "freekv.h"
#include "sweep.h"
#include "trace.h"

#define FKV_EVAL_POLICIES 5

#define FKV_EVAL_EXIT_RUN 1   /* a run, device or file error */
#define FKV_EVAL_EXIT_USAGE 2 /* bad arguments, or settings that cannot suit the trace */

typedef struct fkv_eval_options {
    fkv_synth_params synth;
    const char *trace_dir, *save_trace, *csv, *json, *dump, *backend, *device;
    uint32_t page, budget, sink, window;
    uint32_t max_layers, max_steps; /* trace directories: 0 = all */
    float tau;
    fkv_dtype dtype;
    fkv_group_reduce reduce;
    fkv_group_temp temp;
    fkv_host_format host_format; /* the offload policies' host pool (dense, quest: none) */
    int want[FKV_EVAL_POLICIES]; /* chosen policies, by fkv_policy value */
    fkv_sweep_spec sweep;        /* sweep.given: --sweep */
    fkv_sweep_targets targets;   /* defaults to mass >= 0.99 when a sweep has none */
} fkv_eval_options;

/* Returns 0, 1 after printing the usage (--help), or -1 after printing a message. */
int fkv_eval_parse_args(int argc, char **argv, fkv_eval_options *o);

#endif
