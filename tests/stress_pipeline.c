/* The pipeline scenarios as a plain program (no Criterion, whose forking arena does not run
 * under ThreadSanitizer): CI builds it with -fsanitize=thread to check the speculative
 * worker, the recall engine and the backend's queues for races, on the CPU reference
 * (`stress_pipeline`) and on OpenCL (`stress_pipeline opencl`: PoCL in CI; its own threads
 * synchronise through pthreads, which TSan intercepts, and need no suppression). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "pipeline_driver.h"

static int passed, failed;
static const char *backend = "cpu";

static void check(int ok, const char *what) {
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL: %s (%s)\n", what, fkv_last_error());
    }
}

static pd_run batch_run(int batched, uint32_t steps) {
    pd_run r;
    memset(&r, 0, sizeof r);
    r.n_seqs = 3;
    uint32_t prompts[] = {37, 5, 90};
    for (int i = 0; i < 3; i++) {
        r.seqs[i] = (uint32_t)i;
        r.prompt[i] = prompts[i];
    }
    r.steps = steps;
    r.batched = batched;
    r.drift = 0.3f;
    return r;
}

static float *run(fkv_policy policy, float tau, int batched) {
    fkv_config c;
    th_small_config(&c);
    c.policy = policy;
    c.tau = tau;
    c.recall_chunk_pages = 3; /* many small chunks: exercises double buffering */
    pd_run r = batch_run(batched, 30);
    float *out = calloc(pd_out_floats(&c, &r), sizeof(float));
    if (pd_run_on(backend, &c, &r, out, NULL, NULL) != FKV_OK) {
        free(out);
        return NULL;
    }
    return out;
}

static size_t out_floats(void) {
    fkv_config c;
    th_small_config(&c);
    pd_run r = batch_run(1, 30);
    return pd_out_floats(&c, &r);
}

/* Bitwise on the CPU reference; elsewhere a batch may split attention differently from a
 * single sequence (a device kernel's choice), so equal within 1e-5 (relative L2). */
static int same(const float *a, const float *b, size_t n) {
    if (a == NULL || b == NULL)
        return 0;
    if (strcmp(backend, "cpu") == 0)
        return memcmp(a, b, n * sizeof(float)) == 0;
    return th_rel_l2(a, b, n) <= 1e-5;
}

/* The same run with every output in a device buffer: the calls return with their commands in
 * flight, and the speculative worker waits for each call before the layer's task. */
static float *run_device_out(fkv_policy policy) {
    fkv_config c;
    th_small_config(&c);
    c.policy = policy;
    c.recall_chunk_pages = 3;
    pd_run r = batch_run(1, 30);
    size_t n = pd_out_floats(&c, &r);
    float *out = calloc(n, sizeof(float));
    fkv_device *dev = NULL;
    fkv_context *ctx = NULL;
    fkv_status st = fkv_device_open(backend, NULL, &dev);
    if (st == FKV_OK)
        st = fkv_context_create(dev, &c, &ctx);
    if (st == FKV_OK)
        st = fkv_buffer_alloc(dev, n * sizeof(float), &r.device_out);
    if (st == FKV_OK)
        st = pd_execute(ctx, &r, out);
    fkv_context_destroy(ctx); /* before the buffer: it finishes the queues */
    fkv_buffer_release(r.device_out);
    fkv_device_close(dev);
    if (st != FKV_OK) {
        free(out);
        return NULL;
    }
    return out;
}

static void *concurrent(void *arg) {
    return run(*(fkv_policy *)arg, 0.9f, 1);
}

int main(int argc, char **argv) {
    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        fprintf(stderr, "usage: stress_pipeline [BACKEND]   (default cpu)\n");
        return 2;
    }
    if (argc == 2)
        backend = argv[1];
    size_t n = out_floats();
    fkv_policy pols[] = {FKV_POLICY_SPECULATIVE, FKV_POLICY_FREEKV, FKV_POLICY_SYNC};
    for (size_t i = 0; i < 3; i++) {
        float *a = run(pols[i], 0.9f, 1), *b = run(pols[i], 0.9f, 0);
        check(a && b, "run completes");
        if (a && b)
            check(same(a, b, n), "batched equals one at a time");
        free(a);
        free(b);
    }
    for (size_t i = 0; i < 3; i++) {
        float *a = run(pols[i], 0.9f, 1), *d = run_device_out(pols[i]);
        check(a && d, "run with device outputs completes");
        if (a && d)
            check(same(a, d, n), "device outputs equal host outputs");
        free(a);
        free(d);
    }
    float *sync = run(FKV_POLICY_SYNC, 0.9f, 1), *fk = run(FKV_POLICY_FREEKV, 1.0f, 1);
    check(same(sync, fk, n), "freekv(tau=1) equals sync");
    /* two engines decoding at once, each with its own device and context */
    pthread_t t[2];
    fkv_policy p[2] = {FKV_POLICY_FREEKV, FKV_POLICY_SPECULATIVE};
    void *res[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, concurrent, &p[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], &res[i]);
    for (int i = 0; i < 2; i++) {
        float *serial = run(p[i], 0.9f, 1);
        check(same(res[i], serial, n), "concurrent contexts give the serial result");
        free(serial);
        free(res[i]);
    }
    free(sync);
    free(fk);
    printf("stress_pipeline on %s\n%d passed, %d failed\n", backend, passed, failed);
    return failed != 0;
}
