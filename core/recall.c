/* The recall engine: (page, KV head) units from the host pool into device slots, double
 * buffered. Separate from retrieval because it knows only units, stages and events, not
 * which pages were chosen or why; every policy's recall goes through it. */
#include "recall.h"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

#define DEFAULT_CHUNK_UNITS 256

typedef struct stage {
    fkv_bhost *host;       /* pinned staging: gathered units, then the unit table */
    void *host_ptr;
    fkv_bbuf *data;        /* device copy of the same: gathered units, then the unit table */
    uint32_t cap;          /* units the stage holds */
    fkv_bevent *free_ev;   /* completes when the last command reading the device copy did */
    fkv_bevent *table_ev;  /* direct: completes when the host table was copied to the device */
} stage;

struct fkv_recaller {
    fkv_device *dev;
    fkv_kv_geom geom;
    fkv_recall_mode mode;
    uint32_t chunk;
    size_t unit_bytes;
    fkv_pool *pool;
    stage stages[2];
    unsigned next;
    size_t carry_cap; /* room for carried bytes after each stage's tables */
    stage *carried;   /* the stage the last run's carried bytes are in, or NULL */
    /* a scatter's wait list: its chunk's ready event and the caller's waits (grown to the
     * longest list seen, so steady state allocates nothing) */
    fkv_bevent **waits;
    uint32_t waits_cap;
    /* direct: the distinct host allocations of one recall, each unit's index among them and
     * its (host, offset) source, in table order (grown to the largest recall seen) */
    const fkv_bhost **hosts;
    uint32_t hosts_cap;
    uint32_t *unit_host, *order, *host_first;
    fkv_direct_src *srcs;
    uint32_t units_cap;
};

/* Room for carry_bytes after a stage's tables, in whole words. */
static size_t carry_room(size_t carry_bytes) { return (carry_bytes + 3) / 4 * 4; }

/* Bytes of a stage's table: (gslot, kv_head) staged; direct: (gslot, kv_head, host, offset)
 * and room for the backend's words of as many hosts (direct_host_words). */
static size_t index_bytes(fkv_recall_mode mode, uint32_t chunk) {
    size_t ints = mode == FKV_RECALL_DIRECT ? FKV_DIRECT_UNIT_INTS + FKV_DIRECT_HOST_INTS : 2;
    return (size_t)chunk * ints * sizeof(int32_t);
}

static size_t data_bytes(const fkv_recaller *r, uint32_t units) {
    /* Direct recall reads the host pool itself: no data staging is needed. */
    return r->mode == FKV_RECALL_DIRECT ? 0 : (size_t)units * r->unit_bytes;
}

/* Drops a stage's memory once nothing reads it any more. */
static void stage_free(fkv_recaller *r, stage *s) {
    fkv_bevent *evs[2] = {s->free_ev, s->table_ev};
    for (int e = 0; e < 2; e++)
        if (evs[e]) {
            fkv_op_event_wait(r->dev, 1, &evs[e]);
            fkv_op_event_release(r->dev, evs[e]);
        }
    s->free_ev = s->table_ev = NULL;
    if (s->host)
        fkv_op_host_free(r->dev, s->host);
    if (s->data)
        fkv_op_buffer_free(r->dev, s->data);
    s->host = NULL;
    s->data = NULL;
    s->host_ptr = NULL;
    s->cap = 0;
}

/* A stage for `units` units: [data | table] in pinned host memory and on the device. */
static fkv_status stage_alloc(fkv_recaller *r, stage *s, uint32_t units) {
    size_t bytes = data_bytes(r, units) + index_bytes(r->mode, units) + r->carry_cap;
    fkv_status st = fkv_op_host_alloc(r->dev, bytes, &s->host, &s->host_ptr);
    if (st == FKV_OK)
        st = fkv_op_buffer_alloc(r->dev, bytes, &s->data);
    if (st != FKV_OK) {
        stage_free(r, s);
        return fkv_error_prefix(st, "recall staging for %u units", units);
    }
    s->cap = units;
    return FKV_OK;
}

