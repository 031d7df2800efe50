/* A device backend against the CPU reference in Criterion (backend_harness.h): the fixture,
 * the op specs of conformance/ on the opened devices, and the helpers the backends' own tests
 * share. */
#include "backend_harness.h"

#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backends/dispatch.h"
#include "common/dtype.h"

#if defined(__SANITIZE_ADDRESS__)
/* LeakSanitizer: PoCL/LLVM keep objects from a cold-cache build (see tests/lsan.supp, next to
 * this file, which this hook names so the suppressions live in one place). Every backend test
 * links this file, so the hook is here once. */
const char *__lsan_default_options(void);
const char *__lsan_default_options(void) {
    static char opts[1200];
    const char *file = __FILE__, *slash = strrchr(file, '/');
    if (opts[0] == '\0' && slash && (size_t)(slash - file) < 1000) {
        memcpy(opts, "suppressions=", 13);
        memcpy(opts + 13, file, (size_t)(slash - file));
        memcpy(opts + 13 + (slash - file), "/lsan.supp", 11);
        if (access(opts + 13, R_OK) != 0)
            opts[0] = '\0'; /* no file where expected: run without suppressions */
    }
    return opts;
}
#endif

/* ---- fixture ---- */

const fkv_backend_ops *bh_ops[2];
fkv_device *bh_device[2];
fkv_bdev *bh_dev[2];
fkv_bbuf *bh_bufs[2][256];
fkv_bevent *bh_ev;
uint32_t bh_index;
static size_t bh_n_bufs[2];
static void *bh_mems[1024];
static size_t bh_n_mems;
static const bh_backend *cur;

static const char *side_name(int s) { return s == REF ? "cpu" : cur->name; }

void bh_select(const bh_backend *b) { cur = b; }

void *bh_tmalloc(size_t size) {
    cr_assert_lt(bh_n_mems, sizeof bh_mems / sizeof *bh_mems);
    void *p = calloc(1, size ? size : 1);
    cr_assert_not_null(p);
    bh_mems[bh_n_mems++] = p;
    return p;
}

void bh_clear_env(void) {
    for (const char *const *v = cur->env; v && *v; v++)
        unsetenv(*v);
    unsetenv("FREEKV_CPU_RECALL");
    unsetenv("FREEKV_CPU_ISA");
    unsetenv("FREEKV_CPU_THREADS");
    /* Kernel caches next to PoCL's (CTest sets POCL_CACHE_DIR), not in $HOME. */
    char dir[1024];
    const char *pocl = getenv("POCL_CACHE_DIR");
    if (pocl && pocl[0])
        snprintf(dir, sizeof dir, "%s/freekv", pocl);
    else
        snprintf(dir, sizeof dir, "/tmp/freekv-test-cache-%ld", (long)getuid());
    setenv("FREEKV_CACHE_DIR", dir, 1);
}

int bh_find_device(void) {
    uint32_t n = 0;
    bh_ops[UT] = cur->ops();
    if (bh_ops[UT] == NULL || bh_ops[UT]->device_count(&n) != FKV_OK || n == 0)
        return 0;
    bh_index = 0;
    for (uint32_t i = 0; i < n && cur->is_preferred; i++) {
        fkv_device_info info;
        if (bh_ops[UT]->device_info(i, &info) == FKV_OK && cur->is_preferred(&info)) {
            bh_index = i;
            break;
        }
    }
    return 1;
}

void bh_need_device(void) {
    if (bh_find_device())
        return;
    if (th_device_required(cur->name))
        cr_assert_fail("no %s device, but FREEKV_REQUIRE_DEVICES=%s requires one", cur->name,
                       getenv("FREEKV_REQUIRE_DEVICES"));
    cr_skip_test("no %s device", cur->name);
}

/* Side s opened through the dispatch layer, which checks the table and that capabilities
 * and optional entries agree. */
static fkv_status open_side(int s, uint32_t index) {
    fkv_status st = fkv_device_open_ops(bh_ops[s], index, &bh_device[s]);
    bh_dev[s] = st == FKV_OK ? fkv_device_bdev(bh_device[s]) : NULL;
    return st;
}

