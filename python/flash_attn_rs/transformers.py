"""Hugging Face Transformers integration for flash_attn_rs.

Registers an attention implementation (default name ``"flash_attn_rs"``) with
``transformers.AttentionInterface`` and, where the installed transformers has
it (>= 4.53), a matching mask function with
``transformers.masking_utils.AttentionMaskInterface``.  The mask function is
the one transformers uses for ``"flash_attention_2"``: models hand the
attention either ``None`` or a 2D ``(batch, kv_len)`` padding mask, never a
4D ``seqlen x seqlen`` mask.  Padded batches are unpadded into the varlen
layout, packed sequences (``position_ids`` / ``cu_seq_lens_*`` kwargs) go the
varlen path too, and sliding windows and logit softcapping are passed to the
kernels.

Usage::

    import flash_attn_rs.transformers
    from transformers import AutoModelForCausalLM

    flash_attn_rs.transformers.register()
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="flash_attn_rs")
    model.to("cuda", torch.bfloat16)

Importing this module needs neither torch nor transformers; ``register()``
needs transformers, and the attention itself imports ``flash_attn_rs`` (and
so torch) on first call.
"""

__all__ = ["register", "flash_attn_rs_attention"]

_REGISTERED = set()


def _flash_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                attention_mask=None, **kwargs):
    """Fallback copy of transformers' FA2 mask behaviour: the 2D padding mask
    cut to the last ``kv_length`` columns, or None when nothing is masked."""
    if attention_mask is not None:
        attention_mask = attention_mask[:, -kv_length:]
        if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
            attention_mask = None
    return attention_mask


def _patch_flash_lazy_import(name):
    """transformers >= 5 treats every implementation whose name contains
    "flash" as a FlashAttention flavour and, at model init, calls
    ``modeling_flash_attention_utils.lazy_import_flash_attention(name)``, which
    raises for names it does not know (see ``is_flash_attention_requested`` in
    utils/generic.py and ``_check_and_adjust_attn_implementation`` in
    modeling_utils.py, transformers 5.24).  Teach its ``_lazy_imports`` to
    return our FA2-compatible functions for our names."""
    try:
        from transformers import modeling_flash_attention_utils as mfau
    except Exception:
        return
    original = getattr(mfau, "_lazy_imports", None)
    if original is None or not hasattr(mfau, "_pad_input"):
        return
    names = getattr(original, "_flash_attn_rs_names", None)
    if names is None:
        names = set()
        # 5.x from about 5.10 returns a 5-tuple with flash_attn_with_kvcache.
        with_kvcache = hasattr(mfau, "_flash_with_kvcache_fn")

        def _lazy_imports(implementation, *args, **kwargs):
            if implementation not in names:
                return original(implementation, *args, **kwargs)
            import flash_attn_rs as fa

            fns = (fa.flash_attn_func, fa.flash_attn_varlen_func)
            if with_kvcache:
                fns += (getattr(fa, "flash_attn_with_kvcache", None),)
            return fns + (mfau._pad_input, mfau._unpad_input)

        _lazy_imports._flash_attn_rs_names = names
        mfau._lazy_imports = _lazy_imports
    names.add(name)


def register(name="flash_attn_rs"):
    """Register the attention (and mask) function under ``name``; idempotent.

    Returns ``name``, to pass as ``attn_implementation=name``.
    """
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "flash_attn_rs.transformers.register() needs Hugging Face transformers "
            "(>= 4.53 for padded batches): pip install transformers"
        ) from e
    try:
        from transformers import AttentionInterface
    except ImportError:
        try:
            from transformers.modeling_utils import AttentionInterface
        except ImportError as e:
            raise ImportError(
                "the installed transformers has no AttentionInterface; flash_attn_rs needs transformers >= 4.48"
            ) from e
    if name in _REGISTERED:
        return name

    AttentionInterface.register(name, flash_attn_rs_attention)
    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        # < 4.53: models build their own masks, and a non-FA2 name gets a 4D
        # mask, which flash_attn_rs_attention refuses with a clear error.
        AttentionMaskInterface = None
    if AttentionMaskInterface is not None:
        mask_fn = AttentionMaskInterface._global_mapping.get("flash_attention_2", _flash_mask)
        AttentionMaskInterface.register(name, mask_fn)
    _patch_flash_lazy_import(name)
    _REGISTERED.add(name)
    return name


