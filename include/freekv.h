/* freekv: KV-cache retrieval for long-context decoding (FreeKV method), portable C API.
 *
 * Conventions
 *  - Every function that can fail returns fkv_status (0 = FKV_OK, errors negative).
 *    On error, fkv_last_error() returns a message for the calling thread, and the
 *    objects involved are left as they were before the call (what exactly, for device
 *    errors, under "Failures" below).
 *  - Handles are opaque. Whoever creates a handle destroys it; destroying NULL is a no-op.
 *  - The library never calls abort() or exit().
 *  - Tensors handed in (q, k, v) and out are f32 activations; the KV cache is stored in
 *    the context's dtype (f32, f16 or bf16).
 */
#ifndef FREEKV_H
#define FREEKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(FREEKV_SHARED_BUILD)
#define FKV_API __declspec(dllexport)
#elif defined(__GNUC__)
#define FKV_API __attribute__((visibility("default")))
#else
#define FKV_API
#endif

/* Threads and thread safety
 *
 * Which calls may run at the same time:
 *  - Any thread, any time: fkv_backend_count/name, fkv_device_list, fkv_device_pick,
 *    fkv_device_open, fkv_device_open_native, and the pure helpers (fkv_config_init/validate,
 *    fkv_*_name, fkv_policy_parse, fkv_status_string, fkv_caps_string, fkv_dtype_size). Driver
 *    enumeration and device opening are serialised inside the library, because a driver's
 *    first use is not thread-safe everywhere (the OpenCL ICD loader with PoCL crashes);
 *    nothing else waits on that lock. fkv_last_error is per thread.
 *  - One device, several threads: fkv_device_get_info, fkv_device_get_native, the
 *    fkv_buffer_* calls on distinct buffers, and calls on distinct contexts of the device may
 *    overlap (the contexts share the device's queues, so a device error in one context's work
 *    can be reported by a call of another context on that device). fkv_device_close must not
 *    overlap any use of the device.
 *  - One context: one call at a time, from any thread (the caller serialises them; the
 *    getters fkv_context_get_stats/get_corrections/attended_pages included). A buffer is
 *    likewise used by one call at a time.
 *
 * Lifetimes: release every fkv_buffer and destroy every fkv_context of a device before
 * fkv_device_close; both keep the device and use it when released.
 *
 * Threads the library starts (all joined when their owner is destroyed or closed):
 *  - per context of the speculative and freekv policies: one worker thread that runs the
 *    speculative selection and recall of each layer in the background, between calls;
 *  - per context of the offload policies (sync, speculative, freekv): a pool of up to three
 *    threads (min(4, CPUs) - 1) that gather pages from the host pool for recalls;
 *  - per device of the CPU reference backend: one thread per queue (three);
 *  - drivers start their own (PoCL, lavapipe, the HIP runtime), as documented by them.
 *
 * Failures
 *
 * A call that fails leaves the context as it was, also when the device fails during the
 * call: a failed fkv_decode_layer keeps no token, does not advance the layer order, reserves
 * no host memory, attends no new pages and counts nothing in the statistics, and retrying it
 * gives the output it would have given the first time. What it does not undo: the output
 * tensor (caller memory) may have been written in part; and pages the call was recalling into
 * device slots are dropped from the selection rather than restored, so the retry recalls
 * them again (fkv_stats.pages_recalled counts them twice). A failed fkv_prefill leaves the
 * sequence empty at that layer and the layer order unchanged.
 * Background work can fail after the call that started it returned (the speculative recall
 * of a layer): the failure is reported once, by the next fkv_decode_layer of that layer or by
 * fkv_context_sync (which fkv_context_read_kv and fkv_sequence_reset call), whichever comes
 * first. The pages that recall was bringing are dropped from the selection, so the next
 * steps may attend fewer pages than an error-free run until the next selection brings them
 * back; stored tokens are never affected.
 * A fkv_decode_layer whose output is a device buffer returns once its commands are enqueued
 * (see fkv_decode_layer): a device failure of those commands is reported the same way, once,
 * by the next call that touches that layer (fkv_decode_layer, fkv_prefill) or by
 * fkv_context_sync, whichever comes first; the call that reports it fails and leaves the
 * context as it was. The call whose commands failed had succeeded, so its effects stay: its
 * output and the token it appended to each of its sequences are undefined (reset those
 * sequences to recover), and the pages its recalls were bringing are dropped from the
 * selection as above. */

#define FKV_VERSION_MAJOR 0
#define FKV_VERSION_MINOR 1
#define FKV_VERSION_PATCH 0

/* The one table of status codes: X(name, value, message). */
#define FKV_STATUS_TABLE(X)                                                              \
    X(FKV_OK, 0, "success")                                                              \
    X(FKV_ERR_INVALID_ARGUMENT, -1, "invalid argument")                                  \
    X(FKV_ERR_INVALID_CONFIG, -2, "invalid configuration")                               \
    X(FKV_ERR_OUT_OF_HOST_MEMORY, -3, "out of host memory")                              \
    X(FKV_ERR_OUT_OF_DEVICE_MEMORY, -4, "out of device memory")                          \
    X(FKV_ERR_NO_DEVICE, -5, "no such backend or device")                                \
    X(FKV_ERR_BAD_ENVIRONMENT, -6, "bad environment variable")                           \
    X(FKV_ERR_UNSUPPORTED, -7, "unsupported by this backend or device")                  \
    X(FKV_ERR_BACKEND, -8, "backend (driver) error")                                     \
    X(FKV_ERR_BAD_STATE, -9, "call out of order")                                        \
    X(FKV_ERR_CONTEXT_FULL, -10, "sequence reached the configured maximum context")      \
    X(FKV_ERR_WRONG_DEVICE, -11, "memory belongs to another device")                     \
    X(FKV_ERR_IO, -12, "input/output error")                                             \
    X(FKV_ERR_BAD_FILE, -13, "malformed or corrupt file")                                \
    X(FKV_ERR_KERNEL_BUILD, -14, "device program failed to build")

