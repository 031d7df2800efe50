/* freekv-conformance: runs every op of the device interface and the decode pipeline on every
 * compiled backend's devices (or the ones named) against the CPU reference, prints one line
 * per case and a summary per device, writes JSON and Markdown reports, and exits non-zero on
 * any failure. See docs/conformance.md. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(_WIN32)
#include <direct.h>
#define make_dir(p) _mkdir(p)
#else
#include <sys/stat.h>
#include <sys/utsname.h>
#define make_dir(p) mkdir((p), 0777)
#endif

#include "conformance.h"

#ifndef FKV_CONFORMANCE_KNOWN_DIR
#define FKV_CONFORMANCE_KNOWN_DIR "conformance/known_failures"
#endif
#ifndef FKV_CONFORMANCE_KNOWN_INSTALL_DIR
#define FKV_CONFORMANCE_KNOWN_INSTALL_DIR FKV_CONFORMANCE_KNOWN_DIR
#endif

/* The source tree's lists when they are there (cpu.txt always is), else the installed ones. */
static const char *default_known_dir(void) {
    FILE *f = fopen(FKV_CONFORMANCE_KNOWN_DIR "/cpu.txt", "r");
    if (f == NULL)
        return FKV_CONFORMANCE_KNOWN_INSTALL_DIR;
    fclose(f);
    return FKV_CONFORMANCE_KNOWN_DIR;
}

#define EXIT_USAGE 2
#define EXIT_NO_DEVICE 77 /* CTest's SKIP_RETURN_CODE: nothing to test here */
#define MAX_CASES 2048
#define MAX_DEVICES 64

#define MAX_REQUIRED 8

typedef struct options {
    const char *backend, *device, *report_dir, *filter, *known_dir;
    const char *broken; /* self-test kind, NULL normally */
    const char *require; /* comma list of backends that must have a device */
    int require_from_env; /* taken from FREEKV_REQUIRE_DEVICES, not --require */
    int quick, list, help, strict;
} options;

/* "a, b, c": the backends compiled in (the generated list; freekv-info prints it too). */
static const char *compiled_backends(void) {
    static char names[128];
    names[0] = '\0';
    for (size_t i = 0; i < fkv_backend_count(); i++) {
        size_t len = strlen(names);
        snprintf(names + len, sizeof names - len, "%s%s", i ? ", " : "", fkv_backend_name(i));
    }
    return names;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: freekv-conformance [options]\n"
            "  --backend NAME       auto or a backend compiled in: %s (default: "
            "$FREEKV_BACKEND, else every compiled backend)\n"
            "  --device SEL         index (in the listed devices) or name substring "
            "(default: $FREEKV_DEVICE, else every device)\n"
            "  --quick              the reduced case set (CI); default: the full set (GPU hosts)\n"
            "  --strict             also hold every value to the strict bound of the tolerance\n"
            "                       table (the rounding and accumulation of the reference)\n"
            "  --report-dir DIR     where the JSON and Markdown reports go (default: "
            "conformance-report)\n"
            "  --list               list the cases and exit\n"
            "  --filter SUBSTR[,SUBSTR...]  run only the cases whose name contains one of them\n"
            "                               (SUBSTR$: whose name ends with it)\n"
            "  --require BACKEND[,BACKEND...]  fail (exit 1) when a named backend has no device to\n"
            "                       test (not compiled in, no driver, or none matching --device);\n"
            "                       default: $FREEKV_REQUIRE_DEVICES, for the backends this run\n"
            "                       tests\n"
            "  --known-failures DIR directory of <backend>.txt known-failure lists (default: %s)\n"
            "  --help               this text\n"
            "Exit status: 0 no case failed (skipped cases are counted apart, never as passed), 1 a "
            "case failed, a device could not be tested or a required backend has no device, 2 bad "
            "usage, 77 no device found and none required.\n",
            compiled_backends(), default_known_dir());
}

