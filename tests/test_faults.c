/* A call that fails on a device error leaves the context as it was: the CPU reference fails
 * the n-th command of a call on request (backends/cpu/cpu_fault.h), for every n until the
 * call succeeds, and after each failure the context must still match a twin context that
 * never saw the call: same lengths, attended pages and stored keys/values, and the same
 * outputs, bit for bit, once the call is retried and the run continues. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/cpu_fault.h"
#include "helpers.h"
#include "pipeline_driver.h"

#define N_SEQS 2
#define MAX_COMMANDS 2000 /* far more than one call issues: a loop that never ends is a bug */

typedef struct side { /* one context and its device */
    fkv_device *dev;
    fkv_context *ctx;
} side;

static const uint32_t seqs[N_SEQS] = {0, 1};
/* Prompt lengths; the long-prompt tests set their own (each test runs in its own process). */
static uint32_t prompts[N_SEQS] = {37, 50};
static const float drift = 0.45f; /* low enough for freekv to correct some heads */

static int budget_is_sink_and_window; /* set by a test: no middle pages, nothing recalled */

static fkv_config config_of(fkv_policy policy) {
    fkv_config c;
    th_small_config(&c);
    c.policy = policy;
    c.recall_chunk_pages = 2; /* several staging chunks: more commands to fail in a recall */
    if (budget_is_sink_and_window)
        c.budget_tokens = c.sink_tokens + c.window_tokens;
    return c;
}

static void open_side(const fkv_config *c, side *s) {
    cr_assert_eq(fkv_device_open("cpu", NULL, &s->dev), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_context_create(s->dev, c, &s->ctx), FKV_OK, "%s", fkv_last_error());
}

static void close_side(side *s) {
    fkv_context_destroy(s->ctx);
    fkv_device_close(s->dev);
}

typedef struct inputs {
    float *q, *k, *v;
} inputs;

/* The inputs of one decode call (both sequences) at `step`. */
static void step_inputs(const fkv_config *c, uint32_t layer, uint32_t step, inputs *in) {
    size_t qn = (size_t)c->n_q_heads * c->head_dim, kvn = (size_t)c->n_kv_heads * c->head_dim;
    for (uint32_t b = 0; b < N_SEQS; b++) {
        uint32_t t = prompts[b] + step;
        pd_query(c, drift, seqs[b], layer, t, in->q + b * qn);
        pd_data(0, seqs[b], layer, t, in->k + b * kvn, kvn);
        pd_data(1, seqs[b], layer, t, in->v + b * kvn, kvn);
    }
}

/* One decode call of both sequences at (layer, step), its output in host memory or (host_out
 * NULL) in the device buffer dev_out. */
static fkv_status decode_to(fkv_context *ctx, const fkv_config *c, uint32_t layer,
                            uint32_t step, float *host_out, fkv_buffer *dev_out) {
    size_t qn = (size_t)c->n_q_heads * c->head_dim, kvn = (size_t)c->n_kv_heads * c->head_dim;
    inputs in = {malloc(sizeof(float) * qn * N_SEQS), malloc(sizeof(float) * kvn * N_SEQS),
                 malloc(sizeof(float) * kvn * N_SEQS)};
    step_inputs(c, layer, step, &in);
    fkv_tensor tq = {in.q, NULL, 0}, tk = {in.k, NULL, 0}, tv = {in.v, NULL, 0},
               to = {host_out, host_out ? NULL : dev_out, 0};
    fkv_status st = fkv_decode_layer(ctx, layer, N_SEQS, seqs, &tq, &tk, &tv, &to);
    free(in.q), free(in.k), free(in.v);
    return st;
}

static fkv_status decode(fkv_context *ctx, const fkv_config *c, uint32_t layer, uint32_t step,
                         float *out) {
    return decode_to(ctx, c, layer, step, out, NULL);
}

