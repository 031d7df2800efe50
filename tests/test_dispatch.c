/* The dispatch layer (backends/dispatch.h) on the CPU reference backend and on altered copies
 * of its ops table:
 *  - the generic fallbacks of the optional entries against the CPU backend's native entries
 *    (bitwise for copies, within 1e-6 relative for attention), also for an entry that lies
 *    beyond the table's struct_size;
 *  - capabilities and optional entries checked for agreement when a device opens;
 *  - one argument rule for every backend: refused calls never reach the backend's entry,
 *    zero work is a marker, NULL entries of a wait list are ignored;
 *  - check_geometry and recall_note, the newest entries, and set_option/get_option. */
#include <criterion/criterion.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backends/dispatch.h"
#include "common/dtype.h"
#include "common/error.h"
#include "helpers.h"

#define Q FKV_QUEUE_COMPUTE
#define TQ FKV_QUEUE_TRANSFER
#define BQ FKV_QUEUE_BACKGROUND

/* The CPU table without its optional entries. Its device reports no multi-region copy (the
 * CPU device does, and a table without write_regions may not claim it). */
static fkv_backend_ops reduced;
static fkv_device *native_dev, *fallback_dev;

static fkv_status without_multi_region(fkv_bdev *dev, fkv_device_info *info) {
    fkv_status st = fkv_backend_cpu()->opened_info(dev, info);
    info->caps &= ~(uint32_t)FKV_CAP_MULTI_REGION_COPY;
    return st;
}

static void setup(void) {
    unsetenv("FREEKV_CPU_RECALL");
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
    unsetenv("FREEKV_CPU_HOST_MEMORY");
    reduced = *fkv_backend_cpu();
    reduced.write_regions = NULL;
    reduced.attention_dense = NULL;
    reduced.recall_direct = NULL;
    reduced.select_pages = NULL;
    reduced.scores_check = NULL;
    reduced.opened_info = without_multi_region;
}

static void open_both(void) {
    cr_assert_eq(fkv_device_open_ops(fkv_backend_cpu(), 0, &native_dev), FKV_OK, "%s",
                 fkv_last_error());
    cr_assert_eq(fkv_device_open_ops(&reduced, 0, &fallback_dev), FKV_OK, "%s",
                 fkv_last_error());
}

static void teardown(void) {
    fkv_device_close(native_dev);
    fkv_device_close(fallback_dev);
    native_dev = fallback_dev = NULL;
}

TestSuite(dispatch, .init = setup, .fini = teardown);

/* Blocking helpers on one device. */
static fkv_bbuf *alloc_on(fkv_device *d, size_t size) {
    fkv_bbuf *b = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(d, size, &b), FKV_OK, "%s", fkv_last_error());
    return b;
}

/* Call as wait_on(d, st, ev, ...) after the enqueue returned st (never with the enqueue as an
 * argument: the event would be read before the call sets it). */
static void wait_on(fkv_device *d, fkv_status st, fkv_bevent *ev, const char *what) {
    cr_assert_eq(st, FKV_OK, "%s (%s): %s", what, d == fallback_dev ? "fallback" : "native",
                 fkv_last_error());
    cr_assert_not_null(ev, "%s: no event", what);
    fkv_status w = fkv_op_event_wait(d, 1, &ev);
    fkv_op_event_release(d, ev);
    cr_assert_eq(w, FKV_OK, "%s: %s", what, fkv_last_error());
}

static void write_on(fkv_device *d, fkv_bbuf *b, size_t off, const void *src, size_t size) {
    fkv_bevent *ev = NULL;
    fkv_status st = fkv_op_write(d, Q, (fkv_deps){0, NULL, &ev}, b, off, src, size);
    wait_on(d, st, ev, "write");
}

static void read_on(fkv_device *d, fkv_bbuf *b, size_t off, void *dst, size_t size) {
    fkv_bevent *ev = NULL;
    fkv_status st = fkv_op_read(d, Q, (fkv_deps){0, NULL, &ev}, b, off, dst, size);
    wait_on(d, st, ev, "read");
}

/* ---- fallbacks ---- */

Test(dispatch, table_is_accepted) {
    open_both();
    cr_assert_eq(fkv_backend_check(&reduced), FKV_OK, "%s", fkv_last_error());
    cr_assert_null(fkv_device_ops(fallback_dev)->write_regions);
    cr_assert_not_null(fkv_device_ops(native_dev)->write_regions);
}

/* Seven random regions (they may overlap: the order matters) written on d into a fresh
 * buffer holding `init`, read back into out. */
static void regions_on(fkv_device *d, const unsigned char *init, size_t size,
                       const fkv_copy_region *regions, unsigned char *out) {
    fkv_bbuf *buf = alloc_on(d, size);
    write_on(d, buf, 0, init, size);
    fkv_bevent *ev = NULL;
    fkv_status st = fkv_op_write_regions(d, Q, (fkv_deps){0, NULL, &ev}, buf, 7, regions);
    wait_on(d, st, ev, "write_regions");
    /* no regions: still an event that completes */
    ev = NULL;
    st = fkv_op_write_regions(d, Q, (fkv_deps){0, NULL, &ev}, buf, 0, NULL);
    wait_on(d, st, ev, "write_regions n=0");
    read_on(d, buf, 0, out, size);
    fkv_op_buffer_free(d, buf);
}

/* out holds init with the regions applied in order on the host; frees the sources. */
static void expect_regions_applied(unsigned char *init, size_t size, unsigned char **srcs,
                                   const fkv_copy_region *regions, const unsigned char *out) {
    for (size_t i = 0; i < 7; i++)
        memcpy(init + regions[i].dst_offset, srcs[i], regions[i].size);
    cr_assert_arr_eq(out, init, size);
    for (size_t i = 0; i < 7; i++)
        free(srcs[i]);
}

static void random_regions(th_rng *r, size_t size, unsigned char *init, unsigned char **srcs,
                           fkv_copy_region *regions) {
    for (size_t i = 0; i < size; i++)
        init[i] = (unsigned char)th_u32(r);
    for (size_t i = 0; i < 7; i++) {
        size_t len = 1 + th_u32(r) % 600, off = th_u32(r) % (size - len);
        srcs[i] = malloc(len);
        for (size_t j = 0; j < len; j++)
            srcs[i][j] = (unsigned char)th_u32(r);
        regions[i] = (fkv_copy_region){srcs[i], off, len};
    }
}

