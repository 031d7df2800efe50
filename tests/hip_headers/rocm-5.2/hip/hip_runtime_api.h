/* Stand-in for ROCm 5.2's header: the memory type is `.memoryType` only (README.md). */
#ifndef FKV_FAKE_HIP_RUNTIME_API_H
#define FKV_FAKE_HIP_RUNTIME_API_H
#define HIP_VERSION_MAJOR 5
#define HIP_VERSION_MINOR 2
#define HIP_VERSION_PATCH 21153
#define HIP_VERSION (HIP_VERSION_MAJOR * 10000000 + HIP_VERSION_MINOR * 100000 + HIP_VERSION_PATCH)
enum hipMemoryType { hipMemoryTypeHost, hipMemoryTypeDevice };
typedef struct hipPointerAttribute_t {
    enum hipMemoryType memoryType;
    int device;
} hipPointerAttribute_t;
#endif
