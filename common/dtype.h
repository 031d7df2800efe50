/* Scalar conversions between f32 and the KV storage types (f16, bf16), round to nearest even. */
#ifndef FKV_COMMON_DTYPE_H
#define FKV_COMMON_DTYPE_H

#include <stdint.h>
#include <string.h>

#include "freekv.h"

static inline uint32_t fkv_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float fkv_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t fkv_f32_to_bf16(float f) {
    uint32_t u = fkv_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a (quiet) NaN */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float fkv_bf16_to_f32(uint16_t h) { return fkv_bits_f32((uint32_t)h << 16); }

static inline uint16_t fkv_f32_to_f16(float f) {
    uint32_t u = fkv_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u);
    if (absu >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (absu < 0x38800000u) { /* subnormal or zero in f16 */
        /* value * 2^24 rounded to nearest even gives the subnormal mantissa */
        float a = fkv_bits_f32(absu) * 16777216.0f;
        uint32_t m = (uint32_t)a;
        float rem = a - (float)m;
        if (rem > 0.5f || (rem == 0.5f && (m & 1u)))
            m++;
        return (uint16_t)(sign | m);
    }
    uint32_t mant = absu & 0x7fffffu;
    uint32_t exp = (absu >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++; /* may carry into the exponent, which is the correct rounding */
    return (uint16_t)(sign | h);
}

static inline float fkv_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        float f = (float)mant * (1.0f / 16777216.0f);
        return sign ? -f : f;
    }
    if (exp == 31)
        return fkv_bits_f32(sign | 0x7f800000u | (mant << 13));
    return fkv_bits_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

/* x rounded to f16 towards +inf (up) or -inf (!up), IEEE 754 directed rounding: the result is
 * >= x (up) or <= x, so f16 minima rounded down and maxima rounded up still bound what they
 * summarise. Overflow gives the infinity only in the rounding direction (70000 rounds down to
 * 65504, up to +inf); NaN stays a NaN (the sign kept, quiet: 0x7e00). Nearest first, then
 * one step when it went the wrong way: the f16 grid is monotone in its bits per sign. */
static inline uint16_t fkv_f32_to_f16_directed(float x, int up) {
    uint16_t h = fkv_f32_to_f16(x);
    float back = fkv_f16_to_f32(h);
    if (back == x || x != x)
        return h;
    if (up ? back > x : back < x)
        return h;
    if ((h & 0x7fffu) == 0) /* +-0: the smallest subnormal of x's sign */
        return up ? 0x0001u : 0x8001u;
    return (uint16_t)(((h & 0x8000u) != 0) == (up != 0) ? h - 1u : h + 1u);
}
static inline uint16_t fkv_f32_to_f16_down(float x) { return fkv_f32_to_f16_directed(x, 0); }
static inline uint16_t fkv_f32_to_f16_up(float x) { return fkv_f32_to_f16_directed(x, 1); }

/* Element i of a buffer in `dtype`, as f32. */
static inline float fkv_load(const void *base, fkv_dtype dtype, size_t i) {
    switch (dtype) {
    case FKV_F16:
        return fkv_f16_to_f32(((const uint16_t *)base)[i]);
    case FKV_BF16:
        return fkv_bf16_to_f32(((const uint16_t *)base)[i]);
    default:
        return ((const float *)base)[i];
    }
}

static inline void fkv_store(void *base, fkv_dtype dtype, size_t i, float f) {
    switch (dtype) {
    case FKV_F16:
        ((uint16_t *)base)[i] = fkv_f32_to_f16(f);
        break;
    case FKV_BF16:
        ((uint16_t *)base)[i] = fkv_f32_to_bf16(f);
        break;
    default:
        ((float *)base)[i] = f;
        break;
    }
}

#endif
