/* The quantized host formats' reference codec (common/hostfmt.c): the byte layout of a unit,
 * round-half-to-even codes, the int4 nibble order, round-trip error bounds, constant groups,
 * and NaN / infinity / out-of-f16-range groups (all NaN after dequantization). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "backends/dispatch.h"
#include "common/dtype.h"
#include "common/hostfmt.h"
#include "helpers.h"

#define P 16
#define D 32

static float f16_at(const unsigned char *at) {
    return fkv_f16_to_f32((uint16_t)(at[0] | (at[1] << 8)));
}

/* Byte offsets of the parts of a unit (the layout hostfmt.h and docs/pipeline.md state). */
static size_t codes_bytes(fkv_host_format f) { return (size_t)P * D * fkv_hostfmt_bits(f) / 8; }
static size_t k_scale_at(fkv_host_format f) { return 2 * codes_bytes(f); }
static size_t k_zero_at(fkv_host_format f) { return k_scale_at(f) + 2 * D; }
static size_t v_scale_at(fkv_host_format f) { return k_zero_at(f) + 2 * D; }
static size_t v_zero_at(fkv_host_format f) { return v_scale_at(f) + 2 * P; }

/* A deterministic pseudo-random value in [-1, 1). */
static float rnd(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / 8388608.0f - 1.0f;
}

static unsigned char *quantize(fkv_host_format f, const float *k, const float *v) {
    size_t bytes = fkv_hostfmt_unit_bytes(f, P, D, 4);
    unsigned char *unit = malloc(bytes);
    cr_assert_not_null(unit);
    memset(unit, 0xa5, bytes); /* every byte must be written */
    fkv_hostfmt_quantize(f, P, D, k, v, FKV_F32, 0, D, unit);
    return unit;
}

Test(hostfmt, unit_bytes) {
    cr_assert_eq(fkv_hostfmt_unit_bytes(FKV_HOST_SAME, 32, 128, 2), 2u * 32 * 128 * 2);
    /* data + f16 scale and zero per key channel and per value token */
    cr_assert_eq(fkv_hostfmt_unit_bytes(FKV_HOST_Q8, 32, 128, 2), 2u * 32 * 128 + 4u * (128 + 32));
    cr_assert_eq(fkv_hostfmt_unit_bytes(FKV_HOST_Q4, 32, 128, 2), 32u * 128 + 4u * (128 + 32));
    /* the targets against bf16: <= 0.55x (q8) and <= 0.32x (q4) */
    double same = (double)fkv_hostfmt_unit_bytes(FKV_HOST_SAME, 32, 128, 2);
    cr_assert_leq(fkv_hostfmt_unit_bytes(FKV_HOST_Q8, 32, 128, 2) / same, 0.55);
    cr_assert_leq(fkv_hostfmt_unit_bytes(FKV_HOST_Q4, 32, 128, 2) / same, 0.32);
}

Test(hostfmt, codes_round_half_to_even_and_clamp) {
    cr_assert_eq(fkv_hostfmt_code(0.5f, 0.0f, 1.0f, 255), 0u);
    cr_assert_eq(fkv_hostfmt_code(1.5f, 0.0f, 1.0f, 255), 2u);
    cr_assert_eq(fkv_hostfmt_code(2.5f, 0.0f, 1.0f, 255), 2u);
    cr_assert_eq(fkv_hostfmt_code(3.5f, 0.0f, 1.0f, 255), 4u);
    cr_assert_eq(fkv_hostfmt_code(2.5f, 1.0f, 0.5f, 15), 3u); /* (2.5 - 1) / 0.5 = 3 */
    cr_assert_eq(fkv_hostfmt_code(1.25f, 1.0f, 0.5f, 15), 0u); /* 0.5: to even 0 */
    cr_assert_eq(fkv_hostfmt_code(1.75f, 1.0f, 0.5f, 15), 2u); /* 1.5: to even 2 */
    cr_assert_eq(fkv_hostfmt_code(-3.0f, 0.0f, 1.0f, 15), 0u);
    cr_assert_eq(fkv_hostfmt_code(40.0f, 0.0f, 1.0f, 15), 15u);
    cr_assert_eq(fkv_hostfmt_code(7.0f, 7.0f, 0.0f, 255), 0u); /* constant group */
}

