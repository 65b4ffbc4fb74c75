"""FlashAttention-2's Python functions over the Rust kernels.

Every tensor argument is checked here (a CUDA tensor, float16/bfloat16 or the stated dtype, the
stated rank, a contiguous last dimension, one device) and then handed to the Rust side as
``(address, shape, strides)``: views are used as they are, never copied. Outputs are allocated
with torch (its caching allocator and memory statistics see them) on the inputs' device, and
every launch goes on ``torch.cuda.current_stream(device)``, in the device's primary context (the
one torch uses). The backward's scratch (the f32 dQ accumulator and row statistics, O(seqlen))
comes from the library's own stream-ordered pool, not from torch's allocator. An LSE that is
neither returned nor kept for a backward goes to per-device scratch rows (`_SCRATCH`).

The checks need no torch (they read only the tensors' attributes), so the package imports and
its checks are tested without torch. Where torch is installed it is imported with the package,
and the dense function is also registered as custom operators for torch.compile (`_ops`).
"""

import math

_DTYPES = {"torch.float16": "f16", "torch.bfloat16": "bf16"}


_MODULES = {}


def _torch():
    torch = _MODULES.get("torch")
    if torch is None:
        import torch

        _MODULES["torch"] = torch
    return torch


def _core():
    core = _MODULES.get("core")
    if core is None:
        from . import _core as core

        _MODULES["core"] = core
        _MODULES["head_dims"] = frozenset(core.supported_head_dims())
    return core


# ---------------------------------------------------------------------------------------------
# Argument checks (no torch needed: they read only the tensor's attributes)


def _check(name, t, rank, dtype=None, device=None, like=None):
    """Checks one tensor: a CUDA tensor (on cuda:`device` when given) of `dtype` (None:
    float16/bfloat16, and q's dtype `like` when given) and rank `rank`, with a contiguous last
    dimension. Returns (device ordinal, dtype name, shape, strides)."""
    try:
        shape, strides, dev, kind = t.shape, t.stride(), t.device, str(t.dtype)
        t.data_ptr
    except AttributeError:
        raise TypeError(f"{name}: a torch tensor is expected, got {type(t).__name__}") from None
    if getattr(dev, "type", None) != "cuda":
        raise ValueError(f"{name}: a CUDA tensor is expected, got a tensor on {dev}")
    index = dev.index or 0
    if dtype is None and kind not in _DTYPES:
        raise TypeError(f"{name}: dtype {kind}; torch.float16 or torch.bfloat16 expected")
    if dtype is not None and kind != dtype:
        raise TypeError(f"{name}: dtype {kind}; {dtype} expected")
    if like is not None and kind != like:
        raise TypeError(f"{name}: dtype {kind} differs from q's {like}")
    if device is not None and index != device:
        raise ValueError(f"{name}: on cuda:{index}, the other tensors on cuda:{device}")
    if len(shape) != rank:
        raise ValueError(f"{name}: {len(shape)} dimensions (shape {tuple(shape)}); {rank} expected")
    if rank > 0 and shape[-1] != 1 and strides[-1] != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous (stride 1); strides are {tuple(strides)}")
    return index, kind, shape, strides


def _descriptor(address, shape, strides):
    """(address, shape, strides) as the Rust side takes it: a 4-D tensor's, or a 3-D packed
    one's as (1, total, h, d)."""
    if len(shape) == 3:
        return (address, (1,) + tuple(shape), (strides[0] * max(shape[0], 1), strides[0], strides[1]))
    return (address, tuple(shape), tuple(strides[:3]))


def _tensor(name, t, rank, device=None, like=None):
    """`_check` of a float16/bfloat16 tensor, returning (device ordinal, dtype name,
    descriptor)."""
    index, kind, shape, strides = _check(name, t, rank, device=device, like=like)
    return index, kind, _descriptor(t.data_ptr(), shape, strides)


def _desc(t):
    return _descriptor(t.data_ptr(), t.shape, t.stride())


def _buf(t):
    return (t.data_ptr(), t.numel())


def _flat(name, t, dtype, shapes, device):
    """A small contiguous device array (slopes, sinks, offsets, lengths) of one of `shapes`."""
    _check(name, t, len(t.shape) if hasattr(t, "shape") else 1, dtype, device)
    if tuple(t.shape) not in [tuple(s) for s in shapes]:
        raise ValueError(f"{name}: shape {tuple(t.shape)}; one of {[tuple(s) for s in shapes]} expected")
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")


def _window(window_size):
    try:
        left, right = (int(x) for x in window_size)
    except (TypeError, ValueError):
        raise ValueError(f"window_size: a pair (left, right) is expected, got {window_size!r}") from None
    if left < -1 or right < -1:
        raise ValueError(f"window_size: {window_size!r}; each side is -1 (unbounded) or at least 0")
    return None if (left, right) == (-1, -1) else (left, right)


