/* The engine of the data specs (conformance.h): allocates a spec's arrays on a device, runs its
 * calls in order, reads the outputs back, and compares a device under test with the
 * reference:
 *  - bytes outside the output region (guards) must be unchanged;
 *  - inside it, elements the reference left untouched must be untouched on the DUT too;
 *  - the others are compared: relative L2 for values, exactly for integers and bytes, and in
 *    strict mode every value within the strict bound too. A NaN or Inf on the DUT fails
 *    unless the reference has the same one there (the append spec stores some on purpose).
 * Also the knobs (the one place the specs set backend options) and the runner of one op
 * case. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/check.h"
#include "common/dtype.h"
#include "conformance.h"

/* ---- knobs: backend options (docs/backend-options.md) ---- */

fkv_status cf_force_splits(const cf_dev *d, int splits) {
    char value[16];
    snprintf(value, sizeof value, "%d", splits);
    return fkv_op_set_option(d->dev, "attention_splits", value);
}

fkv_status cf_limit_shared(const cf_dev *d, size_t bytes, cf_result *r) {
    char value[32];
    snprintf(value, sizeof value, "%zu", bytes);
    fkv_status st = fkv_op_set_option(d->dev, "shared_memory_bytes", value);
    if (st != FKV_OK || bytes == 0 || r == NULL)
        return st;
    /* the limit must really split the group, or the variant tests nothing new */
    fkv_kv_geom g = {.n_kv_heads = 1, .group = 8, .head_dim = 128, .page_size = 16,
                     .dtype = FKV_F32};
    fkv_attention_plan ap;
    if (fkv_plan_attention("spec", "attention", &g, bytes, 32, "spec", &ap) != FKV_OK ||
        ap.blocks < 2)
        cf_fail(r, "%zu bytes of shared memory keep the group in one attention work group",
                bytes);
    fkv_scores_plan sp;
    if (bytes <= CF_SMALL_SHARED &&
        (fkv_plan_scores("spec", &g, bytes, "spec", &sp) != FKV_OK || sp.blocks < 2))
        cf_fail(r, "%zu bytes of shared memory keep the group in one scores work group", bytes);
    return FKV_OK;
}

/* ---- building ---- */

cf_arr *cf_add_arr(cf_spec *s, const char *label, size_t size) {
    if (s->n_arr == CF_MAX_ARRS) {
        s->full = 1;
        memset(&s->spare, 0, sizeof s->spare);
        return &s->spare;
    }
    cf_arr *a = &s->arr[s->n_arr++];
    memset(a, 0, sizeof *a);
    a->label = label;
    a->size = size;
    a->init = cf_alloc(size);
    if (a->init)
        memset(a->init, CF_FILL, size);
    return a;
}

void *cf_add_input(cf_spec *s, const char *label, size_t off, size_t bytes) {
    cf_arr *a = cf_add_arr(s, label, off + bytes);
    return a->init ? a->init + off : NULL;
}

cf_arr *cf_add_output(cf_spec *s, const char *label, size_t lead, size_t bytes, size_t trail,
                      cf_elem elem) {
    cf_arr *a = cf_add_arr(s, label, lead + bytes + trail);
    a->output = 1;
    a->pay_off = lead;
    a->pay_size = bytes;
    a->elem = elem;
    return a;
}

void cf_set_shape(cf_arr *a, uint32_t n0, const char *d0, uint32_t n1, const char *d1,
                  uint32_t n2, const char *d2) {
    a->shape[0] = n0, a->shape[1] = n1, a->shape[2] = n2;
    a->dims[0] = d0, a->dims[1] = d1, a->dims[2] = d2;
}

cf_call *cf_add_call(cf_spec *s, cf_kind kind, fkv_queue q) {
    if (s->n_call == CF_MAX_CALLS) {
        s->full = 1;
        return NULL;
    }
    cf_call *c = &s->call[s->n_call++];
    memset(c, 0, sizeof *c);
    c->kind = kind;
    c->q = q;
    c->wait[0] = c->wait[1] = -1;
    for (size_t i = 0; i < sizeof c->b / sizeof *c->b; i++)
        c->b[i].arr = -1;
    return c;
}

