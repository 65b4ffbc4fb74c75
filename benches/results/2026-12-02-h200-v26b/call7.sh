#!/usr/bin/env bash
# v26b: the FP8 polynomial-exp candidates with the split decided per tile: tests, then A/B, two rounds.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
for k in flash_fwd_wgmma_ws_px1_fp8_hdim128 flash_fwd_wgmma_ws_px2_fp8_hdim128; do
  FLASH_ATTN_KERNELS=$k FLASH_ATTN_FP8_CASES=60 timeout 60 $B/tests/gpu fp8_forward 2>&1 | grep -E "cases passed|ratio|test result" | sed "s/^/$k: /" | tee -a $out/log.txt
done
FLASH_ATTN_KERNELS=flash_fwd_wgmma_ws_px1_fp8_hdim128 FLASH_ATTN_FP8_CASES=3 timeout 60 compute-sanitizer --tool racecheck $B/tests/gpu fp8_forward 2>&1 | grep -E "RACECHECK SUMMARY|test result" | sed "s/^/racecheck px1: /" | tee -a $out/log.txt
for round in 1 2; do
  for k in default flash_fwd_wgmma_ws_px1_fp8_hdim128 flash_fwd_wgmma_ws_px2_fp8_hdim128; do
    if [ $k = default ]; then sel=""; else sel="--kernel $k"; fi
    echo "== bench $round $k" | tee -a $out/log.txt
    timeout 60 $B/bin/bench --dtypes fp8 --head-dims 128 --seqlens 1024,4096,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^fp8" | tee -a $out/log.txt; sed "s/^{/{\"round\":$round,\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
  done
done
echo "== done $(date +%T)" | tee -a $out/log.txt
