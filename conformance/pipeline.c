/* Pipeline cases: the whole decode pipeline through the public API, one policy at one
 * geometry, on the reference and (twice) on the DUT, with the same inputs.
 *
 * Setup: 2 layers, 2 KV heads, sink 1 page, window 2 pages, 3 selected pages, two sequences
 * decoded in one batch: one whose prompt is a page multiple, one that is not (its context
 * crosses a page boundary during decode, so offload, summaries and window rotation run).
 * Inputs alternate between host memory and device buffers; outputs sit between guard bytes.
 * Policies that offload run with each recall mechanism in turn (staged, direct, per-page),
 * forced on the DUT whatever it prefers, so every recall path is checked on every device.
 *
 * Data: within each page, keys lean along the KV head's query direction by a page-specific
 * amount, so page scores are well separated and selection is meaningful (two pages share keys:
 * an exact tie at the k-th place); values are N(0,1).
 * KV head 0's queries drift little between steps (no correction at tau 0.9), KV head 1's a
 * lot (corrected).
 *
 * Checks per (step, layer, sequence): the attended pages per KV head as sets (sink and window
 * exactly; selected pages equal, or differing only by pages whose score ties with the k-th
 * under a query the policy may have used, computed here on the host); the output against the
 * reference (or, for a head whose pages differ by a tie, against attention computed here over
 * the DUT's pages); NaN/Inf. At the end, the stored keys/values (fkv_context_read_kv). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "conformance.h"

#define PL_LAYERS 2
#define PL_SEQS 2
#define PL_HK 2
#define PL_MAX_LIST 64

typedef struct pl_setup {
    fkv_config cfg;
    uint32_t prompt[PL_SEQS], total[PL_SEQS], steps;
    uint32_t hq, d, p, re, qn, sink, window, n_mid;
    float *k[PL_SEQS][PL_LAYERS], *v[PL_SEQS][PL_LAYERS];   /* inputs [total][re] */
    float *ks[PL_SEQS][PL_LAYERS], *vs[PL_SEQS][PL_LAYERS]; /* as stored (dtype-rounded) */
    float *q[PL_SEQS][PL_LAYERS];                           /* [total][qn], q of token t */
} pl_setup;

typedef struct pl_out {
    float *out;       /* [steps][layers][seqs][qn] */
    int32_t *att;     /* [steps][layers][seqs][hk][PL_MAX_LIST] */
    uint32_t *n_att;  /* [steps][layers][seqs][hk] */
    float *kv_k[PL_SEQS][PL_LAYERS], *kv_v[PL_SEQS][PL_LAYERS];
    uint32_t kv_n[PL_SEQS][PL_LAYERS];
    fkv_stats stats;
    char guard[200]; /* first guard violation */
} pl_out;

static size_t out_at(const pl_setup *s, uint32_t step, uint32_t l, uint32_t b) {
    return (((size_t)step * PL_LAYERS + l) * PL_SEQS + b) * s->qn;
}

static size_t att_at(uint32_t step, uint32_t l, uint32_t b, uint32_t h) {
    return (((size_t)step * PL_LAYERS + l) * PL_SEQS + b) * PL_HK + h;
}

static void setup_free(pl_setup *s) {
    for (int b = 0; b < PL_SEQS; b++)
        for (int l = 0; l < PL_LAYERS; l++) {
            free(s->k[b][l]);
            free(s->v[b][l]);
            free(s->ks[b][l]);
            free(s->vs[b][l]);
            free(s->q[b][l]);
        }
}

