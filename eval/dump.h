/* `freekv eval --dump FILE.jsonl`: one JSON object per line and per (policy, decode step,
 * layer, KV head), in decode order, for every policy --policies shows except dense (the
 * reference, which attends every page):
 *
 * {"policy": "freekv", "step": 3, "layer": 0, "kv_head": 1,
 *  "pages": [0, 1, 2, 3, 40, 57, 251, 252, 253, 254, 255, 256],
 *  "corrected": true, "group_cosine": 0.8412,
 *  "mass": [0.91, 0.88, 0.95, 0.9],
 *  "exact_pages": [40, 57, 101], "exact_kept": 0.666667}
 *
 *   step, layer, kv_head  decode step (0 = first after the prompt), layer, KV head
 *   pages          the logical pages this step's attention read for the KV head, ascending:
 *                  sink, selected middle pages and window (fkv_context_attended_pages)
 *   corrected      freekv: whether the KV head was corrected at this step (selected again with
 *                  the step's own query before attention); null for the policies that do not
 *                  check (quest, sync, speculative)
 *   group_cosine   the mean over the KV head's query heads of the cosine between this step's
 *                  query and the previous one (step 0: the last prompt token's), computed on
 *                  the host in double precision; freekv corrects when it is below tau
 *   mass           per query head of the group (in order), the exact attention mass the
 *                  pages cover
 *   exact_pages    the middle pages exact selection chose at this step: quest's selection
 *                  with the step's own query, same settings (sink and window, which every
 *                  policy keeps, are left out)
 *   exact_kept     the share of exact_pages that `pages` holds; null when exact_pages is
 *                  empty
 * Numbers are printed with 6 significant digits. */
#ifndef FKV_EVAL_DUMP_H
#define FKV_EVAL_DUMP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct fkv_eval_dump_record {
    const char *policy;
    uint32_t step, layer, kv_head;
    const int32_t *pages;
    size_t n_pages;
    int corrected; /* 1, 0, or -1: the policy does not check (null) */
    double group_cosine;
    const double *mass; /* [group] */
    uint32_t group;
    const int32_t *exact;
    size_t n_exact;
    double exact_kept; /* NaN: null */
} fkv_eval_dump_record;

void fkv_eval_dump_write(FILE *f, const fkv_eval_dump_record *r);

#endif
