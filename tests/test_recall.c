/* The recall engine (core/recall.c) on the CPU reference: what lands in the slots, in every
 * mode; how many commands it issues (staged: one copy and one scatter per stage; direct: one
 * table write and one recall_direct per recall, however many host allocations the units come
 * from, and no host wait on a kernel); that a staging buffer is refilled only after the
 * scatter that last read it; that every wait of the caller is honoured, however many; that a
 * failure drains what was issued and leaves an engine that works. A recording ops table passes every command on to the CPU reference and
 * notes what it was asked (queue, buffers, wait lists, the event it returned). */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu_fault.h"
#include "backends/device.h"
#include "core/recall.h"
#include "helpers.h"

#define N_SLOTS 32
#define MAX_UNITS (N_SLOTS * 2) /* every (slot, KV head) of the pools once */
#define MAX_RECORDS 4096
#define MAX_RECORDED_WAITS 32

static const fkv_kv_geom geom = {
    .n_kv_heads = 2, .group = 1, .head_dim = 4, .page_size = 2, .dtype = FKV_F32};

/* ---- a recording ops table over the CPU reference --------------------------------------- */

typedef enum op_kind {
    OP_WRITE,
    OP_SCATTER,
    OP_DIRECT,
    OP_EVENT_WAIT,
    OP_EVENT_QUERY, /* count: what it answered (1: done) */
    OP_MARKER,
    OP_FINISH
} op_kind;

typedef struct record {
    op_kind op;
    fkv_queue queue;
    const void *object; /* write: destination; scatter: staged data; direct: its unit table */
    uint32_t count;     /* units of a scatter or direct recall */
    uint32_t n_hosts;   /* direct: host allocations it reads */
    uint32_t n_wait;
    fkv_bevent *wait[MAX_RECORDED_WAITS];
    fkv_bevent *done; /* the event the command returned */
    const fkv_bhost *host[MAX_UNITS]; /* direct: each unit's host allocation and offset */
    uint64_t offsets[MAX_UNITS];
} record;

static const fkv_backend_ops *real;
static fkv_backend_ops spy;
static record records[MAX_RECORDS];
static int n_records;

static record *note(op_kind op, fkv_queue q, const void *object, uint32_t n_wait,
                    fkv_bevent *const *wait) {
    cr_assert_lt(n_records, MAX_RECORDS);
    record *r = &records[n_records++];
    memset(r, 0, sizeof *r);
    r->op = op;
    r->queue = q;
    r->object = object;
    r->n_wait = n_wait;
    for (uint32_t i = 0; i < n_wait && i < MAX_RECORDED_WAITS; i++)
        r->wait[i] = wait[i];
    return r;
}

static fkv_status spy_write(fkv_bdev *dev, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                            size_t dst_offset, const void *src, size_t size) {
    fkv_status st = real->write(dev, q, deps, dst, dst_offset, src, size);
    note(OP_WRITE, q, dst, deps.n_wait, deps.wait)->done = deps.done ? *deps.done : NULL;
    return st;
}

static fkv_status spy_scatter(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                              const fkv_bbuf *src, size_t src_off, uint32_t n_units,
                              const fkv_bbuf *units, size_t units_off, fkv_bbuf *kpool,
                              fkv_bbuf *vpool) {
    fkv_status st =
        real->scatter_hnd(dev, q, deps, g, src, src_off, n_units, units, units_off, kpool, vpool);
    record *r = note(OP_SCATTER, q, src, deps.n_wait, deps.wait);
    r->count = n_units;
    r->done = deps.done ? *deps.done : NULL;
    return st;
}

