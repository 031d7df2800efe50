/* The context's memory: per-layer device buffers and pinned staging, per-sequence state, the
 * prefill scratch, the selection and call scratch, the recall engines. One table of sizes
 * (layer_parts) serves both the allocation and the estimate that fkv_context_create checks
 * against the device first, so the two cannot drift apart. */
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "resources.h"

#define DEV_ALLOC_MIN 16 /* bytes: a zero-sized buffer is allocated with this size */

/* Pages of one prefill offload staging buffer: a scratch chunk's, so that one pack and one
 * read per buffer take a whole chunk, up to PREFILL_STAGE_MAX_BYTES a buffer. */
#define PREFILL_STAGE_MAX_BYTES (32u << 20)
static uint32_t prefill_stage_pages(const fkv_context *ctx) {
    size_t fit = PREFILL_STAGE_MAX_BYTES / ctx->page_bytes;
    if (fit == 0)
        fit = 1;
    return fit < ctx->scratch_pages ? (uint32_t)fit : ctx->scratch_pages;
}

void fkv_resources_derive(fkv_context *ctx) {
    const fkv_config *cfg = &ctx->cfg;
    ctx->group = cfg->n_q_heads / cfg->n_kv_heads;
    ctx->geom = (fkv_kv_geom){.n_kv_heads = cfg->n_kv_heads,
                              .group = ctx->group,
                              .head_dim = cfg->head_dim,
                              .page_size = cfg->page_size,
                              .dtype = cfg->dtype};
    ctx->offload = cfg->policy >= FKV_POLICY_SYNC;
    /* dense and quest keep no host pool: their format is the compute dtype whatever asked */
    ctx->geom.host_format = ctx->offload ? cfg->host_format : FKV_HOST_SAME;
    ctx->geom.summary_format = cfg->summary_format;
    ctx->elem_bytes = fkv_dtype_size(cfg->dtype);
    ctx->row_elems = (size_t)cfg->n_kv_heads * cfg->head_dim;
    ctx->q_row_bytes = (size_t)cfg->n_q_heads * cfg->head_dim * FKV_F32_BYTES;
    ctx->kv_row_bytes = ctx->row_elems * FKV_F32_BYTES;
    ctx->slot_bytes = (size_t)cfg->page_size * ctx->row_elems * ctx->elem_bytes;
    /* host pool, pack staging and recall units: in the host format (quantized or not) */
    ctx->unit_bytes = fkv_unit_bytes(&ctx->geom);        /* one (page, KV head): K|V */
    ctx->page_bytes = cfg->n_kv_heads * ctx->unit_bytes; /* one page, every KV head */
    ctx->max_pages = (cfg->max_context + cfg->page_size - 1) / cfg->page_size;
    ctx->sink_pages = cfg->sink_tokens / cfg->page_size;
    ctx->window_pages = cfg->window_tokens / cfg->page_size;
    ctx->n_mid = cfg->budget_tokens / cfg->page_size - ctx->sink_pages - ctx->window_pages;
    /* dense/quest keep every page resident at its own slot; offload keeps the budget */
    ctx->n_slots = ctx->offload ? cfg->budget_tokens / cfg->page_size : ctx->max_pages;
    ctx->list_cap = ctx->n_slots;
    ctx->scratch_pages = FKV_SCRATCH_PAGES;
    ctx->scr_pack_pages = prefill_stage_pages(ctx);
    /* a decode call's whole input (fkv_in_layout of max_seqs: rows, descriptors, heads, full
     * lists);
     * blocks start 256-byte aligned and are whole query rows long (fkv_q_row) */
    size_t in_bytes = (size_t)cfg->max_seqs *
                      (ctx->q_row_bytes + 2 * ctx->kv_row_bytes + 2 * FKV_INDEX_BYTES +
                       2 * FKV_DESC_BYTES + FKV_PAIR_BYTES + FKV_INDEX_BYTES +
                       cfg->n_kv_heads * (1 + (size_t)ctx->list_cap) * FKV_PAIR_BYTES);
    size_t a = 256, b = ctx->q_row_bytes;
    while (b) { /* gcd, then the step: lcm(256, q_row_bytes) */
        size_t r = a % b;
        a = b;
        b = r;
    }
    size_t step = 256 / a * ctx->q_row_bytes;
    ctx->in_block_bytes = (in_bytes + step - 1) / step * step;
}

