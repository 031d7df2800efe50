/* The dispatch layer (dispatch.h): argument checks, zero work as a marker, the table's
 * version and the generic fallbacks, once for every backend. */
#include "dispatch.h"

#include <string.h>

#include "../common/error.h"
#include "check.h"
#include "counters.h"
#include "device.h"
#include "fallback.h"

#define NAME(dev) ((dev)->ops->name)

/* What the checks see of a buffer or host allocation: its fkv_mem_desc (backend.h). */
static fkv_bview view_of(const void *mem) {
    const fkv_mem_desc *d = mem;
    return d ? (fkv_bview){1, d->size, d->base} : (fkv_bview){0, 0, 0};
}
#define VIEW(b) view_of(b)

/* On every refusal *deps.done is left NULL, as on any failed enqueue. */
static fkv_status refuse(fkv_deps deps, fkv_status st) {
    if (deps.done)
        *deps.done = NULL;
    return st;
}

/* The wait list and the queue of any enqueue. */
static fkv_status enqueue_checks(fkv_device *dev, const char *op, fkv_queue q, fkv_deps deps) {
    fkv_status st = fkv_check_deps(NAME(dev), op, &deps);
    if (st == FKV_OK)
        st = fkv_check_queue(NAME(dev), op, q);
    return st;
}

/* A kernel call: the wait list, the queue and the geometry. */
static fkv_status kernel_checks(fkv_device *dev, const char *op, fkv_queue q, fkv_deps deps,
                                const fkv_kv_geom *g) {
    fkv_status st = fkv_check_deps(NAME(dev), op, &deps);
    if (st == FKV_OK)
        st = fkv_check_kernel_call(NAME(dev), op, q, g);
    return st;
}

/* A quantized host format on a device that does not implement it: refused, never run as if
 * it were the compute dtype. g is already checked. */
static fkv_status host_format_check(fkv_device *dev, const char *op, const fkv_kv_geom *g) {
    if (g->host_format == FKV_HOST_SAME || (fkv_op_host_formats(dev) >> g->host_format & 1u))
        return FKV_OK;
    return fkv_error(FKV_ERR_UNSUPPORTED,
                     "backend '%s' %s: host format %s is not implemented (its pack_hnd, "
                     "scatter_hnd and recall_direct store and read only the compute dtype; use "
                     "host_format same, or the cpu backend)",
                     NAME(dev), op, fkv_host_format_name(g->host_format));
}

#define CHECKED(expr)                                                                          \
    do {                                                                                       \
        fkv_status checked_st_ = (expr);                                                       \
        if (checked_st_ != FKV_OK)                                                             \
            return refuse(deps, checked_st_);                                                  \
    } while (0)

/* A call with nothing to do: a marker (it still waits for deps.wait and signals deps.done). */
#define MARKER_IF_NONE(count)                                                                  \
    do {                                                                                       \
        if ((count) == 0)                                                                      \
            return dev->ops->marker(dev->bdev, q, deps);                                       \
    } while (0)

/* ---- devices ---- */

const fkv_backend_ops *fkv_device_ops(const fkv_device *dev) { return dev->ops; }

fkv_bdev *fkv_device_bdev(const fkv_device *dev) { return dev->bdev; }

/* ---- memory ---- */

/* On every failure of the allocations *out (and *ptr) are NULL. */
fkv_status fkv_op_buffer_alloc(fkv_device *dev, size_t size, fkv_bbuf **out) {
    if (out)
        *out = NULL;
    if (out == NULL || size == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s buffer_alloc: NULL output or size 0",
                         NAME(dev));
    return dev->ops->buffer_alloc(dev->bdev, size, out);
}

void fkv_op_buffer_free(fkv_device *dev, fkv_bbuf *buf) {
    if (buf)
        dev->ops->buffer_free(dev->bdev, buf);
}

fkv_status fkv_op_buffer_import(fkv_device *dev, void *native, size_t size, fkv_bbuf **out) {
    if (out)
        *out = NULL;
    if (out == NULL || native == NULL || size == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "%s buffer_import: NULL output or native object, or size 0", NAME(dev));
    if (!FKV_HAS_ENTRY(dev->ops, buffer_import))
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s' cannot import memory", NAME(dev));
    return dev->ops->buffer_import(dev->bdev, native, size, out);
}