static fkv_status spy_direct(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                             uint32_t n_hosts, const fkv_bhost *const *hosts, uint32_t n_units,
                             const fkv_direct_src *srcs, const fkv_bbuf *units, size_t units_off,
                             fkv_bbuf *kpool, fkv_bbuf *vpool) {
    fkv_status st = real->recall_direct(dev, q, deps, g, n_hosts, hosts, n_units, srcs, units,
                                        units_off, kpool, vpool);
    record *r = note(OP_DIRECT, q, units, deps.n_wait, deps.wait);
    r->count = n_units;
    r->n_hosts = n_hosts;
    r->done = deps.done ? *deps.done : NULL;
    for (uint32_t i = 0; i < n_units && i < MAX_UNITS; i++) {
        r->host[i] = hosts[srcs[i].host];
        r->offsets[i] = srcs[i].offset;
    }
    return st;
}

static fkv_status spy_event_wait(fkv_bdev *dev, uint32_t n, fkv_bevent *const *events) {
    note(OP_EVENT_WAIT, FKV_QUEUE_COMPUTE, NULL, n, events);
    return real->event_wait(dev, n, events);
}

static fkv_status spy_event_query(fkv_bdev *dev, fkv_bevent *ev, int *done) {
    fkv_status st = real->event_query(dev, ev, done);
    note(OP_EVENT_QUERY, FKV_QUEUE_COMPUTE, NULL, 1, &ev)->count = (uint32_t)*done;
    return st;
}

static fkv_status spy_marker(fkv_bdev *dev, fkv_queue q, fkv_deps deps) {
    fkv_status st = real->marker(dev, q, deps);
    note(OP_MARKER, q, NULL, deps.n_wait, deps.wait)->done = deps.done ? *deps.done : NULL;
    return st;
}

static fkv_status spy_finish(fkv_bdev *dev, fkv_queue q) {
    note(OP_FINISH, q, NULL, 0, NULL);
    return real->finish(dev, q);
}

/* ---- fixture: a CPU device, two host allocations of source units, two pools ------------- */

typedef struct fixture {
    fkv_device *dev;
    fkv_device *spied; /* dev viewed through the recording table: the engine's device */
    fkv_bdev *bd;
    fkv_bhost *host[2];
    unsigned char *host_ptr[2];
    fkv_bbuf *kpool, *vpool;
    size_t unit_bytes, slot_bytes;
    fkv_pool *threads;
} fixture;

static size_t unit_elems(void) { return 2 * (size_t)geom.page_size * geom.head_dim; }

static void fixture_open(fixture *f, fkv_recall_mode mode) {
    static const char *const names[] = {"staged", "direct", "perpage"};
    memset(f, 0, sizeof *f);
    cr_assert_eq(setenv("FREEKV_CPU_RECALL", names[mode], 1), 0);
    cr_assert_eq(fkv_device_open("cpu", NULL, &f->dev), FKV_OK, "%s", fkv_last_error());
    real = f->dev->ops;
    spy = *real;
    spy.write = spy_write;
    spy.scatter_hnd = spy_scatter;
    spy.recall_direct = spy_direct;
    spy.event_wait = spy_event_wait;
    spy.event_query = spy_event_query;
    spy.marker = spy_marker;
    spy.finish = spy_finish;
    n_records = 0;
    cr_assert_eq(fkv_device_view(f->dev, &spy, &f->spied), FKV_OK, "%s", fkv_last_error());
    f->bd = f->dev->bdev;
    f->unit_bytes = unit_elems() * sizeof(float);
    f->slot_bytes = (size_t)geom.page_size * geom.n_kv_heads * geom.head_dim * sizeof(float);
    for (int a = 0; a < 2; a++) {
        void *ptr;
        cr_assert_eq(real->host_alloc(f->bd, MAX_UNITS * f->unit_bytes, &f->host[a], &ptr), FKV_OK);
        f->host_ptr[a] = ptr;
        float *x = ptr;
        for (size_t i = 0; i < MAX_UNITS * unit_elems(); i++) /* every value names its place */
            x[i] = (float)(a * 100000 + (int)i);
    }
    cr_assert_eq(real->buffer_alloc(f->bd, N_SLOTS * f->slot_bytes, &f->kpool), FKV_OK);
    cr_assert_eq(real->buffer_alloc(f->bd, N_SLOTS * f->slot_bytes, &f->vpool), FKV_OK);
    cr_assert_eq(fkv_pool_create(3, &f->threads), FKV_OK);
}

