/* Run-time backend and device selection (FREEKV_BACKEND, FREEKV_DEVICE) and the public
 * device/buffer calls.
 *
 * Threads: every call into a driver's enumeration (device_count, device_info) and every
 * device_open runs under one process-wide lock, driver_lock. Any of them can be the process's
 * first call into a driver, and first calls are not thread-safe everywhere: two threads
 * entering the OpenCL ICD loader and PoCL at once crash inside PoCL or see no platform.
 * A once-only warm-up would not do: a later open enumerates again, and a driver can be
 * entered first by device_open (fkv_device_open_ops). Per-backend locks would be narrower but
 * would let PoCL and lavapipe initialise the libLLVM they share at the same moment, so the
 * lock spans backends. It covers only enumeration and opening, which are rare and short
 * (programs are built at first use, not at open); closing, buffers, contexts and decoding
 * never take it. */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/env.h"
#include "../common/error.h"
#include "device.h"
#include "dispatch.h"

#define MAX_DEVICES 64

static pthread_mutex_t driver_lock = PTHREAD_MUTEX_INITIALIZER;

/* "auto", then every backend folder (generated list), in preference order. */
#define CHOICE(name) #name,
static const char *const backend_choices[] = {"auto", FKV_BACKENDS_KNOWN(CHOICE)};
#undef CHOICE
#define N_CHOICES ((int)(sizeof backend_choices / sizeof *backend_choices))

/* The backends compiled in, in the same order. */
typedef struct compiled_entry {
    const char *name;
    const fkv_backend_ops *(*ops)(void);
} compiled_entry;
#define ENTRY(name) {#name, fkv_backend_##name},
static const compiled_entry compiled[] = {FKV_BACKENDS_COMPILED(ENTRY)};
#undef ENTRY
#define N_COMPILED (sizeof compiled / sizeof *compiled)

const fkv_backend_ops *fkv_backend_find(const char *name) {
    for (size_t i = 0; name && i < N_COMPILED; i++)
        if (strcmp(compiled[i].name, name) == 0)
            return compiled[i].ops();
    return NULL;
}

static const fkv_backend_ops *compiled_backend(const char *name) { return fkv_backend_find(name); }

size_t fkv_backend_count(void) { return N_COMPILED; }

const char *fkv_backend_name(size_t index) {
    return index < N_COMPILED ? compiled[index].name : NULL;
}

fkv_status fkv_backend_check(const fkv_backend_ops *ops) {
    if (ops == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "backend ops table is NULL");
    if (ops->abi_version != FKV_BACKEND_ABI_VERSION)
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s' has ABI version %u, library needs %u",
                         ops->name ? ops->name : "?", ops->abi_version, FKV_BACKEND_ABI_VERSION);
    if (ops->struct_size < offsetof(fkv_backend_ops, buffer_import))
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s' ops table too small (%u bytes)",
                         ops->name ? ops->name : "?", ops->struct_size);
    const void *required[] = {
        (const void *)ops->name,         (const void *)ops->device_count,
        (const void *)ops->device_info,  (const void *)ops->device_open,
        (const void *)ops->device_close, (const void *)ops->buffer_alloc,
        (const void *)ops->buffer_free,  (const void *)ops->host_alloc,
        (const void *)ops->host_free,    (const void *)ops->event_wait,
        (const void *)ops->event_release, (const void *)ops->marker,
        (const void *)ops->finish,       (const void *)ops->write,
        (const void *)ops->read,         (const void *)ops->copy,
        (const void *)ops->append,       (const void *)ops->summarize,
        (const void *)ops->scores,       (const void *)ops->cosine_flags,
        (const void *)ops->pack_hnd,     (const void *)ops->scatter_hnd,
        (const void *)ops->attention,
    };
    for (size_t i = 0; i < sizeof required / sizeof *required; i++)
        if (required[i] == NULL)
            return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s' lacks required entry #%zu",
                             ops->name ? ops->name : "?", i);
    return FKV_OK;
}

/* Devices of one backend appended to list; a backend that fails to enumerate counts as
 * having none (its driver is missing), so listing never fails because of it. */
