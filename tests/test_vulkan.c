/* The Vulkan backend, op by op, against the CPU reference backend on the same random data,
 * on lavapipe (or the first Vulkan device).
 *
 * Every kernel runs for f32, f16 and bf16 storage over several geometries (d 64/128, group
 * 1/4/8, page 16/32, contexts that are not multiples of the page); outputs sit between guard
 * bytes that must stay untouched. The kernels run again without 16-bit storage
 * (FREEKV_VULKAN_16BIT=0, suite vulkan_w32). Split-page attention is forced on and off; every
 * recall mode (FREEKV_VULKAN_RECALL), write_regions, the pipeline cache, environment and
 * argument errors are covered too. With FREEKV_VULKAN_VALIDATION=1 every test also fails on
 * any validation-layer error. Criterion forks per test: each test opens its own devices, and
 * nothing touches Vulkan before the fork. Without a Vulkan device every test is skipped. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/backend.h"
#include "backends/device.h"
#include "common/dtype.h"
#include "helpers.h"
#include "vulkan/vk_internal.h"

#define GUARD 64
#define GUARD_BYTE 0xA5
#define CQ FKV_QUEUE_COMPUTE
#define TQ FKV_QUEUE_TRANSFER
#define BQ FKV_QUEUE_BACKGROUND
#define VKD 0
#define REF 1

#if defined(__SANITIZE_ADDRESS__)
/* LeakSanitizer: PoCL/LLVM keep objects from a cold-cache build (see tests/lsan.supp, next to
 * this file, which this hook names so the suppressions live in one place). */
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

/* ---- fixture: the Vulkan device (side 0) and the CPU reference (side 1) ---- */

static const fkv_backend_ops *ops_[2];
static fkv_bdev *dev_[2];
static fkv_bbuf *bufs[2][256];
static size_t n_bufs[2];
static void *mems[1024];
static size_t n_mems;
static fkv_bevent *ev_;
#define DEPS ((fkv_deps){0, NULL, &ev_})
#define O ops_[VKD]
#define OD dev_[VKD]

static void *tmalloc(size_t size) {
    cr_assert_lt(n_mems, sizeof mems / sizeof *mems);
    void *p = calloc(1, size ? size : 1);
    cr_assert_not_null(p);
    mems[n_mems++] = p;
    return p;
}

static void clear_env(void) {
    unsetenv("FREEKV_VULKAN_RECALL");
    unsetenv("FREEKV_VULKAN_16BIT");
    unsetenv("FREEKV_CPU_RECALL");
    /* The pipeline cache next to PoCL's cache (CTest sets POCL_CACHE_DIR), not in $HOME. */
    char dir[1024];
    const char *pocl = getenv("POCL_CACHE_DIR");
    if (pocl && pocl[0])
        snprintf(dir, sizeof dir, "%s/freekv", pocl);
    else
        snprintf(dir, sizeof dir, "/tmp/freekv-test-cache-%ld", (long)getuid());
    setenv("FREEKV_CACHE_DIR", dir, 1);
}

/* lavapipe when there is one, else the first Vulkan device; 0 when there is none. */
static int find_device(uint32_t *index) {
    uint32_t n = 0;
    ops_[VKD] = fkv_backend_vulkan();
    if (ops_[VKD] == NULL || ops_[VKD]->device_count(&n) != FKV_OK || n == 0)
        return 0;
    *index = 0;
    for (uint32_t i = 0; i < n; i++) {
        fkv_device_info info;
        if (ops_[VKD]->device_info(i, &info) == FKV_OK &&
            (info.type == FKV_DEVICE_CPU || strstr(info.name, "llvmpipe"))) {
            *index = i;
            break;
        }
    }
    return 1;
}

static uint32_t vk_index;

static void need_device(void) {
    if (!find_device(&vk_index))
        cr_skip_test("no Vulkan device");
}

static void open_vk(void) {
    need_device();
    fkv_status st = O->device_open(vk_index, &dev_[VKD]);
    cr_assert_eq(st, FKV_OK, "vulkan device_open: %s", fkv_last_error());
}

/* Both devices, with the environment as it is. */
static void open_devices(void) {
    open_vk();
    ops_[REF] = fkv_backend_cpu();
    cr_assert_not_null(ops_[REF]);
    cr_assert_eq(ops_[REF]->device_open(0, &dev_[REF]), FKV_OK, "cpu: %s", fkv_last_error());
}

static void open_both(void) {
    clear_env();
    open_devices();
}

static void teardown(void) {
    if (dev_[VKD])
        cr_expect_eq(fkv_vulkan_debug_validation_errors(dev_[VKD]), 0,
                     "validation-layer errors (stderr)");
    for (int s = 0; s < 2; s++) {
        if (dev_[s] == NULL)
            continue;
        for (int q = 0; q < FKV_QUEUE_COUNT; q++)
            ops_[s]->finish(dev_[s], (fkv_queue)q);
        for (size_t i = 0; i < n_bufs[s]; i++)
            ops_[s]->buffer_free(dev_[s], bufs[s][i]);
        ops_[s]->device_close(dev_[s]);
        dev_[s] = NULL;
        n_bufs[s] = 0;
    }
    for (size_t i = 0; i < n_mems; i++)
        free(mems[i]);
    n_mems = 0;
}

