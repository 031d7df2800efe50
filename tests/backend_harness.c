/* The checks every device backend passes against the CPU reference (backend_harness.h). */
#include "backend_harness.h"

#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/check.h"
#include "backends/dispatch.h"
#include "common/dtype.h"

#if defined(__SANITIZE_ADDRESS__)
/* LeakSanitizer: PoCL/LLVM keep objects from a cold-cache build (see tests/lsan.supp, next to
 * this file, which this hook names so the suppressions live in one place). Every backend test
 * links this file, so the hook is here once. */
const char *__lsan_default_options(void);
const char *__lsan_default_options(void) {
    static char opts[1200];
    const char *file = __FILE__, *slash = strrchr(file, '/');
    if (opts[0] == '\0' && slash && (size_t)(slash - file) < 1000) {
        memcpy(opts, "suppressions=", 13);
        memcpy(opts + 13, file, (size_t)(slash - file));
        memcpy(opts + 13 + (slash - file), "/lsan.supp", 11);
        if (access(opts + 13, R_OK) != 0)
            opts[0] = '\0'; /* no file where expected: run without suppressions */
    }
    return opts;
}
#endif

typedef struct geo {
    uint32_t hk, group, d, p;
} geo;

/* d 64/128, group 1/4/8 (and 12: two passes of the score kernel), page 16/32, and one small
 * odd shape for the scalar copy paths. */
static const geo geos[] = {
    {2, 1, 64, 16}, {2, 4, 128, 32}, {1, 8, 64, 16}, {3, 4, 64, 32}, {1, 8, 128, 16},
    {1, 12, 64, 16}, {2, 2, 5, 3},
};
#define N_GEOS (sizeof geos / sizeof *geos)
static const fkv_dtype dtypes[] = {FKV_F32, FKV_F16, FKV_BF16};

/* ---- fixture ---- */

const fkv_backend_ops *bh_ops[2];
fkv_bdev *bh_dev[2];
fkv_bbuf *bh_bufs[2][256];
fkv_bevent *bh_ev;
uint32_t bh_index;
fkv_device *bh_device;
static size_t bh_n_bufs[2];
static void *bh_mems[1024];
static size_t bh_n_mems;
static const bh_backend *cur;

static const char *side_name(int s) { return s == REF ? "cpu" : cur->name; }

void bh_select(const bh_backend *b) { cur = b; }

static int direct_allowed(void) {
    return cur->direct_in_every_mode || O->recall_mode(OD) == FKV_RECALL_DIRECT;
}

void *bh_tmalloc(size_t size) {
    cr_assert_lt(bh_n_mems, sizeof bh_mems / sizeof *bh_mems);
    void *p = calloc(1, size ? size : 1);
    cr_assert_not_null(p);
    bh_mems[bh_n_mems++] = p;
    return p;
}

void bh_clear_env(void) {
    for (const char *const *v = cur->env; v && *v; v++)
        unsetenv(*v);
    unsetenv("FREEKV_CPU_RECALL");
    /* Kernel caches next to PoCL's (CTest sets POCL_CACHE_DIR), not in $HOME. */
    char dir[1024];
    const char *pocl = getenv("POCL_CACHE_DIR");
    if (pocl && pocl[0])
        snprintf(dir, sizeof dir, "%s/freekv", pocl);
    else
        snprintf(dir, sizeof dir, "/tmp/freekv-test-cache-%ld", (long)getuid());
    setenv("FREEKV_CACHE_DIR", dir, 1);
}

int bh_find_device(void) {
    uint32_t n = 0;
    bh_ops[UT] = cur->ops();
    if (bh_ops[UT] == NULL || bh_ops[UT]->device_count(&n) != FKV_OK || n == 0)
        return 0;
    bh_index = 0;
    for (uint32_t i = 0; i < n && cur->is_preferred; i++) {
        fkv_device_info info;
        if (bh_ops[UT]->device_info(i, &info) == FKV_OK && cur->is_preferred(&info)) {
            bh_index = i;
            break;
        }
    }
    return 1;
}

/* FREEKV_REQUIRE_DEVICES: a comma list of backends (.ci/run sets "cpu,opencl,vulkan") whose
 * tests must find a device: there a missing device fails instead of skipping, so a CI machine
 * without the driver cannot pass by testing nothing. */
static int device_required(const char *backend) {
    const char *list = getenv("FREEKV_REQUIRE_DEVICES");
    size_t len = strlen(backend);
    for (const char *p = list; p && *p; p += strcspn(p, ","), p += *p == ',') {
        if (strncmp(p, backend, len) == 0 && (p[len] == ',' || p[len] == '\0'))
            return 1;
    }
    return 0;
}

void bh_need_device(void) {
    if (bh_find_device())
        return;
    if (device_required(cur->name))
        cr_assert_fail("no %s device, but FREEKV_REQUIRE_DEVICES=%s requires one", cur->name,
                       getenv("FREEKV_REQUIRE_DEVICES"));
    cr_skip_test("no %s device", cur->name);
}

void bh_open_ref(void) {
    bh_ops[REF] = fkv_backend_cpu();
    cr_assert_not_null(bh_ops[REF]);
    cr_assert_eq(bh_ops[REF]->device_open(0, &bh_dev[REF]), FKV_OK, "cpu: %s", fkv_last_error());
}

void bh_open_devices(void) {
    bh_need_device();
    fkv_status st = fkv_device_open_ops(O, bh_index, &bh_device);
    cr_assert_eq(st, FKV_OK, "%s device_open: %s", cur->name, fkv_last_error());
    bh_dev[UT] = fkv_device_bdev(bh_device);
    bh_open_ref();
}

void bh_open_both(void) {
    bh_clear_env();
    bh_open_devices();
}

void bh_teardown(void) {
    for (int s = 0; s < 2; s++) {
        if (bh_dev[s] == NULL)
            continue;
        for (int q = 0; q < FKV_QUEUE_COUNT; q++)
            bh_ops[s]->finish(bh_dev[s], (fkv_queue)q);
        for (size_t i = 0; i < bh_n_bufs[s]; i++)
            bh_ops[s]->buffer_free(bh_dev[s], bh_bufs[s][i]);
        if (s == UT && cur->before_close)
            cur->before_close(bh_dev[s]);
        if (s == UT && bh_device) { /* opened through the dispatch layer */
            fkv_device_close(bh_device);
            bh_device = NULL;
        } else {
            bh_ops[s]->device_close(bh_dev[s]);
        }
        bh_dev[s] = NULL;
        bh_n_bufs[s] = 0;
    }
    for (size_t i = 0; i < bh_n_mems; i++)
        free(bh_mems[i]);
    bh_n_mems = 0;
}

void bh_done_ok(int s, fkv_status st, const char *what) {
    cr_assert_eq(st, FKV_OK, "%s (%s): %s", what, side_name(s), fkv_last_error());
    cr_assert_not_null(bh_ev, "%s: no event", what);
    fkv_status w = bh_ops[s]->event_wait(bh_dev[s], 1, &bh_ev);
    bh_ops[s]->event_release(bh_dev[s], bh_ev);
    bh_ev = NULL;
    cr_assert_eq(w, FKV_OK, "%s (%s) failed: %s", what, side_name(s), fkv_last_error());
}

/* ---- paired buffers ---- */

