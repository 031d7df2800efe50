/* freekv HIP kernels and their C launchers (hip_kernels.h).
 *
 * The same algorithms as opencl/kernels.cl, one source for AMD (hipcc) and NVIDIA (nvcc with
 * hip_cuda_compat.h). The storage dtype is a template parameter (all three are compiled in);
 * arithmetic is f32 throughout and conversions are bit-identical to common/dtype.h
 * (hip_dtype.h). Every kernel bounds-checks the indices it reads from device buffers, so a bad
 * index skips work instead of writing outside a buffer. No kernel assumes a wavefront/warp
 * size: reductions go through shared memory and __syncthreads. */
#include "hip_platform.h"

#include "hip_dtype.h"
#include "hip_kernels.h"

/* ---- KV storage types ---- */

struct kv_f32 {
    typedef float store_t;
    static __device__ float load(const void *p, size_t i) { return ((const float *)p)[i]; }
    static __device__ void store(void *p, size_t i, float v) { ((float *)p)[i] = v; }
};
struct kv_f16 {
    typedef uint16_t store_t;
    static __device__ float load(const void *p, size_t i) {
        return fkv_hip_f16_to_f32(((const uint16_t *)p)[i]);
    }
    static __device__ void store(void *p, size_t i, float v) {
        ((uint16_t *)p)[i] = fkv_hip_f32_to_f16(v);
    }
};
struct kv_bf16 {
    typedef uint16_t store_t;
    static __device__ float load(const void *p, size_t i) {
        return fkv_hip_bf16_to_f32(((const uint16_t *)p)[i]);
    }
    static __device__ void store(void *p, size_t i, float v) {
        ((uint16_t *)p)[i] = fkv_hip_f32_to_bf16(v);
    }
};

/* The word of the layout moves: bits only, never values. 16 bytes when rows and offsets are
 * 16-byte aligned (one 128-bit load/store), else one element. */
struct alignas(16) word16 {
    uint32_t v[4];
};

static __device__ inline size_t global_id_x() {
    return (size_t)blockIdx.x * blockDim.x + threadIdx.x;
}

/* ---- append, summarize ---- */

template <class K>
__global__ void __launch_bounds__(FKV_HIP_BLOCK) k_append(fkv_hip_append_args a) {
    size_t gid = global_id_x();
    size_t i = gid / a.row_elems, j = gid % a.row_elems;
    if (i >= a.n_rows)
        return;
    int32_t row = a.rows[i];
    if (row < 0 || (uint32_t)row >= a.pool_rows)
        return;
    size_t dst = (size_t)row * a.row_elems + j;
    K::store(a.kpool, dst, a.k_src[gid]);
    K::store(a.vpool, dst, a.v_src[gid]);
}

/* One thread per (page i, KV head, channel): min and max over the page's tokens, as f32 or
 * (summ_f16) f16 rounded down (min) and up (max). */
template <class K>
__global__ void __launch_bounds__(FKV_HIP_BLOCK) k_summarize(fkv_hip_summarize_args a) {
    size_t gid = global_id_x();
    size_t row_elems = (size_t)a.n_kv_heads * a.head_dim;
    size_t i = gid / row_elems, r = gid % row_elems;
    if (i >= a.n_pages)
        return;
    int32_t gslot = a.pages[2 * i], s = a.pages[2 * i + 1];
    if (gslot < 0 || (uint32_t)gslot >= a.n_slots || s < 0 || (uint32_t)s >= a.n_summaries)
        return;
    float mn = INFINITY, mx = -INFINITY;
    size_t base = (size_t)gslot * a.page_size * row_elems + r;
    for (uint32_t t = 0; t < a.page_size; t++) {
        float v = K::load(a.kpool, base + t * row_elems);
        mn = fminf(mn, v);
        mx = fmaxf(mx, v);
    }
    size_t h = r / a.head_dim, c = r % a.head_dim;
    size_t o = ((size_t)s * a.n_kv_heads + h) * 2 * a.head_dim + c;
    if (a.summ_f16) {
        ((uint16_t *)a.summaries)[o] = fkv_hip_f16_bits_round_down(mn);
        ((uint16_t *)a.summaries)[o + a.head_dim] = fkv_hip_f16_bits_round_up(mx);
    } else {
        ((float *)a.summaries)[o] = mn;
        ((float *)a.summaries)[o + a.head_dim] = mx;
    }
}

/* ---- scores, cosine ---- */

#define SCORE_PAGES 4 /* pages a thread scores per pass */

/* A summary element as f32: f32 as is, f16 (its bits) widened exactly. */
__device__ inline float summ_f32(float x) { return x; }
__device__ inline float summ_f32(uint16_t h) { return fkv_hip_f16_to_f32(h); }

/* Quest bound of the query heads of one KV head in one pass over each summary: the pass's heads
 * are FKV_HIP_SCORE_LANES lanes in registers (a summary is read once per 8 query heads of its
 * group), each lane's sum runs over the channels in order (the CPU reference's order), and a
 * thread scores SCORE_PAGES consecutive pages per pass. qs holds the queries transposed,
 * [channel][head], then FKV_HIP_SCORES_PAD floats the last channel's lanes reach (lanes beyond the
 * block's heads are computed and dropped). Block x = (sequence, KV head, block of `heads`
 * query heads: the group in several blocks when its queries do not fit shared memory at
 * once); the blocks along y stride over its pages. f16 summaries (summ_f16) are widened
 * exactly, so their scores are bit for bit those of f32 summaries holding the same values. */
template <class S>
__device__ void score_channels(const S *summ, const size_t mn[SCORE_PAGES], const float *qs,
                               uint32_t d, uint32_t ng_all, uint32_t g0,
                               float acc[SCORE_PAGES][FKV_HIP_SCORE_LANES]) {
    for (uint32_t c = 0; c < d; c++) {
        float x[FKV_HIP_SCORE_LANES];
        for (uint32_t k = 0; k < FKV_HIP_SCORE_LANES; k++)
            x[k] = qs[(size_t)c * ng_all + g0 + k];
        for (uint32_t p = 0; p < SCORE_PAGES; p++) {
            float lo = summ_f32(summ[mn[p] + c]), hi = summ_f32(summ[mn[p] + d + c]);
            for (uint32_t k = 0; k < FKV_HIP_SCORE_LANES; k++)
                acc[p][k] += fmaxf(x[k] * hi, x[k] * lo);
        }
    }
}

