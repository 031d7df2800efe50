/* `freekv eval` arguments: bad ones give a clear message and exit status 2 (never a crash);
 * good ones run on the CPU reference backend and write CSV/JSON. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "header.h"
#include "npy.h"
#include "tool_run.h"
#include "trace.h"

int fkv_eval_main(int argc, char **argv);

/* Runs `freekv eval` with the arguments (NULL-terminated). */
#define run(...) tr_run(fkv_eval_main, "eval", __VA_ARGS__)

/* The run exits with `status` and says `msg` on stderr; `quiet`: nothing reached stdout,
 * so no work started. */
static void expect_exit(int status, int quiet, const char *msg, const char *first, ...) {
    va_list ap;
    va_start(ap, first);
    int rc = tr_vrun(fkv_eval_main, "eval", first, ap);
    va_end(ap);
    char *err = strdup(tr_stderr());
    cr_assert_not_null(err);
    cr_expect_eq(rc, status, "exit status %d for %s ... (stderr: %s)", rc, first, err);
    cr_expect(strstr(err, msg) != NULL, "stderr for %s lacks '%s': %s", first, msg, err);
    /* every message names the tool once, and the library's status once */
    const char *doubled[] = {"freekv eval: freekv eval", "invalid argument: invalid argument",
                             "invalid configuration: invalid configuration", ": : "};
    for (size_t i = 0; i < sizeof doubled / sizeof *doubled; i++)
        cr_expect(strstr(err, doubled[i]) == NULL, "doubled prefix in: %s", err);
    if (quiet)
        cr_expect(tr_stdout()[0] == '\0', "work started for %s: %s", first, tr_stdout());
    free(err);
}

#define expect_usage_error(msg, ...) expect_exit(2, 0, msg, __VA_ARGS__)
/* Settings that cannot work are refused before the trace is generated or any policy runs. */
#define expect_refused_up_front(msg, ...) expect_exit(2, 1, msg, __VA_ARGS__)

static void capture(void) { tr_capture("eval"); }

TestSuite(eval_args, .init = capture, .fini = tr_cleanup);

Test(eval_args, help) {
    cr_expect_eq(run("--help", NULL), 0);
    cr_expect_eq(run("-h", NULL), 0);
    const char *out = tr_stdout();
    cr_expect(out && strstr(out, "--policies") && strstr(out, "--trace"), "usage: %s", out);
    cr_expect(strstr(out, "--sweep AXIS=LIST") && strstr(out, "--target LIST") &&
                  strstr(out, "--dump FILE.jsonl") && strstr(out, "--group-temperature") &&
                  strstr(out, "--summary-format f32|f16"),
              "usage: %s", out);
}

Test(eval_args, bad_flags_and_values) {
    expect_usage_error("unknown option '--bogus'", "--bogus", "1", NULL);
    expect_usage_error("unexpected argument 'extra'", "extra", NULL);
    expect_usage_error("--layers needs a value", "--layers", NULL);
    expect_usage_error("--layers: 'x' is not a non-negative integer", "--layers", "x", NULL);
    expect_usage_error("--layers: '-1' is not", "--layers", "-1", NULL);
    expect_usage_error("--layers: '4x' is not", "--layers=4x", NULL);
    expect_usage_error("--layers: '' is not", "--layers=", NULL);
    expect_usage_error("--steps: '99999999999' is out of range", "--steps", "99999999999", NULL);
    expect_usage_error("--steps: '18446744073709551616' is out of range", "--steps",
                       "18446744073709551616", NULL);
    expect_usage_error("--page: '1e3' is not a non-negative integer", "--page", "1e3", NULL);
    expect_usage_error("--tau: 'abc' is not a number", "--tau", "abc", NULL);
    expect_usage_error("--drift: 'nan' is not a number", "--drift", "nan", NULL);
    expect_usage_error("--drift: 'inf' is not a number", "--drift", "inf", NULL);
    expect_usage_error("unknown policy 'fast'", "--policies", "quest,fast", NULL);
    expect_usage_error("--policies: bad list", "--policies", "", NULL);
    expect_usage_error("--dtype: 'f64' is not f32, f16 or bf16", "--dtype", "f64", NULL);
    expect_usage_error("--group-reduce: 'sum' is not softmax-mean, mean or max",
                       "--group-reduce", "sum", NULL);
    expect_usage_error("--group-temperature: 'hot' is not raw or sqrt-d", "--group-temperature",
                       "hot", NULL);
    expect_usage_error("--summary-format: 'bf16' is not f32 or f16", "--summary-format", "bf16",
                       NULL);
    expect_usage_error("the group temperature applies to --group-reduce softmax-mean only",
                       "--group-reduce", "max", "--group-temperature", "sqrt-d", NULL);
}

