/* Engine interop on OpenCL (PoCL in CI): freekv opened on the engine's context and queue
 * keeps them the engine's (reference counts unchanged after fkv_device_close); the engine's
 * objects are checked (an out-of-order queue, a queue of another context, an event of another
 * context are refused); fkv_device_get_native returns the handles; and fkv_decode_layer_sync
 * orders freekv's work after the engine's event: with the engine's writes of q/k/v held back by
 * a user event that another thread completes later, every output is still bit for bit the
 * host-tensor path's (examples/engine_common.h runs both). The host waits freekv makes in such a
 * call are counted. Without an OpenCL device every test is skipped (fails when
 * FREEKV_REQUIRE_DEVICES names opencl). */
#define CL_TARGET_OPENCL_VERSION 200
#include <CL/cl.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <time.h>

#include "examples/engine_common.h"
#include "helpers.h"

typedef struct engine {
    cl_device_id device;
    cl_context context;
    cl_command_queue queue; /* the engine's, not handed to freekv unless a test does */
    cl_mem mem[4];          /* q, k, v, out */
    fkv_buffer *fbufs[4];
    size_t q_bytes, kv_bytes;
    int gate; /* hold the writes of q/k/v back until another thread lets them go */
} engine;

static engine eng;

static void open_engine(void) {
    cl_platform_id plats[8];
    cl_uint n = 0;
    int found = 0;
    if (clGetPlatformIDs(8, plats, &n) == CL_SUCCESS)
        for (cl_uint p = 0; p < n && p < 8 && !found; p++)
            found = clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 1, &eng.device, NULL) ==
                    CL_SUCCESS;
    if (!found) {
        if (th_device_required("opencl"))
            cr_assert_fail("no OpenCL device, but FREEKV_REQUIRE_DEVICES requires one");
        cr_skip_test("no OpenCL device");
    }
    cl_int err;
    eng.context = clCreateContext(NULL, 1, &eng.device, NULL, NULL, &err);
    cr_assert_eq(err, CL_SUCCESS);
    eng.queue = clCreateCommandQueueWithProperties(eng.context, eng.device, NULL, &err);
    cr_assert_eq(err, CL_SUCCESS);
}

static void close_engine(void) {
    for (int b = 0; b < 4; b++)
        if (eng.mem[b])
            clReleaseMemObject(eng.mem[b]);
    if (eng.queue)
        clReleaseCommandQueue(eng.queue);
    if (eng.context)
        clReleaseContext(eng.context);
}

TestSuite(interop_opencl, .init = open_engine, .fini = close_engine, .timeout = 300);

static cl_uint refs_context(cl_context c) {
    cl_uint n = 0;
    cr_assert_eq(clGetContextInfo(c, CL_CONTEXT_REFERENCE_COUNT, sizeof n, &n, NULL), CL_SUCCESS);
    return n;
}

static cl_uint refs_queue(cl_command_queue q) {
    cl_uint n = 0;
    cr_assert_eq(clGetCommandQueueInfo(q, CL_QUEUE_REFERENCE_COUNT, sizeof n, &n, NULL),
                 CL_SUCCESS);
    return n;
}

static fkv_device *open_native(cl_command_queue queue) {
    fkv_native_objects objs = {
        .api = FKV_NATIVE_OPENCL,
        .opencl = {.context = eng.context, .device = eng.device, .queue = queue}};
    fkv_device *dev;
    cr_assert_eq(fkv_device_open_native(&objs, &dev), FKV_OK, "%s", fkv_last_error());
    return dev;
}