static int parse(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->report_dir = "conformance-report";
    o->known_dir = default_known_dir();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        if (strcmp(a, "--quick") == 0)
            o->quick = 1;
        else if (strcmp(a, "--strict") == 0)
            o->strict = 1;
        else if (strcmp(a, "--list") == 0)
            o->list = 1;
        else if (strcmp(a, "--self-test-broken") == 0)
            o->broken = "attention"; /* hidden: see docs/conformance.md, "Self-tests" */
        else if (strncmp(a, "--self-test-broken=", 19) == 0) {
            o->broken = a + 19;
            if (cf_broken_ops(fkv_backend_cpu(), o->broken) == NULL) {
                fprintf(stderr, "freekv-conformance: self-test kinds: %s\n", cf_selftest_kinds);
                return -1;
            }
        }
        else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)
            o->help = 1;
        else if (strcmp(a, "--backend") == 0)
            slot = &o->backend;
        else if (strcmp(a, "--device") == 0)
            slot = &o->device;
        else if (strcmp(a, "--report-dir") == 0)
            slot = &o->report_dir;
        else if (strcmp(a, "--filter") == 0)
            slot = &o->filter;
        else if (strcmp(a, "--known-failures") == 0)
            slot = &o->known_dir;
        else if (strcmp(a, "--require") == 0)
            slot = &o->require;
        else {
            fprintf(stderr, "freekv-conformance: unknown option '%s'\n", a);
            return -1;
        }
        if (slot) {
            if (i + 1 >= argc || argv[i + 1][0] == '\0') {
                fprintf(stderr, "freekv-conformance: %s needs a value\n", a);
                return -1;
            }
            *slot = argv[++i];
        }
    }
    /* the environment applies where no flag was given */
    if (o->backend == NULL) {
        const char *e = getenv("FREEKV_BACKEND");
        o->backend = e && e[0] ? e : "auto";
    }
    if (o->device == NULL) {
        const char *e = getenv("FREEKV_DEVICE");
        o->device = e && e[0] ? e : NULL;
    }
    if (o->require == NULL) {
        const char *e = getenv("FREEKV_REQUIRE_DEVICES");
        o->require = e && e[0] ? e : NULL;
        o->require_from_env = o->require != NULL;
    }
    return 0;
}

/* The case name contains one of the comma-separated substrings of filter (NULL: every case); a
 * substring ending in '$' must end the name (a case without its knob variants). */
static int filter_match(const char *filter, const char *name) {
    if (filter == NULL)
        return 1;
    for (const char *p = filter;; ) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char part[128];
        if (len > 0 && len < sizeof part) {
            memcpy(part, p, len);
            int anchored = part[len - 1] == '$';
            part[len - anchored] = '\0';
            size_t n_len = strlen(name), p_len = len - anchored;
            if (anchored ? n_len >= p_len && strcmp(name + n_len - p_len, part) == 0
                         : strstr(name, part) != NULL)
                return 1;
        }
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

/* Splits --require into req[] (each a backend name the library knows); only the backends this
 * run tests when the list comes from the environment. 0, or EXIT_USAGE after a message. */
static int parse_required(const options *o, cf_required *req, size_t *n) {
    *n = 0;
    if (o->require == NULL)
        return 0;
    const char *origin = o->require_from_env ? "FREEKV_REQUIRE_DEVICES" : "--require";
    for (const char *p = o->require;; ) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        cf_required r;
        memset(&r, 0, sizeof r);
        if (len == 0 || len >= sizeof r.backend || *n == MAX_REQUIRED) {
            fprintf(stderr, "freekv-conformance: %s '%s': a comma list of at most %d backend "
                            "names\n", origin, o->require, MAX_REQUIRED);
            return EXIT_USAGE;
        }
        memcpy(r.backend, p, len);
        size_t count = 0;
        /* an unknown name is a usage error; a known one not compiled in is a missing device */
        if (strcmp(r.backend, "auto") == 0 ||
            fkv_device_list(r.backend, NULL, 0, &count) == FKV_ERR_INVALID_ARGUMENT) {
            fprintf(stderr, "freekv-conformance: %s: '%s' is not a backend name (compiled in: "
                            "%s)\n", origin, r.backend, compiled_backends());
            return EXIT_USAGE;
        }
        int tested = strcmp(o->backend, "auto") == 0 || strcmp(o->backend, r.backend) == 0;
        if (!tested && !o->require_from_env) {
            fprintf(stderr, "freekv-conformance: --require %s, but --backend %s does not test "
                            "it\n", r.backend, o->backend);
            return EXIT_USAGE;
        }
        if (tested)
            req[(*n)++] = r;
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

/* Marks each required backend that no target of the run belongs to, with the reason. */
static size_t check_required(const options *o, cf_required *req, size_t n_req,
                             const fkv_device_info *targets, size_t n_targets) {
    size_t missing = 0;
    for (size_t i = 0; i < n_req; i++) {
        cf_required *r = &req[i];
        r->devices = 0;
        for (size_t t = 0; t < n_targets; t++)
            r->devices += strcmp(targets[t].backend, r->backend) == 0;
        if (r->devices)
            continue;
        size_t count = 0;
        fkv_status st = fkv_device_list(r->backend, NULL, 0, &count);
        if (st != FKV_OK)
            snprintf(r->problem, sizeof r->problem, "not compiled into this build");
        else if (count == 0)
            snprintf(r->problem, sizeof r->problem, "no device (no driver or ICD found)");
        else
            snprintf(r->problem, sizeof r->problem, "%zu device(s), none matching --device '%s'",
                     count, o->device ? o->device : "");
        printf("FAIL  required/%-39s %s\n", r->backend, r->problem);
        missing++;
    }
    return missing;
}

/* Case-insensitive substring test (strcasestr is not standard C). */
static int contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] &&
               tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return 1;
    }
    return n == 0;
}

