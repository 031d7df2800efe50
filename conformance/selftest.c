/* Self-tests of the runner: the DUT's ops table with one entry wrapped to misbehave in a known
 * way, so that a run shows the runner catches it (or, for the benign kinds, accepts it and
 * reports it). The wrappers use only ops of the same table, so they work on any backend; the
 * read-modify-write ones block the calling thread, which is fine for a self-test. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "conformance.h"

const char *const cf_selftest_kinds = "attention, guard, scores, ties, nondet, unsupported";

static const fkv_backend_ops *base;
static fkv_backend_ops table;
static unsigned long calls;

static fkv_status wait_release(fkv_bdev *dev, fkv_status st, fkv_bevent **ev) {
    if (st == FKV_OK && *ev)
        st = base->event_wait(dev, 1, ev);
    if (*ev)
        base->event_release(dev, *ev);
    *ev = NULL;
    return st;
}

/* Ends a wrapper: *done (when asked for) completes after everything enqueued on q so far. */
static fkv_status signal_done(fkv_bdev *dev, fkv_queue q, fkv_deps deps, fkv_status st) {
    if (deps.done) {
        *deps.done = NULL;
        if (st == FKV_OK)
            st = base->marker(dev, q, (fkv_deps){0, NULL, deps.done});
    }
    return st;
}

/* "attention": the real attention, then query head 1's output overwritten with head 0's (a
 * head-indexing bug), enqueued after it on the same in-order queue. */
static fkv_status heads_swapped(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                                const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                                size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                                float scale, fkv_bbuf *out, size_t out_off) {
    fkv_bevent *ev = NULL;
    fkv_status st = base->attention(dev, q, (fkv_deps){deps.n_wait, deps.wait, &ev}, g, qbuf,
                                    q_off, n_seqs, heads, heads_off, entries, entries_off, kpool,
                                    vpool, scale, out, out_off);
    if (st != FKV_OK)
        return signal_done(dev, q, deps, st);
    size_t row = (size_t)g->head_dim * 4;
    if (n_seqs > 0 && g->n_kv_heads * g->group > 1)
        st = base->copy(dev, q, (fkv_deps){1, &ev, deps.done}, out, out_off + row, out, out_off,
                        row);
    else
        st = base->marker(dev, q, (fkv_deps){1, &ev, deps.done});
    base->event_release(dev, ev);
    return st;
}

/* "guard": the real attention, then 4 bytes written just past the end of the output (an
 * off-by-one bound). */
static fkv_status overruns(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                           const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                           const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                           size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                           float scale, fkv_bbuf *out, size_t out_off) {
    fkv_bevent *ev = NULL;
    fkv_status st = base->attention(dev, q, (fkv_deps){deps.n_wait, deps.wait, &ev}, g, qbuf,
                                    q_off, n_seqs, heads, heads_off, entries, entries_off, kpool,
                                    vpool, scale, out, out_off);
    if (st != FKV_OK)
        return signal_done(dev, q, deps, st);
    size_t bytes = (size_t)n_seqs * g->n_kv_heads * g->group * g->head_dim * 4;
    if (n_seqs > 0)
        st = base->copy(dev, q, (fkv_deps){1, &ev, deps.done}, out, out_off + bytes, out, out_off,
                        4);
    else
        st = base->marker(dev, q, (fkv_deps){1, &ev, deps.done});
    base->event_release(dev, ev);
    return st;
}

/* "nondet": after the real attention completed, the first output value moves up by 1 to 7
 * ulps depending on a call counter (read, nudge, write back), so two runs of the same
 * inputs differ unless a run makes a multiple of 7 calls (the attention spec makes 3). */
static fkv_status nudged(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                         const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                         const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries,
                         size_t entries_off, const fkv_bbuf *kpool, const fkv_bbuf *vpool,
                         float scale, fkv_bbuf *out, size_t out_off) {
    fkv_bevent *ev = NULL;
    fkv_status st = base->attention(dev, q, (fkv_deps){deps.n_wait, deps.wait, &ev}, g, qbuf,
                                    q_off, n_seqs, heads, heads_off, entries, entries_off, kpool,
                                    vpool, scale, out, out_off);
    st = wait_release(dev, st, &ev);
    if (st == FKV_OK && n_seqs > 0) {
        float x = 0;
        st = wait_release(dev, base->read(dev, q, (fkv_deps){0, NULL, &ev}, out, out_off, &x, 4),
                          &ev);
        for (unsigned long i = 0; i <= calls % 7; i++)
            x = nextafterf(x, INFINITY);
        calls++;
        if (st == FKV_OK)
            st = wait_release(
                dev, base->write(dev, q, (fkv_deps){0, NULL, &ev}, out, out_off, &x, 4), &ev);
    }
    return signal_done(dev, q, deps, st);
}

