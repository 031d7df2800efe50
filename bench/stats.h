/* Summary statistics of the bench's samples: median, an honest tail, and a bootstrap
 * interval for the median. */
#ifndef FKV_BENCH_STATS_H
#define FKV_BENCH_STATS_H

#include <stddef.h>
#include <stdint.h>

void bench_sort(double *x, size_t n);
/* Median of n >= 1 sorted values (mean of the two middle ones when n is even). */
double bench_median_sorted(const double *x, size_t n);
/* Nearest-rank quantile of n >= 1 sorted values: the ceil(q * n)-th smallest. */
double bench_quantile_sorted(const double *x, size_t n, double q);
/* The tail of n >= 1 sorted values that the sample can support: p99 when n >= 200, p90 when
 * n >= 20 (so at least two samples lie above the quantile), else the maximum. *label gets
 * "p99", "p90" or "max". */
double bench_tail(const double *sorted, size_t n, const char **label);
/* Median of x[0..n) (n >= 1; x is not modified) and its 95% bootstrap percentile interval:
 * 2000 resamples of the n values with replacement, from a generator seeded with `seed`, so
 * the same data give the same interval. */
void bench_median_ci(const double *x, size_t n, uint64_t seed, double *median, double *lo,
                     double *hi);

#endif
