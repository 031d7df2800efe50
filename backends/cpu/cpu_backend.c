/* The CPU reference backend: the ops table every other backend is compared with.
 *
 * Device memory is plain heap memory separate from the caller's, so host<->device copies are
 * real copies and layout or ordering bugs show. Each fkv_queue is a worker thread
 * (cpu_queue.c); kernels are C over raw pointers (cpu_kernels.c; the attention and the scores
 * in vectors, once per instruction-set level: cpu_levels.h). The arguments of every call were
 * checked by the dispatch layer, as for every backend (backends/check.c); indices read from
 * index buffers are checked when the command runs, and a bad one fails the command's event
 * instead of touching memory out of range.
 *
 * Environment (read in device_open only, through common/env.c):
 *   FREEKV_CPU_RECALL=staged|direct|perpage   recall mechanism reported by recall_mode
 *   FREEKV_CPU_DEVICE_MEMORY, FREEKV_CPU_HOST_MEMORY = N[K|M|G]   allocation limits in bytes
 *   FREEKV_CPU_THREADS=auto|N   threads an attention, scores or select_pages call runs on
 *     (its items, cpu_pool.h), the queue's own included: auto is every CPU the opening
 *     thread may run on (its affinity set, else the online CPUs), at most 64; 1 keeps each
 *     command on its queue's thread
 *   FREEKV_CPU_ISA=auto|base|x86-64-v3|x86-64-v4   the instruction-set level of the attention
 *     and scores loops (cpu_isa.h): auto the widest the CPU runs; every level gives the same
 *     bits, so the choice is for measuring a level and for CPUs that run a narrower one faster
 *
 * Tests can make a chosen command fail (cpu_fault.h).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "../../common/env.h"
#include "../../common/error.h"
#include "../counters.h"
#include "cpu_fault.h"
#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "cpu_queue.h"

#define CPU_HOST_ALIGN 64

struct fkv_bdev {
    cpu_queue *queues[FKV_QUEUE_COUNT];
    fkv_recall_mode recall;
    cpu_isa isa;
    cpu_pool *pool; /* the threads of the attention, scores and selection, shared by the queues */
    uint64_t device_limit; /* UINT64_MAX: unlimited */
    uint64_t host_limit;
    pthread_mutex_t mem_lock; /* guards the counters below */
    uint64_t device_used;
    uint64_t host_used;
    /* an armed fault (cpu_fault.h): fault_at = 0 when none */
    uint64_t fault_at, fault_count;
    fkv_cpu_fault fault_kind;
    fkv_cpu_fault_threads fault_threads;
    int fault_fired;
    pthread_t fault_thread;
    fkv_bcounters counters; /* every command handed to a queue thread, every host wait */
};

/* desc.base is the data's address: offsets are aligned against it (an imported buffer may
 * be caller memory at any address). */
struct fkv_bbuf {
    fkv_mem_desc desc; /* first (backend.h) */
    unsigned char *data;
    int imported; /* the caller owns data */
};

struct fkv_bhost {
    fkv_mem_desc desc; /* first (backend.h) */
    unsigned char *data;
    size_t charged; /* bytes counted against the host limit */
};

static const char *const queue_names[FKV_QUEUE_COUNT] = {"compute", "transfer", "background"};

/* ---- enumeration and opening ---- */

static uint64_t physical_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_size <= 0)
        return 0;
    return (uint64_t)pages * (uint64_t)page_size;
}

static const uint32_t base_caps = FKV_CAP_ASYNC_COPY | FKV_CAP_DEVICE_WAIT | FKV_CAP_PINNED_HOST |
                                  FKV_CAP_FP16_STORAGE | FKV_CAP_SEPARATE_TRANSFER_QUEUE |
                                  FKV_CAP_MULTI_REGION_COPY;

static void fill_info(fkv_device_info *info, uint64_t memory_bytes, uint32_t caps) {
    memset(info, 0, sizeof *info);
    snprintf(info->backend, sizeof info->backend, "cpu");
    info->index = 0;
    snprintf(info->name, sizeof info->name, "freekv CPU reference");
    snprintf(info->driver, sizeof info->driver, "freekv %d.%d", FKV_VERSION_MAJOR,
             FKV_VERSION_MINOR);
    info->type = FKV_DEVICE_REFERENCE;
    info->memory_bytes = memory_bytes;
    info->max_buffer_bytes = memory_bytes;
    info->caps = caps;
}

static fkv_status cpu_device_count(uint32_t *count) {
    if (count == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "cpu device_count: NULL output");
    *count = 1;
    return FKV_OK;
}

/* Before opening, the environment is not read: this describes the default device. */
static fkv_status cpu_device_info(uint32_t index, fkv_device_info *info) {
    if (info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "cpu device_info: NULL output");
    if (index != 0)
        return fkv_error(FKV_ERR_NO_DEVICE, "cpu: no device %u (the CPU backend has one)", index);
    fill_info(info, physical_memory(), base_caps);
    return FKV_OK;
}

static fkv_status read_recall(fkv_recall_mode *mode) {
    /* in fkv_recall_mode order */
    static const char *const names[] = {"staged", "direct", "perpage"};
    int i;
    fkv_status st = fkv_env_choice("FREEKV_CPU_RECALL", names, 3, FKV_RECALL_STAGED, &i);
    *mode = (fkv_recall_mode)i;
    return st;
}

