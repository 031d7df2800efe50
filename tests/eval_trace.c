/* The trace readers (.npy, header JSON), the synthetic generator and trace directories. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dtype.h"
#include "header.h"
#include "npy.h"
#include "tool_run.h"
#include "trace.h"

/* ---- helpers ------------------------------------------------------------------------------ */

/* Builds a .npy image in buf: magic, version, header length, dict (padded to 64 with '\n'),
 * then `data_len` bytes of data. Returns the total length. */
static size_t make_npy(unsigned char *buf, int major, const char *dict, const void *data,
                       size_t data_len) {
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64, hlen = total - pre;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    buf[8] = (unsigned char)hlen;
    buf[9] = (unsigned char)(hlen >> 8);
    if (major != 1)
        buf[10] = (unsigned char)(hlen >> 16), buf[11] = (unsigned char)(hlen >> 24);
    memcpy(buf + pre, dict, dl);
    memset(buf + pre + dl, ' ', hlen - dl - 1);
    buf[total - 1] = '\n';
    if (data_len)
        memcpy(buf + total, data, data_len);
    return total + data_len;
}

static unsigned char img[1 << 16];

static fkv_status parse_dict(const char *dict, size_t data_len) {
    static const unsigned char zeros[4096];
    fkv_npy_info info;
    size_t n = make_npy(img, 1, dict, zeros, data_len);
    return fkv_npy_parse(img, n, "t.npy", &info);
}

static void expect_bad(fkv_status st, const char *fragment) {
    cr_expect_eq(st, FKV_ERR_BAD_FILE, "status %d for '%s'", st, fragment);
    cr_expect(strstr(fkv_last_error(), fragment) != NULL, "message '%s' lacks '%s'",
              fkv_last_error(), fragment);
}

/* ---- .npy ---------------------------------------------------------------------------------- */

Test(npy, reads_f32_v1) {
    float vals[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    unsigned char le[24];
    for (int i = 0; i < 6; i++) {
        uint32_t u = fkv_f32_bits(vals[i]);
        for (int b = 0; b < 4; b++)
            le[4 * i + b] = (unsigned char)(u >> (8 * b));
    }
    size_t n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
                        le, sizeof le);
    fkv_npy_info info;
    cr_assert_eq(fkv_npy_parse(img, n, "t", &info), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(info.ndim, 2);
    cr_expect_eq(info.shape[0], 2);
    cr_expect_eq(info.shape[1], 3);
    cr_expect_eq(info.count, 6);
    cr_expect_eq(info.dtype, FKV_NPY_F32);
    float out[6];
    cr_assert_eq(fkv_npy_to_f32(info.dtype, img + info.data_offset, 6, out, "t"), FKV_OK);
    for (int i = 0; i < 6; i++)
        cr_expect_eq(out[i], vals[i]);
}

Test(npy, reads_f16_and_bf16_in_v2_and_v3) {
    uint16_t h[3] = {fkv_f32_to_f16(1.5f), fkv_f32_to_f16(-0.25f), fkv_f32_to_f16(100.0f)};
    uint16_t b[3] = {fkv_f32_to_bf16(1.5f), fkv_f32_to_bf16(-0.25f), fkv_f32_to_bf16(100.0f)};
    unsigned char le[6];
    const float want[3] = {1.5f, -0.25f, 100.0f};
    for (int major = 2; major <= 3; major++) {
        for (int which = 0; which < 2; which++) {
            const uint16_t *src = which ? b : h;
            for (int i = 0; i < 3; i++)
                le[2 * i] = (unsigned char)src[i], le[2 * i + 1] = (unsigned char)(src[i] >> 8);
            size_t n = make_npy(img, major, which ? "{'descr':'<u2','fortran_order':False,'shape':(3,)}"
                                                  : "{\"descr\": \"<f2\", \"shape\": (3,), \"fortran_order\": False}",
                                le, sizeof le);
            fkv_npy_info info;
            cr_assert_eq(fkv_npy_parse(img, n, "t", &info), FKV_OK, "%s", fkv_last_error());
            cr_expect_eq(info.version, (uint32_t)major);
            cr_expect_eq(info.dtype, which ? FKV_NPY_BF16 : FKV_NPY_F16);
            float out[3];
            cr_assert_eq(fkv_npy_to_f32(info.dtype, img + info.data_offset, 3, out, "t"), FKV_OK);
            for (int i = 0; i < 3; i++)
                cr_expect_eq(out[i], want[i]);
        }
    }
}

Test(npy, rejects_bad_magic_and_versions) {
    fkv_npy_info info;
    expect_bad(fkv_npy_parse("\x93NUMPZ\x01\x00\x10\x00", 10, "t", &info), "bad magic");
    expect_bad(fkv_npy_parse("\x93NUM", 4, "t", &info), "bad magic");
    expect_bad(fkv_npy_parse("", 0, "t", &info), "bad magic");
    size_t n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
                        "\0\0\0\0", 4);
    img[6] = 4;
    expect_bad(fkv_npy_parse(img, n, "t", &info), "version 4.0");
    img[6] = 1;
    img[7] = 1;
    expect_bad(fkv_npy_parse(img, n, "t", &info), "version 1.1");
}

