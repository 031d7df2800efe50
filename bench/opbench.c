/* freekv-opbench: device op throughput for one backend/device.
 *
 * (1) Recall of random (page, KV head) units of a Llama-3.1-8B-shaped layer (8 KV heads,
 *     bf16, p=32, d=128: 16 KiB per unit) out of a pinned host pool, per mechanism:
 *       perpage  one write per unit into device staging, then one scatter kernel
 *       engine:* the core's recall engine (core/recall.h) in perpage, staged, direct mode
 *       pack     the offload's pack_hnd of as many pages from the slots into staging
 *     With --host-format q8|q4 the units are quantized (docs/pipeline.md, "Host formats"):
 *     the recalls dequantize and the pack quantizes, so their kernels are timed.
 * (2) Paged decode attention at a 2048-token budget (Hq=32, Hk=8, d=128) in f32, f16 and bf16
 *     for batch 1 and 4: time and effective GB/s of K/V bytes read, beside the bandwidth of a
 *     single-thread memcpy of the same bytes measured in the same repetitions (interleaved, so
 *     both see the same machine), and the ratio.
 * (3) Page scoring and selection of one layer (scores, then select_pages: softmax-mean and
 *     top-k) over 4096 candidate pages per sequence (131072 tokens at p=32) for batch 1 and 4:
 *     time and GB/s of page summaries read, beside single-thread memcpy on the host in the
 *     same run (the bandwidth a CPU device's kernels can hope for per thread).
 * (2) and (3) give GB/s by the wall clock and per second of the process's CPU time, which on
 * a machine shared with other work is what a CPU device's kernels cost.
 * Plain numbers on stdout; timings are medians of --reps runs after one warm-up run, and
 * device commands (fkv_device_get_counters) the mean per run over the same runs. The
 * device comes from --backend/--device or FREEKV_BACKEND/FREEKV_DEVICE. Numbers are parsed
 * strictly (tools/args.h) and the memory of every phase is estimated before anything is
 * allocated. bench/opbench_main.c holds main; tests/opbench_args.c calls fkv_opbench_main. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backends/dispatch.h"
#include "bench/counts.h"
#include "common/dtype.h"
#include "common/hostfmt.h"
#include "common/error.h"
#include "core/hostpool.h"
#include "core/recall.h"
#include "core/state.h"
#include "core/threadpool.h"
#include "freekv.h"
#include "tools/args.h"

int fkv_opbench_main(int argc, char **argv);

#define TOOL "freekv-opbench"
#define MAX_LIST 8
/* Flag ranges: generous, far below any overflow of the 64-bit size arithmetic below. */
#define MAX_PAGES (1u << 20)
#define MAX_BATCH (1u << 20)
#define MAX_POOL_MIB (1u << 22)
#define MAX_REPS 100000u
#define MAX_CHUNK (1u << 24)
#define MAX_BUDGET (1u << 24)
#define MAX_TOPK 4096
#define MAX_HEADS 1024
#define MAX_HEAD_DIM 1024 /* the CPU reference's largest head_dim (FKV_CPU_MAX_HEAD_DIM) */

typedef struct options {
    const char *backend, *device;
    uint32_t kv_heads, q_heads, head_dim, page, budget;
    uint32_t pages[MAX_LIST];
    size_t n_pages;
    uint32_t batches[MAX_LIST];
    size_t n_batches;
    uint32_t pool_mib;
    uint32_t reps, chunk;
    fkv_dtype dtype;               /* recall's (and the geometry of scoring's) */
    fkv_host_format host_format;   /* recall's units */
    fkv_dtype attn_dtypes[3];      /* attention's */
    size_t n_attn_dtypes;
    uint32_t score_pages[MAX_LIST];
    size_t n_score_pages;
    uint32_t topk;
    fkv_summary_format summary_format; /* scoring's summaries */
    int recall, attention, scoring; /* the sections to run */
} options;

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now_s(void) { return clock_s(CLOCK_MONOTONIC); }

/* CPU time of every thread of the process: a CPU device's worker threads included, a thread
 * waiting on an event not; what a call costs on a machine shared with other work. */
static double cpu_s(void) { return clock_s(CLOCK_PROCESS_CPUTIME_ID); }

/* A point in time or a span by both clocks (seconds), or a rate per second of each. */
typedef struct clocks {
    double wall, cpu;
} clocks;

static clocks clocks_now(void) { return (clocks){.wall = now_s(), .cpu = cpu_s()}; }

