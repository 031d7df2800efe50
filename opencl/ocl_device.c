/* The OpenCL backend's devices: every device of every platform, opening and closing, the
 * environment, the options, and the ops table. Layer 5 of the backend, the top: errors ->
 * memory (ocl_memory.c) -> submission (ocl_submit.c) -> kernels (ocl_program.c, ocl_kernels.c)
 * -> device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../backends/option.h"
#include "../common/cache_file.h"
#include "../common/env.h"
#include "../common/error.h"
#include "ocl_internal.h"

#define MAX_PLATFORMS 16
#define MAX_DEVICES 64
#define NVIDIA_VENDOR_ID 0x10deu
#define AMD_VENDOR_ID 0x1002u

/* ---- enumeration ---- */

typedef struct ocl_device_ref {
    cl_platform_id platform;
    cl_device_id device;
} ocl_device_ref;

/* Every device of every platform, in platform order. No driver (no ICD, no platform) means
 * no devices, not an error. */
static uint32_t enumerate(ocl_device_ref *out, uint32_t max) {
    cl_platform_id plats[MAX_PLATFORMS];
    cl_uint n_plats = 0;
    if (clGetPlatformIDs(MAX_PLATFORMS, plats, &n_plats) != CL_SUCCESS)
        return 0;
    if (n_plats > MAX_PLATFORMS)
        n_plats = MAX_PLATFORMS;
    uint32_t n = 0;
    for (cl_uint p = 0; p < n_plats && n < max; p++) {
        cl_device_id devs[MAX_DEVICES];
        cl_uint n_devs = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES, devs, &n_devs) != CL_SUCCESS)
            continue; /* CL_DEVICE_NOT_FOUND: a platform without devices */
        if (n_devs > MAX_DEVICES)
            n_devs = MAX_DEVICES;
        for (cl_uint i = 0; i < n_devs && n < max; i++) {
            out[n].platform = plats[p];
            out[n].device = devs[i];
            n++;
        }
    }
    return n;
}

static fkv_status find_device(uint32_t index, ocl_device_ref *ref) {
    ocl_device_ref refs[MAX_DEVICES];
    uint32_t n = enumerate(refs, MAX_DEVICES);
    if (index >= n)
        return fkv_error(FKV_ERR_NO_DEVICE, "opencl: no device %u (%u found)", index, n);
    *ref = refs[index];
    return FKV_OK;
}

static fkv_status ocl_device_count(uint32_t *count) {
    ocl_device_ref refs[MAX_DEVICES];
    if (count == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "opencl device_count: NULL output");
    *count = enumerate(refs, MAX_DEVICES);
    return FKV_OK;
}

static void device_string(cl_device_id dev, cl_device_info what, char *buf, size_t size) {
    buf[0] = '\0';
    if (clGetDeviceInfo(dev, what, size, buf, NULL) != CL_SUCCESS)
        buf[0] = '\0';
    buf[size - 1] = '\0';
}

static void platform_string(cl_platform_id p, cl_platform_info what, char *buf, size_t size) {
    buf[0] = '\0';
    if (clGetPlatformInfo(p, what, size, buf, NULL) != CL_SUCCESS)
        buf[0] = '\0';
    buf[size - 1] = '\0';
}

/* "OpenCL <major>.<minor> ..." -> major*10+minor (0 when unparsable). */
static int parse_version(const char *s, const char *prefix) {
    int major = 0, minor = 0;
    size_t n = strlen(prefix);
    if (strncmp(s, prefix, n) != 0 || sscanf(s + n, "%d.%d", &major, &minor) != 2)
        return 0;
    return major * 10 + minor;
}

static int device_version(cl_device_id dev) {
    char v[128];
    device_string(dev, CL_DEVICE_VERSION, v, sizeof v);
    return parse_version(v, "OpenCL ");
}