static fkv_status dev_alloc(fkv_context *ctx, size_t size, fkv_bbuf **out) {
    if (size == 0)
        size = DEV_ALLOC_MIN;
    if (ctx->dev->info.max_buffer_bytes && size > ctx->dev->info.max_buffer_bytes)
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY,
                         "a %zu-byte buffer exceeds the device's %llu-byte limit (lower "
                         "max_seqs, max_context or budget_tokens)",
                         size, (unsigned long long)ctx->dev->info.max_buffer_bytes);
    fkv_status st = fkv_op_buffer_alloc(ctx->dev, size, out);
    if (st == FKV_OK)
        ctx->base_device_bytes += size;
    return st;
}

static void dev_free(fkv_context *ctx, fkv_bbuf **b) {
    if (*b) {
        fkv_op_buffer_free(ctx->dev, *b);
        *b = NULL;
    }
}

/* ---- per-thread and per-call scratch ----------------------------------------------------- */

static void planner_free(planner *p) {
    free(p->reduced);
    free(p->topk);
    free(p->top_score);
    free(p->fill_slot);
    free(p->fill_page);
    free(p->plan_work);
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
    p->plan_work = malloc(sizeof(uint32_t) * FKV_PLAN_WORK(ctx->n_mid + 1));
    p->units = malloc(sizeof(fkv_recall_unit) * units);
    p->units_cap = (uint32_t)units;
    p->mid_saved = malloc(sizeof(int32_t) * units);
    p->score_saved = malloc(sizeof(float) * units);
    if (!p->reduced || !p->topk || !p->top_score || !p->fill_slot || !p->fill_page ||
        !p->plan_work || !p->units || !p->mid_saved || !p->score_saved)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "selection scratch");
    return FKV_OK;
}

static void call_free(call_scratch *call) {
    free(call->full);
    free(call->had_chunks);
    free(call->attended);
    free(call->n_attended);
    free(call->corrections);
    free(call->mid_pairs);
}

static fkv_status call_init(fkv_context *ctx, call_scratch *call) {
    size_t max_seqs = ctx->cfg.max_seqs, hk = ctx->cfg.n_kv_heads;
    call->full = malloc(sizeof(int32_t) * max_seqs);
    call->had_chunks = malloc(sizeof(uint32_t) * max_seqs);
    call->attended = malloc(sizeof(int32_t) * max_seqs * hk * ctx->list_cap);
    call->n_attended = malloc(sizeof(uint32_t) * max_seqs * hk);
    call->corrections = malloc(sizeof(uint64_t) * hk);
    call->mid_pairs = malloc(2 * sizeof(int32_t) * (ctx->n_mid ? ctx->n_mid : 1));
    if (!call->full || !call->had_chunks || !call->attended || !call->n_attended ||
        !call->corrections || !call->mid_pairs)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "decode call scratch");
    return FKV_OK;
}

/* ---- per-layer buffers ------------------------------------------------------------------- */

/* The device buffers of one layer, and the slices of its pinned host staging: layer_init
 * allocates exactly these, and the context's memory estimate adds them up first. */
enum { N_LAYER_BUFFERS = 11, N_LAYER_HOST = 6 };

typedef struct layer_part {
    void *where; /* fkv_bbuf ** (device buffer) or a pointer to the slice's pointer (host) */
    size_t size;
} layer_part;

