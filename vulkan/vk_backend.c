/* The Vulkan backend: instance and devices, memory, timeline-ordered submissions, events,
 * copies and the ops table. Kernel launches live in vk_kernels.c.
 *
 * Every fkv_queue has its own timeline semaphore; each command is one submission that waits
 * for its wait list and the queue's previous value and signals the next one, so a queue is in
 * order whichever VkQueue it runs on (lavapipe has one). An event is (semaphore, value).
 * Copies from or to host_alloc memory use its VkBuffer directly; other host memory goes
 * through a staging buffer (writes copy at enqueue, which the interface allows: the source
 * must stay unmodified until completion; reads are copied out by whoever next waits). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../backends/launch.h"
#include "../backends/option.h"
#include "../common/env.h"
#include "../common/error.h"
#include "vk_internal.h"

#define MAX_DEVICES 16
#define DESCRIPTOR_SETS_PER_POOL 512

/* ---- errors ---- */

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

/* ---- instance and enumeration ---- */

/* Validation-layer warnings known to be benign, by message id, with the reason. Any other
 * warning counts like an error: a new warning type fails the run (CI's validation step). */
static const struct {
    const char *id, *reason;
} benign_warnings[] = {
    /* "Fine-grained locking is disabled, this will adversely affect performance of
     * multithreaded applications" (VK_LAYER_FINE_GRAINED_LOCKING=0): the layer's own speed,
     * nothing about freekv's use of the API */
    {"UNASSIGNED-khronos-Validation-fine-grained-locking-warning-message",
     "the layer's own locking mode"},
};

static const char *benign_reason(const char *id) {
    for (size_t i = 0; id && i < sizeof benign_warnings / sizeof *benign_warnings; i++)
        if (strcmp(id, benign_warnings[i].id) == 0)
            return benign_warnings[i].reason;
    return NULL;
}

/* Errors and warnings (except the benign ones above) count on the device and make finish
 * and event_wait fail. Of the information messages only the layer's status line is shown
 * (which checks are on, e.g. synchronization validation); the loader's are noise. */
static VKAPI_ATTR VkBool32 VKAPI_CALL debug_cb(VkDebugUtilsMessageSeverityFlagBitsEXT sev,
                                               VkDebugUtilsMessageTypeFlagsEXT type,
                                               const VkDebugUtilsMessengerCallbackDataEXT *data,
                                               void *user) {
    (void)type;
    const char *id = data ? data->pMessageIdName : NULL;
    const char *msg = data && data->pMessage ? data->pMessage : "?";
    if (sev & (VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT |
               VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT)) {
        int error = (sev & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) != 0;
        const char *benign = error ? NULL : benign_reason(id);
        fkv_bdev *d = user;
        if (d && benign == NULL)
            atomic_fetch_add(&d->validation_errors, 1u);
        fprintf(stderr, "freekv vulkan validation %s%s%s%s: %s\n",
                error ? "error" : "warning", benign ? " (benign: " : "", benign ? benign : "",
                benign ? ")" : "", msg);
    } else if (id && strcmp(id, "UNASSIGNED-khronos-validation-createinstance-status-message") == 0) {
        fprintf(stderr, "freekv vulkan validation: %s\n", msg);
    }
    return VK_FALSE;
}

static int has_layer(const char *name) {
    uint32_t n = 0;
    if (vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || n == 0)
        return 0;
    VkLayerProperties *p = calloc(n, sizeof *p);
    int found = 0;
    if (p && vkEnumerateInstanceLayerProperties(&n, p) == VK_SUCCESS)
        for (uint32_t i = 0; i < n; i++)
            found |= strcmp(p[i].layerName, name) == 0;
    free(p);
    return found;
}

/* validate: FREEKV_VULKAN_VALIDATION=1 enables the Khronos layer and a messenger that counts
 * errors and unlisted warnings on `d` (those make finish and event_wait fail). Which checks
 * the layer runs is the layer's own setting: CI adds synchronization validation with
 * VK_LAYER_ENABLES=VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT. */
static fkv_status create_instance(fkv_bdev *d, VkInstance *out) {
    VkApplicationInfo app = {VK_STRUCTURE_TYPE_APPLICATION_INFO, NULL, "freekv", 1, "freekv", 1,
                             VK_API_VERSION_1_2};
    const char *layers[1], *exts[1];
    uint32_t n_layers = 0, n_exts = 0;
    int validate = 0;
    if (d) {
        fkv_status st = fkv_env_bool("FREEKV_VULKAN_VALIDATION", 0, &validate);
        if (st != FKV_OK)
            return st;
    }
    if (validate) {
        if (!has_layer("VK_LAYER_KHRONOS_validation"))
            return fkv_error(FKV_ERR_BAD_ENVIRONMENT,
                             "FREEKV_VULKAN_VALIDATION is on but VK_LAYER_KHRONOS_validation is not "
                             "installed (vulkan-validationlayers)");
        layers[n_layers++] = "VK_LAYER_KHRONOS_validation";
        exts[n_exts++] = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
    }
    /* the same messenger, chained, also sees vkCreateInstance and vkDestroyInstance */
    VkDebugUtilsMessengerCreateInfoEXT mi = {
        VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT, NULL, 0,
        VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT |
            VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
            VK_DEBUG_UTILS_MESSAGE_SEVERITY_INFO_BIT_EXT,
        VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
            VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
            VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
        debug_cb, d};
    VkInstanceCreateInfo ci = {VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, validate ? &mi : NULL, 0,
                               &app, n_layers, layers, n_exts, exts};
    VkResult r = vkCreateInstance(&ci, NULL, out);
    if (r != VK_SUCCESS)
        return fkv_vk_fail(r, "vkCreateInstance");
    if (validate) {
        PFN_vkCreateDebugUtilsMessengerEXT create = (PFN_vkCreateDebugUtilsMessengerEXT)
            vkGetInstanceProcAddr(*out, "vkCreateDebugUtilsMessengerEXT");
        if (create == NULL || (r = create(*out, &mi, NULL, &d->messenger)) != VK_SUCCESS) {
            vkDestroyInstance(*out, NULL);
            *out = VK_NULL_HANDLE;
            return fkv_vk_fail(create ? r : VK_ERROR_EXTENSION_NOT_PRESENT,
                               "vkCreateDebugUtilsMessengerEXT");
        }
    }
    return FKV_OK;
}

static int type_rank(VkPhysicalDeviceType t) {
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
        return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
        return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:
        return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU:
        return 4; /* lavapipe: last, so 'auto' takes it only when nothing else exists */
    default:
        return 3;
    }
}

/* Usable devices (Vulkan 1.2 with timeline semaphores), GPUs first, CPU devices last. */
static uint32_t enumerate(VkInstance inst, VkPhysicalDevice *out, uint32_t max) {
    VkPhysicalDevice all[MAX_DEVICES];
    uint32_t n = MAX_DEVICES, k = 0;
    VkResult r = vkEnumeratePhysicalDevices(inst, &n, all);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE)
        return 0;
    for (int rank = 0; rank <= 4; rank++)
        for (uint32_t i = 0; i < n && k < max; i++) {
            VkPhysicalDeviceProperties p;
            vkGetPhysicalDeviceProperties(all[i], &p);
            if (type_rank(p.deviceType) != rank || p.apiVersion < VK_API_VERSION_1_2)
                continue;
            VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
            VkPhysicalDeviceFeatures2 f = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12};
            vkGetPhysicalDeviceFeatures2(all[i], &f);
            if (f12.timelineSemaphore)
                out[k++] = all[i];
        }
    return k;
}

static int has_device_ext(VkPhysicalDevice p, const char *name) {
    uint32_t n = 0;
    if (vkEnumerateDeviceExtensionProperties(p, NULL, &n, NULL) != VK_SUCCESS || n == 0)
        return 0;
    VkExtensionProperties *e = calloc(n, sizeof *e);
    int found = 0;
    if (e && vkEnumerateDeviceExtensionProperties(p, NULL, &n, e) == VK_SUCCESS)
        for (uint32_t i = 0; i < n; i++)
            found |= strcmp(e[i].extensionName, name) == 0;
    free(e);
    return found;
}