void bh_open_ref(void) {
    bh_ops[REF] = fkv_backend_cpu();
    cr_assert_not_null(bh_ops[REF]);
    cr_assert_eq(open_side(REF, 0), FKV_OK, "cpu: %s", fkv_last_error());
}

fkv_status bh_try_open(void) { return open_side(UT, bh_index); }

void bh_open_devices(void) {
    bh_need_device();
    fkv_status st = bh_try_open();
    cr_assert_eq(st, FKV_OK, "%s device_open: %s", cur->name, fkv_last_error());
    bh_open_ref();
}

void bh_open_both(void) {
    bh_clear_env();
    bh_open_devices();
}

void bh_teardown(void) {
    for (int s = 0; s < 2; s++) {
        if (bh_device[s] == NULL)
            continue;
        for (int q = 0; q < FKV_QUEUE_COUNT; q++)
            fkv_op_finish(bh_device[s], (fkv_queue)q);
        for (size_t i = 0; i < bh_n_bufs[s]; i++)
            fkv_op_buffer_free(bh_device[s], bh_bufs[s][i]);
        if (s == UT && cur->before_close)
            cur->before_close(bh_device[s]);
        fkv_device_close(bh_device[s]);
        bh_device[s] = NULL;
        bh_dev[s] = NULL;
        bh_n_bufs[s] = 0;
    }
    for (size_t i = 0; i < bh_n_mems; i++)
        free(bh_mems[i]);
    bh_n_mems = 0;
}

void bh_done_ok(int s, fkv_status st, const char *what) {
    cr_assert_eq(st, FKV_OK, "%s (%s): %s", what, side_name(s), fkv_last_error());
    cr_assert_not_null(bh_ev, "%s: no event", what);
    fkv_status w = fkv_op_event_wait(bh_device[s], 1, &bh_ev);
    fkv_op_event_release(bh_device[s], bh_ev);
    bh_ev = NULL;
    cr_assert_eq(w, FKV_OK, "%s (%s) failed: %s", what, side_name(s), fkv_last_error());
}

/* ---- the op specs ---- */

/* Runs the unit cases that `match` accepts; returns how many ran. */
static size_t run_specs(int (*match)(const cf_case *c, const char *key), const char *key) {
    static cf_case cases[2048];
    cf_case_opts opts = {.sets = CF_SET_UNIT, .knobs = 1};
    size_t n = cf_op_cases(&opts, cases, sizeof cases / sizeof *cases);
    cf_env env = {.strict = 1};
    for (int s = 0; s < 2; s++) {
        cf_dev *d = s == UT ? &env.dut : &env.ref;
        d->dev = bh_device[s];
        cr_assert_eq(fkv_op_opened_info(d->dev, &d->info), FKV_OK, "%s", fkv_last_error());
        d->info.index = s == UT ? bh_index : 0;
    }
    size_t ran = 0, passed = 0, failed = 0;
    cf_result r, skipped;
    cf_result_init(&skipped);
    for (size_t i = 0; i < n; i++) {
        if (!match(&cases[i], key))
            continue;
        ran++;
        cf_result_init(&r);
        cases[i].run(&env, &cases[i], &r);
        if (r.status == CF_FAIL) {
            failed++;
            cr_log_error("%s: %s", cases[i].name, r.message);
        } else if (r.status == CF_SKIP) {
            skipped = r;
        } else {
            passed++;
        }
    }
    cr_assert_eq(failed, 0, "%zu of %zu case(s) failed (listed above)", failed, ran);
    if (ran && passed == 0)
        cr_skip_test("%s", skipped.message);
    return ran;
}

static int same_spec(const cf_case *c, const char *id) { return strcmp(c->spec, id) == 0; }
static int same_name(const cf_case *c, const char *name) { return strcmp(c->name, name) == 0; }

void bh_spec(const char *id) {
    cr_assert_gt(run_specs(same_spec, id), 0, "no case of spec %s", id);
}

void bh_spec_case(const char *name) {
    cr_assert_eq(run_specs(same_name, name), 1, "no case named %s", name);
}

