/* The argument checks of the ops table, written once and run once, by the dispatch layer
 * (backends/dispatch.c), for every backend, the CPU reference included: a backend's entries
 * receive only calls that passed them. Each refuses with FKV_ERR_INVALID_ARGUMENT and a message
 * that starts "<backend> <op>:". Buffers are seen as fkv_bview (fkv_mem_desc of backend.h):
 * whether given, their size, and the address offsets are aligned against. Byte counts are
 * computed saturating, so a count too large for 64 bits is refused, never wrapped. */
#ifndef FKV_BACKENDS_CHECK_H
#define FKV_BACKENDS_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "launch.h" /* the launch plans lived here before backends/launch.h */

typedef struct fkv_bview {
    int present;
    size_t size;
    uintptr_t base;
} fkv_bview;

/* Any enqueue: a wait list (n_wait events need a list; NULL entries are ignored). */
fkv_status fkv_check_deps(const char *backend, const char *op, const fkv_deps *deps);
/* Any enqueue: one of the FKV_QUEUE_COUNT queues. */
fkv_status fkv_check_queue(const char *backend, const char *op, fkv_queue q);

/* write/read: a queue, `size` bytes at `off` of the buffer, a host pointer unless size is 0. */
fkv_status fkv_check_host_transfer(const char *backend, const char *op, fkv_queue q,
                                   fkv_bview buf, size_t off, size_t size, const void *host);
/* copy: a queue and both ranges. */
fkv_status fkv_check_device_copy(const char *backend, fkv_queue q, fkv_bview dst,
                                 size_t dst_off, fkv_bview src, size_t src_off, size_t size);
/* write_regions: a queue, a destination, and every region inside it with a source. */
fkv_status fkv_check_write_regions(const char *backend, fkv_queue q, fkv_bview dst, uint32_t n,
                                   const fkv_copy_region *regions);

/* A kernel call: the compute or background queue, a valid geometry whose slot and (sequence,
 * KV head) query block fit the kernels' 32-bit indices. */
fkv_status fkv_check_kernel_call(const char *backend, const char *op, fkv_queue q,
                                 const fkv_kv_geom *g);

/* `bytes` at `off` inside a buffer, `base + off` aligned to `align`. */
fkv_status fkv_check_span(const char *backend, const char *op, const char *what, fkv_bview b,
                          size_t off, uint64_t bytes, size_t align);
/* Both KV pools given, aligned to the dtype, holding at least one whole slot. */
fkv_status fkv_check_pools(const char *backend, const char *op, const fkv_kv_geom *g,
                           fkv_bview k, fkv_bview v);

/* ---- one check per kernel entry of backend.h (after fkv_check_kernel_call): the sizes,
 * offsets and alignment backend.h documents for the op ---- */
fkv_status fkv_check_append(const char *backend, const fkv_kv_geom *g, fkv_bview k_src,
                            size_t k_off, fkv_bview v_src, size_t v_off, uint32_t n_rows,
                            fkv_bview rows, size_t rows_off, fkv_bview kpool, fkv_bview vpool);
fkv_status fkv_check_summarize(const char *backend, const fkv_kv_geom *g, fkv_bview kpool,
                               uint32_t n_pages, fkv_bview pages, size_t pages_off,
                               fkv_bview summaries);
fkv_status fkv_check_scores(const char *backend, const fkv_kv_geom *g, fkv_bview q, size_t q_off,
                            uint32_t n_seqs, fkv_bview desc, size_t desc_off,
                            fkv_bview summaries, fkv_bview out, size_t out_off);
/* desc, the scores' start, params (a known reduction, a finite temp_scale > 0) and the
 * output records (n_seqs * n_kv_heads * 2k words at out_off). */
fkv_status fkv_check_select_pages(const char *backend, const fkv_kv_geom *g, uint32_t n_seqs,
                                  fkv_bview desc, size_t desc_off, fkv_bview scores,
                                  size_t scores_off, const fkv_select_params *p, fkv_bview out,
                                  size_t out_off);
/* The optional (sequence, KV head) mask of scores and select_pages: absent, or n_seqs *
 * n_kv_heads int32 at mask_off. */
fkv_status fkv_check_mask(const char *backend, const char *op, const fkv_kv_geom *g,
                          uint32_t n_seqs, fkv_bview mask, size_t mask_off);
fkv_status fkv_check_cosine_flags(const char *backend, const fkv_kv_geom *g, fkv_bview q_cur,
                                  size_t cur_off, fkv_bview q_prev, size_t prev_off,
                                  fkv_bview prev_rows, size_t rows_off, uint32_t n_seqs,
                                  fkv_bview sims, size_t sims_off, fkv_bview flags,
                                  size_t flags_off);
/* scores' and cosine_flags' checks of one scores_check call: q_cur and q_prev are qbuf (q),
 * from cur_off and q_off. */
fkv_status fkv_check_scores_check(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                                  size_t q_off, uint32_t n_seqs, fkv_bview desc,
                                  size_t desc_off, fkv_bview summaries, fkv_bview out,
                                  size_t out_off, size_t cur_off, fkv_bview prev_rows,
                                  size_t rows_off, fkv_bview sims, size_t sims_off,
                                  fkv_bview flags, size_t flags_off);
fkv_status fkv_check_pack_hnd(const char *backend, const fkv_kv_geom *g, fkv_bview kpool,
                              fkv_bview vpool, uint32_t n_pages, fkv_bview gslots,
                              size_t gslots_off, fkv_bview dst, size_t dst_off);
fkv_status fkv_check_scatter_hnd(const char *backend, const fkv_kv_geom *g, fkv_bview src,
                                 size_t src_off, uint32_t n_units, fkv_bview units,
                                 size_t units_off, fkv_bview kpool, fkv_bview vpool);
/* hosts: the host allocations the units' sources index; host_ints: ints per host the units
 * table holds after its unit entries (FKV_DIRECT_HOST_INTS with direct_host_words, else 0). */
fkv_status fkv_check_recall_direct(const char *backend, const fkv_kv_geom *g, uint32_t n_hosts,
                                   const fkv_bhost *const *hosts, uint32_t n_units,
                                   const fkv_direct_src *srcs, fkv_bview units, size_t units_off,
                                   uint32_t host_ints, fkv_bview kpool, fkv_bview vpool);
fkv_status fkv_check_attention(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                               size_t q_off, uint32_t n_seqs, fkv_bview heads, size_t heads_off,
                               fkv_bview entries, size_t entries_off, fkv_bview kpool,
                               fkv_bview vpool, fkv_bview out, size_t out_off);
fkv_status fkv_check_attention_dense(const char *backend, const fkv_kv_geom *g, fkv_bview q,
                                     size_t q_off, uint32_t n_tokens, fkv_bview k, fkv_bview v,
                                     fkv_bview out, size_t out_off);
/* An engine's event handed in: given, with a handle, and an output to receive it (has_out). */
fkv_status fkv_check_native_event(const char *backend, const char *op,
                                  const fkv_native_event *ev, int has_out);

#endif
