/* Kernels of the CPU reference backend (see cpu_kernels.h): plain loops (select_pages' in
 * vectors, with the same results), f32 arithmetic, every index from an index array
 * bounds-checked before use. */
#include "cpu_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/dtype.h"
#include "../../common/error.h"
#include "../../common/hostfmt.h"
#include "cpu_pool.h"
#include "cpu_scores.h"
#include "cpu_vec.h"

static size_t row_elems(const fkv_kv_geom *g) { return (size_t)g->n_kv_heads * g->head_dim; }

fkv_status cpu_append(const fkv_kv_geom *g, const float *k_src, const float *v_src,
                      uint32_t n_rows, const int32_t *rows, void *kpool, void *vpool,
                      size_t pool_rows) {
    size_t re = row_elems(g);
    for (uint32_t i = 0; i < n_rows; i++) {
        if (!cpu_rows_in_pool(rows[i], 1, pool_rows))
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "append: rows[%u] = %d is outside the pool (%zu rows)", i, rows[i],
                             pool_rows);
        size_t dst = (size_t)rows[i] * re;
        for (size_t e = 0; e < re; e++) {
            fkv_store(kpool, g->dtype, dst + e, k_src[i * re + e]);
            fkv_store(vpool, g->dtype, dst + e, v_src[i * re + e]);
        }
    }
    return FKV_OK;
}

fkv_status cpu_summarize(const fkv_kv_geom *g, const void *kpool, size_t pool_rows,
                         uint32_t n_pages, const int32_t *pages, void *summaries,
                         size_t n_summaries) {
    size_t re = row_elems(g), d = g->head_dim, p = g->page_size;
    for (uint32_t i = 0; i < n_pages; i++) {
        int32_t gslot = pages[2 * i], s = pages[2 * i + 1];
        if (gslot < 0 || !cpu_rows_in_pool((int64_t)gslot * (int64_t)p, p, pool_rows))
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "summarize: pages[%u] has gslot %d, the pool holds %zu slots", i,
                             gslot, pool_rows / p);
        if (s < 0 || (size_t)s >= n_summaries)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "summarize: pages[%u] has summary %d, the buffer holds %zu", i, s,
                             n_summaries);
        for (uint32_t h = 0; h < g->n_kv_heads; h++) {
            size_t mn = ((size_t)s * g->n_kv_heads + h) * 2 * d, mx = mn + d; /* elements */
            for (size_t c = 0; c < d; c++) {
                size_t first = (size_t)gslot * p * re + h * d + c;
                float lo = fkv_load(kpool, g->dtype, first), hi = lo;
                for (size_t t = 1; t < p; t++) {
                    float x = fkv_load(kpool, g->dtype, first + t * re);
                    lo = fminf(lo, x); /* fminf/fmaxf skip NaN keys */
                    hi = fmaxf(hi, x);
                }
                if (g->summary_format == FKV_SUMMARY_F16) {
                    ((uint16_t *)summaries)[mn + c] = fkv_f32_to_f16_down(lo);
                    ((uint16_t *)summaries)[mx + c] = fkv_f32_to_f16_up(hi);
                } else {
                    ((float *)summaries)[mn + c] = lo;
                    ((float *)summaries)[mx + c] = hi;
                }
            }
        }
    }
    return FKV_OK;
}

/* The pool's work is counted in attention K/V elements (CPU_MIN_SHARED_ELEMENTS, about
 * 0.2 ns each on one core). A score in select_pages cost about 32 of them (its expf and
 * passes, 7 ns; 5 ns since its passes but the expf run in vectors, kept at 32 as the point
 * from which a call is shared was measured with it), measured with freekv-opbench on one
 * thread. A summary element of the scores
 * costs about 1 since they run in vectors (2-3 in the baseline copy), but counting it as 4,
 * which shares a call from 8K tokens of the small preset, made the offloaded steps at 16K-32K
 * 10-35% shorter than counting it as 1 (docs/bench.md). */
#define SCORES_WORK_PER_ELEMENT 4
#define SELECT_WORK_PER_ELEMENT 32

