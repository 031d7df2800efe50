/* Op cases: every entry of the device interface called through the ops table on random
 * inputs, on the reference and on the DUT, outputs compared.
 *
 * A case is described as a list of arrays (inputs and outputs, each a device buffer or host
 * memory) plus a launch function that enqueues the op on those buffers and waits for it. The
 * engine allocates and fills the arrays on a device, launches, reads the outputs back and
 * frees everything, so one description runs on both devices. Outputs start filled with
 * CF_FILL (or random data for ops that update in place); after the op:
 *  - bytes outside the output region (guards) must be unchanged;
 *  - inside it, elements the reference left untouched must be untouched on the DUT too;
 *  - the others are compared: relative L2 for values, exactly for integers and bytes; any
 *    NaN or Inf on the DUT fails. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "conformance.h"

#define MAX_ARRS 8
#define POOL_TRAIL 64 /* trailing guard of a pool: less than one row, so no extra row */

typedef enum cf_elem { E_BYTES, E_F32, E_I32, E_STORE } cf_elem;

typedef struct cf_arr {
    const char *label;
    size_t size;         /* bytes, guards included */
    unsigned char *init; /* contents before the op */
    int output;
    int host;            /* host memory handed to the launch instead of a device buffer */
    size_t pay_off, pay_size; /* the output region; bytes outside it are guards */
    cf_elem elem;
    int custom; /* payload compared by the spec's compare hook */
    uint32_t shape[3]; /* payload shape, for naming an element in messages (0: unknown) */
    const char *dims[3];
} cf_arr;

typedef struct cf_spec cf_spec;
typedef fkv_status (*cf_launch_fn)(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                   unsigned char **host);

struct cf_spec {
    fkv_kv_geom g;
    cf_arr arr[MAX_ARRS];
    uint32_t n_arr;
    uint32_t n;      /* rows, pages, units, sequences or tokens, by op */
    float tau, scale;
    uint64_t units_host[16]; /* recall_direct: unit offsets in the host allocation */
    uint32_t n_regions;      /* write_regions */
    size_t reg_src[8], reg_dst[8], reg_size[8];
    cf_launch_fn launch;
    void (*compare)(const cf_spec *s, unsigned char **ref, unsigned char **dut, double tol,
                    cf_result *r);
    int uses_fallback; /* the DUT lacks the optional entry: its generic fallback runs */
};

/* ---- building specs ---- */

static size_t elem_size(cf_elem e, fkv_dtype dt) {
    switch (e) {
    case E_F32:
    case E_I32:
        return 4;
    case E_STORE:
        return fkv_dtype_size(dt);
    default:
        return 1;
    }
}

static cf_arr *add_arr(cf_spec *s, const char *label, size_t size) {
    cf_arr *a = &s->arr[s->n_arr++];
    memset(a, 0, sizeof *a);
    a->label = label;
    a->size = size;
    a->init = cf_alloc(size);
    if (a->init)
        memset(a->init, CF_FILL, size);
    return a;
}

/* An input whose data starts `off` bytes into its buffer; returns the data. */
static void *add_input(cf_spec *s, const char *label, size_t off, size_t bytes) {
    cf_arr *a = add_arr(s, label, off + bytes);
    return a->init ? a->init + off : NULL;
}

static cf_arr *add_output(cf_spec *s, const char *label, size_t lead, size_t bytes, size_t trail,
                          cf_elem elem) {
    cf_arr *a = add_arr(s, label, lead + bytes + trail);
    a->output = 1;
    a->pay_off = lead;
    a->pay_size = bytes;
    a->elem = elem;
    return a;
}

static int spec_ok(const cf_spec *s) {
    for (uint32_t i = 0; i < s->n_arr; i++)
        if (s->arr[i].init == NULL)
            return 0;
    return 1;
}

static void spec_free(cf_spec *s) {
    for (uint32_t i = 0; i < s->n_arr; i++)
        free(s->arr[i].init);
    s->n_arr = 0;
}

/* Random values stored in dtype at dst (n elements). plain: N(0,1) only. */
static void fill_store(cf_rng *r, void *dst, fkv_dtype dt, size_t n, int plain) {
    for (size_t i = 0; i < n; i++) {
        float v;
        cf_fill_values(r, &v, 1);
        if (plain)
            v = cf_normal(r);
        fkv_store(dst, dt, i, v);
    }
}

static void fill_f32(cf_rng *r, float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = cf_normal(r);
}

static fkv_kv_geom kv_geom(const cf_geom *cg) {
    fkv_kv_geom g = {cf_kv_heads(cg), cg->group, cg->head_dim, cg->page_size, cg->dtype};
    return g;
}

/* ---- execution ---- */

static fkv_status wait_ev(const cf_dev *d, fkv_status st, fkv_bevent **ev) {
    if (st == FKV_OK && *ev)
        st = d->ops->event_wait(d->bd, 1, ev);
    if (*ev)
        d->ops->event_release(d->bd, *ev);
    *ev = NULL;
    return st;
}

static void finish_all(const cf_dev *d) {
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        d->ops->finish(d->bd, (fkv_queue)q);
}

/* Runs a spec on one device; out[i] receives a malloc'd copy of every output array. On error,
 * the message is in fkv_last_error() prefixed by the step that failed (in `where`). */
static fkv_status spec_execute(const cf_dev *d, const cf_spec *s, unsigned char **out,
                               const char **where) {
    fkv_bbuf *b[MAX_ARRS] = {0};
    unsigned char *host[MAX_ARRS] = {0};
    fkv_status st = FKV_OK;
    *where = "setup";
    for (uint32_t i = 0; i < s->n_arr && st == FKV_OK; i++) {
        const cf_arr *a = &s->arr[i];
        if (a->host) {
            host[i] = malloc(a->size);
            if (host[i] == NULL)
                st = FKV_ERR_OUT_OF_HOST_MEMORY;
            else
                memcpy(host[i], a->init, a->size);
            continue;
        }
        st = d->ops->buffer_alloc(d->bd, a->size, &b[i]);
        if (st == FKV_OK) {
            fkv_bevent *ev = NULL;
            st = wait_ev(d, d->ops->write(d->bd, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev},
                                          b[i], 0, a->init, a->size),
                         &ev);
        }
    }
    if (st == FKV_OK) {
        *where = "op";
        st = s->launch(d, s, b, host);
    }
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
        if (a->host) {
            memcpy(out[i], host[i], a->size);
            continue;
        }
        fkv_bevent *ev = NULL;
        st = wait_ev(d, d->ops->read(d->bd, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev}, b[i], 0,
                                     out[i], a->size),
                     &ev);
    }
    if (st != FKV_OK)
        finish_all(d); /* nothing may still use the buffers when they are freed */
    for (uint32_t i = 0; i < s->n_arr; i++) {
        if (b[i])
            d->ops->buffer_free(d->bd, b[i]);
        free(host[i]);
    }
    return st;
}

