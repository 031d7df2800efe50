/* OpenCL backend internals, shared by the backend's .c files and its tests. */
#ifndef FKV_OPENCL_INTERNAL_H
#define FKV_OPENCL_INTERNAL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 300
#endif

#include <CL/cl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../backends/backend.h"
#include "../backends/counters.h"

/* Kernels of the program; every dtype program holds all of them. */
typedef enum ocl_kernel_id {
    K_APPEND,
    K_SUMMARIZE,
    K_SCORES,
    K_COSINE,
    K_SCORES_CHECK,
    K_PACK,
    K_PACK_V16,
    K_SCATTER,
    K_SCATTER_V16,
    K_DIRECT,
    K_DIRECT_V16,
    K_ATTENTION,
    K_ATTENTION_REDUCE,
    K_SELECT,
    K_QUANT_PACK,     /* host formats q8/q4 (common/hostfmt.h) */
    K_DEQUANT_SCATTER,
    K_DEQUANT_DIRECT,
    K_COUNT
} ocl_kernel_id;

extern const char *const fkv_ocl_kernel_names[K_COUNT];

/* The queues that run kernels (COMPUTE, BACKGROUND) each own a set of kernel objects:
 * clSetKernelArg + enqueue on a shared cl_kernel is not thread-safe. */
enum { OCL_KQ_COMPUTE = 0, OCL_KQ_BACKGROUND = 1, OCL_KQ_COUNT = 2 };

typedef struct ocl_program {
    int built;              /* kernels below are valid */
    fkv_status failed;      /* != FKV_OK: the build failed with `failed_msg` */
    char *failed_msg;
    int from_cache;         /* the binary came from the program cache */
    cl_program program;
    cl_kernel kernels[OCL_KQ_COUNT][K_COUNT];
    size_t wg_max[K_COUNT];        /* CL_KERNEL_WORK_GROUP_SIZE */
    cl_ulong local_used[K_COUNT];  /* CL_KERNEL_LOCAL_MEM_SIZE (static local memory) */
    cl_uint attention_vec;         /* the FKV_VW it was built with */
} ocl_program;

/* A zero-copy recall's table of host allocations (fine-grained SVM: the host fills it, the
 * kernel reads it, no copy command): n addresses and n sizes (cl_ulong), then the n pointers
 * again for clSetKernelExecInfo. `last` is the
 * launch that read it last; it is refilled once that completed. */
typedef struct ocl_host_table {
    void *mem;
    size_t cap; /* bytes */
    cl_event last;
} ocl_host_table;
enum { OCL_HOST_TABLES = 4 }; /* a ring: the one refilled is four recalls old */

/* Per kernel queue state, guarded by `lock`: kernel arguments, scratch buffers. */
typedef struct ocl_kqueue {
    pthread_mutex_t lock;
    cl_mem partials; /* split attention partial results */
    size_t partials_size;
    /* per (sequence, KV head, query-head block): the work groups of a fused split attention
     * that wrote their partials; zero between launches (the last one resets its counter) */
    cl_mem part_counts;
    size_t part_counts_size;
    ocl_host_table tables[OCL_HOST_TABLES];
    uint32_t next_table;
} ocl_kqueue;

struct fkv_bdev {
    cl_platform_id platform;
    cl_device_id device;
    cl_context context;
    cl_command_queue queues[FKV_QUEUE_COUNT];
    cl_command_queue aux; /* blocking map/unmap and allocation commits, off the hot queues */
    int engine_context;   /* the context is the engine's (fkv_device_open_native): kept */
    int engine_queue;     /* queues[FKV_QUEUE_COMPUTE] is the engine's: kept */
    fkv_device_info info;
    uint32_t index;

    cl_uint compute_units;
    cl_uint attention_vec; /* channels a work item of attention reads at a time (-DFKV_VW of
                              the programs built from now on; option attention_vector) */
    cl_ulong local_mem;
    cl_ulong local_mem_device; /* the device's own figure (shared_memory_bytes may lower the
                                  above) */
    cl_ulong max_alloc;
    int fine_svm;   /* fine-grained buffer SVM: kernels may read host allocations */
    int is_nvidia;
    int svm_host;   /* host_alloc hands out fine-grained SVM memory */
    fkv_recall_mode recall;

