/* common/: error messages (fkv_error_prefix), the one set of rules for environment variables
 * (common/env.c), checked directly and through every variable the library reads, and the
 * storage types (common/dtype.[ch]): names, sizes, conversions rounded to nearest even. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <math.h>

#include "common/dtype.h"
#include "common/env.h"
#include "common/error.h"
#include "helpers.h"

/* ---- error messages ---- */

/* Message bodies of 700 to 2000 bytes: fkv_error keeps up to 959 of them, and
 * fkv_error_prefix then holds the old message in a 764-byte buffer. */
Test(error, prefix_of_a_long_message_is_cut_and_terminated) {
    static const size_t lengths[] = {700, 740, 763, 764, 765, 800, 958, 959, 960, 1200, 2000};
    for (size_t li = 0; li < sizeof lengths / sizeof *lengths; li++) {
        size_t n = lengths[li];
        char *body = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            body[i] = (char)('a' + i % 26);
        body[n] = '\0';
        fkv_error(FKV_ERR_KERNEL_BUILD, "%s", body);
        for (int depth = 1; depth <= 3; depth++) {
            cr_assert_eq(fkv_error_prefix(FKV_ERR_KERNEL_BUILD, "step %d", depth),
                         FKV_ERR_KERNEL_BUILD);
            const char *m = fkv_last_error();
            size_t len = strlen(m);
            cr_assert_lt(len, 1024, "length %zu: message of %zu bytes", n, len);
            char head[16];
            snprintf(head, sizeof head, "step %d: ", depth);
            cr_assert(strncmp(m, head, strlen(head)) == 0, "length %zu: '%.40s'", n, m);
        }
        /* the three prefixes, then the start of the original message, unchanged */
        const char *m = fkv_last_error();
        const char *want = "step 3: step 2: step 1: device program failed to build: ";
        cr_assert(strncmp(m, want, strlen(want)) == 0, "length %zu: '%.80s'", n, m);
        const char *rest = m + strlen(want);
        for (size_t i = 0; rest[i]; i++)
            cr_assert_eq(rest[i], (char)('a' + i % 26), "length %zu: byte %zu of the body", n, i);
        free(body);
    }
}

Test(error, prefix_without_a_message_uses_the_status) {
    fkv_error_clear();
    fkv_error_prefix(FKV_ERR_IO, "reading %s", "x");
    cr_assert_str_eq(fkv_last_error(), "reading x: input/output error");
}

/* ---- the rules, directly ---- */

static void expect_bad_env(fkv_status st, const char *var, const char *value) {
    char want[256];
    snprintf(want, sizeof want, "%s='%s' (valid: ", var, value);
    cr_assert_eq(st, FKV_ERR_BAD_ENVIRONMENT, "%s=%s: status %d (%s)", var, value, st,
                 fkv_last_error());
    cr_assert(strstr(fkv_last_error(), want) != NULL, "%s=%s: message '%s' lacks \"%s\"", var,
              value, fkv_last_error(), want);
}

Test(env, booleans) {
    static const char *const no[] = {"0", "false", "FALSE", "No", "off", "OFF"};
    static const char *const yes[] = {"1", "true", "True", "YES", "on", "oN"};
    static const char *const bad[] = {"2", "garbage", "yes please", " 1", "1 ", "-1", "o"};
    int v;
    unsetenv("FKV_TEST_BOOL");
    cr_assert_eq(fkv_env_bool("FKV_TEST_BOOL", 1, &v), FKV_OK);
    cr_assert_eq(v, 1, "unset: the default");
    setenv("FKV_TEST_BOOL", "", 1);
    cr_assert_eq(fkv_env_bool("FKV_TEST_BOOL", 0, &v), FKV_OK);
    cr_assert_eq(v, 0, "empty: the default");
    for (size_t i = 0; i < sizeof no / sizeof *no; i++) {
        setenv("FKV_TEST_BOOL", no[i], 1);
        cr_assert_eq(fkv_env_bool("FKV_TEST_BOOL", 1, &v), FKV_OK, "%s", no[i]);
        cr_assert_eq(v, 0, "%s", no[i]);
        setenv("FKV_TEST_BOOL", yes[i], 1);
        cr_assert_eq(fkv_env_bool("FKV_TEST_BOOL", 0, &v), FKV_OK, "%s", yes[i]);
        cr_assert_eq(v, 1, "%s", yes[i]);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv("FKV_TEST_BOOL", bad[i], 1);
        expect_bad_env(fkv_env_bool("FKV_TEST_BOOL", 0, &v), "FKV_TEST_BOOL", bad[i]);
        cr_assert(strstr(fkv_last_error(), "0, false, no, off, 1, true, yes, on"), "%s",
                  fkv_last_error());
    }
}