static void free_outs(unsigned char **out) {
    for (int i = 0; i < MAX_ARRS; i++) {
        free(out[i]);
        out[i] = NULL;
    }
}

/* ---- comparison ---- */

static double elem_value(const unsigned char *p, cf_elem e, fkv_dtype dt, size_t i) {
    if (e == E_STORE)
        return fkv_load(p, dt, i);
    float f;
    memcpy(&f, p + 4 * i, 4);
    return f;
}

static int32_t elem_i32(const unsigned char *p, size_t i) {
    int32_t v;
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

static void set_shape(cf_arr *a, uint32_t n0, const char *d0, uint32_t n1, const char *d1,
                      uint32_t n2, const char *d2) {
    a->shape[0] = n0, a->shape[1] = n1, a->shape[2] = n2;
    a->dims[0] = d0, a->dims[1] = d1, a->dims[2] = d2;
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

static void compare_arr(const cf_arr *a, fkv_dtype dt, const unsigned char *ref,
                        const unsigned char *dut, double tol, cf_result *r) {
    long gi = changed_guard(a, dut);
    if (gi >= 0)
        cf_fail(r, "%s: guard byte %ld %s the output changed from 0x%02x to 0x%02x", a->label,
                (size_t)gi < a->pay_off ? (long)(a->pay_off - (size_t)gi)
                                        : gi - (long)(a->pay_off + a->pay_size) + 1,
                (size_t)gi < a->pay_off ? "before" : "after", a->init[gi], dut[gi]);
    if (a->custom)
        return;
    size_t es = elem_size(a->elem, dt), n = a->pay_size / es;
    const unsigned char *ini = a->init + a->pay_off;
    ref += a->pay_off;
    dut += a->pay_off;
    double num = 0, den = 0, worst = -1, worst_x = 0, worst_y = 0;
    size_t stray = 0, first_stray = 0, mism = 0, first_mism = 0, compared = 0, worst_i = 0;
    long nonfinite = -1;
    for (size_t i = 0; i < n; i++) {
        const unsigned char *ie = ini + i * es, *re = ref + i * es, *de = dut + i * es;
        if (memcmp(re, ie, es) == 0) { /* the reference did not write it */
            if (memcmp(de, ie, es) != 0 && stray++ == 0)
                first_stray = i;
            continue;
        }
        compared++;
        if (a->elem == E_BYTES || a->elem == E_I32) {
            if (memcmp(re, de, es) != 0 && mism++ == 0)
                first_mism = i;
            continue;
        }
        double x = elem_value(dut, a->elem, dt, i), y = elem_value(ref, a->elem, dt, i);
        if (!isfinite(x) && nonfinite < 0)
            nonfinite = (long)i;
        num += (x - y) * (x - y);
        den += y * y;
        if (fabs(x - y) > worst) {
            worst = fabs(x - y);
            worst_i = i;
            worst_x = x;
            worst_y = y;
        }
    }
    char name[96];
    if (stray) {
        element_name(a, first_stray, name, sizeof name);
        cf_fail(r, "%s: %zu element(s) written that the reference leaves untouched, first at %s",
                a->label, stray, name);
    }
    if (a->elem == E_BYTES || a->elem == E_I32) {
        if (mism) {
            if (a->elem == E_I32)
                cf_fail(r, "%s: %zu of %zu values differ, first #%zu (%d, reference %d)", a->label,
                        mism, compared, first_mism, elem_i32(dut, first_mism),
                        elem_i32(ref, first_mism));
            else
                cf_fail(r, "%s: %zu of %zu bytes differ, first #%zu (0x%02x, reference 0x%02x)",
                        a->label, mism, compared, first_mism, dut[first_mism], ref[first_mism]);
        }
        if (mism == 0) /* a mismatch has failed already; record the exact match */
            cf_check_error(r, 0.0, tol, "%s", a->label);
        return;
    }
    if (nonfinite >= 0) {
        element_name(a, (size_t)nonfinite, name, sizeof name);
        cf_fail(r, "%s: NaN/Inf at %s", a->label, name);
        return;
    }
    double err = den > 0 ? sqrt(num / den) : sqrt(num);
    element_name(a, worst_i, name, sizeof name);
    cf_check_error(r, err, tol, "%s (%zu values; worst at %s: %.6g, reference %.6g)", a->label,
                   compared, name, worst_x, worst_y);
}

static void compare_spec(const cf_spec *s, unsigned char **ref, unsigned char **dut, double tol,
                         cf_result *r) {
    for (uint32_t i = 0; i < s->n_arr; i++)
        if (s->arr[i].output)
            compare_arr(&s->arr[i], s->g.dtype, ref[i], dut[i], tol, r);
    if (s->compare)
        s->compare(s, ref, dut, tol, r);
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

/* ---- launches (enqueue on COMPUTE, wait) ---- */

#define DONE_EV (fkv_deps){0, NULL, &ev}
#define CQ FKV_QUEUE_COMPUTE

static fkv_status launch_append(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                unsigned char **h) {
    (void)h;
    fkv_bevent *ev = NULL;
    return wait_ev(d, d->ops->append(d->bd, CQ, DONE_EV, &s->g, b[0], CF_IN_OFF, b[1], CF_IN_OFF,
                                     s->n, b[2], CF_IN_OFF, b[3], b[4]),
                   &ev);
}

static fkv_status launch_summarize(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                   unsigned char **h) {
    (void)h;
    fkv_bevent *ev = NULL;
    return wait_ev(d, d->ops->summarize(d->bd, CQ, DONE_EV, &s->g, b[0], s->n, b[1], CF_IN_OFF,
                                        b[2]),
                   &ev);
}

static fkv_status launch_scores(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                unsigned char **h) {
    (void)h;
    fkv_bevent *ev = NULL;
    return wait_ev(d, d->ops->scores(d->bd, CQ, DONE_EV, &s->g, b[0], CF_IN_OFF, s->n, b[1],
                                     CF_IN_OFF, b[2], b[3], CF_GUARD),
                   &ev);
}

static fkv_status launch_cosine(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                unsigned char **h) {
    (void)h;
    fkv_bevent *ev = NULL;
    return wait_ev(d, d->ops->cosine_flags(d->bd, CQ, DONE_EV, &s->g, b[0], CF_IN_OFF, b[1],
                                           CF_IN_OFF, s->n, s->tau, b[2], CF_GUARD, b[3],
                                           CF_GUARD),
                   &ev);
}

static fkv_status launch_pack(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                              unsigned char **h) {
    (void)h;
    fkv_bevent *ev = NULL;
    return wait_ev(d, d->ops->pack_hnd(d->bd, CQ, DONE_EV, &s->g, b[0], b[1], s->n, b[2],
                                       CF_IN_OFF, b[3], CF_GUARD),
                   &ev);
}

static fkv_status launch_scatter(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                 unsigned char **h) {
    (void)h;
    fkv_bevent *ev = NULL;
    return wait_ev(d, d->ops->scatter_hnd(d->bd, CQ, DONE_EV, &s->g, b[0], CF_IN_OFF, s->n, b[1],
                                          CF_IN_OFF, b[2], b[3]),
                   &ev);
}

/* arr 0 is the host allocation's contents (host memory of the spec, copied into pinned
 * memory here), 1 the unit list, 2/3 the pools. */
static fkv_status launch_recall(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                unsigned char **h) {
    fkv_bhost *host = NULL;
    void *ptr = NULL;
    fkv_status st = d->ops->host_alloc(d->bd, s->arr[0].size, &host, &ptr);
    if (st != FKV_OK)
        return st;
    memcpy(ptr, h[0], s->arr[0].size);
    fkv_bevent *ev = NULL;
    st = wait_ev(d, d->ops->recall_direct(d->bd, CQ, DONE_EV, &s->g, host, s->n, s->units_host,
                                          b[1], CF_IN_OFF, b[2], b[3]),
                 &ev);
    if (st != FKV_OK)
        finish_all(d);
    d->ops->host_free(d->bd, host);
    return st;
}

static fkv_status launch_attention(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                   unsigned char **h) {
    (void)h;
    fkv_bevent *ev = NULL;
    return wait_ev(d, d->ops->attention(d->bd, CQ, DONE_EV, &s->g, b[0], CF_IN_OFF, s->n, b[1],
                                        CF_IN_OFF, b[2], CF_IN_OFF, b[3], b[4], s->scale, b[5],
                                        CF_GUARD),
                   &ev);
}

static fkv_status launch_dense(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                               unsigned char **h) {
    (void)h;
    fkv_bevent *ev = NULL;
    return wait_ev(d, fkv_op_attention_dense(d->ops, d->bd, CQ, DONE_EV, &s->g, b[0], CF_IN_OFF,
                                             s->n, b[1], b[2], s->scale, b[3], CF_GUARD),
                   &ev);
}

/* arr 0: host source bytes, arr 1: destination. */
static fkv_status launch_regions(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                 unsigned char **h) {
    fkv_copy_region reg[8];
    for (uint32_t i = 0; i < s->n_regions; i++) {
        reg[i].src = h[0] + s->reg_src[i];
        reg[i].dst_offset = CF_GUARD + s->reg_dst[i];
        reg[i].size = s->reg_size[i];
    }
    fkv_bevent *ev = NULL;
    return wait_ev(d, fkv_op_write_regions(d->ops, d->bd, FKV_QUEUE_TRANSFER, DONE_EV, b[1],
                                           s->n_regions, reg),
                   &ev);
}

/* Copies through all three queues, each command waiting on the previous one's event, from
 * pinned and from pageable host memory; then a marker, one wait on all the events, finish.
 * arr 0: pinned source bytes (host), 1: device source, 2/3: device outputs, 4: host output. */
static fkv_status launch_copies(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                unsigned char **h) {
    const fkv_backend_ops *o = d->ops;
    fkv_bhost *pinned = NULL;
    void *ptr = NULL;
    fkv_bevent *ev[6] = {0};
    fkv_status st = o->host_alloc(d->bd, s->arr[0].size, &pinned, &ptr);
    if (st != FKV_OK)
        return st;
    memcpy(ptr, h[0], s->arr[0].size);
    unsigned char *pageable = h[0] + 1400; /* 10 bytes of plain heap memory */
    st = o->write(d->bd, FKV_QUEUE_TRANSFER, (fkv_deps){0, NULL, &ev[0]}, b[2], CF_GUARD + 3, ptr,
                  1201);
    if (st == FKV_OK)
        st = o->copy(d->bd, FKV_QUEUE_COMPUTE, (fkv_deps){1, &ev[0], &ev[1]}, b[2],
                     CF_GUARD + 1300, b[1], 17, 700);
    if (st == FKV_OK)
        st = o->copy(d->bd, FKV_QUEUE_BACKGROUND, (fkv_deps){1, &ev[1], &ev[2]}, b[3],
                     CF_GUARD + 5, b[2], CF_GUARD + 103, 1000);
    if (st == FKV_OK)
        st = o->write(d->bd, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev[3]}, b[3],
                      CF_GUARD + 1010, pageable, 10);
    if (st == FKV_OK)
        st = o->read(d->bd, FKV_QUEUE_TRANSFER, (fkv_deps){2, &ev[2], &ev[4]}, b[3], CF_GUARD + 2,
                     h[4] + CF_GUARD, 1018);
    if (st == FKV_OK)
        st = o->marker(d->bd, FKV_QUEUE_COMPUTE, (fkv_deps){1, &ev[4], &ev[5]});
    if (st == FKV_OK)
        st = o->event_wait(d->bd, 6, ev);
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        fkv_status f = o->finish(d->bd, (fkv_queue)q);
        if (st == FKV_OK)
            st = f;
    }
    for (int i = 0; i < 6; i++)
        if (ev[i])
            o->event_release(d->bd, ev[i]);
    o->host_free(d->bd, pinned);
    return st;
}

/* arr 0: the memory that is imported (host output), arr 1: source bytes (host). */
static fkv_status launch_import(const cf_dev *d, const cf_spec *s, fkv_bbuf **b,
                                unsigned char **h) {
    (void)b;
    (void)s;
    fkv_bbuf *imp = NULL;
    fkv_status st = d->ops->buffer_import(d->bd, h[0] + CF_GUARD, 512, &imp);
    if (st != FKV_OK)
        return st;
    fkv_bevent *ev = NULL;
    st = wait_ev(d, d->ops->write(d->bd, CQ, DONE_EV, imp, 5, h[1], 100), &ev);
    if (st == FKV_OK)
        st = wait_ev(d, d->ops->copy(d->bd, CQ, DONE_EV, imp, 300, imp, 50, 40), &ev);
    d->ops->buffer_free(d->bd, imp);
    return st;
}

/* ---- builders: one per op; return 0 with r set to skip/fail when the case cannot run ---- */

typedef int (*cf_build_fn)(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                           cf_result *r);

static int build_append(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                        cf_result *r) {
    (void)env;
    (void)r;
    const fkv_kv_geom *g = &s->g;
    size_t re = (size_t)g->n_kv_heads * g->head_dim, es = fkv_dtype_size(g->dtype);
    uint32_t pool_rows = 6 * g->page_size, n = g->page_size + 5;
    s->n = n;
    float *k = add_input(s, "k_src", CF_IN_OFF, n * re * 4);
    float *v = add_input(s, "v_src", CF_IN_OFF, n * re * 4);
    int32_t *rows = add_input(s, "rows", CF_IN_OFF, n * 4);
    set_shape(add_output(s, "kpool", 0, pool_rows * re * es, POOL_TRAIL, E_STORE), pool_rows,
              "row", g->n_kv_heads, "KV head", g->head_dim, "ch");
    set_shape(add_output(s, "vpool", 0, pool_rows * re * es, POOL_TRAIL, E_STORE), pool_rows,
              "row", g->n_kv_heads, "KV head", g->head_dim, "ch");
    if (!spec_ok(s))
        return -1;
    cf_fill_values(rng, k, n * re);
    cf_fill_values(rng, v, n * re);
    uint32_t pick[512];
    cf_pick_distinct(rng, pool_rows, n, pick);
    for (uint32_t i = 0; i < n; i++)
        rows[i] = (int32_t)pick[i];
    s->launch = launch_append;
    (void)c;
    return 1;
}

static int build_summarize(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                           cf_result *r) {
    (void)env;
    (void)c;
    (void)r;
    const fkv_kv_geom *g = &s->g;
    size_t re = (size_t)g->n_kv_heads * g->head_dim, es = fkv_dtype_size(g->dtype);
    uint32_t n_slots = 6, n_summ = 8, n = 4;
    s->n = n;
    void *kpool = add_input(s, "kpool", 0, (size_t)n_slots * g->page_size * re * es);
    int32_t *pages = add_input(s, "pages", CF_IN_OFF, n * 8);
    set_shape(add_output(s, "summaries", 0, (size_t)n_summ * g->n_kv_heads * 2 * g->head_dim * 4,
                         POOL_TRAIL, E_F32),
              n_summ, "summary", g->n_kv_heads, "KV head", 2 * g->head_dim, "min|max ch");
    if (!spec_ok(s))
        return -1;
    fill_store(rng, kpool, g->dtype, (size_t)n_slots * g->page_size * re, 0);
    uint32_t slots[8], summ[8];
    cf_pick_distinct(rng, n_slots, n, slots);
    cf_pick_distinct(rng, n_summ, n, summ);
    for (uint32_t i = 0; i < n; i++) {
        pages[2 * i] = (int32_t)slots[i];
        pages[2 * i + 1] = (int32_t)summ[i];
    }
    s->launch = launch_summarize;
    return 1;
}

static int build_scores(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                        cf_result *r) {
    (void)env;
    (void)c;
    (void)r;
    const fkv_kv_geom *g = &s->g;
    uint32_t hq = g->n_kv_heads * g->group, d = g->head_dim, n_summ = 12;
    /* three sequences: 7 pages, 6 pages at another base, and none (writes nothing); the
     * output blocks leave gaps that must stay untouched */
    int32_t desc_v[9] = {1, 7, 3, 5, 6, (int32_t)(3 + hq * 7 + 5), 0, 0, 0};
    size_t out_len = (size_t)desc_v[5] + hq * 6 + 4;
    s->n = 3;
    float *q = add_input(s, "q", CF_IN_OFF, (size_t)3 * hq * d * 4);
    int32_t *desc = add_input(s, "desc", CF_IN_OFF, sizeof desc_v);
    float *summ = add_input(s, "summaries", 0, (size_t)n_summ * g->n_kv_heads * 2 * d * 4);
    add_output(s, "scores", CF_GUARD, out_len * 4, CF_GUARD, E_F32);
    if (!spec_ok(s))
        return -1;
    fill_f32(rng, q, (size_t)3 * hq * d);
    memcpy(desc, desc_v, sizeof desc_v);
    for (size_t i = 0; i < (size_t)n_summ * g->n_kv_heads; i++) {
        float *mn = summ + i * 2 * d, *mx = mn + d;
        for (uint32_t ch = 0; ch < d; ch++) {
            float a = cf_normal(rng), b = cf_normal(rng);
            mn[ch] = a < b ? a : b;
            mx[ch] = a < b ? b : a;
        }
    }
    s->launch = launch_scores;
    return 1;
}

/* Flags may differ from the reference only where the similarity is within tol of tau. */
static void compare_flags(const cf_spec *s, unsigned char **ref, unsigned char **dut, double tol,
                          cf_result *r) {
    const cf_arr *a = &s->arr[3];
    size_t n = a->pay_size / 4;
    const unsigned char *sims = ref[2] + s->arr[2].pay_off;
    size_t ties = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t x = elem_i32(dut[3] + a->pay_off, i), y = elem_i32(ref[3] + a->pay_off, i);
        if (x == y)
            continue;
        float sim;
        memcpy(&sim, sims + 4 * i, 4);
        if (fabs((double)sim - s->tau) <= tol)
            ties++;
        else
            cf_fail(r, "flags: #%zu is %d, reference %d (sim %.6f, tau %.2f: not a tie)", i, x, y,
                    (double)sim, (double)s->tau);
    }
    if (ties && r->status == CF_PASS)
        snprintf(r->message, sizeof r->message, "%zu flag(s) differ on ties (|sim - tau| <= %g)",
                 ties, tol);
}

