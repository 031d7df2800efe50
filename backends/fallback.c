/* Generic fallbacks for the optional entries of the ops table, written once for all backends
 * (fallback.h). */
#include "fallback.h"

#include <stddef.h>
#include <stdlib.h>

#include "../common/error.h"

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

