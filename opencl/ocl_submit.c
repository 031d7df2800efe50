/* The OpenCL backend's submission: wait lists and completion events, markers, finish, and the
 * host<->device and device copies. Layer 3 of the backend: errors -> memory -> submission ->
 * kernels -> device. */
#include <stdlib.h>

#include "../common/error.h"
#include "ocl_internal.h"

fkv_status fkv_ocl_waits(const fkv_deps *deps, ocl_waits *w) {
    w->list = w->buf;
    w->n = 0;
    if (deps->n_wait == 0)
        return FKV_OK;
    if (deps->n_wait > sizeof w->buf / sizeof *w->buf) {
        w->list = malloc(deps->n_wait * sizeof *w->list);
        if (w->list == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opencl: wait list");
    }
    for (uint32_t i = 0; i < deps->n_wait; i++)
        if (deps->wait[i])
            w->list[w->n++] = (cl_event)(void *)deps->wait[i];
    return FKV_OK;
}

void fkv_ocl_waits_free(ocl_waits *w) {
    if (w->list != w->buf)
        free(w->list);
}

void fkv_ocl_done(const fkv_deps *deps, cl_event ev) {
    if (deps->done)
        *deps->done = (fkv_bevent *)(void *)ev;
    else if (ev)
        clReleaseEvent(ev);
}

void fkv_ocl_count(fkv_bdev *d, cl_command_queue queue, int launch, fkv_copy_dir dir,
                   size_t bytes) {
    fkv_queue q = FKV_QUEUE_COMPUTE;
    for (int i = 0; i < FKV_QUEUE_COUNT; i++)
        if (d->queues[i] == queue)
            q = (fkv_queue)i;
    fkv_count_submit(&d->counters, q);
    if (launch)
        fkv_count_launch(&d->counters, q);
    else
        fkv_count_copy(&d->counters, q, dir, bytes);
}

fkv_status fkv_ocl_event_wait(fkv_bdev *d, uint32_t n, fkv_bevent *const *events) {
    fkv_deps deps = {n, events, NULL};
    ocl_waits w;
    fkv_status st = fkv_ocl_waits(&deps, &w);
    if (st != FKV_OK)
        return st;
    if (w.n)
        fkv_count_wait(&d->counters);
    cl_int err = w.n ? clWaitForEvents(w.n, w.list) : CL_SUCCESS;
    fkv_ocl_waits_free(&w);
    return err == CL_SUCCESS ? FKV_OK : fkv_ocl_fail(err, 0, "clWaitForEvents");
}

void fkv_ocl_event_release(fkv_bdev *d, fkv_bevent *ev) {
    (void)d;
    clReleaseEvent((cl_event)(void *)ev);
}

fkv_status fkv_ocl_marker(fkv_bdev *d, fkv_queue q, fkv_deps deps) {
    fkv_ocl_clear_done(&deps);
    fkv_status st;
    ocl_waits w;
    if ((st = fkv_ocl_waits(&deps, &w)) != FKV_OK)
        return st;
    cl_event ev = NULL;
    /* A barrier, not a marker: later commands of q must also wait for deps.wait. On an
     * in-order queue it also follows every earlier command. */
    cl_int err = clEnqueueBarrierWithWaitList(d->queues[q], w.n, w.n ? w.list : NULL,
                                              deps.done ? &ev : NULL);
    fkv_ocl_waits_free(&w);
    if (err != CL_SUCCESS)
        return fkv_ocl_fail(err, 0, "clEnqueueBarrierWithWaitList");
    fkv_count_submit(&d->counters, q); /* an enqueued command, neither launch nor copy */
    fkv_ocl_done(&deps, ev);
    return FKV_OK;
}

fkv_status fkv_ocl_event_import(fkv_bdev *d, const fkv_native_event *ev, fkv_bevent **out) {
    cl_event e = (cl_event)ev->handle;
    cl_context ctx = NULL;
    cl_int err = clGetEventInfo(e, CL_EVENT_CONTEXT, sizeof ctx, &ctx, NULL);
    if (err != CL_SUCCESS)
        return fkv_error_prefix(fkv_ocl_fail(err, 0, "clGetEventInfo"),
                                "opencl event_import: not a valid cl_event");
    if (ctx != d->context)
        return fkv_error(FKV_ERR_WRONG_DEVICE,
                         "opencl event_import: the cl_event belongs to another context (an "
                         "OpenCL wait list takes events of the queue's context only)");
    clRetainEvent(e); /* the engine keeps its own reference */
    *out = (fkv_bevent *)(void *)e;
    return FKV_OK;
}

fkv_status fkv_ocl_event_signal(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_native_event *sig) {
    fkv_ocl_clear_done(&deps);
    fkv_bevent *ev = NULL;
    fkv_deps marker = {.n_wait = deps.n_wait, .wait = deps.wait, .done = &ev};
    fkv_status st = fkv_ocl_marker(d, q, marker);
    if (st != FKV_OK)
        return st;
    if (deps.done) { /* the caller's reference, and the engine's */
        clRetainEvent((cl_event)(void *)ev);
        *deps.done = ev;
    }
    sig->handle = ev;
    return FKV_OK;
}

fkv_status fkv_ocl_finish(fkv_bdev *d, fkv_queue q) {
    fkv_count_wait(&d->counters);
    cl_int err = clFinish(d->queues[q]);
    return err == CL_SUCCESS ? FKV_OK : fkv_ocl_fail(err, 0, "clFinish");
}

/* ---- copies ---- */

fkv_status fkv_ocl_write(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                            size_t dst_offset, const void *src, size_t size) {
    fkv_ocl_clear_done(&deps);
    fkv_status st;
    ocl_waits w;
    if ((st = fkv_ocl_waits(&deps, &w)) != FKV_OK)
        return st;
    cl_event ev = NULL;
    cl_int err = clEnqueueWriteBuffer(d->queues[q], dst->mem, CL_FALSE, dst_offset, size, src, w.n,
                                      w.n ? w.list : NULL, deps.done ? &ev : NULL);
    fkv_ocl_waits_free(&w);
    if (err != CL_SUCCESS)
        return fkv_ocl_fail(err, 1, "clEnqueueWriteBuffer");
    fkv_ocl_count(d, d->queues[q], 0, FKV_COPY_H2D, size);
    fkv_ocl_done(&deps, ev);
    return FKV_OK;
}

fkv_status fkv_ocl_read(fkv_bdev *d, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                           size_t src_offset, void *dst, size_t size) {
    fkv_ocl_clear_done(&deps);
    fkv_status st;
    ocl_waits w;
    if ((st = fkv_ocl_waits(&deps, &w)) != FKV_OK)
        return st;
    cl_event ev = NULL;
    cl_int err = clEnqueueReadBuffer(d->queues[q], src->mem, CL_FALSE, src_offset, size, dst, w.n,
                                     w.n ? w.list : NULL, deps.done ? &ev : NULL);
    fkv_ocl_waits_free(&w);
    if (err != CL_SUCCESS)
        return fkv_ocl_fail(err, 1, "clEnqueueReadBuffer");
    fkv_ocl_count(d, d->queues[q], 0, FKV_COPY_D2H, size);
    fkv_ocl_done(&deps, ev);
    return FKV_OK;
}

fkv_status fkv_ocl_copy(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                           size_t dst_offset, const fkv_bbuf *src, size_t src_offset, size_t size) {
    fkv_ocl_clear_done(&deps);
    fkv_status st;
    ocl_waits w;
    if ((st = fkv_ocl_waits(&deps, &w)) != FKV_OK)
        return st;
    cl_event ev = NULL;
    cl_int err;
    if (src->mem == dst->mem && src_offset < dst_offset + size && dst_offset < src_offset + size) {
        /* OpenCL refuses overlapping copies; go through a temporary (memmove semantics, as
         * the reference backend). OpenCL frees it once both copies are done. */
        cl_mem tmp = clCreateBuffer(d->context, CL_MEM_READ_WRITE, size, NULL, &err);
        if (err == CL_SUCCESS) {
            fkv_count_device_alloc(&d->counters);
            err = clEnqueueCopyBuffer(d->queues[q], src->mem, tmp, src_offset, 0, size, w.n,
                                      w.n ? w.list : NULL, NULL);
            if (err == CL_SUCCESS) {
                fkv_ocl_count(d, d->queues[q], 0, FKV_COPY_D2D, size);
                err = clEnqueueCopyBuffer(d->queues[q], tmp, dst->mem, 0, dst_offset, size, 0,
                                          NULL, deps.done ? &ev : NULL);
            }
            clReleaseMemObject(tmp);
        }
    } else {
        err = clEnqueueCopyBuffer(d->queues[q], src->mem, dst->mem, src_offset, dst_offset, size,
                                  w.n, w.n ? w.list : NULL, deps.done ? &ev : NULL);
    }
    fkv_ocl_waits_free(&w);
    if (err != CL_SUCCESS)
        return fkv_ocl_fail(err, 1, "clEnqueueCopyBuffer");
    fkv_ocl_count(d, d->queues[q], 0, FKV_COPY_D2D, size);
    fkv_ocl_done(&deps, ev);
    return FKV_OK;
}

