/* The sweep's axes, targets, combinations, recommendation rule and output (sweep.h). */
#include "sweep.h"

#include <math.h>
#include <string.h>

#include "json.h"
#include "report.h"
#include "tools/args.h"

#define TOOL "freekv eval"

const char *fkv_sweep_temp_name(fkv_group_temp t) {
    return t == FKV_TEMP_SQRT_D ? "sqrt-d" : t == FKV_TEMP_RAW ? "raw" : "unknown";
}

/* ---- parsing --------------------------------------------------------------------------- */

/* Calls item() on each comma-separated item of list (empty items included, so that "a,,b"
 * is refused by the item's own check); -1 when an item is refused or there are too many. */
static int each_item(const char *list, const char *flag,
                     int (*item)(const char *text, const char *flag, size_t k, void *out),
                     void *out, size_t *n) {
    char buf[512];
    if (strlen(list) >= sizeof buf) {
        fprintf(stderr, TOOL ": %s: list too long\n", flag);
        return -1;
    }
    snprintf(buf, sizeof buf, "%s", list);
    size_t k = 0;
    for (char *text = buf;;) {
        char *comma = strchr(text, ',');
        if (comma)
            *comma = '\0';
        if (k == FKV_SWEEP_MAX_VALUES) {
            fprintf(stderr, TOOL ": %s: more than %d values\n", flag, FKV_SWEEP_MAX_VALUES);
            return -1;
        }
        if (item(text, flag, k++, out))
            return -1;
        if (!comma)
            break;
        text = comma + 1;
    }
    *n = k;
    return 0;
}

static int tau_item(const char *text, const char *flag, size_t k, void *out) {
    double x;
    if (fkv_arg_double(TOOL, flag, text, -1.0, 1.0, &x))
        return -1;
    ((float *)out)[k] = (float)x;
    return 0;
}

static int temp_item(const char *text, const char *flag, size_t k, void *out) {
    fkv_group_temp *t = out;
    if (strcmp(text, "raw") == 0)
        t[k] = FKV_TEMP_RAW;
    else if (strcmp(text, "sqrt-d") == 0)
        t[k] = FKV_TEMP_SQRT_D;
    else {
        fprintf(stderr, TOOL ": %s: '%s' is not raw or sqrt-d\n", flag, text);
        return -1;
    }
    return 0;
}

/* The first value of an axis that repeats, or -1. */
static long repeated(const void *values, size_t n, size_t size) {
    const unsigned char *v = values;
    for (size_t i = 1; i < n; i++)
        for (size_t j = 0; j < i; j++)
            if (memcmp(v + i * size, v + j * size, size) == 0)
                return (long)i;
    return -1;
}

int fkv_sweep_parse_axis(const char *word, fkv_sweep_spec *spec) {
    const char *eq = strchr(word, '=');
    size_t key_len = eq ? (size_t)(eq - word) : strlen(word);
    static const char *const axes[] = {"tau", "budget", "page", "temp"};
    int axis = -1;
    for (int a = 0; a < 4; a++)
        if (strlen(axes[a]) == key_len && strncmp(word, axes[a], key_len) == 0)
            axis = a;
    if (axis < 0 || eq == NULL) {
        fprintf(stderr, TOOL ": --sweep: '%.60s' is not AXIS=LIST with AXIS tau, budget, page or "
                        "temp (e.g. tau=0.8,0.9 budget=512,1024)\n", word);
        return -1;
    }
    size_t *counts[] = {&spec->n_tau, &spec->n_budget, &spec->n_page, &spec->n_temp};
    if (*counts[axis] != 0) {
        fprintf(stderr, TOOL ": --sweep: %s is given twice\n", axes[axis]);
        return -1;
    }
    const char *list = eq + 1;
    size_t n = 0;
    long dup = -1;
    char flag[32];
    snprintf(flag, sizeof flag, "--sweep %s", axes[axis]);
    switch (axis) {
    case 0:
        if (each_item(list, flag, tau_item, spec->tau, &n))
            return -1;
        dup = repeated(spec->tau, n, sizeof *spec->tau);
        break;
    case 1:
    case 2: {
        uint32_t *dst = axis == 1 ? spec->budget : spec->page;
        if (fkv_arg_u32_list(TOOL, flag, list, 1, UINT32_MAX, dst, FKV_SWEEP_MAX_VALUES, &n))
            return -1;
        dup = repeated(dst, n, sizeof *dst);
        break;
    }
    default:
        if (each_item(list, flag, temp_item, spec->temp, &n))
            return -1;
        dup = repeated(spec->temp, n, sizeof *spec->temp);
        break;
    }
    if (dup >= 0) {
        fprintf(stderr, TOOL ": %s=%s: value %ld repeats an earlier one\n", flag, list, dup + 1);
        return -1;
    }
    *counts[axis] = n;
    spec->given = 1;
    return 0;
}

