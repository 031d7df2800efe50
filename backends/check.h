/* The argument checks every device backend makes before it enqueues a kernel, written once.
 * Each refuses with FKV_ERR_INVALID_ARGUMENT and a message that starts "<backend> <op>:".
 * Buffers are passed as (present, size, address) because each backend has its own fkv_bbuf;
 * `addr` is what must be aligned: the offset itself where the API aligns every allocation
 * (OpenCL, Vulkan), the real address where buffers may be imported pointers (HIP). */
#ifndef FKV_BACKENDS_CHECK_H
#define FKV_BACKENDS_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* Any enqueue: one of the FKV_QUEUE_COUNT queues. */
fkv_status fkv_check_queue(const char *backend, const char *op, fkv_queue q);

/* write/read: a queue, `size` bytes at `off` of the buffer, a host pointer unless size is 0. */
fkv_status fkv_check_host_transfer(const char *backend, const char *op, fkv_queue q, int present,
                                   size_t buf_size, size_t off, size_t size, const void *host);

/* copy: a queue and both ranges. */
fkv_status fkv_check_device_copy(const char *backend, fkv_queue q, int dst_present,
                                 size_t dst_size, size_t dst_off, int src_present,
                                 size_t src_size, size_t src_off, size_t size);

/* A kernel call: a device, the compute or background queue, a valid geometry whose slot and
 * (sequence, KV head) query block fit the kernels' 32-bit indices. */
fkv_status fkv_check_kernel_call(const char *backend, const char *op, const void *dev,
                                 fkv_queue q, const fkv_kv_geom *g);

/* `bytes` at `off` inside a buffer of `size` bytes, `addr` aligned to `align`. */
fkv_status fkv_check_span(const char *backend, const char *op, const char *what, int present,
                          size_t size, size_t off, uint64_t bytes, size_t align, uintptr_t addr);

/* Whole slots both KV pools hold, capped so rows (slot * page + token) fit 32 bits; kernels
 * skip slot indices at or beyond it. k_addr/v_addr must be aligned to the dtype. */
fkv_status fkv_check_pool_slots(const char *backend, const char *op, const fkv_kv_geom *g,
                                int present, size_t k_size, size_t v_size, uintptr_t k_addr,
                                uintptr_t v_addr, uint32_t *n_slots);

#endif
