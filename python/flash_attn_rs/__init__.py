"""flash_attn_rs: FlashAttention forward and backward for PyTorch, with kernels written in Rust.

The functions have FlashAttention-2's names, arguments and return conventions::

    from flash_attn_rs import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

The wheel carries the PTX; the driver compiles it on first use (no CUDA toolkit, no build step).
Hugging Face Transformers: ``flash_attn_rs.transformers.register()``, then
``attn_implementation="flash_attn_rs"``.
"""

from .interface import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache"]
__version__ = "0.1.0"
