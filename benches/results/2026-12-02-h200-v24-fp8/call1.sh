#!/usr/bin/env bash
# v24 call 1: FP8 forward tests, sanitizers on it, the append flake's fix, FP8 vs bf16 speed (ours).
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
B=/tmp/bundle
echo "== fp8 tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FP8_CASES=150 timeout 240 $B/tests/gpu fp8_forward 2>&1 | tail -8 | tee -a $out/log.txt
echo "== fp8 accuracy $(date +%T)" | tee -a $out/log.txt
timeout 120 $B/tests/gpu fp8_accuracy --nocapture 2>&1 | grep -E "fp8|test result" | tee -a $out/log.txt
echo "== bench $(date +%T)" | tee -a $out/log.txt
timeout 150 $B/bin/bench --dtypes bf16,fp8 --head-dims 128 --seqlens 1024,4096,16384 --out $out/fp8-bench.jsonl 2>&1 | tail -16 | tee -a $out/log.txt
echo "== sanitize $(date +%T)" | tee -a $out/log.txt
for tool in memcheck racecheck synccheck; do
  FLASH_ATTN_FP8_CASES=4 timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu fp8_forward 2>&1 | grep -E "ERROR SUMMARY|Error|test result" | tail -2 | sed "s/^/$tool: /" | tee -a $out/log.txt
done
echo "== append $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_APPEND_CASES=600 timeout 120 $B/tests/gpu kvcache_append 2>&1 | tail -4 | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