static int setup_init(pl_setup *s, const cf_case *c, int quick) {
    memset(s, 0, sizeof *s);
    const cf_geom *g = &c->g;
    uint32_t p = g->page_size, d = g->head_dim;
    s->p = p;
    s->d = d;
    s->hq = PL_HK * g->group;
    s->re = PL_HK * d;
    s->qn = s->hq * d;
    s->sink = 1;
    s->window = 2;
    s->n_mid = 3;
    s->steps = quick ? 5 : 8;
    s->prompt[0] = 8 * p;
    s->prompt[1] = 8 * p + p - 3; /* fills its page at decode step 2 */
    fkv_config *cfg = &s->cfg;
    fkv_config_init(cfg);
    cfg->n_layers = PL_LAYERS;
    cfg->n_kv_heads = PL_HK;
    cfg->n_q_heads = s->hq;
    cfg->head_dim = d;
    cfg->page_size = p;
    cfg->sink_tokens = s->sink * p;
    cfg->window_tokens = s->window * p;
    cfg->budget_tokens = (s->sink + s->window + s->n_mid) * p;
    cfg->tau = 0.9f;
    cfg->dtype = g->dtype;
    cfg->policy = c->policy;
    cfg->group_reduce = FKV_GROUP_SOFTMAX_MEAN;
    cfg->max_seqs = PL_SEQS;
    cfg->max_context = s->prompt[1] + s->steps + p;
    cfg->recall_chunk_pages = 2; /* several staging chunks per recall: double buffering runs */
    cfg->host_format = c->host_format;
    cfg->summary_format = c->summary_format;

    cf_rng rng;
    cf_seed(&rng, c->name, 7);
    float *u = malloc(sizeof(float) * d), *off = malloc(sizeof(float) * s->qn);
    int ok = u && off;
    for (uint32_t b = 0; b < PL_SEQS && ok; b++) {
        s->total[b] = s->prompt[b] + s->steps;
        uint32_t n = s->total[b], n_pages = (n + p - 1) / p;
        for (uint32_t l = 0; l < PL_LAYERS && ok; l++) {
            size_t kvn = (size_t)n * s->re;
            s->k[b][l] = malloc(sizeof(float) * kvn);
            s->v[b][l] = malloc(sizeof(float) * kvn);
            s->ks[b][l] = malloc(sizeof(float) * kvn);
            s->vs[b][l] = malloc(sizeof(float) * kvn);
            s->q[b][l] = malloc(sizeof(float) * n * s->qn);
            if (!s->k[b][l] || !s->v[b][l] || !s->ks[b][l] || !s->vs[b][l] || !s->q[b][l]) {
                ok = 0;
                break;
            }
            for (size_t i = 0; i < s->qn; i++)
                off[i] = 0.3f * cf_normal(&rng); /* query heads of a group differ a little */
            for (uint32_t h = 0; h < PL_HK; h++) {
                uint32_t rank[1024];
                cf_pick_distinct(&rng, n_pages, n_pages, rank);
                for (uint32_t c2 = 0; c2 < d; c2++)
                    u[c2] = cf_normal(&rng);
                for (uint32_t t = 0; t < n; t++) {
                    float lean = 0.08f * (float)rank[t / p];
                    float *kr = s->k[b][l] + (size_t)t * s->re + (size_t)h * d;
                    float *vr = s->v[b][l] + (size_t)t * s->re + (size_t)h * d;
                    for (uint32_t c2 = 0; c2 < d; c2++) {
                        kr[c2] = lean * u[c2] + cf_normal(&rng);
                        vr[c2] = cf_normal(&rng);
                    }
                }
                /* An exact tie: of candidate pages 1..5, the one ranked 4th gets the keys of
                 * the one ranked 3rd (3 pages are selected), so equal scores sit at the k-th
                 * place. Both devices compute equal scores alike and pick the same page; the
                 * "ties" self-test breaks them the other way to exercise the tie check. */
                uint32_t by_rank[5];
                for (uint32_t i = 0; i < 5; i++)
                    by_rank[i] = 1 + i;
                for (uint32_t i = 0; i < 5; i++) /* sort pages 1..5 by descending rank */
                    for (uint32_t j = i + 1; j < 5; j++)
                        if (rank[by_rank[j]] > rank[by_rank[i]]) {
                            uint32_t tmp = by_rank[i];
                            by_rank[i] = by_rank[j];
                            by_rank[j] = tmp;
                        }
                for (uint32_t t = 0; t < p; t++)
                    memcpy(s->k[b][l] + ((size_t)by_rank[3] * p + t) * s->re + (size_t)h * d,
                           s->k[b][l] + ((size_t)by_rank[2] * p + t) * s->re + (size_t)h * d,
                           sizeof(float) * d);
                float drift = h == 0 ? 0.2f : 0.6f;
                for (uint32_t t = 0; t < n; t++)
                    for (uint32_t i = 0; i < g->group; i++) {
                        size_t qh = (size_t)h * g->group + i;
                        float *qr = s->q[b][l] + (size_t)t * s->qn + qh * d;
                        for (uint32_t c2 = 0; c2 < d; c2++)
                            qr[c2] = u[c2] + off[qh * d + c2] + drift * cf_normal(&rng);
                    }
            }
            for (size_t i = 0; i < kvn; i++) {
                unsigned char tmp[4];
                fkv_store(tmp, g->dtype, 0, s->k[b][l][i]);
                s->ks[b][l][i] = fkv_load(tmp, g->dtype, 0);
                fkv_store(tmp, g->dtype, 0, s->v[b][l][i]);
                s->vs[b][l][i] = fkv_load(tmp, g->dtype, 0);
            }
        }
    }
    free(u);
    free(off);
    return ok;
}

static void out_free(pl_out *o) {
    free(o->out);
    free(o->att);
    free(o->n_att);
    for (int b = 0; b < PL_SEQS; b++)
        for (int l = 0; l < PL_LAYERS; l++) {
            free(o->kv_k[b][l]);
            free(o->kv_v[b][l]);
        }
    memset(o, 0, sizeof *o);
}

/* Guard bytes around n payload bytes at CF_GUARD: the first changed one, or -1. */
static long guard_changed(const unsigned char *buf, size_t n) {
    for (size_t i = 0; i < CF_GUARD; i++)
        if (buf[i] != CF_FILL)
            return (long)i;
    for (size_t i = CF_GUARD + n; i < 2 * CF_GUARD + n; i++)
        if (buf[i] != CF_FILL)
            return (long)i;
    return -1;
}

