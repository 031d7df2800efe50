/* Traces: the synthetic generator, the trace-directory loader and writer. */
#include "trace.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/error.h"
#include "header.h"
#include "npy.h"

struct fkv_trace {
    fkv_trace_info info;
    float **k, **v, **q; /* [layers] arrays, see trace.h */
    fkv_needle *needles;
    size_t n_needles;
};

/* ---- random numbers (splitmix64; Box-Muller) --------------------------------------------- */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t next_u64(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform(rng *r) { return (double)(next_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

static uint32_t below_n(rng *r, uint32_t n) { return (uint32_t)(uniform(r) * n) % (n ? n : 1); }

static float normal(rng *r) {
    double u1 = uniform(r), u2 = uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void fill_normal(rng *r, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++)
        x[i] = normal(r) * scale;
}

static void random_unit(rng *r, float *x, uint32_t d) {
    double n2 = 0;
    for (uint32_t c = 0; c < d; c++) {
        x[c] = normal(r);
        n2 += (double)x[c] * x[c];
    }
    float inv = (float)(1.0 / sqrt(n2 > 0 ? n2 : 1.0));
    for (uint32_t c = 0; c < d; c++)
        x[c] *= inv;
}

/* An independent stream per (layer, KV head), so one head's data does not depend on how
 * many heads or layers were generated before it. */
static rng stream(uint64_t seed, uint32_t layer, uint32_t head, uint32_t what) {
    rng r = {seed ^ 0x5851f42d4c957f2dull};
    r.s ^= next_u64(&r) + ((uint64_t)layer << 40 | (uint64_t)head << 8 | what);
    next_u64(&r);
    return r;
}

/* ---- synthetic generator ----------------------------------------------------------------- */

void fkv_synth_defaults(fkv_synth_params *p) {
    memset(p, 0, sizeof *p);
    p->layers = 4;
    p->q_heads = 8;
    p->kv_heads = 2;
    p->head_dim = 64;
    p->prompt_tokens = 4096;
    p->decode_steps = 32;
    p->seed = 1;
    p->drift = 0.8f;
    p->jump_prob = 0.02f;
    p->sink_tokens = 4;
    p->sink_logit = 8.0f;
    p->locality = 24.0f;
    p->local_logit = 5.0f;
    p->topics = 8;
    p->heavy_pages = 16;
    p->heavy_span = 16;
    p->heavy_logit = 10.0f;
    p->key_noise = 0.4f;
    p->needles = 2;
    p->needle_logit = 12.0f;
}

#define BADP(...) fkv_error(FKV_ERR_INVALID_ARGUMENT, __VA_ARGS__)

fkv_status fkv_synth_validate(const fkv_synth_params *p) {
    if (p == NULL)
        return BADP("synthetic trace parameters are NULL");
    if (p->layers < 1 || p->layers > 1024)
        return BADP("--layers %u: must be 1..1024", p->layers);
    if (p->kv_heads < 1 || p->kv_heads > 1024)
        return BADP("--kv-heads %u: must be 1..1024", p->kv_heads);
    if (p->q_heads < 1 || p->q_heads > 4096 || p->q_heads % p->kv_heads != 0)
        return BADP("--q-heads %u: must be 1..4096 and a multiple of --kv-heads (%u)", p->q_heads,
                    p->kv_heads);
    if (p->head_dim < 16 || p->head_dim > 256 || p->head_dim % 4 != 0)
        return BADP("--head-dim %u: must be 16..256 and a multiple of 4", p->head_dim);
    if (p->prompt_tokens < 16 || p->prompt_tokens > (1u << 22))
        return BADP("--context %u: must be 16..4194304", p->prompt_tokens);
    if (p->decode_steps < 1 || p->decode_steps > 65536)
        return BADP("--steps %u: must be 1..65536", p->decode_steps);
    uint64_t elems = (uint64_t)p->layers * (p->prompt_tokens + p->decode_steps) * p->kv_heads *
                     p->head_dim * 2 +
                     (uint64_t)p->layers * (p->decode_steps + 1) * p->q_heads * p->head_dim;
    if (elems > (1ull << 32)) /* 16 GiB of f32: more than any evaluation here needs */
        return BADP("the synthetic trace would hold %llu values (limit 2^32): shrink --layers, "
                    "--context, --steps or the heads", (unsigned long long)elems);
    if (!(p->drift >= 0.0f && p->drift <= 1.0f))
        return BADP("--drift %g: must be in [0, 1]", (double)p->drift);
    if (!(p->jump_prob >= 0.0f && p->jump_prob <= 1.0f))
        return BADP("--jump-prob %g: must be in [0, 1]", (double)p->jump_prob);
    if (p->sink_tokens > p->prompt_tokens / 2)
        return BADP("--sink-tokens %u: must be at most half the prompt", p->sink_tokens);
    if (!(p->locality >= 0.5f && p->locality <= 1e6f))
        return BADP("--locality %g: must be in [0.5, 1e6] tokens", (double)p->locality);
    if (p->topics < 1 || p->topics > 1024)
        return BADP("--topics %u: must be 1..1024", p->topics);
    if (p->heavy_span < 1 || p->heavy_span > p->prompt_tokens / 4)
        return BADP("--heavy-span %u: must be 1..%u (a quarter of the prompt)", p->heavy_span,
                    p->prompt_tokens / 4);
    if (p->heavy_pages > 4096)
        return BADP("--heavy-pages %u: must be at most 4096", p->heavy_pages);
    if (!(p->key_noise >= 0.0f && p->key_noise <= 100.0f))
        return BADP("--key-noise %g: must be in [0, 100]", (double)p->key_noise);
    if (p->needles > p->decode_steps)
        return BADP("--needles %u: at most one per decode step (--steps %u)", p->needles,
                    p->decode_steps);
    const float logits[] = {p->sink_logit, p->local_logit, p->heavy_logit, p->needle_logit};
    const char *names[] = {"--sink-logit", "--local-logit", "--heavy-logit", "--needle-logit"};
    for (int i = 0; i < 4; i++)
        if (!(logits[i] >= 0.0f && logits[i] <= 100.0f))
            return BADP("%s %g: must be in [0, 100]", names[i], (double)logits[i]);
    return FKV_OK;
}

void fkv_trace_free(fkv_trace *t) {
    if (t == NULL)
        return;
    for (uint32_t l = 0; l < t->info.layers; l++) {
        if (t->k)
            free(t->k[l]);
        if (t->v)
            free(t->v[l]);
        if (t->q)
            free(t->q[l]);
    }
    free(t->k);
    free(t->v);
    free(t->q);
    free(t->needles);
    free(t);
}

/* The trace object with its per-layer pointer arrays (not the arrays themselves). */
static fkv_status trace_alloc(uint32_t layers, fkv_trace **out) {
    fkv_trace *t = calloc(1, sizeof *t);
    if (t == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "trace");
    t->info.layers = layers;
    t->k = calloc(layers, sizeof *t->k);
    t->v = calloc(layers, sizeof *t->v);
    t->q = calloc(layers, sizeof *t->q);
    if (!t->k || !t->v || !t->q) {
        fkv_trace_free(t);
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "trace");
    }
    *out = t;
    return FKV_OK;
}

static void axpy(float *y, const float *x, float a, uint32_t d) {
    for (uint32_t c = 0; c < d; c++)
        y[c] += a * x[c];
}

/* Scratch for one (layer, KV head). */
typedef struct gen_scratch {
    float *pos;    /* [T][d] positional process, |pos(t)| about 1 */
    float *sink;   /* [d] */
    float *topic;  /* [M][d] */
    float *needle; /* [d] */
    float *mix;    /* [G][M] topic weights of each query head's moving part */
    float *noise;  /* [G][d] the rest of the moving part */
    float *weight; /* [G][3] per-head scale of the sink, positional and topic parts */
    float *tmp;    /* [d] */
} gen_scratch;

/* Draws the moving part of one query head from its stationary distribution. */
static void draw_moving(rng *r, float *mix, float *noise, uint32_t M, uint32_t d) {
    fill_normal(r, mix, M, 1.0f / sqrtf((float)M));
    fill_normal(r, noise, d, 1.0f / sqrtf((float)d));
}

#define NEEDLE_CHANNELS 4

static void generate_head(const fkv_synth_params *p, fkv_trace *t, uint32_t l, uint32_t h,
                          gen_scratch *s) {
    const uint32_t d = p->head_dim, P = p->prompt_tokens, S = p->decode_steps, T = P + S;
    const uint32_t Hk = p->kv_heads, Hq = p->q_heads, G = Hq / Hk, M = p->topics;
    float *K = t->k[l], *V = t->v[l], *Q = t->q[l];
    rng r = stream(p->seed, l, h, 0);

    random_unit(&r, s->sink, d);
    for (uint32_t m = 0; m < M; m++)
        random_unit(&r, s->topic + (size_t)m * d, d);

    /* positional component: an AR(1) walk over tokens, so nearby tokens (and the current
     * query) share it: local-window locality that decays over `locality` tokens */
    float rho = expf(-1.0f / p->locality), inn = sqrtf(1.0f - rho * rho) / sqrtf((float)d);
    fill_normal(&r, s->pos, d, 1.0f / sqrtf((float)d));
    for (uint32_t tok = 1; tok < T; tok++) {
        float *z = s->pos + (size_t)tok * d, *prev = z - d;
        for (uint32_t c = 0; c < d; c++)
            z[c] = rho * prev[c] + inn * normal(&r);
    }

    /* keys: noise + positional part; sinks; heavy-hitter spans on a topic */
    for (uint32_t tok = 0; tok < T; tok++) {
        float *k = K + ((size_t)tok * Hk + h) * d, *v = V + ((size_t)tok * Hk + h) * d;
        fill_normal(&r, k, d, p->key_noise);
        axpy(k, s->pos + (size_t)tok * d, p->local_logit, d);
        if (tok < p->sink_tokens)
            axpy(k, s->sink, p->sink_logit, d);
        /* sink values are small in real models: the sink absorbs attention, adds little */
        fill_normal(&r, v, d, tok < p->sink_tokens ? 0.1f : 1.0f);
    }
    uint32_t lo = p->sink_tokens, hi = P - p->heavy_span; /* spans lie inside the prompt */
    for (uint32_t i = 0; i < p->heavy_pages && hi > lo; i++) {
        uint32_t start = lo + below_n(&r, hi - lo), m = below_n(&r, M);
        float strength = p->heavy_logit * (0.75f + 0.5f * (float)uniform(&r));
        for (uint32_t tok = start; tok < start + p->heavy_span; tok++)
            axpy(K + ((size_t)tok * Hk + h) * d, s->topic + (size_t)m * d, strength, d);
    }

    /* queries: per head, sink + positional part of its own position + a moving part
     * (topic mix and noise) that follows an AR(1) step to step and sometimes jumps */
    float a = p->drift, b = sqrtf(1.0f - a * a);
    for (uint32_t j = 0; j < G; j++) {
        for (int w = 0; w < 3; w++) /* head-to-head variety: some lean local, some on topics */
            s->weight[j * 3 + w] = expf(0.3f * normal(&r));
        draw_moving(&r, s->mix + (size_t)j * M, s->noise + (size_t)j * d, M, d);
    }
    for (uint32_t row = 0; row <= S; row++) {
        uint32_t tok = P - 1 + row;
        for (uint32_t j = 0; j < G; j++) {
            float *mix = s->mix + (size_t)j * M, *noise = s->noise + (size_t)j * d;
            if (row > 0) {
                if (uniform(&r) < p->jump_prob) {
                    draw_moving(&r, mix, noise, M, d);
                } else {
                    for (uint32_t m = 0; m < M; m++)
                        mix[m] = a * mix[m] + b * normal(&r) / sqrtf((float)M);
                    for (uint32_t c = 0; c < d; c++)
                        noise[c] = a * noise[c] + b * normal(&r) / sqrtf((float)d);
                }
            }
            float *q = Q + ((size_t)row * Hq + h * G + j) * d;
            const float *wt = s->weight + j * 3;
            memcpy(q, noise, sizeof(float) * d);
            axpy(q, s->sink, wt[0], d);
            axpy(q, s->pos + (size_t)tok * d, wt[1], d);
            for (uint32_t m = 0; m < M; m++)
                axpy(q, s->topic + (size_t)m * d, wt[2] * mix[m], d);
            /* keys are in logit units for a unit query component: scale by sqrt(d) */
            for (uint32_t c = 0; c < d; c++)
                q[c] *= sqrtf((float)d);
        }
    }

    /* needles planted on this head: one key, matched by one query head at one step only */
    for (size_t i = 0; i < t->n_needles; i++) {
        const fkv_needle *n = &t->needles[i];
        if (n->layer != l || n->kv_head != h)
            continue;
        rng nr = stream(p->seed, l, h, 1 + (uint32_t)i);
        /* a direction on a few channels only: a dense one of this strength would widen its
         * page's per-channel bounds for every query and be found without its query */
        memset(s->needle, 0, sizeof(float) * d);
        for (uint32_t c = 0; c < NEEDLE_CHANNELS; c++)
            s->needle[below_n(&nr, d)] += (nr.s & 1 ? 1.0f : -1.0f) * normal(&nr);
        float n2 = 0;
        for (uint32_t c = 0; c < d; c++)
            n2 += s->needle[c] * s->needle[c];
        for (uint32_t c = 0; c < d; c++)
            s->needle[c] /= sqrtf(n2 > 0 ? n2 : 1.0f);
        float *k = K + ((size_t)n->token * Hk + h) * d;
        fill_normal(&nr, k, d, p->key_noise);
        axpy(k, s->needle, p->needle_logit, d);
        float *q = Q + ((size_t)(1 + n->step) * Hq + n->q_head) * d;
        for (uint32_t c = 0; c < d; c++) /* mostly the needle, a little of the usual query */
            q[c] = 0.3f * q[c] + sqrtf((float)d) * s->needle[c];
    }
}

fkv_status fkv_trace_synthetic(const fkv_synth_params *p, fkv_trace **out) {
    if (out == NULL)
        return BADP("fkv_trace_synthetic: NULL output");
    *out = NULL;
    fkv_status st = fkv_synth_validate(p);
    if (st != FKV_OK)
        return st;
    fkv_trace *t;
    st = trace_alloc(p->layers, &t);
    if (st != FKV_OK)
        return st;
    const uint32_t d = p->head_dim, P = p->prompt_tokens, S = p->decode_steps, T = P + S;
    const uint32_t G = p->q_heads / p->kv_heads, M = p->topics;
    t->info = (fkv_trace_info){.layers = p->layers, .q_heads = p->q_heads,
                               .kv_heads = p->kv_heads, .head_dim = p->head_dim,
                               .prompt_tokens = P, .decode_steps = S,
                               .needles = p->needles * p->layers};
    snprintf(t->info.source, sizeof t->info.source, "synthetic (seed %llu)",
             (unsigned long long)p->seed);
    size_t kv_n = (size_t)T * p->kv_heads * d, q_n = (size_t)(S + 1) * p->q_heads * d;
    for (uint32_t l = 0; l < p->layers; l++) {
        t->k[l] = malloc(sizeof(float) * kv_n);
        t->v[l] = malloc(sizeof(float) * kv_n);
        t->q[l] = malloc(sizeof(float) * q_n);
        if (!t->k[l] || !t->v[l] || !t->q[l]) {
            fkv_trace_free(t);
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "synthetic trace (%zu MiB)",
                             (kv_n * 2 + q_n) * sizeof(float) * p->layers >> 20);
        }
    }
    /* needles: distinct decode steps within a layer, tokens in the middle of the prompt
     * (far from the sink and the window at any sensible budget) */
    t->n_needles = (size_t)p->needles * p->layers;
    t->needles = calloc(t->n_needles ? t->n_needles : 1, sizeof *t->needles);
    if (t->needles == NULL) {
        fkv_trace_free(t);
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "needles");
    }
    rng nr = stream(p->seed, 0xffffff, 0, 0);
    for (uint32_t l = 0; l < p->layers; l++) {
        for (uint32_t i = 0; i < p->needles; i++) {
            fkv_needle *n = &t->needles[(size_t)l * p->needles + i];
            n->layer = l;
            n->kv_head = below_n(&nr, p->kv_heads);
            n->q_head = n->kv_head * G + below_n(&nr, G);
            for (;;) { /* a step no earlier needle of this layer uses */
                n->step = below_n(&nr, S);
                int taken = 0;
                for (uint32_t e = 0; e < i; e++)
                    taken |= t->needles[(size_t)l * p->needles + e].step == n->step;
                if (!taken)
                    break;
            }
            n->token = P / 8 + below_n(&nr, P - P / 4);
        }
    }
    gen_scratch s;
    s.pos = malloc(sizeof(float) * (size_t)T * d);
    float *small = malloc(sizeof(float) * (3 * (size_t)d + (size_t)M * d + (size_t)G * (M + d + 3)));
    if (s.pos == NULL || small == NULL) {
        free(s.pos);
        free(small);
        fkv_trace_free(t);
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "synthetic trace scratch");
    }
    s.sink = small;
    s.needle = s.sink + d;
    s.tmp = s.needle + d;
    s.topic = s.tmp + d;
    s.mix = s.topic + (size_t)M * d;
    s.noise = s.mix + (size_t)G * M;
    s.weight = s.noise + (size_t)G * d;
    for (uint32_t l = 0; l < p->layers; l++)
        for (uint32_t h = 0; h < p->kv_heads; h++)
            generate_head(p, t, l, h, &s);
    free(s.pos);
    free(small);
    *out = t;
    return FKV_OK;
}

