/* Page selection: group reduction, top-k with ties, and the incremental recall plan. */
#include <criterion/criterion.h>
#include <math.h>

#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu_kernels.h"
#include "core/select.h"
#include "helpers.h"

/* The CPU reference's select_pages (the op's definition, backends/cpu) on one sequence and one
 * KV head whose `group` score rows of n_pages pages lie at s (copied: the op uses them as
 * scratch), then the host's ordering of the record: pages and values best first; returns
 * min(k, candidates). */
static uint32_t select_one(const float *s, uint32_t group, uint32_t n_pages, uint32_t first,
                           uint32_t k, fkv_group_reduce mode, float scale, uint32_t *pages,
                           float *vals) {
    fkv_kv_geom g = {.n_kv_heads = 1, .group = group, .head_dim = 4, .page_size = 4};
    int32_t desc[FKV_SCORES_DESC_INTS] = {0, (int32_t)n_pages, 0, 0};
    float *scratch = malloc(sizeof(float) * group * n_pages + 1);
    int32_t *rec = malloc(sizeof(int32_t) * 2 * k + 1);
    memcpy(scratch, s, sizeof(float) * group * n_pages);
    fkv_select_params p = {.first_page = first, .k = k, .reduce = mode, .temp_scale = scale};
    cr_assert_eq(
        cpu_select_pages(&g, 1, desc, NULL, scratch, (size_t)group * n_pages, &p, rec, NULL),
        FKV_OK);
    uint32_t n = 0;
    for (; n < k && rec[n] >= 0; n++) {
        cr_assert(n == 0 || rec[n] > rec[n - 1], "record pages ascend");
        pages[n] = (uint32_t)rec[n];
        memcpy(&vals[n], &rec[k + n], sizeof(float));
    }
    for (uint32_t i = n; i < k; i++)
        cr_assert(rec[i] == -1 && isinf(((float *)rec)[k + i]), "unused entries: -1, -inf");
    uint32_t *tp = malloc(sizeof(uint32_t) * (n + 1));
    float *ts = malloc(sizeof(float) * (n + 1));
    fkv_order_selection(pages, vals, n, tp, ts);
    free(tp);
    free(ts);
    free(scratch);
    free(rec);
    return n;
}

/* The reduced value of every candidate page [first, n_pages), indexed from first. */
static void reduce_all(const float *s, uint32_t group, uint32_t n_pages, uint32_t first,
                       fkv_group_reduce mode, float scale, float *out) {
    uint32_t pages[64];
    float vals[64];
    uint32_t n = select_one(s, group, n_pages, first, n_pages - first, mode, scale, pages, vals);
    cr_assert_eq(n, n_pages - first);
    for (uint32_t i = 0; i < n; i++)
        out[pages[i] - first] = vals[i];
}

Test(select, topk_orders_and_breaks_ties_by_lower_index) {
    float v[] = {1, 5, 3, 5, 2, 5, -1};
    uint32_t out[7];
    float val[7];
    cr_assert_eq(select_one(v, 1, 7, 0, 3, FKV_GROUP_MEAN, 1, out, val), 3);
    cr_assert_eq(out[0], 1);
    cr_assert_eq(out[1], 3);
    cr_assert_eq(out[2], 5);
    cr_assert_eq(select_one(v, 1, 7, 0, 4, FKV_GROUP_MEAN, 1, out, val), 4);
    cr_assert_eq(out[3], 2);
    cr_assert_eq(select_one(v, 1, 7, 0, 100, FKV_GROUP_MEAN, 1, out, val), 7, "k > n returns n");
    cr_assert_eq(out[6], 6);
    cr_assert_eq(select_one(v, 1, 7, 7, 3, FKV_GROUP_MEAN, 1, out, val), 0, "no candidates");
    cr_assert_eq(select_one(v, 1, 7, 2, 2, FKV_GROUP_MEAN, 1, out, val), 2);
    cr_assert(out[0] == 3 && out[1] == 5, "candidates from first_page on");
    float z[] = {0.0f, -0.0f, 0.0f, -0.0f};
    cr_assert_eq(select_one(z, 1, 4, 0, 2, FKV_GROUP_MEAN, 1, out, val), 2);
    cr_assert(out[0] == 0 && out[1] == 1, "-0 ties +0: lower pages");
}

