#!/usr/bin/env bash
# v31 call 1: the FP8 forward at head_dim 256 (64-key tiles, 64-byte-swizzled Vᵀ). FP8 property tests
# (head_dim 128 and 256 drawn), the accuracy report, memcheck/racecheck/synccheck on FP8 cases, then the
# FP8 grid points at 128 and 256 (two rounds; the 256 ping-pong and four-stage candidates at 4k and 16k) beside the bf16 head_dim 256 forward; forward tests and
# memcheck of the v32 head_dim 64 candidates (forced).
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
f() { grep -E "cases passed|test result|FAIL|panick|rror|ignored|ok$|fp8 accuracy|max error" | tee -a $out/log.txt; }
T="gpu::fp8_forward_matches_reference --exact"
echo "== fp8 tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FP8_CASES=200 timeout 120 $B/tests/gpu $T 2>&1 | f
echo "== fp8 accuracy $(date +%T)" | tee -a $out/log.txt
timeout 60 $B/tests/gpu gpu::fp8_accuracy_beside_bf16 --exact 2>&1 | f
for tool in memcheck racecheck synccheck; do
  echo "== $tool fp8 $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_FP8_CASES=6 timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed|test result|head_dim: 256" | tail -4 | tee -a $out/log.txt
done
for k in flash_fwd_wgmma_ws_w2_bf16_hdim64 flash_fwd_wgmma_ws_pe40_bf16_hdim64; do
  echo "== forward tests d64 $k $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_HEAD_DIMS=64 FLASH_ATTN_KERNELS=$k FLASH_ATTN_FWD_CASES=100 timeout 45 $B/tests/gpu gpu::forward_matches_reference --exact 2>&1 | f
done
echo "== forward tests d64 pe40 cap 3 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_PERSISTENT_BLOCKS=3 FLASH_ATTN_HEAD_DIMS=64 FLASH_ATTN_KERNELS=flash_fwd_wgmma_ws_pe40_bf16_hdim64 FLASH_ATTN_FWD_CASES=100 timeout 45 $B/tests/gpu gpu::forward_matches_reference --exact 2>&1 | f
for k in flash_fwd_wgmma_ws_w2_bf16_hdim64 flash_fwd_wgmma_ws_pe40_bf16_hdim64; do
  echo "== memcheck d64 $k $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_HEAD_DIMS=64 FLASH_ATTN_KERNELS=$k FLASH_ATTN_FWD_CASES=6 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/gpu gpu::forward_matches_reference --exact 2>&1 | grep -E "ERROR SUMMARY|cases passed|test result" | tail -3 | tee -a $out/log.txt
done
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 90 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16|fp8)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run fp8 $round $B/bin/bench --dtypes fp8 --head-dims 128,256 --seqlens 1024,4096,16384
  run pp $round $B/bin/bench --dtypes fp8 --head-dims 256 --seqlens 4096,16384 --kernel flash_fwd_wgmma_ws_pp_fp8_hdim256
  run s4 $round $B/bin/bench --dtypes fp8 --head-dims 256 --seqlens 4096,16384 --kernel flash_fwd_wgmma_ws_s4_fp8_hdim256
done
run bf16 1 $B/bin/bench --dtypes bf16 --head-dims 256 --seqlens 4096,16384
echo "== done $(date +%T)" | tee -a $out/log.txt
