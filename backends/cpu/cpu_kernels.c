/* Kernels of the CPU reference backend (see cpu_kernels.h): readable loops, f32 arithmetic,
 * every index from an index array bounds-checked before use. */
#include "cpu_kernels.h"

#include <math.h>
#include <string.h>

#include "../../common/dtype.h"
#include "../../common/error.h"

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
                         uint32_t n_pages, const int32_t *pages, float *summaries,
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
            float *mn = summaries + ((size_t)s * g->n_kv_heads + h) * 2 * d;
            float *mx = mn + d;
            for (size_t c = 0; c < d; c++) {
                size_t first = (size_t)gslot * p * re + h * d + c;
                float lo = fkv_load(kpool, g->dtype, first), hi = lo;
                for (size_t t = 1; t < p; t++) {
                    float x = fkv_load(kpool, g->dtype, first + t * re);
                    lo = fminf(lo, x); /* fminf/fmaxf skip NaN keys */
                    hi = fmaxf(hi, x);
                }
                mn[c] = lo;
                mx[c] = hi;
            }
        }
    }
    return FKV_OK;
}

/* Query heads scored per pass over a page summary (as the GPU kernels' FKV_SCORE_GROUP). */
#define SCORE_BLOCK 8

/* fmaxf without the libm call (the call dominated the reference's scoring): a NaN operand
 * yields the other one; of +0 and -0 the first, as glibc's fmaxf. */
static inline float max_skip_nan(float a, float b) {
    return a != a ? b : b != b ? a : a >= b ? a : b;
}

fkv_status cpu_scores(const fkv_kv_geom *g, const float *q, uint32_t n_seqs, const int32_t *desc,
                      const float *summaries, size_t n_summaries, float *out, size_t out_len) {
    size_t d = g->head_dim, n_q_heads = (size_t)g->n_kv_heads * g->group;
    for (uint32_t b = 0; b < n_seqs; b++) {
        int32_t base = desc[3 * b], n_pages = desc[3 * b + 1], out_base = desc[3 * b + 2];
        if (base < 0 || n_pages < 0 || (size_t)base + (size_t)n_pages > n_summaries)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "scores: sequence %u reads summaries [%d, %d + %d), buffer holds %zu",
                             b, base, base, n_pages, n_summaries);
        if (out_base < 0 || (size_t)out_base + n_q_heads * (size_t)n_pages > out_len)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "scores: sequence %u writes %zu scores at %d, output holds %zu", b,
                             n_q_heads * (size_t)n_pages, out_base, out_len);
        /* Each summary is read once per block of SCORE_BLOCK query heads of its KV head (once
         * per group up to that size); each head's sum runs over the channels in order, as
         * before, so the values are bit for bit those of one head at a time. */
        for (size_t kv_head = 0; kv_head < g->n_kv_heads; kv_head++)
            for (int32_t j = 0; j < n_pages; j++) {
                size_t s = (size_t)base + (size_t)j;
                const float *mn = summaries + (s * g->n_kv_heads + kv_head) * 2 * d;
                const float *mx = mn + d;
                for (size_t h0 = 0; h0 < g->group; h0 += SCORE_BLOCK) {
                    size_t nh = g->group - h0 < SCORE_BLOCK ? g->group - h0 : SCORE_BLOCK;
                    const float *qh = q + ((size_t)b * n_q_heads + kv_head * g->group + h0) * d;
                    float sum[SCORE_BLOCK] = {0.0f};
                    for (size_t c = 0; c < d; c++) {
                        float lo = mn[c], hi = mx[c];
                        for (size_t r = 0; r < nh; r++)
                            sum[r] += max_skip_nan(qh[r * d + c] * hi, qh[r * d + c] * lo);
                    }
                    for (size_t r = 0; r < nh; r++)
                        out[(size_t)out_base + (kv_head * g->group + h0 + r) * (size_t)n_pages +
                            (size_t)j] = sum[r];
                }
            }
    }
    return FKV_OK;
}

/* The reduced value of page j, accumulated in row0[j] over the group's rows r ascending (the
 * order every backend keeps per page, so mean and max agree bit for bit). Softmax takes row
 * r's max (NaN skipped) and sum of expf first; row 0 is read before it is overwritten. */
