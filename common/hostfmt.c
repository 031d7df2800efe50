/* The reference codec of the quantized host formats (hostfmt.h). */
#include "hostfmt.h"

#include <math.h>

#include "dtype.h"

#define F16_NAN 0x7e00u

/* x rounded to an f16 towards -inf (up = 0) or +inf (up = 1); an infinity when the nearest f16
 * is one (hostfmt.h: such a group gets NaN parameters), else IEEE directed rounding. */
static uint16_t f16_directed(float x, int up) {
    uint16_t h = fkv_f32_to_f16(x);
    return isinf(fkv_f16_to_f32(h)) ? h : fkv_f32_to_f16_directed(x, up);
}

void fkv_hostfmt_params(float lo, float hi, int nonfinite, uint32_t levels, uint16_t *zero,
                        uint16_t *scale) {
    uint16_t z = f16_directed(lo, 0);
    float zf = fkv_f16_to_f32(z);
    uint16_t s = f16_directed((hi - zf) / (float)levels, 1);
    if (nonfinite || !isfinite(zf) || !isfinite(fkv_f16_to_f32(s))) {
        *zero = F16_NAN;
        *scale = F16_NAN;
        return;
    }
    *zero = z;
    *scale = s;
}

uint32_t fkv_hostfmt_code(float x, float zero, float scale, uint32_t levels) {
    if (!(scale > 0.0f)) /* a constant group, or a NaN group */
        return 0;
    float q = nearbyintf((x - zero) / scale); /* the default rounding: half to even */
    if (!(q > 0.0f))
        return 0;
    return q >= (float)levels ? levels : (uint32_t)q;
}

/* Where the parts of a unit lie (hostfmt.h). */
typedef struct unit_layout {
    uint32_t bits, levels;
    size_t v_codes, k_scale, k_zero, v_scale, v_zero; /* byte offsets */
} unit_layout;

static unit_layout layout_of(fkv_host_format f, uint32_t p, uint32_t d) {
    unit_layout u = {.bits = fkv_hostfmt_bits(f)};
    size_t codes = (size_t)p * d * u.bits / 8;
    u.levels = (1u << u.bits) - 1u;
    u.v_codes = codes;
    u.k_scale = 2 * codes;
    u.k_zero = u.k_scale + 2 * (size_t)d;
    u.v_scale = u.k_zero + 2 * (size_t)d;
    u.v_zero = u.v_scale + 2 * (size_t)p;
    return u;
}

static void put_f16(unsigned char *at, uint16_t h) {
    at[0] = (unsigned char)(h & 0xffu); /* little-endian, as every supported device reads it */
    at[1] = (unsigned char)(h >> 8);
}

static float get_f16(const unsigned char *at) {
    return fkv_f16_to_f32((uint16_t)(at[0] | (at[1] << 8)));
}

static void put_code(unsigned char *codes, uint32_t bits, size_t i, uint32_t code) {
    if (bits == 8) {
        codes[i] = (unsigned char)code;
        return;
    }
    unsigned char *b = codes + i / 2;
    if (i % 2 == 0)
        *b = (unsigned char)((*b & 0xf0u) | code);
    else
        *b = (unsigned char)((*b & 0x0fu) | (code << 4));
}

/* fmaf(scale, code, zero): the product of an f16 scale (11 significant bits) and a code (at
 * most 8) is exact in f32, so the sum rounds once as fmaf's does (whether or not the compiler
 * contracts it), without fmaf's library call where the target has no FMA instruction. */
static float value_of(float scale, uint32_t code, float zero) {
    return scale * (float)code + zero;
}

static uint32_t get_code(const unsigned char *codes, uint32_t bits, size_t i) {
    if (bits == 8)
        return codes[i];
    return i % 2 == 0 ? codes[i / 2] & 0x0fu : codes[i / 2] >> 4;
}

/* Quantizes n elements (element j at fkv_load(src, dtype, first + j*step)) as one group into
 * codes at code indices code0 + j*code_step; writes the group's zero and scale. */
