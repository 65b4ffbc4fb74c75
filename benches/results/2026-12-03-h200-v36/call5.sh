#!/usr/bin/env bash
# v36 call 5: the feature rows (issue 9's table: GQA, windows, softcap, sinks, dense and causal
# references) of the shipped kernels, ours only (FA4 is not staged), to compare with the issue 9
# record; two rounds.
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
for round in 1 2; do
  echo "== features round $round $(date +%T)" | tee -a $out/log.txt
  timeout 200 $B/bin/bench --features all --out $out/features_$round.jsonl 2>&1 | tail -30 | tee -a $out/log.txt
done
echo "== done $(date +%T)" | tee -a $out/log.txt
