/* The Vulkan backend's submission: per-queue timelines, command recording and submission,
 * events, markers, finish, and the copies.
 *
 * Every fkv_queue has its own timeline semaphore; each command is one submission that waits
 * for its wait list and the queue's previous value and signals the next one, so a queue is in
 * order whichever VkQueue it runs on (lavapipe has one). An event is (semaphore, value).
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
    for (uint32_t i = 0; i < r->n_temps; i++)
        fkv_vk_temp_free(d, &r->temps[i]);
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

/* Waits for the oldest submission of fq and reclaims (the caller holds fq->lock): bounds the
 * descriptor sets in flight. 0 when nothing was in flight. */
static int wait_oldest(fkv_bdev *d, vk_fqueue *fq) {
    if (fq->n_inflight == 0)
        return 0;
    VkSemaphoreWaitInfo wi = {VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO, NULL, 0, 1, &fq->timeline,
                              &fq->inflight[0].value};
    fkv_count_wait(&d->counters);
    if (vkWaitSemaphores(d->dev, &wi, UINT64_MAX) != VK_SUCCESS)
        return 0;
    reclaim(d, fq);
    return 1;
}

fkv_status fkv_vk_cmd_begin(fkv_bdev *d, fkv_queue q, int marker, vk_cmd *c) {
    memset(c, 0, sizeof *c);
    c->d = d;
    c->fq = &d->q[q];
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
    if (r != VK_SUCCESS) {
        fkv_vk_cmd_abort(c);
        return fkv_vk_fail(r, "starting a command buffer");
    }
    return FKV_OK;
}

void fkv_vk_count(const vk_cmd *c, int launch, fkv_copy_dir dir, uint64_t bytes) {
    fkv_queue q = (fkv_queue)(c->fq - c->d->q);
    if (launch)
        fkv_count_launch(&c->d->counters, q);
    else
        fkv_count_copy(&c->d->counters, q, dir, bytes);
}

fkv_status fkv_vk_cmd_temp(vk_cmd *c, VkDeviceSize size, int host_visible, vk_temp *out) {
    vk_record *r = &c->rec;
    if (r->n_temps == r->cap_temps) {
        uint32_t cap = r->cap_temps ? 2 * r->cap_temps : 4;
        vk_temp *n = realloc(r->temps, cap * sizeof *n);
        if (n == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: temporary list");
        r->temps = n;
        r->cap_temps = cap;
    }
    fkv_status st = fkv_vk_temp_alloc(c->d, size, host_visible, 0, &r->temps[r->n_temps]);
    if (st != FKV_OK)
        return st;
    *out = r->temps[r->n_temps++];
    return FKV_OK;
}

fkv_status fkv_vk_cmd_set(vk_cmd *c, VkDescriptorSet *out) {
    vk_record *r = &c->rec;
    if (r->n_sets == r->cap_sets) {
        uint32_t cap = r->cap_sets ? 2 * r->cap_sets : 4;
        VkDescriptorSet *n = realloc(r->sets, cap * sizeof *n);
        if (n == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: descriptor set list");
        r->sets = n;
        r->cap_sets = cap;
    }
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

fkv_status fkv_vk_cmd_submit(vk_cmd *c, const fkv_deps *deps, vk_event *value_out) {
    vk_fqueue *fq = c->fq;
    fkv_status st = FKV_OK;
    vk_event *ev = NULL;
    VkSemaphore wsem_buf[17];
    uint64_t wval_buf[17];
    VkPipelineStageFlags wstage_buf[17];
    VkSemaphore *wsem = wsem_buf;
    uint64_t *wval = wval_buf;
    VkPipelineStageFlags *wstage = wstage_buf;
    uint32_t n = 0, cap = deps->n_wait + 1;
    if (cap > 17) {
        wsem = malloc(cap * sizeof *wsem);
        wval = malloc(cap * sizeof *wval);
        wstage = malloc(cap * sizeof *wstage);
        if (!wsem || !wval || !wstage)
            st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: wait list");
    }
    if (st == FKV_OK && deps->done && (ev = malloc(sizeof *ev)) == NULL)
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: event");
    if (st == FKV_OK && fq->n_inflight == fq->cap_inflight) {
        uint32_t nc = fq->cap_inflight ? 2 * fq->cap_inflight : 64;
        vk_record *nr = realloc(fq->inflight, nc * sizeof *nr);
        if (nr == NULL)
            st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: submission list");
        else {
            fq->inflight = nr;
            fq->cap_inflight = nc;
        }
    }
    VkResult r = VK_SUCCESS;
    if (st == FKV_OK && c->rec.cb) {
        /* Device writes become visible to the host once the timeline value is reached
         * (reads into host memory; the semaphore alone does not make them host-available). */
        VkMemoryBarrier mb = {VK_STRUCTURE_TYPE_MEMORY_BARRIER, NULL, VK_ACCESS_MEMORY_WRITE_BIT,
                              VK_ACCESS_HOST_READ_BIT | VK_ACCESS_HOST_WRITE_BIT};
        vkCmdPipelineBarrier(c->rec.cb, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT,
                             VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
        r = vkEndCommandBuffer(c->rec.cb);
        if (r != VK_SUCCESS)
            st = fkv_vk_fail(r, "vkEndCommandBuffer");
    }
    if (st != FKV_OK) {
        fkv_vk_cmd_abort(c);
        free(ev);
        goto out;
    }
    for (uint32_t i = 0; i < deps->n_wait; i++) {
        const vk_event *e = (const vk_event *)deps->wait[i];
        if (e == NULL)
            continue;
        wsem[n] = e->sem;
        wval[n] = e->value;
        wstage[n++] = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
    }
    if (fq->last) { /* in order after the queue's previous submission */
        wsem[n] = fq->timeline;
        wval[n] = fq->last;
        wstage[n++] = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
    }
    uint64_t value = fq->last + 1;
    VkTimelineSemaphoreSubmitInfo ti = {VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO, NULL, n,
                                        wval, 1, &value};
    VkSubmitInfo si = {VK_STRUCTURE_TYPE_SUBMIT_INFO, &ti, n, wsem, wstage,
                       c->rec.cb ? 1u : 0u, &c->rec.cb, 1, &fq->timeline};
    pthread_mutex_lock(&fq->hw->lock);
    r = vkQueueSubmit(fq->hw->queue, 1, &si, VK_NULL_HANDLE);
    pthread_mutex_unlock(&fq->hw->lock);
    if (r == VK_SUCCESS)
        fkv_count_submit(&c->d->counters, (fkv_queue)(fq - c->d->q));
    if (r != VK_SUCCESS) {
        st = fkv_vk_fail(r, "vkQueueSubmit");
        fkv_vk_cmd_abort(c);
        free(ev);
        goto out;
    }
    fq->last = value;
    c->rec.value = value;
    if (c->rec.cb || c->rec.n_temps || c->rec.n_sets)
        fq->inflight[fq->n_inflight++] = c->rec;
    if (ev) {
        ev->sem = fq->timeline;
        ev->value = value;
        *deps->done = (fkv_bevent *)ev;
    }
    if (value_out) {
        value_out->sem = fq->timeline;
        value_out->value = value;
    }
    pthread_mutex_unlock(&fq->lock);
out:
    if (wsem != wsem_buf) {
        free(wsem);
        free(wval);
        free(wstage);
    }
    return st;
}

fkv_status fkv_vk_marker(fkv_bdev *d, fkv_queue q, fkv_deps deps) {
    fkv_vk_clear_done(&deps);
    fkv_status st;
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 1, &c)) != FKV_OK)
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
            fkv_vk_temp_free(d, &p->temp);
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
        uint32_t k = 0;
        for (uint32_t i = 0; i < n; i++) {
            const vk_event *e = (const vk_event *)events[i];
            s[k] = e->sem;
            v[k++] = e->value;
        }
        st = wait_values(d, k, s, v);
    }
    if (s != sb)
        free(s);
    if (v != vb)
        free(v);
    return st;
}