/* The arrays of a cosine_flags case of n sequences: q_cur, q_prev, sims, flags (launch_cosine's
 * order); 0 when out of host memory. */
static int cosine_arrays(cf_spec *s, uint32_t n, float tau, float **cur, float **prev) {
    const fkv_kv_geom *g = &s->g;
    size_t hk = g->n_kv_heads, q_bytes = (size_t)n * hk * g->group * g->head_dim * 4;
    s->n = n;
    s->tau = tau;
    *cur = add_input(s, "q_cur", CF_IN_OFF, q_bytes);
    *prev = add_input(s, "q_prev", CF_IN_OFF, q_bytes);
    set_shape(add_output(s, "sims", CF_GUARD, n * hk * 4, CF_GUARD, E_F32), n, "seq",
              (uint32_t)hk, "KV head", 1, "-");
    add_output(s, "flags", CF_GUARD, n * hk * 4, CF_GUARD, E_I32);
    s->launch = launch_cosine;
    return spec_ok(s);
}

static int build_cosine(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                        cf_result *r) {
    (void)env;
    (void)c;
    (void)r;
    const fkv_kv_geom *g = &s->g;
    uint32_t hq = g->n_kv_heads * g->group, d = g->head_dim, n = 3;
    float *cur, *prev;
    if (!cosine_arrays(s, n, 0.9f, &cur, &prev))
        return -1;
    s->arr[3].custom = 1; /* flags: compare_flags allows ties */
    /* previous = current + noise of a per-head size: similarities spread from ~0.55 to ~1 */
    for (uint32_t i = 0; i < n * hq; i++) {
        float beta = 0.05f + 1.5f * cf_uniform(rng);
        for (uint32_t ch = 0; ch < d; ch++) {
            float x = cf_normal(rng);
            cur[(size_t)i * d + ch] = x;
            prev[(size_t)i * d + ch] = x + beta * cf_normal(rng);
        }
    }
    memset(cur + (size_t)2 * hq * d, 0, (size_t)d * 4); /* a zero query: cosine 0 */
    s->compare = compare_flags;
    return 1;
}