static fkv_status read_isa(cpu_isa *isa) {
    /* in cpu_isa order */
    static const char *const names[] = {"auto", "base", "x86-64-v3", "x86-64-v4"};
    int i;
    fkv_status st = fkv_env_choice("FREEKV_CPU_ISA", names, 4, CPU_ISA_BEST, &i);
    if (st != FKV_OK)
        return st;
    *isa = (cpu_isa)i;
    if (!cpu_isa_available(*isa))
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "FREEKV_CPU_ISA=%s: this CPU or build does not run that level", names[i]);
    return FKV_OK;
}

/* The threads of an attention, scores or select_pages call: FREEKV_CPU_THREADS, else every
 * usable CPU (at most 64). */
static fkv_status read_threads(uint32_t *n) {
    fkv_status st = fkv_env_count("FREEKV_CPU_THREADS", 256, n);
    if (st == FKV_OK && *n == 0) {
        uint32_t cpus = cpu_usable_cpus();
        *n = cpus > 64 ? 64 : cpus;
    }
    return st;
}

static void cpu_device_close(fkv_bdev *dev) {
    if (dev == NULL)
        return;
    /* Each queue drains before its thread is joined; a command waiting on another queue's
     * event still completes because that queue is still running (or already drained). */
    for (int i = 0; i < FKV_QUEUE_COUNT; i++)
        cpu_queue_destroy(dev->queues[i]);
    cpu_pool_destroy(dev->pool); /* after the queues: their commands use it */
    pthread_mutex_destroy(&dev->mem_lock);
    free(dev);
}

static fkv_status cpu_device_open(uint32_t index, fkv_bdev **out) {
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "cpu device_open: NULL output");
    *out = NULL;
    if (index != 0)
        return fkv_error(FKV_ERR_NO_DEVICE, "cpu: no device %u (the CPU backend has one)", index);
    fkv_recall_mode recall;
    cpu_isa isa;
    uint32_t threads;
    uint64_t device_limit, host_limit;
    fkv_status st;
    if ((st = read_recall(&recall)) != FKV_OK || (st = read_isa(&isa)) != FKV_OK ||
        (st = read_threads(&threads)) != FKV_OK ||
        (st = fkv_env_size("FREEKV_CPU_DEVICE_MEMORY", UINT64_MAX, &device_limit)) != FKV_OK ||
        (st = fkv_env_size("FREEKV_CPU_HOST_MEMORY", UINT64_MAX, &host_limit)) != FKV_OK)
        return st;
    fkv_bdev *dev = calloc(1, sizeof *dev);
    if (dev == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "cpu: allocating the device");
    if (pthread_mutex_init(&dev->mem_lock, NULL) != 0) {
        free(dev);
        return fkv_error(FKV_ERR_BACKEND, "cpu: pthread_mutex_init failed");
    }
    dev->recall = recall;
    dev->isa = isa;
    if ((st = cpu_pool_create(threads, CPU_MIN_SHARED_ELEMENTS, &dev->pool)) != FKV_OK) {
        cpu_device_close(dev);
        return st;
    }
    dev->device_limit = device_limit;
    dev->host_limit = host_limit;
    for (int i = 0; i < FKV_QUEUE_COUNT; i++) {
        if ((st = cpu_queue_create(queue_names[i], &dev->queues[i])) != FKV_OK) {
            cpu_device_close(dev);
            return st;
        }
    }
    *out = dev;
    return FKV_OK;
}

static uint32_t device_caps(const fkv_bdev *dev) {
    return base_caps | (dev->recall == FKV_RECALL_DIRECT ? FKV_CAP_ZERO_COPY_HOST : 0u);
}

static fkv_status cpu_opened_info(fkv_bdev *dev, fkv_device_info *info) {
    if (dev == NULL || info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "cpu opened_info: NULL argument");
    uint64_t mem = physical_memory();
    if (dev->device_limit != UINT64_MAX)
        mem = dev->device_limit;
    fill_info(info, mem, device_caps(dev));
    return FKV_OK;
}

static fkv_recall_mode cpu_recall_mode(fkv_bdev *dev) {
    return dev ? dev->recall : FKV_RECALL_STAGED;
}

/* ---- memory ---- */

/* Counts size against a limit; 0 when it does not fit. */
static int charge(fkv_bdev *dev, uint64_t *used, uint64_t limit, size_t size) {
    pthread_mutex_lock(&dev->mem_lock);
    int ok = size <= limit && *used <= limit - size;
    if (ok)
        *used += size;
    pthread_mutex_unlock(&dev->mem_lock);
    return ok;
}

static void uncharge(fkv_bdev *dev, uint64_t *used, size_t size) {
    pthread_mutex_lock(&dev->mem_lock);
    *used -= size;
    pthread_mutex_unlock(&dev->mem_lock);
}