static size_t collect(const fkv_backend_ops *ops, fkv_device_info *list, size_t n) {
    uint32_t count = 0;
    if (fkv_backend_check(ops) != FKV_OK)
        return n;
    pthread_mutex_lock(&driver_lock);
    if (ops->device_count(&count) != FKV_OK)
        count = 0;
    for (uint32_t i = 0; i < count && n < MAX_DEVICES; i++) {
        fkv_device_info info;
        memset(&info, 0, sizeof info);
        if (ops->device_info(i, &info) != FKV_OK)
            continue;
        snprintf(info.backend, sizeof info.backend, "%s", ops->name);
        info.index = i;
        list[n++] = info;
    }
    pthread_mutex_unlock(&driver_lock);
    return n;
}

/* The canonical name of a backend argument (case-insensitive, like FREEKV_BACKEND). */
static fkv_status backend_argument(const char *name, const char **out) {
    int i = fkv_choice_index(name, backend_choices, N_CHOICES);
    if (i < 0) {
        char valid[128];
        fkv_choice_list(backend_choices, N_CHOICES, valid, sizeof valid);
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "backend argument: unknown backend '%s' "
                         "(valid: %s)", name, valid);
    }
    *out = backend_choices[i];
    return FKV_OK;
}

static void compiled_list(char *buf, size_t size) {
    snprintf(buf, size, "auto");
    for (size_t i = 0; i < fkv_backend_count(); i++) {
        size_t len = strlen(buf);
        snprintf(buf + len, size - len, ", %s", fkv_backend_name(i));
    }
}

/* Gathers the devices of `backend`, a canonical name ("auto" = all, in preference order). */
static fkv_status gather(const char *backend, const char *origin, fkv_device_info *list,
                         size_t *n) {
    char avail[128];
    *n = 0;
    if (strcmp(backend, "auto") == 0) {
        for (size_t i = 0; i < fkv_backend_count(); i++)
            *n = collect(compiled_backend(fkv_backend_name(i)), list, *n);
        return FKV_OK;
    }
    const fkv_backend_ops *ops = compiled_backend(backend);
    if (ops == NULL) {
        compiled_list(avail, sizeof avail);
        return fkv_error(FKV_ERR_NO_DEVICE, "%s: backend '%s' is not compiled in (available: %s)",
                         origin, backend, avail);
    }
    *n = collect(ops, list, 0);
    return FKV_OK;
}

fkv_status fkv_device_list(const char *backend, fkv_device_info *out, size_t capacity,
                           size_t *count) {
    fkv_device_info list[MAX_DEVICES];
    size_t n;
    if (count == NULL || (out == NULL && capacity > 0))
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_device_list: NULL output");
    const char *name = "auto";
    fkv_status st = backend ? backend_argument(backend, &name) : FKV_OK;
    if (st == FKV_OK)
        st = gather(name, "fkv_device_list", list, &n);
    if (st != FKV_OK)
        return st;
    for (size_t i = 0; i < n && i < capacity; i++)
        out[i] = list[i];
    *count = n;
    return FKV_OK;
}

static int type_rank(fkv_device_type t) {
    switch (t) {
    case FKV_DEVICE_DISCRETE_GPU:
        return 0;
    case FKV_DEVICE_INTEGRATED_GPU:
        return 1;
    case FKV_DEVICE_OTHER:
        return 2;
    case FKV_DEVICE_CPU:
        return 3;
    default:
        return 4;
    }
}

static int is_index(const char *s) {
    if (*s == '\0')
        return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return 0;
    return 1;
}

static void device_names(const fkv_device_info *list, size_t n, char *buf, size_t size) {
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(buf);
        snprintf(buf + len, size - len, "%s[%zu] %.15s:%.127s", i ? ", " : "", i,
                 list[i].backend, list[i].name);
    }
    if (n == 0)
        snprintf(buf, size, "none");
}

