#include "pipeline_driver.h"

#include <stdlib.h>
#include <string.h>

#include "helpers.h"

void pd_data(uint32_t kind, uint32_t seq, uint32_t layer, uint32_t t, float *x, size_t n) {
    th_rng r;
    th_seed(&r, ((uint64_t)kind << 56) ^ ((uint64_t)seq << 40) ^ ((uint64_t)layer << 24) ^ t);
    th_fill_normal(&r, x, n, 1.0f);
}

void pd_query(const fkv_config *cfg, float drift, uint32_t seq, uint32_t layer, uint32_t t,
              float *q) {
    size_t n = (size_t)cfg->n_q_heads * cfg->head_dim;
    float *noise = malloc(sizeof(float) * n);
    pd_data(3, seq, layer, 0, q, n);
    pd_data(2, seq, layer, t, noise, n);
    for (size_t i = 0; i < n; i++)
        q[i] = q[i] + drift * noise[i];
    free(noise);
}

size_t pd_out_floats(const fkv_config *cfg, const pd_run *run) {
    return (size_t)run->steps * cfg->n_layers * run->n_seqs * cfg->n_q_heads * cfg->head_dim;
}

fkv_status pd_execute(fkv_context *ctx, const pd_run *run, float *out) {
    fkv_config cfg;
    fkv_context_get_config(ctx, &cfg);
    size_t kv = (size_t)cfg.n_kv_heads * cfg.head_dim, qn = (size_t)cfg.n_q_heads * cfg.head_dim;
    uint32_t maxp = 0;
    for (uint32_t i = 0; i < run->n_seqs; i++)
        maxp = run->prompt[i] > maxp ? run->prompt[i] : maxp;
    float *k = malloc(sizeof(float) * kv * (maxp + 1) * 8);
    float *v = malloc(sizeof(float) * kv * (maxp + 1) * 8);
    float *q = malloc(sizeof(float) * qn * 8);
    float *o = malloc(sizeof(float) * qn * 8);
    fkv_status st = FKV_OK;
    for (uint32_t i = 0; i < run->n_seqs && st == FKV_OK; i++) {
        uint32_t s = run->seqs[i], T = run->prompt[i];
        if (T == 0 || run->resume)
            continue;
        for (uint32_t l = 0; l < cfg.n_layers && st == FKV_OK; l++) {
            for (uint32_t t = 0; t < T; t++) {
                pd_data(0, s, l, t, k + t * kv, kv);
                pd_data(1, s, l, t, v + t * kv, kv);
            }
            pd_query(&cfg, run->drift, s, l, T - 1, q);
            fkv_tensor tk = {k, NULL, 0}, tv = {v, NULL, 0}, tq = {q, NULL, 0};
            st = fkv_prefill(ctx, s, l, T, &tk, &tv, &tq);
        }
    }
    for (uint32_t step = run->first_step; step < run->steps && st == FKV_OK; step++) {
        for (uint32_t l = 0; l < cfg.n_layers && st == FKV_OK; l++) {
            uint32_t groups = run->batched ? 1 : run->n_seqs;
            for (uint32_t gi = 0; gi < groups && st == FKV_OK; gi++) {
                uint32_t first = run->batched ? 0 : gi, count = run->batched ? run->n_seqs : 1;
                for (uint32_t b = 0; b < count; b++) {
                    uint32_t i = first + b, s = run->seqs[i], t = run->prompt[i] + step;
                    pd_query(&cfg, run->drift, s, l, t, q + b * qn);
                    pd_data(0, s, l, t, k + b * kv, kv);
                    pd_data(1, s, l, t, v + b * kv, kv);
                }
                size_t at = (((size_t)step * cfg.n_layers + l) * run->n_seqs + first) * qn;
                fkv_tensor tq = {q, NULL, 0}, tk = {k, NULL, 0}, tv = {v, NULL, 0},
                           to = {o, NULL, 0};
                if (run->device_out)
                    to = (fkv_tensor){NULL, run->device_out, at * sizeof(float)};
                st = fkv_decode_layer(ctx, l, count, run->seqs + first, &tq, &tk, &tv, &to);
                if (st == FKV_OK && out && !run->device_out)
                    for (uint32_t b = 0; b < count; b++)
                        memcpy(out + at + b * qn, o + b * qn, sizeof(float) * qn);
            }
        }
    }
    if (st == FKV_OK && run->device_out) /* the outputs are complete once synced */
        st = fkv_context_sync(ctx);
    if (st == FKV_OK && run->device_out && out && run->steps > run->first_step) {
        size_t from = (size_t)run->first_step * cfg.n_layers * run->n_seqs * qn;
        size_t end = (size_t)run->steps * cfg.n_layers * run->n_seqs * qn;
        st = fkv_buffer_read(run->device_out, from * sizeof(float), out + from,
                             (end - from) * sizeof(float));
    }
    free(k);
    free(v);
    free(q);
    free(o);
    return st;
}

fkv_status pd_run_cpu(const fkv_config *cfg, const pd_run *run, float *out, fkv_device **dev_out,
                      fkv_context **ctx_out) {
    return pd_run_on("cpu", cfg, run, out, dev_out, ctx_out);
}

fkv_status pd_run_on(const char *backend, const fkv_config *cfg, const pd_run *run, float *out,
                     fkv_device **dev_out, fkv_context **ctx_out) {
    fkv_device *dev = NULL;
    fkv_context *ctx = NULL;
    fkv_status st = fkv_device_open(backend, NULL, &dev);
    if (st == FKV_OK)
        st = fkv_context_create(dev, cfg, &ctx);
    if (st == FKV_OK)
        st = pd_execute(ctx, run, out);
    if (st == FKV_OK && ctx_out) {
        *ctx_out = ctx;
        *dev_out = dev;
        return FKV_OK;
    }
    fkv_context_destroy(ctx);
    fkv_device_close(dev);
    return st;
}
