/* The public lifetime of a context (create, destroy) and its getters, sync, reset and
 * introspection: the top of core/, which builds on every step below it and which no step
 * calls. The allocation itself is in resources.c; the worker thread in speculative.c. */
#include <stdlib.h>
#include <string.h>

#include "../common/dtype.h"
#include "../common/error.h"
#include "../common/hostfmt.h"
#include "resources.h"
#include "speculative.h"

void fkv_context_destroy(fkv_context *ctx) {
    if (ctx == NULL)
        return;
    fkv_worker_stop(ctx);
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        fkv_op_finish(ctx->dev, (fkv_queue)q);
    fkv_resources_free(ctx);
    pthread_mutex_destroy(&ctx->lock);
    pthread_cond_destroy(&ctx->cond);
    free(ctx);
}

fkv_status fkv_context_create(fkv_device *dev, const fkv_config *cfg, fkv_context **out) {
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_create: NULL output");
    *out = NULL;
    if (dev == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_create: NULL device");
    fkv_status st = fkv_config_validate(cfg);
    if (st != FKV_OK)
        return st;
    if (cfg->dtype != FKV_F32 && !(dev->info.caps & FKV_CAP_FP16_STORAGE))
        return fkv_error(FKV_ERR_UNSUPPORTED, "device '%s' has no 16-bit storage for dtype %s",
                         dev->info.name, fkv_dtype_name(cfg->dtype));
    fkv_context *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "context");
    pthread_mutex_init(&ctx->lock, NULL);
    pthread_cond_init(&ctx->cond, NULL);
    ctx->dev = dev;
    ctx->cfg = *cfg;
    fkv_resources_derive(ctx);
    if ((st = fkv_resources_check_device(ctx)) == FKV_OK &&
        (st = fkv_resources_alloc(ctx)) == FKV_OK && fkv_is_speculative(ctx))
        st = fkv_worker_start(ctx);
    if (st != FKV_OK) {
        fkv_context_destroy(ctx);
        return fkv_error_prefix(st, "creating the context");
    }
    *out = ctx;
    return FKV_OK;
}

fkv_status fkv_context_get_config(const fkv_context *ctx, fkv_config *cfg) {
    if (ctx == NULL || cfg == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_get_config: NULL argument");
    *cfg = ctx->cfg;
    return FKV_OK;
}

static fkv_status check_seq(const fkv_context *ctx, uint32_t seq, const char *fn) {
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: NULL context", fn);
    if (seq >= ctx->cfg.max_seqs)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: sequence %u out of range (max_seqs %u)",
                         fn, seq, ctx->cfg.max_seqs);
    return FKV_OK;
}

/* Keeps the first failure and its message across later steps that may fail too. */
static void keep_first(fkv_status st, fkv_status *first, char **msg) {
    if (*first == FKV_OK && st != FKV_OK) {
        *first = st;
        *msg = fkv_error_save();
    }
}

fkv_status fkv_context_sync(fkv_context *ctx) {
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_sync: NULL context");
    fkv_status first = FKV_OK;
    char *msg = NULL;
    for (uint32_t l = 0; l < ctx->cfg.n_layers; l++)
        keep_first(fkv_task_wait(ctx, l, NULL), &first, &msg);
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        keep_first(fkv_op_finish(ctx->dev, (fkv_queue)q), &first, &msg);
    /* background recalls whose failure no call has seen yet */
    for (uint32_t l = 0; l < ctx->cfg.n_layers; l++)
        keep_first(fkv_settle_recall(ctx, l), &first, &msg);
    if (first != FKV_OK)
        fkv_error_restore(msg);
    return first;
}

fkv_status fkv_sequence_reset(fkv_context *ctx, uint32_t seq) {
    fkv_status st = check_seq(ctx, seq, "fkv_sequence_reset");
    if (st != FKV_OK)
        return st;
    if ((st = fkv_context_sync(ctx)) != FKV_OK)
        return st;
    seq_state *s = &ctx->seqs[seq];
    s->prefilled = 0;
    s->next_layer = 0;
    for (uint32_t l = 0; l < ctx->cfg.n_layers; l++) {
        seq_layer *sl = &s->layers[l];
        sl->n_tokens = 0;
        sl->qblock = -1;
        fkv_mid_clear(ctx, sl);
        memset(sl->n_attended, 0, sizeof(uint32_t) * ctx->cfg.n_kv_heads);
        if (ctx->offload)
            fkv_hostpool_trim(&sl->hp, ctx->dev, 0);
    }
    return FKV_OK;
}

