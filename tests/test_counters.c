/* Device command counters (fkv_device_get_counters): every count that is deterministic, on the
 * CPU reference and on the device backends CI has (PoCL, lavapipe). Each test takes a
 * snapshot, runs one thing and checks the difference, so work done while opening the device
 * never matters. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "backends/dispatch.h"
#include "common/thread_role.h"
#include "core/correction.h"
#include "core/retrieval.h"
#include "core/state.h"
#include "helpers.h"
#include "pipeline_driver.h"

/* ---- fixture ---- */

/* The first device of `backend`; skips the test when there is none (fails it when
 * FREEKV_REQUIRE_DEVICES names the backend). */
static fkv_device *open_device(const char *backend) {
    static const char *const recall_vars[] = {"FREEKV_CPU_RECALL", "FREEKV_OPENCL_RECALL",
                                              "FREEKV_VULKAN_RECALL", "FREEKV_HIP_RECALL"};
    for (size_t i = 0; i < sizeof recall_vars / sizeof *recall_vars; i++)
        unsetenv(recall_vars[i]);
    unsetenv("FREEKV_DEVICE");
    if (fkv_backend_find(backend) == NULL)
        cr_skip_test("backend %s is not compiled in", backend);
    fkv_device *dev = NULL;
    fkv_status st = fkv_device_open(backend, NULL, &dev);
    if (st == FKV_ERR_NO_DEVICE && !th_device_required(backend))
        cr_skip_test("no %s device", backend);
    cr_assert_eq(st, FKV_OK, "%s: %s", backend, fkv_last_error());
    return dev;
}

/* Attention in one launch on the device backends (the option they have), so that a call's
 * launches do not depend on the device's split decision. */
static void one_attention_launch(fkv_device *dev, const char *backend) {
    fkv_device_info info;
    fkv_device_get_info(dev, &info);
    if (info.type != FKV_DEVICE_REFERENCE)
        cr_assert_eq(th_set_option(dev, "attention_splits", 1), FKV_OK, "%s: %s", backend,
                     fkv_last_error());
}

/* The device of `backend` opened with its recall mode variable set to mode (open_device
 * clears them), skipping as open_device does. */
static fkv_device *open_device_recall(const char *backend, const char *var, const char *mode) {
    fkv_device_close(open_device(backend)); /* skips without the backend or its device */
    setenv(var, mode, 1);
    fkv_device *dev = NULL;
    fkv_status st = fkv_device_open(backend, NULL, &dev);
    unsetenv(var);
    cr_assert_eq(st, FKV_OK, "%s", fkv_last_error());
    return dev;
}

static fkv_counters snap(fkv_device *dev) {
    fkv_counters c;
    cr_assert_eq(fkv_device_get_counters(dev, &c), FKV_OK, "%s", fkv_last_error());
    return c;
}

/* after - before, every field */
static fkv_counters diff(const fkv_counters *after, const fkv_counters *before) {
    fkv_counters d;
    for (int q = 0; q < FKV_COUNTER_QUEUES; q++) {
        const fkv_queue_counters *a = &after->queues[q], *b = &before->queues[q];
        d.queues[q] = (fkv_queue_counters){.launches = a->launches - b->launches,
                                           .copies = a->copies - b->copies,
                                           .submits = a->submits - b->submits,
                                           .h2d_bytes = a->h2d_bytes - b->h2d_bytes,
                                           .d2h_bytes = a->d2h_bytes - b->d2h_bytes};
    }
    d.caller_waits = after->caller_waits - before->caller_waits;
    d.worker_waits = after->worker_waits - before->worker_waits;
    d.device_allocs = after->device_allocs - before->device_allocs;
    d.host_allocs = after->host_allocs - before->host_allocs;
    return d;
}

/* Sums over the queues. */
typedef struct totals {
    uint64_t launches, copies, submits, h2d, d2h;
} totals;

static totals total(const fkv_counters *c) {
    totals t = {0, 0, 0, 0, 0};
    for (int q = 0; q < FKV_COUNTER_QUEUES; q++) {
        t.launches += c->queues[q].launches;
        t.copies += c->queues[q].copies;
        t.submits += c->queues[q].submits;
        t.h2d += c->queues[q].h2d_bytes;
        t.d2h += c->queues[q].d2h_bytes;
    }
    return t;
}

static const fkv_deps no_deps = {0, NULL, NULL};

/* ---- the checks, run on each backend ---- */

/* A blocking buffer write (read): one copy on the compute queue carrying its bytes
 * host->device (device->host), one submission, one wait on the caller's thread. */
static void check_transfer(const char *backend, int read) {
    fkv_device *dev = open_device(backend);
    fkv_buffer *buf = NULL;
    cr_assert_eq(fkv_buffer_alloc(dev, 4096, &buf), FKV_OK, "%s", fkv_last_error());
    unsigned char data[1000];
    memset(data, 7, sizeof data);
    fkv_counters a = snap(dev);
    fkv_status st = read ? fkv_buffer_read(buf, 400, data, 600)
                         : fkv_buffer_write(buf, 96, data, sizeof data);
    cr_assert_eq(st, FKV_OK, "%s", fkv_last_error());
    fkv_counters b = snap(dev);
    fkv_counters d = diff(&b, &a);
    totals t = total(&d);
    const fkv_queue_counters *cq = &d.queues[FKV_COUNTER_COMPUTE];
    cr_expect_eq(cq->copies, 1, "%s: copies", backend);
    cr_expect_eq(t.copies, 1, "%s: copies on all queues", backend);
    cr_expect_eq(t.launches, 0, "%s: launches", backend);
    cr_expect_eq(cq->h2d_bytes, read ? 0 : sizeof data, "%s: h2d bytes", backend);
    cr_expect_eq(cq->d2h_bytes, read ? 600 : 0, "%s: d2h bytes", backend);
    cr_expect_eq(t.h2d + t.d2h, read ? 600 : sizeof data, "%s: host bytes on all queues",
                 backend);
    cr_expect_eq(t.submits, 1, "%s: submits", backend);
    cr_expect_eq(d.caller_waits, 1, "%s: caller waits", backend);
    cr_expect_eq(d.worker_waits, 0, "%s: worker waits", backend);
    fkv_buffer_release(buf);
    fkv_device_close(dev);
}

/* A device->device copy on the transfer queue: a copy there, no host bytes, no wait. */
static void check_copy(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_bbuf *buf = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(dev, 4096, &buf), FKV_OK, "%s", fkv_last_error());
    fkv_counters a = snap(dev);
    cr_assert_eq(fkv_op_copy(dev, FKV_QUEUE_TRANSFER, no_deps, buf, 2048, buf, 0, 1024), FKV_OK,
                 "%s", fkv_last_error());
    fkv_counters b = snap(dev);
    cr_assert_eq(fkv_op_finish(dev, FKV_QUEUE_TRANSFER), FKV_OK, "%s", fkv_last_error());
    fkv_counters d = diff(&b, &a);
    totals t = total(&d);
    cr_expect_eq(d.queues[FKV_COUNTER_TRANSFER].copies, 1, "%s: copies", backend);
    cr_expect_eq(t.copies, 1, "%s: copies on all queues", backend);
    cr_expect_eq(t.h2d + t.d2h, 0, "%s: host bytes", backend);
    cr_expect_eq(d.caller_waits + d.worker_waits, 0, "%s: waits", backend);
    fkv_counters c = snap(dev);
    cr_expect_eq(c.caller_waits - b.caller_waits, 1, "%s: finish is one caller wait", backend);
    fkv_op_buffer_free(dev, buf);
    fkv_device_close(dev);
}

/* Waits: an event wait on the caller's thread is one caller wait, whatever the number of
 * events the call waits for on devices that wait for them in one call; the marker is a
 * submission and no command. */
static void check_event_wait(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_bevent *ev = NULL;
    fkv_counters a = snap(dev);
    cr_assert_eq(fkv_op_marker(dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev}), FKV_OK, "%s",
                 fkv_last_error());
    cr_assert_eq(fkv_op_event_wait(dev, 1, &ev), FKV_OK, "%s", fkv_last_error());
    fkv_counters b = snap(dev);
    fkv_op_event_release(dev, ev);
    fkv_counters d = diff(&b, &a);
    totals t = total(&d);
    cr_expect_eq(d.caller_waits, 1, "%s: caller waits", backend);
    cr_expect_eq(d.worker_waits, 0, "%s: worker waits", backend);
    cr_expect_eq(t.launches + t.copies, 0, "%s: a marker is no command", backend);
    fkv_device_close(dev);
}

