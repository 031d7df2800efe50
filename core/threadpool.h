/* A small persistent thread pool for host-side gathers (threads created once, not per job). */
#ifndef FKV_CORE_THREADPOOL_H
#define FKV_CORE_THREADPOOL_H

#include <stddef.h>

#include "freekv.h"

typedef struct fkv_pool fkv_pool;
typedef void (*fkv_pool_fn)(void *arg, size_t begin, size_t end);

/* n_threads = 0 picks min(4, online CPUs); 1 runs jobs on the caller's thread. */
fkv_status fkv_pool_create(unsigned n_threads, fkv_pool **out);
void fkv_pool_destroy(fkv_pool *pool);
/* Splits [0, n) into contiguous ranges run in parallel; returns when all are done. Callers
 * from several threads are served one job at a time. */
void fkv_pool_run(fkv_pool *pool, size_t n, fkv_pool_fn fn, void *arg);

#endif
