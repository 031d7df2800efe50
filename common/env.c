#include "env.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "error.h"

const char *fkv_env_get(const char *var) {
    const char *s = getenv(var);
    return s != NULL && s[0] != '\0' ? s : NULL;
}

int fkv_choice_index(const char *value, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (strcasecmp(value, names[i]) == 0)
            return i;
    return -1;
}

void fkv_choice_list(const char *const *names, int n, char *buf, size_t size) {
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && len < size; i++) {
        int w = snprintf(buf + len, size - len, "%s%s", i ? ", " : "", names[i]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
}

/* The one message for a bad value. */
static fkv_status bad_value(const char *var, const char *value, const char *valid) {
    return fkv_error(FKV_ERR_BAD_ENVIRONMENT, "%s='%s' (valid: %s)", var, value, valid);
}

fkv_status fkv_env_choice(const char *var, const char *const *names, int n, int dflt, int *out) {
    const char *s = fkv_env_get(var);
    *out = dflt;
    if (s == NULL)
        return FKV_OK;
    int i = fkv_choice_index(s, names, n);
    if (i >= 0) {
        *out = i;
        return FKV_OK;
    }
    char valid[256];
    fkv_choice_list(names, n, valid, sizeof valid);
    return bad_value(var, s, valid);
}

fkv_status fkv_env_bool(const char *var, int dflt, int *out) {
    /* false spellings first, then true ones: index / 4 is the value */
    static const char *const names[] = {"0", "false", "no", "off", "1", "true", "yes", "on"};
    int i;
    fkv_status st = fkv_env_choice(var, names, 8, dflt ? 4 : 0, &i);
    *out = dflt;
    if (st == FKV_OK)
        *out = i >= 4;
    return st;
}

fkv_status fkv_env_size(const char *var, uint64_t dflt, uint64_t *out) {
    const char *s = fkv_env_get(var);
    *out = dflt;
    if (s == NULL)
        return FKV_OK;
    uint64_t v = 0;
    const char *p = s;
    if (*p < '0' || *p > '9')
        goto bad;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (UINT64_MAX - 9) / 10)
            goto bad;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    unsigned shift = 0;
    switch (*p) {
    case 'k': case 'K': shift = 10; p++; break;
    case 'm': case 'M': shift = 20; p++; break;
    case 'g': case 'G': shift = 30; p++; break;
    default: break;
    }
    if (*p != '\0' || v == 0 || v > (UINT64_MAX >> shift))
        goto bad;
    *out = v << shift;
    return FKV_OK;
bad:
    return bad_value(var, s, "a byte count >= 1 with an optional K, M or G suffix, e.g. 64M");
}

fkv_status fkv_env_count(const char *var, uint32_t max, uint32_t *out) {
    const char *s = fkv_env_get(var);
    *out = 0;
    if (s == NULL || strcasecmp(s, "auto") == 0)
        return FKV_OK;
    uint64_t v = 0;
    const char *p = s;
    for (; *p >= '0' && *p <= '9' && v <= max; p++)
        v = v * 10 + (uint64_t)(*p - '0');
    if (p != s && *p == '\0' && v >= 1 && v <= max) {
        *out = (uint32_t)v;
        return FKV_OK;
    }
    char valid[64];
    snprintf(valid, sizeof valid, "auto or an integer from 1 to %u", max);
    return bad_value(var, s, valid);
}
