#include "check.h"

#include "../common/error.h"

#define REFUSE(...) fkv_error(FKV_ERR_INVALID_ARGUMENT, __VA_ARGS__)

fkv_status fkv_check_queue(const char *backend, const char *op, fkv_queue q) {
    if ((unsigned)q >= FKV_QUEUE_COUNT)
        return REFUSE("%s %s: bad queue %d", backend, op, (int)q);
    return FKV_OK;
}

fkv_status fkv_check_host_transfer(const char *backend, const char *op, fkv_queue q, int present,
                                   size_t buf_size, size_t off, size_t size, const void *host) {
    fkv_status st = fkv_check_queue(backend, op, q);
    if (st == FKV_OK)
        st = fkv_check_span(backend, op, "buffer", present, buf_size, off, size, 1, 0);
    if (st == FKV_OK && host == NULL && size)
        st = REFUSE("%s %s: NULL host pointer", backend, op);
    return st;
}

fkv_status fkv_check_device_copy(const char *backend, fkv_queue q, int dst_present,
                                 size_t dst_size, size_t dst_off, int src_present,
                                 size_t src_size, size_t src_off, size_t size) {
    fkv_status st = fkv_check_queue(backend, "copy", q);
    if (st == FKV_OK)
        st = fkv_check_span(backend, "copy", "destination", dst_present, dst_size, dst_off, size,
                            1, 0);
    if (st == FKV_OK)
        st = fkv_check_span(backend, "copy", "source", src_present, src_size, src_off, size, 1,
                            0);
    return st;
}

fkv_status fkv_check_kernel_call(const char *backend, const char *op, const void *dev,
                                 fkv_queue q, const fkv_kv_geom *g) {
    if (dev == NULL)
        return REFUSE("%s %s: NULL device", backend, op);
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
    uint64_t slot = (uint64_t)g->page_size * g->n_kv_heads * g->head_dim * 2;
    uint64_t qblock = (uint64_t)g->n_kv_heads * g->group * g->head_dim;
    if (slot > INT32_MAX || qblock > INT32_MAX)
        return REFUSE("%s %s: geometry too large for 32-bit kernel indices", backend, op);
    return FKV_OK;
}

fkv_status fkv_check_span(const char *backend, const char *op, const char *what, int present,
                          size_t size, size_t off, uint64_t bytes, size_t align, uintptr_t addr) {
    if (!present)
        return REFUSE("%s %s: %s is NULL", backend, op, what);
    if (off > size || bytes > size - off)
        return REFUSE("%s %s: %s needs %llu bytes at offset %zu of a %zu-byte buffer", backend,
                      op, what, (unsigned long long)bytes, off, size);
    if (align > 1 && addr % align != 0)
        return REFUSE("%s %s: %s at offset %zu is not aligned to %zu bytes", backend, op, what,
                      off, align);
    return FKV_OK;
}

fkv_status fkv_check_pool_slots(const char *backend, const char *op, const fkv_kv_geom *g,
                                int present, size_t k_size, size_t v_size, uintptr_t k_addr,
                                uintptr_t v_addr, uint32_t *n_slots) {
    if (!present)
        return REFUSE("%s %s: NULL KV pool", backend, op);
    size_t es = fkv_dtype_size(g->dtype);
    if (k_addr % es || v_addr % es)
        return REFUSE("%s %s: KV pool not aligned to its dtype", backend, op);
    size_t slot_bytes = (size_t)g->page_size * g->n_kv_heads * g->head_dim * es;
    size_t n = (k_size < v_size ? k_size : v_size) / slot_bytes;
    if (n == 0)
        return REFUSE("%s %s: KV pools smaller than one slot (%zu bytes)", backend, op,
                      slot_bytes);
    size_t max_slots = UINT32_MAX / g->page_size;
    *n_slots = (uint32_t)(n < max_slots ? n : max_slots);
    return FKV_OK;
}

/* ---- per op ---- */

static fkv_status span(const char *backend, const char *op, const char *what, fkv_bview b,
                       size_t off, uint64_t bytes, size_t align) {
    return fkv_check_span(backend, op, what, b.present, b.size, off, bytes, align, b.base + off);
}

