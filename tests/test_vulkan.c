/* The Vulkan backend against the CPU reference backend, on lavapipe or the first Vulkan
 * device: every op spec of conformance/ (tests/backend_harness.h: every kernel for f32, f16
 * and bf16 storage over several geometries, split-page attention forced on and off, shared
 * memory short), the storage kernels again without 16-bit storage (FREEKV_VULKAN_16BIT=0,
 * suite vulkan_w32) and with pools and summaries bound in small windows (vulkan_windows*).
 * Vulkan's own: memory limits and buffer import, write_regions per page, every recall mode
 * (FREEKV_VULKAN_RECALL), launch limits, the pipeline cache, environment errors and the
 * backend's options (docs/backend-options.md). With
 * FREEKV_VULKAN_VALIDATION=1 every test also fails on any validation-layer error or unlisted
 * warning. Without a Vulkan device every test is skipped, or fails when
 * FREEKV_REQUIRE_DEVICES names vulkan. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_harness.h"
#include "pipeline_driver.h"
#include "backends/dispatch.h"
#include "vulkan/vk_internal.h"

static int is_lavapipe(const fkv_device_info *info) {
    return info->type == FKV_DEVICE_CPU || strstr(info->name, "llvmpipe");
}

/* The backend's options (docs/backend-options.md), numeric, on an opened device. */
static void set_option(fkv_device *d, const char *key, uint64_t value) {
    cr_assert_eq(th_set_option(d, key, value), FKV_OK, "%s=%llu: %s", key,
                 (unsigned long long)value, fkv_last_error());
}
static uint64_t option(fkv_device *d, const char *key) {
    uint64_t v = th_option_value(d, key);
    cr_assert_neq(v, UINT64_MAX, "%s: %s", key, fkv_last_error());
    return v;
}

static void no_validation_errors(fkv_device *dev) {
    cr_expect_eq(option(dev, "validation_errors"), 0, "validation-layer errors (stderr)");
}

static const char *const vulkan_env[] = {"FREEKV_VULKAN_RECALL", "FREEKV_VULKAN_16BIT", NULL};
static const bh_backend vulkan = {
    .name = "vulkan",
    .ops = fkv_backend_vulkan,
    .is_preferred = is_lavapipe,
    .env = vulkan_env,
    .recall_env = "FREEKV_VULKAN_RECALL",
    .before_close = no_validation_errors,
};

static void open_both(void) {
    bh_select(&vulkan);
    bh_open_both();
}

static void open_both_w32(void) {
    bh_select(&vulkan);
    bh_clear_env();
    setenv("FREEKV_VULKAN_16BIT", "0", 1); /* the fallback: KV in 32-bit words */
    bh_open_devices();
    cr_assert_eq(option(ODEV, "storage_16bit"), 0);
}

static void env_only(void) {
    bh_select(&vulkan);
    bh_clear_env();
}

TestSuite(vulkan, .init = open_both, .fini = bh_teardown, .timeout = 300);
/* The kernels without 16-bit storage. */
TestSuite(vulkan_w32, .init = open_both_w32, .fini = bh_teardown, .timeout = 300);
/* Tests that set the environment before opening devices themselves. */
TestSuite(vulkan_env, .init = env_only, .fini = bh_teardown, .timeout = 300);

/* ---- the op specs every backend passes ---- */

BH_SPEC_TESTS(vulkan)

Test(vulkan, device_info_and_table) {
    fkv_device_info info;
    bh_check_device_info(&info);
    cr_assert(O->write_regions);
    cr_assert(info.caps & FKV_CAP_MULTI_REGION_COPY);
    cr_assert(option(ODEV, "subgroup_size") >= 1);
    if (strstr(info.name, "llvmpipe")) { /* what DESIGN.md §4 says of lavapipe */
        cr_assert_eq(info.type, FKV_DEVICE_CPU);
        cr_assert_eq(OD->max_range, 128u << 20, "maxStorageBufferRange");
        /* larger buffers: kernels bind pools and summaries in windows */
        cr_assert_gt(info.max_buffer_bytes, OD->max_range);
        cr_assert_eq(option(ODEV, "subgroup_size"), 8);
        cr_assert(option(ODEV, "storage_16bit"), "lavapipe has 16-bit storage");
    }
    /* Direct recall is imported host memory here. */
    cr_assert_eq(option(ODEV, "import_host"), fkv_op_recall_mode(ODEV) == FKV_RECALL_DIRECT);
}
Test(vulkan_env, pipeline_matches_reference, .timeout = 600) {
    static const char *const modes[] = {"staged", "perpage", "regions", "hostptr", "auto"};
    bh_check_pipeline(modes, 5);
}

/* The storage kernels without 16-bit storage: KV held two 16-bit elements to a 32-bit word. */
BH_SPEC(vulkan_w32, append)
BH_SPEC(vulkan_w32, summarize)
BH_SPEC(vulkan_w32, pack_hnd)
BH_SPEC(vulkan_w32, scatter_hnd)
BH_SPEC(vulkan_w32, recall_direct)
BH_SPEC(vulkan_w32, attention_unsplit)
BH_SPEC(vulkan_w32, attention_split)

static void open_both_windows(void) {
    open_both();
    set_option(ODEV, "window_bytes", 1024); /* a few slots or summaries per window */
}
/* KV pools and summaries bound in windows of 1 KiB, as buffers above maxStorageBufferRange
 * are: every kernel that indexes them against the reference. */
TestSuite(vulkan_windows, .init = open_both_windows, .fini = bh_teardown, .timeout = 300);
BH_SPEC(vulkan_windows, append)
BH_SPEC(vulkan_windows, summarize)
BH_SPEC(vulkan_windows, scores)
BH_SPEC(vulkan_windows, pack_hnd)
BH_SPEC(vulkan_windows, scatter_hnd)
BH_SPEC(vulkan_windows, recall_direct)
BH_SPEC(vulkan_windows, attention)
BH_SPEC(vulkan_windows, attention_unsplit)
BH_SPEC(vulkan_windows, attention_split)
BH_SPEC(vulkan_windows, attention_dense_unsplit)
BH_SPEC(vulkan_windows, attention_dense_split)

