/* The CPU reference backend, op by op, against naive references written here.
 *
 * Every kernel runs for f32, f16 and bf16 storage over several geometries on random data;
 * references see the stored (dtype-rounded) values. Outputs sit between guard bytes that
 * must stay untouched. Also: index errors fail the event instead of crashing, queues order
 * across each other through events, and the environment variables of the backend (argument
 * checks are the dispatch layer's: tests/test_dispatch.c). Criterion forks per test, so each test
 * opens its own device. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "backends/device.h"
#include "common/dtype.h"
#include "helpers.h"

#define GUARD 64
#define GUARD_BYTE 0xA5
#define CQ FKV_QUEUE_COMPUTE
#define TQ FKV_QUEUE_TRANSFER
#define BQ FKV_QUEUE_BACKGROUND

typedef struct geo {
    uint32_t hk, group, d, p;
} geo;

static const geo geos[] = {
    {2, 1, 16, 4}, {2, 4, 64, 16}, {1, 4, 128, 32}, {3, 1, 128, 16}, {2, 4, 16, 32},
};
#define N_GEOS (sizeof geos / sizeof *geos)
static const fkv_dtype dtypes[] = {FKV_F32, FKV_F16, FKV_BF16};

/* ---- fixture: one device, and everything a test allocates freed at its end ---- */

static const fkv_backend_ops *ops;
static fkv_bdev *dev;
static fkv_bbuf *bufs[256];
static size_t n_bufs;
static void *mems[512];
static size_t n_mems;
static fkv_bevent *ev_last; /* the event of the last enqueue made with DONE */
#define DONE ((fkv_deps){0, NULL, &ev_last})

static void unset_env(void) {
    unsetenv("FREEKV_CPU_RECALL");
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
    unsetenv("FREEKV_CPU_HOST_MEMORY");
}

static void open_cpu(void) {
    ops = fkv_backend_cpu();
    cr_assert_not_null(ops);
    fkv_status st = ops->device_open(0, &dev);
    cr_assert_eq(st, FKV_OK, "device_open: %s", fkv_last_error());
}

static void setup(void) {
    unset_env();
    open_cpu();
}

static void teardown(void) {
    if (dev) {
        ops->finish(dev, CQ);
        ops->finish(dev, TQ);
        ops->finish(dev, BQ);
        for (size_t i = 0; i < n_bufs; i++)
            ops->buffer_free(dev, bufs[i]);
        ops->device_close(dev);
    }
    for (size_t i = 0; i < n_mems; i++)
        free(mems[i]);
    n_bufs = n_mems = 0;
    dev = NULL;
}

static void *tmalloc(size_t size) {
    cr_assert_lt(n_mems, sizeof mems / sizeof *mems);
    void *p = calloc(1, size ? size : 1);
    cr_assert_not_null(p);
    mems[n_mems++] = p;
    return p;
}

static void *tdup(const void *src, size_t size) { return memcpy(tmalloc(size), src, size); }

/* Waits for the last DONE event; the enqueue must have succeeded and the command too. */
static void wait_ok(fkv_status st, const char *what) {
    cr_assert_eq(st, FKV_OK, "%s enqueue: %s", what, fkv_last_error());
    cr_assert_not_null(ev_last, "%s: no event", what);
    fkv_status w = ops->event_wait(dev, 1, &ev_last);
    ops->event_release(dev, ev_last);
    ev_last = NULL;
    cr_assert_eq(w, FKV_OK, "%s: %s", what, fkv_last_error());
}
#define RUN(call) wait_ok((call), #call)

/* The enqueue succeeds but the command fails with INVALID_ARGUMENT naming `op`. */
static void wait_fails(fkv_status st, const char *op) {
    cr_assert_eq(st, FKV_OK, "%s enqueue: %s", op, fkv_last_error());
    fkv_status w = ops->event_wait(dev, 1, &ev_last);
    ops->event_release(dev, ev_last);
    ev_last = NULL;
    cr_assert_eq(w, FKV_ERR_INVALID_ARGUMENT, "%s: expected an execution error, got %d", op, w);
    cr_assert(strstr(fkv_last_error(), op) != NULL, "message '%s' does not name %s",
              fkv_last_error(), op);
}

static fkv_bbuf *dalloc(size_t size) {
    fkv_bbuf *b = NULL;
    cr_assert_eq(ops->buffer_alloc(dev, size, &b), FKV_OK, "buffer_alloc: %s", fkv_last_error());
    cr_assert_lt(n_bufs, sizeof bufs / sizeof *bufs);
    bufs[n_bufs++] = b;
    return b;
}

static void dwrite(fkv_bbuf *b, size_t off, const void *src, size_t size) {
    RUN(ops->write(dev, CQ, DONE, b, off, src, size));
}

