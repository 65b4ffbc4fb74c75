#!/usr/bin/env bash
# One GPU call for a kernel change: property tests of the backward (defaults, then any variants
# named in $VARIANTS), then a short bench alternating the baseline binary (bin/bench_base, built
# from the previous commit) and this build, twice each, so that drift shows as spread.
# Usage (GPU machine): [VARIANTS=name,...] [TESTS=backward] [SHORT="--head-dims 64,128 ..."] bash bundle/ab.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee -a "$out/log.txt"
log() { echo "== $*" | tee -a "$out/log.txt"; }
tests=${TESTS-backward}
if [ -n "$tests" ]; then
  log "tests ($tests): default kernels"
  FLASH_ATTN_TEST_REPORT="$out/test-report.jsonl" "$here/tests/gpu" $tests 2>&1 | tee -a "$out/log.txt"
  if [ -n "${VARIANTS:-}" ]; then
    log "tests ($tests): $VARIANTS"
    FLASH_ATTN_KERNELS=$VARIANTS FLASH_ATTN_TEST_REPORT="$out/test-report-variants.jsonl" "$here/tests/gpu" $tests 2>&1 | tee -a "$out/log.txt"
  fi
fi
short=${SHORT:---head-dims 64,128 --dtypes bf16 --seqlens 1024,4096,16384}
for round in 1 2; do
  if [ -x "$here/bin/bench_base" ]; then log "bench base (round $round)"; "$here/bin/bench_base" $short 2>&1 | tee -a "$out/log.txt"; fi
  log "bench new (round $round)"; "$here/bin/bench" $short 2>&1 | tee -a "$out/log.txt"
  if [ -n "${VARIANTS:-}" ]; then log "bench $VARIANTS (round $round)"; "$here/bin/bench" $short --kernel "$VARIANTS" 2>&1 | tee -a "$out/log.txt"; fi
done
