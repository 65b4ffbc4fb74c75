#!/usr/bin/env bash
# v29 call 2: v29b (the default head_dim 128 schedule with per-warp dQ reductions) against the
# default and v29's dqb, bf16, two rounds; tests of it (backward, deterministic, memcheck); the
# warp-specialized defaults at 32 and 64 (their PTX differs from v28b's by one `and` in a
# descriptor) re-tested.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
W=flash_bwd_wgmma_wr_bf16_hdim128
for t in backward deterministic; do
  echo "== tests wr $t $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_HEAD_DIMS=128 FLASH_ATTN_KERNELS=$W FLASH_ATTN_BWD_CASES=60 timeout 120 $B/tests/gpu $t 2>&1 | grep -E "cases passed|test result|FAIL|panick|rror" | tee -a $out/log.txt
  echo "== tests defaults 32,64 $t $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_HEAD_DIMS=32,64 FLASH_ATTN_BWD_CASES=80 timeout 120 $B/tests/gpu $t 2>&1 | grep -E "cases passed|test result|FAIL|panick|rror" | tee -a $out/log.txt
done
echo "== varlen defaults 32,64 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_HEAD_DIMS=32,64 FLASH_ATTN_VARLEN_CASES=40 timeout 120 $B/tests/gpu varlen 2>&1 | grep -E "cases passed|test result|FAIL|panick|rror" | tee -a $out/log.txt
echo "== memcheck wr $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_HEAD_DIMS=128 FLASH_ATTN_KERNELS=$W FLASH_ATTN_BWD_CASES=6 timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/gpu backward 2>&1 | grep -E "ERROR SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
S="--seqlens 512,1024,4096,16384"
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 100 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run default $round $B/bin/bench --dtypes bf16 --head-dims 128 $S
  run wr $round $B/bin/bench --dtypes bf16 --head-dims 128 $S --kernel $W
  run dqb $round $B/bin/bench --dtypes bf16 --head-dims 128 $S --kernel flash_bwd_wgmma_dqb_bf16_hdim128
done
echo "== done $(date +%T)" | tee -a $out/log.txt
