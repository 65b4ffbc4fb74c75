#!/usr/bin/env bash
# v37 call 7, on the shipped build (dense calls with modifiers at head_dim 128 on the `_modsd`
# twins): every GPU test once, compute-sanitizer (memcheck, racecheck, synccheck) on the forward and
# backward property tests (their cases draw the modifiers), the softcap and dense feature rows.
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
f() { grep -E "cases passed|test result|FAIL|panick|rror" | tee -a $out/log.txt; }
echo "== every GPU test $(date +%T)" | tee -a $out/log.txt
timeout 150 $B/tests/gpu 2>&1 | f
T="matches_reference --skip varlen --skip kvcache --skip fp8"
for tool in memcheck racecheck synccheck; do
  echo "== $tool forward/backward $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_FWD_CASES=6 FLASH_ATTN_BWD_CASES=4 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -3 | tee -a $out/log.txt
done
echo "== features $(date +%T)" | tee -a $out/log.txt
timeout 60 $B/bin/bench --features softcap_50,dense --out $out/features.jsonl 2>&1 | grep -E "softcap|dense" | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
