/* The op contract beyond data (backends/backend.h), checked on the device under test alone:
 * the table and device info, the public API, events and markers, buffer import, calls with no
 * work, refused arguments, indices out of range, and two threads enqueueing at once. Each
 * records what it finds in the case result and goes on, so one run lists every broken rule.
 * Every call goes through the dispatch layer (backends/dispatch.h), as every caller's does:
 * refused arguments and zero work are its rules, the same for every backend. The table itself
 * is read only where an entry is the subject: enumeration and the opened device's info
 * (check_device), and whether an optional entry exists. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "conformance.h"

#define CQ FKV_QUEUE_COMPUTE
#define TQ FKV_QUEUE_TRANSFER
#define BQ FKV_QUEUE_BACKGROUND
#define MAX_BUFS 32

/* Device buffers a check allocates, all freed by cx_end. */
typedef struct ctx {
    const cf_dev *d;
    fkv_device *dev;
    cf_result *r;
    fkv_bbuf *buf[MAX_BUFS];
    int n;
} ctx;

static void cx_begin(ctx *x, const cf_env *env, cf_result *r) {
    memset(x, 0, sizeof *x);
    x->d = &env->dut;
    x->dev = env->dut.dev;
    x->r = r;
}

/* Waits for ev after an enqueue that returned st; 0 when both succeeded. */
static int cx_done(ctx *x, fkv_status st, fkv_bevent *ev, const char *what) {
    if (st != FKV_OK) {
        cf_fail(x->r, "%s: %s", what, cf_error_text(st));
        return -1;
    }
    if (ev == NULL) {
        cf_fail(x->r, "%s: no event", what);
        return -1;
    }
    st = fkv_op_event_wait(x->dev, 1, &ev);
    fkv_op_event_release(x->dev, ev);
    if (st != FKV_OK) {
        cf_fail(x->r, "%s failed: %s", what, cf_error_text(st));
        return -1;
    }
    return 0;
}

/* A buffer of `size` bytes holding init (NULL: CF_FILL bytes); NULL after a failure. */
static fkv_bbuf *cx_alloc(ctx *x, size_t size, const void *init) {
    fkv_bbuf *b = NULL;
    if (x->n == MAX_BUFS || fkv_op_buffer_alloc(x->dev, size, &b) != FKV_OK) {
        cf_fail(x->r, "buffer_alloc(%zu): %s", size, fkv_last_error());
        return NULL;
    }
    x->buf[x->n++] = b;
    unsigned char *fill = malloc(size);
    if (fill == NULL) {
        cf_fail(x->r, "out of host memory");
        return NULL;
    }
    if (init)
        memcpy(fill, init, size);
    else
        memset(fill, CF_FILL, size);
    fkv_bevent *ev = NULL;
    fkv_status st = fkv_op_write(x->dev, CQ, (fkv_deps){0, NULL, &ev}, b, 0, fill, size);
    int bad = cx_done(x, st, ev, "initial write");
    free(fill);
    return bad ? NULL : b;
}

static int cx_read(ctx *x, const fkv_bbuf *b, size_t off, void *dst, size_t size) {
    fkv_bevent *ev = NULL;
    fkv_status st = fkv_op_read(x->dev, CQ, (fkv_deps){0, NULL, &ev}, b, off, dst, size);
    return cx_done(x, st, ev, "read");
}

static void cx_end(ctx *x) {
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        fkv_op_finish(x->dev, (fkv_queue)q);
    for (int i = 0; i < x->n; i++)
        fkv_op_buffer_free(x->dev, x->buf[i]);
    x->n = 0;
}

/* ---- device: the table, enumeration and info ---- */

static void check_device(const cf_env *env, const cf_case *c, cf_result *r) {
    (void)c;
    const cf_dev *d = &env->dut;
    /* the table's own entries are the subject here: enumeration, and the opened device's
     * info as its entry reports it */
    const fkv_backend_ops *table = fkv_device_ops(d->dev);
    fkv_device_info listed, opened, none;
    uint32_t count = 0;
    r->error = r->tolerance = 0;
    if (fkv_backend_check(table) != FKV_OK) {
        cf_fail(r, "ops table: %s", fkv_last_error());
        return;
    }
    if (table->device_count(&count) != FKV_OK || count <= d->info.index) {
        cf_fail(r, "device_count gives %u, device index is %u", count, d->info.index);
        return;
    }
    if (table->device_info(d->info.index, &listed) != FKV_OK) {
        cf_fail(r, "device_info(%u): %s", d->info.index, fkv_last_error());
        return;
    }
    if (table->opened_info ? table->opened_info(fkv_device_bdev(d->dev), &opened) != FKV_OK
                           : table->device_info(d->info.index, &opened) != FKV_OK) {
        cf_fail(r, "opened_info: %s", fkv_last_error());
        return;
    }
    if (strcmp(listed.name, opened.name) != 0)
        cf_fail(r, "device_info names '%s', the opened device '%s'", listed.name, opened.name);
    if (opened.name[0] == '\0')
        cf_fail(r, "empty device name");
    if (strcmp(opened.backend, table->name) != 0 || strcmp(listed.backend, table->name) != 0)
        cf_fail(r, "info.backend '%s' is not the table's name '%s'", opened.backend, table->name);
    if ((unsigned)opened.type > FKV_DEVICE_OTHER)
        cf_fail(r, "unknown device type %d", (int)opened.type);
    if (opened.max_buffer_bytes == 0 || (env->strict && opened.memory_bytes == 0))
        cf_fail(r, "memory_bytes %llu, max_buffer_bytes %llu",
                (unsigned long long)opened.memory_bytes,
                (unsigned long long)opened.max_buffer_bytes);
    if (opened.memory_bytes && opened.max_buffer_bytes > opened.memory_bytes)
        cf_fail(r, "max_buffer_bytes %llu exceeds memory_bytes %llu",
                (unsigned long long)opened.max_buffer_bytes,
                (unsigned long long)opened.memory_bytes);
    if (opened.caps >> 7)
        cf_fail(r, "unknown capability bits 0x%x", opened.caps);
    /* The recall-mode environment may change zero-copy of the opened device only; with the
     * backend's variables unset (strict) the two agree exactly. */
    uint32_t mask = env->strict ? ~0u : ~(uint32_t)FKV_CAP_ZERO_COPY_HOST;
    if ((listed.caps & mask) != (opened.caps & mask))
        cf_fail(r, "device_info caps 0x%x, the opened device's 0x%x", listed.caps, opened.caps);
    fkv_recall_mode mode = fkv_op_recall_mode(d->dev);
    if (!!(opened.caps & FKV_CAP_ZERO_COPY_HOST) != (mode == FKV_RECALL_DIRECT))
        cf_fail(r, "zero_copy_host is %s but the recall mode is %d: zero-copy exactly when "
                "kernels read host memory (direct)",
                opened.caps & FKV_CAP_ZERO_COPY_HOST ? "set" : "unset", (int)mode);
    if (opened.type == FKV_DEVICE_CPU && (opened.caps & FKV_CAP_PINNED_HOST))
        cf_fail(r, "pinned_host on a CPU device: there is nothing to pin");
    if (table->device_info(count, &none) != FKV_ERR_NO_DEVICE)
        cf_fail(r, "device_info(%u) of %u devices is not FKV_ERR_NO_DEVICE", count, count);
    fkv_bdev *extra = NULL;
    if (table->device_open(count, &extra) != FKV_ERR_NO_DEVICE || extra != NULL)
        cf_fail(r, "device_open(%u) of %u devices: not FKV_ERR_NO_DEVICE with NULL", count,
                count);
    if (r->status == CF_PASS) {
        char caps[160];
        fkv_caps_string(opened.caps, caps, sizeof caps);
        static const char *const modes[] = {"staged", "direct", "perpage"};
        snprintf(r->message, sizeof r->message, "type %s, caps %s, preferred recall %s",
                 fkv_device_type_name(opened.type), caps[0] ? caps : "none",
                 (unsigned)mode < 3 ? modes[mode] : "?");
    }
}

