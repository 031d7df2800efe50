# freekv-conformance: every compiled backend and device against the CPU reference
# (docs/conformance.md). Plain C, no Criterion: it must build on GPU hosts without it.
# The op specs are a library of their own: the Criterion suites run the same specs
# (tests/backend_harness.c, tests/test_cpu_ops.c).
set(_cf ${PROJECT_SOURCE_DIR}/conformance)
add_library(freekv_conformance_specs STATIC
  ${_cf}/spec.c ${_cf}/ops.c ${_cf}/contract.c ${_cf}/tolerances.c ${_cf}/util.c)
target_include_directories(freekv_conformance_specs PUBLIC ${_cf})
target_link_libraries(freekv_conformance_specs PUBLIC freekv_internal m)
add_executable(freekv-conformance ${_cf}/main.c ${_cf}/pipeline.c ${_cf}/report.c
  ${_cf}/known.c ${_cf}/selftest.c)
target_link_libraries(freekv-conformance PRIVATE freekv_conformance_specs)
# Known-failure lists: the source tree's when it is there, else the installed copy.
target_compile_definitions(freekv-conformance PRIVATE
  FKV_CONFORMANCE_KNOWN_DIR="${PROJECT_SOURCE_DIR}/conformance/known_failures"
  FKV_CONFORMANCE_KNOWN_INSTALL_DIR="${CMAKE_INSTALL_FULL_DATADIR}/freekv/known_failures")
install(TARGETS freekv-conformance RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/conformance/known_failures/
  DESTINATION ${CMAKE_INSTALL_DATADIR}/freekv/known_failures FILES_MATCHING PATTERN "*.txt")

# One CTest entry per backend compiled in (quick mode keeps CI bounded); exit 77 = no device
# found at run time (e.g. no OpenCL ICD), reported as skipped rather than passed. With
# FREEKV_REQUIRE_DEVICES in the environment (.ci/run sets cpu,opencl,vulkan) a required backend
# without a device fails instead (exit 1).
if(FREEKV_TESTS)
  enable_testing()
  foreach(be ${FKV_BACKENDS_COMPILED})
    add_test(NAME conformance_${be}
      COMMAND freekv-conformance --backend ${be} --quick
              --report-dir ${CMAKE_BINARY_DIR}/conformance)
    set_tests_properties(conformance_${be} PROPERTIES
      ENVIRONMENT "POCL_CACHE_DIR=${CMAKE_BINARY_DIR}/pocl-cache"
      SKIP_RETURN_CODE 77 TIMEOUT 600)
  endforeach()
  # Self-tests of the runner (docs/conformance.md): the CPU device's ops table deliberately
  # altered. A broken attention, an attention that writes past its output and a sign bug in
  # scores must fail with messages that name the op, the geometry and the error; scores nudged within tolerance must pass with ties
  # reported; an output that changes between runs must pass and be reported as not
  # deterministic.
  set(_st_dir ${CMAKE_BINARY_DIR}/conformance/selftest)
  add_test(NAME conformance_selftest_attention
    COMMAND freekv-conformance --backend cpu --quick --filter attention/d64/g1/p16/f32
            --self-test-broken=attention --report-dir ${_st_dir}/attention)
  set_tests_properties(conformance_selftest_attention PROPERTIES PASS_REGULAR_EXPRESSION
    "FAIL +attention/d64/g1/p16/f32 .*out \\([0-9]+ values; worst at seq 0 q head 1 ch [0-9]+: [^)]*\\): rel L2 [0-9.e+-]+ > tol 0.0001.*conformance result: FAIL")
  add_test(NAME conformance_selftest_guard
    COMMAND freekv-conformance --backend cpu --quick --filter attention/d64/g1/p16/f32
            --self-test-broken=guard --report-dir ${_st_dir}/guard)
  set_tests_properties(conformance_selftest_guard PROPERTIES PASS_REGULAR_EXPRESSION
    "FAIL +attention/d64/g1/p16/f32 .*out: guard byte 1 after the output changed.*conformance result: FAIL")
  add_test(NAME conformance_selftest_scores
    COMMAND freekv-conformance --backend cpu --quick --filter pipeline/quest
            --self-test-broken=scores --report-dir ${_st_dir}/scores)
  set_tests_properties(conformance_selftest_scores PROPERTIES PASS_REGULAR_EXPRESSION
    "FAIL +pipeline/quest/.*attended pages .*is not a tie with the k-th score.*conformance result: FAIL")
  add_test(NAME conformance_selftest_ties
    COMMAND freekv-conformance --backend cpu --quick --filter pipeline/freekv
            --self-test-broken=ties --report-dir ${_st_dir}/ties)
  set_tests_properties(conformance_selftest_ties PROPERTIES
    PASS_REGULAR_EXPRESSION "head selection\\(s\\) differ by ties.*conformance result: PASS"
    FAIL_REGULAR_EXPRESSION "FAIL ")
  add_test(NAME conformance_selftest_nondet
    COMMAND freekv-conformance --backend cpu --quick --filter attention/d64/g1/p16/f32
            --self-test-broken=nondet --report-dir ${_st_dir}/nondet)
  set_tests_properties(conformance_selftest_nondet PROPERTIES
    PASS_REGULAR_EXPRESSION "PASS +attention/d64/g1/p16/f32 .*NONDET.*conformance result: PASS"
    FAIL_REGULAR_EXPRESSION "FAIL ")
  # A device without paged attention: its cases are skipped, counted as skipped (never as
  # passed), and the run report lists each skip with its reason; a run where nothing passed
  # at all fails.
  add_test(NAME conformance_selftest_skip
    COMMAND freekv-conformance --backend cpu --quick
            --filter attention/d64/g1/p16/f32$,append/d64/g1/p16/f32$
            --self-test-broken=unsupported --report-dir ${_st_dir}/skip)
  set_tests_properties(conformance_selftest_skip PROPERTIES
    PASS_REGULAR_EXPRESSION "SKIP +attention/d64/g1/p16/f32 .*unsupported by the device.*conformance result: PASS, but 1 case\\(s\\) skipped.*\nconformance: 1 passed, 0 failed, 1 skipped\n"
    FAIL_REGULAR_EXPRESSION "FAIL |PASS +attention"
    FIXTURES_SETUP conformance_skip_report)
  add_test(NAME conformance_selftest_skip_report
    COMMAND ${CMAKE_COMMAND} -DFILE=${_st_dir}/skip/conformance-run.md
            "-DEXPECT=## Skipped[^\n]*\n\n[^\n]*\n[^\n]*\n[|] cpu\\[0\\] freekv CPU reference [|] attention/d64/g1/p16/f32 [|] call 0 [(]attention[)]: unsupported by the device: [^|]*self-test: this device has no paged attention [|]"
            -P ${CMAKE_CURRENT_LIST_DIR}/expect_file.cmake)
  set_tests_properties(conformance_selftest_skip_report PROPERTIES
    FIXTURES_REQUIRED conformance_skip_report)
  add_test(NAME conformance_selftest_nothing_tested
    COMMAND freekv-conformance --backend cpu --quick --filter attention/d64/g1/p16/f32
            --self-test-broken=unsupported --report-dir ${_st_dir}/nothing)
  set_tests_properties(conformance_selftest_nothing_tested PROPERTIES WILL_FAIL TRUE)
  # --require with a backend that has no device: opencl/CMakeLists.txt (it can hide its
  # devices through the ICD loader).
endif()
