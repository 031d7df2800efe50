/* The Vulkan backend's submission: per-queue timelines, command recording and submission,
 * events, markers, finish, and the copies.
 *
 * Every submission stream has its own timeline semaphore and gives each command the next
 * value; the fkv queues that run on one VkQueue share one stream (stream()), the others have
 * their own. Consecutive commands of a stream are recorded into command buffers that one
 * vkQueueSubmit takes together (each after a memory barrier on what came before it), in
 * VkSubmitInfo batches that end at each value handed out and before each command that waits
 * on another stream (whose waits are its batch's), the first waiting for the stream's previous
 * submission, each signalling its last command's value, which reaches every earlier one's. So
 * a queue is in order whichever VkQueue it runs on (lavapipe has one). A stream is submitted
 * only when something needs it: a host wait on one of its values (event_wait), a command of
 * another stream that waits on one, finish, a full descriptor pool, 64 commands. An event is
 * (semaphore, value); waiting on one whose command is still recorded submits its stream first.
 * Copies from or to host_alloc memory use its VkBuffer directly; other host memory goes
 * through a staging buffer (writes copy at enqueue, which the interface allows: the source
 * must stay unmodified until completion; reads are copied out by whoever next waits).
 * Layer 3 of the backend: errors -> memory -> submission -> kernels -> device. */
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "vk_internal.h"

#define DESCRIPTOR_SETS_PER_POOL 512

/* The queue's objects: its timeline, command pool and (kernel queues) descriptor pool. */
fkv_status fkv_vk_fqueue_init(fkv_bdev *d, vk_fqueue *fq, vk_hwqueue *hw, int kernels) {
    pthread_mutex_init(&fq->lock, NULL);
    fq->hw = hw;
    VkSemaphoreTypeCreateInfo st = {VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO, NULL,
                                    VK_SEMAPHORE_TYPE_TIMELINE, 0};
    VkSemaphoreCreateInfo si = {VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO, &st, 0};
    VkCommandPoolCreateInfo pi = {VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO, NULL,
                                  VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT, hw->family};
    VkDescriptorPoolSize ps = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                               DESCRIPTOR_SETS_PER_POOL * VK_N_BINDINGS};
    VkDescriptorPoolCreateInfo dpi = {VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, NULL,
                                      VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT,
                                      DESCRIPTOR_SETS_PER_POOL, 1, &ps};
    VkResult r = vkCreateSemaphore(d->dev, &si, NULL, &fq->timeline);
    if (r == VK_SUCCESS)
        r = vkCreateCommandPool(d->dev, &pi, NULL, &fq->pool);
    if (r == VK_SUCCESS && kernels)
        r = vkCreateDescriptorPool(d->dev, &dpi, NULL, &fq->dpool);
    fq->cap_free = 64;
    fq->free_cbs = malloc(fq->cap_free * sizeof *fq->free_cbs);
    if (r != VK_SUCCESS)
        return fkv_vk_fail(r, "creating queue objects");
    if (fq->free_cbs == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: command buffer list");
    return FKV_OK;
}

static void record_release(fkv_bdev *d, vk_fqueue *fq, vk_record *r, int reuse_cb) {
    if (r->n_sets)
        vkFreeDescriptorSets(d->dev, fq->dpool, r->n_sets, r->sets);
    for (uint32_t i = 0; i < r->n_temps; i++) /* back to the queue's scratch */
        fkv_vk_scratch_give(d, &fq->scratch[r->temps[i].host_visible != 0], &r->temps[i]);
    free(r->sets);
    free(r->temps);
    if (r->cb) {
        if (reuse_cb && vkResetCommandBuffer(r->cb, 0) == VK_SUCCESS &&
            fq->n_free < fq->cap_free) {
            fq->free_cbs[fq->n_free++] = r->cb;
        } else {
            vkFreeCommandBuffers(d->dev, fq->pool, 1, &r->cb);
        }
    }
    memset(r, 0, sizeof *r);
}

