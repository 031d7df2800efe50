#include "cache_file.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#ifdef _WIN32
#include <direct.h>
#include <process.h>
#define fkv_getpid _getpid
#else
#include <unistd.h>
#define fkv_getpid getpid
#endif

#include "env.h"

static int make_dir(const char *path) {
#ifdef _WIN32
    return _mkdir(path) == 0 || errno == EEXIST ? 0 : -1;
#else
    return mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : -1;
#endif
}

/* mkdir -p; 0 when `path` ends up an existing directory. */
static int make_dirs(const char *path) {
    char buf[1024];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i < n; i++) {
        if (buf[i] != '/')
            continue;
        buf[i] = '\0';
        make_dir(buf); /* intermediate failures show up at the last step */
        buf[i] = '/';
    }
    if (make_dir(buf) != 0)
        return -1;
    struct stat sb;
    return stat(buf, &sb) == 0 && (sb.st_mode & S_IFMT) == S_IFDIR ? 0 : -1;
}

void fkv_cache_dir(char *buf, size_t size) {
    const char *dir = fkv_env_get("FREEKV_CACHE_DIR");
    const char *xdg = fkv_env_get("XDG_CACHE_HOME");
    const char *home = fkv_env_get("HOME");
    int n;
    buf[0] = '\0';
    if (dir)
        n = snprintf(buf, size, "%s", dir);
    else if (xdg)
        n = snprintf(buf, size, "%s/freekv", xdg);
    else if (home)
        n = snprintf(buf, size, "%s/.cache/freekv", home);
    else
        return;
    if (n < 0 || (size_t)n >= size || make_dirs(buf) != 0)
        buf[0] = '\0';
}

int fkv_cache_write(const char *path, const void *const *parts, const size_t *sizes, int n) {
    static atomic_uint counter; /* distinguishes temporaries of threads in one process */
    size_t len = strlen(path);
    char *tmp = malloc(len + 48);
    if (tmp == NULL)
        return -1;
    snprintf(tmp, len + 48, "%s.tmp.%ld.%u", path, (long)fkv_getpid(),
             atomic_fetch_add(&counter, 1u) + 1u);
    FILE *f = fopen(tmp, "wbx");
    if (f == NULL) {
        free(tmp);
        return -1;
    }
    int ok = 1;
    for (int i = 0; i < n && ok; i++)
        ok = fwrite(parts[i], 1, sizes[i], f) == sizes[i];
    ok = fclose(f) == 0 && ok;
#ifdef _WIN32
    if (ok)
        remove(path); /* rename does not replace on Windows */
#endif
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        ok = 0;
    }
    free(tmp);
    return ok ? 0 : -1;
}
