/* Summary statistics of the bench's samples (see stats.h). */
#include "stats.h"

#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void bench_sort(double *x, size_t n) { qsort(x, n, sizeof *x, cmp_double); }

double bench_median_sorted(const double *x, size_t n) {
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

double bench_quantile_sorted(const double *x, size_t n, double q) {
    size_t rank = (size_t)ceil(q * (double)n);
    return x[rank > 0 ? (rank <= n ? rank - 1 : n - 1) : 0];
}

double bench_tail(const double *sorted, size_t n, const char **label) {
    if (n >= 200) {
        *label = "p99";
        return bench_quantile_sorted(sorted, n, 0.99);
    }
    if (n >= 20) {
        *label = "p90";
        return bench_quantile_sorted(sorted, n, 0.90);
    }
    *label = "max";
    return sorted[n - 1];
}

enum { RESAMPLES = 2000 };

void bench_median_ci(const double *x, size_t n, uint64_t seed, double *median, double *lo,
                     double *hi) {
    double *s = malloc(sizeof(double) * n), *meds = malloc(sizeof(double) * RESAMPLES);
    if (!s || !meds) { /* no interval without memory: the point estimate alone */
        free(s), free(meds);
        *median = *lo = *hi = NAN;
        return;
    }
    memcpy(s, x, sizeof(double) * n);
    bench_sort(s, n);
    *median = bench_median_sorted(s, n);
    uint64_t state = seed;
    for (int r = 0; r < RESAMPLES; r++) {
        for (size_t i = 0; i < n; i++)
            s[i] = x[bench_splitmix(&state) % n];
        bench_sort(s, n);
        meds[r] = bench_median_sorted(s, n);
    }
    bench_sort(meds, RESAMPLES);
    *lo = bench_quantile_sorted(meds, RESAMPLES, 0.025);
    *hi = bench_quantile_sorted(meds, RESAMPLES, 0.975);
    free(s), free(meds);
}