fkv_bbuf *bh_alloc1(int s, size_t size) {
    fkv_bbuf *b = NULL;
    cr_assert_eq(bh_ops[s]->buffer_alloc(bh_dev[s], size, &b), FKV_OK, "buffer_alloc: %s",
                 fkv_last_error());
    cr_assert_lt(bh_n_bufs[s], 256);
    bh_bufs[s][bh_n_bufs[s]++] = b;
    return b;
}

void bh_write1(int s, fkv_bbuf *b, size_t off, const void *src, size_t size) {
    bh_done_ok(s, bh_ops[s]->write(bh_dev[s], CQ, DEPS, b, off, src, size), "write");
}

void bh_read1(int s, const fkv_bbuf *b, size_t off, void *dst, size_t size) {
    bh_done_ok(s, bh_ops[s]->read(bh_dev[s], CQ, DEPS, b, off, dst, size), "read");
}

/* `size` bytes of src (NULL: guard bytes) at offset `off`, guard bytes around (GUARD after). */
pbuf bh_pnew(const void *src, size_t off, size_t size) {
    pbuf p;
    p.size = off + size + GUARD;
    unsigned char *fill = bh_tmalloc(p.size);
    memset(fill, GUARD_BYTE, p.size);
    if (src && size)
        memcpy(fill + off, src, size);
    for (int s = 0; s < 2; s++) {
        p.b[s] = bh_alloc1(s, p.size);
        bh_write1(s, p.b[s], 0, fill, p.size);
    }
    return p;
}

unsigned char *bh_pb_read(const pbuf *p, int s) {
    unsigned char *x = bh_tmalloc(p->size);
    bh_read1(s, p->b[s], 0, x, p->size);
    return x;
}

/* Both sides hold the same bytes (guards included). */
void bh_same_bytes(const pbuf *p, const char *what) {
    unsigned char *a = bh_pb_read(p, UT), *b = bh_pb_read(p, REF);
    for (size_t i = 0; i < p->size; i++)
        cr_assert_eq(a[i], b[i], "%s: byte %zu differs (%s %02x, cpu %02x)", what, i,
                     cur->name, a[i], b[i]);
}

/* Floats [off, off+n*4) agree within tol (absolute, scaled by 1 + |ref|); all other bytes
 * (the guards) are equal and untouched. */
void bh_same_floats(const pbuf *p, size_t off, size_t n, double tol, const char *what) {
    unsigned char *a = bh_pb_read(p, UT), *b = bh_pb_read(p, REF);
    for (size_t i = 0; i < p->size; i++) {
        if (i >= off && i < off + n * 4)
            continue;
        cr_assert_eq(a[i], b[i], "%s: guard byte %zu changed", what, i);
        cr_assert_eq(a[i], GUARD_BYTE, "%s: guard byte %zu changed", what, i);
    }
    const float *x = (const float *)(a + off), *y = (const float *)(b + off);
    for (size_t i = 0; i < n; i++)
        cr_assert(fabs((double)x[i] - y[i]) <= tol * (1.0 + fabs(y[i])),
                  "%s: element %zu: %s %.9g, cpu %.9g", what, i, cur->name, x[i], y[i]);
}

/* ---- data ---- */

float *bh_rand_f32(th_rng *r, size_t n, float scale) {
    float *x = bh_tmalloc(n * sizeof *x);
    th_fill_normal(r, x, n, scale);
    return x;
}

/* n random values stored in dtype t. */
void *bh_rand_stored(th_rng *r, size_t n, fkv_dtype t) {
    float *x = bh_rand_f32(r, n, 1.0f);
    unsigned char *out = bh_tmalloc(n * fkv_dtype_size(t));
    for (size_t i = 0; i < n; i++)
        fkv_store(out, t, i, x[i]);
    return out;
}

int32_t *bh_perm(th_rng *r, size_t n) {
    int32_t *a = bh_tmalloc(n * sizeof *a);
    th_permutation(r, a, n);
    return a;
}

static fkv_kv_geom mk(geo g, fkv_dtype t) {
    fkv_kv_geom k = {g.hk, g.group, g.d, g.p, t};
    return k;
}

static size_t slot_elems(const fkv_kv_geom *g) {
    return (size_t)g->page_size * g->n_kv_heads * g->head_dim;
}

/* Two random pools of n_slots slots, the same on both sides. */
void bh_rand_pools(th_rng *r, const fkv_kv_geom *g, uint32_t n_slots, pbuf *k, pbuf *v) {
    size_t n = n_slots * slot_elems(g);
    *k = bh_pnew(bh_rand_stored(r, n, g->dtype), 0, n * fkv_dtype_size(g->dtype));
    *v = bh_pnew(bh_rand_stored(r, n, g->dtype), 0, n * fkv_dtype_size(g->dtype));
}

#define FOR_CASES                                                          \
    for (size_t ti = 0; ti < 3; ti++)                                      \
        for (size_t gi = 0; gi < N_GEOS; gi++)
#define CASE_FMT "dtype %s, Hk %u, group %u, d %u, p %u"
#define CASE_ARGS fkv_dtype_name(dtypes[ti]), geos[gi].hk, geos[gi].group, geos[gi].d, geos[gi].p

/* ---- the checks ---- */

void bh_check_device_info(fkv_device_info *info_out) {
    fkv_device_info info, opened;
    uint32_t n = 0;
    cr_assert_eq(fkv_backend_check(O), FKV_OK, "%s", fkv_last_error());
    cr_assert_str_eq(O->name, cur->name);
    cr_assert(O->buffer_import && O->attention_dense && O->recall_direct && O->recall_mode &&
              O->opened_info);
    cr_assert_eq(O->device_count(&n), FKV_OK);
    cr_assert_gt(n, bh_index);
    cr_assert_eq(O->device_info(bh_index, &info), FKV_OK);
    cr_assert_eq(O->opened_info(OD, &opened), FKV_OK);
    cr_assert_str_eq(info.name, opened.name);
    cr_assert_eq(info.caps, opened.caps);
    cr_assert_str_eq(info.backend, cur->name);
    cr_assert_gt(info.memory_bytes, 0);
    cr_assert_gt(info.max_buffer_bytes, 0);
    cr_assert(info.caps & FKV_CAP_FP16_STORAGE);
    if (info.type == FKV_DEVICE_CPU)
        cr_assert_eq(info.caps & FKV_CAP_PINNED_HOST, 0, "nothing to pin on a CPU device");
    /* Zero-copy exactly when the default recall mode is direct (kernels read host memory). */
    cr_assert_eq(!!(info.caps & FKV_CAP_ZERO_COPY_HOST),
                 O->recall_mode(OD) == FKV_RECALL_DIRECT);
    cr_assert_eq(O->device_info(n, &info), FKV_ERR_NO_DEVICE);
    fkv_bdev *none = NULL;
    cr_assert_eq(O->device_open(n, &none), FKV_ERR_NO_DEVICE);
    cr_assert_null(none);
    cr_assert_eq(O->device_info(bh_index, info_out), FKV_OK);
}

