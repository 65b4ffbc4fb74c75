"""GPU tests of flash_attn_rs's Python API (FlashAttention-2's functions on torch CUDA tensors).

Every random case is checked against a float64 reference computed on the GPU with torch (forward
with autograd for the gradients), written here from the definitions alone:

    t = scale * q.k                                   (scale defaults to 1 / sqrt(head_dim))
    t = c * tanh(t / c)                               (softcap c > 0)
    t = t - slope_h * |i + sk - sq - j|               (ALiBi, slopes (heads) or (batch, heads))
    key j visible from query i:  i + sk - sq - left <= j <= i + sk - sq + right
                                 (window (left, right), -1 = unbounded; causal sets right = 0)
    P = exp(t - LSE) over the visible keys, LSE = log(sum_visible exp(t) [+ exp(sink_h)])
    out = P V; a row with no visible key outputs 0 (its LSE is not checked)
    GQA: query head h reads K/V head h // (heads / heads_k)

Tolerances (FlashAttention's test convention, with the reasons):
    A correct kernel computing in low precision cannot match the f64 reference exactly: its inputs
    to the two matmuls and its outputs are rounded to float16/bfloat16. So each quantity X (out,
    LSE, dQ, dK, dV, d_sinks) is held to

        |X_ours - X_f64|_max  <=  2 * |X_torch_lowp - X_f64|_max  +  slack

    where X_torch_lowp is a plain torch implementation in the same low precision: scores, softmax
    and LSE in float32 from the float16/bfloat16 inputs, the probabilities P rounded to the input
    dtype before P V (as every tensor-core attention, and torch's own bf16/f16 math path, feeds its
    second matmul), the output cast to the dtype; its backward (written out, not autograd) computes
    D = rowsum(dO * O) from the rounded O, dP = dO V^T and dS = P (dP - D) in float32, rounds P and
    dS to the dtype before the dV = P^T dO, dQ = dS K, dK = dS^T Q matmuls, and casts the gradients
    to the dtype. That is the error budget of the algorithm itself, measured on the same inputs;
    the factor 2 leaves room for a different summation order and for where exactly rounding
    happens (FlashAttention's online softmax rescales, exp2 with a folded log2(e), split-KV merges),
    while a real bug (a wrong mask, a missed key tile, a wrong GQA head, a wrong rotary position)
    gives errors of the order of the values themselves, tens to hundreds of times the budget.
    The slack covers cases where the low-precision error happens to be tiny (few elements, all
    rounding favourably): 1e-3 for float16 and 4e-3 for bfloat16 on outputs (about one unit of
    rounding of values of magnitude 1: 2^-10 and 2^-8), the same times max(1, max|X_f64|) on
    gradients (gradient magnitudes grow with the sequence length, and the rounding unit with
    them), 1e-3 on the float32 LSE (which is never rounded to the low dtype; float32 arithmetic
    and approximate exp2/log2 stay far below it). The low-precision term is capped at
    2^-5 * max(1, max|X_f64|), so a mistake in this file's low-precision implementation can
    not make a tolerance vacuous.

Run:  pytest -q python/tests/test_gpu.py
      FLASH_ATTN_PY_CASES=N  (random cases in all, default 120: 40% dense, 25% varlen, 35% kvcache)
      FLASH_ATTN_PY_SEED=S   (base seed, default 20261202)
      FLASH_ATTN_PY_LOG=file (also append the one-line summaries to that file)
Each test prints a one-line summary (cases, worst error/tolerance ratio) even under capture.
Without torch or a CUDA device the module is skipped (never passed).
"""
import math
import os
import random
import re
import sys
import time
import traceback

import pytest


def _skip_module(reason):
    sys.__stderr__.write(f"python/tests/test_gpu.py skipped: {reason}\n")
    pytest.skip(reason, allow_module_level=True)


try:
    import torch
except Exception as e:  # ImportError, or a broken install
    _skip_module(f"torch is not importable ({e!r})")
if not torch.cuda.is_available():
    _skip_module("torch.cuda.is_available() is False (no CUDA device)")

from flash_attn_rs import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache  # noqa: E402  (must import here)

# The float32 parts of the low-precision implementation must be real float32, not TF32.
torch.backends.cuda.matmul.allow_tf32 = False

HDIMS = (32, 64, 96, 128, 192, 256)
DTYPES = (torch.float16, torch.bfloat16)
DT_NAME = {torch.float16: "f16", torch.bfloat16: "bf16"}
HEADS = ((1, 1), (2, 2), (4, 4), (8, 8), (2, 1), (4, 1), (4, 2), (6, 2), (6, 3), (8, 2), (8, 1), (8, 4), (3, 1))
EDGE_LENS = (1, 2, 15, 16, 17, 63, 64, 65, 127, 128, 129, 191, 192, 255, 256, 257, 300)
ATOL = {torch.float16: 1e-3, torch.bfloat16: 4e-3}
LSE_ATOL = 1e-3
BASE_CAP = 2.0 ** -5
NEG = -1e30  # masked scores: finite, so that no NaN reaches the reference's gradients
POISON = 64.0  # cache entries past the valid keys: they would dominate any row that read them

DEVICE = "cuda"  # every tensor of the random tests is made on DEVICE unless a test passes its own
N_CASES = int(os.environ.get("FLASH_ATTN_PY_CASES", "120"))
BASE_SEED = int(os.environ.get("FLASH_ATTN_PY_SEED", "20261202"))
N_DENSE = max(1, round(0.40 * N_CASES))
N_VARLEN = max(1, round(0.25 * N_CASES))
N_KV = max(1, N_CASES - N_DENSE - N_VARLEN)


# ----------------------------------------------------------------------------------------------
# Reporting


