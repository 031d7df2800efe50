/* A decode trace: the post-RoPE keys, values and queries that a model hands to attention,
 * per layer, for a prompt and the decode steps that follow it.
 *
 * Token positions 0 .. prompt_tokens + decode_steps - 1.
 *   keys, values [layer]: [prompt_tokens + decode_steps][kv_heads][head_dim]
 *   queries      [layer]: [decode_steps + 1][q_heads][head_dim]
 *     row 0 is the query of the last prompt token (position prompt_tokens - 1): prefill uses
 *     it to choose the initial resident pages; row 1 + t is the query of decode step t, whose
 *     token (position prompt_tokens + t) appends its key and value before attending.
 * A trace comes from the built-in synthetic generator or from a trace directory
 * (docs/eval.md, tools/dump_trace.py). */
#ifndef FKV_EVAL_TRACE_H
#define FKV_EVAL_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"
#include "needles.h"

typedef struct fkv_trace_info {
    uint32_t layers, q_heads, kv_heads, head_dim;
    uint32_t prompt_tokens, decode_steps;
    uint32_t needles; /* within these layers and steps (needles.h) */
    char source[192]; /* "synthetic (seed 1)" or the directory and model name */
} fkv_trace_info;

/* Synthetic trace parameters. "Logit" means a contribution to q.k/sqrt(head_dim) for a
 * query aligned with that component. Defaults from fkv_synth_defaults (docs/eval.md). */
typedef struct fkv_synth_params {
    uint32_t layers, q_heads, kv_heads, head_dim;
    uint32_t prompt_tokens, decode_steps;
    uint64_t seed;
    float drift;          /* AR(1) coefficient of each query head's moving part per step */
    float jump_prob;      /* per (query head, step): the moving part is redrawn */
    uint32_t sink_tokens; /* attention-sink tokens at the start */
    float sink_logit;
    float locality;       /* correlation length (tokens) of the positional component */
    float local_logit;
    uint32_t topics;      /* topic directions per (layer, KV head) */
    uint32_t heavy_pages; /* heavy-hitter spans per (layer, KV head) */
    uint32_t heavy_span;  /* tokens per heavy-hitter span */
    float heavy_logit;
    float key_noise;      /* per-channel key noise (logit standard deviation) */
    uint32_t needles;     /* per layer */
    float needle_logit;
} fkv_synth_params;

void fkv_synth_defaults(fkv_synth_params *p);
/* Checks ranges; the message names the first bad field (FKV_ERR_INVALID_ARGUMENT). */
fkv_status fkv_synth_validate(const fkv_synth_params *p);

typedef struct fkv_trace fkv_trace;

fkv_status fkv_trace_synthetic(const fkv_synth_params *p, fkv_trace **out);

/* The geometry, needle count and source of a trace directory from its header.json and
 * needles.json (nothing large is read; both are checked as fkv_trace_load_dir checks them),
 * with the same max_layers / max_steps limits: to check settings against a trace before
 * loading it. */
fkv_status fkv_trace_dir_info(const char *dir, uint32_t max_layers, uint32_t max_steps,
                              fkv_trace_info *out);

/* Loads a trace directory (header.json, k_<l>.npy, v_<l>.npy, q_<l>.npy, and needles.json when
 * it exists). max_layers > 0 loads only the first max_layers layers; max_steps > 0 keeps only
 * that many decode steps (needles outside them are left out).
 * Everything is held in memory as f32. Keys and values must stay finite when stored in
 * `storage` (the KV dtype they will be decoded with): 1e18 is refused under f16, with
 * FKV_ERR_BAD_FILE and a message naming the file and the element. */
fkv_status fkv_trace_load_dir(const char *dir, uint32_t max_layers, uint32_t max_steps,
                              fkv_dtype storage, fkv_trace **out);

/* Writes a trace as a trace directory (the directory must exist), arrays in `dtype`, and its
 * needles as needles.json (an empty list when it has none). */
fkv_status fkv_trace_save_dir(const fkv_trace *t, const char *dir, fkv_dtype dtype);

void fkv_trace_free(fkv_trace *t);

const fkv_trace_info *fkv_trace_get_info(const fkv_trace *t);
const float *fkv_trace_keys(const fkv_trace *t, uint32_t layer);
const float *fkv_trace_values(const fkv_trace *t, uint32_t layer);
const float *fkv_trace_queries(const fkv_trace *t, uint32_t layer);
const fkv_needle *fkv_trace_needles(const fkv_trace *t, size_t *count);

/* Adjacent-step query cosines as freekv's correction check computes them. group (may be NULL):
 * [decode_steps][layers][kv_heads], for step t the mean over the KV head's query heads of
 * cos(query row 1 + t, row t) (step 0 compares with the last prompt token's query, as the
 * library does after prefill); a query with an exactly zero norm has cosine 0, as on the
 * devices. *mean: the mean of the per-query-head cosines over (step, layer, query head).
 * Computed in double precision (the devices use f32: a cosine within rounding of tau may be
 * flagged differently there). */
void fkv_trace_query_cosine(const fkv_trace *t, double *mean, double *group);

#endif
