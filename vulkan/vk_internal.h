/* Vulkan backend internals, shared by the backend's .c files and its tests. */
#ifndef FKV_VULKAN_INTERNAL_H
#define FKV_VULKAN_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <vulkan/vulkan.h>

#include "../backends/backend.h"
#include "../backends/counters.h"

#define VK_N_BINDINGS 8 /* storage buffers of the one descriptor set layout */

/* Shader variants, in the order of shaders.def (the one list of them). */
typedef enum vk_shader_id {
#define FKV_VK_SHADER(name, ...) S_##name,
#include "shaders.def"
#undef FKV_VK_SHADER
    S_COUNT
} vk_shader_id;
/* The first of each group; the launches add the variant (shaders.def says how). */
#define S_APPEND S_append_f32         /* + dtype variant (vk_dtype_variant) */
#define S_SUMMARIZE S_summarize_f32   /* + dtype variant */
#define S_ATTENTION S_attention_f32   /* + dtype variant */
#define S_SCORES S_scores
#define S_COSINE S_cosine
#define S_SCORES_CHECK S_scores_check
#define S_ATTENTION_REDUCE S_attention_reduce
#define S_SELECT S_select
#define S_COPY S_copy0_w16 /* + mode * 4 + word variant (16, 4, 2, 1) */
#define S_QUANT S_quant0_f32 /* + mode * 5 + dtype variant (host formats q8/q4) */

extern const char *const fkv_vk_shader_names[S_COUNT];

/* Completion of one submission: a timeline semaphore reaching a value. */
typedef struct vk_event {
    VkSemaphore sem;
    uint64_t value;
} vk_event;

typedef struct vk_temp {
    VkBuffer buf;
    VkDeviceMemory mem;
    void *ptr; /* mapped, or NULL */
    VkDeviceSize size;
    int host_visible;
} vk_temp;

/* Grow-only scratch of one kind (device-local or host-visible) on one queue: the buffers not
 * in use, kept until the device closes. Taking one allocates only when none is large enough
 * (growth), so steady state allocates nothing. The owner locks it (its queue's lock). */
typedef struct vk_scratch {
    vk_temp *free;
    uint32_t n, cap;
} vk_scratch;

/* One submitted command buffer and what must live until it completes. */
typedef struct vk_record {
    VkCommandBuffer cb;
    uint64_t value;
    VkDescriptorSet *sets;
    uint32_t n_sets, cap_sets;
    vk_temp *temps;
    uint32_t n_temps, cap_temps;
} vk_record;

typedef struct vk_hwqueue {
    VkQueue queue;
    uint32_t family, index;
    pthread_mutex_t lock; /* vkQueueSubmit needs external synchronisation */
} vk_hwqueue;

/* One fkv_queue's submission stream: in order through its own timeline (every submission
 * waits for the previous value). The fkv queues that run on one VkQueue use the first one's
 * stream (vk_submit.c), unless the option separate_streams is set. `lock` guards everything
 * here (command and descriptor pools need external synchronisation too). */
typedef struct vk_fqueue {
    pthread_mutex_t lock;
    vk_hwqueue *hw;
    VkSemaphore timeline;
    uint64_t last;      /* value of the last command recorded */
    uint64_t submitted; /* value of the last command submitted (<= last) */
    /* Commands recorded but not yet submitted: one vkQueueSubmit takes them all, waiting for
     * the cross-queue waits of its first command and signalling `last` (fkv_vk_flush). */
    VkCommandBuffer *pend_cbs;
    uint32_t n_pend_cbs, cap_pend_cbs, n_pend_ops;
    VkSemaphore *pend_sems;
    uint64_t *pend_vals;
    VkPipelineStageFlags *pend_stages;
    uint32_t n_pend_waits, cap_pend_waits;
    /* values handed out (events, staged reads) and the ends of batches before a command that
     * waits on another queue: the pending commands up to mark_cbs[i] are one batch of the
     * submission that signals mark_vals[i], with the pending waits before mark_waits[i] (from
     * the previous mark's on) */
    uint32_t *mark_cbs, *mark_waits;
    uint64_t *mark_vals;
    uint32_t n_marks, cap_marks;
    VkSubmitInfo *pend_si;
    VkTimelineSemaphoreSubmitInfo *pend_ti;
    VkCommandPool pool;
    VkDescriptorPool dpool;
    vk_record *inflight; /* FIFO, oldest first */
    uint32_t n_inflight, cap_inflight;
    VkCommandBuffer *free_cbs;
    uint32_t n_free, cap_free;
    vk_scratch scratch[2]; /* [host_visible]: temporaries of this queue's commands */
    /* The fused split attention's arrival counters (attention.comp), VK_ARRIVALS of them:
     * zero between dispatches. The first command that uses them allocates them and records
     * their fill with zeros; `arrivals_zeroed` once that command is submitted. */
    vk_temp arrivals;
    int arrivals_zeroed;
} vk_fqueue;
/* (sequence, KV head, query-head block) groups a fused split attention covers; beyond, the
 * second dispatch (attention_reduce) combines the partials. */