Test(npy, rejects_bad_header_lengths) {
    fkv_npy_info info;
    size_t n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
                        "\0\0\0\0", 4);
    expect_bad(fkv_npy_parse(img, 40, "t", &info), "truncated .npy header");
    (void)n;
    make_npy(img, 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", NULL, 0);
    img[8] = img[9] = img[10] = img[11] = 0xff;
    expect_bad(fkv_npy_parse(img, 128, "t", &info), "absurd");
    memcpy(img, "\x93NUMPY\x02\x00", 8);
    expect_bad(fkv_npy_parse(img, 11, "t", &info), "truncated");
}

Test(npy, rejects_unsupported_dtypes_and_order) {
    expect_bad(parse_dict("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", 4),
               "big-endian");
    expect_bad(parse_dict("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", 8),
               "not supported");
    expect_bad(parse_dict("{'descr': '<i2', 'fortran_order': False, 'shape': (1,), }", 2),
               "not supported");
    expect_bad(parse_dict("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", 4),
               "Fortran order");
    expect_bad(parse_dict("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", 4),
               "True or False");
}

Test(npy, rejects_malformed_dicts) {
    expect_bad(parse_dict("{'descr': '<f4', 'shape': (1,), }", 4), "lacks 'fortran_order'");
    expect_bad(parse_dict("{'fortran_order': False, 'shape': (1,), }", 4), "lacks 'descr'");
    expect_bad(parse_dict("{'descr': '<f4', 'fortran_order': False}", 4), "lacks 'shape'");
    expect_bad(parse_dict("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                          "'shape': (1,), }", 4), "duplicate 'descr'");
    expect_bad(parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", 4),
               "unexpected key 'x'");
    expect_bad(parse_dict("['descr', '<f4']", 4), "does not start with '{'");
    expect_bad(parse_dict("{'descr': '<f4, 'fortran_order': False, 'shape': (1,)}", 4),
               "'<f4, ' is not supported");
    expect_bad(parse_dict("{'descr': '<f4' 'fortran_order': False, 'shape': (1,)}", 4),
               "expected ',' or '}'");
    expect_bad(parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)} x", 4),
               "after the dict");
    expect_bad(parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", 4),
               "expected");
    expect_bad(parse_dict("{'de\\scr': '<f4'}", 4), "unsupported character");
}

Test(npy, rejects_bad_shapes) {
    const char *f = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }";
    char d[256];
    struct {
        const char *shape, *msg;
    } cases[] = {
        {"(4)", "'(n,)'"},
        {"()", "0-dimensional"},
        {"(-1,)", "non-negative"},
        {"(01,)", "leading zero"},
        {"(1, 2", "non-negative"},
        {"[1, 2]", "must be a tuple"},
        {"(1,,)", "non-negative"},
        {"(1.5,)", "malformed shape"},
        {"(1099511627777,)", "too large"},
        {"(1099511627776, 1099511627776)", "more than 2^40 elements"},
        {"(18446744073709551616,)", "too large"},
        {"(1, 1, 1, 1, 1, 1, 1, 1, 1)", "more than 8 dimensions"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(d, sizeof d, f, cases[i].shape);
        expect_bad(parse_dict(d, 4), cases[i].msg);
    }
    /* a zero dimension is a valid empty array */
    cr_expect_eq(parse_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", 0),
                 FKV_OK, "%s", fkv_last_error());
}

Test(npy, rejects_truncated_and_extra_data) {
    const char *d = "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }";
    expect_bad(parse_dict(d, 11), "truncated .npy data (11 bytes, the shape needs 12)");
    expect_bad(parse_dict(d, 13), "1 bytes after the data");
    cr_expect_eq(parse_dict(d, 12), FKV_OK);
}

