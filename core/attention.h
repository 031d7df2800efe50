/* Attention: per (sequence, KV head) the list of slots to attend (sink, selected middle pages,
 * window, in ascending page order), and the paged attention over them. */
#ifndef FKV_CORE_ATTENTION_H
#define FKV_CORE_ATTENTION_H

#include "recall.h"
#include "state.h"

/* The batch's attention lists (per (sequence, KV head) the slots to attend) and the call's
 * attended pages (ctx->call), built into the input staging of the layer (ls->host.in) at their
 * place in the input block (fkv_in_layout: the heads, then the entries). Reads the sequences'
 * token counts and middle slots as they are now. Returns the lists' bytes from the heads on. */
size_t fkv_attention_lists(fkv_context *ctx, uint32_t layer, uint32_t n, const uint32_t *seqs);
/* Launches attention on the compute queue over the call's queries and lists (input block
 * ls->in_block) into out at out_off, after the n_wait events; *attn is its event. rebuild:
 * for a selection made after the lists were uploaded with the inputs, the lists the
 * selection's recall carried (carried->buf non-NULL: read there, no command), else built
 * again and written first (one write). */
fkv_status fkv_attention_launch(fkv_context *ctx, uint32_t layer, uint32_t n,
                                const uint32_t *seqs, int rebuild,
                                const fkv_recall_carry *carried, uint32_t n_wait,
                                fkv_bevent *const *wait, fkv_bbuf *out, size_t out_off,
                                fkv_bevent **attn);

#endif
