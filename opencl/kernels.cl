/* freekv OpenCL kernels (OpenCL C 1.2).
 *
 * The program is built once per KV storage dtype with -DFKV_DTYPE=0 (f32), 1 (f16) or 2 (bf16);
 * arithmetic is f32 throughout. No cl_khr_fp16 is needed: f16 storage goes through
 * vload_half/vstore_half_rte, bf16 through bit conversion (round to nearest even, matching
 * common/dtype.h). Every kernel bounds-checks its indices against the sizes it is given, so a
 * bad index in a device descriptor skips work instead of corrupting memory.
 *
 * Index conventions (see backends/backend.h): KV pools are [gslot][page][n_kv_heads][d]
 * (NHD); host units are [K|V][page][d] (HND); buffer offsets arrive here in elements. */

#ifndef FKV_DTYPE
#define FKV_DTYPE 0
#endif

/* A software prefetch of address p where the host asks for them (FKV_PREFETCH: CPU devices,
 * fkv_prefetch and fkv_wide_row_* say why), else nothing. */
#ifdef FKV_PREFETCH
#define FKV_PREFETCH_AT(p) __builtin_prefetch(p)
#else
#define FKV_PREFETCH_AT(p) ((void)(p))
#endif

/* The f32 value of f16 bits h (exact, subnormals included). */
float fkv_f16_value(uint h) {
    uint sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0u)
        return as_float(sign | as_uint((float)m * 5.9604644775390625e-8f));
    return as_float(sign | (e == 31u ? 0x7f800000u : (e + 112u) << 23) | (m << 13));
}

#ifdef FKV_SOFT_HALF
/* fkv_f16_value of 4 lanes at once, in integer vector code. The host defines FKV_SOFT_HALF on
 * CPU devices for the f16 summaries' scores: PoCL's vload_half widens one element at a time in
 * scalar code there (its vload_halfn of K/V rows is as fast as this); GPUs widen in hardware. */
float4 fkv_f16_values4(ushort4 bits) {
    uint4 h = convert_uint4(bits);
    uint4 sign = (h & 0x8000u) << 16, e = h & 0x7c00u, m = h & 0x3ffu;
    uint4 sub = as_uint4(convert_float4(m) * 5.9604644775390625e-8f);
    uint4 big = select(((h & 0x7fffu) << 13) + 0x38000000u, 0x7f800000u | (m << 13),
                       e == 0x7c00u);
    return as_float4(sign | select(big, sub, e == 0u));
}
#endif