typedef enum fkv_status {
#define FKV_X_ENUM(name, value, msg) name = value,
    FKV_STATUS_TABLE(FKV_X_ENUM)
#undef FKV_X_ENUM
} fkv_status;

/* Static description of a status code ("unknown status" for values not in the table). */
FKV_API const char *fkv_status_string(int status);
/* Detailed message of the last failed call on this thread; "" if none. Never NULL. */
FKV_API const char *fkv_last_error(void);

typedef enum fkv_dtype { FKV_F32 = 0, FKV_F16 = 1, FKV_BF16 = 2 } fkv_dtype;
FKV_API const char *fkv_dtype_name(fkv_dtype dtype);
FKV_API size_t fkv_dtype_size(fkv_dtype dtype); /* 0 for an unknown dtype */

/* ---- backends and devices ------------------------------------------------------------ */

typedef enum fkv_device_type {
    FKV_DEVICE_DISCRETE_GPU = 0,
    FKV_DEVICE_INTEGRATED_GPU = 1,
    FKV_DEVICE_CPU = 2,       /* a CPU device of a GPU API (PoCL, lavapipe) */
    FKV_DEVICE_REFERENCE = 3, /* the built-in CPU reference backend */
    FKV_DEVICE_OTHER = 4
} fkv_device_type;
FKV_API const char *fkv_device_type_name(fkv_device_type type);

/* Capability bits. */
enum {
    FKV_CAP_ASYNC_COPY = 1u << 0,        /* copies run asynchronously to the host thread */
    FKV_CAP_DEVICE_WAIT = 1u << 1,       /* a queue can wait on an event without the host */
    FKV_CAP_PINNED_HOST = 1u << 2,       /* page-locked host memory */
    FKV_CAP_ZERO_COPY_HOST = 1u << 3,    /* kernels can read host memory directly */
    FKV_CAP_FP16_STORAGE = 1u << 4,      /* f16/bf16 KV storage */
    FKV_CAP_MULTI_REGION_COPY = 1u << 5, /* one copy command with many regions */
    FKV_CAP_SEPARATE_TRANSFER_QUEUE = 1u << 6
};
/* Writes "async_copy,device_wait,..." into buf (always NUL-terminated). */
FKV_API fkv_status fkv_caps_string(uint32_t caps, char *buf, size_t buf_size);

typedef struct fkv_device_info {
    char backend[16];     /* the backend's name, as fkv_backend_name lists it */
    uint32_t index;       /* index within its backend */
    char name[128];
    char driver[64];      /* driver / platform version */
    fkv_device_type type;
    uint64_t memory_bytes; /* global memory (0 if unknown) */
    uint64_t max_buffer_bytes;
    uint32_t caps;
} fkv_device_info;

/* Backends compiled into this build, in preference order (freekv-info prints them): the
 * names fkv_device_open, fkv_device_list and FREEKV_BACKEND accept besides "auto". */
FKV_API size_t fkv_backend_count(void);
FKV_API const char *fkv_backend_name(size_t index); /* NULL when out of range */

/* Lists the devices of one backend ("cpu", "opencl", ...), or of all when backend is NULL
 * or "auto". Fills at most `capacity` entries; *count receives the total available.
 * A backend whose driver is missing contributes no devices (not an error). */
FKV_API fkv_status fkv_device_list(const char *backend, fkv_device_info *out, size_t capacity,
                                   size_t *count);

typedef struct fkv_device fkv_device;

/* Opens a device. backend: "auto", a backend name (fkv_backend_name), or NULL to read
 * FREEKV_BACKEND (default auto). device: an index, a name substring, or NULL to read
 * FREEKV_DEVICE (default: the best device: discrete GPU, integrated GPU, other, CPU-type,
 * reference; among equals one with zero-copy host reads, then the backends' preference order
 * of fkv_backend_name). Explicit arguments override
 * the environment. An unknown or unavailable value fails with a message listing what
 * is available; there is no silent fallback: an unknown backend argument is
 * FKV_ERR_INVALID_ARGUMENT, an unknown FREEKV_BACKEND value FKV_ERR_BAD_ENVIRONMENT, a backend
 * or device that is not there FKV_ERR_NO_DEVICE. */
FKV_API fkv_status fkv_device_open(const char *backend, const char *device, fkv_device **out);
/* Closes the device. Release its buffers and destroy its contexts first: both use the device
 * when released, so closing a device that still has them is undefined ("Lifetimes" above). */
FKV_API void fkv_device_close(fkv_device *dev);
FKV_API fkv_status fkv_device_get_info(const fkv_device *dev, fkv_device_info *info);
/* Which device "auto" would open (same rules as fkv_device_open(NULL/"auto", NULL)). */
FKV_API fkv_status fkv_device_pick(const char *backend, const char *device, fkv_device_info *info);