def _scalars(softmax_scale, softcap, dropout_p, head_dim):
    if softmax_scale is not None:
        softmax_scale = float(softmax_scale)
        if not math.isfinite(softmax_scale) or softmax_scale <= 0:
            raise ValueError(f"softmax_scale: {softmax_scale}; a positive finite number is expected")
    softcap = float(softcap or 0.0)
    if softcap < 0 or not math.isfinite(softcap):
        raise ValueError(f"softcap: {softcap}; 0 (off) or a positive number is expected")
    dropout_p = float(dropout_p or 0.0)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: {dropout_p}; a probability in [0, 1) is expected")
    dims = _MODULES.get("head_dims")  # from the extension, loaded with the package
    if dims is not None and head_dim not in dims:
        raise ValueError(f"q: head_dim {head_dim} is not supported (supported: {sorted(dims)})")
    return softmax_scale, (softcap if softcap > 0 else None), dropout_p


def _modifiers(alibi_slopes, sinks, batch, heads, device):
    if alibi_slopes is not None:
        _flat("alibi_slopes", alibi_slopes, "torch.float32", [(heads,), (batch, heads)], device)
    if sinks is not None:
        _flat("sinks", sinks, "torch.float32", [(heads,)], device)


def _dropout_state(dropout_p, device):
    """(p, seed, offset) from torch's CUDA generator of `device`, so that torch.manual_seed
    reproduces a run; the generator's offset is advanced past this call."""
    if dropout_p == 0.0:
        return None
    torch = _torch()
    gen = torch.cuda.default_generators[device]
    seed = gen.initial_seed() & ((1 << 64) - 1)
    try:
        offset = gen.get_offset()
        # The mask is keyed by (seed, offset, b, h, i, j): a fresh offset a call is enough;
        # torch's CUDA generator takes offsets in steps of 4.
        gen.set_offset(offset + 4)
    except (AttributeError, RuntimeError):  # a torch without offsets: draw one from its RNG
        offset = int(torch.randint(0, 1 << 62, (1,)).item())
    return (dropout_p, seed, offset)


def _options(softmax_scale, causal, deterministic, window, softcap, alibi_slopes, sinks, dropout):
    if not causal and not deterministic and window is None and softcap is None and alibi_slopes is None \
            and sinks is None and dropout is None and softmax_scale is None:
        return None  # every option off: the Rust side's defaults
    return (
        softmax_scale,
        bool(causal),
        bool(deterministic),
        window,
        softcap,
        None if alibi_slopes is None else _buf(alibi_slopes),
        None if sinks is None else _buf(sinks),
        dropout,
    )


def _stream(device):
    """The raw handle of torch's current stream on `device` (torch's own fast accessor, the one
    Triton uses, where it exists)."""
    torch = _torch()
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return raw(device) if raw is not None else torch.cuda.current_stream(device).cuda_stream


def _dtype_name(t):
    return _DTYPES[str(t.dtype)]


def _last_contiguous(t):
    return t if t.shape[-1] == 1 or t.stride()[-1] == 1 else t.contiguous()


def _dense_forward(q, checked, opts):
    """The forward into torch-allocated O and LSE; `checked` is (device, dtype name, and the
    descriptors of q, k, v) from `_tensor`."""
    torch = _MODULES["torch"]
    device, kind, qd, kd, vd = checked
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    b, sq, h, _ = q.shape
    lse = torch.empty((b, h, sq), dtype=torch.float32, device=q.device)
    od = _descriptor(out.data_ptr(), qd[1], out.stride())
    _core().forward(device, _stream(device), _DTYPES[kind], qd, kd, vd, od, (lse.data_ptr(), b * h * sq), opts)
    return out, lse


def _dense_backward(d_out, q, k, v, out, lse, sinks, opts):
    """dQ, dK, dV and the sinks' gradient (None without sinks) into torch-allocated tensors."""
    d_out = _last_contiguous(d_out)
    dq, dk, dv, d_sinks = _gradients_like(q, k, v, sinks)
    device = q.device.index
    _core().backward(
        device, _stream(device), _dtype_name(q),
        [_desc(d_out), _desc(q), _desc(k), _desc(v), _desc(out)], _buf(lse),
        [_desc(dq), _desc(dk), _desc(dv)], None if d_sinks is None else _buf(d_sinks), opts,
    )
    return dq, dk, dv, d_sinks


def _varlen_forward(q, k, v, cu_q, cu_k, used, sizes, opts):
    torch = _torch()
    device = q.device.index
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((q.shape[1], q.shape[0]), dtype=torch.float32, device=q.device)
    varlen = (_buf(cu_q), _buf(cu_k), sizes[0], sizes[1], None if used is None else _buf(used))
    _core().forward_varlen(device, _stream(device), _dtype_name(q), _desc(q), _desc(k), _desc(v), _desc(out), _buf(lse), varlen, opts)
    return out, lse


