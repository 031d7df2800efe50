/* Configuration defaults and validation; policy names. Separate from the context because a
 * configuration is checked (and its limits explained) before any device is touched. */
#include <math.h>
#include <string.h>

#include "../common/error.h"
#include "select.h"

static const char *const policy_names[] = {"dense", "quest", "sync", "speculative", "freekv"};

const char *fkv_policy_name(fkv_policy policy) {
    if ((unsigned)policy < sizeof policy_names / sizeof *policy_names)
        return policy_names[policy];
    return "unknown";
}

fkv_status fkv_policy_parse(const char *name, fkv_policy *out) {
    if (name == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_policy_parse: NULL argument");
    for (size_t i = 0; i < sizeof policy_names / sizeof *policy_names; i++) {
        if (strcmp(name, policy_names[i]) == 0) {
            *out = (fkv_policy)i;
            return FKV_OK;
        }
    }
    return fkv_error(FKV_ERR_INVALID_ARGUMENT,
                     "unknown policy '%s' (dense, quest, sync, speculative, freekv)", name);
}

static const char *const host_format_names[] = {"same", "q8", "q4"};

const char *fkv_host_format_name(fkv_host_format format) {
    if ((unsigned)format < sizeof host_format_names / sizeof *host_format_names)
        return host_format_names[format];
    return "unknown";
}

fkv_status fkv_host_format_parse(const char *name, fkv_host_format *out) {
    if (name == NULL || out == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "fkv_host_format_parse: NULL argument");
    for (size_t i = 0; i < sizeof host_format_names / sizeof *host_format_names; i++) {
        if (strcmp(name, host_format_names[i]) == 0) {
            *out = (fkv_host_format)i;
            return FKV_OK;
        }
    }
    return fkv_error(FKV_ERR_INVALID_ARGUMENT, "unknown host format '%s' (same, q8, q4)", name);
}

void fkv_config_init(fkv_config *cfg) {
    if (cfg == NULL)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->n_layers = 32;
    cfg->n_q_heads = 32;
    cfg->n_kv_heads = 8;
    cfg->head_dim = 128;
    cfg->page_size = 32;
    cfg->budget_tokens = 2048;
    cfg->sink_tokens = 512;
    cfg->window_tokens = 512;
    cfg->tau = 0.9f;
    cfg->dtype = FKV_BF16;
    cfg->policy = FKV_POLICY_FREEKV;
    cfg->group_reduce = FKV_GROUP_SOFTMAX_MEAN;
    cfg->max_seqs = 1;
    cfg->max_context = 32768;
    cfg->recall_chunk_pages = 0;
    cfg->group_temperature = FKV_TEMP_RAW;
    cfg->host_format = FKV_HOST_SAME;
}

#define BAD(...) fkv_error(FKV_ERR_INVALID_CONFIG, __VA_ARGS__)

/* What the fields imply together, in 64-bit arithmetic (each field is already in range, so
 * no product here can overflow): the budget must be usable within max_context, and every
 * index the device interface passes as int32 must fit. */
static fkv_status validate_geometry(const fkv_config *c) {
    const uint64_t p = c->page_size, max_pages = (c->max_context + p - 1) / p;
    if (c->budget_tokens > max_pages * p)
        return BAD("budget_tokens = %u exceeds max_context = %u (%llu pages of %u tokens): a "
                   "sequence never holds more, so the budget could not be used; lower "
                   "budget_tokens or raise max_context",
                   c->budget_tokens, c->max_context, (unsigned long long)max_pages,
                   c->page_size);
    uint64_t n_mid = (c->budget_tokens - (uint64_t)c->sink_tokens - c->window_tokens) / p;
    if (n_mid > FKV_MAX_MIDDLE_SLOTS)
        return BAD("budget_tokens = %u: %llu selected pages beyond sink and window, at most %u",
                   c->budget_tokens, (unsigned long long)n_mid, FKV_MAX_MIDDLE_SLOTS);
    /* dense and quest keep every page resident at its own slot; the others keep the budget */
    const uint64_t max_seqs = c->max_seqs;
    const uint64_t n_slots = c->policy >= FKV_POLICY_SYNC ? c->budget_tokens / p : max_pages;
    const char *slots_from = c->policy >= FKV_POLICY_SYNC ? "budget_tokens" : "max_context";
    const uint64_t rows = max_seqs * n_slots * p, summaries = max_seqs * max_pages;
    const uint64_t entries = max_seqs * c->n_kv_heads * n_slots;
    const uint64_t scores = max_seqs * c->n_q_heads * max_pages; /* one call scores a batch */
    if (rows > INT32_MAX)
        return BAD("max_seqs = %u x %s: %llu device rows (sequences x slots x page_size) "
                   "exceed the device interface's int32 row index (2^31 - 1); lower max_seqs "
                   "or %s",
                   c->max_seqs, slots_from, (unsigned long long)rows, slots_from);
    if (summaries > INT32_MAX)
        return BAD("max_seqs = %u x max_context = %u: %llu page summaries exceed the int32 "
                   "summary index (2^31 - 1); lower max_seqs or max_context",
                   c->max_seqs, c->max_context, (unsigned long long)summaries);
    if (entries > INT32_MAX)
        return BAD("max_seqs = %u x n_kv_heads = %u x %s: %llu attention entries exceed the "
                   "int32 entry index (2^31 - 1); lower max_seqs or %s",
                   c->max_seqs, c->n_kv_heads, slots_from, (unsigned long long)entries,
                   slots_from);
    if (scores > INT32_MAX)
        return BAD("max_seqs = %u x n_q_heads = %u x max_context = %u: %llu page scores of a "
                   "batch exceed the int32 score index (2^31 - 1); lower max_seqs or "
                   "max_context, or raise page_size",
                   c->max_seqs, c->n_q_heads, c->max_context, (unsigned long long)scores);
    return FKV_OK;
}

fkv_status fkv_config_validate(const fkv_config *c) {
    if (c == NULL)
        return fkv_error(FKV_ERR_INVALID_ARGUMENT, "config is NULL");
    if (c->n_layers < 1 || c->n_layers > 1024)
        return BAD("n_layers = %u: must be 1..1024", c->n_layers);
    if (c->n_kv_heads < 1 || c->n_kv_heads > 1024)
        return BAD("n_kv_heads = %u: must be 1..1024", c->n_kv_heads);
    if (c->n_q_heads < 1 || c->n_q_heads > 4096 || c->n_q_heads % c->n_kv_heads != 0)
        return BAD("n_q_heads = %u: must be 1..4096 and a multiple of n_kv_heads (%u)",
                   c->n_q_heads, c->n_kv_heads);
    if (c->head_dim < 16 || c->head_dim > 256 || c->head_dim % 4 != 0)
        return BAD("head_dim = %u: must be 16..256 and a multiple of 4", c->head_dim);
    if (c->page_size < 1 || c->page_size > 256)
        return BAD("page_size = %u: must be 1..256", c->page_size);
    if (c->sink_tokens % c->page_size != 0)
        return BAD("sink_tokens = %u: must be a multiple of page_size (%u)", c->sink_tokens,
                   c->page_size);
    /* Two pages at least: the page that just filled stays resident until its offload and
     * summary are in place, so a selection never misses it. */
    if (c->window_tokens < 2 * c->page_size || c->window_tokens % c->page_size != 0)
        return BAD("window_tokens = %u: must be a multiple of page_size (%u), at least two pages",
                   c->window_tokens, c->page_size);
    uint64_t sink_window = (uint64_t)c->sink_tokens + c->window_tokens; /* no 32-bit wrap */
    if (c->budget_tokens % c->page_size != 0 || c->budget_tokens < sink_window)
        return BAD("budget_tokens = %u: must be a multiple of page_size (%u) and at least "
                   "sink_tokens + window_tokens (%llu)",
                   c->budget_tokens, c->page_size, (unsigned long long)sink_window);
    if (!(c->tau >= -1.0f && c->tau <= 1.0f)) /* also rejects NaN */
        return BAD("tau = %g: must be in [-1, 1]", (double)c->tau);
    if (fkv_dtype_size(c->dtype) == 0)
        return BAD("dtype = %d: must be FKV_F32, FKV_F16 or FKV_BF16", (int)c->dtype);
    if ((unsigned)c->policy > FKV_POLICY_FREEKV)
        return BAD("policy = %d: unknown", (int)c->policy);
    if ((unsigned)c->group_reduce > FKV_GROUP_MAX)
        return BAD("group_reduce = %d: unknown", (int)c->group_reduce);
    if ((unsigned)c->group_temperature > FKV_TEMP_SQRT_D)
        return BAD("group_temperature = %d: unknown (FKV_TEMP_RAW or FKV_TEMP_SQRT_D)",
                   (int)c->group_temperature);
    if ((unsigned)c->host_format > FKV_HOST_Q4)
        return BAD("host_format = %d: unknown (FKV_HOST_SAME, FKV_HOST_Q8 or FKV_HOST_Q4)",
                   (int)c->host_format);
    if (c->max_seqs < 1 || c->max_seqs > 4096)
        return BAD("max_seqs = %u: must be 1..4096", c->max_seqs);
    if (c->max_context < 1 || c->max_context > (1u << 24))
        return BAD("max_context = %u: must be 1..16777216", c->max_context);
    if (c->recall_chunk_pages > (1u << 20))
        return BAD("recall_chunk_pages = %u: must be at most 1048576 (0 = default)",
                   c->recall_chunk_pages);
    return validate_geometry(c);
}
