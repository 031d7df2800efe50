/* Bad calls return errors and leave the context exactly as it was. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "pipeline_driver.h"

static fkv_config cfg_of(fkv_policy policy) {
    fkv_config c;
    th_small_config(&c);
    c.policy = policy;
    return c;
}

static pd_run run_one(uint32_t prompt, uint32_t steps) {
    pd_run r;
    memset(&r, 0, sizeof r);
    r.n_seqs = 1;
    r.prompt[0] = prompt;
    r.steps = steps;
    r.batched = 1;
    r.drift = 0.3f;
    return r;
}

/* Every kind of bad call in the middle of a run; the run's output must equal a clean run. */
static void bad_calls_keep_state(fkv_policy policy) {
    fkv_config c = cfg_of(policy);
    pd_run r = run_one(40, 6);
    size_t n_out = pd_out_floats(&c, &r);
    float *clean = calloc(n_out, sizeof(float)), *dirty = calloc(n_out, sizeof(float));
    cr_assert_eq(pd_run_cpu(&c, &r, clean, NULL, NULL), FKV_OK, "%s", fkv_last_error());

    fkv_device *dev, *other;
    fkv_context *ctx;
    pd_run first = r;
    first.steps = 3;
    cr_assert_eq(pd_run_cpu(&c, &first, dirty, &dev, &ctx), FKV_OK);
    cr_assert_eq(fkv_device_open("cpu", NULL, &other), FKV_OK);

    size_t qn = (size_t)c.n_q_heads * c.head_dim, kvn = (size_t)c.n_kv_heads * c.head_dim;
    float q[256] = {0}, k[256] = {0}, v[256] = {0}, o[256];
    fkv_tensor tq = {q, NULL, 0}, tk = {k, NULL, 0}, tv = {v, NULL, 0}, to = {o, NULL, 0};
    uint32_t seq = 0, bad_seq = 9, two[2] = {0, 0};
    uint32_t len_before;
    cr_assert_eq(fkv_sequence_length(ctx, 0, &len_before), FKV_OK);

    cr_assert_eq(fkv_decode_layer(ctx, 1, 1, &seq, &tq, &tk, &tv, &to), FKV_ERR_BAD_STATE,
                 "layer out of order");
    cr_assert_eq(fkv_decode_layer(ctx, 7, 1, &seq, &tq, &tk, &tv, &to), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_decode_layer(ctx, 0, 1, &bad_seq, &tq, &tk, &tv, &to),
                 FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_decode_layer(ctx, 0, 2, two, &tq, &tk, &tv, &to), FKV_ERR_INVALID_ARGUMENT,
                 "duplicate sequence");
    cr_assert_eq(fkv_decode_layer(ctx, 0, 0, &seq, &tq, &tk, &tv, &to), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_decode_layer(ctx, 0, 1, NULL, &tq, &tk, &tv, &to), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_decode_layer(ctx, 0, 1, &seq, NULL, &tk, &tv, &to), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_decode_layer(NULL, 0, 1, &seq, &tq, &tk, &tv, &to), FKV_ERR_INVALID_ARGUMENT);
    fkv_tensor both = {q, NULL, 0};
    fkv_buffer *small, *foreign;
    cr_assert_eq(fkv_buffer_alloc(dev, qn * 4 - 4, &small), FKV_OK);
    cr_assert_eq(fkv_buffer_alloc(other, qn * 4, &foreign), FKV_OK);
    both.buffer = small;
    cr_assert_eq(fkv_decode_layer(ctx, 0, 1, &seq, &both, &tk, &tv, &to), FKV_ERR_INVALID_ARGUMENT,
                 "host and buffer both set");
    fkv_tensor short_q = {NULL, small, 0}, foreign_q = {NULL, foreign, 0};
    cr_assert_eq(fkv_decode_layer(ctx, 0, 1, &seq, &short_q, &tk, &tv, &to),
                 FKV_ERR_INVALID_ARGUMENT, "buffer too small");
    cr_assert_eq(fkv_decode_layer(ctx, 0, 1, &seq, &foreign_q, &tk, &tv, &to),
                 FKV_ERR_WRONG_DEVICE);
    cr_assert_eq(fkv_prefill(ctx, 0, 0, 10, &tk, &tv, &tq), FKV_ERR_BAD_STATE,
                 "prefill of a non-empty sequence");
    cr_assert_eq(fkv_prefill(ctx, 1, 1, 4, &tk, &tv, &tq), FKV_ERR_BAD_STATE, "layer 1 first");
    cr_assert_eq(fkv_prefill(ctx, 1, 0, 0, &tk, &tv, &tq), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_prefill(ctx, 1, 0, c.max_context + 1, &tk, &tv, &tq), FKV_ERR_CONTEXT_FULL);
    cr_assert_eq(fkv_prefill(ctx, 1, 0, 4, NULL, &tv, &tq), FKV_ERR_INVALID_ARGUMENT);
    (void)kvn;

    uint32_t len_after;
    cr_assert_eq(fkv_sequence_length(ctx, 0, &len_after), FKV_OK);
    cr_assert_eq(len_after, len_before);
    /* resume the run: same output as if nothing had happened */
    r.first_step = 3;
    r.resume = 1;
    cr_assert_eq(pd_execute(ctx, &r, dirty), FKV_OK, "%s", fkv_last_error());
    cr_assert(memcmp(clean, dirty, n_out * sizeof(float)) == 0,
              "%s: output changed by rejected calls", fkv_policy_name(policy));
    fkv_buffer_release(small);
    fkv_buffer_release(foreign);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
    fkv_device_close(other);
    free(clean);
    free(dirty);
}

