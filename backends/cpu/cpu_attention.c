/* Decode attention of the CPU reference (cpu_kernels.h): the definition every backend is held
 * to, computed so that it runs near memory speed.
 *
 * The definition, per query head: s_t = (sum over c ascending of q[c]*k_t[c]) * scale, f32,
 * for every listed token t in list order; m = the largest s_t; w_t = expf(s_t - m);
 * out[c] = (sum over t in list order of w_t*v_t[c]) / (sum over t in list order of w_t); no
 * token: zeros. Every sum runs in that order, so the results are bit for bit those of the
 * plain per-head loops (tests/test_cpu_ops.c keeps them as the oracle).
 *
 * The speed comes from the group: the K and V rows of a KV head are read once for up to
 * HEAD_BLOCK of its query heads at a time (the whole group up to 8), in tiles of CPU_TILE
 * tokens, converted in vectors (cpu_tile_body.h). A K tile is transposed (in 8x8 blocks, 4x4
 * in GCC's 4-lane baseline copy) so that the scores of a tile's tokens are the lanes of
 * vectors, each lane summing over c in order; the output accumulators are vectors over
 * channels, each lane summing over tokens in order, and each chunk of a V row is converted
 * once, in registers, for several heads. The scores of a (sequence, KV head) are kept (heads
 * x tokens floats of scratch), so K is read once and V once. The loops that read K/V are
 * built once per instruction-set level (cpu_attention_body.h, cpu_levels.h) and the widest
 * the CPU runs is used; all give the same bits. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/dtype.h"
#include "../../common/error.h"
#include "cpu_kernels.h"
#include "cpu_pool.h"
#include "cpu_vec.h"

/* Query heads per pass over a KV head's rows. */
#define HEAD_BLOCK 8
/* Query heads one pass over a V tile accumulates at once: each converted row serves all of
 * them. */
#define V_HEADS 4
/* The most query heads a pass over a transposed K tile scores at once (a copy's
 * ATTN_S_HEADS): the passes of fewer heads are written for each count up to it. */
#define SCORE_HEADS_MAX 4

/* Where the tokens of one (sequence, KV head) are: n_spans (gslot, valid) pairs, a pair's
 * tokens being rows gslot*rows_per_slot + [0, valid) of pools of `re` elements a row, KV head
 * h at element h*d of each row. */
typedef struct attn_src {
    const int32_t *spans;
    size_t n_spans, rows_per_slot, re, n_tokens;
    const unsigned char *k, *v; /* the pools, offset to KV head h */
} attn_src;

/* Scratch of one thread of a call, on the heap (head_dim is not bounded here by a stack
 * array). */
typedef struct attn_scratch {
    float *sc; /* [HEAD_BLOCK][n_tokens] scores, then read back for the weights */
    float *kt; /* [d][CPU_TILE] a K tile, transposed */
    float *wt; /* [HEAD_BLOCK][CPU_TILE] the weights of a tile */
} attn_scratch;

/* A position in the list: span e, token t of it. */
typedef struct attn_cursor {
    size_t e, t;
} attn_cursor;

/* The byte offsets (in a pool, from KV head h's first element) of the next CPU_TILE listed tokens,
 * in list order, from cur; returns how many there were. Spare entries repeat the first one, so
 * a partial tile reads valid rows. */
static size_t next_tile(const attn_src *s, size_t es, attn_cursor *cur, size_t *off) {
    size_t n = 0;
    while (n < CPU_TILE && cur->e < s->n_spans) {
        if (cur->t >= (size_t)s->spans[2 * cur->e + 1]) {
            cur->e++;
            cur->t = 0;
            continue;
        }
        off[n++] = ((size_t)s->spans[2 * cur->e] * s->rows_per_slot + cur->t) * s->re * es;
        cur->t++;
    }
    for (size_t j = n; j < CPU_TILE && n > 0; j++)
        off[j] = off[0];
    return n;
}