static void open_both_w32_windows(void) {
    open_both_w32();
    set_option(ODEV, "window_bytes", 1024);
}
/* Windows over KV held two 16-bit elements to a 32-bit word. */
TestSuite(vulkan_windows_w32, .init = open_both_w32_windows, .fini = bh_teardown, .timeout = 300);
BH_SPEC(vulkan_windows_w32, append)
BH_SPEC(vulkan_windows_w32, summarize)
BH_SPEC(vulkan_windows_w32, pack_hnd)
BH_SPEC(vulkan_windows_w32, scatter_hnd)
BH_SPEC(vulkan_windows_w32, attention_split)

/* The shaders' flat invocation ids are 32-bit (common.glsl): a 1-D launch of more than 2^32
 * items is refused, never run with wrapped ids that redo early items and skip late ones.
 * Summaries of 2^14 + 1 pages of a 1024 x 256 geometry are 2^32 + 2^18 items. */
Test(vulkan, launch_beyond_32bit_invocation_ids) {
    fkv_kv_geom g = {.n_kv_heads = 1024, .group = 1,
            .head_dim = 256, .page_size = 1, .dtype = FKV_F32};
    uint32_t n_pages = (1u << 14) + 1;
    size_t slot = (size_t)1024 * 256 * 4;
    fkv_bbuf *pool = bh_alloc1(UT, slot), *pages = bh_alloc1(UT, (size_t)n_pages * 8);
    fkv_bbuf *summ = bh_alloc1(UT, 2 * slot);
    REFUSED(fkv_op_summarize(ODEV, CQ, DEPS, &g, pool, n_pages, pages, 0, summ),
            FKV_ERR_UNSUPPORTED);
    cr_assert(strstr(fkv_last_error(), "32-bit"), "%s", fkv_last_error());
    RUN1(fkv_op_summarize(ODEV, CQ, DEPS, &g, pool, 4, pages, 0, summ)); /* a small call runs */
}
/* Issue #12: group 64 x head_dim 256 runs (or a device that cannot is refused at creation). */
Test(vulkan, large_group_pipeline) { bh_check_large_group(); }

/* ---- Vulkan's own: memory limits, write_regions, recall modes, environment ---- */

Test(vulkan, memory_errors_and_import) {
    /* More than the device can allocate is a status, not a crash. */
    bh_check_alloc_limits((size_t)OD->max_alloc);
    /* An engine-owned VkBuffer wraps and copies like ours. */
    fkv_bbuf *own = bh_alloc1(UT, 4096), *imp = NULL;
    cr_assert_eq(fkv_op_buffer_import(ODEV, (void *)(uintptr_t)own->buf, 4096, &imp), FKV_OK);
    unsigned char src[256], back[256];
    for (int i = 0; i < 256; i++)
        src[i] = (unsigned char)(255 - i);
    bh_write1(UT, imp, 1000, src, 256);
    bh_read1(UT, own, 1000, back, 256);
    cr_assert_arr_eq(back, src, 256);
    fkv_op_buffer_free(ODEV, imp); /* the VkBuffer stays */
    bh_read1(UT, own, 1000, back, 256);
    cr_assert_arr_eq(back, src, 256);
}

/* KV pools above maxStorageBufferRange (lavapipe: 128 MiB), bound in windows: rows appended,
 * units scattered and pages packed, summarised and attended in several windows, against the
 * reference. */