def _varlen_backward(d_out, q, k, v, out, lse, sinks, cu_q, cu_k, sizes, opts):
    d_out = _last_contiguous(d_out)
    dq, dk, dv, d_sinks = _gradients_like(q, k, v, sinks)
    device = q.device.index
    varlen = (_buf(cu_q), _buf(cu_k), sizes[0], sizes[1], None)
    _core().backward_varlen(
        device, _stream(device), _dtype_name(q),
        [_desc(d_out), _desc(q), _desc(k), _desc(v), _desc(out)], _buf(lse),
        [_desc(dq), _desc(dk), _desc(dv)], None if d_sinks is None else _buf(d_sinks), varlen, opts,
    )
    return dq, dk, dv, d_sinks


def _gradients_like(q, k, v, sinks):
    """dQ, dK, dV (contiguous, the inputs' shapes) and the sinks' f32 gradient (None without)."""
    torch = _torch()
    dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    d_sinks = None if sinks is None else torch.empty(sinks.shape, dtype=torch.float32, device=q.device)
    return dq, dk, dv, d_sinks


def _needs_grad(*tensors):
    """Whether autograd must record the call (otherwise the forward runs without the
    autograd.Function's bookkeeping: inference, `torch.no_grad()`)."""
    return _MODULES["torch"].is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------------------------
# Autograd functions (built on first use, so that importing the package needs no torch)

_FUNCTIONS = {}


def _functions():
    if _FUNCTIONS:
        return _FUNCTIONS
    torch = _torch()

    class FlashAttnFunc(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, sinks, opts, alibi_slopes, checked):
            out, lse = _dense_forward(q, checked, opts)
            ctx.save_for_backward(q, k, v, out, lse, sinks, alibi_slopes)
            ctx.opts = opts
            ctx.mark_non_differentiable(lse)
            return out, lse

        @staticmethod
        def backward(ctx, d_out, _d_lse):
            q, k, v, out, lse, sinks, _alibi = ctx.saved_tensors
            dq, dk, dv, d_sinks = _dense_backward(d_out, q, k, v, out, lse, sinks, ctx.opts)
            return dq, dk, dv, d_sinks, None, None, None

    class FlashAttnVarlenFunc(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v, sinks, cu_q, cu_k, used, varlen_sizes, opts, alibi_slopes):
            out, lse = _varlen_forward(q, k, v, cu_q, cu_k, used, varlen_sizes, opts)
            ctx.save_for_backward(q, k, v, out, lse, sinks, cu_q, cu_k, alibi_slopes)
            ctx.opts, ctx.sizes, ctx.has_used = opts, varlen_sizes, used is not None
            ctx.mark_non_differentiable(lse)
            return out, lse

        @staticmethod
        def backward(ctx, d_out, _d_lse):
            q, k, v, out, lse, sinks, cu_q, cu_k, _alibi = ctx.saved_tensors
            if ctx.has_used:
                raise NotImplementedError("flash_attn_varlen_func: the backward with seqused_k is not supported yet")
            dq, dk, dv, d_sinks = _varlen_backward(d_out, q, k, v, out, lse, sinks, cu_q, cu_k, ctx.sizes, ctx.opts)
            return dq, dk, dv, d_sinks, None, None, None, None, None, None

    _FUNCTIONS.update(dense=FlashAttnFunc, varlen=FlashAttnVarlenFunc)
    return _FUNCTIONS


# ---------------------------------------------------------------------------------------------
# torch.compile: the dense and the varlen forward and backward as custom operators
# (`flash_attn_rs::fwd`, `::bwd`, `::varlen_fwd`, `::varlen_bwd`) with fake-tensor implementations
# and registered autograd formulas, so that Dynamo traces `flash_attn_func` and
# `flash_attn_varlen_func` without a graph break. Eager calls keep the cheaper path
# above (a custom operator's dispatch costs more than the autograd.Function).

_OPS = {}


