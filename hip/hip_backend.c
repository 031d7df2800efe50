/* The HIP backend: devices, memory, streams, events and copies, and the ops table. Kernel ops
 * live in hip_ops.c, the kernels in kernels.hip.
 *
 * Model mapping (backends/backend.h): fkv_queue -> a non-blocking hipStream_t each;
 * fkv_bevent -> a hipEvent_t (timing disabled) recorded after the command; wait lists ->
 * hipStreamWaitEvent (the device waits, not the host); fkv_bbuf -> a device pointer;
 * fkv_bhost -> hipHostMalloc(mapped) memory whose device view the zero-copy recall reads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backends/launch.h"
#include "../backends/option.h"
#include "../common/env.h"
#include "../common/error.h"
#include "hip_internal.h"
#include "hip_kernels.h"

#ifndef FKV_HIP_TARGETS_STRING
#define FKV_HIP_TARGETS_STRING "?"
#endif

/* ---- errors ---- */

fkv_status fkv_hip_fail(hipError_t err, hip_alloc_kind kind, const char *what) {
    fkv_status st;
    switch (err) {
    case hipErrorOutOfMemory:
        st = kind == HIP_HOST_ALLOC ? FKV_ERR_OUT_OF_HOST_MEMORY : FKV_ERR_OUT_OF_DEVICE_MEMORY;
        break;
    case hipErrorNoDevice:
    case hipErrorInvalidDevice:
    case hipErrorInsufficientDriver:
        st = FKV_ERR_NO_DEVICE;
        break;
    case hipErrorNoBinaryForGpu:
    case hipErrorInvalidDeviceFunction:
        st = FKV_ERR_UNSUPPORTED; /* the build has no code for this GPU */
        break;
    default:
        st = FKV_ERR_BACKEND;
        break;
    }
    /* A failed call also sets the thread's last error; clear it so that the next launch
     * check reports only its own. */
    (void)hipGetLastError();
    return fkv_error(st, FKV_HIP_RUNTIME " %s failed: %s (%s, %d)", what, hipGetErrorString(err),
                     hipGetErrorName(err), (int)err);
}

fkv_status fkv_hip_bind(fkv_bdev *d) {
    hipError_t e = hipSetDevice(d->index);
    return e == hipSuccess ? FKV_OK : fkv_hip_fail(e, HIP_NOT_ALLOC, "hipSetDevice");
}

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

static void free_offsets_block(hip_offsets_block *b) {
    if (b->last_use) {
        hipEventSynchronize(b->last_use);
        hipEventDestroy(b->last_use);
    }
    if (b->host)
        hipHostFree(b->host);
    memset(b, 0, sizeof *b);
}

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
        if (s->tmp)
            hipFree(s->tmp);
        for (int i = 0; i < FKV_HIP_OFFSET_RING; i++)
            free_offsets_block(&s->offsets[i]);
        pthread_mutex_destroy(&s->lock);
        if (d->streams[q])
            hipStreamDestroy(d->streams[q]);
    }
    (void)hipGetLastError(); /* teardown errors are not the next call's */
    free(d);
}

static fkv_status hip_device_open(uint32_t index, fkv_bdev **out) {
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "hip device_open: NULL output");
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
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
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

static fkv_status hip_opened_info(fkv_bdev *d, fkv_device_info *info) {
    if (d == NULL || info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "hip opened_info: NULL argument");
    *info = d->info;
    return FKV_OK;
}

static fkv_recall_mode hip_recall_mode(fkv_bdev *d) { return d->recall; }

/* ---- events ---- */

static hipEvent_t as_event(const fkv_bevent *ev) { return (hipEvent_t)(uintptr_t)ev; }

fkv_status fkv_hip_wait(hipStream_t stream, const fkv_deps *deps) {
    for (uint32_t i = 0; i < deps->n_wait; i++) {
        if (deps->wait[i] == NULL)
            continue;
        hipError_t e = hipStreamWaitEvent(stream, as_event(deps->wait[i]), 0);
        if (e != hipSuccess)
            return fkv_hip_fail(e, HIP_NOT_ALLOC, "hipStreamWaitEvent");
    }
    return FKV_OK;
}