/* The dedicated transfer family (transfer, neither compute nor graphics), or UINT32_MAX. */
static uint32_t families(VkPhysicalDevice p, uint32_t *compute) {
    VkQueueFamilyProperties fp[16];
    uint32_t n = 16, transfer = UINT32_MAX;
    vkGetPhysicalDeviceQueueFamilyProperties(p, &n, fp);
    *compute = UINT32_MAX;
    for (uint32_t i = 0; i < n; i++) {
        VkQueueFlags f = fp[i].queueFlags;
        if ((f & VK_QUEUE_COMPUTE_BIT) && *compute == UINT32_MAX)
            *compute = i;
        if ((f & VK_QUEUE_TRANSFER_BIT) && !(f & (VK_QUEUE_COMPUTE_BIT | VK_QUEUE_GRAPHICS_BIT)) &&
            transfer == UINT32_MAX)
            transfer = i;
    }
    return transfer;
}

/* The largest single buffer: maxMemoryAllocationSize, and maxBufferSize where the device has
 * maintenance4 (core in Vulkan 1.3, else the extension; its struct is chained only then). */
static VkDeviceSize largest_buffer(VkPhysicalDevice p) {
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(p, &props);
    int m4 = props.apiVersion >= VK_API_VERSION_1_3 ||
             has_device_ext(p, VK_KHR_MAINTENANCE_4_EXTENSION_NAME);
    VkPhysicalDeviceMaintenance4Properties p4 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_4_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES,
                                                 .pNext = m4 ? &p4 : NULL};
    VkPhysicalDeviceProperties2 pr = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3};
    vkGetPhysicalDeviceProperties2(p, &pr);
    VkDeviceSize n = m3.maxMemoryAllocationSize ? m3.maxMemoryAllocationSize : UINT32_MAX;
    if (m4 && p4.maxBufferSize && p4.maxBufferSize < n)
        n = p4.maxBufferSize;
    return n;
}

static void fill_info(VkPhysicalDevice p, uint32_t index, fkv_device_info *info) {
    memset(info, 0, sizeof *info);
    snprintf(info->backend, sizeof info->backend, "vulkan");
    info->index = index;
    VkPhysicalDeviceDriverProperties drv = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES};
    VkPhysicalDeviceProperties2 pr = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &drv};
    vkGetPhysicalDeviceProperties2(p, &pr);
    snprintf(info->name, sizeof info->name, "%.127s", pr.properties.deviceName);
    snprintf(info->driver, sizeof info->driver, "%.30s %.30s", drv.driverName, drv.driverInfo);
    switch (pr.properties.deviceType) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:
        info->type = FKV_DEVICE_DISCRETE_GPU;
        break;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU:
        info->type = FKV_DEVICE_INTEGRATED_GPU;
        break;
    case VK_PHYSICAL_DEVICE_TYPE_CPU:
        info->type = FKV_DEVICE_CPU;
        break;
    default:
        info->type = FKV_DEVICE_OTHER;
        break;
    }
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(p, &mp);
    for (uint32_t i = 0; i < mp.memoryHeapCount; i++)
        if ((mp.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) &&
            mp.memoryHeaps[i].size > info->memory_bytes)
            info->memory_bytes = mp.memoryHeaps[i].size;
    /* The largest allocation. Kernels bind KV pools and summaries above
     * maxStorageBufferRange (lavapipe: 128 MiB) in windows (vk_kernels.c). */
    info->max_buffer_bytes = largest_buffer(p);
    if (info->memory_bytes && info->max_buffer_bytes > info->memory_bytes)
        info->max_buffer_bytes = info->memory_bytes;

    uint32_t compute;
    int cpu = info->type == FKV_DEVICE_CPU;
    info->caps = FKV_CAP_ASYNC_COPY | FKV_CAP_DEVICE_WAIT | FKV_CAP_FP16_STORAGE |
                 FKV_CAP_MULTI_REGION_COPY;
    if (families(p, &compute) != UINT32_MAX)
        info->caps |= FKV_CAP_SEPARATE_TRANSFER_QUEUE;
    if (!cpu)
        info->caps |= FKV_CAP_PINNED_HOST;
    /* Zero-copy recall is the default exactly where it pays: imported host memory on a GPU. */
    if (!cpu && has_device_ext(p, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME))
        info->caps |= FKV_CAP_ZERO_COPY_HOST;
}

static fkv_status vk_device_count(uint32_t *count) {
    if (count == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "vulkan device_count: NULL output");
    *count = 0;
    VkInstance inst;
    if (create_instance(NULL, &inst) != FKV_OK) {
        fkv_error_clear(); /* no loader or driver: no devices, not an error */
        return FKV_OK;
    }
    VkPhysicalDevice p[MAX_DEVICES];
    *count = enumerate(inst, p, MAX_DEVICES);
    vkDestroyInstance(inst, NULL);
    return FKV_OK;
}

static fkv_status vk_device_info(uint32_t index, fkv_device_info *info) {
    if (info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "vulkan device_info: NULL output");
    VkInstance inst;
    if (create_instance(NULL, &inst) != FKV_OK)
        return fkv_error(FKV_ERR_NO_DEVICE, "vulkan: no device %u (no Vulkan driver)", index);
    VkPhysicalDevice p[MAX_DEVICES];
    uint32_t n = enumerate(inst, p, MAX_DEVICES);
    fkv_status st = FKV_OK;
    if (index >= n)
        st = fkv_error(FKV_ERR_NO_DEVICE, "vulkan: no device %u (%u found)", index, n);
    else
        fill_info(p[index], index, info);
    vkDestroyInstance(inst, NULL);
    return st;
}

/* ---- environment ---- */

typedef enum { RECALL_AUTO, RECALL_STAGED, RECALL_REGIONS, RECALL_HOSTPTR, RECALL_PERPAGE } recall_choice;

static fkv_status read_env(recall_choice *recall, int *s16) {
    static const char *const names[] = {"auto", "staged", "regions", "hostptr", "perpage"};
    int i;
    fkv_status st = fkv_env_choice("FREEKV_VULKAN_RECALL", names, 5, RECALL_AUTO, &i);
    *recall = (recall_choice)i;
    if (st == FKV_OK) /* 16-bit storage off, or on where present */
        st = fkv_env_bool("FREEKV_VULKAN_16BIT", 1, s16);
    return st;
}

/* ---- memory ---- */

static int memory_type(const fkv_bdev *d, uint32_t bits, VkMemoryPropertyFlags need,
                       VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid) {
    int best = -1, best_score = -1;
    for (uint32_t i = 0; i < d->mem_props.memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = d->mem_props.memoryTypes[i].propertyFlags;
        if (!(bits & (1u << i)) || (f & need) != need)
            continue;
        int score = ((f & want) == want ? 2 : 0) + ((f & avoid) ? 0 : 1);
        if (score > best_score) {
            best = (int)i;
            best_score = score;
        }
    }
    return best;
}

static VkBufferCreateInfo buffer_info(const fkv_bdev *d, VkDeviceSize size, VkBufferUsageFlags usage) {
    VkBufferCreateInfo bi = {VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, NULL, 0, size, usage,
                             VK_SHARING_MODE_EXCLUSIVE, 0, NULL};
    if (d->concurrent) { /* no ownership transfers between the compute and transfer families */
        bi.sharingMode = VK_SHARING_MODE_CONCURRENT;
        bi.queueFamilyIndexCount = d->n_families;
        bi.pQueueFamilyIndices = d->families;
    }
    return bi;
}

/* ---- allocation count: every VkDeviceMemory counts against maxMemoryAllocationCount (4096
 * on some drivers), device buffers, host allocations and per-command temporaries alike ---- */

/* Takes one allocation of the device's count, or refuses naming the limit. */
static fkv_status count_alloc(fkv_bdev *d, fkv_status status, const char *what) {
    unsigned n = atomic_load(&d->live_allocs);
    do {
        if (n >= d->max_allocs)
            return fkv_error(status,
                             "vulkan: %s would be allocation %u; the device allows %u at once "
                             "(maxMemoryAllocationCount)",
                             what, n + 1, d->max_allocs);
    } while (!atomic_compare_exchange_weak(&d->live_allocs, &n, n + 1));
    return FKV_OK;
}

static void uncount_alloc(fkv_bdev *d) { atomic_fetch_sub(&d->live_allocs, 1u); }

static void free_memory(fkv_bdev *d, VkDeviceMemory mem) {
    if (mem) {
        vkFreeMemory(d->dev, mem, NULL);
        uncount_alloc(d);
    }
}

#define ALL_USAGE                                                                              \
    (VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |                   \
     VK_BUFFER_USAGE_TRANSFER_DST_BIT)

