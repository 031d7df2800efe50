/* Prefill (fkv_prefill), the method's first step: every prompt page is summarised and, for the
 * offload policies, copied to the host pool; sink and window pages go to their home slots;
 * the initial resident set is chosen with the last prompt token's query. Separate from decode
 * because it works in chunks of whole pages through its own scratch, not one token at a
 * time through the layer's staging. */
#include <string.h>

#include "../common/error.h"
#include "offload.h"
#include "retrieval.h"
#include "speculative.h"

/* Arguments and state: an empty sequence, layers in order, the same prompt in every layer. */
static fkv_status check_prefill(const fkv_context *ctx, uint32_t seq, uint32_t layer,
                                uint32_t n_tokens, const fkv_tensor *k, const fkv_tensor *v,
                                const fkv_tensor *q_last) {
    static const char fn[] = "fkv_prefill";
    const fkv_config *cfg = &ctx->cfg;
    if (seq >= cfg->max_seqs || layer >= cfg->n_layers)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: sequence %u / layer %u out of range", fn,
                         seq, layer);
    if (n_tokens == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s: n_tokens is 0", fn);
    if (n_tokens > cfg->max_context)
        return fkv_error(FKV_ERR_CONTEXT_FULL, "%s: %u tokens exceed max_context %u", fn,
                         n_tokens, cfg->max_context);
    const seq_state *s = &ctx->seqs[seq];
    if (s->prefilled != layer || s->next_layer != 0 || s->layers[layer].n_tokens != 0 ||
        (layer == 0 && s->layers[cfg->n_layers - 1].n_tokens != 0))
        return fkv_error(FKV_ERR_BAD_STATE,
                         "%s: sequence %u layer %u: prefill needs an empty sequence, layers in "
                         "order (next expected layer: %u)",
                         fn, seq, layer, s->prefilled);
    if (layer > 0 && n_tokens != s->layers[0].n_tokens)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "%s: sequence %u layer %u: %u tokens, but layer 0 holds %u (every layer "
                         "holds the same prompt)",
                         fn, seq, layer, n_tokens, s->layers[0].n_tokens);
    fkv_status st;
    size_t kv_bytes = (size_t)n_tokens * ctx->kv_row_bytes;
    if ((st = fkv_check_tensor(ctx, k, kv_bytes, fn, "k")) != FKV_OK ||
        (st = fkv_check_tensor(ctx, v, kv_bytes, fn, "v")) != FKV_OK)
        return st;
    return fkv_check_tensor(ctx, q_last, ctx->q_row_bytes, fn, "q_last");
}

/* Uploads nt rows from token t0 and appends them to the scratch pages, row r to row r. */
static fkv_status chunk_append(fkv_context *ctx, uint32_t t0, uint32_t nt, const fkv_tensor *k,
                               const fkv_tensor *v) {
    for (uint32_t r = 0; r < nt; r++)
        ctx->scr_host_rows[r] = (int32_t)r;
    size_t off = (size_t)t0 * ctx->kv_row_bytes, bytes = (size_t)nt * ctx->kv_row_bytes;
    fkv_status st = fkv_op_write(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ctx->scr_rows, 0,
                                    ctx->scr_host_rows, (size_t)nt * FKV_INDEX_BYTES);
    if (st == FKV_OK)
        st = fkv_tensor_to_device(ctx, k, off, ctx->scr_host_k, ctx->scr_kin, 0, bytes);
    if (st == FKV_OK)
        st = fkv_tensor_to_device(ctx, v, off, ctx->scr_host_v, ctx->scr_vin, 0, bytes);
    if (st == FKV_OK)
        st = fkv_op_append(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, &ctx->geom, ctx->scr_kin, 0,
                              ctx->scr_vin, 0, nt, ctx->scr_rows, 0, ctx->scr_k, ctx->scr_v);
    return st;
}

/* Summaries of the chunk's nfull full scratch pages, into place (pages from page0 on); for
 * the offload policies the same index write carries the scratch slots 0..nfull-1 that the
 * packs read (offload.h). */
static fkv_status chunk_summarize(fkv_context *ctx, uint32_t seq, layer_state *ls,
                                  uint32_t page0, uint32_t nfull) {
    int32_t *slots = ls->host.summ_idx + fkv_pack_slots_offset(nfull) / FKV_INDEX_BYTES;
    for (uint32_t i = 0; i < nfull; i++) {
        ls->host.summ_idx[2 * i] = (int32_t)i;
        ls->host.summ_idx[2 * i + 1] = fkv_summary_index(ctx, seq, page0 + i);
        slots[i] = (int32_t)i;
    }
    return nfull ? fkv_summarize_pages(ctx, ls, ctx->scr_k, nfull, ctx->offload ? nfull : 0)
                 : FKV_OK;
}

/* The two pack staging buffers of a prefill call and the last read from each. */
typedef struct pack_stages {
    fkv_bevent *read[2];
    int next; /* the buffer the next fill uses */
} pack_stages;