static clocks clocks_since(clocks t0) {
    clocks t = clocks_now();
    return (clocks){.wall = t.wall - t0.wall, .cpu = t.cpu - t0.cpu};
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, uint32_t n) {
    qsort(x, n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* The spans of a run's repetitions, by each clock. */
typedef struct spans {
    double *wall, *cpu;
} spans;

static void spans_set(spans s, uint32_t i, clocks t) {
    s.wall[i] = t.wall;
    s.cpu[i] = t.cpu;
}

/* GB/s of `bytes` per median second of each clock over `n` spans (reorders them). */
static clocks rates(double bytes, spans s, uint32_t n) {
    return (clocks){.wall = bytes / median(s.wall, n) * 1e-9,
                    .cpu = bytes / median(s.cpu, n) * 1e-9};
}

/* One single-thread memcpy, timed; its last byte feeds the source of the next, so that no
 * copy can be left out. */
static clocks timed_copy(unsigned char *dst, unsigned char *src, size_t bytes) {
    clocks t0 = clocks_now();
    memcpy(dst, src, bytes);
    clocks t = clocks_since(t0);
    src[0] = (unsigned char)(dst[bytes - 1] + 1);
    return t;
}

static void usage(FILE *f) {
    fprintf(f, "usage: freekv-opbench [--quick] [--backend NAME] [--device SEL] [--pages 32,64]\n"
               "       [--batches 1,4] [--pool-mib N] [--reps N] [--chunk UNITS] [--budget TOKENS]\n"
               "       [--dtype f32|f16|bf16] [--host-format same|q8|q4]\n"
               "       [--attention-dtypes f32,f16,bf16]\n"
               "       [--score-pages 4096] [--topk 32] [--summary-format f32|f16]\n"
               "       [--only recall|attention|scoring]\n"
               "       [--q-heads 32] [--kv-heads 8] [--head-dim 128] (every section)\n"
               "  --quick: a 64 MiB host pool and 3 repetitions (a few seconds on a CPU device)\n"
               "  --dtype: the recall's storage type (bf16); --host-format: how its host units\n"
               "  are stored (same); --attention-dtypes: the attention's (all three);\n"
               "  --summary-format: the page summaries scoring reads (f32); --only: one of the\n"
               "  three sections\n"
               "  lists hold 1 to %d values; numbers are plain decimal integers. The memory a run\n"
               "  needs is estimated before anything is allocated; a run that would not fit is\n"
               "  refused. Exit status: 0 ok, 1 a measurement failed, 2 bad arguments.\n",
            MAX_LIST);
}

/* A comma list of at most `cap` storage types (cap 1: one type, n NULL); 0 or -1 (message
 * printed). */
static int parse_dtypes(const char *flag, const char *v, fkv_dtype *out, size_t cap, size_t *n) {
    static const char *const names[3] = {"f32", "f16", "bf16"};
    static const fkv_dtype types[3] = {FKV_F32, FKV_F16, FKV_BF16};
    size_t count = 0;
    for (const char *p = v;; p++) {
        size_t len = strcspn(p, ",");
        int found = -1;
        for (int t = 0; t < 3; t++)
            if (strlen(names[t]) == len && strncmp(p, names[t], len) == 0)
                found = t;
        if (found < 0 || count == cap) {
            fprintf(stderr, TOOL ": %s: '%s' is not %s\n", flag, v,
                    cap == 1 ? "f32, f16 or bf16" : "a comma list of f32, f16 and bf16");
            return -1;
        }
        out[count++] = types[found];
        p += len;
        if (*p == '\0')
            break;
    }
    if (n)
        *n = count;
    return 0;
}

static int parse(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->kv_heads = 8;
    o->q_heads = 32;
    o->head_dim = 128;
    o->page = 32;
    o->budget = 2048;
    o->pages[0] = 32;
    o->pages[1] = 64;
    o->n_pages = 2;
    o->batches[0] = 1;
    o->batches[1] = 4;
    o->n_batches = 2;
    o->pool_mib = 256;
    o->reps = 10;
    o->dtype = FKV_BF16;
    o->attn_dtypes[0] = FKV_F32;
    o->attn_dtypes[1] = FKV_F16;
    o->attn_dtypes[2] = FKV_BF16;
    o->n_attn_dtypes = 3;
    o->score_pages[0] = 4096;
    o->n_score_pages = 1;
    o->topk = 32;
    o->recall = o->attention = o->scoring = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0) {
            o->pool_mib = 64;
            o->reps = 3;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 1;
        }
        if (v == NULL) {
            fprintf(stderr, TOOL ": %s needs a value (or is unknown)\n", a);
            usage(stderr);
            return -1;
        }
        i++;
        int bad = 0;
        if (strcmp(a, "--backend") == 0)
            o->backend = v;
        else if (strcmp(a, "--device") == 0)
            o->device = v;
        else if (strcmp(a, "--pages") == 0)
            bad = fkv_arg_u32_list(TOOL, a, v, 1, MAX_PAGES, o->pages, MAX_LIST, &o->n_pages);
        else if (strcmp(a, "--batches") == 0)
            bad = fkv_arg_u32_list(TOOL, a, v, 1, MAX_BATCH, o->batches, MAX_LIST, &o->n_batches);
        else if (strcmp(a, "--pool-mib") == 0)
            bad = fkv_arg_u32(TOOL, a, v, 1, MAX_POOL_MIB, &o->pool_mib);
        else if (strcmp(a, "--reps") == 0)
            bad = fkv_arg_u32(TOOL, a, v, 1, MAX_REPS, &o->reps);
        else if (strcmp(a, "--chunk") == 0)
            bad = fkv_arg_u32(TOOL, a, v, 0, MAX_CHUNK, &o->chunk);
        else if (strcmp(a, "--budget") == 0)
            bad = fkv_arg_u32(TOOL, a, v, 1, MAX_BUDGET, &o->budget);
        else if (strcmp(a, "--score-pages") == 0)
            bad = fkv_arg_u32_list(TOOL, a, v, 1, MAX_PAGES, o->score_pages, MAX_LIST,
                                   &o->n_score_pages);
        else if (strcmp(a, "--topk") == 0)
            bad = fkv_arg_u32(TOOL, a, v, 1, MAX_TOPK, &o->topk);
        else if (strcmp(a, "--q-heads") == 0)
            bad = fkv_arg_u32(TOOL, a, v, 1, MAX_HEADS, &o->q_heads);
        else if (strcmp(a, "--kv-heads") == 0)
            bad = fkv_arg_u32(TOOL, a, v, 1, MAX_HEADS, &o->kv_heads);
        else if (strcmp(a, "--head-dim") == 0)
            bad = fkv_arg_u32(TOOL, a, v, 1, MAX_HEAD_DIM, &o->head_dim);
        else if (strcmp(a, "--dtype") == 0)
            bad = parse_dtypes(a, v, &o->dtype, 1, NULL);
        else if (strcmp(a, "--host-format") == 0) {
            if (fkv_host_format_parse(v, &o->host_format) != FKV_OK) {
                fprintf(stderr, TOOL ": --host-format: '%s' is not same, q8 or q4\n", v);
                bad = -1;
            }
        } else if (strcmp(a, "--summary-format") == 0) {
            if (fkv_summary_format_parse(v, &o->summary_format) != FKV_OK) {
                fprintf(stderr, TOOL ": --summary-format: '%s' is not f32 or f16\n", v);
                bad = -1;
            }
        } else if (strcmp(a, "--attention-dtypes") == 0)
            bad = parse_dtypes(a, v, o->attn_dtypes, 3, &o->n_attn_dtypes);
        else if (strcmp(a, "--only") == 0) {
            o->recall = strcmp(v, "recall") == 0;
            o->attention = strcmp(v, "attention") == 0;
            o->scoring = strcmp(v, "scoring") == 0;
            if (!o->recall && !o->attention && !o->scoring) {
                fprintf(stderr, TOOL ": --only: '%s' is not recall, attention or scoring\n", v);
                bad = -1;
            }
        } else {
            fprintf(stderr, TOOL ": unknown option '%s'\n", a);
            bad = -1;
        }
        if (bad) {
            usage(stderr);
            return -1;
        }
    }
    if (o->q_heads % o->kv_heads != 0) {
        fprintf(stderr, TOOL ": --q-heads %u is not a multiple of --kv-heads %u\n", o->q_heads,
                o->kv_heads);
        return -1;
    }
    return 0;
}

/* ---- small helpers over the device's ops (backends/dispatch.h) ---- */

typedef struct bench {
    fkv_device *dev;
    const options *o;
} bench;

/* The backend's split-attention option (0 automatic, 1 never split): 0 when it has none. */
static int set_splits(const bench *b, int splits) {
    return fkv_op_set_option(b->dev, "attention_splits", splits ? "1" : "0") == FKV_OK;
}

static fkv_status wait_release(bench *b, fkv_bevent *ev) {
    fkv_status st = fkv_op_event_wait(b->dev, 1, &ev);
    fkv_op_event_release(b->dev, ev);
    return st;
}

static fkv_status upload(bench *b, fkv_bbuf *dst, const void *src, size_t size) {
    fkv_bevent *ev = NULL;
    fkv_status st = fkv_op_write(b->dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev}, dst, 0,
                                  src, size);
    return st == FKV_OK ? wait_release(b, ev) : st;
}

static uint64_t lcg(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 11;
}

/* Random bf16/f16/f32 bit patterns of moderate finite values. */
static void fill_values(void *p, size_t bytes, fkv_dtype t, uint64_t seed) {
    size_t es = fkv_dtype_size(t), n = bytes / es;
    for (size_t i = 0; i < n; i++) {
        float x = (float)(lcg(&seed) % 2001) / 1000.0f - 1.0f;
        fkv_store(p, t, i, x);
    }
}