/* event_query answers without blocking and counts no wait: done once the event completed
 * (here: after the wait for it), and a write's event read back as done after finish. */
static void check_event_query(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_bevent *ev = NULL;
    cr_assert_eq(fkv_op_marker(dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev}), FKV_OK, "%s",
                 fkv_last_error());
    cr_assert_eq(fkv_op_event_wait(dev, 1, &ev), FKV_OK, "%s", fkv_last_error());
    fkv_counters a = snap(dev);
    int done = 0;
    cr_assert_eq(fkv_op_event_query(dev, ev, &done), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(done, 1, "%s: a completed marker", backend);
    fkv_op_event_release(dev, ev);
    fkv_bbuf *buf;
    cr_assert_eq(fkv_op_buffer_alloc(dev, 256, &buf), FKV_OK);
    unsigned char src[256] = {1};
    ev = NULL;
    cr_assert_eq(fkv_op_write(dev, FKV_QUEUE_TRANSFER, (fkv_deps){0, NULL, &ev}, buf, 0, src,
                              sizeof src),
                 FKV_OK, "%s", fkv_last_error());
    fkv_counters b = snap(dev);
    cr_assert_eq(fkv_op_finish(dev, FKV_QUEUE_TRANSFER), FKV_OK, "%s", fkv_last_error());
    fkv_counters c = snap(dev);
    done = 0;
    cr_assert_eq(fkv_op_event_query(dev, ev, &done), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(done, 1, "%s: a write after finish", backend);
    fkv_counters e = snap(dev);
    fkv_op_event_release(dev, ev);
    fkv_op_buffer_free(dev, buf);
    fkv_counters d1 = diff(&b, &a), d2 = diff(&e, &c);
    cr_expect_eq(d1.caller_waits + d2.caller_waits, 0, "%s: a query is no wait", backend);
    fkv_device_close(dev);
}

typedef struct wait_job {
    fkv_device *dev;
    fkv_bevent *ev;
    fkv_status st;
} wait_job;

static void *wait_as_worker(void *p) {
    wait_job *j = p;
    fkv_thread_role_set(FKV_ROLE_WORKER);
    j->st = fkv_op_event_wait(j->dev, 1, &j->ev);
    return NULL;
}

/* The same wait on a thread marked as the library's worker counts as the worker's. */
static void check_worker_wait(const char *backend) {
    fkv_device *dev = open_device(backend);
    wait_job j = {.dev = dev};
    cr_assert_eq(fkv_op_marker(dev, FKV_QUEUE_BACKGROUND, (fkv_deps){0, NULL, &j.ev}), FKV_OK,
                 "%s", fkv_last_error());
    fkv_counters a = snap(dev);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, wait_as_worker, &j), 0);
    pthread_join(th, NULL);
    cr_assert_eq(j.st, FKV_OK);
    fkv_counters b = snap(dev);
    fkv_op_event_release(dev, j.ev);
    fkv_counters d = diff(&b, &a);
    cr_expect_eq(d.worker_waits, 1, "%s: worker waits", backend);
    cr_expect_eq(d.caller_waits, 0, "%s: caller waits", backend);
    fkv_device_close(dev);
}

/* Allocations: a device buffer is one device allocation, pinned host memory one host
 * allocation. */
static void check_allocs(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_counters a = snap(dev);
    fkv_buffer *buf = NULL;
    cr_assert_eq(fkv_buffer_alloc(dev, 65536, &buf), FKV_OK, "%s", fkv_last_error());
    fkv_counters b = snap(dev);
    fkv_bhost *host = NULL;
    void *ptr = NULL;
    cr_assert_eq(fkv_op_host_alloc(dev, 65536, &host, &ptr), FKV_OK, "%s", fkv_last_error());
    fkv_counters c = snap(dev);
    cr_expect_eq(b.device_allocs - a.device_allocs, 1, "%s: device allocs", backend);
    cr_expect_eq(b.host_allocs - a.host_allocs, 0, "%s: host allocs", backend);
    cr_expect_eq(c.host_allocs - b.host_allocs, 1, "%s: host allocs of host_alloc", backend);
    cr_expect_eq(c.device_allocs - b.device_allocs, 0, "%s: device allocs of host_alloc",
                 backend);
    fkv_op_host_free(dev, host);
    fkv_buffer_release(buf);
    fkv_device_close(dev);
}

/* Paged attention: the launches the backend issues. With attention_splits (the device
 * backends' option) forced to 1 it is one kernel; forced to 2, the attention and its reduce
 * kernel. The CPU reference runs it as one command. */
/* One attention over four pages on the compute queue (after one call of the same shape, so
 * that first-use work is not counted), read back into host out[32]; its counters. */
static fkv_counters attention_call(fkv_device *dev, const char *backend, const fkv_kv_geom *g,
                                   fkv_bbuf *const *b, float *host_out) {
    fkv_counters a = snap(dev);
    for (int round = 0; round < 2; round++) {
        if (round == 1)
            a = snap(dev);
        cr_assert_eq(fkv_op_attention(dev, FKV_QUEUE_COMPUTE, no_deps, g, b[0], 0, 1, b[1], 0, b[2],
                                      0, b[3], b[4], 0.25f, b[5], 0),
                     FKV_OK, "%s: %s", backend, fkv_last_error());
        /* after finish: a backend that batches (Vulkan) submits the launch there */
        cr_assert_eq(fkv_op_finish(dev, FKV_QUEUE_COMPUTE), FKV_OK);
    }
    fkv_counters b2 = snap(dev);
    cr_assert_eq(fkv_op_read(dev, FKV_QUEUE_COMPUTE, no_deps, b[5], 0, host_out, 32 * sizeof(float)),
                 FKV_OK);
    cr_assert_eq(fkv_op_finish(dev, FKV_QUEUE_COMPUTE), FKV_OK);
    return diff(&b2, &a);
}

/* A split attention is one launch where the device combines the splits in the attention's
 * last work group (option attention_fused_reduce, #11), two where a second launch does; both
 * give the same bits. */
static void check_attention(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_kv_geom g = {.n_kv_heads = 1, .group = 2, .head_dim = 16, .page_size = 4,
                     .dtype = FKV_F32};
    enum { PAGES = 4 };
    size_t slot = fkv_slot_bytes(&g);
    fkv_bbuf *b[6] = {NULL}; /* q, heads, entries, k pool, v pool, out */
    size_t bytes[6] = {2 * 16 * sizeof(float), 2 * sizeof(int32_t), 2 * PAGES * sizeof(int32_t),
                       PAGES * slot, PAGES * slot, 2 * 16 * sizeof(float)};
    for (int i = 0; i < 6; i++)
        cr_assert_eq(fkv_op_buffer_alloc(dev, bytes[i], &b[i]), FKV_OK);
    int32_t h[2] = {0, PAGES}, e[2 * PAGES];
    for (int i = 0; i < PAGES; i++)
        e[2 * i] = i, e[2 * i + 1] = 4;
    /* the pools (PAGES slots of 4 tokens x 16 f32 channels), V from element 7 on */
    float data[PAGES * 4 * 16 + 7];
    cr_assert_leq(bytes[3] + 7 * sizeof(float), sizeof data);
    for (size_t i = 0; i < sizeof data / sizeof *data; i++)
        data[i] = (float)((i * 37) % 23) / 11.0f - 1.0f;
    cr_assert_eq(fkv_op_write(dev, FKV_QUEUE_COMPUTE, no_deps, b[0], 0, data, bytes[0]), FKV_OK);
    cr_assert_eq(fkv_op_write(dev, FKV_QUEUE_COMPUTE, no_deps, b[1], 0, h, sizeof h), FKV_OK);
    cr_assert_eq(fkv_op_write(dev, FKV_QUEUE_COMPUTE, no_deps, b[2], 0, e, sizeof e), FKV_OK);
    cr_assert_eq(fkv_op_write(dev, FKV_QUEUE_COMPUTE, no_deps, b[3], 0, data, bytes[3]), FKV_OK);
    cr_assert_eq(fkv_op_write(dev, FKV_QUEUE_COMPUTE, no_deps, b[4], 0, data + 7, bytes[4]),
                 FKV_OK);
    cr_assert_eq(fkv_op_finish(dev, FKV_QUEUE_COMPUTE), FKV_OK);
    fkv_device_info info;
    fkv_device_get_info(dev, &info);
    int reference = info.type == FKV_DEVICE_REFERENCE;
    /* fused where the device offers it (it says so through the option), else two launches */
    int can_fuse = !reference && th_option_value(dev, "attention_fused_reduce") == 1;
    float outs[3][32];
    for (int run = 0; run < (reference ? 1 : 3); run++) {
        uint32_t splits = run == 0 ? 1 : 2;
        int fused = run == 1 && can_fuse;
        if (!reference) {
            cr_assert_eq(th_set_option(dev, "attention_splits", splits), FKV_OK, "%s: %s",
                         backend, fkv_last_error());
            if (run > 0 && (can_fuse || run == 2))
                cr_assert_eq(th_set_option(dev, "attention_fused_reduce", (uint64_t)fused),
                             FKV_OK, "%s: %s", backend, fkv_last_error());
        }
        fkv_counters d = attention_call(dev, backend, &g, b, outs[run]);
        totals t = total(&d);
        uint64_t want = reference || splits == 1 || fused ? 1 : 2;
        cr_expect_eq(d.queues[FKV_COUNTER_COMPUTE].launches, want,
                     "%s: %llu launches with %u split(s), fused %d", backend,
                     (unsigned long long)d.queues[FKV_COUNTER_COMPUTE].launches, splits, fused);
        cr_expect_eq(t.launches, want, "%s: launches on all queues", backend);
        cr_expect_eq(t.copies, 0, "%s: copies", backend);
        cr_expect_geq(t.submits, 1, "%s: submitted", backend);
        cr_expect_eq(d.device_allocs, 0, "%s: allocations after the first call", backend);
    }
    if (!reference)
        cr_expect(memcmp(outs[1], outs[2], sizeof outs[1]) == 0,
                  "%s: the fused and the two-launch split attention differ", backend);
    for (size_t i = 0; i < 6; i++)
        fkv_op_buffer_free(dev, b[i]);
    fkv_device_close(dev);
}