static fkv_status cpu_buffer_alloc(fkv_bdev *dev, size_t size, fkv_bbuf **out) {
    if (!charge(dev, &dev->device_used, dev->device_limit, size))
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY,
                         "cpu: %zu bytes exceed the device memory left (FREEKV_CPU_DEVICE_MEMORY "
                         "= %llu bytes)",
                         size, (unsigned long long)dev->device_limit);
    fkv_bbuf *b = calloc(1, sizeof *b);
    unsigned char *data = calloc(1, size); /* zeroed: results never depend on stale memory */
    if (b == NULL || data == NULL) {
        free(b);
        free(data);
        uncharge(dev, &dev->device_used, size);
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY, "cpu: cannot allocate %zu bytes", size);
    }
    b->data = data;
    b->desc = (fkv_mem_desc){.size = size, .base = (uintptr_t)data};
    fkv_count_device_alloc(&dev->counters);
    *out = b;
    return FKV_OK;
}

static fkv_status cpu_buffer_import(fkv_bdev *dev, void *native, size_t size, fkv_bbuf **out) {
    (void)dev;
    fkv_bbuf *b = calloc(1, sizeof *b);
    if (b == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "cpu: allocating a buffer handle");
    b->data = native;
    b->desc = (fkv_mem_desc){.size = size, .base = (uintptr_t)native};
    b->imported = 1;
    *out = b;
    return FKV_OK;
}

static void cpu_buffer_free(fkv_bdev *dev, fkv_bbuf *buf) {
    if (buf == NULL)
        return;
    if (!buf->imported) {
        free(buf->data);
        if (dev)
            uncharge(dev, &dev->device_used, buf->desc.size);
    }
    free(buf);
}

static fkv_status cpu_host_alloc(fkv_bdev *dev, size_t size, fkv_bhost **out, void **ptr) {
    if (size > SIZE_MAX - CPU_HOST_ALIGN)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "cpu: host allocation of %zu bytes", size);
    size_t rounded = (size + CPU_HOST_ALIGN - 1) / CPU_HOST_ALIGN * CPU_HOST_ALIGN;
    if (!charge(dev, &dev->host_used, dev->host_limit, size))
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY,
                         "cpu: %zu bytes exceed the host memory left (FREEKV_CPU_HOST_MEMORY = "
                         "%llu bytes)",
                         size, (unsigned long long)dev->host_limit);
    fkv_bhost *h = calloc(1, sizeof *h);
    unsigned char *data = aligned_alloc(CPU_HOST_ALIGN, rounded);
    if (h == NULL || data == NULL) {
        free(h);
        free(data);
        uncharge(dev, &dev->host_used, size);
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "cpu: cannot allocate %zu host bytes", size);
    }
    memset(data, 0, rounded);
    h->data = data;
    h->desc = (fkv_mem_desc){.size = size, .base = (uintptr_t)data};
    h->charged = size;
    fkv_count_host_alloc(&dev->counters);
    *out = h;
    *ptr = data;
    return FKV_OK;
}

static void cpu_host_free(fkv_bdev *dev, fkv_bhost *host) {
    if (host == NULL)
        return;
    free(host->data);
    if (dev)
        uncharge(dev, &dev->host_used, host->charged);
    free(host);
}

/* ---- what the enqueue entries share ----
 * The dispatch layer has checked every argument (backends/check.c) and turned zero work into a
 * marker; the entries check only the reference's own limits. */

/* On error nothing is queued and the caller's event pointer is cleared. */
static fkv_status fail(fkv_deps deps, fkv_status st) {
    if (deps.done)
        *deps.done = NULL;
    return st;
}

#define TRY(expr)                                   \
    do {                                            \
        fkv_status try_st_ = (expr);                \
        if (try_st_ != FKV_OK)                      \
            return fail(deps, try_st_);             \
    } while (0)

/* The reference's kernels keep one head_dim row on the stack (FKV_CPU_MAX_HEAD_DIM) and
 * count heads and tokens in 16 bits' worth of headroom. */
static fkv_status check_limits(const char *op, const fkv_kv_geom *g) {
    if (g->n_kv_heads > 65536 || g->group > 65536 || g->head_dim > FKV_CPU_MAX_HEAD_DIM ||
        g->page_size > 65536)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "cpu %s: geometry beyond the reference's limits (n_kv_heads %u, group "
                         "%u, head_dim %u (max %d), page_size %u; at most 65536 each)",
                         op, g->n_kv_heads, g->group, g->head_dim, FKV_CPU_MAX_HEAD_DIM,
                         g->page_size);
    return FKV_OK;
}

/* Rows both pools hold. */
static size_t pool_rows(const fkv_kv_geom *g, const fkv_bbuf *kpool, const fkv_bbuf *vpool) {
    size_t row_bytes = (size_t)g->n_kv_heads * g->head_dim * fkv_dtype_size(g->dtype);
    size_t smaller = kpool->desc.size < vpool->desc.size ? kpool->desc.size : vpool->desc.size;
    return smaller / row_bytes;
}

static unsigned char *at(const fkv_bbuf *buf, size_t off) { return buf->data + off; }

