#!/usr/bin/env bash
# v28 call 2: speed. head_dim 192 backward: the new default against the portable kernel and the
# one-stage candidate (bf16, two rounds; f16 one round); head_dim 256 against the build before
# (bench_base, same call) and the early-load candidate (v28b); the torch anchors (FA2, cuDNN) at head_dim 192; the warp-specialized
# backward's _seq twins at 32/64/96 on the packed-prefill replay against the default.
set -u
R=$PWD; out=${OUT:?}
[ -d /tmp/bundle ] || (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
xz -dc $R/gpucarry/bench_base.xz > /tmp/bench_base && chmod +x /tmp/bench_base
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $out/log.txt
S="--seqlens 512,1024,4096,16384"
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 100 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run default $round $B/bin/bench --dtypes bf16 --head-dims 192 $S
  run portable $round $B/bin/bench --dtypes bf16 --head-dims 192 $S --kernel flash_bwd_bf16_hdim192
  run onestage $round $B/bin/bench --dtypes bf16 --head-dims 192 $S --kernel flash_bwd_wgmma_1s_bf16_hdim192
  run d256_new $round $B/bin/bench --dtypes bf16 --head-dims 256 --seqlens 1024,4096,16384
  run d256_base $round /tmp/bench_base --dtypes bf16 --head-dims 256 --seqlens 1024,4096,16384
  run d256_el $round $B/bin/bench --dtypes bf16 --head-dims 256 --seqlens 1024,4096,16384 --kernel flash_bwd_wgmma_el_bf16_hdim256
done
run default 1 $B/bin/bench --dtypes f16 --head-dims 192 $S
run portable 1 $B/bin/bench --dtypes f16 --head-dims 192 $S --kernel flash_bwd_f16_hdim192
echo "== torch anchors $(date +%T)" | tee -a $out/log.txt
timeout 150 python3 benches/torch_anchors.py --head-dims 192 --dtypes bf16,f16 --seqlens 512,1024,4096,16384 --out $out/torch192.jsonl 2>&1 | tail -3 | tee -a $out/log.txt
for d in 32 64 96; do
  echo "== varlen $d $(date +%T)" | tee -a $out/log.txt
  timeout 60 $B/bin/bench --serving varlen --head-dims $d --out /tmp/v.jsonl 2>&1 | tail -2 | tee -a $out/log.txt
  sed "s/^{/{\"kernel\":\"default\",/" /tmp/v.jsonl >> $out/varlen.jsonl
  timeout 60 $B/bin/bench --serving varlen --head-dims $d --kernel flash_bwd_wgmma_ws_bf16_hdim${d}_seq --out /tmp/v.jsonl 2>&1 | tail -2 | tee -a $out/log.txt
  sed "s/^{/{\"kernel\":\"ws_seq\",/" /tmp/v.jsonl >> $out/varlen.jsonl
done
echo "== done $(date +%T)" | tee -a $out/log.txt
