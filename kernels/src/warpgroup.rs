//! The warpgroup GEMMs (`ptx::wgmma`) by element type and shape, for the Hopper kernels.
//!
//! Shapes are passed as values that are constants at every call site; after inlining only the
//! matching arm remains. A shape with no generated GEMM traps (the kernel traits' tests keep the
//! shipped configurations inside the generated set).
//!
//! How the Hopper kernels feed the tensor cores: `wgmma` is issued by a warpgroup (4 warps, 128
//! threads) for 64 rows at a time and reads its B operand (and optionally A) straight from shared
//! memory through a 64-bit descriptor (`tiling::wgmma_descriptor`: address, leading and stride
//! byte offsets, swizzle mode), so no `ldmatrix` and no operand registers are spent on them. Every
//! tile but one uses the 128-byte swizzle (`tiling::sw128_byte_offset`, loaded by `tile::Sw128Tile`;
//! the exception is the FP8 head_dim 256 forward's 64-key Vᵀ tile, whose 64-byte rows take the
//! 64-byte swizzle, `tile::Sw64Tile`):
//! 64-column panels, rows 128 bytes apart, 16-byte chunk `c` of row `r` at `c ^ (r % 8)`, panels
//! 1024-byte aligned (the kernels round the dynamic shared-memory base up; the traits reserve the
//! extra kilobyte). A K-major operand takes one descriptor per panel ([`PanelDescriptors`], up to
//! four); operands whose rows run along the GEMM's reduction dimension ("MN-major": V in P·V, dO
//! and Q in the backward's dV and dK GEMMs, dSᵀ and K in dQ) use `wgmma`'s transpose bits, the
//! leading offset stepping between panels and the stride offset between 8-row groups. `cp.async`
//! writes through the generic proxy, so every thread fences (`fence.proxy.async.shared::cta`)
//! before the barrier that publishes a tile to the tensor cores.
//!
//! The `*_issue` GEMMs leave accumulators in flight across `asm!` statements; [`wait`] names the
//! accumulators it covers as in-out operands, so that the compiler cannot move a use above it, and
//! `xtask/src/wgmma_check.rs` checks every build's PTX for an instruction that touches one anyway.

use crate::ptx::{self, wgmma};
use crate::tile::{Bf16, Element, F16, accumulators_as_a};

/// Head dims up to 256: at most four 64-column panels per K-major operand.
pub const MAX_PANELS: usize = 4;
/// One `wgmma` descriptor per 64-column panel of a K-major operand; entries past the operand's
/// last panel repeat it and are never read.
pub type PanelDescriptors = [u64; MAX_PANELS];

/// The descriptors of the `panels` panels `descriptor(0..panels)`.
#[inline(always)]
pub fn panel_descriptors(panels: u32, descriptor: impl Fn(u32) -> u64) -> PanelDescriptors {
    core::array::from_fn(|p| descriptor((p as u32).min(panels - 1)))
}

pub trait WgmmaElement: Element {
    /// `s = A·Bᵀ` over `k_dim` (64 or 128; with `n` = 64 also 192 or 256) for 64 rows × `n`
    /// (64 or 128) columns, both operands K-major in 128-byte-swizzled shared memory, one
    /// descriptor per 64-column panel (the first `k_dim / 64` of each array are read).
    ///
    /// # Safety
    /// See [`wgmma::wgmma_qk_n64_p1_bf16`].
    unsafe fn qk(n: u32, k_dim: u32, s: &mut [[f32; 4]; 16], a: PanelDescriptors, b: PanelDescriptors);
    /// `o += P·B` for 64 rows × `n` (64 or 128 over `k_dim` 64 or 128; 192 or 256 over 64)
    /// columns, P from registers, B MN-major in shared memory.
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
    /// [`WgmmaElement::qk`] without the wait: the GEMM runs on while the warpgroup goes on;
    /// its result may be read only after a [`wait`] that names `s`.
    ///
    /// # Safety
    /// As [`WgmmaElement::qk`]; also, nothing touches `s` before that wait.
    unsafe fn qk_issue(n: u32, k_dim: u32, s: &mut [[f32; 4]; 16], a: PanelDescriptors, b: PanelDescriptors);
    /// [`WgmmaElement::pv`] without the wait.
    ///
    /// # Safety
    /// As [`WgmmaElement::pv`]; also, nothing touches `o` or `p` before a [`wait`] that names `o`.
    unsafe fn pv_issue(n: u32, k_dim: u32, o: &mut [[f32; 4]; 32], p: &[[u32; 4]; 8], b: u64);
    /// [`WgmmaElement::dq`] without the wait.
    ///
    /// # Safety
    /// As [`WgmmaElement::dq`]; also, nothing touches `acc` before a [`wait`] that names it.
    unsafe fn dq_issue(n: u32, k_dim: u32, acc: &mut [[f32; 4]; 16], a: u64, b: u64);
}

