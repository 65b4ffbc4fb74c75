#!/usr/bin/env bash
# v30g call 9: the shipped rule (dense head_dim 128 forwards of at most 1024 keys run pe40). Forward
# tests of the defaults at 128 (the rule's kernel for most cases) uncapped and capped at 3 blocks, the
# f16 pe40 forced, every GPU test once, the demo, memcheck on default 128 forwards, then A/B of the new
# default against the old one-tile-a-block kernel forced (an override switches the rule off).
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
T="gpu::forward_matches_reference --exact"
f() { grep -E "cases passed|test result|FAIL|panick|rror|ignored|ok$" | tee -a $out/log.txt; }
echo "== forward tests defaults at 128, uncapped $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_HEAD_DIMS=128 FLASH_ATTN_FWD_CASES=200 timeout 45 $B/tests/gpu $T 2>&1 | f
echo "== forward tests defaults at 128, cap 3 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_PERSISTENT_BLOCKS=3 FLASH_ATTN_HEAD_DIMS=128 FLASH_ATTN_FWD_CASES=150 timeout 45 $B/tests/gpu $T 2>&1 | f
echo "== forward tests pe40 f16 forced, cap 3 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_PERSISTENT_BLOCKS=3 FLASH_ATTN_HEAD_DIMS=128 FLASH_ATTN_KERNELS=flash_fwd_wgmma_ws_pe40_f16_hdim128 FLASH_ATTN_FWD_CASES=100 timeout 45 $B/tests/gpu $T 2>&1 | f
echo "== every GPU test $(date +%T)" | tee -a $out/log.txt
timeout 170 $B/tests/gpu 2>&1 | f
echo "== demo $(date +%T)" | tee -a $out/log.txt
timeout 40 $B/bin/demo 2>&1 | tail -6 | tee -a $out/log.txt
echo "== memcheck defaults at 128 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_HEAD_DIMS=128 FLASH_ATTN_FWD_CASES=6 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|cases passed|test result" | tail -3 | tee -a $out/log.txt
S="--seqlens 512,1024,2048,16384"
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 60 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run default $round $B/bin/bench --dtypes bf16,f16 --head-dims 128 $S
  run old $round $B/bin/bench --dtypes bf16,f16 --head-dims 128 $S --kernel flash_fwd_wgmma_ws_bf16_hdim128,flash_fwd_wgmma_ws_f16_hdim128
done
echo "== done $(date +%T)" | tee -a $out/log.txt