    char build_options[256];
    char cache_dir[1024]; /* "" = program cache disabled */
    char cache_key[1024]; /* platform, device, driver: part of every cache key */

    pthread_mutex_t build_lock; /* programs[] and the source override */
    ocl_program programs[3];    /* per fkv_dtype, built on first use */
    char *source_override;      /* option kernel_source: a replacement kernel source */
    atomic_uint cache_loads, cache_stores;

    ocl_kqueue kq[OCL_KQ_COUNT];
    uint32_t forced_splits; /* option attention_splits: 0 = automatic, n >= 1 = always n */
    /* device-scope atomics (OpenCL C 2.0, or 3.0 with its features): the program is built
     * with FKV_DEVICE_ATOMICS, and a split attention may combine its partials in its last
     * work group (fused_reduce, option attention_fused_reduce) instead of a second launch */
    int device_atomics, fused_reduce;
    int cpu_kernels; /* the programs are built with the CPU variants (CPU_KERNEL_OPTIONS) */
    fkv_bcounters counters; /* at the driver calls (ocl_memory.c, ocl_submit.c, kernels) */
};

/* desc.base is 0: cl_mem allocations are aligned, offsets are checked as they are. */
struct fkv_bbuf {
    fkv_mem_desc desc; /* first (backend.h) */
    cl_mem mem;
};

struct fkv_bhost {
    fkv_mem_desc desc; /* first (backend.h); base = ptr */
    cl_mem mem;        /* NULL for SVM memory */
    void *ptr;
    int svm;
};

/* The backend's files are layers, each calling only the layers before it (no file calls one
 * after it, so no two call each other): errors (ocl_error.c) -> memory (ocl_memory.c) ->
 * submission (ocl_submit.c) -> kernels (ocl_program.c, then ocl_kernels.c) -> device and ops
 * table (ocl_device.c). */

/* ---- errors (ocl_error.c) ---- */
const char *fkv_ocl_error_name(cl_int err);
/* A library status for an OpenCL error of `what`; allocation says CL_OUT_OF_RESOURCES
 * means device memory. The message names the call and the native code. */
fkv_status fkv_ocl_fail(cl_int err, int allocation, const char *what);

/* ---- memory (ocl_memory.c) ---- */
fkv_status fkv_ocl_buffer_alloc(fkv_bdev *d, size_t size, fkv_bbuf **out);
void fkv_ocl_buffer_free(fkv_bdev *d, fkv_bbuf *b);
fkv_status fkv_ocl_buffer_import(fkv_bdev *d, void *native, size_t size, fkv_bbuf **out);
fkv_status fkv_ocl_host_alloc(fkv_bdev *d, size_t size, fkv_bhost **out, void **ptr);
void fkv_ocl_host_free(fkv_bdev *d, fkv_bhost *h);

/* ---- submission (ocl_submit.c): events, queues, copies ---- */
/* Wait list of deps as cl_events (NULL entries skipped) in `buf` (or heap when larger);
 * free with fkv_ocl_waits_free. */
typedef struct ocl_waits {
    cl_event *list;
    cl_uint n;
    cl_event buf[16];
} ocl_waits;
fkv_status fkv_ocl_waits(const fkv_deps *deps, ocl_waits *w);
void fkv_ocl_waits_free(ocl_waits *w);
/* On every error path deps.done is left NULL: cleared first thing by each entry. */
static inline void fkv_ocl_clear_done(const fkv_deps *deps) {
    if (deps->done)
        *deps->done = NULL;
}
/* Hands a command's event to deps.done (or releases it). */
void fkv_ocl_done(const fkv_deps *deps, cl_event ev);
/* Counts one command enqueued on `queue` (one of d->queues): a submit, and a kernel launch
 * (launch != 0) or a copy of `bytes` in direction dir. */
void fkv_ocl_count(fkv_bdev *d, cl_command_queue queue, int launch, fkv_copy_dir dir,
                   size_t bytes);

fkv_status fkv_ocl_event_wait(fkv_bdev *d, uint32_t n, fkv_bevent *const *events);
void fkv_ocl_event_release(fkv_bdev *d, fkv_bevent *ev);
fkv_status fkv_ocl_event_query(fkv_bdev *d, fkv_bevent *ev, int *done);
fkv_status fkv_ocl_marker(fkv_bdev *d, fkv_queue q, fkv_deps deps);
/* The engine's cl_event (of this context) as a wait-list entry: retained, released by
 * fkv_ocl_event_release. */