/* The scores of block x (sequence, KV head, head block) (k_scores, k_scores_check). */
__device__ static void scores_block(const fkv_hip_scores_args &a, float *qs) {
    uint32_t n_blocks = (a.group + a.heads - 1) / a.heads;
    uint32_t bh = blockIdx.x / n_blocks, hb = (blockIdx.x % n_blocks) * a.heads;
    uint32_t b = bh / a.n_kv_heads, h = bh % a.n_kv_heads;
    const int32_t *db = a.desc + 4 * (size_t)b;
    int32_t row = db[3];
    /* a masked pair or a row beyond the queries does nothing (no return before the barrier) */
    bool ok = row >= 0 && (uint64_t)row < a.q_rows && a.n_summaries > 0 &&
              (!a.mask || a.mask[bh] != 0);
    uint32_t ng_all = a.group - hb < a.heads ? a.group - hb : a.heads;
    uint32_t gd = ng_all * a.head_dim, d = a.head_dim;
    const float *qb = a.q + (((size_t)(ok ? row : 0) * a.n_kv_heads + h) * a.group + hb) * d;
    for (uint32_t i = threadIdx.x; i < gd + FKV_HIP_SCORES_PAD; i += blockDim.x)
        qs[i] = ok && i < gd ? qb[(size_t)(i % ng_all) * d + i / ng_all] : 0.0f;
    __syncthreads();
    int32_t base = db[0], n_pages = ok ? db[1] : 0;
    int64_t obase = db[2];
    size_t np = n_pages > 0 ? (size_t)n_pages : 0;
    size_t stride = (size_t)gridDim.y * blockDim.x * SCORE_PAGES;
    for (size_t j0 = ((size_t)blockIdx.y * blockDim.x + threadIdx.x) * SCORE_PAGES; j0 < np;
         j0 += stride) {
        /* pages beyond the sequence or the summaries read a valid one and are dropped */
        size_t mn[SCORE_PAGES]; /* element of each page's minima */
        bool valid[SCORE_PAGES];
        for (uint32_t p = 0; p < SCORE_PAGES; p++) {
            int64_t sidx = (int64_t)base + (int64_t)(j0 + p);
            valid[p] = j0 + p < np && sidx >= 0 && sidx < (int64_t)a.n_summaries;
            mn[p] = ((size_t)(valid[p] ? sidx : 0) * a.n_kv_heads + h) * 2 * d;
        }
        for (uint32_t g0 = 0; g0 < ng_all; g0 += FKV_HIP_SCORE_LANES) {
            float acc[SCORE_PAGES][FKV_HIP_SCORE_LANES];
            for (uint32_t p = 0; p < SCORE_PAGES; p++)
                for (uint32_t k = 0; k < FKV_HIP_SCORE_LANES; k++)
                    acc[p][k] = 0.0f;
            if (a.summ_f16)
                score_channels((const uint16_t *)a.summaries, mn, qs, d, ng_all, g0, acc);
            else
                score_channels((const float *)a.summaries, mn, qs, d, ng_all, g0, acc);
            uint32_t ng = ng_all - g0 < FKV_HIP_SCORE_LANES ? ng_all - g0 : FKV_HIP_SCORE_LANES;
            for (uint32_t p = 0; p < SCORE_PAGES; p++)
                for (uint32_t k = 0; k < ng && valid[p]; k++) {
                    int64_t o = obase + (int64_t)(h * a.group + hb + g0 + k) * n_pages +
                                (int64_t)(j0 + p);
                    if (o >= 0 && (uint64_t)o < a.out_len)
                        a.out[o] = acc[p][k];
                }
        }
    }
}

__global__ void __launch_bounds__(FKV_HIP_SMALL_BLOCK) k_scores(fkv_hip_scores_args a) {
    extern __shared__ float qs[]; /* [heads * head_dim + FKV_HIP_SCORES_PAD] */
    scores_block(a, qs);
}

/* ---- select_pages (backend.h): group reduction and top-k; the algorithm of
 * opencl/kernels.cl fkv_select_pages ---- */