void fkv_vk_fqueue_destroy(fkv_bdev *d, vk_fqueue *fq) {
    for (uint32_t i = 0; i < fq->n_inflight; i++)
        record_release(d, fq, &fq->inflight[i], 0);
    free(fq->inflight);
    if (fq->n_free && fq->pool)
        vkFreeCommandBuffers(d->dev, fq->pool, fq->n_free, fq->free_cbs);
    free(fq->free_cbs);
    free(fq->pend_cbs);
    free(fq->pend_sems);
    free(fq->pend_vals);
    free(fq->pend_stages);
    free(fq->mark_cbs);
    free(fq->mark_vals);
    free(fq->mark_waits);
    free(fq->pend_si);
    free(fq->pend_ti);
    for (int k = 0; k < 2; k++)
        fkv_vk_scratch_destroy(d, &fq->scratch[k]);
    if (fq->arrivals.buf)
        fkv_vk_temp_free(d, &fq->arrivals);
    if (fq->dpool)
        vkDestroyDescriptorPool(d->dev, fq->dpool, NULL);
    if (fq->pool)
        vkDestroyCommandPool(d->dev, fq->pool, NULL);
    if (fq->timeline)
        vkDestroySemaphore(d->dev, fq->timeline, NULL);
    pthread_mutex_destroy(&fq->lock);
}

/* Releases what completed submissions held (the caller holds fq->lock). */
static void reclaim(fkv_bdev *d, vk_fqueue *fq) {
    uint64_t done = 0;
    if (fq->n_inflight == 0 || vkGetSemaphoreCounterValue(d->dev, fq->timeline, &done) != VK_SUCCESS)
        return;
    uint32_t k = 0;
    while (k < fq->n_inflight && fq->inflight[k].value <= done)
        record_release(d, fq, &fq->inflight[k++], 1);
    if (k) {
        memmove(fq->inflight, fq->inflight + k, (fq->n_inflight - k) * sizeof *fq->inflight);
        fq->n_inflight -= k;
    }
}

/* Ends the pending batch at the commands recorded so far: its signal is the last recorded
 * value, and the waits appended so far are its own (room: reserve_pending). */
static void end_batch(vk_fqueue *fq) {
    if (fq->n_marks && fq->mark_vals[fq->n_marks - 1] == fq->last)
        return;
    fq->mark_cbs[fq->n_marks] = fq->n_pend_cbs;
    fq->mark_waits[fq->n_marks] = fq->n_pend_waits;
    fq->mark_vals[fq->n_marks++] = fq->last;
}

/* Submits fq's recorded commands in one vkQueueSubmit (the caller holds fq->lock): one
 * VkSubmitInfo batch per mark, each with the cross-queue waits of its commands (the first
 * also after the queue's previous submission), signalling the last command's value (which
 * reaches every earlier one's). */
static fkv_status flush_locked(fkv_bdev *d, vk_fqueue *fq) {
    if (fq->n_pend_ops == 0)
        return FKV_OK;
    /* One batch per value handed out (an event, a staged read's) or before a command that
     * waits on another queue, and one for the last: every value anyone waits on is signalled
     * exactly (a wait between two signalled values times out in the validation layer
     * 1.3.239, whatever the spec says). Room: reserve_pending. */
    uint64_t value = fq->last;
    end_batch(fq);
    uint32_t shift = 0; /* the previous submission, first in the first batch's waits */
    if (fq->submitted) {
        uint32_t n = fq->n_pend_waits; /* room for one more: reserve_pending */
        memmove(fq->pend_sems + 1, fq->pend_sems, n * sizeof *fq->pend_sems);
        memmove(fq->pend_vals + 1, fq->pend_vals, n * sizeof *fq->pend_vals);
        memmove(fq->pend_stages + 1, fq->pend_stages, n * sizeof *fq->pend_stages);
        fq->pend_sems[0] = fq->timeline;
        fq->pend_vals[0] = fq->submitted;
        fq->pend_stages[0] = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
        shift = 1;
    }
    uint32_t first_cb = 0, first_w = 0;
    for (uint32_t k = 0; k < fq->n_marks; k++) {
        uint32_t end_w = fq->mark_waits[k] + shift;
        fq->pend_ti[k] = (VkTimelineSemaphoreSubmitInfo){
            .sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
            .waitSemaphoreValueCount = end_w - first_w,
            .pWaitSemaphoreValues = fq->pend_vals + first_w,
            .signalSemaphoreValueCount = 1,
            .pSignalSemaphoreValues = &fq->mark_vals[k]};
        fq->pend_si[k] = (VkSubmitInfo){.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
                                        .pNext = &fq->pend_ti[k],
                                        .waitSemaphoreCount = end_w - first_w,
                                        .pWaitSemaphores = fq->pend_sems + first_w,
                                        .pWaitDstStageMask = fq->pend_stages + first_w,
                                        .commandBufferCount = fq->mark_cbs[k] - first_cb,
                                        .pCommandBuffers = fq->pend_cbs + first_cb,
                                        .signalSemaphoreCount = 1,
                                        .pSignalSemaphores = &fq->timeline};
        first_cb = fq->mark_cbs[k];
        first_w = end_w;
    }
    fkv_vk_hw_lock(d, fq->hw);
    VkResult r = vkQueueSubmit(fq->hw->queue, fq->n_marks, fq->pend_si, VK_NULL_HANDLE);
    fkv_vk_hw_unlock(d, fq->hw);
    fkv_count_submit(&d->counters, (fkv_queue)(fq - d->q));
    fkv_status st = FKV_OK;
    if (r != VK_SUCCESS) {
        st = fkv_vk_fail(r, "vkQueueSubmit");
        /* The commands never run: reach their values from the host, so that no wait hangs. */
        VkSemaphoreSignalInfo sg = {VK_STRUCTURE_TYPE_SEMAPHORE_SIGNAL_INFO, NULL, fq->timeline,
                                    value};
        vkSignalSemaphore(d->dev, &sg);
    }
    fq->submitted = value;
    fq->n_pend_cbs = fq->n_pend_ops = fq->n_pend_waits = fq->n_marks = 0;
    return st;
}