Test(eval_args, bad_sweeps_and_targets) {
    expect_usage_error("--sweep: 'alpha=1' is not AXIS=LIST", "--sweep", "alpha=1", NULL);
    expect_usage_error("--sweep: 'tau' is not AXIS=LIST", "--sweep", "tau", NULL);
    expect_usage_error("--sweep tau: '1.5' is not in [-1, 1]", "--sweep", "tau=0.9,1.5", NULL);
    expect_usage_error("--sweep tau: '' is not a number", "--sweep", "tau=0.8,,0.9", NULL);
    expect_usage_error("--sweep budget=512,512: value 2 repeats an earlier one", "--sweep",
                       "budget=512,512", NULL);
    expect_usage_error("--sweep: tau is given twice", "--sweep", "tau=0.8", "--sweep",
                       "tau=0.9", NULL);
    expect_usage_error("--sweep temp: 'hot' is not raw or sqrt-d", "--sweep=temp=raw,hot",
                       NULL);
    /* the words after --sweep are its axes until the next flag */
    expect_usage_error("unexpected argument 'extra'", "--sweep", "tau=0.8", "--steps", "2",
                       "extra", NULL);
    expect_usage_error("--tau and --sweep tau= both set it", "--tau", "0.8", "--sweep",
                       "tau=0.8,0.9", NULL);
    expect_usage_error("--budget and --sweep budget= both set it", "--sweep", "budget=256",
                       "--budget", "512", NULL);
    expect_usage_error("--policies: a sweep runs freekv", "--sweep", "tau=0.8",
                       "--policies", "quest", NULL);
    expect_usage_error("--dump: a sweep runs freekv", "--sweep", "tau=0.8", "--dump",
                       "/tmp/x.jsonl", NULL);
    expect_usage_error("the group temperature applies to --group-reduce softmax-mean only",
                       "--group-reduce", "mean", "--sweep", "temp=raw,sqrt-d", NULL);
    expect_usage_error("--target sets what --sweep's recommendation must meet", "--target",
                       "mass=0.99", NULL);
    expect_usage_error("--target: 'speed=2' is not mass=X", "--sweep", "tau=0.8", "--target",
                       "speed=2", NULL);
    expect_usage_error("--target needles: '2' is not in [0, 1]", "--sweep", "tau=0.8",
                       "--target", "needles=2", NULL);
    expect_usage_error("--target: mass is given twice", "--sweep", "tau=0.8", "--target",
                       "mass=0.9", "--target", "mass=0.95", NULL);
    expect_usage_error("--sweep: 4160 combinations, at most 4096", "--sweep",
                       "tau=0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.81,0.82,0.83,0.84,0.85",
                       "budget=128,192,256,320,384,448,512,576,640,704,768,832,896,960,1024,"
                       "1088,1152,1216,1280,1344,1408,1472,1536,1600,1664,1728,1792,1856,1920,"
                       "1984,2048,2112",
                       "page=16,32,64,8,4,2,1,128,256,24", NULL);
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

Test(eval_args, unknown_backend_is_a_bad_argument) {
    expect_usage_error("--backend: 'cuda' is not a backend of this build (auto, ", "--backend",
                       "cuda", NULL);
    cr_expect(strstr(tr_stderr(), "environment") == NULL, "%s", tr_stderr());
    expect_usage_error("--backend: 'nosuchbackend' is not", "--backend", "nosuchbackend", NULL);
}

Test(eval_args, missing_device_is_a_run_error) {
    /* short runs: the needle count and span defaults shrink to fit */
    int rc = run("--layers", "1", "--context", "32", "--steps", "1", "--page", "4", "--budget",
                 "16", "--sink", "4", "--window", "8", "--backend", "cpu", "--device", "99", NULL);
    cr_expect_eq(rc, 1);
    cr_expect(strstr(tr_stderr(), "no device 99") != NULL, "%s", tr_stderr());
}

Test(eval_args, checked_before_any_work) {
    expect_refused_up_front("--budget 100000 is more than the 4128 tokens of the trace", "--budget",
                            "100000", NULL);
    expect_refused_up_front("--csv /nonexistent/x.csv: directory /nonexistent does not exist",
                            "--csv", "/nonexistent/x.csv", NULL);
    expect_refused_up_front("--json /tmp: is a directory", "--json", "/tmp", NULL);
    expect_refused_up_front("--csv: empty path", "--csv", "", NULL);
    expect_refused_up_front("--save-trace /nonexistent/dir: not an existing writable directory",
                            "--save-trace", "/nonexistent/dir", NULL);
    /* within the context, but more selected pages than the library supports: refused when
     * sync's context is tried (or by the configuration check), before the dense run */
    expect_refused_up_front("budget_tokens = 18000", "--layers", "1", "--steps", "1", "--context", "20000",
                            "--page", "4", "--budget", "18000", "--sink", "8", "--window", "8",
                            "--policies", "sync", NULL);
    cr_expect(strstr(tr_stderr(), "creating the context: creating the context") == NULL,
              "doubled prefix: %s", tr_stderr());
    expect_refused_up_front("--dump /tmp: is a directory", "--dump", "/tmp", NULL);
    expect_refused_up_front("--csv and --json name the same file /tmp/fkv_same.out", "--csv",
                            "/tmp/fkv_same.out", "--json", "/tmp/fkv_same.out", NULL);
    expect_refused_up_front("--target needles: the trace has no needles", "--needles", "0",
                            "--sweep", "tau=0.8", "--target", "needles=1", NULL);
    /* every combination of a sweep is checked before the first runs */
    expect_refused_up_front("--sweep page 64, budget 512, temp raw, tau 0.9: invalid "
                            "configuration: window_tokens = 64: must be a multiple of page_size "
                            "(64), at least two pages",
                            "--sweep", "page=16,64", NULL);
    expect_refused_up_front("--sweep page 16, budget 100000, temp raw, tau 0.8: budget 100000 "
                            "is more than the 4128 tokens of the trace",
                            "--sweep", "tau=0.8", "budget=512,100000", NULL);
}

#define TINY "--layers", "2", "--q-heads", "4", "--kv-heads", "2", "--head-dim", "32", \
             "--context", "512", "--steps", "6", "--page", "8", "--budget", "128", "--sink", "16", \
             "--window", "32"

Test(eval_args, tiny_run_writes_csv_and_json) {
    char csv[96], json[96];
    snprintf(csv, sizeof csv, "/tmp/fkv_eval_%d.csv", (int)getpid());
    snprintf(json, sizeof json, "/tmp/fkv_eval_%d.json", (int)getpid());
    int rc = run(TINY, "--csv", csv, "--json", json, NULL);
    cr_assert_eq(rc, 0, "stderr: %s", tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "freekv ") && strstr(out, "oracle"), "%s", out);
    const char *c = tr_slurp(csv);
    cr_assert_not_null(c);
    cr_expect(strncmp(c, "policy,ok,rel_l2_mean", 21) == 0, "%s", c);
    int lines = 0;
    for (const char *p = c; *p; p++)
        lines += *p == '\n';
    cr_expect_eq(lines, 1 + 5 + 1, "csv: %s", c); /* header, 5 policies, oracle */
    cr_expect(strstr(c, "\ndense,1,0,0,1.000000,1.000000,") != NULL, "%s", c);
    const char *j = tr_slurp(json);
    cr_assert_not_null(j);
    cr_expect(strstr(j, "\"policy\": \"freekv\", \"ok\": true") != NULL, "%s", j);
    /* the group-cosine count is what freekv corrects (the per-query-head count was not) */
    const char *fk = strstr(j, "\"policy\": \"freekv\"");
    double rate = strtod(strstr(fk, "\"correction_rate\": ") + 19, NULL);
    double below = strtod(strstr(fk, "\"group_cosine_below_tau\": ") + 26, NULL);
    cr_expect_gt(rate, 0.1, "%s", fk);
    cr_expect_float_eq(rate, below, 1e-6, "%s", fk);
    unlink(csv);
    unlink(json);
}

