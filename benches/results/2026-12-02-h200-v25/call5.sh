#!/usr/bin/env bash
# v25 call 5: four max/sum chains in the softmax. Forward property tests, FP8 tests, then A/B (bench_base = the FFMA build, bench = four chains), two rounds.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
xz -dc $R/gpucarry/bench_base.xz > $B/bin/bench_base; chmod +x $B/bin/bench_base
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
echo "== tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FWD_CASES=200 timeout 150 $B/tests/gpu forward_matches 2>&1 | grep -E "cases passed|ratio|test result" | tee -a $out/log.txt
FLASH_ATTN_FP8_CASES=100 timeout 100 $B/tests/gpu fp8_forward 2>&1 | grep -E "cases passed|ratio|test result" | tee -a $out/log.txt
for round in 1 2; do
  for bin in bench_base bench; do
    echo "== round $round $bin $(date +%T)" | tee -a $out/log.txt
    timeout 100 $B/bin/$bin --dtypes fp8 --head-dims 128 --seqlens 1024,4096,16384 --out $out/fp8-$round-$bin.jsonl 2>&1 | grep "^fp8" | tee -a $out/log.txt
    timeout 150 $B/bin/$bin --dtypes bf16 --head-dims 64,128,256 --seqlens 1024,4096,16384 --out $out/bf16-$round-$bin.jsonl 2>&1 | grep "^bf16" | tee -a $out/log.txt
  done
done
echo "== done $(date +%T)" | tee -a $out/log.txt
