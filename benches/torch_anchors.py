"""The anchors: PyTorch SDPA's flash backend (FlashAttention-2) and cuDNN backend on the same grid
as `bench`, timed with triton.testing.do_bench medians. Runs on the GPU machine.

usage: python3 torch_anchors.py --out torch.jsonl [--seqlens 512,1024,...] [--head-dims 64,128] [--dtypes bf16,f16]
"""
import argparse
import json

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

TOKENS, MODEL_DIM = 16 * 1024, 2048
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}


def ints(s):
    return [int(x) for x in s.split(",") if x]


def time_backend(backend, q, k, v, causal):
    with sdpa_kernel(BACKENDS[backend]):
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        fwd_ms = triton.testing.do_bench(fwd, warmup=25, rep=100, return_mode="median")
        o = fwd()
        d_o = torch.randn_like(o)
        bwd = lambda: torch.autograd.grad(o, (q, k, v), d_o, retain_graph=True)
        bwd_ms = triton.testing.do_bench(bwd, warmup=25, rep=100, return_mode="median")
    return fwd_ms, bwd_ms


def memory_report():
    """Extra device memory of one forward at b=4, h=16, s=4096, d=128 per backend."""
    b, h, s, d = 4, 16, 4096, 128
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = {}
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with sdpa_kernel(backend), torch.no_grad():
            o = F.scaled_dot_product_attention(q, k, v)
        torch.cuda.synchronize()
        out[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
        del o
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seqlens", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--head-dims", default="32,64,96,128,192,256")
    ap.add_argument("--dtypes", default="bf16,f16")
    a = ap.parse_args()
    with open(a.out, "w") as f:
        for dtype in a.dtypes.split(","):
            for d in ints(a.head_dims):
                for causal in (False, True):
                    for s in ints(a.seqlens):
                        b, h = TOKENS // s, MODEL_DIM // d
                        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=DTYPES[dtype], requires_grad=True) for _ in range(3))
                        flops = 4 * b * h * s * s * d / (2 if causal else 1)
                        row = {"dtype": dtype, "head_dim": d, "causal": causal, "seqlen": s, "batch": b, "heads": h}
                        for backend in BACKENDS:
                            try:
                                fms, bms = time_backend(backend, q, k, v, causal)
                                row[f"{backend}_fwd_ms"], row[f"{backend}_bwd_ms"] = fms, bms
                                row[f"{backend}_fwd_tflops"] = flops / fms / 1e9
                                row[f"{backend}_bwd_tflops"] = 2.5 * flops / bms / 1e9
                            except RuntimeError as e:  # a backend that rejects the shape
                                row[f"{backend}_error"] = str(e)[:200]
                        print(json.dumps(row), flush=True)
                        f.write(json.dumps(row) + "\n")
                        del q, k, v
        mem = memory_report()
        print(json.dumps({"memory_mib": mem}))
        f.write(json.dumps({"memory_mib": mem}) + "\n")


if __name__ == "__main__":
    main()
