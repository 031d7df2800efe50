/* freekv-conformance: every op of the device interface and the whole decode pipeline of one
 * device under test (DUT) against the CPU reference backend (the oracle).
 *
 * A case is one op (or one policy of the pipeline) at one geometry. Each case runs once on the
 * reference and twice on the DUT: the first DUT run is compared with the reference (relative
 * L2 error against the tolerance table, guard bytes, NaN/Inf), the second with the first
 * (bitwise determinism). Ops are called through the ops table directly; the pipeline through
 * the public API. */
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

/* Head dim, GQA group, page size and storage dtype of one case. KV heads: 3 when the group is
 * 1 (an odd head count), else 2. */
typedef struct cf_geom {
    uint32_t head_dim, group, page_size;
    fkv_dtype dtype;
} cf_geom;

static inline uint32_t cf_kv_heads(const cf_geom *g) { return g->group == 1 ? 3u : 2u; }

/* One side of a comparison: an opened device, its ops table and backend handle. */
typedef struct cf_dev {
    fkv_device *dev;
    const fkv_backend_ops *ops;
    fkv_bdev *bd;
    fkv_device_info info;
} cf_dev;

typedef struct cf_env {
    cf_dev ref;  /* the CPU reference */
    cf_dev dut;  /* the device under test */
    int quick;
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
    cf_run_fn run;
    cf_geom g;
    int has_geom;
    fkv_policy policy; /* pipeline cases */
    int recall;        /* pipeline cases: fkv_recall_mode forced on the DUT, -1 its own */
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
double cf_now_ms(void);
void *cf_alloc(size_t size); /* zeroed; NULL only when out of memory */
/* Relative L2 of a against b; ||a-b|| when ||b|| is 0. */
double cf_rel_l2(const float *a, const float *b, size_t n);
/* Index of the first non-finite value, or -1. */
long cf_first_nonfinite(const float *x, size_t n);
void cf_geom_name(const cf_geom *g, int with_dtype, int with_page, char *buf, size_t size);
/* The (head dim, group, page size) triples of a mode; *n receives their count. */
const uint32_t (*cf_geometries(int quick, size_t *n))[3];

/* ---- case lists ---- */
size_t cf_op_cases(int quick, cf_case *out, size_t cap);
size_t cf_pipeline_cases(int quick, cf_case *out, size_t cap);

/* Self-tests of the runner (selftest.c): a copy of the DUT's ops table with one entry wrapped
 * to misbehave in a known way. kind:
 *   "attention"  query head 1 gets head 0's output: must fail
 *   "guard"      attention writes 4 bytes past its output: must fail
 *   "scores"     scores with the wrong sign: must fail
 *   "ties"       scores nudged within tolerance, so exact ties break the other way: must pass,
 *                reporting the ties
 *   "nondet"     attention output moved by 1-3 ulps by a call counter: must pass, reporting
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