Test(npy, rejects_non_finite_values) {
    float out[2];
    unsigned char nan16[4] = {0x00, 0x3c, 0x00, 0x7e}; /* 1.0, NaN */
    expect_bad(fkv_npy_to_f32(FKV_NPY_F16, nan16, 2, out, "t"), "element 1 is NaN");
    unsigned char inf32[4] = {0x00, 0x00, 0x80, 0xff};
    expect_bad(fkv_npy_to_f32(FKV_NPY_F32, inf32, 1, out, "t"), "infinite");
}

Test(npy, rejects_nul_in_header) {
    fkv_npy_info info;
    size_t n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
                        "\0\0\0\0", 4);
    img[20] = '\0';
    expect_bad(fkv_npy_parse(img, n, "t", &info), "NUL");
}

Test(npy, file_round_trip_and_load_errors) {
    char *dir = tr_temp_dir(), path[256];
    float data[24];
    for (int i = 0; i < 24; i++)
        data[i] = (float)i * 0.37f - 3.0f;
    uint64_t shape[3] = {2, 3, 4};
    const fkv_npy_dtype dts[3] = {FKV_NPY_F32, FKV_NPY_F16, FKV_NPY_BF16};
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/a%d.npy", dir, k);
        cr_assert_eq(fkv_npy_write_f32(path, dts[k], 3, shape, data), FKV_OK);
        float *got = NULL;
        fkv_npy_info info;
        cr_assert_eq(fkv_npy_load_f32(path, 3, shape, &got, &info), FKV_OK, "%s", fkv_last_error());
        cr_expect_eq(info.dtype, dts[k]);
        cr_expect_eq(info.data_offset % 64, 0);
        for (int i = 0; i < 24; i++) {
            float want = dts[k] == FKV_NPY_F32   ? data[i]
                         : dts[k] == FKV_NPY_F16 ? fkv_f16_to_f32(fkv_f32_to_f16(data[i]))
                                                 : fkv_bf16_to_f32(fkv_f32_to_bf16(data[i]));
            cr_expect_eq(got[i], want);
        }
        free(got);
    }
    /* a wrong expected shape names both */
    float *got = (float *)1;
    uint64_t other[3] = {2, 4, 3};
    snprintf(path, sizeof path, "%s/a0.npy", dir);
    expect_bad(fkv_npy_load_f32(path, 3, other, &got, NULL), "shape (2, 3, 4), expected (2, 4, 3)");
    cr_expect_null(got);
    uint64_t two[2] = {6, 4};
    expect_bad(fkv_npy_load_f32(path, 2, two, &got, NULL), "expected (6, 4)");
    /* truncate the file on disk */
    cr_assert_eq(truncate(path, 128 + 50), 0); /* the header takes 128 bytes */
    expect_bad(fkv_npy_load_f32(path, 3, shape, &got, NULL), "truncated .npy data");
    cr_assert_eq(truncate(path, 30), 0);
    expect_bad(fkv_npy_load_f32(path, 3, shape, &got, NULL), "truncated .npy header");
    cr_assert_eq(truncate(path, 5), 0);
    expect_bad(fkv_npy_load_f32(path, 3, shape, &got, NULL), "too short");
    /* missing file, directory */
    snprintf(path, sizeof path, "%s/missing.npy", dir);
    cr_expect_eq(fkv_npy_load_f32(path, 0, NULL, &got, NULL), FKV_ERR_IO);
    cr_expect(strstr(fkv_last_error(), "missing.npy") != NULL);
    cr_expect_eq(fkv_npy_load_f32(dir, 0, NULL, &got, NULL), FKV_ERR_IO);
    /* a huge shape in a small file fails before anything is allocated */
    snprintf(path, sizeof path, "%s/huge.npy", dir);
    size_t n = make_npy(img, 1, "{'descr': '<f4', 'fortran_order': False, "
                                "'shape': (1048576, 1048576), }", "\0\0\0\0", 4);
    FILE *f = fopen(path, "wb");
    fwrite(img, 1, n, f);
    fclose(f);
    expect_bad(fkv_npy_load_f32(path, 0, NULL, &got, NULL), "truncated .npy data");
    tr_remove_tree(dir);
}

/* ---- header JSON ---------------------------------------------------------------------------- */