static void layer_parts(const fkv_context *ctx, layer_state *ls, layer_part dev[N_LAYER_BUFFERS],
                        layer_part host[N_LAYER_HOST]) {
    const fkv_config *cfg = &ctx->cfg;
    size_t max_seqs = cfg->max_seqs, hq = cfg->n_q_heads, hk = cfg->n_kv_heads;
    size_t qbytes = max_seqs * ctx->q_row_bytes;
    size_t pool = max_seqs * ctx->n_slots * ctx->slot_bytes;
    size_t summaries = max_seqs * ctx->max_pages * fkv_summary_bytes(&ctx->geom);
    size_t io = FKV_IN_BLOCKS * ctx->in_block_bytes + qbytes; /* blocks, then parking */
    /* cosine_flags' flags, then select_pages' records (n_mid pages and scores per KV head) of
     * two selections of the batch: what comes back to the host, in one read for a correction
     * (correction.c) */
    size_t records = 2 * max_seqs * hk * 2 * ctx->n_mid * FKV_F32_BYTES;
    size_t scores = max_seqs * hq * ctx->max_pages * FKV_F32_BYTES;
    size_t per_head = max_seqs * hk * FKV_INDEX_BYTES;
    /* the scores descriptors, cosine_flags' previous-query rows, the next step's descriptors
     * (correction.c) */
    size_t desc = max_seqs * (2 * FKV_DESC_BYTES + FKV_INDEX_BYTES);
    /* completed pages: one per sequence at decode, one per scratch page at prefill; a
     * (slot, summary) pair each, then the slot the pack reads (offload.h) */
    size_t summ_idx = (max_seqs > FKV_SCRATCH_PAGES ? max_seqs : FKV_SCRATCH_PAGES) *
                      (FKV_PAIR_BYTES + FKV_INDEX_BYTES);
    const layer_part d_parts[N_LAYER_BUFFERS] = {
        {&ls->kpool, pool},
        {&ls->vpool, pool},
        {&ls->summ, summaries},
        {&ls->io, io},
        {&ls->out, qbytes},
        {&ls->summ_idx, summ_idx},
        {&ls->desc, desc},
        {&ls->scores, scores},
        {&ls->sims, per_head},
        {&ls->flags, per_head + records},
        {&ls->pack, ctx->offload ? max_seqs * ctx->page_bytes : DEV_ALLOC_MIN},
    };
    const layer_part h_parts[N_LAYER_HOST] = {
        {&ls->host.in, ctx->in_block_bytes},
        {&ls->host.out, qbytes},
        {&ls->host.summ_idx, summ_idx},
        {&ls->host.desc, desc},
        {&ls->host.sims, per_head},
        {&ls->host.flags, per_head + records},
    };
    memcpy(dev, d_parts, sizeof d_parts);
    memcpy(host, h_parts, sizeof h_parts);
}

