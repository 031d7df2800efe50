/* Context lifetime, per-layer resources, statistics and introspection. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/dtype.h"
#include "../common/error.h"
#include "context.h"

#define HOST_CHUNK_PAGES 64

double fkv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void fkv_release_event(fkv_context *ctx, fkv_bevent **ev) {
    if (*ev) {
        ctx->ops->event_release(ctx->bd, *ev);
        *ev = NULL;
    }
}

static fkv_status dev_alloc(fkv_context *ctx, size_t size, fkv_bbuf **out) {
    if (size == 0)
        size = 16;
    if (ctx->dev->info.max_buffer_bytes && size > ctx->dev->info.max_buffer_bytes)
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY,
                         "a %zu-byte buffer exceeds the device's %llu-byte limit (lower "
                         "max_seqs, max_context or budget_tokens)",
                         size, (unsigned long long)ctx->dev->info.max_buffer_bytes);
    fkv_status st = ctx->ops->buffer_alloc(ctx->bd, size, out);
    if (st == FKV_OK)
        ctx->base_device_bytes += size;
    return st;
}

static void dev_free(fkv_context *ctx, fkv_bbuf **b) {
    if (*b) {
        ctx->ops->buffer_free(ctx->bd, *b);
        *b = NULL;
    }
}

static void planner_free(planner *p) {
    free(p->reduced);
    free(p->topk);
    free(p->top_score);
    free(p->fill_slot);
    free(p->fill_page);
    free(p->units);
    free(p->mid_saved);
    free(p->score_saved);
}

static fkv_status planner_init(fkv_context *ctx, planner *p) {
    size_t units = (size_t)ctx->cfg.max_seqs * ctx->cfg.n_kv_heads * (ctx->n_mid ? ctx->n_mid : 1);
    p->reduced = malloc(sizeof(float) * ctx->max_pages);
    p->topk = malloc(sizeof(uint32_t) * ctx->max_pages);
    p->top_score = malloc(sizeof(float) * ctx->max_pages);
    p->fill_slot = malloc(sizeof(uint32_t) * (ctx->n_mid + 1));
    p->fill_page = malloc(sizeof(uint32_t) * (ctx->n_mid + 1));
    p->units = malloc(sizeof(fkv_recall_unit) * units);
    p->units_cap = (uint32_t)units;
    p->mid_saved = malloc(sizeof(int32_t) * units);
    p->score_saved = malloc(sizeof(float) * units);
    if (!p->reduced || !p->topk || !p->top_score || !p->fill_slot || !p->fill_page || !p->units ||
        !p->mid_saved || !p->score_saved)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "selection scratch");
    return FKV_OK;
}

static void call_free(call_scratch *c) {
    free(c->full);
    free(c->had_chunks);
    free(c->attended);
    free(c->n_attended);
    free(c->corrections);
}

static fkv_status call_init(fkv_context *ctx, call_scratch *c) {
    size_t S = ctx->cfg.max_seqs, hk = ctx->cfg.n_kv_heads;
    c->full = malloc(sizeof(int32_t) * S);
    c->had_chunks = malloc(sizeof(uint32_t) * S);
    c->attended = malloc(sizeof(int32_t) * S * hk * ctx->list_cap);
    c->n_attended = malloc(sizeof(uint32_t) * S * hk);
    c->corrections = malloc(sizeof(uint64_t) * hk);
    if (!c->full || !c->had_chunks || !c->attended || !c->n_attended || !c->corrections)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "decode call scratch");
    return FKV_OK;
}

/* The device buffers of one layer, and the slices of its pinned host staging: layer_init
 * allocates exactly these, and the context's memory estimate adds them up first. */
enum { N_LAYER_BUFFERS = 19, N_LAYER_HOST = 13 };

typedef struct layer_part {
    void *where; /* fkv_bbuf ** (device buffer) or a pointer to the slice's pointer (host) */
    size_t size;
} layer_part;

