//! FlashAttention-2 on NVIDIA GPUs, kernels written in Rust and compiled to PTX.
//!
//! ```no_run
//! use flash_attn::{AttentionParams, DeviceTensor, FlashAttention};
//! use half::bf16;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let _context = cust::quick_init()?;
//! let stream = cust::stream::Stream::new(cust::stream::StreamFlags::NON_BLOCKING, None)?;
//! let attention = FlashAttention::new()?;
//! let shape = [2, 1024, 16, 128]; // (batch, seqlen, heads, head_dim)
//! let q = DeviceTensor::from_host(&vec![bf16::from_f32(0.1); 2 * 1024 * 16 * 128], shape)?;
//! let (k, v) = (q.view(), q.view());
//! let params = AttentionParams { causal: true, ..Default::default() };
//! let out = attention.forward(&stream, q.view(), k, v, &params)?;
//! let d_o = DeviceTensor::filled(shape, bf16::ONE)?;
//! let grads = attention.backward(&stream, d_o.view(), q.view(), k, v, out.o.view(), &out.lse, &params)?;
//! stream.synchronize()?;
//! let dq = grads.dq.to_host()?;
//! # Ok(()) }
//! ```
pub mod error;
pub mod external;
pub mod fp8;
mod launch;
pub mod reference;
mod scratch;
pub mod serving;
pub mod tensor;
mod validate;

pub use cust::memory::DeviceSlice;
pub use error::{Error, Result};
pub use external::ExternalStream;
pub use fp8::{Descale, F8E4M3, FP8_HEAD_DIMS, Fp8Ref, Fp8Scales, Fp8Tensor, quantize_fp8};
pub use launch::{FlashAttention, ForwardOutput, Gradients};
pub use serving::{Append, KvCache, Rotary, Varlen};
pub use tensor::{DeviceTensor, Element, Layout, TensorMut, TensorRef};

pub use flash_attn_kernels::traits::SUPPORTED_HEAD_DIMS;

/// Options of one attention call. The default is dense, non-causal attention with scale
/// 1/sqrt(head_dim); every feature is off until set. Names and conventions follow
/// FlashAttention's (`window_size`, `softcap`, `alibi_slopes`, `dropout_p`, learnable sinks).
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionParams<'a> {
    /// Multiplies Q·Kᵀ before the softmax; `None` means `1 / sqrt(head_dim)`.
    pub softmax_scale: Option<f32>,
    /// Causal mask aligned at the bottom-right corner: query `i` sees keys
    /// `0 ..= i + seqlen_k - seqlen_q` (FlashAttention ≥ 2.1). Queries that see no key output 0.
    /// Combined with `window`, it sets the window's right edge to 0.
    pub causal: bool,
    /// Backward only: add the key blocks' dQ contributions in a fixed order, so that dQ is
    /// bitwise the same on every run (dK and dV always are). Costs some speed: a key block may
    /// wait for its predecessor at each query tile.
    pub deterministic: bool,
    /// Sliding window `(left, right)`: query `i` sees keys `i + seqlen_k - seqlen_q - left ..=
    /// i + seqlen_k - seqlen_q + right`; -1 leaves a side unbounded. Key tiles outside the window
    /// are skipped, forward and backward.
    pub window: Option<(i32, i32)>,
    /// Scores become `softcap · tanh(scores / softcap)` (scores already scaled) before ALiBi,
    /// the mask and the softmax; must be positive.
    pub softcap: Option<f32>,
    /// ALiBi: f32 slopes of shape `(heads)` or `(batch, heads)`; the bias
    /// `-slope · |i + seqlen_k - seqlen_q - j|` is added to the scaled (and capped) scores.
    pub alibi_slopes: Option<&'a DeviceSlice<f32>>,
    /// Attention sinks: one f32 logit per query head that joins every row's softmax
    /// denominator without a value (gpt-oss, FlashAttention-4's `learnable_sink`). The LSE
    /// includes it; the backward returns its gradient (`Gradients::d_sinks`).
    pub sinks: Option<&'a DeviceSlice<f32>>,
    /// Dropout on the attention probabilities (training).
    pub dropout: Option<Dropout>,
}

/// Dropout with probability `p` in `[0, 1)` (0 is off), kept entries scaled by `1 / (1 - p)`.
/// The mask comes from Philox-4x32-10 keyed by `(seed, offset, batch, head, query, key)`
/// (`flash_attn_kernels::modifiers::Dropout`), so the backward regenerates the forward's mask
/// and a call with the same seed and offset is reproducible. Advance `offset` between steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub seed: u64,
    pub offset: u64,
}

mod ptx_status {
    include!(concat!(env!("OUT_DIR"), "/ptx_status.rs"));
}
pub(crate) const PTX_SM80: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attn.sm_80.ptx"));
pub(crate) const PTX_SM90A: &str = include_str!(concat!(env!("OUT_DIR"), "/flash_attn.sm_90a.ptx"));
/// The same kernels assembled by ptxas at build time (empty where build-ptx made none): loading
/// them skips the driver's JIT compile of the PTX.
pub(crate) const CUBIN_SM80: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flash_attn.sm_80.cubin"));
pub(crate) const CUBIN_SM90A: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flash_attn.sm_90a.cubin"));
pub(crate) use ptx_status::{SM_80_PROBLEM, SM_90A_PROBLEM};
