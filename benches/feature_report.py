"""Issue 9's feature table: joins `bench --features` (ours) with `feature_anchors.py` (FA4, torch
SDPA flash = FA2 and cuDNN) on (feature, seqlen), writes the merged JSON Lines record (with card,
driver, torch and FA4 versions, date) and a Markdown table; TFLOP/s count the visible area.
The GQA rows also get their ratio per FLOP to the dense 32/32-head point at the same seqlen.

usage: python3 feature_report.py OURS.jsonl ANCHORS.jsonl --date D --driver V --out features.jsonl --table features.md
"""
import argparse
import json
import os

IMPLS = [("ours", ""), ("fa4", "fa4_"), ("cudnn", "cudnn_"), ("flash", "flash_")]


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tflops(row, impl, direction):
    prefix = dict(IMPLS)[impl]
    return row.get(f"{prefix}{direction}_tflops")


def ratio(a, b):
    return a / b if a is not None and b else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("anchors")
    ap.add_argument("--date", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--table")
    a = ap.parse_args()
    header, sanity, anchors = {}, [], {}
    for row in load(a.anchors):
        if "card" in row and "feature" not in row:
            header = row
        elif "sanity" in row:
            sanity.append(row)
        else:
            anchors[(row["feature"], row["seqlen"])] = row
    merged = []
    # Without our rows (a failed bench) the anchors' rows still make the table.
    for row in load(a.ours) or [dict(r, error="no row from bench") for r in anchors.values()]:
        t = anchors.get((row["feature"], row["seqlen"]), {})
        for key, value in t.items():
            if key.startswith(("fa4_", "flash_", "cudnn_")):
                row[key] = value
        for direction in ("fwd", "bwd"):
            row[f"vs_fa4_{direction}"] = ratio(tflops(row, "ours", direction), tflops(row, "fa4", direction))
        row.update(driver=a.driver, torch=header.get("torch"), fa4=header.get("fa4"), date=a.date)
        merged.append(row)
    by_key = {(r["feature"], r["seqlen"]): r for r in merged}
    for row in merged:  # GQA over the dense 32/32 point: the ratio per FLOP
        dense = by_key.get(("dense_h32", row["seqlen"]))
        if row["feature"] == "gqa" and dense:
            for impl, _ in IMPLS:
                for direction in ("fwd", "bwd"):
                    row[f"gqa_per_flop_{impl}_{direction}"] = ratio(tflops(row, impl, direction), tflops(dense, impl, direction))
    with open(a.out, "w") as f:
        for row in merged:
            f.write(json.dumps(row) + "\n")
        for row in sanity:
            f.write(json.dumps(row) + "\n")

    fmt = lambda x: "–" if x is None else f"{x:.1f}"
    fmtr = lambda x: "–" if x is None else f"{x:.2f}"
    card = merged[0].get("card") if merged else header.get("card")
    lines = [
        f"{card}, driver {a.driver}, torch {header.get('torch')}, FA4 {header.get('fa4')}, {a.date}; head_dim 128, bf16, "
        "16k tokens per batch; TFLOP/s on the visible area (backward 2.5x forward), fwd / bwd.",
        "",
        "| feature | seqlen | b | h/h_k | ours | FA4 | cuDNN | FA2 (torch flash) | ours/FA4 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    pair = lambda r, impl: f"{fmt(tflops(r, impl, 'fwd'))} / {fmt(tflops(r, impl, 'bwd'))}"
    for r in merged:
        ours = pair(r, "ours") if "error" not in r else "error"
        lines.append(
            f"| {r['feature']} | {r['seqlen']} | {r['batch']} | {r['heads']}/{r['heads_k']} | {ours} | {pair(r, 'fa4')} | "
            f"{pair(r, 'cudnn')} | {pair(r, 'flash')} | {fmtr(r['vs_fa4_fwd'])} / {fmtr(r['vs_fa4_bwd'])} |"
        )
    gqa = [r for r in merged if "gqa_per_flop_ours_fwd" in r]
    if gqa:
        lines += ["", "GQA (32 query heads over 8 KV heads) TFLOP/s over the dense 32/32-head point's, fwd / bwd:", ""]
        lines += ["| seqlen | ours | FA4 | cuDNN | FA2 |", "|---|---|---|---|---|"]
        for r in gqa:
            cells = [f"{fmtr(r[f'gqa_per_flop_{i}_fwd'])} / {fmtr(r[f'gqa_per_flop_{i}_bwd'])}" for i, _ in IMPLS]
            lines.append(f"| {r['seqlen']} | " + " | ".join(cells) + " |")
    errors = [f"{r['feature']} s={r['seqlen']}: {k} {r[k]}" for r in merged for k in r if k == "error" or k.endswith("_error")]
    if sanity:
        lines += ["", "FA4 sanity check vs float32 (b=1, s=4608, 4 heads): " + ", ".join(
            f"{s['sanity']} fwd {s.get('fa4_fwd_max_abs_err', float('nan')):.3g} bwd(rel) {s.get('fa4_bwd_max_rel_err', float('nan')):.3g}"
            + ("" if s.get("ok") else f" FAILED {s.get('error', '')}") for s in sanity)]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {e}" for e in errors]
    table = "\n".join(lines)
    print(table)
    if a.table:
        with open(a.table, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
