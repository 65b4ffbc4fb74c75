"""The continuous-batching anchor: replays the steps `bench --serving continuous` wrote (which
requests prefill, which decode, at which cache lengths) through FlashAttention-4 on the same GPU.

Each step as ours: the admitted prompts prefilled packed (`flash_attn_varlen_func`, causal) and
their K/V written into their pages (a torch index copy: FA4 has no fused append), then one decode
token for every running request: its K/V written at its position (index copy), then
`flash_attn_varlen_func` with `page_table` and `seqused_k` over the paged cache. Pages are taken
at admission for prompt and output from a shuffled pool, as ours. Per-step tables and indices are
built and copied before the step's events, as ours. 32 query heads over 8 KV heads, head_dim 128,
bf16. Steps where FA4 fails (a page size it does not take) are recorded as an error.

usage: source /tmp/fa4/env.sh && python3 serving_replay.py --steps ours.jsonl --out replay.jsonl
"""
import argparse
import json
import random

import torch

try:
    from flash_attn.cute.interface import flash_attn_varlen_func
except ImportError as e:
    flash_attn_varlen_func, FA4_MISSING = None, repr(e)[:300]

H, HK, D, DT = 32, 8, 128, torch.bfloat16
SLOTS, MAX_PROMPT, MAX_OUTPUT, PREFILL_BUDGET = 64, 4096, 512, 8192


def workload(requests=256):
    x, prompts, outputs = 7, [], []
    def draw(lo, hi):
        nonlocal x
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        return lo + (x >> 33) % (hi - lo + 1)
    for _ in range(requests):
        prompts.append(draw(128, MAX_PROMPT))
        outputs.append(draw(32, MAX_OUTPUT))
    return prompts, outputs


def replay(steps, page):
    prompts, outputs = workload()
    per_seq = -(-(MAX_PROMPT + MAX_OUTPUT) // page)
    pool = SLOTS * per_seq
    free = list(range(pool))
    random.Random(11).shuffle(free)
    kp = torch.zeros(pool, page, HK, D, device="cuda", dtype=DT)
    vp = torch.zeros_like(kp)
    n = max(PREFILL_BUDGET, MAX_PROMPT)
    pq = torch.randn(n, H, D, device="cuda", dtype=DT)
    pk, pv = torch.randn(n, HK, D, device="cuda", dtype=DT), torch.randn(n, HK, D, device="cuda", dtype=DT)
    dq = torch.randn(SLOTS, 1, H, D, device="cuda", dtype=DT)
    dk, dv = torch.randn(SLOTS, HK, D, device="cuda", dtype=DT), torch.randn(SLOTS, HK, D, device="cuda", dtype=DT)
    pages = {}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    flat_k, flat_v = kp.view(-1, HK, D), vp.view(-1, HK, D)
    times = []

    def rows(r, first, count):
        return [pages[r][p // page] * page + p % page for p in range(first, first + count)]

    for s in steps:
        for r in s["prefill_ids"]:
            need = -(-(prompts[r] + outputs[r]) // page)
            pages[r], free = free[len(free) - need:], free[:len(free) - need]
        lens = s["prefill"]
        total = sum(lens)
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), device="cuda", dtype=torch.int32) if lens else None
        prefill_rows = torch.tensor([x for r, n in zip(s["prefill_ids"], lens) for x in rows(r, 0, n)], device="cuda", dtype=torch.long)
        dec = s["decode_ids"]
        b = len(dec)
        if b:
            table = torch.tensor([pages[r] + [0] * (per_seq - len(pages[r])) for r in dec], device="cuda", dtype=torch.int32)
            used = torch.tensor([n + 1 for n in s["decode"]], device="cuda", dtype=torch.int32)
            decode_rows = torch.tensor([rows(r, n, 1)[0] for r, n in zip(dec, s["decode"])], device="cuda", dtype=torch.long)
        torch.cuda.synchronize()
        start.record()
        if lens:
            mx = max(lens)
            flash_attn_varlen_func(pq[:total], pk[:total], pv[:total], cu_seqlens_q=cu, cu_seqlens_k=cu,
                                   max_seqlen_q=mx, max_seqlen_k=mx, causal=True)
            flat_k.index_copy_(0, prefill_rows, pk[:total])
            flat_v.index_copy_(0, prefill_rows, pv[:total])
        if b:
            flat_k.index_copy_(0, decode_rows, dk[:b])
            flat_v.index_copy_(0, decode_rows, dv[:b])
            flash_attn_varlen_func(dq[:b], kp, vp, seqused_k=used, page_table=table)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
        for r in s.get("finished_ids", []):
            free += pages.pop(r)
    return times


def finished(steps):
    """The requests each step finishes (ours frees their pages after the step), from the step
    rows: a request's last decode step."""
    prompts, outputs = workload()
    last = {}
    for s in steps:
        for r in s["decode_ids"]:
            last[r] = s["step"]
        for r in s["prefill_ids"]:
            if outputs[r] <= 1:
                last[r] = s["step"]
    for s in steps:
        s["finished_ids"] = [r for r, at in last.items() if at == s["step"]]
    return steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.steps) if l.strip()]
    summary = {r["page_size"]: r for r in rows if r.get("row") == "continuous"}
    with open(a.out, "w") as f:
        for page in sorted({r["page_size"] for r in rows if r.get("row") == "step"}):
            steps = finished([r for r in rows if r.get("row") == "step" and r["page_size"] == page])
            row = {"row": "replay", "page_size": page, "steps": len(steps)}
            if flash_attn_varlen_func is None:
                row["fa4_error"] = FA4_MISSING
            else:
                try:
                    replay(steps[:40], page)  # warm-up: FA4 compiles per configuration
                    times = [t for t, s in zip(replay(steps, page), steps) if s["prefill"] or s["decode"]]
                    times_sorted = sorted(times)
                    pct = lambda p: times_sorted[round((len(times_sorted) - 1) * p)]
                    tokens = sum(sum(s["prefill"]) + len(s["decode"]) for s in steps)
                    total_ms = sum(times) / 1e3
                    row.update(fa4_attention_ms=total_ms, fa4_tokens_per_s=tokens / (total_ms * 1e-3),
                               fa4_p50_us=pct(0.5), fa4_p99_us=pct(0.99))
                    ours = summary.get(page)
                    if ours:
                        row.update(ours_tokens_per_s=ours["tokens_per_s"], ours_p50_us=ours["p50_us"],
                                   ours_p99_us=ours["p99_us"],
                                   throughput_ratio=ours["tokens_per_s"] / row["fa4_tokens_per_s"])
                except Exception as e:  # a page size FA4 does not take: recorded
                    row["fa4_error"] = repr(e)[:300]
            row["card"] = torch.cuda.get_device_name()
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