static int is_index(const char *s) {
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* Devices to test: all of the backend's, or the one index / every name match of --device. */
static int pick_targets(const options *o, fkv_device_info *out, size_t *n_out) {
    fkv_device_info all[MAX_DEVICES];
    size_t count = 0;
    *n_out = 0;
    fkv_status st = fkv_device_list(o->backend, all, MAX_DEVICES, &count);
    if (st != FKV_OK) {
        fprintf(stderr, "freekv-conformance: %s\n", fkv_last_error());
        return st == FKV_ERR_BAD_ENVIRONMENT || st == FKV_ERR_INVALID_ARGUMENT ? EXIT_USAGE : 1;
    }
    if (count > MAX_DEVICES)
        count = MAX_DEVICES;
    if (count == 0) {
        fprintf(stderr, "freekv-conformance: backend '%s' found no device: nothing to test\n",
                o->backend);
        return EXIT_NO_DEVICE; /* a failure instead when a backend is required (main) */
    }
    if (o->device == NULL) {
        memcpy(out, all, count * sizeof *all);
        *n_out = count;
        return 0;
    }
    if (is_index(o->device)) {
        unsigned long idx = strtoul(o->device, NULL, 10);
        if (idx < count)
            out[(*n_out)++] = all[idx];
    } else {
        for (size_t i = 0; i < count; i++) {
            char full[200];
            snprintf(full, sizeof full, "%.15s:%.127s", all[i].backend, all[i].name);
            if (contains_ci(full, o->device))
                out[(*n_out)++] = all[i];
        }
    }
    if (*n_out == 0) {
        fprintf(stderr, "freekv-conformance: no device matches '%s'; available:\n", o->device);
        for (size_t i = 0; i < count; i++)
            fprintf(stderr, "  [%zu] %s:%s\n", i, all[i].backend, all[i].name);
        return 1;
    }
    return 0;
}

static int open_dev(const fkv_device_info *info, const char *broken, cf_dev *d) {
    char idx[16];
    snprintf(idx, sizeof idx, "%u", info->index);
    memset(d, 0, sizeof *d);
    fkv_status st = fkv_device_open(info->backend, idx, &d->dev);
    if (st == FKV_OK && broken) {
        const fkv_backend_ops *ops = cf_broken_ops(fkv_device_ops(d->dev), broken);
        fkv_device_close(d->dev);
        d->dev = NULL;
        st = fkv_device_open_ops(ops, info->index, &d->dev);
    }
    if (st != FKV_OK)
        return -1;
    fkv_device_get_info(d->dev, &d->info);
    return 0;
}

/* mkdir -p: creates dir and its missing parents. */
static int make_dirs(const char *dir) {
    char path[1024];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (make_dir(path) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (make_dir(path) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

static void print_line(const cf_case *c, const cf_result *r) {
    printf("%-5s %-48s", cf_status_name(r->status), c->name);
    if (r->error >= 0)
        printf(" err %-9.3g tol %-8.3g", r->error, r->tolerance);
    else
        printf(" %-26s", "");
    printf(" %-6s %7.0f ms", r->deterministic < 0 ? "-" : r->deterministic ? "det" : "NONDET",
           r->ms);
    if (r->message[0])
        printf("  %s", r->message);
    if (r->known[0])
        printf("  [known: %s]", r->known);
    if (r->deterministic == 0)
        printf("  [not deterministic: %s]", r->nondet);
    printf("\n");
    fflush(stdout);
}

static void run_info_strings(int argc, char **argv, char *cmd, size_t cmd_size, char *date,
                             size_t date_size, char *host, size_t host_size) {
    size_t len = 0;
    cmd[0] = '\0';
    for (int i = 0; i < argc && len + 2 < cmd_size; i++)
        len += (size_t)snprintf(cmd + len, cmd_size - len, "%s%s", i ? " " : "", argv[i]);
    time_t now = time(NULL);
    const struct tm *tmv = gmtime(&now); /* single-threaded here: the static result is fine */
    if (tmv == NULL || strftime(date, date_size, "%Y-%m-%dT%H:%M:%SZ", tmv) == 0)
        snprintf(date, date_size, "unknown");
#if defined(_WIN32)
    snprintf(host, host_size, "windows");
#else
    struct utsname u;
    if (uname(&u) == 0)
        snprintf(host, host_size, "%s %s %s", u.sysname, u.release, u.machine);
    else
        snprintf(host, host_size, "unknown");
#endif
#if defined(__VERSION__)
    len = strlen(host);
    snprintf(host + len, host_size - len, ", compiler %s", __VERSION__);
#endif
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (o.help) {
        usage(stdout);
        return 0;
    }
    static cf_case all[MAX_CASES], cases[MAX_CASES];
    cf_case_opts copts = {.sets = o.quick ? CF_SET_QUICK : CF_SET_FULL, .knobs = 1};
    size_t n_all = cf_op_cases(&copts, all, MAX_CASES);
    n_all += cf_pipeline_cases(o.quick, all + n_all, MAX_CASES - n_all);
    size_t n = 0;
    for (size_t i = 0; i < n_all; i++)
        if (filter_match(o.filter, all[i].name))
            cases[n++] = all[i];
    if (o.list) {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", cases[i].name);
        return 0;
    }
    if (n == 0) {
        fprintf(stderr, "freekv-conformance: no case matches '%s' (see --list)\n", o.filter);
        return EXIT_USAGE;
    }

    cf_required req[MAX_REQUIRED];
    size_t n_req;
    int rc = parse_required(&o, req, &n_req);
    if (rc != 0)
        return rc;
    fkv_device_info targets[MAX_DEVICES];
    size_t n_targets;
    rc = pick_targets(&o, targets, &n_targets);
    /* no device at all is a skip (77) only when no backend of this run is required */
    if (rc != 0 && !(rc == EXIT_NO_DEVICE && n_req > 0))
        return rc;
    if (make_dirs(o.report_dir) != 0) {
        fprintf(stderr, "freekv-conformance: cannot create %s: %s\n", o.report_dir,
                strerror(errno));
        return 1;
    }

    cf_env env;
    memset(&env, 0, sizeof env);
    env.quick = o.quick;
    env.strict = o.strict;
    env.determinism = 1;
    if (fkv_device_open_ops(fkv_backend_cpu(), 0, &env.ref.dev) != FKV_OK) {
        fprintf(stderr, "freekv-conformance: cannot open the CPU reference: %s\n",
                fkv_last_error());
        return 1;
    }
    fkv_device_get_info(env.ref.dev, &env.ref.info);

    char cmd[1024], date[64], host[256];
    run_info_strings(argc, argv, cmd, sizeof cmd, date, sizeof date, host, sizeof host);
    cf_result *res = calloc(n, sizeof *res);
    cf_device_run *runs = calloc(n_targets ? n_targets : 1, sizeof *runs);
    /* at most every case of every device does not pass plainly */
    cf_note *notes = calloc(n * (n_targets ? n_targets : 1), sizeof *notes);
    size_t n_notes = 0;
    if (res == NULL || runs == NULL || notes == NULL) {
        fprintf(stderr, "freekv-conformance: out of memory\n");
        free(res);
        free(runs);
        free(notes);
        fkv_device_close(env.ref.dev);
        return 1;
    }
    printf("freekv-conformance %d.%d.%d: %zu case(s), %s mode, %zu device(s), reference: %s\n",
           FKV_VERSION_MAJOR, FKV_VERSION_MINOR, FKV_VERSION_PATCH, n, o.quick ? "quick" : "full",
           n_targets, env.ref.info.name);
    if (o.broken)
        printf("SELF-TEST '%s': the device's ops table is deliberately altered (see "
               "docs/conformance.md)\n",
               o.broken);
    if (n_req) {
        printf("required backends (%s):", o.require_from_env ? "FREEKV_REQUIRE_DEVICES" : "--require");
        for (size_t i = 0; i < n_req; i++)
            printf(" %s", req[i].backend);
        printf("\n");
    }
    check_required(&o, req, n_req, targets, n_targets);

    for (size_t t = 0; t < n_targets; t++) {
        const fkv_device_info *info = &targets[t];
        cf_device_run *dr = &runs[t];
        dr->info = *info;
        printf("\n== device %s[%u] %s (%s)\n", info->backend, info->index, info->name,
               info->driver);
        cf_known *known = NULL;
        char kmsg[600];
        if (cf_known_load(o.known_dir, info->backend, &known, kmsg, sizeof kmsg) != 0) {
            fprintf(stderr, "freekv-conformance: known-failures file: %s\n", kmsg);
            snprintf(dr->error, sizeof dr->error, "known-failures file: %.400s", kmsg);
            continue;
        }
        if (open_dev(info, o.broken, &env.dut) != 0) {
            printf("FAIL  device/open  %s\n", fkv_last_error());
            snprintf(dr->error, sizeof dr->error, "cannot open: %.500s", fkv_last_error());
            cf_known_free(known);
            continue;
        }
        char dev_name[200];
        snprintf(dev_name, sizeof dev_name, "%.15s:%.127s", info->backend, env.dut.info.name);
        double t_dev = cf_now_ms();
        for (size_t i = 0; i < n; i++) {
            cf_result *r = &res[i];
            cf_result_init(r);
            double t0 = cf_now_ms();
            cases[i].run(&env, &cases[i], r);
            r->ms = cf_now_ms() - t0;
            const char *why = cf_known_match(known, dev_name, cases[i].name);
            if (why && (r->status == CF_FAIL || r->status == CF_PASS)) {
                r->status = r->status == CF_FAIL ? CF_KNOWN : CF_XPASS;
                snprintf(r->known, sizeof r->known, "%s", why);
            }
            dr->count[r->status]++;
            dr->nondet += r->deterministic == 0;
            if (r->status != CF_PASS) {
                cf_note *nt = &notes[n_notes++];
                nt->device = t;
                nt->status = r->status;
                snprintf(nt->case_name, sizeof nt->case_name, "%.95s", cases[i].name);
                snprintf(nt->message, sizeof nt->message, "%s", r->known[0] ? r->known : r->message);
            }
            print_line(&cases[i], r);
        }
        double seconds = (cf_now_ms() - t_dev) / 1e3;
        dr->seconds = seconds;
        cf_summary_print(stdout, &env.dut.info, cases, res, n, seconds);
        char known_desc[700];
        snprintf(known_desc, sizeof known_desc, "%s (%zu entries)", cf_known_path(known),
                 cf_known_count(known));
        cf_run_info run = {o.quick ? "quick" : "full", cmd, date, host, known_desc, o.broken};
        char paths[1400];
        if (cf_report_write(o.report_dir, &run, &env.dut.info, cases, res, n, seconds, paths,
                            sizeof paths) != 0) {
            fprintf(stderr, "freekv-conformance: cannot write the reports (%s): %s\n", paths,
                    strerror(errno));
            snprintf(dr->error, sizeof dr->error, "cannot write the reports");
        } else {
            printf("reports: %s\n", paths);
        }
        fkv_device_close(env.dut.dev);
        memset(&env.dut, 0, sizeof env.dut);
        cf_known_free(known);
    }
    fkv_device_close(env.ref.dev);
    cf_run_info run = {o.quick ? "quick" : "full", cmd, date, host, NULL, o.broken};
    char paths[1400];
    cf_run_totals tot = cf_run_tally(req, n_req, runs, n_targets);
    if (cf_run_report_write(o.report_dir, &run, req, n_req, runs, n_targets, notes, n_notes, paths,
                            sizeof paths) != 0) {
        fprintf(stderr, "freekv-conformance: cannot write the run report (%s): %s\n", paths,
                strerror(errno));
        tot.failed++;
    } else {
        printf("\nrun report: %s\n", paths);
    }
    free(res);
    free(runs);
    free(notes);
    /* Skipped cases were not run: never counted as passed. The last line has the shape CI
     * reads ("N passed, N failed, N skipped"). */
    if (tot.known || tot.xpass)
        printf("known failures: %u (not counted as failed), %u now pass (xpass)\n", tot.known,
               tot.xpass);
    int nothing = !tot.failed && cf_run_failed(tot); /* every case skipped or known */
    if (tot.failed)
        printf("conformance result: FAIL");
    else if (nothing)
        printf("conformance result: FAIL: no case passed, nothing was tested");
    else
        printf("conformance result: PASS");
    if (!tot.failed && tot.skipped)
        printf("%s %u case(s) skipped (not run; reasons in the reports)", nothing ? ";" : ", but",
               tot.skipped);
    printf("\nconformance: %u passed, %u failed, %u skipped\n", tot.passed, tot.failed,
           tot.skipped);
    return cf_run_failed(tot) ? 1 : 0;
}
