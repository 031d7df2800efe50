# freekv eval: the accuracy evaluation behind `freekv eval`, its trace readers and tests.
# The top-level CMakeLists links freekv_eval into the `freekv` front end.
set(FREEKV_EVAL_SOURCES eval.c cli.c run.c report.c dump.c sweep.c sweep_run.c trace.c npy.c
  json.c header.c needles.c mass.c)
list(TRANSFORM FREEKV_EVAL_SOURCES PREPEND ${CMAKE_CURRENT_LIST_DIR}/)
add_library(freekv_eval STATIC ${FREEKV_EVAL_SOURCES})
target_include_directories(freekv_eval PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(freekv_eval PUBLIC freekv_internal freekv_args m)

# Tests: named tests/eval_*.c (not test_*.c) because they need freekv_eval, which the
# generic tests/test_*.c targets do not link. Criterion is found (required) by the top-level
# CMakeLists before this file is included.
if(FREEKV_TESTS)
  foreach(name trace args oracle needles dump sweep)
    add_executable(eval_test_${name} ${PROJECT_SOURCE_DIR}/tests/eval_${name}.c
      ${PROJECT_SOURCE_DIR}/tests/tool_run.c)
    target_link_libraries(eval_test_${name} PRIVATE freekv_eval PkgConfig::CRITERION)
    add_test(NAME eval_test_${name} COMMAND eval_test_${name} --jobs 2)
    set_tests_properties(eval_test_${name} PROPERTIES
      ENVIRONMENT "FREEKV_BACKEND=cpu;POCL_CACHE_DIR=${CMAKE_BINARY_DIR}/pocl-cache")
  endforeach()
endif()
