# HIP backend (docs/hip.md): host code in plain C on the HIP runtime API (hip/*.c), kernels in
# hip/*.hip behind C launchers. The kernels are compiled by hipcc for AMD targets, or, with
# FREEKV_HIP_PLATFORM=nvidia, by nvcc through our mapping header hip/hip_cuda_compat.h
# ("HIP on NVIDIA"). Their objects join both library targets at the end of configuration.
set(FREEKV_HIP_PLATFORM "amd" CACHE STRING
  "HIP platform: amd (hipcc) or nvidia (nvcc through hip/hip_cuda_compat.h)")
set_property(CACHE FREEKV_HIP_PLATFORM PROPERTY STRINGS amd nvidia)
# Targets: what users have (AMD CDNA2/3, RDNA2/3; NVIDIA Ampere, Ada, Hopper, plus PTX of the
# newest for later GPUs). Left empty, each becomes the subset of that list the installed
# compiler accepts, probed once per compiler (Debian's hipcc 5.2 knows neither gfx942 nor
# gfx1100); set them to narrow or widen the list explicitly.
set(FKV_HIP_AMD_DEFAULT gfx90a gfx942 gfx1030 gfx1100 gfx1101)
set(FKV_HIP_NVIDIA_DEFAULT sm_80 sm_86 sm_89 sm_90)
set(FREEKV_HIP_TARGETS "" CACHE STRING
  "AMD GPU targets (--offload-arch) for hipcc; empty: those of gfx90a;gfx942;gfx1030;gfx1100;gfx1101 the installed hipcc accepts")
set(FREEKV_CUDA_ARCH "" CACHE STRING
  "NVIDIA architectures (sm_XY list, plus PTX of the last) for the nvidia platform; empty: those of sm_80;sm_86;sm_89;sm_90 the installed nvcc accepts")

# fkv_hip_probe(<out var> <kind> <compiler> <candidates...>): the candidates the compiler
# accepts (kind amd: a one-kernel compile per target; nvidia: nvcc --list-gpu-code), cached
# per compiler. Configure says what it dropped.
function(fkv_hip_probe out kind compiler)
  set(candidates ${ARGN})
  if(DEFINED FKV_HIP_PROBED_${kind} AND "${FKV_HIP_PROBED_${kind}_WITH}" STREQUAL "${compiler};${candidates}")
    set(${out} ${FKV_HIP_PROBED_${kind}} PARENT_SCOPE)
    return()
  endif()
  set(ok "")
  set(dropped "")
  if(kind STREQUAL "nvidia")
    execute_process(COMMAND ${compiler} --list-gpu-code OUTPUT_VARIABLE codes ERROR_QUIET
      RESULT_VARIABLE listed)
    string(REPLACE "\n" ";" codes "${codes}")
  else()
    set(dir ${CMAKE_BINARY_DIR}/hip-probe)
    file(MAKE_DIRECTORY ${dir})
    file(WRITE ${dir}/probe.hip "#include <hip/hip_runtime.h>\n__global__ void k(float *p) { p[0] = 1.0f; }\n")
  endif()
  foreach(arch ${candidates})
    if(kind STREQUAL "nvidia")
      list(FIND codes ${arch} at)
      set(accepted OFF)
      if(listed EQUAL 0 AND at GREATER -1)
        set(accepted ON)
      endif()
    else()
      execute_process(COMMAND ${compiler} --offload-arch=${arch} --cuda-device-only -c
        ${dir}/probe.hip -o ${dir}/probe-${arch}.o RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
      set(accepted OFF)
      if(rc EQUAL 0)
        set(accepted ON)
      endif()
    endif()
    if(accepted)
      list(APPEND ok ${arch})
    else()
      list(APPEND dropped ${arch})
    endif()
  endforeach()
  if(dropped)
    string(REPLACE ";" ", " d "${dropped}")
    message(STATUS "HIP (${kind}): ${compiler} does not accept ${d}: left out of the default targets (set FREEKV_HIP_TARGETS / FREEKV_CUDA_ARCH to choose)")
  endif()
  if(NOT ok)
    message(FATAL_ERROR "HIP (${kind}): ${compiler} accepts none of ${candidates}; set FREEKV_HIP_TARGETS / FREEKV_CUDA_ARCH")
  endif()
  set(FKV_HIP_PROBED_${kind} "${ok}" CACHE INTERNAL "")
  set(FKV_HIP_PROBED_${kind}_WITH "${compiler};${candidates}" CACHE INTERNAL "")
  set(${out} ${ok} PARENT_SCOPE)
endfunction()

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
    set(_fkv_hip_archs ${FREEKV_CUDA_ARCH})
    if(NOT _fkv_hip_archs)
      fkv_hip_probe(_fkv_hip_archs nvidia ${FKV_NVCC} ${FKV_HIP_NVIDIA_DEFAULT})
    endif()
    set(_fkv_hip_arch_flags "")
    set(_fkv_hip_last_arch "")
    foreach(arch ${_fkv_hip_archs})
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
    string(REPLACE ";" "," _fkv_hip_targets_str "${_fkv_hip_archs}")
    set(_fkv_hip_targets_str "${_fkv_hip_targets_str},compute_${_fkv_hip_last_arch}")
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
    set(_fkv_hip_archs ${FREEKV_HIP_TARGETS})
    if(NOT _fkv_hip_archs)
      fkv_hip_probe(_fkv_hip_archs amd ${FKV_HIPCC} ${FKV_HIP_AMD_DEFAULT})
    endif()
    set(_fkv_hip_arch_flags "")
    foreach(arch ${_fkv_hip_archs})
      list(APPEND _fkv_hip_arch_flags --offload-arch=${arch})
    endforeach()
    # An explicit --offload-arch also keeps hipcc from probing for a GPU (it would print a
    # Python traceback on a machine without one).
    set(_fkv_hip_compile ${FKV_HIPCC} ${_fkv_hip_arch_flags} -fPIC -fvisibility=hidden
      -Wall -Wextra ${_fkv_hip_common})
    list(APPEND _fkv_hip_c_defs __HIP_PLATFORM_AMD__)
    list(APPEND _fkv_hip_c_includes ${FKV_HIP_INCLUDE})
    string(REPLACE ";" "," _fkv_hip_targets_str "${_fkv_hip_archs}")
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

# hip/hip_platform.h's HIP_VERSION guard, compiled against stand-in headers of ROCm 5.2, 5.5
# and 6.0 (tests/hip_headers): runs on every machine, HIP installed or not.
if(FREEKV_TESTS)
  foreach(rocm 5.2 5.5 6.0)
    string(REPLACE "." "_" name ${rocm})
    add_test(NAME hip_platform_rocm_${name}
      COMMAND ${CMAKE_C_COMPILER} -std=c11 -Wall -Wextra -Werror -fsyntax-only
              -I${PROJECT_SOURCE_DIR}/tests/hip_headers/rocm-${rocm} -I${PROJECT_SOURCE_DIR}
              ${PROJECT_SOURCE_DIR}/tests/hip_platform_guard.c)
  endforeach()
endif()