/* A buffer with its own memory: device-local, or host-visible and mapped. */
static fkv_status make_buffer(fkv_bdev *d, VkDeviceSize size, int host_visible,
                              VkBufferUsageFlags usage, VkBuffer *buf, VkDeviceMemory *mem,
                              void **ptr) {
    *buf = VK_NULL_HANDLE;
    *mem = VK_NULL_HANDLE;
    if (ptr)
        *ptr = NULL;
    VkBufferCreateInfo bi = buffer_info(d, size, usage);
    VkResult r = vkCreateBuffer(d->dev, &bi, NULL, buf);
    if (r != VK_SUCCESS)
        return fkv_vk_fail(r, "vkCreateBuffer");
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, *buf, &req);
    VkMemoryPropertyFlags need = host_visible ? VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                                    VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
                                              : 0;
    /* Host memory: cached system memory (reads come back fast, BAR space is scarce). */
    VkMemoryPropertyFlags want = host_visible ? VK_MEMORY_PROPERTY_HOST_CACHED_BIT
                                              : VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
    VkMemoryPropertyFlags avoid = host_visible && !d->is_cpu ? VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT : 0;
    int type = memory_type(d, req.memoryTypeBits, need, want, avoid);
    if (type < 0) {
        vkDestroyBuffer(d->dev, *buf, NULL);
        *buf = VK_NULL_HANDLE;
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan: no %s memory type for a buffer",
                         host_visible ? "host-visible coherent" : "device");
    }
    VkMemoryAllocateInfo ai = {VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, NULL, req.size,
                               (uint32_t)type};
    fkv_status st = count_alloc(d, host_visible ? FKV_ERR_OUT_OF_HOST_MEMORY
                                                : FKV_ERR_OUT_OF_DEVICE_MEMORY,
                                host_visible ? "host-visible memory" : "device memory");
    if (st != FKV_OK) {
        vkDestroyBuffer(d->dev, *buf, NULL);
        *buf = VK_NULL_HANDLE;
        return st;
    }
    r = vkAllocateMemory(d->dev, &ai, NULL, mem);
    if (r != VK_SUCCESS)
        uncount_alloc(d); /* nothing was allocated */
    if (r == VK_SUCCESS)
        r = vkBindBufferMemory(d->dev, *buf, *mem, 0);
    if (r == VK_SUCCESS && host_visible)
        r = vkMapMemory(d->dev, *mem, 0, VK_WHOLE_SIZE, 0, ptr);
    if (r != VK_SUCCESS) {
        vkDestroyBuffer(d->dev, *buf, NULL);
        free_memory(d, *mem);
        *buf = VK_NULL_HANDLE;
        *mem = VK_NULL_HANDLE;
        st = fkv_vk_fail(r, host_visible ? "allocating host-visible memory"
                                         : "allocating device memory");
        if (host_visible && r == VK_ERROR_OUT_OF_DEVICE_MEMORY)
            st = fkv_error_prefix(FKV_ERR_OUT_OF_HOST_MEMORY, "host-visible memory");
        return st;
    }
    return FKV_OK;
}

fkv_status fkv_vk_temp_alloc(fkv_bdev *d, VkDeviceSize size, int host_visible,
                             VkBufferUsageFlags usage, vk_temp *t) {
    return make_buffer(d, size ? size : 4, host_visible, usage ? usage : ALL_USAGE, &t->buf,
                       &t->mem, &t->ptr);
}

void fkv_vk_temp_free(fkv_bdev *d, vk_temp *t) {
    if (t->buf)
        vkDestroyBuffer(d->dev, t->buf, NULL);
    free_memory(d, t->mem); /* unmaps */
    memset(t, 0, sizeof *t);
}

static fkv_status vk_buffer_alloc(fkv_bdev *d, size_t size, fkv_bbuf **out) {
    if (size > d->max_alloc)
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY,
                         "vulkan: %zu bytes exceed the device's largest allocation (%llu)", size,
                         (unsigned long long)d->max_alloc);
    fkv_bbuf *b = calloc(1, sizeof *b);
    if (b == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: buffer handle");
    fkv_status st = make_buffer(d, size, 0, ALL_USAGE, &b->buf, &b->mem, NULL);
    if (st != FKV_OK) {
        free(b);
        return st;
    }
    b->desc = (fkv_mem_desc){.size = size, .base = 0};
    *out = b;
    return FKV_OK;
}

static void vk_buffer_free(fkv_bdev *d, fkv_bbuf *b) {
    if (b->mem) { /* an imported VkBuffer stays the engine's */
        vkDestroyBuffer(d->dev, b->buf, NULL);
        free_memory(d, b->mem);
    }
    free(b);
}

