#!/usr/bin/env bash
# v14c call: all GPU property tests, A/B bench (previous build vs this one) with head_dim 96 now
# on the padded head_dim 128 wgmma kernels, compute-sanitizer on them.
out=${OUT:-out}; mkdir -p $out
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 250 > $out/clocks.csv &
TESTS=" " SHORT="--head-dims 96,64,128 --dtypes bf16,f16 --seqlens 512,2048,16384" bash bundle/ab.sh > $out/ab.log 2>&1
kill %1
demo="bundle/bin/demo --batch 1 --heads 2 --iters 1"
for d in 96; do
  for c in "" --causal; do
    echo "== memcheck d$d $c" >> $out/sanitize.log
    timeout 100 compute-sanitizer --tool memcheck --leak-check no $demo --seqlen 1000 --head-dim $d $c 2>&1 | tail -3 >> $out/sanitize.log
  done
  for tool in racecheck synccheck initcheck; do
    echo "== $tool d$d causal" >> $out/sanitize.log
    timeout 100 compute-sanitizer --tool $tool $demo --seqlen 300 --head-dim $d --causal 2>&1 | tail -3 >> $out/sanitize.log
  done
done
cp bundle/out/test-report*.jsonl $out/ 2>/dev/null
