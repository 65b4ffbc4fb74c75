#!/usr/bin/env bash
# v27 final build (the warp-specialized backward also the dense default at head_dim 96): the
# whole Rust GPU suite on the defaults, sanitizers on the demo at head_dim 96 and 64, and one
# bench row set for the new default beside the replaced kernel.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
echo "== suite $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FWD_CASES=150 FLASH_ATTN_BWD_CASES=150 FLASH_ATTN_VARLEN_CASES=60 FLASH_ATTN_KVCACHE_CASES=100 FLASH_ATTN_APPEND_CASES=150 FLASH_ATTN_FP8_CASES=80 \
  FLASH_ATTN_TEST_REPORT=$out/test-report.jsonl timeout 200 $B/tests/gpu 2>&1 | grep -E "^test |cases passed|test result|fp8 accuracy|skipped" | tee -a $out/log.txt
echo "== sanitize $(date +%T)" | tee -a $out/log.txt
D="$B/bin/demo --batch 1 --heads 2 --iters 1"
for d in 96 64; do
  timeout 60 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 $D --seqlen 700 --head-dim $d 2>&1 | tail -1 | sed "s/^/demo d$d memcheck: /" | tee -a $out/log.txt
  timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 $D --seqlen 300 --head-dim $d --causal 2>&1 | tail -1 | sed "s/^/demo d$d racecheck: /" | tee -a $out/log.txt
  timeout 60 compute-sanitizer --tool synccheck --error-exitcode 9 $D --seqlen 300 --head-dim $d --f16 2>&1 | tail -1 | sed "s/^/demo d$d synccheck: /" | tee -a $out/log.txt
done
for k in default old; do
  if [ $k = default ]; then sel=""; else sel="--kernel flash_bwd_wgmma_bf16_hdim96"; fi
  echo "== bench $k $(date +%T)" | tee -a $out/log.txt
  timeout 60 $B/bin/bench --dtypes bf16 --head-dims 96 --seqlens 1024,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^bf16" | tee -a $out/log.txt
  sed "s/^{/{\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
done
echo "== done $(date +%T)" | tee -a $out/log.txt
