#include "check.h"

#include "../common/error.h"

#define REFUSE(...) fkv_error(FKV_ERR_INVALID_ARGUMENT, __VA_ARGS__)

/* a * b, or UINT64_MAX when that does not fit: refused by any span check. */
static uint64_t mul(uint64_t a, uint64_t b) {
    return b != 0 && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}

static uint64_t mul3(uint64_t a, uint64_t b, uint64_t c) { return mul(mul(a, b), c); }

fkv_status fkv_check_deps(const char *backend, const char *op, const fkv_deps *deps) {
    if (deps->n_wait > 0 && deps->wait == NULL)
        return REFUSE("%s %s: a wait list of %u events is NULL", backend, op, deps->n_wait);
    return FKV_OK;
}

fkv_status fkv_check_queue(const char *backend, const char *op, fkv_queue q) {
    if ((unsigned)q >= FKV_QUEUE_COUNT)
        return REFUSE("%s %s: bad queue %d", backend, op, (int)q);
    return FKV_OK;
}

fkv_status fkv_check_host_transfer(const char *backend, const char *op, fkv_queue q,
                                   fkv_bview buf, size_t off, size_t size, const void *host) {
    fkv_status st = fkv_check_queue(backend, op, q);
    if (st == FKV_OK)
        st = fkv_check_span(backend, op, "buffer", (fkv_bview){buf.present, buf.size, 0}, off,
                            size, 1);
    if (st == FKV_OK && host == NULL && size)
        st = REFUSE("%s %s: NULL host pointer", backend, op);
    return st;
}

fkv_status fkv_check_device_copy(const char *backend, fkv_queue q, fkv_bview dst,
                                 size_t dst_off, fkv_bview src, size_t src_off, size_t size) {
    fkv_status st = fkv_check_queue(backend, "copy", q);
    if (st == FKV_OK)
        st = fkv_check_span(backend, "copy", "destination", dst, dst_off, size, 1);
    if (st == FKV_OK)
        st = fkv_check_span(backend, "copy", "source", src, src_off, size, 1);
    return st;
}

fkv_status fkv_check_write_regions(const char *backend, fkv_queue q, fkv_bview dst, uint32_t n,
                                   const fkv_copy_region *regions) {
    const char *op = "write_regions";
    fkv_status st = fkv_check_queue(backend, op, q);
    if (st == FKV_OK)
        st = fkv_check_span(backend, op, "destination", dst, 0, 0, 1);
    if (st != FKV_OK)
        return st;
    if (n > 0 && regions == NULL)
        return REFUSE("%s %s: %u regions but a NULL array", backend, op, n);
    for (uint32_t i = 0; i < n; i++) {
        const fkv_copy_region *r = &regions[i];
        if (r->src == NULL && r->size > 0)
            return REFUSE("%s %s: region %u has a NULL source", backend, op, i);
        if (r->dst_offset > dst.size || r->size > dst.size - r->dst_offset)
            return REFUSE("%s %s: region %u (%zu bytes at %zu) exceeds the destination (%zu "
                          "bytes)",
                          backend, op, i, r->size, r->dst_offset, dst.size);
    }
    return FKV_OK;
}

fkv_status fkv_check_kernel_call(const char *backend, const char *op, fkv_queue q,
                                 const fkv_kv_geom *g) {
    if (q != FKV_QUEUE_COMPUTE && q != FKV_QUEUE_BACKGROUND)
        return REFUSE("%s %s: kernels run on the compute or background queue, not %d", backend,
                      op, (int)q);
    if (g == NULL)
        return REFUSE("%s %s: NULL geometry", backend, op);
    if (g->n_kv_heads == 0 || g->group == 0 || g->head_dim == 0 || g->page_size == 0)
        return REFUSE("%s %s: geometry with a zero (kv heads %u, group %u, d %u, page %u)",
                      backend, op, g->n_kv_heads, g->group, g->head_dim, g->page_size);
    if (fkv_dtype_size(g->dtype) == 0)
        return REFUSE("%s %s: unknown dtype %d", backend, op, (int)g->dtype);
    if ((unsigned)g->host_format > FKV_HOST_Q4)
        return REFUSE("%s %s: unknown host format %d", backend, op, (int)g->host_format);
    if ((unsigned)g->summary_format > FKV_SUMMARY_F16)
        return REFUSE("%s %s: unknown summary format %d", backend, op, (int)g->summary_format);
    uint64_t slot = (uint64_t)g->page_size * g->n_kv_heads * g->head_dim * 2;
    uint64_t qblock = (uint64_t)g->n_kv_heads * g->group * g->head_dim;
    if (slot > INT32_MAX || qblock > INT32_MAX)
        return REFUSE("%s %s: geometry too large for 32-bit kernel indices", backend, op);
    return FKV_OK;
}

