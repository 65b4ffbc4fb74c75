"""Tests that need neither torch nor a GPU: the package imports, every malformed argument is an
exception naming it, raised before torch is imported (so before any allocation or launch), and
the Rust side reports CUDA's own error names. The tensors are stand-ins with torch's attributes.
"""

import sys

import pytest

import flash_attn_rs
from flash_attn_rs import _core, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache


class Device:
    def __init__(self, type_, index=None):
        self.type, self.index = type_, index

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"


class DType:
    def __init__(self, name):
        self.name = name

    def __str__(self):
        return self.name


class Fake:
    """A tensor as far as the argument checks look: shape, strides, dtype, device, address."""

    def __init__(self, *shape, dtype="torch.bfloat16", device=("cuda", 0), strides=None, address=1 << 20):
        self.shape = tuple(shape)
        self.dtype = DType(dtype)
        self.device = Device(*device)
        if strides is None:
            strides, n = [], 1
            for size in reversed(self.shape):
                strides.insert(0, n)
                n *= size
        self._strides = tuple(strides)
        self._address = address

    def stride(self):
        return self._strides

    def data_ptr(self):
        return self._address

    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    def is_contiguous(self):
        return self._strides == Fake(*self.shape).stride()


@pytest.fixture(autouse=True)
def no_torch_imported():
    """Every check must fire before torch is imported: nothing is allocated or launched. (Where
    torch was imported already, by the GPU tests in the same run, this cannot be observed.)"""
    before = "torch" in sys.modules
    yield
    if not before:
        assert "torch" not in sys.modules, "an argument check imported torch (it would allocate or launch)"


def qkv(b=2, sq=64, sk=64, h=8, hk=8, d=64, **kw):
    return Fake(b, sq, h, d, **kw), Fake(b, sk, hk, d, **kw), Fake(b, sk, hk, d, **kw)


def test_package_imports_and_lists_head_dims():
    assert flash_attn_rs.__version__
    dims = _core.supported_head_dims()
    assert {32, 64, 96, 128, 192, 256} <= set(dims)
    assert _core.MAX_SPLITS >= 64


@pytest.mark.parametrize(
    "change, error, name",
    [
        (dict(q=Fake(2, 64, 8, 64, device=("cpu",))), ValueError, "q"),
        (dict(k=Fake(2, 64, 8, 64, device=("cpu",))), ValueError, "k"),
        (dict(q=Fake(2, 64, 8, 64, dtype="torch.float32")), TypeError, "q"),
        (dict(v=Fake(2, 64, 8, 64, dtype="torch.float16")), TypeError, "v"),
        (dict(q=Fake(128, 8, 64)), ValueError, "q"),
        (dict(k=Fake(2, 64, 8, 64, strides=(64 * 8 * 64 * 2, 8 * 64 * 2, 64 * 2, 2))), ValueError, "k"),
        (dict(v=Fake(2, 64, 8, 64, device=("cuda", 1))), ValueError, "v"),
        (dict(q=Fake(2, 64, 8, 80), k=Fake(2, 64, 8, 80), v=Fake(2, 64, 8, 80)), ValueError, "head_dim"),
        (dict(q="not a tensor"), TypeError, "q"),
    ],
)
def test_dense_tensor_errors_name_the_argument(change, error, name):
    q, k, v = qkv()
    args = dict(q=q, k=k, v=v)
    args.update(change)
    with pytest.raises(error, match=name):
        flash_attn_func(**args)


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(window_size=(-2, 0)), "window_size"),
        (dict(window_size=5), "window_size"),
        (dict(softcap=-1.0), "softcap"),
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(softmax_scale=0.0), "softmax_scale"),
        (dict(softmax_scale=float("nan")), "softmax_scale"),
        (dict(alibi_slopes=Fake(7, dtype="torch.float32")), "alibi_slopes"),
        (dict(alibi_slopes=Fake(8, dtype="torch.float16")), "alibi_slopes"),
        (dict(alibi_slopes=Fake(8, dtype="torch.float32", device=("cpu",))), "alibi_slopes"),
        (dict(sinks=Fake(2, 8, dtype="torch.float32")), "sinks"),
    ],
)
def test_option_errors_name_the_option(options, name):
    q, k, v = qkv()
    with pytest.raises((ValueError, TypeError), match=name):
        flash_attn_func(q, k, v, **options)


def test_varlen_errors_name_the_argument():
    q, k, v = Fake(100, 8, 64), Fake(120, 2, 64), Fake(120, 2, 64)
    cu = Fake(3, dtype="torch.int32")
    with pytest.raises(TypeError, match="cu_seqlens_q"):
        flash_attn_varlen_func(q, k, v, Fake(3, dtype="torch.int64"), cu, 60, 60)
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        flash_attn_varlen_func(q, k, v, cu, Fake(4, dtype="torch.int32"), 60, 60)
    with pytest.raises(ValueError, match="q"):
        flash_attn_varlen_func(Fake(1, 100, 8, 64), k, v, cu, cu, 60, 60)
    with pytest.raises(ValueError, match="seqused_k"):
        flash_attn_varlen_func(q, k, v, cu, cu, 60, 60, seqused_k=Fake(3, dtype="torch.int32"))
    with pytest.raises(ValueError, match="max_seqlen_k"):
        flash_attn_varlen_func(q, k, v, cu, cu, 60, -1)


