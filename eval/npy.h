/* A strict reader (and a small writer) for NumPy .npy files, as trace arrays.
 *
 * Accepted: format versions 1.0, 2.0 and 3.0; C order; little-endian float32 ('<f4'),
 * float16 ('<f2') and bfloat16 stored as uint16 ('<u2'); 1 to FKV_NPY_MAX_DIMS dimensions.
 * Anything else (wrong magic, other dtypes, Fortran order, malformed header dict, sizes
 * that overflow, data shorter or longer than the shape says) is rejected with
 * FKV_ERR_BAD_FILE and a message in fkv_last_error(); read failures give FKV_ERR_IO.
 * Nothing here aborts, exits or reads outside the buffers it is given. */
#ifndef FKV_EVAL_NPY_H
#define FKV_EVAL_NPY_H

#include <stddef.h>
#include <stdint.h>

#include "freekv.h"

#define FKV_NPY_MAX_DIMS 8
/* Header dicts longer than this are "absurd" (numpy writes about 128 bytes). */
#define FKV_NPY_MAX_HEADER (1u << 20)
/* Largest element count accepted (2^40 elements: far beyond any trace, far below overflow). */
#define FKV_NPY_MAX_ELEMENTS (1ull << 40)

typedef enum fkv_npy_dtype {
    FKV_NPY_F32 = 0,  /* '<f4' */
    FKV_NPY_F16 = 1,  /* '<f2' */
    FKV_NPY_BF16 = 2  /* '<u2', the bits of bfloat16 values */
} fkv_npy_dtype;

typedef struct fkv_npy_info {
    fkv_npy_dtype dtype;
    uint32_t version;          /* major format version: 1, 2 or 3 */
    uint32_t ndim;
    uint64_t shape[FKV_NPY_MAX_DIMS];
    uint64_t count;            /* product of shape */
    uint64_t data_offset;      /* where the array data starts */
    uint64_t data_bytes;       /* count * element size */
} fkv_npy_info;

size_t fkv_npy_dtype_size(fkv_npy_dtype dtype);
const char *fkv_npy_dtype_descr(fkv_npy_dtype dtype);

/* Parses the magic, version and header dict at the start of `buf` (len bytes: at least the
 * header; the data may follow). `what` names the file in messages (may be NULL). */
fkv_status fkv_npy_parse_header(const void *buf, size_t len, const char *what,
                                fkv_npy_info *info);

/* Parses a whole in-memory .npy file: header, then exactly data_bytes of data. */
fkv_status fkv_npy_parse(const void *buf, size_t len, const char *what, fkv_npy_info *info);

/* Converts `count` elements of `dtype` (little-endian) to f32. Fails on NaN or infinity,
 * which would poison attention, naming the first bad element. */
fkv_status fkv_npy_to_f32(fkv_npy_dtype dtype, const void *data, uint64_t count, float *out,
                          const char *what);

/* Reads a .npy file into a newly malloc'd f32 array. If expect_ndim > 0, the file's shape
 * must equal expect_shape[0..expect_ndim) (checked before anything large is allocated).
 * On success *out must be freed by the caller; on failure it is NULL. */
fkv_status fkv_npy_load_f32(const char *path, uint32_t expect_ndim, const uint64_t *expect_shape,
                            float **out, fkv_npy_info *info);

/* Writes an f32 array as a version 1.0 .npy file of `dtype` (rounding to nearest even). */
fkv_status fkv_npy_write_f32(const char *path, fkv_npy_dtype dtype, uint32_t ndim,
                             const uint64_t *shape, const float *data);

#endif
