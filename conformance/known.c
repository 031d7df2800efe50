/* Known failures: conformance/known_failures/<backend>.txt, format documented in those files.
 * Each line not blank and not starting with '#' is "device pattern | case pattern | reason";
 * patterns take '*' and '?' and match case-insensitively. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "conformance.h"

typedef struct cf_known_entry {
    char *device, *case_pattern, *reason;
} cf_known_entry;

struct cf_known {
    char path[512];
    cf_known_entry *e;
    size_t n;
};

static int glob_match(const char *pat, const char *s) {
    for (; *pat; pat++, s++) {
        if (*pat == '*') {
            while (pat[1] == '*')
                pat++;
            for (const char *t = s;; t++) {
                if (glob_match(pat + 1, t))
                    return 1;
                if (*t == '\0')
                    return 0;
            }
        }
        if (*s == '\0')
            return 0;
        if (*pat != '?' && tolower((unsigned char)*pat) != tolower((unsigned char)*s))
            return 0;
    }
    return *s == '\0';
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

static char *dup_str(const char *s) {
    char *d = malloc(strlen(s) + 1);
    if (d)
        strcpy(d, s);
    return d;
}

int cf_known_load(const char *dir, const char *backend, cf_known **out, char *msg, size_t size) {
    cf_known *k = calloc(1, sizeof *k);
    *out = NULL;
    msg[0] = '\0';
    if (k == NULL) {
        snprintf(msg, size, "out of memory");
        return -1;
    }
    snprintf(k->path, sizeof k->path, "%s/%s.txt", dir, backend);
    FILE *f = fopen(k->path, "r");
    if (f == NULL) { /* no file: nothing is known to fail */
        *out = k;
        return 0;
    }
    char line[1024];
    unsigned lineno = 0;
    int rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *l = trim(line);
        if (*l == '\0' || *l == '#') /* whole-line comments only: reasons cite "#123" */
            continue;
        char *bar1 = strchr(l, '|'), *bar2 = bar1 ? strchr(bar1 + 1, '|') : NULL;
        if (bar2 == NULL) {
            snprintf(msg, size, "%s:%u: expected 'device pattern | case pattern | reason'",
                     k->path, lineno);
            rc = -1;
            break;
        }
        *bar1 = *bar2 = '\0';
        char *dev = trim(l), *cs = trim(bar1 + 1), *why = trim(bar2 + 1);
        if (*dev == '\0' || *cs == '\0' || *why == '\0') {
            snprintf(msg, size, "%s:%u: empty device pattern, case pattern or reason", k->path,
                     lineno);
            rc = -1;
            break;
        }
        cf_known_entry *ne = realloc(k->e, sizeof *ne * (k->n + 1));
        if (ne == NULL) {
            snprintf(msg, size, "out of memory");
            rc = -1;
            break;
        }
        k->e = ne;
        k->e[k->n].device = dup_str(dev);
        k->e[k->n].case_pattern = dup_str(cs);
        k->e[k->n].reason = dup_str(why);
        k->n++;
        if (!k->e[k->n - 1].device || !k->e[k->n - 1].case_pattern || !k->e[k->n - 1].reason) {
            snprintf(msg, size, "out of memory");
            rc = -1;
            break;
        }
    }
    fclose(f);
    if (rc != 0) {
        cf_known_free(k);
        return rc;
    }
    *out = k;
    return 0;
}

const char *cf_known_match(const cf_known *k, const char *device, const char *case_name) {
    for (size_t i = 0; k && i < k->n; i++)
        if (glob_match(k->e[i].device, device) && glob_match(k->e[i].case_pattern, case_name))
            return k->e[i].reason;
    return NULL;
}

const char *cf_known_path(const cf_known *k) { return k ? k->path : ""; }

size_t cf_known_count(const cf_known *k) { return k ? k->n : 0; }

void cf_known_free(cf_known *k) {
    if (k == NULL)
        return;
    for (size_t i = 0; i < k->n; i++) {
        free(k->e[i].device);
        free(k->e[i].case_pattern);
        free(k->e[i].reason);
    }
    free(k->e);
    free(k);
}