/* The NaN rule (backend.h): (seq 0, KV head 0) holds a NaN in q_cur, (seq 1, last KV head) an
 * infinity in q_prev; every other query is the same in both, so its similarity is about 1.
 * Whatever the reference says, the DUT must give NaN similarities and flag 1 there, and flag
 * 0 with similarities near 1 elsewhere (tau is far below). */
static void compare_nan(const cf_spec *s, unsigned char **ref, unsigned char **dut, double tol,
                        cf_result *r) {
    (void)ref;
    uint32_t hk = s->g.n_kv_heads;
    const unsigned char *sims = dut[2] + s->arr[2].pay_off;
    for (size_t i = 0; i < (size_t)s->n * hk; i++) {
        int bad = i == 0 || i == (size_t)2 * hk - 1;
        float sim;
        memcpy(&sim, sims + 4 * i, 4);
        int32_t flag = elem_i32(dut[3] + s->arr[3].pay_off, i);
        if (bad && (!isnan(sim) || flag != 1))
            cf_fail(r, "seq %zu KV head %zu: a query holding a NaN or an infinity gives "
                    "similarity %g and flag %d (want NaN and 1)", i / hk, i % hk, (double)sim,
                    flag);
        if (!bad && (!(fabs((double)sim - 1.0) <= 1e-3 + tol) || flag != 0))
            cf_fail(r, "seq %zu KV head %zu: identical queries give similarity %g and flag %d "
                    "(want 1 and 0)", i / hk, i % hk, (double)sim, flag);
    }
}

