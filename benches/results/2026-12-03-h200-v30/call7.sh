#!/usr/bin/env bash
# v30 call 7: ncu, the default head_dim 128 forward against the persistent pe40 at 16k non-causal
# (bf16): executed instructions, issue activity, tensor-pipe activity, stall reasons.
set -u
R=$PWD; out=${OUT:?}
[ -d /tmp/bundle ] || (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
for k in default flash_fwd_wgmma_ws_pe40_bf16_hdim128; do
  extra=""; [ $k = default ] || extra="--kernel $k"
  timeout 120 ncu --clock-control none --section SpeedOfLight --section InstructionStats --section WarpStateStats --section LaunchStats \
    --metrics smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__inst_executed_op_branch.sum \
    --kernel-name regex:flash_fwd_wgmma --launch-skip 1 --launch-count 1 \
    $B/bin/bench --dtypes bf16 --head-dims 128 --seqlens 16384 --iters 1 $extra > $out/ncu_$k.txt 2>&1
  echo "== $k"; grep -E "flash_fwd|Duration|SM Frequency|inst_executed|issue_active|gmma_cycles|Executed Instructions |Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Stall" $out/ncu_$k.txt | head -30 | tee -a $out/log.txt
done
