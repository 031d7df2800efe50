/* freekv bench: the report (tables on stdout, CSV, JSON, and a plot through gnuplot). */
#define _DEFAULT_SOURCE /* mkstemp */
#include <errno.h>
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

extern char **environ;

/* "%.*f" of x into buf, or "-" when x is not a number */
static const char *num(char *buf, size_t size, int prec, double x) {
    if (isnan(x) || isinf(x))
        snprintf(buf, size, "-");
    else
        snprintf(buf, size, "%.*f", prec, x);
    return buf;
}

void bench_print_exercise(const bench_exercise *ex, float tau) {
    char rate[64] = "freekv did not run";
    if (!isnan(ex->freekv_rate))
        snprintf(rate, sizeof rate, "freekv corrected %.1f%% of its measured checks",
                 100 * ex->freekv_rate);
    printf("\nworkload %s at %u tokens (drift %.3f, spread %.2f, share %.2f): group-mean "
           "adjacent-step cosine p10 %.3f, p50 %.3f, p90 %.3f over %zu KV-head steps; below tau "
           "%.2f: %.1f%%; %s\n",
           ex->drift.name, ex->context, ex->drift.drift, ex->drift.spread, ex->drift.share,
           ex->cos_p10, ex->cos_p50, ex->cos_p90, ex->n_cos, (double)tau, 100 * ex->below_tau,
           rate);
}

void bench_print_table(const bench_result *res, size_t n, const char *workload) {
    printf("%80s%-22s%s\n", "", "caller blocked ms/step", "   recall per step");
    printf("%-15s %8s %9s %11s %8s  %-20s %7s %7s %7s %8s %9s %9s %8s %8s\n", "policy",
           "context", "median ms", "tail ms", "tok/s", "x freekv [95% CI]", "recall", "select",
           "correct", "MB", "engine ms", "corrected", "host MiB", "dev MiB");
    for (size_t i = 0; i < n; i++) {
        const bench_result *r = &res[i];
        if (strcmp(r->workload, workload) != 0)
            continue;
        if (!r->ran) {
            printf("%-15s %8u   not run: %s\n", r->policy, r->context, r->note);
            continue;
        }
        char tail[32], ratio[48], corrected[16], a[16], b[16], c[16], d[16], e[16], g[16];
        snprintf(tail, sizeof tail, "%.2f %s", r->tail_ms, r->tail_label);
        if (isnan(r->ratio))
            snprintf(ratio, sizeof ratio, "-");
        else
            snprintf(ratio, sizeof ratio, "%.2f [%.2f-%.2f]", r->ratio, r->ratio_lo, r->ratio_hi);
        if (isnan(r->correction_rate))
            snprintf(corrected, sizeof corrected, "-");
        else
            snprintf(corrected, sizeof corrected, "%.1f%%", 100 * r->correction_rate);
        printf("%-15s %8u %9.2f %11s %8.1f  %-20s %7s %7s %7s %8s %9s %9s %8s %8.1f\n",
               r->policy, r->context, r->median_ms, tail, r->tokens_per_s, ratio,
               num(a, sizeof a, 2, r->blocked_recall_ms), num(b, sizeof b, 2, r->blocked_select_ms),
               num(c, sizeof c, 2, r->blocked_correction_ms),
               num(d, sizeof d, 3, r->recall_bytes / 1e6), num(e, sizeof e, 2, r->engine_ms),
               corrected, num(g, sizeof g, 1, r->host_mib), r->device_mib);
    }
}

void bench_print_counters(const bench_result *res, size_t n, const char *workload) {
    printf("\ndevice commands per layer-step (%s)\n", workload);
    printf("%-15s %8s %9s %8s %8s %8s %7s %7s %7s %7s %10s %10s\n", "policy", "context",
           "commands", "launches", "copies", "submits", "caller", "worker", "dev", "host",
           "h2d KiB", "d2h KiB");
    printf("%-15s %8s %9s %8s %8s %8s %7s %7s %7s %7s\n", "", "", "", "", "", "", "waits",
           "waits", "allocs", "allocs");
    for (size_t i = 0; i < n; i++) {
        const bench_result *r = &res[i];
        if (strcmp(r->workload, workload) != 0 || !r->ran)
            continue;
        const bench_counts *c = &r->counts;
        if (isnan(c->commands)) {
            printf("%-15s %8u   not counted: the device does not count commands\n", r->policy,
                   r->context);
            continue;
        }
        printf("%-15s %8u %9.2f %8.2f %8.2f %8.2f %7.2f %7.2f %7.2f %7.2f %10.1f %10.1f\n",
               r->policy, r->context, c->commands, c->launches, c->copies, c->submits,
               c->caller_waits, c->worker_waits, c->device_allocs, c->host_allocs,
               c->h2d_bytes / 1024, c->d2h_bytes / 1024);
    }
}

