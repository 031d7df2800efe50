/* The device interface: what core/ needs from a device, one versioned ops table per backend.
 * Backends implement it; everything else calls it through the dispatch layer
 * (backends/dispatch.h), which checks the arguments, applies the generic fallbacks and honours
 * the table's version, once for all backends.
 *
 * Model: a device has in-order queues; every enqueued command takes a wait list of events
 * and may return an event that completes with it. Commands on one queue run in order;
 * across queues only events order them. Kernels run only on FKV_QUEUE_COMPUTE or
 * FKV_QUEUE_BACKGROUND; copies run on any queue.
 *
 * How the model maps:
 *  - OpenCL: one cl_command_queue per fkv_queue (in-order), fkv_bevent = cl_event, wait lists
 *    = event_wait_list, fkv_bbuf = cl_mem, fkv_bhost = CL_MEM_ALLOC_HOST_PTR buffer kept mapped
 *    (fine-grained SVM when the recall mode is direct).
 *  - Vulkan: fkv_queue -> VkQueue (transfer family when present), each command is recorded
 *    into a command buffer and submitted with timeline-semaphore waits; fkv_bevent = (timeline
 *    semaphore, value); fkv_bbuf = VkBuffer + memory; kernels = compute pipelines with push
 *    constants and descriptor sets; fkv_bhost = HOST_VISIBLE|HOST_COHERENT memory, persistently
 *    mapped.
 *  - HIP: fkv_queue -> hipStream_t, fkv_bevent = hipEvent_t recorded after the command, waits =
 *    hipStreamWaitEvent, fkv_bbuf = device pointer, fkv_bhost = hipHostMalloc(mapped).
 *  - CPU reference: one worker thread per queue executing a FIFO; events are completion flags.
 *
 * Ownership: the caller owns every object it gets (buffers, host memory, events) and releases
 * it with the matching call. Host pointers handed to an asynchronous copy must stay valid and
 * unmodified until the copy's event completes. Buffers must not be freed while a command that
 * uses them may still run (wait for its event or finish the queue first), and every buffer,
 * host allocation and event of a device is released before the device closes.
 *
 * Arguments: one rule for every backend, the CPU reference included. The dispatch layer checks
 * every argument the host can see (backends/check.c) before an entry is called: queue, wait
 * list, geometry, buffers given, sizes, offsets and alignment, recall_direct's host indices and offsets.
 * A refused call returns FKV_ERR_INVALID_ARGUMENT with a message "<backend> <op>: ...",
 * enqueues nothing and leaves *deps.done NULL. Every buffer argument must be given and valid
 * even for zero work; a call with zero work (a copy of 0 bytes, a kernel over 0 rows, pages,
 * units or sequences, write_regions of 0 regions) is then a marker: it waits for deps.wait and
 * its event completes after them and after the queue's earlier commands. So a backend's
 * entries receive only checked calls with work to do; they still check what only they know
 * (device limits, the kind of memory a host allocation is, a wait list's events) and fail
 * with a status and a message, never by crashing.
 *
 * Errors while a command runs (e.g. an index out of range read from an index buffer) fail
 * its event where the backend can detect it (the CPU reference does; GPU kernels skip the
 * out-of-range work instead, never writing out of bounds): event_wait returns it, and
 * commands waiting on it fail too; a marker (and finish) also reports the first failure on
 * its queue since the previous marker. A marker orders later commands of its queue after its
 * wait list. NULL entries in a wait list are ignored; the events given to event_wait must not
 * be NULL. copy within one buffer behaves like memmove. When recall_mode returns
 * FKV_RECALL_DIRECT, all host_alloc memory is readable by recall_direct.
 * Offsets and index-buffer contents are in bytes and elements as stated; data is naturally
 * aligned (f32/int32 at 4 bytes). Summaries and dense K/V start at byte 0 of their buffers.
 * KV pools hold whole slots (the bytes after the last whole slot are never touched) and must
 * hold at least one; slot indices at or beyond the count are skipped.
 * Row, slot and summary indices are int32 (the checks cap pools to what they can address);
 * element and byte offsets computed from them are 64-bit in every kernel (size_t/ulong in
 * C, OpenCL and HIP). Vulkan shaders index in 32 bits inside one binding, which never spans
 * more than maxStorageBufferRange (< 4 GiB: pools, summaries and host memory beyond it are
 * bound in windows), and their flat invocation ids are 32-bit, so a launch of more than
 * 2^32 items is refused.
 *
 * Capabilities and optional entries agree, checked once when a device opens (registry.c):
 * FKV_CAP_ZERO_COPY_HOST or a recall_mode of FKV_RECALL_DIRECT needs recall_direct, and
 * FKV_CAP_MULTI_REGION_COPY needs write_regions; a table that claims one without the other
 * fails to open, naming the mismatch.
 *
 * Versioning: the table only grows at the end. A backend sets abi_version and struct_size;
 * the registry rejects a table older than it needs (one without every required entry).
 * Entries marked optional may be NULL; an entry beyond the table's struct_size (a table built
 * before the entry existed) counts as NULL. The generic fallback of each optional entry is
 * written once (backends/dispatch.c, backends/fallback.c).
 */
