/* Strict .npy reader and writer. Format: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
 * "\x93NUMPY", major, minor, header length (u16 for 1.x, u32 for 2.x/3.x), then a Python
 * dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with
 * spaces and ended by '\n', then the data. */
#include "npy.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/dtype.h"
#include "common/error.h"

#define BAD(...) fkv_error(FKV_ERR_BAD_FILE, __VA_ARGS__)

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

size_t fkv_npy_dtype_size(fkv_npy_dtype dtype) { return dtype == FKV_NPY_F32 ? 4 : 2; }

const char *fkv_npy_dtype_descr(fkv_npy_dtype dtype) {
    switch (dtype) {
    case FKV_NPY_F32:
        return "<f4";
    case FKV_NPY_F16:
        return "<f2";
    default:
        return "<u2";
    }
}

/* ---- header dict ----------------------------------------------------------------------- */

typedef struct cursor {
    const char *p, *end;
    const char *what;
} cursor;

static void skip_ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int take(cursor *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A quoted string without escapes (numpy never writes any) into buf. */
static fkv_status parse_str(cursor *c, char *buf, size_t cap) {
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return BAD("%s: .npy header: expected a quoted string", c->what);
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '\\' || ch < 0x20 || ch >= 0x7f)
            return BAD("%s: .npy header: unsupported character 0x%02x in a string", c->what, ch);
        if (n + 1 >= cap)
            return BAD("%s: .npy header: string too long", c->what);
        buf[n++] = (char)ch;
        c->p++;
    }
    if (c->p >= c->end)
        return BAD("%s: .npy header: unterminated string", c->what);
    c->p++;
    buf[n] = '\0';
    return FKV_OK;
}

static fkv_status parse_dim(cursor *c, uint64_t *out) {
    skip_ws(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        return BAD("%s: .npy header: shape must hold non-negative integers", c->what);
    if (*c->p == '0' && c->p + 1 < c->end && c->p[1] >= '0' && c->p[1] <= '9')
        return BAD("%s: .npy header: shape entry with a leading zero", c->what);
    uint64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        v = v * 10 + (uint64_t)(*c->p - '0');
        if (v > FKV_NPY_MAX_ELEMENTS)
            return BAD("%s: .npy header: shape entry too large (more than 2^40)", c->what);
        c->p++;
    }
    *out = v;
    return FKV_OK;
}

static fkv_status parse_shape(cursor *c, fkv_npy_info *info) {
    if (!take(c, '('))
        return BAD("%s: .npy header: 'shape' must be a tuple", c->what);
    uint32_t n = 0;
    int trailing_comma = 0;
    while (!take(c, ')')) {
        if (n == FKV_NPY_MAX_DIMS)
            return BAD("%s: .npy header: more than %d dimensions", c->what, FKV_NPY_MAX_DIMS);
        fkv_status st = parse_dim(c, &info->shape[n]);
        if (st != FKV_OK)
            return st;
        n++;
        trailing_comma = take(c, ',');
        if (!trailing_comma) {
            if (!take(c, ')'))
                return BAD("%s: .npy header: malformed shape tuple", c->what);
            break;
        }
    }
    if (n == 1 && !trailing_comma) /* Python reads (3) as the integer 3, not a tuple */
        return BAD("%s: .npy header: malformed shape tuple '(n)' (a 1-d shape is '(n,)')", c->what);
    if (n == 0)
        return BAD("%s: .npy header: 0-dimensional arrays are not supported", c->what);
    info->ndim = n;
    return FKV_OK;
}

