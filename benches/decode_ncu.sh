#!/usr/bin/env bash
# ncu on the decode kernel (seqlen_q 1, contiguous cache, 32/8 heads, head_dim 128, bf16) at the
# decode grid's points that miss their target: DRAM throughput, occupancy, issue activity and
# warp stall reasons, to pick the next decode change from measurements.
here=$(cd "$(dirname "$0")" && pwd); out=${OUT:-$here/out}; mkdir -p "$out"
for point in ${POINTS:-64x32768 8x4096 1x16384}; do
  name=decode_ncu_$point
  # Launch 0 is the untimed first call; skip the warm-ups, profile one.
  timeout 150 ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section LaunchStats --section Occupancy \
    --metrics dram__bytes_read.sum.per_second,smsp__issue_active.avg.pct_of_peak_sustained_active,smsp__inst_executed.sum \
    --kernel-name regex:flash_fwd_decode --launch-skip 3 --launch-count 1 \
    "$here/bin/bench" --serving decode --decode-points "$point" --iters 1 > "$out/$name.txt" 2>&1
  echo "== $name"
  grep -E "Duration|DRAM Throughput|dram__bytes_read|Memory Throughput|Achieved Occ|Theoretical Occ|Registers Per|Grid Size|Block Limit|issue_active|No Eligible|Warp Cycles Per Issued|Stall|Long Scoreboard|Barrier|Dynamic Shared" "$out/$name.txt" | head -40
done