static void dread(const fkv_bbuf *b, size_t off, void *dst, size_t size) {
    RUN(ops->read(dev, CQ, DONE, b, off, dst, size));
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

static void check_guards(const fkv_bbuf *b, size_t size) {
    unsigned char *all = tmalloc(size + 2 * GUARD);
    dread(b, 0, all, size + 2 * GUARD);
    for (size_t i = 0; i < GUARD; i++) {
        cr_assert_eq(all[i], GUARD_BYTE, "guard byte %zu before the output changed", i);
        cr_assert_eq(all[GUARD + size + i], GUARD_BYTE, "guard byte %zu after the output changed",
                     i);
    }
}

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

static float *decode(const void *x, size_t n, fkv_dtype t) {
    float *out = tmalloc(n * sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = fkv_load(x, t, i);
    return out;
}

/* A random permutation of 0..n-1. */
static int32_t *perm(th_rng *r, size_t n) {
    int32_t *a = tmalloc(n * sizeof *a);
    th_permutation(r, a, n);
    return a;
}

static fkv_kv_geom mk(geo g, fkv_dtype t) {
    fkv_kv_geom k = {g.hk, g.group, g.d, g.p, t};
    return k;
}

/* Reads a pool back as floats. */
static float *read_pool(const fkv_bbuf *b, size_t n, fkv_dtype t) {
    void *raw = tmalloc(n * fkv_dtype_size(t));
    dread(b, 0, raw, n * fkv_dtype_size(t));
    return decode(raw, n, t);
}

#define FOR_CASES                                                          \
    for (size_t ti = 0; ti < 3; ti++)                                      \
        for (size_t gi = 0; gi < N_GEOS; gi++)

#define CASE_FMT "dtype %s, Hk %u, group %u, d %u, p %u"
#define CASE_ARGS fkv_dtype_name(dtypes[ti]), geos[gi].hk, geos[gi].group, geos[gi].d, geos[gi].p

TestSuite(cpu_ops, .init = setup, .fini = teardown);

/* ---- device, public API, copies ---- */

Test(cpu_ops, device_info_and_table) {
    const uint32_t caps = FKV_CAP_ASYNC_COPY | FKV_CAP_DEVICE_WAIT | FKV_CAP_PINNED_HOST |
                          FKV_CAP_FP16_STORAGE | FKV_CAP_SEPARATE_TRANSFER_QUEUE |
                          FKV_CAP_MULTI_REGION_COPY;
    uint32_t n = 0;
    fkv_device_info info;
    cr_assert_eq(fkv_backend_check(ops), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(ops->abi_version, FKV_BACKEND_ABI_VERSION);
    cr_assert_eq(ops->struct_size, sizeof(fkv_backend_ops));
    cr_assert_str_eq(ops->name, "cpu");
    cr_assert(ops->buffer_import && ops->write_regions && ops->attention_dense &&
              ops->recall_direct && ops->recall_mode && ops->opened_info);
    cr_assert_eq(ops->device_count(&n), FKV_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(ops->device_info(0, &info), FKV_OK);
    cr_assert_str_eq(info.name, "freekv CPU reference");
    cr_assert_eq(info.type, FKV_DEVICE_REFERENCE);
    cr_assert_gt(info.memory_bytes, 0);
    cr_assert_eq(info.caps, caps);
    cr_assert_eq(ops->device_info(1, &info), FKV_ERR_NO_DEVICE);
    cr_assert_eq(ops->opened_info(dev, &info), FKV_OK);
    cr_assert_eq(info.caps, caps, "no zero-copy unless the recall mode is direct");
    cr_assert_eq(ops->recall_mode(dev), FKV_RECALL_STAGED);
    fkv_bdev *other = NULL;
    cr_assert_eq(ops->device_open(1, &other), FKV_ERR_NO_DEVICE);
    cr_assert_null(other);
}

Test(cpu_ops, public_api) {
    fkv_device *d = NULL;
    fkv_device_info info;
    fkv_buffer *b = NULL;
    unsigned char src[1000], back[500];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)(i * 7 + 3);
    cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_device_get_info(d, &info), FKV_OK);
    cr_assert_str_eq(info.backend, "cpu");
    cr_assert_str_eq(info.name, "freekv CPU reference");
    cr_assert_eq(info.type, FKV_DEVICE_REFERENCE);
    cr_assert_eq(fkv_buffer_alloc(d, sizeof src, &b), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_buffer_write(b, 0, src, sizeof src), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_buffer_read(b, 250, back, sizeof back), FKV_OK, "%s", fkv_last_error());
    cr_assert_arr_eq(back, src + 250, sizeof back);
    fkv_buffer_release(b);
    fkv_device_close(d);
}

Test(cpu_ops, copies) {
    th_rng r;
    th_seed(&r, 11);
    size_t n = 4096;
    unsigned char *src = tmalloc(n), *back = tmalloc(n), *expect = tmalloc(n);
    for (size_t i = 0; i < n; i++)
        src[i] = (unsigned char)th_u32(&r);
    fkv_bbuf *a = dguarded(n);
    RUN(ops->write(dev, TQ, DONE, a, GUARD, src, n));
    check_guards(a, n);
    RUN(ops->read(dev, TQ, DONE, a, GUARD, back, n));
    cr_assert_arr_eq(back, src, n);

    fkv_bbuf *b = dguarded(n / 2);
    RUN(ops->copy(dev, BQ, DONE, b, GUARD, a, GUARD + 100, n / 2));
    check_guards(b, n / 2);
    dread(b, GUARD, back, n / 2);
    cr_assert_arr_eq(back, src + 100, n / 2);

    /* Overlapping ranges of one buffer copy like memmove. */
    memcpy(expect, src, n);
    memmove(expect + 10, expect, 1000);
    RUN(ops->copy(dev, CQ, DONE, a, GUARD + 10, a, GUARD, 1000));
    dread(a, GUARD, back, n);
    cr_assert_arr_eq(back, expect, n);
    check_guards(a, n);
}

Test(cpu_ops, write_regions) {
    th_rng r;
    th_seed(&r, 12);
    const size_t payload = 2000;
    fkv_bbuf *dst = dguarded(payload);
    unsigned char *expect = tmalloc(payload + 2 * GUARD), *back = tmalloc(payload + 2 * GUARD);
    memset(expect, GUARD_BYTE, payload + 2 * GUARD);
    fkv_copy_region regions[5];
    for (size_t i = 0; i < 5; i++) {
        size_t size = 100 + i * 37, off = GUARD + i * 300 + (i % 3) * 7;
        unsigned char *src = tmalloc(size);
        for (size_t j = 0; j < size; j++)
            src[j] = (unsigned char)th_u32(&r);
        regions[i] = (fkv_copy_region){src, off, size};
        memcpy(expect + off, src, size);
    }
    fkv_status st = ops->write_regions(dev, TQ, DONE, dst, 5, regions);
    memset(regions, 0, sizeof regions); /* the region list itself is not needed after the call */
    RUN(st);
    dread(dst, 0, back, payload + 2 * GUARD);
    cr_assert_arr_eq(back, expect, payload + 2 * GUARD);
}

Test(cpu_ops, import_uses_caller_memory) {
    float host[64];
    float src[16];
    for (int i = 0; i < 64; i++)
        host[i] = -1.0f;
    for (int i = 0; i < 16; i++)
        src[i] = (float)i;
    fkv_bbuf *b = NULL;
    cr_assert_eq(ops->buffer_import(dev, host, sizeof host, &b), FKV_OK, "%s", fkv_last_error());
    RUN(ops->write(dev, CQ, DONE, b, 8 * sizeof(float), src, sizeof src));
    for (int i = 0; i < 64; i++)
        cr_assert_eq(host[i], (i >= 8 && i < 24) ? (float)(i - 8) : -1.0f, "host[%d]", i);
    ops->buffer_free(dev, b); /* must not free host[] (ASan would report it) */
}

Test(cpu_ops, host_alloc_aligned) {
    fkv_bhost *h = NULL;
    void *p = NULL;
    cr_assert_eq(ops->host_alloc(dev, 1000, &h, &p), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq((uintptr_t)p % 64, 0);
    memset(p, 1, 1000);
    ops->host_free(dev, h);
}

/* ---- kernels against naive references ---- */

Test(cpu_ops, append) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 100 + ti * 10 + gi);
        fkv_dtype t = dtypes[ti];
        fkv_kv_geom g = mk(geos[gi], t);
        size_t re = (size_t)g.n_kv_heads * g.head_dim, rows = 3 * (size_t)g.page_size;
        uint32_t n = rows < 7 ? (uint32_t)rows : 7;
        float *k0 = rand_stored(&r, rows * re, t), *v0 = rand_stored(&r, rows * re, t);
        fkv_bbuf *kp = dfrom(encode(k0, rows * re, t), 0, rows * re * fkv_dtype_size(t));
        fkv_bbuf *vp = dfrom(encode(v0, rows * re, t), 0, rows * re * fkv_dtype_size(t));
        int32_t *idx = perm(&r, rows);
        float *ks = rand_f32(&r, n * re, 1.0f), *vs = rand_f32(&r, n * re, 1.0f);
        fkv_bbuf *ksb = dfrom(ks, 16, n * re * 4), *vsb = dfrom(vs, 32, n * re * 4);
        fkv_bbuf *rows_b = dfrom(idx, 8, n * 4);
        RUN(ops->append(dev, CQ, DONE, &g, ksb, 16, vsb, 32, n, rows_b, 8, kp, vp));

        float *ke = tdup(k0, rows * re * 4), *ve = tdup(v0, rows * re * 4);
        for (uint32_t i = 0; i < n; i++) {
            memcpy(ke + idx[i] * re, ks + i * re, re * 4);
            memcpy(ve + idx[i] * re, vs + i * re, re * 4);
        }
        th_round_dtype(ke, rows * re, t);
        th_round_dtype(ve, rows * re, t);
        float *kg = read_pool(kp, rows * re, t), *vg = read_pool(vp, rows * re, t);
        cr_assert_arr_eq(kg, ke, rows * re * 4, "append K, " CASE_FMT, CASE_ARGS);
        cr_assert_arr_eq(vg, ve, rows * re * 4, "append V, " CASE_FMT, CASE_ARGS);
    }
}