/* A parser under test, its result widened; good values and what they give, bad values. */
typedef fkv_status (*env_parse)(const char *var, uint64_t *v);
typedef struct env_good {
    const char *s;
    uint64_t v;
} env_good;

static void check_parse(const char *var, env_parse parse, const env_good *good, size_t n_good,
                        const char *const *bad, size_t n_bad) {
    uint64_t v;
    for (size_t i = 0; i < n_good; i++) {
        setenv(var, good[i].s, 1);
        cr_assert_eq(parse(var, &v), FKV_OK, "%s: %s", good[i].s, fkv_last_error());
        cr_assert_eq(v, good[i].v, "%s", good[i].s);
    }
    for (size_t i = 0; i < n_bad; i++) {
        setenv(var, bad[i], 1);
        expect_bad_env(parse(var, &v), var, bad[i]);
    }
    unsetenv(var);
}

static fkv_status parse_size(const char *var, uint64_t *v) { return fkv_env_size(var, 0, v); }

static fkv_status parse_count(const char *var, uint64_t *v) {
    uint32_t n = 0;
    fkv_status st = fkv_env_count(var, 256, &n);
    *v = n;
    return st;
}

Test(env, sizes) {
    static const env_good good[] = {{"1", 1},          {"4096", 4096},       {"64k", 64 << 10},
                                    {"64M", 64ull << 20}, {"3g", 3ull << 30},
                                    {"17179869183G", 17179869183ull << 30}};
    static const char *const bad[] = {"0", "0M", "-5", "12Q", "1.5G", "M", "64 M", "64MB",
                                      "99999999999999999999", "17179869184G"};
    uint64_t v;
    unsetenv("FKV_TEST_SIZE");
    cr_assert_eq(fkv_env_size("FKV_TEST_SIZE", 77, &v), FKV_OK);
    cr_assert_eq(v, 77);
    setenv("FKV_TEST_SIZE", "", 1);
    cr_assert_eq(fkv_env_size("FKV_TEST_SIZE", 78, &v), FKV_OK);
    cr_assert_eq(v, 78);
    check_parse("FKV_TEST_SIZE", parse_size, good, sizeof good / sizeof *good, bad,
                sizeof bad / sizeof *bad);
}

/* Counts: unset, empty and auto are 0 (the caller's default). */
Test(env, counts) {
    static const env_good good[] = {{"1", 1},    {"16", 16},   {"256", 256},
                                    {"AUTO", 0}, {"auto", 0}, {"", 0}};
    static const char *const bad[] = {"0", "257", "-1", "+2", "2.0", "4 ", "x", "99999999999"};
    uint32_t n = 7;
    unsetenv("FKV_TEST_COUNT");
    cr_assert_eq(fkv_env_count("FKV_TEST_COUNT", 256, &n), FKV_OK);
    cr_assert_eq(n, 0);
    check_parse("FKV_TEST_COUNT", parse_count, good, sizeof good / sizeof *good, bad,
                sizeof bad / sizeof *bad);
}