fkv_status fkv_op_host_alloc(fkv_device *dev, size_t size, fkv_bhost **out, void **ptr) {
    if (out)
        *out = NULL;
    if (ptr)
        *ptr = NULL;
    if (out == NULL || ptr == NULL || size == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s host_alloc: NULL output or size 0",
                         NAME(dev));
    return dev->ops->host_alloc(dev->bdev, size, out, ptr);
}

void fkv_op_host_free(fkv_device *dev, fkv_bhost *host) {
    if (host)
        dev->ops->host_free(dev->bdev, host);
}

/* ---- events and queues ---- */

fkv_status fkv_op_event_wait(fkv_device *dev, uint32_t n, fkv_bevent *const *events) {
    if (n == 0)
        return FKV_OK;
    if (events == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s event_wait: %u events but a NULL array",
                         NAME(dev), n);
    for (uint32_t i = 0; i < n; i++)
        if (events[i] == NULL)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s event_wait: event %u is NULL",
                             NAME(dev), i);
    return dev->ops->event_wait(dev->bdev, n, events);
}

void fkv_op_event_release(fkv_device *dev, fkv_bevent *ev) {
    if (ev)
        dev->ops->event_release(dev->bdev, ev);
}

fkv_status fkv_op_marker(fkv_device *dev, fkv_queue q, fkv_deps deps) {
    CHECKED(enqueue_checks(dev, "marker", q, deps));
    return dev->ops->marker(dev->bdev, q, deps);
}

fkv_status fkv_op_finish(fkv_device *dev, fkv_queue q) {
    fkv_status st = fkv_check_queue(NAME(dev), "finish", q);
    return st == FKV_OK ? dev->ops->finish(dev->bdev, q) : st;
}

/* ---- copies ---- */

fkv_status fkv_op_write(fkv_device *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                        size_t dst_offset, const void *src, size_t size) {
    CHECKED(fkv_check_deps(NAME(dev), "write", &deps));
    CHECKED(fkv_check_host_transfer(NAME(dev), "write", q, VIEW(dst), dst_offset, size, src));
    MARKER_IF_NONE(size);
    return dev->ops->write(dev->bdev, q, deps, dst, dst_offset, src, size);
}

fkv_status fkv_op_read(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                       size_t src_offset, void *dst, size_t size) {
    CHECKED(fkv_check_deps(NAME(dev), "read", &deps));
    CHECKED(fkv_check_host_transfer(NAME(dev), "read", q, VIEW(src), src_offset, size, dst));
    MARKER_IF_NONE(size);
    return dev->ops->read(dev->bdev, q, deps, src, src_offset, dst, size);
}

fkv_status fkv_op_copy(fkv_device *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                       size_t dst_offset, const fkv_bbuf *src, size_t src_offset, size_t size) {
    CHECKED(fkv_check_deps(NAME(dev), "copy", &deps));
    CHECKED(fkv_check_device_copy(NAME(dev), q, VIEW(dst), dst_offset, VIEW(src), src_offset,
                                  size));
    MARKER_IF_NONE(size);
    return dev->ops->copy(dev->bdev, q, deps, dst, dst_offset, src, src_offset, size);
}

fkv_status fkv_op_write_regions(fkv_device *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                                 uint32_t n, const fkv_copy_region *regions) {
    CHECKED(fkv_check_deps(NAME(dev), "write_regions", &deps));
    CHECKED(fkv_check_write_regions(NAME(dev), q, VIEW(dst), n, regions));
    MARKER_IF_NONE(n);
    if (FKV_HAS_ENTRY(dev->ops, write_regions))
        return dev->ops->write_regions(dev->bdev, q, deps, dst, n, regions);
    return fkv_fallback_write_regions(dev->ops, dev->bdev, q, deps, dst, n, regions);
}

/* ---- kernels ---- */

