/* freekv: the command-line front end. `freekv bench` and `freekv eval`. */
#include <stdio.h>
#include <string.h>

int fkv_bench_main(int argc, char **argv);
int fkv_eval_main(int argc, char **argv);

static void usage(FILE *f) {
    fprintf(f, "usage: freekv <command> [options]\n\n"
               "commands:\n"
               "  bench   model-shaped decode: latency and throughput of each policy\n"
               "  eval    accuracy of each policy against dense attention\n\n"
               "`freekv <command> --help` lists a command's options.\n"
               "Device: FREEKV_BACKEND=auto|cpu|opencl|vulkan|hip, FREEKV_DEVICE=<index|name>.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "bench") == 0)
        return fkv_bench_main(argc - 1, argv + 1);
    if (strcmp(argv[1], "eval") == 0)
        return fkv_eval_main(argc - 1, argv + 1);
    fprintf(stderr, "freekv: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
