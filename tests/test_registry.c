/* Backend and device selection from the environment and from arguments. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "backends/dispatch.h"
#include "helpers.h"

static void clear_env(void) {
    unsetenv("FREEKV_BACKEND");
    unsetenv("FREEKV_DEVICE");
}

Test(registry, cpu_backend_is_always_compiled_in, .init = clear_env) {
    int found = 0;
    for (size_t i = 0; i < fkv_backend_count(); i++)
        found |= strcmp(fkv_backend_name(i), "cpu") == 0;
    cr_assert(found);
    cr_assert_null(fkv_backend_name(fkv_backend_count()));
    fkv_device_info info[16];
    size_t n = 0;
    cr_assert_eq(fkv_device_list("cpu", info, 16, &n), FKV_OK);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(info[0].backend, "cpu");
    cr_assert_eq(info[0].type, FKV_DEVICE_REFERENCE);
    cr_assert_eq(fkv_device_list(NULL, NULL, 0, &n), FKV_OK, "counting only");
    cr_assert_geq(n, 1);
    cr_assert_eq(fkv_device_list(NULL, NULL, 0, NULL), FKV_ERR_INVALID_ARGUMENT);
}

Test(registry, auto_prefers_gpus_and_falls_back_to_reference, .init = clear_env) {
    fkv_device_info all[64], pick;
    size_t n;
    cr_assert_eq(fkv_device_list("auto", all, 64, &n), FKV_OK);
    cr_assert_eq(fkv_device_pick(NULL, NULL, &pick), FKV_OK, "%s", fkv_last_error());
    /* nothing listed may outrank the pick */
    for (size_t i = 0; i < n; i++) {
        if (pick.type == FKV_DEVICE_DISCRETE_GPU)
            break;
        cr_assert_neq(all[i].type, FKV_DEVICE_DISCRETE_GPU);
        if (pick.type == FKV_DEVICE_REFERENCE)
            cr_assert_eq(all[i].type == FKV_DEVICE_CPU || all[i].type == FKV_DEVICE_INTEGRATED_GPU,
                         0, "auto picked the reference over %s", all[i].name);
    }
}

Test(registry, environment_selects_backend_and_device, .init = clear_env) {
    fkv_device *dev;
    setenv("FREEKV_BACKEND", "cpu", 1);
    setenv("FREEKV_DEVICE", "0", 1);
    cr_assert_eq(fkv_device_open(NULL, NULL, &dev), FKV_OK, "%s", fkv_last_error());
    fkv_device_info info;
    cr_assert_eq(fkv_device_get_info(dev, &info), FKV_OK);
    cr_assert_str_eq(info.backend, "cpu");
    fkv_device_close(dev);
    setenv("FREEKV_DEVICE", "reference", 1); /* name substring, case-insensitive */
    cr_assert_eq(fkv_device_open(NULL, NULL, &dev), FKV_OK, "%s", fkv_last_error());
    fkv_device_close(dev);
}

