/* Running a command-line tool's main function inside a Criterion test (each test is its own
 * process): stdout and stderr go to per-process files that the test reads back. */
#ifndef FKV_TESTS_TOOL_RUN_H
#define FKV_TESTS_TOOL_RUN_H

#include <stdarg.h>

typedef int (*tr_main)(int argc, char **argv);

/* Suite init: sends stdout and stderr to /tmp/fkv_<tool>_{out,err}_<pid>, selects the CPU
 * reference backend (FREEKV_BACKEND=cpu, FREEKV_DEVICE unset). */
void tr_capture(const char *tool);
/* Suite fini: removes the two files. */
void tr_cleanup(void);
/* Runs fn(argv0, args..., NULL) with both files emptied first; returns its exit status. */
int tr_run(tr_main fn, const char *argv0, ...);
/* The same with the arguments first, then the rest of ap (NULL-terminated). */
int tr_vrun(tr_main fn, const char *argv0, const char *first, va_list ap);
/* What the last run wrote; the text stays valid until the next tr_* call. */
const char *tr_stdout(void);
const char *tr_stderr(void);
/* A whole (small) file's text, or NULL; same lifetime. */
const char *tr_slurp(const char *path);

/* Temporary files for the tests, which leave nothing behind in /tmp:
 * a new empty directory /tmp/fkv_eval_XXXXXX (the name stays valid until the next call);
 * a directory removed with the files in it; text written to dir/name. */
char *tr_temp_dir(void);
void tr_remove_tree(const char *dir);
void tr_write_text(const char *dir, const char *name, const char *text);

#endif
