/* The HIP backend's submission: stream waits on events, completion events, markers, finish,
 * and the copies. Layer 3 of the backend: errors -> memory -> submission -> kernels ->
 * device. */
#include <stdlib.h>

#include "../common/error.h"
#include "hip_internal.h"

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

void fkv_hip_count(fkv_bdev *d, fkv_queue q, int launch, fkv_copy_dir dir, size_t bytes) {
    fkv_count_submit(&d->counters, q);
    if (launch)
        fkv_count_launch(&d->counters, q);
    else
        fkv_count_copy(&d->counters, q, dir, bytes);
}

fkv_status fkv_hip_event_wait(fkv_bdev *d, uint32_t n, fkv_bevent *const *events) {
    fkv_status st = fkv_hip_bind(d);
    for (uint32_t i = 0; i < n && st == FKV_OK; i++) {
        fkv_count_wait(&d->counters); /* one hipEventSynchronize per event */
        hipError_t e = hipEventSynchronize(as_event(events[i]));
        if (e != hipSuccess)
            st = fkv_hip_fail(e, HIP_NOT_ALLOC, "hipEventSynchronize");
    }
    return st;
}

void fkv_hip_event_release(fkv_bdev *d, fkv_bevent *ev) {
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

fkv_status fkv_hip_event_import(fkv_bdev *d, const fkv_native_event *ev, fkv_bevent **out) {
    (void)d;
    *out = (fkv_bevent *)ev->handle;
    return FKV_OK;
}

void fkv_hip_event_unimport(fkv_bdev *d, fkv_bevent *ev) {
    (void)d;
    (void)ev; /* the engine's event: never destroyed here */
}

fkv_status fkv_hip_event_signal(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_native_event *sig) {
    fkv_hip_clear_done(&deps);
    if (sig->handle == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "hip event_signal: NULL hipEvent_t");
    fkv_status st = fkv_hip_bind(d);
    if (st == FKV_OK)
        st = fkv_hip_wait(d->streams[q], &deps);
    if (st != FKV_OK)
        return st;
    hipError_t e = hipEventRecord((hipEvent_t)sig->handle, d->streams[q]);
    if (e != hipSuccess)
        return fkv_hip_fail(e, HIP_NOT_ALLOC, "hipEventRecord (the engine's event)");
    return fkv_hip_done(d->streams[q], &deps);
}

fkv_status fkv_hip_finish(fkv_bdev *d, fkv_queue q) {
    fkv_status st = fkv_hip_bind(d);
    if (st != FKV_OK)
        return st;
    fkv_count_wait(&d->counters);
    hipError_t e = hipStreamSynchronize(d->streams[q]);
    return e == hipSuccess ? FKV_OK : fkv_hip_fail(e, HIP_NOT_ALLOC, "hipStreamSynchronize");
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
    fkv_hip_count(d, q, 0,
                  kind == hipMemcpyHostToDevice   ? FKV_COPY_H2D
                  : kind == hipMemcpyDeviceToHost ? FKV_COPY_D2H
                                                  : FKV_COPY_D2D,
                  size);
    return fkv_hip_done(d->streams[q], deps);
}

fkv_status fkv_hip_write(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                            size_t dst_offset, const void *src, size_t size) {
    fkv_hip_clear_done(&deps);
    return enqueue_copy(d, q, &deps, (char *)dst->ptr + dst_offset, src, size,
                        hipMemcpyHostToDevice, "hipMemcpyAsync (host to device)");
}

fkv_status fkv_hip_read(fkv_bdev *d, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                           size_t src_offset, void *dst, size_t size) {
    fkv_hip_clear_done(&deps);
    return enqueue_copy(d, q, &deps, dst, (const char *)src->ptr + src_offset, size,
                        hipMemcpyDeviceToHost, "hipMemcpyAsync (device to host)");
}

fkv_status fkv_hip_copy(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
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