static fkv_status prefill(fkv_context *ctx, const fkv_config *c, uint32_t b, uint32_t layer) {
    size_t qn = (size_t)c->n_q_heads * c->head_dim, kvn = (size_t)c->n_kv_heads * c->head_dim;
    uint32_t T = prompts[b];
    float *k = malloc(sizeof(float) * kvn * T), *v = malloc(sizeof(float) * kvn * T);
    float *q = malloc(sizeof(float) * qn);
    for (uint32_t t = 0; t < T; t++) {
        pd_data(0, seqs[b], layer, t, k + t * kvn, kvn);
        pd_data(1, seqs[b], layer, t, v + t * kvn, kvn);
    }
    pd_query(c, drift, seqs[b], layer, T - 1, q);
    fkv_tensor tk = {k, NULL, 0}, tv = {v, NULL, 0}, tq = {q, NULL, 0};
    fkv_status st = fkv_prefill(ctx, seqs[b], layer, T, &tk, &tv, &tq);
    free(k), free(v), free(q);
    return st;
}

static void prefill_all(const side *s, const fkv_config *c) {
    for (uint32_t b = 0; b < N_SEQS; b++)
        for (uint32_t l = 0; l < c->n_layers; l++)
            cr_assert_eq(prefill(s->ctx, c, b, l), FKV_OK, "%s", fkv_last_error());
}

/* Everything a failed call must not have changed, compared with the twin. */
static void expect_same_state(const side *a, const side *twin, const fkv_config *c,
                              const char *what) {
    size_t kvn = (size_t)c->n_kv_heads * c->head_dim;
    float *ka = malloc(sizeof(float) * kvn * c->max_context);
    float *va = malloc(sizeof(float) * kvn * c->max_context);
    float *kb = malloc(sizeof(float) * kvn * c->max_context);
    float *vb = malloc(sizeof(float) * kvn * c->max_context);
    for (uint32_t b = 0; b < N_SEQS; b++) {
        uint32_t na, nb;
        cr_assert_eq(fkv_sequence_length(a->ctx, seqs[b], &na), FKV_OK);
        cr_assert_eq(fkv_sequence_length(twin->ctx, seqs[b], &nb), FKV_OK);
        cr_assert_eq(na, nb, "%s: sequence %u holds %u tokens, the twin %u", what, b, na, nb);
        for (uint32_t l = 0; l < c->n_layers; l++) {
            cr_assert_eq(fkv_context_read_kv(a->ctx, seqs[b], l, ka, va, c->max_context, &na),
                         FKV_OK, "%s: %s", what, fkv_last_error());
            cr_assert_eq(fkv_context_read_kv(twin->ctx, seqs[b], l, kb, vb, c->max_context, &nb),
                         FKV_OK);
            cr_assert_eq(na, nb, "%s: layer %u of sequence %u: %u tokens, twin %u", what, l, b,
                         na, nb);
            cr_assert(memcmp(ka, kb, sizeof(float) * kvn * na) == 0 &&
                          memcmp(va, vb, sizeof(float) * kvn * na) == 0,
                      "%s: stored K/V of layer %u, sequence %u differ", what, l, b);
            for (uint32_t h = 0; h < c->n_kv_heads; h++) {
                int32_t pa[256], pb[256];
                size_t ca, cb;
                cr_assert_eq(fkv_context_attended_pages(a->ctx, seqs[b], l, h, pa, 256, &ca),
                             FKV_OK);
                cr_assert_eq(fkv_context_attended_pages(twin->ctx, seqs[b], l, h, pb, 256, &cb),
                             FKV_OK);
                cr_assert(ca == cb && memcmp(pa, pb, ca * sizeof *pa) == 0,
                          "%s: attended pages of layer %u, sequence %u, head %u differ", what, l,
                          b, h);
            }
        }
    }
    fkv_stats sa, sb;
    fkv_context_get_stats(a->ctx, &sa);
    fkv_context_get_stats(twin->ctx, &sb);
    cr_assert(sa.steps == sb.steps && sa.layer_calls == sb.layer_calls &&
                  sa.corrections == sb.corrections && sa.heads_checked == sb.heads_checked &&
                  sa.pages_offloaded == sb.pages_offloaded,
              "%s: statistics counted the failed call", what);
    free(ka), free(va), free(kb), free(vb);
}

