/* The host KV pool (core/hostpool.c) on the CPU reference: pages backed chunk by chunk, page
 * addresses at chunk boundaries, chunks that never move while the pool grows, trimming, the
 * maximum context, and running out of host memory (FREEKV_CPU_HOST_MEMORY) with the pool
 * left as it was. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/dispatch.h"
#include "core/hostpool.h"

#define CHUNK_PAGES 4
#define PAGE_BYTES 256
#define MAX_PAGES 10 /* three chunks, the last one partly used */

typedef struct fixture {
    fkv_device *dev;
    fkv_hostpool hp;
} fixture;

static void open_pool(fixture *f, const char *host_memory) {
    if (host_memory)
        cr_assert_eq(setenv("FREEKV_CPU_HOST_MEMORY", host_memory, 1), 0);
    cr_assert_eq(fkv_device_open("cpu", NULL, &f->dev), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_hostpool_init(&f->hp, MAX_PAGES, CHUNK_PAGES, PAGE_BYTES), FKV_OK);
    cr_assert_eq(f->hp.max_chunks, 3);
}

static void close_pool(fixture *f) {
    fkv_hostpool_free(&f->hp, f->dev);
    cr_assert_null(f->hp.chunks);
    fkv_device_close(f->dev);
}

static fkv_status reserve(fixture *f, uint32_t pages) {
    return fkv_hostpool_reserve(&f->hp, f->dev, pages);
}

Test(hostpool, reserve_backs_whole_chunks) {
    fixture f;
    open_pool(&f, NULL);
    cr_assert_eq(reserve(&f, 0), FKV_OK);
    cr_assert_eq(f.hp.n_chunks, 0);
    cr_assert_eq(fkv_hostpool_bytes(&f.hp), 0);
    static const struct {
        uint32_t pages, chunks;
    } steps[] = {{1, 1}, {4, 1}, {5, 2}, {3, 2}, {8, 2}, {9, 3}, {MAX_PAGES, 3}};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        cr_assert_eq(reserve(&f, steps[i].pages), FKV_OK, "%s", fkv_last_error());
        cr_assert_eq(f.hp.n_chunks, steps[i].chunks, "%u pages: %u chunks, not %u",
                     steps[i].pages, f.hp.n_chunks, steps[i].chunks);
        cr_assert_eq(fkv_hostpool_bytes(&f.hp),
                     (uint64_t)steps[i].chunks * CHUNK_PAGES * PAGE_BYTES);
    }
    close_pool(&f);
}

/* Page j is page j % chunk of chunk j / chunk; the allocation handle and offset name it (the
 * zero-copy recall reads through them); a page's address never changes as the pool grows. */
Test(hostpool, page_addresses_across_chunk_boundaries) {
    fixture f;
    open_pool(&f, NULL);
    cr_assert_eq(reserve(&f, 5), FKV_OK);
    unsigned char *before[8];
    for (uint32_t j = 0; j < 8; j++) {
        const fkv_bhost *host = NULL;
        uint64_t offset = 1;
        unsigned char *p = fkv_hostpool_page(&f.hp, j, &host, &offset);
        cr_assert_eq(host, f.hp.chunks[j / CHUNK_PAGES], "page %u", j);
        cr_assert_eq(offset, (uint64_t)(j % CHUNK_PAGES) * PAGE_BYTES, "page %u", j);
        cr_assert_eq(p, f.hp.ptrs[j / CHUNK_PAGES] + offset, "page %u", j);
        cr_assert_eq(fkv_hostpool_page(&f.hp, j, NULL, NULL), p, "NULL outputs, same page");
        memset(p, (int)(0x10 + j), PAGE_BYTES); /* the whole page is writable */
        before[j] = p;
    }
    cr_assert_neq(f.hp.ptrs[0], f.hp.ptrs[1]);
    cr_assert_eq(reserve(&f, MAX_PAGES), FKV_OK);
    for (uint32_t j = 0; j < 8; j++) {
        unsigned char *p = fkv_hostpool_page(&f.hp, j, NULL, NULL);
        cr_assert_eq(p, before[j], "page %u moved when the pool grew", j);
        for (size_t b = 0; b < PAGE_BYTES; b++)
            cr_assert_eq(p[b], 0x10 + j, "page %u byte %zu", j, b);
    }
    close_pool(&f);
}

/* A run of pages that one read can fill ends at its chunk's end: from page j, at most
 * CHUNK_PAGES - j % CHUNK_PAGES pages, and no more than asked for. */
