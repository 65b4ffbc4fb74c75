"""Merge our benchmark (bench --out) with the torch anchors of the same run into the committed
JSON Lines record, print the ratio table (Markdown) and draw the plot.

usage: python3 report.py OURS.jsonl TORCH.jsonl --date D --driver V --out results.jsonl --plot plot.png --table table.md
"""
import argparse
import json

import torch


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("torch")
    ap.add_argument("--date", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot")
    ap.add_argument("--table")
    a = ap.parse_args()
    anchors = {}
    memory = None
    for row in load(a.torch):
        if "memory_mib" in row:
            memory = row["memory_mib"]
            continue
        anchors[(row["dtype"], row["head_dim"], row["causal"], row["seqlen"])] = row
    merged = []
    for row in load(a.ours):
        key = (row["dtype"], row["head_dim"], row["causal"], row["seqlen"])
        t = anchors.get(key, {})
        d = row["direction"]
        row["flash_tflops"] = t.get(f"flash_{d}_tflops")
        row["cudnn_tflops"] = t.get(f"cudnn_{d}_tflops")
        row["vs_flash"] = row["ours_tflops"] / row["flash_tflops"] if row["flash_tflops"] else None
        row["vs_cudnn"] = row["ours_tflops"] / row["cudnn_tflops"] if row["cudnn_tflops"] else None
        row.update(driver=a.driver, torch=torch.__version__, date=a.date)
        merged.append(row)
    with open(a.out, "w") as f:
        for row in merged:
            f.write(json.dumps(row) + "\n")
        if memory:
            f.write(json.dumps({"memory_mib_torch_forward_b4_h16_s4096_d128": memory}) + "\n")

    lines = ["| dir | dtype | d | causal | seqlen | ours TFLOP/s | flash (FA2) | cuDNN | ours/flash | ours/cuDNN |", "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x: "–" if x is None else f"{x:.1f}"
    fmtr = lambda x: "–" if x is None else f"{x:.2f}"
    for r in sorted(merged, key=lambda r: (r["direction"] != "fwd", r["dtype"], r["head_dim"], r["causal"], r["seqlen"])):
        lines.append(
            f"| {r['direction']} | {r['dtype']} | {r['head_dim']} | {'yes' if r['causal'] else 'no'} | {r['seqlen']} | "
            f"{fmt(r['ours_tflops'])} | {fmt(r['flash_tflops'])} | {fmt(r['cudnn_tflops'])} | {fmtr(r['vs_flash'])} | {fmtr(r['vs_cudnn'])} |"
        )
    table = "\n".join(lines)
    if memory:
        table += "\n\nExtra device memory of one forward (b=4, h=16, s=4096, d=128, bf16), torch: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in memory.items())
    print(table)
    if a.table:
        with open(a.table, "w") as f:
            f.write(table + "\n")
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        combos = sorted({(r["head_dim"], r["causal"]) for r in merged})
        fig, axes = plt.subplots(2, len(combos), figsize=(4.5 * len(combos), 7), squeeze=False)
        for col, (d, causal) in enumerate(combos):
            for row_i, direction in enumerate(["fwd", "bwd"]):
                ax = axes[row_i][col]
                rows = sorted((r for r in merged if r["head_dim"] == d and r["causal"] == causal and r["direction"] == direction and r["dtype"] == "bf16"), key=lambda r: r["seqlen"])
                xs = [r["seqlen"] for r in rows]
                for label, field, style in [("ours (Rust)", "ours_tflops", "o-"), ("torch flash (FA2)", "flash_tflops", "s--"), ("torch cuDNN", "cudnn_tflops", "^--")]:
                    ys = [r[field] for r in rows]
                    if any(y is not None for y in ys):
                        ax.plot(xs, [y if y is not None else float("nan") for y in ys], style, label=label)
                ax.set_xscale("log", base=2)
                ax.set_title(f"{direction}, d={d}, {'causal' if causal else 'non-causal'}, bf16")
                ax.set_xlabel("seqlen")
                ax.set_ylabel("TFLOP/s")
                ax.set_ylim(bottom=0)
                ax.grid(alpha=0.3)
                if row_i == 0 and col == 0:
                    ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)


if __name__ == "__main__":
    main()
