/* The data specs: for each op of the device interface, the arrays (inputs, and outputs
 * between guards) and the calls that run on them, with every edge case the op's contract
 * (backends/backend.h) names: odd offsets, partial and empty pages, the last slot of a pool,
 * values that overflow or underflow the storage dtype, a zero-norm query, gaps between
 * output blocks. spec.c runs a spec on the reference and on a device under test and compares;
 * tests/test_cpu_ops.c checks the reference on the same specs against naive C. Also the case
 * lists (which spec runs at which geometry). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "conformance.h"

#define POOL_TRAIL 64 /* trailing bytes of a pool: less than one row, so no extra row */
#define CQ FKV_QUEUE_COMPUTE
#define TQ FKV_QUEUE_TRANSFER
#define BQ FKV_QUEUE_BACKGROUND

typedef int (*cf_build_fn)(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r);

/* ---- helpers ---- */

/* Random values stored in dtype at dst (n elements). plain: N(0,1) only. */
static void fill_store(cf_rng *r, void *dst, fkv_dtype dt, size_t n, int plain) {
    for (size_t i = 0; i < n; i++) {
        float v;
        cf_fill_values(r, &v, 1);
        if (plain)
            v = cf_normal(r);
        fkv_store(dst, dt, i, v);
    }
}

static void fill_f32(cf_rng *r, float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = cf_normal(r);
}

static void fill_bytes(cf_rng *r, unsigned char *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = (unsigned char)cf_u32(r);
}

static cf_ref at(int arr, size_t off) { return (cf_ref){.arr = arr, .off = off}; }

/* Quantized units (common/hostfmt.h) for the dequantize specs: random codes and random f16
 * scales and zeros of both signs, subnormals and zeros included (high bytes of exponent 0..22,
 * so |value| < 2^8 and never an infinity), and one f16 word in 97 the canonical NaN (a NaN
 * group dequantizes to NaN). Every 2-byte word is such an f16, so a unit read at any element
 * offset has well-formed scales and zeros. */
static void fill_units(cf_rng *r, unsigned char *x, size_t n) {
    for (size_t i = 0; i + 1 < n; i += 2) {
        uint32_t u = cf_u32(r);
        uint16_t h = (uint16_t)((u & 0x80ffu) | (((u >> 8) % 0x5cu) << 8));
        if (u % 97u == 0)
            h = 0x7e00u;
        x[i] = (unsigned char)(h & 0xffu), x[i + 1] = (unsigned char)(h >> 8);
    }
}

static size_t row_elems(const fkv_kv_geom *g) { return (size_t)g->n_kv_heads * g->head_dim; }
static size_t esize(const fkv_kv_geom *g) { return fkv_dtype_size(g->dtype); }

/* A KV pool of n_slots slots as an output updated in place, with a trailing partial row. */
static int pool_output(cf_spec *s, const char *label, uint32_t n_slots) {
    const fkv_kv_geom *g = &s->g;
    int i = (int)s->n_arr;
    size_t rows = (size_t)n_slots * g->page_size;
    cf_set_shape(cf_add_output(s, label, 0, rows * row_elems(g) * esize(g), POOL_TRAIL, CF_STORE),
                 (uint32_t)rows, "row", g->n_kv_heads, "KV head", g->head_dim, "ch");
    return i;
}

/* A KV pool input of n_slots slots of random stored values, with a trailing partial row that
 * no kernel may read as a slot. */
static int pool_input(cf_spec *s, cf_rng *rng, const char *label, uint32_t n_slots, int plain) {
    const fkv_kv_geom *g = &s->g;
    int i = (int)s->n_arr;
    size_t n = (size_t)n_slots * g->page_size * row_elems(g);
    void *p = cf_add_input(s, label, 0, n * esize(g) + POOL_TRAIL);
    if (p)
        fill_store(rng, p, g->dtype, n, plain);
    return i;
}

/* Pools an op updates in place start with random stored values. */
static void randomize_payload(cf_spec *s, cf_rng *rng, int arr) {
    cf_arr *a = &s->arr[arr];
    fill_store(rng, a->init + a->pay_off, s->g.dtype, a->pay_size / esize(&s->g), 0);
}

/* k distinct values of [0, n), one of them n - 1 (the last slot, row or summary). */
static void pick_with_last(cf_rng *rng, uint32_t n, uint32_t k, uint32_t *out) {
    cf_pick_distinct(rng, n, k, out);
    for (uint32_t i = 0; i < k; i++)
        if (out[i] == n - 1)
            return;
    out[cf_below(rng, k)] = n - 1;
}

/* n distinct (slot, KV head) units of n_slots slots; with_last: the last head of the last
 * slot among them. */
static void pick_units(cf_rng *rng, uint32_t n_slots, uint32_t hk, uint32_t n, int with_last,
                       int32_t *units) {
    uint32_t pick[64];
    if (with_last)
        pick_with_last(rng, n_slots * hk, n, pick);
    else
        cf_pick_distinct(rng, n_slots * hk, n, pick);
    for (uint32_t i = 0; i < n; i++) {
        units[2 * i] = (int32_t)(pick[i] / hk);
        units[2 * i + 1] = (int32_t)(pick[i] % hk);
    }
}

/* ---- data movement ---- */

/* Copies through all three queues, each command waiting on the previous one's event, from
 * pinned and from pageable host memory, a marker; then overlapping copies within one buffer
 * (memmove, both directions) and zero-byte transfers with no host pointer. */
static int build_copies(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    int pin = (int)s->n_arr;
    cf_arr *pinned = cf_add_arr(s, "pinned_src", 1536);
    int dsrc = (int)s->n_arr;
    unsigned char *dev_src = cf_add_input(s, "device_src", 0, 3000);
    int pg = (int)s->n_arr;
    cf_arr *pageable = cf_add_arr(s, "pageable_src", 10);
    int b = (int)s->n_arr;
    cf_add_output(s, "b", CF_GUARD, 2048, CF_GUARD, CF_BYTES);
    int c = (int)s->n_arr;
    cf_add_output(s, "c", CF_GUARD, 1024, CF_GUARD, CF_BYTES);
    int back = (int)s->n_arr;
    cf_arr *rb = cf_add_output(s, "read_back", CF_GUARD, 1018, CF_GUARD, CF_BYTES);
    if (!cf_spec_ok(s))
        return -1;
    pinned->mem = CF_PINNED;
    pageable->mem = CF_HOST;
    rb->mem = CF_HOST;
    fill_bytes(rng, pinned->init, pinned->size);
    fill_bytes(rng, pageable->init, pageable->size);
    fill_bytes(rng, dev_src, 3000);
    struct {
        cf_kind kind;
        fkv_queue q;
        cf_ref dst, src;
        size_t size;
        int wait0, wait1, detached;
    } const plan[] = {
        {CF_WRITE, TQ, at(b, CF_GUARD + 3), at(pin, 0), 1201, -1, -1, 1},
        {CF_COPY, CQ, at(b, CF_GUARD + 1300), at(dsrc, 17), 700, 0, -1, 1},
        {CF_COPY, BQ, at(c, CF_GUARD + 5), at(b, CF_GUARD + 103), 1000, 1, -1, 1},
        {CF_WRITE, CQ, at(c, CF_GUARD + 1010), at(pg, 0), 10, -1, -1, 1},
        {CF_READ, TQ, at(c, CF_GUARD + 2), at(back, CF_GUARD), 1018, 2, 3, 1},
        {CF_MARKER, CQ, at(-1, 0), at(-1, 0), 0, 4, -1, 0},
        {CF_COPY, CQ, at(b, CF_GUARD + 10), at(b, CF_GUARD), 1000, -1, -1, 0},
        {CF_COPY, BQ, at(b, CF_GUARD + 1500), at(b, CF_GUARD + 1507), 500, -1, -1, 0},
        {CF_WRITE, TQ, at(b, 0), at(-1, 0), 0, -1, -1, 0},
        {CF_READ, CQ, at(b, 2048 + 2 * CF_GUARD), at(-1, 0), 0, -1, -1, 0},
        {CF_COPY, BQ, at(b, 0), at(c, 0), 0, -1, -1, 0},
    };
    for (size_t i = 0; i < sizeof plan / sizeof *plan; i++) {
        cf_call *k = cf_add_call(s, plan[i].kind, plan[i].q);
        if (k == NULL)
            return -1;
        k->b[0] = plan[i].dst, k->b[1] = plan[i].src, k->size = plan[i].size;
        k->wait[0] = plan[i].wait0, k->wait[1] = plan[i].wait1, k->detached = plan[i].detached;
    }
    return 1;
}

/* 1 MiB between host_alloc memory and a device buffer: written from pinned memory, read back
 * into pinned and into pageable memory. */
static int build_host_memory(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    const size_t n = (size_t)1 << 20;
    int src = (int)s->n_arr;
    cf_arr *sa = cf_add_arr(s, "pinned_src", n);
    int dev = (int)s->n_arr;
    cf_add_output(s, "buffer", CF_GUARD, n, CF_GUARD, CF_BYTES);
    int bp = (int)s->n_arr;
    cf_arr *pa = cf_add_output(s, "pinned_back", 0, n, 0, CF_BYTES);
    int bh = (int)s->n_arr;
    cf_arr *ha = cf_add_output(s, "pageable_back", 0, n, 0, CF_BYTES);
    if (!cf_spec_ok(s))
        return -1;
    sa->mem = pa->mem = CF_PINNED;
    ha->mem = CF_HOST;
    fill_bytes(rng, sa->init, n);
    cf_call *w = cf_add_call(s, CF_WRITE, CQ), *r1 = cf_add_call(s, CF_READ, CQ);
    cf_call *r2 = cf_add_call(s, CF_READ, TQ);
    w->b[0] = at(dev, CF_GUARD), w->b[1] = at(src, 0), w->size = n;
    r1->b[0] = at(dev, CF_GUARD), r1->b[1] = at(bp, 0), r1->size = n;
    r2->b[0] = at(dev, CF_GUARD), r2->b[1] = at(bh, 0), r2->size = n;
    return 1;
}

/* Commands on three queues ordered only by events, at the spec's geometry (bf16, 2 KV heads,
 * d 64, p 16): write (transfer) -> scatter (compute) -> pack (background) -> read (transfer)
 * gives the host data back; and many writes of zeros queued before the real keys on the
 * transfer queue (no events), an append that waits only for the last write, a summary that
 * waits for the append, a read that waits for the summary. */