/* ---- paired buffers ---- */

fkv_bbuf *bh_alloc1(int s, size_t size) {
    fkv_bbuf *b = NULL;
    cr_assert_eq(fkv_op_buffer_alloc(bh_device[s], size, &b), FKV_OK, "buffer_alloc: %s",
                 fkv_last_error());
    cr_assert_lt(bh_n_bufs[s], 256);
    bh_bufs[s][bh_n_bufs[s]++] = b;
    return b;
}

void bh_write1(int s, fkv_bbuf *b, size_t off, const void *src, size_t size) {
    bh_done_ok(s, fkv_op_write(bh_device[s], CQ, DEPS, b, off, src, size), "write");
}

void bh_read1(int s, const fkv_bbuf *b, size_t off, void *dst, size_t size) {
    bh_done_ok(s, fkv_op_read(bh_device[s], CQ, DEPS, b, off, dst, size), "read");
}

/* `size` bytes of src (NULL: guard bytes) at offset `off`, guard bytes around (GUARD after). */
pbuf bh_pnew(const void *src, size_t off, size_t size) {
    pbuf p;
    p.size = off + size + GUARD;
    unsigned char *fill = bh_tmalloc(p.size);
    memset(fill, GUARD_BYTE, p.size);
    if (src && size)
        memcpy(fill + off, src, size);
    for (int s = 0; s < 2; s++) {
        p.b[s] = bh_alloc1(s, p.size);
        bh_write1(s, p.b[s], 0, fill, p.size);
    }
    return p;
}

unsigned char *bh_pb_read(const pbuf *p, int s) {
    unsigned char *x = bh_tmalloc(p->size);
    bh_read1(s, p->b[s], 0, x, p->size);
    return x;
}

/* Both sides hold the same bytes (guards included). */
void bh_same_bytes(const pbuf *p, const char *what) {
    unsigned char *a = bh_pb_read(p, UT), *b = bh_pb_read(p, REF);
    for (size_t i = 0; i < p->size; i++)
        cr_assert_eq(a[i], b[i], "%s: byte %zu differs (%s %02x, cpu %02x)", what, i,
                     cur->name, a[i], b[i]);
}

/* Floats [off, off+n*4) agree within tol (absolute, scaled by 1 + |ref|); all other bytes
 * (the guards) are equal and untouched. */
void bh_same_floats(const pbuf *p, size_t off, size_t n, double tol, const char *what) {
    unsigned char *a = bh_pb_read(p, UT), *b = bh_pb_read(p, REF);
    for (size_t i = 0; i < p->size; i++) {
        if (i >= off && i < off + n * 4)
            continue;
        cr_assert_eq(a[i], b[i], "%s: guard byte %zu changed", what, i);
        cr_assert_eq(a[i], GUARD_BYTE, "%s: guard byte %zu changed", what, i);
    }
    const float *x = (const float *)(a + off), *y = (const float *)(b + off);
    for (size_t i = 0; i < n; i++)
        cr_assert(fabs((double)x[i] - y[i]) <= tol * (1.0 + fabs(y[i])),
                  "%s: element %zu: %s %.9g, cpu %.9g", what, i, cur->name, x[i], y[i]);
}

/* ---- data ---- */

float *bh_rand_f32(th_rng *r, size_t n, float scale) {
    float *x = bh_tmalloc(n * sizeof *x);
    th_fill_normal(r, x, n, scale);
    return x;
}

/* n random values stored in dtype t. */
void *bh_rand_stored(th_rng *r, size_t n, fkv_dtype t) {
    float *x = bh_rand_f32(r, n, 1.0f);
    unsigned char *out = bh_tmalloc(n * fkv_dtype_size(t));
    for (size_t i = 0; i < n; i++)
        fkv_store(out, t, i, x[i]);
    return out;
}

/* ---- what every device backend of freekv provides ---- */

void bh_check_device_info(fkv_device_info *info_out) {
    cr_assert_str_eq(O->name, cur->name);
    cr_assert(O->buffer_import && O->attention_dense && O->recall_direct && O->recall_mode &&
              O->opened_info && O->set_option && O->get_option);
    cr_assert_eq(fkv_op_opened_info(ODEV, info_out), FKV_OK, "%s", fkv_last_error());
    cr_assert(info_out->caps & FKV_CAP_FP16_STORAGE);
}