Test(vulkan, pools_beyond_one_binding, .timeout = 600) {
    if (OD->max_range >= OD->max_alloc || OD->max_range > (512u << 20))
        cr_skip_test("maxStorageBufferRange is %llu bytes: too large a pool to test here",
                     (unsigned long long)OD->max_range);
    fkv_kv_geom g = {.n_kv_heads = 1, .group = 2,
            .head_dim = 64, .page_size = 16, .dtype = FKV_F16};
    size_t slot = (size_t)g.page_size * g.n_kv_heads * g.head_dim * 2;
    uint32_t n_slots = (uint32_t)(OD->max_range / slot) + 40, first = (uint32_t)(OD->max_range / slot);
    /* Slots on both sides of the first window's end, and the pool's last slot. */
    int32_t slots[6] = {0, 3, (int32_t)first - 1, (int32_t)first, (int32_t)first + 1,
                        (int32_t)n_slots - 1};
    pbuf kp = bh_pnew(NULL, 0, n_slots * slot), vp = bh_pnew(NULL, 0, n_slots * slot);
    th_rng r;
    th_seed(&r, 1400);
    /* Append all 16 rows of each chosen slot. */
    uint32_t n_rows = 6 * g.page_size;
    int32_t *rows = bh_tmalloc(n_rows * 4);
    for (uint32_t i = 0; i < n_rows; i++)
        rows[i] = slots[i / g.page_size] * (int32_t)g.page_size + (int32_t)(i % g.page_size);
    size_t rn = (size_t)n_rows * g.head_dim;
    pbuf kb = bh_pnew(bh_rand_f32(&r, rn, 1.0f), 0, rn * 4), vb = bh_pnew(bh_rand_f32(&r, rn, 1.0f), 0, rn * 4);
    pbuf rb = bh_pnew(rows, 0, n_rows * 4);
    RUN2(fkv_op_append(bh_device[s], CQ, DEPS, &g, B(kb, s), 0, B(vb, s), 0, n_rows, B(rb, s), 0,
                       B(kp, s), B(vp, s)));
    /* Scatter one HND unit into slot 2 of the second window. */
    int32_t unit[2] = {(int32_t)first + 2, 0};
    size_t unit_bytes = 2 * slot;
    pbuf src = bh_pnew(bh_rand_stored(&r, unit_bytes / 2, g.dtype), 0, unit_bytes);
    pbuf ub = bh_pnew(unit, 0, 8);
    RUN2(fkv_op_scatter_hnd(bh_device[s], BQ, DEPS, &g, B(src, s), 0, 1, B(ub, s), 0, B(kp, s),
                            B(vp, s)));
    /* Pack the seven pages back (both windows), summarise them, attend over them. */
    int32_t packed[7] = {slots[0], slots[1], slots[2], slots[3], slots[4], slots[5], (int32_t)first + 2};
    pbuf pk = bh_pnew(packed, 0, sizeof packed), out = bh_pnew(NULL, GUARD, 7 * unit_bytes);
    RUN2(fkv_op_pack_hnd(bh_device[s], CQ, DEPS, &g, B(kp, s), B(vp, s), 7, B(pk, s), 0, B(out, s),
                         GUARD));
    bh_same_bytes(&out, "pack_hnd across windows");
    int32_t pages[14];
    for (int i = 0; i < 7; i++) {
        pages[2 * i] = packed[i];
        pages[2 * i + 1] = 6 - i;
    }
    size_t sbytes = 7 * (size_t)g.n_kv_heads * 2 * g.head_dim * 4;
    pbuf pb = bh_pnew(pages, 0, sizeof pages), summ = bh_pnew(NULL, 0, sbytes);
    RUN2(fkv_op_summarize(bh_device[s], BQ, DEPS, &g, B(kp, s), 7, B(pb, s), 0, B(summ, s)));
    bh_same_bytes(&summ, "summaries across windows");
    int32_t heads[2] = {1, 7}, entries[16] = {0, 0};
    for (int i = 0; i < 7; i++) {
        entries[2 + 2 * i] = packed[i];
        entries[3 + 2 * i] = i == 6 ? 5 : (int32_t)g.page_size; /* a partial last page */
    }
    size_t qn = (size_t)g.group * g.head_dim;
    pbuf qb = bh_pnew(bh_rand_f32(&r, qn, 1.0f), 0, qn * 4), hb = bh_pnew(heads, 0, 8);
    pbuf eb = bh_pnew(entries, 0, sizeof entries), ao = bh_pnew(NULL, GUARD, qn * 4);
    for (int splits = 1; splits <= 2; splits++) {
        set_option(ODEV, "attention_splits", (uint64_t)splits);
        RUN2(fkv_op_attention(bh_device[s], CQ, DEPS, &g, B(qb, s), 0, 1, B(hb, s), 0, B(eb, s), 0,
                              B(kp, s), B(vp, s), 0.125f, B(ao, s), GUARD));
        bh_same_floats(&ao, GUARD, qn, 2e-5, "attention across windows");
    }
}

/* write_regions as the per-page recall mode issues it (one copy per region). */
Test(vulkan_env, write_regions_perpage) {
    setenv("FREEKV_VULKAN_RECALL", "perpage", 1);
    bh_open_devices();
    cr_assert(option(ODEV, "perpage_copies"));
    bh_spec("write_regions");
}

