/* The CPU reference backend, the oracle of every other backend, checked against something
 * independent: the op specs of conformance/ run on it and are replayed in plain C here
 * (below), over the geometries the other backends are compared on and a few more. Also the
 * reference's own semantics: its table and capabilities, index errors that fail the event
 * (not only skip), failures that propagate to waiting commands, closing with work queued,
 * enqueues from several threads, NaN inputs, pools whose element offsets pass 2^32, and its
 * environment variables. The device is opened and driven through the dispatch layer
 * (backends/dispatch.h), as every caller drives a backend: argument checks and zero work are
 * the dispatch layer's, the same for every backend (tests/test_dispatch.c, and the specs'
 * bad_arguments and zero_work here). Criterion forks per test, so each test opens its own
 * device. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu_kernels.h"
#include "backends/cpu/cpu_pool.h"
#include "backends/dispatch.h"
#include "common/dtype.h"
#include "common/error.h"
#include "conformance.h"
#include "helpers.h"

#define GUARD 64
#define GUARD_BYTE 0xA5
#define CQ FKV_QUEUE_COMPUTE
#define TQ FKV_QUEUE_TRANSFER
#define BQ FKV_QUEUE_BACKGROUND

/* ---- fixture: one device, and everything a test allocates freed at its end ---- */

static const fkv_backend_ops *ops; /* the table: its entries and enumeration */
static fkv_device *dev;
static fkv_bbuf *bufs[256];
static size_t n_bufs;
static void *mems[512];
static size_t n_mems;
static fkv_bevent *ev_last; /* the event of the last enqueue made with DONE */
#define DONE ((fkv_deps){0, NULL, &ev_last})

static void unset_env(void) {
    unsetenv("FREEKV_CPU_RECALL");
    unsetenv("FREEKV_CPU_ISA");
    unsetenv("FREEKV_CPU_THREADS");
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
    unsetenv("FREEKV_CPU_HOST_MEMORY");
}

static void open_cpu(void) {
    ops = fkv_backend_cpu();
    cr_assert_not_null(ops);
    fkv_status st = fkv_device_open_ops(ops, 0, &dev);
    cr_assert_eq(st, FKV_OK, "device_open: %s", fkv_last_error());
}

static void setup(void) {
    unset_env();
    open_cpu();
}

/* The device and its buffers; host memory stays. */
static void close_cpu(void) {
    if (dev) {
        fkv_op_finish(dev, CQ);
        fkv_op_finish(dev, TQ);
        fkv_op_finish(dev, BQ);
        for (size_t i = 0; i < n_bufs; i++)
            fkv_op_buffer_free(dev, bufs[i]);
        fkv_device_close(dev);
    }
    n_bufs = 0;
    dev = NULL;
}

static void teardown(void) {
    close_cpu();
    for (size_t i = 0; i < n_mems; i++)
        free(mems[i]);
    n_mems = 0;
}

static void *tmalloc(size_t size) {
    cr_assert_lt(n_mems, sizeof mems / sizeof *mems);
    void *p = calloc(1, size ? size : 1);
    cr_assert_not_null(p);
    mems[n_mems++] = p;
    return p;
}

/* Waits for the last DONE event; the enqueue must have succeeded and the command too. */
static void wait_ok(fkv_status st, const char *what) {
    cr_assert_eq(st, FKV_OK, "%s enqueue: %s", what, fkv_last_error());
    cr_assert_not_null(ev_last, "%s: no event", what);
    fkv_status w = fkv_op_event_wait(dev, 1, &ev_last);
    fkv_op_event_release(dev, ev_last);
    ev_last = NULL;
    cr_assert_eq(w, FKV_OK, "%s: %s", what, fkv_last_error());
}
#define RUN(call) wait_ok((call), #call)

static fkv_bbuf *dalloc(size_t size) {
    fkv_bbuf *b = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(dev, size, &b), FKV_OK, "buffer_alloc: %s", fkv_last_error());
    cr_assert_lt(n_bufs, sizeof bufs / sizeof *bufs);
    bufs[n_bufs++] = b;
    return b;
}

static void dwrite(fkv_bbuf *b, size_t off, const void *src, size_t size) {
    RUN(fkv_op_write(dev, CQ, DONE, b, off, src, size));
}

static void dread(const fkv_bbuf *b, size_t off, void *dst, size_t size) {
    RUN(fkv_op_read(dev, CQ, DONE, b, off, dst, size));
}

/* A buffer holding `size` bytes of src (NULL: guard bytes) at byte `off`, guard bytes
 * everywhere else (GUARD of them after). */
static fkv_bbuf *dfrom(const void *src, size_t off, size_t size) {
    fkv_bbuf *b = dalloc(off + size + GUARD);
    unsigned char *fill = tmalloc(off + size + GUARD);
    memset(fill, GUARD_BYTE, off + size + GUARD);
    if (src && size)
        memcpy(fill + off, src, size);
    dwrite(b, 0, fill, off + size + GUARD);
    return b;
}

/* An output buffer: `size` payload bytes at offset GUARD, guard bytes around. */
static fkv_bbuf *dguarded(size_t size) { return dfrom(NULL, GUARD, size); }

/* ---- data helpers ---- */

static float *rand_f32(th_rng *r, size_t n, float scale) {
    float *x = tmalloc(n * sizeof *x);
    th_fill_normal(r, x, n, scale);
    return x;
}

/* Random values exactly representable in dtype t. */
static float *rand_stored(th_rng *r, size_t n, fkv_dtype t) {
    float *x = rand_f32(r, n, 1.0f);
    th_round_dtype(x, n, t);
    return x;
}

static void *encode(const float *x, size_t n, fkv_dtype t) {
    void *out = tmalloc(n * fkv_dtype_size(t));
    for (size_t i = 0; i < n; i++)
        fkv_store(out, t, i, x[i]);
    return out;
}

TestSuite(cpu_ops, .init = setup, .fini = teardown);

/* ---- the op specs on the reference, against naive C ----
 * Every case of a spec (conformance/, the same cases the other backends are compared with the
 * reference on, plus CPU-only geometries) runs on the reference. A data spec is then replayed
 * here call by call in plain C on host copies of its arrays, and the reference's outputs must
 * match: bytes exactly (guards, untouched elements and stored values included), except the
 * scores, similarities and attention outputs, computed here in double precision and held to
 * a bound per element. The other specs (device, refusals, zero work, indices out of range,
 * threads) run their own checks, with the reference's own rule for indices out of range: the
 * event fails, naming the op. */

#define EXACT (-1.0)  /* a payload element compared bytewise */
#define EITHER (-2.0) /* a flag whose similarity lies within the bound of tau: 0 or 1 */

typedef struct naive {
    const cf_spec *s;
    unsigned char *m[CF_MAX_ARRS]; /* every array as it must be after the calls */
    double *bound[CF_MAX_ARRS];    /* per 4-byte payload element, for computed values */
    void *mem[2 * CF_MAX_ARRS + 3 * CF_MAX_CALLS]; /* freed by naive_free */
    size_t n_mem;
} naive;

static void *nv_alloc(naive *nv, size_t size) {
    cr_assert_lt(nv->n_mem, sizeof nv->mem / sizeof *nv->mem);
    void *p = calloc(1, size ? size : 1);
    cr_assert_not_null(p);
    return nv->mem[nv->n_mem++] = p;
}

static void naive_free(naive *nv) {
    for (size_t i = 0; i < nv->n_mem; i++)
        free(nv->mem[i]);
    nv->n_mem = 0;
}

static unsigned char *at(naive *nv, cf_ref r) { return nv->m[r.arr] + r.off; }
static int32_t i32(const unsigned char *p, size_t i) { return cf_i32_at(p, i); }
static float f32(const unsigned char *p, size_t i) { return cf_f32_at(p, i); }

/* Element i (4 bytes) from ref r on: the value and its bound (EXACT, EITHER or >= 0). */
static void put(naive *nv, cf_ref r, size_t i, float v, double bound) {
    const cf_arr *a = &nv->s->arr[r.arr];
    if (nv->bound[r.arr] == NULL) {
        size_t n = a->pay_size / 4;
        nv->bound[r.arr] = nv_alloc(nv, n * sizeof(double));
        for (size_t k = 0; k < n; k++)
            nv->bound[r.arr][k] = EXACT;
    }
    memcpy(at(nv, r) + 4 * i, &v, 4);
    nv->bound[r.arr][(r.off - a->pay_off) / 4 + i] = bound;
}

/* One element of es bytes: dst[di] = src[si]. */
static void move_elem(unsigned char *dst, size_t di, const unsigned char *src, size_t si,
                      size_t es) {
    memcpy(dst + di * es, src + si * es, es);
}

/* Unit i of `src` ([K|V][p][d]) into KV head `head` of slot `slot` of both pools. */
static void put_unit(naive *nv, const unsigned char *src, int32_t slot, int32_t head,
                     unsigned char *kp, unsigned char *vp) {
    const fkv_kv_geom *g = &nv->s->g;
    size_t d = g->head_dim, p = g->page_size, re = (size_t)g->n_kv_heads * d;
    size_t es = fkv_dtype_size(g->dtype);
    if (g->host_format != FKV_HOST_SAME) { /* the codec (pinned by test_hostfmt.c) per element */
        for (size_t kv = 0; kv < 2; kv++)
            for (uint32_t t = 0; t < p; t++)
                for (uint32_t c = 0; c < d; c++)
                    fkv_store(kv ? vp : kp, g->dtype,
                              ((size_t)slot * p + t) * re + (size_t)head * d + c,
                              fkv_hostfmt_load(g->host_format, g->page_size, g->head_dim, src,
                                               (int)kv, t, c));
        return;
    }
    for (size_t kv = 0; kv < 2; kv++)
        for (size_t t = 0; t < p; t++)
            for (size_t c = 0; c < d; c++)
                move_elem(kv ? vp : kp, ((size_t)slot * p + t) * re + (size_t)head * d + c, src,
                          (kv * p + t) * d + c, es);
}

/* Attention of one query head over n gathered rows: values, bound 1e-5 of the row's RMS. */
static void put_attention(naive *nv, cf_ref out, size_t row, const float *q, const float *k,
                          const float *v, size_t n, size_t d, float scale) {
    float ref[512];
    th_attention_ref(q, k, v, n, d, d, scale, ref);
    double rms = 0;
    for (size_t c = 0; c < d; c++)
        rms += (double)ref[c] * ref[c] / (double)d;
    for (size_t c = 0; c < d; c++)
        put(nv, out, row * d + c, ref[c], n ? 1e-5 * sqrt(rms) + 1e-7 : EXACT);
}

/* x rounded to f16 towards +inf (up) or -inf by a binary search over the f16 values in order
 * (ordinal -0x7c00 = -inf .. 0x7c00 = +inf), independent of the reference's step; a zero
 * result keeps x's sign (IEEE), NaN is the quiet NaN of x's sign. */
static uint16_t naive_f16_directed(float x, int up) {
    uint32_t sign = (fkv_f32_bits(x) >> 16) & 0x8000u;
    if (isnan(x))
        return (uint16_t)(sign | 0x7e00u);
    int32_t lo = -0x7c00, hi = 0x7c00; /* down: the last ordinal <= x; up: the first >= x */
    while (lo < hi) {
        int32_t mid = up ? lo + (hi - lo) / 2 : hi - (hi - lo) / 2;
        uint16_t h = (uint16_t)(mid >= 0 ? (uint32_t)mid : 0x8000u | (uint32_t)-mid);
        float v = fkv_f16_to_f32(h);
        if (up && v >= x)
            hi = mid;
        else if (up)
            lo = mid + 1;
        else if (v <= x)
            lo = mid;
        else
            hi = mid - 1;
    }
    uint16_t h = (uint16_t)(lo >= 0 ? (uint32_t)lo : 0x8000u | (uint32_t)-lo);
    return (h & 0x7fffu) == 0 ? (uint16_t)sign : h;
}

/* Summary element e of a summaries buffer, as f32. */
static double summ_at(const cf_spec *s, const unsigned char *sm, size_t e) {
    if (s->g.summary_format != FKV_SUMMARY_F16)
        return f32(sm, e);
    uint16_t h;
    memcpy(&h, sm + 2 * e, 2);
    return fkv_f16_to_f32(h);
}

/* select_pages in double: per (sequence, KV head) the group reduction, the top k by (value
 * desc, page asc), pages ascending then values (within 1e-5 relative of the f32 reference). */