#define GOOD_HEADER                                                                         \
    "{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": 2, \"q_heads\": 8, "      \
    "\"kv_heads\": 2, \"head_dim\": 64, \"prompt_tokens\": 100, \"decode_steps\": 5"

static fkv_status parse_header(const char *text, fkv_trace_header *h) {
    return fkv_trace_header_parse(text, strlen(text), "header.json", h);
}

Test(header, accepts_valid_headers) {
    fkv_trace_header h;
    cr_assert_eq(parse_header(GOOD_HEADER "}", &h), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(h.layers, 2);
    cr_expect_eq(h.q_heads, 8);
    cr_expect_eq(h.kv_heads, 2);
    cr_expect_eq(h.head_dim, 64);
    cr_expect_eq(h.prompt_tokens, 100);
    cr_expect_eq(h.decode_steps, 5);
    cr_expect_str_eq(h.model, "");
    /* unknown keys with any JSON value, escapes, whitespace */
    const char *rich = " \n\t" GOOD_HEADER ", \"model\": \"Llama \\\"3\\\" \\u00e9\\ud83d\\ude00\","
                       " \"extra\": {\"a\": [1, -2.5e3, true, false, null, {\"b\": []}]},"
                       " \"notes\": \"caf\xc3\xa9\"}\r\n";
    cr_assert_eq(parse_header(rich, &h), FKV_OK, "%s", fkv_last_error());
    cr_expect_str_eq(h.model, "Llama \"3\" \xc3\xa9\xf0\x9f\x98\x80");
}

Test(header, rejects_missing_and_wrong_fields) {
    fkv_trace_header h;
    struct {
        const char *text, *msg;
    } cases[] = {
        {"{}", "missing \"format\""},
        {"{\"format\": \"freekv-trace\"}", "missing required key \"version\""},
        {GOOD_HEADER ", \"format\": \"x\"}", "duplicate key \"format\""},
        {"{\"format\": \"other\"}", "\"format\" must be \"freekv-trace\""},
        {"{\"format\": \"freekv-trace\", \"version\": 2}", "\"version\" must be an integer in 1..1"},
        {"{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": 4.0}", "\"layers\" must be"},
        {"{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": -4}", "\"layers\" must be"},
        {"{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": \"4\"}", "\"layers\" must be"},
        {"{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": 0}", "\"layers\" must be"},
        {"{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": 99999999999999999999999}",
         "\"layers\" must be"},
        {GOOD_HEADER ", \"layers\": 2}", "duplicate key \"layers\""},
        {GOOD_HEADER ", \"model\": 5}", "\"model\" must be a string"},
        {"{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": 2, \"q_heads\": 6, "
         "\"kv_heads\": 4, \"head_dim\": 64, \"prompt_tokens\": 100, \"decode_steps\": 5}",
         "not a multiple"},
        {"{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": 2, \"q_heads\": 8, "
         "\"kv_heads\": 2, \"head_dim\": 64, \"prompt_tokens\": 16777216, \"decode_steps\": 5}",
         "exceeds"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        expect_bad(parse_header(cases[i].text, &h), cases[i].msg);
}