static size_t host_slice(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

static fkv_status layer_init(fkv_context *ctx, layer_state *ls) {
    layer_part dev[N_LAYER_BUFFERS], host[N_LAYER_HOST];
    layer_parts(ctx, ls, dev, host);
    fkv_status st = FKV_OK;
    for (int i = 0; i < N_LAYER_BUFFERS && st == FKV_OK; i++)
        st = dev_alloc(ctx, dev[i].size, dev[i].where);
    if (st != FKV_OK)
        return st;
    size_t total = 0;
    for (int i = 0; i < N_LAYER_HOST; i++)
        total += host_slice(host[i].size);
    void *base;
    st = fkv_op_host_alloc(ctx->dev, total, &ls->host.mem, &base);
    if (st != FKV_OK)
        return st;
    ctx->base_host_bytes += total;
    unsigned char *p = base;
    for (int i = 0; i < N_LAYER_HOST; i++) {
        *(void **)host[i].where = p;
        p += host_slice(host[i].size);
    }
    ls->task_seqs = malloc(sizeof(uint32_t) * ctx->cfg.max_seqs);
    ls->end_seqs = malloc(sizeof(uint32_t) * ctx->cfg.max_seqs);
    if (ls->task_seqs == NULL || ls->end_seqs == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "task list");
    return FKV_OK;
}

static void layer_free(fkv_context *ctx, layer_state *ls) {
    layer_part dev[N_LAYER_BUFFERS], host[N_LAYER_HOST];
    layer_parts(ctx, ls, dev, host);
    for (int i = 0; i < N_LAYER_BUFFERS; i++)
        dev_free(ctx, dev[i].where);
    if (ls->host.mem)
        fkv_op_host_free(ctx->dev, ls->host.mem);
    fkv_release_event(ctx, &ls->ev_attn);
    fkv_release_event(ctx, &ls->ev_recall);
    fkv_release_event(ctx, &ls->ev_offload);
    fkv_release_event(ctx, &ls->ev_end);
    free(ls->task_seqs);
    free(ls->end_seqs);
}

/* ---- per-sequence state ------------------------------------------------------------------ */

static fkv_status seq_init(fkv_context *ctx, seq_state *s) {
    uint32_t n_layers = ctx->cfg.n_layers, hk = ctx->cfg.n_kv_heads;
    s->layers = calloc(n_layers, sizeof *s->layers);
    if (s->layers == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "sequence state");
    for (uint32_t l = 0; l < n_layers; l++) {
        seq_layer *sl = &s->layers[l];
        if (ctx->offload) {
            fkv_status st = fkv_hostpool_init(&sl->hp, ctx->max_pages, FKV_HOST_CHUNK_PAGES,
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
        fkv_mid_clear(ctx, sl);
        sl->qblock = -1;
    }
    return FKV_OK;
}

static void seq_free(fkv_context *ctx, seq_state *s) {
    if (s->layers == NULL)
        return;
    for (uint32_t l = 0; l < ctx->cfg.n_layers; l++) {
        seq_layer *sl = &s->layers[l];
        if (ctx->offload)
            fkv_hostpool_free(&sl->hp, ctx->dev);
        free(sl->mid_page);
        free(sl->mid_score);
        free(sl->attended);
        free(sl->n_attended);
    }
    free(s->layers);
}

/* ---- prefill scratch --------------------------------------------------------------------- */

/* The prefill scratch: two slot buffers of pages, two f32 row buffers, the row index and,
 * for the offload policies, two staging buffers of packed pages (pack: 0 otherwise). */
typedef struct scratch_sizes {
    size_t slots, f32, rows, pack;
} scratch_sizes;

static scratch_sizes scratch_of(const fkv_context *ctx) {
    size_t rows = (size_t)FKV_SCRATCH_PAGES * ctx->cfg.page_size;
    return (scratch_sizes){.slots = FKV_SCRATCH_PAGES * ctx->slot_bytes,
                           .f32 = rows * ctx->kv_row_bytes,
                           .rows = rows * FKV_INDEX_BYTES,
                           .pack = ctx->offload ? ctx->scr_pack_pages * ctx->page_bytes : 0};
}

static fkv_status scratch_alloc(fkv_context *ctx) {
    scratch_sizes scr = scratch_of(ctx);
    fkv_status st;
    if ((st = dev_alloc(ctx, scr.slots, &ctx->scr_k)) != FKV_OK ||
        (st = dev_alloc(ctx, scr.slots, &ctx->scr_v)) != FKV_OK ||
        (st = dev_alloc(ctx, scr.f32, &ctx->scr_kin)) != FKV_OK ||
        (st = dev_alloc(ctx, scr.f32, &ctx->scr_vin)) != FKV_OK ||
        (st = dev_alloc(ctx, scr.rows, &ctx->scr_rows)) != FKV_OK)
        return st;
    for (int i = 0; i < 2 && scr.pack; i++)
        if ((st = dev_alloc(ctx, scr.pack, &ctx->scr_pack[i])) != FKV_OK)
            return st;
    void *hp;
    st = fkv_op_host_alloc(ctx->dev, 2 * scr.f32 + scr.rows, &ctx->scr_host, &hp);
    if (st != FKV_OK)
        return st;
    ctx->base_host_bytes += 2 * scr.f32 + scr.rows;
    ctx->scr_host_k = hp;
    ctx->scr_host_v = (float *)((unsigned char *)hp + scr.f32);
    ctx->scr_host_rows = (int32_t *)((unsigned char *)hp + 2 * scr.f32);
    return FKV_OK;
}

static void scratch_free(fkv_context *ctx) {
    fkv_bbuf **scr[] = {&ctx->scr_k,    &ctx->scr_v,       &ctx->scr_kin,      &ctx->scr_vin,
                        &ctx->scr_rows, &ctx->scr_pack[0], &ctx->scr_pack[1]};
    for (size_t i = 0; i < sizeof scr / sizeof *scr; i++)
        dev_free(ctx, scr[i]);
    if (ctx->scr_host)
        fkv_op_host_free(ctx->dev, ctx->scr_host);
}

/* ---- recall engines ---------------------------------------------------------------------- */

/* Units per staging buffer: the configured count, else a layer's whole recall (every
 * sequence's mid pages, every KV head) so that staged recall is one copy and one scatter per
 * layer, up to RECALL_STAGE_MAX_BYTES a stage (then a few stages; direct recall stages only
 * its unit table and is one command whatever this is). */
#define RECALL_STAGE_MAX_BYTES (32u << 20)
static uint32_t recall_chunk(const fkv_context *ctx) {
    if (ctx->cfg.recall_chunk_pages)
        return ctx->cfg.recall_chunk_pages;
    uint64_t units = (uint64_t)ctx->cfg.max_seqs * ctx->cfg.n_kv_heads *
                     (ctx->n_mid ? ctx->n_mid : 1);
    uint64_t cap = RECALL_STAGE_MAX_BYTES / fkv_unit_bytes(&ctx->geom);
    if (units > cap)
        units = cap ? cap : 1;
    return (uint32_t)units;
}

/* What the caller's recalls carry: a batch's whole attention lists (heads, then entries; the
 * correction's and sync's selection send them with their recall, decode.c). */
static size_t recall_carry(const fkv_context *ctx) {
    return (size_t)ctx->cfg.max_seqs * ctx->cfg.n_kv_heads * (1 + (size_t)ctx->list_cap) *
           FKV_PAIR_BYTES;
}

/* One engine for the caller's thread and one for the worker, sharing the gather threads. */
static fkv_status recall_engines_create(fkv_context *ctx) {
    fkv_recall_mode mode = fkv_op_recall_mode(ctx->dev);
    uint32_t chunk = recall_chunk(ctx);
    fkv_status st;
    if ((st = fkv_pool_create(0, &ctx->pool)) != FKV_OK ||
        (st = fkv_recaller_create(ctx->dev, &ctx->geom, mode, chunk, recall_carry(ctx),
                                  &ctx->rec_main)) != FKV_OK ||
        (st = fkv_recaller_create(ctx->dev, &ctx->geom, mode, chunk, 0, &ctx->rec_worker)) !=
            FKV_OK)
        return st;
    fkv_recaller_set_pool(ctx->rec_main, ctx->pool);
    fkv_recaller_set_pool(ctx->rec_worker, ctx->pool);
    fkv_recaller *engines[2] = {ctx->rec_main, ctx->rec_worker};
    for (int i = 0; i < 2; i++) {
        uint64_t hb, db;
        fkv_recaller_memory(engines[i], &hb, &db);
        ctx->base_host_bytes += hb;
        ctx->base_device_bytes += db;
    }
    return FKV_OK;
}

/* ---- the whole context ------------------------------------------------------------------- */

/* a*b, or UINT64_MAX when it overflows (sums below saturate the same way). */
static uint64_t mul_sat(uint64_t a, uint64_t b) {
    return b != 0 && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}
static uint64_t add_sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* Device memory of the whole context, from the same tables layer_init and the scratch
 * allocate; *per_layer and *largest: one layer's sum and the largest buffer. */
static uint64_t device_bytes(const fkv_context *ctx, uint64_t *per_layer, uint64_t *largest) {
    layer_state dummy; /* only the sizes are used */
    memset(&dummy, 0, sizeof dummy);
    layer_part dev[N_LAYER_BUFFERS], host[N_LAYER_HOST];
    layer_parts(ctx, &dummy, dev, host);
    uint64_t layer = 0, big = 0;
    for (int i = 0; i < N_LAYER_BUFFERS; i++) {
        uint64_t size = dev[i].size ? dev[i].size : DEV_ALLOC_MIN;
        layer = add_sat(layer, size);
        big = size > big ? size : big;
    }
    uint64_t total = mul_sat(layer, ctx->cfg.n_layers);
    scratch_sizes scr = scratch_of(ctx);
    total = add_sat(total, add_sat(2 * (uint64_t)scr.slots + 2 * (uint64_t)scr.f32, scr.rows));
    total = add_sat(total, 2 * (uint64_t)scr.pack);
    big = scr.slots > big ? scr.slots : big;
    big = scr.f32 > big ? scr.f32 : big;
    big = scr.pack > big ? scr.pack : big;
    if (ctx->offload) {
        uint64_t hb, db, hb0, db0;
        fkv_recall_mode mode = fkv_op_recall_mode(ctx->dev);
        fkv_recaller_bytes(&ctx->geom, mode, recall_chunk(ctx), recall_carry(ctx), &hb, &db);
        fkv_recaller_bytes(&ctx->geom, mode, recall_chunk(ctx), 0, &hb0, &db0);
        total = add_sat(total, db + db0);
    }
    *per_layer = layer;
    *largest = big;
    return total;
}

/* The context's memory is summed before any allocation so that a config far beyond the
 * device fails at once instead of after gigabytes of allocations; then its largest kernel
 * calls and buffers and its allocation count go to the backend (backend.h, fkv_geom_query),
 * so a limit the device cannot meet fails here and not at the first prefill or decode. */
fkv_status fkv_resources_check_device(const fkv_context *ctx) {
    const fkv_config *cfg = &ctx->cfg;
    uint64_t layer, largest;
    uint64_t total = device_bytes(ctx, &layer, &largest);
    uint64_t have = ctx->dev->info.memory_bytes;
    if ((have != 0 && total > have) || total > SIZE_MAX)
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY,
                         "the context needs %llu bytes of device memory (%u layers of %llu), "
                         "device '%s' has %llu: lower max_seqs, max_context or budget_tokens",
                         (unsigned long long)total, cfg->n_layers, (unsigned long long)layer,
                         ctx->dev->info.name, (unsigned long long)have);

    uint64_t max_seqs = cfg->max_seqs, hk = cfg->n_kv_heads;
    uint64_t scratch_rows = (uint64_t)FKV_SCRATCH_PAGES * cfg->page_size;
    uint64_t slots = max_seqs * ctx->n_slots > FKV_SCRATCH_PAGES ? max_seqs * ctx->n_slots
                                                                 : FKV_SCRATCH_PAGES;
    /* per layer its buffers and one host staging; the prefill scratch: 5 buffers and 1 host;
     * with offload, the prefill's 2 pack stagings, two recallers of two stages (host, data,
     * index) and the host pool chunks */
    uint64_t allocations = (uint64_t)cfg->n_layers * (N_LAYER_BUFFERS + 1) + 6;
    if (ctx->offload)
        allocations += 2 + 2 * 2 * 3 + mul_sat(max_seqs * cfg->n_layers,
                                               (ctx->max_pages + FKV_HOST_CHUNK_PAGES - 1) /
                                                   FKV_HOST_CHUNK_PAGES);
    fkv_geom_query q = {
        .max_seqs = cfg->max_seqs,
        .max_rows = (uint32_t)(scratch_rows > max_seqs ? scratch_rows : max_seqs),
        .pool_slots = slots,
        .summaries = max_seqs * ctx->max_pages,
        .scores = max_seqs * cfg->n_q_heads * ctx->max_pages,
        .list_entries = max_seqs * hk * ctx->list_cap,
        .largest_buffer = largest,
        .allocations = allocations,
    };
    return fkv_op_check_geometry(ctx->dev, &ctx->geom, &q);
}

fkv_status fkv_resources_alloc(fkv_context *ctx) {
    const fkv_config *cfg = &ctx->cfg;
    ctx->seqs = calloc(cfg->max_seqs, sizeof *ctx->seqs);
    ctx->layers = calloc(cfg->n_layers, sizeof *ctx->layers);
    ctx->fifo = calloc(cfg->n_layers, sizeof *ctx->fifo);
    ctx->corrections = calloc((size_t)cfg->n_layers * cfg->n_kv_heads, sizeof *ctx->corrections);
    if (!ctx->seqs || !ctx->layers || !ctx->fifo || !ctx->corrections)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "context tables");
    fkv_status st = FKV_OK;
    for (uint32_t s = 0; s < cfg->max_seqs && st == FKV_OK; s++)
        st = seq_init(ctx, &ctx->seqs[s]);
    for (uint32_t l = 0; l < cfg->n_layers && st == FKV_OK; l++)
        st = layer_init(ctx, &ctx->layers[l]);
    if (st == FKV_OK)
        st = scratch_alloc(ctx);
    if (st == FKV_OK)
        st = planner_init(ctx, &ctx->plan_main);
    if (st == FKV_OK)
        st = planner_init(ctx, &ctx->plan_worker);
    if (st == FKV_OK)
        st = call_init(ctx, &ctx->call);
    if (st == FKV_OK && ctx->offload)
        st = recall_engines_create(ctx);
    return st;
}

void fkv_resources_free(fkv_context *ctx) {
    if (ctx->layers)
        for (uint32_t l = 0; l < ctx->cfg.n_layers; l++)
            layer_free(ctx, &ctx->layers[l]);
    if (ctx->seqs)
        for (uint32_t s = 0; s < ctx->cfg.max_seqs; s++)
            seq_free(ctx, &ctx->seqs[s]);
    scratch_free(ctx);
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
}