/* One line per cell; returns whether a repeat's ratio lies outside another's interval. */
static int repeat_line(const bench_options *o, const bench_result *r, int print) {
    double lo = INFINITY, hi = -INFINITY;
    int disagree = 0;
    if (print)
        printf("%-11s %-15s %8u:", r->workload, r->policy, r->context);
    for (uint32_t k = 0; k < o->repeat; k++) {
        if (print)
            printf("  #%u %.2f", k + 1, r->rep_median_ms[k]);
        if (isnan(r->rep_ratio[k]))
            continue;
        if (print)
            printf(" %.2f [%.2f-%.2f]", r->rep_ratio[k], r->rep_lo[k], r->rep_hi[k]);
        lo = fmin(lo, r->rep_ratio[k]);
        hi = fmax(hi, r->rep_ratio[k]);
        for (uint32_t j = 0; j < o->repeat; j++)
            disagree |= !isnan(r->rep_ratio[j]) &&
                        (r->rep_ratio[k] < r->rep_lo[j] || r->rep_ratio[k] > r->rep_hi[j]);
    }
    if (print)
        printf(hi >= lo ? "  spread %.2f-%.2f\n" : "\n", lo, hi);
    return disagree;
}

int bench_check_repeats(const bench_options *o, const bench_result *res, size_t n) {
    if (o->repeat < 2)
        return 0;
    printf("\nrepeats: median ms, ratio to freekv [95%% CI] of each\n");
    for (size_t i = 0; i < n; i++)
        if (res[i].ran)
            repeat_line(o, &res[i], 1);
    fflush(stdout);
    int warned = 0;
    for (size_t i = 0; i < n; i++)
        if (res[i].ran && repeat_line(o, &res[i], 0)) {
            fprintf(stderr, "freekv bench: warning: %s %s at %u: a repeat's ratio lies outside "
                            "another repeat's 95%% interval\n",
                    res[i].workload, res[i].policy, res[i].context);
            warned++;
        }
    return warned;
}