/* The per-instruction-set copies (cpu_attention_body.h) and the pick among them. */
typedef void attend_block_fn(const attn_src *s, const float *q, uint32_t nh, size_t d, fkv_dtype dt,
                             float scale, const attn_scratch *w, float *out);

/* Each pass keeps eight vectors as sums: CPU_LEVEL_LANES / 4 heads x CPU_TILE /
 * CPU_LEVEL_LANES tokens when scoring, V_HEADS heads x V_WIDE vectors of channels when
 * accumulating V, enough to hide an add's latency. */
#define V_WIDE 2
#define CPU_LEVEL_BODY "cpu_attention_body.h"
#include "cpu_levels.h"

/* The copy of `isa` (the choice changes the speed, never the results); NULL for a level this
 * build or CPU lacks. */
static attend_block_fn *pick_block(cpu_isa isa) {
    cpu_isa level;
    return cpu_isa_level(isa, &level) ? CPU_LEVEL_PICK(attend_block, level) : NULL;
}

/* Every query head of KV head h over s's tokens: q and out are the group's rows. */
static void attend_group(const fkv_kv_geom *g, const attn_src *s, const float *q, float scale,
                         attend_block_fn *block, const attn_scratch *w, float *out) {
    size_t d = g->head_dim;
    if (s->n_tokens == 0) {
        memset(out, 0, (size_t)g->group * d * sizeof *out);
        return;
    }
    for (uint32_t i0 = 0; i0 < g->group; i0 += HEAD_BLOCK) {
        uint32_t nh = g->group - i0 < HEAD_BLOCK ? g->group - i0 : HEAD_BLOCK;
        block(s, q + (size_t)i0 * d, nh, d, g->dtype, scale, w, out + (size_t)i0 * d);
    }
}

/* The list of (b, h), checked: its tokens in *n_tokens. */
static fkv_status check_list(const fkv_kv_geom *g, uint32_t b, uint32_t h, const int32_t *heads,
                             const int32_t *entries, size_t n_entries, size_t pool_rows,
                             size_t *n_tokens) {
    size_t at = 2 * ((size_t)b * g->n_kv_heads + h);
    int32_t first = heads[at], count = heads[at + 1];
    if (first < 0 || count < 0 || (size_t)first + (size_t)count > n_entries)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "attention: (seq %u, KV head %u) lists entries [%d, %d + %d), "
                         "the entry buffer holds %zu",
                         b, h, first, first, count, n_entries);
    const int32_t *list = entries + 2 * (size_t)first;
    *n_tokens = 0;
    for (int32_t e = 0; e < count; e++) {
        int32_t gslot = list[2 * e], valid = list[2 * e + 1];
        if (valid < 0 || (uint32_t)valid > g->page_size)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "attention: entry %d has %d valid tokens (page size %u)", first + e,
                             valid, g->page_size);
        /* Only the valid rows must exist: a dense buffer seen as slots may end in a
         * partial page. */
        if (gslot < 0 || !cpu_rows_in_pool((int64_t)gslot * g->page_size, (size_t)valid, pool_rows))
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "attention: entry %d has gslot %d (%d tokens), the pool "
                             "holds %zu rows",
                             first + e, gslot, valid, pool_rows);
        /* lists sharing entries can name more tokens than a 32-bit size_t counts */
        if ((size_t)valid > SIZE_MAX - *n_tokens)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY,
                             "attention: (seq %u, KV head %u) lists more tokens than host "
                             "memory holds",
                             b, h);
        *n_tokens += (size_t)valid;
    }
    return FKV_OK;
}

/* One call's (sequence, KV head) items, run by the pool's threads (cpu_pool.h): each thread
 * has its own scratch, allocated when it takes its first item and big enough for the longest
 * list. Which thread computes an item does not change its bits. */