static int target_item(const char *item, const char *flag, size_t k_item, void *out) {
    (void)flag, (void)k_item;
    fkv_sweep_targets *t = out;
    const char *eq = strchr(item, '=');
    struct {
        const char *name;
        double *dst, max;
    } keys[] = {{"mass", &t->mass, 10.0},
                {"mass-worst", &t->mass_worst, 10.0},
                {"needles", &t->needles, 1.0}};
    int k = -1;
    for (int i = 0; i < 3 && eq; i++)
        if ((size_t)(eq - item) == strlen(keys[i].name) &&
            strncmp(item, keys[i].name, strlen(keys[i].name)) == 0)
            k = i;
    if (k < 0) {
        fprintf(stderr, TOOL ": --target: '%.60s' is not mass=X, mass-worst=X or needles=X "
                        "(fractions of quest's)\n", item);
        return -1;
    }
    if (!isnan(*keys[k].dst)) {
        fprintf(stderr, TOOL ": --target: %s is given twice\n", keys[k].name);
        return -1;
    }
    char name[40];
    snprintf(name, sizeof name, "--target %s", keys[k].name);
    double x;
    if (fkv_arg_double(TOOL, name, eq + 1, 0.0, keys[k].max, &x))
        return -1;
    *keys[k].dst = x;
    return 0;
}

int fkv_sweep_parse_target(const char *arg, fkv_sweep_targets *t) {
    size_t n;
    if (each_item(arg, "--target", target_item, t, &n))
        return -1;
    t->given = 1;
    return 0;
}

/* ---- combinations and the rule ------------------------------------------------------------ */

static size_t axis_len(size_t n) { return n ? n : 1; }

size_t fkv_sweep_count(const fkv_sweep_spec *s) {
    return axis_len(s->n_page) * axis_len(s->n_budget) * axis_len(s->n_temp) *
           axis_len(s->n_tau);
}

fkv_sweep_point fkv_sweep_point_at(const fkv_sweep_spec *s, const fkv_sweep_point *base,
                                   size_t i) {
    fkv_sweep_point p = *base;
    size_t n_tau = axis_len(s->n_tau), n_temp = axis_len(s->n_temp);
    size_t n_budget = axis_len(s->n_budget);
    size_t tau = i % n_tau, temp = i / n_tau % n_temp, budget = i / n_tau / n_temp % n_budget;
    size_t page = i / n_tau / n_temp / n_budget;
    if (s->n_tau)
        p.tau = s->tau[tau];
    if (s->n_temp)
        p.temp = s->temp[temp];
    if (s->n_budget)
        p.budget = s->budget[budget];
    if (s->n_page)
        p.page = s->page[page];
    return p;
}

/* NaN targets are not set; a NaN measure never meets a set one. */
static int at_least(double value, double target) { return isnan(target) || value >= target; }

int fkv_sweep_meets(const fkv_sweep_row *r, const fkv_sweep_targets *t) {
    double needles = r->quest_needles ? (double)r->needles_of_quest / r->quest_needles : 1.0;
    return r->ok && at_least(r->mass_vs_quest, t->mass) &&
           at_least(r->worst_step_vs_quest, t->mass_worst) && at_least(needles, t->needles);
}

long fkv_sweep_recommend(const fkv_sweep_row *rows, size_t n, const fkv_sweep_targets *t) {
    long best = -1;
    for (size_t i = 0; i < n; i++) {
        if (!fkv_sweep_meets(&rows[i], t))
            continue;
        const fkv_sweep_row *r = &rows[i], *b = best >= 0 ? &rows[best] : NULL;
        /* strictly cheaper only: a tie keeps the earlier row */
        if (b == NULL || r->bytes_recalled < b->bytes_recalled ||
            (r->bytes_recalled == b->bytes_recalled && r->corrections < b->corrections))
            best = (long)i;
    }
    return best;
}

/* ---- output ------------------------------------------------------------------------------- */