/* Waits for ev_ of a successful enqueue on side s. */
static void done_ok(int s, fkv_status st, const char *what) {
    cr_assert_eq(st, FKV_OK, "%s (%s): %s", what, s ? "cpu" : "vulkan", fkv_last_error());
    cr_assert_not_null(ev_, "%s: no event", what);
    fkv_status w = ops_[s]->event_wait(dev_[s], 1, &ev_);
    ops_[s]->event_release(dev_[s], ev_);
    ev_ = NULL;
    cr_assert_eq(w, FKV_OK, "%s (%s) failed: %s", what, s ? "cpu" : "vulkan", fkv_last_error());
}
/* Runs `call` (which uses s) on the Vulkan device and the reference. */
#define RUN2(call)                  \
    for (int s = 0; s < 2; s++)     \
    done_ok(s, (call), #call)
#define RUN1(call) done_ok(VKD, (call), #call)

/* ---- paired buffers: the same bytes on both sides ---- */

typedef struct pbuf {
    fkv_bbuf *b[2];
    size_t size;
} pbuf;
#define B(p, s) ((p).b[s])

static fkv_bbuf *alloc1(int s, size_t size) {
    fkv_bbuf *b = NULL;
    cr_assert_eq(ops_[s]->buffer_alloc(dev_[s], size, &b), FKV_OK, "buffer_alloc: %s",
                 fkv_last_error());
    cr_assert_lt(n_bufs[s], 256);
    bufs[s][n_bufs[s]++] = b;
    return b;
}

static void write1(int s, fkv_bbuf *b, size_t off, const void *src, size_t size) {
    done_ok(s, ops_[s]->write(dev_[s], CQ, DEPS, b, off, src, size), "write");
}

static void read1(int s, const fkv_bbuf *b, size_t off, void *dst, size_t size) {
    done_ok(s, ops_[s]->read(dev_[s], CQ, DEPS, b, off, dst, size), "read");
}

/* `size` bytes of src (NULL: guard bytes) at offset `off`, guard bytes around (GUARD after). */
static pbuf pnew(const void *src, size_t off, size_t size) {
    pbuf p;
    p.size = off + size + GUARD;
    unsigned char *fill = tmalloc(p.size);
    memset(fill, GUARD_BYTE, p.size);
    if (src && size)
        memcpy(fill + off, src, size);
    for (int s = 0; s < 2; s++) {
        p.b[s] = alloc1(s, p.size);
        write1(s, p.b[s], 0, fill, p.size);
    }
    return p;
}

static unsigned char *pb_read(const pbuf *p, int s) {
    unsigned char *x = tmalloc(p->size);
    read1(s, p->b[s], 0, x, p->size);
    return x;
}

/* Both sides hold the same bytes (guards included). */
static void same_bytes(const pbuf *p, const char *what) {
    unsigned char *a = pb_read(p, VKD), *b = pb_read(p, REF);
    for (size_t i = 0; i < p->size; i++)
        cr_assert_eq(a[i], b[i], "%s: byte %zu differs (vulkan %02x, cpu %02x)", what, i, a[i],
                     b[i]);
}

/* Floats [off, off+n*4) agree within tol (absolute, scaled by 1 + |ref|); all other bytes
 * (the guards) are equal and untouched. */
static void same_floats(const pbuf *p, size_t off, size_t n, double tol, const char *what) {
    unsigned char *a = pb_read(p, VKD), *b = pb_read(p, REF);
    for (size_t i = 0; i < p->size; i++) {
        if (i >= off && i < off + n * 4)
            continue;
        cr_assert_eq(a[i], b[i], "%s: guard byte %zu changed", what, i);
        cr_assert_eq(a[i], GUARD_BYTE, "%s: guard byte %zu changed", what, i);
    }
    const float *x = (const float *)(a + off), *y = (const float *)(b + off);
    for (size_t i = 0; i < n; i++)
        cr_assert(fabs((double)x[i] - y[i]) <= tol * (1.0 + fabs(y[i])),
                  "%s: element %zu: vulkan %.9g, cpu %.9g", what, i, x[i], y[i]);
}

/* ---- data ---- */

static size_t esz(fkv_dtype t) { return t == FKV_F32 ? 4 : 2; }

static float *rand_f32(th_rng *r, size_t n, float scale) {
    float *x = tmalloc(n * sizeof *x);
    th_fill_normal(r, x, n, scale);
    return x;
}

/* n random values stored in dtype t. */
static void *rand_stored(th_rng *r, size_t n, fkv_dtype t) {
    float *x = rand_f32(r, n, 1.0f);
    unsigned char *out = tmalloc(n * esz(t));
    for (size_t i = 0; i < n; i++)
        fkv_store(out, t, i, x[i]);
    return out;
}

static int32_t *perm(th_rng *r, size_t n) {
    int32_t *a = tmalloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++)
        a[i] = (int32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = th_u32(r) % i;
        int32_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
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
static void rand_pools(th_rng *r, const fkv_kv_geom *g, uint32_t n_slots, pbuf *k, pbuf *v) {
    size_t n = n_slots * slot_elems(g);
    *k = pnew(rand_stored(r, n, g->dtype), 0, n * esz(g->dtype));
    *v = pnew(rand_stored(r, n, g->dtype), 0, n * esz(g->dtype));
}

#define FOR_CASES                                                          \
    for (size_t ti = 0; ti < 3; ti++)                                      \
        for (size_t gi = 0; gi < N_GEOS; gi++)
#define CASE_FMT "dtype %s, Hk %u, group %u, d %u, p %u"
#define CASE_ARGS fkv_dtype_name(dtypes[ti]), geos[gi].hk, geos[gi].group, geos[gi].d, geos[gi].p

TestSuite(vulkan, .init = open_both, .fini = teardown, .timeout = 300);
/* Tests that set the environment before opening devices themselves. */
static void open_both_w32(void) {
    clear_env();
    setenv("FREEKV_VULKAN_16BIT", "0", 1); /* the fallback: KV in 32-bit words */
    open_devices();
    cr_assert_eq(fkv_vulkan_debug_s16(OD), 0);
}
/* The kernels without 16-bit storage. */
TestSuite(vulkan_w32, .init = open_both_w32, .fini = teardown, .timeout = 300);
TestSuite(vulkan_env, .init = clear_env, .fini = teardown, .timeout = 300);

/* ---- device, table, copies ---- */

Test(vulkan, device_info_and_table) {
    fkv_device_info info, opened;
    uint32_t n = 0;
    cr_assert_eq(fkv_backend_check(O), FKV_OK, "%s", fkv_last_error());
    cr_assert_str_eq(O->name, "vulkan");
    cr_assert(O->buffer_import && O->write_regions && O->attention_dense && O->recall_direct &&
              O->recall_mode && O->opened_info);
    cr_assert_eq(O->device_count(&n), FKV_OK);
    cr_assert_gt(n, vk_index);
    cr_assert_eq(O->device_info(vk_index, &info), FKV_OK);
    cr_assert_eq(O->opened_info(OD, &opened), FKV_OK);
    cr_assert_str_eq(info.name, opened.name);
    cr_assert_eq(info.caps, opened.caps);
    cr_assert_str_eq(info.backend, "vulkan");
    cr_assert_gt(info.memory_bytes, 0);
    cr_assert_gt(info.max_buffer_bytes, 0);
    cr_assert(info.caps & FKV_CAP_FP16_STORAGE);
    cr_assert(info.caps & FKV_CAP_MULTI_REGION_COPY);
    cr_assert(fkv_vulkan_debug_subgroup(OD) >= 1);
    if (strstr(info.name, "llvmpipe")) { /* what DESIGN.md §4 says of lavapipe */
        cr_assert_eq(info.type, FKV_DEVICE_CPU);
        cr_assert_eq(info.caps & FKV_CAP_PINNED_HOST, 0, "nothing to pin on a CPU device");
        cr_assert_eq(info.max_buffer_bytes, 128u << 20, "maxStorageBufferRange");
        cr_assert_eq(fkv_vulkan_debug_subgroup(OD), 8);
        cr_assert(fkv_vulkan_debug_s16(OD), "lavapipe has 16-bit storage");
    }
    /* Zero-copy exactly when the default recall mode is direct (imported host memory). */
    cr_assert_eq(!!(info.caps & FKV_CAP_ZERO_COPY_HOST),
                 O->recall_mode(OD) == FKV_RECALL_DIRECT);
    cr_assert_eq(O->device_info(n, &info), FKV_ERR_NO_DEVICE);
    fkv_bdev *none = NULL;
    cr_assert_eq(O->device_open(n, &none), FKV_ERR_NO_DEVICE);
    cr_assert_null(none);
}

Test(vulkan, public_api) {
    fkv_device *d = NULL;
    fkv_buffer *b = NULL;
    unsigned char src[1000], back[500];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)(i * 7 + 3);
    char idx[16];
    snprintf(idx, sizeof idx, "%u", vk_index);
    cr_assert_eq(fkv_device_open("vulkan", idx, &d), FKV_OK, "%s", fkv_last_error());
    fkv_device_info info;
    cr_assert_eq(fkv_device_get_info(d, &info), FKV_OK);
    cr_assert_str_eq(info.backend, "vulkan");
    cr_assert_eq(fkv_buffer_alloc(d, sizeof src, &b), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_buffer_write(b, 0, src, sizeof src), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_buffer_read(b, 250, back, sizeof back), FKV_OK, "%s", fkv_last_error());
    cr_assert_arr_eq(back, src + 250, sizeof back);
    fkv_buffer_release(b);
    fkv_device_close(d);
}

Test(vulkan, copies_and_cross_queue_events) {
    th_rng r;
    th_seed(&r, 1);
    size_t n = 4096;
    unsigned char *src = tmalloc(n), *back = tmalloc(n), *expect = tmalloc(n);
    for (size_t i = 0; i < n; i++)
        src[i] = (unsigned char)th_u32(&r);
    pbuf a = pnew(NULL, GUARD, n), b = pnew(NULL, GUARD, n / 2);
    RUN2(ops_[s]->write(dev_[s], TQ, DEPS, B(a, s), GUARD, src, n));
    same_bytes(&a, "write");
    RUN1(O->read(OD, TQ, DEPS, B(a, VKD), GUARD, back, n));
    cr_assert_arr_eq(back, src, n);
    RUN2(ops_[s]->copy(dev_[s], BQ, DEPS, B(b, s), GUARD, B(a, s), GUARD + 100, n / 2));
    same_bytes(&b, "copy");
    /* Overlapping ranges of one buffer copy like memmove (as the reference does). */
    memcpy(expect, src, n);
    memmove(expect + 10, expect, 1000);
    RUN2(ops_[s]->copy(dev_[s], CQ, DEPS, B(a, s), GUARD + 10, B(a, s), GUARD, 1000));
    RUN1(O->read(OD, CQ, DEPS, B(a, VKD), GUARD, back, n));
    cr_assert_arr_eq(back, expect, n);
    same_bytes(&a, "overlapping copy");
    RUN1(O->write(OD, CQ, DEPS, B(a, VKD), 0, NULL, 0));
    RUN1(O->copy(OD, CQ, DEPS, B(a, VKD), 0, B(b, VKD), 0, 0));

    /* A chain across all three queues, ordered only by events: write (transfer) -> scatter
     * (compute) -> pack (background) -> read (transfer) gives the data back. */
    fkv_kv_geom g = {2, 1, 64, 16, FKV_BF16};
    size_t page = 2 * 2 * 16 * 64 * 2, n_pages = 8;
    unsigned char *host = rand_stored(&r, n_pages * page / 2, FKV_BF16);
    fkv_bbuf *stage = alloc1(VKD, n_pages * page), *kp = alloc1(VKD, n_pages * page / 2),
             *vp = alloc1(VKD, n_pages * page / 2), *units = alloc1(VKD, n_pages * 2 * 8),
             *slots = alloc1(VKD, n_pages * 4), *out = alloc1(VKD, n_pages * page);
    int32_t *u = tmalloc(n_pages * 2 * 8), *sl = tmalloc(n_pages * 4);
    int32_t *order = perm(&r, n_pages);
    for (size_t i = 0; i < n_pages * 2; i++) {
        u[2 * i] = order[i / 2];
        u[2 * i + 1] = (int32_t)(i % 2);
    }
    for (size_t i = 0; i < n_pages; i++)
        sl[i] = order[i];
    write1(VKD, units, 0, u, n_pages * 16);
    write1(VKD, slots, 0, sl, n_pages * 4);
    fkv_bevent *e[4] = {NULL, NULL, NULL, NULL};
    cr_assert_eq(O->write(OD, TQ, (fkv_deps){0, NULL, &e[0]}, stage, 0, host, n_pages * page),
                 FKV_OK);
    cr_assert_eq(O->scatter_hnd(OD, CQ, (fkv_deps){1, &e[0], &e[1]}, &g, stage, 0,
                                (uint32_t)n_pages * 2, units, 0, kp, vp),
                 FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(O->pack_hnd(OD, BQ, (fkv_deps){1, &e[1], &e[2]}, &g, kp, vp, (uint32_t)n_pages,
                             slots, 0, out, 0),
                 FKV_OK, "%s", fkv_last_error());
    unsigned char *got = tmalloc(n_pages * page);
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

Test(vulkan, host_memory) {
    fkv_bhost *h = NULL;
    void *p = NULL;
    cr_assert_eq(O->host_alloc(OD, 1 << 20, &h, &p), FKV_OK, "%s", fkv_last_error());
    cr_assert_not_null(p);
    memset(p, 0x5a, 1 << 20);
    fkv_bbuf *b = alloc1(VKD, 1 << 20);
    write1(VKD, b, 0, p, 1 << 20);
    unsigned char *back = tmalloc(1 << 20);
    read1(VKD, b, 0, back, 1 << 20);
    cr_assert_eq(memcmp(back, p, 1 << 20), 0);
    /* Reads into pinned memory work too. */
    memset(p, 0, 1 << 20);
    read1(VKD, b, 0, p, 1 << 20);
    cr_assert_eq(memcmp(back, p, 1 << 20), 0);
    O->host_free(OD, h);
}

/* ---- kernels against the reference ---- */

static void body_append(void);
Test(vulkan_w32, append) { body_append(); }
Test(vulkan, append) { body_append(); }
static void body_append(void) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 100 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        uint32_t n_slots = 5, n_rows = 7;
        size_t re = (size_t)g.n_kv_heads * g.head_dim;
        pbuf kp, vp;
        rand_pools(&r, &g, n_slots, &kp, &vp);
        int32_t *rows = perm(&r, n_slots * g.page_size);
        float *k = rand_f32(&r, n_rows * re, 2.0f), *v = rand_f32(&r, n_rows * re, 2.0f);
        /* Extremes: overflow to infinity in f16, subnormals, a NaN. */
        k[0] = 70000.0f;
        k[1] = 3e-6f;
        k[2] = -1e-40f;
        v[0] = NAN;
        pbuf kb = pnew(k, 16, n_rows * re * 4), vb = pnew(v, 32, n_rows * re * 4);
        pbuf rb = pnew(rows, 8, n_rows * 4);
        RUN2(ops_[s]->append(dev_[s], CQ, DEPS, &g, B(kb, s), 16, B(vb, s), 32, n_rows, B(rb, s),
                             8, B(kp, s), B(vp, s)));
        same_bytes(&kp, "append k");
        same_bytes(&vp, "append v");
    }
}

static void body_summarize(void);
Test(vulkan_w32, summarize) { body_summarize(); }
Test(vulkan, summarize) { body_summarize(); }
static void body_summarize(void) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 200 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        uint32_t n_slots = 6, n_pages = 4, n_summ = 9;
        pbuf kp, vp;
        rand_pools(&r, &g, n_slots, &kp, &vp);
        int32_t *slots = perm(&r, n_slots), *sidx = perm(&r, n_summ);
        int32_t pages[8];
        for (uint32_t i = 0; i < n_pages; i++) {
            pages[2 * i] = slots[i];
            pages[2 * i + 1] = sidx[i];
        }
        size_t sbytes = (size_t)n_summ * g.n_kv_heads * 2 * g.head_dim * 4;
        pbuf pb = pnew(pages, 4, sizeof pages), out = pnew(NULL, 0, sbytes);
        RUN2(ops_[s]->summarize(dev_[s], BQ, DEPS, &g, B(kp, s), n_pages, B(pb, s), 4,
                                B(out, s)));
        same_bytes(&out, "summaries");
    }
}

