#version 450
/* Combines the split partials of attention: one invocation per output element. */
#include "common.glsl"
#include "splits.glsl"
RBUF(0, float, part);
BUF(1, float, outp);
layout(push_constant) uniform PC {
    uint n_bh, group, head_dim, n_splits, out_off;
} pc;

void main() {
    uint gid = flat_id();
    uint gd = pc.group * pc.head_dim;
    uint bh = gid / gd, g = (gid / pc.head_dim) % pc.group, c = gid % pc.head_dim;
    if (bh >= pc.n_bh)
        return;
    uint stride = pc.group * (pc.head_dim + 2u);
    float r;
    COMBINE_SPLITS(part, bh * pc.n_splits * stride + g * (pc.head_dim + 2u), stride, pc.n_splits,
                   c, r);
    outp[pc.out_off + gid] = r;
}