void fkv_sweep_targets_string(const fkv_sweep_targets *t, char *buf, size_t size) {
    size_t len = 0;
    buf[0] = '\0';
    if (!isnan(t->mass))
        len += (size_t)snprintf(buf + len, size - len, "mass >= %g x quest's (mean)", t->mass);
    if (!isnan(t->mass_worst) && len < size)
        len += (size_t)snprintf(buf + len, size - len, "%sworst step's mass >= %g x quest's",
                                len ? ", " : "", t->mass_worst);
    if (!isnan(t->needles) && len < size)
        len += (size_t)snprintf(buf + len, size - len, "%sneedles >= %g of those quest finds",
                                len ? ", " : "", t->needles);
    if (len == 0)
        snprintf(buf, size, "none");
}

static void point_string(const fkv_sweep_point *p, char *buf, size_t size) {
    snprintf(buf, size, "page %u, budget %u, temp %s, tau %g", p->page, p->budget,
             fkv_sweep_temp_name(p->temp), (double)p->tau);
}

void fkv_sweep_print(FILE *f, const fkv_sweep_row *rows, size_t n,
                     const fkv_sweep_targets *t) {
    fprintf(f, "%5s %6s %-6s %5s %10s %10s %10s %7s %8s %9s %11s %8s %11s %9s  %s\n", "page",
            "budget", "temp", "tau", "quest_mass", "mass/quest", "worst_step", "kept",
            "needles", "rel_l2", "corrections", "cos<tau", "recall/step", "KiB/step", "targets");
    size_t failed = 0;
    for (size_t i = 0; i < n; i++) {
        const fkv_sweep_row *r = &rows[i];
        fprintf(f, "%5u %6u %-6s %5g ", r->at.page, r->at.budget, fkv_sweep_temp_name(r->at.temp),
                (double)r->at.tau);
        if (!r->ok) {
            fprintf(f, "failed (see the messages above)\n");
            failed++;
            continue;
        }
        char needles[24] = "-";
        if (r->needles)
            snprintf(needles, sizeof needles, "%u/%u", r->needles_of_quest, r->quest_needles);
        fprintf(f, "%10.4f %10.4f %10.4f %6.1f%% %8s %9.2e %10.1f%% %7.1f%% %11.1f %9.1f  %s\n",
                r->quest_mass, r->mass_vs_quest, r->worst_step_vs_quest,
                100.0 * r->quest_kept_share, needles, r->rel_l2_mean, 100.0 * r->correction_rate,
                100.0 * r->below_tau, r->recalled_per_step, r->bytes_per_step / 1024.0,
                fkv_sweep_meets(r, t) ? "met" : "-");
    }
    char targets[256], at[128];
    fkv_sweep_targets_string(t, targets, sizeof targets);
    long best = fkv_sweep_recommend(rows, n, t);
    fprintf(f, "\n");
    if (best >= 0) {
        const fkv_sweep_row *r = &rows[best];
        point_string(&r->at, at, sizeof at);
        fprintf(f, "recommendation: %s\n  the cheapest of the %zu settings that meet every "
                   "target (%s):\n  %.1f KiB (%.1f page units) recalled per step, %.1f%% of KV "
                   "heads corrected; mass %.4f x quest's, worst step %.4f",
                at, n, targets, r->bytes_per_step / 1024.0, r->recalled_per_step,
                100.0 * r->correction_rate, r->mass_vs_quest, r->worst_step_vs_quest);
        if (r->needles)
            fprintf(f, ", needles %u of quest's %u", r->needles_of_quest, r->quest_needles);
        fprintf(f, "\n");
        return;
    }
    /* none: say so, and which setting came closest on the mean mass */
    long closest = -1;
    for (size_t i = 0; i < n; i++)
        if (rows[i].ok && (closest < 0 || rows[i].mass_vs_quest > rows[closest].mass_vs_quest))
            closest = (long)i;
    fprintf(f, "recommendation: none. No setting of the %zu meets every target (%s)", n, targets);
    if (failed)
        fprintf(f, "; %zu failed to run", failed);
    fprintf(f, ".\n");
    if (closest >= 0) {
        point_string(&rows[closest].at, at, sizeof at);
        fprintf(f, "  highest mean mass: %s, %.4f x quest's (worst step %.4f)\n", at,
                rows[closest].mass_vs_quest, rows[closest].worst_step_vs_quest);
    }
}

