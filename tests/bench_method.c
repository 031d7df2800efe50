/* freekv bench's parts: strict numbers, honest sample statistics, and a workload whose keys
 * never repeat and whose query drift corrects the share of heads it promises. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench/number.h"
#include "bench/stats.h"
#include "bench/workload.h"

Test(bench_number, strict_integers) {
    uint64_t v;
    cr_expect_eq(bench_parse_u64("0", 0, 10, &v), 0);
    cr_expect_eq(v, 0);
    cr_expect_eq(bench_parse_u64("18446744073709551615", 0, UINT64_MAX, &v), 0);
    cr_expect_eq(v, UINT64_MAX);
    static const char *const bad[] = {"18446744073709551616", "99999999999999999999999", "-1",
                                      "+1", " 1", "1 ", "", "0x10", "1e3", "1.0", "abc"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_expect_eq(bench_parse_u64(bad[i], 0, UINT64_MAX, &v), -1, "'%s' accepted", bad[i]);
    cr_expect_eq(bench_parse_u64("11", 0, 10, &v), -1, "above the maximum");
    cr_expect_eq(bench_parse_u64("0", 1, 10, &v), -1, "below the minimum");
}

Test(bench_number, strict_reals) {
    double x;
    cr_expect_eq(bench_parse_double("1e3", 0, 1e4, &x), 0);
    cr_expect_eq(x, 1000);
    cr_expect_eq(bench_parse_double("-0.5", -1, 1, &x), 0);
    cr_expect_eq(x, -0.5);
    static const char *const bad[] = {"nan", "inf", "-inf", " 1", "1 ", "", "0x1p3", "1e999",
                                      "1,5", "."};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_expect_eq(bench_parse_double(bad[i], -1e300, 1e300, &x), -1, "'%s' accepted", bad[i]);
    cr_expect_eq(bench_parse_double("2", -1, 1, &x), -1, "out of range");
}

Test(bench_stats, tail_is_labelled_by_what_the_sample_supports) {
    double x[300];
    for (int i = 0; i < 300; i++)
        x[i] = i + 1;
    const char *label;
    /* 32 samples: p90 (the 29th smallest), never a "p99" that is the maximum */
    cr_expect_eq(bench_tail(x, 32, &label), 29);
    cr_expect_str_eq(label, "p90");
    cr_expect_eq(bench_tail(x, 19, &label), 19);
    cr_expect_str_eq(label, "max");
    cr_expect_eq(bench_tail(x, 20, &label), 18);
    cr_expect_str_eq(label, "p90");
    cr_expect_eq(bench_tail(x, 199, &label), 180);
    cr_expect_str_eq(label, "p90");
    cr_expect_eq(bench_tail(x, 200, &label), 198);
    cr_expect_str_eq(label, "p99");
    cr_expect_eq(bench_median_sorted(x, 4), 2.5);
    cr_expect_eq(bench_median_sorted(x, 5), 3);
}

Test(bench_stats, bootstrap_interval_is_deterministic_and_brackets_the_median) {
    double x[15] = {1.3, 0.9, 1.1, 1.0, 1.8, 0.95, 1.05, 1.2, 0.85, 1.0, 1.4, 1.1, 0.7, 1.0, 1.15};
    double m, lo, hi, m2, lo2, hi2;
    bench_median_ci(x, 15, 42, &m, &lo, &hi);
    bench_median_ci(x, 15, 42, &m2, &lo2, &hi2);
    cr_expect_eq(m, 1.05);
    cr_expect(lo == lo2 && hi == hi2, "same data and seed, same interval");
    cr_expect(lo <= m && m <= hi, "[%g, %g] around %g", lo, hi, m);
    cr_expect(lo >= 0.7 && hi <= 1.8);
    cr_expect(hi - lo > 0, "a spread sample has a non-empty interval");
    double c[8] = {2, 2, 2, 2, 2, 2, 2, 2};
    bench_median_ci(c, 8, 1, &m, &lo, &hi);
    cr_expect(m == 2 && lo == 2 && hi == 2);
}

static bench_shape small_shape(void) {
    return (bench_shape){.layers = 8, .q_heads = 8, .kv_heads = 2, .head_dim = 64, .page = 16,
                         .batch = 1};
}

