#!/usr/bin/env bash
# v22 final: FA4 part b, the grid (FA4, ours, torch anchors), the default GPU test suite, sanitizers.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
bash fa4kit/b/stage.sh 2>&1 | tail -1 | tee $out/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $out/log.txt
echo "== grid $(date +%T)" | tee -a $out/log.txt
OUT=$out/grid SEQLENS=512,1024,2048,4096,16384 FA4_TIME=150 OURS_TIME=120 TORCH_TIME=150 bash benches/grid.sh /tmp/bundle 2>&1 | tail -14 | tee -a $out/log.txt
echo "== tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_TEST_REPORT=$out/test-report.jsonl timeout 200 /tmp/bundle/tests/gpu 2>&1 | grep -E "^test |test result" | tee -a $out/log.txt
echo "== sanitize $(date +%T)" | tee -a $out/log.txt
D="/tmp/bundle/bin/demo --batch 1 --heads 2 --iters 1"
timeout 60 compute-sanitizer --tool synccheck --error-exitcode 9 $D --seqlen 300 --head-dim 256 --causal 2>&1 | tail -1 | tee -a $out/log.txt
timeout 60 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 $D --seqlen 1000 --head-dim 256 --f16 2>&1 | tail -1 | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