/* ---- device memory handed in by the engine ---------------------------------------------
 * fkv_buffer_import wraps memory the engine owns so q/k/v/out can stay on the device; native
 * is the backend's own handle of device memory (a backend without import refuses with
 * FKV_ERR_UNSUPPORTED), for example:
 *   OpenCL: native = (void *)cl_mem (same context as the device's)
 *   Vulkan: native = (void *)(uintptr_t)VkBuffer (created on the device's VkDevice)
 *   HIP:    native = device pointer
 *   CPU reference: native = host memory the engine owns, used as device memory
 * The engine keeps ownership of the native object, which must outlive the fkv_buffer.
 * fkv_buffer_alloc allocates device memory owned by the fkv_buffer. */
typedef struct fkv_buffer fkv_buffer;
FKV_API fkv_status fkv_buffer_import(fkv_device *dev, void *native, size_t size,
                                     fkv_buffer **out);
FKV_API fkv_status fkv_buffer_alloc(fkv_device *dev, size_t size, fkv_buffer **out);
/* Blocking host<->device copies (for engines and tests). */
FKV_API fkv_status fkv_buffer_write(fkv_buffer *buf, size_t offset, const void *src, size_t size);
FKV_API fkv_status fkv_buffer_read(fkv_buffer *buf, size_t offset, void *dst, size_t size);
/* Releases the buffer (its device memory, or only the wrapper of imported memory). Call it
 * before fkv_device_close of its device: it uses the device. */
FKV_API void fkv_buffer_release(fkv_buffer *buf);

/* A tensor argument: host memory (host != NULL) or device memory (buffer + byte offset).
 * Element type is f32; the shape is implied by the call. Host memory is only read
 * (or written, for outputs) during the call. Device memory may still be in use when the call
 * returns (fkv_decode_layer with a device output): see the call. */
typedef struct fkv_tensor {
    const void *host;
    fkv_buffer *buffer;
    size_t offset;
} fkv_tensor;

/* ---- configuration -------------------------------------------------------------------- */

typedef enum fkv_policy {
    FKV_POLICY_DENSE = 0,       /* whole KV resident, exact attention */
    FKV_POLICY_QUEST = 1,       /* whole KV resident, exact selection every step */
    FKV_POLICY_SYNC = 2,        /* offloaded; select with q[t], recall, attend (ArkVale-like) */
    FKV_POLICY_SPECULATIVE = 3, /* offloaded; select with q[t-1], recall in the background */
    FKV_POLICY_FREEKV = 4       /* speculative + fine-grained correction (default) */
} fkv_policy;
FKV_API const char *fkv_policy_name(fkv_policy policy);
FKV_API fkv_status fkv_policy_parse(const char *name, fkv_policy *out);

typedef enum fkv_group_reduce {
    FKV_GROUP_SOFTMAX_MEAN = 0, /* mean over the group of per-head softmax over candidates */
    FKV_GROUP_MEAN = 1,         /* mean of raw scores */
    FKV_GROUP_MAX = 2           /* max of raw scores */
} fkv_group_reduce;

/* The temperature of FKV_GROUP_SOFTMAX_MEAN's per-head softmax over the candidates' Quest
 * bounds. The choice changes most selections (on the synthetic traces of `freekv eval`, 98-100%
 * of them), so it is explicit. FKV_GROUP_MEAN and FKV_GROUP_MAX rank the same either way (a
 * positive scale keeps their order). */
typedef enum fkv_group_temp {
    FKV_TEMP_RAW = 0,   /* softmax of the raw bounds, as FreeKV's accuracy code does (default) */
    FKV_TEMP_SQRT_D = 1 /* softmax of the bounds times 1/sqrt(head_dim), as attention scales q.k */
} fkv_group_temp;

/* How the host pool stores a page (offload policies only; dense and quest keep no host pool).
 * Device slots always hold the compute dtype: a quantized page is quantized when it is
 * offloaded (in the NHD->HND pack) and dequantized inside recall. Byte layout of one
 * (page, KV head) unit: docs/pipeline.md, "Host formats". */
typedef enum fkv_host_format {
    FKV_HOST_SAME = 0, /* the compute dtype, bit for bit (default) */
    FKV_HOST_Q8 = 1,   /* 8-bit codes: keys per channel, values per token, f16 scale and zero */
    FKV_HOST_Q4 = 2    /* 4-bit codes, same scheme (experimental: see docs/eval.md) */
} fkv_host_format;
FKV_API const char *fkv_host_format_name(fkv_host_format format); /* "unknown" if not one */
/* "same", "q8" or "q4"; anything else is FKV_ERR_INVALID_ARGUMENT. */
FKV_API fkv_status fkv_host_format_parse(const char *name, fkv_host_format *out);

/* How page summaries (per (page, KV head) channel minima and maxima, the Quest bound's input)
 * are stored on the device. f16 halves their bytes, and so the bytes each selection's scoring
 * pass reads: minima are rounded down and maxima up to f16 (a finite value beyond the f16
 * range becomes an infinity only on the side that keeps it a bound, NaN stays NaN), so a
 * page's f16 bound is never below its f32 bound and rounding can only admit a page, never
 * drop one. Accuracy: docs/eval.md, "Summary formats". */
typedef enum fkv_summary_format {
    FKV_SUMMARY_F32 = 0, /* f32 (default) */
    FKV_SUMMARY_F16 = 1  /* f16, directed rounding */
} fkv_summary_format;
FKV_API const char *fkv_summary_format_name(fkv_summary_format format); /* "unknown" if not one */
/* "f32" or "f16"; anything else is FKV_ERR_INVALID_ARGUMENT. */
FKV_API fkv_status fkv_summary_format_parse(const char *name, fkv_summary_format *out);

