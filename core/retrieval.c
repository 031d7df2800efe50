/* Retrieval: score -> group reduction and top-k (device) -> plan -> recall, for a batch of
 * sequences of one layer. Separate from the callers because four steps of the pipeline run it
 * (prefill, decode's quest and sync policies, correction, the speculative worker), each with
 * its own queue, recall engine, scratch and wait list (select_args). The host math is in select.c. */
#include <string.h>

#include "../common/error.h"
#include "attention.h"
#include "retrieval.h"

/* Candidate pages [sink, end) for a sequence that holds n_now tokens and will attend with
 * n_target tokens: outside sink and window, and full (summarised) already. */
static uint32_t candidates_end(const fkv_context *ctx, uint32_t n_now, uint32_t n_target) {
    uint32_t end = fkv_window_begin(ctx, n_target);
    uint32_t full = n_now / ctx->cfg.page_size;
    return end < full ? end : full;
}

size_t fkv_selection_records_offset(const fkv_context *ctx, uint32_t i) {
    size_t flags = (size_t)ctx->cfg.max_seqs * ctx->cfg.n_kv_heads * FKV_INDEX_BYTES;
    size_t per_seq = (size_t)ctx->cfg.n_kv_heads * 2 * ctx->n_mid * FKV_F32_BYTES;
    return flags + i * per_seq;
}

size_t fkv_selection_describe(fkv_context *ctx, uint32_t layer, const select_args *a,
                              int32_t *out) {
    layer_state *ls = &ctx->layers[layer];
    size_t per_seq = (size_t)ctx->cfg.n_q_heads * ctx->max_pages; /* floats of scores */
    for (uint32_t i = 0; i < a->n; i++) {
        const seq_layer *sl = &ctx->seqs[a->seqs[i]].layers[layer];
        uint32_t ce = candidates_end(ctx, sl->n_tokens, sl->n_tokens + a->extra_tokens);
        int32_t *d = out + (size_t)FKV_SCORES_DESC_INTS * i;
        d[0] = fkv_summary_index(ctx, a->seqs[i], 0);
        d[1] = ce > ctx->sink_pages && ctx->n_mid > 0 ? (int32_t)ce : 0;
        d[2] = (int32_t)(i * per_seq); /* fkv_config_validate keeps a batch's scores in int32 */
        d[3] = fkv_q_row(ctx, a->use_qprev ? fkv_qprev_offset(ctx, sl)
                                           : fkv_qin_offset(ctx, ls, i)); /* rows of ls->io */
    }
    return (size_t)a->n * FKV_DESC_BYTES;
}

const int32_t *fkv_selection_host_desc(const fkv_context *ctx, uint32_t layer,
                                       const select_args *a) {
    return a->desc ? a->desc : ctx->layers[layer].host.desc + a->desc_off / sizeof(int32_t);
}

/* The candidate end of sequence i of the batch, in its descriptors. */
static uint32_t described_end(const int32_t *desc, uint32_t i) {
    return (uint32_t)desc[(size_t)FKV_SCORES_DESC_INTS * i + 1];
}

fkv_status fkv_selection_enqueue(fkv_context *ctx, uint32_t layer, const select_args *a,
                                 const selection_check *check) {
    layer_state *ls = &ctx->layers[layer];
    fkv_select_params sp = {.first_page = ctx->sink_pages, .k = ctx->n_mid,
                            .reduce = ctx->cfg.group_reduce,
                            .temp_scale = (float)fkv_group_temp_scale(&ctx->cfg)};
    const fkv_bbuf *desc = a->desc ? ls->io : ls->desc;
    fkv_status st =
        check ? fkv_op_scores_check(ctx->dev, a->queue, FKV_NO_DEPS, &ctx->geom, ls->io, 0, a->n,
                                    desc, a->desc_off, ls->summ, ls->scores, 0,
                                    fkv_qin_offset(ctx, ls, 0), check->rows, check->rows_off,
                                    ctx->cfg.tau, ls->sims, 0, ls->flags, 0)
              : fkv_op_scores(ctx->dev, a->queue, FKV_NO_DEPS, &ctx->geom, ls->io, 0, a->n, desc,
                              a->desc_off, a->dev_mask, 0, ls->summ, ls->scores, 0);
    if (st == FKV_OK)
        st = fkv_op_select_pages(ctx->dev, a->queue, FKV_NO_DEPS, &ctx->geom, a->n, desc,
                                 a->desc_off,
                                 a->dev_mask, 0, ls->scores, 0, &sp, ls->flags,
                                 fkv_selection_records_offset(ctx, a->records_at));
    return st;
}