static void fixture_close(fixture *f) {
    real->finish(f->bd, FKV_QUEUE_COMPUTE);
    real->finish(f->bd, FKV_QUEUE_TRANSFER);
    real->buffer_free(f->bd, f->kpool);
    real->buffer_free(f->bd, f->vpool);
    for (int a = 0; a < 2; a++)
        real->host_free(f->bd, f->host[a]);
    fkv_pool_destroy(f->threads);
    fkv_device_close(f->spied);
    fkv_device_close(f->dev);
}

static fkv_recaller *engine(fixture *f, fkv_recall_mode mode, uint32_t chunk) {
    fkv_recaller *r;
    cr_assert_eq(fkv_recaller_create(f->spied, &geom, mode, chunk, 0, &r), FKV_OK, "%s",
                 fkv_last_error());
    fkv_recaller_set_pool(r, f->threads);
    return r;
}

/* Unit i: source unit src_index[i] of allocation alloc[i], into (slot, head) target i of a
 * fixed shuffle, so every unit has its own place. */
static void make_units(fixture *f, uint32_t n, const int *alloc, uint64_t seed,
                       fkv_recall_unit *units) {
    th_rng rng;
    th_seed(&rng, seed);
    int32_t target[MAX_UNITS], source[MAX_UNITS];
    th_permutation(&rng, target, MAX_UNITS);
    th_permutation(&rng, source, MAX_UNITS);
    for (uint32_t i = 0; i < n; i++) {
        int a = alloc ? alloc[i] : 0;
        units[i] = (fkv_recall_unit){
            .host = f->host[a],
            .host_offset = (uint64_t)source[i] * f->unit_bytes,
            .src = f->host_ptr[a] + (size_t)source[i] * f->unit_bytes,
            .gslot = target[i] / 2,
            .kv_head = target[i] % 2,
        };
    }
}

/* The pools hold every unit at its (slot, head), NHD: pool[slot][t][head][c]. */
static void expect_in_place(fixture *f, uint32_t n, const fkv_recall_unit *units) {
    size_t pool_floats = N_SLOTS * f->slot_bytes / sizeof(float);
    float *k = malloc(N_SLOTS * f->slot_bytes), *v = malloc(N_SLOTS * f->slot_bytes);
    fkv_bevent *ev = NULL;
    cr_assert_eq(real->read(f->bd, FKV_QUEUE_COMPUTE, (fkv_deps){.n_wait = 0}, f->kpool, 0, k,
                            N_SLOTS * f->slot_bytes),
                 FKV_OK);
    cr_assert_eq(real->read(f->bd, FKV_QUEUE_COMPUTE, (fkv_deps){.done = &ev}, f->vpool, 0, v,
                            N_SLOTS * f->slot_bytes),
                 FKV_OK);
    cr_assert_eq(real->event_wait(f->bd, 1, &ev), FKV_OK, "%s", fkv_last_error());
    real->event_release(f->bd, ev);
    uint32_t p = geom.page_size, d = geom.head_dim, hk = geom.n_kv_heads;
    for (uint32_t i = 0; i < n; i++) {
        const float *src = units[i].src;
        for (uint32_t t = 0; t < p; t++)
            for (uint32_t c = 0; c < d; c++) {
                size_t dst = (((size_t)units[i].gslot * p + t) * hk + units[i].kv_head) * d + c;
                cr_assert_lt(dst, pool_floats);
                cr_assert_eq(k[dst], src[t * d + c], "unit %u K (t %u, c %u)", i, t, c);
                cr_assert_eq(v[dst], src[(p + t) * d + c], "unit %u V (t %u, c %u)", i, t, c);
            }
    }
    free(k);
    free(v);
}