/* ---- the public API on this device ---- */

static void check_public_api(const cf_env *env, const cf_case *c, cf_result *r) {
    (void)c;
    fkv_device *dev = NULL;
    fkv_buffer *b = NULL;
    fkv_device_info info;
    unsigned char src[1000], back[500];
    char idx[16];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)(i * 7 + 3);
    snprintf(idx, sizeof idx, "%u", env->dut.info.index);
    const char *backend = env->dut.info.backend;
    if (fkv_device_open(backend, idx, &dev) != FKV_OK) {
        cf_fail(r, "fkv_device_open(%s, %s): %s", backend, idx, fkv_last_error());
        return;
    }
    if (fkv_device_get_info(dev, &info) != FKV_OK || strcmp(info.backend, backend))
        cf_fail(r, "fkv_device_get_info: backend '%s'", info.backend);
    if (fkv_buffer_alloc(dev, sizeof src, &b) != FKV_OK)
        cf_fail(r, "fkv_buffer_alloc: %s", fkv_last_error());
    else if (fkv_buffer_write(b, 0, src, sizeof src) != FKV_OK ||
             fkv_buffer_read(b, 250, back, sizeof back) != FKV_OK)
        cf_fail(r, "fkv_buffer_write/read: %s", fkv_last_error());
    else if (memcmp(back, src + 250, sizeof back) != 0)
        cf_fail(r, "fkv_buffer_read does not give back what fkv_buffer_write wrote");
    fkv_buffer_release(b);
    fkv_device_close(dev);
}

/* ---- events and markers ---- */

static void check_events(const cf_env *env, const cf_case *c, cf_result *r) {
    (void)c;
    ctx x;
    cx_begin(&x, env, r);
    fkv_device *dev = x.dev;
    unsigned char src[1024], back[1024], back2[1024];
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)(i * 13 + 1);
    fkv_bbuf *b = cx_alloc(&x, sizeof src, NULL), *b2 = cx_alloc(&x, sizeof src, NULL);
    if (b == NULL || b2 == NULL)
        goto out;
    /* a marker on another queue completes after its wait list; waiting twice is fine; a
     * command keeps what it waits on after the caller releases it */
    fkv_bevent *w = NULL, *m = NULL, *m2 = NULL;
    if (fkv_op_write(dev, TQ, (fkv_deps){0, NULL, &w}, b, 0, src, sizeof src) != FKV_OK ||
        fkv_op_marker(dev, CQ, (fkv_deps){1, &w, &m}) != FKV_OK) {
        cf_fail(r, "write + marker: %s", fkv_last_error());
        fkv_op_event_release(dev, w);
        goto out;
    }
    if (fkv_op_event_wait(dev, 1, &m) != FKV_OK || fkv_op_event_wait(dev, 1, &m) != FKV_OK)
        cf_fail(r, "waiting on a marker (twice): %s", fkv_last_error());
    /* once waited for, an event reads as complete without a wait (event_query) */
    int done = 0;
    if (fkv_op_event_query(dev, m, &done) != FKV_OK)
        cf_fail(r, "event_query of a completed marker: %s", fkv_last_error());
    else if (!done)
        cf_fail(r, "event_query: a marker waited for reads as not complete");
    fkv_status st = fkv_op_read(dev, CQ, (fkv_deps){1, &m, &m2}, b, 0, back, sizeof back);
    fkv_op_event_release(dev, w);
    fkv_op_event_release(dev, m);
    if (cx_done(&x, st, m2, "read after the marker") == 0 && memcmp(back, src, sizeof src))
        cf_fail(r, "read after the marker: the bytes differ from the write");
    /* one wait on several events of several queues */
    fkv_bevent *ev[3] = {NULL, NULL, NULL};
    st = fkv_op_write(dev, TQ, (fkv_deps){0, NULL, &ev[0]}, b2, 0, src, 512);
    if (st == FKV_OK)
        st = fkv_op_copy(dev, BQ, (fkv_deps){1, &ev[0], &ev[1]}, b2, 512, b2, 0, 512);
    if (st == FKV_OK)
        st = fkv_op_read(dev, CQ, (fkv_deps){1, &ev[1], &ev[2]}, b2, 0, back2, sizeof back2);
    if (st == FKV_OK)
        st = fkv_op_event_wait(dev, 3, ev);
    if (st != FKV_OK)
        cf_fail(r, "a chain on three queues, one wait on its three events: %s",
                fkv_last_error());
    else if (memcmp(back2, src, 512) || memcmp(back2 + 512, src, 512))
        cf_fail(r, "a chain on three queues: wrong bytes");
    for (int i = 0; i < 3; i++)
        if (ev[i])
            fkv_op_event_release(dev, ev[i]);
    /* a marker with no wait list, nothing to wait for, no event to release */
    m = NULL;
    st = fkv_op_marker(dev, TQ, (fkv_deps){0, NULL, &m});
    cx_done(&x, st, m, "marker");
    if (fkv_op_event_wait(dev, 0, NULL) != FKV_OK)
        cf_fail(r, "event_wait of no events: %s", fkv_last_error());
    fkv_op_event_release(dev, NULL);
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        if (fkv_op_finish(dev, (fkv_queue)q) != FKV_OK)
            cf_fail(r, "finish(%d): %s", q, fkv_last_error());
out:
    cx_end(&x);
}

