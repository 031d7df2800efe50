/* freekv-opbench: device op throughput for one backend/device.
 *
 * (1) Recall of random (page, KV head) units of a Llama-3.1-8B-shaped layer (8 KV heads,
 *     bf16, p=32, d=128: 16 KiB per unit) out of a pinned host pool, per mechanism:
 *       perpage  one write per unit into device staging, then one scatter kernel
 *       engine:* the core's recall engine (core/recall.h) in perpage, staged, direct mode
 * (2) Paged decode attention at a 2048-token budget (Hq=32, Hk=8, d=128, bf16) for batch 1
 *     and 4: time and effective GB/s of K/V bytes read.
 * Plain numbers on stdout; timings are medians of --reps runs after one warm-up run. The
 * device comes from --backend/--device or FREEKV_BACKEND/FREEKV_DEVICE. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backends/device.h"
#include "common/dtype.h"
#include "common/error.h"
#include "core/recall.h"
#include "core/threadpool.h"
#include "freekv.h"
#ifdef FKV_HAVE_OPENCL
#include "opencl/ocl_debug.h"
#endif
#ifdef FKV_HAVE_VULKAN
#include "vulkan/vk_debug.h"
#endif
#ifdef FKV_HAVE_HIP
#include "hip/hip_debug.h"
#endif

#define MAX_LIST 8

typedef struct options {
    const char *backend, *device;
    uint32_t kv_heads, q_heads, head_dim, page, budget;
    uint32_t pages[MAX_LIST], n_pages;
    uint32_t batches[MAX_LIST], n_batches;
    size_t pool_mib;
    uint32_t reps, chunk;
    fkv_dtype dtype;
} options;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *x, uint32_t n) {
    qsort(x, n, sizeof *x, cmp_double);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

static uint32_t parse_list(const char *s, uint32_t *out) {
    uint32_t n = 0;
    while (*s && n < MAX_LIST) {
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (end == s || v == 0)
            return 0;
        out[n++] = (uint32_t)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return 0;
    }
    return n;
}

static void usage(void) {
    printf("usage: freekv-opbench [--quick] [--backend NAME] [--device SEL] [--pages 32,64]\n"
           "       [--batches 1,4] [--pool-mib N] [--reps N] [--chunk UNITS] [--budget TOKENS]\n"
           "       [--dtype f32|f16|bf16]\n"
           "  --quick: a 64 MiB host pool and 3 repetitions (a few seconds on a CPU device)\n");
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
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0) {
            o->pool_mib = 64;
            o->reps = 3;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage();
            return 1;
        }
        if (v == NULL) {
            fprintf(stderr, "opbench: %s needs a value\n", a);
            return -1;
        }
        i++;
        if (strcmp(a, "--backend") == 0)
            o->backend = v;
        else if (strcmp(a, "--device") == 0)
            o->device = v;
        else if (strcmp(a, "--pages") == 0 && (o->n_pages = parse_list(v, o->pages)) > 0)
            ;
        else if (strcmp(a, "--batches") == 0 && (o->n_batches = parse_list(v, o->batches)) > 0)
            ;
        else if (strcmp(a, "--pool-mib") == 0 && atoi(v) > 0)
            o->pool_mib = (size_t)atoi(v);
        else if (strcmp(a, "--reps") == 0 && atoi(v) > 0)
            o->reps = (uint32_t)atoi(v);
        else if (strcmp(a, "--chunk") == 0 && atoi(v) >= 0)
            o->chunk = (uint32_t)atoi(v);
        else if (strcmp(a, "--budget") == 0 && atoi(v) > 0)
            o->budget = (uint32_t)atoi(v);
        else if (strcmp(a, "--dtype") == 0 && strcmp(v, "f32") == 0)
            o->dtype = FKV_F32;
        else if (strcmp(a, "--dtype") == 0 && strcmp(v, "f16") == 0)
            o->dtype = FKV_F16;
        else if (strcmp(a, "--dtype") == 0 && strcmp(v, "bf16") == 0)
            o->dtype = FKV_BF16;
        else {
            fprintf(stderr, "opbench: bad option %s %s\n", a, v);
            usage();
            return -1;
        }
    }
    return 0;
}

/* ---- small helpers over the ops table ---- */