static void layer_parts(const fkv_context *ctx, layer_state *L, layer_part dev[N_LAYER_BUFFERS],
                        layer_part host[N_LAYER_HOST]) {
    const fkv_config *c = &ctx->cfg;
    size_t S = c->max_seqs, hq = c->n_q_heads, hk = c->n_kv_heads, d = c->head_dim;
    size_t qbytes = S * hq * d * 4, kbytes = S * hk * d * 4;
    size_t pool = S * ctx->n_slots * ctx->slot_bytes;
    size_t list = S * hk * ctx->list_cap * 2 * 4;
    size_t scores = S * hq * ctx->max_pages * 4;
    size_t idx_pairs = S > FKV_SCRATCH_PAGES ? S : FKV_SCRATCH_PAGES; /* decode or prefill */
    const layer_part d_parts[N_LAYER_BUFFERS] = {
        {&L->kpool, pool},
        {&L->vpool, pool},
        {&L->summ, S * ctx->max_pages * hk * 2 * d * 4},
        {&L->qprev[0], qbytes},
        {&L->qprev[1], qbytes},
        {&L->qin, qbytes},
        {&L->kin, kbytes},
        {&L->vin, kbytes},
        {&L->out, qbytes},
        {&L->rows, S * 4},
        {&L->summ_idx, idx_pairs * 2 * 4},
        {&L->pack_idx, S * 4},
        {&L->desc, S * 3 * 4},
        {&L->heads, S * hk * 2 * 4},
        {&L->entries, list},
        {&L->scores, scores},
        {&L->sims, S * hk * 4},
        {&L->flags, S * hk * 4},
        {&L->pack, ctx->offload ? S * ctx->page_bytes : 16},
    };
    const layer_part h_parts[N_LAYER_HOST] = {
        {&L->h.q, qbytes},
        {&L->h.k, kbytes},
        {&L->h.v, kbytes},
        {&L->h.out, qbytes},
        {&L->h.rows, S * 4},
        {&L->h.summ_idx, idx_pairs * 2 * 4},
        {&L->h.pack_idx, S * 4},
        {&L->h.desc, S * 3 * 4},
        {&L->h.heads, S * hk * 2 * 4},
        {&L->h.entries, list},
        {&L->h.scores, scores},
        {&L->h.sims, S * hk * 4},
        {&L->h.flags, S * hk * 4},
    };
    memcpy(dev, d_parts, sizeof d_parts);
    memcpy(host, h_parts, sizeof h_parts);
}