typedef struct fkv_config {
    uint32_t n_layers;
    uint32_t n_q_heads;
    uint32_t n_kv_heads;  /* divides n_q_heads */
    uint32_t head_dim;    /* 16..256, multiple of 4 */
    uint32_t page_size;   /* tokens per page, 1..256 */
    uint32_t budget_tokens; /* resident tokens per (sequence, layer, KV head), sink+window+selected */
    uint32_t sink_tokens;   /* multiple of page_size */
    uint32_t window_tokens; /* multiple of page_size, >= 2 pages (holds the current page) */
    float tau;              /* correction threshold on mean query cosine, [-1, 1] */
    fkv_dtype dtype;        /* KV storage */
    fkv_policy policy;
    fkv_group_reduce group_reduce;
    uint32_t max_seqs;
    uint32_t max_context;   /* tokens per sequence */
    /* (page, head) units per staging buffer; 0 = a layer's whole recall (max_seqs x KV heads
     * x selected pages), at most 32 MiB a stage, so staged recall is one copy and one scatter
     * per layer */
    uint32_t recall_chunk_pages;
    fkv_group_temp group_temperature; /* FKV_GROUP_SOFTMAX_MEAN's temperature (FKV_TEMP_RAW) */
    /* The host pool's storage format (FKV_HOST_SAME). q8/q4 need a backend that implements
     * them; fkv_context_create refuses them with FKV_ERR_UNSUPPORTED otherwise. */
    fkv_host_format host_format;
    fkv_summary_format summary_format; /* page summaries on the device (FKV_SUMMARY_F32) */
} fkv_config;

/* Defaults: Llama-3.1-8B geometry (32 layers, 32/8 heads, d=128), p=32, budget 2048,
 * sink 512, window 512, tau 0.9, bf16, freekv policy, softmax-mean group reduction of the raw
 * bounds (FKV_TEMP_RAW), 1 sequence, 32768 context, host pool in the compute dtype
 * (FKV_HOST_SAME), f32 page summaries (FKV_SUMMARY_F32). */
FKV_API void fkv_config_init(fkv_config *cfg);
/* Checks every field; the message names the first bad one. Beyond each field's range:
 *  - budget_tokens <= max_context rounded up to whole pages (a larger budget could never be
 *    used), and at most 4096 selected pages (budget - sink - window) / page_size;
 *  - the device interface indexes with int32, so these must stay below 2^31:
 *    max_seqs x slots x page_size device rows (slots: the budget's pages for sync,
 *    speculative and freekv; every page of max_context for dense and quest),
 *    max_seqs x pages of max_context summaries, max_seqs x n_kv_heads x slots attention
 *    entries, and n_q_heads x pages of max_context scores. */
FKV_API fkv_status fkv_config_validate(const fkv_config *cfg);

/* ---- context and decoding ------------------------------------------------------------- */

typedef struct fkv_context fkv_context;

/* The context keeps a pointer to dev: close the device after destroying the context.
 * Refused with FKV_ERR_INVALID_CONFIG: any config fkv_config_validate refuses; with
 * FKV_ERR_OUT_OF_DEVICE_MEMORY before anything is allocated: a context whose device buffers
 * add up to more than the device's memory (fkv_device_info.memory_bytes). */
FKV_API fkv_status fkv_context_create(fkv_device *dev, const fkv_config *cfg,
                                      fkv_context **out);
FKV_API void fkv_context_destroy(fkv_context *ctx);
FKV_API fkv_status fkv_context_get_config(const fkv_context *ctx, fkv_config *cfg);

/* Drops a sequence's tokens (all layers), keeping its memory for reuse. */
FKV_API fkv_status fkv_sequence_reset(fkv_context *ctx, uint32_t seq);
/* Tokens stored for a sequence (after its last completed layer 0 .. L-1 pass). */
FKV_API fkv_status fkv_sequence_length(const fkv_context *ctx, uint32_t seq, uint32_t *n_tokens);

/* Prefill of one layer of one empty sequence with a prompt of n_tokens (>= 1):
 *   k, v:   [n_tokens][n_kv_heads][head_dim] f32 (post-RoPE keys)
 *   q_last: [n_q_heads][head_dim] f32, the last prompt token's query, used to choose the
 *           initial resident pages.
 * Layers are prefilled in order 0..L-1, each with the same n_tokens (another length on a
 * later layer is FKV_ERR_INVALID_ARGUMENT). */
FKV_API fkv_status fkv_prefill(fkv_context *ctx, uint32_t seq, uint32_t layer, uint32_t n_tokens,
                               const fkv_tensor *k, const fkv_tensor *v, const fkv_tensor *q_last);

/* One decode step of one layer for a batch of sequences:
 *   q:   [n_seqs][n_q_heads][head_dim] f32
 *   k,v: [n_seqs][n_kv_heads][head_dim] f32, the new token's key/value (appended first)
 *   out: [n_seqs][n_q_heads][head_dim] f32, attention output (host or device memory)
 * Within a step, layers are called in order 0..L-1 with the same sequences.
 * A host output is complete when the call returns, and the call waited for every command it
 * issued. With a device output the call waits only where the method needs a result (freekv's
 * correction flags, quest's and sync's selection) and returns with its commands in flight on
 * the device's compute queue: the attention writes `out` itself, and q, k, v in device
 * memory are read by those commands. Those buffers stay in use until the commands complete:
 * fkv_buffer_read, fkv_buffer_write and later fkv_decode_layer calls are ordered after them
 * (the same queue); anything else (the engine's own kernels or copies, fkv_buffer_release)
 * must come after fkv_context_sync. A failure of those commands is reported later (see
 * Failures above). */
