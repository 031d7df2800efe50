/* Entry points of backends that this build does not include. */
#include "backend.h"

#ifndef FKV_HAVE_OPENCL
const fkv_backend_ops *fkv_backend_opencl(void) { return NULL; }
#endif
#ifndef FKV_HAVE_VULKAN
const fkv_backend_ops *fkv_backend_vulkan(void) { return NULL; }
#endif
#ifndef FKV_HAVE_HIP
const fkv_backend_ops *fkv_backend_hip(void) { return NULL; }
#endif
