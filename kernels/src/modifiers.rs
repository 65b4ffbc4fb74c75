//! The score step shared by every kernel: the mask and the score modifiers (softcap, ALiBi,
//! attention sinks, dropout), applied to a score fragment given its query and key indices.
//!
//! Definitions (FlashAttention's conventions), for query `i`, key `j` of query head `h` and
//! `t = scale · q·k`:
//! - softcap `c > 0`: `t ← c · tanh(t / c)`;
//! - ALiBi slope `m`: `t ← t − m · |i + seqlen_k − seqlen_q − j|`;
//! - mask ([`Mask`]): keys outside the window (causal: `(-1, 0)`) leave the softmax;
//! - sink logit `σ_h`: the softmax denominator gains `exp(σ_h)`, with no value row (every
//!   kernel: the forward starts each row's online softmax at the sink);
//! - dropout `p`: `P_ij ← P_ij · keep_ij / (1 − p)` in O = P·V only (the LSE keeps the full
//!   softmax), `keep_ij` drawn by Philox-4x32-10 ([`Dropout`]).
//!
//! Units: the kernels keep raw scores `s = q·k` and fold `scale · log2 e` into their
//! exponentials. [`ScoreMods::score`] returns the modified score in those same raw units
//! (modified `t` / scale), so the online softmax and the backward's recomputation of P stay as
//! they are. The backward's softcap derivative is recovered from P itself
//! ([`ScoreMods::softcap_slope`]), so no kernel keeps a second array of scores alive.
//!
//! Kernels that run the modifiers are the `_mods` entry points (a const generic `MODS`); the
//! dense ones compile the mask and the sinks' starting state alone. Everything here is plain arithmetic compiled into the PTX
//! and unit-tested on the CPU, with the host's `exp2`/`log2` in place of the hardware's.

#[cfg(target_arch = "nvptx64")]
use crate::params::FwdParams;
use crate::params::{AttnShape, Modifiers};
use crate::tiling::{FragmentMask, Mask};

pub const LOG2_E: f32 = core::f32::consts::LOG2_E;
pub const LN_2: f32 = core::f32::consts::LN_2;

/// The approximations the GPU uses, and the host's exact functions for the CPU tests.
mod math {
    #[cfg(target_arch = "nvptx64")]
    pub use crate::ptx::{exp2, log2, rcp};
    #[cfg(not(target_arch = "nvptx64"))]
    pub fn exp2(x: f32) -> f32 {
        x.exp2()
    }
    #[cfg(not(target_arch = "nvptx64"))]
    pub fn log2(x: f32) -> f32 {
        x.log2()
    }
    #[cfg(not(target_arch = "nvptx64"))]
    pub fn rcp(x: f32) -> f32 {
        1.0 / x
    }
}

/// tanh through one exponential and one reciprocal: `1 − 2 / (e^{2x} + 1)`. Absolute error a few
/// f32 ulps; saturates cleanly (e^{2x} = inf gives 1, 0 gives −1).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 * math::rcp(math::exp2(2.0 * LOG2_E * x) + 1.0)
}

/// (row, column) of element `e` of 8-column tile `t` in a 16-row `mma`/`wgmma` accumulator
/// fragment whose rows start at `row0` and columns at `col0`: lane `l` holds rows `l / 4` and
/// `l / 4 + 8`, columns `2 · (l % 4)` and the next.
#[inline(always)]
pub const fn fragment_element(row0: u32, col0: u32, lane: u32, t: u32, e: u32) -> (u32, u32) {
    (row0 + lane / 4 + 8 * (e / 2), col0 + 8 * t + 2 * (lane % 4) + e % 2)
}

/// The modifiers of one (batch, query head), in the kernels' raw-score units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreMods {
    /// softcap / scale; 0: no softcap.
    cap_over_scale: f32,
    /// scale / softcap.
    scale_over_cap: f32,
    /// slope / scale; 0: no ALiBi.
    alibi_over_scale: f32,
    /// `seqlen_k − seqlen_q`: query `i` sits on the diagonal at key `i + diag_offset`.
    diag_offset: i32,
    /// 1 / (scale · log2 e): log2 units back to raw units.
    inv_scale_log2: f32,
    pub dropout: Dropout,
}