def _ops():
    if _OPS:
        return _OPS
    torch = _torch()
    from typing import Optional, Tuple

    Tensor = torch.Tensor

    def options(softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p, seed,
                offset, deterministic):
        window = None if (window_left, window_right) == (-1, -1) else (window_left, window_right)
        dropout = (dropout_p, seed, offset) if dropout_p > 0 else None
        return _options(softmax_scale, causal, deterministic, window, softcap if softcap > 0 else None, alibi_slopes,
                        sinks, dropout)

    @torch.library.custom_op("flash_attn_rs::fwd", mutates_args=(), device_types="cuda")
    def fwd(q: Tensor, k: Tensor, v: Tensor, sinks: Optional[Tensor], alibi_slopes: Optional[Tensor],
            softmax_scale: Optional[float], causal: bool, window_left: int, window_right: int, softcap: float,
            dropout_p: float, seed: int, offset: int, deterministic: bool) -> Tuple[Tensor, Tensor]:
        device, kind, qd = _tensor("q", q, 4)
        checked = (device, kind, qd, _tensor("k", k, 4, device, kind)[2], _tensor("v", v, 4, device, kind)[2])
        opts = options(softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p, seed,
                       offset, deterministic)
        return _dense_forward(q, checked, opts)

    @fwd.register_fake
    def _(q, k, v, sinks, alibi_slopes, softmax_scale, causal, window_left, window_right, softcap, dropout_p, seed,
          offset, deterministic):
        b, sq, h, _ = q.shape
        return q.new_empty(q.shape), q.new_empty((b, h, sq), dtype=torch.float32)

    @torch.library.custom_op("flash_attn_rs::bwd", mutates_args=(), device_types="cuda")
    def bwd(d_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, sinks: Optional[Tensor],
            alibi_slopes: Optional[Tensor], softmax_scale: Optional[float], causal: bool, window_left: int,
            window_right: int, softcap: float, dropout_p: float, seed: int, offset: int,
            deterministic: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        opts = options(softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p, seed,
                       offset, deterministic)
        dq, dk, dv, d_sinks = _dense_backward(d_out, q, k, v, out, lse, sinks, opts)
        if d_sinks is None:  # an operator returns tensors: an empty one stands for None
            d_sinks = torch.empty((0,), dtype=torch.float32, device=q.device)
        return dq, dk, dv, d_sinks

    @bwd.register_fake
    def _(d_out, q, k, v, out, lse, sinks, alibi_slopes, *scalars):
        d_sinks = q.new_empty(sinks.shape if sinks is not None else (0,), dtype=torch.float32)
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), d_sinks

    def setup_context(ctx, inputs, output):
        q, k, v, sinks, alibi_slopes = inputs[:5]
        ctx.save_for_backward(q, k, v, output[0], output[1], sinks, alibi_slopes)
        ctx.scalars = inputs[5:]

    def backward(ctx, d_out, _d_lse):
        q, k, v, out, lse, sinks, alibi_slopes = ctx.saved_tensors
        dq, dk, dv, d_sinks = bwd(d_out, q, k, v, out, lse, sinks, alibi_slopes, *ctx.scalars)
        return (dq, dk, dv, d_sinks if sinks is not None else None, None) + (None,) * len(ctx.scalars)

    fwd.register_autograd(backward, setup_context=setup_context)

    # The varlen pair: the same, with the offsets (and seqused_k) as tensors and the longest
    # lengths as integers.
    @torch.library.custom_op("flash_attn_rs::varlen_fwd", mutates_args=(), device_types="cuda")
    def varlen_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                   seqused_k: Optional[Tensor], sinks: Optional[Tensor], alibi_slopes: Optional[Tensor],
                   max_seqlen_q: int, max_seqlen_k: int, softmax_scale: Optional[float], causal: bool,
                   window_left: int, window_right: int, softcap: float, dropout_p: float, seed: int, offset: int,
                   deterministic: bool) -> Tuple[Tensor, Tensor]:
        device, batch = _varlen_checks(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k)
        _modifiers(alibi_slopes, sinks, batch, q.shape[1], device)
        opts = options(softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p, seed,
                       offset, deterministic)
        sizes = (max(max_seqlen_q, 1), max(max_seqlen_k, 1))
        return _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, sizes, opts)

    @varlen_fwd.register_fake
    def _(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, sinks, alibi_slopes, *scalars):
        total_q, h, _ = q.shape
        return q.new_empty(q.shape), q.new_empty((h, total_q), dtype=torch.float32)

    @torch.library.custom_op("flash_attn_rs::varlen_bwd", mutates_args=(), device_types="cuda")
    def varlen_bwd(d_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu_seqlens_q: Tensor,
                   cu_seqlens_k: Tensor, sinks: Optional[Tensor], alibi_slopes: Optional[Tensor], max_seqlen_q: int,
                   max_seqlen_k: int, softmax_scale: Optional[float], causal: bool, window_left: int,
                   window_right: int, softcap: float, dropout_p: float, seed: int, offset: int,
                   deterministic: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        opts = options(softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, sinks, dropout_p, seed,
                       offset, deterministic)
        sizes = (max(max_seqlen_q, 1), max(max_seqlen_k, 1))
        dq, dk, dv, d_sinks = _varlen_backward(d_out, q, k, v, out, lse, sinks, cu_seqlens_q, cu_seqlens_k, sizes,
                                               opts)
        if d_sinks is None:
            d_sinks = torch.empty((0,), dtype=torch.float32, device=q.device)
        return dq, dk, dv, d_sinks

    @varlen_bwd.register_fake
    def _(d_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, sinks, alibi_slopes, *scalars):
        d_sinks = q.new_empty(sinks.shape if sinks is not None else (0,), dtype=torch.float32)
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), d_sinks

    def varlen_setup_context(ctx, inputs, output):
        q, k, v, cu_q, cu_k, used, sinks, alibi_slopes = inputs[:8]
        ctx.save_for_backward(q, k, v, output[0], output[1], cu_q, cu_k, sinks, alibi_slopes)
        ctx.has_used, ctx.scalars = used is not None, inputs[8:]

    def varlen_backward(ctx, d_out, _d_lse):
        if ctx.has_used:
            raise NotImplementedError("flash_attn_varlen_func: the backward with seqused_k is not supported yet")
        q, k, v, out, lse, cu_q, cu_k, sinks, alibi_slopes = ctx.saved_tensors
        dq, dk, dv, d_sinks = varlen_bwd(d_out, q, k, v, out, lse, cu_q, cu_k, sinks, alibi_slopes, *ctx.scalars)
        return (dq, dk, dv, None, None, None, d_sinks if sinks is not None else None, None) + (None,) * len(ctx.scalars)

    varlen_fwd.register_autograd(varlen_backward, setup_context=varlen_setup_context)
    _OPS.update(fwd=fwd, bwd=bwd, varlen_fwd=varlen_fwd, varlen_bwd=varlen_bwd)
    _MODULES["ops"] = True
    return _OPS