Test(env, choices_are_case_insensitive) {
    static const char *const names[] = {"staged", "direct"};
    int i;
    setenv("FKV_TEST_CHOICE", "DiReCt", 1);
    cr_assert_eq(fkv_env_choice("FKV_TEST_CHOICE", names, 2, 0, &i), FKV_OK);
    cr_assert_eq(i, 1);
    setenv("FKV_TEST_CHOICE", "fast", 1);
    expect_bad_env(fkv_env_choice("FKV_TEST_CHOICE", names, 2, 0, &i), "FKV_TEST_CHOICE", "fast");
    cr_assert(strstr(fkv_last_error(), "(valid: staged, direct)"), "%s", fkv_last_error());
}

/* ---- every variable the library reads ---- */

static const char *const library_vars[] = {
    "FREEKV_BACKEND",           "FREEKV_DEVICE",          "FREEKV_CPU_RECALL",
    "FREEKV_CPU_ISA",           "FREEKV_CPU_THREADS",     "FREEKV_CPU_DEVICE_MEMORY",
    "FREEKV_CPU_HOST_MEMORY",   "FREEKV_OPENCL_RECALL",   "FREEKV_OPENCL_FAST_MATH",
    "FREEKV_OPENCL_BINARY_CACHE", "FREEKV_OPENCL_CPU_KERNELS", "FREEKV_VULKAN_RECALL",
    "FREEKV_VULKAN_16BIT",      "FREEKV_VULKAN_VALIDATION", "FREEKV_HIP_RECALL"};

static void clear_env(void) {
    for (size_t i = 0; i < sizeof library_vars / sizeof *library_vars; i++)
        unsetenv(library_vars[i]);
}

/* Whether a backend is built and has a device (listing is safe to call here). */
static int have_device(const char *backend) {
    size_t n = 0;
    return fkv_device_list(backend, NULL, 0, &n) == FKV_OK && n > 0;
}

static void open_fails_with_bad_env(const char *backend, const char *var, const char *value) {
    fkv_device *dev = (fkv_device *)0x1;
    setenv(var, value, 1);
    fkv_status st = fkv_device_open(backend, NULL, &dev);
    expect_bad_env(st, var, value);
    cr_assert_null(dev);
    unsetenv(var);
}

static void open_succeeds(const char *backend, const char *var, const char *value) {
    fkv_device *dev = NULL;
    setenv(var, value, 1);
    cr_assert_eq(fkv_device_open(backend, NULL, &dev), FKV_OK, "%s=%s: %s", var, value,
                 fkv_last_error());
    fkv_device_close(dev);
    unsetenv(var);
}