static void naive_select(naive *nv, const cf_call *c) {
    const fkv_kv_geom *g = &nv->s->g;
    size_t hk = g->n_kv_heads, grp = g->group, k = c->size, first = c->first;
    const unsigned char *desc = at(nv, c->b[0]), *sc = at(nv, c->b[1]);
    const unsigned char *mask = c->b[3].arr >= 0 ? at(nv, c->b[3]) : NULL;
    unsigned char *out = at(nv, c->b[2]);
    for (size_t b = 0; b < c->n; b++) {
        size_t np = (size_t)i32(desc, 4 * b + 1), base = (size_t)i32(desc, 4 * b + 2);
        size_t n_cand = np > first ? np - first : 0, kk = n_cand < k ? n_cand : k;
        double *v = nv_alloc(nv, (np + 1) * sizeof(double));
        unsigned char *taken = nv_alloc(nv, np + 1);
        for (size_t h = 0; h < hk; h++) {
            if (mask && i32(mask, b * hk + h) == 0) /* no work: the record stays as it was */
                continue;
            for (size_t j = first; j < np; j++) {
                v[j] = c->reduce == FKV_GROUP_MAX ? -INFINITY : 0.0;
                taken[j] = 0;
            }
            for (size_t r = 0; r < grp; r++) {
                size_t row = base + (h * grp + r) * np;
                double m = -INFINITY, sum = 0;
                for (size_t j = first; j < np; j++)
                    m = f32(sc, row + j) > m ? f32(sc, row + j) : m;
                for (size_t j = first; j < np; j++)
                    sum += exp(((double)f32(sc, row + j) - m) * c->x);
                for (size_t j = first; j < np; j++) {
                    double x = f32(sc, row + j);
                    if (c->reduce == FKV_GROUP_SOFTMAX_MEAN)
                        v[j] += exp((x - m) * c->x) / sum / (double)grp;
                    else if (c->reduce == FKV_GROUP_MEAN)
                        v[j] += x / (double)grp;
                    else
                        v[j] = x > v[j] ? x : v[j];
                }
            }
            for (size_t j = first; j < np; j++)
                v[j] = isnan(v[j]) ? -INFINITY : v[j];
            for (size_t i = 0; i < kk; i++) { /* the best page not taken, lower page on ties */
                size_t best = np;
                for (size_t j = first; j < np; j++)
                    if (!taken[j] && (best == np || v[j] > v[best]))
                        best = j;
                taken[best] = 1;
            }
            size_t rec = (b * hk + h) * 2 * k, n = 0;
            for (size_t j = first; j < np; j++)
                if (taken[j]) {
                    int32_t page = (int32_t)j;
                    memcpy(out + 4 * (rec + n), &page, 4);
                    put(nv, c->b[2], rec + k + n, (float)v[j],
                        isfinite(v[j]) ? 1e-5 * fabs(v[j]) + 1e-30 : EXACT);
                    n++;
                }
            for (; n < k; n++) {
                int32_t none = -1;
                memcpy(out + 4 * (rec + n), &none, 4);
                put(nv, c->b[2], rec + k + n, -INFINITY, EXACT);
            }
        }
    }
}

static void naive_call(naive *nv, const cf_call *c) {
    const cf_spec *s = nv->s;
    const fkv_kv_geom *g = &s->g;
    fkv_dtype dt = g->dtype;
    size_t d = g->head_dim, p = g->page_size, hk = g->n_kv_heads, grp = g->group, re = hk * d;
    size_t hq = hk * grp, es = fkv_dtype_size(dt), n = c->n;
    const cf_ref *b = c->b;
    switch (c->kind) {
    case CF_WRITE:
    case CF_COPY:
        if (c->size)
            memmove(at(nv, b[0]), at(nv, b[1]), c->size);
        break;
    case CF_READ:
        if (c->size)
            memmove(at(nv, b[1]), at(nv, b[0]), c->size);
        break;
    case CF_MARKER:
        break;
    case CF_WRITE_REGIONS:
        for (size_t i = 0; i < n; i++) {
            const cf_region *rg = &s->region[c->first + i];
            memcpy(nv->m[b[0].arr] + rg->dst_off, nv->m[rg->arr] + rg->src_off, rg->size);
        }
        break;
    case CF_APPEND: {
        const unsigned char *k = at(nv, b[0]), *v = at(nv, b[1]), *rows = at(nv, b[2]);
        for (size_t i = 0; i < n; i++)
            for (size_t e = 0; e < re; e++) {
                size_t to = (size_t)i32(rows, i) * re + e;
                fkv_store(nv->m[b[3].arr], dt, to, f32(k, i * re + e));
                fkv_store(nv->m[b[4].arr], dt, to, f32(v, i * re + e));
            }
        break;
    }
    case CF_SUMMARIZE: {
        const unsigned char *kp = nv->m[b[0].arr], *pages = at(nv, b[1]);
        unsigned char *sums = nv->m[b[2].arr];
        for (size_t i = 0; i < n; i++)
            for (size_t h = 0; h < hk; h++)
                for (size_t ch = 0; ch < d; ch++) {
                    float lo = INFINITY, hi = -INFINITY;
                    for (size_t t = 0; t < p; t++) {
                        float x = fkv_load(kp, dt, ((size_t)i32(pages, 2 * i) * p + t) * re +
                                                       h * d + ch);
                        lo = fminf(lo, x); /* a NaN key is skipped */
                        hi = fmaxf(hi, x);
                    }
                    size_t at_s = ((size_t)i32(pages, 2 * i + 1) * hk + h) * 2 * d + ch;
                    if (s->g.summary_format == FKV_SUMMARY_F16) {
                        uint16_t l16 = naive_f16_directed(lo, 0), h16 = naive_f16_directed(hi, 1);
                        memcpy(sums + 2 * at_s, &l16, 2);
                        memcpy(sums + 2 * (at_s + d), &h16, 2);
                        continue;
                    }
                    memcpy(sums + 4 * at_s, &lo, 4);
                    memcpy(sums + 4 * (at_s + d), &hi, 4);
                }
        break;
    }
    case CF_SCORES: {
        const unsigned char *q = at(nv, b[0]), *desc = at(nv, b[1]), *sm = nv->m[b[2].arr];
        const unsigned char *mask = b[4].arr >= 0 ? at(nv, b[4]) : NULL;
        for (size_t sq = 0; sq < n; sq++) {
            int32_t base = i32(desc, 4 * sq), np = i32(desc, 4 * sq + 1);
            int32_t ob = i32(desc, 4 * sq + 2);
            size_t row = (size_t)i32(desc, 4 * sq + 3);
            for (size_t h = 0; h < hq; h++)
                for (int32_t j = 0; j < np && !(mask && i32(mask, sq * hk + h / grp) == 0); j++) {
                    size_t mn = (((size_t)base + (size_t)j) * hk + h / grp) * 2 * d;
                    double sum = 0, mag = 0;
                    for (size_t ch = 0; ch < d; ch++) {
                        double x = f32(q, (row * hq + h) * d + ch);
                        double a = x * summ_at(s, sm, mn + d + ch), z = x * summ_at(s, sm, mn + ch);
                        sum += a >= z || z != z ? a : z; /* the max skips a NaN (fmax) */
                        mag += (isfinite(a) ? fabs(a) : 0) + (isfinite(z) ? fabs(z) : 0);
                    }
                    put(nv, b[3], (size_t)ob + h * (size_t)np + (size_t)j, (float)sum,
                        1e-6 * mag + 1e-6);
                }
        }
        break;
    }
    case CF_COSINE: {
        const unsigned char *cur = at(nv, b[0]), *prev = at(nv, b[1]), *rows = at(nv, b[4]);
        for (size_t sq = 0; sq < n; sq++)
            for (size_t h = 0; h < hk; h++) {
                int32_t row = i32(rows, sq);
                double total = row < 0 ? NAN : 0; /* no previous query: flagged */
                for (size_t i = 0; i < grp && row >= 0; i++) {
                    size_t qh = (sq * hq + h * grp + i) * d;
                    size_t ph = ((size_t)row * hq + h * grp + i) * d;
                    double dot = 0, na = 0, nc = 0;
                    for (size_t ch = 0; ch < d; ch++) {
                        double x = f32(cur, qh + ch), y = f32(prev, ph + ch);
                        dot += x * y;
                        na += x * x;
                        nc += y * y;
                    }
                    /* a zero norm gives 0; a NaN or an infinity, NaN */
                    total += na == 0 || nc == 0 ? 0.0 : dot / sqrt(na * nc);
                }
                double sim = total / (double)grp;
                put(nv, b[2], sq * hk + h, (float)sim, 2e-6);
                int32_t flag = !(sim >= c->x);
                float as_float;
                memcpy(&as_float, &flag, 4);
                put(nv, b[3], sq * hk + h, as_float, fabs(sim - c->x) <= 2e-6 ? EITHER : EXACT);
            }
        break;
    }
    case CF_SCORES_CHECK: { /* cosine_flags, then scores (backend.h) */
        cf_call check = {.kind = CF_COSINE, .n = c->n, .x = c->x,
                         .b = {b[7], b[0], b[5], b[6], b[4]}};
        cf_call scores = {.kind = CF_SCORES, .n = c->n, .b = {b[0], b[1], b[2], b[3], {.arr = -1}}};
        naive_call(nv, &check);
        naive_call(nv, &scores);
        break;
    }
    case CF_PACK: {
        const unsigned char *slots = at(nv, b[2]);
        size_t page = hk * 2 * p * d;
        if (nv->s->g.host_format != FKV_HOST_SAME) { /* unit (i, h) quantized by the codec */
            size_t ub = fkv_unit_bytes(&nv->s->g);
            for (size_t i = 0; i < n; i++)
                for (size_t h = 0; h < hk; h++)
                    fkv_hostfmt_quantize(nv->s->g.host_format, (uint32_t)p, (uint32_t)d,
                                         nv->m[b[0].arr], nv->m[b[1].arr], dt,
                                         (size_t)i32(slots, i) * p * re + h * d, re,
                                         at(nv, b[3]) + (i * hk + h) * ub);
            break;
        }
        for (size_t i = 0; i < n; i++)
            for (size_t h = 0; h < hk; h++)
                for (size_t kv = 0; kv < 2; kv++)
                    for (size_t t = 0; t < p; t++)
                        for (size_t ch = 0; ch < d; ch++)
                            move_elem(at(nv, b[3]), i * page + ((h * 2 + kv) * p + t) * d + ch,
                                      nv->m[b[kv].arr],
                                      ((size_t)i32(slots, i) * p + t) * re + h * d + ch, es);
        break;
    }
    case CF_SCATTER:
    case CF_RECALL: {
        const unsigned char *units = at(nv, b[1]);
        size_t stride = c->kind == CF_SCATTER ? 2 : FKV_DIRECT_UNIT_INTS;
        for (size_t i = 0; i < n; i++) {
            const unsigned char *src;
            if (c->kind == CF_SCATTER) {
                src = at(nv, b[0]) + i * fkv_unit_bytes(&nv->s->g);
            } else {
                const fkv_direct_src *u = &s->units_src[c->first + i];
                cf_ref host = u->host == 0 ? b[0] : b[3 + u->host]; /* hosts at b[0], b[4], b[5] */
                src = nv->m[host.arr] + u->offset;
            }
            put_unit(nv, src, i32(units, stride * i), i32(units, stride * i + 1),
                     nv->m[b[2].arr], nv->m[b[3].arr]);
        }
        break;
    }
    case CF_SELECT:
        naive_select(nv, c);
        break;
    case CF_ATTENTION:
    case CF_DENSE: {
        int dense = c->kind == CF_DENSE;
        const unsigned char *q = at(nv, b[0]);
        const unsigned char *kp = nv->m[b[dense ? 1 : 3].arr], *vp = nv->m[b[dense ? 2 : 4].arr];
        cf_ref out = b[dense ? 3 : 5];
        size_t max_tok = dense ? n : 6 * p;
        float *k = nv_alloc(nv, max_tok * d * 4), *v = nv_alloc(nv, max_tok * d * 4);
        float *qv = nv_alloc(nv, d * 4);
        for (size_t sq = 0; sq < (dense ? 1 : n); sq++)
            for (size_t h = 0; h < hk; h++) {
                size_t n_tok = 0;
                if (dense) { /* rows t of the contiguous K/V */
                    for (; n_tok < n; n_tok++)
                        for (size_t ch = 0; ch < d; ch++) {
                            k[n_tok * d + ch] = fkv_load(kp, dt, n_tok * re + h * d + ch);
                            v[n_tok * d + ch] = fkv_load(vp, dt, n_tok * re + h * d + ch);
                        }
                } else { /* the valid tokens of the listed slots, in list order */
                    const unsigned char *heads = at(nv, b[1]), *ent = at(nv, b[2]);
                    int32_t first = i32(heads, 2 * (sq * hk + h));
                    for (int32_t e = 0; e < i32(heads, 2 * (sq * hk + h) + 1); e++) {
                        int32_t slot = i32(ent, 2 * (size_t)(first + e));
                        for (int32_t t = 0; t < i32(ent, 2 * (size_t)(first + e) + 1); t++, n_tok++)
                            for (size_t ch = 0; ch < d; ch++) {
                                size_t from = ((size_t)slot * p + (size_t)t) * re + h * d + ch;
                                k[n_tok * d + ch] = fkv_load(kp, dt, from);
                                v[n_tok * d + ch] = fkv_load(vp, dt, from);
                            }
                    }
                }
                for (size_t i = 0; i < grp; i++) {
                    size_t qh = sq * hq + h * grp + i;
                    for (size_t ch = 0; ch < d; ch++)
                        qv[ch] = f32(q, qh * d + ch);
                    put_attention(nv, out, qh, qv, k, v, n_tok, d, c->x);
                }
            }
        break;
    }
    }
}

