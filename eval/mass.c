/* Exact attention mass per page and the oracle (mass.h). */
#include "mass.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

fkv_status fkv_eval_mass_size(const fkv_trace_info *in, uint32_t page, size_t *floats) {
    if (in == NULL || page == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_eval_mass_size: no trace or page 0");
    const uint64_t limit = (uint64_t)1 << 32;
    const uint64_t factors[] = {in->decode_steps, in->layers, in->q_heads,
                                ((uint64_t)in->prompt_tokens + in->decode_steps + page - 1) / page};
    uint64_t n64 = 1;
    for (int i = 0; i < 4; i++) /* stops before the product could wrap */
        n64 = factors[i] && n64 > limit / factors[i] ? limit + 1 : n64 * factors[i];
    if (n64 > limit || n64 > SIZE_MAX / sizeof(float))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "the reference attention masses would take %llu MiB; use fewer --layers "
                         "or --steps", (unsigned long long)(n64 * 4 >> 20));
    *floats = (size_t)n64;
    return FKV_OK;
}

fkv_status fkv_eval_mass_build(const fkv_trace *tr, uint32_t page, fkv_eval_mass *m) {
    memset(m, 0, sizeof *m);
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    size_t n;
    fkv_status st = fkv_eval_mass_size(in, page, &n);
    if (st != FKV_OK)
        return st;
    const uint32_t P = in->prompt_tokens, S = in->decode_steps, d = in->head_dim;
    const uint32_t Hq = in->q_heads, Hk = in->kv_heads, G = Hq / Hk;
    const uint32_t max_pages = (uint32_t)(((uint64_t)P + S + page - 1) / page);
    float *mass = calloc(n ? n : 1, sizeof(float));
    double *logit = malloc(sizeof(double) * ((size_t)P + S));
    if (mass == NULL || logit == NULL) {
        free(mass);
        free(logit);
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "the reference attention masses (%zu MiB)",
                         n * sizeof(float) >> 20);
    }
    *m = (fkv_eval_mass){.steps = S, .layers = in->layers, .hq = Hq, .page = page,
                         .max_pages = max_pages, .mass = mass};
    const double scale = 1.0 / sqrt((double)d);
    for (uint32_t l = 0; l < in->layers; l++) {
        const float *K = fkv_trace_keys(tr, l), *Q = fkv_trace_queries(tr, l);
        for (uint32_t t = 0; t < S; t++) {
            uint32_t ntok = P + t + 1; /* the step's token is appended before attending */
            for (uint32_t h = 0; h < Hq; h++) {
                const float *q = Q + ((size_t)(t + 1) * Hq + h) * d;
                double mx = -INFINITY, sum = 0;
                for (uint32_t tok = 0; tok < ntok; tok++) {
                    const float *k = K + ((size_t)tok * Hk + h / G) * d;
                    double s = 0;
                    for (uint32_t c = 0; c < d; c++)
                        s += (double)q[c] * k[c];
                    logit[tok] = s * scale;
                    if (logit[tok] > mx)
                        mx = logit[tok];
                }
                for (uint32_t tok = 0; tok < ntok; tok++)
                    sum += logit[tok] = exp(logit[tok] - mx);
                float *row = mass + (((size_t)t * in->layers + l) * Hq + h) * max_pages;
                for (uint32_t tok = 0; tok < ntok; tok++)
                    row[tok / page] += (float)(logit[tok] / sum);
            }
        }
    }
    free(logit);
    return FKV_OK;
}

void fkv_eval_mass_free(fkv_eval_mass *m) {
    free(m->mass);
    memset(m, 0, sizeof *m);
}

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

void fkv_eval_oracle(const fkv_trace_info *in, const fkv_config *c, const fkv_eval_mass *m,
                     double *mean, double *min) {
    const uint32_t G = in->q_heads / in->kv_heads, P = in->prompt_tokens, p = c->page_size;
    const uint32_t k = (c->budget_tokens - c->sink_tokens - c->window_tokens) / p;
    const uint32_t sp = c->sink_tokens / p, wp = c->window_tokens / p;
    float *group = malloc(sizeof(float) * m->max_pages * 2);
    double sum = 0, lo = 1;
    uint64_t n = 0;
    if (group == NULL) {
        *mean = *min = NAN;
        return;
    }
    float *sorted = group + m->max_pages;
    for (uint32_t t = 0; t < m->steps; t++) {
        const uint32_t ntok = P + t + 1;
        const uint32_t wb = fkv_eval_window_begin(ntok, p, sp, wp);
        /* only the pages that hold tokens carry mass (and exist in the row) */
        const uint32_t filled = (ntok + p - 1) / p;
        const uint32_t nc = wb > sp ? wb - sp : 0; /* middle candidates: pages sp .. wb-1 */
        for (uint32_t l = 0; l < m->layers; l++) {
            for (uint32_t kh = 0; kh < in->kv_heads; kh++) {
                for (uint32_t pg = 0; pg < nc; pg++) {
                    group[pg] = 0;
                    for (uint32_t j = 0; j < G; j++)
                        group[pg] += fkv_eval_mass_at(m, t, l, kh * G + j)[sp + pg];
                }
                memcpy(sorted, group, sizeof(float) * nc);
                qsort(sorted, nc, sizeof(float), cmp_desc);
                float thresh = k == 0 ? INFINITY : k < nc ? sorted[k - 1] : -1.0f;
                for (uint32_t j = 0; j < G; j++) {
                    const float *row = fkv_eval_mass_at(m, t, l, kh * G + j);
                    double cov = 0;
                    uint32_t taken = 0;
                    for (uint32_t pg = 0; pg < filled; pg++) {
                        int keep = pg < sp || pg >= wb;
                        if (!keep && group[pg - sp] >= thresh && taken < k) {
                            keep = 1;
                            taken++;
                        }
                        if (keep)
                            cov += row[pg];
                    }
                    sum += cov;
                    lo = cov < lo ? cov : lo;
                    n++;
                }
            }
        }
    }
    free(group);
    *mean = n ? sum / (double)n : NAN;
    *min = n ? lo : NAN;
}
