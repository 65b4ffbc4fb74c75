#!/usr/bin/env bash
# v37 call 6: the head_dim 128 `_mods` kernels without the sequence layouts (`_modsd`, bf16):
# the softcap feature rows against the defaults (`_mods`) in two interleaved rounds, the forward
# and backward property tests with them forced (dense layouts; calls with modifiers only), memcheck.
set -u
R=$PWD; out=${OUT:?}
rm -rf /tmp/bundle; (cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
K=flash_bwd_wgmma_bf16_hdim128_modsd,flash_fwd_wgmma_ws_bf16_hdim128_modsd
f() { grep -E "cases passed|test result|FAIL|panick|max error" | tee -a $out/log.txt; }
for round in 1 2; do
  echo "== features default $round $(date +%T)" | tee -a $out/log.txt
  timeout 100 $B/bin/bench --features softcap_50,dense --out $out/default_$round.jsonl 2>&1 | grep -E "softcap|dense" | tee -a $out/log.txt
  echo "== features modsd $round $(date +%T)" | tee -a $out/log.txt
  timeout 100 $B/bin/bench --features softcap_50,dense --kernel $K --out $out/modsd_$round.jsonl 2>&1 | grep -E "softcap|dense" | tee -a $out/log.txt
done
echo "== tests $K $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=150 FLASH_ATTN_BWD_CASES=80 timeout 150 $B/tests/gpu matches_reference --skip varlen --skip kvcache --skip fp8 2>&1 | f
echo "== memcheck $K $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=6 FLASH_ATTN_BWD_CASES=6 timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 $B/tests/gpu matches_reference --skip varlen --skip kvcache --skip fp8 2>&1 | grep -E "ERROR SUMMARY|cases passed" | tail -3 | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
