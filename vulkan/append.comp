#version 450
/* rows[i] receives k_src/v_src row i (f32), converted to the storage dtype. The pools are
 * bound as a window of pool_rows rows from row_base (vk_kernels.c, plan_windows). */
#include "common.glsl"
RBUF(0, float, k_src);
RBUF(1, float, v_src);
RBUF(2, int, rows);
BUF(3, KV_T, kpool);
BUF(4, KV_T, vpool);
layout(push_constant) uniform PC {
    uint k_off, v_off, rows_off, n_rows, row_elems, pool_rows, row_base;
} pc;

void main() {
    uint gid = flat_id();
    uint i = gid / pc.row_elems, j = gid % pc.row_elems;
    if (i >= pc.n_rows)
        return;
    int row = rows[pc.rows_off + i];
    uint lrow = uint(row) - pc.row_base; /* wraps past pool_rows below the window */
    if (row < 0 || lrow >= pc.pool_rows)
        return;
    uint dst = lrow * pc.row_elems + j;
    KV_STORE(kpool, dst, k_src[pc.k_off + gid]);
    KV_STORE(vpool, dst, v_src[pc.v_off + gid]);
}