/* The submission stream of fkv_queue q: fkv queues that run on one VkQueue share the first
 * one's (its timeline, pending commands and scratch), so that a command of one that waits for
 * another's is simply recorded after it, and one vkQueueSubmit carries the work of all of
 * them. On one VkQueue they run in submission order anyway (every command buffer starts with
 * a full barrier): separate streams would only add the submits that order them. */
static vk_fqueue *stream(fkv_bdev *d, fkv_queue q) {
    for (int i = 0; i < (int)q && !d->separate_streams; i++)
        if (d->q[i].hw == d->q[q].hw)
            return &d->q[i];
    return &d->q[q];
}

fkv_status fkv_vk_flush(fkv_bdev *d, fkv_queue q) {
    vk_fqueue *fq = stream(d, q);
    pthread_mutex_lock(&fq->lock);
    fkv_status st = flush_locked(d, fq);
    pthread_mutex_unlock(&fq->lock);
    return st;
}

/* Waits for the oldest submission of fq and reclaims (the caller holds fq->lock): bounds the
 * descriptor sets in flight. 0 when nothing was in flight. */
static int wait_oldest(fkv_bdev *d, vk_fqueue *fq) {
    if (fq->n_inflight == 0)
        return 0;
    if (flush_locked(d, fq) != FKV_OK)
        return 0;
    /* the last submitted value: the oldest one's may not be signalled itself */
    VkSemaphoreWaitInfo wi = {VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO, NULL, 0, 1, &fq->timeline,
                              &fq->submitted};
    fkv_count_wait(&d->counters);
    if (vkWaitSemaphores(d->dev, &wi, UINT64_MAX) != VK_SUCCESS)
        return 0;
    reclaim(d, fq);
    return 1;
}

fkv_status fkv_vk_cmd_begin(fkv_bdev *d, fkv_queue q, int marker, vk_cmd *c) {
    memset(c, 0, sizeof *c);
    c->d = d;
    c->q = q;
    c->fq = stream(d, q);
    pthread_mutex_lock(&c->fq->lock);
    reclaim(d, c->fq);
    if (marker)
        return FKV_OK;
    vk_fqueue *fq = c->fq;
    VkResult r = VK_SUCCESS;
    if (fq->n_free) {
        c->rec.cb = fq->free_cbs[--fq->n_free];
    } else {
        VkCommandBufferAllocateInfo ai = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, NULL,
                                          fq->pool, VK_COMMAND_BUFFER_LEVEL_PRIMARY, 1};
        r = vkAllocateCommandBuffers(d->dev, &ai, &c->rec.cb);
    }
    VkCommandBufferBeginInfo bi = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, NULL,
                                   VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT, NULL};
    if (r == VK_SUCCESS)
        r = vkBeginCommandBuffer(c->rec.cb, &bi);
    if (r == VK_SUCCESS) {
        /* after the commands recorded before it in the same submission, as the timeline wait
         * orders it after earlier submissions (recorded whether or not commands are pending
         * now: cmd_submit may let other threads record before it queues this one) */
        VkMemoryBarrier mb = {VK_STRUCTURE_TYPE_MEMORY_BARRIER, NULL, VK_ACCESS_MEMORY_WRITE_BIT,
                              VK_ACCESS_MEMORY_READ_BIT | VK_ACCESS_MEMORY_WRITE_BIT};
        vkCmdPipelineBarrier(c->rec.cb, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT,
                             VK_PIPELINE_STAGE_ALL_COMMANDS_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
    }
    if (r != VK_SUCCESS) {
        fkv_vk_cmd_abort(c);
        return fkv_vk_fail(r, "starting a command buffer");
    }
    return FKV_OK;
}

