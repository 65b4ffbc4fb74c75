#!/usr/bin/env bash
# v36 call 1: the late row-sum candidates (each tile's row sums added under the next score GEMM):
# FP8 head_dim 128 and 256 (four stages), bf16 head_dim 128 and 256. Their property tests forced,
# A/B against the defaults in two interleaved rounds, the three sanitizers on each.
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
KF=flash_fwd_wgmma_ws_ls_fp8_hdim128,flash_fwd_wgmma_ws_lss4_fp8_hdim256
KB=flash_fwd_wgmma_ws_ls_bf16_hdim128,flash_fwd_wgmma_ws_ls_bf16_hdim256
TF="gpu::fp8_forward_matches_reference --exact"
TB="gpu::forward_matches_reference --exact"
f() { grep -E "cases passed|test result|FAIL|panick|max error" | tee -a $out/log.txt; }
echo "== fp8 tests $KF $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_KERNELS=$KF FLASH_ATTN_FP8_CASES=100 timeout 80 $B/tests/gpu $TF 2>&1 | f
echo "== forward tests $KB $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_KERNELS=$KB FLASH_ATTN_FWD_CASES=200 timeout 90 $B/tests/gpu $TB 2>&1 | f
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 90 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|fp8)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
S="--seqlens 1024,4096,16384"
for round in 1 2; do
  run default $round $B/bin/bench --dtypes fp8 --head-dims 128,256 $S
  run late $round $B/bin/bench --dtypes fp8 --head-dims 128,256 $S --kernel $KF
  run default $round $B/bin/bench --dtypes bf16 --head-dims 128,256 $S
  run late $round $B/bin/bench --dtypes bf16 --head-dims 128,256 $S --kernel $KB
done
for tool in memcheck racecheck synccheck; do
  echo "== $tool $KF $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$KF FLASH_ATTN_FP8_CASES=6 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $TF 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
  echo "== $tool $KB $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$KB FLASH_ATTN_FWD_CASES=6 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $TB 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
done
echo "== done $(date +%T)" | tee -a $out/log.txt