int cf_spec_ok(const cf_spec *s) {
    if (s->full)
        return 0;
    for (uint32_t i = 0; i < s->n_arr; i++)
        if (s->arr[i].init == NULL)
            return 0;
    return 1;
}

void cf_spec_free(cf_spec *s) {
    if (s == NULL)
        return;
    for (uint32_t i = 0; i < s->n_arr; i++)
        free(s->arr[i].init);
    free(s);
}

const char *cf_kind_name(cf_kind k) {
    static const char *const names[] = {
        "write", "read", "copy", "marker", "write_regions", "append", "summarize", "scores",
        "cosine_flags", "pack_hnd", "scatter_hnd", "recall_direct", "attention",
        "attention_dense", "select_pages", "scores_check"};
    return (unsigned)k < sizeof names / sizeof *names ? names[k] : "?";
}

/* ---- execution ---- */

typedef struct run_state {
    const cf_dev *d;
    const cf_spec *s;
    fkv_bbuf *buf[CF_MAX_ARRS];
    fkv_bhost *pinned[CF_MAX_ARRS];
    unsigned char *host[CF_MAX_ARRS]; /* host and pinned arrays: their memory */
    fkv_bevent *ev[CF_MAX_CALLS];
    int waited[CF_MAX_CALLS];
} run_state;

static fkv_status wait_ev(const cf_dev *d, fkv_status st, fkv_bevent **ev) {
    if (st == FKV_OK && *ev)
        st = fkv_op_event_wait(d->dev, 1, ev);
    if (*ev)
        fkv_op_event_release(d->dev, *ev);
    *ev = NULL;
    return st;
}

static void finish_all(const cf_dev *d) {
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        fkv_op_finish(d->dev, (fkv_queue)q);
}

static fkv_bbuf *B(const run_state *rs, cf_ref r) { return r.arr < 0 ? NULL : rs->buf[r.arr]; }
static unsigned char *H(const run_state *rs, cf_ref r) {
    return r.arr < 0 ? NULL : rs->host[r.arr] + r.off;
}