/* ---- trace directories ------------------------------------------------------------------- */

static fkv_status join(char *buf, size_t cap, const char *dir, const char *name) {
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "path too long: %s/%s", dir, name);
    return FKV_OK;
}

/* Keeps the needles inside the --layers / --steps limits, in file order. */
static size_t keep_needles(fkv_needle *n, size_t count, const fkv_trace_info *info) {
    size_t kept = 0;
    for (size_t i = 0; i < count; i++)
        if (n[i].layer < info->layers && n[i].step < info->decode_steps)
            n[kept++] = n[i];
    return kept;
}

/* The header and needles of a trace directory, with the --layers / --steps limits applied.
 * *needles (NULL: only counted) receives the kept needles, the caller's to free. */
static fkv_status dir_header(const char *dir, uint32_t max_layers, uint32_t max_steps,
                             fkv_trace_header *h, fkv_trace_info *info, fkv_needle **needles) {
    char path[4096];
    fkv_status st = join(path, sizeof path, dir, "header.json");
    if (st == FKV_OK)
        st = fkv_trace_header_load(path, h);
    if (st != FKV_OK)
        return st;
    uint32_t layers = max_layers && max_layers < h->layers ? max_layers : h->layers;
    uint32_t steps = max_steps && max_steps < h->decode_steps ? max_steps : h->decode_steps;
    *info = (fkv_trace_info){.layers = layers, .q_heads = h->q_heads, .kv_heads = h->kv_heads,
                             .head_dim = h->head_dim, .prompt_tokens = h->prompt_tokens,
                             .decode_steps = steps};
    snprintf(info->source, sizeof info->source, "%.120s%s%.60s", dir, h->model[0] ? ": " : "",
             h->model);
    fkv_needle *list = NULL;
    size_t count = 0;
    int missing;
    st = join(path, sizeof path, dir, "needles.json");
    if (st == FKV_OK) /* validated against the whole trace, then limited */
        st = fkv_needles_load(path, h, &list, &count, &missing);
    if (st != FKV_OK)
        return st;
    count = keep_needles(list, count, info);
    info->needles = (uint32_t)count;
    if (needles)
        *needles = list;
    else
        free(list);
    return FKV_OK;
}