FKV_API fkv_status fkv_decode_layer(fkv_context *ctx, uint32_t layer, uint32_t n_seqs,
                                    const uint32_t *seqs, const fkv_tensor *q,
                                    const fkv_tensor *k, const fkv_tensor *v, fkv_tensor *out);

/* Waits for background work (speculative recalls) to finish. */
FKV_API fkv_status fkv_context_sync(fkv_context *ctx);

typedef struct fkv_stats {
    uint64_t steps;            /* decode steps (layer-0 calls) */
    uint64_t layer_calls;
    uint64_t selections;
    uint64_t corrections;      /* corrected (sequence, layer, KV head) triples */
    uint64_t heads_checked;    /* (sequence, layer, KV head) triples checked for correction */
    uint64_t pages_recalled;   /* (page, KV head) units */
    uint64_t bytes_recalled;
    uint64_t pages_offloaded;
    uint64_t bytes_offloaded;
    double recall_seconds;     /* host time inside the recall engine (host gather, enqueue,
                                  staging reuse waits), on the caller's thread and the worker's:
                                  an issue cost, not the transfer's duration */
    double blocked_seconds;    /* the caller's time blocked by the method: the sum of the three
                                  blocked_*_seconds fields below */
    uint64_t host_bytes;       /* host memory held (KV pool, staging) */
    uint64_t device_bytes;     /* device memory held */
    /* Where the caller's thread (inside fkv_decode_layer) waited; seconds, disjoint:
     * - blocked_recall_seconds: host work of page recall for this step's attention on the
     *   caller's path. sync: the recall engine on the caller's thread (host gather, issue).
     *   speculative, freekv: the part of the wait for the layer's background task after the
     *   worker finished its selection (the worker issuing the recall). The caller does not
     *   wait on the host for sync's or the background recall to complete: attention waits for
     *   it on the device, so device time spent on that recall shows in the step's latency
     *   (with a host output, in the wait for the output), not here.
     * - blocked_select_seconds: page selection for this step's attention. quest, sync: the
     *   synchronous selection (score kernels, the score readback, which also waits for work
     *   queued earlier on the compute queue, group reduction, top-k, planning). speculative,
     *   freekv: the wait for the layer's background task until the worker finished selecting
     *   (when the task had not started, this includes the worker's earlier tasks).
     * - blocked_correction_seconds: freekv only: the query-similarity check (its kernel and the
     *   blocking flags readback, which also waits for work queued earlier on the compute
     *   queue), the flagged heads' selection and recall, and the wait for that recall (ordered
     *   after the background recall, so it may include waiting for it).
     * A background task's work (selections, pages_recalled, bytes_recalled, recall_seconds) is
     * counted when the caller consumes it: in the next fkv_decode_layer of that layer, or in
     * fkv_context_sync and the calls that sync. So between two fkv_decode_layer calls the
     * counts hold exactly the work the completed steps used, however far the worker got. */
    double blocked_recall_seconds;
    double blocked_select_seconds;
    double blocked_correction_seconds;
    /* Host compute of page selection, on the caller's thread and the worker's: from the
     * selection being on the host (after the readback it waits for) to the plan of which slot
     * receives which page. The group reduction and top-k run on the device (select_pages), so
     * this is the ordering of O(budget) selected pages and the planning. Not a wait: a part of
     * blocked_select_seconds (quest, sync) or of the worker's time (speculative, freekv). */
    double host_select_seconds;
} fkv_stats;
FKV_API fkv_status fkv_context_get_stats(const fkv_context *ctx, fkv_stats *stats);
/* Corrections per (layer, KV head), row-major [n_layers][n_kv_heads]; capacity in entries. */
FKV_API fkv_status fkv_context_get_corrections(const fkv_context *ctx, uint64_t *out,
                                               size_t capacity);
FKV_API fkv_status fkv_context_reset_stats(fkv_context *ctx);

/* ---- device command counters ----------------------------------------------------------
 * What a device was asked to do, counted at the driver calls inside each backend (the CPU
 * reference counts the commands its queue threads run), so that CPU devices show the commands
 * a GPU would receive. Totals since the device opened; diff two snapshots to measure a span.
 * Counted from every thread and every context of the device (the contexts share its queues).
 *
 * Per queue of the device (queues[FKV_COUNTER_COMPUTE] etc.):
 *  - launches: kernel launches (clEnqueueNDRangeKernel, vkCmdDispatch, hipLaunchKernel; a CPU
 *    reference kernel command);
 *  - copies: copy and fill commands (clEnqueue{Read,Write,Copy}Buffer, vkCmdCopyBuffer,
 *    vkCmdFillBuffer, hipMemcpyAsync; a CPU reference copy command). One command with many
 *    regions is one copy. launches + copies = the device commands;
 *  - submits: what was handed to the driver's queue: Vulkan vkQueueSubmit; OpenCL every
 *    enqueued command (kernels, copies, barriers) plus clFlush; HIP every launch and async copy;
 *    the CPU reference every command handed to its queue thread (markers included);
 *  - h2d_bytes, d2h_bytes: bytes of host->device and device->host copies.
 * Per device:
 *  - caller_waits, worker_waits: blocking host waits (clWaitForEvents, clFinish,
 *    vkWaitSemaphores, hipEventSynchronize, hipStreamSynchronize; the CPU reference's event
 *    waits), on the library's speculative worker thread (worker) or on any other thread
 *    (caller: the application's threads inside fkv_* calls). One call that waits for several
 *    events is one wait;
 *  - device_allocs: device memory allocations (clCreateBuffer, vkAllocateMemory of device or
 *    staging memory, hipMalloc), temporary and scratch ones included;
 *  - host_allocs: pinned host allocations (host pool pieces, staging: CL_MEM_ALLOC_HOST_PTR or
 *    SVM, host-visible Vulkan memory for host_alloc, hipHostMalloc).
 * Not counted: what opening and closing the device does, and the allocation's own commit
 * commands (OpenCL commits a new buffer with a migration on a private queue). */