fkv_status fkv_hip_done(hipStream_t stream, const fkv_deps *deps) {
    if (deps->done == NULL)
        return FKV_OK;
    hipEvent_t ev = NULL;
    hipError_t e = hipEventCreateWithFlags(&ev, hipEventDisableTiming);
    if (e != hipSuccess)
        return fkv_hip_fail(e, HIP_NOT_ALLOC, "hipEventCreateWithFlags");
    e = hipEventRecord(ev, stream);
    if (e != hipSuccess) {
        hipEventDestroy(ev);
        return fkv_hip_fail(e, HIP_NOT_ALLOC, "hipEventRecord");
    }
    *deps->done = (fkv_bevent *)(uintptr_t)ev;
    return FKV_OK;
}

static fkv_status hip_event_wait(fkv_bdev *d, uint32_t n, fkv_bevent *const *events) {
    fkv_status st = fkv_hip_bind(d);
    for (uint32_t i = 0; i < n && st == FKV_OK; i++) {
        hipError_t e = hipEventSynchronize(as_event(events[i]));
        if (e != hipSuccess)
            st = fkv_hip_fail(e, HIP_NOT_ALLOC, "hipEventSynchronize");
    }
    return st;
}

static void hip_event_release(fkv_bdev *d, fkv_bevent *ev) {
    (void)d;
    /* Destroying a pending event is allowed: the runtime releases it once it completes. */
    hipEventDestroy(as_event(ev));
}

fkv_status fkv_hip_marker(fkv_bdev *d, fkv_queue q, fkv_deps deps) {
    fkv_hip_clear_done(&deps);
    fkv_status st = fkv_hip_bind(d);
    /* Stream waits order every later command of q after deps.wait too; the recorded event
     * follows every earlier command of the (in-order) stream. */
    if (st == FKV_OK)
        st = fkv_hip_wait(d->streams[q], &deps);
    if (st == FKV_OK)
        st = fkv_hip_done(d->streams[q], &deps);
    return st;
}

static fkv_status hip_finish(fkv_bdev *d, fkv_queue q) {
    fkv_status st = fkv_hip_bind(d);
    if (st != FKV_OK)
        return st;
    hipError_t e = hipStreamSynchronize(d->streams[q]);
    return e == hipSuccess ? FKV_OK : fkv_hip_fail(e, HIP_NOT_ALLOC, "hipStreamSynchronize");
}

/* ---- memory ---- */

static fkv_status hip_buffer_alloc(fkv_bdev *d, size_t size, fkv_bbuf **out) {
    fkv_status st = fkv_hip_bind(d);
    if (st != FKV_OK)
        return st;
    fkv_bbuf *b = calloc(1, sizeof *b);
    if (b == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "hip: buffer handle");
    /* hipMalloc commits the memory: a device out of memory shows up here, as a status. */
    hipError_t e = hipMalloc(&b->ptr, size);
    if (e != hipSuccess) {
        free(b);
        st = fkv_hip_fail(e, HIP_DEVICE_ALLOC, "hipMalloc");
        return fkv_error_prefix(st, "hip buffer_alloc of %zu bytes", size);
    }
    b->desc = (fkv_mem_desc){.size = size, .base = (uintptr_t)b->ptr};
    *out = b;
    return FKV_OK;
}

static void hip_buffer_free(fkv_bdev *d, fkv_bbuf *b) {
    if (!b->imported) {
        hipSetDevice(d->index);
        hipFree(b->ptr);
    }
    free(b);
}

static fkv_status hip_buffer_import(fkv_bdev *d, void *native, size_t size, fkv_bbuf **out) {
    fkv_status st = fkv_hip_bind(d);
    if (st != FKV_OK)
        return st;
    hipPointerAttribute_t attr;
    memset(&attr, 0, sizeof attr);
    hipError_t e = hipPointerGetAttributes(&attr, native);
    if (e != hipSuccess) {
        (void)hipGetLastError(); /* HIP reports plain host memory as an error */
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "hip buffer_import: %p is not memory the runtime knows: %s (%d)", native,
                         hipGetErrorString(e), (int)e);
    }
    int memtype = (int)FKV_HIP_PTR_MEMTYPE(attr);
    if (memtype != (int)hipMemoryTypeDevice)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "hip buffer_import: %p is not device memory (memory type %d)", native,
                         memtype);
    if (attr.device != d->index)
        return fkv_error(FKV_ERR_WRONG_DEVICE,
                         "hip buffer_import: %p belongs to device %d, not %d", native, attr.device,
                         d->index);
    /* The runtime API cannot tell the allocation's size: the engine vouches for `size`. */
    fkv_bbuf *b = calloc(1, sizeof *b);
    if (b == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "hip: buffer handle");
    b->ptr = native;
    b->desc = (fkv_mem_desc){.size = size, .base = (uintptr_t)native};
    b->imported = 1;
    *out = b;
    return FKV_OK;
}

