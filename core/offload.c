/* Completed pages at decode: summary, then NHD -> HND pack on the device and the read into
 * the host pool on the transfer queue. Its own step because its ordering is its own: the pack
 * staging is reused only after the previous offload read it, and a failure of any read must
 * reach the event the call waits on before it succeeds. */
#include "offload.h"

fkv_status fkv_summarize_pages(fkv_context *ctx, layer_state *ls, const fkv_bbuf *kpool,
                               uint32_t n, uint32_t n_slots) {
    size_t bytes = fkv_pack_slots_offset(n) + (size_t)n_slots * FKV_INDEX_BYTES;
    fkv_status st = fkv_op_write(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->summ_idx, 0,
                                 ls->host.summ_idx, bytes);
    if (st == FKV_OK)
        st = fkv_op_summarize(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, &ctx->geom, kpool, n,
                                 ls->summ_idx, 0, ls->summ);
    return st;
}

/* How many of the n sequences complete a page (full[i] >= 0). */
static uint32_t count_full(uint32_t n, const int32_t *full) {
    uint32_t nf = 0;
    for (uint32_t i = 0; i < n; i++)
        nf += full[i] >= 0;
    return nf;
}

uint32_t fkv_describe_full(fkv_context *ctx, uint32_t n, const uint32_t *seqs,
                           const int32_t *full, int32_t *out) {
    uint32_t nf = count_full(n, full);
    int32_t *slots = out + fkv_pack_slots_offset(nf) / FKV_INDEX_BYTES;
    for (uint32_t i = 0, k = 0; i < n; i++) {
        if (full[i] < 0)
            continue;
        int32_t gslot = fkv_gslot(ctx, seqs[i], fkv_home_slot(ctx, (uint32_t)full[i]));
        out[2 * k] = gslot;
        out[2 * k + 1] = fkv_summary_index(ctx, seqs[i], (uint32_t)full[i]);
        slots[k++] = gslot;
    }
    return nf;
}

/* Packs the nf full pages (their slots in the index after the pairs) and reads each into
 * its host pool. */
static fkv_status offload_full(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                               const int32_t *full, uint32_t nf, const fkv_bbuf *idx,
                               size_t idx_off) {
    layer_state *ls = &ctx->layers[layer];
    /* the pack staging is free once the previous offload read it */
    fkv_bevent *packed = NULL;
    fkv_deps after_prev = {.n_wait = ls->ev_offload ? 1 : 0, .wait = &ls->ev_offload,
                           .done = &packed};
    fkv_status st = fkv_op_pack_hnd(ctx->dev, FKV_QUEUE_COMPUTE, after_prev, &ctx->geom,
                                    ls->kpool, ls->vpool, nf, idx,
                                    idx_off + fkv_pack_slots_offset(nf), ls->pack, 0);
    for (uint32_t i = 0, k = 0; i < n && st == FKV_OK; i++) {
        if (full[i] < 0)
            continue;
        seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        unsigned char *dst = fkv_hostpool_page(&sl->hp, (uint32_t)full[i], NULL, NULL);
        fkv_bevent *ev = NULL;
        /* Each read also waits on the one before, so a failure of any of them fails the last,
         * which the call waits on before it succeeds. */
        fkv_bevent *wait[2] = {packed, ls->ev_offload};
        fkv_deps deps = {.n_wait = ls->ev_offload ? 2 : 1, .wait = wait, .done = &ev};
        st = fkv_op_read(ctx->dev, FKV_QUEUE_TRANSFER, deps, ls->pack,
                            (size_t)k * ctx->page_bytes, dst, ctx->page_bytes);
        if (st == FKV_OK) {
            fkv_release_event(ctx, &ls->ev_offload);
            ls->ev_offload = ev;
        }
        k++;
    }
    fkv_release_event(ctx, &packed);
    return st;
}

fkv_status fkv_finish_pages(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs,
                            const int32_t *full, const fkv_bbuf *idx, size_t idx_off,
                            fkv_stats *stats) {
    layer_state *ls = &ctx->layers[layer];
    uint32_t nf = count_full(n, full);
    if (nf == 0)
        return FKV_OK;
    fkv_status st = fkv_op_summarize(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, &ctx->geom,
                                     ls->kpool, nf, idx, idx_off, ls->summ);
    if (st != FKV_OK || !ctx->offload)
        return st;
    st = offload_full(ctx, layer, n, seqs, full, nf, idx, idx_off);
    stats->pages_offloaded += nf;
    stats->bytes_offloaded += (uint64_t)nf * ctx->page_bytes;
    return st;
}
