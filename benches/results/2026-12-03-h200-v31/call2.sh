#!/usr/bin/env bash
# v32 call 2: A/B of the head_dim 64 forward candidates (bf16) against the default one-warpgroup kernel,
# two rounds, interleaved. (The bench also times the backward, which all three arms share.)
set -u
R=$PWD; out=${OUT:?}
[ -d /tmp/bundle ] || (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
S="--seqlens 512,1024,2048,4096,16384"
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 100 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run default $round $B/bin/bench --dtypes bf16 --head-dims 64 $S
  run w2 $round $B/bin/bench --dtypes bf16 --head-dims 64 $S --kernel flash_fwd_wgmma_ws_w2_bf16_hdim64
  run pe40 $round $B/bin/bench --dtypes bf16 --head-dims 64 $S --kernel flash_fwd_wgmma_ws_pe40_bf16_hdim64
done
echo "== done $(date +%T)" | tee -a $out/log.txt
