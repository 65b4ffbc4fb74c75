#!/usr/bin/env bash
# v27c call 6: the warp-specialized head_dim 96/128 backward with its spill removed (the dSᵀ and
# dQ staging addresses re-derived each step). Property tests with it forced, deterministic,
# sanitizers, then A/B against the default (all-threads-load) kernel: two rounds bf16, one f16.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
WS=""
for d in 96 128; do for e in bf16 f16; do WS="$WS,flash_bwd_wgmma_ws_${e}_hdim${d}"; done; done
WS=${WS#,}
echo "== tests $(date +%T)" | tee -a $out/log.txt
for t in backward deterministic; do
  FLASH_ATTN_KERNELS=$WS FLASH_ATTN_BWD_CASES=120 timeout 150 $B/tests/gpu $t 2>&1 | grep -E "cases passed|test result|FAIL|panick|rror" | tee -a $out/log.txt
done
for tool in memcheck racecheck synccheck; do
  FLASH_ATTN_KERNELS=$WS FLASH_ATTN_BWD_CASES=3 timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu backward_matches 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" | tail -2 | sed "s/^/$tool: /" | tee -a $out/log.txt
done
for round in 1 2; do
  for k in default ws; do
    if [ $k = default ]; then sel=""; else sel="--kernel flash_bwd_wgmma_ws_bf16_hdim128,flash_bwd_wgmma_ws_bf16_hdim96"; fi
    echo "== bench $round $k $(date +%T)" | tee -a $out/log.txt
    timeout 120 $B/bin/bench --dtypes bf16 --head-dims 96,128 --seqlens 512,1024,4096,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^bf16" | tee -a $out/log.txt
    sed "s/^{/{\"round\":$round,\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
  done
done
for k in default ws; do
  if [ $k = default ]; then sel=""; else sel="--kernel flash_bwd_wgmma_ws_f16_hdim128,flash_bwd_wgmma_ws_f16_hdim96"; fi
  echo "== bench f16 $k $(date +%T)" | tee -a $out/log.txt
  timeout 120 $B/bin/bench --dtypes f16 --head-dims 96,128 --seqlens 1024,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^f16" | tee -a $out/log.txt
  sed "s/^{/{\"round\":1,\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
done
echo "== done $(date +%T)" | tee -a $out/log.txt