/* Counts a command against an armed fault; returns 1 when this one must fail. */
static int fault_due(fkv_bdev *dev) {
    int due = 0;
    pthread_mutex_lock(&dev->mem_lock);
    int mine = pthread_equal(dev->fault_thread, pthread_self()) != 0;
    if (dev->fault_at && mine == (dev->fault_threads == FKV_CPU_FAULT_THIS_THREAD)) {
        due = ++dev->fault_count == dev->fault_at;
        dev->fault_fired |= due;
    }
    pthread_mutex_unlock(&dev->mem_lock);
    return due;
}

static fkv_status run_injected(void *args) {
    (void)args; /* the command's own arguments, freed by the queue as usual */
    return fkv_error(FKV_ERR_BACKEND, "cpu: injected failure of a command when it ran");
}

static fkv_status run_copy(void *p);
static fkv_status run_regions(void *p);

/* Every enqueue entry ends here. A command handed to the queue thread is one submit, and a
 * launch unless it is a copy (counted by its entry, with its bytes) or a marker. */
static fkv_status submit(fkv_bdev *dev, fkv_queue q, cpu_cmd_fn fn, void *args, fkv_deps deps) {
    fkv_status st;
    if (fault_due(dev)) {
        if (dev->fault_kind == FKV_CPU_FAULT_ENQUEUE) {
            free(args);
            return fail(deps, fkv_error(FKV_ERR_BACKEND, "cpu: injected failure of a command "
                                                         "at enqueue"));
        }
        st = cpu_queue_submit_device_error(dev->queues[q], run_injected, args, deps.n_wait,
                                           deps.wait, deps.done);
    } else {
        st = cpu_queue_submit(dev->queues[q], fn, args, deps.n_wait, deps.wait, deps.done);
    }
    if (st == FKV_OK) {
        fkv_count_submit(&dev->counters, q);
        if (fn != NULL && fn != run_copy && fn != run_regions)
            fkv_count_launch(&dev->counters, q);
    }
    return st;
}

static fkv_status alloc_args(const char *op, size_t size, void **out) {
    *out = calloc(1, size);
    if (*out == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "cpu %s: allocating the command", op);
    return FKV_OK;
}

/* ---- events and queues ---- */

static fkv_status cpu_event_wait_op(fkv_bdev *dev, uint32_t n, fkv_bevent *const *events) {
    if (dev) /* events outlive their device: a wait after close has nothing to count on */
        fkv_count_wait(&dev->counters);
    return cpu_event_wait(n, events);
}

static fkv_status cpu_event_query(fkv_bdev *dev, fkv_bevent *ev, int *done) {
    (void)dev;
    *done = cpu_event_done(ev);
    return FKV_OK;
}

static void cpu_event_release_op(fkv_bdev *dev, fkv_bevent *ev) {
    (void)dev;
    cpu_event_release(ev);
}

static fkv_status cpu_marker(fkv_bdev *dev, fkv_queue q, fkv_deps deps) {
    return submit(dev, q, NULL, NULL, deps);
}

static fkv_status cpu_finish(fkv_bdev *dev, fkv_queue q) {
    fkv_bevent *ev = NULL;
    fkv_deps deps = {0, NULL, &ev};
    fkv_status st = cpu_marker(dev, q, deps);
    if (st != FKV_OK)
        return st;
    fkv_count_wait(&dev->counters);
    st = cpu_event_wait(1, &ev);
    cpu_event_release(ev);
    return st;
}

/* ---- copies ---- */

typedef struct copy_args {
    void *dst;
    const void *src;
    size_t size;
} copy_args;

static fkv_status run_copy(void *p) {
    copy_args *a = p;
    memmove(a->dst, a->src, a->size); /* copy() may overlap within one buffer */
    return FKV_OK;
}

static fkv_status enqueue_copy(fkv_bdev *dev, fkv_queue q, fkv_deps deps, void *dst,
                               const void *src, size_t size, fkv_copy_dir dir) {
    copy_args *a;
    TRY(alloc_args("copy", sizeof *a, (void **)&a));
    a->dst = dst;
    a->src = src;
    a->size = size;
    fkv_status st = submit(dev, q, run_copy, a, deps);
    if (st == FKV_OK)
        fkv_count_copy(&dev->counters, q, dir, size);
    return st;
}

static fkv_status cpu_write(fkv_bdev *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                            size_t dst_offset, const void *src, size_t size) {
    return enqueue_copy(dev, q, deps, at(dst, dst_offset), src, size, FKV_COPY_H2D);
}

static fkv_status cpu_read(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                           size_t src_offset, void *dst, size_t size) {
    return enqueue_copy(dev, q, deps, dst, at(src, src_offset), size, FKV_COPY_D2H);
}

static fkv_status cpu_copy(fkv_bdev *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                           size_t dst_offset, const fkv_bbuf *src, size_t src_offset,
                           size_t size) {
    return enqueue_copy(dev, q, deps, at(dst, dst_offset), at(src, src_offset), size,
                        FKV_COPY_D2D);
}

typedef struct regions_args {
    unsigned char *dst;
    uint32_t n;
    fkv_copy_region regions[]; /* copied: the caller's array may go away after the call */
} regions_args;

static fkv_status run_regions(void *p) {
    regions_args *a = p;
    for (uint32_t i = 0; i < a->n; i++)
        if (a->regions[i].size)
            memcpy(a->dst + a->regions[i].dst_offset, a->regions[i].src, a->regions[i].size);
    return FKV_OK;
}

