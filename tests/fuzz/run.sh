#!/usr/bin/env bash
# Builds the trace-reader fuzz target (libFuzzer + ASan + UBSan) straight from the reader
# sources and runs it for a bounded time. Installs nothing: it needs clang and its libFuzzer
# runtime (Debian 12: packages clang and libclang-rt-14-dev).
#   tests/fuzz/run.sh [seconds]     (default 60; or FUZZ_SECONDS)
# Environment: CLANG (default clang), FUZZ_OUT (build and working corpus, default build-fuzz).
# Exits non-zero if the build fails or the fuzzer finds a crash, leak, timeout or sanitizer
# report (the reproducer is written to $FUZZ_OUT).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${1:-${FUZZ_SECONDS:-60}}
out=${FUZZ_OUT:-$root/build-fuzz}
cc=${CLANG:-clang}
mkdir -p "$out/corpus"

"$cc" -std=c11 -D_GNU_SOURCE -g -O1 -Wall -Wextra -Werror \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
  -I"$root/include" -I"$root" -I"$root/eval" \
  "$here/fuzz_trace.c" "$root/eval/npy.c" "$root/eval/json.c" "$root/eval/header.c" \
  "$root/eval/needles.c" "$root/common/error.c" \
  -o "$out/fuzz_trace"

# New inputs go to $out/corpus; the committed seeds in tests/fuzz/corpus are only read.
cd "$out"
./fuzz_trace -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -dict="$here/trace.dict" -print_final_stats=1 -artifact_prefix="$out/" \
  "$out/corpus" "$here/corpus"