static int build_cosine_nan(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                            cf_result *r) {
    (void)env;
    (void)c;
    (void)r;
    const fkv_kv_geom *g = &s->g;
    uint32_t hk = g->n_kv_heads, hq = hk * g->group, d = g->head_dim, n = 2;
    float *cur, *prev;
    if (!cosine_arrays(s, n, -0.5f, &cur, &prev))
        return -1;
    s->arr[2].custom = 1; /* sims: NaN by design, checked by compare_nan */
    fill_f32(rng, cur, (size_t)n * hq * d);
    memcpy(prev, cur, (size_t)n * hq * d * 4);
    cur[(size_t)(g->group - 1) * d + d / 2] = NAN;
    prev[((size_t)hq + (size_t)(hk - 1) * g->group) * d] = INFINITY;
    s->compare = compare_nan;
    return 1;
}

static int build_pack(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                      cf_result *r) {
    (void)env;
    (void)c;
    (void)r;
    const fkv_kv_geom *g = &s->g;
    size_t re = (size_t)g->n_kv_heads * g->head_dim, es = fkv_dtype_size(g->dtype);
    size_t pool = (size_t)6 * g->page_size * re;
    size_t page_bytes = (size_t)g->n_kv_heads * 2 * g->page_size * g->head_dim * es;
    uint32_t n = 3;
    s->n = n;
    void *k = add_input(s, "kpool", 0, pool * es);
    void *v = add_input(s, "vpool", 0, pool * es);
    int32_t *gslots = add_input(s, "gslots", CF_IN_OFF, n * 4);
    set_shape(add_output(s, "dst", CF_GUARD, n * page_bytes, CF_GUARD, E_STORE), n, "page",
              g->n_kv_heads * 2 * g->page_size, "(KV head, K|V, token)", g->head_dim, "ch");
    if (!spec_ok(s))
        return -1;
    fill_store(rng, k, g->dtype, pool, 0);
    fill_store(rng, v, g->dtype, pool, 0);
    uint32_t pick[8];
    cf_pick_distinct(rng, 6, n, pick);
    for (uint32_t i = 0; i < n; i++)
        gslots[i] = (int32_t)pick[i];
    s->launch = launch_pack;
    return 1;
}

/* Pools that an op updates in place start with random stored values. */
static void random_pools(cf_spec *s, cf_rng *rng, uint32_t ka, uint32_t va, size_t elems) {
    fill_store(rng, s->arr[ka].init, s->g.dtype, elems, 0);
    fill_store(rng, s->arr[va].init, s->g.dtype, elems, 0);
}