static size_t host_slice(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

static fkv_status layer_init(fkv_context *ctx, layer_state *L) {
    layer_part dev[N_LAYER_BUFFERS], host[N_LAYER_HOST];
    layer_parts(ctx, L, dev, host);
    fkv_status st = FKV_OK;
    for (int i = 0; i < N_LAYER_BUFFERS && st == FKV_OK; i++)
        st = dev_alloc(ctx, dev[i].size, dev[i].where);
    if (st != FKV_OK)
        return st;
    size_t total = 0;
    for (int i = 0; i < N_LAYER_HOST; i++)
        total += host_slice(host[i].size);
    void *base;
    st = ctx->ops->host_alloc(ctx->bd, total, &L->h.mem, &base);
    if (st != FKV_OK)
        return st;
    ctx->base_host_bytes += total;
    unsigned char *p = base;
    for (int i = 0; i < N_LAYER_HOST; i++) {
        *(void **)host[i].where = p;
        p += host_slice(host[i].size);
    }
    L->task_seqs = malloc(sizeof(uint32_t) * ctx->cfg.max_seqs);
    if (L->task_seqs == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "task list");
    return FKV_OK;
}

static void layer_free(fkv_context *ctx, layer_state *L) {
    layer_part dev[N_LAYER_BUFFERS], host[N_LAYER_HOST];
    layer_parts(ctx, L, dev, host);
    for (int i = 0; i < N_LAYER_BUFFERS; i++)
        dev_free(ctx, dev[i].where);
    if (L->h.mem)
        ctx->ops->host_free(ctx->bd, L->h.mem);
    fkv_release_event(ctx, &L->ev_attn);
    fkv_release_event(ctx, &L->ev_recall);
    fkv_release_event(ctx, &L->ev_offload);
    free(L->task_seqs);
}

/* The prefill scratch: two slot buffers of pages, two f32 row buffers and the row index. */
typedef struct scratch_sizes {
    size_t slots, f32, rows;
} scratch_sizes;

static scratch_sizes scratch_of(const fkv_context *ctx) {
    size_t rows = (size_t)FKV_SCRATCH_PAGES * ctx->cfg.page_size;
    return (scratch_sizes){.slots = FKV_SCRATCH_PAGES * ctx->slot_bytes,
                           .f32 = rows * ctx->row_elems * 4,
                           .rows = rows * 4};
}

/* a*b, or UINT64_MAX when it overflows (sums below saturate the same way). */
static uint64_t mul_sat(uint64_t a, uint64_t b) {
    return b != 0 && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}
static uint64_t add_sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* What the context will ask of the device, from the same tables layer_init and the scratch
 * allocate: its memory, summed before any allocation so that a config far beyond the device
 * fails at once instead of after gigabytes of allocations; then its largest kernel calls and
 * buffers and its allocation count (backend.h, fkv_geom_query), so a limit the device cannot
 * meet fails here and not at the first prefill or decode. */
static fkv_status check_device(const fkv_context *ctx) {
    const fkv_config *c = &ctx->cfg;
    layer_state dummy; /* only the sizes are used */
    memset(&dummy, 0, sizeof dummy);
    layer_part dev[N_LAYER_BUFFERS], host[N_LAYER_HOST];
    layer_parts(ctx, &dummy, dev, host);
    uint64_t layer = 0, largest = 0;
    for (int i = 0; i < N_LAYER_BUFFERS; i++) {
        uint64_t size = dev[i].size ? dev[i].size : 16; /* dev_alloc's minimum */
        layer = add_sat(layer, size);
        largest = size > largest ? size : largest;
    }
    uint64_t total = mul_sat(layer, c->n_layers);
    scratch_sizes scr = scratch_of(ctx);
    total = add_sat(total, add_sat(2 * (uint64_t)scr.slots + 2 * (uint64_t)scr.f32, scr.rows));
    largest = scr.slots > largest ? scr.slots : largest;
    largest = scr.f32 > largest ? scr.f32 : largest;
    if (ctx->offload) {
        uint64_t hb, db;
        fkv_recaller_bytes(&ctx->g, fkv_op_recall_mode(ctx->ops, ctx->bd), c->recall_chunk_pages,
                           &hb, &db);
        total = add_sat(total, 2 * db);
    }
    uint64_t have = ctx->dev->info.memory_bytes;
    if ((have != 0 && total > have) || total > SIZE_MAX)
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY,
                         "the context needs %llu bytes of device memory (%u layers of %llu), "
                         "device '%s' has %llu: lower max_seqs, max_context or budget_tokens",
                         (unsigned long long)total, c->n_layers, (unsigned long long)layer,
                         ctx->dev->info.name, (unsigned long long)have);

    uint64_t S = c->max_seqs, hk = c->n_kv_heads;
    uint64_t scratch_rows = (uint64_t)FKV_SCRATCH_PAGES * c->page_size;
    uint64_t slots = S * ctx->n_slots > FKV_SCRATCH_PAGES ? S * ctx->n_slots : FKV_SCRATCH_PAGES;
    /* per layer its buffers and one host staging; the prefill scratch: 5 buffers and 1 host;
     * with offload, two recallers of two stages (host, data, index) and the host pool chunks */
    uint64_t allocations = (uint64_t)c->n_layers * (N_LAYER_BUFFERS + 1) + 6;
    if (ctx->offload)
        allocations += 2 * 2 * 3 + mul_sat(S * c->n_layers, (ctx->max_pages + HOST_CHUNK_PAGES - 1) /
                                                                HOST_CHUNK_PAGES);
    fkv_geom_query q = {
        .max_seqs = c->max_seqs,
        .max_rows = (uint32_t)(scratch_rows > S ? scratch_rows : S),
        .pool_slots = slots,
        .summaries = S * ctx->max_pages,
        .scores = S * c->n_q_heads * ctx->max_pages,
        .list_entries = S * hk * ctx->list_cap,
        .largest_buffer = largest,
        .allocations = allocations,
    };
    return fkv_op_check_geometry(ctx->ops, ctx->bd, &ctx->dev->info, &ctx->g, &q);
}