impl ScoreMods {
    /// The modifiers of `(batch, head)` given its ALiBi slope (0 for none).
    #[inline(always)]
    pub fn new(shape: &AttnShape, m: &Modifiers, slope: f32, batch: u32, head: u32) -> Self {
        let softcap = m.softcap;
        ScoreMods {
            cap_over_scale: softcap / shape.scale,
            scale_over_cap: if softcap > 0.0 { shape.scale / softcap } else { 0.0 },
            alibi_over_scale: slope / shape.scale,
            diag_offset: shape.seqlen_k as i32 - shape.seqlen_q as i32,
            inv_scale_log2: 1.0 / shape.scale_log2,
            dropout: Dropout::new(m, batch * shape.heads + head),
        }
    }

    /// [`ScoreMods::new`] with the slope read from the parameter block's slopes.
    ///
    /// # Safety
    /// `m.alibi_slopes` is 0 or points at the slopes the host validated (`batch` entries
    /// `alibi_batch_stride` apart, `heads` each).
    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    pub unsafe fn load(shape: &AttnShape, m: &Modifiers, batch: u32, head: u32) -> Self {
        let slope = if m.alibi_slopes == 0 {
            0.0
        } else {
            let at = (batch * m.alibi_batch_stride + head) as usize;
            // SAFETY: guaranteed by the caller.
            unsafe { *(m.alibi_slopes as *const f32).wrapping_add(at) }
        };
        Self::new(shape, m, slope, batch, head)
    }

    /// The forward's modifiers of `(batch, head)` with the sink's log2 logit (−inf for none)
    /// and the factor of the normalized output (dropout's `1 / (1 − p)`, else 1). Without
    /// `MODS` the modifiers are the neutral values, which the compiler folds away; sinks touch
    /// only a row's last step, so every kernel reads them.
    ///
    /// # Safety
    /// As [`ScoreMods::load`] and [`sink_log2`].
    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    pub unsafe fn for_forward<const MODS: bool>(p: &FwdParams, batch: u32, head: u32) -> (Self, f32, f32) {
        // SAFETY: guaranteed by the caller.
        let sink = unsafe { sink_log2(&p.mods, head) };
        if !MODS {
            return (Self::new(&p.shape, &Modifiers::default(), 0.0, 0, 0), sink, 1.0);
        }
        // SAFETY: guaranteed by the caller.
        let mods = unsafe { Self::load(&p.shape, &p.mods, batch, head) };
        let scale = if mods.dropout.on() { mods.dropout.scale } else { 1.0 };
        (mods, sink, scale)
    }

    /// The backward's modifiers of `(batch, head)` (neutral without `MODS`).
    ///
    /// # Safety
    /// As [`ScoreMods::load`].
    #[cfg(target_arch = "nvptx64")]
    #[inline(always)]
    pub unsafe fn for_backward<const MODS: bool>(p: &FwdParams, batch: u32, head: u32) -> Self {
        if MODS {
            // SAFETY: guaranteed by the caller.
            unsafe { Self::load(&p.shape, &p.mods, batch, head) }
        } else {
            Self::new(&p.shape, &Modifiers::default(), 0.0, 0, 0)
        }
    }

    /// |i + seqlen_k − seqlen_q − j|: ALiBi's distance of key `k` from query `q`'s diagonal.
    #[inline(always)]
    pub const fn distance(&self, q: u32, k: u32) -> u32 {
        (q as i32 + self.diag_offset - k as i32).unsigned_abs()
    }

    /// The modified score of raw score `s` (softcap, then ALiBi), in raw units.
    #[inline(always)]
    pub fn score(&self, s: f32, q: u32, k: u32) -> f32 {
        let mut x = s;
        if self.cap_over_scale != 0.0 {
            x = self.cap_over_scale * tanh(x * self.scale_over_cap);
        }
        if self.alibi_over_scale != 0.0 {
            x -= self.alibi_over_scale * self.distance(q, k) as f32;
        }
        x
    }

