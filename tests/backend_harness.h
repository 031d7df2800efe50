/* One device backend against the CPU reference in Criterion: the fixture, the op specs of
 * conformance/ (every op, edge case and tolerance written once there) run per backend, and
 * the few helpers the backends' own tests share. A backend's test file
 * (tests/test_<backend>.c) describes its backend in a bh_backend, calls bh_select in its
 * suites' init, defines the spec tests with BH_SPEC_TESTS(suite), and adds its own tests
 * (environment variables, recall modes, options, binding limits). Both sides are opened
 * through the dispatch layer (backends/dispatch.h), which checks every call's arguments for
 * every backend: a test that calls a table entry directly (O, bh_ops) passes only arguments
 * the dispatch layer would accept, and sends refused arguments and zero work through
 * fkv_op_* (ODEV, bh_device).
 *
 * Side UT (0) is the backend under test, side REF (1) the CPU reference. Criterion forks per
 * test: each test opens its own devices, and nothing touches a device before the fork. */
#ifndef FKV_TESTS_BACKEND_HARNESS_H
#define FKV_TESTS_BACKEND_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "backends/dispatch.h"
#include "conformance.h"
#include "helpers.h"

typedef struct bh_backend {
    const char *name;                    /* as in FREEKV_BACKEND, e.g. "opencl" */
    const fkv_backend_ops *(*ops)(void); /* the table */
    /* The device CI has (PoCL, lavapipe), taken when present; else device 0. */
    int (*is_preferred)(const fkv_device_info *info);
    const char *const *env;             /* the backend's variables, NULL-terminated */
    const char *recall_env;             /* FREEKV_<BACKEND>_RECALL */
    void (*before_close)(fkv_device *); /* a last check of each device, or NULL */
} bh_backend;

#define UT 0
#define REF 1
#define GUARD 64
#define GUARD_BYTE 0xA5
#define CQ FKV_QUEUE_COMPUTE
#define TQ FKV_QUEUE_TRANSFER
#define BQ FKV_QUEUE_BACKGROUND

extern const fkv_backend_ops *bh_ops[2];
extern fkv_device *bh_device[2];  /* each side as the dispatch layer opened it */
extern fkv_bdev *bh_dev[2];       /* its backend device: fkv_device_bdev(bh_device[s]) */
extern fkv_bbuf *bh_bufs[2][256]; /* every buffer alloc1 made, freed by bh_teardown */
extern fkv_bevent *bh_ev;         /* the event of the last enqueue through DEPS */
extern uint32_t bh_index;         /* the device under test, after bh_find_device */
#define DEPS ((fkv_deps){0, NULL, &bh_ev})
#define O bh_ops[UT]
#define OD bh_dev[UT]
#define ODEV bh_device[UT]

/* ---- fixture ---- */

/* The backend under test; call first in every suite init. */
void bh_select(const bh_backend *b);
/* Unsets the backend's variables and the CPU reference's FREEKV_CPU_RECALL, FREEKV_CPU_ISA and
 * FREEKV_CPU_THREADS; caches go next to PoCL's. */
void bh_clear_env(void);
/* Finds the device under test: 0 when the backend has none. */
int bh_find_device(void);
/* Skips the test when there is no device; fails it instead when FREEKV_REQUIRE_DEVICES (a
 * comma list of backend names, set by .ci/run) names the backend under test. */
void bh_need_device(void);
/* Opens the device under test through the dispatch layer (fkv_device_open_ops) with the
 * environment as it is, without asserting: the status of the open. */
fkv_status bh_try_open(void);
/* Opens both sides with the environment as it is. */
void bh_open_devices(void);
/* bh_clear_env, then both sides. */
void bh_open_both(void);
void bh_open_ref(void);
/* Finishes every queue, frees every buffer, closes both sides and frees bh_tmalloc memory. */
void bh_teardown(void);