Test(errors, bad_calls_keep_state_freekv) { bad_calls_keep_state(FKV_POLICY_FREEKV); }
Test(errors, bad_calls_keep_state_sync) { bad_calls_keep_state(FKV_POLICY_SYNC); }
Test(errors, bad_calls_keep_state_quest) { bad_calls_keep_state(FKV_POLICY_QUEST); }

Test(errors, context_overflow) {
    fkv_config c = cfg_of(FKV_POLICY_FREEKV);
    c.max_context = 48;
    pd_run r = run_one(46, 2);
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(pd_run_cpu(&c, &r, NULL, &dev, &ctx), FKV_OK, "%s", fkv_last_error());
    r.first_step = 2;
    r.steps = 3;
    r.resume = 1;
    cr_assert_eq(pd_execute(ctx, &r, NULL), FKV_ERR_CONTEXT_FULL);
    uint32_t n;
    cr_assert_eq(fkv_sequence_length(ctx, 0, &n), FKV_OK);
    cr_assert_eq(n, 48);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

Test(errors, out_of_host_memory_leaves_sequence_intact) {
    fkv_config c = cfg_of(FKV_POLICY_FREEKV);
    pd_run r = run_one(200, 0);
    /* measure what the context itself holds, then allow exactly one host pool chunk per layer */
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(pd_run_cpu(&c, &r, NULL, &dev, &ctx), FKV_OK);
    fkv_stats s;
    fkv_context_get_stats(ctx, &s);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
    char limit[32];
    snprintf(limit, sizeof limit, "%llu", (unsigned long long)s.host_bytes);
    setenv("FREEKV_CPU_HOST_MEMORY", limit, 1);
    r.steps = 50; /* 250 tokens: chunk 1 holds pages 0..63; page 64 (token 259) needs chunk 2 */
    cr_assert_eq(pd_run_cpu(&c, &r, NULL, &dev, &ctx), FKV_OK, "%s", fkv_last_error());
    r.first_step = 50;
    r.steps = 200;
    r.resume = 1;
    uint32_t len;
    fkv_sequence_length(ctx, 0, &len);
    /* run until the pool must grow */
    fkv_status st = pd_execute(ctx, &r, NULL);
    cr_assert_eq(st, FKV_ERR_OUT_OF_HOST_MEMORY, "got %d: %s", st, fkv_last_error());
    uint32_t n0;
    fkv_sequence_length(ctx, 0, &n0);
    cr_assert_eq(n0 % c.page_size, c.page_size - 1, "failed where a page would fill (%u)", n0);
    size_t kvn = (size_t)c.n_kv_heads * c.head_dim;
    float *k = malloc(sizeof(float) * c.max_context * kvn), *v = malloc(sizeof(float) * c.max_context * kvn);
    float *want = malloc(sizeof(float) * kvn);
    for (uint32_t l = 0; l < c.n_layers; l++) {
        uint32_t n;
        cr_assert_eq(fkv_context_read_kv(ctx, 0, l, k, v, c.max_context, &n), FKV_OK);
        cr_assert_eq(n, n0, "layer %u changed length", l);
        for (uint32_t t = 0; t < n; t++) {
            pd_data(0, 0, l, t, want, kvn);
            cr_assert(memcmp(want, k + t * kvn, kvn * 4) == 0, "layer %u token %u", l, t);
        }
    }
    free(k), free(v), free(want);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

Test(errors, context_calls_reject_bad_input) {
    fkv_config c = cfg_of(FKV_POLICY_FREEKV);
    pd_run r = run_one(30, 2);
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(pd_run_cpu(&c, &r, NULL, &dev, &ctx), FKV_OK);
    fkv_config got;
    fkv_stats s;
    uint64_t corr[2];
    int32_t pages[8];
    size_t n;
    uint32_t len;
    float k[4], v[4];
    cr_assert_eq(fkv_context_get_config(NULL, &got), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_get_config(ctx, NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_sequence_reset(NULL, 0), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_sequence_reset(ctx, 99), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_sequence_length(ctx, 99, &len), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_sequence_length(ctx, 0, NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_sync(NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_get_stats(NULL, &s), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_get_stats(ctx, NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_get_corrections(ctx, corr, 2), FKV_ERR_INVALID_ARGUMENT,
                 "capacity below layers x KV heads");
    cr_assert_eq(fkv_context_get_corrections(NULL, corr, 2), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_reset_stats(NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_attended_pages(ctx, 0, 5, 0, pages, 8, &n), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_attended_pages(ctx, 0, 0, 9, pages, 8, &n), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_attended_pages(ctx, 0, 0, 0, NULL, 8, &n), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_attended_pages(ctx, 0, 0, 0, pages, 8, &n), FKV_OK);
    cr_assert_eq(fkv_context_read_kv(ctx, 0, 0, k, v, 1, &len), FKV_ERR_INVALID_ARGUMENT,
                 "capacity too small");
    cr_assert_eq(len, 32, "the needed count is reported");
    cr_assert_eq(fkv_context_read_kv(ctx, 0, 0, NULL, v, 40, &len), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_read_kv(NULL, 0, 0, k, v, 1, &len), FKV_ERR_INVALID_ARGUMENT);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

Test(errors, reset_sequence_then_reuse_equals_fresh) {
    fkv_config c = cfg_of(FKV_POLICY_FREEKV);
    pd_run r = run_one(50, 5);
    size_t n_out = pd_out_floats(&c, &r);
    float *fresh = calloc(n_out, sizeof(float)), *again = calloc(n_out, sizeof(float));
    cr_assert_eq(pd_run_cpu(&c, &r, fresh, NULL, NULL), FKV_OK);
    fkv_device *dev;
    fkv_context *ctx;
    pd_run other = run_one(90, 7); /* different data in the same slots first */
    other.seqs[0] = 0;
    cr_assert_eq(pd_run_cpu(&c, &other, NULL, &dev, &ctx), FKV_OK);
    cr_assert_eq(fkv_sequence_reset(ctx, 0), FKV_OK, "%s", fkv_last_error());
    uint32_t len;
    cr_assert_eq(fkv_sequence_length(ctx, 0, &len), FKV_OK);
    cr_assert_eq(len, 0);
    cr_assert_eq(pd_execute(ctx, &r, again), FKV_OK, "%s", fkv_last_error());
    cr_assert(memcmp(fresh, again, n_out * sizeof(float)) == 0, "reused sequence differs");
    free(fresh);
    free(again);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

/* Every layer of a sequence holds the same prompt: a prefill of another length on a later
 * layer is refused, and the sequence is as before. */
Test(errors, prefill_length_must_match_layer_0) {
    fkv_config c = cfg_of(FKV_POLICY_FREEKV);
    fkv_device *dev;
    fkv_context *ctx;
    cr_assert_eq(fkv_device_open("cpu", NULL, &dev), FKV_OK);
    cr_assert_eq(fkv_context_create(dev, &c, &ctx), FKV_OK, "%s", fkv_last_error());
    size_t kvn = (size_t)c.n_kv_heads * c.head_dim, qn = (size_t)c.n_q_heads * c.head_dim;
    float *k = calloc(9 * kvn, sizeof(float)), *v = calloc(9 * kvn, sizeof(float));
    float *q = calloc(qn, sizeof(float));
    pd_data(0, 0, 0, 0, k, 9 * kvn);
    pd_data(1, 0, 0, 0, v, 9 * kvn);
    pd_data(3, 0, 0, 0, q, qn);
    fkv_tensor tk = {k, NULL, 0}, tv = {v, NULL, 0}, tq = {q, NULL, 0};
    cr_assert_eq(fkv_prefill(ctx, 0, 0, 8, &tk, &tv, &tq), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_prefill(ctx, 0, 1, 9, &tk, &tv, &tq), FKV_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(fkv_last_error(), "9 tokens") && strstr(fkv_last_error(), "layer 0 holds 8"),
              "%s", fkv_last_error());
    cr_assert_eq(fkv_prefill(ctx, 0, 1, 7, &tk, &tv, &tq), FKV_ERR_INVALID_ARGUMENT);
    uint32_t n;
    cr_assert_eq(fkv_context_read_kv(ctx, 0, 1, k, v, 9, &n), FKV_OK);
    cr_assert_eq(n, 0, "layer 1 stays empty");
    cr_assert_eq(fkv_prefill(ctx, 0, 1, 8, &tk, &tv, &tq), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_sequence_length(ctx, 0, &n), FKV_OK);
    cr_assert_eq(n, 8);
    free(k), free(v), free(q);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}