/* Host copies of the chunk's nfull full pages. A fill packs (NHD -> HND, one launch) as many
 * pages as a staging buffer holds and as lie in one piece of the host pool, and one read
 * copies them there; the buffers alternate, so a fill's pack runs while the read of the one
 * before is in flight, and waits only for the read that last used its buffer. Each read also
 * waits on the one before, so the last one carries any failure; nothing waits on the host. */
static fkv_status chunk_offload(fkv_context *ctx, seq_layer *sl, layer_state *ls, uint32_t page0,
                                uint32_t nfull, pack_stages *ps, fkv_stats *stats) {
    size_t slots_off = fkv_pack_slots_offset(nfull);
    fkv_status st = FKV_OK;
    for (uint32_t i = 0, n; i < nfull && st == FKV_OK; i += n) {
        uint32_t want = nfull - i < ctx->scr_pack_pages ? nfull - i : ctx->scr_pack_pages;
        n = fkv_hostpool_run(&sl->hp, page0 + i, want);
        int b = ps->next;
        fkv_bevent *packed = NULL, *ev = NULL;
        fkv_deps after_read = {.n_wait = ps->read[b] ? 1 : 0, .wait = &ps->read[b],
                               .done = &packed};
        st = fkv_op_pack_hnd(ctx->dev, FKV_QUEUE_COMPUTE, after_read, &ctx->geom, ctx->scr_k,
                             ctx->scr_v, n, ls->summ_idx, slots_off + i * FKV_INDEX_BYTES,
                             ctx->scr_pack[b], 0);
        fkv_bevent *wait[2] = {packed, ps->read[!b]};
        fkv_deps after_pack = {.n_wait = ps->read[!b] ? 2 : 1, .wait = wait, .done = &ev};
        if (st == FKV_OK)
            st = fkv_op_read(ctx->dev, FKV_QUEUE_TRANSFER, after_pack, ctx->scr_pack[b], 0,
                             fkv_hostpool_page(&sl->hp, page0 + i, NULL, NULL),
                             (size_t)n * ctx->page_bytes);
        fkv_release_event(ctx, &packed);
        if (st == FKV_OK) {
            fkv_release_event(ctx, &ps->read[b]);
            ps->read[b] = ev;
            ps->next = !b;
        }
    }
    stats->pages_offloaded += nfull;
    stats->bytes_offloaded += (uint64_t)nfull * ctx->page_bytes;
    return st;
}

/* Waits for the last read (it waits on every one before it), when st is FKV_OK; releases
 * both buffers' events either way (on failure the rollback drains the queues). */
static fkv_status stages_end(fkv_context *ctx, pack_stages *ps, fkv_status st) {
    int last = !ps->next;
    if (st == FKV_OK)
        st = fkv_wait_release(ctx, &ps->read[last]);
    fkv_release_event(ctx, &ps->read[0]);
    fkv_release_event(ctx, &ps->read[1]);
    return st;
}

/* Whether page j stays resident after the prefill: every page for dense/quest; the sink and
 * the final window for the offload policies. */
static int stays_resident(const fkv_context *ctx, uint32_t j, uint32_t wb_final) {
    return !ctx->offload || j < ctx->sink_pages || j >= wb_final;
}

/* The chunk's resident pages go from the scratch to their home slots, one copy of K and one
 * of V per run of pages whose home slots follow each other (a whole chunk for dense/quest). */
static fkv_status chunk_resident(fkv_context *ctx, uint32_t seq, layer_state *ls, uint32_t page0,
                                 uint32_t npages, uint32_t wb_final) {
    fkv_status st = FKV_OK;
    for (uint32_t i = 0, n = 1; i < npages && st == FKV_OK; i += n) {
        uint32_t j = page0 + i;
        n = 1;
        if (!stays_resident(ctx, j, wb_final))
            continue;
        int32_t g = fkv_gslot(ctx, seq, fkv_home_slot(ctx, j));
        while (i + n < npages && stays_resident(ctx, j + n, wb_final) &&
               fkv_gslot(ctx, seq, fkv_home_slot(ctx, j + n)) == g + (int32_t)n)
            n++;
        size_t dst = fkv_slot_offset(ctx, g), src = (size_t)i * ctx->slot_bytes;
        size_t bytes = (size_t)n * ctx->slot_bytes;
        st = fkv_op_copy(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->kpool, dst, ctx->scr_k,
                         src, bytes);
        if (st == FKV_OK)
            st = fkv_op_copy(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->vpool, dst,
                             ctx->scr_v, src, bytes);
    }
    return st;
}

/* The whole prompt, a scratch chunk at a time, then q_last into the previous-query buffer
 * (its parking row: the empty sequence has no previous query to keep). */