Test(cpu_ops, summarize) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 200 + ti * 10 + gi);
        fkv_dtype t = dtypes[ti];
        fkv_kv_geom g = mk(geos[gi], t);
        size_t d = g.head_dim, p = g.page_size, hk = g.n_kv_heads, re = hk * d;
        size_t slots = 4, rows = slots * p, n_sum = 5, sum_elems = hk * 2 * d;
        float *k0 = rand_stored(&r, rows * re, t);
        fkv_bbuf *kp = dfrom(encode(k0, rows * re, t), 0, rows * re * fkv_dtype_size(t));
        int32_t pages[6] = {3, 4, 0, 1, 2, 0}; /* (gslot, summary) */
        fkv_bbuf *pages_b = dfrom(pages, 12, sizeof pages);
        /* summaries start as a sentinel; the trailing GUARD bytes of dfrom are a partial
         * summary that must stay untouched too */
        float *sent = tmalloc(n_sum * sum_elems * 4);
        for (size_t i = 0; i < n_sum * sum_elems; i++)
            sent[i] = 12345.0f;
        fkv_bbuf *sums = dfrom(sent, 0, n_sum * sum_elems * 4);
        RUN(ops->summarize(dev, BQ, DONE, &g, kp, 3, pages_b, 12, sums));

        float *expect = tdup(sent, n_sum * sum_elems * 4);
        for (int i = 0; i < 3; i++) {
            size_t slot = (size_t)pages[2 * i], s = (size_t)pages[2 * i + 1];
            for (size_t h = 0; h < hk; h++)
                for (size_t c = 0; c < d; c++) {
                    float lo = INFINITY, hi = -INFINITY;
                    for (size_t tok = 0; tok < p; tok++) {
                        float x = k0[(slot * p + tok) * re + h * d + c];
                        lo = x < lo ? x : lo;
                        hi = x > hi ? x : hi;
                    }
                    expect[(s * hk + h) * 2 * d + c] = lo;
                    expect[(s * hk + h) * 2 * d + d + c] = hi;
                }
        }
        float *got = tmalloc(n_sum * sum_elems * 4);
        unsigned char tail[GUARD];
        dread(sums, 0, got, n_sum * sum_elems * 4);
        dread(sums, n_sum * sum_elems * 4, tail, GUARD);
        cr_assert_arr_eq(got, expect, n_sum * sum_elems * 4, "summaries, " CASE_FMT, CASE_ARGS);
        for (size_t i = 0; i < GUARD; i++)
            cr_assert_eq(tail[i], GUARD_BYTE);
    }
}

Test(cpu_ops, scores) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 300 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]); /* summaries are f32 whatever the dtype */
        size_t d = g.head_dim, hk = g.n_kv_heads, hq = hk * g.group, n_sum = 7;
        float *sums = rand_f32(&r, n_sum * hk * 2 * d, 1.0f);
        for (size_t i = 0; i < n_sum * hk; i++) /* min <= max, as summaries are */
            for (size_t c = 0; c < d; c++) {
                float *mn = sums + i * 2 * d + c, *mx = mn + d;
                if (*mn > *mx) {
                    float tmp = *mn;
                    *mn = *mx;
                    *mx = tmp;
                }
            }
        uint32_t n_seqs = 2;
        float *q = rand_f32(&r, n_seqs * hq * d, 1.0f);
        /* seq 0: summaries [0,4) at 0; seq 1: [2,5) after a gap of 5 that stays untouched */
        int32_t desc[6] = {0, 4, 0, 2, 3, (int32_t)(hq * 4 + 5)};
        size_t out_len = hq * 4 + 5 + hq * 3;
        fkv_bbuf *sb = dfrom(sums, 0, n_sum * hk * 2 * d * 4);
        fkv_bbuf *qb = dfrom(q, 4, n_seqs * hq * d * 4);
        fkv_bbuf *db = dfrom(desc, 0, sizeof desc);
        fkv_bbuf *out = dguarded(out_len * 4);
        RUN(ops->scores(dev, CQ, DONE, &g, qb, 4, n_seqs, db, 0, sb, out, GUARD));
        float *got = tmalloc(out_len * 4);
        dread(out, GUARD, got, out_len * 4);
        check_guards(out, out_len * 4);
        for (uint32_t b = 0; b < n_seqs; b++) {
            int32_t base = desc[3 * b], np = desc[3 * b + 1], ob = desc[3 * b + 2];
            for (size_t h = 0; h < hq; h++)
                for (int32_t j = 0; j < np; j++) {
                    const float *mn = sums + (((size_t)base + j) * hk + h / g.group) * 2 * d;
                    const float *qh = q + (b * hq + h) * d;
                    double ref = 0, mag = 0;
                    for (size_t c = 0; c < d; c++) {
                        double a = (double)qh[c] * mn[d + c], bb = (double)qh[c] * mn[c];
                        ref += a > bb ? a : bb;
                        mag += fabs(a) + fabs(bb);
                    }
                    float v = got[(size_t)ob + h * (size_t)np + (size_t)j];
                    cr_assert_leq(fabs(v - ref), 1e-6 * mag + 1e-6,
                                  "score seq %u head %zu page %d: %g vs %g, " CASE_FMT, b, h, j,
                                  v, ref, CASE_ARGS);
                }
        }
        unsigned char *gap = (unsigned char *)(got + hq * 4);
        for (size_t i = 0; i < 5 * 4; i++)
            cr_assert_eq(gap[i], GUARD_BYTE, "gap between sequences written");
    }
}

Test(cpu_ops, cosine_flags) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 400 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        size_t d = g.head_dim, hk = g.n_kv_heads, grp = g.group, hq = hk * grp;
        uint32_t n_seqs = 3;
        float tau = 0.5f;
        float *cur = rand_f32(&r, n_seqs * hq * d, 1.0f);
        float *prev = rand_f32(&r, n_seqs * hq * d, 1.0f);
        memcpy(prev, cur, hq * d * 4);                   /* seq 0: identical, cosine 1 */
        for (size_t c = 0; c < d; c++) {
            prev[(1 * hq + 0) * d + c] = 0.0f;            /* seq 1 head 0: zero norm */
            prev[(2 * hq + 0) * d + c] = -cur[(2 * hq + 0) * d + c]; /* cosine -1 */
        }
        for (size_t i = 1; i < grp && i < 3; i++) /* mix near-copies in the group */
            for (size_t c = 0; c < d; c++)
                prev[(2 * hq + i) * d + c] = cur[(2 * hq + i) * d + c] * 0.5f + 0.01f * (float)c;
        fkv_bbuf *cb = dfrom(cur, 0, n_seqs * hq * d * 4);
        fkv_bbuf *pb = dfrom(prev, 8, n_seqs * hq * d * 4);
        fkv_bbuf *sims = dguarded(n_seqs * hk * 4), *flags = dguarded(n_seqs * hk * 4);
        RUN(ops->cosine_flags(dev, BQ, DONE, &g, cb, 0, pb, 8, n_seqs, tau, sims, GUARD, flags,
                              GUARD));
        float *s = tmalloc(n_seqs * hk * 4);
        int32_t *f = tmalloc(n_seqs * hk * 4);
        dread(sims, GUARD, s, n_seqs * hk * 4);
        dread(flags, GUARD, f, n_seqs * hk * 4);
        check_guards(sims, n_seqs * hk * 4);
        check_guards(flags, n_seqs * hk * 4);
        for (uint32_t b = 0; b < n_seqs; b++)
            for (size_t h = 0; h < hk; h++) {
                double total = 0;
                for (size_t i = 0; i < grp; i++) {
                    const float *a = cur + (b * hq + h * grp + i) * d;
                    const float *c2 = prev + (b * hq + h * grp + i) * d;
                    double dot = 0, na = 0, nc = 0;
                    for (size_t c = 0; c < d; c++) {
                        dot += (double)a[c] * c2[c];
                        na += (double)a[c] * a[c];
                        nc += (double)c2[c] * c2[c];
                    }
                    total += (na > 0 && nc > 0) ? dot / sqrt(na * nc) : 0.0;
                }
                double ref = total / (double)grp;
                float got = s[b * hk + h];
                cr_assert_leq(fabs(got - ref), 2e-6, "sim seq %u head %zu: %g vs %g, " CASE_FMT,
                              b, h, got, ref, CASE_ARGS);
                cr_assert_eq(f[b * hk + h], got < tau ? 1 : 0, "flag seq %u head %zu", b, h);
                if (b == 0)
                    cr_assert_eq(f[b * hk + h], 0);
            }
    }
}

