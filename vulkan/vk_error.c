/* The Vulkan backend's errors: VkResult codes as library statuses. Layer 1 of the backend:
 * errors -> memory -> submission -> kernels -> device. */
#include "../common/error.h"
#include "vk_internal.h"

const char *fkv_vk_result_name(VkResult r) {
    switch (r) {
#define E(x) \
    case x:  \
        return #x;
        E(VK_SUCCESS)
        E(VK_NOT_READY)
        E(VK_TIMEOUT)
        E(VK_INCOMPLETE)
        E(VK_ERROR_OUT_OF_HOST_MEMORY)
        E(VK_ERROR_OUT_OF_DEVICE_MEMORY)
        E(VK_ERROR_INITIALIZATION_FAILED)
        E(VK_ERROR_DEVICE_LOST)
        E(VK_ERROR_MEMORY_MAP_FAILED)
        E(VK_ERROR_LAYER_NOT_PRESENT)
        E(VK_ERROR_EXTENSION_NOT_PRESENT)
        E(VK_ERROR_FEATURE_NOT_PRESENT)
        E(VK_ERROR_INCOMPATIBLE_DRIVER)
        E(VK_ERROR_TOO_MANY_OBJECTS)
        E(VK_ERROR_FORMAT_NOT_SUPPORTED)
        E(VK_ERROR_FRAGMENTED_POOL)
        E(VK_ERROR_UNKNOWN)
        E(VK_ERROR_OUT_OF_POOL_MEMORY)
        E(VK_ERROR_INVALID_EXTERNAL_HANDLE)
        E(VK_ERROR_FRAGMENTATION)
        E(VK_PIPELINE_COMPILE_REQUIRED)
#undef E
    default:
        return "unknown VkResult";
    }
}

fkv_status fkv_vk_fail(VkResult r, const char *what) {
    fkv_status st;
    switch (r) {
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:
    case VK_ERROR_FRAGMENTATION:
        st = FKV_ERR_OUT_OF_DEVICE_MEMORY;
        break;
    case VK_ERROR_OUT_OF_HOST_MEMORY:
        st = FKV_ERR_OUT_OF_HOST_MEMORY;
        break;
    case VK_ERROR_FEATURE_NOT_PRESENT:
    case VK_ERROR_EXTENSION_NOT_PRESENT:
    case VK_ERROR_INCOMPATIBLE_DRIVER:
        st = FKV_ERR_UNSUPPORTED;
        break;
    default:
        st = FKV_ERR_BACKEND;
        break;
    }
    return fkv_error(st, "Vulkan %s failed: %s (%d)", what, fkv_vk_result_name(r), (int)r);
}
