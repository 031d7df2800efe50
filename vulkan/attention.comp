#version 450
/* Paged decode attention with GQA, as fkv_attention in opencl/kernels.cl (the same algorithm,
 * four channels a invocation): one workgroup per (sequence, KV head, block of `heads` query
 * heads, split) serves the block's query heads, so each K/V row is read once per block (the
 * whole group in one block up to 8 heads when shared memory allows: backends/launch.c). Tiles
 * of up to `tile` tokens of one page. Invocation i owns channels [4i, 4i + 4) of a row (dq =
 * head_dim rounded up to 16, zeros past head_dim): it copies them from each K row of the tile
 * into shared memory; invocation i then sums q.k of tokens i, i + w, ... for every head of the
 * block; one
 * invocation per head takes the online softmax of the tile; invocation i accumulates its
 * channels of every head of the block in registers from each V row of the tile. The
 * workgroup has at least max(dq / 4, heads) invocations (fkv_attention_threads). With
 * n_splits > 1 each workgroup takes a contiguous share of the head's entries and writes (max,
 * sum, unnormalised acc) per query head to `part` for attention_reduce, or (fused) the
 * block's last workgroup to finish combines them at the end. dense_tokens >= 0
 * replaces the slot lists by contiguous K/V of that many tokens. Pools beyond one binding run
 * once per window of n_slots slots from slot_base, each run writing its own partials
 * (split_base + split of total_splits, vk_kernels.c).
 * Shared memory (SMEM floats, sized per call; fkv_attention_floats), tp = tile rounded up to
 * 16: qs [heads*dq]; kt [tile*(dq+4)]; sc [heads*tp]; st [3*heads] = running max, running
 * sum, rescale factor. */
#include "common.glsl"
#include "splits.glsl"
RBUF(0, float, q);
RBUF(1, int, heads);
RBUF(2, int, entries);
RBUF(3, KV_T, kpool);
RBUF(4, KV_T, vpool);
BUF(5, float, outp);
/* coherent: the fused path's last workgroup reads the other workgroups' partials */
layout(std430, set = 0, binding = 6) coherent buffer B6 { float part[]; };
/* fused: per (sequence, KV head, query-head block), the workgroups that wrote their partials
 * (zero between dispatches: the last one resets its counter) */
layout(std430, set = 0, binding = 7) coherent buffer B7 { uint arrivals[]; };
layout(push_constant) uniform PC {
    uint q_off, heads_off, entries_off, n_entries;
    int dense_tokens;
    uint n_slots, n_kv_heads, group, head_dim, page_size, tile, n_splits;
    float scale;
    uint out_off, slot_base, split_base, total_splits, heads, fused;
} pc;
shared float sm[SMEM];

/* Query heads a workgroup serves at most (FKV_ATTENTION_MAX_HEADS): accumulators in
 * registers. */
#define HEADS 8

/* n (1..4) elements of a pool from i, zeros after them. */
#define KV_LOAD4(a, i, n)                                                                     \
    vec4(KV_LOAD(a, i), (n) > 1u ? KV_LOAD(a, (i) + 1u) : 0.0,                                \
         (n) > 2u ? KV_LOAD(a, (i) + 2u) : 0.0, (n) > 3u ? KV_LOAD(a, (i) + 3u) : 0.0)

