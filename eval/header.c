/* Strict JSON (RFC 8259) for the trace header: recursive descent over a length-bounded
 * buffer, nesting limited, every error a message and FKV_ERR_BAD_FILE. */
#include "header.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"

#define MAX_DEPTH 32

typedef enum jtype { J_NULL, J_BOOL, J_NUMBER, J_STRING, J_ARRAY, J_OBJECT } jtype;

typedef struct jvalue {
    jtype type;
    /* strings: decoded, NUL-terminated, truncated to fit (truncated = 1) */
    char str[160];
    int truncated;
    /* numbers: integer value if `integer` (no sign, fraction or exponent), saturating */
    int integer;
    uint64_t u;
} jvalue;

typedef struct parser {
    const unsigned char *p, *start, *end;
    const char *what;
    int depth;
} parser;

static fkv_status bad(const parser *ps, const char *msg) {
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

static void skip_ws(parser *ps) {
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

static fkv_status read_hex4(parser *ps, uint32_t *out) {
    if (ps->end - ps->p < 4)
        return bad(ps, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(ps->p[i]);
        if (h < 0)
            return bad(ps, "bad \\u escape");
        v = v << 4 | (uint32_t)h;
    }
    ps->p += 4;
    *out = v;
    return FKV_OK;
}

static void put_utf8(jvalue *v, size_t *n, uint32_t cp) {
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

static fkv_status parse_string(parser *ps, jvalue *v) {
    ps->p++; /* opening quote */
    size_t n = 0;
    if (v)
        v->type = J_STRING, v->truncated = 0;
    for (;;) {
        if (ps->p >= ps->end)
            return bad(ps, "unterminated string");
        unsigned char c = *ps->p;
        if (c == '"') {
            ps->p++;
            break;
        }
        if (c < 0x20)
            return bad(ps, "control character in a string (escape it)");
        uint32_t cp;
        if (c == '\\') {
            if (ps->end - ps->p < 2)
                return bad(ps, "truncated escape");
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
                    return bad(ps, "lone low surrogate in \\u escape");
                if (cp >= 0xd800 && cp <= 0xdbff) { /* needs its low half */
                    uint32_t lo;
                    if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
                        return bad(ps, "high surrogate without its low half");
                    ps->p += 2;
                    st = read_hex4(ps, &lo);
                    if (st != FKV_OK)
                        return st;
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return bad(ps, "high surrogate without its low half");
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                break;
            }
            default:
                ps->p--;
                return bad(ps, "unknown escape");
            }
        } else {
            size_t k = utf8_len(ps->p, ps->end, &cp);
            if (k == 0)
                return bad(ps, "invalid UTF-8 in a string");
            ps->p += k;
        }
        put_utf8(v, &n, cp);
    }
    if (v)
        v->str[n] = '\0';
    return FKV_OK;
}

static fkv_status parse_number(parser *ps, jvalue *v) {
    int integer = 1;
    uint64_t u = 0;
    if (ps->p < ps->end && *ps->p == '-')
        ps->p++, integer = 0;
    if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
        return bad(ps, "malformed number");
    if (*ps->p == '0') {
        ps->p++;
        if (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            return bad(ps, "number with a leading zero");
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
            return bad(ps, "malformed number (digits must follow '.')");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++, integer = 0;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-'))
            ps->p++;
        if (ps->p >= ps->end || *ps->p < '0' || *ps->p > '9')
            return bad(ps, "malformed number exponent");
        while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9')
            ps->p++;
    }
    if (v)
        v->type = J_NUMBER, v->integer = integer, v->u = u;
    return FKV_OK;
}

static fkv_status parse_literal(parser *ps, const char *word, jtype type, jvalue *v) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return bad(ps, "unexpected character (not a JSON value)");
    ps->p += n;
    if (v)
        v->type = type;
    return FKV_OK;
}

static fkv_status parse_value(parser *ps, jvalue *v);

/* Arrays and objects other than the top level: validated and skipped. */
static fkv_status parse_container(parser *ps, jvalue *v) {
    unsigned char open = *ps->p, close = open == '[' ? ']' : '}';
    if (++ps->depth > MAX_DEPTH)
        return bad(ps, "nesting deeper than 32");
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
                    return bad(ps, "expected a string key");
                st = parse_string(ps, NULL);
                if (st != FKV_OK)
                    return st;
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != ':')
                    return bad(ps, "expected ':'");
                ps->p++;
            }
            st = parse_value(ps, NULL);
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
            return bad(ps, open == '[' ? "expected ',' or ']'" : "expected ',' or '}'");
        }
    }
    ps->depth--;
    if (v)
        v->type = open == '[' ? J_ARRAY : J_OBJECT;
    return FKV_OK;
}

