#!/usr/bin/env bash
# Grid after v31–v32 (after `bash fa4kit/a/stage.sh` in the call before, same warm machine): FA4 part b,
# then issue 12's grid (FA4, ours, torch anchors: SDPA flash = FA2, cuDNN) on this build.
set -u
R=$PWD; out=${OUT:?}
[ -d /tmp/bundle ] || (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
bash fa4kit/b/stage.sh 2>&1 | tail -1 | tee $out/log.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a $out/log.txt
echo "== grid $(date +%T)" | tee -a $out/log.txt
OUT=$out/grid SEQLENS=512,1024,2048,4096,16384 FA4_TIME=150 OURS_TIME=120 TORCH_TIME=150 bash benches/grid.sh /tmp/bundle 2>&1 | tail -14 | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
