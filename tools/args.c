/* Strict command-line numbers (args.h). */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses plain decimal digits into *v; 0 on success, -1 on a non-digit, 1 on overflow. */
static int digits(const char *s, size_t len, uint64_t *v) {
    uint64_t x = 0;
    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return 1;
        x = x * 10 + d;
    }
    *v = x;
    return 0;
}

int fkv_arg_u64(const char *tool, const char *flag, const char *s, uint64_t min, uint64_t max,
                uint64_t *out) {
    uint64_t v = 0;
    int r = digits(s, strlen(s), &v);
    if (r < 0) {
        fprintf(stderr, "%s: %s: '%s' is not a non-negative integer\n", tool, flag, s);
        return -1;
    }
    if (r > 0 || v < min || v > max) { /* r > 0: past 2^64, out of any range */
        fprintf(stderr, "%s: %s: '%s' is out of range: an integer in [%llu, %llu]\n", tool, flag,
                s, (unsigned long long)min, (unsigned long long)max);
        return -1;
    }
    *out = v;
    return 0;
}

int fkv_arg_u32(const char *tool, const char *flag, const char *s, uint32_t min, uint32_t max,
                uint32_t *out) {
    uint64_t v;
    if (fkv_arg_u64(tool, flag, s, min, max, &v) != 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

int fkv_arg_double(const char *tool, const char *flag, const char *s, double min, double max,
                   double *out) {
    char *end;
    errno = 0;
    /* strtod skips leading space and reads "nan", "inf" and hex floats: refuse all three */
    int plain = s[0] != '\0' && strchr("+-.0123456789", s[0]) != NULL && !strpbrk(s, "xXnN");
    double v = plain ? strtod(s, &end) : 0;
    if (!plain || end == s || *end != '\0' || errno == ERANGE || !isfinite(v)) {
        fprintf(stderr, "%s: %s: '%s' is not a number\n", tool, flag, s);
        return -1;
    }
    if (!(v >= min && v <= max)) {
        fprintf(stderr, "%s: %s: '%s' is not in [%g, %g]\n", tool, flag, s, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

int fkv_arg_u32_list(const char *tool, const char *flag, const char *s, uint32_t min,
                     uint32_t max, uint32_t *out, size_t cap, size_t *n) {
    size_t count = 0;
    for (const char *p = s;; ) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        uint64_t v = 0;
        int r = digits(p, len, &v);
        if (r != 0 || v < min || v > max || count == cap) {
            fprintf(stderr, "%s: %s: '%s' is not a comma list of 1 to %zu integers in [%lu, "
                            "%lu]\n", tool, flag, s, cap, (unsigned long)min, (unsigned long)max);
            return -1;
        }
        out[count++] = (uint32_t)v;
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    *n = count;
    return 0;
}
