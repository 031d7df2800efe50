/* HIP on NVIDIA: the HIP runtime calls, types and kernel syntax that hip/ uses, mapped onto
 * the CUDA runtime, so the same sources build with nvcc (FREEKV_HIP_PLATFORM=nvidia defines
 * FKV_HIP_ON_CUDA). Our own header because the HIP 5.2 NVIDIA headers Debian ships do not
 * compile against CUDA 13 (DESIGN §4).
 *
 * Scope: exactly what hip/ calls, nothing more; a new HIP call in hip/ needs a line here (the
 * nvcc build in tools/ci-hip.sh fails otherwise). Every mapping is a name-for-name rename with
 * the same argument order and meaning; where the two APIs differ, the difference is stated. C
 * (host code, compiled by gcc) sees the runtime API only; C++ under nvcc also gets the kernel
 * syntax. */
#ifndef FKV_HIP_CUDA_COMPAT_H
#define FKV_HIP_CUDA_COMPAT_H

#ifdef __CUDACC__
#include <cuda_runtime.h>
#else
#include <cuda_runtime_api.h>
#endif

/* ---- types ---- */
#define hipError_t cudaError_t
#define hipStream_t cudaStream_t
#define hipEvent_t cudaEvent_t
#define hipDeviceProp_t struct cudaDeviceProp
#define hipPointerAttribute_t struct cudaPointerAttributes
#define hipFuncAttributes cudaFuncAttributes /* used as `struct hipFuncAttributes` */

/* ---- error codes (same numeric values in both runtimes for these) ---- */
#define hipSuccess cudaSuccess
#define hipErrorInvalidValue cudaErrorInvalidValue
#define hipErrorOutOfMemory cudaErrorMemoryAllocation
#define hipErrorNoDevice cudaErrorNoDevice
#define hipErrorInvalidDevice cudaErrorInvalidDevice
#define hipErrorInsufficientDriver cudaErrorInsufficientDriver
#define hipErrorInvalidDeviceFunction cudaErrorInvalidDeviceFunction
/* CUDA's name for "the binary has no code for this GPU" */
#define hipErrorNoBinaryForGpu cudaErrorNoKernelImageForDevice
#define hipErrorNotReady cudaErrorNotReady

/* ---- flags and enums ---- */
#define hipStreamNonBlocking cudaStreamNonBlocking
#define hipEventDisableTiming cudaEventDisableTiming
/* hipHostMalloc flags are cudaHostAlloc flags (Portable 1, Mapped 2 in both). */
#define hipHostMallocPortable cudaHostAllocPortable
#define hipHostMallocMapped cudaHostAllocMapped
/* CUDA's pinned memory is always coherent with the host: nothing to ask for. */
#define hipHostMallocCoherent 0u
#define hipMemcpyHostToDevice cudaMemcpyHostToDevice
#define hipMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define hipMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
#define hipMemoryTypeDevice cudaMemoryTypeDevice

/* ---- runtime calls ---- */
#define hipGetDeviceCount cudaGetDeviceCount
#define hipGetDeviceProperties cudaGetDeviceProperties
#define hipSetDevice cudaSetDevice
#define hipDriverGetVersion cudaDriverGetVersion
#define hipRuntimeGetVersion cudaRuntimeGetVersion
#define hipGetLastError cudaGetLastError
#define hipGetErrorName cudaGetErrorName
#define hipGetErrorString cudaGetErrorString
#define hipMalloc cudaMalloc
#define hipFree cudaFree
#define hipHostMalloc cudaHostAlloc /* (void **ptr, size_t size, unsigned flags) in both */
#define hipHostFree cudaFreeHost
#define hipHostGetDevicePointer cudaHostGetDevicePointer
#define hipPointerGetAttributes cudaPointerGetAttributes
#define hipMemcpyAsync cudaMemcpyAsync
#define hipMemsetAsync cudaMemsetAsync
#define hipStreamCreateWithFlags cudaStreamCreateWithFlags
#define hipStreamDestroy cudaStreamDestroy
#define hipStreamSynchronize cudaStreamSynchronize
#define hipStreamWaitEvent cudaStreamWaitEvent
#define hipEventCreateWithFlags cudaEventCreateWithFlags
#define hipEventRecord cudaEventRecord
#define hipEventSynchronize cudaEventSynchronize
#define hipEventQuery cudaEventQuery
#define hipEventDestroy cudaEventDestroy
#define hipFuncGetAttributes cudaFuncGetAttributes

/* Field that differs: HIP's hipPointerAttribute_t.memoryType is CUDA's .type. */
#define FKV_HIP_PTR_MEMTYPE(attr) ((attr).type)

/* ---- kernel syntax (nvcc only) ---- */
#ifdef __CUDACC__
/* HIP's portable launch macro as a triple-chevron launch. */
#define hipLaunchKernelGGL(kernel, grid, block, shmem, stream, ...) \
    kernel<<<(grid), (block), (shmem), (stream)>>>(__VA_ARGS__)
/* Lets a template name with commas pass through a macro argument. */
#define HIP_KERNEL_NAME(...) __VA_ARGS__
/* __global__, __device__, __shared__, __syncthreads, threadIdx, blockIdx, blockDim, gridDim,
 * __launch_bounds__, fminf/fmaxf/expf/sqrtf and __float_as_uint/__uint_as_float have the same
 * names and meaning in HIP and CUDA: nothing to map. */
#endif

#endif
