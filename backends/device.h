/* The public device and buffer handles: an ops table plus the backend's own object. Private to
 * backends/ and core/ (everything else goes through backends/dispatch.h). */
#ifndef FKV_BACKENDS_DEVICE_H
#define FKV_BACKENDS_DEVICE_H

#include "backend.h"
#include "freekv.h"

struct fkv_device {
    const fkv_backend_ops *ops;
    fkv_bdev *bdev;
    fkv_device_info info;
    fkv_device *viewed; /* a view (fkv_device_view): the device whose bdev it borrows */
};

struct fkv_buffer {
    fkv_device *dev;
    fkv_bbuf *bbuf;
    size_t size;
};

#endif
