/* The host-side reference of `freekv eval`: the exact softmax attention mass of every page,
 * per (decode step, layer, query head), computed in double precision from a trace, and the
 * oracle built on it (the best page set of a given budget). */
#ifndef FKV_EVAL_MASS_H
#define FKV_EVAL_MASS_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"
#include "trace.h"

typedef struct fkv_eval_mass {
    uint32_t steps, layers, hq, page, max_pages;
    float *mass; /* [steps][layers][hq][max_pages]: softmax mass of each page */
} fkv_eval_mass;

/* The float count of the masses of a trace of this geometry; fails with a message when it
 * exceeds 2^32 (checked before any work). */
fkv_status fkv_eval_mass_size(const fkv_trace_info *in, uint32_t page, size_t *floats);

/* Fills *m for `page`-token pages: at decode step t the sequence holds prompt + t + 1 tokens
 * (the step's token is appended before attending) and pages past them hold no mass.
 * Fails (with a message) when the array would exceed 2^32 floats or memory runs out; *m is
 * then empty. On success fkv_eval_mass_free releases it. */
fkv_status fkv_eval_mass_build(const fkv_trace *tr, uint32_t page, fkv_eval_mass *m);
void fkv_eval_mass_free(fkv_eval_mass *m);

/* The max_pages masses of (step t, layer l, query head h). */
static inline const float *fkv_eval_mass_at(const fkv_eval_mass *m, uint32_t t, uint32_t l,
                                            uint32_t h) {
    return m->mass + (((size_t)t * m->layers + l) * m->hq + h) * m->max_pages;
}

/* The first window page of a sequence of n tokens, as the library's fkv_window_begin: the
 * window ends at the current page n / page (empty when n is a page multiple), spans
 * window_pages pages and never starts inside the sink. The middle pages, where selection
 * happens, are [sink_pages, this). */
static inline uint32_t fkv_eval_window_begin(uint32_t n, uint32_t page, uint32_t sink_pages,
                                             uint32_t window_pages) {
    const uint32_t cur = n / page, w = cur + 1 >= window_pages ? cur + 1 - window_pages : 0;
    return w > sink_pages ? w : sink_pages;
}

/* The oracle: per KV head, the sink and window pages as the library defines them (the window
 * ends at the current page, n / page_size for n tokens, which is empty when n is a page
 * multiple) plus the k = (budget - sink - window) / page middle pages with the most exact
 * mass summed over the group. Mean and minimum coverage over (step, layer, query head);
 * NaN when there is nothing to cover or no memory. */
void fkv_eval_oracle(const fkv_trace_info *in, const fkv_config *c, const fkv_eval_mass *m,
                     double *mean, double *min);

#endif
