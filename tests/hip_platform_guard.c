/* Compiled (not run) against the stand-in HIP headers of tests/hip_headers, one ROCm release
 * each, with -Werror: hip/hip_platform.h must name the pointer attributes' memory-type field
 * as that release spells it (a missing field fails, a deprecated one warns). */
#include "hip/hip_platform.h"

int fkv_guard_is_device(const hipPointerAttribute_t *attr);
int fkv_guard_is_device(const hipPointerAttribute_t *attr) {
    return (int)FKV_HIP_PTR_MEMTYPE(*attr) == (int)hipMemoryTypeDevice;
}