#ifndef FKV_BACKEND_H
#define FKV_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../common/hostfmt.h"
#include "fkv_backend_list.h"
#include "freekv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 2: the scores descriptor holds the query row (FKV_SCORES_DESC_INTS), cosine_flags reads
 * the previous queries through a row table, and scores and select_pages take a mask of
 * (sequence, KV head) pairs, so one call serves a batch whatever buffer rows its queries come
 * from and whichever heads it needs. */
#define FKV_BACKEND_ABI_VERSION 2

typedef struct fkv_bdev fkv_bdev;     /* an opened device */
typedef struct fkv_bbuf fkv_bbuf;     /* device memory */
typedef struct fkv_bhost fkv_bhost;   /* pinned, mapped host memory */
typedef struct fkv_bevent fkv_bevent; /* completion of one command */

/* The part of a backend's buffer and host allocation that the dispatch layer reads: every
 * backend's struct fkv_bbuf and struct fkv_bhost has an fkv_mem_desc as its FIRST member
 * (so a pointer to either is a pointer to it). size: bytes. base: what offsets are aligned
 * against: 0 where the API aligns every allocation (OpenCL cl_mem, VkBuffer), the address
 * where a buffer may be an imported pointer (HIP, the CPU reference); host memory: its
 * address. */
typedef struct fkv_mem_desc {
    size_t size;
    uintptr_t base;
} fkv_mem_desc;

typedef enum fkv_queue {
    FKV_QUEUE_COMPUTE = 0,    /* the decode stream: append, attention */
    FKV_QUEUE_TRANSFER = 1,   /* host<->device copies of recall and offload */
    FKV_QUEUE_BACKGROUND = 2, /* kernels of speculative selection/recall (may alias COMPUTE) */
    FKV_QUEUE_COUNT = 3
} fkv_queue;

typedef enum fkv_recall_mode {
    FKV_RECALL_STAGED = 0,  /* host gather into pinned staging, one write, scatter kernel */
    FKV_RECALL_DIRECT = 1,  /* recall_direct: a kernel reads the host pool (zero-copy) */
    FKV_RECALL_PERPAGE = 2  /* one write per (page, head) unit, scatter kernel (baseline) */
} fkv_recall_mode;

/* Geometry shared by the KV kernels. KV pools are [gslot][page_size][n_kv_heads][head_dim]
 * in `dtype` (NHD); one "row" is one token of one slot: row = gslot*page_size + t. */