/// Which accumulators a wait covers: the first `n / 2` registers of score-shaped (16 tiles) or
/// output-shaped (32 tiles) arrays, for a GEMM of `n` columns.
pub enum Waited<'a> {
    Scores(u32, &'a mut [[f32; 4]; 16]),
    Output(u32, &'a mut [[f32; 4]; 32]),
    Outputs(u32, &'a mut [[f32; 4]; 32], &'a mut [[f32; 4]; 32]),
}

/// Wait until at most `pending` (2 or 1, or else 0) of this warpgroup's issued GEMM groups are in flight,
/// ordering every later use of the named accumulators after the wait. All 128 threads call it.
#[inline(always)]
pub fn wait(pending: u32, waited: Waited<'_>) {
    match (pending, waited) {
        (2, Waited::Scores(64, s)) => wgmma::wgmma_wait2_s32(s),
        (1, Waited::Scores(64, s)) => wgmma::wgmma_wait1_s32(s),
        (1, Waited::Scores(_, s)) => wgmma::wgmma_wait1_s64(s),
        (_, Waited::Scores(64, s)) => wgmma::wgmma_wait0_s32(s),
        (_, Waited::Scores(_, s)) => wgmma::wgmma_wait0_s64(s),
        (1, Waited::Output(64, o)) => wgmma::wgmma_wait1_o32(o),
        (1, Waited::Output(128, o)) => wgmma::wgmma_wait1_o64(o),
        (1, Waited::Output(192, o)) => wgmma::wgmma_wait1_o96(o),
        (1, Waited::Output(_, o)) => wgmma::wgmma_wait1_o128(o),
        (_, Waited::Output(64, o)) => wgmma::wgmma_wait0_o32(o),
        (_, Waited::Output(128, o)) => wgmma::wgmma_wait0_o64(o),
        (_, Waited::Output(192, o)) => wgmma::wgmma_wait0_o96(o),
        (_, Waited::Output(_, o)) => wgmma::wgmma_wait0_o128(o),
        (_, Waited::Outputs(64, a, b)) => wgmma::wgmma_wait0_oo32(a, b),
        (_, Waited::Outputs(_, a, b)) => wgmma::wgmma_wait0_oo64(a, b),
    }
}

/// Wait for the phase `parity` of a "full" mbarrier (a stage's tiles landed through `cp.async`),
/// then make what landed visible to this thread's `wgmma` reads (the async proxy).
///
/// # Safety
/// `bar` is an initialized mbarrier of this block and the phase is its current or previous one.
#[inline(always)]
pub unsafe fn acquire(bar: u32, parity: u32) {
    // SAFETY: forwarded from the caller.
    unsafe { ptx::mbarrier_wait(bar, parity) };
    ptx::fence_proxy_async_shared();
}

macro_rules! wgmma_element {
    ($ty:ty, qk: $qk64_1:ident, $qk64_2:ident, $qk128_1:ident, $qk128_2:ident, $qk64_3:ident, $qk64_4:ident,
     pv: $pv64_4:ident, $pv64_8:ident, $pv128_4:ident, $pv128_8:ident, $pv192_4:ident, $pv256_4:ident,
     dq: $dq32_8:ident, $dq64_8:ident, $dq64_4:ident, $dq128_4:ident,
     qk_issue: $qki64_1:ident, $qki64_2:ident, $qki128_1:ident, $qki128_2:ident, $qki64_3:ident, $qki64_4:ident,
     pv_issue: $pvi64_4:ident, $pvi64_8:ident, $pvi128_4:ident, $pvi128_8:ident, $pvi192_4:ident, $pvi256_4:ident,
     dq_issue: $dqi32_8:ident, $dqi64_8:ident, $dqi64_4:ident, $dqi128_4:ident) => {
        impl WgmmaElement for $ty {
            #[inline(always)]
            unsafe fn qk(n: u32, k_dim: u32, s: &mut [[f32; 4]; 16], a: PanelDescriptors, b: PanelDescriptors) {
                // SAFETY: forwarded from the caller.
                unsafe {
                    match (n, k_dim) {
                        (64, 64) => wgmma::$qk64_1(s, [a[0]], [b[0]]),
                        (64, 128) => wgmma::$qk64_2(s, [a[0], a[1]], [b[0], b[1]]),
                        (64, 192) => wgmma::$qk64_3(s, [a[0], a[1], a[2]], [b[0], b[1], b[2]]),
                        (64, 256) => wgmma::$qk64_4(s, a, b),
                        (128, 64) => wgmma::$qk128_1(s, [a[0]], [b[0]]),
                        (128, 128) => wgmma::$qk128_2(s, [a[0], a[1]], [b[0], b[1]]),
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
                        (192, 64) => wgmma::$pv192_4(o, p, b),
                        (256, 64) => wgmma::$pv256_4(o, p, b),
                        _ => core::arch::nvptx::trap(),
                    }
                }
            }
            #[inline(always)]
            unsafe fn qk_issue(n: u32, k_dim: u32, s: &mut [[f32; 4]; 16], a: PanelDescriptors, b: PanelDescriptors) {
                // SAFETY: forwarded from the caller.
                unsafe {
                    match (n, k_dim) {
                        (64, 64) => wgmma::$qki64_1(s, [a[0]], [b[0]]),
                        (64, 128) => wgmma::$qki64_2(s, [a[0], a[1]], [b[0], b[1]]),
                        (64, 192) => wgmma::$qki64_3(s, [a[0], a[1], a[2]], [b[0], b[1], b[2]]),
                        (64, 256) => wgmma::$qki64_4(s, a, b),
                        (128, 64) => wgmma::$qki128_1(s, [a[0]], [b[0]]),
                        (128, 128) => wgmma::$qki128_2(s, [a[0], a[1]], [b[0], b[1]]),
                        _ => core::arch::nvptx::trap(),
                    }
                }
            }
            #[inline(always)]
            unsafe fn pv_issue(n: u32, k_dim: u32, o: &mut [[f32; 4]; 32], p: &[[u32; 4]; 8], b: u64) {
                // SAFETY: forwarded from the caller.
                unsafe {
                    match (n, k_dim) {
                        (64, 64) => wgmma::$pvi64_4(o, p, b),
                        (64, 128) => wgmma::$pvi64_8(o, p, b),
                        (128, 64) => wgmma::$pvi128_4(o, p, b),
                        (128, 128) => wgmma::$pvi128_8(o, p, b),
                        (192, 64) => wgmma::$pvi192_4(o, p, b),
                        (256, 64) => wgmma::$pvi256_4(o, p, b),
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
            #[inline(always)]
            unsafe fn dq_issue(n: u32, k_dim: u32, acc: &mut [[f32; 4]; 16], a: u64, b: u64) {
                // SAFETY: forwarded from the caller.
                unsafe {
                    match (n, k_dim) {
                        (32, 128) => wgmma::$dqi32_8(acc, a, b),
                        (64, 128) => wgmma::$dqi64_8(acc, a, b),
                        (64, 64) => wgmma::$dqi64_4(acc, a, b),
                        (128, 64) => wgmma::$dqi128_4(acc, a, b),
                        _ => core::arch::nvptx::trap(),
                    }
                }
            }
        }
    };
}

wgmma_element!(
    Bf16,
    qk: wgmma_qk_n64_p1_bf16, wgmma_qk_n64_p2_bf16, wgmma_qk_n128_p1_bf16, wgmma_qk_n128_p2_bf16, wgmma_qk_n64_p3_bf16,
    wgmma_qk_n64_p4_bf16,
    pv: wgmma_pv_n64_k4_bf16, wgmma_pv_n64_k8_bf16, wgmma_pv_n128_k4_bf16, wgmma_pv_n128_k8_bf16, wgmma_pv_n192_k4_bf16,
    wgmma_pv_n256_k4_bf16,
    dq: wgmma_dq_n32_k8_bf16, wgmma_dq_n64_k8_bf16, wgmma_dq_n64_k4_bf16, wgmma_dq_n128_k4_bf16,
    qk_issue: wgmma_qk_issue_n64_p1_bf16, wgmma_qk_issue_n64_p2_bf16, wgmma_qk_issue_n128_p1_bf16, wgmma_qk_issue_n128_p2_bf16,
    wgmma_qk_issue_n64_p3_bf16, wgmma_qk_issue_n64_p4_bf16,
    pv_issue: wgmma_pv_issue_n64_k4_bf16, wgmma_pv_issue_n64_k8_bf16, wgmma_pv_issue_n128_k4_bf16, wgmma_pv_issue_n128_k8_bf16,
    wgmma_pv_issue_n192_k4_bf16, wgmma_pv_issue_n256_k4_bf16,
    dq_issue: wgmma_dq_issue_n32_k8_bf16, wgmma_dq_issue_n64_k8_bf16, wgmma_dq_issue_n64_k4_bf16, wgmma_dq_issue_n128_k4_bf16
);
wgmma_element!(
    F16,
    qk: wgmma_qk_n64_p1_f16, wgmma_qk_n64_p2_f16, wgmma_qk_n128_p1_f16, wgmma_qk_n128_p2_f16, wgmma_qk_n64_p3_f16,
    wgmma_qk_n64_p4_f16,
    pv: wgmma_pv_n64_k4_f16, wgmma_pv_n64_k8_f16, wgmma_pv_n128_k4_f16, wgmma_pv_n128_k8_f16, wgmma_pv_n192_k4_f16,
    wgmma_pv_n256_k4_f16,
    dq: wgmma_dq_n32_k8_f16, wgmma_dq_n64_k8_f16, wgmma_dq_n64_k4_f16, wgmma_dq_n128_k4_f16,
    qk_issue: wgmma_qk_issue_n64_p1_f16, wgmma_qk_issue_n64_p2_f16, wgmma_qk_issue_n128_p1_f16, wgmma_qk_issue_n128_p2_f16,
    wgmma_qk_issue_n64_p3_f16, wgmma_qk_issue_n64_p4_f16,
    pv_issue: wgmma_pv_issue_n64_k4_f16, wgmma_pv_issue_n64_k8_f16, wgmma_pv_issue_n128_k4_f16, wgmma_pv_issue_n128_k8_f16,
    wgmma_pv_issue_n192_k4_f16, wgmma_pv_issue_n256_k4_f16,
    dq_issue: wgmma_dq_issue_n32_k8_f16, wgmma_dq_issue_n64_k8_f16, wgmma_dq_issue_n64_k4_f16, wgmma_dq_issue_n128_k4_f16
);

/// 8-key score tiles of the warp-specialized forward's score arrays: up to 192 keys (the FP8
/// forward's widest tiles; the 16-bit GEMMs use the first 16).
pub const WS_SCORE_TILES8: usize = 24;
/// A warpgroup thread's scores of one K tile in the warp-specialized forward.
pub type WsScores = [[f32; 4]; WS_SCORE_TILES8];

/// The first 16 score tiles of `s`: the arrays the 16-bit GEMMs and waits name. (The length is
/// checked at compile time, so the `unwrap` is optimized away, like the kernels' bounds checks.)
#[inline(always)]
fn first16(s: &mut WsScores) -> &mut [[f32; 4]; 16] {
    const { assert!(WS_SCORE_TILES8 >= 16) };
    s.first_chunk_mut::<16>().unwrap()
}

/// [`wait`] for the warp-specialized forward's scores of an `n`-key tile (up to 192).
#[inline(always)]
pub fn wait_scores(pending: u32, n: u32, s: &mut WsScores) {
    match (pending, n) {
        (1, 192) => wgmma::wgmma_wait1_s96(s),
        (_, 192) => wgmma::wgmma_wait0_s96(s),
        _ => wait(pending, Waited::Scores(n, first16(s))),
    }
}

/// FP8 e4m3 inputs (the FP8 forward): Q and K K-major, V transposed (Vᵀ, also K-major, as 8-bit
/// `wgmma` operands must be), bf16 output.
pub struct E4m3;

/// The inputs of the warp-specialized forward: what differs between 16-bit and e4m3 Q, K, V.
pub trait WsInput {
    /// The element type of O.
    type Out: WgmmaElement;
    /// Bytes per element (must equal the traits' `ELEMENT_BYTES`).
    const BYTES: u32;
    /// The stored element, for addressing (`u16`, `u8`).
    type Stored;
    /// [`WgmmaElement::qk_issue`] for 64 rows × `n` keys over `head_dim`, one descriptor per
    /// 128-byte panel.
    ///
    /// # Safety
    /// As [`WgmmaElement::qk_issue`].
    unsafe fn issue_scores(n: u32, head_dim: u32, s: &mut WsScores, a: PanelDescriptors, b: PanelDescriptors);
    /// [`WgmmaElement::pv_issue`]: `o += P·V` over `block_n` keys; `v` describes V (16-bit: MN-major)
    /// or Vᵀ (e4m3: K-major, keys in [`crate::tiling::fp8_key_of_position`] order).
    ///
    /// # Safety
    /// As [`WgmmaElement::pv_issue`].
    unsafe fn issue_output(head_dim: u32, block_n: u32, o: &mut [[f32; 4]; 32], p: &[[u32; 4]; 8], v: u64);
    /// The probabilities (score accumulators of `n_tiles8` 8-key tiles) as the A operand of P·V.
    fn probabilities<const N: usize>(s: &[[f32; 4]; N], n_tiles8: usize) -> [[u32; 4]; 8];
}

macro_rules! ws_input_16bit {
    ($ty:ty) => {
        impl WsInput for $ty {
            type Out = $ty;
            const BYTES: u32 = 2;
            type Stored = u16;
            #[inline(always)]
            unsafe fn issue_scores(n: u32, head_dim: u32, s: &mut WsScores, a: PanelDescriptors, b: PanelDescriptors) {
                // SAFETY: forwarded from the caller.
                unsafe { <$ty as WgmmaElement>::qk_issue(n, head_dim, first16(s), a, b) }
            }
            #[inline(always)]
            unsafe fn issue_output(head_dim: u32, block_n: u32, o: &mut [[f32; 4]; 32], p: &[[u32; 4]; 8], v: u64) {
                // SAFETY: forwarded from the caller.
                unsafe { <$ty as WgmmaElement>::pv_issue(head_dim, block_n, o, p, v) }
            }
            /// Pairs of 8-key tiles, two values to a register (the `mma.m16n8k16` A layout).
            #[inline(always)]
            fn probabilities<const N: usize>(s: &[[f32; 4]; N], n_tiles8: usize) -> [[u32; 4]; 8] {
                let mut a = [[0u32; 4]; 8];
                #[allow(clippy::needless_range_loop)] // index loops are what unroll fully
                for kk in 0..n_tiles8 / 2 {
                    a[kk] = accumulators_as_a::<$ty>(&s[2 * kk], &s[2 * kk + 1]);
                }
                a
            }
        }
    };
}
ws_input_16bit!(Bf16);
ws_input_16bit!(F16);

impl WsInput for E4m3 {
    type Out = Bf16;
    const BYTES: u32 = 1;
    type Stored = u8;
    #[inline(always)]
    unsafe fn issue_scores(n: u32, head_dim: u32, s: &mut WsScores, a: PanelDescriptors, b: PanelDescriptors) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match (n, head_dim) {
                (128, 128) => wgmma::wgmma_qk_issue_n128_p1_e4m3(s, [a[0]], [b[0]]),
                (192, 128) => wgmma::wgmma_qk_issue_n192_p1_e4m3(s, [a[0]], [b[0]]),
                (128, 256) => wgmma::wgmma_qk_issue_n128_p2_e4m3(s, [a[0], a[1]], [b[0], b[1]]),
                (64, 256) => wgmma::wgmma_qk_issue_n64_p2_e4m3(s, [a[0], a[1]], [b[0], b[1]]),
                _ => core::arch::nvptx::trap(),
            }
        }
    }
    #[inline(always)]
    unsafe fn issue_output(head_dim: u32, block_n: u32, o: &mut [[f32; 4]; 32], p: &[[u32; 4]; 8], v: u64) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match (head_dim, block_n) {
                (128, 128) => wgmma::wgmma_pv_issue_n128_k4_e4m3(o, p, v),
                (256, 128) => wgmma::wgmma_pv_issue_n256_k4_e4m3(o, p, v),
                (256, 64) => wgmma::wgmma_pv_issue_n256_k2_e4m3(o, p, v),
                (128, 192) => wgmma::wgmma_pv_issue_n128_k6_e4m3(o, p, v),
                _ => core::arch::nvptx::trap(),
            }
        }
    }
    /// Per 32-key step `c` (score tiles 4c..4c+4): a thread's row-`lane / 4` scores of tiles 4c and
    /// 4c + 1, its row-`lane / 4 + 8` ones, then the same of tiles 4c + 2 and 4c + 3, four bytes
    /// to a register in accumulator order (which is why Vᵀ's keys are permuted).
    #[inline(always)]
    fn probabilities<const N: usize>(s: &[[f32; 4]; N], n_tiles8: usize) -> [[u32; 4]; 8] {
        let mut a = [[0u32; 4]; 8];
        #[allow(clippy::needless_range_loop)] // index loops are what unroll fully
        for c in 0..n_tiles8 / 4 {
            let t = 4 * c;
            let pack = |x: usize, y: usize, e: usize| ptx::pack_e4m3x4(s[x][e], s[x][e + 1], s[y][e], s[y][e + 1]);
            a[c] = [pack(t, t + 1, 0), pack(t, t + 1, 2), pack(t + 2, t + 3, 0), pack(t + 2, t + 3, 2)];
        }
        a
    }
}
