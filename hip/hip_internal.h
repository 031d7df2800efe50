/* HIP backend internals, shared by the backend's .c files. Plain C11 on the HIP runtime API
 * (or on CUDA through hip_cuda_compat.h); the kernels are in kernels.hip behind the launchers
 * of hip_kernels.h.
 *
 * The files are layers, each calling only the layers before it (no file calls one after it,
 * so no two call each other): errors (hip_error.c) -> memory (hip_memory.c) -> submission
 * (hip_submit.c) -> kernels (hip_launch.c) -> device and ops table (hip_device.c). */
#ifndef FKV_HIP_INTERNAL_H
#define FKV_HIP_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "../backends/backend.h"
#include "../backends/counters.h"
#include "hip_platform.h"

#ifdef FKV_HIP_ON_CUDA
#define FKV_HIP_RUNTIME "HIP-on-CUDA"
#else
#define FKV_HIP_RUNTIME "HIP"
#endif

/* Per-queue scratch, guarded by `lock` from its first use to the last enqueue of an op. */
typedef struct hip_scratch {
    pthread_mutex_t lock;
    void *partials; /* split attention partial results (device) */
    size_t partials_size;
    /* the fused split attention's arrival counters (device), zero between launches */
    void *arrivals;
    size_t arrivals_size;
    void *tmp; /* overlapping copy within one buffer (device) */
    size_t tmp_size;
} hip_scratch;

struct fkv_bdev {
    int index; /* HIP device ordinal */
    hipStream_t streams[FKV_QUEUE_COUNT];
    int engine_stream; /* streams[FKV_QUEUE_COMPUTE] is the engine's (fkv_device_open_native):
                          never destroyed here */
    fkv_device_info info;
    uint32_t compute_units;
    size_t shared_per_block; /* bytes of shared memory a block may use */
    size_t shared_device;    /* the device's own figure (shared_memory_bytes may lower the
                                above) */
    int can_map_host;        /* kernels can read mapped pinned host memory */
    fkv_recall_mode recall;
    hip_scratch scratch[FKV_QUEUE_COUNT];
    uint32_t forced_splits; /* option attention_splits: 0 = automatic, n >= 1 = always n */
    int fused_reduce;       /* option attention_fused_reduce: split attention in one launch */
    fkv_bcounters counters; /* at the driver calls (hip_memory.c, hip_submit.c, hip_launch.c) */
};

/* desc.base is the pointer: an imported pointer need not be aligned, so offsets are checked
 * against the real addresses. */
struct fkv_bbuf {
    fkv_mem_desc desc; /* first (backend.h) */
    void *ptr;         /* device pointer */
    int imported;      /* owned by the engine: never freed here */
};

struct fkv_bhost {
    fkv_mem_desc desc; /* first (backend.h); base = ptr */
    void *ptr;         /* host address */
    void *dev_ptr;     /* the device's view of it (mapped), NULL when the device cannot map */
};

/* ---- errors (hip_error.c) ---- */

typedef enum hip_alloc_kind { HIP_NOT_ALLOC = 0, HIP_DEVICE_ALLOC = 1, HIP_HOST_ALLOC = 2 } hip_alloc_kind;

/* A library status for a failed HIP call `what`: out of memory is device or host memory by
 * `kind`; the message keeps the native code, its name and hipGetErrorString. */
fkv_status fkv_hip_fail(hipError_t err, hip_alloc_kind kind, const char *what);
/* Makes dev the calling thread's current device (HIP's current device is per thread and the
 * core calls in from two threads). */
fkv_status fkv_hip_bind(fkv_bdev *d);

/* ---- memory (hip_memory.c) ---- */
fkv_status fkv_hip_buffer_alloc(fkv_bdev *d, size_t size, fkv_bbuf **out);
void fkv_hip_buffer_free(fkv_bdev *d, fkv_bbuf *b);
fkv_status fkv_hip_buffer_import(fkv_bdev *d, void *native, size_t size, fkv_bbuf **out);
fkv_status fkv_hip_host_alloc(fkv_bdev *d, size_t size, fkv_bhost **out, void **ptr);
void fkv_hip_host_free(fkv_bdev *d, fkv_bhost *h);
/* Pinned host memory (mapped, with its device view in *dev_ptr, when the device can map);
 * free with hipHostFree. */
fkv_status fkv_hip_host_malloc(fkv_bdev *d, size_t size, void **ptr, void **dev_ptr);
/* Grows a per-queue device scratch buffer to `need` bytes; the old one is freed after the
 * queue's stream drained (rare: scratch only grows). Caller holds the queue's lock. */
fkv_status fkv_hip_scratch(fkv_bdev *d, fkv_queue q, void **mem, size_t *size, size_t need);

