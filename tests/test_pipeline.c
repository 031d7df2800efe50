/* The decode pipeline end to end on the CPU reference backend. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/select.h"
#include "helpers.h"
#include "pipeline_driver.h"

static const fkv_policy all_policies[] = {FKV_POLICY_DENSE, FKV_POLICY_QUEST, FKV_POLICY_SYNC,
                                          FKV_POLICY_SPECULATIVE, FKV_POLICY_FREEKV};

/* 2 layers, 4/2 heads, d 16, p 4; budget 8 pages = sink 2 + window 2 + 4 selected. */
static fkv_config cfg_small(fkv_policy policy) {
    fkv_config c;
    th_small_config(&c);
    c.policy = policy;
    return c;
}

static pd_run run_of(uint32_t n, const uint32_t *prompts, uint32_t steps, int batched) {
    pd_run r;
    memset(&r, 0, sizeof r);
    r.n_seqs = n;
    for (uint32_t i = 0; i < n; i++) {
        r.seqs[i] = i;
        r.prompt[i] = prompts[i];
    }
    r.steps = steps;
    r.batched = batched;
    r.drift = 0.3f;
    return r;
}

static float *run_policy(fkv_config c, const pd_run *r) {
    float *out = calloc(pd_out_floats(&c, r), sizeof(float));
    fkv_status st = pd_run_cpu(&c, r, out, NULL, NULL);
    cr_assert_eq(st, FKV_OK, "policy %s: %s", fkv_policy_name(c.policy), fkv_last_error());
    cr_assert(th_all_finite(out, pd_out_floats(&c, r)), "non-finite output");
    return out;
}

Test(pipeline, budget_covering_context_equals_dense) {
    uint32_t prompts[] = {37, 5, 90};
    pd_run r = run_of(3, prompts, 12, 1);
    fkv_config base = cfg_small(FKV_POLICY_DENSE);
    base.budget_tokens = base.max_context; /* everything fits */
    float *dense = run_policy(base, &r);
    for (size_t i = 1; i < sizeof all_policies / sizeof *all_policies; i++) {
        fkv_config c = base;
        c.policy = all_policies[i];
        float *o = run_policy(c, &r);
        double err = th_rel_l2(o, dense, pd_out_floats(&c, &r));
        cr_expect_leq(err, 1e-6, "%s vs dense: rel L2 %g", fkv_policy_name(c.policy), err);
        free(o);
    }
    free(dense);
}

Test(pipeline, tau_one_freekv_equals_sync) {
    uint32_t prompts[] = {60, 45};
    pd_run r = run_of(2, prompts, 16, 1);
    fkv_config c = cfg_small(FKV_POLICY_SYNC);
    float *sync = run_policy(c, &r);
    c.policy = FKV_POLICY_FREEKV;
    c.tau = 1.0f;
    float *fk = run_policy(c, &r);
    c.policy = FKV_POLICY_SPECULATIVE;
    float *spec = run_policy(c, &r);
    size_t n = pd_out_floats(&c, &r);
    cr_expect(memcmp(sync, fk, n * sizeof(float)) == 0, "freekv(tau=1) differs from sync");
    /* the budget must really restrict, or the equality above proves nothing */
    cr_expect(memcmp(sync, spec, n * sizeof(float)) != 0,
              "speculative equals sync: selection never mattered");
    free(sync);
    free(fk);
    free(spec);
}

/* The group reduction and top-k the host ran before select_pages moved them to the device, in
 * double precision: an oracle the device's f32 selection must match on these untied data. */
