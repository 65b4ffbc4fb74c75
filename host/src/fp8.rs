//! The FP8 forward: Q, K and V in `float8_e4m3fn` (e4m3: 4 exponent bits, 3 mantissa bits, no
//! infinities, ±448 at most) with f32 descale factors, O in bf16 and the LSE in f32, on Hopper.
//!
//! A stored element `x` of Q stands for `x · descale_q` (likewise K and V), the convention of
//! FlashAttention-3's `q_descale`/`k_descale`/`v_descale`: per tensor (one value) or per
//! (batch, K/V head), any strides. The kernel folds `descale_q · descale_k` into the softmax
//! scale and `descale_v` into the output's normalization, so the attention is the one of the
//! dequantized tensors. P is rounded to e4m3 for the P·V product (its row sums stay f32).
//!
//! `wgmma` reads 8-bit B operands only K-major, so V (keys along the rows) is first transposed
//! into scratch memory (O(seqlen_k · head_dim) bytes per K/V head, in stream order) by a small
//! kernel, which also permutes each 32 keys to the order in which the score accumulators hold
//! them (`tiling::fp8_key_of_position`): P then needs no shuffle between the two GEMMs.

use crate::AttentionParams;
use crate::error::{CudaContext, Error, Result};
use crate::launch::{FlashAttention, ForwardOutput, grid};
use crate::tensor::{DeviceTensor, Layout, TensorMut};
use crate::validate::{self, Arg};
use cust::memory::{DeviceBuffer, DevicePointer, DeviceSlice, GpuBuffer};
use cust::stream::Stream;
use flash_attn_kernels::params::{Descales, FwdParams, Modifiers};
use flash_attn_kernels::registry::{self, Dtype, Flavor, Role};
use flash_attn_kernels::tiling::{FP8_TRANSPOSE_KEYS, fp8_transposed_keys};
use std::marker::PhantomData;

pub use float8::F8E4M3;

/// Head dims of the FP8 forward.
pub const FP8_HEAD_DIMS: [u32; 2] = [128, 256];

/// A device tensor of e4m3 elements, shape (batch, seqlen, heads, head_dim), contiguous.
pub struct Fp8Tensor {
    buffer: DeviceBuffer<u8>,
    layout: Layout,
}

impl Fp8Tensor {
    pub fn from_host(data: &[F8E4M3], shape: [usize; 4]) -> Result<Self> {
        let layout = Layout::checked_contiguous("shape", shape)?;
        if data.len() != layout.element_count() {
            return Err(Error::invalid(
                "data",
                format!("{} elements given for shape {shape:?} ({} expected)", data.len(), layout.element_count()),
            ));
        }
        let bytes: Vec<u8> = data.iter().map(|x| x.to_bits()).collect();
        let buffer = DeviceBuffer::from_slice(&bytes).during("copy to device")?;
        Ok(Fp8Tensor { buffer, layout })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn view(&self) -> Fp8Ref<'_> {
        Fp8Ref { ptr: self.buffer.as_device_ptr(), layout: self.layout, _borrow: PhantomData }
    }
}

/// A borrowed e4m3 tensor: a device address and a layout in elements (= bytes).
#[derive(Clone, Copy)]
pub struct Fp8Ref<'a> {
    ptr: DevicePointer<u8>,
    layout: Layout,
    _borrow: PhantomData<&'a u8>,
}

impl<'a> Fp8Ref<'a> {
    /// `layout` at `offset` bytes into `buffer` (checked to lie inside it).
    pub fn from_slice(buffer: &'a DeviceSlice<u8>, offset: usize, layout: Layout) -> Result<Self> {
        let span = layout
            .span()
            .ok_or_else(|| Error::invalid("buffer", format!("layout {layout:?} overflows the address space")))?;
        match offset.checked_add(span) {
            Some(end) if end <= buffer.len() => {}
            _ => {
                return Err(Error::invalid(
                    "buffer",
                    format!("layout {layout:?} at offset {offset} overruns a {}-byte buffer", buffer.len()),
                ));
            }
        }
        Ok(Fp8Ref { ptr: buffer.as_device_ptr().wrapping_add(offset), layout, _borrow: PhantomData })
    }