Test(select, topk_matches_sorting_on_random_data) {
    th_rng r;
    th_seed(&r, 7);
    float v[500], val[40];
    uint32_t out[40];
    for (int trial = 0; trial < 20; trial++) {
        th_fill_normal(&r, v, 500, 1.0f);
        uint32_t k = 1 + th_u32(&r) % 40;
        cr_assert_eq(select_one(v, 1, 500, 0, k, FKV_GROUP_MEAN, 1, out, val), k);
        for (uint32_t i = 0; i < k; i++) {
            uint32_t larger = 0;
            for (uint32_t j = 0; j < 500; j++)
                larger += v[j] > v[out[i]];
            cr_assert_eq(larger, i, "rank of #%u", i);
        }
    }
}

Test(select, group_reduce_modes) {
    /* two query heads over pages 0..3, candidates 1..3 */
    float s[] = {9, 1, 2, 3, /* head 0 */ 9, 3, 2, 1 /* head 1 */};
    float out[3];
    reduce_all(s, 2, 4, 1, FKV_GROUP_MEAN, 1, out);
    cr_assert_float_eq(out[0], 2.0f, 1e-6);
    cr_assert_float_eq(out[1], 2.0f, 1e-6);
    reduce_all(s, 2, 4, 1, FKV_GROUP_MAX, 1, out);
    cr_assert_float_eq(out[0], 3.0f, 1e-6);
    cr_assert_float_eq(out[2], 3.0f, 1e-6);
    reduce_all(s, 2, 4, 1, FKV_GROUP_SOFTMAX_MEAN, 1, out);
    cr_assert_float_eq(out[0] + out[1] + out[2], 1.0f, 1e-6, "softmax over candidates");
    cr_assert_float_eq(out[0], out[2], 1e-6, "symmetric heads");
    cr_assert_lt(out[1], out[0]);
    float nan_s[] = {NAN, 1, 2};
    reduce_all(nan_s, 1, 3, 0, FKV_GROUP_MEAN, 1, out);
    cr_assert(isinf(out[0]) && out[0] < 0, "NaN ranks last");
    /* a NaN in a row makes that row's softmax NaN everywhere: every page ranks last, and the
     * tie rule picks the lowest pages */
    float nan_row[] = {1, NAN, 3, 2, /* head 1 */ 1, 2, 3, 4};
    uint32_t pages[3];
    float vals[3];
    cr_assert_eq(select_one(nan_row, 2, 4, 0, 2, FKV_GROUP_SOFTMAX_MEAN, 1, pages, vals), 2);
    cr_assert(pages[0] == 0 && pages[1] == 1 && isinf(vals[0]) && vals[0] < 0);
    float ninf[] = {-INFINITY, 1, -INFINITY, 0};
    cr_assert_eq(select_one(ninf, 1, 4, 0, 3, FKV_GROUP_MAX, 1, pages, vals), 3);
    cr_assert(pages[0] == 1 && pages[1] == 3 && pages[2] == 0, "-inf pages by lower index");
}

Test(select, softmax_temperature) {
    /* scale 1 is the raw softmax; scale a is the softmax of a * scores, computed here */
    float s[] = {0, 4, 6, 1, /* head 0 */ 0, 2, 8, 3 /* head 1 */};
    float raw[3], scaled[3];
    reduce_all(s, 2, 4, 1, FKV_GROUP_SOFTMAX_MEAN, 1.0f, raw);
    reduce_all(s, 2, 4, 1, FKV_GROUP_SOFTMAX_MEAN, 0.125f, scaled);
    for (int j = 0; j < 3; j++) {
        double want_raw = 0, want_scaled = 0;
        for (int r = 0; r < 2; r++) {
            const float *h = s + 4 * r + 1;
            double zr = 0, zs = 0;
            for (int k = 0; k < 3; k++)
                zr += exp(h[k]), zs += exp(0.125 * h[k]);
            want_raw += exp(h[j]) / zr / 2;
            want_scaled += exp(0.125 * h[j]) / zs / 2;
        }
        cr_expect_float_eq(raw[j], want_raw, 1e-6, "raw page %d", j);
        cr_expect_float_eq(scaled[j], want_scaled, 1e-6, "scaled page %d", j);
    }
    /* a cooler softmax (smaller scale) flattens the reduced scores */
    cr_expect_lt(scaled[1] - scaled[0], raw[1] - raw[0]);
    /* the other modes ignore it */
    float a[3], b[3];
    reduce_all(s, 2, 4, 1, FKV_GROUP_MEAN, 1.0f, a);
    reduce_all(s, 2, 4, 1, FKV_GROUP_MEAN, 0.125f, b);
    cr_expect_arr_eq(a, b, sizeof a);
    fkv_config c;
    fkv_config_init(&c);
    cr_expect_eq(c.group_temperature, FKV_TEMP_RAW, "the default is unchanged");
    cr_expect_eq(fkv_group_temp_scale(&c), 1.0);
    c.group_temperature = FKV_TEMP_SQRT_D;
    c.head_dim = 64;
    cr_expect_eq(fkv_group_temp_scale(&c), 0.125);
}