Test(cpu_ops, pack_hnd) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 500 + ti * 10 + gi);
        fkv_dtype t = dtypes[ti];
        fkv_kv_geom g = mk(geos[gi], t);
        size_t d = g.head_dim, p = g.page_size, hk = g.n_kv_heads, re = hk * d;
        size_t es = fkv_dtype_size(t);
        size_t slots = 5, rows = slots * p, page_elems = hk * 2 * p * d;
        float *k0 = rand_stored(&r, rows * re, t), *v0 = rand_stored(&r, rows * re, t);
        fkv_bbuf *kp = dfrom(encode(k0, rows * re, t), 0, rows * re * es);
        fkv_bbuf *vp = dfrom(encode(v0, rows * re, t), 0, rows * re * es);
        int32_t gslots[3] = {3, 0, 4};
        fkv_bbuf *gb = dfrom(gslots, 4, sizeof gslots);
        fkv_bbuf *dst = dguarded(3 * page_elems * es);
        RUN(ops->pack_hnd(dev, CQ, DONE, &g, kp, vp, 3, gb, 4, dst, GUARD));
        check_guards(dst, 3 * page_elems * es);
        void *raw = tmalloc(3 * page_elems * es);
        dread(dst, GUARD, raw, 3 * page_elems * es);
        float *got = decode(raw, 3 * page_elems, t);
        for (size_t i = 0; i < 3; i++)
            for (size_t h = 0; h < hk; h++)
                for (size_t tok = 0; tok < p; tok++)
                    for (size_t c = 0; c < d; c++) {
                        size_t src = ((size_t)gslots[i] * p + tok) * re + h * d + c;
                        size_t kd = i * page_elems + ((h * 2 + 0) * p + tok) * d + c;
                        size_t vd = i * page_elems + ((h * 2 + 1) * p + tok) * d + c;
                        cr_assert_eq(got[kd], k0[src], "K page %zu head %zu tok %zu, " CASE_FMT,
                                     i, h, tok, CASE_ARGS);
                        cr_assert_eq(got[vd], v0[src], "V page %zu head %zu tok %zu, " CASE_FMT,
                                     i, h, tok, CASE_ARGS);
                    }
    }
}

/* Expected pools after writing HND units (floats) into (slot, head) pairs. */
static void apply_units(const fkv_kv_geom *g, float *k, float *v, const float *unit_data,
                        const int32_t *units, uint32_t n) {
    size_t d = g->head_dim, p = g->page_size, re = (size_t)g->n_kv_heads * d;
    for (uint32_t i = 0; i < n; i++)
        for (size_t tok = 0; tok < p; tok++)
            for (size_t c = 0; c < d; c++) {
                size_t slot = (size_t)units[2 * i], head = (size_t)units[2 * i + 1];
                size_t dst = (slot * p + tok) * re + head * d + c;
                k[dst] = unit_data[(i * 2 + 0) * p * d + tok * d + c];
                v[dst] = unit_data[(i * 2 + 1) * p * d + tok * d + c];
            }
}

/* Up to n distinct (slot, head) pairs of a pool of `slots` slots. */
static int32_t *rand_units(th_rng *r, const fkv_kv_geom *g, size_t slots, uint32_t n) {
    int32_t *order = perm(r, slots * g->n_kv_heads), *units = tmalloc(2 * n * 4);
    for (uint32_t i = 0; i < n; i++) {
        units[2 * i] = order[i] / (int32_t)g->n_kv_heads;
        units[2 * i + 1] = order[i] % (int32_t)g->n_kv_heads;
    }
    return units;
}

Test(cpu_ops, scatter_hnd) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 600 + ti * 10 + gi);
        fkv_dtype t = dtypes[ti];
        fkv_kv_geom g = mk(geos[gi], t);
        size_t d = g.head_dim, p = g.page_size, hk = g.n_kv_heads, re = hk * d;
        size_t es = fkv_dtype_size(t);
        size_t slots = 4, rows = slots * p, unit_elems = 2 * p * d;
        uint32_t n = 5 < slots * hk ? 5 : (uint32_t)(slots * hk);
        float *k0 = rand_stored(&r, rows * re, t), *v0 = rand_stored(&r, rows * re, t);
        fkv_bbuf *kp = dfrom(encode(k0, rows * re, t), 0, rows * re * es);
        fkv_bbuf *vp = dfrom(encode(v0, rows * re, t), 0, rows * re * es);
        float *src = rand_stored(&r, n * unit_elems, t);
        int32_t *units = rand_units(&r, &g, slots, n);
        /* src_off is a byte offset */
        fkv_bbuf *sb = dfrom(encode(src, n * unit_elems, t), 64, n * unit_elems * es);
        fkv_bbuf *ub = dfrom(units, 0, n * 8);
        RUN(ops->scatter_hnd(dev, CQ, DONE, &g, sb, 64, n, ub, 0, kp, vp));
        float *ke = tdup(k0, rows * re * 4), *ve = tdup(v0, rows * re * 4);
        apply_units(&g, ke, ve, src, units, n);
        cr_assert_arr_eq(read_pool(kp, rows * re, t), ke, rows * re * 4, "K, " CASE_FMT, CASE_ARGS);
        cr_assert_arr_eq(read_pool(vp, rows * re, t), ve, rows * re * 4, "V, " CASE_FMT, CASE_ARGS);
    }
}

