/* Attention: per (sequence, KV head) the list of slots to attend (sink, selected middle pages,
 * window, in ascending page order), and the paged attention over them. */
#ifndef FKV_CORE_ATTENTION_H
#define FKV_CORE_ATTENTION_H

#include "state.h"

/* Builds the batch's lists (and the call's attended pages, ctx->call), uploads them in one
 * write and launches attention on the compute queue over the call's queries (input block
 * ls->in_block) into out at out_off after the n_wait events; *attn is its event. */
fkv_status fkv_attention_launch(fkv_context *ctx, uint32_t layer, uint32_t n,
                                const uint32_t *seqs, uint32_t n_wait, fkv_bevent *const *wait,
                                fkv_bbuf *out, size_t out_off, fkv_bevent **attn);

#endif
