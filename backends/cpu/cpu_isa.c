/* Which instruction-set level the CPU reference's loops run at (cpu_isa.h, cpu_levels.h). */
#include "cpu_isa.h"
#include "cpu_vec.h"

int cpu_isa_available(cpu_isa isa) {
#if CPU_VEC_X86_LEVELS
    __builtin_cpu_init();
    if (isa == CPU_ISA_X86_V4)
        return __builtin_cpu_supports("x86-64-v4") != 0;
    if (isa == CPU_ISA_X86_V3)
        return __builtin_cpu_supports("x86-64-v3") != 0;
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