/* A copy of a call's descriptors (n_seqs * FKV_SCORES_DESC_INTS) and mask (n_pairs, or
 * none), which its items read instead of the buffers: an output that overlaps them cannot
 * change an entry after it was checked. NULL: out of host memory (message set). *mask_copy
 * points into the same allocation (NULL without a mask). */
static int32_t *copy_desc(const char *op, const int32_t *desc, uint32_t n_seqs,
                          const int32_t *mask, size_t n_pairs, const int32_t **mask_copy) {
    size_t n_desc = (size_t)n_seqs * FKV_SCORES_DESC_INTS, n = n_desc + (mask ? n_pairs : 0);
    int32_t *copy = malloc((n ? n : 1) * sizeof *copy);
    if (copy == NULL) {
        fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s: no host memory for %zu descriptors", op, n);
        return NULL;
    }
    memcpy(copy, desc, n_desc * sizeof *copy);
    if (mask)
        memcpy(copy + n_desc, mask, n_pairs * sizeof *copy);
    *mask_copy = mask ? copy + n_desc : NULL;
    return copy;
}

/* Pages a scores item covers: a call's items are (sequence, KV head, range of pages), so a
 * long context gives the pool's threads many items (not one per KV head: 8 at batch 1 with
 * Llama-3.1-8B) and a thread that joins late still finds work. Each score is computed alone,
 * so the bits do not depend on the ranges. */
#define SCORES_ITEM_PAGES 1024

/* One scores call's items, run by the pool's threads (cpu_pool.h); each thread has its own
 * scratch (a tile), allocated when it takes its first item. */
typedef struct scores_call {
    const fkv_kv_geom *g;
    cpu_score_head_fn *score_head;
    const float *q;
    const int32_t *desc, *mask; /* the checked copies */
    const void *summaries;
    float *out;
    size_t ranges; /* items per (sequence, KV head): the longest sequence's ranges */
    size_t scratch_floats;
    float **scratch; /* [cpu_pool_width] */
} scores_call;

static fkv_status score_item(void *ctx, uint32_t worker, size_t item) {
    scores_call *c = ctx;
    const fkv_kv_geom *g = c->g;
    size_t pair = item / c->ranges, j0 = item % c->ranges * SCORES_ITEM_PAGES;
    size_t b = pair / g->n_kv_heads, kv_head = pair % g->n_kv_heads;
    const int32_t *db = c->desc + (size_t)FKV_SCORES_DESC_INTS * b;
    size_t n_pages = (size_t)db[1];
    if ((c->mask && !c->mask[pair]) || j0 >= n_pages)
        return FKV_OK;
    if (c->scratch[worker] == NULL) {
        c->scratch[worker] = malloc(sizeof(float) * c->scratch_floats);
        if (c->scratch[worker] == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "scores: %zu bytes of scratch",
                             sizeof(float) * c->scratch_floats);
    }
    size_t d = g->head_dim, n_q_heads = (size_t)g->n_kv_heads * g->group;
    size_t n = n_pages - j0 < SCORES_ITEM_PAGES ? n_pages - j0 : SCORES_ITEM_PAGES;
    c->score_head(g, c->q + ((size_t)db[3] * n_q_heads + kv_head * g->group) * d, c->summaries,
                  (size_t)db[0] + j0, kv_head, n, n_pages, c->scratch[worker],
                  c->out + (size_t)db[2] + kv_head * g->group * n_pages + j0);
    return FKV_OK;
}

/* The scores' check of sequence b's descriptor db. */
static fkv_status check_scores_desc(const int32_t *db, uint32_t b, size_t q_rows,
                                    size_t n_summaries, size_t n_q_heads, size_t out_len) {
    int32_t base = db[0], n_pages = db[1], out_base = db[2], row = db[3];
    if (row < 0 || (size_t)row >= q_rows)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "scores: sequence %u reads query row %d, the buffer holds %zu", b, row,
                         q_rows);
    if (base < 0 || n_pages < 0 || (size_t)base + (size_t)n_pages > n_summaries)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "scores: sequence %u reads summaries [%d, %d + %d), buffer holds %zu", b,
                         base, base, n_pages, n_summaries);
    if (out_base < 0 || (size_t)out_base + n_q_heads * (size_t)n_pages > out_len)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "scores: sequence %u writes %zu scores at %d, output holds %zu", b,
                         n_q_heads * (size_t)n_pages, out_base, out_len);
    return FKV_OK;
}