static int build_event_chain(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    s->g = (fkv_kv_geom){.n_kv_heads = 2, .group = 1, .head_dim = 64, .page_size = 16,
                         .dtype = FKV_BF16};
    const fkv_kv_geom *g = &s->g;
    const uint32_t n_pages = 8, n_rows = 16, n_zero_writes = 50;
    size_t es = esize(g), re = row_elems(g), page = 2 * re * g->page_size * es;
    int host = (int)s->n_arr;
    cf_arr *ha = cf_add_arr(s, "host_pages", n_pages * page);
    int stage = (int)s->n_arr;
    cf_add_input(s, "stage", 0, n_pages * page);
    int kp = pool_output(s, "kpool", n_pages), vp = pool_output(s, "vpool", n_pages);
    int units = (int)s->n_arr;
    int32_t *u = cf_add_input(s, "units", 0, (size_t)n_pages * 2 * 8);
    int slots = (int)s->n_arr;
    int32_t *sl = cf_add_input(s, "slots", 0, n_pages * 4);
    int packed = (int)s->n_arr;
    cf_add_output(s, "packed", 0, n_pages * page, 0, CF_STORE);
    int got = (int)s->n_arr;
    cf_arr *ga = cf_add_output(s, "read_back", 0, n_pages * page, 0, CF_STORE);
    int zeros = (int)s->n_arr;
    cf_arr *za = cf_add_arr(s, "zeros", n_rows * re * 4);
    int keys = (int)s->n_arr;
    cf_arr *ka = cf_add_arr(s, "keys", n_rows * re * 4);
    int src = (int)s->n_arr;
    cf_add_input(s, "key_rows", 0, n_rows * re * 4);
    int kp2 = pool_output(s, "kpool2", 4), vp2 = pool_output(s, "vpool2", 4);
    int rows = (int)s->n_arr;
    int32_t *rw = cf_add_input(s, "rows", 0, n_rows * 4);
    int pages = (int)s->n_arr;
    int32_t *pv = cf_add_input(s, "pages", 0, 8);
    int summ = (int)s->n_arr;
    cf_add_output(s, "summaries", 0, 2 * re * 2 * 4, 0, CF_F32);
    int got2 = (int)s->n_arr;
    cf_arr *g2 = cf_add_output(s, "summaries_back", 0, 2 * re * 2 * 4, 0, CF_F32);
    if (!cf_spec_ok(s))
        return -1;
    ha->mem = ga->mem = za->mem = ka->mem = g2->mem = CF_HOST;
    fill_store(rng, ha->init, g->dtype, n_pages * page / es, 0);
    memset(za->init, 0, za->size);
    fill_f32(rng, (float *)ka->init, n_rows * re);
    uint32_t order[8];
    cf_pick_distinct(rng, n_pages, n_pages, order);
    for (uint32_t i = 0; i < n_pages * 2; i++) {
        u[2 * i] = (int32_t)order[i / 2];
        u[2 * i + 1] = (int32_t)(i % 2);
    }
    for (uint32_t i = 0; i < n_pages; i++)
        sl[i] = (int32_t)order[i];
    for (uint32_t i = 0; i < n_rows; i++)
        rw[i] = (int32_t)(g->page_size + i); /* fills slot 1 */
    pv[0] = pv[1] = 1;                       /* slot 1 into summary 1 */

    cf_call *c;
    if ((c = cf_add_call(s, CF_WRITE, TQ)) == NULL)
        return -1;
    c->b[0] = at(stage, 0), c->b[1] = at(host, 0), c->size = n_pages * page, c->detached = 1;
    int w0 = (int)s->n_call - 1;
    if ((c = cf_add_call(s, CF_SCATTER, CQ)) == NULL)
        return -1;
    c->b[0] = at(stage, 0), c->b[1] = at(units, 0), c->b[2] = at(kp, 0), c->b[3] = at(vp, 0);
    c->n = n_pages * 2, c->wait[0] = w0, c->detached = 1;
    if ((c = cf_add_call(s, CF_PACK, BQ)) == NULL)
        return -1;
    c->b[0] = at(kp, 0), c->b[1] = at(vp, 0), c->b[2] = at(slots, 0), c->b[3] = at(packed, 0);
    c->n = n_pages, c->wait[0] = w0 + 1, c->detached = 1;
    if ((c = cf_add_call(s, CF_READ, TQ)) == NULL)
        return -1;
    c->b[0] = at(packed, 0), c->b[1] = at(got, 0), c->size = n_pages * page;
    c->wait[0] = w0 + 2, c->detached = 1;
    for (uint32_t i = 0; i < n_zero_writes; i++) {
        if ((c = cf_add_call(s, CF_WRITE, TQ)) == NULL)
            return -1;
        c->b[0] = at(src, 0), c->b[1] = at(zeros, 0), c->size = n_rows * re * 4;
        c->detached = c->no_event = 1;
    }
    if ((c = cf_add_call(s, CF_WRITE, TQ)) == NULL)
        return -1;
    c->b[0] = at(src, 0), c->b[1] = at(keys, 0), c->size = n_rows * re * 4, c->detached = 1;
    int wk = (int)s->n_call - 1;
    if ((c = cf_add_call(s, CF_APPEND, CQ)) == NULL)
        return -1;
    c->b[0] = at(src, 0), c->b[1] = at(src, 0), c->b[2] = at(rows, 0);
    c->b[3] = at(kp2, 0), c->b[4] = at(vp2, 0), c->n = n_rows, c->wait[0] = wk, c->detached = 1;
    if ((c = cf_add_call(s, CF_SUMMARIZE, BQ)) == NULL)
        return -1;
    c->b[0] = at(kp2, 0), c->b[1] = at(pages, 0), c->b[2] = at(summ, 0), c->n = 1;
    c->wait[0] = wk + 1, c->detached = 1;
    if ((c = cf_add_call(s, CF_READ, TQ)) == NULL)
        return -1;
    c->b[0] = at(summ, 0), c->b[1] = at(got2, 0), c->size = 2 * re * 2 * 4;
    c->wait[0] = wk + 2, c->detached = 1;
    return 1;
}

/* Regions of odd sizes at odd offsets, one empty, ascending with gaps, from pageable memory;
 * 64 regions from host_alloc memory, from pageable memory and mixed, in shuffled source
 * order; none at all. The region list is overwritten right after each call (it is read during
 * the call only). */
static int build_regions(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)r;
    s->uses_fallback = !FKV_HAS_ENTRY(fkv_device_ops(env->dut.dev), write_regions);
    const uint32_t n_big = 64;
    const size_t unit = 1000;
    int src = (int)s->n_arr;
    cf_arr *sa = cf_add_arr(s, "src", 2048);
    int pin = (int)s->n_arr;
    cf_arr *pa = cf_add_arr(s, "pinned_src", n_big * unit);
    int heap = (int)s->n_arr;
    cf_arr *hh = cf_add_arr(s, "pageable_src", n_big * unit);
    int dst = (int)s->n_arr;
    cf_add_output(s, "dst", CF_GUARD, 4096, CF_GUARD, CF_BYTES);
    static const char *const mix_names[3] = {"dst_pinned", "dst_pageable", "dst_mixed"};
    int mixed[3];
    for (int m = 0; m < 3; m++) {
        mixed[m] = (int)s->n_arr;
        cf_add_output(s, mix_names[m], CF_GUARD, n_big * unit, CF_GUARD, CF_BYTES);
    }
    if (!cf_spec_ok(s))
        return -1;
    sa->mem = hh->mem = CF_HOST;
    pa->mem = CF_PINNED;
    fill_bytes(rng, sa->init, sa->size);
    fill_bytes(rng, pa->init, pa->size);
    fill_bytes(rng, hh->init, hh->size);
    cf_call *c = cf_add_call(s, CF_WRITE_REGIONS, TQ);
    c->b[0] = at(dst, 0), c->first = s->n_region, c->n = 7;
    size_t off = 1;
    for (uint32_t i = 0; i < 7; i++) {
        cf_region *rg = &s->region[s->n_region++];
        rg->arr = src;
        rg->size = i == 3 ? 0 : 1 + cf_below(rng, 280);
        rg->src_off = cf_below(rng, 2048 - 281);
        rg->dst_off = CF_GUARD + off;
        off += rg->size + 1 + cf_below(rng, 200);
    }
    uint32_t order[64];
    cf_pick_distinct(rng, n_big, n_big, order);
    for (int m = 0; m < 3; m++) {
        c = cf_add_call(s, CF_WRITE_REGIONS, TQ);
        c->b[0] = at(mixed[m], 0), c->first = s->n_region, c->n = n_big;
        for (uint32_t i = 0; i < n_big; i++) {
            cf_region *rg = &s->region[s->n_region++];
            rg->arr = m == 0 || (m == 2 && i % 3 == 0) ? pin : heap;
            rg->src_off = order[i] * unit;
            rg->dst_off = CF_GUARD + i * unit;
            rg->size = unit - i % 7;
        }
    }
    c = cf_add_call(s, CF_WRITE_REGIONS, TQ);
    c->b[0] = at(dst, 0);
    return 1;
}

/* ---- kernels ---- */

/* Rows scattered into pools (the pool's last row among them), from inputs at different odd
 * offsets; values include large ones, f16 subnormals and extremes: 70000 (infinity in f16),
 * 3e-6, -1e-40 (an f32 subnormal) and a NaN. */
static int build_append(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    const fkv_kv_geom *g = &s->g;
    size_t re = row_elems(g);
    uint32_t pool_rows = 6 * g->page_size, n = g->page_size + 5;
    int k = (int)s->n_arr;
    float *kv = cf_add_input(s, "k_src", CF_IN_OFF, n * re * 4);
    int v = (int)s->n_arr;
    float *vv = cf_add_input(s, "v_src", 32, n * re * 4);
    int rows = (int)s->n_arr;
    int32_t *rw = cf_add_input(s, "rows", 8, n * 4);
    int kp = pool_output(s, "kpool", 6), vp = pool_output(s, "vpool", 6);
    if (!cf_spec_ok(s))
        return -1;
    cf_fill_values(rng, kv, n * re);
    cf_fill_values(rng, vv, n * re);
    kv[0] = 70000.0f;
    kv[1] = 3e-6f;
    kv[2] = -1e-40f;
    vv[0] = NAN;
    uint32_t pick[512];
    pick_with_last(rng, pool_rows, n, pick);
    for (uint32_t i = 0; i < n; i++)
        rw[i] = (int32_t)pick[i];
    cf_call *c = cf_add_call(s, CF_APPEND, CQ);
    c->b[0] = at(k, CF_IN_OFF), c->b[1] = at(v, 32), c->b[2] = at(rows, 8);
    c->b[3] = at(kp, 0), c->b[4] = at(vp, 0), c->n = n;
    return 1;
}

/* Four full pages (the pool's last slot among them) into summaries of a buffer of eight
 * (the last among them), with a trailing partial summary. f16 summaries (summarize_f16, bit
 * for bit: directed rounding is deterministic) also get keys beyond the f16 range, a NaN key
 * and keys below its smallest subnormal in channels 0-3 of every page. */
static int summarize_spec(cf_rng *rng, cf_spec *s, fkv_summary_format format) {
    fkv_kv_geom *g = &s->g;
    g->summary_format = format;
    uint32_t n_slots = 6, n_summ = 8, n = 4;
    int kp = pool_input(s, rng, "kpool", n_slots, 0);
    int pages = (int)s->n_arr;
    int32_t *pv = cf_add_input(s, "pages", CF_IN_OFF, n * 8);
    int out = (int)s->n_arr;
    cf_set_shape(cf_add_output(s, "summaries", 0, (size_t)n_summ * fkv_summary_bytes(g),
                               POOL_TRAIL, format == FKV_SUMMARY_F16 ? CF_BYTES : CF_F32),
                 n_summ, "summary", g->n_kv_heads, "KV head", 2 * g->head_dim, "min|max ch");
    if (!cf_spec_ok(s))
        return -1;
    if (format == FKV_SUMMARY_F16 && g->head_dim >= 4) {
        void *k = s->arr[kp].init;
        size_t re = row_elems(g);
        for (size_t row = 0; row < (size_t)n_slots * g->page_size; row++)
            for (size_t h = 0; h < g->n_kv_heads; h++) {
                size_t e = row * re + h * g->head_dim, t = row % g->page_size;
                if (t == 0)
                    fkv_store(k, g->dtype, e, 70000.0f); /* max up: +inf */
                fkv_store(k, g->dtype, e + 1, t % 2 ? -70000.0f : -65519.0f); /* max: -65504 */
                if (t == 1)
                    fkv_store(k, g->dtype, e + 2, NAN); /* skipped */
                fkv_store(k, g->dtype, e + 3, t % 2 ? 1e-30f : 3e-30f); /* 0 and 2^-24 */
            }
    }
    uint32_t slots[8], summ[8];
    pick_with_last(rng, n_slots, n, slots);
    pick_with_last(rng, n_summ, n, summ);
    for (uint32_t i = 0; i < n; i++) {
        pv[2 * i] = (int32_t)slots[i];
        pv[2 * i + 1] = (int32_t)summ[i];
    }
    cf_call *c = cf_add_call(s, CF_SUMMARIZE, BQ);
    c->b[0] = at(kp, 0), c->b[1] = at(pages, CF_IN_OFF), c->b[2] = at(out, 0), c->n = n;
    return 1;
}