void fkv_recaller_destroy(fkv_recaller *r) {
    if (r == NULL)
        return;
    for (int i = 0; i < 2; i++)
        stage_free(r, &r->stages[i]);
    free(r->waits);
    free(r->hosts);
    free(r->unit_host);
    free(r->order);
    free(r->host_first);
    free(r->srcs);
    free(r);
}

fkv_status fkv_recaller_create(fkv_device *dev, const fkv_kv_geom *g, fkv_recall_mode mode,
                               uint32_t chunk_units, size_t carry_bytes, fkv_recaller **out) {
    *out = NULL;
    fkv_recaller *r = calloc(1, sizeof *r);
    if (r == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "recall engine");
    r->dev = dev;
    r->geom = *g;
    r->mode = mode;
    r->chunk = chunk_units ? chunk_units : DEFAULT_CHUNK_UNITS;
    r->unit_bytes = fkv_unit_bytes(g);
    r->carry_cap = carry_room(carry_bytes);
    fkv_status st = FKV_OK;
    for (int i = 0; i < 2 && st == FKV_OK; i++)
        st = stage_alloc(r, &r->stages[i], r->chunk);
    if (st != FKV_OK) {
        fkv_recaller_destroy(r);
        return fkv_error_prefix(st, "creating the recall staging buffers");
    }
    *out = r;
    return FKV_OK;
}

void fkv_recaller_set_pool(fkv_recaller *r, fkv_pool *pool) { r->pool = pool; }

void fkv_recaller_bytes(const fkv_kv_geom *g, fkv_recall_mode mode, uint32_t chunk_units,
                        size_t carry_bytes, uint64_t *host_bytes, uint64_t *device_bytes) {
    uint64_t chunk = chunk_units ? chunk_units : DEFAULT_CHUNK_UNITS;
    uint64_t unit = fkv_unit_bytes(g);
    uint64_t data = mode == FKV_RECALL_DIRECT ? 0 : chunk * unit;
    uint64_t index = index_bytes(mode, (uint32_t)chunk);
    uint64_t carry = carry_room(carry_bytes);
    *host_bytes = 2 * (data + index + carry);
    *device_bytes = 2 * (data + index + carry);
}

void fkv_recaller_memory(const fkv_recaller *r, uint64_t *host_bytes, uint64_t *device_bytes) {
    fkv_recaller_bytes(&r->geom, r->mode, r->chunk, r->carry_cap, host_bytes, device_bytes);
}

typedef struct gather_job {
    const fkv_recall_unit *units;
    unsigned char *dst;
    size_t unit_bytes;
} gather_job;

static void gather_range(void *arg, size_t begin, size_t end) {
    gather_job *j = arg;
    for (size_t i = begin; i < end; i++)
        memcpy(j->dst + i * j->unit_bytes, j->units[i].src, j->unit_bytes);
}

/* The carried bytes into the stage's host copy at byte `at` (after its tables); their size. */
static size_t place_carry(fkv_recaller *r, stage *s, size_t at, fkv_recall_carry *carry) {
    if (carry == NULL)
        return 0;
    memcpy((unsigned char *)s->host_ptr + at, carry->bytes, carry->size);
    carry->buf = s->data;
    carry->off = at;
    r->carried = s;
    return carry->size;
}

/* Staged and perpage: gathers one chunk into the stage and enqueues the copies that bring it
 * with its unit table (and carry's bytes, when given) to the device; *ready is the last
 * one's event. The table follows the chunk's units (at *table_off), so staged recall copies
 * both in one write. */