void bh_check_public_api(void) {
    fkv_device *d = NULL;
    fkv_buffer *b = NULL;
    unsigned char src[1000], back[500];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)(i * 7 + 3);
    char idx[16];
    snprintf(idx, sizeof idx, "%u", bh_index);
    cr_assert_eq(fkv_device_open(cur->name, idx, &d), FKV_OK, "%s", fkv_last_error());
    fkv_device_info info;
    cr_assert_eq(fkv_device_get_info(d, &info), FKV_OK);
    cr_assert_str_eq(info.backend, cur->name);
    cr_assert_eq(fkv_buffer_alloc(d, sizeof src, &b), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_buffer_write(b, 0, src, sizeof src), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_buffer_read(b, 250, back, sizeof back), FKV_OK, "%s", fkv_last_error());
    cr_assert_arr_eq(back, src + 250, sizeof back);
    fkv_buffer_release(b);
    fkv_device_close(d);
}

void bh_check_copies_and_events(void) {
    th_rng r;
    th_seed(&r, 1);
    size_t n = 4096;
    unsigned char *src = bh_tmalloc(n), *back = bh_tmalloc(n), *expect = bh_tmalloc(n);
    for (size_t i = 0; i < n; i++)
        src[i] = (unsigned char)th_u32(&r);
    pbuf a = bh_pnew(NULL, GUARD, n), b = bh_pnew(NULL, GUARD, n / 2);
    RUN2(bh_ops[s]->write(bh_dev[s], TQ, DEPS, B(a, s), GUARD, src, n));
    bh_same_bytes(&a, "write");
    RUN1(O->read(OD, TQ, DEPS, B(a, UT), GUARD, back, n));
    cr_assert_arr_eq(back, src, n);
    RUN2(bh_ops[s]->copy(bh_dev[s], BQ, DEPS, B(b, s), GUARD, B(a, s), GUARD + 100, n / 2));
    bh_same_bytes(&b, "copy");
    /* Overlapping ranges of one buffer copy like memmove (as the reference does). */
    memcpy(expect, src, n);
    memmove(expect + 10, expect, 1000);
    RUN2(bh_ops[s]->copy(bh_dev[s], CQ, DEPS, B(a, s), GUARD + 10, B(a, s), GUARD, 1000));
    RUN1(O->read(OD, CQ, DEPS, B(a, UT), GUARD, back, n));
    cr_assert_arr_eq(back, expect, n);
    bh_same_bytes(&a, "overlapping copy");
    RUN1(fkv_op_write(bh_device, CQ, DEPS, B(a, UT), 0, NULL, 0));
    RUN1(fkv_op_copy(bh_device, CQ, DEPS, B(a, UT), 0, B(b, UT), 0, 0));

    /* A chain across all three queues, ordered only by events: write (transfer) -> scatter
     * (compute) -> pack (background) -> read (transfer) gives the data back. */
    fkv_kv_geom g = {2, 1, 64, 16, FKV_BF16};
    size_t page = 2 * 2 * 16 * 64 * 2, n_pages = 8;
    unsigned char *host = bh_rand_stored(&r, n_pages * page / 2, FKV_BF16);
    fkv_bbuf *stage = bh_alloc1(UT, n_pages * page), *kp = bh_alloc1(UT, n_pages * page / 2),
             *vp = bh_alloc1(UT, n_pages * page / 2), *units = bh_alloc1(UT, n_pages * 2 * 8),
             *slots = bh_alloc1(UT, n_pages * 4), *out = bh_alloc1(UT, n_pages * page);
    int32_t *u = bh_tmalloc(n_pages * 2 * 8), *sl = bh_tmalloc(n_pages * 4);
    int32_t *order = bh_perm(&r, n_pages);
    for (size_t i = 0; i < n_pages * 2; i++) {
        u[2 * i] = order[i / 2];
        u[2 * i + 1] = (int32_t)(i % 2);
    }
    for (size_t i = 0; i < n_pages; i++)
        sl[i] = order[i];
    bh_write1(UT, units, 0, u, n_pages * 16);
    bh_write1(UT, slots, 0, sl, n_pages * 4);
    fkv_bevent *e[4] = {NULL, NULL, NULL, NULL};
    cr_assert_eq(O->write(OD, TQ, (fkv_deps){0, NULL, &e[0]}, stage, 0, host, n_pages * page),
                 FKV_OK);
    cr_assert_eq(O->scatter_hnd(OD, CQ, (fkv_deps){1, &e[0], &e[1]}, &g, stage, 0,
                                (uint32_t)n_pages * 2, units, 0, kp, vp),
                 FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(O->pack_hnd(OD, BQ, (fkv_deps){1, &e[1], &e[2]}, &g, kp, vp, (uint32_t)n_pages,
                             slots, 0, out, 0),
                 FKV_OK, "%s", fkv_last_error());
    unsigned char *got = bh_tmalloc(n_pages * page);
    cr_assert_eq(O->read(OD, TQ, (fkv_deps){1, &e[2], &e[3]}, out, 0, got, n_pages * page), FKV_OK);
    cr_assert_eq(O->event_wait(OD, 1, &e[3]), FKV_OK, "%s", fkv_last_error());
    for (int i = 0; i < 4; i++)
        O->event_release(OD, e[i]);
    cr_assert_arr_eq(got, host, n_pages * page);

    /* marker: completes after its waits and the queue's earlier commands. */
    fkv_bevent *m = NULL;
    cr_assert_eq(O->marker(OD, TQ, (fkv_deps){0, NULL, &m}), FKV_OK);
    cr_assert_eq(O->event_wait(OD, 1, &m), FKV_OK);
    O->event_release(OD, m);
    cr_assert_eq(O->finish(OD, BQ), FKV_OK);
}

void bh_check_host_memory(void) {
    fkv_bhost *h = NULL;
    void *p = NULL;
    cr_assert_eq(O->host_alloc(OD, 1 << 20, &h, &p), FKV_OK, "%s", fkv_last_error());
    cr_assert_not_null(p);
    memset(p, 0x5a, 1 << 20);
    fkv_bbuf *b = bh_alloc1(UT, 1 << 20);
    bh_write1(UT, b, 0, p, 1 << 20);
    unsigned char *back = bh_tmalloc(1 << 20);
    bh_read1(UT, b, 0, back, 1 << 20);
    cr_assert_eq(memcmp(back, p, 1 << 20), 0);
    /* Reads into pinned memory work too. */
    memset(p, 0, 1 << 20);
    bh_read1(UT, b, 0, p, 1 << 20);
    cr_assert_eq(memcmp(back, p, 1 << 20), 0);
    O->host_free(OD, h);
}

/* ---- kernels against the reference ---- */

void bh_check_append(void) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 100 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        uint32_t n_slots = 5, n_rows = 7;
        size_t re = (size_t)g.n_kv_heads * g.head_dim;
        pbuf kp, vp;
        bh_rand_pools(&r, &g, n_slots, &kp, &vp);
        int32_t *rows = bh_perm(&r, n_slots * g.page_size);
        float *k = bh_rand_f32(&r, n_rows * re, 2.0f), *v = bh_rand_f32(&r, n_rows * re, 2.0f);
        /* Extremes: overflow to infinity in f16, subnormals, a NaN. */
        k[0] = 70000.0f;
        k[1] = 3e-6f;
        k[2] = -1e-40f;
        v[0] = NAN;
        pbuf kb = bh_pnew(k, 16, n_rows * re * 4), vb = bh_pnew(v, 32, n_rows * re * 4);
        pbuf rb = bh_pnew(rows, 8, n_rows * 4);
        RUN2(bh_ops[s]->append(bh_dev[s], CQ, DEPS, &g, B(kb, s), 16, B(vb, s), 32, n_rows, B(rb, s),
                             8, B(kp, s), B(vp, s)));
        bh_same_bytes(&kp, "append k");
        bh_same_bytes(&vp, "append v");
    }
}

