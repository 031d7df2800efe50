#version 450
/* Paged decode attention with GQA: one workgroup per (sequence, KV head, block of `heads`
 * query heads, split) serves the block's query heads, so each K/V row is read once per block
 * (the whole group in one block unless shared memory is too small: backends/check.c). Tiles
 * of up to `tile` tokens of one page: K tile -> scores -> online softmax -> V tile ->
 * accumulate. With n_splits > 1 each workgroup takes a contiguous share of the head's entries
 * and writes (max, sum, unnormalised acc) per query head to `part` for attention_reduce.
 * dense_tokens >= 0 replaces the slot lists by contiguous K/V of that many tokens.
 * Pools beyond one binding run once per window of n_slots slots from slot_base, each run
 * writing its own partials (split_base + split of total_splits, vk_kernels.c).
 * Shared memory (SMEM floats, sized per call): qs, acc [heads*d]; kt [tile*(d+1)];
 * sc [heads*tile]; st [3*heads] = running max, running sum, rescale factor. */
#include "common.glsl"
RBUF(0, float, q);
RBUF(1, int, heads);
RBUF(2, int, entries);
RBUF(3, KV_T, kpool);
RBUF(4, KV_T, vpool);
BUF(5, float, outp);
BUF(6, float, part);
layout(push_constant) uniform PC {
    uint q_off, heads_off, entries_off, n_entries;
    int dense_tokens;
    uint n_slots, n_kv_heads, group, head_dim, page_size, tile, n_splits;
    float scale;
    uint out_off, slot_base, split_base, total_splits, heads;
} pc;
shared float sm[SMEM];

void main() {
    const uint lid = gl_LocalInvocationID.x, w = gl_WorkGroupSize.x;
    const uint grp = gl_WorkGroupID.x, H = pc.heads;
    const uint n_blocks = (pc.group + H - 1u) / H, per_bh = n_blocks * pc.n_splits;
    const uint bh = grp / per_bh, split = grp % pc.n_splits;
    const uint g_first = (grp % per_bh) / pc.n_splits * H;
    const uint G = min(H, pc.group - g_first); /* query heads of this workgroup */
    const uint h = bh % pc.n_kv_heads;
    const uint d = pc.head_dim, gd = G * d, ldk = d + 1u, tile = pc.tile;
    const uint row_elems = pc.n_kv_heads * d;
    const uint QS = 0u, ACC = H * d, KT = 2u * H * d, SC = KT + tile * ldk, ST = SC + H * tile;
    /* query head (b, h*group + g) is row bh*group + g of q and out */
    const uint qrow = bh * pc.group + g_first;

    const uint qb = pc.q_off + qrow * d;
    for (uint i = lid; i < gd; i += w) {
        sm[QS + i] = q[qb + i] * pc.scale;
        sm[ACC + i] = 0.0;
    }
    for (uint g = lid; g < G; g += w) {
        sm[ST + g] = -FKV_INF;
        sm[ST + G + g] = 0.0;
        sm[ST + 2u * G + g] = 1.0;
    }
    int first = 0, count;
    if (pc.dense_tokens >= 0) {
        count = (pc.dense_tokens + int(pc.page_size) - 1) / int(pc.page_size);
    } else {
        first = heads[pc.heads_off + 2u * bh];
        count = max(heads[pc.heads_off + 2u * bh + 1u], 0);
        if (first < 0 || uint(first) > pc.n_entries)
            count = 0;
        else
            count = int(min(uint(count), pc.n_entries - uint(first)));
    }
    const int per = (count + int(pc.n_splits) - 1) / int(pc.n_splits);
    const int e0 = min(int(split) * per, count), e1 = min(e0 + per, count);
    barrier();

    for (int e = e0; e < e1; e++) {
        int gslot, valid;
        if (pc.dense_tokens >= 0) {
            gslot = e;
            valid = min(int(pc.page_size), pc.dense_tokens - e * int(pc.page_size));
        } else {
            gslot = entries[pc.entries_off + 2u * uint(first + e)];
            valid = entries[pc.entries_off + 2u * uint(first + e) + 1u];
        }
        valid = clamp(valid, 0, int(pc.page_size));
        const uint ls = uint(gslot) - pc.slot_base;
        if (gslot < 0 || ls >= pc.n_slots)
            valid = 0; /* uniform over the workgroup: barriers stay matched */
        const uint page_base = (valid > 0 ? ls : 0u) * pc.page_size * row_elems + h * d;
        for (int t0 = 0; t0 < valid; t0 += int(tile)) {
            const uint nt = uint(min(int(tile), valid - t0));
            for (uint i = lid; i < nt * d; i += w) {
                uint t = i / d, c = i % d;
                sm[KT + t * ldk + c] = KV_LOAD(kpool, page_base + (uint(t0) + t) * row_elems + c);
            }
            barrier();
            for (uint i = lid; i < G * nt; i += w) {
                uint g = i / nt, t = i % nt;
                float s = 0.0;
                for (uint c = 0u; c < d; c++)
                    s += sm[QS + g * d + c] * sm[KT + t * ldk + c];
                sm[SC + g * tile + t] = s;
            }
            barrier();
            for (uint g = lid; g < G; g += w) {
                float m_old = sm[ST + g], m_new = m_old;
                for (uint t = 0u; t < nt; t++)
                    m_new = max(m_new, sm[SC + g * tile + t]);
                float sum = 0.0;
                for (uint t = 0u; t < nt; t++) {
                    float p = exp(sm[SC + g * tile + t] - m_new);
                    sm[SC + g * tile + t] = p;
                    sum += p;
                }
                float alpha = m_old == -FKV_INF ? 0.0 : exp(m_old - m_new);
                sm[ST + g] = m_new;
                sm[ST + G + g] = sm[ST + G + g] * alpha + sum;
                sm[ST + 2u * G + g] = alpha;
            }
            /* kt is free again: every score read finished before the last barrier. */
            for (uint i = lid; i < nt * d; i += w) {
                uint t = i / d, c = i % d;
                sm[KT + t * ldk + c] = KV_LOAD(vpool, page_base + (uint(t0) + t) * row_elems + c);
            }
            barrier();
            for (uint i = lid; i < gd; i += w) {
                uint g = i / d, c = i % d;
                float a = sm[ACC + i] * sm[ST + 2u * G + g];
                for (uint t = 0u; t < nt; t++)
                    a += sm[SC + g * tile + t] * sm[KT + t * ldk + c];
                sm[ACC + i] = a;
            }
            barrier();
        }
    }

    if (pc.total_splits == 1u) {
        uint ob = pc.out_off + qrow * d;
        for (uint i = lid; i < gd; i += w) {
            float l = sm[ST + G + i / d];
            outp[ob + i] = l > 0.0 ? sm[ACC + i] / l : 0.0;
        }
    } else {
        /* part is [bh][split][group][d+2] */
        uint pb = ((bh * pc.total_splits + pc.split_base + split) * pc.group + g_first) * (d + 2u);
        for (uint i = lid; i < gd; i += w) {
            uint g = i / d, c = i % d;
            part[pb + g * (d + 2u) + 2u + c] = sm[ACC + i];
        }
        for (uint g = lid; g < G; g += w) {
            part[pb + g * (d + 2u)] = sm[ST + g];
            part[pb + g * (d + 2u) + 1u] = sm[ST + G + g];
        }
    }
}