/* Runs prefill and the decode steps on one device. *where names the failing call. */
static fkv_status pl_execute(const cf_dev *d, const pl_setup *s, pl_out *o, char *where,
                             size_t wsize) {
    memset(o, 0, sizeof *o);
    size_t n_out = (size_t)s->steps * PL_LAYERS * PL_SEQS * s->qn;
    size_t n_att = (size_t)s->steps * PL_LAYERS * PL_SEQS * PL_HK;
    size_t qbytes = (size_t)PL_SEQS * s->qn * 4, kbytes = (size_t)PL_SEQS * s->re * 4;
    size_t prompt_bytes = (size_t)s->prompt[1] * s->re * 4; /* the longer prompt */
    size_t in_bytes = 2 * CF_GUARD + (prompt_bytes > qbytes ? prompt_bytes : qbytes);
    o->out = malloc(sizeof(float) * n_out);
    o->att = malloc(sizeof(int32_t) * n_att * PL_MAX_LIST);
    o->n_att = calloc(n_att, sizeof(uint32_t));
    unsigned char *host_out = malloc(2 * CF_GUARD + qbytes), *dev_out = malloc(2 * CF_GUARD + qbytes);
    float *q = malloc(qbytes), *k = malloc(kbytes), *v = malloc(kbytes);
    fkv_buffer *bq = NULL, *bk = NULL, *bv = NULL, *bo = NULL;
    fkv_context *ctx = NULL;
    fkv_status st = FKV_OK;
    snprintf(where, wsize, "setup");
    if (!o->out || !o->att || !o->n_att || !host_out || !dev_out || !q || !k || !v) {
        st = FKV_ERR_OUT_OF_HOST_MEMORY;
        goto done;
    }
    if ((st = fkv_buffer_alloc(d->dev, in_bytes, &bq)) != FKV_OK ||
        (st = fkv_buffer_alloc(d->dev, in_bytes, &bk)) != FKV_OK ||
        (st = fkv_buffer_alloc(d->dev, in_bytes, &bv)) != FKV_OK ||
        (st = fkv_buffer_alloc(d->dev, 2 * CF_GUARD + qbytes, &bo)) != FKV_OK)
        goto done;
    snprintf(where, wsize, "fkv_context_create");
    if ((st = fkv_context_create(d->dev, &s->cfg, &ctx)) != FKV_OK)
        goto done;

    /* prefill: sequence 0 from host memory, sequence 1 from device buffers */
    for (uint32_t b = 0; b < PL_SEQS && st == FKV_OK; b++)
        for (uint32_t l = 0; l < PL_LAYERS && st == FKV_OK; l++) {
            uint32_t n = s->prompt[b];
            const float *ql = s->q[b][l] + (size_t)(n - 1) * s->qn;
            fkv_tensor tk = {s->k[b][l], NULL, 0}, tv = {s->v[b][l], NULL, 0}, tq = {ql, NULL, 0};
            snprintf(where, wsize, "fkv_prefill(seq %u, layer %u)", b, l);
            if (b == 1) {
                if ((st = fkv_buffer_write(bk, CF_GUARD, s->k[b][l], (size_t)n * s->re * 4)) ||
                    (st = fkv_buffer_write(bv, CF_GUARD, s->v[b][l], (size_t)n * s->re * 4)) ||
                    (st = fkv_buffer_write(bq, CF_GUARD, ql, (size_t)s->qn * 4)))
                    break;
                tk = (fkv_tensor){NULL, bk, CF_GUARD};
                tv = (fkv_tensor){NULL, bv, CF_GUARD};
                tq = (fkv_tensor){NULL, bq, CF_GUARD};
            }
            st = fkv_prefill(ctx, b, l, n, &tk, &tv, &tq);
        }

    const uint32_t seqs[PL_SEQS] = {0, 1};
    memset(dev_out, CF_FILL, 2 * CF_GUARD + qbytes);
    for (uint32_t step = 0; step < s->steps && st == FKV_OK; step++)
        for (uint32_t l = 0; l < PL_LAYERS && st == FKV_OK; l++) {
            for (uint32_t b = 0; b < PL_SEQS; b++) {
                uint32_t t = s->prompt[b] + step;
                memcpy(q + (size_t)b * s->qn, s->q[b][l] + (size_t)t * s->qn, s->qn * 4);
                memcpy(k + (size_t)b * s->re, s->k[b][l] + (size_t)t * s->re, s->re * 4);
                memcpy(v + (size_t)b * s->re, s->v[b][l] + (size_t)t * s->re, s->re * 4);
            }
            fkv_tensor tq = {q, NULL, 0}, tk = {k, NULL, 0}, tv = {v, NULL, 0};
            fkv_tensor to = {host_out + CF_GUARD, NULL, 0};
            int on_device = step % 2 == 1;
            snprintf(where, wsize, "fkv_decode_layer(step %u, layer %u)", step, l);
            if (on_device) {
                if ((st = fkv_buffer_write(bq, CF_GUARD, q, qbytes)) ||
                    (st = fkv_buffer_write(bk, CF_GUARD, k, kbytes)) ||
                    (st = fkv_buffer_write(bv, CF_GUARD, v, kbytes)) ||
                    (st = fkv_buffer_write(bo, 0, dev_out, 2 * CF_GUARD + qbytes)))
                    break;
                tq = (fkv_tensor){NULL, bq, CF_GUARD};
                tk = (fkv_tensor){NULL, bk, CF_GUARD};
                tv = (fkv_tensor){NULL, bv, CF_GUARD};
                to = (fkv_tensor){NULL, bo, CF_GUARD};
            } else {
                memset(host_out, CF_FILL, 2 * CF_GUARD + qbytes);
            }
            if ((st = fkv_decode_layer(ctx, l, PL_SEQS, seqs, &tq, &tk, &tv, &to)) != FKV_OK)
                break;
            unsigned char *res = host_out;
            if (on_device) {
                snprintf(where, wsize, "fkv_buffer_read(output of step %u, layer %u)", step, l);
                if ((st = fkv_buffer_read(bo, 0, host_out, 2 * CF_GUARD + qbytes)) != FKV_OK)
                    break;
            }
            long gi = guard_changed(res, qbytes);
            if (gi >= 0 && o->guard[0] == '\0')
                snprintf(o->guard, sizeof o->guard,
                         "output of step %u layer %u (%s memory): guard byte %ld %s it "
                         "changed",
                         step, l, on_device ? "device" : "host",
                         gi < CF_GUARD ? CF_GUARD - gi : gi - (long)(CF_GUARD + qbytes) + 1,
                         gi < CF_GUARD ? "before" : "after");
            for (uint32_t b = 0; b < PL_SEQS; b++)
                memcpy(o->out + out_at(s, step, l, b), res + CF_GUARD + (size_t)b * s->qn * 4,
                       s->qn * 4);
            snprintf(where, wsize, "fkv_context_attended_pages(step %u, layer %u)", step, l);
            for (uint32_t b = 0; b < PL_SEQS && st == FKV_OK; b++)
                for (uint32_t h = 0; h < PL_HK && st == FKV_OK; h++) {
                    size_t cnt = 0, at = att_at(step, l, b, h);
                    st = fkv_context_attended_pages(ctx, b, l, h, o->att + at * PL_MAX_LIST,
                                                    PL_MAX_LIST, &cnt);
                    o->n_att[at] = (uint32_t)(cnt < PL_MAX_LIST ? cnt : PL_MAX_LIST);
                }
        }
    for (uint32_t b = 0; b < PL_SEQS && st == FKV_OK; b++)
        for (uint32_t l = 0; l < PL_LAYERS && st == FKV_OK; l++) {
            size_t cap = s->total[b] + 1;
            o->kv_k[b][l] = malloc(sizeof(float) * cap * s->re);
            o->kv_v[b][l] = malloc(sizeof(float) * cap * s->re);
            if (!o->kv_k[b][l] || !o->kv_v[b][l]) {
                st = FKV_ERR_OUT_OF_HOST_MEMORY;
                break;
            }
            snprintf(where, wsize, "fkv_context_read_kv(seq %u, layer %u)", b, l);
            st = fkv_context_read_kv(ctx, b, l, o->kv_k[b][l], o->kv_v[b][l], cap,
                                     &o->kv_n[b][l]);
        }
    if (st == FKV_OK) {
        snprintf(where, wsize, "fkv_context_get_stats");
        st = fkv_context_get_stats(ctx, &o->stats);
    }
done:
    fkv_context_destroy(ctx);
    fkv_buffer_release(bq);
    fkv_buffer_release(bk);
    fkv_buffer_release(bv);
    fkv_buffer_release(bo);
    free(host_out);
    free(dev_out);
    free(q);
    free(k);
    free(v);
    return st;
}

