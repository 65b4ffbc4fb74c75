"""Merge `bench --serving` (ours) with `serving_anchors.py` (torch SDPA flash/cuDNN, FA4) into the
records of issue 10: a decode JSON Lines file (one row per batch, cache_len, seqlen_q, page_size:
ours_us, flash_us, cudnn_us, fa4_us, ours_gbps, ratio to the faster anchor, card, driver, date), the
varlen rows, and a Markdown table of both.

usage: python3 serving_report.py ours_serving.jsonl anchors_serving.jsonl --date D --driver V \
           --decode-out decode.jsonl --varlen-out varlen.jsonl --table serving.md
"""
import argparse
import json


def rows(path):
    return [json.loads(l) for l in open(path) if l.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("anchors")
    ap.add_argument("--date", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--decode-out", required=True)
    ap.add_argument("--varlen-out", required=True)
    ap.add_argument("--table", required=True)
    a = ap.parse_args()
    ours, anchors = rows(a.ours), rows(a.anchors)
    by_key = {(r["batch"], r["cache_len"], r["seqlen_q"]): r for r in anchors if r["row"] == "decode"}
    md = ["## Decode (32 query heads over 8 KV heads, head_dim 128, bf16; µs, GB/s of K+V read once)", "",
          "| batch | cache | seqlen_q | page | ours µs | GB/s | torch flash | torch cuDNN | FA4 | ours / best anchor |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    with open(a.decode_out, "w") as f:
        for r in ours:
            if r["row"] != "decode":
                continue
            an = by_key.get((r["batch"], r["cache_len"], r["seqlen_q"]), {})
            # The anchors' paged column: FA4's pages of 256 beside our paged rows of 256.
            fa4 = an.get("fa4_paged256_us") if r["page_size"] == 256 else an.get("fa4_us")
            flash, cudnn = (an.get("flash_us"), an.get("cudnn_us")) if r["page_size"] == 0 else (None, None)
            best = min([x for x in (flash, cudnn, fa4) if x] or [None]) if any((flash, cudnn, fa4)) else None
            out = {
                "batch": r["batch"], "cache_len": r["cache_len"], "seqlen_q": r["seqlen_q"], "page_size": r["page_size"],
                "ours_us": r["ours_us"], "flash_us": flash, "cudnn_us": cudnn, "fa4_us": fa4,
                "ours_gbps": r["ours_gbps"], "speedup_vs_best_anchor": best / r["ours_us"] if best else None,
                "card": r["card"], "driver": a.driver, "date": a.date, "timing": r["timing"],
            }
            f.write(json.dumps(out) + "\n")
            fmt = lambda x: "–" if x is None else f"{x:.1f}"
            md.append(f"| {r['batch']} | {r['cache_len']} | {r['seqlen_q']} | {r['page_size']} | {r['ours_us']:.1f} | "
                      f"{r['ours_gbps']:.0f} | {fmt(flash)} | {fmt(cudnn)} | {fmt(fa4)} | "
                      f"{'–' if best is None else format(best / r['ours_us'], '.2f')} |")
    md += ["", "Paged rows compare with FA4's paged forward (pages of 256) where the page size is 256; "
           "torch has no paged path.", "",
           "## Packed prefill (64 sequences of 64–8192 tokens, causal, GQA 32/8, head_dim 128, bf16; TFLOP/s on the real lengths)", "",
           "| row | ours fwd | ours bwd | FA4 fwd | FA4 bwd | cuDNN fwd | cuDNN bwd |", "|---|---|---|---|---|---|---|"]
    anc = {r["row"]: r for r in anchors if r["row"] in ("varlen", "dense_mean")}
    with open(a.varlen_out, "w") as f:
        for r in ours:
            if r["row"] not in ("varlen", "dense_mean"):
                continue
            an = anc.get(r["row"], {})
            out = dict(r, driver=a.driver, date=a.date,
                       fa4_fwd_tflops=an.get("fa4_fwd_tflops"), fa4_bwd_tflops=an.get("fa4_bwd_tflops"),
                       cudnn_fwd_tflops=an.get("cudnn_fwd_tflops"), cudnn_bwd_tflops=an.get("cudnn_bwd_tflops"),
                       flash_fwd_tflops=an.get("flash_fwd_tflops"), flash_bwd_tflops=an.get("flash_bwd_tflops"))
            f.write(json.dumps(out) + "\n")
            fmt = lambda x: "–" if x is None else f"{x:.0f}"
            md.append(f"| {r['row']} | {r['fwd_tflops']:.0f} | {r['bwd_tflops']:.0f} | {fmt(out['fa4_fwd_tflops'])} | "
                      f"{fmt(out['fa4_bwd_tflops'])} | {fmt(out['cudnn_fwd_tflops'])} | {fmt(out['cudnn_bwd_tflops'])} |")
    open(a.table, "w").write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
