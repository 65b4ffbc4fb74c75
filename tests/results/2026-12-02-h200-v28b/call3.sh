#!/usr/bin/env bash
# v28b: the early-load head_dim 256 backward as the default (every flavor, both dtypes). Property
# tests with every random case at head_dim 256, deterministic, varlen; the three sanitizers; one
# bench round against the late-load kernel (opt-in) to confirm the flip.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && rm -rf bundle && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
export FLASH_ATTN_HEAD_DIMS=256
for t in backward deterministic varlen; do
  echo "== tests $t $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_BWD_CASES=80 FLASH_ATTN_VARLEN_CASES=40 timeout 150 $B/tests/gpu $t 2>&1 | grep -E "cases passed|test result|FAIL|panick|rror" | tee -a $out/log.txt
done
for tool in memcheck racecheck synccheck; do
  echo "== sanitize $tool $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_BWD_CASES=5 timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu backward 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|cases passed" | tail -3 | sed "s/^/$tool: /" | tee -a $out/log.txt
done
for k in default late; do
  if [ $k = default ]; then sel=""; else sel="--kernel flash_bwd_wgmma_late_bf16_hdim256"; fi
  echo "== bench $k $(date +%T)" | tee -a $out/log.txt
  timeout 60 $B/bin/bench --dtypes bf16 --head-dims 256 --seqlens 1024,4096,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^bf16" | tee -a $out/log.txt
  sed "s/^{/{\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
done
echo "== done $(date +%T)" | tee -a $out/log.txt
