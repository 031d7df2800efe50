/* Strict number parsing for the bench's command line: a value is accepted only when the
 * whole string is a number of the expected kind inside the given range, so "-1", "1e3",
 * "12abc", " 7" and values past 64 bits are refused instead of wrapping or truncating. */
#ifndef FKV_BENCH_NUMBER_H
#define FKV_BENCH_NUMBER_H

#include <stdint.h>

/* Decimal digits only (no sign, no spaces), value in [min, max]. 0 on success, else -1. */
int bench_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* A finite decimal number (optional sign, fraction, exponent; no hex, inf or nan, no
 * spaces), value in [min, max]. 0 on success, else -1. */
int bench_parse_double(const char *s, double min, double max, double *out);

#endif
