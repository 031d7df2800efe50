#version 450
/* Quantized host formats q8/q4 (common/hostfmt.h, docs/pipeline.md "Host formats"):
 * -DMODE=0 pack_hnd quantizing into units, 1 scatter_hnd and 2 recall_direct dequantizing
 * units into the slot dtype (-DFKV_DTYPE as common.glsl). A unit of page P, head dim D, B-bit
 * codes, L = 2^B - 1: [K codes P*D][V codes P*D][K scale D][K zero D][V scale P][V zero P],
 * f16 little-endian; units are bytes inside uint words (no 8-bit storage needed).
 *
 * The f16 scales and zeros must be the reference's bits: GLSL has no directed f16 rounding and
 * packHalf2x16's rounding is unspecified, and f32 division may be off by 2.5 ulp, so the
 * directed roundings and the division by L are integer code here. Only the code's
 * (x - zero) / scale uses the device's division (within one code: the tolerance table).
 *
 * Written for CPU devices too (lavapipe): there every buffer or shared-memory access is a
 * loop over the vector's lanes, both sides of a branch its lanes take run (memory accesses
 * included, masked), and a loop runs once more with no lane active. So each part below has
 * loops of its own rather than branches, and accesses are as few and as wide as they can be:
 * the pools are read and written a quad of channels at a time (D is a multiple of 4, so every
 * quad is 4-aligned), vec4 for f32 and uvec2 (four 16-bit elements) for f16/bf16, with or
 * without 16-bit storage (-DFKV_S16 changes nothing here).
 *
 * Pack: one workgroup per (page, KV head) unit (on a CPU device, D/4 + P lanes: vk_kernels.c).
 * First the groups: D/4 key channel quads (each over the tokens) and P value tokens (each
 * over its channels), min and max keeping the first of equal values as the reference does
 * (the sign of a zero matters); shared `par` keeps the f32 values of their f16 zeros and
 * scales as vec4s (SMEM = 2D + 4P floats). Then whole 32-bit words of the unit, from pairs
 * of quads of codes (one q4 word, two q8 words), the code row and channel stepped by a
 * constant: no division per word. What does not fit that (an odd number of quads per half;
 * a destination offset that is not word-aligned, whose words straddle two destination words
 * and go through atomics, the first and the last being shared with the neighbouring units)
 * takes a last, general loop. Scatter and direct: one invocation per key channel quad (over
 * the P tokens: its four scales and zeros decoded once) or value token (over its channels:
 * one scale and zero), per quad one word read of codes (two for q8 where the unit is not
 * word-aligned) and one store. The pools are bound as a window of n_slots slots from
 * slot_base (vk_kernels.c, plan_windows); direct binds up to five host windows at 3..7 as
 * copy.comp does, and runs one copy of its code per window so that each read reads one. */
#include "common.glsl"

#if FKV_DTYPE == 0
#define QUAD_T vec4
#else
#define QUAD_T uvec2
#endif
#if MODE == 0
RBUF(0, QUAD_T, kpool);
RBUF(1, QUAD_T, vpool);
#else
BUF(0, QUAD_T, kpool);
BUF(1, QUAD_T, vpool);
#endif
RBUF(2, int, idx);
#if MODE == 0
BUF(3, uint, ext);
#elif MODE == 1
RBUF(3, uint, ext);
#else
RBUF(3, uint, ext0);
RBUF(4, uint, ext1);
RBUF(5, uint, ext2);
RBUF(6, uint, ext3);
RBUF(7, uint, ext4);
#endif
#if MODE != 2
/* ext_off: bytes from the binding's start; n: pages (pack) or units (scatter). */
layout(push_constant) uniform PC {
    uint ext_off, n, idx_off, n_kv_heads, head_dim, page_size, n_slots, total, bits, slot_base;
} pc;
#else
/* As copy.comp's direct mode; elem_bits = element bytes | bits << 8. */
layout(push_constant) uniform PC {
    uint elem_bits, n, idx_off, n_kv_heads, head_dim, page_size, n_slots, total, first,
        slot_base, end0, end1, end2, end3, end4, base0, base1, base2, base3, base4;
} pc;
#endif

