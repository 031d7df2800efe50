/* The kernel launchers of the HIP backend: plain C entry points, defined in kernels.hip
 * (compiled by hipcc, or by nvcc through hip_cuda_compat.h) and called from the C host code.
 *
 * Pointers are device pointers already advanced to the caller's byte offsets; KV pools and
 * word-copy buffers are untyped (the dtype or word size picks the kernel instance). Each
 * launcher enqueues on `stream` and returns the launch status (hipGetLastError right after the
 * launch); none blocks. Device-side indices are bounds-checked by the kernels, as in OpenCL. */
#ifndef FKV_HIP_KERNELS_H
#define FKV_HIP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../include/freekv.h"
#include "hip_platform.h"

#ifdef __cplusplus
extern "C" {
#endif

/* rows[i] receives row i of k_src/v_src ([row_elems] f32), converted to the dtype. */
typedef struct fkv_hip_append_args {
    const float *k_src, *v_src;
    const int32_t *rows;
    uint32_t n_rows, row_elems, pool_rows;
    void *kpool, *vpool;
} fkv_hip_append_args;

/* pages[2i] = gslot, pages[2i+1] = summary index; summaries [s][n_kv_heads][2][d] f32, or
 * (summ_f16) f16 with the min rounded down and the max up. */
typedef struct fkv_hip_summarize_args {
    const void *kpool;
    const int32_t *pages;
    uint32_t n_pages, n_kv_heads, head_dim, page_size, n_slots, n_summaries;
    void *summaries;
    uint32_t summ_f16;
} fkv_hip_summarize_args;

/* Quest bound; one block per (sequence, KV head, block of `heads` query heads) on grid x,
 * `chunks` blocks over its pages on grid y; dynamic shared memory = heads * head_dim floats. */
typedef struct fkv_hip_scores_args {
    const float *q;  /* at the caller's q_off */
    uint64_t q_rows; /* query rows from q to the end of its buffer */
    const int32_t *desc;
    const int32_t *mask; /* [n_seqs][n_kv_heads], 0 skips the pair; NULL: none */
    const void *summaries; /* f32, or (summ_f16) f16 */
    uint32_t n_summaries, summ_f16;
    float *out; /* at the caller's out_off */
    uint64_t out_len; /* floats from out to the end of its buffer */
    uint32_t n_kv_heads, group, head_dim;
    uint32_t heads; /* query heads per block (backends/launch.c, fkv_plan_scores) */
} fkv_hip_scores_args;

typedef struct fkv_hip_cosine_args {
    const float *q_cur, *q_prev;
    uint64_t prev_count;        /* query rows from q_prev to the end of its buffer */
    const int32_t *prev_rows;
    uint32_t n_kv_heads, group, head_dim;
    float tau;
    float *sims;
    int32_t *flags;
} fkv_hip_cosine_args;

/* select_pages (backend.h): one block per (sequence, KV head); see k_select_pages. */
typedef struct fkv_hip_select_args {
    const int32_t *desc;
    const int32_t *mask; /* [n_seqs][n_kv_heads], 0 skips the pair; NULL: none */
    float *scores;       /* at the caller's scores_off */
    uint64_t scores_len; /* floats from scores to the end of its buffer */
    uint32_t n_kv_heads, group, first, k, reduce;
    float temp_scale;
    int32_t *out; /* at the caller's out_off */
} fkv_hip_select_args;

/* NHD -> HND: page gslots[i] of both pools into dst page i ([n_kv_heads][K|V][p][d]). */
typedef struct fkv_hip_pack_args {
    const void *kpool, *vpool;
    const int32_t *gslots;
    uint32_t n_pages, n_kv_heads, row_words, page_size, n_slots;
    void *dst;
} fkv_hip_pack_args;

/* HND -> NHD. Staged (host_words == NULL): unit i ([K|V][p][d]) at src + i*unit goes to KV
 * head units[2i+1] of slot units[2i]. Zero-copy (recall_direct): the table's n_units entries
 * {slot, head, host, offset / elem_bytes}, each read from host allocation `host` of the
 * table's host words after the entries (FKV_DIRECT_HOST_INTS per host, fkv_hip_direct_host_words:
 * the device pointer of mapped host memory and its bytes, little-endian halves); units of a
 * host beyond n_hosts, and reads past an allocation, are skipped. */
typedef struct fkv_hip_scatter_args {
    const void *src;
    const int32_t *host_words;
    uint32_t n_hosts, elem_bytes;
    const int32_t *units;
    uint32_t n_units, n_kv_heads, row_words, page_size, n_slots;
    void *kpool, *vpool;
    uint32_t head_dim, bits; /* dequantize (fkv_hip_launch_dequant) only: row_words unused */
} fkv_hip_scatter_args;

/* Host formats q8/q4 (common/hostfmt.h): page gslots[i] of both pools quantized into units
 * (i*n_kv_heads + h) at dst, unit_bytes apart. */
typedef struct fkv_hip_quant_args {
    const void *kpool, *vpool;
    const int32_t *gslots;
    uint32_t n_pages, n_kv_heads, head_dim, page_size, n_slots, bits;
    uint64_t unit_bytes;
    unsigned char *dst;
} fkv_hip_quant_args;

/* Paged decode attention (see opencl/kernels.cl fkv_attention; the same algorithm). `heads`,
 * `tile` and `shared_bytes` come from fkv_plan_attention, `threads` (threads per block, at
 * most FKV_HIP_ATTENTION_BLOCK) from fkv_attention_threads (backends/launch.c). */
typedef struct fkv_hip_attention_args {
    const float *q;
    const int32_t *heads_list, *entries; /* unused when dense_tokens >= 0 */
    uint32_t n_entries;
    int32_t dense_tokens;
    const void *kpool, *vpool;
    uint32_t n_slots, n_kv_heads, group, head_dim, page_size, tile, heads, n_splits, threads;
    size_t shared_bytes;
    float scale;
    float *out;
    float *part; /* n_splits > 1: [n_bh][n_splits][group][d+2] */
    /* n_splits > 1 and not NULL: the last block of each (pair, query-head block) combines
     * the partials (one counter each, zero before and after the launch); NULL:
     * k_attention_reduce does, a second launch */
    unsigned int *arrivals;
} fkv_hip_attention_args;

/* Threads per block of every kernel; the largest block any launcher uses. */
#define FKV_HIP_BLOCK 256
#define FKV_HIP_ATTENTION_BLOCK 128
#define FKV_HIP_SMALL_BLOCK 64 /* scores, cosine */
/* scores: query heads per pass over a summary, and the shared floats after a block's queries
 * that the last channel's lanes reach (backends/launch.h's FKV_SCORE_LANES and
 * FKV_SCORES_PAD, which hip_launch.c checks these equal) */
#define FKV_HIP_SCORE_LANES 8
#define FKV_HIP_SCORES_PAD (FKV_HIP_SCORE_LANES - 1)
#define FKV_HIP_SELECT_BLOCK 128 /* select_pages (a power of two: its scans and folds) */

hipError_t fkv_hip_launch_append(hipStream_t s, fkv_dtype dt, const fkv_hip_append_args *a);
hipError_t fkv_hip_launch_summarize(hipStream_t s, fkv_dtype dt,
                                    const fkv_hip_summarize_args *a);
hipError_t fkv_hip_launch_scores(hipStream_t s, const fkv_hip_scores_args *a, uint32_t n_bh,
                                 uint32_t chunks);
hipError_t fkv_hip_launch_cosine(hipStream_t s, const fkv_hip_cosine_args *a, uint32_t n_bh);
/* scores_check: k_scores' grid (a: no mask), the check of c (its q_cur and q_prev in a's
 * query buffer) in the first block of each (sequence, KV head). */
hipError_t fkv_hip_launch_scores_check(hipStream_t s, const fkv_hip_scores_args *a,
                                       const fkv_hip_cosine_args *c, uint32_t n_bh,
                                       uint32_t chunks);
hipError_t fkv_hip_launch_select(hipStream_t s, const fkv_hip_select_args *a, uint32_t n_bh);
/* word_bytes: the element size (2 or 4) or 16 (rows and offsets 16-byte aligned). */
hipError_t fkv_hip_launch_pack(hipStream_t s, size_t word_bytes, const fkv_hip_pack_args *a);
hipError_t fkv_hip_launch_scatter(hipStream_t s, size_t word_bytes,
                                  const fkv_hip_scatter_args *a);
/* Quantize (pack_hnd) and dequantize (scatter_hnd, recall_direct) of q8/q4 units. */
hipError_t fkv_hip_launch_quant(hipStream_t s, fkv_dtype dt, const fkv_hip_quant_args *a);
hipError_t fkv_hip_launch_dequant(hipStream_t s, fkv_dtype dt, const fkv_hip_scatter_args *a);
hipError_t fkv_hip_launch_attention(hipStream_t s, fkv_dtype dt, const fkv_hip_attention_args *a,
                                    uint32_t n_bh);
hipError_t fkv_hip_launch_attention_reduce(hipStream_t s, const float *part, uint32_t n_bh,
                                           uint32_t group, uint32_t head_dim, uint32_t n_splits,
                                           float *out);

/* Whether the code object has code for the current device: hipFuncGetAttributes of one
 * kernel (hipErrorNoBinaryForGpu / hipErrorInvalidDeviceFunction when the build's targets
 * do not include it). */
hipError_t fkv_hip_kernels_probe(void);

#ifdef __cplusplus
}
#endif
#endif