static fkv_status cpu_write_regions(fkv_bdev *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                                    uint32_t n, const fkv_copy_region *regions) {
    regions_args *a;
    TRY(alloc_args("write_regions", sizeof *a + (size_t)n * sizeof a->regions[0], (void **)&a));
    a->dst = dst->data;
    a->n = n;
    memcpy(a->regions, regions, (size_t)n * sizeof *regions);
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; i++)
        bytes += regions[i].size;
    fkv_status st = submit(dev, q, run_regions, a, deps);
    if (st == FKV_OK) /* one command, however many regions */
        fkv_count_copy(&dev->counters, q, FKV_COPY_H2D, bytes);
    return st;
}

/* ---- kernels ---- */

typedef struct append_args {
    fkv_kv_geom g;
    const float *k, *v;
    uint32_t n_rows;
    const int32_t *rows;
    void *kpool, *vpool;
    size_t pool_rows;
} append_args;

static fkv_status run_append(void *p) {
    append_args *a = p;
    return cpu_append(&a->g, a->k, a->v, a->n_rows, a->rows, a->kpool, a->vpool, a->pool_rows);
}

static fkv_status cpu_append_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src,
                                size_t v_off, uint32_t n_rows, const fkv_bbuf *rows,
                                size_t rows_off, fkv_bbuf *kpool, fkv_bbuf *vpool) {
    const char *op = "append";
    append_args *a;
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    a->g = *g;
    a->n_rows = n_rows;
    a->pool_rows = pool_rows(g, kpool, vpool);
    a->k = (const float *)at(k_src, k_off);
    a->v = (const float *)at(v_src, v_off);
    a->rows = (const int32_t *)at(rows, rows_off);
    a->kpool = kpool->data;
    a->vpool = vpool->data;
    return submit(dev, q, run_append, a, deps);
}

typedef struct summarize_args {
    fkv_kv_geom g;
    const void *kpool;
    size_t pool_rows;
    uint32_t n_pages;
    const int32_t *pages;
    void *summaries;
    size_t n_summaries;
} summarize_args;

static fkv_status run_summarize(void *p) {
    summarize_args *a = p;
    return cpu_summarize(&a->g, a->kpool, a->pool_rows, a->n_pages, a->pages, a->summaries,
                         a->n_summaries);
}

static fkv_status cpu_summarize_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                   const fkv_kv_geom *g, const fkv_bbuf *kpool, uint32_t n_pages,
                                   const fkv_bbuf *pages, size_t pages_off,
                                   fkv_bbuf *summaries) {
    const char *op = "summarize";
    summarize_args *a;
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    a->g = *g;
    a->n_pages = n_pages;
    a->pool_rows = pool_rows(g, kpool, kpool);
    a->kpool = kpool->data;
    a->pages = (const int32_t *)at(pages, pages_off);
    a->summaries = summaries->data;
    a->n_summaries = summaries->desc.size / fkv_summary_bytes(g);
    return submit(dev, q, run_summarize, a, deps);
}

typedef struct scores_args {
    fkv_kv_geom g;
    const float *q;
    size_t q_rows;
    uint32_t n_seqs;
    const int32_t *desc, *mask;
    const void *summaries;
    size_t n_summaries;
    float *out;
    size_t out_len;
    cpu_isa isa;
    cpu_pool *pool;
} scores_args;

static fkv_status run_scores(void *p) {
    scores_args *a = p;
    return cpu_scores(&a->g, a->q, a->q_rows, a->n_seqs, a->desc, a->mask, a->summaries,
                      a->n_summaries, a->out, a->out_len, a->isa, a->pool);
}

static void scores_fill(scores_args *a, const fkv_bdev *dev, const fkv_kv_geom *g,
                        const fkv_bbuf *qbuf, size_t q_off,
                        uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                        const fkv_bbuf *mask, size_t mask_off, const fkv_bbuf *summaries,
                        fkv_bbuf *out, size_t out_off) {
    a->g = *g;
    a->isa = dev->isa;
    a->pool = dev->pool;
    a->n_seqs = n_seqs;
    a->q = (const float *)at(qbuf, q_off);
    a->q_rows = (qbuf->desc.size - q_off) /
                (sizeof(float) * g->n_kv_heads * g->group * g->head_dim);
    a->desc = (const int32_t *)at(desc, desc_off);
    a->mask = mask ? (const int32_t *)at(mask, mask_off) : NULL;
    a->summaries = summaries->data;
    a->n_summaries = summaries->desc.size / fkv_summary_bytes(g);
    a->out = (float *)at(out, out_off);
    a->out_len = (out->desc.size - out_off) / sizeof(float);
}

static fkv_status cpu_scores_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                                const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                                size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                                size_t out_off) {
    const char *op = "scores";
    scores_args *a;
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    scores_fill(a, dev, g, qbuf, q_off, n_seqs, desc, desc_off, mask, mask_off, summaries,
                out, out_off);
    return submit(dev, q, run_scores, a, deps);
}