/* ---- host-side selection and attention (double precision) ---- */

/* Softmax-mean reduced scores of candidate pages [S, wb) of KV head h with the queries of
 * token t; *a_max receives max over heads and pages of sum_c |q_c| max(|min_c|, |max_c|),
 * the scale of the arithmetic error of a score. */
static void host_reduced(const pl_setup *s, uint32_t b, uint32_t l, uint32_t h, uint32_t t,
                         uint32_t wb, double *red, double *a_max) {
    uint32_t S = s->sink, n_cand = wb - S, group = s->hq / PL_HK, d = s->d;
    double raw[1024];
    *a_max = 0;
    for (uint32_t j = 0; j < n_cand; j++)
        red[j] = 0;
    for (uint32_t r = 0; r < group; r++) {
        const float *qr = s->q[b][l] + (size_t)t * s->qn + ((size_t)h * group + r) * d;
        for (uint32_t j = 0; j < n_cand; j++) {
            uint32_t page = S + j;
            double sum = 0, abs_sum = 0;
            for (uint32_t c = 0; c < d; c++) {
                double mn = INFINITY, mx = -INFINITY;
                for (uint32_t i = 0; i < s->p; i++) {
                    double x = s->ks[b][l][((size_t)page * s->p + i) * s->re + (size_t)h * d + c];
                    mn = x < mn ? x : mn;
                    mx = x > mx ? x : mx;
                }
                double a = qr[c] * mx, bb = qr[c] * mn;
                sum += a > bb ? a : bb;
                abs_sum += fabs(qr[c]) * (fabs(mn) > fabs(mx) ? fabs(mn) : fabs(mx));
            }
            raw[j] = sum;
            *a_max = abs_sum > *a_max ? abs_sum : *a_max;
        }
        double m = -INFINITY, z = 0;
        for (uint32_t j = 0; j < n_cand; j++)
            m = raw[j] > m ? raw[j] : m;
        for (uint32_t j = 0; j < n_cand; j++)
            z += exp(raw[j] - m);
        for (uint32_t j = 0; j < n_cand; j++)
            red[j] += exp(raw[j] - m) / z / group;
    }
}