static fkv_status stage_chunk(fkv_recaller *r, stage *s, uint32_t n, const fkv_recall_unit *units,
                              fkv_recall_carry *carry, fkv_bevent **ready, size_t *table_off) {
    size_t data = (size_t)n * r->unit_bytes;
    int32_t *index = (int32_t *)((unsigned char *)s->host_ptr + data);
    for (uint32_t i = 0; i < n; i++) {
        index[2 * i] = units[i].gslot;
        index[2 * i + 1] = units[i].kv_head;
    }
    *table_off = data;
    size_t tables = index_bytes(r->mode, n);
    size_t carried = place_carry(r, s, data + tables, carry);
    fkv_deps done = {.done = ready};
    if (r->mode == FKV_RECALL_STAGED) {
        gather_job job = {.units = units, .dst = s->host_ptr, .unit_bytes = r->unit_bytes};
        fkv_pool_run(r->pool, n, gather_range, &job);
        return fkv_op_write(r->dev, FKV_QUEUE_TRANSFER, done, s->data, 0, s->host_ptr,
                            data + tables + carried);
    }
    /* One region per unit: a backend with write_regions copies them in one command, the
     * fallback issues one write each. */
    fkv_copy_region *regions = malloc((n ? n : 1) * sizeof *regions);
    if (regions == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "recall regions");
    for (uint32_t i = 0; i < n; i++)
        regions[i] = (fkv_copy_region){
            .src = units[i].src, .dst_offset = i * r->unit_bytes, .size = r->unit_bytes};
    fkv_status st = fkv_op_write_regions(r->dev, FKV_QUEUE_TRANSFER, (fkv_deps){.n_wait = 0},
                                         s->data, n, regions);
    free(regions);
    if (st != FKV_OK)
        return st;
    return fkv_op_write(r->dev, FKV_QUEUE_TRANSFER, done, s->data, data, index,
                        tables + carried);
}

/* Room for a wait list of n events. */
static fkv_status reserve_waits(fkv_recaller *r, uint64_t n) {
    if (n <= r->waits_cap)
        return FKV_OK;
    fkv_bevent **grown = realloc(r->waits, n * sizeof *grown);
    if (grown == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "recall wait list of %llu events",
                         (unsigned long long)n);
    r->waits = grown;
    r->waits_cap = (uint32_t)n;
    return FKV_OK;
}

/* Releases *ev once it completed. Its completion is all that matters here: had it failed,
 * the recall it belonged to reported that, and what it guarded is free either way (a stale
 * failure must not fail this recall). It usually has (it is two recalls old): asked first,
 * so that the host blocks only when the device is really behind. */
static void retire(fkv_recaller *r, fkv_bevent **ev) {
    if (*ev) {
        int done = 0;
        if (fkv_op_event_query(r->dev, *ev, &done) != FKV_OK || !done)
            fkv_op_event_wait(r->dev, 1, ev);
        fkv_op_event_release(r->dev, *ev);
        *ev = NULL;
    }
}

/* The next stage, once the scatter that last read it completed. */
static stage *next_stage(fkv_recaller *r) {
    stage *s = &r->stages[r->next];
    r->next ^= 1;
    retire(r, &s->free_ev);
    return s;
}

/* The caller's waits after `first` (NULL entries dropped) into r->waits; returns the count. */
static uint32_t wait_list(fkv_recaller *r, fkv_bevent *first, fkv_deps deps) {
    uint32_t n_wait = 0;
    if (first)
        r->waits[n_wait++] = first;
    for (uint32_t i = 0; i < deps.n_wait; i++)
        if (deps.wait[i])
            r->waits[n_wait++] = deps.wait[i];
    return n_wait;
}

/* ---- direct (zero-copy): one table write and one recall_direct per recall --------------- *
 * The table: the units' entries, then what the backend reads of each host allocation
 * (fkv_op_direct_host_words: device addresses), in the same write. */

static fkv_status grow(void **p, size_t n, size_t size) {
    void *g = realloc(*p, n * size);
    if (g == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "recall tables of %zu entries", n);
    *p = g;
    return FKV_OK;
}

/* Room for n units (and as many hosts) in the engine's host-side tables. */
static fkv_status reserve_units(fkv_recaller *r, uint32_t n) {
    if (n <= r->units_cap)
        return FKV_OK;
    fkv_status st;
    if ((st = grow((void **)&r->unit_host, n, sizeof *r->unit_host)) != FKV_OK ||
        (st = grow((void **)&r->order, n, sizeof *r->order)) != FKV_OK ||
        (st = grow((void **)&r->host_first, (size_t)n + 1, sizeof *r->host_first)) != FKV_OK ||
        (st = grow((void **)&r->srcs, n, sizeof *r->srcs)) != FKV_OK ||
        (st = grow((void **)&r->hosts, n, sizeof *r->hosts)) != FKV_OK)
        return st;
    r->units_cap = n;
    return FKV_OK;
}

/* The distinct host allocations of units (in order of first use) and the units grouped by
 * them (stable): the table order, so each host's units are one contiguous range. */
