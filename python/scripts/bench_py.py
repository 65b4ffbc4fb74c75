"""GPU benchmark of flash_attn_rs's Python functions: JSON Lines to --out, Markdown tables on stdout.

Sections (--sections, comma-separated; default all):
  overhead  per-call cost of flash_attn_rs.flash_attn_func at batch 1, seqlen 128, 16 heads,
            head_dim 128, bf16, forward: median of per-call CUDA-event times over --calls (1000)
            back-to-back calls (the GPU waits on the host at this size, so this is the host-side
            cost of a call as the GPU sees it), the same calls' events around all of them, and
            host time per call with time.perf_counter over --calls calls, synchronizing only at the
            end. Torch SDPA (flash, cuDNN) and FlashAttention-4 (if importable) at the same shape for
            comparison; the Rust bench's number is recorded separately.
  grid      head_dim 64/128, causal no/yes, seqlen 1k/4k/16k, batch = 16384 / seqlen, heads =
            2048 / head_dim, bf16: forward and backward TFLOP/s (FLOPs = 4 b h sq sk d forward,
            2.5x that backward, halved when causal) of ours, torch SDPA's flash and cuDNN backends
            ((b, h, s, d) layout) and FlashAttention-4 (`flash_attn.cute`, if it imports; warmed up
            before timing since its first call per configuration compiles). Timing:
            triton.testing.do_bench (warmup 25 ms, rep 100 ms, median, its L2 flush) if triton
            imports, else CUDA events with a 256 MB L2 flush before each call, median.
  e2e       forward (no grad) of a Llama-style model built from a config with random weights
            (hidden 2048, 16 heads, --e2e-kv-heads kv heads, 8 layers, vocab 32000, bf16) at batch
            1, seqlen 4096, with attn_implementation "sdpa", "flash_attn_rs" (after
            flash_attn_rs.transformers.register()) and "flash_attention_2" if FlashAttention-2 is
            importable; the same weights for each, logits compared with sdpa's.

usage: python3 python/scripts/bench_py.py --out bench_py.jsonl [--sections overhead,grid,e2e]
"""
import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.testing
except Exception:  # no triton: CUDA events with an explicit L2 flush
    triton = None

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except Exception:  # a torch without the context manager
    SDPBackend = sdpa_kernel = None

import flash_attn_rs
from flash_attn_rs import flash_attn_func as ours_func

DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16}
TOKENS, MODEL_DIM = 16 * 1024, 2048


def fa4_function():
    """FlashAttention-4's flash_attn_func, or (None, reason)."""
    errors = []
    for mod in ("flash_attn.cute", "flash_attn.cute.interface"):
        try:
            return importlib.import_module(mod).flash_attn_func, None
        except Exception as e:  # ImportError, or a broken install
            errors.append(f"{mod}: {e!r}"[:200])
    return None, "; ".join(errors)


def fa2_available():
    if importlib.util.find_spec("flash_attn_2_cuda") is None:
        return False, "flash_attn_2_cuda is not importable"
    try:
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            return False, "transformers.utils.is_flash_attn_2_available() is False"
    except Exception as e:
        return False, f"transformers check failed: {e!r}"[:200]
    return True, None


def first(o):
    return o[0] if isinstance(o, (tuple, list)) else o


# ---------------------------------------------------------------------------------------------
# Output


class Sink:
    def __init__(self, path):
        self.f = open(path, "w")

    def row(self, obj):
        line = json.dumps(obj)
        self.f.write(line + "\n")
        self.f.flush()
        print(line, flush=True)

    def close(self):
        self.f.close()