typedef struct bench {
    const fkv_backend_ops *ops;
    fkv_bdev *dev;
    const options *o;
} bench;

/* The backend's split-attention override (0 automatic, 1 never split): 0 when it has none. */
static int set_splits(const bench *b, int splits) {
#ifdef FKV_HAVE_OPENCL
    if (strcmp(b->ops->name, "opencl") == 0) {
        fkv_opencl_debug_set_splits(b->dev, splits);
        return 1;
    }
#endif
#ifdef FKV_HAVE_VULKAN
    if (strcmp(b->ops->name, "vulkan") == 0) {
        fkv_vulkan_debug_set_splits(b->dev, splits);
        return 1;
    }
#endif
#ifdef FKV_HAVE_HIP
    if (strcmp(b->ops->name, "hip") == 0) {
        fkv_hip_debug_set_splits(b->dev, splits);
        return 1;
    }
#endif
    (void)b;
    (void)splits;
    return 0;
}

static fkv_status wait_release(bench *b, fkv_bevent *ev) {
    fkv_status st = b->ops->event_wait(b->dev, 1, &ev);
    b->ops->event_release(b->dev, ev);
    return st;
}

static fkv_status upload(bench *b, fkv_bbuf *dst, const void *src, size_t size) {
    fkv_bevent *ev = NULL;
    fkv_status st = b->ops->write(b->dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &ev}, dst, 0,
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

/* ---- (1) recall ---- */

typedef struct recall_setup {
    fkv_kv_geom g;
    size_t unit_bytes;
    fkv_bhost *host;
    unsigned char *host_ptr;
    size_t host_units; /* (page, head) units in the host pool */
    fkv_bbuf *kpool, *vpool, *staging, *index;
    uint32_t max_units;
} recall_setup;

static void recall_free(bench *b, recall_setup *r) {
    if (r->host)
        b->ops->host_free(b->dev, r->host);
    fkv_bbuf *bufs[4] = {r->kpool, r->vpool, r->staging, r->index};
    for (int i = 0; i < 4; i++)
        if (bufs[i])
            b->ops->buffer_free(b->dev, bufs[i]);
}

static fkv_status recall_init(bench *b, recall_setup *r) {
    const options *o = b->o;
    memset(r, 0, sizeof *r);
    r->g = (fkv_kv_geom){o->kv_heads, o->q_heads / o->kv_heads, o->head_dim, o->page, o->dtype};
    r->unit_bytes = 2 * (size_t)o->page * o->head_dim * fkv_dtype_size(o->dtype);
    uint32_t max_pages = 0;
    for (uint32_t i = 0; i < o->n_pages; i++)
        max_pages = o->pages[i] > max_pages ? o->pages[i] : max_pages;
    r->max_units = max_pages * o->kv_heads;
    size_t host_bytes = o->pool_mib << 20;
    r->host_units = host_bytes / r->unit_bytes;
    if (r->host_units < (size_t)r->max_units)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "host pool too small for %u units",
                         r->max_units);
    size_t slot_bytes = (size_t)o->page * o->kv_heads * o->head_dim * fkv_dtype_size(o->dtype);
    void *p;
    fkv_status st;
    if ((st = b->ops->host_alloc(b->dev, host_bytes, &r->host, &p)) != FKV_OK ||
        (st = b->ops->buffer_alloc(b->dev, max_pages * slot_bytes, &r->kpool)) != FKV_OK ||
        (st = b->ops->buffer_alloc(b->dev, max_pages * slot_bytes, &r->vpool)) != FKV_OK ||
        (st = b->ops->buffer_alloc(b->dev, r->max_units * r->unit_bytes, &r->staging)) != FKV_OK ||
        (st = b->ops->buffer_alloc(b->dev, (size_t)r->max_units * 8, &r->index)) != FKV_OK)
        return st;
    r->host_ptr = p;
    fill_values(p, host_bytes, o->dtype, 7);
    return FKV_OK;
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
                for (uint32_t k = n - j; k < n && fresh; k++)
                    fresh = units[k].host_offset != (page * r->g.n_kv_heads + h) * r->unit_bytes;
            } while (!fresh);
            uint64_t off = (page * r->g.n_kv_heads + h) * r->unit_bytes;
            units[n] = (fkv_recall_unit){r->host, off, r->host_ptr + off, (int32_t)j, (int32_t)h};
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
    st = b->ops->write(b->dev, FKV_QUEUE_TRANSFER, (fkv_deps){0, NULL, NULL}, r->index, 0, index,
                       (size_t)n * 8);
    for (uint32_t i = 0; i < n && st == FKV_OK; i++)
        st = b->ops->write(b->dev, FKV_QUEUE_TRANSFER,
                           (fkv_deps){0, NULL, i + 1 == n ? &ready : NULL}, r->staging,
                           i * r->unit_bytes, u[i].src, r->unit_bytes);
    if (st == FKV_OK)
        st = b->ops->scatter_hnd(b->dev, FKV_QUEUE_COMPUTE, (fkv_deps){1, &ready, &done}, &r->g,
                                 r->staging, 0, n, r->index, 0, r->kpool, r->vpool);
    if (ready)
        b->ops->event_release(b->dev, ready);
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