static fkv_status pools(const char *backend, const char *op, const fkv_kv_geom *g, fkv_bview k,
                        fkv_bview v, uint32_t *n_slots) {
    return fkv_check_pool_slots(backend, op, g, k.present && v.present, k.size, v.size, k.base,
                                v.base, n_slots);
}

/* (sequence, KV head) pairs index workgroups and descriptors in 32 bits. */
static fkv_status bh_count(const char *backend, const char *op, uint32_t n_seqs,
                           const fkv_kv_geom *g) {
    if ((uint64_t)n_seqs * g->n_kv_heads > INT32_MAX)
        return REFUSE("%s %s: %u sequences is too many", backend, op, n_seqs);
    return FKV_OK;
}

fkv_status fkv_check_append(const char *backend, const fkv_kv_geom *g, fkv_bview k_src,
                            size_t k_off, fkv_bview v_src, size_t v_off, uint32_t n_rows,
                            fkv_bview rows, size_t rows_off, fkv_bview kpool, fkv_bview vpool,
                            uint32_t *n_slots) {
    const char *op = "append";
    uint64_t bytes = (uint64_t)n_rows * g->n_kv_heads * g->head_dim * 4;
    fkv_status st;
    if ((st = span(backend, op, "k_src", k_src, k_off, bytes, 4)) != FKV_OK ||
        (st = span(backend, op, "v_src", v_src, v_off, bytes, 4)) != FKV_OK ||
        (st = span(backend, op, "rows", rows, rows_off, (uint64_t)n_rows * 4, 4)) != FKV_OK)
        return st;
    return pools(backend, op, g, kpool, vpool, n_slots);
}

fkv_status fkv_check_summarize(const char *backend, const fkv_kv_geom *g, fkv_bview kpool,
                               uint32_t n_pages, fkv_bview pages, size_t pages_off,
                               fkv_bview summaries, uint32_t *n_slots) {
    const char *op = "summarize";
    size_t summary_bytes = (size_t)g->n_kv_heads * 2 * g->head_dim * 4;
    fkv_status st;
    if ((st = span(backend, op, "pages", pages, pages_off, (uint64_t)n_pages * 8, 4)) != FKV_OK ||
        (st = span(backend, op, "summaries", summaries, 0, summary_bytes, 4)) != FKV_OK)
        return st;
    return pools(backend, op, g, kpool, kpool, n_slots);
}

fkv_status fkv_check_scores(const char *backend, const fkv_kv_geom *g, fkv_bview q, size_t q_off,
                            uint32_t n_seqs, fkv_bview desc, size_t desc_off,
                            fkv_bview summaries, fkv_bview out, size_t out_off) {
    const char *op = "scores";
    uint64_t q_bytes = (uint64_t)n_seqs * g->n_kv_heads * g->group * g->head_dim * 4;
    fkv_status st;
    if ((st = span(backend, op, "q", q, q_off, q_bytes, 4)) != FKV_OK ||
        (st = span(backend, op, "desc", desc, desc_off, (uint64_t)n_seqs * 12, 4)) != FKV_OK ||
        (st = span(backend, op, "summaries", summaries, 0, 0, 4)) != FKV_OK ||
        (st = span(backend, op, "out", out, out_off, 0, 4)) != FKV_OK)
        return st;
    return bh_count(backend, op, n_seqs, g);
}

fkv_status fkv_check_cosine_flags(const char *backend, const fkv_kv_geom *g, fkv_bview q_cur,
                                  size_t cur_off, fkv_bview q_prev, size_t prev_off,
                                  uint32_t n_seqs, fkv_bview sims, size_t sims_off,
                                  fkv_bview flags, size_t flags_off) {
    const char *op = "cosine_flags";
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    uint64_t q_bytes = n_bh * g->group * g->head_dim * 4;
    fkv_status st;
    if ((st = span(backend, op, "q_cur", q_cur, cur_off, q_bytes, 4)) != FKV_OK ||
        (st = span(backend, op, "q_prev", q_prev, prev_off, q_bytes, 4)) != FKV_OK ||
        (st = span(backend, op, "sims", sims, sims_off, n_bh * 4, 4)) != FKV_OK ||
        (st = span(backend, op, "flags", flags, flags_off, n_bh * 4, 4)) != FKV_OK)
        return st;
    return bh_count(backend, op, n_seqs, g);
}