Test(hostpool, runs_end_at_chunk_boundaries) {
    fixture f;
    open_pool(&f, NULL);
    cr_assert_eq(reserve(&f, MAX_PAGES), FKV_OK);
    static const struct {
        uint32_t page, asked, run;
    } cases[] = {{0, 4, 4}, {0, 9, 4}, {1, 9, 3}, {3, 9, 1}, {4, 2, 2}, {5, 6, 3}, {8, 2, 2},
                 {2, 1, 1}, {7, 0, 0}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint32_t run = fkv_hostpool_run(&f.hp, cases[i].page, cases[i].asked);
        cr_assert_eq(run, cases[i].run, "from page %u, %u asked: %u, not %u", cases[i].page,
                     cases[i].asked, run, cases[i].run);
        /* the run is contiguous host memory */
        unsigned char *p0 = fkv_hostpool_page(&f.hp, cases[i].page, NULL, NULL);
        for (uint32_t k = 1; k < run; k++)
            cr_assert_eq(fkv_hostpool_page(&f.hp, cases[i].page + k, NULL, NULL),
                         p0 + (size_t)k * PAGE_BYTES);
    }
    close_pool(&f);
}

Test(hostpool, trim_keeps_the_chunks_of_the_pages_kept) {
    fixture f;
    open_pool(&f, NULL);
    cr_assert_eq(reserve(&f, MAX_PAGES), FKV_OK);
    unsigned char *first = f.hp.ptrs[0];
    fkv_hostpool_trim(&f.hp, f.dev, 5);
    cr_assert_eq(f.hp.n_chunks, 2);
    cr_assert_null(f.hp.chunks[2]);
    cr_assert_eq(f.hp.ptrs[0], first, "trimming keeps the chunks below");
    fkv_hostpool_trim(&f.hp, f.dev, 8); /* nothing beyond two chunks to free */
    cr_assert_eq(f.hp.n_chunks, 2);
    fkv_hostpool_trim(&f.hp, f.dev, 0);
    cr_assert_eq(f.hp.n_chunks, 0);
    cr_assert_eq(fkv_hostpool_bytes(&f.hp), 0);
    cr_assert_eq(reserve(&f, 2), FKV_OK, "a trimmed pool grows again");
    cr_assert_eq(f.hp.n_chunks, 1);
    close_pool(&f);
}

Test(hostpool, beyond_the_maximum_context) {
    fixture f;
    open_pool(&f, NULL);
    cr_assert_eq(reserve(&f, 3), FKV_OK);
    /* 13 pages need a fourth chunk: refused before anything is allocated */
    cr_assert_eq(reserve(&f, 13), FKV_ERR_CONTEXT_FULL);
    cr_assert_neq(strstr(fkv_last_error(), "13 pages"), NULL, "%s", fkv_last_error());
    cr_assert_eq(f.hp.n_chunks, 1);
    cr_assert_eq(reserve(&f, 12), FKV_OK, "12 pages are three whole chunks");
    cr_assert_eq(f.hp.n_chunks, 3);
    close_pool(&f);
}

/* Host memory for two chunks and a half: growing from one chunk to three fails on the third,
 * and the second, allocated by the same call, is freed again; the memory is then all there
 * for the call that fits. */
Test(hostpool, out_of_host_memory_rolls_back) {
    fixture f;
    char limit[32];
    snprintf(limit, sizeof limit, "%d", CHUNK_PAGES * PAGE_BYTES * 5 / 2);
    open_pool(&f, limit);
    cr_assert_eq(reserve(&f, 1), FKV_OK, "%s", fkv_last_error());
    unsigned char *first = f.hp.ptrs[0];
    cr_assert_eq(reserve(&f, MAX_PAGES), FKV_ERR_OUT_OF_HOST_MEMORY);
    cr_assert_neq(strstr(fkv_last_error(), "growing the host KV pool to 10 pages"), NULL, "%s",
                  fkv_last_error());
    cr_assert_eq(f.hp.n_chunks, 1, "the failed call left %u chunks", f.hp.n_chunks);
    cr_assert_eq(f.hp.ptrs[0], first);
    cr_assert_null(f.hp.chunks[1]);
    cr_assert_null(f.hp.chunks[2]);
    /* had the second chunk leaked, the device would have no room for it now */
    cr_assert_eq(reserve(&f, 2 * CHUNK_PAGES), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(f.hp.n_chunks, 2);
    close_pool(&f);
}
