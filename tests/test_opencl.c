/* The OpenCL backend against the CPU reference backend, on PoCL or the first OpenCL device:
 * every op spec of conformance/ (tests/backend_harness.h: every kernel for f32, f16 and bf16
 * storage over several geometries, split-page attention forced on and off, shared memory
 * short), and OpenCL's own: buffer import, recall modes (FREEKV_OPENCL_RECALL), fast math,
 * the CPU kernel variants switched (FREEKV_OPENCL_CPU_KERNELS), the program-binary cache, a
 * kernel source that fails to build and the backend's options (docs/backend-options.md).
 * Without an OpenCL device every test is skipped, or fails when FREEKV_REQUIRE_DEVICES names
 * opencl. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_harness.h"
#include "backends/dispatch.h"
#include "opencl/ocl_internal.h"

static int is_pocl(const fkv_device_info *info) {
    return strstr(info->driver, "Portable Computing Language") || strstr(info->name, "pthread");
}

/* Cleared before each test. FREEKV_OPENCL_CPU_KERNELS is kept, so that the tests can run the
 * CPU kernel variants on another device (tools/ci-oclgrind.sh). */
static const char *const opencl_env[] = {"FREEKV_OPENCL_RECALL", "FREEKV_OPENCL_FAST_MATH",
                                          "FREEKV_OPENCL_BINARY_CACHE", NULL};
static const bh_backend opencl = {
    .name = "opencl",
    .ops = fkv_backend_opencl,
    .is_preferred = is_pocl,
    .env = opencl_env,
    .recall_env = "FREEKV_OPENCL_RECALL",
};

/* Option kernel_source: a replacement kernel source, "" the embedded one. */
static fkv_status set_source(const char *source) {
    return fkv_op_set_option(ODEV, "kernel_source", source);
}

static void open_both(void) {
    bh_select(&opencl);
    bh_open_both();
}

static void env_only(void) {
    bh_select(&opencl);
    bh_clear_env();
}

TestSuite(opencl, .init = open_both, .fini = bh_teardown, .timeout = 300);
/* Tests that set the environment before opening devices themselves. */
TestSuite(opencl_env, .init = env_only, .fini = bh_teardown, .timeout = 300);

/* ---- the op specs every backend passes ---- */

BH_SPEC_TESTS(opencl)

Test(opencl, device_info_and_table) {
    fkv_device_info info;
    bh_check_device_info(&info);
    cr_assert(info.caps & FKV_CAP_SEPARATE_TRANSFER_QUEUE);
    if (is_pocl(&info))
        cr_assert_eq(info.type, FKV_DEVICE_CPU);
    /* Direct recall is fine-grained SVM here. */
    cr_assert_eq(th_option_value(ODEV, "svm_host"), fkv_op_recall_mode(ODEV) == FKV_RECALL_DIRECT);
}
/* Issue #12: group 64 x head_dim 256 runs (or a device that cannot is refused at creation). */
Test(opencl, large_group_pipeline) { bh_check_large_group(); }
Test(opencl_env, pipeline_matches_reference) {
    static const char *const modes[] = {"staged", "perpage", "auto"};
    bh_check_pipeline(modes, 3);
}

/* ---- OpenCL's own ---- */