static int build_summarize(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    return summarize_spec(rng, s, FKV_SUMMARY_F32);
}

static int build_summarize_f16(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    return summarize_spec(rng, s, FKV_SUMMARY_F16);
}

/* n_summ random page summaries in g->summary_format (min <= max per channel, as summaries
 * are; f16: the minima rounded down and the maxima up). */
static void fill_summaries(cf_rng *rng, const fkv_kv_geom *g, void *summ, uint32_t n_summ) {
    size_t d = g->head_dim;
    for (size_t i = 0; i < (size_t)n_summ * g->n_kv_heads; i++) {
        for (size_t ch = 0; ch < d; ch++) {
            float a = cf_normal(rng), b = cf_normal(rng);
            float lo = a < b ? a : b, hi = a < b ? b : a;
            size_t mn = i * 2 * d + ch, mx = mn + d;
            if (g->summary_format == FKV_SUMMARY_F16) {
                ((uint16_t *)summ)[mn] = fkv_f32_to_f16_down(lo);
                ((uint16_t *)summ)[mx] = fkv_f32_to_f16_up(hi);
            } else {
                ((float *)summ)[mn] = lo;
                ((float *)summ)[mx] = hi;
            }
        }
    }
}

/* Four sequences: 7 pages, 6 pages at another base after a gap, none (writes nothing), and 27
 * pages ending at the last summary (several tiles); the gaps must stay untouched. Their queries
 * are rows 3, 0, 1 and 3 of five (out of order, one twice, two unread). A second call, into
 * another output, masks every third (sequence, KV head) pair: their scores stay untouched.
 * f16 summaries (scores_f16) hold the f32 minima rounded down and the maxima up. */
static int scores_spec(cf_rng *rng, cf_spec *s, fkv_summary_format format) {
    fkv_kv_geom *g = &s->g;
    g->summary_format = format;
    uint32_t hq = g->n_kv_heads * g->group, d = g->head_dim, n_summ = 40;
    int32_t o1 = (int32_t)(3 + hq * 7 + 5), o3 = o1 + (int32_t)(hq * 6 + 2);
    int32_t desc_v[16] = {1, 7, 3, 3, 5, 6, o1, 0, 0, 0, 0, 1, 13, 27, o3, 3};
    size_t out_len = (size_t)o3 + hq * 27 + 4;
    int q = (int)s->n_arr;
    float *qv = cf_add_input(s, "q", CF_IN_OFF, (size_t)5 * hq * d * 4);
    int desc = (int)s->n_arr;
    int32_t *dv = cf_add_input(s, "desc", 12, sizeof desc_v);
    int sm = (int)s->n_arr;
    void *summ = cf_add_input(s, "summaries", 0, (size_t)n_summ * fkv_summary_bytes(g));
    int out = (int)s->n_arr;
    cf_add_output(s, "scores", CF_GUARD, out_len * 4, CF_GUARD, CF_F32);
    int mask = (int)s->n_arr;
    int32_t *mv = cf_add_input(s, "mask", 4, (size_t)4 * g->n_kv_heads * 4);
    int out_m = (int)s->n_arr;
    cf_add_output(s, "scores_masked", CF_GUARD, out_len * 4, CF_GUARD, CF_F32);
    if (!cf_spec_ok(s))
        return -1;
    for (uint32_t i = 0; i < 4 * g->n_kv_heads; i++)
        mv[i] = i % 3 == 1 ? 0 : (int32_t)i + 1; /* any value but 0 selects */
    fill_f32(rng, qv, (size_t)5 * hq * d);
    memcpy(dv, desc_v, sizeof desc_v);
    fill_summaries(rng, g, summ, n_summ);
    for (int masked = 0; masked < 2; masked++) {
        cf_call *c = cf_add_call(s, CF_SCORES, masked ? BQ : CQ);
        if (c == NULL)
            return -1;
        c->b[0] = at(q, CF_IN_OFF), c->b[1] = at(desc, 12), c->b[2] = at(sm, 0);
        c->b[3] = at(masked ? out_m : out, CF_GUARD), c->n = 4;
        if (masked)
            c->b[4] = at(mask, 4);
    }
    return 1;
}

static int build_scores(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    return scores_spec(rng, s, FKV_SUMMARY_F32);
}

static int build_scores_f16(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    return scores_spec(rng, s, FKV_SUMMARY_F16);
}

/* Scores the usual arithmetic cannot take (CPU devices' 16-lane pass takes them again with
 * fmax, docs/opencl.md): one sequence of 45 pages from summary 0 (passes of 16 pages and a
 * short one) reads query row 0, whose channel 4 is zero in every head and whose first head's
 * channel 0 is positive; its summaries hold, in KV head 0, an infinite maximum in channel 4
 * of page 3 and an infinite minimum in channel 4 of page 12 (0 * inf: a NaN in either
 * product, which the max skips), an infinite minimum in channel 1 of page 9 (the last KV
 * head: infinite products), minima above maxima in channel 2 of page 20 (every KV head) and
 * an infinite maximum in channel 0 of page 40 (an infinite score for the first head, in the
 * short pass). A second sequence of 20 pages from summary 8 reads row 1, whose first head has
 * a NaN in channel 3 and whose last head an infinity in channel 4 (NaN and infinite scores).
 * Channels are taken modulo head_dim; at head_dim 5 the row-0 ones stay distinct. */
static int build_scores_edges(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    fkv_kv_geom *g = &s->g;
    g->summary_format = FKV_SUMMARY_F32;
    uint32_t hk = g->n_kv_heads, hq = hk * g->group, d = g->head_dim, n_summ = 48;
    int32_t o1 = (int32_t)(hq * 45 + 3);
    int32_t desc_v[8] = {0, 45, 0, 0, 8, 20, o1, 1};
    size_t out_len = (size_t)o1 + hq * 20 + 2;
    int q = (int)s->n_arr;
    float *qv = cf_add_input(s, "q", CF_IN_OFF, (size_t)2 * hq * d * 4);
    int desc = (int)s->n_arr;
    int32_t *dv = cf_add_input(s, "desc", 12, sizeof desc_v);
    int sm = (int)s->n_arr;
    float *summ = cf_add_input(s, "summaries", 0, (size_t)n_summ * fkv_summary_bytes(g));
    int out = (int)s->n_arr;
    cf_add_output(s, "scores", CF_GUARD, out_len * 4, CF_GUARD, CF_F32);
    if (!cf_spec_ok(s))
        return -1;
    fill_f32(rng, qv, (size_t)2 * hq * d);
    for (uint32_t i = 0; i < hq; i++)
        qv[(size_t)i * d + 4 % d] = 0.0f;
    qv[0] = fabsf(qv[0]) + 0.5f;
    qv[(size_t)hq * d + 3 % d] = NAN;
    qv[(size_t)(2 * hq - 1) * d + 4 % d] = INFINITY;
    memcpy(dv, desc_v, sizeof desc_v);
    fill_summaries(rng, g, summ, n_summ);
    /* page p's minima of KV head h at (p * hk + h) * 2d, its maxima d further */
    summ[(size_t)3 * hk * 2 * d + d + 4 % d] = INFINITY;
    summ[(size_t)12 * hk * 2 * d + 4 % d] = -INFINITY;
    summ[((size_t)9 * hk + hk - 1) * 2 * d + 1 % d] = -INFINITY;
    for (uint32_t h = 0; h < hk; h++) {
        float *lo = summ + ((size_t)20 * hk + h) * 2 * d + 2 % d, t = lo[0];
        lo[0] = lo[d], lo[d] = t;
    }
    summ[(size_t)40 * hk * 2 * d + d] = INFINITY;
    cf_call *c = cf_add_call(s, CF_SCORES, CQ);
    if (c == NULL)
        return -1;
    c->b[0] = at(q, CF_IN_OFF), c->b[1] = at(desc, 12), c->b[2] = at(sm, 0);
    c->b[3] = at(out, CF_GUARD), c->n = 2;
    return 1;
}

/* Flags may differ from the reference only where the similarity is within tol of tau. */
static void compare_flags(const cf_spec *s, unsigned char **ref, unsigned char **dut, double tol,
                          cf_result *r) {
    size_t ties = 0;
    for (uint32_t k = 0; k < s->n_call; k++) {
        const cf_call *c = &s->call[k];
        if (c->kind != CF_COSINE && c->kind != CF_SCORES_CHECK)
            continue;
        int fused = c->kind == CF_SCORES_CHECK; /* its sims and flags are b[5], b[6] */
        int is = c->b[fused ? 5 : 2].arr, ifl = c->b[fused ? 6 : 3].arr;
        const cf_arr *sims = &s->arr[is], *flags = &s->arr[ifl];
        const unsigned char *fd = dut[ifl] + flags->pay_off;
        const unsigned char *fr = ref[ifl] + flags->pay_off;
        const unsigned char *sr = ref[is] + sims->pay_off;
        for (size_t i = 0; i < flags->pay_size / 4; i++) {
            int32_t x = cf_i32_at(fd, i), y = cf_i32_at(fr, i);
            float sim = cf_f32_at(sr, i);
            if (x == y)
                continue;
            if (fabs((double)sim - c->x) <= tol)
                ties++;
            else
                cf_fail(r, "%s: #%zu is %d, reference %d (sim %.6f, tau %.2f: not a tie)",
                        flags->label, i, x, y, (double)sim, (double)c->x);
        }
    }
    if (ties && r->status == CF_PASS)
        snprintf(r->message, sizeof r->message, "%zu flag(s) differ on ties (|sim - tau| <= %g)",
                 ties, tol);
}

/* The arrays and call of one cosine_flags call of n sequences at tau (labels: q_cur, q_prev,
 * sims, flags, prev_rows); 0 when out of memory. Sequence i's previous query is row i + 2 of
 * q_prev (*prev points at row 2; rows 0 and 1 hold other data), except sequence `none`, which
 * has none (row -1; n or more: every sequence has one). */
static int cosine_call(cf_spec *s, const char *const labels[5], uint32_t n, float tau,
                       size_t cur_off, fkv_queue q, uint32_t none, cf_rng *rng, float **cur,
                       float **prev) {
    const fkv_kv_geom *g = &s->g;
    size_t hk = g->n_kv_heads, row = hk * g->group * g->head_dim;
    size_t q_bytes = (size_t)n * row * 4;
    int ic = (int)s->n_arr;
    *cur = cf_add_input(s, labels[0], cur_off, q_bytes);
    int ip = (int)s->n_arr;
    float *prev_all = cf_add_input(s, labels[1], CF_IN_OFF, q_bytes + 2 * row * 4);
    *prev = prev_all ? prev_all + 2 * row : NULL;
    int ir = (int)s->n_arr;
    int32_t *rows = cf_add_input(s, labels[4], 8, (size_t)n * 4);
    int is = (int)s->n_arr;
    cf_set_shape(cf_add_output(s, labels[2], CF_GUARD, n * hk * 4, CF_GUARD, CF_F32), n, "seq",
                 (uint32_t)hk, "KV head", 1, "-");
    int iflags = (int)s->n_arr;
    cf_add_output(s, labels[3], CF_GUARD, n * hk * 4, CF_GUARD, CF_I32);
    cf_call *c = cf_add_call(s, CF_COSINE, q);
    if (!cf_spec_ok(s) || c == NULL)
        return 0;
    fill_f32(rng, prev_all, 2 * row);
    for (uint32_t i = 0; i < n; i++)
        rows[i] = i == none ? -1 : (int32_t)i + 2;
    c->b[0] = at(ic, cur_off), c->b[1] = at(ip, CF_IN_OFF), c->b[2] = at(is, CF_GUARD);
    c->b[3] = at(iflags, CF_GUARD), c->b[4] = at(ir, 8), c->n = n, c->x = tau;
    return 1;
}

