/* Program building and the program-binary cache.
 *
 * A program is built per KV dtype on first use. Its binary is cached on disk under a name
 * derived from everything that can change the binary: the source, the build options, the
 * platform, device and driver versions. Files are written to a temporary name and renamed,
 * so a reader sees a whole file or none; each file repeats its full key and a checksum, so
 * a stale, foreign or truncated file is ignored and rebuilt. Any failure of the cache
 * (missing or read-only directory, a path that is a file) only disables it. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cache_file.h"
#include "../common/error.h"
#include "ocl_internal.h"

extern const char fkv_opencl_kernels[];
extern const size_t fkv_opencl_kernels_size;

const char *const fkv_ocl_kernel_names[K_COUNT] = {
    "fkv_append",        "fkv_summarize",      "fkv_scores",          "fkv_cosine",
    "fkv_scores_check",
    "fkv_pack_hnd",      "fkv_pack_hnd_v16",   "fkv_scatter_hnd",     "fkv_scatter_hnd_v16",
    "fkv_recall_direct", "fkv_recall_direct_v16", "fkv_attention",    "fkv_attention_reduce",
    "fkv_select_pages",
    "fkv_quant_pack",    "fkv_dequant_scatter", "fkv_dequant_direct",
};

#define CACHE_MAGIC "FKVCLBIN1\n"

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t hash_str(uint64_t h, const char *s) { return fnv1a(h, s, strlen(s) + 1); }

/* ---- cache files ---- */

typedef struct cache_entry {
    char path[1100];
    char key[2048]; /* full key text, stored in the file and compared on load */
} cache_entry;

static void cache_entry_init(const fkv_bdev *d, const char *src, size_t src_len,
                             const char *options, cache_entry *e) {
    uint64_t sh = fnv1a(0xcbf29ce484222325ull, src, src_len);
    snprintf(e->key, sizeof e->key, "%s\noptions=%s\nsource=%016llx:%zu\n", d->cache_key, options,
             (unsigned long long)sh, src_len);
    uint64_t kh = hash_str(0xcbf29ce484222325ull, e->key);
    snprintf(e->path, sizeof e->path, "%s/opencl-%016llx.bin", d->cache_dir,
             (unsigned long long)kh);
}

static int read_all(FILE *f, void *buf, size_t n) { return fread(buf, 1, n, f) == n ? 0 : -1; }

/* The cached binary, or NULL when there is none that matches. */
static unsigned char *cache_load(const cache_entry *e, size_t *size) {
    FILE *f = fopen(e->path, "rb");
    if (f == NULL)
        return NULL;
    unsigned char *bin = NULL;
    char magic[sizeof CACHE_MAGIC - 1];
    uint64_t key_len, bin_len, bin_hash;
    size_t want_key = strlen(e->key);
    if (read_all(f, magic, sizeof magic) || memcmp(magic, CACHE_MAGIC, sizeof magic) ||
        read_all(f, &key_len, sizeof key_len) || key_len != want_key)
        goto bad;
    char key[sizeof e->key];
    if (read_all(f, key, want_key) || memcmp(key, e->key, want_key) ||
        read_all(f, &bin_len, sizeof bin_len) || read_all(f, &bin_hash, sizeof bin_hash) ||
        bin_len == 0 || bin_len > ((uint64_t)1 << 31))
        goto bad;
    bin = malloc((size_t)bin_len);
    if (bin == NULL || read_all(f, bin, (size_t)bin_len) ||
        fnv1a(0xcbf29ce484222325ull, bin, (size_t)bin_len) != bin_hash)
        goto bad;
    fclose(f);
    *size = (size_t)bin_len;
    return bin;
bad:
    free(bin);
    fclose(f);
    return NULL;
}

/* 0 on success. Failures are ignored by the caller: a cache that cannot be written is simply
 * not used. */
static int cache_store(const cache_entry *e, const unsigned char *bin, size_t size) {
    uint64_t key_len = strlen(e->key), bin_len = size;
    uint64_t bin_hash = fnv1a(0xcbf29ce484222325ull, bin, size);
    const void *parts[] = {CACHE_MAGIC, &key_len, e->key, &bin_len, &bin_hash, bin};
    const size_t sizes[] = {sizeof CACHE_MAGIC - 1, sizeof key_len, (size_t)key_len,
                            sizeof bin_len, sizeof bin_hash, size};
    return fkv_cache_write(e->path, parts, sizes, 6);
}