#define VK_ARRIVALS 16384u

typedef struct vk_pipe {
    uint32_t shader, wg, smem;
    VkPipeline pipeline;
} vk_pipe;

/* A read into ordinary host memory: staged, copied out once its value is reached. */
typedef struct vk_pending_read {
    struct vk_fqueue *fq; /* whose scratch `temp` goes back to */
    VkSemaphore sem;
    uint64_t value;
    vk_temp temp;
    void *dst;
    size_t size;
} vk_pending_read;

struct fkv_bhost {
    fkv_mem_desc desc; /* first (backend.h); base = ptr */
    VkBuffer buf;
    VkDeviceMemory mem;
    void *ptr;
    void *raw;    /* the malloc'd block imported with VK_EXT_external_memory_host, or NULL */
    VkDeviceAddress addr; /* its device address (imported with bda), else 0 */
};

/* desc.base is 0: VkBuffer offsets are checked as they are (binding offsets are aligned down
 * to minStorageBufferOffsetAlignment by the launches). */
struct fkv_bbuf {
    fkv_mem_desc desc; /* first (backend.h) */
    VkBuffer buf;
    VkDeviceMemory mem; /* VK_NULL_HANDLE for an imported VkBuffer */
    /* What a binding may reach: desc.size rounded up to whole 32-bit words for our own
     * buffers, so that the 32-bit-word kernels read the last word of 16-bit data that ends
     * mid-word (a uint[] over a range of 4k+2 bytes has k words; the last element would read
     * as 0). An imported VkBuffer: the size the engine gave. */
    VkDeviceSize bound;
};

struct fkv_bdev {
    VkInstance instance;
    VkDebugUtilsMessengerEXT messenger;
    VkPhysicalDevice phys;
    VkDevice dev;
    fkv_device_info info;
    uint32_t index;
    int is_cpu;

    VkPhysicalDeviceMemoryProperties mem_props;
    VkDeviceSize max_range, max_alloc, align, import_align;
    uint32_t max_groups[3], max_wg, max_shared, subgroup, compute_units;
    const char *compute_units_source; /* the extension compute_units came from, or a default */
    uint32_t max_shared_device; /* the device's own figure (shared_memory_bytes may lower
                                   max_shared) */
    int s16;      /* 16-bit storage in use */
    int ext_host; /* VK_EXT_external_memory_host enabled */
    /* bufferDeviceAddress enabled with ext_host: imported host memory has device addresses,
     * and recall_direct reads any number of host allocations in one dispatch (copy.comp
     * MODE 3) */
    int bda;
    int concurrent; /* more than one queue family: buffers are shared concurrently */
    uint32_t families[FKV_QUEUE_COUNT], n_families;
    PFN_vkGetMemoryHostPointerPropertiesEXT get_host_ptr_props;

    vk_hwqueue hw[FKV_QUEUE_COUNT];
    uint32_t n_hw;
    char queue_note[192]; /* which VkQueue each fkv_queue runs on (option "queues") */
    vk_fqueue q[FKV_QUEUE_COUNT];

    fkv_recall_mode recall;
    int perpage_cmds; /* write_regions issues one command per region (FREEKV_VULKAN_RECALL=perpage) */
    /* option separate_streams: every fkv_queue submits on its own stream even where queues
     * share a VkQueue (as on a device with one per queue; tests of cross-queue batches) */
    int separate_streams;
    int import_host;  /* host_alloc imports malloc memory (hostptr) */
    char recall_note[256]; /* why "auto" chose the recall mode it did (recall_note) */

    /* VkDeviceMemory objects alive, against maxMemoryAllocationCount (max_allocs; the option
     * allocation_limit may lower it below the device's max_allocs_device) */
    atomic_uint live_allocs;
    uint32_t max_allocs, max_allocs_device;

