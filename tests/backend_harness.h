/* One GPU backend, op by op, against the CPU reference backend on the same random data: the
 * fixture, paired buffers and the checks every device backend must pass. A backend's test
 * file (tests/test_<backend>.c) describes its backend in a bh_backend, calls bh_select in its
 * suites' init and wraps the bh_check_* bodies in Criterion tests, next to its own tests.
 *
 * Side UT (0) is the backend under test, side REF (1) the CPU reference. Outputs sit between
 * guard bytes that must stay untouched. Criterion forks per test: each test opens its own
 * devices, and nothing touches a device before the fork. */
#ifndef FKV_TESTS_BACKEND_HARNESS_H
#define FKV_TESTS_BACKEND_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "backends/backend.h"
#include "helpers.h"

typedef struct bh_backend {
    const char *name;                    /* as in FREEKV_BACKEND, e.g. "opencl" */
    const fkv_backend_ops *(*ops)(void); /* the table */
    /* The device CI has (PoCL, lavapipe), taken when present; else device 0. */
    int (*is_preferred)(const fkv_device_info *info);
    const char *const *env;             /* the backend's variables, NULL-terminated */
    const char *recall_env;             /* FREEKV_<BACKEND>_RECALL */
    void (*set_splits)(fkv_bdev *, int); /* forces split-page attention (0: automatic) */
    /* Lowers the shared (local) memory the kernels plan for (0: the device's). */
    void (*set_shared)(fkv_bdev *, size_t);
    void (*before_close)(fkv_bdev *);   /* a last check of each device, or NULL */
    /* recall_direct reads host_alloc memory in every recall mode, not only in direct mode. */
    int direct_in_every_mode;
} bh_backend;

#define UT 0
#define REF 1
#define GUARD 64
#define GUARD_BYTE 0xA5
#define CQ FKV_QUEUE_COMPUTE
#define TQ FKV_QUEUE_TRANSFER
#define BQ FKV_QUEUE_BACKGROUND

extern const fkv_backend_ops *bh_ops[2];
extern fkv_bdev *bh_dev[2];
extern fkv_bbuf *bh_bufs[2][256]; /* every buffer alloc1 made, freed by bh_teardown */
extern fkv_bevent *bh_ev;         /* the event of the last enqueue through DEPS */
extern uint32_t bh_index;         /* the device under test, after bh_find_device */
/* The device under test as bh_open_devices opened it, through the dispatch layer
 * (backends/dispatch.h), which checks arguments for every backend: NULL when a test opened
 * bh_dev[UT] through the table itself. */
extern fkv_device *bh_device;
#define DEPS ((fkv_deps){0, NULL, &bh_ev})
#define O bh_ops[UT]
#define OD bh_dev[UT]

/* ---- fixture ---- */

/* The backend under test; call first in every suite init. */
void bh_select(const bh_backend *b);
/* Unsets the backend's variables and FREEKV_CPU_RECALL; caches go next to PoCL's. */
void bh_clear_env(void);
/* Finds the device under test: 0 when the backend has none. */
int bh_find_device(void);
/* Skips the test when there is no device; fails it instead when FREEKV_REQUIRE_DEVICES (a
 * comma list of backend names, set by .ci/run) names the backend under test. */
void bh_need_device(void);
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

/* ---- paired buffers: the same bytes on both sides ---- */

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

/* ---- data ---- */

float *bh_rand_f32(th_rng *r, size_t n, float scale);
void *bh_rand_stored(th_rng *r, size_t n, fkv_dtype t);
int32_t *bh_perm(th_rng *r, size_t n);
/* Two random pools of n_slots slots, the same on both sides. */
void bh_rand_pools(th_rng *r, const fkv_kv_geom *g, uint32_t n_slots, pbuf *k, pbuf *v);

/* ---- the checks: each is the body of one test ---- */

/* Table, names, enumeration, info of the opened device; *info gets the device's info for the
 * backend's own assertions. */
void bh_check_device_info(fkv_device_info *info);
void bh_check_public_api(void);
/* Copies, overlapping copies, and a chain across all three queues ordered only by events. */
void bh_check_copies_and_events(void);
void bh_check_host_memory(void);
void bh_check_append(void);
void bh_check_summarize(void);
void bh_check_scores(void);
void bh_check_cosine_flags(void);
/* A query holding a NaN or an infinity gives its KV head flag 1 on both sides (backend.h). */
void bh_check_cosine_nan(void);
void bh_check_pack_hnd(void);
void bh_check_scatter_hnd(void);
/* recall_direct from host_alloc memory, for one geometry; bh_check_recall_direct skips when
 * the device's mode does not allow it. */
void bh_check_recall_direct_geom(th_rng *r, const fkv_kv_geom *g, int odd);
void bh_check_recall_direct(void);
void bh_check_attention(int splits);
/* One head against tests/helpers' naive attention, not only against the CPU backend. */
void bh_check_attention_naive(void);
void bh_check_dense(int splits);
/* Two threads enqueueing the same kernels on two queues get the single-threaded results. */
void bh_check_two_threads(void);
/* Refused calls: queue, geometry, offsets, NULL buffers; zero work; bad indices skipped. */
void bh_check_bad_arguments(void);
/* The same device refuses an allocation above its limit with a status and a message. */
void bh_check_alloc_limits(size_t max_alloc);
/* Shared-memory limits (bytes) under which the kernels of the harness geometries run their
 * group in several work groups (backends/check.c): SMALL leaves attention one or two query
 * heads and tiles of one or two tokens, and scores blocks of uneven sizes (3, 3, 2 of 8 at
 * d 128); MID leaves attention blocks of uneven sizes with tiles of 8 tokens or more. */
#define BH_SMALL_SHARED 1564
#define BH_MID_SHARED 6144
/* Makes the device under test plan for `bytes` of shared memory (0: its own) and checks that
 * this splits the harness' largest group (8 x d 128) into several work groups (for scores
 * too at BH_SMALL_SHARED). */
void bh_set_shared(size_t bytes);
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
