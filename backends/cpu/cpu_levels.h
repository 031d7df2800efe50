/* Includes the file named by CPU_LEVEL_BODY once per instruction-set level this build has:
 * the compiler's baseline always, and with GCC on x86-64 (CPU_VEC_X86_LEVELS) x86-64-v3 and
 * x86-64-v4 under #pragma GCC target, so one binary runs everywhere and the widest copy the
 * CPU runs is picked at run time (cpu_isa_level). In each copy CPU_LEVEL(name) names its
 * functions (name##_base, _v3, _v4) and CPU_LEVEL_LANES is the floats of its widest vector
 * register: GCC keeps a vector wider than any register of the target in memory, which made
 * an AVX2 copy of the attention ten times slower than the AVX-512 one. The copies of a body
 * differ in speed, never in results. Include this file once per translation unit, after
 * cpu_vec.h. */
#ifndef CPU_LEVEL_BODY
#error "define CPU_LEVEL_BODY before including cpu_levels.h"
#endif
#include "cpu_isa.h"

#define CPU_LEVEL(name) name##_base
#define CPU_LEVEL_LANES 4
#include CPU_LEVEL_BODY
#undef CPU_LEVEL
#undef CPU_LEVEL_LANES

#if CPU_VEC_X86_LEVELS
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define CPU_LEVEL(name) name##_v3
#define CPU_LEVEL_LANES 8
#include CPU_LEVEL_BODY
#undef CPU_LEVEL
#undef CPU_LEVEL_LANES
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define CPU_LEVEL(name) name##_v4
#define CPU_LEVEL_LANES 16
#include CPU_LEVEL_BODY
#undef CPU_LEVEL
#undef CPU_LEVEL_LANES
#pragma GCC pop_options

/* fn's copy for `level`, a level cpu_isa_level returned. */
#define CPU_LEVEL_PICK(fn, level)                                                              \
    ((level) == CPU_ISA_X86_V4 ? fn##_v4 : (level) == CPU_ISA_X86_V3 ? fn##_v3 : fn##_base)
#else
#define CPU_LEVEL_PICK(fn, level) fn##_base
#endif