Test(opencl, buffer_import_and_memory_errors) {
    cl_int err;
    cl_mem mem = clCreateBuffer(OD->context, CL_MEM_READ_WRITE, 4096, NULL, &err);
    cr_assert_eq(err, CL_SUCCESS);
    fkv_bbuf *imp = NULL;
    cr_assert_eq(fkv_op_buffer_import(ODEV, mem, 4096, &imp), FKV_OK, "%s", fkv_last_error());
    unsigned char src[256], back[256];
    for (int i = 0; i < 256; i++)
        src[i] = (unsigned char)(255 - i);
    bh_write1(UT, imp, 1000, src, 256);
    bh_read1(UT, imp, 1000, back, 256);
    cr_assert_arr_eq(back, src, 256);
    fkv_op_buffer_free(ODEV, imp); /* drops our reference only */
    cr_assert_eq(fkv_op_buffer_import(ODEV, mem, 8192, &imp), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(clReleaseMemObject(mem), CL_SUCCESS);

    /* Memory of another context is refused. */
    cl_context other = clCreateContext(NULL, 1, &OD->device, NULL, NULL, &err);
    cr_assert_eq(err, CL_SUCCESS);
    cl_mem foreign = clCreateBuffer(other, CL_MEM_READ_WRITE, 64, NULL, &err);
    cr_assert_eq(fkv_op_buffer_import(ODEV, foreign, 64, &imp), FKV_ERR_WRONG_DEVICE);
    clReleaseMemObject(foreign);
    clReleaseContext(other);

    /* More than the device can allocate is a status, not a crash. */
    bh_check_alloc_limits((size_t)OD->max_alloc);
}

Test(opencl_env, recall_modes) {
    bh_need_device();
    fkv_device_info info;
    cr_assert_eq(O->device_info(bh_index, &info), FKV_OK);
    int zero_copy = (info.caps & FKV_CAP_ZERO_COPY_HOST) != 0;
    struct {
        const char *value;
        fkv_recall_mode mode;
        int svm_host;
    } cases[] = {
        {"staged", FKV_RECALL_STAGED, 0},
        {"perpage", FKV_RECALL_PERPAGE, 0},
        {"auto", zero_copy ? FKV_RECALL_DIRECT : FKV_RECALL_STAGED, zero_copy},
        {"", zero_copy ? FKV_RECALL_DIRECT : FKV_RECALL_STAGED, zero_copy},
        {"svm", FKV_RECALL_DIRECT, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        setenv("FREEKV_OPENCL_RECALL", cases[i].value, 1);
        fkv_status st = bh_try_open();
        if (!zero_copy && strcmp(cases[i].value, "svm") == 0) {
            cr_assert_eq(st, FKV_ERR_UNSUPPORTED, "svm without fine-grained SVM");
            continue;
        }
        cr_assert_eq(st, FKV_OK, "%s: %s", cases[i].value, fkv_last_error());
        cr_assert_eq(O->recall_mode(OD), cases[i].mode, "FREEKV_OPENCL_RECALL=%s",
                     cases[i].value);
        cr_assert_eq(fkv_op_recall_mode(ODEV), cases[i].mode);
        cr_assert_eq(th_option_value(ODEV, "svm_host"), (uint64_t)cases[i].svm_host);
        /* Pinned (non-SVM) host memory is never handed to a kernel. */
        if (!cases[i].svm_host) {
            fkv_kv_geom g = {.n_kv_heads = 1, .group = 1,
                    .head_dim = 16, .page_size = 4, .dtype = FKV_F32};
            fkv_bhost *h;
            void *p;
            cr_assert_eq(fkv_op_host_alloc(ODEV, 4096, &h, &p), FKV_OK);
            fkv_bbuf *kp = bh_alloc1(UT, 4096), *vp = bh_alloc1(UT, 4096), *u = bh_alloc1(UT, 16);
            fkv_direct_src off = {0};
            const fkv_bhost *hs[1] = {h};
            bh_ev = (fkv_bevent *)(uintptr_t)1;
            cr_assert_eq(fkv_op_recall_direct(ODEV, CQ, DEPS, &g, 1, hs, 1, &off, u, 0, kp, vp),
                         FKV_ERR_UNSUPPORTED);
            cr_assert_null(bh_ev);
            fkv_op_host_free(ODEV, h);
        }
        bh_teardown();
    }
}

Test(opencl_env, bad_environment) {
    bh_need_device();
    fkv_device *d = NULL;
    setenv("FREEKV_OPENCL_RECALL", "zero-copy", 1);
    cr_assert_eq(fkv_device_open_ops(O, bh_index, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert_null(d);
    const char *msg = fkv_last_error();
    cr_assert(strstr(msg, "FREEKV_OPENCL_RECALL") && strstr(msg, "auto") &&
                  strstr(msg, "staged") && strstr(msg, "perpage") && strstr(msg, "svm"),
              "message lists the valid values: %s", msg);
    unsetenv("FREEKV_OPENCL_RECALL");
    setenv("FREEKV_OPENCL_FAST_MATH", "fast", 1); /* a boolean: 0/1, false/true, no/yes, off/on */
    cr_assert_eq(fkv_device_open_ops(O, bh_index, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert(strstr(fkv_last_error(), "0, false, no, off, 1, true, yes, on") != NULL, "%s",
              fkv_last_error());
    /* The fast-math opt-in builds and still computes. */
    setenv("FREEKV_OPENCL_FAST_MATH", "1", 1);
    cr_assert_eq(bh_try_open(), FKV_OK, "%s", fkv_last_error());
    cr_assert(strstr(OD->build_options, "-cl-fast-relaxed-math") != NULL);
    unsetenv("FREEKV_OPENCL_FAST_MATH");
    bh_teardown();
    setenv("FREEKV_OPENCL_BINARY_CACHE", "yes", 1); /* auto, on or off */
    cr_assert_eq(fkv_device_open_ops(O, bh_index, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert(strstr(fkv_last_error(), "(valid: auto, on, off)") != NULL, "%s", fkv_last_error());
    unsetenv("FREEKV_OPENCL_BINARY_CACHE");
    cr_assert_eq(bh_try_open(), FKV_OK);
    cr_assert(strstr(OD->build_options, "fast") == NULL, "conservative by default");
}

/* FREEKV_OPENCL_CPU_KERNELS: the CPU variants of the scores and the attention (on CPU devices
 * by default) and the paths GPUs take both pass the specs (the device's default in every case
 * through BH_SPEC_TESTS, the other one here in variant_cases); prefetch follows the device
 * type. */
static const char *const variant_cases[] = {
    "attention/d128/g4/p32/f16",    "attention/d64/g8/h1/p16/f16", "attention/d5/g2/p3/f16/split",
    "attention/d64/g12/h1/p16/f16", "scores/d128/g4",              "scores/d64/g8/h1",
    "scores/d5/g2",                 "scores/d64/g4/h3",            "scores_check/d128/g4",
    "scores_check/d5/g2",           "scores_edges/d128/g4"};

Test(opencl_env, cpu_kernel_variants) {
    bh_need_device();
    fkv_device *d = NULL;
    setenv("FREEKV_OPENCL_CPU_KERNELS", "yes", 1);
    cr_assert_eq(fkv_device_open_ops(O, bh_index, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert(strstr(fkv_last_error(), "FREEKV_OPENCL_CPU_KERNELS='yes' (valid: auto, on, off)"),
              "%s", fkv_last_error());
    const char *const values[] = {"off", "on"};
    for (int i = 0; i < 2; i++) {
        setenv("FREEKV_OPENCL_CPU_KERNELS", values[i], 1);
        bh_open_devices();
        cr_assert_eq(OD->cpu_kernels, i, "%s", values[i]);
        cr_assert_eq(strstr(OD->build_options, "-DFKV_ROW_COPIES") != NULL, i, "%s",
                     OD->build_options);
        cr_assert_eq(strstr(OD->build_options, "-DFKV_PREFETCH") != NULL,
                     OD->info.type == FKV_DEVICE_CPU, "%s", OD->build_options);
        /* the default's run every case (BH_SPEC_TESTS); the other's the cases of each path
         * (group 4 and 8, head_dim 5, 64 and 128, a split), in one dtype: most of this test's
         * time is the programs' first build */
        if (i != (OD->info.type == FKV_DEVICE_CPU))
            for (size_t c = 0; c < sizeof variant_cases / sizeof *variant_cases; c++)
                bh_spec_case(variant_cases[c]);
        bh_teardown();
    }
    unsetenv("FREEKV_OPENCL_CPU_KERNELS");
    cr_assert_eq(bh_try_open(), FKV_OK);
    cr_assert_eq(OD->cpu_kernels, OD->info.type == FKV_DEVICE_CPU, "auto: CPU devices");
}

Test(opencl, kernel_build_failure) {
    fkv_kv_geom g = {.n_kv_heads = 1, .group = 1, .head_dim = 16, .page_size = 4, .dtype = FKV_F32};
    fkv_bbuf *kp = bh_alloc1(UT, 4096), *vp = bh_alloc1(UT, 4096), *idx = bh_alloc1(UT, 64);
    cr_assert_eq(set_source("kernel void fkv_append(global int *x) {\n"
                            "    x[0] = undeclared_thing;\n}\n"),
                 FKV_OK);
    REFUSED(fkv_op_scatter_hnd(ODEV, CQ, DEPS, &g, kp, 0, 1, idx, 0, kp, vp), FKV_ERR_KERNEL_BUILD);
    const char *msg = fkv_last_error();
    cr_assert(strstr(msg, "clBuildProgram") != NULL, "%s", msg);
    cr_assert(strstr(msg, "undeclared_thing") != NULL, "the build log is in the message: %s",
              msg);
    /* Remembered: the next call fails the same way without rebuilding. */
    REFUSED(fkv_op_scatter_hnd(ODEV, CQ, DEPS, &g, kp, 0, 1, idx, 0, kp, vp), FKV_ERR_KERNEL_BUILD);
    cr_assert(strstr(fkv_last_error(), "undeclared_thing") != NULL, "%s", fkv_last_error());
    /* A source that builds but lacks kernels is a backend error, not a crash. */
    cr_assert_eq(set_source("kernel void fkv_other(global int *x) { x[0] = 1; }\n"), FKV_OK);
    REFUSED(fkv_op_scatter_hnd(ODEV, CQ, DEPS, &g, kp, 0, 1, idx, 0, kp, vp), FKV_ERR_BACKEND);
    cr_assert(strstr(fkv_last_error(), "CL_INVALID_KERNEL_NAME") != NULL, "%s", fkv_last_error());
    /* Back to the embedded source. */
    cr_assert_eq(set_source(""), FKV_OK);
    RUN1(fkv_op_scatter_hnd(ODEV, CQ, DEPS, &g, kp, 0, 0, idx, 0, kp, vp));
    RUN1(fkv_op_scatter_hnd(ODEV, CQ, DEPS, &g, kp, 0, 1, idx, 0, kp, vp));
}

/* ---- program-binary cache ---- */

static void use_program(void) {
    fkv_kv_geom g = {.n_kv_heads = 1, .group = 1,
            .head_dim = 16, .page_size = 4, .dtype = FKV_BF16};
    fkv_bbuf *kp = bh_alloc1(UT, 4096), *idx = bh_alloc1(UT, 64);
    int32_t u[2] = {0, 0};
    bh_write1(UT, idx, 0, u, 8);
    RUN1(fkv_op_scatter_hnd(ODEV, CQ, DEPS, &g, kp, 0, 1, idx, 0, kp, kp));
}

Test(opencl_env, program_cache) {
    bh_need_device();
    char dir[] = "/tmp/freekv-cache-test-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char sub[600];
    snprintf(sub, sizeof sub, "%s/nested/dir", dir); /* created on demand */
    setenv("FREEKV_CACHE_DIR", sub, 1);
    uint64_t loads, stores;

    /* Off by default on a CPU device (PoCL here), on by default elsewhere; "off" is off. */
    fkv_device_info info;
    cr_assert_eq(bh_ops[UT]->device_info(bh_index, &info), FKV_OK);
    int cpu = info.type == FKV_DEVICE_CPU;
    setenv("FREEKV_OPENCL_BINARY_CACHE", cpu ? "auto" : "off", 1);
    cr_assert_eq(bh_try_open(), FKV_OK);
    use_program();
    cr_assert_eq(th_option_value(ODEV, "cache_loads") + th_option_value(ODEV, "cache_stores"), 0);
    bh_teardown();

    setenv("FREEKV_OPENCL_BINARY_CACHE", cpu ? "ON" : "auto", 1);
    cr_assert_eq(bh_try_open(), FKV_OK);
    use_program();
    loads = th_option_value(ODEV, "cache_loads");
    stores = th_option_value(ODEV, "cache_stores");
    cr_assert_eq(loads, 0);
    cr_assert_eq(stores, 1, "the binary is written on the first build");
    bh_teardown();

    cr_assert_eq(bh_try_open(), FKV_OK);
    use_program();
    loads = th_option_value(ODEV, "cache_loads");
    stores = th_option_value(ODEV, "cache_stores");
    cr_assert_eq(loads, 1, "the second open loads the binary");
    cr_assert_eq(stores, 0);
    bh_teardown();

    /* A corrupt (truncated) file is ignored and replaced. */
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "for f in %s/opencl-*.bin; do head -c 100 \"$f\" > \"$f.x\" && mv \"$f.x\" \"$f\"; done", sub);
    cr_assert_eq(system(cmd), 0);
    cr_assert_eq(bh_try_open(), FKV_OK);
    use_program();
    loads = th_option_value(ODEV, "cache_loads");
    stores = th_option_value(ODEV, "cache_stores");
    cr_assert_eq(loads, 0);
    cr_assert_eq(stores, 1);
    bh_teardown();

    /* A cache "directory" that is a file disables the cache; nothing fails. */
    char file[700];
    snprintf(file, sizeof file, "%s/plainfile", dir);
    FILE *f = fopen(file, "w");
    cr_assert_not_null(f);
    fclose(f);
    setenv("FREEKV_CACHE_DIR", file, 1);
    cr_assert_eq(bh_try_open(), FKV_OK);
    use_program();
    loads = th_option_value(ODEV, "cache_loads");
    stores = th_option_value(ODEV, "cache_stores");
    cr_assert_eq(loads + stores, 0);
    bh_teardown();

    /* No temporaries are left behind. */
    snprintf(cmd, sizeof cmd, "test -z \"$(ls %s | grep tmp)\" && rm -rf %s", sub, dir);
    cr_assert_eq(system(cmd), 0);
}

/* ---- options (docs/backend-options.md) ---- */

Test(opencl, options) {
    char out[64];
    cr_assert_eq(fkv_op_set_option(ODEV, "no_such_key", "1"), FKV_ERR_UNSUPPORTED);
    const char *msg = fkv_last_error();
    cr_assert(strstr(msg, "no_such_key") && strstr(msg, "attention_splits") &&
                  strstr(msg, "shared_memory_bytes") && strstr(msg, "kernel_source"),
              "the message lists the keys: %s", msg);
    cr_assert_eq(fkv_op_get_option(ODEV, "no_such_key", out, sizeof out), FKV_ERR_UNSUPPORTED);
    cr_assert(strstr(fkv_last_error(), "cache_loads") && strstr(fkv_last_error(), "svm_host"), "%s",
              fkv_last_error());
    cr_assert_eq(fkv_op_set_option(ODEV, "attention_splits", "257"), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_set_option(ODEV, "attention_splits", "-1"), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_set_option(ODEV, "attention_splits", "3"), FKV_OK);
    cr_assert_eq(fkv_op_get_option(ODEV, "attention_splits", out, sizeof out), FKV_OK);
    cr_assert_str_eq(out, "3");
    /* shared memory: lowered, never raised past the device's; 0 restores it */
    cr_assert_eq(fkv_op_set_option(ODEV, "shared_memory_bytes", "0"), FKV_OK);
    uint64_t device = th_option_value(ODEV, "shared_memory_bytes");
    cr_assert_gt(device, 2000);
    cr_assert_eq(fkv_op_set_option(ODEV, "shared_memory_bytes", "2000"), FKV_OK);
    cr_assert_eq(th_option_value(ODEV, "shared_memory_bytes"), 2000);
    cr_assert_eq(fkv_op_set_option(ODEV, "shared_memory_bytes", "99999999999"), FKV_OK);
    cr_assert_eq(th_option_value(ODEV, "shared_memory_bytes"), device);
    cr_assert_eq(fkv_op_get_option(ODEV, "cache_loads", out, 1), FKV_ERR_INVALID_ARGUMENT,
                 "no room for the value");
}

/* The attention kernel at each vector width the host may build it with (FKV_VW: a GPU's 4,
 * a CPU device's SIMD width) besides the one this device prefers (the spec tests above run
 * that one): the same results as the reference. The other end of the range (4, or 16 where 4
 * is preferred) in every dtype, with channels past a multiple of four (d5), the group in two
 * blocks (g12) and the dense form; the middle width in bf16. Each width and dtype is a program
 * build of its own (seconds on PoCL, several times that under the sanitizers), so each is a
 * test of its own, well within the suite's timeout on a busy machine. */
static uint64_t preferred_attention_vector(void) {
    uint64_t preferred = th_option_value(ODEV, "attention_vector");
    cr_assert(preferred == 4 || preferred == 8 || preferred == 16, "%llu",
              (unsigned long long)preferred);
    return preferred;
}

static void use_the_far_vector_width(void) {
    uint64_t far = preferred_attention_vector() == 4 ? 16 : 4;
    cr_assert_eq(th_set_option(ODEV, "attention_vector", far), FKV_OK);
    cr_assert_eq(th_option_value(ODEV, "attention_vector"), far);
}

Test(opencl, attention_vector_width_refusals) {
    uint64_t preferred = preferred_attention_vector();
    cr_assert_eq(fkv_op_set_option(ODEV, "attention_vector", "5"), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_set_option(ODEV, "attention_vector", "32"), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(th_option_value(ODEV, "attention_vector"), preferred, "unchanged on refusal");
}

Test(opencl, attention_at_the_far_vector_width_f16) {
    use_the_far_vector_width();
    bh_spec_case("attention/d5/g2/p3/f16");
}

Test(opencl, attention_at_the_far_vector_width_bf16) {
    use_the_far_vector_width();
    bh_spec_case("attention/d128/g4/p32/bf16");
    bh_spec_case("attention_dense/d5/g2/p3/bf16");
}

Test(opencl, attention_at_the_far_vector_width_f32) {
    use_the_far_vector_width();
    bh_spec_case("attention/d64/g12/h1/p16/f32");
}

Test(opencl, attention_at_the_middle_vector_width) {
    uint64_t middle = preferred_attention_vector() == 8 ? 16 : 8;
    cr_assert_eq(th_set_option(ODEV, "attention_vector", middle), FKV_OK);
    cr_assert_eq(th_option_value(ODEV, "attention_vector"), middle);
    bh_spec_case("attention/d128/g4/p32/bf16");
    bh_spec_case("attention/d5/g2/p3/bf16/split");
}