Test(dispatch, write_regions_matches_native) {
    open_both();
    th_rng r;
    th_seed(&r, 21);
    const size_t size = 5000;
    unsigned char *init = malloc(size), *a = malloc(size), *b = malloc(size);
    unsigned char *srcs[7];
    fkv_copy_region regions[7];
    random_regions(&r, size, init, srcs, regions);
    regions_on(native_dev, init, size, regions, a);
    regions_on(fallback_dev, init, size, regions, b);
    cr_assert_arr_eq(a, b, size, "fallback write_regions differs from the native one");
    /* and both equal the regions applied in order on the host */
    expect_regions_applied(init, size, srcs, regions, a);
    free(init);
    free(a);
    free(b);
}

/* An optional entry beyond the table's struct_size (a table built before the entry existed)
 * is not called, even when the memory there holds a function: the fallback runs. */
static int native_region_calls;
static fkv_status counted_write_regions(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                        fkv_bbuf *dst, uint32_t n,
                                        const fkv_copy_region *regions) {
    native_region_calls++;
    return fkv_backend_cpu()->write_regions(dev, q, deps, dst, n, regions);
}

Test(dispatch, entry_beyond_struct_size_is_not_called) {
    fkv_backend_ops old = *fkv_backend_cpu();
    old.write_regions = counted_write_regions;
    old.opened_info = without_multi_region;
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open_ops(&old, 0, &d), FKV_OK, "%s", fkv_last_error());
    th_rng r;
    th_seed(&r, 22);
    const size_t size = 3000;
    unsigned char *init = malloc(size), *out = malloc(size), *srcs[7];
    fkv_copy_region regions[7];
    random_regions(&r, size, init, srcs, regions);
    native_region_calls = 0;
    regions_on(d, init, size, regions, out);
    cr_assert_eq(native_region_calls, 1, "the table's own entry, inside its struct_size");
    /* the same table as built before write_regions existed */
    old.struct_size = (uint32_t)offsetof(fkv_backend_ops, write_regions);
    native_region_calls = 0;
    regions_on(d, init, size, regions, out);
    cr_assert_eq(native_region_calls, 0, "an entry beyond struct_size was called");
    expect_regions_applied(init, size, srcs, regions, out);
    free(init);
    free(out);
    fkv_device_close(d);
}

/* Dense attention of one random case on device d into out (host). */
static void dense_on(fkv_device *d, const fkv_kv_geom *g, const float *q, const void *k,
                     const void *v, uint32_t n_tok, float scale, float *out) {
    size_t es = fkv_dtype_size(g->dtype), hq = (size_t)g->n_kv_heads * g->group;
    size_t kv_bytes = (size_t)n_tok * g->n_kv_heads * g->head_dim * es;
    size_t q_bytes = hq * g->head_dim * 4;
    /* K/V hold exactly n_tok rows, so the fallback's last pool slot is partial */
    fkv_bbuf *kb = alloc_on(d, kv_bytes), *vb = alloc_on(d, kv_bytes);
    fkv_bbuf *qb = alloc_on(d, q_bytes + 32), *ob = alloc_on(d, q_bytes + 32);
    write_on(d, kb, 0, k, kv_bytes);
    write_on(d, vb, 0, v, kv_bytes);
    write_on(d, qb, 16, q, q_bytes);
    fkv_bevent *ev = NULL;
    fkv_status st = fkv_op_attention_dense(d, Q, (fkv_deps){0, NULL, &ev}, g, qb, 16, n_tok, kb,
                                           vb, scale, ob, 32);
    wait_on(d, st, ev, "attention_dense");
    read_on(d, ob, 32, out, q_bytes);
    fkv_op_buffer_free(d, kb);
    fkv_op_buffer_free(d, vb);
    fkv_op_buffer_free(d, qb);
    fkv_op_buffer_free(d, ob);
}

Test(dispatch, attention_dense_matches_native) {
    static const fkv_kv_geom geoms[] = {
        {.n_kv_heads = 2, .group = 1, .head_dim = 16, .page_size = 4, .dtype = FKV_F32},
        {.n_kv_heads = 2, .group = 4, .head_dim = 64, .page_size = 16, .dtype = FKV_F16},
        {.n_kv_heads = 1, .group = 4, .head_dim = 128, .page_size = 32, .dtype = FKV_BF16},
        {.n_kv_heads = 3, .group = 1, .head_dim = 128, .page_size = 16, .dtype = FKV_F32},
        {.n_kv_heads = 2, .group = 4, .head_dim = 16, .page_size = 32, .dtype = FKV_BF16},
    };
    static const uint32_t lengths[] = {1, 37, 64};
    open_both();
    for (size_t gi = 0; gi < sizeof geoms / sizeof *geoms; gi++)
        for (size_t li = 0; li < 3; li++) {
            const fkv_kv_geom *g = &geoms[gi];
            th_rng r;
            th_seed(&r, 30 + gi * 5 + li);
            uint32_t n_tok = lengths[li];
            size_t d = g->head_dim, hq = (size_t)g->n_kv_heads * g->group;
            size_t kv_elems = (size_t)n_tok * g->n_kv_heads * d, es = fkv_dtype_size(g->dtype);
            float *q = malloc(hq * d * 4), *kf = malloc(kv_elems * 4), *vf = malloc(kv_elems * 4);
            unsigned char *k = malloc(kv_elems * es), *v = malloc(kv_elems * es);
            float *a = malloc(hq * d * 4), *b = malloc(hq * d * 4);
            th_fill_normal(&r, q, hq * d, 1.0f);
            th_fill_normal(&r, kf, kv_elems, 1.0f);
            th_fill_normal(&r, vf, kv_elems, 1.0f);
            for (size_t i = 0; i < kv_elems; i++) {
                fkv_store(k, g->dtype, i, kf[i]);
                fkv_store(v, g->dtype, i, vf[i]);
            }
            float scale = 1.0f / sqrtf((float)d);
            dense_on(native_dev, g, q, k, v, n_tok, scale, a);
            dense_on(fallback_dev, g, q, k, v, n_tok, scale, b);
            for (size_t i = 0; i < hq * d; i++)
                cr_assert_leq(fabsf(a[i] - b[i]), 1e-6f * fmaxf(fabsf(a[i]), 1e-3f),
                              "element %zu: native %g, fallback %g (dtype %s, d %zu, p %u, n %u)",
                              i, a[i], b[i], fkv_dtype_name(g->dtype), d, g->page_size, n_tok);
            free(q);
            free(kf);
            free(vf);
            free(k);
            free(v);
            free(a);
            free(b);
        }
}