fkv_status fkv_check_span(const char *backend, const char *op, const char *what, fkv_bview b,
                          size_t off, uint64_t bytes, size_t align) {
    if (!b.present)
        return REFUSE("%s %s: %s is NULL", backend, op, what);
    if (off > b.size || bytes > b.size - off)
        return REFUSE("%s %s: %s needs %llu bytes at offset %zu of a %zu-byte buffer", backend,
                      op, what, (unsigned long long)bytes, off, b.size);
    if (align > 1 && (b.base + off) % align != 0)
        return REFUSE("%s %s: %s at offset %zu is not aligned to %zu bytes", backend, op, what,
                      off, align);
    return FKV_OK;
}

fkv_status fkv_check_pools(const char *backend, const char *op, const fkv_kv_geom *g,
                           fkv_bview k, fkv_bview v) {
    if (!k.present || !v.present)
        return REFUSE("%s %s: NULL KV pool", backend, op);
    size_t es = fkv_dtype_size(g->dtype);
    if (k.base % es || v.base % es)
        return REFUSE("%s %s: KV pool not aligned to its dtype", backend, op);
    size_t slot_bytes = fkv_slot_bytes(g);
    if ((k.size < v.size ? k.size : v.size) < slot_bytes)
        return REFUSE("%s %s: KV pools smaller than one slot (%zu bytes)", backend, op,
                      slot_bytes);
    return FKV_OK;
}

/* ---- per op ---- */

/* (sequence, KV head) pairs index workgroups and descriptors in 32 bits. */
static fkv_status bh_count(const char *backend, const char *op, uint32_t n_seqs,
                           const fkv_kv_geom *g) {
    if ((uint64_t)n_seqs * g->n_kv_heads > INT32_MAX)
        return REFUSE("%s %s: %u sequences is too many", backend, op, n_seqs);
    return FKV_OK;
}

fkv_status fkv_check_append(const char *backend, const fkv_kv_geom *g, fkv_bview k_src,
                            size_t k_off, fkv_bview v_src, size_t v_off, uint32_t n_rows,
                            fkv_bview rows, size_t rows_off, fkv_bview kpool, fkv_bview vpool) {
    const char *op = "append";
    uint64_t bytes = mul3(n_rows, (uint64_t)g->n_kv_heads * g->head_dim, sizeof(float));
    fkv_status st;
    if ((st = fkv_check_span(backend, op, "k_src", k_src, k_off, bytes, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "v_src", v_src, v_off, bytes, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "rows", rows, rows_off,
                             (uint64_t)n_rows * sizeof(int32_t), 4)) != FKV_OK)
        return st;
    return fkv_check_pools(backend, op, g, kpool, vpool);
}

fkv_status fkv_check_summarize(const char *backend, const fkv_kv_geom *g, fkv_bview kpool,
                               uint32_t n_pages, fkv_bview pages, size_t pages_off,
                               fkv_bview summaries) {
    const char *op = "summarize";
    uint64_t summary_bytes = fkv_summary_bytes(g);
    fkv_status st;
    if ((st = fkv_check_span(backend, op, "pages", pages, pages_off,
                             (uint64_t)n_pages * 2 * sizeof(int32_t), 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "summaries", summaries, 0, summary_bytes, 4)) !=
            FKV_OK)
        return st;
    return fkv_check_pools(backend, op, g, kpool, kpool);
}

