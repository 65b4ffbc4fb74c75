#!/usr/bin/env bash
# v38 call 1: the head_dim 64 backward candidates (score GEMMs issued together, `_pl_`; and dV/dK
# waited after the dQ issue, `_plw_`): property tests forced, A/B against the default in two
# interleaved rounds (bf16, causal and not, 512-16k), the three sanitizers on each.
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
KP=flash_bwd_wgmma_ws_pl_bf16_hdim64
KW=flash_bwd_wgmma_ws_plw_bf16_hdim64
T="gpu::backward_matches_reference --exact"
f() { grep -E "cases passed|test result|FAIL|panick|max error" | tee -a $out/log.txt; }
for K in $KP $KW; do
  echo "== backward tests $K $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$K FLASH_ATTN_BWD_CASES=100 timeout 90 $B/tests/gpu $T 2>&1 | f
done
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 90 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|fp8)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
S="--dtypes bf16 --head-dims 64 --seqlens 512,1024,2048,4096,8192,16384"
for round in 1 2; do
  run default $round $B/bin/bench $S
  run pl $round $B/bin/bench $S --kernel $KP
  run plw $round $B/bin/bench $S --kernel $KW
done
for tool in memcheck racecheck synccheck; do
  for K in $KP $KW; do
    echo "== $tool $K $(date +%T)" | tee -a $out/log.txt
    FLASH_ATTN_KERNELS=$K FLASH_ATTN_BWD_CASES=4 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
  done
done
echo "== done $(date +%T)" | tee -a $out/log.txt
