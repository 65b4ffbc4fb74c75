#!/usr/bin/env bash
# v25 call 2: FP8 candidates (ping-pong consumers, four stages): correctness, then A/B against the default, two rounds.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
B=/tmp/bundle
for k in flash_fwd_wgmma_ws_pp_fp8_hdim128 flash_fwd_wgmma_ws_s4_fp8_hdim128; do
  echo "== tests $k $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$k FLASH_ATTN_FP8_CASES=60 timeout 120 $B/tests/gpu fp8_forward 2>&1 | grep -E "cases passed|ratio|test result" | tee -a $out/log.txt
done
k=flash_fwd_wgmma_ws_pp_fp8_hdim128
FLASH_ATTN_FP8_CASES=3 timeout 100 compute-sanitizer --tool racecheck --error-exitcode 9 env FLASH_ATTN_KERNELS=$k $B/tests/gpu fp8_forward 2>&1 | grep -E "RACECHECK|ERROR SUMMARY|test result" | tail -2 | sed "s/^/racecheck pp: /" | tee -a $out/log.txt
FLASH_ATTN_FP8_CASES=3 timeout 100 compute-sanitizer --tool synccheck --error-exitcode 9 env FLASH_ATTN_KERNELS=$k $B/tests/gpu fp8_forward 2>&1 | grep -E "ERROR SUMMARY|test result" | tail -2 | sed "s/^/synccheck pp: /" | tee -a $out/log.txt
for round in 1 2; do
  for k in default flash_fwd_wgmma_ws_pp_fp8_hdim128 flash_fwd_wgmma_ws_s4_fp8_hdim128; do
    echo "== bench round $round $k $(date +%T)" | tee -a $out/log.txt
    if [ $k = default ]; then sel=""; else sel="--kernel $k"; fi
    timeout 100 $B/bin/bench --dtypes fp8 --head-dims 128 --seqlens 1024,4096,16384 $sel --out $out/ab-$round-$k.jsonl 2>&1 | grep "^fp8" | tee -a $out/log.txt
  done
done
echo "== done $(date +%T)" | tee -a $out/log.txt
