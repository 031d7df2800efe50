/* Stand-in for ROCm 6.0's header: `.type` only, `.memoryType` removed (README.md). */
#ifndef FKV_FAKE_HIP_RUNTIME_API_H
#define FKV_FAKE_HIP_RUNTIME_API_H
#define HIP_VERSION_MAJOR 6
#define HIP_VERSION_MINOR 0
#define HIP_VERSION_PATCH 32830
#define HIP_VERSION (HIP_VERSION_MAJOR * 10000000 + HIP_VERSION_MINOR * 100000 + HIP_VERSION_PATCH)
typedef enum hipMemoryType {
    hipMemoryTypeUnregistered = 0,
    hipMemoryTypeHost = 1,
    hipMemoryTypeDevice = 2,
} hipMemoryType;
typedef struct hipPointerAttribute_t {
    hipMemoryType type;
    int device;
} hipPointerAttribute_t;
#endif
