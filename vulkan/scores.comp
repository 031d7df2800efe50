#version 450
/* Quest bound of the query heads of one KV head in one pass over each page summary. The
 * pass's heads are SCORE_LANES lanes (a summary is read once per 8 query heads of its group),
 * each lane's sum runs over the channels in order (the CPU reference's order), and an
 * invocation scores SCORE_PAGES consecutive pages per pass. qs holds the queries transposed,
 * [channel][head], then SCORE_LANES - 1 floats of padding the last channel's lanes reach
 * (lanes beyond the block's heads are computed and dropped).
 * Workgroup y = (sequence, KV head, block of `heads` query heads: the group in several blocks
 * when its queries do not fit shared memory at once); x (chunks of workgroups) strides over
 * its pages. The summaries are bound as a window of n_summaries from summ_base
 * (vk_kernels.c), as words: f32 bits, or (summ_f16) two f16 each, widened exactly, so their
 * scores are bit for bit those of f32 summaries holding the same values.
 * -DCHECK=1 (scores_check, backend.h): no mask; the first workgroup of each (sequence, KV
 * head) (x 0, head block 0, in the first window of summaries) first runs cosine.comp's check
 * of it (check.glsl) with its lane count check_w, the current queries bound at 4 (from
 * cur_off) and the previous ones in q (from q_off), its tree in qs before the queries. */
#include "common.glsl"
RBUF(0, float, q);
RBUF(1, int, desc);
RBUF(2, uint, summaries);
BUF(3, float, outp);
#ifdef CHECK
RBUF(4, float, q_cur);
RBUF(5, int, prev_rows);
BUF(6, float, sims);
BUF(7, int, flags);
#else
RBUF(4, int, pair_mask);
#endif
layout(push_constant) uniform PC {
    uint q_off, desc_off, n_summaries, out_off, out_len, n_kv_heads, group, head_dim, summ_base,
        heads, q_rows, mask_off, use_mask, summ_f16;
#ifdef CHECK
    uint cur_off, rows_off, sims_off, flags_off;
    float tau;
    uint check_w;
#endif
} pc;
shared float qs[SMEM];
#ifdef CHECK
#define CHECK_CUR q_cur
#define CHECK_PREV q
#define CHECK_SIMS sims
#define CHECK_FLAGS flags
#define CHECK_RED qs
#include "check.glsl"
#define PAIR_ON(bh) true
#else
#define PAIR_ON(bh) (pc.use_mask == 0u || pair_mask[pc.mask_off + (bh)] != 0)
#endif
#define SCORE_LANES 8u /* backends/launch.h FKV_SCORE_LANES */
#define SCORE_PAGES 4u
#define SUMM_F32(e) uintBitsToFloat(summaries[e])
#define SUMM_F16(e) f16_to_f32((summaries[(e) >> 1] >> (((e) & 1u) << 4)) & 0xffffu)
/* The pass over the channels: SUMM_AT(e) loads summary element e as f32. */
#define SCORE_CHANNELS(SUMM_AT)                                                                \
    for (uint c = 0u; c < d; c++) {                                                            \
        float x[SCORE_LANES];                                                                  \
        for (uint k = 0u; k < SCORE_LANES; k++)                                                \
            x[k] = qs[c * ng_all + g0 + k];                                                    \
        for (uint p = 0u; p < SCORE_PAGES; p++) {                                              \
            float lo = SUMM_AT(mn[p] + c), hi = SUMM_AT(mn[p] + d + c);                        \
            for (uint k = 0u; k < SCORE_LANES; k++)                                            \
                acc[p][k] += max(x[k] * hi, x[k] * lo);                                        \
        }                                                                                      \
    }

void main() {
    uint n_blocks = (pc.group + pc.heads - 1u) / pc.heads, lid = gl_LocalInvocationID.x;
    uint bh = gl_WorkGroupID.y / n_blocks, hb = (gl_WorkGroupID.y % n_blocks) * pc.heads;
    uint b = bh / pc.n_kv_heads, h = bh % pc.n_kv_heads, db = pc.desc_off + 4u * b;
#ifdef CHECK
    if (gl_WorkGroupID.x == 0u && hb == 0u && pc.summ_base == 0u) /* the whole workgroup */
        check_pair(pc.cur_off, pc.q_off, pc.q_rows, prev_rows[pc.rows_off + b], bh, pc.n_kv_heads,
                   pc.group, pc.head_dim, pc.tau, lid, gl_WorkGroupSize.x, pc.check_w,
                   pc.sims_off + bh, pc.flags_off + bh);
#endif
    int row = desc[db + 3u];
    /* a masked pair or a row beyond the queries does nothing (no return before the barrier) */
    bool ok = row >= 0 && uint(row) < pc.q_rows && pc.n_summaries > 0u && PAIR_ON(bh);
    uint ng_all = min(pc.heads, pc.group - hb), gd = ng_all * pc.head_dim, d = pc.head_dim;
    uint qb = pc.q_off + ((uint(ok ? row : 0) * pc.n_kv_heads + h) * pc.group + hb) * d;
    for (uint i = lid; i < gd + SCORE_LANES - 1u; i += gl_WorkGroupSize.x)
        qs[i] = ok && i < gd ? q[qb + (i % ng_all) * d + i / ng_all] : 0.0;
    barrier();
    int base = desc[db], n_pages = ok ? desc[db + 1u] : 0;
    int obase = desc[db + 2u];
    uint np = uint(max(n_pages, 0));
    uint stride = gl_NumWorkGroups.x * gl_WorkGroupSize.x * SCORE_PAGES;
    for (uint j0 = (gl_WorkGroupID.x * gl_WorkGroupSize.x + lid) * SCORE_PAGES; j0 < np;
         j0 += stride) {
        /* pages beyond the sequence or the window read a valid summary and are dropped */
        uint mn[SCORE_PAGES];
        bool valid[SCORE_PAGES];
        for (uint p = 0u; p < SCORE_PAGES; p++) {
            int sidx = base + int(j0 + p);
            uint ls = uint(sidx) - pc.summ_base;
            valid[p] = j0 + p < np && sidx >= 0 && ls < pc.n_summaries;
            mn[p] = ((valid[p] ? ls : 0u) * pc.n_kv_heads + h) * 2u * d;
        }
        for (uint g0 = 0u; g0 < ng_all; g0 += SCORE_LANES) {
            float acc[SCORE_PAGES][SCORE_LANES];
            for (uint p = 0u; p < SCORE_PAGES; p++)
                for (uint k = 0u; k < SCORE_LANES; k++)
                    acc[p][k] = 0.0;
            if (pc.summ_f16 != 0u)
                SCORE_CHANNELS(SUMM_F16)
            else
                SCORE_CHANNELS(SUMM_F32)
            uint ng = min(SCORE_LANES, ng_all - g0);
            for (uint p = 0u; p < SCORE_PAGES; p++)
                for (uint k = 0u; k < ng && valid[p]; k++) {
                    int o = obase + int((h * pc.group + hb + g0 + k) * uint(n_pages) + j0 + p);
                    if (o >= 0 && uint(o) < pc.out_len)
                        outp[pc.out_off + uint(o)] = acc[p][k];
                }
        }
    }
}