static uint32_t max_of(const uint32_t *x, size_t n) {
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

/* ---- (1) recall ---- */

#define FILL_TEMPLATES 16

/* n host units of geometry g at dst: values of fill_values, or in a quantized host format
 * such values quantized by the reference codec (FILL_TEMPLATES distinct units, repeated: what
 * the kernels cost does not depend on the codes). */
static fkv_status fill_units(const fkv_kv_geom *g, unsigned char *dst, size_t n, uint64_t seed) {
    size_t unit = fkv_unit_bytes(g);
    if (g->host_format == FKV_HOST_SAME) {
        fill_values(dst, n * unit, g->dtype, seed);
        return FKV_OK;
    }
    size_t half = (size_t)g->page_size * g->head_dim * fkv_dtype_size(g->dtype);
    unsigned char *values = malloc(2 * half);
    if (values == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opbench: %zu bytes of unit values",
                         2 * half);
    for (size_t j = 0; j < n; j++) {
        if (j >= FILL_TEMPLATES) {
            memcpy(dst + j * unit, dst + j % FILL_TEMPLATES * unit, unit);
            continue;
        }
        fill_values(values, 2 * half, g->dtype, seed * FILL_TEMPLATES + j);
        fkv_hostfmt_quantize(g->host_format, g->page_size, g->head_dim, values, values + half,
                             g->dtype, 0, g->head_dim, dst + j * unit);
    }
    free(values);
    return FKV_OK;
}

typedef struct recall_setup {
    fkv_kv_geom g;
    size_t unit_bytes;
    /* built as the context builds it (core/hostpool.c): pieces of FKV_HOST_CHUNK_PAGES pages,
     * so random pages fall in many host allocations, as they do in decoding */
    fkv_hostpool hp;
    size_t host_units; /* (page, head) units in the host pool */
    fkv_bbuf *kpool, *vpool, *staging, *index;
    uint32_t max_units;
} recall_setup;

static void recall_free(bench *b, recall_setup *r) {
    fkv_hostpool_free(&r->hp, b->dev);
    fkv_bbuf *bufs[4] = {r->kpool, r->vpool, r->staging, r->index};
    for (int i = 0; i < 4; i++)
        if (bufs[i])
            fkv_op_buffer_free(b->dev, bufs[i]);
}

static fkv_status recall_init(bench *b, recall_setup *r) {
    const options *o = b->o;
    memset(r, 0, sizeof *r);
    r->g = (fkv_kv_geom){.n_kv_heads = o->kv_heads, .group = o->q_heads / o->kv_heads,
            .head_dim = o->head_dim, .page_size = o->page, .dtype = o->dtype,
            .host_format = o->host_format};
    r->unit_bytes = fkv_unit_bytes(&r->g);
    uint32_t max_pages = 0;
    for (uint32_t i = 0; i < o->n_pages; i++)
        max_pages = o->pages[i] > max_pages ? o->pages[i] : max_pages;
    r->max_units = max_pages * o->kv_heads;
    size_t host_bytes = (size_t)o->pool_mib << 20;
    r->host_units = host_bytes / r->unit_bytes;
    if (r->host_units < (size_t)r->max_units)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "host pool too small for %u units",
                         r->max_units);
    size_t slot_bytes = (size_t)o->page * o->kv_heads * o->head_dim * fkv_dtype_size(o->dtype);
    uint32_t host_pages = (uint32_t)(r->host_units / o->kv_heads);
    size_t page_bytes = (size_t)o->kv_heads * r->unit_bytes;
    fkv_status st;
    if ((st = fkv_hostpool_init(&r->hp, host_pages, FKV_HOST_CHUNK_PAGES, page_bytes)) != FKV_OK)
        return st;
    if ((st = fkv_hostpool_reserve(&r->hp, b->dev, host_pages)) != FKV_OK ||
        (st = fkv_op_buffer_alloc(b->dev, max_pages * slot_bytes, &r->kpool)) != FKV_OK ||
        (st = fkv_op_buffer_alloc(b->dev, max_pages * slot_bytes, &r->vpool)) != FKV_OK ||
        (st = fkv_op_buffer_alloc(b->dev, r->max_units * r->unit_bytes, &r->staging)) != FKV_OK ||
        (st = fkv_op_buffer_alloc(b->dev, (size_t)r->max_units * 8, &r->index)) != FKV_OK)
        return st;
    for (uint32_t c = 0; c < r->hp.n_chunks; c++) {
        uint32_t first = c * FKV_HOST_CHUNK_PAGES;
        uint32_t n = host_pages - first < FKV_HOST_CHUNK_PAGES ? host_pages - first
                                                               : FKV_HOST_CHUNK_PAGES;
        st = fill_units(&r->g, fkv_hostpool_page(&r->hp, first, NULL, NULL),
                        (size_t)n * o->kv_heads, 7 + c);
        if (st != FKV_OK)
            return st;
    }
    void *slots = malloc(max_pages * slot_bytes);
    if (slots == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opbench: %zu bytes of slot values",
                         max_pages * slot_bytes);
    fill_values(slots, max_pages * slot_bytes, o->dtype, 5);
    if ((st = upload(b, r->kpool, slots, max_pages * slot_bytes)) == FKV_OK) {
        fill_values(slots, max_pages * slot_bytes, o->dtype, 6);
        st = upload(b, r->vpool, slots, max_pages * slot_bytes);
    }
    free(slots);
    return st;
}

/* `pages` random distinct host pages per KV head, into slots 0..pages-1. The host pool is
 * HND, [page][kv_head][K|V][p][d]: unit (page, head) = host unit page*Hk + head. */
static void pick_units(const recall_setup *r, uint32_t pages, uint64_t seed,
                       fkv_recall_unit *units, int32_t *index) {
    size_t host_pages = r->host_units / r->g.n_kv_heads;
    uint32_t n = 0;
    for (uint32_t h = 0; h < r->g.n_kv_heads; h++) {
        for (uint32_t j = 0; j < pages; j++) {
            size_t page;
            int fresh;
            do { /* distinct pages per head (pages << host_pages) */
                page = lcg(&seed) % host_pages;
                fresh = 1;
                const unsigned char *src =
                    fkv_hostpool_page(&r->hp, (uint32_t)page, NULL, NULL) + h * r->unit_bytes;
                for (uint32_t k = n - j; k < n && fresh; k++)
                    fresh = units[k].src != src;
            } while (!fresh);
            const fkv_bhost *host;
            uint64_t off;
            unsigned char *src = fkv_hostpool_page(&r->hp, (uint32_t)page, &host, &off);
            off += h * r->unit_bytes;
            units[n] = (fkv_recall_unit){host, off, src + h * r->unit_bytes, (int32_t)j,
                                         (int32_t)h};
            index[2 * n] = (int32_t)j;
            index[2 * n + 1] = (int32_t)h;
            n++;
        }
    }
}

