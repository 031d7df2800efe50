/* The scores' arithmetic of the CPU reference, one copy per instruction-set level
 * (cpu_scores.c); cpu_scores (cpu_kernels.h) checks a call and runs it on the pool. */
#ifndef FKV_CPU_SCORES_H
#define FKV_CPU_SCORES_H

#include <stddef.h>

#include "../backend.h"
#include "cpu_isa.h"

/* The scores of the query heads of one (sequence, KV head) (q: the group's rows) over the
 * n_pages summaries from `first`, into out[r * out_stride + j]: per head and page the sum over
 * the channels c ascending of max_skip_nan(q[c] * max[c], q[c] * min[c]) from +0, f32 (f16
 * summaries widened exactly), where max_skip_nan(a, b) = a >= b || b != b ? a : b. kt:
 * cpu_score_scratch_floats floats of scratch. One copy per instruction-set level
 * (cpu_scores.c); NULL for a level this build or CPU lacks. */
typedef void cpu_score_head_fn(const fkv_kv_geom *g, const float *q, const void *summaries,
                               size_t first, size_t kv_head, size_t n_pages, size_t out_stride,
                               float *kt, float *out);
cpu_score_head_fn *cpu_score_head_for(cpu_isa isa);
size_t cpu_score_scratch_floats(size_t head_dim);

#endif
