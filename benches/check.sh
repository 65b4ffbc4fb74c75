#!/usr/bin/env bash
# One GPU call for a kernel change: every GPU property test and an A/B bench of the previous build
# (bin/bench_base) against this one (benches/ab.sh), compute-sanitizer on the changed head dims,
# and, if GRID is set, those head dims' rows of the grid with the anchors in the same call.
# Usage (GPU machine): SHORT="--head-dims 96 --dtypes bf16,f16 --seqlens 512,2048,16384" \
#   SANITIZE="96" [GRID="96"] bash bundle/check.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 250 > "$out/clocks.csv" &
sampler=$!
TESTS=" " SHORT="$SHORT" bash "$here/ab.sh" > "$out/ab.log" 2>&1
if [ -n "${SANITIZE:-}" ]; then
  SANITIZE_DIMS="$SANITIZE" LOG="$out/sanitize.log" bash "$here/profile.sh" sanitize > /dev/null
fi
if [ -n "${GRID:-}" ]; then
  "$here/bin/bench" --head-dims "$GRID" --out "$out/ours.jsonl" > "$out/grid.log" 2>&1
  python3 "$here/torch_anchors.py" --head-dims "$GRID" --out "$out/torch.jsonl" >> "$out/grid.log" 2>&1
  python3 "$here/report.py" "$out/ours.jsonl" "$out/torch.jsonl" --date "$(date -u +%F)" \
    --driver "$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)" \
    --out "$out/results.jsonl" --table "$out/table.md" >> "$out/grid.log" 2>&1
fi
kill $sampler