void fkv_vk_event_release(fkv_bdev *d, fkv_bevent *ev) {
    (void)d;
    free(ev);
}

fkv_status fkv_vk_finish(fkv_bdev *d, fkv_queue q) {
    vk_fqueue *fq = &d->q[q];
    pthread_mutex_lock(&fq->lock);
    uint64_t last = fq->last;
    pthread_mutex_unlock(&fq->lock);
    fkv_status st = wait_values(d, 1, &fq->timeline, &last);
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
    vk_pending_read p = {0};
    if (h == NULL) {
        if ((st = fkv_vk_temp_alloc(d, size, 1, 0, &p.temp)) != FKV_OK)
            return st;
        pthread_mutex_lock(&d->read_lock); /* room for the pending entry before submitting */
        if (d->n_reads == d->cap_reads) {
            uint32_t cap = d->cap_reads ? 2 * d->cap_reads : 16;
            vk_pending_read *n = realloc(d->reads, cap * sizeof *n);
            if (n) {
                d->reads = n;
                d->cap_reads = cap;
            } else {
                st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: pending reads");
            }
        }
        pthread_mutex_unlock(&d->read_lock);
        if (st != FKV_OK) {
            fkv_vk_temp_free(d, &p.temp);
            return st;
        }
    }
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 0, &c)) != FKV_OK) {
        fkv_vk_temp_free(d, &p.temp);
        return st;
    }
    VkBufferCopy bc = {src_offset, h ? off : 0, size};
    vkCmdCopyBuffer(c.rec.cb, src->buf, h ? h->buf : p.temp.buf, 1, &bc);
    fkv_vk_count(&c, 0, FKV_COPY_D2H, size);
    vk_event v;
    if ((st = fkv_vk_cmd_submit(&c, &deps, &v)) != FKV_OK) {
        fkv_vk_temp_free(d, &p.temp);
        return st;
    }
    if (h == NULL) {
        p.sem = v.sem;
        p.value = v.value;
        p.dst = dst;
        p.size = size;
        pthread_mutex_lock(&d->read_lock);
        d->reads[d->n_reads++] = p; /* room was made above; only this path adds */
        pthread_mutex_unlock(&d->read_lock);
    }
    return FKV_OK;
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