def report(capsys, line):
    """One summary line, shown even when pytest captures output (and appended to FLASH_ATTN_PY_LOG)."""
    with capsys.disabled():
        print(f"\n[flash_attn_rs gpu] {line}", flush=True)
    path = os.environ.get("FLASH_ATTN_PY_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def amax(x):
    x = x.detach()
    return x.abs().max().item() if x.numel() else 0.0


class Checker:
    """Holds each quantity to 2 * (low-precision torch error) + slack and keeps the worst ratio."""

    def __init__(self, name):
        self.name = name
        self.worst = 0.0
        self.worst_where = "-"
        self.case = ""
        self.checks = 0
        self.failures = []

    def _note(self, ratio, what):
        self.checks += 1
        r = math.inf if math.isnan(ratio) else ratio
        if r > self.worst:
            self.worst, self.worst_where = r, f"{what} of {self.case}"

    def check(self, what, ours, ref, base, slack, relative_slack=False):
        """ours/base (any dtype) against ref (float64): same shape, error within the tolerance."""
        assert tuple(ours.shape) == tuple(ref.shape), f"{what}: shape {tuple(ours.shape)}, expected {tuple(ref.shape)}"
        ref = ref.detach().double()
        mag = max(1.0, amax(ref))
        err = amax(ours.detach().double() - ref)
        base_err = amax(base.detach().double() - ref)
        tol = 2.0 * min(base_err, BASE_CAP * mag) + slack * (mag if relative_slack else 1.0)
        ratio = err / tol
        self._note(ratio, what)
        if not ratio <= 1.0:  # also catches NaN
            raise AssertionError(
                f"{what}: max |ours - f64| = {err:.3g} > tolerance {tol:.3g} "
                f"(low-precision torch error {base_err:.3g}, max |ref| {mag:.3g})"
            )
        return ratio

    def exact(self, what, ok):
        self.checks += 1
        if not ok:
            raise AssertionError(what)

    def run(self, cases, fn):
        for c in cases:
            self.case = f"{self.name}#{c['i']}"
            try:
                fn(c, self)
            except Exception as e:  # keep going: report every failing case with its parameters
                tb = traceback.format_exc(limit=-3).strip().splitlines()
                self.failures.append(f"{self.case} [{describe(c)}]: {type(e).__name__}: {e} | {' / '.join(tb[-3:])}")

    def finish(self, capsys, cases, t0, extra=""):
        report(
            capsys,
            f"{self.name}: {len(cases)} cases, {self.checks} checks, worst error/tolerance {self.worst:.3f} "
            f"({self.worst_where}), {len(self.failures)} failed, {time.time() - t0:.1f} s{extra}",
        )
        report(capsys, f"  {self.name} coverage: {coverage(cases)}")
        assert not self.failures, f"{len(self.failures)} of {len(cases)} cases failed:\n" + "\n".join(self.failures[:25])


def describe(c):
    skip = {"i", "table", "lens", "seqs", "slots", "used"}
    parts = [f"{k}={DT_NAME.get(v, v)}" for k, v in c.items() if k not in skip]
    for k in ("seqs", "lens", "slots", "used"):
        if k in c and c[k] is not None:
            parts.append(f"{k}={c[k]}")
    return ", ".join(parts)


def coverage(cases):
    keys = ("hdim", "dtype", "causal", "window", "softcap", "alibi", "sinks", "gqa", "sq!=sk", "layout", "mode",
            "append", "rotary", "interleaved", "num_splits", "seqused")
    out = []
    for k in keys:
        vals = {}
        for c in cases:
            if k == "gqa":
                v = c["h"] != c["hk"]
            elif k == "sq!=sk":
                if "seqs" in c:
                    v = any(a != b for a, b in c["seqs"])
                elif "sk" in c:
                    v = c["sq"] != c["sk"]
                else:
                    continue
            elif k == "window":
                v = c["window"] != (-1, -1)
            elif k not in c:
                continue
            else:
                v = c[k]
            if k == "dtype":
                v = DT_NAME[v]
            elif k in ("softcap", "sinks", "rotary", "seqused", "append"):
                v = bool(v)
            elif k == "alibi":
                v = v or "none"
            vals[v] = vals.get(v, 0) + 1
        if vals:
            out.append(f"{k} " + "/".join(f"{v}:{n}" for v, n in sorted(vals.items(), key=lambda t: str(t[0]))))
    return "; ".join(out)


# ----------------------------------------------------------------------------------------------
# References


def visibility(sq, sk, causal, window, device):
    """(sq, sk) bool mask of visible keys and the (sq, sk) ALiBi distance |i + sk - sq - j|."""
    i = torch.arange(sq, device=device)[:, None]
    j = torch.arange(sk, device=device)[None, :]
    diag = i + (sk - sq)
    left, right = window
    if causal:
        right = 0
    vis = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if right >= 0:
        vis &= j <= diag + right
    if left >= 0:
        vis &= j >= diag - left
    return vis, (diag - j).abs()


def ref_seq(q, k, v, scale, causal, window, softcap, slopes, sinks):
    """One sequence in float64 (autograd-able): q (sq, h, d), k/v (sk, hk, d), slopes/sinks (h,).
    Returns out (sq, h, d), lse (h, sq), and the (sq,) rows that see a key."""
    sq, h, _ = q.shape
    sk, hk = k.shape[0], k.shape[1]
    grp = h // hk
    kk, vv = k.repeat_interleave(grp, dim=1), v.repeat_interleave(grp, dim=1)
    s = torch.einsum("qhd,khd->hqk", q, kk) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    vis, dist = visibility(sq, sk, causal, window, q.device)
    if slopes is not None:
        s = s - slopes[:, None, None] * dist.to(s.dtype)
    s = s.masked_fill(~vis, NEG)
    logits = s if sinks is None else torch.cat([s, sinks[:, None, None].expand(h, sq, 1)], dim=-1)
    lse = torch.logsumexp(logits, dim=-1)
    p = torch.exp(s - lse[..., None]) * vis
    out = torch.einsum("hqk,khd->qhd", p, vv)
    return out, lse, vis.any(dim=-1)


def lowp_seq(q, k, v, do, scale, causal, window, softcap, slopes, sinks):
    """The same sequence as a plain torch implementation in the inputs' low precision (see the module
    docstring): float32 scores/softmax/LSE, P rounded before P V, output rounded; with do, the
    written-out backward with P and dS rounded before their matmuls. Returns out, lse, grads or None."""
    dt = q.dtype
    sq, h, d = q.shape
    sk, hk = k.shape[0], k.shape[1]
    grp = h // hk
    qf = q.float()
    kf = k.float().repeat_interleave(grp, dim=1)
    vf = v.float().repeat_interleave(grp, dim=1)
    s = torch.einsum("qhd,khd->hqk", qf, kf) * scale
    th = None
    if softcap > 0:
        th = torch.tanh(s / softcap)
        s = softcap * th
    vis, dist = visibility(sq, sk, causal, window, q.device)
    if slopes is not None:
        s = s - slopes.float()[:, None, None] * dist.float()
    s = s.masked_fill(~vis, NEG)
    if sinks is None:
        lse = torch.logsumexp(s, dim=-1)
    else:
        sf = sinks.detach().float()
        lse = torch.logsumexp(torch.cat([s, sf[:, None, None].expand(h, sq, 1)], dim=-1), dim=-1)
    p = torch.exp(s - lse[..., None]) * vis
    p_lp = p.to(dt).float()
    out = torch.einsum("hqk,khd->qhd", p_lp, vf).to(dt)
    if do is None:
        return out, lse, None
    dof = do.float()
    dD = torch.einsum("qhd,qhd->hq", dof, out.float())
    dv = torch.einsum("hqk,qhd->khd", p_lp, dof)
    dp = torch.einsum("qhd,khd->hqk", dof, vf)
    ds = p * (dp - dD[..., None])
    if th is not None:
        ds = ds * (1.0 - th * th)
    ds_lp = ds.to(dt).float()
    dq = torch.einsum("hqk,khd->qhd", ds_lp, kf) * scale
    dk = torch.einsum("hqk,qhd->khd", ds_lp, qf) * scale
    dk = dk.reshape(sk, hk, grp, d).sum(dim=2)
    dv = dv.reshape(sk, hk, grp, d).sum(dim=2)
    dsinks = None
    if sinks is not None:
        dsinks = -(torch.exp(sf[:, None] - lse) * dD).sum(dim=-1)
    return out, lse, (dq.to(dt), dk.to(dt), dv.to(dt), dsinks)


def rotate(x, cos, sin, interleaved):
    """Rotary embedding of x (s, heads, d) with cos/sin (s, rotary_dim / 2): GPT-J pairs (2i, 2i+1)
    when interleaved, else GPT-NeoX halves (i, i + rotary_dim / 2); the rest of d unchanged."""
    rd = 2 * cos.shape[-1]
    xr, rest = x[..., :rd], x[..., rd:]
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    if interleaved:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rot = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    else:
        x1, x2 = xr[..., : rd // 2], xr[..., rd // 2:]
        rot = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)
    return torch.cat([rot, rest], dim=-1)


# ----------------------------------------------------------------------------------------------
# Inputs


def generator(seed, device=None):
    device = DEVICE if device is None else device
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def randn(g, shape, dt, device=None):
    device = DEVICE if device is None else device
    return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dt)


def leaf(x):
    """A leaf requiring grad that keeps x's strides (a view of the same storage)."""
    return x.detach().requires_grad_()


def pick_len(rng, lo=1, hi=300):
    edges = [n for n in EDGE_LENS if lo <= n <= hi]
    if edges and rng.random() < 0.5:
        return rng.choice(edges)
    return rng.randint(lo, hi)


def random_window(rng, sk, causal):
    if causal:
        return (rng.randint(0, sk), rng.choice((-1, 0)))
    left = rng.choice((-1, rng.randint(0, sk)))
    right = rng.choice((-1, rng.randint(0, sk)))
    if left < 0 and right < 0:
        left = rng.randint(0, sk)
    return (left, right)