/* ---- submission (hip_submit.c): events, streams, copies ---- */
/* On every error path deps.done is left NULL: cleared first thing by each entry. */
static inline void fkv_hip_clear_done(const fkv_deps *deps) {
    if (deps->done)
        *deps->done = NULL;
}
/* Makes stream wait for every non-NULL event of deps (on the device, not the host). */
fkv_status fkv_hip_wait(hipStream_t stream, const fkv_deps *deps);
/* Records the completion event of the command just enqueued on stream into *deps->done. */
fkv_status fkv_hip_done(hipStream_t stream, const fkv_deps *deps);
/* Counts one command enqueued on q's stream: a submit, and a kernel launch (launch != 0) or
 * an async copy of `bytes` in direction dir. */
void fkv_hip_count(fkv_bdev *d, fkv_queue q, int launch, fkv_copy_dir dir, size_t bytes);
fkv_status fkv_hip_event_wait(fkv_bdev *d, uint32_t n, fkv_bevent *const *events);
fkv_status fkv_hip_event_query(fkv_bdev *d, fkv_bevent *ev, int *done);
void fkv_hip_event_release(fkv_bdev *d, fkv_bevent *ev);
fkv_status fkv_hip_marker(fkv_bdev *d, fkv_queue q, fkv_deps deps);
/* The engine's hipEvent_t as a wait-list entry (the event itself: streams wait on it as
 * recorded when the entry's command is enqueued); unimport leaves it to the engine. */
fkv_status fkv_hip_event_import(fkv_bdev *d, const fkv_native_event *ev, fkv_bevent **out);
void fkv_hip_event_unimport(fkv_bdev *d, fkv_bevent *ev);
/* Records the engine's event sig->handle on q's stream after deps.wait. */
fkv_status fkv_hip_event_signal(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_native_event *sig);
fkv_status fkv_hip_finish(fkv_bdev *d, fkv_queue q);
fkv_status fkv_hip_write(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                         size_t dst_offset, const void *src, size_t size);
fkv_status fkv_hip_read(fkv_bdev *d, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                        size_t src_offset, void *dst, size_t size);
fkv_status fkv_hip_copy(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                        size_t dst_offset, const fkv_bbuf *src, size_t src_offset, size_t size);

/* ---- kernels (hip_launch.c): launches of the ops ---- */
fkv_status fkv_hip_append(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                          const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src,
                          size_t v_off, uint32_t n_rows, const fkv_bbuf *rows, size_t rows_off,
                          fkv_bbuf *kpool, fkv_bbuf *vpool);
fkv_status fkv_hip_summarize(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                             const fkv_bbuf *kpool, uint32_t n_pages, const fkv_bbuf *pages,
                             size_t pages_off, fkv_bbuf *summaries);
fkv_status fkv_hip_check_geometry(fkv_bdev *dev, const fkv_kv_geom *g, const fkv_geom_query *q);
uint32_t fkv_hip_host_formats(fkv_bdev *dev);
fkv_status fkv_hip_scores(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                          const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                          const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                          size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                          size_t out_off);
fkv_status fkv_hip_select_pages(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                                const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                                size_t scores_off, const fkv_select_params *p, fkv_bbuf *out,
                                size_t out_off);
fkv_status fkv_hip_cosine_flags(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *q_cur, size_t cur_off, const fkv_bbuf *q_prev,
                                size_t prev_off, const fkv_bbuf *prev_rows, size_t rows_off,
                                uint32_t n_seqs, float tau, fkv_bbuf *sims, size_t sims_off,
                                fkv_bbuf *flags, size_t flags_off);
fkv_status fkv_hip_scores_check(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                                const fkv_bbuf *desc, size_t desc_off,
                                const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off,
                                size_t cur_off, const fkv_bbuf *prev_rows, size_t rows_off,
                                float tau, fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                                size_t flags_off);
fkv_status fkv_hip_pack_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *kpool, const fkv_bbuf *vpool, uint32_t n_pages,
                            const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                            size_t dst_off);
fkv_status fkv_hip_scatter_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                               const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                               fkv_bbuf *vpool);
fkv_status fkv_hip_attention(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                             const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                             const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                             size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                             float scale, fkv_bbuf *out, size_t out_off);
fkv_status fkv_hip_attention_dense(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                   const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                   uint32_t n_tokens, const fkv_bbuf *k, const fkv_bbuf *v,
                                   float scale, fkv_bbuf *out, size_t out_off);
void fkv_hip_direct_host_words(fkv_bdev *dev, uint32_t n_hosts, const fkv_bhost *const *hosts,
                               int32_t *out);
fkv_status fkv_hip_recall_direct(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                 uint32_t n_hosts, const fkv_bhost *const *hosts, uint32_t n_units,
                                 const fkv_direct_src *srcs, const fkv_bbuf *units, size_t units_off,
                                 fkv_bbuf *kpool, fkv_bbuf *vpool);

#endif