    /// Backward: the softcap's derivative `1 − tanh²(t / c)` at the pair whose probability is
    /// `p = exp(t' − LSE)` (`t'` the modified score, `lse_log2 = LSE · log2 e`). It inverts the
    /// forward step: `t' = log p + LSE`, ALiBi undone, then tanh = capped score / c. 1 without
    /// softcap or where `p` is 0 (the gradient is 0 there anyway).
    #[inline(always)]
    pub fn softcap_slope(&self, p: f32, lse_log2: f32, q: u32, k: u32) -> f32 {
        if self.cap_over_scale == 0.0 || p <= 0.0 {
            return 1.0;
        }
        let modified = (math::log2(p) + lse_log2) * self.inv_scale_log2;
        let capped = modified + self.alibi_over_scale * self.distance(q, k) as f32;
        let th = capped * self.scale_over_cap;
        1.0 - th * th
    }

    /// Backward: one 8-column tile of Pᵀ (rows: keys, columns: queries) from the raw scores, in
    /// place. `s[e]` holds the pair `(q + e % 2, k + 8 · (e / 2))` (a lane's four elements,
    /// [`fragment_element`]), `lse_log2` the two queries' LSE · log2 e, `visible(e)` the mask.
    /// With dropout, a dropped entry is stored negated and a kept one times `1 / (1 − p)`: the
    /// sign carries the mask to [`ScoreMods::score_gradient`], and `max(x, 0)` is the dropped
    /// probability that dV = Pᵀ·dO needs ([`dv_operand`]). One Philox block serves each pair
    /// of queries.
    #[allow(clippy::needless_range_loop)] // index loops are what unroll fully
    #[inline(always)]
    pub fn probabilities<const MODS: bool>(
        &self,
        s: &mut [f32; 4],
        q: u32,
        k: u32,
        scale_log2: f32,
        lse_log2: [f32; 2],
        visible: impl Fn(u32) -> bool,
    ) {
        if !MODS {
            // One select per element after its exponential: no branch, no mask array.
            for e in 0..4 {
                let p = math::exp2(fma(s[e], scale_log2, -lse_log2[e % 2]));
                s[e] = if visible(e as u32) { p } else { 0.0 };
            }
            return;
        }
        for e in 0..4 {
            let x = self.score(s[e], q + e as u32 % 2, k + 8 * (e as u32 / 2));
            s[e] = math::exp2(fma(x, scale_log2, -lse_log2[e % 2]));
        }
        if self.dropout.on() {
            for half in 0..2 {
                let (a, b) = self.dropout.keeps_query_pair(q, k + 8 * half as u32);
                let d = self.dropout.scale;
                s[2 * half] = if a { s[2 * half] * d } else { -s[2 * half] };
                s[2 * half + 1] = if b { s[2 * half + 1] * d } else { -s[2 * half + 1] };
            }
        }
        for e in 0..4 {
            s[e] = if visible(e as u32) { s[e] } else { 0.0 };
        }
    }

    /// Backward: dSᵀ (the gradient of the scaled score) from [`ScoreMods::probabilities`]'s `p`,
    /// dPᵀ = dO·V and D = rowsum(dO ∘ O): `P · (z · dP − D)` with `z` the dropout factor, times
    /// the softcap's derivative.
    #[inline(always)]
    pub fn score_gradient<const MODS: bool>(&self, p: f32, dp: f32, d: f32, lse_log2: f32, q: u32, k: u32) -> f32 {
        if !MODS {
            return p * (dp - d);
        }
        let (prob, gradient) = if !self.dropout.on() {
            (p, p * (dp - d))
        } else if p >= 0.0 {
            // Kept: p = P / keep, so P · (dP / keep − D) = p · (dP − keep · D).
            (p * self.dropout.keep_probability, p * (dp - self.dropout.keep_probability * d))
        } else {
            // Dropped: p = −P, and P · (0 − D) = p · D.
            (-p, p * d)
        };
        gradient * self.softcap_slope(prob, lse_log2, q, k)
    }
}