Test(cpu_ops, recall_direct) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 700 + ti * 10 + gi);
        fkv_dtype t = dtypes[ti];
        fkv_kv_geom g = mk(geos[gi], t);
        size_t d = g.head_dim, p = g.page_size, hk = g.n_kv_heads, re = hk * d;
        size_t es = fkv_dtype_size(t);
        size_t slots = 4, rows = slots * p, unit_elems = 2 * p * d, unit_bytes = unit_elems * es;
        uint32_t n = 5 < slots * hk ? 5 : (uint32_t)(slots * hk);
        float *k0 = rand_stored(&r, rows * re, t), *v0 = rand_stored(&r, rows * re, t);
        fkv_bbuf *kp = dfrom(encode(k0, rows * re, t), 0, rows * re * es);
        fkv_bbuf *vp = dfrom(encode(v0, rows * re, t), 0, rows * re * es);
        float *src = rand_stored(&r, n * unit_elems, t);
        int32_t *units = rand_units(&r, &g, slots, n);
        /* units lie in the host allocation in reverse order, with gaps */
        fkv_bhost *host = NULL;
        void *hp = NULL;
        size_t host_size = (n + 1) * (unit_bytes + 256);
        cr_assert_eq(ops->host_alloc(dev, host_size, &host, &hp), FKV_OK, "%s", fkv_last_error());
        uint64_t offs[5];
        for (uint32_t i = 0; i < n; i++) {
            offs[i] = (uint64_t)(n - 1 - i) * (unit_bytes + 256) + 128;
            for (size_t e = 0; e < unit_elems; e++)
                fkv_store((unsigned char *)hp + offs[i], t, e, src[i * unit_elems + e]);
        }
        fkv_bbuf *ub = dfrom(units, 16, n * 8);
        uint64_t offs_copy[5];
        memcpy(offs_copy, offs, sizeof offs);
        fkv_status st = ops->recall_direct(dev, CQ, DONE, &g, host, n, offs_copy, ub, 16, kp, vp);
        memset(offs_copy, 0xff, sizeof offs_copy);
        RUN(st);
        float *ke = tdup(k0, rows * re * 4), *ve = tdup(v0, rows * re * 4);
        apply_units(&g, ke, ve, src, units, n);
        cr_assert_arr_eq(read_pool(kp, rows * re, t), ke, rows * re * 4, "K, " CASE_FMT, CASE_ARGS);
        cr_assert_arr_eq(read_pool(vp, rows * re, t), ve, rows * re * 4, "V, " CASE_FMT, CASE_ARGS);
        /* an offset past the allocation fails the command (the dispatch layer refuses it
         * before it reaches a backend: tests/test_dispatch.c) */
        uint64_t bad = host_size - unit_bytes + 2;
        wait_fails(ops->recall_direct(dev, CQ, DONE, &g, host, 1, &bad, ub, 16, kp, vp),
                   "recall_direct");
        ops->host_free(dev, host);
    }
}

/* Reference attention for (seq b, KV head h) of all its query heads. */
static void ref_attention(const fkv_kv_geom *g, const float *q, uint32_t b, uint32_t h,
                          const int32_t *list, int32_t count, const float *k, const float *v,
                          float scale, float *out) {
    size_t d = g->head_dim, p = g->page_size, re = (size_t)g->n_kv_heads * d;
    size_t hq = (size_t)g->n_kv_heads * g->group, n = 0;
    float *kk = tmalloc((size_t)count * p * d * 4 + 4);
    float *vv = tmalloc((size_t)count * p * d * 4 + 4);
    for (int32_t e = 0; e < count; e++)
        for (int32_t tok = 0; tok < list[2 * e + 1]; tok++, n++) {
            size_t row = (size_t)list[2 * e] * p + (size_t)tok;
            memcpy(kk + n * d, k + row * re + h * d, d * 4);
            memcpy(vv + n * d, v + row * re + h * d, d * 4);
        }
    for (size_t i = 0; i < g->group; i++) {
        size_t qh = b * hq + h * g->group + i;
        th_attention_ref(q + qh * d, kk, vv, n, d, d, scale, out + qh * d);
    }
}

Test(cpu_ops, attention) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 800 + ti * 10 + gi);
        fkv_dtype t = dtypes[ti];
        fkv_kv_geom g = mk(geos[gi], t);
        size_t d = g.head_dim, p = g.page_size, hk = g.n_kv_heads, re = hk * d;
        size_t es = fkv_dtype_size(t);
        size_t hq = hk * g.group, slots = 8, rows = slots * p;
        uint32_t n_seqs = 2;
        float scale = 1.0f / sqrtf((float)d);
        float *k = rand_stored(&r, rows * re, t), *v = rand_stored(&r, rows * re, t);
        float *q = rand_f32(&r, n_seqs * hq * d, 1.0f);
        fkv_bbuf *kp = dfrom(encode(k, rows * re, t), 0, rows * re * es);
        fkv_bbuf *vp = dfrom(encode(v, rows * re, t), 0, rows * re * es);
        /* Lists: one junk pair first (so entries_off matters), then per (b, h) 1..4 distinct
         * slots, last one partial, a middle one empty; (b=1, h=0) has an empty list. */
        int32_t *heads = tmalloc(2 * n_seqs * hk * 4);
        int32_t *entries = tmalloc((1 + n_seqs * hk * 4) * 8);
        size_t n_ent = 0;
        entries[0] = 999; /* the junk pair, skipped by entries_off */
        entries[1] = 999;
        int32_t *ent = entries + 2;
        for (uint32_t b = 0; b < n_seqs; b++)
            for (uint32_t h = 0; h < hk; h++) {
                int32_t count = (b == 1 && h == 0) ? 0 : 1 + (int32_t)(th_u32(&r) % 4);
                int32_t *order = perm(&r, slots);
                heads[2 * (b * hk + h)] = (int32_t)n_ent;
                heads[2 * (b * hk + h) + 1] = count;
                for (int32_t e = 0; e < count; e++, n_ent++) {
                    ent[2 * n_ent] = order[e];
                    ent[2 * n_ent + 1] = e == count - 1 ? 1 + (int32_t)(th_u32(&r) % p)
                                                        : (e == 1 ? 0 : (int32_t)p);
                }
            }
        fkv_bbuf *hb = dfrom(heads, 0, 2 * n_seqs * hk * 4);
        fkv_bbuf *eb = dfrom(entries, 0, (1 + n_ent) * 8);
        fkv_bbuf *qb = dfrom(q, 16, n_seqs * hq * d * 4);
        size_t out_bytes = n_seqs * hq * d * 4;
        fkv_bbuf *out = dguarded(out_bytes);
        RUN(ops->attention(dev, CQ, DONE, &g, qb, 16, n_seqs, hb, 0, eb, 8, kp, vp, scale, out,
                           GUARD));
        check_guards(out, out_bytes);
        float *got = tmalloc(out_bytes), *ref = tmalloc(out_bytes);
        dread(out, GUARD, got, out_bytes);
        for (uint32_t b = 0; b < n_seqs; b++)
            for (uint32_t h = 0; h < hk; h++)
                ref_attention(&g, q, b, h, ent + 2 * heads[2 * (b * hk + h)],
                              heads[2 * (b * hk + h) + 1], k, v, scale, ref);
        for (size_t row = 0; row < n_seqs * hq; row++) {
            int empty = row / hq == 1 && (row % hq) / g.group == 0;
            if (empty) {
                for (size_t c = 0; c < d; c++)
                    cr_assert_eq(got[row * d + c], 0.0f, "empty list must give zeros");
            } else {
                double err = th_rel_l2(got + row * d, ref + row * d, d);
                cr_assert_lt(err, 1e-5, "row %zu rel err %g, " CASE_FMT, row, err, CASE_ARGS);
            }
        }
    }
}

