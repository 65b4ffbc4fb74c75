#!/usr/bin/env bash
# v29 call 1: the deferred dQ GEMM candidates. Property tests with each forced (backward,
# deterministic; random cases at head_dim 128 or 96), compute-sanitizer memcheck, racecheck,
# synccheck on them; then speed: head_dim 128 default vs the three candidates (dq, dqb: staged before dPᵀ, ws_dq) (bf16, two rounds; f16
# one), head_dim 96 default (warp-specialized) vs its candidate, and the torch anchors at 128.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
t128="flash_bwd_wgmma_dqb_bf16_hdim128,flash_bwd_wgmma_dq_bf16_hdim128,flash_bwd_wgmma_dq_f16_hdim128,flash_bwd_wgmma_ws_dq_bf16_hdim128"
for d in 128 96; do
  if [ $d = 128 ]; then K=$t128; else K=flash_bwd_wgmma_ws_dq_bf16_hdim96; fi
  for t in backward deterministic; do
    echo "== tests $d $t $(date +%T)" | tee -a $out/log.txt
    FLASH_ATTN_HEAD_DIMS=$d FLASH_ATTN_KERNELS=$K FLASH_ATTN_BWD_CASES=60 timeout 120 $B/tests/gpu $t 2>&1 | grep -E "cases passed|ratio|test result|FAIL|panick|rror" | tee -a $out/log.txt
  done
done
for tool in memcheck racecheck synccheck; do
  echo "== sanitize $tool $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_HEAD_DIMS=128 FLASH_ATTN_KERNELS=$t128 FLASH_ATTN_BWD_CASES=6 timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu backward 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|cases passed" | tail -3 | sed "s/^/$tool: /" | tee -a $out/log.txt
done
S="--seqlens 512,1024,4096,16384"
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 100 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run default $round $B/bin/bench --dtypes bf16 --head-dims 128 $S
  run dq $round $B/bin/bench --dtypes bf16 --head-dims 128 $S --kernel flash_bwd_wgmma_dq_bf16_hdim128
  run dqb $round $B/bin/bench --dtypes bf16 --head-dims 128 $S --kernel flash_bwd_wgmma_dqb_bf16_hdim128
  run ws_dq $round $B/bin/bench --dtypes bf16 --head-dims 128 $S --kernel flash_bwd_wgmma_ws_dq_bf16_hdim128
  run d96_default $round $B/bin/bench --dtypes bf16 --head-dims 96 $S
  run d96_ws_dq $round $B/bin/bench --dtypes bf16 --head-dims 96 $S --kernel flash_bwd_wgmma_ws_dq_bf16_hdim96
done
run default 1 $B/bin/bench --dtypes f16 --head-dims 128 $S
run dq 1 $B/bin/bench --dtypes f16 --head-dims 128 $S --kernel flash_bwd_wgmma_dq_f16_hdim128
echo "== torch anchors $(date +%T)" | tee -a $out/log.txt
timeout 150 python3 benches/torch_anchors.py --head-dims 128 --dtypes bf16 --seqlens 512,1024,4096,16384 --out $out/torch128.jsonl 2>&1 | tail -3 | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