fkv_status fkv_op_append(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *k_src, size_t k_off, const fkv_bbuf *v_src, size_t v_off,
                         uint32_t n_rows, const fkv_bbuf *rows, size_t rows_off, fkv_bbuf *kpool,
                         fkv_bbuf *vpool) {
    CHECKED(kernel_checks(dev, "append", q, deps, g));
    CHECKED(fkv_check_append(NAME(dev), g, VIEW(k_src), k_off, VIEW(v_src), v_off, n_rows,
                             VIEW(rows), rows_off, VIEW(kpool), VIEW(vpool)));
    MARKER_IF_NONE(n_rows);
    return dev->ops->append(dev->bdev, q, deps, g, k_src, k_off, v_src, v_off, n_rows, rows,
                            rows_off, kpool, vpool);
}

fkv_status fkv_op_summarize(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *kpool, uint32_t n_pages, const fkv_bbuf *pages,
                            size_t pages_off, fkv_bbuf *summaries) {
    CHECKED(kernel_checks(dev, "summarize", q, deps, g));
    CHECKED(fkv_check_summarize(NAME(dev), g, VIEW(kpool), n_pages, VIEW(pages), pages_off,
                                VIEW(summaries)));
    MARKER_IF_NONE(n_pages);
    return dev->ops->summarize(dev->bdev, q, deps, g, kpool, n_pages, pages, pages_off,
                               summaries);
}

fkv_status fkv_op_scores(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs, const fkv_bbuf *desc,
                         size_t desc_off, const fkv_bbuf *mask, size_t mask_off,
                         const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off) {
    CHECKED(kernel_checks(dev, "scores", q, deps, g));
    CHECKED(fkv_check_scores(NAME(dev), g, VIEW(qbuf), q_off, n_seqs, VIEW(desc), desc_off,
                             VIEW(summaries), VIEW(out), out_off));
    CHECKED(fkv_check_mask(NAME(dev), "scores", g, n_seqs, VIEW(mask), mask_off));
    MARKER_IF_NONE(n_seqs);
    return dev->ops->scores(dev->bdev, q, deps, g, qbuf, q_off, n_seqs, desc, desc_off, mask,
                            mask_off, summaries, out, out_off);
}

fkv_status fkv_op_select_pages(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                               const fkv_bbuf *mask, size_t mask_off, fkv_bbuf *scores,
                               size_t scores_off, const fkv_select_params *p, fkv_bbuf *out,
                               size_t out_off) {
    CHECKED(kernel_checks(dev, "select_pages", q, deps, g));
    CHECKED(fkv_check_select_pages(NAME(dev), g, n_seqs, VIEW(desc), desc_off, VIEW(scores),
                                   scores_off, p, VIEW(out), out_off));
    CHECKED(fkv_check_mask(NAME(dev), "select_pages", g, n_seqs, VIEW(mask), mask_off));
    MARKER_IF_NONE(n_seqs * (p->k > 0));
    if (FKV_HAS_ENTRY(dev->ops, select_pages))
        return dev->ops->select_pages(dev->bdev, q, deps, g, n_seqs, desc, desc_off, mask,
                                      mask_off, scores, scores_off, p, out, out_off);
    return fkv_fallback_select_pages(dev->ops, dev->bdev, q, deps, g, n_seqs, desc, desc_off,
                                     mask, mask_off, scores, scores_off, p, out, out_off);
}

fkv_status fkv_op_cosine_flags(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                               const fkv_bbuf *q_cur, size_t cur_off, const fkv_bbuf *q_prev,
                               size_t prev_off, const fkv_bbuf *prev_rows, size_t rows_off,
                               uint32_t n_seqs, float tau, fkv_bbuf *sims, size_t sims_off,
                               fkv_bbuf *flags, size_t flags_off) {
    CHECKED(kernel_checks(dev, "cosine_flags", q, deps, g));
    CHECKED(fkv_check_cosine_flags(NAME(dev), g, VIEW(q_cur), cur_off, VIEW(q_prev), prev_off,
                                   VIEW(prev_rows), rows_off, n_seqs, VIEW(sims), sims_off,
                                   VIEW(flags), flags_off));
    MARKER_IF_NONE(n_seqs);
    return dev->ops->cosine_flags(dev->bdev, q, deps, g, q_cur, cur_off, q_prev, prev_off,
                                  prev_rows, rows_off, n_seqs, tau, sims, sims_off, flags,
                                  flags_off);
}

