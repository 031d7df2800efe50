/* Test and benchmark hooks of the OpenCL backend. Unlike ocl_internal.h this needs no
 * API header, so generic code (freekv-opbench, tests) can include several backends' hooks. */
#ifndef FKV_OCL_DEBUG_H
#define FKV_OCL_DEBUG_H

#include <stddef.h>
#include <stdint.h>

#include "../backends/backend.h"

/* Replaces the kernel source for programs built from now on (NULL restores the embedded
 * one) and drops the programs already built; call with no command in flight. */
fkv_status fkv_opencl_debug_set_source(fkv_bdev *dev, const char *source);
/* Split-page attention: 0 = automatic (split when batch x KV heads cannot fill the device),
 * n >= 1 = always n splits (1 = never split). */
void fkv_opencl_debug_set_splits(fkv_bdev *dev, int splits);
/* Kernels plan for at most `bytes` of local memory (0: CL_DEVICE_LOCAL_MEM_SIZE), so the
 * variants for small local memory (attention and scores over the group in several work
 * groups) run on any device; never more than the device has. */
void fkv_opencl_debug_set_shared(fkv_bdev *dev, size_t bytes);
/* Programs of this device loaded from / stored into the binary cache so far. */
void fkv_opencl_debug_cache_counts(fkv_bdev *dev, unsigned *loads, unsigned *stores);
/* Whether host_alloc hands out fine-grained SVM memory on this device. */
int fkv_opencl_debug_svm_host(fkv_bdev *dev);

#endif
