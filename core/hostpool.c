/* The host KV pool of one (sequence, layer). Separate from the pipeline because its one
 * promise (pages never move once backed) is what lets a background recall read it while the
 * caller's thread grows it. */
#include "hostpool.h"

#include <stdlib.h>

#include "../common/error.h"

fkv_status fkv_hostpool_init(fkv_hostpool *hp, uint32_t max_pages, uint32_t chunk_pages,
                             size_t page_bytes) {
    hp->chunk_pages = chunk_pages;
    hp->page_bytes = page_bytes;
    hp->n_chunks = 0;
    hp->max_chunks = (max_pages + chunk_pages - 1) / chunk_pages;
    hp->chunks = calloc(hp->max_chunks ? hp->max_chunks : 1, sizeof *hp->chunks);
    hp->ptrs = calloc(hp->max_chunks ? hp->max_chunks : 1, sizeof *hp->ptrs);
    if (hp->chunks == NULL || hp->ptrs == NULL) {
        free(hp->chunks);
        free(hp->ptrs);
        hp->chunks = NULL;
        hp->ptrs = NULL;
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "host pool chunk table");
    }
    return FKV_OK;
}

fkv_status fkv_hostpool_reserve(fkv_hostpool *hp, fkv_device *dev,
                                uint32_t n_pages) {
    uint32_t need = (n_pages + hp->chunk_pages - 1) / hp->chunk_pages;
    if (need > hp->max_chunks)
        return fkv_error(FKV_ERR_CONTEXT_FULL, "host pool: %u pages exceed the maximum context",
                         n_pages);
    uint32_t had = hp->n_chunks;
    while (hp->n_chunks < need) {
        void *ptr;
        fkv_status st = fkv_op_host_alloc(dev, hp->chunk_pages * hp->page_bytes,
                                        &hp->chunks[hp->n_chunks], &ptr);
        if (st != FKV_OK) {
            hp->chunks[hp->n_chunks] = NULL;
            fkv_hostpool_trim(hp, dev, had * hp->chunk_pages);
            return fkv_error_prefix(st, "growing the host KV pool to %u pages", n_pages);
        }
        hp->ptrs[hp->n_chunks++] = ptr;
    }
    return FKV_OK;
}

void fkv_hostpool_trim(fkv_hostpool *hp, fkv_device *dev,
                       uint32_t keep_pages) {
    uint32_t keep = (keep_pages + hp->chunk_pages - 1) / hp->chunk_pages;
    while (hp->n_chunks > keep) {
        hp->n_chunks--;
        fkv_op_host_free(dev, hp->chunks[hp->n_chunks]);
        hp->chunks[hp->n_chunks] = NULL;
        hp->ptrs[hp->n_chunks] = NULL;
    }
}

void fkv_hostpool_free(fkv_hostpool *hp, fkv_device *dev) {
    if (hp->chunks)
        fkv_hostpool_trim(hp, dev, 0);
    free(hp->chunks);
    free(hp->ptrs);
    hp->chunks = NULL;
    hp->ptrs = NULL;
}

unsigned char *fkv_hostpool_page(const fkv_hostpool *hp, uint32_t page, const fkv_bhost **host,
                                 uint64_t *offset) {
    uint32_t c = page / hp->chunk_pages;
    uint64_t off = (uint64_t)(page % hp->chunk_pages) * hp->page_bytes;
    if (host)
        *host = hp->chunks[c];
    if (offset)
        *offset = off;
    return hp->ptrs[c] + off;
}

uint32_t fkv_hostpool_run(const fkv_hostpool *hp, uint32_t page, uint32_t n) {
    uint32_t left = hp->chunk_pages - page % hp->chunk_pages;
    return n < left ? n : left;
}

uint64_t fkv_hostpool_bytes(const fkv_hostpool *hp) {
    return (uint64_t)hp->n_chunks * hp->chunk_pages * hp->page_bytes;
}