/* The baseline: one write per unit into device staging, one scatter kernel. */
static fkv_status run_perpage(bench *b, recall_setup *r, uint32_t n, const fkv_recall_unit *u,
                              const int32_t *index) {
    fkv_status st = FKV_OK;
    fkv_bevent *ready = NULL, *done = NULL;
    st = fkv_op_write(b->dev, FKV_QUEUE_TRANSFER, (fkv_deps){0, NULL, NULL}, r->index, 0, index,
                       (size_t)n * 8);
    for (uint32_t i = 0; i < n && st == FKV_OK; i++)
        st = fkv_op_write(b->dev, FKV_QUEUE_TRANSFER,
                           (fkv_deps){0, NULL, i + 1 == n ? &ready : NULL}, r->staging,
                           i * r->unit_bytes, u[i].src, r->unit_bytes);
    if (st == FKV_OK)
        st = fkv_op_scatter_hnd(b->dev, FKV_QUEUE_COMPUTE, (fkv_deps){1, &ready, &done}, &r->g,
                                 r->staging, 0, n, r->index, 0, r->kpool, r->vpool);
    if (ready)
        fkv_op_event_release(b->dev, ready);
    if (st == FKV_OK)
        st = wait_release(b, done);
    return st;
}

/* The offload's pack: slots 0..n_pages-1 of the pools into staging (index holds 0..n-1). */
static fkv_status run_pack(bench *b, recall_setup *r, uint32_t n_pages) {
    fkv_bevent *done = NULL;
    fkv_status st = fkv_op_pack_hnd(b->dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &done}, &r->g,
                             r->kpool, r->vpool, n_pages, r->index, 0, r->staging, 0);
    if (st == FKV_OK)
        st = wait_release(b, done);
    return st;
}

static fkv_status run_engine(bench *b, fkv_recaller *rc, recall_setup *r, uint32_t n,
                             const fkv_recall_unit *u) {
    fkv_bevent *done = NULL;
    fkv_status st = fkv_recaller_run(rc, FKV_QUEUE_BACKGROUND, n, u, r->kpool, r->vpool,
                                     (fkv_deps){0, NULL, &done});
    if (st == FKV_OK && done)
        st = wait_release(b, done);
    return st;
}

static const char *mode_name(fkv_recall_mode m) {
    return m == FKV_RECALL_STAGED ? "staged" : m == FKV_RECALL_DIRECT ? "direct" : "perpage";
}

/* The device commands of a span of `runs` runs, per run: "commands N (launches L, copies C),
 * submits S, waits W caller + W worker, allocs A device + H host". */
static void print_counts(const fkv_counters *after, const fkv_counters *before, int counted,
                         uint32_t runs) {
    if (!counted) {
        printf("not counted (the backend does not count commands)\n");
        return;
    }
    fkv_counters span;
    memset(&span, 0, sizeof span);
    bench_counters_span(&span, after, before, 1);
    bench_counts c = bench_counts_per(&span, 1, runs);
    printf("commands %.1f (launches %.1f, copies %.1f), submits %.1f, waits %.1f caller + %.1f "
           "worker, allocs %.1f device + %.1f host\n",
           c.commands, c.launches, c.copies, c.submits, c.caller_waits, c.worker_waits,
           c.device_allocs, c.host_allocs);
}

/* Returns 1 when a measurement failed (a mechanism the backend lacks is not a failure). */
static int bench_recall(bench *b, fkv_pool *pool) {
    const options *o = b->o;
    recall_setup r;
    fkv_status st = recall_init(b, &r);
    printf("\n(1) recall: %u KV heads, %s, p=%u, d=%u, host format %s: %zu bytes per (page, "
           "head) unit, host pool %u MiB (pinned, host_alloc, %u pieces of %u pages), %u reps "
           "(median)\n",
           o->kv_heads, fkv_dtype_name(o->dtype), o->page, o->head_dim,
           fkv_host_format_name(o->host_format), r.unit_bytes, o->pool_mib, r.hp.n_chunks, FKV_HOST_CHUNK_PAGES, o->reps);
    if (st != FKV_OK) {
        printf("  setup failed: %s\n", fkv_last_error());
        recall_free(b, &r);
        return 1;
    }
    int failed = 0;
    printf("  device recall mode (default): %s\n", mode_name(fkv_op_recall_mode(b->dev)));
    printf("  %-16s %6s %7s %9s %10s %9s %8s  %s\n", "mechanism", "pages", "units", "MiB", "ms",
           "GB/s eff.", "cpu ms", "device commands per recall");
    fkv_recall_unit *units = malloc(r.max_units * sizeof *units);
    int32_t *index = malloc((size_t)r.max_units * 8);
    double *t = malloc(o->reps * sizeof *t), *tc = malloc(o->reps * sizeof *tc);
    if (units == NULL || index == NULL || t == NULL || tc == NULL) {
        printf("  out of host memory\n");
        failed = 1;
        goto out;
    }
    static const fkv_recall_mode engine_modes[] = {FKV_RECALL_PERPAGE, FKV_RECALL_STAGED,
                                                   FKV_RECALL_DIRECT};
    for (int m = -1; m < 4; m++) { /* perpage, the engine's three modes, pack */
        fkv_recaller *rc = NULL;
        char name[32];
        snprintf(name, sizeof name, m < 0 ? "perpage" : m < 3 ? "engine:%s" : "pack",
                 m < 0 || m == 3 ? "" : mode_name(engine_modes[m]));
        if (m >= 0 && m < 3) {
            /* a backend without recall_direct: its runs fail with FKV_ERR_UNSUPPORTED (n/a) */
            st = fkv_recaller_create(b->dev, &r.g, engine_modes[m], o->chunk, 0, &rc);
            if (st != FKV_OK) {
                printf("  %-16s n/a: %s\n", name, fkv_last_error());
                failed |= st != FKV_ERR_UNSUPPORTED;
                continue;
            }
            fkv_recaller_set_pool(rc, pool);
        }
        for (uint32_t pi = 0; pi < o->n_pages; pi++) {
            uint32_t n = o->pages[pi] * o->kv_heads;
            st = FKV_OK;
            fkv_counters c0, c1;
            int counted = 1;
            if (m == 3) {
                for (uint32_t i = 0; i < o->pages[pi]; i++)
                    index[i] = (int32_t)i;
                st = upload(b, r.index, index, (size_t)o->pages[pi] * sizeof *index);
            }
            for (uint32_t rep = 0; rep <= o->reps && st == FKV_OK; rep++) {
                if (m < 3)
                    pick_units(&r, o->pages[pi], 1000 + rep, units, index);
                if (rep == 1)
                    counted = fkv_device_get_counters(b->dev, &c0) == FKV_OK;
                clocks t0 = clocks_now();
                st = m == 3 ? run_pack(b, &r, o->pages[pi])
                     : rc   ? run_engine(b, rc, &r, n, units)
                            : run_perpage(b, &r, n, units, index);
                if (rep > 0) { /* rep 0 warms up (program builds, first touches) */
                    clocks span = clocks_since(t0);
                    t[rep - 1] = span.wall;
                    tc[rep - 1] = span.cpu;
                }
            }
            counted = counted && fkv_device_get_counters(b->dev, &c1) == FKV_OK;
            if (st != FKV_OK) {
                printf("  %-16s %6u n/a: %s\n", name, o->pages[pi], fkv_last_error());
                failed |= st != FKV_ERR_UNSUPPORTED;
                break;
            }
            double s = median(t, o->reps), bytes = (double)n * (double)r.unit_bytes;
            printf("  %-16s %6u %7u %9.2f %10.3f %9.2f %8.3f  ", name, o->pages[pi], n,
                   bytes / (1 << 20), s * 1e3, bytes / s * 1e-9, median(tc, o->reps) * 1e3);
            print_counts(&c1, &c0, counted, o->reps);
        }
        fkv_recaller_destroy(rc);
    }
out:
    free(units);
    free(index);
    free(t);
    free(tc);
    recall_free(b, &r);
    return failed;
}

