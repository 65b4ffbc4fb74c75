#!/usr/bin/env bash
# v27 final build, the Python package: its pytest suite on the GPU (wheel of the final tree).
set -u
out=${OUT:?}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
OUT=$out/py STEPS="tests" TTIME=170 FLASH_ATTN_PY_CASES=30 bash python/scripts/gpu_check.sh > $out/py-full.txt 2>&1
grep -E "passed|failed|skipped|error|flash_attn_rs gpu\]" $out/py-full.txt | tail -25 | tee -a $out/log.txt
gzip $out/py-full.txt