/* f32 bits u rounded to f16 towards +inf (up = 1) or -inf (0), as common/hostfmt.c's
 * f16_directed: an infinity in either direction where round-to-nearest would overflow
 * (|x| >= 65520), else IEEE directed rounding. */
uint f16_directed(uint u, uint up) {
    uint a = u & 0x7fffffffu;
    if (a >= 0x477ff000u && a <= 0x7f800000u)
        return ((u >> 16) & 0x8000u) | 0x7c00u;
    return f16_bits_round(u, up);
}

/* The f16 scale of a group: RNE(a / levels) in f32, rounded up to f16, a = hi - zero >= 0;
 * the quotient from the integer mantissa, exact whatever the device's division does. */
uint quant_scale(float a, uint levels) {
    uint u = floatBitsToUint(a);
    if (u >= 0x7f800000u)
        return u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    if (u < 0x33800000u) /* a < 2^-24: the quotient rounds up to 2^-24 unless it is 0 */
        return u >= 0x00800000u || 2u * u > levels ? 1u : 0u;
    uint n = ((u & 0x7fffffu) | 0x800000u) << 8, q = n / levels, rem = n % levels;
    uint sh = uint(findMSB(q)) - 23u; /* q has 24 + sh bits */
    uint kept = q >> sh, low = q & ((1u << sh) - 1u);
    uint twice = 2u * (low * levels + rem), tie = levels << sh;
    if (twice > tie || (twice == tie && (kept & 1u) != 0u))
        kept++;
    /* kept * 2^(e - 158 + sh), kept in [2^23, 2^24] (2^24 carries into the exponent) */
    return f16_directed((((u >> 23) - 8u + sh) << 23) + kept - 0x800000u, 1u);
}

/* A pool quad as f32 and back (the slot dtype's conversions, common.glsl). */
#if FKV_DTYPE == 0
vec4 quad_in(vec4 q) { return q; }
vec4 quad_out(vec4 v) { return v; }
#else
vec4 quad_in(uvec2 q) {
    return vec4(CVT_LOAD(q.x & 0xffffu), CVT_LOAD(q.x >> 16), CVT_LOAD(q.y & 0xffffu),
                CVT_LOAD(q.y >> 16));
}
uvec2 quad_out(vec4 v) {
    return uvec2(CVT_STORE(v.x) | CVT_STORE(v.y) << 16, CVT_STORE(v.z) | CVT_STORE(v.w) << 16);
}
#endif

#if MODE == 0
/* The groups' f16 zeros and scales as f32 values (exact; f32_to_f16 gives the bits back), a
 * vec4 a load: par[q] the zeros of key channels 4q..4q+3, par[D/4 + q] their scales, par[D/2 +
 * t] (zero, scale, 0, 0) of value token t (SMEM = 2D + 4P floats). */
shared vec4 par[SMEM / 4u];

/* A group's (zero, scale) from its minimum lo and maximum hi, as common/hostfmt.c's
 * fkv_hostfmt_params. */
vec2 params(float lo, float hi, bool nonfinite, uint levels) {
    uint z = f16_directed(floatBitsToUint(lo), 0u);
    uint s = quant_scale(hi - f16_to_f32(z), levels);
    if (nonfinite || (z & 0x7c00u) == 0x7c00u || (s & 0x7c00u) == 0x7c00u)
        z = s = 0x7e00u;
    return vec2(f16_to_f32(z), f16_to_f32(s));
}

/* 1 where x is an infinity or a NaN. */
uvec4 nonfinite4(vec4 x) {
    return uvec4(equal(floatBitsToUint(x) & uvec4(0x7f800000u), uvec4(0x7f800000u)));
}

/* The B-bit codes of a quad packed from the low bits: common/hostfmt.c fkv_hostfmt_code with
 * selects, 0 where the scale is not positive or the rounded quotient is not (NaN included),
 * else at most L. */