static void bench_recall(bench *b, fkv_pool *pool) {
    const options *o = b->o;
    recall_setup r;
    fkv_status st = recall_init(b, &r);
    printf("\n(1) recall: %u KV heads, %s, p=%u, d=%u: %zu KiB per (page, head) unit, host pool "
           "%zu MiB (%s), %u reps (median)\n",
           o->kv_heads, fkv_dtype_name(o->dtype), o->page, o->head_dim, r.unit_bytes >> 10,
           o->pool_mib, "pinned, host_alloc", o->reps);
    if (st != FKV_OK) {
        printf("  setup failed: %s\n", fkv_last_error());
        recall_free(b, &r);
        return;
    }
    printf("  device recall mode (default): %s\n", mode_name(fkv_op_recall_mode(b->ops, b->dev)));
    printf("  %-16s %6s %7s %9s %10s  %s\n", "mechanism", "pages", "units", "MiB", "ms",
           "GB/s effective");
    fkv_recall_unit *units = malloc(r.max_units * sizeof *units);
    int32_t *index = malloc((size_t)r.max_units * 8);
    double *t = malloc(o->reps * sizeof *t);
    if (units == NULL || index == NULL || t == NULL) {
        printf("  out of host memory\n");
        goto out;
    }
    static const fkv_recall_mode engine_modes[] = {FKV_RECALL_PERPAGE, FKV_RECALL_STAGED,
                                                   FKV_RECALL_DIRECT};
    for (int m = -1; m < 3; m++) {
        fkv_recaller *rc = NULL;
        char name[32];
        snprintf(name, sizeof name, m < 0 ? "perpage" : "engine:%s",
                 m < 0 ? "" : mode_name(engine_modes[m]));
        if (m >= 0) {
            if (engine_modes[m] == FKV_RECALL_DIRECT && b->ops->recall_direct == NULL) {
                printf("  %-16s n/a (backend has no recall_direct)\n", name);
                continue;
            }
            st = fkv_recaller_create(b->ops, b->dev, &r.g, engine_modes[m], o->chunk, &rc);
            if (st != FKV_OK) {
                printf("  %-16s n/a: %s\n", name, fkv_last_error());
                continue;
            }
            fkv_recaller_set_pool(rc, pool);
        }
        for (uint32_t pi = 0; pi < o->n_pages; pi++) {
            uint32_t n = o->pages[pi] * o->kv_heads;
            st = FKV_OK;
            for (uint32_t rep = 0; rep <= o->reps && st == FKV_OK; rep++) {
                pick_units(&r, o->pages[pi], 1000 + rep, units, index);
                double t0 = now_s();
                st = rc ? run_engine(b, rc, &r, n, units) : run_perpage(b, &r, n, units, index);
                if (rep > 0) /* rep 0 warms up (program builds, first touches) */
                    t[rep - 1] = now_s() - t0;
            }
            if (st != FKV_OK) {
                printf("  %-16s %6u n/a: %s\n", name, o->pages[pi], fkv_last_error());
                break;
            }
            double s = median(t, o->reps), bytes = (double)n * (double)r.unit_bytes;
            printf("  %-16s %6u %7u %9.2f %10.3f  %.2f\n", name, o->pages[pi], n,
                   bytes / (1 << 20), s * 1e3, bytes / s * 1e-9);
        }
        fkv_recaller_destroy(rc);
    }
out:
    free(units);
    free(index);
    free(t);
    recall_free(b, &r);
}

