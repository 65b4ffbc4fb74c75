#!/usr/bin/env bash
# Issue 12's grid in one GPU call: FA4 (if staged: /tmp/fa4/env.sh), then our bench, then the
# torch anchors (SDPA flash = FA2, cuDNN), merged by report.py into results.jsonl, table.md and
# plot.png under $OUT. Each step has its own time limit so that a slow one leaves the others'
# rows. Usage (GPU machine, repository root, bundle unpacked):
#   OUT=... [HEAD_DIMS=64,128,256] [SEQLENS=512,...] [DTYPES=bf16,f16] bash benches/grid.sh [bundle]
set -u
here=$(cd "$(dirname "$0")" && pwd)
b=${1:-bundle}
out=${OUT:?set OUT}
hd=${HEAD_DIMS:-64,128,256}
sl=${SEQLENS:-512,1024,2048,4096,8192,16384}
dt=${DTYPES:-bf16,f16}
mkdir -p "$out"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 250 > "$out/clocks.csv" &
sampler=$!
fa4_arg=()
if [ -f /tmp/fa4/env.sh ]; then
  echo "== $(date +%T) fa4_anchors" | tee -a "$out/grid.log"
  (source /tmp/fa4/env.sh && timeout "${FA4_TIME:-330}" python3 /tmp/fa4/fa4_anchors.py --out "$out/fa4.jsonl" \
    --head-dims "$hd" --seqlens "$sl" --dtypes "$dt") >> "$out/grid.log" 2>&1
  fa4_arg=(--fa4 "$out/fa4.jsonl")
fi
echo "== $(date +%T) bench" | tee -a "$out/grid.log"
timeout "${OURS_TIME:-150}" "$b/bin/bench" --head-dims "$hd" --dtypes "$dt" --seqlens "$sl" --out "$out/ours.jsonl" >> "$out/grid.log" 2>&1
echo "== $(date +%T) torch_anchors" | tee -a "$out/grid.log"
timeout "${TORCH_TIME:-200}" python3 "$here/torch_anchors.py" --head-dims "$hd" --dtypes "$dt" --seqlens "$sl" \
  --out "$out/torch.jsonl" >> "$out/grid.log" 2>&1
echo "== $(date +%T) report" | tee -a "$out/grid.log"
python3 "$here/report.py" "$out/ours.jsonl" "$out/torch.jsonl" "${fa4_arg[@]}" --date "$(date -u +%F)" \
  --driver "$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)" \
  --out "$out/results.jsonl" --table "$out/table.md" --plot "$out/plot.png" 2>&1 | tail -12
kill $sampler
