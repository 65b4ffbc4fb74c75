#!/usr/bin/env bash
# v36 call 2, first of three back-to-back calls: FA4 part a1 (the grid's anchor, joined in call 3),
# then the shipped kernels' checks on this build (its default kernels' PTX equals session 10's
# final build apart from one anonymous constant's name): every GPU test once, 100 FP8 cases,
# compute-sanitizer (memcheck, racecheck, synccheck) on the FP8 defaults and the demo's head_dim
# 128 causal forward and backward, the demo.
set -u
R=$PWD; out=${OUT:?}
bash fa4kit/a1/stage.sh 2>&1 | tail -1 | tee $out/log.txt
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $out/log.txt
f() { grep -E "cases passed|test result|FAIL|panick|rror|ignored|ok$|max error" | tee -a $out/log.txt; }
echo "== every GPU test $(date +%T)" | tee -a $out/log.txt
timeout 170 $B/tests/gpu 2>&1 | f
T="gpu::fp8_forward_matches_reference --exact"
echo "== fp8 tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FP8_CASES=100 timeout 90 $B/tests/gpu $T 2>&1 | f
for tool in memcheck racecheck synccheck; do
  echo "== $tool fp8 $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_FP8_CASES=6 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
  echo "== $tool demo d128 causal $(date +%T)" | tee -a $out/log.txt
  timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 $B/bin/demo --batch 1 --heads 2 --iters 1 --seqlen 300 --head-dim 128 --causal 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY" | tail -1 | tee -a $out/log.txt
done
echo "== demo $(date +%T)" | tee -a $out/log.txt
timeout 40 $B/bin/demo 2>&1 | tail -6 | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
