# The engine examples (examples/engine_<api>.c): an engine that owns its device objects hands
# them to freekv and checks freekv's outputs bit for bit against the host-tensor path. Each is
# built with its backend and runs as a test (exit 77: no device of that API, skipped).
# engine_loop (the plain loop over the public API) is built by the top-level CMakeLists.txt.
function(fkv_engine_example api)
  cmake_parse_arguments(PARSE_ARGV 1 E "" "" "LIBRARIES;INCLUDES;DEFINITIONS")
  add_executable(engine_${api} ${PROJECT_SOURCE_DIR}/examples/engine_${api}.c)
  target_link_libraries(engine_${api} PRIVATE freekv freekv_build_flags ${E_LIBRARIES})
  target_include_directories(engine_${api} PRIVATE ${E_INCLUDES})
  target_compile_definitions(engine_${api} PRIVATE ${E_DEFINITIONS})
  if(FREEKV_TESTS)
    add_test(NAME engine_${api} COMMAND engine_${api})
    set_tests_properties(engine_${api} PROPERTIES SKIP_RETURN_CODE 77
      ENVIRONMENT "POCL_CACHE_DIR=${CMAKE_BINARY_DIR}/pocl-cache"
      PASS_REGULAR_EXPRESSION "engine_${api}: [0-9]+ decode layers .*: 0 outputs differ")
  endif()
endfunction()

if(TARGET freekv_backend_opencl)
  fkv_engine_example(opencl LIBRARIES OpenCL::OpenCL)
endif()
if(TARGET freekv_backend_vulkan)
  fkv_engine_example(vulkan LIBRARIES Vulkan::Vulkan Threads::Threads)
endif()
if(TARGET freekv_backend_hip)
  # the HIP runtime as the backend compiles and links it (AMD's headers, or CUDA through
  # hip/hip_cuda_compat.h), without the backend's own flags target
  get_target_property(_hip_defs freekv_backend_hip COMPILE_DEFINITIONS)
  get_target_property(_hip_incs freekv_backend_hip INCLUDE_DIRECTORIES)
  get_target_property(_hip_libs freekv_backend_hip LINK_LIBRARIES)
  list(REMOVE_ITEM _hip_libs freekv_build_flags)
  fkv_engine_example(hip LIBRARIES ${_hip_libs} INCLUDES ${_hip_incs} DEFINITIONS ${_hip_defs})
endif()