static fkv_status enqueue(run_state *rs, uint32_t i) {
    const cf_dev *d = rs->d;
    const cf_spec *s = rs->s;
    const cf_call *c = &s->call[i];
    const fkv_kv_geom *g = &s->g;
    fkv_bevent *wait[2];
    uint32_t n_wait = 0;
    for (int k = 0; k < 2; k++)
        if (c->wait[k] >= 0)
            wait[n_wait++] = rs->ev[c->wait[k]];
    fkv_deps deps = {n_wait, n_wait ? wait : NULL, c->no_event ? NULL : &rs->ev[i]};
    const cf_ref *b = c->b;
    switch (c->kind) {
    case CF_WRITE:
        return fkv_op_write(d->dev, c->q, deps, B(rs, b[0]), b[0].off, H(rs, b[1]), c->size);
    case CF_READ:
        return fkv_op_read(d->dev, c->q, deps, B(rs, b[0]), b[0].off, H(rs, b[1]), c->size);
    case CF_COPY:
        return fkv_op_copy(d->dev, c->q, deps, B(rs, b[0]), b[0].off, B(rs, b[1]), b[1].off,
                           c->size);
    case CF_MARKER:
        return fkv_op_marker(d->dev, c->q, deps);
    case CF_WRITE_REGIONS: {
        fkv_copy_region *reg = calloc(c->n ? c->n : 1, sizeof *reg);
        if (reg == NULL)
            return FKV_ERR_OUT_OF_HOST_MEMORY;
        for (uint32_t k = 0; k < c->n; k++) {
            const cf_region *sr = &s->region[c->first + k];
            reg[k].src = rs->host[sr->arr] + sr->src_off;
            reg[k].dst_offset = sr->dst_off;
            reg[k].size = sr->size;
        }
        fkv_status st =
            fkv_op_write_regions(d->dev, c->q, deps, B(rs, b[0]), c->n, c->n ? reg : NULL);
        memset(reg, 0xff, (c->n ? c->n : 1) * sizeof *reg); /* read during the call only */
        free(reg);
        return st;
    }
    case CF_APPEND:
        return fkv_op_append(d->dev, c->q, deps, g, B(rs, b[0]), b[0].off, B(rs, b[1]), b[1].off,
                             c->n, B(rs, b[2]), b[2].off, B(rs, b[3]), B(rs, b[4]));
    case CF_SUMMARIZE:
        return fkv_op_summarize(d->dev, c->q, deps, g, B(rs, b[0]), c->n, B(rs, b[1]), b[1].off,
                                B(rs, b[2]));
    case CF_SCORES:
        return fkv_op_scores(d->dev, c->q, deps, g, B(rs, b[0]), b[0].off, c->n, B(rs, b[1]),
                             b[1].off, B(rs, b[4]), b[4].off, B(rs, b[2]), B(rs, b[3]), b[3].off);
    case CF_COSINE:
        return fkv_op_cosine_flags(d->dev, c->q, deps, g, B(rs, b[0]), b[0].off, B(rs, b[1]),
                                   b[1].off, B(rs, b[4]), b[4].off, c->n, c->x, B(rs, b[2]),
                                   b[2].off, B(rs, b[3]), b[3].off);
    case CF_SCORES_CHECK:
        return fkv_op_scores_check(d->dev, c->q, deps, g, B(rs, b[0]), b[0].off, c->n,
                                   B(rs, b[1]), b[1].off, B(rs, b[2]), B(rs, b[3]), b[3].off,
                                   b[7].off, B(rs, b[4]), b[4].off, c->x, B(rs, b[5]), b[5].off,
                                   B(rs, b[6]), b[6].off);
    case CF_PACK:
        return fkv_op_pack_hnd(d->dev, c->q, deps, g, B(rs, b[0]), B(rs, b[1]), c->n, B(rs, b[2]),
                               b[2].off, B(rs, b[3]), b[3].off);
    case CF_SCATTER:
        return fkv_op_scatter_hnd(d->dev, c->q, deps, g, B(rs, b[0]), b[0].off, c->n, B(rs, b[1]),
                                  b[1].off, B(rs, b[2]), B(rs, b[3]));
    case CF_RECALL: {
        const fkv_bhost *hosts[3] = {rs->pinned[b[0].arr], c->size > 1 ? rs->pinned[b[4].arr] : NULL,
                                     c->size > 2 ? rs->pinned[b[5].arr] : NULL};
        /* this device's words of the hosts after the unit entries, as the recall engine
         * writes them (direct_host_words), into the input's room (ops.c); waited for, as the
         * words live here */
        int32_t words[3 * FKV_DIRECT_HOST_INTS];
        size_t at = (size_t)c->n * FKV_DIRECT_UNIT_INTS * sizeof(int32_t);
        size_t bytes = (size_t)c->size * fkv_op_direct_host_ints(d->dev) * sizeof(int32_t);
        if (bytes) {
            fkv_bevent *written = NULL;
            fkv_op_direct_host_words(d->dev, (uint32_t)c->size, hosts, words);
            fkv_status st = wait_ev(d,
                                    fkv_op_write(d->dev, c->q, (fkv_deps){0, NULL, &written},
                                                 B(rs, b[1]), b[1].off + at, words, bytes),
                                    &written);
            if (st != FKV_OK)
                return st;
        }
        return fkv_op_recall_direct(d->dev, c->q, deps, g, (uint32_t)c->size, hosts, c->n,
                                    s->units_src + c->first, B(rs, b[1]), b[1].off, B(rs, b[2]),
                                    B(rs, b[3]));
    }
    case CF_ATTENTION:
        return fkv_op_attention(d->dev, c->q, deps, g, B(rs, b[0]), b[0].off, c->n, B(rs, b[1]),
                                b[1].off, B(rs, b[2]), b[2].off, B(rs, b[3]), B(rs, b[4]), c->x,
                                B(rs, b[5]), b[5].off);
    case CF_DENSE:
        return fkv_op_attention_dense(d->dev, c->q, deps, g, B(rs, b[0]), b[0].off, c->n,
                                      B(rs, b[1]), B(rs, b[2]), c->x, B(rs, b[3]), b[3].off);
    case CF_SELECT: {
        fkv_select_params p = {.first_page = c->first, .k = (uint32_t)c->size,
                               .reduce = (fkv_group_reduce)c->reduce, .temp_scale = c->x};
        return fkv_op_select_pages(d->dev, c->q, deps, g, c->n, B(rs, b[0]), b[0].off,
                                   B(rs, b[3]), b[3].off, B(rs, b[1]), b[1].off, &p, B(rs, b[2]),
                                   b[2].off);
    }
    }
    return FKV_ERR_INVALID_ARGUMENT;
}

