/* An OpenCL "engine" that owns its context and in-order queue and hands them to freekv
 * (fkv_device_open_native): each layer it writes q/k/v into its own cl_mem buffers on its own
 * queue, gives freekv those buffers and the event of the writes, gets back an event that
 * completes when `out` is written, and reads `out` through its queue after it. The outputs are
 * compared bit for bit with the host-tensor path (engine_common.h). Runs on any OpenCL device
 * (PoCL in CI): ./build/engine_opencl. Exit 0: identical; 1: a failure or a difference; 77: no
 * OpenCL device. */
#define CL_TARGET_OPENCL_VERSION 200
#include <CL/cl.h>

#include "engine_common.h"

typedef struct engine {
    cl_context context;
    cl_command_queue queue;
    cl_mem q, k, v, out;                       /* the engine's activations */
    fkv_buffer *fq, *fk, *fv, *fout;           /* the same, as freekv sees them */
    size_t q_bytes, kv_bytes;
} engine;

#define CL_OK(call, what)                                                                     \
    do {                                                                                      \
        cl_int err_ = (call);                                                                 \
        if (err_ != CL_SUCCESS)                                                               \
            return ex_api_fail("engine_opencl", what, err_, NULL);                            \
    } while (0)

static int decode_layer(void *user, fkv_context *ctx, uint32_t layer, const float *q,
                        const float *k, const float *v, float *out) {
    engine *e = user;
    cl_event ready, read;
    /* the engine's own copies on its own queue (a model's kernels would write them here) */
    CL_OK(clEnqueueWriteBuffer(e->queue, e->q, CL_FALSE, 0, e->q_bytes, q, 0, NULL, NULL), "write q");
    CL_OK(clEnqueueWriteBuffer(e->queue, e->k, CL_FALSE, 0, e->kv_bytes, k, 0, NULL, NULL), "write k");
    CL_OK(clEnqueueWriteBuffer(e->queue, e->v, CL_FALSE, 0, e->kv_bytes, v, 0, NULL, &ready),
          "write v");
    uint32_t seq = 0;
    fkv_tensor tq = {.buffer = e->fq}, tk = {.buffer = e->fk}, tv = {.buffer = e->fv};
    fkv_tensor to = {.buffer = e->fout};
    fkv_native_event wait = {.handle = ready}, done = {0};
    fkv_external_sync sync = {.n_wait = 1, .wait = &wait, .signal = &done};
    fkv_status st = fkv_decode_layer_sync(ctx, layer, 1, &seq, &tq, &tk, &tv, &to, &sync);
    clReleaseEvent(ready); /* freekv's commands hold what they need */
    EX_CHECK(st);
    /* `out` through the engine's queue, after freekv's event (the engine's next layer would
     * wait on it the same way) */
    cl_event out_ready = done.handle;
    CL_OK(clEnqueueReadBuffer(e->queue, e->out, CL_FALSE, 0, e->q_bytes, out, 1, &out_ready,
                              &read),
          "read out");
    clReleaseEvent(out_ready); /* the engine's, as freekv.h says */
    CL_OK(clWaitForEvents(1, &read), "wait for out");
    clReleaseEvent(read);
    return 0;
}

/* The engine's device: the first GPU, else the first device of any type. */
static int pick_device(cl_device_id *out) {
    cl_platform_id plats[8];
    cl_uint n = 0;
    if (clGetPlatformIDs(8, plats, &n) != CL_SUCCESS || n == 0)
        return 0;
    for (int pass = 0; pass < 2; pass++)
        for (cl_uint p = 0; p < n && p < 8; p++)
            if (clGetDeviceIDs(plats[p], pass ? CL_DEVICE_TYPE_ALL : CL_DEVICE_TYPE_GPU, 1, out,
                               NULL) == CL_SUCCESS)
                return 1;
    return 0;
}

static cl_mem engine_buffer(engine *e, size_t size, fkv_device *dev, fkv_buffer **wrapped) {
    cl_int err;
    cl_mem m = clCreateBuffer(e->context, CL_MEM_READ_WRITE, size, NULL, &err);
    if (err != CL_SUCCESS)
        return NULL;
    if (fkv_buffer_import(dev, m, size, wrapped) != FKV_OK) {
        fprintf(stderr, "fkv_buffer_import: %s\n", fkv_last_error());
        clReleaseMemObject(m);
        return NULL;
    }
    return m;
}

int main(void) {
    cl_device_id device;
    if (!pick_device(&device)) {
        printf("engine_opencl: no OpenCL device\n");
        return EX_SKIP;
    }
    engine e = {0};
    cl_int err;
    e.context = clCreateContext(NULL, 1, &device, NULL, NULL, &err);
    CL_OK(err, "clCreateContext");
    e.queue = clCreateCommandQueueWithProperties(e.context, device, NULL, &err);
    CL_OK(err, "clCreateCommandQueueWithProperties");

    /* freekv on the engine's context, its queue as freekv's compute queue */
    fkv_native_objects objs = {
        .api = FKV_NATIVE_OPENCL,
        .opencl = {.context = e.context, .device = device, .queue = e.queue}};
    fkv_device *dev;
    fkv_context *ctx;
    fkv_config cfg;
    int rc = 1;
    if (ex_open("engine_opencl", &objs, &cfg, &dev, &ctx) == 0) {
        e.q_bytes = sizeof(float) * cfg.n_q_heads * cfg.head_dim;
        e.kv_bytes = sizeof(float) * cfg.n_kv_heads * cfg.head_dim;
        e.q = engine_buffer(&e, e.q_bytes, dev, &e.fq);
        e.k = engine_buffer(&e, e.kv_bytes, dev, &e.fk);
        e.v = engine_buffer(&e, e.kv_bytes, dev, &e.fv);
        e.out = engine_buffer(&e, e.q_bytes, dev, &e.fout);
        if (e.q && e.k && e.v && e.out)
            rc = ex_run("engine_opencl", dev, decode_layer, &e, &cfg, ctx, 16, NULL);
    }
    fkv_buffer *fbufs[] = {e.fq, e.fk, e.fv, e.fout};
    ex_close(fbufs, 4, ctx, dev); /* freekv's side first, then the engine's */
    cl_mem mems[] = {e.q, e.k, e.v, e.out};
    for (int i = 0; i < 4; i++)
        if (mems[i])
            clReleaseMemObject(mems[i]);
    clReleaseCommandQueue(e.queue);
    clReleaseContext(e.context);
    return rc;
}
