/* `freekv eval --sweep`: the recommendation rule on constructed rows, the axes and targets,
 * the combinations' order, and a small sweep on the CPU reference backend checked against
 * single runs of the same settings. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sweep.h"
#include "tool_run.h"

int fkv_eval_main(int argc, char **argv);

static const fkv_sweep_targets no_targets = {.mass = NAN, .mass_worst = NAN, .needles = NAN};

/* A row that ran, with everything at quest's level, costing `bytes` and `corr`. */
static fkv_sweep_row row(uint64_t bytes, uint64_t corr) {
    return (fkv_sweep_row){.ok = 1, .mass_vs_quest = 1.0, .worst_step_vs_quest = 1.0,
                           .needles_of_quest = 4, .quest_needles = 4, .needles = 4,
                           .bytes_recalled = bytes, .corrections = corr,
                           .bytes_per_step = (double)bytes / 8};
}

Test(sweep_rule, cheapest_by_bytes_then_corrections_then_order) {
    fkv_sweep_targets t = no_targets;
    t.mass = 0.99;
    fkv_sweep_row rows[] = {row(900, 1), row(500, 40), row(500, 30), row(700, 0), row(500, 30)};
    /* 500 bytes three times: the fewest corrections (30) twice: the first of those */
    cr_expect_eq(fkv_sweep_recommend(rows, 5, &t), 2);
    /* bytes first: 0 corrections at 700 bytes does not beat 500 bytes */
    rows[2].bytes_recalled = rows[4].bytes_recalled = 501;
    cr_expect_eq(fkv_sweep_recommend(rows, 5, &t), 1);
    /* an exact tie on both keeps the earlier row */
    fkv_sweep_row same[] = {row(10, 5), row(10, 5), row(10, 5)};
    cr_expect_eq(fkv_sweep_recommend(same, 3, &t), 0);
    cr_expect_eq(fkv_sweep_recommend(same, 0, &t), -1, "no rows");
}

Test(sweep_rule, only_rows_that_ran_and_meet_every_target) {
    fkv_sweep_targets t = no_targets;
    t.mass = 0.99;
    t.mass_worst = 0.9;
    t.needles = 1.0;
    fkv_sweep_row rows[] = {row(100, 0), row(200, 0), row(300, 0), row(400, 0), row(500, 0),
                            row(600, 0)};
    rows[0].ok = 0;                   /* the cheapest failed to run: never recommended */
    rows[1].mass_vs_quest = 0.9899;   /* just below the mean-mass target */
    rows[2].worst_step_vs_quest = 0.8; /* its worst step misses */
    rows[3].needles_of_quest = 3;     /* loses a needle quest found */
    rows[4].mass_vs_quest = NAN;      /* a measure that is not a number meets nothing */
    cr_expect_eq(fkv_sweep_recommend(rows, 6, &t), 5);
    for (int i = 0; i < 5; i++)
        cr_expect_not(fkv_sweep_meets(&rows[i], &t), "row %d", i);
    cr_expect(fkv_sweep_meets(&rows[5], &t));
    /* none meets: -1 */
    rows[5].mass_vs_quest = 0.5;
    cr_expect_eq(fkv_sweep_recommend(rows, 6, &t), -1);
    /* a target exactly met is met */
    rows[5].mass_vs_quest = 0.99;
    cr_expect_eq(fkv_sweep_recommend(rows, 6, &t), 5);
    /* a target not set is not checked: only the mass here, so row 2 and 3 qualify too */
    t.mass_worst = t.needles = NAN;
    cr_expect_eq(fkv_sweep_recommend(rows, 6, &t), 2);
}

Test(sweep_rule, needles_relative_to_quest) {
    fkv_sweep_targets t = no_targets;
    t.needles = 0.5;
    fkv_sweep_row r = row(1, 0);
    r.quest_needles = 2;
    r.needles_of_quest = 1;
    cr_expect(fkv_sweep_meets(&r, &t), "1 of quest's 2 meets 0.5");
    t.needles = 0.75;
    cr_expect_not(fkv_sweep_meets(&r, &t));
    /* quest found none at this setting: there is nothing of quest's to keep */
    r.quest_needles = r.needles_of_quest = 0;
    cr_expect(fkv_sweep_meets(&r, &t));
}

