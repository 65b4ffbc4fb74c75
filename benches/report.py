"""Merge our benchmark (bench --out) with the anchors of the same run (torch_anchors.py: SDPA's
flash and cuDNN backends; optionally the FA4 kit's fa4_anchors.py) into the committed JSON Lines
record, print the ratio table (Markdown) and draw the plot. Each row gains `flash_tflops`,
`cudnn_tflops`, `fa4_tflops`, `vs_flash`, `vs_cudnn`, `vs_fa4` and `vs_best` (ours over
max(cuDNN, FA4), the ratio issue 12's targets are stated in).

usage: python3 report.py OURS.jsonl TORCH.jsonl [--fa4 FA4.jsonl] --date D --driver V
       [--torch-version V] --out results.jsonl --plot plot.png --table table.md
"""
import argparse
import json


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
    ap.add_argument("--fa4", help="fa4_anchors.py's JSON Lines from the same machine and session")
    ap.add_argument("--torch-version", help="the anchors' torch (default: this Python's)")
    a = ap.parse_args()
    if a.torch_version is None:
        import torch

        a.torch_version = torch.__version__
    fa4 = {}
    if a.fa4:
        for row in load(a.fa4):
            if "head_dim" in row:
                fa4[(row["dtype"], row["head_dim"], row["causal"], row["seqlen"])] = row
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
        row["fa4_tflops"] = fa4.get(key, {}).get(f"fa4_{d}_tflops")
        row["vs_fa4"] = row["ours_tflops"] / row["fa4_tflops"] if row["fa4_tflops"] else None
        best = max((x for x in (row["cudnn_tflops"], row["fa4_tflops"]) if x), default=None)
        row["vs_best"] = row["ours_tflops"] / best if best else None
        row.update(driver=a.driver, torch=a.torch_version, date=a.date)
        merged.append(row)
    with open(a.out, "w") as f:
        for row in merged:
            f.write(json.dumps(row) + "\n")
        if memory:
            f.write(json.dumps({"memory_mib_torch_forward_b4_h16_s4096_d128": memory}) + "\n")

    lines = ["| dir | dtype | d | causal | seqlen | ours TFLOP/s | flash (FA2) | cuDNN | FA4 | ours/flash | ours/cuDNN | ours/FA4 | ours/max(cuDNN, FA4) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x: "–" if x is None else f"{x:.1f}"
    fmtr = lambda x: "–" if x is None else f"{x:.2f}"
    for r in sorted(merged, key=lambda r: (r["direction"] != "fwd", r["dtype"], r["head_dim"], r["causal"], r["seqlen"])):
        lines.append(
            f"| {r['direction']} | {r['dtype']} | {r['head_dim']} | {'yes' if r['causal'] else 'no'} | {r['seqlen']} | "
            f"{fmt(r['ours_tflops'])} | {fmt(r['flash_tflops'])} | {fmt(r['cudnn_tflops'])} | {fmt(r['fa4_tflops'])} | "
            f"{fmtr(r['vs_flash'])} | {fmtr(r['vs_cudnn'])} | {fmtr(r['vs_fa4'])} | {fmtr(r['vs_best'])} |"
        )
    # Per direction and head_dim: the range of ours / max(cuDNN, FA4) over dtypes, causal, seqlens.
    ranges = {}
    for r in merged:
        if r["vs_best"] is not None:
            ranges.setdefault((r["direction"], r["head_dim"]), []).append(r["vs_best"])
    if ranges:
        lines += ["", "| dir | d | points | ours/max(cuDNN, FA4) min | median | max |", "|---|---|---|---|---|---|"]
        for (direction, d), xs in sorted(ranges.items(), key=lambda kv: (kv[0][0] != "fwd", kv[0][1])):
            xs = sorted(xs)
            lines.append(f"| {direction} | {d} | {len(xs)} | {xs[0]:.2f} | {xs[len(xs) // 2]:.2f} | {xs[-1]:.2f} |")
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
                for label, field, style in [("ours (Rust)", "ours_tflops", "o-"), ("torch flash (FA2)", "flash_tflops", "s--"), ("torch cuDNN", "cudnn_tflops", "^--"), ("FA4 (Hopper: FA3 design)", "fa4_tflops", "d--")]:
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