/* ---- (2) attention ---- */

/* The buffers of one (dtype, batch) measurement: K/V slots, queries, lists and output on the
 * device; on the host a memcpy source and destination of the bytes the attention reads. */
typedef struct attn_setup {
    fkv_kv_geom g;
    uint32_t batch;
    double bytes; /* K/V bytes one attention reads: every listed token of every (seq, KV head) */
    fkv_bbuf *kp, *vp, *qb, *hb, *eb, *ob;
    unsigned char *copy_src, *copy_dst;
} attn_setup;

static void attention_free(bench *b, attn_setup *a) {
    fkv_bbuf *bufs[6] = {a->kp, a->vp, a->qb, a->hb, a->eb, a->ob};
    for (int i = 0; i < 6; i++)
        if (bufs[i])
            fkv_op_buffer_free(b->dev, bufs[i]);
    free(a->copy_src);
    free(a->copy_dst);
}

/* Each (sequence, KV head) reads its sequence's slots in a shuffled order; the last page is
 * partial when the budget is not a multiple of the page. */
static void attention_lists(const options *o, size_t n_bh, uint32_t pages, uint64_t *seed,
                            int32_t *heads, int32_t *entries) {
    for (size_t bh = 0; bh < n_bh; bh++) {
        size_t bseq = bh / o->kv_heads;
        heads[2 * bh] = (int32_t)(bh * pages);
        heads[2 * bh + 1] = (int32_t)pages;
        for (uint32_t j = 0; j < pages; j++) {
            uint32_t k = (uint32_t)(lcg(seed) % (j + 1));
            int32_t *e = entries + 2 * (bh * pages + j);
            e[0] = entries[2 * (bh * pages + k)];
            entries[2 * (bh * pages + k)] = (int32_t)(bseq * pages + j);
        }
        for (uint32_t j = 0; j < pages; j++) {
            uint32_t left = o->budget - j * o->page;
            entries[2 * (bh * pages + j) + 1] = (int32_t)(left < o->page ? left : o->page);
        }
    }
}

static fkv_status attention_init(bench *b, fkv_dtype dtype, uint32_t batch, attn_setup *a) {
    const options *o = b->o;
    memset(a, 0, sizeof *a);
    a->g = (fkv_kv_geom){.n_kv_heads = o->kv_heads, .group = o->q_heads / o->kv_heads,
                         .head_dim = o->head_dim, .page_size = o->page, .dtype = dtype};
    a->batch = batch;
    uint32_t pages = (o->budget + o->page - 1) / o->page;
    size_t slot_bytes = fkv_slot_bytes(&a->g), n_slots = (size_t)batch * pages;
    size_t n_bh = (size_t)batch * o->kv_heads, qn = (size_t)batch * o->q_heads * o->head_dim;
    a->bytes = (double)n_bh * o->budget * o->head_dim * fkv_dtype_size(dtype) * 2;
    int32_t *heads = malloc(n_bh * 8), *entries = malloc(n_bh * pages * 8);
    float *q = malloc(qn * 4);
    void *kv = malloc(n_slots * slot_bytes);
    a->copy_src = malloc((size_t)a->bytes);
    a->copy_dst = malloc((size_t)a->bytes);
    fkv_status st = heads && entries && q && kv && a->copy_src && a->copy_dst
                        ? FKV_OK
                        : fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "out of host memory");
    if (st == FKV_OK)
        st = fkv_op_buffer_alloc(b->dev, n_slots * slot_bytes, &a->kp);
    if (st == FKV_OK)
        st = fkv_op_buffer_alloc(b->dev, n_slots * slot_bytes, &a->vp);
    if (st == FKV_OK)
        st = fkv_op_buffer_alloc(b->dev, qn * 4, &a->qb);
    if (st == FKV_OK)
        st = fkv_op_buffer_alloc(b->dev, n_bh * 8, &a->hb);
    if (st == FKV_OK)
        st = fkv_op_buffer_alloc(b->dev, n_bh * pages * 8, &a->eb);
    if (st == FKV_OK)
        st = fkv_op_buffer_alloc(b->dev, qn * 4, &a->ob);
    if (st == FKV_OK) {
        uint64_t seed = 99;
        attention_lists(o, n_bh, pages, &seed, heads, entries);
        for (size_t i = 0; i < qn; i++)
            q[i] = (float)(lcg(&seed) % 2001) / 1000.0f - 1.0f;
        fill_values(kv, n_slots * slot_bytes, dtype, 5);
        memcpy(a->copy_src, kv, (size_t)a->bytes < n_slots * slot_bytes ? (size_t)a->bytes
                                                                          : n_slots * slot_bytes);
        memset(a->copy_dst, 0, (size_t)a->bytes);
        if ((st = upload(b, a->kp, kv, n_slots * slot_bytes)) == FKV_OK &&
            (st = upload(b, a->vp, kv, n_slots * slot_bytes)) == FKV_OK &&
            (st = upload(b, a->qb, q, qn * 4)) == FKV_OK &&
            (st = upload(b, a->hb, heads, n_bh * 8)) == FKV_OK)
            st = upload(b, a->eb, entries, n_bh * pages * 8);
    }
    free(heads);
    free(entries);
    free(q);
    free(kv);
    return st;
}

static fkv_status attention_once(bench *b, const attn_setup *a) {
    fkv_bevent *done = NULL;
    fkv_status st = fkv_op_attention(b->dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &done}, &a->g,
                                     a->qb, 0, a->batch, a->hb, 0, a->eb, 0, a->kp, a->vp,
                                     1.0f / 11.3137085f, a->ob, 0);
    return st == FKV_OK ? wait_release(b, done) : st;
}

/* One row of the table: the attention's median time beside a one-thread memcpy of the same
 * bytes, timed in the same repetitions (each memcpy right before its attention), by the wall
 * clock and by the process's CPU time. */
