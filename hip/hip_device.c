/* The HIP backend's devices: enumeration (no runtime, no driver or no GPU means 0 devices),
 * opening and closing, the environment, the options, and the ops table. Layer 5 of the
 * backend, the top: errors (hip_error.c) -> memory (hip_memory.c) -> submission
 * (hip_submit.c) -> kernels (hip_launch.c, device code in kernels.hip) -> device.
 *
 * Model mapping (backends/backend.h): fkv_queue -> a non-blocking hipStream_t each;
 * fkv_bevent -> a hipEvent_t (timing disabled) recorded after the command; wait lists ->
 * hipStreamWaitEvent (the device waits, not the host); fkv_bbuf -> a device pointer;
 * fkv_bhost -> hipHostMalloc(mapped) memory whose device view the zero-copy recall reads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backends/option.h"
#include "../common/env.h"
#include "../common/error.h"
#include "hip_internal.h"
#include "hip_kernels.h"

#ifndef FKV_HIP_TARGETS_STRING
#define FKV_HIP_TARGETS_STRING "?"
#endif

/* ---- enumeration: no runtime, no driver or no GPU means 0 devices ---- */

static uint32_t count_devices(void) {
    int n = 0;
    hipError_t e = hipGetDeviceCount(&n);
    if (e != hipSuccess) {
        (void)hipGetLastError(); /* not this thread's later launches' error */
        return 0;
    }
    return n > 0 ? (uint32_t)n : 0;
}

static fkv_status hip_device_count(uint32_t *count) {
    if (count == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "hip device_count: NULL output");
    *count = count_devices();
    return FKV_OK;
}

static void driver_string(const hipDeviceProp_t *p, char *buf, size_t size) {
    int rt = 0, drv = 0;
    if (hipRuntimeGetVersion(&rt) != hipSuccess)
        rt = 0;
    if (hipDriverGetVersion(&drv) != hipSuccess)
        drv = 0;
#ifdef FKV_HIP_ON_CUDA
    /* CUDA versions are 1000 * major + 10 * minor. */
    snprintf(buf, size, "CUDA %d.%d, driver %d.%d, sm_%d%d", rt / 1000, rt % 1000 / 10,
             drv / 1000, drv % 1000 / 10, p->major, p->minor);
#else
    /* HIP versions are major * 10^7 + minor * 10^5 + patch. */
    snprintf(buf, size, "HIP %d.%d.%d, %.40s", rt / 10000000, rt / 100000 % 100, rt % 100000,
             p->gcnArchName);
#endif
}

static fkv_status query_device(uint32_t index, hipDeviceProp_t *p) {
    uint32_t n = count_devices();
    if (index >= n)
        return fkv_error(FKV_ERR_NO_DEVICE, "hip: no device %u (%u found)", index, n);
    memset(p, 0, sizeof *p);
    hipError_t e = hipGetDeviceProperties(p, (int)index);
    return e == hipSuccess ? FKV_OK : fkv_hip_fail(e, HIP_NOT_ALLOC, "hipGetDeviceProperties");
}

static void fill_info(const hipDeviceProp_t *p, uint32_t index, fkv_device_info *info) {
    memset(info, 0, sizeof *info);
    snprintf(info->backend, sizeof info->backend, "hip");
    info->index = index;
    snprintf(info->name, sizeof info->name, "%.127s", p->name);
    driver_string(p, info->driver, sizeof info->driver);
    info->type = p->integrated ? FKV_DEVICE_INTEGRATED_GPU : FKV_DEVICE_DISCRETE_GPU;
    info->memory_bytes = p->totalGlobalMem;
    info->max_buffer_bytes = p->totalGlobalMem; /* HIP has no per-allocation limit */
    /* Copies are stream-ordered and asynchronous; streams wait on events on the device;
     * hipHostMalloc memory is page-locked; f16/bf16 are converted in the kernels by bits;
     * each fkv_queue is its own stream. */
    info->caps = FKV_CAP_ASYNC_COPY | FKV_CAP_DEVICE_WAIT | FKV_CAP_PINNED_HOST |
                 FKV_CAP_FP16_STORAGE | FKV_CAP_SEPARATE_TRANSFER_QUEUE;
    if (p->canMapHostMemory)
        info->caps |= FKV_CAP_ZERO_COPY_HOST;
}

static fkv_status hip_device_info(uint32_t index, fkv_device_info *info) {
    if (info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "hip device_info: NULL output");
    hipDeviceProp_t p;
    fkv_status st = query_device(index, &p);
    if (st != FKV_OK)
        return st;
    fill_info(&p, index, info);
    return FKV_OK;
}

/* ---- environment (read when a device is opened, before the runtime is touched) ---- */

typedef enum recall_choice { RECALL_AUTO, RECALL_ZEROCOPY, RECALL_STAGED, RECALL_PERPAGE } recall_choice;