/* Fine-grained buffer SVM (a 2.0+ query; older devices have none). */
static int device_fine_svm(cl_device_id dev) {
    cl_device_svm_capabilities svm = 0;
    if (device_version(dev) < 20 ||
        clGetDeviceInfo(dev, CL_DEVICE_SVM_CAPABILITIES, sizeof svm, &svm, NULL) != CL_SUCCESS)
        return 0;
    return (svm & CL_DEVICE_SVM_FINE_GRAIN_BUFFER) != 0;
}

/* Whether the device's list of (name, version) pairs `what` holds an entry for which
 * match(entry, arg) holds; 0 when the query fails. */
static int has_name_version(cl_device_id dev, cl_device_info what,
                            int (*match)(const cl_name_version *, const char *),
                            const char *arg) {
    size_t bytes = 0;
    if (clGetDeviceInfo(dev, what, 0, NULL, &bytes) != CL_SUCCESS || bytes == 0)
        return 0;
    cl_name_version *all = malloc(bytes);
    int found = 0;
    if (all && clGetDeviceInfo(dev, what, bytes, all, NULL) == CL_SUCCESS)
        for (size_t i = 0; i < bytes / sizeof *all && !found; i++)
            found = match(&all[i], arg);
    free(all);
    return found;
}

static int is_major(const cl_name_version *v, const char *major) {
    return CL_VERSION_MAJOR(v->version) == (cl_version)atoi(major);
}

static int is_named(const cl_name_version *v, const char *name) {
    return strcmp(v->name, name) == 0;
}

/* The OpenCL C standard whose device-scope acquire/release atomics the split attention's
 * last work group needs to combine the partials itself (fkv_attention): 20 (OpenCL C 2.x,
 * where they are core), 30 (3.0 with the features __opencl_c_atomic_order_acq_rel and
 * __opencl_c_atomic_scope_device), or 0: none, and a second launch combines them (OpenCL C
 * 1.2 gives no ordering between work groups to build on). c_version: the device's OpenCL C
 * version (CL_DEVICE_OPENCL_C_VERSION) as 10 * major + minor. */
static int device_atomics_std(cl_device_id dev, int c_version) {
    if (c_version >= 20 && c_version < 30)
        return 20;
    if (device_version(dev) < 30)
        return 0;
    int ok = has_name_version(dev, CL_DEVICE_OPENCL_C_ALL_VERSIONS, is_major, "3") &&
             has_name_version(dev, CL_DEVICE_OPENCL_C_FEATURES, is_named,
                              "__opencl_c_atomic_order_acq_rel") &&
             has_name_version(dev, CL_DEVICE_OPENCL_C_FEATURES, is_named,
                              "__opencl_c_atomic_scope_device");
    return ok ? 30 : 0;
}

static int device_is_nvidia(cl_device_id dev) {
    cl_uint vendor = 0;
    clGetDeviceInfo(dev, CL_DEVICE_VENDOR_ID, sizeof vendor, &vendor, NULL);
    return vendor == NVIDIA_VENDOR_ID;
}

/* Whether a kernel reads fine-grained SVM host memory where it lies (truly zero-copy): CPU
 * devices, devices that share the host's memory (integrated GPUs report host unified memory)
 * and AMD GPUs (which read it over the link in place). Discrete GPUs of other vendors may
 * migrate or emulate shared allocations page by page (NVIDIA does with host-pointer buffers,
 * Intel's discrete GPUs may with shared USM/SVM): there a staged copy is both predictable and
 * faster, so auto stages. */
static int svm_in_place(cl_device_id dev) {
    cl_device_type type = 0;
    cl_bool unified = CL_FALSE;
    cl_uint vendor = 0;
    clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL);
    clGetDeviceInfo(dev, CL_DEVICE_VENDOR_ID, sizeof vendor, &vendor, NULL);
    return (type & CL_DEVICE_TYPE_CPU) || unified || vendor == AMD_VENDOR_ID;
}

