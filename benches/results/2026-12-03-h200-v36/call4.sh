#!/usr/bin/env bash
# v36 call 4 (right after call 3 on the same warm machine): FA4 part a2 (joins a1), part b, then issue 12's grid (FA4,
# ours, torch anchors: SDPA flash = FA2, cuDNN) on this build, whose defaults are the shipped
# kernels (v32's head_dim 64 rule and v34's softmax included, neither in the previous grid).
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
bash fa4kit/a2/stage.sh 2>&1 | tail -1 | tee $out/log.txt
bash /tmp/fa4kit_b/stage.sh 2>&1 | tail -1 | tee -a $out/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $out/log.txt
echo "== grid $(date +%T)" | tee -a $out/log.txt
OUT=$out/grid SEQLENS=512,1024,2048,4096,16384 FA4_TIME=150 OURS_TIME=120 TORCH_TIME=150 bash benches/grid.sh /tmp/bundle 2>&1 | tail -14 | tee -a $out/log.txt
rm -f $out/grid/torch.jsonl
echo "== done $(date +%T)" | tee -a $out/log.txt