fkv_status cpu_scores(const fkv_kv_geom *g, const float *q, size_t q_rows, uint32_t n_seqs,
                      const int32_t *desc, const int32_t *mask, const void *summaries,
                      size_t n_summaries, float *out, size_t out_len, cpu_isa isa,
                      cpu_pool *pool) {
    size_t d = g->head_dim, n_q_heads = (size_t)g->n_kv_heads * g->group;
    uint64_t elements = 0; /* the pool's measure, which a 32-bit size_t could wrap */
    size_t n_pairs = (size_t)n_seqs * g->n_kv_heads, max_pages = 0;
    scores_call c = {.g = g, .score_head = cpu_score_head_for(isa), .q = q,
                     .summaries = summaries, .out = out,
                     .scratch_floats = cpu_score_scratch_floats(d)};
    if (c.score_head == NULL)
        return fkv_error(FKV_ERR_UNSUPPORTED, "scores: this CPU or build lacks that level");
    int32_t *copy = copy_desc("scores", desc, n_seqs, mask, n_pairs, &c.mask);
    if (copy == NULL)
        return FKV_ERR_OUT_OF_HOST_MEMORY;
    c.desc = copy;
    /* Every sequence is checked before any score is written. The spans: q, the summaries and
     * each sequence's scores (cpu_pool_for). */
    cpu_span *spans = malloc(((size_t)n_seqs + 2) * sizeof *spans);
    if (spans) {
        spans[0] = cpu_span_of(q, q_rows * n_q_heads * d * sizeof(float));
        spans[1] = cpu_span_of(summaries, n_summaries * fkv_summary_bytes(g));
    }
    for (uint32_t b = 0; b < n_seqs; b++) {
        const int32_t *db = c.desc + (size_t)FKV_SCORES_DESC_INTS * b;
        fkv_status st = check_scores_desc(db, b, q_rows, n_summaries, n_q_heads, out_len);
        if (st != FKV_OK) {
            free(spans);
            free(copy);
            return st;
        }
        size_t n_scores = n_q_heads * (size_t)db[1];
        elements += (uint64_t)db[1] * g->n_kv_heads * 2 * d;
        max_pages = (size_t)db[1] > max_pages ? (size_t)db[1] : max_pages;
        if (spans)
            spans[2 + b] = cpu_span_of(out + db[2], n_scores * sizeof(float));
    }
    pool = cpu_pool_for(pool, spans, (size_t)n_seqs + 2);
    free(spans);
    uint32_t width = cpu_pool_width(pool);
    c.scratch = calloc(width, sizeof(float *));
    c.ranges = max_pages > SCORES_ITEM_PAGES ? (max_pages - 1) / SCORES_ITEM_PAGES + 1 : 1;
    if (n_pairs > SIZE_MAX / c.ranges) /* a 32-bit size_t: one item per pair */
        c.ranges = 1;
    fkv_status st = c.scratch ? cpu_pool_run(pool, n_pairs * c.ranges,
                                             elements * SCORES_WORK_PER_ELEMENT, score_item, &c)
                              : fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "scores: no host memory");
    for (uint32_t i = 0; c.scratch && i < width; i++)
        free(c.scratch[i]);
    free(c.scratch);
    free(copy);
    return st;
}

