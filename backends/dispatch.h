/* The dispatch layer: every op of the ops table (backends/backend.h) on an opened device.
 *
 * INTERNAL AND UNSTABLE. This is the one internal header that core/, the tests and the tools
 * (bench/, conformance/, tools/) include besides the public include/freekv.h; it changes with
 * the library and is not installed.
 *
 * For every call, once and for every backend (the CPU reference included):
 *  - the arguments are checked (backends/check.c): a refused call returns
 *    FKV_ERR_INVALID_ARGUMENT with a message "<backend> <op>: ...", enqueues nothing and
 *    leaves *deps.done NULL;
 *  - zero work (a copy of 0 bytes, a kernel over 0 items, 0 regions) is a marker;
 *  - an optional entry the table lacks, NULL or beyond its struct_size, gets its generic
 *    fallback, or FKV_ERR_UNSUPPORTED naming the backend where there is none.
 * Each fkv_op_NAME(dev, ...) takes the arguments of the table's NAME after its fkv_bdev, in
 * the same order: ops->NAME(bdev, ARGS) is fkv_op_NAME(dev, ARGS). */
#ifndef FKV_BACKENDS_DISPATCH_H
#define FKV_BACKENDS_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "freekv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- devices ---- */

/* Opens device `index` of an explicit ops table (tests use it for tables with entries
 * removed or replaced). The same checks as fkv_device_open: the table's version and required
 * entries, then, once open, that capabilities and optional entries agree. */
fkv_status fkv_device_open_ops(const fkv_backend_ops *ops, uint32_t index, fkv_device **out);
/* A second handle on dev's backend device that calls through `ops`, a copy of dev's table with
 * entries replaced (tests force a recall mode this way); capabilities and entries are checked
 * for agreement as at open. Closing the view leaves dev open; close it before dev. */
fkv_status fkv_device_view(fkv_device *dev, const fkv_backend_ops *ops, fkv_device **out);
/* The table and the backend's device object behind dev, for tests that drive a table
 * directly (the op-by-op comparisons of a backend with the CPU reference). */
const fkv_backend_ops *fkv_device_ops(const fkv_device *dev);
fkv_bdev *fkv_device_bdev(const fkv_device *dev);

/* ---- memory ---- */
fkv_status fkv_op_buffer_alloc(fkv_device *dev, size_t size, fkv_bbuf **out);
void fkv_op_buffer_free(fkv_device *dev, fkv_bbuf *buf); /* NULL: nothing */
/* No buffer_import entry: FKV_ERR_UNSUPPORTED. */
fkv_status fkv_op_buffer_import(fkv_device *dev, void *native, size_t size, fkv_bbuf **out);
fkv_status fkv_op_host_alloc(fkv_device *dev, size_t size, fkv_bhost **out, void **ptr);
void fkv_op_host_free(fkv_device *dev, fkv_bhost *host); /* NULL: nothing */

/* ---- events and queues ---- */
fkv_status fkv_op_event_wait(fkv_device *dev, uint32_t n, fkv_bevent *const *events);
void fkv_op_event_release(fkv_device *dev, fkv_bevent *ev); /* NULL: nothing */
fkv_status fkv_op_marker(fkv_device *dev, fkv_queue q, fkv_deps deps);
fkv_status fkv_op_finish(fkv_device *dev, fkv_queue q);

/* ---- copies ---- */
fkv_status fkv_op_write(fkv_device *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                        size_t dst_offset, const void *src, size_t size);
fkv_status fkv_op_read(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                       size_t src_offset, void *dst, size_t size);
fkv_status fkv_op_copy(fkv_device *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                       size_t dst_offset, const fkv_bbuf *src, size_t src_offset, size_t size);
/* No write_regions entry: one write per region (only the first waits, only the last
 * signals). */
fkv_status fkv_op_write_regions(fkv_device *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                                 uint32_t n, const fkv_copy_region *regions);

/* ---- kernels ---- */
fkv_status fkv_op_append(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src, size_t v_off,
                         uint32_t n_rows, const fkv_bbuf *rows, size_t rows_off, fkv_bbuf *kpool,
                         fkv_bbuf *vpool);
fkv_status fkv_op_summarize(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *kpool, uint32_t n_pages, const fkv_bbuf *pages,
                            size_t pages_off, fkv_bbuf *summaries);
fkv_status fkv_op_scores(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs, const fkv_bbuf *desc,
                         size_t desc_off, const fkv_bbuf *mask, size_t mask_off,
                         const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off);
/* No select_pages entry: the scores are read back and reduced on the host by the CPU
 * reference's code (fallback.h); waits for completion. */
fkv_status fkv_op_select_pages(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                               const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                               size_t scores_off, const fkv_select_params *p, fkv_bbuf *out,
                               size_t out_off);
fkv_status fkv_op_cosine_flags(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *q_cur, size_t cur_off, const fkv_bbuf *q_prev,
                               size_t prev_off, const fkv_bbuf *prev_rows, size_t rows_off,
                               uint32_t n_seqs, float tau, fkv_bbuf *sims, size_t sims_off,
                               fkv_bbuf *flags, size_t flags_off);