Test(env, backend_names_are_case_insensitive, .init = clear_env) {
    fkv_device *dev;
    fkv_device_info info;
    setenv("FREEKV_BACKEND", "CPU", 1);
    cr_assert_eq(fkv_device_open(NULL, NULL, &dev), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_device_get_info(dev, &info), FKV_OK);
    cr_assert_str_eq(info.backend, "cpu");
    fkv_device_close(dev);
    setenv("FREEKV_BACKEND", "Auto", 1);
    cr_assert_eq(fkv_device_pick(NULL, NULL, &info), FKV_OK, "%s", fkv_last_error());
    unsetenv("FREEKV_BACKEND");
    cr_assert_eq(fkv_device_open("Cpu", NULL, &dev), FKV_OK, "%s", fkv_last_error());
    fkv_device_close(dev);
    size_t n = 0;
    cr_assert_eq(fkv_device_list("CPU", NULL, 0, &n), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(n, 1);
    setenv("FREEKV_DEVICE", "", 1); /* empty: the default */
    cr_assert_eq(fkv_device_open("cpu", NULL, &dev), FKV_OK, "%s", fkv_last_error());
    fkv_device_close(dev);
}

Test(env, garbage_is_rejected_with_one_message_format, .init = clear_env) {
    open_fails_with_bad_env(NULL, "FREEKV_BACKEND", "garbage");
    open_fails_with_bad_env(NULL, "FREEKV_BACKEND", "cuda");
    open_fails_with_bad_env("cpu", "FREEKV_CPU_RECALL", "garbage");
    open_fails_with_bad_env("cpu", "FREEKV_CPU_ISA", "sse9");
    open_fails_with_bad_env("cpu", "FREEKV_CPU_THREADS", "0");
    open_fails_with_bad_env("cpu", "FREEKV_CPU_DEVICE_MEMORY", "garbage");
    open_fails_with_bad_env("cpu", "FREEKV_CPU_HOST_MEMORY", "12Q");
    open_succeeds("cpu", "FREEKV_CPU_RECALL", "DIRECT");
    open_succeeds("cpu", "FREEKV_CPU_ISA", "Base");
    open_succeeds("cpu", "FREEKV_CPU_THREADS", "Auto");
    open_succeeds("cpu", "FREEKV_CPU_DEVICE_MEMORY", "1g");
}

Test(env, opencl_variables, .init = clear_env) {
    if (!have_device("opencl"))
        cr_skip_test("no OpenCL device");
    open_fails_with_bad_env("opencl", "FREEKV_OPENCL_FAST_MATH", "garbage");
    open_fails_with_bad_env("opencl", "FREEKV_OPENCL_FAST_MATH", "2");
    open_fails_with_bad_env("opencl", "FREEKV_OPENCL_RECALL", "garbage");
    open_fails_with_bad_env("opencl", "FREEKV_OPENCL_BINARY_CACHE", "1");
    open_succeeds("opencl", "FREEKV_OPENCL_BINARY_CACHE", "Off");
    open_fails_with_bad_env("opencl", "FREEKV_OPENCL_CPU_KERNELS", "yes");
    open_succeeds("opencl", "FREEKV_OPENCL_CPU_KERNELS", "ON");
    open_succeeds("opencl", "FREEKV_OPENCL_FAST_MATH", "Off");
    open_succeeds("opencl", "FREEKV_OPENCL_FAST_MATH", "yes");
}

Test(env, vulkan_variables, .init = clear_env) {
    if (!have_device("vulkan"))
        cr_skip_test("no Vulkan device");
    open_fails_with_bad_env("vulkan", "FREEKV_VULKAN_VALIDATION", "garbage");
    open_fails_with_bad_env("vulkan", "FREEKV_VULKAN_VALIDATION", "2");
    open_fails_with_bad_env("vulkan", "FREEKV_VULKAN_16BIT", "garbage");
    open_fails_with_bad_env("vulkan", "FREEKV_VULKAN_RECALL", "garbage");
    open_succeeds("vulkan", "FREEKV_VULKAN_VALIDATION", "off");
    open_succeeds("vulkan", "FREEKV_VULKAN_VALIDATION", "0");
    open_succeeds("vulkan", "FREEKV_VULKAN_16BIT", "FALSE");
}

/* ---- storage types ---- */

Test(dtype, names_and_sizes) {
    cr_assert_eq(fkv_dtype_size(FKV_F32), 4);
    cr_assert_eq(fkv_dtype_size(FKV_F16), 2);
    cr_assert_eq(fkv_dtype_size(FKV_BF16), 2);
    cr_assert_eq(fkv_dtype_size((fkv_dtype)7), 0);
    cr_assert_str_eq(fkv_dtype_name(FKV_F32), "f32");
    cr_assert_str_eq(fkv_dtype_name(FKV_F16), "f16");
    cr_assert_str_eq(fkv_dtype_name(FKV_BF16), "bf16");
    cr_assert_str_eq(fkv_dtype_name((fkv_dtype)7), "unknown");
}

static float f32_of(uint32_t bits) { return fkv_bits_f32(bits); }

Test(dtype, bf16_rounds_to_nearest_even) {
    /* 1.0 is 0x3f80; its bf16 neighbours are 2^-7 apart */
    cr_assert_eq(fkv_f32_to_bf16(1.0f), 0x3f80);
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x3f808000u)), 0x3f80, "a tie goes to the even 0x3f80");
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x3f808001u)), 0x3f81, "above the tie: up");
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x3f807fffu)), 0x3f80, "below the tie: down");
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x3f818000u)), 0x3f82, "a tie goes to the even 0x3f82");
    cr_assert_eq(fkv_f32_to_bf16(-1.0f), 0xbf80);
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0xbf818000u)), 0xbf82, "negative ties are even too");
    /* the largest float rounds past the largest bf16: infinity */
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x7f7fffffu)), 0x7f80);
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x7f7f0000u)), 0x7f7f);
    /* subnormals keep their top bits, rounded the same way */
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x00010000u)), 0x0001);
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x00018000u)), 0x0002);
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x00008000u)), 0x0000, "half the smallest: to zero");
    cr_assert_eq(fkv_f32_to_bf16(f32_of(0x00008001u)), 0x0001);
}