static int cmp_desc(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x < y) - (x > y);
}

static int has_page(const int32_t *p, uint32_t n, int32_t x) {
    for (uint32_t i = 0; i < n; i++)
        if (p[i] == x)
            return 1;
    return 0;
}

/* Whether the DUT's pages `dp` of (seq b, layer l, KV head h) at `step` differ from the
 * reference's `rp` only by ties. why: the reason when not. */
static int selection_tie(const pl_setup *s, uint32_t step, uint32_t l, uint32_t b, uint32_t h,
                         const int32_t *dp, uint32_t dn, const int32_t *rp, uint32_t rn,
                         double tol, char *why, size_t wsize) {
    uint32_t n = s->prompt[b] + step + 1, p = s->p, S = s->sink, W = s->window;
    uint32_t cur = n / p, wb = cur + 1 >= W ? cur + 1 - W : 0;
    wb = wb > S ? wb : S;
    int32_t md[PL_MAX_LIST], mr[PL_MAX_LIST];
    uint32_t nd = 0, nr = 0;
    /* sink and window pages are fixed by the context length: they must match exactly */
    for (uint32_t i = 0; i < dn; i++)
        if (dp[i] >= (int32_t)S && dp[i] < (int32_t)wb)
            md[nd++] = dp[i];
        else if (!has_page(rp, rn, dp[i])) {
            snprintf(why, wsize, "page %d is sink/window on the DUT only", dp[i]);
            return 0;
        }
    for (uint32_t i = 0; i < rn; i++)
        if (rp[i] >= (int32_t)S && rp[i] < (int32_t)wb)
            mr[nr++] = rp[i];
        else if (!has_page(dp, dn, rp[i])) {
            snprintf(why, wsize, "sink/window page %d missing on the DUT", rp[i]);
            return 0;
        }
    if (nd != nr) {
        snprintf(why, wsize, "%u selected pages, reference %u", nd, nr);
        return 0;
    }
    if (s->cfg.policy == FKV_POLICY_DENSE || wb <= S) {
        snprintf(why, wsize, "no selection here, yet the pages differ");
        return 0;
    }
    /* queries the policy may have selected with: q[t] (quest, sync, corrected heads) and
     * q[t-1] (speculative; q[t-1] of the first step is the prefill's last query) */
    uint32_t qs[2], nq = 0;
    fkv_policy pol = s->cfg.policy;
    if (pol == FKV_POLICY_QUEST || pol == FKV_POLICY_SYNC || pol == FKV_POLICY_FREEKV)
        qs[nq++] = n - 1;
    if (pol == FKV_POLICY_SPECULATIVE || pol == FKV_POLICY_FREEKV)
        qs[nq++] = n - 2;
    double red[1024], sorted[1024];
    uint32_t n_cand = wb - S;
    uint32_t kk = s->n_mid < n_cand ? s->n_mid : n_cand;
    char last[200] = "";
    for (uint32_t qi = 0; qi < nq; qi++) {
        double a_max;
        host_reduced(s, b, l, h, qs[qi], wb, red, &a_max);
        memcpy(sorted, red, sizeof(double) * n_cand);
        qsort(sorted, n_cand, sizeof(double), cmp_desc);
        double kth = sorted[kk - 1];
        /* raw scores off by at most eps scale each softmax term by exp(+-2 eps); both devices
         * err, hence 4 eps on the log scale */
        double eps = tol * a_max;
        int ok = 1;
        for (int side = 0; side < 2 && ok; side++) {
            const int32_t *x = side ? mr : md, *y = side ? md : mr;
            for (uint32_t i = 0; i < nd && ok; i++) {
                if (has_page(y, nd, x[i]))
                    continue;
                double r = red[x[i] - (int32_t)S];
                if (!(r > 0 && kth > 0 && fabs(log(r) - log(kth)) <= 4 * eps) && r != kth) {
                    snprintf(last, sizeof last,
                             "page %d (score %.6g) is not a tie with the k-th score %.6g "
                             "(query of token %u)",
                             x[i], r, kth, qs[qi]);
                    ok = 0;
                }
            }
        }
        if (ok)
            return 1;
    }
    snprintf(why, wsize, "%s", last);
    return 0;
}

