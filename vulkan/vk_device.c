/* The Vulkan backend's devices: the instance (and the validation layer's messenger),
 * enumeration, opening and closing (the logical device, its queues, the recall mode), the
 * environment, the options, and the ops table. Layer 5 of the backend, the top: errors
 * (vk_error.c) -> memory (vk_memory.c) -> submission (vk_submit.c) -> kernels (vk_pipeline.c,
 * then vk_kernels.c) -> device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../backends/option.h"
#include "../common/env.h"
#include "../common/error.h"
#include "vk_internal.h"

#define MAX_DEVICES 16
#define FREEKV_VK_API_VERSION VK_API_VERSION_1_2 /* of the instances freekv creates */

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
                             FREEKV_VK_API_VERSION};
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

#define NO_FAMILY UINT32_MAX

int fkv_vk_plan_queues(const VkQueueFamilyProperties *fp, uint32_t n, vk_queue_plan *plan) {
    memset(plan, 0, sizeof *plan);
    uint32_t compute = NO_FAMILY, async = NO_FAMILY, transfer = NO_FAMILY;
    for (uint32_t i = 0; i < n; i++) {
        VkQueueFlags f = fp[i].queueFlags;
        if (fp[i].queueCount == 0)
            continue;
        if ((f & VK_QUEUE_COMPUTE_BIT) && compute == NO_FAMILY)
            compute = i;
        else if ((f & VK_QUEUE_COMPUTE_BIT) && !(f & VK_QUEUE_GRAPHICS_BIT) && async == NO_FAMILY)
            async = i;
        /* transfer-only: copies run there beside the kernels (discrete AMD, NVIDIA) */
        if ((f & VK_QUEUE_TRANSFER_BIT) && !(f & (VK_QUEUE_COMPUTE_BIT | VK_QUEUE_GRAPHICS_BIT)) &&
            transfer == NO_FAMILY)
            transfer = i;
    }
    if (compute == NO_FAMILY)
        return 0;
    uint32_t used_compute = 1, used_async = 0;
    plan->family[FKV_QUEUE_COMPUTE] = compute;
    plan->index[FKV_QUEUE_COMPUTE] = 0;
    plan->family[FKV_QUEUE_BACKGROUND] = compute; /* alone: shares COMPUTE's queue */
    if (fp[compute].queueCount > used_compute)
        plan->index[FKV_QUEUE_BACKGROUND] = used_compute++;
    else if (async != NO_FAMILY)
        plan->family[FKV_QUEUE_BACKGROUND] = async, plan->index[FKV_QUEUE_BACKGROUND] = used_async++;
    plan->family[FKV_QUEUE_TRANSFER] = compute; /* alone: shares COMPUTE's queue */
    if (transfer != NO_FAMILY)
        plan->family[FKV_QUEUE_TRANSFER] = transfer;
    else if (async != NO_FAMILY && fp[async].queueCount > used_async)
        plan->family[FKV_QUEUE_TRANSFER] = async, plan->index[FKV_QUEUE_TRANSFER] = used_async++;
    else if (fp[compute].queueCount > used_compute)
        plan->index[FKV_QUEUE_TRANSFER] = used_compute++;
    /* the distinct families, each with as many queues as the plan uses of it */
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        uint32_t k = 0;
        while (k < plan->n_families && plan->families[k] != plan->family[q])
            k++;
        if (k == plan->n_families)
            plan->families[plan->n_families++] = plan->family[q];
        if (plan->count[k] < plan->index[q] + 1)
            plan->count[k] = plan->index[q] + 1;
    }
    return 1;
}

/* The device's queue families (at most 16: no device exposes more) and the plan over them. */
static int plan_device_queues(VkPhysicalDevice p, vk_queue_plan *plan) {
    VkQueueFamilyProperties fp[16];
    uint32_t n = 16;
    vkGetPhysicalDeviceQueueFamilyProperties(p, &n, fp);
    return fkv_vk_plan_queues(fp, n, plan);
}

