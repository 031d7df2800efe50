/* Results, random data and small numeric helpers of the conformance runner. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conformance.h"

const char *cf_status_name(cf_status s) {
    static const char *const names[] = {"PASS", "FAIL", "SKIP", "KNOWN", "XPASS"};
    return (unsigned)s < CF_N_STATUS ? names[s] : "?";
}

/* Appends to a result's message, "; "-separated, truncating quietly. */
static void append_msg(char *buf, size_t size, const char *fmt, va_list ap) {
    size_t len = strlen(buf);
    if (len + 3 >= size)
        return;
    if (len) {
        memcpy(buf + len, "; ", 3);
        len += 2;
    }
    vsnprintf(buf + len, size - len, fmt, ap);
}

void cf_fail(cf_result *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    /* The first failure leads the message: it is the one a reader needs. */
    if (r->status != CF_FAIL) {
        r->message[0] = '\0';
        r->status = CF_FAIL;
    }
    append_msg(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
}

void cf_skip(cf_result *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (r->status != CF_FAIL) {
        r->status = CF_SKIP;
        r->message[0] = '\0';
        append_msg(r->message, sizeof r->message, fmt, ap);
    }
    va_end(ap);
}

void cf_nondet(cf_result *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (r->deterministic != 0) {
        r->deterministic = 0;
        vsnprintf(r->nondet, sizeof r->nondet, fmt, ap);
    }
    va_end(ap);
}

void cf_check_error(cf_result *r, double err, double tol, const char *fmt, ...) {
    double ratio = tol > 0 ? err / tol : (err > 0 ? INFINITY : 0);
    double worst = r->tolerance > 0 ? r->error / r->tolerance
                                    : (r->error > 0 ? INFINITY : (r->error < 0 ? -1 : 0));
    if (r->error < 0 || ratio > worst || isnan(err)) {
        r->error = err;
        r->tolerance = tol;
    }
    if (!(err <= tol)) { /* also catches NaN */
        char what[300];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        cf_fail(r, "%s: rel L2 %.3g > tol %.3g", what, err, tol);
    }
}

/* ---- random data: splitmix64, seeded from the case name so every case is reproducible
 * alone (--filter) and independent of the order cases run in ---- */

void cf_seed(cf_rng *r, const char *name, uint64_t salt) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    r->s = h ^ (salt * 0x9e3779b97f4a7c15ull);
}

uint32_t cf_u32(cf_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

uint32_t cf_below(cf_rng *r, uint32_t n) { return n ? (uint32_t)(((uint64_t)cf_u32(r) * n) >> 32) : 0; }

float cf_uniform(cf_rng *r) { return (float)(cf_u32(r) >> 8) * (1.0f / 16777216.0f); }

float cf_normal(cf_rng *r) {
    float u1 = cf_uniform(r), u2 = cf_uniform(r);
    if (u1 < 1e-7f)
        u1 = 1e-7f;
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

void cf_fill_values(cf_rng *r, float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t k = cf_below(r, 64);
        float v = cf_normal(r);
        if (k == 0)
            v *= 300.0f; /* large, still finite in f16 */
        else if (k == 1)
            v *= 2e-6f; /* f16 subnormal range: tests denormal handling of conversions */
        x[i] = v;
    }
}

void cf_pick_distinct(cf_rng *r, uint32_t n, uint32_t k, uint32_t *out) {
    /* partial Fisher-Yates over 0..n-1 (n is small here) */
    uint32_t *all = malloc(sizeof *all * (n ? n : 1));
    if (all == NULL) {
        for (uint32_t i = 0; i < k; i++)
            out[i] = i;
        return;
    }
    for (uint32_t i = 0; i < n; i++)
        all[i] = i;
    for (uint32_t i = 0; i < k && i < n; i++) {
        uint32_t j = i + cf_below(r, n - i);
        uint32_t t = all[i];
        all[i] = all[j];
        all[j] = t;
        out[i] = all[i];
    }
    free(all);
}

/* ---- helpers ---- */

int cf_dut_ran(cf_result *r, fkv_status st, const char *where) {
    if (st == FKV_ERR_UNSUPPORTED)
        cf_skip(r, "%s: unsupported by the device: %s", where, cf_error_text(st));
    else if (st != FKV_OK)
        cf_fail(r, "%s failed: %s", where, cf_error_text(st));
    return st == FKV_OK;
}

const char *cf_error_text(fkv_status st) {
    /* The library's message starts with its status string; anything else is stale. */
    const char *msg = fkv_last_error(), *what = fkv_status_string(st);
    return strncmp(msg, what, strlen(what)) == 0 ? msg : what;
}

double cf_now_ms(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

void *cf_alloc(size_t size) { return calloc(1, size ? size : 1); }

double cf_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

long cf_first_nonfinite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return (long)i;
    return -1;
}

/* Full: every combination. Quick: four triples that cover every value of each. */
static const uint32_t full_geoms[][3] = {
    {64, 1, 16}, {64, 1, 32}, {64, 4, 16}, {64, 4, 32}, {64, 8, 16}, {64, 8, 32},
    {128, 1, 16}, {128, 1, 32}, {128, 4, 16}, {128, 4, 32}, {128, 8, 16}, {128, 8, 32},
};
static const uint32_t quick_geoms[][3] = {{64, 1, 16}, {128, 4, 32}, {64, 8, 32}, {128, 1, 16}};

const uint32_t (*cf_geometries(int quick, size_t *n))[3] {
    *n = quick ? sizeof quick_geoms / sizeof *quick_geoms : sizeof full_geoms / sizeof *full_geoms;
    return quick ? quick_geoms : full_geoms;
}

void cf_geom_name(const cf_geom *g, int with_dtype, int with_page, char *buf, size_t size) {
    char heads[16] = "", page[16] = "", dtype[16] = "";
    if (g->n_kv_heads) /* a KV head count other than the rule's */
        snprintf(heads, sizeof heads, "/h%u", g->n_kv_heads);
    if (with_page)
        snprintf(page, sizeof page, "/p%u", g->page_size);
    if (with_dtype)
        snprintf(dtype, sizeof dtype, "/%s", fkv_dtype_name(g->dtype));
    snprintf(buf, size, "d%u/g%u%s%s%s", g->head_dim, g->group, heads, page, dtype);
}

void cf_result_init(cf_result *r) {
    memset(r, 0, sizeof *r);
    r->status = CF_PASS;
    r->error = r->tolerance = -1;
    r->deterministic = -1;
}