static fkv_status parse_value(parser *ps, jvalue *v) {
    skip_ws(ps);
    if (ps->p >= ps->end)
        return bad(ps, "unexpected end of input");
    switch (*ps->p) {
    case '"':
        return parse_string(ps, v);
    case '{':
    case '[':
        return parse_container(ps, v);
    case 't':
        return parse_literal(ps, "true", J_BOOL, v);
    case 'f':
        return parse_literal(ps, "false", J_BOOL, v);
    case 'n':
        return parse_literal(ps, "null", J_NULL, v);
    default:
        return parse_number(ps, v);
    }
}

/* ---- the header object ----------------------------------------------------------------- */

typedef struct field {
    const char *key;
    uint32_t min, max;
    size_t offset;
} field;

static const field int_fields[] = {
    {"version", 1, 1, offsetof(fkv_trace_header, version)},
    {"layers", 1, 1024, offsetof(fkv_trace_header, layers)},
    {"q_heads", 1, 4096, offsetof(fkv_trace_header, q_heads)},
    {"kv_heads", 1, 1024, offsetof(fkv_trace_header, kv_heads)},
    {"head_dim", 1, 1024, offsetof(fkv_trace_header, head_dim)},
    {"prompt_tokens", 1, FKV_TRACE_MAX_TOKENS, offsetof(fkv_trace_header, prompt_tokens)},
    {"decode_steps", 1, FKV_TRACE_MAX_TOKENS, offsetof(fkv_trace_header, decode_steps)},
};
#define N_INT_FIELDS (sizeof int_fields / sizeof *int_fields)