/* Scores of every query head over each sequence's candidates, then the group reduction and
 * top-k on the device (select_pages): one descriptor write (none when they came with the
 * call's inputs), one launch of each and one read of the selection records for the whole
 * batch, whatever its size. Only the records come back, into the layer's host staging; the
 * caller waits for them: the host plans next. */
static fkv_status score_candidates(fkv_context *ctx, uint32_t layer, const select_args *a) {
    layer_state *ls = &ctx->layers[layer];
    size_t first = fkv_selection_records_offset(ctx, a->records_at);
    const int32_t *desc = a->desc;
    size_t desc_bytes = desc ? 0 : fkv_selection_describe(ctx, layer, a, ls->host.desc);
    if (desc == NULL)
        desc = ls->host.desc;
    int any = 0;
    for (uint32_t i = 0; i < a->n; i++)
        any |= described_end(desc, i) != 0;
    if (!any) /* no sequence has a candidate (or there are no middle slots): nothing to ask */
        return FKV_OK;
    fkv_bevent *ev = NULL;
    fkv_status st = FKV_OK;
    if (desc_bytes)
        st = fkv_op_write(ctx->dev, a->queue, FKV_NO_DEPS, ls->desc, 0, ls->host.desc,
                          desc_bytes);
    if (st == FKV_OK)
        st = fkv_selection_enqueue(ctx, layer, a, NULL);
    if (st == FKV_OK)
        st = fkv_op_read(ctx->dev, a->queue, (fkv_deps){.done = &ev}, ls->flags, first,
                         (unsigned char *)ls->host.flags + first,
                         fkv_selection_records_offset(ctx, a->records_at + a->n) - first);
    if (st == FKV_OK)
        st = fkv_wait_release(ctx, &ev);
    fkv_release_event(ctx, &ev);
    /* Commands already queued read the host desc and write the host records: they must be
     * done before this layer's staging is used again (by the other thread, too). */
    if (st != FKV_OK)
        fkv_drain_queue(ctx, a->queue);
    return st;
}

/* The selection of one KV head from its record (pages ascending, then their scores), best
 * first, into pl->topk (page numbers) and pl->top_score; returns their count, or UINT32_MAX
 * when the device wrote a page outside the candidates. */
static uint32_t rank_pages(fkv_context *ctx, planner *pl, const unsigned char *rec,
                           uint32_t ce) {
    uint32_t sink = ctx->sink_pages;
    uint32_t n_cand = ce > sink ? ce - sink : 0;
    if (n_cand == 0 || ctx->n_mid == 0)
        return 0;
    uint32_t n_sel = n_cand < ctx->n_mid ? n_cand : ctx->n_mid;
    for (uint32_t k = 0; k < n_sel; k++) {
        int32_t page;
        memcpy(&page, rec + (size_t)k * 4, sizeof page);
        memcpy(&pl->top_score[k], rec + ((size_t)ctx->n_mid + k) * 4, sizeof(float));
        if (page < (int32_t)sink || page >= (int32_t)ce)
            return UINT32_MAX;
        pl->topk[k] = (uint32_t)page;
    }
    fkv_order_selection(pl->topk, pl->top_score, n_sel, pl->fill_page, pl->reduced);
    return n_sel;
}

/* The plan of one KV head of one sequence: its middle slots get the ranked pages; the missing
 * ones become recall units after *n_units. Quest reads the selection in place. */
static void plan_head(fkv_context *ctx, const select_args *a, uint32_t seq, seq_layer *sl,
                      uint32_t head, uint32_t n_sel, uint32_t *n_units) {
    planner *pl = a->pl;
    int32_t *mid = sl->mid_page + (size_t)head * ctx->n_mid;
    float *mscore = sl->mid_score + (size_t)head * ctx->n_mid;
    if (a->rec == NULL) {
        for (uint32_t m = 0; m < ctx->n_mid; m++)
            mid[m] = m < n_sel ? (int32_t)pl->topk[m] : -1;
        return;
    }
    uint32_t n_fill = fkv_plan_slots(mid, mscore, ctx->n_mid, pl->topk, pl->top_score, n_sel,
                                     pl->fill_slot, pl->fill_page, pl->plan_work);
    for (uint32_t f = 0; f < n_fill; f++) {
        fkv_recall_unit *u = &pl->units[(*n_units)++];
        const unsigned char *page =
            fkv_hostpool_page(&sl->hp, pl->fill_page[f], &u->host, &u->host_offset);
        u->host_offset += (uint64_t)head * ctx->unit_bytes;
        u->src = page + (size_t)head * ctx->unit_bytes;
        u->gslot = fkv_gslot(ctx, seq, fkv_mid_slot(ctx, pl->fill_slot[f]));
        u->kv_head = (int32_t)head;
    }
}

