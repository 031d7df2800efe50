# freekv eval: the accuracy evaluation behind `freekv eval`, its trace readers and tests.
# The top-level CMakeLists links freekv_eval into the `freekv` front end.
add_library(freekv_eval STATIC
  ${CMAKE_CURRENT_LIST_DIR}/eval.c ${CMAKE_CURRENT_LIST_DIR}/trace.c
  ${CMAKE_CURRENT_LIST_DIR}/npy.c ${CMAKE_CURRENT_LIST_DIR}/header.c)
target_include_directories(freekv_eval PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(freekv_eval PUBLIC freekv_internal m)

# Tests: named tests/eval_*.c (not test_*.c) because they need freekv_eval, which the
# generic tests/test_*.c targets do not link. This file is included before the top-level
# tests block, so it looks Criterion up itself (pkg_check_modules is idempotent).
if(FREEKV_TESTS)
  enable_testing()
  if(NOT TARGET PkgConfig::CRITERION)
    pkg_check_modules(CRITERION IMPORTED_TARGET criterion)
  endif()
  if(TARGET PkgConfig::CRITERION)
    foreach(name trace args)
      add_executable(eval_test_${name} ${PROJECT_SOURCE_DIR}/tests/eval_${name}.c)
      target_link_libraries(eval_test_${name} PRIVATE freekv_eval PkgConfig::CRITERION)
      add_test(NAME eval_test_${name} COMMAND eval_test_${name} --jobs 2)
      set_tests_properties(eval_test_${name} PROPERTIES
        ENVIRONMENT "FREEKV_BACKEND=cpu;POCL_CACHE_DIR=${CMAKE_BINARY_DIR}/pocl-cache")
    endforeach()
  endif()
endif()