    VkDescriptorSetLayout dsl;
    VkPipelineLayout layout;
    VkPipelineCache pcache;
    char cache_path[1200];
    VkShaderModule modules[S_COUNT];
    pthread_mutex_t pipe_lock;
    vk_pipe *pipes;
    uint32_t n_pipes, cap_pipes;

    pthread_mutex_t read_lock;
    vk_pending_read *reads;
    uint32_t n_reads, cap_reads, reads_reserved;

    pthread_mutex_t host_lock;
    fkv_bhost **hosts;
    uint32_t n_hosts, cap_hosts;

    vk_temp dummy; /* bound to the layout's unused bindings */
    uint32_t forced_splits; /* option attention_splits: 0 = automatic, n >= 1 = always n */
    int fused_reduce; /* option attention_fused_reduce: split attention in one dispatch */
    VkDeviceSize window_override; /* option window_bytes: windows of at most this many bytes (0:
                                     max_range) */
    atomic_uint validation_errors;
    fkv_bcounters counters; /* at the driver calls (vk_memory.c, vk_submit.c, kernels) */

    /* fkv_device_open_native: the instance, VkDevice and VkQueues are the engine's (never
     * destroyed here; close waits for freekv's timelines, not vkDeviceWaitIdle), and the
     * engine's lock of a VkQueue it shares, taken after hw->lock around each submission */
    int engine_device;
    uint32_t api_version; /* the instance's (VkApplicationInfo.apiVersion) */
    void (*lock_queue)(void *user, void *queue);
    void (*unlock_queue)(void *user, void *queue);
    void *lock_user;
};

/* vkQueueSubmit's external synchronisation: freekv's lock of the VkQueue, then the engine's
 * (when it handed its queues in with a lock). */
static inline void fkv_vk_hw_lock(const fkv_bdev *d, vk_hwqueue *hw) {
    pthread_mutex_lock(&hw->lock);
    if (d->lock_queue)
        d->lock_queue(d->lock_user, hw->queue);
}
static inline void fkv_vk_hw_unlock(const fkv_bdev *d, vk_hwqueue *hw) {
    if (d->unlock_queue)
        d->unlock_queue(d->lock_user, hw->queue);
    pthread_mutex_unlock(&hw->lock);
}

/* The backend's files are layers, each calling only the layers before it (no file calls one
 * after it, so no two call each other): errors (vk_error.c) -> memory (vk_memory.c) ->
 * submission (vk_submit.c) -> kernels (vk_pipeline.c, then vk_kernels.c) -> device and ops
 * table (vk_device.c). */

/* ---- errors (vk_error.c) ---- */
const char *fkv_vk_result_name(VkResult r);
/* A status for VkResult r of `what`; the message names the call and the code. */
fkv_status fkv_vk_fail(VkResult r, const char *what);

/* ---- memory (vk_memory.c) ---- */
fkv_status fkv_vk_temp_alloc(fkv_bdev *d, VkDeviceSize size, int host_visible, VkBufferUsageFlags usage,
                             vk_temp *t);
void fkv_vk_temp_free(fkv_bdev *d, vk_temp *t);
/* A buffer of at least `size` bytes from s (the smallest free one that fits), else a new one
 * (sizes round up to a power of two within maxStorageBufferRange, replacing the largest free
 * one too small), so that repeated sizes reuse buffers. */
fkv_status fkv_vk_scratch_take(fkv_bdev *d, vk_scratch *s, VkDeviceSize size, int host_visible,
                               vk_temp *out);
/* Back to s for reuse (freed if the list cannot grow). */
void fkv_vk_scratch_give(fkv_bdev *d, vk_scratch *s, vk_temp *t);
void fkv_vk_scratch_destroy(fkv_bdev *d, vk_scratch *s);
fkv_status fkv_vk_buffer_alloc(fkv_bdev *d, size_t size, fkv_bbuf **out);
void fkv_vk_buffer_free(fkv_bdev *d, fkv_bbuf *b);
fkv_status fkv_vk_buffer_import(fkv_bdev *d, void *native, size_t size, fkv_bbuf **out);
fkv_status fkv_vk_host_alloc(fkv_bdev *d, size_t size, fkv_bhost **out, void **ptr);
void fkv_vk_host_free(fkv_bdev *d, fkv_bhost *h);
/* The host allocation holding [p, p+size), with p's offset in it; NULL if none. */
fkv_bhost *fkv_vk_find_host(fkv_bdev *d, const void *p, size_t size, VkDeviceSize *offset);
/* Whether malloc'd memory can back storage buffers here (the driver's word, then one real
 * import), at device open. */
