/* freekv-conformance: every op of the device interface and the whole decode pipeline of one
 * device under test (DUT) against the CPU reference backend (the oracle).
 *
 * A case is one op (or one policy of the pipeline) at one geometry. Each case runs once on the
 * reference and twice on the DUT: the first DUT run is compared with the reference (relative
 * L2 error against the tolerance table, guard bytes, NaN/Inf), the second with the first
 * (bitwise determinism). Ops are called through the dispatch layer (backends/dispatch.h), as
 * the core calls them; the pipeline through the public API. */
#ifndef FKV_CONFORMANCE_H
#define FKV_CONFORMANCE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backends/dispatch.h"
#include "freekv.h"

/* Output buffers sit between guard bytes that must survive every op; the guard length and the
 * input offsets are multiples of 4 (the interface's alignment for f32/int32 data) but not of
 * 8 or 16, so a backend that assumes more alignment than documented shows up. */
#define CF_GUARD 132
#define CF_IN_OFF 36
#define CF_FILL 0xA5 /* initial byte of outputs and guards (a finite value in every dtype) */

#define CF_MSG 640

typedef enum cf_status { CF_PASS = 0, CF_FAIL, CF_SKIP, CF_KNOWN, CF_XPASS, CF_N_STATUS } cf_status;
const char *cf_status_name(cf_status s);

/* Head dim, GQA group, page size and storage dtype of one case. KV heads: n_kv_heads when
 * set, else 3 when the group is 1 (an odd head count) and 2 otherwise. */
typedef struct cf_geom {
    uint32_t head_dim, group, page_size;
    fkv_dtype dtype;
    uint32_t n_kv_heads; /* 0: the rule above */
} cf_geom;

static inline uint32_t cf_kv_heads(const cf_geom *g) {
    return g->n_kv_heads ? g->n_kv_heads : g->group == 1 ? 3u : 2u;
}

/* One side of a comparison: a device opened through the dispatch layer, which every op call
 * goes through (fkv_op_*, backends/dispatch.h). */
typedef struct cf_dev {
    fkv_device *dev;
    fkv_device_info info;
} cf_dev;

typedef struct cf_env {
    cf_dev ref;  /* the CPU reference */
    cf_dev dut;  /* the device under test */
    int quick;
    /* Also hold every compared element to the tolerance table's strict bound (the rounding
     * and accumulation of the reference: what the CI devices meet). */
    int strict;
    int determinism;        /* run the DUT a second time and compare the two runs */
    int index_errors_fail;  /* out_of_range: the DUT must fail the event (the CPU reference),
                               not only skip the bad index */
} cf_env;

typedef struct cf_result {
    cf_status status;
    double error;     /* worst error metric (relative L2 unless the message says otherwise); <0: none */
    double tolerance; /* its bound; <0: none */
    int deterministic; /* 1 yes, 0 no (message in nondet), -1 not checked */
    double ms;
    char message[CF_MSG]; /* why it failed or was skipped; notes for a pass */
    char nondet[256];     /* what differed between the two DUT runs */
    char known[256];      /* reason from the known-failures file */
} cf_result;

typedef struct cf_case cf_case;
typedef void (*cf_run_fn)(const cf_env *env, const cf_case *c, cf_result *r);

struct cf_case {
    char name[96];   /* e.g. "attention/d128/g4/p32/bf16", "pipeline/freekv/d64/g1/p16/f32" */
    const char *op;  /* summary group and row of the tolerance table */
    const char *spec; /* op cases: the spec id (CF_SPECS), the Criterion test that runs it */
    cf_run_fn run;
    cf_geom g;
    int has_geom;
    fkv_policy policy; /* pipeline cases */
    int recall;        /* pipeline cases: fkv_recall_mode forced on the DUT, -1 its own */
    fkv_host_format host_format; /* pipeline cases: the host pool's format */
    fkv_summary_format summary_format; /* pipeline cases: the config's page summaries */
    int splits;        /* forced through cf_force_splits first; -1: left alone */
    size_t shared;     /* forced through cf_limit_shared first; 0: left alone */
};