Test(registry, bad_environment_is_an_error_listing_choices, .init = clear_env) {
    fkv_device *dev = (fkv_device *)0x1;
    setenv("FREEKV_BACKEND", "cuda", 1);
    cr_assert_eq(fkv_device_open(NULL, NULL, &dev), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert_null(dev);
    cr_assert(strstr(fkv_last_error(), "FREEKV_BACKEND") && strstr(fkv_last_error(), "cpu"),
              "message: %s", fkv_last_error());
    setenv("FREEKV_BACKEND", "cpu", 1);
    setenv("FREEKV_DEVICE", "3", 1);
    cr_assert_eq(fkv_device_open(NULL, NULL, &dev), FKV_ERR_NO_DEVICE);
    cr_assert(strstr(fkv_last_error(), "FREEKV_DEVICE") && strstr(fkv_last_error(), "[0]"),
              "message: %s", fkv_last_error());
    setenv("FREEKV_DEVICE", "no-such-gpu", 1);
    cr_assert_eq(fkv_device_open(NULL, NULL, &dev), FKV_ERR_NO_DEVICE);
    setenv("FREEKV_DEVICE", "-1", 1);
    cr_assert_eq(fkv_device_open(NULL, NULL, &dev), FKV_ERR_NO_DEVICE);
}

Test(registry, arguments_override_environment, .init = clear_env) {
    fkv_device *dev;
    setenv("FREEKV_BACKEND", "bogus", 1);
    setenv("FREEKV_DEVICE", "bogus", 1);
    cr_assert_eq(fkv_device_open("cpu", "0", &dev), FKV_OK, "%s", fkv_last_error());
    fkv_device_close(dev);
    /* a bad argument is the caller's, not the environment's */
    cr_assert_eq(fkv_device_open("nope", NULL, &dev), FKV_ERR_INVALID_ARGUMENT);
    cr_assert(strstr(fkv_last_error(), "backend argument: unknown backend 'nope'"), "%s",
              fkv_last_error());
}

Test(registry, uncompiled_backend_is_reported, .init = clear_env) {
    const char *missing = NULL;
    /* every backend folder, built or not (the generated list) */
    static const char *const known[] = {
#define KNOWN(name) #name,
        FKV_BACKENDS_KNOWN(KNOWN)
#undef KNOWN
    };
    for (size_t i = 0; i < sizeof known / sizeof *known && !missing; i++) {
        int have = 0;
        for (size_t b = 0; b < fkv_backend_count(); b++)
            have |= strcmp(fkv_backend_name(b), known[i]) == 0;
        if (!have)
            missing = known[i];
    }
    if (missing == NULL)
        cr_skip_test("every backend is compiled in");
    fkv_device *dev;
    cr_assert_eq(fkv_device_open(missing, NULL, &dev), FKV_ERR_NO_DEVICE);
    cr_assert(strstr(fkv_last_error(), "not compiled in"), "%s", fkv_last_error());
}

Test(registry, public_calls_reject_null, .init = clear_env) {
    cr_assert_eq(fkv_device_open("cpu", NULL, NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_device_get_info(NULL, NULL), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_device_pick(NULL, NULL, NULL), FKV_ERR_INVALID_ARGUMENT);
    fkv_device_close(NULL);
    fkv_buffer *b = NULL;
    cr_assert_eq(fkv_buffer_alloc(NULL, 16, &b), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_buffer_import(NULL, (void *)&b, 16, &b), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_buffer_write(NULL, 0, &b, 4), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_buffer_read(NULL, 0, &b, 4), FKV_ERR_INVALID_ARGUMENT);
    fkv_buffer_release(NULL);
    char caps[8];
    cr_assert_eq(fkv_caps_string(0xff, NULL, 0), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_caps_string(0xff, caps, sizeof caps), FKV_OK); /* truncated, terminated */
    cr_assert_lt(strlen(caps), sizeof caps);
}

Test(registry, buffers_round_trip_and_check_ranges, .init = clear_env) {
    fkv_device *dev;
    cr_assert_eq(fkv_device_open("cpu", NULL, &dev), FKV_OK);
    fkv_buffer *b;
    cr_assert_eq(fkv_buffer_alloc(dev, 64, &b), FKV_OK);
    char in[64], out[64];
    for (int i = 0; i < 64; i++)
        in[i] = (char)i;
    cr_assert_eq(fkv_buffer_write(b, 0, in, 64), FKV_OK);
    cr_assert_eq(fkv_buffer_read(b, 0, out, 64), FKV_OK);
    cr_assert(memcmp(in, out, 64) == 0);
    cr_assert_eq(fkv_buffer_write(b, 60, in, 8), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_buffer_read(b, 65, out, 0), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_buffer_alloc(dev, 0, &b), FKV_ERR_INVALID_ARGUMENT);
    fkv_buffer_release(b);
    fkv_device_close(dev);
}
