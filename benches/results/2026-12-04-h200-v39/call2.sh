#!/usr/bin/env bash
# v39 call 2: memcheck, racecheck and synccheck on the span build's forward and backward property
# tests (random shapes, causal and windowed cases among them) and on v38's two candidates.
# Carry: the same gpucarry/bundle.txz as call1.sh (prepare.sh).
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; cat $B/ptx/flash_attn.features; } | tee $out/log.txt
KP=flash_bwd_wgmma_ws_pl_bf16_hdim64; KW=flash_bwd_wgmma_ws_plw_bf16_hdim64
T="gpu::backward_matches_reference --exact"
for tool in memcheck racecheck synccheck; do
  for T2 in "gpu::forward_matches_reference --exact" "gpu::backward_matches_reference --exact"; do
    echo "== $tool span $T2 $(date +%T)" | tee -a $out/log.txt
    FLASH_ATTN_FWD_CASES=6 FLASH_ATTN_BWD_CASES=6 timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T2 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
  done
  for K in $KP $KW; do
    echo "== $tool $K $(date +%T)" | tee -a $out/log.txt
    FLASH_ATTN_KERNELS=$K FLASH_ATTN_BWD_CASES=4 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
  done
done
echo "== done $(date +%T)" | tee -a $out/log.txt
