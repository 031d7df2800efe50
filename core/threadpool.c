/* The gather threads of the staged recall. Separate because it knows nothing of KV: it
 * splits [0, n) among threads that live as long as the context. */
#include "threadpool.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "../common/error.h"

#define MAX_THREADS 16

struct fkv_pool {
    pthread_mutex_t job_lock; /* one job at a time */
    pthread_mutex_t lock;
    pthread_cond_t wake, idle;
    pthread_t threads[MAX_THREADS];
    unsigned n_threads; /* workers, excluding the caller who also takes a share */
    unsigned generation, pending;
    int stop;
    fkv_pool_fn fn; /* the job being run: fn(arg, begin, end) over [0, job_size) */
    void *arg;
    size_t job_size;
};

static void share(fkv_pool *p, unsigned who, fkv_pool_fn fn, void *arg, size_t n) {
    unsigned parts = p->n_threads + 1;
    size_t begin = n * who / parts, end = n * (who + 1) / parts;
    if (begin < end)
        fn(arg, begin, end);
}

typedef struct worker_arg {
    fkv_pool *pool;
    unsigned index;
} worker_arg;

static void *worker(void *raw) {
    fkv_pool *p = ((worker_arg *)raw)->pool;
    unsigned who = ((worker_arg *)raw)->index + 1;
    unsigned seen = 0;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->stop && p->generation == seen)
            pthread_cond_wait(&p->wake, &p->lock);
        if (p->stop)
            break;
        seen = p->generation;
        fkv_pool_fn fn = p->fn;
        void *arg = p->arg;
        size_t n = p->job_size;
        pthread_mutex_unlock(&p->lock);
        share(p, who, fn, arg, n);
        pthread_mutex_lock(&p->lock);
        if (--p->pending == 0)
            pthread_cond_signal(&p->idle);
    }
    pthread_mutex_unlock(&p->lock);
    free(raw);
    return NULL;
}

fkv_status fkv_pool_create(unsigned n_threads, fkv_pool **out) {
    *out = NULL;
    if (n_threads == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cpus < 1 ? 1 : cpus > 4 ? 4 : (unsigned)cpus;
    }
    if (n_threads > MAX_THREADS)
        n_threads = MAX_THREADS;
    fkv_pool *p = calloc(1, sizeof *p);
    if (p == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "thread pool");
    pthread_mutex_init(&p->job_lock, NULL);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->idle, NULL);
    for (unsigned i = 0; i + 1 < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa != NULL) {
            wa->pool = p;
            wa->index = i;
        }
        if (wa == NULL || pthread_create(&p->threads[i], NULL, worker, wa) != 0) {
            free(wa);
            fkv_pool_destroy(p);
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "starting gather threads");
        }
        p->n_threads++; /* no job can run before create returns */
    }
    *out = p;
    return FKV_OK;
}

void fkv_pool_destroy(fkv_pool *p) {
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->job_lock);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->idle);
    free(p);
}

void fkv_pool_run(fkv_pool *p, size_t n, fkv_pool_fn fn, void *arg) {
    if (n == 0)
        return;
    if (p == NULL || p->n_threads == 0 || n == 1) {
        fn(arg, 0, n);
        return;
    }
    pthread_mutex_lock(&p->job_lock);
    pthread_mutex_lock(&p->lock);
    p->fn = fn;
    p->arg = arg;
    p->job_size = n;
    p->pending = p->n_threads;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    share(p, 0, fn, arg, n);
    pthread_mutex_lock(&p->lock);
    while (p->pending > 0)
        pthread_cond_wait(&p->idle, &p->lock);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_unlock(&p->job_lock);
}
