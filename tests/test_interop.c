/* Engine interop on every build (include/freekv.h, "engine interop"): the public calls'
 * arguments, and the CPU reference, which has no native API: fkv_device_get_native and
 * fkv_decode_layer_sync's waits and signal are refused with FKV_ERR_UNSUPPORTED before any
 * work, and a call without them is fkv_decode_layer. The OpenCL and Vulkan sides:
 * test_interop_opencl.c, test_interop_vulkan.c; the engine examples (examples/) run as tests
 * too. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

static fkv_device *open_cpu(void) {
    fkv_device *dev;
    cr_assert_eq(fkv_device_open("cpu", NULL, &dev), FKV_OK, "%s", fkv_last_error());
    return dev;
}

Test(interop, native_api_names) {
    cr_assert_str_eq(fkv_native_api_name(FKV_NATIVE_OPENCL), "opencl");
    cr_assert_str_eq(fkv_native_api_name(FKV_NATIVE_VULKAN), "vulkan");
    cr_assert_str_eq(fkv_native_api_name(FKV_NATIVE_HIP), "hip");
    cr_assert_str_eq(fkv_native_api_name(FKV_NATIVE_NONE), "none");
    cr_assert_str_eq(fkv_native_api_name((fkv_native_api)42), "none");
}

Test(interop, open_native_refuses_bad_arguments) {
    fkv_device *dev = (fkv_device *)&dev;
    fkv_native_objects objs = {.api = FKV_NATIVE_NONE};
    cr_assert_eq(fkv_device_open_native(NULL, &dev), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_device_open_native(&objs, NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_device_open_native(&objs, &dev), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_null(dev, "*out is NULL on failure");
    cr_assert(strstr(fkv_last_error(), "not a native API"), "%s", fkv_last_error());
    objs.api = (fkv_native_api)42;
    cr_assert_eq(fkv_device_open_native(&objs, &dev), FKV_ERR_INVALID_ARGUMENT);
    /* a HIP device that no machine has: no such device, compiled in or not */
    objs = (fkv_native_objects){.api = FKV_NATIVE_HIP, .hip = {.device = 4096}};
    cr_assert_eq(fkv_device_open_native(&objs, &dev), FKV_ERR_NO_DEVICE, "%s", fkv_last_error());
    cr_assert_null(dev);
}

Test(interop, reference_has_no_native_objects) {
    fkv_device *dev = open_cpu();
    fkv_native_objects objs;
    memset(&objs, 0xab, sizeof objs);
    cr_assert_eq(fkv_device_get_native(dev, &objs), FKV_ERR_UNSUPPORTED);
    cr_assert(strstr(fkv_last_error(), "backend 'cpu' has no native API"), "%s",
              fkv_last_error());
    cr_assert_eq(((unsigned char *)&objs)[0], 0xab, "out untouched on failure");
    cr_assert_eq(fkv_device_get_native(dev, NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_device_get_native(NULL, &objs), FKV_ERR_INVALID_ARGUMENT);
    fkv_device_close(dev);
}

/* A prefilled context of th_small_config on dev. */
static fkv_context *prefilled(fkv_device *dev, const fkv_config *cfg) {
    fkv_context *ctx;
    cr_assert_eq(fkv_context_create(dev, cfg, &ctx), FKV_OK, "%s", fkv_last_error());
    const uint32_t n = 40;
    size_t kv = (size_t)n * cfg->n_kv_heads * cfg->head_dim;
    float *k = malloc(kv * sizeof *k), *v = malloc(kv * sizeof *v);
    float q[64];
    th_rng r;
    for (uint32_t l = 0; l < cfg->n_layers; l++) {
        th_seed(&r, 100 + l);
        th_fill_normal(&r, k, kv, 1.0f);
        th_fill_normal(&r, v, kv, 1.0f);
        th_fill_normal(&r, q, (size_t)cfg->n_q_heads * cfg->head_dim, 1.0f);
        fkv_tensor tk = {k, NULL, 0}, tv = {v, NULL, 0}, tq = {q, NULL, 0};
        cr_assert_eq(fkv_prefill(ctx, 0, l, n, &tk, &tv, &tq), FKV_OK, "%s", fkv_last_error());
    }
    free(k);
    free(v);
    return ctx;
}

Test(interop, reference_refuses_external_sync_before_any_work) {
    fkv_device *dev = open_cpu();
    fkv_config cfg;
    th_small_config(&cfg);
    fkv_context *ctx = prefilled(dev, &cfg), *twin = prefilled(dev, &cfg);
    float q[64], k[32], v[32], out[64], twin_out[64];
    th_rng r;
    th_seed(&r, 7);
    th_fill_normal(&r, q, 64, 1.0f);
    th_fill_normal(&r, k, 32, 1.0f);
    th_fill_normal(&r, v, 32, 1.0f);
    fkv_tensor tq = {q, NULL, 0}, tk = {k, NULL, 0}, tv = {v, NULL, 0}, to = {out, NULL, 0};
    uint32_t seq = 0, before, after;
    fkv_native_event ev = {.handle = &ev}, sig = {0};
    const fkv_external_sync with_wait = {.n_wait = 1, .wait = &ev};
    const fkv_external_sync with_signal = {.signal = &sig};
    cr_assert_eq(fkv_sequence_length(ctx, 0, &before), FKV_OK);
    cr_assert_eq(fkv_decode_layer_sync(ctx, 0, 1, &seq, &tq, &tk, &tv, &to, &with_wait),
                 FKV_ERR_UNSUPPORTED);
    cr_assert(strstr(fkv_last_error(), "no native API"), "%s", fkv_last_error());
    cr_assert_eq(fkv_decode_layer_sync(ctx, 0, 1, &seq, &tq, &tk, &tv, &to, &with_signal),
                 FKV_ERR_UNSUPPORTED);
    cr_assert_null(sig.handle, "nothing signalled");
    fkv_stats s;
    cr_assert_eq(fkv_context_get_stats(ctx, &s), FKV_OK);
    cr_assert_eq(s.layer_calls, 0, "no work done");
    /* no waits and no signal: fkv_decode_layer itself, bit for bit */
    const fkv_external_sync none = {0};
    fkv_tensor tt = {twin_out, NULL, 0};
    for (uint32_t l = 0; l < cfg.n_layers; l++) {
        cr_assert_eq(fkv_decode_layer_sync(ctx, l, 1, &seq, &tq, &tk, &tv, &to,
                                           l ? &none : NULL),
                     FKV_OK, "%s", fkv_last_error());
        cr_assert_eq(fkv_decode_layer(twin, l, 1, &seq, &tq, &tk, &tv, &tt), FKV_OK);
        cr_assert_eq(memcmp(out, twin_out, sizeof out), 0, "layer %u", l);
    }
    cr_assert_eq(fkv_sequence_length(ctx, 0, &after), FKV_OK);
    cr_assert_eq(after, before + 1);
    cr_assert_eq(fkv_decode_layer_sync(NULL, 0, 1, &seq, &tq, &tk, &tv, &to, NULL),
                 FKV_ERR_INVALID_ARGUMENT);
    fkv_context_destroy(ctx);
    fkv_context_destroy(twin);
    fkv_device_close(dev);
}