static void reduce_rows(float *row0, size_t stride, uint32_t group, uint32_t first,
                        uint32_t n_pages, const fkv_select_params *p) {
    for (uint32_t r = 0; r < group; r++) {
        const float *s = row0 + (size_t)r * stride;
        float m = -INFINITY, sum = 0.0f;
        if (p->reduce == FKV_GROUP_SOFTMAX_MEAN) {
            for (uint32_t j = first; j < n_pages; j++)
                m = s[j] > m ? s[j] : m;
            for (uint32_t j = first; j < n_pages; j++)
                sum += expf((s[j] - m) * p->temp_scale);
        }
        for (uint32_t j = first; j < n_pages; j++) {
            float acc = r == 0 ? (p->reduce == FKV_GROUP_MAX ? -INFINITY : 0.0f) : row0[j];
            if (p->reduce == FKV_GROUP_SOFTMAX_MEAN)
                acc += expf((s[j] - m) * p->temp_scale) / sum / (float)group;
            else if (p->reduce == FKV_GROUP_MEAN)
                acc += s[j] / (float)group;
            else
                acc = s[j] > acc ? s[j] : acc;
            row0[j] = acc;
        }
    }
    for (uint32_t j = first; j < n_pages; j++) /* NaN ranks last; -0 ties +0 */
        row0[j] = row0[j] != row0[j] ? -INFINITY : row0[j] == 0.0f ? 0.0f : row0[j];
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

fkv_status cpu_select_pages(const fkv_kv_geom *g, uint32_t n_seqs, const int32_t *desc,
                            float *scores, size_t scores_len, const fkv_select_params *p,
                            int32_t *out) {
    size_t hk = g->n_kv_heads, k = p->k, hq = hk * g->group;
    for (uint32_t b = 0; b < n_seqs; b++) {
        int32_t n_pages = desc[3 * b + 1], base = desc[3 * b + 2];
        if (n_pages < 0 || base < 0 || (size_t)base + hq * (size_t)n_pages > scores_len)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "select_pages: sequence %u reads %zu scores at %d, buffer holds %zu",
                             b, hq * (size_t)(n_pages > 0 ? n_pages : 0), base, scores_len);
        uint32_t np = (uint32_t)n_pages, n_cand = np > p->first_page ? np - p->first_page : 0;
        uint32_t kk = n_cand < p->k ? n_cand : p->k;
        for (size_t h = 0; h < hk; h++) {
            int32_t *pages = out + ((size_t)b * hk + h) * 2 * k;
            float *vals = (float *)(pages + k);
            for (size_t i = 0; i < k; i++) {
                pages[i] = -1;
                vals[i] = -INFINITY;
            }
            if (kk == 0)
                continue;
            float *row0 = scores + (size_t)base + h * g->group * np;
            reduce_rows(row0, np, g->group, p->first_page, np, p);
            uint32_t thr, n_eq = kth_key(row0, p->first_page, np, kk, &thr), n_out = 0;
            for (uint32_t j = p->first_page; j < np && n_out < kk; j++) {
                uint32_t key = order_key(row0[j]);
                if (key > thr || (key == thr && n_eq > 0)) {
                    n_eq -= key == thr;
                    pages[n_out] = (int32_t)j;
                    vals[n_out++] = row0[j];
                }
            }
        }
    }
    return FKV_OK;
}

fkv_status cpu_cosine_flags(const fkv_kv_geom *g, const float *q_cur, const float *q_prev,
                            uint32_t n_seqs, float tau, float *sims, int32_t *flags) {
    size_t d = g->head_dim, n_q_heads = (size_t)g->n_kv_heads * g->group;
    for (uint32_t b = 0; b < n_seqs; b++) {
        for (uint32_t h = 0; h < g->n_kv_heads; h++) {
            float total = 0.0f;
            for (uint32_t i = 0; i < g->group; i++) {
                size_t at = ((size_t)b * n_q_heads + (size_t)h * g->group + i) * d;
                const float *a = q_cur + at, *c = q_prev + at;
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
    for (uint32_t i = 0; i < n_pages; i++) {
        int32_t gslot = gslots[i];
        if (gslot < 0 || !cpu_rows_in_pool((int64_t)gslot * (int64_t)p, p, pool_rows))
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "pack_hnd: gslots[%u] = %d, the pool holds %zu slots", i, gslot,
                             pool_rows / p);
        unsigned char *page = (unsigned char *)dst + (size_t)i * g->n_kv_heads * 2 * p * run;
        for (uint32_t h = 0; h < g->n_kv_heads; h++) {
            for (size_t t = 0; t < p; t++) {
                size_t src_elem = ((size_t)gslot * p + t) * re + (size_t)h * d;
                unsigned char *k_dst = page + (((size_t)h * 2 + 0) * p + t) * run;
                unsigned char *v_dst = page + (((size_t)h * 2 + 1) * p + t) * run;
                memcpy(k_dst, (const unsigned char *)kpool + src_elem * es, run);
                memcpy(v_dst, (const unsigned char *)vpool + src_elem * es, run);
            }
        }
    }
    return FKV_OK;
}

/* One [K|V][p][d] unit into KV head `head` of slot `slot` (both already checked). */
static void scatter_unit(const fkv_kv_geom *g, const unsigned char *unit, size_t slot,
                         size_t head, void *kpool, void *vpool) {
    size_t es = fkv_dtype_size(g->dtype), re = row_elems(g), d = g->head_dim, p = g->page_size;
    size_t run = d * es;
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
    size_t unit_bytes = 2 * (size_t)g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
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
