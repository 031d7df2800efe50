/* A deterministic decode driver for the pipeline tests: synthetic prompts and decode steps
 * whose data depends only on (sequence, layer, token), so runs that batch or order
 * sequences differently see the same inputs. Queries drift step to step with adjacent
 * cosine similarity around 0.9, as the method assumes. */
#ifndef FKV_TESTS_PIPELINE_DRIVER_H
#define FKV_TESTS_PIPELINE_DRIVER_H

#include <stdint.h>

#include "freekv.h"

typedef struct pd_run {
    uint32_t n_seqs;
    uint32_t seqs[8];
    uint32_t prompt[8]; /* prompt length per sequence (0 = no prefill) */
    uint32_t steps;
    int batched;        /* all sequences in one call per layer, or one call each */
    float drift;        /* query noise relative to its fixed part (0.3 -> cos ~0.92) */
    uint32_t first_step; /* start at this step */
    int resume;          /* skip the prefill (already done on this context) */
    /* non-NULL: the decode outputs go into this device buffer (pd_out_floats f32, the layout
     * of `out`) and are read into `out` once the run is synced at the end, so the calls
     * return with their commands in flight */
    fkv_buffer *device_out;
} pd_run;

/* Fills x[n] with the data of (kind, seq, layer, t). kind: 0 key, 1 value, 2 query noise,
 * 3 query base. */
void pd_data(uint32_t kind, uint32_t seq, uint32_t layer, uint32_t t, float *x, size_t n);
/* The query of (seq, layer) at token position t (t = prompt-1 for the prefill query). */
void pd_query(const fkv_config *cfg, float drift, uint32_t seq, uint32_t layer, uint32_t t,
              float *q);

/* Runs prefill + steps on ctx; outputs [steps][layers][n_seqs][Hq*d] when out != NULL.
 * Returns FKV_OK or the first failing status. */
fkv_status pd_execute(fkv_context *ctx, const pd_run *run, float *out);
/* Opens the CPU device, creates a context with cfg and runs; the context is returned in
 * *ctx_out when non-NULL (else destroyed). */
fkv_status pd_run_cpu(const fkv_config *cfg, const pd_run *run, float *out, fkv_device **dev_out,
                      fkv_context **ctx_out);
/* The same on the first device of `backend` ("opencl": PoCL in CI). */
fkv_status pd_run_on(const char *backend, const fkv_config *cfg, const pd_run *run, float *out,
                     fkv_device **dev_out, fkv_context **ctx_out);
size_t pd_out_floats(const fkv_config *cfg, const pd_run *run);

#endif