void *bh_tmalloc(size_t size);
/* Waits for bh_ev of a successful enqueue on side s. */
void bh_done_ok(int s, fkv_status st, const char *what);
/* Runs `call` (which uses s) on both sides. */
#define RUN2(call)              \
    for (int s = 0; s < 2; s++) \
    bh_done_ok(s, (call), #call)
#define RUN1(call) bh_done_ok(UT, (call), #call)
/* `call` fails with `status`, a message, and no event. */
#define REFUSED(call, status)                                                              \
    do {                                                                                   \
        bh_ev = (fkv_bevent *)(uintptr_t)1; /* must come back NULL */                      \
        fkv_status st_ = (call);                                                           \
        cr_assert_eq(st_, status, "%s: got %d (%s)", #call, st_, fkv_last_error());        \
        cr_assert_null(bh_ev, "%s: event set on error", #call);                            \
        cr_assert(fkv_last_error()[0] != '\0', "%s: no message", #call);                   \
    } while (0)

/* ---- the op specs (conformance/conformance.h) on the device under test ---- */

/* Runs every case of spec `id` at the unit geometries on both opened sides, in strict mode
 * (the reference's rounding and accumulation), knob variants included; each failing case is
 * reported by name. Skips when every case skipped (e.g. an optional entry the device lacks). */
void bh_spec(const char *id);
/* Runs the one unit case named `name`, e.g. "recall_direct/d64/g1/h2/p16/bf16". */
void bh_spec_case(const char *name);
/* The Criterion test of spec `id` in `suite`; BH_SPEC_TESTS: one per spec, CF_SPECS and the
 * knob variants. */
#define BH_SPEC(suite, id) \
    Test(suite, id) { bh_spec(#id); }
#define BH_SPEC_TEST(suite, id, op, splits, shared) BH_SPEC(suite, id)
#define BH_SPEC_TESTS(suite)               \
    CF_SPECS(BH_SPEC_TEST, suite)          \
    CF_SPEC_VARIANTS(BH_SPEC_TEST, suite)

/* ---- helpers of the backends' own tests: paired buffers, the same bytes on both sides ---- */

typedef struct pbuf {
    fkv_bbuf *b[2];
    size_t size;
} pbuf;
#define B(p, s) ((p).b[s])

fkv_bbuf *bh_alloc1(int s, size_t size);
void bh_write1(int s, fkv_bbuf *b, size_t off, const void *src, size_t size);
void bh_read1(int s, const fkv_bbuf *b, size_t off, void *dst, size_t size);
/* `size` bytes of src (NULL: guard bytes) at offset `off`, guard bytes around. */
pbuf bh_pnew(const void *src, size_t off, size_t size);
unsigned char *bh_pb_read(const pbuf *p, int s);
/* Both sides hold the same bytes (guards included). */
void bh_same_bytes(const pbuf *p, const char *what);
/* Floats [off, off+n*4) agree within tol (scaled by 1 + |ref|); the guards are untouched. */
void bh_same_floats(const pbuf *p, size_t off, size_t n, double tol, const char *what);
float *bh_rand_f32(th_rng *r, size_t n, float scale);
void *bh_rand_stored(th_rng *r, size_t n, fkv_dtype t);

/* ---- what every device backend of freekv provides beyond the contract ---- */

/* The table has every optional entry but write_regions, and the opened device stores f16
 * and bf16; *info gets the device's info for the backend's own assertions. */
void bh_check_device_info(fkv_device_info *info);
/* The same device refuses an allocation above its limit with a status and a message. */
void bh_check_alloc_limits(size_t max_alloc);
/* The geometry of issue #12 (group 64 x head_dim 256, 66 KiB of queries alone) through the
 * whole pipeline, against the CPU reference: it must run (the kernels split the group where
 * shared memory is short). A device that cannot run a geometry at all is refused at
 * fkv_context_create with a message naming the limit, before any prefill. */
void bh_check_large_group(void);
/* The small geometry of the pipeline checks: 2 layers, 8/2 heads, d 64, p 16, budget 128
 * (sink 32, window 32), 2 sequences of up to 512 tokens; default policy and dtype. */
void bh_pipeline_config(fkv_config *cfg);
/* The whole decode pipeline (freekv, sync, dense) against the CPU reference, with each of
 * the recall modes (values of bh_backend.recall_env). */
void bh_check_pipeline(const char *const *modes, int n_modes);

#endif
