/* What a context allocates, and the check that the device can hold it, apart from the
 * pipeline's steps (which only use what is here) and from the public lifetime in context.c. */
#ifndef FKV_CORE_RESOURCES_H
#define FKV_CORE_RESOURCES_H

#include "state.h"

/* Fills the derived geometry of ctx (sizes, page counts) from ctx->cfg, which is valid. */
void fkv_resources_derive(fkv_context *ctx);
/* What the context will ask of the device, summed before any allocation: its memory, its
 * largest kernel calls and buffers, its allocation count. */
fkv_status fkv_resources_check_device(const fkv_context *ctx);
/* Allocates every table, buffer, staging and engine of the context. On failure what was
 * allocated stays recorded in ctx, for fkv_resources_free. */
fkv_status fkv_resources_alloc(fkv_context *ctx);
/* Frees what fkv_resources_alloc allocated (all of it or part); the queues must be idle. */
void fkv_resources_free(fkv_context *ctx);

#endif
