/* freekv bench: argument errors exit 2 with a message; a tiny real run writes its files. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fkv_bench_main(int argc, char **argv);

static int bench(const char *a, const char *b, const char *c) {
    char *argv[5] = {"bench", (char *)a, (char *)b, (char *)c, NULL};
    int argc = 1 + (a != NULL) + (b != NULL) + (c != NULL);
    return fkv_bench_main(argc, argv);
}

Test(bench_args, bad_arguments_exit_2) {
    cr_assert_eq(bench("--bogus", "1", NULL), 2);
    cr_assert_eq(bench("--steps", NULL, NULL), 2, "missing value");
    cr_assert_eq(bench("--steps", "-3", NULL), 2);
    cr_assert_eq(bench("--steps", "0", NULL), 2);
    cr_assert_eq(bench("--context", "12,abc", NULL), 2);
    cr_assert_eq(bench("--context", "0", NULL), 2);
    cr_assert_eq(bench("--dtype", "f8", NULL), 2);
    cr_assert_eq(bench("--tau", "2", NULL), 2);
    cr_assert_eq(bench("--preset", "gpt-5", NULL), 2);
    cr_assert_eq(bench("--policies", "dense,fast", NULL), 2);
    cr_assert_eq(bench("--weights-mib", "-1", NULL), 2);
}

Test(bench_args, bad_device_is_an_error) {
    cr_assert_eq(bench("--backend", "nope", NULL), 1);
    setenv("FREEKV_DEVICE", "no-such-device", 1);
    cr_assert_eq(bench("--backend", "cpu", NULL), 1);
}

Test(bench_args, tiny_run_writes_csv_and_json) {
    char *argv[] = {"bench", "--backend", "cpu", "--layers", "2", "--context", "300,600",
                    "--steps", "3", "--warmup", "1", "--weights-mib", "1",
                    "--csv", "bench_args.csv", "--json", "bench_args.json", NULL};
    cr_assert_eq(fkv_bench_main(sizeof argv / sizeof *argv - 1, argv), 0);
    FILE *f = fopen("bench_args.csv", "r");
    cr_assert_not_null(f);
    char line[512];
    int rows = 0, freekv = 0;
    while (fgets(line, sizeof line, f)) {
        rows++;
        freekv += strncmp(line, "freekv,", 7) == 0;
    }
    fclose(f);
    cr_assert_eq(rows, 1 + 2 * 6, "header + 6 policies x 2 contexts, got %d lines", rows);
    cr_assert_eq(freekv, 2);
    f = fopen("bench_args.json", "r");
    cr_assert_not_null(f);
    fclose(f);
    remove("bench_args.csv");
    remove("bench_args.json");
}