static fkv_status read_env(recall_choice *recall) {
    static const char *const names[] = {"auto", "zerocopy", "staged", "perpage"};
    int i;
    fkv_status st = fkv_env_choice("FREEKV_HIP_RECALL", names, 4, RECALL_AUTO, &i);
    *recall = (recall_choice)i;
    return st;
}

/* ---- open / close ---- */

static void hip_device_close(fkv_bdev *d) {
    if (d == NULL)
        return;
    hipSetDevice(d->index);
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        if (d->streams[q])
            hipStreamSynchronize(d->streams[q]);
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        hip_scratch *s = &d->scratch[q];
        if (s->partials)
            hipFree(s->partials);
        if (s->arrivals)
            hipFree(s->arrivals);
        if (s->tmp)
            hipFree(s->tmp);
        pthread_mutex_destroy(&s->lock);
        /* the engine's compute stream stays the engine's */
        if (d->streams[q] && !(q == FKV_QUEUE_COMPUTE && d->engine_stream))
            hipStreamDestroy(d->streams[q]);
    }
    (void)hipGetLastError(); /* teardown errors are not the next call's */
    free(d);
}

/* Opens device `index`, on the engine's compute stream when given (kept as the engine's). */
static fkv_status open_device(uint32_t index, hipStream_t engine_stream, fkv_bdev **out) {
    *out = NULL;
    recall_choice recall;
    fkv_status st = read_env(&recall);
    if (st != FKV_OK)
        return st;
    hipDeviceProp_t p;
    if ((st = query_device(index, &p)) != FKV_OK)
        return st;

    fkv_bdev *d = calloc(1, sizeof *d);
    if (d == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "hip: device handle");
    d->index = (int)index;
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        pthread_mutex_init(&d->scratch[q].lock, NULL);
    fill_info(&p, index, &d->info);
    d->compute_units = p.multiProcessorCount > 0 ? (uint32_t)p.multiProcessorCount : 1;
    d->fused_reduce = 1; /* __threadfence and atomics: every HIP device */
    d->shared_per_block = p.sharedMemPerBlock;
    d->shared_device = p.sharedMemPerBlock;
    d->can_map_host = p.canMapHostMemory != 0;

    if ((st = fkv_hip_bind(d)) != FKV_OK) {
        hip_device_close(d);
        return st;
    }
    /* A build whose targets miss this GPU fails here, with a hint, rather than at the first
     * kernel launch. */
    hipError_t e = fkv_hip_kernels_probe();
    if (e != hipSuccess) {
        fkv_hip_fail(e, HIP_NOT_ALLOC, "loading the kernels");
        st = fkv_error_prefix(FKV_ERR_UNSUPPORTED,
                              "hip device '%s' (%s): this build has no usable code for it "
                              "(built for %s; rebuild with FREEKV_HIP_TARGETS or "
                              "FREEKV_CUDA_ARCH)",
                              d->info.name, d->info.driver, FKV_HIP_TARGETS_STRING);
        hip_device_close(d);
        return st;
    }

    switch (recall) {
    case RECALL_ZEROCOPY:
        if (!d->can_map_host) {
            st = fkv_error(FKV_ERR_UNSUPPORTED,
                           "FREEKV_HIP_RECALL=zerocopy: device '%s' cannot map host memory "
                           "(use auto, staged or perpage)",
                           d->info.name);
            hip_device_close(d);
            return st;
        }
        d->recall = FKV_RECALL_DIRECT;
        break;
    case RECALL_STAGED:
        d->recall = FKV_RECALL_STAGED;
        break;
    case RECALL_PERPAGE:
        d->recall = FKV_RECALL_PERPAGE;
        break;
    default:
        /* A kernel reading mapped pinned memory reached 47 of 55 GB/s (DESIGN §2). */
        d->recall = d->can_map_host ? FKV_RECALL_DIRECT : FKV_RECALL_STAGED;
        break;
    }

    /* Non-blocking: no implicit ordering with the legacy default stream, which the engine
     * may be using for its own work. */
    d->streams[FKV_QUEUE_COMPUTE] = engine_stream;
    d->engine_stream = engine_stream != NULL;
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        if (d->streams[q])
            continue;
        e = hipStreamCreateWithFlags(&d->streams[q], hipStreamNonBlocking);
        if (e != hipSuccess) {
            d->streams[q] = NULL;
            st = fkv_hip_fail(e, HIP_NOT_ALLOC, "hipStreamCreateWithFlags");
            hip_device_close(d);
            return st;
        }
    }
    *out = d;
    return FKV_OK;
}

static fkv_status hip_device_open(uint32_t index, fkv_bdev **out) {
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "hip device_open: NULL output");
    return open_device(index, NULL, out);
}

/* ---- the engine's objects (fkv_device_open_native) ---- */

