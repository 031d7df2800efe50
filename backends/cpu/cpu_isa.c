/* Which instruction-set level the CPU reference's loops run at (cpu_isa.h, cpu_levels.h). */
#include <stdatomic.h>

#include "cpu_isa.h"
#include "cpu_vec.h"

#if CPU_VEC_X86_LEVELS && defined(__clang__)
#include <cpuid.h>

/* The features of the x86-64 psABI levels, which clang (14) does not name in
 * __builtin_cpu_supports; nor f16c, movbe or lzcnt, read here with cpuid. Its avx2 and
 * avx512 checks include the OS's saving of those registers. */
static int cpu_has_v3(void) {
    unsigned a, b, c, d, c1 = 0, c8 = 0;
    if (__get_cpuid(1, &a, &b, &c, &d))
        c1 = c;
    if (__get_cpuid(0x80000001u, &a, &b, &c, &d))
        c8 = c;
    return (c1 & bit_F16C) && (c1 & bit_MOVBE) && (c8 & bit_LZCNT) &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
           __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("sse4.2");
}

static int cpu_has_v4(void) {
    return cpu_has_v3() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512cd") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#elif CPU_VEC_X86_LEVELS
static int cpu_has_v3(void) { return __builtin_cpu_supports("x86-64-v3") != 0; }
static int cpu_has_v4(void) { return __builtin_cpu_supports("x86-64-v4") != 0; }
#endif

int cpu_isa_available(cpu_isa isa) {
#if CPU_VEC_X86_LEVELS
    /* Read once: every attention and scores command picks its copy, and cpuid traps to the
     * hypervisor in a VM (11 us a pick on this project's VM with clang's detection). Bit 0:
     * v3, bit 1: v4; threads that race here store the same value. */
    static atomic_int known = -1;
    int k = atomic_load_explicit(&known, memory_order_relaxed);
    if (k < 0) {
        __builtin_cpu_init();
        k = (cpu_has_v3() ? 1 : 0) | (cpu_has_v4() ? 2 : 0);
        atomic_store_explicit(&known, k, memory_order_relaxed);
    }
    if (isa == CPU_ISA_X86_V4)
        return (k & 2) != 0;
    if (isa == CPU_ISA_X86_V3)
        return (k & 1) != 0;
#endif
    return isa == CPU_ISA_BEST || isa == CPU_ISA_BASE;
}

int cpu_isa_level(cpu_isa isa, cpu_isa *level) {
    if (isa == CPU_ISA_BEST)
        isa = cpu_isa_available(CPU_ISA_X86_V4)   ? CPU_ISA_X86_V4
              : cpu_isa_available(CPU_ISA_X86_V3) ? CPU_ISA_X86_V3
                                                  : CPU_ISA_BASE;
    *level = isa;
    return cpu_isa_available(isa);
}