static const char *const cosine_labels[5] = {"q_cur", "q_prev", "sims", "flags", "prev_rows"};
static const char *const cosine_labels_b[5] = {"q_cur_b", "q_prev_b", "sims_b", "flags_b",
                                               "prev_rows_b"};

/* Call one (tau 0.9): previous = current + noise of a per-head size (similarities from about
 * 0.55 to 1), a zero current query, identical queries, a zero previous query, opposite ones
 * (cosine -1), near copies mixed within a group, and a sequence without a previous query
 * (every head flagged, similarity NaN). Call two (tau 0.6): pairs from identical to
 * unrelated, some negated, so the similarities span [-1, 1], a zero current query and a
 * sequence without a previous query. The previous queries are read through row tables. */
static int build_cosine(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    const fkv_kv_geom *g = &s->g;
    uint32_t hq = g->n_kv_heads * g->group, d = g->head_dim, n = 7, n2 = 4;
    float *cur, *prev, *cur2, *prev2;
    if (!cosine_call(s, cosine_labels, n, 0.9f, CF_IN_OFF, CQ, 6, rng, &cur, &prev) ||
        !cosine_call(s, cosine_labels_b, n2, 0.6f, 4, BQ, 1, rng, &cur2, &prev2))
        return -1;
    s->arr[4].custom = s->arr[9].custom = 1; /* flags: compare_flags allows ties */
    s->compare = compare_flags;
    for (uint32_t i = 0; i < n * hq; i++) {
        float beta = 0.05f + 1.5f * cf_uniform(rng);
        for (uint32_t ch = 0; ch < d; ch++) {
            float x = cf_normal(rng);
            cur[(size_t)i * d + ch] = x;
            prev[(size_t)i * d + ch] = x + beta * cf_normal(rng);
        }
    }
    memset(cur + (size_t)2 * hq * d, 0, (size_t)d * 4); /* a zero query: cosine 0 */
    memcpy(prev + (size_t)3 * hq * d, cur + (size_t)3 * hq * d, (size_t)hq * d * 4);
    for (uint32_t ch = 0; ch < d; ch++) {
        prev[(size_t)4 * hq * d + ch] = 0.0f;
        for (uint32_t h = 1; h < hq; h++)
            prev[((size_t)4 * hq + h) * d + ch] = -cur[((size_t)4 * hq + h) * d + ch];
        for (uint32_t h = 1; h < g->group && h < 3; h++)
            prev[((size_t)5 * hq + h) * d + ch] =
                cur[((size_t)5 * hq + h) * d + ch] * 0.5f + 0.01f * (float)ch;
    }
    for (size_t hi = 0; hi < (size_t)n2 * hq; hi++) {
        float mix = (float)(hi % 7) / 6.0f, sign = hi % 5 == 4 ? -1.0f : 1.0f;
        for (size_t ch = 0; ch < d; ch++) {
            float x = cf_normal(rng), noise = cf_normal(rng);
            cur2[hi * d + ch] = x;
            prev2[hi * d + ch] = sign * ((1.0f - mix) * x + mix * noise);
        }
    }
    memset(cur2, 0, (size_t)d * 4);
    return 1;
}

/* The NaN rule (backend.h): (seq 0, KV head 0) holds a NaN in q_cur, (seq 1, last KV head) an
 * infinity in q_prev; every other query is the same in both, so its similarity is about 1.
 * Whatever the reference says, the DUT must give NaN similarities and flag 1 there, and flag
 * 0 with similarities near 1 elsewhere (tau is far below). */
static void compare_nan(const cf_spec *s, unsigned char **ref, unsigned char **dut, double tol,
                        cf_result *r) {
    (void)ref;
    uint32_t hk = s->g.n_kv_heads, n = s->call[0].n;
    const unsigned char *sims = dut[3] + s->arr[3].pay_off;
    for (size_t i = 0; i < (size_t)n * hk; i++) {
        int bad = i == 0 || i == (size_t)2 * hk - 1;
        float sim = cf_f32_at(sims, i);
        int32_t flag = cf_i32_at(dut[4] + s->arr[4].pay_off, i);
        if (bad && (!isnan(sim) || flag != 1))
            cf_fail(r, "seq %zu KV head %zu: a query holding a NaN or an infinity gives "
                    "similarity %g and flag %d (want NaN and 1)", i / hk, i % hk, (double)sim,
                    flag);
        if (!bad && (!(fabs((double)sim - 1.0) <= 1e-3 + tol) || flag != 0))
            cf_fail(r, "seq %zu KV head %zu: identical queries give similarity %g and flag %d "
                    "(want 1 and 0)", i / hk, i % hk, (double)sim, flag);
    }
}

static int build_cosine_nan(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    const fkv_kv_geom *g = &s->g;
    uint32_t hk = g->n_kv_heads, hq = hk * g->group, d = g->head_dim, n = 2;
    float *cur, *prev;
    if (!cosine_call(s, cosine_labels, n, -0.5f, CF_IN_OFF, BQ, n, rng, &cur, &prev))
        return -1;
    s->arr[3].custom = 1; /* sims: NaN by design, checked by compare_nan */
    fill_f32(rng, cur, (size_t)n * hq * d);
    memcpy(prev, cur, (size_t)n * hq * d * 4);
    cur[(size_t)(g->group - 1) * d + d / 2] = NAN;
    prev[((size_t)hq + (size_t)(hk - 1) * g->group) * d] = INFINITY;
    s->compare = compare_nan;
    return 1;
}

/* scores_check's outputs must be what the same device's cosine_flags and scores wrote from the
 * same inputs (calls 0 and 1), bit for bit (backend.h); against the reference, the flags
 * allow ties as cosine_flags' do. */
static void compare_scores_check(const cf_spec *s, unsigned char **ref, unsigned char **dut,
                                 double tol, cf_result *r) {
    compare_flags(s, ref, dut, tol, r);
    const cf_call *cos = &s->call[0], *sc = &s->call[1], *fused = &s->call[2];
    const int pairs[3][2] = {{fused->b[3].arr, sc->b[3].arr},
                             {fused->b[5].arr, cos->b[2].arr},
                             {fused->b[6].arr, cos->b[3].arr}};
    for (int i = 0; i < 3; i++) {
        const cf_arr *a = &s->arr[pairs[i][0]], *b = &s->arr[pairs[i][1]];
        if (memcmp(dut[pairs[i][0]], dut[pairs[i][1]], a->size) != 0)
            cf_fail(r, "%s is not bit for bit the device's own %s (its %s op)", a->label,
                    b->label, i ? "cosine_flags" : "scores");
    }
}

/* scores_check (the correction's check in the scores launch): four sequences with the scores
 * spec's descriptors (7 pages, 6 after a gap, none, 27 ending at the last summary) reading
 * query rows 5, 6, 2 and 8 of nine; the check's current queries are rows 5 to 8 (cur_off) and
 * its previous ones rows 0, none (-1: NaN, flagged), 3 and 4 through a row table, near
 * copies of the current ones with noise of a per-head size (similarities about 0.55 to 1
 * around tau 0.8), one head negated (about -1) and one zero query (0). The sequence without
 * pages is still checked. The same inputs go through cosine_flags and scores into other
 * outputs first: the DUT's fused outputs must be those bit for bit (compare_scores_check). */
static int build_scores_check(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)r;
    s->uses_fallback = !FKV_HAS_ENTRY(fkv_device_ops(env->dut.dev), scores_check);
    const fkv_kv_geom *g = &s->g;
    uint32_t hk = g->n_kv_heads, hq = hk * g->group, d = g->head_dim, n = 4, n_summ = 40;
    size_t row = (size_t)hq * d, cur_off = CF_IN_OFF + 5 * row * 4;
    int32_t o1 = (int32_t)(3 + hq * 7 + 5), o3 = o1 + (int32_t)(hq * 6 + 2);
    const int32_t desc_v[16] = {1, 7, 3, 5, 5, 6, o1, 6, 0, 0, 0, 2, 13, 27, o3, 8};
    const int32_t rows_v[4] = {0, -1, 3, 4};
    size_t out_len = (size_t)o3 + hq * 27 + 4;
    const float tau = 0.8f;
    int q = (int)s->n_arr;
    float *qv = cf_add_input(s, "q", CF_IN_OFF, 9 * row * 4);
    int desc = (int)s->n_arr;
    int32_t *dv = cf_add_input(s, "desc", 12, sizeof desc_v);
    int rows = (int)s->n_arr;
    int32_t *rv = cf_add_input(s, "prev_rows", 8, sizeof rows_v);
    int sm = (int)s->n_arr;
    void *summ = cf_add_input(s, "summaries", 0, (size_t)n_summ * fkv_summary_bytes(g));
    int out[2], sims[2], flags[2];
    static const char *const labels[2][3] = {{"scores", "sims", "flags"},
                                             {"scores_sep", "sims_sep", "flags_sep"}};
    for (int k = 0; k < 2; k++) { /* the fused op's outputs, then the separate ops' */
        out[k] = (int)s->n_arr;
        cf_add_output(s, labels[k][0], CF_GUARD, out_len * 4, CF_GUARD, CF_F32);
        sims[k] = (int)s->n_arr;
        cf_set_shape(cf_add_output(s, labels[k][1], CF_GUARD, n * hk * 4, CF_GUARD, CF_F32), n,
                     "seq", hk, "KV head", 1, "-");
        flags[k] = (int)s->n_arr;
        cf_add_output(s, labels[k][2], CF_GUARD, n * hk * 4, CF_GUARD, CF_I32)->custom = 1;
    }
    cf_call *cos = cf_add_call(s, CF_COSINE, CQ), *sc = cf_add_call(s, CF_SCORES, CQ);
    cf_call *c = cf_add_call(s, CF_SCORES_CHECK, BQ);
    if (!cf_spec_ok(s) || c == NULL)
        return -1;
    s->compare = compare_scores_check;
    memcpy(dv, desc_v, sizeof desc_v);
    memcpy(rv, rows_v, sizeof rows_v);
    fill_f32(rng, qv, 9 * row);
    fill_summaries(rng, g, summ, n_summ);
    for (uint32_t b = 0; b < n; b++) {
        if (rows_v[b] < 0)
            continue;
        const float *cur = qv + (5 + b) * row;
        float *prev = qv + (size_t)rows_v[b] * row;
        for (uint32_t h = 0; h < hq; h++) {
            float beta = 0.05f + 1.5f * cf_uniform(rng), sign = b == 2 && h == 1 ? -1.0f : 1.0f;
            for (uint32_t ch = 0; ch < d; ch++)
                prev[h * d + ch] = sign * (cur[h * d + ch] + beta * cf_normal(rng));
        }
    }
    memset(qv + 8 * row, 0, (size_t)d * 4); /* a zero current query: cosine 0 */
    cos->b[0] = at(q, cur_off), cos->b[1] = at(q, CF_IN_OFF), cos->b[2] = at(sims[1], CF_GUARD);
    cos->b[3] = at(flags[1], CF_GUARD), cos->b[4] = at(rows, 8), cos->n = n, cos->x = tau;
    sc->b[0] = at(q, CF_IN_OFF), sc->b[1] = at(desc, 12), sc->b[2] = at(sm, 0);
    sc->b[3] = at(out[1], CF_GUARD), sc->n = n;
    c->b[0] = sc->b[0], c->b[1] = sc->b[1], c->b[2] = sc->b[2], c->b[3] = at(out[0], CF_GUARD);
    c->b[4] = cos->b[4], c->b[5] = at(sims[0], CF_GUARD), c->b[6] = at(flags[0], CF_GUARD);
    c->b[7] = cos->b[0], c->n = n, c->x = tau;
    return 1;
}

