//! The warpgroup GEMMs (`ptx::wgmma`) by element type and shape, for the Hopper kernels.
//!
//! Shapes are passed as values that are constants at every call site; after inlining only the
//! matching arm remains. A shape with no generated GEMM traps (the kernel traits' tests keep the
//! shipped configurations inside the generated set).

use crate::ptx::wgmma;
use crate::tile::{Bf16, Element, F16};

pub trait WgmmaElement: Element {
    /// `s = A·Bᵀ` over `k_dim` (64 or 128) for 64 rows × `n` (64 or 128) columns, both operands
    /// K-major in 128-byte-swizzled shared memory, one descriptor per 64-column panel.
    ///
    /// # Safety
    /// See [`wgmma::wgmma_qk_n64_p1_bf16`].
    unsafe fn qk(n: u32, k_dim: u32, s: &mut [[f32; 4]; 16], a: [u64; 2], b: [u64; 2]);
    /// `o += P·B` for 64 rows × `n` (64 or 128) columns over `k_dim` (64 or 128), P from
    /// registers, B MN-major in shared memory.
    ///
    /// # Safety
    /// See [`wgmma::wgmma_pv_n64_k4_bf16`].
    unsafe fn pv(n: u32, k_dim: u32, o: &mut [[f32; 4]; 32], p: &[[u32; 4]; 8], b: u64);
    /// `acc = A·B` for 64 rows × `n` columns over `k_dim` (n × k_dim: 32 × 128, 64 × 128,
    /// 64 × 64, 128 × 64), both operands MN-major.
    ///
    /// # Safety
    /// See [`wgmma::wgmma_dq_n32_k8_bf16`].
    unsafe fn dq(n: u32, k_dim: u32, acc: &mut [[f32; 4]; 16], a: u64, b: u64);
}

macro_rules! wgmma_element {
    ($ty:ty, $qk64_1:ident, $qk64_2:ident, $qk128_1:ident, $qk128_2:ident,
     $pv64_4:ident, $pv64_8:ident, $pv128_4:ident, $pv128_8:ident, $dq32_8:ident, $dq64_8:ident,
     $dq64_4:ident, $dq128_4:ident) => {
        impl WgmmaElement for $ty {
            #[inline(always)]
            unsafe fn qk(n: u32, k_dim: u32, s: &mut [[f32; 4]; 16], a: [u64; 2], b: [u64; 2]) {
                // SAFETY: forwarded from the caller.
                unsafe {
                    match (n, k_dim) {
                        (64, 64) => wgmma::$qk64_1(s, [a[0]], [b[0]]),
                        (64, 128) => wgmma::$qk64_2(s, a, b),
                        (128, 64) => wgmma::$qk128_1(s, [a[0]], [b[0]]),
                        (128, 128) => wgmma::$qk128_2(s, a, b),
                        _ => core::arch::nvptx::trap(),
                    }
                }
            }
            #[inline(always)]
            unsafe fn pv(n: u32, k_dim: u32, o: &mut [[f32; 4]; 32], p: &[[u32; 4]; 8], b: u64) {
                // SAFETY: forwarded from the caller.
                unsafe {
                    match (n, k_dim) {
                        (64, 64) => wgmma::$pv64_4(o, p, b),
                        (64, 128) => wgmma::$pv64_8(o, p, b),
                        (128, 64) => wgmma::$pv128_4(o, p, b),
                        (128, 128) => wgmma::$pv128_8(o, p, b),
                        _ => core::arch::nvptx::trap(),
                    }
                }
            }
            #[inline(always)]
            unsafe fn dq(n: u32, k_dim: u32, acc: &mut [[f32; 4]; 16], a: u64, b: u64) {
                // SAFETY: forwarded from the caller.
                unsafe {
                    match (n, k_dim) {
                        (32, 128) => wgmma::$dq32_8(acc, a, b),
                        (64, 128) => wgmma::$dq64_8(acc, a, b),
                        (64, 64) => wgmma::$dq64_4(acc, a, b),
                        (128, 64) => wgmma::$dq128_4(acc, a, b),
                        _ => core::arch::nvptx::trap(),
                    }
                }
            }
        }
    };
}

wgmma_element!(
    Bf16,
    wgmma_qk_n64_p1_bf16,
    wgmma_qk_n64_p2_bf16,
    wgmma_qk_n128_p1_bf16,
    wgmma_qk_n128_p2_bf16,
    wgmma_pv_n64_k4_bf16,
    wgmma_pv_n64_k8_bf16,
    wgmma_pv_n128_k4_bf16,
    wgmma_pv_n128_k8_bf16,
    wgmma_dq_n32_k8_bf16,
    wgmma_dq_n64_k8_bf16,
    wgmma_dq_n64_k4_bf16,
    wgmma_dq_n128_k4_bf16
);
wgmma_element!(
    F16,
    wgmma_qk_n64_p1_f16,
    wgmma_qk_n64_p2_f16,
    wgmma_qk_n128_p1_f16,
    wgmma_qk_n128_p2_f16,
    wgmma_pv_n64_k4_f16,
    wgmma_pv_n64_k8_f16,
    wgmma_pv_n128_k4_f16,
    wgmma_pv_n128_k8_f16,
    wgmma_dq_n32_k8_f16,
    wgmma_dq_n64_k8_f16,
    wgmma_dq_n64_k4_f16,
    wgmma_dq_n128_k4_f16
);
