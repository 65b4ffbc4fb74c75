#!/usr/bin/env bash
# Final call of session 10 on the shipped build: every GPU test once, 100 FP8 cases on the defaults,
# compute-sanitizer (memcheck, racecheck, synccheck) on the demo's forward and backward at head_dim
# 128 (v34 changed every forward's softmax) and on the FP8 defaults, the demo, the Python
# package's FP8 and forward GPU tests. v35b: the FP8 head_dim 128 default is now `rs` with the row-sum column promoted
# to f32 every tile; its accuracy test and an A/B against the v24 kernel forced (`fp8`), which
# also runs its FP8 tests (the fallback, should `rs` fail).
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
f() { grep -E "cases passed|test result|FAIL|panick|rror|ignored|ok$|fp8 accuracy|max error" | tee -a $out/log.txt; }
echo "== every GPU test $(date +%T)" | tee -a $out/log.txt
timeout 170 $B/tests/gpu 2>&1 | f
T="gpu::fp8_forward_matches_reference --exact"
echo "== fp8 tests $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_FP8_CASES=100 timeout 90 $B/tests/gpu $T 2>&1 | f
OLD=flash_fwd_wgmma_ws_fp8_hdim128
echo "== fp8 tests $OLD forced $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_KERNELS=$OLD FLASH_ATTN_FP8_CASES=60 timeout 60 $B/tests/gpu $T 2>&1 | f
echo "== fp8 accuracy $(date +%T)" | tee -a $out/log.txt
timeout 60 $B/tests/gpu gpu::fp8_accuracy_beside_bf16 --exact --nocapture 2>&1 | grep -E "fp8 accuracy|test result" | tee -a $out/log.txt
for tool in memcheck racecheck synccheck; do
  echo "== $tool fp8 $(date +%T)" | tee -a $out/log.txt
  FLASH_ATTN_FP8_CASES=6 timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|cases passed" | tail -2 | tee -a $out/log.txt
  for d in 128; do
    echo "== $tool demo d$d causal $(date +%T)" | tee -a $out/log.txt
    timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 $B/bin/demo --batch 1 --heads 2 --iters 1 --seqlen 300 --head-dim $d --causal 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY" | tail -1 | tee -a $out/log.txt
  done
done
echo "== demo $(date +%T)" | tee -a $out/log.txt
timeout 40 $B/bin/demo 2>&1 | tail -6 | tee -a $out/log.txt
echo "== python fp8 $(date +%T)" | tee -a $out/log.txt
site=/tmp/flash_attn_rs_site
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target $site $R/target/wheels/flash_attn_rs-*.whl 2>&1 | tail -2
python3 -c "import pytest" 2>/dev/null || python3 -m pip install -q --no-index --find-links $R/gpucarry/pywheels --target /tmp/pytest_site pytest
(cd /tmp && PYTHONPATH=$site:/tmp/pytest_site timeout 120 python3 -m pytest -q -rs -s $R/python/tests/test_gpu.py -k "fp8 or forward" 2>&1 | grep -E "passed|failed|skipped|error|flash_attn_rs gpu\]" | tail -12 | tee -a $out/log.txt)
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 60 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^fp8" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
for round in 1 2; do
  run default $round $B/bin/bench --dtypes fp8 --head-dims 128 --seqlens 1024,4096,16384
  run fp8 $round $B/bin/bench --dtypes fp8 --head-dims 128 --seqlens 1024,4096,16384 --kernel $OLD
  run n192rs $round $B/bin/bench --dtypes fp8 --head-dims 128 --seqlens 1024,4096,16384 --kernel flash_fwd_wgmma_ws_n192rs_fp8_hdim128
done
echo "== done $(date +%T)" | tee -a $out/log.txt
