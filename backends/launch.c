#include "launch.h"

#include "../common/error.h"

/* ---- attention ---- */

uint32_t fkv_attention_dq(uint32_t n) {
    return (n + FKV_ATTENTION_PAD - 1) / FKV_ATTENTION_PAD * FKV_ATTENTION_PAD;
}

size_t fkv_attention_floats(uint32_t heads, uint32_t head_dim, uint32_t tile) {
    size_t dq = fkv_attention_dq(head_dim), tp = fkv_attention_dq(tile);
    return (size_t)heads * dq + (size_t)tile * (dq + 4) + (size_t)heads * tp + 3 * (size_t)heads;
}

/* The largest tile (halving from max_tile, not below min_tile) that fits with `heads`; 0 if
 * none does. */
static uint32_t fit_tile(uint32_t heads, uint32_t d, uint32_t max_tile, uint32_t min_tile,
                         size_t avail) {
    for (uint32_t t = max_tile; t >= min_tile && t > 0; t /= 2)
        if (fkv_attention_floats(heads, d, t) <= avail)
            return t;
    return 0;
}

fkv_status fkv_plan_attention(const char *backend, const char *op, const fkv_kv_geom *g,
                              size_t avail_bytes, uint32_t max_tile, const char *limit,
                              fkv_attention_plan *p) {
    size_t avail = avail_bytes / sizeof(float);
    uint32_t top = g->page_size < max_tile ? g->page_size : max_tile;
    uint32_t floor8 = top < 8 ? top : 8; /* a barrier per token or two costs more than a re-read */
    uint32_t n0 = (g->group + FKV_ATTENTION_MAX_HEADS - 1) / FKV_ATTENTION_MAX_HEADS;
    for (int pass = 0; pass < 2; pass++) {
        uint32_t last = 0;
        for (uint32_t n = n0; n <= g->group; n++) {
            uint32_t heads = (g->group + n - 1) / n;
            if (heads == last)
                continue;
            last = heads;
            uint32_t tile = fit_tile(heads, g->head_dim, top, pass == 0 ? floor8 : 1, avail);
            if (tile) {
                p->heads = heads;
                p->blocks = (g->group + heads - 1) / heads;
                p->tile = tile;
                p->floats = fkv_attention_floats(heads, g->head_dim, tile);
                return FKV_OK;
            }
        }
    }
    return fkv_error(FKV_ERR_UNSUPPORTED,
                     "%s %s: group %u x head_dim %u needs %zu bytes of shared memory even one "
                     "query head and one token at a time, the device has %zu (%s)",
                     backend, op, g->group, g->head_dim,
                     fkv_attention_floats(1, g->head_dim, 1) * sizeof(float), avail_bytes, limit);
}

uint32_t fkv_attention_threads(const fkv_kv_geom *g, const fkv_attention_plan *p, uint32_t vec) {
    uint32_t t = fkv_attention_dq(g->head_dim) / vec;
    return p->heads > t ? p->heads : t;
}

fkv_status fkv_check_attention_threads(const char *backend, const char *op, const fkv_kv_geom *g,
                                       const fkv_attention_plan *p, uint32_t vec,
                                       size_t max_threads, const char *limit) {
    uint32_t t = fkv_attention_threads(g, p, vec);
    if (t <= max_threads)
        return FKV_OK;
    return fkv_error(FKV_ERR_UNSUPPORTED,
                     "%s %s: head_dim %u needs work groups of %u work items (one per %u "
                     "channels), the kernel allows %zu (%s)",
                     backend, op, g->head_dim, t, vec, max_threads, limit);
}

uint32_t fkv_attention_splits(uint64_t n_groups, uint32_t compute_units, uint32_t forced) {
    if (forced > 0)
        return forced;
    uint64_t target = 2 * (uint64_t)compute_units;
    if (n_groups >= target)
        return 1;
    uint64_t s = (target + n_groups - 1) / n_groups;
    return s > FKV_MAX_AUTO_SPLITS ? FKV_MAX_AUTO_SPLITS : (uint32_t)s;
}

uint64_t fkv_attention_partials_bytes(const fkv_kv_geom *g, uint64_t n_bh, uint32_t splits) {
    return n_bh * splits * g->group * ((uint64_t)g->head_dim + 2) * sizeof(float);
}

/* ---- scores ---- */

fkv_status fkv_plan_scores(const char *backend, const fkv_kv_geom *g, size_t avail_bytes,
                           const char *limit, fkv_scores_plan *p) {
    size_t floats = avail_bytes / sizeof(float);
    size_t fit = floats > FKV_SCORES_PAD ? (floats - FKV_SCORES_PAD) / g->head_dim : 0;
    if (fit == 0)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "%s scores: one query head of head_dim %u needs %zu bytes of shared "
                         "memory, the device has %zu (%s)",
                         backend, g->head_dim,
                         ((size_t)g->head_dim + FKV_SCORES_PAD) * sizeof(float), avail_bytes,
                         limit);
    uint32_t most = fit < g->group ? (uint32_t)fit : g->group;
    p->blocks = (g->group + most - 1) / most;
    p->heads = (g->group + p->blocks - 1) / p->blocks; /* balanced blocks */
    return FKV_OK;
}

uint32_t fkv_scores_chunks(uint64_t n_rows, uint32_t compute_units) {
    uint64_t chunks = (2 * (uint64_t)compute_units + n_rows - 1) / n_rows;
    return chunks < 1 ? 1 : chunks > 16 ? 16 : (uint32_t)chunks;
}

/* ---- copy kernels ---- */

fkv_copy_words fkv_pick_copy_words(const fkv_kv_geom *g, uint64_t addr_bits, int with_4) {
    size_t elem = fkv_dtype_size(g->dtype);
    size_t row = (size_t)g->head_dim * elem;
    fkv_copy_words c;
    if (row % 16 == 0 && addr_bits % 16 == 0)
        c.word = 16;
    else if (with_4 && row % 4 == 0 && addr_bits % 4 == 0)
        c.word = 4;
    else
        c.word = elem;
    c.row_words = (uint32_t)(row / c.word);
    return c;
}

/* ---- KV pools ---- */

uint32_t fkv_pool_slots(const fkv_kv_geom *g, size_t k_size, size_t v_size) {
    size_t slot_bytes = fkv_slot_bytes(g);
    size_t n = (k_size < v_size ? k_size : v_size) / slot_bytes;
    size_t max_slots = UINT32_MAX / g->page_size;
    return (uint32_t)(n < max_slots ? n : max_slots);
}
