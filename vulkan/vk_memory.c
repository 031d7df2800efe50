/* The Vulkan backend's memory: memory types, device buffers and temporaries, every
 * VkDeviceMemory counted against maxMemoryAllocationCount, imported VkBuffers, and host memory
 * (host-visible buffers, or malloc'd memory imported with VK_EXT_external_memory_host). Layer 2
 * of the backend: errors -> memory -> submission -> kernels -> device. */
#include <stdlib.h>
#include <string.h>

#include "../common/error.h"
#include "vk_internal.h"

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

/* A buffer with its own memory: device-local, or host-visible and mapped. host_alloc: the
 * memory of a host_alloc (counted as a host allocation; anything else as a device one). */
static fkv_status make_buffer(fkv_bdev *d, VkDeviceSize size, int host_visible, int host_alloc,
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
    else if (host_alloc)
        fkv_count_host_alloc(&d->counters);
    else
        fkv_count_device_alloc(&d->counters);
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
    t->size = size ? size : 4;
    t->host_visible = host_visible;
    return make_buffer(d, t->size, host_visible, 0, usage ? usage : ALL_USAGE, &t->buf, &t->mem,
                       &t->ptr);
}

fkv_status fkv_vk_scratch_take(fkv_bdev *d, vk_scratch *s, VkDeviceSize size, int host_visible,
                               vk_temp *out) {
    uint32_t fit = UINT32_MAX, small = UINT32_MAX;
    for (uint32_t i = 0; i < s->n; i++) {
        if (s->free[i].size >= size) {
            if (fit == UINT32_MAX || s->free[i].size < s->free[fit].size)
                fit = i;
        } else if (small == UINT32_MAX || s->free[i].size > s->free[small].size) {
            small = i;
        }
    }
    if (fit != UINT32_MAX) {
        *out = s->free[fit];
        s->free[fit] = s->free[--s->n];
        return FKV_OK;
    }
    VkDeviceSize grown = 256;
    while (grown < size)
        grown *= 2;
    /* whole-buffer bindings of what fits one binding must stay within one */
    if (grown > d->max_range && size <= d->max_range)
        grown = d->max_range;
    if (grown > d->max_alloc)
        grown = size;
    fkv_status st = fkv_vk_temp_alloc(d, grown, host_visible, 0, out);
    if (st == FKV_OK && small != UINT32_MAX) { /* growth replaces: the count stays put */
        fkv_vk_temp_free(d, &s->free[small]);
        s->free[small] = s->free[--s->n];
    }
    return st;
}

void fkv_vk_scratch_give(fkv_bdev *d, vk_scratch *s, vk_temp *t) {
    if (s->n == s->cap) {
        uint32_t cap = s->cap ? 2 * s->cap : 8;
        vk_temp *n = realloc(s->free, cap * sizeof *n);
        if (n == NULL) {
            fkv_vk_temp_free(d, t);
            return;
        }
        s->free = n;
        s->cap = cap;
    }
    s->free[s->n++] = *t;
    memset(t, 0, sizeof *t);
}

void fkv_vk_scratch_destroy(fkv_bdev *d, vk_scratch *s) {
    for (uint32_t i = 0; i < s->n; i++)
        fkv_vk_temp_free(d, &s->free[i]);
    free(s->free);
    memset(s, 0, sizeof *s);
}

void fkv_vk_temp_free(fkv_bdev *d, vk_temp *t) {
    if (t->buf)
        vkDestroyBuffer(d->dev, t->buf, NULL);
    free_memory(d, t->mem); /* unmaps */
    memset(t, 0, sizeof *t);
}

fkv_status fkv_vk_buffer_alloc(fkv_bdev *d, size_t size, fkv_bbuf **out) {
    if (size > d->max_alloc)
        return fkv_error(FKV_ERR_OUT_OF_DEVICE_MEMORY,
                         "vulkan: %zu bytes exceed the device's largest allocation (%llu)", size,
                         (unsigned long long)d->max_alloc);
    fkv_bbuf *b = calloc(1, sizeof *b);
    if (b == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: buffer handle");
    VkDeviceSize bound = ((VkDeviceSize)size + 3) / 4 * 4;
    fkv_status st = make_buffer(d, bound, 0, 0, ALL_USAGE, &b->buf, &b->mem, NULL);
    if (st != FKV_OK) {
        free(b);
        return st;
    }
    b->desc = (fkv_mem_desc){.size = size, .base = 0};
    b->bound = bound;
    *out = b;
    return FKV_OK;
}

void fkv_vk_buffer_free(fkv_bdev *d, fkv_bbuf *b) {
    if (b->mem) { /* an imported VkBuffer stays the engine's */
        vkDestroyBuffer(d->dev, b->buf, NULL);
        free_memory(d, b->mem);
    }
    free(b);
}

fkv_status fkv_vk_buffer_import(fkv_bdev *d, void *native, size_t size, fkv_bbuf **out) {
    (void)d;
    fkv_bbuf *b = calloc(1, sizeof *b);
    if (b == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: buffer handle");
    /* Vulkan cannot tell a VkBuffer's device or size: the engine vouches for both (it must
     * have STORAGE_BUFFER and TRANSFER_SRC/DST usage). */
    b->buf = (VkBuffer)(uintptr_t)native;
    b->desc = (fkv_mem_desc){.size = size, .base = 0};
    b->bound = size;
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
    VkBufferCreateInfo bi = buffer_info(
        d, size, ALL_USAGE | (d->bda ? VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT : 0));
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
        VkMemoryAllocateFlagsInfo flags = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO,
                                           .flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT};
        VkImportMemoryHostPointerInfoEXT imp = {
            VK_STRUCTURE_TYPE_IMPORT_MEMORY_HOST_POINTER_INFO_EXT, d->bda ? &flags : NULL,
            VK_EXTERNAL_MEMORY_HANDLE_TYPE_HOST_ALLOCATION_BIT_EXT, h->raw};
        VkMemoryAllocateInfo ai = {VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, &imp, size,
                                   (uint32_t)type};
        r = vkAllocateMemory(d->dev, &ai, NULL, &h->mem);
        if (r != VK_SUCCESS) {
            uncount_alloc(d);
        } else {
            fkv_count_host_alloc(&d->counters);
        }
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
    if (d->bda) {
        VkBufferDeviceAddressInfo ai = {.sType = VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO,
                                        .buffer = h->buf};
        h->addr = vkGetBufferDeviceAddress(d->dev, &ai);
    }
    return FKV_OK;
}

/* Whether malloc'd memory can back storage buffers here: the driver's word for it
 * (vkGetPhysicalDeviceExternalBufferProperties), then one real import of one page through
 * import_host, the path every host_alloc of hostptr mode takes. */
fkv_status fkv_vk_probe_import(fkv_bdev *d) {
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

fkv_status fkv_vk_host_alloc(fkv_bdev *d, size_t size, fkv_bhost **out, void **ptr) {
    if (size > d->max_alloc)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY,
                         "vulkan: %zu bytes of host memory exceed the largest allocation (%llu)",
                         size, (unsigned long long)d->max_alloc);
    fkv_bhost *h = calloc(1, sizeof *h);
    if (h == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: host allocation handle");
    h->desc.size = size;
    fkv_status st = d->import_host ? import_host(d, h)
                                   : make_buffer(d, size, 1, 1, ALL_USAGE, &h->buf, &h->mem,
                                                 &h->ptr);
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

void fkv_vk_host_free(fkv_bdev *d, fkv_bhost *h) {
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