fkv_status fkv_op_scores_check(fkv_device *dev, fkv_queue q, fkv_deps deps,
                               const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                               uint32_t n_seqs, const fkv_bbuf *desc, size_t desc_off,
                               const fkv_bbuf *summaries, fkv_bbuf *out, size_t out_off,
                               size_t cur_off, const fkv_bbuf *prev_rows, size_t rows_off,
                               float tau, fkv_bbuf *sims, size_t sims_off, fkv_bbuf *flags,
                               size_t flags_off) {
    CHECKED(kernel_checks(dev, "scores_check", q, deps, g));
    CHECKED(fkv_check_scores_check(NAME(dev), g, VIEW(qbuf), q_off, n_seqs, VIEW(desc), desc_off,
                                   VIEW(summaries), VIEW(out), out_off, cur_off,
                                   VIEW(prev_rows), rows_off, VIEW(sims), sims_off, VIEW(flags),
                                   flags_off));
    MARKER_IF_NONE(n_seqs);
    if (FKV_HAS_ENTRY(dev->ops, scores_check))
        return dev->ops->scores_check(dev->bdev, q, deps, g, qbuf, q_off, n_seqs, desc,
                                      desc_off, summaries, out, out_off, cur_off, prev_rows,
                                      rows_off, tau, sims, sims_off, flags, flags_off);
    return fkv_fallback_scores_check(dev->ops, dev->bdev, q, deps, g, qbuf, q_off, n_seqs, desc,
                                     desc_off, summaries, out, out_off, cur_off, prev_rows,
                                     rows_off, tau, sims, sims_off, flags, flags_off);
}

fkv_status fkv_op_pack_hnd(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                           const fkv_bbuf *kpool, const fkv_bbuf *vpool, uint32_t n_pages,
                           const fkv_bbuf *gslots, size_t gslots_off, fkv_bbuf *dst,
                           size_t dst_off) {
    CHECKED(kernel_checks(dev, "pack_hnd", q, deps, g));
    CHECKED(host_format_check(dev, "pack_hnd", g));
    CHECKED(fkv_check_pack_hnd(NAME(dev), g, VIEW(kpool), VIEW(vpool), n_pages, VIEW(gslots),
                               gslots_off, VIEW(dst), dst_off));
    MARKER_IF_NONE(n_pages);
    return dev->ops->pack_hnd(dev->bdev, q, deps, g, kpool, vpool, n_pages, gslots, gslots_off,
                              dst, dst_off);
}

fkv_status fkv_op_scatter_hnd(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                              const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                              const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                              fkv_bbuf *vpool) {
    CHECKED(kernel_checks(dev, "scatter_hnd", q, deps, g));
    CHECKED(host_format_check(dev, "scatter_hnd", g));
    CHECKED(fkv_check_scatter_hnd(NAME(dev), g, VIEW(src), src_off, n_units, VIEW(units),
                                  units_off, VIEW(kpool), VIEW(vpool)));
    MARKER_IF_NONE(n_units);
    return dev->ops->scatter_hnd(dev->bdev, q, deps, g, src, src_off, n_units, units, units_off,
                                 kpool, vpool);
}

fkv_status fkv_op_attention(fkv_device *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                            const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                            const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                            size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                            float scale, fkv_bbuf *out, size_t out_off) {
    CHECKED(kernel_checks(dev, "attention", q, deps, g));
    CHECKED(fkv_check_attention(NAME(dev), g, VIEW(qbuf), q_off, n_seqs, VIEW(heads), heads_off,
                                VIEW(entries), entries_off, VIEW(kpool), VIEW(vpool), VIEW(out),
                                out_off));
    MARKER_IF_NONE(n_seqs);
    return dev->ops->attention(dev->bdev, q, deps, g, qbuf, q_off, n_seqs, heads, heads_off,
                               entries, entries_off, kpool, vpool, scale, out, out_off);
}

fkv_status fkv_op_attention_dense(fkv_device *dev, fkv_queue q, fkv_deps deps,
                                   const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                   uint32_t n_tokens, const fkv_bbuf *k, const fkv_bbuf *v,
                                   float scale, fkv_bbuf *out, size_t out_off) {
    CHECKED(kernel_checks(dev, "attention_dense", q, deps, g));
    CHECKED(fkv_check_attention_dense(NAME(dev), g, VIEW(qbuf), q_off, n_tokens, VIEW(k),
                                      VIEW(v), VIEW(out), out_off));
    if (FKV_HAS_ENTRY(dev->ops, attention_dense))
        return dev->ops->attention_dense(dev->bdev, q, deps, g, qbuf, q_off, n_tokens, k, v,
                                         scale, out, out_off);
    return fkv_fallback_attention_dense(dev->ops, dev->bdev, q, deps, g, qbuf, q_off, n_tokens,
                                        k, v, scale, out, out_off);
}

