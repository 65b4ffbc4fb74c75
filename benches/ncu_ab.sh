#!/usr/bin/env bash
# ncu on the forward, previous build (bench_base) against this one: executed instructions, issue
# activity and stall reasons, to explain the v14a speed-up.
here=$(cd "$(dirname "$0")" && pwd); out=${OUT:-$here/out}; mkdir -p "$out"
for bin in ${BINS:-bench_base bench}; do
  for point in "64 16384 true" "128 16384 false" "128 4096 true"; do
    set -- $point
    name=${bin}_d$1_s$2_c$3
    timeout 150 ncu --clock-control none --section SpeedOfLight --section InstructionStats --section WarpStateStats --section LaunchStats --section Occupancy \
      --metrics smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active \
      --kernel-name regex:flash_fwd_wgmma --launch-skip $([ $3 = true ] && echo 5 || echo 1) --launch-count 1 \
      $here/bin/$bin --dtypes bf16 --head-dims $1 --seqlens $2 --iters 1 > $out/$name.txt 2>&1
    echo "== $name"; grep -E "Duration|SM Frequency|inst_executed.sum|issue_active|gmma_cycles|Executed Instructions |Issue Slots Busy|Registers Per|Achieved Occ|No Eligible|Warp Cycles Per Issued" $out/$name.txt
  done
done