enum {
    FKV_COUNTER_COMPUTE = 0,    /* the decode queue */
    FKV_COUNTER_TRANSFER = 1,   /* recall and offload copies */
    FKV_COUNTER_BACKGROUND = 2, /* speculative selection and recall kernels */
    FKV_COUNTER_QUEUES = 3
};
typedef struct fkv_queue_counters {
    uint64_t launches;
    uint64_t copies;
    uint64_t submits;
    uint64_t h2d_bytes;
    uint64_t d2h_bytes;
} fkv_queue_counters;
typedef struct fkv_counters {
    fkv_queue_counters queues[FKV_COUNTER_QUEUES];
    uint64_t caller_waits;
    uint64_t worker_waits;
    uint64_t device_allocs;
    uint64_t host_allocs;
} fkv_counters;
/* The device's totals. FKV_ERR_UNSUPPORTED when its backend does not count (the counts are
 * then unknown, never zeros); *out is written only on success. */
FKV_API fkv_status fkv_device_get_counters(const fkv_device *dev, fkv_counters *out);
/* The totals of the context's device (fkv_device_get_counters): a span of calls on this
 * context is their difference, when no other context uses the device meanwhile. */
FKV_API fkv_status fkv_context_get_counters(const fkv_context *ctx, fkv_counters *out);

/* Logical pages (sorted ascending) that the last attention of (seq, layer) read for one KV
 * head; *count receives the number (entries beyond capacity are not written). */
FKV_API fkv_status fkv_context_attended_pages(const fkv_context *ctx, uint32_t seq,
                                              uint32_t layer, uint32_t kv_head, int32_t *pages,
                                              size_t capacity, size_t *count);

/* Copies a sequence's stored keys/values of one layer back to the host, in token order
 * [n_tokens][n_kv_heads][head_dim] f32 (converted from the storage dtype), from the host
 * pool and the device's current page. For checks and debugging. */
FKV_API fkv_status fkv_context_read_kv(fkv_context *ctx, uint32_t seq, uint32_t layer, float *k,
                                       float *v, size_t capacity_tokens, uint32_t *n_tokens);


/* ---- engine interop: the engine's own device objects, native handles, external sync ----
 * An inference engine that already owns the GPU opens freekv on its own context or device
 * (fkv_device_open_native), wraps its q/k/v/out buffers (fkv_buffer_import), and orders
 * freekv's per-layer work after its own with events (fkv_prefill_sync, fkv_decode_layer_sync),
 * so that the prompt's k/v and q/k/v/out never go through the host. An engine that starts from freekv reads the native objects of a
 * device freekv opened (fkv_device_get_native) and creates its buffers there.
 * docs/integration.md has the call sequence per step, ownership and threading.
 *
 * Handles are passed as pointers: OpenCL and HIP objects and Vulkan's dispatchable handles
 * (VkInstance, VkPhysicalDevice, VkDevice, VkQueue) as they are, Vulkan's non-dispatchable
 * ones (VkSemaphore) as (void *)(uintptr_t)handle, as fkv_buffer_import takes a VkBuffer.
 *
 * Ownership: freekv never destroys or releases what it did not create. Objects the engine
 * hands in stay the engine's, on success and on failure, and must outlive the fkv_device
 * (destroy them after fkv_device_close). Objects fkv_device_get_native returns stay freekv's
 * and live until fkv_device_close. */

typedef enum fkv_native_api {
    FKV_NATIVE_NONE = 0,   /* the CPU reference: no native API */
    FKV_NATIVE_OPENCL = 1,
    FKV_NATIVE_VULKAN = 2,
    FKV_NATIVE_HIP = 3
} fkv_native_api;
FKV_API const char *fkv_native_api_name(fkv_native_api api); /* "opencl", ...; "none" */

/* OpenCL: the context and device, and optionally the engine's in-order command queue, which
 * freekv then uses as its compute queue (the decode stream: the per-layer calls' commands) and
 * never releases. freekv creates its other queues (transfer, background) on the context. */
typedef struct fkv_opencl_objects {
    void *context; /* cl_context */
    void *device;  /* cl_device_id, one of the context's devices */
    void *queue;   /* cl_command_queue on that device and context, in order; NULL: freekv's */
} fkv_opencl_objects;

/* One VkQueue freekv may submit to, with its family (as created by the engine). */
typedef struct fkv_vulkan_queue {
    void *queue;     /* VkQueue; NULL: none (see fkv_vulkan_objects.queues) */
    uint32_t family; /* its queue family index */
    uint32_t index;  /* its index within the family (named in messages and freekv-info) */
} fkv_vulkan_queue;

/* fkv_vulkan_objects.flags */
enum {
    /* refuse a device whose engine did not enable storageBuffer16BitAccess (otherwise freekv
     * then stores f16/bf16 through 32-bit words, which is slower) */
    FKV_VULKAN_REQUIRE_16BIT_STORAGE = 1u << 0
};

