#version 450
/* Layout moves, copying bits in words: -DWORD=16 (uvec4), 4 (uint), 2 (uint16_t, 16-bit
 * storage) or 1 (a 16-bit element inside uint words, stored with atomics: no 16-bit storage).
 * -DMODE=0 pack (NHD -> HND), 1 scatter (HND -> NHD), 2 direct (HND units read from host
 * memory: imported or host-visible; zero-copy). Direct binds up to five host windows at
 * bindings 3..7, each serving one run of consecutive table entries (vk_kernels.c,
 * fkv_vk_recall_direct), so one dispatch reads up to five host allocations. 3 direct through
 * device addresses (bufferDeviceAddress): the unit table ends with each host allocation's
 * address and size, so one dispatch reads any number of them and nothing else is bound.
 * One invocation per word of a (token, head) row of row_words words. The pools are bound as a
 * window of n_slots slots from slot_base (vk_kernels.c, plan_windows). */
#if WORD == 2
#define FKV_S16 1
#else
#define FKV_S16 0
#endif
#include "common.glsl"
#if MODE == 3
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif

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
#if MODE < 2
BUF(3, W_T, ext); /* pack: destination; scatter: source */
layout(push_constant) uniform PC {
    uint ext_off, n, idx_off, n_kv_heads, row_words, page_size, n_slots, total, unused8, slot_base;
} pc;
#elif MODE == 3
/* Host allocation j of the call: after the n unit entries of idx, its device address (low,
 * high word) and byte size (low, high word), as fkv_vk_direct_host_words wrote them. */
#if WORD == 16
#define HOST_ALIGN 16
#else
#define HOST_ALIGN 4
#endif
#define WORD_BYTES (WORD == 1 ? 2u : uint(WORD))
layout(buffer_reference, std430, buffer_reference_align = HOST_ALIGN) readonly buffer
HostWords {
    W_T w[];
};
layout(push_constant) uniform PC {
    uint el_per_word, n, idx_off, n_kv_heads, row_words, page_size, n_slots, total, n_hosts,
        slot_base;
} pc;
#else
/* Host windows; run k of the table ([end[k-1], end[k]), end[-1] = first) reads window k,
 * which starts base[k] elements into its allocation. idx: {slot, head, host, offset / es}. */
RBUF(3, W_T, ext0);
RBUF(4, W_T, ext1);
RBUF(5, W_T, ext2);
RBUF(6, W_T, ext3);
RBUF(7, W_T, ext4);
layout(push_constant) uniform PC {
    uint el_per_word, n, idx_off, n_kv_heads, row_words, page_size, n_slots, total, first,
        slot_base, end0, end1, end2, end3, end4, base0, base1, base2, base3, base4;
} pc;
#if WORD == 1
#define W_LEN(a) (2u * uint(a.length()))
#else
#define W_LEN(a) uint(a.length())
#endif
#endif

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
#elif MODE == 1
    uint i = row / (2u * pc.page_size), r = row % (2u * pc.page_size);
    if (i >= pc.n)
        return;
    int slot = idx[pc.idx_off + 2u * i], h = idx[pc.idx_off + 2u * i + 1u];
    uint ls = uint(slot) - pc.slot_base;
    if (slot < 0 || ls >= pc.n_slots || h < 0 || uint(h) >= pc.n_kv_heads)
        return;
    uint s = pc.ext_off + row * pc.row_words + w;
    uint kv = r / pc.page_size, t = r % pc.page_size;
    uint dst = ((ls * pc.page_size + t) * pc.n_kv_heads + uint(h)) * pc.row_words + w;
    W_VAL x = W_LOAD(ext, s);
    if (kv != 0u) {
        W_STORE(vpool, dst, x);
    } else {
        W_STORE(kpool, dst, x);
    }
#elif MODE == 3
    uint i = row / (2u * pc.page_size), r = row % (2u * pc.page_size);
    if (i >= pc.n)
        return;
    uint e = pc.idx_off + 4u * i;
    int slot = idx[e], h = idx[e + 1u], host = idx[e + 2u];
    uint ls = uint(slot) - pc.slot_base;
    if (slot < 0 || ls >= pc.n_slots || h < 0 || uint(h) >= pc.n_kv_heads || host < 0 ||
        uint(host) >= pc.n_hosts)
        return;
    uint a = pc.idx_off + 4u * pc.n + 4u * uint(host);
    uvec2 addr = uvec2(uint(idx[a]), uint(idx[a + 1u]));
    /* the size in words, clamped where it exceeds 32 bits (offsets are 32-bit anyway) */
    uint words = idx[a + 3u] != 0 ? 0xffffffffu : uint(idx[a + 2u]) / WORD_BYTES;
    uint off = uint(idx[e + 3u]) / pc.el_per_word, unit_words = 2u * pc.page_size * pc.row_words;
    if (off > words || unit_words > words - off)
        return; /* outside its allocation: a table that disagrees with the plan */
    HostWords src = HostWords(addr);
    W_VAL x = W_LOAD(src.w, off + r * pc.row_words + w);
    uint kv = r / pc.page_size, t = r % pc.page_size;
    uint dst = ((ls * pc.page_size + t) * pc.n_kv_heads + uint(h)) * pc.row_words + w;
    if (kv != 0u) {
        W_STORE(vpool, dst, x);
    } else {
        W_STORE(kpool, dst, x);
    }
#else
    uint i = pc.first + row / (2u * pc.page_size), r = row % (2u * pc.page_size);
    if (i >= pc.n)
        return;
    uint e = pc.idx_off + 4u * i;
    int slot = idx[e], h = idx[e + 1u];
    uint ls = uint(slot) - pc.slot_base;
    if (slot < 0 || ls >= pc.n_slots || h < 0 || uint(h) >= pc.n_kv_heads)
        return;
    uint k = i < pc.end0 ? 0u : i < pc.end1 ? 1u : i < pc.end2 ? 2u : i < pc.end3 ? 3u : 4u;
    uint base = k == 0u ? pc.base0 : k == 1u ? pc.base1 : k == 2u ? pc.base2 : k == 3u ? pc.base3 : pc.base4;
    uint len = k == 0u ? W_LEN(ext0) : k == 1u ? W_LEN(ext1) : k == 2u ? W_LEN(ext2) : k == 3u ? W_LEN(ext3) : W_LEN(ext4);
    uint off = uint(idx[e + 3u]), unit_words = 2u * pc.page_size * pc.row_words;
    if (off < base || (off - base) / pc.el_per_word > len || unit_words > len - (off - base) / pc.el_per_word)
        return; /* outside its window: a table that disagrees with the plan */
    uint s = (off - base) / pc.el_per_word + r * pc.row_words + w;
    W_VAL x = k == 0u ? W_LOAD(ext0, s) : k == 1u ? W_LOAD(ext1, s) : k == 2u ? W_LOAD(ext2, s) : k == 3u ? W_LOAD(ext3, s) : W_LOAD(ext4, s);
    uint kv = r / pc.page_size, t = r % pc.page_size;
    uint dst = ((ls * pc.page_size + t) * pc.n_kv_heads + uint(h)) * pc.row_words + w;
    if (kv != 0u) {
        W_STORE(vpool, dst, x);
    } else {
        W_STORE(kpool, dst, x);
    }
#endif
}
