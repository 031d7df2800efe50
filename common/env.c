#include "env.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#include "error.h"

fkv_status fkv_env_choice(const char *var, const char *const *names, int n, int dflt, int *out) {
    const char *s = getenv(var);
    *out = dflt;
    if (s == NULL || s[0] == '\0')
        return FKV_OK;
    for (int i = 0; i < n; i++)
        if (strcasecmp(s, names[i]) == 0) {
            *out = i;
            return FKV_OK;
        }
    char valid[256];
    size_t len = 0;
    valid[0] = '\0';
    for (int i = 0; i < n && len < sizeof valid; i++) {
        int w = snprintf(valid + len, sizeof valid - len, "%s%s", i ? ", " : "", names[i]);
        if (w < 0)
            break;
        len += (size_t)w;
    }
    return fkv_error(FKV_ERR_BAD_ENVIRONMENT, "%s='%s' (valid: %s)", var, s, valid);
}
