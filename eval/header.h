/* The JSON header of a trace directory (header.json), read by a small strict JSON parser.
 *
 * {
 *   "format": "freekv-trace",   required, exactly this
 *   "version": 1,               required, exactly 1
 *   "layers": 32, "q_heads": 32, "kv_heads": 8, "head_dim": 128,   required
 *   "prompt_tokens": 4096,      required: tokens given to prefill
 *   "decode_steps": 64,         required: decode steps recorded after the prompt
 *   "model": "meta-llama/Llama-3.1-8B-Instruct"   optional, free text
 * }
 * Other keys are allowed (and ignored) so that dumpers can record provenance; their values
 * must still be valid JSON. The parser rejects anything that is not RFC 8259 JSON (comments,
 * trailing commas, single quotes, NaN, bad escapes, invalid UTF-8), nesting deeper than 32,
 * duplicate known keys, and counts outside the ranges below. */
#ifndef FKV_EVAL_HEADER_H
#define FKV_EVAL_HEADER_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"

#define FKV_TRACE_HEADER_MAX_BYTES (1u << 20)
#define FKV_TRACE_MAX_TOKENS (1u << 24)

typedef struct fkv_trace_header {
    uint32_t version;
    uint32_t layers, q_heads, kv_heads, head_dim;
    uint32_t prompt_tokens, decode_steps;
    char model[128]; /* "" when absent; truncated when longer */
} fkv_trace_header;

/* Parses header text (len bytes, need not be NUL-terminated). `what` names it in messages.
 * Returns FKV_ERR_BAD_FILE with a message on any error. */
fkv_status fkv_trace_header_parse(const char *text, size_t len, const char *what,
                                  fkv_trace_header *out);

/* Reads and parses a header file (at most FKV_TRACE_HEADER_MAX_BYTES). */
fkv_status fkv_trace_header_load(const char *path, fkv_trace_header *out);

/* Writes a header (used to save synthetic traces). */
fkv_status fkv_trace_header_write(const char *path, const fkv_trace_header *h);

#endif
