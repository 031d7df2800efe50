/* The Vulkan backend's pipelines: the embedded SPIR-V of every shader variant (shaders.def),
 * the descriptor set and pipeline layouts, compute pipelines specialised per workgroup size,
 * subgroup size and shared memory and created on first use, kept in a VkPipelineCache that
 * persists in a cache file. Layer 4 of the backend (kernels), below the launches
 * (vk_kernels.c): errors -> memory -> submission -> kernels -> device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/cache_file.h"
#include "../common/error.h"
#include "vk_internal.h"

typedef struct fkv_vk_spirv_blob {
    const unsigned char *code;
    size_t size;
} fkv_vk_spirv_blob;
extern const fkv_vk_spirv_blob fkv_vk_spirv[S_COUNT]; /* embed_spirv.cmake, shaders.def order */

const char *const fkv_vk_shader_names[S_COUNT] = {
#define FKV_VK_SHADER(name, ...) #name,
#include "shaders.def"
#undef FKV_VK_SHADER
};

/* ---- pipeline cache file ---- */

static void cache_path(fkv_bdev *d, char *buf, size_t size) {
    char base[1024];
    buf[0] = '\0';
    fkv_cache_dir(base, sizeof base);
    if (!base[0])
        return;
    VkPhysicalDeviceProperties p;
    vkGetPhysicalDeviceProperties(d->phys, &p);
    int n = snprintf(buf, size, "%s/vulkan-%04x-%04x-%08x.pcache", base, p.vendorID, p.deviceID,
                     p.driverVersion);
    if (n < 0 || (size_t)n >= size)
        buf[0] = '\0';
}

/* The file's data when its header matches this device (Vulkan checks it too, but a foreign
 * or truncated file is better never handed to a driver). */
static void *cache_load(fkv_bdev *d, const char *path, size_t *size) {
    FILE *f = path[0] ? fopen(path, "rb") : NULL;
    if (f == NULL)
        return NULL;
    void *data = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 32 && n < (64l << 20) &&
        fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)n)) != NULL &&
        fread(data, 1, (size_t)n, f) == (size_t)n) {
        VkPhysicalDeviceProperties p;
        vkGetPhysicalDeviceProperties(d->phys, &p);
        uint32_t h[4];
        memcpy(h, data, sizeof h);
        if (h[0] >= 32 && h[0] <= (uint32_t)n && h[1] == VK_PIPELINE_CACHE_HEADER_VERSION_ONE &&
            h[2] == p.vendorID && h[3] == p.deviceID &&
            memcmp((unsigned char *)data + 16, p.pipelineCacheUUID, VK_UUID_SIZE) == 0) {
            fclose(f);
            *size = (size_t)n;
            return data;
        }
    }
    free(data);
    fclose(f);
    return NULL;
}

static void cache_store(fkv_bdev *d) {
    size_t n = 0;
    if (!d->cache_path[0] || !d->pcache ||
        vkGetPipelineCacheData(d->dev, d->pcache, &n, NULL) != VK_SUCCESS || n == 0)
        return;
    void *data = malloc(n);
    if (data && vkGetPipelineCacheData(d->dev, d->pcache, &n, data) == VK_SUCCESS) {
        const void *parts[1] = {data};
        fkv_cache_write(d->cache_path, parts, &n, 1); /* failure: no cache next time */
    }
    free(data);
}

fkv_status fkv_vk_pipelines_init(fkv_bdev *d) {
    VkDescriptorSetLayoutBinding b[VK_N_BINDINGS];
    for (uint32_t i = 0; i < VK_N_BINDINGS; i++)
        b[i] = (VkDescriptorSetLayoutBinding){i, VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1,
                                              VK_SHADER_STAGE_COMPUTE_BIT, NULL};
    VkDescriptorSetLayoutCreateInfo li = {VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                          NULL, 0, VK_N_BINDINGS, b};
    VkResult r = vkCreateDescriptorSetLayout(d->dev, &li, NULL, &d->dsl);
    VkPushConstantRange pr = {VK_SHADER_STAGE_COMPUTE_BIT, 0, VK_PUSH_BYTES};
    VkPipelineLayoutCreateInfo pli = {VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, NULL, 0, 1,
                                      &d->dsl, 1, &pr};
    if (r == VK_SUCCESS)
        r = vkCreatePipelineLayout(d->dev, &pli, NULL, &d->layout);
    if (r != VK_SUCCESS)
        return fkv_vk_fail(r, "creating the pipeline layout");
    cache_path(d, d->cache_path, sizeof d->cache_path);
    size_t n = 0;
    void *data = cache_load(d, d->cache_path, &n);
    VkPipelineCacheCreateInfo ci = {VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO, NULL, 0, n, data};
    r = vkCreatePipelineCache(d->dev, &ci, NULL, &d->pcache);
    if (r != VK_SUCCESS && data) { /* a cache the driver dislikes: start empty */
        ci.initialDataSize = 0;
        ci.pInitialData = NULL;
        r = vkCreatePipelineCache(d->dev, &ci, NULL, &d->pcache);
    }
    free(data);
    if (r != VK_SUCCESS)
        return fkv_vk_fail(r, "vkCreatePipelineCache");
    return FKV_OK;
}

