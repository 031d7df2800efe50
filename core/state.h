/* The bottom layer of core/'s pipeline: the context's state, shared by every step, and the
 * small helpers each step uses (time, events, statistics, tensor arguments, slot and row
 * indices). It calls no step; every other file of core/ builds on it. */
#ifndef FKV_CORE_STATE_H
#define FKV_CORE_STATE_H

#include <pthread.h>

#include "../backends/device.h"
#include "../backends/dispatch.h"
#include "hostpool.h"
#include "recall.h"
#include "select.h"
#include "threadpool.h"

#define FKV_SCRATCH_PAGES 64    /* prefill works through this many pages at a time */
#define FKV_HOST_CHUNK_PAGES 64 /* pages per host pool chunk */

/* Byte sizes of what the device interface carries besides the KV cache (backend.h). */
#define FKV_F32_BYTES sizeof(float)          /* activations, scores, summaries */
#define FKV_INDEX_BYTES sizeof(int32_t)      /* rows, slots, flags: int32 indices */
#define FKV_PAIR_BYTES (2 * sizeof(int32_t)) /* (slot, summary), (first, count), (slot, tokens) */
/* a scores descriptor: (summary base, pages, out base, query row) */
#define FKV_DESC_BYTES (FKV_SCORES_DESC_INTS * sizeof(int32_t))

/* Input blocks of a layer's io buffer: a decode call uploads into one that holds no
 * sequence's previous query, so the previous call's block (the batch's q[t-1]) survives. */
#define FKV_IN_BLOCKS 2
#define FKV_QPARK FKV_IN_BLOCKS /* seq_layer.qblock of a query in the parking rows */

/* A command that waits on nothing and whose completion no one needs. */
#define FKV_NO_DEPS ((fkv_deps){.n_wait = 0, .wait = NULL, .done = NULL})

/* State of one (sequence, layer). Owned by the main thread, except while a speculative task
 * of the layer is pending: then by the worker, until it publishes. */
typedef struct seq_layer {
    uint32_t n_tokens;
    /* Where the previous query of this layer lies in the layer's io buffer: row qpos of input
     * block qblock (0, 1: the decode call that uploaded it, batch position qpos) or of the
     * parking rows (FKV_QPARK, row = sequence id); qblock -1: none. A call uploads into a
     * block no sequence points into and moves the pointers only when it succeeds, so a failed
     * call leaves q[t-1] where it was. */
    int32_t qblock;
    uint32_t qpos;
    fkv_hostpool hp;    /* offload policies: full pages, HND */
    int32_t *mid_page;  /* [n_kv_heads][n_mid] page in each middle slot, -1 empty */
    float *mid_score;   /* [n_kv_heads][n_mid] */
    int32_t *attended;  /* [n_kv_heads][list_cap] pages of the last attention */
    uint32_t *n_attended;
} seq_layer;

typedef struct seq_state {
    uint32_t prefilled;  /* layers prefilled so far (0..n_layers) */
    uint32_t next_layer; /* layer expected by the next decode call */
    seq_layer *layers;
} seq_state;

/* Host staging of one layer (pinned), carved from one allocation. `in` holds a decode call's
 * inputs and attention lists in the layout of an input block (fkv_in_layout). */
typedef struct layer_host {
    fkv_bhost *mem;
    unsigned char *in;
    float *out;
    int32_t *summ_idx, *desc;
    float *sims;
    int32_t *flags; /* the flags buffer read back: flags, then select_pages' records */
} layer_host;