/* --summary-format reaches the context: the header and the JSON config name it. */
Test(eval_args, summary_format_f16) {
    char json[96];
    snprintf(json, sizeof json, "/tmp/fkv_eval_sf_%d.json", (int)getpid());
    int rc = run(TINY, "--policies", "quest", "--summary-format", "f16", "--json", json, NULL);
    cr_assert_eq(rc, 0, "stderr: %s", tr_stderr());
    cr_expect(strstr(tr_stdout(), ", summaries f16") != NULL, "%s", tr_stdout());
    const char *j = tr_slurp(json);
    cr_assert_not_null(j);
    cr_expect(strstr(j, "\"summary_format\": \"f16\"") != NULL, "%s", j);
    unlink(json);
}

Test(eval_args, policies_subset_and_saved_trace) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/fkv_eval_dir_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_eq(run(TINY, "--policies", "quest,freekv", "--save-trace", dir, "--dtype", "bf16",
                     NULL), 0, "%s", tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "\nquest ") && strstr(out, "\nfreekv ") && !strstr(out, "\nsync "),
              "%s", out);
    /* the saved directory runs as a --trace (sharing the page settings) */
    cr_assert_eq(run("--trace", dir, "--steps", "3", "--layers", "1", "--page", "8", "--budget",
                     "128", "--sink", "16", "--window", "32", NULL), 0, "%s", tr_stderr());
    out = tr_stdout();
    cr_expect(strstr(out, "1 layers, 4/2 heads, d 32, prompt 512, 3 steps") != NULL, "%s", out);
    /* the budget settings must suit the trace */
    cr_expect_eq(run("--trace", dir, "--page", "8", "--sink", "12", NULL), 2);
    cr_expect(strstr(tr_stderr(), "sink_tokens = 12") != NULL, "%s", tr_stderr());
    /* a corrupted array is a run error with the file named, not a crash */
    char path[128];
    snprintf(path, sizeof path, "%s/v_0.npy", dir);
    cr_assert_eq(truncate(path, 200), 0); /* header 128 bytes, then part of the data */
    cr_expect_eq(run("--trace", dir, "--page", "8", "--budget", "128", "--sink", "16", "--window",
                     "32", NULL), 1);
    cr_expect(strstr(tr_stderr(), "v_0.npy: truncated .npy data") != NULL, "%s",
              tr_stderr());
    tr_remove_tree(dir);
}

