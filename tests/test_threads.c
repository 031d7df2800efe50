/* Threads: many threads enumerate, pick and open devices at the same moment, as the
 * process's first use of each driver (Criterion runs every test in a fresh process, so each
 * race below is a first use; without the registry's serialisation, PoCL crashes or reports
 * no device); and contexts sharing one device decode from several threads at once. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "pipeline_driver.h"

#define N_THREADS 8

typedef enum { OP_OPEN, OP_LIST, OP_PICK, OP_MIXED } race_op;

typedef struct race_param {
    char backend[16]; /* "auto", "cpu", "opencl", "vulkan" */
    race_op op;
    int round;        /* the same race again, in another fresh process */
} race_param;

typedef struct job {
    const race_param *param;
    int index;
    pthread_barrier_t *start, *opened;
    fkv_status st;
    char msg[256];
    fkv_device *dev;
} job;

static const char *const mixed_backends[] = {"opencl", "vulkan", "cpu", "auto"};

static void *run_job(void *arg) {
    job *j = arg;
    race_op op = j->param->op;
    const char *backend = j->param->backend;
    if (op == OP_MIXED) { /* every kind of call on every backend at once */
        op = (race_op)(j->index % 3);
        backend = mixed_backends[(j->index / 3 + j->index) % 4];
    }
    pthread_barrier_wait(j->start);
    fkv_device_info info[64];
    size_t n = 0;
    switch (op) {
    case OP_OPEN:
        j->st = fkv_device_open(backend, NULL, &j->dev);
        break;
    case OP_LIST:
        j->st = fkv_device_list(backend, info, 64, &n);
        if (j->st == FKV_OK && n == 0)
            j->st = FKV_ERR_NO_DEVICE;
        break;
    default:
        j->st = fkv_device_pick(backend, NULL, info);
        break;
    }
    if (j->st != FKV_OK)
        snprintf(j->msg, sizeof j->msg, "%s %s: %s", op == OP_OPEN ? "open" : op == OP_LIST ? "list" : "pick",
                 backend, fkv_last_error());
    /* the devices close at the same moment too */
    pthread_barrier_wait(j->opened);
    fkv_device_close(j->dev);
    return NULL;
}

