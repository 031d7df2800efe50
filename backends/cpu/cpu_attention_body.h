/* The loops of the CPU reference's attention that read K/V (cpu_attention.c includes this
 * file once per instruction set it builds them for; CPU_ATTN(name) names this copy's
 * functions). Only the conversion of the storage dtype differs between copies: with F16C an
 * f16 element converts in one instruction, exactly as common/dtype.h converts it (a NaN may
 * come out quiet). The arithmetic is the same lane-wise f32 in every copy. */

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
    return cpu_vec_load(p, dt);
}

/* kt[c*TILE + j] = channel c of the K row at k + off[j], as f32; the rows at next[0..n_next)
 * are asked for a few at a time along the way. */
CPU_VEC_INLINE void CPU_ATTN(load_k_tile)(const unsigned char *k, const size_t *off, size_t d,
                                          fkv_dtype dt, const size_t *next, size_t n_next,
                                          float *kt) {
    size_t es = fkv_dtype_size(dt);
    for (size_t g = 0; g < TILE; g += CPU_LANES) {
        if (g < n_next)
            prefetch_rows(k, next + g, n_next - g < CPU_LANES ? n_next - g : CPU_LANES, d * es);
        size_t c0 = 0;
        for (; c0 + CPU_LANES <= d; c0 += CPU_LANES) {
            cpu_vf x[CPU_LANES];
            UNROLL
            for (int j = 0; j < CPU_LANES; j++)
                x[j] = CPU_ATTN(load)(k + off[g + j] + c0 * es, dt);
            transpose8(x);
            UNROLL
            for (int c = 0; c < CPU_LANES; c++)
                cpu_vec_put(kt + (c0 + c) * TILE + g, x[c]);
        }
        for (; c0 < d; c0++) {
            UNROLL
            for (int j = 0; j < CPU_LANES; j++)
                kt[c0 * TILE + g + j] = fkv_load(k + off[g + j], dt, c0);
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
        score_tile(w->kt, q, nh, d, scale, n[b], w->sc + tok, s->n_tokens, max);
        tok += n[b];
    }
}

/* The V rows of a tile as f32 rows: the pool's own rows for f32, else converted into vt; the
 * rows at next[0..n_next) asked for one a row. */
CPU_VEC_INLINE void CPU_ATTN(load_v_tile)(const unsigned char *v, const size_t *off, size_t n,
                                          size_t d, fkv_dtype dt, const size_t *next, size_t n_next,
                                          float *vt, const float **rows) {
    size_t es = fkv_dtype_size(dt);
    for (size_t j = 0; j < n; j++) {
        const unsigned char *src = v + off[j];
        if (j < n_next)
            prefetch_rows(v, next + j, 1, d * es);
        if (dt == FKV_F32) {
            rows[j] = (const float *)src;
            continue;
        }
        float *dst = vt + j * d;
        size_t c0 = 0;
        for (; c0 + CPU_LANES <= d; c0 += CPU_LANES)
            cpu_vec_put(dst + c0, CPU_ATTN(load)(src + c0 * es, dt));
        for (; c0 < d; c0++)
            dst[c0] = fkv_load(src, dt, c0);
        rows[j] = dst;
    }
}

/* Pass 2: out[i] = sum_t w_t v_t / sum_t w_t with w_t = expf(sc - max). V is read once, as
 * K in pass 1. */
CPU_VEC_INLINE void CPU_ATTN(value_pass)(const attn_src *s, uint32_t nh, size_t d, fkv_dtype dt,
                                         const attn_scratch *w, const float *max, float *out) {
    size_t es = fkv_dtype_size(dt), off[3][TILE], n[3], tok = 0;
    float sum[HEAD_BLOCK] = {0};
    const float *rows[TILE];
    attn_cursor cur = {0, 0};
    memset(out, 0, nh * d * sizeof *out);
    n[0] = next_tile(s, es, &cur, off[0]);
    n[1] = next_tile(s, es, &cur, off[1]);
    prefetch_rows(s->v, off[1], n[1], d * es);
    for (int b = 0; n[b] > 0; b = (b + 1) % 3) {
        int b2 = (b + 2) % 3;
        n[b2] = next_tile(s, es, &cur, off[b2]);
        for (size_t j = 0; j < n[b]; j++)
            for (uint32_t i = 0; i < nh; i++) {
                float x = expf(w->sc[i * s->n_tokens + tok + j] - max[i]);
                sum[i] += x;
                w->wt[i * TILE + j] = x;
            }
        CPU_ATTN(load_v_tile)(s->v, off[b], n[b], d, dt, off[b2], n[b2], w->vt, rows);
        for (uint32_t i = 0; i < nh; i++)
            accumulate_head(rows, w->wt + i * TILE, n[b], d, out + i * d);
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
