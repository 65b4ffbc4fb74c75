#!/usr/bin/env bash
# The opt-in head_dim 256 `wgmma` backward (benches/NOTES.md v19) against the default in one GPU
# call: per dtype, two rounds alternating the default and the opt-in kernel (head_dim 256,
# seqlen 512-16k, causal and not), then a side-by-side table of the backward medians.
# Usage (GPU machine, bundle unpacked): OUT=... bash bundle/check_opt_in.sh
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?set OUT}
mkdir -p "$out"
seqlens=${SEQLENS:-512,1024,2048,4096,16384}
for dt in ${DTYPES:-bf16 f16}; do
  for round in 1 2; do
    echo "== $(date +%T) $dt round $round: default" | tee -a "$out/optin.log"
    timeout 240 "$here/bin/bench" --head-dims 256 --dtypes "$dt" --seqlens "$seqlens" \
      --out "$out/optin_default_${dt}_$round.jsonl" >> "$out/optin.log" 2>&1
    echo "== $(date +%T) $dt round $round: flash_bwd_wgmma_${dt}_hdim256" | tee -a "$out/optin.log"
    timeout 240 "$here/bin/bench" --head-dims 256 --dtypes "$dt" --seqlens "$seqlens" \
      --kernel "flash_bwd_wgmma_${dt}_hdim256" --out "$out/optin_new_${dt}_$round.jsonl" >> "$out/optin.log" 2>&1
  done
done
python3 - "$out" <<'PY' | tee -a "$out/optin.log"
import glob, json, sys
rows = {}
for path in glob.glob(f"{sys.argv[1]}/optin_*.jsonl"):
    kind = "new" if "/optin_new_" in path else "default"
    for line in open(path):
        r = json.loads(line)
        if r.get("direction") == "bwd":
            rows.setdefault((r["dtype"], r["causal"], r["seqlen"]), {}).setdefault(kind, []).append(r["ours_tflops"])
print("| dtype | causal | seqlen | default bwd TFLOP/s | opt-in bwd TFLOP/s | ratio |")
print("|---|---|---|---|---|---|")
for key in sorted(rows):
    d, n = rows[key].get("default", []), rows[key].get("new", [])
    fmt = lambda xs: " / ".join(f"{x:.1f}" for x in xs) or "-"
    ratio = f"{max(n) / max(d):.2f}" if d and n else "-"
    print(f"| {key[0]} | {'yes' if key[1] else 'no'} | {key[2]} | {fmt(d)} | {fmt(n)} | {ratio} |")
PY
