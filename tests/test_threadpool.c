/* The gather thread pool (core/threadpool.c): every index of a job is handed out exactly
 * once, in contiguous ranges, whatever the job's size and the pool's; a pool serves many
 * jobs in a row, and jobs from several threads at once, one at a time. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/threadpool.h"

#define POOL_MAX_THREADS 16 /* threadpool.c clamps a larger request to this */

typedef struct job {
    atomic_uint *hits; /* per index: how many ranges held it */
    size_t n;
    atomic_uint ranges;
    atomic_int bad_range; /* a range empty or outside [0, n) */
} job;

static void count(void *arg, size_t begin, size_t end) {
    job *j = arg;
    if (begin >= end || end > j->n)
        atomic_store(&j->bad_range, 1);
    atomic_fetch_add(&j->ranges, 1);
    for (size_t i = begin; i < end && i < j->n; i++)
        atomic_fetch_add(&j->hits[i], 1);
}

/* Runs a job of n indices on the pool; 0 when every index ran once, in at most max_ranges
 * non-empty ranges (no job: no range), else 1 with the reason in why. Asserts nothing, so
 * that threads other than the test's may call it. */
static int run_job(fkv_pool *pool, size_t n, unsigned max_ranges, char *why, size_t why_size) {
    job j = {.hits = calloc(n ? n : 1, sizeof(atomic_uint)), .n = n};
    if (j.hits == NULL)
        return snprintf(why, why_size, "out of memory"), 1;
    fkv_pool_run(pool, n, count, &j);
    int bad = 0;
    unsigned ranges = atomic_load(&j.ranges);
    if (atomic_load(&j.bad_range))
        bad = snprintf(why, why_size, "n %zu: an empty or outside range", n) > 0;
    else if (ranges > max_ranges || (n == 0 && ranges != 0))
        bad = snprintf(why, why_size, "n %zu: %u ranges, at most %u", n, ranges, max_ranges) > 0;
    for (size_t i = 0; i < n && !bad; i++)
        if (atomic_load(&j.hits[i]) != 1)
            bad = snprintf(why, why_size, "n %zu: index %zu ran %u times", n, i,
                           atomic_load(&j.hits[i])) > 0;
    free(j.hits);
    return bad;
}

static void run_and_check(fkv_pool *pool, size_t n, unsigned max_ranges) {
    char why[128] = "";
    cr_assert_eq(run_job(pool, n, max_ranges, why, sizeof why), 0, "%s", why);
}

Test(threadpool, every_index_once_for_any_size) {
    static const size_t sizes[] = {0, 1, 2, 3, 5, 7, 16, 100, 1001, 65537};
    static const unsigned threads[] = {1, 2, 3, 4, 7, 16};
    for (size_t t = 0; t < sizeof threads / sizeof *threads; t++) {
        fkv_pool *pool;
        cr_assert_eq(fkv_pool_create(threads[t], &pool), FKV_OK, "%s", fkv_last_error());
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
            run_and_check(pool, sizes[s], threads[t]);
        fkv_pool_destroy(pool);
    }
}

Test(threadpool, no_pool_or_one_thread_runs_on_the_caller) {
    run_and_check(NULL, 1000, 1);
    fkv_pool *pool;
    cr_assert_eq(fkv_pool_create(1, &pool), FKV_OK);
    run_and_check(pool, 1000, 1);
    fkv_pool_destroy(pool);
}

Test(threadpool, more_threads_than_the_limit_and_the_default) {
    fkv_pool *pool;
    cr_assert_eq(fkv_pool_create(1000, &pool), FKV_OK, "%s", fkv_last_error());
    run_and_check(pool, 4099, POOL_MAX_THREADS);
    fkv_pool_destroy(pool);
    cr_assert_eq(fkv_pool_create(0, &pool), FKV_OK, "%s", fkv_last_error());
    run_and_check(pool, 4099, 4); /* min(4, CPUs) */
    fkv_pool_destroy(pool);
}

Test(threadpool, one_pool_many_jobs) {
    fkv_pool *pool;
    cr_assert_eq(fkv_pool_create(4, &pool), FKV_OK);
    for (size_t i = 0; i < 2000; i++)
        run_and_check(pool, i % 37, 4);
    fkv_pool_destroy(pool);
}

typedef struct caller {
    fkv_pool *pool;
    int index;
    int failed;
    char why[128];
} caller;

static void *many_jobs(void *arg) {
    caller *c = arg;
    for (size_t i = 0; i < 300 && !c->failed; i++)
        c->failed = run_job(c->pool, 1 + (i * 7 + (size_t)c->index) % 211, 3, c->why,
                            sizeof c->why);
    return NULL;
}

/* The caller's thread and the speculative worker share one pool: their jobs must not mix. */
Test(threadpool, jobs_from_several_threads) {
    fkv_pool *pool;
    cr_assert_eq(fkv_pool_create(3, &pool), FKV_OK);
    pthread_t t[4];
    caller c[4];
    for (int i = 0; i < 4; i++) {
        c[i] = (caller){.pool = pool, .index = i, .failed = 0};
        cr_assert_eq(pthread_create(&t[i], NULL, many_jobs, &c[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(c[i].failed, 0, "thread %d: %s", i, c[i].why);
    }
    fkv_pool_destroy(pool);
}
