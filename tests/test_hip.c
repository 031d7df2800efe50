/* The HIP backend's host-side logic: its table, enumeration without a GPU (0 devices, never an
 * error), environment and argument checks that refuse a call before the runtime is touched,
 * and the f16/bf16 conversions of the kernels against common/dtype.h. On a GPU, suite hip_gpu
 * runs every op spec of conformance/ against the CPU reference as the OpenCL and Vulkan tests
 * do (tests/backend_harness.h), and the conformance runner covers the rest
 * (freekv-conformance --backend hip, docs/hip.md). Tests that need a device skip when no HIP
 * device exists (CI has none). Criterion forks per test: nothing touches the HIP runtime
 * before the fork. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "backend_harness.h"
#include "backends/dispatch.h"
#include "common/dtype.h"
#include "hip/hip_dtype.h"

static const fkv_backend_ops *hip(void) {
    const fkv_backend_ops *ops = fkv_backend_hip();
    cr_assert_not_null(ops, "FKV_HAVE_HIP builds have a HIP table");
    return ops;
}

Test(hip, table_is_complete) {
    const fkv_backend_ops *o = hip();
    cr_assert_eq(fkv_backend_check(o), FKV_OK, "%s", fkv_last_error());
    cr_assert_str_eq(o->name, "hip");
    cr_assert_not_null(o->recall_direct);
    cr_assert_not_null(o->recall_mode);
    cr_assert_not_null(o->attention_dense);
    cr_assert_not_null(o->buffer_import);
    cr_assert_not_null(o->opened_info);
    cr_assert_not_null(o->set_option);
    cr_assert_not_null(o->get_option);
}

Test(hip, enumeration_without_gpu_is_not_an_error) {
    const fkv_backend_ops *o = hip();
    uint32_t n = 12345;
    cr_assert_eq(o->device_count(&n), FKV_OK, "%s", fkv_last_error());
    cr_assert_lt(n, 12345u);
    fkv_device_info info;
    cr_assert_eq(o->device_info(n, &info), FKV_ERR_NO_DEVICE);
    fkv_bdev *d = (fkv_bdev *)&n;
    unsetenv("FREEKV_HIP_RECALL");
    cr_assert_eq(o->device_open(n, &d), FKV_ERR_NO_DEVICE);
    cr_assert_null(d);
    size_t count = 99;
    cr_assert_eq(fkv_device_list("hip", NULL, 0, &count), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(count, n);
}

/* Enumeration refuses NULL outputs itself (the registry's calls); every other entry
 * receives only calls the dispatch layer checked (tests/test_dispatch.c), as on every
 * backend. */