typedef struct fkv_kv_geom {
    uint32_t n_kv_heads;
    uint32_t group;     /* query heads per KV head */
    uint32_t head_dim;
    uint32_t page_size;
    fkv_dtype dtype;
    /* How HND units are stored where pack_hnd writes them and scatter_hnd / recall_direct read
     * them (the host pool, staging): FKV_HOST_SAME = dtype; q8/q4 = the layout of
     * common/hostfmt.h (docs/pipeline.md, "Host formats"). Only pack_hnd, scatter_hnd and
     * recall_direct read it, and only on a device whose host_formats entry lists the format
     * (the dispatch layer refuses the others with FKV_ERR_UNSUPPORTED). */
    fkv_host_format host_format;
    /* How summarize writes page summaries and scores reads them: f32, or f16 with minima
     * rounded down and maxima up (include/freekv.h fkv_summary_format; the CPU reference
     * defines the bits: common/dtype.h fkv_f32_to_f16_down/up). */
    fkv_summary_format summary_format;
} fkv_kv_geom;

/* Bytes of the layouts above: one slot of a KV pool ([page_size][n_kv_heads][head_dim]),
 * one HND (page, KV head) unit ([K|V][page_size][head_dim] in dtype, or quantized in
 * host_format), one page summary ([n_kv_heads][min|max][head_dim] in summary_format). */
static inline size_t fkv_slot_bytes(const fkv_kv_geom *g) {
    return (size_t)g->page_size * g->n_kv_heads * g->head_dim * fkv_dtype_size(g->dtype);
}
static inline size_t fkv_unit_bytes(const fkv_kv_geom *g) {
    return fkv_hostfmt_unit_bytes(g->host_format, g->page_size, g->head_dim,
                                  fkv_dtype_size(g->dtype));
}
static inline size_t fkv_summary_elem_bytes(fkv_summary_format f) {
    return f == FKV_SUMMARY_F16 ? sizeof(uint16_t) : sizeof(float);
}
static inline size_t fkv_summary_bytes(const fkv_kv_geom *g) {
    return (size_t)g->n_kv_heads * 2 * g->head_dim * fkv_summary_elem_bytes(g->summary_format);
}

/* What a context will ask of a device's kernels, for check_geometry (the largest calls and
 * buffers of its configuration). */
typedef struct fkv_geom_query {
    uint32_t max_seqs;       /* sequences in one kernel call */
    uint32_t max_rows;       /* rows in one append */
    uint64_t pool_slots;     /* slots of each KV pool */
    uint64_t summaries;      /* page summaries of the summaries buffer */
    uint64_t scores;         /* floats of the scores buffer */
    uint64_t list_entries;   /* (gslot, valid) pairs of the attention entries buffer */
    uint64_t largest_buffer; /* bytes of the largest device buffer */
    uint64_t allocations;    /* device buffers plus host allocations held at most at once */
} fkv_geom_query;

/* Wait list + completion event of an enqueued command. `done` may be NULL. */
typedef struct fkv_deps {
    uint32_t n_wait;
    fkv_bevent *const *wait;
    fkv_bevent **done;
} fkv_deps;

typedef struct fkv_copy_region {
    const void *src; /* host */
    size_t dst_offset;
    size_t size;
} fkv_copy_region;

/* Where recall_direct's unit i lies: byte `offset` of host allocation hosts[host]. */
typedef struct fkv_direct_src {
    uint32_t host;
    uint64_t offset;
} fkv_direct_src;

/* Ints per unit of recall_direct's device unit table: {gslot, kv_head, host, offset / es}. */
#define FKV_DIRECT_UNIT_INTS 4
/* Ints per host allocation that direct_host_words writes after the unit table. */
#define FKV_DIRECT_HOST_INTS 4
/* Ints of a recall_direct units table: the units' entries, then host_ints per host
 * (FKV_DIRECT_HOST_INTS where the backend has direct_host_words, else 0). */
static inline uint64_t fkv_direct_table_ints(uint32_t n_units, uint32_t n_hosts,
                                             uint32_t host_ints) {
    return (uint64_t)n_units * FKV_DIRECT_UNIT_INTS + (uint64_t)n_hosts * host_ints;
}

/* Ints per sequence of the scores and select_pages descriptor: (summary base, n_pages, out
 * base, query row). */
#define FKV_SCORES_DESC_INTS 4

