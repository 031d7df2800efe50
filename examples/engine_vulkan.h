/* The Vulkan "engine" of examples/engine_vulkan.c (and of tests/test_interop_vulkan.c): an
 * instance, a device with one compute queue, a timeline semaphore, command buffers, q/k/v/out
 * buffers of its own wrapped for freekv, and one decode layer in three steps: upload (the
 * engine's copies of q/k/v on its queue, signalling its timeline), freekv after that value and
 * signalling the next when `out` is written, readback (the engine's copy of out, after it). */
#ifndef FREEKV_EXAMPLES_ENGINE_VULKAN_H
#define FREEKV_EXAMPLES_ENGINE_VULKAN_H

#include <pthread.h>
#include <vulkan/vulkan.h>

#include "engine_common.h"

typedef struct engine {
    VkInstance instance;
    VkDebugUtilsMessengerEXT messenger;
    unsigned validation_messages;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t family;
    pthread_mutex_t queue_lock; /* vkQueueSubmit's external synchronisation, shared with freekv */
    VkCommandPool pool;
    VkCommandBuffer up, down;
    VkSemaphore timeline; /* the engine's: uploads, freekv's outputs, readbacks */
    uint64_t value;
    VkBuffer bufs[5]; /* q, k, v, out (device), staging (host-visible: q|k|v|out) */
    VkDeviceMemory mems[5];
    unsigned char *staging;
    fkv_buffer *fbufs[4];
    VkDeviceSize q_bytes, kv_bytes;
} engine;
enum { B_Q, B_K, B_V, B_OUT, B_STAGING };

#define VK_OK(call, what)                                                                     \
    do {                                                                                      \
        VkResult r_ = (call);                                                                 \
        if (r_ != VK_SUCCESS)                                                                 \
            return ex_api_fail("engine_vulkan", what, (long)r_, NULL);                        \
    } while (0)

static void lock_queue(void *user, void *queue) {
    (void)queue; /* one queue */
    pthread_mutex_lock(&((engine *)user)->queue_lock);
}

static void unlock_queue(void *user, void *queue) {
    (void)queue;
    pthread_mutex_unlock(&((engine *)user)->queue_lock);
}

/* One command buffer on the engine's queue after `wait` of its timeline (0: none), signalling
 * `signal`. */
static int submit(engine *e, VkCommandBuffer cb, uint64_t wait, uint64_t signal) {
    VkPipelineStageFlags stage = VK_PIPELINE_STAGE_ALL_COMMANDS_BIT;
    VkTimelineSemaphoreSubmitInfo ti = {.sType = VK_STRUCTURE_TYPE_TIMELINE_SEMAPHORE_SUBMIT_INFO,
                                        .waitSemaphoreValueCount = wait ? 1 : 0,
                                        .pWaitSemaphoreValues = &wait,
                                        .signalSemaphoreValueCount = 1,
                                        .pSignalSemaphoreValues = &signal};
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
                       .pNext = &ti,
                       .waitSemaphoreCount = wait ? 1 : 0,
                       .pWaitSemaphores = &e->timeline,
                       .pWaitDstStageMask = &stage,
                       .commandBufferCount = 1,
                       .pCommandBuffers = &cb,
                       .signalSemaphoreCount = 1,
                       .pSignalSemaphores = &e->timeline};
    lock_queue(e, e->queue);
    VkResult r = vkQueueSubmit(e->queue, 1, &si, VK_NULL_HANDLE);
    unlock_queue(e, e->queue);
    VK_OK(r, "vkQueueSubmit");
    return 0;
}

/* Records copies between the staging buffer and the device buffers: upload (q, k, v) or not
 * (out). */
static int record(engine *e, VkCommandBuffer cb, int upload) {
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    VK_OK(vkBeginCommandBuffer(cb, &bi), "vkBeginCommandBuffer");
    VkDeviceSize off = 0;
    for (int b = B_Q; b <= B_OUT; b++) {
        VkDeviceSize size = b == B_Q || b == B_OUT ? e->q_bytes : e->kv_bytes;
        VkBufferCopy c = {.srcOffset = upload ? off : 0, .dstOffset = upload ? 0 : off,
                          .size = size};
        if (upload && b != B_OUT)
            vkCmdCopyBuffer(cb, e->bufs[B_STAGING], e->bufs[b], 1, &c);
        else if (!upload && b == B_OUT)
            vkCmdCopyBuffer(cb, e->bufs[B_OUT], e->bufs[B_STAGING], 1, &c);
        off += size;
    }
    /* the readback's writes become visible to the host once its value is reached */
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
    if (!upload)
        vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1,
                             &mb, 0, NULL, 0, NULL);
    VK_OK(vkEndCommandBuffer(cb), "vkEndCommandBuffer");
    return 0;
}