static uint32_t group_by_host(fkv_recaller *r, uint32_t n, const fkv_recall_unit *units) {
    uint32_t n_hosts = 0, last = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t h = last < n_hosts && r->hosts[last] == units[i].host ? last : n_hosts;
        for (uint32_t k = 0; h == n_hosts && k < n_hosts; k++)
            if (r->hosts[k] == units[i].host)
                h = k;
        if (h == n_hosts)
            r->hosts[n_hosts++] = units[i].host;
        r->unit_host[i] = last = h;
    }
    /* counting sort by host */
    memset(r->host_first, 0, ((size_t)n_hosts + 1) * sizeof *r->host_first);
    for (uint32_t i = 0; i < n; i++)
        r->host_first[r->unit_host[i] + 1]++;
    for (uint32_t h = 0; h < n_hosts; h++)
        r->host_first[h + 1] += r->host_first[h];
    for (uint32_t i = 0; i < n; i++)
        r->order[r->host_first[r->unit_host[i]]++] = i;
    return n_hosts;
}

/* The stage's table, grown to n units. Growing frees the old one only after the commands
 * that read it (warm-up only: the table keeps the largest size seen). */
static fkv_status direct_stage(fkv_recaller *r, stage *s, uint32_t n) {
    if (n <= s->cap)
        return FKV_OK;
    uint32_t cap = n > 2 * s->cap ? n : 2 * s->cap;
    stage_free(r, s);
    return stage_alloc(r, s, cap);
}

static fkv_status run_direct(fkv_recaller *r, fkv_queue q, uint32_t n, const fkv_recall_unit *units,
                             fkv_bbuf *kpool, fkv_bbuf *vpool, fkv_deps deps,
                             fkv_recall_carry *carry, fkv_bevent **last) {
    fkv_status st = reserve_units(r, n);
    if (st != FKV_OK)
        return st;
    stage *s = &r->stages[r->next];
    r->next ^= 1;
    /* The host table is free once its last copy to the device completed (long ago: two
     * recalls back); the device table is overwritten on the device after the kernel that read
     * it, through the write's wait list, never by a host wait. */
    retire(r, &s->table_ev);
    if ((st = direct_stage(r, s, n)) != FKV_OK)
        return st;
    uint32_t n_hosts = group_by_host(r, n, units);
    size_t es = fkv_dtype_size(r->geom.dtype);
    int32_t *table = s->host_ptr;
    for (uint32_t j = 0; j < n; j++) {
        const fkv_recall_unit *u = &units[r->order[j]];
        uint32_t h = r->unit_host[r->order[j]];
        r->srcs[j] = (fkv_direct_src){.host = h, .offset = u->host_offset};
        table[4 * j] = u->gslot;
        table[4 * j + 1] = u->kv_head;
        table[4 * j + 2] = (int32_t)h;
        table[4 * j + 3] = (int32_t)(uint32_t)(u->host_offset / es);
    }
    fkv_op_direct_host_words(r->dev, n_hosts, r->hosts, table + (size_t)FKV_DIRECT_UNIT_INTS * n);
    size_t table_bytes =
        fkv_direct_table_ints(n, n_hosts, fkv_op_direct_host_ints(r->dev)) * sizeof(int32_t);
    table_bytes += place_carry(r, s, table_bytes, carry);
    fkv_bevent *prev = s->free_ev;
    s->free_ev = NULL;
    st = fkv_op_write(r->dev, q, (fkv_deps){.n_wait = prev ? 1 : 0, .wait = &prev, .done = &s->table_ev},
                      s->data, 0, table, table_bytes);
    if (prev)
        fkv_op_event_release(r->dev, prev);
    if (st != FKV_OK)
        return st;
    /* In order after the write on q; the caller's waits guard the slots. */
    fkv_deps kd = {.n_wait = wait_list(r, NULL, deps), .wait = r->waits, .done = &s->free_ev};
    st = fkv_op_recall_direct(r->dev, q, kd, &r->geom, n_hosts, r->hosts, n, r->srcs, s->data, 0,
                              kpool, vpool);
    if (st == FKV_OK)
        *last = s->free_ev;
    return st;
}