# ---------------------------------------------------------------------------------------------
# Public functions (FlashAttention-2's names, arguments and return conventions)


def flash_attn_func(
    q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
    alibi_slopes=None, deterministic=False, return_attn_probs=False, sinks=None,
    q_descale=None, k_descale=None, v_descale=None,
):
    """Attention of q (batch, seqlen_q, heads, d) over k, v (batch, seqlen_k, heads_k, d);
    heads_k divides heads (GQA/MQA). Returns out (batch, seqlen_q, heads, d), or with
    ``return_attn_probs`` ``(out, softmax_lse, None)``: the natural-log LSE (batch, heads,
    seqlen_q), f32; the probabilities themselves are never materialized (None). Differentiable
    in q, k, v and ``sinks`` (one f32 logit per query head joining each row's softmax).

    FP8 (Hopper): q, k, v of ``torch.float8_e4m3fn`` run the FP8 forward (head_dim 128; masks,
    windows, GQA; no dropout, softcap, ALiBi or sinks; no backward), with FlashAttention-3's
    ``q_descale``/``k_descale``/``v_descale``: f32 of shape (batch, heads_k), any strides (an
    expanded (1, 1) tensor is one factor per tensor); a stored x stands for x · descale. The output
    is bfloat16."""
    if str(getattr(q, "dtype", "")) == _FP8:
        return _fp8_forward(q, k, v, softmax_scale, causal, window_size, (q_descale, k_descale, v_descale),
                            return_attn_probs, dropout_p, softcap, alibi_slopes, sinks)
    for name, t in (("q_descale", q_descale), ("k_descale", k_descale), ("v_descale", v_descale)):
        if t is not None:
            raise TypeError(f"{name}: only for float8_e4m3fn inputs (q is {getattr(q, 'dtype', type(q).__name__)})")
    if _MODULES.get("ops") and _MODULES["is_compiling"]():
        return _traced_flash_attn(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                                  deterministic, return_attn_probs, sinks)
    try:
        plan = _PLANS[(q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype,
                       q.device, k.device, v.device, softmax_scale, causal, window_size, softcap, deterministic,
                       dropout_p, alibi_slopes, sinks)]
    except (AttributeError, TypeError, KeyError):  # a first call like this one (or a bad argument)
        plan = None
    if plan is not None:
        return _planned_forward(q, k, v, plan, return_attn_probs)
    device, kind, qd = _tensor("q", q, 4)
    kd, vd = _tensor("k", k, 4, device, kind)[2], _tensor("v", v, 4, device, kind)[2]
    b, _, h, d = qd[1]
    window = None if window_size == (-1, -1) else _window(window_size)
    scale, cap, p = _scalars(softmax_scale, softcap, dropout_p, d)
    _modifiers(alibi_slopes, sinks, b, h, device)
    opts = _options(scale, causal, deterministic, window, cap, alibi_slopes, sinks, _dropout_state(p, device))
    checked = (device, kind, qd, kd, vd)
    torch = _torch()
    if alibi_slopes is None and sinks is None and p == 0.0:
        _remember(q, k, v, softmax_scale, causal, window_size, softcap, deterministic, dropout_p, checked, opts)
    if _needs_grad(q, k, v, sinks):
        out, lse = _functions()["dense"].apply(q, k, v, sinks, opts, alibi_slopes, checked)
    else:
        out, lse = _dense_forward(q, checked, opts)
    return (out, lse, None) if return_attn_probs else out


_FP8 = "torch.float8_e4m3fn"
_FP8_HEAD_DIMS = (128, 256)