Test(sweep_spec, axes_targets_and_order) {
    fkv_sweep_spec s;
    memset(&s, 0, sizeof s);
    cr_assert_eq(fkv_sweep_parse_axis("tau=0.8,0.9", &s), 0);
    cr_assert_eq(fkv_sweep_parse_axis("page=16,32", &s), 0);
    cr_assert_eq(fkv_sweep_parse_axis("budget=256,512,1024", &s), 0);
    cr_assert_eq(fkv_sweep_parse_axis("temp=sqrt-d", &s), 0);
    cr_expect(s.given);
    cr_assert_eq(fkv_sweep_count(&s), 2 * 2 * 3 * 1);
    const fkv_sweep_point base = {.page = 8, .budget = 64, .temp = FKV_TEMP_RAW, .tau = 0.5f};
    /* page, budget, temperature, tau from the outermost loop to the innermost */
    fkv_sweep_point p = fkv_sweep_point_at(&s, &base, 0);
    cr_expect(p.page == 16 && p.budget == 256 && p.temp == FKV_TEMP_SQRT_D && p.tau == 0.8f);
    p = fkv_sweep_point_at(&s, &base, 1);
    cr_expect(p.page == 16 && p.budget == 256 && p.tau == 0.9f);
    p = fkv_sweep_point_at(&s, &base, 2);
    cr_expect(p.page == 16 && p.budget == 512 && p.tau == 0.8f);
    p = fkv_sweep_point_at(&s, &base, 11);
    cr_expect(p.page == 32 && p.budget == 1024 && p.tau == 0.9f);
    /* an axis not swept keeps the base value */
    memset(&s, 0, sizeof s);
    cr_assert_eq(fkv_sweep_parse_axis("budget=256", &s), 0);
    p = fkv_sweep_point_at(&s, &base, 0);
    cr_expect(p.page == 8 && p.budget == 256 && p.temp == FKV_TEMP_RAW && p.tau == 0.5f);
    /* refused: unknown axis, no list, an axis twice, repeats, bad values, empty items */
    const char *bad[] = {"alpha=1", "tau", "budget=256", "tau=0.8,0.8", "tau=2", "tau=0.8,,0.9",
                         "page=16,x", "temp=hot", "temp=raw,raw", "budget=", "page=-16"};
    tr_capture("eval_sweep_spec"); /* the messages go to a file, not the test log */
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_expect_eq(fkv_sweep_parse_axis(bad[i], &s), -1, "%s", bad[i]);
    fkv_sweep_targets t = no_targets;
    cr_assert_eq(fkv_sweep_parse_target("mass=0.99,needles=1", &t), 0);
    cr_assert_eq(fkv_sweep_parse_target("mass-worst=0.9", &t), 0);
    cr_expect(t.given && t.mass == 0.99 && t.needles == 1.0 && t.mass_worst == 0.9);
    const char *bad_targets[] = {"mass=0.9", "needles=1.5", "speed=2", "mass", "", "mass=-1",
                                 "needles=nan"};
    for (size_t i = 0; i < sizeof bad_targets / sizeof *bad_targets; i++) {
        fkv_sweep_targets u = no_targets;
        u.mass = i == 0 ? 0.5 : NAN; /* the first: given twice */
        cr_expect_eq(fkv_sweep_parse_target(bad_targets[i], &u), -1, "%s", bad_targets[i]);
    }
    tr_cleanup();
}

/* ---- a small sweep ------------------------------------------------------------------------ */

static void capture(void) { tr_capture("eval_sweep"); }

TestSuite(eval_sweep, .init = capture, .fini = tr_cleanup);

#define TINY "--layers", "2", "--q-heads", "4", "--kv-heads", "2", "--head-dim", "32", \
             "--context", "512", "--steps", "6", "--page", "8", "--sink", "16", "--window", "32"

/* The value after `"key": ` in the n-th (0-based) row object of a sweep's JSON. */
static double row_value(const char *json, int n, const char *key) {
    const char *p = strstr(json, "\"rows\": [");
    cr_assert_not_null(p);
    for (int i = 0; i <= n; i++) {
        p = strstr(p + 1, "{\"page\"");
        cr_assert_not_null(p, "row %d", n);
    }
    char k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *end = strchr(p, '}');
    p = strstr(p, k);
    cr_assert(p && p < end, "row %d has no %s", n, key);
    p += strlen(k);
    return *p == 't' ? 1 : *p == 'f' ? 0 : strtod(p, NULL);
}

static int count(const char *s, const char *what) {
    int n = 0;
    for (const char *p = strstr(s, what); p; p = strstr(p + 1, what))
        n++;
    return n;
}

