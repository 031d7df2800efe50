# freekv-opbench: per-op device throughput (recall mechanisms, paged decode attention).
add_executable(freekv-opbench ${CMAKE_CURRENT_LIST_DIR}/opbench.c)
target_link_libraries(freekv-opbench PRIVATE freekv_internal)
