/* The host reference of `freekv eval` (eval/mass.h) against a straightforward computation
 * written here: every token's softmax weight in double precision, summed per page, and the
 * oracle's page choice (sink and window as the library keeps them, the k middle pages with
 * the most group mass). The trace's prompt + steps is a page multiple, so the last step's
 * sequence ends exactly at a page boundary: the current page (n / page) is empty there, and
 * must add nothing. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mass.h"
#include "trace.h"

#define PAGE 8

static fkv_trace *small_trace(uint32_t prompt, uint32_t steps) {
    fkv_synth_params p;
    fkv_synth_defaults(&p);
    p.layers = 2;
    p.q_heads = 4;
    p.kv_heads = 2;
    p.head_dim = 16;
    p.prompt_tokens = prompt;
    p.decode_steps = steps;
    p.heavy_span = 4;
    p.needles = steps < 2 ? steps : 2;
    fkv_trace *t = NULL;
    cr_assert_eq(fkv_trace_synthetic(&p, &t), FKV_OK, "%s", fkv_last_error());
    return t;
}

/* Exact per-page masses of (step t, layer l, query head h): out[page], pages of n tokens. */
static void exact_pages(const fkv_trace *tr, uint32_t t, uint32_t l, uint32_t h, double *out,
                        uint32_t n_pages) {
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    const uint32_t d = in->head_dim, n = in->prompt_tokens + t + 1;
    const uint32_t kh = h / (in->q_heads / in->kv_heads);
    const float *q = fkv_trace_queries(tr, l) + ((size_t)(t + 1) * in->q_heads + h) * d;
    double *w = malloc(sizeof(double) * n), mx = -INFINITY, sum = 0;
    cr_assert_not_null(w);
    for (uint32_t tok = 0; tok < n; tok++) {
        const float *k = fkv_trace_keys(tr, l) + ((size_t)tok * in->kv_heads + kh) * d;
        double s = 0;
        for (uint32_t c = 0; c < d; c++)
            s += (double)q[c] * k[c];
        w[tok] = s / sqrt((double)d);
        mx = w[tok] > mx ? w[tok] : mx;
    }
    for (uint32_t tok = 0; tok < n; tok++)
        sum += w[tok] = exp(w[tok] - mx);
    memset(out, 0, sizeof(double) * n_pages);
    for (uint32_t tok = 0; tok < n; tok++)
        out[tok / PAGE] += w[tok] / sum;
    free(w);
}

/* The oracle's mean and min coverage, computed page by page. */
static void exact_oracle(const fkv_trace *tr, const fkv_config *c, double *mean, double *min) {
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    const uint32_t G = in->q_heads / in->kv_heads, max_pages = 1024;
    const uint32_t sp = c->sink_tokens / PAGE, wp = c->window_tokens / PAGE;
    const uint32_t k = (c->budget_tokens - c->sink_tokens - c->window_tokens) / PAGE;
    double sum = 0, lo = INFINITY;
    unsigned count = 0;
    static double m[8][1024], group[1024];
    for (uint32_t t = 0; t < in->decode_steps; t++) {
        uint32_t n = in->prompt_tokens + t + 1;
        uint32_t held = (n + PAGE - 1) / PAGE; /* pages holding tokens */
        uint32_t cur = n / PAGE;               /* the library's current page */
        uint32_t wb = cur + 1 > wp ? cur + 1 - wp : 0;
        if (wb < sp)
            wb = sp;
        cr_assert_leq(held, max_pages);
        for (uint32_t l = 0; l < in->layers; l++) {
            for (uint32_t kh = 0; kh < in->kv_heads; kh++) {
                for (uint32_t j = 0; j < G; j++)
                    exact_pages(tr, t, l, kh * G + j, m[j], held);
                for (uint32_t pg = 0; pg < held; pg++) {
                    group[pg] = 0;
                    for (uint32_t j = 0; j < G; j++)
                        group[pg] += m[j][pg];
                }
                /* the k candidates (sink end .. window begin) with the most group mass */
                int chosen[1024] = {0};
                for (uint32_t r = 0; r < k; r++) {
                    int best = -1;
                    for (uint32_t pg = sp; pg < wb; pg++)
                        if (!chosen[pg] && (best < 0 || group[pg] > group[best]))
                            best = (int)pg;
                    if (best >= 0)
                        chosen[best] = 1;
                }
                for (uint32_t j = 0; j < G; j++) {
                    double cov = 0;
                    for (uint32_t pg = 0; pg < held; pg++)
                        if (pg < sp || pg >= wb || chosen[pg])
                            cov += m[j][pg];
                    sum += cov;
                    lo = cov < lo ? cov : lo;
                    count++;
                }
            }
        }
    }
    *mean = sum / count;
    *min = lo;
}

static void check(uint32_t prompt, uint32_t steps, uint32_t budget) {
    fkv_trace *tr = small_trace(prompt, steps);
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    fkv_config c;
    fkv_config_init(&c);
    c.page_size = PAGE;
    c.sink_tokens = 2 * PAGE;
    c.window_tokens = 3 * PAGE;
    c.budget_tokens = budget;
    fkv_eval_mass ref;
    cr_assert_eq(fkv_eval_mass_build(tr, PAGE, &ref), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(ref.max_pages, (prompt + steps + PAGE - 1) / PAGE);
    /* the masses themselves */
    double exact[1024];
    for (uint32_t t = 0; t < steps; t++)
        for (uint32_t l = 0; l < in->layers; l++)
            for (uint32_t h = 0; h < in->q_heads; h++) {
                exact_pages(tr, t, l, h, exact, ref.max_pages);
                uint32_t held = (prompt + t + 1 + PAGE - 1) / PAGE;
                const float *m = fkv_eval_mass_at(&ref, t, l, h);
                for (uint32_t pg = 0; pg < ref.max_pages; pg++)
                    cr_assert_float_eq(m[pg], pg < held ? exact[pg] : 0.0, 1e-6,
                                       "step %u layer %u head %u page %u", t, l, h, pg);
            }
    double mean, min, want_mean, want_min;
    fkv_eval_oracle(in, &c, &ref, &mean, &min);
    exact_oracle(tr, &c, &want_mean, &want_min);
    cr_expect_float_eq(mean, want_mean, 1e-6, "oracle mean %.8f, exact %.8f", mean, want_mean);
    cr_expect_float_eq(min, want_min, 1e-6, "oracle min %.8f, exact %.8f", min, want_min);
    cr_expect_leq(mean, 1.0 + 1e-6);
    fkv_eval_mass_free(&ref);
    fkv_trace_free(tr);
}

/* prompt + steps = 96 = 12 pages: the last step ends on a page boundary */
Test(oracle, exact_at_a_page_boundary) { check(90, 6, 6 * PAGE); }
/* every step of this run ends on a page boundary (1 step), with a small budget */
Test(oracle, exact_single_step_at_boundary) { check(127, 1, 6 * PAGE); }
/* and where no step does */
Test(oracle, exact_between_boundaries) { check(90, 5, 7 * PAGE); }