Test(hostfmt, params_are_directed_f16) {
    uint16_t z, s;
    /* 0.1 is not an f16: the zero rounds down, the scale (0.9 - z) / 255 rounds up */
    fkv_hostfmt_params(0.1f, 0.9f, 0, 255, &z, &s);
    float zf = fkv_f16_to_f32(z), sf = fkv_f16_to_f32(s);
    cr_assert_leq(zf, 0.1f);
    cr_assert_gt(fkv_f16_to_f32((uint16_t)(z + 1)), 0.1f, "zero is not the largest f16 <= lo");
    cr_assert_geq(sf * 255.0f, 0.9f - zf);
    cr_assert_lt(fkv_f16_to_f32((uint16_t)(s - 1)) * 255.0f, 0.9f - zf, "scale not the least");
    fkv_hostfmt_params(-0.0f, 0.0f, 0, 15, &z, &s);
    cr_assert_eq(fkv_f16_to_f32(s), 0.0f);
    fkv_hostfmt_params(0.0f, 1.0f, 1, 15, &z, &s); /* a non-finite group */
    cr_assert(isnan(fkv_f16_to_f32(z)) && isnan(fkv_f16_to_f32(s)));
    fkv_hostfmt_params(-70000.0f, 1.0f, 0, 255, &z, &s); /* zero beyond f16 */
    cr_assert(isnan(fkv_f16_to_f32(z)) && isnan(fkv_f16_to_f32(s)));
}

Test(hostfmt, q4_nibble_order_and_layout) {
    float k[P * D], v[P * D];
    /* keys: channel c holds t (0..15) so its codes are t; values: token t holds c % 16 */
    for (int t = 0; t < P; t++)
        for (int c = 0; c < D; c++) {
            k[t * D + c] = (float)t;
            v[t * D + c] = (float)(c % 16);
        }
    unsigned char *u = quantize(FKV_HOST_Q4, k, v);
    /* K element (t, c) is code t: byte (t*D + c)/2, even c in the low nibble */
    cr_assert_eq(u[0], 0x00);
    cr_assert_eq(u[D / 2], 0x11, "token 1 of channels 0, 1: %#x", u[D / 2]);
    /* V element (0, 0) = 0 low, (0, 1) = 1 high */
    cr_assert_eq(u[codes_bytes(FKV_HOST_Q4)], 0x10, "%#x", u[codes_bytes(FKV_HOST_Q4)]);
    cr_assert_eq(u[codes_bytes(FKV_HOST_Q4) + 1], 0x32);
    cr_assert_eq(f16_at(u + k_scale_at(FKV_HOST_Q4)), 1.0f);
    cr_assert_eq(f16_at(u + k_zero_at(FKV_HOST_Q4)), 0.0f);
    cr_assert_eq(f16_at(u + v_scale_at(FKV_HOST_Q4)), 1.0f);
    cr_assert_eq(f16_at(u + v_zero_at(FKV_HOST_Q4)), 0.0f);
    for (int t = 0; t < P; t++)
        for (int c = 0; c < D; c++) {
            cr_assert_eq(fkv_hostfmt_load(FKV_HOST_Q4, P, D, u, 0, t, c), (float)t);
            cr_assert_eq(fkv_hostfmt_load(FKV_HOST_Q4, P, D, u, 1, t, c), (float)(c % 16));
        }
    free(u);
}

/* Every element within half a step (plus f32 rounding) of its input, with the step the
 * group's scale, and the scale within one f16 rounding of range / levels. */