typedef struct select_args {
    fkv_kv_geom g;
    uint32_t n_seqs;
    const int32_t *desc, *mask;
    float *scores;
    size_t scores_len;
    fkv_select_params p;
    int32_t *out;
    cpu_pool *pool;
} select_args;

static fkv_status run_select(void *p) {
    select_args *a = p;
    return cpu_select_pages(&a->g, a->n_seqs, a->desc, a->mask, a->scores, a->scores_len, &a->p,
                            a->out, a->pool);
}

static fkv_status cpu_select_pages_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                      const fkv_kv_geom *g, uint32_t n_seqs,
                                      const fkv_bbuf *desc, size_t desc_off,
                                      const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                                      size_t scores_off, const fkv_select_params *p,
                                      fkv_bbuf *out, size_t out_off) {
    const char *op = "select_pages";
    select_args *a;
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    a->g = *g;
    a->n_seqs = n_seqs;
    a->desc = (const int32_t *)at(desc, desc_off);
    a->mask = mask ? (const int32_t *)at(mask, mask_off) : NULL;
    a->scores = (float *)at(scores, scores_off);
    a->scores_len = (scores->desc.size - scores_off) / sizeof(float);
    a->p = *p;
    a->out = (int32_t *)at(out, out_off);
    a->pool = dev->pool;
    return submit(dev, q, run_select, a, deps);
}

typedef struct cosine_args {
    fkv_kv_geom g;
    const float *cur, *prev;
    size_t prev_count;
    const int32_t *prev_rows;
    uint32_t n_seqs;
    float tau;
    float *sims;
    int32_t *flags;
} cosine_args;

static fkv_status run_cosine(void *p) {
    cosine_args *a = p;
    return cpu_cosine_flags(&a->g, a->cur, a->prev, a->prev_count, a->prev_rows, a->n_seqs,
                            a->tau, a->sims, a->flags);
}

static void cosine_fill(cosine_args *a, const fkv_kv_geom *g, const fkv_bbuf *q_cur,
                        size_t cur_off, const fkv_bbuf *q_prev, size_t prev_off,
                        const fkv_bbuf *prev_rows, size_t rows_off, uint32_t n_seqs, float tau,
                        fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags, size_t flags_off) {
    a->g = *g;
    a->n_seqs = n_seqs;
    a->tau = tau;
    a->cur = (const float *)at(q_cur, cur_off);
    a->prev = (const float *)at(q_prev, prev_off);
    a->prev_count = (q_prev->desc.size - prev_off) /
                    (sizeof(float) * g->n_kv_heads * g->group * g->head_dim);
    a->prev_rows = (const int32_t *)at(prev_rows, rows_off);
    a->sims = (float *)at(sims, sims_off);
    a->flags = (int32_t *)at(flags, flags_off);
}

static fkv_status cpu_cosine_flags_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                      const fkv_kv_geom *g, const fkv_bbuf *q_cur,
                                      size_t cur_off, const fkv_bbuf *q_prev, size_t prev_off,
                                      const fkv_bbuf *prev_rows, size_t rows_off,
                                      uint32_t n_seqs, float tau, fkv_bbuf *sims,
                                      size_t sims_off, fkv_bbuf *flags, size_t flags_off) {
    const char *op = "cosine_flags";
    cosine_args *a;
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    cosine_fill(a, g, q_cur, cur_off, q_prev, prev_off, prev_rows, rows_off, n_seqs, tau, sims,
                sims_off, flags, flags_off);
    return submit(dev, q, run_cosine, a, deps);
}

/* scores_check: the check, then the scores, as one command (one launch counted). */
typedef struct scores_check_args {
    cosine_args check;
    scores_args scores;
} scores_check_args;

static fkv_status run_scores_check(void *p) {
    scores_check_args *a = p;
    fkv_status st = run_cosine(&a->check);
    if (st == FKV_OK)
        st = run_scores(&a->scores);
    return st == FKV_OK ? st : fkv_error_prefix(st, "scores_check"); /* the op's name */
}

static fkv_status cpu_scores_check_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                      const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                      uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                                      const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off,
                                      size_t cur_off, const fkv_bbuf *prev_rows,
                                      size_t rows_off, float tau, fkv_bbuf *sims,
                                      size_t sims_off, fkv_bbuf *flags, size_t flags_off) {
    const char *op = "scores_check";
    scores_check_args *a;
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    cosine_fill(&a->check, g, qbuf, cur_off, qbuf, q_off, prev_rows, rows_off, n_seqs, tau, sims,
                sims_off, flags, flags_off);
    scores_fill(&a->scores, dev, g, qbuf, q_off, n_seqs, desc, desc_off, NULL, 0,
                summaries, out, out_off);
    return submit(dev, q, run_scores_check, a, deps);
}

typedef struct pack_args {
    fkv_kv_geom g;
    const void *kpool, *vpool;
    size_t pool_rows;
    uint32_t n_pages;
    const int32_t *gslots;
    void *dst;
} pack_args;

static fkv_status run_pack(void *p) {
    pack_args *a = p;
    return cpu_pack_hnd(&a->g, a->kpool, a->vpool, a->pool_rows, a->n_pages, a->gslots, a->dst);
}