typedef struct layer_state {
    fkv_bbuf *kpool, *vpool, *summ;
    /* FKV_IN_BLOCKS input blocks (a decode call's q, k, v, rows and attention lists,
     * fkv_in_layout), then the parking rows of previous queries (one per sequence) */
    fkv_bbuf *io;
    uint32_t in_block; /* the block the current decode call uploaded into */
    fkv_bbuf *out;
    /* summ_idx: completed pages' (slot, summary) pairs, then the slots pack_hnd reads */
    fkv_bbuf *summ_idx, *desc;
    fkv_bbuf *scores; /* page scores */
    fkv_bbuf *sims, *pack;
    fkv_bbuf *flags; /* cosine_flags' flags, then select_pages' records (retrieval.c) */
    layer_host host;
    fkv_bevent *ev_attn;    /* last attention (reads the slots) */
    fkv_bevent *ev_recall;  /* last recall into the slots */
    fkv_bevent *ev_offload; /* last device->host offload into the host pools */
    /* A decode call that returned without waiting for its commands (device output): its
     * marker, after every command of the call and its offload. Until someone waits for it,
     * the device may still read the layer's host staging, and a failure of those commands
     * is not reported yet: the speculative worker waits for it before the layer's task, else
     * fkv_task_wait does (so does every entry that touches the layer). */
    fkv_bevent *ev_end;
    uint32_t end_n, *end_seqs; /* that call's sequences */
    /* speculative task (guarded by ctx->lock) */
    int pending;
    uint32_t task_n;
    uint32_t *task_seqs;
    size_t task_desc_off; /* the task's descriptors in the io buffer (the call's desc_next) */
    int task_selected;    /* its records came back with the call (fkv_task_submit) */
    fkv_status task_status;
    char task_error[256];
    fkv_stats task_stats;    /* the task's work, added to the stats when it is consumed */
    double task_select_end;  /* fkv_now() when the task's selection ended (its recall follows) */
} layer_state;

typedef struct planner { /* per-thread scratch for selection */
    float *reduced;
    uint32_t *topk;
    float *top_score;
    uint32_t *fill_slot, *fill_page;
    uint32_t *plan_work; /* fkv_plan_slots' scratch */
    fkv_recall_unit *units;
    uint32_t units_cap;
    /* middle slots of the batch before a selection ([max_seqs][n_kv_heads][n_mid]), put
     * back when the selection or its recall fails */
    int32_t *mid_saved;
    float *score_saved;
} planner;

/* What a decode call changes only when it succeeds, and what it undoes when it fails (used
 * by the caller's thread only). */
typedef struct call_scratch {
    int32_t *full;         /* [max_seqs] page each sequence fills, or -1 */
    uint32_t *had_chunks;  /* [max_seqs] host pool chunks before the call */
    int32_t *attended;     /* [max_seqs][n_kv_heads][list_cap] pages the call attends */
    uint32_t *n_attended;  /* [max_seqs][n_kv_heads] */
    uint64_t *corrections; /* [n_kv_heads] heads the call corrected */
    int32_t *mid_pairs;    /* [n_mid][2] (page, slot) of one head's selected pages */
} call_scratch;

struct fkv_context {
    fkv_device *dev;
    fkv_config cfg;
    fkv_kv_geom geom;
    int offload;         /* policies that keep the KV cache on the host */
    uint32_t group, sink_pages, window_pages, n_mid, n_slots, max_pages, list_cap;
    size_t elem_bytes;   /* one KV element in the context's dtype */
    size_t row_elems;    /* elements of one token's K (or V) row: n_kv_heads * head_dim */
    size_t q_row_bytes;  /* one token's query (or output), f32 */
    size_t kv_row_bytes; /* one token's K (or V) input row, f32 */
    size_t slot_bytes, page_bytes, unit_bytes;
    size_t in_block_bytes; /* one input block of a layer's io buffer (fkv_in_layout) */
    seq_state *seqs;
    layer_state *layers;
    /* prefill scratch: pages in pool layout and f32 input rows */
    uint32_t scratch_pages;
    fkv_bbuf *scr_k, *scr_v, *scr_kin, *scr_vin, *scr_rows;
    fkv_bbuf *scr_pack[2];   /* offload policies: HND staging of packed pages, alternating */
    uint32_t scr_pack_pages; /* pages one scr_pack holds */
    fkv_bhost *scr_host;
    float *scr_host_k, *scr_host_v;
    int32_t *scr_host_rows;
    fkv_pool *pool;
    fkv_recaller *rec_main, *rec_worker;
    planner plan_main, plan_worker;
    call_scratch call;
    /* worker */
    pthread_t worker;
    int worker_started, stop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint32_t *fifo; /* layers with pending tasks, in order */
    uint32_t fifo_head, fifo_len;
    /* statistics (guarded by lock) */
    fkv_stats stats;
    uint64_t *corrections; /* [n_layers][n_kv_heads] */
    uint64_t base_device_bytes, base_host_bytes;
};