/* ---- building ---- */

static fkv_status build_failure(fkv_bdev *d, cl_program prog, cl_int err) {
    size_t log_size = 0;
    char *log = NULL;
    if (clGetProgramBuildInfo(prog, d->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &log_size) ==
            CL_SUCCESS &&
        log_size > 0 && (log = malloc(log_size + 1)) != NULL) {
        if (clGetProgramBuildInfo(prog, d->device, CL_PROGRAM_BUILD_LOG, log_size, log, NULL) !=
            CL_SUCCESS)
            log[0] = '\0';
        log[log_size] = '\0';
    }
    fkv_status st = fkv_error(FKV_ERR_KERNEL_BUILD, "OpenCL clBuildProgram failed: %s (%d); log:\n%s",
                              fkv_ocl_error_name(err), (int)err, log ? log : "(none)");
    free(log);
    return st;
}

/* Builds from a cached binary when one matches, else from source (and stores the binary). */
static fkv_status build_program(fkv_bdev *d, const char *src, size_t src_len,
                                const char *options, cl_program *out, int *from_cache) {
    cl_int err;
    cache_entry *e = NULL;
    *from_cache = 0;
    if (d->cache_dir[0] && (e = malloc(sizeof *e)) != NULL) {
        cache_entry_init(d, src, src_len, options, e);
        size_t bin_size;
        unsigned char *bin = cache_load(e, &bin_size);
        if (bin) {
            const unsigned char *bins[1] = {bin};
            cl_int bin_status = CL_SUCCESS;
            cl_program prog = clCreateProgramWithBinary(d->context, 1, &d->device, &bin_size,
                                                        bins, &bin_status, &err);
            free(bin);
            if (err == CL_SUCCESS && bin_status == CL_SUCCESS &&
                clBuildProgram(prog, 1, &d->device, options, NULL, NULL) == CL_SUCCESS) {
                *out = prog;
                *from_cache = 1;
                atomic_fetch_add(&d->cache_loads, 1u);
                free(e);
                return FKV_OK;
            }
            if (err == CL_SUCCESS)
                clReleaseProgram(prog); /* unusable binary: rebuild and overwrite it */
        }
    }

    const char *srcs[1] = {src};
    cl_program prog = clCreateProgramWithSource(d->context, 1, srcs, &src_len, &err);
    if (err != CL_SUCCESS) {
        free(e);
        return fkv_ocl_fail(err, 0, "clCreateProgramWithSource");
    }
    err = clBuildProgram(prog, 1, &d->device, options, NULL, NULL);
    if (err != CL_SUCCESS) {
        fkv_status st = err == CL_BUILD_PROGRAM_FAILURE || err == CL_INVALID_BUILD_OPTIONS
                            ? build_failure(d, prog, err)
                            : fkv_ocl_fail(err, 0, "clBuildProgram");
        clReleaseProgram(prog);
        free(e);
        return st;
    }
    if (e) {
        size_t bin_size = 0;
        if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof bin_size, &bin_size, NULL) ==
                CL_SUCCESS &&
            bin_size > 0) {
            unsigned char *bin = malloc(bin_size);
            unsigned char *bins[1] = {bin};
            if (bin &&
                clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) ==
                    CL_SUCCESS &&
                cache_store(e, bin, bin_size) == 0)
                atomic_fetch_add(&d->cache_stores, 1u);
            free(bin);
        }
        free(e);
    }
    *out = prog;
    return FKV_OK;
}

void fkv_ocl_program_release(ocl_program *p) {
    for (int q = 0; q < OCL_KQ_COUNT; q++)
        for (int k = 0; k < K_COUNT; k++)
            if (p->kernels[q][k])
                clReleaseKernel(p->kernels[q][k]);
    if (p->program)
        clReleaseProgram(p->program);
    free(p->failed_msg);
    memset(p, 0, sizeof *p);
}