/// The dropped probability for dV = Pᵀ·dO from [`ScoreMods::probabilities`]'s encoding.
#[inline(always)]
pub fn dv_operand<const MODS: bool>(p: f32) -> f32 {
    if MODS { p.max(0.0) } else { p }
}

/// 2^x on the FMA pipe instead of the MUFU, for the share of a tile's exponentials the FP8
/// forward's `POLY_EXP_TILES` moves (FlashAttention-4's split of the exponentials): 2^x = 2^j · 2^f
/// with j = round(x) (adding 1.5 · 2²³ leaves j in the low mantissa bits) and f in [−½, ½] by a
/// cubic fitted for relative error (7.5e-5: far below e4m3's 2⁻⁴ and bf16's 2⁻⁸). 2^j enters by
/// exponent arithmetic, so x is clamped at −125, where 2^j is still normal: callers use it only
/// on tiles without masked (−inf) scores, where the clamp moves nothing but values below 2⁻¹²⁵.
#[inline(always)]
pub fn exp2_poly(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-125.0);
    let t = x + ROUND;
    let f = x - (t - ROUND);
    let p = fma(fma(fma(0.055_171_61, f, 0.242_611_11), f, 0.693_260_97), f, 0.999_928_06);
    f32::from_bits(p.to_bits().wrapping_add(t.to_bits() << 23))
}

/// a · b + c, rounded once on the GPU.
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_arch = "nvptx64")]
    {
        crate::ptx::fma(a, b, c)
    }
    #[cfg(not(target_arch = "nvptx64"))]
    {
        a.mul_add(b, c)
    }
}

/// The sink's log2 logit for query head `head`, or −inf without sinks.
///
/// # Safety
/// `m.sinks` is 0 or points at `heads` floats (host-checked).
#[cfg(target_arch = "nvptx64")]
#[inline(always)]
pub unsafe fn sink_log2(m: &Modifiers, head: u32) -> f32 {
    if m.sinks == 0 {
        f32::NEG_INFINITY
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { *(m.sinks as *const f32).wrapping_add(head as usize) * LOG2_E }
    }
}

/// The end of a forward row: from the running max (log2 units, −inf when every key was
/// masked) and the row's sum of `exp2(x − max)` (0 for such a row), the factor that normalizes
/// the output accumulator and the natural-log LSE; (0, +inf) for a row that saw nothing. A sink
/// needs nothing here: it is the online softmax's starting state (`OnlineSoftmax::starting_at`
/// in the forward), a key of score σ_h whose value row is zero.
#[inline(always)]
pub fn finish_row(max: f32, sum: f32) -> (f32, f32) {
    let empty = sum == 0.0;
    let inv = if empty { 0.0 } else { 1.0 / sum };
    let lse = if empty { f32::INFINITY } else { (max + math::log2(sum)) * LN_2 };
    (inv, lse)
}

/// Dropout's keep decisions: Philox-4x32-10 keyed by the seed (key words: its low half, and its
/// high half plus the offset's high half) with counter `(i / 2, j / 2, batch · heads + head,
/// offset's low half)`; the four output words serve the 2 × 2 block of (query, key) pairs
/// `(i, j)` at word `2 · (i % 2) + j % 2`, and a pair is kept iff its word is below
/// `threshold = ⌊(1 − p) · 2³²⌋`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// 0: no dropout.
    threshold: u32,
    key: [u32; 2],
    /// batch · heads + head.
    stream: u32,
    offset: u32,
    /// 1 / (1 − p).
    pub scale: f32,
    /// 1 − p.
    pub keep_probability: f32,
}

impl Dropout {
    #[inline(always)]
    pub fn new(m: &Modifiers, stream: u32) -> Self {
        Dropout {
            threshold: m.dropout_keep_threshold,
            key: [m.dropout_seed as u32, ((m.dropout_seed >> 32) as u32).wrapping_add((m.dropout_offset >> 32) as u32)],
            stream,
            offset: m.dropout_offset as u32,
            scale: m.dropout_scale,
            keep_probability: if m.dropout_scale > 0.0 { 1.0 / m.dropout_scale } else { 1.0 },
        }
    }