static fkv_status seq_init(fkv_context *ctx, seq_state *s) {
    uint32_t L = ctx->cfg.n_layers, hk = ctx->cfg.n_kv_heads;
    s->layers = calloc(L, sizeof *s->layers);
    if (s->layers == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "sequence state");
    for (uint32_t l = 0; l < L; l++) {
        seq_layer *sl = &s->layers[l];
        if (ctx->offload) {
            fkv_status st = fkv_hostpool_init(&sl->hp, ctx->max_pages, HOST_CHUNK_PAGES,
                                              ctx->page_bytes);
            if (st != FKV_OK)
                return st;
        }
        sl->mid_page = malloc(sizeof(int32_t) * hk * (ctx->n_mid ? ctx->n_mid : 1));
        sl->mid_score = malloc(sizeof(float) * hk * (ctx->n_mid ? ctx->n_mid : 1));
        sl->attended = malloc(sizeof(int32_t) * hk * ctx->list_cap);
        sl->n_attended = calloc(hk, sizeof(uint32_t));
        if (!sl->mid_page || !sl->mid_score || !sl->attended || !sl->n_attended)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "sequence state");
        for (uint32_t i = 0; i < hk * ctx->n_mid; i++)
            sl->mid_page[i] = -1;
    }
    return FKV_OK;
}

static void seq_free(fkv_context *ctx, seq_state *s) {
    if (s->layers == NULL)
        return;
    for (uint32_t l = 0; l < ctx->cfg.n_layers; l++) {
        seq_layer *sl = &s->layers[l];
        if (ctx->offload)
            fkv_hostpool_free(&sl->hp, ctx->ops, ctx->bd);
        free(sl->mid_page);
        free(sl->mid_score);
        free(sl->attended);
        free(sl->n_attended);
    }
    free(s->layers);
}


