/* The recall engine: (page, KV head) units from the host pool into device slots, double
 * buffered. Separate from retrieval because it knows only units, stages and events, not
 * which pages were chosen or why; every policy's recall goes through it. */
#include "recall.h"

#include <stdlib.h>
#include <string.h>

#include "../common/error.h"

#define DEFAULT_CHUNK_UNITS 256

typedef struct stage {
    fkv_bhost *host;       /* pinned staging: gathered units, then the unit index */
    void *host_ptr;
    fkv_bbuf *data;        /* device copy of the gathered units */
    fkv_bbuf *index;       /* (gslot, kv_head) pairs */
    uint64_t *offsets;     /* host offsets for recall_direct */
    fkv_bevent *free_ev;   /* completes when this stage may be refilled */
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
    /* a scatter's wait list: its chunk's ready event and the caller's waits (grown to the
     * longest list seen, so steady state allocates nothing) */
    fkv_bevent **waits;
    uint32_t waits_cap;
};

static size_t index_bytes(uint32_t chunk) { return (size_t)chunk * 2 * sizeof(int32_t); }

void fkv_recaller_destroy(fkv_recaller *r) {
    if (r == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        stage *s = &r->stages[i];
        if (s->free_ev) {
            fkv_op_event_wait(r->dev, 1, &s->free_ev);
            fkv_op_event_release(r->dev, s->free_ev);
        }
        if (s->host)
            fkv_op_host_free(r->dev, s->host);
        if (s->data)
            fkv_op_buffer_free(r->dev, s->data);
        if (s->index)
            fkv_op_buffer_free(r->dev, s->index);
        free(s->offsets);
    }
    free(r->waits);
    free(r);
}

fkv_status fkv_recaller_create(fkv_device *dev, const fkv_kv_geom *g,
                               fkv_recall_mode mode, uint32_t chunk_units, fkv_recaller **out) {
    *out = NULL;
    fkv_recaller *r = calloc(1, sizeof *r);
    if (r == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "recall engine");
    r->dev = dev;
    r->geom = *g;
    r->mode = mode;
    r->chunk = chunk_units ? chunk_units : DEFAULT_CHUNK_UNITS;
    r->unit_bytes = 2 * (size_t)g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
    fkv_status st = FKV_OK;
    for (int i = 0; i < 2 && st == FKV_OK; i++) {
        stage *s = &r->stages[i];
        /* Direct recall reads the host pool itself: no data staging is needed. */
        size_t data_bytes = mode == FKV_RECALL_DIRECT ? 0 : (size_t)r->chunk * r->unit_bytes;
        st = fkv_op_host_alloc(dev, data_bytes + index_bytes(r->chunk), &s->host, &s->host_ptr);
        if (st == FKV_OK && data_bytes)
            st = fkv_op_buffer_alloc(dev, data_bytes, &s->data);
        if (st == FKV_OK)
            st = fkv_op_buffer_alloc(dev, index_bytes(r->chunk), &s->index);
        if (st == FKV_OK && mode == FKV_RECALL_DIRECT) {
            s->offsets = malloc((size_t)r->chunk * sizeof(uint64_t));
            if (s->offsets == NULL)
                st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "recall offsets");
        }
    }
    if (st != FKV_OK) {
        fkv_recaller_destroy(r);
        return fkv_error_prefix(st, "creating the recall staging buffers");
    }
    *out = r;
    return FKV_OK;
}

void fkv_recaller_set_pool(fkv_recaller *r, fkv_pool *pool) { r->pool = pool; }

void fkv_recaller_bytes(const fkv_kv_geom *g, fkv_recall_mode mode, uint32_t chunk_units,
                        uint64_t *host_bytes, uint64_t *device_bytes) {
    uint64_t chunk = chunk_units ? chunk_units : DEFAULT_CHUNK_UNITS;
    uint64_t unit = 2 * (uint64_t)g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
    uint64_t data = mode == FKV_RECALL_DIRECT ? 0 : chunk * unit;
    uint64_t index = chunk * 2 * sizeof(int32_t);
    *host_bytes = 2 * (data + index);
    *device_bytes = 2 * (data + index);
}