def markdown(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(flush=True)


def fmt(x, digits=1):
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Timing


_FLUSH = None


def bench_ms(fn):
    """Median milliseconds per call of fn, L2 flushed before each call."""
    if triton is not None:
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 * 1024 * 1024, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        _FLUSH.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(25 / est))):
        fn()
    n = max(5, int(100 / est))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        _FLUSH.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def per_call(fn, calls):
    """(median per-call CUDA-event µs, µs per call from events around all calls, host µs per call
    with perf_counter synchronizing at the end, median host µs of one call's launch)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(calls)]
    for i in range(calls):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    ev_median = statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3
    ev_total = starts[0].elapsed_time(ends[-1]) * 1e3 / calls
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    host = (time.perf_counter() - t0) * 1e6 / calls
    launch = []
    for _ in range(min(calls, 200)):
        t = time.perf_counter()
        fn()
        launch.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    return ev_median, ev_total, host, statistics.median(launch)


# ---------------------------------------------------------------------------------------------
# Sections


def section_overhead(sink, a, fa4):
    b, s, h, d, dt = 1, 128, 16, 128, torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, s, h, d, generator=g, device="cuda", dtype=dt) for _ in range(3))
    qt, kt, vt = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    impls = [("flash_attn_rs", None, lambda: ours_func(q, k, v))]
    # Where the per-call time goes (ours): the Rust call alone with prepared arguments, on the
    # default stream and on a side stream, the two output allocations, the stream lookup.
    from flash_attn_rs import interface as fi
    core = fi._core()
    o_pre = torch.empty_like(q)
    lse_pre = torch.empty((b, h, s), dtype=torch.float32, device=q.device)
    opts = fi._options(None, False, False, None, None, None, None, None)
    args = (0, "bf16", fi._desc(q), fi._desc(k), fi._desc(v), fi._desc(o_pre), fi._buf(lse_pre), opts)
    side = torch.cuda.Stream()

    def on_side(fn):
        def run():
            with torch.cuda.stream(side):
                fn()
        return run

    impls += [
        ("ours: rust call only (default stream)", None, lambda: core.forward(args[0], fi._stream(0), *args[1:])),
        ("ours: rust call only (side stream)", None, on_side(lambda: core.forward(args[0], fi._stream(0), *args[1:]))),
        ("ours: flash_attn_func (side stream)", None, on_side(lambda: ours_func(q, k, v))),
        ("ours: torch.empty x2", None, lambda: (torch.empty_like(q), torch.empty((b, h, s), dtype=torch.float32, device=q.device))),
        ("ours: empty_like (the output alone)", None, lambda: torch.empty_like(q, memory_format=torch.contiguous_format)),
        ("ours: stream lookup", None, lambda: fi._stream(0)),
    ]
    if sdpa_kernel is not None:
        sdpa = lambda: F.scaled_dot_product_attention(qt, kt, vt)
        impls += [("sdpa_flash", SDPBackend.FLASH_ATTENTION, sdpa), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION, sdpa)]
    if fa4 is not None:
        impls.append(("fa4", None, lambda: fa4(q, k, v)))  # its first call compiles: done before timing
    rows = []
    with torch.no_grad():
        for name, backend, fn in impls:
            row = {"section": "overhead", "impl": name, "batch": b, "seqlen": s, "heads": h, "head_dim": d,
                   "dtype": "bf16", "causal": False, "calls": a.calls}
            try:
                # the backend is chosen once around all the calls, so that the context manager's
                # own cost is not counted in SDPA's calls
                with (sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()):
                    fn()
                    torch.cuda.synchronize()
                    ev_med, ev_total, host, launch = per_call(fn, a.calls)
                    row.update(events_median_us=ev_med, events_total_us_per_call=ev_total, host_us_per_call=host,
                               host_launch_median_us=launch, do_bench_us=bench_ms(fn) * 1e3)
            except Exception as e:
                row["error"] = repr(e)[:300]
            sink.row(row)
            rows.append(row)
    markdown(
        f"Per-call overhead (forward, b={b}, s={s}, h={h}, d={d}, bf16, {a.calls} back-to-back calls; µs)",
        ["impl", "CUDA events median/call", "CUDA events all/calls", "host perf_counter/call (sync at end)",
         "host launch median", "do_bench (L2 flushed)"],
        [[r["impl"], fmt(r.get("events_median_us"), 2), fmt(r.get("events_total_us_per_call"), 2),
          fmt(r.get("host_us_per_call"), 2), fmt(r.get("host_launch_median_us"), 2), fmt(r.get("do_bench_us"), 2)]
         if "error" not in r else [r["impl"], "error: " + r["error"][:80], "", "", "", ""] for r in rows],
    )


def time_fwd_bwd(fwd, inputs):
    """(forward ms, backward ms) of fwd() and of the gradient of its output w.r.t. inputs."""
    fms = bench_ms(fwd)
    o = first(fwd())
    d_o = torch.randn_like(o)
    bms = bench_ms(lambda: torch.autograd.grad(o, inputs, d_o, retain_graph=True))
    return fms, bms


def section_grid(sink, a, fa4):
    dt = DTYPES[a.dtype]
    rows = []
    compiled = set()
    for d in a.head_dims:
        for causal in (False, True):
            for s in a.seqlens:
                b, h = max(1, TOKENS // s), MODEL_DIM // d
                flops = 4.0 * b * h * s * s * d / (2 if causal else 1)
                row = {"section": "grid", "dtype": a.dtype, "head_dim": d, "causal": causal, "seqlen": s, "batch": b,
                       "heads": h, "fwd_flops": flops, "timer": "triton.do_bench" if triton else "cuda_events"}
                g = torch.Generator(device="cuda").manual_seed(s + d)
                q, k, v = (torch.randn(b, s, h, d, generator=g, device="cuda", dtype=dt).requires_grad_() for _ in range(3))
                impls = [("ours", lambda: ours_func(q, k, v, causal=causal), (q, k, v))]
                if sdpa_kernel is not None:
                    qt, kt, vt = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
                    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                        impls.append((name, (backend, lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)),
                                      (qt, kt, vt)))
                if fa4 is not None and not a.no_fa4:
                    impls.append(("fa4", lambda: fa4(q, k, v, causal=causal), (q, k, v)))
                for name, fn, inputs in impls:
                    try:
                        if isinstance(fn, tuple):
                            backend, call = fn
                            with sdpa_kernel(backend):
                                fms, bms = time_fwd_bwd(call, inputs)
                        else:
                            if name == "fa4" and (d, causal) not in compiled:
                                t0 = time.time()
                                o = first(fn())
                                torch.autograd.grad(o, inputs, torch.randn_like(o))
                                torch.cuda.synchronize()
                                row["fa4_compile_s"] = round(time.time() - t0, 1)
                                compiled.add((d, causal))
                            fms, bms = time_fwd_bwd(fn, inputs)
                        row[f"{name}_fwd_ms"], row[f"{name}_bwd_ms"] = fms, bms
                        row[f"{name}_fwd_tflops"] = flops / fms / 1e9
                        row[f"{name}_bwd_tflops"] = 2.5 * flops / bms / 1e9
                    except Exception as e:  # a backend that rejects the shape, or is missing
                        row[f"{name}_error"] = repr(e)[:300]
                sink.row(row)
                rows.append(row)
                impls = q = k = v = None  # free this point's tensors before the next
                torch.cuda.empty_cache()
    names = ["ours", "flash", "cudnn"] + (["fa4"] if fa4 is not None and not a.no_fa4 else [])

    def cell(r, n, kind):
        if f"{n}_{kind}_tflops" in r:
            return fmt(r[f"{n}_{kind}_tflops"])
        return "err" if f"{n}_error" in r else "–"

    markdown(
        f"Grid ({a.dtype}, 16k tokens, model dim 2048; TFLOP/s forward / backward; "
        f"{'triton do_bench median' if triton else 'CUDA events median, 256 MB L2 flush'})",
        ["head_dim", "causal", "seqlen", "batch x heads"] + [f"{n} fwd / bwd" for n in names]
        + ["ours / flash fwd / bwd", "ours / cudnn fwd / bwd"],
        [[str(r["head_dim"]), "yes" if r["causal"] else "no", str(r["seqlen"]), f"{r['batch']} x {r['heads']}"]
         + [f"{cell(r, n, 'fwd')} / {cell(r, n, 'bwd')}" for n in names]
         + [ratio(r, "ours", other) for other in ("flash", "cudnn")] for r in rows],
    )


def ratio(r, a, b):
    try:
        return f"{r[f'{a}_fwd_tflops'] / r[f'{b}_fwd_tflops']:.2f} / {r[f'{a}_bwd_tflops'] / r[f'{b}_bwd_tflops']:.2f}"
    except (KeyError, ZeroDivisionError):
        return "–"


def build_llama(a, kv_heads, impl, state):
    import transformers

    cfg = transformers.LlamaConfig(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=a.e2e_layers, num_attention_heads=16,
        num_key_value_heads=kv_heads, vocab_size=32000, max_position_embeddings=max(8192, a.e2e_seqlen),
        rms_norm_eps=1e-5, tie_word_embeddings=False,
    )
    prev = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            try:
                model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
            except TypeError:  # a transformers without the argument
                cfg._attn_implementation = impl
                model = transformers.AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(prev)
    got = getattr(model.config, "_attn_implementation", None)
    if got != impl:
        raise RuntimeError(f"asked for attn_implementation={impl!r}, the model has {got!r}")
    # Built with bf16 as the default dtype: the weights are bf16 already, while buffers that the
    # model makes in float32 on purpose (RoPE's inverse frequencies) stay float32, as a checkpoint
    # load with dtype=bfloat16 would leave them. So no model.to(dtype), which would round those.
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)
    if state is not None:
        model.load_state_dict(state)
    return model.to("cuda").eval()


def section_e2e(sink, a):
    rows = []
    try:
        import transformers
    except Exception as e:
        sink.row({"section": "e2e", "error": f"transformers not importable: {e!r}"[:300]})
        return
    impls = [("sdpa", "sdpa")]
    try:
        import flash_attn_rs.transformers as fat

        name = fat.register()
        impls.append(("flash_attn_rs", name if isinstance(name, str) else "flash_attn_rs"))
    except Exception as e:
        sink.row({"section": "e2e", "impl": "flash_attn_rs", "error": f"register() failed: {e!r}"[:300]})
    ok, why = fa2_available()
    if ok:
        impls.append(("flash_attention_2", "flash_attention_2"))
    else:
        sink.row({"section": "e2e", "impl": "flash_attention_2", "skipped": why})
    tokens = a.e2e_seqlen
    for kv in a.e2e_kv_heads:
        state, ref_logits = None, None
        g = torch.Generator(device="cuda").manual_seed(1)
        ids = torch.randint(0, 32000, (1, tokens), generator=g, device="cuda")
        for label, impl in impls:
            row = {"section": "e2e", "impl": label, "attn_implementation": impl, "model": "llama", "hidden": 2048,
                   "heads": 16, "kv_heads": kv, "layers": a.e2e_layers, "vocab": 32000, "batch": 1, "seqlen": tokens,
                   "dtype": "bf16", "transformers": transformers.__version__}
            model = None
            torch.cuda.reset_peak_memory_stats()
            try:
                model = build_llama(a, kv, impl, state)
                if state is None:
                    state = {k_: v_.detach().clone() for k_, v_ in model.state_dict().items()}
                with torch.no_grad():
                    run = lambda: model(input_ids=ids, use_cache=False).logits
                    for _ in range(3):
                        logits = run()
                    torch.cuda.synchronize()
                    times = []
                    for _ in range(a.e2e_reps):
                        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        s.record()
                        logits = run()
                        e.record()
                        torch.cuda.synchronize()
                        times.append(s.elapsed_time(e))
                ms = statistics.median(times)
                row.update(forward_ms=ms, forward_ms_min=min(times), tokens_per_s=tokens / ms * 1e3,
                           peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30)
                if ref_logits is None:
                    ref_logits = logits.detach()
                else:
                    diff = (logits.float() - ref_logits.float()).abs()
                    row.update(max_abs_logit_diff_vs_sdpa=diff.max().item(),
                               mean_abs_logit_diff_vs_sdpa=diff.mean().item(),
                               argmax_agreement_vs_sdpa=(logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item())
                del logits
            except Exception as e:
                row["error"] = repr(e)[:300]
            sink.row(row)
            rows.append(row)
            model = run = None
            torch.cuda.empty_cache()
        state = ref_logits = None
        torch.cuda.empty_cache()
    by_kv = {}
    for r in rows:
        if "forward_ms" in r and r["impl"] == "sdpa":
            by_kv[r["kv_heads"]] = r["forward_ms"]
    markdown(
        f"End-to-end forward (Llama, hidden 2048, 16 heads, {a.e2e_layers} layers, vocab 32000, bf16, batch 1, "
        f"seqlen {tokens}, random weights, no grad; median of {a.e2e_reps})",
        ["kv heads", "attn_implementation", "ms", "tokens/s", "vs sdpa", "max |Δlogits| vs sdpa", "argmax agreement"],
        [[str(r["kv_heads"]), r["impl"], fmt(r.get("forward_ms"), 2), fmt(r.get("tokens_per_s"), 0),
          (f"{by_kv[r['kv_heads']] / r['forward_ms']:.2f}x" if "forward_ms" in r and r["kv_heads"] in by_kv else "–"),
          fmt(r.get("max_abs_logit_diff_vs_sdpa"), 3), fmt(r.get("argmax_agreement_vs_sdpa"), 4)]
         if "error" not in r else [str(r["kv_heads"]), r["impl"], "error: " + r["error"][:80], "", "", "", ""]
         for r in rows],
    )


# ---------------------------------------------------------------------------------------------


def meta(fa4_err, fa2):
    m = {
        "section": "meta",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "card": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "flash_attn_rs": getattr(flash_attn_rs, "__version__", None),
        "flash_attn_rs_file": getattr(flash_attn_rs, "__file__", None),
        "triton": getattr(triton, "__version__", None),
        "fa4": fa4_err is None,
        "fa4_error": fa4_err,
        "fa2": fa2[0],
        "host": platform.node(),
    }
    try:
        import transformers

        m["transformers"] = transformers.__version__
    except Exception:
        m["transformers"] = None
    try:
        m["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                                      str(torch.cuda.current_device())], capture_output=True, text=True,
                                     timeout=20).stdout.strip() or None
    except Exception:
        m["driver"] = None
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        m["git"] = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
    except Exception:
        m["git"] = None
    return m


def ints(s):
    return [int(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON Lines output file")
    ap.add_argument("--sections", default="overhead,grid,e2e")
    ap.add_argument("--calls", type=int, default=1000, help="overhead: back-to-back calls")
    ap.add_argument("--head-dims", type=ints, default=[64, 128])
    ap.add_argument("--seqlens", type=ints, default=[1024, 4096, 16384])
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--no-fa4", action="store_true", help="grid: leave FlashAttention-4 out (its compiles take time)")
    ap.add_argument("--e2e-kv-heads", type=ints, default=[4, 8])
    ap.add_argument("--e2e-seqlen", type=int, default=4096)
    ap.add_argument("--e2e-layers", type=int, default=8)
    ap.add_argument("--e2e-reps", type=int, default=10)
    a = ap.parse_args()
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = set(sections) - {"overhead", "grid", "e2e"}
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from overhead,grid,e2e")
    if not torch.cuda.is_available():
        sys.exit("bench_py.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    fa4, fa4_err = fa4_function()
    sink = Sink(a.out)
    m = meta(fa4_err, fa2_available())
    sink.row(m)
    print(f"\n{m['card']}, driver {m['driver']}, torch {m['torch']} (CUDA {m['torch_cuda']}), flash_attn_rs "
          f"{m['flash_attn_rs']}, triton {m['triton']}, transformers {m['transformers']}, FA4 {m['fa4']}, "
          f"FA2 {m['fa2']}, {m['date']}", flush=True)
    t0 = time.time()
    for s in sections:
        ts = time.time()
        try:
            if s == "overhead":
                section_overhead(sink, a, fa4)
            elif s == "grid":
                section_grid(sink, a, fa4)
            else:
                section_e2e(sink, a)
        except Exception as e:  # record and go on to the next section
            sink.row({"section": s, "error": repr(e)[:500]})
        sink.row({"section": "timing", "of": s, "seconds": round(time.time() - ts, 1)})
    sink.row({"section": "timing", "of": "all", "seconds": round(time.time() - t0, 1)})
    sink.close()


if __name__ == "__main__":
    main()