fkv_status fkv_hip_host_malloc(fkv_bdev *d, size_t size, void **ptr, void **dev_ptr) {
    *ptr = NULL;
    *dev_ptr = NULL;
    /* Mapped: the zero-copy recall reads it; coherent: uncached by the GPU, so a kernel
     * never sees stale lines of memory the host or a copy rewrote (each byte is read once
     * anyway); portable: pinned for every device. */
    unsigned flags = hipHostMallocPortable;
    if (d->can_map_host)
        flags |= hipHostMallocMapped | hipHostMallocCoherent;
    hipError_t e = hipHostMalloc(ptr, size, flags);
    if (e != hipSuccess) {
        *ptr = NULL;
        return fkv_hip_fail(e, HIP_HOST_ALLOC, "hipHostMalloc");
    }
    if (d->can_map_host) {
        e = hipHostGetDevicePointer(dev_ptr, *ptr, 0);
        if (e != hipSuccess) {
            hipHostFree(*ptr);
            *ptr = NULL;
            *dev_ptr = NULL;
            return fkv_hip_fail(e, HIP_NOT_ALLOC, "hipHostGetDevicePointer");
        }
    }
    return FKV_OK;
}

static fkv_status hip_host_alloc(fkv_bdev *d, size_t size, fkv_bhost **out, void **ptr) {
    fkv_status st = fkv_hip_bind(d);
    if (st != FKV_OK)
        return st;
    fkv_bhost *h = calloc(1, sizeof *h);
    if (h == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "hip: host allocation handle");
    if ((st = fkv_hip_host_malloc(d, size, &h->ptr, &h->dev_ptr)) != FKV_OK) {
        free(h);
        return fkv_error_prefix(st, "hip host_alloc of %zu bytes", size);
    }
    h->desc = (fkv_mem_desc){.size = size, .base = (uintptr_t)h->ptr};
    *out = h;
    *ptr = h->ptr;
    return FKV_OK;
}

static void hip_host_free(fkv_bdev *d, fkv_bhost *h) {
    hipSetDevice(d->index);
    hipHostFree(h->ptr);
    free(h);
}

/* ---- scratch ---- */

fkv_status fkv_hip_scratch(fkv_bdev *d, fkv_queue q, void **mem, size_t *size, size_t need) {
    if (*mem && *size >= need)
        return FKV_OK;
    size_t want = need + need / 2;
    void *m = NULL;
    hipError_t e = hipMalloc(&m, want);
    if (e != hipSuccess) {
        (void)hipGetLastError();
        want = need;
        e = hipMalloc(&m, want);
    }
    if (e != hipSuccess)
        return fkv_hip_fail(e, HIP_DEVICE_ALLOC, "hipMalloc (scratch)");
    if (*mem) {
        /* Commands already enqueued on q may still use the old buffer. */
        hipStreamSynchronize(d->streams[q]);
        hipFree(*mem);
    }
    *mem = m;
    *size = want;
    return FKV_OK;
}

/* ---- copies ---- */

static fkv_status enqueue_copy(fkv_bdev *d, fkv_queue q, const fkv_deps *deps, void *dst,
                               const void *src, size_t size, int kind, const char *what) {
    fkv_status st = fkv_hip_bind(d);
    if (st == FKV_OK)
        st = fkv_hip_wait(d->streams[q], deps);
    if (st != FKV_OK)
        return st;
    hipError_t e = hipMemcpyAsync(dst, src, size, kind, d->streams[q]);
    if (e != hipSuccess)
        return fkv_hip_fail(e, HIP_NOT_ALLOC, what);
    return fkv_hip_done(d->streams[q], deps);
}

static fkv_status hip_write(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                            size_t dst_offset, const void *src, size_t size) {
    fkv_hip_clear_done(&deps);
    return enqueue_copy(d, q, &deps, (char *)dst->ptr + dst_offset, src, size,
                        hipMemcpyHostToDevice, "hipMemcpyAsync (host to device)");
}

static fkv_status hip_read(fkv_bdev *d, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                           size_t src_offset, void *dst, size_t size) {
    fkv_hip_clear_done(&deps);
    return enqueue_copy(d, q, &deps, dst, (const char *)src->ptr + src_offset, size,
                        hipMemcpyDeviceToHost, "hipMemcpyAsync (device to host)");
}

