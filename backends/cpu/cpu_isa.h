#ifndef FKV_CPU_ISA_H
#define FKV_CPU_ISA_H

/* The instruction-set levels the attention and scores loops are built for (cpu_levels.h):
 * BEST is the widest this CPU runs; the others exist so that tests can run every level the
 * CPU has and find them bit for bit equal, and so that FREEKV_CPU_ISA can pick one (in this
 * order). */
typedef enum cpu_isa {
    CPU_ISA_BEST = 0,
    CPU_ISA_BASE = 1,   /* the compiler's baseline */
    CPU_ISA_X86_V3 = 2, /* x86-64-v3: AVX2, F16C (GCC and clang builds for x86-64) */
    CPU_ISA_X86_V4 = 3  /* x86-64-v4: AVX-512 */
} cpu_isa;
/* Whether this build and CPU run `isa`. */
int cpu_isa_available(cpu_isa isa);
/* *level = the level `isa` runs at (the widest this CPU runs for BEST); 0 when this build or
 * CPU lacks it. */
int cpu_isa_level(cpu_isa isa, cpu_isa *level);

#endif
