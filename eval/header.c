/* The trace header (header.h), read with the strict JSON reader of json.h. */
#include "header.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "json.h"

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

typedef struct header_parse {
    fkv_trace_header *out;
    int seen[N_INT_FIELDS], seen_format, seen_model;
} header_parse;

static fkv_status header_member(fkv_jparser *ps, const fkv_jvalue *key, const fkv_jvalue *val,
                                void *ctx) {
    header_parse *hp = ctx;
    fkv_trace_header *out = hp->out;
    char msg[160];
    for (size_t i = 0; i < N_INT_FIELDS && !key->truncated; i++) {
        if (strcmp(key->str, int_fields[i].key) != 0)
            continue;
        if (hp->seen[i]++) {
            snprintf(msg, sizeof msg, "duplicate key \"%.40s\"", key->str);
            return fkv_json_bad(ps, msg);
        }
        if (val->type != FKV_J_NUMBER || !val->integer || val->u < int_fields[i].min ||
            val->u > int_fields[i].max) {
            snprintf(msg, sizeof msg, "\"%.40s\" must be an integer in %u..%u", key->str,
                     int_fields[i].min, int_fields[i].max);
            return fkv_json_bad(ps, msg);
        }
        *(uint32_t *)((char *)out + int_fields[i].offset) = (uint32_t)val->u;
        return FKV_OK;
    }
    if (strcmp(key->str, "format") == 0) {
        if (hp->seen_format++)
            return fkv_json_bad(ps, "duplicate key \"format\"");
        if (val->type != FKV_J_STRING || strcmp(val->str, "freekv-trace") != 0)
            return fkv_json_bad(ps, "\"format\" must be \"freekv-trace\"");
    } else if (strcmp(key->str, "model") == 0) {
        if (hp->seen_model++)
            return fkv_json_bad(ps, "duplicate key \"model\"");
        if (val->type != FKV_J_STRING)
            return fkv_json_bad(ps, "\"model\" must be a string");
        size_t n = strlen(val->str);
        if (n >= sizeof out->model) { /* cut at a character boundary */
            n = sizeof out->model - 1;
            while (n > 0 && ((unsigned char)val->str[n] & 0xc0) == 0x80)
                n--;
        }
        memcpy(out->model, val->str, n);
        out->model[n] = '\0';
    }
    return FKV_OK; /* other keys: provenance, ignored */
}

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
    fkv_jparser ps;
    fkv_status st = fkv_json_begin(&ps, text, len, what);
    if (st != FKV_OK)
        return st;
    if (fkv_json_peek(&ps) != '{')
        return fkv_json_bad(&ps, "the header must be a JSON object");
    header_parse hp = {.out = out};
    st = fkv_json_object(&ps, header_member, &hp);
    if (st == FKV_OK)
        st = fkv_json_end(&ps, "object");
    if (st != FKV_OK)
        return st;
    if (!hp.seen_format)
        return fkv_error(FKV_ERR_BAD_FILE, "%s: missing \"format\": \"freekv-trace\"", what);
    for (size_t i = 0; i < N_INT_FIELDS; i++)
        if (!hp.seen[i])
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
    char *text;
    size_t n;
    fkv_status st = fkv_json_read_file(path, FKV_TRACE_HEADER_MAX_BYTES, &text, &n);
    if (st != FKV_OK)
        return st;
    st = fkv_trace_header_parse(text, n, path, out);
    free(text);
    return st;
}

fkv_status fkv_trace_header_write(const char *path, const fkv_trace_header *h) {
    if (path == NULL || h == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_trace_header_write: NULL argument");
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return fkv_error(FKV_ERR_IO, "%s: %s", path, strerror(errno));
    fprintf(f, "{\n  \"format\": \"freekv-trace\",\n  \"version\": 1,\n  \"model\": ");
    fkv_json_put_str(f, h->model);
    fprintf(f, ",\n  \"layers\": %u,\n  \"q_heads\": %u,\n  \"kv_heads\": %u,\n"
               "  \"head_dim\": %u,\n  \"prompt_tokens\": %u,\n  \"decode_steps\": %u\n}\n",
            h->layers, h->q_heads, h->kv_heads, h->head_dim, h->prompt_tokens, h->decode_steps);
    if (fclose(f) != 0)
        return fkv_error(FKV_ERR_IO, "%s: write failed", path);
    return FKV_OK;
}
