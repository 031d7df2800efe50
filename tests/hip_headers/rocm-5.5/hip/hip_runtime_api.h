/* Stand-in for ROCm 5.5's header: `.type`, with `.memoryType` a deprecated alias (README.md). */
#ifndef FKV_FAKE_HIP_RUNTIME_API_H
#define FKV_FAKE_HIP_RUNTIME_API_H
#define HIP_VERSION_MAJOR 5
#define HIP_VERSION_MINOR 5
#define HIP_VERSION_PATCH 30201
#define HIP_VERSION (HIP_VERSION_MAJOR * 10000000 + HIP_VERSION_MINOR * 100000 + HIP_VERSION_PATCH)
enum hipMemoryType { hipMemoryTypeHost, hipMemoryTypeDevice };
typedef struct hipPointerAttribute_t {
    union {
        enum hipMemoryType memoryType __attribute__((deprecated("use type")));
        enum hipMemoryType type;
    };
    int device;
} hipPointerAttribute_t;
#endif
