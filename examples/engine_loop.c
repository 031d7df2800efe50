/* An engine-like loop over the public API: prefill a prompt, then decode token by token,
 * handing each layer's q/k/v to freekv and getting the attention output back. Random
 * activations stand in for the model. */
#include <stdio.h>
#include <stdlib.h>

#include "freekv.h"

#define CHECK(call)                                                                   \
    do {                                                                              \
        fkv_status st_ = (call);                                                      \
        if (st_ != FKV_OK) {                                                          \
            fprintf(stderr, "%s failed: %s\n", #call, fkv_last_error());              \
            return 1;                                                                 \
        }                                                                             \
    } while (0)

static void fill(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)rand() / RAND_MAX - 0.5f;
}

int main(void) {
    fkv_device *dev;
    CHECK(fkv_device_open(NULL, NULL, &dev)); /* FREEKV_BACKEND / FREEKV_DEVICE, default auto */
    fkv_config cfg;
    fkv_config_init(&cfg); /* Llama-3.1-8B geometry; shrink it for a quick run */
    cfg.n_layers = 4;
    cfg.page_size = 16;
    cfg.budget_tokens = 256;
    cfg.sink_tokens = 32;
    cfg.window_tokens = 64;
    cfg.max_context = 4096;
    fkv_context *ctx;
    CHECK(fkv_context_create(dev, &cfg, &ctx));

    const uint32_t prompt = 1000, steps = 32, seq = 0;
    size_t kv_row = (size_t)cfg.n_kv_heads * cfg.head_dim, q_row = (size_t)cfg.n_q_heads * cfg.head_dim;
    float *k = malloc(sizeof(float) * prompt * kv_row), *v = malloc(sizeof(float) * prompt * kv_row);
    float *q = malloc(sizeof(float) * q_row), *out = malloc(sizeof(float) * q_row);
    if (!k || !v || !q || !out)
        return 1;
    for (uint32_t l = 0; l < cfg.n_layers; l++) { /* prefill, layer by layer */
        fill(k, prompt * kv_row);
        fill(v, prompt * kv_row);
        fill(q, q_row);
        fkv_tensor tk = {k, NULL, 0}, tv = {v, NULL, 0}, tq = {q, NULL, 0};
        CHECK(fkv_prefill(ctx, seq, l, prompt, &tk, &tv, &tq));
    }
    double checksum = 0;
    for (uint32_t t = 0; t < steps; t++) { /* decode: every layer of every step */
        for (uint32_t l = 0; l < cfg.n_layers; l++) {
            fill(q, q_row);
            fill(k, kv_row);
            fill(v, kv_row);
            fkv_tensor tq = {q, NULL, 0}, tk = {k, NULL, 0}, tv = {v, NULL, 0}, to = {out, NULL, 0};
            CHECK(fkv_decode_layer(ctx, l, 1, &seq, &tq, &tk, &tv, &to));
            checksum += out[0];
            /* ...the engine would run the layer's projections and MLP on `out` here... */
        }
    }
    fkv_stats s;
    CHECK(fkv_context_get_stats(ctx, &s));
    printf("decoded %u steps x %u layers on a %u-token prompt (policy %s)\n", steps, cfg.n_layers,
           prompt, fkv_policy_name(cfg.policy));
    printf("corrections %llu of %llu heads, %llu pages recalled, blocked %.3f ms, checksum %.4f\n",
           (unsigned long long)s.corrections, (unsigned long long)s.heads_checked,
           (unsigned long long)s.pages_recalled, s.blocked_seconds * 1e3, checksum);
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
    free(k), free(v), free(q), free(out);
    return 0;
}