/* ---- buffer import ---- */

static void check_buffer_import(const cf_env *env, const cf_case *c, cf_result *r) {
    (void)c;
    const cf_dev *d = &env->dut;
    fkv_bbuf *imp = NULL;
    fkv_status st = fkv_op_buffer_import(d->dev, NULL, 16, &imp);
    if (st != FKV_ERR_INVALID_ARGUMENT || imp != NULL)
        cf_fail(r, "importing NULL: %d (%s), not FKV_ERR_INVALID_ARGUMENT", (int)st,
                fkv_last_error());
    if (!FKV_HAS_ENTRY(fkv_device_ops(d->dev), buffer_import)) {
        if (r->status == CF_PASS)
            cf_skip(r, "buffer_import not provided (optional)");
        return;
    }
    if (d->info.type != FKV_DEVICE_REFERENCE) {
        /* Other devices import a native object (cl_mem, VkBuffer, device pointer) that this
         * portable runner cannot create: their own suites test it. */
        if (r->status == CF_PASS)
            cf_skip(r, "needs a native %s memory object; only the reference imports host memory",
                    d->info.backend);
        return;
    }
    /* host memory between guards: a write and a copy through the import land in it, and
     * freeing the import leaves it to its owner */
    unsigned char mem[512 + 2 * CF_GUARD], expect[512 + 2 * CF_GUARD], src[100];
    memset(mem, CF_FILL, sizeof mem);
    for (size_t i = 0; i < sizeof src; i++)
        src[i] = (unsigned char)(i * 31 + 7);
    st = fkv_op_buffer_import(d->dev, mem + CF_GUARD, 512, &imp);
    if (st != FKV_OK) {
        cf_fail(r, "buffer_import: %s", cf_error_text(st));
        return;
    }
    fkv_bevent *ev = NULL;
    st = fkv_op_write(d->dev, CQ, (fkv_deps){0, NULL, &ev}, imp, 5, src, sizeof src);
    if (st == FKV_OK)
        st = fkv_op_event_wait(d->dev, 1, &ev);
    if (ev)
        fkv_op_event_release(d->dev, ev);
    ev = NULL;
    if (st == FKV_OK)
        st = fkv_op_copy(d->dev, CQ, (fkv_deps){0, NULL, &ev}, imp, 300, imp, 50, 40);
    if (st == FKV_OK)
        st = fkv_op_event_wait(d->dev, 1, &ev);
    if (ev)
        fkv_op_event_release(d->dev, ev);
    fkv_op_buffer_free(d->dev, imp);
    memcpy(expect, mem, sizeof expect);
    memset(expect, CF_FILL, sizeof expect);
    memcpy(expect + CF_GUARD + 5, src, sizeof src);
    memmove(expect + CF_GUARD + 300, expect + CF_GUARD + 50, 40);
    if (st != FKV_OK)
        cf_fail(r, "write/copy through the import: %s", cf_error_text(st));
    else if (memcmp(mem, expect, sizeof mem) != 0)
        cf_fail(r, "the imported host memory does not hold what was written through it");
    r->error = r->tolerance = 0;
}

/* ---- small buffers for the argument checks: 8 slots of a d 16, p 4 geometry ---- */

typedef struct small {
    fkv_kv_geom g;
    fkv_bbuf *kp, *vp, *idx, *q, *out, *sums, *big;
} small;

static int small_setup(ctx *x, small *s) {
    s->g = (fkv_kv_geom){.n_kv_heads = 2, .group = 2, .head_dim = 16, .page_size = 4,
                         .dtype = FKV_F32};
    s->kp = cx_alloc(x, 4096, NULL);
    s->vp = cx_alloc(x, 4096, NULL);
    s->idx = cx_alloc(x, 64, NULL);
    s->q = cx_alloc(x, 4 * 16 * 4, NULL); /* one sequence of queries */
    s->out = cx_alloc(x, 4 * 16 * 4, NULL);
    s->sums = cx_alloc(x, 2 * 2 * 2 * 16 * 4, NULL); /* 2 summaries */
    s->big = cx_alloc(x, 1 << 16, NULL);
    return s->kp && s->vp && s->idx && s->q && s->out && s->sums && s->big ? 0 : -1;
}

/* An index buffer of exactly n int32. */
static fkv_bbuf *ints(ctx *x, const int32_t *v, size_t n) { return cx_alloc(x, n * 4, v); }

/* ---- calls with no work ---- */

