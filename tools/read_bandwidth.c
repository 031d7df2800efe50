/* How fast this machine's cores read memory: the floor under any pass that streams data it
 * does not keep, such as the page scoring (docs/bench.md, "What grows with the context").
 *
 * 1, 2, ... up to every allowed CPU threads, each pinned to its own CPU (a 2-CPU VM here left
 * unpinned threads on one CPU: tools/wake_placement.c), read disjoint shares of a 256 MiB
 * buffer; the median and the best of 7 passes are printed, in GB/s of bytes read. Memcpy counts
 * each byte once too but also writes it; a pass that only reads is what scoring does.
 *
 *   cc -O3 -march=native -pthread tools/read_bandwidth.c -o /tmp/read_bandwidth &&
 *   /tmp/read_bandwidth
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BUFFER_BYTES ((size_t)256 << 20)
#define PASSES 7
#define MAX_THREADS 256

typedef struct {
    const uint64_t *words;
    size_t n;
    int cpu;
    uint64_t sum;
} share;

static pthread_barrier_t start;
static volatile uint64_t sink; /* the sums end here, so the reads are not dropped */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *read_share(void *arg) {
    share *s = arg;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(s->cpu, &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one); /* best effort */
    pthread_barrier_wait(&start);
    /* four sums, so the adds vectorise and no one add's latency paces the loop */
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= s->n; i += 4) {
        a += s->words[i];
        b += s->words[i + 1];
        c += s->words[i + 2];
        d += s->words[i + 3];
    }
    s->sum = a + b + c + d;
    return NULL;
}

static int cmp_double(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

int main(void) {
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
        perror("sched_getaffinity");
        return 1;
    }
    int cpus[MAX_THREADS], n_cpus = 0;
    for (int c = 0; c < CPU_SETSIZE && n_cpus < MAX_THREADS; c++)
        if (CPU_ISSET(c, &allowed))
            cpus[n_cpus++] = c;
    uint64_t *words = malloc(BUFFER_BYTES);
    if (!words) {
        fprintf(stderr, "read_bandwidth: cannot allocate %zu MiB\n", BUFFER_BYTES >> 20);
        return 1;
    }
    size_t n_words = BUFFER_BYTES / sizeof *words;
    for (size_t i = 0; i < n_words; i++)
        words[i] = i; /* touched, so every page is backed before the first pass */
    printf("read_bandwidth: %zu MiB, %d allowed CPUs, median and best of %d passes\n",
           BUFFER_BYTES >> 20, n_cpus, PASSES);
    uint64_t keep = 0;
    /* 1, 2, 4, ... and every allowed CPU */
    for (int n_threads = 1;; n_threads = n_threads * 2 < n_cpus ? n_threads * 2 : n_cpus) {
        share shares[MAX_THREADS];
        pthread_t threads[MAX_THREADS];
        double gbs[PASSES];
        size_t per = n_words / (size_t)n_threads / 4 * 4;
        for (int p = 0; p < PASSES; p++) {
            pthread_barrier_init(&start, NULL, (unsigned)n_threads + 1);
            for (int t = 0; t < n_threads; t++) {
                shares[t] = (share){words + (size_t)t * per, per, cpus[t], 0};
                if (pthread_create(&threads[t], NULL, read_share, &shares[t]) != 0) {
                    fprintf(stderr, "read_bandwidth: cannot start thread %d\n", t);
                    return 1;
                }
            }
            double t0 = now();
            pthread_barrier_wait(&start);
            for (int t = 0; t < n_threads; t++) {
                pthread_join(threads[t], NULL);
                keep += shares[t].sum;
            }
            gbs[p] = (double)per * (double)n_threads * sizeof *words / (now() - t0) / 1e9;
            pthread_barrier_destroy(&start);
        }
        qsort(gbs, PASSES, sizeof gbs[0], cmp_double);
        printf("  %3d thread%s: %6.1f GB/s median, %6.1f best\n", n_threads,
               n_threads == 1 ? " " : "s", gbs[PASSES / 2], gbs[PASSES - 1]);
        if (n_threads == n_cpus)
            break;
    }
    sink = keep;
    free(words);
    return 0;
}
