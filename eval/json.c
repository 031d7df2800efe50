/* Strict JSON reading and the shared writers (json.h). */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"

#define MAX_DEPTH 32

fkv_status fkv_json_bad(const fkv_jparser *ps, const char *msg) {
    /* line and column help a person fix a hand-edited header */
    size_t line = 1, col = 1;
    for (const unsigned char *q = ps->start; q < ps->p && q < ps->end; q++) {
        if (*q == '\n')
            line++, col = 1;
        else
            col++;
    }
    return fkv_error(FKV_ERR_BAD_FILE, "%s: line %zu, column %zu: %s", ps->what, line, col, msg);
}

static void skip_ws(fkv_jparser *ps) {
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static int hexval(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static fkv_status read_hex4(fkv_jparser *ps, uint32_t *out) {
    if (ps->end - ps->p < 4)
        return fkv_json_bad(ps, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(ps->p[i]);
        if (h < 0)
            return fkv_json_bad(ps, "bad \\u escape");
        v = v << 4 | (uint32_t)h;
    }
    ps->p += 4;
    *out = v;
    return FKV_OK;
}

static void put_utf8(fkv_jvalue *v, size_t *n, uint32_t cp) {
    unsigned char b[4];
    size_t k;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp, k = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xc0 | cp >> 6), b[1] = (unsigned char)(0x80 | (cp & 0x3f)), k = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xe0 | cp >> 12), b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
        b[2] = (unsigned char)(0x80 | (cp & 0x3f)), k = 3;
    } else {
        b[0] = (unsigned char)(0xf0 | cp >> 18), b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
        b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f)), b[3] = (unsigned char)(0x80 | (cp & 0x3f));
        k = 4;
    }
    if (v == NULL)
        return;
    if (*n + k >= sizeof v->str) { /* keep whole characters only */
        v->truncated = 1;
        return;
    }
    memcpy(v->str + *n, b, k);
    *n += k;
}

/* Length of a valid UTF-8 sequence at p (1..4), or 0 if invalid (overlong, surrogate,
 * above U+10FFFF, truncated). */
static size_t utf8_len(const unsigned char *p, const unsigned char *end, uint32_t *cp) {
    unsigned char c = p[0];
    size_t n;
    uint32_t v, min;
    if (c < 0x80)
        return *cp = c, 1;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2, v = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        n = 3, v = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        n = 4, v = c & 0x07, min = 0x10000;
    else
        return 0;
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        v = v << 6 | (p[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
        return 0;
    *cp = v;
    return n;
}

static fkv_status parse_string(fkv_jparser *ps, fkv_jvalue *v) {
    ps->p++; /* opening quote */
    size_t n = 0;
    if (v)
        v->type = FKV_J_STRING, v->truncated = 0;
    for (;;) {
        if (ps->p >= ps->end)
            return fkv_json_bad(ps, "unterminated string");
        unsigned char c = *ps->p;
        if (c == '"') {
            ps->p++;
            break;
        }
        if (c < 0x20)
            return fkv_json_bad(ps, "control character in a string (escape it)");
        uint32_t cp;
        if (c == '\\') {
            if (ps->end - ps->p < 2)
                return fkv_json_bad(ps, "truncated escape");
            unsigned char e = ps->p[1];
            ps->p += 2;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': {
                fkv_status st = read_hex4(ps, &cp);
                if (st != FKV_OK)
                    return st;
                if (cp >= 0xdc00 && cp <= 0xdfff)
                    return fkv_json_bad(ps, "lone low surrogate in \\u escape");
                if (cp >= 0xd800 && cp <= 0xdbff) { /* needs its low half */
                    uint32_t lo;
                    if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
                        return fkv_json_bad(ps, "high surrogate without its low half");
                    ps->p += 2;
                    st = read_hex4(ps, &lo);
                    if (st != FKV_OK)
                        return st;
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return fkv_json_bad(ps, "high surrogate without its low half");
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                break;
            }
            default:
                ps->p--;
                return fkv_json_bad(ps, "unknown escape");
            }
        } else {
            size_t k = utf8_len(ps->p, ps->end, &cp);
            if (k == 0)
                return fkv_json_bad(ps, "invalid UTF-8 in a string");
            ps->p += k;
        }
        put_utf8(v, &n, cp);
    }
    if (v)
        v->str[n] = '\0';
    return FKV_OK;
}

static fkv_status parse_number(fkv_jparser *ps, fkv_jvalue *v) {
    int integer = 1;
    uint64_t u = 0;
    if (ps->p < ps->end && *ps->p == '-')
        ps->p++, integer = 0;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
        return fkv_json_bad(ps, "malformed number");
    if (*ps->p == '0') {
        ps->p++;
        if (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            return fkv_json_bad(ps, "number with a leading zero");
    } else {
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') {
            uint64_t d = (uint64_t)(*ps->p - '0');
            u = u > (UINT64_MAX - d) / 10 ? UINT64_MAX : u * 10 + d; /* saturate */
            ps->p++;
        }
    }
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++, integer = 0;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return fkv_json_bad(ps, "malformed number (digits must follow '.')");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++, integer = 0;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return fkv_json_bad(ps, "malformed number exponent");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (v)
        v->type = FKV_J_NUMBER, v->integer = integer, v->u = u;
    return FKV_OK;
}

static fkv_status parse_literal(fkv_jparser *ps, const char *word, fkv_jtype type, fkv_jvalue *v) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fkv_json_bad(ps, "unexpected character (not a JSON value)");
    ps->p += n;
    if (v)
        v->type = type;
    return FKV_OK;
}