/* Resolves backend/device names (arguments override the environment) to one device. */
static fkv_status resolve(const char *backend, const char *device, fkv_device_info *chosen) {
    const char *be_origin = "backend argument", *dev_origin = "device argument";
    fkv_status st;
    if (backend == NULL) {
        int i;
        if ((st = fkv_env_choice("FREEKV_BACKEND", backend_choices, N_CHOICES, 0, &i)) != FKV_OK)
            return st;
        backend = backend_choices[i];
        be_origin = "FREEKV_BACKEND";
    } else if ((st = backend_argument(backend, &backend)) != FKV_OK) {
        return st;
    }
    if (device == NULL) {
        device = fkv_env_get("FREEKV_DEVICE");
        dev_origin = "FREEKV_DEVICE";
    }
    fkv_device_info list[MAX_DEVICES];
    size_t n;
    st = gather(backend, be_origin, list, &n);
    if (st != FKV_OK)
        return st;
    char names[2048];
    device_names(list, n, names, sizeof names);
    if (n == 0)
        return fkv_error(FKV_ERR_NO_DEVICE, "backend '%s' found no device", backend);
    if (device == NULL) {
        /* by device type; among equals, a device whose kernels read host memory directly
         * (zero-copy recall) wins; then backend order */
        size_t best = 0;
        for (size_t i = 1; i < n; i++) {
            int ri = type_rank(list[i].type), rb = type_rank(list[best].type);
            int zi = !!(list[i].caps & FKV_CAP_ZERO_COPY_HOST);
            int zb = !!(list[best].caps & FKV_CAP_ZERO_COPY_HOST);
            if (ri < rb || (ri == rb && zi > zb))
                best = i;
        }
        *chosen = list[best];
        return FKV_OK;
    }
    if (is_index(device)) {
        char *end;
        unsigned long idx = strtoul(device, &end, 10);
        if (idx >= n)
            return fkv_error(FKV_ERR_NO_DEVICE, "%s: no device %s for backend '%s' (available: %s)",
                             dev_origin, device, backend, names);
        *chosen = list[idx];
        return FKV_OK;
    }
    for (size_t i = 0; i < n; i++) {
        char full[sizeof list[i].backend + sizeof list[i].name + 1];
        snprintf(full, sizeof full, "%.15s:%.127s", list[i].backend, list[i].name);
        if (strcasestr(full, device) != NULL) {
            *chosen = list[i];
            return FKV_OK;
        }
    }
    return fkv_error(FKV_ERR_NO_DEVICE, "%s: no device matches '%s' for backend '%s' (available: %s)",
                     dev_origin, device, backend, names);
}

fkv_status fkv_device_pick(const char *backend, const char *device, fkv_device_info *info) {
    if (info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_device_pick: NULL info");
    return resolve(backend, device, info);
}

/* Capabilities and optional entries must agree (backend.h): checked once, at open, so that
 * no call later falls back silently from what the device claims. */
static fkv_status check_agreement(const fkv_backend_ops *ops, fkv_bdev *bdev,
                                  const fkv_device_info *info) {
    int direct = FKV_HAS_ENTRY(ops, recall_direct);
    if ((info->caps & FKV_CAP_ZERO_COPY_HOST) && !direct)
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s': device '%s' reports zero_copy_host "
                         "but the ops table has no recall_direct",
                         ops->name, info->name);
    if (FKV_HAS_ENTRY(ops, recall_mode) && ops->recall_mode(bdev) == FKV_RECALL_DIRECT &&
        !direct)
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s': device '%s' reports the direct "
                         "recall mode but the ops table has no recall_direct",
                         ops->name, info->name);
    if ((info->caps & FKV_CAP_MULTI_REGION_COPY) && !FKV_HAS_ENTRY(ops, write_regions))
        return fkv_error(FKV_ERR_UNSUPPORTED, "backend '%s': device '%s' reports "
                         "multi_region_copy but the ops table has no write_regions",
                         ops->name, info->name);
    return FKV_OK;
}

/* Opens through `open` (device_open of an index, or device_open_native) under the driver
 * lock, reads the info, checks capabilities against entries; on failure closes what opened.
 * `what` names the device in a failure's message. */
typedef fkv_status (*open_fn)(const fkv_backend_ops *ops, const void *arg, fkv_bdev **out);

static fkv_status open_device(const fkv_backend_ops *ops, open_fn open, const void *arg,
                              const char *what, fkv_device **out) {
    fkv_device *dev = calloc(1, sizeof *dev);
    if (dev == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "fkv_device_open: allocating the handle");
    dev->ops = ops;
    pthread_mutex_lock(&driver_lock);
    fkv_status st = open(ops, arg, &dev->bdev);
    if (st == FKV_OK)
        st = FKV_HAS_ENTRY(ops, opened_info) ? ops->opened_info(dev->bdev, &dev->info)
                                             : ops->device_info(*(const uint32_t *)arg,
                                                                &dev->info);
    pthread_mutex_unlock(&driver_lock);
    if (st == FKV_OK)
        st = check_agreement(ops, dev->bdev, &dev->info);
    if (st != FKV_OK) {
        if (dev->bdev)
            ops->device_close(dev->bdev);
        free(dev);
        return fkv_error_prefix(st, "opening %s", what);
    }
    snprintf(dev->info.backend, sizeof dev->info.backend, "%s", ops->name);
    *out = dev;
    return FKV_OK;
}

