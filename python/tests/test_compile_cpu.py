"""torch.compile tracing of `flash_attn_func` without a GPU: the custom operators
(`flash_attn_rs::fwd`, `::bwd`) get CPU kernels here (plain attention in f32), so that Dynamo's
trace, the fake-tensor implementations and the registered autograd formula are exercised on a
machine with only a CPU build of torch. Skipped without torch; the kernels themselves are
tested on the GPU (`test_gpu.py::test_torch_compile_fullgraph`).
"""

import math

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (the CPU-side tests need none)")

from flash_attn_rs import flash_attn_func  # noqa: E402
from flash_attn_rs import interface  # noqa: E402

if not interface._MODULES.get("ops"):
    pytest.skip(f"custom operators not registered: {interface._MODULES.get('ops_error')}", allow_module_level=True)


def scores(q, k, scale, causal):
    s = q.transpose(1, 2).float() @ k.transpose(1, 2).float().transpose(-1, -2) * scale
    if causal:
        sq, sk = s.shape[-2:]
        s = s.masked_fill(~torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq), float("-inf"))
    return s


def cpu_forward(q, k, v, sinks, alibi, scale, causal, wl, wr, cap, p, seed, offset, det):
    scale = scale or 1 / math.sqrt(q.shape[-1])
    s = scores(q, k, scale, causal)
    lse = torch.logsumexp(s, -1)
    o = torch.softmax(s, -1) @ v.transpose(1, 2).float()
    return o.transpose(1, 2).to(q.dtype).contiguous(), lse


def cpu_backward(d_out, q, k, v, out, lse, sinks, alibi, scale, causal, wl, wr, cap, p, seed, offset, det):
    # The softmax backward written out: dS = P ∘ (dO·Vᵀ − rowsum(dO ∘ O)).
    scale = scale or 1 / math.sqrt(q.shape[-1])
    prob = torch.softmax(scores(q, k, scale, causal), -1)
    do, vt = d_out.transpose(1, 2).float(), v.transpose(1, 2).float()
    ot = out.transpose(1, 2).float()
    dv = prob.transpose(-1, -2) @ do
    ds = prob * (do @ vt.transpose(-1, -2) - (do * ot).sum(-1, keepdim=True))
    dq = ds @ k.transpose(1, 2).float() * scale
    dk = ds.transpose(-1, -2) @ q.transpose(1, 2).float() * scale
    back = lambda x, like: x.transpose(1, 2).to(like.dtype).contiguous()  # noqa: E731
    return back(dq, q), back(dk, k), back(dv, v), q.new_empty((0,), dtype=torch.float32)


torch.library.register_kernel("flash_attn_rs::fwd", "cpu", cpu_forward)
torch.library.register_kernel("flash_attn_rs::bwd", "cpu", cpu_backward)


def compiled_matches_reference(step, reference, inputs, do):
    """`step` traced by Dynamo with no graph break, and compiled (fullgraph, aot_eager) giving
    output and gradients of `inputs` close to autograd through `reference` in f64."""
    explain = torch._dynamo.explain(step)(*inputs)
    assert explain.graph_break_count == 0, explain.break_reasons
    torch._dynamo.reset()
    out = torch.compile(step, fullgraph=True, backend="aot_eager")(*inputs)
    grads = torch.autograd.grad(out, inputs, do)
    inputs64 = [x.detach().double().requires_grad_() for x in inputs]
    ref = reference(*inputs64)
    want = torch.autograd.grad(ref, inputs64, do.double())
    # bf16 inputs and outputs, f32 math: a few bf16 units of the values' scale.
    assert (out.double() - ref).abs().max() < 2e-2
    for got, exp in zip(grads, want):
        assert (got.double() - exp).abs().max() < 4e-2 * max(1.0, float(exp.abs().max()))