int fkv_sweep_write_csv(const char *path, const fkv_sweep_row *rows, size_t n,
                        const fkv_sweep_targets *t) {
    FILE *f = fkv_eval_open_output("--csv", path);
    if (f == NULL)
        return -1;
    long best = fkv_sweep_recommend(rows, n, t);
    fprintf(f, "page,budget,temp,tau,ok,meets_targets,recommended,quest_mass,mass,mass_vs_quest,"
               "worst_step_vs_quest,quest_kept_share,needles_of_quest,quest_needles,needles,"
               "rel_l2_mean,correction_rate,group_cosine_below_tau,recalled_pages_per_step,"
               "bytes_recalled_per_step,corrections,bytes_recalled,seconds\n");
    for (size_t i = 0; i < n; i++) {
        const fkv_sweep_row *r = &rows[i];
        fprintf(f, "%u,%u,%s,%g,%d,%d,%d,%.6f,%.6f,%.6f,%.6f,%.6f,%u,%u,%u,%.6g,%.6f,%.6f,%.3f,"
                   "%.1f,%llu,%llu,%.3f\n",
                r->at.page, r->at.budget, fkv_sweep_temp_name(r->at.temp), (double)r->at.tau,
                r->ok, fkv_sweep_meets(r, t), (long)i == best, r->quest_mass, r->mass,
                r->mass_vs_quest, r->worst_step_vs_quest, r->quest_kept_share,
                r->needles_of_quest, r->quest_needles, r->needles, r->rel_l2_mean,
                r->correction_rate, r->below_tau, r->recalled_per_step, r->bytes_per_step,
                (unsigned long long)r->corrections, (unsigned long long)r->bytes_recalled,
                r->seconds);
    }
    return fkv_eval_close_output(f, "--csv", path);
}

static void put_point(FILE *f, const fkv_sweep_point *p) {
    fprintf(f, "\"page\": %u, \"budget\": %u, \"temp\": \"%s\", \"tau\": %g", p->page, p->budget,
            fkv_sweep_temp_name(p->temp), (double)p->tau);
}

int fkv_sweep_write_json(const char *path, const fkv_sweep_row *rows, size_t n,
                         const fkv_sweep_targets *t, void (*head)(FILE *f, void *ctx),
                         void *ctx) {
    FILE *f = fkv_eval_open_output("--json", path);
    if (f == NULL)
        return -1;
    fprintf(f, "{\n");
    if (head)
        head(f, ctx);
    fprintf(f, "  \"targets\": {\"mass\": ");
    fkv_json_put_num(f, t->mass);
    fprintf(f, ", \"mass_worst\": ");
    fkv_json_put_num(f, t->mass_worst);
    fprintf(f, ", \"needles\": ");
    fkv_json_put_num(f, t->needles);
    fprintf(f, "},\n  \"rows\": [\n");
    for (size_t i = 0; i < n; i++) {
        const fkv_sweep_row *r = &rows[i];
        fprintf(f, "    {");
        put_point(f, &r->at);
        fprintf(f, ", \"ok\": %s, \"meets_targets\": %s", r->ok ? "true" : "false",
                fkv_sweep_meets(r, t) ? "true" : "false");
        const char *names[] = {"quest_mass", "mass", "mass_vs_quest", "worst_step_vs_quest",
                               "quest_kept_share", "rel_l2_mean", "correction_rate",
                               "group_cosine_below_tau", "recalled_pages_per_step",
                               "bytes_recalled_per_step", "seconds"};
        double vals[] = {r->quest_mass, r->mass, r->mass_vs_quest, r->worst_step_vs_quest,
                         r->quest_kept_share, r->rel_l2_mean, r->correction_rate, r->below_tau,
                         r->recalled_per_step, r->bytes_per_step, r->seconds};
        for (size_t j = 0; j < sizeof vals / sizeof *vals; j++) {
            fprintf(f, ", \"%s\": ", names[j]);
            fkv_json_put_num(f, vals[j]);
        }
        fprintf(f, ", \"needles_of_quest\": %u, \"quest_needles\": %u, \"needles\": %u, "
                   "\"corrections\": %llu, \"bytes_recalled\": %llu}%s\n",
                r->needles_of_quest, r->quest_needles, r->needles,
                (unsigned long long)r->corrections, (unsigned long long)r->bytes_recalled,
                i + 1 < n ? "," : "");
    }
    long best = fkv_sweep_recommend(rows, n, t);
    fprintf(f, "  ],\n  \"recommendation\": ");
    if (best >= 0) {
        fprintf(f, "{\"row\": %ld, ", best);
        put_point(f, &rows[best].at);
        fprintf(f, "}\n}\n");
    } else {
        fprintf(f, "null\n}\n");
    }
    return fkv_eval_close_output(f, "--json", path);
}
