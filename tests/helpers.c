#include "helpers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/dispatch.h"
#include "common/dtype.h"

void th_seed(th_rng *r, uint64_t seed) { r->s = seed * 0x9e3779b97f4a7c15ull + 1; }

uint32_t th_u32(th_rng *r) {
    /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

float th_uniform(th_rng *r) { return (float)(th_u32(r) >> 8) * (1.0f / 16777216.0f); }

float th_normal(th_rng *r) {
    float u1 = th_uniform(r), u2 = th_uniform(r);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

void th_fill_normal(th_rng *r, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++)
        x[i] = th_normal(r) * scale;
}

void th_permutation(th_rng *r, int32_t *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        a[i] = (int32_t)i;
    for (size_t i = n; i > 1; i--) { /* Fisher-Yates */
        size_t j = th_u32(r) % i;
        int32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

void th_round_dtype(float *x, size_t n, fkv_dtype dtype) {
    for (size_t i = 0; i < n; i++) {
        if (dtype == FKV_F16)
            x[i] = fkv_f16_to_f32(fkv_f32_to_f16(x[i]));
        else if (dtype == FKV_BF16)
            x[i] = fkv_bf16_to_f32(fkv_f32_to_bf16(x[i]));
    }
}

double th_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num) / (den > 1e-30 ? sqrt(den) : 1e-15);
}

double th_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d)
            m = d;
    }
    return m;
}

int th_all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

void th_attention_ref(const float *q, const float *k, const float *v, size_t n, size_t d,
                      size_t stride, float scale, float *out) {
    double m = -INFINITY, sum = 0;
    double acc[512];
    memset(acc, 0, sizeof acc);
    for (size_t t = 0; t < n; t++) {
        double s = 0;
        for (size_t c = 0; c < d; c++)
            s += (double)q[c] * k[t * stride + c];
        s *= scale;
        double nm = s > m ? s : m;
        double corr = exp(m - nm), w = exp(s - nm);
        sum = sum * corr + w;
        for (size_t c = 0; c < d; c++)
            acc[c] = acc[c] * corr + w * v[t * stride + c];
        m = nm;
    }
    for (size_t c = 0; c < d; c++)
        out[c] = n ? (float)(acc[c] / sum) : 0.0f;
}

int th_device_required(const char *backend) {
    const char *list = getenv("FREEKV_REQUIRE_DEVICES");
    size_t len = strlen(backend);
    for (const char *p = list; p && *p; p += strcspn(p, ","), p += *p == ',') {
        if (strncmp(p, backend, len) == 0 && (p[len] == ',' || p[len] == '\0'))
            return 1;
    }
    return 0;
}

void th_small_config(fkv_config *cfg) {
    fkv_config_init(cfg);
    cfg->n_layers = 2;
    cfg->n_q_heads = 4;
    cfg->n_kv_heads = 2;
    cfg->head_dim = 16;
    cfg->page_size = 4;
    cfg->budget_tokens = 32;
    cfg->sink_tokens = 8;
    cfg->window_tokens = 8;
    cfg->dtype = FKV_F32;
    cfg->max_seqs = 4;
    cfg->max_context = 512;
}

fkv_status th_set_option(fkv_device *dev, const char *key, uint64_t value) {
    char text[32];
    snprintf(text, sizeof text, "%llu", (unsigned long long)value);
    return fkv_op_set_option(dev, key, text);
}

uint64_t th_option_value(fkv_device *dev, const char *key) {
    char text[32];
    if (fkv_op_get_option(dev, key, text, sizeof text) != FKV_OK)
        return UINT64_MAX;
    return strtoull(text, NULL, 10);
}