def random_mods(rng, c):
    c["softcap"] = rng.choice((2.0, 5.0, 30.0)) if rng.random() < 0.25 else 0.0
    c["alibi"] = rng.choice(("h", "bh")) if rng.random() < 0.25 else None
    c["sinks"] = rng.random() < 0.25
    c["scale"] = round(rng.uniform(0.05, 0.3), 4) if rng.random() < 0.2 else None


def make_qkv(g, lead_q, lead_k, h, hk, d, dt, layout, device=None):
    """q (*lead_q, h, d) and k, v (*lead_k, hk, d) as views of the layout asked for:
    contig; transposed ((b, heads, s, d) buffers viewed as (b, s, heads, d)); padded (rows of
    d + 8 elements); packed (one (.., h + 2 hk, d) buffer sliced along heads, needs lead_q ==
    lead_k); packed3 (one (.., 3, h, d) buffer, needs h == hk too)."""
    device = DEVICE if device is None else device
    if layout == "packed":
        base = randn(g, (*lead_q, h + 2 * hk, d), dt, device)
        return base[..., :h, :], base[..., h:h + hk, :], base[..., h + hk:, :]
    if layout == "packed3":
        base = randn(g, (*lead_q, 3, h, d), dt, device)
        return base[..., 0, :, :], base[..., 1, :, :], base[..., 2, :, :]
    if layout == "transposed":
        def tr(lead, n):
            return randn(g, (*lead[:-1], n, lead[-1], d), dt, device).transpose(-3, -2)
        return tr(lead_q, h), tr(lead_k, hk), tr(lead_k, hk)
    if layout == "padded":
        def pad(lead, n):
            return randn(g, (*lead, n, d + 8), dt, device)[..., :d]
        return pad(lead_q, h), pad(lead_k, hk), pad(lead_k, hk)
    return randn(g, (*lead_q, h, d), dt, device), randn(g, (*lead_k, hk, d), dt, device), randn(g, (*lead_k, hk, d), dt, device)


def mods_tensors(g, c, b, device=None, sinks_grad=True):
    device = DEVICE if device is None else device
    slopes = None
    if c["alibi"] == "h":
        slopes = torch.rand((c["h"],), generator=g, device=device) * 0.3
    elif c["alibi"] == "bh":
        slopes = torch.rand((b, c["h"]), generator=g, device=device) * 0.3
    sinks = None
    if c["sinks"]:
        sinks = torch.randn((c["h"],), generator=g, device=device) * 1.5
        if sinks_grad:
            sinks.requires_grad_()
    return slopes, sinks


def slopes_of(slopes, bi):
    if slopes is None:
        return None
    return slopes[bi] if slopes.dim() == 2 else slopes


def eff_scale(c):
    return c["scale"] if c["scale"] is not None else 1.0 / math.sqrt(c["hdim"])


# ----------------------------------------------------------------------------------------------
# Dense: flash_attn_func forward + backward