/* Attention of KV head h's query heads over the tokens of `pages`, into out rows. */
static void host_attention(const pl_setup *s, uint32_t step, uint32_t l, uint32_t b, uint32_t h,
                           const int32_t *pages, uint32_t np, float *out) {
    uint32_t n = s->prompt[b] + step + 1, t_q = n - 1, group = s->hq / PL_HK, d = s->d;
    double scale = 1.0 / sqrt((double)d), acc[256];
    for (uint32_t r = 0; r < group; r++) {
        size_t qh = (size_t)h * group + r;
        const float *qr = s->q[b][l] + (size_t)t_q * s->qn + qh * d;
        double m = -INFINITY, z = 0;
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1)
                memset(acc, 0, sizeof acc);
            for (uint32_t i = 0; i < np; i++)
                for (uint32_t t = (uint32_t)pages[i] * s->p; t < (uint32_t)(pages[i] + 1) * s->p && t < n; t++) {
                    const float *kr = s->ks[b][l] + (size_t)t * s->re + (size_t)h * d;
                    const float *vr = s->vs[b][l] + (size_t)t * s->re + (size_t)h * d;
                    double dot = 0;
                    for (uint32_t c = 0; c < d; c++)
                        dot += (double)qr[c] * kr[c];
                    dot *= scale;
                    if (pass == 0) {
                        m = dot > m ? dot : m;
                        continue;
                    }
                    double w = exp(dot - m);
                    z += w;
                    for (uint32_t c = 0; c < d; c++)
                        acc[c] += w * vr[c];
                }
        }
        for (uint32_t c = 0; c < d; c++)
            out[qh * d + c] = z > 0 ? (float)(acc[c] / z) : 0.0f;
    }
}

static void list_str(const int32_t *p, uint32_t n, char *buf, size_t size) {
    size_t len = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < n && len + 8 < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%d", i ? "," : "", p[i]);
}

static void compare_runs(const pl_setup *s, const pl_out *ref, const pl_out *dut, fkv_dtype dt,
                         cf_result *r) {
    /* quantized host pages: the bound of one code (the quantize's tolerance) */
    const char *row = s->cfg.host_format == FKV_HOST_Q8   ? "pipeline_q8"
                      : s->cfg.host_format == FKV_HOST_Q4 ? "pipeline_q4"
                                                          : "pipeline";
    double tol = cf_tolerance(row, dt), tie_tol = cf_tolerance("selection_tie", dt);
    float *expect = malloc(sizeof(float) * s->qn);
    if (expect == NULL) {
        cf_fail(r, "out of host memory");
        return;
    }
    uint32_t ties = 0, n_bad = 0, total = 0;
    double worst = -1;
    char worst_at[96] = "";
    for (uint32_t step = 0; step < s->steps && r->status != CF_FAIL; step++)
        for (uint32_t l = 0; l < PL_LAYERS && r->status != CF_FAIL; l++)
            for (uint32_t b = 0; b < PL_SEQS && r->status != CF_FAIL; b++) {
                const float *x = dut->out + out_at(s, step, l, b);
                const float *y = ref->out + out_at(s, step, l, b);
                long nf = cf_first_nonfinite(x, s->qn);
                if (nf >= 0) {
                    cf_fail(r, "step %u layer %u seq %u: NaN/Inf in the output at #%ld", step, l,
                            b, nf);
                    break;
                }
                memcpy(expect, y, sizeof(float) * s->qn);
                for (uint32_t h = 0; h < PL_HK; h++) {
                    size_t at = att_at(step, l, b, h);
                    const int32_t *dp = dut->att + at * PL_MAX_LIST, *rp = ref->att + at * PL_MAX_LIST;
                    uint32_t dn = dut->n_att[at], rn = ref->n_att[at];
                    int same = dn == rn;
                    for (uint32_t i = 0; i < dn && same; i++)
                        same = has_page(rp, rn, dp[i]);
                    if (same)
                        continue;
                    char why[240], ls[160], lr[160];
                    if (!selection_tie(s, step, l, b, h, dp, dn, rp, rn, tie_tol, why, sizeof why)) {
                        list_str(dp, dn, ls, sizeof ls);
                        list_str(rp, rn, lr, sizeof lr);
                        cf_fail(r,
                                "step %u layer %u seq %u KV head %u: attended pages {%s}, "
                                "reference {%s}: %s",
                                step, l, b, h, ls, lr, why);
                        break;
                    }
                    ties++;
                    host_attention(s, step, l, b, h, dp, dn, expect);
                }
                if (r->status == CF_FAIL)
                    break;
                double err = cf_rel_l2(x, expect, s->qn);
                total++;
                if (err > tol)
                    n_bad++;
                if (err > worst) {
                    worst = err;
                    snprintf(worst_at, sizeof worst_at, "step %u layer %u seq %u", step, l, b);
                }
            }
    free(expect);
    if (dut->guard[0])
        cf_fail(r, "%s", dut->guard);
    if (worst >= 0)
        cf_check_error(r, worst, tol, "output of %s (%u of %u outputs over tolerance)", worst_at,
                       n_bad, total);
    /* the stored cache, read back */
    double kv_tol = s->cfg.host_format == FKV_HOST_SAME ? cf_tolerance("pipeline_kv", dt) : tol;
    for (uint32_t b = 0; b < PL_SEQS; b++)
        for (uint32_t l = 0; l < PL_LAYERS; l++) {
            if (dut->kv_n[b][l] != ref->kv_n[b][l]) {
                cf_fail(r, "read_kv seq %u layer %u: %u tokens, reference %u", b, l,
                        dut->kv_n[b][l], ref->kv_n[b][l]);
                continue;
            }
            size_t n = (size_t)ref->kv_n[b][l] * s->re;
            if (!dut->kv_k[b][l] || !ref->kv_k[b][l])
                continue;
            double ek = cf_rel_l2(dut->kv_k[b][l], ref->kv_k[b][l], n);
            double ev = cf_rel_l2(dut->kv_v[b][l], ref->kv_v[b][l], n);
            if (cf_first_nonfinite(dut->kv_k[b][l], n) >= 0 ||
                cf_first_nonfinite(dut->kv_v[b][l], n) >= 0)
                cf_fail(r, "read_kv seq %u layer %u: NaN/Inf", b, l);
            else
                cf_check_error(r, ek > ev ? ek : ev, kv_tol,
                               "stored cache (read_kv) seq %u layer %u, %s", b, l,
                               ek > ev ? "keys" : "values");
        }
    if (r->status == CF_PASS) {
        size_t len = strlen(r->message);
        snprintf(r->message + len, sizeof r->message - len,
                 "%s%llu selections, %llu corrections, %llu pages recalled", len ? "; " : "",
                 (unsigned long long)dut->stats.selections,
                 (unsigned long long)dut->stats.corrections,
                 (unsigned long long)dut->stats.pages_recalled);
        if (ties) {
            len = strlen(r->message);
            snprintf(r->message + len, sizeof r->message - len,
                     "; %u head selection(s) differ by ties", ties);
        }
    }
}