def test_compiled_flash_attn_func_has_no_graph_break_and_the_right_gradients():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 48, 4, 32, generator=gen, dtype=torch.float32).to(torch.bfloat16).requires_grad_()
               for _ in range(3))
    do = torch.randn(2, 48, 4, 32, generator=gen).to(torch.bfloat16)

    def step(q, k, v):
        return flash_attn_func(q, k, v, causal=True)

    def reference(q64, k64, v64):  # the same math in f64
        s = scores(q64, k64, 1 / math.sqrt(32), True).double()
        return (torch.softmax(s, -1) @ v64.transpose(1, 2)).transpose(1, 2)

    compiled_matches_reference(step, reference, (q, k, v), do)


def cpu_varlen_forward(q, k, v, cu_q, cu_k, used, sinks, alibi, max_q, max_k, scale, causal, wl, wr, cap, p, seed,
                       offset, det):
    # Each sequence as a dense batch of one, through the dense CPU kernel above.
    outs, lses = [], []
    for b in range(cu_q.shape[0] - 1):
        (q0, q1), (k0, k1) = (int(cu_q[b]), int(cu_q[b + 1])), (int(cu_k[b]), int(cu_k[b + 1]))
        o, lse = cpu_forward(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], None, None, scale, causal, wl, wr, cap,
                             p, seed, offset, det)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs).contiguous(), torch.cat(lses, -1).contiguous()


def cpu_varlen_backward(d_out, q, k, v, out, lse, cu_q, cu_k, sinks, alibi, max_q, max_k, scale, causal, wl, wr,
                        cap, p, seed, offset, det):
    dqs, dks, dvs = [], [], []
    for b in range(cu_q.shape[0] - 1):
        (q0, q1), (k0, k1) = (int(cu_q[b]), int(cu_q[b + 1])), (int(cu_k[b]), int(cu_k[b + 1]))
        dq, dk, dv, _ = cpu_backward(d_out[None, q0:q1], q[None, q0:q1], k[None, k0:k1], v[None, k0:k1],
                                     out[None, q0:q1], None, None, None, scale, causal, wl, wr, cap, p, seed, offset,
                                     det)
        dqs.append(dq[0])
        dks.append(dk[0])
        dvs.append(dv[0])
    return torch.cat(dqs), torch.cat(dks), torch.cat(dvs), q.new_empty((0,), dtype=torch.float32)


torch.library.register_kernel("flash_attn_rs::varlen_fwd", "cpu", cpu_varlen_forward)
torch.library.register_kernel("flash_attn_rs::varlen_bwd", "cpu", cpu_varlen_backward)


def test_compiled_flash_attn_varlen_func_has_no_graph_break_and_the_right_gradients():
    from flash_attn_rs import flash_attn_varlen_func

    gen = torch.Generator().manual_seed(1)
    lens_q, lens_k = [5, 17, 9], [7, 17, 12]
    cu_q = torch.tensor([0, 5, 22, 31], dtype=torch.int32)
    cu_k = torch.tensor([0, 7, 24, 36], dtype=torch.int32)
    q = torch.randn(sum(lens_q), 4, 32, generator=gen).to(torch.bfloat16).requires_grad_()
    k, v = (torch.randn(sum(lens_k), 4, 32, generator=gen).to(torch.bfloat16).requires_grad_() for _ in range(2))
    do = torch.randn(sum(lens_q), 4, 32, generator=gen).to(torch.bfloat16)

    def step(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True)

    def reference(q64, k64, v64):  # each sequence's attention in f64 (bottom-right causal mask)
        refs = []
        for b in range(3):
            (q0, q1), (k0, k1) = (int(cu_q[b]), int(cu_q[b + 1])), (int(cu_k[b]), int(cu_k[b + 1]))
            s = scores(q64[None, q0:q1], k64[None, k0:k1], 1 / math.sqrt(32), True).double()
            refs.append((torch.softmax(s, -1) @ v64[None, k0:k1].transpose(1, 2)).transpose(1, 2)[0])
        return torch.cat(refs)

    compiled_matches_reference(step, reference, (q, k, v), do)