Test(cpu_ops, attention_dense) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 900 + ti * 10 + gi);
        fkv_dtype t = dtypes[ti];
        fkv_kv_geom g = mk(geos[gi], t);
        size_t d = g.head_dim, hk = g.n_kv_heads, re = hk * d, hq = hk * g.group;
        size_t es = fkv_dtype_size(t);
        uint32_t n_tok = 2 * g.page_size + 5; /* not a multiple of the page */
        float scale = 0.7f / sqrtf((float)d);
        float *k = rand_stored(&r, n_tok * re, t), *v = rand_stored(&r, n_tok * re, t);
        float *q = rand_f32(&r, hq * d, 1.0f);
        /* K/V buffers hold exactly n_tok rows */
        fkv_bbuf *kb = dalloc(n_tok * re * es), *vb = dalloc(n_tok * re * es);
        dwrite(kb, 0, encode(k, n_tok * re, t), n_tok * re * es);
        dwrite(vb, 0, encode(v, n_tok * re, t), n_tok * re * es);
        fkv_bbuf *qb = dfrom(q, 0, hq * d * 4), *out = dguarded(hq * d * 4);
        RUN(ops->attention_dense(dev, BQ, DONE, &g, qb, 0, n_tok, kb, vb, scale, out, GUARD));
        check_guards(out, hq * d * 4);
        float *got = tmalloc(hq * d * 4), *ref = tmalloc(hq * d * 4);
        dread(out, GUARD, got, hq * d * 4);
        for (size_t qh = 0; qh < hq; qh++) {
            size_t h = qh / g.group;
            th_attention_ref(q + qh * d, k + h * d, v + h * d, n_tok, d, re, scale, ref + qh * d);
            double err = th_rel_l2(got + qh * d, ref + qh * d, d);
            cr_assert_lt(err, 1e-5, "head %zu rel err %g, " CASE_FMT, qh, err, CASE_ARGS);
        }
        /* no tokens: zeros */
        RUN(ops->attention_dense(dev, BQ, DONE, &g, qb, 0, 0, kb, vb, scale, out, GUARD));
        dread(out, GUARD, got, hq * d * 4);
        for (size_t i = 0; i < hq * d; i++)
            cr_assert_eq(got[i], 0.0f);
    }
}

/* ---- index errors at execution time ---- */

/* A small f32 setup shared by the error tests: 2 slots of p=4, Hk=2, group 2, d=16. */
typedef struct small {
    fkv_kv_geom g;
    fkv_bbuf *kp, *vp, *q, *out, *sums, *big;
} small;

