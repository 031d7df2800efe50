/* freekv bench: every bad command line exits 2 before any work with a message naming the
 * flag; a run in which no policy ran exits non-zero; --plot never interprets its path; a
 * tiny real run writes CSV and JSON with the fields the report promises. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"

int fkv_bench_main(int argc, char **argv);

/* Runs the bench with argv (NULL-terminated, without the command name) and the stderr it
 * printed in err. */
static int bench_capture(const char *const *args, char *err, size_t err_size) {
    char *argv[64] = {"bench"};
    int argc = 1;
    while (args[argc - 1] && argc < 63) {
        argv[argc] = (char *)args[argc - 1];
        argc++;
    }
    argv[argc] = NULL;
    fflush(stderr);
    FILE *tmp = tmpfile();
    cr_assert_not_null(tmp);
    int saved = dup(2);
    dup2(fileno(tmp), 2);
    int rc = fkv_bench_main(argc, argv);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t n = fread(err, 1, err_size - 1, tmp);
    err[n] = '\0';
    fclose(tmp);
    return rc;
}

typedef struct bad_case {
    const char *args[8];
    const char *names; /* what the message must mention */
} bad_case;

/* The command lines of the audit (each on a tiny CPU geometry where one is needed) and
 * more: numbers that wrap, overflow or are not numbers, geometry the library refuses,
 * empty or duplicate lists, unusable output paths. */