/* ---- (2) attention ---- */

static fkv_status attention_once(bench *b, const fkv_kv_geom *g, fkv_bbuf *q, uint32_t batch,
                                 fkv_bbuf *heads, fkv_bbuf *entries, fkv_bbuf *kp, fkv_bbuf *vp,
                                 fkv_bbuf *out) {
    fkv_bevent *done = NULL;
    fkv_status st = b->ops->attention(b->dev, FKV_QUEUE_COMPUTE, (fkv_deps){0, NULL, &done}, g, q,
                                      0, batch, heads, 0, entries, 0, kp, vp,
                                      1.0f / 11.3137085f, out, 0);
    return st == FKV_OK ? wait_release(b, done) : st;
}

static void bench_attention(bench *b) {
    const options *o = b->o;
    fkv_kv_geom g = {o->kv_heads, o->q_heads / o->kv_heads, o->head_dim, o->page, o->dtype};
    uint32_t pages = (o->budget + o->page - 1) / o->page;
    printf("\n(2) paged decode attention: budget %u tokens (%u pages of %u), Hq=%u, Hk=%u, d=%u, "
           "%s, %u reps (median)\n",
           o->budget, pages, o->page, o->q_heads, o->kv_heads, o->head_dim,
           fkv_dtype_name(o->dtype), o->reps);
    int has_splits = set_splits(b, 0);
    printf("  %-6s %-8s %9s %10s  %s\n", "batch", "splits", "KV MiB", "ms", "GB/s of K/V read");
    double *t = malloc(o->reps * sizeof *t);
    for (uint32_t bi = 0; bi < o->n_batches && t; bi++) {
        uint32_t batch = o->batches[bi];
        size_t slot_bytes = (size_t)o->page * o->kv_heads * o->head_dim * fkv_dtype_size(o->dtype);
        size_t n_slots = (size_t)batch * pages, n_bh = (size_t)batch * o->kv_heads;
        size_t qn = (size_t)batch * o->q_heads * o->head_dim;
        fkv_bbuf *kp = NULL, *vp = NULL, *qb = NULL, *hb = NULL, *eb = NULL, *ob = NULL;
        int32_t *heads = malloc(n_bh * 8), *entries = malloc(n_bh * pages * 8);
        float *q = malloc(qn * 4);
        void *kv = malloc(n_slots * slot_bytes);
        fkv_status st = heads && entries && q && kv ? FKV_OK : FKV_ERR_OUT_OF_HOST_MEMORY;
        if (st == FKV_OK)
            st = b->ops->buffer_alloc(b->dev, n_slots * slot_bytes, &kp);
        if (st == FKV_OK)
            st = b->ops->buffer_alloc(b->dev, n_slots * slot_bytes, &vp);
        if (st == FKV_OK)
            st = b->ops->buffer_alloc(b->dev, qn * 4, &qb);
        if (st == FKV_OK)
            st = b->ops->buffer_alloc(b->dev, n_bh * 8, &hb);
        if (st == FKV_OK)
            st = b->ops->buffer_alloc(b->dev, n_bh * pages * 8, &eb);
        if (st == FKV_OK)
            st = b->ops->buffer_alloc(b->dev, qn * 4, &ob);
        if (st == FKV_OK) {
            uint64_t seed = 99;
            /* Each (sequence, head) reads its sequence's slots in a shuffled order; the last
             * page is partial when the budget is not a multiple of the page. */
            for (size_t bh = 0; bh < n_bh; bh++) {
                size_t bseq = bh / o->kv_heads;
                heads[2 * bh] = (int32_t)(bh * pages);
                heads[2 * bh + 1] = (int32_t)pages;
                for (uint32_t j = 0; j < pages; j++) {
                    uint32_t k = (uint32_t)(lcg(&seed) % (j + 1));
                    int32_t *e = entries + 2 * (bh * pages + j);
                    e[0] = entries[2 * (bh * pages + k)];
                    entries[2 * (bh * pages + k)] = (int32_t)(bseq * pages + j);
                }
                for (uint32_t j = 0; j < pages; j++) {
                    uint32_t left = o->budget - j * o->page;
                    entries[2 * (bh * pages + j) + 1] = (int32_t)(left < o->page ? left : o->page);
                }
            }
            for (size_t i = 0; i < qn; i++)
                q[i] = (float)(lcg(&seed) % 2001) / 1000.0f - 1.0f;
            fill_values(kv, n_slots * slot_bytes, o->dtype, 5);
            if ((st = upload(b, kp, kv, n_slots * slot_bytes)) == FKV_OK &&
                (st = upload(b, vp, kv, n_slots * slot_bytes)) == FKV_OK &&
                (st = upload(b, qb, q, qn * 4)) == FKV_OK &&
                (st = upload(b, hb, heads, n_bh * 8)) == FKV_OK)
                st = upload(b, eb, entries, n_bh * pages * 8);
        }
        /* K/V bytes each attention reads: every listed token of every (sequence, KV head). */
        double bytes = (double)n_bh * o->budget * o->head_dim * fkv_dtype_size(o->dtype) * 2;
        for (int variant = 0; variant < (has_splits ? 2 : 1) && st == FKV_OK; variant++) {
            const char *split = "auto";
            if (has_splits) {
                set_splits(b, variant); /* 0 auto, 1 never */
                split = variant ? "off" : "auto";
            }
            for (uint32_t rep = 0; rep <= o->reps && st == FKV_OK; rep++) {
                double t0 = now_s();
                st = attention_once(b, &g, qb, batch, hb, eb, kp, vp, ob);
                if (rep > 0)
                    t[rep - 1] = now_s() - t0;
            }
            if (st == FKV_OK) {
                double s = median(t, o->reps);
                printf("  %-6u %-8s %9.2f %10.3f  %.2f\n", batch, split, bytes / (1 << 20),
                       s * 1e3, bytes / s * 1e-9);
            }
        }
        set_splits(b, 0);
        if (st != FKV_OK)
            printf("  %-6u n/a: %s\n", batch, fkv_last_error());
        fkv_bbuf *bufs[6] = {kp, vp, qb, hb, eb, ob};
        for (int i = 0; i < 6; i++)
            if (bufs[i])
                b->ops->buffer_free(b->dev, bufs[i]);
        free(heads);
        free(entries);
        free(q);
        free(kv);
    }
    free(t);
}