static fkv_status prefill_pages(fkv_context *ctx, uint32_t seq, uint32_t layer,
                                uint32_t n_tokens, const fkv_tensor *k, const fkv_tensor *v,
                                const fkv_tensor *q_last, fkv_stats *stats) {
    layer_state *ls = &ctx->layers[layer];
    seq_layer *sl = &ctx->seqs[seq].layers[layer];
    uint32_t p = ctx->cfg.page_size, wb_final = fkv_window_begin(ctx, n_tokens);
    uint32_t chunk_tokens = ctx->scratch_pages * p;
    pack_stages ps = {.read = {NULL, NULL}, .next = 0};
    fkv_status st = FKV_OK;
    for (uint32_t t0 = 0; t0 < n_tokens && st == FKV_OK; t0 += chunk_tokens) {
        uint32_t nt = n_tokens - t0 < chunk_tokens ? n_tokens - t0 : chunk_tokens;
        uint32_t page0 = t0 / p, npages = (nt + p - 1) / p, nfull = nt / p;
        st = chunk_append(ctx, t0, nt, k, v);
        if (st == FKV_OK)
            st = chunk_summarize(ctx, seq, ls, page0, nfull);
        if (st == FKV_OK && ctx->offload)
            st = chunk_offload(ctx, sl, ls, page0, nfull, &ps, stats);
        if (st == FKV_OK)
            st = chunk_resident(ctx, seq, ls, page0, npages, wb_final);
        /* the scratch, the input rows' host staging and the index staging are reused by the
         * next chunk (the packs that read the scratch are done too; their reads may not be) */
        if (st == FKV_OK)
            st = fkv_op_finish(ctx->dev, FKV_QUEUE_COMPUTE);
    }
    if (st == FKV_OK)
        st = fkv_tensor_to_device(ctx, q_last, 0, ls->host.in, ls->io,
                                  fkv_q_offset(ctx, FKV_QPARK, seq), ctx->q_row_bytes);
    if (st == FKV_OK) /* its failure must show here, not as a wrong selection later */
        st = fkv_op_finish(ctx->dev, FKV_QUEUE_COMPUTE);
    /* the initial selection's recall gathers from the host pool */
    return stages_end(ctx, &ps, st);
}

/* The initial resident set, chosen with the last prompt token's query for the next step. */
static fkv_status initial_selection(fkv_context *ctx, const uint32_t *seq, uint32_t layer,
                                    fkv_stats *stats) {
    layer_state *ls = &ctx->layers[layer];
    fkv_bevent *done = NULL;
    fkv_bevent *slot_readers[1] = {ls->ev_attn};
    select_args a = {.queue = FKV_QUEUE_COMPUTE,
                     .rec = ctx->rec_main,
                     .pl = &ctx->plan_main,
                     .n = 1,
                     .seqs = seq,
                     .use_qprev = 1,
                     .extra_tokens = 1,
                     .n_wait = ls->ev_attn ? 1 : 0,
                     .wait = slot_readers,
                     .done = &done,
                     .stats = stats};
    fkv_status st = fkv_select_pages(ctx, layer, &a);
    if (st == FKV_OK)
        st = fkv_wait_release(ctx, &done);
    fkv_release_event(ctx, &done);
    return st;
}

/* The sequence stays empty: what the device holds for it is unreachable, and the host pool
 * goes back to its size before the call (empty). */
static void prefill_rollback(fkv_context *ctx, seq_layer *sl) {
    char *msg = fkv_error_save();
    fkv_op_finish(ctx->dev, FKV_QUEUE_COMPUTE);
    fkv_op_finish(ctx->dev, FKV_QUEUE_TRANSFER);
    fkv_error_restore(msg);
    sl->n_tokens = 0;
    sl->qblock = -1;
    fkv_mid_clear(ctx, sl);
    if (ctx->offload)
        fkv_hostpool_trim(&sl->hp, ctx->dev, 0);
}

fkv_status fkv_prefill(fkv_context *ctx, uint32_t seq, uint32_t layer, uint32_t n_tokens,
                       const fkv_tensor *k, const fkv_tensor *v, const fkv_tensor *q_last) {
    if (ctx == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_prefill: NULL context");
    fkv_status st = check_prefill(ctx, seq, layer, n_tokens, k, v, q_last);
    if (st != FKV_OK)
        return st;
    fkv_stats delta;
    memset(&delta, 0, sizeof delta);
    if ((st = fkv_task_wait(ctx, layer, &delta)) != FKV_OK)
        return st;
    seq_layer *sl = &ctx->seqs[seq].layers[layer];
    uint32_t n_full = n_tokens / ctx->cfg.page_size;
    if (ctx->offload && (st = fkv_hostpool_reserve(&sl->hp, ctx->dev, n_full)) != FKV_OK)
        return st;
    st = prefill_pages(ctx, seq, layer, n_tokens, k, v, q_last, &delta);
    if (st == FKV_OK) {
        sl->n_tokens = n_tokens;
        fkv_qprev_park(sl, seq);
        fkv_mid_clear(ctx, sl);
    }
    if (st == FKV_OK && ctx->offload)
        st = initial_selection(ctx, &seq, layer, &delta);
    if (st != FKV_OK) {
        prefill_rollback(ctx, sl);
        return st;
    }
    ctx->seqs[seq].prefilled = layer + 1;
    fkv_stats_add(ctx, &delta);
    return FKV_OK;
}