/* #11: a zero-copy recall is one launch and no copy however many host allocations its units
 * come from (50 here, one unit each, every unit checked in place): the CPU reference, OpenCL (a
 * table of SVM addresses the host fills, read by the kernel), Vulkan with device addresses and
 * HIP (the allocations' addresses ride in the caller's unit table, direct_host_words). */
static void check_direct_over_many_hosts(const char *backend, const char *mode_var,
                                         const char *mode) {
    fkv_device *dev = open_device_recall(backend, mode_var, mode);
    cr_assert_eq(fkv_op_recall_mode(dev), FKV_RECALL_DIRECT, "%s: not in direct mode", backend);
    char addresses[8] = "1";
    if (strcmp(backend, "vulkan") == 0)
        cr_assert_eq(fkv_op_get_option(dev, "device_addresses", addresses, sizeof addresses),
                     FKV_OK, "%s", fkv_last_error());
    if (strcmp(addresses, "1") != 0) { /* a device without bufferDeviceAddress: windows */
        fkv_device_close(dev);
        cr_skip_test("vulkan: no device addresses on this device");
    }
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 1, .head_dim = 16, .page_size = 4,
                     .dtype = FKV_F32};
    enum { HOSTS = 50 };
    size_t unit = fkv_unit_bytes(&g), slot = fkv_slot_bytes(&g);
    fkv_bhost *hosts[HOSTS];
    fkv_direct_src srcs[HOSTS];
    int32_t table[(FKV_DIRECT_UNIT_INTS + FKV_DIRECT_HOST_INTS) * HOSTS];
    for (uint32_t i = 0; i < HOSTS; i++) {
        void *ptr;
        cr_assert_eq(fkv_op_host_alloc(dev, 2 * unit, &hosts[i], &ptr), FKV_OK, "%s",
                     fkv_last_error());
        float *x = ptr;
        for (size_t e = 0; e < 2 * unit / sizeof(float); e++)
            x[e] = (float)(i * 1000 + e);
        /* unit i: the second unit of host i into slot i, KV head i % 2 */
        srcs[i] = (fkv_direct_src){.host = i, .offset = unit};
        table[4 * i] = (int32_t)i, table[4 * i + 1] = (int32_t)(i % 2);
        table[4 * i + 2] = (int32_t)i, table[4 * i + 3] = (int32_t)(unit / sizeof(float));
    }
    fkv_op_direct_host_words(dev, HOSTS, (const fkv_bhost *const *)hosts, table + 4 * HOSTS);
    fkv_bbuf *units = NULL, *kp = NULL, *vp = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(dev, sizeof table, &units), FKV_OK);
    cr_assert_eq(fkv_op_buffer_alloc(dev, HOSTS * slot, &kp), FKV_OK);
    cr_assert_eq(fkv_op_buffer_alloc(dev, HOSTS * slot, &vp), FKV_OK);
    cr_assert_eq(fkv_op_write(dev, FKV_QUEUE_COMPUTE, no_deps, units, 0, table, sizeof table),
                 FKV_OK);
    cr_assert_eq(fkv_op_finish(dev, FKV_QUEUE_COMPUTE), FKV_OK);
    fkv_counters a = snap(dev);
    cr_assert_eq(fkv_op_recall_direct(dev, FKV_QUEUE_COMPUTE, no_deps, &g, HOSTS,
                                      (const fkv_bhost *const *)hosts, HOSTS, srcs, units, 0,
                                      kp, vp),
                 FKV_OK, "%s: %s", backend, fkv_last_error());
    cr_assert_eq(fkv_op_finish(dev, FKV_QUEUE_COMPUTE), FKV_OK, "%s", fkv_last_error());
    fkv_counters b = snap(dev);
    fkv_counters d = diff(&b, &a);
    totals t = total(&d);
    cr_expect_eq(t.launches, 1, "%s: %llu launches over %d host allocations", backend,
                 (unsigned long long)t.launches, HOSTS);
    cr_expect_eq(t.copies, 0, "%s: copies", backend);
    float *k = malloc(HOSTS * slot), *v = malloc(HOSTS * slot);
    cr_assert(k && v);
    cr_assert_eq(fkv_op_read(dev, FKV_QUEUE_COMPUTE, no_deps, kp, 0, k, HOSTS * slot), FKV_OK);
    cr_assert_eq(fkv_op_read(dev, FKV_QUEUE_COMPUTE, no_deps, vp, 0, v, HOSTS * slot), FKV_OK);
    cr_assert_eq(fkv_op_finish(dev, FKV_QUEUE_COMPUTE), FKV_OK);
    size_t pd = (size_t)g.page_size * g.head_dim;
    for (uint32_t i = 0; i < HOSTS; i++) /* slot i, token t, head i % 2: [K|V][t][c] of the unit */
        for (uint32_t tk = 0; tk < g.page_size; tk++)
            for (uint32_t c = 0; c < g.head_dim; c++) {
                size_t at = (((size_t)i * g.page_size + tk) * g.n_kv_heads + i % 2) * g.head_dim + c;
                float base = (float)(i * 1000 + unit / sizeof(float) + tk * g.head_dim + c);
                cr_assert_eq(k[at], base, "%s: unit %u K[%u][%u]", backend, i, tk, c);
                cr_assert_eq(v[at], base + (float)pd, "%s: unit %u V[%u][%u]", backend, i, tk, c);
            }
    free(k), free(v);
    fkv_op_buffer_free(dev, units), fkv_op_buffer_free(dev, kp), fkv_op_buffer_free(dev, vp);
    for (uint32_t i = 0; i < HOSTS; i++)
        fkv_op_host_free(dev, hosts[i]);
    fkv_device_close(dev);
}

Test(cpu, direct_recall_is_one_launch_over_fifty_hosts) {
    check_direct_over_many_hosts("cpu", "FREEKV_CPU_RECALL", "direct");
}
Test(opencl, direct_recall_is_one_launch_over_fifty_hosts) {
    check_direct_over_many_hosts("opencl", "FREEKV_OPENCL_RECALL", "svm");
}
Test(vulkan, direct_recall_is_one_launch_over_fifty_hosts) {
    check_direct_over_many_hosts("vulkan", "FREEKV_VULKAN_RECALL", "hostptr");
}
Test(hip, direct_recall_is_one_launch_over_fifty_hosts) {
    check_direct_over_many_hosts("hip", "FREEKV_HIP_RECALL", "zerocopy");
}

/* A speculative decode loop: its worker's host waits (the read of its selection's records)
 * count as the worker's (the worker thread marks itself), and the caller's as the caller's.
 * (freekv's worker reads nothing back: its call selected for it.) */