Test(vulkan, scores) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 300 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        uint32_t n_seqs = 3, n_summ = 40, hq = g.n_kv_heads * g.group;
        size_t sn = (size_t)n_summ * g.n_kv_heads * 2 * g.head_dim;
        float *summ = rand_f32(&r, sn, 1.0f);
        for (size_t i = 0; i < sn; i += 2 * g.head_dim) /* min <= max per channel */
            for (size_t c = 0; c < g.head_dim; c++) {
                float a = summ[i + c], b = summ[i + g.head_dim + c];
                summ[i + c] = fminf(a, b);
                summ[i + g.head_dim + c] = fmaxf(a, b);
            }
        float *q = rand_f32(&r, (size_t)n_seqs * hq * g.head_dim, 1.0f);
        /* Sequences of 13, 0 and 27 pages at different summary and output bases. */
        int32_t desc[9] = {5, 13, 3, 0, 0, 0, 18, 22, 3 + 13 * (int32_t)hq};
        size_t out_n = 3 + (size_t)(13 + 22) * hq;
        pbuf sb = pnew(summ, 0, sn * 4), qb = pnew(q, 8, (size_t)n_seqs * hq * g.head_dim * 4);
        pbuf db = pnew(desc, 12, sizeof desc), out = pnew(NULL, GUARD, out_n * 4);
        RUN2(ops_[s]->scores(dev_[s], CQ, DEPS, &g, B(qb, s), 8, n_seqs, B(db, s), 12, B(sb, s),
                             B(out, s), GUARD));
        same_floats(&out, GUARD + 12, out_n - 3, 2e-5, "scores");
    }
}