static void quantize_group(const unit_layout *u, const void *src, fkv_dtype dtype, size_t first,
                           size_t step, size_t n, unsigned char *codes, size_t code0,
                           size_t code_step, unsigned char *zero_at, unsigned char *scale_at) {
    float lo = INFINITY, hi = -INFINITY;
    int nonfinite = 0;
    for (size_t j = 0; j < n; j++) {
        float x = fkv_load(src, dtype, first + j * step);
        if (!isfinite(x))
            nonfinite = 1;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
    }
    uint16_t z, s;
    fkv_hostfmt_params(lo, hi, nonfinite, u->levels, &z, &s);
    put_f16(zero_at, z);
    put_f16(scale_at, s);
    float zf = fkv_f16_to_f32(z), sf = fkv_f16_to_f32(s);
    for (size_t j = 0; j < n; j++) {
        float x = fkv_load(src, dtype, first + j * step);
        put_code(codes, u->bits, code0 + j * code_step, fkv_hostfmt_code(x, zf, sf, u->levels));
    }
}

void fkv_hostfmt_quantize(fkv_host_format f, uint32_t page_size, uint32_t head_dim,
                          const void *k, const void *v, fkv_dtype dtype, size_t first,
                          size_t stride, unsigned char *unit) {
    unit_layout u = layout_of(f, page_size, head_dim);
    size_t p = page_size, d = head_dim;
    for (size_t c = 0; c < d; c++) /* keys: one group per channel, over the tokens */
        quantize_group(&u, k, dtype, first + c, stride, p, unit, c, d, unit + u.k_zero + 2 * c,
                       unit + u.k_scale + 2 * c);
    for (size_t t = 0; t < p; t++) /* values: one group per token, over the channels */
        quantize_group(&u, v, dtype, first + t * stride, 1, d, unit + u.v_codes, t * d, 1,
                       unit + u.v_zero + 2 * t, unit + u.v_scale + 2 * t);
}

float fkv_hostfmt_load(fkv_host_format f, uint32_t page_size, uint32_t head_dim,
                       const unsigned char *unit, int kv, uint32_t t, uint32_t c) {
    unit_layout u = layout_of(f, page_size, head_dim);
    size_t i = (size_t)t * head_dim + c;
    const unsigned char *codes = kv ? unit + u.v_codes : unit;
    size_t group = kv ? t : c;
    float zero = get_f16(unit + (kv ? u.v_zero : u.k_zero) + 2 * group);
    float scale = get_f16(unit + (kv ? u.v_scale : u.k_scale) + 2 * group);
    return value_of(scale, get_code(codes, u.bits, i), zero);
}

/* Dequantizes n codes of one group (code i at code indices code0 + i*code_step) into
 * fkv_store(dst, dtype, first + i*step): the group's scale and zero decoded once. */
static void dequantize_group(const unit_layout *u, const unsigned char *codes, size_t code0,
                             size_t code_step, size_t n, const unsigned char *zero_at,
                             const unsigned char *scale_at, void *dst, fkv_dtype dtype,
                             size_t first, size_t step) {
    float zero = get_f16(zero_at), scale = get_f16(scale_at);
    for (size_t i = 0; i < n; i++)
        fkv_store(dst, dtype, first + i * step,
                  value_of(scale, get_code(codes, u->bits, code0 + i * code_step), zero));
}

void fkv_hostfmt_dequantize(fkv_host_format f, uint32_t page_size, uint32_t head_dim,
                            const unsigned char *unit, void *k, void *v, fkv_dtype dtype,
                            size_t first, size_t stride) {
    unit_layout u = layout_of(f, page_size, head_dim);
    size_t p = page_size, d = head_dim;
    for (size_t c = 0; c < d; c++) /* keys: one group per channel */
        dequantize_group(&u, unit, c, d, p, unit + u.k_zero + 2 * c, unit + u.k_scale + 2 * c, k,
                         dtype, first + c, stride);
    for (size_t t = 0; t < p; t++) /* values: one group per token */
        dequantize_group(&u, unit + u.v_codes, t * d, 1, d, unit + u.v_zero + 2 * t,
                         unit + u.v_scale + 2 * t, v, dtype, first + t * stride, 1);
}