void bh_check_summarize(void) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 200 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        uint32_t n_slots = 6, n_pages = 4, n_summ = 9;
        pbuf kp, vp;
        bh_rand_pools(&r, &g, n_slots, &kp, &vp);
        int32_t *slots = bh_perm(&r, n_slots), *sidx = bh_perm(&r, n_summ);
        int32_t pages[8];
        for (uint32_t i = 0; i < n_pages; i++) {
            pages[2 * i] = slots[i];
            pages[2 * i + 1] = sidx[i];
        }
        size_t sbytes = (size_t)n_summ * g.n_kv_heads * 2 * g.head_dim * 4;
        pbuf pb = bh_pnew(pages, 4, sizeof pages), out = bh_pnew(NULL, 0, sbytes);
        RUN2(bh_ops[s]->summarize(bh_dev[s], BQ, DEPS, &g, B(kp, s), n_pages, B(pb, s), 4,
                                B(out, s)));
        bh_same_bytes(&out, "summaries");
    }
}

void bh_check_scores(void) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 300 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        uint32_t n_seqs = 3, n_summ = 40, hq = g.n_kv_heads * g.group;
        size_t sn = (size_t)n_summ * g.n_kv_heads * 2 * g.head_dim;
        float *summ = bh_rand_f32(&r, sn, 1.0f);
        for (size_t i = 0; i < sn; i += 2 * g.head_dim) /* min <= max per channel */
            for (size_t c = 0; c < g.head_dim; c++) {
                float a = summ[i + c], b = summ[i + g.head_dim + c];
                summ[i + c] = fminf(a, b);
                summ[i + g.head_dim + c] = fmaxf(a, b);
            }
        float *q = bh_rand_f32(&r, (size_t)n_seqs * hq * g.head_dim, 1.0f);
        /* Sequences of 13, 0 and 27 pages at different summary and output bases. */
        int32_t desc[9] = {5, 13, 3, 0, 0, 0, 18, 22, 3 + 13 * (int32_t)hq};
        size_t out_n = 3 + (size_t)(13 + 22) * hq;
        pbuf sb = bh_pnew(summ, 0, sn * 4), qb = bh_pnew(q, 8, (size_t)n_seqs * hq * g.head_dim * 4);
        pbuf db = bh_pnew(desc, 12, sizeof desc), out = bh_pnew(NULL, GUARD, out_n * 4);
        RUN2(bh_ops[s]->scores(bh_dev[s], CQ, DEPS, &g, B(qb, s), 8, n_seqs, B(db, s), 12, B(sb, s),
                             B(out, s), GUARD));
        bh_same_floats(&out, GUARD + 12, out_n - 3, 2e-5, "scores");
    }
}

void bh_check_cosine_flags(void) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 400 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        uint32_t n_seqs = 4, hk = g.n_kv_heads, hq = hk * g.group;
        size_t n = (size_t)n_seqs * hq * g.head_dim;
        float *cur = bh_rand_f32(&r, n, 1.0f), *prev = bh_tmalloc(n * 4), *noise = bh_rand_f32(&r, n, 1.0f);
        /* Query pairs from identical to unrelated, so the similarities span [-1, 1]. */
        for (size_t hi = 0; hi < (size_t)n_seqs * hq; hi++) {
            float mix = (float)(hi % 7) / 6.0f, sign = hi % 5 == 4 ? -1.0f : 1.0f;
            for (size_t c = 0; c < g.head_dim; c++) {
                size_t i = hi * g.head_dim + c;
                prev[i] = sign * ((1.0f - mix) * cur[i] + mix * noise[i]);
            }
        }
        memset(cur, 0, g.head_dim * 4); /* a zero-norm query: cosine 0 */
        float tau = 0.6f;
        pbuf cb = bh_pnew(cur, 4, n * 4), pb = bh_pnew(prev, 0, n * 4);
        pbuf sims = bh_pnew(NULL, GUARD, (size_t)n_seqs * hk * 4);
        pbuf flags = bh_pnew(NULL, GUARD, (size_t)n_seqs * hk * 4);
        RUN2(bh_ops[s]->cosine_flags(bh_dev[s], BQ, DEPS, &g, B(cb, s), 4, B(pb, s), 0, n_seqs, tau,
                                   B(sims, s), GUARD, B(flags, s), GUARD));
        bh_same_floats(&sims, GUARD, (size_t)n_seqs * hk, 1e-5, "sims");
        unsigned char *fs = bh_pb_read(&flags, UT), *fr = bh_pb_read(&flags, REF), *ss = bh_pb_read(&sims, REF);
        for (size_t i = 0; i < (size_t)n_seqs * hk; i++) {
            float sim = ((float *)(ss + GUARD))[i];
            if (fabsf(sim - tau) > 1e-4f)
                cr_assert_eq(((int32_t *)(fs + GUARD))[i], ((int32_t *)(fr + GUARD))[i],
                             "flag %zu (sim %f)", i, sim);
        }
        for (size_t i = 0; i < GUARD; i++)
            cr_assert(fs[i] == GUARD_BYTE && fs[flags.size - 1 - i] == GUARD_BYTE);
    }
}

/* The correction rule for non-finite queries (backend.h): a query head holding a NaN, or an
 * infinity, makes its KV head's similarity NaN and its flag 1, whatever tau; every other KV
 * head (identical queries, cosine 1) keeps flag 0. Asserted on both sides, so the CPU
 * reference is held to the rule as well, not only compared with. */
void bh_check_cosine_nan(void) {
    for (size_t gi = 0; gi < N_GEOS; gi++) {
        th_rng r;
        th_seed(&r, 450 + gi);
        fkv_kv_geom g = mk(geos[gi], FKV_F32);
        uint32_t n_seqs = 2, hk = g.n_kv_heads, hq = hk * g.group, d = g.head_dim;
        size_t n = (size_t)n_seqs * hq * d;
        float *cur = bh_rand_f32(&r, n, 1.0f), *prev = bh_tmalloc(n * 4);
        memcpy(prev, cur, n * 4);
        /* seq 0, KV head 0: NaN in its last query head; seq 1, last KV head: +inf in q_prev */
        size_t nan_at = ((size_t)(g.group - 1)) * d + (d > 1 ? 1 : 0);
        size_t inf_at = ((size_t)hq + (size_t)(hk - 1) * g.group) * d;
        cur[nan_at] = NAN;
        prev[inf_at] = INFINITY;
        size_t nan_bh = 0, inf_bh = (size_t)hk + hk - 1;
        pbuf cb = bh_pnew(cur, 0, n * 4), pb = bh_pnew(prev, 0, n * 4);
        pbuf sims = bh_pnew(NULL, GUARD, (size_t)n_seqs * hk * 4);
        pbuf flags = bh_pnew(NULL, GUARD, (size_t)n_seqs * hk * 4);
        float tau = -0.5f; /* every finite similarity here is far above it */
        RUN2(bh_ops[s]->cosine_flags(bh_dev[s], BQ, DEPS, &g, B(cb, s), 0, B(pb, s), 0, n_seqs,
                                   tau, B(sims, s), GUARD, B(flags, s), GUARD));
        for (int s = 0; s < 2; s++) {
            const float *sv = (const float *)(bh_pb_read(&sims, s) + GUARD);
            const int32_t *fv = (const int32_t *)(bh_pb_read(&flags, s) + GUARD);
            for (size_t bh = 0; bh < (size_t)n_seqs * hk; bh++) {
                int bad = bh == nan_bh || bh == inf_bh;
                cr_assert_eq(fv[bh], bad, "%s: Hk %u group %u d %u: flag of (seq %zu, KV head %zu) "
                             "is %d with similarity %g, tau %g (%s)",
                             side_name(s), hk, g.group, d, bh / hk, bh % hk, fv[bh],
                             (double)sv[bh], (double)tau,
                             bad ? "a non-finite query must be corrected" : "identical queries");
                if (bad)
                    cr_assert(isnan(sv[bh]), "%s: similarity of (seq %zu, KV head %zu) is %g, "
                              "want NaN", side_name(s), bh / hk, bh % hk, (double)sv[bh]);
            }
        }
    }
}

