/* Needles: planted keys that one query head looks for at one decode step, and their file in a
 * trace directory, needles.json (docs/eval.md):
 *
 * [
 *   {"layer": 0, "step": 5, "q_head": 3, "token": 1234},
 *   {"layer": 2, "step": 17, "q_head": 0, "token": 977}
 * ]
 *
 *   layer   0 .. layers - 1
 *   step    the decode step whose query looks for the needle: 0 is the first decode step after
 *           the prompt (query row 1 of q_<layer>.npy), up to decode_steps - 1
 *   q_head  the query head that looks for it, 0 .. q_heads - 1 (its KV head, q_head divided
 *           by the group size, is the one whose attended pages must hold the needle)
 *   token   the needle's position, a token that exists at that step: 0 .. prompt_tokens + step
 *
 * The top level is a JSON array (empty: no needles), each element an object with the four
 * keys as non-negative integers. Other keys are allowed and ignored (a dumper may record the
 * needle's text), as in header.json. Refused with FKV_ERR_BAD_FILE and a message that names
 * the needle, with line and column: anything json.h refuses, a missing or duplicated key, a
 * value that is not an integer or is out of range, and a needle listed twice. */
#ifndef FKV_EVAL_NEEDLES_H
#define FKV_EVAL_NEEDLES_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"
#include "header.h"

#define FKV_NEEDLES_MAX_BYTES (16u << 20)

typedef struct fkv_needle {
    uint32_t layer, kv_head, q_head, step, token;
} fkv_needle;

/* Parses needles.json text against the trace's header. On success *out (malloc'd, NULL when
 * *count is 0) is the caller's to free; on failure *out is NULL and *count 0. */
fkv_status fkv_needles_parse(const char *text, size_t len, const char *what,
                             const fkv_trace_header *h, fkv_needle **out, size_t *count);

/* Reads a file with fkv_needles_parse. A file that does not exist is no error: FKV_OK with no
 * needles and *missing = 1 (a trace directory without needles.json has none); else *missing
 * is 0. */
fkv_status fkv_needles_load(const char *path, const fkv_trace_header *h, fkv_needle **out,
                            size_t *count, int *missing);

/* Writes needles.json (one needle per line). */
fkv_status fkv_needles_write(const char *path, const fkv_needle *needles, size_t count);

#endif