Test(vulkan_env, recall_modes) {
    bh_need_device();
    fkv_device_info info;
    cr_assert_eq(O->device_info(bh_index, &info), FKV_OK);
    int zero_copy = (info.caps & FKV_CAP_ZERO_COPY_HOST) != 0;
    struct {
        const char *value;
        fkv_recall_mode mode;
        uint64_t import, perpage;
    } cases[] = {
        {"staged", FKV_RECALL_STAGED, 0, 0},
        {"perpage", FKV_RECALL_PERPAGE, 0, 1},
        {"regions", FKV_RECALL_PERPAGE, 0, 0},
        {"hostptr", FKV_RECALL_DIRECT, 1, 0},
        {"auto", zero_copy ? FKV_RECALL_DIRECT : FKV_RECALL_STAGED, zero_copy, 0},
        {"", zero_copy ? FKV_RECALL_DIRECT : FKV_RECALL_STAGED, zero_copy, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        setenv("FREEKV_VULKAN_RECALL", cases[i].value, 1);
        fkv_status st = bh_try_open();
        cr_assert_eq(st, FKV_OK, "%s: %s", cases[i].value, fkv_last_error());
        cr_assert_eq(O->recall_mode(OD), cases[i].mode, "FREEKV_VULKAN_RECALL=%s",
                     cases[i].value);
        cr_assert_eq(fkv_op_recall_mode(ODEV), cases[i].mode);
        cr_assert_eq(option(ODEV, "import_host"), cases[i].import, "%s", cases[i].value);
        cr_assert_eq(option(ODEV, "perpage_copies"), cases[i].perpage, "%s", cases[i].value);
        /* Whatever the mode, host_alloc memory is readable by recall_direct. */
        bh_open_ref();
        bh_spec_case("recall_direct/d64/g1/h2/p16/bf16");
        bh_teardown();
    }
}

/* Host memory that cannot be imported (a driver whose VK_EXT_external_memory_host refuses):
 * FREEKV_VULKAN_RECALL=hostptr is refused at device open naming the cause; auto falls back to
 * staged and says why (recall_note, printed by freekv-info), and its host memory still works. */
Test(vulkan_env, hostptr_import_impossible) {
    /* break_import is process-wide: set through any device, it holds for later opens */
    setenv("FREEKV_VULKAN_RECALL", "staged", 1);
    bh_open_devices();
    set_option(ODEV, "break_import", 1);
    bh_teardown();
    setenv("FREEKV_VULKAN_RECALL", "hostptr", 1);
    fkv_device *d = NULL;
    fkv_status st = fkv_device_open_ops(O, bh_index, &d);
    cr_assert_eq(st, FKV_ERR_UNSUPPORTED, "hostptr with imports broken: %d", st);
    cr_assert_null(d);
    cr_assert(strstr(fkv_last_error(), "cannot import host memory") &&
                  strstr(fkv_last_error(), "vkGetMemoryHostPointerPropertiesEXT"),
              "%s", fkv_last_error());
    setenv("FREEKV_VULKAN_RECALL", "auto", 1);
    bh_open_devices();
    cr_assert_eq(fkv_op_recall_mode(ODEV), FKV_RECALL_STAGED);
    cr_assert_eq(option(ODEV, "import_host"), 0);
    const char *note = fkv_op_recall_note(ODEV);
    cr_assert(strstr(note, "auto: host memory cannot be imported"), "note: %s", note);
    fkv_device_info info;
    cr_assert_eq(fkv_op_opened_info(ODEV, &info), FKV_OK);
    cr_assert_eq(info.caps & FKV_CAP_ZERO_COPY_HOST, 0, "no zero-copy without imports");
    bh_spec_case("recall_direct/d64/g1/h2/p16/bf16");
    /* imports working again: hostptr imports, auto says why it stays staged here */
    set_option(ODEV, "break_import", 0);
    bh_teardown();
    setenv("FREEKV_VULKAN_RECALL", "hostptr", 1);
    bh_open_devices();
    cr_assert_eq(option(ODEV, "import_host"), 1);
    cr_assert_str_eq(fkv_op_recall_note(ODEV), "", "an explicit choice needs no note");
    bh_teardown();
    setenv("FREEKV_VULKAN_RECALL", "auto", 1);
    bh_open_devices();
    note = fkv_op_recall_note(ODEV);
    if (is_lavapipe(&OD->info))
        cr_assert(strstr(note, "auto: a CPU device"), "note: %s", note);
    else
        cr_assert(strstr(note, "auto: "), "note: %s", note);
}

/* maxMemoryAllocationCount (4096 on some drivers): every VkDeviceMemory counts, imported host
 * memory too; past the limit an allocation is refused naming it, and a context that would
 * need more is refused at creation before it allocates anything. */
Test(vulkan_env, allocation_count_limit) {
    bh_need_device();
    static const char *const modes[] = {"hostptr", "staged"};
    for (int m = 0; m < 2; m++) {
        setenv("FREEKV_VULKAN_RECALL", modes[m], 1);
        bh_open_devices();
        uint64_t base = option(ODEV, "live_allocations");
        set_option(ODEV, "allocation_limit", base + 2);
        fkv_bhost *h[3] = {NULL, NULL, NULL};
        void *p;
        cr_assert_eq(fkv_op_host_alloc(ODEV, 4096, &h[0], &p), FKV_OK, "%s", fkv_last_error());
        cr_assert_eq(fkv_op_host_alloc(ODEV, 4096, &h[1], &p), FKV_OK, "%s", fkv_last_error());
        cr_assert_eq(fkv_op_host_alloc(ODEV, 4096, &h[2], &p), FKV_ERR_OUT_OF_HOST_MEMORY, "%s: %s",
                     modes[m], fkv_last_error());
        cr_assert_null(h[2]);
        cr_assert(strstr(fkv_last_error(), "maxMemoryAllocationCount"), "%s", fkv_last_error());
        fkv_bbuf *b = NULL;
        cr_assert_eq(fkv_op_buffer_alloc(ODEV, 256, &b), FKV_ERR_OUT_OF_DEVICE_MEMORY);
        cr_assert(strstr(fkv_last_error(), "maxMemoryAllocationCount"), "%s", fkv_last_error());
        fkv_op_host_free(ODEV, h[0]);
        cr_assert_eq(fkv_op_buffer_alloc(ODEV, 256, &b), FKV_OK, "a freed allocation is available");
        fkv_op_buffer_free(ODEV, b);
        fkv_op_host_free(ODEV, h[1]);
        cr_assert_eq(option(ODEV, "live_allocations"), base);
        bh_teardown();

        /* a context: 2 layers x 19, 6 of prefill scratch, recall staging, 2 seqs x 2 layers x
         * 4 host pool chunks, plus commands in flight: far more than 100 */
        char idx[16];
        snprintf(idx, sizeof idx, "%u", bh_index);
        fkv_device *dev = NULL;
        cr_assert_eq(fkv_device_open("vulkan", idx, &dev), FKV_OK, "%s", fkv_last_error());
        base = option(dev, "live_allocations");
        set_option(dev, "allocation_limit", 100);
        fkv_config cfg;
        bh_pipeline_config(&cfg);
        cfg.max_context = 4096;
        fkv_context *ctx = NULL;
        fkv_status st = fkv_context_create(dev, &cfg, &ctx);
        cr_assert_eq(st, FKV_ERR_UNSUPPORTED, "%s: %d %s", modes[m], st, fkv_last_error());
        cr_assert(strstr(fkv_last_error(), "maxMemoryAllocationCount") &&
                      strstr(fkv_last_error(), "creating the context"),
                  "%s", fkv_last_error());
        cr_assert_eq(option(dev, "live_allocations"), base);
        set_option(dev, "allocation_limit", 0);
        cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
        fkv_context_destroy(ctx);
        cr_assert_eq(option(dev, "live_allocations"), base);
        fkv_device_close(dev);
    }
}

Test(vulkan_env, bad_environment) {
    bh_need_device();
    fkv_device *d = NULL;
    setenv("FREEKV_VULKAN_RECALL", "zero-copy", 1);
    cr_assert_eq(fkv_device_open_ops(O, bh_index, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert_null(d);
    const char *msg = fkv_last_error();
    cr_assert(strstr(msg, "FREEKV_VULKAN_RECALL") && strstr(msg, "auto") &&
                  strstr(msg, "staged") && strstr(msg, "regions") && strstr(msg, "hostptr") &&
                  strstr(msg, "perpage"),
              "message lists the valid values: %s", msg);
    unsetenv("FREEKV_VULKAN_RECALL");
    setenv("FREEKV_VULKAN_16BIT", "2", 1); /* a boolean: 0/1, false/true, no/yes, off/on */
    cr_assert_eq(fkv_device_open_ops(O, bh_index, &d), FKV_ERR_BAD_ENVIRONMENT);
    cr_assert(strstr(fkv_last_error(), "FREEKV_VULKAN_16BIT") != NULL, "%s", fkv_last_error());
    cr_assert_null(d);
}

Test(vulkan_env, pipeline_cache_file) {
    bh_need_device();
    char dir[] = "/tmp/freekv-vkcache-test-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char sub[600];
    snprintf(sub, sizeof sub, "%s/nested", dir);
    setenv("FREEKV_CACHE_DIR", sub, 1);
    for (int round = 0; round < 3; round++) {
        cr_assert_eq(bh_try_open(), FKV_OK, "%s", fkv_last_error());
        fkv_kv_geom g = {.n_kv_heads = 1, .group = 1,
                .head_dim = 16, .page_size = 4, .dtype = FKV_BF16};
        fkv_bbuf *kp = bh_alloc1(UT, 4096), *idx = bh_alloc1(UT, 64);
        int32_t u[2] = {0, 0};
        bh_write1(UT, idx, 0, u, 8);
        RUN1(fkv_op_scatter_hnd(ODEV, CQ, DEPS, &g, kp, 0, 1, idx, 0, kp, kp));
        bh_teardown(); /* writes the cache file */
        char cmd[1400];
        if (round == 0) { /* a file is there, with no temporaries left */
            snprintf(cmd, sizeof cmd, "ls %s/vulkan-*.pcache >/dev/null && test -z \"$(ls %s | grep tmp)\"", sub, sub);
            cr_assert_eq(system(cmd), 0);
        } else if (round == 1) { /* a corrupt file is ignored and replaced */
            snprintf(cmd, sizeof cmd, "for f in %s/vulkan-*.pcache; do head -c 20 \"$f\" > \"$f.x\" && mv \"$f.x\" \"$f\"; done", sub);
            cr_assert_eq(system(cmd), 0);
        }
    }
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

/* FREEKV_VULKAN_VALIDATION=1: a warning counts like an error (finish fails) unless the
 * backend lists it as benign. The layer's own fine-grained-locking warning
 * (VK_LAYER_FINE_GRAINED_LOCKING=0) is listed; a warning under an id no list names, sent
 * through vkSubmitDebugUtilsMessageEXT, is not; information messages never count. */
Test(vulkan_env, validation_counts_unlisted_warnings) {
    bh_need_device();
    setenv("FREEKV_VULKAN_VALIDATION", "1", 1);
    setenv("VK_LAYER_FINE_GRAINED_LOCKING", "0", 1);
    fkv_status st = bh_try_open();
    if (st == FKV_ERR_BAD_ENVIRONMENT)
        cr_skip_test("the Khronos validation layer is not installed: %s", fkv_last_error());
    cr_assert_eq(st, FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(option(ODEV, "validation_errors"), 0, "a benign warning was counted");
    PFN_vkSubmitDebugUtilsMessageEXT submit = (PFN_vkSubmitDebugUtilsMessageEXT)
        vkGetInstanceProcAddr(OD->instance, "vkSubmitDebugUtilsMessageEXT");
    cr_assert_not_null(submit);
    VkDebugUtilsMessengerCallbackDataEXT data = {
        .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CALLBACK_DATA_EXT,
        .pMessageIdName = "freekv-test-unlisted-warning",
        .messageIdNumber = 1,
        .pMessage = "a warning that no list names (sent by test_vulkan on purpose)"};
    submit(OD->instance, VK_DEBUG_UTILS_MESSAGE_SEVERITY_INFO_BIT_EXT,
           VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT, &data);
    cr_expect_eq(option(ODEV, "validation_errors"), 0, "an information message counted");
    cr_assert_eq(fkv_op_finish(ODEV, CQ), FKV_OK, "%s", fkv_last_error());
    submit(OD->instance, VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT,
           VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT, &data);
    cr_expect_eq(option(ODEV, "validation_errors"), 1, "the warning was not counted");
    cr_expect_eq(fkv_op_finish(ODEV, CQ), FKV_ERR_BACKEND, "finish after a warning: %s",
                 fkv_last_error());
    cr_expect(strstr(fkv_last_error(), "error(s) or warning(s)") != NULL, "%s", fkv_last_error());
    /* closed here: the harness's last check (no validation messages) would fail on purpose */
    fkv_device_close(ODEV);
    ODEV = NULL;
    OD = NULL;
}

/* ---- options (docs/backend-options.md) ---- */

Test(vulkan, options) {
    char out[64];
    cr_assert_eq(fkv_op_set_option(ODEV, "no_such_key", "1"), FKV_ERR_UNSUPPORTED);
    const char *msg = fkv_last_error();
    cr_assert(strstr(msg, "no_such_key") && strstr(msg, "attention_splits") &&
                  strstr(msg, "window_bytes") && strstr(msg, "allocation_limit") &&
                  strstr(msg, "break_import"),
              "the message lists the keys: %s", msg);
    cr_assert_eq(fkv_op_get_option(ODEV, "no_such_key", out, sizeof out), FKV_ERR_UNSUPPORTED);
    cr_assert(strstr(fkv_last_error(), "live_allocations") &&
                  strstr(fkv_last_error(), "subgroup_size"),
              "%s", fkv_last_error());
    cr_assert_eq(fkv_op_set_option(ODEV, "attention_splits", "257"), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_set_option(ODEV, "break_import", "2"), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_eq(fkv_op_set_option(ODEV, "attention_splits", "5"), FKV_OK);
    cr_assert_eq(fkv_op_get_option(ODEV, "attention_splits", out, sizeof out), FKV_OK);
    cr_assert_str_eq(out, "5");
    /* windows and allocations: lowered, never past the device's own; 0 restores it */
    set_option(ODEV, "window_bytes", 4096);
    cr_assert_eq(option(ODEV, "window_bytes"), 4096);
    set_option(ODEV, "window_bytes", 0);
    cr_assert_eq(option(ODEV, "window_bytes"), 0);
    set_option(ODEV, "allocation_limit", 0);
    uint64_t device = option(ODEV, "allocation_limit");
    set_option(ODEV, "allocation_limit", device + 1000);
    cr_assert_eq(option(ODEV, "allocation_limit"), device);
    set_option(ODEV, "allocation_limit", 7);
    cr_assert_eq(option(ODEV, "allocation_limit"), 7);
    set_option(ODEV, "allocation_limit", 0);
}

/* ---- queue choice (fkv_vk_plan_queues, a pure function of the families) ---- */

#define GFX (VK_QUEUE_GRAPHICS_BIT | VK_QUEUE_COMPUTE_BIT | VK_QUEUE_TRANSFER_BIT)
#define COMP (VK_QUEUE_COMPUTE_BIT | VK_QUEUE_TRANSFER_BIT)
#define XFER VK_QUEUE_TRANSFER_BIT

static void expect_queue(const vk_queue_plan *p, fkv_queue q, uint32_t family, uint32_t index) {
    cr_expect_eq(p->family[q], family, "queue %d: family %u, not %u", (int)q, p->family[q], family);
    cr_expect_eq(p->index[q], index, "queue %d: index %u, not %u", (int)q, p->index[q], index);
}

/* The queues to create per family cover what the plan uses, once per family. */
static void expect_counts(const vk_queue_plan *p, const VkQueueFamilyProperties *fp) {
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        uint32_t k = 0;
        while (k < p->n_families && p->families[k] != p->family[q])
            k++;
        cr_assert_lt(k, p->n_families, "queue %d's family is created", q);
        cr_expect_gt(p->count[k], p->index[q]);
        cr_expect_leq(p->count[k], fp[p->families[k]].queueCount);
    }
    for (uint32_t a = 0; a < p->n_families; a++)
        for (uint32_t b = a + 1; b < p->n_families; b++)
            cr_expect_neq(p->families[a], p->families[b]);
}

Test(vulkan_env, queue_plan_radv_like) {
    /* graphics+compute x1, async compute x4, transfer-only x2 (RADV, AMDVLK) */
    VkQueueFamilyProperties fp[] = {{.queueFlags = GFX, .queueCount = 1},
                                    {.queueFlags = COMP, .queueCount = 4},
                                    {.queueFlags = XFER, .queueCount = 2}};
    vk_queue_plan p;
    cr_assert(fkv_vk_plan_queues(fp, 3, &p));
    expect_queue(&p, FKV_QUEUE_COMPUTE, 0, 0);
    expect_queue(&p, FKV_QUEUE_BACKGROUND, 1, 0);
    expect_queue(&p, FKV_QUEUE_TRANSFER, 2, 0);
    cr_expect_eq(p.n_families, 3);
    expect_counts(&p, fp);
    /* no transfer family (older RADV): a second async-compute queue takes the copies */
    cr_assert(fkv_vk_plan_queues(fp, 2, &p));
    expect_queue(&p, FKV_QUEUE_BACKGROUND, 1, 0);
    expect_queue(&p, FKV_QUEUE_TRANSFER, 1, 1);
    cr_expect_eq(p.n_families, 2);
    expect_counts(&p, fp);
}

Test(vulkan_env, queue_plan_one_queue) {
    /* ANV, lavapipe: one family with one queue, all three share it */
    VkQueueFamilyProperties fp[] = {{.queueFlags = GFX, .queueCount = 1}};
    vk_queue_plan p;
    cr_assert(fkv_vk_plan_queues(fp, 1, &p));
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        expect_queue(&p, (fkv_queue)q, 0, 0);
    cr_expect_eq(p.n_families, 1);
    cr_expect_eq(p.count[0], 1);
    /* no compute at all: refused */
    VkQueueFamilyProperties none[] = {{.queueFlags = XFER, .queueCount = 2}};
    cr_expect_not(fkv_vk_plan_queues(none, 1, &p));
}

Test(vulkan_env, queue_plan_nvidia_like) {
    /* graphics x16, async compute x8, transfer x2: background on a second graphics-family
     * queue, copies on the transfer family */
    VkQueueFamilyProperties fp[] = {{.queueFlags = GFX, .queueCount = 16},
                                    {.queueFlags = XFER, .queueCount = 2},
                                    {.queueFlags = COMP, .queueCount = 8}};
    vk_queue_plan p;
    cr_assert(fkv_vk_plan_queues(fp, 3, &p));
    expect_queue(&p, FKV_QUEUE_COMPUTE, 0, 0);
    expect_queue(&p, FKV_QUEUE_BACKGROUND, 0, 1);
    expect_queue(&p, FKV_QUEUE_TRANSFER, 1, 0);
    cr_expect_eq(p.n_families, 2);
    expect_counts(&p, fp);
    cr_expect_eq(p.count[0], 2);
    /* a family that reports no queues is never chosen */
    fp[1].queueCount = 0;
    cr_assert(fkv_vk_plan_queues(fp, 3, &p));
    expect_queue(&p, FKV_QUEUE_TRANSFER, 2, 0);
    expect_counts(&p, fp);
}

/* The device says which queues it chose (freekv-info prints it). */
Test(vulkan, queues_option) {
    char out[256];
    cr_assert_eq(fkv_op_get_option(ODEV, "queues", out, sizeof out), FKV_OK, "%s", fkv_last_error());
    cr_assert(strstr(out, "compute family") && strstr(out, "background family") &&
                  strstr(out, "transfer family"),
              "%s", out);
    fkv_device_info info;
    cr_assert_eq(fkv_op_opened_info(ODEV, &info), FKV_OK);
    if (strstr(info.name, "llvmpipe")) /* one family with one queue: the degraded path */
        cr_assert_str_eq(out, "compute family 0 queue 0, background family 0 queue 0 (shared), "
                              "transfer family 0 queue 0 (shared)");
    cr_assert_eq(fkv_op_get_option(ODEV, "queues", out, 8), FKV_ERR_INVALID_ARGUMENT);
}

/* The compute-unit count that split decisions use, and where it came from. */
Test(vulkan, compute_units_option) {
    char src[128];
    uint64_t n = option(ODEV, "compute_units");
    cr_assert_gt(n, 0);
    cr_assert_eq(fkv_op_get_option(ODEV, "compute_units_source", src, sizeof src), FKV_OK, "%s",
                 fkv_last_error());
    fkv_device_info info;
    cr_assert_eq(fkv_op_opened_info(ODEV, &info), FKV_OK);
    if (strstr(info.name, "llvmpipe")) { /* no extension exposes a count: the CPU default */
        cr_assert_eq(n, 16);
        cr_assert(strstr(src, "default for a CPU device"), "%s", src);
    } else {
        cr_assert(strstr(src, "VK_") || strstr(src, "default"), "%s", src);
    }
}

/* Grow-only scratch: once a decode loop has warmed up, further steps allocate no device
 * memory (attention partials of split layers, staged writes and reads, zero-copy unit tables
 * all come from the queues' scratch), in every recall mode. */
Test(vulkan_env, steady_state_allocates_nothing, .timeout = 600) {
    bh_need_device();
    static const char *const modes[] = {"staged", "hostptr", "perpage"};
    char idx[16];
    snprintf(idx, sizeof idx, "%u", bh_index);
    for (int m = 0; m < 3; m++) {
        setenv("FREEKV_VULKAN_RECALL", modes[m], 1);
        fkv_device *dev = NULL;
        cr_assert_eq(fkv_device_open("vulkan", idx, &dev), FKV_OK, "%s", fkv_last_error());
        set_option(dev, "attention_splits", 4); /* partials on every layer */
        fkv_config cfg;
        bh_pipeline_config(&cfg);
        cfg.policy = FKV_POLICY_FREEKV;
        fkv_context *ctx = NULL;
        cr_assert_eq(fkv_context_create(dev, &cfg, &ctx), FKV_OK, "%s", fkv_last_error());
        pd_run run = {.n_seqs = 2, .seqs = {0, 1}, .prompt = {150, 203}, .steps = 3,
                      .batched = 1, .drift = 0.3f};
        cr_assert_eq(pd_execute(ctx, &run, NULL), FKV_OK, "%s", fkv_last_error());
        uint64_t warm = option(dev, "allocations");
        run.first_step = run.steps;
        run.steps += 5;
        run.resume = 1;
        cr_assert_eq(pd_execute(ctx, &run, NULL), FKV_OK, "%s", fkv_last_error());
        cr_expect_eq(option(dev, "allocations"), warm, "%s: %llu allocations in 5 steps after "
                     "warm-up", modes[m], (unsigned long long)(option(dev, "allocations") - warm));
        no_validation_errors(dev);
        fkv_context_destroy(ctx);
        fkv_device_close(dev);
    }
}

/* Command-buffer granularity: a queue's consecutive commands go out in one vkQueueSubmit, when
 * something waits on them (event_wait, another queue's command, finish), in order and with
 * their results right. Where TRANSFER runs on COMPUTE's VkQueue (lavapipe), the two share one
 * submission stream: TRANSFER's command that waits on COMPUTE's is recorded after them, and
 * one submission carries all six. With separate streams (a device with a VkQueue per queue,
 * or the option separate_streams), COMPUTE's five go out when TRANSFER's command waits on
 * them, and that one when it is waited for. */
static void check_batches(int separate) {
    set_option(ODEV, "separate_streams", (uint64_t)separate);
    char queues[256];
    cr_assert_eq(fkv_op_get_option(ODEV, "queues", queues, sizeof queues), FKV_OK);
    const char *xfer = strstr(queues, "transfer family");
    cr_assert_not_null(xfer, "%s", queues);
    uint64_t shared = !separate && strstr(xfer, "(shared)") != NULL;
    enum { N = 256 };
    uint32_t a[N], b[N], got[N];
    for (uint32_t i = 0; i < N; i++)
        a[i] = i * 7 + 1, b[i] = 0xdead0000u + i;
    fkv_bbuf *x = NULL, *y = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(ODEV, sizeof a, &x), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_buffer_alloc(ODEV, sizeof a, &y), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_finish(ODEV, FKV_QUEUE_COMPUTE), FKV_OK);
    cr_assert_eq(fkv_op_finish(ODEV, FKV_QUEUE_TRANSFER), FKV_OK);
    uint64_t s0 = option(ODEV, "submits");
    /* five dependent commands on COMPUTE, the last with an event: nothing submitted yet */
    fkv_bevent *ev = NULL;
    cr_assert_eq(fkv_op_write(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){0}, x, 0, b, sizeof b), FKV_OK);
    cr_assert_eq(fkv_op_write(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){0}, x, 0, a, sizeof a), FKV_OK);
    cr_assert_eq(fkv_op_copy(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){0}, y, 0, x, 0, sizeof a), FKV_OK);
    cr_assert_eq(fkv_op_copy(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){0}, y, 4, y, 0, sizeof a - 4),
                 FKV_OK); /* overlapping: y[i+1] = y[i] */
    cr_assert_eq(fkv_op_read(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){.done = &ev}, y, 0, got,
                             sizeof got),
                 FKV_OK);
    cr_assert_not_null(ev);
    cr_expect_eq(option(ODEV, "submits"), s0, "recorded, not yet submitted");
    /* TRANSFER waits on it: COMPUTE is submitted first, then TRANSFER's command on waiting */
    fkv_bevent *ev2 = NULL;
    uint32_t back[N];
    cr_assert_eq(fkv_op_read(ODEV, FKV_QUEUE_TRANSFER, (fkv_deps){.n_wait = 1, .wait = &ev,
                                                                  .done = &ev2},
                             x, 0, back, sizeof back),
                 FKV_OK);
    cr_expect_eq(option(ODEV, "submits"), s0 + 1 - shared, "%s",
                 shared ? "recorded after them, nothing submitted"
                        : "one submission for five commands");
    cr_assert_eq(fkv_op_event_wait(ODEV, 1, &ev2), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(option(ODEV, "submits"), s0 + 2 - shared);
    cr_assert_eq(fkv_op_event_wait(ODEV, 1, &ev), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(got[0], a[0]);
    for (uint32_t i = 1; i < N; i++)
        cr_assert_eq(got[i], a[i - 1], "got[%u] = %u", i, got[i]);
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(back[i], a[i], "back[%u] = %u", i, back[i]);
    fkv_op_event_release(ODEV, ev);
    fkv_op_event_release(ODEV, ev2);
    /* finish submits what is recorded */
    cr_assert_eq(fkv_op_write(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){0}, x, 0, b, sizeof b), FKV_OK);
    cr_assert_eq(fkv_op_read(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){0}, x, 0, got, sizeof got), FKV_OK);
    cr_expect_eq(option(ODEV, "submits"), s0 + 2 - shared);
    cr_assert_eq(fkv_op_finish(ODEV, FKV_QUEUE_COMPUTE), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(option(ODEV, "submits"), s0 + 3 - shared);
    cr_assert_eq(memcmp(got, b, sizeof b), 0);
    fkv_op_buffer_free(ODEV, x);
    fkv_op_buffer_free(ODEV, y);
    set_option(ODEV, "separate_streams", 0);
}