/* Room for `need` elements of `size` bytes in *arr (capacity *cap, doubled from `first`). */
static int reserve(void *arr, uint32_t *cap, uint32_t need, size_t size, uint32_t first) {
    if (need <= *cap)
        return 1;
    uint32_t n = *cap ? *cap : first;
    while (n < need)
        n *= 2;
    void *p = realloc(*(void **)arr, (size_t)n * size);
    if (p == NULL)
        return 0;
    *(void **)arr = p;
    *cap = n;
    return 1;
}

void fkv_vk_count(const vk_cmd *c, int launch, fkv_copy_dir dir, uint64_t bytes) {
    if (launch)
        fkv_count_launch(&c->d->counters, c->q);
    else
        fkv_count_copy(&c->d->counters, c->q, dir, bytes);
}

fkv_status fkv_vk_cmd_temp(vk_cmd *c, VkDeviceSize size, int host_visible, vk_temp *out) {
    vk_record *r = &c->rec;
    if (!reserve(&r->temps, &r->cap_temps, r->n_temps + 1, sizeof *r->temps, 4))
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: temporary list");
    fkv_status st = fkv_vk_scratch_take(c->d, &c->fq->scratch[host_visible != 0], size,
                                        host_visible, &r->temps[r->n_temps]);
    if (st != FKV_OK)
        return st;
    *out = r->temps[r->n_temps++];
    return FKV_OK;
}

fkv_status fkv_vk_cmd_set(vk_cmd *c, VkDescriptorSet *out) {
    vk_record *r = &c->rec;
    if (!reserve(&r->sets, &r->cap_sets, r->n_sets + 1, sizeof *r->sets, 4))
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: descriptor set list");
    VkDescriptorSetAllocateInfo ai = {VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO, NULL,
                                      c->fq->dpool, 1, &c->d->dsl};
    VkResult res;
    while ((res = vkAllocateDescriptorSets(c->d->dev, &ai, out)) == VK_ERROR_OUT_OF_POOL_MEMORY ||
           res == VK_ERROR_FRAGMENTED_POOL)
        if (!wait_oldest(c->d, c->fq))
            break;
    if (res != VK_SUCCESS)
        return fkv_vk_fail(res, "vkAllocateDescriptorSets");
    r->sets[r->n_sets++] = *out;
    return FKV_OK;
}

void fkv_vk_cmd_abort(vk_cmd *c) {
    record_release(c->d, c->fq, &c->rec, 1);
    pthread_mutex_unlock(&c->fq->lock);
}

/* Room for one more pending command buffer and `waits` more pending waits (+1 for the
 * previous submission, added by flush_locked). */
static fkv_status reserve_pending(vk_fqueue *fq, uint32_t waits) {
    if (!reserve(&fq->pend_cbs, &fq->cap_pend_cbs, fq->n_pend_cbs + 1, sizeof *fq->pend_cbs, 16))
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: pending command buffers");
    /* three arrays of one capacity: each grows from the same old one */
    uint32_t need = fq->n_pend_waits + waits + 1, cap = fq->cap_pend_waits, c2 = cap, c3 = cap;
    if (!reserve(&fq->pend_sems, &cap, need, sizeof *fq->pend_sems, 16) ||
        !reserve(&fq->pend_vals, &c2, need, sizeof *fq->pend_vals, 16) ||
        !reserve(&fq->pend_stages, &c3, need, sizeof *fq->pend_stages, 16))
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: wait list");
    fq->cap_pend_waits = cap;
    /* a mark per value handed out, one before a command that waits on another queue, one for
     * the last, a batch each */
    need = fq->n_marks + 3, cap = c2 = c3 = fq->cap_marks;
    uint32_t c4 = cap, c5 = cap;
    if (!reserve(&fq->mark_cbs, &cap, need, sizeof *fq->mark_cbs, 8) ||
        !reserve(&fq->mark_vals, &c2, need, sizeof *fq->mark_vals, 8) ||
        !reserve(&fq->pend_si, &c3, need, sizeof *fq->pend_si, 8) ||
        !reserve(&fq->pend_ti, &c4, need, sizeof *fq->pend_ti, 8) ||
        !reserve(&fq->mark_waits, &c5, need, sizeof *fq->mark_waits, 8))
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: submission batches");
    fq->cap_marks = cap;
    return FKV_OK;
}

