/* A HIP "engine" that owns its stream and device memory and hands them to freekv
 * (fkv_device_open_native): each layer it copies q/k/v into its own device buffers on its
 * stream and records an event, freekv's compute stream (the engine's own stream here) waits for
 * it on the device, freekv records the engine's second event once `out` is written, and the
 * engine's copy of `out` to the host waits for that. The outputs are compared bit for bit with
 * the host-tensor path (engine_common.h). Built with the HIP backend (AMD, or NVIDIA through
 * hip/hip_cuda_compat.h: an engine would include <hip/hip_runtime_api.h>); CI only compiles it
 * (tools/ci-hip.sh), having no GPU. ./build/engine_hip; exit 0: identical; 1: a failure or a
 * difference; 77: no HIP device. */
#include "hip/hip_platform.h"

#include "engine_common.h"

typedef struct engine {
    hipStream_t stream;
    hipEvent_t ready, written; /* q/k/v copied; out written (recorded by freekv) */
    void *mem[4];              /* q, k, v, out */
    fkv_buffer *fbufs[4];
    size_t q_bytes, kv_bytes;
} engine;
enum { B_Q, B_K, B_V, B_OUT };

#define HIP_OK(call, what)                                                                    \
    do {                                                                                      \
        hipError_t e_ = (call);                                                               \
        if (e_ != hipSuccess)                                                                 \
            return ex_api_fail("engine_hip", what, (long)e_, hipGetErrorString(e_));          \
    } while (0)

static int decode_layer(void *user, fkv_context *ctx, uint32_t layer, const float *q,
                        const float *k, const float *v, float *out) {
    engine *e = user;
    /* the engine's own copies on its own stream (a model's kernels would write them here) */
    HIP_OK(hipMemcpyAsync(e->mem[B_Q], q, e->q_bytes, hipMemcpyHostToDevice, e->stream), "copy q");
    HIP_OK(hipMemcpyAsync(e->mem[B_K], k, e->kv_bytes, hipMemcpyHostToDevice, e->stream), "copy k");
    HIP_OK(hipMemcpyAsync(e->mem[B_V], v, e->kv_bytes, hipMemcpyHostToDevice, e->stream), "copy v");
    HIP_OK(hipEventRecord(e->ready, e->stream), "hipEventRecord");
    uint32_t seq = 0;
    fkv_tensor tq = {.buffer = e->fbufs[B_Q]}, tk = {.buffer = e->fbufs[B_K]};
    fkv_tensor tv = {.buffer = e->fbufs[B_V]}, to = {.buffer = e->fbufs[B_OUT]};
    fkv_native_event wait = {.handle = e->ready}, done = {.handle = e->written};
    fkv_external_sync sync = {.n_wait = 1, .wait = &wait, .signal = &done};
    EX_CHECK(fkv_decode_layer_sync(ctx, layer, 1, &seq, &tq, &tk, &tv, &to, &sync));
    /* `out` through the engine's stream once freekv recorded it written */
    HIP_OK(hipStreamWaitEvent(e->stream, e->written, 0), "hipStreamWaitEvent");
    HIP_OK(hipMemcpyAsync(out, e->mem[B_OUT], e->q_bytes, hipMemcpyDeviceToHost, e->stream),
           "copy out");
    HIP_OK(hipStreamSynchronize(e->stream), "hipStreamSynchronize");
    return 0;
}

static int create_objects(engine *e, fkv_device *dev, const fkv_config *cfg) {
    e->q_bytes = sizeof(float) * cfg->n_q_heads * cfg->head_dim;
    e->kv_bytes = sizeof(float) * cfg->n_kv_heads * cfg->head_dim;
    HIP_OK(hipEventCreateWithFlags(&e->ready, hipEventDisableTiming), "hipEventCreateWithFlags");
    HIP_OK(hipEventCreateWithFlags(&e->written, hipEventDisableTiming), "hipEventCreateWithFlags");
    for (int b = B_Q; b <= B_OUT; b++) {
        size_t size = b == B_Q || b == B_OUT ? e->q_bytes : e->kv_bytes;
        HIP_OK(hipMalloc(&e->mem[b], size), "hipMalloc");
        EX_CHECK(fkv_buffer_import(dev, e->mem[b], size, &e->fbufs[b]));
    }
    return 0;
}

int main(void) {
    int n = 0;
    if (hipGetDeviceCount(&n) != hipSuccess || n == 0) {
        printf("engine_hip: no HIP device\n");
        return EX_SKIP;
    }
    engine e = {0};
    HIP_OK(hipSetDevice(0), "hipSetDevice");
    HIP_OK(hipStreamCreateWithFlags(&e.stream, hipStreamNonBlocking), "hipStreamCreateWithFlags");
    /* freekv on the engine's device, its stream as freekv's compute stream */
    fkv_native_objects objs = {.api = FKV_NATIVE_HIP, .hip = {.device = 0, .stream = e.stream}};
    fkv_device *dev;
    fkv_context *ctx;
    fkv_config cfg;
    int rc = 1;
    if (ex_open("engine_hip", &objs, &cfg, &dev, &ctx) == 0 && create_objects(&e, dev, &cfg) == 0)
        rc = ex_run("engine_hip", dev, decode_layer, &e, &cfg, ctx, 16, NULL);
    ex_close(e.fbufs, 4, ctx, dev); /* freekv's side first, then the engine's */
    for (int b = B_Q; b <= B_OUT; b++)
        if (e.mem[b])
            hipFree(e.mem[b]);
    if (e.ready)
        hipEventDestroy(e.ready);
    if (e.written)
        hipEventDestroy(e.written);
    hipStreamDestroy(e.stream);
    return rc;
}
