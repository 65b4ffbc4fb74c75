#!/usr/bin/env bash
# v30f call 8: the persistent forward with the static schedule as its own instance (uniform tile
# math) and the dynamic one broadcasting its tile: tests of every persistent kernel capped at 3
# blocks, racecheck, then A/B default / pe / pe40 (bf16 128, two rounds) and pe at 256 (one round).
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
T="gpu::forward_matches_reference --exact"
K=flash_fwd_wgmma_ws_pe_bf16_hdim128,flash_fwd_wgmma_ws_pe_f16_hdim128,flash_fwd_wgmma_ws_pe40_bf16_hdim128,flash_fwd_wgmma_ws_pe_bf16_hdim256
echo "== forward tests pe*, cap 3 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_PERSISTENT_BLOCKS=3 FLASH_ATTN_HEAD_DIMS=128,256 FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=120 timeout 45 $B/tests/gpu $T 2>&1 | grep -E "cases passed|test result|FAIL|panick|rror" | tee -a $out/log.txt
[ "${PIPESTATUS[0]}" = 0 ] || { echo "== tests failed or hung: stop" | tee -a $out/log.txt; exit 1; }
echo "== racecheck pe* cap 3 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_PERSISTENT_BLOCKS=3 FLASH_ATTN_HEAD_DIMS=128,256 FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=4 timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "RACECHECK SUMMARY|cases passed|test result" | tail -3 | tee -a $out/log.txt
S="--seqlens 512,1024,2048,4096,16384"
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 60 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run default $round $B/bin/bench --dtypes bf16 --head-dims 128 $S
  run pe $round $B/bin/bench --dtypes bf16 --head-dims 128 $S --kernel flash_fwd_wgmma_ws_pe_bf16_hdim128
  run pe40 $round $B/bin/bench --dtypes bf16 --head-dims 128 $S --kernel flash_fwd_wgmma_ws_pe40_bf16_hdim128
done
run default 1 $B/bin/bench --dtypes bf16 --head-dims 256 $S
run pe 1 $B/bin/bench --dtypes bf16 --head-dims 256 $S --kernel flash_fwd_wgmma_ws_pe_bf16_hdim256
echo "== done $(date +%T)" | tee -a $out/log.txt
