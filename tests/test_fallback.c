/* The generic fallbacks of backends/fallback.c against the CPU backend's native entries.
 *
 * A copy of the CPU ops table with write_regions, attention_dense and recall_direct set to
 * NULL is opened through fkv_device_open_ops next to the real table; fkv_op_* on both must
 * agree: bitwise for copies, within 1e-6 relative for attention. */
#include <criterion/criterion.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backend.h"
#include "backends/device.h"
#include "common/dtype.h"
#include "common/error.h"
#include "helpers.h"

#define Q FKV_QUEUE_COMPUTE

static fkv_backend_ops reduced; /* the CPU table without its optional entries */
static fkv_device *native_dev, *fallback_dev;

static void setup(void) {
    unsetenv("FREEKV_CPU_RECALL");
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
    unsetenv("FREEKV_CPU_HOST_MEMORY");
    reduced = *fkv_backend_cpu();
    reduced.write_regions = NULL;
    reduced.attention_dense = NULL;
    reduced.recall_direct = NULL;
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

TestSuite(fallback, .init = setup, .fini = teardown);

/* Blocking helpers on one device. */
static fkv_bbuf *alloc_on(fkv_device *d, size_t size) {
    fkv_bbuf *b = NULL;
    cr_assert_eq(d->ops->buffer_alloc(d->bdev, size, &b), FKV_OK, "%s", fkv_last_error());
    return b;
}

/* Call as wait_on(d, st, ev, ...) after the enqueue returned st (never with the enqueue as an
 * argument: the event would be read before the call sets it). */
static void wait_on(fkv_device *d, fkv_status st, fkv_bevent *ev, const char *what) {
    cr_assert_eq(st, FKV_OK, "%s (%s): %s", what, d->ops == &reduced ? "fallback" : "native",
                 fkv_last_error());
    cr_assert_not_null(ev, "%s: no event", what);
    fkv_status w = d->ops->event_wait(d->bdev, 1, &ev);
    d->ops->event_release(d->bdev, ev);
    cr_assert_eq(w, FKV_OK, "%s: %s", what, fkv_last_error());
}

static void write_on(fkv_device *d, fkv_bbuf *b, size_t off, const void *src, size_t size) {
    fkv_bevent *ev = NULL;
    fkv_status st = d->ops->write(d->bdev, Q, (fkv_deps){0, NULL, &ev}, b, off, src, size);
    wait_on(d, st, ev, "write");
}

static void read_on(fkv_device *d, fkv_bbuf *b, size_t off, void *dst, size_t size) {
    fkv_bevent *ev = NULL;
    fkv_status st = d->ops->read(d->bdev, Q, (fkv_deps){0, NULL, &ev}, b, off, dst, size);
    wait_on(d, st, ev, "read");
}

Test(fallback, table_is_accepted) {
    open_both();
    cr_assert_eq(fkv_backend_check(&reduced), FKV_OK, "%s", fkv_last_error());
    cr_assert_null(fallback_dev->ops->write_regions);
    cr_assert_not_null(native_dev->ops->write_regions);
}

Test(fallback, write_regions_matches_native) {
    open_both();
    th_rng r;
    th_seed(&r, 21);
    const size_t size = 5000;
    unsigned char *init = malloc(size), *a = malloc(size), *b = malloc(size);
    unsigned char *srcs[7];
    fkv_copy_region regions[7];
    for (size_t i = 0; i < size; i++)
        init[i] = (unsigned char)th_u32(&r);
    for (size_t i = 0; i < 7; i++) {
        size_t len = 1 + th_u32(&r) % 600, off = th_u32(&r) % (size - len);
        srcs[i] = malloc(len);
        for (size_t j = 0; j < len; j++)
            srcs[i][j] = (unsigned char)th_u32(&r);
        regions[i] = (fkv_copy_region){srcs[i], off, len}; /* may overlap: the order matters */
    }
    fkv_device *devs[2] = {native_dev, fallback_dev};
    unsigned char *outs[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        fkv_device *d = devs[k];
        fkv_bbuf *buf = alloc_on(d, size);
        write_on(d, buf, 0, init, size);
        fkv_bevent *ev = NULL;
        fkv_status st =
            fkv_op_write_regions(d->ops, d->bdev, Q, (fkv_deps){0, NULL, &ev}, buf, 7, regions);
        wait_on(d, st, ev, "write_regions");
        /* no regions: still an event that completes */
        ev = NULL;
        st = fkv_op_write_regions(d->ops, d->bdev, Q, (fkv_deps){0, NULL, &ev}, buf, 0, NULL);
        wait_on(d, st, ev, "write_regions n=0");
        read_on(d, buf, 0, outs[k], size);
        d->ops->buffer_free(d->bdev, buf);
    }
    cr_assert_arr_eq(a, b, size, "fallback write_regions differs from the native one");
    /* and both equal the regions applied in order on the host */
    for (size_t i = 0; i < 7; i++)
        memcpy(init + regions[i].dst_offset, srcs[i], regions[i].size);
    cr_assert_arr_eq(a, init, size);
    for (size_t i = 0; i < 7; i++)
        free(srcs[i]);
    free(init);
    free(a);
    free(b);
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
    fkv_status st = fkv_op_attention_dense(d->ops, d->bdev, Q, (fkv_deps){0, NULL, &ev}, g, qb,
                                           16, n_tok, kb, vb, scale, ob, 32);
    wait_on(d, st, ev, "attention_dense");
    read_on(d, ob, 32, out, q_bytes);
    d->ops->buffer_free(d->bdev, kb);
    d->ops->buffer_free(d->bdev, vb);
    d->ops->buffer_free(d->bdev, qb);
    d->ops->buffer_free(d->bdev, ob);
}

Test(fallback, attention_dense_matches_native) {
    static const fkv_kv_geom geoms[] = {
        {2, 1, 16, 4, FKV_F32},   {2, 4, 64, 16, FKV_F16}, {1, 4, 128, 32, FKV_BF16},
        {3, 1, 128, 16, FKV_F32}, {2, 4, 16, 32, FKV_BF16},
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

Test(fallback, attention_dense_fallback_signals_done_after_deps) {
    /* the fallback waits on deps.wait before its own writes and signals deps.done */
    open_both();
    fkv_kv_geom g = {1, 1, 16, 4, FKV_F32};
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
    cr_assert_eq(d->ops->write(d->bdev, FKV_QUEUE_TRANSFER, (fkv_deps){0, NULL, &w}, qb, 0, q,
                               sizeof q),
                 FKV_OK);
    cr_assert_eq(fkv_op_attention_dense(d->ops, d->bdev, Q, (fkv_deps){1, &w, &done}, &g, qb, 0, 3,
                                        kb, vb, 1.0f, ob, 0),
                 FKV_OK, "%s", fkv_last_error());
    wait_on(d, FKV_OK, done, "fallback done event");
    d->ops->event_release(d->bdev, w);
    read_on(d, ob, 0, out, sizeof out);
    float ref[16];
    th_attention_ref(q, k, v, 3, 16, 16, 1.0f, ref);
    cr_assert_lt(th_rel_l2(out, ref, 16), 1e-5);
    d->ops->buffer_free(d->bdev, qb);
    d->ops->buffer_free(d->bdev, kb);
    d->ops->buffer_free(d->bdev, vb);
    d->ops->buffer_free(d->bdev, ob);
}

Test(fallback, recall_mode) {
    static const char *const names[] = {"staged", "direct", "perpage"};
    static const fkv_recall_mode fallback_expect[] = {FKV_RECALL_STAGED, FKV_RECALL_STAGED,
                                                      FKV_RECALL_PERPAGE};
    for (int i = 0; i < 3; i++) {
        setenv("FREEKV_CPU_RECALL", names[i], 1);
        open_both();
        cr_assert_eq(fkv_op_recall_mode(native_dev->ops, native_dev->bdev), (fkv_recall_mode)i,
                     "native, %s", names[i]);
        /* without recall_direct, direct falls back to staged */
        cr_assert_eq(fkv_op_recall_mode(fallback_dev->ops, fallback_dev->bdev), fallback_expect[i],
                     "fallback, %s", names[i]);
        teardown();
    }
    /* no recall_mode entry at all: staged */
    unsetenv("FREEKV_CPU_RECALL");
    reduced.recall_mode = NULL;
    open_both();
    cr_assert_eq(fkv_op_recall_mode(fallback_dev->ops, fallback_dev->bdev), FKV_RECALL_STAGED);
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

Test(fallback, check_geometry_and_recall_note) {
    fkv_backend_ops t = *fkv_backend_cpu();
    t.check_geometry = refuse_geometry;
    t.recall_note = note;
    fkv_kv_geom g = {2, 4, 64, 16, FKV_F16};
    fkv_device_info info = {.max_buffer_bytes = 1 << 20};
    fkv_geom_query q = {.max_seqs = 1, .largest_buffer = 1 << 20};
    geometry_calls = 0;
    cr_assert_eq(fkv_op_check_geometry(&t, NULL, &info, &g, &q), FKV_ERR_UNSUPPORTED);
    cr_assert_eq(geometry_calls, 1);
    cr_assert_str_eq(fkv_op_recall_note(&t, NULL), "test note");
    /* A buffer above the device's limit is refused by the fallback itself, first. */
    q.largest_buffer = (1 << 20) + 1;
    cr_assert_eq(fkv_op_check_geometry(&t, NULL, &info, &g, &q), FKV_ERR_OUT_OF_DEVICE_MEMORY);
    cr_assert(strstr(fkv_last_error(), "1048577-byte buffer") &&
                  strstr(fkv_last_error(), "1048576-byte limit"),
              "%s", fkv_last_error());
    cr_assert_eq(geometry_calls, 1);
    /* A table built before the entries existed: they lie beyond its struct_size, unread. */
    q.largest_buffer = 1;
    t.struct_size = (uint32_t)offsetof(fkv_backend_ops, check_geometry);
    cr_assert_eq(fkv_op_check_geometry(&t, NULL, &info, &g, &q), FKV_OK);
    cr_assert_eq(geometry_calls, 1);
    cr_assert_str_eq(fkv_op_recall_note(&t, NULL), "");
    /* NULL entries: nothing to check beyond the buffer size, nothing to say. */
    t = *fkv_backend_cpu();
    cr_assert_null(t.check_geometry);
    cr_assert_eq(fkv_op_check_geometry(&t, NULL, &info, &g, &q), FKV_OK);
    cr_assert_str_eq(fkv_op_recall_note(&t, NULL), "");
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
Test(fallback, context_create_asks_check_geometry) {
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