    #[inline(always)]
    pub const fn on(&self) -> bool {
        self.threshold != 0
    }

    /// The Philox words of the 2 × 2 block holding `(q, k)`.
    #[inline(always)]
    pub const fn block(&self, q: u32, k: u32) -> [u32; 4] {
        philox4x32_10([q >> 1, k >> 1, self.stream, self.offset], self.key)
    }

    /// Whether the pair `(q, k)` is kept.
    #[inline(always)]
    pub const fn keeps(&self, q: u32, k: u32) -> bool {
        let w = self.block(q, k);
        // Selects, not an indexed array: a register array indexed at run time would go to local
        // memory on the GPU.
        let word = match (q & 1, k & 1) {
            (0, 0) => w[0],
            (0, _) => w[1],
            (_, 0) => w[2],
            _ => w[3],
        };
        word < self.threshold
    }

    /// Keep decisions of `(q, k)` and `(q, k + 1)` for even `k` (a forward fragment's pair), from
    /// one Philox block.
    #[inline(always)]
    pub const fn keeps_key_pair(&self, q: u32, k: u32) -> (bool, bool) {
        let w = self.block(q, k);
        let (a, b) = if q & 1 == 0 { (w[0], w[1]) } else { (w[2], w[3]) };
        (a < self.threshold, b < self.threshold)
    }

    /// Keep decisions of `(q, k)` and `(q + 1, k)` for even `q` (a backward fragment's pair).
    #[inline(always)]
    pub const fn keeps_query_pair(&self, q: u32, k: u32) -> (bool, bool) {
        let w = self.block(q, k);
        let (a, b) = if k & 1 == 0 { (w[0], w[2]) } else { (w[1], w[3]) };
        (a < self.threshold, b < self.threshold)
    }
}

/// The keep threshold for dropout probability `p` in `(0, 1)`: `⌊(1 − p) · 2³²⌋`, at least 1.
pub fn keep_threshold(p: f64) -> u32 {
    // `as` truncates toward zero (the floor here) and saturates at u32::MAX.
    (((1.0 - p) * 4_294_967_296.0) as u32).max(1)
}

/// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", 2011).
#[inline(always)]
pub const fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    let mut round = 0;
    while round < 10 {
        let p0 = M0 * c0 as u64;
        let p1 = M1 * c2 as u64;
        let next = [(p1 >> 32) as u32 ^ c1 ^ k0, p1 as u32, (p0 >> 32) as u32 ^ c3 ^ k1, p0 as u32];
        [c0, c1, c2, c3] = next;
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
        round += 1;
    }
    [c0, c1, c2, c3]
}

