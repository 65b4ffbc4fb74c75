"""Issue 9's feature anchors: FlashAttention-4 (SM90 kernels on Hopper) and torch SDPA's flash
(FlashAttention-2) and cuDNN backends on the feature rows that `bench --features` measures:
head_dim 128, bf16, 16k tokens per batch (batch = 16384 / seqlen), 16 heads (model dim 2048),
except the GQA rows (32 query heads over 8 KV heads, and the dense 32/32 point beside it).

FLOPs count the visible area: 4 * head_dim * batch * heads * visible_pairs, where visible_pairs is
the number of (query, key) pairs one head's mask allows (bottom-right aligned windows, as in
FlashAttention); the backward counts 2.5x the forward. Times are triton.testing.do_bench medians
(25 ms warm-up, 100 ms), as in fa4_anchors.py and torch_anchors.py.

Before timing, each FA4 feature call is checked (forward and backward) against a float32 torch
reference with an explicit mask, softcap and sink column on a small shape (b=1, s=4608, 4 heads),
and a feature whose check fails is not timed. Torch rows exist only where SDPA has a flash/cuDNN
path (dense, causal, GQA via enable_gqa); windows, softcap and sinks are recorded as null.
Without FA4 installed the torch rows still run.

usage: source /tmp/fa4/env.sh && python3 feature_anchors.py --out fa4_features.jsonl [--seqlens 4096,16384] [--features all]
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    from flash_attn.cute.interface import flash_attn_func
except ImportError as e:
    flash_attn_func, FA4_MISSING = None, repr(e)[:300]

TOKENS, HEAD_DIM, DTYPE = 16 * 1024, 128, torch.bfloat16
# name: (heads, heads_k, causal, window (left, right; -1 = unbounded), softcap, sinks)
FEATURES = {
    "dense": (16, 16, False, None, None, False),
    "causal": (16, 16, True, None, None, False),
    "gqa": (32, 8, False, None, None, False),
    "dense_h32": (32, 32, False, None, None, False),
    "window_4096_0": (16, 16, False, (4096, 0), None, False),
    "window_1024_1024": (16, 16, False, (1024, 1024), None, False),
    "softcap_50": (16, 16, False, None, 50.0, False),
    "sinks": (16, 16, False, None, None, True),
}
TORCH_FEATURES = {"dense", "causal", "gqa", "dense_h32"}
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
# The sanity check's limits: forward max abs error; backward max abs error over the largest |grad|.
FWD_TOL, BWD_TOL = 0.05, 0.05


def bounds(causal, window):
    left, right = window or (-1, -1)
    return left, 0 if causal else right


def visible_pairs(sq, sk, causal, window):
    """Pairs (i, j) with query i seeing key j: (left < 0 or j >= i + sk - sq - left) and
    (right < 0 or j <= i + sk - sq + right); causal means right = 0."""
    left, right = bounds(causal, window)
    total = 0
    for i in range(sq):
        diag = i + sk - sq
        lo = 0 if left < 0 else max(0, diag - left)
        hi = sk - 1 if right < 0 else min(sk - 1, diag + right)
        total += max(0, hi - lo + 1)
    return total


def fa4_call(q, k, v, causal, window, softcap, sink):
    left, right = bounds(False, window)  # FA4: None is unbounded
    size = (None if left < 0 else left, None if right < 0 else right)
    o = flash_attn_func(q, k, v, causal=causal, window_size=size, softcap=softcap or 0.0, learnable_sink=sink)
    return o[0] if isinstance(o, tuple) else o


def reference(q, k, v, causal, window, softcap, sink):
    """float32 attention with an explicit mask; q (b, s, h, d), k and v (b, s, h_k, d)."""
    q, k, v = (x.float() for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = (x.repeat_interleave(group, dim=2) for x in (k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    sq, sk = s.shape[-2:]
    i = torch.arange(sq, device=s.device)[:, None] + sk - sq
    j = torch.arange(sk, device=s.device)[None, :]
    left, right = bounds(causal, window)
    allowed = torch.ones(sq, sk, dtype=torch.bool, device=s.device)
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    s = s.masked_fill(~allowed, float("-inf"))
    if sink is not None:  # one extra softmax column per head, with no value vector
        column = sink.float().view(1, -1, 1, 1).expand(*s.shape[:-1], 1)
        p = torch.softmax(torch.cat([s, column], dim=-1), dim=-1)[..., :sk]
    else:
        p = torch.softmax(s, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def inputs(b, s, h, hk, sinks):
    q = torch.randn(b, s, h, HEAD_DIM, device="cuda", dtype=DTYPE, requires_grad=True)
    k, v = (torch.randn(b, s, hk, HEAD_DIM, device="cuda", dtype=DTYPE, requires_grad=True) for _ in range(2))
    sink = torch.randn(h, device="cuda", dtype=torch.float32, requires_grad=True) if sinks else None
    return q, k, v, sink


def sanity(name):
    """FA4's feature call against the float32 reference: max abs errors of O and of the gradients."""
    h, hk, causal, window, softcap, sinks = FEATURES[name]
    q, k, v, sink = inputs(1, 4608, 4, 4 * hk // h, sinks)
    leaves = [x for x in (q, k, v, sink) if x is not None]
    o = fa4_call(q, k, v, causal, window, softcap, sink)
    ref = reference(q, k, v, causal, window, softcap, sink)
    d_o = torch.randn_like(o)
    got = torch.autograd.grad(o, leaves, d_o)
    want = torch.autograd.grad(ref, leaves, d_o.float())
    fwd = (o.float() - ref).abs().max().item()
    bwd = max(((g.float() - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want))
    return {"sanity": name, "fa4_fwd_max_abs_err": fwd, "fa4_bwd_max_rel_err": bwd, "ok": fwd <= FWD_TOL and bwd <= BWD_TOL}


def timed(fwd, leaves, flops, prefix, row):
    """do_bench medians of the forward and of the backward (autograd over `leaves`) into `row`."""
    fms = triton.testing.do_bench(fwd, warmup=25, rep=100, return_mode="median")
    o = fwd()
    d_o = torch.randn_like(o)
    bwd = lambda: torch.autograd.grad(o, leaves, d_o, retain_graph=True)
    bms = triton.testing.do_bench(bwd, warmup=25, rep=100, return_mode="median")
    row.update({f"{prefix}_fwd_ms": fms, f"{prefix}_bwd_ms": bms, f"{prefix}_fwd_tflops": flops / fms / 1e9, f"{prefix}_bwd_tflops": 2.5 * flops / bms / 1e9})


def measure(name, s, sane):
    h, hk, causal, window, softcap, sinks = FEATURES[name]
    b = TOKENS // s
    pairs = visible_pairs(s, s, causal, window)
    flops = 4 * HEAD_DIM * b * h * pairs
    row = {"feature": name, "seqlen": s, "batch": b, "heads": h, "heads_k": hk, "head_dim": HEAD_DIM, "dtype": "bf16", "visible_pairs": pairs}
    q, k, v, sink = inputs(b, s, h, hk, sinks)
    leaves = [x for x in (q, k, v, sink) if x is not None]
    if flash_attn_func is None:
        row["fa4_error"] = FA4_MISSING
    elif not sane.get("ok"):
        row["fa4_error"] = sane.get("error") or f"sanity check failed: {sane}"
    else:
        try:
            fwd = lambda: fa4_call(q, k, v, causal, window, softcap, sink)
            t0 = time.time()
            torch.autograd.grad(fwd(), leaves, torch.ones_like(q))  # compiles both directions
            torch.cuda.synchronize()
            row["fa4_compile_s"] = round(time.time() - t0, 1)
            timed(fwd, leaves, flops, "fa4", row)
        except Exception as e:  # a configuration FA4 rejects
            row["fa4_error"] = repr(e)[:300]
    # torch SDPA wants (b, h, s, d): views of the same inputs.
    qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
    for backend in BACKENDS:
        if name not in TORCH_FEATURES:
            row[f"{backend}_fwd_tflops"] = row[f"{backend}_bwd_tflops"] = None
            continue
        try:
            with sdpa_kernel(BACKENDS[backend]):
                fwd = lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=hk != h)
                timed(fwd, (qt, kt, vt), flops, backend, row)
        except Exception as e:  # a backend that rejects the shape (or a torch without enable_gqa)
            row[f"{backend}_error"] = str(e)[:200]
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seqlens", default="4096,16384")
    ap.add_argument("--features", default="all")
    a = ap.parse_args()
    names = list(FEATURES) if a.features == "all" else a.features.split(",")
    seqlens = [int(x) for x in a.seqlens.split(",") if x]
    with open(a.out, "w") as out:
        def emit(row):
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")

        try:
            from importlib.metadata import version

            fa4 = version("flash-attn-4")
        except Exception:
            fa4 = None
        emit({"card": torch.cuda.get_device_name(), "torch": torch.__version__, "fa4": fa4})
        checks = {}
        for name in names:
            if flash_attn_func is None:
                break
            try:
                checks[name] = sanity(name)
            except Exception as e:
                checks[name] = {"sanity": name, "ok": False, "error": repr(e)[:300]}
            emit(checks[name])
        for s in seqlens:
            for name in names:
                emit(measure(name, s, checks.get(name, {})))
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