static void oracle_reduce(const float *scores, size_t stride, uint32_t group, uint32_t cand_begin,
                          uint32_t cand_end, fkv_group_reduce mode, double temp_scale, float *out) {
    uint32_t n = cand_end - cand_begin;
    for (uint32_t j = 0; j < n; j++)
        out[j] = mode == FKV_GROUP_MAX ? -INFINITY : 0.0f;
    for (uint32_t r = 0; r < group; r++) {
        const float *s = scores + r * stride + cand_begin;
        if (mode == FKV_GROUP_SOFTMAX_MEAN) {
            float m = -INFINITY;
            for (uint32_t j = 0; j < n; j++)
                m = s[j] > m ? s[j] : m;
            /* the scale multiplies after the max is taken out (the max of scaled scores is the
             * scaled max); a scale of 1 is exact, so the raw default is bit for bit the
             * softmax of the raw bounds */
            double sum = 0;
            for (uint32_t j = 0; j < n; j++)
                sum += exp(((double)s[j] - m) * temp_scale);
            for (uint32_t j = 0; j < n; j++)
                out[j] += (float)(exp(((double)s[j] - m) * temp_scale) / sum / group);
        } else if (mode == FKV_GROUP_MEAN) {
            for (uint32_t j = 0; j < n; j++)
                out[j] += s[j] / (float)group;
        } else {
            for (uint32_t j = 0; j < n; j++)
                out[j] = s[j] > out[j] ? s[j] : out[j];
        }
    }
    /* NaN scores (corrupt keys) must not win or break the ordering: rank them last. */
    for (uint32_t j = 0; j < n; j++)
        if (out[j] != out[j])
            out[j] = -INFINITY;
}

/* Indices of the k largest values, ties to the lower index, best first. */
static uint32_t oracle_topk(const float *values, uint32_t n, uint32_t k, uint32_t *out) {
    uint32_t m = 0;
    if (k > n)
        k = n;
    for (uint32_t i = 0; i < n && k > 0; i++) {
        float v = values[i];
        if (m == k && !(v > values[out[m - 1]]))
            continue; /* ties keep the lower index already held */
        uint32_t pos = m < k ? m++ : k - 1;
        while (pos > 0 && v > values[out[pos - 1]]) {
            out[pos] = out[pos - 1];
            pos--;
        }
        out[pos] = i;
    }
    return m;
}

