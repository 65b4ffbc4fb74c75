#!/usr/bin/env bash
# v27 final, part 2: the whole Rust GPU suite on the final build's defaults, then the sanitizers
# on the new default (the warp-specialized head_dim 32/64 backward) and on the demo.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
echo "== suite $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FWD_CASES=150 FLASH_ATTN_BWD_CASES=120 FLASH_ATTN_VARLEN_CASES=60 FLASH_ATTN_KVCACHE_CASES=100 FLASH_ATTN_APPEND_CASES=150 FLASH_ATTN_FP8_CASES=80 \
  FLASH_ATTN_TEST_REPORT=$out/test-report.jsonl timeout 280 $B/tests/gpu 2>&1 | grep -E "^test |cases passed|test result|fp8 accuracy|skipped" | tee -a $out/log.txt
echo "== sanitize $(date +%T)" | tee -a $out/log.txt
WS=flash_bwd_wgmma_ws_bf16_hdim64,flash_bwd_wgmma_ws_f16_hdim64,flash_bwd_wgmma_ws_bf16_hdim32,flash_bwd_wgmma_ws_f16_hdim32
for tool in memcheck racecheck synccheck; do
  FLASH_ATTN_KERNELS=$WS FLASH_ATTN_BWD_CASES=3 timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu backward_matches 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" | tail -2 | sed "s/^/$tool: /" | tee -a $out/log.txt
done
D="$B/bin/demo --batch 1 --heads 2 --iters 1"
timeout 60 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 $D --seqlen 700 --head-dim 64 2>&1 | tail -1 | sed "s/^/demo d64 memcheck: /" | tee -a $out/log.txt
timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 $D --seqlen 300 --head-dim 64 --causal 2>&1 | tail -1 | sed "s/^/demo d64 racecheck: /" | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
