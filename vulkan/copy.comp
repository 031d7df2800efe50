#version 450
/* Layout moves, copying bits in words: -DWORD=16 (uvec4), 4 (uint), 2 (uint16_t, 16-bit
 * storage) or 1 (a 16-bit element inside uint words, stored with atomics: no 16-bit storage).
 * -DMODE=0 pack (NHD -> HND), 1 scatter (HND -> NHD), 2 direct (HND units read from host
 * memory: imported or host-visible, bound as a window; zero-copy).
 * One invocation per word of a (token, head) row of row_words words. The pools are bound as a
 * window of n_slots slots from slot_base (vk_kernels.c, plan_windows). */
#if WORD == 2
#define FKV_S16 1
#else
#define FKV_S16 0
#endif
#include "common.glsl"

#if WORD == 16
#define W_T uvec4
#elif WORD == 4
#define W_T uint
#elif WORD == 2
#define W_T uint16_t
#else
#define W_T uint
#endif
#if WORD == 1
#define W_LOAD(a, i) ((a[(i) >> 1] >> (((i) & 1u) << 4)) & 0xffffu)
#define W_STORE(a, i, v)                                                                     \
    {                                                                                          \
        uint i_ = (i), sh_ = (i_ & 1u) << 4;                                                   \
        atomicAnd(a[i_ >> 1], ~(0xffffu << sh_));                                              \
        atomicOr(a[i_ >> 1], (v) << sh_);                                                      \
    }
#define W_VAL uint
#elif WORD == 2
#define W_LOAD(a, i) uint(a[i])
#define W_STORE(a, i, v) a[i] = uint16_t(v)
#define W_VAL uint
#else
#define W_LOAD(a, i) (a[i])
#define W_STORE(a, i, v) a[i] = (v)
#define W_VAL W_T
#endif

BUF(0, W_T, kpool);
BUF(1, W_T, vpool);
RBUF(2, int, idx);
BUF(3, W_T, ext); /* pack: destination; scatter: source; direct: host window */
RBUF(4, uint, host_units); /* direct: (window, word offset in it) per unit */
layout(push_constant) uniform PC {
    uint ext_off, n, idx_off, n_kv_heads, row_words, page_size, n_slots, total, window, slot_base;
} pc;

void main() {
    uint gid = flat_id();
    if (gid >= pc.total)
        return;
    uint w = gid % pc.row_words, row = gid / pc.row_words;
#if MODE == 0
    uint rows_per_page = 2u * pc.page_size * pc.n_kv_heads;
    uint i = row / rows_per_page, r = row % rows_per_page;
    if (i >= pc.n)
        return;
    int gslot = idx[pc.idx_off + i];
    uint ls = uint(gslot) - pc.slot_base;
    if (gslot < 0 || ls >= pc.n_slots)
        return;
    uint h = r / (2u * pc.page_size), kv = (r / pc.page_size) % 2u, t = r % pc.page_size;
    uint src = ((ls * pc.page_size + t) * pc.n_kv_heads + h) * pc.row_words + w;
    W_VAL x = kv != 0u ? W_LOAD(vpool, src) : W_LOAD(kpool, src);
    W_STORE(ext, pc.ext_off + row * pc.row_words + w, x);
#else
    uint i = row / (2u * pc.page_size), r = row % (2u * pc.page_size);
    if (i >= pc.n)
        return;
    int slot = idx[pc.idx_off + 2u * i], h = idx[pc.idx_off + 2u * i + 1u];
    uint ls = uint(slot) - pc.slot_base;
    if (slot < 0 || ls >= pc.n_slots || h < 0 || uint(h) >= pc.n_kv_heads)
        return;
#if MODE == 1
    uint s = pc.ext_off + row * pc.row_words + w;
#else
    if (host_units[2u * i] != pc.window)
        return;
    uint s = host_units[2u * i + 1u] + r * pc.row_words + w;
#endif
    uint kv = r / pc.page_size, t = r % pc.page_size;
    uint dst = ((ls * pc.page_size + t) * pc.n_kv_heads + uint(h)) * pc.row_words + w;
    W_VAL x = W_LOAD(ext, s);
    if (kv != 0u) {
        W_STORE(vpool, dst, x);
    } else {
        W_STORE(kpool, dst, x);
    }
#endif
}
