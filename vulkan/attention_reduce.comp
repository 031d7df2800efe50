#version 450
/* Combines the split partials of attention: one invocation per output element. */
#include "common.glsl"
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
    uint p = bh * pc.n_splits * stride + g * (pc.head_dim + 2u);
    float m = -FKV_INF;
    for (uint s = 0u; s < pc.n_splits; s++)
        m = max(m, part[p + s * stride]);
    float l = 0.0, a = 0.0;
    if (m != -FKV_INF) {
        for (uint s = 0u; s < pc.n_splits; s++) {
            float ms = part[p + s * stride];
            if (ms == -FKV_INF)
                continue; /* an empty split */
            float wgt = exp(ms - m);
            l += part[p + s * stride + 1u] * wgt;
            a += part[p + s * stride + 2u + c] * wgt;
        }
    }
    outp[pc.out_off + gid] = l > 0.0 ? a / l : 0.0;
}