Test(vulkan, cosine_flags) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 400 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        uint32_t n_seqs = 4, hk = g.n_kv_heads, hq = hk * g.group;
        size_t n = (size_t)n_seqs * hq * g.head_dim;
        float *cur = rand_f32(&r, n, 1.0f), *prev = tmalloc(n * 4), *noise = rand_f32(&r, n, 1.0f);
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
        pbuf cb = pnew(cur, 4, n * 4), pb = pnew(prev, 0, n * 4);
        pbuf sims = pnew(NULL, GUARD, (size_t)n_seqs * hk * 4);
        pbuf flags = pnew(NULL, GUARD, (size_t)n_seqs * hk * 4);
        RUN2(ops_[s]->cosine_flags(dev_[s], BQ, DEPS, &g, B(cb, s), 4, B(pb, s), 0, n_seqs, tau,
                                   B(sims, s), GUARD, B(flags, s), GUARD));
        same_floats(&sims, GUARD, (size_t)n_seqs * hk, 1e-5, "sims");
        unsigned char *fs = pb_read(&flags, VKD), *fr = pb_read(&flags, REF), *ss = pb_read(&sims, REF);
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

static void body_pack_hnd(void);
Test(vulkan_w32, pack_hnd) { body_pack_hnd(); }
Test(vulkan, pack_hnd) { body_pack_hnd(); }
static void body_pack_hnd(void) {
    FOR_CASES {
        for (int odd = 0; odd < 2; odd++) { /* 16-byte aligned (vector path) or not */
            th_rng r;
            th_seed(&r, 500 + ti * 10 + gi + odd);
            fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
            uint32_t n_slots = 7, n_pages = 5;
            pbuf kp, vp;
            rand_pools(&r, &g, n_slots, &kp, &vp);
            int32_t *sl = perm(&r, n_slots);
            size_t page_bytes = 2 * slot_elems(&g) * esz(g.dtype);
            size_t off = GUARD + (odd ? esz(g.dtype) * 3 : 0);
            pbuf slb = pnew(sl, 4, n_pages * 4), out = pnew(NULL, off, n_pages * page_bytes);
            RUN2(ops_[s]->pack_hnd(dev_[s], CQ, DEPS, &g, B(kp, s), B(vp, s), n_pages, B(slb, s),
                                   4, B(out, s), off));
            same_bytes(&out, "pack_hnd");
        }
    }
}

static void body_scatter_hnd(void);
Test(vulkan_w32, scatter_hnd) { body_scatter_hnd(); }
Test(vulkan, scatter_hnd) { body_scatter_hnd(); }
static void body_scatter_hnd(void) {
    FOR_CASES {
        for (int odd = 0; odd < 2; odd++) {
            th_rng r;
            th_seed(&r, 600 + ti * 10 + gi + odd);
            fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
            uint32_t n_slots = 12, n_units = 9;
            size_t unit_bytes = 2 * (size_t)g.page_size * g.head_dim * esz(g.dtype);
            pbuf kp, vp;
            rand_pools(&r, &g, n_slots, &kp, &vp);
            int32_t *which = perm(&r, n_slots * g.n_kv_heads);
            int32_t *units = tmalloc(n_units * 8);
            for (uint32_t i = 0; i < n_units; i++) {
                units[2 * i] = which[i] / (int32_t)g.n_kv_heads;
                units[2 * i + 1] = which[i] % (int32_t)g.n_kv_heads;
            }
            size_t off = odd ? esz(g.dtype) * 5 : 32;
            pbuf src = pnew(rand_stored(&r, n_units * unit_bytes / esz(g.dtype), g.dtype), off,
                            n_units * unit_bytes);
            pbuf ub = pnew(units, 0, n_units * 8);
            RUN2(ops_[s]->scatter_hnd(dev_[s], BQ, DEPS, &g, B(src, s), off, n_units, B(ub, s), 0,
                                      B(kp, s), B(vp, s)));
            same_bytes(&kp, "scatter k");
            same_bytes(&vp, "scatter v");
        }
    }
}