/* Eight lanes of p from j, `pad` in those at or past n; and the store of those before n. */
CPU_VEC_INLINE cpu_vf lanes_at(const float *p, uint32_t j, uint32_t n, float pad) {
    cpu_vf v;
    if (j + CPU_LANES <= n) {
        memcpy(&v, p + j, sizeof v);
        return v;
    }
    for (uint32_t l = 0; l < CPU_LANES; l++)
        v[l] = j + l < n ? p[j + l] : pad;
    return v;
}
CPU_VEC_INLINE void lanes_put(float *p, uint32_t j, uint32_t n, cpu_vf v) {
    if (j + CPU_LANES <= n) {
        memcpy(p + j, &v, sizeof v);
        return;
    }
    for (uint32_t l = 0; j + l < n; l++)
        p[j + l] = v[l];
}
/* a where keep, else b, lane by lane. */
CPU_VEC_INLINE cpu_vf lanes_pick(cpu_vi keep, cpu_vf a, cpu_vf b) {
    cpu_vi ai, bi;
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    ai = (keep & ai) | (~keep & bi);
    memcpy(&a, &ai, sizeof a);
    return a;
}

/* expf calls between two stretches of the sum: the calls clobber every vector register, so
 * a sum carried across each call went through memory once per page. */
#define SELECT_EXP_BLOCK 16

/* The reduced value of page j, accumulated in row0[j] over the group's rows r ascending (the
 * order every backend keeps per page, so mean and max agree bit for bit). Softmax takes row
 * r's max (NaN skipped) and sum of expf first, the sum over the pages in order, keeping each
 * expf in the row (scratch) for the accumulation; row 0 is read before it is overwritten.
 * The max and the accumulation run in vectors with the same results: each page's arithmetic
 * is lane-wise, and the max is the same value in any order but for the sign of a zero, which
 * no s - max it is subtracted from can show after expf. */
static void reduce_rows(float *row0, size_t stride, uint32_t group, uint32_t first,
                        uint32_t n_pages, const fkv_select_params *p) {
    const cpu_vf zero = {0}, ninf = zero - INFINITY, vgroup = zero + (float)group;
    for (uint32_t r = 0; r < group; r++) {
        float *s = row0 + (size_t)r * stride;
        float sum = 0.0f;
        if (p->reduce == FKV_GROUP_SOFTMAX_MEAN) {
            cpu_vf mv = ninf;
            for (uint32_t j = first; j < n_pages; j += CPU_LANES) {
                cpu_vf x = lanes_at(s, j, n_pages, -INFINITY);
                mv = lanes_pick(x > mv, x, mv);
            }
            float m = -INFINITY;
            for (uint32_t l = 0; l < CPU_LANES; l++)
                m = mv[l] > m ? mv[l] : m;
            for (uint32_t j0 = first; j0 < n_pages; j0 += SELECT_EXP_BLOCK) {
                uint32_t j1 = n_pages - j0 < SELECT_EXP_BLOCK ? n_pages : j0 + SELECT_EXP_BLOCK;
                for (uint32_t j = j0; j < j1; j++)
                    s[j] = expf((s[j] - m) * p->temp_scale);
                for (uint32_t j = j0; j < j1; j++)
                    sum += s[j];
            }
        }
        const cpu_vf vsum = zero + sum;
        for (uint32_t j = first; j < n_pages; j += CPU_LANES) {
            cpu_vf x = lanes_at(s, j, n_pages, 0.0f);
            cpu_vf acc = p->reduce == FKV_GROUP_MAX ? ninf : zero;
            if (r > 0)
                acc = lanes_at(row0, j, n_pages, 0.0f);
            if (p->reduce == FKV_GROUP_SOFTMAX_MEAN)
                acc += x / vsum / vgroup;
            else if (p->reduce == FKV_GROUP_MEAN)
                acc += x / vgroup;
            else
                acc = lanes_pick(x > acc, x, acc);
            if (r + 1 == group) /* NaN ranks last; -0 ties +0 */
                acc = lanes_pick(acc != acc, ninf, lanes_pick(acc == zero, zero, acc));
            lanes_put(row0, j, n_pages, acc);
        }
    }
}