static fkv_status attention_row(bench *b, const attn_setup *a, const char *split, spans attn,
                                spans copy) {
    const options *o = b->o;
    fkv_counters c0, c1;
    int counted = 1;
    fkv_status st = FKV_OK;
    for (uint32_t rep = 0; rep <= o->reps && st == FKV_OK; rep++) {
        clocks c = timed_copy(a->copy_dst, a->copy_src, (size_t)a->bytes);
        if (rep == 1)
            counted = fkv_device_get_counters(b->dev, &c0) == FKV_OK;
        clocks t0 = clocks_now();
        st = attention_once(b, a);
        if (rep > 0) { /* rep 0 warms up (program builds, first touches) */
            spans_set(attn, rep - 1, clocks_since(t0));
            spans_set(copy, rep - 1, c);
        }
    }
    counted = counted && fkv_device_get_counters(b->dev, &c1) == FKV_OK;
    if (st != FKV_OK)
        return st;
    clocks gbs = rates(a->bytes, attn, o->reps), copy_gbs = rates(a->bytes, copy, o->reps);
    printf("  %-6s %-6u %-8s %9.2f %10.3f %9.2f %9.2f %8.0f%% %9.2f %9.2f  ",
           fkv_dtype_name(a->g.dtype), a->batch, split, a->bytes / (1 << 20),
           a->bytes / gbs.wall * 1e-6, gbs.wall, copy_gbs.wall, 100.0 * gbs.wall / copy_gbs.wall,
           gbs.cpu, copy_gbs.cpu);
    print_counts(&c1, &c0, counted, o->reps);
    return FKV_OK;
}

static int bench_attention(bench *b) {
    const options *o = b->o;
    uint32_t pages = (o->budget + o->page - 1) / o->page;
    printf("\n(2) paged decode attention: budget %u tokens (%u pages of %u), Hq=%u, Hk=%u, d=%u, "
           "%u reps (median); memcpy: one thread copying the bytes the attention reads, in the "
           "same reps; GB/s by the wall clock, then per second of the process's CPU time\n",
           o->budget, pages, o->page, o->q_heads, o->kv_heads, o->head_dim, o->reps);
    int has_splits = set_splits(b, 0);
    printf("  %-6s %-6s %-8s %9s %10s %9s %9s %9s %9s %9s  %s\n", "dtype", "batch", "splits",
           "KV MiB", "ms", "K/V GB/s", "memcpy", "of memcpy", "K/V cpu", "memcpy cpu",
           "device commands per call");
    double *t = malloc(4 * (size_t)o->reps * sizeof *t);
    spans attn = {t, t + o->reps}, copy = {t + 2 * (size_t)o->reps, t + 3 * (size_t)o->reps};
    int failed = t == NULL;
    for (size_t di = 0; di < o->n_attn_dtypes && !failed; di++)
        for (uint32_t bi = 0; bi < o->n_batches; bi++) {
            attn_setup a;
            fkv_status st = attention_init(b, o->attn_dtypes[di], o->batches[bi], &a);
            for (int variant = 0; variant < (has_splits ? 2 : 1) && st == FKV_OK; variant++) {
                if (has_splits)
                    set_splits(b, variant); /* 0 auto, 1 never */
                st = attention_row(b, &a, variant ? "off" : "auto", attn, copy);
            }
            set_splits(b, 0);
            if (st != FKV_OK) {
                printf("  %-6s %-6u n/a: %s\n", fkv_dtype_name(o->attn_dtypes[di]),
                       o->batches[bi], fkv_last_error());
                failed = 1;
            }
            attention_free(b, &a);
        }
    if (t == NULL)
        printf("  out of host memory\n");
    free(t);
    return failed;
}

/* ---- (3) scoring and selection ---- */

/* One-thread memcpy of `bytes` on the host, in GB/s of bytes read by each clock (medians of
 * reps, after one warm-up copy that also touches the pages); 0 when out of memory. */
static clocks memcpy_gbs(size_t bytes, uint32_t reps) {
    unsigned char *src = malloc(bytes), *dst = malloc(bytes);
    double *t = malloc(2 * (size_t)reps * sizeof *t);
    clocks gbs = {.wall = 0, .cpu = 0};
    if (src && dst && t) {
        spans s = {t, t + reps};
        memset(src, 1, bytes);
        memset(dst, 2, bytes);
        for (uint32_t rep = 0; rep <= reps; rep++) {
            clocks c = timed_copy(dst, src, bytes);
            if (rep > 0)
                spans_set(s, rep - 1, c);
        }
        gbs = rates((double)bytes, s, reps);
    }
    free(src);
    free(dst);
    free(t);
    return gbs;
}

typedef struct score_setup {
    fkv_kv_geom g;
    uint32_t batch, pages;
    fkv_bbuf *summ, *q, *desc, *scores, *recs;
    double summ_bytes, score_bytes;
} score_setup;

static void score_free(bench *b, score_setup *s) {
    fkv_bbuf *bufs[5] = {s->summ, s->q, s->desc, s->scores, s->recs};
    for (int i = 0; i < 5; i++)
        if (bufs[i])
            fkv_op_buffer_free(b->dev, bufs[i]);
}

/* Sequence i's summaries are pages [i * pages, (i + 1) * pages) (min <= max per channel), its
 * query row i, its scores at i * Hq * pages: the layout the core gives them. */
static fkv_status score_init(bench *b, score_setup *s, uint32_t batch, uint32_t pages) {
    const options *o = b->o;
    memset(s, 0, sizeof *s);
    s->g = (fkv_kv_geom){.n_kv_heads = o->kv_heads, .group = o->q_heads / o->kv_heads,
                         .head_dim = o->head_dim, .page_size = o->page, .dtype = o->dtype,
                         .summary_format = o->summary_format};
    s->batch = batch;
    s->pages = pages;
    size_t n_summ = (size_t)batch * pages, d = o->head_dim, hq = o->q_heads;
    size_t summ_bytes = n_summ * fkv_summary_bytes(&s->g), q_floats = batch * hq * d;
    size_t rec_bytes = (size_t)batch * o->kv_heads * 2 * o->topk * 4;
    s->summ_bytes = (double)summ_bytes;
    s->score_bytes = (double)n_summ * hq * 4;
    /* f32 summaries, converted in place below for f16 (f32 room is enough for both) */
    size_t summ_floats = n_summ * 2 * o->kv_heads * d;
    float *summ = malloc(summ_floats * 4), *q = malloc(q_floats * 4);
    int32_t *desc = malloc((size_t)batch * FKV_SCORES_DESC_INTS * 4);
    fkv_status st = summ && q && desc ? FKV_OK
                                      : fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "scoring setup");
    if (st == FKV_OK) {
        uint64_t seed = 31;
        for (size_t i = 0; i < summ_floats; i += 2 * d)
            for (size_t c = 0; c < d; c++) {
                float x = (float)(lcg(&seed) % 2001) / 1000.0f - 1.0f;
                float y = (float)(lcg(&seed) % 2001) / 1000.0f - 1.0f;
                summ[i + c] = x < y ? x : y;
                summ[i + d + c] = x < y ? y : x;
            }
        if (o->summary_format == FKV_SUMMARY_F16) { /* minima rounded down, maxima up */
            uint16_t *h = (uint16_t *)summ;
            for (size_t i = 0; i < summ_floats; i++)
                h[i] = i % (2 * d) < d ? fkv_f32_to_f16_down(summ[i]) : fkv_f32_to_f16_up(summ[i]);
        }
        for (size_t i = 0; i < q_floats; i++)
            q[i] = (float)(lcg(&seed) % 2001) / 1000.0f - 1.0f;
        for (uint32_t i = 0; i < batch; i++) {
            int32_t *di = desc + (size_t)FKV_SCORES_DESC_INTS * i;
            di[0] = (int32_t)(i * pages), di[1] = (int32_t)pages;
            di[2] = (int32_t)((size_t)i * hq * pages), di[3] = (int32_t)i;
        }
    }
    if (st == FKV_OK && (st = fkv_op_buffer_alloc(b->dev, summ_bytes, &s->summ)) == FKV_OK &&
        (st = fkv_op_buffer_alloc(b->dev, q_floats * 4, &s->q)) == FKV_OK &&
        (st = fkv_op_buffer_alloc(b->dev, (size_t)batch * FKV_SCORES_DESC_INTS * 4,
                                  &s->desc)) == FKV_OK &&
        (st = fkv_op_buffer_alloc(b->dev, (size_t)s->score_bytes, &s->scores)) == FKV_OK &&
        (st = fkv_op_buffer_alloc(b->dev, rec_bytes, &s->recs)) == FKV_OK &&
        (st = upload(b, s->summ, summ, summ_bytes)) == FKV_OK &&
        (st = upload(b, s->q, q, q_floats * 4)) == FKV_OK)
        st = upload(b, s->desc, desc, (size_t)batch * FKV_SCORES_DESC_INTS * 4);
    free(summ);
    free(q);
    free(desc);
    return st;
}