/* The plan of every (sequence, selected head) of the batch from the device's selection;
 * *n_units receives the number of recall units planned into a->pl->units. A page outside the
 * candidates fails the selection before any slot changes. */
static fkv_status plan_batch(fkv_context *ctx, uint32_t layer, const select_args *a,
                             uint32_t *n_units) {
    const layer_state *ls = &ctx->layers[layer];
    uint32_t hk = ctx->cfg.n_kv_heads;
    size_t head_bytes = 2 * (size_t)ctx->n_mid * 4;
    *n_units = 0;
    for (int pass = 0; pass < 2; pass++) /* 0 checks every record, 1 plans */
        for (uint32_t i = 0; i < a->n; i++) {
            seq_layer *sl = &ctx->seqs[a->seqs[i]].layers[layer];
            uint32_t ce = described_end(fkv_selection_host_desc(ctx, layer, a), i);
            const unsigned char *recs =
                (const unsigned char *)ls->host.flags +
                fkv_selection_records_offset(ctx, a->records_at + i);
            for (uint32_t h = 0; h < hk; h++) {
                if (a->mask && !a->mask[(size_t)i * hk + h])
                    continue;
                uint32_t n_sel = rank_pages(ctx, a->pl, recs + h * head_bytes, ce);
                if (n_sel == UINT32_MAX)
                    return fkv_error(FKV_ERR_BACKEND,
                                     "%s select_pages: sequence %u, KV head %u: a page outside "
                                     "its %u candidates",
                                     ctx->dev->info.name, a->seqs[i], h,
                                     ce - ctx->sink_pages);
                if (pass == 1)
                    plan_head(ctx, a, a->seqs[i], sl, h, n_sel, n_units);
            }
        }
    return FKV_OK;
}

fkv_status fkv_selection_apply(fkv_context *ctx, uint32_t layer, const select_args *a) {
    if (a->done)
        *a->done = NULL;
    uint32_t n_units;
    double t_plan = fkv_now();
    fkv_status st = plan_batch(ctx, layer, a, &n_units);
    a->stats->host_select_seconds += fkv_now() - t_plan;
    if (st != FKV_OK)
        return st;
    a->stats->selections += a->n;
    if (a->rec == NULL)
        return FKV_OK;
    layer_state *ls = &ctx->layers[layer];
    /* the lists as this plan leaves them go with its recall (none: nothing to carry them) */
    fkv_recall_carry *lists = n_units ? a->lists : NULL;
    if (lists) {
        fkv_in_layout in = fkv_in_layout_of(ctx, a->n);
        lists->size = fkv_attention_lists(ctx, layer, a->n, a->seqs);
        lists->bytes = ls->host.in + in.heads;
    }
    double t0 = fkv_now();
    st = fkv_recaller_run_with(a->rec, a->queue, n_units, a->pl->units, ls->kpool, ls->vpool,
                               (fkv_deps){.n_wait = a->n_wait, .wait = a->wait, .done = a->done},
                               lists);
    a->stats->recall_seconds += fkv_now() - t0;
    a->stats->pages_recalled += n_units;
    a->stats->bytes_recalled += (uint64_t)n_units * ctx->unit_bytes;
    return st;
}

fkv_status fkv_select_pages(fkv_context *ctx, uint32_t layer, const select_args *a) {
    if (a->done)
        *a->done = NULL;
    fkv_status st = score_candidates(ctx, layer, a);
    return st == FKV_OK ? fkv_selection_apply(ctx, layer, a) : st;
}

void fkv_selection_save(fkv_context *ctx, planner *pl, uint32_t layer, uint32_t n,
                        const uint32_t *seqs) {
    size_t per = (size_t)ctx->cfg.n_kv_heads * ctx->n_mid;
    for (uint32_t i = 0; i < n; i++) {
        const seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        memcpy(pl->mid_saved + i * per, sl->mid_page, per * sizeof(int32_t));
        memcpy(pl->score_saved + i * per, sl->mid_score, per * sizeof(float));
    }
}

void fkv_selection_restore(fkv_context *ctx, const planner *pl, uint32_t layer, uint32_t n,
                           const uint32_t *seqs, int recalled) {
    size_t per = (size_t)ctx->cfg.n_kv_heads * ctx->n_mid;
    for (uint32_t i = 0; i < n; i++) {
        seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        const int32_t *saved = pl->mid_saved + i * per;
        for (size_t m = 0; m < per; m++) {
            int refilled = recalled && sl->mid_page[m] >= 0 && sl->mid_page[m] != saved[m];
            sl->mid_page[m] = refilled ? -1 : saved[m];
            sl->mid_score[m] = pl->score_saved[i * per + m];
        }
    }
}
