/* Strict JSON (RFC 8259) for the small files of a trace directory (header.json,
 * needles.json), and the few JSON writers the eval outputs share.
 *
 * The reader is a recursive descent over a length-bounded buffer: it refuses anything that is
 * not RFC 8259 JSON (comments, trailing commas, single quotes, NaN, bad escapes, invalid UTF-8,
 * a byte order mark, text after the value) and nesting deeper than 32 below the top-level
 * value; every error is FKV_ERR_BAD_FILE with "<what>: line L, column C: why". */
#ifndef FKV_EVAL_JSON_H
#define FKV_EVAL_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "freekv.h"

typedef enum fkv_jtype {
    FKV_J_NULL,
    FKV_J_BOOL,
    FKV_J_NUMBER,
    FKV_J_STRING,
    FKV_J_ARRAY,
    FKV_J_OBJECT
} fkv_jtype;

typedef struct fkv_jvalue {
    fkv_jtype type;
    /* strings: decoded, NUL-terminated, truncated to whole characters (truncated = 1) */
    char str[160];
    int truncated;
    /* numbers: `integer` when there is no sign, fraction or exponent; u saturates */
    int integer;
    uint64_t u;
} fkv_jvalue;

typedef struct fkv_jparser {
    const unsigned char *p, *start, *end;
    const char *what;
    int depth;
} fkv_jparser;

/* Starts on text[0..len); `what` names it in messages. Refuses a UTF-8 byte order mark. */
fkv_status fkv_json_begin(fkv_jparser *ps, const char *text, size_t len, const char *what);
/* After the top-level value: only whitespace may follow (`value` names it: "object"). */
fkv_status fkv_json_end(fkv_jparser *ps, const char *value);
/* The next character after whitespace, or -1 at the end. */
int fkv_json_peek(fkv_jparser *ps);
/* FKV_ERR_BAD_FILE with the parser's line and column. */
fkv_status fkv_json_bad(const fkv_jparser *ps, const char *msg);

/* Any value into *v (may be NULL); arrays and objects are validated and skipped. */
fkv_status fkv_json_value(fkv_jparser *ps, fkv_jvalue *v);

/* An object whose members the caller reads: member() is called with each key and value (an
 * array or object value already validated and skipped), the parser positioned at the value so
 * that fkv_json_bad points there. Its error stops the parse. */
typedef fkv_status (*fkv_json_member_fn)(fkv_jparser *ps, const fkv_jvalue *key,
                                         const fkv_jvalue *value, void *ctx);
fkv_status fkv_json_object(fkv_jparser *ps, fkv_json_member_fn member, void *ctx);

/* An array whose elements the caller parses: element() must consume exactly one value (with
 * fkv_json_value or fkv_json_object) starting at the parser's position. */
typedef fkv_status (*fkv_json_element_fn)(fkv_jparser *ps, size_t index, void *ctx);
fkv_status fkv_json_array(fkv_jparser *ps, fkv_json_element_fn element, void *ctx);

/* Reads a whole regular file of at most max_bytes into a malloc'd buffer (*text, *len; the
 * caller frees it). FKV_ERR_IO for a missing or unreadable file, FKV_ERR_BAD_FILE when it is
 * larger than max_bytes. */
fkv_status fkv_json_read_file(const char *path, size_t max_bytes, char **text, size_t *len);

/* Writers: a string with JSON escapes; a number as %.6g, or null when not finite. */
void fkv_json_put_str(FILE *f, const char *s);
void fkv_json_put_num(FILE *f, double x);

#endif
