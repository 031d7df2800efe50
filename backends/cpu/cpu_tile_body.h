/* Rows of K/V or of page summaries converted and transposed into tiles, once per
 * instruction-set level (cpu_levels.h; the attention's and the scores' bodies include it).
 * With F16C an f16 element converts in one instruction, exactly as common/dtype.h converts
 * it (a NaN may come out quiet). */

/* Vectors of the level's width; CPU_TILE / CPU_LEVEL_LANES of them hold a tile's rows. */
#define TILE_WIDE (CPU_TILE / CPU_LEVEL_LANES)
typedef float CPU_LEVEL(vw) __attribute__((vector_size(4 * CPU_LEVEL_LANES)));

CPU_VEC_INLINE CPU_LEVEL(vw) CPU_LEVEL(get)(const float *p) {
    CPU_LEVEL(vw) x;
    memcpy(&x, p, sizeof x);
    return x;
}

CPU_VEC_INLINE void CPU_LEVEL(put)(float *p, CPU_LEVEL(vw) x) { memcpy(p, &x, sizeof x); }

/* Eight elements of `dt` at p as f32. */
CPU_VEC_INLINE cpu_vf CPU_LEVEL(load)(const void *p, fkv_dtype dt) {
#if CPU_LEVEL_F16C
    if (dt == FKV_F16) {
        __m128i h;
        memcpy(&h, p, sizeof h);
        __m256 f = _mm256_cvtph_ps(h);
        cpu_vf x;
        memcpy(&x, &f, sizeof x);
        return x;
    }
#endif
#if CPU_LEVEL_AVX2
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
    cpu_vf x;
    if (dt == FKV_F32) {
        memcpy(&x, p, sizeof x);
        return x;
    }
    cpu_vh h;
    memcpy(&h, p, sizeof h);
    if (dt == FKV_BF16) {
        cpu_vu u = __builtin_convertvector(h, cpu_vu) << 16;
        memcpy(&x, &u, sizeof x);
        return x;
    }
    cpu_vf4 lo = cpu_vec4_from_f16(__builtin_shufflevector(h, h, 0, 1, 2, 3)),
            hi = cpu_vec4_from_f16(__builtin_shufflevector(h, h, 4, 5, 6, 7));
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}

/* Eight floats at p, and back: by value only within a level's copy (cpu_vec.h). */
CPU_VEC_INLINE cpu_vf CPU_LEVEL(get8)(const float *p) {
    cpu_vf x;
    memcpy(&x, p, sizeof x);
    return x;
}

CPU_VEC_INLINE void CPU_LEVEL(put8)(float *p, cpu_vf x) { memcpy(p, &x, sizeof x); }

/* CPU_LEVEL_LANES elements of `dt` at p as f32 (the same conversion as CPU_LEVEL(load)). */
CPU_VEC_INLINE CPU_LEVEL(vw) CPU_LEVEL(load_wide)(const unsigned char *p, fkv_dtype dt) {
    CPU_LEVEL(vw) x;
    if (dt == FKV_F32) {
        memcpy(&x, p, sizeof x);
    } else if (dt == FKV_BF16) {
#if CPU_LEVEL_AVX512 && CPU_LEVEL_LANES == 16
        __m256i h;
        memcpy(&h, p, sizeof h);
        __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
        memcpy(&x, &u, sizeof x);
#elif CPU_LEVEL_LANES == CPU_LANES
        cpu_vf f = CPU_LEVEL(load)(p, dt);
        memcpy(&x, &f, sizeof x);
#else
        typedef uint16_t half_bits __attribute__((vector_size(2 * CPU_LEVEL_LANES)));
        typedef uint32_t word_bits __attribute__((vector_size(4 * CPU_LEVEL_LANES)));
        half_bits h;
        memcpy(&h, p, sizeof h);
        word_bits u = __builtin_convertvector(h, word_bits) << 16;
        memcpy(&x, &u, sizeof x);
#endif
    } else {
#if CPU_LEVEL_AVX512 && CPU_LEVEL_LANES == 16
        __m256i h;
        memcpy(&h, p, sizeof h);
        __m512 f = _mm512_cvtph_ps(h);
        memcpy(&x, &f, sizeof x);
#elif CPU_LEVEL_LANES == 4
        cpu_vh4 h;
        memcpy(&h, p, sizeof h);
        x = cpu_vec4_from_f16(h);
#else
        for (int i = 0; i < CPU_LEVEL_LANES; i += CPU_LANES) {
            cpu_vf f = CPU_LEVEL(load)(p + i * sizeof(uint16_t), dt);
            memcpy((float *)&x + i, &f, sizeof f);
        }
#endif
    }
    return x;
}