/* select_pages on one device: scores (2 sequences) in, records out. */
static void select_on(fkv_device *d, const fkv_kv_geom *g, const int32_t *desc,
                      const float *scores, size_t n_scores, const fkv_select_params *p,
                      int32_t *rec, size_t rec_bytes) {
    fkv_bbuf *db = alloc_on(d, 8 * 4), *sb = alloc_on(d, n_scores * 4);
    fkv_bbuf *ob = alloc_on(d, rec_bytes);
    write_on(d, db, 0, desc, 8 * 4);
    write_on(d, sb, 0, scores, n_scores * 4);
    fkv_bevent *ev = NULL;
    fkv_status st =
        fkv_op_select_pages(d, Q, (fkv_deps){0, NULL, &ev}, g, 2, db, 0, NULL, 0, sb, 0, p, ob, 0);
    wait_on(d, st, ev, "select_pages");
    read_on(d, ob, 0, rec, rec_bytes);
    fkv_op_buffer_free(d, db);
    fkv_op_buffer_free(d, sb);
    fkv_op_buffer_free(d, ob);
}

Test(dispatch, select_pages_fallback_matches_native) {
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 4, .head_dim = 16, .page_size = 4, .dtype = FKV_F32};
    size_t hq = 8;
    int32_t desc[8] = {0, 30, 0, 0, 0, 11, (int32_t)(hq * 30 + 3), 0};
    size_t n_scores = hq * 30 + 3 + hq * 11;
    float *sc = malloc(n_scores * 4);
    th_rng r;
    th_seed(&r, 77);
    th_fill_normal(&r, sc, n_scores, 3.0f);
    open_both();
    for (int mode = 0; mode < 3; mode++) {
        fkv_select_params p = {.first_page = 1, .k = 6, .reduce = (fkv_group_reduce)mode,
                               .temp_scale = 0.5f};
        size_t rec_bytes = 2 * 2 * 2 * p.k * 4;
        int32_t *a = malloc(rec_bytes), *b = malloc(rec_bytes);
        select_on(native_dev, &g, desc, sc, n_scores, &p, a, rec_bytes);
        select_on(fallback_dev, &g, desc, sc, n_scores, &p, b, rec_bytes);
        cr_assert_arr_eq(a, b, rec_bytes, "reduction %d: fallback records differ", mode);
        cr_assert_eq(a[0] >= 1 && a[0] < 30, 1, "a page was selected");
        free(a);
        free(b);
    }
    free(sc);
}

/* One scores_check of three sequences on d (six query rows: the previous ones 0 to 2, the
 * current ones 3 to 5 at cur_off), its outputs read back; *status: the command's, at its
 * event; returns the compute queue's launches. prev[1] = -1: no previous query. */
typedef struct check_case {
    float q[6 * 8 * 16], summ[12 * 2 * 2 * 16];
    int32_t desc[12], prev[3];
    float out[8 * 5 + 8 * 7 + 3], sims[6];
    int32_t flags[6];
} check_case;

static uint64_t scores_check_on(fkv_device *d, const fkv_kv_geom *g, check_case *c,
                                fkv_status *status) {
    size_t row = 8 * 16 * 4;
    fkv_bbuf *qb = alloc_on(d, sizeof c->q), *db = alloc_on(d, sizeof c->desc);
    fkv_bbuf *sb = alloc_on(d, sizeof c->summ), *rb = alloc_on(d, sizeof c->prev);
    fkv_bbuf *ob = alloc_on(d, sizeof c->out), *simb = alloc_on(d, sizeof c->sims);
    fkv_bbuf *fb = alloc_on(d, sizeof c->flags);
    write_on(d, qb, 0, c->q, sizeof c->q);
    write_on(d, db, 0, c->desc, sizeof c->desc);
    write_on(d, sb, 0, c->summ, sizeof c->summ);
    write_on(d, rb, 0, c->prev, sizeof c->prev);
    memset(c->out, 0, sizeof c->out);
    write_on(d, ob, 0, c->out, sizeof c->out);
    fkv_counters before, after;
    cr_assert_eq(fkv_op_counters(d, &before), FKV_OK);
    fkv_bevent *ev = NULL;
    fkv_status st = fkv_op_scores_check(d, Q, (fkv_deps){0, NULL, &ev}, g, qb, 0, 3, db, 0, sb,
                                        ob, 0, 3 * row, rb, 0, 0.5f, simb, 0, fb, 0);
    cr_assert_eq(st, FKV_OK, "%s", fkv_last_error());
    *status = fkv_op_event_wait(d, 1, &ev);
    fkv_op_event_release(d, ev);
    cr_assert_eq(fkv_op_counters(d, &after), FKV_OK);
    if (*status == FKV_OK) {
        read_on(d, ob, 0, c->out, sizeof c->out);
        read_on(d, simb, 0, c->sims, sizeof c->sims);
        read_on(d, fb, 0, c->flags, sizeof c->flags);
    }
    fkv_bbuf *bufs[] = {qb, db, sb, rb, ob, simb, fb};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        fkv_op_buffer_free(d, bufs[i]);
    return after.queues[FKV_COUNTER_COMPUTE].launches - before.queues[FKV_COUNTER_COMPUTE].launches;
}

/* The fallback of scores_check (cosine_flags, then scores: two launches) writes what the
 * reference's one launch writes, bit for bit; a previous row beyond the queries fails the
 * call's event in both (the fallback's scores waits for its cosine_flags). */
