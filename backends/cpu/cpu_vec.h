/* Eight- and four-float vectors for the CPU reference's hot loops (GCC/Clang vector
 * extensions), and the storage dtypes converted to them, bit for bit as common/dtype.h
 * converts one element. Every operation is lane-wise f32 arithmetic, so a loop whose lanes are
 * independent sums computes exactly what the scalar loop computes, at any vector width the
 * compiler lowers the type to (two SSE registers, one AVX register). */
#ifndef FKV_CPU_VEC_H
#define FKV_CPU_VEC_H

#include <stdint.h>
#include <string.h>

#include "freekv.h"

#define CPU_LANES 8

typedef float cpu_vf __attribute__((vector_size(4 * CPU_LANES)));
typedef uint32_t cpu_vu __attribute__((vector_size(4 * CPU_LANES)));
typedef int32_t cpu_vi __attribute__((vector_size(4 * CPU_LANES))); /* compare results */
typedef uint16_t cpu_vh __attribute__((vector_size(2 * CPU_LANES)));

/* With GCC on x86-64 the hot loops are compiled again for the x86-64-v3 (AVX2, F16C) and v4
 * (AVX-512) levels under #pragma GCC target and picked at run time, so one binary runs
 * everywhere; the results do not depend on the choice (lane-wise arithmetic, no contraction
 * into FMA: the backend is compiled with -ffp-contract=off). Elsewhere the plain build
 * serves. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CPU_VEC_X86_LEVELS 1
#include <immintrin.h>
#else
#define CPU_VEC_X86_LEVELS 0
#endif

#define CPU_VEC_INLINE static inline __attribute__((always_inline))
/* GCC and clang warn that a 32-byte vector passed by value in a build without AVX has another ABI
 * than with it; these helpers are always inlined, never called across that boundary. */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wunknown-warning-option"
#endif
#pragma GCC diagnostic ignored "-Wpsabi"

CPU_VEC_INLINE cpu_vf cpu_vec_bits(cpu_vu u) {
    cpu_vf f;
    memcpy(&f, &u, sizeof f);
    return f;
}

CPU_VEC_INLINE cpu_vu cpu_vec_uint(cpu_vf f) {
    cpu_vu u;
    memcpy(&u, &f, sizeof u);
    return u;
}

CPU_VEC_INLINE cpu_vf cpu_vec_get(const float *p) {
    cpu_vf x;
    memcpy(&x, p, sizeof x);
    return x;
}

CPU_VEC_INLINE void cpu_vec_put(float *p, cpu_vf x) { memcpy(p, &x, sizeof x); }

/* Four-lane halves: the f16 conversion's integer steps in a 128-bit register (SSE2, NEON),
 * where an eight-lane vector would be kept in memory between them. */
typedef float cpu_vf4 __attribute__((vector_size(16)));
typedef uint32_t cpu_vu4 __attribute__((vector_size(16)));
typedef uint16_t cpu_vh4 __attribute__((vector_size(8)));

/* f16 bits to f32 without a subnormal f32 operand (the result does not depend on the
 * caller's denormals-are-zero mode): the exponent is rebased by 112; a zero exponent
 * (subnormal or zero) gets 2^-14 more and loses it again in one exact subtraction; 31 (Inf,
 * NaN) gets the rest of the way to 255 and keeps its payload bits. */
CPU_VEC_INLINE cpu_vf4 cpu_vec4_from_f16(cpu_vh4 h) {
    cpu_vu4 u = __builtin_convertvector(h, cpu_vu4);
    cpu_vu4 e = u & 0x7c00u;
    cpu_vu4 sub = (cpu_vu4)(e == 0u), inf = (cpu_vu4)(e == 0x7c00u);
    cpu_vu4 o = ((u & 0x7fffu) << 13) + (112u << 23);
    o += (inf & (112u << 23)) + (sub & (1u << 23));
    cpu_vf4 of, bias;
    cpu_vu4 b = sub & (113u << 23);
    memcpy(&of, &o, sizeof of);
    memcpy(&bias, &b, sizeof bias);
    of -= bias;
    cpu_vu4 less;
    memcpy(&less, &of, sizeof less);
    o = (sub & less) | (~sub & o) | ((u & 0x8000u) << 16);
    memcpy(&of, &o, sizeof of);
    return of;
}

CPU_VEC_INLINE cpu_vf cpu_vec_from_f16(cpu_vh h) {
    cpu_vf4 lo = cpu_vec4_from_f16(__builtin_shufflevector(h, h, 0, 1, 2, 3)),
            hi = cpu_vec4_from_f16(__builtin_shufflevector(h, h, 4, 5, 6, 7));
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}

CPU_VEC_INLINE cpu_vf cpu_vec_from_bf16(cpu_vh h) {
    return cpu_vec_bits(__builtin_convertvector(h, cpu_vu) << 16);
}

/* Eight elements of `dtype` at p (any alignment of the element type), as f32. */
CPU_VEC_INLINE cpu_vf cpu_vec_load(const void *p, fkv_dtype dtype) {
    if (dtype == FKV_F32) {
        cpu_vf f;
        memcpy(&f, p, sizeof f);
        return f;
    }
    cpu_vh h;
    memcpy(&h, p, sizeof h);
    return dtype == FKV_F16 ? cpu_vec_from_f16(h) : cpu_vec_from_bf16(h);
}

#endif