/* scores' spans, for scores and scores_check (op names the call) */
static fkv_status scores_spans(const char *backend, const char *op, const fkv_kv_geom *g,
                               fkv_bview q, size_t q_off, uint32_t n_seqs, fkv_bview desc,
                               size_t desc_off, fkv_bview summaries, fkv_bview out,
                               size_t out_off) {
    /* the rows come from device data: one must exist, the kernels check the rest */
    uint64_t q_row = (uint64_t)g->n_kv_heads * g->group * g->head_dim * sizeof(float);
    fkv_status st;
    if ((st = fkv_check_span(backend, op, "q", q, q_off, n_seqs ? q_row : 0, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "desc", desc, desc_off,
                             (uint64_t)n_seqs * FKV_SCORES_DESC_INTS * sizeof(int32_t), 4)) !=
            FKV_OK ||
        (st = fkv_check_span(backend, op, "summaries", summaries, 0, 0, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "out", out, out_off, 0, 4)) != FKV_OK)
        return st;
    return bh_count(backend, op, n_seqs, g);
}

fkv_status fkv_check_scores(const char *backend, const fkv_kv_geom *g, fkv_bview q, size_t q_off,
                            uint32_t n_seqs, fkv_bview desc, size_t desc_off,
                            fkv_bview summaries, fkv_bview out, size_t out_off) {
    return scores_spans(backend, "scores", g, q, q_off, n_seqs, desc, desc_off, summaries, out,
                        out_off);
}

fkv_status fkv_check_select_pages(const char *backend, const fkv_kv_geom *g, uint32_t n_seqs,
                                  fkv_bview desc, size_t desc_off, fkv_bview scores,
                                  size_t scores_off, const fkv_select_params *p, fkv_bview out,
                                  size_t out_off) {
    const char *op = "select_pages";
    if (p == NULL)
        return REFUSE("%s %s: NULL parameters", backend, op);
    if ((unsigned)p->reduce > FKV_GROUP_MAX)
        return REFUSE("%s %s: unknown group reduction %d", backend, op, (int)p->reduce);
    if (!(p->temp_scale > 0.0f) || p->temp_scale > 3.4e38f)
        return REFUSE("%s %s: temp_scale %g is not a finite value > 0", backend, op,
                      (double)p->temp_scale);
    if (p->k > INT32_MAX / 2)
        return REFUSE("%s %s: k = %u pages per head is too many", backend, op, p->k);
    uint64_t records = mul3((uint64_t)n_seqs * g->n_kv_heads, 2 * (uint64_t)p->k, 4);
    fkv_status st;
    if ((st = fkv_check_span(backend, op, "desc", desc, desc_off,
                             (uint64_t)n_seqs * FKV_SCORES_DESC_INTS * sizeof(int32_t), 4)) !=
            FKV_OK ||
        (st = fkv_check_span(backend, op, "scores", scores, scores_off, 0, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "out", out, out_off, records, 4)) != FKV_OK)
        return st;
    return bh_count(backend, op, n_seqs, g);
}

fkv_status fkv_check_mask(const char *backend, const char *op, const fkv_kv_geom *g,
                          uint32_t n_seqs, fkv_bview mask, size_t mask_off) {
    if (!mask.present)
        return FKV_OK;
    return fkv_check_span(backend, op, "mask", mask, mask_off,
                          (uint64_t)n_seqs * g->n_kv_heads * sizeof(int32_t), 4);
}

/* cosine_flags' spans, for cosine_flags and scores_check (op names the call) */
static fkv_status cosine_spans(const char *backend, const char *op, const fkv_kv_geom *g,
                               fkv_bview q_cur, size_t cur_off, fkv_bview q_prev,
                               size_t prev_off, fkv_bview prev_rows, size_t rows_off,
                               uint32_t n_seqs, fkv_bview sims, size_t sims_off, fkv_bview flags,
                               size_t flags_off) {
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    uint64_t q_bytes = mul3(n_bh, (uint64_t)g->group * g->head_dim, sizeof(float));
    fkv_status st;
    /* q_prev's rows come from device data (the kernels check them) */
    if ((st = fkv_check_span(backend, op, "q_cur", q_cur, cur_off, q_bytes, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "q_prev", q_prev, prev_off, 0, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "prev_rows", prev_rows, rows_off,
                             (uint64_t)n_seqs * sizeof(int32_t), 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "sims", sims, sims_off, n_bh * sizeof(float), 4)) !=
            FKV_OK ||
        (st = fkv_check_span(backend, op, "flags", flags, flags_off, n_bh * sizeof(int32_t),
                             4)) != FKV_OK)
        return st;
    return bh_count(backend, op, n_seqs, g);
}