static fkv_status open_index(const fkv_backend_ops *ops, const void *arg, fkv_bdev **out) {
    return ops->device_open(*(const uint32_t *)arg, out);
}

fkv_status fkv_device_open_ops(const fkv_backend_ops *ops, uint32_t index, fkv_device **out) {
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_device_open: NULL output");
    *out = NULL;
    fkv_status st = fkv_backend_check(ops);
    if (st != FKV_OK)
        return st;
    char what[64];
    snprintf(what, sizeof what, "%s device %u", ops->name, index);
    if ((st = open_device(ops, open_index, &index, what, out)) == FKV_OK)
        (*out)->info.index = index;
    return st;
}

fkv_status fkv_device_view(fkv_device *dev, const fkv_backend_ops *ops, fkv_device **out) {
    if (dev == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_device_view: NULL argument");
    *out = NULL;
    fkv_status st = fkv_backend_check(ops);
    if (st == FKV_OK)
        st = check_agreement(ops, dev->bdev, &dev->info);
    if (st != FKV_OK)
        return st;
    fkv_device *view = calloc(1, sizeof *view);
    if (view == NULL)
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "fkv_device_view: allocating the handle");
    *view = *dev;
    view->ops = ops;
    view->viewed = dev;
    *out = view;
    return FKV_OK;
}

