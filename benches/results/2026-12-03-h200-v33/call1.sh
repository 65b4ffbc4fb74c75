#!/usr/bin/env bash
# v33 call 1: the 192-key FP8 head_dim 128 candidate (`n192`): its FP8 tests forced, A/B against the
# default in two interleaved rounds, the three sanitizers; the Python FP8 test (head_dim 128 and 256).
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
K=flash_fwd_wgmma_ws_n192_fp8_hdim128
T="gpu::fp8_forward_matches_reference --exact"
f() { grep -E "cases passed|test result|FAIL|panick|fp8 accuracy|max error" | tee -a $out/log.txt; }
echo "== fp8 tests $K $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_KERNELS=$K FLASH_ATTN_FP8_CASES=100 timeout 80 $B/tests/gpu $T 2>&1 | f
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 60 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^fp8" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
S="--seqlens 512,1024,4096,16384"
for round in 1 2; do
  run default $round $B/bin/bench --dtypes fp8 --head-dims 128 $S
  run n192 $round $B/bin/bench --dtypes fp8 --head-dims 128 $S --kernel $K
done
for tool in memcheck racecheck synccheck; do
  echo "== $tool $K $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_KERNELS=$K FLASH_ATTN_FP8_CASES=4 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
done
echo "== python fp8 $(date +%T)" | tee -a $out/log.txt
site=/tmp/flash_attn_rs_site
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target $site $R/target/wheels/flash_attn_rs-*.whl 2>&1 | tail -2
python3 -c "import pytest" 2>/dev/null || python3 -m pip install -q --no-index --find-links $R/gpucarry/pywheels --target /tmp/pytest_site pytest
(cd /tmp && PYTHONPATH=$site:/tmp/pytest_site timeout 120 python3 -m pytest -q -rs -s $R/python/tests/test_gpu.py -k "fp8" 2>&1 | grep -E "passed|failed|skipped|error|flash_attn_rs gpu\]" | tail -8 | tee -a $out/log.txt)
echo "== done $(date +%T)" | tee -a $out/log.txt
