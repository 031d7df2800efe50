/* Page selection, pure host code: group-consistent reduction of per-query-head scores, top-k
 * among candidates, and the incremental recall plan (what to fetch, which slots to evict). */
#ifndef FKV_CORE_SELECT_H
#define FKV_CORE_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"

#define FKV_MAX_MIDDLE_SLOTS 4096

/* Reduces scores of the `group` query heads of one KV head over candidate pages
 * [cand_begin, cand_end). scores: row r (query head in the group) at scores + r*stride,
 * indexed by page. out[j - cand_begin]. Softmax-mean normalises over the candidates, the
 * softmax taken of the scores times `temp_scale` (> 0; fkv_group_temp_scale); the other
 * modes ignore it. */
void fkv_reduce_group(const float *scores, size_t stride, uint32_t group, uint32_t cand_begin,
                      uint32_t cand_end, fkv_group_reduce mode, double temp_scale, float *out);

/* The softmax scale of a configuration's group_temperature: 1 (FKV_TEMP_RAW) or
 * 1/sqrt(head_dim) (FKV_TEMP_SQRT_D). */
double fkv_group_temp_scale(const fkv_config *c);

/* Indices (0-based into values) of the k largest values, ties broken by lower index; writes
 * min(k, n) indices, sorted by descending value, and returns that count. */
uint32_t fkv_topk(const float *values, uint32_t n, uint32_t k, uint32_t *out);

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