static fkv_status parse_container(fkv_jparser *ps, fkv_jvalue *v);

/* Arrays and objects that the caller does not read: validated and skipped. */
static fkv_status parse_container(fkv_jparser *ps, fkv_jvalue *v) {
    unsigned char open = *ps->p, close = open == '[' ? ']' : '}';
    if (++ps->depth > MAX_DEPTH)
        return fkv_json_bad(ps, "nesting deeper than 32");
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
    } else {
        for (;;) {
            fkv_status st;
            if (open == '{') {
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != '"')
                    return fkv_json_bad(ps, "expected a string key");
                st = parse_string(ps, NULL);
                if (st != FKV_OK)
                    return st;
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != ':')
                    return fkv_json_bad(ps, "expected ':'");
                ps->p++;
            }
            st = fkv_json_value(ps, NULL);
            if (st != FKV_OK)
                return st;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (ps->p < ps->end && *ps->p == close) {
                ps->p++;
                break;
            }
            return fkv_json_bad(ps, open == '[' ? "expected ',' or ']'" : "expected ',' or '}'");
        }
    }
    ps->depth--;
    if (v)
        v->type = open == '[' ? FKV_J_ARRAY : FKV_J_OBJECT;
    return FKV_OK;
}

fkv_status fkv_json_value(fkv_jparser *ps, fkv_jvalue *v) {
    skip_ws(ps);
    if (ps->p >= ps->end)
        return fkv_json_bad(ps, "unexpected end of input");
    switch (*ps->p) {
    case '"':
        return parse_string(ps, v);
    case '{':
    case '[':
        return parse_container(ps, v);
    case 't':
        return parse_literal(ps, "true", FKV_J_BOOL, v);
    case 'f':
        return parse_literal(ps, "false", FKV_J_BOOL, v);
    case 'n':
        return parse_literal(ps, "null", FKV_J_NULL, v);
    default:
        return parse_number(ps, v);
    }
}


/* ---- documents, objects and arrays the caller reads ---------------------------------------- */

fkv_status fkv_json_begin(fkv_jparser *ps, const char *text, size_t len, const char *what) {
    *ps = (fkv_jparser){.p = (const unsigned char *)text,
                        .start = (const unsigned char *)text,
                        .end = (const unsigned char *)text + len,
                        .what = what,
                        .depth = -1}; /* the top-level value is depth 0 */
    /* a UTF-8 byte order mark is not JSON; say so rather than "unexpected character" */
    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
        return fkv_json_bad(ps, "byte order mark (save the file as UTF-8 without BOM)");
    return FKV_OK;
}