/* The reference's outputs of the spec against the replay; failures name the case. */
static void naive_compare(const naive *nv, unsigned char **out, const char *name) {
    const cf_spec *s = nv->s;
    for (uint32_t i = 0; i < s->n_arr; i++) {
        const cf_arr *a = &s->arr[i];
        const unsigned char *x = out[i], *y = nv->m[i];
        if (!a->output)
            continue;
        for (size_t k = 0; k < a->size; k++) {
            size_t e = (k - a->pay_off) / 4;
            int in_pay = k >= a->pay_off && k < a->pay_off + a->pay_size;
            double bound = in_pay && nv->bound[i] ? nv->bound[i][e] : EXACT;
            if (bound == EXACT) {
                cr_expect_eq(x[k], y[k], "%s: %s byte %zu is 0x%02x, naive 0x%02x", name,
                             a->label, k, x[k], y[k]);
                if (x[k] != y[k])
                    return;
                continue;
            }
            if ((k - a->pay_off) % 4)
                continue;
            if (bound == EITHER) {
                int32_t flag = i32(x + k, 0);
                cr_expect(flag == 0 || flag == 1, "%s: %s #%zu is %d", name, a->label, e, flag);
                continue;
            }
            float xv = f32(x + k, 0), yv = f32(y + k, 0);
            int ok = isnan(yv) ? isnan(xv) : xv == yv || fabs((double)xv - yv) <= bound;
            cr_expect(ok, "%s: %s #%zu is %.9g, naive %.9g (bound %g)", name, a->label, e, xv, yv,
                      bound);
            if (!ok)
                return;
        }
    }
}

/* Runs every case of spec `id` on the reference (the checks of the spec, then the replay of
 * a data spec). */
static void cpu_spec(const char *id) {
    static cf_case cases[2048];
    cf_case_opts opts = {.sets = CF_SET_QUICK | CF_SET_UNIT | CF_SET_CPU, .knobs = 0};
    size_t n = cf_op_cases(&opts, cases, sizeof cases / sizeof *cases), ran = 0;
    fkv_device *ref_dev = NULL;
    cr_assert_eq(fkv_device_open_ops(ops, 0, &ref_dev), FKV_OK, "%s", fkv_last_error());
    cf_env env = {.strict = 1, .index_errors_fail = 1};
    env.dut = (cf_dev){.dev = dev};
    env.ref = (cf_dev){.dev = ref_dev};
    cr_assert_eq(fkv_op_opened_info(dev, &env.dut.info), FKV_OK);
    env.dut.info.index = 0;
    env.ref.info = env.dut.info;
    for (size_t i = 0; i < n; i++) {
        const cf_case *c = &cases[i];
        if (strcmp(c->spec, id) != 0)
            continue;
        ran++;
        cf_result r;
        cf_result_init(&r);
        cf_spec *s = NULL;
        if (cf_contract_check(c->op) || cf_spec_build(&env, c, &s, &r) <= 0) {
            c->run(&env, c, &r);
            cr_expect_neq(r.status, CF_FAIL, "%s: %s", c->name, r.message);
            cr_expect_neq(r.status, CF_SKIP, "%s skipped on the reference: %s", c->name,
                          r.message);
            continue;
        }
        unsigned char *out[CF_MAX_ARRS] = {0};
        const char *where;
        fkv_status st = cf_spec_execute(&env.dut, s, out, &where);
        cr_expect_eq(st, FKV_OK, "%s: %s: %s", c->name, where, fkv_last_error());
        naive *nv = calloc(1, sizeof *nv);
        cr_assert_not_null(nv);
        if (st == FKV_OK) {
            nv->s = s;
            for (uint32_t k = 0; k < s->n_arr; k++)
                nv->m[k] = memcpy(nv_alloc(nv, s->arr[k].size), s->arr[k].init, s->arr[k].size);
            for (uint32_t k = 0; k < s->n_call; k++)
                naive_call(nv, &s->call[k]);
            naive_compare(nv, out, c->name);
            naive_free(nv);
        }
        free(nv);
        for (int k = 0; k < CF_MAX_ARRS; k++)
            free(out[k]);
        cf_spec_free(s);
    }
    fkv_device_close(ref_dev);
    cr_assert_gt(ran, 0, "no case of spec %s", id);
}

#define CPU_SPEC_TEST(suite, id, op, splits, shared) \
    Test(suite, id) { cpu_spec(#id); }
CF_SPECS(CPU_SPEC_TEST, cpu_ops)

/* ---- the reference's own: table, device, host memory ---- */

Test(cpu_ops, device_info_and_table) {
    const uint32_t caps = FKV_CAP_ASYNC_COPY | FKV_CAP_DEVICE_WAIT | FKV_CAP_PINNED_HOST |
                          FKV_CAP_FP16_STORAGE | FKV_CAP_SEPARATE_TRANSFER_QUEUE |
                          FKV_CAP_MULTI_REGION_COPY;
    uint32_t n = 0;
    fkv_device_info info;
    cr_assert_eq(ops->abi_version, FKV_BACKEND_ABI_VERSION);
    cr_assert_eq(ops->struct_size, sizeof(fkv_backend_ops));
    cr_assert_str_eq(ops->name, "cpu");
    cr_assert(ops->buffer_import && ops->write_regions && ops->attention_dense &&
              ops->recall_direct && ops->recall_mode && ops->opened_info);
    cr_assert(ops->set_option == NULL && ops->get_option == NULL, "the reference has no options");
    cr_assert_eq(ops->device_count(&n), FKV_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(ops->device_info(0, &info), FKV_OK);
    cr_assert_str_eq(info.name, "freekv CPU reference");
    cr_assert_eq(info.type, FKV_DEVICE_REFERENCE);
    cr_assert_eq(info.caps, caps);
    cr_assert_eq(fkv_op_opened_info(dev, &info), FKV_OK);
    cr_assert_eq(info.caps, caps, "no zero-copy unless the recall mode is direct");
    cr_assert_eq(fkv_op_recall_mode(dev), FKV_RECALL_STAGED);
    /* through the public API, with no device selector */
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_device_get_info(d, &info), FKV_OK);
    cr_assert_str_eq(info.name, "freekv CPU reference");
    cr_assert_eq(info.type, FKV_DEVICE_REFERENCE);
    fkv_device_close(d);
}

Test(cpu_ops, host_alloc_aligned) {
    fkv_bhost *h = NULL;
    void *p = NULL;
    cr_assert_eq(fkv_op_host_alloc(dev, 1000, &h, &p), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq((uintptr_t)p % 64, 0);
    memset(p, 1, 1000);
    fkv_op_host_free(dev, h);
}

/* recall_direct copies its host list when it enqueues and reads the units' sources from the
 * device table, not from the host array (which is read during the call only). */
Test(cpu_ops, recall_direct_copies_host_list) {
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 1, .head_dim = 16, .page_size = 4,
                     .dtype = FKV_F16};
    size_t unit = 2 * 4 * 16 * 2;
    fkv_bhost *host = NULL;
    void *hp = NULL;
    cr_assert_eq(fkv_op_host_alloc(dev, 2 * unit, &host, &hp), FKV_OK, "%s", fkv_last_error());
    for (size_t i = 0; i < 2 * unit; i++)
        ((unsigned char *)hp)[i] = (unsigned char)(i * 7 + 1);
    fkv_bbuf *kp = dalloc(unit), *vp = dalloc(unit);
    fkv_bbuf *ub = dfrom((int32_t[]){0, 1, 0, (int32_t)(unit / 2)}, 0, 16);
    fkv_direct_src offs[1] = {{.host = 0, .offset = unit}};
    const fkv_bhost *hosts[1] = {host};
    fkv_status st = fkv_op_recall_direct(dev, CQ, DONE, &g, 1, hosts, 1, offs, ub, 0, kp, vp);
    offs[0].offset = UINT64_MAX;
    hosts[0] = NULL;
    RUN(st);
    unsigned char *k = tmalloc(unit);
    dread(kp, 0, k, unit);
    for (size_t t = 0; t < 4; t++) /* head 1 of slot 0: row t, elements 16..31 */
        cr_assert_arr_eq(k + (t * 32 + 16) * 2, (unsigned char *)hp + unit + t * 32, 32);
    fkv_op_host_free(dev, host);
}

/* f16 summaries bound the f32 ones: each page's f16 score is >= its f32 score, bit for bit in
 * f32 arithmetic (every step is monotone), so a selection can only admit pages for rounding;
 * and they stay close (relative 1e-2 of sum |q| |k| here). */
Test(cpu_ops, f16_summary_scores_bound_the_f32_ones) {
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 4, .head_dim = 64, .page_size = 16,
                     .dtype = FKV_F32};
    const uint32_t n_pages = 24, hq = 8;
    size_t re = 2 * 64, pool = (size_t)n_pages * 16 * re;
    th_rng rng;
    th_seed(&rng, 18);
    float *k = tmalloc(pool * 4), *q = tmalloc((size_t)hq * 64 * 4);
    th_fill_normal(&rng, k, pool, 1.0f);
    th_fill_normal(&rng, q, (size_t)hq * 64, 1.0f);
    int32_t pages[2 * 24], desc[4] = {0, (int32_t)n_pages, 0, 0};
    for (uint32_t i = 0; i < n_pages; i++)
        pages[2 * i] = pages[2 * i + 1] = (int32_t)i;
    fkv_bbuf *kp = dfrom(k, 0, pool * 4), *pb = dfrom(pages, 0, sizeof pages);
    fkv_bbuf *qb = dfrom(q, 0, (size_t)hq * 64 * 4), *db = dfrom(desc, 0, sizeof desc);
    float *score[2];
    for (int f = 0; f < 2; f++) {
        g.summary_format = f ? FKV_SUMMARY_F16 : FKV_SUMMARY_F32;
        fkv_bbuf *sb = dalloc(n_pages * fkv_summary_bytes(&g)), *ob = dalloc(hq * n_pages * 4);
        RUN(fkv_op_summarize(dev, CQ, DONE, &g, kp, n_pages, pb, 0, sb));
        RUN(fkv_op_scores(dev, CQ, DONE, &g, qb, 0, 1, db, 0, NULL, 0, sb, ob, 0));
        score[f] = tmalloc((size_t)hq * n_pages * 4);
        dread(ob, 0, score[f], (size_t)hq * n_pages * 4);
    }
    size_t above = 0;
    for (uint32_t i = 0; i < hq * n_pages; i++) {
        cr_assert_geq(score[1][i], score[0][i], "score %u: f16 %.9g below f32 %.9g", i,
                      (double)score[1][i], (double)score[0][i]);
        cr_assert_leq(score[1][i] - score[0][i], 1e-2f * (1.0f + fabsf(score[0][i])),
                      "score %u: f16 %.9g, f32 %.9g", i, (double)score[1][i],
                      (double)score[0][i]);
        above += score[1][i] > score[0][i];
    }
    cr_assert_gt(above, 0, "rounding moved no score: the f16 path was not taken");
}

/* A small f32 setup shared by the error tests: 2 slots of p=4, Hk=2, group 2, d=16. */
typedef struct small {
    fkv_kv_geom g;
    fkv_bbuf *kp, *vp, *q, *out, *sums, *big;
} small;

static small small_setup(void) {
    small s;
    s.g = (fkv_kv_geom){.n_kv_heads = 2, .group = 2,
            .head_dim = 16, .page_size = 4, .dtype = FKV_F32};
    size_t pool = 2 * 4 * 2 * 16 * 4;
    s.kp = dalloc(pool);
    s.vp = dalloc(pool);
    s.q = dalloc(4 * 16 * 4);
    s.out = dalloc(4 * 16 * 4);
    s.sums = dalloc(2 * 2 * 2 * 16 * 4); /* 2 summaries */
    s.big = dalloc(1 << 16);
    return s;
}

/* An index buffer of exactly n int32. */
static fkv_bbuf *ints(const int32_t *v, size_t n) {
    fkv_bbuf *b = dalloc(n * 4);
    dwrite(b, 0, v, n * 4);
    return b;
}

Test(cpu_ops, failures_propagate) {
    small s = small_setup();
    fkv_bevent *bad = NULL, *after = NULL, *mark = NULL;
    cr_assert_eq(fkv_op_append(dev, CQ, (fkv_deps){0, NULL, &bad}, &s.g, s.big, 0, s.big, 0, 1,
                               ints((int32_t[]){100}, 1), 0, s.kp, s.vp),
                 FKV_OK);
    float back[4];
    /* a command waiting on the failed one fails and is not run */
    cr_assert_eq(fkv_op_read(dev, TQ, (fkv_deps){1, &bad, &after}, s.kp, 0, back, sizeof back),
                 FKV_OK);
    cr_assert_eq(fkv_op_marker(dev, BQ, (fkv_deps){1, &after, &mark}), FKV_OK);
    cr_assert_eq(fkv_op_event_wait(dev, 1, &mark), FKV_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(fkv_last_error(), "append") != NULL, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_event_wait(dev, 1, &after), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_event_wait(dev, 1, &bad), FKV_ERR_INVALID_ARGUMENT);
    fkv_bevent *both[2] = {bad, after};
    cr_assert_eq(fkv_op_event_wait(dev, 2, both), FKV_ERR_INVALID_ARGUMENT);
    fkv_op_event_release(dev, bad);
    fkv_op_event_release(dev, after);
    fkv_op_event_release(dev, mark);
    /* finish reports a failure on its queue since the last marker, then is clean */
    cr_assert_eq(fkv_op_finish(dev, CQ), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_finish(dev, CQ), FKV_OK, "%s", fkv_last_error());
}

/* Enqueues from several threads at once on all queues (run under ThreadSanitizer too). */
typedef struct hammer_arg {
    fkv_queue q;
    fkv_bbuf *buf;
    int errors;
} hammer_arg;

static void *hammer(void *p) {
    hammer_arg *a = p;
    unsigned char src[512], back[512];
    for (int it = 0; it < 100; it++) {
        memset(src, it + (int)a->q, sizeof src);
        fkv_bevent *w = NULL, *rd = NULL;
        fkv_queue other = (fkv_queue)((a->q + 1) % FKV_QUEUE_COUNT);
        if (fkv_op_write(dev, a->q, (fkv_deps){0, NULL, &w}, a->buf, 0, src, sizeof src) !=
                FKV_OK ||
            fkv_op_read(dev, other, (fkv_deps){1, &w, &rd}, a->buf, 0, back, sizeof back) !=
                FKV_OK) {
            a->errors++;
            fkv_op_event_release(dev, w);
            continue;
        }
        if (fkv_op_event_wait(dev, 1, &rd) != FKV_OK || memcmp(src, back, sizeof src) != 0)
            a->errors++;
        fkv_op_event_release(dev, w);
        fkv_op_event_release(dev, rd);
    }
    return NULL;
}

Test(cpu_ops, concurrent_enqueue) {
    pthread_t th[3];
    hammer_arg args[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (hammer_arg){(fkv_queue)i, dalloc(512), 0};
        cr_assert_eq(pthread_create(&th[i], NULL, hammer, &args[i]), 0);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(args[i].errors, 0, "thread %d saw %d errors", i, args[i].errors);
    }
}

Test(cpu_ops, close_drains_pending_work) {
    /* commands still queued at close run to completion; events outlive the device */
    fkv_bbuf *b = dalloc(1 << 20);
    unsigned char *src = tmalloc(1 << 20);
    fkv_bevent *ev = NULL;
    for (int i = 0; i < 20; i++)
        cr_assert_eq(
            fkv_op_write(dev, TQ, (fkv_deps){0, NULL, i == 19 ? &ev : NULL}, b, 0, src, 1 << 20),
            FKV_OK);
    fkv_device_close(dev);
    dev = NULL;
    /* The reference's events and buffers need no device (its table's event_wait,
     * event_release and buffer_free ignore it): the table itself is called here, the one
     * place there is no device to dispatch on. */
    cr_assert_eq(ops->event_wait(NULL, 1, &ev), FKV_OK);
    ops->event_release(NULL, ev);
    ops->buffer_free(NULL, b);
    n_bufs = 0;
}

Test(cpu_ops, nan_inputs_do_not_crash) {
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 2,
            .head_dim = 16, .page_size = 4, .dtype = FKV_BF16};
    size_t re = 32, rows = 8, hq = 4;
    float *k = tmalloc(rows * re * 4), *q = tmalloc(hq * 16 * 4);
    for (size_t i = 0; i < rows * re; i++)
        k[i] = (i % 3 == 0) ? NAN : (i % 5 == 0 ? INFINITY : 1.0f);
    for (size_t i = 0; i < hq * 16; i++)
        q[i] = (i % 7 == 0) ? NAN : 0.5f;
    fkv_bbuf *kp = dfrom(encode(k, rows * re, FKV_BF16), 0, rows * re * 2);
    fkv_bbuf *qb = dfrom(q, 0, hq * 16 * 4), *out = dalloc(hq * 16 * 4);
    fkv_bbuf *sums = dalloc(2 * 2 * 2 * 16 * 4), *flags = dalloc(64), *sims = dalloc(64);
    fkv_bbuf *heads = ints((int32_t[]){0, 2, 0, 2}, 4), *entries = ints((int32_t[]){0, 4, 1, 3}, 4);
    RUN(fkv_op_attention(dev, CQ, DONE, &g, qb, 0, 1, heads, 0, entries, 0, kp, kp, 1.0f, out, 0));
    RUN(fkv_op_attention_dense(dev, CQ, DONE, &g, qb, 0, 8, kp, kp, 1.0f, out, 0));
    RUN(fkv_op_summarize(dev, CQ, DONE, &g, kp, 2, ints((int32_t[]){0, 0, 1, 1}, 4), 0, sums));
    RUN(fkv_op_scores(dev, CQ, DONE, &g, qb, 0, 1, ints((int32_t[]){0, 2, 0, 0}, 4), 0, NULL, 0,
                      sums, out, 0));
    RUN(fkv_op_cosine_flags(dev, CQ, DONE, &g, qb, 0, qb, 0, ints((int32_t[]){0}, 1), 0, 1, 0.9f,
                            sims, 0, flags, 0));
}