/* The selection of select_pages: candidates [first_page, n_pages) of each sequence, k pages
 * per (sequence, KV head), reduced by `reduce` with softmax scale temp_scale (> 0). */
typedef struct fkv_select_params {
    uint32_t first_page;
    uint32_t k;
    fkv_group_reduce reduce;
    float temp_scale;
} fkv_select_params;

typedef struct fkv_backend_ops {
    uint32_t abi_version; /* FKV_BACKEND_ABI_VERSION the table was built for */
    uint32_t struct_size; /* sizeof(fkv_backend_ops) it was built with */
    const char *name;     /* the backend's name, as in the generated list (its folder) */

    /* -- enumeration: a missing driver means 0 devices, not an error -- */
    fkv_status (*device_count)(uint32_t *count);
    fkv_status (*device_info)(uint32_t index, fkv_device_info *info);
    fkv_status (*device_open)(uint32_t index, fkv_bdev **out);
    void (*device_close)(fkv_bdev *dev);

    /* -- memory -- */
    fkv_status (*buffer_alloc)(fkv_bdev *dev, size_t size, fkv_bbuf **out);
    void (*buffer_free)(fkv_bdev *dev, fkv_bbuf *buf);
    /* Pinned host memory, mapped at *ptr for its whole life. */
    fkv_status (*host_alloc)(fkv_bdev *dev, size_t size, fkv_bhost **out, void **ptr);
    void (*host_free)(fkv_bdev *dev, fkv_bhost *host);

    /* -- events and queues -- */
    fkv_status (*event_wait)(fkv_bdev *dev, uint32_t n, fkv_bevent *const *events);
    void (*event_release)(fkv_bdev *dev, fkv_bevent *ev);
    /* An event that completes when `deps.wait` and all earlier commands of q complete. */
    fkv_status (*marker)(fkv_bdev *dev, fkv_queue q, fkv_deps deps);
    fkv_status (*finish)(fkv_bdev *dev, fkv_queue q);

    /* -- copies -- */
    fkv_status (*write)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst, size_t dst_offset,
                        const void *src, size_t size);
    fkv_status (*read)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                       size_t src_offset, void *dst, size_t size);
    fkv_status (*copy)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst, size_t dst_offset,
                       const fkv_bbuf *src, size_t src_offset, size_t size);

    /* -- kernels. Index buffers hold int32; offsets are in bytes; activations are f32. -- */

    /* rows[i] (int32) receives k_src/v_src row i ([n_kv_heads*head_dim] f32), converted. */
    fkv_status (*append)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src, size_t v_off,
                         uint32_t n_rows, const fkv_bbuf *rows, size_t rows_off, fkv_bbuf *kpool,
                         fkv_bbuf *vpool);
    /* For each i: pages[2i] = gslot of a full page, pages[2i+1] = summary index s.
     * summaries [s][n_kv_heads][2][head_dim]: per-channel min (0) and max (1), NaN keys
     * skipped; in g->summary_format: f32, or f16 with the min rounded down and the max up
     * (fkv_f32_to_f16_down/up, bit for bit). */
    fkv_status (*summarize)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *kpool, uint32_t n_pages, const fkv_bbuf *pages,
                            size_t pages_off, fkv_bbuf *summaries);
    /* Quest bound for every query head. desc[4b..4b+3] = (summary base, n_pages, out base,
     * q row): out[base + h*n_pages + j] = sum_c max(q[c]*max[c], q[c]*min[c]) over query head
     * h of row `q row` of qbuf and summary base+j of KV head h/group (f16 summaries widened
     * to f32 exactly, then the same f32 arithmetic). qbuf from q_off is rows
     * of [n_kv_heads*group][head_dim] f32 (at least one); rows may repeat and come in any
     * order, so a batch's queries are read where they lie (this call's, or each sequence's
     * previous one). A row beyond the buffer is refused by the CPU reference and skipped by
     * GPU kernels, as any index from device data. mask: NULL (every pair), or int32
     * [n_seqs][n_kv_heads] at mask_off (e.g. cosine_flags' flags): a (b, KV head) pair whose
     * mask is 0 is skipped, no work, and its query heads' scores are not written. Sequences'
     * outputs that overlap each other or an input give undefined scores (the CPU reference
     * then computes in order on one thread). */
    fkv_status (*scores)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs, const fkv_bbuf *desc,
                         size_t desc_off, const fkv_bbuf *mask, size_t mask_off,
                         const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off);
    /* Per (seq b, KV head h): mean over the group of cos(q_cur, q_prev) into sims[b][h] (f32)
     * and flags[b][h] = !(sims >= tau) (int32: a NaN similarity is corrected). q_cur is
     * [n_seqs][n_kv_heads*group][head_dim] f32 from cur_off; sequence b's previous query is
     * row prev_rows[b] (int32 at rows_off) of q_prev from prev_off, rows of the same shape. A
     * negative row means no previous query: every KV head of b gets similarity NaN and flag 1
     * (corrected). A row beyond q_prev is refused by the CPU reference and skipped by GPU
     * kernels. A query with an exactly zero norm has cosine 0; one holding a NaN or an
     * infinity has a NaN norm, which makes its KV head's similarity NaN and its flag 1. */
    fkv_status (*cosine_flags)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *q_cur, size_t cur_off, const fkv_bbuf *q_prev,
                               size_t prev_off, const fkv_bbuf *prev_rows, size_t rows_off,
                               uint32_t n_seqs, float tau, fkv_bbuf *sims, size_t sims_off,
                               fkv_bbuf *flags, size_t flags_off);
    /* NHD -> HND: page gslots[i] of both pools into dst + i*n_kv_heads*fkv_unit_bytes(g) as
     * [n_kv_heads] units, each [K|V][page_size][head_dim] in dtype, or, for a quantized
     * g->host_format, quantized as common/hostfmt.h defines (the offload's quantize). */
    fkv_status (*pack_hnd)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                           const fkv_bbuf *kpool, const fkv_bbuf *vpool, uint32_t n_pages,
                           const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                           size_t dst_off);
    /* HND -> NHD: unit i of src (at byte src_off + i*fkv_unit_bytes(g), [K|V][p][d], or
     * quantized in g->host_format and dequantized here) goes to KV head units[2i+1] of slot
     * units[2i] in both pools. */
    fkv_status (*scatter_hnd)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                              const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                              const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                              fkv_bbuf *vpool);
    /* Paged decode attention, softmax(q k^T * scale) v, f32 accumulation. For sequence b and KV
     * head h: heads[2(b*n_kv_heads+h)] = first entry, [..+1] = entry count; entries[2e] =
     * gslot, entries[2e+1] = valid tokens in it. Each of the group's query heads attends over
     * the listed tokens. An empty list yields zeros. */
    fkv_status (*attention)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                            const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                            size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                            float scale, fkv_bbuf *out, size_t out_off);

    /* -- optional entries: NULL, or beyond the table's struct_size, gets the dispatch layer's
     * generic fallback (fallback.c) or FKV_ERR_UNSUPPORTED, as each says -- */

    /* Wraps engine-owned device memory (see fkv_buffer_import). NULL: unsupported. */
    fkv_status (*buffer_import)(fkv_bdev *dev, void *native, size_t size, fkv_bbuf **out);
    /* Many host->device regions in one command. Fallback: one write per region. The regions
     * array is read during the call; the host data it points at, until completion. */
    fkv_status (*write_regions)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                                uint32_t n, const fkv_copy_region *regions);
    /* Dense attention of one query row block over contiguous K/V [n_tokens][n_kv_heads][d]
     * (dtype) for n_seqs=1. Fallback: attention over the buffer seen as pool slots. */
    fkv_status (*attention_dense)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                  const fkv_bbuf *qbuf, size_t q_off, uint32_t n_tokens,
                                  const fkv_bbuf *k, const fkv_bbuf *v, float scale,
                                  fkv_bbuf *out, size_t out_off);
    /* Zero-copy recall from any number of host allocations in one call. Unit i reads
     * fkv_unit_bytes(g) bytes ([K|V][p][d], or quantized in g->host_format and dequantized
     * here) at byte srcs[i].offset of hosts[srcs[i].host] and writes KV head
     * units[4i+1] of slot units[4i]. `units` is the device-side unit table, int32 x4 per unit:
     * {gslot, kv_head, host index, host offset / element size}, and, when the table has
     * direct_host_words, FKV_DIRECT_HOST_INTS ints per host after the n_units entries, as that
     * entry wrote them for these hosts in this order; the caller writes it (the recall engine:
     * one write on q just before this call), and the kernels read only it.
     * srcs is the host-side copy of the same (host, offset) pairs, read during the call only
     * (for the checks and the launch plan: alignment, which hosts a launch binds); it is never
     * uploaded. Every backend launches once per call (OpenCL through its table of SVM
     * addresses, Vulkan and HIP through the host words). NULL: FKV_ERR_UNSUPPORTED; such a
     * device may claim neither
     * FKV_CAP_ZERO_COPY_HOST nor the direct recall mode, so the core recalls staged. */
    fkv_status (*recall_direct)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                uint32_t n_hosts, const fkv_bhost *const *hosts, uint32_t n_units,
                                const fkv_direct_src *srcs, const fkv_bbuf *units,
                                size_t units_off, fkv_bbuf *kpool, fkv_bbuf *vpool);
    /* Which recall mechanism this device prefers (backend env override applied). NULL:
     * FKV_RECALL_STAGED. */
    fkv_recall_mode (*recall_mode)(fkv_bdev *dev);
    /* Device info of an opened device. NULL: device_info of its index. */
    fkv_status (*opened_info)(fkv_bdev *dev, fkv_device_info *info);
    /* Whether every kernel can run geometry g at the sizes of q on this device: shared/local
     * memory, work-group size and count, binding ranges, allocation count. Computed by the
     * same launch-plan functions the kernels' launches use (a kernel that can choose a variant
     * that fits, e.g. attention over the group in several blocks, does so in both), so an
     * accepted geometry never fails a launch on a limit. FKV_ERR_UNSUPPORTED with a message
     * naming the limit otherwise. Called by fkv_context_create before it allocates anything.
     * NULL (or a table built before this entry): no limits beyond max_buffer_bytes, which
     * fkv_op_check_geometry checks for every backend. */
    fkv_status (*check_geometry)(fkv_bdev *dev, const fkv_kv_geom *g, const fkv_geom_query *q);
    /* Why recall_mode is what it is when the backend chose it itself (e.g. "auto" fell back to
     * staged because host memory cannot be imported), for freekv-info; NULL or "" when there
     * is nothing to say. The string lives as long as the device. NULL entry: no notes. */
    const char *(*recall_note)(fkv_bdev *dev);
    /* Backend-specific knobs for tests and benchmarks, by name (docs/backend-options.md lists
     * every backend's keys): value is a string the backend parses (numbers in decimal). An
     * unknown key is FKV_ERR_UNSUPPORTED with a message listing the keys the backend knows
     * (backends/option.h writes it); a bad value FKV_ERR_INVALID_ARGUMENT. Call with no command
     * in flight on the device. NULL: the backend has no options. */
    fkv_status (*set_option)(fkv_bdev *dev, const char *key, const char *value);
    /* The read side: the current value of `key` (a setting or a counter) as a string in
     * out[size]; the same rules. NULL: nothing to read. */
    fkv_status (*get_option)(fkv_bdev *dev, const char *key, char *out, size_t size);
    /* The device's command counters (backends/counters.h), counted at the driver calls; they
     * live as long as the device. NULL entry: the backend does not count, and
     * fkv_device_get_counters says so (FKV_ERR_UNSUPPORTED) instead of reporting zeros. */
    const struct fkv_bcounters *(*counters)(fkv_bdev *dev);
    /* Group reduction and top-k of page scores (FreeKV's selection) on the device, so that only
     * O(budget) values come back. For sequence b: desc[4b+1] = n_pages and desc[4b+2] = base
     * (floats from scores_off), as the scores op took them (the rest is not read): query head
     * hq's score of page j is scores[base + hq*n_pages + j]. Per (b, KV head h), over the
     * candidate pages j in [p->first_page, n_pages) and the group's query heads r
     * (hq = h*group + r), in f32:
     *   FKV_GROUP_SOFTMAX_MEAN: m_r = max_j s_rj (NaN skipped), e_rj = expf((s_rj - m_r) *
     *     p->temp_scale), S_r = sum_j e_rj, v_j = sum_r (e_rj / S_r / group) (r ascending);
     *   FKV_GROUP_MEAN: v_j = sum_r (s_rj / group);  FKV_GROUP_MAX: v_j = max_r s_rj (NaN
     *     skipped; all NaN: -inf).
     * A NaN v_j becomes -inf and -0 becomes +0. Pages are ranked by (v desc, page asc), a total
     * order, and the first min(p->k, candidates) are selected. The record of (b, h), at word
     * out_off/4 + (b*n_kv_heads + h)*2k, holds k int32 page numbers, ascending, then their k
     * f32 values; unused entries are page -1 with value -inf.
     * exp is the platform's f32 exp (libm expf on the CPU reference; OpenCL exp, GLSL exp,
     * HIP expf): the values agree to a relative 1e-4 (the tolerance table's select_pages row),
     * so the selected SETS may differ only among pages whose values tie the k-th within that.
     * Scratch: the op overwrites the group's rows of scores over the candidates (the reduced
     * values go to the first, row h*group); the scores are undefined afterwards. The output
     * record must not overlap the scores of the call. mask as for scores: a pair whose mask is
     * 0 gets no work and its record is undefined afterwards (the GPU kernels leave it alone).
     * NULL (or a table built before this entry): the generic fallback reads the scores back
     * and runs the CPU reference's code on the host (waits for its completion). */
    fkv_status (*select_pages)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                               const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                               size_t scores_off, const fkv_select_params *p, fkv_bbuf *out,
                               size_t out_off);
    /* The host formats whose pack_hnd (quantize), scatter_hnd and recall_direct (dequantize)
     * this device implements, as a mask of 1u << fkv_host_format; FKV_HOST_SAME is always
     * implemented. Each must agree with the CPU reference's codes exactly or within one code
     * (the tolerance table, docs/conformance.md). NULL (or a table built before this entry):
     * FKV_HOST_SAME only, and fkv_context_create refuses q8/q4 with FKV_ERR_UNSUPPORTED. */
    uint32_t (*host_formats)(fkv_bdev *dev);

    /* -- engine interop (fkv_device_open_native, fkv_device_get_native, fkv_external_sync;
     * docs/integration.md). A backend never destroys or releases an object it did not create:
     * each borrowed handle is marked as such in its device object. -- */

    /* The native API whose objects device_open_native takes and native_objects returns.
     * FKV_NATIVE_NONE (or a table built before this entry): none, and the four entries below
     * are not called (the dispatch layer answers FKV_ERR_UNSUPPORTED). */
    fkv_native_api native_api;
    /* Opens a device on the engine's objects (objs->api is native_api; the pointers the
     * public call documents as required are non-NULL). Its info's index is the device's
     * position in device_count's enumeration, or UINT32_MAX when it is not there. NULL:
     * unsupported. */
    fkv_status (*device_open_native)(const fkv_native_objects *objs, fkv_bdev **out);
    /* The device's native objects into out->api and its member (out is zeroed before). NULL:
     * unsupported. */
    fkv_status (*native_objects)(fkv_bdev *dev, fkv_native_objects *out);
    /* An engine's event (ev->handle non-NULL) as a wait-list entry of this device's commands.
     * The engine keeps its object: release the entry with event_unimport (never event_release)
     * once the commands that wait on it are enqueued. NULL: unsupported. */
    fkv_status (*event_import)(fkv_bdev *dev, const fkv_native_event *ev, fkv_bevent **out);
    void (*event_unimport)(fkv_bdev *dev, fkv_bevent *ev);
    /* Signals the engine's event `sig` (public fkv_external_sync.signal's rules for each API)
     * once deps.wait and every earlier command of q complete, like a marker (deps.done may
     * receive the marker's own event). NULL: unsupported. */
    fkv_status (*event_signal)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, fkv_native_event *sig);

    /* Whether ev has completed (*done = 1: event_wait would return at once, with its status),
     * without blocking and without counting a host wait. It may flush nothing: an event whose
     * command is still only recorded reads as not done. NULL: the caller cannot tell, so it
     * waits (a blocking event_wait). */
    fkv_status (*event_query)(fkv_bdev *dev, fkv_bevent *ev, int *done);

    /* cosine_flags and scores of one batch in one launch (the correction's check rides in the
     * launch that scores the next step's candidates). Exactly
     *   cosine_flags(q_cur = qbuf from cur_off, q_prev = qbuf from q_off, prev_rows, rows_off,
     *                n_seqs, tau, sims, sims_off, flags, flags_off), then
     *   scores(qbuf, q_off, n_seqs, desc, desc_off, no mask, summaries, out, out_off),
     * bit for bit what this device's cosine_flags and scores write (the same summation order),
     * with the same rules for rows from device data. sims, flags and the scores written must
     * not overlap each other or an input. NULL (or a table built before this entry): the
     * generic fallback enqueues those two commands (scores waits for cosine_flags' event). */
    fkv_status (*scores_check)(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                               const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *summaries,
                               fkv_bbuf *out, size_t out_off, size_t cur_off,
                               const fkv_bbuf *prev_rows, size_t rows_off, float tau,
                               fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                               size_t flags_off);

    /* What recall_direct reads of each host allocation from its units table, so that the
     * caller's one table write carries it: FKV_DIRECT_HOST_INTS int32 per host of hosts[0..
     * n_hosts) into out (Vulkan with bufferDeviceAddress: the allocation's device address
     * and byte size, so one launch reaches every allocation with nothing uploaded or
     * allocated of its own; HIP: the mapped memory's device pointer and byte size). Nothing
     * fails: the hosts are this device's allocations. NULL (or
     * a table built before this entry): recall_direct reads no such words. */
    void (*direct_host_words)(fkv_bdev *dev, uint32_t n_hosts, const fkv_bhost *const *hosts,
                              int32_t *out);
} fkv_backend_ops;