fkv_status fkv_ocl_event_import(fkv_bdev *d, const fkv_native_event *ev, fkv_bevent **out);
/* sig->handle receives a new cl_event, the engine's, completing after deps.wait and q's
 * earlier commands. */
fkv_status fkv_ocl_event_signal(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_native_event *sig);
fkv_status fkv_ocl_finish(fkv_bdev *d, fkv_queue q);
fkv_status fkv_ocl_write(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                         size_t dst_offset, const void *src, size_t size);
fkv_status fkv_ocl_read(fkv_bdev *d, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                        size_t src_offset, void *dst, size_t size);
fkv_status fkv_ocl_copy(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                        size_t dst_offset, const fkv_bbuf *src, size_t src_offset, size_t size);

/* ---- programs (ocl_program.c) ---- */
/* The program of dtype, built (or loaded from the cache) on first use; thread-safe. */
fkv_status fkv_ocl_program(fkv_bdev *d, fkv_dtype dtype, ocl_program **out);
void fkv_ocl_program_release(ocl_program *p);
/* Replaces the kernel source for programs built from now on (NULL restores the embedded one)
 * and drops the programs already built (option kernel_source); no command may be in flight. */
fkv_status fkv_ocl_set_source(fkv_bdev *d, const char *source);
/* Sets the attention's vector width (4, 8 or 16) for programs built from now on and drops the
 * programs already built when it changes (option attention_vector); no command may be in
 * flight. */
void fkv_ocl_set_attention_vec(fkv_bdev *d, cl_uint vec);

/* ---- kernels (ocl_kernels.c): launches of the ops ---- */
fkv_status fkv_ocl_check_geometry(fkv_bdev *dev, const fkv_kv_geom *g, const fkv_geom_query *q);
uint32_t fkv_ocl_host_formats(fkv_bdev *dev);
fkv_status fkv_ocl_append(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                          const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src,
                          size_t v_off, uint32_t n_rows, const fkv_bbuf *rows, size_t rows_off,
                          fkv_bbuf *kpool, fkv_bbuf *vpool);
fkv_status fkv_ocl_summarize(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                             const fkv_bbuf *kpool, uint32_t n_pages, const fkv_bbuf *pages,
                             size_t pages_off, fkv_bbuf *summaries);
fkv_status fkv_ocl_scores(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                          const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                          const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                          size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                          size_t out_off);
fkv_status fkv_ocl_select_pages(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                                const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                                size_t scores_off, const fkv_select_params *p, fkv_bbuf *out,
                                size_t out_off);
fkv_status fkv_ocl_cosine_flags(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *q_cur, size_t cur_off, const fkv_bbuf *q_prev,
                                size_t prev_off, const fkv_bbuf *prev_rows, size_t rows_off,
                                uint32_t n_seqs, float tau, fkv_bbuf *sims, size_t sims_off,
                                fkv_bbuf *flags, size_t flags_off);
fkv_status fkv_ocl_scores_check(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                                const fkv_bbuf *desc, size_t desc_off,
                                const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off,
                                size_t cur_off, const fkv_bbuf *prev_rows, size_t rows_off,
                                float tau, fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                                size_t flags_off);
fkv_status fkv_ocl_pack_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *kpool, const fkv_bbuf *vpool, uint32_t n_pages,
                            const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                            size_t dst_off);
fkv_status fkv_ocl_scatter_hnd(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                               const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                               fkv_bbuf *vpool);
fkv_status fkv_ocl_attention(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                             const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                             const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                             size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                             float scale, fkv_bbuf *out, size_t out_off);
fkv_status fkv_ocl_attention_dense(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                   const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                   uint32_t n_tokens, const fkv_bbuf *k, const fkv_bbuf *v,
                                   float scale, fkv_bbuf *out, size_t out_off);
fkv_status fkv_ocl_recall_direct(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                 uint32_t n_hosts, const fkv_bhost *const *hosts, uint32_t n_units,
                                 const fkv_direct_src *srcs, const fkv_bbuf *units, size_t units_off,
                                 fkv_bbuf *kpool, fkv_bbuf *vpool);

#endif
