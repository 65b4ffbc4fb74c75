#!/usr/bin/env bash
# One GPU call: property tests of the default kernels and of the pipelined (`_p`) variants,
# a short default-vs-variant bench, then the full grid (with whichever is faster per direction
# and head dim, among variants that passed their tests) beside the torch anchors.
# Usage (GPU machine, after `cargo xtask bundle`): bash bundle/compare_variants.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee "$out/log.txt"
fwd_p=flash_fwd_wgmma_bf16_hdim64_p,flash_fwd_wgmma_f16_hdim64_p,flash_fwd_wgmma_bf16_hdim128_p,flash_fwd_wgmma_f16_hdim128_p
bwd_p=flash_bwd_wgmma_bf16_hdim64_p,flash_bwd_wgmma_f16_hdim64_p,flash_bwd_wgmma_bf16_hdim128_p,flash_bwd_wgmma_f16_hdim128_p
log() { echo "== $*" | tee -a "$out/log.txt"; }
log "tests: default kernels"
FLASH_ATTN_TEST_REPORT="$out/test-report.jsonl" "$here/tests/gpu" 2>&1 | tee -a "$out/log.txt"
log "tests: pipelined forward ($fwd_p)"
FLASH_ATTN_KERNELS=$fwd_p FLASH_ATTN_TEST_REPORT="$out/test-report-fwd-p.jsonl" "$here/tests/gpu" forward 2>&1 | tee -a "$out/log.txt"
fwd_ok=${PIPESTATUS[0]}
log "tests: pipelined backward ($bwd_p)"
FLASH_ATTN_KERNELS=$bwd_p FLASH_ATTN_TEST_REPORT="$out/test-report-bwd-p.jsonl" "$here/tests/gpu" backward 2>&1 | tee -a "$out/log.txt"
bwd_ok=${PIPESTATUS[0]}
candidates=""
[ "$fwd_ok" -eq 0 ] && candidates="$fwd_p"
[ "$bwd_ok" -eq 0 ] && candidates="${candidates:+$candidates,}$bwd_p"
short="--head-dims 64,128 --dtypes bf16 --seqlens 512,1024,4096,16384"
log "bench: default kernels"; "$here/bin/bench" $short 2>&1 | tee "$out/short-default.txt" | tee -a "$out/log.txt"
log "bench: pipelined variants"; "$here/bin/bench" $short --kernel "$fwd_p,$bwd_p" 2>&1 | tee "$out/short-p.txt" | tee -a "$out/log.txt"
for k in flash_fwd_wgmma_bf16_hdim128_p2x64 flash_fwd_wgmma_bf16_hdim128_p1x64; do
  log "bench: $k"; "$here/bin/bench" --head-dims 128 --dtypes bf16 --seqlens 512,1024,4096,16384 --kernel $k 2>&1 | tee -a "$out/log.txt"
done
chosen=$(python3 "$here/choose_variants.py" "$out/short-default.txt" "$out/short-p.txt" "${candidates:-none}" 2>>"$out/log.txt")
log "full grid with: ${chosen:-default kernels}"
"$here/bin/bench" --out "$out/ours.jsonl" ${chosen:+--kernel $chosen} 2>&1 | tee -a "$out/log.txt"
python3 "$here/torch_anchors.py" --out "$out/torch.jsonl" 2>&1 | tee -a "$out/log.txt"
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
python3 "$here/report.py" "$out/ours.jsonl" "$out/torch.jsonl" --date "$(date -u +%F)" --driver "$driver" \
  --out "$out/results.jsonl" --plot "$out/plot.png" --table "$out/table.md" 2>&1 | tee -a "$out/log.txt"
echo "chosen: ${chosen:-default}" | tee -a "$out/log.txt"