/* Host-side expectation: top-k pages for a query over the summaries of stored keys. */
static void expected_selection(const fkv_config *c, const float *keys, uint32_t cand_end,
                               const float *q, uint32_t h, uint32_t *pages, uint32_t *n_sel) {
    uint32_t p = c->page_size, d = c->head_dim, hk = c->n_kv_heads, G = c->n_q_heads / hk;
    uint32_t S = c->sink_tokens / p;
    uint32_t n_mid = c->budget_tokens / p - S - c->window_tokens / p;
    float *scores = calloc((size_t)G * cand_end, sizeof(float));
    float *reduced = calloc(cand_end, sizeof(float));
    for (uint32_t r = 0; r < G; r++)
        for (uint32_t j = 0; j < cand_end; j++) {
            float s = 0;
            for (uint32_t ch = 0; ch < d; ch++) {
                float mn = INFINITY, mx = -INFINITY;
                for (uint32_t t = 0; t < p; t++) {
                    float x = keys[((size_t)(j * p + t) * hk + h) * d + ch];
                    mn = x < mn ? x : mn;
                    mx = x > mx ? x : mx;
                }
                float qc = q[(size_t)(h * G + r) * d + ch];
                s += fmaxf(qc * mx, qc * mn);
            }
            scores[(size_t)r * cand_end + j] = s;
        }
    *n_sel = 0;
    if (cand_end > S) {
        /* the temperature as fkv_config documents it, not through the library's helper */
        double scale = c->group_temperature == FKV_TEMP_SQRT_D ? 1.0 / sqrt((double)d) : 1.0;
        oracle_reduce(scores, cand_end, G, S, cand_end, c->group_reduce, scale, reduced);
        *n_sel = oracle_topk(reduced, cand_end - S, n_mid, pages);
        for (uint32_t i = 0; i < *n_sel; i++)
            pages[i] += S;
    }
    free(scores);
    free(reduced);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Returns how many (step, layer, KV head) selections differ from those under the other
 * temperature (0 when `differs_from` is NULL); fills `pages` [10][layers][kv_heads][512]. */
static void check_speculative_selection(fkv_group_temp temp, int32_t *pages,
                                        const int32_t *other, int *n_differ) {
    fkv_config c = cfg_small(FKV_POLICY_SPECULATIVE);
    c.group_temperature = temp;
    uint32_t prompt[] = {61};
    pd_run r = run_of(1, prompt, 0, 1);
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(pd_run_cpu(&c, &r, NULL, &dev, &ctx), FKV_OK, "%s", fkv_last_error());
    uint32_t p = c.page_size, S = c.sink_tokens / p, W = c.window_tokens / p;
    size_t qn = (size_t)c.n_q_heads * c.head_dim;
    float *keys = malloc(sizeof(float) * c.max_context * c.n_kv_heads * c.head_dim);
    float *vals = malloc(sizeof(float) * c.max_context * c.n_kv_heads * c.head_dim);
    float *qprev = malloc(sizeof(float) * qn);
    int checked_middle = 0;
    for (uint32_t step = 0; step < 10; step++) {
        r.first_step = step;
        r.steps = step + 1;
        r.resume = 1;
        cr_assert_eq(pd_execute(ctx, &r, NULL), FKV_OK, "%s", fkv_last_error());
        for (uint32_t l = 0; l < c.n_layers; l++) {
            uint32_t n;
            cr_assert_eq(fkv_context_read_kv(ctx, 0, l, keys, vals, c.max_context, &n), FKV_OK);
            cr_assert_eq(n, prompt[0] + step + 1);
            /* selected at n-1 tokens for n, with the previous step's (or prefill's) query */
            pd_query(&c, r.drift, 0, l, n - 2, qprev);
            uint32_t cur = n / p;
            uint32_t wb = cur + 1 >= W ? cur + 1 - W : 0;
            wb = wb > S ? wb : S;
            uint32_t cand_end = wb < (n - 1) / p ? wb : (n - 1) / p;
            for (uint32_t h = 0; h < c.n_kv_heads; h++) {
                uint32_t want[512], n_want;
                expected_selection(&c, keys, cand_end, qprev, h, want, &n_want);
                uint32_t all[512], n_all = 0;
                for (uint32_t j = 0; j < S && j * p < n; j++)
                    all[n_all++] = j;
                for (uint32_t i = 0; i < n_want; i++)
                    all[n_all++] = want[i];
                for (uint32_t j = wb; j <= cur && j * p < n; j++)
                    all[n_all++] = j;
                qsort(all, n_all, sizeof *all, cmp_u32);
                int32_t got[512];
                size_t n_got;
                cr_assert_eq(fkv_context_attended_pages(ctx, 0, l, h, got, 512, &n_got), FKV_OK);
                cr_assert_eq(n_got, n_all, "step %u layer %u head %u: %zu pages, expected %u",
                             step, l, h, n_got, n_all);
                for (uint32_t i = 0; i < n_all; i++)
                    cr_assert_eq((uint32_t)got[i], all[i], "step %u layer %u head %u: page #%u",
                                 step, l, h, i);
                checked_middle += n_want > 0;
                int32_t *mine = pages + (((size_t)step * c.n_layers + l) * c.n_kv_heads + h) * 512;
                memset(mine, 0xff, 512 * sizeof *mine);
                memcpy(mine, got, n_got * sizeof *got);
                if (other)
                    *n_differ += memcmp(mine, other + (mine - pages), 512 * sizeof *mine) != 0;
            }
        }
    }
    cr_expect_gt(checked_middle, 0, "no step had selected pages to check");
    free(keys);
    free(vals);
    free(qprev);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

Test(pipeline, speculative_attends_previous_query_selection) {
    fkv_config c = cfg_small(FKV_POLICY_SPECULATIVE);
    size_t n = (size_t)10 * c.n_layers * c.n_kv_heads * 512;
    int32_t *raw = malloc(n * sizeof *raw), *scaled = malloc(n * sizeof *scaled);
    cr_assert(raw && scaled);
    int differ = 0;
    check_speculative_selection(FKV_TEMP_RAW, raw, NULL, &differ);
    /* the 1/sqrt(d) temperature reaches the selection: it matches the host model under that
     * temperature, and that model chooses differently from the raw one somewhere */
    check_speculative_selection(FKV_TEMP_SQRT_D, scaled, raw, &differ);
    cr_expect_gt(differ, 0, "the temperature changed no selection: the test proves nothing");
    free(raw);
    free(scaled);
}

/* Every token appended is stored exactly once: host pool + device current page, in order. */
static void check_kv_roundtrip_of(fkv_dtype dtype, fkv_policy policy, uint32_t *prompts) {
    fkv_config c = cfg_small(policy);
    c.dtype = dtype;
    pd_run r = run_of(2, prompts, 25, 1);
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(pd_run_cpu(&c, &r, NULL, &dev, &ctx), FKV_OK, "%s", fkv_last_error());
    size_t kv = (size_t)c.n_kv_heads * c.head_dim;
    float *k = malloc(sizeof(float) * c.max_context * kv), *v = malloc(sizeof(float) * c.max_context * kv);
    float *want = malloc(sizeof(float) * kv);
    for (uint32_t s = 0; s < 2; s++)
        for (uint32_t l = 0; l < c.n_layers; l++) {
            uint32_t n;
            cr_assert_eq(fkv_context_read_kv(ctx, s, l, k, v, c.max_context, &n), FKV_OK, "%s",
                         fkv_last_error());
            cr_assert_eq(n, prompts[s] + r.steps);
            for (uint32_t t = 0; t < n; t++) {
                pd_data(0, s, l, t, want, kv);
                th_round_dtype(want, kv, dtype);
                cr_assert(memcmp(want, k + t * kv, kv * sizeof(float)) == 0,
                          "%s: key of seq %u layer %u token %u", fkv_dtype_name(dtype), s, l, t);
                pd_data(1, s, l, t, want, kv);
                th_round_dtype(want, kv, dtype);
                cr_assert(memcmp(want, v + t * kv, kv * sizeof(float)) == 0,
                          "%s: value of seq %u layer %u token %u", fkv_dtype_name(dtype), s, l, t);
            }
        }
    free(k);
    free(v);
    free(want);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

static void check_kv_roundtrip(fkv_dtype dtype, fkv_policy policy) {
    uint32_t prompts[] = {37, 90};
    check_kv_roundtrip_of(dtype, policy, prompts);
}

Test(pipeline, every_token_stored_once_f32) { check_kv_roundtrip(FKV_F32, FKV_POLICY_FREEKV); }
/* Prompts of several prefill chunks and host pool pieces (64 pages each, page 4): the batched
 * offload reads whole runs of pages into the host pool, across the pieces' boundaries. */
Test(pipeline, every_token_stored_once_long_prompts) {
    uint32_t prompts[] = {470, 259};
    check_kv_roundtrip_of(FKV_F16, FKV_POLICY_FREEKV, prompts);
}
Test(pipeline, every_token_stored_once_bf16) { check_kv_roundtrip(FKV_BF16, FKV_POLICY_SYNC); }
Test(pipeline, every_token_stored_once_f16_quest) { check_kv_roundtrip(FKV_F16, FKV_POLICY_QUEST); }

/* The last step's output equals naive attention over the pages the context reports. */
static void check_attention_matches_pages(fkv_policy policy, uint32_t prompt) {
    fkv_config c = cfg_small(policy);
    uint32_t prompts[] = {prompt};
    pd_run r = run_of(1, prompts, 3, 1);
    float *out = calloc(pd_out_floats(&c, &r), sizeof(float));
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(pd_run_cpu(&c, &r, out, &dev, &ctx), FKV_OK, "prompt %u: %s", prompt,
                 fkv_last_error());
    uint32_t p = c.page_size, d = c.head_dim, hk = c.n_kv_heads, G = c.n_q_heads / hk;
    size_t kv = (size_t)hk * d;
    float *k = malloc(sizeof(float) * c.max_context * kv), *v = malloc(sizeof(float) * c.max_context * kv);
    float *q = malloc(sizeof(float) * c.n_q_heads * d);
    float *gk = malloc(sizeof(float) * c.max_context * d), *gv = malloc(sizeof(float) * c.max_context * d);
    float ref[256];
    for (uint32_t l = 0; l < c.n_layers; l++) {
        uint32_t n;
        cr_assert_eq(fkv_context_read_kv(ctx, 0, l, k, v, c.max_context, &n), FKV_OK);
        pd_query(&c, r.drift, 0, l, n - 1, q);
        const float *o = out + ((size_t)(r.steps - 1) * c.n_layers + l) * c.n_q_heads * d;
        for (uint32_t h = 0; h < hk; h++) {
            int32_t pages[512];
            size_t np;
            cr_assert_eq(fkv_context_attended_pages(ctx, 0, l, h, pages, 512, &np), FKV_OK);
            if (policy != FKV_POLICY_DENSE)
                cr_assert_leq(np, c.budget_tokens / p, "more pages than the budget");
            size_t nt = 0;
            for (size_t i = 0; i < np; i++) {
                if (i)
                    cr_assert_lt(pages[i - 1], pages[i], "pages not distinct/sorted");
                for (uint32_t t = pages[i] * p; t < (pages[i] + 1) * p && t < n; t++, nt++) {
                    memcpy(gk + nt * d, k + (t * hk + h) * d, sizeof(float) * d);
                    memcpy(gv + nt * d, v + (t * hk + h) * d, sizeof(float) * d);
                }
            }
            if (n <= c.budget_tokens)
                cr_assert_eq(nt, n, "prompt %u: all %u tokens fit, %zu attended", prompt, n, nt);
            for (uint32_t r2 = 0; r2 < G; r2++) {
                uint32_t qh = h * G + r2;
                th_attention_ref(q + qh * d, gk, gv, nt, d, d, 1.0f / sqrtf((float)d), ref);
                double err = th_rel_l2(o + qh * d, ref, d);
                cr_assert_leq(err, 1e-5, "%s prompt %u layer %u q head %u: rel err %g",
                              fkv_policy_name(policy), prompt, l, qh, err);
            }
        }
    }
    free(k), free(v), free(q), free(gk), free(gv), free(out);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

Test(pipeline, prefill_lengths) {
    fkv_config c = cfg_small(FKV_POLICY_FREEKV);
    uint32_t p = c.page_size, B = c.budget_tokens;
    uint32_t lengths[] = {1, p - 1, p, p + 1, B - 1, B, B + 1, 3 * B + 3, 300};
    fkv_policy pols[] = {FKV_POLICY_FREEKV, FKV_POLICY_SYNC, FKV_POLICY_QUEST,
                         FKV_POLICY_SPECULATIVE, FKV_POLICY_DENSE};
    for (size_t pi = 0; pi < sizeof pols / sizeof *pols; pi++)
        for (size_t i = 0; i < sizeof lengths / sizeof *lengths; i++)
            check_attention_matches_pages(pols[pi], lengths[i]);
}

Test(pipeline, batch_equals_one_at_a_time) {
    uint32_t prompts[] = {37, 5, 90};
    fkv_policy pols[] = {FKV_POLICY_FREEKV, FKV_POLICY_SPECULATIVE, FKV_POLICY_SYNC,
                         FKV_POLICY_QUEST};
    for (size_t i = 0; i < sizeof pols / sizeof *pols; i++) {
        fkv_config c = cfg_small(pols[i]);
        pd_run batched = run_of(3, prompts, 14, 1), single = run_of(3, prompts, 14, 0);
        float *a = run_policy(c, &batched), *b = run_policy(c, &single);
        cr_expect(memcmp(a, b, pd_out_floats(&c, &batched) * sizeof(float)) == 0,
                  "%s: batched output differs from one sequence at a time",
                  fkv_policy_name(c.policy));
        free(a);
        free(b);
    }
}

Test(pipeline, corrections_counted_per_head) {
    fkv_config c = cfg_small(FKV_POLICY_FREEKV);
    c.tau = 0.95f; /* drift 0.3 gives cos ~0.92: most heads corrected, not necessarily all */
    uint32_t prompts[] = {80};
    pd_run r = run_of(1, prompts, 10, 1);
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(pd_run_cpu(&c, &r, NULL, &dev, &ctx), FKV_OK);
    fkv_stats s;
    uint64_t per[64] = {0}, sum = 0;
    cr_assert_eq(fkv_context_get_stats(ctx, &s), FKV_OK);
    cr_assert_eq(fkv_context_get_corrections(ctx, per, 64), FKV_OK);
    for (uint32_t i = 0; i < c.n_layers * c.n_kv_heads; i++)
        sum += per[i];
    cr_expect_eq(s.heads_checked, (uint64_t)r.steps * c.n_layers * c.n_kv_heads);
    cr_expect_eq(sum, s.corrections);
    cr_expect_gt(s.corrections, 0);
    cr_expect_eq(s.steps, r.steps);
    cr_expect_gt(s.pages_offloaded, 0);
    cr_expect_gt(s.host_bytes, 0);
    cr_expect_gt(s.device_bytes, 0);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}
