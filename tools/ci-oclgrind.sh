#!/usr/bin/env bash
# The OpenCL kernels under Oclgrind (Debian package oclgrind), bounded for CI: a simulated
# OpenCL device that reports out-of-bounds accesses, barrier divergence, invalid API use
# (--check-api) and data races (--data-races). Runs the single-threaded op tests of
# test_opencl one by one, the scores' and the attention's again with the CPU devices' kernel
# variants (FREEKV_OPENCL_CPU_KERNELS=on: Oclgrind is a GPU-type device, which does not take
# them by default), and a small op subset of freekv-conformance; any diagnostic fails.
#   tools/ci-oclgrind.sh BUILD_DIR [OUT_DIR]
# Notes:
# - Oclgrind runs kernels issued from one host thread only, so the tests that drive OpenCL
#   from several threads (two_threads_two_queues, the pipeline with its speculative worker)
#   and the pipeline cases (minutes each in the simulator) are not run here.
# - Each test runs in its own oclgrind process with its own --log: Criterion forks a child
#   per test, and a second child reopening the same log would truncate the first's report.
# - --uninitialized stays off: Oclgrind 21.10 reports reads after a host write at a non-zero
#   buffer offset as uninitialized (false reports), and it needs -cl-opt-disable.
# - A known race (tests/oclgrind/race.cl) runs first: when Oclgrind does not report it, the
#   checker is broken and the job fails rather than passing without checking.
set -euo pipefail
build=${1:?usage: tools/ci-oclgrind.sh BUILD_DIR [OUT_DIR]}
build=$(cd "$build" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
out=${2:-$build/oclgrind}
rm -rf "$out"
mkdir -p "$out"
command -v oclgrind >/dev/null || { echo "oclgrind is not installed (tools/install-deps.sh)"; exit 1; }
opts=(--data-races --check-api)

# 1. the checker itself: the deliberate race must be reported
(cd "$here/tests/oclgrind" && oclgrind-kernel --data-races --log "$out/race.log" race.sim >/dev/null)
if ! grep -q "data race" "$out/race.log"; then
  echo "oclgrind did not report the deliberate race in tests/oclgrind/race.cl: checker broken"
  exit 1
fi
echo "oclgrind reports the deliberate race (tests/oclgrind/race.cl): the checker works"

# 2. test_opencl's single-threaded op tests, one process each, two at a time
tests=(device_info_and_table device public_api copies event_chain events host_memory append
       summarize scores scores_edges cosine_flags cosine_nan scores_check attention_split
       bad_arguments zero_work out_of_range buffer_import_and_memory_errors select_pages)
export FREEKV_REQUIRE_DEVICES=opencl # the simulator must be the device found, never a skip
run_one() {
  local t=$1 out=$2 build=$3 tag=${OCG_TAG:-}
  shift 3
  local start=$SECONDS
  if ! oclgrind "$@" --log "$out/$t.log" "$build/test_opencl" --filter "opencl/$t" --jobs 1 \
      >"$out/$t.out" 2>&1; then
    echo "FAIL  $t$tag: test failed under oclgrind"; tail -n 20 "$out/$t.out"; return 1
  fi
  if ! grep -q "Tested: 1 | Passing: 1 | Failing: 0" "$out/$t.out"; then
    echo "FAIL  $t$tag: did not run and pass exactly one test"; tail -n 5 "$out/$t.out"
    return 1
  fi
  if [ -s "$out/$t.log" ]; then
    echo "FAIL  $t$tag: oclgrind diagnostics:"; head -n 40 "$out/$t.log"; return 1
  fi
  echo "ok    $t$tag ($((SECONDS - start)) s)"
}
export -f run_one
status=0
printf '%s\n' "${tests[@]}" |
  xargs -P 2 -I{} bash -c 'run_one "$@"' _ {} "$out" "$build" "${opts[@]}" || status=1
mkdir -p "$out/cpu-variants"
printf '%s\n' attention_split scores scores_edges scores_check |
  FREEKV_OPENCL_CPU_KERNELS=on OCG_TAG=" (CPU variants)" \
    xargs -P 2 -I{} bash -c 'run_one "$@"' _ {} "$out/cpu-variants" "$build" "${opts[@]}" ||
  status=1

# 3. conformance: every op case at one geometry and dtype set, guards and odd offsets included
start=$SECONDS
ops='append summarize pack_hnd scatter_hnd recall_direct quantize dequantize dequantize_direct attention
     attention_dense'
filter="device,copies,write_regions,scores/,cosine_flags/,scores_check/$(printf ',%s/d64/g1/p16/' $ops)"
if ! oclgrind "${opts[@]}" --log "$out/conformance.log" "$build/freekv-conformance" \
    --backend opencl --quick --require opencl --report-dir "$out/conformance" \
    --filter "$filter" >"$out/conformance.out" 2>&1; then
  echo "FAIL  conformance under oclgrind:"; grep -E "^(FAIL|SKIP)|conformance" "$out/conformance.out"
  status=1
elif [ -s "$out/conformance.log" ]; then
  echo "FAIL  conformance: oclgrind diagnostics:"; head -n 40 "$out/conformance.log"; status=1
else
  echo "ok    conformance $(tail -n 1 "$out/conformance.out") ($((SECONDS - start)) s)"
fi
exit $status
