/* The recall engine: moves (page, KV head) units from the HND host pool into NHD device slots
 * by the mechanism the device allows. STAGED is the portable double-buffered path: the host
 * gathers chunk i+1 into one pinned staging buffer while chunk i is written and scattered
 * from the other. */
#ifndef FKV_CORE_RECALL_H
#define FKV_CORE_RECALL_H

#include "../backends/dispatch.h"
#include "threadpool.h"

typedef struct fkv_recall_unit {
    const fkv_bhost *host; /* host allocation holding the unit */
    uint64_t host_offset;  /* byte offset of the unit in it */
    const void *src;       /* = host base + host_offset: [K|V][page_size][head_dim] in dtype */
    int32_t gslot;
    int32_t kv_head;
} fkv_recall_unit;

typedef struct fkv_recaller fkv_recaller;

/* chunk_units: units per staging buffer (0 = 256). pool may be NULL (gather on the caller). */
fkv_status fkv_recaller_create(fkv_device *dev, const fkv_kv_geom *g,
                               fkv_recall_mode mode, uint32_t chunk_units, fkv_recaller **out);
void fkv_recaller_set_pool(fkv_recaller *r, fkv_pool *pool);
void fkv_recaller_destroy(fkv_recaller *r);
/* Bytes of host and device memory a recaller created with these arguments holds (staging). */
void fkv_recaller_bytes(const fkv_kv_geom *g, fkv_recall_mode mode, uint32_t chunk_units,
                        uint64_t *host_bytes, uint64_t *device_bytes);
/* Bytes of host and device memory the recaller holds (staging). */
void fkv_recaller_memory(const fkv_recaller *r, uint64_t *host_bytes, uint64_t *device_bytes);

/* Recalls units into the pools with kernels on queue q (copies on FKV_QUEUE_TRANSFER). Waits
 * on deps.wait before any slot is overwritten; *deps.done completes when all units are in
 * place. The caller's thread is blocked only for host gathers and for staging reuse. The
 * units array may be reused when this returns. */
fkv_status fkv_recaller_run(fkv_recaller *r, fkv_queue q, uint32_t n, const fkv_recall_unit *units,
                            fkv_bbuf *kpool, fkv_bbuf *vpool, fkv_deps deps);

#endif
