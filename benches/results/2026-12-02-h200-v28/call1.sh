#!/usr/bin/env bash
# v28 call 1: the head_dim 192 backward on the column-split wgmma kernel. Property tests with its
# kernels forced (dense, _seq, _mods, both dtypes; the one-stage candidate), deterministic mode,
# varlen, every random case at head_dim 192 (FLASH_ATTN_HEAD_DIMS); compute-sanitizer memcheck, racecheck, synccheck on them.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
export FLASH_ATTN_HEAD_DIMS=192
K=""
for e in bf16 f16; do for t in "" _seq _mods; do K="$K,flash_bwd_wgmma_${e}_hdim192$t"; done; done
K=${K#,}
for t in backward deterministic varlen; do
  echo "== tests $t $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$K FLASH_ATTN_BWD_CASES=100 FLASH_ATTN_VARLEN_CASES=40 timeout 150 $B/tests/gpu $t 2>&1 | grep -E "cases passed|ratio|test result|FAIL|panick|rror" | tee -a $out/log.txt
done
echo "== tests one-stage $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_KERNELS=flash_bwd_wgmma_1s_bf16_hdim192 FLASH_ATTN_BWD_CASES=30 timeout 90 $B/tests/gpu backward 2>&1 | grep -E "cases passed|ratio|test result|FAIL|panick|rror" | tee -a $out/log.txt
for tool in memcheck racecheck synccheck; do
  echo "== sanitize $tool $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$K FLASH_ATTN_BWD_CASES=6 timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu backward 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|cases passed" | tail -3 | sed "s/^/$tool: /" | tee -a $out/log.txt
done
cp /tmp/bundle/*report*.jsonl $out/ 2>/dev/null
echo "== done $(date +%T)" | tee -a $out/log.txt