static fkv_status setup(run_state *rs) {
    const cf_dev *d = rs->d;
    for (uint32_t i = 0; i < rs->s->n_arr; i++) {
        const cf_arr *a = &rs->s->arr[i];
        fkv_status st = FKV_OK;
        if (a->mem == CF_HOST) {
            rs->host[i] = malloc(a->size);
            if (rs->host[i] == NULL)
                return FKV_ERR_OUT_OF_HOST_MEMORY;
        } else if (a->mem == CF_PINNED) {
            void *p = NULL;
            st = fkv_op_host_alloc(d->dev, a->size, &rs->pinned[i], &p);
            rs->host[i] = p;
        } else {
            st = fkv_op_buffer_alloc(d->dev, a->size, &rs->buf[i]);
            fkv_bevent *ev = NULL;
            if (st == FKV_OK)
                st = wait_ev(d,
                             fkv_op_write(d->dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev},
                                          rs->buf[i], 0, a->init, a->size),
                             &ev);
        }
        if (st != FKV_OK)
            return st;
        if (rs->host[i])
            memcpy(rs->host[i], a->init, a->size);
    }
    return FKV_OK;
}

static char where_buf[64]; /* the failing step, for messages (the runner is single-threaded) */

fkv_status cf_spec_execute(const cf_dev *d, const cf_spec *s, unsigned char **out,
                           const char **where) {
    run_state *rs = calloc(1, sizeof *rs);
    if (rs == NULL)
        return FKV_ERR_OUT_OF_HOST_MEMORY;
    rs->d = d;
    rs->s = s;
    *where = "setup";
    fkv_status st = setup(rs);
    for (uint32_t i = 0; i < s->n_call && st == FKV_OK; i++) {
        snprintf(where_buf, sizeof where_buf, "call %u (%s)", i, cf_kind_name(s->call[i].kind));
        *where = where_buf;
        st = enqueue(rs, i);
        if (st == FKV_OK && !s->call[i].detached && rs->ev[i]) {
            st = fkv_op_event_wait(d->dev, 1, &rs->ev[i]);
            rs->waited[i] = 1;
        }
    }
    if (st == FKV_OK) {
        *where = "the last commands";
        for (uint32_t i = 0; i < s->n_call && st == FKV_OK; i++)
            if (rs->ev[i] && !rs->waited[i])
                st = fkv_op_event_wait(d->dev, 1, &rs->ev[i]);
        for (int q = 0; q < FKV_QUEUE_COUNT && st == FKV_OK; q++)
            st = fkv_op_finish(d->dev, (fkv_queue)q);
    }
    if (st != FKV_OK)
        finish_all(d); /* nothing may still use the buffers when they are freed */
    for (uint32_t i = 0; i < s->n_call; i++)
        if (rs->ev[i])
            fkv_op_event_release(d->dev, rs->ev[i]);
    for (uint32_t i = 0; i < s->n_arr && st == FKV_OK; i++) {
        const cf_arr *a = &s->arr[i];
        if (!a->output)
            continue;
        *where = "read-back";
        out[i] = malloc(a->size);
        if (out[i] == NULL) {
            st = FKV_ERR_OUT_OF_HOST_MEMORY;
            break;
        }
        if (rs->host[i]) {
            memcpy(out[i], rs->host[i], a->size);
            continue;
        }
        fkv_bevent *ev = NULL;
        st = wait_ev(d,
                     fkv_op_read(d->dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev}, rs->buf[i], 0,
                                 out[i], a->size),
                     &ev);
    }
    for (uint32_t i = 0; i < s->n_arr; i++) {
        if (rs->buf[i])
            fkv_op_buffer_free(d->dev, rs->buf[i]);
        if (rs->pinned[i])
            fkv_op_host_free(d->dev, rs->pinned[i]);
        else
            free(rs->host[i]);
    }
    free(rs);
    return st;
}