static void fill_info(const ocl_device_ref *ref, uint32_t index, fkv_device_info *info) {
    memset(info, 0, sizeof *info);
    snprintf(info->backend, sizeof info->backend, "opencl");
    info->index = index;
    device_string(ref->device, CL_DEVICE_NAME, info->name, sizeof info->name);
    char plat[64], drv[64];
    platform_string(ref->platform, CL_PLATFORM_NAME, plat, sizeof plat);
    device_string(ref->device, CL_DRIVER_VERSION, drv, sizeof drv);
    snprintf(info->driver, sizeof info->driver, "%.40s %.22s", plat, drv);

    cl_device_type type = 0;
    cl_bool unified = CL_FALSE;
    clGetDeviceInfo(ref->device, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    /* Deprecated in 2.0 but still answered; it is what tells integrated from discrete. */
    clGetDeviceInfo(ref->device, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof unified, &unified, NULL);
    if (type & CL_DEVICE_TYPE_GPU)
        info->type = unified ? FKV_DEVICE_INTEGRATED_GPU : FKV_DEVICE_DISCRETE_GPU;
    else if (type & CL_DEVICE_TYPE_CPU)
        info->type = FKV_DEVICE_CPU;
    else
        info->type = FKV_DEVICE_OTHER;

    cl_ulong mem = 0, max_alloc = 0;
    clGetDeviceInfo(ref->device, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
    clGetDeviceInfo(ref->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
    info->memory_bytes = mem;
    info->max_buffer_bytes = max_alloc;

    /* Copies are non-blocking enqueues; queues wait on events on the device side; f16 goes
     * through vload_half/vstore_half and bf16 through bits, so every device stores both;
     * every fkv_queue is its own cl_command_queue. */
    info->caps = FKV_CAP_ASYNC_COPY | FKV_CAP_DEVICE_WAIT | FKV_CAP_FP16_STORAGE |
                 FKV_CAP_SEPARATE_TRANSFER_QUEUE;
    /* CL_MEM_ALLOC_HOST_PTR is page-locked by GPU drivers; a CPU device has nothing to pin. */
    if (!(type & CL_DEVICE_TYPE_CPU))
        info->caps |= FKV_CAP_PINNED_HOST;
    /* NVIDIA migrates host buffers that a kernel touches into device memory (DESIGN §2):
     * never zero-copy there, whatever it reports. */
    if (device_fine_svm(ref->device) && !device_is_nvidia(ref->device))
        info->caps |= FKV_CAP_ZERO_COPY_HOST;
}

static fkv_status ocl_device_info(uint32_t index, fkv_device_info *info) {
    ocl_device_ref ref;
    if (info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "opencl device_info: NULL output");
    fkv_status st = find_device(index, &ref);
    if (st != FKV_OK)
        return st;
    fill_info(&ref, index, info);
    return FKV_OK;
}

/* ---- environment (read here and in enumeration only) ---- */

typedef enum recall_choice { RECALL_AUTO, RECALL_STAGED, RECALL_PERPAGE, RECALL_SVM } recall_choice;
typedef enum switch_choice { SWITCH_AUTO, SWITCH_ON, SWITCH_OFF } switch_choice;

/* What the environment chooses for a device (docs/opencl.md). */
typedef struct ocl_env {
    recall_choice recall;
    int fast_math;
    switch_choice binary_cache, cpu_kernels;
} ocl_env;

static fkv_status read_env(ocl_env *e) {
    static const char *const names[] = {"auto", "staged", "perpage", "svm"};
    static const char *const switch_names[] = {"auto", "on", "off"};
    int i = RECALL_AUTO, c = SWITCH_AUTO, k = SWITCH_AUTO;
    fkv_status st = fkv_env_choice("FREEKV_OPENCL_RECALL", names, 4, RECALL_AUTO, &i);
    if (st == FKV_OK)
        st = fkv_env_bool("FREEKV_OPENCL_FAST_MATH", 0, &e->fast_math);
    if (st == FKV_OK)
        st = fkv_env_choice("FREEKV_OPENCL_BINARY_CACHE", switch_names, 3, SWITCH_AUTO, &c);
    if (st == FKV_OK)
        st = fkv_env_choice("FREEKV_OPENCL_CPU_KERNELS", switch_names, 3, SWITCH_AUTO, &k);
    e->recall = (recall_choice)i;
    e->binary_cache = (switch_choice)c;
    e->cpu_kernels = (switch_choice)k;
    return st;
}

/* ---- open / close ---- */

static cl_command_queue create_queue(fkv_bdev *d, cl_int *err) {
    if (device_version(d->device) >= 20) {
        cl_queue_properties props[] = {0};
        return clCreateCommandQueueWithProperties(d->context, d->device, props, err);
    }
    /* A 1.x device has only the 1.x call (deprecated in the 2.0+ headers). */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
    return clCreateCommandQueue(d->context, d->device, 0, err);
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
}

static void ocl_device_close(fkv_bdev *d) {
    if (d == NULL)
        return;
    for (int q = 0; q < FKV_QUEUE_COUNT; q++)
        if (d->queues[q])
            clFinish(d->queues[q]);
    if (d->aux)
        clFinish(d->aux);
    for (int i = 0; i < 3; i++)
        fkv_ocl_program_release(&d->programs[i]);
    for (int k = 0; k < OCL_KQ_COUNT; k++) {
        if (d->kq[k].partials)
            clReleaseMemObject(d->kq[k].partials);
        if (d->kq[k].part_counts)
            clReleaseMemObject(d->kq[k].part_counts);
        for (int t = 0; t < OCL_HOST_TABLES; t++) { /* the queues are finished */
            ocl_host_table *ht = &d->kq[k].tables[t];
            if (ht->last)
                clReleaseEvent(ht->last);
            if (ht->mem)
                clSVMFree(d->context, ht->mem);
        }
        pthread_mutex_destroy(&d->kq[k].lock);
    }
    for (int q = 0; q < FKV_QUEUE_COUNT; q++) /* the engine's compute queue stays its own */
        if (d->queues[q] && !(q == FKV_QUEUE_COMPUTE && d->engine_queue))
            clReleaseCommandQueue(d->queues[q]);
    if (d->aux)
        clReleaseCommandQueue(d->aux);
    if (d->context && !d->engine_context)
        clReleaseContext(d->context);
    pthread_mutex_destroy(&d->build_lock);
    free(d->source_override);
    free(d);
}

/* The program's CPU variants (docs/opencl.md; FREEKV_OPENCL_CPU_KERNELS, by default on CPU
 * devices): f16 summaries widened in integer vectors, the scores' 16-lane pass, the attention's
 * whole rows. Software prefetch goes with the device type alone: Oclgrind, which checks the
 * variants when they are forced on, has no prefetch. */
#define CPU_KERNEL_OPTIONS " -DFKV_SOFT_HALF -DFKV_WIDE_SCORES -DFKV_ROW_COPIES"
#define CPU_PREFETCH_OPTION " -DFKV_PREFETCH"

/* Opens device `ref` (position `index` of the enumeration) on the engine's context and compute
 * queue when given (kept as the engine's: never released), else on objects of its own. */
static fkv_status open_device(const ocl_device_ref *ref, uint32_t index, cl_context context,
                              cl_command_queue queue, fkv_bdev **out) {
    ocl_env env = {0};
    fkv_status st = read_env(&env);
    if (st != FKV_OK)
        return st;
    fkv_bdev *d = calloc(1, sizeof *d);
    if (d == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opencl: device handle");
    pthread_mutex_init(&d->build_lock, NULL);
    for (int k = 0; k < OCL_KQ_COUNT; k++)
        pthread_mutex_init(&d->kq[k].lock, NULL);
    atomic_init(&d->cache_loads, 0u);
    atomic_init(&d->cache_stores, 0u);
    d->platform = ref->platform;
    d->device = ref->device;
    d->index = index;
    fill_info(ref, index, &d->info);

    cl_uint cu = 1, vec = 1;
    cl_ulong local = 0;
    clGetDeviceInfo(d->device, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
    clGetDeviceInfo(d->device, CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT, sizeof vec, &vec, NULL);
    /* A CPU device's SIMD width (its preferred float vector); a GPU's lanes are work items,
     * and 4 channels is one 128-bit load. */
    d->attention_vec = vec >= 16 ? 16 : vec >= 8 ? 8 : 4;
    clGetDeviceInfo(d->device, CL_DEVICE_LOCAL_MEM_SIZE, sizeof local, &local, NULL);
    d->compute_units = cu ? cu : 1;
    d->local_mem = local;
    d->local_mem_device = local;
    d->max_alloc = d->info.max_buffer_bytes;
    d->fine_svm = device_fine_svm(d->device);
    d->is_nvidia = device_is_nvidia(d->device);
    int zero_copy = d->fine_svm && !d->is_nvidia;

    switch (env.recall) {
    case RECALL_SVM:
        if (!zero_copy) {
            st = fkv_error(FKV_ERR_UNSUPPORTED,
                           "FREEKV_OPENCL_RECALL=svm: device '%s' has no usable fine-grained "
                           "buffer SVM (use auto, staged or perpage)",
                           d->info.name);
            ocl_device_close(d);
            return st;
        }
        d->recall = FKV_RECALL_DIRECT;
        break;
    case RECALL_STAGED:
        d->recall = FKV_RECALL_STAGED;
        break;
    case RECALL_PERPAGE:
        d->recall = FKV_RECALL_PERPAGE;
        break;
    default:
        d->recall = zero_copy && svm_in_place(d->device) ? FKV_RECALL_DIRECT : FKV_RECALL_STAGED;
        break;
    }
    /* SVM host memory serves every mechanism (plain host memory for copies, zero-copy for
     * recall_direct) where recall reads it in place; a staged/perpage choice (explicit, or
     * auto on a device that may migrate SVM) keeps the pinned-buffer path. */
    d->svm_host = d->recall == FKV_RECALL_DIRECT;

    char cver[64];
    device_string(d->device, CL_DEVICE_OPENCL_C_VERSION, cver, sizeof cver);
    int c_version = parse_version(cver, "OpenCL C ");
    int atomics_std = device_atomics_std(d->device, c_version);
    d->device_atomics = atomics_std != 0;
    d->fused_reduce = d->device_atomics;
    d->cpu_kernels = env.cpu_kernels == SWITCH_ON ||
                     (env.cpu_kernels == SWITCH_AUTO && d->info.type == FKV_DEVICE_CPU);
    snprintf(d->build_options, sizeof d->build_options, "%s%s%s%s",
             atomics_std == 30   ? "-cl-std=CL3.0 -DFKV_DEVICE_ATOMICS"
             : atomics_std == 20 ? "-cl-std=CL2.0 -DFKV_DEVICE_ATOMICS"
             : c_version >= 12   ? "-cl-std=CL1.2"
                                 : "",
             env.fast_math ? " -cl-fast-relaxed-math" : "",
             d->cpu_kernels ? CPU_KERNEL_OPTIONS : "",
             d->info.type == FKV_DEVICE_CPU ? CPU_PREFETCH_OPTION : "");

    char pname[128], pver[128], dver[128], drv[128];
    platform_string(d->platform, CL_PLATFORM_NAME, pname, sizeof pname);
    platform_string(d->platform, CL_PLATFORM_VERSION, pver, sizeof pver);
    device_string(d->device, CL_DEVICE_VERSION, dver, sizeof dver);
    device_string(d->device, CL_DRIVER_VERSION, drv, sizeof drv);
    snprintf(d->cache_key, sizeof d->cache_key,
             "platform=%s|%s\ndevice=%s\ndevice_version=%s\ndriver=%s", pname, pver,
             d->info.name, dver, drv);
    /* Off by default on CPU devices: fetching a CPU device's binary makes the driver compile
     * every kernel to native code at once (PoCL: seconds each, docs/opencl.md), where a run
     * compiles only the kernels it launches, and PoCL caches its builds itself. */
    if (env.binary_cache == SWITCH_ON ||
        (env.binary_cache == SWITCH_AUTO && d->info.type != FKV_DEVICE_CPU))
        fkv_cache_dir(d->cache_dir, sizeof d->cache_dir);

    cl_int err = CL_SUCCESS;
    d->context = context;
    d->engine_context = context != NULL;
    if (context == NULL) {
        cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)d->platform,
                                         0};
        d->context = clCreateContext(props, 1, &d->device, NULL, NULL, &err);
        if (err != CL_SUCCESS) {
            d->context = NULL;
            st = fkv_ocl_fail(err, 0, "clCreateContext");
            ocl_device_close(d);
            return st;
        }
    }
    d->queues[FKV_QUEUE_COMPUTE] = queue;
    d->engine_queue = queue != NULL;
    for (int q = 0; q < FKV_QUEUE_COUNT && err == CL_SUCCESS; q++)
        if (d->queues[q] == NULL)
            d->queues[q] = create_queue(d, &err);
    if (err == CL_SUCCESS)
        d->aux = create_queue(d, &err);
    if (err != CL_SUCCESS) {
        st = fkv_ocl_fail(err, 0, "creating command queues");
        ocl_device_close(d);
        return st;
    }
    *out = d;
    return FKV_OK;
}

static fkv_status ocl_device_open(uint32_t index, fkv_bdev **out) {
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "opencl device_open: NULL output");
    *out = NULL;
    ocl_device_ref ref;
    fkv_status st = find_device(index, &ref);
    return st == FKV_OK ? open_device(&ref, index, NULL, NULL, out) : st;
}

/* ---- the engine's objects (fkv_device_open_native) ---- */

/* The engine's device must be one of its context's, and its queue on both, in order. */
static fkv_status check_engine_objects(cl_context context, cl_device_id device,
                                       cl_command_queue queue) {
    cl_uint n = 0;
    cl_int err = clGetContextInfo(context, CL_CONTEXT_NUM_DEVICES, sizeof n, &n, NULL);
    if (err != CL_SUCCESS)
        return fkv_error_prefix(fkv_ocl_fail(err, 0, "clGetContextInfo"),
                                "opencl open_native: the context is not a valid cl_context");
    cl_device_id *devs = calloc(n ? n : 1, sizeof *devs);
    if (devs == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "opencl open_native: device list");
    err = clGetContextInfo(context, CL_CONTEXT_DEVICES, n * sizeof *devs, devs, NULL);
    int found = 0;
    for (cl_uint i = 0; err == CL_SUCCESS && i < n; i++)
        found |= devs[i] == device;
    free(devs);
    if (err != CL_SUCCESS)
        return fkv_ocl_fail(err, 0, "clGetContextInfo (CL_CONTEXT_DEVICES)");
    if (!found)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "opencl open_native: the device is not one of the context's %u", n);
    if (queue == NULL)
        return FKV_OK;
    cl_context qctx = NULL;
    cl_device_id qdev = NULL;
    cl_command_queue_properties props = 0;
    err = clGetCommandQueueInfo(queue, CL_QUEUE_CONTEXT, sizeof qctx, &qctx, NULL);
    if (err == CL_SUCCESS)
        err = clGetCommandQueueInfo(queue, CL_QUEUE_DEVICE, sizeof qdev, &qdev, NULL);
    if (err == CL_SUCCESS)
        err = clGetCommandQueueInfo(queue, CL_QUEUE_PROPERTIES, sizeof props, &props, NULL);
    if (err != CL_SUCCESS)
        return fkv_error_prefix(fkv_ocl_fail(err, 0, "clGetCommandQueueInfo"),
                                "opencl open_native: the queue is not a valid cl_command_queue");
    if (qctx != context || qdev != device)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "opencl open_native: the queue belongs to another %s",
                         qctx != context ? "context" : "device");
    if (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)
        return fkv_error(FKV_ERR_UNSUPPORTED,
                         "opencl open_native: the queue is out of order; freekv's compute queue "
                         "runs its commands in order (create it without "
                         "CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)");
    return FKV_OK;
}

