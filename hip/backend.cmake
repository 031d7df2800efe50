# HIP backend (docs/hip.md): host code in plain C on the HIP runtime API (hip/*.c), kernels in
# hip/*.hip behind C launchers. The kernels are compiled by hipcc for AMD targets, or, with
# FREEKV_HIP_PLATFORM=nvidia, by nvcc through our mapping header hip/hip_cuda_compat.h
# ("HIP on NVIDIA"). Their objects join both library targets at the end of configuration.
set(FREEKV_HIP_PLATFORM "amd" CACHE STRING
  "HIP platform: amd (hipcc) or nvidia (nvcc through hip/hip_cuda_compat.h)")
set_property(CACHE FREEKV_HIP_PLATFORM PROPERTY STRINGS amd nvidia)
set(FREEKV_HIP_TARGETS "gfx90a;gfx1030" CACHE STRING "AMD GPU targets (--offload-arch) for hipcc")
set(FREEKV_CUDA_ARCH "sm_90" CACHE STRING "NVIDIA architectures (sm_XY list) for the nvidia platform")

if(FREEKV_HIP_PLATFORM STREQUAL "nvidia")
  find_program(FKV_NVCC nvcc HINTS ENV CUDA_PATH PATH_SUFFIXES bin PATHS /usr/local/cuda/bin)
  set(_fkv_hip_compiler_found ${FKV_NVCC})
elseif(FREEKV_HIP_PLATFORM STREQUAL "amd")
  find_program(FKV_HIPCC hipcc HINTS ENV ROCM_PATH PATH_SUFFIXES bin PATHS /opt/rocm/bin)
  set(_fkv_hip_compiler_found ${FKV_HIPCC})
else()
  message(FATAL_ERROR "FREEKV_HIP_PLATFORM='${FREEKV_HIP_PLATFORM}' (valid: amd, nvidia)")
endif()

# ON when the platform's compiler is found (hipcc by default), unless set explicitly.
set(_fkv_hip_default OFF)
if(_fkv_hip_compiler_found)
  set(_fkv_hip_default ON)
endif()
option(FREEKV_HIP "Build the HIP backend" ${_fkv_hip_default})