/* recall_direct against the reference: host units at random offsets of one allocation. */
static void check_recall_direct(th_rng *r, const fkv_kv_geom *g, int odd) {
    uint32_t n_slots = 12, n_units = 10, n_host_units = 16;
    size_t unit_bytes = 2 * (size_t)g->page_size * g->head_dim * esz(g->dtype);
    size_t host_bytes = n_host_units * unit_bytes + 64;
    fkv_bhost *h[2];
    void *hp[2];
    unsigned char *data = rand_stored(r, host_bytes / esz(g->dtype), g->dtype);
    for (int s = 0; s < 2; s++) {
        cr_assert_eq(ops_[s]->host_alloc(dev_[s], host_bytes, &h[s], &hp[s]), FKV_OK, "%s",
                     fkv_last_error());
        memcpy(hp[s], data, host_bytes);
    }
    pbuf kp, vp;
    rand_pools(r, g, n_slots, &kp, &vp);
    int32_t *which = perm(r, n_slots * g->n_kv_heads), *src = perm(r, n_host_units);
    int32_t *units = tmalloc(n_units * 8);
    uint64_t *offs = tmalloc(n_units * 8);
    for (uint32_t i = 0; i < n_units; i++) {
        units[2 * i] = which[i] / (int32_t)g->n_kv_heads;
        units[2 * i + 1] = which[i] % (int32_t)g->n_kv_heads;
        offs[i] = (uint64_t)src[i] * unit_bytes + (odd ? esz(g->dtype) : 0);
    }
    pbuf ub = pnew(units, 8, n_units * 8);
    RUN2(ops_[s]->recall_direct(dev_[s], CQ, DEPS, g, h[s], n_units, offs, B(ub, s), 8, B(kp, s),
                                B(vp, s)));
    same_bytes(&kp, "recall_direct k");
    same_bytes(&vp, "recall_direct v");
    for (int s = 0; s < 2; s++)
        ops_[s]->host_free(dev_[s], h[s]);
}