/* Seconds of a monotonic clock. */
double fkv_now(void);
/* Releases *ev (NULL is fine) and clears it. */
void fkv_release_event(fkv_context *ctx, fkv_bevent **ev);
/* Waits for *ev (NULL: nothing to wait for), then releases it. */
fkv_status fkv_wait_release(fkv_context *ctx, fkv_bevent **ev);
/* Finishes queue q after a failure, keeping the failure's message (finish may set its own). */
void fkv_drain_queue(fkv_context *ctx, fkv_queue q);

/* sum += delta; blocked_seconds is kept as the sum of its three parts. */
void fkv_stats_sum(fkv_stats *sum, const fkv_stats *delta);
/* Adds delta to the context's statistics (under the lock). */
void fkv_stats_add(fkv_context *ctx, const fkv_stats *delta);

/* Checks a tensor argument of `bytes` bytes: host memory, or a buffer of this device. */
fkv_status fkv_check_tensor(const fkv_context *ctx, const fkv_tensor *t, size_t bytes,
                            const char *fn, const char *name);
/* Brings `bytes` of a tensor (from byte `src_off`) into dst: host data is copied into the
 * pinned staging first, so the caller's memory is free when this returns. */
fkv_status fkv_tensor_to_device(fkv_context *ctx, const fkv_tensor *t, size_t src_off,
                                void *staging, fkv_bbuf *dst, size_t dst_off, size_t bytes);

/* Empties every middle slot of one (sequence, layer). */
void fkv_mid_clear(const fkv_context *ctx, seq_layer *sl);

/* Device indices are int32 in the device interface; fkv_config_validate keeps every value
 * below in range, and they are computed in 64 bits so no intermediate wraps. */
static inline int32_t fkv_gslot(const fkv_context *ctx, uint32_t seq, uint32_t slot) {
    return (int32_t)((uint64_t)seq * ctx->n_slots + slot);
}
/* Pool row of token t (< page_size) of a slot. */
static inline int32_t fkv_row(const fkv_context *ctx, uint32_t seq, uint32_t slot, uint32_t t) {
    return (int32_t)(((uint64_t)seq * ctx->n_slots + slot) * ctx->cfg.page_size + t);
}
static inline int32_t fkv_summary_index(const fkv_context *ctx, uint32_t seq, uint32_t page) {
    return (int32_t)((uint64_t)seq * ctx->max_pages + page);
}
/* Byte offset of a global slot in a KV pool. */
static inline size_t fkv_slot_offset(const fkv_context *ctx, int32_t gslot) {
    return (size_t)gslot * ctx->slot_bytes;
}

/* Device slot of logical page j: dense/quest keep page j at slot j; offload policies keep sink
 * pages at 0..sink-1 and the window in a ring of window_pages slots after them. */
static inline uint32_t fkv_home_slot(const fkv_context *ctx, uint32_t j) {
    if (!ctx->offload || j < ctx->sink_pages)
        return j;
    return ctx->sink_pages + (j - ctx->sink_pages) % ctx->window_pages;
}

/* Device slot of middle slot m (offload policies). */
static inline uint32_t fkv_mid_slot(const fkv_context *ctx, uint32_t m) {
    return ctx->sink_pages + ctx->window_pages + m;
}

