#!/usr/bin/env bash
# v25 call 3: ncu of the FP8 forward (and the bf16 ws forward) at 16k: pipe utilizations and stalls.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
M=smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_fma.sum,sm__inst_executed_pipe_alu.sum,sm__inst_executed_pipe_xu.sum,sm__inst_executed_pipe_fp16.sum,sm__pipe_fp16_cycles_active.avg.pct_of_peak_sustained_active
for run in "fp8 flash_fwd_wgmma_ws_fp8" "bf16 flash_fwd_wgmma_ws_bf16"; do
  set -- $run
  timeout 200 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section InstructionStats --metrics $M \
    --kernel-name regex:$2 --launch-skip 1 --launch-count 1 $B/bin/bench --dtypes $1 --head-dims 128 --seqlens 16384 --iters 1 > $out/ncu-$1.txt 2>&1
  echo "== $1" | tee -a $out/log.txt
  grep -E "Duration|SM Frequency|inst_executed|issue_active|gmma_cycles|pipe_|Stall|Warp Cycles Per Issued|No Eligible|Issued Warp" $out/ncu-$1.txt | tee -a $out/log.txt
done
