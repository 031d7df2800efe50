/* Per-device reports: a summary table on stdout, and JSON + Markdown files. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "conformance.h"

#define MAX_OPS 32

typedef struct op_row {
    const char *op;
    unsigned count[CF_N_STATUS];
    unsigned nondet;
    double worst_ratio; /* max error/tolerance over the cases that measured one */
} op_row;

static double ratio_of(const cf_result *r) {
    if (r->error < 0)
        return -1;
    if (r->tolerance > 0)
        return r->error / r->tolerance;
    return r->error > 0 ? INFINITY : 0;
}

static size_t tally(const cf_case *cases, const cf_result *res, size_t n, op_row *rows,
                    op_row *total) {
    size_t n_rows = 0;
    memset(total, 0, sizeof *total);
    total->op = "total";
    total->worst_ratio = -1;
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;
        while (k < n_rows && strcmp(rows[k].op, cases[i].op) != 0)
            k++;
        if (k == n_rows) {
            if (n_rows == MAX_OPS)
                continue;
            memset(&rows[k], 0, sizeof rows[k]);
            rows[k].op = cases[i].op;
            rows[k].worst_ratio = -1;
            n_rows++;
        }
        op_row *rr[2] = {&rows[k], total};
        for (int j = 0; j < 2; j++) {
            rr[j]->count[res[i].status]++;
            rr[j]->nondet += res[i].deterministic == 0;
            double q = ratio_of(&res[i]);
            if (res[i].status != CF_SKIP && q > rr[j]->worst_ratio)
                rr[j]->worst_ratio = q;
        }
    }
    return n_rows;
}

static void ratio_str(double q, char *buf, size_t size) {
    if (q < 0)
        snprintf(buf, size, "-");
    else if (isinf(q))
        snprintf(buf, size, "inf");
    else
        snprintf(buf, size, "%.3g", q);
}

void cf_summary_print(FILE *f, const fkv_device_info *info, const cf_case *cases,
                      const cf_result *results, size_t n, double seconds) {
    op_row rows[MAX_OPS], total;
    size_t n_rows = tally(cases, results, n, rows, &total);
    fprintf(f, "\n== summary: %s[%u] %s (%s), %.1f s\n", info->backend, info->index, info->name,
            info->driver, seconds);
    fprintf(f, "%-16s %5s %5s %5s %5s %5s %7s %13s\n", "op", "pass", "fail", "skip", "known",
            "xpass", "nondet", "worst err/tol");
    for (size_t i = 0; i <= n_rows; i++) {
        const op_row *r = i < n_rows ? &rows[i] : &total;
        char q[32];
        ratio_str(r->worst_ratio, q, sizeof q);
        fprintf(f, "%-16s %5u %5u %5u %5u %5u %7u %13s\n", r->op, r->count[CF_PASS],
                r->count[CF_FAIL], r->count[CF_SKIP], r->count[CF_KNOWN], r->count[CF_XPASS],
                r->nondet, q);
    }
}

/* ---- JSON ---- */

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double x) {
    if (x < 0 || isnan(x))
        fputs("null", f);
    else if (isinf(x))
        fputs("1e308", f);
    else
        fprintf(f, "%.6g", x);
}

/* A string, or null when it is NULL or empty. */
static void json_str_or_null(FILE *f, const char *s) {
    if (s && s[0])
        json_str(f, s);
    else
        fputs("null", f);
}

/* "mode", "command", "date", "host" of a run object (after its opening brace). */
static void json_run_fields(FILE *f, const cf_run_info *run) {
    fprintf(f, "\"mode\": ");
    json_str(f, run->mode);
    fprintf(f, ", \"command\": ");
    json_str(f, run->command);
    fprintf(f, ", \"date\": ");
    json_str(f, run->date);
    fprintf(f, ", \"host\": ");
    json_str(f, run->host);
}

static void caps_of(uint32_t caps, char *buf, size_t size) {
    fkv_caps_string(caps, buf, size);
}