int bench_write_csv(const char *path, const bench_result *res, size_t n) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "freekv bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "workload,policy,context,ran,samples,median_ms,tail_ms,tail,tokens_per_s,"
               "ratio_to_freekv,ratio_ci95_lo,ratio_ci95_hi,blocked_recall_ms_per_step,"
               "blocked_select_ms_per_step,blocked_correction_ms_per_step,recall_bytes_per_step,"
               "recall_engine_ms_per_step,correction_rate,host_mib,device_mib,note\n");
    for (size_t i = 0; i < n; i++) {
        const bench_result *r = &res[i];
        fprintf(f, "%s,%s,%u,%d,%zu,%.4f,%.4f,%s,%.3f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.1f,%.4f,"
                   "%.4f,%.2f,%.2f,\"",
                r->workload, r->policy, r->context, r->ran, r->samples, r->median_ms,
                r->tail_ms, r->tail_label, r->tokens_per_s, r->ratio, r->ratio_lo, r->ratio_hi,
                r->blocked_recall_ms, r->blocked_select_ms, r->blocked_correction_ms,
                r->recall_bytes, r->engine_ms, r->correction_rate, r->host_mib, r->device_mib);
        for (const char *c = r->note; *c; c++)
            fprintf(f, *c == '"' ? "\"\"" : "%c", *c);
        fprintf(f, "\"\n");
    }
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static void jstr(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c < 0x20)
            fprintf(f, "\\u%04x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

static void jnum(FILE *f, double x) {
    if (isnan(x) || isinf(x))
        fprintf(f, "null");
    else
        fprintf(f, "%.6g", x);
}

static void jratio(FILE *f, double m, double lo, double hi) {
    if (isnan(m)) {
        fprintf(f, "null");
        return;
    }
    fprintf(f, "{\"median\": ");
    jnum(f, m);
    fprintf(f, ", \"ci95\": [");
    jnum(f, lo);
    fprintf(f, ", ");
    jnum(f, hi);
    fprintf(f, "]}");
}

static void jfield(FILE *f, const char *name, double x) {
    fprintf(f, ", \"%s\": ", name);
    jnum(f, x);
}

int bench_write_json(const char *path, const bench_options *o, const fkv_device_info *info,
                     const bench_run_info *run, const bench_exercise *ex, size_t n_ex,
                     const bench_result *res, size_t n) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "freekv bench: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "{\n  \"device\": {\"backend\": ");
    jstr(f, info->backend);
    fprintf(f, ", \"name\": ");
    jstr(f, info->name);
    fprintf(f, ", \"driver\": ");
    jstr(f, info->driver);
    fprintf(f, ", \"type\": ");
    jstr(f, fkv_device_type_name(info->type));
    fprintf(f, "},\n  \"geometry\": {\"preset\": ");
    jstr(f, o->p.name);
    fprintf(f, ", \"layers\": %u, \"q_heads\": %u, \"kv_heads\": %u, \"head_dim\": %u, "
               "\"page\": %u, \"budget\": %u, \"sink\": %u, \"window\": %u, \"dtype\": \"%s\", "
               "\"host_format\": \"%s\", \"summary_format\": \"%s\", \"batch\": %u, "
               "\"weights_mib\": %.1f, \"tau\": %.3f},\n",
            o->p.layers, o->p.q_heads, o->p.kv_heads, o->p.head_dim, o->p.page, o->p.budget,
            o->p.sink, o->p.window, fkv_dtype_name(o->p.dtype),
            fkv_host_format_name(o->host_format), fkv_summary_format_name(o->summary_format),
            o->batch, o->p.weight_mib, (double)o->tau);
    fprintf(f, "  \"run\": {\"date\": ");
    jstr(f, run->date);
    fprintf(f, ", \"rounds\": %u, \"warmup_steps_per_block\": %u, "
               "\"measured_steps_per_block\": %u, \"repeat\": %u, \"seed\": %llu, \"cores\": %ld, "
               "\"load_average_start\": [%.2f, %.2f, %.2f], "
               "\"load_average_end\": [%.2f, %.2f, %.2f], \"memory_available_mib\": %.0f},\n",
            o->rounds, o->warmup, o->steps, o->repeat, (unsigned long long)o->seed, run->cores,
            run->load_start[0], run->load_start[1], run->load_start[2], run->load_end[0],
            run->load_end[1], run->load_end[2], run->mem_available_mib);
    fprintf(f, "  \"workloads\": [\n");
    for (size_t i = 0; i < n_ex; i++) {
        const bench_exercise *e = &ex[i];
        fprintf(f, "    {\"name\": ");
        jstr(f, e->drift.name);
        fprintf(f, ", \"context\": %u", e->context);
        jfield(f, "drift", e->drift.drift);
        jfield(f, "drift_spread", e->drift.spread);
        jfield(f, "drift_share", e->drift.share);
        fprintf(f, ", \"kv_head_steps\": %zu", e->n_cos);
        jfield(f, "cosine_p10", e->cos_p10);
        jfield(f, "cosine_p50", e->cos_p50);
        jfield(f, "cosine_p90", e->cos_p90);
        jfield(f, "cosine_below_tau", e->below_tau);
        jfield(f, "freekv_correction_rate", e->freekv_rate);
        fprintf(f, "}%s\n", i + 1 < n_ex ? "," : "");
    }
    fprintf(f, "  ],\n  \"results\": [\n");
    for (size_t i = 0; i < n; i++) {
        const bench_result *r = &res[i];
        fprintf(f, "    {\"workload\": ");
        jstr(f, r->workload);
        fprintf(f, ", \"policy\": ");
        jstr(f, r->policy);
        fprintf(f, ", \"context\": %u, \"ran\": %s, \"note\": ", r->context,
                r->ran ? "true" : "false");
        jstr(f, r->note);
        fprintf(f, ", \"samples\": %zu", r->samples);
        jfield(f, "median_ms", r->median_ms);
        jfield(f, "tail_ms", r->tail_ms);
        fprintf(f, ", \"tail\": ");
        jstr(f, r->tail_label);
        jfield(f, "tokens_per_s", r->tokens_per_s);
        fprintf(f, ", \"ratio_to_freekv\": ");
        jratio(f, r->ratio, r->ratio_lo, r->ratio_hi);
        jfield(f, "blocked_recall_ms_per_step", r->blocked_recall_ms);
        jfield(f, "blocked_select_ms_per_step", r->blocked_select_ms);
        jfield(f, "blocked_correction_ms_per_step", r->blocked_correction_ms);
        jfield(f, "host_select_ms_per_layer_step", r->host_select_ms);
        jfield(f, "recall_bytes_per_step", r->recall_bytes);
        jfield(f, "recall_engine_ms_per_step", r->engine_ms);
        jfield(f, "correction_rate", r->correction_rate);
        jfield(f, "host_mib", r->host_mib);
        jfield(f, "device_mib", r->device_mib);
        /* always there: null values where the device does not count (or the cell did not
         * run) */
        const bench_counts *c = &r->counts;
        const struct {
            const char *name;
            double value;
        } counters[] = {
            {"commands", c->commands},         {"submits", c->submits},
            {"device_allocs", c->device_allocs}, {"caller_waits", c->caller_waits},
            {"h2d_bytes", c->h2d_bytes},       {"launches", c->launches},
            {"copies", c->copies},             {"worker_waits", c->worker_waits},
            {"host_allocs", c->host_allocs},   {"d2h_bytes", c->d2h_bytes},
        };
        fprintf(f, ", \"counters\": {");
        for (size_t k = 0; k < sizeof counters / sizeof *counters; k++) {
            fprintf(f, "%s\"%s_per_layer_step\": ", k ? ", " : "", counters[k].name);
            jnum(f, counters[k].value);
        }
        fprintf(f, "}");
        fprintf(f, ", \"repeats\": [");
        for (uint32_t k = 0; r->ran && k < o->repeat; k++) {
            fprintf(f, "%s{\"median_ms\": ", k ? ", " : "");
            jnum(f, r->rep_median_ms[k]);
            fprintf(f, ", \"ratio_to_freekv\": ");
            jratio(f, r->rep_ratio[k], r->rep_lo[k], r->rep_hi[k]);
            fprintf(f, "}");
        }
        fprintf(f, "]}%s\n", i + 1 < n ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- plot ----------------------------------------------------------------------------------- */

/* The script is fixed text: the output path and the data file reach gnuplot as the string
 * variables ARG1 and ARG2 of `gnuplot -c script ARG1 ARG2 ARG3`, run without a shell, so
 * nothing in a path is ever parsed as gnuplot or shell commands. */
static const char plot_script[] =
    "set terminal pngcairo size 900,600\n"
    "set output ARG1\n"
    "set xlabel 'context (tokens)'\n"
    "set ylabel 'decode step latency, median (ms)'\n"
    "set logscale x 2\n"
    "set key left top\n"
    "set grid\n"
    "plot for [i=0:int(ARG3)-1] ARG2 index i using 1:2 with linespoints title columnheader(1)\n";

static int temp_file(char *name, const char *text) {
    int fd = mkstemp(name);
    if (fd < 0)
        return -1;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        remove(name);
        return -1;
    }
    int bad = text && fputs(text, f) < 0;
    if (fclose(f) != 0 || bad) {
        remove(name);
        return -1;
    }
    return 0;
}

int bench_write_plot(const char *path, const bench_result *res, size_t n) {
    char data[] = "/tmp/freekv-plot-data-XXXXXX", script[] = "/tmp/freekv-plot-gp-XXXXXX";
    if (temp_file(data, NULL) || temp_file(script, plot_script)) {
        fprintf(stderr, "freekv bench: --plot: temporary file: %s\n", strerror(errno));
        remove(data);
        return -1;
    }
    FILE *f = fopen(data, "w");
    size_t lines = 0;
    /* one data block per (workload, policy), in first-seen order */
    for (size_t i = 0; f && i < n; i++) {
        size_t j = 0;
        while (j < i && !(strcmp(res[j].policy, res[i].policy) == 0 &&
                          strcmp(res[j].workload, res[i].workload) == 0))
            j++;
        if (j < i)
            continue;
        fprintf(f, "\"%s (%s)\"\n", res[i].policy, res[i].workload);
        for (size_t k = i; k < n; k++)
            if (res[k].ran && strcmp(res[k].policy, res[i].policy) == 0 &&
                strcmp(res[k].workload, res[i].workload) == 0)
                fprintf(f, "%u %.4f\n", res[k].context, res[k].median_ms);
        fprintf(f, "\n\n");
        lines++;
    }
    int rc = -1;
    if (f && fclose(f) == 0 && lines) {
        char count[32];
        snprintf(count, sizeof count, "%zu", lines);
        char *argv[] = {"gnuplot", "-c", script, (char *)path, data, count, NULL};
        pid_t pid;
        int err = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ), status = 0;
        if (err)
            fprintf(stderr, "freekv bench: --plot: cannot run gnuplot: %s\n", strerror(err));
        else if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
            fprintf(stderr, "freekv bench: --plot: gnuplot failed (status %d)\n", status);
        else
            rc = 0;
    }
    remove(data);
    remove(script);
    return rc;
}