/* ---- attention: the definition, bit for bit, at every instruction-set level ----
 * backends/cpu/cpu_attention.c computes the reference's attention over tiles of the KV group
 * with vectors; its results must be exactly those of the plain per-head loops below, which
 * are the definition (every sum in the order written), at every instruction-set level the
 * CPU has. */

static const cpu_isa isa_levels[] = {CPU_ISA_BASE, CPU_ISA_X86_V3, CPU_ISA_X86_V4, CPU_ISA_BEST};

/* One query head over the tokens of n_spans (gslot, valid) pairs of KV head h: the maximum
 * scaled score first, then exp(s - max) weights. */
static void defined_head(const fkv_kv_geom *g, const float *q, uint32_t h, const int32_t *spans,
                         size_t n_spans, size_t rows_per_slot, const void *kp, const void *vp,
                         float scale, float *out) {
    size_t d = g->head_dim, re = (size_t)g->n_kv_heads * d, n = 0;
    float max = -INFINITY, sum = 0.0f;
    for (size_t e = 0; e < n_spans; e++)
        for (int32_t t = 0; t < spans[2 * e + 1]; t++, n++) {
            size_t first = ((size_t)spans[2 * e] * rows_per_slot + (size_t)t) * re + h * d;
            float s = 0.0f;
            for (size_t c = 0; c < d; c++)
                s += q[c] * fkv_load(kp, g->dtype, first + c);
            s *= scale;
            if (s > max)
                max = s;
        }
    memset(out, 0, d * sizeof *out);
    if (n == 0)
        return;
    for (size_t e = 0; e < n_spans; e++)
        for (int32_t t = 0; t < spans[2 * e + 1]; t++) {
            size_t first = ((size_t)spans[2 * e] * rows_per_slot + (size_t)t) * re + h * d;
            float s = 0.0f;
            for (size_t c = 0; c < d; c++)
                s += q[c] * fkv_load(kp, g->dtype, first + c);
            float w = expf(s * scale - max);
            sum += w;
            for (size_t c = 0; c < d; c++)
                out[c] += w * fkv_load(vp, g->dtype, first + c);
        }
    for (size_t c = 0; c < d; c++)
        out[c] /= sum;
}

/* Values in a dtype: normal ones, a few far below 1 (f16 subnormals), zeros of both signs. */
static void *attention_values(th_rng *r, size_t n, fkv_dtype t) {
    float *x = rand_f32(r, n, 1.0f);
    for (size_t i = 0; i < n; i++) {
        uint32_t u = th_u32(r) % 16;
        x[i] = u == 0 ? x[i] * 1e-6f : u == 1 ? 0.0f : u == 2 ? -0.0f : x[i];
    }
    return encode(x, n, t);
}

/* got is want bit for bit; with any_nan a NaN may stand for another NaN (which NaN an
 * operation passes on is the compiler's choice of operand order). */
static void expect_same_bits(const float *got, const float *want, size_t n, const char *what,
                             cpu_isa isa, int any_nan) {
    for (size_t i = 0; i < n; i++)
        if (!(any_nan && got[i] != got[i] && want[i] != want[i]) &&
            memcmp(&got[i], &want[i], sizeof *got) != 0)
            cr_assert_fail("%s, isa %d: element %zu is %.9g, the definition gives %.9g", what,
                           (int)isa, i, got[i], want[i]);
}

