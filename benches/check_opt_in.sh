#!/usr/bin/env bash
# A named (e.g. opt-in) kernel against the default in one GPU call: two rounds alternating the
# default and `--kernel $KERNEL` over the same points, then a side-by-side table of the medians
# of one direction. Used for v20 (the head_dim 256 backward: the defaults below, which since that
# flip name the default itself and so measure the run-to-run noise) and meant for
# every "is the candidate faster?" question before a registry flip.
# Usage (GPU machine, bundle unpacked):
#   OUT=... [KERNEL=name[,name]] [HEAD_DIMS=256] [DTYPES="bf16 f16"] [DIRECTION=bwd] \
#     [SEQLENS=512,...] bash bundle/check_opt_in.sh
# `KERNEL` may hold `{dtype}`, replaced by each dtype in turn.
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:?set OUT}
mkdir -p "$out"
seqlens=${SEQLENS:-512,1024,2048,4096,16384}
kernel=${KERNEL:-flash_bwd_wgmma_{dtype}_hdim256}
head_dims=${HEAD_DIMS:-256}
direction=${DIRECTION:-bwd}
for dt in ${DTYPES:-bf16 f16}; do
  k=${kernel//\{dtype\}/$dt}
  for round in 1 2; do
    echo "== $(date +%T) $dt round $round: default" | tee -a "$out/optin.log"
    timeout 240 "$here/bin/bench" --head-dims "$head_dims" --dtypes "$dt" --seqlens "$seqlens" \
      --out "$out/optin_default_${dt}_$round.jsonl" >> "$out/optin.log" 2>&1
    echo "== $(date +%T) $dt round $round: $k" | tee -a "$out/optin.log"
    timeout 240 "$here/bin/bench" --head-dims "$head_dims" --dtypes "$dt" --seqlens "$seqlens" \
      --kernel "$k" --out "$out/optin_new_${dt}_$round.jsonl" >> "$out/optin.log" 2>&1
  done
done
python3 - "$out" "$direction" <<'PY' | tee -a "$out/optin.log"
import glob, json, sys
rows = {}
for path in glob.glob(f"{sys.argv[1]}/optin_*.jsonl"):
    kind = "new" if "/optin_new_" in path else "default"
    for line in open(path):
        r = json.loads(line)
        if r.get("direction") == sys.argv[2]:
            key = (r["dtype"], r["head_dim"], r["causal"], r["seqlen"])
            rows.setdefault(key, {}).setdefault(kind, []).append(r["ours_tflops"])
print(f"| dtype | d | causal | seqlen | default {sys.argv[2]} TFLOP/s | candidate TFLOP/s | ratio |")
print("|---|---|---|---|---|---|---|")
for key in sorted(rows):
    d, n = rows[key].get("default", []), rows[key].get("new", [])
    fmt = lambda xs: " / ".join(f"{x:.1f}" for x in xs) or "-"
    ratio = f"{max(n) / max(d):.2f}" if d and n else "-"
    print(f"| {key[0]} | {key[1]} | {'yes' if key[2] else 'no'} | {key[3]} | {fmt(d)} | {fmt(n)} | {ratio} |")
PY
