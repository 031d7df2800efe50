/* The host KV pool of one (sequence, layer): pages in HND layout [page][kv_head][K|V][p][d],
 * in pinned chunks that never move (a background recall may be reading older chunks while
 * new ones are added). */
#ifndef FKV_CORE_HOSTPOOL_H
#define FKV_CORE_HOSTPOOL_H

#include "../backends/dispatch.h"

typedef struct fkv_hostpool {
    fkv_bhost **chunks;
    unsigned char **ptrs;
    uint32_t n_chunks, max_chunks;
    uint32_t chunk_pages;
    size_t page_bytes;
} fkv_hostpool;

fkv_status fkv_hostpool_init(fkv_hostpool *hp, uint32_t max_pages, uint32_t chunk_pages,
                             size_t page_bytes);
/* Ensures pages [0, n_pages) are backed. On failure the pool is as it was. */
fkv_status fkv_hostpool_reserve(fkv_hostpool *hp, fkv_device *dev,
                                uint32_t n_pages);
/* Frees chunks beyond those needed for keep_pages. */
void fkv_hostpool_trim(fkv_hostpool *hp, fkv_device *dev,
                       uint32_t keep_pages);
void fkv_hostpool_free(fkv_hostpool *hp, fkv_device *dev);
/* Page base pointer; host and offset name its allocation (for zero-copy recall). */
unsigned char *fkv_hostpool_page(const fkv_hostpool *hp, uint32_t page, const fkv_bhost **host,
                                 uint64_t *offset);
/* How many of the n pages from `page` on lie in one piece of host memory (its chunk): one
 * device->host read can fill that many. */
uint32_t fkv_hostpool_run(const fkv_hostpool *hp, uint32_t page, uint32_t n);
uint64_t fkv_hostpool_bytes(const fkv_hostpool *hp);

#endif
