/* Reading the library's environment variables: one rule for every backend.
 *
 * Every FREEKV_* variable the library reads goes through these calls (nothing else in the
 * library calls getenv), so they all parse the same way: an unset or empty variable means
 * the default, names are matched case-insensitively, and a bad value is
 * FKV_ERR_BAD_ENVIRONMENT with the message "VAR='value' (valid: ...)". */
#ifndef FKV_COMMON_ENV_H
#define FKV_COMMON_ENV_H

#include <stdint.h>

#include "freekv.h"

/* The value of $var, or NULL when it is unset or empty. */
const char *fkv_env_get(const char *var);

/* Index of value among names[0..n) (case-insensitive), or -1. */
int fkv_choice_index(const char *value, const char *const *names, int n);
/* "a, b, c" into buf (always NUL-terminated, truncated to fit). */
void fkv_choice_list(const char *const *names, int n, char *buf, size_t size);

/* *out = the index of $var among names[0..n) (case-insensitive), or dflt when the variable is
 * unset or empty. Any other value is FKV_ERR_BAD_ENVIRONMENT, the message listing the valid
 * values. */
fkv_status fkv_env_choice(const char *var, const char *const *names, int n, int dflt, int *out);

/* A boolean: 1, true, yes, on / 0, false, no, off (case-insensitive); dflt when unset or
 * empty. */
fkv_status fkv_env_bool(const char *var, int dflt, int *out);

/* A byte count: N, NK, NM or NG (binary multiples, suffix case-insensitive), N >= 1, no
 * overflow; dflt when unset or empty. */
fkv_status fkv_env_size(const char *var, uint64_t dflt, uint64_t *out);

/* A count: "auto" (case-insensitive) or unset/empty gives *out = 0, for the caller's default;
 * else a plain decimal integer in [1, max]. */
fkv_status fkv_env_count(const char *var, uint32_t max, uint32_t *out);

#endif
