/* The loops of the CPU reference's attention that read K/V (cpu_attention.c includes this
 * file once per instruction-set level, cpu_levels.h; CPU_LEVEL(name) names this copy's
 * functions). The copies differ in the conversion of the storage dtype (cpu_tile_body.h) and
 * in the width of their vectors, never in the arithmetic: the same lane-wise f32 in every
 * copy. */
#include "cpu_tile_body.h"

/* Heads a score pass sums at once: with TILE_WIDE vectors each, eight sums, enough to hide an
 * add's latency. */
#define ATTN_S_HEADS (CPU_LEVEL_LANES / 4)
_Static_assert(ATTN_S_HEADS <= SCORE_HEADS_MAX, "a score pass's heads fit its sums");

/* a[i*nv + v] += y[i*y_stride] * x[v] for nh heads i and nv vectors v (constants where
 * inlined): one head's sums in each row of a, each x serving every head. */
CPU_VEC_INLINE void CPU_LEVEL(add_scaled)(CPU_LEVEL(vw) *a, uint32_t nh, int nv, const float *y,
                                          size_t y_stride, const CPU_LEVEL(vw) *x) {
    UNROLL
    for (uint32_t i = 0; i < nh; i++) {
        float yi = y[i * y_stride];
        UNROLL
        for (int v = 0; v < nv; v++)
            a[i * nv + v] += yi * x[v];
    }
}

/* The scores of a tile for nh heads q[i*d..] (a constant where inlined) into
 * sc[i*n_tokens + tok + j] (j < n), and the running maxima. Lane j of a sum is token j's, over
 * c in order; each transposed K vector serves every head of the pass. */
CPU_VEC_INLINE void CPU_LEVEL(score_heads)(const float *kt, const float *q, uint32_t nh, size_t d,
                                           float scale, size_t n, float *sc, size_t n_tokens,
                                           float *max) {
    CPU_LEVEL(vw) a[SCORE_HEADS_MAX * TILE_WIDE];
    UNROLL
    for (uint32_t i = 0; i < nh * TILE_WIDE; i++)
        a[i] = (CPU_LEVEL(vw)){0};
    for (size_t c = 0; c < d; c++) {
        CPU_LEVEL(vw) x[TILE_WIDE];
        UNROLL
        for (int v = 0; v < TILE_WIDE; v++)
            x[v] = CPU_LEVEL(get)(kt + c * CPU_TILE + v * CPU_LEVEL_LANES);
        CPU_LEVEL(add_scaled)(a, nh, TILE_WIDE, q + c, d, x);
    }
    for (uint32_t i = 0; i < nh; i++) {
        float lane[CPU_TILE];
        UNROLL
        for (int v = 0; v < TILE_WIDE; v++)
            CPU_LEVEL(put)(lane + v * CPU_LEVEL_LANES, a[i * TILE_WIDE + v] * scale);
        float *dst = sc + i * n_tokens, m = max[i];
        for (size_t j = 0; j < n; j++) {
            dst[j] = lane[j];
            if (lane[j] > m)
                m = lane[j];
        }
        max[i] = m;
    }
}

/* The heads of a block, ATTN_S_HEADS at a time, each pass with its count as a constant. */
CPU_VEC_INLINE void CPU_LEVEL(score_tile)(const float *kt, const float *q, uint32_t nh, size_t d,
                                          float scale, size_t n, float *sc, size_t n_tokens,
                                          float *max) {
#define SCORE_PASS(i0, k)                                                                      \
    CPU_LEVEL(score_heads)(kt, q + (i0) * d, k, d, scale, n, sc + (i0) * n_tokens, n_tokens,    \
                           max + (i0))
    CPU_HEAD_PASSES(nh, ATTN_S_HEADS, SCORE_PASS)
#undef SCORE_PASS
}

/* Pass 1: sc[i*n_tokens + t] = score of token t for head i, and max[i]. K is read once, the
 * tile after next asked for while a tile is computed (three offset buffers in turn). */