Test(dispatch, scores_check_fallback_matches_native) {
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 4, .head_dim = 16, .page_size = 4,
                     .dtype = FKV_F32};
    static check_case a, b;
    th_rng r;
    th_seed(&r, 78);
    th_fill_normal(&r, a.q, sizeof a.q / 4, 1.0f);
    for (size_t i = 0; i < 8 * 16; i++) /* sequence 0: a near copy, about 0.9 */
        a.q[3 * 8 * 16 + i] = a.q[i] + 0.5f * a.q[5 * 8 * 16 + i];
    th_fill_normal(&r, a.summ, sizeof a.summ / 4, 1.0f);
    const int32_t desc[12] = {0, 5, 0, 3, 5, 0, 40, 4, 5, 7, 43, 5}; /* seq 1: no pages */
    const int32_t prev[3] = {0, -1, 2};
    memcpy(a.desc, desc, sizeof desc);
    memcpy(a.prev, prev, sizeof prev);
    b = a;
    open_both();
    fkv_status sa, sb;
    cr_expect_eq(scores_check_on(native_dev, &g, &a, &sa), 1, "the reference: one launch");
    cr_expect_eq(scores_check_on(fallback_dev, &g, &b, &sb), 2, "the fallback: two launches");
    cr_assert_eq(sa, FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(sb, FKV_OK, "%s", fkv_last_error());
    cr_assert_arr_eq(a.out, b.out, sizeof a.out, "fallback scores differ");
    cr_assert_arr_eq(a.sims, b.sims, sizeof a.sims, "fallback similarities differ");
    cr_assert_arr_eq(a.flags, b.flags, sizeof a.flags, "fallback flags differ");
    cr_assert(isnan(a.sims[2]) && isnan(a.sims[3]) && a.flags[2] && a.flags[3],
              "no previous query: NaN, flagged");
    cr_assert(a.sims[0] > 0.5f && !a.flags[0], "a near copy: similar, not flagged");
    cr_assert(a.out[43] != 0.0f && a.out[42] == 0.0f, "sequence 2's scores, not the gap");
    a.prev[2] = b.prev[2] = 6; /* beyond the six rows: refused where the check runs */
    scores_check_on(native_dev, &g, &a, &sa);
    scores_check_on(fallback_dev, &g, &b, &sb);
    cr_expect_eq(sa, FKV_ERR_INVALID_ARGUMENT, "the reference: %d", (int)sa);
    cr_expect_eq(sb, FKV_ERR_INVALID_ARGUMENT, "the fallback: %d", (int)sb);
}

Test(dispatch, attention_dense_fallback_signals_done_after_deps) {
    /* the fallback waits on deps.wait before its own writes and signals deps.done */
    open_both();
    fkv_kv_geom g = {.n_kv_heads = 1, .group = 1, .head_dim = 16, .page_size = 4, .dtype = FKV_F32};
    float q[16], k[16 * 3], v[16 * 3], out[16];
    for (int i = 0; i < 16; i++)
        q[i] = 0.1f * (float)i;
    for (int i = 0; i < 48; i++) {
        k[i] = (float)(i % 5);
        v[i] = (float)i;
    }
    fkv_device *d = fallback_dev;
    fkv_bbuf *qb = alloc_on(d, sizeof q), *kb = alloc_on(d, sizeof k), *vb = alloc_on(d, sizeof v);
    fkv_bbuf *ob = alloc_on(d, sizeof out);
    fkv_bevent *w = NULL, *done = NULL;
    write_on(d, kb, 0, k, sizeof k);
    write_on(d, vb, 0, v, sizeof v);
    cr_assert_eq(fkv_op_write(d, TQ, (fkv_deps){0, NULL, &w}, qb, 0, q, sizeof q), FKV_OK);
    cr_assert_eq(fkv_op_attention_dense(d, Q, (fkv_deps){1, &w, &done}, &g, qb, 0, 3, kb, vb,
                                        1.0f, ob, 0),
                 FKV_OK, "%s", fkv_last_error());
    wait_on(d, FKV_OK, done, "fallback done event");
    fkv_op_event_release(d, w);
    read_on(d, ob, 0, out, sizeof out);
    float ref[16];
    th_attention_ref(q, k, v, 3, 16, 16, 1.0f, ref);
    cr_assert_lt(th_rel_l2(out, ref, 16), 1e-5);
    fkv_op_buffer_free(d, qb);
    fkv_op_buffer_free(d, kb);
    fkv_op_buffer_free(d, vb);
    fkv_op_buffer_free(d, ob);
}

Test(dispatch, recall_mode) {
    static const char *const names[] = {"staged", "direct", "perpage"};
    for (int i = 0; i < 3; i++) {
        setenv("FREEKV_CPU_RECALL", names[i], 1);
        cr_assert_eq(fkv_device_open_ops(fkv_backend_cpu(), 0, &native_dev), FKV_OK, "%s",
                     fkv_last_error());
        cr_assert_eq(fkv_op_recall_mode(native_dev), (fkv_recall_mode)i, "native, %s", names[i]);
        fkv_device_close(native_dev);
        native_dev = NULL;
    }
    /* no recall_mode entry at all: staged */
    unsetenv("FREEKV_CPU_RECALL");
    reduced.recall_mode = NULL;
    open_both();
    cr_assert_eq(fkv_op_recall_mode(fallback_dev), FKV_RECALL_STAGED);
    /* no recall_direct: the op is unsupported, never a crash */
    fkv_kv_geom g = {.n_kv_heads = 1, .group = 1, .head_dim = 16, .page_size = 4, .dtype = FKV_F32};
    fkv_bhost *h = NULL;
    void *p = NULL;
    cr_assert_eq(fkv_op_host_alloc(fallback_dev, 4096, &h, &p), FKV_OK);
    fkv_bbuf *kp = alloc_on(fallback_dev, 4096), *vp = alloc_on(fallback_dev, 4096);
    fkv_bbuf *u = alloc_on(fallback_dev, 16);
    fkv_direct_src off = {0};
    const fkv_bhost *hs[1] = {h};
    fkv_bevent *ev = (fkv_bevent *)(uintptr_t)1;
    cr_assert_eq(fkv_op_recall_direct(fallback_dev, Q, (fkv_deps){0, NULL, &ev}, &g, 1, hs, 1,
                                      &off, u, 0, kp, vp),
                 FKV_ERR_UNSUPPORTED);
    cr_assert_null(ev);
    cr_assert(strstr(fkv_last_error(), "no recall_direct"), "%s", fkv_last_error());
    fkv_op_buffer_free(fallback_dev, kp);
    fkv_op_buffer_free(fallback_dev, vp);
    fkv_op_buffer_free(fallback_dev, u);
    fkv_op_host_free(fallback_dev, h);
}