/* Vulkan: what the engine created, and what it enabled when it did.
 *  - api_version: VkApplicationInfo.apiVersion of the instance, at least 1.2 (freekv calls
 *    Vulkan 1.2 core functions: vkWaitSemaphores, vkGetSemaphoreCounterValue).
 *  - queues[FKV_COUNTER_COMPUTE / _TRANSFER / _BACKGROUND]: the queues freekv may use for its
 *    decode stream, its host<->device copies and its background (speculative) kernels. The
 *    compute queue is required (a family with VK_QUEUE_COMPUTE_BIT); a NULL transfer or
 *    background queue shares the compute queue. The same VkQueue may be given several times.
 *  - enabled_features: the pNext chain the engine gave vkCreateDevice (VkDeviceCreateInfo.pNext:
 *    VkPhysicalDeviceFeatures2, VkPhysicalDeviceVulkan11Features / 12Features, or the
 *    per-feature structs). freekv needs timelineSemaphore (Vulkan12Features or
 *    TimelineSemaphoreFeatures) and uses storageBuffer16BitAccess (Vulkan11Features or
 *    16BitStorageFeatures) where it is enabled; a device without timelineSemaphore is refused
 *    with FKV_ERR_UNSUPPORTED naming it. Read during the call only.
 *  - enabled_extensions: the device extensions the engine enabled (read during the call);
 *    freekv uses VK_EXT_external_memory_host for zero-copy recall when it is among them.
 *  - lock_queue / unlock_queue: vkQueueSubmit needs external synchronisation. freekv submits
 *    from the calling thread inside fkv_* calls and from its speculative worker thread at any
 *    time between them (until fkv_context_sync or fkv_context_destroy), so a queue the engine
 *    also submits to needs one lock that both take: freekv calls lock_queue(lock_user, queue)
 *    before and unlock_queue after each submission to `queue` (holding its own lock of that
 *    queue; the engine must not hold its lock while it calls into freekv). NULL (both): freekv
 *    takes only its own lock, and the engine must not submit to the queues it handed in while
 *    freekv may.
 * Without buffer device addresses freekv binds buffers as storage buffers: buffers imported
 * with fkv_buffer_import need VK_BUFFER_USAGE_STORAGE_BUFFER_BIT and TRANSFER_SRC/DST, and
 * must be usable by the compute queue's family (that family, or VK_SHARING_MODE_CONCURRENT). */
typedef struct fkv_vulkan_objects {
    uint32_t api_version;
    void *instance;        /* VkInstance */
    void *physical_device; /* VkPhysicalDevice */
    void *device;          /* VkDevice */
    fkv_vulkan_queue queues[FKV_COUNTER_QUEUES]; /* indexed by FKV_COUNTER_COMPUTE etc. */
    const void *enabled_features;
    const char *const *enabled_extensions;
    uint32_t n_enabled_extensions;
    uint32_t flags; /* FKV_VULKAN_REQUIRE_16BIT_STORAGE */
    void (*lock_queue)(void *user, void *queue);
    void (*unlock_queue)(void *user, void *queue);
    void *lock_user;
} fkv_vulkan_objects;

/* HIP: a device ordinal and optionally the engine's stream, which freekv then uses as its
 * compute stream (never destroyed by freekv). The stream must belong to that device. */
typedef struct fkv_hip_objects {
    int device;   /* ordinal, as hipSetDevice takes it */
    void *stream; /* hipStream_t; NULL: freekv's own (non-blocking) stream */
} fkv_hip_objects;

/* One API's objects: `api` says which member is read (fkv_device_open_native) or written
 * (fkv_device_get_native). */
typedef struct fkv_native_objects {
    fkv_native_api api;
    fkv_opencl_objects opencl;
    fkv_vulkan_objects vulkan;
    fkv_hip_objects hip;
} fkv_native_objects;

/* Opens a freekv device on the engine's objects, through the backend compiled in for
 * objs->api. What freekv creates (queues it was not given, programs, pipelines, memory) is
 * freekv's and goes at fkv_device_close, which destroys nothing of the engine's and waits for
 * freekv's work: on the engine's VkDevice for freekv's own timelines (never vkDeviceWaitIdle);
 * on an OpenCL queue or HIP stream shared with the engine, for everything queued there. The
 * environment's backend choices (FREEKV_OPENCL_RECALL, FREEKV_VULKAN_RECALL,
 * FREEKV_VULKAN_16BIT, FREEKV_HIP_RECALL, FREEKV_OPENCL_FAST_MATH,
 * FREEKV_OPENCL_BINARY_CACHE, FREEKV_OPENCL_CPU_KERNELS) apply as to
 * fkv_device_open; FREEKV_VULKAN_VALIDATION does not (the instance is the engine's: its layers
 * and messenger report). Threads: like fkv_device_open (serialised with enumeration).
 * Refused: FKV_ERR_INVALID_ARGUMENT for NULL or inconsistent objects (a device not in the
 * context, a queue of another device, a queue family without the needed bits);
 * FKV_ERR_NO_DEVICE when no backend of this build takes objs->api; FKV_ERR_UNSUPPORTED for
 * objects freekv cannot use (an out-of-order OpenCL queue, a Vulkan version below 1.2, a
 * feature freekv needs that the engine did not enable), with a message naming it. On failure
 * *out is NULL and the engine's objects are untouched. */
FKV_API fkv_status fkv_device_open_native(const fkv_native_objects *objs, fkv_device **out);

