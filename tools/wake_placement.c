/* Where Linux puts a thread it wakes: on the waker's CPU, or on an idle one?
 *
 * A thread wakes a helper every 3 ms and both then spin for 300 us; the count of wakeups after
 * which both ran on one CPU is printed. On a machine with an idle CPU it should be near 0: a
 * high count means woken helpers queue behind their waker (this project's 2-CPU VM: 45-49 of 50),
 * which is why backends/cpu/cpu_pool.c keeps its helpers off the posting thread's CPU and why
 * PoCL wants POCL_AFFINITY=1 there (docs/opencl.md).
 *
 *   cc -O2 -pthread tools/wake_placement.c -o /tmp/wake_placement && /tmp/wake_placement
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#define WAKEUPS 50

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int posted, helper_cpu = -1;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void spin(double seconds) {
    for (double t0 = now(); now() - t0 < seconds;)
        ;
}

static void *helper(void *arg) {
    (void)arg;
    for (int seen = 0; seen < WAKEUPS; seen++) {
        pthread_mutex_lock(&lock);
        while (posted == seen)
            pthread_cond_wait(&cond, &lock);
        helper_cpu = sched_getcpu();
        pthread_mutex_unlock(&lock);
        spin(300e-6);
    }
    return NULL;
}

int main(void) {
    pthread_t t;
    if (pthread_create(&t, NULL, helper, NULL) != 0)
        return 1;
    int same = 0;
    for (int i = 0; i < WAKEUPS; i++) {
        usleep(3000);
        pthread_mutex_lock(&lock);
        posted++;
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&lock);
        spin(300e-6);
        int mine = sched_getcpu();
        usleep(100);
        pthread_mutex_lock(&lock);
        same += mine == helper_cpu;
        pthread_mutex_unlock(&lock);
    }
    pthread_join(t, NULL);
    printf("%d of %d wakeups left the woken thread on its waker's CPU (%ld CPUs online)\n", same,
           WAKEUPS, sysconf(_SC_NPROCESSORS_ONLN));
    return 0;
}