def _fp8_forward(q, k, v, softmax_scale, causal, window_size, descales, return_attn_probs, dropout_p, softcap,
                 alibi_slopes, sinks):
    """The FP8 forward (see `flash_attn_func`): every check before torch is touched."""
    for name, value in (("dropout_p", dropout_p), ("softcap", softcap), ("alibi_slopes", alibi_slopes),
                        ("sinks", sinks)):
        if value is not None and value != 0.0:
            raise ValueError(f"{name}: not supported by the FP8 forward")
    device, _, qs, qst = _check("q", q, 4, _FP8)
    _, _, ks, kst = _check("k", k, 4, _FP8, device)
    _, _, vs, vst = _check("v", v, 4, _FP8, device)
    b, sq, h, d = qs
    hk = ks[2]
    if d not in _FP8_HEAD_DIMS:
        raise ValueError(f"q: head_dim {d} is not supported by the FP8 forward (supported: {list(_FP8_HEAD_DIMS)})")
    window = None if window_size == (-1, -1) else _window(window_size)
    scale, _, _ = _scalars(softmax_scale, 0.0, 0.0, d)
    args = []
    for name, t in zip(("q_descale", "k_descale", "v_descale"), descales):
        if t is None:
            args.append(None)
            continue
        # Not `_check`: any strides are fine here (an expanded (1, 1) tensor has strides (0, 0)).
        try:
            shape, strides, dev, kind = tuple(t.shape), tuple(t.stride()), t.device, str(t.dtype)
            t.data_ptr
        except AttributeError:
            raise TypeError(f"{name}: a torch tensor is expected, got {type(t).__name__}") from None
        if getattr(dev, "type", None) != "cuda" or (dev.index or 0) != device:
            raise ValueError(f"{name}: a CUDA tensor on cuda:{device} is expected, got a tensor on {dev}")
        if kind != "torch.float32":
            raise TypeError(f"{name}: dtype {kind}; torch.float32 expected")
        if shape != (b, hk):
            raise ValueError(f"{name}: shape {shape}; (batch, heads_k) = {(b, hk)} expected")
        s0, s1 = strides
        if s0 < 0 or s1 < 0:
            raise ValueError(f"{name}: negative strides {strides}")
        args.append((t.data_ptr(), (b - 1) * s0 + (hk - 1) * s1 + 1, s0, s1))
    opts = _options(scale, causal, False, window, None, None, None, None)
    torch = _torch()
    out = torch.empty((b, sq, h, d), dtype=torch.bfloat16, device=q.device)
    lse = torch.empty((b, h, sq), dtype=torch.float32, device=q.device)
    _core().forward_fp8(device, _stream(device), _descriptor(q.data_ptr(), qs, qst), _descriptor(k.data_ptr(), ks, kst),
                        _descriptor(v.data_ptr(), vs, vst), _desc(out), _buf(lse), args, opts)
    return (out, lse, None) if return_attn_probs else out


# The dense function's checks, remembered: a call whose tensors have the shapes, strides, dtypes
# and devices of an earlier call's, with the same options (no dropout, ALiBi or sinks, whose
# state or tensors differ a call), would pass the same checks and build the same descriptors,
# so it reuses them. Keyed by every attribute the checks read; bounded.
_PLANS = {}
_PLANS_MAX = 1024


def _remember(q, k, v, softmax_scale, causal, window_size, softcap, deterministic, dropout_p, checked, opts):
    try:
        key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, k.dtype, v.dtype, q.device,
               k.device, v.device, softmax_scale, causal, window_size, softcap, deterministic, dropout_p, None, None)
        hash(key)
    except TypeError:  # an unhashable option (a list for window_size): not remembered
        return
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    device, kind, qd, kd, vd = checked
    b, sq, h, _ = qd[1]
    _PLANS[key] = (device, _DTYPES[kind], qd[1:], kd[1:], vd[1:], q.device, b * h * sq, (b, h, sq), opts,
                   (device, kind, None, None, None))


# A forward whose LSE nobody asked for (inference, no gradient) writes it to a per-device f32
# buffer instead of a fresh allocation (a torch allocation costs more than the rest of such a
# call's host work). Launches on any stream may write it at once: the values are never read.
# It only grows (geometrically), and a replaced buffer is kept, since a launch queued earlier may
# still be writing to it: at most about twice the largest batch · heads · seqlen_q floats.
_SCRATCH = {}
_SCRATCH_KEPT = []


def _grow_scratch(device, dev, n):
    old = _SCRATCH.get(device)
    size = max(n, 1 << 16, 2 * old.numel() if old is not None else 0)
    t = _MODULES["torch"].empty(size, dtype=_MODULES["torch"].float32, device=dev)
    if old is not None:
        _SCRATCH_KEPT.append(old)
    _SCRATCH[device] = t
    return t


def _planned_forward(q, k, v, plan, return_attn_probs):
    """`flash_attn_func` after its checks: the remembered descriptors with this call's addresses."""
    device, name, ql, kl, vl, dev, lse_len, lse_shape, opts, checked = plan
    torch = _MODULES["torch"]
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        checked = checked[:2] + ((q.data_ptr(),) + ql, (k.data_ptr(),) + kl, (v.data_ptr(),) + vl)
        out, lse = _functions()["dense"].apply(q, k, v, None, opts, None, checked)
        return (out, lse, None) if return_attn_probs else out
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if return_attn_probs:
        lse = torch.empty(lse_shape, dtype=torch.float32, device=dev)
    else:  # nobody reads it: the kernels write it to the device's scratch rows
        lse = _SCRATCH.get(device)
        if lse is None or lse.numel() < lse_len:
            lse = _grow_scratch(device, dev, lse_len)
    _MODULES["core"].forward(device, _stream(device), name, (q.data_ptr(),) + ql, (k.data_ptr(),) + kl,
                             (v.data_ptr(),) + vl, (out.data_ptr(), ql[0], out.stride()[:3]), (lse.data_ptr(), lse_len),
                             opts)
    return (out, lse, None) if return_attn_probs else out