void fkv_recaller_memory(const fkv_recaller *r, uint64_t *host_bytes, uint64_t *device_bytes) {
    fkv_recaller_bytes(&r->geom, r->mode, r->chunk, host_bytes, device_bytes);
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

/* Enqueues the copies that bring one chunk's unit data to the device; returns the event of
 * the last one in *ready. */
static fkv_status stage_chunk(fkv_recaller *r, stage *s, uint32_t n, const fkv_recall_unit *units,
                              fkv_bevent **ready) {
    size_t data_bytes = r->mode == FKV_RECALL_DIRECT ? 0 : (size_t)r->chunk * r->unit_bytes;
    int32_t *index = (int32_t *)((unsigned char *)s->host_ptr + data_bytes);
    for (uint32_t i = 0; i < n; i++) {
        index[2 * i] = units[i].gslot;
        index[2 * i + 1] = units[i].kv_head;
    }
    fkv_status st;
    if (r->mode == FKV_RECALL_STAGED) {
        gather_job job = {.units = units, .dst = s->host_ptr, .unit_bytes = r->unit_bytes};
        fkv_pool_run(r->pool, n, gather_range, &job);
        st = fkv_op_write(r->dev, FKV_QUEUE_TRANSFER, (fkv_deps){.n_wait = 0}, s->data, 0,
                        s->host_ptr, n * r->unit_bytes);
    } else if (r->mode == FKV_RECALL_PERPAGE) {
        /* One region per unit: a backend with write_regions copies them in one command,
         * the fallback issues one write each. */
        fkv_copy_region *regions = malloc((n ? n : 1) * sizeof *regions);
        if (regions == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "recall regions");
        for (uint32_t i = 0; i < n; i++)
            regions[i] = (fkv_copy_region){
                .src = units[i].src, .dst_offset = i * r->unit_bytes, .size = r->unit_bytes};
        st = fkv_op_write_regions(r->dev, FKV_QUEUE_TRANSFER, (fkv_deps){.n_wait = 0},
                                  s->data, n, regions);
        free(regions);
    } else {
        st = FKV_OK;
    }
    if (st != FKV_OK)
        return st;
    return fkv_op_write(r->dev, FKV_QUEUE_TRANSFER, (fkv_deps){.done = ready}, s->index, 0, index,
                      index_bytes(n));
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

/* Units from `begin` that one command recalls: at most a chunk, and for direct recall only
 * those of one host allocation (a command reads one). */
static uint32_t chunk_count(const fkv_recaller *r, uint32_t n, uint32_t begin,
                            const fkv_recall_unit *units) {
    uint32_t count = n - begin < r->chunk ? n - begin : r->chunk;
    if (r->mode == FKV_RECALL_DIRECT)
        for (uint32_t i = 1; i < count; i++)
            if (units[begin + i].host != units[begin].host)
                return i;
    return count;
}

/* The next stage, once the scatter that last read it completed. Its completion is all that
 * matters here: had it failed, the recall it belonged to reported that, and the stage is free
 * either way (a stale failure must not fail this recall). */
static stage *next_stage(fkv_recaller *r) {
    stage *s = &r->stages[r->next];
    r->next ^= 1;
    if (s->free_ev) {
        fkv_op_event_wait(r->dev, 1, &s->free_ev);
        fkv_op_event_release(r->dev, s->free_ev);
        s->free_ev = NULL;
    }
    return s;
}

/* The kernel that moves one staged chunk into the slots, after the chunk's copies (ready)
 * and the caller's waits; s->free_ev is its event. */
static fkv_status scatter_chunk(fkv_recaller *r, stage *s, fkv_queue q, uint32_t count,
                                const fkv_recall_unit *units, fkv_bevent *ready, fkv_bbuf *kpool,
                                fkv_bbuf *vpool, fkv_deps deps) {
    uint32_t n_wait = 0;
    r->waits[n_wait++] = ready;
    for (uint32_t i = 0; i < deps.n_wait; i++)
        if (deps.wait[i])
            r->waits[n_wait++] = deps.wait[i];
    fkv_deps kd = {.n_wait = n_wait, .wait = r->waits, .done = &s->free_ev};
    if (r->mode != FKV_RECALL_DIRECT)
        return fkv_op_scatter_hnd(r->dev, q, kd, &r->geom, s->data, 0, count, s->index, 0, kpool,
                                   vpool);
    for (uint32_t i = 0; i < count; i++)
        s->offsets[i] = units[i].host_offset;
    return fkv_op_recall_direct(r->dev, q, kd, &r->geom, units[0].host, count, s->offsets,
                                 s->index, 0, kpool, vpool);
}

fkv_status fkv_recaller_run(fkv_recaller *r, fkv_queue q, uint32_t n, const fkv_recall_unit *units,
                            fkv_bbuf *kpool, fkv_bbuf *vpool, fkv_deps deps) {
    fkv_bevent *last = NULL;
    if (deps.done)
        *deps.done = NULL;
    fkv_status st = reserve_waits(r, (uint64_t)deps.n_wait + 1);
    if (st != FKV_OK)
        return st;
    for (uint32_t begin = 0; begin < n && st == FKV_OK;) {
        uint32_t count = chunk_count(r, n, begin, units);
        stage *s = next_stage(r);
        fkv_bevent *ready = NULL;
        st = stage_chunk(r, s, count, units + begin, &ready);
        if (st != FKV_OK)
            break;
        st = scatter_chunk(r, s, q, count, units + begin, ready, kpool, vpool, deps);
        fkv_op_event_release(r->dev, ready);
        if (st == FKV_OK)
            last = s->free_ev;
        begin += count;
    }
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