int main(int argc, char **argv) {
    options o;
    int pr = parse(argc, argv, &o);
    if (pr != 0)
        return pr > 0 ? 0 : 2;
    if (o.kv_heads == 0 || o.q_heads % o.kv_heads) {
        fprintf(stderr, "opbench: query heads must be a multiple of KV heads\n");
        return 2;
    }
    fkv_device *dev = NULL;
    fkv_status st = fkv_device_open(o.backend, o.device, &dev);
    if (st != FKV_OK) {
        fprintf(stderr, "opbench: %s\n", fkv_last_error());
        return 1;
    }
    fkv_device_info info;
    fkv_device_get_info(dev, &info);
    char caps[160];
    fkv_caps_string(info.caps, caps, sizeof caps);
    time_t now = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    printf("freekv-opbench %s\n", date);
    printf("device: %s #%u %s (%s), driver %s\n", info.backend, info.index, info.name,
           fkv_device_type_name(info.type), info.driver);
    printf("caps: %s\n", caps);

    bench b = {dev->ops, dev->bdev, &o};
    fkv_pool *pool = NULL;
    if (fkv_pool_create(0, &pool) != FKV_OK)
        pool = NULL; /* the engine then gathers on the calling thread */
    bench_recall(&b, pool);
    bench_attention(&b);
    fkv_pool_destroy(pool);
    fkv_device_close(dev);
    return 0;
}