/// The forward's score step on one 16-row fragment (rows: queries from `q0`; columns: keys
/// from `k0`): the modifiers (in `_mods` kernels), then the mask (−inf) unless the caller knows
/// the tile is wholly visible.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn forward_scores<const MODS: bool, const N: usize>(
    s: &mut [[f32; 4]; N],
    n_tiles: usize,
    q0: u32,
    k0: u32,
    lane: u32,
    mask: &Mask,
    masked: bool,
    mods: &ScoreMods,
) {
    // Index loops: what the compiler unrolls fully, keeping the fragment in registers.
    if MODS {
        #[allow(clippy::needless_range_loop)]
        for t in 0..n_tiles {
            for e in 0..4 {
                let (q, k) = fragment_element(q0, k0, lane, t as u32, e as u32);
                s[t][e] = mods.score(s[t][e], q, k);
            }
        }
    }
    if masked {
        let (row, _) = fragment_element(q0, k0, lane, 0, 0);
        let rows = FragmentMask::of_queries(*mask, row);
        #[allow(clippy::needless_range_loop)]
        for t in 0..n_tiles {
            for e in 0..4 {
                let (_, k) = fragment_element(q0, k0, lane, t as u32, e as u32);
                if !rows.allows(e as u32, k) {
                    s[t][e] = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// The forward's dropout on one 16-row fragment of probabilities (after the row sums took
/// them): dropped entries become 0; the `1 / (1 − p)` factor is applied to O at the end.
#[inline(always)]
pub fn forward_dropout<const N: usize>(
    p: &mut [[f32; 4]; N],
    n_tiles: usize,
    q0: u32,
    k0: u32,
    lane: u32,
    d: &Dropout,
) {
    if !d.on() {
        return;
    }
    #[allow(clippy::needless_range_loop)]
    for t in 0..n_tiles {
        for half in 0..2 {
            let (q, k) = fragment_element(q0, k0, lane, t as u32, 2 * half as u32);
            let (a, b) = d.keeps_key_pair(q, k);
            if !a {
                p[t][2 * half] = 0.0;
            }
            if !b {
                p[t][2 * half + 1] = 0.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp2_poly_is_within_its_relative_error() {
        let mut x = -125.0f32;
        while x <= 9.0 {
            let (got, want) = (super::exp2_poly(x) as f64, (x as f64).exp2());
            assert!(((got - want) / want).abs() < 8e-5, "x {x}: {got} vs {want}");
            x += 0.0137;
        }
        assert_eq!(super::exp2_poly(0.0), 0.999_928_06);
        assert!(super::exp2_poly(-1000.0) > 0.0 && super::exp2_poly(-1000.0) < 1e-37);
    }

    use super::*;

    fn shape(seqlen_q: u32, seqlen_k: u32, scale: f32) -> AttnShape {
        AttnShape {
            batch: 2,
            heads: 3,
            heads_k: 3,
            seqlen_q,
            seqlen_k,
            head_dim: 64,
            scale,
            scale_log2: scale * LOG2_E,
            window_left: -1,
            window_right: -1,
            layout: Default::default(),
        }
    }

    #[test]
    fn philox_known_answers() {
        // Random123's kat_vectors for philox4x32_10.
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn tanh_matches_the_exact_function() {
        for i in -4000..=4000 {
            let x = i as f32 / 100.0;
            assert!((tanh(x) - x.tanh()).abs() < 4e-7, "{x}: {} vs {}", tanh(x), x.tanh());
        }
        assert_eq!(tanh(1e30), 1.0);
        assert_eq!(tanh(-1e30), -1.0);
    }

    #[test]
    fn score_applies_softcap_then_alibi_in_raw_units() {
        let s = shape(5, 9, 0.125);
        let m = Modifiers { softcap: 2.0, ..Modifiers::default() };
        let mods = ScoreMods::new(&s, &m, 0.5, 1, 2);
        for (raw, q, k) in [(3.0f32, 0u32, 0u32), (-40.0, 4, 8), (17.0, 2, 1)] {
            let t = 2.0 * (0.125f64 * raw as f64 / 2.0).tanh() - 0.5 * (q as f64 + 4.0 - k as f64).abs();
            let got = mods.score(raw, q, k) as f64 * 0.125;
            assert!((got - t).abs() < 1e-5, "{raw} {q} {k}: {got} vs {t}");
        }
        // Off: the identity.
        let plain = ScoreMods::new(&s, &Modifiers::default(), 0.0, 0, 0);
        assert_eq!(plain.score(1.2345, 3, 7), 1.2345);
    }

    #[test]
    fn softcap_slope_inverts_the_forward() {
        let s = shape(7, 7, 0.3);
        let m = Modifiers { softcap: 5.0, ..Modifiers::default() };
        let mods = ScoreMods::new(&s, &m, 0.25, 0, 0);
        let lse = 3.7f32;
        for (raw, q, k) in [(10.0f32, 6u32, 2u32), (-3.0, 1, 1), (40.0, 3, 6)] {
            let modified = mods.score(raw, q, k);
            let p = ((modified * 0.3) as f64 - lse as f64).exp() as f32;
            let th = (0.3f64 * raw as f64 / 5.0).tanh();
            let want = 1.0 - th * th;
            let got = mods.softcap_slope(p, lse * LOG2_E, q, k) as f64;
            assert!((got - want).abs() < 1e-4, "{raw}: {got} vs {want}");
        }
        assert_eq!(mods.softcap_slope(0.0, 1.0, 0, 0), 1.0);
    }

    #[test]
    fn gradient_follows_the_definition_with_dropout() {
        let s = shape(4, 4, 0.5);
        let p = 0.25;
        let m = Modifiers {
            dropout_keep_threshold: keep_threshold(p),
            dropout_scale: (1.0 / (1.0 - p)) as f32,
            dropout_seed: 7,
            ..Modifiers::default()
        };
        let mods = ScoreMods::new(&s, &m, 0.0, 0, 0);
        let (lse, dp, d) = (0.3f32, 1.5f32, 0.2f32);
        let mut seen = [false; 2];
        for q in (0..4).step_by(2) {
            for k in 0..8 {
                let raw = |e: u32| 0.1 * ((q + e % 2) * 4 + k + 8 * (e / 2)) as f32;
                let mut tile = [raw(0), raw(1), raw(2), raw(3)];
                mods.probabilities::<true>(&mut tile, q, k, s.scale_log2, [lse * LOG2_E; 2], |_| true);
                for (e, &encoded) in tile.iter().enumerate() {
                    let (qe, ke) = (q + e as u32 % 2, k + 8 * (e as u32 / 2));
                    let prob = ((0.5 * raw(e as u32)) as f64 - lse as f64).exp();
                    let keep = mods.dropout.keeps(qe, ke);
                    seen[keep as usize] = true;
                    let z = if keep { 1.0 / (1.0 - p) } else { 0.0 };
                    assert!((dv_operand::<true>(encoded) as f64 - prob * z).abs() < 1e-6);
                    let want = prob * (z * dp as f64 - d as f64);
                    let got = mods.score_gradient::<true>(encoded, dp, d, lse * LOG2_E, qe, ke) as f64;
                    assert!((got - want).abs() < 1e-6, "{qe} {ke}: {got} vs {want}");
                }
            }
        }
        assert_eq!(seen, [true, true], "both kept and dropped pairs drawn");
        let mut hidden = [1.0f32; 4];
        mods.probabilities::<true>(&mut hidden, 0, 0, s.scale_log2, [0.0; 2], |e| e == 1);
        assert_eq!(hidden.map(|x| x == 0.0), [true, false, true, true]);
    }

    #[test]
    fn pair_decisions_agree_with_single_ones() {
        let m = Modifiers {
            dropout_keep_threshold: keep_threshold(0.5),
            dropout_seed: 0x1234_5678_9abc,
            dropout_offset: 5 << 32 | 9,
            ..Modifiers::default()
        };
        let d = Dropout::new(&m, 11);
        let mut kept = 0;
        for q in 0..64 {
            for k in (0..64).step_by(2) {
                assert_eq!(d.keeps_key_pair(q, k), (d.keeps(q, k), d.keeps(q, k + 1)));
                kept += d.keeps(q, k) as u32 + d.keeps(q, k + 1) as u32;
            }
        }
        for q in (0..64).step_by(2) {
            for k in 0..64 {
                assert_eq!(d.keeps_query_pair(q, k), (d.keeps(q, k), d.keeps(q + 1, k)));
            }
        }
        // 4096 fair coins: 2048 ± 4σ (σ = 32).
        assert!((1920..=2176).contains(&kept), "{kept}");
        assert_eq!(keep_threshold(0.5), 1 << 31);
        assert_eq!(keep_threshold(1e-12), u32::MAX);
    }

    #[test]
    fn finish_row_normalizes_and_marks_empty_rows() {
        let (inv, lse) = finish_row(3.0, 4.0);
        assert_eq!(inv, 0.25);
        assert!((lse - 5.0 * LN_2).abs() < 1e-6);
        assert_eq!(finish_row(f32::NEG_INFINITY, 0.0), (0.0, f32::INFINITY));
    }

    #[test]
    fn fragment_elements_cover_a_16_by_8n_tile_once() {
        let mut seen = [[0u8; 16]; 16];
        for lane in 0..32 {
            for t in 0..2 {
                for e in 0..4 {
                    let (r, c) = fragment_element(0, 0, lane, t, e);
                    seen[r as usize][c as usize] += 1;
                }
            }
        }
        assert!(seen.iter().flatten().all(|&n| n == 1));
    }
}
