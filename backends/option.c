#include "option.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "launch.h"

fkv_status fkv_option_unknown(const char *backend, const char *verb, const char *key,
                              const char *const *keys) {
    char list[512] = "";
    for (size_t i = 0; keys && keys[i]; i++) {
        size_t len = strlen(list);
        snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", keys[i]);
    }
    return fkv_error(FKV_ERR_UNSUPPORTED, "%s has no option '%s' (%s options: %s)", backend, key,
                     verb, list[0] ? list : "none");
}

fkv_status fkv_option_uint(const char *backend, const char *key, const char *value, uint64_t max,
                           uint64_t *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = value[0] >= '0' && value[0] <= '9' ? strtoull(value, &end, 10) : 0;
    if (end == NULL || end == value || *end != '\0' || errno == ERANGE || v > max)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "%s option %s: '%s' is not a whole number from 0 to %llu", backend, key,
                         value, (unsigned long long)max);
    *out = v;
    return FKV_OK;
}

fkv_status fkv_option_splits(const char *backend, const char *key, const char *value,
                             uint32_t *forced) {
    uint64_t v;
    fkv_status st = fkv_option_uint(backend, key, value, FKV_MAX_SPLITS, &v);
    if (st == FKV_OK)
        *forced = (uint32_t)v;
    return st;
}

fkv_status fkv_option_limit(const char *backend, const char *key, const char *value,
                            uint64_t device, uint64_t *out) {
    uint64_t v;
    fkv_status st = fkv_option_uint(backend, key, value, UINT64_MAX, &v);
    if (st == FKV_OK)
        *out = v && v < device ? v : device;
    return st;
}

fkv_status fkv_option_print_uint(const char *backend, const char *key, uint64_t value, char *out,
                                 size_t size) {
    int n = snprintf(out, size, "%llu", (unsigned long long)value);
    if (n < 0 || (size_t)n >= size)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "%s option %s: %zu bytes are too few for %llu",
                         backend, key, size, (unsigned long long)value);
    return FKV_OK;
}
