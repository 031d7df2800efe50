/* Test and benchmark hooks of the HIP backend. Unlike hip_internal.h this needs no HIP or CUDA
 * header, so generic code (tests, freekv-opbench) can include it under #ifdef FKV_HAVE_HIP. */
#ifndef FKV_HIP_DEBUG_H
#define FKV_HIP_DEBUG_H

#include "../backends/backend.h"

/* Split-page attention: 0 = automatic (split when batch x KV heads cannot fill the device),
 * n >= 1 = always n splits (1 = never split). `dev` must be a HIP device. */
void fkv_hip_debug_set_splits(fkv_bdev *dev, int splits);
/* Kernels plan for at most `bytes` of shared memory per block (0: the device's), so the
 * variants for small shared memory (attention and scores over the group in several blocks)
 * run on any device; never more than the device has. */
void fkv_hip_debug_set_shared(fkv_bdev *dev, size_t bytes);

#endif