void fkv_context_destroy(fkv_context *ctx) {
    if (ctx == NULL)
        return;
    if (ctx->worker_started) {
        pthread_mutex_lock(&ctx->lock);
        ctx->stop = 1;
        pthread_cond_broadcast(&ctx->cond);
        pthread_mutex_unlock(&ctx->lock);
        pthread_join(ctx->worker, NULL);
    }
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        ctx->ops->finish(ctx->bd, (fkv_queue)q);
    if (ctx->layers)
        for (uint32_t l = 0; l < ctx->cfg.n_layers; l++)
            layer_free(ctx, &ctx->layers[l]);
    if (ctx->seqs)
        for (uint32_t s = 0; s < ctx->cfg.max_seqs; s++)
            seq_free(ctx, &ctx->seqs[s]);
    fkv_bbuf **scr[] = {&ctx->scr_k, &ctx->scr_v, &ctx->scr_kin, &ctx->scr_vin, &ctx->scr_rows};
    for (size_t i = 0; i < sizeof scr / sizeof *scr; i++)
        dev_free(ctx, scr[i]);
    if (ctx->scr_host)
        ctx->ops->host_free(ctx->bd, ctx->scr_host);
    fkv_recaller_destroy(ctx->rec_main);
    fkv_recaller_destroy(ctx->rec_worker);
    fkv_pool_destroy(ctx->pool);
    planner_free(&ctx->plan_main);
    planner_free(&ctx->plan_worker);
    call_free(&ctx->call);
    free(ctx->layers);
    free(ctx->seqs);
    free(ctx->fifo);
    free(ctx->corrections);
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
    ctx->ops = dev->ops;
    ctx->bd = dev->bdev;
    ctx->cfg = *cfg;
    const fkv_config *c = &ctx->cfg;
    ctx->group = c->n_q_heads / c->n_kv_heads;
    ctx->g = (fkv_kv_geom){c->n_kv_heads, ctx->group, c->head_dim, c->page_size, c->dtype};
    ctx->offload = c->policy >= FKV_POLICY_SYNC;
    ctx->es = fkv_dtype_size(c->dtype);
    ctx->row_elems = (size_t)c->n_kv_heads * c->head_dim;
    ctx->slot_bytes = (size_t)c->page_size * ctx->row_elems * ctx->es;
    ctx->page_bytes = 2 * ctx->slot_bytes;
    ctx->unit_bytes = 2 * (size_t)c->page_size * c->head_dim * ctx->es;
    ctx->max_pages = (c->max_context + c->page_size - 1) / c->page_size;
    ctx->sink_pages = c->sink_tokens / c->page_size;
    ctx->window_pages = c->window_tokens / c->page_size;
    ctx->n_mid = c->budget_tokens / c->page_size - ctx->sink_pages - ctx->window_pages;
    /* dense/quest keep every page resident at its own slot; offload keeps the budget */
    ctx->n_slots = ctx->offload ? c->budget_tokens / c->page_size : ctx->max_pages;
    ctx->list_cap = ctx->n_slots;
    if ((st = check_device(ctx)) != FKV_OK)
        goto fail;
    ctx->seqs = calloc(c->max_seqs, sizeof *ctx->seqs);
    ctx->layers = calloc(c->n_layers, sizeof *ctx->layers);
    ctx->fifo = calloc(c->n_layers, sizeof *ctx->fifo);
    ctx->corrections = calloc((size_t)c->n_layers * c->n_kv_heads, sizeof *ctx->corrections);
    if (!ctx->seqs || !ctx->layers || !ctx->fifo || !ctx->corrections) {
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "context tables");
        goto fail;
    }
    for (uint32_t s = 0; s < c->max_seqs && st == FKV_OK; s++)
        st = seq_init(ctx, &ctx->seqs[s]);
    for (uint32_t l = 0; l < c->n_layers && st == FKV_OK; l++)
        st = layer_init(ctx, &ctx->layers[l]);
    if (st != FKV_OK)
        goto fail;
    /* prefill scratch */
    ctx->scratch_pages = FKV_SCRATCH_PAGES;
    scratch_sizes scr = scratch_of(ctx);
    if ((st = dev_alloc(ctx, scr.slots, &ctx->scr_k)) != FKV_OK ||
        (st = dev_alloc(ctx, scr.slots, &ctx->scr_v)) != FKV_OK ||
        (st = dev_alloc(ctx, scr.f32, &ctx->scr_kin)) != FKV_OK ||
        (st = dev_alloc(ctx, scr.f32, &ctx->scr_vin)) != FKV_OK ||
        (st = dev_alloc(ctx, scr.rows, &ctx->scr_rows)) != FKV_OK)
        goto fail;
    void *hp;
    st = ctx->ops->host_alloc(ctx->bd, 2 * scr.f32 + scr.rows, &ctx->scr_host, &hp);
    if (st != FKV_OK)
        goto fail;
    ctx->base_host_bytes += 2 * scr.f32 + scr.rows;
    ctx->scr_host_k = hp;
    ctx->scr_host_v = (float *)((unsigned char *)hp + scr.f32);
    ctx->scr_host_rows = (int32_t *)((unsigned char *)hp + 2 * scr.f32);
    if ((st = planner_init(ctx, &ctx->plan_main)) != FKV_OK ||
        (st = planner_init(ctx, &ctx->plan_worker)) != FKV_OK ||
        (st = call_init(ctx, &ctx->call)) != FKV_OK)
        goto fail;
    if (ctx->offload) {
        fkv_recall_mode mode = fkv_op_recall_mode(ctx->ops, ctx->bd);
        if ((st = fkv_pool_create(0, &ctx->pool)) != FKV_OK ||
            (st = fkv_recaller_create(ctx->ops, ctx->bd, &ctx->g, mode, c->recall_chunk_pages,
                                      &ctx->rec_main)) != FKV_OK ||
            (st = fkv_recaller_create(ctx->ops, ctx->bd, &ctx->g, mode, c->recall_chunk_pages,
                                      &ctx->rec_worker)) != FKV_OK)
            goto fail;
        fkv_recaller_set_pool(ctx->rec_main, ctx->pool);
        fkv_recaller_set_pool(ctx->rec_worker, ctx->pool);
        for (int i = 0; i < 2; i++) {
            uint64_t hb, db;
            fkv_recaller_memory(i ? ctx->rec_worker : ctx->rec_main, &hb, &db);
            ctx->base_host_bytes += hb;
            ctx->base_device_bytes += db;
        }
    }
    if (c->policy == FKV_POLICY_SPECULATIVE || c->policy == FKV_POLICY_FREEKV) {
        if (pthread_create(&ctx->worker, NULL, fkv_worker_main, ctx) != 0) {
            st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "starting the speculative worker");
            goto fail;
        }
        ctx->worker_started = 1;
    }
    *out = ctx;
    return FKV_OK;