static void round_trip(fkv_host_format f, uint32_t seed) {
    float k[P * D], v[P * D];
    uint32_t s = seed;
    for (int t = 0; t < P; t++)
        for (int c = 0; c < D; c++) {
            float outlier = c % 7 == 3 ? 40.0f : 1.0f; /* keys' outlier channels */
            k[t * D + c] = outlier * rnd(&s) + (c % 5 == 0 ? 12.0f : 0.0f);
            v[t * D + c] = (t % 4 == 1 ? 9.0f : 0.5f) * rnd(&s);
        }
    unsigned char *u = quantize(f, k, v);
    float levels = (float)((1u << fkv_hostfmt_bits(f)) - 1);
    for (int kv = 0; kv < 2; kv++) {
        const float *x = kv ? v : k;
        int groups = kv ? P : D;
        for (int g = 0; g < groups; g++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int j = 0; j < (kv ? D : P); j++) {
                float e = kv ? x[g * D + j] : x[j * D + g];
                lo = fminf(lo, e);
                hi = fmaxf(hi, e);
            }
            float scale = f16_at(u + (kv ? v_scale_at(f) : k_scale_at(f)) + 2 * g);
            float zero = f16_at(u + (kv ? v_zero_at(f) : k_zero_at(f)) + 2 * g);
            /* the zero: the f16 at or below lo (within an f16 step of it); the scale: the
             * range from there over the levels, rounded up to an f16 */
            cr_assert(zero <= lo && lo - zero <= fabsf(lo) * (1.0f / 1024) + 1e-7f, "zero %g",
                      (double)zero);
            cr_assert_leq(scale, (hi - zero) / levels * (1.0f + 1.0f / 512) + 1e-7f,
                          "group scale too large");
            for (int j = 0; j < (kv ? D : P); j++) {
                int t = kv ? g : j, c = kv ? j : g;
                float e = x[t * D + c];
                float back = fkv_hostfmt_load(f, P, D, u, kv, (uint32_t)t, (uint32_t)c);
                float bound = scale * 0.5f + fabsf(e) * 1e-6f;
                cr_assert_leq(fabsf(back - e), bound,
                              "%s %s (%d, %d): %g came back %g, bound %g",
                              fkv_host_format_name(f), kv ? "V" : "K", t, c, (double)e,
                              (double)back, (double)bound);
            }
        }
    }
    free(u);
}

Test(hostfmt, round_trip_error_bounds) {
    for (uint32_t seed = 1; seed <= 8; seed++) {
        round_trip(FKV_HOST_Q8, seed);
        round_trip(FKV_HOST_Q4, seed);
    }
}

Test(hostfmt, constant_groups) {
    float k[P * D], v[P * D];
    for (int t = 0; t < P; t++)
        for (int c = 0; c < D; c++) {
            k[t * D + c] = c == 2 ? 0.1f : c == 3 ? 3.0f : (float)(t - c);
            v[t * D + c] = t == 5 ? -2.5f : (float)c * 0.25f;
        }
    fkv_host_format fs[] = {FKV_HOST_Q8, FKV_HOST_Q4};
    for (int i = 0; i < 2; i++) {
        unsigned char *u = quantize(fs[i], k, v);
        for (int t = 0; t < P; t++) {
            /* an f16 value comes back exactly; another within an f16 rounding (down) */
            cr_assert_eq(fkv_hostfmt_load(fs[i], P, D, u, 0, t, 3), 3.0f);
            float back = fkv_hostfmt_load(fs[i], P, D, u, 0, t, 2);
            cr_assert(fabsf(back - 0.1f) < 1e-4f, "%g", (double)back);
        }
        for (int c = 0; c < D; c++)
            cr_assert_eq(fkv_hostfmt_load(fs[i], P, D, u, 1, 5, c), -2.5f);
        free(u);
    }
}

