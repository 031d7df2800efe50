/* Quantized host formats (FKV_HOST_Q8, FKV_HOST_Q4): the reference codec of one HND
 * (page, KV head) unit, shared by the CPU reference kernels, fkv_context_read_kv and the tests.
 * docs/pipeline.md ("Host formats") documents the same layout and rules.
 *
 * A unit of page size P and head dim D with B-bit codes (L = 2^B - 1 levels):
 *   [K codes P x D][V codes P x D][K scale D][K zero D][V scale P][V zero P]
 * codes token-major (element t*D + c), B = 8: one byte each; B = 4: element 2i in the low
 * nibble and 2i+1 in the high nibble of byte i. Scales and zeros are f16 (IEEE binary16).
 * Keys are grouped per channel c (over the P tokens), values per token t (over the D channels).
 * A group with minimum lo and maximum hi gets
 *   zero  = lo rounded down to f16,  scale = ((hi - zero) / L in f32) rounded up to f16,
 *   code  = clamp(round_half_even((x - zero) / scale), 0, L)   (0 when scale is 0),
 *   value = fmaf(scale, code, zero) in f32, then stored in the slot dtype.
 * So |value - x| <= scale / 2 plus f32 rounding. A group holding a NaN or an infinity, or
 * whose zero or scale is not a finite f16 (|values| beyond about 65504), gets NaN for both,
 * and every element of it dequantizes to NaN: never a silently wrong finite number. */
#ifndef FKV_COMMON_HOSTFMT_H
#define FKV_COMMON_HOSTFMT_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"

/* Bits per code: 8, 4, or 0 for FKV_HOST_SAME / an unknown format. */
static inline uint32_t fkv_hostfmt_bits(fkv_host_format f) {
    return f == FKV_HOST_Q8 ? 8u : f == FKV_HOST_Q4 ? 4u : 0u;
}

/* Bytes of one (page, KV head) unit in the host format; FKV_HOST_SAME: 2*P*D*es. */
static inline size_t fkv_hostfmt_unit_bytes(fkv_host_format f, uint32_t page_size,
                                            uint32_t head_dim, size_t elem_bytes) {
    uint32_t bits = fkv_hostfmt_bits(f);
    size_t pd = (size_t)page_size * head_dim;
    if (bits == 0)
        return 2 * pd * elem_bytes;
    return 2 * pd * bits / 8 + 2 * sizeof(uint16_t) * ((size_t)head_dim + page_size);
}

/* The f16 (zero, scale) of a group with minimum lo and maximum hi (see the file comment);
 * nonfinite != 0 when the group held a NaN or an infinity. */
void fkv_hostfmt_params(float lo, float hi, int nonfinite, uint32_t levels, uint16_t *zero,
                        uint16_t *scale);
/* The code of x in a group with f32 zero and scale (the f16 values, widened). */
uint32_t fkv_hostfmt_code(float x, float zero, float scale, uint32_t levels);

/* Quantizes one unit: element (t, c) of K is fkv_load(k, dtype, first + t*stride + c), of V
 * the same index in v; writes fkv_hostfmt_unit_bytes bytes at unit. */
void fkv_hostfmt_quantize(fkv_host_format f, uint32_t page_size, uint32_t head_dim,
                          const void *k, const void *v, fkv_dtype dtype, size_t first,
                          size_t stride, unsigned char *unit);
/* Dequantizes one unit, the inverse of fkv_hostfmt_quantize: element (t, c) of K to
 * fkv_store(k, dtype, first + t*stride + c), of V the same index in v. */
void fkv_hostfmt_dequantize(fkv_host_format f, uint32_t page_size, uint32_t head_dim,
                            const unsigned char *unit, void *k, void *v, fkv_dtype dtype,
                            size_t first, size_t stride);
/* Element (t, c) of K (kv = 0) or V (kv = 1) of a quantized unit, as f32. */
float fkv_hostfmt_load(fkv_host_format f, uint32_t page_size, uint32_t head_dim,
                       const unsigned char *unit, int kv, uint32_t t, uint32_t c);

#endif