/* Copies q/k/v into the engine's buffers on its queue, after value `after` of its timeline
 * when not 0; *uploaded: the value that signals it done. */
static int engine_upload(engine *e, const float *q, const float *k, const float *v,
                         uint64_t after, uint64_t *uploaded) {
    unsigned char *s = e->staging;
    memcpy(s, q, e->q_bytes);
    memcpy(s + e->q_bytes, k, e->kv_bytes);
    memcpy(s + e->q_bytes + e->kv_bytes, v, e->kv_bytes);
    *uploaded = ++e->value;
    return record(e, e->up, 1) || submit(e, e->up, after, *uploaded);
}

/* freekv's layer on the engine's buffers, after `uploaded`; *written: the value freekv
 * signals once `out` is written. */
static int engine_decode(engine *e, fkv_context *ctx, uint32_t layer, uint64_t uploaded,
                         uint64_t *written) {
    uint32_t seq = 0;
    fkv_tensor tq = {.buffer = e->fbufs[B_Q]}, tk = {.buffer = e->fbufs[B_K]};
    fkv_tensor tv = {.buffer = e->fbufs[B_V]}, to = {.buffer = e->fbufs[B_OUT]};
    *written = ++e->value;
    fkv_native_event wait = {.handle = (void *)(uintptr_t)e->timeline, .value = uploaded};
    fkv_native_event done = {.handle = (void *)(uintptr_t)e->timeline, .value = *written};
    fkv_external_sync sync = {.n_wait = 1, .wait = &wait, .signal = &done};
    EX_CHECK(fkv_decode_layer_sync(ctx, layer, 1, &seq, &tq, &tk, &tv, &to, &sync));
    return 0;
}

/* `out` through the engine's queue once freekv signalled `written`, into out. */
static int engine_readback(engine *e, uint64_t written, float *out) {
    uint64_t read = ++e->value;
    if (record(e, e->down, 0) || submit(e, e->down, written, read))
        return 1;
    VkSemaphoreWaitInfo wi = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_WAIT_INFO,
                              .semaphoreCount = 1,
                              .pSemaphores = &e->timeline,
                              .pValues = &read};
    VK_OK(vkWaitSemaphores(e->dev, &wi, UINT64_MAX), "vkWaitSemaphores");
    memcpy(out, e->staging + e->q_bytes + 2 * e->kv_bytes, e->q_bytes);
    return e->validation_messages != 0;
}

/* examples/engine_common.h's layer, the engine's way. */
static int decode_layer(void *user, fkv_context *ctx, uint32_t layer, const float *q,
                        const float *k, const float *v, float *out) {
    engine *e = user;
    uint64_t uploaded, written;
    if (engine_upload(e, q, k, v, 0, &uploaded) || engine_decode(e, ctx, layer, uploaded, &written))
        return 1;
    return engine_readback(e, written, out);
}

static VKAPI_ATTR VkBool32 VKAPI_CALL on_validation(VkDebugUtilsMessageSeverityFlagBitsEXT sev,
                                                    VkDebugUtilsMessageTypeFlagsEXT type,
                                                    const VkDebugUtilsMessengerCallbackDataEXT *data,
                                                    void *user) {
    (void)type;
    const char *id = data->pMessageIdName ? data->pMessageIdName : "";
    if (sev & VK_DEBUG_UTILS_MESSAGE_SEVERITY_INFO_BIT_EXT) { /* which checks are on */
        if (strcmp(id, "UNASSIGNED-khronos-validation-createinstance-status-message") == 0)
            fprintf(stderr, "engine_vulkan: validation: %s\n", data->pMessage);
        return VK_FALSE;
    }
    /* the layer's own locking mode: says nothing about the API's use */
    if (strcmp(id, "UNASSIGNED-khronos-Validation-fine-grained-locking-warning-message") == 0)
        return VK_FALSE;
    ((engine *)user)->validation_messages++;
    fprintf(stderr, "engine_vulkan: validation %s: %s\n",
            sev & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT ? "error" : "warning",
            data->pMessage);
    return VK_FALSE;
}

static int create_instance(engine *e, int validate) {
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
                             .pApplicationName = "engine_vulkan",
                             .apiVersion = VK_API_VERSION_1_2};
    const char *layer = "VK_LAYER_KHRONOS_validation", *ext = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
    VkDebugUtilsMessengerCreateInfoEXT mi = {
        .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
        .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_SEVERITY_INFO_BIT_EXT,
        .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                       VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT,
        .pfnUserCallback = on_validation,
        .pUserData = e};
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
                               .pNext = validate ? &mi : NULL,
                               .pApplicationInfo = &app,
                               .enabledLayerCount = validate ? 1 : 0,
                               .ppEnabledLayerNames = &layer,
                               .enabledExtensionCount = validate ? 1 : 0,
                               .ppEnabledExtensionNames = &ext};
    if (vkCreateInstance(&ci, NULL, &e->instance) != VK_SUCCESS)
        return 0;
    if (validate) {
        PFN_vkCreateDebugUtilsMessengerEXT create = (PFN_vkCreateDebugUtilsMessengerEXT)
            vkGetInstanceProcAddr(e->instance, "vkCreateDebugUtilsMessengerEXT");
        if (create == NULL || create(e->instance, &mi, NULL, &e->messenger) != VK_SUCCESS)
            return 0;
    }
    return 1;
}

