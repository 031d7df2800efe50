/* The correction's check of one (sequence, KV head) (backend.h cosine_flags), written once for
 * cosine.comp and scores.comp's CHECK variant (scores_check), so that both compute the same
 * bits. The includer names its arrays: CHECK_CUR and CHECK_PREV (float: the current queries,
 * rows of sequences from element cur0, and the previous ones, prev_count rows from prev0),
 * CHECK_SIMS (float), CHECK_FLAGS (int) and CHECK_RED (shared float, 3w at least).
 *
 * KV head bh's similarity is the mean over its group of the cosine of its queries in the
 * current rows and in row `row` of the previous ones: negative, none (NaN, flagged); beyond
 * prev_count, skipped (nothing written). flag = !(mean >= tau): a NaN is corrected; only an
 * exactly zero norm gives cosine 0, so a query holding a NaN or an infinity makes the mean
 * NaN. Each sum runs over w lanes (a power of two; lane l takes channels l, l + w, ...) and a
 * tree over them in CHECK_RED; the lsize invocations of the workgroup take lanes lid,
 * lid + lsize, ..., so the bits depend on w only. Every invocation calls it (barriers). */
void check_pair(uint cur0, uint prev0, uint prev_count, int row, uint bh, uint n_kv_heads,
                uint group, uint head_dim, float tau, uint lid, uint lsize, uint w,
                uint sims_at, uint flags_at) {
    /* a missing or bad row runs no head of the group (n_heads is the same for everyone) */
    uint n_heads = row >= 0 && uint(row) < prev_count ? group : 0u;
    uint base = cur0 + bh * group * head_dim;
    uint pbase = prev0 + (uint(n_heads != 0u ? row : 0) * n_kv_heads + bh % n_kv_heads) *
                             group * head_dim;
    float mean = row < 0 ? uintBitsToFloat(0x7fc00000u) : 0.0;
    for (uint g = 0u; g < n_heads; g++) {
        uint a = base + g * head_dim, b = pbase + g * head_dim;
        for (uint l = lid; l < w; l += lsize) {
            float ab = 0.0, aa = 0.0, bb = 0.0;
            for (uint c = l; c < head_dim; c += w) {
                float x = CHECK_CUR[a + c], y = CHECK_PREV[b + c];
                ab += x * y;
                aa += x * x;
                bb += y * y;
            }
            CHECK_RED[l] = ab;
            CHECK_RED[w + l] = aa;
            CHECK_RED[2u * w + l] = bb;
        }
        barrier();
        for (uint s = w / 2u; s > 0u; s /= 2u) {
            for (uint l = lid; l < s; l += lsize) {
                CHECK_RED[l] += CHECK_RED[l + s];
                CHECK_RED[w + l] += CHECK_RED[w + l + s];
                CHECK_RED[2u * w + l] += CHECK_RED[2u * w + l + s];
            }
            barrier();
        }
        if (lid == 0u) {
            float na = sqrt(CHECK_RED[w]), nb = sqrt(CHECK_RED[2u * w]);
            mean += (na == 0.0 || nb == 0.0) ? 0.0 : CHECK_RED[0] / (na * nb);
        }
        barrier(); /* CHECK_RED is reused by the next head (and by the includer after) */
    }
    if (lid == 0u && (n_heads != 0u || row < 0)) {
        mean /= float(group);
        CHECK_SIMS[sims_at] = mean;
        CHECK_FLAGS[flags_at] = (mean >= tau) ? 0 : 1;
    }
}
