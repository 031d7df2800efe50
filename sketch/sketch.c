/* A sketch backend (cmake/backends.cmake): a complete ops table that finds no device. Every
 * entry past enumeration needs an opened device, which device_open never gives. */
#include "../backends/backend.h"
#include "../common/error.h"

static fkv_status none(void) { return fkv_error(FKV_ERR_NO_DEVICE, "sketch: no device"); }

static fkv_status sk_count(uint32_t *count) {
    *count = 0;
    return FKV_OK;
}
static fkv_status sk_info(uint32_t index, fkv_device_info *info) {
    (void)index;
    (void)info;
    return none();
}
static fkv_status sk_open(uint32_t index, fkv_bdev **out) {
    (void)index;
    *out = NULL;
    return none();
}
static void sk_close(fkv_bdev *dev) { (void)dev; }
static fkv_status sk_buffer_alloc(fkv_bdev *d, size_t size, fkv_bbuf **out) {
    (void)d, (void)size, (void)out;
    return none();
}
static void sk_buffer_free(fkv_bdev *d, fkv_bbuf *b) { (void)d, (void)b; }
static fkv_status sk_host_alloc(fkv_bdev *d, size_t size, fkv_bhost **out, void **ptr) {
    (void)d, (void)size, (void)out, (void)ptr;
    return none();
}
static void sk_host_free(fkv_bdev *d, fkv_bhost *h) { (void)d, (void)h; }
static fkv_status sk_event_wait(fkv_bdev *d, uint32_t n, fkv_bevent *const *e) {
    (void)d, (void)n, (void)e;
    return none();
}
static void sk_event_release(fkv_bdev *d, fkv_bevent *e) { (void)d, (void)e; }
static fkv_status sk_marker(fkv_bdev *d, fkv_queue q, fkv_deps deps) {
    (void)d, (void)q, (void)deps;
    return none();
}
static fkv_status sk_finish(fkv_bdev *d, fkv_queue q) {
    (void)d, (void)q;
    return none();
}
/* The copies and kernels take the same first arguments; no device reaches them. */
#define SK_OP(name, ...)                                                                       \
    static fkv_status sk_##name(fkv_bdev *d, fkv_queue q, fkv_deps deps, __VA_ARGS__) {        \
        (void)d, (void)q, (void)deps;                                                          \
        return none();                                                                         \
    }
#pragma GCC diagnostic ignored "-Wunused-parameter"
SK_OP(write, fkv_bbuf *dst, size_t off, const void *src, size_t size)
SK_OP(read, const fkv_bbuf *src, size_t off, void *dst, size_t size)
SK_OP(copy, fkv_bbuf *dst, size_t d_off, const fkv_bbuf *src, size_t s_off, size_t size)
SK_OP(append, const fkv_kv_geom *g, const fkv_bbuf *k, size_t k_off, const fkv_bbuf *v,
      size_t v_off, uint32_t n, const fkv_bbuf *rows, size_t rows_off, fkv_bbuf *kp, fkv_bbuf *vp)
SK_OP(summarize, const fkv_kv_geom *g, const fkv_bbuf *kp, uint32_t n, const fkv_bbuf *pages,
      size_t pages_off, fkv_bbuf *summaries)
SK_OP(scores, const fkv_kv_geom *g, const fkv_bbuf *qb, size_t q_off, uint32_t n,
      const fkv_bbuf *desc, size_t desc_off, const fkv_bbuf *summaries, fkv_bbuf *out,
      size_t out_off)
SK_OP(cosine_flags, const fkv_kv_geom *g, const fkv_bbuf *cur, size_t cur_off,
      const fkv_bbuf *prev, size_t prev_off, uint32_t n, float tau, fkv_bbuf *sims,
      size_t sims_off, fkv_bbuf *flags, size_t flags_off)
SK_OP(pack_hnd, const fkv_kv_geom *g, const fkv_bbuf *kp, const fkv_bbuf *vp, uint32_t n,
      const fkv_bbuf *slots, size_t slots_off, fkv_bbuf *dst, size_t dst_off)
SK_OP(scatter_hnd, const fkv_kv_geom *g, const fkv_bbuf *src, size_t src_off, uint32_t n,
      const fkv_bbuf *units, size_t units_off, fkv_bbuf *kp, fkv_bbuf *vp)
SK_OP(attention, const fkv_kv_geom *g, const fkv_bbuf *qb, size_t q_off, uint32_t n,
      const fkv_bbuf *heads, size_t heads_off, const fkv_bbuf *entries, size_t entries_off,
      const fkv_bbuf *kp, const fkv_bbuf *vp, float scale, fkv_bbuf *out, size_t out_off)

static const fkv_backend_ops sketch_ops = {
    .abi_version = FKV_BACKEND_ABI_VERSION,
    .struct_size = sizeof(fkv_backend_ops),
    .name = "sketch",
    .device_count = sk_count,
    .device_info = sk_info,
    .device_open = sk_open,
    .device_close = sk_close,
    .buffer_alloc = sk_buffer_alloc,
    .buffer_free = sk_buffer_free,
    .host_alloc = sk_host_alloc,
    .host_free = sk_host_free,
    .event_wait = sk_event_wait,
    .event_release = sk_event_release,
    .marker = sk_marker,
    .finish = sk_finish,
    .write = sk_write,
    .read = sk_read,
    .copy = sk_copy,
    .append = sk_append,
    .summarize = sk_summarize,
    .scores = sk_scores,
    .cosine_flags = sk_cosine_flags,
    .pack_hnd = sk_pack_hnd,
    .scatter_hnd = sk_scatter_hnd,
    .attention = sk_attention,
};

const fkv_backend_ops *fkv_backend_sketch(void) { return &sketch_ops; }