#define PENDING_MAX 64 /* commands per submission at most */

/* The queue whose timeline e is on. */
static vk_fqueue *owner(fkv_bdev *d, const vk_event *e) {
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        if (d->q[q].timeline == e->sem)
            return &d->q[q];
    return NULL;
}

/* Submits what e's queue has recorded up to e, if it has not yet (takes that queue's lock:
 * the caller holds none). */
static fkv_status flush_to(fkv_bdev *d, const vk_event *e) {
    vk_fqueue *fq = owner(d, e);
    fkv_status st = FKV_OK;
    if (fq) {
        pthread_mutex_lock(&fq->lock);
        if (e->value > fq->submitted)
            st = flush_locked(d, fq);
        pthread_mutex_unlock(&fq->lock);
    }
    return st;
}

fkv_status fkv_vk_cmd_submit(vk_cmd *c, const fkv_deps *deps, vk_event *value_out) {
    vk_fqueue *fq = c->fq;
    fkv_bdev *d = c->d;
    fkv_status st = FKV_OK;
    vk_event *ev = NULL;
    /* Waits on this queue's own events are met already: it runs in order. Another queue's
     * commands waited for are submitted first (without this queue's lock: no thread holds two
     * queues' locks), so that a submission never waits for a value nothing will signal. */
    uint32_t n_foreign = 0;
    for (uint32_t i = 0; i < deps->n_wait; i++) {
        const vk_event *e = (const vk_event *)deps->wait[i];
        n_foreign += e != NULL && e->sem != fq->timeline;
    }
    if (n_foreign) {
        pthread_mutex_unlock(&fq->lock);
        for (uint32_t i = 0; i < deps->n_wait && st == FKV_OK; i++) {
            const vk_event *e = (const vk_event *)deps->wait[i];
            if (e != NULL && e->sem != fq->timeline)
                st = flush_to(d, e);
        }
        pthread_mutex_lock(&fq->lock);
    }
    if (deps->done && (ev = malloc(sizeof *ev)) == NULL)
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: event");
    if (st == FKV_OK &&
        !reserve(&fq->inflight, &fq->cap_inflight, fq->n_inflight + 1, sizeof *fq->inflight, 64))
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: submission list");
    if (st == FKV_OK)
        st = reserve_pending(fq, n_foreign);
    if (st == FKV_OK && c->rec.cb) {
        /* Device writes become visible to the host once the timeline value is reached
         * (reads into host memory; the semaphore alone does not make them host-available). */
        VkMemoryBarrier mb = {VK_STRUCTURE_TYPE_MEMORY_BARRIER, NULL, VK_ACCESS_MEMORY_WRITE_BIT,
                              VK_ACCESS_HOST_READ_BIT | VK_ACCESS_HOST_WRITE_BIT};
        vkCmdPipelineBarrier(c->rec.cb, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT,
                             VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
        VkResult r = vkEndCommandBuffer(c->rec.cb);
        if (r != VK_SUCCESS)
            st = fkv_vk_fail(r, "vkEndCommandBuffer");
    }
    if (st != FKV_OK) {
        fkv_vk_cmd_abort(c);
        free(ev);
        return st;
    }
    /* A batch's waits hold from its start: a command that waits on another queue starts a batch
     * of its own (not a submission), and the barrier that opens every later command buffer
     * orders those after it (a marker with such waits records one: fkv_vk_marker). */
    if (n_foreign && fq->n_pend_ops)
        end_batch(fq);
    for (uint32_t i = 0; i < deps->n_wait; i++) {
        const vk_event *e = (const vk_event *)deps->wait[i];
        if (e == NULL || e->sem == fq->timeline)
            continue;
        fq->pend_sems[fq->n_pend_waits] = e->sem;
        fq->pend_vals[fq->n_pend_waits] = e->value;
        fq->pend_stages[fq->n_pend_waits++] = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
    }
    uint64_t value = ++fq->last;
    c->rec.value = value;
    if (c->rec.cb)
        fq->pend_cbs[fq->n_pend_cbs++] = c->rec.cb;
    fq->n_pend_ops++;
    if (c->rec.cb || c->rec.n_temps || c->rec.n_sets)
        fq->inflight[fq->n_inflight++] = c->rec;
    if (ev || value_out) /* a value someone may wait on: signalled by a batch of its own */
        end_batch(fq);
    /* Events may go out unsubmitted: waiting on one (event_wait, another queue's command)
     * submits its queue first. */
    if (fq->n_pend_ops >= PENDING_MAX)
        st = flush_locked(d, fq);
    if (ev && st == FKV_OK) {
        ev->sem = fq->timeline;
        ev->value = value;
        *deps->done = (fkv_bevent *)ev;
    } else {
        free(ev);
    }
    if (value_out) {
        value_out->sem = fq->timeline;
        value_out->value = value;
    }
    pthread_mutex_unlock(&fq->lock);
    return st;
}

fkv_status fkv_vk_marker(fkv_bdev *d, fkv_queue q, fkv_deps deps) {
    fkv_vk_clear_done(&deps);
    /* Another queue's wait blocks only the commands of its batch: a marker that has one gets a
     * command buffer (its opening barrier alone), which the later commands' barriers order
     * after. Without, it is a signal only. */
    int foreign = 0;
    for (uint32_t i = 0; i < deps.n_wait; i++) {
        const vk_event *e = (const vk_event *)deps.wait[i];
        foreign |= e != NULL && e->sem != stream(d, q)->timeline;
    }
    fkv_status st;
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, !foreign, &c)) != FKV_OK)
        return st;
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