static fkv_status vk_buffer_import(fkv_bdev *d, void *native, size_t size, fkv_bbuf **out) {
    (void)d;
    fkv_bbuf *b = calloc(1, sizeof *b);
    if (b == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: buffer handle");
    /* Vulkan cannot tell a VkBuffer's device or size: the engine vouches for both (it must
     * have STORAGE_BUFFER and TRANSFER_SRC/DST usage). */
    b->buf = (VkBuffer)(uintptr_t)native;
    b->desc = (fkv_mem_desc){.size = size, .base = 0};
    *out = b;
    return FKV_OK;
}

static fkv_status register_host(fkv_bdev *d, fkv_bhost *h) {
    pthread_mutex_lock(&d->host_lock);
    if (d->n_hosts == d->cap_hosts) {
        uint32_t cap = d->cap_hosts ? 2 * d->cap_hosts : 16;
        fkv_bhost **n = realloc(d->hosts, cap * sizeof *n);
        if (n == NULL) {
            pthread_mutex_unlock(&d->host_lock);
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: host allocation list");
        }
        d->hosts = n;
        d->cap_hosts = cap;
    }
    d->hosts[d->n_hosts++] = h;
    pthread_mutex_unlock(&d->host_lock);
    return FKV_OK;
}

fkv_bhost *fkv_vk_find_host(fkv_bdev *d, const void *p, size_t size, VkDeviceSize *offset) {
    fkv_bhost *found = NULL;
    uintptr_t a = (uintptr_t)p;
    pthread_mutex_lock(&d->host_lock);
    for (uint32_t i = 0; i < d->n_hosts && !found; i++) {
        uintptr_t b = (uintptr_t)d->hosts[i]->ptr;
        size_t held = d->hosts[i]->desc.size;
        if (a >= b && a - b <= held && size <= held - (a - b)) {
            found = d->hosts[i];
            *offset = a - b;
        }
    }
    pthread_mutex_unlock(&d->host_lock);
    return found;
}

/* Option break_import (process-wide): every import fails as a driver's would, the probe at
 * device open included. */
atomic_int fkv_vk_import_broken;

/* malloc'd memory imported with VK_EXT_external_memory_host: the pages a shader gathers.
 * Only host-coherent memory types are taken (host writes must reach the shaders with no
 * flush, and the library never flushes). */
static fkv_status import_host(fkv_bdev *d, fkv_bhost *h) {
    size_t a = (size_t)d->import_align, size = (h->desc.size + a - 1) / a * a;
    h->raw = aligned_alloc(a, size);
    if (h->raw == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: %zu bytes of host memory", size);
    VkMemoryHostPointerPropertiesEXT hp = {.sType = VK_STRUCTURE_TYPE_MEMORY_HOST_POINTER_PROPERTIES_EXT};
    VkResult r = atomic_load(&fkv_vk_import_broken)
                     ? VK_ERROR_INVALID_EXTERNAL_HANDLE
                     : d->get_host_ptr_props(d->dev,
                                             VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT,
                                             h->raw, &hp);
    VkExternalMemoryBufferCreateInfo ext = {VK_STRUCTURE_TYPE_EXTERNAL_MEMORY_BUFFER_CREATE_INFO,
                                            NULL,
                                            VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT};
    VkBufferCreateInfo bi = buffer_info(d, size, ALL_USAGE);
    bi.pNext = &ext;
    if (r == VK_SUCCESS)
        r = vkCreateBuffer(d->dev, &bi, NULL, &h->buf);
    if (r != VK_SUCCESS) {
        free(h->raw);
        h->raw = NULL;
        return fkv_vk_fail(r, "importing host memory (vkGetMemoryHostPointerPropertiesEXT)");
    }
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(d->dev, h->buf, &req);
    int type = memory_type(d, req.memoryTypeBits & hp.memoryTypeBits,
                           VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                           0, 0);
    fkv_status st = FKV_OK;
    if (type < 0)
        st = fkv_error(FKV_ERR_UNSUPPORTED,
                       "vulkan: imported host memory has no host-coherent memory type (types "
                       "0x%x allowed)",
                       req.memoryTypeBits & hp.memoryTypeBits);
    else
        st = count_alloc(d, FKV_ERR_OUT_OF_HOST_MEMORY, "imported host memory");
    if (st == FKV_OK) {
        VkImportMemoryHostPointerInfoEXT imp = {
            VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT, NULL,
            VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT, h->raw};
        VkMemoryAllocateInfo ai = {VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, &imp, size,
                                   (uint32_t)type};
        r = vkAllocateMemory(d->dev, &ai, NULL, &h->mem);
        if (r != VK_SUCCESS)
            uncount_alloc(d);
        if (r == VK_SUCCESS)
            r = vkBindBufferMemory(d->dev, h->buf, h->mem, 0);
        if (r != VK_SUCCESS)
            st = fkv_vk_fail(r, "importing host memory");
    }
    if (st != FKV_OK) {
        vkDestroyBuffer(d->dev, h->buf, NULL);
        free_memory(d, h->mem);
        free(h->raw);
        h->raw = NULL;
        h->buf = VK_NULL_HANDLE;
        h->mem = VK_NULL_HANDLE;
        return st;
    }
    h->ptr = h->raw;
    return FKV_OK;
}

/* Whether malloc'd memory can back storage buffers here: the driver's word for it
 * (vkGetPhysicalDeviceExternalBufferProperties), then one real import of one page through
 * import_host, the path every host_alloc of hostptr mode takes. */
static fkv_status probe_import(fkv_bdev *d) {
    VkPhysicalDeviceExternalBufferInfo bi = {
        .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_BUFFER_INFO,
        .usage = ALL_USAGE,
        .handleType = VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT};
    VkExternalBufferProperties ep = {.sType = VK_STRUCTURE_TYPE_EXTERNAL_BUFFER_PROPERTIES};
    vkGetPhysicalDeviceExternalBufferProperties(d->phys, &bi, &ep);
    if (!(ep.externalMemoryProperties.externalMemoryFeatures &
          VK_EXTERNAL_MEMORY_FEATURE_IMPORTABLE_BIT))
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan: host allocations are not importable as storage buffers "
                         "(vkGetPhysicalDeviceExternalBufferProperties)");
    fkv_bhost h = {.desc = {.size = (size_t)d->import_align}};
    fkv_status st = import_host(d, &h);
    if (st == FKV_OK) {
        vkDestroyBuffer(d->dev, h.buf, NULL);
        free_memory(d, h.mem);
        free(h.raw);
    }
    return st;
}

static fkv_status vk_host_alloc(fkv_bdev *d, size_t size, fkv_bhost **out, void **ptr) {
    if (size > d->max_alloc)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY,
                         "vulkan: %zu bytes of host memory exceed the largest allocation (%llu)",
                         size, (unsigned long long)d->max_alloc);
    fkv_bhost *h = calloc(1, sizeof *h);
    if (h == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: host allocation handle");
    h->desc.size = size;
    fkv_status st = d->import_host ? import_host(d, h)
                                   : make_buffer(d, size, 1, ALL_USAGE, &h->buf, &h->mem, &h->ptr);
    if (st == FKV_OK && (st = register_host(d, h)) != FKV_OK) {
        vkDestroyBuffer(d->dev, h->buf, NULL);
        free_memory(d, h->mem);
        free(h->raw);
    }
    if (st != FKV_OK) {
        free(h);
        return fkv_error_prefix(st, "vulkan host_alloc of %zu bytes", size);
    }
    h->desc.base = (uintptr_t)h->ptr;
    *out = h;
    *ptr = h->ptr;
    return FKV_OK;
}

static void vk_host_free(fkv_bdev *d, fkv_bhost *h) {
    pthread_mutex_lock(&d->host_lock);
    for (uint32_t i = 0; i < d->n_hosts; i++)
        if (d->hosts[i] == h) {
            d->hosts[i] = d->hosts[--d->n_hosts];
            break;
        }
    pthread_mutex_unlock(&d->host_lock);
    vkDestroyBuffer(d->dev, h->buf, NULL);
    free_memory(d, h->mem);
    free(h->raw); /* after the import is released */
    free(h);
}

/* ---- submissions ---- */

static void record_release(fkv_bdev *d, vk_fqueue *fq, vk_record *r, int reuse_cb) {
    if (r->n_sets)
        vkFreeDescriptorSets(d->dev, fq->dpool, r->n_sets, r->sets);
    for (uint32_t i = 0; i < r->n_temps; i++)
        fkv_vk_temp_free(d, &r->temps[i]);
    free(r->sets);
    free(r->temps);
    if (r->cb) {
        if (reuse_cb && vkResetCommandBuffer(r->cb, 0) == VK_SUCCESS &&
            fq->n_free < fq->cap_free) {
            fq->free_cbs[fq->n_free++] = r->cb;
        } else {
            vkFreeCommandBuffers(d->dev, fq->pool, 1, &r->cb);
        }
    }
    memset(r, 0, sizeof *r);
}

/* Releases what completed submissions held (the caller holds fq->lock). */
static void reclaim(fkv_bdev *d, vk_fqueue *fq) {
    uint64_t done = 0;
    if (fq->n_inflight == 0 || vkGetSemaphoreCounterValue(d->dev, fq->timeline, &done) != VK_SUCCESS)
        return;
    uint32_t k = 0;
    while (k < fq->n_inflight && fq->inflight[k].value <= done)
        record_release(d, fq, &fq->inflight[k++], 1);
    if (k) {
        memmove(fq->inflight, fq->inflight + k, (fq->n_inflight - k) * sizeof *fq->inflight);
        fq->n_inflight -= k;
    }
}

/* Waits for the oldest submission of fq and reclaims (the caller holds fq->lock): bounds the
 * descriptor sets in flight. 0 when nothing was in flight. */
static int wait_oldest(fkv_bdev *d, vk_fqueue *fq) {
    if (fq->n_inflight == 0)
        return 0;
    VkSemaphoreWaitInfo wi = {VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO, NULL, 0, 1, &fq->timeline,
                              &fq->inflight[0].value};
    if (vkWaitSemaphores(d->dev, &wi, UINT64_MAX) != VK_SUCCESS)
        return 0;
    reclaim(d, fq);
    return 1;
}

fkv_status fkv_vk_cmd_begin(fkv_bdev *d, fkv_queue q, int marker, vk_cmd *c) {
    memset(c, 0, sizeof *c);
    c->d = d;
    c->fq = &d->q[q];
    pthread_mutex_lock(&c->fq->lock);
    reclaim(d, c->fq);
    if (marker)
        return FKV_OK;
    vk_fqueue *fq = c->fq;
    VkResult r = VK_SUCCESS;
    if (fq->n_free) {
        c->rec.cb = fq->free_cbs[--fq->n_free];
    } else {
        VkCommandBufferAllocateInfo ai = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO, NULL,
                                          fq->pool, VK_COMMAND_BUFFER_LEVEL_PRIMARY, 1};
        r = vkAllocateCommandBuffers(d->dev, &ai, &c->rec.cb);
    }
    VkCommandBufferBeginInfo bi = {VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO, NULL,
                                   VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT, NULL};
    if (r == VK_SUCCESS)
        r = vkBeginCommandBuffer(c->rec.cb, &bi);
    if (r != VK_SUCCESS) {
        fkv_vk_cmd_abort(c);
        return fkv_vk_fail(r, "starting a command buffer");
    }
    return FKV_OK;
}

