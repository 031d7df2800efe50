/* The OpenCL backend's memory: device buffers (committed at allocation, so a device out of
 * memory shows as a status then), imported cl_mem objects, and pinned or fine-grained SVM host
 * memory. Layer 2 of the backend: errors -> memory -> submission -> kernels -> device. */
#include <stdlib.h>

#include "../common/error.h"
#include "ocl_internal.h"

fkv_status fkv_ocl_buffer_alloc(fkv_bdev *d, size_t size, fkv_bbuf **out) {
    if (size > d->max_alloc)
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY,
                         "opencl: %zu bytes exceed the device's largest allocation (%llu)", size,
                         (unsigned long long)d->max_alloc);
    fkv_bbuf *b = calloc(1, sizeof *b);
    if (b == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opencl: buffer handle");
    cl_int err;
    b->mem = clCreateBuffer(d->context, CL_MEM_READ_WRITE, size, NULL, &err);
    if (err != CL_SUCCESS) {
        free(b);
        return fkv_ocl_fail(err, 1, "clCreateBuffer");
    }
    /* Drivers allocate lazily at first use; committing the memory here (on the aux queue)
     * makes a device out of memory show up now, as a status, rather than at some later
     * enqueue. */
    cl_event ev = NULL;
    err = clEnqueueMigrateMemObjects(d->aux, 1, &b->mem, CL_MIGRATE_MEM_OBJECT_CONTENT_UNDEFINED,
                                     0, NULL, &ev);
    if (err == CL_SUCCESS) {
        err = clWaitForEvents(1, &ev);
        cl_int status = CL_COMPLETE;
        if (err == CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST &&
            clGetEventInfo(ev, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof status, &status,
                           NULL) == CL_SUCCESS &&
            status < 0)
            err = status;
        clReleaseEvent(ev);
    }
    if (err != CL_SUCCESS) {
        clReleaseMemObject(b->mem);
        free(b);
        return fkv_ocl_fail(err, 1, "committing a device buffer");
    }
    b->desc = (fkv_mem_desc){.size = size, .base = 0};
    fkv_count_device_alloc(&d->counters);
    *out = b;
    return FKV_OK;
}

void fkv_ocl_buffer_free(fkv_bdev *d, fkv_bbuf *b) {
    (void)d;
    clReleaseMemObject(b->mem);
    free(b);
}

fkv_status fkv_ocl_buffer_import(fkv_bdev *d, void *native, size_t size, fkv_bbuf **out) {
    cl_mem mem = (cl_mem)native;
    cl_context ctx = NULL;
    size_t mem_size = 0;
    cl_int err = clGetMemObjectInfo(mem, CL_MEM_CONTEXT, sizeof ctx, &ctx, NULL);
    if (err == CL_SUCCESS)
        err = clGetMemObjectInfo(mem, CL_MEM_SIZE, sizeof mem_size, &mem_size, NULL);
    if (err != CL_SUCCESS)
        return fkv_ocl_fail(err, 0, "clGetMemObjectInfo (import)");
    if (ctx != d->context)
        return fkv_error(FKV_ERR_WRONG_DEVICE,
                         "opencl buffer_import: the cl_mem belongs to another context");
    if (size > mem_size)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "opencl buffer_import: %zu bytes requested of a %zu-byte cl_mem", size,
                         mem_size);
    fkv_bbuf *b = calloc(1, sizeof *b);
    if (b == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opencl: buffer handle");
    clRetainMemObject(mem); /* the engine keeps its own reference */
    b->mem = mem;
    b->desc = (fkv_mem_desc){.size = size, .base = 0};
    *out = b;
    return FKV_OK;
}

fkv_status fkv_ocl_host_alloc(fkv_bdev *d, size_t size, fkv_bhost **out, void **ptr) {
    fkv_bhost *h = calloc(1, sizeof *h);
    if (h == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opencl: host allocation handle");
    if (d->svm_host) {
        /* Fine-grained: the host writes it and kernels read it with no map/unmap. */
        h->svm = 1;
        h->ptr = clSVMAlloc(d->context, CL_MEM_READ_WRITE | CL_MEM_SVM_FINE_GRAIN_BUFFER, size, 0);
        if (h->ptr == NULL) {
            free(h);
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY,
                             "opencl: clSVMAlloc of %zu bytes (fine-grained) failed", size);
        }
    } else {
        /* Pinned by the driver and mapped for its whole life: copies from it run at link
         * speed (6x pageable memory, DESIGN §2). Never passed to a kernel. */
        cl_int err;
        h->mem = clCreateBuffer(d->context, CL_MEM_READ_WRITE | CL_MEM_ALLOC_HOST_PTR, size, NULL,
                                &err);
        if (err == CL_SUCCESS)
            h->ptr = clEnqueueMapBuffer(d->aux, h->mem, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, 0,
                                        size, 0, NULL, NULL, &err);
        if (err != CL_SUCCESS) {
            if (h->mem)
                clReleaseMemObject(h->mem);
            free(h);
            fkv_ocl_fail(err, 0, "allocating pinned host memory");
            /* Host-pointer buffers live in host memory whatever code the driver picks. */
            return fkv_error_prefix(err == CL_OUT_OF_HOST_MEMORY ||
                                            err == CL_MEM_OBJECT_ALLOCATION_FAILURE ||
                                            err == CL_OUT_OF_RESOURCES
                                        ? FKV_ERR_OUT_OF_HOST_MEMORY
                                        : FKV_ERR_BACKEND,
                                    "opencl host_alloc of %zu bytes", size);
        }
    }
    h->desc = (fkv_mem_desc){.size = size, .base = (uintptr_t)h->ptr};
    fkv_count_host_alloc(&d->counters);
    *out = h;
    *ptr = h->ptr;
    return FKV_OK;
}

void fkv_ocl_host_free(fkv_bdev *d, fkv_bhost *h) {
    if (h->svm) {
        clSVMFree(d->context, h->ptr);
    } else {
        cl_event ev = NULL;
        if (clEnqueueUnmapMemObject(d->aux, h->mem, h->ptr, 0, NULL, &ev) == CL_SUCCESS) {
            clWaitForEvents(1, &ev);
            clReleaseEvent(ev);
        }
        clReleaseMemObject(h->mem);
    }
    free(h);
}