fkv_status fkv_check_cosine_flags(const char *backend, const fkv_kv_geom *g, fkv_bview q_cur,
                                  size_t cur_off, fkv_bview q_prev, size_t prev_off,
                                  fkv_bview prev_rows, size_t rows_off, uint32_t n_seqs,
                                  fkv_bview sims, size_t sims_off, fkv_bview flags,
                                  size_t flags_off) {
    return cosine_spans(backend, "cosine_flags", g, q_cur, cur_off, q_prev, prev_off, prev_rows,
                        rows_off, n_seqs, sims, sims_off, flags, flags_off);
}

fkv_status fkv_check_scores_check(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                                  size_t q_off, uint32_t n_seqs, fkv_bview desc,
                                  size_t desc_off, fkv_bview summaries, fkv_bview out,
                                  size_t out_off, size_t cur_off, fkv_bview prev_rows,
                                  size_t rows_off, fkv_bview sims, size_t sims_off,
                                  fkv_bview flags, size_t flags_off) {
    const char *op = "scores_check";
    fkv_status st = scores_spans(backend, op, g, q, q_off, n_seqs, desc, desc_off, summaries,
                                 out, out_off);
    if (st == FKV_OK)
        st = cosine_spans(backend, op, g, q, cur_off, q, q_off, prev_rows, rows_off, n_seqs,
                          sims, sims_off, flags, flags_off);
    return st;
}

fkv_status fkv_check_pack_hnd(const char *backend, const fkv_kv_geom *g, fkv_bview kpool,
                              fkv_bview vpool, uint32_t n_pages, fkv_bview gslots,
                              size_t gslots_off, fkv_bview dst, size_t dst_off) {
    const char *op = "pack_hnd";
    size_t es = fkv_dtype_size(g->dtype);
    uint64_t page_bytes = (uint64_t)g->n_kv_heads * fkv_unit_bytes(g);
    fkv_status st;
    if ((st = fkv_check_span(backend, op, "gslots", gslots, gslots_off,
                             (uint64_t)n_pages * sizeof(int32_t), 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "dst", dst, dst_off, mul(n_pages, page_bytes), es)) !=
            FKV_OK)
        return st;
    return fkv_check_pools(backend, op, g, kpool, vpool);
}

fkv_status fkv_check_scatter_hnd(const char *backend, const fkv_kv_geom *g, fkv_bview src,
                                 size_t src_off, uint32_t n_units, fkv_bview units,
                                 size_t units_off, fkv_bview kpool, fkv_bview vpool) {
    const char *op = "scatter_hnd";
    size_t es = fkv_dtype_size(g->dtype);
    uint64_t unit_bytes = fkv_unit_bytes(g);
    fkv_status st;
    if ((st = fkv_check_span(backend, op, "src", src, src_off, mul(n_units, unit_bytes), es)) !=
            FKV_OK ||
        (st = fkv_check_span(backend, op, "units", units, units_off,
                             (uint64_t)n_units * 2 * sizeof(int32_t), 4)) != FKV_OK)
        return st;
    return fkv_check_pools(backend, op, g, kpool, vpool);
}