CPU_VEC_INLINE void CPU_LEVEL(score_pass)(const attn_src *s, const float *q, uint32_t nh, size_t d,
                                          fkv_dtype dt, float scale, const attn_scratch *w,
                                          float *max) {
    size_t es = fkv_dtype_size(dt), off[3][CPU_TILE], n[3], tok = 0;
    attn_cursor cur = {0, 0};
    for (uint32_t i = 0; i < nh; i++)
        max[i] = -INFINITY;
    n[0] = next_tile(s, es, &cur, off[0]);
    n[1] = next_tile(s, es, &cur, off[1]);
    prefetch_rows(s->k, off[1], n[1], d * es);
    for (int b = 0; n[b] > 0; b = (b + 1) % 3) {
        int b2 = (b + 2) % 3;
        n[b2] = next_tile(s, es, &cur, off[b2]);
        CPU_LEVEL(load_tile)(s->k, off[b], d, dt, off[b2], n[b2], w->kt);
        CPU_LEVEL(score_tile)(w->kt, q, nh, d, scale, n[b], w->sc + tok, s->n_tokens, max);
        tok += n[b];
    }
}

/* out[i*d + c] += sum over the tile's tokens j in order of wt[i*CPU_TILE + j] * row j [c] for the
 * nh heads of a pass (a constant where inlined): a row's chunk is converted once for all of
 * them, and their nh x V_WIDE sums are independent, which hides an add's latency. */
CPU_VEC_INLINE void CPU_LEVEL(accumulate_heads)(const unsigned char *const *rows, fkv_dtype dt,
                                                const float *wt, uint32_t nh, size_t n, size_t d,
                                                float *out) {
    size_t es = fkv_dtype_size(dt), c0 = 0;
    for (; c0 + V_WIDE * CPU_LEVEL_LANES <= d; c0 += V_WIDE * CPU_LEVEL_LANES) {
        CPU_LEVEL(vw) a[V_HEADS * V_WIDE];
        UNROLL
        for (uint32_t i = 0; i < nh; i++)
            UNROLL
        for (int v = 0; v < V_WIDE; v++)
            a[i * V_WIDE + v] = CPU_LEVEL(get)(out + i * d + c0 + v * CPU_LEVEL_LANES);
        for (size_t j = 0; j < n; j++) {
            CPU_LEVEL(vw) x[V_WIDE];
            UNROLL
            for (int v = 0; v < V_WIDE; v++)
                x[v] = CPU_LEVEL(load_wide)(rows[j] + (c0 + v * CPU_LEVEL_LANES) * es, dt);
            CPU_LEVEL(add_scaled)(a, nh, V_WIDE, wt + j, CPU_TILE, x);
        }
        UNROLL
        for (uint32_t i = 0; i < nh; i++)
            UNROLL
        for (int v = 0; v < V_WIDE; v++)
            CPU_LEVEL(put)(out + i * d + c0 + v * CPU_LEVEL_LANES, a[i * V_WIDE + v]);
    }
    for (; c0 + CPU_LANES <= d; c0 += CPU_LANES) {
        cpu_vf a[V_HEADS];
        UNROLL
        for (uint32_t i = 0; i < nh; i++)
            a[i] = CPU_LEVEL(get8)(out + i * d + c0);
        for (size_t j = 0; j < n; j++) {
            cpu_vf x = CPU_LEVEL(load)(rows[j] + c0 * es, dt);
            UNROLL
            for (uint32_t i = 0; i < nh; i++)
                a[i] += wt[i * CPU_TILE + j] * x;
        }
        UNROLL
        for (uint32_t i = 0; i < nh; i++)
            CPU_LEVEL(put8)(out + i * d + c0, a[i]);
    }
    for (; c0 < d; c0++)
        for (uint32_t i = 0; i < nh; i++) {
            float a = out[i * d + c0];
            for (size_t j = 0; j < n; j++)
                a += wt[i * CPU_TILE + j] * fkv_load(rows[j], dt, c0);
            out[i * d + c0] = a;
        }
}

