#!/usr/bin/env bash
# v30b/v30c call 2: the persistent forward in grid order, static for unmasked calls and from a
# tile counter for masked ones: forward tests capped at 3 and 1 blocks and uncapped,
# memcheck, racecheck and synccheck capped, then A/B against the defaults (bf16 two rounds at
# 128 and 256, f16 one round at 128).
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
K=flash_fwd_wgmma_ws_pe_bf16_hdim128,flash_fwd_wgmma_ws_pe_f16_hdim128,flash_fwd_wgmma_ws_pe_bf16_hdim256
f() { grep -E "cases passed|test result|FAIL|panick|rror|max error" | tee -a $out/log.txt; }
for cap in 3 1 ""; do
  echo "== forward tests pe, cap '${cap}' $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_PERSISTENT_BLOCKS=$cap FLASH_ATTN_HEAD_DIMS=128,256 FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=120 timeout 150 $B/tests/gpu forward_matches 2>&1 | f
done
for tool in memcheck racecheck synccheck; do
  echo "== $tool pe cap 3 $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_PERSISTENT_BLOCKS=3 FLASH_ATTN_HEAD_DIMS=128,256 FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=4 timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu forward_matches 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed|test result" | tail -3 | tee -a $out/log.txt
done
S="--seqlens 512,1024,2048,4096,16384"
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 100 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run default $round $B/bin/bench --dtypes bf16 --head-dims 128,256 $S
  run pe $round $B/bin/bench --dtypes bf16 --head-dims 128,256 $S --kernel flash_fwd_wgmma_ws_pe_bf16_hdim128,flash_fwd_wgmma_ws_pe_bf16_hdim256
done
run default 1 $B/bin/bench --dtypes f16 --head-dims 128 $S
run pe 1 $B/bin/bench --dtypes f16 --head-dims 128 $S --kernel flash_fwd_wgmma_ws_pe_f16_hdim128
echo "== done $(date +%T)" | tee -a $out/log.txt