/* n distinct (slot, head) units. */
static void pick_units(cf_rng *rng, uint32_t n_slots, uint32_t hk, uint32_t n, int32_t *units) {
    uint32_t pick[64];
    cf_pick_distinct(rng, n_slots * hk, n, pick);
    for (uint32_t i = 0; i < n; i++) {
        units[2 * i] = (int32_t)(pick[i] / hk);
        units[2 * i + 1] = (int32_t)(pick[i] % hk);
    }
}

static int build_scatter(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                         cf_result *r) {
    (void)env;
    (void)c;
    (void)r;
    const fkv_kv_geom *g = &s->g;
    size_t re = (size_t)g->n_kv_heads * g->head_dim, es = fkv_dtype_size(g->dtype);
    size_t pool = (size_t)6 * g->page_size * re;
    size_t unit = (size_t)2 * g->page_size * g->head_dim;
    uint32_t n = 5;
    s->n = n;
    void *src = add_input(s, "src", CF_IN_OFF, n * unit * es);
    int32_t *units = add_input(s, "units", CF_IN_OFF, n * 8);
    set_shape(add_output(s, "kpool", 0, pool * es, POOL_TRAIL, E_STORE), (uint32_t)(pool / re),
              "row", g->n_kv_heads, "KV head", g->head_dim, "ch");
    set_shape(add_output(s, "vpool", 0, pool * es, POOL_TRAIL, E_STORE), (uint32_t)(pool / re),
              "row", g->n_kv_heads, "KV head", g->head_dim, "ch");
    if (!spec_ok(s))
        return -1;
    fill_store(rng, src, g->dtype, n * unit, 0);
    pick_units(rng, 6, g->n_kv_heads, n, units);
    random_pools(s, rng, 2, 3, pool);
    s->launch = launch_scatter;
    return 1;
}

static int build_recall(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                        cf_result *r) {
    (void)c;
    if (env->dut.ops->recall_direct == NULL) {
        cf_skip(r, "recall_direct not provided (optional: the core uses staged recall here)");
        return 0;
    }
    const fkv_kv_geom *g = &s->g;
    size_t re = (size_t)g->n_kv_heads * g->head_dim, es = fkv_dtype_size(g->dtype);
    size_t pool = (size_t)6 * g->page_size * re;
    size_t unit_bytes = (size_t)2 * g->page_size * g->head_dim * es;
    uint32_t n = 5;
    s->n = n;
    cf_arr *host = add_arr(s, "host", 8 * unit_bytes + 64);
    int32_t *units = add_input(s, "units", CF_IN_OFF, n * 8);
    set_shape(add_output(s, "kpool", 0, pool * es, POOL_TRAIL, E_STORE), (uint32_t)(pool / re),
              "row", g->n_kv_heads, "KV head", g->head_dim, "ch");
    set_shape(add_output(s, "vpool", 0, pool * es, POOL_TRAIL, E_STORE), (uint32_t)(pool / re),
              "row", g->n_kv_heads, "KV head", g->head_dim, "ch");
    if (!spec_ok(s))
        return -1;
    host->host = 1;
    fill_store(rng, host->init, g->dtype, host->size / es, 0);
    uint32_t pos[8];
    cf_pick_distinct(rng, 7, n, pos);
    for (uint32_t i = 0; i < n; i++) /* not unit-aligned: any element-aligned offset is valid */
        s->units_host[i] = pos[i] * unit_bytes + 6 * es;
    pick_units(rng, 6, g->n_kv_heads, n, units);
    random_pools(s, rng, 2, 3, pool);
    s->launch = launch_recall;
    return 1;
}

static int build_attention(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                           cf_result *r) {
    (void)env;
    (void)c;
    (void)r;
    const fkv_kv_geom *g = &s->g;
    uint32_t hk = g->n_kv_heads, hq = hk * g->group, d = g->head_dim, p = g->page_size;
    uint32_t n_seqs = 3, n_slots = 10;
    size_t re = (size_t)hk * d, es = fkv_dtype_size(g->dtype), pool = (size_t)n_slots * p * re;
    /* Lists per (seq, KV head): seq 0 four full pages (a context that is a page multiple);
     * seq 1 three full pages and a partial last one; seq 2 an empty list on head 0 (zeros)
     * and elsewhere a partial page followed by a full one (the interface allows a partial
     * entry anywhere). */
    int32_t heads_v[2 * 3 * 3], entries_v[2 * 3 * 3 * 4];
    uint32_t e = 0;
    for (uint32_t b = 0; b < n_seqs; b++)
        for (uint32_t h = 0; h < hk; h++) {
            uint32_t slots[4], count = b == 2 ? (h == 0 ? 0 : 2) : 4;
            cf_pick_distinct(rng, n_slots, count, slots);
            heads_v[2 * (b * hk + h)] = (int32_t)e;
            heads_v[2 * (b * hk + h) + 1] = (int32_t)count;
            for (uint32_t k = 0; k < count; k++) {
                uint32_t valid = p;
                if (b == 1 && k == count - 1)
                    valid = 1 + cf_below(rng, p - 1);
                if (b == 2 && k == 0)
                    valid = 1 + cf_below(rng, p - 1);
                entries_v[2 * e] = (int32_t)slots[k];
                entries_v[2 * e + 1] = (int32_t)valid;
                e++;
            }
        }
    s->n = n_seqs;
    s->scale = 1.0f / sqrtf((float)d);
    float *q = add_input(s, "q", CF_IN_OFF, (size_t)n_seqs * hq * d * 4);
    int32_t *heads = add_input(s, "heads", CF_IN_OFF, (size_t)n_seqs * hk * 8);
    int32_t *entries = add_input(s, "entries", CF_IN_OFF, (size_t)e * 8);
    void *k = add_input(s, "kpool", 0, pool * es);
    void *v = add_input(s, "vpool", 0, pool * es);
    set_shape(add_output(s, "out", CF_GUARD, (size_t)n_seqs * hq * d * 4, CF_GUARD, E_F32), n_seqs,
              "seq", hq, "q head", d, "ch");
    if (!spec_ok(s))
        return -1;
    fill_f32(rng, q, (size_t)n_seqs * hq * d);
    memcpy(heads, heads_v, (size_t)n_seqs * hk * 8);
    memcpy(entries, entries_v, (size_t)e * 8);
    fill_store(rng, k, g->dtype, pool, 1);
    fill_store(rng, v, g->dtype, pool, 0);
    s->launch = launch_attention;
    return 1;
}