static fkv_status cpu_pack_hnd_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                  const fkv_kv_geom *g, const fkv_bbuf *kpool,
                                  const fkv_bbuf *vpool, uint32_t n_pages, const fkv_bbuf *gslots,
                                  size_t gslots_off, fkv_bbuf *dst, size_t dst_off) {
    const char *op = "pack_hnd";
    pack_args *a;
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    a->g = *g;
    a->n_pages = n_pages;
    a->pool_rows = pool_rows(g, kpool, vpool);
    a->kpool = kpool->data;
    a->vpool = vpool->data;
    a->gslots = (const int32_t *)at(gslots, gslots_off);
    a->dst = at(dst, dst_off);
    return submit(dev, q, run_pack, a, deps);
}

typedef struct scatter_args {
    fkv_kv_geom g;
    const void *src;
    uint32_t n_units;
    const int32_t *units;
    void *kpool, *vpool;
    size_t pool_rows;
} scatter_args;

static fkv_status run_scatter(void *p) {
    scatter_args *a = p;
    return cpu_scatter_hnd(&a->g, a->src, a->n_units, a->units, a->kpool, a->vpool,
                           a->pool_rows);
}

static fkv_status cpu_scatter_hnd_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                     const fkv_kv_geom *g, const fkv_bbuf *src, size_t src_off,
                                     uint32_t n_units, const fkv_bbuf *units, size_t units_off,
                                     fkv_bbuf *kpool, fkv_bbuf *vpool) {
    const char *op = "scatter_hnd";
    scatter_args *a;
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    a->g = *g;
    a->n_units = n_units;
    a->pool_rows = pool_rows(g, kpool, vpool);
    a->src = at(src, src_off);
    a->units = (const int32_t *)at(units, units_off);
    a->kpool = kpool->data;
    a->vpool = vpool->data;
    return submit(dev, q, run_scatter, a, deps);
}

typedef struct recall_args {
    fkv_kv_geom g;
    uint32_t n_units, n_hosts;
    const int32_t *units;
    void *kpool, *vpool;
    size_t pool_rows;
    cpu_host_view hosts[]; /* copied, so the caller's array is free after the call */
} recall_args;

static fkv_status run_recall(void *p) {
    recall_args *a = p;
    return cpu_recall_direct(&a->g, a->n_hosts, a->hosts, a->n_units, a->units, a->kpool,
                             a->vpool, a->pool_rows);
}

/* pack_hnd, scatter_hnd and recall_direct run the reference codec (common/hostfmt.c). */
static uint32_t cpu_host_formats(fkv_bdev *dev) {
    (void)dev;
    return 1u << FKV_HOST_Q8 | 1u << FKV_HOST_Q4;
}

static fkv_status cpu_recall_direct_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                       const fkv_kv_geom *g, uint32_t n_hosts,
                                       const fkv_bhost *const *hosts, uint32_t n_units,
                                       const fkv_direct_src *srcs, const fkv_bbuf *units,
                                       size_t units_off, fkv_bbuf *kpool, fkv_bbuf *vpool) {
    const char *op = "recall_direct";
    recall_args *a;
    (void)srcs; /* the worker reads the device table, as a GPU kernel does */
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a + (size_t)n_hosts * sizeof(cpu_host_view), (void **)&a));
    a->g = *g;
    a->n_units = n_units;
    a->n_hosts = n_hosts;
    a->pool_rows = pool_rows(g, kpool, vpool);
    for (uint32_t h = 0; h < n_hosts; h++)
        a->hosts[h] = (cpu_host_view){.data = hosts[h]->data, .size = hosts[h]->desc.size};
    a->units = (const int32_t *)at(units, units_off);
    a->kpool = kpool->data;
    a->vpool = vpool->data;
    return submit(dev, q, run_recall, a, deps);
}

typedef struct attention_args {
    fkv_kv_geom g;
    const float *q;
    uint32_t n_seqs;
    uint32_t n_tokens; /* dense only */
    const int32_t *heads, *entries;
    size_t n_entries;
    const void *kpool, *vpool;
    size_t pool_rows;
    float scale;
    float *out;
    cpu_isa isa;
    cpu_pool *pool;
} attention_args;

static fkv_status run_attention(void *p) {
    attention_args *a = p;
    return cpu_attention(&a->g, a->q, a->n_seqs, a->heads, a->entries, a->n_entries, a->kpool,
                         a->vpool, a->pool_rows, a->scale, a->out, a->isa, a->pool);
}

static fkv_status run_attention_dense(void *p) {
    attention_args *a = p;
    return cpu_attention_dense(&a->g, a->q, a->n_tokens, a->kpool, a->vpool, a->scale, a->out,
                               a->isa, a->pool);
}

static fkv_status cpu_attention_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                   const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                   uint32_t n_seqs, const fkv_bbuf *heads, size_t heads_off,
                                   const fkv_bbuf *entries, size_t entries_off,
                                   const fkv_bbuf *kpool, const fkv_bbuf *vpool, float scale,
                                   fkv_bbuf *out, size_t out_off) {
    const char *op = "attention";
    attention_args *a;
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    a->g = *g;
    a->n_seqs = n_seqs;
    a->scale = scale;
    a->isa = dev->isa;
    a->pool = dev->pool;
    a->pool_rows = pool_rows(g, kpool, vpool);
    a->q = (const float *)at(qbuf, q_off);
    a->heads = (const int32_t *)at(heads, heads_off);
    a->entries = (const int32_t *)at(entries, entries_off);
    a->n_entries = (entries->desc.size - entries_off) / (2 * sizeof(int32_t));
    a->kpool = kpool->data;
    a->vpool = vpool->data;
    a->out = (float *)at(out, out_off);
    return submit(dev, q, run_attention, a, deps);
}

