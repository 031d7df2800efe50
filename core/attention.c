/* Attention: which slots each (sequence, KV head) reads, and the launch. Separate from
 * decode because the lists are where the policies meet: dense reads every page, the others
 * sink + selected + window, and every policy lists pages in the same (ascending) order, so
 * equal selections give bitwise-equal outputs whatever slots hold them. */
#include <math.h>
#include <stdlib.h>

#include "attention.h"

static int cmp_page(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The head's selected middle pages that are still candidates (outside the window), as
 * (page, slot) pairs in ascending page order; returns their count. */
static uint32_t selected_pairs(const fkv_context *ctx, const seq_layer *sl, uint32_t head,
                               uint32_t window_begin, int32_t *pairs) {
    uint32_t sink = ctx->sink_pages, n_pairs = 0;
    for (uint32_t m = 0; m < ctx->n_mid; m++) {
        int32_t pg = sl->mid_page[(size_t)head * ctx->n_mid + m];
        if (pg < (int32_t)sink || (uint32_t)pg >= window_begin)
            continue; /* empty, or no longer a candidate */
        pairs[2 * n_pairs] = pg;
        pairs[2 * n_pairs + 1] = (int32_t)(ctx->offload ? fkv_mid_slot(ctx, m) : (uint32_t)pg);
        n_pairs++;
    }
    qsort(pairs, n_pairs, 2 * sizeof *pairs, cmp_page);
    return n_pairs;
}

/* Appends one head's (slot, tokens) entries from *e on, and its pages to att; returns the
 * number of pages. Merges sink pages, then the selected middle pages, then the window. */
static uint32_t head_entries(fkv_context *ctx, int32_t *entries, uint32_t seq, const seq_layer *sl,
                             uint32_t head, uint32_t *e, int32_t *att) {
    uint32_t p = ctx->cfg.page_size, nt = sl->n_tokens, cur = nt / p;
    uint32_t wb = fkv_window_begin(ctx, nt), sink_end = ctx->sink_pages, n_pairs = 0;
    int32_t *pairs = ctx->call.mid_pairs;
    if (ctx->cfg.policy == FKV_POLICY_DENSE) {
        wb = 0; /* every page is "window": emitted in order below */
        sink_end = 0;
    } else {
        n_pairs = selected_pairs(ctx, sl, head, wb, pairs);
    }
    uint32_t na = 0;
    for (uint32_t k = 0, j = 0;;) {
        uint32_t page, slot;
        if (j < sink_end && j <= cur) {
            page = j;
            slot = j;
            j++;
        } else if (k < n_pairs) {
            page = (uint32_t)pairs[2 * k];
            slot = (uint32_t)pairs[2 * k + 1];
            k++;
        } else {
            if (j < wb)
                j = wb;
            if (j > cur)
                break;
            page = j;
            slot = fkv_home_slot(ctx, j);
            j++;
        }
        if ((size_t)page * p >= nt)
            continue; /* the current page may still be empty */
        uint32_t left = nt - page * p;
        entries[2 * *e] = fkv_gslot(ctx, seq, slot);
        entries[2 * *e + 1] = (int32_t)(left < p ? left : p);
        (*e)++;
        att[na++] = (int32_t)page;
    }
    return na;
}

size_t fkv_attention_lists(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs) {
    layer_state *ls = &ctx->layers[layer];
    uint32_t hk = ctx->cfg.n_kv_heads, e = 0;
    fkv_in_layout in = fkv_in_layout_of(ctx, n);
    int32_t *heads = (int32_t *)(ls->host.in + in.heads);
    int32_t *entries = (int32_t *)(ls->host.in + in.entries);
    for (uint32_t i = 0; i < n; i++) {
        const seq_layer *sl = &ctx->seqs[seqs[i]].layers[layer];
        for (uint32_t h = 0; h < hk; h++) {
            size_t ih = (size_t)i * hk + h;
            uint32_t start = e;
            int32_t *att = ctx->call.attended + ih * ctx->list_cap;
            ctx->call.n_attended[ih] = head_entries(ctx, entries, seqs[i], sl, h, &e, att);
            heads[2 * ih] = (int32_t)start;
            heads[2 * ih + 1] = (int32_t)(e - start);
        }
    }
    return in.entries - in.heads + (size_t)e * FKV_PAIR_BYTES;
}

fkv_status fkv_attention_launch(fkv_context *ctx, uint32_t layer, uint32_t n,
                                const uint32_t *seqs, int rebuild,
                                const fkv_recall_carry *carried, uint32_t n_wait,
                                fkv_bevent *const *wait, fkv_bbuf *out, size_t out_off,
                                fkv_bevent **attn) {
    layer_state *ls = &ctx->layers[layer];
    fkv_in_layout in = fkv_in_layout_of(ctx, n);
    size_t block = fkv_q_offset(ctx, ls->in_block, 0);
    const fkv_bbuf *lists = ls->io;
    size_t heads = block + in.heads;
    fkv_status st = FKV_OK;
    if (rebuild && carried && carried->buf) {
        lists = carried->buf;
        heads = carried->off;
    } else if (rebuild) {
        size_t bytes = fkv_attention_lists(ctx, layer, n, seqs);
        st = fkv_op_write(ctx->dev, FKV_QUEUE_COMPUTE, FKV_NO_DEPS, ls->io, heads,
                          ls->host.in + in.heads, bytes);
    }
    if (st == FKV_OK)
        st = fkv_op_attention(ctx->dev, FKV_QUEUE_COMPUTE,
                              (fkv_deps){.n_wait = n_wait, .wait = wait, .done = attn},
                              &ctx->geom, ls->io, block + in.q, n, lists, heads, lists,
                              heads + (in.entries - in.heads), ls->kpool, ls->vpool,
                              1.0f / sqrtf((float)ctx->cfg.head_dim), out, out_off);
    return st;
}
