#version 450
/* One invocation per (page i, KV head, channel): min and max over the page's tokens, stored as
 * f32, or (summ_f16) as f16 rounded down (min) and up (max), two to a word: written through
 * atomicAnd/atomicOr, as neighbouring channels share a word. The pool and the summaries are
 * bound as windows from slot_base and summ_base (vk_kernels.c). */
#include "common.glsl"
RBUF(0, KV_T, kpool);
RBUF(1, int, pages);
BUF(2, uint, summaries);
layout(push_constant) uniform PC {
    uint pages_off, n_pages, n_kv_heads, head_dim, page_size, n_slots, n_summaries, slot_base,
        summ_base, summ_f16;
} pc;

void store_half(uint e, uint bits) {
    uint sh = (e & 1u) << 4;
    atomicAnd(summaries[e >> 1], ~(0xffffu << sh));
    atomicOr(summaries[e >> 1], bits << sh);
}

void main() {
    uint gid = flat_id();
    uint row_elems = pc.n_kv_heads * pc.head_dim;
    uint i = gid / row_elems, r = gid % row_elems;
    if (i >= pc.n_pages)
        return;
    int gslot = pages[pc.pages_off + 2u * i], s = pages[pc.pages_off + 2u * i + 1u];
    uint ls = uint(gslot) - pc.slot_base, lsum = uint(s) - pc.summ_base;
    if (gslot < 0 || ls >= pc.n_slots || s < 0 || lsum >= pc.n_summaries)
        return;
    float mn = FKV_INF, mx = -FKV_INF;
    uint base = ls * pc.page_size * row_elems + r;
    for (uint t = 0u; t < pc.page_size; t++) {
        float v = KV_LOAD(kpool, base + t * row_elems);
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
    }
    uint h = r / pc.head_dim, c = r % pc.head_dim;
    uint o = (lsum * pc.n_kv_heads + h) * 2u * pc.head_dim;
    if (pc.summ_f16 != 0u) {
        store_half(o + c, f16_bits_round_down(mn));
        store_half(o + pc.head_dim + c, f16_bits_round_up(mx));
    } else {
        summaries[o + c] = floatBitsToUint(mn);
        summaries[o + pc.head_dim + c] = floatBitsToUint(mx);
    }
}