fkv_status fkv_vk_probe_import(fkv_bdev *d);
/* Option break_import, process-wide: host-memory imports fail as on a driver that cannot. */
extern atomic_int fkv_vk_import_broken;

/* ---- submission (vk_submit.c): queues, command recording, events, copies ---- */
fkv_status fkv_vk_fqueue_init(fkv_bdev *d, vk_fqueue *fq, vk_hwqueue *hw, int kernels);
void fkv_vk_fqueue_destroy(fkv_bdev *d, vk_fqueue *fq);
typedef struct vk_cmd {
    fkv_bdev *d;
    fkv_queue q;   /* the fkv_queue it was recorded for (what the counters count it on) */
    vk_fqueue *fq; /* its submission stream (fkv queues on one VkQueue share one) */
    vk_record rec;
    uint32_t n_dispatch;
} vk_cmd;
/* Locks the queue and starts a command buffer (marker: none). */
fkv_status fkv_vk_cmd_begin(fkv_bdev *d, fkv_queue q, int marker, vk_cmd *c);
/* Counts one command recorded into c: a dispatch (launch != 0), or a copy or fill of `bytes`
 * in direction dir. */
void fkv_vk_count(const vk_cmd *c, int launch, fkv_copy_dir dir, uint64_t bytes);
fkv_status fkv_vk_cmd_temp(vk_cmd *c, VkDeviceSize size, int host_visible, vk_temp *out);
fkv_status fkv_vk_cmd_set(vk_cmd *c, VkDescriptorSet *out);
/* Ends the command buffer and queues it after deps.wait and the queue's previous command,
 * unlocks. It is submitted with the stream's neighbouring commands in one vkQueueSubmit: when
 * something waits on it or a later command (event_wait, a command of another stream, finish),
 * or at 64 commands; a wait on another stream starts a batch of that submission. */
fkv_status fkv_vk_cmd_submit(vk_cmd *c, const fkv_deps *deps, vk_event *value_out);
/* Submits the queue's recorded commands (no-op when none). */
fkv_status fkv_vk_flush(fkv_bdev *d, fkv_queue q);
void fkv_vk_cmd_abort(vk_cmd *c);
static inline void fkv_vk_clear_done(const fkv_deps *deps) {
    if (deps->done)
        *deps->done = NULL;
}
/* Copies out the staged reads that have completed. */
void fkv_vk_sweep_reads(fkv_bdev *d);
fkv_status fkv_vk_marker(fkv_bdev *d, fkv_queue q, fkv_deps deps);
fkv_status fkv_vk_event_wait(fkv_bdev *d, uint32_t n, fkv_bevent *const *events);
void fkv_vk_event_release(fkv_bdev *d, fkv_bevent *ev);
fkv_status fkv_vk_event_query(fkv_bdev *d, fkv_bevent *ev, int *done);
fkv_status fkv_vk_finish(fkv_bdev *d, fkv_queue q);
fkv_status fkv_vk_write(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                        size_t dst_offset, const void *src, size_t size);
fkv_status fkv_vk_write_regions(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                                uint32_t n, const fkv_copy_region *regions);
fkv_status fkv_vk_read(fkv_bdev *d, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                       size_t src_offset, void *dst, size_t size);
fkv_status fkv_vk_copy(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                       size_t dst_offset, const fkv_bbuf *src, size_t src_offset, size_t size);

/* ---- the engine's events (vk_interop.c), on the submission layer ---- */
/* (semaphore, value) of the engine's timeline as a wait-list entry (freed by unimport). */
fkv_status fkv_vk_event_import(fkv_bdev *d, const fkv_native_event *ev, fkv_bevent **out);
/* One vkQueueSubmit on q's VkQueue that waits for a marker after deps.wait and q's earlier
 * commands and signals the engine's timeline semaphore sig->handle to sig->value. */
fkv_status fkv_vk_event_signal(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_native_event *sig);
/* lock_queue/unlock_queue of fkv_device_get_native: the hw lock of `queue` (user is d). */
void fkv_vk_lock_queue(void *user, void *queue);
void fkv_vk_unlock_queue(void *user, void *queue);