static int write_json(const char *path, const cf_run_info *run, const fkv_device_info *info,
                      const cf_case *cases, const cf_result *res, size_t n, double seconds) {
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    op_row rows[MAX_OPS], total;
    size_t n_rows = tally(cases, res, n, rows, &total);
    char caps[256];
    caps_of(info->caps, caps, sizeof caps);
    fprintf(f, "{\n  \"schema\": \"freekv-conformance/1\",\n  \"freekv_version\": \"%d.%d.%d\",\n",
            FKV_VERSION_MAJOR, FKV_VERSION_MINOR, FKV_VERSION_PATCH);
    fprintf(f, "  \"run\": {");
    json_run_fields(f, run);
    fprintf(f, ", \"self_test\": ");
    json_str_or_null(f, run->self_test);
    fprintf(f, ", \"seconds\": %.2f},\n", seconds);
    fprintf(f, "  \"device\": {\"backend\": ");
    json_str(f, info->backend);
    fprintf(f, ", \"index\": %u, \"name\": ", info->index);
    json_str(f, info->name);
    fprintf(f, ", \"driver\": ");
    json_str(f, info->driver);
    fprintf(f, ", \"type\": ");
    json_str(f, fkv_device_type_name(info->type));
    fprintf(f, ", \"memory_bytes\": %llu, \"max_buffer_bytes\": %llu, \"caps\": ",
            (unsigned long long)info->memory_bytes, (unsigned long long)info->max_buffer_bytes);
    json_str(f, caps);
    fprintf(f, "},\n  \"known_failures_file\": ");
    json_str(f, run->known_file);
    fprintf(f, ",\n  \"tolerances\": ");
    cf_tolerance_json(f);
    fprintf(f, ",\n  \"summary\": {\"cases\": %zu, \"pass\": %u, \"fail\": %u, \"skip\": %u, "
               "\"known\": %u, \"xpass\": %u, \"nondeterministic\": %u},\n",
            n, total.count[CF_PASS], total.count[CF_FAIL], total.count[CF_SKIP],
            total.count[CF_KNOWN], total.count[CF_XPASS], total.nondet);
    fprintf(f, "  \"ops\": [\n");
    for (size_t i = 0; i < n_rows; i++) {
        fprintf(f, "    {\"op\": \"%s\", \"pass\": %u, \"fail\": %u, \"skip\": %u, \"known\": %u, "
                   "\"xpass\": %u, \"nondeterministic\": %u, \"worst_error_over_tolerance\": ",
                rows[i].op, rows[i].count[CF_PASS], rows[i].count[CF_FAIL],
                rows[i].count[CF_SKIP], rows[i].count[CF_KNOWN], rows[i].count[CF_XPASS],
                rows[i].nondet);
        json_num(f, rows[i].worst_ratio);
        fprintf(f, "}%s\n", i + 1 < n_rows ? "," : "");
    }
    fprintf(f, "  ],\n  \"cases\": [\n");
    for (size_t i = 0; i < n; i++) {
        const cf_case *c = &cases[i];
        const cf_result *r = &res[i];
        fprintf(f, "    {\"name\": ");
        json_str(f, c->name);
        fprintf(f, ", \"op\": ");
        json_str(f, c->op);
        if (c->has_geom)
            fprintf(f, ", \"geometry\": {\"head_dim\": %u, \"group\": %u, \"kv_heads\": %u, "
                       "\"page_size\": %u, \"dtype\": \"%s\"}",
                    c->g.head_dim, c->g.group,
                    strcmp(c->op, "pipeline") == 0 ? 2u : cf_kv_heads(&c->g), c->g.page_size,
                    fkv_dtype_name(c->g.dtype));
        else
            fprintf(f, ", \"geometry\": null");
        if (strcmp(c->op, "pipeline") == 0) {
            static const char *const modes[] = {"staged", "direct", "perpage"};
            fprintf(f, ", \"policy\": \"%s\", \"recall\": ", fkv_policy_name(c->policy));
            if (c->recall >= 0 && c->recall < 3)
                fprintf(f, "\"%s\"", modes[c->recall]);
            else
                fputs("null", f);
        }
        fprintf(f, ", \"status\": \"%s\", \"error\": ", cf_status_name(r->status));
        json_num(f, r->error);
        fprintf(f, ", \"tolerance\": ");
        json_num(f, r->tolerance);
        fprintf(f, ", \"deterministic\": %s",
                r->deterministic < 0 ? "null" : r->deterministic ? "true" : "false");
        if (r->deterministic == 0) {
            fprintf(f, ", \"nondeterminism\": ");
            json_str(f, r->nondet);
        }
        fprintf(f, ", \"ms\": %.1f, \"message\": ", r->ms);
        json_str(f, r->message);
        if (r->known[0]) {
            fprintf(f, ", \"known_failure\": ");
            json_str(f, r->known);
        }
        fprintf(f, "}%s\n", i + 1 < n ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- Markdown ---- */

/* Table cells must not contain '|' or newlines. */
static void md_cell(FILE *f, const char *s) {
    for (; s && *s; s++) {
        if (*s == '|')
            fputs("\\|", f);
        else
            fputc(*s == '\n' ? ' ' : *s, f);
    }
}

static void md_error(FILE *f, const cf_result *r) {
    if (r->error < 0)
        fputs("-", f);
    else
        fprintf(f, "%.3g / %.3g", r->error, r->tolerance);
}

/* The Markdown sections of cases that did not pass plainly, in both kinds of report. */
static const struct {
    cf_status st;
    const char *title;
} sections[] = {{CF_FAIL, "Failures"},
                {CF_KNOWN, "Known failures (from the known-failures file)"},
                {CF_XPASS, "Known failures that now pass (remove their entries)"},
                {CF_SKIP, "Skipped (not run), with the reason"}};
#define N_SECTIONS (sizeof sections / sizeof *sections)

static int write_md(const char *path, const cf_run_info *run, const fkv_device_info *info,
                    const cf_case *cases, const cf_result *res, size_t n, double seconds) {
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    op_row rows[MAX_OPS], total;
    size_t n_rows = tally(cases, res, n, rows, &total);
    char caps[256];
    caps_of(info->caps, caps, sizeof caps);
    fprintf(f, "# freekv conformance: %s[%u] %s\n\n", info->backend, info->index, info->name);
    fprintf(f, "**Result: %s%s** (%u pass, %u fail, %u skip, %u known, %u xpass, %u "
               "nondeterministic, %zu cases, %.1f s)\n\n",
            total.count[CF_FAIL] ? "FAIL" : "PASS",
            total.count[CF_SKIP] ? ", with skipped cases (not run: see \"Skipped\")" : "",
            total.count[CF_PASS], total.count[CF_FAIL],
            total.count[CF_SKIP], total.count[CF_KNOWN], total.count[CF_XPASS], total.nondet, n,
            seconds);
    fprintf(f, "| | |\n|---|---|\n");
    fprintf(f, "| device | %s |\n| backend | %s (index %u) |\n| driver | %s |\n| type | %s |\n",
            info->name, info->backend, info->index, info->driver,
            fkv_device_type_name(info->type));
    fprintf(f, "| memory | %llu MiB (max buffer %llu MiB) |\n| capabilities | %s |\n",
            (unsigned long long)(info->memory_bytes >> 20),
            (unsigned long long)(info->max_buffer_bytes >> 20), caps[0] ? caps : "none");
    fprintf(f, "| freekv | %d.%d.%d |\n| mode | %s%s%s%s |\n| date | %s |\n| host | %s |\n",
            FKV_VERSION_MAJOR, FKV_VERSION_MINOR, FKV_VERSION_PATCH, run->mode,
            run->self_test ? " (self-test '" : "", run->self_test ? run->self_test : "",
            run->self_test ? "': ops deliberately altered)" : "", run->date, run->host);
    fprintf(f, "| command | `%s` |\n| known failures | %s |\n\n", run->command, run->known_file);

    fprintf(f, "## Summary by op\n\n| op | pass | fail | skip | known | xpass | nondeterministic "
               "| worst error/tolerance |\n|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i <= n_rows; i++) {
        const op_row *r = i < n_rows ? &rows[i] : &total;
        char q[32];
        ratio_str(r->worst_ratio, q, sizeof q);
        fprintf(f, "| %s | %u | %u | %u | %u | %u | %u | %s |\n", r->op, r->count[CF_PASS],
                r->count[CF_FAIL], r->count[CF_SKIP], r->count[CF_KNOWN], r->count[CF_XPASS],
                r->nondet, q);
    }
    for (size_t k = 0; k < N_SECTIONS; k++) {
        unsigned cnt = 0;
        for (size_t i = 0; i < n; i++)
            cnt += res[i].status == sections[k].st;
        if (cnt == 0)
            continue;
        fprintf(f, "\n## %s\n\n| case | error / tolerance | message |\n|---|---|---|\n",
                sections[k].title);
        for (size_t i = 0; i < n; i++) {
            if (res[i].status != sections[k].st)
                continue;
            fprintf(f, "| %s | ", cases[i].name);
            md_error(f, &res[i]);
            fputs(" | ", f);
            md_cell(f, res[i].message);
            if (res[i].known[0]) {
                fputs(" (known: ", f);
                md_cell(f, res[i].known);
                fputs(")", f);
            }
            fputs(" |\n", f);
        }
    }
    if (total.nondet) {
        fprintf(f, "\n## Not deterministic on this device\n\n| case | what differed |\n|---|---|\n");
        for (size_t i = 0; i < n; i++)
            if (res[i].deterministic == 0) {
                fprintf(f, "| %s | ", cases[i].name);
                md_cell(f, res[i].nondet);
                fputs(" |\n", f);
            }
    }
    fprintf(f, "\n## All cases\n\n| case | status | error / tolerance | deterministic | ms | "
               "notes |\n|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < n; i++) {
        const cf_result *r = &res[i];
        fprintf(f, "| %s | %s | ", cases[i].name, cf_status_name(r->status));
        md_error(f, r);
        fprintf(f, " | %s | %.0f | ",
                r->deterministic < 0 ? "-" : r->deterministic ? "yes" : "**no**", r->ms);
        md_cell(f, r->message);
        fputs(" |\n", f);
    }
    fprintf(f, "\n## Tolerances (relative L2 error against the CPU reference)\n\n");
    cf_tolerance_markdown(f);
    return fclose(f) == 0 ? 0 : -1;
}

int cf_report_write(const char *dir, const cf_run_info *run, const fkv_device_info *info,
                    const cf_case *cases, const cf_result *results, size_t n, double seconds,
                    char *paths, size_t paths_size) {
    char base[600], json[640], md[640];
    snprintf(base, sizeof base, "%s/conformance-%s-%u", dir, info->backend, info->index);
    snprintf(json, sizeof json, "%s.json", base);
    snprintf(md, sizeof md, "%s.md", base);
    snprintf(paths, paths_size, "%s, %s", json, md);
    if (write_json(json, run, info, cases, results, n, seconds) != 0)
        return -1;
    return write_md(md, run, info, cases, results, n, seconds);
}

/* ---- the run report ---- */

cf_run_totals cf_run_tally(const cf_required *req, size_t n_req, const cf_device_run *devs,
                           size_t n_devs) {
    cf_run_totals t = {0, 0, 0, 0, 0};
    for (size_t i = 0; i < n_devs; i++) {
        t.passed += devs[i].count[CF_PASS];
        t.failed += devs[i].count[CF_FAIL] + (devs[i].error[0] != '\0');
        t.skipped += devs[i].count[CF_SKIP];
        t.known += devs[i].count[CF_KNOWN];
        t.xpass += devs[i].count[CF_XPASS];
    }
    for (size_t i = 0; i < n_req; i++)
        t.failed += req[i].problem[0] != '\0';
    return t;
}

int cf_run_failed(cf_run_totals t) { return t.failed || t.passed + t.xpass == 0; }

static void device_label(const cf_device_run *d, char *buf, size_t size) {
    snprintf(buf, size, "%.15s[%u] %.127s", d->info.backend, d->info.index, d->info.name);
}

static int write_run_json(const char *path, const cf_run_info *run, const cf_required *req,
                          size_t n_req, const cf_device_run *devs, size_t n_devs,
                          const cf_note *notes, size_t n_notes, cf_run_totals t) {
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "{\n  \"schema\": \"freekv-conformance-run/1\",\n  \"result\": \"%s\",\n",
            cf_run_failed(t) ? "FAIL" : "PASS");
    fprintf(f, "  \"totals\": {\"passed\": %u, \"failed\": %u, \"skipped\": %u, \"known\": %u, "
               "\"xpass\": %u},\n  \"run\": {",
            t.passed, t.failed, t.skipped, t.known, t.xpass);
    json_run_fields(f, run);
    fprintf(f, "},\n  \"required\": [");
    for (size_t i = 0; i < n_req; i++) {
        fprintf(f, "%s\n    {\"backend\": ", i ? "," : "");
        json_str(f, req[i].backend);
        fprintf(f, ", \"devices\": %u, \"problem\": ", req[i].devices);
        json_str_or_null(f, req[i].problem);
        fputs("}", f);
    }
    fprintf(f, "%s],\n  \"devices\": [", n_req ? "\n  " : "");
    for (size_t i = 0; i < n_devs; i++) {
        const cf_device_run *d = &devs[i];
        fprintf(f, "%s\n    {\"backend\": ", i ? "," : "");
        json_str(f, d->info.backend);
        fprintf(f, ", \"index\": %u, \"name\": ", d->info.index);
        json_str(f, d->info.name);
        fprintf(f, ", \"pass\": %u, \"fail\": %u, \"skip\": %u, \"known\": %u, \"xpass\": %u, "
                   "\"nondeterministic\": %u, \"seconds\": %.2f, \"error\": ",
                d->count[CF_PASS], d->count[CF_FAIL], d->count[CF_SKIP], d->count[CF_KNOWN],
                d->count[CF_XPASS], d->nondet, d->seconds);
        json_str_or_null(f, d->error);
        fputs("}", f);
    }
    fprintf(f, "%s],\n  \"not_passed\": [", n_devs ? "\n  " : "");
    for (size_t i = 0; i < n_notes; i++) {
        fprintf(f, "%s\n    {\"device\": ", i ? "," : "");
        char dev[160];
        device_label(&devs[notes[i].device], dev, sizeof dev);
        json_str(f, dev);
        fprintf(f, ", \"case\": ");
        json_str(f, notes[i].case_name);
        fprintf(f, ", \"status\": \"%s\", \"message\": ", cf_status_name(notes[i].status));
        json_str(f, notes[i].message);
        fputs("}", f);
    }
    fprintf(f, "%s]\n}\n", n_notes ? "\n  " : "");
    return fclose(f) == 0 ? 0 : -1;
}

static int write_run_md(const char *path, const cf_run_info *run, const cf_required *req,
                        size_t n_req, const cf_device_run *devs, size_t n_devs,
                        const cf_note *notes, size_t n_notes, cf_run_totals t) {
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fprintf(f, "# freekv conformance run\n\n**Result: %s**: %u passed, %u failed, %u skipped "
               "(not run), %u known failures, %u xpass\n\n",
            t.failed ? "FAIL" : cf_run_failed(t) ? "FAIL (no case passed: nothing was tested)"
                                                 : "PASS",
            t.passed, t.failed, t.skipped, t.known, t.xpass);
    fprintf(f, "| | |\n|---|---|\n| mode | %s |\n| date | %s |\n| host | %s |\n"
               "| command | `%s` |\n\n",
            run->mode, run->date, run->host, run->command);
    if (n_req) {
        fprintf(f, "## Required backends\n\n| backend | devices tested | problem |\n"
                   "|---|---|---|\n");
        for (size_t i = 0; i < n_req; i++) {
            fprintf(f, "| %s | %u | ", req[i].backend, req[i].devices);
            md_cell(f, req[i].problem[0] ? req[i].problem : "-");
            fputs(" |\n", f);
        }
        fputs("\n", f);
    }
    fprintf(f, "## Devices\n\n| device | pass | fail | skip | known | xpass | nondeterministic | "
               "s | problem |\n|---|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < n_devs; i++) {
        const cf_device_run *d = &devs[i];
        char dev[160];
        device_label(d, dev, sizeof dev);
        fputs("| ", f);
        md_cell(f, dev);
        fprintf(f, " | %u | %u | %u | %u | %u | %u | %.1f | ", d->count[CF_PASS],
                d->count[CF_FAIL], d->count[CF_SKIP], d->count[CF_KNOWN], d->count[CF_XPASS],
                d->nondet, d->seconds);
        md_cell(f, d->error[0] ? d->error : "-");
        fputs(" |\n", f);
    }
    if (n_devs == 0)
        fprintf(f, "| (none found) | | | | | | | | |\n");
    for (size_t k = 0; k < N_SECTIONS; k++) {
        size_t cnt = 0;
        for (size_t i = 0; i < n_notes; i++)
            cnt += notes[i].status == sections[k].st;
        if (cnt == 0)
            continue;
        fprintf(f, "\n## %s\n\n| device | case | reason |\n|---|---|---|\n", sections[k].title);
        for (size_t i = 0; i < n_notes; i++) {
            if (notes[i].status != sections[k].st)
                continue;
            char dev[160];
            device_label(&devs[notes[i].device], dev, sizeof dev);
            fputs("| ", f);
            md_cell(f, dev);
            fprintf(f, " | %s | ", notes[i].case_name);
            md_cell(f, notes[i].message[0] ? notes[i].message : "(no message)");
            fputs(" |\n", f);
        }
    }
    return fclose(f) == 0 ? 0 : -1;
}

int cf_run_report_write(const char *dir, const cf_run_info *run, const cf_required *req,
                        size_t n_req, const cf_device_run *devs, size_t n_devs,
                        const cf_note *notes, size_t n_notes, char *paths, size_t paths_size) {
    char json[640], md[640];
    snprintf(json, sizeof json, "%s/conformance-run.json", dir);
    snprintf(md, sizeof md, "%s/conformance-run.md", dir);
    snprintf(paths, paths_size, "%s, %s", json, md);
    cf_run_totals t = cf_run_tally(req, n_req, devs, n_devs);
    if (write_run_json(json, run, req, n_req, devs, n_devs, notes, n_notes, t) != 0)
        return -1;
    return write_run_md(md, run, req, n_req, devs, n_devs, notes, n_notes, t);
}
