"""Bar chart of the feature rows (feature_report.py's joined JSON Lines): ours beside
FlashAttention-4, cuDNN and FA2 (torch flash), forward and backward, one panel per seqlen.

usage: python3 feature_plot.py features.jsonl --out features.png
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SERIES = [("ours", "", "tab:red"), ("FA4", "fa4_", "tab:blue"), ("cuDNN", "cudnn_", "tab:green"), ("FA2", "flash_", "tab:gray")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("joined")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = [r for r in map(json.loads, open(a.joined)) if "feature" in r and r["feature"] != "dense_h32"]
    seqlens = sorted({r["seqlen"] for r in rows})
    fig, axes = plt.subplots(2, len(seqlens), figsize=(7 * len(seqlens), 7), squeeze=False)
    for col, s in enumerate(seqlens):
        here = [r for r in rows if r["seqlen"] == s]
        names = [r["feature"] for r in here]
        for row, direction in enumerate(["fwd", "bwd"]):
            ax = axes[row][col]
            width = 0.2
            for i, (label, prefix, color) in enumerate(SERIES):
                values = [r.get(f"{prefix}{direction}_tflops") or 0.0 for r in here]
                ax.bar([x + (i - 1.5) * width for x in range(len(here))], values, width, label=label, color=color)
            ax.set_xticks(range(len(here)))
            ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
            ax.set_ylabel(f"{direction} TFLOP/s (visible area)")
            ax.set_title(f"head_dim 128, bf16, seqlen {s}, {direction}")
            ax.grid(axis="y", alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    card = rows[0].get("card", "") if rows else ""
    fig.suptitle(f"Issue 9's features on the {card}: missing bars are paths torch does not have")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