static fkv_status create_kernels(fkv_bdev *d, ocl_program *p) {
    for (int k = 0; k < K_COUNT; k++) {
        for (int q = 0; q < OCL_KQ_COUNT; q++) {
            cl_int err;
            p->kernels[q][k] = clCreateKernel(p->program, fkv_ocl_kernel_names[k], &err);
            if (err != CL_SUCCESS)
                return fkv_ocl_fail(err, 0, fkv_ocl_kernel_names[k]);
        }
        cl_int err = clGetKernelWorkGroupInfo(p->kernels[0][k], d->device,
                                              CL_KERNEL_WORK_GROUP_SIZE, sizeof p->wg_max[k],
                                              &p->wg_max[k], NULL);
        if (err == CL_SUCCESS)
            err = clGetKernelWorkGroupInfo(p->kernels[0][k], d->device, CL_KERNEL_LOCAL_MEM_SIZE,
                                           sizeof p->local_used[k], &p->local_used[k], NULL);
        if (err != CL_SUCCESS)
            return fkv_ocl_fail(err, 0, "clGetKernelWorkGroupInfo");
    }
    return FKV_OK;
}

fkv_status fkv_ocl_program(fkv_bdev *d, fkv_dtype dtype, ocl_program **out) {
    if ((unsigned)dtype > FKV_BF16)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "opencl: unknown dtype %d", (int)dtype);
    ocl_program *p = &d->programs[dtype];
    fkv_status st = FKV_OK;
    pthread_mutex_lock(&d->build_lock);
    if (p->built) {
        /* fast path */
    } else if (p->failed != FKV_OK) {
        /* The stored message starts with the status text that fkv_error adds again. */
        const char *msg = p->failed_msg ? p->failed_msg : "program build failed";
        size_t skip = strlen(fkv_status_string(p->failed));
        if (strncmp(msg, fkv_status_string(p->failed), skip) == 0 && msg[skip] == ':')
            msg += skip + 2;
        st = fkv_error(p->failed, "%s", msg);
    } else {
        char options[sizeof d->build_options + 48];
        snprintf(options, sizeof options, "%s -DFKV_DTYPE=%d -DFKV_VW=%u", d->build_options,
                 (int)dtype, d->attention_vec);
        const char *src = d->source_override ? d->source_override : fkv_opencl_kernels;
        size_t src_len =
            d->source_override ? strlen(d->source_override) : fkv_opencl_kernels_size;
        st = build_program(d, src, src_len, options, &p->program, &p->from_cache);
        if (st == FKV_OK)
            st = create_kernels(d, p);
        if (st == FKV_OK) {
            p->built = 1;
            p->attention_vec = d->attention_vec;
        } else {
            /* Remember the failure (and its message, build log included) so later calls
             * report it without rebuilding for seconds each time. */
            const char *msg = fkv_last_error();
            fkv_ocl_program_release(p);
            p->failed = st;
            p->failed_msg = malloc(strlen(msg) + 1);
            if (p->failed_msg)
                memcpy(p->failed_msg, msg, strlen(msg) + 1);
            fkv_error_prefix(st, "building the OpenCL %s program", fkv_dtype_name(dtype));
        }
    }
    pthread_mutex_unlock(&d->build_lock);
    if (st == FKV_OK)
        *out = p;
    return st;
}

fkv_status fkv_ocl_set_source(fkv_bdev *d, const char *source) {
    char *copy = NULL;
    if (source) {
        copy = malloc(strlen(source) + 1);
        if (copy == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opencl: kernel source override");
        memcpy(copy, source, strlen(source) + 1);
    }
    pthread_mutex_lock(&d->build_lock);
    free(d->source_override);
    d->source_override = copy;
    for (int i = 0; i < 3; i++)
        fkv_ocl_program_release(&d->programs[i]);
    pthread_mutex_unlock(&d->build_lock);
    return FKV_OK;
}

void fkv_ocl_set_attention_vec(fkv_bdev *d, cl_uint vec) {
    pthread_mutex_lock(&d->build_lock);
    if (d->attention_vec != vec)
        for (int i = 0; i < 3; i++)
            fkv_ocl_program_release(&d->programs[i]);
    d->attention_vec = vec;
    pthread_mutex_unlock(&d->build_lock);
}