/* First page of the window when the sequence holds n tokens (the current page is n/p). */
static inline uint32_t fkv_window_begin(const fkv_context *ctx, uint32_t n) {
    uint32_t cur = n / ctx->cfg.page_size;
    uint32_t wb = cur + 1 >= ctx->window_pages ? cur + 1 - ctx->window_pages : 0;
    return wb > ctx->sink_pages ? wb : ctx->sink_pages;
}

/* A decode call's inputs of n sequences inside an input block, in bytes from its start: the q
 * rows, the k rows, the v rows (f32), the rows table (int32), the scores descriptors of the
 * call's selection (desc_now: n descriptors, then n previous-query rows for correction's
 * cosine_flags) and of its speculative task (desc_next: n descriptors), the pages the call
 * completes (summ: up to n (slot, summary) pairs, then their slots for the pack; offload.h),
 * then the attention lists (the n * n_kv_heads heads (first entry, count), then the (slot,
 * tokens) entries), back to back so that one write carries them. */
typedef struct fkv_in_layout {
    size_t q, k, v, rows, desc_now, desc_next, summ, heads, entries;
} fkv_in_layout;
static inline fkv_in_layout fkv_in_layout_of(const fkv_context *ctx, uint32_t n) {
    fkv_in_layout l;
    l.q = 0;
    l.k = (size_t)n * ctx->q_row_bytes;
    l.v = l.k + (size_t)n * ctx->kv_row_bytes;
    l.rows = l.v + (size_t)n * ctx->kv_row_bytes;
    l.desc_now = l.rows + (size_t)n * FKV_INDEX_BYTES;
    l.desc_next = l.desc_now + (size_t)n * (FKV_DESC_BYTES + FKV_INDEX_BYTES);
    l.summ = l.desc_next + (size_t)n * FKV_DESC_BYTES;
    l.heads = l.summ + (size_t)n * (FKV_PAIR_BYTES + FKV_INDEX_BYTES);
    l.entries = l.heads + (size_t)n * ctx->cfg.n_kv_heads * FKV_PAIR_BYTES;
    return l;
}

/* Byte offset in a layer's io buffer of query row `row` of input block `block`, or of the
 * parking rows (block FKV_QPARK, row = sequence id). */
static inline size_t fkv_q_offset(const fkv_context *ctx, uint32_t block, uint32_t row) {
    return (size_t)block * ctx->in_block_bytes + (size_t)row * ctx->q_row_bytes;
}
static inline int fkv_has_qprev(const seq_layer *sl) { return sl->qblock >= 0; }
/* A query's row number in the io buffer, for the ops that address query rows by number (the
 * scores descriptor, cosine_flags' row table): input blocks are whole rows long. */
static inline int32_t fkv_q_row(const fkv_context *ctx, size_t offset) {
    return (int32_t)(offset / ctx->q_row_bytes);
}
/* The previous query of a (sequence, layer) that has one, in the layer's io buffer. */
static inline size_t fkv_qprev_offset(const fkv_context *ctx, const seq_layer *sl) {
    return fkv_q_offset(ctx, (uint32_t)sl->qblock, sl->qpos);
}
/* This decode call's query of batch position i, in the layer's io buffer. */
static inline size_t fkv_qin_offset(const fkv_context *ctx, const layer_state *ls, uint32_t i) {
    return fkv_q_offset(ctx, ls->in_block, i);
}
/* The previous query becomes parking row `seq` (where fkv_prefill writes q_last). */
static inline void fkv_qprev_park(seq_layer *sl, uint32_t seq) {
    sl->qblock = FKV_QPARK;
    sl->qpos = seq;
}

static inline int fkv_is_speculative(const fkv_context *ctx) {
    return ctx->cfg.policy == FKV_POLICY_SPECULATIVE || ctx->cfg.policy == FKV_POLICY_FREEKV;
}

#endif