uint pack_codes(vec4 x, vec4 zero, vec4 scale, uint levels, uint bits) {
    vec4 q = roundEven((x - zero) / scale);
    q = mix(vec4(0.0), min(q, vec4(float(levels))), greaterThan(q, vec4(0.0)));
    uvec4 c = uvec4(mix(vec4(0.0), q, greaterThan(scale, vec4(0.0)))) << (uvec4(0, 1, 2, 3) * bits);
    return c.x | c.y | c.z | c.w;
}

/* The codes of the key quad (token t, channels c..c+3) and of the value quad; first: the
 * unit's first element (quad-aligned), re: a token row's elements. */
uint k_codes(uint t, uint c, uint first, uint re, uint levels, uint bits) {
    uint dq = pc.head_dim / 4u;
    return pack_codes(quad_in(kpool[(first + t * re + c) / 4u]), par[c / 4u], par[dq + c / 4u],
                      levels, bits);
}
uint v_codes(uint t, uint c, uint first, uint re, uint levels, uint bits) {
    vec4 zs = par[pc.head_dim / 2u + t];
    return pack_codes(quad_in(vpool[(first + t * re + c) / 4u]), vec4(zs.x), vec4(zs.y), levels,
                      bits);
}

/* The f16 bits of parameter f of the unit ([K scale D][K zero D][V scale P][V zero P]). */
uint param_bits(uint f) {
    uint d = pc.head_dim, p = pc.page_size, g = f < d ? f : f - d;
    uint v = f < 2u * d + p ? f - 2u * d : f - 2u * d - p; /* a value token */
    uint at = f < 2u * d ? (f < d ? d / 4u : 0u) + g / 4u : d / 2u + v;
    uint comp = f < 2u * d ? g & 3u : f < 2u * d + p ? 1u : 0u;
    return f32_to_f16(par[at][comp]);
}

/* Unit word v to destination word wd, or, sh bits past a word boundary, to the top of wd and
 * the bottom of wd + 1 through atomics (a word may be shared with a neighbouring unit or with
 * another invocation of this one). */
void put_word(uint wd, uint sh, uint v) {
    if (sh == 0u) {
        ext[wd] = v;
        return;
    }
    atomicAnd(ext[wd], ~(0xffffffffu << sh));
    atomicOr(ext[wd], v << sh);
    atomicAnd(ext[wd + 1u], ~(0xffffffffu >> (32u - sh)));
    atomicOr(ext[wd + 1u], v >> (32u - sh));
}

/* Word k of the unit, any word, with a division per quad: the rare paths (see main). */
uint unit_word(uint k, uint first, uint re, uint levels, uint bits, uint codes) {
    uint d = pc.head_dim, p = pc.page_size, epw = 32u / bits, word = 0u;
    if (4u * k >= 2u * codes)
        return param_bits(2u * k - codes) | param_bits(2u * k - codes + 1u) << 16;
    for (uint j = 0u; j < epw / 4u; j++) {
        uint e = k * epw + 4u * j, T = e / d, c = e - T * d;
        word |= (T < p ? k_codes(T, c, first, re, levels, bits)
                       : v_codes(T - p, c, first, re, levels, bits)) << (16u * j);
    }
    return word;
}

/* Code element e's row T (of its K or V codes) and channel c, and the row and channel steps
 * (dT, dc) of `step` elements: one division per loop, none per word. */
void walk_start(uint e, uint step, out uint T, out uint c, out uint dT, out uint dc) {
    uint d = pc.head_dim;
    T = e / d;
    c = e - T * d;
    dT = step / d;
    dc = step - dT * d;
}