static void body_recall_direct(void);
Test(vulkan_w32, recall_direct) { body_recall_direct(); }
Test(vulkan, recall_direct) { body_recall_direct(); }
static void body_recall_direct(void) {
    FOR_CASES {
        th_rng r;
        th_seed(&r, 700 + ti * 10 + gi);
        fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
        check_recall_direct(&r, &g, 0);
        check_recall_direct(&r, &g, 1);
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
    l.heads = tmalloc(n_bh * 8);
    l.entries = tmalloc((size_t)n_bh * max_per * 8 + 8);
    l.n_entries = 1; /* entry 0 unused: lists do not start at 0 */
    int32_t *order = perm(r, n_bh); /* lists laid out in a shuffled order */
    for (uint32_t k = 0; k < n_bh; k++) {
        uint32_t bh = (uint32_t)order[k];
        uint32_t count = bh == 0 ? 0 : 1 + th_u32(r) % max_per;
        int32_t *sl = perm(r, n_slots);
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

static void check_attention(int splits) {
    fkv_vulkan_debug_set_splits(OD, splits);
    FOR_CASES {
        for (uint32_t n_seqs = 1; n_seqs <= 3; n_seqs += 2) {
            th_rng r;
            th_seed(&r, 800 + ti * 10 + gi + n_seqs);
            fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
            uint32_t n_slots = 8, hq = g.n_kv_heads * g.group;
            size_t qn = (size_t)n_seqs * hq * g.head_dim;
            pbuf kp, vp;
            rand_pools(&r, &g, n_slots, &kp, &vp);
            lists l = make_lists(&r, &g, n_seqs, n_slots);
            float *q = rand_f32(&r, qn, 1.0f);
            float scale = 1.0f / sqrtf((float)g.head_dim);
            pbuf qb = pnew(q, 4, qn * 4), hb = pnew(l.heads, 0, (size_t)n_seqs * g.n_kv_heads * 8);
            pbuf eb = pnew(l.entries, 16, (size_t)l.n_entries * 8), out = pnew(NULL, GUARD, qn * 4);
            RUN2(ops_[s]->attention(dev_[s], CQ, DEPS, &g, B(qb, s), 4, n_seqs, B(hb, s), 0,
                                    B(eb, s), 16, B(kp, s), B(vp, s), scale, B(out, s), GUARD));
            same_floats(&out, GUARD, qn, 2e-5, "attention");
        }
    }
}

static void body_attention_unsplit(void);
Test(vulkan_w32, attention_unsplit) { body_attention_unsplit(); }
Test(vulkan, attention_unsplit) { body_attention_unsplit(); }
static void body_attention_unsplit(void) { check_attention(1); }
static void body_attention_split(void);
Test(vulkan_w32, attention_split) { body_attention_split(); }
Test(vulkan, attention_split) { body_attention_split(); }
static void body_attention_split(void) { check_attention(3); }
Test(vulkan, attention_auto_split) { check_attention(0); }

/* One head against the naive reference of the test helpers (not only the CPU backend). */
Test(vulkan, attention_naive_reference) {
    fkv_kv_geom g = {2, 4, 64, 16, FKV_F16};
    th_rng r;
    th_seed(&r, 900);
    uint32_t n_slots = 4, hq = 8, d = 64;
    pbuf kp, vp;
    rand_pools(&r, &g, n_slots, &kp, &vp);
    unsigned char *kraw = pb_read(&kp, VKD), *vraw = pb_read(&vp, VKD);
    /* KV head 1 of the only sequence reads slots 2 (16 tokens) and 0 (5 tokens). */
    int32_t heads[4] = {0, 0, 0, 2}, entries[4] = {2, 16, 0, 5};
    float *q = rand_f32(&r, hq * d, 1.0f);
    pbuf qb = pnew(q, 0, hq * d * 4), hb = pnew(heads, 0, 16), eb = pnew(entries, 0, 16);
    pbuf out = pnew(NULL, 0, hq * d * 4);
    for (int splits = 1; splits <= 2; splits++) {
        fkv_vulkan_debug_set_splits(OD, splits);
        RUN1(O->attention(OD, CQ, DEPS, &g, B(qb, VKD), 0, 1, B(hb, VKD), 0, B(eb, VKD), 0,
                          B(kp, VKD), B(vp, VKD), 0.125f, B(out, VKD), 0));
        float *got = (float *)pb_read(&out, VKD);
        float *k = tmalloc(21 * d * 4), *v = tmalloc(21 * d * 4), ref[64];
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

static void check_dense(int splits) {
    fkv_vulkan_debug_set_splits(OD, splits);
    FOR_CASES {
        uint32_t counts[3] = {0, 1, 77};
        for (int ci = 0; ci < 3; ci++) {
            th_rng r;
            th_seed(&r, 1000 + ti * 10 + gi + ci);
            fkv_kv_geom g = mk(geos[gi], dtypes[ti]);
            uint32_t n_tok = counts[ci], hq = g.n_kv_heads * g.group;
            size_t kn = (size_t)n_tok * g.n_kv_heads * g.head_dim, qn = (size_t)hq * g.head_dim;
            pbuf kb = pnew(rand_stored(&r, kn, g.dtype), 0, kn * esz(g.dtype));
            pbuf vb = pnew(rand_stored(&r, kn, g.dtype), 0, kn * esz(g.dtype));
            pbuf qb = pnew(rand_f32(&r, qn, 1.0f), 0, qn * 4), out = pnew(NULL, GUARD, qn * 4);
            RUN2(ops_[s]->attention_dense(dev_[s], BQ, DEPS, &g, B(qb, s), 0, n_tok, B(kb, s),
                                          B(vb, s), 0.1f, B(out, s), GUARD));
            same_floats(&out, GUARD, qn, 2e-5, "attention_dense");
        }
    }
}

Test(vulkan, attention_dense_unsplit) { check_dense(1); }
Test(vulkan, attention_dense_split) { check_dense(4); }

/* Command and descriptor pools are per queue: two threads enqueueing the same kernels on COMPUTE and
 * BACKGROUND at once get exactly the single-threaded results. */
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
        a->st = O->attention(OD, a->q, (fkv_deps){0, NULL, &e}, a->g, B(*a->qb, VKD), 0, 2,
                             B(*a->hb, VKD), 0, B(*a->eb, VKD), 0, B(*a->kp, VKD), B(*a->vp, VKD),
                             0.1f, B(*a->out, VKD), 0);
        if (a->st == FKV_OK) {
            a->st = O->event_wait(OD, 1, &e);
            O->event_release(OD, e);
        }
    }
    return NULL;
}

Test(vulkan, two_threads_two_queues) {
    fkv_vulkan_debug_set_splits(OD, 2); /* scratch per queue too */
    th_rng r;
    th_seed(&r, 1100);
    fkv_kv_geom g = {2, 4, 64, 16, FKV_BF16};
    pbuf kp, vp;
    rand_pools(&r, &g, 8, &kp, &vp);
    lists l = make_lists(&r, &g, 2, 8);
    size_t qn = 2 * 8 * 64;
    pbuf qb = pnew(rand_f32(&r, qn, 1.0f), 0, qn * 4), hb = pnew(l.heads, 0, 32);
    pbuf eb = pnew(l.entries, 0, (size_t)l.n_entries * 8);
    pbuf o1 = pnew(NULL, 0, qn * 4), o2 = pnew(NULL, 0, qn * 4), o3 = pnew(NULL, 0, qn * 4);
    RUN1(O->attention(OD, CQ, DEPS, &g, B(qb, VKD), 0, 2, B(hb, VKD), 0, B(eb, VKD), 0,
                      B(kp, VKD), B(vp, VKD), 0.1f, B(o3, VKD), 0));
    race_arg a = {CQ, &g, &qb, &hb, &eb, &kp, &vp, &o1, FKV_OK};
    race_arg b = {BQ, &g, &qb, &hb, &eb, &kp, &vp, &o2, FKV_OK};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, race_thread, &a);
    pthread_create(&tb, NULL, race_thread, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    cr_assert_eq(a.st, FKV_OK);
    cr_assert_eq(b.st, FKV_OK);
    unsigned char *x = pb_read(&o1, VKD), *y = pb_read(&o2, VKD), *z = pb_read(&o3, VKD);
    cr_assert_arr_eq(x, z, o1.size);
    cr_assert_arr_eq(y, z, o1.size);
}

/* ---- errors ---- */

#define REFUSED(call, status)                                                              \
    do {                                                                                   \
        ev_ = (fkv_bevent *)(uintptr_t)1; /* must come back NULL */                        \
        fkv_status st_ = (call);                                                           \
        cr_assert_eq(st_, status, "%s: got %d (%s)", #call, st_, fkv_last_error());        \
        cr_assert_null(ev_, "%s: event set on error", #call);                              \
        cr_assert(fkv_last_error()[0] != '\0', "%s: no message", #call);                   \
    } while (0)

Test(vulkan, bad_arguments) {
    fkv_kv_geom g = {2, 2, 16, 4, FKV_F32}, bad = g;
    fkv_bbuf *kp = alloc1(VKD, 4096), *vp = alloc1(VKD, 4096), *idx = alloc1(VKD, 64);
    fkv_bbuf *qb = alloc1(VKD, 1024), *out = alloc1(VKD, 1024);
    /* Kernels only on compute/background. */
    REFUSED(O->scatter_hnd(OD, TQ, DEPS, &g, kp, 0, 1, idx, 0, kp, vp), FKV_ERR_INVALID_ARGUMENT);
    REFUSED(O->write(OD, (fkv_queue)7, DEPS, kp, 0, "x", 1), FKV_ERR_INVALID_ARGUMENT);
    /* Geometry. */
    bad.head_dim = 0;
    REFUSED(O->append(OD, CQ, DEPS, &bad, qb, 0, qb, 0, 1, idx, 0, kp, vp),
            FKV_ERR_INVALID_ARGUMENT);
    bad = g;
    bad.dtype = (fkv_dtype)9;
    REFUSED(O->summarize(OD, CQ, DEPS, &bad, kp, 1, idx, 0, out), FKV_ERR_INVALID_ARGUMENT);
    /* Offsets: misaligned, past the end, NULL buffers. */
    REFUSED(O->append(OD, CQ, DEPS, &g, qb, 2, qb, 0, 1, idx, 0, kp, vp),
            FKV_ERR_INVALID_ARGUMENT);
    REFUSED(O->append(OD, CQ, DEPS, &g, qb, 0, qb, 0, 100, idx, 0, kp, vp),
            FKV_ERR_INVALID_ARGUMENT);
    REFUSED(O->append(OD, CQ, DEPS, &g, NULL, 0, qb, 0, 1, idx, 0, kp, vp),
            FKV_ERR_INVALID_ARGUMENT);
    REFUSED(O->attention(OD, CQ, DEPS, &g, qb, 0, 1, idx, 0, idx, 0, kp, vp, 1.0f, out, 1020),
            FKV_ERR_INVALID_ARGUMENT);
    REFUSED(O->pack_hnd(OD, CQ, DEPS, &g, kp, vp, 1, idx, 0, out, 2), FKV_ERR_INVALID_ARGUMENT);
    static const unsigned char junk[128];
    REFUSED(O->write(OD, CQ, DEPS, kp, 4000, junk, 100), FKV_ERR_INVALID_ARGUMENT);
    REFUSED(O->read(OD, CQ, DEPS, kp, 0, NULL, 16), FKV_ERR_INVALID_ARGUMENT);
    /* recall_direct: offsets outside the host allocation. */
    {
        fkv_bhost *h;
        void *p;
        cr_assert_eq(O->host_alloc(OD, 1024, &h, &p), FKV_OK);
        uint64_t offs[2] = {0, 1000};
        REFUSED(O->recall_direct(OD, CQ, DEPS, &g, h, 2, offs, idx, 0, kp, vp),
                FKV_ERR_INVALID_ARGUMENT);
        O->host_free(OD, h);
    }
    /* Zero work still honours the wait list and yields an event. */
    RUN1(O->scatter_hnd(OD, CQ, DEPS, &g, kp, 0, 0, idx, 0, kp, vp));
    RUN1(O->attention(OD, BQ, DEPS, &g, qb, 0, 0, idx, 0, idx, 0, kp, vp, 1.0f, out, 0));
    /* Out-of-range indices in device descriptors are skipped, not written through. */
    int32_t units[4] = {1000, 0, 0, 7};
    unsigned char *before = tmalloc(4096), *after = tmalloc(4096);
    read1(VKD, kp, 0, before, 4096);
    write1(VKD, idx, 0, units, sizeof units);
    RUN1(O->scatter_hnd(OD, CQ, DEPS, &g, qb, 0, 2, idx, 0, kp, vp));
    read1(VKD, kp, 0, after, 4096);
    cr_assert_arr_eq(before, after, 4096);
}

/* ---- Vulkan specifics: memory limits, write_regions, recall modes, environment ---- */

Test(vulkan, memory_errors_and_import) {
    /* More than the device can allocate is a status, not a crash. */
    fkv_bbuf *big = NULL;
    fkv_status st = O->buffer_alloc(OD, (size_t)OD->max_alloc + 1, &big);
    cr_assert_eq(st, FKV_ERR_OUT_OF_DEVICE_MEMORY, "%d %s", st, fkv_last_error());
    cr_assert_null(big);
    cr_assert(strstr(fkv_last_error(), "largest allocation") != NULL);
    cr_assert_eq(O->buffer_alloc(OD, 0, &big), FKV_ERR_INVALID_ARGUMENT);
    /* A buffer above maxStorageBufferRange can be allocated and copied, but a kernel that
     * would bind it in one piece is refused with the limit named. */
    if (OD->max_range < OD->max_alloc && OD->max_range < (512u << 20)) {
        fkv_kv_geom g = {1, 1, 64, 16, FKV_F32};
        size_t size = (size_t)OD->max_range + (1u << 20);
        fkv_bbuf *kp = alloc1(VKD, size), *idx = alloc1(VKD, 64);
        int32_t u[2] = {0, 0};
        write1(VKD, idx, 0, u, 8);
        ev_ = NULL;
        cr_assert_eq(O->scatter_hnd(OD, CQ, DEPS, &g, idx, 0, 0, idx, 0, kp, kp),
                     FKV_ERR_UNSUPPORTED);
        cr_assert(strstr(fkv_last_error(), "maxStorageBufferRange") != NULL, "%s",
                  fkv_last_error());
        cr_assert_null(ev_);
        unsigned char x[16] = {1, 2, 3}, y[16];
        write1(VKD, kp, size - 16, x, 16); /* copies are not bound by the range */
        read1(VKD, kp, size - 16, y, 16);
        cr_assert_arr_eq(x, y, 16);
    }
    /* An engine-owned VkBuffer wraps and copies like ours. */
    fkv_bbuf *own = alloc1(VKD, 4096), *imp = NULL;
    cr_assert_eq(O->buffer_import(OD, (void *)(uintptr_t)own->buf, 4096, &imp), FKV_OK);
    unsigned char src[256], back[256];
    for (int i = 0; i < 256; i++)
        src[i] = (unsigned char)(255 - i);
    write1(VKD, imp, 1000, src, 256);
    read1(VKD, own, 1000, back, 256);
    cr_assert_arr_eq(back, src, 256);
    O->buffer_free(OD, imp); /* the VkBuffer stays */
    read1(VKD, own, 1000, back, 256);
    cr_assert_arr_eq(back, src, 256);
}

/* write_regions from host_alloc memory, from ordinary memory and mixed, against the reference. */
static void check_write_regions(void) {
    th_rng r;
    th_seed(&r, 1200);
    size_t n = 64, unit = 1000;
    fkv_bhost *h[2];
    void *hp[2];
    unsigned char *heap = tmalloc(n * unit);
    for (size_t i = 0; i < n * unit; i++)
        heap[i] = (unsigned char)th_u32(&r);
    for (int s = 0; s < 2; s++) {
        cr_assert_eq(ops_[s]->host_alloc(dev_[s], n * unit, &h[s], &hp[s]), FKV_OK);
        memcpy(hp[s], heap, n * unit);
    }
    int32_t *order = perm(&r, n);
    for (int mix = 0; mix < 3; mix++) {
        fkv_copy_region *rg[2];
        for (int s = 0; s < 2; s++) {
            rg[s] = tmalloc(n * sizeof *rg[s]);
            for (size_t i = 0; i < n; i++) {
                int pinned = mix == 0 || (mix == 2 && i % 3 == 0);
                const unsigned char *base = pinned ? hp[s] : heap;
                rg[s][i] = (fkv_copy_region){base + (size_t)order[i] * unit, GUARD + i * unit,
                                             unit - (i % 7)};
            }
        }
        pbuf dst = pnew(NULL, GUARD, n * unit);
        RUN2(ops_[s]->write_regions(dev_[s], TQ, DEPS, B(dst, s), (uint32_t)n, rg[s]));
        same_bytes(&dst, "write_regions");
    }
    RUN1(O->write_regions(OD, TQ, DEPS, bufs[VKD][0], 0, NULL));
    for (int s = 0; s < 2; s++)
        ops_[s]->host_free(dev_[s], h[s]);
}

Test(vulkan, write_regions) { check_write_regions(); }

Test(vulkan_env, write_regions_perpage) {
    setenv("FREEKV_VULKAN_RECALL", "perpage", 1);
    open_devices();
    cr_assert(fkv_vulkan_debug_perpage(OD));
    check_write_regions();
}

Test(vulkan_env, recall_modes) {
    need_device();
    fkv_device_info info;
    cr_assert_eq(O->device_info(vk_index, &info), FKV_OK);
    int zero_copy = (info.caps & FKV_CAP_ZERO_COPY_HOST) != 0;
    struct {
        const char *value;
        fkv_recall_mode mode;
        int import, perpage;
    } cases[] = {
        {"staged", FKV_RECALL_STAGED, 0, 0},
        {"perpage", FKV_RECALL_PERPAGE, 0, 1},
        {"regions", FKV_RECALL_PERPAGE, 0, 0},
        {"hostptr", FKV_RECALL_DIRECT, 1, 0},
        {"auto", zero_copy ? FKV_RECALL_DIRECT : FKV_RECALL_STAGED, zero_copy, 0},
        {"", zero_copy ? FKV_RECALL_DIRECT : FKV_RECALL_STAGED, zero_copy, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        setenv("FREEKV_VULKAN_RECALL", cases[i].value, 1);
        fkv_status st = O->device_open(vk_index, &dev_[VKD]);
        cr_assert_eq(st, FKV_OK, "%s: %s", cases[i].value, fkv_last_error());
        cr_assert_eq(O->recall_mode(OD), cases[i].mode, "FREEKV_VULKAN_RECALL=%s",
                     cases[i].value);
        cr_assert_eq(fkv_op_recall_mode(O, OD), cases[i].mode);
        cr_assert_eq(fkv_vulkan_debug_import_host(OD), cases[i].import, "%s", cases[i].value);
        cr_assert_eq(fkv_vulkan_debug_perpage(OD), cases[i].perpage, "%s", cases[i].value);
        /* Whatever the mode, host_alloc memory is readable by recall_direct. */
        th_rng r;
        th_seed(&r, 1300 + i);
        ops_[REF] = fkv_backend_cpu();
        cr_assert_eq(ops_[REF]->device_open(0, &dev_[REF]), FKV_OK);
        fkv_kv_geom g = {2, 1, 64, 16, FKV_BF16};
        check_recall_direct(&r, &g, 0);
        teardown();
    }
}

Test(vulkan_env, bad_environment) {
    need_device();
    fkv_bdev *d = NULL;
    setenv("FREEKV_VULKAN_RECALL", "zero-copy", 1);
    cr_assert_eq(O->device_open(vk_index, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert_null(d);
    const char *msg = fkv_last_error();
    cr_assert(strstr(msg, "FREEKV_VULKAN_RECALL") && strstr(msg, "auto") &&
                  strstr(msg, "staged") && strstr(msg, "regions") && strstr(msg, "hostptr") &&
                  strstr(msg, "perpage"),
              "message lists the valid values: %s", msg);
    unsetenv("FREEKV_VULKAN_RECALL");
    setenv("FREEKV_VULKAN_16BIT", "yes", 1);
    cr_assert_eq(O->device_open(vk_index, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert(strstr(fkv_last_error(), "FREEKV_VULKAN_16BIT") != NULL, "%s", fkv_last_error());
    cr_assert_null(d);
}

Test(vulkan_env, pipeline_cache_file) {
    need_device();
    char dir[] = "/tmp/freekv-vkcache-test-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char sub[600];
    snprintf(sub, sizeof sub, "%s/nested", dir);
    setenv("FREEKV_CACHE_DIR", sub, 1);
    for (int round = 0; round < 3; round++) {
        cr_assert_eq(O->device_open(vk_index, &dev_[VKD]), FKV_OK, "%s", fkv_last_error());
        fkv_kv_geom g = {1, 1, 16, 4, FKV_BF16};
        fkv_bbuf *kp = alloc1(VKD, 4096), *idx = alloc1(VKD, 64);
        int32_t u[2] = {0, 0};
        write1(VKD, idx, 0, u, 8);
        RUN1(O->scatter_hnd(OD, CQ, DEPS, &g, kp, 0, 1, idx, 0, kp, kp));
        teardown(); /* writes the cache file */
        char cmd[1400];
        if (round == 0) { /* a file is there, with no temporaries left */
            snprintf(cmd, sizeof cmd, "ls %s/vulkan-*.pcache >/dev/null && test -z \"$(ls %s | grep tmp)\"", sub, sub);
            cr_assert_eq(system(cmd), 0);
        } else if (round == 1) { /* a corrupt file is ignored and replaced */
            snprintf(cmd, sizeof cmd, "for f in %s/vulkan-*.pcache; do head -c 20 \"$f\" > \"$f.x\" && mv \"$f.x\" \"$f\"; done", sub);
            cr_assert_eq(system(cmd), 0);
        }
    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

/* ---- the whole decode pipeline: Vulkan against the CPU reference ---- */

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
    float *k = tmalloc(sizeof(float) * kv * 256), *v = tmalloc(sizeof(float) * kv * 256);
    float *q = tmalloc(sizeof(float) * qn * 2), *o = tmalloc(sizeof(float) * qn * 2);
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

Test(vulkan_env, pipeline_matches_reference, .timeout = 600) {
    need_device();
    char idx[16];
    snprintf(idx, sizeof idx, "%u", vk_index);
    static const char *const modes[] = {"staged", "perpage", "regions", "hostptr", "auto"};
    static const fkv_policy policies[] = {FKV_POLICY_FREEKV, FKV_POLICY_SYNC, FKV_POLICY_DENSE};
    for (int pi = 0; pi < 3; pi++)
        for (int mi = 0; mi < 5; mi++) {
            if (pi == 2 && mi > 0)
                continue; /* dense recalls nothing */
            fkv_config cfg;
            fkv_config_init(&cfg);
            cfg.n_layers = 2;
            cfg.n_q_heads = 8;
            cfg.n_kv_heads = 2;
            cfg.head_dim = 64;
            cfg.page_size = 16;
            cfg.budget_tokens = 128;
            cfg.sink_tokens = 32;
            cfg.window_tokens = 32;
            cfg.dtype = mi % 2 ? FKV_F16 : FKV_BF16;
            cfg.policy = policies[pi];
            cfg.max_seqs = 2;
            cfg.max_context = 512;
            uint32_t steps = 6;
            size_t n = (size_t)steps * cfg.n_layers * 2 * cfg.n_q_heads * cfg.head_dim;
            float *a = tmalloc(n * sizeof(float)), *b = tmalloc(n * sizeof(float));
            setenv("FREEKV_VULKAN_RECALL", modes[mi], 1);
            fkv_status st = run_pipeline("vulkan", idx, &cfg, steps, a);
            cr_assert_eq(st, FKV_OK, "vulkan %s/%s: %s", fkv_policy_name(cfg.policy), modes[mi],
                         fkv_last_error());
            cr_assert_eq(run_pipeline("cpu", NULL, &cfg, steps, b), FKV_OK, "cpu: %s",
                         fkv_last_error());
            double rel = th_rel_l2(a, b, n);
            cr_assert_lt(rel, 1e-4, "policy %s, recall %s: relative L2 %g",
                         fkv_policy_name(cfg.policy), modes[mi], rel);
        }
}
