/* Configuration validation: defaults are valid, and every bad field has its own error. */
#include <criterion/criterion.h>
#include <math.h>
#include <string.h>

#include "helpers.h"

static void expect_bad(fkv_config c, const char *field) {
    cr_assert_eq(fkv_config_validate(&c), FKV_ERR_INVALID_CONFIG, "%s accepted", field);
    cr_assert(strstr(fkv_last_error(), field) != NULL, "message '%s' does not name %s",
              fkv_last_error(), field);
}

Test(config, defaults_are_valid_and_llama_shaped) {
    fkv_config c;
    fkv_config_init(&c);
    cr_assert_eq(fkv_config_validate(&c), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(c.n_layers, 32);
    cr_assert_eq(c.n_kv_heads, 8);
    cr_assert_eq(c.policy, FKV_POLICY_FREEKV);
    fkv_config_init(NULL); /* no crash */
    cr_assert_eq(fkv_config_validate(NULL), FKV_ERR_INVALID_ARGUMENT);
}

Test(config, every_bad_field) {
    fkv_config ok;
    fkv_config_init(&ok);
    fkv_config c;
#define BAD(field, value)       \
    c = ok;                     \
    c.field = value;            \
    expect_bad(c, #field);
    BAD(n_layers, 0)
    BAD(n_layers, 5000)
    BAD(n_kv_heads, 0)
    BAD(n_q_heads, 0)
    BAD(n_q_heads, 30) /* not a multiple of 8 KV heads */
    BAD(head_dim, 8)
    BAD(head_dim, 130)
    BAD(head_dim, 512)
    BAD(page_size, 0)
    BAD(page_size, 1000)
    BAD(sink_tokens, 33)
    BAD(window_tokens, 32) /* one page: too small */
    BAD(window_tokens, 100)
    BAD(budget_tokens, 1000) /* below sink + window */
    BAD(budget_tokens, 2050)
    BAD(tau, 1.5f)
    BAD(tau, -2.0f)
    BAD(tau, NAN)
    BAD(dtype, (fkv_dtype)7)
    BAD(policy, (fkv_policy)9)
    BAD(group_reduce, (fkv_group_reduce)5)
    BAD(group_temperature, (fkv_group_temp)2)
    BAD(host_format, (fkv_host_format)3)
    BAD(max_seqs, 0)
    BAD(max_context, 0)
    BAD(recall_chunk_pages, 1u << 30)
#undef BAD
}

Test(config, context_create_rejects_bad_config_without_side_effects) {
    fkv_device *dev;
    cr_assert_eq(fkv_device_open("cpu", NULL, &dev), FKV_OK);
    fkv_config c;
    th_small_config(&c);
    c.head_dim = 3;
    fkv_context *ctx = (fkv_context *)0x1;
    cr_assert_eq(fkv_context_create(dev, &c, &ctx), FKV_ERR_INVALID_CONFIG);
    cr_assert_null(ctx);
    cr_assert_eq(fkv_context_create(NULL, &c, &ctx), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_create(dev, NULL, &ctx), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_context_create(dev, &c, NULL), FKV_ERR_INVALID_ARGUMENT);
    th_small_config(&c);
    cr_assert_eq(fkv_context_create(dev, &c, &ctx), FKV_OK, "%s", fkv_last_error());
    fkv_context_destroy(ctx);
    fkv_context_destroy(NULL);
    fkv_device_close(dev);
}

Test(config, names_and_parsing) {
    fkv_policy p;
    cr_assert_eq(fkv_policy_parse("speculative", &p), FKV_OK);
    cr_assert_eq(p, FKV_POLICY_SPECULATIVE);
    cr_assert_eq(fkv_policy_parse("fast", &p), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_policy_parse(NULL, &p), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_str_eq(fkv_policy_name((fkv_policy)42), "unknown");
    cr_assert_str_eq(fkv_dtype_name(FKV_BF16), "bf16");
    cr_assert_eq(fkv_dtype_size(FKV_F16), 2);
    cr_assert_eq(fkv_dtype_size((fkv_dtype)9), 0);
    cr_assert_str_eq(fkv_status_string(FKV_ERR_CONTEXT_FULL),
                     "sequence reached the configured maximum context");
    cr_assert_str_eq(fkv_status_string(12345), "unknown status");
    cr_assert_str_eq(fkv_status_string(FKV_OK), "success");
}

/* A budget beyond what max_context can hold is refused by validation, for every policy,
 * before context creation allocates anything (it used to allocate gigabytes first). */
Test(config, budget_beyond_max_context_is_refused) {
    fkv_device *dev;
    cr_assert_eq(fkv_device_open("cpu", NULL, &dev), FKV_OK);
    for (int policy = FKV_POLICY_DENSE; policy <= FKV_POLICY_FREEKV; policy++) {
        fkv_config c;
        th_small_config(&c);
        c.policy = (fkv_policy)policy;
        c.max_context = 256;
        c.budget_tokens = 4294967280u;
        expect_bad(c, "budget_tokens");
        cr_assert(strstr(fkv_last_error(), "max_context"), "%s", fkv_last_error());
        fkv_context *ctx = (fkv_context *)0x1;
        cr_assert_eq(fkv_context_create(dev, &c, &ctx), FKV_ERR_INVALID_CONFIG, "%s",
                     fkv_policy_name(c.policy));
        cr_assert_null(ctx);
        /* max_context 250 is 63 pages of 4: a budget of 252 tokens fits, 256 does not */
        c.max_context = 250;
        c.budget_tokens = 252;
        cr_assert_eq(fkv_config_validate(&c), FKV_OK, "%s", fkv_last_error());
        c.budget_tokens = 256;
        expect_bad(c, "budget_tokens");
    }
    fkv_device_close(dev);
}

Test(config, sums_of_fields_do_not_wrap) {
    fkv_config c;
    th_small_config(&c);
    c.sink_tokens = 4294967292u; /* + window 8 wraps to 4 in 32 bits, below budget 32 */
    expect_bad(c, "budget_tokens");
}

/* Quest kept every selected page in a fixed per-thread list of 4096: more were accepted. */
Test(config, selected_pages_are_bounded_for_every_policy) {
    for (int policy = FKV_POLICY_DENSE; policy <= FKV_POLICY_FREEKV; policy++) {
        fkv_config c;
        th_small_config(&c);
        c.policy = (fkv_policy)policy;
        c.page_size = 1;
        c.sink_tokens = 8;
        c.window_tokens = 8;
        c.max_context = 16384;
        c.budget_tokens = 16 + 4096;
        cr_assert_eq(fkv_config_validate(&c), FKV_OK, "%s", fkv_last_error());
        c.budget_tokens = 16 + 4097;
        expect_bad(c, "budget_tokens");
    }
}

/* The device interface indexes rows, summaries, attention entries and scores with int32:
 * a geometry beyond that is refused when validated (no allocation), one just inside passes. */
Test(config, device_indices_fit_int32) {
    fkv_config c;
    th_small_config(&c);
    /* dense keeps every page: rows = max_seqs x max_context */
    c.policy = FKV_POLICY_DENSE;
    c.page_size = 16;
    c.sink_tokens = 32;
    c.window_tokens = 32;
    c.budget_tokens = 64;
    c.max_context = 1u << 24;
    c.max_seqs = 128; /* 2^31 rows */
    expect_bad(c, "max_seqs");
    cr_assert(strstr(fkv_last_error(), "2^31"), "%s", fkv_last_error());
    c.max_seqs = 127; /* 2130706432 rows */
    cr_assert_eq(fkv_config_validate(&c), FKV_OK, "%s", fkv_last_error());
    /* offload policies keep the budget: rows = max_seqs x budget_tokens */
    c.policy = FKV_POLICY_FREEKV;
    c.page_size = 256;
    c.sink_tokens = 256;
    c.window_tokens = 512;
    c.max_seqs = 4096;
    c.budget_tokens = 524288; /* 2048 pages: 2^31 rows */
    expect_bad(c, "max_seqs");
    c.budget_tokens = 524288 - 256;
    cr_assert_eq(fkv_config_validate(&c), FKV_OK, "%s", fkv_last_error());
    /* summaries: max_seqs x pages of max_context (one query head: the batch's scores are as
     * many) */
    c.page_size = 16;
    c.sink_tokens = 32;
    c.window_tokens = 32;
    c.budget_tokens = 64;
    c.n_q_heads = c.n_kv_heads = 1;
    c.max_seqs = 2048; /* 2048 x 2^20 pages */
    expect_bad(c, "max_context");
    c.max_seqs = 2047;
    cr_assert_eq(fkv_config_validate(&c), FKV_OK, "%s", fkv_last_error());
    /* scores of a batch (one call scores it): max_seqs x n_q_heads x pages */
    c.n_q_heads = c.n_kv_heads = 2;
    expect_bad(c, "n_q_heads");
    cr_assert(strstr(fkv_last_error(), "max_seqs"), "%s", fkv_last_error());
    c.max_seqs = 1023;
    cr_assert_eq(fkv_config_validate(&c), FKV_OK, "%s", fkv_last_error());
    /* scores of one sequence: n_q_heads x pages */
    c.max_seqs = 1;
    c.page_size = 1;
    c.sink_tokens = 2;
    c.window_tokens = 2;
    c.budget_tokens = 4;
    c.n_kv_heads = 128;
    c.n_q_heads = 128; /* 128 x 2^24 pages */
    expect_bad(c, "n_q_heads");
    c.n_q_heads = c.n_kv_heads = 127;
    cr_assert_eq(fkv_config_validate(&c), FKV_OK, "%s", fkv_last_error());
    /* and context creation refuses it before allocating: the device has 1 MiB */
    setenv("FREEKV_CPU_DEVICE_MEMORY", "1M", 1);
    fkv_device *dev;
    cr_assert_eq(fkv_device_open("cpu", NULL, &dev), FKV_OK, "%s", fkv_last_error());
    c.n_q_heads = c.n_kv_heads = 128;
    fkv_context *ctx = (fkv_context *)0x1;
    cr_assert_eq(fkv_context_create(dev, &c, &ctx), FKV_ERR_INVALID_CONFIG, "%s",
                 fkv_last_error());
    cr_assert_null(ctx);
    fkv_device_close(dev);
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
}

/* Context creation adds up the device memory it needs before allocating any: a context the
 * device cannot hold fails at once, naming the total, instead of after allocating a part. */
Test(config, context_larger_than_the_device_fails_before_allocating) {
    setenv("FREEKV_CPU_DEVICE_MEMORY", "64M", 1);
    fkv_device *dev;
    cr_assert_eq(fkv_device_open("cpu", NULL, &dev), FKV_OK, "%s", fkv_last_error());
    fkv_config c;
    th_small_config(&c);
    c.n_layers = 64;
    c.max_context = 8192; /* about 2.2 MiB of device memory per layer, 140 MiB in all */
    fkv_context *ctx = (fkv_context *)0x1;
    cr_assert_eq(fkv_context_create(dev, &c, &ctx), FKV_ERR_OUT_OF_DEVICE_MEMORY, "%s",
                 fkv_last_error());
    cr_assert_null(ctx);
    cr_assert(strstr(fkv_last_error(), "the context needs") &&
                  strstr(fkv_last_error(), "64 layers"),
              "%s", fkv_last_error());
    c.n_layers = 16; /* about 35 MiB: fits */
    cr_assert_eq(fkv_context_create(dev, &c, &ctx), FKV_OK, "%s", fkv_last_error());
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
    unsetenv("FREEKV_CPU_DEVICE_MEMORY");
}
