#!/usr/bin/env bash
# Final call: the whole GPU suite on the final build, sanitizers on the FP8 kernel, the FP8
# polynomial-exp candidates (tests + A/B), the Python package's tests.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
echo "== suite $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FWD_CASES=150 FLASH_ATTN_BWD_CASES=80 FLASH_ATTN_VARLEN_CASES=60 FLASH_ATTN_KVCACHE_CASES=100 FLASH_ATTN_APPEND_CASES=150 FLASH_ATTN_FP8_CASES=100 \
  FLASH_ATTN_TEST_REPORT=$out/test-report.jsonl timeout 280 $B/tests/gpu 2>&1 | grep -E "^test |cases passed|test result|fp8 accuracy|skipped" | tee -a $out/log.txt
echo "== sanitize $(date +%T)" | tee -a $out/log.txt
for tool in memcheck racecheck synccheck; do
  FLASH_ATTN_FP8_CASES=3 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu fp8_forward 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" | tail -2 | sed "s/^/$tool: /" | tee -a $out/log.txt
done
D="$B/bin/demo --batch 1 --heads 2 --iters 1"
timeout 60 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 $D --seqlen 700 --head-dim 128 2>&1 | tail -1 | sed "s/^/demo memcheck: /" | tee -a $out/log.txt
for k in flash_fwd_wgmma_ws_px1_fp8_hdim128 flash_fwd_wgmma_ws_px2_fp8_hdim128; do
  FLASH_ATTN_KERNELS=$k FLASH_ATTN_FP8_CASES=40 timeout 60 $B/tests/gpu fp8_forward 2>&1 | grep -E "cases passed|ratio|test result" | sed "s/^/$k: /" | tee -a $out/log.txt
done
for round in 1 2; do
  for k in default flash_fwd_wgmma_ws_px1_fp8_hdim128 flash_fwd_wgmma_ws_px2_fp8_hdim128; do
    if [ $k = default ]; then sel=""; else sel="--kernel $k"; fi
    echo "== bench $round $k" | tee -a $out/log.txt
    timeout 60 $B/bin/bench --dtypes fp8 --head-dims 128 --seqlens 4096,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^fp8" | tee -a $out/log.txt; sed "s/^{/{\"round\":$round,\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
  done
done
echo "== python $(date +%T)" | tee -a $out/log.txt
OUT=$out/py STEPS="tests" TTIME=170 FLASH_ATTN_PY_CASES=50 bash python/scripts/gpu_check.sh > $out/py-full.txt 2>&1
grep -E "passed|failed|skipped|error|flash_attn_rs gpu\]" $out/py-full.txt | tail -25 | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