/* The group reduction as the op defines it, one page and one row at a time (the CPU
 * reference computes it in vectors): rows r ascending into row 0; softmax with each row's max
 * (NaN skipped) and its sum of expf in page order; NaN ranks last, -0 ties +0. */
static void reduce_definition(float *s, uint32_t group, uint32_t n, uint32_t first,
                              fkv_group_reduce mode, float scale) {
    for (uint32_t r = 0; r < group; r++) {
        float *row = s + (size_t)r * n, m = -INFINITY, sum = 0.0f;
        if (mode == FKV_GROUP_SOFTMAX_MEAN) {
            for (uint32_t j = first; j < n; j++)
                m = row[j] > m ? row[j] : m;
            for (uint32_t j = first; j < n; j++) {
                row[j] = expf((row[j] - m) * scale);
                sum += row[j];
            }
        }
        for (uint32_t j = first; j < n; j++) {
            float acc = r == 0 ? (mode == FKV_GROUP_MAX ? -INFINITY : 0.0f) : s[j];
            if (mode == FKV_GROUP_SOFTMAX_MEAN)
                acc += row[j] / sum / (float)group;
            else if (mode == FKV_GROUP_MEAN)
                acc += row[j] / (float)group;
            else
                acc = row[j] > acc ? row[j] : acc;
            s[j] = acc;
        }
    }
    for (uint32_t j = first; j < n; j++)
        s[j] = s[j] != s[j] ? -INFINITY : s[j] == 0.0f ? 0.0f : s[j];
}

Test(select, reduction_is_the_definition_bit_for_bit) {
    th_rng r;
    th_seed(&r, 11);
    static const float special[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 3.0f, -3.0f};
    static const fkv_group_reduce modes[] = {FKV_GROUP_SOFTMAX_MEAN, FKV_GROUP_MEAN,
                                             FKV_GROUP_MAX};
    for (int trial = 0; trial < 120; trial++) {
        uint32_t group = 1 + th_u32(&r) % 8, n = 1 + th_u32(&r) % 300;
        uint32_t first = th_u32(&r) % 4 < 3 ? th_u32(&r) % (n < 20 ? n : 20) : 0;
        fkv_group_reduce mode = modes[trial % 3];
        float scale = trial % 2 ? 1.0f : 0.125f;
        size_t len = (size_t)group * n;
        float *s = malloc(sizeof(float) * len), *want = malloc(sizeof(float) * len);
        uint32_t *pages = malloc(sizeof(uint32_t) * n);
        float *vals = malloc(sizeof(float) * n);
        cr_assert(s && want && pages && vals);
        th_fill_normal(&r, s, len, 4.0f);
        /* a third of the trials, in every mode: special values; some rows all zeros of
         * either sign */
        for (size_t i = 0; trial / 3 % 3 == 1 && i < len; i++)
            if (th_u32(&r) % 16 == 0)
                s[i] = special[th_u32(&r) % 7];
        if (trial % 5 == 0)
            for (uint32_t j = 0; j < n; j++)
                s[j] = j % 2 ? 0.0f : -0.0f;
        memcpy(want, s, sizeof(float) * len);
        reduce_definition(want, group, n, first, mode, scale);
        uint32_t got = select_one(s, group, n, first, n - first, mode, scale, pages, vals);
        cr_assert_eq(got, n - first);
        for (uint32_t i = 0; i < got; i++) {
            uint32_t a, b;
            memcpy(&a, &vals[i], sizeof a);
            memcpy(&b, &want[pages[i]], sizeof b);
            cr_assert_eq(a, b, "trial %d (group %u, %u pages from %u, mode %d): page %u: %a, "
                         "want %a", trial, group, n, first, (int)mode, pages[i], vals[i],
                         want[pages[i]]);
        }
        free(s);
        free(want);
        free(pages);
        free(vals);
    }
}