/* ---- capabilities and optional entries agree, checked at open ---- */

static fkv_status with_zero_copy(fkv_bdev *dev, fkv_device_info *info) {
    fkv_status st = fkv_backend_cpu()->opened_info(dev, info);
    info->caps |= FKV_CAP_ZERO_COPY_HOST;
    return st;
}

static fkv_status without_zero_copy(fkv_bdev *dev, fkv_device_info *info) {
    fkv_status st = fkv_backend_cpu()->opened_info(dev, info);
    info->caps &= ~(uint32_t)FKV_CAP_ZERO_COPY_HOST;
    return st;
}

/* Opening t fails with FKV_ERR_UNSUPPORTED, a message naming both sides of the mismatch, and
 * no device. */
static void refused_at_open(const fkv_backend_ops *t, const char *claim, const char *entry) {
    fkv_device *d = (fkv_device *)(uintptr_t)1;
    fkv_status st = fkv_device_open_ops(t, 0, &d);
    cr_assert_eq(st, FKV_ERR_UNSUPPORTED, "claims %s without %s: %d (%s)", claim, entry, st,
                 fkv_last_error());
    cr_assert_null(d);
    cr_assert(strstr(fkv_last_error(), claim) && strstr(fkv_last_error(), entry),
              "message names %s and %s: %s", claim, entry, fkv_last_error());
}

Test(dispatch, capabilities_and_entries_agree_at_open) {
    fkv_backend_ops t = *fkv_backend_cpu();
    /* the CPU device copies many regions in one command: it needs write_regions */
    t.write_regions = NULL;
    refused_at_open(&t, "multi_region_copy", "write_regions");
    /* ... also when the entry lies beyond the table's struct_size */
    t = *fkv_backend_cpu();
    t.struct_size = (uint32_t)offsetof(fkv_backend_ops, write_regions);
    refused_at_open(&t, "multi_region_copy", "write_regions");
    /* zero-copy host reads need recall_direct */
    t = *fkv_backend_cpu();
    t.recall_direct = NULL;
    t.opened_info = with_zero_copy;
    refused_at_open(&t, "zero_copy_host", "recall_direct");
    /* so does the direct recall mode, whatever the capabilities say */
    setenv("FREEKV_CPU_RECALL", "direct", 1);
    t.opened_info = without_zero_copy;
    refused_at_open(&t, "direct recall mode", "recall_direct");
    /* the environment that makes the CPU device zero-copy, on a table without recall_direct */
    t = *fkv_backend_cpu();
    t.recall_direct = NULL;
    refused_at_open(&t, "zero_copy_host", "recall_direct");
    /* agreeing tables open: no capability, no entry */
    unsetenv("FREEKV_CPU_RECALL");
    t.opened_info = without_multi_region;
    t.write_regions = NULL;
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open_ops(&t, 0, &d), FKV_OK, "%s", fkv_last_error());
    fkv_device_close(d);
}

/* ---- one argument rule, checked once, for every backend ---- */

/* The CPU table with its kernels and copies counted: a call the dispatch layer refuses, or
 * turns into a marker, never reaches them. */
static int entry_calls;
#define COUNTED(name, params, args)                                                            \
    static fkv_status counted_##name params {                                                  \
        entry_calls++;                                                                         \
        return fkv_backend_cpu()->name args;                                                   \
    }
COUNTED(write, (fkv_bdev * d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst, size_t off,
                const void *src, size_t size),
        (d, q, deps, dst, off, src, size))
COUNTED(append, (fkv_bdev * d, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                 const fkv_bbuf *k, size_t k_off, const fkv_bbuf *v, size_t v_off, uint32_t n,
                 const fkv_bbuf *rows, size_t rows_off, fkv_bbuf *kp, fkv_bbuf *vp),
        (d, q, deps, g, k, k_off, v, v_off, n, rows, rows_off, kp, vp))
COUNTED(attention, (fkv_bdev * d, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                    const fkv_bbuf *qb, size_t q_off, uint32_t n_seqs, const fkv_bbuf *heads,
                    size_t heads_off, const fkv_bbuf *entries, size_t entries_off,
                    const fkv_bbuf *kp, const fkv_bbuf *vp, float scale, fkv_bbuf *out,
                    size_t out_off),
        (d, q, deps, g, qb, q_off, n_seqs, heads, heads_off, entries, entries_off, kp, vp, scale,
         out, out_off))