static fkv_status hip_device_open_native(const fkv_native_objects *objs, fkv_bdev **out) {
    *out = NULL;
    if (objs->hip.device < 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "hip open_native: device ordinal %d",
                         objs->hip.device);
    return open_device((uint32_t)objs->hip.device, (hipStream_t)objs->hip.stream, out);
}

static fkv_status hip_native_objects(fkv_bdev *d, fkv_native_objects *out) {
    out->api = FKV_NATIVE_HIP;
    out->hip = (fkv_hip_objects){.device = d->index, .stream = d->streams[FKV_QUEUE_COMPUTE]};
    return FKV_OK;
}

static fkv_status hip_opened_info(fkv_bdev *d, fkv_device_info *info) {
    if (d == NULL || info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "hip opened_info: NULL argument");
    *info = d->info;
    return FKV_OK;
}

static fkv_recall_mode hip_recall_mode(fkv_bdev *d) { return d->recall; }

/* ---- options (docs/backend-options.md) ---- */

static const char *const settable[] = {"attention_splits", "shared_memory_bytes",
                                       "attention_fused_reduce", NULL};
static const char *const readable[] = {"attention_splits", "shared_memory_bytes",
                                       "attention_fused_reduce", NULL};

static fkv_status hip_set_option(fkv_bdev *d, const char *key, const char *value) {
    uint64_t v = 0;
    fkv_status st;
    if (strcmp(key, "attention_splits") == 0) {
        st = fkv_option_splits("hip", key, value, &d->forced_splits);
    } else if (strcmp(key, "shared_memory_bytes") == 0) {
        if ((st = fkv_option_limit("hip", key, value, d->shared_device, &v)) == FKV_OK)
            d->shared_per_block = (size_t)v;
    } else if (strcmp(key, "attention_fused_reduce") == 0) {
        if ((st = fkv_option_uint("hip", key, value, 1, &v)) == FKV_OK)
            d->fused_reduce = (int)v;
    } else {
        st = fkv_option_unknown("hip", "settable", key, settable);
    }
    return st;
}

static fkv_status hip_get_option(fkv_bdev *d, const char *key, char *out, size_t size) {
    uint64_t v;
    if (strcmp(key, "attention_splits") == 0)
        v = d->forced_splits;
    else if (strcmp(key, "shared_memory_bytes") == 0)
        v = d->shared_per_block;
    else if (strcmp(key, "attention_fused_reduce") == 0)
        v = (uint64_t)d->fused_reduce;
    else
        return fkv_option_unknown("hip", "readable", key, readable);
    return fkv_option_print_uint("hip", key, v, out, size);
}

/* ---- the table ---- */

static const fkv_bcounters *hip_counters(fkv_bdev *d) { return &d->counters; }

static const fkv_backend_ops hip_ops = {
    .abi_version = FKV_BACKEND_ABI_VERSION,
    .struct_size = sizeof(fkv_backend_ops),
    .name = "hip",
    .device_count = hip_device_count,
    .device_info = hip_device_info,
    .device_open = hip_device_open,
    .device_close = hip_device_close,
    .buffer_alloc = fkv_hip_buffer_alloc,
    .buffer_free = fkv_hip_buffer_free,
    .host_alloc = fkv_hip_host_alloc,
    .host_free = fkv_hip_host_free,
    .event_wait = fkv_hip_event_wait,
    .event_release = fkv_hip_event_release,
    .marker = fkv_hip_marker,
    .finish = fkv_hip_finish,
    .write = fkv_hip_write,
    .read = fkv_hip_read,
    .copy = fkv_hip_copy,
    .append = fkv_hip_append,
    .summarize = fkv_hip_summarize,
    .scores = fkv_hip_scores,
    .cosine_flags = fkv_hip_cosine_flags,
    .pack_hnd = fkv_hip_pack_hnd,
    .scatter_hnd = fkv_hip_scatter_hnd,
    .attention = fkv_hip_attention,
    .buffer_import = fkv_hip_buffer_import,
    .write_regions = NULL, /* the generic fallback: one hipMemcpyAsync per region */
    .attention_dense = fkv_hip_attention_dense,
    .recall_direct = fkv_hip_recall_direct,
    .direct_host_words = fkv_hip_direct_host_words,
    .recall_mode = hip_recall_mode,
    .opened_info = hip_opened_info,
    .check_geometry = fkv_hip_check_geometry,
    .host_formats = fkv_hip_host_formats,
    .set_option = hip_set_option,
    .get_option = hip_get_option,
    .counters = hip_counters,
    .select_pages = fkv_hip_select_pages,
    .native_api = FKV_NATIVE_HIP,
    .device_open_native = hip_device_open_native,
    .native_objects = hip_native_objects,
    .event_import = fkv_hip_event_import,
    .event_unimport = fkv_hip_event_unimport,
    .event_signal = fkv_hip_event_signal,
    .event_query = fkv_hip_event_query,
    .scores_check = fkv_hip_scores_check,
};

const fkv_backend_ops *fkv_backend_hip(void) { return &hip_ops; }
