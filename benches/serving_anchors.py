"""Issue 10's serving anchors, the rows `bench --serving decode,varlen` measures: torch SDPA's
flash (FlashAttention-2) and cuDNN backends (`enable_gqa=True`) and FlashAttention-4
(`flash_attn_varlen_func`, its SM90 kernels on Hopper) on

- decode: q (batch, seqlen_q, 32, 128) against a full cache (batch, cache_len, 8, 128), bf16,
  seqlen_q 1 and 4, no mask (SDPA's causal flag is top-left aligned, which is not a decode's
  mask); FA4 with `seqused_k` = cache_len and its split heuristic (`num_splits=0`);
- varlen: the packed causal prefill of 64 sequences (lengths from the LCG `bench` uses), FA4
  forward and backward; SDPA has no packed path (null), its dense causal rows at the mean length
  are timed instead.

Times are triton.testing.do_bench medians (25 ms warm-up, 100 ms), as the other anchor scripts.
FA4's first call per configuration compiles (not timed). Without FA4 the torch rows still run.

usage: source /tmp/fa4/env.sh && python3 serving_anchors.py --out serving_anchors.jsonl
"""
import argparse
import json

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    from flash_attn.cute.interface import flash_attn_varlen_func
except ImportError as e:
    flash_attn_varlen_func, FA4_MISSING = None, repr(e)[:300]

H, HK, D, DT = 32, 8, 128, torch.bfloat16
DECODE = [(1, 1024), (1, 4096), (1, 16384), (1, 32768), (8, 4096), (8, 32768), (64, 4096), (64, 32768)]
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def prefill_lengths():
    x, out = 10, []
    for _ in range(64):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out.append(64 + (x >> 33) % (8192 - 64 + 1))
    return out


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def safe(fn):
    try:
        return fn(), None
    except Exception as e:  # an anchor that cannot run this row is recorded as null
        return None, repr(e)[:200]


def decode_rows(f):
    for b, L in DECODE:
        k = torch.randn(b, L, HK, D, device="cuda", dtype=DT)
        v = torch.randn_like(k)
        for sq in (1, 4):
            q = torch.randn(b, sq, H, D, device="cuda", dtype=DT)
            row = {"row": "decode", "batch": b, "cache_len": L, "seqlen_q": sq, "page_size": 0}
            qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            for name, backend in BACKENDS.items():
                def call():
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True)
                ms, err = safe(lambda: (call(), bench(call))[1])
                row[f"{name}_us"] = None if ms is None else ms * 1e3
                if err:
                    row[f"{name}_error"] = err
            if flash_attn_varlen_func is not None:
                used = torch.full((b,), L, device="cuda", dtype=torch.int32)
                # FA4's split heuristic where it has split-KV (not on SM90: then one split).
                ms, err = None, None
                for splits in (0, 1):
                    call = lambda: flash_attn_varlen_func(q, k, v, seqused_k=used, max_seqlen_k=L, num_splits=splits)
                    ms, err = safe(lambda: (call(), torch.cuda.synchronize(), bench(call))[2])
                    if ms is not None:
                        row["fa4_num_splits"] = splits
                        break
                row["fa4_us"] = None if ms is None else ms * 1e3
                if err:
                    row["fa4_error"] = err
                # FA4's paged forward: the same cache as pages of 256 tokens (page_table).
                page = 256
                if L % page == 0:
                    pages = b * L // page
                    kp, vp = k.reshape(pages, page, HK, D), v.reshape(pages, page, HK, D)
                    table = torch.arange(pages, device="cuda", dtype=torch.int32).reshape(b, L // page)
                    call = lambda: flash_attn_varlen_func(q, kp, vp, seqused_k=used, page_table=table, num_splits=row.get("fa4_num_splits", 1))
                    ms, err = safe(lambda: (call(), torch.cuda.synchronize(), bench(call))[2])
                    row["fa4_paged256_us"] = None if ms is None else ms * 1e3
                    if err:
                        row["fa4_paged256_error"] = err
            else:
                row["fa4_us"], row["fa4_error"] = None, FA4_MISSING
            row["kv_bytes"] = 2 * b * L * HK * D * 2
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")
        del k, v


def varlen_rows(f):
    lens = prefill_lengths()
    total, mx, mean = sum(lens), max(lens), sum(lens) // len(lens)
    pairs = sum(n * (n + 1) // 2 for n in lens)
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0).tolist()), device="cuda", dtype=torch.int32)
    q = torch.randn(total, H, D, device="cuda", dtype=DT, requires_grad=True)
    k = torch.randn(total, HK, D, device="cuda", dtype=DT, requires_grad=True)
    v = torch.randn(total, HK, D, device="cuda", dtype=DT, requires_grad=True)
    row = {"row": "varlen", "sequences": len(lens), "total_tokens": total, "mean_len": mean, "max_len": mx,
           "visible_pairs": pairs}
    flops = 4 * D * H * pairs
    if flash_attn_varlen_func is not None:
        def fwd():
            o = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=mx, max_seqlen_k=mx, causal=True)
            return o[0] if isinstance(o, tuple) else o
        def timed():
            o = fwd()
            torch.cuda.synchronize()
            fms = bench(fwd)
            d_o = torch.randn_like(o)
            bms = bench(lambda: torch.autograd.grad(o, (q, k, v), d_o, retain_graph=True))
            return fms, bms
        res, err = safe(timed)
        if res:
            row["fa4_fwd_tflops"] = flops / res[0] / 1e9
            row["fa4_bwd_tflops"] = 2.5 * flops / res[1] / 1e9
        else:
            row["fa4_error"] = err
    else:
        row["fa4_error"] = FA4_MISSING
    print(json.dumps(row), flush=True)
    f.write(json.dumps(row) + "\n")
    # Dense causal at the mean length: SDPA (GQA) and FA4.
    b, s = len(lens), mean
    qd = torch.randn(b, H, s, D, device="cuda", dtype=DT, requires_grad=True)
    kd = torch.randn(b, HK, s, D, device="cuda", dtype=DT, requires_grad=True)
    vd = torch.randn(b, HK, s, D, device="cuda", dtype=DT, requires_grad=True)
    dflops = 4 * D * H * b * s * (s + 1) // 2
    row = {"row": "dense_mean", "batch": b, "seqlen": s}
    for name, backend in BACKENDS.items():
        def timed():
            with sdpa_kernel(backend):
                fwd = lambda: F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=True)
                o = fwd()
                fms = bench(fwd)
                d_o = torch.randn_like(o)
                bms = bench(lambda: torch.autograd.grad(o, (qd, kd, vd), d_o, retain_graph=True))
            return fms, bms
        res, err = safe(timed)
        if res:
            row[f"{name}_fwd_tflops"], row[f"{name}_bwd_tflops"] = dflops / res[0] / 1e9, 2.5 * dflops / res[1] / 1e9
        else:
            row[f"{name}_error"] = err
    print(json.dumps(row), flush=True)
    f.write(json.dumps(row) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", default="decode,varlen")
    a = ap.parse_args()
    with open(a.out, "w") as f:
        if "decode" in a.rows:
            decode_rows(f)
        if "varlen" in a.rows:
            varlen_rows(f)


if __name__ == "__main__":
    main()