def dense_cases():
    cases = []
    for i in range(N_DENSE):
        rng = random.Random(BASE_SEED + i)
        c = {"i": i, "seed": BASE_SEED + i, "hdim": HDIMS[i % 6], "dtype": DTYPES[(i // 6) % 2]}
        c["b"] = rng.randint(1, 3)
        c["h"], c["hk"] = rng.choice(HEADS)
        c["sq"] = pick_len(rng)
        c["sk"] = c["sq"] if rng.random() < 0.4 else pick_len(rng)
        c["causal"] = rng.random() < 0.5
        c["window"] = random_window(rng, c["sk"], c["causal"]) if rng.random() < 0.3 else (-1, -1)
        random_mods(rng, c)
        layouts = ["contig", "transposed", "padded"] + (["packed", "packed"] if c["sq"] == c["sk"] else [])
        c["layout"] = rng.choice(layouts)
        if c["layout"] == "packed" and c["h"] == c["hk"] and rng.random() < 0.5:
            c["layout"] = "packed3"
        c["do_layout"] = rng.choice(("contig", "transposed"))
        c["rap"] = rng.random() < 0.5
        cases.append(c)
    return cases


def run_dense(c, chk, device=None):
    device = DEVICE if device is None else device
    g = generator(c["seed"], device)
    b, sq, sk, h, hk, d, dt = c["b"], c["sq"], c["sk"], c["h"], c["hk"], c["hdim"], c["dtype"]
    q, k, v = (leaf(x) for x in make_qkv(g, (b, sq), (b, sk), h, hk, d, dt, c["layout"], device))
    slopes, sinks = mods_tensors(g, c, b, device)
    if c["do_layout"] == "transposed":
        do = randn(g, (b, h, sq, d), dt, device).transpose(1, 2)
    else:
        do = randn(g, (b, sq, h, d), dt, device)
    scale = eff_scale(c)

    res = flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=c["scale"], causal=c["causal"],
                          window_size=c["window"], softcap=c["softcap"], alibi_slopes=slopes,
                          deterministic=False, return_attn_probs=c["rap"], sinks=sinks)
    if c["rap"]:
        assert isinstance(res, tuple) and len(res) == 3 and res[2] is None, "return_attn_probs: (out, lse, None) expected"
        out, lse = res[0], res[1]
        assert lse.dtype == torch.float32 and tuple(lse.shape) == (b, h, sq), f"lse {lse.dtype} {tuple(lse.shape)}"
        assert lse.device == q.device
    else:
        assert isinstance(res, torch.Tensor), f"a tensor expected, got {type(res)}"
        out, lse = res, None
    assert out.dtype == dt and out.device == q.device and tuple(out.shape) == (b, sq, h, d), \
        f"out {out.dtype} {out.device} {tuple(out.shape)}"
    inputs = [q, k, v] + ([sinks] if sinks is not None else [])
    grads = torch.autograd.grad(out, inputs, do)
    for x, gx in zip(inputs, grads):
        assert gx.dtype == x.dtype and gx.device == x.device and gx.shape == x.shape

    # float64 reference with autograd
    r_in = [x.detach().double().requires_grad_() for x in inputs]
    q64, k64, v64 = r_in[:3]
    s64 = r_in[3] if sinks is not None else None
    outs, lses, viss = [], [], []
    for bi in range(b):
        sl = slopes_of(slopes, bi)
        o, l, vis = ref_seq(q64[bi], k64[bi], v64[bi], scale, c["causal"], c["window"], c["softcap"],
                            None if sl is None else sl.double(), s64)
        outs.append(o)
        lses.append(l)
        viss.append(vis)
    out64, lse64, vis = torch.stack(outs), torch.stack(lses), torch.stack(viss)
    g64 = torch.autograd.grad(out64, r_in, do.double())

    # the low-precision torch implementation
    lo, ll, lg = [], [], [[], [], []]
    lds = None
    for bi in range(b):
        sl = slopes_of(slopes, bi)
        o, l, gr = lowp_seq(q[bi].detach(), k[bi].detach(), v[bi].detach(), do[bi], scale, c["causal"],
                            c["window"], c["softcap"], sl, sinks)
        lo.append(o)
        ll.append(l)
        for j in range(3):
            lg[j].append(gr[j])
        if gr[3] is not None:
            lds = gr[3] if lds is None else lds + gr[3]
    lp_out, lp_lse = torch.stack(lo), torch.stack(ll)
    lp_grads = [torch.stack(x) for x in lg] + ([lds] if sinks is not None else [])

    at = ATOL[dt]
    chk.check("out", out, out64, lp_out, at)
    chk.exact("out rows with no visible key are not 0", bool((out.detach()[~vis] == 0).all()))
    if lse is not None:
        m = vis[:, None, :].expand(b, h, sq)
        chk.check("lse", lse.detach()[m], lse64.detach()[m], lp_lse[m], LSE_ATOL)
    for name, gx, gr, gl in zip(("dq", "dk", "dv", "dsinks"), grads, g64, lp_grads):
        chk.check(name, gx, gr, gl, at, relative_slack=True)


def test_dense_random(capsys):
    cases = dense_cases()
    chk = Checker("dense fwd+bwd")
    t0 = time.time()
    chk.run(cases, run_dense)
    chk.finish(capsys, cases, t0)


# ----------------------------------------------------------------------------------------------
# Varlen: flash_attn_varlen_func forward + backward (forward only with seqused_k)


def varlen_cases():
    cases = []
    for i in range(N_VARLEN):
        seed = BASE_SEED + 10_000 + i
        rng = random.Random(seed)
        c = {"i": i, "seed": seed, "hdim": HDIMS[i % 6], "dtype": DTYPES[(i // 6) % 2]}
        c["h"], c["hk"] = rng.choice(HEADS)
        n = rng.randint(1, 4)
        same = rng.random() < 0.4
        seqs = []
        for _ in range(n):
            a = pick_len(rng, 1, 300)
            seqs.append((a, a if same else pick_len(rng, 1, 300)))
        c["seqs"] = seqs
        c["causal"] = rng.random() < 0.5
        c["window"] = random_window(rng, max(s for _, s in seqs), c["causal"]) if rng.random() < 0.3 else (-1, -1)
        random_mods(rng, c)
        c["seqused"] = rng.random() < 0.2
        c["used"] = [rng.randint(1, s) for _, s in seqs] if c["seqused"] else None
        # transposed: (heads, total, d) buffers viewed as (total, heads, d)
        c["layout"] = rng.choice(["contig", "padded", "transposed"] + (["packed", "packed"] if same else []))
        if c["layout"] == "packed" and c["h"] == c["hk"] and rng.random() < 0.5:
            c["layout"] = "packed3"
        c["rap"] = rng.random() < 0.5
        cases.append(c)
    return cases


def run_varlen(c, chk, device=None):
    device = DEVICE if device is None else device
    g = generator(c["seed"], device)
    h, hk, d, dt = c["h"], c["hk"], c["hdim"], c["dtype"]
    seqs = c["seqs"]
    n = len(seqs)
    tq, tk = sum(a for a, _ in seqs), sum(s for _, s in seqs)
    qv, kv_, vv = make_qkv(g, (1, tq), (1, tk), h, hk, d, dt, c["layout"], device)
    q, k, v = leaf(qv[0]), leaf(kv_[0]), leaf(vv[0])
    slopes, sinks = mods_tensors(g, c, n, device)
    do = randn(g, (tq, h, d), dt, device)
    cq = [0]
    ck = [0]
    for a, s in seqs:
        cq.append(cq[-1] + a)
        ck.append(ck[-1] + s)
    cu_q = torch.tensor(cq, dtype=torch.int32, device=device)
    cu_k = torch.tensor(ck, dtype=torch.int32, device=device)
    used = None if c["used"] is None else torch.tensor(c["used"], dtype=torch.int32, device=device)
    backward = used is None
    scale = eff_scale(c)

    res = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(a for a, _ in seqs), max(s for _, s in seqs),
                                 dropout_p=0.0, softmax_scale=c["scale"], causal=c["causal"], window_size=c["window"],
                                 softcap=c["softcap"], alibi_slopes=slopes, deterministic=False,
                                 return_attn_probs=c["rap"], sinks=sinks, seqused_k=used)
    if c["rap"]:
        assert isinstance(res, tuple) and len(res) == 3 and res[2] is None, "return_attn_probs: (out, lse, None) expected"
        out, lse = res[0], res[1]
        assert lse.dtype == torch.float32 and tuple(lse.shape) == (h, tq), f"lse {lse.dtype} {tuple(lse.shape)}"
    else:
        assert isinstance(res, torch.Tensor)
        out, lse = res, None
    assert out.dtype == dt and out.device == q.device and tuple(out.shape) == (tq, h, d), \
        f"out {out.dtype} {out.device} {tuple(out.shape)}"
    inputs = [q, k, v] + ([sinks] if sinks is not None else [])
    grads = torch.autograd.grad(out, inputs, do) if backward else None

    r_in = [x.detach().double().requires_grad_() for x in inputs]
    q64, k64, v64 = r_in[:3]
    s64 = r_in[3] if sinks is not None else None
    outs, lses, viss, lo, ll, lg = [], [], [], [], [], [[], [], []]
    lds = None
    for i, (a, s) in enumerate(seqs):
        sk = s if used is None else c["used"][i]
        qs, ks = slice(cq[i], cq[i + 1]), slice(ck[i], ck[i] + sk)
        sl = slopes_of(slopes, i)
        o, l, vis = ref_seq(q64[qs], k64[ks], v64[ks], scale, c["causal"], c["window"], c["softcap"],
                            None if sl is None else sl.double(), s64)
        outs.append(o)
        lses.append(l)
        viss.append(vis)
        o, l, gr = lowp_seq(q.detach()[qs], k.detach()[ks], v.detach()[ks], do[qs] if backward else None, scale,
                            c["causal"], c["window"], c["softcap"], sl, sinks)
        lo.append(o)
        ll.append(l)
        if backward:
            for j in range(3):
                lg[j].append(gr[j])
            if gr[3] is not None:
                lds = gr[3] if lds is None else lds + gr[3]
    out64, lse64, vis = torch.cat(outs), torch.cat(lses, dim=1), torch.cat(viss)

    at = ATOL[dt]
    chk.check("out", out, out64, torch.cat(lo), at)
    chk.exact("out rows with no visible key are not 0", bool((out.detach()[~vis] == 0).all()))
    if lse is not None:
        m = vis[None, :].expand(h, tq)
        chk.check("lse", lse.detach()[m], lse64.detach()[m], torch.cat(ll, dim=1)[m], LSE_ATOL)
    if backward:
        g64 = torch.autograd.grad(out64, r_in, do.double())
        lp_grads = [torch.cat(x) for x in lg] + ([lds] if sinks is not None else [])
        for name, gx, gr, gl in zip(("dq", "dk", "dv", "dsinks"), grads, g64, lp_grads):
            chk.check(name, gx, gr, gl, at, relative_slack=True)


def test_varlen_random(capsys):
    cases = varlen_cases()
    chk = Checker("varlen fwd+bwd")
    t0 = time.time()
    chk.run(cases, run_varlen)
    chk.finish(capsys, cases, t0)


# ----------------------------------------------------------------------------------------------
# KV cache: flash_attn_with_kvcache (contiguous, cache_batch_idx, paged; append; rotary; splits)


def kvcache_cases():
    cases = []
    for i in range(N_KV):
        seed = BASE_SEED + 20_000 + i
        rng = random.Random(seed)
        c = {"i": i, "seed": seed, "mode": ("contig", "batch_idx", "paged")[i % 3],
             "hdim": HDIMS[(i // 3) % 6], "dtype": DTYPES[(i // 18) % 2]}
        d = c["hdim"]
        c["b"] = b = rng.randint(1, 3)
        c["h"], c["hk"] = rng.choice(HEADS)
        grp = c["h"] // c["hk"]
        c["append"] = rng.random() < 0.6
        c["rotary"] = c["append"] and rng.random() < 0.6
        if c["mode"] == "paged":  # decode shapes only: heads / heads_k * seqlen_q <= 16
            c["sq"] = rng.randint(1, 16 // grp)
        else:
            c["sq"] = rng.choice((1, 1, 2, 3, 8, 16, 31, 64, 100, 160))
        snew = c["sq"] if c["append"] else 0
        lo = 0 if c["append"] else 1
        if c["mode"] == "paged":
            c["page"] = rng.choice((16, 32, 64, 256))
            want = snew + rng.randint(max(lo, 1), 300)
            c["max_blocks"] = -(-want // c["page"])
            cap = c["max_blocks"] * c["page"]
        else:
            cap = snew + rng.randint(lo, 300)
        c["capacity"] = cap
        c["lens"] = [rng.choice((lo, cap - snew, rng.randint(lo, cap - snew), rng.randint(lo, cap - snew)))
                     for _ in range(b)]
        c["causal"] = rng.random() < 0.5
        c["window"] = random_window(rng, cap, c["causal"]) if rng.random() < 0.3 else (-1, -1)
        random_mods(rng, c)
        c["num_splits"] = rng.choice((0, 1, 3))
        if c["mode"] == "batch_idx":
            n_slots = b + rng.randint(1, 3)
            c["slots"] = rng.sample(range(n_slots), b)
            c["n_slots"] = n_slots
        else:
            c["slots"] = list(range(b))
            c["n_slots"] = b
        if c["mode"] == "paged":
            nblocks = b * c["max_blocks"] + rng.randint(0, 3)
            ids = list(range(nblocks))
            rng.shuffle(ids)
            c["nblocks"] = nblocks
            c["table"] = [ids[j * c["max_blocks"]:(j + 1) * c["max_blocks"]] for j in range(b)]
        c["kv_packed"] = rng.random() < 0.3
        c["layout"] = rng.choice(("contig", "transposed", "padded"))
        if c["rotary"]:
            c["rotary_dim"] = rng.choice(sorted({16, max(16, (d // 2) // 16 * 16), d}))
            c["interleaved"] = rng.random() < 0.5
            c["seqlen_ro"] = cap + rng.randint(0, 7)
        c["rl"] = rng.random() < 0.5
        cases.append(c)
    return cases


def cache_index(c, bi, positions, device):
    """Physical (dim 0, dim 1) indices of sequence bi's logical cache positions."""
    if c["mode"] == "paged":
        page, table = c["page"], c["table"][bi]
        i0 = [table[p // page] for p in positions]
        i1 = [p % page for p in positions]
    else:
        i0 = [c["slots"][bi]] * len(positions)
        i1 = list(positions)
    return (torch.tensor(i0, dtype=torch.long, device=device), torch.tensor(i1, dtype=torch.long, device=device))


def run_kvcache(c, chk, device=None):
    device = DEVICE if device is None else device
    g = generator(c["seed"], device)
    b, sq, h, hk, d, dt = c["b"], c["sq"], c["h"], c["hk"], c["hdim"], c["dtype"]
    snew = sq if c["append"] else 0
    lens = c["lens"]
    q = make_qkv(g, (b, sq), (b, 1), h, hk, d, dt, c["layout"], device)[0]
    phys = (c["nblocks"], c["page"]) if c["mode"] == "paged" else (c["n_slots"], c["capacity"])
    if c["kv_packed"]:
        base = torch.full((*phys, 2, hk, d), POISON, dtype=dt, device=device)
        kc, vc = base[:, :, 0], base[:, :, 1]
    else:
        kc = torch.full((*phys, hk, d), POISON, dtype=dt, device=device)
        vc = torch.full((*phys, hk, d), POISON, dtype=dt, device=device)
    for bi in range(b):
        if lens[bi]:
            i0, i1 = cache_index(c, bi, range(lens[bi]), device)
            kc[i0, i1] = randn(g, (lens[bi], hk, d), dt, device)
            vc[i0, i1] = randn(g, (lens[bi], hk, d), dt, device)
    k_new = v_new = cos = sin = None
    if c["append"]:
        k_new, v_new = randn(g, (b, snew, hk, d), dt, device), randn(g, (b, snew, hk, d), dt, device)
    if c["rotary"]:
        rd = c["rotary_dim"]
        inv = 10000.0 ** (-torch.arange(0, rd, 2, device=device, dtype=torch.float64) / rd)
        ang = torch.arange(c["seqlen_ro"], device=device, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = ang.cos().to(dt), ang.sin().to(dt)
    slopes, sinks = mods_tensors(g, c, b, device, sinks_grad=False)
    lens_t = torch.tensor(lens, dtype=torch.int32, device=device)
    idx_t = torch.tensor(c["slots"], dtype=torch.int32, device=device) if c["mode"] == "batch_idx" else None
    table_t = torch.tensor(c["table"], dtype=torch.int32, device=device) if c["mode"] == "paged" else None
    scale = eff_scale(c)
    kc0, vc0, lens0, q0 = kc.clone(), vc.clone(), lens_t.clone(), q.clone()
    new0 = (k_new.clone(), v_new.clone()) if c["append"] else None
    table0 = table_t.clone() if table_t is not None else None

    res = flash_attn_with_kvcache(q, kc, vc, k=k_new, v=v_new, rotary_cos=cos, rotary_sin=sin, cache_seqlens=lens_t,
                                  cache_batch_idx=idx_t, block_table=table_t, softmax_scale=c["scale"],
                                  causal=c["causal"], window_size=c["window"], softcap=c["softcap"],
                                  rotary_interleaved=c.get("interleaved", True), alibi_slopes=slopes,
                                  num_splits=c["num_splits"], return_softmax_lse=c["rl"], sinks=sinks)
    if c["rl"]:
        assert isinstance(res, tuple) and len(res) == 2, "return_softmax_lse: (out, lse) expected"
        out, lse = res
        assert lse.dtype == torch.float32 and tuple(lse.shape) == (b, h, sq), f"lse {lse.dtype} {tuple(lse.shape)}"
    else:
        assert isinstance(res, torch.Tensor)
        out, lse = res, None
    assert out.dtype == dt and out.device == q.device and tuple(out.shape) == (b, sq, h, d), \
        f"out {out.dtype} {out.device} {tuple(out.shape)}"

    # inputs other than the cache untouched
    chk.exact("cache_seqlens was modified", torch.equal(lens_t, lens0))
    chk.exact("q was modified", torch.equal(q, q0))
    if new0 is not None:
        chk.exact("k/v (new tokens) were modified", torch.equal(k_new, new0[0]) and torch.equal(v_new, new0[1]))
    if table0 is not None:
        chk.exact("block_table was modified", torch.equal(table_t, table0))

    step = c["causal"] or tuple(c["window"]) != (-1, -1)  # queries at cache_seqlens + t, else all at cache_seqlens
    written = torch.zeros(phys, dtype=torch.bool, device=device)
    outs, lses, viss, lo, ll = [], [], [], [], []
    for bi in range(b):
        L = lens[bi]
        i0, i1 = cache_index(c, bi, range(L + snew), device)
        k_old, v_old = kc0[i0[:L], i1[:L]], vc0[i0[:L], i1[:L]]
        q64, qlp = q[bi].double(), q[bi]
        k64, klp, v64, vlp = k_old.double(), k_old, v_old.double(), v_old
        if c["append"]:
            kn, vn = k_new[bi], v_new[bi]
            ni0, ni1 = i0[L:], i1[L:]
            written[ni0, ni1] = True
            chk.exact("appended v differs from the new v", torch.equal(vc[ni0, ni1], vn))
            if c["rotary"]:
                kn64 = rotate(kn.double(), cos[L:L + snew].double(), sin[L:L + snew].double(), c["interleaved"])
                knlp = rotate(kn.float(), cos[L:L + snew].float(), sin[L:L + snew].float(), c["interleaved"]).to(dt)
                # stored rotated keys: within one unit in the last place of the exact rotation
                ulp = 2.0 ** -(10 if dt == torch.float16 else 7)
                diff = (kc[ni0, ni1].double() - kn64).abs()
                chk.exact(f"appended rotated k off by {amax(diff - kn64.abs() * ulp):.3g} beyond 1 ulp",
                          bool((diff <= kn64.abs() * ulp + 1e-6).all()))
                pos = (L + torch.arange(sq, device=device)) if step else torch.full((sq,), L, device=device)
                q64 = rotate(q64, cos[pos].double(), sin[pos].double(), c["interleaved"])
                qlp = rotate(q[bi].float(), cos[pos].float(), sin[pos].float(), c["interleaved"]).to(dt)
            else:
                kn64, knlp = kn.double(), kn
                chk.exact("appended k differs from the new k", torch.equal(kc[ni0, ni1], kn))
            k64, klp = torch.cat([k64, kn64]), torch.cat([klp, knlp])
            v64, vlp = torch.cat([v64, vn.double()]), torch.cat([vlp, vn])
        sl = slopes_of(slopes, bi)
        o, l, vis = ref_seq(q64, k64, v64, scale, c["causal"], c["window"], c["softcap"],
                            None if sl is None else sl.double(), None if sinks is None else sinks.double())
        outs.append(o)
        lses.append(l)
        viss.append(vis)
        o, l, _ = lowp_seq(qlp, klp, vlp, None, scale, c["causal"], c["window"], c["softcap"], sl, sinks)
        lo.append(o)
        ll.append(l)
    # everything but the appended tokens (old keys, poison past the lengths, unused slots/pages) bit-identical
    chk.exact("k_cache changed outside the appended tokens", torch.equal(kc[~written], kc0[~written]))
    chk.exact("v_cache changed outside the appended tokens", torch.equal(vc[~written], vc0[~written]))

    out64, lse64, vis = torch.stack(outs), torch.stack(lses), torch.stack(viss)
    chk.check("out", out, out64, torch.stack(lo), ATOL[dt])
    chk.exact("out rows with no visible key are not 0", bool((out[~vis] == 0).all()))
    if lse is not None:
        m = vis[:, None, :].expand(b, h, sq)
        chk.check("lse", lse[m], lse64[m], torch.stack(ll)[m], LSE_ATOL)


def test_kvcache_random(capsys):
    cases = kvcache_cases()
    chk = Checker("kvcache fwd")
    t0 = time.time()
    with torch.no_grad():
        chk.run(cases, run_kvcache)
    chk.finish(capsys, cases, t0)


# ----------------------------------------------------------------------------------------------
# Errors: exceptions naming the argument


def names(exc, *args):
    """Whether the exception's message names one of args as a word (so `k` is not found in `k_cache`)."""
    msg = str(exc.value)
    return any(re.search(r"(?<![A-Za-z0-9_])" + re.escape(a) + r"(?![A-Za-z0-9_])", msg) for a in args)


def small(b=1, s=32, h=2, hk=2, d=64, dt=torch.bfloat16, device=None, sk=None):
    device = DEVICE if device is None else device
    g = generator(7, device)
    sk = s if sk is None else sk
    return randn(g, (b, s, h, d), dt, device), randn(g, (b, sk, hk, d), dt, device), randn(g, (b, sk, hk, d), dt, device)


def test_errors(capsys):
    n = 0
    q, k, v = small()

    def expect(exc_types, argnames, fn, *a, **kw):
        nonlocal n
        with pytest.raises(exc_types) as e:
            fn(*a, **kw)
        assert names(e, *argnames), f"{type(e.value).__name__} does not name {argnames}: {e.value}"
        n += 1
        return e

    # wrong dtype -> TypeError
    expect(TypeError, ("q", "k", "v"), flash_attn_func, q.float(), k.float(), v.float())
    expect(TypeError, ("k",), flash_attn_func, q, k.half(), v)
    expect(TypeError, ("v",), flash_attn_func, q, k, v.float())
    # CPU tensor -> ValueError
    expect(ValueError, ("v",), flash_attn_func, q, k, v.cpu())
    expect(ValueError, ("q", "k", "v"), flash_attn_func, q.cpu(), k.cpu(), v.cpu())
    # mismatched shapes -> ValueError
    expect(ValueError, ("k", "v"), flash_attn_func, q, k, small(sk=33)[2])
    expect(ValueError, ("k", "v", "q"), flash_attn_func, q, *small(b=2)[1:])
    expect(ValueError, ("k", "v", "q"), flash_attn_func, small(h=6)[0], *small(hk=4)[1:])
    expect(ValueError, ("k", "v", "q"), flash_attn_func, q, *small(d=128)[1:])
    # non-contiguous last dim -> ValueError
    g = generator(8)
    expect(ValueError, ("q",), flash_attn_func, randn(g, (1, 32, 2, 128), torch.bfloat16)[..., ::2], k, v)
    expect(ValueError, ("k",), flash_attn_func, q, randn(g, (1, 32, 2, 128), torch.bfloat16)[..., ::2], v)
    # unsupported head_dim -> ValueError mentioning head_dim
    expect(ValueError, ("head_dim",), flash_attn_func, *small(d=80))

    # varlen: offsets of the wrong dtype / on the CPU
    qv, kv, vv = q[0], k[0], v[0]
    cu = torch.tensor([0, 32], dtype=torch.int32, device="cuda")
    expect((TypeError, ValueError), ("cu_seqlens_q",), flash_attn_varlen_func, qv, kv, vv, cu.long(), cu, 32, 32)
    expect(ValueError, ("cu_seqlens_k",), flash_attn_varlen_func, qv, kv, vv, cu, cu.cpu(), 32, 32)
    expect(TypeError, ("q", "k", "v"), flash_attn_varlen_func, qv.float(), kv.float(), vv.float(), cu, cu, 32, 32)

    # kvcache: cache dtype, lengths dtype, page size, block_table with cache_batch_idx
    lens = torch.tensor([5], dtype=torch.int32, device="cuda")
    qd = q[:, :1]
    kc, vc = small(s=64)[1:]
    expect(TypeError, ("k_cache",), flash_attn_with_kvcache, qd, kc.half(), vc, cache_seqlens=lens)
    expect((TypeError, ValueError), ("cache_seqlens",), flash_attn_with_kvcache, qd, kc, vc, cache_seqlens=lens.long())
    pages8 = randn(g, (4, 8, 2, 64), torch.bfloat16)
    table = torch.tensor([[0, 1]], dtype=torch.int32, device="cuda")
    expect(ValueError, ("k_cache", "block_table", "page_size"), flash_attn_with_kvcache, qd, pages8, pages8.clone(),
           cache_seqlens=lens, block_table=table)
    pages16 = randn(g, (4, 16, 2, 64), torch.bfloat16)
    expect(ValueError, ("cache_batch_idx", "block_table"), flash_attn_with_kvcache, qd, pages16, pages16.clone(),
           cache_seqlens=lens, block_table=table, cache_batch_idx=torch.tensor([0], dtype=torch.int32, device="cuda"))
    report(capsys, f"errors: {n} bad calls raised the expected exception naming the argument")


# ----------------------------------------------------------------------------------------------
# Device, stream and allocator


def simple_case(seed=11, b=2, s=200, h=4, hk=2, d=128, dt=torch.bfloat16, causal=True):
    c = {"i": 0, "seed": seed, "hdim": d, "dtype": dt, "b": b, "h": h, "hk": hk, "sq": s, "sk": s, "causal": causal,
         "window": (-1, -1), "softcap": 0.0, "alibi": None, "sinks": False, "scale": None, "layout": "contig",
         "do_layout": "contig", "rap": True}
    return c


def sleep_on_current_stream(ms=30):
    if hasattr(torch.cuda, "_sleep"):
        torch.cuda._sleep(int(ms * 2_000_000))  # cycles: ~ms milliseconds at ~2 GHz
    else:
        a = torch.randn(4096, 4096, device="cuda")
        for _ in range(20):
            a = a @ a
            a = a / a.norm()


def test_current_stream(capsys):
    """Run under a side stream whose inputs are only written after a long sleep on that stream; read
    the results on the same stream and synchronize that stream only. Work launched on another stream
    would read the inputs before they are written, or be read before it is done."""
    c = simple_case()
    g = generator(c["seed"])
    src = [randn(g, (2, 200, 4, 128), torch.bfloat16), randn(g, (2, 200, 2, 128), torch.bfloat16),
           randn(g, (2, 200, 2, 128), torch.bfloat16)]
    do_src = randn(g, (2, 200, 4, 128), torch.bfloat16)
    ref_inputs = [leaf(x.clone()) for x in src]
    # deterministic=True: dQ's accumulation order is otherwise free to vary between runs
    ref_out = flash_attn_func(*ref_inputs, causal=True, deterministic=True)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, do_src)
    ref_out = ref_out.detach()
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert torch.cuda.current_stream() == side
        q, k, v = (torch.zeros_like(x) for x in src)
        do = torch.zeros_like(do_src)
        sleep_on_current_stream()
        for dst, s in zip((q, k, v, do), (*src, do_src)):
            dst.copy_(s)
        q, k, v = (leaf(x) for x in (q, k, v))
        out = flash_attn_func(q, k, v, causal=True, deterministic=True)
        grads = torch.autograd.grad(out, (q, k, v), do)
        seen = [x.detach().clone() for x in (out, *grads)]  # ordered after ours on the side stream only
    side.synchronize()
    assert out.device == q.device
    same = [torch.equal(a, b) for a, b in zip(seen, (ref_out, *ref_grads))]
    assert all(same), f"results read on the current stream differ from a synchronized run: {same}"
    # and the synchronized run itself is right
    chk = Checker("stream")
    chk.case = "stream"
    run_dense(c, chk)
    report(capsys, f"current stream: fwd+bwd under a side torch.cuda.Stream match a synchronized run bit for bit; "
                   f"worst error/tolerance of the run {chk.worst:.3f}")


def test_output_is_torch_allocation(capsys):
    q, k, v = small(b=2, s=256, h=4, hk=4, d=128)
    torch.cuda.synchronize()
    with torch.no_grad():
        before = torch.cuda.memory_allocated()
        out = flash_attn_func(q, k, v)
        after = torch.cuda.memory_allocated()
    assert isinstance(out, torch.Tensor) and out.is_cuda and out.device == q.device
    assert out.dtype == q.dtype and out.shape == q.shape
    nbytes = out.numel() * out.element_size()
    assert after - before >= nbytes, f"memory_allocated grew by {after - before} B, the output has {nbytes} B"
    assert out.untyped_storage().device == q.device
    del out
    torch.cuda.synchronize()
    freed = after - torch.cuda.memory_allocated()
    assert freed >= nbytes, f"dropping the output freed {freed} B of torch's memory, it has {nbytes} B"
    report(capsys, f"allocator: output of {nbytes} B counted by torch.cuda.memory_allocated "
                   f"(+{after - before} B on the call, -{freed} B when dropped)")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs torch.cuda.device_count() > 1")
def test_second_device(capsys):
    dev = torch.device("cuda", 1)
    with torch.cuda.device(0):  # the current device is not the tensors' device
        chk = Checker("device 1")
        c = simple_case()
        chk.case = "dense"
        run_dense(c, chk, device=dev)
        kc = kvcache_cases()[0]
        kc.update(mode="contig", append=True, rotary=False, slots=list(range(kc["b"])), n_slots=kc["b"], kv_packed=False)
        kc["capacity"] = max(kc["capacity"], kc["sq"] + max(kc["lens"]))
        chk.case = "kvcache"
        run_kvcache(kc, chk, device=dev)
    side = torch.cuda.Stream(device=dev)
    with torch.cuda.stream(side):
        q, k, v = small(device=dev)
        out = flash_attn_func(q, k, v, causal=True)
        ref = flash_attn_func(q, k, v, causal=True)
    side.synchronize()
    assert out.device == dev and torch.equal(out, ref)
    report(capsys, f"second device: dense fwd+bwd and kvcache on cuda:1 while cuda:0 is current, "
                   f"worst error/tolerance {chk.worst:.3f}")


# ----------------------------------------------------------------------------------------------
# Dropout and deterministic backward


def test_dropout_reproducible(capsys):
    g = generator(21)
    q, k, v = (leaf(x) for x in make_qkv(g, (2, 200), (2, 230), 4, 2, 64, torch.bfloat16, "contig"))
    do = randn(g, (2, 200, 4, 64), torch.bfloat16)

    def run(seed, p=0.17):
        torch.manual_seed(seed)
        out = flash_attn_func(q, k, v, dropout_p=p, causal=True, deterministic=True)
        return [x.detach().clone() for x in (out, *torch.autograd.grad(out, (q, k, v), do))]

    a, b, c, none = run(1234), run(1234), run(4321), run(1234, p=0.0)
    assert all(torch.isfinite(x.float()).all() for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b)), "same torch.manual_seed: outputs/grads differ"
    assert not torch.equal(a[0], c[0]), "different seeds gave the same dropout output"
    assert not any(torch.equal(x, y) for x, y in zip(a[1:], c[1:])), "different seeds gave identical gradients"
    assert not torch.equal(a[0], none[0]), "dropout_p=0.17 gave the output of dropout_p=0"
    report(capsys, "dropout: same seed -> identical out/dq/dk/dv; another seed -> different")


def test_deterministic_backward(capsys):
    g = generator(22)
    q, k, v = (leaf(x) for x in make_qkv(g, (2, 300), (2, 300), 8, 2, 128, torch.bfloat16, "contig"))
    do = randn(g, (2, 300, 8, 128), torch.bfloat16)
    runs = []
    for _ in range(3):
        out = flash_attn_func(q, k, v, causal=False, deterministic=True)
        runs.append(torch.autograd.grad(out, (q, k, v), do))
    assert all(torch.equal(x, y) for r in runs[1:] for x, y in zip(runs[0], r)), "deterministic=True: grads differ"
    report(capsys, "deterministic: 3 backward runs bitwise identical (dq, dk, dv)")


def compiled_matches_eager(step, inputs, do):
    """`step` traced by Dynamo with no graph break, and compiled (fullgraph, aot_eager) giving
    the eager call's output and gradients of `inputs` bit for bit; returns the graph count."""
    explain = torch._dynamo.explain(step)(*inputs)
    assert explain.graph_break_count == 0, f"graph breaks: {explain.break_reasons}"
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out_c = compiled(*inputs)
    grads_c = torch.autograd.grad(out_c, inputs, do)
    out_e = step(*inputs)
    grads_e = torch.autograd.grad(out_e, inputs, do)
    assert torch.equal(out_c, out_e), "compiled forward differs from eager"
    assert all(torch.equal(a, b) for a, b in zip(grads_c, grads_e)), "compiled backward differs from eager"
    return explain.graph_count


def test_torch_compile_fullgraph(capsys):
    """torch.compile traces flash_attn_func (custom operators with fake implementations and a
    registered autograd formula) without a graph break, and the compiled forward and backward
    give the eager call's results bit for bit (deterministic backward)."""
    if not hasattr(torch, "compile") or not hasattr(torch.library, "custom_op"):
        pytest.skip("this torch has no torch.compile / torch.library.custom_op")
    g = generator(23)
    q, k, v = (leaf(x) for x in make_qkv(g, (2, 200), (2, 260), 8, 2, 128, torch.bfloat16, "transposed"))
    do = randn(g, (2, 200, 8, 128), torch.bfloat16)

    def step(q, k, v):
        return flash_attn_func(q, k, v, causal=True, window_size=(64, 0), softcap=20.0, deterministic=True)

    graphs = compiled_matches_eager(step, (q, k, v), do)
    report(capsys, f"torch.compile: fullgraph, {graphs} graph, 0 breaks; forward and backward bit-identical to eager")


def test_torch_compile_varlen_fullgraph(capsys):
    """torch.compile traces flash_attn_varlen_func (`flash_attn_rs::varlen_fwd`/`varlen_bwd`)
    without a graph break, and the compiled forward and backward give the eager call's results
    bit for bit (deterministic backward)."""
    if not hasattr(torch, "compile") or not hasattr(torch.library, "custom_op"):
        pytest.skip("this torch has no torch.compile / torch.library.custom_op")
    g = generator(25)
    lens_q, lens_k = [37, 200, 1, 90], [64, 260, 5, 90]
    offsets = lambda lens: torch.tensor([sum(lens[:i]) for i in range(len(lens) + 1)], dtype=torch.int32, device=DEVICE)  # noqa: E731
    cu_q, cu_k = offsets(lens_q), offsets(lens_k)
    q = leaf(randn(g, (sum(lens_q), 8, 128), torch.bfloat16))
    k, v = (leaf(randn(g, (sum(lens_k), 2, 128), torch.bfloat16)) for _ in range(2))
    do = randn(g, (sum(lens_q), 8, 128), torch.bfloat16)

    def step(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True,
                                      window_size=(64, 0), softcap=20.0, deterministic=True)

    graphs = compiled_matches_eager(step, (q, k, v), do)
    report(capsys, f"torch.compile varlen: fullgraph, {graphs} graph, 0 breaks; forward and backward bit-identical to eager")


def test_remembered_checks(capsys):
    """A call like an earlier one (same shapes, strides, dtypes, devices and options) reuses the
    earlier call's checks: it must give what a first call gives on the same inputs, and a call
    that differs in any checked attribute must be checked afresh."""
    from flash_attn_rs import interface

    g = generator(24)
    shapes = ((2, 200), (2, 260), 8, 2, 128, torch.bfloat16)
    opts = dict(causal=True, softcap=15.0, deterministic=True)
    interface._PLANS.clear()
    runs = []
    for i in range(3):  # the first call is checked; the next two reuse it with fresh inputs
        q, k, v = (leaf(x) for x in make_qkv(g, *shapes, "transposed"))
        do = randn(g, (2, 200, 8, 128), torch.bfloat16)
        out = flash_attn_func(q, k, v, **opts)
        grads = torch.autograd.grad(out, (q, k, v), do)
        with torch.no_grad():
            out_ng, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True, **opts)
            out_scratch = flash_attn_func(q, k, v, **opts)  # its LSE into the scratch rows
        saved = dict(interface._PLANS)
        interface._PLANS.clear()  # the same inputs through the full checks
        out_first = flash_attn_func(q, k, v, **opts)
        grads_first = torch.autograd.grad(out_first, (q, k, v), do)
        interface._PLANS.clear()
        with torch.no_grad():
            _, lse_first, _ = flash_attn_func(q, k, v, return_attn_probs=True, **opts)
        interface._PLANS.update(saved)
        assert len(saved) == 1, f"{len(saved)} remembered plans for one kind of call"
        assert torch.equal(out, out_first) and torch.equal(out_ng, out_first) and torch.equal(out_scratch, out_first), \
            f"call {i}: output differs"
        assert all(torch.equal(a, b) for a, b in zip(grads, grads_first)), f"call {i}: gradients differ"
        assert lse.shape == (2, 8, 200) and torch.equal(lse, lse_first), f"call {i}: LSE differs"
        runs.append(out)
    assert not torch.equal(runs[0], runs[1]), "fresh inputs gave the same output"
    # the same shapes with anything checked changed: checked again
    q, k, v = make_qkv(g, *shapes, "transposed")
    with pytest.raises(ValueError) as e:
        flash_attn_func(q, k, v.cpu(), **opts)
    assert names(e, "v")
    with pytest.raises(TypeError) as e:
        flash_attn_func(q, k.half(), v, **opts)
    assert names(e, "k")
    wide = randn(g, (2, 200, 8, 256), torch.bfloat16)
    with pytest.raises(ValueError) as e:
        flash_attn_func(wide[..., ::2], k, v, **opts)
    assert names(e, "q")
    # a contiguous q of the same shape (other strides) is a new plan, and right
    chk = Checker("remembered")
    chk.case = "remembered"
    c = simple_case()
    run_dense(c, chk)
    run_dense(c, chk)
    report(capsys, f"remembered checks: 3 calls x (grad, no-grad, LSE) bit-identical to freshly checked calls; "
                   f"changed device/dtype/strides re-checked; {len(interface._PLANS)} plans; "
                   f"worst error/tolerance {chk.worst:.3f}")


def test_fp8_forward(capsys):
    """float8_e4m3fn q, k, v with per-(batch, K/V head) and per-tensor (expanded) descales run the
    FP8 forward. Against the f64 reference on the dequantized inputs, out is held to twice the
    error of a plain FP8 implementation (written here: scores in f64, exp(s - max) rounded to
    e4m3 before P V, the row sum of the unrounded ones, out cast to bfloat16) plus one bfloat16
    rounding of max|out| and 2^-11 * max|V| * max|score|-sum for the FP8 tensor cores' reduced
    accumulation precision (the Rust property test derives the same bound); a wrong descale, head
    or layout moves out by O(max|V|)."""
    major, _ = torch.cuda.get_device_capability()
    if major != 9 or not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("the FP8 forward needs Hopper and torch.float8_e4m3fn")
    g = generator(31)
    worst = 0.0
    for case, (b, sq, sk, h, hk, causal, per_head, d) in enumerate(
        [(2, 200, 300, 8, 2, False, True, 128), (1, 257, 257, 4, 4, True, False, 128),
         (2, 64, 700, 4, 1, False, False, 128), (1, 200, 300, 4, 2, False, True, 256),
         (2, 130, 130, 2, 2, True, False, 256)]
    ):
        x = [torch.randn(s, generator=g, device=DEVICE, dtype=torch.float32)
             for s in ((b, sq, h, d), (b, sk, hk, d), (b, sk, hk, d))]
        if per_head:
            scales = [torch.rand((b, hk), generator=g, device=DEVICE) * 3.75 + 0.25 for _ in range(3)]
        else:
            scales = [torch.full((1, 1), f, device=DEVICE).expand(b, hk) for f in (0.5, 2.0, 0.25)]
        group = h // hk
        by_q_head = scales[0].repeat_interleave(group, dim=1)  # (b, h)
        per = [by_q_head[:, None, :, None], scales[1][:, None, :, None], scales[2][:, None, :, None]]
        stored = [(t / s).to(torch.float8_e4m3fn) for t, s in zip(x, per)]
        exact = [t.to(torch.float64) * s.to(torch.float64) for t, s in zip(stored, per)]
        out = flash_attn_func(*stored, causal=causal, q_descale=scales[0], k_descale=scales[1], v_descale=scales[2])
        assert out.dtype == torch.bfloat16 and out.shape == (b, sq, h, d)
        qe, ke, ve = exact
        ke, ve = (t.repeat_interleave(group, dim=2) for t in (ke, ve))
        s = torch.einsum("bihd,bjhd->bhij", qe, ke) / math.sqrt(d)
        if causal:
            i = torch.arange(sq, device=DEVICE)[:, None]
            j = torch.arange(sk, device=DEVICE)[None, :]
            s = s.masked_fill(j > i + sk - sq, float("-inf"))
        m = s.amax(-1, keepdim=True)
        e = torch.exp(s - m)
        want = torch.einsum("bhij,bjhd->bihd", e / e.sum(-1, keepdim=True), ve)
        p8 = e.to(torch.float8_e4m3fn).to(torch.float64)
        naive = (torch.einsum("bhij,bjhd->bihd", p8, ve) / e.sum(-1)[..., None].transpose(1, 2)).to(torch.bfloat16)
        magnitude = (torch.einsum("bihd,bjhd->bhij", qe.abs(), ke.abs()) / math.sqrt(d)).max().item()
        err = (out.to(torch.float64) - want).abs().max().item()
        naive_err = (naive.to(torch.float64) - want).abs().max().item()
        tol = 2 * naive_err + 2.0 ** -8 * want.abs().max().item() + 2.0 ** -11 * magnitude * ve.abs().max().item()
        assert err <= tol, f"fp8 case {case}: error {err:.3e} > tolerance {tol:.3e} (naive {naive_err:.3e})"
        worst = max(worst, err / tol)
    report(capsys, f"fp8: 5 cases (head_dim 128 and 256, per-head and expanded per-tensor descales, GQA, causal) "
                   f"passed; worst error/tolerance {worst:.2f}")
