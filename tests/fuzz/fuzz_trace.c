/* libFuzzer target for the trace readers: the .npy parser (in memory and through the file
 * loader), the trace-header JSON parser and the needles.json parser. Any input must give FKV_OK or an error status,
 * never a crash, a sanitizer report, an out-of-bounds read or a leak. Built and run by
 * tests/fuzz/run.sh. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "header.h"
#include "needles.h"
#include "npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

static void remove_file(void) { unlink(path); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fkv_npy_info info;
    if (fkv_npy_parse(data, size, "fuzz", &info) == FKV_OK && info.count <= (1u << 20)) {
        float *out = malloc(info.count ? info.count * sizeof(float) : 1);
        if (out) {
            (void)fkv_npy_to_f32(info.dtype, data + info.data_offset, info.count, out, "fuzz");
            free(out);
        }
    }
    /* the file loader sizes its reads from the prefix on its own: fuzz it as well */
    if (path[0] == '\0') { /* memory-backed where possible: this runs for every input */
        snprintf(path, sizeof path, "%s/fkv_fuzz_%d.npy",
                 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", (int)getpid());
        atexit(remove_file);
    }
    FILE *f = fopen(path, "wb");
    if (f) {
        size_t wrote = fwrite(data, 1, size, f);
        if (fclose(f) == 0 && wrote == size) {
            float *arr = NULL;
            uint64_t shape[3] = {2, 2, 4};
            /* with and without an expected shape: both paths must reject cleanly */
            if (fkv_npy_load_f32(path, size & 1 ? 3 : 0, shape, &arr, NULL) == FKV_OK)
                free(arr);
        }
    }
    fkv_trace_header h;
    (void)fkv_trace_header_parse((const char *)data, size, "fuzz", &h);
    /* small limits, so that in-range and out-of-range needles are both easy to reach */
    static const fkv_trace_header geom = {.version = 1, .layers = 4, .q_heads = 8,
                                          .kv_heads = 2, .head_dim = 16, .prompt_tokens = 100,
                                          .decode_steps = 10};
    fkv_needle *needles = NULL;
    size_t count;
    if (fkv_needles_parse((const char *)data, size, "fuzz", &geom, &needles, &count) == FKV_OK)
        free(needles);
    return 0;
}