static void free_outs(unsigned char **out) {
    for (int i = 0; i < CF_MAX_ARRS; i++) {
        free(out[i]);
        out[i] = NULL;
    }
}

/* ---- comparison ---- */

static size_t elem_size(cf_elem e, fkv_dtype dt) {
    switch (e) {
    case CF_F32:
    case CF_I32:
        return 4;
    case CF_STORE:
        return fkv_dtype_size(dt);
    default:
        return 1;
    }
}

static double elem_value(const unsigned char *p, cf_elem e, fkv_dtype dt, size_t i) {
    if (e == CF_STORE)
        return fkv_load(p, dt, i);
    float f;
    memcpy(&f, p + 4 * i, 4);
    return f;
}

int32_t cf_i32_at(const unsigned char *p, size_t i) {
    int32_t v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}

float cf_f32_at(const unsigned char *p, size_t i) {
    float v;
    memcpy(&v, p + 4 * i, 4);
    return v;
}

/* Guard bytes of an output: the first changed one, or -1. */
static long changed_guard(const cf_arr *a, const unsigned char *out) {
    for (size_t i = 0; i < a->size; i++) {
        if (i >= a->pay_off && i < a->pay_off + a->pay_size)
            continue;
        if (out[i] != a->init[i])
            return (long)i;
    }
    return -1;
}

/* "seq 1 q head 3 ch 17" for element i of a shaped payload, else "#i". */
static void element_name(const cf_arr *a, size_t i, char *buf, size_t size) {
    if (a->shape[0] == 0) {
        snprintf(buf, size, "#%zu", i);
        return;
    }
    size_t c = i % a->shape[2], b = i / a->shape[2] % a->shape[1],
           r = i / ((size_t)a->shape[2] * a->shape[1]);
    snprintf(buf, size, "%s %zu %s %zu %s %zu", a->dims[0], r, a->dims[1], b, a->dims[2], c);
}

/* A non-finite DUT value is right only where the reference has the same one. */
static int same_nonfinite(double x, double y) {
    return (isnan(x) && isnan(y)) || (isinf(x) && isinf(y) && (x > 0) == (y > 0));
}

typedef struct cmp_stats {
    size_t compared, stray, first_stray, mism, first_mism, worst_i, strict_bad, first_strict;
    double num, den, worst, worst_x, worst_y;
    long nonfinite;
} cmp_stats;

