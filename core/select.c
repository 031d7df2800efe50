/* Selection math, pure host code with no context: the group reduction, top-k and slot plan
 * that retrieval.c runs per KV head. Separate so that it is tested on its own numbers. */
#include "select.h"

#include <math.h>

double fkv_group_temp_scale(const fkv_config *c) {
    return c->group_temperature == FKV_TEMP_SQRT_D ? 1.0 / sqrt((double)c->head_dim) : 1.0;
}

void fkv_reduce_group(const float *scores, size_t stride, uint32_t group, uint32_t cand_begin,
                      uint32_t cand_end, fkv_group_reduce mode, double temp_scale, float *out) {
    uint32_t n = cand_end - cand_begin;
    for (uint32_t j = 0; j < n; j++)
        out[j] = mode == FKV_GROUP_MAX ? -INFINITY : 0.0f;
    for (uint32_t r = 0; r < group; r++) {
        const float *s = scores + r * stride + cand_begin;
        if (mode == FKV_GROUP_SOFTMAX_MEAN) {
            float m = -INFINITY;
            for (uint32_t j = 0; j < n; j++)
                m = s[j] > m ? s[j] : m;
            /* the scale multiplies after the max is taken out (the max of scaled scores is the
             * scaled max); a scale of 1 is exact, so the raw default is bit for bit the
             * softmax of the raw bounds */
            double sum = 0;
            for (uint32_t j = 0; j < n; j++)
                sum += exp(((double)s[j] - m) * temp_scale);
            for (uint32_t j = 0; j < n; j++)
                out[j] += (float)(exp(((double)s[j] - m) * temp_scale) / sum / group);
        } else if (mode == FKV_GROUP_MEAN) {
            for (uint32_t j = 0; j < n; j++)
                out[j] += s[j] / (float)group;
        } else {
            for (uint32_t j = 0; j < n; j++)
                out[j] = s[j] > out[j] ? s[j] : out[j];
        }
    }
    /* NaN scores (corrupt keys) must not win or break the ordering: rank them last. */
    for (uint32_t j = 0; j < n; j++)
        if (out[j] != out[j])
            out[j] = -INFINITY;
}

/* Partial selection by a bounded insertion into a sorted buffer: k is small (tens of pages)
 * and n is at most a few thousand, so this beats sorting everything and needs no state. */
uint32_t fkv_topk(const float *values, uint32_t n, uint32_t k, uint32_t *out) {
    uint32_t m = 0;
    if (k > n)
        k = n;
    for (uint32_t i = 0; i < n && k > 0; i++) {
        float v = values[i];
        if (m == k && !(v > values[out[m - 1]]))
            continue; /* ties keep the lower index already held */
        uint32_t pos = m < k ? m++ : k - 1;
        while (pos > 0 && v > values[out[pos - 1]]) {
            out[pos] = out[pos - 1];
            pos--;
        }
        out[pos] = i;
    }
    return m;
}

uint32_t fkv_plan_slots(int32_t *slot_page, float *slot_score, uint32_t n_mid,
                        const uint32_t *selected, const float *sel_score, uint32_t n_sel,
                        uint32_t *fill_slot, uint32_t *fill_page, uint32_t *work) {
    /* Which selected pages are resident, and where. n_mid and n_sel are small. */
    uint32_t n_fill = 0;
    uint32_t *keep = work, *have = work + n_mid, *victims = work + 2 * (size_t)n_mid;
    for (uint32_t m = 0; m < n_mid; m++)
        keep[m] = 0;
    for (uint32_t i = 0; i < n_sel; i++) {
        have[i] = 0;
        for (uint32_t m = 0; m < n_mid; m++)
            if (slot_page[m] == (int32_t)selected[i]) {
                keep[m] = 1;
                have[i] = 1;
                slot_score[m] = sel_score[i];
                break;
            }
    }
    /* Victim order: empty slots first, then unselected pages by ascending old score. */
    uint32_t n_vict = 0;
    for (uint32_t m = 0; m < n_mid; m++)
        if (!keep[m])
            victims[n_vict++] = m;
    for (uint32_t a = 1; a < n_vict; a++) {
        uint32_t v = victims[a], b = a;
        while (b > 0) {
            uint32_t u = victims[b - 1];
            int u_empty = slot_page[u] < 0, v_empty = slot_page[v] < 0;
            int before = v_empty > u_empty ||
                         (v_empty == u_empty && !v_empty && slot_score[v] < slot_score[u]);
            if (!before)
                break;
            victims[b] = u;
            b--;
        }
        victims[b] = v;
    }
    uint32_t next = 0;
    for (uint32_t i = 0; i < n_sel; i++) {
        if (have[i] || next >= n_vict)
            continue;
        uint32_t m = victims[next++];
        slot_page[m] = (int32_t)selected[i];
        slot_score[m] = sel_score[i];
        fill_slot[n_fill] = m;
        fill_page[n_fill] = selected[i];
        n_fill++;
    }
    /* Unselected pages left in slots are stale: drop them so attention reads only the
     * selection (they stay cheap to re-fill only if selected again). */
    for (; next < n_vict; next++) {
        slot_page[victims[next]] = -1;
    }
    return n_fill;
}