void main() {
    uint unit = gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x;
    uint lid = gl_LocalInvocationID.x, w = gl_WorkGroupSize.x;
    uint d = pc.head_dim, p = pc.page_size, bits = pc.bits, levels = (1u << bits) - 1u;
    if (unit >= pc.n * pc.n_kv_heads)
        return; /* uniform over the workgroup, as the returns below */
    uint i = unit / pc.n_kv_heads, h = unit % pc.n_kv_heads;
    int gslot = idx[pc.idx_off + i];
    uint ls = uint(gslot) - pc.slot_base;
    if (gslot < 0 || ls >= pc.n_slots)
        return;
    uint re = pc.n_kv_heads * d, first = (ls * p * pc.n_kv_heads + h) * d, dq = d / 4u;
    uint codes = p * d * bits / 8u, unit_bytes = 2u * codes + 4u * (d + p);
    /* Separate loops for keys and values (a CPU device runs both sides of a branch its lanes
     * take); each min and max is the first of equal values in the reference's order (the
     * sign of a zero matters): a key channel's over the tokens, a value token's over its
     * channels. */
    for (uint q = lid; q < dq; q += w) {
        vec4 lo = vec4(FKV_INF), hi = vec4(-FKV_INF);
        uvec4 nonfinite = uvec4(0u);
        for (uint t = 0u, at = first / 4u + q; t < p; t++, at += re / 4u) {
            vec4 x = quad_in(kpool[at]);
            nonfinite |= nonfinite4(x);
            lo = mix(lo, x, lessThan(x, lo));
            hi = mix(hi, x, greaterThan(x, hi));
        }
        vec2 g0 = params(lo.x, hi.x, nonfinite.x != 0u, levels);
        vec2 g1 = params(lo.y, hi.y, nonfinite.y != 0u, levels);
        vec2 g2 = params(lo.z, hi.z, nonfinite.z != 0u, levels);
        vec2 g3 = params(lo.w, hi.w, nonfinite.w != 0u, levels);
        par[q] = vec4(g0.x, g1.x, g2.x, g3.x);
        par[dq + q] = vec4(g0.y, g1.y, g2.y, g3.y);
    }
    for (uint t = lid; t < p; t += w) {
        float lo = FKV_INF, hi = -FKV_INF;
        uint nonfinite = 0u;
        for (uint q = 0u, at = (first + t * re) / 4u; q < dq; q++) {
            vec4 x = quad_in(vpool[at + q]);
            uvec4 nf = nonfinite4(x);
            nonfinite |= nf.x | nf.y | nf.z | nf.w;
            lo = x.x < lo ? x.x : lo;
            hi = x.x > hi ? x.x : hi;
            lo = x.y < lo ? x.y : lo;
            hi = x.y > hi ? x.y : hi;
            lo = x.z < lo ? x.z : lo;
            hi = x.z > hi ? x.z : hi;
            lo = x.w < lo ? x.w : lo;
            hi = x.w > hi ? x.w : hi;
        }
        par[2u * dq + t] = vec4(params(lo, hi, nonfinite != 0u, levels), 0.0, 0.0);
    }
    barrier();
    /* Whole 32-bit words of the unit, built from pairs of quads of codes (a q4 word, two q8
     * words: one loop for both formats) walked by a constant step, no division per word. K
     * pairs, V pairs and parameter words run in loops of their own, with plain stores, where
     * the destination is word-aligned (always, but in tests). The last loop takes what is
     * left: with an odd number nk of quads per half, the last K and the first V quad (one q4
     * word, two q8 words), or every word of a unit that straddles destination words (through
     * atomics): kept out of the other loops, whose lanes would run it, masked, every time. */
    uint u0 = pc.ext_off + unit * unit_bytes, wd0 = u0 / 4u, sh = (u0 & 3u) * 8u;
    uint nk = p * d / 4u, odd = nk & 1u;
    bool fast = sh == 0u;
    uint T, c, dT, dc;
    walk_start(8u * lid, 8u * w, T, c, dT, dc);
    for (uint m = lid; fast && m < nk / 2u; m += w) { /* K quads 2m, 2m + 1 */
        uint c1 = c + 4u == d ? 0u : c + 4u, t1 = c + 4u == d ? T + 1u : T;
        uint a = k_codes(T, c, first, re, levels, bits);
        uint b = k_codes(t1, c1, first, re, levels, bits);
        ext[wd0 + m * bits / 4u] = bits == 8u ? a : a | b << 16;
        if (bits == 8u)
            ext[wd0 + 2u * m + 1u] = b;
        c += dc;
        T += dT;
        T = c >= d ? T + 1u : T;
        c = c >= d ? c - d : c;
    }
    walk_start(4u * odd + 8u * lid, 8u * w, T, c, dT, dc);
    for (uint m = lid; fast && m < nk / 2u; m += w) { /* V quads odd + 2m, odd + 2m + 1 */
        uint c1 = c + 4u == d ? 0u : c + 4u, t1 = c + 4u == d ? T + 1u : T;
        uint a = v_codes(T, c, first, re, levels, bits);
        uint b = v_codes(t1, c1, first, re, levels, bits);
        uint q = nk + odd + 2u * m; /* in quads from the unit's start */
        ext[wd0 + q * bits / 8u] = bits == 8u ? a : a | b << 16;
        if (bits == 8u)
            ext[wd0 + q + 1u] = b;
        c += dc;
        T += dT;
        T = c >= d ? T + 1u : T;
        c = c >= d ? c - d : c;
    }
    for (uint k = nk * bits / 4u + lid; fast && 4u * k < unit_bytes; k += w) {
        uint f = 2u * k - codes; /* two f16 parameters */
        ext[wd0 + k] = param_bits(f) | param_bits(f + 1u) << 16;
    }
    uint rest = fast ? (nk - odd) * bits / 8u : 0u;
    uint rest_end = fast ? (nk + odd) * bits / 8u : unit_bytes / 4u;
    for (uint k = rest + lid; k < rest_end; k += w)
        put_word(wd0 + k, sh, unit_word(k, first, re, levels, bits, codes));
}
#else
/* Word wi of host window k (direct) or of ext (scatter). */
uint word_at(uint k, uint wi) {
#if MODE == 1
    return ext[wi];
#else
    return k == 0u   ? ext0[wi]
           : k == 1u ? ext1[wi]
           : k == 2u ? ext2[wi]
           : k == 3u ? ext3[wi]
                     : ext4[wi];
#endif
}