    /// A tensor at a raw device address (the Python binding's torch tensors).
    ///
    /// # Safety
    /// `address` points at device memory holding `layout`'s elements for as long as `'a`.
    pub unsafe fn from_raw(address: u64, layout: Layout) -> Self {
        Fp8Ref { ptr: DevicePointer::from_raw(address), layout, _borrow: PhantomData }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    fn arg(&self, name: &'static str) -> Arg<'_> {
        Arg { name, address: self.ptr.as_raw(), layout: &self.layout }
    }
}

/// One tensor's descale factors: f32 values of shape (batch, heads_k) at these element strides
/// (both 0 for a single per-tensor value).
#[derive(Clone, Copy)]
pub struct Descale<'a> {
    pub values: &'a DeviceSlice<f32>,
    pub batch_stride: usize,
    pub head_stride: usize,
}

impl<'a> Descale<'a> {
    /// One factor for the whole tensor.
    pub fn per_tensor(value: &'a DeviceSlice<f32>) -> Self {
        Descale { values: value, batch_stride: 0, head_stride: 0 }
    }

    /// One factor per (batch, K/V head), row-major.
    pub fn per_head(values: &'a DeviceSlice<f32>, heads_k: usize) -> Self {
        Descale { values, batch_stride: heads_k, head_stride: 1 }
    }
}

/// The three tensors' descale factors; `None` means 1.
#[derive(Clone, Copy, Default)]
pub struct Fp8Scales<'a> {
    pub q: Option<Descale<'a>>,
    pub k: Option<Descale<'a>>,
    pub v: Option<Descale<'a>>,
}

impl FlashAttention {
    /// FP8 forward into new tensors: O (bf16, contiguous) and the LSE. Queued on `stream`.
    pub fn forward_fp8(
        &self,
        stream: &Stream,
        q: Fp8Ref<'_>,
        k: Fp8Ref<'_>,
        v: Fp8Ref<'_>,
        scales: &Fp8Scales<'_>,
        params: &AttentionParams,
    ) -> Result<ForwardOutput<half::bf16>> {
        let (shape, _) = self.check_fp8(&q, &k, &v, scales, params)?;
        let mut o = DeviceTensor::uninitialized(validate::q_shape(&shape))?;
        let rows = shape.batch as usize * shape.heads as usize * shape.seqlen_q as usize;
        // SAFETY: f32 has no invalid bit patterns; the forward writes every row's LSE.
        let mut lse = unsafe { DeviceBuffer::uninitialized(rows) }.during("cuMemAlloc")?;
        self.forward_fp8_into(stream, q, k, v, scales, o.view_mut(), &mut lse, params)?;
        Ok(ForwardOutput { o, lse })
    }