#if FKV_DTYPE == 0
typedef float fkv_kv_t;
typedef uint fkv_bits_t; /* raw copies move bits, never values */
float fkv_load(const global fkv_kv_t *p, size_t i) { return p[i]; }
void fkv_store(global fkv_kv_t *p, size_t i, float v) { p[i] = v; }
#elif FKV_DTYPE == 1
typedef ushort fkv_kv_t;
typedef ushort fkv_bits_t;
float fkv_load(const global fkv_kv_t *p, size_t i) { return vload_half(i, (const global half *)p); }
void fkv_store(global fkv_kv_t *p, size_t i, float v) {
    uint u = as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* one canonical quiet NaN, as common/dtype.h */
        p[i] = (ushort)(((u >> 16) & 0x8000u) | 0x7e00u);
    else
        vstore_half_rte(v, i, (global half *)p);
}
#else
typedef ushort fkv_kv_t;
typedef ushort fkv_bits_t;
float fkv_load(const global fkv_kv_t *p, size_t i) { return as_float((uint)p[i] << 16); }
void fkv_store(global fkv_kv_t *p, size_t i, float v) {
    uint u = as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN stays a quiet NaN */
        p[i] = (ushort)((u >> 16) | 0x40u);
    else
        p[i] = (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#endif

/* f32 bits u -> f16 bits with IEEE directed rounding, towards +inf (up = 1) or -inf (0): bit for
 * bit common/dtype.h fkv_f32_to_f16_directed (NaN: sign | 0x7e00; overflow gives the infinity
 * only in the rounding direction, else 65504). Integer code: vstore_half_rtn/rtp leave the NaN's
 * bits to the implementation and are not in every OpenCL C. The magnitude is truncated, then
 * stepped once away from zero when the value was inexact and the direction points away from
 * zero (the step carries into the exponent, and from 65504 into infinity). Bits, not a float,
 * because fkv_quant_scale builds its quotient as a bit pattern. */
uint f16_bits_round(uint u, uint up) {
    uint sign = u >> 31, a = u & 0x7fffffffu, h, lost;
    if (a > 0x7f800000u)
        return (sign << 15) | 0x7e00u;
    if (a >= 0x47800000u) { /* >= 65536: truncates to 65504; an infinity stays */
        h = a == 0x7f800000u ? 0x7c00u : 0x7bffu;
        lost = a != 0x7f800000u;
    } else if (a >= 0x38800000u) { /* a normal f16: drop 13 mantissa bits */
        h = (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu);
        lost = a & 0x1fffu;
    } else { /* subnormal f16 or zero, in units of 2^-24 */
        uint e = a >> 23, m = e ? (a & 0x7fffffu) | 0x800000u : a;
        uint shift = e ? 126u - e : 125u;
        h = shift < 32u ? m >> shift : 0u;
        lost = shift < 32u ? m & ((1u << shift) - 1u) : m;
    }
    if (lost && (sign ^ up)) /* rounding away from zero: up for +, down for - */
        h++;                 /* a carry into the exponent is the right result */
    return (sign << 15) | h;
}
inline uint f16_bits_round_down(float f) { return f16_bits_round(as_uint(f), 0u); }
inline uint f16_bits_round_up(float f) { return f16_bits_round(as_uint(f), 1u); }

/* rows[i] receives row i of k_src/v_src ([row_elems] f32), converted to the storage dtype. */
kernel void fkv_append(const global float *k_src, ulong k_off, const global float *v_src,
                       ulong v_off, const global int *rows, ulong rows_off, uint n_rows,
                       uint row_elems, uint pool_rows, global fkv_kv_t *kpool,
                       global fkv_kv_t *vpool) {
    size_t gid = get_global_id(0);
    size_t i = gid / row_elems, j = gid % row_elems;
    if (i >= n_rows)
        return;
    int row = rows[rows_off + i];
    if (row < 0 || (uint)row >= pool_rows)
        return;
    size_t dst = (size_t)row * row_elems + j;
    fkv_store(kpool, dst, k_src[k_off + gid]);
    fkv_store(vpool, dst, v_src[v_off + gid]);
}

/* One work item per (page i, KV head, channel): min and max over the page's tokens, stored as
 * f32, or (f16_summ) as f16 rounded down (min) and up (max). */
kernel void fkv_summarize(const global fkv_kv_t *kpool, const global int *pages, ulong pages_off,
                          uint n_pages, uint n_kv_heads, uint head_dim, uint page_size,
                          uint n_slots, uint n_summaries, global uint *summaries,
                          uint f16_summ) {
    size_t gid = get_global_id(0);
    size_t row_elems = (size_t)n_kv_heads * head_dim;
    size_t i = gid / row_elems, r = gid % row_elems;
    if (i >= n_pages)
        return;
    int gslot = pages[pages_off + 2 * i], s = pages[pages_off + 2 * i + 1];
    if (gslot < 0 || (uint)gslot >= n_slots || s < 0 || (uint)s >= n_summaries)
        return;
    float mn = INFINITY, mx = -INFINITY;
    size_t base = (size_t)gslot * page_size * row_elems + r;
    for (uint t = 0; t < page_size; t++) {
        float v = fkv_load(kpool, base + t * row_elems);
        mn = fmin(mn, v);
        mx = fmax(mx, v);
    }
    size_t h = r / head_dim, c = r % head_dim;
    size_t o = ((size_t)s * n_kv_heads + h) * 2 * head_dim + c;
    if (f16_summ) {
        ((global ushort *)summaries)[o] = (ushort)f16_bits_round_down(mn);
        ((global ushort *)summaries)[o + head_dim] = (ushort)f16_bits_round_up(mx);
    } else {
        ((global float *)summaries)[o] = mn;
        ((global float *)summaries)[o + head_dim] = mx;
    }
}

/* fkv_scores' summ_flags: f16 summaries; local memory for FKV_WIDE_LOCAL (ocl_kernels.c) */
#define FKV_SUMM_F16_FLAG 1u
#define FKV_SUMM_WIDE_FLAG 2u
#define FKV_SCORE_LANES 8 /* query heads per pass over a summary: a float8 (launch.h) */
#define FKV_SCORE_PAGES 4 /* pages a work item scores per pass (written out below) */

/* Quest bound of the query heads of one KV head in one pass over each page summary. The pass's
 * heads are the lanes of a float8 (a summary is read once per 8 query heads of its group),
 * each lane's sum runs over the channels in order (the CPU reference's order: the same bits),
 * and a work item scores FKV_SCORE_PAGES consecutive pages per pass, with one load of the
 * query vector per channel for all of them. qs holds the queries transposed, [channel][head]
 * (heads * head_dim floats, then 7 of padding that the last vector load reaches; lanes beyond
 * the block's heads are computed and dropped).
 * Work group (dim 1) = (sequence, KV head, block of `heads` query heads: the group in
 * ceil(group/heads) blocks when its queries do not fit local memory at once); dim 0 strides
 * over its pages. f16 summaries (f16_summ) are widened exactly (vload_half, or
 * fkv_f16_value(s) under FKV_SOFT_HALF), so their scores
 * are bit for bit those of f32 summaries holding the same values. */
/* The passes over the channels: SUMM_AT(e) loads summary element e as f32. */
#define FKV_SCORE_CHANNELS(SUMM_AT)                                                            \
    for (uint c = 0; c < head_dim; c++) {                                                      \
        float8 x = vload8(0, qs + (size_t)c * ng_all + g0);                                    \
        a0 += fmax(x * SUMM_AT(mn[0] + d + c), x * SUMM_AT(mn[0] + c));                        \
        a1 += fmax(x * SUMM_AT(mn[1] + d + c), x * SUMM_AT(mn[1] + c));                        \
        a2 += fmax(x * SUMM_AT(mn[2] + d + c), x * SUMM_AT(mn[2] + c));                        \
        a3 += fmax(x * SUMM_AT(mn[3] + d + c), x * SUMM_AT(mn[3] + c));                        \
    }
#define FKV_SUMM_F32(e) ((const global float *)summaries)[e]
#ifdef FKV_SOFT_HALF
#define FKV_SUMM_F16(e) fkv_f16_value(((const global ushort *)summaries)[e])
/* f16 summaries on CPU devices: 4 channels of each page's minima and maxima in one load and one
 * vector conversion each, then those channels in order, as FKV_SCORE_CHANNELS (the same sums).
 * head_dim % 4 == 0. */
#define FKV_SCORE_CH(i, s)                                                                     \
    {                                                                                          \
        float8 x = vload8(0, qs + (size_t)(c + i) * ng_all + g0);                              \
        a0 += fmax(x * hi0.s, x * lo0.s);                                                      \
        a1 += fmax(x * hi1.s, x * lo1.s);                                                      \
        a2 += fmax(x * hi2.s, x * lo2.s);                                                      \
        a3 += fmax(x * hi3.s, x * lo3.s);                                                      \
    }
#define FKV_SUMM4(p, at) fkv_f16_values4(vload4(0, (const global ushort *)summaries + mn[p] + at))
#define FKV_SCORE_CHANNELS_F16X4                                                               \
    for (uint c = 0; c < head_dim; c += 4) {                                                   \
        float4 lo0 = FKV_SUMM4(0, c), hi0 = FKV_SUMM4(0, d + c);                               \
        float4 lo1 = FKV_SUMM4(1, c), hi1 = FKV_SUMM4(1, d + c);                               \
        float4 lo2 = FKV_SUMM4(2, c), hi2 = FKV_SUMM4(2, d + c);                               \
        float4 lo3 = FKV_SUMM4(3, c), hi3 = FKV_SUMM4(3, d + c);                               \
        FKV_SCORE_CH(0, s0) FKV_SCORE_CH(1, s1) FKV_SCORE_CH(2, s2) FKV_SCORE_CH(3, s3)        \
    }
#else
#define FKV_SUMM_F16(e) vload_half(e, (const global half *)summaries)
#endif
/* The PAGES pages from j0 below END of KV head h: mn[p], the element of page p's minima, and
 * valid[p] (pages beyond the sequence's or the summaries read a valid one and are dropped). */
#define FKV_SCORE_PAGES_AT(PAGES, END)                                                         \
    size_t mn[PAGES];                                                                          \
    int valid[PAGES];                                                                          \
    for (uint p = 0; p < (PAGES); p++) {                                                       \
        long sidx = (long)base + (long)(j0 + p);                                               \
        valid[p] = j0 + p < (END) && sidx >= 0 && sidx < (long)n_summaries;                    \
        mn[p] = ((size_t)(valid[p] ? sidx : 0) * n_kv_heads + h) * 2 * d;                      \
    }
/* fkv_scores_group's passes over a work item's pages, FKV_SCORE_PAGES from j0 each (PASS):
 * item i takes pages 4i.. of every stride of the grid's items (neighbouring items read
 * neighbouring pages: coalesced on GPUs). */
#define FKV_SCORE_LOOP(PASS)                                                                   \
    for (size_t j0 = get_global_id(0) * FKV_SCORE_PAGES; j0 < np;                              \
         j0 += get_global_size(0) * FKV_SCORE_PAGES) {                                         \
        FKV_SCORE_PAGES_AT(FKV_SCORE_PAGES, np)                                                \
        PASS                                                                                   \
    }
/* The scores of heads g0..g0+ng-1 of page p (valid[p]): a[k] for head g0 + k. */
#define FKV_SCORE_STORE(p, g0, ng, a)                                                          \
    for (uint k = 0; k < (ng) && valid[p]; k++) {                                              \
        long o = obase + (long)(h * group + hb + (g0) + k) * n_pages + (long)(j0 + (p));       \
        if (o >= 0 && (ulong)o < out_len)                                                      \
            out[out_off + o] = (a)[k];                                                         \
    }
/* The pass in float8 lanes of query heads, CHANNELS summing into a0..a3 (one per page). */
#define FKV_SCORE_PASS(CHANNELS)                                                               \
    for (uint g0 = 0; g0 < ng_all; g0 += FKV_SCORE_LANES) {                                    \
        /* one variable per page, so that the sums stay in vector registers */                 \
        float8 a0 = (float8)(0.0f), a1 = a0, a2 = a0, a3 = a0;                                 \
        CHANNELS                                                                               \
        float8 acc[FKV_SCORE_PAGES] = {a0, a1, a2, a3};                                        \
        uint ng = min((uint)FKV_SCORE_LANES, ng_all - g0);                                     \
        for (uint p = 0; p < FKV_SCORE_PAGES; p++) {                                           \
            float a[FKV_SCORE_LANES];                                                          \
            vstore8(acc[p], 0, a);                                                             \
            FKV_SCORE_STORE(p, g0, ng, a)                                                      \
        }                                                                                      \
    }
#ifdef FKV_WIDE_SCORES
/* On CPU devices (the host defines FKV_WIDE_SCORES there), where the whole group (at most 4
 * query heads) is one block and head_dim % 16 == 0, fkv_scores_wide scores pages 4 at a time
 * in the 16 lanes of a float16, lane 4 * page + head: the float8 pass leaves half its lanes or
 * more idle there (group 4, the common GQA ratio, fills 4 of 8). Each lane still sums its
 * channels in order: the same bits. A work item takes a contiguous range of pages and scores
 * every KV head of them, FKV_WIDE_PAGES pages a pass: one dense stream through the summaries
 * per core (a KV head's half of each page, as the other paths read, streams at about half the
 * memory's speed). A pass's 4 quads of pages run one after another, each in a loop of its own
 * over the channels: in one loop LLVM loaded the 32 query vectors a 16-channel step shares
 * between the quads up front and spilled them, with the rows, to the stack (a third of the
 * pass's samples; docs/bench.md, "one quad at a time"). Each KV head's queries are laid out
 * [x|xp|xn][channel][4] (lanes beyond the group hold 0 and are dropped), then a 0 (`opaque`):
 * FKV_WIDE_LOCAL floats.
 *
 * fmax(x * hi, x * lo) costs 4 instructions a vector on x86 (its NaN rule). Where x, hi and lo
 * are finite and lo <= hi it equals xp * hi + xn * lo, xp = x > 0 ? x : 0 and xn = x < 0 ? x :
 * 0, bit for bit: one product is an exact zero and the other is the one fmax picks (rounding
 * keeps x * hi >= x * lo for x >= 0 when hi >= lo); a zero's sign never reaches a sum that
 * starts at +0. xp and xn keep a non-finite x, so a non-finite x or summary makes the pass's
 * sums non-finite; such a pass, or one with some lo > hi, is scored again with fmax. */
#define FKV_WIDE_PAGES 16
/* 16 summary elements from e (aligned: head_dim % 16 == 0) as f32, and a prefetch of those
 * `ahead` elements on (the next pass's page): a core streams 8 rows at once, then the next
 * quad's, more than its prefetchers follow (without it, f16 summaries and 128 channels scored
 * 1.2-1.6x slower). PoCL's vload_half16 widens in vector code (its scalar vload_half does not:
 * FKV_SOFT_HALF). */
float16 fkv_wide_row_f32(const global float *e, size_t ahead) {
    FKV_PREFETCH_AT(e + ahead);
    return *(const global float16 *)e;
}
float16 fkv_wide_row_f16(const global ushort *e, size_t ahead) {
    FKV_PREFETCH_AT(e + ahead);
    return vload_half16(0, (const global half *)e);
}
#define FKV_WIDE_HEAD(head_dim) (12 * (size_t)(head_dim)) /* one KV head's queries */
#define FKV_WIDE_LOCAL(n_kv_heads, head_dim) ((n_kv_heads) * FKV_WIDE_HEAD(head_dim) + 1)
/* One page's 16 channels from c0, minima (at 0) or maxima (at d), as f32. */
#define FKV_WIDE_ROW_F32(p, at) fkv_wide_row_f32(sf + mn[p] + (at) + c0, ahead)
#define FKV_WIDE_ROW_F16(p, at) fkv_wide_row_f16(sh + mn[p] + (at) + c0, ahead)
/* Rows r0..r3 (pages p..p+3) as t0..t3, tk = [page][channels c0 + 4k..c0 + 4k + 3]. The xor
 * with `opaque` (a zero the compiler cannot see) keeps LLVM from fusing these shuffles with
 * the spreads below into three two-source shuffles a channel. */
#define FKV_WIDE_TRANSPOSE(r0, r1, r2, r3, t0, t1, t2, t3)                                     \
    {                                                                                          \
        const uint16 lo8 = (uint16)(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);   \
        const uint16 m0 = (uint16)(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);    \
        float16 ab0 = shuffle2(r0, r1, lo8), ab1 = shuffle2(r0, r1, lo8 + 8u);                 \
        float16 cd0 = shuffle2(r2, r3, lo8), cd1 = shuffle2(r2, r3, lo8 + 8u);                 \
        t0 = as_float16(as_uint16(shuffle2(ab0, cd0, m0)) ^ opaque);                           \
        t1 = as_float16(as_uint16(shuffle2(ab0, cd0, m0 + 8u)) ^ opaque);                      \
        t2 = as_float16(as_uint16(shuffle2(ab1, cd1, m0)) ^ opaque);                           \
        t3 = as_float16(as_uint16(shuffle2(ab1, cd1, m0 + 8u)) ^ opaque);                      \
    }
/* Channel c0 + 4k + i of each page of t (tk) spread over the page's 4 head lanes, into acc. */
#define FKV_WIDE_CH(acc, lo, hi, k, i)                                                         \
    {                                                                                          \
        const uint16 m = (uint16)(i, i, i, i, 4 + i, 4 + i, 4 + i, 4 + i, 8 + i, 8 + i, 8 + i,  \
                                  8 + i, 12 + i, 12 + i, 12 + i, 12 + i);                      \
        float4 xp4 = vload4(0, qh + 4 * (d + c0 + 4 * k + i));                                 \
        float4 xn4 = vload4(0, qh + 4 * (2 * d + c0 + 4 * k + i));                             \
        float16 xp = (float16)(xp4, xp4, xp4, xp4), xn = (float16)(xn4, xn4, xn4, xn4);        \
        acc += xp * shuffle(hi, m) + xn * shuffle(lo, m);                                      \
    }
#define FKV_WIDE_CH4(acc, lo, hi, k)                                                           \
    FKV_WIDE_CH(acc, lo, hi, k, 0) FKV_WIDE_CH(acc, lo, hi, k, 1)                              \
    FKV_WIDE_CH(acc, lo, hi, k, 2) FKV_WIDE_CH(acc, lo, hi, k, 3)
/* 16 channels of pages p..p+3 into acc. */
#define FKV_WIDE_QUAD(ROW, acc, p)                                                             \
    {                                                                                          \
        float16 l0, l1, l2, l3, h0, h1, h2, h3;                                                \
        FKV_WIDE_TRANSPOSE(ROW(p, 0), ROW(p + 1, 0), ROW(p + 2, 0), ROW(p + 3, 0), l0, l1, l2, \
                           l3)                                                                 \
        FKV_WIDE_TRANSPOSE(ROW(p, d), ROW(p + 1, d), ROW(p + 2, d), ROW(p + 3, d), h0, h1, h2, \
                           h3)                                                                 \
        ordered &= (l0 <= h0) & (l1 <= h1) & (l2 <= h2) & (l3 <= h3);                          \
        FKV_WIDE_CH4(acc, l0, h0, 0) FKV_WIDE_CH4(acc, l1, h1, 1)                              \
        FKV_WIDE_CH4(acc, l2, h2, 2) FKV_WIDE_CH4(acc, l3, h3, 3)                              \
    }
/* Head k's scores of the pass's 16 pages (lanes k, 4 + k, ... of a0..a3) in one store at
 * o0 + k * n_pages, the same values FKV_SCORE_STORE writes one at a time; for an exact pass
 * whose pages are all valid (each condition of valid[] holds for a run of the pass's pages, so
 * valid[0] and valid[15] decide) and whose heads' rows all lie in the output, as most passes
 * are. The others store element by element, as before. */
#define FKV_WIDE_STORE(k)                                                                      \
    if ((k) < group) {                                                                         \
        const uint8 m = (uint8)(k, 4 + k, 8 + k, 12 + k, 16 + k, 20 + k, 24 + k, 28 + k);     \
        vstore16((float16)(shuffle2(a0, a1, m), shuffle2(a2, a3, m)), 0,                       \
                 out + out_off + o0 + (long)(k) * n_pages);                                    \
    }
/* Summary element e as f32 (the fallback's scalar loads). */
#define FKV_WIDE_AT(e) (f16_summ ? fkv_f16_value(sh[e]) : sf[e])
#define FKV_SCORE_PASS_WIDE(ROW)                                                               \
    {                                                                                          \
        float16 a0 = (float16)(0.0f), a1 = a0, a2 = a0, a3 = a0;                               \
        int16 ordered = (int16)(-1);                                                           \
        for (uint c0 = 0; c0 < head_dim; c0 += 16)                                             \
            FKV_WIDE_QUAD(ROW, a0, 0)                                                          \
        for (uint c0 = 0; c0 < head_dim; c0 += 16)                                             \
            FKV_WIDE_QUAD(ROW, a1, 4)                                                          \
        for (uint c0 = 0; c0 < head_dim; c0 += 16)                                             \
            FKV_WIDE_QUAD(ROW, a2, 8)                                                          \
        for (uint c0 = 0; c0 < head_dim; c0 += 16)                                             \
            FKV_WIDE_QUAD(ROW, a3, 12)                                                         \
        int exact =                                                                            \
            all(ordered) && all(isfinite(a0) & isfinite(a1) & isfinite(a2) & isfinite(a3));   \
        long o0 = obase + (long)(h * group) * n_pages + (long)j0;                              \
        if (exact && valid[0] && valid[FKV_WIDE_PAGES - 1] && o0 >= 0 &&                       \
            (ulong)(o0 + (long)(group - 1) * n_pages + FKV_WIDE_PAGES) <= out_len) {           \
            FKV_WIDE_STORE(0) FKV_WIDE_STORE(1) FKV_WIDE_STORE(2) FKV_WIDE_STORE(3)            \
        } else {                                                                               \
            float a[FKV_WIDE_PAGES * 4];                                                       \
            vstore16(a0, 0, a);                                                                \
            vstore16(a1, 1, a);                                                                \
            vstore16(a2, 2, a);                                                                \
            vstore16(a3, 3, a);                                                                \
            if (!exact)                                                                        \
                for (uint i = 0; i < FKV_WIDE_PAGES * 4; i++) {                                \
                    float sum = 0.0f;                                                          \
                    for (uint c = 0; c < head_dim; c++) {                                      \
                        float x = qh[4 * c + i % 4];                                           \
                        size_t e = mn[i / 4] + c;                                              \
                        sum += fmax(x * FKV_WIDE_AT(e + d), x * FKV_WIDE_AT(e));               \
                    }                                                                          \
                    a[i] = sum;                                                                \
                }                                                                              \
            for (uint p = 0; p < FKV_WIDE_PAGES; p++)                                          \
                FKV_SCORE_STORE(p, 0, group, a + 4 * p)                                        \
        }                                                                                      \
    }
/* The queries of query row `row` (row_ok: it has one, and there are summaries) in qs, as above;
 * the caller's barrier follows. */
inline void fkv_scores_wide_queries(const global float *q, ulong q_off, int row, int row_ok,
                                    uint n_kv_heads, uint group, uint head_dim, local float *qs) {
    size_t hq = FKV_WIDE_HEAD(head_dim), d = head_dim;
    for (size_t i = get_local_id(0); i < FKV_WIDE_LOCAL(n_kv_heads, head_dim);
         i += get_local_size(0)) {
        uint h = i / hq, part = i % hq / (4 * d), c = i % (4 * d) / 4, k = i % 4;
        int ok = row_ok && h < n_kv_heads && k < group && part < 3;
        float x = ok ? q[q_off + (((size_t)row * n_kv_heads + h) * group + k) * d + c] : 0.0f;
        int keep = part == 0 || !isfinite(x) || (part == 1 ? x > 0.0f : x < 0.0f);
        qs[i] = keep ? x : 0.0f;
    }
}
/* The scores of sequence b (descriptor db) for every KV head, by work group `slot` (its KV
 * head in the grid) of the n_kv_heads * (dim 0) work groups a sequence has: see above. No
 * barrier: PoCL copies the code after a barrier under a branch once per way through it. */
inline void fkv_scores_wide(int row_ok, const global int *db, const global int *pair_mask,
                            ulong mask_off, uint use_mask, uint b, uint slot,
                            const global uint *summaries, uint n_summaries, global float *out,
                            ulong out_off, ulong out_len, uint n_kv_heads, uint group,
                            uint head_dim, const local float *qs, uint f16_summ) {
    size_t hq = FKV_WIDE_HEAD(head_dim), d = head_dim;
    int base = db[0], n_pages = row_ok ? db[1] : 0;
    long obase = db[2];
    size_t np = (size_t)max(n_pages, 0), items = n_kv_heads * get_global_size(0);
    size_t per = (np + items * FKV_WIDE_PAGES - 1) / (items * FKV_WIDE_PAGES) * FKV_WIDE_PAGES;
    size_t first = (slot * get_global_size(0) + get_global_id(0)) * per;
    size_t end = min(first + per, np), ahead = FKV_WIDE_PAGES * n_kv_heads * 2 * d;
    const global float *sf = (const global float *)summaries;
    const global ushort *sh = (const global ushort *)summaries;
    uint16 opaque = (uint16)(as_uint(qs[n_kv_heads * hq]));
    uint hb = 0; /* the group is one block */
    for (size_t j0 = first; j0 < end; j0 += FKV_WIDE_PAGES)
        for (uint h = 0; h < n_kv_heads; h++) {
            if (use_mask && pair_mask[mask_off + (size_t)b * n_kv_heads + h] == 0)
                continue; /* a masked pair's scores stay untouched */
            const local float *qh = qs + h * hq;
            FKV_SCORE_PAGES_AT(FKV_WIDE_PAGES, end)
            if (f16_summ)
                FKV_SCORE_PASS_WIDE(FKV_WIDE_ROW_F16)
            else
                FKV_SCORE_PASS_WIDE(FKV_WIDE_ROW_F32)
        }
}
#endif
/* The scores of work group (dim 1) (sequence, KV head, head block) (fkv_scores,
 * fkv_scores_check). */
inline void fkv_scores_group(const global float *q, ulong q_off, ulong q_rows,
                             const global int *desc, ulong desc_off,
                             const global int *pair_mask, ulong mask_off, uint use_mask,
                             const global uint *summaries, uint n_summaries, global float *out,
                             ulong out_off, ulong out_len, uint n_kv_heads, uint group,
                             uint head_dim, uint heads, local float *qs, uint summ_flags) {
    uint f16_summ = summ_flags & FKV_SUMM_F16_FLAG;
    uint n_blocks = (group + heads - 1) / heads;
    uint bh = get_group_id(1) / n_blocks, hb = (get_group_id(1) % n_blocks) * heads;
    uint b = bh / n_kv_heads, h = bh % n_kv_heads;
    const global int *db = desc + desc_off + 4 * (size_t)b;
    int row = db[3];
    int row_ok = row >= 0 && (ulong)row < q_rows && n_summaries > 0;
    /* a masked pair or a row beyond the queries does nothing (no return before the barrier) */
    int ok = row_ok && (!use_mask || pair_mask[mask_off + bh] != 0);
    uint ng_all = min(heads, group - hb), gd = ng_all * head_dim;
    const global float *qb =
        q + q_off + (((size_t)(ok ? row : 0) * n_kv_heads + h) * group + hb) * head_dim;
#ifdef FKV_WIDE_SCORES
    /* where the host gave it the local memory and the group is one block; one barrier outside
     * both branches (fkv_scores_wide says why) */
    int wide =
        (summ_flags & FKV_SUMM_WIDE_FLAG) && n_blocks == 1 && group <= 4 && head_dim % 16 == 0;
    if (wide)
        fkv_scores_wide_queries(q, q_off, row, row_ok, n_kv_heads, group, head_dim, qs);
    else
#endif
        for (uint i = get_local_id(0); i < gd + FKV_SCORE_LANES - 1; i += get_local_size(0))
            qs[i] = ok && i < gd ? qb[(size_t)(i % ng_all) * head_dim + i / ng_all] : 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);
#ifdef FKV_WIDE_SCORES
    if (wide) {
        fkv_scores_wide(row_ok, db, pair_mask, mask_off, use_mask, b, h, summaries, n_summaries,
                        out, out_off, out_len, n_kv_heads, group, head_dim, qs, f16_summ);
        return;
    }
#endif
    int base = db[0], n_pages = ok ? db[1] : 0;
    long obase = db[2];
    size_t np = (size_t)max(n_pages, 0), d = head_dim;
#ifdef FKV_SOFT_HALF
    if (f16_summ && head_dim % 4 == 0) { /* a loop of its own: the f32 loop's code is unchanged */
        FKV_SCORE_LOOP(FKV_SCORE_PASS(FKV_SCORE_CHANNELS_F16X4))
        return;
    }
#endif
    FKV_SCORE_LOOP(FKV_SCORE_PASS(if (f16_summ) FKV_SCORE_CHANNELS(FKV_SUMM_F16)
                                  else FKV_SCORE_CHANNELS(FKV_SUMM_F32)))
}

kernel void fkv_scores(const global float *q, ulong q_off, ulong q_rows, const global int *desc,
                       ulong desc_off, const global int *pair_mask, ulong mask_off,
                       uint use_mask, const global uint *summaries, uint n_summaries,
                       global float *out, ulong out_off, ulong out_len, uint n_kv_heads,
                       uint group, uint head_dim, uint heads, local float *qs, uint summ_flags) {
    fkv_scores_group(q, q_off, q_rows, desc, desc_off, pair_mask, mask_off, use_mask, summaries,
                     n_summaries, out, out_off, out_len, n_kv_heads, group, head_dim, heads, qs,
                     summ_flags);
}

/* The vector width FKV_VW (4, 8 or 16) of the attention (channels a work item) and of
 * select_pages (candidates a step): the host builds the program with the device's preferred
 * float vector width, at least 4 (CPU devices: their SIMD width; GPUs: 4, one 128-bit load).
 * fkv_vec is FKV_VW floats. */
#ifndef FKV_VW
#define FKV_VW 4
#endif
#define FKV_CAT_(a, b) a##b
#define FKV_CAT(a, b) FKV_CAT_(a, b)
typedef FKV_CAT(float, FKV_VW) fkv_vec;
#define fkv_vload FKV_CAT(vload, FKV_VW)
#define fkv_vstore FKV_CAT(vstore, FKV_VW)
typedef FKV_CAT(int, FKV_VW) fkv_ivec;
typedef FKV_CAT(uint, FKV_VW) fkv_uvec;
#define fkv_as_ivec FKV_CAT(as_int, FKV_VW)
#define fkv_as_uvec FKV_CAT(as_uint, FKV_VW)
/* Lane i holds i. */
#if FKV_VW == 16
#define FKV_LANE_IDS (fkv_ivec)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#elif FKV_VW == 8
#define FKV_LANE_IDS (fkv_ivec)(0, 1, 2, 3, 4, 5, 6, 7)
#else
#define FKV_LANE_IDS (fkv_ivec)(0, 1, 2, 3)
#endif

/* FKV_VW consecutive elements from element i (any element alignment), as f32: one vector
 * load and a vector conversion. */
#if FKV_DTYPE == 0
fkv_vec fkv_loadv(const global fkv_kv_t *p, size_t i) { return fkv_vload(0, p + i); }
#elif FKV_DTYPE == 1
fkv_vec fkv_loadv(const global fkv_kv_t *p, size_t i) {
    return FKV_CAT(vload_half, FKV_VW)(0, (const global half *)(p + i));
}
#else
fkv_vec fkv_loadv(const global fkv_kv_t *p, size_t i) {
    return FKV_CAT(as_float, FKV_VW)(FKV_CAT(convert_uint, FKV_VW)(fkv_vload(0, p + i)) << 16);
}
#endif

/* The first n elements of a row (all FKV_VW when n >= FKV_VW), zeros after them. */
fkv_vec fkv_loadv_row(const global fkv_kv_t *row, uint n) {
    if (n >= FKV_VW)
        return fkv_loadv(row, 0);
    float x[FKV_VW];
    for (uint i = 0; i < FKV_VW; i++)
        x[i] = i < n ? fkv_load(row, i) : 0.0f;
    return fkv_vload(0, x);
}

/* The sum of a vector's lanes, halves first. */
float fkv_hsum(fkv_vec v) {
#if FKV_VW == 16
    float8 a = v.lo + v.hi;
    float4 b = a.lo + a.hi;
#elif FKV_VW == 8
    float4 b = v.lo + v.hi;
#else
    float4 b = v;
#endif
    return (b.x + b.y) + (b.z + b.w);
}

/* The largest lane. */
float fkv_hmax(fkv_vec v) {
#if FKV_VW == 16
    float8 a = fmax(v.lo, v.hi);
    float4 b = fmax(a.lo, a.hi);
#elif FKV_VW == 8
    float4 b = fmax(v.lo, v.hi);
#else
    float4 b = v;
#endif
    return fmax(fmax(b.x, b.y), fmax(b.z, b.w));
}

/* ---- select_pages (backend.h): group reduction and top-k ---- */

/* An unsigned key in the order of the floats (no NaN reaches it); and of FKV_VW at once. */
inline uint fkv_order_key(float v) {
    uint u = as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline fkv_uvec fkv_order_keyv(fkv_vec v) {
    fkv_uvec u = fkv_as_uvec(v);
    return select(u | 0x80000000u, ~u, fkv_as_ivec(u) < 0);
}

/* Exclusive prefix sum of x over the work group (local size w, a power of two, t of w
 * entries); *total receives the sum. Every work item must call it. */
inline uint fkv_scan(local uint *t, uint lid, uint w, uint x, uint *total) {
    t[lid] = x;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint off = 1; off < w; off <<= 1) {
        uint y = lid >= off ? t[lid - off] : 0u;
        barrier(CLK_LOCAL_MEM_FENCE);
        t[lid] += y;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    *total = t[w - 1];
    uint before = t[lid] - x;
    barrier(CLK_LOCAL_MEM_FENCE);
    return before;
}

/* max (reduce 0) or sum (1) of x over the work group through red (w floats). */
inline float fkv_group_fold(local float *red, uint lid, uint w, float x, int sum) {
    red[lid] = x;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = w / 2; s > 0; s /= 2) {
        if (lid < s)
            red[lid] = sum ? red[lid] + red[lid + s]
                           : (red[lid + s] > red[lid] ? red[lid + s] : red[lid]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

/* Elements j..j+FKV_VW-1 of row s as a vector, `past` for those at or beyond n; and the store
 * of the ones before n. */
inline fkv_vec fkv_select_load(const global float *s, uint j, uint n, float past) {
    if (j + FKV_VW <= n)
        return fkv_vload(0, s + j);
    float x[FKV_VW];
    for (uint i = 0; i < FKV_VW; i++)
        x[i] = j + i < n ? s[j + i] : past;
    return fkv_vload(0, x);
}
inline void fkv_select_store(global float *s, uint j, uint n, fkv_vec v) {
    if (j + FKV_VW <= n) {
        fkv_vstore(v, 0, s + j);
        return;
    }
    float x[FKV_VW];
    fkv_vstore(v, 0, x);
    for (uint i = 0; j + i < n; i++)
        s[j + i] = x[i];
}

/* One work group per (sequence, KV head), local size w a power of two. The group's query
 * heads are reduced into row 0 of its scores (the op's scratch), FKV_VW candidates a step; then a
 * radix select (4 passes of 8 bits over order keys, histogram in local memory) finds the k-th
 * value.
 * Then, after a barrier, item l takes the l-th contiguous range of the candidates: it counts
 * the pages above the k-th value and those equal to it in its range, two scans over the items
 * say where its pages go and how many of the equal ones it takes (the lowest pages first),
 * and it writes them, so the records come out in page order. aux: 256 + w + 2 uints. */
kernel void fkv_select_pages(const global int *desc, ulong desc_off,
                             const global int *pair_mask, ulong mask_off, uint use_mask,
                             global float *scores, ulong scores_off, ulong scores_len,
                             uint n_kv_heads, uint group, uint first, uint k, uint reduce,
                             float temp_scale, global int *out, ulong out_off, local float *red,
                             local uint *aux) {
    uint bh = get_group_id(0), lid = get_local_id(0), w = get_local_size(0);
    uint b = bh / n_kv_heads, h = bh % n_kv_heads;
    int skip = use_mask && pair_mask[mask_off + bh] == 0; /* a masked pair: no work, no record */
    global int *pages = out + out_off + (size_t)bh * 2 * k;
    global float *vals = (global float *)(pages + k);
    int np = desc[desc_off + 4 * (size_t)b + 1];
    long base = desc[desc_off + 4 * (size_t)b + 2];
    ulong hq = (ulong)n_kv_heads * group;
    int ok = np >= 0 && base >= 0 && (ulong)base + hq * (ulong)max(np, 0) <= scores_len;
    uint n_cand = ok && !skip && np > (int)first ? (uint)np - first : 0u;
    uint kk = min(n_cand, k);
    for (uint i = kk + lid; i < k && !skip; i += w) {
        pages[i] = -1;
        vals[i] = -INFINITY;
    }
    if (kk == 0)
        return;
    uint n = (uint)np;
    global float *row0 = scores + scores_off + base + (size_t)h * group * n;
    /* The reduction takes the candidates FKV_VW at a time (vector loads and a vector exp: a
     * CPU device runs a work item's loop in scalar code otherwise): item l owns the vectors
     * from first + FKV_VW * (l + t * w); the last is cut at n. */
    const uint step = FKV_VW * w;
    fkv_vec topv = (fkv_vec)(-INFINITY); /* this item's largest reduced values */
    for (uint r = 0; r < group; r++) {
        global float *s = row0 + (size_t)r * n;
        float m = -INFINITY, sum = 0.0f;
        if (reduce == 0) { /* each exp is kept in the row (scratch) for the accumulation */
            fkv_vec pm = (fkv_vec)(-INFINITY), ps = (fkv_vec)(0.0f);
            for (uint j = first + FKV_VW * lid; j < n; j += step) {
                fkv_vec x = fkv_select_load(s, j, n, -INFINITY);
                pm = select(pm, x, x > pm);
            }
            m = fkv_group_fold(red, lid, w, fkv_hmax(pm), 0);
            for (uint j = first + FKV_VW * lid; j < n; j += step) {
                fkv_vec e = exp((fkv_select_load(s, j, n, -INFINITY) - m) * temp_scale);
                fkv_select_store(s, j, n, e);
                if (j + FKV_VW > n) /* only the candidates count */
                    e = select((fkv_vec)(0.0f), e, FKV_LANE_IDS < (fkv_ivec)(n - j));
                ps += e;
            }
            sum = fkv_group_fold(red, lid, w, fkv_hsum(ps), 1);
        }
        for (uint j = first + FKV_VW * lid; j < n; j += step) {
            fkv_vec x = fkv_select_load(s, j, n, 0.0f);
            fkv_vec acc = r == 0 ? (fkv_vec)(reduce == 2 ? -INFINITY : 0.0f)
                                 : fkv_select_load(row0, j, n, 0.0f);
            if (reduce == 0)
                acc += x / sum / (float)group;
            else if (reduce == 1)
                acc += x / (float)group;
            else
                acc = select(acc, x, x > acc);
            if (r + 1 == group) { /* NaN ranks last; -0 ties +0 */
                acc = select(acc, (fkv_vec)(-INFINITY), isnan(acc));
                acc = select(acc, (fkv_vec)(0.0f), acc == 0.0f);
                topv = select(topv, acc, (acc > topv) & (FKV_LANE_IDS < (fkv_ivec)(n - j)));
            }
            fkv_select_store(row0, j, n, acc);
        }
    }
    /* its order key: -inf's where the item has no candidate, below or equal to every one */
    uint top = fkv_order_key(fkv_hmax(topv));
    /* the radix select below reads every item's reduced values */
    barrier(CLK_GLOBAL_MEM_FENCE);
    local uint *hist = aux, *scan = aux + 256, *res = aux + 256 + w;
    /* A floor for the histograms: the kk items with the largest `top`s hold kk distinct
     * candidates at or above the kk-th of those, so the kk-th largest candidate is too, and no
     * candidate below it can change a count the select reads (where kk <= w). Skipping those
     * saves a local atomic each, most of the candidates. */
    scan[lid] = top; /* the barriers outside a branch, as in fkv_scores_wide */
    barrier(CLK_LOCAL_MEM_FENCE);
    uint rank = 0; /* ties to the lower item: one item has each rank */
    for (uint i = 0; i < w; i++)
        rank += scan[i] > top || (scan[i] == top && i < lid);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (rank + 1 == kk)
        res[0] = top;
    barrier(CLK_LOCAL_MEM_FENCE);
    uint floor_key = kk <= w ? res[0] : 0u;
    barrier(CLK_LOCAL_MEM_FENCE);
    uint prefix = 0, mask = 0, rem = kk;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (uint i = lid; i < 256; i += w)
            hist[i] = 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint j = first + FKV_VW * lid; j < n; j += step) { /* the reduction's vectors */
            fkv_uvec key = fkv_order_keyv(fkv_select_load(row0, j, n, 0.0f));
            fkv_ivec hit = ((key & mask) == prefix) & (key >= floor_key) &
                           (FKV_LANE_IDS < (fkv_ivec)(n - j));
            if (any(hit))
                for (uint i = 0; i < FKV_VW; i++)
                    if (hit[i])
                        atomic_inc(&hist[(key[i] >> shift) & 255u]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid == 0) {
            uint bin = 255, above = 0;
            while (above + hist[bin] < rem)
                above += hist[bin--];
            res[0] = bin;
            res[1] = rem - above;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        prefix |= res[0] << shift;
        rem = res[1];
        mask |= 255u << shift;
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    uint chunk = (n_cand + w - 1) / w, lo = first + min(lid * chunk, n_cand);
    uint hi = first + min((lid + 1) * chunk, n_cand), above = 0, equal = 0, total;
    for (uint j = lo; j < hi; j++) {
        uint key = fkv_order_key(row0[j]);
        above += key > prefix;
        equal += key == prefix;
    }
    uint eq_before = fkv_scan(scan, lid, w, equal, &total);
    uint take = eq_before < rem ? min(equal, rem - eq_before) : 0u; /* lowest pages first */
    uint at = fkv_scan(scan, lid, w, above + take, &total);
    for (uint j = lo; j < hi; j++) {
        float v = row0[j];
        uint key = fkv_order_key(v);
        if (key > prefix || (key == prefix && take > 0)) {
            take -= key == prefix;
            pages[at] = (int)j;
            vals[at++] = v;
        }
    }
}

/* The correction's check of KV head bh = (sequence, KV head) (backend.h cosine_flags): the
 * mean over its group of the cosine of its queries in q_cur (rows of sequences) and in row
 * `row` of q_prev (prev_count rows): negative, none (NaN, flagged); beyond, skipped (nothing
 * written). flag = !(mean >= tau): a NaN similarity (a query holding a NaN or an infinity) is
 * corrected; only an exactly zero norm gives cosine 0, so a NaN norm reaches the mean. Each
 * sum runs over w lanes (a power of two; lane l takes channels l, l + w, ...) and a tree over
 * them in red (3w floats). The lsize work items of the group take lanes lid, lid + lsize, ...,
 * so the bits depend on w only: fkv_cosine (lsize = w) and fkv_scores_check (the scores' work
 * group) agree. Every work item calls it (barriers), `active` or not: a call under a branch
 * would make PoCL copy the code after it (fkv_scores_wide). */
inline void fkv_check_pair(const global float *q_cur, const global float *q_prev,
                           ulong prev_count, int row, uint bh, uint n_kv_heads, uint group,
                           uint head_dim, float tau, uint lid, uint lsize, uint w,
                           local float *red, global float *sim, global int *flag, int active) {
    /* a missing or bad row, or an inactive call, runs no head of the group (n_heads is the same
     * for every item) */
    uint n_heads = active && row >= 0 && (ulong)row < prev_count ? group : 0;
    int no_prev = active && row < 0;
    const global float *a0 = q_cur + (size_t)bh * group * head_dim;
    const global float *b0 =
        q_prev + ((size_t)(n_heads ? row : 0) * n_kv_heads + bh % n_kv_heads) * group * head_dim;
    float mean = no_prev ? NAN : 0.0f;
    for (uint g = 0; g < n_heads; g++) {
        const global float *a = a0 + (size_t)g * head_dim, *b = b0 + (size_t)g * head_dim;
        for (uint l = lid; l < w; l += lsize) {
            float ab = 0.0f, aa = 0.0f, bb = 0.0f;
            for (uint c = l; c < head_dim; c += w) {
                float x = a[c], y = b[c];
                ab += x * y;
                aa += x * x;
                bb += y * y;
            }
            red[l] = ab;
            red[w + l] = aa;
            red[2 * w + l] = bb;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint s = w / 2; s > 0; s /= 2) {
            for (uint l = lid; l < s; l += lsize) {
                red[l] += red[l + s];
                red[w + l] += red[w + l + s];
                red[2 * w + l] += red[2 * w + l + s];
            }
            barrier(CLK_LOCAL_MEM_FENCE);
        }
        if (lid == 0) {
            float na = sqrt(red[w]), nb = sqrt(red[2 * w]);
            mean += (na == 0.0f || nb == 0.0f) ? 0.0f : red[0] / (na * nb);
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* red is reused by the next head */
    }
    if (lid == 0 && (n_heads || no_prev)) {
        mean /= (float)group;
        *sim = mean;
        *flag = !(mean >= tau);
    }
}

/* One work group per (sequence, KV head); local size a power of two (fkv_check_pair). The
 * previous query is row prev_rows[seq] of q_prev. */
kernel void fkv_cosine(const global float *q_cur, ulong cur_off, const global float *q_prev,
                       ulong prev_off, ulong prev_count, const global int *prev_rows,
                       ulong rows_off, uint n_kv_heads, uint group, uint head_dim, float tau,
                       global float *sims, ulong sims_off, global int *flags, ulong flags_off,
                       local float *red) {
    uint bh = get_group_id(0), w = get_local_size(0);
    fkv_check_pair(q_cur + cur_off, q_prev + prev_off, prev_count,
                   prev_rows[rows_off + bh / n_kv_heads], bh, n_kv_heads, group, head_dim, tau,
                   get_local_id(0), w, w, red, sims + sims_off + bh, flags + flags_off + bh, 1);
}

/* scores_check (backend.h): fkv_scores' grid and arguments (the op passes no mask), and the
 * first work group of each (sequence, KV head) (dim 0 chunk 0, head block 0) then runs
 * fkv_cosine's check of it with fkv_cosine's lane count check_w, q_cur from cur_off and q_prev
 * from q_off of q, in qs (at least 3 check_w floats) once the scores are done with it. */
kernel void fkv_scores_check(const global float *q, ulong q_off, ulong q_rows,
                             const global int *desc, ulong desc_off,
                             const global int *pair_mask, ulong mask_off, uint use_mask,
                             const global uint *summaries, uint n_summaries, global float *out,
                             ulong out_off, ulong out_len, uint n_kv_heads, uint group,
                             uint head_dim, uint heads, local float *qs, uint summ_flags,
                             ulong cur_off, const global int *prev_rows, ulong rows_off,
                             float tau, global float *sims, ulong sims_off, global int *flags,
                             ulong flags_off, uint check_w) {
    uint n_blocks = (group + heads - 1) / heads, bh = get_group_id(1) / n_blocks;
    fkv_scores_group(q, q_off, q_rows, desc, desc_off, pair_mask, mask_off, use_mask, summaries,
                     n_summaries, out, out_off, out_len, n_kv_heads, group, head_dim, heads, qs,
                     summ_flags);
    barrier(CLK_LOCAL_MEM_FENCE); /* qs's queries are read; the check reuses it */
    fkv_check_pair(q + cur_off, q + q_off, q_rows, prev_rows[rows_off + bh / n_kv_heads], bh,
                   n_kv_heads, group, head_dim, tau, get_local_id(0), get_local_size(0), check_w,
                   qs, sims + sims_off + bh, flags + flags_off + bh,
                   get_group_id(0) == 0 && get_group_id(1) % n_blocks == 0);
}

/* The bytes unit table entry u reads for zero-copy recall: host allocation u[2] of the
 * launch's table (hosts[j]: the address of a fine-grained SVM allocation, hosts[n_hosts + j]:
 * its bytes; the backend lists them with clSetKernelExecInfo; addresses, not pointers, as an
 * OpenCL C 1.2 kernel takes no pointer to pointers), at element u[3] of elem_bytes; 0 when the
 * index or the unit's unit_bytes fall outside it. One table serves any number of allocations:
 * one launch. */
const global uchar *direct_unit(const global ulong *hosts, uint n_hosts, const global int *u,
                                uint elem_bytes, ulong unit_bytes) {
    uint j = (uint)u[2];
    if (j >= n_hosts)
        return 0;
    ulong lim = hosts[n_hosts + j], off = (ulong)(uint)u[3] * elem_bytes;
    if (off > lim || unit_bytes > lim - off)
        return 0;
    return (const global uchar *)(hosts[j] + off);
}

/* Layout moves copy bits in words: fkv_bits_t (one element) or uint4 (16 bytes) when rows are
 * a multiple of 16 bytes and aligned. row_words = words per (token, head) row of d elements.
 * One flat range on dimension 0 (no per-dimension grid cap such as NVIDIA's 65535 in dim 1):
 * work item gid moves word gid % row_words of row gid / row_words, so consecutive work items
 * touch consecutive addresses. */
#define FKV_COPY_KERNELS(SFX, word_t)                                                          \
    /* NHD -> HND: page gslots[i] into dst page i as [n_kv_heads][K|V][p][d]. */              \
    kernel void fkv_pack_hnd##SFX(const global word_t *kpool, const global word_t *vpool,      \
                                  const global int *gslots, ulong gslots_off, uint n_pages,    \
                                  uint n_kv_heads, uint row_words, uint page_size,             \
                                  uint n_slots, global word_t *dst, ulong dst_off) {           \
        size_t gid = get_global_id(0), w = gid % row_words, row = gid / row_words;             \
        size_t rows_per_page = 2 * (size_t)page_size * n_kv_heads;                             \
        size_t i = row / rows_per_page, r = row % rows_per_page;                               \
        if (i >= n_pages)                                                                      \
            return;                                                                            \
        int gslot = gslots[gslots_off + i];                                                    \
        if (gslot < 0 || (uint)gslot >= n_slots)                                               \
            return;                                                                            \
        size_t h = r / (2 * page_size), kv = (r / page_size) % 2, t = r % page_size;           \
        size_t src = (((size_t)gslot * page_size + t) * n_kv_heads + h) * row_words + w;       \
        dst[dst_off + row * row_words + w] = kv ? vpool[src] : kpool[src];                     \
    }                                                                                          \
    /* HND -> NHD: unit i ([K|V][p][d]) into KV head units[2i+1] of slot units[2i]. */         \
    kernel void fkv_scatter_hnd##SFX(const global word_t *src, ulong src_off, uint n_units,    \
                                     const global int *units, ulong units_off,                 \
                                     uint n_kv_heads, uint row_words, uint page_size,          \
                                     uint n_slots, global word_t *kpool,                       \
                                     global word_t *vpool) {                                   \
        size_t gid = get_global_id(0), w = gid % row_words, row = gid / row_words;             \
        size_t i = row / (2 * page_size), r = row % (2 * page_size);                           \
        if (i >= n_units)                                                                      \
            return;                                                                            \
        int slot = units[units_off + 2 * i], h = units[units_off + 2 * i + 1];                 \
        if (slot < 0 || (uint)slot >= n_slots || h < 0 || (uint)h >= n_kv_heads)               \
            return;                                                                            \
        size_t kv = r / page_size, t = r % page_size;                                          \
        size_t dst = (((size_t)slot * page_size + t) * n_kv_heads + h) * row_words + w;        \
        word_t x = src[src_off + row * row_words + w];                                         \
        if (kv)                                                                                \
            vpool[dst] = x;                                                                    \
        else                                                                                   \
            kpool[dst] = x;                                                                    \
    }                                                                                          \
    /* Zero-copy recall of units [0, n_units) of the table: unit i is units[4i..4i+3] = {slot, \
     * head, host, offset in elements}, host an index into the launch's table of host          \
     * allocations (direct_unit). Units that would read outside their allocation are skipped. */ \
    kernel void fkv_recall_direct##SFX(                                                        \
        const global ulong *hosts, uint n_hosts, uint n_units,                                 \
        const global int *units, ulong units_off, uint elem_bytes,               \
        uint n_kv_heads, uint row_words, uint page_size, uint n_slots, global word_t *kpool,   \
        global word_t *vpool) {                                                                \
        size_t gid = get_global_id(0), w = gid % row_words, row = gid / row_words;             \
        size_t i = row / (2 * page_size), r = row % (2 * page_size);                           \
        if (i >= n_units)                                                                      \
            return;                                                                            \
        const global int *u = units + units_off + 4 * i;                                       \
        int slot = u[0], h = u[1];                                                             \
        if (slot < 0 || (uint)slot >= n_slots || h < 0 || (uint)h >= n_kv_heads)               \
            return;                                                                            \
        const global uchar *src = direct_unit(hosts, n_hosts, u, elem_bytes,                   \
                                              2 * (ulong)page_size * row_words * sizeof(word_t)); \
        if (src == 0)                                                                          \
            return;                                                                            \
        size_t kv = r / page_size, t = r % page_size;                                          \
        size_t dst = (((size_t)slot * page_size + t) * n_kv_heads + h) * row_words + w;        \
        word_t x = ((const global word_t *)src)[r * row_words + w];                            \
        if (kv)                                                                                \
            vpool[dst] = x;                                                                    \
        else                                                                                   \
            kpool[dst] = x;                                                                    \
    }

FKV_COPY_KERNELS(, fkv_bits_t)
FKV_COPY_KERNELS(_v16, uint4)

/* ---- quantized host formats (common/hostfmt.h, docs/pipeline.md "Host formats") ----
 * A unit of page P, head dim D, B-bit codes, L = 2^B - 1 levels:
 * [K codes P*D][V codes P*D][K scale D][K zero D][V scale P][V zero P], f16 little-endian.
 * The scale and zero must be the reference's bits on every device, so their directed f16
 * roundings and the f32 division by L are integer operations here (no rounding mode, no
 * denormal flushing, no vstore_half_rtp, which is not in every OpenCL C). */

/* f32 bits u rounded to f16 towards +inf (up) or -inf, as common/hostfmt.c's f16_directed:
 * an infinity in either direction where round-to-nearest would overflow (|x| >= 65520), else
 * IEEE directed rounding. */
uint fkv_f16_directed(uint u, uint up) {
    uint a = u & 0x7fffffffu;
    if (a >= 0x477ff000u && a <= 0x7f800000u)
        return ((u >> 16) & 0x8000u) | 0x7c00u;
    return f16_bits_round(u, up);
}

/* The f16 scale of a group: (a / levels in f32, rounded to nearest even) rounded up to f16,
 * with a = hi - zero >= 0. The division is done on the integer mantissa, so it is the
 * correctly rounded quotient whatever the device's f32 division does. */
uint fkv_quant_scale(float a, uint levels) {
    uint u = as_uint(a);
    if (u >= 0x7f800000u)
        return u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    if (u < 0x33800000u) /* a < 2^-24: the quotient rounds up to 2^-24 unless it is 0 */
        return u >= 0x00800000u || 2u * u > levels ? 1u : 0u;
    uint n = ((u & 0x7fffffu) | 0x800000u) << 8, q = n / levels, rem = n % levels;
    uint sh = 8u - clz(q); /* q has 24 + sh bits */
    uint kept = q >> sh, low = q & ((1u << sh) - 1u);
    uint twice = 2u * (low * levels + rem), tie = levels << sh; /* dropped part vs 1/2 */
    if (twice > tie || (twice == tie && (kept & 1u)))
        kept++;
    /* value = kept * 2^(e - 158 + sh), kept in [2^23, 2^24] (2^24 carries into the exponent) */
    uint bits = ((((u >> 23) - 8u + sh)) << 23) + kept - 0x800000u;
    return fkv_f16_directed(bits, 1u);
}

/* The f16 zero and scale of a group with minimum lo and maximum hi, as hostfmt.c's
 * fkv_hostfmt_params: NaN for both when the group held a NaN or an infinity or either would
 * not be a finite f16. */
void fkv_quant_params(float lo, float hi, int nonfinite, uint levels, uint *zero, uint *scale) {
    uint z = fkv_f16_directed(as_uint(lo), 0u);
    uint s = fkv_quant_scale(hi - fkv_f16_value(z), levels);
    if (nonfinite || (z & 0x7c00u) == 0x7c00u || (s & 0x7c00u) == 0x7c00u)
        z = s = 0x7e00u;
    *zero = z;
    *scale = s;
}

/* The code of x: clamp(round_half_even((x - zero) / scale), 0, levels), 0 when scale is not
 * positive (a constant group, a NaN group). */
uint fkv_quant_code(float x, float zero, float scale, uint levels) {
    if (!(scale > 0.0f))
        return 0u;
    float q = rint((x - zero) / scale);
    return !(q > 0.0f) ? 0u : q >= (float)levels ? levels : (uint)q;
}

int fkv_is_finite_bits(float x) { return (as_uint(x) & 0x7f800000u) != 0x7f800000u; }

/* Element (t, c) of K (kv 0) or V (kv 1) of a quantized unit, dequantized:
 * fmaf(scale, code, zero) (exact: the product needs no rounding). */
float fkv_unit_value(const global uchar *unit, uint bits, uint page_size, uint head_dim,
                     uint kv, uint t, uint c) {
    size_t pd = (size_t)page_size * head_dim, codes = pd * bits / 8, i = (size_t)t * head_dim + c;
    const global uchar *cb = unit + kv * codes;
    uint code = bits == 8u ? cb[i] : (cb[i / 2] >> (i % 2 * 4)) & 0xfu;
    size_t params = 2 * codes + (kv ? 4 * (size_t)head_dim + 2 * (size_t)t : 2 * (size_t)c);
    size_t step = kv ? 2 * (size_t)page_size : 2 * (size_t)head_dim; /* scale -> zero */
    uint s = unit[params] | (uint)unit[params + 1] << 8;
    uint z = unit[params + step] | (uint)unit[params + step + 1] << 8;
    return fma(fkv_f16_value(s), (float)code, fkv_f16_value(z));
}

/* ---- quantized host formats, vectorized: FKV_VW channels at a time ---- */

#if FKV_VW == 16
#define FKV_HVW 8 /* a q4 tile's code bytes */
#elif FKV_VW == 8
#define FKV_HVW 4
#else
#define FKV_HVW 2
#endif

/* v to elements i .. i+FKV_VW-1 of p, each as fkv_store would store it; maybe_nan: v may hold
 * a NaN (else it holds none). */
void fkv_storev(global fkv_kv_t *p, size_t i, fkv_vec v, int maybe_nan) {
#if FKV_DTYPE == 0
    fkv_vstore(v, 0, p + i);
#elif FKV_DTYPE == 1
    if (maybe_nan) { /* fkv_store's canonical NaN, lane by lane */
        float x[FKV_VW];
        fkv_vstore(v, 0, x);
        for (uint l = 0; l < FKV_VW; l++)
            fkv_store(p, i + l, x[l]);
        return;
    }
    FKV_CAT(FKV_CAT(vstore_half, FKV_VW), _rte)(v, 0, (global half *)(p + i));
#else
    fkv_uvec u = FKV_CAT(as_uint, FKV_VW)(v);
    fkv_uvec r = select((u + 0x7fffu + ((u >> 16) & 1u)) >> 16, (u >> 16) | 0x40u,
                        (u & 0x7fffffffu) > 0x7f800000u);
    FKV_CAT(vstore, FKV_VW)(FKV_CAT(convert_ushort, FKV_VW)(r), 0, p + i);
#endif
}

/* FKV_VW codes of a unit's code bytes cb from element e (e even) as floats: q8 one byte each,
 * q4 element 2j in the low nibble of byte j. */
fkv_vec fkv_codes_at(const global uchar *cb, size_t e, uint bits) {
    if (bits == 8u)
        return FKV_CAT(convert_float, FKV_VW)(FKV_CAT(vload, FKV_VW)(0, cb + e));
    FKV_CAT(uchar, FKV_HVW) b = FKV_CAT(vload, FKV_HVW)(0, cb + e / 2);
    fkv_vec x;
    x.even = FKV_CAT(convert_float, FKV_HVW)(b & (uchar)0xfu);
    x.odd = FKV_CAT(convert_float, FKV_HVW)(b >> (uchar)4);
    return x;
}

/* The f16 at byte a of a unit, as f32. */
float fkv_unit_f16(const global uchar *unit, size_t a) {
    return fkv_f16_value(unit[a] | (uint)unit[a + 1] << 8);
}

/* Dequantizes one tile of a unit: channels c0 .. c0+FKV_VW-1 (fewer at the end of a row: then
 * element by element) of K (kv 0) or V (kv 1) over its P tokens, token t to
 * pool[dst + t*row_stride ..]. A key tile decodes its FKV_VW scales and zeros once, a value
 * tile one pair per token; fma(scale, code, zero) lane by lane, as fkv_unit_value. */
void fkv_dequant_tile(const global uchar *unit, uint bits, uint page_size, uint head_dim,
                      uint kv, uint c0, global fkv_kv_t *pool, size_t dst, size_t row_stride) {
    if (head_dim - c0 < FKV_VW) {
        for (uint t = 0; t < page_size; t++)
            for (uint c = c0; c < head_dim; c++)
                fkv_store(pool, dst + t * row_stride + (c - c0),
                          fkv_unit_value(unit, bits, page_size, head_dim, kv, t, c));
        return;
    }
    size_t codes = (size_t)page_size * head_dim * bits / 8;
    const global uchar *cb = unit + kv * codes;
    /* this half's scales, then its zeros `zstep` bytes on */
    size_t sa = 2 * codes + kv * 4 * (size_t)head_dim;
    size_t zstep = kv ? 2 * (size_t)page_size : 2 * (size_t)head_dim;
    /* a value is NaN only where its scale or zero is not finite (a code is at most 255) */
    fkv_vec s = 0.0f, z = 0.0f;
    int special = 0;
    if (kv == 0u) {
        float sv[FKV_VW], zv[FKV_VW];
        for (uint l = 0; l < FKV_VW; l++) {
            sv[l] = fkv_unit_f16(unit, sa + 2 * (size_t)(c0 + l));
            zv[l] = fkv_unit_f16(unit, sa + zstep + 2 * (size_t)(c0 + l));
            special |= !fkv_is_finite_bits(sv[l]) | !fkv_is_finite_bits(zv[l]);
        }
        s = fkv_vload(0, sv);
        z = fkv_vload(0, zv);
    }
    for (uint t = 0; t < page_size; t++) {
        if (kv) {
            float st = fkv_unit_f16(unit, sa + 2 * (size_t)t);
            float zt = fkv_unit_f16(unit, sa + zstep + 2 * (size_t)t);
            special = !fkv_is_finite_bits(st) | !fkv_is_finite_bits(zt);
            s = (fkv_vec)(st);
            z = (fkv_vec)(zt);
        }
        fkv_vec code = fkv_codes_at(cb, (size_t)t * head_dim + c0, bits);
        fkv_storev(pool, dst + t * row_stride, fma(s, code, z), special);
    }
}

/* fkv_quant_code lane by lane: the codes of x in groups of zero z and scale s. */
fkv_uvec fkv_quant_codes(fkv_vec x, fkv_vec z, fkv_vec s, uint levels) {
    fkv_vec q = rint((x - z) / s);
    q = select(fmin(q, (float)levels), (fkv_vec)0.0f, !(q > 0.0f) | !(s > 0.0f));
    return FKV_CAT(convert_uint, FKV_VW)(q);
}

/* Min, max and whether any is not finite, of n stored values from at, step apart, in order
 * (`x < lo ? x : lo`: of equal values the first, which matters for the sign of a zero only). */
void fkv_scan_group(const global fkv_kv_t *pool, size_t at, size_t n, size_t step, float *lo,
                    float *hi, int *nonfinite) {
    for (size_t j = 0; j < n; j++) {
        float x = fkv_load(pool, at + j * step);
        *nonfinite |= !fkv_is_finite_bits(x);
        *lo = x < *lo ? x : *lo;
        *hi = x > *hi ? x : *hi;
    }
}

/* Group g (key channel g < D, else value token g - D) of a unit being packed: its f16 zero
 * and scale into the unit at out, their f32 values to zs[g] and zs[D + P + g]. */
void fkv_quant_group(global uchar *out, local float *zs, size_t codes, uint head_dim,
                     uint page_size, uint g, float lo, float hi, int nonfinite, uint levels) {
    uint z, s;
    fkv_quant_params(lo, hi, nonfinite, levels, &z, &s);
    size_t d = head_dim, p = page_size, key = g < head_dim;
    size_t sa = 2 * codes + (key ? 2 * (size_t)g : 4 * d + 2 * (size_t)(g - head_dim));
    size_t za = sa + (key ? 2 * d : 2 * p);
    out[sa] = (uchar)s, out[sa + 1] = (uchar)(s >> 8);
    out[za] = (uchar)z, out[za + 1] = (uchar)(z >> 8);
    zs[g] = fkv_f16_value(z);
    zs[d + p + g] = fkv_f16_value(s);
}

/* Quantizing pack (pack_hnd with a q8/q4 host format): one work group per (page i, KV head
 * h), unit i*n_kv_heads + h of dst (from byte dst_off). First the groups (fkv_quant_group),
 * one work item per tile of FKV_VW key channels (over the P tokens, lane by lane in order) or
 * per value token (its D channels FKV_VW at a time; a zero minimum or maximum then takes the
 * first zero's sign, as the scan in order would); a shorter last tile of a row value by value.
 * Then the codes, one work item per tile of one token of K or V (a q4 byte holds two channels
 * of one tile). zs: 2*(D + P) floats of local memory. */
kernel void fkv_quant_pack(const global fkv_kv_t *kpool, const global fkv_kv_t *vpool,
                           const global int *gslots, ulong gslots_off, uint n_kv_heads,
                           uint head_dim, uint page_size, uint n_slots, uint bits,
                           global uchar *dst, ulong dst_off, local float *zs) {
    uint lid = get_local_id(0), w = get_local_size(0), unit = get_group_id(0);
    uint i = unit / n_kv_heads, h = unit % n_kv_heads, levels = (1u << bits) - 1u;
    int gslot = gslots[gslots_off + i];
    if (gslot < 0 || (uint)gslot >= n_slots)
        return; /* uniform over the work group: no barrier is skipped by part of it */
    size_t d = head_dim, p = page_size, re = (size_t)n_kv_heads * d, pd = p * d;
    size_t first = (size_t)gslot * p * re + (size_t)h * d, codes = pd * bits / 8;
    size_t unit_bytes = 2 * codes + 4 * (d + p), ng = d + p;
    global uchar *out = dst + dst_off + (size_t)unit * unit_bytes;
    uint tiles = (head_dim + FKV_VW - 1) / FKV_VW;
    for (uint g = lid; g < tiles + page_size; g += w) {
        if (g >= tiles) { /* value token t */
            uint t = g - tiles;
            size_t at = first + t * re;
            float lo = INFINITY, hi = -INFINITY;
            int nonfinite = 0;
            uint c = 0;
            if (head_dim >= FKV_VW) {
                fkv_vec vlo = INFINITY, vhi = -INFINITY;
                FKV_CAT(int, FKV_VW) nf = 0;
                for (; c + FKV_VW <= head_dim; c += FKV_VW) {
                    fkv_vec x = fkv_loadv(vpool, at + c);
                    nf |= (FKV_CAT(as_uint, FKV_VW)(x) & 0x7f800000u) == 0x7f800000u;
                    vlo = select(vlo, x, x < vlo);
                    vhi = select(vhi, x, x > vhi);
                }
                lo = -fkv_hmax(-vlo);
                hi = fkv_hmax(vhi);
                nonfinite = any(nf);
            }
            fkv_scan_group(vpool, at + c, head_dim - c, 1, &lo, &hi, &nonfinite);
            if (lo == 0.0f || hi == 0.0f) { /* the first zero's sign */
                float z0 = 0.0f;
                for (c = 0; c < head_dim; c++) {
                    z0 = fkv_load(vpool, at + c);
                    if (z0 == 0.0f)
                        break;
                }
                lo = lo == 0.0f ? z0 : lo;
                hi = hi == 0.0f ? z0 : hi;
            }
            fkv_quant_group(out, zs, codes, head_dim, page_size, head_dim + t, lo, hi, nonfinite,
                            levels);
            continue;
        }
        uint c0 = g * FKV_VW; /* key channels c0 .. */
        if (head_dim - c0 < FKV_VW) {
            for (uint c = c0; c < head_dim; c++) {
                float lo = INFINITY, hi = -INFINITY;
                int nonfinite = 0;
                fkv_scan_group(kpool, first + c, p, re, &lo, &hi, &nonfinite);
                fkv_quant_group(out, zs, codes, head_dim, page_size, c, lo, hi, nonfinite, levels);
            }
            continue;
        }
        fkv_vec vlo = INFINITY, vhi = -INFINITY;
        FKV_CAT(int, FKV_VW) nf = 0;
        for (uint t = 0; t < page_size; t++) {
            fkv_vec x = fkv_loadv(kpool, first + t * re + c0);
            nf |= (FKV_CAT(as_uint, FKV_VW)(x) & 0x7f800000u) == 0x7f800000u;
            vlo = select(vlo, x, x < vlo);
            vhi = select(vhi, x, x > vhi);
        }
        float lov[FKV_VW], hiv[FKV_VW];
        int nfv[FKV_VW];
        fkv_vstore(vlo, 0, lov);
        fkv_vstore(vhi, 0, hiv);
        FKV_CAT(vstore, FKV_VW)(nf, 0, nfv);
        for (uint l = 0; l < FKV_VW; l++)
            fkv_quant_group(out, zs, codes, head_dim, page_size, c0 + l, lov[l], hiv[l],
                            nfv[l] != 0, levels);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint r = lid; r < 2 * page_size * tiles; r += w) {
        uint kv = r / (page_size * tiles), t = r / tiles % page_size, c0 = r % tiles * FKV_VW;
        const global fkv_kv_t *pool = kv ? vpool : kpool;
        size_t at = first + t * re, e = (size_t)t * d + c0;
        global uchar *cb = out + kv * codes;
        if (head_dim - c0 < FKV_VW) { /* whole bytes: c0 and D are even */
            for (uint c = c0; c < head_dim; c += 8u / bits) {
                uint grp = kv ? head_dim + t : c, byte = 0;
                for (uint k = 0; k < 8u / bits; k++) {
                    float x = fkv_load(pool, at + c + k);
                    grp = kv ? grp : c + k;
                    byte |= fkv_quant_code(x, zs[grp], zs[ng + grp], levels) << (k * bits);
                }
                cb[((size_t)t * d + c) * bits / 8] = (uchar)byte;
            }
            continue;
        }
        fkv_vec z, s;
        if (kv) {
            z = (fkv_vec)(zs[d + t]);
            s = (fkv_vec)(zs[ng + d + t]);
        } else {
            z = fkv_vload(0, zs + c0);
            s = fkv_vload(0, zs + ng + c0);
        }
        fkv_uvec q = fkv_quant_codes(fkv_loadv(pool, at + c0), z, s, levels);
        if (bits == 8u)
            FKV_CAT(vstore, FKV_VW)(FKV_CAT(convert_uchar, FKV_VW)(q), 0, cb + e);
        else
            FKV_CAT(vstore, FKV_HVW)(FKV_CAT(convert_uchar, FKV_HVW)(q.even | q.odd << 4u), 0,
                                     cb + e / 2);
    }
}

/* Work item gid of a dequantizing launch: unit gid / (2*tiles); then K's tiles of FKV_VW
 * channels, then V's (tiles = ceil(D / FKV_VW)), so neighbours write neighbouring channels. */
void fkv_dequant_item(const global uchar *unit, size_t r, uint tiles, uint slot, uint h,
                      uint n_kv_heads, uint head_dim, uint page_size, uint bits,
                      global fkv_kv_t *kpool, global fkv_kv_t *vpool) {
    uint kv = (uint)r / tiles, c0 = (uint)r % tiles * FKV_VW;
    size_t dst = ((size_t)slot * page_size * n_kv_heads + h) * head_dim + c0;
    fkv_dequant_tile(unit, bits, page_size, head_dim, kv, c0, kv ? vpool : kpool, dst,
                     (size_t)n_kv_heads * head_dim);
}

/* Dequantizing scatter (scatter_hnd from q8/q4 units): unit i (from byte src_off, unit_bytes
 * apart) into KV head units[2i+1] of slot units[2i]; one work item per tile
 * (fkv_dequant_item). */
kernel void fkv_dequant_scatter(const global uchar *src, ulong src_off, ulong unit_bytes,
                                uint n_units, const global int *units, ulong units_off,
                                uint n_kv_heads, uint head_dim, uint page_size, uint n_slots,
                                uint bits, global fkv_kv_t *kpool, global fkv_kv_t *vpool) {
    uint tiles = (head_dim + FKV_VW - 1) / FKV_VW;
    size_t gid = get_global_id(0), i = gid / (2 * tiles);
    if (i >= n_units)
        return;
    int slot = units[units_off + 2 * i], h = units[units_off + 2 * i + 1];
    if (slot < 0 || (uint)slot >= n_slots || h < 0 || (uint)h >= n_kv_heads)
        return;
    fkv_dequant_item(src + src_off + i * unit_bytes, gid % (2 * tiles), tiles, (uint)slot,
                     (uint)h, n_kv_heads, head_dim, page_size, bits, kpool, vpool);
}

/* Dequantizing zero-copy recall (recall_direct from q8/q4 units): as fkv_recall_direct (units
 * [0, n_units) of the table, hosts through direct_unit), one work item per tile. */
kernel void fkv_dequant_direct(const global ulong *hosts, uint n_hosts, uint n_units,
                               const global int *units, ulong units_off, uint elem_bytes,
                               ulong unit_bytes, uint n_kv_heads, uint head_dim, uint page_size,
                               uint n_slots, uint bits, global fkv_kv_t *kpool,
                               global fkv_kv_t *vpool) {
    uint tiles = (head_dim + FKV_VW - 1) / FKV_VW;
    size_t gid = get_global_id(0), i = gid / (2 * tiles);
    if (i >= n_units)
        return;
    const global int *u = units + units_off + 4 * i;
    int slot = u[0], h = u[1];
    if (slot < 0 || (uint)slot >= n_slots || h < 0 || (uint)h >= n_kv_heads)
        return;
    const global uchar *src = direct_unit(hosts, n_hosts, u, elem_bytes, unit_bytes);
    if (src == 0)
        return;
    fkv_dequant_item(src, gid % (2 * tiles), tiles, (uint)slot, (uint)h, n_kv_heads, head_dim,
                     page_size, bits, kpool, vpool);
}

/* Rows of shared memory are padded to this many floats (FKV_ATTENTION_PAD). */
#define FKV_ATTN_PAD 16

/* Lane numbers 0 .. FKV_VW-1. */
#if FKV_VW == 16
#define FKV_LANES (int16)(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#elif FKV_VW == 8
#define FKV_LANES (int8)(0, 1, 2, 3, 4, 5, 6, 7)
#else
#define FKV_LANES (int4)(0, 1, 2, 3)
#endif

/* FKV_VW scores of a tile from t, -Inf past its nt tokens. */
fkv_vec fkv_scores_at(const local float *row, uint t, uint nt) {
    return select(fkv_vload(0, row + t), (fkv_vec)(-INFINITY), FKV_LANES + (int)t >= (int)nt);
}

/* The first n lanes of v to p. */
void fkv_store_lanes(global float *p, fkv_vec v, uint n) {
    if (n >= FKV_VW) {
        fkv_vstore(v, 0, p);
        return;
    }
    float x[FKV_VW];
    fkv_vstore(v, 0, x);
    for (uint i = 0; i < n; i++)
        p[i] = x[i];
}

/* Query heads one attention work group serves at most: each work item keeps an accumulator
 * per head in registers (backends/launch.h, FKV_ATTENTION_MAX_HEADS). The per-head code is
 * written out for each of them (FKV_HEADS(X) expands X(0) .. X(7), each guarded by g < G),
 * so the accumulators are eight variables, never an indexed array in memory. */
#define FKV_HEADS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define FKV_ACC_DECL(g) fkv_vec acc##g = (fkv_vec)(0.0f);
#define FKV_S_DECL(g) fkv_vec s##g = (fkv_vec)(0.0f);
#define FKV_S_ADD(g)                                                                           \
    if (g < G)                                                                                 \
        s##g += fkv_vload(0, qs + g * dq + c) * k;
#define FKV_S_PUT(g)                                                                           \
    if (g < G)                                                                                 \
        sc[g * tp + t] = fkv_hsum(s##g);
#define FKV_A_SCALE(g)                                                                         \
    if (g < G)                                                                                 \
        acc##g *= st[2 * G + g];
#define FKV_A_ADD(g)                                                                           \
    if (g < G)                                                                                 \
        acc##g += sc[g * tp + t] * v;
#define FKV_A_PUT(g)                                                                           \
    if (g < G) {                                                                               \
        float l = st[G + g];                                                                   \
        fkv_vec o = n_splits > 1 ? acc##g : l > 0.0f ? acc##g / l : (fkv_vec)(0.0f);           \
        fkv_store_lanes(dst + (size_t)g * stride, o, n);                                       \
    }

/* Entry e of a (sequence, KV head)'s list: (gslot, valid tokens), valid 0 for a slot outside
 * the pool; dense_tokens >= 0: contiguous K/V, entry e is slot e. */
int2 fkv_attn_entry(const global int *entries, ulong entries_off, int first, int e,
                    int dense_tokens, uint page_size, uint n_slots) {
    int gslot, valid;
    if (dense_tokens >= 0) {
        gslot = e;
        valid = min((int)page_size, dense_tokens - e * (int)page_size);
    } else {
        gslot = entries[entries_off + 2 * (size_t)(first + e)];
        valid = entries[entries_off + 2 * (size_t)(first + e) + 1];
    }
    valid = clamp(valid, 0, (int)page_size);
    if (gslot < 0 || (uint)gslot >= n_slots)
        valid = 0; /* uniform over the group: the barriers stay matched */
    return (int2)(gslot, valid);
}

/* On CPU devices (the host defines FKV_PREFETCH there) each K/V load of a tile goes with a
 * prefetch of the same channels of the next tile's row: a head's rows are short runs a whole
 * row of every KV head apart, which the hardware prefetchers follow poorly and a CPU cannot
 * hide by switching work groups; one prefetch a load spreads them out, where a whole tile's
 * at once would overflow the misses a core can hold. */
void fkv_prefetch(const global fkv_kv_t *p) { FKV_PREFETCH_AT(p); }

/* Channels c.. of a row at `row` of the pool (zeros from head_dim d), asking for the same
 * channels of the row at next_row when has_next. */
fkv_vec fkv_row_at(const global fkv_kv_t *pool, size_t row, size_t next_row, int has_next,
                   uint c, uint d) {
    if (has_next && c < d)
        fkv_prefetch(pool + next_row + c);
    return c < d ? fkv_loadv_row(pool + row + c, d - c) : (fkv_vec)(0.0f);
}

#ifdef FKV_ROW_COPIES
/* Rows [0, nt) of a tile (row t at base + t*row_elems, head_dim d) into dst[t*ldk + c], f32,
 * zeros from d to dq; work item lid copies whole rows lid, lid + w, ..., asking for the same
 * row of the next tile (next + t*row_elems, rows below n_next) along the way. On CPU devices
 * (the host defines FKV_ROW_COPIES there) a work group's items run one after another, so an
 * item reading a short run of every row (its channels, as on a GPU) makes a pass over the
 * tile per item; whole rows are one pass, and the cache lines of a row are adjacent. */
void fkv_copy_rows(const global fkv_kv_t *pool, size_t base, size_t next, int n_next, uint nt,
                   size_t row_elems, uint d, uint dq, uint ldk, uint lid, uint w,
                   local float *dst) {
    for (uint t = lid; t < nt; t += w)
        for (uint c = 0; c < dq; c += FKV_VW)
            fkv_vstore(fkv_row_at(pool, base + t * row_elems, next + t * row_elems,
                                  (int)t < n_next, c, d),
                       0, dst + t * ldk + c);
}
#endif

/* A tile's K vector (token t, channels c..) for its scores and V vector (token t, this item's
 * channels) for its accumulation: on CPU devices K straight from the pool (token t's whole
 * row, one pass over the tile, no copy) and V from its copy in kt; on GPUs K from its copy in
 * kt and V from the pool. */
#ifdef FKV_ROW_COPIES
#define FKV_TILE_K(t, c)                                                                       \
    fkv_row_at(kpool, tile_row + (t) * row_elems, next + (t) * row_elems, (t) < (uint)n_next, \
               c, d)
#define FKV_TILE_V(t) fkv_vload(0, kt + (t) * ldk + cv)
#else
#define FKV_TILE_K(t, c) fkv_vload(0, kt + (t) * ldk + (c))
#define FKV_TILE_V(t)                                                                          \
    fkv_row_at(vpool, tile_row + (t) * row_elems, next + (t) * row_elems, (t) < (uint)n_next, \
               cv, d)
#endif
/* The tile's scores: work item lid sums q.k of tokens lid, lid + w, ... for every head. */
#define FKV_TILE_SCORES                                                                        \
    for (uint t = lid; t < nt; t += w) {                                                       \
        FKV_HEADS(FKV_S_DECL)                                                                  \
        for (uint c = 0; c < dq; c += FKV_VW) {                                                \
            fkv_vec k = FKV_TILE_K(t, c);                                                      \
            FKV_HEADS(FKV_S_ADD)                                                               \
        }                                                                                      \
        FKV_HEADS(FKV_S_PUT)                                                                   \
    }
/* The tile's weighted V rows into this item's channels of every head. */
#define FKV_TILE_ACCUMULATE                                                                    \
    for (uint t = 0; t < nt; t++) {                                                            \
        fkv_vec v = FKV_TILE_V(t);                                                             \
        FKV_HEADS(FKV_A_ADD)                                                                   \
    }
/* LOOP written out for G == 4 and G == 8, GQA's usual groups, beside any G: where G is a
 * constant the compiler drops the per-head `g < G` tests from the inner loops (docs/bench.md,
 * "K from the pool, the usual groups written out"). G is uniform over the work group. */
#define FKV_USUAL_G(LOOP)                                                                      \
    if (G == 4) {                                                                              \
        LOOP                                                                                   \
    } else if (G == 8) {                                                                       \
        LOOP                                                                                   \
    } else {                                                                                   \
        LOOP                                                                                   \
    }

/* Channel c of one query head's output from its n_splits partials at p, `stride` floats apart
 * ((max, sum, unnormalised acc[d]) each): the split attention's combination, run by
 * fkv_attention_reduce or by the attention's last work group (the same bits either way). */
inline float fkv_combine_splits(const global float *p, size_t stride, uint n_splits, uint c) {
    float m = -INFINITY;
    for (uint s = 0; s < n_splits; s++)
        m = fmax(m, p[s * stride]);
    float l = 0.0f, a = 0.0f;
    if (m != -INFINITY) {
        for (uint s = 0; s < n_splits; s++) {
            float ms = p[s * stride];
            if (ms == -INFINITY)
                continue; /* an empty split */
            float wgt = exp(ms - m);
            l += p[s * stride + 1] * wgt;
            a += p[s * stride + 2 + c] * wgt;
        }
    }
    return l > 0.0f ? a / l : 0.0f;
}

#ifdef FKV_DEVICE_ATOMICS
/* Whether this work group is the last of the n parts counted at *count to arrive, after each
 * wrote its results (then the others' are visible to it, and *count is 0 again for the next
 * launch). Every work item calls it (barriers); flag is one local word. */
inline int fkv_last_arrival(global uint *count, uint n, local uint *flag) {
    work_group_barrier(CLK_GLOBAL_MEM_FENCE, memory_scope_device); /* releases this group's */
    if (get_local_id(0) == 0) {
        volatile global atomic_uint *a = (volatile global atomic_uint *)count;
        uint before = atomic_fetch_add_explicit(a, 1u, memory_order_acq_rel, memory_scope_device);
        *flag = before + 1 == n;
        if (before + 1 == n)
            atomic_store_explicit(a, 0u, memory_order_relaxed, memory_scope_device);
    }
    work_group_barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE, memory_scope_device);
    return *flag != 0;
}
#endif

/* Paged decode attention with GQA: one work group per (sequence, KV head, block of `heads`
 * query heads, split) serves the block's query heads, so each K/V row is read once per block
 * (the whole group in one block up to 8 heads when local memory allows: backends/launch.c).
 * Tokens go in tiles of up to `tile` tokens of one page. Work item i owns channels
 * [i*FKV_VW, (i+1)*FKV_VW) of a row (dq = head_dim rounded up to FKV_ATTENTION_PAD, zeros past
 * head_dim):
 *  - on GPUs it copies them from each K row of the tile into local memory, converted in one
 *    vector;
 *  - work item i then sums q.k of tokens i, i + w, ... for every head of the block, FKV_VW
 *    channels a step (on CPU devices reading K from the pool: FKV_TILE_K);
 *  - on CPU devices the work items then copy the tile's V rows whole into local memory
 *    (fkv_copy_rows);
 *  - online softmax over the tile, one work item per head;
 *  - it accumulates its channels of every head of the block in registers, reading them from
 *    each V row of the tile, converted in one vector (on CPU devices from the V tile in local
 *    memory).
 * The work group has w = max(dq / FKV_VW, heads) work items (fkv_attention_threads). With
 * n_splits > 1 each group handles a contiguous share of the head's entries and writes (max,
 * sum, unnormalised acc) per query head to `part` for fkv_attention_reduce. dense_tokens >= 0
 * replaces the slot lists by contiguous K/V of that many tokens (pages of `page_size` tokens;
 * heads/entries are not read).
 * Local memory (fkv_attention_floats), with tp = tile rounded up to FKV_ATTN_PAD: qs
 * [heads*dq]; kt [tile*(dq+4)] (padded against bank conflicts); sc [heads*tp] (a softmax row
 * is read in vectors); st [3*heads] = running max, running sum, rescale factor. */
kernel void fkv_attention(const global float *q, ulong q_off, const global int *heads_list,
                          ulong heads_off, const global int *entries, ulong entries_off,
                          uint n_entries, int dense_tokens, const global fkv_kv_t *kpool,
                          const global fkv_kv_t *vpool, uint n_slots, uint n_kv_heads,
                          uint group, uint head_dim, uint page_size, uint tile, uint heads,
                          uint dq, uint n_splits, float scale, global float *out, ulong out_off,
                          global float *part, global uint *part_counts, uint fused,
                          local float *qs, local float *kt, local float *sc, local float *st) {
    const uint lid = get_local_id(0), w = get_local_size(0);
    const uint grp = get_group_id(0);
    const uint n_blocks = (group + heads - 1) / heads, per_bh = n_blocks * n_splits;
    const uint bh = grp / per_bh, split = grp % n_splits;
    const uint g_first = (grp % per_bh) / n_splits * heads;
    const uint G = min(heads, group - g_first); /* query heads of this work group */
    const uint h = bh % n_kv_heads;
    const uint d = head_dim, ldk = dq + 4, cv = FKV_VW * lid; /* this item's channels */
    const uint tp = (tile + FKV_ATTN_PAD - 1) / FKV_ATTN_PAD * FKV_ATTN_PAD; /* sc row */
    const size_t row_elems = (size_t)n_kv_heads * head_dim;
    /* query head (b, h*group + g) is row bh*group + g of q and out: [b][h*G+g][d] */
    const size_t qrow = (size_t)bh * group + g_first;

    const global float *qb = q + q_off + qrow * d;
    for (uint g = 0; g < G; g++)
        for (uint c = lid; c < dq; c += w)
            qs[g * dq + c] = c < d ? qb[g * d + c] * scale : 0.0f;
    for (uint g = lid; g < G; g += w) {
        st[g] = -INFINITY;
        st[G + g] = 0.0f;
        st[2 * G + g] = 1.0f;
    }
    FKV_HEADS(FKV_ACC_DECL)
    int first = 0, count;
    if (dense_tokens >= 0) {
        count = (dense_tokens + (int)page_size - 1) / (int)page_size;
    } else {
        first = heads_list[heads_off + 2 * (size_t)bh];
        count = max(heads_list[heads_off + 2 * (size_t)bh + 1], 0);
        /* A list that runs past the entries buffer is cut at its end. */
        if (first < 0 || (uint)first > n_entries)
            count = 0;
        else
            count = (int)min((long)count, (long)n_entries - first);
    }
    const int per = (count + (int)n_splits - 1) / (int)n_splits;
    const int e0 = min((int)split * per, count), e1 = min(e0 + per, count);
    barrier(CLK_LOCAL_MEM_FENCE);

    for (int e = e0; e < e1; e++) {
        const int2 ent =
            fkv_attn_entry(entries, entries_off, first, e, dense_tokens, page_size, n_slots);
        const int valid = ent.y;
        const size_t page_base = (size_t)ent.x * page_size * row_elems + (size_t)h * d;
        for (int t0 = 0; t0 < valid; t0 += (int)tile) {
            const uint nt = (uint)min((int)tile, valid - t0);
            const size_t tile_row = page_base + (size_t)t0 * row_elems;
            /* the next tile's first row: the rest of this page, else the next entry's first
             * tile (for fkv_prefetch) */
            size_t next = page_base + (size_t)(t0 + (int)tile) * row_elems;
            int n_next = valid - t0 - (int)tile;
            if (n_next <= 0 && e + 1 < e1) {
                int2 nx = fkv_attn_entry(entries, entries_off, first, e + 1, dense_tokens,
                                         page_size, n_slots);
                next = (size_t)nx.x * page_size * row_elems + (size_t)h * d;
                n_next = nx.y;
            }
            n_next = clamp(n_next, 0, (int)tile);
#ifndef FKV_ROW_COPIES
            if (cv < dq)
                for (uint t = 0; t < nt; t++)
                    fkv_vstore(fkv_row_at(kpool, tile_row + t * row_elems, next + t * row_elems,
                                          t < (uint)n_next, cv, d),
                               0, kt + t * ldk + cv);
            barrier(CLK_LOCAL_MEM_FENCE);
#endif
            FKV_USUAL_G(FKV_TILE_SCORES)
            barrier(CLK_LOCAL_MEM_FENCE);
#ifdef FKV_ROW_COPIES
            /* kt takes the V tile (the last tile's accumulation read it before the barrier at
             * its end). A barrier of its own: PoCL 3.1 got wrong outputs with this copy and the
             * softmax in one interval (docs/opencl.md). */
            fkv_copy_rows(vpool, tile_row, next, n_next, nt, row_elems, d, dq, ldk, lid, w, kt);
            barrier(CLK_LOCAL_MEM_FENCE);
#endif
            for (uint g = lid; g < G; g += w) { /* FKV_VW tokens at a time */
                local float *r = sc + g * tp;
                float m_old = st[g];
                fkv_vec mv = (fkv_vec)(m_old), sv = (fkv_vec)(0.0f);
                for (uint t = 0; t < nt; t += FKV_VW)
                    mv = fmax(mv, fkv_scores_at(r, t, nt));
                float m_new = fkv_hmax(mv);
                for (uint t = 0; t < nt; t += FKV_VW) {
                    fkv_vec p = exp(fkv_scores_at(r, t, nt) - m_new); /* 0 past nt */
                    fkv_vstore(p, 0, r + t);
                    sv += p;
                }
                float alpha = exp(m_old - m_new); /* 0 when nothing was seen yet */
                st[g] = m_new;
                st[G + g] = st[G + g] * alpha + fkv_hsum(sv);
                st[2 * G + g] = alpha;
            }
            barrier(CLK_LOCAL_MEM_FENCE);
            if (cv < d) {
                FKV_HEADS(FKV_A_SCALE)
                FKV_USUAL_G(FKV_TILE_ACCUMULATE)
            }
            barrier(CLK_LOCAL_MEM_FENCE); /* kt and sc are rewritten by the next tile */
        }
    }

    if (cv < d) {
        const uint n = min((uint)FKV_VW, d - cv);
        /* out, or part [bh][split][group][d+2] after (max, sum): this item's channels of head g
         * at dst + g * stride */
        global float *dst = n_splits == 1
                                ? out + out_off + qrow * d + cv
                                : part + (((size_t)bh * n_splits + split) * group + g_first) *
                                             (d + 2) + 2 + cv;
        const size_t stride = n_splits == 1 ? d : d + 2;
        FKV_HEADS(FKV_A_PUT)
    }
    if (n_splits > 1) {
        global float *pb = part + (((size_t)bh * n_splits + split) * group + g_first) * (d + 2);
        for (uint g = lid; g < G; g += w) {
            pb[(size_t)g * (d + 2)] = st[g];
            pb[(size_t)g * (d + 2) + 1] = st[G + g];
        }
    }
#ifdef FKV_DEVICE_ATOMICS
    /* fused: the block's last split to finish combines the block's heads (no second launch) */
    local uint last;
    if (fused && n_splits > 1 &&
        fkv_last_arrival(part_counts + grp / n_splits, n_splits, &last)) {
        const size_t stride = (size_t)group * (d + 2);
        const global float *p0 = part + ((size_t)bh * n_splits * group + g_first) * (d + 2);
        for (uint i = lid; i < G * d; i += w)
            out[out_off + qrow * d + i] =
                fkv_combine_splits(p0 + (size_t)(i / d) * (d + 2), stride, n_splits, i % d);
    }
#else
    (void)part_counts;
    (void)fused;
#endif
}

/* Combines the split partials of fkv_attention: one work item per output element. */
kernel void fkv_attention_reduce(const global float *part, uint n_bh, uint group, uint head_dim,
                                 uint n_splits, global float *out, ulong out_off) {
    size_t gid = get_global_id(0);
    size_t gd = (size_t)group * head_dim;
    size_t bh = gid / gd, g = (gid / head_dim) % group, c = gid % head_dim;
    if (bh >= n_bh)
        return;
    size_t stride = (size_t)group * (head_dim + 2);
    out[out_off + gid] =
        fkv_combine_splits(part + bh * n_splits * stride + g * (head_dim + 2), stride, n_splits, c);
}