/* The four bytes from byte b, little-endian; a: b is 4-aligned (known when inlined). */
uint bytes4(uint k, bool a, uint b) {
    uint sh = (b & 3u) * 8u, x = word_at(k, b >> 2);
    if (!a && sh != 0u)
        x = (x >> sh) | (word_at(k, (b >> 2) + 1u) << (32u - sh));
    return x;
}

/* The f16 at byte a (even), as f32. */
float f16_at(uint k, uint a) { return f16_to_f32((word_at(k, a >> 2) >> ((a & 2u) * 8u)) & 0xffffu); }

vec2 f16x2(uint x) { return vec2(f16_to_f32(x & 0xffffu), f16_to_f32(x >> 16)); }

/* The four B-bit codes of elements e..e+3 (e a multiple of 4) of the codes from byte cb: one
 * word read (two for q8 where the unit is not word-aligned; a q4 quad's two bytes never
 * straddle a word, cb and e * B/8 being even). */
uvec4 codes_at(uint k, bool a, uint cb, uint e, uint bits) {
    uint b = cb + e * bits / 8u, sh = (b & 3u) * 8u, x = word_at(k, b >> 2) >> sh;
    if (!a && bits == 8u && sh != 0u)
        x |= word_at(k, (b >> 2) + 1u) << (32u - sh);
    return (uvec4(x) >> (uvec4(0, 1, 2, 3) * bits)) & ((1u << bits) - 1u);
}

/* Part r of the unit at byte u0 of window k (a: u0 is word-aligned) into the slot's head whose
 * token 0, channel 0 is pool quad q0: key channels 4r..4r+3 over the tokens (r < D/4, their
 * four scales and zeros decoded once), else value token r - D/4 over its channels (its scale
 * and zero decoded once); fma(scale, code, zero) is exact: the product needs no rounding.
 * Keys and values in loops of their own (see the top). */
