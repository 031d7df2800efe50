#include "check.h"

#include "../common/error.h"

#define REFUSE(...) fkv_error(FKV_ERR_INVALID_ARGUMENT, __VA_ARGS__)

fkv_status fkv_check_queue(const char *backend, const char *op, fkv_queue q) {
    if ((unsigned)q >= FKV_QUEUE_COUNT)
        return REFUSE("%s %s: bad queue %d", backend, op, (int)q);
    return FKV_OK;
}

fkv_status fkv_check_host_transfer(const char *backend, const char *op, fkv_queue q, int present,
                                   size_t buf_size, size_t off, size_t size, const void *host) {
    fkv_status st = fkv_check_queue(backend, op, q);
    if (st == FKV_OK)
        st = fkv_check_span(backend, op, "buffer", present, buf_size, off, size, 1, 0);
    if (st == FKV_OK && host == NULL && size)
        st = REFUSE("%s %s: NULL host pointer", backend, op);
    return st;
}

fkv_status fkv_check_device_copy(const char *backend, fkv_queue q, int dst_present,
                                 size_t dst_size, size_t dst_off, int src_present,
                                 size_t src_size, size_t src_off, size_t size) {
    fkv_status st = fkv_check_queue(backend, "copy", q);
    if (st == FKV_OK)
        st = fkv_check_span(backend, "copy", "destination", dst_present, dst_size, dst_off, size,
                            1, 0);
    if (st == FKV_OK)
        st = fkv_check_span(backend, "copy", "source", src_present, src_size, src_off, size, 1,
                            0);
    return st;
}

fkv_status fkv_check_kernel_call(const char *backend, const char *op, const void *dev,
                                 fkv_queue q, const fkv_kv_geom *g) {
    if (dev == NULL)
        return REFUSE("%s %s: NULL device", backend, op);
    if (q != FKV_QUEUE_COMPUTE && q != FKV_QUEUE_BACKGROUND)
        return REFUSE("%s %s: kernels run on the compute or background queue, not %d", backend,
                      op, (int)q);
    if (g == NULL)
        return REFUSE("%s %s: NULL geometry", backend, op);
    if (g->n_kv_heads == 0 || g->group == 0 || g->head_dim == 0 || g->page_size == 0)
        return REFUSE("%s %s: geometry with a zero (kv heads %u, group %u, d %u, page %u)",
                      backend, op, g->n_kv_heads, g->group, g->head_dim, g->page_size);
    if (fkv_dtype_size(g->dtype) == 0)
        return REFUSE("%s %s: unknown dtype %d", backend, op, (int)g->dtype);
    uint64_t slot = (uint64_t)g->page_size * g->n_kv_heads * g->head_dim * 2;
    uint64_t qblock = (uint64_t)g->n_kv_heads * g->group * g->head_dim;
    if (slot > INT32_MAX || qblock > INT32_MAX)
        return REFUSE("%s %s: geometry too large for 32-bit kernel indices", backend, op);
    return FKV_OK;
}

fkv_status fkv_check_span(const char *backend, const char *op, const char *what, int present,
                          size_t size, size_t off, uint64_t bytes, size_t align, uintptr_t addr) {
    if (!present)
        return REFUSE("%s %s: %s is NULL", backend, op, what);
    if (off > size || bytes > size - off)
        return REFUSE("%s %s: %s needs %llu bytes at offset %zu of a %zu-byte buffer", backend,
                      op, what, (unsigned long long)bytes, off, size);
    if (align > 1 && addr % align != 0)
        return REFUSE("%s %s: %s at offset %zu is not aligned to %zu bytes", backend, op, what,
                      off, align);
    return FKV_OK;
}

fkv_status fkv_check_pool_slots(const char *backend, const char *op, const fkv_kv_geom *g,
                                int present, size_t k_size, size_t v_size, uintptr_t k_addr,
                                uintptr_t v_addr, uint32_t *n_slots) {
    if (!present)
        return REFUSE("%s %s: NULL KV pool", backend, op);
    size_t es = fkv_dtype_size(g->dtype);
    if (k_addr % es || v_addr % es)
        return REFUSE("%s %s: KV pool not aligned to its dtype", backend, op);
    size_t slot_bytes = (size_t)g->page_size * g->n_kv_heads * g->head_dim * es;
    size_t n = (k_size < v_size ? k_size : v_size) / slot_bytes;
    if (n == 0)
        return REFUSE("%s %s: KV pools smaller than one slot (%zu bytes)", backend, op,
                      slot_bytes);
    size_t max_slots = UINT32_MAX / g->page_size;
    *n_slots = (uint32_t)(n < max_slots ? n : max_slots);
    return FKV_OK;
}
