# cmake -DFILE=<path> -DEXPECT=<regex> -P expect_file.cmake: fails unless FILE exists and its
# text matches EXPECT (CTest checks of the reports freekv-conformance writes).
if(NOT EXISTS "${FILE}")
  message(FATAL_ERROR "${FILE} does not exist")
endif()
file(READ "${FILE}" text)
if(NOT text MATCHES "${EXPECT}")
  message(FATAL_ERROR "${FILE} does not match:\n  ${EXPECT}\n--- it holds:\n${text}")
endif()
message(STATUS "${FILE}: matches")
