#!/usr/bin/env bash
# v27 call 3 (v27b: one consumer meeting a step, per-warpgroup dQ reductions, two dSᵀ tiles):
# property tests with every warp-specialized backward forced, deterministic, varlen; sanitizers;
# A/B, two rounds: this build's defaults, its warp-specialized 96/128 candidates, and the v27
# build's defaults (bench_base = call 2's bench).
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
xz -dc $R/gpucarry/bench_base.xz > $B/bin/bench_base; chmod +x $B/bin/bench_base
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
WS=""
for d in 32 64 96 128; do for e in bf16 f16; do for t in "" _seq _mods; do WS="$WS,flash_bwd_wgmma_ws_${e}_hdim${d}$t"; done; done; done
WS=${WS#,}
echo "== tests ws $(date +%T)" | tee -a $out/log.txt
for t in backward deterministic varlen; do
  FLASH_ATTN_KERNELS=$WS FLASH_ATTN_BWD_CASES=150 FLASH_ATTN_VARLEN_CASES=60 timeout 150 $B/tests/gpu $t 2>&1 | grep -E "cases passed|test result|FAIL|panick|rror" | tee -a $out/log.txt
done
echo "== sanitize $(date +%T)" | tee -a $out/log.txt
for tool in memcheck racecheck synccheck; do
  FLASH_ATTN_KERNELS=$WS FLASH_ATTN_BWD_CASES=4 timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu backward 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" | tail -2 | sed "s/^/$tool: /" | tee -a $out/log.txt
done
K128=flash_bwd_wgmma_ws_bf16_hdim128,flash_bwd_wgmma_ws_bf16_hdim96
for round in 1 2; do
  for k in default ws base; do
    bin=bench; sel=""
    case $k in ws) sel="--kernel $K128";; base) bin=bench_base;; esac
    echo "== bench $round $k $(date +%T)" | tee -a $out/log.txt
    timeout 120 $B/bin/$bin --dtypes bf16 --head-dims 32,64,96,128 --seqlens 512,2048,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^bf16" | tee -a $out/log.txt
    sed "s/^{/{\"round\":$round,\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
  done
done
echo "== done $(date +%T)" | tee -a $out/log.txt