fkv_status fkv_vk_cmd_temp(vk_cmd *c, VkDeviceSize size, int host_visible, vk_temp *out) {
    vk_record *r = &c->rec;
    if (r->n_temps == r->cap_temps) {
        uint32_t cap = r->cap_temps ? 2 * r->cap_temps : 4;
        vk_temp *n = realloc(r->temps, cap * sizeof *n);
        if (n == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: temporary list");
        r->temps = n;
        r->cap_temps = cap;
    }
    fkv_status st = fkv_vk_temp_alloc(c->d, size, host_visible, 0, &r->temps[r->n_temps]);
    if (st != FKV_OK)
        return st;
    *out = r->temps[r->n_temps++];
    return FKV_OK;
}

fkv_status fkv_vk_cmd_set(vk_cmd *c, VkDescriptorSet *out) {
    vk_record *r = &c->rec;
    if (r->n_sets == r->cap_sets) {
        uint32_t cap = r->cap_sets ? 2 * r->cap_sets : 4;
        VkDescriptorSet *n = realloc(r->sets, cap * sizeof *n);
        if (n == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: descriptor set list");
        r->sets = n;
        r->cap_sets = cap;
    }
    VkDescriptorSetAllocateInfo ai = {VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO, NULL,
                                      c->fq->dpool, 1, &c->d->dsl};
    VkResult res;
    while ((res = vkAllocateDescriptorSets(c->d->dev, &ai, out)) == VK_ERROR_OUT_OF_POOL_MEMORY ||
           res == VK_ERROR_FRAGMENTED_POOL)
        if (!wait_oldest(c->d, c->fq))
            break;
    if (res != VK_SUCCESS)
        return fkv_vk_fail(res, "vkAllocateDescriptorSets");
    r->sets[r->n_sets++] = *out;
    return FKV_OK;
}

void fkv_vk_cmd_abort(vk_cmd *c) {
    record_release(c->d, c->fq, &c->rec, 1);
    pthread_mutex_unlock(&c->fq->lock);
}

fkv_status fkv_vk_cmd_submit(vk_cmd *c, const fkv_deps *deps, vk_event *value_out) {
    vk_fqueue *fq = c->fq;
    fkv_status st = FKV_OK;
    vk_event *ev = NULL;
    VkSemaphore wsem_buf[17];
    uint64_t wval_buf[17];
    VkPipelineStageFlags wstage_buf[17];
    VkSemaphore *wsem = wsem_buf;
    uint64_t *wval = wval_buf;
    VkPipelineStageFlags *wstage = wstage_buf;
    uint32_t n = 0, cap = deps->n_wait + 1;
    if (cap > 17) {
        wsem = malloc(cap * sizeof *wsem);
        wval = malloc(cap * sizeof *wval);
        wstage = malloc(cap * sizeof *wstage);
        if (!wsem || !wval || !wstage)
            st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: wait list");
    }
    if (st == FKV_OK && deps->done && (ev = malloc(sizeof *ev)) == NULL)
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: event");
    if (st == FKV_OK && fq->n_inflight == fq->cap_inflight) {
        uint32_t nc = fq->cap_inflight ? 2 * fq->cap_inflight : 64;
        vk_record *nr = realloc(fq->inflight, nc * sizeof *nr);
        if (nr == NULL)
            st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: submission list");
        else {
            fq->inflight = nr;
            fq->cap_inflight = nc;
        }
    }
    VkResult r = VK_SUCCESS;
    if (st == FKV_OK && c->rec.cb) {
        /* Device writes become visible to the host once the timeline value is reached
         * (reads into host memory; the semaphore alone does not make them host-available). */
        VkMemoryBarrier mb = {VK_STRUCTURE_TYPE_MEMORY_BARRIER, NULL, VK_ACCESS_MEMORY_WRITE_BIT,
                              VK_ACCESS_HOST_READ_BIT | VK_ACCESS_HOST_WRITE_BIT};
        vkCmdPipelineBarrier(c->rec.cb, VK_PIPELINE_STAGE_ALL_COMMANDS_BIT,
                             VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
        r = vkEndCommandBuffer(c->rec.cb);
        if (r != VK_SUCCESS)
            st = fkv_vk_fail(r, "vkEndCommandBuffer");
    }
    if (st != FKV_OK) {
        fkv_vk_cmd_abort(c);
        free(ev);
        goto out;
    }
    for (uint32_t i = 0; i < deps->n_wait; i++) {
        const vk_event *e = (const vk_event *)deps->wait[i];
        if (e == NULL)
            continue;
        wsem[n] = e->sem;
        wval[n] = e->value;
        wstage[n++] = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
    }
    if (fq->last) { /* in order after the queue's previous submission */
        wsem[n] = fq->timeline;
        wval[n] = fq->last;
        wstage[n++] = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
    }
    uint64_t value = fq->last + 1;
    VkTimelineSemaphoreSubmitInfo ti = {VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO, NULL, n,
                                        wval, 1, &value};
    VkSubmitInfo si = {VK_STRUCTURE_TYPE_SUBMIT_INFO, &ti, n, wsem, wstage,
                       c->rec.cb ? 1u : 0u, &c->rec.cb, 1, &fq->timeline};
    pthread_mutex_lock(&fq->hw->lock);
    r = vkQueueSubmit(fq->hw->queue, 1, &si, VK_NULL_HANDLE);
    pthread_mutex_unlock(&fq->hw->lock);
    if (r != VK_SUCCESS) {
        st = fkv_vk_fail(r, "vkQueueSubmit");
        fkv_vk_cmd_abort(c);
        free(ev);
        goto out;
    }
    fq->last = value;
    c->rec.value = value;
    if (c->rec.cb || c->rec.n_temps || c->rec.n_sets)
        fq->inflight[fq->n_inflight++] = c->rec;
    if (ev) {
        ev->sem = fq->timeline;
        ev->value = value;
        *deps->done = (fkv_bevent *)ev;
    }
    if (value_out) {
        value_out->sem = fq->timeline;
        value_out->value = value;
    }
    pthread_mutex_unlock(&fq->lock);
out:
    if (wsem != wsem_buf) {
        free(wsem);
        free(wval);
        free(wstage);
    }
    return st;
}

fkv_status fkv_vk_marker(fkv_bdev *d, fkv_queue q, fkv_deps deps) {
    fkv_vk_clear_done(&deps);
    fkv_status st;
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 1, &c)) != FKV_OK)
        return st;
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

/* ---- events ---- */

/* Copies out the staged reads that have completed. */
static void sweep_reads(fkv_bdev *d) {
    pthread_mutex_lock(&d->read_lock);
    for (uint32_t i = 0; i < d->n_reads;) {
        vk_pending_read *p = &d->reads[i];
        uint64_t v = 0;
        if (vkGetSemaphoreCounterValue(d->dev, p->sem, &v) == VK_SUCCESS && v >= p->value) {
            memcpy(p->dst, p->temp.ptr, p->size);
            fkv_vk_temp_free(d, &p->temp);
            d->reads[i] = d->reads[--d->n_reads];
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&d->read_lock);
}

static fkv_status validation_status(fkv_bdev *d) {
    unsigned n = atomic_load(&d->validation_errors);
    if (n)
        return fkv_error(FKV_ERR_BACKEND,
                         "vulkan: the validation layer reported %u error(s) or warning(s) (see "
                         "stderr)", n);
    return FKV_OK;
}

static fkv_status wait_values(fkv_bdev *d, uint32_t n, const VkSemaphore *sems,
                              const uint64_t *vals) {
    if (n) {
        VkSemaphoreWaitInfo wi = {VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO, NULL, 0, n, sems, vals};
        VkResult r = vkWaitSemaphores(d->dev, &wi, UINT64_MAX);
        if (r != VK_SUCCESS)
            return fkv_vk_fail(r, "vkWaitSemaphores");
    }
    sweep_reads(d);
    return validation_status(d);
}

static fkv_status vk_event_wait(fkv_bdev *d, uint32_t n, fkv_bevent *const *events) {
    if (n == 0)
        return FKV_OK;
    VkSemaphore sb[16];
    uint64_t vb[16];
    VkSemaphore *s = n > 16 ? malloc(n * sizeof *s) : sb;
    uint64_t *v = n > 16 ? malloc(n * sizeof *v) : vb;
    fkv_status st;
    if (s == NULL || v == NULL) {
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: wait list");
    } else {
        uint32_t k = 0;
        for (uint32_t i = 0; i < n; i++) {
            const vk_event *e = (const vk_event *)events[i];
            s[k] = e->sem;
            v[k++] = e->value;
        }
        st = wait_values(d, k, s, v);
    }
    if (s != sb)
        free(s);
    if (v != vb)
        free(v);
    return st;
}

static void vk_event_release(fkv_bdev *d, fkv_bevent *ev) {
    (void)d;
    free(ev);
}

static fkv_status vk_finish(fkv_bdev *d, fkv_queue q) {
    vk_fqueue *fq = &d->q[q];
    pthread_mutex_lock(&fq->lock);
    uint64_t last = fq->last;
    pthread_mutex_unlock(&fq->lock);
    fkv_status st = wait_values(d, 1, &fq->timeline, &last);
    pthread_mutex_lock(&fq->lock);
    reclaim(d, fq);
    pthread_mutex_unlock(&fq->lock);
    return st;
}

/* ---- copies ---- */

/* The source of n host regions: their host_alloc buffer, or one staging buffer they are
 * copied into now. Records one vkCmdCopyBuffer per run of regions with the same source. */
static fkv_status record_upload(vk_cmd *c, fkv_bbuf *dst, uint32_t n, const fkv_copy_region *rg) {
    VkBufferCopy *copies = malloc(n * sizeof *copies);
    VkBuffer *srcs = malloc(n * sizeof *srcs);
    fkv_status st = FKV_OK;
    if (copies == NULL || srcs == NULL)
        st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: copy regions");
    size_t staged = 0;
    for (uint32_t i = 0; i < n && st == FKV_OK; i++) {
        VkDeviceSize off;
        fkv_bhost *h = fkv_vk_find_host(c->d, rg[i].src, rg[i].size, &off);
        srcs[i] = h ? h->buf : VK_NULL_HANDLE;
        copies[i] = (VkBufferCopy){h ? off : staged, rg[i].dst_offset, rg[i].size};
        if (!h)
            staged += rg[i].size;
    }
    if (st == FKV_OK && staged) {
        vk_temp t;
        st = fkv_vk_cmd_temp(c, staged, 1, &t);
        for (uint32_t i = 0; i < n && st == FKV_OK; i++)
            if (srcs[i] == VK_NULL_HANDLE) {
                memcpy((unsigned char *)t.ptr + copies[i].srcOffset, rg[i].src, rg[i].size);
                srcs[i] = t.buf;
            }
    }
    for (uint32_t i = 0; i < n && st == FKV_OK;) {
        uint32_t j = i + 1;
        while (j < n && srcs[j] == srcs[i])
            j++;
        vkCmdCopyBuffer(c->rec.cb, srcs[i], dst->buf, j - i, copies + i);
        i = j;
    }
    free(copies);
    free(srcs);
    return st;
}

static fkv_status vk_write(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                           size_t dst_offset, const void *src, size_t size) {
    fkv_vk_clear_done(&deps);
    fkv_status st;
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 0, &c)) != FKV_OK)
        return st;
    fkv_copy_region rg = {src, dst_offset, size};
    if ((st = record_upload(&c, dst, 1, &rg)) != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

static fkv_status vk_write_regions(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                                   uint32_t n, const fkv_copy_region *regions) {
    fkv_vk_clear_done(&deps);
    fkv_status st;
    /* Zero-size regions are not valid VkBufferCopy entries: drop them. */
    uint32_t live = 0;
    for (uint32_t i = 0; i < n; i++)
        live += regions[i].size != 0;
    if (live == 0)
        return fkv_vk_marker(d, q, deps);
    if (d->perpage_cmds || live != n) {
        /* The baseline (FREEKV_VULKAN_RECALL=perpage): one submission per region; only the
         * first waits and only the last signals (the queue is in order). */
        uint32_t seen = 0;
        for (uint32_t i = 0; i < n; i++) {
            if (regions[i].size == 0)
                continue;
            seen++;
            fkv_deps dd = {seen == 1 ? deps.n_wait : 0, seen == 1 ? deps.wait : NULL,
                           seen == live ? deps.done : NULL};
            if ((st = vk_write(d, q, dd, dst, regions[i].dst_offset, regions[i].src,
                               regions[i].size)) != FKV_OK)
                return st;
        }
        return FKV_OK;
    }
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 0, &c)) != FKV_OK)
        return st;
    if ((st = record_upload(&c, dst, n, regions)) != FKV_OK) {
        fkv_vk_cmd_abort(&c);
        return st;
    }
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