static fkv_status ocl_device_open_native(const fkv_native_objects *objs, fkv_bdev **out) {
    const fkv_opencl_objects *o = &objs->opencl;
    *out = NULL;
    if (o->context == NULL || o->device == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "opencl open_native: NULL context or device");
    cl_context context = (cl_context)o->context;
    ocl_device_ref ref = {.device = (cl_device_id)o->device};
    fkv_status st = check_engine_objects(context, ref.device, (cl_command_queue)o->queue);
    if (st != FKV_OK)
        return st;
    cl_int err = clGetDeviceInfo(ref.device, CL_DEVICE_PLATFORM, sizeof ref.platform,
                                 &ref.platform, NULL);
    if (err != CL_SUCCESS)
        return fkv_ocl_fail(err, 0, "clGetDeviceInfo (CL_DEVICE_PLATFORM)");
    /* its position in freekv's enumeration, as freekv-info lists it */
    ocl_device_ref refs[MAX_DEVICES];
    uint32_t n = enumerate(refs, MAX_DEVICES), index = UINT32_MAX;
    for (uint32_t i = 0; i < n && index == UINT32_MAX; i++)
        if (refs[i].device == ref.device)
            index = i;
    return open_device(&ref, index, context, (cl_command_queue)o->queue, out);
}

