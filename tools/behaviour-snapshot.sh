#!/usr/bin/env bash
# Prints one line per (device, trace setting, policy): the digests of every attention output
# and every attended page list of a `freekv eval` run. Two trees that print the same lines
# compute bit-identical outputs and identical selections on these devices, which is what a
# refactor or an optimisation that must not change behaviour has to show:
#   tools/behaviour-snapshot.sh build > before.txt   (old tree)
#   tools/behaviour-snapshot.sh build > after.txt    (new tree); diff before.txt after.txt
# Devices: the first device of each of cpu, opencl and vulkan (a backend without one prints
# its error line instead).
set -euo pipefail
build=${1:-build}
exe="$build/freekv"
[ -x "$exe" ] || { echo "behaviour-snapshot: $exe not found (build first)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# settings: the defaults (f16, softmax-mean), f32 with a larger group and the mean reduction,
# bf16 with a page size that does not divide the prompt
settings=(
  ""
  "--dtype f32 --q-heads 16 --kv-heads 2 --group-reduce mean --tau 0.95"
  "--dtype bf16 --page 32 --budget 1024 --sink 64 --window 128 --context 4000 --steps 24"
)
for backend in cpu opencl vulkan; do
  for i in "${!settings[@]}"; do
    # shellcheck disable=SC2086
    if ! "$exe" eval --backend "$backend" ${settings[$i]} --json "$tmp/out.json" >"$tmp/log" 2>&1; then
      echo "$backend setting$i: eval failed: $(tail -n 1 "$tmp/log")"
      continue
    fi
    python3 - "$tmp/out.json" "$backend" "$i" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for p in r["results"]:
    print(f'{sys.argv[2]} setting{sys.argv[3]} {p["policy"]:12s} out {p.get("output_digest", "-")} '
          f'pages {p.get("pages_digest", "-")} ok {p["ok"]}')
PY
  done
done
