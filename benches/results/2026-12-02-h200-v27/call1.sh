#!/usr/bin/env bash
# v27 call 1: the warp-specialized backward candidates. Property tests with them forced (dense,
# _seq and _mods twins, both dtypes, head_dim 32/64/96/128), deterministic mode, varlen; the
# sanitizers on them; then A/B against the defaults, two rounds, bf16 and one f16 round.
set -u
R=$PWD; out=${OUT:?}
(cd /tmp && tar xJf $R/gpucarry/bundle.txz)
B=/tmp/bundle
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $out/log.txt
WS=""
for d in 32 64 96 128; do for e in bf16 f16; do for t in "" _seq _mods; do WS="$WS,flash_bwd_wgmma_ws_${e}_hdim${d}$t"; done; done; done
WS=${WS#,}
echo "== tests ws $(date +%T)" | tee -a $out/log.txt
for t in backward deterministic varlen; do
  FLASH_ATTN_KERNELS=$WS FLASH_ATTN_BWD_CASES=120 FLASH_ATTN_VARLEN_CASES=50 timeout 150 $B/tests/gpu $t 2>&1 | grep -E "cases passed|ratio|test result|FAIL|panick|rror" | tee -a $out/log.txt
done
S3=flash_bwd_wgmma_ws_s3_bf16_hdim64,flash_bwd_wgmma_ws_s3_bf16_hdim128
echo "== tests s3 $(date +%T)" | tee -a $out/log.txt
FLASH_ATTN_KERNELS=$S3 FLASH_ATTN_BWD_CASES=60 timeout 100 $B/tests/gpu backward 2>&1 | grep -E "cases passed|ratio|test result|FAIL" | tee -a $out/log.txt
echo "== sanitize $(date +%T)" | tee -a $out/log.txt
for tool in memcheck racecheck synccheck; do
  FLASH_ATTN_KERNELS=$WS FLASH_ATTN_BWD_CASES=4 timeout 120 compute-sanitizer --tool $tool --error-exitcode 9 $B/tests/gpu backward 2>&1 | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" | tail -2 | sed "s/^/$tool: /" | tee -a $out/log.txt
done
for round in 1 2; do
  for k in default ws s3; do
    case $k in default) sel="";; ws) sel="--kernel flash_bwd_wgmma_ws_bf16_hdim64,flash_bwd_wgmma_ws_bf16_hdim128";; s3) sel="--kernel $S3";; esac
    echo "== bench $round $k $(date +%T)" | tee -a $out/log.txt
    timeout 120 $B/bin/bench --dtypes bf16 --head-dims 64,128 --seqlens 512,1024,4096,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^bf16" | tee -a $out/log.txt
    sed "s/^{/{\"round\":$round,\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
  done
done
for k in default ws; do
  case $k in default) sel="";; ws) sel="--kernel flash_bwd_wgmma_ws_f16_hdim64,flash_bwd_wgmma_ws_f16_hdim128,flash_bwd_wgmma_ws_f16_hdim96,flash_bwd_wgmma_ws_f16_hdim32";; esac
  echo "== bench f16 $k $(date +%T)" | tee -a $out/log.txt
  timeout 150 $B/bin/bench --dtypes f16 --head-dims 32,64,96,128 --seqlens 1024,16384 $sel --out /tmp/ab.jsonl 2>&1 | grep "^f16" | tee -a $out/log.txt
  sed "s/^{/{\"round\":1,\"kernel\":\"$k\",/" /tmp/ab.jsonl >> $out/ab.jsonl
done
echo "== done $(date +%T)" | tee -a $out/log.txt
