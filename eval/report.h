/* The output of one `freekv eval` run: the table, the quest-relative table, CSV and JSON
 * (docs/eval.md). */
#ifndef FKV_EVAL_REPORT_H
#define FKV_EVAL_REPORT_H

#include <stdio.h>

#include "freekv.h"
#include "run.h"
#include "trace.h"

/* What the outputs say about the run's inputs. */
typedef struct fkv_eval_about {
    const fkv_trace_info *trace;
    const fkv_device_info *device;
    const fkv_config *cfg;
    double cos_mean;    /* adjacent-step query cosine, mean over query heads */
    double group_below; /* group cosines below cfg->tau; NaN: not one tau (a sweep) */
    int sweep;          /* page, budget, tau and temperature vary per row */
} fkv_eval_about;

const char *fkv_eval_reduce_name(fkv_group_reduce r); /* "softmax-mean", "mean", "max" */

/* An output file of `flag` (--csv, --json, --dump) opened for writing, or NULL after
 * "freekv eval: FLAG PATH: why"; closed with the same kind of message when the write failed
 * (returns -1). */
FILE *fkv_eval_open_output(const char *flag, const char *path);
int fkv_eval_close_output(FILE *f, const char *flag, const char *path);

void fkv_eval_print_table(FILE *f, const fkv_eval_result *res, int n, double oracle_mean,
                          double oracle_min);
/* Return 0, or -1 after a message naming the flag and the path. */
int fkv_eval_write_csv(const char *path, const fkv_eval_result *res, int n, double oracle_mean,
                       double oracle_min);
int fkv_eval_write_json(const char *path, const fkv_eval_about *about,
                        const fkv_eval_result *res, int n, double oracle_mean,
                        double oracle_min);
/* The "trace", "device" and "config" members (each line ends with a comma), for the sweep's
 * JSON as well: `about` is a const fkv_eval_about *. */
void fkv_eval_json_head(FILE *f, void *about);

#endif