void dequant(uint k, bool a, uint u0, uint r, uint q0, uint bits) {
    uint d = pc.head_dim, p = pc.page_size, dq = d / 4u, stride = pc.n_kv_heads * dq;
    uint codes = p * d * bits / 8u, pa = u0 + 2u * codes; /* the parameters */
    /* both parts' parameters, read in bounds whatever r is (no branch: see above) */
    uint c = r < dq ? 4u * r : 0u, t = r < dq ? 0u : r - dq;
    vec4 s = vec4(f16x2(bytes4(k, a, pa + 2u * c)), f16x2(bytes4(k, a, pa + 2u * c + 4u)));
    vec4 z = vec4(f16x2(bytes4(k, a, pa + 2u * d + 2u * c)),
                  f16x2(bytes4(k, a, pa + 2u * d + 2u * c + 4u)));
    for (uint j = 0u; r < dq && j < p; j++)
        kpool[q0 + j * stride + r] =
            quad_out(fma(s, vec4(codes_at(k, a, u0, j * d + c, bits)), z));
    s = vec4(f16_at(k, pa + 4u * d + 2u * t));
    z = vec4(f16_at(k, pa + 4u * d + 2u * p + 2u * t));
    for (uint q = 0u; r >= dq && q < dq; q++)
        vpool[q0 + t * stride + q] =
            quad_out(fma(s, vec4(codes_at(k, a, u0 + codes, t * d + 4u * q, bits)), z));
}

void main() {
    uint gid = flat_id();
    if (gid >= pc.total)
        return;
    uint d = pc.head_dim, p = pc.page_size, per_unit = d / 4u + p;
#if MODE == 1
    uint bits = pc.bits, i = gid / per_unit, r = gid % per_unit;
    if (i >= pc.n)
        return;
    int slot = idx[pc.idx_off + 2u * i], h = idx[pc.idx_off + 2u * i + 1u];
#else
    uint bits = pc.elem_bits >> 8, es = pc.elem_bits & 0xffu;
    uint i = pc.first + gid / per_unit, r = gid % per_unit;
    if (i >= pc.n)
        return;
    uint ie = pc.idx_off + 4u * i;
    int slot = idx[ie], h = idx[ie + 1u];
#endif
    uint ls = uint(slot) - pc.slot_base;
    if (slot < 0 || ls >= pc.n_slots || h < 0 || uint(h) >= pc.n_kv_heads)
        return;
    uint unit_bytes = 2u * (p * d * bits / 8u) + 4u * (d + p);
    uint q0 = (ls * p * pc.n_kv_heads + uint(h)) * (d / 4u);
#if MODE == 1
    /* every unit is as word-aligned as ext_off (unit bytes are a multiple of 4) */
    uint u0 = pc.ext_off + i * unit_bytes;
    if ((pc.ext_off & 3u) == 0u)
        dequant(0u, true, u0, r, q0, bits);
    else
        dequant(0u, false, u0, r, q0, bits);
#else
    uint k = i < pc.end0 ? 0u : i < pc.end1 ? 1u : i < pc.end2 ? 2u : i < pc.end3 ? 3u : 4u;
    uint base = k == 0u ? pc.base0 : k == 1u ? pc.base1 : k == 2u ? pc.base2 : k == 3u ? pc.base3 : pc.base4;
    uint len = 4u * uint(k == 0u ? ext0.length() : k == 1u ? ext1.length() : k == 2u ? ext2.length() : k == 3u ? ext3.length() : ext4.length());
    uint off = uint(idx[ie + 3u]);
    if (off < base || (off - base) * es > len || unit_bytes > len - (off - base) * es)
        return; /* outside its window: a table that disagrees with the plan */
    uint u0 = (off - base) * es; /* even: es is 2 or 4 */
    /* one copy per window, each reading one binding (a CPU device would read all five) */
    if (k == 0u)
        dequant(0u, false, u0, r, q0, bits);
    else if (k == 1u)
        dequant(1u, false, u0, r, q0, bits);
    else if (k == 2u)
        dequant(2u, false, u0, r, q0, bits);
    else if (k == 3u)
        dequant(3u, false, u0, r, q0, bits);
    else
        dequant(4u, false, u0, r, q0, bits);
#endif
}
#endif