def _gather_rows(x, indices):
    """(batch, seqlen, ...) -> (len(indices), ...) picking flattened rows; one copy."""
    seqlen = x.shape[1]
    return x[indices // seqlen, indices % seqlen]


def _unpad_mask(mask):
    """2D 0/1 mask -> (flat indices, cu_seqlens int32, max_seqlen)."""
    import torch
    import torch.nn.functional as F

    seqlens = mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    return indices, cu_seqlens, int(seqlens.max())


def _packed_from_position_ids(position_ids, batch_size, q_len):
    """cu_seqlens for one packed row (batch 1) whose position ids restart, as
    transformers' ``_is_packed_sequence`` / ``prepare_fa_kwargs_from_position_ids``
    (modeling_flash_attention_utils.py); None when it is a single sequence."""
    import torch

    if position_ids is None or position_ids.dim() > 2 or batch_size != 1 or q_len == 1 \
            or position_ids.shape[-1] != q_len:
        return None
    pos = position_ids.reshape(-1)
    starts = torch.nonzero(pos == pos.min(), as_tuple=False).flatten()
    if starts.numel() <= 1:
        return None
    cu = torch.cat([starts.to(torch.int32), starts.new_tensor([pos.numel()], dtype=torch.int32)])
    return cu, int(cu.diff().max())


def flash_attn_rs_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                            sliding_window=None, softcap=None, **kwargs):
    """transformers attention function: query (batch, heads, q_len, d), key/value
    (batch, heads_k, kv_len, d) -> (attn_output (batch, q_len, heads, d), None)."""
    import torch
    from flash_attn_rs import flash_attn_func, flash_attn_varlen_func

    batch, _, q_len, _ = query.shape
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    if not module.training:
        dropout = 0.0

    # Sliding window as transformers' sdpa/eager masks (masking_utils.py, checked
    # in 4.53.3, 4.57.3, 5.24.0): sliding_window_overlay keeps kv_idx > q_idx - w
    # and causal_mask_function kv_idx <= q_idx, so a query sees itself and the
    # w - 1 keys before it: window_size (w - 1, 0).  transformers' FA2 path does
    # the same since 4.56 ((w - 1, w - 1) with causal; up to 4.55 it passed
    # (w, w), one key more than its sdpa mask), and DynamicSlidingWindowLayer
    # caches w - 1 past keys.  Non-causal: (w - 1, w - 1) as transformers' FA2
    # path and Gemma-3's bidirectional overlay (|q - kv| < w).
    window = (-1, -1)
    if sliding_window is not None and sliding_window > 0:
        window = (sliding_window - 1, 0 if is_causal else sliding_window - 1)

    # PEFT / autocast can hand fp32 states; the kernels take fp16/bf16 only.
    if query.dtype == torch.float32:
        dev = query.device.type
        if torch.is_autocast_enabled(dev):  # torch >= 2.4
            target = torch.get_autocast_dtype(dev)
        else:
            target = next(m.weight.dtype for m in module.modules() if isinstance(m, torch.nn.Linear))
        query, key, value = query.to(target), key.to(target), value.to(target)

    # (batch, heads, seqlen, d) -> (batch, seqlen, heads, d) views, no copies.
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    opts = dict(dropout_p=dropout, softmax_scale=scaling, causal=bool(is_causal), window_size=window,
                softcap=0.0 if softcap is None else float(softcap),
                deterministic=bool(kwargs.get("deterministic") or False))
    if kwargs.get("s_aux") is not None:  # attention sinks (gpt-oss): one f32 logit per query head
        opts["sinks"] = kwargs["s_aux"].to(torch.float32).contiguous()

    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                f"flash_attn_rs expects a 2D padding mask or None, got shape {tuple(attention_mask.shape)}; "
                "use transformers >= 4.53 (masking_utils) and register() before building the model"
            )
        if k.shape[1] > attention_mask.shape[-1]:  # static cache: slots past the mask are unused
            k, v = k[:, : attention_mask.shape[-1]], v[:, : attention_mask.shape[-1]]
        idx_k, cu_k, max_k = _unpad_mask(attention_mask)
        if q_len == k.shape[1]:
            idx_q, cu_q, max_q = idx_k, cu_k, max_k
        else:  # decode / chunked prefill: the queries are the last q_len tokens (left padding)
            idx_q, cu_q, max_q = _unpad_mask(attention_mask[:, -q_len:])
        out = flash_attn_varlen_func(_gather_rows(q, idx_q), _gather_rows(k, idx_k), _gather_rows(v, idx_k),
                                     cu_q, cu_k, max_q, max_k, **opts)
        out = out.new_zeros(batch * q_len, *out.shape[1:]).index_copy(0, idx_q, out)
        return out.view(batch, q_len, *out.shape[1:]), None

    # Padding-free packing: precomputed cu_seq_lens (e.g. DataCollatorWithFlattening), or
    # restarting position_ids in a single row.
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    if cu_q is None or cu_k is None or max_q is None or max_k is None:
        packed = _packed_from_position_ids(kwargs.get("position_ids"), batch, q_len)
        if packed is not None:
            cu_q = cu_k = packed[0]
            max_q = max_k = packed[1]
    if cu_q is not None and cu_k is not None and max_q is not None and max_k is not None:
        out = flash_attn_varlen_func(q.reshape(-1, *q.shape[2:]), k.reshape(-1, *k.shape[2:]),
                                     v.reshape(-1, *v.shape[2:]), cu_q.to(torch.int32), cu_k.to(torch.int32),
                                     int(max_q), int(max_k), **opts)
        return out.view(batch, -1, *out.shape[1:]), None

    return flash_attn_func(q, k, v, **opts), None