static int build_dense(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                       cf_result *r) {
    (void)c;
    (void)r;
    const fkv_kv_geom *g = &s->g;
    uint32_t hk = g->n_kv_heads, hq = hk * g->group, d = g->head_dim;
    uint32_t n_tokens = 3 * g->page_size + 7; /* not a page multiple */
    size_t es = fkv_dtype_size(g->dtype), kv = (size_t)n_tokens * hk * d;
    s->n = n_tokens;
    s->scale = 1.0f / sqrtf((float)d);
    s->uses_fallback = env->dut.ops->attention_dense == NULL;
    float *q = add_input(s, "q", CF_IN_OFF, (size_t)hq * d * 4);
    void *k = add_input(s, "k", 0, kv * es);
    void *v = add_input(s, "v", 0, kv * es);
    set_shape(add_output(s, "out", CF_GUARD, (size_t)hq * d * 4, CF_GUARD, E_F32), 1, "seq", hq,
              "q head", d, "ch");
    if (!spec_ok(s))
        return -1;
    fill_f32(rng, q, (size_t)hq * d);
    fill_store(rng, k, g->dtype, kv, 1);
    fill_store(rng, v, g->dtype, kv, 0);
    s->launch = launch_dense;
    return 1;
}

static int build_regions(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                         cf_result *r) {
    (void)c;
    (void)r;
    s->uses_fallback = env->dut.ops->write_regions == NULL;
    cf_arr *src = add_arr(s, "src", 2048);
    add_output(s, "dst", CF_GUARD, 4096, CF_GUARD, E_BYTES);
    if (!spec_ok(s))
        return -1;
    src->host = 1;
    for (size_t i = 0; i < src->size; i++)
        src->init[i] = (unsigned char)cf_u32(rng);
    /* regions of odd sizes at odd offsets, one empty, ascending with gaps between them */
    size_t dst = 1;
    s->n_regions = 7;
    for (uint32_t i = 0; i < s->n_regions; i++) {
        s->reg_size[i] = i == 3 ? 0 : 1 + cf_below(rng, 280);
        s->reg_src[i] = cf_below(rng, 2048 - 281);
        s->reg_dst[i] = dst;
        dst += s->reg_size[i] + 1 + cf_below(rng, 200);
    }
    s->launch = launch_regions;
    return 1;
}

static int build_copies(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                        cf_result *r) {
    (void)env;
    (void)c;
    (void)r;
    cf_arr *src = add_arr(s, "pinned_src", 1536);
    unsigned char *dev_src = add_input(s, "device_src", 0, 3000);
    add_output(s, "b", CF_GUARD, 2048, CF_GUARD, E_BYTES);
    add_output(s, "c", CF_GUARD, 1024, CF_GUARD, E_BYTES);
    cf_arr *back = add_output(s, "read_back", CF_GUARD, 1018, CF_GUARD, E_BYTES);
    if (!spec_ok(s))
        return -1;
    src->host = 1;
    back->host = 1;
    for (size_t i = 0; i < src->size; i++)
        src->init[i] = (unsigned char)cf_u32(rng);
    for (size_t i = 0; i < 3000; i++)
        dev_src[i] = (unsigned char)cf_u32(rng);
    s->launch = launch_copies;
    return 1;
}

static int build_import(const cf_env *env, const cf_case *c, cf_rng *rng, cf_spec *s,
                        cf_result *r) {
    (void)c;
    if (env->dut.ops->buffer_import == NULL) {
        cf_skip(r, "buffer_import not provided (optional)");
        return 0;
    }
    if (strcmp(env->dut.ops->name, "cpu") != 0) {
        /* Other backends import a native object (cl_mem, VkBuffer, device pointer) that
         * this portable runner cannot create. */
        cf_skip(r, "needs a native %s memory object; only the CPU backend imports host memory",
                env->dut.ops->name);
        return 0;
    }
    cf_arr *mem = add_output(s, "imported", CF_GUARD, 512, CF_GUARD, E_BYTES);
    cf_arr *src = add_arr(s, "src", 100);
    if (!spec_ok(s))
        return -1;
    mem->host = 1;
    src->host = 1;
    for (size_t i = 0; i < src->size; i++)
        src->init[i] = (unsigned char)cf_u32(rng);
    s->launch = launch_import;
    return 1;
}

/* ---- the device-info case (no data) ---- */

static void run_info(const cf_env *env, const cf_case *c, cf_result *r) {
    (void)c;
    const cf_dev *d = &env->dut;
    fkv_device_info listed;
    uint32_t count = 0;
    fkv_status st = fkv_backend_check(d->ops);
    if (st != FKV_OK) {
        cf_fail(r, "ops table: %s", fkv_last_error());
        return;
    }
    if (d->ops->device_count(&count) != FKV_OK || count <= d->info.index)
        cf_fail(r, "device_count gives %u, device index is %u", count, d->info.index);
    else if (d->ops->device_info(d->info.index, &listed) != FKV_OK)
        cf_fail(r, "device_info(%u): %s", d->info.index, fkv_last_error());
    else if (strcmp(listed.name, d->info.name) != 0)
        cf_fail(r, "device_info names '%s', the opened device '%s'", listed.name, d->info.name);
    if (d->info.name[0] == '\0')
        cf_fail(r, "empty device name");
    if (strcmp(d->info.backend, d->ops->name) != 0)
        cf_fail(r, "info.backend '%s' is not the table's name '%s'", d->info.backend, d->ops->name);
    if ((unsigned)d->info.type > FKV_DEVICE_OTHER)
        cf_fail(r, "unknown device type %d", (int)d->info.type);
    if (d->info.memory_bytes && d->info.max_buffer_bytes > d->info.memory_bytes)
        cf_fail(r, "max_buffer_bytes %llu exceeds memory_bytes %llu",
                (unsigned long long)d->info.max_buffer_bytes,
                (unsigned long long)d->info.memory_bytes);
    if (d->info.caps >> 7)
        cf_fail(r, "unknown capability bits 0x%x", d->info.caps);
    if (r->status == CF_PASS) {
        char caps[160];
        fkv_caps_string(d->info.caps, caps, sizeof caps);
        static const char *const modes[] = {"staged", "direct", "perpage"};
        unsigned m = (unsigned)fkv_op_recall_mode(d->ops, d->bd);
        snprintf(r->message, sizeof r->message, "type %s, caps %s, preferred recall %s",
                 fkv_device_type_name(d->info.type), caps[0] ? caps : "none",
                 m < 3 ? modes[m] : "?");
    }
    r->error = 0;
    r->tolerance = 0;
}