def _traced_flash_attn(q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                       return_attn_probs, sinks):
    """`flash_attn_func` under torch.compile: the checks that need no tensor data here, the rest
    inside the operator when it runs. Dropout's seed and offset are read from torch's generator
    here, which Dynamo runs outside the graph (one graph break with dropout on)."""
    window = _window(window_size) or (-1, -1)
    scale, cap, p = _scalars(softmax_scale, softcap, dropout_p, q.shape[-1])
    dropout = _dropout_state(p, q.device.index or 0) if p > 0 else (0.0, 0, 0)
    out, lse = _ops()["fwd"](q, k, v, sinks, alibi_slopes, scale, bool(causal), window[0], window[1], cap or 0.0,
                             dropout[0], dropout[1], dropout[2], bool(deterministic))
    return (out, lse, None) if return_attn_probs else out


def _varlen_checks(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k):
    """The varlen call's tensor checks (eager, and inside the operator under torch.compile);
    returns (device ordinal, batch)."""
    device, kind, _, _ = _check("q", q, 3)
    for name, t in (("k", k), ("v", v)):
        _check(name, t, 3, device=device, like=kind)
    for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        _check(name, t, 1, "torch.int32", device)
    if cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.shape[0] < 2:
        raise ValueError(
            f"cu_seqlens_k: shape {tuple(cu_seqlens_k.shape)}; (batch + 1,) like cu_seqlens_q's {tuple(cu_seqlens_q.shape)}, batch ≥ 1, expected"
        )
    batch = cu_seqlens_q.shape[0] - 1
    if seqused_k is not None:
        _flat("seqused_k", seqused_k, "torch.int32", [(batch,)], device)
    for name, n in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if int(n) < 0:
            raise ValueError(f"{name}: {n}; a length ≥ 0 is expected")
    return device, batch


def _traced_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                   causal, window_size, softcap, alibi_slopes, deterministic, return_attn_probs, sinks, seqused_k):
    """`flash_attn_varlen_func` under torch.compile: as `_traced_flash_attn`, the checks that need
    no tensor data here, the rest inside `flash_attn_rs::varlen_fwd`."""
    window = _window(window_size) or (-1, -1)
    scale, cap, p = _scalars(softmax_scale, softcap, dropout_p, q.shape[-1])
    dropout = _dropout_state(p, q.device.index or 0) if p > 0 else (0.0, 0, 0)
    out, lse = _ops()["varlen_fwd"](q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, sinks, alibi_slopes,
                                    int(max_seqlen_q), int(max_seqlen_k), scale, bool(causal), window[0], window[1],
                                    cap or 0.0, dropout[0], dropout[1], dropout[2], bool(deterministic))
    return (out, lse, None) if return_attn_probs else out


def flash_attn_varlen_func(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None,
    causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
    return_attn_probs=False, sinks=None, seqused_k=None,
):
    """Packed variable-length attention: q (total_q, heads, d), k, v (total_k, heads_k, d),
    ``cu_seqlens_q``/``cu_seqlens_k`` int32 (batch + 1) offsets; masks align to each sequence.
    Returns out (total_q, heads, d), or ``(out, softmax_lse (heads, total_q), None)``.
    ``seqused_k`` (int32, batch) limits each sequence's keys (forward only). The offsets are
    used as they are on the device (FlashAttention's contract): keep them valid."""
    if _MODULES.get("ops") and _MODULES["is_compiling"]():
        return _traced_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                              softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                              return_attn_probs, sinks, seqused_k)
    device, batch = _varlen_checks(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k)
    _, h, d = q.shape
    window = _window(window_size)
    scale, cap, p = _scalars(softmax_scale, softcap, dropout_p, d)
    _modifiers(alibi_slopes, sinks, batch, h, device)
    opts = _options(scale, causal, deterministic, window, cap, alibi_slopes, sinks, _dropout_state(p, device))
    sizes = (max(int(max_seqlen_q), 1), max(int(max_seqlen_k), 1))
    if _needs_grad(q, k, v, sinks):
        out, lse = _functions()["varlen"].apply(q, k, v, sinks, cu_seqlens_q, cu_seqlens_k, seqused_k, sizes, opts, alibi_slopes)
    else:
        out, lse = _varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, sizes, opts)
    return (out, lse, None) if return_attn_probs else out