fkv_status fkv_trace_header_parse(const char *text, size_t len, const char *what,
                                  fkv_trace_header *out) {
    if (text == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_trace_header_parse: NULL argument");
    if (what == NULL)
        what = "trace header";
    memset(out, 0, sizeof *out);
    if (len > FKV_TRACE_HEADER_MAX_BYTES)
        return fkv_error(FKV_ERR_BAD_FILE, "%s: larger than %u bytes", what,
                         FKV_TRACE_HEADER_MAX_BYTES);
    parser ps = {(const unsigned char *)text, (const unsigned char *)text,
                 (const unsigned char *)text + len, what, 0};
    /* a UTF-8 byte order mark is not JSON; say so rather than "unexpected character" */
    if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
        return bad(&ps, "byte order mark (save the file as UTF-8 without BOM)");
    skip_ws(&ps);
    if (ps.p >= ps.end || *ps.p != '{')
        return bad(&ps, "the header must be a JSON object");
    ps.p++;
    int seen[N_INT_FIELDS] = {0}, seen_format = 0, seen_model = 0;
    skip_ws(&ps);
    if (ps.p < ps.end && *ps.p == '}') {
        ps.p++;
    } else {
        for (;;) {
            jvalue key, val;
            skip_ws(&ps);
            if (ps.p >= ps.end || *ps.p != '"')
                return bad(&ps, "expected a string key");
            fkv_status st = parse_string(&ps, &key);
            if (st != FKV_OK)
                return st;
            skip_ws(&ps);
            if (ps.p >= ps.end || *ps.p != ':')
                return bad(&ps, "expected ':'");
            ps.p++;
            const unsigned char *value_at = ps.p;
            st = parse_value(&ps, &val);
            if (st != FKV_OK)
                return st;
            const unsigned char *after = ps.p;
            ps.p = value_at; /* point messages about this value at the value */
            skip_ws(&ps);
            int known = 0;
            for (size_t i = 0; i < N_INT_FIELDS && !key.truncated; i++) {
                if (strcmp(key.str, int_fields[i].key) != 0)
                    continue;
                known = 1;
                char msg[160];
                if (seen[i]++) {
                    snprintf(msg, sizeof msg, "duplicate key \"%.40s\"", key.str);
                    return bad(&ps, msg);
                }
                if (val.type != J_NUMBER || !val.integer || val.u < int_fields[i].min ||
                    val.u > int_fields[i].max) {
                    snprintf(msg, sizeof msg, "\"%.40s\" must be an integer in %u..%u", key.str,
                             int_fields[i].min, int_fields[i].max);
                    return bad(&ps, msg);
                }
                *(uint32_t *)((char *)out + int_fields[i].offset) = (uint32_t)val.u;
            }
            if (!known && strcmp(key.str, "format") == 0) {
                if (seen_format++)
                    return bad(&ps, "duplicate key \"format\"");
                if (val.type != J_STRING || strcmp(val.str, "freekv-trace") != 0)
                    return bad(&ps, "\"format\" must be \"freekv-trace\"");
            } else if (!known && strcmp(key.str, "model") == 0) {
                if (seen_model++)
                    return bad(&ps, "duplicate key \"model\"");
                if (val.type != J_STRING)
                    return bad(&ps, "\"model\" must be a string");
                size_t n = strlen(val.str);
                if (n >= sizeof out->model) { /* cut at a character boundary */
                    n = sizeof out->model - 1;
                    while (n > 0 && ((unsigned char)val.str[n] & 0xc0) == 0x80)
                        n--;
                }
                memcpy(out->model, val.str, n);
                out->model[n] = '\0';
            }
            ps.p = after;
            skip_ws(&ps);
            if (ps.p < ps.end && *ps.p == ',') {
                ps.p++;
                continue;
            }
            if (ps.p < ps.end && *ps.p == '}') {
                ps.p++;
                break;
            }
            return bad(&ps, "expected ',' or '}'");
        }
    }
    skip_ws(&ps);
    if (ps.p != ps.end)
        return bad(&ps, "text after the JSON object");
    if (!seen_format)
        return fkv_error(FKV_ERR_BAD_FILE, "%s: missing \"format\": \"freekv-trace\"", what);
    for (size_t i = 0; i < N_INT_FIELDS; i++)
        if (!seen[i])
            return fkv_error(FKV_ERR_BAD_FILE, "%s: missing required key \"%s\"", what,
                             int_fields[i].key);
    if (out->q_heads % out->kv_heads != 0)
        return fkv_error(FKV_ERR_BAD_FILE, "%s: q_heads (%u) is not a multiple of kv_heads (%u)",
                         what, out->q_heads, out->kv_heads);
    if ((uint64_t)out->prompt_tokens + out->decode_steps > FKV_TRACE_MAX_TOKENS)
        return fkv_error(FKV_ERR_BAD_FILE, "%s: prompt_tokens + decode_steps exceeds %u", what,
                         FKV_TRACE_MAX_TOKENS);
    return FKV_OK;
}

fkv_status fkv_trace_header_load(const char *path, fkv_trace_header *out) {
    if (path == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_trace_header_load: NULL argument");
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fkv_error(FKV_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return fkv_error(FKV_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > FKV_TRACE_HEADER_MAX_BYTES) {
        fclose(f);
        return fkv_error(FKV_ERR_BAD_FILE, "%s: larger than %u bytes", path,
                         FKV_TRACE_HEADER_MAX_BYTES);
    }
    size_t n = (size_t)sb.st_size;
    char *buf = malloc(n + 1);
    if (buf == NULL) {
        fclose(f);
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s", path);
    }
    size_t got = fread(buf, 1, n, f);
    fclose(f);
    fkv_status st = got == n ? fkv_trace_header_parse(buf, n, path, out)
                             : fkv_error(FKV_ERR_IO, "%s: read failed", path);
    free(buf);
    return st;
}

fkv_status fkv_trace_header_write(const char *path, const fkv_trace_header *h) {
    if (path == NULL || h == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_trace_header_write: NULL argument");
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return fkv_error(FKV_ERR_IO, "%s: %s", path, strerror(errno));
    fprintf(f, "{\n  \"format\": \"freekv-trace\",\n  \"version\": 1,\n  \"model\": \"");
    for (const char *c = h->model; *c; c++) { /* JSON-escape the free text */
        unsigned char ch = (unsigned char)*c;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fprintf(f, "\",\n  \"layers\": %u,\n  \"q_heads\": %u,\n  \"kv_heads\": %u,\n"
               "  \"head_dim\": %u,\n  \"prompt_tokens\": %u,\n  \"decode_steps\": %u\n}\n",
            h->layers, h->q_heads, h->kv_heads, h->head_dim, h->prompt_tokens, h->decode_steps);
    if (fclose(f) != 0)
        return fkv_error(FKV_ERR_IO, "%s: write failed", path);
    return FKV_OK;
}