void main() {
    const uint lid = gl_LocalInvocationID.x, w = gl_WorkGroupSize.x;
    const uint grp = gl_WorkGroupID.x, H = pc.heads;
    const uint n_blocks = (pc.group + H - 1u) / H, per_bh = n_blocks * pc.n_splits;
    const uint bh = grp / per_bh, split = grp % pc.n_splits;
    const uint g_first = (grp % per_bh) / pc.n_splits * H;
    const uint G = min(H, pc.group - g_first); /* query heads of this workgroup */
    const uint h = bh % pc.n_kv_heads;
    const uint d = pc.head_dim, dq = (d + 15u) & ~15u, ldk = dq + 4u, tile = pc.tile;
    const uint tp = (tile + 15u) & ~15u, cv = 4u * lid; /* this invocation's channels */
    const uint row_elems = pc.n_kv_heads * d;
    const uint QS = 0u, KT = H * dq, SC = KT + tile * ldk, ST = SC + H * tp;
    /* query head (b, h*group + g) is row bh*group + g of q and out */
    const uint qrow = bh * pc.group + g_first;

    const uint qb = pc.q_off + qrow * d;
    for (uint g = 0u; g < G; g++)
        for (uint c = lid; c < dq; c += w)
            sm[QS + g * dq + c] = c < d ? q[qb + g * d + c] * pc.scale : 0.0;
    for (uint g = lid; g < G; g += w) {
        sm[ST + g] = -FKV_INF;
        sm[ST + G + g] = 0.0;
        sm[ST + 2u * G + g] = 1.0;
    }
    vec4 acc[HEADS];
    for (uint g = 0u; g < HEADS; g++)
        acc[g] = vec4(0.0);
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
            const uint tile_base = page_base + uint(t0) * row_elems + cv;
            if (cv < dq)
                for (uint t = 0u; t < nt; t++) {
                    vec4 k = cv < d ? KV_LOAD4(kpool, tile_base + t * row_elems, min(4u, d - cv))
                                    : vec4(0.0);
                    for (uint j = 0u; j < 4u; j++)
                        sm[KT + t * ldk + cv + j] = k[j];
                }
            barrier();
            for (uint t = lid; t < nt; t += w) {
                vec4 s[HEADS];
                for (uint g = 0u; g < HEADS; g++)
                    s[g] = vec4(0.0);
                for (uint c = 0u; c < dq; c += 4u) {
                    uint kr = KT + t * ldk + c;
                    vec4 k = vec4(sm[kr], sm[kr + 1u], sm[kr + 2u], sm[kr + 3u]);
                    for (uint g = 0u; g < HEADS; g++)
                        if (g < G) {
                            uint qr = QS + g * dq + c;
                            s[g] += vec4(sm[qr], sm[qr + 1u], sm[qr + 2u], sm[qr + 3u]) * k;
                        }
                }
                for (uint g = 0u; g < HEADS; g++)
                    if (g < G)
                        sm[SC + g * tp + t] = (s[g].x + s[g].y) + (s[g].z + s[g].w);
            }
            barrier();
            for (uint g = lid; g < G; g += w) {
                float m_old = sm[ST + g], m_new = m_old;
                for (uint t = 0u; t < nt; t++)
                    m_new = max(m_new, sm[SC + g * tp + t]);
                float sum = 0.0;
                for (uint t = 0u; t < nt; t++) {
                    float p = exp(sm[SC + g * tp + t] - m_new);
                    sm[SC + g * tp + t] = p;
                    sum += p;
                }
                float alpha = m_old == -FKV_INF ? 0.0 : exp(m_old - m_new);
                sm[ST + g] = m_new;
                sm[ST + G + g] = sm[ST + G + g] * alpha + sum;
                sm[ST + 2u * G + g] = alpha;
            }
            barrier();
            if (cv < d) {
                const uint n = min(4u, d - cv);
                for (uint g = 0u; g < HEADS; g++)
                    if (g < G)
                        acc[g] *= sm[ST + 2u * G + g];
                for (uint t = 0u; t < nt; t++) {
                    vec4 v = KV_LOAD4(vpool, tile_base + t * row_elems, n);
                    for (uint g = 0u; g < HEADS; g++)
                        if (g < G)
                            acc[g] += sm[SC + g * tp + t] * v;
                }
            }
            barrier(); /* kt and sc are rewritten by the next tile */
        }
    }

    if (cv < d) {
        const uint n = min(4u, d - cv);
        /* out, or part [bh][split][group][d+2] after (max, sum): this invocation's channels of
         * head g at dst + g * stride */
        const bool whole = pc.total_splits == 1u;
        const uint dst = whole ? pc.out_off + qrow * d + cv
                               : ((bh * pc.total_splits + pc.split_base + split) * pc.group +
                                  g_first) * (d + 2u) + 2u + cv;
        const uint stride = whole ? d : d + 2u;
        for (uint g = 0u; g < HEADS; g++)
            if (g < G) {
                float l = sm[ST + G + g];
                vec4 o = !whole ? acc[g] : l > 0.0 ? acc[g] / l : vec4(0.0);
                for (uint j = 0u; j < n; j++)
                    if (whole)
                        outp[dst + g * stride + j] = o[j];
                    else
                        part[dst + g * stride + j] = o[j];
            }
    }
    if (pc.total_splits > 1u) {
        uint pb = ((bh * pc.total_splits + pc.split_base + split) * pc.group + g_first) * (d + 2u);
        for (uint g = lid; g < G; g += w) {
            part[pb + g * (d + 2u)] = sm[ST + g];
            part[pb + g * (d + 2u) + 1u] = sm[ST + G + g];
        }
    }
    /* fused: the block's last split to finish (over every window's dispatch) combines its
     * heads, as attention_reduce would, with no second dispatch. The partials are written
     * before the barrier, the count is taken after it, and the last workgroup reads them
     * after its own barrier (coherent buffers; the pattern of a single-pass reduction). */
    if (pc.fused != 0u && pc.total_splits > 1u) {
        memoryBarrierBuffer();
        barrier();
        if (lid == 0u) {
            uint idx = grp / pc.n_splits;
            bool last = atomicAdd(arrivals[idx], 1u) + 1u == pc.total_splits;
            if (last)
                atomicExchange(arrivals[idx], 0u);
            sm[0] = last ? 1.0 : 0.0; /* qs is not read any more: the flag (SMEM is the plan's) */
        }
        memoryBarrierBuffer();
        barrier();
        if (sm[0] != 0.0) {
            const uint stride = pc.group * (d + 2u);
            const uint p0 = (bh * pc.total_splits * pc.group + g_first) * (d + 2u);
            for (uint i = lid; i < G * d; i += w) {
                float r;
                COMBINE_SPLITS(part, p0 + (i / d) * (d + 2u), stride, pc.total_splits, i % d, r);
                outp[pc.out_off + qrow * d + i] = r;
            }
        }
    }
}
