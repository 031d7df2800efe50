/* The scores' loops, once per instruction-set level (cpu_scores.c includes this file through
 * cpu_levels.h; CPU_LEVEL(name) names this copy's functions). A tile holds CPU_TILE pages'
 * summaries of one KV head transposed, so a vector's lanes are pages and each lane sums over
 * the channels in order: every copy computes the definition (cpu_scores.h) bit for bit. */
#include "cpu_tile_body.h"

/* Heads a pass sums at once: with TILE_WIDE vectors each, eight sums. */
#define SCORES_S_HEADS (CPU_LEVEL_LANES / 4)
_Static_assert(SCORES_S_HEADS <= 4, "CPU_HEAD_PASSES writes passes of up to 4 heads");

typedef int32_t CPU_LEVEL(vi) __attribute__((vector_size(4 * CPU_LEVEL_LANES)));

/* max_skip_nan (cpu_scores.h) lane by lane: a where a >= b or b is NaN, else b. It is fmaxf
 * without the libm call, which dominated the reference's scoring: a NaN operand yields the
 * other one; of +0 and -0 the first, as glibc's fmaxf. One compare less than testing a first:
 * a NaN a fails a >= b and yields b (or a NaN b, which is a NaN either way). */
CPU_VEC_INLINE CPU_LEVEL(vw) CPU_LEVEL(max_skip_nan)(CPU_LEVEL(vw) a, CPU_LEVEL(vw) b) {
    CPU_LEVEL(vi) keep = (a >= b) | (b != b), ai, bi;
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    ai = (keep & ai) | (~keep & bi);
    memcpy(&a, &ai, sizeof a);
    return a;
}

/* out[i*n_pages + j] (j < n; n_pages: the output's row stride) for the nh heads q[i*d..] (a
 * constant where inlined) over the tile kt ([2d][CPU_TILE]: the minima's channels, then the
 * maxima's). Each lo/hi vector serves every head of the pass. */
CPU_VEC_INLINE void CPU_LEVEL(score_heads)(const float *kt, const float *q, uint32_t nh, size_t d,
                                           size_t n, float *out, size_t n_pages) {
    CPU_LEVEL(vw) a[SCORES_S_HEADS * TILE_WIDE];
    UNROLL
    for (uint32_t i = 0; i < nh * TILE_WIDE; i++)
        a[i] = (CPU_LEVEL(vw)){0};
    for (size_t c = 0; c < d; c++) {
        CPU_LEVEL(vw) lo[TILE_WIDE], hi[TILE_WIDE];
        UNROLL
        for (int v = 0; v < TILE_WIDE; v++) {
            lo[v] = CPU_LEVEL(get)(kt + c * CPU_TILE + v * CPU_LEVEL_LANES);
            hi[v] = CPU_LEVEL(get)(kt + (d + c) * CPU_TILE + v * CPU_LEVEL_LANES);
        }
        UNROLL
        for (uint32_t i = 0; i < nh; i++) {
            float qi = q[i * d + c];
            UNROLL
            for (int v = 0; v < TILE_WIDE; v++)
                a[i * TILE_WIDE + v] += CPU_LEVEL(max_skip_nan)(qi * hi[v], qi * lo[v]);
        }
    }
    for (uint32_t i = 0; i < nh; i++) {
        float lane[CPU_TILE];
        UNROLL
        for (int v = 0; v < TILE_WIDE; v++)
            CPU_LEVEL(put)(lane + v * CPU_LEVEL_LANES, a[i * TILE_WIDE + v]);
        memcpy(out + i * n_pages, lane, n * sizeof *lane);
    }
}

/* Every head of the group, SCORES_S_HEADS at a time, each pass with its count as a constant. */
CPU_VEC_INLINE void CPU_LEVEL(score_tile)(const float *kt, const float *q, uint32_t group,
                                          size_t d, size_t n, float *out, size_t n_pages) {
#define SCORES_PASS(i0, k)                                                                     \
    CPU_LEVEL(score_heads)(kt, q + (i0) * d, k, d, n, out + (i0) * n_pages, n_pages)
    CPU_HEAD_PASSES(group, SCORES_S_HEADS, SCORES_PASS)
#undef SCORES_PASS
}

/* The pages' rows are 2d elements of dt, stride bytes apart from base. The hardware
 * prefetchers follow that stride: asking for the next tile's rows, or the one after, did not
 * change the time (docs/bench.md). */
CPU_VEC_INLINE void CPU_LEVEL(score_head_dt)(const unsigned char *base, size_t stride, size_t d,
                                             fkv_dtype dt, uint32_t group, size_t n_pages,
                                             size_t out_stride, const float *q, float *kt,
                                             float *out) {
    size_t off[CPU_TILE];
    for (size_t j = 0; j < n_pages; j += CPU_TILE) {
        size_t n = n_pages - j < CPU_TILE ? n_pages - j : CPU_TILE;
        for (size_t p = 0; p < CPU_TILE; p++) /* spare entries repeat the first page */
            off[p] = (j + (p < n ? p : 0)) * stride;
        CPU_LEVEL(load_tile)(base, off, 2 * d, dt, NULL, 0, kt);
        CPU_LEVEL(score_tile)(kt, q, group, d, n, out + j, out_stride);
    }
}

static void CPU_LEVEL(score_head)(const fkv_kv_geom *g, const float *q, const void *summaries,
                                  size_t first, size_t kv_head, size_t n_pages,
                                  size_t out_stride, float *kt, float *out) {
    size_t d = g->head_dim;
    int f16 = g->summary_format == FKV_SUMMARY_F16;
    size_t row = 2 * d * (f16 ? sizeof(uint16_t) : sizeof(float)), stride = g->n_kv_heads * row;
    const unsigned char *base = (const unsigned char *)summaries + first * stride + kv_head * row;
    if (f16)
        CPU_LEVEL(score_head_dt)(base, stride, d, FKV_F16, g->group, n_pages, out_stride, q, kt,
                                 out);
    else
        CPU_LEVEL(score_head_dt)(base, stride, d, FKV_F32, g->group, n_pages, out_stride, q, kt,
                                 out);
}

#undef TILE_WIDE
#undef SCORES_S_HEADS