Test(dtype, bf16_special_values) {
    cr_assert_eq(fkv_f32_to_bf16(INFINITY), 0x7f80);
    cr_assert_eq(fkv_f32_to_bf16(-INFINITY), 0xff80);
    cr_assert_eq(fkv_f32_to_bf16(0.0f), 0x0000);
    cr_assert_eq(fkv_f32_to_bf16(-0.0f), 0x8000);
    /* a NaN whose payload is all in the low bits must not become infinity */
    uint16_t nan_low = fkv_f32_to_bf16(f32_of(0x7f800001u));
    cr_assert(isnan(fkv_bf16_to_f32(nan_low)), "0x%04x", nan_low);
    cr_assert(isnan(fkv_bf16_to_f32(fkv_f32_to_bf16(NAN))));
    cr_assert(isnan(fkv_bf16_to_f32(fkv_f32_to_bf16(f32_of(0xff800001u)))));
    cr_assert(isinf(fkv_bf16_to_f32(0x7f80)) && fkv_bf16_to_f32(0xff80) < 0);
}

Test(dtype, f16_rounds_to_nearest_even) {
    cr_assert_eq(fkv_f32_to_f16(1.0f), 0x3c00);
    /* f16 neighbours of 1.0 are 2^-10 apart */
    cr_assert_eq(fkv_f32_to_f16(1.0f + 0x1p-11f), 0x3c00, "a tie goes to the even 0x3c00");
    cr_assert_eq(fkv_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02, "a tie goes to the even 0x3c02");
    cr_assert_eq(fkv_f32_to_f16(nextafterf(1.0f + 0x1p-11f, 2.0f)), 0x3c01, "above the tie");
    cr_assert_eq(fkv_f32_to_f16(-1.5f), 0xbe00);
    cr_assert_eq(fkv_f32_to_f16(65504.0f), 0x7bff, "the largest f16");
    cr_assert_eq(fkv_f32_to_f16(nextafterf(65520.0f, 0.0f)), 0x7bff, "just below the tie");
    cr_assert_eq(fkv_f32_to_f16(65520.0f), 0x7c00, "the tie above the largest: infinity");
    cr_assert_eq(fkv_f32_to_f16(-1e9f), 0xfc00);
    /* a mantissa that rounds up carries into the exponent */
    cr_assert_eq(fkv_f32_to_f16(2.0f - 0x1p-12f), 0x4000);
}

Test(dtype, f16_subnormals) {
    cr_assert_eq(fkv_f32_to_f16(0x1p-24f), 0x0001, "the smallest subnormal");
    cr_assert_eq(fkv_f32_to_f16(0x1p-25f), 0x0000, "half of it: a tie, to the even zero");
    cr_assert_eq(fkv_f32_to_f16(nextafterf(0x1p-25f, 1.0f)), 0x0001);
    cr_assert_eq(fkv_f32_to_f16(3 * 0x1p-25f), 0x0002, "1.5 units: a tie, to the even 2");
    cr_assert_eq(fkv_f32_to_f16(1023 * 0x1p-24f), 0x03ff, "the largest subnormal");
    cr_assert_eq(fkv_f32_to_f16(1023.5f * 0x1p-24f), 0x0400, "rounds up into the normals");
    cr_assert_eq(fkv_f32_to_f16(0x1p-14f), 0x0400, "the smallest normal");
    cr_assert_eq(fkv_f32_to_f16(-0x1p-24f), 0x8001);
    cr_assert_eq(fkv_f32_to_f16(0x1p-30f), 0x0000);
    cr_assert_eq(fkv_f16_to_f32(0x0001), 0x1p-24f);
    cr_assert_eq(fkv_f16_to_f32(0x03ff), 1023 * 0x1p-24f);
    cr_assert_eq(fkv_f16_to_f32(0x8001), -0x1p-24f);
}