Test(hostfmt, nonfinite_groups_dequantize_to_nan) {
    float k[P * D], v[P * D];
    uint32_t s = 7;
    for (int i = 0; i < P * D; i++) {
        k[i] = rnd(&s);
        v[i] = rnd(&s);
    }
    k[4 * D + 6] = NAN;       /* key channel 6 */
    k[9 * D + 8] = INFINITY;  /* key channel 8 */
    k[2 * D + 10] = -1.0e5f;  /* key channel 10: its zero is beyond f16 */
    v[3 * D + 1] = -INFINITY; /* value token 3 */
    fkv_host_format fs[] = {FKV_HOST_Q8, FKV_HOST_Q4};
    for (int i = 0; i < 2; i++) {
        unsigned char *u = quantize(fs[i], k, v);
        for (int t = 0; t < P; t++)
            for (int c = 0; c < D; c++) {
                int k_bad = c == 6 || c == 8 || c == 10, v_bad = t == 3;
                float kb = fkv_hostfmt_load(fs[i], P, D, u, 0, t, c);
                float vb = fkv_hostfmt_load(fs[i], P, D, u, 1, t, c);
                cr_assert_eq(isnan(kb) != 0, k_bad, "K (%d, %d) = %g", t, c, (double)kb);
                cr_assert_eq(isnan(vb) != 0, v_bad, "V (%d, %d) = %g", t, c, (double)vb);
                if (!k_bad)
                    cr_assert_leq(fabsf(kb - k[t * D + c]), 0.2f);
            }
        free(u);
    }
}

/* fkv_hostfmt_dequantize (the CPU reference's recall: each group's scale and zero decoded
 * once) writes, through fkv_store, exactly what fkv_hostfmt_load gives element by element, at
 * first + t*stride + c of both destinations, and nothing else: random units (codes, f16 scales
 * and zeros, NaN groups among them) into every slot dtype. */
Test(hostfmt, dequantize_is_load_element_by_element) {
    enum { STRIDE = 3 * D + 5, FIRST = 7, N = FIRST + P * STRIDE + 3 };
    fkv_host_format fs[] = {FKV_HOST_Q8, FKV_HOST_Q4};
    fkv_dtype dts[] = {FKV_F32, FKV_F16, FKV_BF16};
    uint32_t s = 11;
    for (int i = 0; i < 2; i++) {
        size_t bytes = fkv_hostfmt_unit_bytes(fs[i], P, D, 4);
        unsigned char *u = malloc(bytes);
        cr_assert_not_null(u);
        for (size_t b = 0; b < bytes; b++)
            u[b] = (unsigned char)(rnd(&s) * 128.0f + 128.0f);
        for (size_t b = 2 * codes_bytes(fs[i]); b < bytes; b += 2) { /* finite f16 of |x| < 256 */
            uint32_t h = (uint32_t)(rnd(&s) * 32768.0f + 32768.0f);
            h = (h & 0x83ffu) | (h >> 10 & 0x1fu) % 23u << 10;
            u[b] = (unsigned char)h, u[b + 1] = (unsigned char)(h >> 8);
        }
        u[k_scale_at(fs[i]) + 2 * 5 + 1] = 0x7e; /* key channel 5 and value token 2: NaN */
        u[k_scale_at(fs[i]) + 2 * 5] = 0x00;
        u[v_zero_at(fs[i]) + 2 * 2 + 1] = 0x7e;
        u[v_zero_at(fs[i]) + 2 * 2] = 0x00;
        for (int j = 0; j < 3; j++) {
            size_t es = fkv_dtype_size(dts[j]);
            unsigned char *kd = malloc(N * es), *vd = malloc(N * es);
            cr_assert(kd && vd);
            memset(kd, 0x5a, N * es);
            memset(vd, 0x5a, N * es);
            fkv_hostfmt_dequantize(fs[i], P, D, u, kd, vd, dts[j], FIRST, STRIDE);
            for (size_t e = 0; e < N; e++) {
                size_t t = (e - FIRST) / STRIDE, c = (e - FIRST) % STRIDE;
                int in = e >= FIRST && t < P && c < D;
                unsigned char want[2][4];
                memset(want, 0x5a, sizeof want);
                for (int kv = 0; in && kv < 2; kv++)
                    fkv_store(want[kv], dts[j], 0,
                              fkv_hostfmt_load(fs[i], P, D, u, kv, (uint32_t)t, (uint32_t)c));
                cr_assert(memcmp(kd + e * es, want[0], es) == 0 &&
                              memcmp(vd + e * es, want[1], es) == 0,
                          "%s %s element %zu (token %zu, channel %zu)",
                          fkv_host_format_name(fs[i]), fkv_dtype_name(dts[j]), e, t, c);
            }
            free(kd);
            free(vd);
        }
        free(u);
    }
}