Test(cpu_ops, attention_is_the_per_head_definition_bit_for_bit) {
    static const uint32_t geoms[][4] = {{2, 1, 16, 4},  {2, 4, 128, 32}, {1, 3, 5, 3},
                                        {2, 12, 72, 16}, {1, 8, 64, 16},  {3, 4, 40, 7},
                                        {1, 9, 8, 1},    {2, 2, 33, 64}};
    static const fkv_dtype dtypes[] = {FKV_F32, FKV_F16, FKV_BF16};
    th_rng r;
    th_seed(&r, 42);
    /* the calling thread alone, then three threads taking (sequence, KV head) pairs */
    cpu_pool *pools[2] = {NULL, NULL};
    cr_assert_eq(cpu_pool_create(3, 0, &pools[1]), FKV_OK);
    cr_assert_eq(cpu_pool_width(pools[1]), 3);
    for (size_t gi = 0; gi < sizeof geoms / sizeof *geoms; gi++)
        for (size_t di = 0; di < 3; di++) {
            fkv_kv_geom g = {.n_kv_heads = geoms[gi][0], .group = geoms[gi][1],
                             .head_dim = geoms[gi][2], .page_size = geoms[gi][3],
                             .dtype = dtypes[di]};
            uint32_t n_seqs = 2, n_slots = 10, hk = g.n_kv_heads, d = g.head_dim;
            size_t rows = (size_t)n_slots * g.page_size, re = (size_t)hk * d;
            size_t qn = (size_t)n_seqs * hk * g.group * d;
            void *kp = attention_values(&r, rows * re, g.dtype);
            void *vp = attention_values(&r, rows * re, g.dtype);
            float *q = rand_f32(&r, qn, 1.0f), *want = tmalloc(qn * 4), *got = tmalloc(qn * 4);
            int32_t *heads = tmalloc((size_t)n_seqs * hk * 8), *entries = tmalloc(n_seqs * hk * 64);
            size_t e = 0;
            for (uint32_t bh = 0; bh < n_seqs * hk; bh++) {
                uint32_t count = th_u32(&r) % 8; /* empty lists, repeated slots, empty pages */
                heads[2 * bh] = (int32_t)e;
                heads[2 * bh + 1] = (int32_t)count;
                for (uint32_t k = 0; k < count; k++, e++) {
                    uint32_t partial = th_u32(&r) % (g.page_size + 1);
                    entries[2 * e] = (int32_t)(th_u32(&r) % n_slots);
                    entries[2 * e + 1] = (int32_t)(th_u32(&r) % 3 == 0 ? partial : g.page_size);
                }
            }
            float scale = 1.0f / sqrtf((float)d);
            for (uint32_t bh = 0; bh < n_seqs * hk; bh++)
                for (uint32_t i = 0; i < g.group; i++) {
                    size_t qh = (size_t)bh * g.group + i;
                    defined_head(&g, q + qh * d, bh % hk, entries + 2 * heads[2 * bh],
                                 (size_t)heads[2 * bh + 1], g.page_size, kp, vp, scale,
                                 want + qh * d);
                }
            char what[96];
            snprintf(what, sizeof what, "attention %ux%ux%ux%u %s", hk, g.group, d, g.page_size,
                     fkv_dtype_name(g.dtype));
            for (size_t li = 0; li < sizeof isa_levels / sizeof *isa_levels; li++) {
                if (!cpu_isa_available(isa_levels[li]))
                    continue;
                for (int pi = 0; pi < 2; pi++) {
                    memset(got, 0xA5, qn * 4);
                    cr_assert_eq(cpu_attention(&g, q, n_seqs, heads, entries, e, kp, vp, rows,
                                               scale, got, isa_levels[li], pools[pi]),
                                 FKV_OK, "%s", fkv_last_error());
                    expect_same_bits(got, want, qn, what, isa_levels[li], 0);
                }
            }
            /* dense: the first n rows of the pools as one list */
            uint32_t n_tok = (uint32_t)(th_u32(&r) % rows) + 1;
            int32_t span[2] = {0, (int32_t)n_tok};
            for (uint32_t h = 0; h < hk; h++)
                for (uint32_t i = 0; i < g.group; i++) {
                    size_t qh = (size_t)h * g.group + i;
                    defined_head(&g, q + qh * d, h, span, 1, 0, kp, vp, 0.3f, want + qh * d);
                }
            snprintf(what, sizeof what, "attention_dense %ux%ux%u, %u tokens %s", hk, g.group, d,
                     n_tok, fkv_dtype_name(g.dtype));
            for (size_t li = 0; li < sizeof isa_levels / sizeof *isa_levels; li++) {
                if (!cpu_isa_available(isa_levels[li]))
                    continue;
                for (int pi = 0; pi < 2; pi++) {
                    memset(got, 0xA5, qn * 4);
                    cr_assert_eq(cpu_attention_dense(&g, q, n_tok, kp, vp, 0.3f, got,
                                                     isa_levels[li], pools[pi]),
                                 FKV_OK, "%s", fkv_last_error());
                    expect_same_bits(got, want, (size_t)hk * g.group * d, what, isa_levels[li], 0);
                }
            }
        }
    cpu_pool_destroy(pools[1]);
}

/* Attention over one token returns its value row exactly (weight expf(0) = 1, added to 0 and
 * divided by 1): over a row of every 16-bit pattern, every f16 and bf16 value must come out
 * as common/dtype.h converts it, at every level (a NaN as a NaN). */
Test(cpu_ops, attention_converts_every_16_bit_value_exactly) {
    static const fkv_dtype dtypes[] = {FKV_F16, FKV_BF16};
    for (size_t di = 0; di < 2; di++) {
        fkv_kv_geom g = {.n_kv_heads = 64, .group = 1, .head_dim = 1024, .page_size = 1,
                         .dtype = dtypes[di]};
        size_t n = 65536;
        uint16_t *k = tmalloc(n * 2), *v = tmalloc(n * 2);
        float *q = tmalloc(n * 4), *out = tmalloc(n * 4);
        memset(k, 0, n * 2);
        memset(q, 0, n * 4);
        for (size_t i = 0; i < n; i++)
            v[i] = (uint16_t)i;
        for (size_t li = 0; li < sizeof isa_levels / sizeof *isa_levels; li++) {
            if (!cpu_isa_available(isa_levels[li]))
                continue;
            cr_assert_eq(cpu_attention_dense(&g, q, 1, k, v, 1.0f, out, isa_levels[li], NULL),
                         FKV_OK);
            for (size_t i = 0; i < n; i++) {
                float x = fkv_load(v, g.dtype, i), want = (0.0f + 1.0f * x) / 1.0f;
                int same = isnan(x) ? isnan(out[i]) : memcmp(&out[i], &want, 4) == 0;
                cr_assert(same, "%s 0x%04zx at isa %d: %.9g, expected %.9g",
                          fkv_dtype_name(g.dtype), i, (int)isa_levels[li], out[i], want);
            }
        }
    }
}

/* ---- environment ---- */

TestSuite(cpu_env, .init = unset_env, .fini = teardown);

Test(cpu_env, recall_modes) {
    static const char *const names[] = {"staged", "direct", "perpage"};
    for (int i = 0; i < 3; i++) {
        setenv("FREEKV_CPU_RECALL", names[i], 1);
        open_cpu();
        fkv_device_info info;
        cr_assert_eq(fkv_op_recall_mode(dev), (fkv_recall_mode)i);
        cr_assert_eq(fkv_op_opened_info(dev, &info), FKV_OK);
        cr_assert_eq((info.caps & FKV_CAP_ZERO_COPY_HOST) != 0, i == FKV_RECALL_DIRECT,
                     "zero-copy cap for %s", names[i]);
        fkv_device_close(dev);
        dev = NULL;
    }
    /* through the public API too */
    fkv_device *d = NULL;
    fkv_device_info info;
    setenv("FREEKV_CPU_RECALL", "direct", 1);
    cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_device_get_info(d, &info), FKV_OK);
    cr_assert(info.caps & FKV_CAP_ZERO_COPY_HOST);
    fkv_device_close(d);
}

Test(cpu_env, bad_recall_value) {
    setenv("FREEKV_CPU_RECALL", "zerocopy", 1);
    fkv_device *b = NULL;
    ops = fkv_backend_cpu();
    cr_assert_eq(fkv_device_open_ops(ops, 0, &b), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert_null(b);
    cr_assert(strstr(fkv_last_error(), "FREEKV_CPU_RECALL") != NULL, "%s", fkv_last_error());
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert_null(d);
}

/* One attention on a CPU device opened with the environment as it is, big enough to be
 * shared among its threads (CPU_MIN_SHARED_ELEMENTS): 8 KV heads of group 2, d 128, f16, 18
 * entries a head with partial pages, 267 tokens. Its output into out[DEVICE_ATTN_OUT]. */
#define DEVICE_ATTN_OUT (16 * 128)
static void device_attention(float *out) {
    fkv_kv_geom g = {.n_kv_heads = 8, .group = 2, .head_dim = 128, .page_size = 16,
                     .dtype = FKV_F16};
    size_t re = 8 * 128, slots = 20, rows = slots * 16, per = 18;
    cr_assert_geq(2 * 267 * 128 * 8, CPU_MIN_SHARED_ELEMENTS);
    th_rng r;
    th_seed(&r, 7);
    void *kv = attention_values(&r, rows * re, g.dtype);
    float *q = rand_f32(&r, DEVICE_ATTN_OUT, 1.0f);
    int32_t *heads = tmalloc(8 * 2 * sizeof *heads), *entries = tmalloc(8 * per * 2 * 4);
    for (int32_t h = 0; h < 8; h++) {
        heads[2 * h] = h * (int32_t)per;
        heads[2 * h + 1] = (int32_t)per;
        for (int32_t e = 0; e < (int32_t)per; e++) {
            entries[2 * (h * per + e)] = (h * 7 + e * 3) % (int32_t)slots;
            entries[2 * (h * per + e) + 1] = e % 5 == 4 ? 9 : 16;
        }
    }
    open_cpu();
    fkv_bbuf *kp = dfrom(kv, 0, rows * re * 2), *qb = dfrom(q, 0, DEVICE_ATTN_OUT * 4);
    fkv_bbuf *ob = dalloc(DEVICE_ATTN_OUT * 4);
    RUN(fkv_op_attention(dev, CQ, DONE, &g, qb, 0, 1, ints(heads, 16), 0,
                         ints(entries, 8 * per * 2), 0, kp, kp, 0.088f, ob, 0));
    dread(ob, 0, out, DEVICE_ATTN_OUT * 4);
    close_cpu();
}

/* The device's scores of one sequence over 700 pages of f16 summaries (2 KV heads, group 4),
 * enough for its pool to share them. */
#define DEVICE_SCORES_PAGES 700
#define DEVICE_SCORES_OUT (8 * DEVICE_SCORES_PAGES)
static void device_scores(float *out) {
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 4, .head_dim = 64, .page_size = 16,
                     .dtype = FKV_F16, .summary_format = FKV_SUMMARY_F16};
    size_t n = (size_t)DEVICE_SCORES_PAGES * 2 * 2 * 64;
    th_rng r;
    th_seed(&r, 9);
    float *vals = rand_f32(&r, n, 2.0f), *q = rand_f32(&r, 8 * 64, 1.0f);
    uint16_t *sums = tmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        sums[i] = fkv_f32_to_f16_down(vals[i]);
    int32_t desc[FKV_SCORES_DESC_INTS] = {0, DEVICE_SCORES_PAGES, 0, 0};
    open_cpu();
    fkv_bbuf *sb = dfrom(sums, 0, n * 2), *qb = dfrom(q, 0, 8 * 64 * 4);
    fkv_bbuf *ob = dalloc(DEVICE_SCORES_OUT * 4);
    RUN(fkv_op_scores(dev, CQ, DONE, &g, qb, 0, 1, ints(desc, FKV_SCORES_DESC_INTS), 0, NULL, 0,
                      sb, ob, 0));
    dread(ob, 0, out, DEVICE_SCORES_OUT * 4);
    close_cpu();
}

/* FREEKV_CPU_ISA picks the level of the device's attention and scores: each level the CPU
 * runs gives the bits of the baseline, a level it lacks is refused, and so is a bad name. */
Test(cpu_env, isa_levels_give_the_same_attention) {
    static const char *const names[] = {"base", "x86-64-v3", "X86-64-V4", "auto"};
    static const cpu_isa levels[] = {CPU_ISA_BASE, CPU_ISA_X86_V3, CPU_ISA_X86_V4, CPU_ISA_BEST};
    float *want = tmalloc(DEVICE_ATTN_OUT * 4), *got = tmalloc(DEVICE_ATTN_OUT * 4);
    float *want_s = tmalloc(DEVICE_SCORES_OUT * 4), *got_s = tmalloc(DEVICE_SCORES_OUT * 4);
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        setenv("FREEKV_CPU_ISA", names[i], 1);
        if (!cpu_isa_available(levels[i])) {
            fkv_device *d = NULL;
            cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_ERR_UNSUPPORTED);
            cr_assert(strstr(fkv_last_error(), "FREEKV_CPU_ISA"), "%s", fkv_last_error());
            continue;
        }
        device_attention(i == 0 ? want : got);
        device_scores(i == 0 ? want_s : got_s);
        if (i > 0) {
            cr_assert_arr_eq(got, want, DEVICE_ATTN_OUT * 4, "FREEKV_CPU_ISA=%s differs from base",
                             names[i]);
            cr_assert_arr_eq(got_s, want_s, DEVICE_SCORES_OUT * 4,
                             "FREEKV_CPU_ISA=%s: scores differ from base", names[i]);
        }
    }
    setenv("FREEKV_CPU_ISA", "avx512", 1);
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert(strstr(fkv_last_error(), "FREEKV_CPU_ISA"), "%s", fkv_last_error());
    cr_assert_null(d);
}

/* FREEKV_CPU_THREADS: the attention's bits do not depend on its threads; bad counts are
 * refused. */
Test(cpu_env, threads_give_the_same_attention) {
    static const char *const counts[] = {"1", "2", "5", "auto"};
    float *want = tmalloc(DEVICE_ATTN_OUT * 4), *got = tmalloc(DEVICE_ATTN_OUT * 4);
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++) {
        setenv("FREEKV_CPU_THREADS", counts[i], 1);
        device_attention(i == 0 ? want : got);
        if (i > 0)
            cr_assert_arr_eq(got, want, DEVICE_ATTN_OUT * 4, "FREEKV_CPU_THREADS=%s differs from 1",
                             counts[i]);
    }
    static const char *const bad[] = {"0", "257", "two"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv("FREEKV_CPU_THREADS", bad[i], 1);
        fkv_device *d = NULL;
        cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_ERR_BAD_ENVIRONMENT, "%s", bad[i]);
        cr_assert(strstr(fkv_last_error(), "FREEKV_CPU_THREADS"), "%s", fkv_last_error());
        cr_assert_null(d);
    }
}

/* The scores' (sequence, KV head) pairs on three threads give the bits of one thread, f32
 * and f16 summaries, with a mask; a bad sequence fails the call before any score is written. */