fkv_status fkv_device_open(const char *backend, const char *device, fkv_device **out) {
    fkv_device_info chosen;
    if (out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_device_open: NULL output");
    *out = NULL;
    fkv_status st = resolve(backend, device, &chosen);
    if (st != FKV_OK)
        return st;
    return fkv_device_open_ops(compiled_backend(chosen.backend), chosen.index, out);
}

void fkv_device_close(fkv_device *dev) {
    if (dev == NULL)
        return;
    if (dev->viewed == NULL) /* a view leaves its device open */
        dev->ops->device_close(dev->bdev);
    free(dev);
}

fkv_status fkv_device_get_info(const fkv_device *dev, fkv_device_info *info) {
    if (dev == NULL || info == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_device_get_info: NULL argument");
    *info = dev->info;
    return FKV_OK;
}

const char *fkv_device_type_name(fkv_device_type type) {
    switch (type) {
    case FKV_DEVICE_DISCRETE_GPU:
        return "discrete-gpu";
    case FKV_DEVICE_INTEGRATED_GPU:
        return "integrated-gpu";
    case FKV_DEVICE_CPU:
        return "cpu";
    case FKV_DEVICE_REFERENCE:
        return "reference";
    default:
        return "other";
    }
}

fkv_status fkv_caps_string(uint32_t caps, char *buf, size_t buf_size) {
    static const char *const names[] = {"async_copy", "device_wait", "pinned_host",
                                        "zero_copy_host", "fp16_storage", "multi_region_copy",
                                        "transfer_queue"};
    if (buf == NULL || buf_size == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_caps_string: no buffer");
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (!(caps & (1u << i)))
            continue;
        size_t len = strlen(buf);
        snprintf(buf + len, buf_size - len, "%s%s", len ? "," : "", names[i]);
    }
    return FKV_OK;
}

/* ---- buffers ---- */

static fkv_status wrap(fkv_device *dev, fkv_bbuf *bbuf, size_t size, fkv_buffer **out) {
    fkv_buffer *b = calloc(1, sizeof *b);
    if (b == NULL) {
        fkv_op_buffer_free(dev, bbuf);
        return fkv_error(FKV_ERR_OUT_OF_HOST_MEMORY, "allocating a buffer handle");
    }
    b->dev = dev;
    b->bbuf = bbuf;
    b->size = size;
    *out = b;
    return FKV_OK;
}

fkv_status fkv_buffer_alloc(fkv_device *dev, size_t size, fkv_buffer **out) {
    fkv_bbuf *bbuf;
    if (dev == NULL || out == NULL || size == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_buffer_alloc: NULL device/output or size 0");
    *out = NULL;
    fkv_status st = fkv_op_buffer_alloc(dev, size, &bbuf);
    if (st != FKV_OK)
        return st;
    return wrap(dev, bbuf, size, out);
}

fkv_status fkv_buffer_import(fkv_device *dev, void *native, size_t size, fkv_buffer **out) {
    fkv_bbuf *bbuf;
    if (dev == NULL || out == NULL || native == NULL || size == 0)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_buffer_import: NULL argument or size 0");
    *out = NULL;
    fkv_status st = fkv_op_buffer_import(dev, native, size, &bbuf);
    if (st != FKV_OK)
        return st;
    return wrap(dev, bbuf, size, out);
}

static fkv_status check_range(const fkv_buffer *buf, size_t offset, const void *p, size_t size) {
    if (buf == NULL || p == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "buffer copy: NULL argument");
    if (offset > buf->size || size > buf->size - offset)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "buffer copy: %zu bytes at %zu exceed size %zu",
                         size, offset, buf->size);
    return FKV_OK;
}

fkv_status fkv_buffer_write(fkv_buffer *buf, size_t offset, const void *src, size_t size) {
    fkv_status st = check_range(buf, offset, src, size);
    if (st != FKV_OK || size == 0)
        return st;
    fkv_device *d = buf->dev;
    fkv_bevent *ev = NULL;
    fkv_deps deps = {0, NULL, &ev};
    st = fkv_op_write(d, FKV_QUEUE_COMPUTE, deps, buf->bbuf, offset, src, size);
    if (st != FKV_OK)
        return st;
    st = fkv_op_event_wait(d, 1, &ev);
    fkv_op_event_release(d, ev);
    return st;
}

fkv_status fkv_buffer_read(fkv_buffer *buf, size_t offset, void *dst, size_t size) {
    fkv_status st = check_range(buf, offset, dst, size);
    if (st != FKV_OK || size == 0)
        return st;
    fkv_device *d = buf->dev;
    fkv_bevent *ev = NULL;
    fkv_deps deps = {0, NULL, &ev};
    st = fkv_op_read(d, FKV_QUEUE_COMPUTE, deps, buf->bbuf, offset, dst, size);
    if (st != FKV_OK)
        return st;
    st = fkv_op_event_wait(d, 1, &ev);
    fkv_op_event_release(d, ev);
    return st;
}

void fkv_buffer_release(fkv_buffer *buf) {
    if (buf == NULL)
        return;
    fkv_op_buffer_free(buf->dev, buf->bbuf);
    free(buf);
}

/* ---- engine interop ---- */

const char *fkv_native_api_name(fkv_native_api api) {
    switch (api) {
    case FKV_NATIVE_OPENCL:
        return "opencl";
    case FKV_NATIVE_VULKAN:
        return "vulkan";
    case FKV_NATIVE_HIP:
        return "hip";
    default:
        return "none";
    }
}

static fkv_status open_native(const fkv_backend_ops *ops, const void *arg, fkv_bdev **out) {
    return ops->device_open_native(arg, out);
}

fkv_status fkv_device_open_native(const fkv_native_objects *objs, fkv_device **out) {
    if (out == NULL || objs == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_device_open_native: NULL argument");
    *out = NULL;
    if (objs->api != FKV_NATIVE_OPENCL && objs->api != FKV_NATIVE_VULKAN &&
        objs->api != FKV_NATIVE_HIP)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                         "fkv_device_open_native: api %d is not a native API (opencl, vulkan, hip)",
                         (int)objs->api);
    /* the backend that takes this API's objects, by its table */
    const fkv_backend_ops *ops = NULL;
    for (size_t i = 0; i < N_COMPILED && ops == NULL; i++) {
        const fkv_backend_ops *o = compiled[i].ops();
        /* opened_info too: open_device reads the info of a native device through it */
        if (fkv_backend_check(o) == FKV_OK && FKV_TABLE_NATIVE_API(o) == objs->api &&
            FKV_HAS_ENTRY(o, device_open_native) && FKV_HAS_ENTRY(o, opened_info))
            ops = o;
    }
    if (ops == NULL) {
        char avail[128];
        compiled_list(avail, sizeof avail);
        return fkv_error(FKV_ERR_NO_DEVICE, "fkv_device_open_native: no backend of this build "
                         "takes %s objects (backends: %s)",
                         fkv_native_api_name(objs->api), avail);
    }
    char what[64];
    snprintf(what, sizeof what, "the engine's %s device", fkv_native_api_name(objs->api));
    return open_device(ops, open_native, objs, what, out);
}

fkv_status fkv_device_get_native(const fkv_device *dev, fkv_native_objects *out) {
    if (dev == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_device_get_native: NULL argument");
    return fkv_op_native_objects((fkv_device *)dev, out);
}