Test(eval_sweep, twelve_combinations_table_and_recommendation) {
    char dir[64], json[96], single[96];
    snprintf(dir, sizeof dir, "%s", tr_temp_dir());
    snprintf(json, sizeof json, "%s/sweep.json", dir);
    snprintf(single, sizeof single, "%s/single.json", dir);
    int rc = tr_run(fkv_eval_main, "eval", TINY, "--sweep", "tau=0.8,0.85,0.9,0.95",
                    "budget=80,112,144", "--target", "mass=0.995", "--json", json, NULL);
    cr_assert_eq(rc, 0, "%s", tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "sweep: 12 combinations") != NULL, "%s", out);
    cr_expect(strstr(out, "targets: mass >= 0.995 x quest's (mean)\n") != NULL, "%s", out);
    cr_expect_eq(count(out, "\n    8 "), 12, "one table row per combination: %s", out);
    cr_expect(strstr(out, "recommendation: ") != NULL, "%s", out);
    cr_expect_str_eq(tr_stderr(), "", "no progress bar when stderr is not a terminal");
    char *j = strdup(tr_slurp(json));
    cr_assert_not_null(j);
    cr_expect_eq(count(j, "{\"page\""), 12, "12 rows");
    /* the recommendation is the rule applied to the rows as written */
    fkv_sweep_row rows[12];
    fkv_sweep_targets t = no_targets;
    t.mass = 0.995;
    for (int i = 0; i < 12; i++) {
        rows[i] = (fkv_sweep_row){
            .ok = (int)row_value(j, i, "ok"),
            .mass_vs_quest = row_value(j, i, "mass_vs_quest"),
            .worst_step_vs_quest = row_value(j, i, "worst_step_vs_quest"),
            .bytes_recalled = (uint64_t)row_value(j, i, "bytes_recalled"),
            .corrections = (uint64_t)row_value(j, i, "corrections")};
        cr_expect_eq(rows[i].ok, 1, "row %d ran", i);
        cr_expect_eq((int)row_value(j, i, "meets_targets"), fkv_sweep_meets(&rows[i], &t));
        /* quest runs once per budget: the same for every tau */
        cr_expect_eq(row_value(j, i, "quest_mass"), row_value(j, i / 4 * 4, "quest_mass"));
        /* the column that matches the correction rate */
        cr_expect_float_eq(row_value(j, i, "group_cosine_below_tau"),
                           row_value(j, i, "correction_rate"), 1e-6, "row %d", i);
    }
    long best = fkv_sweep_recommend(rows, 12, &t);
    const char *rec = strstr(j, "\"recommendation\": ");
    cr_assert_not_null(rec);
    if (best < 0) {
        cr_expect(strncmp(rec, "\"recommendation\": null", 22) == 0, "%s", rec);
    } else {
        char want[64];
        snprintf(want, sizeof want, "\"recommendation\": {\"row\": %ld,", best);
        cr_expect(strncmp(rec, want, strlen(want)) == 0, "%s vs %s", rec, want);
    }
    /* a row equals a single run of its setting: budget 112, tau 0.9 is row 6 */
    cr_assert_eq(tr_run(fkv_eval_main, "eval", TINY, "--budget", "112", "--tau", "0.9",
                        "--policies", "freekv", "--json", single, NULL),
                 0, "%s", tr_stderr());
    const char *s = tr_slurp(single);
    const char *fk = strstr(s, "\"policy\": \"freekv\"");
    cr_assert_not_null(fk, "%s", s);
    double mass = strtod(strstr(fk, "\"mass_mean\": ") + 13, NULL);
    double corr = strtod(strstr(fk, "\"correction_rate\": ") + 19, NULL);
    double rel = strtod(strstr(fk, "\"quest_relative\": {\"mass\": ") + 27, NULL);
    cr_expect_float_eq(row_value(j, 6, "mass"), mass, 1e-6);
    cr_expect_float_eq(row_value(j, 6, "correction_rate"), corr, 1e-6);
    cr_expect_float_eq(row_value(j, 6, "mass_vs_quest"), rel, 1e-6);
    free(j);
    tr_remove_tree(dir);
}

Test(eval_sweep, says_when_no_setting_meets_the_targets) {
    char dir[64], json[96];
    snprintf(dir, sizeof dir, "%s", tr_temp_dir());
    snprintf(json, sizeof json, "%s/sweep.json", dir);
    /* freekv cannot cover 1.5 times quest's mass */
    int rc = tr_run(fkv_eval_main, "eval", TINY, "--budget", "80", "--sweep", "tau=0.8,0.9",
                    "temp=raw,sqrt-d", "--target", "mass=1.5", "--json", json, NULL);
    cr_assert_eq(rc, 0, "%s", tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "recommendation: none. No setting of the 4 meets every target "
                          "(mass >= 1.5 x quest's (mean)).") != NULL, "%s", out);
    cr_expect(strstr(out, "highest mean mass: page 8, budget 80, temp ") != NULL, "%s", out);
    cr_expect(strstr(tr_slurp(json), "\"recommendation\": null") != NULL);
    tr_remove_tree(dir);
}