static int same_queue(const vk_queue_plan *plan, fkv_queue a, fkv_queue b) {
    return plan->family[a] == plan->family[b] && plan->index[a] == plan->index[b];
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

    vk_queue_plan plan;
    int cpu = info->type == FKV_DEVICE_CPU;
    info->caps = FKV_CAP_ASYNC_COPY | FKV_CAP_DEVICE_WAIT | FKV_CAP_FP16_STORAGE |
                 FKV_CAP_MULTI_REGION_COPY;
    if (plan_device_queues(p, &plan) && !same_queue(&plan, FKV_QUEUE_TRANSFER, FKV_QUEUE_COMPUTE))
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

/* ---- devices ---- */

/* Waits until every command freekv submitted has completed: the whole device when it is
 * freekv's, only freekv's own timelines on the engine's (whose queues may be busy, and whose
 * vkDeviceWaitIdle would need every queue's external synchronisation). */
static void wait_own_work(fkv_bdev *d) {
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) /* what was recorded runs, as if submitted */
        fkv_vk_flush(d, (fkv_queue)q);
    if (!d->engine_device) {
        vkDeviceWaitIdle(d->dev);
        return;
    }
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        vk_fqueue *fq = &d->q[q];
        if (fq->timeline == VK_NULL_HANDLE || fq->submitted == 0)
            continue;
        VkSemaphoreWaitInfo wi = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO,
                                  .semaphoreCount = 1,
                                  .pSemaphores = &fq->timeline,
                                  .pValues = &fq->submitted};
        vkWaitSemaphores(d->dev, &wi, UINT64_MAX);
    }
}

static void vk_device_close(fkv_bdev *d) {
    if (d == NULL)
        return;
    if (d->dev) {
        wait_own_work(d);
        fkv_vk_sweep_reads(d);
        for (uint32_t i = 0; i < d->n_reads; i++) /* unreachable values: never submitted */
            fkv_vk_temp_free(d, &d->reads[i].temp);
        fkv_vk_pipelines_destroy(d);
        for (int q = 0; q < FKV_QUEUE_COUNT; q++)
            fkv_vk_fqueue_destroy(d, &d->q[q]);
        fkv_vk_temp_free(d, &d->dummy);
        for (uint32_t i = 0; i < d->n_hosts; i++) { /* leaked by the caller: still unmapped */
            vkDestroyBuffer(d->dev, d->hosts[i]->buf, NULL);
            vkFreeMemory(d->dev, d->hosts[i]->mem, NULL);
            free(d->hosts[i]->raw);
            free(d->hosts[i]);
        }
        if (!d->engine_device)
            vkDestroyDevice(d->dev, NULL);
    }
    if (d->messenger) {
        PFN_vkDestroyDebugUtilsMessengerEXT destroy = (PFN_vkDestroyDebugUtilsMessengerEXT)
            vkGetInstanceProcAddr(d->instance, "vkDestroyDebugUtilsMessengerEXT");
        if (destroy)
            destroy(d->instance, d->messenger, NULL);
    }
    if (d->instance && !d->engine_device)
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

/* A device object with its locks, before any Vulkan object. */
static fkv_bdev *new_device(uint32_t index) {
    fkv_bdev *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    pthread_mutex_init(&d->pipe_lock, NULL);
    pthread_mutex_init(&d->read_lock, NULL);
    pthread_mutex_init(&d->host_lock, NULL);
    atomic_init(&d->validation_errors, 0u);
    d->index = index;
    return d;
}

/* The device's compute units (split decisions fill them), from the vendor extension that
 * exposes them; Vulkan has no portable count, so otherwise a guess that fills the device's
 * queue. `source` names where the figure came from (option compute_units_source). A struct is
 * chained only when the device has its extension. */
static uint32_t compute_units(VkPhysicalDevice p, int is_cpu, const char **source) {
    VkPhysicalDeviceShaderCorePropertiesAMD amd = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_CORE_PROPERTIES_AMD};
    VkPhysicalDeviceShaderSMBuiltinsPropertiesNV nv = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_SM_BUILTINS_PROPERTIES_NV};
    VkPhysicalDeviceShaderCoreBuiltinsPropertiesARM arm = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_CORE_BUILTINS_PROPERTIES_ARM};
    VkPhysicalDeviceProperties2 pr = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2};
    uint32_t n = 0;
    if (has_device_ext(p, VK_AMD_SHADER_CORE_PROPERTIES_EXTENSION_NAME)) {
        pr.pNext = &amd;
        vkGetPhysicalDeviceProperties2(p, &pr);
        n = amd.shaderEngineCount * amd.shaderArraysPerEngineCount * amd.computeUnitsPerShaderArray;
        *source = VK_AMD_SHADER_CORE_PROPERTIES_EXTENSION_NAME;
    } else if (has_device_ext(p, VK_NV_SHADER_SM_BUILTINS_EXTENSION_NAME)) {
        pr.pNext = &nv;
        vkGetPhysicalDeviceProperties2(p, &pr);
        n = nv.shaderSMCount;
        *source = VK_NV_SHADER_SM_BUILTINS_EXTENSION_NAME;
    } else if (has_device_ext(p, VK_ARM_SHADER_CORE_BUILTINS_EXTENSION_NAME)) {
        pr.pNext = &arm;
        vkGetPhysicalDeviceProperties2(p, &pr);
        n = arm.shaderCoreCount;
        *source = VK_ARM_SHADER_CORE_BUILTINS_EXTENSION_NAME;
    }
    if (n == 0) { /* no extension (Intel has none, nor lavapipe), or it said 0 */
        /* a CPU device gets more than its cores: many work-groups keep lavapipe's threads
         * busy when the host is shared (2026-12-02: the host's 2 cores made dense attention
         * slower on a loaded machine, docs/bench.md) */
        n = is_cpu ? 16 : 64;
        *source = is_cpu ? "default for a CPU device (no extension exposes a count)"
                         : "default for a GPU (no extension exposes a count)";
    }
    return n;
}