fkv_status fkv_sequence_length(const fkv_context *ctx, uint32_t seq, uint32_t *n_tokens) {
    fkv_status st = check_seq(ctx, seq, "fkv_sequence_length");
    if (st != FKV_OK)
        return st;
    if (n_tokens == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_sequence_length: NULL output");
    *n_tokens = ctx->seqs[seq].layers[ctx->cfg.n_layers - 1].n_tokens;
    return FKV_OK;
}

fkv_status fkv_context_get_stats(const fkv_context *ctx, fkv_stats *stats) {
    if (ctx == NULL || stats == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_get_stats: NULL argument");
    fkv_context *mut = (fkv_context *)ctx;
    pthread_mutex_lock(&mut->lock);
    *stats = ctx->stats;
    uint64_t host = ctx->base_host_bytes;
    if (ctx->offload)
        for (uint32_t s = 0; s < ctx->cfg.max_seqs; s++)
            for (uint32_t l = 0; l < ctx->cfg.n_layers; l++)
                host += fkv_hostpool_bytes(&ctx->seqs[s].layers[l].hp);
    pthread_mutex_unlock(&mut->lock);
    stats->host_bytes = host;
    stats->device_bytes = ctx->base_device_bytes;
    return FKV_OK;
}

fkv_status fkv_context_get_corrections(const fkv_context *ctx, uint64_t *out, size_t capacity) {
    if (ctx == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_get_corrections: NULL argument");
    size_t n = (size_t)ctx->cfg.n_layers * ctx->cfg.n_kv_heads;
    if (capacity < n)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_get_corrections: need %zu entries",
                         n);
    fkv_context *mut = (fkv_context *)ctx;
    pthread_mutex_lock(&mut->lock);
    memcpy(out, ctx->corrections, n * sizeof *out);
    pthread_mutex_unlock(&mut->lock);
    return FKV_OK;
}

fkv_status fkv_context_reset_stats(fkv_context *ctx) {
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_reset_stats: NULL context");
    pthread_mutex_lock(&ctx->lock);
    memset(&ctx->stats, 0, sizeof ctx->stats);
    memset(ctx->corrections, 0,
           sizeof(uint64_t) * (size_t)ctx->cfg.n_layers * ctx->cfg.n_kv_heads);
    pthread_mutex_unlock(&ctx->lock);
    return FKV_OK;
}

static fkv_status check_layer_head(const fkv_context *ctx, uint32_t seq, uint32_t layer,
                                   uint32_t kv_head, const char *fn) {
    fkv_status st = check_seq(ctx, seq, fn);
    if (st != FKV_OK)
        return st;
    if (layer >= ctx->cfg.n_layers || kv_head >= ctx->cfg.n_kv_heads)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: layer %u / KV head %u out of range", fn,
                         layer, kv_head);
    return FKV_OK;
}

fkv_status fkv_context_attended_pages(const fkv_context *ctx, uint32_t seq, uint32_t layer,
                                      uint32_t kv_head, int32_t *pages, size_t capacity,
                                      size_t *count) {
    fkv_status st = check_layer_head(ctx, seq, layer, kv_head, "fkv_context_attended_pages");
    if (st != FKV_OK)
        return st;
    if (count == NULL || (pages == NULL && capacity))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_attended_pages: NULL output");
    const seq_layer *sl = &ctx->seqs[seq].layers[layer];
    uint32_t n = sl->n_attended[kv_head];
    for (uint32_t i = 0; i < n && i < capacity; i++)
        pages[i] = sl->attended[(size_t)kv_head * ctx->list_cap + i];
    *count = n;
    return FKV_OK;
}

/* Reads one device slot (both pools) to host f32 rows [p][Hk][d]. */
static fkv_status read_slot(fkv_context *ctx, layer_state *ls, int32_t gslot, unsigned char *tmp,
                            float *k, float *v, uint32_t n_rows) {
    fkv_bevent *ev = NULL;
    size_t off = fkv_slot_offset(ctx, gslot);
    fkv_status st = fkv_op_read(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->kpool, off, tmp,
                                   ctx->slot_bytes);
    if (st == FKV_OK)
        st = fkv_op_read(ctx->dev, FKV_QUEUE_COMPUTE, (fkv_deps){.done = &ev}, ls->vpool, off,
                            tmp + ctx->slot_bytes, ctx->slot_bytes);
    if (st == FKV_OK)
        st = fkv_wait_release(ctx, &ev);
    for (size_t i = 0; st == FKV_OK && i < n_rows * ctx->row_elems; i++) {
        k[i] = fkv_load(tmp, ctx->cfg.dtype, i);
        v[i] = fkv_load(tmp + ctx->slot_bytes, ctx->cfg.dtype, i);
    }
    return st;
}

/* Copies one full page from the host pool (HND [h][K|V][t][c]) to f32 rows [p][Hk][d]. */
static void read_host_page(const fkv_context *ctx, const seq_layer *sl, uint32_t page, float *k,
                           float *v) {
    uint32_t p = ctx->cfg.page_size, d = ctx->cfg.head_dim, hk = ctx->cfg.n_kv_heads;
    const unsigned char *pg = fkv_hostpool_page(&sl->hp, page, NULL, NULL);
    fkv_host_format f = ctx->geom.host_format;
    for (uint32_t h = 0; h < hk; h++) {
        const unsigned char *unit = pg + (size_t)h * ctx->unit_bytes;
        for (uint32_t t = 0; t < p; t++)
            for (uint32_t c = 0; c < d; c++) {
                size_t src = (size_t)t * d + c;
                size_t dst = ((size_t)t * hk + h) * d + c;
                if (f != FKV_HOST_SAME) { /* dequantized in f32, before a slot's rounding */
                    k[dst] = fkv_hostfmt_load(f, p, d, unit, 0, t, c);
                    v[dst] = fkv_hostfmt_load(f, p, d, unit, 1, t, c);
                    continue;
                }
                k[dst] = fkv_load(unit, ctx->cfg.dtype, src);
                v[dst] = fkv_load(unit, ctx->cfg.dtype, src + (size_t)p * d);
            }
    }
}

fkv_status fkv_context_read_kv(fkv_context *ctx, uint32_t seq, uint32_t layer, float *k, float *v,
                               size_t capacity_tokens, uint32_t *n_tokens) {
    fkv_status st = check_layer_head(ctx, seq, layer, 0, "fkv_context_read_kv");
    if (st != FKV_OK)
        return st;
    if (n_tokens == NULL || ((k == NULL || v == NULL) && capacity_tokens))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_read_kv: NULL output");
    if ((st = fkv_context_sync(ctx)) != FKV_OK)
        return st;
    seq_layer *sl = &ctx->seqs[seq].layers[layer];
    layer_state *ls = &ctx->layers[layer];
    uint32_t n = sl->n_tokens, p = ctx->cfg.page_size;
    *n_tokens = n;
    if (capacity_tokens < n)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_read_kv: %u tokens, capacity %zu",
                         n, capacity_tokens);
    unsigned char *tmp = malloc(2 * ctx->slot_bytes);
    if (tmp == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "fkv_context_read_kv");
    uint32_t n_pages = (n + p - 1) / p;
    for (uint32_t j = 0; j < n_pages && st == FKV_OK; j++) {
        uint32_t rows = n - j * p < p ? n - j * p : p;
        float *kd = k + (size_t)j * p * ctx->row_elems, *vd = v + (size_t)j * p * ctx->row_elems;
        if (ctx->offload && (j + 1) * p <= n) /* a full page: from the host pool */
            read_host_page(ctx, sl, j, kd, vd);
        else
            st = read_slot(ctx, ls, fkv_gslot(ctx, seq, fkv_home_slot(ctx, j)), tmp, kd, vd, rows);
    }
    free(tmp);
    return st;
}