/* Fails command n = 1, 2, ... of one decode call until the call succeeds; after each failure
 * the state must equal the twin's, and the call that finally succeeds must give the twin's
 * output. Returns how many failures were injected. */
static uint32_t fail_each_command(side *a, side *twin, const fkv_config *c, uint32_t layer,
                                  uint32_t step, fkv_cpu_fault kind) {
    size_t out_n = (size_t)N_SEQS * c->n_q_heads * c->head_dim;
    float *out_a = malloc(sizeof(float) * out_n), *out_b = malloc(sizeof(float) * out_n);
    char what[96];
    uint32_t failures = 0;
    for (uint64_t n = 1;; n++) {
        cr_assert_lt(n, MAX_COMMANDS, "the call never succeeded");
        /* the speculative worker's commands are not counted, but its task must not be
         * running the previous layer's work on a thread the count ignores */
        cr_assert_eq(fkv_context_sync(a->ctx), FKV_OK, "%s", fkv_last_error());
        cr_assert_eq(fkv_cpu_fault_arm(a->dev, n, kind, FKV_CPU_FAULT_THIS_THREAD), FKV_OK);
        fkv_status st = decode(a->ctx, c, layer, step, out_a);
        int fired;
        uint64_t counted;
        cr_assert_eq(fkv_cpu_fault_disarm(a->dev, &fired, &counted), FKV_OK);
        snprintf(what, sizeof what, "%s, %s fault at command %llu of step %u layer %u",
                 fkv_policy_name(c->policy), kind == FKV_CPU_FAULT_RUN ? "run" : "enqueue",
                 (unsigned long long)n, step, layer);
        if (st == FKV_OK) {
            cr_assert(!fired, "%s: the command failed but the call succeeded", what);
            break;
        }
        cr_assert(fired, "%s: the call failed without the fault (%s)", what, fkv_last_error());
        cr_assert_neq(fkv_last_error()[0], '\0', "%s: no message", what);
        failures++;
        expect_same_state(a, twin, c, what);
    }
    cr_assert_eq(decode(twin->ctx, c, layer, step, out_b), FKV_OK, "%s", fkv_last_error());
    cr_assert(memcmp(out_a, out_b, sizeof(float) * out_n) == 0,
              "%s: the retried call's output differs from the twin's", what);
    free(out_a), free(out_b);
    return failures;
}

static void decode_steps(side *a, side *twin, const fkv_config *c, uint32_t from, uint32_t to) {
    size_t out_n = (size_t)N_SEQS * c->n_q_heads * c->head_dim;
    float *out_a = malloc(sizeof(float) * out_n), *out_b = malloc(sizeof(float) * out_n);
    for (uint32_t step = from; step < to; step++)
        for (uint32_t l = 0; l < c->n_layers; l++) {
            cr_assert_eq(decode(a->ctx, c, l, step, out_a), FKV_OK, "%s", fkv_last_error());
            cr_assert_eq(decode(twin->ctx, c, l, step, out_b), FKV_OK, "%s", fkv_last_error());
            cr_assert(memcmp(out_a, out_b, sizeof(float) * out_n) == 0,
                      "%s: step %u layer %u differs from the twin after the failures",
                      fkv_policy_name(c->policy), step, l);
        }
    free(out_a), free(out_b);
}