/* Phase 0: scores; 1: select_pages (after an untimed scores); 2: both. Waits for the end. */
static fkv_status score_once(bench *b, score_setup *s, int phase, clocks *span) {
    fkv_select_params p = {.first_page = 0, .k = b->o->topk,
                           .reduce = FKV_GROUP_SOFTMAX_MEAN, .temp_scale = 1.0f};
    fkv_bevent *done = NULL;
    fkv_deps deps = {0, NULL, phase == 0 ? &done : NULL};
    clocks t0 = clocks_now();
    fkv_status st = fkv_op_scores(b->dev, FKV_QUEUE_COMPUTE, deps, &s->g, s->q, 0, s->batch,
                                  s->desc, 0, NULL, 0, s->summ, s->scores, 0);
    if (st == FKV_OK && phase == 1) {
        st = fkv_op_finish(b->dev, FKV_QUEUE_COMPUTE);
        t0 = clocks_now();
    }
    if (st == FKV_OK && phase > 0)
        st = fkv_op_select_pages(b->dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &done}, &s->g,
                                 s->batch, s->desc, 0, NULL, 0, s->scores, 0, &p, s->recs, 0);
    if (st == FKV_OK)
        st = wait_release(b, done);
    *span = clocks_since(t0);
    return st;
}

static int bench_scoring(bench *b) {
    const options *o = b->o;
    uint32_t max_pages = max_of(o->score_pages, o->n_score_pages);
    uint32_t max_batch = max_of(o->batches, o->n_batches);
    fkv_kv_geom g = {.n_kv_heads = o->kv_heads, .group = o->q_heads / o->kv_heads,
                     .head_dim = o->head_dim, .page_size = o->page, .dtype = o->dtype,
                     .summary_format = o->summary_format};
    size_t copy = (size_t)max_batch * max_pages * fkv_summary_bytes(&g);
    printf("\n(3) page scoring and selection: Hq=%u, Hk=%u, d=%u, %s summaries (%zu bytes a "
           "page), top %u pages by softmax-mean, %u reps (median)\n",
           o->q_heads, o->kv_heads, o->head_dim,
           o->summary_format == FKV_SUMMARY_F16 ? "f16" : "f32", fkv_summary_bytes(&g), o->topk,
           o->reps);
    clocks copy_gbs = memcpy_gbs(copy, o->reps);
    printf("  memcpy, 1 host thread, %.2f MiB: %.2f GB/s, %.2f GB/s per CPU second\n",
           (double)copy / (1 << 20), copy_gbs.wall, copy_gbs.cpu);
    printf("  %-6s %7s %9s %-14s %9s %9s %9s  %s\n", "batch", "pages", "summ MiB", "phase", "ms",
           "GB/s", "GB/s cpu", "device commands per call");
    static const char *const phases[3] = {"scores", "select_pages", "scores+select"};
    double *t = malloc(2 * (size_t)o->reps * sizeof *t);
    spans times = {t, t + o->reps};
    int failed = t == NULL;
    for (uint32_t bi = 0; bi < o->n_batches && t; bi++)
        for (uint32_t pi = 0; pi < o->n_score_pages; pi++) {
            score_setup s;
            fkv_status st = score_init(b, &s, o->batches[bi], o->score_pages[pi]);
            for (int ph = 0; ph < 3 && st == FKV_OK; ph++) {
                fkv_counters c0, c1;
                int counted = 1;
                for (uint32_t rep = 0; rep <= o->reps && st == FKV_OK; rep++) {
                    if (rep == 1)
                        counted = fkv_device_get_counters(b->dev, &c0) == FKV_OK;
                    clocks span;
                    st = score_once(b, &s, ph, &span);
                    if (rep > 0)
                        spans_set(times, rep - 1, span);
                }
                counted = counted && fkv_device_get_counters(b->dev, &c1) == FKV_OK;
                if (st != FKV_OK)
                    break;
                /* GB/s of what the phase reads: the summaries, or select_pages' scores */
                double bytes = ph == 1 ? s.score_bytes : s.summ_bytes;
                clocks gbs = rates(bytes, times, o->reps);
                printf("  %-6u %7u %9.2f %-14s %9.3f %9.2f %9.2f  ", s.batch, s.pages,
                       s.summ_bytes / (1 << 20), phases[ph], bytes / gbs.wall * 1e-6, gbs.wall,
                       gbs.cpu);
                /* select_pages' counts include the untimed scores launch before it */
                print_counts(&c1, &c0, counted, o->reps);
            }
            if (st != FKV_OK) {
                printf("  %-6u %7u n/a: %s\n", o->batches[bi], o->score_pages[pi],
                       fkv_last_error());
                failed = 1;
            }
            score_free(b, &s);
        }
    if (t == NULL)
        printf("  out of host memory\n");
    free(t);
    return failed;
}

/* ---- memory estimate, checked before anything is allocated ---- */

typedef struct need {
    uint64_t host, device, largest; /* bytes; largest: the biggest single device buffer */
} need;

static uint64_t slot_bytes_of(const options *o, fkv_dtype dtype) {
    return (uint64_t)o->page * o->kv_heads * o->head_dim * fkv_dtype_size(dtype);
}

/* (1): the host pool, the K/V pools (and their values on the host) and staging (recall_init),
 * and the engine's two staging buffers of `chunk` units on each side (core/recall.c; 256 units
 * when 0). */
