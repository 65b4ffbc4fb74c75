//! Argument checks. Everything here runs before any allocation or launch; each failure names
//! the argument and what is wrong with it.
//!
//! Per tensor: no zero dimension, a 16-byte-aligned base, outer strides that are multiples of 8
//! elements (unless the dimension has size 1), a span within the kernels' 63-bit offsets, batch
//! and heads within CUDA's grid limit, seqlen ≤ 2³⁰. Across tensors: K and V of one shape, matching
//! Q in batch and head_dim, K/V heads dividing Q's (GQA/MQA), a supported head dim, outputs of
//! exactly the expected shape and not overlapping themselves, an LSE long enough (inputs may
//! overlap: broadcasting is fine). Per call: a positive finite scale (and scale · log₂e), window
//! edges ≥ −1, and [`modifiers`] (softcap, ALiBi slopes of `(heads)` or `(batch, heads)`, one sink
//! per query head, dropout p in [0, 1)), which also decides whether the call needs the `_mods`
//! kernels ([`needs_modifier_kernels`]).

use crate::AttentionParams;
use crate::error::{Error, Result};
use crate::tensor::{Element, Layout, TensorRef};
use flash_attn_kernels::modifiers::keep_threshold;
use flash_attn_kernels::params::{AttnShape, Modifiers, Strides};
use flash_attn_kernels::traits::SUPPORTED_HEAD_DIMS;

/// Grid dimensions y and z (heads, batch) are limited to 65535 by CUDA.
pub const MAX_GRID_YZ: usize = 65_535;
/// Sequence positions are u32 in the kernels, with room for a tile past the end.
pub const MAX_SEQLEN: usize = 1 << 30;
const DIMS: [&str; 4] = ["batch", "seqlen", "heads", "head_dim"];

/// One tensor argument: its name, device address and layout.
pub struct Arg<'a> {
    pub name: &'static str,
    pub address: u64,
    pub layout: &'a Layout,
}

impl<'a> Arg<'a> {
    pub fn of<T: Element>(name: &'static str, t: &'a TensorRef<'_, T>) -> Self {
        Arg { name, address: t.ptr.as_raw(), layout: &t.layout }
    }

    pub(crate) fn check_basic(&self) -> Result<()> {
        for (i, dim) in DIMS.iter().enumerate() {
            if self.layout.shape[i] == 0 {
                return Err(Error::invalid(self.name, format!("dimension {dim} is 0 (shape {:?})", self.layout.shape)));
            }
        }
        // The kernels move 16-byte chunks (cp.async, ldmatrix rows): every row must start on a
        // 16-byte boundary.
        if self.address % 16 != 0 {
            return Err(Error::invalid(
                self.name,
                format!("device address {:#x} is not 16-byte aligned", self.address),
            ));
        }
        self.check_strides(8)?;
        let span = self.layout.span().ok_or_else(|| Error::invalid(self.name, "layout overflows the address space"))?;
        if span > i64::MAX as usize / 2 {
            return Err(Error::invalid(
                self.name,
                format!("spans {span} elements, beyond the kernels' 63-bit offsets"),
            ));
        }
        if self.layout.batch() > MAX_GRID_YZ {
            return Err(Error::invalid(self.name, format!("batch {} exceeds {MAX_GRID_YZ}", self.layout.batch())));
        }
        if self.layout.heads() > MAX_GRID_YZ {
            return Err(Error::invalid(self.name, format!("heads {} exceeds {MAX_GRID_YZ}", self.layout.heads())));
        }
        if self.layout.seqlen() > MAX_SEQLEN {
            return Err(Error::invalid(self.name, format!("seqlen {} exceeds {MAX_SEQLEN}", self.layout.seqlen())));
        }
        Ok(())
    }