static void check_zero_work(const cf_env *env, const cf_case *c, cf_result *r) {
    (void)c;
    ctx x;
    cx_begin(&x, env, r);
    small s;
    if (small_setup(&x, &s) != 0)
        goto out;
    fkv_device *dev = x.dev;
    const fkv_kv_geom *g = &s.g;
    fkv_bevent *ev = NULL;
#define ZERO(call)                                                                         \
    do {                                                                                   \
        ev = NULL;                                                                         \
        fkv_status st_ = (call);                                                           \
        cx_done(&x, st_, ev, #call);                                                       \
    } while (0)
    ZERO(fkv_op_append(dev, CQ, (fkv_deps){0, NULL, &ev}, g, s.big, 0, s.big, 0, 0, s.idx, 0, s.kp,
                       s.vp));
    ZERO(fkv_op_summarize(dev, CQ, (fkv_deps){0, NULL, &ev}, g, s.kp, 0, s.idx, 0, s.sums));
    ZERO(
        fkv_op_scores(dev, CQ, (fkv_deps){0, NULL, &ev}, g, s.q, 0, 0, s.idx, 0, NULL, 0, s.sums,
                      s.out, 0));
    ZERO(fkv_op_cosine_flags(dev, BQ, (fkv_deps){0, NULL, &ev}, g, s.q, 0, s.q, 0, s.idx, 0, 0,
                             0.5f, s.out, 0, s.out, 0));
    ZERO(fkv_op_scores_check(dev, CQ, (fkv_deps){0, NULL, &ev}, g, s.q, 0, 0, s.idx, 0, s.sums,
                             s.out, 0, 0, s.idx, 0, 0.5f, s.out, 0, s.out, 0));
    fkv_select_params sel = {.first_page = 0, .k = 2, .reduce = FKV_GROUP_SOFTMAX_MEAN,
                             .temp_scale = 1.0f};
    ZERO(fkv_op_select_pages(dev, CQ, (fkv_deps){0, NULL, &ev}, g, 0, s.idx, 0, NULL, 0, s.out, 0,
                             &sel,
                             s.big, 0));
    ZERO(fkv_op_pack_hnd(dev, CQ, (fkv_deps){0, NULL, &ev}, g, s.kp, s.vp, 0, s.idx, 0, s.out, 0));
    ZERO(fkv_op_scatter_hnd(dev, CQ, (fkv_deps){0, NULL, &ev}, g, s.big, 0, 0, s.idx, 0, s.kp,
                            s.vp));
    ZERO(fkv_op_attention(dev, BQ, (fkv_deps){0, NULL, &ev}, g, s.q, 0, 0, s.idx, 0, s.idx, 0, s.kp,
                          s.vp, 1.0f, s.out, 0));
    ZERO(fkv_op_attention_dense(dev, BQ, (fkv_deps){0, NULL, &ev}, g, s.q, 0, 0, s.kp, s.vp, 1.0f,
                                s.out, 0));
    ZERO(fkv_op_write_regions(dev, TQ, (fkv_deps){0, NULL, &ev}, s.out, 0, NULL));
    ZERO(fkv_op_write(dev, TQ, (fkv_deps){0, NULL, &ev}, s.out, 0, NULL, 0));
    ZERO(fkv_op_read(dev, CQ, (fkv_deps){0, NULL, &ev}, s.out, 4 * 16 * 4, NULL, 0));
    ZERO(fkv_op_copy(dev, BQ, (fkv_deps){0, NULL, &ev}, s.out, 0, s.q, 0, 0));
    ZERO(fkv_op_marker(dev, TQ, (fkv_deps){0, NULL, &ev}));
#undef ZERO
    /* a device may refuse host memory its kernels cannot read */
    if (FKV_HAS_ENTRY(fkv_device_ops(dev), recall_direct)) {
        fkv_bhost *h = NULL;
        void *p = NULL;
        fkv_direct_src src = {0};
        if (fkv_op_host_alloc(dev, 4096, &h, &p) != FKV_OK) {
            cf_fail(r, "host_alloc: %s", fkv_last_error());
        } else {
            ev = NULL;
            const fkv_bhost *hs[1] = {h};
            fkv_status st = fkv_op_recall_direct(dev, CQ, (fkv_deps){0, NULL, &ev}, g, 1, hs, 0,
                                                 &src, s.idx, 0, s.kp, s.vp);
            if (st != FKV_ERR_UNSUPPORTED)
                cx_done(&x, st, ev, "recall_direct of no units");
            fkv_op_finish(dev, CQ);
            fkv_op_host_free(dev, h);
        }
    }
    /* with no done event the command still runs */
    if (fkv_op_append(dev, CQ, (fkv_deps){0, NULL, NULL}, g, s.big, 0, s.big, 0, 0, s.idx, 0, s.kp,
                      s.vp) != FKV_OK ||
        fkv_op_finish(dev, CQ) != FKV_OK)
        cf_fail(r, "append of no rows without an event, then finish: %s", fkv_last_error());
out:
    cx_end(&x);
}

/* ---- refused arguments ---- */

/* `st` must be FKV_ERR_INVALID_ARGUMENT with a message and no event. */
static void refused(ctx *x, fkv_status st, fkv_bevent *ev, const char *what) {
    if (st != FKV_ERR_INVALID_ARGUMENT)
        cf_fail(x->r, "%s: not refused with FKV_ERR_INVALID_ARGUMENT (%d: %s)", what, (int)st,
                fkv_last_error());
    else if (fkv_last_error()[0] == '\0')
        cf_fail(x->r, "%s: refused without a message", what);
    if (ev != NULL)
        cf_fail(x->r, "%s: the event is set on error", what);
    if (st == FKV_OK && ev) { /* it ran: wait, so nothing still uses the buffers */
        fkv_op_event_wait(x->dev, 1, &ev);
        fkv_op_event_release(x->dev, ev);
    }
}

/* D: deps with a done event that the call must leave NULL. */
#define D ((fkv_deps){0, NULL, &ev})
#define REFUSED(call)                                                                      \
    do {                                                                                   \
        ev = (fkv_bevent *)&s; /* must come back NULL */                                   \
        fkv_status st_ = (call);                                                           \
        refused(&x, st_, ev, #call);                                                       \
    } while (0)

static void check_bad_arguments(const cf_env *env, const cf_case *c, cf_result *r) {
    (void)c;
    ctx x;
    cx_begin(&x, env, r);
    small s;
    if (small_setup(&x, &s) != 0) {
        cx_end(&x);
        return;
    }
    fkv_device *dev = x.dev;
    const fkv_kv_geom *g = &s.g;
    fkv_kv_geom bad = *g;
    fkv_bevent *ev = NULL;
    char host[64] = {0};
    static const unsigned char junk[128];
    fkv_bbuf *rows = ints(&x, (const int32_t[]){0, 1}, 2);
    if (rows == NULL) {
        cx_end(&x);
        return;
    }
    /* copies: queue, NULL pointers, ranges */
    REFUSED(fkv_op_write(dev, (fkv_queue)7, D, s.q, 0, host, 4));
    REFUSED(fkv_op_write(dev, CQ, (fkv_deps){1, NULL, &ev}, s.q, 0, host, 4));
    REFUSED(fkv_op_write(dev, CQ, D, NULL, 0, host, 4));
    REFUSED(fkv_op_write(dev, CQ, D, s.q, 0, NULL, 4));
    REFUSED(fkv_op_write(dev, CQ, D, s.q, 256 - 3, host, 4));
    REFUSED(fkv_op_write(dev, CQ, D, s.q, SIZE_MAX, host, 4));
    REFUSED(fkv_op_write(dev, CQ, D, s.kp, 4000, junk, 100));
    REFUSED(fkv_op_read(dev, TQ, D, s.q, 0, host, 257));
    REFUSED(fkv_op_read(dev, CQ, D, s.kp, 0, NULL, 16));
    REFUSED(fkv_op_copy(dev, TQ, D, s.q, 0, s.out, 8, 256));
    /* kernels: queue, geometry, buffers, offsets, alignment */
    REFUSED(fkv_op_append(dev, TQ, D, g, s.big, 0, s.big, 0, 2, rows, 0, s.kp, s.vp));
    REFUSED(fkv_op_scatter_hnd(dev, TQ, D, g, s.kp, 0, 1, s.idx, 0, s.kp, s.vp));
    REFUSED(
        fkv_op_attention(dev, TQ, D, g, s.q, 0, 1, rows, 0, rows, 0, s.kp, s.vp, 1.0f, s.out, 0));
    REFUSED(fkv_op_append(dev, CQ, D, NULL, s.big, 0, s.big, 0, 2, rows, 0, s.kp, s.vp));
    bad.head_dim = 0;
    REFUSED(fkv_op_append(dev, CQ, D, &bad, s.big, 0, s.big, 0, 2, rows, 0, s.kp, s.vp));
    bad = *g;
    bad.dtype = (fkv_dtype)9;
    REFUSED(fkv_op_append(dev, CQ, D, &bad, s.big, 0, s.big, 0, 2, rows, 0, s.kp, s.vp));
    REFUSED(fkv_op_summarize(dev, CQ, D, &bad, s.kp, 1, s.idx, 0, s.out));
    bad = *g;
    bad.summary_format = (fkv_summary_format)2;
    REFUSED(fkv_op_summarize(dev, CQ, D, &bad, s.kp, 1, s.idx, 0, s.out));
    REFUSED(fkv_op_append(dev, CQ, D, g, NULL, 0, s.big, 0, 2, rows, 0, s.kp, s.vp));
    REFUSED(fkv_op_append(dev, CQ, D, g, s.big, 0, s.big, 0, 2, rows, 4, s.kp, s.vp));
    REFUSED(fkv_op_append(dev, CQ, D, g, s.big, 2, s.big, 0, 2, rows, 0, s.kp, s.vp));
    REFUSED(fkv_op_append(dev, CQ, D, g, s.q, 0, s.q, 0, 100, s.idx, 0, s.kp, s.vp));
    REFUSED(fkv_op_append(dev, CQ, D, g, s.big, 0, s.big, 0, 2, rows, 0, s.kp, NULL));
    REFUSED(fkv_op_summarize(dev, CQ, D, g, s.kp, 2, rows, 0, s.sums)); /* pages: needs 4 ints */
    REFUSED(fkv_op_summarize(dev, CQ, D, g, s.kp, 1, rows, 0, NULL));
    REFUSED(fkv_op_scores(dev, CQ, D, g, s.q, 4, 1, s.idx, 0, NULL, 0, s.sums, s.out,
                          0)); /* no q row */
    REFUSED(fkv_op_scores(dev, CQ, D, g, s.q, 0, 1, rows, 0, NULL, 0, s.sums, s.out,
                          0)); /* desc: 4 ints */
    REFUSED(fkv_op_scores(dev, CQ, D, g, s.q, 0, 1, s.idx, 0, rows, 4, s.sums, s.out,
                          0)); /* mask: 2 ints */
    fkv_select_params sel = {.first_page = 0, .k = 2, .reduce = FKV_GROUP_MEAN,
                             .temp_scale = 1.0f};
    REFUSED(fkv_op_select_pages(dev, CQ, D, g, 1, rows, 0, NULL, 0, s.out, 0, &sel, s.out,
                                4)); /* desc */
    REFUSED(fkv_op_select_pages(dev, CQ, D, g, 1, s.idx, 0, NULL, 0, s.out, 0, &sel, s.q,
                                4 * 16 * 4 - 8));
    REFUSED(fkv_op_select_pages(dev, CQ, D, g, 1, s.idx, 0, s.idx, 2, s.out, 0, &sel, s.big,
                                0)); /* mask misaligned */
    REFUSED(fkv_op_select_pages(dev, CQ, D, g, 1, s.idx, 0, NULL, 0, s.out, 0, NULL, s.big, 0));
    sel.temp_scale = 0.0f;
    REFUSED(fkv_op_select_pages(dev, CQ, D, g, 1, s.idx, 0, NULL, 0, s.out, 0, &sel, s.big, 0));
    sel.temp_scale = 1.0f, sel.reduce = (fkv_group_reduce)7;
    REFUSED(fkv_op_select_pages(dev, CQ, D, g, 1, s.idx, 0, NULL, 0, s.out, 0, &sel, s.big, 0));
    REFUSED(fkv_op_cosine_flags(dev, BQ, D, g, s.q, 4, s.q, 0, rows, 0, 1, 0.9f, s.out, 0, s.out,
                                0)); /* q_cur */
    REFUSED(fkv_op_cosine_flags(dev, BQ, D, g, s.q, 0, s.q, 2, rows, 0, 1, 0.9f, s.out, 0, s.out,
                                0)); /* q_prev misaligned */
    REFUSED(fkv_op_cosine_flags(dev, BQ, D, g, s.q, 0, s.q, 0, rows, 8, 1, 0.9f, s.out, 0, s.out,
                                0)); /* prev_rows */
    REFUSED(fkv_op_cosine_flags(dev, BQ, D, g, s.q, 0, s.q, 0, rows, 0, 1, 0.9f, s.out, 0, NULL,
                                0));
    /* scores_check: the checks of both ops */
    REFUSED(fkv_op_scores_check(dev, CQ, D, g, s.q, 0, 1, s.idx, 0, s.sums, s.out, 0, 4, rows,
                                0, 0.9f, s.out, 0, s.out, 0)); /* q_cur */
    REFUSED(fkv_op_scores_check(dev, CQ, D, g, s.q, 0, 1, rows, 0, s.sums, s.out, 0, 0, rows, 0,
                                0.9f, s.out, 0, s.out, 0)); /* desc: 4 ints */
    REFUSED(fkv_op_scores_check(dev, CQ, D, g, s.q, 0, 1, s.idx, 0, s.sums, s.out, 0, 0, rows, 8,
                                0.9f, s.out, 0, s.out, 0)); /* prev_rows */
    REFUSED(fkv_op_scores_check(dev, TQ, D, g, s.q, 0, 1, s.idx, 0, s.sums, s.out, 0, 0, rows, 0,
                                0.9f, s.out, 0, s.out, 0)); /* a kernel on the transfer queue */
    REFUSED(fkv_op_scores_check(dev, CQ, D, g, s.q, 0, 1, s.idx, 0, s.sums, s.out, 0, 0, rows, 0,
                                0.9f, s.out, 0, NULL, 0));
    REFUSED(fkv_op_pack_hnd(dev, CQ, D, g, s.kp, s.vp, 1, s.idx, 0, s.out, 2)); /* misaligned */
    REFUSED(fkv_op_pack_hnd(dev, CQ, D, g, s.kp, s.vp, 2, rows, 0, s.out, 0));  /* dst too small */
    REFUSED(fkv_op_scatter_hnd(dev, CQ, D, g, s.q, 0, 2, rows, 0, s.kp, s.vp)); /* src too small */
    REFUSED(
        fkv_op_scatter_hnd(dev, CQ, D, g, s.big, 0, 2, rows, 0, s.kp, s.vp)); /* units: 2 ints */
    REFUSED(fkv_op_attention(dev, CQ, D, g, s.q, 0, 1, rows, 0, rows, 0, s.kp, s.vp, 1.0f, s.out,
                             4)); /* out past the end */
    REFUSED(fkv_op_attention(dev, CQ, D, g, s.q, 0, 1, rows, 0, rows, 0, s.kp, s.vp, 1.0f, s.out,
                             2)); /* misaligned */
    REFUSED(
        fkv_op_attention(dev, CQ, D, g, s.q, 0, 1, rows, 0, NULL, 0, s.kp, s.vp, 1.0f, s.out, 0));
    /* the optional entries: refused before their generic fallback too */
    REFUSED(fkv_op_attention_dense(dev, CQ, D, g, s.q, 0, 33, s.kp, s.vp, 1.0f, s.out, 0));
    REFUSED(fkv_op_attention_dense(dev, CQ, D, g, NULL, 0, 1, s.kp, s.vp, 1.0f, s.out, 0));
    unsigned char region_src[16] = {0};
    REFUSED(
        fkv_op_write_regions(dev, TQ, D, s.out, 1, &(fkv_copy_region){region_src, 256 - 10, 11}));
    REFUSED(fkv_op_write_regions(dev, TQ, D, s.out, 1, &(fkv_copy_region){NULL, 0, 4}));
    REFUSED(fkv_op_write_regions(dev, TQ, D, s.out, 2, NULL));
    /* host offsets outside the allocation (without the entry the call is unsupported) */
    if (FKV_HAS_ENTRY(fkv_device_ops(dev), recall_direct)) {
        fkv_bhost *h = NULL;
        void *p = NULL;
        if (fkv_op_host_alloc(dev, 1024, &h, &p) == FKV_OK) {
            fkv_direct_src offs[2] = {{.host = 0, .offset = 0}, {.host = 0, .offset = 1000}};
            const fkv_bhost *hs[2] = {h, NULL};
            ev = (fkv_bevent *)&s;
            fkv_status st = fkv_op_recall_direct(dev, CQ, D, g, 1, hs, 2, offs, s.idx, 0, s.kp,
                                                 s.vp);
            if (st != FKV_ERR_UNSUPPORTED)
                refused(&x, st, ev, "recall_direct: a unit past the host allocation");
            offs[1].offset = 0, offs[1].host = 1;
            ev = (fkv_bevent *)&s;
            st = fkv_op_recall_direct(dev, CQ, D, g, 1, hs, 2, offs, s.idx, 0, s.kp, s.vp);
            if (st != FKV_ERR_UNSUPPORTED)
                refused(&x, st, ev, "recall_direct: a unit of host 1 of 1");
            REFUSED(fkv_op_recall_direct(dev, CQ, D, g, 2, hs, 1, offs, s.idx, 0, s.kp, s.vp));
            fkv_op_host_free(dev, h);
        }
    }
    /* memory and events */
    fkv_bbuf *b = NULL; /* a failed call leaves it as it was */
    if (fkv_op_buffer_alloc(dev, 0, &b) != FKV_ERR_INVALID_ARGUMENT || b != NULL)
        cf_fail(r, "buffer_alloc(0): not FKV_ERR_INVALID_ARGUMENT with no buffer");
    fkv_bhost *h = NULL;
    void *hp = NULL;
    if (fkv_op_host_alloc(dev, 0, &h, &hp) != FKV_ERR_INVALID_ARGUMENT || h != NULL)
        cf_fail(r, "host_alloc(0): not FKV_ERR_INVALID_ARGUMENT with no allocation");
    if (fkv_op_event_wait(dev, 1, NULL) != FKV_ERR_INVALID_ARGUMENT)
        cf_fail(r, "event_wait(1, NULL): not FKV_ERR_INVALID_ARGUMENT");
    cx_end(&x);
}

#undef REFUSED
#undef D

/* ---- indices out of range: skipped (or, where the backend checks, a failed event), never
 * written through ---- */

typedef struct oor {
    ctx *x;
    small *s;
    unsigned char before_k[4096], before_v[4096], after[4096];
    int fail_required;
} oor;

/* Waits for ev; the command may have skipped the bad index (success) or failed naming op. */
static void oor_done(oor *t, fkv_status st, fkv_bevent *ev, const char *op, const char *what) {
    ctx *x = t->x;
    if (st != FKV_OK) {
        cf_fail(x->r, "%s: refused at enqueue (%s): an index inside a buffer is the command's "
                "to check", what, fkv_last_error());
        return;
    }
    st = ev ? fkv_op_event_wait(x->dev, 1, &ev) : FKV_OK;
    if (ev)
        fkv_op_event_release(x->dev, ev);
    if (st == FKV_OK && t->fail_required)
        cf_fail(x->r, "%s: the event does not fail", what);
    else if (st != FKV_OK && st != FKV_ERR_INVALID_ARGUMENT)
        cf_fail(x->r, "%s: fails with %d (%s), not FKV_ERR_INVALID_ARGUMENT", what, (int)st,
                fkv_last_error());
    else if (st != FKV_OK && strstr(fkv_last_error(), op) == NULL)
        cf_fail(x->r, "%s: the message '%s' does not name %s", what, fkv_last_error(), op);
    fkv_op_finish(x->dev, CQ); /* reports a failure on its queue once */
}

/* Pools unchanged since oor_snapshot: every index of the call was out of range. */
static void oor_pools(oor *t, const char *what) {
    const fkv_bbuf *p[2] = {t->s->kp, t->s->vp};
    const unsigned char *before[2] = {t->before_k, t->before_v};
    for (int i = 0; i < 2; i++) {
        if (cx_read(t->x, p[i], 0, t->after, 4096) != 0)
            return;
        if (memcmp(t->after, before[i], 4096) != 0)
            cf_fail(t->x->r, "%s: the %s pool changed", what, i ? "V" : "K");
    }
}

static void oor_snapshot(oor *t) {
    cx_read(t->x, t->s->kp, 0, t->before_k, 4096);
    cx_read(t->x, t->s->vp, 0, t->before_v, 4096);
}

static void check_out_of_range(const cf_env *env, const cf_case *c, cf_result *r) {
    (void)c;
    ctx x;
    cx_begin(&x, env, r);
    small s;
    oor *t = calloc(1, sizeof *t);
    if (t == NULL || small_setup(&x, &s) != 0)
        goto out;
    t->x = &x;
    t->s = &s;
    t->fail_required = env->index_errors_fail;
    fkv_device *dev = x.dev;
    fkv_kv_geom g = s.g; /* pools of 2 slots (1024 bytes of the 4096) */
    fkv_bbuf *kp2 = NULL, *vp2 = NULL;
    kp2 = cx_alloc(&x, 1024, NULL);
    vp2 = cx_alloc(&x, 1024, NULL);
    fkv_bevent *ev = NULL;
#define E ((fkv_deps){0, NULL, &ev})
#define OOR(call, op, what)                                                                \
    do {                                                                                   \
        ev = NULL;                                                                         \
        fkv_status st_ = (call);                                                           \
        oor_done(t, st_, ev, op, what);                                                    \
    } while (0)
#define IDX(...) ints(&x, (const int32_t[]){__VA_ARGS__}, sizeof((const int32_t[]){__VA_ARGS__}) / 4)
    if (kp2 == NULL || vp2 == NULL)
        goto out;
    /* append: a row past the pool (after a good one), a negative row, row 32 of 32 */
    OOR(fkv_op_append(dev, CQ, E, &g, s.big, 0, s.big, 0, 2, IDX(0, 8), 0, kp2, vp2), "append",
        "append to row 8 of 8");
    oor_snapshot(t);
    OOR(fkv_op_append(dev, CQ, E, &g, s.big, 0, s.big, 0, 1, IDX(-1), 0, s.kp, s.vp), "append",
        "append to row -1");
    OOR(fkv_op_append(dev, CQ, E, &g, s.big, 0, s.big, 0, 1, IDX(32), 0, s.kp, s.vp), "append",
        "append to row 32 of 32");
    oor_pools(t, "append to rows -1 and 32 of 32");
    /* summarize: slot 2 of 2; summary 2 of 2 */
    OOR(fkv_op_summarize(dev, CQ, E, &g, kp2, 1, IDX(2, 0), 0, s.sums), "summarize",
        "summarize slot 2 of 2");
    OOR(fkv_op_summarize(dev, CQ, E, &g, kp2, 1, IDX(1, 2), 0, s.sums), "summarize",
        "summarize into summary 2 of 2");
    /* scores: summaries [1, 3) of 2; an output block past the end; query rows 1 of 1 and -1 */
    OOR(fkv_op_scores(dev, CQ, E, &g, s.q, 0, 1, IDX(1, 2, 0, 0), 0, NULL, 0, s.sums, s.out, 0),
        "scores", "scores of summaries [1, 3) of 2");
    OOR(fkv_op_scores(dev, CQ, E, &g, s.q, 0, 1, IDX(0, 2, 60, 0), 0, NULL, 0, s.sums, s.out, 0),
        "scores", "scores past the output");
    OOR(fkv_op_scores(dev, CQ, E, &g, s.q, 0, 1, IDX(0, 2, 0, 1), 0, NULL, 0, s.sums, s.out, 0),
        "scores", "scores of query row 1 of 1");
    OOR(fkv_op_scores(dev, CQ, E, &g, s.q, 0, 1, IDX(0, 2, 0, -1), 0, NULL, 0, s.sums, s.out, 0),
        "scores", "scores of query row -1");
    /* cosine_flags: previous row 1 of 1 */
    OOR(fkv_op_cosine_flags(dev, CQ, E, &g, s.q, 0, s.q, 0, IDX(1), 0, 1, 0.9f, s.out, 0, s.big,
                            0),
        "cosine_flags", "cosine_flags of previous row 1 of 1");
    /* scores_check: previous row 1 of 1 (its query rows and summaries as scores') */
    OOR(fkv_op_scores_check(dev, CQ, E, &g, s.q, 0, 1, IDX(0, 2, 0, 0), 0, s.sums, s.out, 0, 0,
                            IDX(1), 0, 0.9f, s.big, 0, s.big, 4096),
        "scores_check", "scores_check of previous row 1 of 1");
    OOR(fkv_op_scores_check(dev, CQ, E, &g, s.q, 0, 1, IDX(0, 2, 0, 1), 0, s.sums, s.out, 0, 0,
                            IDX(0), 0, 0.9f, s.big, 0, s.big, 4096),
        "scores_check", "scores_check of query row 1 of 1");
    /* pack_hnd: a negative slot, slot 8 of 8 */
    OOR(fkv_op_pack_hnd(dev, CQ, E, &g, s.kp, s.vp, 2, IDX(-1, 8), 0, s.big, 0), "pack_hnd",
        "pack_hnd of slots -1 and 8");
    /* scatter_hnd: head 2 of 2, slot 8 of 8, slot 1000, head 7: nothing written */
    oor_snapshot(t);
    OOR(fkv_op_scatter_hnd(dev, CQ, E, &g, s.big, 0, 4, IDX(0, 2, 8, 0, 1000, 0, 0, 7), 0, s.kp,
                           s.vp),
        "scatter_hnd", "scatter_hnd to heads and slots out of range");
    oor_pools(t, "scatter_hnd to heads and slots out of range");
    /* attention: a list past the entries; slot 2 of 2; more valid tokens than a page (rows
     * still inside the pool); a negative count */
    fkv_bbuf *entries = IDX(0, 4, 2, 4, 0, 5);
    static const int32_t lists[4][4] = {{0, 1, 2, 2}, {0, 1, 1, 1}, {0, 1, 2, 1}, {0, -1, 0, 1}};
    static const char *const what[4] = {"attention: a list past the entries",
                                        "attention: slot 2 of 2",
                                        "attention: more valid tokens than a page",
                                        "attention: a negative count"};
    for (int i = 0; i < 4 && entries; i++) {
        fkv_bbuf *heads = ints(&x, lists[i], 4);
        if (heads)
            OOR(fkv_op_attention(dev, CQ, E, &g, s.q, 0, 1, heads, 0, entries, 0, kp2, vp2, 1.0f,
                                 s.out, 0),
                "attention", what[i]);
    }
    /* recall_direct: a unit's slot out of range (its host offset is fine), then the device's
     * words of its host (direct_host_words) */
    if (FKV_HAS_ENTRY(fkv_device_ops(dev), recall_direct)) {
        fkv_bhost *h = NULL;
        void *p = NULL;
        int32_t table[FKV_DIRECT_UNIT_INTS + FKV_DIRECT_HOST_INTS] = {8, 0, 0, 0};
        if (fkv_op_host_alloc(dev, 4096, &h, &p) == FKV_OK) {
            const fkv_bhost *hs[1] = {h};
            fkv_op_direct_host_words(dev, 1, hs, table + FKV_DIRECT_UNIT_INTS);
            fkv_bbuf *unit = ints(&x, table, FKV_DIRECT_UNIT_INTS + fkv_op_direct_host_ints(dev));
            fkv_direct_src off = {0};
            oor_snapshot(t);
            ev = NULL;
            fkv_status st = unit ? fkv_op_recall_direct(dev, CQ, E, &g, 1, hs, 1, &off, unit, 0,
                                                        s.kp, s.vp)
                                 : FKV_ERR_UNSUPPORTED;
            if (st != FKV_ERR_UNSUPPORTED) { /* a device that reads no host memory */
                oor_done(t, st, ev, "recall_direct", "recall_direct to slot 8 of 8");
                oor_pools(t, "recall_direct to slot 8 of 8");
            }
            fkv_op_finish(dev, CQ);
            fkv_op_host_free(dev, h);
        }
    }
#undef E
#undef OOR
#undef IDX
    /* the queue still works afterwards */
    fkv_op_finish(dev, CQ);
    fkv_bbuf *fine = ints(&x, (const int32_t[]){0, 1}, 2);
    ev = NULL;
    if (fine) {
        fkv_status st =
            fkv_op_summarize(dev, CQ, (fkv_deps){0, NULL, &ev}, &g, kp2, 1, fine, 0, s.sums);
        cx_done(&x, st, ev, "summarize after the errors");
    }
    if (fkv_op_finish(dev, CQ) != FKV_OK)
        cf_fail(r, "finish after the errors: %s", fkv_last_error());
out:
    free(t);
    cx_end(&x);
}

/* ---- two threads enqueueing the same kernels on two queues ---- */

typedef struct race_arg {
    const cf_dev *d;
    fkv_queue q;
    const fkv_kv_geom *g;
    fkv_bbuf *qb, *hb, *eb, *kp, *vp, *out;
    fkv_status st;
} race_arg;

static fkv_status race_attention(const race_arg *a, fkv_bbuf *out) {
    fkv_bevent *e = NULL;
    fkv_status st = fkv_op_attention(a->d->dev, a->q, (fkv_deps){0, NULL, &e}, a->g, a->qb, 0, 2,
                                     a->hb, 0, a->eb, 0, a->kp, a->vp, 0.1f, out, 0);
    if (st == FKV_OK)
        st = fkv_op_event_wait(a->d->dev, 1, &e);
    if (e)
        fkv_op_event_release(a->d->dev, e);
    return st;
}

static void *race_thread(void *p) {
    race_arg *a = p;
    a->st = FKV_OK;
    for (int i = 0; i < 20 && a->st == FKV_OK; i++)
        a->st = race_attention(a, a->out);
    return NULL;
}

/* Per-queue state (kernel objects, command pools, scratch): two threads enqueueing the same
 * kernels on COMPUTE and BACKGROUND at once get exactly the single-threaded results. */
static void check_two_queues(const cf_env *env, const cf_case *c, cf_result *r) {
    (void)c;
    ctx x;
    cx_begin(&x, env, r);
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 4, .head_dim = 64, .page_size = 16,
                     .dtype = FKV_BF16};
    size_t pool = 8 * 16 * 2 * 64 * 2, qn = 2 * 8 * 64;
    cf_rng rng;
    cf_seed(&rng, "two_queues", 1);
    unsigned char *kv = malloc(2 * pool);
    float *q = malloc(qn * 4);
    unsigned char *o[3] = {malloc(qn * 4), malloc(qn * 4), malloc(qn * 4)};
    if (!kv || !q || !o[0] || !o[1] || !o[2]) {
        cf_fail(r, "out of host memory");
        goto out;
    }
    for (size_t i = 0; i < pool; i++) /* two pools of random bf16 */
        fkv_store(kv, FKV_BF16, i, cf_normal(&rng));
    for (size_t i = 0; i < qn; i++)
        q[i] = cf_normal(&rng);
    /* (seq, KV head) lists of 1 to 4 slots, the last page partial; seq 0 head 0 empty */
    int32_t heads[8], entries[2 * 16];
    uint32_t e = 0, slots[4];
    for (uint32_t bh = 0; bh < 4; bh++) {
        uint32_t count = bh == 0 ? 0 : 1 + cf_below(&rng, 4);
        cf_pick_distinct(&rng, 8, count, slots);
        heads[2 * bh] = (int32_t)e;
        heads[2 * bh + 1] = (int32_t)count;
        for (uint32_t k = 0; k < count; k++, e++) {
            entries[2 * e] = (int32_t)slots[k];
            entries[2 * e + 1] = k + 1 == count ? (int32_t)(1 + cf_below(&rng, 16)) : 16;
        }
    }
    race_arg a = {.d = x.d, .q = CQ, .g = &g};
    a.qb = cx_alloc(&x, qn * 4, q);
    a.hb = cx_alloc(&x, sizeof heads, heads);
    a.eb = cx_alloc(&x, sizeof entries, entries);
    a.kp = cx_alloc(&x, pool, kv);
    a.vp = cx_alloc(&x, pool, kv + pool);
    fkv_bbuf *ob[3] = {cx_alloc(&x, qn * 4, NULL), cx_alloc(&x, qn * 4, NULL),
                       cx_alloc(&x, qn * 4, NULL)};
    if (!a.qb || !a.hb || !a.eb || !a.kp || !a.vp || !ob[0] || !ob[1] || !ob[2])
        goto out;
    fkv_status st = race_attention(&a, ob[2]);
    race_arg b = a;
    a.out = ob[0];
    b.q = BQ;
    b.out = ob[1];
    pthread_t ta, tb;
    if (st != FKV_OK) {
        cf_fail(r, "attention: %s", cf_error_text(st));
        goto out;
    }
    if (pthread_create(&ta, NULL, race_thread, &a) != 0) {
        cf_fail(r, "pthread_create failed");
        goto out;
    }
    if (pthread_create(&tb, NULL, race_thread, &b) != 0) {
        cf_fail(r, "pthread_create failed");
        pthread_join(ta, NULL);
        goto out;
    }
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    if (a.st != FKV_OK || b.st != FKV_OK)
        cf_fail(r, "attention from two threads: %d, %d (%s)", (int)a.st, (int)b.st,
                fkv_last_error());
    for (int i = 0; i < 3 && r->status != CF_FAIL; i++)
        cx_read(&x, ob[i], 0, o[i], qn * 4);
    if (r->status != CF_FAIL && (memcmp(o[0], o[2], qn * 4) || memcmp(o[1], o[2], qn * 4)))
        cf_fail(r, "attention from two threads differs from the single-threaded result (%s)",
                memcmp(o[0], o[2], qn * 4) ? "compute queue" : "background queue");
out:
    free(kv);
    free(q);
    for (int i = 0; i < 3; i++)
        free(o[i]);
    cx_end(&x);
}

cf_run_fn cf_contract_check(const char *op) {
    static const struct {
        const char *op;
        cf_run_fn run;
    } checks[] = {
        {"device", check_device},         {"public_api", check_public_api},
        {"events", check_events},         {"buffer_import", check_buffer_import},
        {"zero_work", check_zero_work},   {"bad_arguments", check_bad_arguments},
        {"out_of_range", check_out_of_range}, {"two_queues", check_two_queues},
    };
    for (size_t i = 0; i < sizeof checks / sizeof *checks; i++)
        if (strcmp(checks[i].op, op) == 0)
            return checks[i].run;
    return NULL;
}