Test(cpu_ops, scores_on_a_pool_are_the_one_thread_bits) {
    cpu_pool *pool = NULL;
    cr_assert_eq(cpu_pool_create(3, 0, &pool), FKV_OK);
    static const fkv_summary_format formats[] = {FKV_SUMMARY_F32, FKV_SUMMARY_F16};
    th_rng r;
    th_seed(&r, 7);
    for (size_t fi = 0; fi < 2; fi++) {
        fkv_kv_geom g = {.n_kv_heads = 3, .group = 5, .head_dim = 24, .page_size = 16,
                         .dtype = FKV_F16, .summary_format = formats[fi]};
        uint32_t n_seqs = 3, pages = 37;
        size_t n_q_heads = (size_t)g.n_kv_heads * g.group, d = g.head_dim;
        size_t n_sum = (size_t)n_seqs * pages, sum_elems = n_sum * g.n_kv_heads * 2 * d;
        size_t out_len = n_seqs * n_q_heads * pages;
        float *q = tmalloc(n_seqs * n_q_heads * d * 4), *lo = tmalloc(sum_elems * 4);
        void *sums = tmalloc(fkv_summary_bytes(&g) * n_sum);
        float *want = tmalloc(out_len * 4), *got = tmalloc(out_len * 4);
        th_fill_normal(&r, q, n_seqs * n_q_heads * d, 1.0f);
        th_fill_normal(&r, lo, sum_elems, 1.0f);
        for (size_t i = 0; i < sum_elems; i++) {
            if (formats[fi] == FKV_SUMMARY_F16)
                ((uint16_t *)sums)[i] = fkv_f32_to_f16_down(lo[i]);
            else
                ((float *)sums)[i] = lo[i];
        }
        int32_t desc[3 * FKV_SCORES_DESC_INTS], mask[3 * 3] = {1, 0, 1, 1, 1, 1, 0, 1, 1};
        for (uint32_t b = 0; b < n_seqs; b++) {
            int32_t *db = desc + FKV_SCORES_DESC_INTS * b;
            db[0] = (int32_t)(b * pages);
            db[1] = (int32_t)(pages - 4 * b);
            db[2] = (int32_t)(b * n_q_heads * pages);
            db[3] = (int32_t)(n_seqs - 1 - b);
        }
        for (int masked = 0; masked < 2; masked++) {
            memset(want, 0x5a, out_len * 4);
            const int32_t *m = masked ? mask : NULL;
            cr_assert_eq(cpu_scores(&g, q, n_seqs, n_seqs, desc, m, sums, n_sum, want, out_len,
                                    CPU_ISA_BEST, NULL),
                         FKV_OK, "%s", fkv_last_error());
            /* several calls: the helpers wake in tens of microseconds, the call takes as long */
            for (int rep = 0; rep < 20; rep++) {
                memset(got, 0x5a, out_len * 4);
                cr_assert_eq(cpu_scores(&g, q, n_seqs, n_seqs, desc, m, sums, n_sum, got,
                                        out_len, CPU_ISA_BEST, pool),
                             FKV_OK, "%s", fkv_last_error());
                cr_assert_arr_eq(got, want, out_len * 4, "format %zu masked %d", fi, masked);
            }
        }
        /* select_pages of those scores (its scratch: a copy each) on the pool and alone; then
         * with sequences 0 and 1 sharing their scores, which runs them in order on one thread */
        float *s1 = tmalloc(out_len * 4), *s2 = tmalloc(out_len * 4);
        int32_t *r1 = tmalloc(n_seqs * 3 * 2 * 6 * 4), *r2 = tmalloc(n_seqs * 3 * 2 * 6 * 4);
        fkv_select_params sp = {.first_page = 2, .k = 6, .reduce = FKV_GROUP_SOFTMAX_MEAN,
                                .temp_scale = 0.125f};
        for (int shared = 0; shared < 2; shared++) {
            if (shared)
                desc[FKV_SCORES_DESC_INTS + 2] = desc[2];
            memcpy(s1, want, out_len * 4);
            memcpy(s2, want, out_len * 4);
            cr_assert_eq(cpu_select_pages(&g, n_seqs, desc, NULL, s1, out_len, &sp, r1, NULL),
                         FKV_OK, "%s", fkv_last_error());
            cr_assert_eq(cpu_select_pages(&g, n_seqs, desc, NULL, s2, out_len, &sp, r2, pool),
                         FKV_OK, "%s", fkv_last_error());
            cr_assert_arr_eq(r2, r1, n_seqs * 3 * 2 * 6 * 4, "format %zu shared %d", fi, shared);
            cr_assert_arr_eq(s2, s1, out_len * 4, "format %zu shared %d", fi, shared);
        }
        desc[FKV_SCORES_DESC_INTS + 2] = (int32_t)(n_q_heads * pages);
        desc[FKV_SCORES_DESC_INTS * 2 + 1] = (int32_t)(n_sum + 1); /* sequence 2 reads past */
        memset(got, 0x5a, out_len * 4);
        memset(want, 0x5a, out_len * 4);
        cr_assert_eq(cpu_scores(&g, q, n_seqs, n_seqs, desc, NULL, sums, n_sum, got, out_len,
                                CPU_ISA_BEST, pool),
                     FKV_ERR_INVALID_ARGUMENT);
        cr_assert(strstr(fkv_last_error(), "sequence 2"), "%s", fkv_last_error());
        cr_assert_arr_eq(got, want, out_len * 4, "a failed call wrote scores");
    }
    cpu_pool_destroy(pool);
}

/* Scores written over the call's own descriptors (one buffer for both, which the op does not
 * forbid) do not change a descriptor after its check: each sequence reads and writes what
 * was checked, on one thread or several. */
Test(cpu_ops, scores_over_their_descriptors_use_the_checked_copy) {
    cpu_pool *pool = NULL;
    cr_assert_eq(cpu_pool_create(2, 0, &pool), FKV_OK);
    fkv_kv_geom g = {.n_kv_heads = 1, .group = 1, .head_dim = 1, .page_size = 1,
                     .dtype = FKV_F32, .summary_format = FKV_SUMMARY_F32};
    float q[1] = {1.0f}, sums[2] = {1e30f, 1e30f}; /* min, max of one page */
    for (int use_pool = 0; use_pool < 2; use_pool++) {
        /* sequence 0 writes word 5, sequence 1's page count */
        int32_t buf[16] = {0, 1, 5, 0, 0, 1, 10, 0};
        cr_assert_eq(cpu_scores(&g, q, 1, 2, buf, NULL, sums, 1, (float *)buf, 16,
                                CPU_ISA_BEST, use_pool ? pool : NULL),
                     FKV_OK, "%s", fkv_last_error());
        float at5, at10;
        memcpy(&at5, &buf[5], 4);
        memcpy(&at10, &buf[10], 4);
        cr_assert(at5 == 1e30f && at10 == 1e30f, "pool %d: %g %g", use_pool, at5, at10);
    }
    cpu_pool_destroy(pool);
}

/* The scores' definition (cpu_kernels.h), one (query head, page) at a time. */
static float defined_score(const float *q, const float *lo, const float *hi, size_t d) {
    float acc = 0.0f;
    for (size_t c = 0; c < d; c++) {
        float a = q[c] * hi[c], b = q[c] * lo[c];
        acc += a >= b || b != b ? a : b;
    }
    return acc;
}

/* A summary element: mostly normal, some zeros of either sign, infinities, subnormals and
 * NaN (the summaries of hostile keys). */
static float summary_value(th_rng *r) {
    static const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, 1e-40f, -3e-39f, NAN};
    uint32_t u = th_u32(r) % 64;
    return u < 7 ? special[u] : th_normal(r) * 4.0f;
}

/* The same as f16 bits, raw: subnormals of every size, signalling and payload NaNs. */
static uint16_t summary_bits(th_rng *r) {
    static const uint16_t special[] = {0x0000, 0x8000, 0x7c00, 0xfc00, 0x7c01, 0xfe55, 0x0001,
                                       0x83ff};
    uint32_t u = th_u32(r) % 64;
    if (u < 8)
        return special[u];
    if (u < 16) /* a random subnormal of either sign */
        return (uint16_t)((th_u32(r) & 0x83ffu) | 1u);
    return fkv_f32_to_f16_down(th_normal(r) * 4.0f);
}

/* Every level's scores are the definition bit for bit (a NaN as a NaN, expect_same_bits),
 * f32 and f16 summaries, on head sizes (up to FKV_CPU_MAX_HEAD_DIM), groups and page counts
 * around the tile's width, the levels' vector widths and an item's range of pages, on one
 * thread and on three. */
Test(cpu_ops, scores_are_the_definition_bit_for_bit) {
    static const uint32_t geoms[][3] = {{1, 1, 1},   {3, 2, 31},  {8, 4, 32},   {24, 5, 33},
                                        {64, 4, 70},  {130, 8, 9}, {5, 3, 65},   {16, 9, 40},
                                        {1024, 3, 33}, {8, 4, 2100}};
    static const fkv_summary_format formats[] = {FKV_SUMMARY_F32, FKV_SUMMARY_F16};
    th_rng r;
    th_seed(&r, 11);
    cpu_pool *pools[2] = {NULL, NULL};
    cr_assert_eq(cpu_pool_create(3, 0, &pools[1]), FKV_OK);
    for (size_t gi = 0; gi < sizeof geoms / sizeof *geoms; gi++)
        for (size_t fi = 0; fi < 2; fi++) {
            fkv_kv_geom g = {.n_kv_heads = 2, .group = geoms[gi][1], .head_dim = geoms[gi][0],
                             .page_size = 16, .dtype = FKV_F32, .summary_format = formats[fi]};
            uint32_t pages = geoms[gi][2], n_seqs = 2;
            size_t d = g.head_dim, n_q_heads = 2 * (size_t)g.group;
            size_t n_sum = pages + 3, elems = n_sum * 2 * 2 * d;
            size_t out_len = n_seqs * n_q_heads * pages;
            float *q = rand_f32(&r, n_seqs * n_q_heads * d, 1.0f), *vals = tmalloc(elems * 4);
            void *sums = tmalloc(fkv_summary_bytes(&g) * n_sum);
            for (size_t i = 0; i < elems; i++) {
                if (formats[fi] == FKV_SUMMARY_F16) {
                    uint16_t h = summary_bits(&r);
                    ((uint16_t *)sums)[i] = h;
                    vals[i] = fkv_f16_to_f32(h);
                } else {
                    vals[i] = ((float *)sums)[i] = summary_value(&r);
                }
            }
            /* sequence b scores pages [b, b + pages) with query row 1 - b */
            int32_t desc[2 * FKV_SCORES_DESC_INTS];
            float *want = tmalloc(out_len * 4), *got = tmalloc(out_len * 4);
            for (uint32_t b = 0; b < n_seqs; b++) {
                int32_t *db = desc + FKV_SCORES_DESC_INTS * b;
                db[0] = (int32_t)b;
                db[1] = (int32_t)pages;
                db[2] = (int32_t)(b * n_q_heads * pages);
                db[3] = (int32_t)(1 - b);
                for (size_t h = 0; h < n_q_heads; h++)
                    for (uint32_t j = 0; j < pages; j++) {
                        const float *lo = vals + ((b + j) * 2 + h / g.group) * 2 * d;
                        want[db[2] + h * pages + j] =
                            defined_score(q + ((1 - b) * n_q_heads + h) * d, lo, lo + d, d);
                    }
            }
            for (size_t li = 0; li < sizeof isa_levels / sizeof *isa_levels; li++) {
                if (!cpu_isa_available(isa_levels[li]))
                    continue;
                for (int pi = 0; pi < 2; pi++) {
                    memset(got, 0xA5, out_len * 4);
                    cr_assert_eq(cpu_scores(&g, q, n_seqs, n_seqs, desc, NULL, sums, n_sum, got,
                                            out_len, isa_levels[li], pools[pi]),
                                 FKV_OK, "%s", fkv_last_error());
                    char what[80];
                    snprintf(what, sizeof what, "scores d %zu group %u pages %u format %zu pool %d",
                             d, g.group, pages, fi, pi);
                    expect_same_bits(got, want, out_len, what, isa_levels[li], 1);
                }
            }
        }
    cpu_pool_destroy(pools[1]);
}

/* ---- the pool of threads (cpu_pool.h) ---- */

