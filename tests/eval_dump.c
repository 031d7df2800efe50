/* `freekv eval --dump FILE.jsonl`: the record writer, and a run's records read back with the
 * strict JSON reader and checked against each other and against the run's JSON results. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dump.h"
#include "json.h"
#include "tool_run.h"

int fkv_eval_main(int argc, char **argv);

/* What fkv_eval_dump_write printed for r. */
static char *written(const fkv_eval_dump_record *r) {
    static char text[4096];
    FILE *f = tmpfile();
    cr_assert_not_null(f);
    fkv_eval_dump_write(f, r);
    rewind(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

Test(dump, record_format) {
    const int32_t pages[] = {0, 1, 7, 9, 30}, exact[] = {7, 8, 9};
    const double mass[] = {0.5, 0.25, 1.0 / 3};
    fkv_eval_dump_record r = {.policy = "freekv", .step = 3, .layer = 1, .kv_head = 2,
                              .pages = pages, .n_pages = 5, .corrected = 1,
                              .group_cosine = 0.8125, .mass = mass, .group = 3, .exact = exact,
                              .n_exact = 3, .exact_kept = 2.0 / 3};
    cr_expect_str_eq(written(&r),
                     "{\"policy\": \"freekv\", \"step\": 3, \"layer\": 1, \"kv_head\": 2, "
                     "\"pages\": [0, 1, 7, 9, 30], \"corrected\": true, \"group_cosine\": 0.8125, "
                     "\"mass\": [0.5, 0.25, 0.333333], \"exact_pages\": [7, 8, 9], "
                     "\"exact_kept\": 0.666667}\n");
    /* no check (null), nothing exact to keep (null), empty lists */
    r = (fkv_eval_dump_record){.policy = "quest", .corrected = -1, .group_cosine = -1,
                               .mass = mass, .group = 1, .exact_kept = NAN};
    cr_expect_str_eq(written(&r),
                     "{\"policy\": \"quest\", \"step\": 0, \"layer\": 0, \"kv_head\": 0, "
                     "\"pages\": [], \"corrected\": null, \"group_cosine\": -1, "
                     "\"mass\": [0.5], \"exact_pages\": [], \"exact_kept\": null}\n");
    r.corrected = 0;
    cr_expect(strstr(written(&r), "\"corrected\": false") != NULL);
}

/* ---- a run's records ---------------------------------------------------------------------- */

#define MAX_LIST 256

typedef struct rec {
    char policy[16];
    int step, layer, kv_head;
    int pages[MAX_LIST], n_pages;
    int corrected; /* -1: null */
    double cos;
    double mass[8];
    int n_mass;
    int exact[MAX_LIST], n_exact;
    double kept; /* NaN: null */
    unsigned keys;
} rec;

typedef struct list {
    double v[MAX_LIST];
    int n;
} list;

static fkv_status number_element(fkv_jparser *ps, size_t i, void *ctx) {
    list *l = ctx;
    cr_assert_lt(i, MAX_LIST);
    l->v[l->n++] = strtod((const char *)ps->p, NULL);
    fkv_jvalue v;
    fkv_status st = fkv_json_value(ps, &v);
    cr_assert_eq(v.type, FKV_J_NUMBER, "a list of numbers");
    return st;
}

/* The array at the parser's position, read with a copy of the parser. */
static void read_list(const fkv_jparser *at, list *l) {
    fkv_jparser ps = *at;
    l->n = 0;
    cr_assert_eq(fkv_json_array(&ps, number_element, l), FKV_OK, "%s", fkv_last_error());
}

static fkv_status record_member(fkv_jparser *ps, const fkv_jvalue *key, const fkv_jvalue *val,
                                void *ctx) {
    rec *r = ctx;
    static const char *const keys[] = {"policy", "step", "layer", "kv_head", "pages",
                                       "corrected", "group_cosine", "mass", "exact_pages",
                                       "exact_kept"};
    int k = -1;
    for (int i = 0; i < 10; i++)
        if (strcmp(key->str, keys[i]) == 0)
            k = i;
    cr_assert_geq(k, 0, "unknown key %s", key->str);
    cr_assert_eq(r->keys & (1u << k), 0, "key %s twice", key->str);
    r->keys |= 1u << k;
    list l;
    switch (k) {
    case 0:
        cr_assert_eq(val->type, FKV_J_STRING);
        snprintf(r->policy, sizeof r->policy, "%.15s", val->str);
        break;
    case 1:
    case 2:
    case 3:
        cr_assert(val->type == FKV_J_NUMBER && val->integer, "%s: an integer", key->str);
        *(k == 1 ? &r->step : k == 2 ? &r->layer : &r->kv_head) = (int)val->u;
        break;
    case 5:
        cr_assert(val->type == FKV_J_NULL || val->type == FKV_J_BOOL);
        r->corrected = val->type == FKV_J_NULL ? -1 : *ps->p == 't';
        break;
    case 6:
    case 9:
        cr_assert(val->type == FKV_J_NUMBER || (k == 9 && val->type == FKV_J_NULL));
        *(k == 6 ? &r->cos : &r->kept) =
            val->type == FKV_J_NULL ? NAN : strtod((const char *)ps->p, NULL);
        break;
    default: /* pages, mass, exact_pages */
        cr_assert_eq(val->type, FKV_J_ARRAY, "%s: an array", key->str);
        read_list(ps, &l);
        for (int i = 0; i < l.n; i++) {
            if (k == 4)
                r->pages[i] = (int)l.v[i];
            else if (k == 8)
                r->exact[i] = (int)l.v[i];
            else if (i < 8)
                r->mass[i] = l.v[i];
        }
        *(k == 4 ? &r->n_pages : k == 8 ? &r->n_exact : &r->n_mass) = l.n;
        break;
    }
    return FKV_OK;
}

static void parse_record(const char *line, size_t len, rec *r) {
    memset(r, 0, sizeof *r);
    fkv_jparser ps;
    cr_assert_eq(fkv_json_begin(&ps, line, len, "dump line"), FKV_OK);
    cr_assert_eq(fkv_json_object(&ps, record_member, r), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_json_end(&ps, "object"), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(r->keys, (1u << 10) - 1, "missing keys: %.200s", line);
}

/* A number of the policy's object in the --json results ("mass_mean": ...). */
static double json_result(const char *json, const char *policy, const char *key) {
    char pat[64], k[64];
    snprintf(pat, sizeof pat, "\"policy\": \"%s\"", policy);
    const char *p = strstr(json, pat);
    cr_assert_not_null(p, "%s", policy);
    snprintf(k, sizeof k, "\"%s\": ", key);
    p = strstr(p, k);
    cr_assert_not_null(p, "%s", key);
    return strtod(p + strlen(k), NULL);
}

static void capture(void) { tr_capture("eval_dump"); }

TestSuite(eval_dump, .init = capture, .fini = tr_cleanup);

/* 2 layers, 8/2 heads, prompt 512, 6 steps; pages of 8, sink 2 pages, window 4 pages */
#define STEPS 6
#define LAYERS 2
#define KV 2
#define GROUP 4
#define PAGE 8
#define SINK_PAGES 2
#define WINDOW_PAGES 4
#define PROMPT 512
#define TAU 0.9

Test(eval_dump, records_of_a_run) {
    char dir[64], dump[96], json[96];
    snprintf(dir, sizeof dir, "%s", tr_temp_dir());
    snprintf(dump, sizeof dump, "%s/d.jsonl", dir);
    snprintf(json, sizeof json, "%s/r.json", dir);
    int rc = tr_run(fkv_eval_main, "eval", "--layers", "2", "--q-heads", "8", "--kv-heads", "2",
                    "--head-dim", "32", "--context", "512", "--steps", "6", "--page", "8",
                    "--budget", "128", "--sink", "16", "--window", "32", "--tau", "0.9",
                    "--policies", "quest,speculative,freekv", "--dump", dump, "--json", json,
                    NULL);
    cr_assert_eq(rc, 0, "%s", tr_stderr());
    char *results = strdup(tr_slurp(json));
    cr_assert_not_null(results);
    const char *policies[] = {"quest", "speculative", "freekv"};
    enum { PER_POLICY = STEPS * LAYERS * KV, N = 3 * PER_POLICY };
    rec *recs = calloc(N, sizeof *recs);
    cr_assert_not_null(recs);
    FILE *f = fopen(dump, "r");
    cr_assert_not_null(f);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int n = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        cr_assert_lt(n, N, "more records than (policy, step, layer, KV head)");
        cr_assert_eq(line[len - 1], '\n');
        parse_record(line, (size_t)len - 1, &recs[n++]);
    }
    free(line);
    fclose(f);
    cr_assert_eq(n, N, "%d records: one per (shown policy but dense, step, layer, KV head)", n);
    for (int p = 0; p < 3; p++) {
        uint64_t corrected = 0, exact_total = 0;
        double mass_sum = 0, kept_total = 0;
        for (int i = 0; i < PER_POLICY; i++) {
            const rec *r = &recs[p * PER_POLICY + i];
            const rec *q = &recs[i]; /* quest's record of the same (step, layer, KV head) */
            /* decode order */
            cr_assert_str_eq(r->policy, policies[p]);
            cr_assert_eq(r->step, i / (LAYERS * KV));
            cr_assert_eq(r->layer, i / KV % LAYERS);
            cr_assert_eq(r->kv_head, i % KV);
            /* attended pages: ascending, the sink and the window always */
            int n_tok = PROMPT + r->step + 1, cur = n_tok / PAGE;
            int wb = cur + 1 - WINDOW_PAGES > SINK_PAGES ? cur + 1 - WINDOW_PAGES : SINK_PAGES;
            for (int j = 1; j < r->n_pages; j++)
                cr_assert_lt(r->pages[j - 1], r->pages[j], "pages ascending");
            for (int j = 0; j < SINK_PAGES; j++)
                cr_assert_eq(r->pages[j], j, "sink page %d", j);
            cr_assert_eq(r->pages[r->n_pages - 1], cur, "the window ends at the current page");
            /* exact selection: quest's middle pages, the same in every policy's record */
            cr_assert_eq(r->n_exact, q->n_exact);
            cr_assert_eq(memcmp(r->exact, q->exact, sizeof(int) * (size_t)r->n_exact), 0);
            int kept = 0;
            for (int e = 0; e < r->n_exact; e++) {
                cr_assert(r->exact[e] >= SINK_PAGES && r->exact[e] < wb, "a middle page");
                for (int j = 0; j < r->n_pages; j++)
                    kept += r->pages[j] == r->exact[e];
            }
            exact_total += (uint64_t)r->n_exact;
            kept_total += (double)kept;
            if (r->n_exact)
                cr_assert_float_eq(r->kept, (double)kept / r->n_exact, 1e-6);
            else
                cr_assert(isnan(r->kept), "no exact pages: null");
            if (p == 0)
                cr_assert_eq(kept, r->n_exact, "quest keeps its own selection");
            /* the group cosine is the trace's: the same in every policy's record */
            cr_assert_float_eq(r->cos, q->cos, 1e-12);
            cr_assert(r->cos > -1.000001 && r->cos < 1.000001);
            /* corrected: freekv only, and where the group cosine is below tau (well clear of
             * it: the devices compute the cosine in f32) */
            if (p == 2) {
                cr_assert_neq(r->corrected, -1, "freekv records say whether it corrected");
                corrected += (uint64_t)r->corrected;
                if (fabs(r->cos - TAU) > 1e-4)
                    cr_assert_eq(r->corrected, r->cos < TAU, "step %d layer %d head %d: cos %g",
                                 r->step, r->layer, r->kv_head, r->cos);
            } else {
                cr_assert_eq(r->corrected, -1, "%s does not check: null", r->policy);
            }
            cr_assert_eq(r->n_mass, GROUP);
            for (int j = 0; j < GROUP; j++) {
                cr_assert(r->mass[j] >= 0 && r->mass[j] <= 1.000001, "mass %g", r->mass[j]);
                mass_sum += r->mass[j];
            }
        }
        /* the records add up to the run's results */
        double mean = mass_sum / (PER_POLICY * GROUP);
        cr_expect_float_eq(mean, json_result(results, policies[p], "mass_mean"), 2e-6,
                           "%s mass", policies[p]);
        cr_expect_float_eq(kept_total / (double)exact_total,
                           json_result(results, policies[p], "quest_pages_kept"), 2e-6,
                           "%s: quest's pages kept", policies[p]);
        if (p == 2) {
            cr_expect_eq((double)corrected, json_result(results, "freekv", "corrections"));
            cr_expect_gt(corrected, 0, "the test must see corrections");
            cr_expect_lt(corrected, PER_POLICY, "and heads left alone");
        }
    }
    free(recs);
    free(results);
    tr_remove_tree(dir);
}