/* The engine's device: the first Vulkan 1.2 device with timeline semaphores, GPUs first. */
static int pick_device(engine *e) {
    VkPhysicalDevice p[16];
    uint32_t n = 16;
    if (vkEnumeratePhysicalDevices(e->instance, &n, p) < 0)
        return 0;
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < n; i++) {
            VkPhysicalDeviceProperties props;
            vkGetPhysicalDeviceProperties(p[i], &props);
            int gpu = props.deviceType == VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU ||
                      props.deviceType == VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU;
            if (props.apiVersion >= VK_API_VERSION_1_2 && (pass || gpu)) {
                e->phys = p[i];
                return 1;
            }
        }
    return 0;
}

/* The device with one compute queue and, of timeline semaphores and 16-bit storage, those
 * `want` asks for (ENGINE_TIMELINE, ENGINE_16BIT) that the device has; *features receives the
 * chain it was created with, for freekv. 0 when there is no compute queue or vkCreateDevice
 * fails. */
enum { ENGINE_TIMELINE = 1, ENGINE_16BIT = 2 };
static int create_device(engine *e, int want, VkPhysicalDeviceFeatures2 *features,
                         VkPhysicalDeviceVulkan11Features *f11,
                         VkPhysicalDeviceVulkan12Features *f12) {
    VkQueueFamilyProperties fp[16];
    uint32_t n = 16;
    vkGetPhysicalDeviceQueueFamilyProperties(e->phys, &n, fp);
    for (e->family = 0; e->family < n && !(fp[e->family].queueFlags & VK_QUEUE_COMPUTE_BIT);
         e->family++)
        ;
    *f11 = (VkPhysicalDeviceVulkan11Features){.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES};
    *f12 = (VkPhysicalDeviceVulkan12Features){.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES, .pNext = f11};
    *features = (VkPhysicalDeviceFeatures2){.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = f12};
    vkGetPhysicalDeviceFeatures2(e->phys, features); /* what the device has ... */
    VkBool32 s16 = f11->storageBuffer16BitAccess && (want & ENGINE_16BIT);
    VkBool32 timeline = f12->timelineSemaphore && (want & ENGINE_TIMELINE);
    *f11 = (VkPhysicalDeviceVulkan11Features){.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
                                              .storageBuffer16BitAccess = s16};
    *f12 = (VkPhysicalDeviceVulkan12Features){.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
                                              .pNext = f11, .timelineSemaphore = timeline};
    *features = (VkPhysicalDeviceFeatures2){.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = f12};
    if (e->family == n)
        return 0;
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qi = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                  .queueFamilyIndex = e->family,
                                  .queueCount = 1,
                                  .pQueuePriorities = &prio};
    VkDeviceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
                             .pNext = features, /* ... and what the engine enables */
                             .queueCreateInfoCount = 1,
                             .pQueueCreateInfos = &qi};
    if (vkCreateDevice(e->phys, &ci, NULL, &e->dev) != VK_SUCCESS)
        return 0;
    vkGetDeviceQueue(e->dev, e->family, 0, &e->queue);
    return 1;
}

/* What freekv is told of the engine: its objects, the features it enabled, its queue lock. */
static fkv_native_objects engine_objects(engine *e, const VkPhysicalDeviceFeatures2 *features) {
    return (fkv_native_objects){
        .api = FKV_NATIVE_VULKAN,
        .vulkan = {.api_version = VK_API_VERSION_1_2,
                   .instance = e->instance,
                   .physical_device = e->phys,
                   .device = e->dev,
                   .queues = {[FKV_COUNTER_COMPUTE] = {.queue = e->queue, .family = e->family}},
                   .enabled_features = features,
                   .lock_queue = lock_queue,
                   .unlock_queue = unlock_queue,
                   .lock_user = e}};
}

/* FREEKV_VULKAN_VALIDATION=1 (or on, true, yes): the engine validates its instance. */
static int validation_wanted(void) {
    const char *env = getenv("FREEKV_VULKAN_VALIDATION");
    return env && (strcmp(env, "1") == 0 || strcmp(env, "on") == 0 ||
                   strcmp(env, "true") == 0 || strcmp(env, "yes") == 0);
}

