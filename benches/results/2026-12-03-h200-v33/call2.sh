#!/usr/bin/env bash
# v33 call 2: Nsight Compute on the FP8 head_dim 128 default at 16k (one launch): stall reasons per
# warp state and per SASS instruction (source counters), to see where the consumers wait.
set -u
R=$PWD; out=${OUT:?}
[ -d /tmp/bundle ] || (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
for run in "fp8 flash_fwd_wgmma_ws_fp8_hdim128 fp8" "n192 flash_fwd_wgmma_ws_n192_fp8_hdim128 fp8"; do
  set -- $run
  sel=""; [ $1 = n192 ] && sel="--kernel $2"
  timeout 200 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section SourceCounters \
    --kernel-name regex:$2 --launch-skip 1 --launch-count 1 -f -o /tmp/$1 $B/bin/bench --dtypes $3 --head-dims 128 --seqlens 16384 --iters 1 $sel > $out/$1.run.txt 2>&1
  ncu --import /tmp/$1.ncu-rep --page details > $out/$1.details.txt 2>&1
  ncu --import /tmp/$1.ncu-rep --page source --print-source sass --csv 2>/dev/null | gzip > $out/$1.sass.csv.gz
  echo "== $1" | tee -a $out/log.txt
  grep -E "Duration|SM Frequency|Stall|Warp Cycles Per Issued|No Eligible|Issued Warp|Active Warps|Eligible Warps" $out/$1.details.txt | head -40 | tee -a $out/log.txt
done
echo "== done $(date +%T)" | tee -a $out/log.txt