static fkv_status cpu_attention_dense_op(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                         const fkv_kv_geom *g, const fkv_bbuf *qbuf,
                                         size_t q_off, uint32_t n_tokens, const fkv_bbuf *k,
                                         const fkv_bbuf *v, float scale, fkv_bbuf *out,
                                         size_t out_off) {
    const char *op = "attention_dense";
    attention_args *a;
    TRY(check_limits(op, g));
    TRY(alloc_args(op, sizeof *a, (void **)&a));
    a->g = *g;
    a->n_seqs = 1;
    a->n_tokens = n_tokens;
    a->scale = scale;
    a->isa = dev->isa;
    a->pool = dev->pool;
    a->q = (const float *)at(qbuf, q_off);
    a->out = (float *)at(out, out_off);
    a->kpool = k->data;
    a->vpool = v->data;
    return submit(dev, q, run_attention_dense, a, deps);
}

/* ---- fault injection (cpu_fault.h) ---- */

static fkv_status fault_device(fkv_device *dev, const char *fn, fkv_bdev **out) {
    if (dev == NULL || dev->ops->device_open != cpu_device_open)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: not a device of the CPU backend", fn);
    *out = dev->bdev;
    return FKV_OK;
}

fkv_status fkv_cpu_fault_arm(fkv_device *dev, uint64_t n, fkv_cpu_fault kind,
                             fkv_cpu_fault_threads threads) {
    fkv_bdev *d = NULL;
    fkv_status st = fault_device(dev, "fkv_cpu_fault_arm", &d);
    if (st != FKV_OK)
        return st;
    if (n == 0 || (kind != FKV_CPU_FAULT_ENQUEUE && kind != FKV_CPU_FAULT_RUN) ||
        (threads != FKV_CPU_FAULT_THIS_THREAD && threads != FKV_CPU_FAULT_OTHER_THREADS))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "fkv_cpu_fault_arm: command %llu, kind %d, threads %d",
                         (unsigned long long)n, (int)kind, (int)threads);
    pthread_mutex_lock(&d->mem_lock);
    d->fault_at = n;
    d->fault_count = 0;
    d->fault_kind = kind;
    d->fault_threads = threads;
    d->fault_fired = 0;
    d->fault_thread = pthread_self();
    pthread_mutex_unlock(&d->mem_lock);
    return FKV_OK;
}

fkv_status fkv_cpu_fault_disarm(fkv_device *dev, int *fired, uint64_t *counted) {
    fkv_bdev *d = NULL;
    fkv_status st = fault_device(dev, "fkv_cpu_fault_disarm", &d);
    if (st != FKV_OK)
        return st;
    pthread_mutex_lock(&d->mem_lock);
    if (fired)
        *fired = d->fault_fired;
    if (counted)
        *counted = d->fault_count;
    d->fault_at = 0;
    d->fault_count = 0;
    d->fault_fired = 0;
    pthread_mutex_unlock(&d->mem_lock);
    return FKV_OK;
}

static const fkv_bcounters *cpu_counters(fkv_bdev *dev) { return &dev->counters; }

/* ---- the table ---- */

static const fkv_backend_ops cpu_ops = {
    .abi_version = FKV_BACKEND_ABI_VERSION,
    .struct_size = sizeof(fkv_backend_ops),
    .name = "cpu",
    .device_count = cpu_device_count,
    .device_info = cpu_device_info,
    .device_open = cpu_device_open,
    .device_close = cpu_device_close,
    .buffer_alloc = cpu_buffer_alloc,
    .buffer_free = cpu_buffer_free,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .event_wait = cpu_event_wait_op,
    .event_release = cpu_event_release_op,
    .marker = cpu_marker,
    .finish = cpu_finish,
    .write = cpu_write,
    .read = cpu_read,
    .copy = cpu_copy,
    .append = cpu_append_op,
    .summarize = cpu_summarize_op,
    .scores = cpu_scores_op,
    .cosine_flags = cpu_cosine_flags_op,
    .pack_hnd = cpu_pack_hnd_op,
    .scatter_hnd = cpu_scatter_hnd_op,
    .attention = cpu_attention_op,
    .buffer_import = cpu_buffer_import,
    .write_regions = cpu_write_regions,
    .attention_dense = cpu_attention_dense_op,
    .recall_direct = cpu_recall_direct_op,
    .recall_mode = cpu_recall_mode,
    .opened_info = cpu_opened_info,
    .counters = cpu_counters,
    .select_pages = cpu_select_pages_op,
    .host_formats = cpu_host_formats,
    .event_query = cpu_event_query,
    .scores_check = cpu_scores_check_op,
};

const fkv_backend_ops *fkv_backend_cpu(void) { return &cpu_ops; }
