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
 * The pools are read and written a quad of channels at a time (D is a multiple of 4, so every
 * quad is 4-aligned): vec4 for f32, uvec2 (four 16-bit elements) for f16/bf16, one load or
 * store per quad instead of four, with or without 16-bit storage (-DFKV_S16 changes nothing
 * here). On a CPU device such as lavapipe every buffer access is a bounds-checked gather or
 * scatter, and per-element accesses made the dequantize about 12% of a q8 step.
 *
 * Pack: one workgroup per (page, KV head) unit; shared `par` holds the f32 values of the f16
 * zero and scale of the D key channel and P value token groups (SMEM = 2 * (D + P) words),
 * found by D/4 key quads (each over the tokens) and P value tokens (each over its channels in
 * order): min and max keep the first of equal values as the reference does (the sign of a
 * zero matters). Each invocation then builds whole 32-bit words of the unit, a q8 word from
 * one quad of codes and a q4 word from two, walking the code elements (K tokens, then V) by a
 * constant step: no division per word or element. Where the unit does not start on a word
 * boundary (the destination offset), each of its words straddles two destination words and
 * both parts go through atomics (the first and the last are shared with the neighbouring
 * units). Scatter and direct: one invocation per quad of channels of K or V of a unit, over
 * its P tokens: a key quad decodes its four scales and zeros once, a value quad one pair per
 * token; each token's codes are one word read (two where the unit is not word-aligned, q8)
 * and its four values one store. The pools are bound as a window of n_slots slots from
 * slot_base (vk_kernels.c, plan_windows); direct binds up to five host windows at 3..7 as
 * copy.comp does. */
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

bool finite_bits(float x) { return (floatBitsToUint(x) & 0x7f800000u) != 0x7f800000u; }

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
shared float par[SMEM]; /* group g: par[g] = zero, par[D + P + g] = scale (f16 values) */

/* Group g's f16 zero and scale from its minimum lo and maximum hi, as common/hostfmt.c's
 * fkv_hostfmt_params, kept as their f32 values (exact, and f32_to_f16 gives the bits back). */
void put_params(uint g, uint ng, float lo, float hi, bool nonfinite, uint levels) {
    uint z = f16_directed(floatBitsToUint(lo), 0u);
    uint s = quant_scale(hi - f16_to_f32(z), levels);
    if (nonfinite || (z & 0x7c00u) == 0x7c00u || (s & 0x7c00u) == 0x7c00u)
        z = s = 0x7e00u;
    par[g] = f16_to_f32(z);
    par[ng + g] = f16_to_f32(s);
}

/* 1 where x is an infinity or a NaN. */
uvec4 nonfinite4(vec4 x) {
    return uvec4(equal(floatBitsToUint(x) & uvec4(0x7f800000u), uvec4(0x7f800000u)));
}

/* The codes of a quad, common/hostfmt.c fkv_hostfmt_code with selects: 0 where the scale is
 * not positive or the rounded quotient is not (NaN included), else at most L. */
uvec4 codes4(vec4 x, vec4 zero, vec4 scale, uint levels) {
    vec4 q = roundEven((x - zero) / scale);
    q = mix(vec4(0.0), min(q, vec4(float(levels))), greaterThan(q, vec4(0.0)));
    return uvec4(mix(vec4(0.0), q, greaterThan(scale, vec4(0.0))));
}

/* The B-bit codes of the quad at code row T (K tokens 0..P-1, then V tokens) and channel c,
 * packed from the low bits. */
uint quad_codes(uint T, uint c, uint first, uint ng, uint levels) {
    uint p = pc.page_size, d = pc.head_dim, bits = pc.bits;
    bool v = T >= p;
    uint t = v ? T - p : T, at = (first + t * pc.n_kv_heads * d + c) >> 2;
    vec4 x = v ? quad_in(vpool[at]) : quad_in(kpool[at]);
    /* a key's groups are its four channels, a value's one group its token */
    uint g = v ? d + t : c, gs = v ? 0u : 1u;
    vec4 z = vec4(par[g], par[g + gs], par[g + 2u * gs], par[g + 3u * gs]);
    g += ng;
    vec4 s = vec4(par[g], par[g + gs], par[g + 2u * gs], par[g + 3u * gs]);
    uvec4 q = codes4(x, z, s, levels);
    return q.x | q.y << bits | q.z << (2u * bits) | q.w << (3u * bits);
}

