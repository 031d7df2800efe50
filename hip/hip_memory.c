/* The HIP backend's memory: device buffers (hipMalloc commits them), imported device pointers,
 * pinned (mapped when the device can map) host memory, and the per-queue device scratch.
 * Layer 2 of the backend: errors -> memory -> submission -> kernels -> device. */
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "hip_internal.h"

fkv_status fkv_hip_buffer_alloc(fkv_bdev *d, size_t size, fkv_bbuf **out) {
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
    fkv_count_device_alloc(&d->counters);
    *out = b;
    return FKV_OK;
}

void fkv_hip_buffer_free(fkv_bdev *d, fkv_bbuf *b) {
    if (!b->imported) {
        hipSetDevice(d->index);
        hipFree(b->ptr);
    }
    free(b);
}

fkv_status fkv_hip_buffer_import(fkv_bdev *d, void *native, size_t size, fkv_bbuf **out) {
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
    fkv_count_host_alloc(&d->counters);
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

fkv_status fkv_hip_host_alloc(fkv_bdev *d, size_t size, fkv_bhost **out, void **ptr) {
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

void fkv_hip_host_free(fkv_bdev *d, fkv_bhost *h) {
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
    fkv_count_device_alloc(&d->counters);
    if (*mem) {
        /* Commands already enqueued on q may still use the old buffer. */
        fkv_count_wait(&d->counters);
        hipStreamSynchronize(d->streams[q]);
        hipFree(*mem);
    }
    *mem = m;
    *size = want;
    return FKV_OK;
}