/* The quantize's edge groups in every slot (common/hostfmt.h): in KV head 0, a constant key
 * channel (scale 0), a key channel with a NaN, one with an infinity and one beyond the f16
 * range (NaN groups), a value token of f16 subnormals and zeros of both signs, and a value
 * token holding exact f16 values (ties of the directed roundings). */
static void quantize_edges(cf_spec *s, int kp, int vp, uint32_t n_slots) {
    const fkv_kv_geom *g = &s->g;
    size_t re = row_elems(g), d = g->head_dim, p = g->page_size;
    void *k = s->arr[kp].init, *v = s->arr[vp].init;
    for (size_t slot = 0; slot < n_slots; slot++) {
        size_t row0 = slot * p * re;
        for (size_t t = 0; t < p; t++) {
            size_t e = row0 + t * re;
            fkv_store(k, g->dtype, e + 0, 0.3125f);
            if (t == p - 1) {
                fkv_store(k, g->dtype, e + 1, NAN);
                fkv_store(k, g->dtype, e + 2, -INFINITY);
                fkv_store(k, g->dtype, e + 3, g->dtype == FKV_F16 ? 65504.0f : 1e8f);
            }
        }
        size_t v1 = row0 + (p > 1 ? 1 : 0) * re, v0 = row0;
        for (size_t c = 0; c < d; c++) {
            static const float tiny[4] = {5.9604645e-8f, -0.0f, -1.7881393e-7f, 0.0f};
            fkv_store(v, g->dtype, v1 + c, tiny[c % 4] * (float)(1 + c % 3));
            fkv_store(v, g->dtype, v0 + c, (float)((int)(c % 7) - 3) * 0.25f);
        }
    }
}

/* The quantize (pack_hnd into q8/q4 units): per unit, the f16 scales and zeros must be the
 * reference's bytes and every code equal or within one code of the reference's (a device's
 * f32 division may round the last bit differently and move a code across a rounding tie). */
static void compare_quantized(const cf_spec *s, unsigned char **ref, unsigned char **dut,
                              double tol, cf_result *r) {
    const fkv_kv_geom *g = &s->g;
    uint32_t bits = fkv_hostfmt_bits(g->host_format), p = g->page_size, d = g->head_dim;
    size_t unit = fkv_unit_bytes(g), codes = 2 * (size_t)p * d * bits / 8;
    for (uint32_t i = 0; i < s->n_arr; i++) {
        const cf_arr *a = &s->arr[i];
        if (!a->output || !a->custom)
            continue;
        size_t n_units = a->pay_size / unit, off_by_one = 0, worst = 0;
        for (size_t u = 0; u < n_units; u++) {
            const unsigned char *x = dut[i] + a->pay_off + u * unit;
            const unsigned char *y = ref[i] + a->pay_off + u * unit;
            if (memcmp(x + codes, y + codes, unit - codes) != 0) {
                size_t b = codes;
                while (x[b] == y[b])
                    b++;
                size_t word = (b - codes) / 2, part = word < d ? 0 : word < 2 * (size_t)d ? 1
                                                                  : word < 2 * (size_t)d + p ? 2
                                                                                             : 3;
                static const char *const parts[] = {"K scale", "K zero", "V scale", "V zero"};
                size_t group = part < 2 ? word - part * d : word - 2 * (size_t)d - (part - 2) * p;
                cf_fail(r, "%s: unit %zu: %s %zu is 0x%02x%02x, reference 0x%02x%02x (f16 scales "
                        "and zeros must be exact)", a->label, u, parts[part], group,
                        x[codes + 2 * word + 1], x[codes + 2 * word], y[codes + 2 * word + 1],
                        y[codes + 2 * word]);
                return;
            }
            for (size_t e = 0; e < 2 * (size_t)p * d; e++) {
                unsigned cx = bits == 8 ? x[e] : (x[e / 2] >> (e % 2 * 4)) & 0xfu;
                unsigned cy = bits == 8 ? y[e] : (y[e / 2] >> (e % 2 * 4)) & 0xfu;
                size_t diff = cx > cy ? cx - cy : cy - cx;
                off_by_one += diff != 0;
                if (diff > worst)
                    worst = diff;
                if (diff > tol) {
                    cf_fail(r, "%s: unit %zu: %s code %zu (token %zu, channel %zu) is %u, "
                            "reference %u", a->label, u, e < (size_t)p * d ? "K" : "V",
                            e % ((size_t)p * d), e % ((size_t)p * d) / d, e % d, cx, cy);
                    return;
                }
            }
        }
        cf_check_error(r, (double)worst, tol, "%s codes (%zu units, %zu code(s) one off)",
                       a->label, n_units, off_by_one);
    }
}

/* Three pages (the last slot among them) to a destination at the guard, then five to one at
 * an offset that is not 16-byte aligned (the scalar path). */
static int build_pack(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    const fkv_kv_geom *g = &s->g;
    size_t page_bytes = g->n_kv_heads * fkv_unit_bytes(g), odd = CF_GUARD + 3 * esize(g);
    uint32_t n_slots = 6, n = 3, n2 = 5;
    int quantized = g->host_format != FKV_HOST_SAME;
    cf_elem elem = quantized ? CF_BYTES : CF_STORE;
    int kp = pool_input(s, rng, "kpool", n_slots, 0), vp = pool_input(s, rng, "vpool", n_slots, 0);
    int gs = (int)s->n_arr;
    int32_t *gv = cf_add_input(s, "gslots", CF_IN_OFF, n * 4);
    int gs2 = (int)s->n_arr;
    int32_t *gv2 = cf_add_input(s, "gslots_b", 4, n2 * 4);
    int dst = (int)s->n_arr;
    cf_arr *out = cf_add_output(s, "dst", CF_GUARD, n * page_bytes, CF_GUARD, elem);
    int dst2 = (int)s->n_arr;
    cf_arr *out2 = cf_add_output(s, "dst_odd", odd, n2 * page_bytes, CF_GUARD, elem);
    if (!cf_spec_ok(s))
        return -1;
    if (quantized) { /* units: compare_quantized */
        out->custom = out2->custom = 1;
        quantize_edges(s, kp, vp, n_slots);
        s->compare = compare_quantized;
    } else {
        cf_set_shape(out, n, "page", g->n_kv_heads * 2 * g->page_size, "(KV head, K|V, token)",
                     g->head_dim, "ch");
        cf_set_shape(out2, n2, "page", g->n_kv_heads * 2 * g->page_size,
                     "(KV head, K|V, token)", g->head_dim, "ch");
    }
    uint32_t pick[8];
    pick_with_last(rng, n_slots, n, pick);
    for (uint32_t i = 0; i < n; i++)
        gv[i] = (int32_t)pick[i];
    cf_pick_distinct(rng, n_slots, n2, pick);
    for (uint32_t i = 0; i < n2; i++)
        gv2[i] = (int32_t)pick[i];
    cf_call *c = cf_add_call(s, CF_PACK, CQ);
    c->b[0] = at(kp, 0), c->b[1] = at(vp, 0), c->b[2] = at(gs, CF_IN_OFF);
    c->b[3] = at(dst, CF_GUARD), c->n = n;
    c = cf_add_call(s, CF_PACK, BQ);
    c->b[0] = at(kp, 0), c->b[1] = at(vp, 0), c->b[2] = at(gs2, 4), c->b[3] = at(dst2, odd);
    c->n = n2;
    return 1;
}

/* Units into pools: five (the last head of the last slot among them) from a source at an
 * offset, then up to nine from one at an offset that is not 16-byte aligned. */
static int build_scatter(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    const fkv_kv_geom *g = &s->g;
    size_t es = esize(g), unit = fkv_unit_bytes(g), odd = 5 * es;
    uint32_t n_slots = 6, n = 5, n2 = 6 * g->n_kv_heads < 9 ? 6 * g->n_kv_heads : 9;
    int src = (int)s->n_arr;
    void *sv = cf_add_input(s, "src", CF_IN_OFF, n * unit);
    int units = (int)s->n_arr;
    int32_t *uv = cf_add_input(s, "units", CF_IN_OFF, n * 8);
    int src2 = (int)s->n_arr;
    void *sv2 = cf_add_input(s, "src_odd", odd, n2 * unit);
    int units2 = (int)s->n_arr;
    int32_t *uv2 = cf_add_input(s, "units_b", 0, n2 * 8);
    int kp = pool_output(s, "kpool", n_slots), vp = pool_output(s, "vpool", n_slots);
    if (!cf_spec_ok(s))
        return -1;
    if (g->host_format != FKV_HOST_SAME) {
        fill_units(rng, sv, n * unit);
        fill_units(rng, sv2, n2 * unit);
    } else {
        fill_store(rng, sv, g->dtype, n * unit / es, 0);
        fill_store(rng, sv2, g->dtype, n2 * unit / es, 0);
    }
    pick_units(rng, n_slots, g->n_kv_heads, n, 1, uv);
    pick_units(rng, n_slots, g->n_kv_heads, n2, 0, uv2);
    randomize_payload(s, rng, kp);
    randomize_payload(s, rng, vp);
    cf_call *c = cf_add_call(s, CF_SCATTER, CQ);
    c->b[0] = at(src, CF_IN_OFF), c->b[1] = at(units, CF_IN_OFF), c->b[2] = at(kp, 0);
    c->b[3] = at(vp, 0), c->n = n;
    c = cf_add_call(s, CF_SCATTER, BQ);
    c->b[0] = at(src2, odd), c->b[1] = at(units2, 0), c->b[2] = at(kp, 0), c->b[3] = at(vp, 0);
    c->n = n2;
    return 1;
}

/* The device unit table of recall_direct: (slot, head) pairs from pick_units and the units'
 * sources, four ints each. */
static void direct_table(const fkv_kv_geom *g, uint32_t n, const int32_t *pairs,
                         const fkv_direct_src *srcs, int32_t *table) {
    for (uint32_t i = 0; i < n; i++) {
        table[4 * i] = pairs[2 * i];
        table[4 * i + 1] = pairs[2 * i + 1];
        table[4 * i + 2] = (int32_t)srcs[i].host;
        table[4 * i + 3] = (int32_t)(uint32_t)(srcs[i].offset / esize(g));
    }
}

/* Zero-copy recall. From one host allocation: five units (the last head of the last slot
 * among them) at element-aligned offsets that are not unit-aligned. Then, in one call, up to
 * ten units taken in turn from three allocations: unit-aligned offsets in reverse order from
 * the first, the last unit of the second (it ends where the allocation does) and units
 * before it, element-aligned ones from the third. */