static fkv_status run(fkv_recaller *r, fixture *f, uint32_t n, const fkv_recall_unit *units,
                      uint32_t n_wait, fkv_bevent *const *wait) {
    fkv_bevent *done = NULL;
    fkv_status st = fkv_recaller_run(r, FKV_QUEUE_COMPUTE, n, units, f->kpool, f->vpool,
                                     (fkv_deps){.n_wait = n_wait, .wait = wait, .done = &done});
    if (st != FKV_OK) {
        cr_assert_null(done, "a failed run returns no event");
        return st;
    }
    cr_assert_not_null(done);
    st = real->event_wait(f->bd, 1, &done);
    real->event_release(f->bd, done);
    return st;
}

/* A run that must succeed, and leave every unit in place. */
static void run_ok(fkv_recaller *r, fixture *f, uint32_t n, const fkv_recall_unit *units,
                   uint32_t n_wait, fkv_bevent *const *wait) {
    cr_assert_eq(run(r, f, n, units, n_wait, wait), FKV_OK, "%s", fkv_last_error());
    expect_in_place(f, n, units);
}

/* Indices of the records of one kind, in order. */
static int find_all(op_kind op, int *out, int cap) {
    int n = 0;
    for (int i = 0; i < n_records; i++)
        if (records[i].op == op && n < cap)
            out[n++] = i;
    return n;
}

static int waits_on(const record *r, const fkv_bevent *ev) {
    for (uint32_t i = 0; i < r->n_wait && i < MAX_RECORDED_WAITS; i++)
        if (r->wait[i] == ev)
            return 1;
    return 0;
}

/* ---- contents and chunking, every mode --------------------------------------------------- */

typedef struct mode_param {
    fkv_recall_mode mode;
} mode_param;

ParameterizedTestParameters(recall, contents_and_chunks) {
    static mode_param params[] = {{FKV_RECALL_STAGED}, {FKV_RECALL_DIRECT}, {FKV_RECALL_PERPAGE}};
    return cr_make_param_array(mode_param, params, sizeof params / sizeof *params);
}

/* 13 units in runs of allocations A A A A A B B B B A A A A, chunks of 3: staged and perpage
 * cut 3+3+3+3+1; direct recall reads both allocations in one command of 13 units, grouped by
 * allocation (A's units in order, then B's). */
ParameterizedTest(mode_param *param, recall, contents_and_chunks) {
    fixture f;
    fixture_open(&f, param->mode);
    static const int alloc[13] = {0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0};
    fkv_recall_unit units[13];
    make_units(&f, 13, alloc, 7, units);
    fkv_recaller *r = engine(&f, param->mode, 3);
    run_ok(r, &f, 13, units, 0, NULL);

    int idx[16];
    int direct = param->mode == FKV_RECALL_DIRECT;
    int n = find_all(direct ? OP_DIRECT : OP_SCATTER, idx, 16);
    static const uint32_t staged_counts[] = {3, 3, 3, 3, 1};
    static const uint32_t direct_counts[] = {13};
    const uint32_t *want = direct ? direct_counts : staged_counts;
    cr_assert_eq(n, direct ? 1 : 5);
    for (int c = 0; c < n; c++) {
        const record *rec = &records[idx[c]];
        cr_assert_eq(rec->count, want[c], "command %d recalls %u units, not %u", c, rec->count,
                     want[c]);
    }
    if (direct) {
        static const int grouped[13] = {0, 1, 2, 3, 4, 9, 10, 11, 12, 5, 6, 7, 8};
        cr_assert_eq(records[idx[0]].n_hosts, 2);
        for (uint32_t i = 0; i < 13; i++) {
            cr_assert_eq(records[idx[0]].host[i], units[grouped[i]].host, "unit %u", i);
            cr_assert_eq(records[idx[0]].offsets[i], units[grouped[i]].host_offset, "unit %u", i);
        }
    }
    fkv_recaller_destroy(r);
    fixture_close(&f);
}

/* ---- commands per recall ----------------------------------------------------------------- */