static void compare_values(const cf_arr *a, fkv_dtype dt, const unsigned char *ref,
                           const unsigned char *dut, double strict, cmp_stats *m) {
    size_t es = elem_size(a->elem, dt), n = a->pay_size / es;
    const unsigned char *ini = a->init + a->pay_off;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *ie = ini + i * es, *re = ref + i * es, *de = dut + i * es;
        if (memcmp(re, ie, es) == 0) { /* the reference did not write it */
            if (memcmp(de, ie, es) != 0 && m->stray++ == 0)
                m->first_stray = i;
            continue;
        }
        m->compared++;
        if (a->elem == CF_BYTES || a->elem == CF_I32) {
            if (memcmp(re, de, es) != 0 && m->mism++ == 0)
                m->first_mism = i;
            continue;
        }
        double x = elem_value(dut, a->elem, dt, i), y = elem_value(ref, a->elem, dt, i);
        if (strict >= 0 && (strict == 0 ? memcmp(re, de, es) != 0
                                        : !(fabs(x - y) <= strict * (1.0 + fabs(y))) &&
                                              !same_nonfinite(x, y)) &&
            m->strict_bad++ == 0)
            m->first_strict = i;
        if (!isfinite(y) || !isfinite(x)) {
            if (!same_nonfinite(x, y) && m->nonfinite < 0)
                m->nonfinite = (long)i;
            continue;
        }
        m->num += (x - y) * (x - y);
        m->den += y * y;
        if (fabs(x - y) > m->worst) {
            m->worst = fabs(x - y);
            m->worst_i = i;
            m->worst_x = x;
            m->worst_y = y;
        }
    }
}

static void compare_arr(const cf_arr *a, fkv_dtype dt, const unsigned char *ref,
                        const unsigned char *dut, double tol, double strict, cf_result *r) {
    long gi = changed_guard(a, dut);
    if (gi >= 0)
        cf_fail(r, "%s: guard byte %ld %s the output changed from 0x%02x to 0x%02x", a->label,
                (size_t)gi < a->pay_off ? (long)(a->pay_off - (size_t)gi)
                                        : gi - (long)(a->pay_off + a->pay_size) + 1,
                (size_t)gi < a->pay_off ? "before" : "after", a->init[gi], dut[gi]);
    if (a->custom)
        return;
    cmp_stats m;
    memset(&m, 0, sizeof m);
    m.worst = -1;
    m.nonfinite = -1;
    ref += a->pay_off;
    dut += a->pay_off;
    compare_values(a, dt, ref, dut, strict, &m);
    char name[96];
    if (m.stray) {
        element_name(a, m.first_stray, name, sizeof name);
        cf_fail(r, "%s: %zu element(s) written that the reference leaves untouched, first at %s",
                a->label, m.stray, name);
    }
    if (a->elem == CF_BYTES || a->elem == CF_I32) {
        if (m.mism) {
            size_t f = m.first_mism;
            if (a->elem == CF_I32)
                cf_fail(r, "%s: %zu of %zu values differ, first #%zu (%d, reference %d)", a->label,
                        m.mism, m.compared, f, cf_i32_at(dut, f), cf_i32_at(ref, f));
            else
                cf_fail(r, "%s: %zu of %zu bytes differ, first #%zu (0x%02x, reference 0x%02x)",
                        a->label, m.mism, m.compared, f, dut[f], ref[f]);
        }
        if (m.mism == 0) /* a mismatch has failed already; record the exact match */
            cf_check_error(r, 0.0, tol, "%s", a->label);
        return;
    }
    if (m.strict_bad) {
        size_t f = m.first_strict;
        element_name(a, f, name, sizeof name);
        cf_fail(r, "%s: %zu of %zu values beyond the strict bound %g, first at %s: %.9g, "
                "reference %.9g", a->label, m.strict_bad, m.compared, strict, name,
                elem_value(dut, a->elem, dt, f), elem_value(ref, a->elem, dt, f));
    }
    if (m.nonfinite >= 0) {
        element_name(a, (size_t)m.nonfinite, name, sizeof name);
        cf_fail(r, "%s: NaN/Inf at %s (%.9g, reference %.9g)", a->label, name,
                elem_value(dut, a->elem, dt, (size_t)m.nonfinite),
                elem_value(ref, a->elem, dt, (size_t)m.nonfinite));
        return;
    }
    double err = m.den > 0 ? sqrt(m.num / m.den) : sqrt(m.num);
    element_name(a, m.worst_i, name, sizeof name);
    cf_check_error(r, err, tol, "%s (%zu values; worst at %s: %.6g, reference %.6g)", a->label,
                   m.compared, name, m.worst_x, m.worst_y);
}