/* ---- non-finite results ---------------------------------------------------------------- */

/* A small f32 trace directory (1 layer, 4/2 heads, d 16, prompt 64, 4 steps) whose decode
 * token P+1 has keys of 1e38 on every channel. The query of step 1 is positive on every
 * channel, so its dot product with that key overflows f32 to +inf and attention gives NaN;
 * later queries are negative on every channel, so the key scores -inf and drops out: only
 * step 1 is NaN, the steps after it are finite again. */
#define NF_P 64
#define NF_S 4
#define NF_HK 2
#define NF_HQ 4
#define NF_D 16

static void write_poisoned_trace(const char *dir) {
    char path[256];
    fkv_trace_header h = {.version = 1, .layers = 1, .q_heads = NF_HQ, .kv_heads = NF_HK,
                          .head_dim = NF_D, .prompt_tokens = NF_P, .decode_steps = NF_S};
    snprintf(path, sizeof path, "%s/header.json", dir);
    cr_assert_eq(fkv_trace_header_write(path, &h), FKV_OK, "%s", fkv_last_error());
    static float k[(NF_P + NF_S) * NF_HK * NF_D], v[(NF_P + NF_S) * NF_HK * NF_D];
    static float q[(NF_S + 1) * NF_HQ * NF_D];
    uint64_t seed = 12345;
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        k[i] = (float)((seed >> 40) % 2001) / 1000.0f - 1.0f;
        v[i] = (float)((seed >> 20) % 2001) / 1000.0f - 1.0f;
        if (i / (NF_HK * NF_D) == NF_P + 1)
            k[i] = 1e38f;
    }
    for (size_t i = 0; i < sizeof q / sizeof *q; i++) {
        size_t row = i / (NF_HQ * NF_D); /* row 1 + t: decode step t */
        float mag = 0.5f + (float)(i % 7) / 7.0f;
        q[i] = row == 2 ? mag : row > 2 ? -mag : (i % 2 ? mag : -mag);
    }
    uint64_t kv_shape[3] = {NF_P + NF_S, NF_HK, NF_D}, q_shape[3] = {NF_S + 1, NF_HQ, NF_D};
    snprintf(path, sizeof path, "%s/k_0.npy", dir);
    cr_assert_eq(fkv_npy_write_f32(path, FKV_NPY_F32, 3, kv_shape, k), FKV_OK);
    snprintf(path, sizeof path, "%s/v_0.npy", dir);
    cr_assert_eq(fkv_npy_write_f32(path, FKV_NPY_F32, 3, kv_shape, v), FKV_OK);
    snprintf(path, sizeof path, "%s/q_0.npy", dir);
    cr_assert_eq(fkv_npy_write_f32(path, FKV_NPY_F32, 3, q_shape, q), FKV_OK);
}