/* Applies f to every score block the call wrote (read back, changed, written back). */
static fkv_status rewrite_scores(fkv_bdev *dev, fkv_queue q, const fkv_kv_geom *g,
                                 const fkv_bbuf *desc, size_t desc_off, uint32_t n_seqs,
                                 fkv_bbuf *out, size_t out_off, int kind) {
    fkv_bevent *ev = NULL;
    size_t desc_bytes = (size_t)n_seqs * FKV_SCORES_DESC_INTS * 4;
    int32_t *d = malloc(desc_bytes + 4);
    if (d == NULL)
        return FKV_ERR_OUT_OF_HOST_MEMORY;
    fkv_status st = wait_release(
        dev, base->read(dev, q, (fkv_deps){0, NULL, &ev}, desc, desc_off, d, desc_bytes), &ev);
    size_t hq = (size_t)g->n_kv_heads * g->group;
    for (uint32_t b = 0; b < n_seqs && st == FKV_OK; b++) {
        const int32_t *db = d + (size_t)FKV_SCORES_DESC_INTS * b;
        size_t n_pages = (size_t)db[1], n = hq * n_pages;
        if (n == 0)
            continue;
        float *s = malloc(n * 4);
        if (s == NULL) {
            st = FKV_ERR_OUT_OF_HOST_MEMORY;
            break;
        }
        size_t at = out_off + (size_t)db[2] * 4;
        st = wait_release(dev, base->read(dev, q, (fkv_deps){0, NULL, &ev}, out, at, s, n * 4),
                          &ev);
        for (size_t h = 0; h < hq && st == FKV_OK; h++) {
            float *row = s + h * n_pages, amax = 0;
            for (size_t j = 0; j < n_pages; j++)
                amax = fabsf(row[j]) > amax ? fabsf(row[j]) : amax;
            for (size_t j = 0; j < n_pages; j++)
                row[j] = kind == 0 ? -row[j] /* sign bug */
                                   : row[j] + 1e-7f * (float)j * amax; /* later pages win ties */
        }
        if (st == FKV_OK)
            st = wait_release(dev, base->write(dev, q, (fkv_deps){0, NULL, &ev}, out, at, s, n * 4),
                              &ev);
        free(s);
    }
    free(d);
    return st;
}

static fkv_status scores_common(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                                const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                                size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                                size_t out_off, int kind) {
    fkv_bevent *ev = NULL;
    fkv_status st = base->scores(dev, q, (fkv_deps){deps.n_wait, deps.wait, &ev}, g, qbuf, q_off,
                                 n_seqs, desc, desc_off, mask, mask_off, summaries, out, out_off);
    st = wait_release(dev, st, &ev);
    if (st == FKV_OK)
        st = rewrite_scores(dev, q, g, desc, desc_off, n_seqs, out, out_off, kind);
    return signal_done(dev, q, deps, st);
}

static fkv_status scores_negated(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                 const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                                 const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                                 size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                                 size_t out_off) {
    return scores_common(dev, q, deps, g, qbuf, q_off, n_seqs, desc, desc_off, mask, mask_off,
                         summaries, out, out_off, 0);
}

static fkv_status scores_tilted(fkv_bdev *dev, fkv_queue q, fkv_deps deps, const fkv_kv_geom *g,
                                const fkv_bbuf *qbuf, size_t q_off, uint32_t n_seqs,
                                const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *mask,
                                size_t mask_off, const fkv_bbuf *summaries, fkv_bbuf *out,
                                size_t out_off) {
    return scores_common(dev, q, deps, g, qbuf, q_off, n_seqs, desc, desc_off, mask, mask_off,
                         summaries, out, out_off, 1);
}

/* "unsupported": attention refuses with FKV_ERR_UNSUPPORTED, as a device lacking a feature
 * does: its cases must be SKIP with the reason, counted as skipped and never as passed. */
static fkv_status attention_refused(fkv_bdev *dev, fkv_queue q, fkv_deps deps,
                                    const fkv_kv_geom *g, const fkv_bbuf *qbuf, size_t q_off,
                                    uint32_t n_seqs, const fkv_bbuf *heads, size_t heads_off,
                                    const fkv_bbuf *entries, size_t entries_off,
                                    const fkv_bbuf *kpool, const fkv_bbuf *vpool, float scale,
                                    fkv_bbuf *out, size_t out_off) {
    (void)dev, (void)q, (void)g, (void)qbuf, (void)q_off, (void)n_seqs, (void)heads;
    (void)heads_off, (void)entries, (void)entries_off, (void)kpool, (void)vpool, (void)scale;
    (void)out, (void)out_off;
    if (deps.done)
        *deps.done = NULL;
    return fkv_error(FKV_ERR_UNSUPPORTED, "self-test: this device has no paged attention");
}

const fkv_backend_ops *cf_broken_ops(const fkv_backend_ops *ops, const char *kind) {
    base = ops;
    table = *ops;
    calls = 0;
    if (strcmp(kind, "attention") == 0) {
        table.attention = heads_swapped;
        table.attention_dense = NULL; /* the generic fallback then runs the broken entry */
    } else if (strcmp(kind, "guard") == 0) {
        table.attention = overruns;
        table.attention_dense = NULL;
    } else if (strcmp(kind, "nondet") == 0) {
        table.attention = nudged;
        table.attention_dense = NULL;
    } else if (strcmp(kind, "unsupported") == 0) {
        table.attention = attention_refused;
        table.attention_dense = NULL;
    } else if (strcmp(kind, "scores") == 0) {
        table.scores = scores_negated;
    } else if (strcmp(kind, "ties") == 0) {
        table.scores = scores_tilted;
    } else {
        return NULL;
    }
    return &table;
}