if(FREEKV_HIP)
  set(_fkv_hip_dir ${PROJECT_SOURCE_DIR}/hip)
  file(GLOB _fkv_hip_c CONFIGURE_DEPENDS ${_fkv_hip_dir}/*.c)
  file(GLOB _fkv_hip_kernels CONFIGURE_DEPENDS ${_fkv_hip_dir}/*.hip)
  file(GLOB _fkv_hip_headers CONFIGURE_DEPENDS ${_fkv_hip_dir}/*.h)
  set(_fkv_hip_obj_dir ${CMAKE_BINARY_DIR}/hip)
  file(MAKE_DIRECTORY ${_fkv_hip_obj_dir})
  # Launchers are extern "C"; hidden, like the C code, so libfreekv.so exports only the API.
  set(_fkv_hip_common -O2 -std=c++17 -I${PROJECT_SOURCE_DIR} -I${PROJECT_SOURCE_DIR}/include)
  set(_fkv_hip_c_defs "")
  set(_fkv_hip_c_includes "")

  if(FREEKV_HIP_PLATFORM STREQUAL "nvidia")
    if(NOT FKV_NVCC)
      message(FATAL_ERROR "FREEKV_HIP with FREEKV_HIP_PLATFORM=nvidia needs nvcc (set FKV_NVCC or CUDA_PATH)")
    endif()
    # nvcc may be a wrapper script or a link outside the CUDA tree (/usr/local/bin/nvcc):
    # nvcc names its own folder (_HERE_) in --dryrun, so ask it rather than guess.
    execute_process(COMMAND ${FKV_NVCC} --dryrun -x cu -c /dev/null -o /dev/null
      OUTPUT_VARIABLE _fkv_nvcc_dry ERROR_VARIABLE _fkv_nvcc_dry RESULT_VARIABLE _fkv_nvcc_rc)
    if(_fkv_nvcc_dry MATCHES "#\\$ _HERE_=([^\r\n]+)")
      get_filename_component(_fkv_cuda_root "${CMAKE_MATCH_1}" DIRECTORY)
    else()
      get_filename_component(_fkv_cuda_root ${FKV_NVCC} REALPATH)
      get_filename_component(_fkv_cuda_root ${_fkv_cuda_root} DIRECTORY)
      get_filename_component(_fkv_cuda_root ${_fkv_cuda_root} DIRECTORY)
    endif()
    find_path(FKV_CUDA_INCLUDE cuda_runtime_api.h HINTS ${_fkv_cuda_root}/include
      ${_fkv_cuda_root}/targets/x86_64-linux/include NO_DEFAULT_PATH)
    # Static runtime: the build folder runs on a GPU host whatever CUDA install it has
    # (its driver must be at least as new as this runtime).
    find_library(FKV_CUDART_STATIC NAMES cudart_static HINTS ${_fkv_cuda_root}/lib64
      ${_fkv_cuda_root}/lib ${_fkv_cuda_root}/targets/x86_64-linux/lib NO_DEFAULT_PATH)
    if(NOT FKV_CUDA_INCLUDE OR NOT FKV_CUDART_STATIC)
      message(FATAL_ERROR "FREEKV_HIP_PLATFORM=nvidia: CUDA headers or libcudart_static not found under ${_fkv_cuda_root} (the CUDA install of ${FKV_NVCC}); set FKV_NVCC to the nvcc of a full CUDA toolkit")
    endif()
    set(_fkv_hip_arch_flags "")
    set(_fkv_hip_last_arch "")
    foreach(arch ${FREEKV_CUDA_ARCH})
      string(REGEX REPLACE "^(sm_|compute_)" "" num "${arch}")
      list(APPEND _fkv_hip_arch_flags -gencode arch=compute_${num},code=sm_${num})
      set(_fkv_hip_last_arch ${num})
    endforeach()
    # PTX of the newest architecture too, so newer GPUs can JIT it.
    list(APPEND _fkv_hip_arch_flags -gencode arch=compute_${_fkv_hip_last_arch},code=compute_${_fkv_hip_last_arch})
    set(_fkv_hip_compile ${FKV_NVCC} -x cu -DFKV_HIP_ON_CUDA ${_fkv_hip_arch_flags}
      -Xcompiler=-fPIC,-fvisibility=hidden,-Wall,-Wextra ${_fkv_hip_common})
    list(APPEND _fkv_hip_c_defs FKV_HIP_ON_CUDA)
    list(APPEND _fkv_hip_c_includes ${FKV_CUDA_INCLUDE})
    string(REPLACE ";" "," _fkv_hip_targets_str "${FREEKV_CUDA_ARCH}")
    # nvcc's host code needs the C++ runtime (static-local guards) when gcc links the C library.
    list(APPEND FKV_LIBS ${FKV_CUDART_STATIC} ${CMAKE_DL_LIBS} rt stdc++)
    set(_fkv_hip_summary "ON (nvidia through hip/hip_cuda_compat.h: ${_fkv_hip_targets_str}, ${FKV_NVCC})")
  else()
    if(NOT FKV_HIPCC)
      message(FATAL_ERROR "FREEKV_HIP needs hipcc (Debian: hipcc libamdhip64-dev; or set FKV_HIPCC)")
    endif()
    find_library(FKV_AMDHIP64 amdhip64 HINTS ENV ROCM_PATH PATH_SUFFIXES lib PATHS /opt/rocm/lib)
    find_path(FKV_HIP_INCLUDE hip/hip_runtime_api.h HINTS ENV ROCM_PATH PATH_SUFFIXES include
      PATHS /opt/rocm/include)
    if(NOT FKV_AMDHIP64 OR NOT FKV_HIP_INCLUDE)
      message(FATAL_ERROR "FREEKV_HIP: libamdhip64 or the HIP headers not found (Debian: libamdhip64-dev)")
    endif()
    set(_fkv_hip_arch_flags "")
    foreach(arch ${FREEKV_HIP_TARGETS})
      list(APPEND _fkv_hip_arch_flags --offload-arch=${arch})
    endforeach()
    # An explicit --offload-arch also keeps hipcc from probing for a GPU (it would print a
    # Python traceback on a machine without one).
    set(_fkv_hip_compile ${FKV_HIPCC} ${_fkv_hip_arch_flags} -fPIC -fvisibility=hidden
      -Wall -Wextra ${_fkv_hip_common})
    list(APPEND _fkv_hip_c_defs __HIP_PLATFORM_AMD__)
    list(APPEND _fkv_hip_c_includes ${FKV_HIP_INCLUDE})
    string(REPLACE ";" "," _fkv_hip_targets_str "${FREEKV_HIP_TARGETS}")
    list(APPEND FKV_LIBS ${FKV_AMDHIP64})
    set(_fkv_hip_summary "ON (amd: ${_fkv_hip_targets_str}, ${FKV_HIPCC})")
  endif()

  set(FKV_HIP_OBJECTS "")
  foreach(src ${_fkv_hip_kernels})
    get_filename_component(name ${src} NAME_WE)
    set(obj ${_fkv_hip_obj_dir}/${name}.o)
    add_custom_command(OUTPUT ${obj}
      COMMAND ${_fkv_hip_compile} -c ${src} -o ${obj}
      DEPENDS ${src} ${_fkv_hip_headers}
      COMMENT "Compiling HIP kernels ${name}.hip (${FREEKV_HIP_PLATFORM}: ${_fkv_hip_targets_str})"
      VERBATIM)
    list(APPEND FKV_HIP_OBJECTS ${obj})
  endforeach()
  set_source_files_properties(${FKV_HIP_OBJECTS} PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
  # The object library cannot hold prebuilt objects: they join the shared and static libraries
  # once those exist (end of the top-level directory).
  cmake_language(DEFER CALL target_sources freekv PRIVATE ${FKV_HIP_OBJECTS})
  cmake_language(DEFER CALL target_sources freekv_static PRIVATE ${FKV_HIP_OBJECTS})

  set_source_files_properties(${_fkv_hip_c} PROPERTIES
    COMPILE_DEFINITIONS "${_fkv_hip_c_defs};FKV_HIP_TARGETS_STRING=\"${_fkv_hip_targets_str}\""
    INCLUDE_DIRECTORIES "${_fkv_hip_c_includes}")
  list(APPEND FKV_SOURCES ${_fkv_hip_c})
  list(APPEND FKV_DEFS FKV_HAVE_HIP)
else()
  set(_fkv_hip_summary "OFF")
endif()
list(APPEND FKV_SUMMARY "HIP backend           : ${_fkv_hip_summary}")