Test(hostfmt, names_and_parse) {
    fkv_host_format f;
    cr_assert_eq(fkv_host_format_parse("q4", &f), FKV_OK);
    cr_assert_eq(f, FKV_HOST_Q4);
    cr_assert_eq(fkv_host_format_parse("int8", &f), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_str_eq(fkv_host_format_name(FKV_HOST_SAME), "same");
    cr_assert_str_eq(fkv_host_format_name((fkv_host_format)9), "unknown");
}

/* ---- the pipeline on the CPU reference ------------------------------------------------- */

#define PROMPT 96
#define STEPS 12

/* Prefill and STEPS decode steps of one sequence (sync policy: every recall lands before its
 * attention) in host format f; the outputs of every step and layer go to out, the layer-0
 * keys and values read back (fkv_context_read_kv) to k_back / v_back. */
static void run_pipeline(fkv_host_format f, float *out, float *k_back, float *v_back,
                         fkv_stats *stats) {
    fkv_config cfg;
    th_small_config(&cfg);
    cfg.policy = FKV_POLICY_SYNC;
    cfg.host_format = f;
    cfg.max_seqs = 1;
    size_t kvr = (size_t)cfg.n_kv_heads * cfg.head_dim, qr = (size_t)cfg.n_q_heads * cfg.head_dim;
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(fkv_device_open("cpu", NULL, &dev), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    th_rng rng;
    th_seed(&rng, 17);
    float *k = malloc(sizeof(float) * PROMPT * kvr), *v = malloc(sizeof(float) * PROMPT * kvr);
    float q[64], kt[32], vt[32];
    cr_assert(qr <= 64 && kvr <= 32 && k && v);
    for (uint32_t l = 0; l < cfg.n_layers; l++) {
        th_fill_normal(&rng, k, PROMPT * kvr, 1.0f);
        th_fill_normal(&rng, v, PROMPT * kvr, 1.0f);
        th_fill_normal(&rng, q, qr, 1.0f);
        fkv_tensor tk = {.host = k}, tv = {.host = v}, tq = {.host = q};
        cr_assert_eq(fkv_prefill(ctx, 0, l, PROMPT, &tk, &tv, &tq), FKV_OK, "%s",
                     fkv_last_error());
    }
    uint32_t seq = 0;
    for (int step = 0; step < STEPS; step++)
        for (uint32_t l = 0; l < cfg.n_layers; l++) {
            th_fill_normal(&rng, q, qr, 2.0f);
            th_fill_normal(&rng, kt, kvr, 1.0f);
            th_fill_normal(&rng, vt, kvr, 1.0f);
            fkv_tensor tq = {.host = q}, tk = {.host = kt}, tv = {.host = vt};
            fkv_tensor to = {.host = out + ((size_t)step * cfg.n_layers + l) * qr};
            cr_assert_eq(fkv_decode_layer(ctx, l, 1, &seq, &tq, &tk, &tv, &to), FKV_OK, "%s",
                         fkv_last_error());
        }
    uint32_t n = 0;
    cr_assert_eq(fkv_context_read_kv(ctx, 0, 0, k_back, v_back, PROMPT + STEPS, &n), FKV_OK,
                 "%s", fkv_last_error());
    cr_assert_eq(n, PROMPT + STEPS);
    cr_assert_eq(fkv_context_get_stats(ctx, stats), FKV_OK);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
    free(k);
    free(v);
}

/* q8 and q4 against same on each recall path: stored keys and values within the codes'
 * error, outputs close, recall and offload bytes shrunk by the unit size ratio. */
static void pipeline_vs_same(const char *recall) {
    setenv("FREEKV_CPU_RECALL", recall, 1);
    enum { OUT = STEPS * 2 * 4 * 16, KV = (PROMPT + STEPS) * 2 * 16 };
    static float o_same[OUT], o_q[OUT], k_same[KV], v_same[KV], k_q[KV], v_q[KV];
    fkv_stats st_same, st_q;
    run_pipeline(FKV_HOST_SAME, o_same, k_same, v_same, &st_same);
    cr_assert_gt(st_same.pages_recalled, 0, "%s: no page was recalled", recall);
    fkv_host_format fs[] = {FKV_HOST_Q8, FKV_HOST_Q4};
    double out_bound[] = {0.02, 0.15}, kv_bound[] = {0.03, 0.5};
    for (int i = 0; i < 2; i++) {
        run_pipeline(fs[i], o_q, k_q, v_q, &st_q);
        double ek = th_max_abs_diff(k_same, k_q, KV), ev = th_max_abs_diff(v_same, v_q, KV);
        double eo = th_rel_l2(o_q, o_same, OUT);
        cr_assert(ek > 0 && ek <= kv_bound[i] && ev > 0 && ev <= kv_bound[i],
                  "%s %s: stored K error %g, V error %g", recall, fkv_host_format_name(fs[i]),
                  ek, ev);
        cr_assert(eo > 0 && eo <= out_bound[i], "%s %s: outputs rel_l2 %g to same", recall,
                  fkv_host_format_name(fs[i]), eo);
        double unit = (double)fkv_hostfmt_unit_bytes(fs[i], 4, 16, 4) /
                      (double)fkv_hostfmt_unit_bytes(FKV_HOST_SAME, 4, 16, 4);
        cr_assert_eq(st_q.pages_recalled, st_same.pages_recalled, "%s: selections differ",
                     recall);
        cr_assert_float_eq((double)st_q.bytes_recalled, st_same.bytes_recalled * unit, 0.5);
        cr_assert_float_eq((double)st_q.bytes_offloaded, st_same.bytes_offloaded * unit, 0.5);
    }
}

Test(hostfmt, pipeline_staged) { pipeline_vs_same("staged"); }
Test(hostfmt, pipeline_direct) { pipeline_vs_same("direct"); }
Test(hostfmt, pipeline_perpage) { pipeline_vs_same("perpage"); }

/* A backend whose table lacks host_formats (one built before the entry, or one that has not
 * implemented q8/q4) refuses them when the context is created, naming itself; same works. */
Test(hostfmt, backend_without_formats_refuses) {
    fkv_backend_ops ops = *fkv_backend_cpu();
    ops.host_formats = NULL;
    fkv_device *dev;
    cr_assert_eq(fkv_device_open_ops(&ops, 0, &dev), FKV_OK, "%s", fkv_last_error());
    fkv_config cfg;
    th_small_config(&cfg);
    fkv_context *ctx = NULL;
    cfg.host_format = FKV_HOST_Q8;
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_ERR_UNSUPPORTED);
    cr_assert_null(ctx);
    cr_assert(strstr(fkv_last_error(), "'cpu'") && strstr(fkv_last_error(), "q8"), "%s",
              fkv_last_error());
    cfg.policy = FKV_POLICY_QUEST; /* no host pool: nothing to refuse */
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    fkv_context_destroy(ctx);
    cfg.policy = FKV_POLICY_FREEKV;
    cfg.host_format = FKV_HOST_SAME;
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}
