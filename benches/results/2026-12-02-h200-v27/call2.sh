#!/usr/bin/env bash
# v27 call 2: the flipped defaults (warp-specialized dense backward at head_dim 32/64): backward,
# deterministic and varlen property tests on the defaults, the A/B again on the new bundle
# (head_dim 32/64, the old kernels by name), then ncu of the head_dim 128 backward (the default
# and the warp-specialized candidate) and the head_dim 64 one at 16k: pipes, shared memory, stalls.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
echo "== tests $(date +%T)" | tee -a $out/log.txt
for t in backward deterministic varlen; do
  FLASH_ATTN_BWD_CASES=120 FLASH_ATTN_VARLEN_CASES=50 timeout 150 $B/tests/gpu $t 2>&1 | grep -E "cases passed|test result|FAIL|panick|rror" | tee -a $out/log.txt
done
OLD=flash_bwd_wgmma_bf16_hdim64,flash_bwd_wgmma_bf16_hdim32
for round in 1 2; do
  for k in default old; do
    if [ $k = default ]; then sel=""; else sel="--kernel $OLD"; fi
    echo "== bench $round $k $(date +%T)" | tee -a $out/log.txt
    timeout 120 $B/bin/bench --dtypes bf16 --head-dims 32,64 --seqlens 512,2048,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^bf16" | tee -a $out/log.txt
    sed "s/^{/{\"round\":$round,\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
  done
done
M=smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_reads.avg.pct_of_peak_sustained_elapsed,l1tex__data_bank_writes.avg.pct_of_peak_sustained_elapsed,smsp__inst_executed.sum
for run in "128 flash_bwd_wgmma_bf16_hdim128 -" "128 flash_bwd_wgmma_ws_bf16_hdim128 flash_bwd_wgmma_ws_bf16_hdim128" "64 flash_bwd_wgmma_ws_bf16_hdim64 -"; do
  set -- $run
  if [ $3 = - ]; then sel=""; else sel="--kernel $3"; fi
  timeout 200 ncu --clock-control none --section SpeedOfLight --section WarpStateStats --section MemoryWorkloadAnalysis_Tables --metrics $M \
    --kernel-name regex:"^$2\$" --launch-skip 1 --launch-count 1 $B/bin/bench --dtypes bf16 --head-dims $1 --seqlens 16384 --iters 1 $sel > $out/ncu-$2.txt 2>&1
  echo "== ncu $2" | tee -a $out/log.txt
  grep -E "Duration|SM Frequency|inst_executed|issue_active|gmma_cycles|pipe_|bank_|wavefronts|Stall|Warp Cycles Per Issued|No Eligible|Shared|Bank" $out/ncu-$2.txt | head -40 | tee -a $out/log.txt
  gzip $out/ncu-$2.txt
done
echo "== done $(date +%T)" | tee -a $out/log.txt
