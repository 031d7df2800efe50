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