fail:
    fkv_context_destroy(ctx);
    return fkv_error_prefix(st, "creating the context");
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

fkv_status fkv_context_sync(fkv_context *ctx) {
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_sync: NULL context");
    fkv_status first = FKV_OK;
    char *msg = NULL; /* the first failure's message, kept across the later waits */
    for (uint32_t l = 0; l < ctx->cfg.n_layers; l++) {
        fkv_status st = fkv_task_wait(ctx, l, NULL);
        if (first == FKV_OK && st != FKV_OK) {
            first = st;
            msg = fkv_error_save();
        }
    }
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        fkv_status st = ctx->ops->finish(ctx->bd, (fkv_queue)q);
        if (first == FKV_OK && st != FKV_OK) {
            first = st;
            msg = fkv_error_save();
        }
    }
    /* background recalls whose failure no call has seen yet */
    for (uint32_t l = 0; l < ctx->cfg.n_layers; l++) {
        fkv_status st = fkv_settle_recall(ctx, l);
        if (first == FKV_OK && st != FKV_OK) {
            first = st;
            msg = fkv_error_save();
        }
    }
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
        sl->has_qprev = 0;
        sl->qcur = 0;
        for (uint32_t i = 0; i < ctx->cfg.n_kv_heads * ctx->n_mid; i++)
            sl->mid_page[i] = -1;
        memset(sl->n_attended, 0, sizeof(uint32_t) * ctx->cfg.n_kv_heads);
        if (ctx->offload)
            fkv_hostpool_trim(&sl->hp, ctx->ops, ctx->bd, 0);
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
static fkv_status read_slot(fkv_context *ctx, layer_state *L, int32_t gslot, unsigned char *tmp,
                            float *k, float *v, uint32_t n_rows) {
    const fkv_backend_ops *o = ctx->ops;
    fkv_bevent *ev = NULL;
    size_t off = fkv_slot_offset(ctx, gslot);
    fkv_status st = o->read(ctx->bd, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, NULL}, L->kpool, off,
                            tmp, ctx->slot_bytes);
    if (st == FKV_OK)
        st = o->read(ctx->bd, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev}, L->vpool, off,
                     tmp + ctx->slot_bytes, ctx->slot_bytes);
    if (st == FKV_OK) {
        st = o->event_wait(ctx->bd, 1, &ev);
        fkv_release_event(ctx, &ev);
    }
    for (size_t i = 0; st == FKV_OK && i < n_rows * ctx->row_elems; i++) {
        k[i] = fkv_load(tmp, ctx->cfg.dtype, i);
        v[i] = fkv_load(tmp + ctx->slot_bytes, ctx->cfg.dtype, i);
    }
    return st;
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
    layer_state *L = &ctx->layers[layer];
    uint32_t n = sl->n_tokens, p = ctx->cfg.page_size, d = ctx->cfg.head_dim;
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
        if (ctx->offload && (j + 1) * p <= n) {
            /* full page: from the host pool, HND [h][K|V][t][c] */
            const unsigned char *pg = fkv_hostpool_page(&sl->hp, j, NULL, NULL);
            for (uint32_t h = 0; h < ctx->cfg.n_kv_heads; h++)
                for (uint32_t t = 0; t < p; t++)
                    for (uint32_t c = 0; c < d; c++) {
                        size_t src = (((size_t)h * 2) * p + t) * d + c;
                        size_t dst = ((size_t)t * ctx->cfg.n_kv_heads + h) * d + c;
                        kd[dst] = fkv_load(pg, ctx->cfg.dtype, src);
                        vd[dst] = fkv_load(pg, ctx->cfg.dtype, src + (size_t)p * d);
                    }
        } else {
            st = read_slot(ctx, L, fkv_gslot(ctx, seq, fkv_home_slot(ctx, j)), tmp, kd, vd, rows);
        }
    }
    free(tmp);
    return st;
}