/* A layer's recall of 50 units, each from its own host allocation (the host pool is built of
 * pieces, and selected pages fall in many): zero-copy is one write of the unit table and one
 * recall_direct reading all 50 allocations, both on the recall's queue, and the host never
 * waits for a stage (a kernel's event). Three recalls, so both stages are reused. */
Test(recall, direct_is_one_command_over_fifty_allocations) {
    enum { N = 50 };
    fixture f;
    fixture_open(&f, FKV_RECALL_DIRECT);
    fkv_bhost *pieces[N];
    fkv_recall_unit units[N];
    th_rng rng;
    th_seed(&rng, 21);
    int32_t target[MAX_UNITS];
    th_permutation(&rng, target, MAX_UNITS);
    for (int i = 0; i < N; i++) {
        void *ptr;
        cr_assert_eq(real->host_alloc(f.bd, 2 * f.unit_bytes, &pieces[i], &ptr), FKV_OK);
        float *x = ptr;
        for (size_t e = 0; e < 2 * unit_elems(); e++)
            x[e] = (float)(1000 * i + (int)e);
        uint64_t off = (uint64_t)(i % 2) * f.unit_bytes; /* the second unit: the last one */
        units[i] = (fkv_recall_unit){.host = pieces[i], .host_offset = off,
                                     .src = (unsigned char *)ptr + off, .gslot = target[i] / 2,
                                     .kv_head = target[i] % 2};
    }
    fkv_recaller *r = engine(&f, FKV_RECALL_DIRECT, 16); /* grows to the recall */
    fkv_bevent *kernels[3] = {NULL, NULL, NULL}; /* each recall's recall_direct event */
    for (int rep = 0; rep < 3; rep++) {
        n_records = 0;
        run_ok(r, &f, N, units, 0, NULL);
        int w[8], d[8], ew[8];
        cr_assert_eq(find_all(OP_WRITE, w, 8), 1, "recall %d: one table write", rep);
        cr_assert_eq(find_all(OP_DIRECT, d, 8), 1, "recall %d: one recall_direct", rep);
        cr_assert_eq(records[d[0]].count, N);
        cr_assert_eq(records[d[0]].n_hosts, N);
        cr_assert_lt(w[0], d[0]);
        cr_assert_eq(records[w[0]].queue, FKV_QUEUE_COMPUTE, "the table goes on the recall's queue");
        cr_assert_eq(records[w[0]].object, records[d[0]].object, "the kernel reads that table");
        cr_assert_eq(records[d[0]].queue, FKV_QUEUE_COMPUTE);
        kernels[rep] = records[d[0]].done;
        int n_ew = find_all(OP_EVENT_WAIT, ew, 8);
        for (int e = 0; e < n_ew; e++)
            for (int k = 0; k < rep; k++)
                cr_assert(!waits_on(&records[ew[e]], kernels[k]),
                          "recall %d waits on the host for the recall_direct of recall %d", rep,
                          k);
        cr_assert_leq(n_ew, 1, "recall %d: at most a wait for the table copy of two recalls ago",
                      rep);
    }
    fkv_recaller_destroy(r);
    for (int i = 0; i < N; i++)
        real->host_free(f.bd, pieces[i]);
    fixture_close(&f);
}

/* Staged recall of a layer's budget: one copy (gathered units and their table together) and
 * one scatter per stage. */
Test(recall, staged_is_one_copy_and_one_scatter_per_stage) {
    fixture f;
    fixture_open(&f, FKV_RECALL_STAGED);
    static const int alloc[20] = {0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1, 0, 1};
    fkv_recall_unit units[20];
    make_units(&f, 20, alloc, 17, units);
    fkv_recaller *r = engine(&f, FKV_RECALL_STAGED, 8);
    run_ok(r, &f, 20, units, 0, NULL);
    int w[16], sc[16];
    cr_assert_eq(find_all(OP_WRITE, w, 16), 3, "20 units in stages of 8: three copies");
    cr_assert_eq(find_all(OP_SCATTER, sc, 16), 3);
    for (int c = 0; c < 3; c++) {
        cr_assert_eq(records[w[c]].queue, FKV_QUEUE_TRANSFER);
        cr_assert_eq(records[w[c]].object, records[sc[c]].object, "scatter %d reads its copy", c);
        cr_assert(waits_on(&records[sc[c]], records[w[c]].done));
    }
    fkv_recaller_destroy(r);
    fixture_close(&f);
}