static void compare_determinism(const pl_setup *s, const pl_out *a, const pl_out *b,
                                cf_result *r) {
    size_t n_out = (size_t)s->steps * PL_LAYERS * PL_SEQS * s->qn;
    size_t n_att = (size_t)s->steps * PL_LAYERS * PL_SEQS * PL_HK;
    r->deterministic = 1;
    for (size_t i = 0; i < n_out; i++)
        if (memcmp(&a->out[i], &b->out[i], 4) != 0) {
            size_t row = i / s->qn;
            cf_nondet(r, "output of step %zu layer %zu seq %zu differs between two runs",
                      row / (PL_LAYERS * PL_SEQS), row / PL_SEQS % PL_LAYERS, row % PL_SEQS);
            return;
        }
    for (size_t i = 0; i < n_att; i++)
        if (a->n_att[i] != b->n_att[i] ||
            memcmp(a->att + i * PL_MAX_LIST, b->att + i * PL_MAX_LIST, a->n_att[i] * 4) != 0) {
            cf_nondet(r, "attended pages differ between two runs");
            return;
        }
    for (uint32_t q = 0; q < PL_SEQS; q++)
        for (uint32_t l = 0; l < PL_LAYERS; l++) {
            size_t n = (size_t)a->kv_n[q][l] * s->re;
            if (a->kv_n[q][l] != b->kv_n[q][l] || memcmp(a->kv_k[q][l], b->kv_k[q][l], n * 4) ||
                memcmp(a->kv_v[q][l], b->kv_v[q][l], n * 4)) {
                cf_nondet(r, "stored cache differs between two runs");
                return;
            }
        }
}

static const char *const recall_names[] = {"staged", "direct", "perpage"};
static fkv_recall_mode forced_mode;
static fkv_recall_mode forced_recall(fkv_bdev *dev) {
    (void)dev;
    return forced_mode;
}

