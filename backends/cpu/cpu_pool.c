/* Helper threads for data-parallel commands (see cpu_pool.h). */
#include "cpu_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "../../common/error.h"

/* One command's items: taken by index from `next`; the lowest failing item's status and
 * message (a heap copy, restated on the calling thread) kept under `lock`. */
typedef struct pool_job {
    cpu_pool_item_fn fn;
    void *ctx;
    size_t n;
    atomic_size_t next;
    pthread_mutex_t lock;
    size_t failed_item;
    fkv_status failed;
    char *message;
} pool_job;

typedef struct pool_helper {
    cpu_pool *pool;
    uint32_t worker;
    pthread_t thread;
} pool_helper;

struct cpu_pool {
    pthread_mutex_t lock; /* guards everything below */
    pthread_cond_t wake;  /* helpers: a job was posted, or stop */
    pthread_cond_t idle;  /* the poster: the last helper left its job */
    pool_job *job;        /* the job helpers may join; NULL when none */
    uint64_t posted;      /* jobs posted so far: a helper joins each at most once */
    uint32_t inside;      /* helpers running items of `job` */
    int busy;             /* a command owns the helpers */
    int stopping;
    size_t min_work;
    uint32_t n_helpers;
    pool_helper *helpers; /* NULL: no helpers, and no lock or conditions either */
#ifdef __linux__
    cpu_set_t allowed; /* the helpers' CPUs: the creator's, retaken from a poster outside them */
    int poster_cpu;    /* the CPU the helpers were last kept off; -1 none */
#endif
};

static void run_items(pool_job *j, uint32_t worker) {
    for (;;) {
        size_t i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (i >= j->n)
            return;
        fkv_status st = j->fn(j->ctx, worker, i);
        if (st == FKV_OK)
            continue;
        char *message = fkv_error_save();
        pthread_mutex_lock(&j->lock);
        if (j->failed == FKV_OK || i < j->failed_item) {
            free(j->message);
            j->failed = st;
            j->failed_item = i;
            j->message = message;
            message = NULL;
        }
        pthread_mutex_unlock(&j->lock);
        free(message);
    }
}

static void *helper_main(void *arg) {
    pool_helper *h = arg;
    cpu_pool *p = h->pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stopping && (p->job == NULL || p->posted == seen))
            pthread_cond_wait(&p->wake, &p->lock);
        if (p->stopping)
            break;
        seen = p->posted;
        pool_job *j = p->job;
        p->inside++;
        pthread_mutex_unlock(&p->lock);
        run_items(j, h->worker);
        pthread_mutex_lock(&p->lock);
        if (--p->inside == 0)
            pthread_cond_signal(&p->idle);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

#ifdef __linux__
/* Pins every helper to the pool's CPUs but `cpu`. 0: `cpu` is not among them, or the system
 * refused the set. */
static int pin_off(cpu_pool *p, int cpu) {
    if (!CPU_ISSET(cpu, &p->allowed))
        return 0;
    cpu_set_t others = p->allowed;
    CPU_CLR(cpu, &others);
    if (CPU_COUNT(&others) == 0)
        return 1; /* one CPU: nowhere else to go */
    for (uint32_t i = 0; i < p->n_helpers; i++)
        if (pthread_setaffinity_np(p->helpers[i].thread, sizeof others, &others) != 0)
            return 0;
    return 1;
}
#endif

/* Keeps the helpers off the posting thread's CPU (called with the lock held). Linux may place
 * a woken thread on the CPU of the thread that woke it, where it waits for that thread while
 * another CPU idles: on this project's 2-CPU VM 45-49 of 50 such wakeups did
 * (tools/wake_placement.c), and a batch-1 attention then ran on one core. The helpers may run
 * on every other CPU of the pool's set; only a change of the poster's CPU costs system calls,
 * one per helper. */
static void keep_off_poster(cpu_pool *p) {
#ifdef __linux__
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE || cpu == p->poster_cpu)
        return;
    p->poster_cpu = cpu; /* a failure below is not retried until the poster moves */
    if (pin_off(p, cpu))
        return;
    /* The poster runs outside the set or the system refused it: the process's CPUs changed
     * since the set was taken (taskset, a cpuset). The poster thread's own set becomes the
     * helpers' (a queue thread inherits the process's unless a caller narrowed it). */
    if (sched_getaffinity(0, sizeof p->allowed, &p->allowed) == 0)
        pin_off(p, cpu);
    else
        CPU_ZERO(&p->allowed);
#else
    (void)p;
#endif
}

