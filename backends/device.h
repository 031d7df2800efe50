/* The public device and buffer handles: an ops table plus the backend's own object. */
#ifndef FKV_BACKENDS_DEVICE_H
#define FKV_BACKENDS_DEVICE_H

#include "backend.h"

struct fkv_device {
    const fkv_backend_ops *ops;
    fkv_bdev *bdev;
    fkv_device_info info;
};

struct fkv_buffer {
    fkv_device *dev;
    fkv_bbuf *bbuf;
    size_t size;
};

/* Opens device `index` of an explicit ops table (tests use it for tables with optional
 * entries removed, to exercise the generic fallbacks). */
fkv_status fkv_device_open_ops(const fkv_backend_ops *ops, uint32_t index, fkv_device **out);

#endif