Test(header, rejects_invalid_json) {
    fkv_trace_header h;
    struct {
        const char *text, *msg;
    } cases[] = {
        {"", "must be a JSON object"},
        {"[1]", "must be a JSON object"},
        {GOOD_HEADER ",}", "expected a string key"},
        {GOOD_HEADER "} {}", "text after the JSON object"},
        {GOOD_HEADER " // c\n}", "expected ',' or '}'"},
        {"{'format': 'freekv-trace'}", "expected a string key"},
        {GOOD_HEADER ", \"x\": NaN}", "malformed number"},
        {GOOD_HEADER ", \"x\": 01}", "leading zero"},
        {GOOD_HEADER ", \"x\": 1.}", "digits must follow"},
        {GOOD_HEADER ", \"x\": 1e}", "exponent"},
        {GOOD_HEADER ", \"x\": tru}", "not a JSON value"},
        {GOOD_HEADER ", \"x\": \"\\q\"}", "unknown escape"},
        {GOOD_HEADER ", \"x\": \"\\u12\"}", "bad \\u escape"},
        {GOOD_HEADER ", \"x\": \"\\ud800\"}", "high surrogate"},
        {GOOD_HEADER ", \"x\": \"\\udc00\"}", "lone low surrogate"},
        {GOOD_HEADER ", \"x\": \"a\nb\"}", "control character"},
        {GOOD_HEADER ", \"x\": \"\xc0\xaf\"}", "invalid UTF-8"},
        {GOOD_HEADER ", \"x\": \"\xed\xa0\x80\"}", "invalid UTF-8"},
        {GOOD_HEADER ", \"x\": \"\xe2\x82\"}", "invalid UTF-8"},
        {GOOD_HEADER ", \"x\": \"abc", "unterminated string"},
        {GOOD_HEADER ", \"x\": [1 2]}", "expected ',' or ']'"},
        {GOOD_HEADER ", \"x\": {\"a\" 1}}", "expected ':'"},
        {GOOD_HEADER ", \"x\": ", "unexpected end of input"},
        {"\xef\xbb\xbf{}", "byte order mark"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        expect_bad(parse_header(cases[i].text, &h), cases[i].msg);
    /* nesting: 32 levels are fine, 33 are not (and nothing recurses without bound) */
    char deep[256];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof deep, "%s, \"x\": ", GOOD_HEADER);
    char ok[512], bad[512];
    snprintf(ok, sizeof ok, "%.*s%.*s1%.*s}", (int)n, deep, 32,
             "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", 32, "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
    snprintf(bad, sizeof bad, "%.*s%.*s1%.*s}", (int)n, deep, 33,
             "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", 33, "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
    cr_expect_eq(parse_header(ok, &h), FKV_OK, "%s", fkv_last_error());
    expect_bad(parse_header(bad, &h), "nesting deeper than 32");
    /* an embedded NUL is not JSON */
    char nul[] = GOOD_HEADER "}";
    nul[3] = '\0';
    cr_expect_eq(fkv_trace_header_parse(nul, sizeof nul - 1, "h", &h), FKV_ERR_BAD_FILE);
    /* messages give the position */
    expect_bad(parse_header("{\n  \"format\": tru}", &h), "line 2, column 13");
}

Test(header, load_and_write) {
    char *dir = tr_temp_dir(), path[256];
    fkv_trace_header h = {1, 3, 4, 2, 32, 50, 7, "m\"odel"}, back;
    snprintf(path, sizeof path, "%s/header.json", dir);
    cr_assert_eq(fkv_trace_header_write(path, &h), FKV_OK);
    cr_assert_eq(fkv_trace_header_load(path, &back), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(memcmp(&h, &back, sizeof h), 0);
    snprintf(path, sizeof path, "%s/none.json", dir);
    cr_expect_eq(fkv_trace_header_load(path, &back), FKV_ERR_IO);
    cr_expect_eq(fkv_trace_header_load(dir, &back), FKV_ERR_IO);
    tr_remove_tree(dir);
}

/* ---- synthetic traces and directories ------------------------------------------------------- */

static void tiny_params(fkv_synth_params *p) {
    fkv_synth_defaults(p);
    p->layers = 2;
    p->q_heads = 4;
    p->kv_heads = 2;
    p->head_dim = 32;
    p->prompt_tokens = 256;
    p->decode_steps = 8;
    p->heavy_span = 8;
}

Test(synthetic, shapes_needles_and_determinism) {
    fkv_synth_params p;
    tiny_params(&p);
    fkv_trace *a, *b, *c;
    cr_assert_eq(fkv_trace_synthetic(&p, &a), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_trace_synthetic(&p, &b), FKV_OK);
    p.seed = 2;
    cr_assert_eq(fkv_trace_synthetic(&p, &c), FKV_OK);
    const fkv_trace_info *in = fkv_trace_get_info(a);
    cr_expect_eq(in->layers, 2);
    cr_expect_eq(in->prompt_tokens, 256);
    cr_expect_eq(in->decode_steps, 8);
    size_t kv = (size_t)(256 + 8) * 2 * 32, q = (size_t)9 * 4 * 32;
    for (uint32_t l = 0; l < 2; l++) {
        cr_expect_eq(memcmp(fkv_trace_keys(a, l), fkv_trace_keys(b, l), kv * 4), 0);
        cr_expect_eq(memcmp(fkv_trace_values(a, l), fkv_trace_values(b, l), kv * 4), 0);
        cr_expect_eq(memcmp(fkv_trace_queries(a, l), fkv_trace_queries(b, l), q * 4), 0);
        cr_expect_neq(memcmp(fkv_trace_keys(a, l), fkv_trace_keys(c, l), kv * 4), 0);
        for (size_t i = 0; i < kv; i++)
            cr_assert(isfinite(fkv_trace_keys(a, l)[i]));
    }
    cr_expect_null(fkv_trace_keys(a, 2));
    size_t n;
    const fkv_needle *nd = fkv_trace_needles(a, &n);
    cr_expect_eq(n, 2 * p.needles);
    for (size_t i = 0; i < n; i++) {
        cr_expect_lt(nd[i].step, 8);
        cr_expect_lt(nd[i].kv_head, 2);
        cr_expect_eq(nd[i].q_head / 2, nd[i].kv_head);
        cr_expect_geq(nd[i].token, 256 / 8);
        cr_expect_lt(nd[i].token, 256 - 256 / 8);
    }
    fkv_trace_free(a);
    fkv_trace_free(b);
    fkv_trace_free(c);
    fkv_trace_free(NULL);
}

/* The fraction of group cosines below tau, as freekv's check flags them. */
static double group_below(const double *g, size_t n, double tau) {
    size_t below = 0;
    for (size_t i = 0; i < n; i++)
        below += g[i] < tau;
    return (double)below / (double)n;
}

Test(synthetic, adjacent_query_cosine_is_about_0_9) {
    fkv_synth_params p;
    fkv_synth_defaults(&p);
    p.prompt_tokens = 512;
    p.needles = 0;
    fkv_trace *t;
    cr_assert_eq(fkv_trace_synthetic(&p, &t), FKV_OK, "%s", fkv_last_error());
    size_t n = (size_t)p.decode_steps * p.layers * p.kv_heads;
    double mean, *group = malloc(sizeof(double) * n);
    cr_assert_not_null(group);
    fkv_trace_query_cosine(t, &mean, group);
    cr_expect(mean > 0.84 && mean < 0.95, "mean adjacent cosine %.3f", mean);
    double below = group_below(group, n, 0.9);
    cr_expect(below > 0.05 && below < 0.95, "fraction of group means below 0.9: %.3f", below);
    /* the group mean, by hand for one (step, layer, KV head): step 3, layer 1, KV head 1 */
    const uint32_t G = p.q_heads / p.kv_heads, d = p.head_dim, t3 = 3, l1 = 1, kh = 1;
    double total = 0;
    for (uint32_t j = 0; j < G; j++) {
        const float *a = fkv_trace_queries(t, l1) + ((size_t)(t3 + 1) * p.q_heads + kh * G + j) * d;
        const float *b = a - (size_t)p.q_heads * d;
        double ab = 0, aa = 0, bb = 0;
        for (uint32_t c = 0; c < d; c++)
            ab += (double)a[c] * b[c], aa += (double)a[c] * a[c], bb += (double)b[c] * b[c];
        total += ab / sqrt(aa * bb);
    }
    double got = group[((size_t)t3 * p.layers + l1) * p.kv_heads + kh];
    cr_expect(fabs(got - total / G) < 1e-12, "group cosine %.15f, by hand %.15f", got, total / G);
    fkv_trace_free(t);
    /* drift 1 and no jumps: only the positional part moves */
    p.drift = 1.0f;
    p.jump_prob = 0.0f;
    cr_assert_eq(fkv_trace_synthetic(&p, &t), FKV_OK);
    fkv_trace_query_cosine(t, &mean, NULL);
    cr_expect(mean > 0.97, "mean adjacent cosine %.3f without drift", mean);
    fkv_trace_free(t);
    free(group);
}

Test(synthetic, validates_parameters) {
    fkv_synth_params p;
    tiny_params(&p);
    cr_expect_eq(fkv_synth_validate(&p), FKV_OK);
#define EXPECT_BAD_PARAM(field, value, msg)                                                  \
    do {                                                                                     \
        tiny_params(&p);                                                                     \
        p.field = value;                                                                     \
        fkv_trace *t_ = (fkv_trace *)1;                                                      \
        cr_expect_eq(fkv_trace_synthetic(&p, &t_), FKV_ERR_INVALID_ARGUMENT, #field);        \
        cr_expect_null(t_);                                                                  \
        cr_expect(strstr(fkv_last_error(), msg) != NULL, "%s", fkv_last_error());            \
    } while (0)
    EXPECT_BAD_PARAM(layers, 0, "--layers");
    EXPECT_BAD_PARAM(q_heads, 3, "--q-heads");
    EXPECT_BAD_PARAM(head_dim, 18, "--head-dim");
    EXPECT_BAD_PARAM(prompt_tokens, 8, "--context");
    EXPECT_BAD_PARAM(decode_steps, 0, "--steps");
    EXPECT_BAD_PARAM(drift, 1.5f, "--drift");
    EXPECT_BAD_PARAM(drift, NAN, "--drift");
    EXPECT_BAD_PARAM(jump_prob, -0.1f, "--jump-prob");
    EXPECT_BAD_PARAM(sink_tokens, 200, "--sink-tokens");
    EXPECT_BAD_PARAM(locality, 0.0f, "--locality");
    EXPECT_BAD_PARAM(topics, 0, "--topics");
    EXPECT_BAD_PARAM(heavy_span, 0, "--heavy-span");
    EXPECT_BAD_PARAM(key_noise, -1.0f, "--key-noise");
    EXPECT_BAD_PARAM(needles, 9, "--needles");
    EXPECT_BAD_PARAM(needle_logit, INFINITY, "--needle-logit");
    tiny_params(&p);
    p.layers = 64;
    p.prompt_tokens = 4000000;
    cr_expect_eq(fkv_synth_validate(&p), FKV_ERR_INVALID_ARGUMENT);
    cr_expect(strstr(fkv_last_error(), "limit 2^32") != NULL, "%s", fkv_last_error());
    cr_expect_eq(fkv_synth_validate(NULL), FKV_ERR_INVALID_ARGUMENT);
}

Test(trace_dir, round_trip_and_limits) {
    fkv_synth_params p;
    tiny_params(&p);
    fkv_trace *t, *back;
    cr_assert_eq(fkv_trace_synthetic(&p, &t), FKV_OK);
    char dir[64];
    snprintf(dir, sizeof dir, "%s", tr_temp_dir());
    cr_assert_eq(fkv_trace_save_dir(t, dir, FKV_F32), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), FKV_OK, "%s", fkv_last_error());
    const fkv_trace_info *in = fkv_trace_get_info(back);
    cr_expect_eq(in->layers, 2);
    cr_expect_eq(in->q_heads, 4);
    cr_expect_eq(in->decode_steps, 8);
    cr_expect(strstr(in->source, "synthetic") != NULL, "%s", in->source);
    size_t kv = (size_t)(256 + 8) * 2 * 32, q = (size_t)9 * 4 * 32;
    for (uint32_t l = 0; l < 2; l++) {
        cr_expect_eq(memcmp(fkv_trace_keys(t, l), fkv_trace_keys(back, l), kv * 4), 0);
        cr_expect_eq(memcmp(fkv_trace_values(t, l), fkv_trace_values(back, l), kv * 4), 0);
        cr_expect_eq(memcmp(fkv_trace_queries(t, l), fkv_trace_queries(back, l), q * 4), 0);
    }
    fkv_trace_free(back);
    cr_assert_eq(fkv_trace_load_dir(dir, 1, 3, FKV_F32, &back), FKV_OK);
    cr_expect_eq(fkv_trace_get_info(back)->layers, 1);
    cr_expect_eq(fkv_trace_get_info(back)->decode_steps, 3);
    cr_expect_null(fkv_trace_keys(back, 1));
    fkv_trace_free(back);
    /* bf16 storage: values come back rounded */
    char *dir2 = tr_temp_dir();
    cr_assert_eq(fkv_trace_save_dir(t, dir2, FKV_BF16), FKV_OK);
    cr_assert_eq(fkv_trace_load_dir(dir2, 0, 0, FKV_F32, &back), FKV_OK, "%s", fkv_last_error());
    float x = fkv_trace_keys(t, 1)[77];
    cr_expect_eq(fkv_trace_keys(back, 1)[77], fkv_bf16_to_f32(fkv_f32_to_bf16(x)));
    fkv_trace_free(back);
    fkv_trace_free(t);
    tr_remove_tree(dir);
    tr_remove_tree(dir2);
}

Test(trace_dir, rejects_inconsistent_directories) {
    fkv_synth_params p;
    tiny_params(&p);
    fkv_trace *t, *back = (fkv_trace *)1;
    cr_assert_eq(fkv_trace_synthetic(&p, &t), FKV_OK);
    char *dir = tr_temp_dir(), path[256];
    cr_assert_eq(fkv_trace_save_dir(t, dir, FKV_F16), FKV_OK);
    fkv_trace_free(t);
    /* these are about the arrays: the needles would not fit the headers below */
    snprintf(path, sizeof path, "%s/needles.json", dir);
    cr_assert_eq(unlink(path), 0);
    /* the header says 16 dims, the arrays hold 32 */
    tr_write_text(dir, "header.json", "{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": 2, "
                                   "\"q_heads\": 4, \"kv_heads\": 2, \"head_dim\": 16, "
                                   "\"prompt_tokens\": 256, \"decode_steps\": 8}");
    expect_bad(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), "k_0.npy: shape (264, 2, 32), expected (264, 2, 16)");
    cr_expect_null(back);
    /* more layers than files */
    tr_write_text(dir, "header.json", "{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": 3, "
                                   "\"q_heads\": 4, \"kv_heads\": 2, \"head_dim\": 32, "
                                   "\"prompt_tokens\": 256, \"decode_steps\": 8}");
    cr_expect_eq(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), FKV_ERR_IO);
    cr_expect(strstr(fkv_last_error(), "k_2.npy") != NULL, "%s", fkv_last_error());
    /* a queries file with the wrong number of rows */
    tr_write_text(dir, "header.json", "{\"format\": \"freekv-trace\", \"version\": 1, \"layers\": 2, "
                                   "\"q_heads\": 4, \"kv_heads\": 2, \"head_dim\": 32, "
                                   "\"prompt_tokens\": 257, \"decode_steps\": 7}");
    expect_bad(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), "q_0.npy: shape (9, 4, 32), expected (8, 4, 32)");
    /* a broken header */
    tr_write_text(dir, "header.json", "{\"format\": \"freekv-trace\",}");
    expect_bad(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), "header.json");
    snprintf(path, sizeof path, "%s/header.json", dir);
    cr_assert_eq(unlink(path), 0);
    cr_expect_eq(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), FKV_ERR_IO);
    cr_expect_eq(fkv_trace_load_dir("/nonexistent/dir", 0, 0, FKV_F32, &back), FKV_ERR_IO);
    tr_remove_tree(dir);
}