void bh_check_pack_hnd(void) {
    FOR_CASES {
        for (int odd = 0; odd < 2; odd++) { /* 16-byte aligned (vector path) or not */
            th_rng r;
            th_seed(&r, 500 + ti * 10 + gi + odd);
            fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
            uint32_t n_slots = 7, n_pages = 5;
            pbuf kp, vp;
            bh_rand_pools(&r, &g, n_slots, &kp, &vp);
            int32_t *sl = bh_perm(&r, n_slots);
            size_t page_bytes = 2 * slot_elems(&g) * fkv_dtype_size(g.dtype);
            size_t off = GUARD + (odd ? fkv_dtype_size(g.dtype) * 3 : 0);
            pbuf slb = bh_pnew(sl, 4, n_pages * 4), out = bh_pnew(NULL, off, n_pages * page_bytes);
            RUN2(bh_ops[s]->pack_hnd(bh_dev[s], CQ, DEPS, &g, B(kp, s), B(vp, s), n_pages, B(slb, s),
                                   4, B(out, s), off));
            bh_same_bytes(&out, "pack_hnd");
        }
    }
}

void bh_check_scatter_hnd(void) {
    FOR_CASES {
        for (int odd = 0; odd < 2; odd++) {
            th_rng r;
            th_seed(&r, 600 + ti * 10 + gi + odd);
            fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
            uint32_t n_slots = 12, n_units = 9;
            size_t unit_bytes = 2 * (size_t)g.page_size * g.head_dim * fkv_dtype_size(g.dtype);
            pbuf kp, vp;
            bh_rand_pools(&r, &g, n_slots, &kp, &vp);
            int32_t *which = bh_perm(&r, n_slots * g.n_kv_heads);
            int32_t *units = bh_tmalloc(n_units * 8);
            for (uint32_t i = 0; i < n_units; i++) {
                units[2 * i] = which[i] / (int32_t)g.n_kv_heads;
                units[2 * i + 1] = which[i] % (int32_t)g.n_kv_heads;
            }
            size_t off = odd ? fkv_dtype_size(g.dtype) * 5 : 32;
            size_t n_elems = n_units * unit_bytes / fkv_dtype_size(g.dtype);
            pbuf src = bh_pnew(bh_rand_stored(&r, n_elems, g.dtype), off, n_units * unit_bytes);
            pbuf ub = bh_pnew(units, 0, n_units * 8);
            RUN2(bh_ops[s]->scatter_hnd(bh_dev[s], BQ, DEPS, &g, B(src, s), off, n_units, B(ub, s), 0,
                                      B(kp, s), B(vp, s)));
            bh_same_bytes(&kp, "scatter k");
            bh_same_bytes(&vp, "scatter v");
        }
    }
}

/* recall_direct against the reference: host units at random offsets of one allocation. */
void bh_check_recall_direct_geom(th_rng *r, const fkv_kv_geom *g, int odd) {
    uint32_t n_slots = 12, n_units = 10, n_host_units = 16;
    size_t unit_bytes = 2 * (size_t)g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
    size_t host_bytes = n_host_units * unit_bytes + 64;
    fkv_bhost *h[2];
    void *hp[2];
    unsigned char *data = bh_rand_stored(r, host_bytes / fkv_dtype_size(g->dtype), g->dtype);
    for (int s = 0; s < 2; s++) {
        cr_assert_eq(bh_ops[s]->host_alloc(bh_dev[s], host_bytes, &h[s], &hp[s]), FKV_OK, "%s",
                     fkv_last_error());
        memcpy(hp[s], data, host_bytes);
    }
    pbuf kp, vp;
    bh_rand_pools(r, g, n_slots, &kp, &vp);
    int32_t *which = bh_perm(r, n_slots * g->n_kv_heads), *src = bh_perm(r, n_host_units);
    int32_t *units = bh_tmalloc(n_units * 8);
    uint64_t *offs = bh_tmalloc(n_units * 8);
    for (uint32_t i = 0; i < n_units; i++) {
        units[2 * i] = which[i] / (int32_t)g->n_kv_heads;
        units[2 * i + 1] = which[i] % (int32_t)g->n_kv_heads;
        offs[i] = (uint64_t)src[i] * unit_bytes + (odd ? fkv_dtype_size(g->dtype) : 0);
    }
    pbuf ub = bh_pnew(units, 8, n_units * 8);
    RUN2(bh_ops[s]->recall_direct(bh_dev[s], CQ, DEPS, g, h[s], n_units, offs, B(ub, s), 8, B(kp, s),
                                B(vp, s)));
    bh_same_bytes(&kp, "recall_direct k");
    bh_same_bytes(&vp, "recall_direct v");
    for (int s = 0; s < 2; s++)
        bh_ops[s]->host_free(bh_dev[s], h[s]);
}

