#!/usr/bin/env bash
# v31b call 6: ping-pong on four stages (FP8 head_dim 256, opt-in `pps4`) against the four-stage default,
# two interleaved rounds at 4k and 16k; its FP8 tests forced and the three sanitizers.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
K=flash_fwd_wgmma_ws_pps4_fp8_hdim256
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 40 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^fp8" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run s4 $round $B/bin/bench --dtypes fp8 --head-dims 256 --seqlens 4096,16384
  run pps4 $round $B/bin/bench --dtypes fp8 --head-dims 256 --seqlens 4096,16384 --kernel $K
done
T="gpu::fp8_forward_matches_reference --exact"
echo "== fp8 tests $K $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_KERNELS=$K FLASH_ATTN_FP8_CASES=60 timeout 40 $B/tests/gpu $T 2>&1 | grep -E "cases passed|test result|FAIL|panick" | tee -a $out/log.txt
for tool in memcheck racecheck synccheck; do
  echo "== $tool $K $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$K FLASH_ATTN_FP8_CASES=4 timeout 40 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
done
echo "== done $(date +%T)" | tee -a $out/log.txt
