/* Shared helpers for the Criterion tests: deterministic random data and comparisons. */
#ifndef FKV_TESTS_HELPERS_H
#define FKV_TESTS_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"

typedef struct th_rng {
    uint64_t s;
} th_rng;

void th_seed(th_rng *r, uint64_t seed);
uint32_t th_u32(th_rng *r);
float th_uniform(th_rng *r);                 /* [0, 1) */
float th_normal(th_rng *r);                  /* N(0, 1) */
void th_fill_normal(th_rng *r, float *x, size_t n, float scale);
/* a[0..n) = a random permutation of 0..n-1. */
void th_permutation(th_rng *r, int32_t *a, size_t n);
/* Rounds each value through a storage dtype (so references see what the device stores). */
void th_round_dtype(float *x, size_t n, fkv_dtype dtype);
/* ||a-b|| / max(||b||, tiny) */
double th_rel_l2(const float *a, const float *b, size_t n);
double th_max_abs_diff(const float *a, const float *b, size_t n);
int th_all_finite(const float *x, size_t n);

/* Naive reference attention for one query head over contiguous keys/values [n][d]. */
void th_attention_ref(const float *q, const float *k, const float *v, size_t n, size_t d,
                      size_t stride, float scale, float *out);

/* Whether FREEKV_REQUIRE_DEVICES (a comma list of backends; .ci/run sets "cpu,opencl,vulkan")
 * names `backend`: there a missing device fails the test instead of skipping it, so a CI
 * machine without the driver cannot pass by testing nothing. */
int th_device_required(const char *backend);

/* A small geometry config for tests (2 layers, 4 q heads, 2 kv heads, d 16, p 4). */
void th_small_config(fkv_config *cfg);

/* A numeric backend option (fkv_op_set_option/fkv_op_get_option of backends/dispatch.h,
 * docs/backend-options.md) of an opened device. th_option_value returns UINT64_MAX when the
 * backend refuses (fkv_last_error says why). */
fkv_status th_set_option(fkv_device *dev, const char *key, uint64_t value);
uint64_t th_option_value(fkv_device *dev, const char *key);

#endif
