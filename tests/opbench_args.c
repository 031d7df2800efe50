/* freekv-opbench: bad numbers exit 2 with a message naming the flag, a run that would not fit
 * in memory is refused (exit 2, with the estimate) before anything is allocated, and a small
 * real run on the CPU reference prints both tables and exits 0. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool_run.h"

int fkv_opbench_main(int argc, char **argv);

/* Runs freekv-opbench with the arguments (NULL-terminated). */
#define run(...) tr_run(fkv_opbench_main, "freekv-opbench", __VA_ARGS__)

static void expect_refused(const char *flag, const char *value, const char *msg) {
    int rc = run(flag, value, NULL);
    char *err = strdup(tr_stderr());
    cr_assert_not_null(err);
    cr_expect_eq(rc, 2, "%s %s: exit %d (%s)", flag, value, rc, err);
    cr_expect(strstr(err, msg) != NULL, "%s %s: stderr lacks '%s': %s", flag, value, msg, err);
    cr_expect(strstr(tr_stdout(), "(1) recall") == NULL, "%s %s ran", flag, value);
    free(err);
}

static void capture(void) { tr_capture("opbench"); }

TestSuite(opbench_args, .init = capture, .fini = tr_cleanup, .timeout = 120);

Test(opbench_args, bad_numbers_exit_2_naming_the_flag) {
    expect_refused("--pages", "-1", "--pages: '-1' is not a comma list");
    expect_refused("--batches", "-1", "--batches: '-1' is not a comma list");
    expect_refused("--pages", "0", "--pages: '0' is not a comma list");
    expect_refused("--pages", "32,,64", "--pages: '32,,64' is not");
    expect_refused("--pages", "1,2,3,4,5,6,7,8,9", "1 to 8 integers");
    expect_refused("--chunk", "abc", "--chunk: 'abc' is not a non-negative integer");
    expect_refused("--pool-mib", "1e3", "--pool-mib: '1e3' is not a non-negative integer");
    expect_refused("--pool-mib", "0", "--pool-mib: '0' is out of range");
    expect_refused("--reps", "99999999999999999999", "--reps: '99999999999999999999' is out of "
                                                      "range");
    expect_refused("--budget", " 64", "--budget: ' 64' is not");
    expect_refused("--budget", "64x", "--budget: '64x' is not");
    expect_refused("--dtype", "f64", "--dtype: 'f64' is not f32, f16 or bf16");
    expect_refused("--dtype", "f32,f16", "--dtype: 'f32,f16' is not f32, f16 or bf16");
    expect_refused("--attention-dtypes", "f32,,bf16",
                   "--attention-dtypes: 'f32,,bf16' is not a comma list of f32, f16 and bf16");
    expect_refused("--attention-dtypes", "f32,f16,bf16,f32", "is not a comma list");
    expect_refused("--only", "scores", "--only: 'scores' is not recall, attention or scoring");
    expect_refused("--host-format", "q2", "--host-format: 'q2' is not same, q8 or q4");
    expect_refused("--summary-format", "f8", "--summary-format: 'f8' is not f32 or f16");
    expect_refused("--bogus", "1", "unknown option '--bogus'");
    expect_refused("--score-pages", "0", "--score-pages: '0' is not a comma list");
    expect_refused("--topk", "0", "--topk: '0' is out of range");
    expect_refused("--kv-heads", "3", "--q-heads 32 is not a multiple of --kv-heads 3");
    cr_expect_eq(run("--reps", NULL), 2);
    cr_expect(strstr(tr_stderr(), "--reps needs a value") != NULL, "%s", tr_stderr());
    expect_refused("--backend", "cuda", "unknown backend 'cuda'");
}

Test(opbench_args, too_much_memory_is_refused_before_allocating) {
    /* 5000 sequences of 64 slots of 128 KiB (f32, the widest attention dtype): 39.06 GiB of
     * K/V slots on the host and twice that on the device, plus queries, outputs and lists, and
     * on the host the memcpy's source and destination of the 78.13 GiB of K/V one attention
     * reads; the CPU device is limited to 4 GiB here, so the refusal does not depend on how
     * much RAM the machine has */
    setenv("FREEKV_CPU_DEVICE_MEMORY", "4G", 1);
    expect_refused("--batches", "5000",
                   "attention at --batches 5000 (--budget 2048) needs about 195.41 GiB of host "
                   "and 78.30 GiB of device memory");
    cr_expect(strstr(tr_stderr(), "nothing was allocated") != NULL, "%s", tr_stderr());
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
    /* a million sequences: far beyond any host's RAM */
    expect_refused("--batches", "1000000", "attention at --batches 1000000");
    /* a host pool of 4 TiB */
    expect_refused("--pool-mib", "4194304", "recall (--pages 64, --pool-mib 4194304)");
}