/* Every compiled backend's table: fkv_backend_<name>() for each name of the generated list
 * (cmake/backends.cmake), and the same found by name (NULL: not compiled in). */
#define FKV_DECLARE_BACKEND(name) const fkv_backend_ops *fkv_backend_##name(void);
FKV_BACKENDS_COMPILED(FKV_DECLARE_BACKEND)
#undef FKV_DECLARE_BACKEND
const fkv_backend_ops *fkv_backend_find(const char *name);

/* Whether the table has `entry`: set, and inside the table's struct_size (a table built
 * before the entry existed lacks it). */
#define FKV_HAS_ENTRY(ops, entry)                                                              \
    ((ops)->struct_size >= offsetof(fkv_backend_ops, entry) + sizeof((ops)->entry) &&            \
     (ops)->entry != NULL)

/* The table's native_api: FKV_NATIVE_NONE for a table built before the entry existed. */
#define FKV_TABLE_NATIVE_API(ops)                                                              \
    ((ops)->struct_size >= offsetof(fkv_backend_ops, native_api) + sizeof((ops)->native_api)    \
         ? (ops)->native_api                                                                   \
         : FKV_NATIVE_NONE)

/* Checks an ops table (version, size, required entries); message names what is wrong. */
fkv_status fkv_backend_check(const fkv_backend_ops *ops);

#ifdef __cplusplus
}
#endif
#endif
