//! Argument checks. Everything here runs before any allocation or launch; each failure names
//! the argument and what is wrong with it.

use crate::error::{Error, Result};
use crate::tensor::{Element, Layout, TensorRef};
use crate::AttentionParams;
use flash_attn_kernels::params::{AttnShape, Strides};
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

    fn check_basic(&self) -> Result<()> {
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
        for (i, dim) in DIMS[..3].iter().enumerate() {
            let stride = self.layout.strides[i];
            if stride % 8 != 0 && self.layout.shape[i] > 1 {
                return Err(Error::invalid(
                    self.name,
                    format!("stride of dimension {dim} is {stride} elements; it must be a multiple of 8 (16 bytes)"),
                ));
            }
        }
        let span = self.layout.span().ok_or_else(|| Error::invalid(self.name, "layout overflows the address space"))?;
        if span > i64::MAX as usize / 2 {
            return Err(Error::invalid(self.name, format!("spans {span} elements, beyond the kernels' 63-bit offsets")));
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

    pub fn strides(&self) -> Strides {
        let s = self.layout.strides;
        Strides { batch: s[0] as i64, row: s[1] as i64, head: s[2] as i64 }
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
    if kl.heads() != ql.heads() {
        return Err(Error::invalid(
            "k",
            format!("heads {} differs from q's {} (grouped-query attention is not supported yet)", kl.heads(), ql.heads()),
        ));
    }
    let head_dim = ql.head_dim();
    if !SUPPORTED_HEAD_DIMS.iter().any(|&d| d as usize == head_dim) {
        return Err(Error::UnsupportedHeadDim { argument: "q", head_dim, supported: &SUPPORTED_HEAD_DIMS });
    }
    let scale = params.softmax_scale.unwrap_or(1.0 / (head_dim as f32).sqrt());
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::invalid("params.softmax_scale", format!("{scale} is not a positive finite number")));
    }
    // b·h·seqlen_q·head_dim floats of dQ accumulator must be addressable with i64 offsets.
    let rows = ql.batch() as u128 * ql.heads() as u128 * ql.seqlen() as u128;
    if rows * head_dim as u128 > (i64::MAX / 8) as u128 {
        return Err(Error::invalid("q", "batch · heads · seqlen · head_dim overflows the kernels' offsets"));
    }
    Ok(AttnShape {
        batch: ql.batch() as u32,
        heads: ql.heads() as u32,
        heads_k: kl.heads() as u32,
        seqlen_q: ql.seqlen() as u32,
        seqlen_k: kl.seqlen() as u32,
        head_dim: head_dim as u32,
        scale,
        scale_log2: scale * std::f32::consts::LOG2_E,
        window_left: -1,
        window_right: if params.causal { 0 } else { -1 },
    })
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