/* The native objects of an open device (opened by either call), into out: api and its member
 * (the other members zeroed). OpenCL: context, device, the compute queue. Vulkan: api_version
 * of the instance, instance, physical and logical device, the three queues freekv submits to,
 * and lock_queue/unlock_queue/lock_user: an engine that submits to one of these queues calls
 * them around its vkQueueSubmit (they take freekv's lock of that queue, and the engine's
 * callbacks when it handed them in); enabled_features and enabled_extensions are NULL. HIP:
 * the ordinal and the compute stream. The objects stay freekv's when freekv created them (the
 * engine must not destroy them) and live until fkv_device_close. Any thread, like
 * fkv_device_get_info. FKV_ERR_UNSUPPORTED for a device without a native API (the CPU
 * reference); *out is written only on success. */
FKV_API fkv_status fkv_device_get_native(const fkv_device *dev, fkv_native_objects *out);

/* An event of the device's native API.
 *   OpenCL: handle = cl_event (of the device's context); value unused.
 *   Vulkan: handle = (void *)(uintptr_t)VkSemaphore of type VK_SEMAPHORE_TYPE_TIMELINE, on
 *           the device's VkDevice; value = the timeline value.
 *   HIP:    handle = hipEvent_t of the device; value unused. */
typedef struct fkv_native_event {
    void *handle;
    uint64_t value;
} fkv_native_event;

/* External synchronisation of one per-layer call (fkv_decode_layer_sync, fkv_prefill_sync).
 *  - wait[0..n_wait): the call's device inputs (decode's q/k/v, prefill's k/v/q_last) are
 *    ready when these complete: freekv's first device command of the call that can read them
 *    waits for them on the device (the host does not wait for them before enqueuing). The
 *    events stay the engine's. OpenCL, HIP: they may be released once the call returns.
 *    Vulkan: the semaphore must live until the call's work has completed (its signal, or
 *    fkv_context_sync), since fkv_decode_layer_sync may submit the waiting batch later than
 *    the call; fkv_prefill_sync has waited for that batch when it returns.
 *  - signal (NULL: none): decode: completes when `out` is written (every command of the call
 *    that writes out has completed); prefill: completes after the call's last command.
 *    Vulkan: freekv signals the engine's timeline semaphore signal->handle to signal->value
 *    (greater than any value signalled or pending before it) with a submission of its own,
 *    which may still be pending when the call returns. HIP: freekv records the engine's event
 *    signal->handle on its compute stream. OpenCL: freekv cannot signal an engine's cl_event,
 *    so it writes into signal->handle a new cl_event that completes then; the engine owns it
 *    (clReleaseEvent). On failure nothing is signalled or recorded and signal->handle is not
 *    written. */
typedef struct fkv_external_sync {
    uint32_t n_wait;
    const fkv_native_event *wait;
    fkv_native_event *signal;
} fkv_external_sync;

/* fkv_decode_layer with external synchronisation (sync NULL, or no waits and no signal: the
 * same as fkv_decode_layer). With device-resident q/k/v/out and these, the engine need not
 * wait on the host for freekv, nor freekv for the engine on the host. The one host wait left
 * inside the call is the method's: the correction's read of its flags and records (freekv
 * policy). A corrected head's re-selection and recall, the background recall and the output
 * are device-side dependencies; the recall engine may still wait before reusing a unit table
 * two recalls back. Measured on PoCL and lavapipe: 1 host wait per layer call
 * (docs/integration.md; ./build/engine_opencl and engine_vulkan print it).
 * Threads, failures and rollback: as fkv_decode_layer (one call at a time per context).
 * FKV_ERR_UNSUPPORTED when there are waits or a signal and the device has no native API (the
 * CPU reference); FKV_ERR_WRONG_DEVICE for an OpenCL event of another context. */
FKV_API fkv_status fkv_decode_layer_sync(fkv_context *ctx, uint32_t layer, uint32_t n_seqs,
                                         const uint32_t *seqs, const fkv_tensor *q,
                                         const fkv_tensor *k, const fkv_tensor *v,
                                         fkv_tensor *out, const fkv_external_sync *sync);

/* fkv_prefill with external synchronisation (sync NULL, or no waits and no signal: the same as
 * fkv_prefill), for an engine whose k/v/q_last are device buffers written on its own queue:
 * freekv's first device command that can read them waits for sync->wait on the device, and
 * sync->signal completes after the call's last command. Like fkv_prefill the call completes
 * its work before it returns, so it blocks until the wait events complete: the engine must
 * have submitted what completes them before the call (or complete them from another thread),
 * never only after it. When it returns FKV_OK the signal has been issued after work that has completed (it
 * lets an event-driven engine chain its next work, such as overwriting k/v/q_last, on the
 * device). Ownership of the events: fkv_external_sync; Vulkan: the wait semaphores may be
 * destroyed once the call returns, the signal's once it reached signal->value. Threads: as
 * fkv_prefill (one call at a time per context). Failures: as fkv_prefill (the sequence stays
 * empty at that layer; nothing is signalled); FKV_ERR_UNSUPPORTED, before any work, when there
 * are waits or a signal and the device has no native API (the CPU reference);
 * FKV_ERR_WRONG_DEVICE for an OpenCL event of another context. */
FKV_API fkv_status fkv_prefill_sync(fkv_context *ctx, uint32_t seq, uint32_t layer,
                                    uint32_t n_tokens, const fkv_tensor *k, const fkv_tensor *v,
                                    const fkv_tensor *q_last, const fkv_external_sync *sync);

#ifdef __cplusplus
}
#endif
#endif
