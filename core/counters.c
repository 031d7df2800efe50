/* The public command counters (freekv.h): the device's totals, read through the dispatch
 * layer; a context reports its device's. */
#include "../backends/dispatch.h"
#include "../common/error.h"
#include "state.h"

fkv_status fkv_device_get_counters(const fkv_device *dev, fkv_counters *out) {
    if (dev == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_device_get_counters: NULL argument");
    /* reading the counters changes nothing: the dispatch layer only takes a mutable handle */
    return fkv_op_counters((fkv_device *)dev, out);
}

fkv_status fkv_context_get_counters(const fkv_context *ctx, fkv_counters *out) {
    if (ctx == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_context_get_counters: NULL argument");
    return fkv_device_get_counters(ctx->dev, out);
}