/* The properties and limits of d->phys that launches are planned by; *eh receives the
 * external-memory-host properties when d->ext_host. */
static void read_limits(fkv_bdev *d, VkPhysicalDeviceExternalMemoryHostPropertiesEXT *eh) {
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(d->phys, &props);
    VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    /* an extension's struct only when the device has the extension */
    *eh = (VkPhysicalDeviceExternalMemoryHostPropertiesEXT){.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_EXTERNAL_MEMORY_HOST_PROPERTIES_EXT, .pNext = &sg};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2,
                                      .pNext = d->ext_host ? (void *)eh : (void *)&sg};
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
    d->compute_units = compute_units(d->phys, d->is_cpu, &d->compute_units_source);
    d->fused_reduce = 1;
    if (d->ext_host)
        d->import_align = eh->minImportedHostPointerAlignment ? eh->minImportedHostPointerAlignment
                                                              : 4096;
}

/* The fkv_queues on their VkQueues: q runs on queue[q] (of family[q], index index[q]); one
 * vk_hwqueue per distinct VkQueue, buffers shared concurrently between distinct families. */
static fkv_status setup_queues(fkv_bdev *d, const uint32_t *family, const uint32_t *index,
                               const VkQueue *queue) {
    if (d->ext_host)
        d->get_host_ptr_props = (PFN_vkGetMemoryHostPointerPropertiesEXT)vkGetDeviceProcAddr(
            d->dev, "vkGetMemoryHostPointerPropertiesEXT");
    /* No ownership transfers between families: buffers are shared concurrently. */
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        uint32_t k = 0;
        while (k < d->n_families && d->families[k] != family[q])
            k++;
        if (k == d->n_families)
            d->families[d->n_families++] = family[q];
    }
    d->concurrent = d->n_families > 1;
    static const char *const qnames[FKV_QUEUE_COUNT] = {
        [FKV_QUEUE_COMPUTE] = "compute", [FKV_QUEUE_TRANSFER] = "transfer",
        [FKV_QUEUE_BACKGROUND] = "background"};
    static const fkv_queue order[FKV_QUEUE_COUNT] = {FKV_QUEUE_COMPUTE, FKV_QUEUE_BACKGROUND,
                                                     FKV_QUEUE_TRANSFER};
    size_t len = 0;
    fkv_status st;
    for (int i = 0; i < FKV_QUEUE_COUNT; i++) {
        fkv_queue q = order[i];
        uint32_t h = 0;
        while (h < d->n_hw && d->hw[h].queue != queue[q])
            h++;
        int shared = h < d->n_hw;
        if (!shared) {
            d->hw[h].queue = queue[q];
            d->hw[h].family = family[q];
            d->hw[h].index = index[q];
            pthread_mutex_init(&d->hw[d->n_hw++].lock, NULL);
        }
        if (len < sizeof d->queue_note)
            len += (size_t)snprintf(d->queue_note + len, sizeof d->queue_note - len,
                                    "%s%s family %u queue %u%s", i ? ", " : "", qnames[q],
                                    family[q], index[q], shared ? " (shared)" : "");
        if ((st = fkv_vk_fqueue_init(d, &d->q[q], &d->hw[h], q != FKV_QUEUE_TRANSFER)) != FKV_OK)
            return st;
    }
    return FKV_OK;
}