Test(select, order_selection_is_stable_descending) {
    uint32_t page[] = {2, 4, 5, 7, 9, 11, 12};
    float score[] = {1, 3, 1, 3, 0, 3, -INFINITY};
    uint32_t tp[7];
    float ts[7];
    fkv_order_selection(page, score, 7, tp, ts);
    const uint32_t want[] = {4, 7, 11, 2, 5, 9, 12};
    for (int i = 0; i < 7; i++)
        cr_expect_eq(page[i], want[i], "#%d is page %u, want %u", i, page[i], want[i]);
    cr_expect_eq(score[0], 3.0f);
    fkv_order_selection(page, score, 0, tp, ts); /* nothing to order */
}

Test(select, plan_keeps_resident_and_evicts_lowest_first) {
    int32_t slot_page[4] = {10, 11, -1, 13};
    float slot_score[4] = {0.5f, 0.1f, 0, 0.3f};
    uint32_t sel[] = {13, 20, 21};
    float sel_score[] = {0.9f, 0.8f, 0.7f};
    uint32_t fs[4], fp[4], work[FKV_PLAN_WORK(4)];
    uint32_t n = fkv_plan_slots(slot_page, slot_score, 4, sel, sel_score, 3, fs, fp, work);
    cr_assert_eq(n, 2, "13 is resident: only 20 and 21 are recalled");
    cr_assert_eq(fs[0], 2, "empty slot used first");
    cr_assert_eq(fp[0], 20);
    /* the old scores rank the victims: page 11 (0.1) before page 10 (0.5) */
    cr_assert_eq(fs[1], 1);
    cr_assert_eq(fp[1], 21);
    cr_assert_eq(slot_page[3], 13, "resident selected page did not move");
    cr_assert_eq(slot_page[0], -1, "unselected page dropped from the attention set");
}

Test(select, plan_never_recalls_resident_random) {
    th_rng r;
    th_seed(&r, 3);
    int32_t slot_page[16];
    float slot_score[16];
    for (int i = 0; i < 16; i++) {
        slot_page[i] = -1;
        slot_score[i] = 0;
    }
    for (int step = 0; step < 200; step++) {
        uint32_t sel[16];
        float sc[16];
        uint32_t n_sel = 1 + th_u32(&r) % 16;
        for (uint32_t i = 0; i < n_sel; i++) { /* distinct pages from 0..39 */
            uint32_t pg;
            int dup;
            do {
                pg = th_u32(&r) % 40;
                dup = 0;
                for (uint32_t j = 0; j < i; j++)
                    dup |= sel[j] == pg;
            } while (dup);
            sel[i] = pg;
            sc[i] = th_uniform(&r);
        }
        int32_t before[16];
        for (int i = 0; i < 16; i++)
            before[i] = slot_page[i];
        uint32_t fs[16], fp[16], work[FKV_PLAN_WORK(16)];
        uint32_t nf = fkv_plan_slots(slot_page, slot_score, 16, sel, sc, n_sel, fs, fp, work);
        for (uint32_t f = 0; f < nf; f++)
            for (int i = 0; i < 16; i++)
                cr_assert_neq(before[i], (int32_t)fp[f], "recalled resident page %u", fp[f]);
        for (uint32_t i = 0; i < n_sel; i++) { /* every selected page is now held once */
            int held = 0;
            for (int m = 0; m < 16; m++)
                held += slot_page[m] == (int32_t)sel[i];
            cr_assert_eq(held, 1, "page %u held %d times", sel[i], held);
        }
    }
}