/* ---- results ---- */
void cf_fail(cf_result *r, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void cf_skip(cf_result *r, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Records err against tol under `what` (keeps the worst ratio); fails when err > tol or err
 * is not a number. */
void cf_check_error(cf_result *r, double err, double tol, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
void cf_nondet(cf_result *r, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- tolerances (tolerances.c: the one table) ---- */
double cf_tolerance(const char *op, fkv_dtype dtype);
/* The strict bound of cf_env.strict: |dut - ref| <= bound * (1 + |ref|) per element; 0:
 * identical bytes. */
double cf_tolerance_strict(const char *op, fkv_dtype dtype);
void cf_tolerance_markdown(FILE *f);
void cf_tolerance_json(FILE *f);

/* ---- deterministic random data ---- */
typedef struct cf_rng {
    uint64_t s;
} cf_rng;
void cf_seed(cf_rng *r, const char *name, uint64_t salt);
uint32_t cf_u32(cf_rng *r);
uint32_t cf_below(cf_rng *r, uint32_t n); /* [0, n) */
float cf_uniform(cf_rng *r);              /* [0, 1) */
float cf_normal(cf_rng *r);
/* n values: mostly N(0,1), some large and some tiny (f16 subnormal range). */
void cf_fill_values(cf_rng *r, float *x, size_t n);
/* k distinct values of [0, n) in random order. */
void cf_pick_distinct(cf_rng *r, uint32_t n, uint32_t k, uint32_t *out);

/* ---- helpers ---- */
/* The message of a failed library call that returned st ("status: details"). */
const char *cf_error_text(fkv_status st);
/* Whether the DUT's run of a case, which ended with st at `where`, ran: FKV_ERR_UNSUPPORTED
 * is a skip (the device lacks a feature), any other error a failure, both recorded in r. */
int cf_dut_ran(cf_result *r, fkv_status st, const char *where);
double cf_now_ms(void);
void *cf_alloc(size_t size); /* zeroed; NULL only when out of memory */
/* Relative L2 of a against b; ||a-b|| when ||b|| is 0. */
double cf_rel_l2(const float *a, const float *b, size_t n);
/* Index of the first non-finite value, or -1. */
long cf_first_nonfinite(const float *x, size_t n);
void cf_geom_name(const cf_geom *g, int with_dtype, int with_page, char *buf, size_t size);
/* The (head dim, group, page size) triples of a mode; *n receives their count. */
const uint32_t (*cf_geometries(int quick, size_t *n))[3];

/* ---- op specs: one description of each op's contract (spec.c runs them, ops.c describes the
 * data ops, contract.c the calls that are not data: device, refusals, zero work, indices out
 * of range, threads). freekv-conformance runs them against the CPU reference; the Criterion
 * suites run the same specs per backend (tests/backend_harness.h), and the CPU reference's
 * own suite checks the reference on their inputs against naive C (tests/test_cpu_ops.c).
 * X(S, id, op, splits, shared): the spec id (a case name starts "<op>/", and the Criterion
 * test of id `id` runs every case of that id), its op (the tolerance table's row), and the
 * knobs it sets first (splits -1 and shared 0: none). A new op or edge case is one line here
 * and its description in ops.c or contract.c. ---- */
#define CF_SPECS(X, S)                                                                          \
    X(S, device, device, -1, 0)                                                                \
    X(S, public_api, public_api, -1, 0)                                                        \
    X(S, copies, copies, -1, 0)                                                                \
    X(S, host_memory, host_memory, -1, 0)                                                      \
    X(S, event_chain, event_chain, -1, 0)                                                      \
    X(S, events, events, -1, 0)                                                                \
    X(S, write_regions, write_regions, -1, 0)                                                  \
    X(S, buffer_import, buffer_import, -1, 0)                                                  \
    X(S, append, append, -1, 0)                                                                \
    X(S, summarize, summarize, -1, 0)                                                          \
    X(S, scores, scores, -1, 0)                                                                \
    X(S, summarize_f16, summarize_f16, -1, 0)                                                  \
    X(S, scores_f16, scores_f16, -1, 0)                                                        \
    X(S, scores_edges, scores_edges, -1, 0)                                                    \
    X(S, cosine_flags, cosine_flags, -1, 0)                                                    \
    X(S, cosine_nan, cosine_nan, -1, 0)                                                        \
    X(S, scores_check, scores_check, -1, 0)                                                    \
    X(S, pack_hnd, pack_hnd, -1, 0)                                                            \
    X(S, scatter_hnd, scatter_hnd, -1, 0)                                                      \
    X(S, recall_direct, recall_direct, -1, 0)                                                  \
    X(S, quantize_q8, quantize, -1, 0)                                                         \
    X(S, quantize_q4, quantize, -1, 0)                                                         \
    X(S, dequantize_q8, dequantize, -1, 0)                                                     \
    X(S, dequantize_q4, dequantize, -1, 0)                                                     \
    X(S, dequantize_direct_q8, dequantize_direct, -1, 0)                                       \
    X(S, dequantize_direct_q4, dequantize_direct, -1, 0)                                       \
    X(S, attention, attention, -1, 0)                                                          \
    X(S, attention_dense, attention_dense, -1, 0)                                              \
    X(S, select_pages, select_pages, -1, 0)                                                    \
    X(S, zero_work, zero_work, -1, 0)                                                          \
    X(S, bad_arguments, bad_arguments, -1, 0)                                                  \
    X(S, out_of_range, out_of_range, -1, 0)                                                    \
    X(S, two_queues, two_queues, -1, 0)
/* Variants that set a backend option first (docs/backend-options.md): split-page attention
 * forced ("attention_splits"), and shared memory short enough ("shared_memory_bytes") that the
 * kernels run the group in several work groups (CF_SMALL_SHARED leaves attention one or two
 * query heads and tiles of one or two tokens, and scores blocks of uneven sizes (3, 3, 2 of 8
 * at d 128); CF_MID_SHARED leaves attention blocks of uneven sizes with tiles of 8 tokens or
 * more). A device without the option skips them. */
#define CF_SMALL_SHARED 1564
#define CF_MID_SHARED 6144
#define CF_SPEC_VARIANTS(X, S)                                                                  \
    X(S, scores_small_shared, scores, -1, CF_SMALL_SHARED)                                     \
    X(S, scores_check_small_shared, scores_check, -1, CF_SMALL_SHARED)                         \
    X(S, attention_unsplit, attention, 1, 0)                                                   \
    X(S, attention_split, attention, 3, 0)                                                     \
    X(S, attention_small_shared, attention, 3, CF_SMALL_SHARED)                                \
    X(S, attention_small_shared_unsplit, attention, 1, CF_SMALL_SHARED)                        \
    X(S, attention_mid_shared, attention, 1, CF_MID_SHARED)                                    \
    X(S, attention_dense_unsplit, attention_dense, 1, 0)                                       \
    X(S, attention_dense_split, attention_dense, 4, 0)                                         \
    X(S, attention_dense_small_shared, attention_dense, 2, CF_SMALL_SHARED)                    \
    X(S, two_queues_split, two_queues, 2, 0)

/* The knobs, the one place the specs set a backend option (fkv_op_set_option): FKV_OK done,
 * FKV_ERR_UNSUPPORTED the device has no such option, any other status a refusal (fkv_last_error
 * says why). With r, cf_limit_shared also checks that `bytes` splits the largest group of the
 * case geometries (8 x d 128) into several work groups (and for scores too at
 * CF_SMALL_SHARED), failing r otherwise. */
fkv_status cf_force_splits(const cf_dev *d, int splits);
fkv_status cf_limit_shared(const cf_dev *d, size_t bytes, cf_result *r);

/* ---- case lists ---- */
/* Sets of geometries: QUICK and FULL are freekv-conformance's (--quick and the default);
 * UNIT the Criterion suites' (the shapes the kernels branch on: head dim 5 with page 3, one KV
 * head, group 12); CPU the extra shapes the reference is checked on against naive C. */
enum { CF_SET_QUICK = 1, CF_SET_FULL = 2, CF_SET_UNIT = 4, CF_SET_CPU = 8 };
typedef struct cf_case_opts {
    unsigned sets; /* CF_SET_* bits: a geometry of any of them */
    int knobs;     /* also the CF_SPEC_VARIANTS cases (they set backend options) */
} cf_case_opts;
size_t cf_op_cases(const cf_case_opts *o, cf_case *out, size_t cap);
size_t cf_pipeline_cases(int quick, cf_case *out, size_t cap);

/* ---- data specs (spec.c): arrays, and the calls that run on them in order ---- */
#define CF_MAX_ARRS 24
#define CF_MAX_CALLS 64
#define CF_MAX_UNITS 32
#define CF_MAX_REGIONS 256

typedef enum cf_elem { CF_BYTES, CF_F32, CF_I32, CF_STORE } cf_elem;
typedef enum cf_mem { CF_DEVICE = 0, CF_HOST, CF_PINNED } cf_mem; /* PINNED: host_alloc */

typedef struct cf_arr {
    const char *label;
    size_t size;         /* bytes, guards included */
    unsigned char *init; /* contents before the calls */
    cf_mem mem;
    int output;
    size_t pay_off, pay_size; /* the output region; bytes outside it are guards */
    cf_elem elem;
    int custom; /* payload compared by the spec's compare hook only */
    uint32_t shape[3]; /* payload shape, for naming an element in messages (0: unknown) */
    const char *dims[3];
} cf_arr;

typedef enum cf_kind {
    CF_WRITE, CF_READ, CF_COPY, CF_MARKER, CF_WRITE_REGIONS, CF_APPEND, CF_SUMMARIZE, CF_SCORES,
    CF_COSINE, CF_PACK, CF_SCATTER, CF_RECALL, CF_ATTENTION, CF_DENSE, CF_SELECT,
    CF_SCORES_CHECK
} cf_kind;

typedef struct cf_ref {
    int arr; /* index into cf_spec.arr; -1: NULL */
    size_t off;
} cf_ref;

/* One enqueue. Buffers b[] in the op's parameter order (backend.h), one cf_ref each, offsets
 * only where the op takes one:
 *   WRITE dst, src (host)   READ src, dst (host)   COPY dst, src        (size bytes)
 *   WRITE_REGIONS dst; regions[first, first + n) of cf_spec
 *   APPEND k_src, v_src, rows, kpool, vpool       SUMMARIZE kpool, pages, summaries
 *   SCORES q, desc, summaries, out, mask (b[4], optional)
 *   COSINE q_cur, q_prev, sims, flags, prev_rows (b[4]) (x: tau)
 *   PACK kpool, vpool, gslots, dst                SCATTER src, units, kpool, vpool
 *   RECALL hosts (pinned) at b[0], b[4], b[5] (size of them), units, kpool, vpool; unit
 *          sources units_src[first, first + n) (host: 0, 1, 2 = b[0], b[4], b[5])
 *   ATTENTION q, heads, entries, kpool, vpool, out (x: scale)
 *   DENSE q, k, v, out (x: scale)
 *   SELECT desc, scores, out, mask (b[3], optional) (n sequences; first: first page, size:
 *          k, x: temp_scale, reduce: fkv_group_reduce)
 *   SCORES_CHECK q, desc, summaries, out (as SCORES, no mask), prev_rows (b[4]), sims,
 *          flags, q_cur (b[7]: the array of q; its offset is cur_off) (x: tau)
 * By default the host waits for each command before the next; a detached one is ordered only
 * by the events it waits on (wait[], indices of earlier calls), and everything is waited for
 * at the end. */
typedef struct cf_call {
    cf_kind kind;
    fkv_queue q;
    cf_ref b[8];
    uint32_t n;
    float x;
    size_t size;
    uint32_t first;
    int reduce; /* SELECT: fkv_group_reduce */
    int wait[2];  /* earlier calls whose events it waits on; -1: none */
    int detached;
    int no_event; /* enqueued with no done event: nothing can wait on it but finish */
} cf_call;

typedef struct cf_region {
    int arr; /* a host or pinned array */
    size_t src_off, dst_off, size;
} cf_region;

typedef struct cf_spec cf_spec;
struct cf_spec {
    fkv_kv_geom g;
    cf_arr arr[CF_MAX_ARRS];
    uint32_t n_arr;
    int full; /* an array or call did not fit: cf_spec_ok fails */
    cf_arr spare; /* what cf_add_arr hands out then */
    cf_call call[CF_MAX_CALLS];
    uint32_t n_call;
    fkv_direct_src units_src[CF_MAX_UNITS]; /* recall_direct: (host, byte offset) per unit */
    uint32_t n_units_src;
    cf_region region[CF_MAX_REGIONS];
    uint32_t n_region;
    /* Checks beyond the per-array comparison (custom arrays, ties, absolute rules). */
    void (*compare)(const cf_spec *s, unsigned char **ref, unsigned char **dut, double tol,
                    cf_result *r);
    int uses_fallback; /* the DUT lacks the optional entry: its generic fallback runs */
};

/* Builds the data spec of an op case (a calloc'd *out, cf_spec_free it): 1 built, 0 the case
 * is not a data spec or cannot run on env's DUT (r says why when it is a skip), -1 out of
 * host memory. */
int cf_spec_build(const cf_env *env, const cf_case *c, cf_spec **out, cf_result *r);
void cf_spec_free(cf_spec *s);
/* Runs every call of s on d; out[i] receives a malloc'd copy of every output array (the
 * caller frees them). On error, *where names the step ("setup", "call 3 (attention)",
 * "read-back") and fkv_last_error() the cause. */
fkv_status cf_spec_execute(const cf_dev *d, const cf_spec *s, unsigned char **out,
                           const char **where);
const char *cf_kind_name(cf_kind k);
/* Runs one op case: data specs against env->ref, the others by their own checks. */
void cf_run_op_case(const cf_env *env, const cf_case *c, cf_result *r);
/* The checks of an op that is not a data spec (contract.c), NULL for a data spec. */
cf_run_fn cf_contract_check(const char *op);

/* For spec authors (ops.c, contract.c): arrays start filled with CF_FILL; an input's data
 * starts `off` bytes into its array; an output's payload sits between `lead` and `trail`
 * guard bytes. */
cf_arr *cf_add_arr(cf_spec *s, const char *label, size_t size);
void *cf_add_input(cf_spec *s, const char *label, size_t off, size_t bytes);
cf_arr *cf_add_output(cf_spec *s, const char *label, size_t lead, size_t bytes, size_t trail,
                      cf_elem elem);
void cf_set_shape(cf_arr *a, uint32_t n0, const char *d0, uint32_t n1, const char *d1,
                  uint32_t n2, const char *d2);
/* A call with every buffer NULL and no waits; NULL when the spec is full. */
cf_call *cf_add_call(cf_spec *s, cf_kind kind, fkv_queue q);
int cf_spec_ok(const cf_spec *s); /* every array was allocated */
int32_t cf_i32_at(const unsigned char *p, size_t i);
float cf_f32_at(const unsigned char *p, size_t i);
/* A fresh result: PASS, nothing measured. */
void cf_result_init(cf_result *r);
/* Self-tests of the runner (selftest.c): a copy of the DUT's ops table with one entry wrapped
 * to misbehave in a known way. kind:
 *   "attention"  query head 1 gets head 0's output: must fail
 *   "guard"      attention writes 4 bytes past its output: must fail
 *   "scores"     scores with the wrong sign: must fail
 *   "ties"       scores nudged within tolerance, so exact ties break the other way: must pass,
 *                reporting the ties
 *   "nondet"     attention output moved by 1-7 ulps by a call counter: must pass, reporting
 *                nondeterminism
 * NULL for an unknown kind. */
const fkv_backend_ops *cf_broken_ops(const fkv_backend_ops *ops, const char *kind);
extern const char *const cf_selftest_kinds;

/* ---- known failures (known.c) ---- */
typedef struct cf_known cf_known;
/* Reads <dir>/<backend>.txt; a missing file is an empty list. Errors go to msg. */
int cf_known_load(const char *dir, const char *backend, cf_known **out, char *msg, size_t size);
/* The reason of the first entry matching (device "backend:name", case), or NULL. */
const char *cf_known_match(const cf_known *k, const char *device, const char *case_name);
const char *cf_known_path(const cf_known *k);
size_t cf_known_count(const cf_known *k);
void cf_known_free(cf_known *k);

/* ---- reports (report.c) ---- */
typedef struct cf_run_info {
    const char *mode;     /* "quick" or "full" */
    const char *command;  /* the command line */
    const char *date;     /* UTC, ISO 8601 */
    const char *host;     /* OS and machine */
    const char *known_file;
    const char *self_test; /* NULL, or the self-test kind */
} cf_run_info;

/* The run as a whole: every required backend, every device tried and every case that did not
 * pass plainly, across devices (<report-dir>/conformance-run.json and .md). */
typedef struct cf_required {
    char backend[16];
    unsigned devices;  /* devices of this backend that were tested */
    char problem[200]; /* why it has none, "" when it has */
} cf_required;

typedef struct cf_device_run {
    fkv_device_info info;
    unsigned count[CF_N_STATUS];
    unsigned nondet;
    char error[CF_MSG]; /* why the device could not be (fully) tested, "" otherwise */
    double seconds;
} cf_device_run;

typedef struct cf_note {
    size_t device; /* index into the cf_device_run array */
    cf_status status;
    char case_name[96];
    char message[CF_MSG];
} cf_note;

typedef struct cf_run_totals {
    unsigned passed, failed, skipped, known, xpass;
} cf_run_totals;

/* Cases summed over devices; a device that could not be tested and a required backend without
 * a device each count as one failure. */
cf_run_totals cf_run_tally(const cf_required *req, size_t n_req, const cf_device_run *devs,
                           size_t n_devs);
/* The run fails when a case or device failed, a required backend has no device, or no case
 * passed at all (every case skipped: nothing was tested). */
int cf_run_failed(cf_run_totals t);
int cf_run_report_write(const char *dir, const cf_run_info *run, const cf_required *req,
                        size_t n_req, const cf_device_run *devs, size_t n_devs,
                        const cf_note *notes, size_t n_notes, char *paths, size_t paths_size);

int cf_report_write(const char *dir, const cf_run_info *run, const fkv_device_info *info,
                    const cf_case *cases, const cf_result *results, size_t n, double seconds,
                    char *paths, size_t paths_size);
void cf_summary_print(FILE *f, const fkv_device_info *info, const cf_case *cases,
                      const cf_result *results, size_t n, double seconds);

#endif