/* cosine_flags and scores in one launch (backend.h scores_check). No scores_check entry:
 * cosine_flags, then scores (two commands). */
fkv_status fkv_op_scores_check(fkv_device *dev, fkv_queue q, fkv_deps deps,
                               const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                               uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                               const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off,
                               size_t cur_off, const fkv_bbuf *prev_rows, size_t rows_off,
                               float tau, fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                               size_t flags_off);
fkv_status fkv_op_pack_hnd(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                           const fkv_bbuf *kpool, const fkv_bbuf *vpool, uint32_t n_pages,
                           const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                           size_t dst_off);
fkv_status fkv_op_scatter_hnd(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                              const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                              const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                              fkv_bbuf *vpool);
fkv_status fkv_op_attention(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                            const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                            size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                            float scale, fkv_bbuf *out, size_t out_off);
/* No attention_dense entry: paged attention over the buffers seen as pool slots (it waits
 * for completion: its descriptor buffers are temporary). */
fkv_status fkv_op_attention_dense(fkv_device *dev, fkv_queue q, fkv_deps deps,
                                   const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                   uint32_t n_tokens, const fkv_bbuf *k, const fkv_bbuf *v,
                                   float scale, fkv_bbuf *out, size_t out_off);
/* Ints per host allocation a recall_direct units table holds after its unit entries:
 * FKV_DIRECT_HOST_INTS where the table has direct_host_words, else 0. */
uint32_t fkv_op_direct_host_ints(const fkv_device *dev);
/* Those ints of hosts[0..n_hosts) into out (nothing without the entry). */
void fkv_op_direct_host_words(fkv_device *dev, uint32_t n_hosts, const fkv_bhost *const *hosts,
                              int32_t *out);
/* No recall_direct entry: FKV_ERR_UNSUPPORTED (a device that opened without one never
 * reports the direct recall mode). */
fkv_status fkv_op_recall_direct(fkv_device *dev, fkv_queue q, fkv_deps deps,
                                const fkv_kv_geom *g, uint32_t n_hosts,
                                const fkv_bhost *const *hosts, uint32_t n_units,
                                const fkv_direct_src *srcs, const fkv_bbuf *units,
                                size_t units_off, fkv_bbuf *kpool, fkv_bbuf *vpool);

/* ---- device properties ---- */
/* The host formats the device implements (backend.h host_formats), FKV_HOST_SAME always. */
uint32_t fkv_op_host_formats(fkv_device *dev);
/* No recall_mode entry: FKV_RECALL_STAGED. */
fkv_recall_mode fkv_op_recall_mode(fkv_device *dev);
/* The device info of the open device (what fkv_device_get_info returns). */
fkv_status fkv_op_opened_info(fkv_device *dev, fkv_device_info *info);
/* The largest buffer against the device's max_buffer_bytes (FKV_ERR_OUT_OF_DEVICE_MEMORY, as
 * the allocation would fail), then the table's check_geometry when it has one. */
fkv_status fkv_op_check_geometry(fkv_device *dev, const fkv_kv_geom *g,
                                  const fkv_geom_query *q);
/* The table's recall_note, "" when it has none. */
const char *fkv_op_recall_note(fkv_device *dev);
/* Backend-specific knobs and readouts (docs/backend-options.md). No entry: FKV_ERR_UNSUPPORTED
 * ("backend X has no options"). */
fkv_status fkv_op_set_option(fkv_device *dev, const char *key, const char *value);
fkv_status fkv_op_get_option(fkv_device *dev, const char *key, char *out, size_t size);
/* The device's command counters (fkv_device_get_counters). No counters entry:
 * FKV_ERR_UNSUPPORTED ("backend X does not count commands"), *out untouched. */
fkv_status fkv_op_counters(fkv_device *dev, fkv_counters *out);

/* ---- engine interop ---- */
/* The device's native API (FKV_NATIVE_NONE: none, e.g. the CPU reference). */
fkv_native_api fkv_op_native_api(const fkv_device *dev);
/* The native objects of the device (fkv_device_get_native). No native API:
 * FKV_ERR_UNSUPPORTED, *out untouched. */
fkv_status fkv_op_native_objects(fkv_device *dev, fkv_native_objects *out);
/* An engine's event as a wait-list entry; release it with fkv_op_event_unimport. No native API:
 * FKV_ERR_UNSUPPORTED. */
fkv_status fkv_op_event_import(fkv_device *dev, const fkv_native_event *ev, fkv_bevent **out);
void fkv_op_event_unimport(fkv_device *dev, fkv_bevent *ev); /* NULL: nothing */
/* Whether ev (non-NULL) completed, without blocking (backend.h event_query); 0 on a backend
 * that cannot tell. */
fkv_status fkv_op_event_query(fkv_device *dev, fkv_bevent *ev, int *done);
/* Signals the engine's event after deps.wait and q's earlier commands. No native API:
 * FKV_ERR_UNSUPPORTED. */
fkv_status fkv_op_event_signal(fkv_device *dev, fkv_queue q, fkv_deps deps,
                               fkv_native_event *sig);

#ifdef __cplusplus
}
#endif
#endif