/* ---- kernels: pipelines (vk_pipeline.c) ---- */
#define VK_PUSH_BYTES 80 /* push constants of every shader (128 is the guaranteed minimum) */
fkv_status fkv_vk_pipelines_init(fkv_bdev *d);
void fkv_vk_pipelines_destroy(fkv_bdev *d);
/* The pipeline of (shader, workgroup size, shared floats), created on first use. */
fkv_status fkv_vk_pipeline(fkv_bdev *d, uint32_t shader, uint32_t wg, uint32_t smem,
                           VkPipeline *out);

/* ---- kernels: launches of the ops (vk_kernels.c) ---- */
fkv_status fkv_vk_check_geometry(fkv_bdev *d, const fkv_kv_geom *g, const fkv_geom_query *q);
uint32_t fkv_vk_host_formats(fkv_bdev *d);
fkv_status fkv_vk_append(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src, size_t v_off,
                         uint32_t n_rows, const fkv_bbuf *rows, size_t rows_off, fkv_bbuf *kpool,
                         fkv_bbuf *vpool);
fkv_status fkv_vk_summarize(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *kpool, uint32_t n_pages, const fkv_bbuf *pages,
                            size_t pages_off, fkv_bbuf *summaries);
fkv_status fkv_vk_scores(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs, const fkv_bbuf *desc,
                         size_t desc_off, const fkv_bbuf *mask, size_t mask_off,
                         const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off);
fkv_status fkv_vk_select_pages(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                               const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                               size_t scores_off, const fkv_select_params *p, fkv_bbuf *out,
                               size_t out_off);
fkv_status fkv_vk_cosine_flags(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *q_cur, size_t cur_off, const fkv_bbuf *q_prev,
                               size_t prev_off, const fkv_bbuf *prev_rows, size_t rows_off,
                               uint32_t n_seqs, float tau, fkv_bbuf *sims, size_t sims_off,
                               fkv_bbuf *flags, size_t flags_off);
fkv_status fkv_vk_scores_check(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                               const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *summaries,
                               fkv_bbuf *out, size_t out_off, size_t cur_off,
                               const fkv_bbuf *prev_rows, size_t rows_off, float tau,
                               fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                               size_t flags_off);
fkv_status fkv_vk_pack_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                           const fkv_bbuf *kpool, const fkv_bbuf *vpool, uint32_t n_pages,
                           const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                           size_t dst_off);
fkv_status fkv_vk_scatter_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                              const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                              const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                              fkv_bbuf *vpool);
fkv_status fkv_vk_attention(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                            const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                            size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                            float scale, fkv_bbuf *out, size_t out_off);
fkv_status fkv_vk_attention_dense(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                  const fkv_bbuf *qbuf, size_t q_off, uint32_t n_tokens,
                                  const fkv_bbuf *k, const fkv_bbuf *v, float scale,
                                  fkv_bbuf *out, size_t out_off);
fkv_status fkv_vk_recall_direct(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                uint32_t n_hosts, const fkv_bhost *const *hosts, uint32_t n_units,
                                const fkv_direct_src *srcs, const fkv_bbuf *units, size_t units_off,
                                fkv_bbuf *kpool, fkv_bbuf *vpool);
/* direct_host_words: each allocation's device address and byte size (direct_by_address). */
void fkv_vk_direct_host_words(fkv_bdev *dev, uint32_t n_hosts, const fkv_bhost *const *hosts,
                              int32_t *out);

/* ---- device (vk_device.c) ---- */
/* Which VkQueue each fkv_queue runs on: a pure function of the device's queue families, so
 * tests run it over synthetic lists. COMPUTE takes queue 0 of the first compute family;
 * BACKGROUND a second queue of that family, else an async-compute family (compute without
 * graphics), else COMPUTE's queue; TRANSFER a transfer-only family, else an unused queue of a
 * compute family, else COMPUTE's queue. */
typedef struct vk_queue_plan {
    uint32_t family[FKV_QUEUE_COUNT], index[FKV_QUEUE_COUNT]; /* by fkv_queue */
    /* the distinct families, to create with count[i] queues each */
    uint32_t families[FKV_QUEUE_COUNT], count[FKV_QUEUE_COUNT], n_families;
} vk_queue_plan;
/* 0 when no family has compute. */
int fkv_vk_plan_queues(const VkQueueFamilyProperties *fp, uint32_t n, vk_queue_plan *plan);

#endif