static fkv_status hip_copy(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                           size_t dst_offset, const fkv_bbuf *src, size_t src_offset, size_t size) {
    fkv_hip_clear_done(&deps);
    fkv_status st;
    char *to = (char *)dst->ptr + dst_offset;
    const char *from = (const char *)src->ptr + src_offset;
    if (!(from < to + size && to < from + size))
        return enqueue_copy(d, q, &deps, to, from, size, hipMemcpyDeviceToDevice,
                            "hipMemcpyAsync (device to device)");
    /* Overlapping ranges (memmove semantics, as the reference backend): through the queue's
     * scratch, both copies in stream order. */
    hip_scratch *s = &d->scratch[q];
    pthread_mutex_lock(&s->lock);
    st = fkv_hip_bind(d);
    if (st == FKV_OK)
        st = fkv_hip_scratch(d, q, &s->tmp, &s->tmp_size, size);
    if (st == FKV_OK) {
        fkv_deps first = {deps.n_wait, deps.wait, NULL};
        st = enqueue_copy(d, q, &first, s->tmp, from, size, hipMemcpyDeviceToDevice,
                          "hipMemcpyAsync (device to device)");
    }
    if (st == FKV_OK) {
        fkv_deps second = {0, NULL, deps.done};
        st = enqueue_copy(d, q, &second, to, s->tmp, size, hipMemcpyDeviceToDevice,
                          "hipMemcpyAsync (device to device)");
    }
    pthread_mutex_unlock(&s->lock);
    return st;
}

/* ---- options (docs/backend-options.md) ---- */

static const char *const settable[] = {"attention_splits", "shared_memory_bytes", NULL};
static const char *const readable[] = {"attention_splits", "shared_memory_bytes", NULL};

static fkv_status hip_set_option(fkv_bdev *d, const char *key, const char *value) {
    uint64_t v = 0;
    fkv_status st;
    if (strcmp(key, "attention_splits") == 0) {
        if ((st = fkv_option_uint("hip", key, value, FKV_MAX_SPLITS, &v)) == FKV_OK)
            d->forced_splits = (uint32_t)v;
    } else if (strcmp(key, "shared_memory_bytes") == 0) {
        /* never more than the device has; 0: the device's own */
        if ((st = fkv_option_uint("hip", key, value, UINT64_MAX, &v)) == FKV_OK)
            d->shared_per_block = v && v < d->shared_device ? (size_t)v : d->shared_device;
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
    else
        return fkv_option_unknown("hip", "readable", key, readable);
    return fkv_option_print_uint("hip", key, v, out, size);
}

/* ---- the table ---- */

static const fkv_backend_ops hip_ops = {
    .abi_version = FKV_BACKEND_ABI_VERSION,
    .struct_size = sizeof(fkv_backend_ops),
    .name = "hip",
    .device_count = hip_device_count,
    .device_info = hip_device_info,
    .device_open = hip_device_open,
    .device_close = hip_device_close,
    .buffer_alloc = hip_buffer_alloc,
    .buffer_free = hip_buffer_free,
    .host_alloc = hip_host_alloc,
    .host_free = hip_host_free,
    .event_wait = hip_event_wait,
    .event_release = hip_event_release,
    .marker = fkv_hip_marker,
    .finish = hip_finish,
    .write = hip_write,
    .read = hip_read,
    .copy = hip_copy,
    .append = fkv_hip_append,
    .summarize = fkv_hip_summarize,
    .scores = fkv_hip_scores,
    .cosine_flags = fkv_hip_cosine_flags,
    .pack_hnd = fkv_hip_pack_hnd,
    .scatter_hnd = fkv_hip_scatter_hnd,
    .attention = fkv_hip_attention,
    .buffer_import = hip_buffer_import,
    .write_regions = NULL, /* the generic fallback: one hipMemcpyAsync per region */
    .attention_dense = fkv_hip_attention_dense,
    .recall_direct = fkv_hip_recall_direct,
    .recall_mode = hip_recall_mode,
    .opened_info = hip_opened_info,
    .check_geometry = fkv_hip_check_geometry,
    .set_option = hip_set_option,
    .get_option = hip_get_option,
};

const fkv_backend_ops *fkv_backend_hip(void) { return &hip_ops; }
