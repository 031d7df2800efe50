#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *fkv_status_string(int status) {
    switch (status) {
#define FKV_X_CASE(name, value, msg) \
    case value:                      \
        return msg;
        FKV_STATUS_TABLE(FKV_X_CASE)
#undef FKV_X_CASE
    default:
        return "unknown status";
    }
}

const char *fkv_last_error(void) { return last_error; }

void fkv_error_clear(void) { last_error[0] = '\0'; }

char *fkv_error_save(void) {
    size_t len = strlen(last_error);
    char *copy = malloc(len + 1);
    if (copy)
        memcpy(copy, last_error, len + 1);
    return copy;
}

void fkv_error_restore(char *saved) {
    if (saved == NULL)
        return;
    snprintf(last_error, sizeof last_error, "%s", saved);
    free(saved);
}

fkv_status fkv_error(fkv_status status, const char *fmt, ...) {
    char msg[sizeof last_error - 64]; /* room for the status prefix */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(last_error, sizeof last_error, "%s: %s", fkv_status_string(status), msg);
    return status;
}

fkv_status fkv_error_prefix(fkv_status status, const char *fmt, ...) {
    char prefix[256];
    char old[sizeof last_error - sizeof prefix - 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* The message may be longer than old: copy what fits and terminate, so a long message
     * is cut instead of read past the end of old. */
    size_t len = strnlen(last_error, sizeof old - 1);
    memcpy(old, last_error, len);
    old[len] = '\0';
    if (old[0] == '\0')
        snprintf(old, sizeof old, "%s", fkv_status_string(status));
    snprintf(last_error, sizeof last_error, "%s: %s", prefix, old);
    return status;
}