fkv_status fkv_check_pack_hnd(const char *backend, const fkv_kv_geom *g, fkv_bview kpool,
                              fkv_bview vpool, uint32_t n_pages, fkv_bview gslots,
                              size_t gslots_off, fkv_bview dst, size_t dst_off,
                              uint32_t *n_slots) {
    const char *op = "pack_hnd";
    uint64_t page_bytes =
        (uint64_t)g->n_kv_heads * 2 * g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
    fkv_status st;
    if ((st = span(backend, op, "gslots", gslots, gslots_off, (uint64_t)n_pages * 4, 4)) !=
            FKV_OK ||
        (st = span(backend, op, "dst", dst, dst_off, n_pages * page_bytes,
                   fkv_dtype_size(g->dtype))) !=
            FKV_OK)
        return st;
    return pools(backend, op, g, kpool, vpool, n_slots);
}

fkv_status fkv_check_scatter_hnd(const char *backend, const fkv_kv_geom *g, fkv_bview src,
                                 size_t src_off, uint32_t n_units, fkv_bview units,
                                 size_t units_off, fkv_bview kpool, fkv_bview vpool,
                                 uint32_t *n_slots) {
    const char *op = "scatter_hnd";
    uint64_t unit_bytes = 2ull * g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
    fkv_status st;
    if ((st = span(backend, op, "src", src, src_off, n_units * unit_bytes,
                   fkv_dtype_size(g->dtype))) !=
            FKV_OK ||
        (st = span(backend, op, "units", units, units_off, (uint64_t)n_units * 8, 4)) != FKV_OK)
        return st;
    return pools(backend, op, g, kpool, vpool, n_slots);
}

fkv_status fkv_check_recall_direct(const char *backend, const fkv_kv_geom *g, size_t host_size,
                                   uint32_t n_units, const uint64_t *units_host,
                                   fkv_bview units, size_t units_off, fkv_bview kpool,
                                   fkv_bview vpool, uint32_t *n_slots) {
    const char *op = "recall_direct";
    uint64_t unit_bytes = 2ull * g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
    fkv_status st;
    if (n_units && units_host == NULL)
        return REFUSE("%s %s: NULL unit offsets", backend, op);
    if ((st = span(backend, op, "units", units, units_off, (uint64_t)n_units * 8, 4)) != FKV_OK ||
        (st = pools(backend, op, g, kpool, vpool, n_slots)) != FKV_OK)
        return st;
    for (uint32_t i = 0; i < n_units; i++) {
        uint64_t off = units_host[i];
        if (off % fkv_dtype_size(g->dtype) || off > host_size || unit_bytes > host_size - off)
            return REFUSE("%s %s: unit %u at host offset %llu is misaligned or beyond the "
                          "%zu-byte allocation",
                          backend, op, i, (unsigned long long)off, host_size);
    }
    return FKV_OK;
}

fkv_status fkv_check_attention(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                               size_t q_off, uint32_t n_seqs, fkv_bview heads, size_t heads_off,
                               fkv_bview entries, size_t entries_off, fkv_bview kpool,
                               fkv_bview vpool, fkv_bview out, size_t out_off,
                               uint32_t *n_slots) {
    const char *op = "attention";
    uint64_t n_bh = (uint64_t)n_seqs * g->n_kv_heads;
    uint64_t q_bytes = n_bh * g->group * g->head_dim * 4;
    fkv_status st;
    if ((st = span(backend, op, "q", q, q_off, q_bytes, 4)) != FKV_OK ||
        (st = span(backend, op, "heads", heads, heads_off, n_bh * 8, 4)) != FKV_OK ||
        (st = span(backend, op, "entries", entries, entries_off, 0, 4)) != FKV_OK ||
        (st = span(backend, op, "out", out, out_off, q_bytes, 4)) != FKV_OK ||
        (st = pools(backend, op, g, kpool, vpool, n_slots)) != FKV_OK)
        return st;
    return bh_count(backend, op, n_seqs, g);
}