static fkv_status parse_dict(cursor *c, fkv_npy_info *info) {
    int have_descr = 0, have_order = 0, have_shape = 0;
    if (!take(c, '{'))
        return BAD("%s: .npy header does not start with '{'", c->what);
    while (!take(c, '}')) {
        char key[32], val[32];
        fkv_status st = parse_str(c, key, sizeof key);
        if (st != FKV_OK)
            return st;
        if (!take(c, ':'))
            return BAD("%s: .npy header: expected ':' after '%s'", c->what, key);
        if (strcmp(key, "descr") == 0) {
            if (have_descr++)
                return BAD("%s: .npy header: duplicate 'descr'", c->what);
            st = parse_str(c, val, sizeof val);
            if (st != FKV_OK)
                return st;
            if (strcmp(val, "<f4") == 0)
                info->dtype = FKV_NPY_F32;
            else if (strcmp(val, "<f2") == 0)
                info->dtype = FKV_NPY_F16;
            else if (strcmp(val, "<u2") == 0)
                info->dtype = FKV_NPY_BF16;
            else if (val[0] == '>')
                return BAD("%s: .npy dtype '%s' is big-endian; save little-endian ('<f4', "
                           "'<f2' or '<u2')", c->what, val);
            else
                return BAD("%s: .npy dtype '%s' is not supported (float32 '<f4', float16 "
                           "'<f2', bfloat16 as uint16 '<u2')", c->what, val);
        } else if (strcmp(key, "fortran_order") == 0) {
            if (have_order++)
                return BAD("%s: .npy header: duplicate 'fortran_order'", c->what);
            skip_ws(c);
            if ((size_t)(c->end - c->p) >= 5 && memcmp(c->p, "False", 5) == 0) {
                c->p += 5;
            } else if ((size_t)(c->end - c->p) >= 4 && memcmp(c->p, "True", 4) == 0) {
                return BAD("%s: .npy array is in Fortran order; save it in C order "
                           "(np.ascontiguousarray)", c->what);
            } else {
                return BAD("%s: .npy header: 'fortran_order' must be True or False", c->what);
            }
        } else if (strcmp(key, "shape") == 0) {
            if (have_shape++)
                return BAD("%s: .npy header: duplicate 'shape'", c->what);
            st = parse_shape(c, info);
            if (st != FKV_OK)
                return st;
        } else {
            return BAD("%s: .npy header: unexpected key '%s'", c->what, key);
        }
        if (!take(c, ',')) {
            if (!take(c, '}'))
                return BAD("%s: .npy header: expected ',' or '}'", c->what);
            break;
        }
    }
    if (!have_descr || !have_order || !have_shape)
        return BAD("%s: .npy header lacks '%s'", c->what,
                   !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
    skip_ws(c); /* numpy pads with spaces up to a '\n' */
    if (c->p != c->end)
        return BAD("%s: .npy header: unexpected text after the dict", c->what);
    return FKV_OK;
}

fkv_status fkv_npy_parse_header(const void *buf, size_t len, const char *what,
                                fkv_npy_info *info) {
    if (buf == NULL || info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_npy_parse_header: NULL argument");
    if (what == NULL)
        what = "array";
    const unsigned char *b = buf;
    memset(info, 0, sizeof *info);
    if (len < 10 || memcmp(b, npy_magic, sizeof npy_magic) != 0)
        return BAD("%s: not a .npy file (bad magic)", what);
    uint32_t major = b[6], minor = b[7];
    uint64_t hlen, start;
    if (major == 1 && minor == 0) {
        hlen = (uint64_t)b[8] | (uint64_t)b[9] << 8;
        start = 10;
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (len < 12)
            return BAD("%s: truncated .npy header", what);
        hlen = (uint64_t)b[8] | (uint64_t)b[9] << 8 | (uint64_t)b[10] << 16 |
               (uint64_t)b[11] << 24;
        start = 12;
    } else {
        return BAD("%s: .npy format version %u.%u is not supported (1.0, 2.0, 3.0)", what,
                   major, minor);
    }
    if (hlen > FKV_NPY_MAX_HEADER)
        return BAD("%s: .npy header length %llu is absurd (limit %u)", what,
                   (unsigned long long)hlen, FKV_NPY_MAX_HEADER);
    if (hlen > len - start)
        return BAD("%s: truncated .npy header (%llu bytes announced, %llu present)", what,
                   (unsigned long long)hlen, (unsigned long long)(len - start));
    const char *h = (const char *)b + start;
    if (memchr(h, '\0', hlen) != NULL)
        return BAD("%s: .npy header contains a NUL byte", what);
    cursor c = {h, h + hlen, what};
    fkv_status st = parse_dict(&c, info);
    if (st != FKV_OK)
        return st;
    uint64_t count = 1;
    for (uint32_t i = 0; i < info->ndim; i++) {
        /* divide before multiplying so the product can never wrap */
        if (info->shape[i] != 0 && count > FKV_NPY_MAX_ELEMENTS / info->shape[i])
            return BAD("%s: .npy shape has more than 2^40 elements", what);
        count *= info->shape[i];
    }
    info->version = major;
    info->count = count;
    info->data_offset = start + hlen;
    info->data_bytes = count * fkv_npy_dtype_size(info->dtype);
    return FKV_OK;
}

fkv_status fkv_npy_parse(const void *buf, size_t len, const char *what, fkv_npy_info *info) {
    fkv_status st = fkv_npy_parse_header(buf, len, what, info);
    if (st != FKV_OK)
        return st;
    if (what == NULL)
        what = "array";
    uint64_t have = len - info->data_offset;
    if (have < info->data_bytes)
        return BAD("%s: truncated .npy data (%llu bytes, the shape needs %llu)", what,
                   (unsigned long long)have, (unsigned long long)info->data_bytes);
    if (have > info->data_bytes)
        return BAD("%s: .npy file has %llu bytes after the data the shape describes", what,
                   (unsigned long long)(have - info->data_bytes));
    return FKV_OK;
}

/* Converts elements; `first` is the index of data[0] in the whole array, for messages. */
static fkv_status convert(fkv_npy_dtype dtype, const void *data, uint64_t count, float *out,
                          const char *what, uint64_t first) {
    const unsigned char *b = data;
    size_t es = fkv_npy_dtype_size(dtype);
    for (uint64_t i = 0; i < count; i++) {
        const unsigned char *e = b + i * es;
        float f;
        if (dtype == FKV_NPY_F32)
            f = fkv_bits_f32((uint32_t)e[0] | (uint32_t)e[1] << 8 | (uint32_t)e[2] << 16 |
                             (uint32_t)e[3] << 24);
        else if (dtype == FKV_NPY_F16)
            f = fkv_f16_to_f32((uint16_t)(e[0] | e[1] << 8));
        else
            f = fkv_bf16_to_f32((uint16_t)(e[0] | e[1] << 8));
        if (!isfinite(f))
            return BAD("%s: element %llu is %s", what ? what : "array",
                       (unsigned long long)(first + i), isnan(f) ? "NaN" : "infinite");
        out[i] = f;
    }
    return FKV_OK;
}

fkv_status fkv_npy_to_f32(fkv_npy_dtype dtype, const void *data, uint64_t count, float *out,
                          const char *what) {
    if ((data == NULL || out == NULL) && count > 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_npy_to_f32: NULL argument");
    return convert(dtype, data, count, out, what, 0);
}

static fkv_status shape_mismatch(const char *path, const fkv_npy_info *info, uint32_t ndim,
                                 const uint64_t *shape) {
    char got[160] = "", want[160] = "";
    size_t a = 0, w = 0;
    for (uint32_t i = 0; i < info->ndim && a < sizeof got; i++)
        a += (size_t)snprintf(got + a, sizeof got - a, "%s%llu", i ? ", " : "",
                              (unsigned long long)info->shape[i]);
    for (uint32_t i = 0; i < ndim && w < sizeof want; i++)
        w += (size_t)snprintf(want + w, sizeof want - w, "%s%llu", i ? ", " : "",
                              (unsigned long long)shape[i]);
    return BAD("%s: shape (%s), expected (%s)", path, got, want);
}

fkv_status fkv_npy_load_f32(const char *path, uint32_t expect_ndim, const uint64_t *expect_shape,
                            float **out, fkv_npy_info *info_out) {
    if (path == NULL || out == NULL || (expect_ndim > 0 && expect_shape == NULL))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_npy_load_f32: NULL argument");
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return fkv_error(FKV_ERR_IO, "%s: %s", path, strerror(errno));
    fkv_status st = FKV_OK;
    unsigned char *hbuf = NULL, *raw = NULL;
    float *data = NULL;
    fkv_npy_info info;
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = fkv_error(FKV_ERR_IO, "%s: not a regular file", path);
        goto done;
    }
    uint64_t file_size = (uint64_t)sb.st_size;
    /* the fixed prefix says how long the header is; read exactly that much */
    unsigned char pre[12];
    size_t npre = fread(pre, 1, sizeof pre, f);
    if (npre < 10 || memcmp(pre, npy_magic, sizeof npy_magic) != 0) {
        st = BAD("%s: not a .npy file (%s)", path, npre < 10 ? "too short" : "bad magic");
        goto done;
    }
    uint64_t hlen = pre[6] == 1 ? ((uint64_t)pre[8] | (uint64_t)pre[9] << 8)
                                : npre < 12 ? 0
                                            : ((uint64_t)pre[8] | (uint64_t)pre[9] << 8 |
                                               (uint64_t)pre[10] << 16 | (uint64_t)pre[11] << 24);
    uint64_t want = (pre[6] == 1 ? 10 : 12) + (hlen > FKV_NPY_MAX_HEADER ? 0 : hlen);
    if (want > file_size)
        want = file_size;
    hbuf = malloc((size_t)want + 1);
    if (hbuf == NULL) {
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s: header buffer", path);
        goto done;
    }
    if (fseek(f, 0, SEEK_SET) != 0 || fread(hbuf, 1, (size_t)want, f) != (size_t)want) {
        st = fkv_error(FKV_ERR_IO, "%s: read failed", path);
        goto done;
    }
    st = fkv_npy_parse_header(hbuf, (size_t)want, path, &info);
    if (st != FKV_OK)
        goto done;
    if (expect_ndim > 0) {
        int same = info.ndim == expect_ndim;
        for (uint32_t i = 0; same && i < expect_ndim; i++)
            same = info.shape[i] == expect_shape[i];
        if (!same) {
            st = shape_mismatch(path, &info, expect_ndim, expect_shape);
            goto done;
        }
    }
    uint64_t have = file_size - info.data_offset;
    if (have != info.data_bytes) {
        st = have < info.data_bytes
                 ? BAD("%s: truncated .npy data (%llu bytes, the shape needs %llu)", path,
                       (unsigned long long)have, (unsigned long long)info.data_bytes)
                 : BAD("%s: .npy file has %llu bytes after the data the shape describes", path,
                       (unsigned long long)(have - info.data_bytes));
        goto done;
    }
    if (info.count > SIZE_MAX / sizeof(float)) {
        st = BAD("%s: array too large for this machine", path);
        goto done;
    }
    data = malloc(info.count ? (size_t)info.count * sizeof(float) : 1);
    if (data == NULL) {
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s: %llu elements", path,
                       (unsigned long long)info.count);
        goto done;
    }
    /* convert in chunks so the raw copy never doubles the memory held */
    size_t es = fkv_npy_dtype_size(info.dtype), chunk = (size_t)1 << 20;
    raw = malloc(chunk * es);
    if (raw == NULL) {
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "%s: read buffer", path);
        goto done;
    }
    if (fseek(f, (long)info.data_offset, SEEK_SET) != 0) {
        st = fkv_error(FKV_ERR_IO, "%s: seek failed", path);
        goto done;
    }
    for (uint64_t i = 0; i < info.count; i += chunk) {
        size_t n = info.count - i < chunk ? (size_t)(info.count - i) : chunk;
        if (fread(raw, es, n, f) != n) {
            st = fkv_error(FKV_ERR_IO, "%s: read failed (file changed while reading?)", path);
            goto done;
        }
        st = convert(info.dtype, raw, n, data + i, path, i);
        if (st != FKV_OK)
            goto done;
    }
    if (info_out)
        *info_out = info;
    *out = data;
    data = NULL;
done:
    free(raw);
    free(hbuf);
    free(data);
    fclose(f);
    return st;
}

