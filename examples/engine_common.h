/* What the three engine examples (engine_opencl.c, engine_vulkan.c, engine_hip.c) share: a
 * model-shaped decode loop that runs every layer twice, once the engine's way (q/k/v written
 * into the engine's own device buffers on its own queue, handed to freekv with events, `out`
 * read back through the engine's queue) and once through the host-tensor path on a second
 * context of the same device, and checks that the outputs are bit for bit the same. It also
 * counts the host waits freekv makes inside the engine-path calls (fkv_context_get_counters).
 * Each example supplies only its API's part: the engine's objects and one decode layer. */
#ifndef FREEKV_EXAMPLES_ENGINE_COMMON_H
#define FREEKV_EXAMPLES_ENGINE_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "freekv.h"

#define EX_SKIP 77 /* no device of this API: CTest's skip code */

#define EX_CHECK(call)                                                                        \
    do {                                                                                      \
        fkv_status st_ = (call);                                                              \
        if (st_ != FKV_OK) {                                                                  \
            fprintf(stderr, "%s failed: %s (%s)\n", #call, fkv_last_error(),                  \
                    fkv_status_string(st_));                                                  \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

/* A failed call of the engine's own API (code, and the API's text for it when it has one):
 * printed; returns 1 for the caller to return. */
static inline int ex_api_fail(const char *name, const char *what, long code, const char *text) {
    fprintf(stderr, "%s: %s failed (%ld%s%s)\n", name, what, code, text ? ": " : "",
            text ? text : "");
    return 1;
}

/* The engine's side of one decode layer: upload q/k/v ([n_q_heads|n_kv_heads][head_dim] f32,
 * one sequence) into its buffers on its queue, call fkv_decode_layer_sync on ctx with its
 * buffers and events, and read `out` back through its queue into out. 0 on success. */
typedef int (*ex_decode_fn)(void *engine, fkv_context *ctx, uint32_t layer, const float *q,
                            const float *k, const float *v, float *out);

/* A small model: 4 layers of Llama-3.1-8B's heads, pages of 16, a 256-token budget. */
static inline void ex_config(fkv_config *cfg) {
    fkv_config_init(cfg);
    cfg->n_layers = 4;
    cfg->page_size = 16;
    cfg->budget_tokens = 256;
    cfg->sink_tokens = 32;
    cfg->window_tokens = 64;
    cfg->max_context = 2048;
}

/* freekv on the engine's objects, with a context of ex_config's model (*cfg). 0 on success;
 * on failure the message is printed and what opened stays in *dev, *ctx for ex_close. */
static inline int ex_open(const char *name, const fkv_native_objects *objs, fkv_config *cfg,
                          fkv_device **dev, fkv_context **ctx) {
    *dev = NULL;
    *ctx = NULL;
    ex_config(cfg);
    if (fkv_device_open_native(objs, dev) != FKV_OK || fkv_context_create(*dev, cfg, ctx) != FKV_OK) {
        fprintf(stderr, "%s: %s\n", name, fkv_last_error());
        return 1;
    }
    fkv_device_info info;
    fkv_device_get_info(*dev, &info);
    printf("%s: freekv on the engine's objects: %s (%s)\n", name, info.name, info.driver);
    return 0;
}

/* freekv's side, before the engine destroys its objects (freekv never does): the wrappers of
 * the engine's n buffers (NULL entries skipped), the context, the device. */
static inline void ex_close(fkv_buffer **bufs, int n, fkv_context *ctx, fkv_device *dev) {
    for (int i = 0; i < n; i++)
        fkv_buffer_release(bufs[i]);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
}

/* Deterministic activations in [-0.5, 0.5), exact in f32, from (stream, index). */
static inline void ex_fill(float *x, size_t n, uint32_t stream) {
    for (size_t i = 0; i < n; i++) {
        uint32_t h = (uint32_t)i * 2654435761u ^ stream * 2246822519u;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        x[i] = (float)(h >> 8) / 16777216.0f - 0.5f;
    }
}

/* Prompt of n tokens into layer l of both contexts, from the host (prefill is not the point). */
static inline int ex_prefill(fkv_context *a, fkv_context *b, const fkv_config *cfg, uint32_t l,
                             uint32_t n, float *k, float *v, float *q) {
    size_t kv_row = (size_t)cfg->n_kv_heads * cfg->head_dim;
    uint32_t seq = 0;
    ex_fill(k, n * kv_row, 1000 + 3 * l);
    ex_fill(v, n * kv_row, 1001 + 3 * l);
    ex_fill(q, (size_t)cfg->n_q_heads * cfg->head_dim, 1002 + 3 * l);
    fkv_tensor tk = {k, NULL, 0}, tv = {v, NULL, 0}, tq = {q, NULL, 0};
    EX_CHECK(fkv_prefill(a, seq, l, n, &tk, &tv, &tq));
    EX_CHECK(fkv_prefill(b, seq, l, n, &tk, &tv, &tq));
    return 0;
}

/* What ex_run measured: layer calls, outputs that differ from the host path, and freekv's host
 * waits (fkv_counters.caller_waits) inside the engine-path calls. */
typedef struct ex_result {
    uint64_t calls, differ, waits, max_waits;
} ex_result;

/* The loop: `steps` tokens through every layer, the engine's way and the host way, compared
 * bit for bit. Prints the comparison and freekv's host waits per engine-path layer call, and
 * returns them in *res (when not NULL). 0: every output identical. */
static inline int ex_run(const char *name, fkv_device *dev, ex_decode_fn decode, void *engine,
                         const fkv_config *cfg, fkv_context *ctx, uint32_t steps,
                         ex_result *res) {
    fkv_context *ref;
    EX_CHECK(fkv_context_create(dev, cfg, &ref));
    const uint32_t prompt = 600, seq = 0;
    size_t kv_row = (size_t)cfg->n_kv_heads * cfg->head_dim;
    size_t q_row = (size_t)cfg->n_q_heads * cfg->head_dim;
    float *k = malloc(sizeof(float) * prompt * kv_row), *v = malloc(sizeof(float) * prompt * kv_row);
    float *q = malloc(sizeof(float) * q_row), *out = malloc(sizeof(float) * q_row);
    float *ref_out = malloc(sizeof(float) * q_row);
    int rc = !k || !v || !q || !out || !ref_out;
    for (uint32_t l = 0; l < cfg->n_layers && rc == 0; l++)
        rc = ex_prefill(ctx, ref, cfg, l, prompt, k, v, q);
    uint64_t calls = 0, differ = 0, waits = 0, max_waits = 0;
    for (uint32_t t = 0; t < steps && rc == 0; t++) {
        for (uint32_t l = 0; l < cfg->n_layers && rc == 0; l++) {
            uint32_t stream = 7919 * (t + 1) + 31 * l;
            /* a layer's query drifts slowly from step to step, as real ones do (the cosine of
             * adjacent steps' queries is mostly above 0.9), so correction is the exception */
            ex_fill(q, q_row, 1002 + 3 * l);
            ex_fill(out, q_row, stream);
            for (size_t i = 0; i < q_row; i++)
                q[i] += out[i] * 0.25f;
            ex_fill(k, kv_row, stream + 1);
            ex_fill(v, kv_row, stream + 2);
            fkv_counters c0, c1;
            rc = fkv_context_get_counters(ctx, &c0) != FKV_OK;
            if (rc == 0)
                rc = decode(engine, ctx, l, q, k, v, out);
            if (rc == 0)
                rc = fkv_context_get_counters(ctx, &c1) != FKV_OK;
            if (rc != 0)
                break;
            uint64_t w = c1.caller_waits - c0.caller_waits;
            waits += w;
            max_waits = w > max_waits ? w : max_waits;
            fkv_tensor tq = {q, NULL, 0}, tk = {k, NULL, 0}, tv = {v, NULL, 0};
            fkv_tensor to = {ref_out, NULL, 0};
            EX_CHECK(fkv_decode_layer(ref, l, 1, &seq, &tq, &tk, &tv, &to));
            differ += memcmp(out, ref_out, sizeof(float) * q_row) != 0;
            calls++;
        }
    }
    fkv_stats s;
    if (rc == 0 && fkv_context_get_stats(ctx, &s) == FKV_OK) {
        printf("%s: %llu decode layers (%u steps x %u layers, policy %s): %llu outputs differ "
               "from the host-tensor path (bit for bit)\n",
               name, (unsigned long long)calls, steps, cfg->n_layers,
               fkv_policy_name(cfg->policy), (unsigned long long)differ);
        printf("%s: freekv's host waits per layer call %.2f (at most %llu); corrections %llu of "
               "%llu heads, %llu pages recalled\n",
               name, calls ? (double)waits / (double)calls : 0.0, (unsigned long long)max_waits,
               (unsigned long long)s.corrections, (unsigned long long)s.heads_checked,
               (unsigned long long)s.pages_recalled);
    }
    fkv_context_destroy(ref);
    free(k), free(v), free(q), free(out), free(ref_out);
    if (res)
        *res = (ex_result){.calls = calls, .differ = differ, .waits = waits,
                           .max_waits = max_waits};
    return rc != 0 ? rc : differ != 0;
}

#endif