/* An unsigned key in the order of the floats (no NaN reaches it). */
static uint32_t order_key(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/* Radix select of the kk-th largest key (kk <= n): *thr receives it, and the return value is
 * how many keys equal to it are selected (the lowest pages first); all keys above it are. */
static uint32_t kth_key(const float *v, uint32_t first, uint32_t n_pages, uint32_t kk,
                        uint32_t *thr) {
    uint32_t prefix = 0, mask = 0, rem = kk;
    for (int shift = 24; shift >= 0; shift -= 8) {
        uint32_t hist[256] = {0};
        for (uint32_t j = first; j < n_pages; j++) {
            uint32_t key = order_key(v[j]);
            if ((key & mask) == prefix)
                hist[(key >> shift) & 255u]++;
        }
        uint32_t bin = 255, above = 0;
        while (above + hist[bin] < rem)
            above += hist[bin--];
        rem -= above;
        prefix |= bin << shift;
        mask |= 255u << shift;
    }
    *thr = prefix;
    return rem;
}

/* One select_pages call's (sequence, KV head) pairs, run by the pool's threads: each pair
 * reduces its own rows of the scores and writes its own record. */
typedef struct select_call {
    const fkv_kv_geom *g;
    const int32_t *desc, *mask; /* the checked copies */
    float *scores;
    const fkv_select_params *p;
    int32_t *out;
} select_call;

static fkv_status select_item(void *ctx, uint32_t worker, size_t item) {
    (void)worker;
    select_call *c = ctx;
    const fkv_select_params *p = c->p;
    size_t hk = c->g->n_kv_heads, k = p->k, b = item / hk, h = item % hk;
    if (c->mask && !c->mask[item])
        return FKV_OK;
    uint32_t np = (uint32_t)c->desc[FKV_SCORES_DESC_INTS * b + 1];
    int32_t base = c->desc[FKV_SCORES_DESC_INTS * b + 2];
    uint32_t n_cand = np > p->first_page ? np - p->first_page : 0;
    uint32_t kk = n_cand < p->k ? n_cand : p->k;
    int32_t *pages = c->out + item * 2 * k;
    float *vals = (float *)(pages + k);
    for (size_t i = 0; i < k; i++) {
        pages[i] = -1;
        vals[i] = -INFINITY;
    }
    if (kk == 0)
        return FKV_OK;
    float *row0 = c->scores + (size_t)base + h * c->g->group * np;
    reduce_rows(row0, np, c->g->group, p->first_page, np, p);
    uint32_t thr, n_eq = kth_key(row0, p->first_page, np, kk, &thr), n_out = 0;
    for (uint32_t j = p->first_page; j < np && n_out < kk; j++) {
        uint32_t key = order_key(row0[j]);
        if (key > thr || (key == thr && n_eq > 0)) {
            n_eq -= key == thr;
            pages[n_out] = (int32_t)j;
            vals[n_out++] = row0[j];
        }
    }
    return FKV_OK;
}

fkv_status cpu_select_pages(const fkv_kv_geom *g, uint32_t n_seqs, const int32_t *desc,
                            const int32_t *mask, float *scores, size_t scores_len,
                            const fkv_select_params *p, int32_t *out, cpu_pool *pool) {
    size_t hk = g->n_kv_heads, hq = hk * g->group;
    uint64_t elements = 0;
    select_call c = {.g = g, .scores = scores, .p = p, .out = out};
    int32_t *copy = copy_desc("select_pages", desc, n_seqs, mask, (size_t)n_seqs * hk, &c.mask);
    if (copy == NULL)
        return FKV_ERR_OUT_OF_HOST_MEMORY;
    c.desc = copy;
    /* Every sequence is checked before any record is written. The spans: the records and
     * each sequence's scores, which its pairs overwrite (cpu_pool_for). */
    cpu_span *spans = malloc(((size_t)n_seqs + 1) * sizeof *spans);
    if (spans)
        spans[0] = cpu_span_of(out, (size_t)n_seqs * hk * 2 * p->k * sizeof(int32_t));
    for (uint32_t b = 0; b < n_seqs; b++) {
        int32_t n_pages = c.desc[FKV_SCORES_DESC_INTS * b + 1];
        int32_t base = c.desc[FKV_SCORES_DESC_INTS * b + 2];
        if (n_pages < 0 || base < 0 || (size_t)base + hq * (size_t)n_pages > scores_len) {
            free(spans);
            free(copy);
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "select_pages: sequence %u reads %zu scores at %d, buffer holds %zu",
                             b, hq * (size_t)(n_pages > 0 ? n_pages : 0), base, scores_len);
        }
        elements += (uint64_t)hq * (uint64_t)n_pages;
        if (spans)
            spans[1 + b] = cpu_span_of(scores + base, hq * (size_t)n_pages * sizeof(float));
    }
    pool = cpu_pool_for(pool, spans, (size_t)n_seqs + 1);
    free(spans);
    fkv_status st = cpu_pool_run(pool, (size_t)n_seqs * hk, elements * SELECT_WORK_PER_ELEMENT,
                                 select_item, &c);
    free(copy);
    return st;
}