/* The f16 bits of parameter f of the unit ([K scale D][K zero D][V scale P][V zero P]). */
uint param_bits(uint f, uint ng) {
    uint d = pc.head_dim, p = pc.page_size;
    uint g = f < d ? ng + f : f < 2u * d ? f - d : f < 2u * d + p ? ng + f - d : f - d - p;
    return f32_to_f16(par[g]);
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
    /* quad indices: the unit's first, a token row's stride */
    uint re = pc.n_kv_heads * d / 4u, first = (ls * p * pc.n_kv_heads + h) * d, dq = d / 4u;
    uint ng = d + p, codes = p * d * bits / 8u, unit_bytes = 2u * codes + 4u * (d + p);
    for (uint g = lid; g < dq + p; g += w) {
        if (g < dq) { /* key channels 4g..4g+3, each over the tokens in order */
            vec4 lo = vec4(FKV_INF), hi = vec4(-FKV_INF);
            uvec4 nonfinite = uvec4(0u);
            for (uint t = 0u, at = first / 4u + g; t < p; t++, at += re) {
                vec4 x = quad_in(kpool[at]);
                nonfinite |= nonfinite4(x);
                lo = mix(lo, x, lessThan(x, lo));
                hi = mix(hi, x, greaterThan(x, hi));
            }
            for (uint k = 0u; k < 4u; k++)
                put_params(4u * g + k, ng, lo[k], hi[k], nonfinite[k] != 0u, levels);
        } else { /* value token g - D/4 over its channels in order */
            uint t = g - dq, nonfinite = 0u;
            float lo = FKV_INF, hi = -FKV_INF;
            for (uint q = 0u, at = first / 4u + t * re; q < dq; q++) {
                vec4 x = quad_in(vpool[at + q]);
                uvec4 nf = nonfinite4(x);
                nonfinite |= nf.x | nf.y | nf.z | nf.w;
                for (uint k = 0u; k < 4u; k++) {
                    lo = x[k] < lo ? x[k] : lo;
                    hi = x[k] > hi ? x[k] : hi;
                }
            }
            put_params(d + t, ng, lo, hi, nonfinite != 0u, levels);
        }
    }
    barrier();
    uint u0 = pc.ext_off + unit * unit_bytes, sh = (u0 & 3u) * 8u; /* the unit's first byte */
    /* Unit word k (bytes 4k..4k+3) holds code elements E = k * 32/B on: code row T = E / D,
     * channel c = E % D, stepped by w words at a time. */
    uint epw = 32u / bits, step = w * epw, dT = step / d, dc = step - dT * d;
    uint k = lid, T = lid * epw / d, c = lid * epw - T * d;
    for (; 4u * k < 2u * codes; k += w) {
        uint word = quad_codes(T, c, first, ng, levels);
        if (bits == 4u) /* the next quad: on in the row, or the next row's first */
            word |= c + 4u == d ? quad_codes(T + 1u, 0u, first, ng, levels) << 16
                                : quad_codes(T, c + 4u, first, ng, levels) << 16;
        put_word(u0 / 4u + k, sh, word);
        c += dc;
        T += dT;
        if (c >= d) {
            c -= d;
            T++;
        }
    }
    for (; 4u * k < unit_bytes; k += w) { /* two f16 parameters from parameter 2k - codes */
        uint f = 2u * k - codes;
        put_word(u0 / 4u + k, sh, param_bits(f, ng) | param_bits(f + 1u, ng) << 16);
    }
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

/* The four bytes from byte b (any alignment), little-endian: one word read where aligned. */
uint bytes4_at(uint k, uint b) {
    uint sh = (b & 3u) * 8u, w0 = word_at(k, b >> 2);
    if (sh == 0u)
        return w0;
    return (w0 >> sh) | (word_at(k, (b >> 2) + 1u) << (32u - sh));
}

/* The f16 at byte a (even), as f32. */
float f16_at(uint k, uint a) { return f16_to_f32((word_at(k, a >> 2) >> ((a & 2u) * 8u)) & 0xffffu); }

/* The four f16 from byte a (even), as f32. */
vec4 f16x4_at(uint k, uint a) {
    uint lo = bytes4_at(k, a), hi = bytes4_at(k, a + 4u);
    return vec4(f16_to_f32(lo & 0xffffu), f16_to_f32(lo >> 16), f16_to_f32(hi & 0xffffu),
                f16_to_f32(hi >> 16));
}

void main() {
    uint gid = flat_id();
    if (gid >= pc.total)
        return;
    uint d = pc.head_dim, p = pc.page_size, per_unit = 2u * (d / 4u);
#if MODE == 1
    uint bits = pc.bits, i = gid / per_unit, r = gid % per_unit, k = 0u;
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
    uint codes = p * d * bits / 8u, unit_bytes = 2u * codes + 4u * (d + p);
#if MODE == 1
    uint u0 = pc.ext_off + i * unit_bytes;
#else
    uint k = i < pc.end0 ? 0u : i < pc.end1 ? 1u : i < pc.end2 ? 2u : i < pc.end3 ? 3u : 4u;
    uint base = k == 0u ? pc.base0 : k == 1u ? pc.base1 : k == 2u ? pc.base2 : k == 3u ? pc.base3 : pc.base4;
    uint len = 4u * uint(k == 0u ? ext0.length() : k == 1u ? ext1.length() : k == 2u ? ext2.length() : k == 3u ? ext3.length() : ext4.length());
    uint off = uint(idx[ie + 3u]);
    if (off < base || (off - base) * es > len || unit_bytes > len - (off - base) * es)
        return; /* outside its window: a table that disagrees with the plan */
    uint u0 = (off - base) * es; /* even: es is 2 or 4 */
#endif
    uint kv = r >= d / 4u ? 1u : 0u, c0 = (r - kv * (d / 4u)) * 4u;
    /* this half's scales, its zeros zstep bytes on; fma(scale, code, zero) is exact: the
     * product needs no rounding */
    uint sa = u0 + 2u * codes + kv * 4u * d, zstep = kv != 0u ? 2u * p : 2u * d;
    vec4 s = vec4(0.0), z = vec4(0.0);
    if (kv == 0u) {
        s = f16x4_at(k, sa + 2u * c0);
        z = f16x4_at(k, sa + zstep + 2u * c0);
    }
    /* quad indices into the pools: dst and the row stride are multiples of 4 elements */
    uint cb = u0 + kv * codes, stride = pc.n_kv_heads * d / 4u;
    uint dst = ((ls * p * pc.n_kv_heads + uint(h)) * d + c0) / 4u;
    for (uint t = 0u; t < p; t++, dst += stride) {
        if (kv != 0u) {
            s = vec4(f16_at(k, sa + 2u * t));
            z = vec4(f16_at(k, sa + zstep + 2u * t));
        }
        uint e = t * d + c0;
        uvec4 code;
        if (bits == 8u) {
            uint x = bytes4_at(k, cb + e);
            code = uvec4(x & 0xffu, (x >> 8) & 0xffu, (x >> 16) & 0xffu, x >> 24);
        } else { /* two bytes inside one word: cb and e / 2 are even */
            uint b = cb + e / 2u, x = word_at(k, b >> 2) >> ((b & 2u) * 8u);
            code = uvec4(x & 0xfu, (x >> 4) & 0xfu, (x >> 8) & 0xfu, (x >> 12) & 0xfu);
        }
        QUAD_T o = quad_out(fma(s, vec4(code), z));
        if (kv != 0u)
            vpool[dst] = o;
        else
            kpool[dst] = o;
    }
}
#endif
