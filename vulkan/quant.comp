#version 450
/* Quantized host formats q8/q4 (common/hostfmt.h, docs/pipeline.md "Host formats"):
 * -DMODE=0 pack_hnd quantizing into units, 1 scatter_hnd and 2 recall_direct dequantizing
 * units into the slot dtype (-DFKV_DTYPE, -DFKV_S16 as common.glsl). A unit of page P, head dim
 * D, B-bit codes, L = 2^B - 1: [K codes P*D][V codes P*D][K scale D][K zero D][V scale P]
 * [V zero P], f16 little-endian; units are bytes inside uint words (no 8-bit storage needed).
 *
 * The f16 scales and zeros must be the reference's bits: GLSL has no directed f16 rounding and
 * packHalf2x16's rounding is unspecified, and f32 division may be off by 2.5 ulp, so the
 * directed roundings and the division by L are integer code here. Only the code's
 * (x - zero) / scale uses the device's division (within one code: the tolerance table).
 *
 * Pack: one workgroup per (page, KV head) unit; shared `par` holds the f32 values of the f16
 * zero and scale of the D key channel and P value token groups (SMEM = 2 * (D + P) words);
 * each invocation then writes whole 32-bit words of the unit (a word shared with a
 * neighbouring unit, when the destination offset is not 4-aligned, through atomics), walking
 * the word's elements without a division each. Scatter and direct: one invocation per quad of
 * channels (D is a multiple of 4) of K or V of a unit, over its P tokens: a key quad decodes
 * its four scales and zeros once, a value quad one pair per token, and each token's four
 * values are stored together (two whole words without 16-bit storage: no atomics). Integer
 * division per element would be the cost on a CPU device. The pools are bound as a window of
 * n_slots slots from slot_base (vk_kernels.c, plan_windows); direct binds up to five host
 * windows at 3..7 as copy.comp does. */
#include "common.glsl"

BUF(0, KV_T, kpool);
BUF(1, KV_T, vpool);
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

#if MODE == 0
shared float par[SMEM]; /* group g: par[g] = zero, par[D + P + g] = scale (f16 values) */

