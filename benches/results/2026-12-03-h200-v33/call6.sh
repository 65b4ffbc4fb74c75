#!/usr/bin/env bash
# Final build of session 10 (kernels back at v34, commit 75f8bc5, after v35 was withdrawn): the FP8 and
# forward property tests on the defaults, memcheck and racecheck on the FP8 default, the demo.
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
f() { grep -E "cases passed|test result|FAIL|panick|Test failed" | tee -a $out/log.txt; }
T="gpu::fp8_forward_matches_reference --exact"
echo "== fp8 tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FP8_CASES=100 timeout 60 $B/tests/gpu $T 2>&1 | f
echo "== forward tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FWD_CASES=150 timeout 30 $B/tests/gpu gpu::forward_matches_reference --exact 2>&1 | f
for tool in memcheck racecheck; do
  echo "== $tool fp8 $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_FP8_CASES=4 timeout 30 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
done
echo "== demo $(date +%T)" | tee -a $out/log.txt
timeout 30 $B/bin/demo 2>&1 | tail -3 | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