static void race(const race_param *p) {
    pthread_barrier_t start, opened;
    pthread_barrier_init(&start, NULL, N_THREADS);
    pthread_barrier_init(&opened, NULL, N_THREADS);
    job jobs[N_THREADS];
    pthread_t threads[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        jobs[i] = (job){.param = p, .index = i, .start = &start, .opened = &opened};
        cr_assert_eq(pthread_create(&threads[i], NULL, run_job, &jobs[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&opened);
    /* Only now, from one thread: does this machine have the devices the race asked for? */
    const char *need = p->op == OP_MIXED ? "opencl" : p->backend;
    size_t n = 0;
    if (fkv_device_list(need, NULL, 0, &n) != FKV_OK || n == 0 ||
        (p->op == OP_MIXED && (fkv_device_list("vulkan", NULL, 0, &n) != FKV_OK || n == 0)))
        cr_skip_test("no %s device here", p->op == OP_MIXED ? "OpenCL and Vulkan" : need);
    for (int i = 0; i < N_THREADS; i++)
        cr_expect_eq(jobs[i].st, FKV_OK, "round %d, thread %d: %s", p->round, i, jobs[i].msg);
}

ParameterizedTestParameters(threads, first_use) {
    static race_param params[] = {
        {"opencl", OP_OPEN, 0}, {"opencl", OP_OPEN, 1}, {"opencl", OP_OPEN, 2},
        {"opencl", OP_LIST, 0}, {"opencl", OP_LIST, 1}, {"opencl", OP_PICK, 0},
        {"opencl", OP_PICK, 1}, {"vulkan", OP_OPEN, 0}, {"vulkan", OP_OPEN, 1},
        {"vulkan", OP_LIST, 0}, {"vulkan", OP_PICK, 0}, {"cpu", OP_OPEN, 0},
        {"cpu", OP_LIST, 0},    {"cpu", OP_PICK, 0},    {"auto", OP_OPEN, 0},
        {"auto", OP_OPEN, 1},   {"auto", OP_OPEN, 2},   {"auto", OP_LIST, 0},
        {"auto", OP_PICK, 0},   {"auto", OP_PICK, 1},   {"", OP_MIXED, 0},
        {"", OP_MIXED, 1},      {"", OP_MIXED, 2},
    };
    return cr_make_param_array(race_param, params, sizeof params / sizeof *params);
}

ParameterizedTest(race_param *p, threads, first_use) { race(p); }

/* Contexts of one device, each used by its own thread, at the same time (freekv.h: calls on
 * distinct contexts of a device may overlap): each gives what it gives alone. */
typedef struct ctx_job {
    fkv_device *dev;
    fkv_config cfg;
    pd_run run;
    float *out;
    fkv_status st;
    char msg[256];
} ctx_job;

static void *run_context(void *arg) {
    ctx_job *j = arg;
    fkv_context *ctx = NULL;
    j->st = fkv_context_create(j->dev, &j->cfg, &ctx);
    if (j->st == FKV_OK)
        j->st = pd_execute(ctx, &j->run, j->out);
    if (j->st != FKV_OK)
        snprintf(j->msg, sizeof j->msg, "%s", fkv_last_error());
    fkv_context_destroy(ctx);
    return NULL;
}

typedef struct backend_param {
    char backend[16];
} backend_param;

ParameterizedTestParameters(threads, contexts_share_a_device) {
    static backend_param params[] = {{"cpu"}, {"opencl"}, {"vulkan"}};
    return cr_make_param_array(backend_param, params, sizeof params / sizeof *params);
}

ParameterizedTest(backend_param *p, threads, contexts_share_a_device) {
    size_t n = 0;
    if (fkv_device_list(p->backend, NULL, 0, &n) != FKV_OK || n == 0)
        cr_skip_test("no %s device here", p->backend);
    fkv_device *dev;
    cr_assert_eq(fkv_device_open(p->backend, NULL, &dev), FKV_OK, "%s", fkv_last_error());
    enum { N_CTX = 3 };
    static const fkv_policy policies[N_CTX] = {FKV_POLICY_FREEKV, FKV_POLICY_SYNC,
                                               FKV_POLICY_SPECULATIVE};
    ctx_job jobs[N_CTX];
    pthread_t threads[N_CTX];
    for (int i = 0; i < N_CTX; i++) {
        jobs[i] = (ctx_job){.dev = dev};
        th_small_config(&jobs[i].cfg);
        jobs[i].cfg.policy = policies[i];
        jobs[i].run = (pd_run){.n_seqs = 2, .seqs = {0, 1}, .prompt = {30 + 7 * i, 45},
                               .steps = 12, .batched = 1, .drift = 0.3f};
        jobs[i].out = calloc(pd_out_floats(&jobs[i].cfg, &jobs[i].run), sizeof(float));
        cr_assert_eq(pthread_create(&threads[i], NULL, run_context, &jobs[i]), 0);
    }
    for (int i = 0; i < N_CTX; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < N_CTX; i++) {
        cr_assert_eq(jobs[i].st, FKV_OK, "context %d: %s", i, jobs[i].msg);
        size_t floats = pd_out_floats(&jobs[i].cfg, &jobs[i].run);
        float *alone = calloc(floats, sizeof(float));
        fkv_context *ctx;
        cr_assert_eq(fkv_context_create(dev, &jobs[i].cfg, &ctx), FKV_OK, "%s",
                     fkv_last_error());
        cr_assert_eq(pd_execute(ctx, &jobs[i].run, alone), FKV_OK, "%s", fkv_last_error());
        cr_assert(memcmp(alone, jobs[i].out, floats * sizeof(float)) == 0,
                  "%s: context %d decoded alongside others differs from it alone", p->backend,
                  i);
        fkv_context_destroy(ctx);
        free(alone);
        free(jobs[i].out);
    }
    fkv_device_close(dev);
}