static void determinism(const cf_spec *s, unsigned char **a, unsigned char **b, cf_result *r) {
    r->deterministic = 1;
    for (uint32_t i = 0; i < s->n_arr; i++) {
        const cf_arr *x = &s->arr[i];
        if (!x->output)
            continue;
        for (size_t k = 0; k < x->size; k++)
            if (a[i][k] != b[i][k]) {
                cf_nondet(r, "%s differs between two runs (byte %zu)", x->label, k);
                return;
            }
    }
}

/* ---- one op case ---- */

/* One knob of a variant: 0 set; -1 the case skips (no such option) or fails (refused). */
static int knob_set(fkv_status st, const char *option, cf_result *r) {
    if (st == FKV_OK)
        return 0;
    if (st == FKV_ERR_UNSUPPORTED)
        cf_skip(r, "the device has no option %s", option);
    else
        cf_fail(r, "setting %s: %s", option, cf_error_text(st));
    return -1;
}

/* The knobs a variant sets; 0 when the case may run. */
static int apply_knobs(const cf_env *env, const cf_case *c, cf_result *r) {
    if (c->splits >= 0 &&
        knob_set(cf_force_splits(&env->dut, c->splits), "attention_splits", r) != 0)
        return -1;
    if (c->shared &&
        knob_set(cf_limit_shared(&env->dut, c->shared, r), "shared_memory_bytes", r) != 0)
        return -1;
    return r->status == CF_FAIL ? -1 : 0;
}

static void restore_knobs(const cf_env *env, const cf_case *c) {
    if (c->splits >= 0)
        cf_force_splits(&env->dut, 0);
    if (c->shared)
        cf_limit_shared(&env->dut, 0, NULL);
}

void cf_run_op_case(const cf_env *env, const cf_case *c, cf_result *r) {
    if (apply_knobs(env, c, r) != 0) {
        restore_knobs(env, c);
        return;
    }
    cf_run_fn check = cf_contract_check(c->op);
    if (check) { /* not a data spec: its own checks */
        check(env, c, r);
        restore_knobs(env, c);
        return;
    }
    cf_spec *s = NULL;
    int built = cf_spec_build(env, c, &s, r);
    if (built <= 0) {
        if (built < 0)
            cf_fail(r, "out of host memory building the case");
        cf_spec_free(s);
        restore_knobs(env, c);
        return;
    }
    double tol = cf_tolerance(c->op, s->g.dtype);
    double strict = env->strict ? cf_tolerance_strict(c->op, s->g.dtype) : -1;
    unsigned char *ref[CF_MAX_ARRS] = {0}, *dut[CF_MAX_ARRS] = {0}, *dut2[CF_MAX_ARRS] = {0};
    const char *where;
    fkv_status st = cf_spec_execute(&env->ref, s, ref, &where);
    if (st != FKV_OK) {
        cf_fail(r, "the reference failed (%s: %s): a runner bug", where, cf_error_text(st));
        goto out;
    }
    st = cf_spec_execute(&env->dut, s, dut, &where);
    if (!cf_dut_ran(r, st, where))
        goto out;
    for (uint32_t i = 0; i < s->n_arr; i++)
        if (s->arr[i].output)
            compare_arr(&s->arr[i], s->g.dtype, ref[i], dut[i], tol, strict, r);
    if (s->compare)
        s->compare(s, ref, dut, tol, r);
    if (env->determinism) {
        st = cf_spec_execute(&env->dut, s, dut2, &where);
        if (st != FKV_OK)
            cf_fail(r, "second run: %s failed: %s", where, cf_error_text(st));
        else
            determinism(s, dut, dut2, r);
    }
    if (s->uses_fallback && r->status == CF_PASS && r->message[0] == '\0')
        snprintf(r->message, sizeof r->message, "optional entry absent: generic fallback tested");
out:
    free_outs(ref);
    free_outs(dut);
    free_outs(dut2);
    cf_spec_free(s);
    restore_knobs(env, c);
}
