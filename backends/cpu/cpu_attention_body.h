/* The loops of the CPU reference's attention that read K/V (cpu_attention.c includes this
 * file once per instruction set it builds them for; CPU_ATTN(name) names this copy's
 * functions). The copies differ in the conversion of the storage dtype (with F16C an f16
 * element converts in one instruction, exactly as common/dtype.h converts it; a NaN may come
 * out quiet) and in the width of their vectors, never in the arithmetic: the same lane-wise
 * f32 in every copy. */

_Static_assert(CPU_ATTN_S_HEADS <= SCORE_HEADS_MAX, "a score pass's heads fit its sums");

/* Vectors of the copy's width for the sums; TILE / CPU_ATTN_LANES of them hold a tile's
 * tokens. */
#define ATTN_TILE_WIDE (TILE / CPU_ATTN_LANES)
typedef float CPU_ATTN(vw) __attribute__((vector_size(4 * CPU_ATTN_LANES)));

CPU_VEC_INLINE CPU_ATTN(vw) CPU_ATTN(get)(const float *p) {
    CPU_ATTN(vw) x;
    memcpy(&x, p, sizeof x);
    return x;
}

CPU_VEC_INLINE void CPU_ATTN(put)(float *p, CPU_ATTN(vw) x) { memcpy(p, &x, sizeof x); }

/* Eight elements of `dt` at p as f32. */
CPU_VEC_INLINE cpu_vf CPU_ATTN(load)(const void *p, fkv_dtype dt) {
#ifdef __F16C__
    if (dt == FKV_F16) {
        __m128i h;
        memcpy(&h, p, sizeof h);
        __m256 f = _mm256_cvtph_ps(h);
        cpu_vf x;
        memcpy(&x, &f, sizeof x);
        return x;
    }
#endif
#ifdef __AVX2__
    /* GCC widens a generic 8-lane convert in 4-lane halves */
    if (dt == FKV_BF16) {
        __m128i h;
        memcpy(&h, p, sizeof h);
        __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        cpu_vf x;
        memcpy(&x, &u, sizeof x);
        return x;
    }
#endif
    return cpu_vec_load(p, dt);
}

/* CPU_ATTN_LANES elements of `dt` at p as f32 (the same conversion as CPU_ATTN(load)). */
CPU_VEC_INLINE CPU_ATTN(vw) CPU_ATTN(load_wide)(const unsigned char *p, fkv_dtype dt) {
    CPU_ATTN(vw) x;
    if (dt == FKV_F32) {
        memcpy(&x, p, sizeof x);
    } else if (dt == FKV_BF16) {
#if defined(__AVX512F__) && CPU_ATTN_LANES == 16
        __m256i h;
        memcpy(&h, p, sizeof h);
        __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
        memcpy(&x, &u, sizeof x);
#elif CPU_ATTN_LANES == CPU_LANES
        cpu_vf f = CPU_ATTN(load)(p, dt);
        memcpy(&x, &f, sizeof x);
#else
        typedef uint16_t half_bits __attribute__((vector_size(2 * CPU_ATTN_LANES)));
        typedef uint32_t word_bits __attribute__((vector_size(4 * CPU_ATTN_LANES)));
        half_bits h;
        memcpy(&h, p, sizeof h);
        word_bits u = __builtin_convertvector(h, word_bits) << 16;
        memcpy(&x, &u, sizeof x);
#endif
    } else {
#if defined(__AVX512F__) && CPU_ATTN_LANES == 16
        __m256i h;
        memcpy(&h, p, sizeof h);
        __m512 f = _mm512_cvtph_ps(h);
        memcpy(&x, &f, sizeof x);
#elif CPU_ATTN_LANES == 4
        cpu_vh4 h;
        memcpy(&h, p, sizeof h);
        x = cpu_vec4_from_f16(h);
#else
        for (int i = 0; i < CPU_ATTN_LANES; i += CPU_LANES) {
            cpu_vf f = CPU_ATTN(load)(p + i * sizeof(uint16_t), dt);
            memcpy((float *)&x + i, &f, sizeof f);
        }
#endif
    }
    return x;
}

/* kt[c*TILE + j] = channel c of the K row at k + off[j], as f32; the rows at next[0..n_next)
 * are asked for a few at a time along the way. Blocks of CPU_LANES rows x channels are
 * transposed in registers. GCC's baseline copy transposes 4x4 instead: GCC keeps an
 * eight-float vector in memory where registers hold four (SSE2, NEON), and the 4x4 blocks
 * made its baseline f32 attention 1.9x faster; clang splits the wider vectors into
 * registers itself, and its 8x8 blocks were 20% faster than 4x4 (docs/bench.md). */
