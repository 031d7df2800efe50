/* freekv bench: a model-shaped decode loop that compares the policies on one device,
 * interleaved (harness.c), on workloads whose queries drift like long-input and reasoning
 * traces (workload.c), and reports latency, the ratio to freekv with its interval, where the
 * caller waited, recall traffic, corrections and memory (report.c). */
#define _DEFAULT_SOURCE /* getloadavg */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

static void run_info(bench_run_info *run, int at_start) {
    double *load = at_start ? run->load_start : run->load_end;
    if (getloadavg(load, 3) != 3)
        load[0] = load[1] = load[2] = -1;
    if (!at_start)
        return;
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(run->date, sizeof run->date, "%Y-%m-%d %H:%M UTC", &tm);
    run->cores = sysconf(_SC_NPROCESSORS_ONLN);
    run->mem_available_mib = bench_mem_available_mib();
}

static void warn_load(const bench_run_info *run) {
    fflush(stdout);
    double peak = run->load_start[0] > run->load_end[0] ? run->load_start[0] : run->load_end[0];
    if (run->cores > 0 && peak > (double)run->cores)
        fprintf(stderr, "freekv bench: warning: load average %.2f (at start) / %.2f (at end) "
                        "exceeds the %ld cores: other work shares the machine, timings are noisy "
                        "(the interleaving spreads it over all policies alike)\n",
                run->load_start[0], run->load_end[0], run->cores);
}

int fkv_bench_main(int argc, char **argv) {
    bench_options o;
    int explicit_preset;
    int parsed = bench_parse_args(argc, argv, 0, &o, &explicit_preset);
    if (parsed == 1) /* --help */
        return 0;
    if (parsed != 0) {
        fprintf(stderr, "(freekv bench --help lists the options)\n");
        return 2;
    }
    fkv_device *dev;
    fkv_status st = fkv_device_open(o.backend, o.device, &dev);
    if (st != FKV_OK) {
        fprintf(stderr, "freekv bench: %s\n", fkv_last_error());
        /* an unknown backend name is a bad argument; a missing device is a run error */
        return st == FKV_ERR_INVALID_ARGUMENT || st == FKV_ERR_BAD_ENVIRONMENT ? 2 : 1;
    }
    fkv_device_info info;
    fkv_device_get_info(dev, &info);
    /* a GPU gets the model-sized default unless the user chose; flags still override it */
    if (!explicit_preset && info.type == FKV_DEVICE_DISCRETE_GPU &&
        bench_parse_args(argc, argv, 1, &o, &explicit_preset) != 0) {
        fprintf(stderr, "(freekv bench --help lists the options)\n");
        fkv_device_close(dev);
        return 2;
    }
    bench_run_info run;
    memset(&run, 0, sizeof run);
    run_info(&run, 1);
    printf("freekv bench on %s #%u %s (%s), %s\n", info.backend, info.index, info.name,
           fkv_device_type_name(info.type), run.date);
    printf("preset %s: %u layers, %u/%u heads, d %u, page %u, budget %u (sink %u, window %u), "
           "%s, host format %s, %s summaries, batch %u, %.0f MiB layer weights, tau %.2f\n",
           o.p.name, o.p.layers, o.p.q_heads, o.p.kv_heads, o.p.head_dim, o.p.page, o.p.budget,
           o.p.sink, o.p.window, fkv_dtype_name(o.p.dtype), fkv_host_format_name(o.host_format),
           fkv_summary_format_name(o.summary_format), o.batch, o.p.weight_mib, (double)o.tau);
    printf("interleaved: %u policies x %u rounds of blocks of %u warm-up + %u measured steps, "
           "%u workload(s), %u repeat(s); load average %.2f %.2f %.2f on %ld cores\n",
           o.n_policies, o.rounds, o.warmup, o.steps, o.n_workloads, o.repeat, run.load_start[0],
           run.load_start[1], run.load_start[2], run.cores);
    fflush(stdout);

    size_t per_context = (size_t)o.n_workloads * o.n_policies;
    size_t n = (size_t)o.n_contexts * per_context;
    bench_result *res = calloc(n, sizeof *res);
    bench_exercise *ex = calloc((size_t)o.n_contexts * o.n_workloads, sizeof *ex);
    int rc = 0;
    if (!res || !ex) {
        fprintf(stderr, "freekv bench: out of host memory\n");
        rc = 1;
    }
    for (uint32_t ci = 0; rc == 0 && ci < o.n_contexts; ci++)
        if (bench_run_context(&o, dev, o.contexts[ci], res + ci * per_context,
                              ex + (size_t)ci * o.n_workloads))
            rc = 1;
    run_info(&run, 0);
    fkv_device_close(dev);

    size_t ran = 0;
    for (uint32_t w = 0; res && ex && w < o.n_workloads; w++) {
        for (uint32_t ci = 0; ci < o.n_contexts; ci++)
            bench_print_exercise(&ex[(size_t)ci * o.n_workloads + w], o.tau);
        bench_print_table(res, n, o.workloads[w].name);
        if (o.counters)
            bench_print_counters(res, n, o.workloads[w].name);
    }
    for (size_t i = 0; res && i < n; i++)
        ran += res[i].ran;
    if (res && ex) {
        printf("\nper step: median and tail of the measured steps' latency (all layers, the "
               "batch); x freekv: median over rounds of (the policy's median step time in the "
               "round / freekv's), bootstrap 95%% interval; caller blocked: the wait inside "
               "fkv_decode_layer for recall, selection and correction; recall MB: bytes "
               "recalled for the measured steps; engine ms: host time in the recall engine "
               "(docs/bench.md)\n");
        if (o.counters)
            printf("device commands per layer-step (one fkv_decode_layer call of the whole "
                   "batch), counted at the driver calls over every queue after warm-up, without "
                   "the bench's own layer pass and end-of-step finish: commands = kernel "
                   "launches + copies; waits: blocking host waits on the caller's thread and on "
                   "the speculative worker (docs/bench.md)\n");
        bench_check_repeats(&o, res, n);
    }
    warn_load(&run);
    if (res && ran == 0) {
        fprintf(stderr, "freekv bench: no policy ran\n");
        rc = 1;
    }
    if (res && ex && o.csv && bench_write_csv(o.csv, res, n))
        rc = 1;
    if (res && ex && o.json &&
        bench_write_json(o.json, &o, &info, &run, ex, (size_t)o.n_contexts * o.n_workloads, res,
                         n))
        rc = 1;
    if (res && ex && o.plot && bench_write_plot(o.plot, res, n))
        rc = 1;
    if (res)
        bench_results_free(res, n);
    free(res);
    free(ex);
    return rc;
}