Test(opbench_args, small_run_prints_both_tables) {
    int rc = run("--quick", "--pool-mib", "16", "--pages", "4", "--batches", "1", "--budget",
                 "256", "--reps", "1", "--score-pages", "64", NULL);
    cr_assert_eq(rc, 0, "exit %d: %s", rc, tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "(1) recall") && strstr(out, "engine:staged") &&
                  strstr(out, "(2) paged decode attention") &&
                  strstr(out, "(3) page scoring and selection") &&
                  strstr(out, "memcpy, 1 host thread") && strstr(out, "scores+select"),
              "%s", out);
    cr_expect(strstr(out, "n/a") == NULL || strstr(out, "backend has no recall_direct"), "%s",
              out);
    /* the device commands per run: the CPU reference's per-page recall of 4 pages x 8 KV
     * heads is the index write, 32 unit writes and the scatter, then the caller's wait */
    cr_expect(strstr(out, "commands 34.0 (launches 1.0, copies 33.0), submits 34.0, waits 1.0 "
                          "caller + 0.0 worker, allocs 0.0 device + 0.0 host") != NULL,
              "%s", out);
    /* one attention call is one launch on the reference */
    cr_expect(strstr(out, "commands 1.0 (launches 1.0, copies 0.0), submits 1.0, waits 1.0 "
                          "caller") != NULL,
              "%s", out);
}

/* --host-format q4: the recall section's units are quantized (8 KV heads, p 32, d 128:
 * 2*32*128/2 code bytes + 4*(128+32) of f16 scales and zeros = 4736 bytes), every mechanism
 * and the quantizing pack run, with the same commands as unquantized units. */
Test(opbench_args, quantized_recall_times_every_mechanism_and_the_pack) {
    int rc = run("--only", "recall", "--host-format", "q4", "--pool-mib", "16", "--pages", "4",
                 "--reps", "1", "--backend", "cpu", NULL);
    cr_assert_eq(rc, 0, "exit %d: %s", rc, tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "host format q4: 4736 bytes per (page, head) unit") != NULL, "%s",
              out);
    cr_expect(strstr(out, "     MiB         ms GB/s eff.   cpu ms  device commands") != NULL,
              "%s", out);
    /* 4 pages x 8 KV heads x 4736 bytes */
    cr_expect(strstr(out, "\n  engine:direct         4      32      0.14 ") != NULL, "%s", out);
    const char *pack = strstr(out, "\n  pack                  4      32      0.14 ");
    cr_expect(pack && strstr(pack, "commands 1.0 (launches 1.0, copies 0.0)"), "%s", out);
    cr_expect(strstr(out, "n/a") == NULL, "%s", out);
}

Test(opbench_args, attention_only_prints_memcpy_beside_each_dtype) {
    int rc = run("--only", "attention", "--attention-dtypes", "f16,f32", "--batches", "1",
                 "--budget", "256", "--reps", "1", "--backend", "cpu", NULL);
    cr_assert_eq(rc, 0, "exit %d: %s", rc, tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "(1) recall") == NULL && strstr(out, "(3) page scoring") == NULL, "%s",
              out);
    cr_expect(strstr(out, "K/V GB/s    memcpy of memcpy   K/V cpu memcpy cpu") != NULL, "%s",
              out);
    const char *f16 = strstr(out, "\n  f16    1      auto"), *f32 = strstr(out, "\n  f32    1");
    cr_expect(f16 && f32 && f16 < f32 && strstr(out, "bf16") == NULL, "%s", out);
    /* 8 KV heads x 256 tokens x 128 channels x 2 bytes x K and V */
    cr_expect(f16 && strncmp(f16 + 26, "     1.00", 9) == 0, "%s", out);
}

Test(opbench_args, scoring_only_prints_memcpy_by_both_clocks) {
    int rc = run("--only", "scoring", "--batches", "1", "--score-pages", "64", "--reps", "1",
                 "--backend", "cpu", NULL);
    cr_assert_eq(rc, 0, "exit %d: %s", rc, tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "(1) recall") == NULL && strstr(out, "(2) paged") == NULL, "%s", out);
    cr_expect(strstr(out, "(3) page scoring") && strstr(out, "GB/s per CPU second") &&
                  strstr(out, "     GB/s  GB/s cpu  device commands per call"),
              "%s", out);
    /* 64 pages x 8 KV heads x min and max x 128 channels x 4 bytes */
    cr_expect(strstr(out, "\n  1           64      0.50 scores ") != NULL, "%s", out);
}

/* --summary-format f16: scoring reads 2-byte summaries (2 KV heads x 2 x 64 channels x 2 bytes
 * = 512 bytes a page; 64 pages, 0.03 MiB). */
Test(opbench_args, f16_summaries_score_half_the_bytes) {
    int rc = run("--only", "scoring", "--summary-format", "f16", "--q-heads", "8", "--kv-heads",
                 "2", "--head-dim", "64", "--score-pages", "64", "--topk", "8", "--batches", "1",
                 "--reps", "1", "--backend", "cpu", NULL);
    cr_assert_eq(rc, 0, "exit %d: %s", rc, tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "d=64, f16 summaries (512 bytes a page)") != NULL, "%s", out);
    cr_expect(strstr(out, "\n  1           64      0.03 scores ") != NULL, "%s", out);
    cr_expect(strstr(out, "n/a") == NULL, "%s", out);
}