/* ---- the op-case runner ---- */

typedef struct cf_op_entry {
    const char *op;
    cf_build_fn build;
    int per_dtype; /* runs per storage dtype and page size (else once per head dim, group) */
    int per_geom;  /* has a geometry at all */
} cf_op_entry;

static const cf_op_entry op_table[] = {
    {"copies", build_copies, 0, 0},
    {"write_regions", build_regions, 0, 0},
    {"buffer_import", build_import, 0, 0},
    {"append", build_append, 1, 1},
    {"summarize", build_summarize, 1, 1},
    {"scores", build_scores, 0, 1},
    {"cosine_flags", build_cosine, 0, 1},
    {"cosine_nan", build_cosine_nan, 0, 1},
    {"pack_hnd", build_pack, 1, 1},
    {"scatter_hnd", build_scatter, 1, 1},
    {"recall_direct", build_recall, 1, 1},
    {"attention", build_attention, 1, 1},
    {"attention_dense", build_dense, 1, 1},
};

static const cf_op_entry *find_op(const char *op) {
    for (size_t i = 0; i < sizeof op_table / sizeof *op_table; i++)
        if (strcmp(op_table[i].op, op) == 0)
            return &op_table[i];
    return NULL;
}

static void run_op(const cf_env *env, const cf_case *c, cf_result *r) {
    const cf_op_entry *e = find_op(c->op);
    cf_spec s;
    memset(&s, 0, sizeof s);
    cf_geom geom = c->g;
    if (!c->has_geom) { /* data movement only: any geometry */
        geom.head_dim = 64;
        geom.group = 1;
        geom.page_size = 16;
        geom.dtype = FKV_F32;
    }
    s.g = kv_geom(&geom);
    if (geom.dtype != FKV_F32 && !(env->dut.info.caps & FKV_CAP_FP16_STORAGE)) {
        cf_skip(r, "%s storage: the device lacks fp16_storage", fkv_dtype_name(geom.dtype));
        return;
    }
    cf_rng rng;
    cf_seed(&rng, c->name, 1);
    int built = e->build(env, c, &rng, &s, r);
    if (built <= 0) {
        if (built < 0)
            cf_fail(r, "out of host memory building the case");
        spec_free(&s);
        return;
    }
    double tol = cf_tolerance(c->op, geom.dtype);
    unsigned char *ref[MAX_ARRS] = {0}, *dut[MAX_ARRS] = {0}, *dut2[MAX_ARRS] = {0};
    const char *where;
    fkv_status st = spec_execute(&env->ref, &s, ref, &where);
    if (st != FKV_OK) {
        cf_fail(r, "the reference failed (%s: %s): a runner bug", where, cf_error_text(st));
        goto out;
    }
    st = spec_execute(&env->dut, &s, dut, &where);
    if (st == FKV_ERR_UNSUPPORTED) {
        cf_skip(r, "%s: unsupported by the device: %s", where, cf_error_text(st));
        goto out;
    }
    if (st != FKV_OK) {
        cf_fail(r, "%s failed: %s", where, cf_error_text(st));
        goto out;
    }
    compare_spec(&s, ref, dut, tol, r);
    st = spec_execute(&env->dut, &s, dut2, &where);
    if (st != FKV_OK)
        cf_fail(r, "second run: %s failed: %s", where, cf_error_text(st));
    else
        determinism(&s, dut, dut2, r);
    if (s.uses_fallback && r->status == CF_PASS && r->message[0] == '\0')
        snprintf(r->message, sizeof r->message, "optional entry absent: generic fallback tested");
out:
    free_outs(ref);
    free_outs(dut);
    free_outs(dut2);
    spec_free(&s);
}

/* ---- case lists ---- */

static size_t add_case(cf_case *out, size_t n, size_t cap, const char *op, cf_run_fn run,
                       const cf_geom *g, int with_dtype, int with_page) {
    if (n >= cap)
        return n;
    cf_case *c = &out[n];
    memset(c, 0, sizeof *c);
    c->op = op;
    c->run = run;
    c->recall = -1;
    if (g) {
        char gn[48];
        c->g = *g;
        c->has_geom = 1;
        cf_geom_name(g, with_dtype, with_page, gn, sizeof gn);
        snprintf(c->name, sizeof c->name, "%s/%s", op, gn);
    } else {
        snprintf(c->name, sizeof c->name, "%s", op);
    }
    return n + 1;
}

size_t cf_op_cases(int quick, cf_case *out, size_t cap) {
    size_t n = add_case(out, 0, cap, "device", run_info, NULL, 0, 0);
    size_t n_geoms;
    const uint32_t(*geoms)[3] = cf_geometries(quick, &n_geoms);
    for (size_t k = 0; k < sizeof op_table / sizeof *op_table; k++) {
        const cf_op_entry *e = &op_table[k];
        if (!e->per_geom) {
            n = add_case(out, n, cap, e->op, run_op, NULL, 0, 0);
            continue;
        }
        for (size_t i = 0; i < n_geoms; i++) {
            cf_geom g = {geoms[i][0], geoms[i][1], geoms[i][2], FKV_F32};
            if (!e->per_dtype) {
                /* scores and cosine_flags read f32 only and ignore the page size: once per
                 * (head dim, group) */
                int seen = 0;
                for (size_t j = 0; j < i; j++)
                    seen |= geoms[j][0] == g.head_dim && geoms[j][1] == g.group;
                if (!seen)
                    n = add_case(out, n, cap, e->op, run_op, &g, 0, 0);
                continue;
            }
            for (int dt = FKV_F32; dt <= FKV_BF16; dt++) {
                g.dtype = (fkv_dtype)dt;
                n = add_case(out, n, cap, e->op, run_op, &g, 1, 1);
            }
        }
    }
    return n;
}