static fkv_status create_device(fkv_bdev *d, int want_s16) {
    VkPhysicalDeviceExternalMemoryHostPropertiesEXT eh;
    read_limits(d, &eh);

    VkPhysicalDevice16BitStorageFeatures f16 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES, .pNext = &f16};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f12};
    vkGetPhysicalDeviceFeatures2(d->phys, &f2);
    d->s16 = want_s16 && f16.storageBuffer16BitAccess;
    /* only zero-copy recall reads through device addresses */
    d->bda = d->ext_host && f12.bufferDeviceAddress;

    VkPhysicalDevice16BitStorageFeatures en16 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES};
    en16.storageBuffer16BitAccess = d->s16 ? VK_TRUE : VK_FALSE;
    VkPhysicalDeviceVulkan12Features en12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES, .pNext = &en16};
    en12.timelineSemaphore = VK_TRUE;
    en12.bufferDeviceAddress = d->bda ? VK_TRUE : VK_FALSE;
    VkPhysicalDeviceFeatures2 en = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &en12};

    const char *exts[1];
    uint32_t n_exts = 0;
    if (d->ext_host)
        exts[n_exts++] = VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME;

    vk_queue_plan plan;
    if (!plan_device_queues(d->phys, &plan))
        return fkv_error(FKV_ERR_UNSUPPORTED, "vulkan: device '%s' has no compute queue",
                         d->info.name);
    float prio[FKV_QUEUE_COUNT] = {1.0f, 1.0f, 1.0f};
    VkDeviceQueueCreateInfo qi[FKV_QUEUE_COUNT];
    for (uint32_t k = 0; k < plan.n_families; k++)
        qi[k] = (VkDeviceQueueCreateInfo){.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                          .queueFamilyIndex = plan.families[k],
                                          .queueCount = plan.count[k],
                                          .pQueuePriorities = prio};
    VkDeviceCreateInfo ci = {VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, &en, 0, plan.n_families, qi, 0,
                             NULL, n_exts, exts, NULL};
    VkResult r = vkCreateDevice(d->phys, &ci, NULL, &d->dev);
    if (r != VK_SUCCESS)
        return fkv_vk_fail(r, "vkCreateDevice");
    VkQueue queues[FKV_QUEUE_COUNT];
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        vkGetDeviceQueue(d->dev, plan.family[q], plan.index[q], &queues[q]);
    return setup_queues(d, plan.family, plan.index, queues);
}

/* The first objects of both opens once the VkDevice and queues exist: the dummy binding and
 * the pipelines. */
static fkv_status init_resources(fkv_bdev *d) {
    fkv_status st = fkv_vk_temp_alloc(d, 64, 0, 0, &d->dummy);
    return st == FKV_OK ? fkv_vk_pipelines_init(d) : st;
}

/* The recall mode: recall as chosen, or auto's choice. */
static fkv_status choose_recall(fkv_bdev *d, recall_choice recall) {
    fkv_status st = FKV_OK;
    int automatic = recall == RECALL_AUTO;
    if (d->ext_host && (st = fkv_vk_probe_import(d)) != FKV_OK && !automatic)
        return fkv_error_prefix(FKV_ERR_UNSUPPORTED, /* whatever the driver's code was */
                                "FREEKV_VULKAN_RECALL=hostptr: device '%s' cannot import host "
                                    "memory (use auto, staged, regions or perpage)",
                                d->info.name);
    /* auto: zero-copy recall exactly where it pays, imported host memory on a GPU, and only
     * once an import has been seen to work; anything else falls back to staged, saying why
     * (recall_note, printed by freekv-info). */
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
    if (d->import_host) /* the opened device's kernels read host memory, even a CPU's */
        d->info.caps |= FKV_CAP_ZERO_COPY_HOST;
    d->recall = recall == RECALL_HOSTPTR   ? FKV_RECALL_DIRECT
                : recall == RECALL_STAGED ? FKV_RECALL_STAGED
                                          : FKV_RECALL_PERPAGE;
    return FKV_OK;
}

/* FREEKV_VULKAN_RECALL=hostptr on a device where the extension is not there (has_ext 0). */
static fkv_status check_hostptr(recall_choice recall, int has_ext, const char *name,
                                const char *where) {
    if (recall == RECALL_HOSTPTR && !has_ext)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "FREEKV_VULKAN_RECALL=hostptr: device '%s' %s "
                         "VK_EXT_external_memory_host (use auto, staged, regions or perpage)",
                         name, where);
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
    fkv_bdev *d = new_device(index);
    if (d == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: device handle");
    d->api_version = FREEKV_VK_API_VERSION;
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
    if ((st = check_hostptr(recall, has_ext_host, d->info.name, "lacks")) != FKV_OK) {
        vk_device_close(d);
        return st;
    }
    d->ext_host = has_ext_host && (recall == RECALL_HOSTPTR || recall == RECALL_AUTO);
    d->perpage_cmds = recall == RECALL_PERPAGE;
    if ((st = create_device(d, want_s16)) != FKV_OK || (st = init_resources(d)) != FKV_OK) {
        vk_device_close(d);
        return fkv_error_prefix(st, "opening Vulkan device %u", index);
    }
    if ((st = choose_recall(d, recall)) != FKV_OK) {
        vk_device_close(d);
        return st;
    }
    *out = d;
    return FKV_OK;
}

