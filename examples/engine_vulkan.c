/* A Vulkan "engine" that owns its instance, device and queue and hands them to freekv
 * (fkv_device_open_native), with the features it enabled and a lock for the queue they share
 * (lavapipe has one). Each layer it copies q/k/v into its own device buffers on its queue,
 * signalling its timeline semaphore; freekv waits for that value on the device, signals the
 * next one when `out` is written; the engine's copy of `out` to the host waits for that value
 * (engine_vulkan.h). The outputs are compared bit for bit with the host-tensor path
 * (engine_common.h). With FREEKV_VULKAN_VALIDATION=1 the engine enables the Khronos validation
 * layer on its instance and fails on any error or warning it reports (VK_LAYER_ENABLES adds
 * synchronization validation). ./build/engine_vulkan; exit 0: identical; 1: a failure, a
 * difference or a validation message; 77: no Vulkan 1.2 device with timeline semaphores. */
#include "engine_vulkan.h"

int main(void) {
    int validate = validation_wanted();
    engine e = {0};
    pthread_mutex_init(&e.queue_lock, NULL);
    VkPhysicalDeviceFeatures2 features;
    VkPhysicalDeviceVulkan11Features f11;
    VkPhysicalDeviceVulkan12Features f12;
    if (!create_instance(&e, validate) || !pick_device(&e) ||
        !create_device(&e, ENGINE_TIMELINE | ENGINE_16BIT, &features, &f11, &f12) ||
        !f12.timelineSemaphore) {
        printf("engine_vulkan: no Vulkan 1.2 device with timeline semaphores%s\n",
               validate ? " (or no validation layer)" : "");
        destroy_engine(&e);
        return EX_SKIP;
    }
    /* freekv on the engine's device and queue, told what the engine enabled */
    fkv_native_objects objs = engine_objects(&e, &features);
    fkv_device *dev;
    fkv_context *ctx;
    fkv_config cfg;
    int rc = 1;
    if (ex_open("engine_vulkan", &objs, &cfg, &dev, &ctx) == 0 &&
        create_objects(&e, dev, &cfg) == 0)
        rc = ex_run("engine_vulkan", dev, decode_layer, &e, &cfg, ctx, 16, NULL);
    ex_close(e.fbufs, 4, ctx, dev); /* freekv's side first, then the engine's */
    destroy_engine(&e);
    if (e.validation_messages) {
        fprintf(stderr, "engine_vulkan: %u validation message(s)\n", e.validation_messages);
        rc = 1;
    }
    return rc;
}