Test(dtype, f16_special_values) {
    cr_assert_eq(fkv_f32_to_f16(INFINITY), 0x7c00);
    cr_assert_eq(fkv_f32_to_f16(-INFINITY), 0xfc00);
    cr_assert_eq(fkv_f32_to_f16(-0.0f), 0x8000);
    cr_assert(signbit(fkv_f16_to_f32(0x8000)) && fkv_f16_to_f32(0x8000) == 0.0f);
    uint16_t nan = fkv_f32_to_f16(f32_of(0x7f800001u));
    cr_assert((nan & 0x7c00) == 0x7c00 && (nan & 0x03ff) != 0, "0x%04x is not a NaN", nan);
    cr_assert(isnan(fkv_f16_to_f32(nan)));
    cr_assert_eq(fkv_f32_to_f16(-NAN) & 0x8000, 0x8000, "the sign of a NaN is kept");
    cr_assert(isinf(fkv_f16_to_f32(0x7c00)) && fkv_f16_to_f32(0xfc00) < 0);
}

/* Every f16 and bf16 value converts to f32 and back to itself (NaNs stay NaNs). */
Test(dtype, every_16_bit_value_round_trips) {
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = fkv_f16_to_f32((uint16_t)h), b = fkv_bf16_to_f32((uint16_t)h);
        if (isnan(f))
            cr_assert(isnan(fkv_f16_to_f32(fkv_f32_to_f16(f))), "f16 0x%04x", h);
        else
            cr_assert_eq(fkv_f32_to_f16(f), h, "f16 0x%04x", h);
        if (isnan(b))
            cr_assert(isnan(fkv_bf16_to_f32(fkv_f32_to_bf16(b))), "bf16 0x%04x", h);
        else
            cr_assert_eq(fkv_f32_to_bf16(b), h, "bf16 0x%04x", h);
    }
}

/* For random floats in the f16 range: the result is the nearest f16, the even one on a tie
 * (compared in double, where the distances are exact). */
Test(dtype, f16_is_the_nearest) {
    th_rng rng;
    th_seed(&rng, 2024);
    for (int i = 0; i < 200000; i++) {
        float x = f32_of(th_u32(&rng));
        if (isnan(x) || fabsf(x) >= 65504.0f)
            continue;
        uint16_t h = fkv_f32_to_f16(x);
        double got = fabs((double)x - fkv_f16_to_f32(h));
        for (int step = -1; step <= 1; step += 2) {
            uint16_t mag = (uint16_t)(h & 0x7fff), other = (uint16_t)((h & 0x8000) | (mag + step));
            if ((mag == 0 && step < 0) || mag + step > 0x7bff)
                continue;
            double alt = fabs((double)x - fkv_f16_to_f32(other));
            cr_assert(got < alt || (got == alt && (h & 1) == 0),
                      "x %a: 0x%04x is not the nearest even f16 (0x%04x is as near)", (double)x, h,
                      other);
        }
    }
}

/* The f16 bits of ordinal o (..., -1 = 0x8001, 0 = +0, 1 = 0x0001, ..., 0x7c00 = +inf). */
static uint16_t f16_of_ordinal(int32_t o) {
    return (uint16_t)(o >= 0 ? (uint32_t)o : 0x8000u | (uint32_t)-o);
}
static int32_t f16_ordinal(uint16_t h) {
    return h & 0x8000u ? -(int32_t)(h & 0x7fffu) : (int32_t)h;
}

/* Directed rounding (summaries' minima down, maxima up): the result is on the right side of x
 * and its neighbour in the rounding direction is beyond x, i.e. it is the nearest f16 there. */