uint32_t fkv_op_direct_host_ints(const fkv_device *dev) {
    return FKV_HAS_ENTRY(dev->ops, direct_host_words) ? FKV_DIRECT_HOST_INTS : 0;
}

void fkv_op_direct_host_words(fkv_device *dev, uint32_t n_hosts, const fkv_bhost *const *hosts,
                              int32_t *out) {
    if (FKV_HAS_ENTRY(dev->ops, direct_host_words))
        dev->ops->direct_host_words(dev->bdev, n_hosts, hosts, out);
}

fkv_status fkv_op_recall_direct(fkv_device *dev, fkv_queue q, fkv_deps deps,
                                const fkv_kv_geom *g, uint32_t n_hosts,
                                const fkv_bhost *const *hosts, uint32_t n_units,
                                const fkv_direct_src *srcs, const fkv_bbuf *units,
                                size_t units_off, fkv_bbuf *kpool, fkv_bbuf *vpool) {
    if (!FKV_HAS_ENTRY(dev->ops, recall_direct))
        return refuse(deps, fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s' has no recall_direct "
                                                           "(zero-copy recall)",
                                      NAME(dev)));
    CHECKED(kernel_checks(dev, "recall_direct", q, deps, g));
    CHECKED(host_format_check(dev, "recall_direct", g));
    CHECKED(fkv_check_recall_direct(NAME(dev), g, n_hosts, hosts, n_units, srcs, VIEW(units),
                                    units_off, fkv_op_direct_host_ints(dev), VIEW(kpool),
                                    VIEW(vpool)));
    MARKER_IF_NONE(n_units);
    return dev->ops->recall_direct(dev->bdev, q, deps, g, n_hosts, hosts, n_units, srcs, units,
                                   units_off, kpool, vpool);
}

/* ---- device properties ---- */

fkv_recall_mode fkv_op_recall_mode(fkv_device *dev) {
    return FKV_HAS_ENTRY(dev->ops, recall_mode) ? dev->ops->recall_mode(dev->bdev)
                                                : FKV_RECALL_STAGED;
}

uint32_t fkv_op_host_formats(fkv_device *dev) {
    uint32_t mask = FKV_HAS_ENTRY(dev->ops, host_formats) ? dev->ops->host_formats(dev->bdev) : 0;
    return mask | 1u << FKV_HOST_SAME;
}

fkv_status fkv_op_opened_info(fkv_device *dev, fkv_device_info *info) {
    if (info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s opened_info: NULL output", NAME(dev));
    *info = dev->info;
    return FKV_OK;
}

/* The largest buffer against the limit, the geometry as every kernel call checks it, then
 * the table's own check. */
fkv_status fkv_op_check_geometry(fkv_device *dev, const fkv_kv_geom *g,
                                 const fkv_geom_query *q) {
    if (g == NULL || q == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s check_geometry: NULL argument", NAME(dev));
    const fkv_backend_ops *ops = dev->ops;
    const fkv_device_info *info = &dev->info;
    if (info->max_buffer_bytes && q->largest_buffer > info->max_buffer_bytes)
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY, /* as the allocation itself would */
                         "%s: a %llu-byte buffer exceeds the device's %llu-byte limit (lower "
                         "max_seqs, max_context or budget_tokens)",
                         ops->name, (unsigned long long)q->largest_buffer,
                         (unsigned long long)info->max_buffer_bytes);
    fkv_status st = fkv_check_kernel_call(ops->name, "check_geometry", FKV_QUEUE_COMPUTE, g);
    if (st == FKV_OK)
        st = host_format_check(dev, "check_geometry", g);
    if (st != FKV_OK)
        return st;
    return FKV_HAS_ENTRY(ops, check_geometry) ? ops->check_geometry(dev->bdev, g, q) : FKV_OK;
}

const char *fkv_op_recall_note(fkv_device *dev) {
    const char *note =
        FKV_HAS_ENTRY(dev->ops, recall_note) ? dev->ops->recall_note(dev->bdev) : NULL;
    return note ? note : "";
}

fkv_status fkv_op_set_option(fkv_device *dev, const char *key, const char *value) {
    if (key == NULL || value == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s set_option: NULL key or value",
                         NAME(dev));
    if (!FKV_HAS_ENTRY(dev->ops, set_option))
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s' has no options (set '%s')",
                         NAME(dev), key);
    return dev->ops->set_option(dev->bdev, key, value);
}