/* ---- events ---- */

/* Copies out the staged reads that have completed. */
void fkv_vk_sweep_reads(fkv_bdev *d) {
    pthread_mutex_lock(&d->read_lock);
    for (uint32_t i = 0; i < d->n_reads;) {
        vk_pending_read *p = &d->reads[i];
        uint64_t v = 0;
        if (vkGetSemaphoreCounterValue(d->dev, p->sem, &v) == VK_SUCCESS && v >= p->value) {
            memcpy(p->dst, p->temp.ptr, p->size);
            pthread_mutex_lock(&p->fq->lock); /* lock order: read_lock, then a queue's */
            fkv_vk_scratch_give(d, &p->fq->scratch[1], &p->temp);
            pthread_mutex_unlock(&p->fq->lock);
            d->reads[i] = d->reads[--d->n_reads];
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&d->read_lock);
}

static fkv_status validation_status(fkv_bdev *d) {
    unsigned n = atomic_load(&d->validation_errors);
    if (n)
        return fkv_error(FKV_ERR_BACKEND,
                         "vulkan: the validation layer reported %u error(s) or warning(s) (see "
                         "stderr)", n);
    return FKV_OK;
}

static fkv_status wait_values(fkv_bdev *d, uint32_t n, const VkSemaphore *sems,
                              const uint64_t *vals) {
    if (n) {
        VkSemaphoreWaitInfo wi = {VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO, NULL, 0, n, sems, vals};
        fkv_count_wait(&d->counters);
        VkResult r = vkWaitSemaphores(d->dev, &wi, UINT64_MAX);
        if (r != VK_SUCCESS)
            return fkv_vk_fail(r, "vkWaitSemaphores");
    }
    fkv_vk_sweep_reads(d);
    return validation_status(d);
}

fkv_status fkv_vk_event_wait(fkv_bdev *d, uint32_t n, fkv_bevent *const *events) {
    if (n == 0)
        return FKV_OK;
    VkSemaphore sb[16];
    uint64_t vb[16];
    VkSemaphore *s = n > 16 ? malloc(n * sizeof *s) : sb;
    uint64_t *v = n > 16 ? malloc(n * sizeof *v) : vb;
    fkv_status st;
    if (s == NULL || v == NULL) {
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: wait list");
    } else {
        st = FKV_OK;
        uint32_t k = 0;
        for (uint32_t i = 0; i < n; i++) {
            const vk_event *e = (const vk_event *)events[i];
            s[k] = e->sem;
            v[k++] = e->value;
        }
        for (uint32_t i = 0; i < n && st == FKV_OK; i++) /* recorded, not yet submitted */
            st = flush_to(d, (const vk_event *)events[i]);
        if (st == FKV_OK)
            st = wait_values(d, k, s, v);
    }
    if (s != sb)
        free(s);
    if (v != vb)
        free(v);
    return st;
}

fkv_status fkv_vk_event_query(fkv_bdev *d, fkv_bevent *ev, int *done) {
    const vk_event *e = (const vk_event *)ev;
    uint64_t v = 0;
    VkResult r = vkGetSemaphoreCounterValue(d->dev, e->sem, &v);
    if (r != VK_SUCCESS)
        return fkv_vk_fail(r, "vkGetSemaphoreCounterValue");
    *done = v >= e->value;
    if (!*done)
        return FKV_OK;
    fkv_vk_sweep_reads(d); /* as event_wait: a completed read's data is in place */
    return validation_status(d);
}

void fkv_vk_event_release(fkv_bdev *d, fkv_bevent *ev) {
    (void)d;
    free(ev);
}

fkv_status fkv_vk_finish(fkv_bdev *d, fkv_queue q) {
    vk_fqueue *fq = stream(d, q);
    pthread_mutex_lock(&fq->lock);
    fkv_status st = flush_locked(d, fq);
    uint64_t last = fq->last;
    pthread_mutex_unlock(&fq->lock);
    fkv_status sw = wait_values(d, 1, &fq->timeline, &last);
    if (st == FKV_OK)
        st = sw;
    pthread_mutex_lock(&fq->lock);
    reclaim(d, fq);
    pthread_mutex_unlock(&fq->lock);
    return st;
}

/* ---- copies ---- */

/* The source of n host regions: their host_alloc buffer, or one staging buffer they are
 * copied into now. Records one vkCmdCopyBuffer per run of regions with the same source. */
static fkv_status record_upload(vk_cmd *c, fkv_bbuf *dst, uint32_t n, const fkv_copy_region *rg) {
    VkBufferCopy *copies = malloc(n * sizeof *copies);
    VkBuffer *srcs = malloc(n * sizeof *srcs);
    fkv_status st = FKV_OK;
    if (copies == NULL || srcs == NULL)
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: copy regions");
    size_t staged = 0;
    for (uint32_t i = 0; i < n && st == FKV_OK; i++) {
        VkDeviceSize off;
        fkv_bhost *h = fkv_vk_find_host(c->d, rg[i].src, rg[i].size, &off);
        srcs[i] = h ? h->buf : VK_NULL_HANDLE;
        copies[i] = (VkBufferCopy){h ? off : staged, rg[i].dst_offset, rg[i].size};
        if (!h)
            staged += rg[i].size;
    }
    if (st == FKV_OK && staged) {
        vk_temp t;
        st = fkv_vk_cmd_temp(c, staged, 1, &t);
        for (uint32_t i = 0; i < n && st == FKV_OK; i++)
            if (srcs[i] == VK_NULL_HANDLE) {
                memcpy((unsigned char *)t.ptr + copies[i].srcOffset, rg[i].src, rg[i].size);
                srcs[i] = t.buf;
            }
    }
    for (uint32_t i = 0; i < n && st == FKV_OK;) {
        uint32_t j = i + 1;
        while (j < n && srcs[j] == srcs[i])
            j++;
        vkCmdCopyBuffer(c->rec.cb, srcs[i], dst->buf, j - i, copies + i);
        uint64_t bytes = 0;
        for (uint32_t k = i; k < j; k++)
            bytes += copies[k].size;
        fkv_vk_count(c, 0, FKV_COPY_H2D, bytes);
        i = j;
    }
    free(copies);
    free(srcs);
    return st;
}

fkv_status fkv_vk_write(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                           size_t dst_offset, const void *src, size_t size) {
    fkv_vk_clear_done(&deps);
    fkv_status st;
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 0, &c)) != FKV_OK)
        return st;
    fkv_copy_region rg = {src, dst_offset, size};
    if ((st = record_upload(&c, dst, 1, &rg)) != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

fkv_status fkv_vk_write_regions(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                                   uint32_t n, const fkv_copy_region *regions) {
    fkv_vk_clear_done(&deps);
    fkv_status st;
    /* Zero-size regions are not valid VkBufferCopy entries: drop them. */
    uint32_t live = 0;
    for (uint32_t i = 0; i < n; i++)
        live += regions[i].size != 0;
    if (live == 0)
        return fkv_vk_marker(d, q, deps);
    if (d->perpage_cmds || live != n) {
        /* The baseline (FREEKV_VULKAN_RECALL=perpage): one submission per region; only the
         * first waits and only the last signals (the queue is in order). */
        uint32_t seen = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (regions[i].size == 0)
                continue;
            seen++;
            fkv_deps dd = {seen == 1 ? deps.n_wait : 0, seen == 1 ? deps.wait : NULL,
                           seen == live ? deps.done : NULL};
            if ((st = fkv_vk_write(d, q, dd, dst, regions[i].dst_offset, regions[i].src,
                               regions[i].size)) != FKV_OK)
                return st;
        }
        return FKV_OK;
    }
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 0, &c)) != FKV_OK)
        return st;
    if ((st = record_upload(&c, dst, n, regions)) != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

fkv_status fkv_vk_read(fkv_bdev *d, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                          size_t src_offset, void *dst, size_t size) {
    fkv_vk_clear_done(&deps);
    fkv_status st = FKV_OK;
    VkDeviceSize off = 0;
    fkv_bhost *h = fkv_vk_find_host(d, dst, size, &off);
    vk_pending_read p = {.fq = stream(d, q), .dst = dst, .size = size};
    if (h == NULL) {
        pthread_mutex_lock(&d->read_lock); /* room for the pending entry before submitting */
        if (reserve(&d->reads, &d->cap_reads, d->n_reads + d->reads_reserved + 1,
                    sizeof *d->reads, 16))
            d->reads_reserved++; /* two threads' reads must not count on one free entry */
        else
            st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: pending reads");
        pthread_mutex_unlock(&d->read_lock);
        if (st != FKV_OK)
            return st;
    }
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 0, &c)) == FKV_OK) {
        /* staged: the queue's host-visible scratch, held until the copy-out (not the
         * record's) */
        if (h == NULL &&
            (st = fkv_vk_scratch_take(d, &c.fq->scratch[1], size, 1, &p.temp)) != FKV_OK) {
            fkv_vk_cmd_abort(&c);
        } else {
            VkBufferCopy bc = {src_offset, h ? off : 0, size};
            vkCmdCopyBuffer(c.rec.cb, src->buf, h ? h->buf : p.temp.buf, 1, &bc);
            fkv_vk_count(&c, 0, FKV_COPY_D2H, size);
            vk_event v = {VK_NULL_HANDLE, 0};
            st = fkv_vk_cmd_submit(&c, &deps, &v);
            p.sem = v.sem;
            p.value = v.value;
            if (st != FKV_OK && h == NULL) {
                pthread_mutex_lock(&p.fq->lock);
                fkv_vk_scratch_give(d, &p.fq->scratch[1], &p.temp);
                pthread_mutex_unlock(&p.fq->lock);
            }
        }
    }
    if (h == NULL) {
        pthread_mutex_lock(&d->read_lock);
        d->reads_reserved--;
        if (st == FKV_OK)
            d->reads[d->n_reads++] = p; /* into the entry reserved above */
        pthread_mutex_unlock(&d->read_lock);
    }
    return st;
}