void bh_check_recall_direct(void) {
    if (!direct_allowed())
        cr_skip_test("this %s device's kernels do not read host memory", cur->name);
    FOR_CASES {
        th_rng r;
        th_seed(&r, 700 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        bh_check_recall_direct_geom(&r, &g, 0);
        bh_check_recall_direct_geom(&r, &g, 1);
    }
}

/* Per (seq, KV head) slot lists: `count` distinct slots, full pages except a partial last one
 * (so contexts are not multiples of the page); one head of sequence 0 gets an empty list. */
typedef struct lists {
    int32_t *heads, *entries;
    uint32_t n_entries;
} lists;

static lists make_lists(th_rng *r, const fkv_kv_geom *g, uint32_t n_seqs, uint32_t n_slots) {
    lists l;
    uint32_t n_bh = n_seqs * g->n_kv_heads, max_per = 6;
    l.heads = bh_tmalloc(n_bh * 8);
    l.entries = bh_tmalloc((size_t)n_bh * max_per * 8 + 8);
    l.n_entries = 1; /* entry 0 unused: lists do not start at 0 */
    int32_t *order = bh_perm(r, n_bh); /* lists laid out in a shuffled order */
    for (uint32_t k = 0; k < n_bh; k++) {
        uint32_t bh = (uint32_t)order[k];
        uint32_t count = bh == 0 ? 0 : 1 + th_u32(r) % max_per;
        int32_t *sl = bh_perm(r, n_slots);
        l.heads[2 * bh] = (int32_t)l.n_entries;
        l.heads[2 * bh + 1] = (int32_t)count;
        for (uint32_t e = 0; e < count; e++) {
            int32_t valid = (int32_t)g->page_size;
            if (e + 1 == count)
                valid = 1 + (int32_t)(th_u32(r) % g->page_size);
            l.entries[2 * l.n_entries] = sl[e];
            l.entries[2 * l.n_entries + 1] = valid;
            l.n_entries++;
        }
    }
    return l;
}

void bh_check_attention(int splits) {
    cur->set_splits(OD, splits);
    FOR_CASES {
        for (uint32_t n_seqs = 1; n_seqs <= 3; n_seqs += 2) {
            th_rng r;
            th_seed(&r, 800 + ti * 10 + gi + n_seqs);
            fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
            uint32_t n_slots = 8, hq = g.n_kv_heads * g.group;
            size_t qn = (size_t)n_seqs * hq * g.head_dim;
            pbuf kp, vp;
            bh_rand_pools(&r, &g, n_slots, &kp, &vp);
            lists l = make_lists(&r, &g, n_seqs, n_slots);
            float *q = bh_rand_f32(&r, qn, 1.0f);
            float scale = 1.0f / sqrtf((float)g.head_dim);
            pbuf qb = bh_pnew(q, 4, qn * 4), hb = bh_pnew(l.heads, 0, (size_t)n_seqs * g.n_kv_heads * 8);
            pbuf eb = bh_pnew(l.entries, 16, (size_t)l.n_entries * 8), out = bh_pnew(NULL, GUARD, qn * 4);
            RUN2(bh_ops[s]->attention(bh_dev[s], CQ, DEPS, &g, B(qb, s), 4, n_seqs, B(hb, s), 0,
                                    B(eb, s), 16, B(kp, s), B(vp, s), scale, B(out, s), GUARD));
            bh_same_floats(&out, GUARD, qn, 2e-5, "attention");
        }
    }
}

/* One head against the naive reference of the test helpers (not only the CPU backend). */
void bh_check_attention_naive(void) {
    fkv_kv_geom g = {2, 4, 64, 16, FKV_F16};
    th_rng r;
    th_seed(&r, 900);
    uint32_t n_slots = 4, hq = 8, d = 64;
    pbuf kp, vp;
    bh_rand_pools(&r, &g, n_slots, &kp, &vp);
    unsigned char *kraw = bh_pb_read(&kp, UT), *vraw = bh_pb_read(&vp, UT);
    /* KV head 1 of the only sequence reads slots 2 (16 tokens) and 0 (5 tokens). */
    int32_t heads[4] = {0, 0, 0, 2}, entries[4] = {2, 16, 0, 5};
    float *q = bh_rand_f32(&r, hq * d, 1.0f);
    pbuf qb = bh_pnew(q, 0, hq * d * 4), hb = bh_pnew(heads, 0, 16), eb = bh_pnew(entries, 0, 16);
    pbuf out = bh_pnew(NULL, 0, hq * d * 4);
    for (int splits = 1; splits <= 2; splits++) {
        cur->set_splits(OD, splits);
        RUN1(O->attention(OD, CQ, DEPS, &g, B(qb, UT), 0, 1, B(hb, UT), 0, B(eb, UT), 0,
                          B(kp, UT), B(vp, UT), 0.125f, B(out, UT), 0));
        float *got = (float *)bh_pb_read(&out, UT);
        float *k = bh_tmalloc(21 * d * 4), *v = bh_tmalloc(21 * d * 4), ref[64];
        for (int t = 0; t < 21; t++) {
            size_t row = t < 16 ? (size_t)(2 * 16 + t) : (size_t)(t - 16);
            for (uint32_t c = 0; c < d; c++) {
                size_t i = (row * 2 + 1) * d + c;
                k[t * d + c] = fkv_load(kraw, FKV_F16, i);
                v[t * d + c] = fkv_load(vraw, FKV_F16, i);
            }
        }
        for (uint32_t h = 0; h < hq; h++) {
            if (h < 4) {
                for (uint32_t c = 0; c < d; c++)
                    cr_assert_eq(got[h * d + c], 0.0f, "empty list gives zeros");
                continue;
            }
            th_attention_ref(q + h * d, k, v, 21, d, d, 0.125f, ref);
            cr_assert_lt(th_max_abs_diff(got + h * d, ref, d), 1e-5, "head %u", h);
        }
    }
}

void bh_check_dense(int splits) {
    cur->set_splits(OD, splits);
    FOR_CASES {
        uint32_t counts[3] = {0, 1, 77};
        for (int ci = 0; ci < 3; ci++) {
            th_rng r;
            th_seed(&r, 1000 + ti * 10 + gi + ci);
            fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
            uint32_t n_tok = counts[ci], hq = g.n_kv_heads * g.group;
            size_t kn = (size_t)n_tok * g.n_kv_heads * g.head_dim, qn = (size_t)hq * g.head_dim;
            pbuf kb = bh_pnew(bh_rand_stored(&r, kn, g.dtype), 0, kn * fkv_dtype_size(g.dtype));
            pbuf vb = bh_pnew(bh_rand_stored(&r, kn, g.dtype), 0, kn * fkv_dtype_size(g.dtype));
            pbuf qb = bh_pnew(bh_rand_f32(&r, qn, 1.0f), 0, qn * 4), out = bh_pnew(NULL, GUARD, qn * 4);
            RUN2(bh_ops[s]->attention_dense(bh_dev[s], BQ, DEPS, &g, B(qb, s), 0, n_tok, B(kb, s),
                                          B(vb, s), 0.1f, B(out, s), GUARD));
            bh_same_floats(&out, GUARD, qn, 2e-5, "attention_dense");
        }
    }
}

/* Per-queue state (kernel objects, command pools): two threads enqueueing the same kernels on
 * COMPUTE and BACKGROUND at once get exactly the single-threaded results. */
typedef struct race_arg {
    fkv_queue q;
    const fkv_kv_geom *g;
    pbuf *qb, *hb, *eb, *kp, *vp, *out;
    fkv_status st;
} race_arg;

static void *race_thread(void *p) {
    race_arg *a = p;
    a->st = FKV_OK;
    for (int i = 0; i < 20 && a->st == FKV_OK; i++) {
        fkv_bevent *e = NULL;
        a->st = O->attention(OD, a->q, (fkv_deps){0, NULL, &e}, a->g, B(*a->qb, UT), 0, 2,
                             B(*a->hb, UT), 0, B(*a->eb, UT), 0, B(*a->kp, UT), B(*a->vp, UT),
                             0.1f, B(*a->out, UT), 0);
        if (a->st == FKV_OK) {
            a->st = O->event_wait(OD, 1, &e);
            O->event_release(OD, e);
        }
    }
    return NULL;
}

void bh_check_two_threads(void) {
    cur->set_splits(OD, 2); /* scratch per queue too */
    th_rng r;
    th_seed(&r, 1100);
    fkv_kv_geom g = {2, 4, 64, 16, FKV_BF16};
    pbuf kp, vp;
    bh_rand_pools(&r, &g, 8, &kp, &vp);
    lists l = make_lists(&r, &g, 2, 8);
    size_t qn = 2 * 8 * 64;
    pbuf qb = bh_pnew(bh_rand_f32(&r, qn, 1.0f), 0, qn * 4), hb = bh_pnew(l.heads, 0, 32);
    pbuf eb = bh_pnew(l.entries, 0, (size_t)l.n_entries * 8);
    pbuf o1 = bh_pnew(NULL, 0, qn * 4), o2 = bh_pnew(NULL, 0, qn * 4), o3 = bh_pnew(NULL, 0, qn * 4);
    RUN1(O->attention(OD, CQ, DEPS, &g, B(qb, UT), 0, 2, B(hb, UT), 0, B(eb, UT), 0,
                      B(kp, UT), B(vp, UT), 0.1f, B(o3, UT), 0));
    race_arg a = {CQ, &g, &qb, &hb, &eb, &kp, &vp, &o1, FKV_OK};
    race_arg b = {BQ, &g, &qb, &hb, &eb, &kp, &vp, &o2, FKV_OK};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, race_thread, &a);
    pthread_create(&tb, NULL, race_thread, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    cr_assert_eq(a.st, FKV_OK);
    cr_assert_eq(b.st, FKV_OK);
    unsigned char *x = bh_pb_read(&o1, UT), *y = bh_pb_read(&o2, UT), *z = bh_pb_read(&o3, UT);
    cr_assert_arr_eq(x, z, o1.size);
    cr_assert_arr_eq(y, z, o1.size);
}

/* ---- errors ---- */

void bh_check_alloc_limits(size_t max_alloc) {
    fkv_bbuf *big = NULL;
    fkv_status st = O->buffer_alloc(OD, max_alloc + 1, &big);
    cr_assert_eq(st, FKV_ERR_OUT_OF_DEVICE_MEMORY, "%d %s", st, fkv_last_error());
    cr_assert_null(big);
    cr_assert(strstr(fkv_last_error(), "largest allocation") != NULL, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_buffer_alloc(bh_device, 0, &big), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_null(big);
}

void bh_check_bad_arguments(void) {
    fkv_kv_geom g = {2, 2, 16, 4, FKV_F32}, bad = g;
    fkv_bbuf *kp = bh_alloc1(UT, 4096), *vp = bh_alloc1(UT, 4096), *idx = bh_alloc1(UT, 64);
    fkv_bbuf *qb = bh_alloc1(UT, 1024), *out = bh_alloc1(UT, 1024);
    /* Kernels only on compute/background. */
    REFUSED(fkv_op_scatter_hnd(bh_device, TQ, DEPS, &g, kp, 0, 1, idx, 0, kp, vp),
            FKV_ERR_INVALID_ARGUMENT);
    REFUSED(fkv_op_write(bh_device, (fkv_queue)7, DEPS, kp, 0, "x", 1), FKV_ERR_INVALID_ARGUMENT);
    /* Geometry. */
    bad.head_dim = 0;
    REFUSED(fkv_op_append(bh_device, CQ, DEPS, &bad, qb, 0, qb, 0, 1, idx, 0, kp, vp),
            FKV_ERR_INVALID_ARGUMENT);
    bad = g;
    bad.dtype = (fkv_dtype)9;
    REFUSED(fkv_op_summarize(bh_device, CQ, DEPS, &bad, kp, 1, idx, 0, out),
            FKV_ERR_INVALID_ARGUMENT);
    /* Offsets: misaligned, past the end, NULL buffers. */
    REFUSED(fkv_op_append(bh_device, CQ, DEPS, &g, qb, 2, qb, 0, 1, idx, 0, kp, vp),
            FKV_ERR_INVALID_ARGUMENT);
    REFUSED(fkv_op_append(bh_device, CQ, DEPS, &g, qb, 0, qb, 0, 100, idx, 0, kp, vp),
            FKV_ERR_INVALID_ARGUMENT);
    REFUSED(fkv_op_append(bh_device, CQ, DEPS, &g, NULL, 0, qb, 0, 1, idx, 0, kp, vp),
            FKV_ERR_INVALID_ARGUMENT);
    REFUSED(fkv_op_attention(bh_device, CQ, DEPS, &g, qb, 0, 1, idx, 0, idx, 0, kp, vp, 1.0f, out,
                             1020),
            FKV_ERR_INVALID_ARGUMENT);
    REFUSED(fkv_op_pack_hnd(bh_device, CQ, DEPS, &g, kp, vp, 1, idx, 0, out, 2),
            FKV_ERR_INVALID_ARGUMENT);
    static const unsigned char junk[128];
    REFUSED(fkv_op_write(bh_device, CQ, DEPS, kp, 4000, junk, 100), FKV_ERR_INVALID_ARGUMENT);
    REFUSED(fkv_op_read(bh_device, CQ, DEPS, kp, 0, NULL, 16), FKV_ERR_INVALID_ARGUMENT);
    /* recall_direct: offsets outside the host allocation. */
    if (direct_allowed()) {
        fkv_bhost *h;
        void *p;
        cr_assert_eq(fkv_op_host_alloc(bh_device, 1024, &h, &p), FKV_OK);
        uint64_t offs[2] = {0, 1000};
        REFUSED(fkv_op_recall_direct(bh_device, CQ, DEPS, &g, h, 2, offs, idx, 0, kp, vp),
                FKV_ERR_INVALID_ARGUMENT);
        fkv_op_host_free(bh_device, h);
    }
    /* Zero work still honours the wait list and yields an event. */
    RUN1(fkv_op_scatter_hnd(bh_device, CQ, DEPS, &g, kp, 0, 0, idx, 0, kp, vp));
    RUN1(fkv_op_attention(bh_device, BQ, DEPS, &g, qb, 0, 0, idx, 0, idx, 0, kp, vp, 1.0f, out,
                          0));
    /* Out-of-range indices in device descriptors are skipped, not written through. */
    int32_t units[4] = {1000, 0, 0, 7};
    unsigned char *before = bh_tmalloc(4096), *after = bh_tmalloc(4096);
    bh_read1(UT, kp, 0, before, 4096);
    bh_write1(UT, idx, 0, units, sizeof units);
    RUN1(O->scatter_hnd(OD, CQ, DEPS, &g, qb, 0, 2, idx, 0, kp, vp));
    bh_read1(UT, kp, 0, after, 4096);
    cr_assert_arr_eq(before, after, 4096);
}

/* ---- kernel variants for small shared memory ---- */

void bh_set_shared(size_t bytes) {
    cur->set_shared(OD, bytes);
    if (bytes == 0)
        return;
    fkv_kv_geom g = {1, 8, 128, 16, FKV_F32};
    fkv_attention_plan ap;
    cr_assert_eq(fkv_plan_attention("test", "attention", &g, bytes, 32, "test", &ap), FKV_OK);
    cr_assert_gt(ap.blocks, 1, "%zu bytes keep the group in one attention work group", bytes);
    if (bytes <= BH_SMALL_SHARED) {
        fkv_scores_plan sp;
        cr_assert_eq(fkv_plan_scores("test", &g, bytes, "test", &sp), FKV_OK);
        cr_assert_gt(sp.blocks, 1, "%zu bytes keep the group in one scores work group", bytes);
    }
}

/* ---- the whole decode pipeline against the CPU reference ---- */

/* Prefill two sequences (prompts not multiples of the page), then decode `steps` batched
 * steps; outputs [step][layer][seq][Hq*d]. The data depends only on (kind, seq, layer, t). */
static fkv_status run_pipeline(const char *backend, const char *device, const fkv_config *cfg,
                               uint32_t steps, float *out) {
    static const uint32_t prompts[2] = {150, 203}, seqs[2] = {0, 1};
    size_t kv = (size_t)cfg->n_kv_heads * cfg->head_dim, qn = (size_t)cfg->n_q_heads * cfg->head_dim;
    fkv_device *d = NULL;
    fkv_context *ctx = NULL;
    fkv_status st = fkv_device_open(backend, device, &d);
    if (st == FKV_OK)
        st = fkv_context_create(d, cfg, &ctx);
    float *k = bh_tmalloc(sizeof(float) * kv * 256), *v = bh_tmalloc(sizeof(float) * kv * 256);
    float *q = bh_tmalloc(sizeof(float) * qn * 2), *o = bh_tmalloc(sizeof(float) * qn * 2);
    th_rng r;
    for (uint32_t s = 0; s < 2 && st == FKV_OK; s++)
        for (uint32_t l = 0; l < cfg->n_layers && st == FKV_OK; l++) {
            th_seed(&r, 1 + s * 100 + l);
            th_fill_normal(&r, k, kv * prompts[s], 1.0f);
            th_fill_normal(&r, v, kv * prompts[s], 1.0f);
            th_fill_normal(&r, q, qn, 1.0f);
            fkv_tensor tk = {k, NULL, 0}, tv = {v, NULL, 0}, tq = {q, NULL, 0};
            st = fkv_prefill(ctx, s, l, prompts[s], &tk, &tv, &tq);
        }
    for (uint32_t step = 0; step < steps && st == FKV_OK; step++)
        for (uint32_t l = 0; l < cfg->n_layers && st == FKV_OK; l++) {
            th_seed(&r, 100000 + step * 100 + l);
            th_fill_normal(&r, q, 2 * qn, 1.0f);
            th_fill_normal(&r, k, 2 * kv, 1.0f);
            th_fill_normal(&r, v, 2 * kv, 1.0f);
            fkv_tensor tq = {q, NULL, 0}, tk = {k, NULL, 0}, tv = {v, NULL, 0}, to = {o, NULL, 0};
            st = fkv_decode_layer(ctx, l, 2, seqs, &tq, &tk, &tv, &to);
            if (st == FKV_OK)
                memcpy(out + ((size_t)step * cfg->n_layers + l) * 2 * qn, o, sizeof(float) * 2 * qn);
        }
    if (st == FKV_OK)
        st = fkv_context_sync(ctx);
    fkv_context_destroy(ctx);
    fkv_device_close(d);
    return st;
}

void bh_pipeline_config(fkv_config *cfg) {
    fkv_config_init(cfg);
    cfg->n_layers = 2;
    cfg->n_q_heads = 8;
    cfg->n_kv_heads = 2;
    cfg->head_dim = 64;
    cfg->page_size = 16;
    cfg->budget_tokens = 128;
    cfg->sink_tokens = 32;
    cfg->window_tokens = 32;
    cfg->max_seqs = 2;
    cfg->max_context = 512;
}

void bh_check_pipeline(const char *const *modes, int n_modes) {
    bh_need_device();
    char idx[16];
    snprintf(idx, sizeof idx, "%u", bh_index);
    static const fkv_policy policies[] = {FKV_POLICY_FREEKV, FKV_POLICY_SYNC, FKV_POLICY_DENSE};
    for (int pi = 0; pi < 3; pi++)
        for (int mi = 0; mi < n_modes; mi++) {
            if (pi == 2 && mi > 0)
                continue; /* dense recalls nothing */
            fkv_config cfg;
            bh_pipeline_config(&cfg);
            cfg.dtype = mi % 2 ? FKV_F16 : FKV_BF16;
            cfg.policy = policies[pi];
            uint32_t steps = 6;
            size_t n = (size_t)steps * cfg.n_layers * 2 * cfg.n_q_heads * cfg.head_dim;
            float *a = bh_tmalloc(n * sizeof(float)), *b = bh_tmalloc(n * sizeof(float));
            setenv(cur->recall_env, modes[mi], 1);
            fkv_status st = run_pipeline(cur->name, idx, &cfg, steps, a);
            cr_assert_eq(st, FKV_OK, "%s %s/%s: %s", cur->name, fkv_policy_name(cfg.policy), modes[mi],
                         fkv_last_error());
            cr_assert_eq(run_pipeline("cpu", NULL, &cfg, steps, b), FKV_OK, "cpu: %s",
                         fkv_last_error());
            double rel = th_rel_l2(a, b, n);
            cr_assert_lt(rel, 1e-4, "policy %s, recall %s: relative L2 %g",
                         fkv_policy_name(cfg.policy), modes[mi], rel);
        }
}
void bh_check_large_group(void) {
    bh_need_device();
    char idx[16];
    snprintf(idx, sizeof idx, "%u", bh_index);
    fkv_config cfg;
    fkv_config_init(&cfg);
    cfg.n_layers = 1;
    cfg.n_q_heads = 64;
    cfg.n_kv_heads = 1;
    cfg.head_dim = 256;
    cfg.page_size = 16;
    cfg.budget_tokens = 96;
    cfg.sink_tokens = 16;
    cfg.window_tokens = 32;
    cfg.dtype = FKV_F16;
    cfg.max_seqs = 2;
    cfg.max_context = 512;
    uint32_t steps = 3;
    size_t n = (size_t)steps * cfg.n_layers * 2 * cfg.n_q_heads * cfg.head_dim;
    float *a = bh_tmalloc(n * sizeof(float)), *b = bh_tmalloc(n * sizeof(float));
    fkv_status st = run_pipeline(cur->name, idx, &cfg, steps, a);
    cr_assert_eq(st, FKV_OK, "%s, group 64 x head_dim 256: %s", cur->name, fkv_last_error());
    cr_assert_eq(run_pipeline("cpu", NULL, &cfg, steps, b), FKV_OK, "cpu: %s", fkv_last_error());
    double rel = th_rel_l2(a, b, n);
    cr_assert_lt(rel, 1e-4, "group 64 x head_dim 256: relative L2 %g", rel);

    /* Too little shared memory for even one query head: refused at creation. */
    fkv_device *d = NULL;
    fkv_context *ctx = NULL;
    cr_assert_eq(fkv_device_open(cur->name, idx, &d), FKV_OK, "%s", fkv_last_error());
    cur->set_shared(fkv_device_bdev(d), 1024);
    st = fkv_context_create(d, &cfg, &ctx);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", fkv_last_error());
    fkv_device_close(d);
    cr_assert_eq(st, FKV_ERR_UNSUPPORTED, "%s with 1 KiB of shared memory: %d (%s)", cur->name,
                 st, msg);
    cr_assert_null(ctx);
    cr_assert(strstr(msg, "creating the context") && strstr(msg, "bytes of shared memory"),
              "the message names the limit: %s", msg);
}
