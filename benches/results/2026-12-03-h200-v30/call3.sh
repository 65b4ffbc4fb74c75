#!/usr/bin/env bash
# v30c call 3 (the build after the register-split fix): forward tests of the persistent
# candidates capped at 3 blocks (static schedule unmasked, the tile counter masked),
# then A/B against the defaults (bf16, 128 and 256 once, 128 a second time), racecheck last. Short timeouts:
# call 2's build hung in `setmaxnreg.inc` (the (32, 240) split).
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
K=flash_fwd_wgmma_ws_pe_bf16_hdim128,flash_fwd_wgmma_ws_pe_f16_hdim128,flash_fwd_wgmma_ws_pe_bf16_hdim256
T="gpu::forward_matches_reference --exact"
echo "== forward tests pe, cap 3 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_PERSISTENT_BLOCKS=3 FLASH_ATTN_HEAD_DIMS=128,256 FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=120 timeout 45 $B/tests/gpu $T 2>&1 | grep -E "cases passed|test result|FAIL|panick|rror|max error" | tee -a $out/log.txt
[ "${PIPESTATUS[0]}" = 0 ] || { echo "== tests failed or hung: stop" | tee -a $out/log.txt; exit 1; }
S="--seqlens 512,1024,2048,4096,16384"
run() { # tag round cmd...
  local tag=$1 round=$2; shift 2
  echo "== bench $tag $round $(date +%T)" | tee -a $out/log.txt
  timeout 60 "$@" --out /tmp/ab.jsonl 2>&1 | grep -E "^(bf16|f16)" | tee -a $out/log.txt
  sed "s/^{/{\"round\":$round,\"kernel\":\"$tag\",/" /tmp/ab.jsonl >> $out/ab.jsonl
}
run default 1 $B/bin/bench --dtypes bf16 --head-dims 128,256 $S
run pe 1 $B/bin/bench --dtypes bf16 --head-dims 128,256 $S --kernel flash_fwd_wgmma_ws_pe_bf16_hdim128,flash_fwd_wgmma_ws_pe_bf16_hdim256
run default 2 $B/bin/bench --dtypes bf16 --head-dims 128 $S
run pe 2 $B/bin/bench --dtypes bf16 --head-dims 128 $S --kernel flash_fwd_wgmma_ws_pe_bf16_hdim128
echo "== racecheck pe cap 3 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_PERSISTENT_BLOCKS=3 FLASH_ATTN_HEAD_DIMS=128,256 FLASH_ATTN_KERNELS=$K FLASH_ATTN_FWD_CASES=4 timeout 60 compute-sanitizer --tool racecheck --error-exitcode 9 $B/tests/gpu $T 2>&1 | grep -E "RACECHECK SUMMARY|cases passed|test result" | tail -3 | tee -a $out/log.txt
echo "== done $(date +%T)" | tee -a $out/log.txt
