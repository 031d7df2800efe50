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
 * Pack: one workgroup per (page, KV head) unit; shared `par` holds the f16 (zero, scale) bits
 * of the D key channel and P value token groups (SMEM = 2 * (D + P) words); each invocation
 * then writes whole 32-bit words of the unit (a word shared with a neighbouring unit, when the
 * destination offset is not 4-aligned, through atomics). Scatter and direct: one invocation
 * per element. The pools are bound as a window of n_slots slots from slot_base (vk_kernels.c,
 * plan_windows); direct binds up to five host windows at 3..7 as copy.comp does. */
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
shared uint par[SMEM]; /* group g: par[2g] = zero, par[2g + 1] = scale (f16 bits) */

uint code_of(float x, uint g, uint levels) {
    float zero = f16_to_f32(par[2u * g]), scale = f16_to_f32(par[2u * g + 1u]);
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
    uint re = pc.n_kv_heads * d, first = (ls * p * pc.n_kv_heads + h) * d;
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
        par[2u * g] = z;
        par[2u * g + 1u] = s;
    }
    barrier();
    uint u0 = pc.ext_off + unit * unit_bytes; /* the unit's first byte in ext */
    for (uint wd = u0 / 4u + lid; wd * 4u < u0 + unit_bytes; wd += w) {
        uint value = 0u, mask = 0u;
        for (uint k = 0u; k < 4u; k++) {
            uint b = wd * 4u + k;
            if (b < u0 || b >= u0 + unit_bytes)
                continue;
            uint j = b - u0, byte;
            if (j < 2u * codes) { /* codes: one (q8) or two (q4) elements of K or V */
                uint kv = j >= codes ? 1u : 0u, e0 = (j - kv * codes) * (8u / bits);
                byte = 0u;
                for (uint c2 = 0u; c2 < 8u / bits; c2++) {
                    uint e = e0 + c2, t = e / d, c = e % d, at = first + t * re + c;
                    float x = kv != 0u ? KV_LOAD(vpool, at) : KV_LOAD(kpool, at);
                    byte |= code_of(x, kv != 0u ? d + t : c, levels) << (c2 * bits);
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
                byte = (par[2u * g + 1u - zero] >> (((j - 2u * codes) & 1u) * 8u)) & 0xffu;
            }
            value |= byte << (k * 8u);
            mask |= 0xffu << (k * 8u);
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
uint byte_at(uint k, uint b) {
#if MODE == 1
    return (ext[b >> 2] >> ((b & 3u) * 8u)) & 0xffu;
#else
    uint x = k == 0u   ? ext0[b >> 2]
             : k == 1u ? ext1[b >> 2]
             : k == 2u ? ext2[b >> 2]
             : k == 3u ? ext3[b >> 2]
                       : ext4[b >> 2];
    return (x >> ((b & 3u) * 8u)) & 0xffu;
#endif
}

void main() {
    uint gid = flat_id();
    if (gid >= pc.total)
        return;
    uint d = pc.head_dim, p = pc.page_size, per_unit = 2u * p * d;
#if MODE == 1
    uint bits = pc.bits, i = gid / per_unit, e = gid % per_unit, k = 0u;
    if (i >= pc.n)
        return;
    int slot = idx[pc.idx_off + 2u * i], h = idx[pc.idx_off + 2u * i + 1u];
#else
    uint bits = pc.elem_bits >> 8, es = pc.elem_bits & 0xffu;
    uint i = pc.first + gid / per_unit, e = gid % per_unit;
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
    uint u0 = (off - base) * es;
#endif
    uint kv = e >= p * d ? 1u : 0u, te = e - kv * p * d, t = te / d, c = te % d;
    uint cb = u0 + kv * codes + (bits == 8u ? te : te / 2u);
    uint code = (byte_at(k, cb) >> (bits == 8u ? 0u : (te & 1u) * 4u)) & ((1u << bits) - 1u);
    uint sa = u0 + 2u * codes + (kv != 0u ? 4u * d + 2u * t : 2u * c);
    uint za = sa + (kv != 0u ? 2u * p : 2u * d);
    uint s = byte_at(k, sa) | byte_at(k, sa + 1u) << 8, z = byte_at(k, za) | byte_at(k, za + 1u) << 8;
    float x = fma(f16_to_f32(s), float(code), f16_to_f32(z)); /* exact: the product needs no rounding */
    uint dst = ((ls * p + t) * pc.n_kv_heads + uint(h)) * d + c;
    if (kv != 0u) {
        KV_STORE(vpool, dst, x);
    } else {
        KV_STORE(kpool, dst, x);
    }
}
#endif