static small small_setup(void) {
    small s;
    s.g = (fkv_kv_geom){2, 2, 16, 4, FKV_F32};
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

Test(cpu_ops, index_out_of_range_fails_the_event) {
    small s = small_setup();
    fkv_kv_geom *g = &s.g;
    /* append: row 8 of an 8-row pool, and a negative row */
    wait_fails(ops->append(dev, CQ, DONE, g, s.big, 0, s.big, 0, 2, ints((int32_t[]){0, 8}, 2), 0,
                           s.kp, s.vp), "append");
    wait_fails(ops->append(dev, CQ, DONE, g, s.big, 0, s.big, 0, 1, ints((int32_t[]){-1}, 1), 0,
                           s.kp, s.vp), "append");
    /* summarize: slot 2 of 2; summary 2 of 2 */
    wait_fails(ops->summarize(dev, CQ, DONE, g, s.kp, 1, ints((int32_t[]){2, 0}, 2), 0, s.sums),
               "summarize");
    wait_fails(ops->summarize(dev, CQ, DONE, g, s.kp, 1, ints((int32_t[]){1, 2}, 2), 0, s.sums),
               "summarize");
    /* scores: summaries [1, 3) of 2; output past the end */
    wait_fails(ops->scores(dev, CQ, DONE, g, s.q, 0, 1, ints((int32_t[]){1, 2, 0}, 3), 0, s.sums,
                           s.out, 0), "scores");
    wait_fails(ops->scores(dev, CQ, DONE, g, s.q, 0, 1, ints((int32_t[]){0, 2, 60}, 3), 0, s.sums,
                           s.out, 0), "scores");
    /* pack_hnd: negative slot */
    wait_fails(ops->pack_hnd(dev, CQ, DONE, g, s.kp, s.vp, 1, ints((int32_t[]){-1}, 1), 0, s.big,
                             0), "pack_hnd");
    /* scatter_hnd: head 2 of 2; slot 2 of 2 */
    wait_fails(ops->scatter_hnd(dev, CQ, DONE, g, s.big, 0, 1, ints((int32_t[]){0, 2}, 2), 0, s.kp,
                                s.vp), "scatter_hnd");
    wait_fails(ops->scatter_hnd(dev, CQ, DONE, g, s.big, 0, 1, ints((int32_t[]){2, 0}, 2), 0, s.kp,
                                s.vp), "scatter_hnd");
    /* attention: a list past the entry buffer; slot 2; valid > page (rows still inside the
     * pool); negative count */
    fkv_bbuf *entries = ints((int32_t[]){0, 4, 2, 4, 0, 5}, 6);
    int32_t heads_past[4] = {0, 1, 2, 2}, heads_slot[4] = {0, 1, 1, 1};
    int32_t heads_valid[4] = {0, 1, 2, 1}, heads_neg[4] = {0, -1, 0, 1};
    wait_fails(ops->attention(dev, CQ, DONE, g, s.q, 0, 1, ints(heads_past, 4), 0, entries, 0, s.kp,
                              s.vp, 1.0f, s.out, 0), "attention");
    wait_fails(ops->attention(dev, CQ, DONE, g, s.q, 0, 1, ints(heads_slot, 4), 0, entries, 0, s.kp,
                              s.vp, 1.0f, s.out, 0), "attention");
    wait_fails(ops->attention(dev, CQ, DONE, g, s.q, 0, 1, ints(heads_valid, 4), 0, entries, 0,
                              s.kp, s.vp, 1.0f, s.out, 0), "attention");
    wait_fails(ops->attention(dev, CQ, DONE, g, s.q, 0, 1, ints(heads_neg, 4), 0, entries, 0, s.kp,
                              s.vp, 1.0f, s.out, 0), "attention");
    /* recall_direct: a unit's slot out of range (its host offset is fine) */
    fkv_bhost *host = NULL;
    void *hp = NULL;
    cr_assert_eq(ops->host_alloc(dev, 4096, &host, &hp), FKV_OK);
    uint64_t off = 0;
    wait_fails(ops->recall_direct(dev, CQ, DONE, g, host, 1, &off, ints((int32_t[]){5, 0}, 2), 0,
                                  s.kp, s.vp), "recall_direct");
    ops->host_free(dev, host);
    /* the queue still works afterwards */
    fkv_bbuf *fine = ints((int32_t[]){0, 1}, 2);
    ops->finish(dev, CQ); /* reports the failures above, once */
    RUN(ops->summarize(dev, CQ, DONE, g, s.kp, 1, fine, 0, s.sums));
    cr_assert_eq(ops->finish(dev, CQ), FKV_OK, "%s", fkv_last_error());
}

Test(cpu_ops, failures_propagate) {
    small s = small_setup();
    fkv_bevent *bad = NULL, *after = NULL, *mark = NULL;
    cr_assert_eq(ops->append(dev, CQ, (fkv_deps){0, NULL, &bad}, &s.g, s.big, 0, s.big, 0, 1,
                             ints((int32_t[]){100}, 1), 0, s.kp, s.vp),
                 FKV_OK);
    float back[4];
    /* a command waiting on the failed one fails and is not run */
    cr_assert_eq(ops->read(dev, TQ, (fkv_deps){1, &bad, &after}, s.kp, 0, back, sizeof back),
                 FKV_OK);
    cr_assert_eq(ops->marker(dev, BQ, (fkv_deps){1, &after, &mark}), FKV_OK);
    cr_assert_eq(ops->event_wait(dev, 1, &mark), FKV_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(fkv_last_error(), "append") != NULL, "%s", fkv_last_error());
    cr_assert_eq(ops->event_wait(dev, 1, &after), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ops->event_wait(dev, 1, &bad), FKV_ERR_INVALID_ARGUMENT);
    fkv_bevent *both[2] = {bad, after};
    cr_assert_eq(ops->event_wait(dev, 2, both), FKV_ERR_INVALID_ARGUMENT);
    ops->event_release(dev, bad);
    ops->event_release(dev, after);
    ops->event_release(dev, mark);
    /* finish reports a failure on its queue since the last marker, then is clean */
    cr_assert_eq(ops->finish(dev, CQ), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(ops->finish(dev, CQ), FKV_OK, "%s", fkv_last_error());
}

/* The argument checks before queueing, and zero work, are the dispatch layer's, the same for
 * every backend: tests/test_dispatch.c. */

/* ---- ordering across queues ---- */

Test(cpu_ops, cross_queue_ordering) {
    th_rng r;
    th_seed(&r, 1000);
    fkv_kv_geom g = {2, 1, 64, 16, FKV_F16};
    size_t re = 2 * 64, rows = 4 * 16, n = 16;
    float *ks = rand_f32(&r, n * re, 1.0f);
    float *zeros = tmalloc(n * re * 4);
    int32_t rows_idx[16];
    for (int i = 0; i < 16; i++)
        rows_idx[i] = 16 + i; /* fills slot 1 */
    fkv_bbuf *src = dalloc(n * re * 4), *kp = dalloc(rows * re * 2), *vp = dalloc(rows * re * 2);
    fkv_bbuf *rb = dfrom(rows_idx, 0, sizeof rows_idx), *sums = dalloc(2 * 2 * re * 4);
    /* TRANSFER: many writes of zeros, then the real keys; only the last is waited on */
    fkv_bevent *written = NULL, *appended = NULL, *summarized = NULL, *read_done = NULL;
    for (int i = 0; i < 50; i++)
        cr_assert_eq(ops->write(dev, TQ, (fkv_deps){0, NULL, NULL}, src, 0, zeros, n * re * 4),
                     FKV_OK);
    cr_assert_eq(ops->write(dev, TQ, (fkv_deps){0, NULL, &written}, src, 0, ks, n * re * 4),
                 FKV_OK);
    /* COMPUTE: append after the write; BACKGROUND: summary after the append; TRANSFER read */
    cr_assert_eq(ops->append(dev, CQ, (fkv_deps){1, &written, &appended}, &g, src, 0, src, 0,
                             (uint32_t)n, rb, 0, kp, vp),
                 FKV_OK);
    cr_assert_eq(ops->summarize(dev, BQ, (fkv_deps){1, &appended, &summarized}, &g, kp, 1,
                                ints((int32_t[]){1, 1}, 2), 0, sums),
                 FKV_OK);
    float got[2 * 2 * 2 * 64]; /* two summaries of 2 heads x (min, max) x 64 */
    cr_assert_eq(ops->read(dev, TQ, (fkv_deps){1, &summarized, &read_done}, sums, 0, got,
                           sizeof got),
                 FKV_OK);
    cr_assert_eq(ops->event_wait(dev, 1, &read_done), FKV_OK, "%s", fkv_last_error());
    float *kr = tdup(ks, n * re * 4);
    th_round_dtype(kr, n * re, FKV_F16);
    for (size_t h = 0; h < 2; h++)
        for (size_t c = 0; c < 64; c++) {
            float lo = INFINITY, hi = -INFINITY;
            for (size_t t = 0; t < n; t++) {
                lo = fminf(lo, kr[t * re + h * 64 + c]);
                hi = fmaxf(hi, kr[t * re + h * 64 + c]);
            }
            cr_assert_eq(got[(2 + h) * 128 + c], lo, "min head %zu ch %zu", h, c);
            cr_assert_eq(got[(2 + h) * 128 + 64 + c], hi, "max head %zu ch %zu", h, c);
        }
    ops->event_release(dev, written);
    ops->event_release(dev, appended);
    ops->event_release(dev, summarized);
    ops->event_release(dev, read_done);
}

Test(cpu_ops, events_and_markers) {
    fkv_bbuf *b = dalloc(1024);
    char src[1024], back[1024];
    memset(src, 7, sizeof src);
    fkv_bevent *w = NULL, *m = NULL, *m2 = NULL;
    cr_assert_eq(ops->write(dev, TQ, (fkv_deps){0, NULL, &w}, b, 0, src, sizeof src), FKV_OK);
    /* a marker on another queue completes after its wait list */
    cr_assert_eq(ops->marker(dev, CQ, (fkv_deps){1, &w, &m}), FKV_OK);
    cr_assert_eq(ops->event_wait(dev, 1, &m), FKV_OK);
    cr_assert_eq(ops->event_wait(dev, 1, &m), FKV_OK, "waiting twice is fine");
    cr_assert_eq(ops->read(dev, CQ, (fkv_deps){1, &m, &m2}, b, 0, back, sizeof back), FKV_OK);
    ops->event_release(dev, w); /* the read still holds what it needs */
    ops->event_release(dev, m);
    cr_assert_eq(ops->event_wait(dev, 1, &m2), FKV_OK);
    ops->event_release(dev, m2);
    cr_assert_arr_eq(back, src, sizeof back);
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        cr_assert_eq(ops->finish(dev, (fkv_queue)q), FKV_OK);
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
        if (ops->write(dev, a->q, (fkv_deps){0, NULL, &w}, a->buf, 0, src, sizeof src) != FKV_OK ||
            ops->read(dev, other, (fkv_deps){1, &w, &rd}, a->buf, 0, back, sizeof back) != FKV_OK) {
            a->errors++;
            ops->event_release(dev, w);
            continue;
        }
        if (ops->event_wait(dev, 1, &rd) != FKV_OK || memcmp(src, back, sizeof src) != 0)
            a->errors++;
        ops->event_release(dev, w);
        ops->event_release(dev, rd);
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
        cr_assert_eq(ops->write(dev, TQ, (fkv_deps){0, NULL, i == 19 ? &ev : NULL}, b, 0, src,
                                1 << 20),
                     FKV_OK);
    ops->device_close(dev);
    dev = NULL;
    cr_assert_eq(ops->event_wait(NULL, 1, &ev), FKV_OK);
    ops->event_release(NULL, ev);
    ops->buffer_free(NULL, b);
    n_bufs = 0;
}

Test(cpu_ops, nan_inputs_do_not_crash) {
    fkv_kv_geom g = {2, 2, 16, 4, FKV_BF16};
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
    RUN(ops->attention(dev, CQ, DONE, &g, qb, 0, 1, heads, 0, entries, 0, kp, kp, 1.0f, out, 0));
    RUN(ops->attention_dense(dev, CQ, DONE, &g, qb, 0, 8, kp, kp, 1.0f, out, 0));
    RUN(ops->summarize(dev, CQ, DONE, &g, kp, 2, ints((int32_t[]){0, 0, 1, 1}, 4), 0, sums));
    RUN(ops->scores(dev, CQ, DONE, &g, qb, 0, 1, ints((int32_t[]){0, 2, 0}, 3), 0, sums, out, 0));
    RUN(ops->cosine_flags(dev, CQ, DONE, &g, qb, 0, qb, 0, 1, 0.9f, sims, 0, flags, 0));
}

/* ---- environment ---- */

TestSuite(cpu_env, .init = unset_env, .fini = teardown);

Test(cpu_env, recall_modes) {
    static const char *const names[] = {"staged", "direct", "perpage"};
    for (int i = 0; i < 3; i++) {
        setenv("FREEKV_CPU_RECALL", names[i], 1);
        open_cpu();
        fkv_device_info info;
        cr_assert_eq(ops->recall_mode(dev), (fkv_recall_mode)i);
        cr_assert_eq(ops->opened_info(dev, &info), FKV_OK);
        cr_assert_eq((info.caps & FKV_CAP_ZERO_COPY_HOST) != 0, i == FKV_RECALL_DIRECT,
                     "zero-copy cap for %s", names[i]);
        ops->device_close(dev);
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
    fkv_bdev *b = NULL;
    ops = fkv_backend_cpu();
    cr_assert_eq(ops->device_open(0, &b), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert_null(b);
    cr_assert(strstr(fkv_last_error(), "FREEKV_CPU_RECALL") != NULL, "%s", fkv_last_error());
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert_null(d);
}

Test(cpu_env, device_memory_limit) {
    setenv("FREEKV_CPU_DEVICE_MEMORY", "1K", 1);
    open_cpu();
    fkv_device_info info;
    cr_assert_eq(ops->opened_info(dev, &info), FKV_OK);
    cr_assert_eq(info.memory_bytes, 1024);
    fkv_bbuf *a = NULL, *b = NULL;
    cr_assert_eq(ops->buffer_alloc(dev, 1 << 20, &b), FKV_ERR_OUT_OF_DEVICE_MEMORY);
    cr_assert_null(b);
    cr_assert_eq(ops->buffer_alloc(dev, 1000, &a), FKV_OK);
    cr_assert_eq(ops->buffer_alloc(dev, 100, &b), FKV_ERR_OUT_OF_DEVICE_MEMORY);
    cr_assert_eq(ops->buffer_alloc(dev, 24, &b), FKV_OK);
    ops->buffer_free(dev, a);
    cr_assert_eq(ops->buffer_alloc(dev, 1000, &a), FKV_OK, "freed memory is available again");
    ops->buffer_free(dev, a);
    ops->buffer_free(dev, b);
    ops->device_close(dev);
    dev = NULL;
    /* through the public API */
    fkv_device *d = NULL;
    fkv_buffer *buf = NULL;
    cr_assert_eq(fkv_device_open("cpu", NULL, &d), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_buffer_alloc(d, 4096, &buf), FKV_ERR_OUT_OF_DEVICE_MEMORY);
    cr_assert_null(buf);
    fkv_device_close(d);
}

Test(cpu_env, host_memory_limit) {
    setenv("FREEKV_CPU_HOST_MEMORY", "64k", 1);
    open_cpu();
    fkv_bhost *h = NULL, *h2 = NULL;
    void *p = NULL;
    cr_assert_eq(ops->host_alloc(dev, 1 << 20, &h, &p), FKV_ERR_OUT_OF_HOST_MEMORY);
    cr_assert_null(h);
    cr_assert_eq(ops->host_alloc(dev, 60 << 10, &h, &p), FKV_OK);
    cr_assert_eq(ops->host_alloc(dev, 8 << 10, &h2, &p), FKV_ERR_OUT_OF_HOST_MEMORY);
    ops->host_free(dev, h);
    cr_assert_eq(ops->host_alloc(dev, 8 << 10, &h2, &p), FKV_OK);
    ops->host_free(dev, h2);
    /* device memory is not limited by the host limit */
    fkv_bbuf *b = NULL;
    cr_assert_eq(ops->buffer_alloc(dev, 1 << 20, &b), FKV_OK);
    ops->buffer_free(dev, b);
}

Test(cpu_env, bad_memory_values) {
    static const char *const bad[] = {"12Q", "-5", "0", "1KK", "K", "64 M", "99999999999999999999"};
    ops = fkv_backend_cpu();
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        fkv_bdev *b = NULL;
        setenv("FREEKV_CPU_DEVICE_MEMORY", bad[i], 1);
        cr_assert_eq(ops->device_open(0, &b), FKV_ERR_BAD_ENVIRONMENT, "'%s' accepted", bad[i]);
        cr_assert_null(b);
        cr_assert(strstr(fkv_last_error(), "FREEKV_CPU_DEVICE_MEMORY") != NULL);
    }
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
    setenv("FREEKV_CPU_HOST_MEMORY", "2X", 1);
    fkv_bdev *b = NULL;
    cr_assert_eq(ops->device_open(0, &b), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert(strstr(fkv_last_error(), "FREEKV_CPU_HOST_MEMORY") != NULL);
    /* an empty value means unset; G is accepted */
    setenv("FREEKV_CPU_HOST_MEMORY", "", 1);
    setenv("FREEKV_CPU_DEVICE_MEMORY", "3G", 1);
    open_cpu();
    fkv_device_info info;
    cr_assert_eq(ops->opened_info(dev, &info), FKV_OK);
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
    fkv_kv_geom g = {8, 2, 128, 32, FKV_F16};
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
    cr_assert_eq(ops->buffer_import(dev, bp.k, bp.bytes, &kp), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(ops->buffer_import(dev, bp.v, bp.bytes, &vp), FKV_OK, "%s", fkv_last_error());
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
    RUN(ops->append(dev, CQ, DONE, &g, kb, 0, vb, 0, (uint32_t)n_rows, rb, 0, kp, vp));
    for (size_t i = 0; i < n_rows; i++)
        for (size_t e = 0; e < re; e++) {
            size_t slot = i < p ? hi : mid, t = i % p, h = e / d, c = e % d;
            cr_assert_eq(pool_at(bp.k, &g, slot, t, h, c), k[i * re + e], "append K row %zu", i);
            cr_assert_eq(pool_at(bp.v, &g, slot, t, h, c), v[i * re + e], "append V row %zu", i);
        }

    /* summarize both pages */
    int32_t pages[4] = {(int32_t)hi, 0, (int32_t)mid, 1};
    fkv_bbuf *pg = dfrom(pages, 0, sizeof pages), *sm = dalloc(2 * re * 2 * 4);
    RUN(ops->summarize(dev, CQ, DONE, &g, kp, 2, pg, 0, sm)); /* summaries start at byte 0 */
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
    RUN(ops->pack_hnd(dev, CQ, DONE, &g, kp, vp, 2, gs, 0, pk, GUARD));
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
    RUN(ops->scatter_hnd(dev, CQ, DONE, &g, us, 0, 2, ui, 0, kp, vp));
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
    cr_assert_eq(ops->host_alloc(dev, unit_elems * 2, &hm, &hp), FKV_OK, "%s", fkv_last_error());
    memcpy(hp, packed + page_elems * 2 + (5 * 2 * p * d) * 2, unit_elems * 2);
    uint64_t off0 = 0;
    int32_t unit2[2] = {(int32_t)(hi - 2), 5};
    fkv_bbuf *u2 = dfrom(unit2, 0, sizeof unit2);
    RUN(ops->recall_direct(dev, CQ, DONE, &g, hm, 1, &off0, u2, 0, kp, vp));
    for (size_t t = 0; t < p; t++)
        for (size_t c = 0; c < d; c++)
            cr_assert_eq(pool_at(bp.v, &g, hi - 2, t, 5, c), pool_at(bp.v, &g, mid, t, 5, c));
    ops->host_free(dev, hm);

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
    RUN(ops->attention(dev, CQ, DONE, &g, qb, 0, 1, hb, 0, eb, 0, kp, vp, scale, ob, GUARD));
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
    ops->finish(dev, CQ);
    ops->buffer_free(dev, kp); /* imports: the mapping stays ours (a failed assertion ends the
                                  forked test process, which drops both) */
    ops->buffer_free(dev, vp);
    big_unmap(&bp);
}
