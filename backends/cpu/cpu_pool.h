/* A team of helper threads for the CPU reference's data-parallel commands (the attention's and
 * select_pages' (sequence, KV head) pairs, the scores' ranges of pages): a queue's worker
 * thread runs a command's items together with the helpers, which otherwise sleep.
 *
 * One command at a time uses the helpers; a command that finds them busy (another queue's)
 * runs its items on its own thread alone. Items must be independent: which thread runs an
 * item never changes what it computes. On Linux the helpers are kept off the CPU of the
 * thread that posts a command (cpu_pool.c), within the CPUs their creator could use.
 */
#ifndef FKV_CPU_POOL_H
#define FKV_CPU_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"

typedef struct cpu_pool cpu_pool; /* also declared in cpu_kernels.h */

/* Runs item i of a command on thread `worker` (0 = the calling thread, < cpu_pool_width).
 * Returns FKV_OK or an error set with fkv_error. */
typedef fkv_status (*cpu_pool_item_fn)(void *ctx, uint32_t worker, size_t item);

/* A pool of `width` threads in all, the caller included (width - 1 helpers), for commands of
 * at least `min_work` (cpu_pool_run): waking a helper costs tens of microseconds, so a smaller
 * command is not worth sharing. Helpers that cannot be started leave a narrower pool, never an
 * error; *out is NULL only when out of host memory (FKV_ERR_OUT_OF_HOST_MEMORY, nothing to
 * free). */
fkv_status cpu_pool_create(uint32_t width, size_t min_work, cpu_pool **out);

/* Stops and joins the helpers. No command may be running. NULL: no-op. */
void cpu_pool_destroy(cpu_pool *p);

/* The CPUs the calling thread may run on, at least 1: its affinity set where the system
 * reports one (taskset's or a container's cpuset, which the online count overstates), else
 * the online CPUs. */
uint32_t cpu_usable_cpus(void);

/* Threads a command may run on (1 for NULL). */
uint32_t cpu_pool_width(const cpu_pool *p);

/* A byte range a command reads or writes: [start, end). */
typedef struct cpu_span {
    uintptr_t start, end;
} cpu_span;

static inline cpu_span cpu_span_of(const void *p, size_t bytes) {
    return (cpu_span){(uintptr_t)p, (uintptr_t)p + bytes};
}

/* The pool a command of these n spans may share its items on: p when the spans are pairwise
 * disjoint (empty ones ignored), else NULL, the calling thread alone. Where a caller passed
 * overlapping buffers (which the GPU backends leave undefined) the items then run in order
 * and no two threads race on the memory. Reorders the spans; spans NULL: NULL. */
cpu_pool *cpu_pool_for(cpu_pool *p, cpu_span *spans, size_t n);

/* Runs fn(ctx, worker, i) for every i in [0, n), each once, on the calling thread and the
 * helpers if they are free and work >= the pool's min_work (p NULL: the calling thread
 * alone); returns when all have run. work is the command's size in the unit of min_work
 * (64 bits: a command's sum of elements can pass a 32-bit size_t).
 * Items are taken in order as threads become free. Every item runs even when one fails; the
 * result is the failure of the lowest failing item, its message restated on the calling
 * thread, else FKV_OK. */
fkv_status cpu_pool_run(cpu_pool *p, size_t n, uint64_t work, cpu_pool_item_fn fn, void *ctx);

#endif