void bh_check_alloc_limits(size_t max_alloc) {
    fkv_bbuf *big = NULL;
    fkv_status st = fkv_op_buffer_alloc(ODEV, max_alloc + 1, &big);
    cr_assert_eq(st, FKV_ERR_OUT_OF_DEVICE_MEMORY, "%d %s", st, fkv_last_error());
    cr_assert_null(big);
    cr_assert(strstr(fkv_last_error(), "largest allocation") != NULL, "%s", fkv_last_error());
    cr_assert_eq(fkv_op_buffer_alloc(ODEV, 0, &big), FKV_ERR_INVALID_ARGUMENT);
    cr_assert_null(big);
}

/* ---- the whole decode pipeline against the CPU reference ---- */

/* Prefill two sequences (prompts not multiples of the page), then decode `steps` batched
 * steps; outputs [step][layer][seq][Hq*d]. The data depends only on (kind, seq, layer, t). */
static fkv_status run_pipeline(const char *backend, const char *device, const fkv_config *cfg,
                               uint32_t steps, float *out) {
    static const uint32_t prompts[2] = {150, 203}, seqs[2] = {0, 1};
    size_t kv = (size_t)cfg->n_kv_heads * cfg->head_dim, qn = (size_t)cfg->n_q_heads * cfg->head_dim;
    fkv_device *d = NULL;
    fkv_context *ctx = NULL;
    fkv_status st = fkv_device_open(backend, device, &d);
    if (st == FKV_OK)
        st = fkv_context_create(d, cfg, &ctx);
    float *k = bh_tmalloc(sizeof(float) * kv * 256), *v = bh_tmalloc(sizeof(float) * kv * 256);
    float *q = bh_tmalloc(sizeof(float) * qn * 2), *o = bh_tmalloc(sizeof(float) * qn * 2);
    th_rng r;
    for (uint32_t s = 0; s < 2 && st == FKV_OK; s++)
        for (uint32_t l = 0; l < cfg->n_layers && st == FKV_OK; l++) {
            th_seed(&r, 1 + s * 100 + l);
            th_fill_normal(&r, k, kv * prompts[s], 1.0f);
            th_fill_normal(&r, v, kv * prompts[s], 1.0f);
            th_fill_normal(&r, q, qn, 1.0f);
            fkv_tensor tk = {k, NULL, 0}, tv = {v, NULL, 0}, tq = {q, NULL, 0};
            st = fkv_prefill(ctx, s, l, prompts[s], &tk, &tv, &tq);
        }
    for (uint32_t step = 0; step < steps && st == FKV_OK; step++)
        for (uint32_t l = 0; l < cfg->n_layers && st == FKV_OK; l++) {
            th_seed(&r, 100000 + step * 100 + l);
            th_fill_normal(&r, q, 2 * qn, 1.0f);
            th_fill_normal(&r, k, 2 * kv, 1.0f);
            th_fill_normal(&r, v, 2 * kv, 1.0f);
            fkv_tensor tq = {q, NULL, 0}, tk = {k, NULL, 0}, tv = {v, NULL, 0}, to = {o, NULL, 0};
            st = fkv_decode_layer(ctx, l, 2, seqs, &tq, &tk, &tv, &to);
            if (st == FKV_OK)
                memcpy(out + ((size_t)step * cfg->n_layers + l) * 2 * qn, o, sizeof(float) * 2 * qn);
        }
    if (st == FKV_OK)
        st = fkv_context_sync(ctx);
    fkv_context_destroy(ctx);
    fkv_device_close(d);
    return st;
}

void bh_pipeline_config(fkv_config *cfg) {
    fkv_config_init(cfg);
    cfg->n_layers = 2;
    cfg->n_q_heads = 8;
    cfg->n_kv_heads = 2;
    cfg->head_dim = 64;
    cfg->page_size = 16;
    cfg->budget_tokens = 128;
    cfg->sink_tokens = 32;
    cfg->window_tokens = 32;
    cfg->max_seqs = 2;
    cfg->max_context = 512;
}