fkv_status cpu_cosine_flags(const fkv_kv_geom *g, const float *q_cur, const float *q_prev,
                            size_t prev_count, const int32_t *prev_rows, uint32_t n_seqs,
                            float tau, float *sims, int32_t *flags) {
    size_t d = g->head_dim, n_q_heads = (size_t)g->n_kv_heads * g->group;
    for (uint32_t b = 0; b < n_seqs; b++) {
        int32_t row = prev_rows[b];
        if (row >= 0 && (size_t)row >= prev_count)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "cosine_flags: sequence %u reads previous row %d, the buffer holds "
                             "%zu", b, row, prev_count);
        for (uint32_t h = 0; h < g->n_kv_heads; h++) {
            float total = row < 0 ? NAN : 0.0f; /* no previous query: corrected */
            for (uint32_t i = 0; i < g->group && row >= 0; i++) {
                size_t at = ((size_t)b * n_q_heads + (size_t)h * g->group + i) * d;
                size_t at_prev = ((size_t)row * n_q_heads + (size_t)h * g->group + i) * d;
                const float *a = q_cur + at, *c = q_prev + at_prev;
                float dot = 0.0f, na = 0.0f, nc = 0.0f;
                for (size_t k = 0; k < d; k++) {
                    dot += a[k] * c[k];
                    na += a[k] * a[k];
                    nc += c[k] * c[k];
                }
                /* The product of the roots, not the root of the product, avoids overflow.
                 * Only an exactly zero norm gives 0: a NaN norm makes the mean NaN. */
                float cosine = (na == 0.0f || nc == 0.0f) ? 0.0f : dot / (sqrtf(na) * sqrtf(nc));
                total += cosine;
            }
            float sim = total / (float)g->group;
            sims[(size_t)b * g->n_kv_heads + h] = sim;
            flags[(size_t)b * g->n_kv_heads + h] = !(sim >= tau); /* NaN: correct */
        }
    }
    return FKV_OK;
}

fkv_status cpu_pack_hnd(const fkv_kv_geom *g, const void *kpool, const void *vpool,
                        size_t pool_rows, uint32_t n_pages, const int32_t *gslots, void *dst) {
    size_t es = fkv_dtype_size(g->dtype), re = row_elems(g), d = g->head_dim, p = g->page_size;
    size_t run = d * es; /* one token of one head is contiguous on both sides */
    size_t unit_bytes = fkv_unit_bytes(g);
    for (uint32_t i = 0; i < n_pages; i++) {
        int32_t gslot = gslots[i];
        if (gslot < 0 || !cpu_rows_in_pool((int64_t)gslot * (int64_t)p, p, pool_rows))
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "pack_hnd: gslots[%u] = %d, the pool holds %zu slots", i, gslot,
                             pool_rows / p);
        unsigned char *page = (unsigned char *)dst + (size_t)i * g->n_kv_heads * unit_bytes;
        for (uint32_t h = 0; h < g->n_kv_heads; h++) {
            size_t first = (size_t)gslot * p * re + (size_t)h * d;
            if (g->host_format != FKV_HOST_SAME) {
                fkv_hostfmt_quantize(g->host_format, g->page_size, g->head_dim, kpool, vpool,
                                     g->dtype, first, re, page + (size_t)h * unit_bytes);
                continue;
            }
            for (size_t t = 0; t < p; t++) {
                size_t src_elem = first + t * re;
                unsigned char *k_dst = page + (((size_t)h * 2 + 0) * p + t) * run;
                unsigned char *v_dst = page + (((size_t)h * 2 + 1) * p + t) * run;
                memcpy(k_dst, (const unsigned char *)kpool + src_elem * es, run);
                memcpy(v_dst, (const unsigned char *)vpool + src_elem * es, run);
            }
        }
    }
    return FKV_OK;
}

