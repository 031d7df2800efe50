/* Includes the file named by CPU_LEVEL_BODY once per instruction-set level this build has:
 * the compiler's baseline always, and with GCC or clang on x86-64 (CPU_VEC_X86_LEVELS)
 * x86-64-v3 and x86-64-v4 under a target pragma (the levels' features added to the build's),
 * so one binary runs everywhere and the widest
 * copy the CPU runs is picked at run time (cpu_isa_level). In each copy CPU_LEVEL(name) names
 * its functions (name##_base, _v3, _v4), CPU_LEVEL_LANES is the floats of its widest vector
 * register (GCC keeps a vector wider than any register of the target in memory, which made
 * an AVX2 copy of the attention ten times slower than the AVX-512 one), and CPU_LEVEL_F16C,
 * CPU_LEVEL_AVX2 and CPU_LEVEL_AVX512 say which intrinsics it may use (clang's pragma does not
 * define __F16C__ and the like). The copies of a body differ in speed, never in results.
 * Include this file once per translation unit, after cpu_vec.h. */
#ifndef CPU_LEVEL_BODY
#error "define CPU_LEVEL_BODY before including cpu_levels.h"
#endif
#include "cpu_isa.h"

/* The baseline: a build for an AVX2 or AVX-512 CPU computes at its width with its intrinsics
 * (cpu_vec.h). */
#define CPU_LEVEL(name) name##_base
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define CPU_LEVEL_LANES 16
#define CPU_LEVEL_AVX512 1
#elif defined(__AVX2__)
#define CPU_LEVEL_LANES 8
#define CPU_LEVEL_AVX512 0
#else
#define CPU_LEVEL_LANES 4
#define CPU_LEVEL_AVX512 0
#endif
#ifdef __AVX2__
#define CPU_LEVEL_AVX2 1
#else
#define CPU_LEVEL_AVX2 0
#endif
#ifdef __F16C__
#define CPU_LEVEL_F16C 1
#else
#define CPU_LEVEL_F16C 0
#endif
#include CPU_LEVEL_BODY
#undef CPU_LEVEL
#undef CPU_LEVEL_LANES
#undef CPU_LEVEL_F16C
#undef CPU_LEVEL_AVX2
#undef CPU_LEVEL_AVX512

#if CPU_VEC_X86_LEVELS
#if defined(__clang__)
#define CPU_LEVEL_BEGIN(arch)                                                                  \
    _Pragma(CPU_LEVEL_STR(clang attribute push(__attribute__((target(arch))),                  \
                                               apply_to = function)))
#define CPU_LEVEL_END _Pragma("clang attribute pop")
#else
#define CPU_LEVEL_BEGIN(arch) _Pragma("GCC push_options") _Pragma(CPU_LEVEL_STR(GCC target(arch)))
#define CPU_LEVEL_END _Pragma("GCC pop_options")
#endif
#define CPU_LEVEL_STR(x) #x
/* The levels as features added to the build's own: "arch=x86-64-v3" would drop the build's
 * other flags (-maes, -march=ivybridge), which its intrinsics keep, and they would no longer
 * inline into the copy. */
#define CPU_LEVEL_V3_FEATURES "avx2,fma,f16c,bmi,bmi2,lzcnt,movbe,popcnt"

CPU_LEVEL_BEGIN(CPU_LEVEL_V3_FEATURES)
#define CPU_LEVEL(name) name##_v3
#define CPU_LEVEL_LANES 8
#define CPU_LEVEL_F16C 1
#define CPU_LEVEL_AVX2 1
#define CPU_LEVEL_AVX512 0
#include CPU_LEVEL_BODY
#undef CPU_LEVEL
#undef CPU_LEVEL_LANES
#undef CPU_LEVEL_AVX512
CPU_LEVEL_END

CPU_LEVEL_BEGIN(CPU_LEVEL_V3_FEATURES ",avx512f,avx512bw,avx512cd,avx512dq,avx512vl")
#define CPU_LEVEL(name) name##_v4
#define CPU_LEVEL_LANES 16
#define CPU_LEVEL_AVX512 1
#include CPU_LEVEL_BODY
#undef CPU_LEVEL
#undef CPU_LEVEL_LANES
#undef CPU_LEVEL_F16C
#undef CPU_LEVEL_AVX2
#undef CPU_LEVEL_AVX512
CPU_LEVEL_END

/* fn's copy for `level`, a level cpu_isa_level returned. */
#define CPU_LEVEL_PICK(fn, level)                                                              \
    ((level) == CPU_ISA_X86_V4 ? fn##_v4 : (level) == CPU_ISA_X86_V3 ? fn##_v3 : fn##_base)
#else
#define CPU_LEVEL_PICK(fn, level) fn##_base
#endif