fkv_status fkv_trace_dir_info(const char *dir, uint32_t max_layers, uint32_t max_steps,
                              fkv_trace_info *out) {
    if (dir == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_trace_dir_info: NULL argument");
    fkv_trace_header h;
    return dir_header(dir, max_layers, max_steps, &h, out, NULL);
}

/* Every value of x (an array of `path` with shape [rows][heads][dim]) stays finite when stored
 * in `storage`: a key or value that rounds to infinity would turn attention into NaN. */
static fkv_status check_storable(const float *x, const uint64_t *shape, fkv_dtype storage,
                                 const char *path) {
    if (storage == FKV_F32)
        return FKV_OK; /* the reader already refused NaN and infinity */
    uint64_t n = shape[0] * shape[1] * shape[2];
    for (uint64_t i = 0; i < n; i++) {
        float back = storage == FKV_F16 ? fkv_f16_to_f32(fkv_f32_to_f16(x[i]))
                                        : fkv_bf16_to_f32(fkv_f32_to_bf16(x[i]));
        if (isfinite(back))
            continue;
        uint64_t c = i % shape[2], h = i / shape[2] % shape[1], tok = i / shape[2] / shape[1];
        return fkv_error(FKV_ERR_BAD_FILE,
                         "%s: element %llu [%llu, %llu, %llu] = %g is not representable in %s "
                         "(the KV storage type, --dtype): it would be stored as infinity",
                         path, (unsigned long long)i, (unsigned long long)tok,
                         (unsigned long long)h, (unsigned long long)c, (double)x[i],
                         fkv_dtype_name(storage));
    }
    return FKV_OK;
}

fkv_status fkv_trace_load_dir(const char *dir, uint32_t max_layers, uint32_t max_steps,
                              fkv_dtype storage, fkv_trace **out) {
    if (dir == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_trace_load_dir: NULL argument");
    *out = NULL;
    if (storage != FKV_F32 && storage != FKV_F16 && storage != FKV_BF16)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_trace_load_dir: storage dtype %d",
                         (int)storage);
    fkv_trace_header h;
    fkv_trace_info info;
    fkv_needle *needles = NULL;
    fkv_status st = dir_header(dir, max_layers, max_steps, &h, &info, &needles);
    if (st != FKV_OK)
        return st;
    fkv_trace *t;
    st = trace_alloc(info.layers, &t);
    if (st != FKV_OK) {
        free(needles);
        return st;
    }
    t->info = info;
    t->needles = needles;
    t->n_needles = info.needles;
    char path[4096];
    uint64_t kv_shape[3] = {(uint64_t)h.prompt_tokens + h.decode_steps, h.kv_heads, h.head_dim};
    uint64_t q_shape[3] = {(uint64_t)h.decode_steps + 1, h.q_heads, h.head_dim};
    for (uint32_t l = 0; l < info.layers && st == FKV_OK; l++) {
        char name[32];
        snprintf(name, sizeof name, "k_%u.npy", l);
        if ((st = join(path, sizeof path, dir, name)) == FKV_OK &&
            (st = fkv_npy_load_f32(path, 3, kv_shape, &t->k[l], NULL)) == FKV_OK)
            st = check_storable(t->k[l], kv_shape, storage, path);
        snprintf(name, sizeof name, "v_%u.npy", l);
        if (st == FKV_OK && (st = join(path, sizeof path, dir, name)) == FKV_OK &&
            (st = fkv_npy_load_f32(path, 3, kv_shape, &t->v[l], NULL)) == FKV_OK)
            st = check_storable(t->v[l], kv_shape, storage, path);
        snprintf(name, sizeof name, "q_%u.npy", l);
        if (st == FKV_OK && (st = join(path, sizeof path, dir, name)) == FKV_OK)
            st = fkv_npy_load_f32(path, 3, q_shape, &t->q[l], NULL);
    }
    if (st != FKV_OK) {
        fkv_trace_free(t);
        return st;
    }
    /* info.decode_steps is already limited by max_steps: the rows after it are not used */
    *out = t;
    return FKV_OK;
}

fkv_status fkv_trace_save_dir(const fkv_trace *t, const char *dir, fkv_dtype dtype) {
    if (t == NULL || dir == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_trace_save_dir: NULL argument");
    fkv_npy_dtype nd = dtype == FKV_F32 ? FKV_NPY_F32 : dtype == FKV_F16 ? FKV_NPY_F16
                                                                         : FKV_NPY_BF16;
    const fkv_trace_info *i = &t->info;
    fkv_trace_header h = {.version = 1, .layers = i->layers, .q_heads = i->q_heads,
                          .kv_heads = i->kv_heads, .head_dim = i->head_dim,
                          .prompt_tokens = i->prompt_tokens, .decode_steps = i->decode_steps};
    snprintf(h.model, sizeof h.model, "%.127s", i->source);
    char path[4096];
    fkv_status st = join(path, sizeof path, dir, "header.json");
    if (st == FKV_OK)
        st = fkv_trace_header_write(path, &h);
    uint64_t kv_shape[3] = {(uint64_t)i->prompt_tokens + i->decode_steps, i->kv_heads, i->head_dim};
    uint64_t q_shape[3] = {(uint64_t)i->decode_steps + 1, i->q_heads, i->head_dim};
    for (uint32_t l = 0; l < i->layers && st == FKV_OK; l++) {
        char name[32];
        snprintf(name, sizeof name, "k_%u.npy", l);
        if ((st = join(path, sizeof path, dir, name)) == FKV_OK)
            st = fkv_npy_write_f32(path, nd, 3, kv_shape, t->k[l]);
        snprintf(name, sizeof name, "v_%u.npy", l);
        if (st == FKV_OK && (st = join(path, sizeof path, dir, name)) == FKV_OK)
            st = fkv_npy_write_f32(path, nd, 3, kv_shape, t->v[l]);
        snprintf(name, sizeof name, "q_%u.npy", l);
        if (st == FKV_OK && (st = join(path, sizeof path, dir, name)) == FKV_OK)
            st = fkv_npy_write_f32(path, nd, 3, q_shape, t->q[l]);
    }
    if (st == FKV_OK && (st = join(path, sizeof path, dir, "needles.json")) == FKV_OK)
        st = fkv_needles_write(path, t->needles, t->n_needles);
    return st;
}

/* ---- accessors --------------------------------------------------------------------------- */

const fkv_trace_info *fkv_trace_get_info(const fkv_trace *t) { return t ? &t->info : NULL; }

const float *fkv_trace_keys(const fkv_trace *t, uint32_t layer) {
    return t && layer < t->info.layers ? t->k[layer] : NULL;
}

const float *fkv_trace_values(const fkv_trace *t, uint32_t layer) {
    return t && layer < t->info.layers ? t->v[layer] : NULL;
}

const float *fkv_trace_queries(const fkv_trace *t, uint32_t layer) {
    return t && layer < t->info.layers ? t->q[layer] : NULL;
}

const fkv_needle *fkv_trace_needles(const fkv_trace *t, size_t *count) {
    if (count)
        *count = t ? t->n_needles : 0;
    return t ? t->needles : NULL;
}

void fkv_trace_query_cosine(const fkv_trace *t, double *mean, double *group) {
    const fkv_trace_info *i = &t->info;
    const uint32_t Hk = i->kv_heads, G = i->q_heads / Hk, d = i->head_dim;
    double sum = 0;
    uint64_t n = 0;
    for (uint32_t l = 0; l < i->layers; l++) {
        for (uint32_t row = 1; row <= i->decode_steps; row++) {
            for (uint32_t kh = 0; kh < Hk; kh++) {
                double total = 0;
                for (uint32_t j = 0; j < G; j++) {
                    const float *a = t->q[l] + ((size_t)row * i->q_heads + kh * G + j) * d;
                    const float *b = a - (size_t)i->q_heads * d;
                    double ab = 0, aa = 0, bb = 0;
                    for (uint32_t c = 0; c < d; c++) {
                        ab += (double)a[c] * b[c];
                        aa += (double)a[c] * a[c];
                        bb += (double)b[c] * b[c];
                    }
                    double cs = aa > 0 && bb > 0 ? ab / (sqrt(aa) * sqrt(bb)) : 0.0;
                    total += cs;
                    sum += cs;
                    n++;
                }
                if (group)
                    group[((size_t)(row - 1) * i->layers + l) * Hk + kh] = total / G;
            }
        }
    }
    if (mean)
        *mean = n ? sum / (double)n : 0;
}