static void run_pipeline(const cf_env *env, const cf_case *c, cf_result *r) {
    if (c->g.dtype != FKV_F32 && !(env->dut.info.caps & FKV_CAP_FP16_STORAGE)) {
        cf_skip(r, "%s storage: the device lacks fp16_storage", fkv_dtype_name(c->g.dtype));
        return;
    }
    if (!(fkv_op_host_formats(env->dut.dev) >> c->host_format & 1u)) {
        cf_skip(r, "host format %s: not implemented by the device (host_formats)",
                fkv_host_format_name(c->host_format));
        return;
    }
    /* The recall mode is the DUT's own choice unless the case forces one: then the DUT runs
     * through a device handle that shares its backend device but answers recall_mode from
     * an ops table copy (the core asks once, when the context is created). */
    cf_dev dut_dev = env->dut;
    fkv_device *forced_dev = NULL;
    fkv_backend_ops forced_ops;
    if (c->recall >= 0) {
        forced_mode = (fkv_recall_mode)c->recall;
        const fkv_backend_ops *table = fkv_device_ops(dut_dev.dev);
        if (forced_mode == FKV_RECALL_DIRECT && !FKV_HAS_ENTRY(table, recall_direct)) {
            forced_mode = FKV_RECALL_STAGED;
            snprintf(r->message, sizeof r->message,
                     "recall_direct not provided: staged recall instead");
        }
        forced_ops = *table;
        forced_ops.recall_mode = forced_recall;
        if (fkv_device_view(dut_dev.dev, &forced_ops, &forced_dev) != FKV_OK) {
            cf_fail(r, "forcing the recall mode: %s", fkv_last_error());
            return;
        }
        dut_dev.dev = forced_dev;
    }
    pl_setup s;
    pl_out ref, dut, dut2;
    memset(&ref, 0, sizeof ref);
    memset(&dut, 0, sizeof dut);
    memset(&dut2, 0, sizeof dut2);
    char where[128];
    if (!setup_init(&s, c, env->quick)) {
        cf_fail(r, "out of host memory");
        goto out;
    }
    fkv_status st = pl_execute(&env->ref, &s, &ref, where, sizeof where);
    if (st != FKV_OK) {
        cf_fail(r, "the reference failed in %s: %s: a runner bug", where, cf_error_text(st));
        goto out;
    }
    st = pl_execute(&dut_dev, &s, &dut, where, sizeof where);
    if (!cf_dut_ran(r, st, where))
        goto out;
    compare_runs(&s, &ref, &dut, c->g.dtype, r);
    st = pl_execute(&dut_dev, &s, &dut2, where, sizeof where);
    if (st != FKV_OK)
        cf_fail(r, "second run: %s failed: %s", where, cf_error_text(st));
    else
        compare_determinism(&s, &dut, &dut2, r);
out:
    out_free(&ref);
    out_free(&dut);
    out_free(&dut2);
    setup_free(&s);
    fkv_device_close(forced_dev);
}

/* Full: every policy at every geometry and dtype. Quick: every policy at each dtype, the
 * geometry rotating so that each quick geometry appears. Offload policies rotate the recall
 * mode too, so each meets every dtype and mode. Then each policy that scores pages once with
 * f16 summaries ("/sumf16"), the dtype and recall mode rotating. */
size_t cf_pipeline_cases(int quick, cf_case *out, size_t cap) {
    size_t n = 0, n_geoms;
    const uint32_t(*geoms)[3] = cf_geometries(quick, &n_geoms);
    /* quantized host pools (q8, q4) after the plain ones: offload policies only (the others
     * keep no host pool) */
    for (int fmt = FKV_HOST_SAME; fmt <= FKV_HOST_Q4; fmt++)
        for (int pol = FKV_POLICY_DENSE; pol <= FKV_POLICY_FREEKV; pol++) {
            int offload = pol == FKV_POLICY_SYNC || pol == FKV_POLICY_SPECULATIVE ||
                          pol == FKV_POLICY_FREEKV;
            if (fmt != FKV_HOST_SAME && !offload)
                continue;
            /* quick: 3 cases per policy (one per dtype); full: every geometry x dtype */
            size_t n_cases = quick ? 3 : n_geoms * 3;
            for (size_t i = 0; i < n_cases && n < cap; i++) {
                cf_case *c = &out[n];
                memset(c, 0, sizeof *c);
                const uint32_t *gg = quick ? geoms[(pol + i + (size_t)fmt) % n_geoms]
                                           : geoms[i / 3];
                c->g = (cf_geom){.head_dim = gg[0], .group = gg[1], .page_size = gg[2],
                                 .dtype = (fkv_dtype)(i % 3)};
                c->has_geom = 1;
                c->policy = (fkv_policy)pol;
                c->host_format = (fkv_host_format)fmt;
                c->op = "pipeline";
                c->run = run_pipeline;
                c->recall = offload ? (int)((i / 3 + i + (size_t)pol + (size_t)fmt) % 3) : -1;
                char gn[48];
                cf_geom_name(&c->g, 1, 1, gn, sizeof gn);
                snprintf(c->name, sizeof c->name, "pipeline/%s/%s%s%s%s%s",
                         fkv_policy_name(c->policy), gn, offload ? "/" : "",
                         offload ? recall_names[c->recall] : "", fmt ? "/" : "",
                         fmt ? fkv_host_format_name(c->host_format) : "");
                n++;
            }
        }
    for (int pol = FKV_POLICY_QUEST; pol <= FKV_POLICY_FREEKV && n < cap; pol++, n++) {
        cf_case *c = &out[n];
        memset(c, 0, sizeof *c);
        const uint32_t *gg = geoms[(size_t)pol % n_geoms];
        c->g = (cf_geom){.head_dim = gg[0], .group = gg[1], .page_size = gg[2],
                         .dtype = (fkv_dtype)(pol % 3)};
        c->has_geom = 1;
        c->policy = (fkv_policy)pol;
        c->summary_format = FKV_SUMMARY_F16;
        c->op = "pipeline";
        c->run = run_pipeline;
        c->recall = pol == FKV_POLICY_QUEST ? -1 : pol % 3;
        char gn[48];
        cf_geom_name(&c->g, 1, 1, gn, sizeof gn);
        snprintf(c->name, sizeof c->name, "pipeline/%s/%s%s%s/sumf16", fkv_policy_name(c->policy),
                 gn, c->recall >= 0 ? "/" : "", c->recall >= 0 ? recall_names[c->recall] : "");
    }
    return n;
}