/* kt[c*CPU_TILE + j] = element c of the row at k + off[j] (d elements), as f32; the rows at
 * next[0..n_next) are asked for a few at a time along the way. Blocks of CPU_LANES rows x
 * channels are transposed in registers. GCC's 4-lane baseline copy transposes 4x4 instead:
 * GCC keeps an eight-float vector in memory where registers hold four (SSE2, NEON), and the
 * 4x4 blocks made its baseline f32 attention 1.9x faster; clang splits the wider vectors into
 * registers itself, and its 8x8 blocks were 20% faster than 4x4 (docs/bench.md). */
#if CPU_LEVEL_LANES == 4 && !defined(__clang__)
#define K_BLOCK 4
CPU_VEC_INLINE void CPU_LEVEL(transpose)(CPU_LEVEL(vw) *x) {
    CPU_LEVEL(vw) t0 = __builtin_shufflevector(x[0], x[1], 0, 4, 1, 5),
                  t1 = __builtin_shufflevector(x[0], x[1], 2, 6, 3, 7),
                  t2 = __builtin_shufflevector(x[2], x[3], 0, 4, 1, 5),
                  t3 = __builtin_shufflevector(x[2], x[3], 2, 6, 3, 7);
    x[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    x[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    x[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    x[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}
#define K_VEC CPU_LEVEL(vw)
#define K_LOAD(p, dt) CPU_LEVEL(load_wide)(p, dt)
#define K_PUT(p, x) CPU_LEVEL(put)(p, x)
#else
#define K_BLOCK CPU_LANES
#define K_VEC cpu_vf
#define K_LOAD(p, dt) CPU_LEVEL(load)(p, dt)
#define K_PUT(p, x) CPU_LEVEL(put8)(p, x)
CPU_VEC_INLINE void CPU_LEVEL(transpose)(cpu_vf *x) { transpose8(x); }
#endif
CPU_VEC_INLINE void CPU_LEVEL(load_tile)(const unsigned char *k, const size_t *off, size_t d,
                                         fkv_dtype dt, const size_t *next, size_t n_next,
                                         float *kt) {
    size_t es = fkv_dtype_size(dt);
    for (size_t g = 0; g < CPU_TILE; g += K_BLOCK) {
        if (g < n_next && g % CPU_LANES == 0)
            prefetch_rows(k, next + g, n_next - g < CPU_LANES ? n_next - g : CPU_LANES, d * es);
        size_t c0 = 0;
        for (; c0 + K_BLOCK <= d; c0 += K_BLOCK) {
            K_VEC x[K_BLOCK];
            UNROLL
            for (int j = 0; j < K_BLOCK; j++)
                x[j] = K_LOAD(k + off[g + j] + c0 * es, dt);
            CPU_LEVEL(transpose)(x);
            UNROLL
            for (int c = 0; c < K_BLOCK; c++)
                K_PUT(kt + (c0 + c) * CPU_TILE + g, x[c]);
        }
        for (; c0 < d; c0++) {
            UNROLL
            for (int j = 0; j < K_BLOCK; j++)
                kt[c0 * CPU_TILE + g + j] = fkv_load(k + off[g + j], dt, c0);
        }
    }
}
#undef K_BLOCK
#undef K_VEC
#undef K_LOAD
#undef K_PUT
