/* `freekv eval` arguments: bad ones give a clear message and exit status 2 (never a crash);
 * good ones run on the CPU reference backend and write CSV/JSON. */
#include <criterion/criterion.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trace.h"

int fkv_eval_main(int argc, char **argv);

/* Removes a temporary directory and its files (tests leave nothing behind in /tmp). */
static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *dir) { nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS); }

static char err_path[64], out_path[64];

/* Each test runs in its own process: send stdout/stderr to files we can read back. */
static void capture(void) {
    snprintf(err_path, sizeof err_path, "/tmp/fkv_eval_err_%d", (int)getpid());
    snprintf(out_path, sizeof out_path, "/tmp/fkv_eval_out_%d", (int)getpid());
    cr_assert_not_null(freopen(err_path, "w", stderr));
    cr_assert_not_null(freopen(out_path, "w", stdout));
    setenv("FREEKV_BACKEND", "cpu", 1);
    unsetenv("FREEKV_DEVICE");
}

static void cleanup(void) {
    unlink(err_path);
    unlink(out_path);
}

static char *slurp(const char *path) {
    static char buf[1 << 16];
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* Runs fkv_eval_main("eval", args..., NULL). */
static int run(const char *first, ...) {
    char *argv[64];
    int argc = 0;
    argv[argc++] = "eval";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    int rc = fkv_eval_main(argc, argv);
    fflush(stdout);
    fflush(stderr);
    return rc;
}

static void expect_usage_error(const char *msg, const char *first, ...) {
    char *argv[64];
    int argc = 0;
    argv[argc++] = "eval";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    cr_assert_not_null(freopen(err_path, "w", stderr));
    int rc = fkv_eval_main(argc, argv);
    fflush(stderr);
    const char *err = slurp(err_path);
    cr_expect_eq(rc, 2, "exit status %d for %s ... (stderr: %s)", rc, first, err);
    cr_expect(err && strstr(err, msg) != NULL, "stderr for %s lacks '%s': %s", first, msg, err);
}

TestSuite(eval_args, .init = capture, .fini = cleanup);

Test(eval_args, help) {
    cr_expect_eq(run("--help", NULL), 0);
    cr_expect_eq(run("-h", NULL), 0);
    const char *out = slurp(out_path);
    cr_expect(out && strstr(out, "--policies") && strstr(out, "--trace"), "usage: %s", out);
}

Test(eval_args, bad_flags_and_values) {
    expect_usage_error("unknown option '--bogus'", "--bogus", "1", NULL);
    expect_usage_error("unexpected argument 'extra'", "extra", NULL);
    expect_usage_error("--layers needs a value", "--layers", NULL);
    expect_usage_error("--layers: 'x' is not a non-negative integer", "--layers", "x", NULL);
    expect_usage_error("--layers: '-1' is not", "--layers", "-1", NULL);
    expect_usage_error("--layers: '4x' is not", "--layers=4x", NULL);
    expect_usage_error("--layers: '' is not", "--layers=", NULL);
    expect_usage_error("--steps: '99999999999' is not", "--steps", "99999999999", NULL);
    expect_usage_error("--tau: 'abc' is not a number", "--tau", "abc", NULL);
    expect_usage_error("--drift: 'nan' is not a number", "--drift", "nan", NULL);
    expect_usage_error("--drift: 'inf' is not a number", "--drift", "inf", NULL);
    expect_usage_error("unknown policy 'fast'", "--policies", "quest,fast", NULL);
    expect_usage_error("--policies: bad list", "--policies", "", NULL);
    expect_usage_error("--dtype: 'f64' is not f32, f16 or bf16", "--dtype", "f64", NULL);
    expect_usage_error("--group-reduce: 'sum' is not", "--group-reduce", "sum", NULL);
}

Test(eval_args, bad_geometry_and_budget) {
    expect_usage_error("--layers 0: must be 1..1024", "--layers", "0", NULL);
    expect_usage_error("--q-heads 6: must be", "--q-heads", "6", "--kv-heads", "4", NULL);
    expect_usage_error("--head-dim 18", "--head-dim", "18", NULL);
    expect_usage_error("--context 4: must be", "--context", "4", NULL);
    expect_usage_error("--steps 0", "--steps", "0", NULL);
    expect_usage_error("--needles 100", "--needles", "100", NULL);
    expect_usage_error("--needles 3: at most one per decode step", "--needles", "3", "--steps",
                       "2", NULL);
    expect_usage_error("--jump-prob 1.5", "--jump-prob", "1.5", NULL);
    expect_usage_error("--heavy-span 0", "--heavy-span", "0", NULL);
    expect_usage_error("budget_tokens = 500", "--budget", "500", NULL);
    expect_usage_error("sink_tokens = 8", "--sink", "8", NULL);
    expect_usage_error("window_tokens = 16", "--window", "16", NULL);
    expect_usage_error("page_size = 0", "--page", "0", NULL);
    expect_usage_error("tau = 2", "--tau", "2", NULL);
    expect_usage_error("--layers 2000: must be 1..1024", "--layers", "2000", NULL);
    expect_usage_error("budget_tokens = 64", "--budget", "64", NULL);
}

Test(eval_args, bad_trace_usage) {
    expect_usage_error("--trace /nonexistent/trace: not a directory", "--trace",
                       "/nonexistent/trace", NULL);
    expect_usage_error("--head-dim describes the synthetic trace", "--trace", "/tmp",
                       "--head-dim", "64", NULL);
    expect_usage_error("--drift describes the synthetic trace", "--trace", "/tmp", "--drift",
                       "0.5", NULL);
    expect_usage_error("--save-trace writes the synthetic trace", "--trace", "/tmp",
                       "--save-trace", "/tmp", NULL);
    expect_usage_error("--layers must be at least 1", "--trace", "/tmp", "--layers", "0", NULL);
}

Test(eval_args, unusable_device_is_a_run_error) {
    /* short runs: the needle count and span defaults shrink to fit */
    int rc = run("--layers", "1", "--context", "32", "--steps", "1", "--page", "4", "--budget",
                 "16", "--sink", "4", "--window", "8", "--backend", "nosuchbackend", NULL);
    cr_expect_eq(rc, 1);
    cr_expect(strstr(slurp(err_path), "nosuchbackend") != NULL, "%s", slurp(err_path));
}

#define TINY "--layers", "2", "--q-heads", "4", "--kv-heads", "2", "--head-dim", "32", \
             "--context", "512", "--steps", "6", "--page", "8", "--budget", "128", "--sink", "16", \
             "--window", "32"

Test(eval_args, tiny_run_writes_csv_and_json) {
    char csv[96], json[96];
    snprintf(csv, sizeof csv, "/tmp/fkv_eval_%d.csv", (int)getpid());
    snprintf(json, sizeof json, "/tmp/fkv_eval_%d.json", (int)getpid());
    int rc = run(TINY, "--csv", csv, "--json", json, NULL);
    cr_assert_eq(rc, 0, "stderr: %s", slurp(err_path));
    const char *out = slurp(out_path);
    cr_expect(strstr(out, "freekv ") && strstr(out, "oracle"), "%s", out);
    const char *c = slurp(csv);
    cr_assert_not_null(c);
    cr_expect(strncmp(c, "policy,ok,rel_l2_mean", 21) == 0, "%s", c);
    int lines = 0;
    for (const char *p = c; *p; p++)
        lines += *p == '\n';
    cr_expect_eq(lines, 1 + 5 + 1, "csv: %s", c); /* header, 5 policies, oracle */
    cr_expect(strstr(c, "\ndense,1,0,0,1.000000,1.000000,") != NULL, "%s", c);
    const char *j = slurp(json);
    cr_assert_not_null(j);
    cr_expect(strstr(j, "\"policy\": \"freekv\", \"ok\": true") != NULL, "%s", j);
    unlink(csv);
    unlink(json);
}

Test(eval_args, policies_subset_and_saved_trace) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/fkv_eval_dir_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(run(TINY, "--policies", "quest,freekv", "--save-trace", dir, "--dtype", "bf16",
                     NULL), 0, "%s", slurp(err_path));
    const char *out = slurp(out_path);
    cr_expect(strstr(out, "\nquest ") && strstr(out, "\nfreekv ") && !strstr(out, "\nsync "),
              "%s", out);
    /* the saved directory runs as a --trace (sharing the page settings) */
    cr_assert_eq(run("--trace", dir, "--steps", "3", "--layers", "1", "--page", "8", "--budget",
                     "128", "--sink", "16", "--window", "32", NULL), 0, "%s", slurp(err_path));
    out = slurp(out_path);
    cr_expect(strstr(out, "1 layers, 4/2 heads, d 32, prompt 512, 3 steps") != NULL, "%s", out);
    /* the budget settings must suit the trace */
    cr_expect_eq(run("--trace", dir, "--page", "8", "--sink", "12", NULL), 2);
    cr_expect(strstr(slurp(err_path), "sink_tokens = 12") != NULL, "%s", slurp(err_path));
    /* a corrupted array is a run error with the file named, not a crash */
    char path[128];
    snprintf(path, sizeof path, "%s/v_0.npy", dir);
    cr_assert_eq(truncate(path, 200), 0); /* header 128 bytes, then part of the data */
    cr_expect_eq(run("--trace", dir, "--page", "8", "--budget", "128", "--sink", "16", "--window",
                     "32", NULL), 1);
    cr_expect(strstr(slurp(err_path), "v_0.npy: truncated .npy data") != NULL, "%s",
              slurp(err_path));
    remove_tree(dir);
}
