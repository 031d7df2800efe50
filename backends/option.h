/* What every backend's set_option/get_option (backend.h) shares: the message for an unknown
 * key, which lists the keys the backend knows, and the parsing and printing of values. The
 * keys themselves are documented in docs/backend-options.md. */
#ifndef FKV_BACKENDS_OPTION_H
#define FKV_BACKENDS_OPTION_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"

/* FKV_ERR_UNSUPPORTED: "<backend> has no option '<key>' (<verb> options: a, b, c)", where
 * `keys` (NULL-terminated) are those the backend knows for that direction. */
fkv_status fkv_option_unknown(const char *backend, const char *verb, const char *key,
                              const char *const *keys);
/* A decimal integer from 0 to max; FKV_ERR_INVALID_ARGUMENT naming the key otherwise. */
fkv_status fkv_option_uint(const char *backend, const char *key, const char *value, uint64_t max,
                           uint64_t *out);
/* attention_splits (backends/launch.h): 0 automatic, or 1..FKV_MAX_SPLITS forced. */
fkv_status fkv_option_splits(const char *backend, const char *key, const char *value,
                             uint32_t *forced);
/* A limit that only ever lowers the device's own figure: 0, or a value above `device`, gives
 * `device`. */
fkv_status fkv_option_limit(const char *backend, const char *key, const char *value,
                            uint64_t device, uint64_t *out);
/* An unsigned value into out[size]; FKV_ERR_INVALID_ARGUMENT when it does not fit. */
fkv_status fkv_option_print_uint(const char *backend, const char *key, uint64_t value, char *out,
                                 size_t size);

#endif
