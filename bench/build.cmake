# freekv bench (linked into the `freekv` command and its tests) and freekv-opbench.
add_library(freekv_bench STATIC
  ${CMAKE_CURRENT_LIST_DIR}/args.c ${CMAKE_CURRENT_LIST_DIR}/bench.c
  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/number.c
  ${CMAKE_CURRENT_LIST_DIR}/report.c ${CMAKE_CURRENT_LIST_DIR}/stats.c
  ${CMAKE_CURRENT_LIST_DIR}/workload.c)
target_link_libraries(freekv_bench PUBLIC freekv_internal m)

# freekv-opbench: per-op device throughput (recall mechanisms, paged decode attention).
add_executable(freekv-opbench ${CMAKE_CURRENT_LIST_DIR}/opbench_main.c
  ${CMAKE_CURRENT_LIST_DIR}/opbench.c)
target_link_libraries(freekv-opbench PRIVATE freekv_internal freekv_args)
# Its arguments and memory estimate (tests/opbench_args.c), on the CPU reference backend.
if(FREEKV_TESTS)
  add_executable(opbench_args ${PROJECT_SOURCE_DIR}/tests/opbench_args.c
    ${PROJECT_SOURCE_DIR}/tests/tool_run.c ${CMAKE_CURRENT_LIST_DIR}/opbench.c)
  target_link_libraries(opbench_args PRIVATE freekv_internal freekv_args PkgConfig::CRITERION)
  add_test(NAME opbench_args COMMAND opbench_args --jobs 2)
  set_tests_properties(opbench_args PROPERTIES
    ENVIRONMENT "FREEKV_BACKEND=cpu;POCL_CACHE_DIR=${CMAKE_BINARY_DIR}/pocl-cache")
endif()
