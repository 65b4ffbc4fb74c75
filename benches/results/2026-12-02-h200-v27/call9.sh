#!/usr/bin/env bash
# v27d call 9: isolate one of v27b's changes. The v27 warp-specialized backward with a second
# dSᵀ tile and nothing else (flash_bwd_wgmma_ws_ds2_*): backward cases with it forced, then A/B
# against the v27 kernel (the default at 64, by name at 128), two rounds, bf16.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
DS2=flash_bwd_wgmma_ws_ds2_bf16_hdim64,flash_bwd_wgmma_ws_ds2_bf16_hdim128
FLASH_ATTN_KERNELS=$DS2 FLASH_ATTN_BWD_CASES=60 timeout 60 $B/tests/gpu backward_matches 2>&1 | grep -E "cases passed|test result|FAIL" | tee -a $out/log.txt
for round in 1 2; do
  for k in v27 ds2; do
    if [ $k = v27 ]; then sel="--kernel flash_bwd_wgmma_ws_bf16_hdim128"; else sel="--kernel $DS2"; fi
    echo "== bench $round $k $(date +%T)" | tee -a $out/log.txt
    timeout 60 $B/bin/bench --dtypes bf16 --head-dims 64,128 --seqlens 2048,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^bf16" | tee -a $out/log.txt
    sed "s/^{/{\"round\":$round,\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
  done
done
echo "== done $(date +%T)" | tee -a $out/log.txt