uint code_of(float x, float zero, float scale, uint levels) {
    if (!(scale > 0.0))
        return 0u;
    float q = roundEven((x - zero) / scale);
    return !(q > 0.0) ? 0u : q >= float(levels) ? levels : uint(q);
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
    uint re = pc.n_kv_heads * d, first = (ls * p * pc.n_kv_heads + h) * d, ng = d + p;
    uint codes = p * d * bits / 8u, unit_bytes = 2u * codes + 4u * (d + p);
    for (uint g = lid; g < d + p; g += w) {
        bool key = g < d;
        uint at = key ? first + g : first + (g - d) * re, n = key ? p : d, step = key ? re : 1u;
        float lo = FKV_INF, hi = -FKV_INF;
        bool nonfinite = false;
        for (uint j = 0u; j < n; j++) {
            float x = key ? KV_LOAD(kpool, at + j * step) : KV_LOAD(vpool, at + j * step);
            nonfinite = nonfinite || !finite_bits(x);
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
        uint z = f16_directed(floatBitsToUint(lo), 0u);
        uint s = quant_scale(hi - f16_to_f32(z), levels);
        if (nonfinite || (z & 0x7c00u) == 0x7c00u || (s & 0x7c00u) == 0x7c00u)
            z = s = 0x7e00u;
        par[g] = f16_to_f32(z); /* exact, and f32_to_f16 gives the bits back */
        par[ng + g] = f16_to_f32(s);
    }
    barrier();
    uint u0 = pc.ext_off + unit * unit_bytes, per_byte = 8u / bits; /* the unit's first byte */
    for (uint wd = u0 / 4u + lid; wd * 4u < u0 + unit_bytes; wd += w) {
        uint b0 = max(wd * 4u, u0), b1 = min(wd * 4u + 4u, u0 + unit_bytes);
        /* the element of the word's first code byte: half kv, token t, channel c */
        uint kv = b0 - u0 >= codes ? 1u : 0u, e = (b0 - u0 - kv * codes) * per_byte;
        uint t = e / d, c = e - t * d, value = 0u, mask = 0u;
        for (uint b = b0; b < b1; b++) {
            uint j = b - u0, byte = 0u;
            if (j < 2u * codes) { /* codes: one (q8) or two (q4) elements of K or V */
                if (j == codes) {
                    kv = 1u;
                    t = c = 0u;
                }
                for (uint k = 0u; k < per_byte; k++) {
                    uint at = first + t * re + c, g = kv != 0u ? d + t : c;
                    float x = kv != 0u ? KV_LOAD(vpool, at) : KV_LOAD(kpool, at);
                    byte |= code_of(x, par[g], par[ng + g], levels) << (k * bits);
                    if (++c == d) {
                        c = 0u;
                        t++;
                    }
                }
            } else { /* [K scale D][K zero D][V scale P][V zero P] */
                uint f = (j - 2u * codes) / 2u, g, zero;
                if (f < 2u * d) {
                    g = f % d;
                    zero = f / d;
                } else {
                    g = d + (f - 2u * d) % p;
                    zero = (f - 2u * d) / p;
                }
                uint bits16 = f32_to_f16(zero != 0u ? par[g] : par[ng + g]);
                byte = (bits16 >> (((j - 2u * codes) & 1u) * 8u)) & 0xffu;
            }
            value |= byte << ((b & 3u) * 8u);
            mask |= 0xffu << ((b & 3u) * 8u);
        }
        if (mask == 0xffffffffu) {
            ext[wd] = value;
        } else { /* a word shared with the neighbouring unit */
            atomicAnd(ext[wd], ~mask);
            atomicOr(ext[wd], value);
        }
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

/* The four bytes from byte b (any alignment), little-endian. */
uint bytes4_at(uint k, uint b) {
    uint sh = (b & 3u) * 8u, w0 = word_at(k, b >> 2);
    return sh == 0u ? w0 : (w0 >> sh) | (word_at(k, (b >> 2) + 1u) << (32u - sh));
}

/* The f16 at byte a (even), as f32. */
float f16_at(uint k, uint a) { return f16_to_f32((word_at(k, a >> 2) >> ((a & 2u) * 8u)) & 0xffffu); }

/* Four values to elements i .. i+3 (i a multiple of 4) of K (kv 0) or V. */
#if FKV_DTYPE == 0
#define STORE4(a, i, v) a[i] = v.x, a[i + 1u] = v.y, a[i + 2u] = v.z, a[i + 3u] = v.w
#elif FKV_S16
#define STORE4(a, i, v)                                                                      \
    a[i] = uint16_t(CVT_STORE(v.x)), a[i + 1u] = uint16_t(CVT_STORE(v.y)),                    \
    a[i + 2u] = uint16_t(CVT_STORE(v.z)), a[i + 3u] = uint16_t(CVT_STORE(v.w))
#else
#define STORE4(a, i, v)                                                                      \
    a[(i) >> 1] = CVT_STORE(v.x) | CVT_STORE(v.y) << 16,                                      \
    a[((i) >> 1) + 1u] = CVT_STORE(v.z) | CVT_STORE(v.w) << 16
#endif
void store4(uint kv, uint i, vec4 x) {
    if (kv != 0u) {
        STORE4(vpool, i, x);
    } else {
        STORE4(kpool, i, x);
    }
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
        s = vec4(f16_at(k, sa + 2u * c0), f16_at(k, sa + 2u * c0 + 2u), f16_at(k, sa + 2u * c0 + 4u),
                 f16_at(k, sa + 2u * c0 + 6u));
        z = vec4(f16_at(k, sa + zstep + 2u * c0), f16_at(k, sa + zstep + 2u * c0 + 2u),
                 f16_at(k, sa + zstep + 2u * c0 + 4u), f16_at(k, sa + zstep + 2u * c0 + 6u));
    }
    uint cb = u0 + kv * codes, stride = pc.n_kv_heads * d;
    uint dst = (ls * p * pc.n_kv_heads + uint(h)) * d + c0;
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
        store4(kv, dst, fma(s, vec4(code), z));
    }
}
#endif