static fkv_status ocl_native_objects(fkv_bdev *d, fkv_native_objects *out) {
    out->api = FKV_NATIVE_OPENCL;
    out->opencl = (fkv_opencl_objects){.context = d->context,
                                       .device = d->device,
                                       .queue = d->queues[FKV_QUEUE_COMPUTE]};
    return FKV_OK;
}

static fkv_status ocl_opened_info(fkv_bdev *d, fkv_device_info *info) {
    if (d == NULL || info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "opencl opened_info: NULL argument");
    *info = d->info;
    return FKV_OK;
}

static fkv_recall_mode ocl_recall_mode(fkv_bdev *d) { return d->recall; }

/* ---- options (docs/backend-options.md) ---- */

static const char *const settable[] = {"attention_splits", "shared_memory_bytes", "kernel_source",
                                       "attention_vector", "attention_fused_reduce", NULL};
static const char *const readable[] = {"attention_splits", "shared_memory_bytes", "cache_loads",
                                       "cache_stores", "svm_host", "attention_vector",
                                       "attention_fused_reduce", NULL};

static fkv_status ocl_set_option(fkv_bdev *d, const char *key, const char *value) {
    uint64_t v = 0;
    fkv_status st = FKV_OK;
    if (strcmp(key, "attention_splits") == 0) {
        st = fkv_option_splits("opencl", key, value, &d->forced_splits);
    } else if (strcmp(key, "shared_memory_bytes") == 0) {
        if ((st = fkv_option_limit("opencl", key, value, d->local_mem_device, &v)) == FKV_OK)
            d->local_mem = v;
    } else if (strcmp(key, "kernel_source") == 0) {
        st = fkv_ocl_set_source(d, value[0] ? value : NULL);
    } else if (strcmp(key, "attention_vector") == 0) {
        if ((st = fkv_option_uint("opencl", key, value, 16, &v)) == FKV_OK && v != 4 && v != 8 &&
            v != 16)
            st = fkv_error(FKV_ERR_INVALID_ARGUMENT,
                           "opencl option attention_vector: '%s' is not 4, 8 or 16", value);
        if (st == FKV_OK)
            fkv_ocl_set_attention_vec(d, (cl_uint)v);
    } else if (strcmp(key, "attention_fused_reduce") == 0) {
        st = fkv_option_uint("opencl", key, value, 1, &v);
        if (st == FKV_OK && v && !d->device_atomics)
            st = fkv_error(FKV_ERR_UNSUPPORTED,
                           "opencl option attention_fused_reduce: device '%s' has no device-scope "
                           "acquire/release atomics (OpenCL C 2.0, or 3.0 with "
                           "__opencl_c_atomic_order_acq_rel and __opencl_c_atomic_scope_device)",
                           d->info.name);
        if (st == FKV_OK)
            d->fused_reduce = (int)v;
    } else {
        st = fkv_option_unknown("opencl", "settable", key, settable);
    }
    return st;
}