fkv_status fkv_json_end(fkv_jparser *ps, const char *value) {
    skip_ws(ps);
    if (ps->p == ps->end)
        return FKV_OK;
    char msg[64];
    snprintf(msg, sizeof msg, "text after the JSON %s", value);
    return fkv_json_bad(ps, msg);
}

int fkv_json_peek(fkv_jparser *ps) {
    skip_ws(ps);
    return ps->p < ps->end ? *ps->p : -1;
}

/* The shared walk of a container the caller reads: one item (a member's key and value, or an
 * element) per call of `item`, separators and the closing bracket checked here. */
static fkv_status walk(fkv_jparser *ps, unsigned char open,
                       fkv_status (*item)(fkv_jparser *, size_t, void *), void *ctx) {
    unsigned char close = open == '[' ? ']' : '}';
    if (fkv_json_peek(ps) != open)
        return fkv_json_bad(ps, open == '[' ? "expected an array" : "expected an object");
    if (++ps->depth > MAX_DEPTH)
        return fkv_json_bad(ps, "nesting deeper than 32");
    ps->p++;
    if (fkv_json_peek(ps) == close) {
        ps->p++;
        ps->depth--;
        return FKV_OK;
    }
    for (size_t i = 0;; i++) {
        fkv_status st = item(ps, i, ctx);
        if (st != FKV_OK)
            return st;
        int c = fkv_json_peek(ps);
        if (c == ',') {
            ps->p++;
            continue;
        }
        if (c == close) {
            ps->p++;
            break;
        }
        return fkv_json_bad(ps, open == '[' ? "expected ',' or ']'" : "expected ',' or '}'");
    }
    ps->depth--;
    return FKV_OK;
}

typedef struct member_walk {
    fkv_json_member_fn fn;
    void *ctx;
} member_walk;

static fkv_status member_item(fkv_jparser *ps, size_t index, void *ctx) {
    (void)index;
    const member_walk *w = ctx;
    fkv_jvalue key, val;
    if (fkv_json_peek(ps) != '"')
        return fkv_json_bad(ps, "expected a string key");
    fkv_status st = parse_string(ps, &key);
    if (st != FKV_OK)
        return st;
    if (fkv_json_peek(ps) != ':')
        return fkv_json_bad(ps, "expected ':'");
    ps->p++;
    const unsigned char *value_at = ps->p;
    st = fkv_json_value(ps, &val);
    if (st != FKV_OK)
        return st;
    const unsigned char *after = ps->p;
    ps->p = value_at; /* point messages about this value at the value */
    skip_ws(ps);
    st = w->fn(ps, &key, &val, w->ctx);
    ps->p = after;
    return st;
}

fkv_status fkv_json_object(fkv_jparser *ps, fkv_json_member_fn member, void *ctx) {
    member_walk w = {member, ctx};
    return walk(ps, '{', member_item, &w);
}

typedef struct element_walk {
    fkv_json_element_fn fn;
    void *ctx;
} element_walk;

static fkv_status element_item(fkv_jparser *ps, size_t index, void *ctx) {
    const element_walk *w = ctx;
    skip_ws(ps);
    return w->fn(ps, index, w->ctx);
}

fkv_status fkv_json_array(fkv_jparser *ps, fkv_json_element_fn element, void *ctx) {
    element_walk w = {element, ctx};
    return walk(ps, '[', element_item, &w);
}

fkv_status fkv_json_read_file(const char *path, size_t max_bytes, char **text, size_t *len) {
    *text = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fkv_error(FKV_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return fkv_error(FKV_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max_bytes) {
        fclose(f);
        return fkv_error(FKV_ERR_BAD_FILE, "%s: larger than %zu bytes", path, max_bytes);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (buf == NULL) {
        fclose(f);
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s", path);
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    if (got != n) {
        free(buf);
        return fkv_error(FKV_ERR_IO, "%s: read failed", path);
    }
    *text = buf;
    *len = n;
    return FKV_OK;
}

/* ---- writers ------------------------------------------------------------------------------- */

void fkv_json_put_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

void fkv_json_put_num(FILE *f, double x) {
    if (isfinite(x))
        fprintf(f, "%.6g", x);
    else
        fprintf(f, "null");
}