Test(vulkan, commands_batch_into_one_submit) { check_batches(0); }
Test(vulkan, commands_batch_into_one_submit_separate_streams) { check_batches(1); }

/* A command that waits on another stream starts a batch of the submission, not a submission:
 * COMPUTE's pending write stays pending while TRANSFER's command it waits on goes out; one
 * submission then carries the write and two batches after it, the first a marker that waits
 * (its command buffer holds only the barrier the later ones order after), the second a copy
 * that waits too, and the data is TRANSFER's. */
Test(vulkan, cross_stream_wait_starts_a_batch) {
    set_option(ODEV, "separate_streams", 1);
    enum { N = 64 };
    uint32_t a[N], b[N], c[N], got[N];
    for (uint32_t i = 0; i < N; i++)
        a[i] = i + 1, b[i] = 1000 + i, c[i] = 0;
    fkv_bbuf *x = NULL, *y = NULL, *z = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(ODEV, sizeof a, &x), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_buffer_alloc(ODEV, sizeof a, &y), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_buffer_alloc(ODEV, sizeof a, &z), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_finish(ODEV, FKV_QUEUE_COMPUTE), FKV_OK);
    cr_assert_eq(fkv_op_finish(ODEV, FKV_QUEUE_TRANSFER), FKV_OK);
    uint64_t s0 = option(ODEV, "submits");
    cr_assert_eq(fkv_op_write(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){0}, z, 0, c, sizeof c), FKV_OK);
    fkv_bevent *tw = NULL, *tw2 = NULL, *done = NULL;
    cr_assert_eq(fkv_op_write(ODEV, FKV_QUEUE_TRANSFER, (fkv_deps){.done = &tw}, x, 0, a,
                              sizeof a),
                 FKV_OK);
    cr_assert_eq(fkv_op_write(ODEV, FKV_QUEUE_TRANSFER, (fkv_deps){.done = &tw2}, y, 0, b,
                              sizeof b),
                 FKV_OK);
    cr_expect_eq(option(ODEV, "submits"), s0, "recorded, not yet submitted");
    /* a marker on COMPUTE after the first TRANSFER write, then a copy after the second */
    cr_assert_eq(fkv_op_marker(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){.n_wait = 1, .wait = &tw}),
                 FKV_OK);
    cr_expect_eq(option(ODEV, "submits"), s0 + 1, "TRANSFER's writes only");
    cr_assert_eq(fkv_op_copy(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){0}, z, 0, x, 0, sizeof a),
                 FKV_OK);
    cr_assert_eq(fkv_op_copy(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){.n_wait = 1, .wait = &tw2}, z,
                             sizeof a / 2, y, sizeof a / 2, sizeof a / 2),
                 FKV_OK);
    cr_assert_eq(fkv_op_read(ODEV, FKV_QUEUE_COMPUTE, (fkv_deps){.done = &done}, z, 0, got,
                             sizeof got),
                 FKV_OK);
    cr_expect_eq(option(ODEV, "submits"), s0 + 1, "COMPUTE's waits start batches, not submits");
    cr_assert_eq(fkv_op_event_wait(ODEV, 1, &done), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(option(ODEV, "submits"), s0 + 2, "one submission for COMPUTE's five");
    for (uint32_t i = 0; i < N; i++)
        cr_assert_eq(got[i], i < N / 2 ? a[i] : b[i], "got[%u] = %u", i, got[i]);
    fkv_op_event_release(ODEV, tw);
    fkv_op_event_release(ODEV, tw2);
    fkv_op_event_release(ODEV, done);
    no_validation_errors(ODEV);
    fkv_op_buffer_free(ODEV, x);
    fkv_op_buffer_free(ODEV, y);
    fkv_op_buffer_free(ODEV, z);
    set_option(ODEV, "separate_streams", 0);
}