static int build_recall(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    if (!FKV_HAS_ENTRY(fkv_device_ops(env->dut.dev), recall_direct)) {
        cf_skip(r, "recall_direct not provided (optional: the core uses staged recall here)");
        return 0;
    }
    const fkv_kv_geom *g = &s->g;
    size_t es = esize(g), unit_bytes = fkv_unit_bytes(g);
    uint32_t n_slots = 6, n = 5, n2 = 6 * g->n_kv_heads < 10 ? 6 * g->n_kv_heads : 10;
    int host[3];
    size_t host_bytes[3] = {16 * unit_bytes + 64, 4 * unit_bytes, 6 * unit_bytes + 32};
    cf_arr *ha[3];
    for (int h = 0; h < 3; h++) {
        static const char *const names[] = {"host", "host_b", "host_c"};
        host[h] = (int)s->n_arr;
        ha[h] = cf_add_arr(s, names[h], host_bytes[h]);
    }
    /* room after the unit entries for the device's words of up to three hosts (spec.c writes
     * them where the backend has direct_host_words) */
    size_t words = 3 * FKV_DIRECT_HOST_INTS * sizeof(int32_t);
    int units = (int)s->n_arr;
    int32_t *uv = cf_add_input(s, "units", CF_IN_OFF, n * 16 + words);
    int units2 = (int)s->n_arr;
    int32_t *uv2 = cf_add_input(s, "units_b", 16, n2 * 16 + words);
    int kp = pool_output(s, "kpool", n_slots), vp = pool_output(s, "vpool", n_slots);
    if (!cf_spec_ok(s))
        return -1;
    for (int h = 0; h < 3; h++) {
        ha[h]->mem = CF_PINNED;
        if (g->host_format != FKV_HOST_SAME)
            fill_units(rng, ha[h]->init, ha[h]->size);
        else
            fill_store(rng, ha[h]->init, g->dtype, ha[h]->size / es, 0);
    }
    uint32_t pos[16];
    int32_t pairs[2 * 16];
    cf_pick_distinct(rng, 15, n, pos);
    fkv_direct_src *src = s->units_src + s->n_units_src;
    for (uint32_t i = 0; i < n; i++) /* not unit-aligned: any element-aligned offset is valid */
        src[i] = (fkv_direct_src){.host = 0, .offset = pos[i] * unit_bytes + 6 * es};
    pick_units(rng, n_slots, g->n_kv_heads, n, 1, pairs);
    direct_table(g, n, pairs, src, uv);
    fkv_direct_src *src2 = src + n;
    for (uint32_t i = 0; i < n2; i++) {
        uint32_t h = i % 3, k = i / 3;
        uint64_t off = h == 0   ? (uint64_t)(n2 - 1 - i) * unit_bytes
                       : h == 1 ? (uint64_t)(3 - k % 4) * unit_bytes
                                : k * unit_bytes + 4 * es;
        src2[i] = (fkv_direct_src){.host = h, .offset = off};
    }
    s->n_units_src += n + n2;
    pick_units(rng, n_slots, g->n_kv_heads, n2, 0, pairs);
    direct_table(g, n2, pairs, src2, uv2);
    randomize_payload(s, rng, kp);
    randomize_payload(s, rng, vp);
    cf_call *c = cf_add_call(s, CF_RECALL, CQ);
    c->b[0] = at(host[0], 0), c->b[1] = at(units, CF_IN_OFF), c->b[2] = at(kp, 0);
    c->b[3] = at(vp, 0), c->n = n, c->first = 0, c->size = 1;
    c = cf_add_call(s, CF_RECALL, BQ);
    c->b[0] = at(host[0], 0), c->b[1] = at(units2, 16), c->b[2] = at(kp, 0), c->b[3] = at(vp, 0);
    c->b[4] = at(host[1], 0), c->b[5] = at(host[2], 0);
    c->n = n2, c->first = n, c->size = 3;
    return 1;
}

/* Per (seq, KV head) slot lists for `n_seqs` sequences written into heads/entries (entry 0
 * left unused, lists laid out in shuffled order): 1 to 6 distinct slots, full pages except a
 * partial last one, and a page with no valid token second in lists of three or more; the
 * list of (seq 0, KV head 0) is empty. Returns the entries used. */
static uint32_t random_lists(cf_rng *rng, const fkv_kv_geom *g, uint32_t n_seqs, uint32_t n_slots,
                             int32_t *heads, int32_t *entries) {
    uint32_t n_bh = n_seqs * g->n_kv_heads, e = 1, order[64], slots[16];
    entries[0] = entries[1] = 999; /* never read */
    cf_pick_distinct(rng, n_bh, n_bh, order);
    for (uint32_t k = 0; k < n_bh; k++) {
        uint32_t bh = order[k], count = bh == 0 ? 0 : 1 + cf_below(rng, 6);
        cf_pick_distinct(rng, n_slots, count, slots);
        heads[2 * bh] = (int32_t)e;
        heads[2 * bh + 1] = (int32_t)count;
        for (uint32_t i = 0; i < count; i++, e++) {
            uint32_t valid = g->page_size;
            if (i + 1 == count)
                valid = 1 + cf_below(rng, g->page_size);
            else if (i == 1 && count >= 3)
                valid = 0;
            entries[2 * e] = (int32_t)slots[i];
            entries[2 * e + 1] = (int32_t)valid;
        }
    }
    return e;
}

/* Paged attention, three calls over one pair of pools (10 slots and a partial trailing row):
 *  - three sequences: seq 0 four full pages (a context that is a page multiple; the pool's
 *    last slot on KV head 0), seq 1 three full pages and a partial last one, seq 2 an empty
 *    list on KV head 0 (zeros) and elsewhere a partial page before a full one;
 *  - three sequences of random_lists (entry 0 unused, shuffled layout, an empty list and a
 *    page with no valid token);
 *  - one sequence: KV head 0 empty, KV head 1 a full page then a partial one. */
static int build_attention(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    const fkv_kv_geom *g = &s->g;
    uint32_t hk = g->n_kv_heads, hq = hk * g->group, d = g->head_dim, p = g->page_size;
    uint32_t n_seqs = 3, n_slots = 10;
    int32_t heads_v[2 * 3 * 3], entries_v[2 * 3 * 3 * 4];
    uint32_t e = 0;
    for (uint32_t b = 0; b < n_seqs; b++)
        for (uint32_t h = 0; h < hk; h++) {
            uint32_t slots[4], count = b == 2 ? (h == 0 ? 0 : 2) : 4;
            cf_pick_distinct(rng, n_slots - 1, count, slots);
            if (b == 0 && h == 0)
                slots[cf_below(rng, count)] = n_slots - 1;
            heads_v[2 * (b * hk + h)] = (int32_t)e;
            heads_v[2 * (b * hk + h) + 1] = (int32_t)count;
            for (uint32_t k = 0; k < count; k++) {
                uint32_t valid = p;
                if ((b == 1 && k == count - 1) || (b == 2 && k == 0))
                    valid = 1 + cf_below(rng, p - 1);
                entries_v[2 * e] = (int32_t)slots[k];
                entries_v[2 * e + 1] = (int32_t)valid;
                e++;
            }
        }
    size_t qn = (size_t)n_seqs * hq * d;
    int q = (int)s->n_arr;
    float *qv = cf_add_input(s, "q", CF_IN_OFF, qn * 4);
    int heads = (int)s->n_arr;
    int32_t *hv = cf_add_input(s, "heads", CF_IN_OFF, (size_t)n_seqs * hk * 8);
    int entries = (int)s->n_arr;
    int32_t *ev = cf_add_input(s, "entries", CF_IN_OFF, (size_t)e * 8);
    int kp = pool_input(s, rng, "kpool", n_slots, 1), vp = pool_input(s, rng, "vpool", n_slots, 0);
    int out = (int)s->n_arr;
    cf_set_shape(cf_add_output(s, "out", CF_GUARD, qn * 4, CF_GUARD, CF_F32), n_seqs, "seq", hq,
                 "q head", d, "ch");
    int q2 = (int)s->n_arr;
    float *qv2 = cf_add_input(s, "q_b", 4, qn * 4);
    int heads2 = (int)s->n_arr;
    int32_t *hv2 = cf_add_input(s, "heads_b", 0, (size_t)n_seqs * hk * 8);
    int entries2 = (int)s->n_arr;
    int32_t *ev2 = cf_add_input(s, "entries_b", 16, ((size_t)n_seqs * hk * 6 + 1) * 8);
    int out2 = (int)s->n_arr;
    cf_set_shape(cf_add_output(s, "out_b", CF_GUARD, qn * 4, CF_GUARD, CF_F32), n_seqs, "seq", hq,
                 "q head", d, "ch");
    int q3 = (int)s->n_arr;
    float *qv3 = cf_add_input(s, "q_c", 16, (size_t)hq * d * 4);
    int heads3 = (int)s->n_arr;
    int32_t *hv3 = cf_add_input(s, "heads_c", 0, (size_t)hk * 8);
    int entries3 = (int)s->n_arr;
    int32_t *ev3 = cf_add_input(s, "entries_c", 0, (size_t)(2 + 2 * hk) * 8);
    int out3 = (int)s->n_arr;
    cf_set_shape(cf_add_output(s, "out_c", CF_GUARD, (size_t)hq * d * 4, CF_GUARD, CF_F32), 1,
                 "seq", hq, "q head", d, "ch");
    if (!cf_spec_ok(s))
        return -1;
    fill_f32(rng, qv, qn);
    memcpy(hv, heads_v, (size_t)n_seqs * hk * 8);
    memcpy(ev, entries_v, (size_t)e * 8);
    fill_f32(rng, qv2, qn);
    random_lists(rng, g, n_seqs, n_slots, hv2, ev2);
    fill_f32(rng, qv3, (size_t)hq * d);
    uint32_t e3 = 0;
    for (uint32_t h = 0; h < hk; h++) {
        uint32_t count = h == 0 ? 0 : 2;
        hv3[2 * h] = (int32_t)e3;
        hv3[2 * h + 1] = (int32_t)count;
        for (uint32_t k = 0; k < count; k++, e3++) {
            ev3[2 * e3] = (int32_t)(k == 0 ? 2 + h : 0);
            ev3[2 * e3 + 1] = (int32_t)(k == 0 ? p : p > 5 ? 5 : p - 1);
        }
    }
    float scale = 1.0f / sqrtf((float)d);
    cf_call *c = cf_add_call(s, CF_ATTENTION, CQ);
    c->b[0] = at(q, CF_IN_OFF), c->b[1] = at(heads, CF_IN_OFF), c->b[2] = at(entries, CF_IN_OFF);
    c->b[3] = at(kp, 0), c->b[4] = at(vp, 0), c->b[5] = at(out, CF_GUARD), c->n = n_seqs;
    c->x = scale;
    c = cf_add_call(s, CF_ATTENTION, BQ);
    c->b[0] = at(q2, 4), c->b[1] = at(heads2, 0), c->b[2] = at(entries2, 16);
    c->b[3] = at(kp, 0), c->b[4] = at(vp, 0), c->b[5] = at(out2, CF_GUARD), c->n = n_seqs;
    c->x = 0.1f;
    c = cf_add_call(s, CF_ATTENTION, CQ);
    c->b[0] = at(q3, 16), c->b[1] = at(heads3, 0), c->b[2] = at(entries3, 0);
    c->b[3] = at(kp, 0), c->b[4] = at(vp, 0), c->b[5] = at(out3, CF_GUARD), c->n = 1;
    c->x = 0.125f;
    return 1;
}

/* Dense attention over contiguous K/V buffers of exactly the tokens they hold: 3p + 7 tokens
 * (not a page multiple), 77 tokens, 1 token, and none (zeros). */