void bh_check_pipeline(const char *const *modes, int n_modes) {
    bh_need_device();
    char idx[16];
    snprintf(idx, sizeof idx, "%u", bh_index);
    static const fkv_policy policies[] = {FKV_POLICY_FREEKV, FKV_POLICY_SYNC, FKV_POLICY_DENSE};
    for (int pi = 0; pi < 3; pi++)
        for (int mi = 0; mi < n_modes; mi++) {
            if (pi == 2 && mi > 0)
                continue; /* dense recalls nothing */
            fkv_config cfg;
            bh_pipeline_config(&cfg);
            cfg.dtype = mi % 2 ? FKV_F16 : FKV_BF16;
            cfg.policy = policies[pi];
            uint32_t steps = 6;
            size_t n = (size_t)steps * cfg.n_layers * 2 * cfg.n_q_heads * cfg.head_dim;
            float *a = bh_tmalloc(n * sizeof(float)), *b = bh_tmalloc(n * sizeof(float));
            setenv(cur->recall_env, modes[mi], 1);
            fkv_status st = run_pipeline(cur->name, idx, &cfg, steps, a);
            cr_assert_eq(st, FKV_OK, "%s %s/%s: %s", cur->name, fkv_policy_name(cfg.policy), modes[mi],
                         fkv_last_error());
            cr_assert_eq(run_pipeline("cpu", NULL, &cfg, steps, b), FKV_OK, "cpu: %s",
                         fkv_last_error());
            double rel = th_rel_l2(a, b, n);
            cr_assert_lt(rel, 1e-4, "policy %s, recall %s: relative L2 %g",
                         fkv_policy_name(cfg.policy), modes[mi], rel);
        }
}
void bh_check_large_group(void) {
    bh_need_device();
    char idx[16];
    snprintf(idx, sizeof idx, "%u", bh_index);
    fkv_config cfg;
    fkv_config_init(&cfg);
    cfg.n_layers = 1;
    cfg.n_q_heads = 64;
    cfg.n_kv_heads = 1;
    cfg.head_dim = 256;
    cfg.page_size = 16;
    cfg.budget_tokens = 96;
    cfg.sink_tokens = 16;
    cfg.window_tokens = 32;
    cfg.dtype = FKV_F16;
    cfg.max_seqs = 2;
    cfg.max_context = 512;
    uint32_t steps = 3;
    size_t n = (size_t)steps * cfg.n_layers * 2 * cfg.n_q_heads * cfg.head_dim;
    float *a = bh_tmalloc(n * sizeof(float)), *b = bh_tmalloc(n * sizeof(float));
    fkv_status st = run_pipeline(cur->name, idx, &cfg, steps, a);
    cr_assert_eq(st, FKV_OK, "%s, group 64 x head_dim 256: %s", cur->name, fkv_last_error());
    cr_assert_eq(run_pipeline("cpu", NULL, &cfg, steps, b), FKV_OK, "cpu: %s", fkv_last_error());
    double rel = th_rel_l2(a, b, n);
    cr_assert_lt(rel, 1e-4, "group 64 x head_dim 256: relative L2 %g", rel);

    /* Too little shared memory for even one query head: refused at creation. */
    fkv_device *d = NULL;
    fkv_context *ctx = NULL;
    cr_assert_eq(fkv_device_open(cur->name, idx, &d), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(cf_limit_shared(&(cf_dev){.dev = d}, 1024, NULL), FKV_OK, "%s", fkv_last_error());
    st = fkv_context_create(d, &cfg, &ctx);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", fkv_last_error());
    fkv_device_close(d);
    cr_assert_eq(st, FKV_ERR_UNSUPPORTED, "%s with 1 KiB of shared memory: %d (%s)", cur->name,
                 st, msg);
    cr_assert_null(ctx);
    cr_assert(strstr(msg, "creating the context") && strstr(msg, "bytes of shared memory"),
              "the message names the limit: %s", msg);
}