def test_kvcache_errors_name_the_argument():
    q, kc, vc = Fake(2, 1, 8, 64), Fake(2, 256, 2, 64), Fake(2, 256, 2, 64)
    new = Fake(2, 1, 2, 64)
    lens = Fake(2, dtype="torch.int32")
    cos = Fake(300, 16)
    cases = [
        (dict(k=new), ValueError, "k"),
        (dict(rotary_cos=cos, rotary_sin=cos), ValueError, "rotary_cos"),
        (dict(k=new, v=new, rotary_cos=cos), ValueError, "rotary_cos"),
        (dict(block_table=Fake(2, 4, dtype="torch.int32"), cache_seqlens=lens, cache_batch_idx=lens), ValueError, "cache_batch_idx"),
        (dict(block_table=Fake(2, 4, dtype="torch.int32")), ValueError, "cache_seqlens"),
        (dict(block_table=Fake(3, 4, dtype="torch.int32"), cache_seqlens=lens), ValueError, "block_table"),
        (dict(block_table=Fake(2, 4, dtype="torch.int64"), cache_seqlens=lens), TypeError, "block_table"),
        (dict(cache_seqlens=Fake(3, dtype="torch.int32")), ValueError, "cache_seqlens"),
        (dict(cache_seqlens=-1), ValueError, "cache_seqlens"),
        (dict(cache_batch_idx=Fake(2, dtype="torch.float32")), TypeError, "cache_batch_idx"),
        (dict(num_splits=-1), ValueError, "num_splits"),
        (dict(k=Fake(2, 1, 2, 64, dtype="torch.float16"), v=new), TypeError, "k"),
    ]
    for options, error, name in cases:
        with pytest.raises(error, match=name):
            flash_attn_with_kvcache(q, kc, vc, **options)
    with pytest.raises(ValueError, match="v_cache"):
        flash_attn_with_kvcache(q, kc, Fake(2, 256, 2, 64, device=("cpu",)))


def test_rust_errors_carry_cuda_names_or_name_the_argument():
    """The Rust side first opens the device: without one, CUDA's error name comes back as a
    RuntimeError; with one, the head dim 80 is refused before launch as a ValueError."""
    desc = (1 << 20, [1, 16, 1, 80], [16 * 80, 80, 80])
    options = (None, False, False, None, None, None, None, None)
    with pytest.raises((RuntimeError, ValueError)) as raised:
        _core.forward(0, 0, "bf16", desc, desc, desc, desc, (1 << 21, 16), options)
    if raised.type is RuntimeError:
        assert "CUDA_ERROR_" in str(raised.value)
    else:
        assert "head_dim" in str(raised.value)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        _core.forward(0, 0, "f32", desc, desc, desc, desc, (1 << 21, 16), options)


def test_transformers_module_imports_without_torch():
    import importlib

    module = importlib.import_module("flash_attn_rs.transformers")
    assert callable(module.register)


def test_transformers_register_names_what_is_missing():
    import importlib.util

    if importlib.util.find_spec("transformers") is not None:
        pytest.skip("transformers is installed: the GPU model checks cover register()")
    from flash_attn_rs.transformers import register

    with pytest.raises(ImportError, match="transformers"):
        register()


def test_fp8_errors_name_the_argument():
    """float8_e4m3fn inputs take the FP8 path; its checks name the argument, before torch."""
    f8 = "torch.float8_e4m3fn"
    q, k, v = qkv(d=128, dtype=f8)
    scale = Fake(2, 8, dtype="torch.float32")
    cases = [
        (dict(k=Fake(2, 64, 8, 128)), TypeError, "k"),
        (dict(q=Fake(2, 64, 8, 64, dtype=f8), k=Fake(2, 64, 8, 64, dtype=f8), v=Fake(2, 64, 8, 64, dtype=f8)),
         ValueError, "head_dim"),
        (dict(softcap=30.0), ValueError, "softcap"),
        (dict(dropout_p=0.1), ValueError, "dropout_p"),
        (dict(q_descale=Fake(2, 4, dtype="torch.float32")), ValueError, "q_descale"),
        (dict(k_descale=Fake(2, 8, dtype="torch.float16")), TypeError, "k_descale"),
        (dict(v_descale=Fake(2, 8, dtype="torch.float32", device=("cpu",))), ValueError, "v_descale"),
        (dict(q_descale=Fake(2, 8, dtype="torch.float32", strides=(0, -1))), ValueError, "q_descale"),
        (dict(window_size=(-2, 0)), ValueError, "window_size"),
    ]
    for options, error, name in cases:
        args = dict(q=q, k=k, v=v, q_descale=scale)
        args.update(options)
        with pytest.raises(error, match=name):
            flash_attn_func(**args)
    # Descales are for FP8 inputs only.
    with pytest.raises(TypeError, match="q_descale"):
        flash_attn_func(*qkv(), q_descale=scale)
