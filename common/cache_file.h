/* On-disk caches (OpenCL program binaries, the Vulkan pipeline cache): where they live and how
 * they are written. Any failure only disables a cache; none is an error. */
#ifndef FKV_COMMON_CACHE_FILE_H
#define FKV_COMMON_CACHE_FILE_H

#include <stddef.h>

/* $FREEKV_CACHE_DIR, else $XDG_CACHE_HOME/freekv, else $HOME/.cache/freekv, created with its
 * parents when missing; buf = "" when none is usable (or the path does not fit). */
void fkv_cache_dir(char *buf, size_t size);

/* Writes the n parts to `path` through a temporary file in the same directory and a rename,
 * so a reader sees a whole file or none; 0 on success, -1 (nothing left behind) otherwise. */
int fkv_cache_write(const char *path, const void *const *parts, const size_t *sizes, int n);

#endif