static void decode_faults(fkv_policy policy, fkv_cpu_fault kind) {
    fkv_config c = config_of(policy);
    side a, twin;
    open_side(&c, &a);
    open_side(&c, &twin);
    prefill_all(&a, &c);
    prefill_all(&twin, &c);
    decode_steps(&a, &twin, &c, 0, 1);
    /* steps 1..4: each sequence fills a page on one of them (offload and summaries), and the
     * selection policies select and recall on every one */
    uint32_t failures = 0;
    for (uint32_t step = 1; step < 5; step++)
        for (uint32_t l = 0; l < c.n_layers; l++)
            failures += fail_each_command(&a, &twin, &c, l, step, kind);
    cr_assert_gt(failures, 8 * 5, "%s: only %u failures injected", fkv_policy_name(policy),
                 failures);
    decode_steps(&a, &twin, &c, 5, 12);
    close_side(&a);
    close_side(&twin);
}

Test(faults, decode_dense_enqueue) { decode_faults(FKV_POLICY_DENSE, FKV_CPU_FAULT_ENQUEUE); }
Test(faults, decode_dense_run) { decode_faults(FKV_POLICY_DENSE, FKV_CPU_FAULT_RUN); }
Test(faults, decode_quest_enqueue) { decode_faults(FKV_POLICY_QUEST, FKV_CPU_FAULT_ENQUEUE); }
Test(faults, decode_quest_run) { decode_faults(FKV_POLICY_QUEST, FKV_CPU_FAULT_RUN); }
Test(faults, decode_sync_enqueue) { decode_faults(FKV_POLICY_SYNC, FKV_CPU_FAULT_ENQUEUE); }
Test(faults, decode_sync_run) { decode_faults(FKV_POLICY_SYNC, FKV_CPU_FAULT_RUN); }
Test(faults, decode_speculative_enqueue) {
    decode_faults(FKV_POLICY_SPECULATIVE, FKV_CPU_FAULT_ENQUEUE);
}
Test(faults, decode_speculative_run) { decode_faults(FKV_POLICY_SPECULATIVE, FKV_CPU_FAULT_RUN); }
Test(faults, decode_freekv_enqueue) { decode_faults(FKV_POLICY_FREEKV, FKV_CPU_FAULT_ENQUEUE); }
Test(faults, decode_freekv_run) { decode_faults(FKV_POLICY_FREEKV, FKV_CPU_FAULT_RUN); }

/* The same for prefill: every layer of both sequences, each command in turn. */
static void prefill_faults(fkv_policy policy, fkv_cpu_fault kind) {
    fkv_config c = config_of(policy);
    side a, twin;
    open_side(&c, &a);
    open_side(&c, &twin);
    uint32_t failures = 0;
    for (uint32_t b = 0; b < N_SEQS; b++)
        for (uint32_t l = 0; l < c.n_layers; l++) {
            for (uint64_t n = 1;; n++) {
                cr_assert_lt(n, MAX_COMMANDS, "the prefill never succeeded");
                cr_assert_eq(fkv_cpu_fault_arm(a.dev, n, kind, FKV_CPU_FAULT_THIS_THREAD), FKV_OK);
                fkv_status st = prefill(a.ctx, &c, b, l);
                int fired;
                cr_assert_eq(fkv_cpu_fault_disarm(a.dev, &fired, NULL), FKV_OK);
                char what[96];
                snprintf(what, sizeof what, "%s, prefill fault at command %llu, sequence %u "
                         "layer %u", fkv_policy_name(policy), (unsigned long long)n, b, l);
                if (st == FKV_OK) {
                    cr_assert(!fired, "%s: the command failed but the call succeeded", what);
                    break;
                }
                cr_assert(fired, "%s: failed without the fault (%s)", what, fkv_last_error());
                failures++;
                expect_same_state(&a, &twin, &c, what);
                /* the layer order is unchanged: the next layer is still refused */
                if (l + 1 < c.n_layers)
                    cr_assert_eq(prefill(a.ctx, &c, b, l + 1), FKV_ERR_BAD_STATE, "%s", what);
            }
            cr_assert_eq(prefill(twin.ctx, &c, b, l), FKV_OK, "%s", fkv_last_error());
        }
    cr_assert_gt(failures, 4 * 5, "only %u failures injected", failures);
    expect_same_state(&a, &twin, &c, "after the prefills");
    decode_steps(&a, &twin, &c, 0, 10);
    close_side(&a);
    close_side(&twin);
}