/* The field `col` (0-based) of the CSV line that starts with `policy,`. */
static void csv_field(const char *csv, const char *policy, int col, char *out, size_t size) {
    char key[32];
    snprintf(key, sizeof key, "\n%s,", policy);
    const char *p = strstr(csv, key);
    cr_assert_not_null(p, "no %s row: %s", policy, csv);
    p++;
    for (int i = 0; i < col; i++) {
        p = strchr(p, ',');
        cr_assert_not_null(p);
        p++;
    }
    size_t n = strcspn(p, ",\n");
    snprintf(out, size, "%.*s", (int)(n < size ? n : size - 1), p);
}

Test(eval_args, non_finite_outputs_fail_the_run) {
    char dir[64], csv[96];
    snprintf(dir, sizeof dir, "/tmp/fkv_eval_nan_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(csv, sizeof csv, "%s/out.csv", dir);
    write_poisoned_trace(dir);
    int rc = run("--trace", dir, "--dtype", "f32", "--page", "8", "--budget", "32", "--sink", "8",
                 "--window", "16", "--policies", "quest", "--csv", csv, NULL);
    const char *err = tr_stderr();
    cr_expect_eq(rc, 1, "NaN outputs reported as success (stderr: %s)", err);
    cr_expect(strstr(err, "attention output values are not finite") != NULL, "%s", err);
    const char *c = tr_slurp(csv);
    cr_assert_not_null(c);
    char ok[16], mean[32], max[32];
    csv_field(c, "quest", 1, ok, sizeof ok);
    csv_field(c, "quest", 2, mean, sizeof mean);
    csv_field(c, "quest", 3, max, sizeof max);
    cr_expect_str_eq(ok, "0", "%s", c);
    /* the worst error is NaN like the mean, not a finite value from the later steps */
    cr_expect(strstr(mean, "nan") != NULL && strstr(max, "nan") != NULL, "mean %s max %s: %s",
              mean, max, c);
    tr_remove_tree(dir);
}

Test(eval_args, keys_beyond_the_storage_type_are_refused) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/fkv_eval_f16_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    write_poisoned_trace(dir);
    int rc = run("--trace", dir, "--dtype", "f16", "--page", "8", "--budget", "32", "--sink", "8",
                 "--window", "16", NULL);
    const char *err = tr_stderr();
    cr_expect_eq(rc, 1, "%s", err);
    char want[160];
    snprintf(want, sizeof want, "%s/k_0.npy: element %d [%d, 0, 0] = 1e+38 is not representable "
             "in f16", dir, (NF_P + 1) * NF_HK * NF_D, NF_P + 1);
    cr_expect(strstr(err, want) != NULL, "stderr lacks '%s': %s", want, err);
    tr_remove_tree(dir);
}