void fkv_vk_pipelines_destroy(fkv_bdev *d) {
    cache_store(d);
    for (uint32_t i = 0; i < d->n_pipes; i++)
        vkDestroyPipeline(d->dev, d->pipes[i].pipeline, NULL);
    free(d->pipes);
    for (int i = 0; i < S_COUNT; i++)
        if (d->modules[i])
            vkDestroyShaderModule(d->dev, d->modules[i], NULL);
    if (d->pcache)
        vkDestroyPipelineCache(d->dev, d->pcache, NULL);
    if (d->layout)
        vkDestroyPipelineLayout(d->dev, d->layout, NULL);
    if (d->dsl)
        vkDestroyDescriptorSetLayout(d->dev, d->dsl, NULL);
}

/* The pipeline of (shader, workgroup size, shared floats), created on first use. */
fkv_status fkv_vk_pipeline(fkv_bdev *d, uint32_t shader, uint32_t wg, uint32_t smem,
                           VkPipeline *out) {
    fkv_status st = FKV_OK;
    pthread_mutex_lock(&d->pipe_lock);
    for (uint32_t i = 0; i < d->n_pipes; i++)
        if (d->pipes[i].shader == shader && d->pipes[i].wg == wg && d->pipes[i].smem == smem) {
            *out = d->pipes[i].pipeline;
            pthread_mutex_unlock(&d->pipe_lock);
            return FKV_OK;
        }
    VkResult r = VK_SUCCESS;
    if (d->modules[shader] == VK_NULL_HANDLE) {
        const fkv_vk_spirv_blob *b = &fkv_vk_spirv[shader];
        VkShaderModuleCreateInfo mi = {VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, NULL, 0,
                                       b->size, (const uint32_t *)(const void *)b->code};
        r = vkCreateShaderModule(d->dev, &mi, NULL, &d->modules[shader]);
    }
    if (r == VK_SUCCESS && d->n_pipes == d->cap_pipes) {
        uint32_t cap = d->cap_pipes ? 2 * d->cap_pipes : 32;
        vk_pipe *n = realloc(d->pipes, cap * sizeof *n);
        if (n == NULL)
            st = fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "vulkan: pipeline list");
        else {
            d->pipes = n;
            d->cap_pipes = cap;
        }
    }
    if (r == VK_SUCCESS && st == FKV_OK) {
        uint32_t spec[3] = {wg, d->subgroup, smem};
        VkSpecializationMapEntry me[3] = {{0, 0, 4}, {1, 4, 4}, {2, 8, 4}};
        VkSpecializationInfo si = {3, me, sizeof spec, spec};
        VkComputePipelineCreateInfo ci = {
            VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO, NULL, 0,
            {VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, NULL, 0,
             VK_SHADER_STAGE_COMPUTE_BIT, d->modules[shader], "main", &si},
            d->layout, VK_NULL_HANDLE, -1};
        VkPipeline p;
        r = vkCreateComputePipelines(d->dev, d->pcache, 1, &ci, NULL, &p);
        if (r == VK_SUCCESS) {
            d->pipes[d->n_pipes++] = (vk_pipe){shader, wg, smem, p};
            *out = p;
        }
    }
    pthread_mutex_unlock(&d->pipe_lock);
    if (r != VK_SUCCESS)
        return fkv_error_prefix(fkv_vk_fail(r, "creating a compute pipeline"), "shader %s",
                                fkv_vk_shader_names[shader]);
    return st;
}