/* A command shares its items only when its spans are disjoint (touching is disjoint). */
Test(cpu_pool, overlapping_spans_keep_a_command_on_one_thread) {
    cpu_pool *pool = NULL;
    cr_assert_eq(cpu_pool_create(2, 0, &pool), FKV_OK);
    char buf[100];
    cpu_span apart[] = {cpu_span_of(buf + 50, 50), cpu_span_of(buf, 50),
                        cpu_span_of(buf + 10, 0)};
    cr_assert_eq(cpu_pool_for(pool, apart, 3), pool);
    cpu_span overlap[] = {cpu_span_of(buf + 60, 40), cpu_span_of(buf, 10),
                          cpu_span_of(buf + 5, 56)};
    cr_assert_null(cpu_pool_for(pool, overlap, 3));
    cr_assert_null(cpu_pool_for(pool, NULL, 3));
    cr_assert_null(cpu_pool_for(NULL, apart, 3));
    cpu_pool_destroy(pool);
}

typedef struct pool_probe {
    _Atomic int *runs;      /* per item */
    _Atomic int *by_worker; /* items per worker */
    size_t fail_from;       /* items >= this fail */
} pool_probe;

static fkv_status probe_item(void *ctx, uint32_t worker, size_t item) {
    pool_probe *p = ctx;
    atomic_fetch_add(&p->runs[item], 1);
    atomic_fetch_add(&p->by_worker[worker], 1);
    if (item >= p->fail_from)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "probe item %zu failed", item);
    return FKV_OK;
}

/* Every item runs once on a worker below the width; a failure reports the lowest failing
 * item's message on the calling thread after all items ran. */
Test(cpu_pool, every_item_once_and_the_lowest_failure) {
    for (uint32_t width = 1; width <= 4; width++) {
        cpu_pool *pool = NULL;
        cr_assert_eq(cpu_pool_create(width, 0, &pool), FKV_OK);
        cr_assert_eq(cpu_pool_width(pool), width);
        for (int round = 0; round < 20; round++) {
            size_t n = (size_t)round * 7 % 50, fail_from = round % 3 == 0 ? n / 2 : SIZE_MAX;
            _Atomic int runs[50] = {0}, by_worker[4] = {0};
            pool_probe p = {runs, by_worker, fail_from};
            fkv_status st = cpu_pool_run(pool, n, 1, probe_item, &p);
            for (size_t i = 0; i < n; i++)
                cr_assert_eq(atomic_load(&runs[i]), 1, "width %u item %zu", width, i);
            int total = 0;
            for (uint32_t w = 0; w < 4; w++) {
                total += atomic_load(&by_worker[w]);
                if (w >= width)
                    cr_assert_eq(atomic_load(&by_worker[w]), 0);
            }
            cr_assert_eq(total, (int)n);
            if (fail_from < n) {
                char want[64];
                snprintf(want, sizeof want, "probe item %zu failed", fail_from);
                cr_assert_eq(st, FKV_ERR_INVALID_ARGUMENT);
                cr_assert(strstr(fkv_last_error(), want), "%s", fkv_last_error());
            } else {
                cr_assert_eq(st, FKV_OK, "%s", fkv_last_error());
            }
        }
        cpu_pool_destroy(pool);
    }
    cr_assert_eq(cpu_pool_width(NULL), 1);
}

/* A command below the pool's min_work runs on the calling thread alone. */
Test(cpu_pool, small_commands_stay_on_the_caller) {
    cpu_pool *pool = NULL;
    cr_assert_eq(cpu_pool_create(3, 100, &pool), FKV_OK);
    _Atomic int runs[50] = {0}, by_worker[4] = {0};
    pool_probe p = {runs, by_worker, SIZE_MAX};
    for (int k = 0; k < 20; k++)
        cr_assert_eq(cpu_pool_run(pool, 50, 99, probe_item, &p), FKV_OK);
    cr_assert_eq(atomic_load(&by_worker[0]), 20 * 50);
    for (size_t i = 0; i < 50; i++)
        cr_assert_eq(atomic_load(&runs[i]), 20);
    cpu_pool_destroy(pool);
}

/* Two threads running commands on one pool at once: one gets the helpers, the other runs
 * its items alone; both complete every item. */
typedef struct pool_user {
    cpu_pool *pool;
    _Atomic int runs[4];
    _Atomic int by_worker[3];
    fkv_status st;
} pool_user;

static void *pool_user_main(void *arg) {
    pool_user *u = arg;
    pool_probe p = {u->runs, u->by_worker, SIZE_MAX};
    for (int k = 0; k < 50 && u->st == FKV_OK; k++)
        u->st = cpu_pool_run(u->pool, 4, 1, probe_item, &p);
    return NULL;
}

Test(cpu_pool, two_commands_at_once) {
    cpu_pool *pool = NULL;
    cr_assert_eq(cpu_pool_create(3, 0, &pool), FKV_OK);
    static pool_user users[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        memset(&users[i], 0, sizeof users[i]);
        users[i].pool = pool;
        cr_assert_eq(pthread_create(&t[i], NULL, pool_user_main, &users[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(users[i].st, FKV_OK);
        for (int k = 0; k < 4; k++)
            cr_assert_eq(atomic_load(&users[i].runs[k]), 50);
    }
    cpu_pool_destroy(pool);
}

#ifdef __linux__
#include <sched.h>
#include <time.h>

/* FREEKV_CPU_THREADS=auto counts the CPUs the thread may run on, not the online ones. */
Test(cpu_pool, usable_cpus_follow_the_affinity) {
    cpu_set_t all, one;
    cr_assert_eq(sched_getaffinity(0, sizeof all, &all), 0);
    cr_assert_eq(cpu_usable_cpus(), (uint32_t)CPU_COUNT(&all));
    int first = 0;
    while (!CPU_ISSET(first, &all))
        first++;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    cr_assert_eq(sched_setaffinity(0, sizeof one, &one), 0);
    cr_assert_eq(cpu_usable_cpus(), 1);
    cr_assert_eq(sched_setaffinity(0, sizeof all, &all), 0);
}

/* Each helper records the CPUs it may run on while it runs an item. */
typedef struct affinity_probe {
    cpu_set_t seen[3];
    _Atomic int ran[3];
} affinity_probe;

static fkv_status affinity_item(void *ctx, uint32_t worker, size_t item) {
    (void)item;
    affinity_probe *p = ctx;
    if (worker > 0 && atomic_fetch_add(&p->ran[worker], 1) == 0)
        sched_getaffinity(0, sizeof p->seen[worker], &p->seen[worker]);
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL); /* long enough for the helpers to join */
    return FKV_OK;
}

/* The helpers run on every CPU of the pool's set but the poster's, and follow it when it
 * moves (cpu_pool.c: Linux would wake them onto the poster's CPU). */
Test(cpu_pool, helpers_are_kept_off_the_posters_cpu) {
    cpu_set_t all;
    cr_assert_eq(sched_getaffinity(0, sizeof all, &all), 0);
    if (CPU_COUNT(&all) < 2)
        cr_skip_test("one CPU: nowhere to keep the helpers");
    cpu_pool *pool = NULL;
    cr_assert_eq(cpu_pool_create(3, 0, &pool), FKV_OK);
    for (int cpu = 0, posts = 0; cpu < CPU_SETSIZE && posts < 2; cpu++) {
        if (!CPU_ISSET(cpu, &all))
            continue;
        posts++;
        cpu_set_t poster, want = all;
        CPU_ZERO(&poster);
        CPU_SET(cpu, &poster);
        CPU_CLR(cpu, &want);
        cr_assert_eq(sched_setaffinity(0, sizeof poster, &poster), 0);
        /* each poster's CPU checked on a helper that ran: a few tries, should none join */
        int joined = 0;
        for (int tries = 0; tries < 10 && !joined; tries++) {
            static affinity_probe p;
            memset(&p, 0, sizeof p);
            cr_assert_eq(cpu_pool_run(pool, 20, 1, affinity_item, &p), FKV_OK);
            for (int w = 1; w < 3; w++) {
                if (atomic_load(&p.ran[w]) == 0)
                    continue;
                joined++;
                cr_assert(CPU_EQUAL(&p.seen[w], &want),
                          "helper %d may run on the poster's CPU %d", w, cpu);
            }
        }
        cr_assert_gt(joined, 0, "no helper ran an item of 20 1-ms items, 10 times (CPU %d)", cpu);
    }
    cr_assert_eq(sched_setaffinity(0, sizeof all, &all), 0);
    cpu_pool_destroy(pool);
}
#endif

Test(cpu_env, device_memory_limit) {
    setenv("FREEKV_CPU_DEVICE_MEMORY", "1K", 1);
    open_cpu();
    fkv_device_info info;
    cr_assert_eq(fkv_op_opened_info(dev, &info), FKV_OK);
    cr_assert_eq(info.memory_bytes, 1024);
    fkv_bbuf *a = NULL, *b = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(dev, 1 << 20, &b), FKV_ERR_OUT_OF_DEVICE_MEMORY);
    cr_assert_null(b);
    cr_assert_eq(fkv_op_buffer_alloc(dev, 1000, &a), FKV_OK);
    cr_assert_eq(fkv_op_buffer_alloc(dev, 100, &b), FKV_ERR_OUT_OF_DEVICE_MEMORY);
    cr_assert_eq(fkv_op_buffer_alloc(dev, 24, &b), FKV_OK);
    fkv_op_buffer_free(dev, a);
    cr_assert_eq(fkv_op_buffer_alloc(dev, 1000, &a), FKV_OK, "freed memory is available again");
    fkv_op_buffer_free(dev, a);
    fkv_op_buffer_free(dev, b);
    fkv_device_close(dev);
    dev = NULL;
    /* through the public API */
    fkv_device *d = NULL;
    fkv_buffer *buf = NULL;
    cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_buffer_alloc(d, 4096, &buf), FKV_ERR_OUT_OF_DEVICE_MEMORY);
    cr_assert_null(buf);
    fkv_device_close(d);
}

/* The bytes the context needs, from its refusal on a device of 1 byte ("needs N bytes"). */
static unsigned long long context_need(fkv_summary_format format) {
    fkv_config cfg;
    fkv_config_init(&cfg);
    cfg.n_layers = 2;
    cfg.n_q_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.head_dim = 64;
    cfg.page_size = 16;
    cfg.sink_tokens = 16;
    cfg.window_tokens = 32;
    cfg.budget_tokens = 128;
    cfg.max_context = 4096;
    cfg.policy = FKV_POLICY_QUEST;
    cfg.summary_format = format;
    fkv_device *d = NULL;
    fkv_context *ctx = NULL;
    cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_context_create(d, &cfg, &ctx), FKV_ERR_OUT_OF_DEVICE_MEMORY);
    unsigned long long need = 0;
    const char *at = strstr(fkv_last_error(), "needs ");
    cr_assert(at && sscanf(at, "needs %llu", &need) == 1, "%s", fkv_last_error());
    fkv_device_close(d);
    return need;
}

/* The context's memory accounting sizes the summary pool from the format: f16 saves half of
 * it, 2 layers x 256 pages x 2 KV heads x [min|max] x 64 channels x 2 bytes. */
Test(cpu_env, f16_summaries_halve_the_summary_pool) {
    setenv("FREEKV_CPU_DEVICE_MEMORY", "1", 1);
    unsigned long long f32 = context_need(FKV_SUMMARY_F32), f16 = context_need(FKV_SUMMARY_F16);
    cr_assert_eq(f32 - f16, 2ull * 256 * 2 * 2 * 64 * 2, "f32 %llu, f16 %llu bytes", f32, f16);
}

Test(cpu_env, host_memory_limit) {
    setenv("FREEKV_CPU_HOST_MEMORY", "64k", 1);
    open_cpu();
    fkv_bhost *h = NULL, *h2 = NULL;
    void *p = NULL;
    cr_assert_eq(fkv_op_host_alloc(dev, 1 << 20, &h, &p), FKV_ERR_OUT_OF_HOST_MEMORY);
    cr_assert_null(h);
    cr_assert_eq(fkv_op_host_alloc(dev, 60 << 10, &h, &p), FKV_OK);
    cr_assert_eq(fkv_op_host_alloc(dev, 8 << 10, &h2, &p), FKV_ERR_OUT_OF_HOST_MEMORY);
    fkv_op_host_free(dev, h);
    cr_assert_eq(fkv_op_host_alloc(dev, 8 << 10, &h2, &p), FKV_OK);
    fkv_op_host_free(dev, h2);
    /* device memory is not limited by the host limit */
    fkv_bbuf *b = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(dev, 1 << 20, &b), FKV_OK);
    fkv_op_buffer_free(dev, b);
}

