/* Page selection, pure host code: the order of a selection the device made (select_pages:
 * group reduction and top-k run on the device) and the incremental recall plan (what to
 * fetch, which slots to evict). */
#ifndef FKV_CORE_SELECT_H
#define FKV_CORE_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"

#define FKV_MAX_MIDDLE_SLOTS 4096

/* The softmax scale of a configuration's group_temperature: 1 (FKV_TEMP_RAW) or
 * 1/sqrt(head_dim) (FKV_TEMP_SQRT_D). */
double fkv_group_temp_scale(const fkv_config *c);

/* Orders a selection read back from the device (pages ascending, as select_pages writes
 * them) best first: by score descending, ties by lower page (a stable sort of the ascending
 * input). tmp_page/tmp_score: scratch of n entries each. */
void fkv_order_selection(uint32_t *page, float *score, uint32_t n, uint32_t *tmp_page,
                         float *tmp_score);

/* Incremental plan for one KV head's middle slots (n_mid <= FKV_MAX_MIDDLE_SLOTS).
 *   slot_page[m]  page held by middle slot m (-1 empty), updated in place
 *   slot_score[m] updated to the new reduced score of the page it holds
 *   selected[i], sel_score[i], i < n_sel <= n_mid: the new selection (distinct pages)
 *   work: scratch of FKV_PLAN_WORK(n_mid) entries
 * Writes the slots that must receive a page into fill_slot/fill_page (missing pages, best
 * first) and returns their count. Resident selected pages stay where they are; the slots of
 * unselected pages are reused lowest score first, empty slots before any. */
#define FKV_PLAN_WORK(n_mid) (3 * (size_t)(n_mid))
uint32_t fkv_plan_slots(int32_t *slot_page, float *slot_score, uint32_t n_mid,
                        const uint32_t *selected, const float *sel_score, uint32_t n_sel,
                        uint32_t *fill_slot, uint32_t *fill_page, uint32_t *work);

#endif