Test(interop_opencl, engine_objects_stay_the_engines) {
    /* an extra reference each, so a release by freekv would show as a count, not a crash */
    clRetainContext(eng.context);
    clRetainCommandQueue(eng.queue);
    cl_uint ctx_refs = refs_context(eng.context), queue_refs = refs_queue(eng.queue);
    fkv_device *dev = open_native(eng.queue);
    fkv_native_objects objs;
    cr_assert_eq(fkv_device_get_native(dev, &objs), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(objs.api, FKV_NATIVE_OPENCL);
    cr_assert_eq(objs.opencl.context, (void *)eng.context);
    cr_assert_eq(objs.opencl.device, (void *)eng.device);
    cr_assert_eq(objs.opencl.queue, (void *)eng.queue, "the engine's queue is the compute queue");
    cr_assert_null(objs.vulkan.device, "other members zeroed");
    fkv_device_info info;
    cr_assert_eq(fkv_device_get_info(dev, &info), FKV_OK);
    cr_assert_str_eq(info.backend, "opencl");
    cr_assert_lt(info.index, 64u, "found in freekv's enumeration");
    fkv_device_close(dev);
    cr_assert_eq(refs_context(eng.context), ctx_refs, "context released by freekv");
    cr_assert_eq(refs_queue(eng.queue), queue_refs, "queue released by freekv");
    clReleaseCommandQueue(eng.queue);
    clReleaseContext(eng.context);

    /* without a queue: freekv's own compute queue on the engine's context */
    dev = open_native(NULL);
    cr_assert_eq(fkv_device_get_native(dev, &objs), FKV_OK);
    cr_assert_eq(objs.opencl.context, (void *)eng.context);
    cr_assert_not_null(objs.opencl.queue);
    cr_assert_neq(objs.opencl.queue, (void *)eng.queue);
    fkv_device_close(dev);
    cr_assert_eq(refs_context(eng.context), ctx_refs - 1);
}

Test(interop_opencl, refuses_objects_freekv_cannot_use) {
    fkv_device *dev = (fkv_device *)&dev;
    fkv_native_objects objs = {.api = FKV_NATIVE_OPENCL, .opencl = {.context = eng.context}};
    cr_assert_eq(fkv_device_open_native(&objs, &dev), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_null(dev);
    cl_int err;
    cl_queue_properties ooo[] = {CL_QUEUE_PROPERTIES, CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE, 0};
    cl_command_queue q = clCreateCommandQueueWithProperties(eng.context, eng.device, ooo, &err);
    if (err == CL_SUCCESS) { /* PoCL has out-of-order queues; a device without them skips this */
        objs.opencl = (fkv_opencl_objects){eng.context, eng.device, q};
        cr_assert_eq(fkv_device_open_native(&objs, &dev), FKV_ERR_UNSUPPORTED);
        cr_assert(strstr(fkv_last_error(), "out of order"), "%s", fkv_last_error());
        clReleaseCommandQueue(q);
    }
    cl_context other = clCreateContext(NULL, 1, &eng.device, NULL, NULL, &err);
    cr_assert_eq(err, CL_SUCCESS);
    q = clCreateCommandQueueWithProperties(other, eng.device, NULL, &err);
    objs.opencl = (fkv_opencl_objects){eng.context, eng.device, q};
    cr_assert_eq(fkv_device_open_native(&objs, &dev), FKV_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(fkv_last_error(), "another context"), "%s", fkv_last_error());

    /* an event of another context cannot be in this context's wait lists */
    fkv_device *ok = open_native(NULL);
    fkv_config cfg;
    th_small_config(&cfg);
    fkv_context *ctx;
    cr_assert_eq(fkv_context_create(ok, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    cl_event foreign = clCreateUserEvent(other, &err);
    clSetUserEventStatus(foreign, CL_COMPLETE);
    float x[64] = {0};
    fkv_tensor tq = {x, NULL, 0}, tk = {x, NULL, 0}, tv = {x, NULL, 0}, to = {x, NULL, 0};
    fkv_native_event ev = {.handle = foreign};
    fkv_external_sync sync = {.n_wait = 1, .wait = &ev};
    uint32_t seq = 0;
    cr_assert_eq(fkv_prefill(ctx, 0, 0, 1, &tk, &tv, &tq), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_prefill(ctx, 0, 1, 1, &tk, &tv, &tq), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_decode_layer_sync(ctx, 0, 1, &seq, &tq, &tk, &tv, &to, &sync),
                 FKV_ERR_WRONG_DEVICE);
    cr_assert(strstr(fkv_last_error(), "another context"), "%s", fkv_last_error());
    uint32_t len;
    cr_assert_eq(fkv_sequence_length(ctx, 0, &len), FKV_OK);
    cr_assert_eq(len, 1, "the refused call kept no token");
    clReleaseEvent(foreign);
    fkv_context_destroy(ctx);
    fkv_device_close(ok);
    clReleaseCommandQueue(q);
    clReleaseContext(other);
}

/* Completes a user event after a while, from another thread. */
static void *release_later(void *gate) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    clSetUserEventStatus((cl_event)gate, CL_COMPLETE);
    return NULL;
}

/* examples/engine_common.h's layer, the engine's way: q/k/v written on the engine's queue
 * (after a user event when gated), freekv after that event, out read after freekv's. */
static int decode_layer(void *user, fkv_context *ctx, uint32_t layer, const float *q,
                        const float *k, const float *v, float *out) {
    engine *e = user;
    cl_int err;
    cl_event gate = NULL, ready, read;
    cl_uint n_gate = 0;
    if (e->gate) {
        gate = clCreateUserEvent(e->context, &err);
        n_gate = 1;
    }
    const void *src[3] = {q, k, v};
    for (int b = 0; b < 3; b++)
        cr_assert_eq(clEnqueueWriteBuffer(e->queue, e->mem[b], CL_FALSE, 0,
                                          b ? e->kv_bytes : e->q_bytes, src[b], n_gate,
                                          n_gate ? &gate : NULL, b == 2 ? &ready : NULL),
                     CL_SUCCESS);
    pthread_t t;
    if (gate)
        pthread_create(&t, NULL, release_later, gate);
    uint32_t seq = 0;
    fkv_tensor tq = {.buffer = e->fbufs[0]}, tk = {.buffer = e->fbufs[1]};
    fkv_tensor tv = {.buffer = e->fbufs[2]}, to = {.buffer = e->fbufs[3]};
    fkv_native_event wait = {.handle = ready}, done = {0};
    fkv_external_sync sync = {.n_wait = 1, .wait = &wait, .signal = &done};
    fkv_status st = fkv_decode_layer_sync(ctx, layer, 1, &seq, &tq, &tk, &tv, &to, &sync);
    if (gate) {
        pthread_join(t, NULL);
        clReleaseEvent(gate);
    }
    clReleaseEvent(ready);
    cr_assert_eq(st, FKV_OK, "%s", fkv_last_error());
    cl_event written = done.handle;
    cr_assert_not_null(written, "freekv handed out its event");
    cr_assert_eq(clEnqueueReadBuffer(e->queue, e->mem[3], CL_FALSE, 0, e->q_bytes, out, 1,
                                     &written, &read),
                 CL_SUCCESS);
    cr_assert_eq(clWaitForEvents(1, &read), CL_SUCCESS);
    cl_int status = 0;
    clGetEventInfo(written, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status, NULL);
    cr_assert_eq(status, CL_COMPLETE);
    clReleaseEvent(written);
    clReleaseEvent(read);
    return 0;
}

/* The engine's q/k/v/out buffers, wrapped for freekv. */
static void engine_buffers(fkv_device *dev, const fkv_config *cfg) {
    eng.q_bytes = sizeof(float) * cfg->n_q_heads * cfg->head_dim;
    eng.kv_bytes = sizeof(float) * cfg->n_kv_heads * cfg->head_dim;
    for (int b = 0; b < 4; b++) {
        size_t size = b == 0 || b == 3 ? eng.q_bytes : eng.kv_bytes;
        cl_int err;
        eng.mem[b] = clCreateBuffer(eng.context, CL_MEM_READ_WRITE, size, NULL, &err);
        cr_assert_eq(err, CL_SUCCESS);
        cr_assert_eq(fkv_buffer_import(dev, eng.mem[b], size, &eng.fbufs[b]), FKV_OK, "%s",
                     fkv_last_error());
    }
}

/* The engine's queue is not freekv's here: only the events order the two. */
static void run_engine(int gate, uint32_t steps, ex_result *res) {
    fkv_device *dev = open_native(NULL);
    fkv_config cfg;
    ex_config(&cfg);
    fkv_context *ctx;
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    engine_buffers(dev, &cfg);
    eng.gate = gate;
    cr_assert_eq(ex_run("interop_opencl", dev, decode_layer, &eng, &cfg, ctx, steps, res), 0);
    for (int b = 0; b < 4; b++)
        fkv_buffer_release(eng.fbufs[b]);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

Test(interop_opencl, waits_for_the_engines_event) {
    ex_result res;
    run_engine(1, 3, &res);
    cr_assert_eq(res.calls, 12);
    cr_assert_eq(res.differ, 0, "outputs bit for bit those of the host-tensor path");
}

/* The host waits inside fkv_decode_layer_sync with device q/k/v/out and events (freekv
 * policy): only the correction's read of flags and records, which the method needs; the
 * recall and the output are device-side dependencies (docs/integration.md). */
#define WAITS_PER_LAYER 1

Test(interop_opencl, host_waits_per_layer) {
    ex_result res;
    run_engine(0, 8, &res);
    cr_assert_eq(res.differ, 0);
    cr_assert_leq(res.max_waits, WAITS_PER_LAYER, "%llu host waits in one layer call",
                  (unsigned long long)res.max_waits);
}