/* One [K|V][p][d] unit into KV head `head` of slot `slot` (both already checked); a
 * quantized unit is dequantized into the slot's dtype. */
static void scatter_unit(const fkv_kv_geom *g, const unsigned char *unit, size_t slot,
                         size_t head, void *kpool, void *vpool) {
    size_t es = fkv_dtype_size(g->dtype), re = row_elems(g), d = g->head_dim, p = g->page_size;
    size_t run = d * es;
    if (g->host_format != FKV_HOST_SAME) {
        fkv_hostfmt_dequantize(g->host_format, g->page_size, g->head_dim, unit, kpool, vpool,
                               g->dtype, slot * p * re + head * d, re);
        return;
    }
    for (size_t t = 0; t < p; t++) {
        size_t dst_elem = (slot * p + t) * re + head * d;
        memcpy((unsigned char *)kpool + dst_elem * es, unit + t * run, run);
        memcpy((unsigned char *)vpool + dst_elem * es, unit + (p + t) * run, run);
    }
}

static fkv_status check_unit(const char *op, const fkv_kv_geom *g, uint32_t i, int32_t slot,
                             int32_t head, size_t pool_rows) {
    size_t p = g->page_size;
    if (slot < 0 || !cpu_rows_in_pool((int64_t)slot * (int64_t)p, p, pool_rows))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "%s: unit %u has slot %d, the pool holds %zu slots", op, i, slot,
                         pool_rows / p);
    if (head < 0 || (uint32_t)head >= g->n_kv_heads)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: unit %u has KV head %d of %u", op, i,
                         head, g->n_kv_heads);
    return FKV_OK;
}

fkv_status cpu_scatter_hnd(const fkv_kv_geom *g, const void *src, uint32_t n_units,
                           const int32_t *units, void *kpool, void *vpool, size_t pool_rows) {
    size_t unit_bytes = fkv_unit_bytes(g);
    for (uint32_t i = 0; i < n_units; i++) {
        fkv_status st = check_unit("scatter_hnd", g, i, units[2 * i], units[2 * i + 1], pool_rows);
        if (st != FKV_OK)
            return st;
        scatter_unit(g, (const unsigned char *)src + (size_t)i * unit_bytes, (size_t)units[2 * i],
                     (size_t)units[2 * i + 1], kpool, vpool);
    }
    return FKV_OK;
}

fkv_status cpu_recall_direct(const fkv_kv_geom *g, uint32_t n_hosts, const cpu_host_view *hosts,
                             uint32_t n_units, const int32_t *units, void *kpool, void *vpool,
                             size_t pool_rows) {
    size_t es = fkv_dtype_size(g->dtype);
    size_t unit_bytes = fkv_unit_bytes(g);
    for (uint32_t i = 0; i < n_units; i++) {
        const int32_t *u = units + (size_t)FKV_DIRECT_UNIT_INTS * i;
        uint32_t h = (uint32_t)u[2];
        uint64_t off = (uint64_t)(uint32_t)u[3] * es;
        if (h >= n_hosts || off > hosts[h].size || unit_bytes > hosts[h].size - off)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "recall_direct: unit %u at offset %llu (+%zu bytes) of host %u is "
                             "outside the %u host allocations given",
                             i, (unsigned long long)off, unit_bytes, h, n_hosts);
        fkv_status st = check_unit("recall_direct", g, i, u[0], u[1], pool_rows);
        if (st != FKV_OK)
            return st;
        scatter_unit(g, hosts[h].data + off, (size_t)u[0], (size_t)u[1], kpool, vpool);
    }
    return FKV_OK;
}