/* ---- double buffering ------------------------------------------------------------------- */

/* Chunk c is staged in buffer c % 2, and is gathered only after the host waited for the
 * scatter of chunk c - 2, which read that buffer; each scatter waits for its chunk's copies.
 * Two runs: the second's first chunks wait on the first run's scatters. */
Test(recall, stage_reuse_waits_for_the_scatter_that_read_it) {
    fixture f;
    fixture_open(&f, FKV_RECALL_STAGED);
    fkv_recall_unit units[MAX_UNITS];
    make_units(&f, 9, NULL, 11, units);
    fkv_recaller *r = engine(&f, FKV_RECALL_STAGED, 2);
    run_ok(r, &f, 9, units, 0, NULL);
    make_units(&f, 4, NULL, 12, units);
    run_ok(r, &f, 4, units, 0, NULL);

    int sc[16];
    int n = find_all(OP_SCATTER, sc, 16);
    cr_assert_eq(n, 5 + 2, "9 units in chunks of 2, then 4: 7 scatters");
    for (int c = 0; c < n; c++) {
        const record *s = &records[sc[c]];
        /* the write before a scatter copies its chunk and index, and it waits on it */
        int w = sc[c] - 1;
        while (w >= 0 && records[w].op != OP_WRITE)
            w--;
        cr_assert_geq(w, 0);
        cr_assert(waits_on(s, records[w].done), "scatter %d does not wait for its copies", c);
        if (c >= 1)
            cr_assert_neq(s->object, records[sc[c - 1]].object, "chunks %d and %d share a stage",
                          c - 1, c);
        if (c < 2)
            continue;
        cr_assert_eq(s->object, records[sc[c - 2]].object, "chunk %d is not in stage %d", c,
                     c % 2);
        /* between the previous scatter and this chunk's first copy: a host wait on the event
         * of the scatter two chunks back, or a query that found it complete */
        int first_write = sc[c - 1] + 1;
        while (records[first_write].op != OP_WRITE)
            first_write++;
        int waited = 0;
        for (int i = sc[c - 1] + 1; i < first_write; i++)
            waited |= (records[i].op == OP_EVENT_WAIT ||
                       (records[i].op == OP_EVENT_QUERY && records[i].count == 1)) &&
                      waits_on(&records[i], records[sc[c - 2]].done);
        cr_assert(waited, "chunk %d refills its stage without waiting for scatter %d", c, c - 2);
    }
    fkv_recaller_destroy(r);
    fixture_close(&f);
}

/* #11: a stage whose last scatter already completed is reused without a blocking host wait
 * (the caller's thread is not stalled, and no wait is counted): the engine asks first. Both
 * modes' host tables and stages; the queues are drained between the runs. */
Test(recall, a_completed_stage_is_reused_without_a_host_wait) {
    for (int m = 0; m < 2; m++) {
        fkv_recall_mode mode = m ? FKV_RECALL_DIRECT : FKV_RECALL_STAGED;
        fixture f;
        fixture_open(&f, mode);
        fkv_recall_unit units[MAX_UNITS];
        fkv_recaller *r = engine(&f, mode, 2);
        for (int k = 0; k < 2; k++) { /* both stages used once */
            make_units(&f, 2, NULL, 20 + k, units);
            run_ok(r, &f, 2, units, 0, NULL);
        }
        cr_assert_eq(real->finish(f.bd, FKV_QUEUE_COMPUTE), FKV_OK);
        cr_assert_eq(real->finish(f.bd, FKV_QUEUE_TRANSFER), FKV_OK);
        int before = n_records;
        for (int k = 0; k < 2; k++) { /* each reuses a stage whose reader is done */
            make_units(&f, 2, NULL, 30 + k, units);
            run_ok(r, &f, 2, units, 0, NULL);
        }
        int queried = 0;
        for (int i = before; i < n_records; i++) {
            cr_assert_neq(records[i].op, OP_EVENT_WAIT, "mode %d: record %d is a host wait", m,
                          i - before);
            queried += records[i].op == OP_EVENT_QUERY && records[i].count == 1;
        }
        cr_assert_geq(queried, 2, "mode %d: %d completed stages asked for", m, queried);
        fkv_recaller_destroy(r);
        fixture_close(&f);
    }
}

