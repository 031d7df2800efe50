#!/usr/bin/env bash
# Compile-only CI checks of the HIP backend (docs/hip.md). No GPU is needed and none is used:
#   1. AMD: hipcc for the default targets it accepts (of gfx90a;gfx942;gfx1030;gfx1100;gfx1101:
#      gfx90a, gfx1030 with Debian's hipcc 5.2.3), build folder build-ci-hip-amd
#   2. NVIDIA: the same hip/ sources through hip/hip_cuda_compat.h with nvcc (sm_80, sm_86,
#      sm_89, sm_90 and PTX compute_90), build folder build-ci-hip-nv
# Each builds the library (shared and static), links freekv-info, freekv-conformance,
# freekv-opbench and the engine example engine_hip (unresolved symbols show; it exits 77
# without a GPU), fails on any compiler warning in hip/, runs the
# host-side tests (test_hip, when Criterion is there) and shows that a machine without a GPU
# lists 0 HIP devices (freekv-info exits 0; the conformance runner reports "no device", 77).
# It installs nothing. Needs (Debian 12, --no-install-recommends): hipcc libamdhip64-dev,
# plus cmake, gcc, libcriterion-dev as the main build; nvcc (CUDA 12/13) under
# /usr/local/cuda/bin, CUDA_PATH or PATH for step 2 (skipped with a notice when absent, or
# an error with FKV_CI_HIP_REQUIRE_NVCC=1).
# Environment: JOBS (parallel jobs, default nproc), FKV_CI_HIP_ONLY=amd|nvidia.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=${JOBS:-$(nproc)}
only=${FKV_CI_HIP_ONLY:-}

fail() {
  echo "ci-hip: FAIL: $*" >&2
  exit 1
}

find_nvcc() {
  if [ -n "${CUDA_PATH:-}" ] && [ -x "$CUDA_PATH/bin/nvcc" ]; then
    echo "$CUDA_PATH/bin/nvcc"
  elif command -v nvcc >/dev/null 2>&1; then
    command -v nvcc
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    echo /usr/local/cuda/bin/nvcc
  fi
}

# check_build <name> <cmake args...>
check_build() {
  local name=$1
  shift
  local dir=$root/build-ci-hip-$name
  local log=$dir/ci-hip.log
  local targets=(freekv freekv_static freekv-info freekv-conformance freekv-opbench engine_hip)
  local start=$SECONDS
  echo "== HIP backend, $name: configure and build ($dir)"
  rm -rf "$dir"
  mkdir -p "$dir"
  # Only the HIP backend besides the CPU reference: this job is about hip/.
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFREEKV_HIP=ON \
    -DFREEKV_OPENCL=OFF -DFREEKV_VULKAN=OFF "$@" >"$log" 2>&1 ||
    { cat "$log"; fail "$name: configure"; }
  grep -E "hip backend|HIP \((amd|nvidia)\)" "$log" | sed 's/^-- */   /'
  grep -q "hip backend *: ON" "$log" || fail "$name: FREEKV_HIP did not turn on"
  local have_tests=0
  if [ -f "$dir/CTestTestfile.cmake" ] && grep -q "test_hip" "$dir/CTestTestfile.cmake"; then
    have_tests=1
    targets+=(test_hip)
  fi
  cmake --build "$dir" -j"$jobs" --target "${targets[@]}" >>"$log" 2>&1 ||
    { tail -n 60 "$log"; fail "$name: build (full log: $log)"; }
  # gcc/clang "file:line:col: warning", nvcc "file(line): warning"
  if grep -E "(hip/|test_hip)[^ :(]*(:[0-9]+:[0-9]+|\([0-9]+\)): warning" "$log"; then
    fail "$name: compiler warnings in hip/ (full log: $log)"
  fi
  grep -E "Compiling HIP kernels" "$log" | sed 's/^\[ *[0-9]*%\] */   /'
  echo "   built in $((SECONDS - start)) s"

  echo "== HIP backend, $name: freekv-info on this machine"
  local info
  info=$("$dir/freekv-info" 2>&1) || { echo "$info"; fail "$name: freekv-info failed"; }
  echo "$info" | sed 's/^/   /'
  echo "$info" | grep -q "^backends compiled in:.* hip" || fail "$name: hip is not compiled in"
  local n_hip
  n_hip=$(echo "$info" | grep -cE '^ +\[[0-9]+\] hip ' || true)
  echo "   HIP devices found: $n_hip"

  if [ "$have_tests" = 1 ]; then
    echo "== HIP backend, $name: host-side tests (test_hip)"
    "$dir/test_hip" --jobs 2 2>&1 | tail -n 1 | sed 's/^/   /'
    "$dir/test_hip" --jobs 2 >/dev/null 2>&1 || fail "$name: test_hip"
  fi

  echo "== HIP backend, $name: the engine example (examples/engine_hip.c)"
  local ex_rc=0
  "$dir/engine_hip" >"$dir/engine_hip.log" 2>&1 || ex_rc=$?
  sed 's/^/   /' "$dir/engine_hip.log" | tail -n 3
  if [ "$n_hip" = 0 ]; then
    [ "$ex_rc" = 77 ] || fail "$name: engine_hip exited $ex_rc, want 77 (no device)"
  else
    [ "$ex_rc" = 0 ] || fail "$name: engine_hip exited $ex_rc on a GPU"
  fi

  echo "== HIP backend, $name: conformance runner without a GPU"
  local rc=0
  "$dir/freekv-conformance" --backend hip --quick --report-dir "$dir/conformance" \
    >"$dir/conformance.log" 2>&1 || rc=$?
  sed 's/^/   /' "$dir/conformance.log" | tail -n 3
  if [ "$n_hip" = 0 ]; then
    [ "$rc" = 77 ] || fail "$name: freekv-conformance --backend hip exited $rc, want 77 (no device)"
    echo "   exit 77 (no device: CTest reports conformance_hip as skipped)"
  else
    [ "$rc" = 0 ] || fail "$name: freekv-conformance --backend hip exited $rc on a GPU"
  fi
}

if [ "$only" != nvidia ]; then
  command -v hipcc >/dev/null 2>&1 || fail "hipcc not found (apt-get install --no-install-recommends hipcc libamdhip64-dev)"
  check_build amd -DFREEKV_HIP_PLATFORM=amd
fi

if [ "$only" != amd ]; then
  nvcc=$(find_nvcc)
  if [ -z "$nvcc" ]; then
    [ "${FKV_CI_HIP_REQUIRE_NVCC:-0}" = 1 ] && fail "nvcc not found (CUDA_PATH, PATH, /usr/local/cuda/bin)"
    echo "== HIP backend, nvidia: SKIPPED (no nvcc on this machine)"
  else
    check_build nv -DFREEKV_HIP_PLATFORM=nvidia -DFKV_NVCC="$nvcc"
  fi
fi
echo "== HIP backend: compile-only checks passed (nothing ran on a GPU)"
