/* Running one policy over a trace and measuring it (run.h). */
#include "run.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dump.h"

#define DIGEST_SEED 0xcbf29ce484222325ull

static uint64_t digest(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* `what` prefixes the library's message; NULL where the library already names the step. */
#define TRY(call, what)                                                                      \
    do {                                                                                     \
        fkv_status st_ = (call);                                                             \
        if (st_ != FKV_OK) {                                                                 \
            snprintf(res->error, sizeof res->error, "%s%s%s", what ? what : "",              \
                     what ? ": " : "", fkv_last_error());                                    \
            goto done;                                                                       \
        }                                                                                    \
    } while (0)

/* The worst of a series so far and a new value: NaN once any value is NaN (a NaN never
 * compares greater, so a plain max drops it and shows a finite worst next to a NaN mean). */
static double worst_max(double worst, double x) {
    return isnan(worst) || isnan(x) ? NAN : x > worst ? x : worst;
}

static double worst_min(double worst, double x) {
    return isnan(worst) || isnan(x) ? NAN : x < worst ? x : worst;
}

double fkv_eval_below_tau(const double *group_cos, size_t n, float tau) {
    size_t below = 0;
    for (size_t i = 0; i < n; i++)
        below += !(group_cos[i] >= (double)tau); /* as the devices flag: NaN is corrected */
    return n ? (double)below / (double)n : NAN;
}

/* How many of the sorted pages `want` (n_want, ending early at -1) the sorted list `have`
 * holds. */
static size_t count_kept(const int32_t *want, size_t n_want, const int32_t *have, size_t n_have) {
    size_t kept = 0, j = 0;
    for (size_t i = 0; i < n_want; i++) {
        while (j < n_have && have[j] < want[i])
            j++;
        kept += j < n_have && have[j] == want[i];
    }
    return kept;
}

void fkv_eval_result_free(fkv_eval_result *r) {
    free(r->step_mass);
    free(r->needle_hit);
    free(r->mid);
    r->step_mass = NULL;
    r->needle_hit = NULL;
    r->mid = NULL;
}

void fkv_eval_run_policy(fkv_device *dev, const fkv_config *base, const fkv_eval_ref *ref,
                         FILE *dump, fkv_eval_result *res) {
    const fkv_trace *tr = ref->trace;
    const fkv_eval_mass *m = ref->mass;
    const fkv_trace_info *in = fkv_trace_get_info(tr);
    const uint32_t P = in->prompt_tokens, S = in->decode_steps, d = in->head_dim;
    const uint32_t Hq = in->q_heads, Hk = in->kv_heads, L = in->layers, G = Hq / Hk;
    const size_t q_row = (size_t)Hq * d, kv_row = (size_t)Hk * d;
    fkv_config cfg = *base;
    cfg.policy = res->policy;
    const int is_dense = cfg.policy == FKV_POLICY_DENSE, is_quest = cfg.policy == FKV_POLICY_QUEST;
    const int checks = cfg.policy == FKV_POLICY_FREEKV;
    const int speculates = checks || cfg.policy == FKV_POLICY_SPECULATIVE;
    const uint32_t pg = cfg.page_size, sp = cfg.sink_tokens / pg, wp = cfg.window_tokens / pg;
    const uint32_t n_mid = (cfg.budget_tokens - cfg.sink_tokens - cfg.window_tokens) / pg;
    size_t n_needles;
    const fkv_needle *needles = fkv_trace_needles(tr, &n_needles);
    fkv_context *ctx = NULL;
    float *out = malloc(sizeof(float) * q_row);
    int32_t *pages = malloc(sizeof(int32_t) * m->max_pages);
    double *mass = malloc(sizeof(double) * G);
    uint64_t *corr = checks ? calloc(2 * (size_t)L * Hk, sizeof *corr) : NULL;
    res->step_mass = calloc(S ? S : 1, sizeof *res->step_mass);
    res->needle_hit = calloc(n_needles ? n_needles : 1, 1);
    res->n_mid = n_mid;
    if (is_quest)
        res->mid = malloc(sizeof(int32_t) * ((size_t)S * L * Hk * n_mid + 1));
    double l2_sum = 0, cov_sum = 0;
    uint64_t l2_n = 0, cov_n = 0;
    res->l2_max = 0;
    res->cov_min = 1;
    res->needles = (uint32_t)n_needles;
    res->steps = S;
    res->below_tau = speculates ? fkv_eval_below_tau(ref->group_cos, (size_t)S * L * Hk, cfg.tau)
                                : NAN;
    res->output_digest = res->pages_digest = DIGEST_SEED;
    double t0 = now_s();
    if (!out || !pages || !mass || (checks && !corr) || !res->step_mass || !res->needle_hit ||
        (is_quest && !res->mid)) {
        snprintf(res->error, sizeof res->error, "out of host memory");
        goto done;
    }
    TRY(fkv_context_create(dev, &cfg, &ctx), NULL);
    const uint32_t seq = 0;
    for (uint32_t l = 0; l < L; l++) {
        fkv_tensor k = {fkv_trace_keys(tr, l), NULL, 0}, v = {fkv_trace_values(tr, l), NULL, 0};
        fkv_tensor q = {fkv_trace_queries(tr, l), NULL, 0};
        TRY(fkv_prefill(ctx, seq, l, P, &k, &v, &q), "prefill");
    }
    TRY(fkv_context_reset_stats(ctx), "resetting statistics");
    /* corrections per (layer, KV head) before (corr) and after (corr + L*Hk) each call */
    uint64_t *corr_now = corr ? corr + (size_t)L * Hk : NULL;
    for (uint32_t t = 0; t < S; t++) {
        const uint32_t wb = fkv_eval_window_begin(P + t + 1, pg, sp, wp);
        double step_sum = 0;
        for (uint32_t l = 0; l < L; l++) {
            fkv_tensor q = {fkv_trace_queries(tr, l) + (size_t)(t + 1) * q_row, NULL, 0};
            fkv_tensor k = {fkv_trace_keys(tr, l) + (size_t)(P + t) * kv_row, NULL, 0};
            fkv_tensor v = {fkv_trace_values(tr, l) + (size_t)(P + t) * kv_row, NULL, 0};
            fkv_tensor o = {out, NULL, 0};
            TRY(fkv_decode_layer(ctx, l, 1, &seq, &q, &k, &v, &o), "decode");
            if (checks)
                TRY(fkv_context_get_corrections(ctx, corr_now, (size_t)L * Hk), "corrections");
            for (size_t i = 0; i < q_row; i++)
                res->nonfinite += !isfinite(out[i]);
            res->output_digest = digest(res->output_digest, out, sizeof(float) * q_row);
            float *dref = ref->dense_out + ((size_t)t * L + l) * q_row;
            if (is_dense) {
                memcpy(dref, out, sizeof(float) * q_row);
            } else {
                double num = 0, den = 0;
                for (size_t i = 0; i < q_row; i++) {
                    double e = (double)out[i] - dref[i];
                    num += e * e;
                    den += (double)dref[i] * dref[i];
                }
                double rel = sqrt(num) / (den > 0 ? sqrt(den) : 1e-30);
                res->l2_max = worst_max(res->l2_max, rel);
                l2_sum += rel; /* a NaN makes the mean NaN too */
                l2_n++;
            }
            for (uint32_t kh = 0; kh < Hk; kh++) {
                size_t np = 0;
                TRY(fkv_context_attended_pages(ctx, seq, l, kh, pages, m->max_pages, &np),
                    "attended pages");
                if (np > m->max_pages)
                    np = m->max_pages;
                res->pages_digest = digest(res->pages_digest, &np, sizeof np);
                res->pages_digest = digest(res->pages_digest, pages, sizeof(int32_t) * np);
                for (uint32_t j = 0; j < G; j++) {
                    const float *row = fkv_eval_mass_at(m, t, l, kh * G + j);
                    double cov = 0;
                    for (size_t i = 0; i < np; i++)
                        if (pages[i] >= 0 && (uint32_t)pages[i] < m->max_pages)
                            cov += row[pages[i]];
                    mass[j] = cov;
                    cov_sum += cov;
                    step_sum += cov;
                    cov_n++;
                    res->cov_min = worst_min(res->cov_min, cov);
                }
                const size_t at = ((size_t)t * L + l) * Hk + kh;
                if (is_quest) { /* its middle pages: the exact selection the others keep */
                    int32_t *mid = res->mid + at * n_mid;
                    uint32_t n = 0;
                    for (size_t i = 0; i < np && n < n_mid; i++)
                        if (pages[i] >= (int32_t)sp && pages[i] < (int32_t)wb)
                            mid[n++] = pages[i];
                    for (; n < n_mid; n++)
                        mid[n] = -1;
                }
                const fkv_eval_result *qr = ref->quest ? ref->quest : is_quest ? res : NULL;
                const int32_t *exact = qr && qr->mid ? qr->mid + at * qr->n_mid : NULL;
                size_t n_exact = 0, kept = 0;
                while (exact && n_exact < qr->n_mid && exact[n_exact] >= 0)
                    n_exact++;
                if (exact) {
                    kept = count_kept(exact, n_exact, pages, np);
                    res->quest_pages += n_exact;
                    res->quest_pages_kept += kept;
                }
                for (size_t i = 0; i < n_needles; i++) {
                    const fkv_needle *nd = &needles[i];
                    if (nd->step != t || nd->layer != l || nd->kv_head != kh)
                        continue;
                    int32_t want = (int32_t)(nd->token / pg);
                    for (size_t e = 0; e < np && !res->needle_hit[i]; e++)
                        res->needle_hit[i] = pages[e] == want;
                    res->needle_hits += res->needle_hit[i];
                }
                if (dump && !is_dense) {
                    const size_t lk = (size_t)l * Hk + kh;
                    fkv_eval_dump_record rec = {
                        .policy = fkv_policy_name(cfg.policy),
                        .step = t,
                        .layer = l,
                        .kv_head = kh,
                        .pages = pages,
                        .n_pages = np,
                        .corrected = checks ? corr_now[lk] != corr[lk] : -1,
                        .group_cosine = ref->group_cos[at],
                        .mass = mass,
                        .group = G,
                        .exact = exact,
                        .n_exact = n_exact,
                        .exact_kept = n_exact ? (double)kept / (double)n_exact : NAN};
                    fkv_eval_dump_write(dump, &rec);
                }
            }
            if (checks)
                memcpy(corr, corr_now, sizeof *corr * L * Hk);
        }
        res->step_mass[t] = step_sum / ((double)L * Hq);
    }
    TRY(fkv_context_sync(ctx), "sync");
    fkv_stats s;
    TRY(fkv_context_get_stats(ctx, &s), "statistics");
    res->corrections = s.corrections;
    res->heads_checked = s.heads_checked;
    res->pages_recalled = s.pages_recalled;
    res->bytes_recalled = s.bytes_recalled;
    res->correction_rate = s.heads_checked ? (double)s.corrections / (double)s.heads_checked : 0;
    res->recalled_per_step = S ? (double)s.pages_recalled / S : 0;
    res->bytes_per_step = S ? (double)s.bytes_recalled / S : 0;
    res->l2_mean = l2_n ? l2_sum / (double)l2_n : 0;
    res->cov_mean = cov_n ? cov_sum / (double)cov_n : 0;
    res->ran = 1;
    /* a run whose outputs or measures are not finite did not succeed */
    double measures[] = {res->l2_mean, res->l2_max, res->cov_mean, res->cov_min};
    int finite = 1;
    for (int i = 0; i < 4; i++)
        finite &= isfinite(measures[i]) != 0;
    if (res->nonfinite)
        snprintf(res->error, sizeof res->error,
                 "%llu of %llu attention output values are not finite (NaN or Inf)",
                 (unsigned long long)res->nonfinite, (unsigned long long)S * L * q_row);
    else if (!finite)
        snprintf(res->error, sizeof res->error,
                 "a measure is not finite (the dense reference's outputs are not)");
    res->ok = res->nonfinite == 0 && finite;
done:
    res->seconds = now_s() - t0;
    fkv_context_destroy(ctx);
    free(out);
    free(pages);
    free(mass);
    free(corr);
}

void fkv_eval_relate(fkv_eval_result *r, const fkv_eval_result *quest) {
    r->mass_vs_quest = r->worst_step_vs_quest = r->quest_kept_share = NAN;
    r->needles_of_quest = r->quest_needles = 0;
    if (quest == NULL || !quest->ran || !r->ran)
        return;
    /* both ran over the same trace: the same steps and needles */
    r->mass_vs_quest = r->cov_mean / quest->cov_mean;
    double worst = NAN;
    for (uint32_t t = 0; t < r->steps; t++) {
        double x = r->step_mass[t] / quest->step_mass[t];
        worst = t == 0 ? x : worst_min(worst, x);
    }
    r->worst_step_vs_quest = worst;
    for (uint32_t i = 0; i < r->needles; i++) {
        r->quest_needles += quest->needle_hit[i];
        r->needles_of_quest += quest->needle_hit[i] && r->needle_hit[i];
    }
    if (r->policy != FKV_POLICY_DENSE && r->quest_pages > 0)
        r->quest_kept_share = (double)r->quest_pages_kept / (double)r->quest_pages;
}