/* ---- wait lists of any length ------------------------------------------------------------ */

/* Markers on the background queue, one of which fails when it runs (fault injection); it is
 * made last, and reported by the finish, so that the queue runs again. */
static void make_waits(fixture *f, fkv_bevent **ev, uint32_t n, uint32_t failing) {
    for (uint32_t i = 0; i < n; i++)
        if (i != failing)
            cr_assert_eq(real->marker(f->bd, FKV_QUEUE_BACKGROUND, (fkv_deps){.done = &ev[i]}),
                         FKV_OK);
    cr_assert_eq(fkv_cpu_fault_arm(f->dev, 1, FKV_CPU_FAULT_RUN, FKV_CPU_FAULT_THIS_THREAD),
                 FKV_OK);
    cr_assert_eq(real->marker(f->bd, FKV_QUEUE_BACKGROUND, (fkv_deps){.done = &ev[failing]}),
                 FKV_OK);
    int fired = 0;
    cr_assert_eq(fkv_cpu_fault_disarm(f->dev, &fired, NULL), FKV_OK);
    cr_assert(fired);
    cr_assert_neq(real->finish(f->bd, FKV_QUEUE_BACKGROUND), FKV_OK);
    cr_assert_neq(real->event_wait(f->bd, 1, &ev[failing]), FKV_OK);
    for (uint32_t i = 0; i < n; i++)
        if (i != failing)
            cr_assert_eq(real->event_wait(f->bd, 1, &ev[i]), FKV_OK);
}

/* Twenty events to wait on, the eighteenth failed: every scatter waits on all of them (after
 * its own copies), so the recall fails; an engine that kept only the first sixteen would let
 * it succeed. */
Test(recall, every_wait_is_honoured) {
    enum { N_WAIT = 20, FAILING = 17 };
    fixture f;
    fixture_open(&f, FKV_RECALL_STAGED);
    fkv_bevent *waits[N_WAIT];
    make_waits(&f, waits, N_WAIT, FAILING);
    fkv_recall_unit units[MAX_UNITS];
    make_units(&f, 5, NULL, 3, units);
    fkv_recaller *r = engine(&f, FKV_RECALL_STAGED, 2);
    n_records = 0;
    cr_assert_neq(run(r, &f, 5, units, N_WAIT, waits), FKV_OK,
                  "a recall after a failed event succeeded");
    int sc[8];
    int n = find_all(OP_SCATTER, sc, 8);
    cr_assert_eq(n, 3);
    for (int c = 0; c < n; c++) {
        cr_assert_eq(records[sc[c]].n_wait, N_WAIT + 1, "scatter %d waits on %u events", c,
                     records[sc[c]].n_wait);
        for (uint32_t i = 0; i < N_WAIT; i++)
            cr_assert(waits_on(&records[sc[c]], waits[i]), "scatter %d skips wait %u", c, i);
    }
    /* the compute queue reported the failure at the recall's marker: the engine works on */
    real->finish(f.bd, FKV_QUEUE_COMPUTE);
    run_ok(r, &f, 5, units, FAILING, waits);
    /* nothing to recall: the completion still waits on the whole list */
    cr_assert_neq(run(r, &f, 0, units, N_WAIT, waits), FKV_OK);
    for (uint32_t i = 0; i < N_WAIT; i++)
        real->event_release(f.bd, waits[i]);
    fkv_recaller_destroy(r);
    fixture_close(&f);
}

