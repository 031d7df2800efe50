/* Generic fallbacks for the optional entries of the ops table, written once for all backends
 * (fallback.h). */
#include "fallback.h"

#include <stddef.h>
#include <stdlib.h>

#include "../common/error.h"
#include "cpu/cpu_kernels.h"

fkv_status fkv_fallback_write_regions(const fkv_backend_ops *ops, fkv_bdev *dev, fkv_queue q,
                                      fkv_deps deps, fkv_bbuf *dst, uint32_t n,
                                      const fkv_copy_region *regions) {
    for (uint32_t i = 0; i < n; i++) {
        fkv_deps d = {i == 0 ? deps.n_wait : 0, i == 0 ? deps.wait : NULL,
                      i + 1 == n ? deps.done : NULL};
        fkv_status st = ops->write(dev, q, d, dst, regions[i].dst_offset, regions[i].src,
                                   regions[i].size);
        if (st != FKV_OK)
            return st;
    }
    return FKV_OK;
}

/* Contiguous [n_tokens][n_kv_heads][d] K/V is exactly a pool whose slot j holds tokens
 * j*p .. j*p+p-1, so dense attention is paged attention over slots 0..ceil(n/p)-1. The
 * descriptor buffers are temporary, so this fallback waits for completion. */
fkv_status fkv_fallback_attention_dense(const fkv_backend_ops *ops, fkv_bdev *dev, fkv_queue q,
                                        fkv_deps deps, const fkv_kv_geom *g,
                                        const fkv_bbuf *qbuf, size_t q_off, uint32_t n_tokens,
                                        const fkv_bbuf *k, const fkv_bbuf *v, float scale,
                                        fkv_bbuf *out, size_t out_off) {
    uint32_t n_pages = (n_tokens + g->page_size - 1) / g->page_size;
    size_t heads_bytes = (size_t)g->n_kv_heads * 2 * sizeof(int32_t);
    size_t entries_bytes = ((size_t)n_pages ? n_pages : 1) * 2 * sizeof(int32_t);
    int32_t *heads = malloc(heads_bytes);
    int32_t *entries = malloc(entries_bytes);
    fkv_bbuf *heads_buf = NULL, *entries_buf = NULL;
    fkv_bevent *evs[3] = {NULL, NULL, NULL};
    fkv_status st = FKV_OK;
    if (heads == NULL || entries == NULL) {
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "dense attention fallback: descriptors");
        goto out;
    }
    for (uint32_t h = 0; h < g->n_kv_heads; h++) {
        heads[2 * h] = 0;
        heads[2 * h + 1] = (int32_t)n_pages;
    }
    for (uint32_t j = 0; j < n_pages; j++) {
        entries[2 * j] = (int32_t)j;
        uint32_t left = n_tokens - j * g->page_size;
        entries[2 * j + 1] = (int32_t)(left < g->page_size ? left : g->page_size);
    }
    if ((st = ops->buffer_alloc(dev, heads_bytes, &heads_buf)) != FKV_OK ||
        (st = ops->buffer_alloc(dev, entries_bytes, &entries_buf)) != FKV_OK)
        goto out;
    fkv_deps w0 = {deps.n_wait, deps.wait, &evs[0]};
    if ((st = ops->write(dev, q, w0, heads_buf, 0, heads, heads_bytes)) != FKV_OK)
        goto out;
    fkv_deps w1 = {0, NULL, &evs[1]};
    if ((st = ops->write(dev, q, w1, entries_buf, 0, entries, entries_bytes)) != FKV_OK)
        goto out;
    fkv_deps a = {2, evs, &evs[2]};
    st = ops->attention(dev, q, a, g, qbuf, q_off, 1, heads_buf, 0, entries_buf, 0, k, v, scale,
                        out, out_off);
    if (st != FKV_OK)
        goto out;
    st = ops->event_wait(dev, 1, &evs[2]);
    if (st == FKV_OK && deps.done)
        st = ops->marker(dev, q, (fkv_deps){1, &evs[2], deps.done});
out:
    for (int i = 0; i < 3; i++)
        if (evs[i])
            ops->event_release(dev, evs[i]);
    if (st != FKV_OK && (evs[0] || evs[1]))
        ops->finish(dev, q); /* the writes may still read the host descriptors */
    if (heads_buf)
        ops->buffer_free(dev, heads_buf);
    if (entries_buf)
        ops->buffer_free(dev, entries_buf);
    free(heads);
    free(entries);
    return st;
}


/* One blocking read of `size` bytes (with deps' wait list on the first). */
static fkv_status read_now(const fkv_backend_ops *ops, fkv_bdev *dev, fkv_queue q, uint32_t n_wait,
                           fkv_bevent *const *wait, const fkv_bbuf *src, size_t off, void *dst,
                           size_t size) {
    fkv_bevent *ev = NULL;
    fkv_status st = ops->read(dev, q, (fkv_deps){n_wait, wait, &ev}, src, off, dst, size);
    if (st == FKV_OK)
        st = ops->event_wait(dev, 1, &ev);
    if (ev)
        ops->event_release(dev, ev);
    return st;
}