static need recall_need(const options *o) {
    uint64_t unit = 2ull * o->page * o->head_dim * fkv_dtype_size(o->dtype);
    uint64_t units = (uint64_t)max_of(o->pages, o->n_pages) * o->kv_heads;
    uint64_t pools = (uint64_t)max_of(o->pages, o->n_pages) * slot_bytes_of(o, o->dtype);
    uint64_t engine = 2ull * (o->chunk ? o->chunk : 256) * unit;
    need n = {.host = ((uint64_t)o->pool_mib << 20) + units * (sizeof(fkv_recall_unit) + 8) +
                      pools + engine,
              .device = 2 * pools + units * unit + units * 8 + engine,
              .largest = pools > units * unit ? pools : units * unit};
    return n;
}

/* (2) at one batch, in the widest of the attention's dtypes: the K/V slots on the host
 * (filled there) and twice on the device, the query, output and list buffers on both, and on
 * the host the memcpy's source and destination (the K/V bytes the attention reads, each). */
static need attention_need(const options *o, uint32_t batch) {
    fkv_dtype widest = o->attn_dtypes[0];
    for (size_t i = 1; i < o->n_attn_dtypes; i++)
        if (fkv_dtype_size(o->attn_dtypes[i]) > fkv_dtype_size(widest))
            widest = o->attn_dtypes[i];
    uint64_t pages = (o->budget + o->page - 1) / o->page;
    uint64_t kv = (uint64_t)batch * pages * slot_bytes_of(o, widest);
    uint64_t read = 2ull * batch * o->kv_heads * o->budget * o->head_dim * fkv_dtype_size(widest);
    uint64_t q = (uint64_t)batch * o->q_heads * o->head_dim * 4;
    uint64_t lists = (uint64_t)batch * o->kv_heads * 8 * (1 + pages);
    need n = {.host = kv + q + lists + 2 * read, .device = 2 * kv + 2 * q + lists, .largest = kv};
    return n;
}

static double gib(uint64_t b) { return (double)b / (double)(1ull << 30); }

/* 0 when `n` fits the device's memory and three quarters of the host's RAM (device memory
 * counted against RAM too when the device is the host's CPU); else a message naming `what`
 * and the numbers. */
static int check_need(const fkv_device_info *info, need n, const char *what) {
    long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
    uint64_t ram = pages > 0 && psize > 0 ? (uint64_t)pages * (uint64_t)psize : 0;
    uint64_t ram_cap = ram / 4 * 3;
    int shared = info->type == FKV_DEVICE_CPU || info->type == FKV_DEVICE_REFERENCE;
    const char *why = NULL;
    if (ram && (shared ? n.host + n.device : n.host) > ram_cap)
        why = shared ? "together more than 3/4 of the host's RAM, which this CPU device shares"
                     : "host memory beyond 3/4 of the host's RAM";
    else if (info->memory_bytes && n.device > info->memory_bytes)
        why = "more than the device's memory";
    else if (info->max_buffer_bytes && n.largest > info->max_buffer_bytes)
        why = "a buffer larger than the device's largest allocation";
    if (why == NULL)
        return 0;
    fprintf(stderr,
            TOOL ": %s needs about %.2f GiB of host and %.2f GiB of device memory (largest "
            "buffer %.2f GiB): %s (RAM %.2f GiB, device %.2f GiB, largest allocation %.2f "
            "GiB); nothing was allocated\n",
            what, gib(n.host), gib(n.device), gib(n.largest), why, gib(ram),
            gib(info->memory_bytes), gib(info->max_buffer_bytes));
    return -1;
}

/* (3) at one batch and page count: summaries on the host (filled there) and on the device,
 * queries, scores and records; plus the two host buffers of the memcpy measurement. */
static need scoring_need(const options *o, uint32_t batch, uint32_t pages) {
    uint64_t n_summ = (uint64_t)batch * pages;
    uint64_t summ = n_summ * o->kv_heads * 2 * o->head_dim * 4;
    uint64_t copy = 2ull * max_of(o->batches, o->n_batches) *
                    max_of(o->score_pages, o->n_score_pages) * o->kv_heads * 2 * o->head_dim * 4;
    uint64_t scores = n_summ * o->q_heads * 4, q = (uint64_t)batch * o->q_heads * o->head_dim * 4;
    need n = {.host = summ + q + copy,
              .device = summ + scores + q + (uint64_t)batch * o->kv_heads * 8 * o->topk,
              .largest = summ > scores ? summ : scores};
    return n;
}

/* Every section of the run that --only leaves: recall with the largest --pages and the pool,
 * attention and scoring at each batch (sections allocate one after another, so each is
 * checked alone). */
static int check_memory(const fkv_device_info *info, const options *o) {
    char what[96];
    snprintf(what, sizeof what, "recall (--pages %u, --pool-mib %u)", max_of(o->pages, o->n_pages),
             o->pool_mib);
    if (o->recall && check_need(info, recall_need(o), what) != 0)
        return -1;
    for (size_t i = 0; i < o->n_batches && o->attention; i++) {
        snprintf(what, sizeof what, "attention at --batches %u (--budget %u)", o->batches[i],
                 o->budget);
        if (check_need(info, attention_need(o, o->batches[i]), what) != 0)
            return -1;
    }
    for (size_t i = 0; i < o->n_batches && o->scoring; i++) {
        snprintf(what, sizeof what, "scoring at --batches %u (--score-pages %u)", o->batches[i],
                 max_of(o->score_pages, o->n_score_pages));
        if (check_need(info, scoring_need(o, o->batches[i],
                                          max_of(o->score_pages, o->n_score_pages)), what) != 0)
            return -1;
    }
    return 0;
}

int fkv_opbench_main(int argc, char **argv) {
    options o;
    int pr = parse(argc, argv, &o);
    if (pr != 0)
        return pr > 0 ? 0 : 2;
    fkv_device *dev = NULL;
    fkv_status st = fkv_device_open(o.backend, o.device, &dev);
    if (st != FKV_OK) {
        fprintf(stderr, TOOL ": %s\n", fkv_last_error());
        return st == FKV_ERR_BAD_ENVIRONMENT || st == FKV_ERR_INVALID_ARGUMENT ? 2 : 1;
    }
    fkv_device_info info;
    fkv_device_get_info(dev, &info);
    if (check_memory(&info, &o) != 0) {
        fkv_device_close(dev);
        return 2;
    }
    char caps[160];
    fkv_caps_string(info.caps, caps, sizeof caps);
    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    printf("freekv-opbench %s\n", date);
    printf("device: %s #%u %s (%s), driver %s\n", info.backend, info.index, info.name,
           fkv_device_type_name(info.type), info.driver);
    printf("caps: %s\n", caps);

    bench b = {dev, &o};
    fkv_pool *pool = NULL;
    if (fkv_pool_create(0, &pool) != FKV_OK)
        pool = NULL; /* the engine then gathers on the calling thread */
    int failed = o.recall ? bench_recall(&b, pool) : 0;
    failed |= o.attention ? bench_attention(&b) : 0;
    failed |= o.scoring ? bench_scoring(&b) : 0;
    fkv_pool_destroy(pool);
    fkv_device_close(dev);
    if (failed)
        fprintf(stderr, TOOL ": a measurement failed (see the n/a lines above)\n");
    return failed ? 1 : 0;
}
