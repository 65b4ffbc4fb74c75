#!/usr/bin/env bash
# One GPU call: compute-sanitizer (memcheck, racecheck, synccheck, initcheck) on small forward+backward runs
# of the default kernels, then Nsight Compute on single launches of the Hopper kernels.
# Usage (GPU machine, after `cargo xtask bundle`): bash bundle/profile.sh [sanitize|ncu|variance|all]
# `sanitize` covers the head dims in $SANITIZE_DIMS (default "64 128"). Everything logs to $LOG
# (default $OUT/log.txt); `check.sh` runs `sanitize` for the head dims a change touched.
# `variance` (not part of `all`): the long causal forward points whose TFLOP/s moved by up to 20%
# between runs of the same kernel (benches/NOTES.md, gaps after v13): five benches of them with
# the SM clock and power sampled alongside, then ncu on one head_dim 64 causal 16k forward launch.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
what=${1:-all}
log_file=${LOG:-$out/log.txt}
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; ncu --version | tail -1; } | tee -a "$log_file"
log() { echo "== $*" | tee -a "$log_file"; }
demo="$here/bin/demo --batch 1 --heads 2 --iters 1"
case $what in sanitize|all)
  dims=${SANITIZE_DIMS:-64 128}
  for d in $dims; do for c in "" --causal; do for dt in "" --f16; do
    log "memcheck d$d $c $dt"
    timeout 120 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 $demo --seqlen 1000 --head-dim $d $c $dt 2>&1 | tail -4 | tee -a "$log_file"
  done; done; done
  for tool in racecheck synccheck initcheck; do for d in $dims; do
    log "$tool d$d causal"
    timeout 150 compute-sanitizer --tool $tool --error-exitcode 9 $demo --seqlen 300 --head-dim $d --causal 2>&1 | tail -4 | tee -a "$log_file"
  done; done ;;
esac
case $what in variance)
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv -lms 200 > "$out/clocks.csv" &
  sampler=$!
  for round in 1 2 3 4 5; do
    log "variance round $round"
    "$here/bin/bench" --dtypes bf16,f16 --head-dims 64,128 --seqlens 4096,8192,16384 --iters 10 2>&1 | grep -E " true " | tee -a "$log_file"
  done
  kill $sampler
  log "ncu fwd d64 causal 16k"
  timeout 200 ncu --clock-control none --set full --import-source no --kernel-name regex:flash_fwd_wgmma --launch-skip 5 --launch-count 1 \
    -f -o "$out/fwd_d64_c16k" "$here/bin/bench" --dtypes bf16 --head-dims 64 --seqlens 16384 --iters 1 > "$out/fwd_d64_c16k.run.txt" 2>&1
  ncu --import "$out/fwd_d64_c16k.ncu-rep" --page details > "$out/fwd_d64_c16k.details.txt" 2>&1
  ncu --import "$out/fwd_d64_c16k.ncu-rep" --page source --print-source sass --csv 2>/dev/null | gzip > "$out/fwd_d64_c16k.sass.csv.gz"
  rm -f "$out"/*.ncu-rep ;;
esac
case $what in ncu|all)
  bench="$here/bin/bench --dtypes bf16 --iters 1"
  prof() { # name, kernel regex, bench args
    local name=$1 regex=$2; shift 2
    log "ncu $name"
    timeout 200 ncu --clock-control none --set full --import-source no --kernel-name "regex:$regex" --launch-skip 1 --launch-count 1 \
      -f -o "$out/$name" $bench "$@" > "$out/$name.run.txt" 2>&1
    ncu --import "$out/$name.ncu-rep" --page details > "$out/$name.details.txt" 2>&1
    ncu --import "$out/$name.ncu-rep" --page source --print-source sass --csv > "$out/$name.sass.csv" 2>&1
    grep -E "Duration|Registers|Achieved Occupancy|Compute \(SM\) Throughput|Memory Throughput|Issue Slots Busy|No Eligible|Stall" "$out/$name.details.txt" | head -30 | tee -a "$log_file"
  }
  prof bwd_d64_2k flash_bwd_wgmma --head-dims 64 --seqlens 2048
  prof bwd_d128_2k flash_bwd_wgmma --head-dims 128 --seqlens 2048
  prof fwd_d64_512 flash_fwd_wgmma --head-dims 64 --seqlens 512
  prof fwd_d128_512 flash_fwd_wgmma --head-dims 128 --seqlens 512
  gzip -f "$out"/*.sass.csv ;;
esac
