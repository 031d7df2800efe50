/* The scores' arithmetic of the CPU reference (cpu_scores.h), once per instruction-set level
 * (cpu_scores_body.h, cpu_levels.h): the pass over every page summary of a context, which is
 * what grows with the context in a decode step, in vectors so that memory bounds it. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../../common/dtype.h"
#include "cpu_scores.h"
#include "cpu_vec.h"

#define CPU_LEVEL_BODY "cpu_scores_body.h"
#include "cpu_levels.h"

cpu_score_head_fn *cpu_score_head_for(cpu_isa isa) {
    cpu_isa level;
    return cpu_isa_level(isa, &level) ? CPU_LEVEL_PICK(score_head, level) : NULL;
}

size_t cpu_score_scratch_floats(size_t head_dim) { return 2 * head_dim * CPU_TILE; }
