/* Running a tool's main function inside a Criterion test (tool_run.h). */
#include "tool_run.h"

#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char err_path[96], out_path[96];

void tr_capture(const char *tool) {
    snprintf(err_path, sizeof err_path, "/tmp/fkv_%s_err_%d", tool, (int)getpid());
    snprintf(out_path, sizeof out_path, "/tmp/fkv_%s_out_%d", tool, (int)getpid());
    cr_assert_not_null(freopen(err_path, "w", stderr));
    cr_assert_not_null(freopen(out_path, "w", stdout));
    setenv("FREEKV_BACKEND", "cpu", 1);
    unsetenv("FREEKV_DEVICE");
}

void tr_cleanup(void) {
    unlink(err_path);
    unlink(out_path);
}

const char *tr_slurp(const char *path) {
    static char buf[1 << 16];
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

const char *tr_stdout(void) { return tr_slurp(out_path); }

const char *tr_stderr(void) { return tr_slurp(err_path); }

int tr_vrun(tr_main fn, const char *argv0, const char *first, va_list ap) {
    char *argv[64];
    int argc = 0;
    argv[argc++] = (char *)argv0;
    for (const char *a = first; a && argc < 63; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    argv[argc] = NULL;
    cr_assert_not_null(freopen(err_path, "w", stderr));
    cr_assert_not_null(freopen(out_path, "w", stdout));
    int rc = fn(argc, argv);
    fflush(stdout);
    fflush(stderr);
    return rc;
}

int tr_run(tr_main fn, const char *argv0, ...) {
    va_list ap;
    va_start(ap, argv0);
    const char *first = va_arg(ap, const char *);
    int rc = tr_vrun(fn, argv0, first, ap);
    va_end(ap);
    return rc;
}

char *tr_temp_dir(void) {
    static char tmpl[64];
    snprintf(tmpl, sizeof tmpl, "/tmp/fkv_eval_XXXXXX");
    char *d = mkdtemp(tmpl);
    cr_assert_not_null(d);
    return d;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

void tr_remove_tree(const char *dir) { nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS); }

void tr_write_text(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}