static void check_directed(float x) {
    uint16_t dn = fkv_f32_to_f16_down(x), up = fkv_f32_to_f16_up(x);
    if (isnan(x)) {
        uint16_t nan = (uint16_t)((fkv_f32_bits(x) >> 16 & 0x8000u) | 0x7e00u);
        cr_assert(dn == nan && up == nan, "NaN %08x: 0x%04x, 0x%04x", fkv_f32_bits(x), dn, up);
        return;
    }
    float d = fkv_f16_to_f32(dn), u = fkv_f16_to_f32(up);
    cr_assert(d <= x && u >= x, "x %a: down %a, up %a", (double)x, (double)d, (double)u);
    if (d != x) /* -inf has the next up -65504; +inf is never a downward result of a finite x */
        cr_assert(fkv_f16_to_f32(f16_of_ordinal(f16_ordinal(dn) + 1)) > x,
                  "x %a: down 0x%04x is not the largest f16 below", (double)x, dn);
    if (u != x)
        cr_assert(fkv_f16_to_f32(f16_of_ordinal(f16_ordinal(up) - 1)) < x,
                  "x %a: up 0x%04x is not the smallest f16 above", (double)x, up);
    if (d == x) /* exact: both are the value itself */
        cr_assert(dn == fkv_f32_to_f16(x) && up == dn, "x %a exact: 0x%04x, 0x%04x", (double)x,
                  dn, up);
}

Test(dtype, f16_directed_rounding) {
    const float special[] = {0.0f,      -0.0f,     1e-30f,   -1e-30f,   5.9e-8f,  -5.9e-8f,
                             6.1e-5f,   65504.0f,  65505.0f, 65519.0f,  65520.0f, 65536.0f,
                             70000.0f,  -70000.0f, -65505.0f, 3.4e38f,  -3.4e38f, INFINITY,
                             -INFINITY, NAN,       -NAN,      1.0f / 3, -1.0f / 3};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++)
        check_directed(special[i]);
    /* beyond the f16 range: an infinity only in the rounding direction */
    cr_assert_eq(fkv_f32_to_f16_down(70000.0f), 0x7bffu);
    cr_assert_eq(fkv_f32_to_f16_up(70000.0f), 0x7c00u);
    cr_assert_eq(fkv_f32_to_f16_down(-70000.0f), 0xfc00u);
    cr_assert_eq(fkv_f32_to_f16_up(-70000.0f), 0xfbffu);
    cr_assert_eq(fkv_f32_to_f16_up(1e-30f), 0x0001u);
    cr_assert_eq(fkv_f32_to_f16_down(-1e-30f), 0x8001u);
    for (uint32_t u = 0; u < 0xffffffffu - 4099u; u += 4099u) /* a spread of every exponent */
        check_directed(f32_of(u));
    for (uint32_t h = 0; h < 0x7c00u; h++) /* every finite f16 value and its neighbours */
        for (int sign = 0; sign < 2; sign++) {
            uint32_t b = fkv_f32_bits(fkv_f16_to_f32((uint16_t)(h | (sign ? 0x8000u : 0u))));
            check_directed(f32_of(b));
            check_directed(f32_of(b + 1));
            if (b & 0x7fffffffu)
                check_directed(f32_of(b - 1));
        }
}

Test(dtype, load_and_store) {
    unsigned char buf[16];
    const fkv_dtype types[] = {FKV_F32, FKV_F16, FKV_BF16};
    for (size_t t = 0; t < 3; t++) {
        fkv_store(buf, types[t], 1, -2.5f);
        cr_assert_eq(fkv_load(buf, types[t], 1), -2.5f, "%s", fkv_dtype_name(types[t]));
    }
    fkv_store(buf, FKV_F16, 0, 1.0f);
    cr_assert_eq(((uint16_t *)buf)[0], 0x3c00);
    fkv_store(buf, FKV_BF16, 0, 1.0f);
    cr_assert_eq(((uint16_t *)buf)[0], 0x3f80);
}
