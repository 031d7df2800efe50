/* Shared by every freekv compute shader (included, not compiled alone).
 *
 * Compiled per variant with -DFKV_DTYPE=0|1|2 (f32, f16, bf16 KV storage) and -DFKV_S16=0|1:
 * with 16-bit storage (VK_KHR_16bit_storage) KV elements are uint16_t; without it they live two
 * to a uint word, loads extract and stores go through atomicAnd/atomicOr so that two
 * invocations writing the two halves of one word never lose each other's half. Conversions
 * are integer code (round to nearest even, one canonical NaN), bit-identical to
 * common/dtype.h: OpFConvert's rounding mode is implementation-defined.
 *
 * Specialization constants: 0 = workgroup size, 1 = the device's subgroup size (read at run
 * time), 2 = shared-memory floats of the kernels that size it per call. */
#extension GL_GOOGLE_include_directive : require
#if FKV_S16
#extension GL_EXT_shader_16bit_storage : require
#endif

layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint SUBGROUP = 8;
layout(constant_id = 2) const uint SMEM = 1024;

#define FKV_INF uintBitsToFloat(0x7f800000u)

/* Large dispatches spill into y: groups (x, y) number x + y * gl_NumWorkGroups.x. */
uint flat_id() {
    return (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * gl_WorkGroupSize.x +
           gl_LocalInvocationID.x;
}

float f16_to_f32(uint h) {
    uint sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0u) {
        float f = float(m) * (1.0 / 16777216.0);
        return sign != 0u ? -f : f;
    }
    if (e == 31u)
        return uintBitsToFloat(sign | 0x7f800000u | (m << 13));
    return uintBitsToFloat(sign | ((e - 15u + 127u) << 23) | (m << 13));
}

uint f32_to_f16(float f) {
    uint u = floatBitsToUint(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7e00u;
    if (a >= 0x477ff000u)
        return sign | 0x7c00u;
    if (a < 0x38800000u) { /* f16 subnormal or zero: mantissa * 2^-(126-e), rounded */
        uint e = a >> 23;
        if (e == 0u)
            return sign;
        uint m = (a & 0x7fffffu) | 0x800000u, shift = 126u - e;
        if (shift > 24u)
            return sign;
        uint q = m >> shift, rem = m & ((1u << shift) - 1u), half_ = 1u << (shift - 1u);
        if (rem > half_ || (rem == half_ && (q & 1u) != 0u))
            q++;
        return sign | q;
    }
    uint h = ((((a >> 23) - 127u + 15u)) << 10) | ((a & 0x7fffffu) >> 13);
    uint rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u) != 0u))
        h++;
    return sign | h;
}

/* f32 bits u -> f16 bits with IEEE directed rounding, towards +inf (up = 1) or -inf (0): bit for
 * bit common/dtype.h fkv_f32_to_f16_directed (NaN: sign | 0x7e00; overflow gives the infinity
 * only in the rounding direction, else 65504). GLSL has no directed conversion (packHalf2x16's
 * rounding is unspecified): the magnitude is truncated, then stepped once away from zero when
 * the value was inexact and the direction points away from zero (the step carries into the
 * exponent, and from 65504 into infinity). Bits, not a float, because quant.comp builds its
 * quotient as a bit pattern. */
uint f16_bits_round(uint u, uint up) {
    uint sign = u >> 31, a = u & 0x7fffffffu, h, lost;
    if (a > 0x7f800000u)
        return (sign << 15) | 0x7e00u;
    if (a >= 0x47800000u) { /* >= 65536: truncates to 65504; an infinity stays */
        h = a == 0x7f800000u ? 0x7c00u : 0x7bffu;
        lost = a != 0x7f800000u ? 1u : 0u;
    } else if (a >= 0x38800000u) { /* a normal f16: drop 13 mantissa bits */
        h = (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu);
        lost = a & 0x1fffu;
    } else { /* subnormal f16 or zero, in units of 2^-24 */
        uint e = a >> 23, m = e != 0u ? (a & 0x7fffffu) | 0x800000u : a;
        uint shift = e != 0u ? 126u - e : 125u;
        h = shift < 32u ? m >> shift : 0u;
        lost = shift < 32u ? m & ((1u << shift) - 1u) : m;
    }
    if (lost != 0u && (sign ^ up) != 0u) /* away from zero: up for +, down for - */
        h++;
    return (sign << 15) | h;
}
uint f16_bits_round_down(float f) { return f16_bits_round(floatBitsToUint(f), 0u); }
uint f16_bits_round_up(float f) { return f16_bits_round(floatBitsToUint(f), 1u); }

float bf16_to_f32(uint h) { return uintBitsToFloat(h << 16); }

uint f32_to_bf16(float f) {
    uint u = floatBitsToUint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return ((u >> 16) | 0x40u) & 0xffffu;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

#if FKV_DTYPE == 0
#define KV_T float
#define KV_LOAD(a, i) (a[i])
#define KV_STORE(a, i, v) a[i] = (v)
#else
#if FKV_DTYPE == 1
#define CVT_LOAD f16_to_f32
#define CVT_STORE f32_to_f16
#else
#define CVT_LOAD bf16_to_f32
#define CVT_STORE f32_to_bf16
#endif
#if FKV_S16
#define KV_T uint16_t
#define KV_LOAD(a, i) CVT_LOAD(uint(a[i]))
#define KV_STORE(a, i, v) a[i] = uint16_t(CVT_STORE(v))
#else
#define KV_T uint
#define KV_LOAD(a, i) CVT_LOAD((a[(i) >> 1] >> (((i) & 1u) << 4)) & 0xffffu)
#define KV_STORE(a, i, v)                                                                    \
    {                                                                                          \
        uint i_ = (i), sh_ = (i_ & 1u) << 4;                                                   \
        atomicAnd(a[i_ >> 1], ~(0xffffu << sh_));                                              \
        atomicOr(a[i_ >> 1], CVT_STORE(v) << sh_);                                             \
    }
#endif
#endif

#define BUF(b, T, name) layout(std430, set = 0, binding = b) buffer B##b { T name[]; }
#define RBUF(b, T, name) layout(std430, set = 0, binding = b) readonly buffer B##b { T name[]; }