Test(hip, null_arguments) {
    const fkv_backend_ops *o = hip();
    cr_assert_eq(o->device_count(NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(o->device_info(0, NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(o->device_open(0, NULL), FKV_ERR_INVALID_ARGUMENT);
    o->device_close(NULL);
}

Test(hip, bad_recall_environment_fails_before_the_runtime) {
    const fkv_backend_ops *o = hip();
    fkv_bdev *d = NULL;
    setenv("FREEKV_HIP_RECALL", "zero-copy", 1);
    cr_assert_eq(o->device_open(0, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert_null(d);
    const char *msg = fkv_last_error();
    cr_assert(strstr(msg, "FREEKV_HIP_RECALL") && strstr(msg, "auto") && strstr(msg, "zerocopy") &&
                  strstr(msg, "staged") && strstr(msg, "perpage"),
              "message lists the valid values: %s", msg);
    unsetenv("FREEKV_HIP_RECALL");
}

/* The kernels' conversions (hip/hip_dtype.h, integer-only) against the reference on a spread
 * of bit patterns: every f16/bf16 value back, and f32 values around every rounding boundary.
 * (An exhaustive sweep of all 2^32 floats agrees too; too slow for every test run.) */
Test(hip, dtype_conversions_match_the_reference) {
    for (uint32_t h = 0; h < 65536; h++) {
        cr_assert_eq(fkv_f32_bits(fkv_hip_f16_to_f32((uint16_t)h)),
                     fkv_f32_bits(fkv_f16_to_f32((uint16_t)h)), "f16 %04x", h);
        cr_assert_eq(fkv_f32_bits(fkv_hip_bf16_to_f32((uint16_t)h)),
                     fkv_f32_bits(fkv_bf16_to_f32((uint16_t)h)), "bf16 %04x", h);
    }
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (uint32_t i = 0; i < 4000000; i++) {
        uint32_t u;
        if (i < 2 * 65536) { /* each f16/bf16 value's neighbourhood, both signs */
            uint32_t e = (i >> 1) & 0xffffu;
            u = ((i & 1) ? 0x80000000u : 0) | (((e & 0x7fffu) << 16) + (i & 0x1ffu) - 0x100u);
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            u = (uint32_t)x;
        }
        float f = fkv_bits_f32(u);
        cr_assert_eq(fkv_hip_f32_to_f16(f), fkv_f32_to_f16(f), "f16 of %08x", u);
        cr_assert_eq(fkv_hip_f32_to_bf16(f), fkv_f32_to_bf16(f), "bf16 of %08x", u);
        cr_assert_eq(fkv_hip_f16_bits_round_down(f), fkv_f32_to_f16_down(f), "f16 down of %08x",
                     u);
        cr_assert_eq(fkv_hip_f16_bits_round_up(f), fkv_f32_to_f16_up(f), "f16 up of %08x", u);
        /* the quantizer's rounding, common/hostfmt.c's f16_directed: an infinity both ways
         * where round-to-nearest overflows */
        uint16_t rn = fkv_f32_to_f16(f);
        for (uint32_t up = 0; up < 2; up++)
            cr_assert_eq(fkv_hip_f16_quant_directed(u, up),
                         (rn & 0x7fffu) == 0x7c00u ? rn : fkv_f32_to_f16_directed(f, (int)up),
                         "quantizer f16 %s of %08x", up ? "up" : "down", u);
    }
    for (uint32_t u = 0x33000000u; u < 0x38800000u; u += 97) { /* f16 subnormal range */
        float f = fkv_bits_f32(u);
        cr_assert_eq(fkv_hip_f32_to_f16(f), fkv_f32_to_f16(f), "f16 of %08x", u);
        cr_assert_eq(fkv_hip_f16_bits_round_down(-f), fkv_f32_to_f16_down(-f), "down of -%08x", u);
        cr_assert_eq(fkv_hip_f16_bits_round_up(f), fkv_f32_to_f16_up(f), "up of %08x", u);
    }
}

/* ---- with a device (skipped here: no HIP GPU) ---- */

static fkv_device *open_or_skip(void) {
    uint32_t n = 0;
    unsetenv("FREEKV_HIP_RECALL");
    if (hip()->device_count(&n) != FKV_OK || n == 0)
        cr_skip_test("no HIP device");
    fkv_device *d = NULL;
    cr_assert_eq(fkv_device_open("hip", "0", &d), FKV_OK, "%s", fkv_last_error());
    return d;
}

Test(hip, argument_checks_refuse_before_enqueueing) {
    fkv_device *d = open_or_skip();
    fkv_kv_geom g = {.n_kv_heads = 2, .group = 2,
            .head_dim = 64, .page_size = 16, .dtype = FKV_F16};
    fkv_bbuf *buf = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(d, 4096, &buf), FKV_OK, "%s", fkv_last_error());
    fkv_bevent *ev = (fkv_bevent *)&ev;
    fkv_deps deps = {0, NULL, &ev};
    char host[64] = {0};
    cr_assert_eq(fkv_op_write(d, (fkv_queue)7, deps, buf, 0, host, 8), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_null(ev);
    cr_assert_eq(fkv_op_write(d, FKV_QUEUE_TRANSFER, deps, buf, 4090, host, 8),
                 FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(
        fkv_op_append(d, FKV_QUEUE_TRANSFER, deps, &g, buf, 0, buf, 0, 1, buf, 0, buf, buf),
        FKV_ERR_INVALID_ARGUMENT, "kernels only on compute/background");
    cr_assert_eq(fkv_op_cosine_flags(d, FKV_QUEUE_COMPUTE, deps, &g, buf, 2, buf, 0, buf, 0, 1,
                                     0.9f, buf, 0, buf, 0),
                 FKV_ERR_INVALID_ARGUMENT, "misaligned offset");
    fkv_deps bad = {2, NULL, &ev};
    cr_assert_eq(fkv_op_marker(d, FKV_QUEUE_COMPUTE, bad), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_null(ev);
    fkv_device_info info;
    cr_assert_eq(fkv_op_opened_info(d, &info), FKV_OK);
    cr_assert_str_eq(info.backend, "hip");
    fkv_recall_mode mode = fkv_op_recall_mode(d);
    cr_assert(mode == FKV_RECALL_DIRECT || mode == FKV_RECALL_STAGED);
    cr_assert_eq(fkv_op_set_option(d, "no_such_key", "1"), FKV_ERR_UNSUPPORTED);
    cr_assert(strstr(fkv_last_error(), "attention_splits") &&
                  strstr(fkv_last_error(), "shared_memory_bytes"),
              "%s", fkv_last_error());
    fkv_op_buffer_free(d, buf);
    fkv_device_close(d);
}

Test(hip, recall_environment_picks_the_mode) {
    fkv_device *d = open_or_skip();
    fkv_device_close(d);
    static const struct {
        const char *value;
        fkv_recall_mode mode;
    } cases[] = {{"staged", FKV_RECALL_STAGED}, {"perpage", FKV_RECALL_PERPAGE}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        setenv("FREEKV_HIP_RECALL", cases[i].value, 1);
        cr_assert_eq(fkv_device_open("hip", "0", &d), FKV_OK, "%s", fkv_last_error());
        cr_assert_eq(fkv_op_recall_mode(d), cases[i].mode, "%s", cases[i].value);
        fkv_device_close(d);
    }
    unsetenv("FREEKV_HIP_RECALL");
}

/* ---- every op against the CPU reference (needs a HIP GPU) ---- */

static const char *const hip_env[] = {"FREEKV_HIP_RECALL", NULL};
static const bh_backend hip_backend = {
    .name = "hip",
    .ops = fkv_backend_hip,
    .env = hip_env,
    .recall_env = "FREEKV_HIP_RECALL",
};

static void open_both(void) {
    bh_select(&hip_backend);
    bh_open_both();
}

static void env_only(void) {
    bh_select(&hip_backend);
    bh_clear_env();
}

TestSuite(hip_gpu, .init = open_both, .fini = bh_teardown, .timeout = 300);
TestSuite(hip_gpu_env, .init = env_only, .fini = bh_teardown, .timeout = 300);

BH_SPEC_TESTS(hip_gpu)

Test(hip_gpu, device_info_and_table) {
    fkv_device_info info;
    bh_check_device_info(&info);
    cr_assert(info.type == FKV_DEVICE_DISCRETE_GPU || info.type == FKV_DEVICE_INTEGRATED_GPU);
}
/* Issue #12: group 64 x head_dim 256 runs (or a device that cannot is refused at creation). */
Test(hip_gpu, large_group_pipeline) { bh_check_large_group(); }
Test(hip_gpu_env, pipeline_matches_reference) {
    static const char *const modes[] = {"staged", "perpage", "auto"};
    bh_check_pipeline(modes, 3);
}
