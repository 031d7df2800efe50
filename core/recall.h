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

/* chunk_units: units per staging buffer (0 = 256); carry_bytes: room in each staging buffer
 * for bytes a run carries with its tables (fkv_recaller_run_with). pool may be NULL (gather
 * on the caller). */
fkv_status fkv_recaller_create(fkv_device *dev, const fkv_kv_geom *g, fkv_recall_mode mode,
                               uint32_t chunk_units, size_t carry_bytes, fkv_recaller **out);
void fkv_recaller_set_pool(fkv_recaller *r, fkv_pool *pool);
void fkv_recaller_destroy(fkv_recaller *r);
/* Bytes of host and device memory a recaller created with these arguments holds (staging). */
void fkv_recaller_bytes(const fkv_kv_geom *g, fkv_recall_mode mode, uint32_t chunk_units,
                        size_t carry_bytes, uint64_t *host_bytes, uint64_t *device_bytes);
/* Bytes of host and device memory the recaller holds (staging). */
void fkv_recaller_memory(const fkv_recaller *r, uint64_t *host_bytes, uint64_t *device_bytes);

/* Recalls units into the pools with kernels on queue q (copies on FKV_QUEUE_TRANSFER). Waits
 * on deps.wait before any slot is overwritten; *deps.done completes when all units are in
 * place. The caller's thread is blocked only for host gathers and for staging reuse. The
 * units array may be reused when this returns. */
fkv_status fkv_recaller_run(fkv_recaller *r, fkv_queue q, uint32_t n, const fkv_recall_unit *units,
                            fkv_bbuf *kpool, fkv_bbuf *vpool, fkv_deps deps);

/* Bytes a recall carries to the device in its last table write, so that data known with the
 * plan (the attention lists of a correction) costs no command of its own. */
typedef struct fkv_recall_carry {
    const void *bytes; /* in: read during the call */
    size_t size;       /* in: at most the carry_bytes of fkv_recaller_create */
    const fkv_bbuf *buf; /* out: where they are on the device, or NULL when they did not go
                          * (nothing to recall): the caller writes them itself */
    size_t off;
} fkv_recall_carry;

/* fkv_recaller_run, carrying carry's bytes (NULL: as fkv_recaller_run). They stay valid on
 * the device until a later run reuses their staging buffer, which it does only after the
 * commands that fkv_recaller_hold names. */
fkv_status fkv_recaller_run_with(fkv_recaller *r, fkv_queue q, uint32_t n,
                                 const fkv_recall_unit *units, fkv_bbuf *kpool, fkv_bbuf *vpool,
                                 fkv_deps deps, fkv_recall_carry *carry);
/* The carried bytes of the last run are read by commands enqueued on q until now: their
 * staging buffer is reused only after those (one marker on q). *held: the marker's event,
 * the recaller's (valid until its runs reuse that buffer, two runs on), for the caller to
 * order its end after, so that a failure of the marker is the caller's; NULL when the last
 * run carried nothing. On failure the buffer is reused after the queue was drained. */
fkv_status fkv_recaller_hold(fkv_recaller *r, fkv_queue q, fkv_bevent **held);

#endif