fkv_status fkv_check_recall_direct(const char *backend, const fkv_kv_geom *g, uint32_t n_hosts,
                                   const fkv_bhost *const *hosts, uint32_t n_units,
                                   const fkv_direct_src *srcs, fkv_bview units, size_t units_off,
                                   uint32_t host_ints, fkv_bview kpool, fkv_bview vpool) {
    const char *op = "recall_direct";
    size_t es = fkv_dtype_size(g->dtype);
    uint64_t unit_bytes = fkv_unit_bytes(g);
    fkv_status st;
    if (n_hosts == 0 || hosts == NULL)
        return REFUSE("%s %s: no host memory", backend, op);
    for (uint32_t h = 0; h < n_hosts; h++)
        if (hosts[h] == NULL)
            return REFUSE("%s %s: NULL host memory (host %u)", backend, op, h);
    if (n_units && srcs == NULL)
        return REFUSE("%s %s: NULL unit sources", backend, op);
    if ((st = fkv_check_span(backend, op, "units", units, units_off,
                             fkv_direct_table_ints(n_units, n_hosts, host_ints) *
                                 sizeof(int32_t),
                             4)) != FKV_OK ||
        (st = fkv_check_pools(backend, op, g, kpool, vpool)) != FKV_OK)
        return st;
    for (uint32_t i = 0; i < n_units; i++) {
        if (srcs[i].host >= n_hosts)
            return REFUSE("%s %s: unit %u names host %u of %u", backend, op, i, srcs[i].host,
                          n_hosts);
        uint64_t off = srcs[i].offset;
        /* every backend's fkv_bhost starts with its fkv_mem_desc */
        size_t size = ((const fkv_mem_desc *)hosts[srcs[i].host])->size;
        if (off % es || off > size || unit_bytes > size - off || off / es > UINT32_MAX)
            return REFUSE("%s %s: unit %u at host offset %llu is misaligned or beyond the "
                          "%zu-byte allocation",
                          backend, op, i, (unsigned long long)off, size);
    }
    return FKV_OK;
}

fkv_status fkv_check_attention(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                               size_t q_off, uint32_t n_seqs, fkv_bview heads, size_t heads_off,
                               fkv_bview entries, size_t entries_off, fkv_bview kpool,
                               fkv_bview vpool, fkv_bview out, size_t out_off) {
    const char *op = "attention";
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    uint64_t q_bytes = mul3(n_bh, (uint64_t)g->group * g->head_dim, sizeof(float));
    fkv_status st;
    if ((st = fkv_check_span(backend, op, "q", q, q_off, q_bytes, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "heads", heads, heads_off,
                             n_bh * 2 * sizeof(int32_t), 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "entries", entries, entries_off, 0, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "out", out, out_off, q_bytes, 4)) != FKV_OK ||
        (st = fkv_check_pools(backend, op, g, kpool, vpool)) != FKV_OK)
        return st;
    return bh_count(backend, op, n_seqs, g);
}

fkv_status fkv_check_attention_dense(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                                     size_t q_off, uint32_t n_tokens, fkv_bview k, fkv_bview v,
                                     fkv_bview out, size_t out_off) {
    const char *op = "attention_dense";
    size_t es = fkv_dtype_size(g->dtype);
    uint64_t q_bytes = (uint64_t)g->n_kv_heads * g->group * g->head_dim * sizeof(float);
    uint64_t kv_bytes = mul3(n_tokens, (uint64_t)g->n_kv_heads * g->head_dim, es);
    fkv_status st;
    if ((st = fkv_check_span(backend, op, "q", q, q_off, q_bytes, 4)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "k", k, 0, kv_bytes, es)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "v", v, 0, kv_bytes, es)) != FKV_OK ||
        (st = fkv_check_span(backend, op, "out", out, out_off, q_bytes, 4)) != FKV_OK)
        return st;
    /* slots of the contiguous K/V are counted in int32 */
    if (n_tokens > INT32_MAX - g->page_size)
        return REFUSE("%s %s: %u tokens is too many", backend, op, n_tokens);
    return FKV_OK;
}

fkv_status fkv_check_native_event(const char *backend, const char *op,
                                  const fkv_native_event *ev, int has_out) {
    if (ev == NULL || !has_out)
        return REFUSE("%s %s: NULL event or output", backend, op);
    if (ev->handle == NULL)
        return REFUSE("%s %s: the event's native handle is NULL", backend, op);
    return FKV_OK;
}