/* ---- the engine's objects (fkv_device_open_native) ---- */

/* What the engine enabled of what freekv needs or uses, from the pNext chain it gave
 * vkCreateDevice. */
typedef struct engine_features {
    int timeline, s16, bda;
} engine_features;

static engine_features enabled_features(const void *chain) {
    engine_features f = {0, 0, 0};
    for (const VkBaseInStructure *s = chain; s != NULL; s = s->pNext) {
        switch (s->sType) {
        case VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES:
            f.timeline |= ((const VkPhysicalDeviceVulkan12Features *)s)->timelineSemaphore;
            f.bda |= ((const VkPhysicalDeviceVulkan12Features *)s)->bufferDeviceAddress;
            break;
        case VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_BUFFER_DEVICE_ADDRESS_FEATURES:
            f.bda |= ((const VkPhysicalDeviceBufferDeviceAddressFeatures *)s)->bufferDeviceAddress;
            break;
        case VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_TIMELINE_SEMAPHORE_FEATURES:
            f.timeline |=
                ((const VkPhysicalDeviceTimelineSemaphoreFeatures *)s)->timelineSemaphore;
            break;
        case VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES:
            f.s16 |= ((const VkPhysicalDeviceVulkan11Features *)s)->storageBuffer16BitAccess;
            break;
        case VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES:
            f.s16 |= ((const VkPhysicalDevice16BitStorageFeatures *)s)->storageBuffer16BitAccess;
            break;
        default:
            break;
        }
    }
    return f;
}

static int engine_has_ext(const fkv_vulkan_objects *o, const char *name) {
    for (uint32_t i = 0; o->enabled_extensions && i < o->n_enabled_extensions; i++)
        if (o->enabled_extensions[i] && strcmp(o->enabled_extensions[i], name) == 0)
            return 1;
    return 0;
}

/* Queue q of the engine's objects, a NULL transfer or background queue being the compute
 * queue. */
static const fkv_vulkan_queue *engine_queue(const fkv_vulkan_objects *o, fkv_queue q) {
    return o->queues[q].queue ? &o->queues[q] : &o->queues[FKV_QUEUE_COMPUTE];
}

/* The families of the queues freekv is given exist and can run what freekv runs on them. */
static fkv_status check_engine_queues(const fkv_vulkan_objects *o) {
    VkQueueFamilyProperties fp[16];
    uint32_t n = 16;
    vkGetPhysicalDeviceQueueFamilyProperties((VkPhysicalDevice)o->physical_device, &n, fp);
    static const char *const names[FKV_QUEUE_COUNT] = {
        [FKV_QUEUE_COMPUTE] = "compute", [FKV_QUEUE_TRANSFER] = "transfer",
        [FKV_QUEUE_BACKGROUND] = "background"};
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        const fkv_vulkan_queue *eq = engine_queue(o, (fkv_queue)q);
        /* kernels run on compute and background; copies need transfer, implied by both */
        VkQueueFlags need = q == FKV_QUEUE_TRANSFER
                                ? VK_QUEUE_TRANSFER_BIT | VK_QUEUE_COMPUTE_BIT | VK_QUEUE_GRAPHICS_BIT
                                : VK_QUEUE_COMPUTE_BIT;
        if (eq->family >= n)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "vulkan open_native: the %s queue's family %u does not exist (%u "
                             "families)",
                             names[q], eq->family, n);
        if (!(fp[eq->family].queueFlags & need))
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "vulkan open_native: the %s queue's family %u cannot run %s",
                             names[q], eq->family,
                             q == FKV_QUEUE_TRANSFER ? "copies" : "compute shaders");
    }
    return FKV_OK;
}