typedef struct attn_call {
    const fkv_kv_geom *g;
    attend_block_fn *block;
    const float *q;
    float *out, scale;
    size_t max_tokens;
    /* Copies of the checked lists, which the items read instead of the caller's buffers (an
     * output overlapping them cannot change a list after its check): item i's entries are
     * lists[2 * first[i]...], count[i] of them, tokens[i] tokens. NULL lists: dense, one
     * span of max_tokens rows. */
    const int32_t *lists;
    const size_t *first, *count, *tokens;
    const unsigned char *k, *v;
    attn_scratch *scratch; /* [cpu_pool_width] */
    float **bases;         /* [cpu_pool_width] the scratch allocations, NULL until used */
} attn_call;

static fkv_status call_scratch(attn_call *c, uint32_t worker, attn_scratch **w) {
    *w = &c->scratch[worker];
    if (c->bases[worker] != NULL)
        return FKV_OK;
    size_t heads = c->g->group < HEAD_BLOCK ? c->g->group : HEAD_BLOCK;
    size_t d = c->g->head_dim, tile = (size_t)CPU_TILE * d, rest = tile + HEAD_BLOCK * CPU_TILE;
    /* a size that wraps (a 32-bit size_t) is memory the host does not have */
    size_t sc = c->max_tokens <= (SIZE_MAX / sizeof(float) - rest) / heads ? heads * c->max_tokens
                                                                           : SIZE_MAX;
    float *base = sc < SIZE_MAX ? malloc((sc + rest) * sizeof(float)) : NULL;
    if (base == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY,
                         "attention: no host memory for the scores of %zu tokens", c->max_tokens);
    c->bases[worker] = base;
    (*w)->sc = base;
    (*w)->kt = base + sc;
    (*w)->wt = (*w)->kt + tile;
    return FKV_OK;
}

/* Item b * n_kv_heads + h: every query head of KV head h of sequence b. */
static fkv_status attend_item(void *ctx, uint32_t worker, size_t item) {
    attn_call *c = ctx;
    const fkv_kv_geom *g = c->g;
    size_t d = g->head_dim, es = fkv_dtype_size(g->dtype), h = item % g->n_kv_heads;
    const int32_t dense_span[2] = {0, (int32_t)c->max_tokens};
    attn_src s = {.spans = dense_span,
                  .n_spans = 1,
                  .rows_per_slot = 0,
                  .re = (size_t)g->n_kv_heads * d,
                  .n_tokens = c->max_tokens,
                  .k = c->k + h * d * es,
                  .v = c->v + h * d * es};
    if (c->lists != NULL) {
        s.spans = c->lists + 2 * c->first[item];
        s.n_spans = c->count[item];
        s.rows_per_slot = g->page_size;
        s.n_tokens = c->tokens[item];
    }
    attn_scratch *w;
    fkv_status st = call_scratch(c, worker, &w);
    if (st != FKV_OK)
        return st;
    size_t q0 = item * g->group * d;
    attend_group(g, &s, c->q + q0, c->scale, c->block, w, c->out + q0);
    return FKV_OK;
}

/* Runs n_items items of c for n_seqs sequences, reading `elements` K/V elements in all (the
 * pool's measure of work) from pools of kv_bytes each, then frees the scratch. */
static fkv_status run_call(attn_call *c, size_t n_items, uint32_t n_seqs, size_t kv_bytes,
                           uint64_t elements, cpu_pool *pool) {
    const fkv_kv_geom *g = c->g;
    size_t q_bytes = (size_t)n_seqs * g->n_kv_heads * g->group * g->head_dim * sizeof(float);
    cpu_span spans[] = {cpu_span_of(c->q, q_bytes), cpu_span_of(c->out, q_bytes),
                        cpu_span_of(c->k, kv_bytes), cpu_span_of(c->v, kv_bytes)};
    pool = cpu_pool_for(pool, spans, sizeof spans / sizeof *spans);
    uint32_t width = cpu_pool_width(pool);
    c->scratch = malloc(width * sizeof *c->scratch);
    c->bases = calloc(width, sizeof *c->bases);
    fkv_status st = c->scratch && c->bases
                        ? cpu_pool_run(pool, n_items, elements, attend_item, c)
                        : fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "attention: no host memory");
    for (uint32_t i = 0; c->bases && i < width; i++)
        free(c->bases[i]);
    free(c->bases);
    free(c->scratch);
    return st;
}