/* An unsigned key in the order of the floats (no NaN reaches it). */
__device__ static uint32_t order_key(float v) {
    uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Exclusive prefix sum of x over the block (FKV_HIP_SELECT_BLOCK threads); *total: the sum. */
__device__ static uint32_t block_scan(uint32_t *t, uint32_t lid, uint32_t x, uint32_t *total) {
    const uint32_t w = FKV_HIP_SELECT_BLOCK;
    t[lid] = x;
    __syncthreads();
    for (uint32_t off = 1; off < w; off <<= 1) {
        uint32_t y = lid >= off ? t[lid - off] : 0u;
        __syncthreads();
        t[lid] += y;
        __syncthreads();
    }
    *total = t[w - 1];
    uint32_t before = t[lid] - x;
    __syncthreads();
    return before;
}

/* max (sum 0) or sum of x over the block. */
__device__ static float block_fold(float *red, uint32_t lid, float x, int sum) {
    red[lid] = x;
    __syncthreads();
    for (uint32_t s = FKV_HIP_SELECT_BLOCK / 2; s > 0; s /= 2) {
        if (lid < s)
            red[lid] = sum ? red[lid] + red[lid + s]
                           : (red[lid + s] > red[lid] ? red[lid + s] : red[lid]);
        __syncthreads();
    }
    float r = red[0];
    __syncthreads();
    return r;
}

/* One block per (sequence, KV head). Thread l owns pages first + l + t*w in the reduction and
 * the radix select of the k-th value, so the reduced values it writes over row 0 of the group's
 * scores (the op's scratch) are read back only by itself there; then thread l takes the l-th
 * contiguous range of the candidates and writes its pages, placed by two block scans, so the
 * records come out in page order. */
__global__ void __launch_bounds__(FKV_HIP_SELECT_BLOCK) k_select_pages(fkv_hip_select_args a) {
    __shared__ float red[FKV_HIP_SELECT_BLOCK];
    __shared__ uint32_t scan[FKV_HIP_SELECT_BLOCK];
    __shared__ uint32_t hist[256];
    __shared__ uint32_t res[2];
    const uint32_t w = FKV_HIP_SELECT_BLOCK;
    uint32_t bh = blockIdx.x, lid = threadIdx.x;
    uint32_t b = bh / a.n_kv_heads, h = bh % a.n_kv_heads;
    int32_t *pages = a.out + (size_t)bh * 2 * a.k;
    float *vals = (float *)(pages + a.k);
    int32_t np = a.desc[4 * (size_t)b + 1];
    int64_t base = a.desc[4 * (size_t)b + 2];
    uint64_t hq = (uint64_t)a.n_kv_heads * a.group;
    bool ok = np >= 0 && base >= 0 &&
              (uint64_t)base + hq * (uint64_t)(np > 0 ? np : 0) <= a.scores_len;
    bool skip = a.mask && a.mask[bh] == 0; /* a masked pair: no work, no record */
    uint32_t n_cand = ok && !skip && np > (int32_t)a.first ? (uint32_t)np - a.first : 0u;
    uint32_t kk = n_cand < a.k ? n_cand : a.k;
    for (uint32_t i = kk + lid; i < a.k && !skip; i += w) {
        pages[i] = -1;
        vals[i] = -INFINITY;
    }
    if (kk == 0)
        return;
    uint32_t n = (uint32_t)np;
    float *row0 = a.scores + base + (size_t)h * a.group * n;
    for (uint32_t r = 0; r < a.group; r++) {
        float *s = row0 + (size_t)r * n;
        float m = -INFINITY, sum = 0.0f;
        if (a.reduce == 0) { /* each exp is kept in the row (scratch) for the accumulation */
            float pm = -INFINITY, ps = 0.0f;
            for (uint32_t j = a.first + lid; j < n; j += w)
                pm = s[j] > pm ? s[j] : pm;
            m = block_fold(red, lid, pm, 0);
            for (uint32_t j = a.first + lid; j < n; j += w) {
                s[j] = expf((s[j] - m) * a.temp_scale);
                ps += s[j];
            }
            sum = block_fold(red, lid, ps, 1);
        }
        for (uint32_t j = a.first + lid; j < n; j += w) {
            float x = s[j], acc = r == 0 ? (a.reduce == 2 ? -INFINITY : 0.0f) : row0[j];
            if (a.reduce == 0)
                acc += x / sum / (float)a.group;
            else if (a.reduce == 1)
                acc += x / (float)a.group;
            else
                acc = x > acc ? x : acc;
            if (r + 1 == a.group) /* NaN ranks last; -0 ties +0 */
                acc = isnan(acc) ? -INFINITY : (acc == 0.0f ? 0.0f : acc);
            row0[j] = acc;
        }
    }
    uint32_t prefix = 0, mask = 0, rem = kk;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (uint32_t i = lid; i < 256; i += w)
            hist[i] = 0;
        __syncthreads();
        for (uint32_t j = a.first + lid; j < n; j += w) {
            uint32_t key = order_key(row0[j]);
            if ((key & mask) == prefix)
                atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (lid == 0) {
            uint32_t bin = 255, above = 0;
            while (above + hist[bin] < rem)
                above += hist[bin--];
            res[0] = bin;
            res[1] = rem - above;
        }
        __syncthreads();
        prefix |= res[0] << shift;
        rem = res[1];
        mask |= 255u << shift;
        __syncthreads();
    }
    __syncthreads(); /* every thread's reduced values, for the ranges below */
    uint32_t chunk = (n_cand + w - 1) / w;
    uint32_t lo = a.first + (lid * chunk < n_cand ? lid * chunk : n_cand);
    uint32_t hi = a.first + ((lid + 1) * chunk < n_cand ? (lid + 1) * chunk : n_cand);
    uint32_t above = 0, equal = 0, total;
    for (uint32_t j = lo; j < hi; j++) {
        uint32_t key = order_key(row0[j]);
        above += key > prefix;
        equal += key == prefix;
    }
    uint32_t eq_before = block_scan(scan, lid, equal, &total);
    /* the lowest pages equal to the k-th value first */
    uint32_t take = eq_before < rem ? (equal < rem - eq_before ? equal : rem - eq_before) : 0;
    uint32_t at = block_scan(scan, lid, above + take, &total);
    for (uint32_t j = lo; j < hi; j++) {
        float v = row0[j];
        uint32_t key = order_key(v);
        if (key > prefix || (key == prefix && take > 0)) {
            take -= key == prefix;
            pages[at] = (int32_t)j;
            vals[at++] = v;
        }
    }
}

/* The correction's check of KV head bh = (sequence, KV head) (backend.h cosine_flags): the
 * mean over its group of the cosine of its queries in q_cur (rows of sequences) and in row
 * prev_rows[seq] of q_prev: negative, none (NaN, flagged); beyond prev_count, skipped (nothing
 * written). Only an exactly zero norm gives cosine 0: a NaN norm reaches the mean and the flag.
 * Each sum runs over the block's w threads (a power of two; thread l takes channels l, l + w,
 * ...) and a tree in red (3w floats); k_cosine and k_scores_check both run it in blocks of
 * FKV_HIP_SMALL_BLOCK, so they compute the same bits. Every thread calls it (barriers). */
__device__ static void check_pair(const fkv_hip_cosine_args &a, uint32_t bh, float *red) {
    uint32_t lid = threadIdx.x, w = blockDim.x;
    uint32_t seq = bh / a.n_kv_heads, h = bh % a.n_kv_heads;
    int32_t row = a.prev_rows[seq];
    /* no return before a barrier: a missing or bad row runs no head of the group */
    uint32_t n_heads = row >= 0 && (uint64_t)row < a.prev_count ? a.group : 0;
    size_t base = (size_t)bh * a.group * a.head_dim;
    size_t pbase = ((size_t)(n_heads ? row : 0) * a.n_kv_heads + h) * a.group * a.head_dim;
    float mean = row < 0 ? __int_as_float(0x7fc00000) : 0.0f;
    for (uint32_t g = 0; g < n_heads; g++) {
        const float *x = a.q_cur + base + (size_t)g * a.head_dim;
        const float *y = a.q_prev + pbase + (size_t)g * a.head_dim;
        float ab = 0.0f, aa = 0.0f, bb = 0.0f;
        for (uint32_t c = lid; c < a.head_dim; c += w) {
            float xv = x[c], yv = y[c];
            ab += xv * yv;
            aa += xv * xv;
            bb += yv * yv;
        }
        red[lid] = ab;
        red[w + lid] = aa;
        red[2 * w + lid] = bb;
        __syncthreads();
        for (uint32_t s = w / 2; s > 0; s /= 2) {
            if (lid < s) {
                red[lid] += red[lid + s];
                red[w + lid] += red[w + lid + s];
                red[2 * w + lid] += red[2 * w + lid + s];
            }
            __syncthreads();
        }
        if (lid == 0) {
            float na = sqrtf(red[w]), nb = sqrtf(red[2 * w]);
            mean += (na == 0.0f || nb == 0.0f) ? 0.0f : red[0] / (na * nb);
        }
        __syncthreads(); /* red is reused by the next head (and by k_scores_check's queries) */
    }
    if (lid == 0 && (n_heads || row < 0)) {
        mean /= (float)a.group;
        a.sims[bh] = mean;
        a.flags[bh] = !(mean >= a.tau); /* a NaN similarity is corrected */
    }
}

/* One block per (sequence, KV head). Dynamic shared: 3 * blockDim.x floats. */
__global__ void __launch_bounds__(FKV_HIP_SMALL_BLOCK) k_cosine(fkv_hip_cosine_args a) {
    extern __shared__ float red[];
    check_pair(a, blockIdx.x, red);
}

/* scores_check (backend.h): k_scores' grid (c.q_cur and c.q_prev point into s.q's buffer, no
 * mask), and the first block of each (sequence, KV head) (head block 0, y 0) first runs
 * k_cosine's check of it in the queries' shared memory (at least 3 * blockDim.x floats). */
__global__ void __launch_bounds__(FKV_HIP_SMALL_BLOCK)
    k_scores_check(fkv_hip_scores_args s, fkv_hip_cosine_args c) {
    extern __shared__ float qs[];
    uint32_t n_blocks = (s.group + s.heads - 1) / s.heads;
    if (blockIdx.y == 0 && blockIdx.x % n_blocks == 0) /* the whole block */
        check_pair(c, blockIdx.x / n_blocks, qs);
    scores_block(s, qs);
}

/* ---- layout moves: blockDim (words within a row, rows), rows along grid x ---- */

static __device__ inline bool move_coords(uint32_t row_words, size_t *w, size_t *row) {
    *w = (size_t)blockIdx.y * blockDim.x + threadIdx.x;
    *row = (size_t)blockIdx.x * blockDim.y + threadIdx.y;
    return *w < row_words;
}

/* NHD -> HND: page gslots[i] into dst page i as [n_kv_heads][K|V][p][d]. */
template <class W>
__global__ void __launch_bounds__(FKV_HIP_BLOCK) k_pack(fkv_hip_pack_args a) {
    size_t w, row;
    if (!move_coords(a.row_words, &w, &row))
        return;
    size_t rows_per_page = 2 * (size_t)a.page_size * a.n_kv_heads;
    size_t i = row / rows_per_page, r = row % rows_per_page;
    if (i >= a.n_pages)
        return;
    int32_t gslot = a.gslots[i];
    if (gslot < 0 || (uint32_t)gslot >= a.n_slots)
        return;
    size_t h = r / (2 * a.page_size), kv = (r / a.page_size) % 2, t = r % a.page_size;
    size_t src = (((size_t)gslot * a.page_size + t) * a.n_kv_heads + h) * a.row_words + w;
    const W *pool = (const W *)(kv ? a.vpool : a.kpool);
    ((W *)a.dst)[row * a.row_words + w] = pool[src];
}

/* Unit i of a scatter or dequantize (fkv_hip_scatter_args): its bytes (unit_bytes of them)
 * and destination (slot, KV head); NULL when the unit is skipped: a zero-copy unit that names
 * no host of the table or lies past its allocation, or a slot or head outside the pool. */
static __device__ const unsigned char *unit_source(const fkv_hip_scatter_args &a, size_t i,
                                                   uint64_t unit_bytes, int32_t *slot,
                                                   int32_t *h) {
    const unsigned char *unit;
    if (a.host_words == nullptr) {
        *slot = a.units[2 * i];
        *h = a.units[2 * i + 1];
        unit = (const unsigned char *)a.src + i * unit_bytes;
    } else {
        const int32_t *u = a.units + 4 * i;
        uint32_t j = (uint32_t)u[2];
        if (j >= a.n_hosts)
            return nullptr;
        const int32_t *hw = a.host_words + 4 * (size_t)j;
        uint64_t ptr = (uint64_t)(uint32_t)hw[0] | (uint64_t)(uint32_t)hw[1] << 32;
        uint64_t size = (uint64_t)(uint32_t)hw[2] | (uint64_t)(uint32_t)hw[3] << 32;
        uint64_t off = (uint64_t)(uint32_t)u[3] * a.elem_bytes;
        if (off > size || unit_bytes > size - off)
            return nullptr;
        *slot = u[0];
        *h = u[1];
        unit = (const unsigned char *)(uintptr_t)ptr + off;
    }
    bool inside = *slot >= 0 && (uint32_t)*slot < a.n_slots && *h >= 0 &&
                  (uint32_t)*h < a.n_kv_heads;
    return inside ? unit : nullptr;
}

/* HND -> NHD: unit i ([K|V][p][d]) into its KV head of its slot, read where unit_source
 * says (staged: src + i * unit size; zero-copy recall: mapped host memory). */
template <class W>
__global__ void __launch_bounds__(FKV_HIP_BLOCK) k_scatter(fkv_hip_scatter_args a) {
    size_t w, row;
    if (!move_coords(a.row_words, &w, &row))
        return;
    size_t i = row / (2 * (size_t)a.page_size), r = row % (2 * (size_t)a.page_size);
    if (i >= a.n_units)
        return;
    int32_t slot, h;
    const W *unit = (const W *)unit_source(
        a, i, 2 * (uint64_t)a.page_size * a.row_words * sizeof(W), &slot, &h);
    if (unit == nullptr)
        return;
    size_t kv = r / a.page_size, t = r % a.page_size;
    size_t dst = (((size_t)slot * a.page_size + t) * a.n_kv_heads + h) * a.row_words + w;
    W x = unit[r * a.row_words + w];
    ((W *)(kv ? a.vpool : a.kpool))[dst] = x;
}

/* ---- quantized host formats (common/hostfmt.h; the same code as opencl/kernels.cl) ----
 * The f16 directed roundings and the f32 division by L are integer code, so scales and zeros
 * are the reference's bits whatever the compiler's division and rounding modes do. */

/* The f16 scale: RNE(a / levels) in f32 rounded up to f16, a = hi - zero >= 0. */
static __device__ uint32_t quant_scale(float a, uint32_t levels) {
    uint32_t u = fkv_hip_f32_bits(a);
    if (u >= 0x7f800000u)
        return u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    if (u < 0x33800000u) /* a < 2^-24: the quotient rounds up to 2^-24 unless it is 0 */
        return u >= 0x00800000u || 2u * u > levels ? 1u : 0u;
    uint32_t n = ((u & 0x7fffffu) | 0x800000u) << 8, q = n / levels, rem = n % levels;
    uint32_t sh = 8u - (uint32_t)__clz(q); /* q has 24 + sh bits */
    uint32_t kept = q >> sh, low = q & ((1u << sh) - 1u);
    uint32_t twice = 2u * (low * levels + rem), tie = levels << sh;
    if (twice > tie || (twice == tie && (kept & 1u)))
        kept++;
    return fkv_hip_f16_quant_directed((((u >> 23) - 8u + sh) << 23) + kept - 0x800000u, 1u);
}

static __device__ uint32_t quant_code(float x, float zero, float scale, uint32_t levels) {
    if (!(scale > 0.0f))
        return 0u;
    float q = rintf((x - zero) / scale);
    return !(q > 0.0f) ? 0u : q >= (float)levels ? levels : (uint32_t)q;
}

/* One block per (page i, KV head h) unit: the D key channel and P value token groups' f16
 * zero and scale (dynamic shared zs: zero of group g at zs[g], scale at zs[D + P + g]), then
 * the codes, one thread per quad of channels of one token of K or V (D is a multiple of 4; a
 * q4 byte holds two channels of one quad), as opencl/kernels.cl fkv_quant_pack. */
template <class K>
__global__ void __launch_bounds__(FKV_HIP_BLOCK) k_quant_pack(fkv_hip_quant_args a) {
    extern __shared__ float zs[];
    uint32_t lid = threadIdx.x, w = blockDim.x, unit = blockIdx.x;
    uint32_t i = unit / a.n_kv_heads, h = unit % a.n_kv_heads, levels = (1u << a.bits) - 1u;
    int32_t gslot = a.gslots[i];
    if (gslot < 0 || (uint32_t)gslot >= a.n_slots)
        return; /* uniform over the block */
    size_t d = a.head_dim, p = a.page_size, re = (size_t)a.n_kv_heads * d, pd = p * d;
    size_t first = (size_t)gslot * p * re + (size_t)h * d, codes = pd * a.bits / 8, ng = d + p;
    unsigned char *out = a.dst + (size_t)unit * a.unit_bytes;
    for (uint32_t g = lid; g < a.head_dim + a.page_size; g += w) {
        bool key = g < a.head_dim;
        const void *pool = key ? a.kpool : a.vpool;
        size_t at = key ? first + g : first + (g - a.head_dim) * re;
        size_t n = key ? p : d, step = key ? re : 1;
        float lo = INFINITY, hi = -INFINITY;
        bool nonfinite = false;
        for (size_t j = 0; j < n; j++) {
            float x = K::load(pool, at + j * step);
            nonfinite = nonfinite || (fkv_hip_f32_bits(x) & 0x7f800000u) == 0x7f800000u;
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
        uint32_t z = fkv_hip_f16_quant_directed(fkv_hip_f32_bits(lo), 0u);
        uint32_t s = quant_scale(hi - fkv_hip_f16_to_f32((uint16_t)z), levels);
        if (nonfinite || (z & 0x7c00u) == 0x7c00u || (s & 0x7c00u) == 0x7c00u)
            z = s = 0x7e00u;
        size_t sa = 2 * codes + (key ? 2 * (size_t)g : 4 * d + 2 * (size_t)(g - a.head_dim));
        size_t za = sa + (key ? 2 * d : 2 * p);
        out[sa] = (unsigned char)s, out[sa + 1] = (unsigned char)(s >> 8);
        out[za] = (unsigned char)z, out[za + 1] = (unsigned char)(z >> 8);
        zs[g] = fkv_hip_f16_to_f32((uint16_t)z);
        zs[ng + g] = fkv_hip_f16_to_f32((uint16_t)s);
    }
    __syncthreads();
    uint32_t quads = a.head_dim / 4;
    for (uint32_t r = lid; r < 2 * a.page_size * quads; r += w) {
        uint32_t kv = r / (a.page_size * quads), t = r / quads % a.page_size, c0 = r % quads * 4;
        const void *pool = kv ? a.vpool : a.kpool;
        uint32_t q[4];
#pragma unroll
        for (uint32_t l = 0; l < 4; l++) {
            size_t g = kv ? d + t : c0 + l;
            q[l] = quant_code(K::load(pool, first + t * re + c0 + l), zs[g], zs[ng + g], levels);
        }
        unsigned char *cb = out + kv * codes + ((size_t)t * d + c0) * a.bits / 8;
        if (a.bits == 8) {
#pragma unroll
            for (uint32_t l = 0; l < 4; l++)
                cb[l] = (unsigned char)q[l];
        } else {
            cb[0] = (unsigned char)(q[0] | q[1] << 4);
            cb[1] = (unsigned char)(q[2] | q[3] << 4);
        }
    }
}

/* One thread per quad of channels of K or V of a unit (staged: src; zero-copy: the table, as
 * k_scatter), over the unit's P tokens, as opencl/kernels.cl fkv_dequant_item: a key quad
 * decodes its four scales and zeros once, a value quad one pair per token. */
template <class K>
__global__ void __launch_bounds__(FKV_HIP_BLOCK) k_dequant(fkv_hip_scatter_args a) {
    size_t gid = global_id_x(), d = a.head_dim, p = a.page_size, quads = d / 4;
    size_t i = gid / (2 * quads), r = gid % (2 * quads);
    if (i >= a.n_units)
        return;
    size_t codes = p * d * a.bits / 8, unit_bytes = 2 * codes + 4 * (d + p);
    int32_t slot, h;
    const unsigned char *unit = unit_source(a, i, unit_bytes, &slot, &h);
    if (unit == nullptr)
        return;
    size_t kv = r >= quads, c0 = (r - kv * quads) * 4;
    const unsigned char *cb = unit + kv * codes;
    /* this half's scales, its zeros zstep bytes on */
    const unsigned char *sa = unit + 2 * codes + kv * 4 * d;
    size_t zstep = kv ? 2 * p : 2 * d;
    float s[4] = {0, 0, 0, 0}, z[4] = {0, 0, 0, 0};
    if (!kv) {
#pragma unroll
        for (uint32_t l = 0; l < 4; l++) {
            const unsigned char *at = sa + 2 * (c0 + l);
            s[l] = fkv_hip_f16_to_f32((uint16_t)(at[0] | at[1] << 8));
            z[l] = fkv_hip_f16_to_f32((uint16_t)(at[zstep] | at[zstep + 1] << 8));
        }
    }
    void *pool = kv ? a.vpool : a.kpool;
    size_t dst = ((size_t)slot * p * a.n_kv_heads + h) * d + c0, stride = a.n_kv_heads * d;
    for (size_t t = 0; t < p; t++, dst += stride) {
        if (kv) {
            const unsigned char *at = sa + 2 * t;
            float st = fkv_hip_f16_to_f32((uint16_t)(at[0] | at[1] << 8));
            float zt = fkv_hip_f16_to_f32((uint16_t)(at[zstep] | at[zstep + 1] << 8));
#pragma unroll
            for (uint32_t l = 0; l < 4; l++)
                s[l] = st, z[l] = zt;
        }
        size_t e = t * d + c0;
        uint32_t code[4];
        if (a.bits == 8) {
#pragma unroll
            for (uint32_t l = 0; l < 4; l++)
                code[l] = cb[e + l];
        } else {
            uint32_t b0 = cb[e / 2], b1 = cb[e / 2 + 1];
            code[0] = b0 & 0xfu, code[1] = b0 >> 4, code[2] = b1 & 0xfu, code[3] = b1 >> 4;
        }
#pragma unroll
        for (uint32_t l = 0; l < 4; l++) /* exact: the product needs no rounding */
            K::store(pool, dst + l, fmaf(s[l], (float)code[l], z[l]));
    }
}

/* ---- attention ---- */

/* Query heads a block serves at most (FKV_ATTENTION_MAX_HEADS): accumulators in registers. */
#define ATTN_HEADS 8

/* n (1..4) elements of a pool from i into x[0..4), zeros after them. */
template <class K>
static __device__ inline void load4(const void *p, size_t i, uint32_t n, float *x) {
#pragma unroll
    for (uint32_t j = 0; j < 4; j++)
        x[j] = j < n ? K::load(p, i + j) : 0.0f;
}

/* Channel c of one query head's output from its n_splits partials at p, `stride` floats apart
 * ((max, sum, unnormalised acc[d]) each): the split attention's combination, run by
 * k_attention_reduce or by k_attention's last block (the same bits either way). */
__device__ static float combine_splits(const float *p, size_t stride, uint32_t n_splits,
                                       uint32_t c) {
    float m = -INFINITY;
    for (uint32_t s = 0; s < n_splits; s++)
        m = fmaxf(m, p[s * stride]);
    float l = 0.0f, x = 0.0f;
    if (m != -INFINITY) {
        for (uint32_t s = 0; s < n_splits; s++) {
            float ms = p[s * stride];
            if (ms == -INFINITY)
                continue; /* an empty split */
            float wgt = expf(ms - m);
            l += p[s * stride + 1] * wgt;
            x += p[s * stride + 2 + c] * wgt;
        }
    }
    return l > 0.0f ? x / l : 0.0f;
}

/* Paged decode attention with GQA, as fkv_attention in opencl/kernels.cl (the same algorithm,
 * four channels a thread): one block per (sequence, KV head, block of `heads` query heads,
 * split) serves the block's query heads (the whole group in one block up to 8 heads when
 * shared memory allows: backends/launch.c); tiles of up to `tile` tokens of one page. Thread
 * i owns channels [4i, 4i + 4) of a row (dq = head_dim rounded up to 16, zeros past
 * head_dim): it copies them from each K row of the tile into shared memory; thread i then
 * sums q.k of tokens i, i + w, ... for every head of the block; one thread per head takes the
 * online
 * softmax of the tile; thread i accumulates its channels of every head of the block in
 * registers from each V row of the tile. The block has w = max(dq / 4, heads) threads
 * (fkv_attention_threads). Dynamic shared memory (fkv_attention_floats), tp = tile rounded up
 * to 16: qs [heads*dq]; kt [tile*(dq+4)] (padded against bank conflicts); sc [heads*tp];
 * st [3*heads] = running max, running sum, rescale factor. */
template <class K>
__global__ void __launch_bounds__(FKV_HIP_ATTENTION_BLOCK) k_attention(fkv_hip_attention_args a) {
    extern __shared__ float smem[];
    const uint32_t lid = threadIdx.x, w = blockDim.x, H = a.heads;
    const uint32_t n_blocks = (a.group + H - 1) / H, per_bh = n_blocks * a.n_splits;
    const uint32_t bh = blockIdx.x / per_bh, split = blockIdx.x % a.n_splits;
    const uint32_t g_first = (blockIdx.x % per_bh) / a.n_splits * H;
    const uint32_t G = a.group - g_first < H ? a.group - g_first : H; /* this block's heads */
    const uint32_t h = bh % a.n_kv_heads, tile = a.tile;
    const uint32_t d = a.head_dim, dq = (d + 15) & ~15u, ldk = dq + 4, tp = (tile + 15) & ~15u;
    const uint32_t cv = 4 * lid; /* this thread's channels */
    const size_t row_elems = (size_t)a.n_kv_heads * d;
    float *qs = smem, *kt = qs + (size_t)H * dq, *sc = kt + (size_t)tile * ldk,
          *st = sc + (size_t)H * tp;
    /* query head (b, h*group + g) is row bh*group + g of q and out */
    const size_t qrow = (size_t)bh * a.group + g_first;

    const float *qb = a.q + qrow * d;
    for (uint32_t g = 0; g < G; g++)
        for (uint32_t c = lid; c < dq; c += w)
            qs[g * dq + c] = c < d ? qb[g * d + c] * a.scale : 0.0f;
    for (uint32_t g = lid; g < G; g += w) {
        st[g] = -INFINITY;
        st[G + g] = 0.0f;
        st[2 * G + g] = 1.0f;
    }
    float acc[ATTN_HEADS][4];
#pragma unroll
    for (uint32_t g = 0; g < ATTN_HEADS; g++)
#pragma unroll
        for (uint32_t j = 0; j < 4; j++)
            acc[g][j] = 0.0f;
    int32_t first = 0, count;
    if (a.dense_tokens >= 0) {
        count = (a.dense_tokens + (int32_t)a.page_size - 1) / (int32_t)a.page_size;
    } else {
        first = a.heads_list[2 * (size_t)bh];
        count = a.heads_list[2 * (size_t)bh + 1];
        count = count > 0 ? count : 0;
        /* A list that runs past the entries buffer is cut at its end. */
        if (first < 0 || (uint32_t)first > a.n_entries)
            count = 0;
        else if ((int64_t)count > (int64_t)a.n_entries - first)
            count = (int32_t)((int64_t)a.n_entries - first);
    }
    const int32_t per = (count + (int32_t)a.n_splits - 1) / (int32_t)a.n_splits;
    const int32_t e0 = min((int32_t)split * per, count), e1 = min(e0 + per, count);
    __syncthreads();

    for (int32_t e = e0; e < e1; e++) {
        int32_t gslot, valid;
        if (a.dense_tokens >= 0) {
            gslot = e;
            valid = min((int32_t)a.page_size, a.dense_tokens - e * (int32_t)a.page_size);
        } else {
            gslot = a.entries[2 * (size_t)(first + e)];
            valid = a.entries[2 * (size_t)(first + e) + 1];
        }
        valid = max(0, min(valid, (int32_t)a.page_size));
        if (gslot < 0 || (uint32_t)gslot >= a.n_slots)
            valid = 0; /* uniform over the block: the barriers below stay matched */
        const size_t page_base = (size_t)gslot * a.page_size * row_elems + (size_t)h * d;
        for (int32_t t0 = 0; t0 < valid; t0 += (int32_t)tile) {
            const uint32_t nt = (uint32_t)min((int32_t)tile, valid - t0);
            const size_t tile_base = page_base + (size_t)t0 * row_elems + cv;
            if (cv < dq)
                for (uint32_t t = 0; t < nt; t++) {
                    float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    if (cv < d)
                        load4<K>(a.kpool, tile_base + t * row_elems, min(4u, d - cv), x);
#pragma unroll
                    for (uint32_t j = 0; j < 4; j++)
                        kt[t * ldk + cv + j] = x[j];
                }
            __syncthreads();
            for (uint32_t t = lid; t < nt; t += w) {
                float s[ATTN_HEADS][4];
#pragma unroll
                for (uint32_t g = 0; g < ATTN_HEADS; g++)
#pragma unroll
                    for (uint32_t j = 0; j < 4; j++)
                        s[g][j] = 0.0f;
                const float *kr = kt + t * ldk;
                for (uint32_t c = 0; c < dq; c += 4) {
#pragma unroll
                    for (uint32_t g = 0; g < ATTN_HEADS; g++)
                        if (g < G)
#pragma unroll
                            for (uint32_t j = 0; j < 4; j++)
                                s[g][j] += qs[g * dq + c + j] * kr[c + j];
                }
#pragma unroll
                for (uint32_t g = 0; g < ATTN_HEADS; g++)
                    if (g < G)
                        sc[g * tp + t] = (s[g][0] + s[g][1]) + (s[g][2] + s[g][3]);
            }
            __syncthreads();
            for (uint32_t g = lid; g < G; g += w) {
                float m_old = st[g], m_new = m_old;
                for (uint32_t t = 0; t < nt; t++)
                    m_new = fmaxf(m_new, sc[g * tp + t]);
                float sum = 0.0f;
                for (uint32_t t = 0; t < nt; t++) {
                    float p = expf(sc[g * tp + t] - m_new);
                    sc[g * tp + t] = p;
                    sum += p;
                }
                float alpha = expf(m_old - m_new); /* 0 when nothing was seen yet */
                st[g] = m_new;
                st[G + g] = st[G + g] * alpha + sum;
                st[2 * G + g] = alpha;
            }
            __syncthreads();
            if (cv < d) {
                const uint32_t n = min(4u, d - cv);
#pragma unroll
                for (uint32_t g = 0; g < ATTN_HEADS; g++)
                    if (g < G)
#pragma unroll
                        for (uint32_t j = 0; j < 4; j++)
                            acc[g][j] *= st[2 * G + g];
                for (uint32_t t = 0; t < nt; t++) {
                    float v[4];
                    load4<K>(a.vpool, tile_base + t * row_elems, n, v);
#pragma unroll
                    for (uint32_t g = 0; g < ATTN_HEADS; g++)
                        if (g < G)
#pragma unroll
                            for (uint32_t j = 0; j < 4; j++)
                                acc[g][j] += sc[g * tp + t] * v[j];
                }
            }
            __syncthreads(); /* kt and sc are rewritten by the next tile */
        }
    }

    if (cv < d) {
        const uint32_t n = min(4u, d - cv);
        /* out, or part [bh][split][group][d+2] after (max, sum): this thread's channels of
         * head g at dst + g * stride */
        float *dst = a.n_splits == 1
                         ? a.out + qrow * d + cv
                         : a.part + (((size_t)bh * a.n_splits + split) * a.group + g_first) *
                                        (d + 2) + 2 + cv;
        const size_t stride = a.n_splits == 1 ? d : d + 2;
#pragma unroll
        for (uint32_t g = 0; g < ATTN_HEADS; g++)
            if (g < G) {
                float l = st[G + g];
                for (uint32_t j = 0; j < n; j++)
                    dst[g * stride + j] = a.n_splits > 1 ? acc[g][j]
                                          : l > 0.0f     ? acc[g][j] / l
                                                         : 0.0f;
            }
    }
    if (a.n_splits > 1) {
        float *pb = a.part + (((size_t)bh * a.n_splits + split) * a.group + g_first) * (d + 2);
        for (uint32_t g = lid; g < G; g += w) {
            pb[(size_t)g * (d + 2)] = st[g];
            pb[(size_t)g * (d + 2) + 1] = st[G + g];
        }
    }
    /* fused: the block's last split to finish combines its heads (no second launch): every
     * thread fences its partials, thread 0 counts the arrival, the last block fences again
     * before it reads the others' (the single-pass reduction of the CUDA guide) */
    if (a.arrivals != nullptr && a.n_splits > 1) {
        __shared__ int last;
        __threadfence();
        __syncthreads();
        if (lid == 0) {
            unsigned int *cnt = a.arrivals + blockIdx.x / a.n_splits;
            last = atomicAdd(cnt, 1u) + 1u == a.n_splits;
            if (last)
                atomicExch(cnt, 0u);
        }
        __syncthreads();
        if (last) {
            __threadfence();
            const size_t stride = (size_t)a.group * (d + 2);
            const float *p0 = a.part + ((size_t)bh * a.n_splits * a.group + g_first) * (d + 2);
            for (uint32_t i = lid; i < G * d; i += w)
                a.out[qrow * d + i] =
                    combine_splits(p0 + (size_t)(i / d) * (d + 2), stride, a.n_splits, i % d);
        }
    }
}

/* Combines the split partials of k_attention: one thread per output element. */
__global__ void __launch_bounds__(FKV_HIP_BLOCK)
    k_attention_reduce(const float *part, uint32_t n_bh, uint32_t group, uint32_t head_dim,
                       uint32_t n_splits, float *out) {
    size_t gid = global_id_x();
    size_t gd = (size_t)group * head_dim;
    size_t bh = gid / gd, g = (gid / head_dim) % group, c = gid % head_dim;
    if (bh >= n_bh)
        return;
    size_t stride = (size_t)group * (head_dim + 2);
    out[gid] = combine_splits(part + bh * n_splits * stride + g * (head_dim + 2), stride,
                              n_splits, (uint32_t)c);
}

/* ---- launchers ---- */

static const size_t max_grid_x = 0x7fffffffu;

static size_t div_up(size_t n, size_t m) { return (n + m - 1) / m; }

/* Clears an earlier failed runtime call's error so the launch reports only its own (sticky
 * errors survive the clear and are reported). */
static hipError_t launched() { return hipGetLastError(); }

static hipError_t grid_1d(size_t n, uint32_t block, dim3 *grid) {
    size_t blocks = div_up(n, block);
    if (blocks == 0 || blocks > max_grid_x)
        return hipErrorInvalidValue;
    *grid = dim3((unsigned)blocks);
    return hipSuccess;
}

template <template <class> class F, class... A>
static hipError_t by_dtype(fkv_dtype dt, A... args) {
    switch (dt) {
    case FKV_F16:
        return F<kv_f16>::run(args...);
    case FKV_BF16:
        return F<kv_bf16>::run(args...);
    default:
        return F<kv_f32>::run(args...);
    }
}

template <class K> struct run_append {
    static hipError_t run(hipStream_t s, const fkv_hip_append_args *a) {
        dim3 grid;
        hipError_t e = grid_1d((size_t)a->n_rows * a->row_elems, FKV_HIP_BLOCK, &grid);
        if (e != hipSuccess)
            return e;
        (void)hipGetLastError();
        hipLaunchKernelGGL(k_append<K>, grid, dim3(FKV_HIP_BLOCK), 0, s, *a);
        return launched();
    }
};

extern "C" hipError_t fkv_hip_launch_append(hipStream_t s, fkv_dtype dt,
                                            const fkv_hip_append_args *a) {
    return by_dtype<run_append>(dt, s, a);
}

template <class K> struct run_summarize {
    static hipError_t run(hipStream_t s, const fkv_hip_summarize_args *a) {
        dim3 grid;
        hipError_t e = grid_1d((size_t)a->n_pages * a->n_kv_heads * a->head_dim, FKV_HIP_BLOCK,
                               &grid);
        if (e != hipSuccess)
            return e;
        (void)hipGetLastError();
        hipLaunchKernelGGL(k_summarize<K>, grid, dim3(FKV_HIP_BLOCK), 0, s, *a);
        return launched();
    }
};

extern "C" hipError_t fkv_hip_launch_summarize(hipStream_t s, fkv_dtype dt,
                                               const fkv_hip_summarize_args *a) {
    return by_dtype<run_summarize>(dt, s, a);
}

/* k_scores' grid (blocks x: (sequence, KV head, head block), y: chunks over the pages) and
 * its dynamic shared memory, min_shared bytes at least; false when out of range. */
static bool scores_grid(const fkv_hip_scores_args *a, uint32_t n_bh, uint32_t chunks,
                        size_t min_shared, dim3 *grid, size_t *shared) {
    uint64_t rows = (uint64_t)n_bh * ((a->group + a->heads - 1) / a->heads);
    if (rows == 0 || rows > max_grid_x || chunks == 0 || chunks > 65535)
        return false;
    *grid = dim3((unsigned)rows, chunks);
    *shared = ((size_t)a->heads * a->head_dim + FKV_HIP_SCORES_PAD) * sizeof(float);
    if (*shared < min_shared)
        *shared = min_shared;
    return true;
}

extern "C" hipError_t fkv_hip_launch_scores(hipStream_t s, const fkv_hip_scores_args *a,
                                            uint32_t n_bh, uint32_t chunks) {
    dim3 grid;
    size_t shared;
    if (!scores_grid(a, n_bh, chunks, 0, &grid, &shared))
        return hipErrorInvalidValue;
    (void)hipGetLastError();
    hipLaunchKernelGGL(k_scores, grid, dim3(FKV_HIP_SMALL_BLOCK), shared, s, *a);
    return launched();
}

extern "C" hipError_t fkv_hip_launch_scores_check(hipStream_t s, const fkv_hip_scores_args *a,
                                                  const fkv_hip_cosine_args *c, uint32_t n_bh,
                                                  uint32_t chunks) {
    dim3 grid;
    size_t shared;
    if (!scores_grid(a, n_bh, chunks, 3 * (size_t)FKV_HIP_SMALL_BLOCK * sizeof(float), &grid,
                     &shared))
        return hipErrorInvalidValue;
    (void)hipGetLastError();
    hipLaunchKernelGGL(k_scores_check, grid, dim3(FKV_HIP_SMALL_BLOCK), shared, s, *a, *c);
    return launched();
}

extern "C" hipError_t fkv_hip_launch_cosine(hipStream_t s, const fkv_hip_cosine_args *a,
                                            uint32_t n_bh) {
    if (n_bh == 0 || n_bh > max_grid_x)
        return hipErrorInvalidValue;
    size_t shared = 3 * (size_t)FKV_HIP_SMALL_BLOCK * sizeof(float);
    (void)hipGetLastError();
    hipLaunchKernelGGL(k_cosine, dim3(n_bh), dim3(FKV_HIP_SMALL_BLOCK), shared, s, *a);
    return launched();
}

extern "C" hipError_t fkv_hip_launch_select(hipStream_t s, const fkv_hip_select_args *a,
                                            uint32_t n_bh) {
    if (n_bh == 0 || n_bh > max_grid_x)
        return hipErrorInvalidValue;
    (void)hipGetLastError();
    hipLaunchKernelGGL(k_select_pages, dim3(n_bh), dim3(FKV_HIP_SELECT_BLOCK), 0, s, *a);
    return launched();
}

/* Blocks of (words within a row) x (rows), FKV_HIP_BLOCK threads; rows along grid x. */
static hipError_t move_grid(size_t n_rows, uint32_t row_words, dim3 *grid, dim3 *block) {
    uint32_t l0 = row_words < FKV_HIP_BLOCK ? row_words : FKV_HIP_BLOCK;
    if (l0 == 0)
        return hipErrorInvalidValue;
    uint32_t l1 = FKV_HIP_BLOCK / l0;
    size_t gx = div_up(n_rows, l1), gy = div_up(row_words, l0);
    if (gx == 0 || gx > max_grid_x || gy > 65535)
        return hipErrorInvalidValue;
    *grid = dim3((unsigned)gx, (unsigned)gy);
    *block = dim3(l0, l1);
    return hipSuccess;
}

template <class W> static hipError_t run_pack(hipStream_t s, const fkv_hip_pack_args *a) {
    dim3 grid, block;
    size_t rows = (size_t)a->n_pages * a->n_kv_heads * 2 * a->page_size;
    hipError_t e = move_grid(rows, a->row_words, &grid, &block);
    if (e != hipSuccess)
        return e;
    (void)hipGetLastError();
    hipLaunchKernelGGL(k_pack<W>, grid, block, 0, s, *a);
    return launched();
}

extern "C" hipError_t fkv_hip_launch_pack(hipStream_t s, size_t word_bytes,
                                          const fkv_hip_pack_args *a) {
    switch (word_bytes) {
    case 16:
        return run_pack<word16>(s, a);
    case 4:
        return run_pack<uint32_t>(s, a);
    case 2:
        return run_pack<uint16_t>(s, a);
    default:
        return hipErrorInvalidValue;
    }
}

template <class W> static hipError_t run_scatter(hipStream_t s, const fkv_hip_scatter_args *a) {
    dim3 grid, block;
    size_t rows = (size_t)a->n_units * 2 * a->page_size;
    hipError_t e = move_grid(rows, a->row_words, &grid, &block);
    if (e != hipSuccess)
        return e;
    (void)hipGetLastError();
    hipLaunchKernelGGL(k_scatter<W>, grid, block, 0, s, *a);
    return launched();
}

extern "C" hipError_t fkv_hip_launch_scatter(hipStream_t s, size_t word_bytes,
                                             const fkv_hip_scatter_args *a) {
    switch (word_bytes) {
    case 16:
        return run_scatter<word16>(s, a);
    case 4:
        return run_scatter<uint32_t>(s, a);
    case 2:
        return run_scatter<uint16_t>(s, a);
    default:
        return hipErrorInvalidValue;
    }
}

template <class K> struct run_quant {
    static hipError_t run(hipStream_t s, const fkv_hip_quant_args *a) {
        size_t blocks = (size_t)a->n_pages * a->n_kv_heads;
        if (blocks == 0 || blocks > max_grid_x)
            return hipErrorInvalidValue;
        size_t shared = 2 * ((size_t)a->head_dim + a->page_size) * sizeof(float);
        (void)hipGetLastError();
        hipLaunchKernelGGL(k_quant_pack<K>, dim3((unsigned)blocks), dim3(FKV_HIP_BLOCK), shared,
                           s, *a);
        return launched();
    }
};

extern "C" hipError_t fkv_hip_launch_quant(hipStream_t s, fkv_dtype dt,
                                           const fkv_hip_quant_args *a) {
    return by_dtype<run_quant>(dt, s, a);
}

template <class K> struct run_dequant {
    static hipError_t run(hipStream_t s, const fkv_hip_scatter_args *a) {
        dim3 grid;
        hipError_t e = grid_1d((size_t)a->n_units * 2 * (a->head_dim / 4), FKV_HIP_BLOCK, &grid);
        if (e != hipSuccess)
            return e;
        (void)hipGetLastError();
        hipLaunchKernelGGL(k_dequant<K>, grid, dim3(FKV_HIP_BLOCK), 0, s, *a);
        return launched();
    }
};

extern "C" hipError_t fkv_hip_launch_dequant(hipStream_t s, fkv_dtype dt,
                                             const fkv_hip_scatter_args *a) {
    return by_dtype<run_dequant>(dt, s, a);
}

template <class K> struct run_attention {
    static hipError_t run(hipStream_t s, const fkv_hip_attention_args *a, uint32_t n_bh) {
        size_t blocks = (size_t)n_bh * ((a->group + a->heads - 1) / a->heads) * a->n_splits;
        if (blocks == 0 || blocks > max_grid_x)
            return hipErrorInvalidValue;
        size_t shared = a->shared_bytes;
        (void)hipGetLastError();
        if (a->threads == 0 || a->threads > FKV_HIP_ATTENTION_BLOCK)
            return hipErrorInvalidValue;
        hipLaunchKernelGGL(k_attention<K>, dim3((unsigned)blocks), dim3(a->threads), shared, s,
                           *a);
        return launched();
    }
};

extern "C" hipError_t fkv_hip_launch_attention(hipStream_t s, fkv_dtype dt,
                                               const fkv_hip_attention_args *a, uint32_t n_bh) {
    return by_dtype<run_attention>(dt, s, a, n_bh);
}

extern "C" hipError_t fkv_hip_launch_attention_reduce(hipStream_t s, const float *part,
                                                      uint32_t n_bh, uint32_t group,
                                                      uint32_t head_dim, uint32_t n_splits,
                                                      float *out) {
    dim3 grid;
    hipError_t e = grid_1d((size_t)n_bh * group * head_dim, FKV_HIP_BLOCK, &grid);
    if (e != hipSuccess)
        return e;
    (void)hipGetLastError();
    hipLaunchKernelGGL(k_attention_reduce, grid, dim3(FKV_HIP_BLOCK), 0, s, part, n_bh, group,
                       head_dim, n_splits, out);
    return launched();
}

extern "C" hipError_t fkv_hip_kernels_probe(void) {
    struct hipFuncAttributes attr;
    return hipFuncGetAttributes(&attr, reinterpret_cast<const void *>(&k_attention_reduce));
}