Test(faults, prefill_dense) { prefill_faults(FKV_POLICY_DENSE, FKV_CPU_FAULT_RUN); }
Test(faults, prefill_quest_enqueue) { prefill_faults(FKV_POLICY_QUEST, FKV_CPU_FAULT_ENQUEUE); }
Test(faults, prefill_sync) { prefill_faults(FKV_POLICY_SYNC, FKV_CPU_FAULT_RUN); }
Test(faults, prefill_freekv_enqueue) {
    prefill_faults(FKV_POLICY_FREEKV, FKV_CPU_FAULT_ENQUEUE);
}
Test(faults, prefill_freekv_run) { prefill_faults(FKV_POLICY_FREEKV, FKV_CPU_FAULT_RUN); }
/* Prompts of two prefill chunks (page 4: 64 pages of 256 tokens each): the offload's packs
 * and reads of several staging fills, chained, fail in turn, each while the others are in
 * flight. */
Test(faults, prefill_long_freekv_run) {
    prompts[0] = 300, prompts[1] = 470;
    prefill_faults(FKV_POLICY_FREEKV, FKV_CPU_FAULT_RUN);
}
/* With no middle pages the initial selection recalls nothing, so no command after the reads
 * into the host pool runs on the transfer queue: a failed read is reported by the prefill's
 * own wait or by nothing. */
Test(faults, prefill_long_no_recall_run) {
    prompts[0] = 300, prompts[1] = 470;
    budget_is_sink_and_window = 1;
    prefill_faults(FKV_POLICY_SYNC, FKV_CPU_FAULT_RUN);
}
Test(faults, prefill_long_sync_enqueue) {
    prompts[0] = 300, prompts[1] = 470;
    prefill_faults(FKV_POLICY_SYNC, FKV_CPU_FAULT_ENQUEUE);
}

/* A failure in background work (the speculative task a successful call leaves running) is
 * reported by a later call (or fkv_context_sync) and the context recovers: a retried call
 * succeeds, the stored tokens are intact, and the selection it loses is made again. Outputs
 * may differ from the twin's while the lost pages are missing, so only the state is
 * compared. Every command of the task fails in turn. */