fkv_status cpu_attention(const fkv_kv_geom *g, const float *q, uint32_t n_seqs,
                         const int32_t *heads, const int32_t *entries, size_t n_entries,
                         const void *kpool, const void *vpool, size_t pool_rows, float scale,
                         float *out, cpu_isa isa, cpu_pool *pool) {
    attend_block_fn *block = pick_block(isa);
    if (block == NULL)
        return fkv_error(FKV_ERR_UNSUPPORTED, "attention: this CPU or build lacks that level");
    size_t n_items = (size_t)n_seqs * g->n_kv_heads, n_listed = 0;
    size_t *index = malloc((3 * n_items + 1) * sizeof *index); /* first, count, tokens */
    if (index == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "attention: no host memory for %zu lists",
                         n_items);
    size_t *first = index, *count = index + n_items, *tokens = index + 2 * n_items;
    size_t max_tokens = 0;
    uint64_t all_tokens = 0; /* the pool's measure, which a 32-bit size_t could wrap */
    fkv_status st = FKV_OK;
    for (size_t i = 0; i < n_items && st == FKV_OK; i++) {
        st = check_list(g, (uint32_t)(i / g->n_kv_heads), (uint32_t)(i % g->n_kv_heads), heads,
                        entries, n_entries, pool_rows, &tokens[i]);
        max_tokens = tokens[i] > max_tokens ? tokens[i] : max_tokens;
        all_tokens += tokens[i];
        first[i] = n_listed;
        count[i] = st == FKV_OK ? (size_t)heads[2 * i + 1] : 0;
        if (count[i] > SIZE_MAX / (4 * sizeof(int32_t)) - n_listed) /* lists sharing entries */
            st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY,
                           "attention: the lists name more entries than host memory holds");
        n_listed += count[i];
    }
    int32_t *lists = st == FKV_OK ? malloc((2 * n_listed + 1) * sizeof *lists) : NULL;
    if (st == FKV_OK && lists == NULL)
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "attention: no host memory for %zu entries",
                       n_listed);
    /* Nothing was written since the check: the copies are the checked lists. */
    for (size_t i = 0; i < n_items && st == FKV_OK; i++)
        memcpy(lists + 2 * first[i], entries + 2 * (size_t)heads[2 * i],
               2 * count[i] * sizeof *lists);
    if (st == FKV_OK) {
        attn_call c = {.g = g, .block = block, .q = q, .out = out, .scale = scale,
                       .max_tokens = max_tokens, .lists = lists, .first = first,
                       .count = count, .tokens = tokens, .k = kpool, .v = vpool};
        size_t kv_bytes = pool_rows * g->n_kv_heads * g->head_dim * fkv_dtype_size(g->dtype);
        st = run_call(&c, n_items, n_seqs, kv_bytes, 2 * all_tokens * g->head_dim, pool);
    }
    free(lists);
    free(index);
    return st;
}

fkv_status cpu_attention_dense(const fkv_kv_geom *g, const float *q, uint32_t n_tokens,
                               const void *k, const void *v, float scale, float *out, cpu_isa isa,
                               cpu_pool *pool) {
    attend_block_fn *block = pick_block(isa);
    if (block == NULL)
        return fkv_error(FKV_ERR_UNSUPPORTED, "attention: this CPU or build lacks that level");
    /* The whole buffer is one span of n_tokens rows starting at row 0 (the caller checked
     * that n_tokens fits int32 and the buffers). */
    attn_call c = {.g = g, .block = block, .q = q, .out = out, .scale = scale,
                   .max_tokens = n_tokens, .k = k, .v = v};
    size_t kv_elements = (size_t)n_tokens * g->n_kv_heads * g->head_dim;
    return run_call(&c, g->n_kv_heads, 1, kv_elements * fkv_dtype_size(g->dtype), 2 * kv_elements,
                    pool);
}