fkv_status fkv_npy_write_f32(const char *path, fkv_npy_dtype dtype, uint32_t ndim,
                             const uint64_t *shape, const float *data) {
    if (path == NULL || shape == NULL || data == NULL || ndim == 0 || ndim > FKV_NPY_MAX_DIMS)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_npy_write_f32: bad argument");
    char dict[256];
    size_t n = (size_t)snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                                fkv_npy_dtype_descr(dtype));
    uint64_t count = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        /* numpy style: (3,) for one dimension, (3, 4) for more */
        n += (size_t)snprintf(dict + n, sizeof dict - n, "%s%llu%s", i ? ", " : "",
                              (unsigned long long)shape[i], ndim == 1 ? "," : "");
        count *= shape[i];
    }
    n += (size_t)snprintf(dict + n, sizeof dict - n, "), }");
    if (n >= sizeof dict)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_npy_write_f32: shape too long");
    /* pad with spaces so the data starts on a 64-byte boundary, ending with '\n' */
    size_t total = 10 + n + 1;
    size_t padded = (total + 63) / 64 * 64;
    unsigned char head[320];
    memcpy(head, npy_magic, 6);
    head[6] = 1;
    head[7] = 0;
    size_t hlen = padded - 10;
    head[8] = (unsigned char)(hlen & 0xff);
    head[9] = (unsigned char)(hlen >> 8);
    memcpy(head + 10, dict, n);
    memset(head + 10 + n, ' ', padded - 10 - n - 1);
    head[padded - 1] = '\n';
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return fkv_error(FKV_ERR_IO, "%s: %s", path, strerror(errno));
    int ok = fwrite(head, 1, padded, f) == padded;
    for (uint64_t i = 0; ok && i < count; i++) {
        unsigned char e[4];
        size_t es = 2;
        if (dtype == FKV_NPY_F32) {
            uint32_t u = fkv_f32_bits(data[i]);
            e[0] = (unsigned char)u, e[1] = (unsigned char)(u >> 8);
            e[2] = (unsigned char)(u >> 16), e[3] = (unsigned char)(u >> 24);
            es = 4;
        } else {
            uint16_t h = dtype == FKV_NPY_F16 ? fkv_f32_to_f16(data[i]) : fkv_f32_to_bf16(data[i]);
            e[0] = (unsigned char)h, e[1] = (unsigned char)(h >> 8);
        }
        ok = fwrite(e, 1, es, f) == es;
    }
    if (fclose(f) != 0 || !ok)
        return fkv_error(FKV_ERR_IO, "%s: write failed", path);
    return FKV_OK;
}