static double share_below(const char *name, bench_shape sh, uint32_t steps, double tau) {
    bench_drift d;
    cr_assert_eq(bench_drift_named(name, &d), 0);
    bench_gen *g = bench_gen_create(&d, &sh, 1000, 7);
    cr_assert_not_null(g);
    size_t qn = (size_t)sh.layers * sh.batch * sh.q_heads * sh.head_dim;
    size_t kn = (size_t)sh.layers * sh.batch * sh.kv_heads * sh.head_dim;
    float *q = malloc(sizeof(float) * qn), *k = malloc(sizeof(float) * kn),
          *v = malloc(sizeof(float) * kn);
    for (uint32_t s = 0; s < steps; s++)
        cr_assert_eq(bench_gen_step(g, q, k, v), 0);
    size_t n, below = 0;
    const float *c = bench_gen_cosines(g, &n);
    cr_assert_eq(n, (size_t)steps * sh.layers * sh.batch * sh.kv_heads);
    for (size_t i = 0; i < n; i++)
        below += c[i] < tau;
    bench_gen_destroy(g);
    free(q), free(k), free(v);
    return (double)below / n;
}

/* At tau 0.9: long input corrects 10-20% of KV heads, reasoning 40-60% (published ranges),
 * on the small preset and on Llama-3.1-8B's geometry, over the steps a default run takes. */
Test(bench_workload, drift_calibrated_to_published_correction_rates) {
    bench_shape llama = {.layers = 32, .q_heads = 32, .kv_heads = 8, .head_dim = 128,
                         .page = 32, .batch = 2};
    double li = share_below("long-input", small_shape(), 64, 0.9);
    double re = share_below("reasoning", small_shape(), 64, 0.9);
    cr_expect(li >= 0.10 && li <= 0.20, "long-input (small): %.3f", li);
    cr_expect(re >= 0.40 && re <= 0.60, "reasoning (small): %.3f", re);
    li = share_below("long-input", llama, 16, 0.9);
    re = share_below("reasoning", llama, 16, 0.9);
    cr_expect(li >= 0.10 && li <= 0.20, "long-input (llama): %.3f", li);
    cr_expect(re >= 0.40 && re <= 0.60, "reasoning (llama): %.3f", re);
}

static int cmp_row(const void *a, const void *b) { return memcmp(a, b, 16 * sizeof(float)); }

/* No two prompt keys alike (the old bench reused 8192 rows, so page summaries tied), and the
 * prompt does not depend on the drift: every workload decodes after the same prefill. */
Test(bench_workload, prompt_keys_never_repeat) {
    bench_shape sh = {.layers = 2, .q_heads = 4, .kv_heads = 1, .head_dim = 16, .page = 16,
                      .batch = 2};
    uint32_t n = 20000;
    bench_drift li, re;
    bench_drift_named("long-input", &li);
    bench_drift_named("reasoning", &re);
    bench_gen *a = bench_gen_create(&li, &sh, n, 3), *b = bench_gen_create(&re, &sh, n, 3);
    cr_assert(a && b);
    size_t row = 16, per = (size_t)n * row;
    float *k = malloc(sizeof(float) * per * 4), *v = malloc(sizeof(float) * per);
    float *k2 = malloc(sizeof(float) * per), q[64], q2[64];
    for (uint32_t s = 0; s < 2; s++)
        for (uint32_t l = 0; l < 2; l++) {
            float *dst = k + (size_t)(2 * s + l) * per;
            bench_gen_prefill(a, s, l, dst, v, q);
            bench_gen_prefill(b, s, l, k2, v, q2);
            cr_expect_eq(memcmp(dst, k2, sizeof(float) * per), 0, "prompt depends on the drift");
            cr_expect_eq(memcmp(q, q2, sizeof q), 0);
        }
    qsort(k, (size_t)4 * n, sizeof(float) * row, cmp_row);
    size_t repeats = 0;
    for (size_t i = 1; i < (size_t)4 * n; i++)
        repeats += memcmp(k + (i - 1) * row, k + i * row, sizeof(float) * row) == 0;
    cr_expect_eq(repeats, 0, "%zu repeated key rows over sequences and layers", repeats);
    bench_gen_destroy(a);
    bench_gen_destroy(b);
    free(k), free(v), free(k2);
}
