/* KV storage conversions for the HIP kernels, bit for bit those of common/dtype.h (f16 and
 * bf16 round to nearest even, NaN kept a quiet NaN: f16 one canonical NaN per sign) in integer
 * arithmetic only, so the result does not depend on the GPU's denormal or rounding modes.
 * FKV_HD makes them callable on the host too (an exhaustive check against common/dtype.h,
 * docs/hip.md). */
#ifndef FKV_HIP_DTYPE_H
#define FKV_HIP_DTYPE_H

#include <stdint.h>
#include <string.h>

#if defined(__HIPCC__) || defined(__CUDACC__)
#define FKV_HD __host__ __device__ inline
#else
#define FKV_HD static inline
#endif

FKV_HD uint32_t fkv_hip_f32_bits(float f) {
#if defined(__HIP_DEVICE_COMPILE__) || defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

FKV_HD float fkv_hip_bits_f32(uint32_t u) {
#if defined(__HIP_DEVICE_COMPILE__) || defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

FKV_HD uint16_t fkv_hip_f32_to_bf16(float f) {
    uint32_t u = fkv_hip_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

FKV_HD float fkv_hip_bf16_to_f32(uint16_t h) { return fkv_hip_bits_f32((uint32_t)h << 16); }

FKV_HD uint16_t fkv_hip_f32_to_f16(float f) {
    uint32_t u = fkv_hip_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u);
    if (absu >= 0x477ff000u) /* rounds to >= 65520: infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (absu < 0x38800000u) {
        /* f16 subnormal or zero: value * 2^24 = m * 2^(e-126), rounded to nearest even (the
         * reference computes the same product exactly in f32). Below 2^-25 it is 0. */
        uint32_t e = absu >> 23;
        if (e < 102)
            return (uint16_t)sign;
        uint32_t m = (absu & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        return (uint16_t)(sign | q);
    }
    uint32_t mant = absu & 0x7fffffu;
    uint32_t exp = (absu >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++; /* may carry into the exponent, which is the correct rounding */
    return (uint16_t)(sign | h);
}

FKV_HD float fkv_hip_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        float f = (float)mant * (1.0f / 16777216.0f); /* exact: mant < 2^10 */
        return sign ? -f : f;
    }
    if (exp == 31)
        return fkv_hip_bits_f32(sign | 0x7f800000u | (mant << 13));
    return fkv_hip_bits_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

/* f32 bits u -> f16 bits with IEEE directed rounding, towards +inf (up = 1) or -inf (0): bit for
 * bit common/dtype.h fkv_f32_to_f16_directed (NaN: sign | 0x7e00; overflow gives the infinity
 * only in the rounding direction, else 65504). The magnitude is truncated, then stepped once
 * away from zero when the value was inexact and the direction points away from zero (the step
 * carries into the exponent, and from 65504 into infinity). Bits, not a float, because the
 * quantizer's scale is built as a bit pattern. */
FKV_HD uint16_t fkv_hip_f16_bits_round(uint32_t u, uint32_t up) {
    uint32_t sign = u >> 31, a = u & 0x7fffffffu, h, lost;
    if (a > 0x7f800000u)
        return (uint16_t)((sign << 15) | 0x7e00u);
    if (a >= 0x47800000u) { /* >= 65536: truncates to 65504; an infinity stays */
        h = a == 0x7f800000u ? 0x7c00u : 0x7bffu;
        lost = a != 0x7f800000u;
    } else if (a >= 0x38800000u) { /* a normal f16: drop 13 mantissa bits */
        h = (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu);
        lost = a & 0x1fffu;
    } else { /* subnormal f16 or zero, in units of 2^-24 */
        uint32_t e = a >> 23, m = e ? (a & 0x7fffffu) | 0x800000u : a;
        uint32_t shift = e ? 126u - e : 125u;
        h = shift < 32u ? m >> shift : 0u;
        lost = shift < 32u ? m & ((1u << shift) - 1u) : m;
    }
    if (lost && (sign ^ up)) /* away from zero: up for +, down for - */
        h++;
    return (uint16_t)((sign << 15) | h);
}
FKV_HD uint16_t fkv_hip_f16_bits_round_down(float f) {
    return fkv_hip_f16_bits_round(fkv_hip_f32_bits(f), 0u);
}
FKV_HD uint16_t fkv_hip_f16_bits_round_up(float f) {
    return fkv_hip_f16_bits_round(fkv_hip_f32_bits(f), 1u);
}
/* The quantized host formats' rounding, as common/hostfmt.c's f16_directed: an infinity in
 * either direction where round-to-nearest would overflow (|x| >= 65520), else IEEE directed. */
FKV_HD uint16_t fkv_hip_f16_quant_directed(uint32_t u, uint32_t up) {
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x477ff000u && a <= 0x7f800000u)
        return (uint16_t)(((u >> 16) & 0x8000u) | 0x7c00u);
    return fkv_hip_f16_bits_round(u, up);
}

#endif