#if CPU_ATTN_LANES == 4 && !defined(__clang__)
#define K_BLOCK 4
CPU_VEC_INLINE void CPU_ATTN(transpose)(CPU_ATTN(vw) *x) {
    CPU_ATTN(vw) t0 = __builtin_shufflevector(x[0], x[1], 0, 4, 1, 5),
                 t1 = __builtin_shufflevector(x[0], x[1], 2, 6, 3, 7),
                 t2 = __builtin_shufflevector(x[2], x[3], 0, 4, 1, 5),
                 t3 = __builtin_shufflevector(x[2], x[3], 2, 6, 3, 7);
    x[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    x[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    x[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    x[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}
#define K_VEC CPU_ATTN(vw)
#define K_LOAD(p, dt) CPU_ATTN(load_wide)(p, dt)
#define K_PUT(p, x) CPU_ATTN(put)(p, x)
#else
#define K_BLOCK CPU_LANES
#define K_VEC cpu_vf
#define K_LOAD(p, dt) CPU_ATTN(load)(p, dt)
#define K_PUT(p, x) cpu_vec_put(p, x)
CPU_VEC_INLINE void CPU_ATTN(transpose)(cpu_vf *x) { transpose8(x); }
#endif
CPU_VEC_INLINE void CPU_ATTN(load_k_tile)(const unsigned char *k, const size_t *off, size_t d,
                                          fkv_dtype dt, const size_t *next, size_t n_next,
                                          float *kt) {
    size_t es = fkv_dtype_size(dt);
    for (size_t g = 0; g < TILE; g += K_BLOCK) {
        if (g < n_next && g % CPU_LANES == 0)
            prefetch_rows(k, next + g, n_next - g < CPU_LANES ? n_next - g : CPU_LANES, d * es);
        size_t c0 = 0;
        for (; c0 + K_BLOCK <= d; c0 += K_BLOCK) {
            K_VEC x[K_BLOCK];
            UNROLL
            for (int j = 0; j < K_BLOCK; j++)
                x[j] = K_LOAD(k + off[g + j] + c0 * es, dt);
            CPU_ATTN(transpose)(x);
            UNROLL
            for (int c = 0; c < K_BLOCK; c++)
                K_PUT(kt + (c0 + c) * TILE + g, x[c]);
        }
        for (; c0 < d; c0++) {
            UNROLL
            for (int j = 0; j < K_BLOCK; j++)
                kt[c0 * TILE + g + j] = fkv_load(k + off[g + j], dt, c0);
        }
    }
}
#undef K_BLOCK
#undef K_VEC
#undef K_LOAD
#undef K_PUT

/* a[i*nv + v] += y[i*y_stride] * x[v] for nh heads i and nv vectors v (constants where
 * inlined): one head's sums in each row of a, each x serving every head. */
CPU_VEC_INLINE void CPU_ATTN(add_scaled)(CPU_ATTN(vw) *a, uint32_t nh, int nv, const float *y,
                                         size_t y_stride, const CPU_ATTN(vw) *x) {
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
CPU_VEC_INLINE void CPU_ATTN(score_heads)(const float *kt, const float *q, uint32_t nh, size_t d,
                                          float scale, size_t n, float *sc, size_t n_tokens,
                                          float *max) {
    CPU_ATTN(vw) a[SCORE_HEADS_MAX * ATTN_TILE_WIDE];
    UNROLL
    for (uint32_t i = 0; i < nh * ATTN_TILE_WIDE; i++)
        a[i] = (CPU_ATTN(vw)){0};
    for (size_t c = 0; c < d; c++) {
        CPU_ATTN(vw) x[ATTN_TILE_WIDE];
        UNROLL
        for (int v = 0; v < ATTN_TILE_WIDE; v++)
            x[v] = CPU_ATTN(get)(kt + c * TILE + v * CPU_ATTN_LANES);
        CPU_ATTN(add_scaled)(a, nh, ATTN_TILE_WIDE, q + c, d, x);
    }
    for (uint32_t i = 0; i < nh; i++) {
        float lane[TILE];
        UNROLL
        for (int v = 0; v < ATTN_TILE_WIDE; v++)
            CPU_ATTN(put)(lane + v * CPU_ATTN_LANES, a[i * ATTN_TILE_WIDE + v] * scale);
        float *dst = sc + i * n_tokens, m = max[i];
        for (size_t j = 0; j < n; j++) {
            dst[j] = lane[j];
            if (lane[j] > m)
                m = lane[j];
        }
        max[i] = m;
    }
}

/* The heads of a block, CPU_ATTN_S_HEADS at a time, each pass with its count as a constant. */
CPU_VEC_INLINE void CPU_ATTN(score_tile)(const float *kt, const float *q, uint32_t nh, size_t d,
                                         float scale, size_t n, float *sc, size_t n_tokens,
                                         float *max) {
    for (uint32_t i0 = 0; i0 < nh; i0 += CPU_ATTN_S_HEADS) {
        const float *qi = q + i0 * d;
        float *si = sc + i0 * n_tokens, *mi = max + i0;
        switch (nh - i0 < CPU_ATTN_S_HEADS ? nh - i0 : CPU_ATTN_S_HEADS) {
        case 1:
            CPU_ATTN(score_heads)(kt, qi, 1, d, scale, n, si, n_tokens, mi);
            break;
        case 2:
            CPU_ATTN(score_heads)(kt, qi, 2, d, scale, n, si, n_tokens, mi);
            break;
        case 3:
            CPU_ATTN(score_heads)(kt, qi, 3, d, scale, n, si, n_tokens, mi);
            break;
        default:
            CPU_ATTN(score_heads)(kt, qi, CPU_ATTN_S_HEADS, d, scale, n, si, n_tokens, mi);
        }
    }
}

/* Pass 1: sc[i*n_tokens + t] = score of token t for head i, and max[i]. K is read once, the
 * tile after next asked for while a tile is computed (three offset buffers in turn). */
CPU_VEC_INLINE void CPU_ATTN(score_pass)(const attn_src *s, const float *q, uint32_t nh, size_t d,
                                         fkv_dtype dt, float scale, const attn_scratch *w,
                                         float *max) {
    size_t es = fkv_dtype_size(dt), off[3][TILE], n[3], tok = 0;
    attn_cursor cur = {0, 0};
    for (uint32_t i = 0; i < nh; i++)
        max[i] = -INFINITY;
    n[0] = next_tile(s, es, &cur, off[0]);
    n[1] = next_tile(s, es, &cur, off[1]);
    prefetch_rows(s->k, off[1], n[1], d * es);
    for (int b = 0; n[b] > 0; b = (b + 1) % 3) {
        int b2 = (b + 2) % 3;
        n[b2] = next_tile(s, es, &cur, off[b2]);
        CPU_ATTN(load_k_tile)(s->k, off[b], d, dt, off[b2], n[b2], w->kt);
        CPU_ATTN(score_tile)(w->kt, q, nh, d, scale, n[b], w->sc + tok, s->n_tokens, max);
        tok += n[b];
    }
}

/* out[i*d + c] += sum over the tile's tokens j in order of wt[i*TILE + j] * row j [c] for the
 * nh heads of a pass (a constant where inlined): a row's chunk is converted once for all of
 * them, and their nh x CPU_ATTN_V_WIDE sums are independent, which hides an add's latency. */
CPU_VEC_INLINE void CPU_ATTN(accumulate_heads)(const unsigned char *const *rows, fkv_dtype dt,
                                               const float *wt, uint32_t nh, size_t n, size_t d,
                                               float *out) {
    size_t es = fkv_dtype_size(dt), c0 = 0;
    for (; c0 + CPU_ATTN_V_WIDE * CPU_ATTN_LANES <= d; c0 += CPU_ATTN_V_WIDE * CPU_ATTN_LANES) {
        CPU_ATTN(vw) a[V_HEADS * CPU_ATTN_V_WIDE];
        UNROLL
        for (uint32_t i = 0; i < nh; i++)
            UNROLL
        for (int v = 0; v < CPU_ATTN_V_WIDE; v++)
            a[i * CPU_ATTN_V_WIDE + v] = CPU_ATTN(get)(out + i * d + c0 + v * CPU_ATTN_LANES);
        for (size_t j = 0; j < n; j++) {
            CPU_ATTN(vw) x[CPU_ATTN_V_WIDE];
            UNROLL
            for (int v = 0; v < CPU_ATTN_V_WIDE; v++)
                x[v] = CPU_ATTN(load_wide)(rows[j] + (c0 + v * CPU_ATTN_LANES) * es, dt);
            CPU_ATTN(add_scaled)(a, nh, CPU_ATTN_V_WIDE, wt + j, TILE, x);
        }
        UNROLL
        for (uint32_t i = 0; i < nh; i++)
            UNROLL
        for (int v = 0; v < CPU_ATTN_V_WIDE; v++)
            CPU_ATTN(put)(out + i * d + c0 + v * CPU_ATTN_LANES, a[i * CPU_ATTN_V_WIDE + v]);
    }
    for (; c0 + CPU_LANES <= d; c0 += CPU_LANES) {
        cpu_vf a[V_HEADS];
        UNROLL
        for (uint32_t i = 0; i < nh; i++)
            a[i] = cpu_vec_get(out + i * d + c0);
        for (size_t j = 0; j < n; j++) {
            cpu_vf x = CPU_ATTN(load)(rows[j] + c0 * es, dt);
            UNROLL
            for (uint32_t i = 0; i < nh; i++)
                a[i] += wt[i * TILE + j] * x;
        }
        UNROLL
        for (uint32_t i = 0; i < nh; i++)
            cpu_vec_put(out + i * d + c0, a[i]);
    }
    for (; c0 < d; c0++)
        for (uint32_t i = 0; i < nh; i++) {
            float a = out[i * d + c0];
            for (size_t j = 0; j < n; j++)
                a += wt[i * TILE + j] * fkv_load(rows[j], dt, c0);
            out[i * d + c0] = a;
        }
}

/* The heads of a block, V_HEADS at a time, each pass with its count as a constant. */
CPU_VEC_INLINE void CPU_ATTN(accumulate_tile)(const unsigned char *const *rows, fkv_dtype dt,
                                              const float *wt, uint32_t nh, size_t n, size_t d,
                                              float *out) {
    for (uint32_t i0 = 0; i0 < nh; i0 += V_HEADS) {
        const float *w = wt + i0 * TILE;
        float *o = out + i0 * d;
        switch (nh - i0 < V_HEADS ? nh - i0 : V_HEADS) {
        case 1:
            CPU_ATTN(accumulate_heads)(rows, dt, w, 1, n, d, o);
            break;
        case 2:
            CPU_ATTN(accumulate_heads)(rows, dt, w, 2, n, d, o);
            break;
        case 3:
            CPU_ATTN(accumulate_heads)(rows, dt, w, 3, n, d, o);
            break;
        default:
            CPU_ATTN(accumulate_heads)(rows, dt, w, V_HEADS, n, d, o);
        }
    }
}

/* Pass 2: out[i] = sum_t w_t v_t / sum_t w_t with w_t = expf(sc - max). V is read once, as
 * K in pass 1; the rows of the tile after next are asked for while the weights are computed. */
CPU_VEC_INLINE void CPU_ATTN(value_pass)(const attn_src *s, uint32_t nh, size_t d, fkv_dtype dt,
                                         const attn_scratch *w, const float *max, float *out) {
    size_t es = fkv_dtype_size(dt), off[3][TILE], n[3], tok = 0;
    float sum[HEAD_BLOCK] = {0};
    const unsigned char *rows[TILE];
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
                w->wt[i * TILE + j] = x;
            }
            rows[j] = s->v + off[b][j];
        }
        CPU_ATTN(accumulate_tile)(rows, dt, w->wt, nh, n[b], d, out);
        tok += n[b];
    }
    for (uint32_t i = 0; i < nh; i++)
        for (size_t c = 0; c < d; c++)
            out[i * d + c] /= sum[i];
}

CPU_VEC_INLINE void CPU_ATTN(attend_block_dt)(const attn_src *s, const float *q, uint32_t nh,
                                              size_t d, fkv_dtype dt, float scale,
                                              const attn_scratch *w, float *out) {
    float max[HEAD_BLOCK];
    CPU_ATTN(score_pass)(s, q, nh, d, dt, scale, w, max);
    CPU_ATTN(value_pass)(s, nh, d, dt, w, max, out);
}

/* nh (<= HEAD_BLOCK) query heads q[i*d..] of one (sequence, KV head) into out[i*d..]. One
 * body per storage dtype, so the loads are not a switch. */
static void CPU_ATTN(attend_block)(const attn_src *s, const float *q, uint32_t nh, size_t d,
                                   fkv_dtype dt, float scale, const attn_scratch *w, float *out) {
    if (dt == FKV_F32)
        CPU_ATTN(attend_block_dt)(s, q, nh, d, FKV_F32, scale, w, out);
    else if (dt == FKV_F16)
        CPU_ATTN(attend_block_dt)(s, q, nh, d, FKV_F16, scale, w, out);
    else
        CPU_ATTN(attend_block_dt)(s, q, nh, d, FKV_BF16, scale, w, out);
}

#undef ATTN_TILE_WIDE