    /// FP8 forward into caller-provided O (bf16, any non-overlapping strides) and LSE.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_fp8_into(
        &self,
        stream: &Stream,
        q: Fp8Ref<'_>,
        k: Fp8Ref<'_>,
        v: Fp8Ref<'_>,
        scales: &Fp8Scales<'_>,
        o: TensorMut<'_, half::bf16>,
        lse: &mut DeviceSlice<f32>,
        params: &AttentionParams,
    ) -> Result<()> {
        let (shape, descales) = self.check_fp8(&q, &k, &v, scales, params)?;
        let o_ref = o.as_ref();
        let oa = Arg::of("o", &o_ref);
        validate::output(&oa, validate::q_shape(&shape))?;
        validate::lse("lse", lse.len(), &shape)?;
        let info = self.fp8_kernel(Role::Forward, shape.head_dim)?;
        let transpose = self.fp8_kernel(Role::Fp8TransposeV, 0)?;

        // Vᵀ: (batch, heads_k, head_dim, padded keys), keys permuted in groups of 32.
        let padded = fp8_transposed_keys(shape.seqlen_k, info.key_tile_rows) as usize;
        let (d, hk, b) = (shape.head_dim as usize, shape.heads_k as usize, shape.batch as usize);
        let bytes = b * hk * d * padded;
        // SAFETY: u8 has no invalid bit patterns; the transpose writes every byte (zeros past
        // seqlen_k) before the forward reads it, both in stream order.
        let vt = unsafe { self.scratch.alloc::<u8>(bytes, stream) }?;
        let (qa, ka, va) = (q.arg("q"), k.arg("k"), v.arg("v"));
        let mut p = FwdParams {
            shape,
            q: qa.address,
            k: ka.address,
            v: vt.as_device_ptr().as_raw(),
            o: oa.address,
            lse: lse.as_device_ptr().as_raw(),
            q_strides: qa.strides(),
            k_strides: ka.strides(),
            v_strides: flash_attn_kernels::params::Strides {
                batch: if b == 1 { 0 } else { (hk * d * padded) as i64 },
                row: padded as i64,
                head: (d * padded) as i64,
            },
            o_strides: oa.strides(),
            mods: Modifiers::default(),
            o_accum: 0,
            lse_accum: 0,
            tile_counter: 0,
            descales,
        };
        // The transpose reads V through `k`/`k_strides` and writes `v` (see its kernel).
        let transpose_params = FwdParams { k: va.address, k_strides: va.strides(), ..p };
        let tgrid = (padded as u32 / FP8_TRANSPOSE_KEYS, hk as u32 * (shape.head_dim / 64), shape.batch);
        let launched = self.launch(stream, transpose, tgrid, &transpose_params).and_then(|()| {
            p.k = ka.address;
            let (x, heads, batch) = grid(info, shape.seqlen_q, shape.heads, shape.batch);
            self.launch(stream, info, (x, heads, batch), &p)
        });
        let freed = vt.drop_async(stream).during("cuMemFreeAsync");
        launched.and(freed)
    }

    fn fp8_kernel(&self, role: Role, head_dim: u32) -> Result<&'static registry::KernelInfo> {
        if !self.hopper_kernels() {
            return Err(Error::invalid("q", "the FP8 forward needs a Hopper GPU (sm_90a kernels)".to_string()));
        }
        self.choose(role, Dtype::E4m3, head_dim, Flavor::Dense).ok_or(Error::UnsupportedHeadDim {
            argument: "q",
            head_dim: head_dim as usize,
            supported: &FP8_HEAD_DIMS,
        })
    }

    /// Every check of an FP8 call, before any allocation: the tensors (as for bf16, plus
    /// 16-byte strides), the head dim, the options the FP8 kernel has (masks, windows, grouped
    /// K/V heads; no softcap, ALiBi, sinks or dropout), and each descale's extent.
    fn check_fp8(
        &self,
        q: &Fp8Ref<'_>,
        k: &Fp8Ref<'_>,
        v: &Fp8Ref<'_>,
        scales: &Fp8Scales<'_>,
        params: &AttentionParams,
    ) -> Result<(flash_attn_kernels::params::AttnShape, Descales)> {
        let (qa, ka, va) = (q.arg("q"), k.arg("k"), v.arg("v"));
        let shape = validate::inputs(&qa, &ka, &va, params)?;
        for arg in [&qa, &ka, &va] {
            arg.check_strides(16)?;
        }
        if !FP8_HEAD_DIMS.contains(&shape.head_dim) {
            return Err(Error::UnsupportedHeadDim {
                argument: "q",
                head_dim: shape.head_dim as usize,
                supported: &FP8_HEAD_DIMS,
            });
        }
        for (set, name) in [
            (params.softcap.is_some(), "params.softcap"),
            (params.alibi_slopes.is_some(), "params.alibi_slopes"),
            (params.sinks.is_some(), "params.sinks"),
            (params.dropout.is_some_and(|d| d.p != 0.0), "params.dropout"),
        ] {
            if set {
                return Err(Error::invalid(name, "is not supported by the FP8 forward".to_string()));
            }
        }
        let mut descales = Descales::default();
        for (descale, name, address, strides) in [
            (&scales.q, "scales.q", &mut descales.q, 0),
            (&scales.k, "scales.k", &mut descales.k, 1),
            (&scales.v, "scales.v", &mut descales.v, 2),
        ] {
            let Some(d) = descale else { continue };
            let last = (shape.batch as usize - 1)
                .checked_mul(d.batch_stride)
                .and_then(|x| x.checked_add((shape.heads_k as usize - 1).checked_mul(d.head_stride)?));
            match last {
                Some(last) if last < d.values.len() => {}
                _ => {
                    return Err(Error::invalid(
                        name,
                        format!(
                            "{} values at strides ({}, {}) do not cover (batch {}, heads_k {})",
                            d.values.len(),
                            d.batch_stride,
                            d.head_stride,
                            shape.batch,
                            shape.heads_k
                        ),
                    ));
                }
            }
            let (Ok(bs), Ok(hs)) = (u32::try_from(d.batch_stride), u32::try_from(d.head_stride)) else {
                return Err(Error::invalid(name, "strides exceed u32".to_string()));
            };
            *address = d.values.as_device_ptr().as_raw();
            descales.strides[strides] = [bs, hs];
        }
        Ok((shape, descales))
    }
}

/// Quantize f32 values to e4m3 (round to nearest even, saturating at ±448): for tests and
/// callers that hold f32 or bf16 data on the host.
pub fn quantize_fp8(values: &[f32]) -> Vec<F8E4M3> {
    values.iter().map(|&x| F8E4M3::from_f32(x)).collect()
}