/* The heads of a block, V_HEADS at a time, each pass with its count as a constant. */
CPU_VEC_INLINE void CPU_LEVEL(accumulate_tile)(const unsigned char *const *rows, fkv_dtype dt,
                                               const float *wt, uint32_t nh, size_t n, size_t d,
                                               float *out) {
#define ACCUMULATE_PASS(i0, k)                                                                 \
    CPU_LEVEL(accumulate_heads)(rows, dt, wt + (i0) * CPU_TILE, k, n, d, out + (i0) * d)
    CPU_HEAD_PASSES(nh, V_HEADS, ACCUMULATE_PASS)
#undef ACCUMULATE_PASS
}

/* Pass 2: out[i] = sum_t w_t v_t / sum_t w_t with w_t = expf(sc - max). V is read once, as
 * K in pass 1; the rows of the tile after next are asked for while the weights are computed. */
CPU_VEC_INLINE void CPU_LEVEL(value_pass)(const attn_src *s, uint32_t nh, size_t d, fkv_dtype dt,
                                          const attn_scratch *w, const float *max, float *out) {
    size_t es = fkv_dtype_size(dt), off[3][CPU_TILE], n[3], tok = 0;
    float sum[HEAD_BLOCK] = {0};
    const unsigned char *rows[CPU_TILE];
    attn_cursor cur = {0, 0};
    memset(out, 0, nh * d * sizeof *out);
    n[0] = next_tile(s, es, &cur, off[0]);
    n[1] = next_tile(s, es, &cur, off[1]);
    prefetch_rows(s->v, off[1], n[1], d * es);
    for (int b = 0; n[b] > 0; b = (b + 1) % 3) {
        int b2 = (b + 2) % 3;
        n[b2] = next_tile(s, es, &cur, off[b2]);
        for (size_t j = 0; j < n[b]; j++) {
            if (j < n[b2])
                prefetch_rows(s->v, off[b2] + j, 1, d * es);
            for (uint32_t i = 0; i < nh; i++) {
                float x = expf(w->sc[i * s->n_tokens + tok + j] - max[i]);
                sum[i] += x;
                w->wt[i * CPU_TILE + j] = x;
            }
            rows[j] = s->v + off[b][j];
        }
        CPU_LEVEL(accumulate_tile)(rows, dt, w->wt, nh, n[b], d, out);
        tok += n[b];
    }
    for (uint32_t i = 0; i < nh; i++)
        for (size_t c = 0; c < d; c++)
            out[i * d + c] /= sum[i];
}

CPU_VEC_INLINE void CPU_LEVEL(attend_block_dt)(const attn_src *s, const float *q, uint32_t nh,
                                               size_t d, fkv_dtype dt, float scale,
                                               const attn_scratch *w, float *out) {
    float max[HEAD_BLOCK];
    CPU_LEVEL(score_pass)(s, q, nh, d, dt, scale, w, max);
    CPU_LEVEL(value_pass)(s, nh, d, dt, w, max, out);
}

/* nh (<= HEAD_BLOCK) query heads q[i*d..] of one (sequence, KV head) into out[i*d..]. One
 * body per storage dtype, so the loads are not a switch. */
static void CPU_LEVEL(attend_block)(const attn_src *s, const float *q, uint32_t nh, size_t d,
                                    fkv_dtype dt, float scale, const attn_scratch *w, float *out) {
    if (dt == FKV_F32)
        CPU_LEVEL(attend_block_dt)(s, q, nh, d, FKV_F32, scale, w, out);
    else if (dt == FKV_F16)
        CPU_LEVEL(attend_block_dt)(s, q, nh, d, FKV_F16, scale, w, out);
    else
        CPU_LEVEL(attend_block_dt)(s, q, nh, d, FKV_BF16, scale, w, out);
}

#undef TILE_WIDE
#undef ATTN_S_HEADS
