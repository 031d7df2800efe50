#version 450
/* Quest bound of the query heads of one KV head in one pass over each page summary.
 * Workgroup y = (sequence, KV head, block of `heads` query heads: the group in several blocks
 * when its queries do not fit shared memory at once); x (chunks of workgroups) strides over
 * its pages. The summaries are bound as a window of n_summaries from summ_base
 * (vk_kernels.c). */
#include "common.glsl"
RBUF(0, float, q);
RBUF(1, int, desc);
RBUF(2, float, summaries);
BUF(3, float, outp);
RBUF(4, int, pair_mask);
layout(push_constant) uniform PC {
    uint q_off, desc_off, n_summaries, out_off, out_len, n_kv_heads, group, head_dim, summ_base,
        heads, q_rows, mask_off, use_mask;
} pc;
shared float qs[SMEM];
#define SCORE_GROUP 8

void main() {
    uint n_blocks = (pc.group + pc.heads - 1u) / pc.heads, lid = gl_LocalInvocationID.x;
    uint bh = gl_WorkGroupID.y / n_blocks, hb = (gl_WorkGroupID.y % n_blocks) * pc.heads;
    uint b = bh / pc.n_kv_heads, h = bh % pc.n_kv_heads, db = pc.desc_off + 4u * b;
    int row = desc[db + 3u];
    /* a masked pair or a row beyond the queries does nothing (no return before the barrier) */
    bool ok = row >= 0 && uint(row) < pc.q_rows &&
              (pc.use_mask == 0u || pair_mask[pc.mask_off + bh] != 0);
    uint ng_all = min(pc.heads, pc.group - hb), gd = ok ? ng_all * pc.head_dim : 0u;
    uint qb = pc.q_off + ((uint(ok ? row : 0) * pc.n_kv_heads + h) * pc.group + hb) * pc.head_dim;
    for (uint i = lid; i < gd; i += gl_WorkGroupSize.x)
        qs[i] = q[qb + i];
    barrier();
    int base = desc[db], n_pages = ok ? desc[db + 1u] : 0;
    int obase = desc[db + 2u];
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x;
    for (uint j = gl_WorkGroupID.x * gl_WorkGroupSize.x + lid; j < uint(max(n_pages, 0));
         j += stride) {
        int sidx = base + int(j);
        uint ls = uint(sidx) - pc.summ_base;
        if (sidx < 0 || ls >= pc.n_summaries)
            continue;
        uint mn = (ls * pc.n_kv_heads + h) * 2u * pc.head_dim, mx = mn + pc.head_dim;
        for (uint g0 = 0u; g0 < ng_all; g0 += SCORE_GROUP) {
            uint ng = min(uint(SCORE_GROUP), ng_all - g0);
            float acc[SCORE_GROUP];
            for (uint k = 0u; k < SCORE_GROUP; k++)
                acc[k] = 0.0;
            for (uint c = 0u; c < pc.head_dim; c++) {
                float lo = summaries[mn + c], hi = summaries[mx + c];
                for (uint k = 0u; k < ng; k++) {
                    float qv = qs[(g0 + k) * pc.head_dim + c];
                    acc[k] += max(qv * hi, qv * lo);
                }
            }
            for (uint k = 0u; k < ng; k++) {
                int o = obase + int((h * pc.group + hb + g0 + k) * uint(n_pages) + j);
                if (o >= 0 && uint(o) < pc.out_len)
                    outp[pc.out_off + uint(o)] = acc[k];
            }
        }
    }
}