fkv_status fkv_vk_copy(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                          size_t dst_offset, const fkv_bbuf *src, size_t src_offset, size_t size) {
    fkv_vk_clear_done(&deps);
    fkv_status st;
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 0, &c)) != FKV_OK)
        return st;
    if (src->buf == dst->buf && src_offset < dst_offset + size && dst_offset < src_offset + size) {
        /* Overlapping regions are invalid in one vkCmdCopyBuffer: memmove through a temporary. */
        vk_temp t;
        if ((st = fkv_vk_cmd_temp(&c, size, 0, &t)) != FKV_OK) {
            fkv_vk_cmd_abort(&c);
            return st;
        }
        VkBufferCopy a = {src_offset, 0, size}, b = {0, dst_offset, size};
        vkCmdCopyBuffer(c.rec.cb, src->buf, t.buf, 1, &a);
        fkv_vk_count(&c, 0, FKV_COPY_D2D, size);
        VkMemoryBarrier mb = {VK_STRUCTURE_TYPE_MEMORY_BARRIER, NULL, VK_ACCESS_TRANSFER_WRITE_BIT,
                              VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
        vkCmdPipelineBarrier(c.rec.cb, VK_PIPELINE_STAGE_TRANSFER_BIT,
                             VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
        vkCmdCopyBuffer(c.rec.cb, t.buf, dst->buf, 1, &b);
        fkv_vk_count(&c, 0, FKV_COPY_D2D, size);
    } else {
        VkBufferCopy bc = {src_offset, dst_offset, size};
        vkCmdCopyBuffer(c.rec.cb, src->buf, dst->buf, 1, &bc);
        fkv_vk_count(&c, 0, FKV_COPY_D2D, size);
    }
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}