fkv_status fkv_fallback_select_pages(const fkv_backend_ops *ops, fkv_bdev *dev, fkv_queue q,
                                     fkv_deps deps, const fkv_kv_geom *g, uint32_t n_seqs,
                                     const fkv_bbuf *desc, size_t desc_off,
                                     const fkv_bbuf *mask, size_t mask_off,
                                     const fkv_bbuf *scores, size_t scores_off,
                                     const fkv_select_params *p, fkv_bbuf *out, size_t out_off) {
    size_t hq = (size_t)g->n_kv_heads * g->group;
    size_t out_bytes = (size_t)n_seqs * g->n_kv_heads * 2 * p->k * sizeof(int32_t);
    size_t have = (((const fkv_mem_desc *)scores)->size - scores_off) / sizeof(float), len = 0;
    size_t desc_bytes = (size_t)n_seqs * FKV_SCORES_DESC_INTS * sizeof(int32_t);
    size_t mask_bytes = (size_t)n_seqs * g->n_kv_heads * sizeof(int32_t);
    /* records of masked pairs are undefined: these are written as zeros */
    int32_t *d = malloc(desc_bytes), *rec = calloc(1, out_bytes ? out_bytes : 1);
    int32_t *m = mask ? malloc(mask_bytes) : NULL;
    float *s = NULL;
    fkv_bevent *ev = NULL;
    fkv_status st = d && rec && (m || !mask)
                        ? FKV_OK
                        : fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "select_pages fallback");
    if (st == FKV_OK)
        st = read_now(ops, dev, q, deps.n_wait, deps.wait, desc, desc_off, d, desc_bytes);
    if (st == FKV_OK && mask)
        st = read_now(ops, dev, q, 0, NULL, mask, mask_off, m, mask_bytes);
    for (uint32_t b = 0; st == FKV_OK && b < n_seqs; b++) {
        /* the reference refuses what lies beyond the buffer; read only what exists */
        const int32_t *db = d + (size_t)FKV_SCORES_DESC_INTS * b;
        size_t end = db[1] > 0 && db[2] >= 0 ? (size_t)db[2] + hq * (size_t)db[1] : 0;
        len = end > len ? (end < have ? end : have) : len;
    }
    if (st == FKV_OK && (s = malloc((len ? len : 1) * sizeof(float))) == NULL)
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "select_pages fallback: %zu scores", len);
    if (st == FKV_OK && len)
        st = read_now(ops, dev, q, 0, NULL, scores, scores_off, s, len * sizeof(float));
    if (st == FKV_OK)
        st = cpu_select_pages(g, n_seqs, d, m, s, len, p, rec, NULL);
    if (st == FKV_OK)
        st = ops->write(dev, q, (fkv_deps){0, NULL, &ev}, out, out_off, rec, out_bytes);
    if (st == FKV_OK)
        st = ops->event_wait(dev, 1, &ev);
    if (st == FKV_OK && deps.done)
        st = ops->marker(dev, q, (fkv_deps){1, &ev, deps.done});
    if (ev)
        ops->event_release(dev, ev);
    if (st != FKV_OK && deps.done)
        *deps.done = NULL;
    free(d);
    free(m);
    free(rec);
    free(s);
    return st;
}

/* scores waits for cosine_flags' event, so that a failure of the check (a previous row the
 * reference refuses) reaches deps.done too. */
fkv_status fkv_fallback_scores_check(const fkv_backend_ops *ops, fkv_bdev *dev, fkv_queue q,
                                     fkv_deps deps, const fkv_kv_geom *g, const fkv_bbuf *qbuf,
                                     size_t q_off, uint32_t n_seqs, const fkv_bbuf *desc,
                                     size_t desc_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                                     size_t out_off, size_t cur_off, const fkv_bbuf *prev_rows,
                                     size_t rows_off, float tau, fkv_bbuf *sims, size_t sims_off,
                                     fkv_bbuf *flags, size_t flags_off) {
    fkv_bevent *checked = NULL;
    fkv_status st = ops->cosine_flags(dev, q, (fkv_deps){deps.n_wait, deps.wait, &checked}, g,
                                      qbuf, cur_off, qbuf, q_off, prev_rows, rows_off, n_seqs,
                                      tau, sims, sims_off, flags, flags_off);
    if (st == FKV_OK)
        st = ops->scores(dev, q, (fkv_deps){1, &checked, deps.done}, g, qbuf, q_off, n_seqs,
                         desc, desc_off, NULL, 0, summaries, out, out_off);
    else if (deps.done)
        *deps.done = NULL;
    if (checked)
        ops->event_release(dev, checked);
    return st;
}
