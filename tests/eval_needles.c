/* needles.json: the strict reader (valid and malformed files), the writer, trace directories
 * that carry needles, and `freekv eval --trace DIR` scoring them. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "needles.h"
#include "tool_run.h"
#include "trace.h"

int fkv_eval_main(int argc, char **argv);

/* 2 layers, 8/2 heads (group 4), prompt 100, 5 decode steps */
static const fkv_trace_header geom = {.version = 1, .layers = 2, .q_heads = 8, .kv_heads = 2,
                                      .head_dim = 32, .prompt_tokens = 100, .decode_steps = 5};

static fkv_status parse(const char *text, fkv_needle **n, size_t *count) {
    return fkv_needles_parse(text, strlen(text), "needles.json", &geom, n, count);
}

Test(needles, reads_valid_lists) {
    fkv_needle *n = (fkv_needle *)1;
    size_t count = 99;
    cr_assert_eq(parse("[]", &n, &count), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(count, 0);
    cr_expect_null(n);
    cr_assert_eq(parse(" [ {\"layer\": 1, \"step\": 4, \"q_head\": 7, \"token\": 104},\n"
                       "   {\"token\": 0, \"q_head\": 0, \"step\": 0, \"layer\": 0,"
                       " \"text\": \"the passkey \\u00e9\", \"extra\": [1, {\"a\": null}]} ]\n",
                       &n, &count),
                 FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(count, 2);
    /* the last token that exists at step 4 is the prompt's 100 plus steps 0..4: 104 */
    cr_expect_eq(n[0].layer, 1);
    cr_expect_eq(n[0].step, 4);
    cr_expect_eq(n[0].q_head, 7);
    cr_expect_eq(n[0].kv_head, 1, "q_head 7 / group 4");
    cr_expect_eq(n[0].token, 104);
    cr_expect_eq(n[1].layer, 0);
    cr_expect_eq(n[1].kv_head, 0);
    free(n);
}

Test(needles, rejects_malformed_files) {
    struct {
        const char *text, *msg;
    } cases[] = {
        {"", "needles must be a JSON array"},
        {"{\"layer\": 0}", "needles must be a JSON array"},
        {"[1]", "needle 0: expected an object"},
        {"[{\"layer\": 0, \"step\": 0, \"q_head\": 0}]", "needle 0: missing \"token\""},
        {"[{}]", "needle 0: missing \"layer\""},
        {"[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 1, \"step\": 1}]",
         "needle 0: duplicate key \"step\""},
        {"[{\"layer\": 2, \"step\": 0, \"q_head\": 0, \"token\": 1}]",
         "needle 0: \"layer\" 2 is out of range: the trace has 2 layers"},
        {"[{\"layer\": 0, \"step\": 5, \"q_head\": 0, \"token\": 1}]",
         "\"step\" 5 is out of range: the trace has 5 decode steps"},
        {"[{\"layer\": 0, \"step\": 0, \"q_head\": 8, \"token\": 1}]",
         "\"q_head\" 8 is out of range: the trace has 8 query heads"},
        {"[{\"layer\": 0, \"step\": 2, \"q_head\": 0, \"token\": 103}]",
         "\"token\" 103 does not exist at decode step 2 (tokens 0..102"},
        {"[{\"layer\": -1, \"step\": 0, \"q_head\": 0, \"token\": 1}]",
         "\"layer\" must be a non-negative integer"},
        {"[{\"layer\": 1.0, \"step\": 0, \"q_head\": 0, \"token\": 1}]",
         "\"layer\" must be a non-negative integer"},
        {"[{\"layer\": \"1\", \"step\": 0, \"q_head\": 0, \"token\": 1}]",
         "\"layer\" must be a non-negative integer"},
        {"[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 1e2}]",
         "\"token\" must be a non-negative integer"},
        {"[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 99999999999999999999999}]",
         "\"token\" 18446744073709551615 does not exist"},
        {"[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 1},]", "expected an object"},
        {"[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 1}", "expected ',' or ']'"},
        {"[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 1}] []", "text after the JSON"},
        {"[{\"layer\": 0 \"step\": 0}]", "expected ',' or '}'"},
        {"[{'layer': 0}]", "expected a string key"},
        {"[{\"layer\": NaN}]", "malformed number"},
        {"\xef\xbb\xbf[]", "byte order mark"},
        {"[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 1, \"x\": \"\xc0\xaf\"}]",
         "invalid UTF-8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        fkv_needle *n = (fkv_needle *)1;
        size_t count = 7;
        fkv_status st = parse(cases[i].text, &n, &count);
        cr_expect_eq(st, FKV_ERR_BAD_FILE, "case %zu: status %d", i, st);
        cr_expect(strstr(fkv_last_error(), cases[i].msg) != NULL, "case %zu: '%s' lacks '%s'", i,
                  fkv_last_error(), cases[i].msg);
        cr_expect(strstr(fkv_last_error(), "needles.json") != NULL, "%s", fkv_last_error());
        cr_expect_null(n, "case %zu: a failed parse leaves no list", i);
        cr_expect_eq(count, 0);
    }
    /* messages point at the value, and count needles from 0 */
    fkv_needle *n;
    size_t count;
    cr_expect_eq(parse("[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 1},\n"
                       " {\"layer\": 0, \"step\": 9, \"q_head\": 0, \"token\": 1}]",
                       &n, &count),
                 FKV_ERR_BAD_FILE);
    cr_expect(strstr(fkv_last_error(), "line 2, column 23: needle 1: \"step\" 9") != NULL, "%s",
              fkv_last_error());
    /* a needle listed twice (keys in any order) would be scored twice */
    cr_expect_eq(parse("[{\"layer\": 1, \"step\": 2, \"q_head\": 3, \"token\": 4},"
                       " {\"layer\": 0, \"step\": 2, \"q_head\": 3, \"token\": 4},"
                       " {\"token\": 4, \"q_head\": 3, \"step\": 2, \"layer\": 1}]",
                       &n, &count),
                 FKV_ERR_BAD_FILE);
    cr_expect(strstr(fkv_last_error(), "needle 2 repeats needle 0 (layer 1, step 2, q_head 3, "
                                       "token 4)") != NULL, "%s", fkv_last_error());
    /* nesting inside an ignored key is limited like the header's */
    char deep[512];
    snprintf(deep, sizeof deep, "[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 1, "
                                "\"x\": %.*s1%.*s}]", 33,
             "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", 33,
             "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]");
    cr_expect_eq(parse(deep, &n, &count), FKV_ERR_BAD_FILE);
    cr_expect(strstr(fkv_last_error(), "nesting deeper than 32") != NULL, "%s", fkv_last_error());
    /* an embedded NUL is not JSON */
    const char nul[] = "[{\"layer\": 0, \"step\": 0, \"q_head\": 0, \"token\": 1}\0]";
    cr_expect_eq(fkv_needles_parse(nul, sizeof nul - 1, "n", &geom, &n, &count),
                 FKV_ERR_BAD_FILE);
    cr_expect_eq(fkv_needles_parse(NULL, 0, "n", &geom, &n, &count), FKV_ERR_INVALID_ARGUMENT);
}

Test(needles, write_load_and_missing_file) {
    char *dir = tr_temp_dir(), path[256];
    snprintf(path, sizeof path, "%s/needles.json", dir);
    fkv_needle *n = (fkv_needle *)1;
    size_t count = 3;
    int missing = 0;
    cr_assert_eq(fkv_needles_load(path, &geom, &n, &count, &missing), FKV_OK);
    cr_expect(missing && count == 0 && n == NULL, "no file: no needles");
    const fkv_needle w[] = {{.layer = 1, .kv_head = 1, .q_head = 5, .step = 3, .token = 42},
                            {.layer = 0, .kv_head = 0, .q_head = 0, .step = 0, .token = 100}};
    cr_assert_eq(fkv_needles_write(path, w, 2), FKV_OK, "%s", fkv_last_error());
    cr_assert_eq(fkv_needles_load(path, &geom, &n, &count, &missing), FKV_OK, "%s",
                 fkv_last_error());
    cr_expect_eq(missing, 0);
    cr_assert_eq(count, 2);
    cr_expect_eq(memcmp(n, w, sizeof w), 0, "round trip");
    free(n);
    cr_assert_eq(fkv_needles_write(path, NULL, 0), FKV_OK);
    cr_expect_str_eq(tr_slurp(path), "[]\n");
    /* a directory, or a file too large, is an error, not "no needles" */
    cr_expect_eq(fkv_needles_load(dir, &geom, &n, &count, &missing), FKV_ERR_IO);
    cr_expect_eq(missing, 0);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    cr_assert_eq(fseek(f, FKV_NEEDLES_MAX_BYTES, SEEK_SET), 0);
    fputc(' ', f);
    fclose(f);
    cr_expect_eq(fkv_needles_load(path, &geom, &n, &count, &missing), FKV_ERR_BAD_FILE);
    cr_expect(strstr(fkv_last_error(), "larger than") != NULL, "%s", fkv_last_error());
    tr_remove_tree(dir);
}

/* ---- trace directories ------------------------------------------------------------------- */

static fkv_trace *tiny_trace(void) {
    fkv_synth_params p;
    fkv_synth_defaults(&p);
    p.layers = 2;
    p.q_heads = 4;
    p.kv_heads = 2;
    p.head_dim = 32;
    p.prompt_tokens = 256;
    p.decode_steps = 8;
    p.heavy_span = 8;
    p.needles = 3;
    fkv_trace *t;
    cr_assert_eq(fkv_trace_synthetic(&p, &t), FKV_OK, "%s", fkv_last_error());
    return t;
}

Test(needles, trace_directories_carry_them) {
    fkv_trace *t = tiny_trace(), *back;
    char dir[64];
    snprintf(dir, sizeof dir, "%s", tr_temp_dir());
    cr_assert_eq(fkv_trace_save_dir(t, dir, FKV_F32), FKV_OK, "%s", fkv_last_error());
    size_t n, nb;
    const fkv_needle *a = fkv_trace_needles(t, &n);
    cr_assert_eq(n, 6);
    cr_assert_eq(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), FKV_OK, "%s", fkv_last_error());
    const fkv_needle *b = fkv_trace_needles(back, &nb);
    cr_assert_eq(nb, n);
    cr_expect_eq(memcmp(a, b, n * sizeof *a), 0, "the needles come back as generated");
    cr_expect_eq(fkv_trace_get_info(back)->needles, 6);
    fkv_trace_free(back);
    /* --layers and --steps leave out the needles beyond them, and the count says so */
    uint32_t kept = 0;
    for (size_t i = 0; i < n; i++)
        kept += a[i].layer < 1 && a[i].step < 4;
    fkv_trace_info info;
    cr_assert_eq(fkv_trace_dir_info(dir, 1, 4, &info), FKV_OK, "%s", fkv_last_error());
    cr_expect_eq(info.needles, kept);
    cr_assert_eq(fkv_trace_load_dir(dir, 1, 4, FKV_F32, &back), FKV_OK);
    b = fkv_trace_needles(back, &nb);
    cr_expect_eq(nb, kept);
    for (size_t i = 0; i < nb; i++)
        cr_expect(b[i].layer < 1 && b[i].step < 4);
    fkv_trace_free(back);
    /* a malformed needles.json fails the header check and the load, naming the file */
    tr_write_text(dir, "needles.json",
                  "[{\"layer\": 0, \"step\": 8, \"q_head\": 0, \"token\": 1}]");
    cr_expect_eq(fkv_trace_dir_info(dir, 0, 0, &info), FKV_ERR_BAD_FILE);
    back = (fkv_trace *)1;
    cr_expect_eq(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), FKV_ERR_BAD_FILE);
    cr_expect_null(back);
    cr_expect(strstr(fkv_last_error(), "needles.json: line 1, column 23: needle 0: \"step\" 8") !=
              NULL, "%s", fkv_last_error());
    /* without needles.json a trace has none */
    char path[128];
    snprintf(path, sizeof path, "%s/needles.json", dir);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(fkv_trace_load_dir(dir, 0, 0, FKV_F32, &back), FKV_OK);
    fkv_trace_needles(back, &nb);
    cr_expect_eq(nb, 0);
    fkv_trace_free(back);
    fkv_trace_free(t);
    tr_remove_tree(dir);
}

/* ---- freekv eval --trace ------------------------------------------------------------------ */

static void capture(void) { tr_capture("eval_needles"); }

TestSuite(eval_needles, .init = capture, .fini = tr_cleanup);

#define SETTINGS "--page", "8", "--budget", "128", "--sink", "16", "--window", "32"

/* The needles column of a policy's table row ("4/4"), or "" when there is no row. */
static void needles_of(const char *out, const char *policy, char *buf, size_t size) {
    char key[32];
    snprintf(key, sizeof key, "\n%s ", policy);
    const char *row = strstr(out, key);
    buf[0] = '\0';
    if (row == NULL)
        return;
    char name[32], l2a[32], l2b[32], ma[32], mb[32];
    cr_assert_eq(sscanf(row, "%31s %31s %31s %31s %31s %63s", name, l2a, l2b, ma, mb, buf), 6);
    (void)size;
}

Test(eval_needles, saved_synthetic_trace_scores_its_needles) {
    char dir[64];
    snprintf(dir, sizeof dir, "%s", tr_temp_dir());
    cr_assert_eq(tr_run(fkv_eval_main, "eval", "--layers", "2", "--q-heads", "4", "--kv-heads",
                        "2", "--head-dim", "32", "--context", "512", "--steps", "6", "--needles",
                        "2", SETTINGS, "--policies", "quest", "--save-trace", dir, NULL),
                 0, "%s", tr_stderr());
    cr_assert_eq(tr_run(fkv_eval_main, "eval", "--trace", dir, SETTINGS, NULL), 0, "%s",
                 tr_stderr());
    const char *out = tr_stdout();
    cr_expect(strstr(out, "6 steps, 4 needles") != NULL, "%s", out);
    char quest[64], freekv[64], spec[64];
    needles_of(out, "quest", quest, sizeof quest);
    needles_of(out, "freekv", freekv, sizeof freekv);
    needles_of(out, "speculative", spec, sizeof spec);
    /* exact selection and freekv find every planted needle; the column counts all four */
    cr_expect_str_eq(quest, "4/4", "%s", out);
    cr_expect_str_eq(freekv, "4/4", "%s", out);
    cr_expect(strlen(spec) == 3 && strcmp(spec + 1, "/4") == 0, "speculative: %s", spec);
    /* without needles.json the column says there are none, not 0/0 */
    char path[128];
    snprintf(path, sizeof path, "%s/needles.json", dir);
    cr_assert_eq(unlink(path), 0);
    cr_assert_eq(tr_run(fkv_eval_main, "eval", "--trace", dir, SETTINGS, NULL), 0, "%s",
                 tr_stderr());
    out = tr_stdout();
    cr_expect(strstr(out, "no needles") != NULL, "%s", out);
    cr_expect(strstr(out, "0/0") == NULL, "%s", out);
    needles_of(out, "quest", quest, sizeof quest);
    cr_expect_str_eq(quest, "-", "%s", out);
    /* a malformed needles.json stops the run before any work, naming the file */
    tr_write_text(dir, "needles.json",
                  "[{\"layer\": 0, \"step\": 0, \"q_head\": 4, \"token\": 1}]");
    cr_expect_eq(tr_run(fkv_eval_main, "eval", "--trace", dir, SETTINGS, NULL), 1);
    cr_expect(strstr(tr_stderr(), "needles.json: line 1, column 36: needle 0: \"q_head\" 4 is out "
                                  "of range: the trace has 4 query heads") != NULL,
              "%s", tr_stderr());
    cr_expect_str_eq(tr_stdout(), "");
    tr_remove_tree(dir);
}