/* ---- staged and perpage: gather, one copy and one scatter per stage ---------------------- */

static fkv_status run_staged(fkv_recaller *r, fkv_queue q, uint32_t n, const fkv_recall_unit *units,
                             fkv_bbuf *kpool, fkv_bbuf *vpool, fkv_deps deps,
                             fkv_recall_carry *carry, fkv_bevent **last) {
    fkv_status st = FKV_OK;
    for (uint32_t begin = 0; begin < n && st == FKV_OK;) {
        uint32_t count = n - begin < r->chunk ? n - begin : r->chunk;
        stage *s = next_stage(r);
        fkv_bevent *ready = NULL;
        size_t table_off;
        /* the carried bytes go with the last chunk */
        st = stage_chunk(r, s, count, units + begin, begin + count == n ? carry : NULL, &ready,
                         &table_off);
        if (st != FKV_OK)
            break;
        fkv_deps kd = {.n_wait = wait_list(r, ready, deps), .wait = r->waits, .done = &s->free_ev};
        st = fkv_op_scatter_hnd(r->dev, q, kd, &r->geom, s->data, 0, count, s->data, table_off,
                                kpool, vpool);
        fkv_op_event_release(r->dev, ready);
        if (st == FKV_OK)
            *last = s->free_ev;
        begin += count;
    }
    return st;
}

fkv_status fkv_recaller_run(fkv_recaller *r, fkv_queue q, uint32_t n, const fkv_recall_unit *units,
                            fkv_bbuf *kpool, fkv_bbuf *vpool, fkv_deps deps) {
    return fkv_recaller_run_with(r, q, n, units, kpool, vpool, deps, NULL);
}

fkv_status fkv_recaller_run_with(fkv_recaller *r, fkv_queue q, uint32_t n,
                                 const fkv_recall_unit *units, fkv_bbuf *kpool, fkv_bbuf *vpool,
                                 fkv_deps deps, fkv_recall_carry *carry) {
    fkv_bevent *last = NULL;
    if (deps.done)
        *deps.done = NULL;
    r->carried = NULL;
    if (carry) {
        carry->buf = NULL;
        carry->off = 0;
        if (carry->size > r->carry_cap) /* the caller writes them itself */
            carry = NULL;
    }
    fkv_status st = reserve_waits(r, (uint64_t)deps.n_wait + 1);
    if (st == FKV_OK && n > 0)
        st = r->mode == FKV_RECALL_DIRECT
                 ? run_direct(r, q, n, units, kpool, vpool, deps, carry, &last)
                 : run_staged(r, q, n, units, kpool, vpool, deps, carry, &last);
    if (st == FKV_OK && deps.done != NULL) {
        if (last == NULL) /* nothing to recall: still honour the wait list */
            st = fkv_op_marker(r->dev, q, deps);
        else
            st = fkv_op_marker(r->dev, q, (fkv_deps){.n_wait = 1, .wait = &last, .done = deps.done});
    }
    if (st != FKV_OK) {
        /* Leave nothing half-enqueued behind the caller's back: drain what was issued (the
         * failure's message is the one reported). */
        char *msg = fkv_error_save();
        fkv_op_finish(r->dev, FKV_QUEUE_TRANSFER);
        fkv_op_finish(r->dev, q);
        fkv_error_restore(msg);
    }
    return st;
}

fkv_status fkv_recaller_hold(fkv_recaller *r, fkv_queue q, fkv_bevent **out) {
    stage *s = r->carried;
    r->carried = NULL;
    *out = NULL;
    if (s == NULL)
        return FKV_OK;
    /* after what last read the stage (its kernel, on the recall's queue) and q's commands */
    fkv_bevent *old = s->free_ev, *held = NULL;
    fkv_status st = fkv_op_marker(r->dev, q,
                                  (fkv_deps){.n_wait = old ? 1 : 0, .wait = &old, .done = &held});
    if (st != FKV_OK) {
        char *msg = fkv_error_save();
        fkv_op_finish(r->dev, q);
        fkv_error_restore(msg);
        return st;
    }
    s->free_ev = held;
    *out = held;
    if (old)
        fkv_op_event_release(r->dev, old);
    return FKV_OK;
}
