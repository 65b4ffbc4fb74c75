#!/usr/bin/env bash
# v14d call: all GPU property tests, A/B bench (previous build vs this one) with the head_dim 32
# backward on the padded head_dim 64 wgmma kernel, compute-sanitizer on it, then the head_dim 32
# rows of the grid with the anchors in the same call.
out=${OUT:-out}; mkdir -p $out
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 250 > $out/clocks.csv &
TESTS=" " SHORT="--head-dims 32 --dtypes bf16,f16 --seqlens 512,2048,16384" bash bundle/ab.sh > $out/ab.log 2>&1
demo="bundle/bin/demo --batch 1 --heads 2 --iters 1"
for c in "" --causal; do
  echo "== memcheck d32 $c" >> $out/sanitize.log
  timeout 100 compute-sanitizer --tool memcheck --leak-check no $demo --seqlen 1000 --head-dim 32 $c 2>&1 | tail -3 >> $out/sanitize.log
done
for tool in racecheck synccheck initcheck; do
  echo "== $tool d32 causal" >> $out/sanitize.log
  timeout 100 compute-sanitizer --tool $tool $demo --seqlen 300 --head-dim 32 --causal 2>&1 | tail -3 >> $out/sanitize.log
done
bundle/bin/bench --head-dims 32 --out $out/ours.jsonl > $out/grid.log 2>&1
python3 bundle/torch_anchors.py --head-dims 32 --out $out/torch.jsonl >> $out/grid.log 2>&1
kill %1
python3 bundle/report.py $out/ours.jsonl $out/torch.jsonl --date "$(date -u +%F)" \
  --driver "$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)" \
  --out $out/results.jsonl --plot $out/plot.png --table $out/table.md >> $out/grid.log 2>&1
cp bundle/out/test-report*.jsonl $out/ 2>/dev/null
rm -f $out/plot.png
