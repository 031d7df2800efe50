#version 450
/* One workgroup (a power of two) per (sequence, KV head): mean over the group of the cosine
 * similarity of q_cur and q_prev; flag = !(mean >= tau), so a NaN is corrected. Only an exactly
 * zero norm gives cosine 0: a query holding a NaN or an infinity makes the mean NaN. The
 * previous query is row prev_rows[seq] of q_prev: negative, none (NaN, flagged); beyond
 * prev_count, skipped. */
#include "common.glsl"
RBUF(0, float, q_cur);
RBUF(1, float, q_prev);
BUF(2, float, sims);
BUF(3, int, flags);
RBUF(4, int, prev_rows);
layout(push_constant) uniform PC {
    uint cur_off, prev_off, n_kv_heads, group, head_dim, sims_off, flags_off;
    float tau;
    uint rows_off, prev_count;
} pc;
shared float red[3u * gl_WorkGroupSize.x];

void main() {
    uint bh = gl_WorkGroupID.x, lid = gl_LocalInvocationID.x, w = gl_WorkGroupSize.x;
    uint seq = bh / pc.n_kv_heads, h = bh % pc.n_kv_heads;
    int row = prev_rows[pc.rows_off + seq];
    /* no return before a barrier: a missing or bad row runs no head of the group */
    uint n_heads = row >= 0 && uint(row) < pc.prev_count ? pc.group : 0u;
    uint base = bh * pc.group * pc.head_dim;
    uint pbase = (uint(n_heads != 0u ? row : 0) * pc.n_kv_heads + h) * pc.group * pc.head_dim;
    float mean = row < 0 ? uintBitsToFloat(0x7fc00000u) : 0.0;
    for (uint g = 0u; g < n_heads; g++) {
        uint a = pc.cur_off + base + g * pc.head_dim, b = pc.prev_off + pbase + g * pc.head_dim;
        float ab = 0.0, aa = 0.0, bb = 0.0;
        for (uint c = lid; c < pc.head_dim; c += w) {
            float x = q_cur[a + c], y = q_prev[b + c];
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        red[lid] = ab;
        red[w + lid] = aa;
        red[2u * w + lid] = bb;
        barrier();
        for (uint s = w / 2u; s > 0u; s /= 2u) {
            if (lid < s) {
                red[lid] += red[lid + s];
                red[w + lid] += red[w + lid + s];
                red[2u * w + lid] += red[2u * w + lid + s];
            }
            barrier();
        }
        if (lid == 0u) {
            float na = sqrt(red[w]), nb = sqrt(red[2u * w]);
            mean += (na == 0.0 || nb == 0.0) ? 0.0 : red[0] / (na * nb);
        }
        barrier(); /* red is reused by the next head */
    }
    if (lid == 0u && (n_heads != 0u || row < 0)) {
        mean /= float(pc.group);
        sims[pc.sims_off + bh] = mean;
        flags[pc.flags_off + bh] = (mean >= pc.tau) ? 0 : 1;
    }
}