/* Refused before the backend: INVALID_ARGUMENT, a message, no event, no entry call. */
#define REFUSED(call)                                                                          \
    do {                                                                                       \
        ev = (fkv_bevent *)(uintptr_t)1; /* must come back NULL */                             \
        int calls_ = entry_calls;                                                              \
        fkv_status st_ = (call);                                                               \
        cr_assert_eq(st_, FKV_ERR_INVALID_ARGUMENT, "%s: got %d (%s)", #call, st_,             \
                     fkv_last_error());                                                        \
        cr_assert_null(ev, "%s: event set on a refusal", #call);                               \
        cr_assert(strncmp(fkv_last_error(), "invalid argument: cpu ", 22) == 0,               \
                  "%s: message '%s' does not name the backend", #call, fkv_last_error());      \
        cr_assert_eq(entry_calls, calls_, "%s reached the backend", #call);                   \
    } while (0)
/* Zero work: a marker whose event completes; the op's own entry is not called. */
#define MARKER(call)                                                                           \
    do {                                                                                       \
        ev = NULL;                                                                             \
        int calls_ = entry_calls;                                                              \
        fkv_status marker_st_ = (call);                                                        \
        wait_on(d, marker_st_, ev, #call);                                                     \
        cr_assert_eq(entry_calls, calls_, "%s: zero work reached the backend", #call);        \
    } while (0)
#define DONE ((fkv_deps){0, NULL, &ev})

Test(dispatch, one_argument_rule_checked_once) {
    fkv_backend_ops t = *fkv_backend_cpu();
    t.write = counted_write;
    t.append = counted_append;
    t.attention = counted_attention;
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open_ops(&t, 0, &d), FKV_OK, "%s", fkv_last_error());
    fkv_bevent *ev = NULL, *null_ev = NULL;
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 2,
            .head_dim = 16, .page_size = 4, .dtype = FKV_F32}, bad = g;
    size_t pool = 2 * 4 * 2 * 16 * 4; /* 2 slots */
    fkv_bbuf *kp = alloc_on(d, pool), *vp = alloc_on(d, pool), *qb = alloc_on(d, 4 * 16 * 4);
    fkv_bbuf *out = alloc_on(d, 4 * 16 * 4), *big = alloc_on(d, 1 << 16);
    fkv_bbuf *sums = alloc_on(d, 2 * 2 * 2 * 16 * 4), *rows = alloc_on(d, 8);
    char host[64] = {0};
    entry_calls = 0;
    /* copies: buffers, ranges, host pointers, queues, wait lists */
    REFUSED(fkv_op_write(d, Q, DONE, NULL, 0, host, 4));
    REFUSED(fkv_op_write(d, Q, DONE, qb, 0, NULL, 4));
    REFUSED(fkv_op_write(d, Q, DONE, qb, 4 * 16 * 4 - 3, host, 4));
    REFUSED(fkv_op_write(d, Q, DONE, qb, SIZE_MAX, host, 4));
    REFUSED(fkv_op_write(d, (fkv_queue)7, DONE, qb, 0, host, 4));
    REFUSED(fkv_op_write(d, Q, (fkv_deps){1, NULL, &ev}, qb, 0, host, 4));
    REFUSED(fkv_op_read(d, TQ, DONE, qb, 0, host, 4 * 16 * 4 + 1));
    REFUSED(fkv_op_copy(d, TQ, DONE, qb, 0, out, 8, 4 * 16 * 4));
    REFUSED(fkv_op_marker(d, (fkv_queue)3, DONE));
    REFUSED(fkv_op_write_regions(d, TQ, DONE, qb, 1, &(fkv_copy_region){host, 4 * 16 * 4 - 2, 3}));
    REFUSED(fkv_op_write_regions(d, TQ, DONE, qb, 1, &(fkv_copy_region){NULL, 0, 4}));
    REFUSED(fkv_op_write_regions(d, TQ, DONE, qb, 2, NULL));
    /* kernels: queue, geometry, buffers, offsets, alignment */
    REFUSED(fkv_op_append(d, TQ, DONE, &g, big, 0, big, 0, 2, rows, 0, kp, vp));
    REFUSED(fkv_op_append(d, Q, DONE, NULL, big, 0, big, 0, 2, rows, 0, kp, vp));
    bad.head_dim = 0;
    REFUSED(fkv_op_append(d, Q, DONE, &bad, big, 0, big, 0, 2, rows, 0, kp, vp));
    bad = g;
    bad.dtype = (fkv_dtype)9;
    REFUSED(fkv_op_append(d, Q, DONE, &bad, big, 0, big, 0, 2, rows, 0, kp, vp));
    REFUSED(fkv_op_append(d, Q, DONE, &g, NULL, 0, big, 0, 2, rows, 0, kp, vp));
    REFUSED(fkv_op_append(d, Q, DONE, &g, big, 0, big, 0, 2, rows, 4, kp, vp));
    REFUSED(fkv_op_append(d, Q, DONE, &g, big, 2, big, 0, 2, rows, 0, kp, vp));
    REFUSED(fkv_op_append(d, Q, DONE, &g, big, 0, big, 0, 2, rows, 0, kp, NULL));
    REFUSED(fkv_op_append(d, Q, DONE, &g, big, 0, big, 0, 2, rows, 0, kp, rows)); /* < 1 slot */
    REFUSED(fkv_op_summarize(d, Q, DONE, &g, kp, 2, rows, 0, sums)); /* pages: 4 ints */
    REFUSED(fkv_op_summarize(d, Q, DONE, &g, kp, 1, rows, 0, NULL));
    REFUSED(fkv_op_scores(d, Q, DONE, &g, qb, 4, 2, big, 0, NULL, 0, sums, out, 0)); /* no q row */
    REFUSED(fkv_op_scores(d, Q, DONE, &g, qb, 0, 1, rows, 0, NULL, 0, sums, out, 0)); /* desc: 4 */
    REFUSED(fkv_op_cosine_flags(d, BQ, DONE, &g, qb, 4, qb, 0, rows, 0, 1, 0.9f, out, 0, out, 0));
    REFUSED(fkv_op_cosine_flags(d, BQ, DONE, &g, qb, 0, qb, 2, rows, 0, 1, 0.9f, out, 0, out, 0));
    REFUSED(fkv_op_cosine_flags(d, BQ, DONE, &g, qb, 0, qb, 0, rows, 8, 1, 0.9f, out, 0, out, 0));
    REFUSED(fkv_op_cosine_flags(d, BQ, DONE, &g, qb, 0, qb, 0, rows, 0, 1, 0.9f, out, 0, NULL, 0));
    REFUSED(fkv_op_pack_hnd(d, Q, DONE, &g, kp, vp, 2, rows, 0, out, 0)); /* dst small */
    REFUSED(fkv_op_scatter_hnd(d, Q, DONE, &g, qb, 0, 1, rows, 0, kp, vp)); /* src small */
    REFUSED(fkv_op_scatter_hnd(d, Q, DONE, &g, big, 0, 2, rows, 0, kp, vp)); /* units */
    REFUSED(fkv_op_attention(d, Q, DONE, &g, qb, 0, 1, rows, 0, rows, 0, kp, vp, 1.0f, out, 4));
    REFUSED(fkv_op_attention(d, Q, DONE, &g, qb, 0, 1, rows, 0, rows, 0, kp, vp, 1.0f, out, 2));
    REFUSED(fkv_op_attention(d, Q, DONE, &g, qb, 0, 1, rows, 0, NULL, 0, kp, vp, 1.0f, out, 0));
    REFUSED(fkv_op_attention(d, TQ, DONE, &g, qb, 0, 1, rows, 0, rows, 0, kp, vp, 1.0f, out, 0));
    REFUSED(fkv_op_attention_dense(d, Q, DONE, &g, qb, 0, 9, kp, vp, 1.0f, out, 0));
    REFUSED(fkv_op_attention_dense(d, Q, DONE, &g, NULL, 0, 1, kp, vp, 1.0f, out, 0));
    /* zero work: every buffer must still be given, as on every backend */
    REFUSED(fkv_op_append(d, Q, DONE, &g, NULL, 0, NULL, 0, 0, NULL, 0, NULL, NULL));
    REFUSED(fkv_op_attention(d, Q, DONE, &g, NULL, 0, 0, NULL, 0, NULL, 0, NULL, NULL, 1.0f, NULL,
                             0));
    REFUSED(fkv_op_attention_dense(d, BQ, DONE, &g, qb, 0, 0, NULL, NULL, 1.0f, out, 0));
    fkv_direct_src off = {0};
    const fkv_bhost *no_host[1] = {NULL};
    REFUSED(fkv_op_recall_direct(d, Q, DONE, &g, 1, no_host, 1, &off, big, 0, kp, vp));
    REFUSED(fkv_op_recall_direct(d, Q, DONE, &g, 0, NULL, 1, &off, big, 0, kp, vp));
    fkv_bhost *h = NULL;
    void *hp = NULL;
    cr_assert_eq(fkv_op_host_alloc(d, 1024, &h, &hp), FKV_OK);
    const fkv_bhost *hs[1] = {h};
    fkv_direct_src offs[2] = {{.host = 0, .offset = 0}, {.host = 0, .offset = 1000}};
    REFUSED(fkv_op_recall_direct(d, Q, DONE, &g, 1, hs, 2, offs, big, 0, kp, vp)); /* past the end */
    offs[1] = (fkv_direct_src){.host = 1, .offset = 0};
    REFUSED(fkv_op_recall_direct(d, Q, DONE, &g, 1, hs, 2, offs, big, 0, kp, vp)); /* no host 1 */
    offs[1].host = 0;
    REFUSED(fkv_op_recall_direct(d, Q, DONE, &g, 1, hs, 2, offs, rows, 0, kp, vp)); /* table */
    cr_assert_eq(entry_calls, 0);

    /* ... and then zero work is a marker, with the entry not called */
    MARKER(fkv_op_write(d, Q, DONE, qb, 0, NULL, 0));
    MARKER(fkv_op_write(d, TQ, DONE, qb, 4 * 16 * 4, NULL, 0)); /* at the end */
    MARKER(fkv_op_copy(d, Q, DONE, qb, 0, out, 0, 0));
    MARKER(fkv_op_write_regions(d, TQ, DONE, qb, 0, NULL));
    MARKER(fkv_op_append(d, Q, DONE, &g, big, 0, big, 0, 0, rows, 0, kp, vp));
    MARKER(fkv_op_summarize(d, Q, DONE, &g, kp, 0, rows, 0, sums));
    MARKER(fkv_op_scores(d, Q, DONE, &g, qb, 0, 0, rows, 0, NULL, 0, sums, out, 0));
    MARKER(fkv_op_cosine_flags(d, BQ, DONE, &g, qb, 0, qb, 0, rows, 0, 0, 0.5f, out, 0, out, 0));
    MARKER(fkv_op_pack_hnd(d, Q, DONE, &g, kp, vp, 0, rows, 0, out, 0));
    MARKER(fkv_op_scatter_hnd(d, Q, DONE, &g, big, 0, 0, rows, 0, kp, vp));
    MARKER(fkv_op_recall_direct(d, Q, DONE, &g, 1, hs, 0, NULL, rows, 0, kp, vp));
    MARKER(fkv_op_attention(d, Q, DONE, &g, qb, 0, 0, rows, 0, rows, 0, kp, vp, 1.0f, out, 0));
    cr_assert_eq(fkv_op_append(d, Q, (fkv_deps){0, NULL, NULL}, &g, big, 0, big, 0, 0, rows, 0,
                               kp, vp),
                 FKV_OK, "without a done event the marker still runs");
    cr_assert_eq(fkv_op_finish(d, Q), FKV_OK, "%s", fkv_last_error());
    fkv_op_host_free(d, h);

    /* NULL entries of a wait list are ignored, as backend.h says, on the reference too */
    ev = NULL;
    fkv_status st = fkv_op_write(d, Q, (fkv_deps){1, &null_ev, &ev}, qb, 0, host, 4);
    wait_on(d, st, ev, "write after a NULL wait entry");
    cr_assert_eq(entry_calls, 1, "a valid call reaches the backend once");

    /* events and allocations */
    cr_assert_eq(fkv_op_event_wait(d, 1, NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_event_wait(d, 1, &null_ev), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_event_wait(d, 0, NULL), FKV_OK);
    fkv_op_event_release(d, NULL);
    fkv_bbuf *none = (fkv_bbuf *)(uintptr_t)1;
    cr_assert_eq(fkv_op_buffer_alloc(d, 0, &none), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_null(none);
    none = (fkv_bbuf *)(uintptr_t)1;
    cr_assert_eq(fkv_op_buffer_import(d, NULL, 16, &none), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_null(none);
    cr_assert_eq(fkv_op_host_alloc(d, 0, &h, &hp), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_null(h);
    fkv_op_buffer_free(d, NULL);
    fkv_op_host_free(d, NULL);
    const fkv_bbuf *all[] = {kp, vp, qb, out, big, sums, rows};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        fkv_op_buffer_free(d, (fkv_bbuf *)all[i]);
    fkv_device_close(d);
}

/* ---- check_geometry and recall_note: the newest entries of the table ---- */

static int geometry_calls;
static fkv_status refuse_geometry(fkv_bdev *dev, const fkv_kv_geom *g, const fkv_geom_query *q) {
    (void)dev;
    (void)g;
    (void)q;
    geometry_calls++;
    return fkv_error(FKV_ERR_UNSUPPORTED, "test: refused");
}
static const char *note(fkv_bdev *dev) {
    (void)dev;
    return "test note";
}

Test(dispatch, check_geometry_and_recall_note) {
    fkv_backend_ops t = *fkv_backend_cpu();
    t.check_geometry = refuse_geometry;
    t.recall_note = note;
    setenv("FREEKV_CPU_DEVICE_MEMORY", "1M", 1); /* max_buffer_bytes 1 MiB */
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open_ops(&t, 0, &d), FKV_OK, "%s", fkv_last_error());
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 4,
            .head_dim = 64, .page_size = 16, .dtype = FKV_F16};
    fkv_geom_query q = {.max_seqs = 1, .largest_buffer = 1 << 20};
    geometry_calls = 0;
    cr_assert_eq(fkv_op_check_geometry(d, &g, &q), FKV_ERR_UNSUPPORTED);
    cr_assert_eq(geometry_calls, 1);
    cr_assert_str_eq(fkv_op_recall_note(d), "test note");
    /* A buffer above the device's limit is refused by the dispatch layer itself, first. */
    q.largest_buffer = (1 << 20) + 1;
    cr_assert_eq(fkv_op_check_geometry(d, &g, &q), FKV_ERR_OUT_OF_DEVICE_MEMORY);
    cr_assert(strstr(fkv_last_error(), "1048577-byte buffer") &&
                  strstr(fkv_last_error(), "1048576-byte limit"),
              "%s", fkv_last_error());
    cr_assert_eq(geometry_calls, 1);
    /* So is a geometry no kernel call would accept. */
    q.largest_buffer = 1;
    fkv_kv_geom zero = g;
    zero.page_size = 0;
    cr_assert_eq(fkv_op_check_geometry(d, &zero, &q), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(geometry_calls, 1);
    /* A table built before the entries existed: they lie beyond its struct_size, unread. */
    t.struct_size = (uint32_t)offsetof(fkv_backend_ops, check_geometry);
    cr_assert_eq(fkv_op_check_geometry(d, &g, &q), FKV_OK);
    cr_assert_eq(geometry_calls, 1);
    cr_assert_str_eq(fkv_op_recall_note(d), "");
    /* NULL entries: nothing to check beyond the buffer size, nothing to say. */
    t = *fkv_backend_cpu();
    cr_assert_null(t.check_geometry);
    cr_assert_eq(fkv_op_check_geometry(d, &g, &q), FKV_OK);
    cr_assert_str_eq(fkv_op_recall_note(d), "");
    fkv_device_close(d);
}

/* ---- set_option / get_option ---- */

static fkv_status one_option(fkv_bdev *dev, const char *key, const char *value) {
    (void)dev;
    return strcmp(key, "known") == 0 && strcmp(value, "1") == 0
               ? FKV_OK
               : fkv_error(FKV_ERR_UNSUPPORTED, "test: only known=1");
}

Test(dispatch, options) {
    open_both();
    char out[32];
    /* the CPU reference has no options: unsupported, with the backend named */
    cr_assert_eq(fkv_op_set_option(native_dev, "attention_splits", "2"), FKV_ERR_UNSUPPORTED);
    cr_assert(strstr(fkv_last_error(), "'cpu' has no options"), "%s", fkv_last_error());
    cr_assert_eq(fkv_op_get_option(native_dev, "attention_splits", out, sizeof out),
                 FKV_ERR_UNSUPPORTED);
    cr_assert_str_eq(out, "");
    cr_assert_eq(fkv_op_set_option(native_dev, NULL, "1"), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_get_option(native_dev, "x", NULL, 4), FKV_ERR_INVALID_ARGUMENT);
    /* a table's set_option is called, and only inside its struct_size */
    fkv_backend_ops t = *fkv_backend_cpu();
    t.set_option = one_option;
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open_ops(&t, 0, &d), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_set_option(d, "known", "1"), FKV_OK);
    cr_assert_eq(fkv_op_set_option(d, "other", "1"), FKV_ERR_UNSUPPORTED);
    t.struct_size = (uint32_t)offsetof(fkv_backend_ops, set_option);
    cr_assert_eq(fkv_op_set_option(d, "known", "1"), FKV_ERR_UNSUPPORTED);
    cr_assert(strstr(fkv_last_error(), "has no options"), "%s", fkv_last_error());
    fkv_device_close(d);
}

static int allocations;
static fkv_status counted_buffer_alloc(fkv_bdev *dev, size_t size, fkv_bbuf **out) {
    allocations++;
    return fkv_backend_cpu()->buffer_alloc(dev, size, out);
}
static fkv_status counted_host_alloc(fkv_bdev *dev, size_t size, fkv_bhost **out, void **ptr) {
    allocations++;
    return fkv_backend_cpu()->host_alloc(dev, size, out, ptr);
}

/* fkv_context_create asks the device first: a refusal fails the creation with the device's
 * message before any device or host allocation. */
Test(dispatch, context_create_asks_check_geometry) {
    fkv_backend_ops t = *fkv_backend_cpu();
    t.check_geometry = refuse_geometry;
    t.buffer_alloc = counted_buffer_alloc;
    t.host_alloc = counted_host_alloc;
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open_ops(&t, 0, &d), FKV_OK, "%s", fkv_last_error());
    fkv_config cfg;
    fkv_config_init(&cfg);
    cfg.n_layers = 2;
    cfg.max_context = 4096;
    fkv_context *ctx = NULL;
    geometry_calls = allocations = 0;
    cr_assert_eq(fkv_context_create(d, &cfg, &ctx), FKV_ERR_UNSUPPORTED);
    cr_assert_null(ctx);
    cr_assert_eq(geometry_calls, 1);
    cr_assert_eq(allocations, 0, "%d allocations before the refusal", allocations);
    cr_assert(strstr(fkv_last_error(), "creating the context") &&
                  strstr(fkv_last_error(), "test: refused"),
              "%s", fkv_last_error());
    /* the same table without the refusal creates the context */
    t.check_geometry = NULL;
    cr_assert_eq(fkv_context_create(d, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    cr_assert_gt(allocations, 0);
    fkv_context_destroy(ctx);
    fkv_device_close(d);
}
