/* Strict number parsing for the bench's command line (see number.h). */
#include "number.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int bench_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out) {
    if (s == NULL || *s == '\0')
        return -1;
    uint64_t v = 0;
    for (const char *c = s; *c; c++) {
        if (*c < '0' || *c > '9')
            return -1;
        unsigned digit = (unsigned)(*c - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return -1; /* past 64 bits */
        v = v * 10 + digit;
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int bench_parse_double(const char *s, double min, double max, double *out) {
    if (s == NULL || *s == '\0' || strspn(s, "0123456789.eE+-") != strlen(s))
        return -1; /* also refuses spaces, hex, inf and nan */
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || !(v >= min && v <= max))
        return -1;
    *out = v;
    return 0;
}