/* ---- failures ---------------------------------------------------------------------------- */

/* The n-th command of a run fails at enqueue, for every n: the run reports it, returns no
 * event, and has drained both queues; the same engine then recalls correctly. */
Test(recall, enqueue_failures_drain_and_the_engine_recovers) {
    fixture f;
    fixture_open(&f, FKV_RECALL_STAGED);
    fkv_recall_unit units[MAX_UNITS];
    make_units(&f, 5, NULL, 5, units);
    fkv_recaller *r = engine(&f, FKV_RECALL_STAGED, 2);
    int failures = 0;
    for (uint64_t at = 1;; at++) {
        cr_assert_lt(at, 100, "a run of 3 chunks issues far fewer commands");
        cr_assert_eq(fkv_cpu_fault_arm(f.dev, at, FKV_CPU_FAULT_ENQUEUE, FKV_CPU_FAULT_THIS_THREAD),
                     FKV_OK);
        n_records = 0;
        fkv_status st = run(r, &f, 5, units, 0, NULL);
        int fired = 0;
        cr_assert_eq(fkv_cpu_fault_disarm(f.dev, &fired, NULL), FKV_OK);
        if (!fired) {
            cr_assert_eq(st, FKV_OK, "%s", fkv_last_error());
            break;
        }
        cr_assert_neq(st, FKV_OK, "command %llu failed, the run did not", (unsigned long long)at);
        failures++;
        int fin[8];
        int n = find_all(OP_FINISH, fin, 8);
        cr_assert_geq(n, 2, "command %llu failed without draining", (unsigned long long)at);
        cr_assert(records[fin[0]].queue == FKV_QUEUE_TRANSFER &&
                      records[fin[1]].queue == FKV_QUEUE_COMPUTE,
                  "command %llu: the run drains the transfer queue, then its own",
                  (unsigned long long)at);
        run_ok(r, &f, 5, units, 0, NULL);
    }
    cr_assert_geq(failures, 3 * 2, "every copy and scatter of the 3 chunks failed once");
    fkv_recaller_destroy(r);
    fixture_close(&f);
}

/* A scatter that fails when it runs fails that recall; its stage's event is then a failed
 * one, and the next recall that reuses the stage waits on it without inheriting the
 * failure. */
Test(recall, a_failed_scatter_does_not_fail_the_next_recall) {
    fixture f;
    fixture_open(&f, FKV_RECALL_STAGED);
    fkv_recall_unit units[MAX_UNITS];
    make_units(&f, 2, NULL, 9, units);
    fkv_recaller *r = engine(&f, FKV_RECALL_STAGED, 2);
    /* one chunk: the write of its data and index, then the scatter (second command) */
    cr_assert_eq(fkv_cpu_fault_arm(f.dev, 2, FKV_CPU_FAULT_RUN, FKV_CPU_FAULT_THIS_THREAD), FKV_OK);
    n_records = 0;
    cr_assert_neq(run(r, &f, 2, units, 0, NULL), FKV_OK);
    int fired = 0;
    cr_assert_eq(fkv_cpu_fault_disarm(f.dev, &fired, NULL), FKV_OK);
    cr_assert(fired);
    int sc[4];
    cr_assert_eq(find_all(OP_SCATTER, sc, 4), 1);
    fkv_bevent *failed = records[sc[0]].done;
    /* two chunks: the second reuses the failed scatter's stage */
    make_units(&f, 4, NULL, 10, units);
    n_records = 0;
    run_ok(r, &f, 4, units, 0, NULL);
    int waited = 0;
    for (int i = 0; i < n_records; i++)
        waited |= (records[i].op == OP_EVENT_WAIT ||
                   (records[i].op == OP_EVENT_QUERY && records[i].count == 1)) &&
                  waits_on(&records[i], failed);
    cr_assert(waited, "the stage was refilled before its failed scatter completed");
    fkv_recaller_destroy(r);
    fixture_close(&f);
}
