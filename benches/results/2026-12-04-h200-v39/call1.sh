#!/usr/bin/env bash
# v39 call 1 (also measures v38): the `span-masks` build against the default build in one call.
#   1. the whole GPU test suite on the span build (every kernel family, both dtypes, all head dims);
#   2. v38's two head_dim 64 backward candidates forced through the backward property test;
#   3. A/B in two interleaved rounds, bf16, head_dim 64/128/256, causal and not, 512-16k:
#      default build (bin/bench_base) / span build (bin/bench) / v38 `_pl_` and `_plw_`;
#   4. the window and softcap feature rows on both builds;
# (call2.sh: the sanitizers, in a second call: together they would pass the 10-minute limit.)
# Carry: gpucarry/bundle.txz from prepare.sh.
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; cat $B/ptx/flash_attn.features; } | tee $out/log.txt
f() { grep -E "cases passed|test result|FAIL|panick|max error|^test " | tee -a $out/log.txt; }
echo "== full GPU tests, span build $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_TEST_REPORT=$out/tests.jsonl timeout 240 $B/tests/gpu 2>&1 | f
KP=flash_bwd_wgmma_ws_pl_bf16_hdim64; KW=flash_bwd_wgmma_ws_plw_bf16_hdim64
T="gpu::backward_matches_reference --exact"
for K in $KP $KW; do
  echo "== backward tests $K $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$K FLASH_ATTN_BWD_CASES=100 timeout 90 $B/tests/gpu $T 2>&1 | f
done
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  rm -f /tmp/ab.jsonl
  timeout 120 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|fp8)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"build\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
S="--dtypes bf16 --head-dims 64,128,256 --seqlens 512,1024,2048,4096,16384"
S64="--dtypes bf16 --head-dims 64 --seqlens 512,1024,2048,4096,16384"
for round in 1 2; do
  run default $round $B/bin/bench_base $S
  run span $round $B/bin/bench $S
  run span_pl $round $B/bin/bench $S64 --kernel $KP
  run span_plw $round $B/bin/bench $S64 --kernel $KW
done
for b in bench_base bench; do
  echo "== features $b $(date +%T)" | tee -a $out/log.txt
  timeout 120 $B/bin/$b --features causal,window_4096_0,window_1024_1024,softcap_50 --out $out/features-$b.jsonl 2>&1 | tail -12 | tee -a $out/log.txt
done
echo "== done $(date +%T)" | tee -a $out/log.txt
