#!/usr/bin/env bash
# v35 call 4: the FP8 row sums by the P·V GEMM (`rs`, and `n192rs` on 192-key tiles): their FP8
# tests forced, A/B against the default in two interleaved rounds, the three sanitizers on `rs`. Also the head_dim 128 FP8 accuracy with and without it (the test prints its worst case).
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
K=flash_fwd_wgmma_ws_rs_fp8_hdim128
T="gpu::fp8_forward_matches_reference --exact"
f() { grep -E "cases passed|test result|FAIL|panick|fp8 accuracy|max error" | tee -a $out/log.txt; }
K2=flash_fwd_wgmma_ws_n192rs_fp8_hdim128
for k in $K $K2; do
  echo "== fp8 tests $k $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$k FLASH_ATTN_FP8_CASES=80 timeout 80 $B/tests/gpu $T 2>&1 | f
done
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 60 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^fp8" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
S="--seqlens 1024,4096,16384"
for round in 1 2; do
  run default $round $B/bin/bench --dtypes fp8 --head-dims 128 $S
  run rs $round $B/bin/bench --dtypes fp8 --head-dims 128 $S --kernel $K
  run n192rs $round $B/bin/bench --dtypes fp8 --head-dims 128 $S --kernel $K2
done
for tool in memcheck racecheck synccheck; do
  echo "== $tool $K $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$K FLASH_ATTN_FP8_CASES=4 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
done
for sel in default $K $K2; do
  echo "== fp8 accuracy $sel $(date +%T)" | tee -a $out/log.txt
  if [ $sel = default ]; then e=""; else e="FLASH_ATTN_KERNELS=$K"; fi
  env $e timeout 60 $B/tests/gpu gpu::fp8_accuracy_beside_bf16 --exact --nocapture 2>&1 | grep -E "fp8 accuracy|test result" | tee -a $out/log.txt
done
echo "== done $(date +%T)" | tee -a $out/log.txt
