#!/usr/bin/env bash
# v31/v32 final call on the shipped build: FP8 tests (head_dim 256 on four stages) and sanitizers; the
# head_dim 64 rule's kernel forced (f16 twin; racecheck and synccheck on it), every GPU test once, the
# demo; A/B of the head_dim 64 rule against the old kernel forced (bf16, f16), one FP8 round.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
f() { grep -E "cases passed|test result|FAIL|panick|rror|ignored|ok$|fp8 accuracy|max error" | tee -a $out/log.txt; }
T="gpu::fp8_forward_matches_reference --exact"
echo "== fp8 tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FP8_CASES=150 timeout 100 $B/tests/gpu $T 2>&1 | f
for tool in memcheck racecheck synccheck; do
  echo "== $tool fp8 $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_FP8_CASES=6 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed|test result" | tail -3 | tee -a $out/log.txt
done
F="gpu::forward_matches_reference --exact"
echo "== forward tests d64 defaults $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_HEAD_DIMS=64 FLASH_ATTN_FWD_CASES=150 timeout 45 $B/tests/gpu $F 2>&1 | f
for k in flash_fwd_wgmma_ws_pe40_f16_hdim64 flash_fwd_wgmma_ws_pe40_bf16_hdim64; do
  echo "== forward tests d64 $k cap 3 $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_PERSISTENT_BLOCKS=3 FLASH_ATTN_HEAD_DIMS=64 FLASH_ATTN_KERNELS=$k FLASH_ATTN_FWD_CASES=100 timeout 45 $B/tests/gpu $F 2>&1 | f
done
K=flash_fwd_wgmma_ws_pe40_bf16_hdim64
for tool in memcheck racecheck synccheck; do
  echo "== $tool d64 $K $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_HEAD_DIMS=64 FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=6 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $F 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed|test result" | tail -3 | tee -a $out/log.txt
done
echo "== every GPU test $(date +%T)" | tee -a $out/log.txt
timeout 170 $B/tests/gpu 2>&1 | f
echo "== demo $(date +%T)" | tee -a $out/log.txt
timeout 40 $B/bin/demo 2>&1 | tail -6 | tee -a $out/log.txt
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 60 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16|fp8)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
S="--seqlens 512,1024,2048,4096,16384"
run default 1 $B/bin/bench --dtypes bf16,f16 --head-dims 64 $S
run old 1 $B/bin/bench --dtypes bf16,f16 --head-dims 64 $S --kernel flash_fwd_wgmma_bf16_hdim64,flash_fwd_wgmma_f16_hdim64
run fp8 1 $B/bin/bench --dtypes fp8 --head-dims 256 --seqlens 1024,4096,16384
echo "== done $(date +%T)" | tee -a $out/log.txt