static fkv_status vk_read(fkv_bdev *d, fkv_queue q, fkv_deps deps, const fkv_bbuf *src,
                          size_t src_offset, void *dst, size_t size) {
    fkv_vk_clear_done(&deps);
    fkv_status st = FKV_OK;
    VkDeviceSize off = 0;
    fkv_bhost *h = fkv_vk_find_host(d, dst, size, &off);
    vk_pending_read p = {0};
    if (h == NULL) {
        if ((st = fkv_vk_temp_alloc(d, size, 1, 0, &p.temp)) != FKV_OK)
            return st;
        pthread_mutex_lock(&d->read_lock); /* room for the pending entry before submitting */
        if (d->n_reads == d->cap_reads) {
            uint32_t cap = d->cap_reads ? 2 * d->cap_reads : 16;
            vk_pending_read *n = realloc(d->reads, cap * sizeof *n);
            if (n) {
                d->reads = n;
                d->cap_reads = cap;
            } else {
                st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: pending reads");
            }
        }
        pthread_mutex_unlock(&d->read_lock);
        if (st != FKV_OK) {
            fkv_vk_temp_free(d, &p.temp);
            return st;
        }
    }
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 0, &c)) != FKV_OK) {
        fkv_vk_temp_free(d, &p.temp);
        return st;
    }
    VkBufferCopy bc = {src_offset, h ? off : 0, size};
    vkCmdCopyBuffer(c.rec.cb, src->buf, h ? h->buf : p.temp.buf, 1, &bc);
    vk_event v;
    if ((st = fkv_vk_cmd_submit(&c, &deps, &v)) != FKV_OK) {
        fkv_vk_temp_free(d, &p.temp);
        return st;
    }
    if (h == NULL) {
        p.sem = v.sem;
        p.value = v.value;
        p.dst = dst;
        p.size = size;
        pthread_mutex_lock(&d->read_lock);
        d->reads[d->n_reads++] = p; /* room was made above; only this path adds */
        pthread_mutex_unlock(&d->read_lock);
    }
    return FKV_OK;
}

