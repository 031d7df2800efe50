/* fkv_stats: the caller's blocked time split by cause, and background work counted when the
 * step that uses it consumes it. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "helpers.h"
#include "pipeline_driver.h"

/* one sequence, an 80-token prompt, 10 steps */
static const pd_run one_seq = {.n_seqs = 1, .prompt = {80}, .steps = 10, .batched = 1,
                               .drift = 0.3f};

static fkv_stats run_stats(fkv_policy policy, float tau, int sync) {
    fkv_config c;
    th_small_config(&c);
    c.policy = policy;
    c.tau = tau;
    pd_run r = one_seq;
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(pd_run_cpu(&c, &r, NULL, &dev, &ctx), FKV_OK, "%s", fkv_last_error());
    if (sync)
        cr_assert_eq(fkv_context_sync(ctx), FKV_OK);
    fkv_stats s;
    cr_assert_eq(fkv_context_get_stats(ctx, &s), FKV_OK);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
    return s;
}

Test(stats, blocked_time_split_by_cause) {
    static const fkv_policy policies[] = {FKV_POLICY_DENSE, FKV_POLICY_QUEST, FKV_POLICY_SYNC,
                                          FKV_POLICY_SPECULATIVE, FKV_POLICY_FREEKV};
    for (size_t i = 0; i < sizeof policies / sizeof *policies; i++) {
        fkv_stats s = run_stats(policies[i], 0.95f, 1);
        const char *name = fkv_policy_name(policies[i]);
        double sum = s.blocked_recall_seconds + s.blocked_select_seconds +
                     s.blocked_correction_seconds;
        cr_expect_leq(fabs(s.blocked_seconds - sum), 1e-9 + 1e-9 * sum,
                      "%s: blocked %g is not the sum of its parts %g", name, s.blocked_seconds,
                      sum);
        cr_expect_geq(s.blocked_recall_seconds, 0, "%s", name);
        cr_expect_geq(s.blocked_select_seconds, 0, "%s", name);
        cr_expect_geq(s.blocked_correction_seconds, 0, "%s", name);
        switch (policies[i]) {
        case FKV_POLICY_DENSE:
            cr_expect_eq(sum, 0, "dense never waits for selection or recall");
            break;
        case FKV_POLICY_QUEST: /* synchronous selection, nothing to recall */
            cr_expect_gt(s.blocked_select_seconds, 0);
            cr_expect_eq(s.blocked_recall_seconds, 0);
            cr_expect_eq(s.blocked_correction_seconds, 0);
            break;
        case FKV_POLICY_SYNC: /* selects, then recalls and waits, on the caller's thread */
            cr_expect_gt(s.blocked_select_seconds, 0);
            cr_expect_gt(s.blocked_recall_seconds, 0);
            cr_expect_eq(s.blocked_correction_seconds, 0);
            break;
        case FKV_POLICY_SPECULATIVE:
            cr_expect_eq(s.blocked_correction_seconds, 0);
            break;
        case FKV_POLICY_FREEKV: /* the similarity check runs every step; tau 0.95 corrects */
            cr_expect_gt(s.corrections, 0);
            cr_expect_gt(s.blocked_correction_seconds, 0);
            break;
        }
    }
}

/* The worker's task submitted by the last step is not counted until it is consumed: the
 * counts read between steps are those of the steps done, however far the worker got. */
Test(stats, background_work_counted_when_consumed) {
    fkv_config c;
    th_small_config(&c);
    c.policy = FKV_POLICY_SPECULATIVE;
    pd_run r = one_seq;
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(pd_run_cpu(&c, &r, NULL, &dev, &ctx), FKV_OK, "%s", fkv_last_error());
    /* give the worker ample time to finish the last step's tasks */
    struct timespec pause = {0, 100 * 1000 * 1000};
    nanosleep(&pause, NULL);
    fkv_stats before, after;
    cr_assert_eq(fkv_context_get_stats(ctx, &before), FKV_OK);
    /* prefill selects once per layer; step t > 0 consumes the task step t - 1 submitted */
    cr_expect_eq(before.selections, (uint64_t)r.steps * c.n_layers,
                 "selections %llu after %u steps of %u layers",
                 (unsigned long long)before.selections, r.steps, c.n_layers);
    cr_assert_eq(fkv_context_sync(ctx), FKV_OK);
    cr_assert_eq(fkv_context_get_stats(ctx, &after), FKV_OK);
    cr_expect_eq(after.selections, before.selections + c.n_layers,
                 "sync consumes the last step's tasks");
    cr_expect_geq(after.bytes_recalled, before.bytes_recalled);
    cr_expect_geq(after.recall_seconds, before.recall_seconds);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}