Test(cpu_env, bad_memory_values) {
    static const char *const bad[] = {"12Q", "-5", "0", "1KK", "K", "64 M", "99999999999999999999"};
    ops = fkv_backend_cpu();
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        fkv_device *b = NULL;
        setenv("FREEKV_CPU_DEVICE_MEMORY", bad[i], 1);
        cr_assert_eq(fkv_device_open_ops(ops, 0, &b), FKV_ERR_BAD_ENVIRONMENT, "'%s' accepted",
                     bad[i]);
        cr_assert_null(b);
        cr_assert(strstr(fkv_last_error(), "FREEKV_CPU_DEVICE_MEMORY") != NULL);
    }
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
    setenv("FREEKV_CPU_HOST_MEMORY", "2X", 1);
    fkv_device *b = NULL;
    cr_assert_eq(fkv_device_open_ops(ops, 0, &b), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert(strstr(fkv_last_error(), "FREEKV_CPU_HOST_MEMORY") != NULL);
    /* an empty value means unset; G is accepted */
    setenv("FREEKV_CPU_HOST_MEMORY", "", 1);
    setenv("FREEKV_CPU_DEVICE_MEMORY", "3G", 1);
    open_cpu();
    fkv_device_info info;
    cr_assert_eq(fkv_op_opened_info(dev, &info), FKV_OK);
    cr_assert_eq(info.memory_bytes, 3ull << 30);
}

/* ---- pools whose element offsets pass 2^31 and 2^32 ----
 * Row and slot indices are int32 (the core refuses geometries where they do not fit), but
 * element offsets computed from them (row * n_kv_heads * head_dim + ...) must be 64-bit in
 * every kernel. Two f16 pools of 2^17 + 3 slots of 2^15 elements (8 GiB each, mapped without
 * reserving memory: only the slots touched here become resident) are imported as device
 * memory, and every op works on slot 2^16 (first element 2^31) and the last slots (elements
 * past 2^32), checked against the pool bytes themselves. */

#include <sys/mman.h>

typedef struct big_pool {
    unsigned char *k, *v;
    size_t bytes;
} big_pool;

static void big_unmap(big_pool *bp) {
    if (bp->k)
        munmap(bp->k, bp->bytes);
    if (bp->v)
        munmap(bp->v, bp->bytes);
}

/* Element e of one (slot, token, head) row of a pool, as f32. */
static float pool_at(const unsigned char *pool, const fkv_kv_geom *g, size_t slot, size_t t,
                     size_t h, size_t c) {
    size_t e = ((slot * g->page_size + t) * g->n_kv_heads + h) * g->head_dim + c;
    return fkv_load(pool, g->dtype, e);
}

Test(cpu_ops, pools_beyond_32bit_element_offsets) {
    fkv_kv_geom g = {.n_kv_heads = 8, .group = 2,
            .head_dim = 128, .page_size = 32, .dtype = FKV_F16};
    size_t p = g.page_size, hk = g.n_kv_heads, d = g.head_dim, re = hk * d;
    size_t slot_elems = p * re; /* 2^15 */
    size_t n_slots = ((size_t)1 << 17) + 3;
    big_pool bp = {NULL, NULL, n_slots * slot_elems * 2};
    bp.k = mmap(NULL, bp.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                -1, 0);
    bp.v = mmap(NULL, bp.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                -1, 0);
    if (bp.k == MAP_FAILED || bp.v == MAP_FAILED) {
        bp.k = bp.k == MAP_FAILED ? NULL : bp.k;
        bp.v = bp.v == MAP_FAILED ? NULL : bp.v;
        big_unmap(&bp);
        cr_skip_test("cannot map two 8 GiB pools here");
    }
    fkv_bbuf *kp = NULL, *vp = NULL;
    cr_assert_eq(fkv_op_buffer_import(dev, bp.k, bp.bytes, &kp), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_buffer_import(dev, bp.v, bp.bytes, &vp), FKV_OK, "%s", fkv_last_error());
    size_t hi = n_slots - 1, mid = (size_t)1 << 16; /* first elements ~2^32 + 2^16, 2^31 */
    cr_assert_gt(hi * slot_elems, (size_t)UINT32_MAX);
    cr_assert_eq(mid * slot_elems, (size_t)1 << 31);
    th_rng r;
    th_seed(&r, 4242);

    /* append: every row of slots hi and mid */
    size_t n_rows = 2 * p;
    float *k = rand_stored(&r, n_rows * re, g.dtype), *v = rand_stored(&r, n_rows * re, g.dtype);
    int32_t *rows = tmalloc(n_rows * 4);
    for (size_t i = 0; i < n_rows; i++)
        rows[i] = (int32_t)((i < p ? hi : mid) * p + i % p);
    fkv_bbuf *kb = dfrom(k, 0, n_rows * re * 4), *vb = dfrom(v, 0, n_rows * re * 4);
    fkv_bbuf *rb = dfrom(rows, 0, n_rows * 4);
    RUN(fkv_op_append(dev, CQ, DONE, &g, kb, 0, vb, 0, (uint32_t)n_rows, rb, 0, kp, vp));
    for (size_t i = 0; i < n_rows; i++)
        for (size_t e = 0; e < re; e++) {
            size_t slot = i < p ? hi : mid, t = i % p, h = e / d, c = e % d;
            cr_assert_eq(pool_at(bp.k, &g, slot, t, h, c), k[i * re + e], "append K row %zu", i);
            cr_assert_eq(pool_at(bp.v, &g, slot, t, h, c), v[i * re + e], "append V row %zu", i);
        }

    /* summarize both pages */
    int32_t pages[4] = {(int32_t)hi, 0, (int32_t)mid, 1};
    fkv_bbuf *pg = dfrom(pages, 0, sizeof pages), *sm = dalloc(2 * re * 2 * 4);
    RUN(fkv_op_summarize(dev, CQ, DONE, &g, kp, 2, pg, 0, sm)); /* summaries start at byte 0 */
    float *summ = tmalloc(2 * re * 2 * 4);
    dread(sm, 0, summ, 2 * re * 2 * 4);
    for (size_t s = 0; s < 2; s++)
        for (size_t h = 0; h < hk; h++)
            for (size_t c = 0; c < d; c++) {
                float lo = INFINITY, hi_v = -INFINITY;
                for (size_t t = 0; t < p; t++) {
                    float x = pool_at(bp.k, &g, s ? mid : hi, t, h, c);
                    lo = fminf(lo, x);
                    hi_v = fmaxf(hi_v, x);
                }
                cr_assert_eq(summ[(s * hk + h) * 2 * d + c], lo, "summary %zu min", s);
                cr_assert_eq(summ[(s * hk + h) * 2 * d + d + c], hi_v, "summary %zu max", s);
            }

    /* pack_hnd both pages: [h][K|V][t][c] */
    int32_t gslots[2] = {(int32_t)hi, (int32_t)mid};
    size_t page_elems = 2 * p * re;
    fkv_bbuf *gs = dfrom(gslots, 0, sizeof gslots), *pk = dguarded(2 * page_elems * 2);
    RUN(fkv_op_pack_hnd(dev, CQ, DONE, &g, kp, vp, 2, gs, 0, pk, GUARD));
    unsigned char *packed = tmalloc(2 * page_elems * 2);
    dread(pk, GUARD, packed, 2 * page_elems * 2);
    for (size_t i = 0; i < 2; i++)
        for (size_t h = 0; h < hk; h++)
            for (size_t t = 0; t < p; t++)
                for (size_t c = 0; c < d; c++) {
                    size_t at = i * page_elems + ((h * 2) * p + t) * d + c;
                    cr_assert_eq(fkv_load(packed, g.dtype, at),
                                 pool_at(bp.k, &g, gslots[i], t, h, c), "pack K");
                    cr_assert_eq(fkv_load(packed, g.dtype, at + p * d),
                                 pool_at(bp.v, &g, gslots[i], t, h, c), "pack V");
                }

    /* scatter_hnd: the packed units of (hi, head 3) and (mid, head 0) into slots hi-1, mid+1 */
    size_t unit_elems = 2 * p * d;
    unsigned char *units_src = tmalloc(2 * unit_elems * 2);
    memcpy(units_src, packed + (3 * 2 * p * d) * 2, unit_elems * 2);
    memcpy(units_src + unit_elems * 2, packed + page_elems * 2, unit_elems * 2);
    int32_t units[4] = {(int32_t)(hi - 1), 3, (int32_t)(mid + 1), 0};
    fkv_bbuf *us = dfrom(units_src, 0, 2 * unit_elems * 2), *ui = dfrom(units, 0, sizeof units);
    RUN(fkv_op_scatter_hnd(dev, CQ, DONE, &g, us, 0, 2, ui, 0, kp, vp));
    for (size_t t = 0; t < p; t++)
        for (size_t c = 0; c < d; c++) {
            cr_assert_eq(pool_at(bp.k, &g, hi - 1, t, 3, c), pool_at(bp.k, &g, hi, t, 3, c));
            cr_assert_eq(pool_at(bp.v, &g, hi - 1, t, 3, c), pool_at(bp.v, &g, hi, t, 3, c));
            cr_assert_eq(pool_at(bp.k, &g, mid + 1, t, 0, c), pool_at(bp.k, &g, mid, t, 0, c));
            cr_assert_eq(pool_at(bp.v, &g, mid + 1, t, 0, c), pool_at(bp.v, &g, mid, t, 0, c));
        }

    /* recall_direct: the unit of (mid, head 5) from host memory into slot hi-2, head 5 */
    fkv_bhost *hm = NULL;
    void *hp = NULL;
    cr_assert_eq(fkv_op_host_alloc(dev, unit_elems * 2, &hm, &hp), FKV_OK, "%s", fkv_last_error());
    memcpy(hp, packed + page_elems * 2 + (5 * 2 * p * d) * 2, unit_elems * 2);
    fkv_direct_src off0 = {0};
    const fkv_bhost *hms[1] = {hm};
    int32_t unit2[4] = {(int32_t)(hi - 2), 5, 0, 0};
    fkv_bbuf *u2 = dfrom(unit2, 0, sizeof unit2);
    RUN(fkv_op_recall_direct(dev, CQ, DONE, &g, 1, hms, 1, &off0, u2, 0, kp, vp));
    for (size_t t = 0; t < p; t++)
        for (size_t c = 0; c < d; c++)
            cr_assert_eq(pool_at(bp.v, &g, hi - 2, t, 5, c), pool_at(bp.v, &g, mid, t, 5, c));
    fkv_op_host_free(dev, hm);

    /* attention: every KV head reads slot hi (all tokens) then slot mid (p - 3 tokens) */
    size_t hq = hk * g.group, n_tok = 2 * p - 3;
    float *q = rand_f32(&r, hq * d, 1.0f), scale = 1.0f / sqrtf((float)d);
    int32_t heads[16], entries[4] = {(int32_t)hi, (int32_t)p, (int32_t)mid, (int32_t)p - 3};
    for (size_t h = 0; h < hk; h++) {
        heads[2 * h] = 0;
        heads[2 * h + 1] = 2;
    }
    fkv_bbuf *qb = dfrom(q, 0, hq * d * 4), *hb = dfrom(heads, 0, sizeof heads);
    fkv_bbuf *eb = dfrom(entries, 0, sizeof entries), *ob = dguarded(hq * d * 4);
    RUN(fkv_op_attention(dev, CQ, DONE, &g, qb, 0, 1, hb, 0, eb, 0, kp, vp, scale, ob, GUARD));
    float *got = tmalloc(hq * d * 4), *kk = tmalloc(n_tok * d * 4), *vv = tmalloc(n_tok * d * 4);
    float ref[128];
    dread(ob, GUARD, got, hq * d * 4);
    for (size_t h = 0; h < hk; h++) {
        for (size_t i = 0; i < n_tok; i++)
            for (size_t c = 0; c < d; c++) {
                size_t slot = i < p ? hi : mid, t = i % p;
                kk[i * d + c] = pool_at(bp.k, &g, slot, t, h, c);
                vv[i * d + c] = pool_at(bp.v, &g, slot, t, h, c);
            }
        for (size_t gi = 0; gi < g.group; gi++) {
            size_t qh = h * g.group + gi;
            th_attention_ref(q + qh * d, kk, vv, n_tok, d, d, scale, ref);
            cr_assert_lt(th_rel_l2(got + qh * d, ref, d), 1e-5, "attention, query head %zu", qh);
        }
    }
    fkv_op_finish(dev, CQ);
    fkv_op_buffer_free(dev, kp); /* imports: the mapping stays ours (a failed assertion ends the
                                  forked test process, which drops both) */
    fkv_op_buffer_free(dev, vp);
    big_unmap(&bp);
}