static void stop_helpers(cpu_pool *p) {
    pthread_mutex_lock(&p->lock);
    p->stopping = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (uint32_t i = 0; i < p->n_helpers; i++)
        pthread_join(p->helpers[i].thread, NULL);
    p->n_helpers = 0;
}

fkv_status cpu_pool_create(uint32_t width, size_t min_work, cpu_pool **out) {
    *out = NULL;
    cpu_pool *p = calloc(1, sizeof *p);
    uint32_t want = width > 1 ? width - 1 : 0;
    pool_helper *helpers = want ? calloc(want, sizeof *helpers) : NULL;
    if (p == NULL || (want && helpers == NULL)) {
        free(p);
        free(helpers);
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "cpu: allocating %u helper threads", want);
    }
    p->min_work = min_work;
    *out = p;
    if (want == 0)
        return FKV_OK;
    /* Without a lock or a helper the pool is the caller's thread alone: the items still run. */
    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        free(helpers);
        return FKV_OK;
    }
    if (pthread_cond_init(&p->wake, NULL) != 0) {
        pthread_mutex_destroy(&p->lock);
        free(helpers);
        return FKV_OK;
    }
    if (pthread_cond_init(&p->idle, NULL) != 0) {
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
        free(helpers);
        return FKV_OK;
    }
    p->helpers = helpers;
#ifdef __linux__
    p->poster_cpu = -1;
    if (sched_getaffinity(0, sizeof p->allowed, &p->allowed) != 0)
        CPU_ZERO(&p->allowed); /* unknown: no keeping off */
#endif
    for (uint32_t i = 0; i < want; i++) {
        helpers[i] = (pool_helper){.pool = p, .worker = i + 1};
        if (pthread_create(&helpers[i].thread, NULL, helper_main, &helpers[i]) != 0)
            break;
        p->n_helpers++;
    }
    return FKV_OK;
}

void cpu_pool_destroy(cpu_pool *p) {
    if (p == NULL)
        return;
    if (p->helpers != NULL) { /* the lock and conditions exist */
        stop_helpers(p);
        pthread_cond_destroy(&p->idle);
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->lock);
        free(p->helpers);
    }
    free(p);
}

static int by_start(const void *a, const void *b) {
    uintptr_t x = ((const cpu_span *)a)->start, y = ((const cpu_span *)b)->start;
    return (x > y) - (x < y);
}

cpu_pool *cpu_pool_for(cpu_pool *p, cpu_span *spans, size_t n) {
    if (p == NULL || spans == NULL)
        return NULL;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) /* the empty ones out */
        if (spans[i].end > spans[i].start)
            spans[m++] = spans[i];
    qsort(spans, m, sizeof *spans, by_start);
    for (size_t i = 1; i < m; i++)
        if (spans[i].start < spans[i - 1].end)
            return NULL;
    return p;
}

uint32_t cpu_usable_cpus(void) {
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return (uint32_t)CPU_COUNT(&set);
#endif
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online < 1 ? 1 : (uint32_t)online;
}

uint32_t cpu_pool_width(const cpu_pool *p) { return p ? p->n_helpers + 1 : 1; }

fkv_status cpu_pool_run(cpu_pool *p, size_t n, uint64_t work, cpu_pool_item_fn fn, void *ctx) {
    pool_job j = {.fn = fn, .ctx = ctx, .n = n, .failed = FKV_OK};
    atomic_init(&j.next, 0);
    if (pthread_mutex_init(&j.lock, NULL) != 0)
        return fkv_error(FKV_ERR_BACKEND, "cpu: pthread_mutex_init failed for a command's items");
    int shared = 0;
    if (p != NULL && p->n_helpers > 0 && n > 1 && work >= p->min_work) {
        pthread_mutex_lock(&p->lock);
        if (!p->busy) {
            p->busy = shared = 1;
            keep_off_poster(p);
            p->job = &j;
            p->posted++;
            pthread_cond_broadcast(&p->wake);
        }
        pthread_mutex_unlock(&p->lock);
    }
    run_items(&j, 0);
    if (shared) {
        /* No helper joins after this; the job lives on this stack until the last one left. */
        pthread_mutex_lock(&p->lock);
        p->job = NULL;
        while (p->inside > 0)
            pthread_cond_wait(&p->idle, &p->lock);
        p->busy = 0;
        pthread_mutex_unlock(&p->lock);
    }
    pthread_mutex_destroy(&j.lock);
    if (j.failed == FKV_OK)
        return FKV_OK;
    if (j.message == NULL)
        return fkv_error(j.failed, "cpu: item %zu of a command failed", j.failed_item);
    fkv_error_restore(j.message);
    return j.failed;
}