static fkv_status vk_copy(fkv_bdev *d, fkv_queue q, fkv_deps deps, fkv_bbuf *dst,
                          size_t dst_offset, const fkv_bbuf *src, size_t src_offset, size_t size) {
    fkv_vk_clear_done(&deps);
    fkv_status st;
    vk_cmd c;
    if ((st = fkv_vk_cmd_begin(d, q, 0, &c)) != FKV_OK)
        return st;
    if (src->buf == dst->buf && src_offset < dst_offset + size && dst_offset < src_offset + size) {
        /* Overlapping regions are invalid in one vkCmdCopyBuffer: memmove through a temporary. */
        vk_temp t;
        if ((st = fkv_vk_cmd_temp(&c, size, 0, &t)) != FKV_OK) {
            fkv_vk_cmd_abort(&c);
            return st;
        }
        VkBufferCopy a = {src_offset, 0, size}, b = {0, dst_offset, size};
        vkCmdCopyBuffer(c.rec.cb, src->buf, t.buf, 1, &a);
        VkMemoryBarrier mb = {VK_STRUCTURE_TYPE_MEMORY_BARRIER, NULL, VK_ACCESS_TRANSFER_WRITE_BIT,
                              VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
        vkCmdPipelineBarrier(c.rec.cb, VK_PIPELINE_STAGE_TRANSFER_BIT,
                             VK_PIPELINE_STAGE_TRANSFER_BIT, 0, 1, &mb, 0, NULL, 0, NULL);
        vkCmdCopyBuffer(c.rec.cb, t.buf, dst->buf, 1, &b);
    } else {
        VkBufferCopy bc = {src_offset, dst_offset, size};
        vkCmdCopyBuffer(c.rec.cb, src->buf, dst->buf, 1, &bc);
    }
    return fkv_vk_cmd_submit(&c, &deps, NULL);
}

/* ---- devices ---- */

static void fqueue_destroy(fkv_bdev *d, vk_fqueue *fq) {
    for (uint32_t i = 0; i < fq->n_inflight; i++)
        record_release(d, fq, &fq->inflight[i], 0);
    free(fq->inflight);
    if (fq->n_free && fq->pool)
        vkFreeCommandBuffers(d->dev, fq->pool, fq->n_free, fq->free_cbs);
    free(fq->free_cbs);
    if (fq->dpool)
        vkDestroyDescriptorPool(d->dev, fq->dpool, NULL);
    if (fq->pool)
        vkDestroyCommandPool(d->dev, fq->pool, NULL);
    if (fq->timeline)
        vkDestroySemaphore(d->dev, fq->timeline, NULL);
    pthread_mutex_destroy(&fq->lock);
}

static void vk_device_close(fkv_bdev *d) {
    if (d == NULL)
        return;
    if (d->dev) {
        vkDeviceWaitIdle(d->dev);
        sweep_reads(d);
        for (uint32_t i = 0; i < d->n_reads; i++) /* unreachable values: never submitted */
            fkv_vk_temp_free(d, &d->reads[i].temp);
        fkv_vk_pipelines_destroy(d);
        for (int q = 0; q < FKV_QUEUE_COUNT; q++)
            fqueue_destroy(d, &d->q[q]);
        fkv_vk_temp_free(d, &d->dummy);
        for (uint32_t i = 0; i < d->n_hosts; i++) { /* leaked by the caller: still unmapped */
            vkDestroyBuffer(d->dev, d->hosts[i]->buf, NULL);
            vkFreeMemory(d->dev, d->hosts[i]->mem, NULL);
            free(d->hosts[i]->raw);
            free(d->hosts[i]);
        }
        vkDestroyDevice(d->dev, NULL);
    }
    if (d->messenger) {
        PFN_vkDestroyDebugUtilsMessengerEXT destroy = (PFN_vkDestroyDebugUtilsMessengerEXT)
            vkGetInstanceProcAddr(d->instance, "vkDestroyDebugUtilsMessengerEXT");
        if (destroy)
            destroy(d->instance, d->messenger, NULL);
    }
    if (d->instance)
        vkDestroyInstance(d->instance, NULL);
    for (uint32_t i = 0; i < d->n_hw; i++)
        pthread_mutex_destroy(&d->hw[i].lock);
    pthread_mutex_destroy(&d->pipe_lock);
    pthread_mutex_destroy(&d->read_lock);
    pthread_mutex_destroy(&d->host_lock);
    free(d->reads);
    free(d->hosts);
    free(d);
}

static fkv_status create_device(fkv_bdev *d, int want_s16) {
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(d->phys, &props);
    VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    /* an extension's struct only when the device has the extension */
    VkPhysicalDeviceExternalMemoryHostPropertiesEXT eh = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_MEMORY_HOST_PROPERTIES_EXT, .pNext = &sg};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                      .pNext = d->ext_host ? (void *)&eh : (void *)&sg};
    vkGetPhysicalDeviceProperties2(d->phys, &p2);
    vkGetPhysicalDeviceMemoryProperties(d->phys, &d->mem_props);
    d->max_range = props.limits.maxStorageBufferRange;
    d->max_alloc = largest_buffer(d->phys);
    d->max_allocs_device = props.limits.maxMemoryAllocationCount;
    d->max_allocs = d->max_allocs_device;
    d->align = props.limits.minStorageBufferOffsetAlignment;
    if (d->align < 16)
        d->align = 16; /* uvec4 words of the copy kernels */
    for (int i = 0; i < 3; i++)
        d->max_groups[i] = props.limits.maxComputeWorkGroupCount[i];
    d->max_wg = props.limits.maxComputeWorkGroupInvocations;
    if (props.limits.maxComputeWorkGroupSize[0] < d->max_wg)
        d->max_wg = props.limits.maxComputeWorkGroupSize[0];
    d->max_shared = props.limits.maxComputeSharedMemorySize;
    d->max_shared_device = d->max_shared;
    d->subgroup = sg.subgroupSize ? sg.subgroupSize : 1;
    /* Vulkan has no portable compute-unit count: a guess that fills the device's queue. */
    d->compute_units = d->is_cpu ? 16 : 64;

    VkPhysicalDevice16BitStorageFeatures f16 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES, .pNext = &f16};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12};
    vkGetPhysicalDeviceFeatures2(d->phys, &f2);
    d->s16 = want_s16 && f16.storageBuffer16BitAccess;

    VkPhysicalDevice16BitStorageFeatures en16 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
    en16.storageBuffer16BitAccess = d->s16 ? VK_TRUE : VK_FALSE;
    VkPhysicalDeviceVulkan12Features en12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES, .pNext = &en16};
    en12.timelineSemaphore = VK_TRUE;
    VkPhysicalDeviceFeatures2 en = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &en12};

    const char *exts[1];
    uint32_t n_exts = 0;
    if (d->ext_host) {
        exts[n_exts++] = VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME;
        d->import_align = eh.minImportedHostPointerAlignment ? eh.minImportedHostPointerAlignment
                                                             : 4096;
    }

    uint32_t compute, transfer = families(d->phys, &compute);
    if (compute == UINT32_MAX)
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan: device '%s' has no compute queue",
                         d->info.name);
    VkQueueFamilyProperties fp[16];
    uint32_t nf = 16;
    vkGetPhysicalDeviceQueueFamilyProperties(d->phys, &nf, fp);
    /* COMPUTE and BACKGROUND on separate queues of the compute family when it has two. */
    uint32_t n_compute_queues = fp[compute].queueCount >= 2 ? 2 : 1;
    float prio[2] = {1.0f, 1.0f};
    VkDeviceQueueCreateInfo qi[2] = {
        {VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, NULL, 0, compute, n_compute_queues, prio},
        {VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, NULL, 0, transfer, 1, prio}};
    uint32_t n_qi = transfer != UINT32_MAX ? 2 : 1;
    VkDeviceCreateInfo ci = {VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, &en, 0, n_qi, qi, 0, NULL,
                             n_exts, exts, NULL};
    VkResult r = vkCreateDevice(d->phys, &ci, NULL, &d->dev);
    if (r != VK_SUCCESS)
        return fkv_vk_fail(r, "vkCreateDevice");
    if (d->ext_host)
        d->get_host_ptr_props = (PFN_vkGetMemoryHostPointerPropertiesEXT)vkGetDeviceProcAddr(
            d->dev, "vkGetMemoryHostPointerPropertiesEXT");
    d->families[0] = compute;
    d->n_families = 1;
    if (transfer != UINT32_MAX) {
        d->families[d->n_families++] = transfer;
        d->concurrent = 1;
    }
    for (uint32_t i = 0; i < n_compute_queues; i++) {
        vkGetDeviceQueue(d->dev, compute, i, &d->hw[d->n_hw].queue);
        d->hw[d->n_hw].family = compute;
        pthread_mutex_init(&d->hw[d->n_hw++].lock, NULL);
    }
    uint32_t thw = 0;
    if (transfer != UINT32_MAX) {
        thw = d->n_hw;
        vkGetDeviceQueue(d->dev, transfer, 0, &d->hw[d->n_hw].queue);
        d->hw[d->n_hw].family = transfer;
        pthread_mutex_init(&d->hw[d->n_hw++].lock, NULL);
    }
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        vk_fqueue *fq = &d->q[q];
        pthread_mutex_init(&fq->lock, NULL);
        fq->hw = &d->hw[q == FKV_QUEUE_TRANSFER ? thw : q == FKV_QUEUE_BACKGROUND ? n_compute_queues - 1 : 0];
        VkSemaphoreTypeCreateInfo st = {VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO, NULL,
                                        VK_SEMAPHORE_TYPE_TIMELINE, 0};
        VkSemaphoreCreateInfo si = {VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO, &st, 0};
        VkCommandPoolCreateInfo pi = {VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO, NULL,
                                      VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                      fq->hw->family};
        VkDescriptorPoolSize ps = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                   DESCRIPTOR_SETS_PER_POOL * VK_N_BINDINGS};
        VkDescriptorPoolCreateInfo dpi = {VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, NULL,
                                          VK_DESCRIPTOR_POOL_CREATE_FREE_DESCRIPTOR_SET_BIT,
                                          DESCRIPTOR_SETS_PER_POOL, 1, &ps};
        r = vkCreateSemaphore(d->dev, &si, NULL, &fq->timeline);
        if (r == VK_SUCCESS)
            r = vkCreateCommandPool(d->dev, &pi, NULL, &fq->pool);
        if (r == VK_SUCCESS && q != FKV_QUEUE_TRANSFER)
            r = vkCreateDescriptorPool(d->dev, &dpi, NULL, &fq->dpool);
        fq->cap_free = 64;
        fq->free_cbs = malloc(fq->cap_free * sizeof *fq->free_cbs);
        if (r != VK_SUCCESS)
            return fkv_vk_fail(r, "creating queue objects");
        if (fq->free_cbs == NULL)
            return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: command buffer list");
    }
    return FKV_OK;
}

