/* Names and sizes of the KV storage types (public API, declared in freekv.h). They live in
 * common/ because every layer needs them: core/ for its byte sizes, each backend for its
 * kernels, the tools for their reports; none of those may reach into another's folder. */
#include "freekv.h"

const char *fkv_dtype_name(fkv_dtype dtype) {
    switch (dtype) {
    case FKV_F32:
        return "f32";
    case FKV_F16:
        return "f16";
    case FKV_BF16:
        return "bf16";
    default:
        return "unknown";
    }
}

size_t fkv_dtype_size(fkv_dtype dtype) {
    switch (dtype) {
    case FKV_F32:
        return sizeof(float);
    case FKV_F16:
    case FKV_BF16:
        return sizeof(uint16_t);
    default:
        return 0;
    }
}