fkv_status fkv_check_attention_dense(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                                     size_t q_off, uint32_t n_tokens, fkv_bview k, fkv_bview v,
                                     fkv_bview out, size_t out_off) {
    const char *op = "attention_dense";
    uint64_t q_bytes = (uint64_t)g->n_kv_heads * g->group * g->head_dim * 4;
    uint64_t kv_bytes = (uint64_t)n_tokens * g->n_kv_heads * g->head_dim * fkv_dtype_size(g->dtype);
    fkv_status st;
    if ((st = span(backend, op, "q", q, q_off, q_bytes, 4)) != FKV_OK ||
        (st = span(backend, op, "k", k, 0, kv_bytes, fkv_dtype_size(g->dtype))) != FKV_OK ||
        (st = span(backend, op, "v", v, 0, kv_bytes, fkv_dtype_size(g->dtype))) != FKV_OK ||
        (st = span(backend, op, "out", out, out_off, q_bytes, 4)) != FKV_OK)
        return st;
    /* slots of the contiguous K/V are counted in int32 */
    if (n_tokens > INT32_MAX - g->page_size)
        return REFUSE("%s %s: %u tokens is too many", backend, op, n_tokens);
    return FKV_OK;
}

/* ---- launch plans ---- */

size_t fkv_attention_floats(uint32_t heads, uint32_t head_dim, uint32_t tile) {
    return 2 * (size_t)heads * head_dim + (size_t)tile * (head_dim + 1) + (size_t)heads * tile +
           3 * (size_t)heads;
}

/* The largest tile (halving from max_tile, not below min_tile) that fits with `heads`; 0 if
 * none does. */
static uint32_t fit_tile(uint32_t heads, uint32_t d, uint32_t max_tile, uint32_t min_tile,
                         size_t avail) {
    for (uint32_t t = max_tile; t >= min_tile && t > 0; t /= 2)
        if (fkv_attention_floats(heads, d, t) <= avail)
            return t;
    return 0;
}

fkv_status fkv_plan_attention(const char *backend, const char *op, const fkv_kv_geom *g,
                              size_t avail_bytes, uint32_t max_tile, const char *limit,
                              fkv_attention_plan *p) {
    size_t avail = avail_bytes / sizeof(float);
    uint32_t top = g->page_size < max_tile ? g->page_size : max_tile;
    uint32_t floor8 = top < 8 ? top : 8; /* a barrier per token or two costs more than a re-read */
    for (int pass = 0; pass < 2; pass++) {
        uint32_t last = 0;
        for (uint32_t n = 1; n <= g->group; n++) {
            uint32_t heads = (g->group + n - 1) / n;
            if (heads == last)
                continue;
            last = heads;
            uint32_t tile = fit_tile(heads, g->head_dim, top, pass == 0 ? floor8 : 1, avail);
            if (tile) {
                p->heads = heads;
                p->blocks = (g->group + heads - 1) / heads;
                p->tile = tile;
                p->floats = fkv_attention_floats(heads, g->head_dim, tile);
                return FKV_OK;
            }
        }
    }
    return fkv_error(FKV_ERR_UNSUPPORTED,
                     "%s %s: group %u x head_dim %u needs %zu bytes of shared memory even one "
                     "query head and one token at a time, the device has %zu (%s)",
                     backend, op, g->group, g->head_dim,
                     fkv_attention_floats(1, g->head_dim, 1) * sizeof(float), avail_bytes, limit);
}

fkv_status fkv_plan_scores(const char *backend, const fkv_kv_geom *g, size_t avail_bytes,
                           const char *limit, fkv_scores_plan *p) {
    size_t fit = avail_bytes / sizeof(float) / g->head_dim;
    if (fit == 0)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "%s scores: one query head of head_dim %u needs %zu bytes of shared "
                         "memory, the device has %zu (%s)",
                         backend, g->head_dim, (size_t)g->head_dim * sizeof(float), avail_bytes,
                         limit);
    uint32_t most = fit < g->group ? (uint32_t)fit : g->group;
    p->blocks = (g->group + most - 1) / most;
    p->heads = (g->group + p->blocks - 1) / p->blocks; /* balanced blocks */
    return FKV_OK;
}