/* Keys and values must stay finite in the KV storage type: the reader names file and element. */
Test(trace_dir, refuses_values_the_storage_type_cannot_hold) {
    fkv_synth_params p;
    tiny_params(&p);
    fkv_trace *t, *back = NULL;
    cr_assert_eq(fkv_trace_synthetic(&p, &t), FKV_OK);
    char dir[64], path[128];
    snprintf(dir, sizeof dir, "%s", tr_temp_dir());
    cr_assert_eq(fkv_trace_save_dir(t, dir, FKV_F32), FKV_OK, "%s", fkv_last_error());
    fkv_trace_free(t);
    /* v_0: [264][2][32]; element 1000 is token 15, head 1, channel 8 */
    static float v[264 * 2 * 32];
    uint64_t shape[3] = {264, 2, 32};
    snprintf(path, sizeof path, "%s/v_0.npy", dir);
    v[1000] = 1e18f;
    cr_assert_eq(fkv_npy_write_f32(path, FKV_NPY_F32, 3, shape, v), FKV_OK);
    expect_bad(fkv_trace_load_dir(dir, 0, 0, FKV_F16, &back),
               "v_0.npy: element 1000 [15, 1, 8] = 1e+18 is not representable in f16");
    cr_expect_null(back);
    /* f16's largest value and everything bf16 and f32 hold are fine */
    v[1000] = 65504.0f;
    cr_assert_eq(fkv_npy_write_f32(path, FKV_NPY_F32, 3, shape, v), FKV_OK);
    cr_assert_eq(fkv_trace_load_dir(dir, 0, 0, FKV_F16, &back), FKV_OK, "%s", fkv_last_error());
    fkv_trace_free(back);
    v[1000] = 1e38f;
    cr_assert_eq(fkv_npy_write_f32(path, FKV_NPY_F32, 3, shape, v), FKV_OK);
    cr_assert_eq(fkv_trace_load_dir(dir, 0, 0, FKV_BF16, &back), FKV_OK, "%s", fkv_last_error());
    fkv_trace_free(back);
    /* the largest f32 rounds up past bf16's largest value */
    v[1000] = -3.4028235e38f;
    cr_assert_eq(fkv_npy_write_f32(path, FKV_NPY_F32, 3, shape, v), FKV_OK);
    expect_bad(fkv_trace_load_dir(dir, 0, 0, FKV_BF16, &back), "not representable in bf16");
    cr_assert_eq(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), FKV_OK, "%s", fkv_last_error());
    fkv_trace_free(back);
    tr_remove_tree(dir);
}