static int build_dense(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)r;
    const fkv_kv_geom *g = &s->g;
    uint32_t hq = g->n_kv_heads * g->group, d = g->head_dim, n_tok = 3 * g->page_size + 7;
    size_t es = esize(g), re = row_elems(g), qn = (size_t)hq * d;
    s->uses_fallback = !FKV_HAS_ENTRY(fkv_device_ops(env->dut.dev), attention_dense);
    int q = (int)s->n_arr;
    float *qv = cf_add_input(s, "q", CF_IN_OFF, qn * 4);
    int k = (int)s->n_arr;
    void *kv = cf_add_input(s, "k", 0, n_tok * re * es);
    int v = (int)s->n_arr;
    void *vv = cf_add_input(s, "v", 0, n_tok * re * es);
    int k77 = (int)s->n_arr;
    void *kv77 = cf_add_input(s, "k_77", 0, 77 * re * es);
    int v77 = (int)s->n_arr;
    void *vv77 = cf_add_input(s, "v_77", 0, 77 * re * es);
    static const char *const labels[4] = {"out", "out_77", "out_1", "out_0"};
    static const uint32_t counts[3] = {77, 1, 0};
    int out[4];
    for (int i = 0; i < 4; i++) {
        out[i] = (int)s->n_arr;
        cf_set_shape(cf_add_output(s, labels[i], CF_GUARD, qn * 4, CF_GUARD, CF_F32), 1, "seq", hq,
                     "q head", d, "ch");
    }
    if (!cf_spec_ok(s))
        return -1;
    fill_f32(rng, qv, qn);
    fill_store(rng, kv, g->dtype, n_tok * re, 1);
    fill_store(rng, vv, g->dtype, n_tok * re, 0);
    fill_store(rng, kv77, g->dtype, 77 * re, 1);
    fill_store(rng, vv77, g->dtype, 77 * re, 0);
    cf_call *c = cf_add_call(s, CF_DENSE, CQ);
    c->b[0] = at(q, CF_IN_OFF), c->b[1] = at(k, 0), c->b[2] = at(v, 0);
    c->b[3] = at(out[0], CF_GUARD), c->n = n_tok, c->x = 1.0f / sqrtf((float)d);
    static const float scales[3] = {0.1f, 0.7f, 0.1f};
    for (int i = 0; i < 3; i++) {
        c = cf_add_call(s, CF_DENSE, BQ);
        c->b[0] = at(q, CF_IN_OFF), c->b[1] = at(k77, 0), c->b[2] = at(v77, 0);
        c->b[3] = at(out[i + 1], CF_GUARD), c->n = counts[i];
        c->x = scales[i] / (i == 1 ? sqrtf((float)d) : 1.0f);
    }
    return 1;
}

/* ---- select_pages ---- */

/* Five sequences: 20, 7, 5, 2 and 37 pages with the first 2 excluded, so 18, 5, 3, 0 and 35
 * candidates, their scores at bases with gaps. */
#define SEL_SEQS 5
#define SEL_FIRST 2
static const int32_t sel_pages[SEL_SEQS] = {20, 7, 5, 2, 37};

/* How one selected (or not) page compares: its value within tol of the k-th value is a tie. */
static int sel_tie(double v, double kth, double tol) {
    return v == kth || fabs(v - kth) <= tol * fabs(kth) + 1e-30;
}

/* The records of every select_pages call: the same count of pages per (sequence, KV head),
 * ascending, among the candidates, the rest -1 with -inf; the DUT's set equal to the
 * reference's up to pages whose values tie the k-th value within tol; the values of common
 * pages within tol (relative), non-finite ones identical. */
static void compare_select(const cf_spec *s, unsigned char **ref, unsigned char **dut,
                           double tol, cf_result *r) {
    size_t ties = 0, hk = s->g.n_kv_heads;
    for (uint32_t ci = 0; ci < s->n_call && r->status != CF_FAIL; ci++) {
        const cf_call *c = &s->call[ci];
        if (c->kind != CF_SELECT)
            continue;
        const cf_arr *out = &s->arr[c->b[2].arr];
        const unsigned char *desc = s->arr[c->b[0].arr].init + c->b[0].off;
        const unsigned char *mask =
            c->b[3].arr >= 0 ? s->arr[c->b[3].arr].init + c->b[3].off : NULL;
        size_t k = c->size;
        for (size_t b = 0; b < c->n; b++)
            for (size_t h = 0; h < hk; h++) {
                if (mask && cf_i32_at(mask, b * hk + h) == 0) /* no record: undefined */
                    continue;
                size_t at_rec = out->pay_off + (b * hk + h) * 2 * k * 4;
                const unsigned char *rr = ref[c->b[2].arr] + at_rec, *dr = dut[c->b[2].arr] + at_rec;
                int32_t np = cf_i32_at(desc, FKV_SCORES_DESC_INTS * b + 1);
                size_t n_cand = np > SEL_FIRST ? (size_t)(np - SEL_FIRST) : 0;
                size_t kk = n_cand < k ? n_cand : k;
                double kth = kk ? cf_f32_at(rr, k + kk - 1) : 0; /* ascending pages: find min */
                for (size_t i = 0; i < kk; i++)
                    kth = cf_f32_at(rr, k + i) < kth ? cf_f32_at(rr, k + i) : kth;
                for (size_t i = 0; i < k; i++) {
                    int32_t dp = cf_i32_at(dr, i);
                    float dv = cf_f32_at(dr, k + i);
                    if (i >= kk) {
                        if (dp != -1 || !(isinf(dv) && dv < 0))
                            cf_fail(r, "%s: seq %zu head %zu entry %zu of %zu: page %d value %g, "
                                    "want -1, -inf", out->label, b, h, i, kk, dp, (double)dv);
                        continue;
                    }
                    if (dp < SEL_FIRST || dp >= np || (i > 0 && dp <= cf_i32_at(dr, i - 1))) {
                        cf_fail(r, "%s: seq %zu head %zu entry %zu: page %d is not a candidate "
                                "in ascending order", out->label, b, h, i, dp);
                        continue;
                    }
                    size_t j = 0; /* the page in the reference's record */
                    while (j < kk && cf_i32_at(rr, j) != dp)
                        j++;
                    if (j == kk) {
                        if (sel_tie(dv, kth, tol))
                            ties++;
                        else
                            cf_fail(r, "%s: seq %zu head %zu selects page %d (value %.9g) that "
                                    "the reference does not, k-th value %.9g: not a tie",
                                    out->label, b, h, dp, (double)dv, kth);
                        continue;
                    }
                    double rv = cf_f32_at(rr, k + j);
                    int ok = isfinite(rv) ? fabs(dv - rv) <= tol * fabs(rv) + 1e-30
                                          : (double)dv == rv;
                    if (!ok)
                        cf_fail(r, "%s: seq %zu head %zu page %d value %.9g, reference %.9g",
                                out->label, b, h, dp, (double)dv, rv);
                }
                for (size_t j = 0; j < kk; j++) { /* the reference's pages the DUT lacks */
                    int32_t rp = cf_i32_at(rr, j);
                    size_t i = 0;
                    while (i < kk && cf_i32_at(dr, i) != rp)
                        i++;
                    if (i == kk && !sel_tie(cf_f32_at(rr, k + j), kth, tol))
                        cf_fail(r, "%s: seq %zu head %zu lacks page %d (value %.9g, k-th "
                                "%.9g): not a tie", out->label, b, h, rp,
                                (double)cf_f32_at(rr, k + j), kth);
                }
            }
    }
    if (ties && r->status == CF_PASS)
        snprintf(r->message, sizeof r->message,
                 "%zu selected page(s) differ on ties (within %g of the k-th value)", ties, tol);
}

/* One select_pages call over its own copy of the scores (the op uses them as scratch). kind:
 * 0 normal values, 1 small integers (exact ties), 2 with NaN and -inf, 3 with a NaN in one
 * query row of (sequence 0, KV head 0) and an all -inf row in sequence 4. labels[3] (or NULL):
 * a mask that leaves out every other (sequence, KV head) pair, whose records are undefined. */
static int select_call(cf_spec *s, cf_rng *rng, const char *const labels[4], int kind,
                       fkv_group_reduce reduce, uint32_t k, float scale) {
    const fkv_kv_geom *g = &s->g;
    uint32_t hq = g->n_kv_heads * g->group, hk = g->n_kv_heads;
    int32_t desc_v[FKV_SCORES_DESC_INTS * SEL_SEQS], base = 3;
    for (int b = 0; b < SEL_SEQS; b++) {
        int32_t *db = desc_v + FKV_SCORES_DESC_INTS * b;
        db[0] = 0, db[1] = sel_pages[b], db[2] = base, db[3] = 0;
        base += (int32_t)hq * sel_pages[b] + 5;
    }
    int desc = (int)s->n_arr;
    int32_t *dv = cf_add_input(s, labels[0], 12, sizeof desc_v);
    int sc = (int)s->n_arr;
    float *sv = cf_add_input(s, labels[1], CF_IN_OFF, (size_t)base * 4);
    int out = (int)s->n_arr;
    cf_arr *oa = cf_add_output(s, labels[2], CF_GUARD, (size_t)SEL_SEQS * hk * 2 * k * 4,
                               CF_GUARD, CF_I32);
    oa->custom = 1;
    int mask = (int)s->n_arr;
    int32_t *mv = labels[3] ? cf_add_input(s, labels[3], 8, (size_t)SEL_SEQS * hk * 4) : NULL;
    cf_call *c = cf_add_call(s, CF_SELECT, CQ);
    if (!cf_spec_ok(s) || c == NULL)
        return 0;
    for (uint32_t i = 0; mv && i < SEL_SEQS * hk; i++)
        mv[i] = (int32_t)(i % 2);
    memcpy(dv, desc_v, sizeof desc_v);
    for (int32_t i = 0; i < base; i++) {
        float v = cf_normal(rng);
        if (kind == 1)
            v = (float)cf_below(rng, 3);
        else if (kind == 2 && cf_below(rng, 8) == 0)
            v = cf_below(rng, 2) ? NAN : -INFINITY;
        sv[i] = v;
    }
    if (kind == 3) {
        sv[3 + 4] = NAN;
        int32_t b4 = desc_v[FKV_SCORES_DESC_INTS * 4 + 2];
        for (int32_t j = 0; j < sel_pages[4]; j++)
            sv[b4 + j] = -INFINITY;
    }
    c->b[0] = at(desc, 12), c->b[1] = at(sc, CF_IN_OFF), c->b[2] = at(out, CF_GUARD);
    if (mv)
        c->b[3] = at(mask, 8);
    c->n = SEL_SEQS, c->first = SEL_FIRST, c->size = k, c->x = scale, c->reduce = (int)reduce;
    return 1;
}

/* Every reduction, k = 1, k = all candidates of a sequence (5), k beyond every sequence's
 * candidates (40), exact ties, NaN and -inf scores, several sequences with different page
 * counts and one with no candidates, and a mask of (sequence, KV head) pairs. */
static int build_select(const cf_env *env, cf_rng *rng, cf_spec *s, cf_result *r) {
    (void)env, (void)r;
    static const char *const l[5][4] = {
        {"desc_a", "scores_a", "pages_softmax_k5", NULL},
        {"desc_b", "scores_b", "pages_mean_k1_ties", NULL},
        {"desc_c", "scores_c", "pages_max_k8_nan", NULL},
        {"desc_d", "scores_d", "pages_softmax_t_k40", NULL},
        {"desc_e", "scores_e", "pages_softmax_k7_masked", "mask_e"}};
    if (!select_call(s, rng, l[0], 0, FKV_GROUP_SOFTMAX_MEAN, 5, 1.0f) ||
        !select_call(s, rng, l[1], 1, FKV_GROUP_MEAN, 1, 1.0f) ||
        !select_call(s, rng, l[2], 2, FKV_GROUP_MAX, 8, 1.0f) ||
        !select_call(s, rng, l[3], 3, FKV_GROUP_SOFTMAX_MEAN, 40, 0.125f) ||
        !select_call(s, rng, l[4], 0, FKV_GROUP_SOFTMAX_MEAN, 7, 1.0f))
        return -1;
    s->compare = compare_select;
    return 1;
}

