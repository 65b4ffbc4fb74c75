#!/usr/bin/env bash
# v34 call 3: the rescale decided before the row max's shuffles (all forwards). A/B of this build
# (bench) against the v33 build (bench_base, call 1's) in two interleaved rounds: FP8 head_dim 128
# and 256, bf16 head_dim 64/128/256 (the backward, unchanged, is the control); the forward and FP8
# property tests on this build.
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
f() { grep -E "cases passed|test result|FAIL|panick|max error" | tee -a $out/log.txt; }
echo "== forward tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FWD_CASES=200 timeout 90 $B/tests/gpu gpu::forward_matches_reference --exact 2>&1 | f
echo "== fp8 tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FP8_CASES=100 timeout 60 $B/tests/gpu gpu::fp8_forward_matches_reference --exact 2>&1 | f
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 90 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|fp8)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  for bin in bench_base bench; do
    run $bin $round $B/bin/$bin --dtypes fp8 --head-dims 128,256 --seqlens 1024,4096,16384
    run $bin $round $B/bin/$bin --dtypes bf16 --head-dims 64,128,256 --seqlens 1024,4096,16384
  done
done
echo "== done $(date +%T)" | tee -a $out/log.txt