/* Everything freekv needs of the engine's objects, before it touches them. */
static fkv_status check_engine_objects(const fkv_vulkan_objects *o, const engine_features *f) {
    if (o->instance == NULL || o->physical_device == NULL || o->device == NULL ||
        o->queues[FKV_QUEUE_COMPUTE].queue == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "vulkan open_native: NULL instance, physical device, device or compute "
                         "queue");
    if ((o->lock_queue == NULL) != (o->unlock_queue == NULL))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "vulkan open_native: lock_queue and unlock_queue go together");
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties((VkPhysicalDevice)o->physical_device, &props);
    uint32_t v = o->api_version < props.apiVersion ? o->api_version : props.apiVersion;
    if (v < VK_API_VERSION_1_2)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan open_native: Vulkan %u.%u (instance %u.%u, device '%s' %u.%u); "
                         "freekv needs 1.2 (vkWaitSemaphores, timeline semaphores)",
                         VK_API_VERSION_MAJOR(v), VK_API_VERSION_MINOR(v),
                         VK_API_VERSION_MAJOR(o->api_version), VK_API_VERSION_MINOR(o->api_version),
                         props.deviceName, VK_API_VERSION_MAJOR(props.apiVersion),
                         VK_API_VERSION_MINOR(props.apiVersion));
    if (!f->timeline)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan open_native: the engine created device '%s' without the "
                         "timelineSemaphore feature (VkPhysicalDeviceVulkan12Features or "
                         "VkPhysicalDeviceTimelineSemaphoreFeatures in VkDeviceCreateInfo.pNext, "
                         "given as enabled_features); freekv orders its queues with timeline "
                         "semaphores",
                         props.deviceName);
    if ((o->flags & FKV_VULKAN_REQUIRE_16BIT_STORAGE) && !f->s16)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "vulkan open_native: FKV_VULKAN_REQUIRE_16BIT_STORAGE, but the engine "
                         "created device '%s' without storageBuffer16BitAccess "
                         "(VkPhysicalDeviceVulkan11Features or VkPhysicalDevice16BitStorageFeatures)",
                         props.deviceName);
    return check_engine_queues(o);
}

static fkv_status vk_device_open_native(const fkv_native_objects *objs, fkv_bdev **out) {
    const fkv_vulkan_objects *o = &objs->vulkan;
    *out = NULL;
    engine_features f = enabled_features(o->enabled_features);
    fkv_status st = check_engine_objects(o, &f);
    recall_choice recall;
    int want_s16;
    if (st == FKV_OK)
        st = read_env(&recall, &want_s16);
    if (st != FKV_OK)
        return st;
    int has_ext_host = engine_has_ext(o, VK_EXT_EXTERNAL_MEMORY_HOST_EXTENSION_NAME);
    VkPhysicalDevice phys = (VkPhysicalDevice)o->physical_device;
    /* its position in freekv's enumeration of the engine's instance, as freekv-info lists it */
    VkPhysicalDevice p[MAX_DEVICES];
    uint32_t n = enumerate((VkInstance)o->instance, p, MAX_DEVICES), index = UINT32_MAX;
    for (uint32_t i = 0; i < n && index == UINT32_MAX; i++)
        if (p[i] == phys)
            index = i;
    fkv_bdev *d = new_device(index);
    if (d == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: device handle");
    d->engine_device = 1;
    d->api_version = o->api_version;
    d->instance = (VkInstance)o->instance;
    d->phys = phys;
    d->lock_queue = o->lock_queue;
    d->unlock_queue = o->unlock_queue;
    d->lock_user = o->lock_user;
    fill_info(phys, index, &d->info);
    d->is_cpu = d->info.type == FKV_DEVICE_CPU;
    /* the capabilities of what the engine enabled and handed in, not of the device */
    const fkv_vulkan_queue *cq = engine_queue(o, FKV_QUEUE_COMPUTE),
                           *tq = engine_queue(o, FKV_QUEUE_TRANSFER);
    d->info.caps &= ~(uint32_t)(FKV_CAP_SEPARATE_TRANSFER_QUEUE | FKV_CAP_ZERO_COPY_HOST);
    if (tq->queue != cq->queue)
        d->info.caps |= FKV_CAP_SEPARATE_TRANSFER_QUEUE;
    if (has_ext_host && !d->is_cpu)
        d->info.caps |= FKV_CAP_ZERO_COPY_HOST;
    if ((st = check_hostptr(recall, has_ext_host, d->info.name,
                            "was created by the engine without")) != FKV_OK) {
        vk_device_close(d);
        return st;
    }
    d->dev = (VkDevice)o->device; /* from here on close cleans up what freekv made on it */
    d->ext_host = has_ext_host && (recall == RECALL_HOSTPTR || recall == RECALL_AUTO);
    d->perpage_cmds = recall == RECALL_PERPAGE;
    VkPhysicalDeviceExternalMemoryHostPropertiesEXT eh;
    read_limits(d, &eh);
    d->s16 = want_s16 && f.s16;
    d->bda = d->ext_host && f.bda;
    uint32_t family[FKV_QUEUE_COUNT], qindex[FKV_QUEUE_COUNT];
    VkQueue queues[FKV_QUEUE_COUNT];
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) {
        const fkv_vulkan_queue *eq = engine_queue(o, (fkv_queue)q);
        family[q] = eq->family;
        qindex[q] = eq->index;
        queues[q] = (VkQueue)eq->queue;
    }
    if ((st = setup_queues(d, family, qindex, queues)) != FKV_OK ||
        (st = init_resources(d)) != FKV_OK || (st = choose_recall(d, recall)) != FKV_OK) {
        vk_device_close(d);
        return st;
    }
    *out = d;
    return FKV_OK;
}

