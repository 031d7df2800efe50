/* Test and benchmark hooks of the Vulkan backend. Unlike vk_internal.h this needs no
 * API header, so generic code (freekv-opbench, tests) can include several backends' hooks. */
#ifndef FKV_VK_DEBUG_H
#define FKV_VK_DEBUG_H

#include <stddef.h>
#include <stdint.h>

#include "../backends/backend.h"

/* Split-page attention: 0 = automatic, n >= 1 = always n splits. */
void fkv_vulkan_debug_set_splits(fkv_bdev *dev, int splits);
/* Whether kernels use 16-bit storage (FREEKV_VULKAN_16BIT=0 forces the 32-bit fallback). */
int fkv_vulkan_debug_s16(fkv_bdev *dev);
/* Whether host_alloc imports host memory (VK_EXT_external_memory_host). */
int fkv_vulkan_debug_import_host(fkv_bdev *dev);
/* Whether write_regions issues one command per region (perpage) or one multi-region copy. */
int fkv_vulkan_debug_perpage(fkv_bdev *dev);
/* Validation-layer errors reported on this device (FREEKV_VULKAN_VALIDATION=1). */
unsigned fkv_vulkan_debug_validation_errors(fkv_bdev *dev);
/* The subgroup size read from the device. */
uint32_t fkv_vulkan_debug_subgroup(fkv_bdev *dev);
/* Bind KV pools and summaries in windows of at most `bytes` (0: maxStorageBufferRange), so
 * the windowed path runs on small buffers; never more than the device's range. */
void fkv_vulkan_debug_set_window(fkv_bdev *dev, size_t bytes);
/* Kernels plan for at most `bytes` of shared memory (0: maxComputeSharedMemorySize), so the
 * variants for small shared memory (attention and scores over the group in several
 * workgroups) run on any device; never more than the device has. */
void fkv_vulkan_debug_set_shared(fkv_bdev *dev, size_t bytes);
/* Allocations (VkDeviceMemory objects) allowed at once: at most `n` (0: the device's
 * maxMemoryAllocationCount), and how many are alive now. */
void fkv_vulkan_debug_set_allocation_limit(fkv_bdev *dev, uint32_t n);
unsigned fkv_vulkan_debug_live_allocations(fkv_bdev *dev);
/* Process-wide: every host-memory import fails from now on (the probe at device open too), as
 * on a driver whose VK_EXT_external_memory_host cannot import; 0 restores. */
void fkv_vulkan_debug_break_import(int broken);

#endif