static fkv_status vk_device_open(uint32_t index, fkv_bdev **out) {
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "vulkan device_open: NULL output");
    *out = NULL;
    recall_choice recall;
    int want_s16;
    fkv_status st = read_env(&recall, &want_s16);
    if (st != FKV_OK)
        return st;
    fkv_bdev *d = calloc(1, sizeof *d);
    if (d == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: device handle");
    pthread_mutex_init(&d->pipe_lock, NULL);
    pthread_mutex_init(&d->read_lock, NULL);
    pthread_mutex_init(&d->host_lock, NULL);
    atomic_init(&d->validation_errors, 0u);
    d->index = index;
    if ((st = create_instance(d, &d->instance)) != FKV_OK) {
        vk_device_close(d);
        return st == FKV_ERR_BAD_ENVIRONMENT ? st
                                             : fkv_error(FKV_ERR_NO_DEVICE, "vulkan: no device %u "
                                                                            "(no Vulkan driver)",
                                                         index);
    }
    VkPhysicalDevice p[MAX_DEVICES];
    uint32_t n = enumerate(d->instance, p, MAX_DEVICES);
    if (index >= n) {
        vk_device_close(d);
        return fkv_error(FKV_ERR_NO_DEVICE, "vulkan: no device %u (%u found)", index, n);
    }
    d->phys = p[index];
    fill_info(d->phys, index, &d->info);
    d->is_cpu = d->info.type == FKV_DEVICE_CPU;
    int has_ext_host = has_device_ext(d->phys, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME);
    if (recall == RECALL_HOSTPTR && !has_ext_host) {
        st = fkv_error(FKV_ERR_UNSUPPORTED,
                       "FREEKV_VULKAN_RECALL=hostptr: device '%s' lacks "
                       "VK_EXT_external_memory_host (use auto, staged, regions or perpage)",
                       d->info.name);
        vk_device_close(d);
        return st;
    }
    /* auto: zero-copy recall exactly where it pays, imported host memory on a GPU, and only
     * once an import has been seen to work; anything else falls back to staged, saying why
     * (recall_note, printed by freekv-info). */
    int automatic = recall == RECALL_AUTO;
    d->ext_host = has_ext_host && (recall == RECALL_HOSTPTR || automatic);
    d->perpage_cmds = recall == RECALL_PERPAGE;
    if ((st = create_device(d, want_s16)) != FKV_OK ||
        (st = fkv_vk_temp_alloc(d, 64, 0, 0, &d->dummy)) != FKV_OK ||
        (st = fkv_vk_pipelines_init(d)) != FKV_OK) {
        vk_device_close(d);
        return fkv_error_prefix(st, "opening Vulkan device %u", index);
    }
    if (d->ext_host && (st = probe_import(d)) != FKV_OK && !automatic) {
        st = fkv_error_prefix(FKV_ERR_UNSUPPORTED, /* whatever the driver's code was */
                              "FREEKV_VULKAN_RECALL=hostptr: device '%s' cannot import host "
                                  "memory (use auto, staged, regions or perpage)",
                              d->info.name);
        vk_device_close(d);
        return st;
    }
    if (automatic) {
        recall = RECALL_STAGED;
        if (!d->ext_host) {
            snprintf(d->recall_note, sizeof d->recall_note, "auto: no VK_EXT_external_memory_host");
        } else if (st != FKV_OK) {
            snprintf(d->recall_note, sizeof d->recall_note,
                     "auto: host memory cannot be imported: %.200s", fkv_last_error());
            fkv_error_clear();
            d->info.caps &= ~(uint32_t)FKV_CAP_ZERO_COPY_HOST;
        } else if (d->is_cpu) {
            snprintf(d->recall_note, sizeof d->recall_note,
                     "auto: a CPU device, zero-copy recall gains nothing");
        } else {
            recall = RECALL_HOSTPTR;
            snprintf(d->recall_note, sizeof d->recall_note,
                     "auto: host memory imported with VK_EXT_external_memory_host");
        }
    }
    d->import_host = recall == RECALL_HOSTPTR;
    d->recall = recall == RECALL_HOSTPTR   ? FKV_RECALL_DIRECT
                : recall == RECALL_STAGED ? FKV_RECALL_STAGED
                                          : FKV_RECALL_PERPAGE;
    *out = d;
    return FKV_OK;
}

static fkv_status vk_opened_info(fkv_bdev *d, fkv_device_info *info) {
    if (d == NULL || info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "vulkan opened_info: NULL argument");
    *info = d->info;
    return FKV_OK;
}

static fkv_recall_mode vk_recall_mode(fkv_bdev *d) { return d->recall; }

static const char *vk_recall_note(fkv_bdev *d) { return d->recall_note; }

/* ---- options (docs/backend-options.md) ---- */

static const char *const settable[] = {"attention_splits", "window_bytes", "shared_memory_bytes",
                                       "allocation_limit", "break_import", NULL};
static const char *const readable[] = {
    "attention_splits", "window_bytes",     "shared_memory_bytes", "allocation_limit",
    "live_allocations", "validation_errors", "subgroup_size",      "storage_16bit",
    "import_host",      "perpage_copies",   NULL};

static fkv_status vk_set_option(fkv_bdev *d, const char *key, const char *value) {
    uint64_t v = 0;
    fkv_status st;
    if (strcmp(key, "attention_splits") == 0) {
        if ((st = fkv_option_uint("vulkan", key, value, FKV_MAX_SPLITS, &v)) == FKV_OK)
            d->forced_splits = (uint32_t)v;
    } else if (strcmp(key, "window_bytes") == 0) {
        /* never more than the device's range; 0: maxStorageBufferRange */
        if ((st = fkv_option_uint("vulkan", key, value, UINT64_MAX, &v)) == FKV_OK)
            d->window_override = v < d->max_range ? v : 0;
    } else if (strcmp(key, "shared_memory_bytes") == 0) {
        if ((st = fkv_option_uint("vulkan", key, value, UINT64_MAX, &v)) == FKV_OK)
            d->max_shared = v && v < d->max_shared_device ? (uint32_t)v : d->max_shared_device;
    } else if (strcmp(key, "allocation_limit") == 0) {
        if ((st = fkv_option_uint("vulkan", key, value, UINT64_MAX, &v)) == FKV_OK)
            d->max_allocs = v && v < d->max_allocs_device ? (uint32_t)v : d->max_allocs_device;
    } else if (strcmp(key, "break_import") == 0) {
        if ((st = fkv_option_uint("vulkan", key, value, 1, &v)) == FKV_OK)
            atomic_store(&fkv_vk_import_broken, (int)v);
    } else {
        st = fkv_option_unknown("vulkan", "settable", key, settable);
    }
    return st;
}

static fkv_status vk_get_option(fkv_bdev *d, const char *key, char *out, size_t size) {
    uint64_t v;
    if (strcmp(key, "attention_splits") == 0)
        v = d->forced_splits;
    else if (strcmp(key, "window_bytes") == 0)
        v = d->window_override;
    else if (strcmp(key, "shared_memory_bytes") == 0)
        v = d->max_shared;
    else if (strcmp(key, "allocation_limit") == 0)
        v = d->max_allocs;
    else if (strcmp(key, "live_allocations") == 0)
        v = atomic_load(&d->live_allocs);
    else if (strcmp(key, "validation_errors") == 0)
        v = atomic_load(&d->validation_errors);
    else if (strcmp(key, "subgroup_size") == 0)
        v = d->subgroup;
    else if (strcmp(key, "storage_16bit") == 0)
        v = (uint64_t)d->s16;
    else if (strcmp(key, "import_host") == 0)
        v = (uint64_t)d->import_host;
    else if (strcmp(key, "perpage_copies") == 0)
        v = (uint64_t)d->perpage_cmds;
    else
        return fkv_option_unknown("vulkan", "readable", key, readable);
    return fkv_option_print_uint("vulkan", key, v, out, size);
}

/* ---- the table ---- */

static const fkv_backend_ops vulkan_ops = {
    .abi_version = FKV_BACKEND_ABI_VERSION,
    .struct_size = sizeof(fkv_backend_ops),
    .name = "vulkan",
    .device_count = vk_device_count,
    .device_info = vk_device_info,
    .device_open = vk_device_open,
    .device_close = vk_device_close,
    .buffer_alloc = vk_buffer_alloc,
    .buffer_free = vk_buffer_free,
    .host_alloc = vk_host_alloc,
    .host_free = vk_host_free,
    .event_wait = vk_event_wait,
    .event_release = vk_event_release,
    .marker = fkv_vk_marker,
    .finish = vk_finish,
    .write = vk_write,
    .read = vk_read,
    .copy = vk_copy,
    .append = fkv_vk_append,
    .summarize = fkv_vk_summarize,
    .scores = fkv_vk_scores,
    .cosine_flags = fkv_vk_cosine_flags,
    .pack_hnd = fkv_vk_pack_hnd,
    .scatter_hnd = fkv_vk_scatter_hnd,
    .attention = fkv_vk_attention,
    .buffer_import = vk_buffer_import,
    .write_regions = vk_write_regions,
    .attention_dense = fkv_vk_attention_dense,
    .recall_direct = fkv_vk_recall_direct,
    .recall_mode = vk_recall_mode,
    .opened_info = vk_opened_info,
    .check_geometry = fkv_vk_check_geometry,
    .recall_note = vk_recall_note,
    .set_option = vk_set_option,
    .get_option = vk_get_option,
};

const fkv_backend_ops *fkv_backend_vulkan(void) { return &vulkan_ops; }