def flash_attn_with_kvcache(
    q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
    cache_batch_idx=None, block_table=None, softmax_scale=None, causal=False, window_size=(-1, -1),
    softcap=0.0, rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False,
    sinks=None,
):
    """Decode and chunked attention against a KV cache (inference; no gradient).

    q (batch, seqlen_q, heads, d); k_cache, v_cache (batch_cache, seqlen_cache, heads_k, d), or
    paged (num_blocks, page_size, heads_k, d) with ``block_table`` int32 (batch,
    max_blocks_per_seq), page_size a multiple of 16. ``cache_seqlens`` (int or int32 (batch,)):
    keys in use per sequence (default: the whole cache). With ``k``, ``v`` (batch, seqlen_new,
    heads_k, d) the new tokens are written into the cache in place at ``cache_seqlens[b]``
    (``cache_seqlens`` itself is not changed), rotated by ``rotary_cos``/``rotary_sin``
    (seqlen_ro, rotary_dim / 2) when given, and q rotated likewise, then attended over
    ``cache_seqlens + seqlen_new`` keys. Returns out, or ``(out, softmax_lse)`` (batch, heads,
    seqlen_q)."""
    device, kind, _, _ = _check("q", q, 4)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check(name, t, 4, device=device, like=kind)
    b, sq, h, d = q.shape
    if (k is None) != (v is None):
        raise ValueError("k: k and v are given together or not at all")
    if k is not None:
        for name, t in (("k", k), ("v", v)):
            _check(name, t, 4, device=device, like=kind)
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos: rotary_cos and rotary_sin are given together or not at all")
    if rotary_cos is not None and k is None:
        raise ValueError("rotary_cos: rotary embedding applies to new keys: give k and v too")
    if rotary_cos is not None:
        for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
            # float16/bfloat16, or float32 (cast to q's dtype, as the kernels read q's type)
            _check(name, t, 2, "torch.float32" if str(t.dtype) == "torch.float32" else None, device)
    if block_table is not None:
        _check("block_table", block_table, 2, "torch.int32", device)
        if block_table.shape[0] != b:
            raise ValueError(f"block_table: shape {tuple(block_table.shape)}; (batch = {b}, max_blocks_per_seq) expected")
        if not block_table.is_contiguous():
            raise ValueError("block_table: must be contiguous")
        if cache_batch_idx is not None:
            raise ValueError("cache_batch_idx: not with a paged cache (block_table)")
    if cache_batch_idx is not None:
        _flat("cache_batch_idx", cache_batch_idx, "torch.int32", [(b,)], device)
    if cache_seqlens is not None and not isinstance(cache_seqlens, int):
        _flat("cache_seqlens", cache_seqlens, "torch.int32", [(b,)], device)
    if isinstance(cache_seqlens, int) and cache_seqlens < 0:
        raise ValueError(f"cache_seqlens: {cache_seqlens}; a length ≥ 0 is expected")
    if cache_seqlens is None and block_table is not None:
        raise ValueError("cache_seqlens: required with a paged cache (block_table)")
    if int(num_splits) < 0:
        raise ValueError(f"num_splits: {num_splits}; 0 (automatic) or a count ≥ 1 is expected")
    window = _window(window_size)
    scale, cap, _ = _scalars(softmax_scale, softcap, 0.0, d)
    _modifiers(alibi_slopes, sinks, b, h, device)

    torch = _torch()
    if cache_seqlens is None or isinstance(cache_seqlens, int):
        n = k_cache.shape[1] if cache_seqlens is None else cache_seqlens
        cache_seqlens = torch.full((b,), n, dtype=torch.int32, device=q.device)
    append = None
    if k is not None:
        rotary = None
        if rotary_cos is not None:
            cos, sin = rotary_cos.to(q.dtype), rotary_sin.to(q.dtype)
            rotary = (_table(cos), _table(sin), bool(rotary_interleaved))
        append = (_desc(k), _desc(v), rotary)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, sq), dtype=torch.float32, device=q.device)
    opts = _options(scale, causal, False, window, cap, alibi_slopes, sinks, None)
    _core().forward_kvcache(
        device, _stream(device), _dtype_name(q), _desc(q), _desc(k_cache), _desc(v_cache), _desc(out), _buf(lse),
        _buf(cache_seqlens), None if cache_batch_idx is None else _buf(cache_batch_idx),
        None if block_table is None else _buf(block_table), int(num_splits), append, opts,
    )
    return (out, lse) if return_softmax_lse else out


def _table(t):
    """A (seqlen_ro, rotary_dim / 2) table as the kernels' (1, seqlen_ro, 1, rotary_dim / 2)."""
    t = _last_contiguous(t)
    rows, half = t.shape
    return (t.data_ptr(), [1, rows, 1, half], [t.stride()[0] * max(rows, 1), t.stride()[0], half])


def _register_if_torch():
    """With torch installed, import it and the extension now and register the custom
    operators, so that torch.compile never traces an import or a registration. Without torch
    (the CPU-side tests) the package imports all the same."""
    try:
        _core()
    except ImportError:  # no extension (a source checkout): the Rust side's checks still apply
        pass
    try:
        torch = _torch()
    except ImportError:
        return
    compiler = getattr(torch, "compiler", None)
    _MODULES["is_compiling"] = getattr(compiler, "is_compiling", None) or (lambda: False)
    if hasattr(torch, "library") and hasattr(torch.library, "custom_op"):
        try:
            _ops()
        except Exception as e:  # a torch whose custom-op API differs: eager calls still work
            _OPS.clear()
            _MODULES["ops_error"] = repr(e)


_register_if_torch()