static const bad_case bad_cases[] = {
    {{"--warmup", "4294967295", "--steps", "1"}, "--warmup"},
    {{"--steps", "4294967295", "--rounds", "4294967295"}, "--steps"},
    {{"--rounds", "4294967295", "--repeat", "4294967295"}, "--rounds"},
    {{"--warmup", "4294967296"}, "--warmup"},
    {{"--steps", "-1"}, "--steps"},
    {{"--steps", "0"}, "--steps"},
    {{"--steps", "1e3"}, "--steps"},
    {{"--steps", "abc"}, "--steps"},
    {{"--steps", ""}, "--steps"},
    {{"--steps", " 3"}, "--steps"},
    {{"--steps", "+3"}, "--steps"},
    {{"--steps", "99999999999999999999999"}, "--steps"},
    {{"--rounds", "0"}, "--rounds"},
    {{"--repeat", "0"}, "--repeat"},
    {{"--batch", "0"}, "--batch"},
    {{"--batch", "5000"}, "--batch"},
    {{"--kv-heads", "3"}, "--kv-heads"},
    {{"--kv-heads", "0"}, "--kv-heads"},
    {{"--q-heads", "0"}, "--q-heads"},
    {{"--layers", "0"}, "--layers"},
    {{"--layers", "5000"}, "--layers"},
    {{"--head-dim", "1"}, "--head-dim"},
    {{"--head-dim", "66"}, "--head-dim"},
    {{"--page", "0"}, "--page"},
    {{"--page", "257"}, "--page"},
    {{"--page", "48"}, "--page"},
    {{"--sink", "17"}, "--sink"},
    {{"--window", "16"}, "--window"},
    {{"--budget", "0"}, "--budget"},
    {{"--budget", "100"}, "--budget"},
    {{"--context", "0"}, "--context"},
    {{"--context", "16777217"}, "--context"},
    {{"--context", "12,abc"}, "--context"},
    {{"--context", "1,,2"}, "--context"},
    {{"--context", ""}, "--context"},
    {{"--context", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"}, "--context"},
    {{"--policies", ""}, "--policies"},
    {{"--policies", "dense,fast"}, "--policies"},
    {{"--policies", "sync,"}, "--policies"},
    {{"--policies", "sync,sync"}, "--policies"},
    {{"--workload", "bogus"}, "--workload"},
    {{"--workload", ""}, "--workload"},
    {{"--drift", "0.1"}, "--drift"},
    {{"--workload", "custom", "--drift", "2"}, "--drift"},
    {{"--workload", "custom", "--drift-share", "-0.1"}, "--drift-share"},
    {{"--tau", "2"}, "--tau"},
    {{"--tau", "nan"}, "--tau"},
    {{"--tau", "inf"}, "--tau"},
    {{"--tau", "0x1p-1"}, "--tau"},
    {{"--weights-mib", "-1"}, "--weights-mib"},
    {{"--weights-mib", "1e9"}, "--weights-mib"},
    {{"--dtype", "f8"}, "--dtype"},
    {{"--host-format", "q2"}, "--host-format"},
    {{"--summary-format", "f8"}, "--summary-format"},
    {{"--preset", "gpt-5"}, "--preset"},
    {{"--seed", "-1"}, "--seed"},
    {{"--csv", "/nonexistent-dir/x.csv"}, "--csv"},
    {{"--json", "/nonexistent-dir/x.json"}, "--json"},
    {{"--plot", "/nonexistent-dir/x.png"}, "--plot"},
    {{"--bogus", "1"}, "--bogus"},
    {{"--steps"}, "--steps"},
    {{"--counters=1"}, "--counters=1"},
    {{"--counters", "1"}, "1 needs a value"},
    {{"--steps", "--counters"}, "--steps"},
};

Test(bench_args, bad_arguments_exit_2_naming_the_flag) {
    char err[4096];
    for (size_t i = 0; i < sizeof bad_cases / sizeof *bad_cases; i++) {
        const bad_case *c = &bad_cases[i];
        /* the CPU reference, so a case that slipped through would not pick a device */
        const char *args[12] = {"--backend", "cpu"};
        size_t n = 2;
        for (size_t k = 0; c->args[k]; k++)
            args[n++] = c->args[k];
        args[n] = NULL;
        int rc = bench_capture(args, err, sizeof err);
        cr_expect_eq(rc, 2, "case %zu (%s %s): exit %d, stderr: %s", i, c->args[0],
                     c->args[1] ? c->args[1] : "", rc, err);
        cr_expect(strstr(err, c->names) != NULL, "case %zu (%s): message does not name %s: %s",
                  i, c->args[0], c->names, err);
        cr_expect(strstr(err, "does not fit") == NULL, "case %zu: %s", i, err);
    }
}

/* An unknown backend name is a bad argument (2); a device that is not there, a run error (1). */
Test(bench_args, bad_device_is_an_error) {
    char err[4096];
    const char *nope[] = {"--backend", "nope", NULL};
    cr_assert_eq(bench_capture(nope, err, sizeof err), 2, "%s", err);
    setenv("FREEKV_DEVICE", "no-such-device", 1);
    const char *cpu[] = {"--backend", "cpu", NULL};
    cr_assert_eq(bench_capture(cpu, err, sizeof err), 1, "%s", err);
    unsetenv("FREEKV_DEVICE");
}

/* Valid arguments, but the device cannot hold any policy: the run exits non-zero. */
Test(bench_args, no_policy_ran_exits_nonzero) {
    char err[4096];
    setenv("FREEKV_CPU_DEVICE_MEMORY", "64K", 1);
    const char *args[] = {"--backend", "cpu", "--layers", "2", "--context", "600",
                          "--rounds", "2", "--weights-mib", "0", NULL};
    int rc = bench_capture(args, err, sizeof err);
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
    cr_expect_eq(rc, 1, "exit %d: %s", rc, err);
    cr_expect(strstr(err, "no policy ran") != NULL, "%s", err);
}

/* A path that would run a command if it were spliced into gnuplot's script: the plot is
 * written under exactly that name and nothing runs. */
Test(bench_args, plot_path_is_never_interpreted) {
    if (!bench_in_path("gnuplot"))
        cr_skip_test("gnuplot is not installed (apt-get install gnuplot-nox)");
    const char *path = "inj'; system('touch bench_args_INJECTED'); '\".png";
    remove("bench_args_INJECTED");
    remove(path);
    char err[8192];
    const char *args[] = {"--backend", "cpu", "--layers", "2", "--context", "600,900",
                          "--rounds", "2", "--weights-mib", "1", "--policies", "sync,freekv",
                          "--workload", "reasoning", "--plot", path, NULL};
    int rc = bench_capture(args, err, sizeof err);
    cr_expect_eq(rc, 0, "exit %d: %s", rc, err);
    cr_expect_neq(access("bench_args_INJECTED", F_OK), 0, "the path ran a command");
    cr_expect_eq(access(path, F_OK), 0, "the plot was not written under its literal name");
    remove("bench_args_INJECTED");
    remove(path);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static size_t count(const char *s, const char *what) {
    size_t n = 0;
    for (const char *p = s; (p = strstr(p, what)) != NULL; p += strlen(what))
        n++;
    return n;
}

Test(bench_args, tiny_run_writes_csv_and_json) {
    char err[8192];
    const char *args[] = {"--backend", "cpu", "--layers", "2", "--context", "600,900",
                          "--rounds", "3", "--steps", "2", "--weights-mib", "1",
                          "--csv", "bench_args.csv", "--json", "bench_args.json", NULL};
    int rc = bench_capture(args, err, sizeof err);
    cr_assert_eq(rc, 0, "exit %d: %s", rc, err);
    char *csv = slurp("bench_args.csv");
    /* header + 2 contexts x 2 workloads x 6 policies */
    cr_expect_eq(count(csv, "\n"), 1 + 2 * 2 * 6, "%s", csv);
    cr_expect_eq(count(csv, "reasoning,freekv,"), 2);
    char *json = slurp("bench_args.json");
    size_t results = 2 * 2 * 6;
    cr_expect_eq(count(json, "\"policy\": "), results);
    cr_expect_eq(count(json, "\"ratio_to_freekv\": {\"median\": "), results + results,
                 "every result and every repeat carries its ratio");
    cr_expect_eq(count(json, "\"ci95\": ["), 2 * results);
    static const char *const fields[] = {
        "\"blocked_recall_ms_per_step\": ", "\"blocked_select_ms_per_step\": ",
        "\"blocked_correction_ms_per_step\": ", "\"recall_bytes_per_step\": ",
        "\"recall_engine_ms_per_step\": ", "\"tail\": ", "\"samples\": 6,"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        cr_expect_eq(count(json, fields[i]), results, "%s", fields[i]);
    cr_expect_eq(count(json, "\"tail\": \"max\""), results, "6 samples support no quantile");
    cr_expect_eq(count(json, "\"cosine_below_tau\": "), 2 * 2);
    cr_expect_eq(count(json, "\"load_average_start\": "), 1);
    cr_expect_eq(count(json, "\"hidden"), 0);
    /* the counters always, without --counters: the CPU reference counts, so numbers */
    cr_expect_eq(count(json, "\"counters\": {\"commands_per_layer_step\": "), results);
    cr_expect_eq(count(json, "\"commands_per_layer_step\": null"), 0);
    static const char *const counters[] = {
        "\"submits_per_layer_step\": ", "\"device_allocs_per_layer_step\": ",
        "\"caller_waits_per_layer_step\": ", "\"h2d_bytes_per_layer_step\": "};
    for (size_t i = 0; i < sizeof counters / sizeof *counters; i++)
        cr_expect_eq(count(json, counters[i]), results, "%s", counters[i]);
    remove("bench_args.csv");
    remove("bench_args.json");
}

/* The recall bytes per step of a sync run (its selections do not depend on timing) in a host
 * format, from the JSON; the parameter line names the format. */
static double recall_bytes(const char *format) {
    char err[8192];
    const char *args[] = {"--backend", "cpu", "--layers", "2", "--context", "900",
                          "--policies", "sync", "--workload", "long-input", "--rounds", "2",
                          "--steps", "2", "--weights-mib", "1", "--host-format", format,
                          "--json", "bench_args_hf.json", NULL};
    int rc = bench_capture(args, err, sizeof err);
    cr_assert_eq(rc, 0, "exit %d: %s", rc, err);
    char *json = slurp("bench_args_hf.json");
    char want[64];
    snprintf(want, sizeof want, "\"host_format\": \"%s\"", format);
    cr_expect_eq(count(json, want), 1, "%s", json);
    const char *at = strstr(json, "\"recall_bytes_per_step\": ");
    cr_assert_not_null(at, "%s", json);
    double bytes = strtod(at + strlen("\"recall_bytes_per_step\": "), NULL);
    remove("bench_args_hf.json");
    return bytes;
}

/* --host-format: the recalled bytes shrink exactly by the unit ratio of the layout (data and
 * f16 scales together; the small preset: page 16, d 64, f16 units of 4096 bytes). */
Test(bench_args, host_format_shrinks_recall_bytes_by_the_unit_ratio) {
    double same = recall_bytes("same"), q8 = recall_bytes("q8"), q4 = recall_bytes("q4");
    cr_assert_gt(same, 0);
    cr_expect_float_eq(q8 / same, 2368.0 / 4096.0, 1e-12, "q8: %g of %g", q8, same);
    cr_expect_float_eq(q4 / same, 1344.0 / 4096.0, 1e-12, "q4: %g of %g", q4, same);
}

/* --summary-format reaches every policy's config (f32 by default). */
Test(bench_args, summary_format_reaches_the_config) {
    const char *lines[][4] = {{"bench", NULL}, {"bench", "--summary-format", "f16", NULL}};
    for (int i = 0; i < 2; i++) {
        bench_options o;
        int preset;
        cr_assert_eq(bench_parse_args(i ? 3 : 1, (char **)lines[i], 0, &o, &preset), 0);
        fkv_config c;
        bench_config(&o, 1024, FKV_POLICY_FREEKV, &c);
        cr_expect_eq(c.summary_format, i ? FKV_SUMMARY_F16 : FKV_SUMMARY_F32, "line %d", i);
    }
}

/* --counters is the one flag without a value: anywhere on the line, it sets the option and
 * the next flag keeps its own value. */
Test(bench_args, counters_flag_takes_no_value) {
    const char *lines[][8] = {
        {"bench", "--counters", NULL},
        {"bench", "--counters", "--steps", "5", NULL},
        {"bench", "--steps", "5", "--counters", NULL},
        {"bench", "--rounds", "2", "--counters", "--steps", "5", NULL},
    };
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
        int argc = 0;
        while (lines[i][argc])
            argc++;
        bench_options o;
        int preset;
        cr_assert_eq(bench_parse_args(argc, (char **)lines[i], 0, &o, &preset), 0, "line %zu",
                     i);
        cr_expect_eq(o.counters, 1, "line %zu", i);
        cr_expect_eq(o.steps, i == 0 ? 3u : 5u, "line %zu", i);
    }
    const char *plain[] = {"bench", "--steps", "5", NULL};
    bench_options o;
    int preset;
    cr_assert_eq(bench_parse_args(3, (char **)plain, 0, &o, &preset), 0);
    cr_expect_eq(o.counters, 0);
}

/* The value after `key` in the result of `policy` (the first one in the file). */
static double json_value(const char *json, const char *policy, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"policy\": \"%s\"", policy);
    const char *r = strstr(json, pat);
    cr_assert_not_null(r, "%s", pat);
    const char *k = strstr(r, key);
    cr_assert_not_null(k, "%s", key);
    return strtod(k + strlen(key), NULL);
}

/* The counters leave out the bench's own layer pass (one device copy per layer): the same
 * deterministic policy counts the same commands with and without the weights. */
Test(bench_args, counters_leave_out_the_bench_layer_pass) {
    double commands[2], submits[2];
    for (int w = 0; w < 2; w++) {
        char err[8192];
        const char *args[] = {"--backend", "cpu", "--layers", "2", "--context", "600",
                              "--rounds", "2", "--steps", "2", "--policies", "sync",
                              "--workload", "reasoning", "--counters", "--weights-mib",
                              w ? "1" : "0", "--json", "bench_args_counters.json", NULL};
        int rc = bench_capture(args, err, sizeof err);
        cr_assert_eq(rc, 0, "exit %d: %s", rc, err);
        char *json = slurp("bench_args_counters.json");
        commands[w] = json_value(json, "sync", "\"commands_per_layer_step\": ");
        submits[w] = json_value(json, "sync", "\"submits_per_layer_step\": ");
        remove("bench_args_counters.json");
    }
    cr_expect_gt(commands[0], 0);
    cr_expect_eq(commands[0], commands[1], "commands %g without weights, %g with", commands[0],
                 commands[1]);
    cr_expect_eq(submits[0], submits[1], "submits %g without weights, %g with", submits[0],
                 submits[1]);
}
