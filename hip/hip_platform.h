/* The HIP runtime API for hip/: AMD's HIP headers, or (FKV_HIP_ON_CUDA) our mapping onto the
 * CUDA runtime (hip_cuda_compat.h). Plain C host code and the .hip kernels both include this. */
#ifndef FKV_HIP_PLATFORM_H
#define FKV_HIP_PLATFORM_H

#ifdef FKV_HIP_ON_CUDA
#include "hip_cuda_compat.h"
#else
#if !defined(__HIP_PLATFORM_AMD__) && !defined(__HIP_PLATFORM_HCC__)
#define __HIP_PLATFORM_AMD__ /* the HIP headers need a platform; hipcc sets it itself */
#endif
#if defined(__cplusplus) && defined(__HIP__)
#include <hip/hip_runtime.h>
#else
#include <hip/hip_runtime_api.h>
#endif
/* hipPointerAttribute_t's memory type: `.type` since ROCm 5.5 (HIP 5.5), when `.memoryType`
 * became its deprecated alias; ROCm 6 removed `.memoryType`. HIP_VERSION_MAJOR/MINOR come from
 * <hip/hip_version.h>, which hip_runtime_api.h includes. */
#if defined(HIP_VERSION_MAJOR) && defined(HIP_VERSION_MINOR) &&                               \
    (HIP_VERSION_MAJOR > 5 || (HIP_VERSION_MAJOR == 5 && HIP_VERSION_MINOR >= 5))
#define FKV_HIP_PTR_MEMTYPE(attr) ((attr).type)
#else
#define FKV_HIP_PTR_MEMTYPE(attr) ((attr).memoryType)
#endif
#endif

#endif
