# freekv bench (linked into the `freekv` command and its tests) and freekv-opbench.
add_library(freekv_bench STATIC
  ${CMAKE_CURRENT_LIST_DIR}/args.c ${CMAKE_CURRENT_LIST_DIR}/bench.c
  ${CMAKE_CURRENT_LIST_DIR}/harness.c ${CMAKE_CURRENT_LIST_DIR}/number.c
  ${CMAKE_CURRENT_LIST_DIR}/report.c ${CMAKE_CURRENT_LIST_DIR}/stats.c
  ${CMAKE_CURRENT_LIST_DIR}/workload.c)
target_link_libraries(freekv_bench PUBLIC freekv_internal m)

# freekv-opbench: per-op device throughput (recall mechanisms, paged decode attention).
add_executable(freekv-opbench ${CMAKE_CURRENT_LIST_DIR}/opbench.c)
target_link_libraries(freekv-opbench PRIVATE freekv_internal)
