/* needles.json: reading it strictly against the trace's geometry, and writing it (needles.h). */
#include "needles.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "json.h"

enum { F_LAYER, F_STEP, F_Q_HEAD, F_TOKEN, N_FIELDS };
static const char *const field_names[N_FIELDS] = {"layer", "step", "q_head", "token"};

typedef struct needles_parse {
    const fkv_trace_header *h;
    fkv_needle *list;
    size_t n, cap;
    /* the needle being read */
    size_t index;
    int seen[N_FIELDS];
    uint64_t value[N_FIELDS];
} needles_parse;

static fkv_status bad_needle(const fkv_jparser *ps, size_t index, const char *fmt, ...)
    FKV_PRINTF(3, 4);

static fkv_status bad_needle(const fkv_jparser *ps, size_t index, const char *fmt, ...) {
    char why[200], msg[240];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "needle %zu: %s", index, why);
    return fkv_json_bad(ps, msg);
}

static fkv_status needle_member(fkv_jparser *ps, const fkv_jvalue *key, const fkv_jvalue *val,
                                void *ctx) {
    needles_parse *np = ctx;
    const fkv_trace_header *h = np->h;
    for (int f = 0; f < N_FIELDS && !key->truncated; f++) {
        if (strcmp(key->str, field_names[f]) != 0)
            continue;
        if (np->seen[f]++)
            return bad_needle(ps, np->index, "duplicate key \"%s\"", field_names[f]);
        if (val->type != FKV_J_NUMBER || !val->integer)
            return bad_needle(ps, np->index, "\"%s\" must be a non-negative integer",
                              field_names[f]);
        /* the token's range depends on the step: checked once the object is complete */
        const uint32_t limit[N_FIELDS] = {h->layers, h->decode_steps, h->q_heads, UINT32_MAX};
        const char *what[N_FIELDS] = {"layers", "decode steps", "query heads", ""};
        if (f != F_TOKEN && val->u >= limit[f])
            return bad_needle(ps, np->index, "\"%s\" %llu is out of range: the trace has %u %s",
                              field_names[f], (unsigned long long)val->u, limit[f], what[f]);
        np->value[f] = val->u;
    }
    return FKV_OK; /* other keys: provenance, ignored */
}