    /// Outer strides are multiples of `multiple` elements (16 bytes: 8 16-bit elements, 16 e4m3
    /// ones), except for dimensions of size 1.
    pub(crate) fn check_strides(&self, multiple: usize) -> Result<()> {
        for (i, dim) in DIMS[..3].iter().enumerate() {
            let stride = self.layout.strides[i];
            if !stride.is_multiple_of(multiple) && self.layout.shape[i] > 1 {
                return Err(Error::invalid(
                    self.name,
                    format!(
                        "stride of dimension {dim} is {stride} elements; it must be a multiple of {multiple} (16 bytes)"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_output(&self, expected: [usize; 4]) -> Result<()> {
        self.check_basic()?;
        if self.layout.shape != expected {
            return Err(Error::invalid(
                self.name,
                format!("shape {:?} does not match the expected {:?}", self.layout.shape, expected),
            ));
        }
        if !self.layout.is_non_overlapping() {
            return Err(Error::invalid(self.name, format!("strides {:?} make elements overlap", self.layout.strides)));
        }
        Ok(())
    }

    /// The kernels' strides. A batch of one has batch stride 0: it is never used for a dense
    /// batch, and packed sequences (whose tensors are one batch entry) rely on it
    /// (`FwdParams::sequence` places each sequence by its rows).
    pub fn strides(&self) -> Strides {
        let s = self.layout.strides;
        let batch = if self.layout.batch() == 1 { 0 } else { s[0] as i64 };
        Strides { batch, row: s[1] as i64, head: s[2] as i64 }
    }
}

/// Checks Q, K, V and the options; returns the problem shape for the kernels.
pub fn inputs(q: &Arg, k: &Arg, v: &Arg, params: &AttentionParams) -> Result<AttnShape> {
    q.check_basic()?;
    k.check_basic()?;
    v.check_basic()?;
    let (ql, kl, vl) = (q.layout, k.layout, v.layout);
    if vl.shape != kl.shape {
        return Err(Error::invalid("v", format!("shape {:?} differs from k's {:?}", vl.shape, kl.shape)));
    }
    if kl.batch() != ql.batch() {
        return Err(Error::invalid("k", format!("batch {} differs from q's {}", kl.batch(), ql.batch())));
    }
    if kl.head_dim() != ql.head_dim() {
        return Err(Error::invalid("k", format!("head_dim {} differs from q's {}", kl.head_dim(), ql.head_dim())));
    }
    if !ql.heads().is_multiple_of(kl.heads()) {
        return Err(Error::invalid(
            "k",
            format!(
                "heads {} does not divide q's {} (grouped-query attention needs heads_k | heads)",
                kl.heads(),
                ql.heads()
            ),
        ));
    }
    let head_dim = ql.head_dim();
    if !SUPPORTED_HEAD_DIMS.iter().any(|&d| d as usize == head_dim) {
        return Err(Error::UnsupportedHeadDim { argument: "q", head_dim, supported: &SUPPORTED_HEAD_DIMS });
    }
    let scale = params.softmax_scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
    // The kernels use scale · log2(e); it must stay finite too.
    if !(scale.is_finite() && scale > 0.0 && (scale * std::f32::consts::LOG2_E).is_finite()) {
        return Err(Error::invalid("params.softmax_scale", format!("{scale} is not a positive finite number")));
    }
    // b·h·seqlen_q·head_dim floats of dQ accumulator must be addressable with i64 offsets.
    // Both the dQ accumulator and new dK, dV allocations must be addressable with i64 offsets.
    // With grouped K/V heads the backward also keeps f32 dK, dV rows per query head.
    for (name, layout) in [("q", ql), ("k", kl)] {
        let elements = layout.batch() as u128 * ql.heads() as u128 * layout.seqlen() as u128 * head_dim as u128;
        if elements > (i64::MAX / 8) as u128 {
            return Err(Error::invalid(name, "batch · heads · seqlen · head_dim overflows the kernels' offsets"));
        }
    }
    let (window_left, window_right) = window(params)?;
    Ok(AttnShape {
        batch: ql.batch() as u32,
        heads: ql.heads() as u32,
        heads_k: kl.heads() as u32,
        seqlen_q: ql.seqlen() as u32,
        seqlen_k: kl.seqlen() as u32,
        head_dim: head_dim as u32,
        scale,
        scale_log2: scale * std::f32::consts::LOG2_E,
        window_left,
        window_right,
        layout: Default::default(),
    })
}

/// The mask's window edges: `params.window` (each side -1 = unbounded), with causal setting the
/// right edge to 0.
fn window(params: &AttentionParams) -> Result<(i32, i32)> {
    let (left, right) = params.window.unwrap_or((-1, -1));
    for (side, value) in [("left", left), ("right", right)] {
        if value < -1 {
            return Err(Error::invalid(
                "params.window",
                format!("{side} edge {value} is below -1 (-1 means unbounded)"),
            ));
        }
    }
    Ok((left, if params.causal { 0 } else { right }))
}

/// The score modifiers and dropout of a call, checked against the problem's shape.
pub fn modifiers(params: &AttentionParams, shape: &AttnShape) -> Result<Modifiers> {
    let mut m = Modifiers::default();
    if let Some(cap) = params.softcap {
        if !(cap.is_finite() && cap > 0.0) {
            return Err(Error::invalid("params.softcap", format!("{cap} is not a positive finite number")));
        }
        // The kernels work with softcap / scale and scale / softcap in f32: both must be normal.
        if !((cap / shape.scale).is_normal() && (shape.scale / cap).is_normal()) {
            return Err(Error::invalid(
                "params.softcap",
                format!(
                    "{cap} is out of range for softmax scale {}: cap / scale and scale / cap must be normal",
                    shape.scale
                ),
            ));
        }
        m.softcap = cap;
    }
    let (batch, heads) = (shape.batch as usize, shape.heads as usize);
    if let Some(slopes) = params.alibi_slopes {
        m.alibi_batch_stride = match slopes.len() {
            n if n == heads => 0,
            n if n == batch * heads => heads as u32,
            n => {
                return Err(Error::invalid(
                    "params.alibi_slopes",
                    format!("holds {n} floats; (heads) = {heads} or (batch, heads) = {} expected", batch * heads),
                ));
            }
        };
        m.alibi_slopes = slopes.as_device_ptr().as_raw();
    }
    if let Some(sinks) = params.sinks {
        if sinks.len() != heads {
            return Err(Error::invalid(
                "params.sinks",
                format!("holds {} floats; one per query head ({heads}) expected", sinks.len()),
            ));
        }
        m.sinks = sinks.as_device_ptr().as_raw();
    }
    if let Some(d) = params.dropout {
        if !(d.p.is_finite() && (0.0..1.0).contains(&d.p)) {
            return Err(Error::invalid("params.dropout", format!("p = {} is outside [0, 1)", d.p)));
        }
        if d.p > 0.0 {
            m.dropout_keep_threshold = keep_threshold(d.p as f64);
            m.dropout_scale = 1.0 / (1.0 - d.p);
            m.dropout_seed = d.seed;
            m.dropout_offset = d.offset;
        }
    }
    Ok(m)
}

/// Whether the call needs a `_mods` kernel: softcap, ALiBi or dropout (windows, grouped K/V
/// heads and sinks run in every kernel).
pub fn needs_modifier_kernels(m: &Modifiers) -> bool {
    m.softcap != 0.0 || m.alibi_slopes != 0 || m.dropout_keep_threshold != 0
}

/// Which twin of the main kernels a call needs: for a modifier ([`needs_modifier_kernels`]) `_mods`,
/// or on a dense batch `_modsd` where it exists, else `_seq` for rows that are not a dense batch's (packed
/// sequences, a KV cache, split-KV: those twins resolve each block's sequence,
/// `FwdParams::sequence`), else the dense kernel.
pub fn flavor(shape: &AttnShape, m: &Modifiers) -> flash_attn_kernels::registry::Flavor {
    use flash_attn_kernels::registry::Flavor;
    let dense = shape.layout == flash_attn_kernels::params::SeqLayout::default();
    if needs_modifier_kernels(m) {
        if dense { Flavor::DenseModifiers } else { Flavor::Modifiers }
    } else if !dense {
        Flavor::Sequences
    } else {
        Flavor::Dense
    }
}

/// The sinks' gradient buffer: required (at least `heads` floats) exactly when the call has
/// sinks; its device address, or 0.
pub fn sink_gradient(
    params: &AttentionParams,
    d_sinks: Option<&mut cust::memory::DeviceSlice<f32>>,
    shape: &AttnShape,
) -> Result<u64> {
    match (params.sinks.is_some(), d_sinks) {
        (true, Some(out)) if out.len() >= shape.heads as usize => Ok(out.as_device_ptr().as_raw()),
        (true, Some(out)) => Err(Error::invalid(
            "d_sinks",
            format!("holds {} floats; one per query head ({}) needed", out.len(), shape.heads),
        )),
        (true, None) => Err(Error::invalid("d_sinks", "required when params.sinks is set")),
        (false, Some(_)) => Err(Error::invalid("d_sinks", "given, but params.sinks is not set")),
        (false, None) => Ok(0),
    }
}

/// An output (O, dQ, dK, dV) must have exactly the expected shape and must not overlap itself.
pub fn output(arg: &Arg, expected: [usize; 4]) -> Result<()> {
    arg.check_output(expected)
}

/// An input that must match a given shape (O and dO in the backward).
pub fn same_shape(arg: &Arg, expected: [usize; 4]) -> Result<()> {
    arg.check_basic()?;
    if arg.layout.shape != expected {
        return Err(Error::invalid(
            arg.name,
            format!("shape {:?} does not match the expected {:?}", arg.layout.shape, expected),
        ));
    }
    Ok(())
}

/// The backward's inputs: Q, K, V as for the forward, O and dO of Q's shape, and the LSE.
pub fn backward_inputs([q, k, v, o, d_o]: [&Arg; 5], lse_len: usize, params: &AttentionParams) -> Result<AttnShape> {
    let shape = inputs(q, k, v, params)?;
    same_shape(o, q_shape(&shape))?;
    same_shape(d_o, q_shape(&shape))?;
    lse("lse", lse_len, &shape)?;
    Ok(shape)
}

/// The LSE buffer holds batch · heads · seqlen_q f32.
pub fn lse(name: &'static str, len: usize, shape: &AttnShape) -> Result<()> {
    let needed = shape.batch as usize * shape.heads as usize * shape.seqlen_q as usize;
    if len < needed {
        return Err(Error::invalid(name, format!("holds {len} floats; batch · heads · seqlen_q = {needed} needed")));
    }
    Ok(())
}

pub fn q_shape(shape: &AttnShape) -> [usize; 4] {
    [shape.batch as usize, shape.seqlen_q as usize, shape.heads as usize, shape.head_dim as usize]
}

pub fn kv_shape(shape: &AttnShape) -> [usize; 4] {
    [shape.batch as usize, shape.seqlen_k as usize, shape.heads_k as usize, shape.head_dim as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16-byte-aligned fake device address; nothing is dereferenced.
    const ADDR: u64 = 0x1000_0000;
    const SHAPE: [usize; 4] = [2, 5, 4, 64];

    fn arg<'a>(name: &'static str, layout: &'a Layout) -> Arg<'a> {
        Arg { name, address: ADDR, layout }
    }

    /// Runs `inputs` on the given layouts for q, k and v.
    fn check(q: &Layout, k: &Layout, v: &Layout, params: &AttentionParams) -> Result<AttnShape> {
        inputs(&arg("q", q), &arg("k", k), &arg("v", v), params)
    }

    fn check_q(q: &Layout) -> Result<AttnShape> {
        check(q, q, q, &AttentionParams::default())
    }

    /// The argument named by an `InvalidArgument` error, and its problem text.
    #[track_caller]
    fn invalid<T: std::fmt::Debug>(result: Result<T>) -> (&'static str, String) {
        match result {
            Err(Error::InvalidArgument { argument, problem }) => (argument, problem),
            other => panic!("expected Error::InvalidArgument, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_invalid<T: std::fmt::Debug>(result: Result<T>, expected: &str) {
        let (argument, problem) = invalid(result);
        assert_eq!(argument, expected, "wrong argument named ({problem})");
    }

    fn valid_shape() -> AttnShape {
        let l = Layout::contiguous(SHAPE);
        check_q(&l).unwrap()
    }

    #[test]
    fn contiguous_inputs_are_accepted() {
        let s = valid_shape();
        assert_eq!((s.batch, s.seqlen_q, s.heads, s.head_dim), (2, 5, 4, 64));
        assert_eq!((s.seqlen_k, s.heads_k), (5, 4));
    }

    #[test]
    fn zero_sized_dimensions_are_rejected_and_named() {
        let good = Layout::contiguous(SHAPE);
        for (i, dim) in DIMS.iter().enumerate() {
            let mut shape = SHAPE;
            shape[i] = 0;
            let zero = Layout::contiguous(shape);
            for (which, expected) in ["q", "k", "v"].iter().enumerate() {
                let mut layouts = [good; 3];
                layouts[which] = zero;
                let [q, k, v] = &layouts;
                let (argument, problem) = invalid(check(q, k, v, &AttentionParams::default()));
                assert_eq!(argument, *expected);
                assert!(problem.contains(dim), "{problem:?} should name {dim}");
            }
        }
    }

    #[test]
    fn misaligned_addresses_are_rejected() {
        let l = Layout::contiguous(SHAPE);
        for offset in [2, 8, 14] {
            let address = ADDR + offset;
            let bad = |name| Arg { name, address, layout: &l };
            let p = AttentionParams::default();
            assert_invalid(inputs(&bad("q"), &arg("k", &l), &arg("v", &l), &p), "q");
            assert_invalid(inputs(&arg("q", &l), &bad("k"), &arg("v", &l), &p), "k");
            assert_invalid(inputs(&arg("q", &l), &arg("k", &l), &bad("v"), &p), "v");
            assert_invalid(output(&bad("o"), SHAPE), "o");
        }
        let p = AttentionParams::default();
        let aligned = Arg { name: "q", address: ADDR + 16, layout: &l };
        assert!(inputs(&aligned, &arg("k", &l), &arg("v", &l), &p).is_ok());
    }

    #[test]
    fn strides_must_be_multiples_of_8_elements() {
        let good = Layout::contiguous(SHAPE);
        for (i, dim) in DIMS[..3].iter().enumerate() {
            let mut bad = good;
            bad.strides[i] += 4;
            let (argument, problem) = invalid(check_q(&bad));
            assert_eq!(argument, "q");
            assert!(problem.contains(dim), "{problem:?} should name {dim}");
            assert_invalid(check(&good, &bad, &bad, &AttentionParams::default()), "k");
            assert_invalid(check(&good, &good, &bad, &AttentionParams::default()), "v");
        }
    }

    #[test]
    fn stride_of_a_size_1_dimension_is_ignored() {
        // Each outer dimension of size 1 in turn gets an odd stride; it is never multiplied by
        // a nonzero index, so it does not matter.
        for i in 0..3 {
            let mut shape = SHAPE;
            shape[i] = 1;
            let mut l = Layout::contiguous(shape);
            l.strides[i] = 3;
            check_q(&l).unwrap();
            output(&arg("o", &l), shape).unwrap();
        }
    }

    #[test]
    fn k_must_match_q_in_batch_heads_and_head_dim() {
        let q = Layout::contiguous(SHAPE);
        let [b, s, h, d] = SHAPE;
        for k_shape in [[b + 1, s, h, d], [b, s, h + 1, d], [b, s, h, 128], [b, s, 3, d], [b, s, 8, d]] {
            let k = Layout::contiguous(k_shape);
            assert_invalid(check(&q, &k, &k, &AttentionParams::default()), "k");
        }
    }

    #[test]
    fn grouped_kv_heads_must_divide_the_query_heads() {
        let q = Layout::contiguous([2, 5, 8, 64]);
        for heads_k in [1, 2, 4, 8] {
            let k = Layout::contiguous([2, 9, heads_k, 64]);
            let s = check(&q, &k, &k, &AttentionParams::default()).unwrap();
            assert_eq!((s.heads, s.heads_k), (8, heads_k as u32));
            assert_eq!(kv_shape(&s), [2, 9, heads_k, 64]);
        }
        for heads_k in [3, 5, 16] {
            let k = Layout::contiguous([2, 9, heads_k, 64]);
            let (argument, problem) = invalid(check(&q, &k, &k, &AttentionParams::default()));
            assert_eq!(argument, "k");
            assert!(problem.contains("divide"), "{problem}");
        }
    }

    #[test]
    fn windows_combine_with_causal_and_reject_values_below_minus_one() {
        let l = Layout::contiguous(SHAPE);
        for (window, causal, want) in [
            (Some((4, 2)), false, (4, 2)),
            (Some((4, 2)), true, (4, 0)),
            (Some((-1, 3)), false, (-1, 3)),
            (Some((0, 0)), false, (0, 0)),
            (None, true, (-1, 0)),
        ] {
            let s = check(&l, &l, &l, &AttentionParams { window, causal, ..Default::default() }).unwrap();
            assert_eq!((s.window_left, s.window_right), want, "{window:?} causal {causal}");
        }
        for window in [(-2, 0), (0, -5), (i32::MIN, -1)] {
            let params = AttentionParams { window: Some(window), ..Default::default() };
            assert_invalid(check(&l, &l, &l, &params), "params.window");
        }
    }

    #[test]
    fn modifiers_are_checked_and_encoded() {
        let s = valid_shape();
        let none = modifiers(&AttentionParams::default(), &s).unwrap();
        assert_eq!(none, Modifiers::default());
        assert!(!needs_modifier_kernels(&none));
        for cap in [0.0, -1.0, f32::NAN, f32::INFINITY, f32::MAX, 1e38, 1e-40] {
            let params = AttentionParams { softcap: Some(cap), ..Default::default() };
            assert_invalid(modifiers(&params, &s), "params.softcap");
        }
        let capped = modifiers(&AttentionParams { softcap: Some(50.0), ..Default::default() }, &s).unwrap();
        assert_eq!(capped.softcap, 50.0);
        assert!(needs_modifier_kernels(&capped));
        for p in [-0.1, 1.0, 1.5, f32::NAN] {
            let params =
                AttentionParams { dropout: Some(crate::Dropout { p, seed: 1, offset: 0 }), ..Default::default() };
            assert_invalid(modifiers(&params, &s), "params.dropout");
        }
        let off =
            AttentionParams { dropout: Some(crate::Dropout { p: 0.0, seed: 1, offset: 2 }), ..Default::default() };
        assert_eq!(modifiers(&off, &s).unwrap(), Modifiers::default());
        let on =
            AttentionParams { dropout: Some(crate::Dropout { p: 0.25, seed: 9, offset: 4 }), ..Default::default() };
        let m = modifiers(&on, &s).unwrap();
        assert_eq!(
            (m.dropout_keep_threshold, m.dropout_scale, m.dropout_seed, m.dropout_offset),
            (3 << 30, 1.0 / 0.75, 9, 4)
        );
        assert!(needs_modifier_kernels(&m));
        // Slopes and sinks are device slices: their length checks run on a real device
        // (tests/gpu.rs, bad input).
    }

    #[test]
    fn v_must_have_k_shape() {
        let q = Layout::contiguous(SHAPE);
        let [b, s, h, d] = SHAPE;
        for v_shape in [[b + 1, s, h, d], [b, s + 1, h, d], [b, s, h + 1, d], [b, s, h, 128]] {
            let v = Layout::contiguous(v_shape);
            assert_invalid(check(&q, &q, &v, &AttentionParams::default()), "v");
        }
        // v is compared with k first, so a k that differs from q but equals v names k.
        let k = Layout::contiguous([b, s, h, 128]);
        assert_invalid(check(&q, &k, &k, &AttentionParams::default()), "k");
        // Same shape with other (valid) strides is fine.
        let v = Layout { shape: SHAPE, strides: [s * 3 * h * d, 3 * h * d, d] };
        check(&q, &q, &v, &AttentionParams::default()).unwrap();
    }

    #[test]
    fn unsupported_head_dims_are_rejected() {
        for head_dim in [8, 16, 48, 80, 160, 320] {
            let l = Layout::contiguous([2, 5, 4, head_dim]);
            match check_q(&l) {
                Err(Error::UnsupportedHeadDim { argument, head_dim: got, supported }) => {
                    assert_eq!(argument, "q");
                    assert_eq!(got, head_dim);
                    assert_eq!(supported, &SUPPORTED_HEAD_DIMS[..]);
                }
                other => panic!("head_dim {head_dim}: expected UnsupportedHeadDim, got {other:?}"),
            }
        }
        for &head_dim in &SUPPORTED_HEAD_DIMS {
            check_q(&Layout::contiguous([2, 5, 4, head_dim as usize])).unwrap();
        }
    }

    #[test]
    fn softmax_scale_must_be_positive_and_finite() {
        let l = Layout::contiguous(SHAPE);
        for scale in [f32::NAN, 0.0, -0.0, -0.125, f32::INFINITY, f32::NEG_INFINITY] {
            for causal in [false, true] {
                let params = AttentionParams { softmax_scale: Some(scale), causal, ..Default::default() };
                assert_invalid(check(&l, &l, &l, &params), "params.softmax_scale");
            }
        }
        let params = AttentionParams { softmax_scale: Some(0.3), ..Default::default() };
        let s = check(&l, &l, &l, &params).unwrap();
        assert_eq!(s.scale, 0.3);
        assert_eq!(s.scale_log2, 0.3 * std::f32::consts::LOG2_E);
    }

    #[test]
    fn default_scale_is_inverse_sqrt_head_dim() {
        for &head_dim in &SUPPORTED_HEAD_DIMS {
            let l = Layout::contiguous([1, 3, 2, head_dim as usize]);
            let s = check_q(&l).unwrap();
            let expected = 1.0 / (head_dim as f32).sqrt();
            assert_eq!(s.scale, expected);
            assert_eq!(s.scale_log2, expected * std::f32::consts::LOG2_E);
        }
        assert_eq!(valid_shape().scale, 0.125);
    }

    #[test]
    fn causal_sets_the_window() {
        let l = Layout::contiguous(SHAPE);
        let causal = check(&l, &l, &l, &AttentionParams { causal: true, ..Default::default() }).unwrap();
        assert_eq!((causal.window_left, causal.window_right), (-1, 0));
        let full = check(&l, &l, &l, &AttentionParams { causal: false, ..Default::default() }).unwrap();
        assert_eq!((full.window_left, full.window_right), (-1, -1));
    }

    #[test]
    fn seqlen_q_and_seqlen_k_may_differ() {
        let q = Layout::contiguous([2, 7, 4, 64]);
        let kv = Layout::contiguous([2, 300, 4, 64]);
        for causal in [false, true] {
            let params = AttentionParams { causal, ..Default::default() };
            let s = check(&q, &kv, &kv, &params).unwrap();
            assert_eq!((s.seqlen_q, s.seqlen_k), (7, 300));
            assert_eq!(q_shape(&s), [2, 7, 4, 64]);
            assert_eq!(kv_shape(&s), [2, 300, 4, 64]);
            // And the other way round (causal: queries past the last key see nothing).
            let s = check(&kv, &q, &q, &params).unwrap();
            assert_eq!((s.seqlen_q, s.seqlen_k), (300, 7));
        }
    }

    #[test]
    fn outputs_must_not_overlap() {
        // Broadcast over batch, and heads aliasing rows.
        let broadcast = Layout { shape: SHAPE, strides: [0, 256, 64] };
        let tangled = Layout { shape: [1, 5, 4, 64], strides: [0, 64, 64] };
        let short_head = Layout { shape: SHAPE, strides: [1280, 256, 32] };
        for (layout, name) in [(&broadcast, "o"), (&tangled, "dq"), (&short_head, "dv")] {
            assert_invalid(output(&arg(name, layout), layout.shape), name);
        }
        // Inputs may overlap (broadcast K/V over the batch).
        check(&Layout::contiguous(SHAPE), &broadcast, &broadcast, &AttentionParams::default()).unwrap();
        // Padded, non-contiguous outputs are fine.
        let padded = Layout { shape: SHAPE, strides: [4096, 512, 128] };
        output(&arg("o", &padded), SHAPE).unwrap();
    }

    #[test]
    fn outputs_must_have_the_expected_shape() {
        let s = valid_shape();
        let expected = q_shape(&s);
        output(&arg("o", &Layout::contiguous(expected)), expected).unwrap();
        let [b, sq, h, d] = expected;
        for wrong in [[b + 1, sq, h, d], [b, sq - 1, h, d], [b, sq, h * 2, d], [b, sq, h, 128]] {
            assert_invalid(output(&arg("dk", &Layout::contiguous(wrong)), expected), "dk");
            assert_invalid(same_shape(&arg("do", &Layout::contiguous(wrong)), expected), "do");
        }
        // same_shape (inputs O and dO) still runs the basic checks.
        let mut odd = Layout::contiguous(expected);
        odd.strides[1] = 65;
        assert_invalid(same_shape(&arg("o", &odd), expected), "o");
        same_shape(&arg("o", &Layout::contiguous(expected)), expected).unwrap();
    }

    #[test]
    fn lse_must_hold_batch_heads_seqlen_q_floats() {
        let q = Layout::contiguous([2, 7, 4, 64]);
        let kv = Layout::contiguous([2, 300, 4, 64]);
        let s = check(&q, &kv, &kv, &AttentionParams::default()).unwrap();
        let needed = 2 * 4 * 7;
        lse("lse", needed, &s).unwrap();
        lse("lse", needed + 1, &s).unwrap();
        assert_invalid(lse("lse", needed - 1, &s), "lse");
        assert_invalid(lse("lse", 0, &s), "lse");
    }

    #[test]
    fn grid_limits_on_batch_and_heads() {
        let at_limit = Layout::contiguous([MAX_GRID_YZ, 1, 1, 64]);
        check_q(&at_limit).unwrap();
        let at_limit = Layout::contiguous([1, 1, MAX_GRID_YZ, 64]);
        check_q(&at_limit).unwrap();
        let batch = Layout::contiguous([MAX_GRID_YZ + 1, 1, 1, 64]);
        let heads = Layout::contiguous([1, 1, MAX_GRID_YZ + 1, 64]);
        for l in [&batch, &heads] {
            assert_invalid(check_q(l), "q");
            assert_invalid(output(&arg("o", l), l.shape), "o");
        }
        // K with too many heads is caught by its own checks before the comparison with q.
        let q = Layout::contiguous([1, 1, 4, 64]);
        assert_invalid(check(&q, &heads, &heads, &AttentionParams::default()), "k");
    }

    #[test]
    fn seqlen_limit() {
        let at_limit = Layout::contiguous([1, MAX_SEQLEN, 1, 64]);
        check_q(&at_limit).unwrap();
        let over = Layout::contiguous([1, MAX_SEQLEN + 1, 1, 64]);
        assert_invalid(check_q(&over), "q");
        let q = Layout::contiguous([1, 16, 1, 64]);
        assert_invalid(check(&q, &over, &over, &AttentionParams::default()), "k");
    }

    #[test]
    fn overflowing_spans_are_rejected() {
        // (batch - 1) · stride overflows usize.
        let overflow = Layout { shape: [5, 1, 1, 64], strides: [1 << 62, 64, 64] };
        assert_eq!(overflow.span(), None);
        let (argument, problem) = invalid(check_q(&overflow));
        assert_eq!(argument, "q");
        assert!(problem.contains("address space"), "{problem}");
        assert_invalid(output(&arg("o", &overflow), overflow.shape), "o");
        // Fits usize but not the kernels' 63-bit byte offsets.
        let huge = Layout { shape: [2, 1, 1, 64], strides: [1 << 62, 64, 64] };
        assert!(huge.span().is_some());
        let (argument, problem) = invalid(check_q(&huge));
        assert_eq!(argument, "q");
        assert!(problem.contains("63-bit"), "{problem}");
        // Each dimension within its limit, but b · h · s · d overflows the dQ accumulator's
        // offsets (inputs broadcast, so their own spans are small).
        let wide = Layout { shape: [MAX_GRID_YZ, MAX_SEQLEN, MAX_GRID_YZ, 64], strides: [0, 64, 0] };
        let (argument, problem) = invalid(check_q(&wide));
        assert_eq!(argument, "q");
        assert!(problem.contains("head_dim overflows"), "{problem}");
    }
}
