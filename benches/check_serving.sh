#!/usr/bin/env bash
# One GPU call for issue 10's serving paths: the property tests (the dense ones, packed batches,
# KV caches with split-KV; both kernel families), an A/B of the dense grid against the build
# before the issue (bin/bench_base), the serving rows beside torch SDPA and FlashAttention-4
# (needs /tmp/fa4 staged; see ../shared/anchors/fa4), the continuous-batching run replayed through
# FlashAttention-4, compute-sanitizer (memcheck on both families, racecheck and synccheck on
# the default one) on the serving cases.
# `STEPS` picks: tests portable ab serving continuous ncu sanitize racecheck (default: the first four).
# Usage (GPU machine): [FWD=200 BWD=100 VARLEN=100 KVCACHE=150 APPEND=150] [STEPS="tests ab"] bash bundle/check_serving.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
log() { echo "== $(date -u +%T) $*" | tee -a "$out/log.txt"; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee -a "$out/log.txt"
steps=${STEPS:-tests portable ab serving}
has() { case " $steps " in *" $1 "*) return 0 ;; esac; return 1; }
export FLASH_ATTN_TEST_REPORT="$out/test-report.jsonl"
counts() {
  export FLASH_ATTN_FWD_CASES=$1 FLASH_ATTN_BWD_CASES=$2 FLASH_ATTN_VARLEN_CASES=$3 FLASH_ATTN_KVCACHE_CASES=$4
  export FLASH_ATTN_APPEND_CASES=${5:-0}
}
if has tests; then
  counts ${FWD:-200} ${BWD:-100} ${VARLEN:-100} ${KVCACHE:-150} ${APPEND:-150}
  log "tests: default kernels, $FLASH_ATTN_FWD_CASES fwd / $FLASH_ATTN_BWD_CASES bwd / $FLASH_ATTN_VARLEN_CASES varlen / $FLASH_ATTN_KVCACHE_CASES kvcache / $FLASH_ATTN_APPEND_CASES append cases"
  timeout ${TTIME:-420} "$here/tests/gpu" 2>&1 | tee -a "$out/log.txt"
fi
if has portable; then
  counts 0 0 ${PVARLEN:-50} ${PKVCACHE:-60} ${PAPPEND:-60}
  log "tests: portable kernels, $FLASH_ATTN_VARLEN_CASES varlen / $FLASH_ATTN_KVCACHE_CASES kvcache / $FLASH_ATTN_APPEND_CASES append cases"
  FLASH_ATTN_PORTABLE=1 timeout 240 "$here/tests/gpu" matches_reference 2>&1 | tee -a "$out/log.txt"
fi
if has ab; then
  short=${SHORT:---head-dims 64,128 --dtypes bf16 --seqlens 1024,16384}
  for round in 1 2; do
    log "dense bench base (round $round)"; "$here/bin/bench_base" $short 2>&1 | tee -a "$out/log.txt"
    log "dense bench new (round $round)"; "$here/bin/bench" $short 2>&1 | tee -a "$out/log.txt"
  done
fi
if has serving; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 250 > "$out/clocks_serving.csv" &
  sampler=$!
  log "serving: ours"
  "$here/bin/bench" --serving decode,varlen --out "$out/ours_serving.jsonl" 2>&1 | tee -a "$out/log.txt"
  if [ -f /tmp/fa4/env.sh ]; then source /tmp/fa4/env.sh; else log "no /tmp/fa4/env.sh: FA4 not staged"; fi
  log "serving: torch and FA4"
  timeout ${ATIME:-300} python3 "$here/serving_anchors.py" --out "$out/anchors_serving.jsonl" 2>&1 | tee -a "$out/log.txt"
  kill $sampler
fi
if has continuous; then
  log "continuous batching: ours"
  "$here/bin/bench" --serving continuous --out "$out/ours_continuous.jsonl" 2>&1 | tee -a "$out/log.txt"
  if [ -f /tmp/fa4/env.sh ]; then source /tmp/fa4/env.sh; else log "no /tmp/fa4/env.sh: FA4 not staged"; fi
  log "continuous batching: FA4 replay"
  timeout ${RTIME:-240} python3 "$here/serving_replay.py" --steps "$out/ours_continuous.jsonl" --out "$out/replay_continuous.jsonl" 2>&1 | tee -a "$out/log.txt"
fi
if has ncu; then
  log "ncu: decode kernel"
  bash "$here/decode_ncu.sh" 2>&1 | tee -a "$out/log.txt"
fi
if has racecheck; then
  for tool in racecheck synccheck; do
    counts 0 0 0 ${RKVCACHE:-6} ${RAPPEND:-6}
    log "$tool, default kernels, kvcache and append cases"
    timeout ${RCTIME:-200} compute-sanitizer --tool $tool --error-exitcode 9 \
      "$here/tests/gpu" kvcache 2>&1 | tail -8 | tee -a "$out/log.txt"
  done
fi
if has sanitize; then
  for family in 0 1; do
    counts 0 0 ${SVARLEN:-10} ${SKVCACHE:-12} ${SAPPEND:-12}
    log "memcheck, portable=$family, serving cases"
    FLASH_ATTN_PORTABLE=$family timeout ${STIME:-150} compute-sanitizer --tool memcheck --error-exitcode 9 \
      "$here/tests/gpu" matches_reference 2>&1 | tail -8 | tee -a "$out/log.txt"
  done
fi
