#version 450
/* select_pages (backend.h): group reduction and top-k of page scores. One workgroup (a power
 * of two) per (sequence, KV head). Invocation l owns pages first + l + t*w in the reduction and
 * the radix select, so the reduced values it writes over row 0 of the group's scores (the op's
 * scratch) are read back only by itself there: a radix select (4 passes of 8 bits over order
 * keys, histogram in shared memory) finds the k-th value. Then, after a barrier, invocation l
 * takes the l-th contiguous range of the candidates, two scans say where its pages go and how
 * many pages equal to the k-th value it takes (the lowest first), and it writes them in page
 * order. The same algorithm as opencl/kernels.cl. */
#include "common.glsl"
RBUF(0, int, desc);
/* coherent: invocations read each other's reduced values after the barrier */
layout(std430, set = 0, binding = 1) coherent buffer B1 { float scores[]; };
BUF(2, int, outp);
RBUF(3, int, pair_mask);
layout(push_constant) uniform PC {
    uint desc_off, scores_off, scores_len, n_kv_heads, group, first, k, reduce, out_off;
    float temp_scale;
    uint mask_off, use_mask;
} pc;
shared float red[gl_WorkGroupSize.x];
shared uint scan[gl_WorkGroupSize.x];
shared uint hist[256];
shared uint res[2];

/* An unsigned key in the order of the floats (no NaN reaches it). */
uint order_key(float v) {
    uint u = floatBitsToUint(v);
    return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}

/* Exclusive prefix sum of x over the workgroup; total receives the sum. */
uint scan_excl(uint lid, uint x, out uint total) {
    uint w = gl_WorkGroupSize.x;
    scan[lid] = x;
    barrier();
    for (uint off = 1u; off < w; off <<= 1) {
        uint y = lid >= off ? scan[lid - off] : 0u;
        barrier();
        scan[lid] += y;
        barrier();
    }
    total = scan[w - 1u];
    uint before = scan[lid] - x;
    barrier();
    return before;
}

/* max (sum false) or sum of x over the workgroup. */
float fold(uint lid, float x, bool sum) {
    red[lid] = x;
    barrier();
    for (uint s = gl_WorkGroupSize.x / 2u; s > 0u; s /= 2u) {
        if (lid < s)
            red[lid] = sum ? red[lid] + red[lid + s]
                           : (red[lid + s] > red[lid] ? red[lid + s] : red[lid]);
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

void main() {
    uint bh = gl_WorkGroupID.x, lid = gl_LocalInvocationID.x, w = gl_WorkGroupSize.x;
    uint b = bh / pc.n_kv_heads, h = bh % pc.n_kv_heads;
    uint rec = pc.out_off + bh * 2u * pc.k;
    int np = desc[pc.desc_off + 4u * b + 1u], base = desc[pc.desc_off + 4u * b + 2u];
    uint hq = pc.n_kv_heads * pc.group;
    /* np * hq <= scores_len - base, without overflow */
    bool ok = np >= 0 && base >= 0 && uint(base) <= pc.scores_len &&
              uint(np) <= (pc.scores_len - uint(base)) / max(hq, 1u);
    /* a masked pair: no work, no record */
    bool skip = pc.use_mask != 0u && pair_mask[pc.mask_off + bh] == 0;
    uint n_cand = ok && !skip && np > int(pc.first) ? uint(np) - pc.first : 0u;
    uint kk = min(n_cand, pc.k);
    for (uint i = kk + lid; i < pc.k && !skip; i += w) {
        outp[rec + i] = -1;
        outp[rec + pc.k + i] = floatBitsToInt(-FKV_INF);
    }
    if (kk == 0u)
        return;
    uint n = uint(np), row0 = pc.scores_off + uint(base) + h * pc.group * n;
    for (uint r = 0u; r < pc.group; r++) {
        uint s = row0 + r * n;
        float m = -FKV_INF, sum = 0.0;
        if (pc.reduce == 0u) {
            float pm = -FKV_INF, ps = 0.0;
            for (uint j = pc.first + lid; j < n; j += w)
                pm = scores[s + j] > pm ? scores[s + j] : pm;
            m = fold(lid, pm, false);
            for (uint j = pc.first + lid; j < n; j += w) { /* kept in the row for the sum */
                scores[s + j] = exp((scores[s + j] - m) * pc.temp_scale);
                ps += scores[s + j];
            }
            sum = fold(lid, ps, true);
        }
        for (uint j = pc.first + lid; j < n; j += w) {
            float x = scores[s + j];
            float acc = r == 0u ? (pc.reduce == 2u ? -FKV_INF : 0.0) : scores[row0 + j];
            if (pc.reduce == 0u)
                acc += x / sum / float(pc.group);
            else if (pc.reduce == 1u)
                acc += x / float(pc.group);
            else
                acc = x > acc ? x : acc;
            if (r + 1u == pc.group) /* NaN ranks last; -0 ties +0 */
                acc = isnan(acc) ? -FKV_INF : (acc == 0.0 ? 0.0 : acc);
            scores[row0 + j] = acc;
        }
    }
    uint prefix = 0u, mask = 0u, rem = kk;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (uint i = lid; i < 256u; i += w)
            hist[i] = 0u;
        barrier();
        for (uint j = pc.first + lid; j < n; j += w) {
            uint key = order_key(scores[row0 + j]);
            if ((key & mask) == prefix)
                atomicAdd(hist[(key >> uint(shift)) & 255u], 1u);
        }
        barrier();
        if (lid == 0u) {
            uint bin = 255u, above = 0u;
            while (above + hist[bin] < rem)
                above += hist[bin--];
            res[0] = bin;
            res[1] = rem - above;
        }
        barrier();
        prefix |= res[0] << uint(shift);
        rem = res[1];
        mask |= 255u << uint(shift);
        barrier();
    }
    memoryBarrierBuffer(); /* every invocation's reduced values, for the ranges below */
    barrier();
    uint chunk = (n_cand + w - 1u) / w, lo = pc.first + min(lid * chunk, n_cand);
    uint hi = pc.first + min((lid + 1u) * chunk, n_cand), above = 0u, equal = 0u, total;
    for (uint j = lo; j < hi; j++) {
        uint key = order_key(scores[row0 + j]);
        above += key > prefix ? 1u : 0u;
        equal += key == prefix ? 1u : 0u;
    }
    uint eq_before = scan_excl(lid, equal, total);
    uint take = eq_before < rem ? min(equal, rem - eq_before) : 0u; /* lowest pages first */
    uint at = scan_excl(lid, above + take, total);
    for (uint j = lo; j < hi; j++) {
        float v = scores[row0 + j];
        uint key = order_key(v);
        if (key > prefix || (key == prefix && take > 0u)) {
            take -= key == prefix ? 1u : 0u;
            outp[rec + at] = int(j);
            outp[rec + pc.k + at] = floatBitsToInt(v);
            at++;
        }
    }
}
