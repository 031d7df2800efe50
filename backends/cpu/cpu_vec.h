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

/* With GCC or clang on x86-64 the hot loops are compiled again for the x86-64-v3 (AVX2, F16C)
 * and v4 (AVX-512) levels (cpu_levels.h) and picked at run time, so one binary runs
 * everywhere; the results do not depend on the choice (lane-wise arithmetic, no contraction
 * into FMA: the backend is compiled with -ffp-contract=off). A build whose flags include AVX2
 * (-march=native on such a CPU, say) has no copies: its baseline copy computes at the build's
 * register width with the build's intrinsics (a v3 copy there would carry the build's
 * AVX-512, if any). Elsewhere the plain build serves. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__AVX2__)
#define CPU_VEC_X86_LEVELS 1
#else
#define CPU_VEC_X86_LEVELS 0
#endif

#define CPU_VEC_INLINE static inline __attribute__((always_inline))
/* GCC and clang warn that a 32-byte vector passed by value in a build without AVX has another ABI
 * than with it; the helpers are always inlined, never called across that boundary (and those
 * that pass eight floats by value are written once per level, cpu_tile_body.h: clang refuses
 * such a call between functions of different targets even when inlined). */
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wunknown-warning-option"
#endif
#pragma GCC diagnostic ignored "-Wpsabi"

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

/* Fixed short loops unrolled, so their vectors stay in registers. */
#define UNROLL _Pragma("GCC unroll 8")

/* Rows a tile holds (cpu_tile_body.h): the attention's tokens, the scores' pages. */
#define CPU_TILE 32

/* Heads n in passes of up to max (at most 4, asserted): CALL(i0, k) for the pass of heads
 * [i0, i0 + k), with k a constant (min(case, max), so no pass is written for more than max
 * heads): its loops get constant bounds and the vectors of its sums stay in registers. */
#define CPU_CONST_MIN(k, max) ((k) < (max) ? (k) : (max))
#define CPU_HEAD_PASSES(n, max, CALL)                                                          \
    {                                                                                          \
        _Static_assert((max) <= 4, "passes of at most 4 heads");                               \
        for (uint32_t cpu_i0 = 0; cpu_i0 < (n); cpu_i0 += (max)) {                             \
            switch (CPU_CONST_MIN((n) - cpu_i0, max)) {                                        \
            case 1:                                                                            \
                CALL(cpu_i0, 1);                                                               \
                break;                                                                         \
            case 2:                                                                            \
                CALL(cpu_i0, CPU_CONST_MIN(2, max));                                           \
                break;                                                                         \
            case 3:                                                                            \
                CALL(cpu_i0, CPU_CONST_MIN(3, max));                                           \
                break;                                                                         \
            default:                                                                           \
                CALL(cpu_i0, max);                                                             \
            }                                                                                  \
        }                                                                                      \
    }

/* Asks for rows ahead of their use (the passes ask for the tile after next, a few rows at a
 * time while converting the current one): a head's rows are short runs a whole row of every
 * KV head apart, which the hardware prefetchers follow poorly, and asking for a whole tile at
 * once overflows the outstanding misses a core can hold. */
CPU_VEC_INLINE void prefetch_rows(const unsigned char *pool, const size_t *off, size_t n,
                                  size_t bytes) {
    for (size_t j = 0; j < n; j++)
        for (size_t b = 0; b < bytes; b += 64)
            __builtin_prefetch(pool + off[j] + b);
}

/* 8x8 transpose: x[j][c] -> x[c][j] (the wider copies, and clang's baseline; GCC's 4-lane
 * baseline transposes 4x4). */
CPU_VEC_INLINE void transpose8(cpu_vf *x) {
    cpu_vf t[8], u[8];
    UNROLL
    for (int j = 0; j < 8; j += 2) {
        t[j] = __builtin_shufflevector(x[j], x[j + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[j + 1] = __builtin_shufflevector(x[j], x[j + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    UNROLL
    for (int j = 0; j < 8; j += 4)
        UNROLL
    for (int k = 0; k < 2; k++) {
        u[j + 2 * k] = __builtin_shufflevector(t[j + k], t[j + k + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        u[j + 2 * k + 1] =
            __builtin_shufflevector(t[j + k], t[j + k + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
    UNROLL
    for (int c = 0; c < 4; c++) {
        x[c] = __builtin_shufflevector(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        x[c + 4] = __builtin_shufflevector(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

#endif