static fkv_status ocl_get_option(fkv_bdev *d, const char *key, char *out, size_t size) {
    uint64_t v;
    if (strcmp(key, "attention_splits") == 0)
        v = d->forced_splits;
    else if (strcmp(key, "shared_memory_bytes") == 0)
        v = d->local_mem;
    else if (strcmp(key, "cache_loads") == 0)
        v = atomic_load(&d->cache_loads);
    else if (strcmp(key, "cache_stores") == 0)
        v = atomic_load(&d->cache_stores);
    else if (strcmp(key, "svm_host") == 0)
        v = (uint64_t)d->svm_host;
    else if (strcmp(key, "attention_vector") == 0)
        v = d->attention_vec;
    else if (strcmp(key, "attention_fused_reduce") == 0)
        v = (uint64_t)d->fused_reduce;
    else
        return fkv_option_unknown("opencl", "readable", key, readable);
    return fkv_option_print_uint("opencl", key, v, out, size);
}

/* ---- the table ---- */

static const fkv_bcounters *ocl_counters(fkv_bdev *d) { return &d->counters; }

static const fkv_backend_ops opencl_ops = {
    .abi_version = FKV_BACKEND_ABI_VERSION,
    .struct_size = sizeof(fkv_backend_ops),
    .name = "opencl",
    .device_count = ocl_device_count,
    .device_info = ocl_device_info,
    .device_open = ocl_device_open,
    .device_close = ocl_device_close,
    .buffer_alloc = fkv_ocl_buffer_alloc,
    .buffer_free = fkv_ocl_buffer_free,
    .host_alloc = fkv_ocl_host_alloc,
    .host_free = fkv_ocl_host_free,
    .event_wait = fkv_ocl_event_wait,
    .event_release = fkv_ocl_event_release,
    .marker = fkv_ocl_marker,
    .finish = fkv_ocl_finish,
    .write = fkv_ocl_write,
    .read = fkv_ocl_read,
    .copy = fkv_ocl_copy,
    .append = fkv_ocl_append,
    .summarize = fkv_ocl_summarize,
    .scores = fkv_ocl_scores,
    .cosine_flags = fkv_ocl_cosine_flags,
    .pack_hnd = fkv_ocl_pack_hnd,
    .scatter_hnd = fkv_ocl_scatter_hnd,
    .attention = fkv_ocl_attention,
    .buffer_import = fkv_ocl_buffer_import,
    .write_regions = NULL, /* OpenCL has no multi-region host->buffer copy */
    .attention_dense = fkv_ocl_attention_dense,
    .recall_direct = fkv_ocl_recall_direct,
    .recall_mode = ocl_recall_mode,
    .opened_info = ocl_opened_info,
    .check_geometry = fkv_ocl_check_geometry,
    .host_formats = fkv_ocl_host_formats,
    .set_option = ocl_set_option,
    .get_option = ocl_get_option,
    .counters = ocl_counters,
    .select_pages = fkv_ocl_select_pages,
    .native_api = FKV_NATIVE_OPENCL,
    .device_open_native = ocl_device_open_native,
    .native_objects = ocl_native_objects,
    .event_import = fkv_ocl_event_import,
    .event_unimport = fkv_ocl_event_release,
    .event_signal = fkv_ocl_event_signal,
    .event_query = fkv_ocl_event_query,
    .scores_check = fkv_ocl_scores_check,
};

const fkv_backend_ops *fkv_backend_opencl(void) { return &opencl_ops; }