/* Buffer b of `size` bytes in memory with `props`, mapped into *mapped when asked. */
static int create_buffer(engine *e, int b, VkDeviceSize size, VkBufferUsageFlags usage,
                         VkMemoryPropertyFlags props, void **mapped) {
    VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
                             .size = size,
                             .usage = usage,
                             .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    VK_OK(vkCreateBuffer(e->dev, &bi, NULL, &e->bufs[b]), "vkCreateBuffer");
    VkMemoryRequirements req;
    vkGetBufferMemoryRequirements(e->dev, e->bufs[b], &req);
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(e->phys, &mp);
    uint32_t type = 0;
    while (type < mp.memoryTypeCount && !((req.memoryTypeBits & (1u << type)) &&
                                          (mp.memoryTypes[type].propertyFlags & props) == props))
        type++;
    VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
                               .allocationSize = req.size,
                               .memoryTypeIndex = type};
    VK_OK(type < mp.memoryTypeCount ? VK_SUCCESS : VK_ERROR_FEATURE_NOT_PRESENT, "memory type");
    VK_OK(vkAllocateMemory(e->dev, &ai, NULL, &e->mems[b]), "vkAllocateMemory");
    VK_OK(vkBindBufferMemory(e->dev, e->bufs[b], e->mems[b], 0), "vkBindBufferMemory");
    if (mapped)
        VK_OK(vkMapMemory(e->dev, e->mems[b], 0, VK_WHOLE_SIZE, 0, mapped), "vkMapMemory");
    return 0;
}

/* The engine's command buffers, timeline and buffers; q/k/v/out wrapped for freekv. */
static int create_objects(engine *e, fkv_device *dev, const fkv_config *cfg) {
    VkCommandPoolCreateInfo pi = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                  .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                  .queueFamilyIndex = e->family};
    VK_OK(vkCreateCommandPool(e->dev, &pi, NULL, &e->pool), "vkCreateCommandPool");
    VkCommandBuffer cbs[2];
    VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                      .commandPool = e->pool,
                                      .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                      .commandBufferCount = 2};
    VK_OK(vkAllocateCommandBuffers(e->dev, &ai, cbs), "vkAllocateCommandBuffers");
    e->up = cbs[0], e->down = cbs[1];
    VkSemaphoreTypeCreateInfo ti = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_TYPE_CREATE_INFO,
                                    .semaphoreType = VK_SEMAPHORE_TYPE_TIMELINE};
    VkSemaphoreCreateInfo si = {.sType = VK_STRUCTURE_TYPE_SEMAPHORE_CREATE_INFO, .pNext = &ti};
    VK_OK(vkCreateSemaphore(e->dev, &si, NULL, &e->timeline), "vkCreateSemaphore");
    e->q_bytes = sizeof(float) * cfg->n_q_heads * cfg->head_dim;
    e->kv_bytes = sizeof(float) * cfg->n_kv_heads * cfg->head_dim;
    /* freekv binds them as storage buffers and copies to and from them */
    VkBufferUsageFlags usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT |
                               VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    for (int b = B_Q; b <= B_OUT; b++) {
        VkDeviceSize size = b == B_Q || b == B_OUT ? e->q_bytes : e->kv_bytes;
        if (create_buffer(e, b, size, usage, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, NULL))
            return 1;
        EX_CHECK(fkv_buffer_import(dev, (void *)(uintptr_t)e->bufs[b], size, &e->fbufs[b]));
    }
    return create_buffer(e, B_STAGING, 2 * (e->q_bytes + e->kv_bytes), usage,
                         VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                         (void **)&e->staging);
}

/* The engine's objects (after freekv closed: nothing else submits). */
static void destroy_engine(engine *e) {
    if (e->dev) {
        vkDeviceWaitIdle(e->dev);
        for (int b = 0; b < 5; b++) {
            vkDestroyBuffer(e->dev, e->bufs[b], NULL);
            vkFreeMemory(e->dev, e->mems[b], NULL);
        }
        vkDestroySemaphore(e->dev, e->timeline, NULL);
        vkDestroyCommandPool(e->dev, e->pool, NULL);
        vkDestroyDevice(e->dev, NULL);
    }
    if (e->messenger) {
        PFN_vkDestroyDebugUtilsMessengerEXT destroy = (PFN_vkDestroyDebugUtilsMessengerEXT)
            vkGetInstanceProcAddr(e->instance, "vkDestroyDebugUtilsMessengerEXT");
        destroy(e->instance, e->messenger, NULL);
    }
    if (e->instance)
        vkDestroyInstance(e->instance, NULL);
    pthread_mutex_destroy(&e->queue_lock);
}

#endif
