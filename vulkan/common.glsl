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

/* Without branches (a CPU device runs every path of a divergent branch): a subnormal f16 is
 * m * 2^-24, exact in f32; the others move their bits. */
float f16_to_f32(uint h) {
    uint e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    uint bits = e == 31u ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13);
    bits = e == 0u ? floatBitsToUint(float(m) * (1.0 / 16777216.0)) : bits;
    return uintBitsToFloat(((h & 0x8000u) << 16) | bits);
}

/* Round to nearest even, without branches: a normal result rounds by an integer add on the
 * rebiased bits (a carry into the exponent is right, up to infinity from 65520); a subnormal
 * one by a float add of 0.5, whose ulp is 2^-24, the f16 subnormal step (an f32 subnormal,
 * flushed or not, gives 0 either way). */
uint f32_to_f16(float f) {
    uint u = floatBitsToUint(f), a = u & 0x7fffffffu;
    uint h = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13; /* - (127 - 15) << 23, + half - 1 */
    h = a < 0x38800000u ? floatBitsToUint(uintBitsToFloat(a) + 0.5) - 0x3f000000u : h;
    h = a >= 0x47800000u ? 0x7c00u : h;
    h = a > 0x7f800000u ? 0x7e00u : h;
    return ((u >> 16) & 0x8000u) | h;
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
