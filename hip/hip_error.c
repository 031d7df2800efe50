/* The HIP backend's errors: HIP runtime failures as library statuses, and the per-thread
 * device binding every later layer needs. Layer 1 of the backend: errors -> memory ->
 * submission -> kernels -> device. */
#include "../common/error.h"
#include "hip_internal.h"

fkv_status fkv_hip_fail(hipError_t err, hip_alloc_kind kind, const char *what) {
    fkv_status st;
    switch (err) {
    case hipErrorOutOfMemory:
        st = kind == HIP_HOST_ALLOC ? FKV_ERR_OUT_OF_HOST_MEMORY : FKV_ERR_OUT_OF_DEVICE_MEMORY;
        break;
    case hipErrorNoDevice:
    case hipErrorInvalidDevice:
    case hipErrorInsufficientDriver:
        st = FKV_ERR_NO_DEVICE;
        break;
    case hipErrorNoBinaryForGpu:
    case hipErrorInvalidDeviceFunction:
        st = FKV_ERR_UNSUPPORTED; /* the build has no code for this GPU */
        break;
    default:
        st = FKV_ERR_BACKEND;
        break;
    }
    /* A failed call also sets the thread's last error; clear it so that the next launch
     * check reports only its own. */
    (void)hipGetLastError();
    return fkv_error(st, FKV_HIP_RUNTIME " %s failed: %s (%s, %d)", what, hipGetErrorString(err),
                     hipGetErrorName(err), (int)err);
}

fkv_status fkv_hip_bind(fkv_bdev *d) {
    hipError_t e = hipSetDevice(d->index);
    return e == hipSuccess ? FKV_OK : fkv_hip_fail(e, HIP_NOT_ALLOC, "hipSetDevice");
}