static fkv_status vk_native_objects(fkv_bdev *d, fkv_native_objects *out) {
    fkv_vulkan_objects *o = &out->vulkan;
    out->api = FKV_NATIVE_VULKAN;
    *o = (fkv_vulkan_objects){.api_version = d->api_version,
                              .instance = d->instance,
                              .physical_device = d->phys,
                              .device = d->dev,
                              .lock_queue = fkv_vk_lock_queue,
                              .unlock_queue = fkv_vk_unlock_queue,
                              .lock_user = d};
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        o->queues[q] = (fkv_vulkan_queue){.queue = d->q[q].hw->queue,
                                          .family = d->q[q].hw->family,
                                          .index = d->q[q].hw->index};
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
                                       "allocation_limit", "break_import", "separate_streams",
                                       "attention_fused_reduce", NULL};
static const char *const readable[] = {
    "attention_splits", "window_bytes",     "shared_memory_bytes", "allocation_limit",
    "live_allocations", "validation_errors", "subgroup_size",      "storage_16bit",
    "import_host",      "perpage_copies",   "queues",              "compute_units",
    "compute_units_source", "allocations", "submits", "separate_streams", "device_addresses",
    "attention_fused_reduce", NULL};

static fkv_status vk_set_option(fkv_bdev *d, const char *key, const char *value) {
    uint64_t v = 0;
    fkv_status st;
    if (strcmp(key, "attention_splits") == 0) {
        st = fkv_option_splits("vulkan", key, value, &d->forced_splits);
    } else if (strcmp(key, "window_bytes") == 0) {
        /* 0 (stored for maxStorageBufferRange) when it does not lower the range */
        if ((st = fkv_option_limit("vulkan", key, value, d->max_range, &v)) == FKV_OK)
            d->window_override = v < d->max_range ? v : 0;
    } else if (strcmp(key, "shared_memory_bytes") == 0) {
        if ((st = fkv_option_limit("vulkan", key, value, d->max_shared_device, &v)) == FKV_OK)
            d->max_shared = (uint32_t)v;
    } else if (strcmp(key, "allocation_limit") == 0) {
        if ((st = fkv_option_limit("vulkan", key, value, d->max_allocs_device, &v)) == FKV_OK)
            d->max_allocs = (uint32_t)v;
    } else if (strcmp(key, "break_import") == 0) {
        if ((st = fkv_option_uint("vulkan", key, value, 1, &v)) == FKV_OK)
            atomic_store(&fkv_vk_import_broken, (int)v);
    } else if (strcmp(key, "separate_streams") == 0) {
        if ((st = fkv_option_uint("vulkan", key, value, 1, &v)) == FKV_OK)
            d->separate_streams = (int)v;
    } else if (strcmp(key, "attention_fused_reduce") == 0) {
        if ((st = fkv_option_uint("vulkan", key, value, 1, &v)) == FKV_OK)
            d->fused_reduce = (int)v;
    } else {
        st = fkv_option_unknown("vulkan", "settable", key, settable);
    }
    return st;
}

