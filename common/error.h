/* Library-internal error reporting: sets the thread's last-error message and returns the
 * status, so a failing path reads `return fkv_error(FKV_ERR_..., "what %d", x);`. */
#ifndef FKV_COMMON_ERROR_H
#define FKV_COMMON_ERROR_H

#include "freekv.h"

#if defined(__GNUC__)
#define FKV_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define FKV_PRINTF(a, b)
#endif

fkv_status fkv_error(fkv_status status, const char *fmt, ...) FKV_PRINTF(2, 3);
/* Prefixes the current message with context ("opening device: <old message>"). */
fkv_status fkv_error_prefix(fkv_status status, const char *fmt, ...) FKV_PRINTF(2, 3);
void fkv_error_clear(void);
/* A heap copy of this thread's message (NULL when out of memory), so cleanup that may set
 * messages of its own cannot replace the one being reported; fkv_error_restore puts it back
 * and frees it (NULL: no-op). */
char *fkv_error_save(void);
void fkv_error_restore(char *saved);

#endif