/* ---- the op table and case lists ---- */

typedef struct op_entry {
    const char *op;
    cf_build_fn build; /* NULL: checked by contract.c */
    int per_dtype;     /* runs per storage dtype and page size (else once per head dim, group) */
    int per_geom;      /* has a geometry at all */
} op_entry;

static const op_entry op_table[] = {
    {"device", NULL, 0, 0},
    {"public_api", NULL, 0, 0},
    {"copies", build_copies, 0, 0},
    {"host_memory", build_host_memory, 0, 0},
    {"event_chain", build_event_chain, 0, 0},
    {"events", NULL, 0, 0},
    {"write_regions", build_regions, 0, 0},
    {"buffer_import", NULL, 0, 0},
    {"append", build_append, 1, 1},
    {"summarize", build_summarize, 1, 1},
    {"scores", build_scores, 0, 1},
    {"summarize_f16", build_summarize_f16, 1, 1},
    {"scores_f16", build_scores_f16, 0, 1},
    {"scores_edges", build_scores_edges, 0, 1},
    {"cosine_flags", build_cosine, 0, 1},
    {"cosine_nan", build_cosine_nan, 0, 1},
    {"scores_check", build_scores_check, 0, 1},
    {"pack_hnd", build_pack, 1, 1},
    {"scatter_hnd", build_scatter, 1, 1},
    {"recall_direct", build_recall, 1, 1},
    {"quantize", build_pack, 1, 1},
    {"dequantize", build_scatter, 1, 1},
    {"dequantize_direct", build_recall, 1, 1},
    {"attention", build_attention, 1, 1},
    {"attention_dense", build_dense, 1, 1},
    {"select_pages", build_select, 0, 1},
    {"zero_work", NULL, 0, 0},
    {"bad_arguments", NULL, 0, 0},
    {"out_of_range", NULL, 0, 0},
    {"two_queues", NULL, 0, 0},
};

/* The ops that run per quantized host format: pack_hnd, scatter_hnd and recall_direct with q8
 * or q4 units, the format named by the spec id's variant ("quantize_q8"). */
static int quantized_op(const char *op) {
    return strcmp(op, "quantize") == 0 || strcmp(op, "dequantize") == 0 ||
           strcmp(op, "dequantize_direct") == 0;
}

static const op_entry *find_op(const char *op) {
    for (size_t i = 0; i < sizeof op_table / sizeof *op_table; i++)
        if (strcmp(op_table[i].op, op) == 0)
            return &op_table[i];
    return NULL;
}

int cf_spec_build(const cf_env *env, const cf_case *c, cf_spec **out, cf_result *r) {
    *out = NULL;
    const op_entry *e = find_op(c->op);
    if (e == NULL || e->build == NULL)
        return 0;
    cf_geom geom = c->g;
    if (!c->has_geom) /* data movement only: any geometry */
        geom = (cf_geom){.head_dim = 64, .group = 1, .page_size = 16, .dtype = FKV_F32};
    if (geom.dtype != FKV_F32 && !(env->dut.info.caps & FKV_CAP_FP16_STORAGE)) {
        cf_skip(r, "%s storage: the device lacks fp16_storage", fkv_dtype_name(geom.dtype));
        return 0;
    }
    fkv_host_format host_format = FKV_HOST_SAME;
    if (quantized_op(e->op)) {
        if (fkv_host_format_parse(c->spec + strlen(c->op) + 1, &host_format) != FKV_OK)
            return -1;
        if (!(fkv_op_host_formats(env->dut.dev) >> host_format & 1u)) {
            cf_skip(r, "host format %s: not implemented by the device (host_formats)",
                    fkv_host_format_name(host_format));
            return 0;
        }
    }
    cf_spec *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -1;
    s->g = (fkv_kv_geom){.n_kv_heads = cf_kv_heads(&geom), .group = geom.group,
                         .head_dim = geom.head_dim, .page_size = geom.page_size,
                         .dtype = geom.dtype, .host_format = host_format};
    cf_rng rng;
    /* seeded from the name without the variant: every variant sees the same data */
    char seed_name[96];
    snprintf(seed_name, sizeof seed_name, "%s", c->name);
    size_t id_len = strlen(c->spec), op_len = strlen(c->op), name_len = strlen(seed_name);
    if (id_len > op_len && name_len > id_len - op_len)
        seed_name[name_len - (id_len - op_len)] = '\0';
    cf_seed(&rng, seed_name, 1);
    int built = e->build(env, &rng, s, r);
    if (built <= 0) {
        cf_spec_free(s);
        return built;
    }
    *out = s;
    return 1;
}

/* The spec ids, their ops and knobs, from CF_SPECS and CF_SPEC_VARIANTS. */
typedef struct spec_def {
    const char *id, *op;
    int splits;
    size_t shared;
} spec_def;

#define CF_SPEC_DEF(S, id, op, splits, shared) {#id, #op, splits, shared},
static const spec_def base_specs[] = {CF_SPECS(CF_SPEC_DEF, _)};
static const spec_def knob_specs[] = {CF_SPEC_VARIANTS(CF_SPEC_DEF, _)};
#undef CF_SPEC_DEF

/* The unit geometries (n_kv_heads, group, head_dim, page_size): the Criterion suites' (the
 * shapes the kernels branch on) and the extra ones the reference is checked on. */
static const uint32_t unit_geoms[][4] = {
    {2, 1, 64, 16}, {2, 4, 128, 32}, {1, 8, 64, 16}, {3, 4, 64, 32}, {1, 8, 128, 16},
    {1, 12, 64, 16}, {2, 2, 5, 3},
};
static const uint32_t cpu_geoms[][4] = {
    {2, 1, 16, 4}, {2, 4, 64, 16}, {1, 4, 128, 32}, {3, 1, 128, 16}, {2, 4, 16, 32},
};
/* For the quantized ops only (in every set: a few small cases): a head dim that is a multiple of 4
 * but not of 8 or 16 (the kernels' channel tiles end short) and an odd page size. */
static const uint32_t quant_geoms[][4] = {{2, 2, 20, 3}};

static int quant_only(const cf_geom *g) {
    for (size_t i = 0; i < sizeof quant_geoms / sizeof *quant_geoms; i++)
        if (g->head_dim == quant_geoms[i][2] && g->group == quant_geoms[i][1] &&
            g->page_size == quant_geoms[i][3])
            return 1;
    return 0;
}

#define MAX_GEOMS 40

static size_t add_geoms(cf_geom *out, size_t n, const uint32_t (*rows)[4], size_t n_rows) {
    for (size_t i = 0; i < n_rows && n < MAX_GEOMS; i++) {
        cf_geom g = {.head_dim = rows[i][2], .group = rows[i][1], .page_size = rows[i][3],
                     .dtype = FKV_F32, .n_kv_heads = rows[i][0]};
        if (g.n_kv_heads == (g.group == 1 ? 3u : 2u))
            g.n_kv_heads = 0; /* the rule's count: named as before */
        int seen = 0;
        for (size_t j = 0; j < n; j++)
            seen |= memcmp(&out[j], &g, sizeof g) == 0;
        if (!seen)
            out[n++] = g;
    }
    return n;
}

static size_t geometries(unsigned sets, cf_geom *out) {
    size_t n = 0, n_tri;
    uint32_t rows[16][4];
    for (int quick = 1; quick >= 0; quick--) {
        if (!(sets & (quick ? CF_SET_QUICK : CF_SET_FULL)))
            continue;
        const uint32_t(*tri)[3] = cf_geometries(quick, &n_tri);
        for (size_t i = 0; i < n_tri; i++) {
            rows[i][0] = tri[i][1] == 1 ? 3 : 2;
            rows[i][1] = tri[i][1];
            rows[i][2] = tri[i][0];
            rows[i][3] = tri[i][2];
        }
        n = add_geoms(out, n, (const uint32_t(*)[4])rows, n_tri);
    }
    if (sets & (CF_SET_UNIT | CF_SET_FULL))
        n = add_geoms(out, n, unit_geoms, sizeof unit_geoms / sizeof *unit_geoms);
    n = add_geoms(out, n, quant_geoms, sizeof quant_geoms / sizeof *quant_geoms); /* every set */
    if (sets & CF_SET_CPU)
        n = add_geoms(out, n, cpu_geoms, sizeof cpu_geoms / sizeof *cpu_geoms);
    return n;
}

static size_t add_case(cf_case *out, size_t n, size_t cap, const spec_def *sd, const cf_geom *g,
                       int with_dtype) {
    if (n >= cap)
        return n;
    cf_case *c = &out[n];
    memset(c, 0, sizeof *c);
    c->op = sd->op;
    c->spec = sd->id;
    c->run = cf_run_op_case;
    c->recall = -1;
    c->splits = sd->splits;
    c->shared = sd->shared;
    const char *variant = sd->id + strlen(sd->op); /* "" or "_<variant>" */
    int len = snprintf(c->name, sizeof c->name, "%s", sd->op);
    if (g) {
        char gn[48];
        c->g = *g;
        c->has_geom = 1;
        cf_geom_name(g, with_dtype, with_dtype, gn, sizeof gn);
        len += snprintf(c->name + len, sizeof c->name - (size_t)len, "/%s", gn);
    }
    if (variant[0] && len > 0 && (size_t)len < sizeof c->name)
        snprintf(c->name + len, sizeof c->name - (size_t)len, "/%s", variant + 1);
    return n + 1;
}

static size_t spec_cases(const spec_def *sd, const cf_geom *geoms, size_t n_geoms, cf_case *out,
                         size_t n, size_t cap) {
    const op_entry *e = find_op(sd->op);
    if (e == NULL || !e->per_geom)
        return add_case(out, n, cap, sd, NULL, 0);
    for (size_t i = 0; i < n_geoms; i++) {
        cf_geom g = geoms[i];
        if (quantized_op(sd->op) && g.head_dim % 4 != 0)
            continue; /* host formats need a head dim that is a multiple of 4 (fkv_config) */
        if (!quantized_op(sd->op) && quant_only(&g))
            continue;
        if (!e->per_dtype) {
            /* scores and cosine_flags read f32 only and ignore the page size: once per
             * (head dim, group, KV heads) */
            int seen = 0;
            for (size_t j = 0; j < i; j++)
                seen |= geoms[j].head_dim == g.head_dim && geoms[j].group == g.group &&
                        geoms[j].n_kv_heads == g.n_kv_heads;
            if (!seen)
                n = add_case(out, n, cap, sd, &g, 0);
            continue;
        }
        for (int dt = FKV_F32; dt <= FKV_BF16; dt++) {
            g.dtype = (fkv_dtype)dt;
            n = add_case(out, n, cap, sd, &g, 1);
        }
    }
    return n;
}

size_t cf_op_cases(const cf_case_opts *o, cf_case *out, size_t cap) {
    cf_geom geoms[MAX_GEOMS];
    size_t n_geoms = geometries(o->sets, geoms), n = 0;
    for (size_t k = 0; k < sizeof base_specs / sizeof *base_specs; k++)
        n = spec_cases(&base_specs[k], geoms, n_geoms, out, n, cap);
    for (size_t k = 0; o->knobs && k < sizeof knob_specs / sizeof *knob_specs; k++)
        n = spec_cases(&knob_specs[k], geoms, n_geoms, out, n, cap);
    return n;
}
