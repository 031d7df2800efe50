/* The Vulkan backend's side of the engine's external synchronisation: the engine's timeline
 * semaphores as wait-list entries, the signal of one once freekv's commands are done, and the
 * VkQueue locks fkv_device_get_native hands out. On the submission layer (vk_submit.c): errors
 * -> memory -> submission -> interop, kernels -> device. */
#include <stdlib.h>

#include "../common/error.h"
#include "vk_internal.h"

/* A vk_event is (semaphore, value) whatever the semaphore: a foreign one is waited for like
 * another queue's timeline (vk_submit.c finds no queue of ours to flush for it). */
fkv_status fkv_vk_event_import(fkv_bdev *d, const fkv_native_event *ev, fkv_bevent **out) {
    (void)d;
    vk_event *e = malloc(sizeof *e);
    if (e == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: event");
    e->sem = (VkSemaphore)(uintptr_t)ev->handle;
    e->value = ev->value;
    *out = (fkv_bevent *)e;
    return FKV_OK;
}

fkv_status fkv_vk_event_signal(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_native_event *sig) {
    fkv_vk_clear_done(&deps);
    if (sig->handle == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "vulkan event_signal: NULL semaphore");
    fkv_bevent *mark = NULL;
    fkv_status st = fkv_vk_marker(d, q, (fkv_deps){deps.n_wait, deps.wait, &mark});
    if (st == FKV_OK) /* the marker's value must be submitted before anything waits for it */
        st = fkv_vk_flush(d, q);
    if (st != FKV_OK) {
        fkv_vk_event_release(d, mark);
        return st;
    }
    const vk_event *m = (const vk_event *)mark;
    VkSemaphore sem = (VkSemaphore)(uintptr_t)sig->handle;
    VkPipelineStageFlags stage = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
    VkTimelineSemaphoreSubmitInfo ti = {.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
                                        .waitSemaphoreValueCount = 1,
                                        .pWaitSemaphoreValues = &m->value,
                                        .signalSemaphoreValueCount = 1,
                                        .pSignalSemaphoreValues = &sig->value};
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
                       .pNext = &ti,
                       .waitSemaphoreCount = 1,
                       .pWaitSemaphores = &m->sem,
                       .pWaitDstStageMask = &stage,
                       .signalSemaphoreCount = 1,
                       .pSignalSemaphores = &sem};
    vk_hwqueue *hw = d->q[q].hw;
    fkv_vk_hw_lock(d, hw);
    VkResult r = vkQueueSubmit(hw->queue, 1, &si, VK_NULL_HANDLE);
    fkv_vk_hw_unlock(d, hw);
    fkv_count_submit(&d->counters, q);
    if (r != VK_SUCCESS) {
        fkv_vk_event_release(d, mark);
        return fkv_vk_fail(r, "vkQueueSubmit (signalling the engine's semaphore)");
    }
    if (deps.done)
        *deps.done = mark;
    else
        fkv_vk_event_release(d, mark);
    return FKV_OK;
}

/* The vk_hwqueue of one of the device's VkQueues, NULL when it is none of them. */
static vk_hwqueue *hw_of(fkv_bdev *d, void *queue) {
    for (uint32_t i = 0; i < d->n_hw; i++)
        if ((void *)d->hw[i].queue == queue)
            return &d->hw[i];
    return NULL;
}

void fkv_vk_lock_queue(void *user, void *queue) {
    vk_hwqueue *hw = hw_of(user, queue);
    if (hw)
        fkv_vk_hw_lock(user, hw);
}

void fkv_vk_unlock_queue(void *user, void *queue) {
    vk_hwqueue *hw = hw_of(user, queue);
    if (hw)
        fkv_vk_hw_unlock(user, hw);
}