static fkv_status needle_element(fkv_jparser *ps, size_t index, void *ctx) {
    needles_parse *np = ctx;
    const fkv_trace_header *h = np->h;
    if (fkv_json_peek(ps) != '{')
        return bad_needle(ps, index, "expected an object {\"layer\", \"step\", \"q_head\", "
                                     "\"token\"}");
    const fkv_jparser at = *ps; /* where this needle starts, for the messages below */
    np->index = index;
    memset(np->seen, 0, sizeof np->seen);
    fkv_status st = fkv_json_object(ps, needle_member, np);
    if (st != FKV_OK)
        return st;
    for (int f = 0; f < N_FIELDS; f++)
        if (!np->seen[f])
            return bad_needle(&at, index, "missing \"%s\"", field_names[f]);
    uint64_t last = (uint64_t)h->prompt_tokens + np->value[F_STEP];
    if (np->value[F_TOKEN] > last)
        return bad_needle(&at, index, "\"token\" %llu does not exist at decode step %llu "
                                      "(tokens 0..%llu: the prompt of %u and the steps up to it)",
                          (unsigned long long)np->value[F_TOKEN],
                          (unsigned long long)np->value[F_STEP], (unsigned long long)last,
                          h->prompt_tokens);
    if (np->n == np->cap) {
        size_t cap = np->cap ? 2 * np->cap : 16;
        fkv_needle *grown = realloc(np->list, cap * sizeof *grown);
        if (grown == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s: %zu needles", ps->what, cap);
        np->list = grown;
        np->cap = cap;
    }
    uint32_t group = h->q_heads / h->kv_heads;
    np->list[np->n++] = (fkv_needle){.layer = (uint32_t)np->value[F_LAYER],
                                     .kv_head = (uint32_t)np->value[F_Q_HEAD] / group,
                                     .q_head = (uint32_t)np->value[F_Q_HEAD],
                                     .step = (uint32_t)np->value[F_STEP],
                                     .token = (uint32_t)np->value[F_TOKEN]};
    return FKV_OK;
}

typedef struct indexed {
    fkv_needle n;
    size_t index;
} indexed;

static int cmp_indexed(const void *pa, const void *pb) {
    const indexed *a = pa, *b = pb;
    const uint32_t x[] = {a->n.layer, a->n.step, a->n.q_head, a->n.token};
    const uint32_t y[] = {b->n.layer, b->n.step, b->n.q_head, b->n.token};
    for (int i = 0; i < 4; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

/* A needle listed twice would be scored twice: refused, naming both. */
static fkv_status check_duplicates(const char *what, const fkv_needle *list, size_t n) {
    if (n < 2)
        return FKV_OK;
    indexed *s = malloc(n * sizeof *s);
    if (s == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s: %zu needles", what, n);
    for (size_t i = 0; i < n; i++)
        s[i] = (indexed){list[i], i};
    qsort(s, n, sizeof *s, cmp_indexed);
    fkv_status st = FKV_OK;
    for (size_t i = 1; i < n && st == FKV_OK; i++) {
        const fkv_needle *a = &s[i - 1].n, *b = &s[i].n;
        if (a->layer == b->layer && a->step == b->step && a->q_head == b->q_head &&
            a->token == b->token)
            st = fkv_error(FKV_ERR_BAD_FILE, "%s: needle %zu repeats needle %zu (layer %u, step "
                                             "%u, q_head %u, token %u)",
                           what, s[i].index, s[i - 1].index, a->layer, a->step, a->q_head,
                           a->token);
    }
    free(s);
    return st;
}

fkv_status fkv_needles_parse(const char *text, size_t len, const char *what,
                             const fkv_trace_header *h, fkv_needle **out, size_t *count) {
    if (out)
        *out = NULL;
    if (count)
        *count = 0;
    if (text == NULL || h == NULL || out == NULL || count == NULL || h->kv_heads == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_needles_parse: NULL argument or no "
                                                   "KV heads");
    if (what == NULL)
        what = "needles";
    if (len > FKV_NEEDLES_MAX_BYTES)
        return fkv_error(FKV_ERR_BAD_FILE, "%s: larger than %u bytes", what,
                         FKV_NEEDLES_MAX_BYTES);
    fkv_jparser ps;
    needles_parse np = {.h = h};
    fkv_status st = fkv_json_begin(&ps, text, len, what);
    if (st == FKV_OK && fkv_json_peek(&ps) != '[')
        st = fkv_json_bad(&ps, "needles must be a JSON array of objects");
    if (st == FKV_OK)
        st = fkv_json_array(&ps, needle_element, &np);
    if (st == FKV_OK)
        st = fkv_json_end(&ps, "array");
    if (st == FKV_OK)
        st = check_duplicates(what, np.list, np.n);
    if (st != FKV_OK) {
        free(np.list);
        return st;
    }
    *out = np.list;
    *count = np.n;
    return FKV_OK;
}

fkv_status fkv_needles_load(const char *path, const fkv_trace_header *h, fkv_needle **out,
                            size_t *count, int *missing) {
    if (out)
        *out = NULL;
    if (count)
        *count = 0;
    if (path == NULL || h == NULL || out == NULL || count == NULL || missing == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_needles_load: NULL argument");
    struct stat sb;
    *missing = stat(path, &sb) != 0 && errno == ENOENT;
    if (*missing)
        return FKV_OK;
    char *text;
    size_t n;
    fkv_status st = fkv_json_read_file(path, FKV_NEEDLES_MAX_BYTES, &text, &n);
    if (st != FKV_OK)
        return st;
    st = fkv_needles_parse(text, n, path, h, out, count);
    free(text);
    return st;
}

fkv_status fkv_needles_write(const char *path, const fkv_needle *needles, size_t count) {
    if (path == NULL || (needles == NULL && count > 0))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_needles_write: NULL argument");
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return fkv_error(FKV_ERR_IO, "%s: %s", path, strerror(errno));
    fputc('[', f);
    for (size_t i = 0; i < count; i++) {
        const fkv_needle *n = &needles[i];
        fprintf(f, "%s\n  {\"layer\": %u, \"step\": %u, \"q_head\": %u, \"token\": %u}",
                i ? "," : "", n->layer, n->step, n->q_head, n->token);
    }
    fputs(count ? "\n]\n" : "]\n", f);
    if (fclose(f) != 0)
        return fkv_error(FKV_ERR_IO, "%s: write failed", path);
    return FKV_OK;
}