static void background_faults(fkv_policy policy, fkv_cpu_fault kind, uint32_t min_failures) {
    fkv_config c = config_of(policy);
    size_t out_n = (size_t)N_SEQS * c.n_q_heads * c.head_dim;
    float *out = malloc(sizeof(float) * out_n);
    uint32_t failures = 0;
    for (uint64_t k = 1;; k++) {
        cr_assert_lt(k, MAX_COMMANDS, "the task never ran out of commands");
        side a, twin;
        open_side(&c, &a);
        open_side(&c, &twin);
        prefill_all(&a, &c);
        prefill_all(&twin, &c);
        decode_steps(&a, &twin, &c, 0, 2);
        cr_assert_eq(fkv_context_sync(a.ctx), FKV_OK, "%s", fkv_last_error());
        cr_assert_eq(fkv_cpu_fault_arm(a.dev, k, kind, FKV_CPU_FAULT_OTHER_THREADS), FKV_OK);
        cr_assert_eq(decode(a.ctx, &c, 0, 2, out), FKV_OK, "%s", fkv_last_error());
        cr_assert_eq(decode(twin.ctx, &c, 0, 2, out), FKV_OK, "%s", fkv_last_error());
        int reported = fkv_context_sync(a.ctx) != FKV_OK; /* the task of layer 0 is done */
        int fired;
        cr_assert_eq(fkv_cpu_fault_disarm(a.dev, &fired, NULL), FKV_OK);
        if (!fired) {
            cr_assert(!reported, "k %llu: an error without a fault", (unsigned long long)k);
            close_side(&a);
            close_side(&twin);
            break;
        }
        failures++;
        for (uint32_t step = 2; step < 8; step++)
            for (uint32_t l = step == 2 ? 1 : 0; l < c.n_layers; l++) {
                fkv_status st = decode(a.ctx, &c, l, step, out);
                if (st != FKV_OK) { /* the failure shows here at the latest, once */
                    cr_assert(!reported, "k %llu: reported twice: %s", (unsigned long long)k,
                              fkv_last_error());
                    reported = 1;
                    st = decode(a.ctx, &c, l, step, out);
                }
                cr_assert_eq(st, FKV_OK, "k %llu, step %u layer %u: the retry failed: %s",
                             (unsigned long long)k, step, l, fkv_last_error());
                cr_assert(th_all_finite(out, out_n), "k %llu: step %u layer %u",
                          (unsigned long long)k, step, l);
                cr_assert_eq(decode(twin.ctx, &c, l, step, out), FKV_OK);
            }
        cr_assert(reported, "k %llu: the background failure was never reported",
                  (unsigned long long)k);
        char what[64];
        snprintf(what, sizeof what, "background fault at task command %llu",
                 (unsigned long long)k);
        cr_assert_eq(fkv_context_sync(a.ctx), FKV_OK, "%s: %s", what, fkv_last_error());
        /* the token store is the twin's; statistics may differ (the lost task's work) */
        for (uint32_t b = 0; b < N_SEQS; b++) {
            uint32_t na, nb;
            fkv_sequence_length(a.ctx, seqs[b], &na);
            fkv_sequence_length(twin.ctx, seqs[b], &nb);
            cr_assert_eq(na, nb, "%s", what);
        }
        close_side(&a);
        close_side(&twin);
    }
    cr_assert_geq(failures, min_failures, "only %u background failures injected", failures);
    free(out);
}

/* A decode call with a device output returns without waiting for its commands: a device error
 * in one of them (every command of the call fails in turn) does not fail that call; it is
 * reported once, by the next call of the same layer, whose retry succeeds, and the context
 * goes on (the failed call's token is not repaired: only the report is checked, and that
 * nothing else fails). With the speculative policy the worker finds the failure before the
 * layer's task; with dense the next call does. The call ends with markers (one on the transfer
 * queue after its offload reads, then one on the compute queue), which report the failures of
 * the commands before them; a marker failing by itself (which only the fault injection does:
 * on a device a marker fails through an earlier command) leaves its queue failing until the
 * queue's next marker, another call's, so those two are not injected. */
static side device_output_setup(const fkv_config *c, float *out, fkv_buffer **bo) {
    side a;
    open_side(c, &a);
    prefill_all(&a, c);
    for (uint32_t step = 0; step < 2; step++)
        for (uint32_t l = 0; l < c->n_layers; l++)
            cr_assert_eq(decode(a.ctx, c, l, step, out), FKV_OK, "%s", fkv_last_error());
    size_t out_bytes = sizeof(float) * N_SEQS * c->n_q_heads * c->head_dim;
    cr_assert_eq(fkv_buffer_alloc(a.dev, out_bytes, bo), FKV_OK);
    cr_assert_eq(fkv_context_sync(a.ctx), FKV_OK, "%s", fkv_last_error());
    return a;
}

