#!/usr/bin/env bash
# One GPU call for issue 9's features: the property tests (every feature drawn, both kernel
# families), an A/B of the dense grid against the build before the features (bin/bench_base),
# and the feature rows beside FlashAttention-4 and torch (needs /tmp/fa4 staged; see
# ../shared/anchors/fa4). `STEPS` picks: tests portable ab features sanitize (default: all but sanitize).
# Usage (GPU machine): [FWD=300 BWD=150] [STEPS="tests ab"] bash bundle/check_features.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
log() { echo "== $(date -u +%T) $*" | tee -a "$out/log.txt"; }
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee -a "$out/log.txt"
steps=${STEPS:-tests portable ab features}
has() { case " $steps " in *" $1 "*) return 0 ;; esac; return 1; }
export FLASH_ATTN_TEST_REPORT="$out/test-report.jsonl"
if has tests; then
  log "tests: default kernels, ${FWD:-300} forward / ${BWD:-150} backward cases"
  FLASH_ATTN_FWD_CASES=${FWD:-300} FLASH_ATTN_BWD_CASES=${BWD:-150} timeout 480 "$here/tests/gpu" 2>&1 | tee -a "$out/log.txt"
fi
if has portable; then
  log "tests: portable kernels (FLASH_ATTN_PORTABLE=1), ${PFWD:-100} / ${PBWD:-50} cases"
  FLASH_ATTN_PORTABLE=1 FLASH_ATTN_FWD_CASES=${PFWD:-100} FLASH_ATTN_BWD_CASES=${PBWD:-50} timeout 300 \
    "$here/tests/gpu" matches_reference 2>&1 | tee -a "$out/log.txt"
fi
if has ab; then
  short=${SHORT:---head-dims 64,128 --dtypes bf16 --seqlens 1024,4096,16384}
  for round in 1 2; do
    log "dense bench base (round $round)"; "$here/bin/bench_base" $short 2>&1 | tee -a "$out/log.txt"
    log "dense bench new (round $round)"; "$here/bin/bench" $short 2>&1 | tee -a "$out/log.txt"
  done
fi
if has features; then
  log "features: ours"
  "$here/bin/bench" --features all --out "$out/ours_features.jsonl" 2>&1 | tee -a "$out/log.txt"
  if [ -f /tmp/fa4/env.sh ]; then
    log "features: FA4 and torch"
    (source /tmp/fa4/env.sh && python3 "$here/feature_anchors.py" --out "$out/fa4_features.jsonl" --seqlens 4096,16384) 2>&1 | tee -a "$out/log.txt"
  fi
  python3 "$here/feature_report.py" "$out/ours_features.jsonl" "$out/fa4_features.jsonl" --date "$(date -u +%F)" \
    --driver "$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)" \
    --out "$out/features.jsonl" --table "$out/features.md" 2>&1 | tee -a "$out/log.txt"
  python3 "$here/feature_plot.py" "$out/features.jsonl" --out "$out/features.png" 2>&1 | tee -a "$out/log.txt"
fi
if has sanitize; then
  # The property tests on small random cases under the sanitizers: every feature and both
  # kernel families, dense and `_mods`.
  # racecheck is the slow one: fewer cases.
  for family in 0 1; do for tool in memcheck racecheck; do
    n=$([ $tool = memcheck ] && echo "${SFWD:-24} ${SBWD:-12}" || echo "${RFWD:-8} ${RBWD:-4}")
    log "$tool, portable=$family, cases $n"
    FLASH_ATTN_PORTABLE=$family FLASH_ATTN_FWD_CASES=${n% *} FLASH_ATTN_BWD_CASES=${n#* } timeout ${STIME:-150} \
      compute-sanitizer --tool $tool --error-exitcode 9 "$here/tests/gpu" matches_reference 2>&1 | tail -8 | tee -a "$out/log.txt"
  done; done
fi
