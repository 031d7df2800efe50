#version 450
/* One workgroup (a power of two) per (sequence, KV head): the correction's check
 * (check.glsl), the previous query row prev_rows[seq] of q_prev. */
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
#define CHECK_CUR q_cur
#define CHECK_PREV q_prev
#define CHECK_SIMS sims
#define CHECK_FLAGS flags
#define CHECK_RED red
#include "check.glsl"

void main() {
    uint bh = gl_WorkGroupID.x, w = gl_WorkGroupSize.x;
    check_pair(pc.cur_off, pc.prev_off, pc.prev_count, prev_rows[pc.rows_off + bh / pc.n_kv_heads],
               bh, pc.n_kv_heads, pc.group, pc.head_dim, pc.tau, gl_LocalInvocationID.x, w, w,
               pc.sims_off + bh, pc.flags_off + bh);
}