fkv_status fkv_op_get_option(fkv_device *dev, const char *key, char *out, size_t size) {
    if (key == NULL || out == NULL || size == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s get_option: NULL key or output",
                         NAME(dev));
    out[0] = '\0';
    if (!FKV_HAS_ENTRY(dev->ops, get_option))
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s' has no options (get '%s')",
                         NAME(dev), key);
    return dev->ops->get_option(dev->bdev, key, out, size);
}

fkv_status fkv_op_counters(fkv_device *dev, fkv_counters *out) {
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s counters: NULL output", NAME(dev));
    const fkv_bcounters *c = FKV_HAS_ENTRY(dev->ops, counters) ? dev->ops->counters(dev->bdev)
                                                                : NULL;
    if (c == NULL)
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s' does not count commands", NAME(dev));
    fkv_bcounters_read(c, out);
    return FKV_OK;
}

/* ---- engine interop ---- */

fkv_native_api fkv_op_native_api(const fkv_device *dev) {
    return FKV_TABLE_NATIVE_API(dev->ops);
}

/* Whether the device has a native API, else FKV_ERR_UNSUPPORTED naming `what`. */
static fkv_status native_checks(fkv_device *dev, const char *what, int has_entry) {
    if (FKV_TABLE_NATIVE_API(dev->ops) == FKV_NATIVE_NONE || !has_entry)
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s' has no native API (%s)", NAME(dev),
                         what);
    return FKV_OK;
}

fkv_status fkv_op_native_objects(fkv_device *dev, fkv_native_objects *out) {
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s native_objects: NULL output", NAME(dev));
    fkv_status st = native_checks(dev, "native objects",
                                  FKV_HAS_ENTRY(dev->ops, native_objects));
    if (st != FKV_OK)
        return st;
    fkv_native_objects objs;
    memset(&objs, 0, sizeof objs);
    if ((st = dev->ops->native_objects(dev->bdev, &objs)) == FKV_OK)
        *out = objs;
    return st;
}

fkv_status fkv_op_event_import(fkv_device *dev, const fkv_native_event *ev, fkv_bevent **out) {
    if (out)
        *out = NULL;
    fkv_status st = fkv_check_native_event(NAME(dev), "event_import", ev, out != NULL);
    if (st == FKV_OK)
        st = native_checks(dev, "external events", FKV_HAS_ENTRY(dev->ops, event_import) &&
                                                       FKV_HAS_ENTRY(dev->ops, event_unimport));
    return st == FKV_OK ? dev->ops->event_import(dev->bdev, ev, out) : st;
}

void fkv_op_event_unimport(fkv_device *dev, fkv_bevent *ev) {
    if (ev)
        dev->ops->event_unimport(dev->bdev, ev);
}

fkv_status fkv_op_event_signal(fkv_device *dev, fkv_queue q, fkv_deps deps,
                               fkv_native_event *sig) {
    CHECKED(enqueue_checks(dev, "event_signal", q, deps));
    CHECKED(sig == NULL ? fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s event_signal: NULL event",
                                    NAME(dev))
                        : FKV_OK);
    CHECKED(native_checks(dev, "external events", FKV_HAS_ENTRY(dev->ops, event_signal)));
    return dev->ops->event_signal(dev->bdev, q, deps, sig);
}

fkv_status fkv_op_event_query(fkv_device *dev, fkv_bevent *ev, int *done) {
    *done = 0;
    if (ev == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s event_query: NULL event", NAME(dev));
    return FKV_HAS_ENTRY(dev->ops, event_query) ? dev->ops->event_query(dev->bdev, ev, done)
                                                : FKV_OK;
}