static fkv_status vk_get_option(fkv_bdev *d, const char *key, char *out, size_t size) {
    uint64_t v;
    const char *text = strcmp(key, "queues") == 0                 ? d->queue_note
                       : strcmp(key, "compute_units_source") == 0 ? d->compute_units_source
                                                                  : NULL;
    if (text) {
        int n = snprintf(out, size, "%s", text);
        if (n < 0 || (size_t)n >= size)
            return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                             "vulkan option %s: %zu bytes are too few for '%s'", key, size, text);
        return FKV_OK;
    }
    if (strcmp(key, "attention_splits") == 0)
        v = d->forced_splits;
    else if (strcmp(key, "attention_fused_reduce") == 0)
        v = (uint64_t)d->fused_reduce;
    else if (strcmp(key, "window_bytes") == 0)
        v = d->window_override;
    else if (strcmp(key, "shared_memory_bytes") == 0)
        v = d->max_shared;
    else if (strcmp(key, "allocation_limit") == 0)
        v = d->max_allocs;
    else if (strcmp(key, "live_allocations") == 0)
        v = atomic_load(&d->live_allocs);
    else if (strcmp(key, "allocations") == 0) /* every vkAllocateMemory that succeeded */
        v = atomic_load(&d->counters.device_allocs) + atomic_load(&d->counters.host_allocs);
    else if (strcmp(key, "submits") == 0) { /* every vkQueueSubmit */
        v = 0;
        for (int q = 0; q < FKV_QUEUE_COUNT; q++)
            v += atomic_load(&d->counters.submits[q]);
    } else if (strcmp(key, "validation_errors") == 0)
        v = atomic_load(&d->validation_errors);
    else if (strcmp(key, "subgroup_size") == 0)
        v = d->subgroup;
    else if (strcmp(key, "storage_16bit") == 0)
        v = (uint64_t)d->s16;
    else if (strcmp(key, "import_host") == 0)
        v = (uint64_t)d->import_host;
    else if (strcmp(key, "device_addresses") == 0)
        v = (uint64_t)(d->bda && d->import_host);
    else if (strcmp(key, "perpage_copies") == 0)
        v = (uint64_t)d->perpage_cmds;
    else if (strcmp(key, "separate_streams") == 0)
        v = (uint64_t)d->separate_streams;
    else if (strcmp(key, "compute_units") == 0)
        v = d->compute_units;
    else
        return fkv_option_unknown("vulkan", "readable", key, readable);
    return fkv_option_print_uint("vulkan", key, v, out, size);
}

/* ---- the table ---- */

static const fkv_bcounters *vk_counters(fkv_bdev *d) { return &d->counters; }

static const fkv_backend_ops vulkan_ops = {
    .abi_version = FKV_BACKEND_ABI_VERSION,
    .struct_size = sizeof(fkv_backend_ops),
    .name = "vulkan",
    .device_count = vk_device_count,
    .device_info = vk_device_info,
    .device_open = vk_device_open,
    .device_close = vk_device_close,
    .buffer_alloc = fkv_vk_buffer_alloc,
    .buffer_free = fkv_vk_buffer_free,
    .host_alloc = fkv_vk_host_alloc,
    .host_free = fkv_vk_host_free,
    .event_wait = fkv_vk_event_wait,
    .event_release = fkv_vk_event_release,
    .marker = fkv_vk_marker,
    .finish = fkv_vk_finish,
    .write = fkv_vk_write,
    .read = fkv_vk_read,
    .copy = fkv_vk_copy,
    .append = fkv_vk_append,
    .summarize = fkv_vk_summarize,
    .scores = fkv_vk_scores,
    .cosine_flags = fkv_vk_cosine_flags,
    .pack_hnd = fkv_vk_pack_hnd,
    .scatter_hnd = fkv_vk_scatter_hnd,
    .attention = fkv_vk_attention,
    .buffer_import = fkv_vk_buffer_import,
    .write_regions = fkv_vk_write_regions,
    .attention_dense = fkv_vk_attention_dense,
    .recall_direct = fkv_vk_recall_direct,
    .direct_host_words = fkv_vk_direct_host_words,
    .recall_mode = vk_recall_mode,
    .opened_info = vk_opened_info,
    .check_geometry = fkv_vk_check_geometry,
    .host_formats = fkv_vk_host_formats,
    .recall_note = vk_recall_note,
    .set_option = vk_set_option,
    .get_option = vk_get_option,
    .counters = vk_counters,
    .select_pages = fkv_vk_select_pages,
    .native_api = FKV_NATIVE_VULKAN,
    .device_open_native = vk_device_open_native,
    .native_objects = vk_native_objects,
    .event_import = fkv_vk_event_import,
    .event_unimport = fkv_vk_event_release,
    .event_signal = fkv_vk_event_signal,
    .event_query = fkv_vk_event_query,
    .scores_check = fkv_vk_scores_check,
};

const fkv_backend_ops *fkv_backend_vulkan(void) { return &vulkan_ops; }