static void check_decode_roles(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_config cfg;
    th_small_config(&cfg);
    cfg.policy = FKV_POLICY_SPECULATIVE;
    fkv_context *ctx = NULL;
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    pd_run run = {.n_seqs = 1, .prompt = {80}, .steps = 6, .batched = 1, .drift = 0.3f};
    fkv_counters a;
    cr_assert_eq(fkv_context_get_counters(ctx, &a), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(pd_execute(ctx, &run, NULL), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_context_sync(ctx), FKV_OK, "%s", fkv_last_error());
    fkv_counters b;
    cr_assert_eq(fkv_context_get_counters(ctx, &b), FKV_OK);
    fkv_counters d = diff(&b, &a);
    cr_expect_gt(d.worker_waits, 0, "%s: the speculative worker's waits", backend);
    cr_expect_gt(d.caller_waits, 0, "%s: the caller's waits", backend);
    fkv_context_destroy(ctx);

    /* sync has no worker: every wait is the caller's */
    cfg.policy = FKV_POLICY_SYNC;
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    a = snap(dev);
    cr_assert_eq(pd_execute(ctx, &run, NULL), FKV_OK, "%s", fkv_last_error());
    b = snap(dev);
    d = diff(&b, &a);
    cr_expect_eq(d.worker_waits, 0, "%s: sync has no worker", backend);
    cr_expect_gt(d.caller_waits, 0, "%s: the caller's waits", backend);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

/* One prefill of (sequence 0, layer), its counters' difference. */
static fkv_counters prefill_counts(fkv_context *ctx, const fkv_config *cfg, uint32_t layer,
                                   uint32_t n_tokens) {
    size_t kvn = (size_t)cfg->n_kv_heads * cfg->head_dim;
    float *k = malloc(sizeof(float) * kvn * n_tokens), *v = malloc(sizeof(float) * kvn * n_tokens);
    float *q = malloc(sizeof(float) * cfg->n_q_heads * cfg->head_dim);
    cr_assert(k && v && q);
    for (uint32_t t = 0; t < n_tokens; t++) {
        pd_data(0, 0, layer, t, k + t * kvn, kvn);
        pd_data(1, 0, layer, t, v + t * kvn, kvn);
    }
    pd_query(cfg, 0.3f, 0, layer, n_tokens - 1, q);
    fkv_tensor tk = {k, NULL, 0}, tv = {v, NULL, 0}, tq = {q, NULL, 0};
    fkv_counters a, b;
    cr_assert_eq(fkv_context_get_counters(ctx, &a), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_prefill(ctx, 0, layer, n_tokens, &tk, &tv, &tq), FKV_OK, "%s",
                 fkv_last_error());
    cr_assert_eq(fkv_context_get_counters(ctx, &b), FKV_OK, "%s", fkv_last_error());
    free(k), free(v), free(q);
    return diff(&b, &a);
}

/* Prefill in batched commands (#18): an offload policy's full pages are packed and read into
 * the host pool a staging buffer at a time, one pack and one read per run of pages that fits
 * a staging buffer (a scratch chunk here) and one piece of the host pool, not one per page;
 * resident pages go to their slots one K and one V copy per run of consecutive slots. With
 * no middle pages the prefill recalls nothing, so the transfer queue holds the reads alone. */
static void check_prefill_batched(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_config cfg;
    th_small_config(&cfg); /* f32, page 4: 1 KiB pages, so a scratch chunk fits a staging */
    cfg.budget_tokens = cfg.sink_tokens + cfg.window_tokens;
    const uint32_t T = 470, n_full = T / cfg.page_size, chunks = 2; /* 117 pages, 64 + 54 */
    size_t page_bytes = 2 * (size_t)cfg.page_size * cfg.n_kv_heads * cfg.head_dim * 4;
    uint32_t runs = 0; /* pages cut at the scratch chunks and the host pool's pieces */
    for (uint32_t j = 0; j < n_full; runs++) {
        uint32_t end = (j / FKV_SCRATCH_PAGES + 1) * FKV_SCRATCH_PAGES;
        uint32_t piece = (j / FKV_HOST_CHUNK_PAGES + 1) * FKV_HOST_CHUNK_PAGES;
        end = end < piece ? end : piece;
        j = end < n_full ? end : n_full;
    }
    cr_assert_eq(runs, 2);
    for (int quest = 0; quest < 2; quest++) {
        cfg.policy = quest ? FKV_POLICY_QUEST : FKV_POLICY_SYNC;
        fkv_context *ctx = NULL;
        cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
        for (uint32_t l = 0; l < cfg.n_layers; l++) {
            fkv_counters d = prefill_counts(ctx, &cfg, l, T);
            const fkv_queue_counters *tr = &d.queues[FKV_COUNTER_TRANSFER];
            const fkv_queue_counters *cq = &d.queues[FKV_COUNTER_COMPUTE];
            const char *name = fkv_policy_name(cfg.policy);
            if (!quest) {
                cr_expect_eq(tr->copies, runs, "%s %s layer %u: %llu reads into the host pool, "
                             "not %u", backend, name, l, (unsigned long long)tr->copies, runs);
                cr_expect_eq(tr->d2h_bytes, n_full * page_bytes, "%s: bytes read", backend);
                cr_expect_eq(tr->launches, 0, "%s: transfer launches", backend);
                /* per chunk: append, summaries and one pack per run */
                cr_expect_eq(cq->launches, 2 * chunks + runs, "%s %s layer %u: %llu launches",
                             backend, name, l, (unsigned long long)cq->launches);
                /* the host waits once per chunk (its inputs' staging is reused), at the end
                 * for the compute queue and the last read, then for the initial selection's
                 * (empty) recall; with no middle slots nothing is scored or read back */
                cr_expect_eq(d.caller_waits, chunks + 3, "%s %s layer %u: %llu caller waits",
                             backend, name, l, (unsigned long long)d.caller_waits);
            }
            /* per chunk: the rows, K, V and page index writes; the resident pages' copies
             * (quest: the chunk in one run; sync: the sink in the first chunk and the final
             * window in the second, 2 pages each); then q_last (no middle slots: the initial
             * selection issues nothing) */
            uint64_t resident = quest ? 2 * chunks : 2 * 2;
            cr_expect_eq(cq->copies, 4 * chunks + resident + 1,
                         "%s %s layer %u: %llu compute copies", backend, name, l,
                         (unsigned long long)cq->copies);
        }
        fkv_context_destroy(ctx);
    }
    fkv_device_close(dev);
}

/* A decode step that completes a page (#18, #11): its summaries' index and the slots its pack
 * reads go up with the call's inputs, so such a step costs two launches (summaries, pack) on
 * the compute queue and one read per sequence on the transfer queue more than a step that
 * completes none, and no copy more on the compute queue. sync (no worker: every command is
 * the call's) with no middle pages, so that nothing else differs between steps. */
static void check_decode_fill(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_config cfg;
    th_small_config(&cfg); /* page 4 */
    cfg.policy = FKV_POLICY_SYNC;
    cfg.budget_tokens = cfg.sink_tokens + cfg.window_tokens; /* no selection: equal steps */
    fkv_context *ctx = NULL;
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    pd_run run = {.n_seqs = 1, .prompt = {41}, .steps = 1, .batched = 1, .drift = 0.3f};
    cr_assert_eq(pd_execute(ctx, &run, NULL), FKV_OK, "%s", fkv_last_error());
    fkv_queue_counters plain = {0}, fill = {0};
    uint64_t plain_reads = 0, fill_reads = 0;
    int seen_plain = 0, seen_fill = 0;
    run.resume = 1;
    for (uint32_t step = 1; step < 9; step++) {
        run.first_step = step;
        run.steps = step + 1;
        fkv_counters a = snap(dev);
        cr_assert_eq(pd_execute(ctx, &run, NULL), FKV_OK, "%s", fkv_last_error());
        fkv_counters b = snap(dev);
        fkv_counters d = diff(&b, &a);
        /* step s appends token 41 + s, which completes a page when 42 + s is a multiple of 4 */
        int fills = (42 + step) % cfg.page_size == 0;
        fkv_queue_counters *c = fills ? &fill : &plain;
        uint64_t *reads = fills ? &fill_reads : &plain_reads;
        int *seen = fills ? &seen_fill : &seen_plain;
        const fkv_queue_counters *cq = &d.queues[FKV_COUNTER_COMPUTE];
        if (*seen) {
            cr_expect_eq(cq->copies, c->copies, "%s step %u: compute copies vary", backend, step);
            cr_expect_eq(cq->launches, c->launches, "%s step %u: launches vary", backend, step);
        }
        *c = *cq;
        *reads = d.queues[FKV_COUNTER_TRANSFER].d2h_bytes;
        *seen = 1;
    }
    cr_assert(seen_plain && seen_fill);
    uint64_t layers = cfg.n_layers;
    cr_expect_eq(fill.copies, plain.copies, "%s: a completed page costs %llu compute copies "
                 "more, not 0 (its index rides with the inputs)", backend,
                 (unsigned long long)(fill.copies - plain.copies));
    cr_expect_eq(fill.launches - plain.launches, 2 * layers, "%s: launches", backend);
    cr_expect_gt(fill_reads, plain_reads, "%s: the page is read into the host pool", backend);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

/* Steady state of a decode loop: after warm-up steps, no device or host allocation (the
 * CPU reference and OpenCL keep their scratch). */
static void check_steady_allocs(const char *backend, fkv_policy policy) {
    fkv_device *dev = open_device(backend);
    fkv_config cfg;
    th_small_config(&cfg);
    cfg.policy = policy;
    fkv_context *ctx = NULL;
    fkv_counters created = snap(dev);
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    pd_run warm = {.n_seqs = 2, .seqs = {0, 1}, .prompt = {80, 70}, .steps = 4, .batched = 1,
                   .drift = 0.3f};
    cr_assert_eq(pd_execute(ctx, &warm, NULL), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_context_sync(ctx), FKV_OK, "%s", fkv_last_error());
    fkv_counters a = snap(dev);
    /* the context's own buffers and host pool were counted */
    cr_expect_gt(a.device_allocs - created.device_allocs, 0, "%s: context buffers", backend);
    cr_expect_gt(a.host_allocs - created.host_allocs, 0, "%s: host pool and staging", backend);
    pd_run more = warm;
    more.resume = 1;
    more.first_step = warm.steps;
    more.steps = 8;
    cr_assert_eq(pd_execute(ctx, &more, NULL), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_context_sync(ctx), FKV_OK, "%s", fkv_last_error());
    fkv_counters b = snap(dev);
    fkv_counters d = diff(&b, &a);
    cr_expect_eq(d.device_allocs, 0, "%s %s: %llu device allocations after warm-up", backend,
                 fkv_policy_name(policy), (unsigned long long)d.device_allocs);
    cr_expect_eq(d.host_allocs, 0, "%s %s: %llu host allocations after warm-up", backend,
                 fkv_policy_name(policy), (unsigned long long)d.host_allocs);
    totals t = total(&d);
    cr_expect_gt(t.launches, 0, "%s: the loop launched kernels", backend);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

/* ---- one decode call: its commands do not grow with the batch ---- */

/* The inputs of one decode call of (step, layer) for a batch (pd_execute's data), and its
 * output: host memory, or device buffers filled from it. */
typedef struct call_io {
    uint32_t n;
    size_t qbytes, kvbytes;
    float *q, *k, *v, *out;
    fkv_buffer *bq, *bk, *bv, *bo; /* NULL: host tensors */
} call_io;

static void io_open(fkv_device *dev, const fkv_config *cfg, uint32_t n, int device, call_io *io) {
    memset(io, 0, sizeof *io);
    io->n = n;
    io->qbytes = (size_t)n * cfg->n_q_heads * cfg->head_dim * sizeof(float);
    io->kvbytes = (size_t)n * cfg->n_kv_heads * cfg->head_dim * sizeof(float);
    io->q = malloc(io->qbytes), io->out = malloc(io->qbytes);
    io->k = malloc(io->kvbytes), io->v = malloc(io->kvbytes);
    cr_assert(io->q && io->out && io->k && io->v);
    if (device) {
        cr_assert_eq(fkv_buffer_alloc(dev, io->qbytes, &io->bq), FKV_OK, "%s", fkv_last_error());
        cr_assert_eq(fkv_buffer_alloc(dev, io->kvbytes, &io->bk), FKV_OK);
        cr_assert_eq(fkv_buffer_alloc(dev, io->kvbytes, &io->bv), FKV_OK);
        cr_assert_eq(fkv_buffer_alloc(dev, io->qbytes, &io->bo), FKV_OK);
    }
}

static void io_close(call_io *io) {
    free(io->q), free(io->k), free(io->v), free(io->out);
    fkv_buffer_release(io->bq), fkv_buffer_release(io->bk), fkv_buffer_release(io->bv);
    fkv_buffer_release(io->bo);
}

/* The inputs of (step, layer) for sequences 0..n-1 with the prompts of `run`, into io (and its
 * buffers: blocking writes, before any measurement). */
static void io_fill(const fkv_config *cfg, const pd_run *run, uint32_t step, uint32_t layer,
                    call_io *io) {
    size_t qn = (size_t)cfg->n_q_heads * cfg->head_dim;
    size_t kvn = (size_t)cfg->n_kv_heads * cfg->head_dim;
    for (uint32_t b = 0; b < io->n; b++) {
        uint32_t t = run->prompt[b] + step;
        pd_query(cfg, run->drift, run->seqs[b], layer, t, io->q + b * qn);
        pd_data(0, run->seqs[b], layer, t, io->k + b * kvn, kvn);
        pd_data(1, run->seqs[b], layer, t, io->v + b * kvn, kvn);
    }
    if (io->bq) {
        cr_assert_eq(fkv_buffer_write(io->bq, 0, io->q, io->qbytes), FKV_OK, "%s",
                     fkv_last_error());
        cr_assert_eq(fkv_buffer_write(io->bk, 0, io->k, io->kvbytes), FKV_OK);
        cr_assert_eq(fkv_buffer_write(io->bv, 0, io->v, io->kvbytes), FKV_OK);
    }
}

/* One fkv_decode_layer with io's tensors; the counters' difference over the call. */
static fkv_counters io_decode(fkv_device *dev, fkv_context *ctx, const pd_run *run,
                              uint32_t layer, call_io *io) {
    fkv_tensor tq = {io->q, NULL, 0}, tk = {io->k, NULL, 0}, tv = {io->v, NULL, 0},
               to = {io->out, NULL, 0};
    if (io->bq) {
        tq = (fkv_tensor){NULL, io->bq, 0}, tk = (fkv_tensor){NULL, io->bk, 0};
        tv = (fkv_tensor){NULL, io->bv, 0}, to = (fkv_tensor){NULL, io->bo, 0};
    }
    fkv_counters a = snap(dev);
    cr_assert_eq(fkv_decode_layer(ctx, layer, io->n, run->seqs, &tq, &tk, &tv, &to), FKV_OK,
                 "%s", fkv_last_error());
    fkv_counters b = snap(dev);
    if (io->bo) /* after the measurement: ordered after the call on the compute queue */
        cr_assert_eq(fkv_buffer_read(io->bo, 0, io->out, io->qbytes), FKV_OK, "%s",
                     fkv_last_error());
    return diff(&b, &a);
}

/* A context of cfg on dev with the prompts of `run` prefilled (pd_execute's prefill and its
 * steps). */
static fkv_context *prefilled(fkv_device *dev, const fkv_config *cfg, const pd_run *run) {
    fkv_context *ctx = NULL;
    cr_assert_eq(fkv_context_create(dev, cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(pd_execute(ctx, run, NULL), FKV_OK, "%s", fkv_last_error());
    return ctx;
}

/* Decode calls of the speculative policy (no correction, so every compute-queue command is
 * the call's own; the worker's run on the background and transfer queues) at batch 1 and 4,
 * on steps that fill no page. Per call on the compute queue: one write of the inputs (q, k,
 * v, the rows table and the attention lists, the selection being known before the call), the
 * append, the attention (one launch: attention_splits 1) and, for a host output, its read: the
 * same at every batch, with no copy of the query for the next step. Host output: one caller
 * wait (the output); none for the speculative recall, which attention waits for on the device.
 * Device buffers: the query is copied into the input block (k and v are read in place), the
 * attention writes the output itself, and the caller waits for nothing (the worker waits for
 * the call before its task). A twin context with host tensors gives the same outputs, bit for
 * bit. */
static void check_decode_call(const char *backend, uint32_t n) {
    fkv_device *dev = open_device(backend);
    one_attention_launch(dev, backend);
    fkv_config cfg;
    th_small_config(&cfg);
    cfg.policy = FKV_POLICY_SPECULATIVE;
    /* prompts of whole pages: steps 4..6 fill none (page_size 4) */
    pd_run run = {.n_seqs = n, .seqs = {0, 1, 2, 3}, .prompt = {80, 72, 64, 76}, .steps = 4,
                  .batched = 1, .drift = 0.3f};
    fkv_context *host_ctx = prefilled(dev, &cfg, &run), *dev_ctx = prefilled(dev, &cfg, &run);
    call_io hio, dio;
    io_open(dev, &cfg, n, 0, &hio);
    io_open(dev, &cfg, n, 1, &dio);
    for (uint32_t step = 4; step < 7; step++)
        for (uint32_t l = 0; l < cfg.n_layers; l++) {
            /* the worker idle: its commands and waits are not the call's */
            cr_assert_eq(fkv_context_sync(host_ctx), FKV_OK, "%s", fkv_last_error());
            cr_assert_eq(fkv_context_sync(dev_ctx), FKV_OK, "%s", fkv_last_error());
            io_fill(&cfg, &run, step, l, &hio);
            io_fill(&cfg, &run, step, l, &dio);
            fkv_counters h = io_decode(dev, host_ctx, &run, l, &hio);
            fkv_counters d = io_decode(dev, dev_ctx, &run, l, &dio);
            const fkv_queue_counters *hc = &h.queues[FKV_COUNTER_COMPUTE];
            const fkv_queue_counters *dc = &d.queues[FKV_COUNTER_COMPUTE];
            cr_expect_eq(hc->copies, 2, "%s batch %u step %u layer %u: %llu copies (inputs with "
                         "lists, output)", backend, n, step, l, (unsigned long long)hc->copies);
            cr_expect_eq(hc->launches, 2, "%s batch %u: %llu launches (append, attention)",
                         backend, n, (unsigned long long)hc->launches);
            cr_expect_eq(hc->d2h_bytes, hio.qbytes, "%s batch %u: the output read", backend, n);
            cr_expect_eq(h.caller_waits, 1, "%s batch %u step %u layer %u: %llu caller waits "
                         "(the output)", backend, n, step, l,
                         (unsigned long long)h.caller_waits);
            cr_expect_eq(dc->copies, 2, "%s batch %u step %u layer %u: %llu copies with device "
                         "tensors (rows table with lists, q)", backend, n, step, l,
                         (unsigned long long)dc->copies);
            cr_expect_eq(dc->launches, 2, "%s batch %u: %llu launches with device tensors",
                         backend, n, (unsigned long long)dc->launches);
            cr_expect_eq(dc->d2h_bytes, 0, "%s batch %u: no readback", backend, n);
            cr_expect_eq(d.caller_waits, 0, "%s batch %u step %u layer %u: %llu caller waits "
                         "with a device output", backend, n, step, l,
                         (unsigned long long)d.caller_waits);
            cr_expect(memcmp(hio.out, dio.out, hio.qbytes) == 0,
                      "%s batch %u step %u layer %u: device tensors give another output",
                      backend, n, step, l);
        }
    cr_assert_eq(fkv_context_sync(dev_ctx), FKV_OK, "%s", fkv_last_error());
    io_close(&hio);
    io_close(&dio);
    fkv_context_destroy(host_ctx);
    fkv_context_destroy(dev_ctx);
    fkv_device_close(dev);
}

/* The candidate end a selection describes for a sequence of the layer that holds n tokens and
 * will attend with `target` (core/retrieval.c), 0 without candidates. */
static uint32_t described_end(const fkv_context *ctx, uint32_t n, uint32_t target) {
    uint32_t wb = fkv_window_begin(ctx, target), full = n / ctx->cfg.page_size;
    uint32_t ce = wb < full ? wb : full;
    return ce > ctx->sink_pages && ctx->n_mid > 0 ? ce : 0;
}

/* A freekv context on dev (th_small_config, tau) with a batch of n of four prompts prefilled
 * (pd_execute's prefill and 4 steps of queries drifting by drift), and its call buffers. */
static fkv_context *freekv_batch(fkv_device *dev, float tau, uint32_t n, float drift,
                                 fkv_config *cfg, pd_run *run, call_io *io) {
    th_small_config(cfg);
    cfg->policy = FKV_POLICY_FREEKV;
    cfg->tau = tau;
    *run = (pd_run){.n_seqs = n, .seqs = {0, 1, 2, 3}, .prompt = {80, 72, 64, 76}, .steps = 4,
                    .batched = 1, .drift = drift};
    fkv_context *ctx = prefilled(dev, cfg, run);
    io_open(dev, cfg, n, 0, io);
    return ctx;
}

/* #11: the scores descriptors go up with the inputs, and freekv's call selects for its
 * speculative task. A freekv call that flags no head (tau -1; the queries drift little)
 * issues on the compute queue the inputs' write, the append, the check and the scores of
 * every head with the next step's candidates in one launch (scores_check: the check rides in
 * the scores), select_pages of those, the one read of the flags and records, the attention and
 * the output read: 3 copies, 4 launches, no descriptor write (5 with cosine_flags a launch of
 * its own); when a sequence's window moves past a page (this step's candidates are not the
 * next step's), a second scores and select_pages, for the flagged heads: 6 launches. Every
 * backend has scores_check (a table without it would issue one launch more: the fallback's
 * cosine_flags and scores, tests/test_dispatch.c). Its speculative task
 * plans from those records: no scores, no select_pages, no read, nothing written from the
 * host on the background queue (the staged recall's write is on the transfer queue; its
 * scatter is the one launch there may be). */
static void check_descriptors_with_inputs(const char *backend, const char *recall_var) {
    fkv_device *dev = open_device_recall(backend, recall_var, "staged");
    one_attention_launch(dev, backend);
    fkv_config cfg;
    for (uint32_t n = 1; n <= 4; n += 3) {
        pd_run run;
        call_io io;
        fkv_context *ctx = freekv_batch(dev, -1.0f, n, 0.3f, &cfg, &run, &io);
        for (uint32_t step = 4; step < 7; step++)
            for (uint32_t l = 0; l < cfg.n_layers; l++) {
                cr_assert_eq(fkv_context_sync(ctx), FKV_OK, "%s", fkv_last_error());
                io_fill(&cfg, &run, step, l, &io);
                fkv_counters a = snap(dev); /* the task may start before io_decode returns */
                fkv_counters c = io_decode(dev, ctx, &run, l, &io);
                const fkv_queue_counters *cc = &c.queues[FKV_COUNTER_COMPUTE];
                int moved = 0;
                for (uint32_t i = 0; i < n; i++) {
                    uint32_t tokens = ctx->seqs[run.seqs[i]].layers[l].n_tokens;
                    moved |= described_end(ctx, tokens, tokens) !=
                             described_end(ctx, tokens, tokens + 1);
                }
                cr_expect_eq(cc->copies, 3, "%s batch %u step %u layer %u: %llu copies (inputs "
                             "with descriptors, flags and records, output)", backend, n, step,
                             l, (unsigned long long)cc->copies);
                cr_expect_eq(cc->launches, moved ? 6 : 4,
                             "%s batch %u step %u layer %u: %llu launches (window moved: %d)",
                             backend, n, step, l, (unsigned long long)cc->launches, moved);
                cr_assert_eq(fkv_context_sync(ctx), FKV_OK, "%s", fkv_last_error());
                fkv_counters b = snap(dev);
                fkv_counters t = diff(&b, &a);
                const fkv_queue_counters *bg = &t.queues[FKV_COUNTER_BACKGROUND];
                cr_expect_eq(bg->copies, 0, "%s batch %u step %u layer %u: %llu task copies",
                             backend, n, step, l, (unsigned long long)bg->copies);
                cr_expect_leq(bg->launches, 1, "%s batch %u step %u layer %u: %llu task "
                              "launches (the scatter at most)", backend, n, step, l,
                              (unsigned long long)bg->launches);
                cr_expect_eq(t.worker_waits, 0, "%s batch %u step %u layer %u: %llu waits of "
                             "the task", backend, n, step, l,
                             (unsigned long long)t.worker_waits);
                cr_expect_eq(bg->h2d_bytes, 0, "%s batch %u step %u layer %u: the task wrote "
                             "%llu bytes", backend, n, step, l,
                             (unsigned long long)bg->h2d_bytes);
            }
        io_close(&io);
        fkv_context_destroy(ctx);
    }
    fkv_device_close(dev);
}

/* Vulkan: a decode call of the sync policy (no worker: every submission is the call's) goes
 * out in two vkQueueSubmit on lavapipe, whatever the batch and the recall mode: one when the
 * host waits for the selection's records, one when it waits for the output. The recall's
 * commands (staged: a transfer-queue write, then the scatter that waits for it; zero-copy:
 * the unit table write and the kernel) are recorded into the second, since the queues that
 * share one VkQueue share one submission stream and nothing waits for the recall on the host. */
static void check_vulkan_call_submits(const char *mode, uint32_t n) {
    setenv("FREEKV_VULKAN_RECALL", mode, 1);
    fkv_device *dev = NULL;
    if (fkv_backend_find("vulkan") == NULL)
        cr_skip_test("backend vulkan is not compiled in");
    fkv_status st = fkv_device_open("vulkan", NULL, &dev);
    unsetenv("FREEKV_VULKAN_RECALL");
    if (st == FKV_ERR_NO_DEVICE && !th_device_required("vulkan"))
        cr_skip_test("no vulkan device");
    cr_assert_eq(st, FKV_OK, "%s", fkv_last_error());
    char queues[256];
    cr_assert_eq(fkv_op_get_option(dev, "queues", queues, sizeof queues), FKV_OK);
    if (strstr(queues, "background family 0 queue 0 (shared), transfer family 0 queue 0 "
                       "(shared)") == NULL)
        cr_skip_test("the queues do not share one VkQueue here: %s", queues);
    fkv_config cfg;
    th_small_config(&cfg);
    cfg.policy = FKV_POLICY_SYNC;
    pd_run run = {.n_seqs = n, .seqs = {0, 1, 2, 3}, .prompt = {80, 72, 64, 76}, .steps = 4,
                  .batched = 1, .drift = 0.3f};
    fkv_context *ctx = prefilled(dev, &cfg, &run);
    call_io io;
    io_open(dev, &cfg, n, 0, &io);
    for (uint32_t step = 4; step < 7; step++)
        for (uint32_t l = 0; l < cfg.n_layers; l++) {
            io_fill(&cfg, &run, step, l, &io);
            fkv_counters d = io_decode(dev, ctx, &run, l, &io);
            cr_expect_eq(total(&d).submits, 2, "%s batch %u step %u layer %u: %llu submits",
                         mode, n, step, l, (unsigned long long)total(&d).submits);
        }
    io_close(&io);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

Test(vulkan, decode_call_submits, .timeout = 120) {
    static const char *const modes[] = {"staged", "hostptr"};
    for (int m = 0; m < 2; m++) {
        check_vulkan_call_submits(modes[m], 1);
        check_vulkan_call_submits(modes[m], 4);
    }
}

/* ---- selection and correction: commands per layer, constant in the batch ---- */

/* A freekv context of 4 sequences after prefill and two decode steps: sequence 2's prompt
 * fills only the sink (no candidate page), the others have 13-18 candidates. */
static fkv_context *selection_context(fkv_device *dev, const char *backend) {
    fkv_config cfg;
    th_small_config(&cfg);
    cfg.policy = FKV_POLICY_FREEKV;
    fkv_context *ctx = NULL;
    cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s: %s", backend,
                 fkv_last_error());
    pd_run run = {.n_seqs = 4, .seqs = {0, 1, 2, 3}, .prompt = {80, 70, 8, 60}, .steps = 2,
                  .batched = 1, .drift = 0.3f};
    cr_assert_eq(pd_execute(ctx, &run, NULL), FKV_OK, "%s: %s", backend, fkv_last_error());
    cr_assert_eq(fkv_context_sync(ctx), FKV_OK, "%s: %s", backend, fkv_last_error());
    return ctx;
}

/* One selection of layer 0 without a recall (the quest path: the records become the middle
 * slots), its counter difference in *d. */
static void count_selection(fkv_context *ctx, uint32_t n, const uint32_t *seqs, int use_qprev,
                            fkv_counters *d) {
    fkv_stats stats;
    memset(&stats, 0, sizeof stats);
    select_args a = {.queue = FKV_QUEUE_COMPUTE,
                     .pl = &ctx->plan_main,
                     .n = n,
                     .seqs = seqs,
                     .use_qprev = use_qprev,
                     .extra_tokens = use_qprev,
                     .stats = &stats};
    fkv_counters before, after;
    cr_assert_eq(fkv_context_get_counters(ctx, &before), FKV_OK);
    cr_assert_eq(fkv_select_pages(ctx, 0, &a), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_context_get_counters(ctx, &after), FKV_OK);
    *d = diff(&after, &before);
}

/* #11: a batch's selection is one descriptor write, one scores launch, one select_pages
 * launch and one read of the records, and one caller wait, whatever the batch size, with q
 * rows from this call (by batch position) or from each sequence's previous query (by
 * sequence); a batch of 4 selects what four batches of 1 do. */
static void check_selection_batch(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_context *ctx = selection_context(dev, backend);
    const uint32_t seqs[4] = {0, 1, 2, 3};
    size_t per = (size_t)ctx->cfg.n_kv_heads * ctx->n_mid;
    int32_t alone[4][64];
    cr_assert_leq(per, 64);
    for (int use_qprev = 0; use_qprev < 2; use_qprev++) {
        fkv_counters one, four;
        for (uint32_t i = 0; i < 4; i++) {
            count_selection(ctx, 1, seqs + i, use_qprev, &one);
            memcpy(alone[i], ctx->seqs[i].layers[0].mid_page, per * sizeof(int32_t));
        }
        count_selection(ctx, 4, seqs, use_qprev, &four);
        totals t1 = total(&one), t4 = total(&four);
        cr_expect_eq(t1.launches + t1.copies, 4, "%s: %llu commands for one sequence", backend,
                     (unsigned long long)(t1.launches + t1.copies));
        cr_expect_eq(t4.launches + t4.copies, t1.launches + t1.copies,
                     "%s (q rows from %s): %llu commands for 4 sequences, %llu for 1", backend,
                     use_qprev ? "qprev" : "qin", (unsigned long long)(t4.launches + t4.copies),
                     (unsigned long long)(t1.launches + t1.copies));
        cr_expect_eq(t4.launches, 2, "%s: launches", backend);
        cr_expect_eq(four.caller_waits, 1, "%s: caller waits", backend);
        cr_expect_eq(one.caller_waits, 1, "%s: caller waits", backend);
        for (uint32_t i = 0; i < 4 && use_qprev; i++) /* same query rows: same selection */
            cr_expect_arr_eq(ctx->seqs[i].layers[0].mid_page, alone[i], per * sizeof(int32_t),
                             "%s: sequence %u selects otherwise in a batch", backend, i);
        for (size_t m = 0; m < per; m++) /* no candidate: an empty selection */
            cr_expect_eq(ctx->seqs[2].layers[0].mid_page[m], -1, "%s: sequence 2", backend);
        cr_expect_geq(ctx->seqs[0].layers[0].mid_page[0], 0, "%s: sequence 0 selects", backend);
    }
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

/* One correction of layer 0 at threshold tau; its counter difference in *d, its commands
 * (launches and copies) returned, and the number of heads it flagged in *flagged. The
 * correction's recall, if any, is waited for after the counters are read. */
static uint64_t count_correction(fkv_context *ctx, uint32_t n, const uint32_t *seqs, float tau,
                                 fkv_counters *d, uint32_t *flagged) {
    fkv_stats stats;
    memset(&stats, 0, sizeof stats);
    ctx->cfg.tau = tau;
    fkv_bevent *corr = NULL;
    fkv_counters before, after;
    cr_assert_eq(fkv_context_get_counters(ctx, &before), FKV_OK);
    cr_assert_eq(fkv_correct_heads(ctx, 0, n, seqs, NULL, NULL, &corr, &stats), FKV_OK, "%s",
                 fkv_last_error());
    cr_assert_eq(fkv_context_get_counters(ctx, &after), FKV_OK);
    cr_assert_eq(corr != NULL, stats.corrections > 0, "an event only for a correction");
    if (corr)
        cr_assert_eq(fkv_op_event_wait(ctx->dev, 1, &corr), FKV_OK, "%s", fkv_last_error());
    fkv_op_event_release(ctx->dev, corr);
    *d = diff(&after, &before);
    *flagged = (uint32_t)stats.corrections;
    totals t = total(d);
    return t.launches + t.copies;
}

/* #11, #18: freekv's correction is one caller round trip: the check and the selection of the
 * flagged heads (the flags mask them on the device) come back in one read, and the caller
 * never waits for the recall (attention does, on the device). With no head flagged and the
 * same candidates now and next: the descriptors' write, scores_check (the check and the next
 * step's scores in one launch), select_pages and the read, 4 commands. Its commands are the same
 * whether no head or every head is flagged, and for a batch of 1 or 4, apart from the recall
 * (its table write and its kernel) when pages are missing; a sequence without a previous
 * query has every head flagged. */
/* freekv's correction: the attention lists its selection leaves ride with the recall of its
 * missing pages (in the staging write, staged mode here), so a call that corrects and recalls
 * issues on the compute queue only the inputs' write, the flags and records' read and the
 * output's read as copies; the lists were a fourth write before. Every head is flagged (tau
 * 2), and the queries drift, so that calls recall. */
static void check_correction_lists_ride(const char *backend, const char *recall_var) {
    fkv_device *dev = open_device_recall(backend, recall_var, "staged");
    fkv_config cfg;
    uint32_t recalling = 0;
    for (uint32_t n = 1; n <= 4; n += 3) {
        pd_run run;
        call_io io;
        /* tau 1: a drifting query's cosine is below it */
        fkv_context *ctx = freekv_batch(dev, 1.0f, n, 0.6f, &cfg, &run, &io);
        for (uint32_t step = 4; step < 10; step++)
            for (uint32_t l = 0; l < cfg.n_layers; l++) {
                cr_assert_eq(fkv_context_sync(ctx), FKV_OK, "%s", fkv_last_error());
                io_fill(&cfg, &run, step, l, &io);
                fkv_stats s0, s1;
                cr_assert_eq(fkv_context_get_stats(ctx, &s0), FKV_OK, "%s", fkv_last_error());
                fkv_counters c = io_decode(dev, ctx, &run, l, &io);
                cr_assert_eq(fkv_context_get_stats(ctx, &s1), FKV_OK, "%s", fkv_last_error());
                const fkv_queue_counters *cc = &c.queues[FKV_COUNTER_COMPUTE];
                recalling += s1.corrections > s0.corrections &&
                             c.queues[FKV_COUNTER_TRANSFER].copies > 0;
                cr_expect_eq(cc->copies, 3,
                             "%s batch %u step %u layer %u: %llu copies (inputs, flags and "
                             "records, output; the lists ride with the recall)",
                             backend, n, step, l, (unsigned long long)cc->copies);
            }
        io_close(&io);
        fkv_context_destroy(ctx);
    }
    cr_expect_gt(recalling, 0, "%s: no call corrected and recalled", backend);
    fkv_device_close(dev);
}

static void check_correction_round_trip(const char *backend) {
    fkv_device *dev = open_device(backend);
    fkv_context *ctx = selection_context(dev, backend);
    const uint32_t seqs[4] = {0, 1, 2, 3};
    uint32_t hk = ctx->cfg.n_kv_heads, flagged;
    fkv_counters d;
    uint64_t none[2];
    for (int b = 0; b < 2; b++) {
        uint32_t n = b ? 4 : 1;
        /* no head: a similarity is never below -2 */
        none[b] = count_correction(ctx, n, seqs, -2.0f, &d, &flagged);
        cr_expect_eq(flagged, 0, "%s: flagged at tau -2", backend);
        cr_expect_eq(none[b], 4, "%s batch %u: %llu commands with no head flagged", backend, n,
                     (unsigned long long)none[b]);
        cr_expect_eq(d.caller_waits, 1, "%s batch %u: caller waits, no head flagged", backend, n);
        /* every head: a similarity is never 2 or more; the first recalls what is missing */
        count_correction(ctx, n, seqs, 2.0f, &d, &flagged);
        cr_expect_eq(flagged, n * hk, "%s: flagged at tau 2", backend);
        cr_expect_eq(d.caller_waits, 1, "%s batch %u: caller waits, every head flagged", backend,
                     n);
        /* the same query again: every selected page is resident, nothing to recall */
        uint64_t all = count_correction(ctx, n, seqs, 2.0f, &d, &flagged);
        cr_expect_eq(all, none[b], "%s batch %u: %llu commands with every head flagged, %llu "
                     "with none", backend, n, (unsigned long long)all,
                     (unsigned long long)none[b]);
        cr_expect_eq(d.caller_waits, 1, "%s batch %u: caller waits", backend, n);
    }
    cr_expect_eq(none[1], none[0], "%s: commands of a batch of 4 and of 1", backend);
    /* no previous query: every head of that sequence, and only those, at tau -2 */
    ctx->seqs[1].layers[0].qblock = -1; /* no previous query */
    count_correction(ctx, 4, seqs, -2.0f, &d, &flagged);
    cr_expect_eq(flagged, hk, "%s: the heads of the sequence without a previous query", backend);
    for (uint32_t h = 0; h < 4 * hk; h++)
        cr_expect_eq(ctx->layers[0].host.flags[h], h / hk == 1, "%s: flag %u", backend, h);
    cr_expect_eq(d.caller_waits, 1, "%s: caller waits", backend);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

#define COUNTER_TESTS(backend, recall_var)                                                     \
    Test(backend, write_counts_one_copy_and_its_bytes) { check_transfer(#backend, 0); }        \
    Test(backend, read_counts_one_copy_and_its_bytes) { check_transfer(#backend, 1); }         \
    Test(backend, device_copy_counts_on_its_queue) { check_copy(#backend); }                   \
    Test(backend, event_wait_is_one_caller_wait) { check_event_wait(#backend); }               \
    Test(backend, wait_on_the_worker_counts_as_worker) { check_worker_wait(#backend); }        \
    Test(backend, event_query_is_no_wait) { check_event_query(#backend); }                     \
    Test(backend, allocations) { check_allocs(#backend); }                                     \
    Test(backend, attention_launches) { check_attention(#backend); }                           \
    Test(backend, decode_waits_by_thread, .timeout = 120) { check_decode_roles(#backend); }    \
    Test(backend, prefill_offload_in_batches, .timeout = 120) { check_prefill_batched(#backend); } \
    Test(backend, decode_page_fill_index_with_inputs) { check_decode_fill(#backend); } \
    Test(backend, decode_call_commands, .timeout = 120) {                                      \
        check_decode_call(#backend, 1);                                                        \
        check_decode_call(#backend, 4);                                                        \
    }                                                                                          \
    Test(backend, selection_commands_constant_in_batch, .timeout = 120) {                     \
        check_selection_batch(#backend);                                                       \
    }                                                                                          \
    Test(backend, descriptors_go_up_with_the_inputs, .timeout = 120) {                         \
        check_descriptors_with_inputs(#backend, recall_var);                                   \
    }                                                                                          \
    Test(backend, correction_is_one_round_trip, .timeout = 120) {                              \
        check_correction_round_trip(#backend);                                                 \
    }                                                                                          \
    Test(backend, correction_lists_ride_with_its_recall, .timeout = 120) {                     \
        check_correction_lists_ride(#backend, recall_var);                                     \
    }

COUNTER_TESTS(cpu, "FREEKV_CPU_RECALL")
COUNTER_TESTS(opencl, "FREEKV_OPENCL_RECALL")
COUNTER_TESTS(vulkan, "FREEKV_VULKAN_RECALL")
COUNTER_TESTS(hip, "FREEKV_HIP_RECALL")

/* No allocation once warm (#11: Vulkan keeps grow-only scratch per queue). */
Test(cpu, no_allocation_after_warmup, .timeout = 120) {
    check_steady_allocs("cpu", FKV_POLICY_FREEKV);
    check_steady_allocs("cpu", FKV_POLICY_SYNC);
}
Test(opencl, no_allocation_after_warmup, .timeout = 120) {
    check_steady_allocs("opencl", FKV_POLICY_FREEKV);
    check_steady_allocs("opencl", FKV_POLICY_SYNC);
}
Test(vulkan, no_allocation_after_warmup, .timeout = 120) {
    check_steady_allocs("vulkan", FKV_POLICY_FREEKV);
    check_steady_allocs("vulkan", FKV_POLICY_SYNC);
}

/* A table without the counters entry, or one built before it (struct_size), reports "not
 * counted", never zeros. */
Test(cpu, table_without_counters_is_not_counted) {
    fkv_backend_ops without = *fkv_backend_cpu();
    without.counters = NULL;
    fkv_backend_ops older = *fkv_backend_cpu();
    older.struct_size = (uint32_t)offsetof(fkv_backend_ops, counters);
    const fkv_backend_ops *tables[] = {&without, &older};
    for (int i = 0; i < 2; i++) {
        fkv_device *dev = NULL;
        cr_assert_eq(fkv_device_open_ops(tables[i], 0, &dev), FKV_OK, "%s", fkv_last_error());
        fkv_counters c;
        memset(&c, 0xA5, sizeof c);
        cr_expect_eq(fkv_device_get_counters(dev, &c), FKV_ERR_UNSUPPORTED);
        cr_expect(strstr(fkv_last_error(), "does not count") != NULL, "%s", fkv_last_error());
        cr_expect_eq(c.caller_waits, 0xA5A5A5A5A5A5A5A5ull, "the output is left alone");
        fkv_device_close(dev);
    }
    fkv_counters c;
    cr_expect_eq(fkv_device_get_counters(NULL, &c), FKV_ERR_INVALID_ARGUMENT);
    cr_expect_eq(fkv_context_get_counters(NULL, &c), FKV_ERR_INVALID_ARGUMENT);
}
