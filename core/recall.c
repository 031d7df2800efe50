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
    const fkv_backend_ops *ops;
    fkv_bdev *dev;
    fkv_kv_geom g;
    fkv_recall_mode mode;
    uint32_t chunk;
    size_t unit_bytes;
    fkv_pool *pool;
    stage st[2];
    unsigned next;
};

static size_t index_bytes(uint32_t chunk) { return (size_t)chunk * 2 * sizeof(int32_t); }

void fkv_recaller_destroy(fkv_recaller *r) {
    if (r == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        stage *s = &r->st[i];
        if (s->free_ev) {
            r->ops->event_wait(r->dev, 1, &s->free_ev);
            r->ops->event_release(r->dev, s->free_ev);
        }
        if (s->host)
            r->ops->host_free(r->dev, s->host);
        if (s->data)
            r->ops->buffer_free(r->dev, s->data);
        if (s->index)
            r->ops->buffer_free(r->dev, s->index);
        free(s->offsets);
    }
    free(r);
}

fkv_status fkv_recaller_create(const fkv_backend_ops *ops, fkv_bdev *dev, const fkv_kv_geom *g,
                               fkv_recall_mode mode, uint32_t chunk_units, fkv_recaller **out) {
    *out = NULL;
    fkv_recaller *r = calloc(1, sizeof *r);
    if (r == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "recall engine");
    r->ops = ops;
    r->dev = dev;
    r->g = *g;
    r->mode = mode;
    r->chunk = chunk_units ? chunk_units : DEFAULT_CHUNK_UNITS;
    r->unit_bytes = 2 * (size_t)g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
    fkv_status st = FKV_OK;
    for (int i = 0; i < 2 && st == FKV_OK; i++) {
        stage *s = &r->st[i];
        /* Direct recall reads the host pool itself: no data staging is needed. */
        size_t data_bytes = mode == FKV_RECALL_DIRECT ? 0 : (size_t)r->chunk * r->unit_bytes;
        st = ops->host_alloc(dev, data_bytes + index_bytes(r->chunk), &s->host, &s->host_ptr);
        if (st == FKV_OK && data_bytes)
            st = ops->buffer_alloc(dev, data_bytes, &s->data);
        if (st == FKV_OK)
            st = ops->buffer_alloc(dev, index_bytes(r->chunk), &s->index);
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
    fkv_recaller_bytes(&r->g, r->mode, r->chunk, host_bytes, device_bytes);
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
    const fkv_backend_ops *ops = r->ops;
    int32_t *index = (int32_t *)((unsigned char *)s->host_ptr +
                                 (r->mode == FKV_RECALL_DIRECT ? 0 : (size_t)r->chunk * r->unit_bytes));
    for (uint32_t i = 0; i < n; i++) {
        index[2 * i] = units[i].gslot;
        index[2 * i + 1] = units[i].kv_head;
    }
    fkv_status st;
    if (r->mode == FKV_RECALL_STAGED) {
        gather_job job = {units, s->host_ptr, r->unit_bytes};
        fkv_pool_run(r->pool, n, gather_range, &job);
        st = ops->write(r->dev, FKV_QUEUE_TRANSFER, (fkv_deps){0, NULL, NULL}, s->data, 0,
                        s->host_ptr, n * r->unit_bytes);
    } else if (r->mode == FKV_RECALL_PERPAGE) {
        /* One region per unit: a backend with write_regions copies them in one command,
         * the fallback issues one write each. */
        fkv_copy_region *regions = malloc((n ? n : 1) * sizeof *regions);
        if (regions == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "recall regions");
        for (uint32_t i = 0; i < n; i++)
            regions[i] = (fkv_copy_region){units[i].src, i * r->unit_bytes, r->unit_bytes};
        st = fkv_op_write_regions(ops, r->dev, FKV_QUEUE_TRANSFER, (fkv_deps){0, NULL, NULL},
                                  s->data, n, regions);
        free(regions);
    } else {
        st = FKV_OK;
    }
    if (st != FKV_OK)
        return st;
    return ops->write(r->dev, FKV_QUEUE_TRANSFER, (fkv_deps){0, NULL, ready}, s->index, 0, index,
                      index_bytes(n));
}

fkv_status fkv_recaller_run(fkv_recaller *r, fkv_queue q, uint32_t n, const fkv_recall_unit *units,
                            fkv_bbuf *kpool, fkv_bbuf *vpool, fkv_deps deps) {
    const fkv_backend_ops *ops = r->ops;
    fkv_bevent *last = NULL;
    fkv_status st = FKV_OK;
    if (deps.done)
        *deps.done = NULL;
    for (uint32_t begin = 0; begin < n && st == FKV_OK;) {
        uint32_t count = n - begin < r->chunk ? n - begin : r->chunk;
        /* Direct recall reads one host allocation per command. */
        if (r->mode == FKV_RECALL_DIRECT)
            for (uint32_t i = 1; i < count; i++)
                if (units[begin + i].host != units[begin].host) {
                    count = i;
                    break;
                }
        stage *s = &r->st[r->next];
        r->next ^= 1;
        if (s->free_ev) {
            /* The scatter that last read this stage. Its completion is all that matters
             * here: had it failed, the recall it belonged to reported that, and the stage
             * is free either way (a stale failure must not fail this recall). */
            ops->event_wait(r->dev, 1, &s->free_ev);
            ops->event_release(r->dev, s->free_ev);
            s->free_ev = NULL;
        }
        fkv_bevent *ready = NULL;
        st = stage_chunk(r, s, count, units + begin, &ready);
        if (st != FKV_OK)
            break;
        fkv_bevent *wait[17];
        uint32_t n_wait = 0;
        wait[n_wait++] = ready;
        for (uint32_t i = 0; i < deps.n_wait && n_wait < 17; i++)
            if (deps.wait[i])
                wait[n_wait++] = deps.wait[i];
        fkv_deps kd = {n_wait, wait, &s->free_ev};
        if (r->mode == FKV_RECALL_DIRECT) {
            for (uint32_t i = 0; i < count; i++)
                s->offsets[i] = units[begin + i].host_offset;
            st = ops->recall_direct(r->dev, q, kd, &r->g, units[begin].host, count, s->offsets,
                                    s->index, 0, kpool, vpool);
        } else {
            st = ops->scatter_hnd(r->dev, q, kd, &r->g, s->data, 0, count, s->index, 0, kpool,
                                  vpool);
        }
        ops->event_release(r->dev, ready);
        if (st == FKV_OK) {
            last = s->free_ev;
        }
        begin += count;
    }
    if (st != FKV_OK) {
        /* Leave nothing half-enqueued behind the caller's back: drain what was issued. */
        ops->finish(r->dev, FKV_QUEUE_TRANSFER);
        ops->finish(r->dev, q);
        return st;
    }
    if (deps.done == NULL)
        return FKV_OK;
    if (last == NULL) /* nothing to recall: still honour the wait list */
        return ops->marker(r->dev, q, (fkv_deps){deps.n_wait, deps.wait, deps.done});
    return ops->marker(r->dev, q, (fkv_deps){1, &last, deps.done});
}
