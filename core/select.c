/* Selection math, pure host code with no context: the order of a device selection and the slot
 * plan that retrieval.c runs per KV head. Separate so that it is tested on its own numbers. */
#include "select.h"

#include <math.h>

double fkv_group_temp_scale(const fkv_config *c) {
    return c->group_temperature == FKV_TEMP_SQRT_D ? 1.0 / sqrt((double)c->head_dim) : 1.0;
}

/* Bottom-up merge sort: stable, so equal scores keep the ascending page order they came in;
 * k is up to a few thousand pages, and this is O(k log k) with no recursion. */
void fkv_order_selection(uint32_t *page, float *score, uint32_t n, uint32_t *tmp_page,
                         float *tmp_score) {
    uint32_t *sp = page, *dp = tmp_page;
    float *ss = score, *ds = tmp_score;
    for (uint32_t w = 1; w < n; w *= 2) {
        for (uint32_t lo = 0; lo < n; lo += 2 * w) {
            uint32_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            uint32_t a = lo, b = mid, o = lo;
            while (a < mid || b < hi) {
                int left = b >= hi || (a < mid && !(ss[b] > ss[a]));
                uint32_t from = left ? a++ : b++;
                dp[o] = sp[from];
                ds[o++] = ss[from];
            }
        }
        uint32_t *tp = sp;
        float *ts = ss;
        sp = dp, ss = ds, dp = tp, ds = ts;
    }
    if (sp != page)
        for (uint32_t i = 0; i < n; i++) {
            page[i] = sp[i];
            score[i] = ss[i];
        }
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