static void device_output_faults(fkv_policy policy) {
    fkv_config c = config_of(policy);
    size_t out_n = (size_t)N_SEQS * c.n_q_heads * c.head_dim;
    float *out = malloc(sizeof(float) * out_n);
    fkv_buffer *bo = NULL;
    /* the call's command count: step 2 fills a page of sequence 0 (prompt 37), so the offload
     * policies end it with both markers */
    side a = device_output_setup(&c, out, &bo);
    uint64_t commands = 0;
    cr_assert_eq(fkv_cpu_fault_arm(a.dev, MAX_COMMANDS, FKV_CPU_FAULT_RUN,
                                   FKV_CPU_FAULT_THIS_THREAD), FKV_OK);
    cr_assert_eq(decode_to(a.ctx, &c, 0, 2, NULL, bo), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_cpu_fault_disarm(a.dev, NULL, &commands), FKV_OK);
    cr_assert_eq(fkv_context_sync(a.ctx), FKV_OK, "%s", fkv_last_error()); /* bo is free */
    fkv_buffer_release(bo);
    close_side(&a);
    uint64_t markers = policy == FKV_POLICY_DENSE ? 1 : 2;
    cr_assert_gt(commands, markers + 3, "%llu commands", (unsigned long long)commands);
    for (uint64_t n = 1; n <= commands - markers; n++) {
        a = device_output_setup(&c, out, &bo);
        cr_assert_eq(fkv_cpu_fault_arm(a.dev, n, FKV_CPU_FAULT_RUN, FKV_CPU_FAULT_THIS_THREAD),
                     FKV_OK);
        fkv_status st = decode_to(a.ctx, &c, 0, 2, NULL, bo);
        int fired;
        cr_assert_eq(fkv_cpu_fault_disarm(a.dev, &fired, NULL), FKV_OK);
        cr_assert(fired, "%s, command %llu of %llu did not fail", fkv_policy_name(policy),
                  (unsigned long long)n, (unsigned long long)commands);
        cr_assert_eq(st, FKV_OK, "%s, command %llu: the call waited for its commands: %s",
                     fkv_policy_name(policy), (unsigned long long)n, fkv_last_error());
        int reported = 0;
        for (uint32_t step = 2; step < 5; step++)
            for (uint32_t l = step == 2 ? 1 : 0; l < c.n_layers; l++) {
                st = decode(a.ctx, &c, l, step, out);
                if (st != FKV_OK) {
                    cr_assert(!reported && step == 3 && l == 0,
                              "%s, command %llu: reported at step %u layer %u (%s)",
                              fkv_policy_name(policy), (unsigned long long)n, step, l,
                              fkv_last_error());
                    cr_assert(strstr(fkv_last_error(), "layer 0") != NULL, "%s",
                              fkv_last_error());
                    reported = 1;
                    st = decode(a.ctx, &c, l, step, out);
                }
                cr_assert_eq(st, FKV_OK, "%s, command %llu, step %u layer %u: %s",
                             fkv_policy_name(policy), (unsigned long long)n, step, l,
                             fkv_last_error());
            }
        cr_assert(reported, "%s, command %llu: the failure was never reported",
                  fkv_policy_name(policy), (unsigned long long)n);
        cr_assert_eq(fkv_context_sync(a.ctx), FKV_OK, "%s", fkv_last_error());
        fkv_buffer_release(bo);
        close_side(&a);
    }
    free(out);
}

Test(faults, device_output_dense) { device_output_faults(FKV_POLICY_DENSE); }
Test(faults, device_output_speculative) { device_output_faults(FKV_POLICY_SPECULATIVE); }

/* speculative's task: scores, select_pages, the records' read (one each for the batch; the
 * call wrote the descriptors with its inputs), then the recall's commands; freekv's: the
 * recall's only (its call selected, with the correction) */
Test(faults, background_enqueue) {
    background_faults(FKV_POLICY_SPECULATIVE, FKV_CPU_FAULT_ENQUEUE, 4);
    background_faults(FKV_POLICY_FREEKV, FKV_CPU_FAULT_ENQUEUE, 1);
}
Test(faults, background_run) {
    background_faults(FKV_POLICY_SPECULATIVE, FKV_CPU_FAULT_RUN, 4);
    background_faults(FKV_POLICY_FREEKV, FKV_CPU_FAULT_RUN, 1);
}
