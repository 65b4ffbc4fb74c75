//! f64 CPU reference of attention forward and backward, shared by tests and benches.
//!
//! This is deliberately the plain textbook algorithm (materialise each score row, softmax it,
//! multiply), not a tiled/online one: it is the ground truth that the GPU kernels are checked
//! against, so it must be obviously correct rather than clever. Everything is computed in `f64`,
//! and nothing here is shared with the kernels: the definitions below are implemented afresh.
//!
//! The `*_rounded` variants run the same computation but pass every stored intermediate through a
//! caller-supplied rounding function (e.g. to bf16). That models a *naive* low-precision
//! implementation, and FlashAttention's tolerance rule compares the kernel's error against the
//! error of such a naive implementation rather than against a fixed epsilon.
//!
//! Layouts (all contiguous, row-major):
//! * Q, O, dO, dQ: `(batch, seqlen_q, heads, head_dim)`
//! * K, V, dK, dV: `(batch, seqlen_k, heads_k, head_dim)`
//! * LSE (and the backward's D): `(batch, heads, seqlen_q)`
//!
//! # Definitions
//!
//! For batch `b`, query head `h`, query `i` and key `j`, with kv head
//! `hk = h / (heads / heads_k)` (grouped-query attention; `heads_k == heads` is plain multi-head):
//!
//! 1. Score `t_ij = scale · q_i · k_j`.
//! 2. Softcap (`softcap > 0`): `t_ij = softcap · tanh(t_ij / softcap)`.
//! 3. ALiBi (slopes given): `t_ij -= slope[b, h] · |i + seqlen_k - seqlen_q - j|`; the slopes
//!    are per head (`heads` values, shared over the batch) or per (batch, head).
//! 4. Mask: with `diag = i + seqlen_k - seqlen_q` and `(left, right) = window` (-1 = unbounded),
//!    `causal` forces `right = 0`; key `j` is visible iff `(left < 0 || j >= diag - left) &&
//!    (right < 0 || j <= diag + right)`. The visible keys of a row are one contiguous range
//!    ([`Problem::key_range`]); invisible keys are excluded entirely.
//! 5. Softmax, optionally with a per-head sink logit `s_h` that joins the normaliser but has no
//!    value: `Z_i = Σ_visible exp(t_ij) + exp(s_h)`, `P_ij = exp(t_ij) / Z_i`, `LSE_i = ln Z_i`.
//!    A row with no visible key has `O = 0` and `LSE = +inf` (no sink) or `LSE = s_h` (sink).
//! 6. Dropout (`p > 0`): `O_i = Σ_j P_ij z_ij V_j` with `z_ij = keep(b, h, i, j) / (1 - p)`;
//!    LSE is unaffected. `keep` is a Philox-4x32-10 draw ([`dropout_keeps`]).
//! 7. Backward for upstream dO: `D_i = dO_i · O_i`, `dP_ij = dO_i · V_j`,
//!    `dS_ij = P_ij (z_ij dP_ij - D_i)`, times `1 - tanh²(t_raw / softcap)` with softcap
//!    (`t_raw` the score before the cap); `dQ_i = scale Σ_j dS_ij K_j`,
//!    `dK_j = scale Σ_{i, h → hk} dS_ij Q_i`, `dV_j = Σ_{i, h → hk} P_ij z_ij dO_i` (summing over
//!    every query head of the kv head) and `d_sink_h = -Σ_{b, i} exp(s_h - LSE_bhi) D_bhi`.
//! 8. Rotary embedding (KV-cache appends) of a row `x` at position `p`, with tables `cos[p][i]`,
//!    `sin[p][i]` for `i < rotary_dim / 2`: each pair `(x_a, x_b)` becomes
//!    `(x_a cos − x_b sin, x_a sin + x_b cos)`, where `(a, b) = (2i, 2i + 1)` interleaved and
//!    `(i, i + rotary_dim / 2)` otherwise; elements from `rotary_dim` on are unchanged
//!    ([`rotary`]).
//!
//! Slices whose lengths do not match the [`Problem`], and problems whose features are
//! inconsistent, come back as [`Error::InvalidArgument`] naming the culprit, as everywhere in the
//! library.

use std::ops::Range;

use crate::error::{Error, Result};

/// Dropout of the attention probabilities: each `P_ij` is kept with probability `1 - p` (and then
/// scaled by `1 / (1 - p)`), as decided by [`dropout_keeps`]. The mask is a pure function of
/// `(seed, offset)` and the indices, so a given problem is deterministic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Drop probability, in `[0, 1)`; 0 means no dropout.
    pub p: f64,
    pub seed: u64,
    /// Philox counter offset (lets successive calls with one seed draw fresh masks).
    pub offset: u64,
}

/// One attention problem: shapes and features (see the module docs for the definitions). Build
/// it with [`Problem::new`] and override features with struct update syntax:
/// `Problem { window: (8, 0), ..Problem::new(1, 4, 16, 16, 64, 0.125, false) }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads; must divide `heads` (query head `h` reads kv head
    /// `h / (heads / heads_k)`).
    pub heads_k: usize,
    pub seqlen_q: usize,
    pub seqlen_k: usize,
    pub head_dim: usize,
    /// Multiplier applied to `Q K^T` (usually `1 / sqrt(head_dim)`).
    pub scale: f64,
    /// Bottom-right aligned causal mask (forces the window's right edge to 0).
    pub causal: bool,
    /// Local attention window `(left, right)` around the diagonal; -1 = unbounded.
    pub window: (i64, i64),
    /// Tanh softcap of the scores; 0 = off.
    pub softcap: f64,
    /// ALiBi slopes: empty (off), `heads` values or `batch * heads` values (row-major
    /// `(batch, heads)`).
    pub alibi_slopes: Vec<f64>,
    /// Attention-sink logits, one per query head (natural log); empty = off.
    pub sinks: Vec<f64>,
    pub dropout: Option<Dropout>,
    /// Batch entry 0 is entry `first_batch` of a larger batch (one sequence of a packed batch,
    /// checked on its own): dropout's counters use the larger batch's index. 0 otherwise.
    pub first_batch: usize,
}

impl Problem {
    /// Plain multi-head attention (`heads_k == heads`) with every optional feature off.
    pub fn new(
        batch: usize,
        heads: usize,
        seqlen_q: usize,
        seqlen_k: usize,
        head_dim: usize,
        scale: f64,
        causal: bool,
    ) -> Problem {
        Problem {
            batch,
            heads,
            heads_k: heads,
            seqlen_q,
            seqlen_k,
            head_dim,
            scale,
            causal,
            window: (-1, -1),
            softcap: 0.0,
            alibi_slopes: Vec::new(),
            sinks: Vec::new(),
            dropout: None,
            first_batch: 0,
        }
    }

    /// Checks the features for consistency (not the slices: see the functions taking them).
    pub fn validate(&self) -> Result<()> {
        if self.heads_k == 0 || !self.heads.is_multiple_of(self.heads_k) {
            return Err(Error::invalid(
                "problem.heads_k",
                format!("heads_k = {} must be positive and divide heads = {}", self.heads_k, self.heads),
            ));
        }
        let n = self.alibi_slopes.len();
        if n != 0 && n != self.heads && n != product(&[self.batch, self.heads]) {
            return Err(Error::invalid(
                "problem.alibi_slopes",
                format!(
                    "has {n} slopes, expected 0, heads = {} or batch * heads = {}",
                    self.heads,
                    product(&[self.batch, self.heads])
                ),
            ));
        }
        let n = self.sinks.len();
        if n != 0 && n != self.heads {
            return Err(Error::invalid(
                "problem.sinks",
                format!("has {n} values, expected 0 or heads = {}", self.heads),
            ));
        }
        if let Some(d) = &self.dropout
            && !(0.0..1.0).contains(&d.p)
        {
            return Err(Error::invalid("problem.dropout", format!("drop probability {} is outside [0, 1)", d.p)));
        }
        if self.window.0 < -1 || self.window.1 < -1 {
            return Err(Error::invalid(
                "problem.window",
                format!("{:?}: each side must be -1 (unbounded) or non-negative", self.window),
            ));
        }
        if !(self.softcap >= 0.0 && self.softcap.is_finite()) {
            return Err(Error::invalid(
                "problem.softcap",
                format!("{} must be finite and >= 0 (0 = off)", self.softcap),
            ));
        }
        Ok(())
    }

    /// Number of elements of Q, O, dO and dQ (saturating: a count past `usize::MAX` matches no
    /// slice).
    pub fn q_len(&self) -> usize {
        product(&[self.batch, self.seqlen_q, self.heads, self.head_dim])
    }

    /// Number of elements of K, V, dK and dV.
    pub fn kv_len(&self) -> usize {
        product(&[self.batch, self.seqlen_k, self.heads_k, self.head_dim])
    }

    /// Number of elements of LSE (and of the backward's D).
    pub fn lse_len(&self) -> usize {
        product(&[self.batch, self.heads, self.seqlen_q])
    }

    /// The kv head query head `h` reads (for a validated problem).
    fn kv_head(&self, h: usize) -> usize {
        h / (self.heads / self.heads_k)
    }

    /// Whether query `i` attends key `j` (for `i < seqlen_q`, `j < seqlen_k`).
    ///
    /// Causal is aligned at the bottom-right corner (FlashAttention >= 2.1): the diagonal of
    /// query `i` is key `i + seqlen_k - seqlen_q`, and causal query `i` may see key `j` iff
    /// `j <= i + seqlen_k - seqlen_q`. Bottom-right alignment is what incremental decoding needs:
    /// the last query is the newest token and sees the whole KV cache. When
    /// `seqlen_q > seqlen_k` the first `seqlen_q - seqlen_k` causal queries therefore see no key
    /// at all. A window `(left, right)` further limits query `i` to keys
    /// `diag - left ..= diag + right` (each side only if not -1).
    pub fn allows(&self, i: usize, j: usize) -> bool {
        let (first, last) = self.window_bounds(i);
        (first..=last).contains(&(j as i128))
    }

    /// The keys query `i` attends: `{ j < seqlen_k : allows(i, j) }`, always one contiguous
    /// range (possibly empty).
    pub fn key_range(&self, i: usize) -> Range<usize> {
        let (first, last) = self.window_bounds(i);
        let sk = self.seqlen_k as i128;
        let start = first.clamp(0, sk);
        let end = last.saturating_add(1).clamp(start, sk);
        start as usize..end as usize
    }

    /// Inclusive bounds `(first, last)` of the keys query `i` may see, before clipping to the
    /// keys that exist. i128 so that no window size or sequence length can overflow.
    fn window_bounds(&self, i: usize) -> (i128, i128) {
        let (left, right) = self.window;
        // The contract reads "right = 0 if right < 0, else min(right, 0)": 0 either way.
        let right = if self.causal { 0 } else { right };
        let diag = self.diagonal(i);
        let first = if left < 0 { i128::MIN } else { diag - left as i128 };
        let last = if right < 0 { i128::MAX } else { diag + right as i128 };
        (first, last)
    }

    /// The key on query `i`'s diagonal, `i + seqlen_k - seqlen_q` (may lie outside the keys).
    fn diagonal(&self, i: usize) -> i128 {
        i as i128 + self.seqlen_k as i128 - self.seqlen_q as i128
    }

    /// The ALiBi bias `-slope[b, h] · |diag(i) - j|` added to score `(i, j)`; 0 without slopes.
    fn alibi_bias(&self, b: usize, h: usize, i: usize, j: usize) -> f64 {
        let slope = match self.alibi_slopes.len() {
            0 => return 0.0,
            n if n == self.heads => self.alibi_slopes[h],
            _ => self.alibi_slopes[b * self.heads + h],
        };
        -slope * (self.diagonal(i) - j as i128).unsigned_abs() as f64
    }

    /// The sink logit of query head `h`, if sinks are on.
    fn sink(&self, h: usize) -> Option<f64> {
        self.sinks.get(h).copied()
    }

    /// The dropout in effect: `None` when off or `p == 0`.
    fn active_dropout(&self) -> Option<&Dropout> {
        self.dropout.as_ref().filter(|d| d.p > 0.0)
    }
}

/// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; the
/// Random123 library): ten rounds of the 4x32 Philox bijection of `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u32 = 0xD251_1F53;
    const M1: u32 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let mulhilo = |a: u32, b: u32| {
        let prod = u64::from(a) * u64::from(b);
        ((prod >> 32) as u32, prod as u32)
    };
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Whether dropout `d` keeps entry `(b, h, i, j)` of a problem with `heads` query heads.
///
/// One Philox call covers a 2x2 block of (query, key): counter
/// `[i / 2, j / 2, b * heads + h, offset_lo]`, key `[seed_lo, seed_hi + offset_hi]` (all
/// truncated to u32, wrapping), output word `2 (i mod 2) + (j mod 2)`; the entry is kept iff that
/// word is below `min(floor((1 - p) 2^32), 2^32 - 1)`. `p == 0` keeps everything (dropout off).
pub fn dropout_keeps(d: &Dropout, heads: usize, b: usize, h: usize, i: usize, j: usize) -> bool {
    if d.p == 0.0 {
        return true;
    }
    // Wrapping: only the low 32 bits of `b * heads + h` enter the counter.
    let bh = b.wrapping_mul(heads).wrapping_add(h);
    let counter = [(i >> 1) as u32, (j >> 1) as u32, bh as u32, d.offset as u32];
    let key = [d.seed as u32, ((d.seed >> 32) as u32).wrapping_add((d.offset >> 32) as u32)];
    let word = philox4x32_10(counter, key)[2 * (i & 1) + (j & 1)];
    let threshold = ((1.0 - d.p) * 4_294_967_296.0).floor().min(4_294_967_295.0) as u32;
    word < threshold
}

/// Forward outputs: O with Q's layout, LSE with layout (batch, heads, seqlen_q).
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    pub o: Vec<f64>,
    /// Natural-log sum-exp of each score row (sink included). `+inf` for a row with no visible
    /// key and no sink: that is FlashAttention's convention, and it makes the backward's
    /// recomputation `P = exp(S - LSE)` yield exactly 0 for such rows instead of NaN.
    pub lse: Vec<f64>,
}

/// Backward outputs: dQ with Q's layout, dK and dV with K's layout, and the gradient of each sink
/// logit (`heads` values when sinks are on, else empty).
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    pub d_sinks: Vec<f64>,
}

/// Exact attention forward (see the module docs for the definitions): `P = softmax(S)` over the
/// visible keys (and the sink), `O = (P ∘ Z) V`, `LSE_i = ln Z_i`.
pub fn forward(p: &Problem, q: &[f64], k: &[f64], v: &[f64]) -> Result<Forward> {
    forward_impl(p, q, k, v, &|x| x)
}

/// Exact attention backward for upstream gradient `d_o`:
/// `D_i = sum_d dO_id O_id`, `dP = dO V^T`, `dS = P ∘ (Z ∘ dP - D)` (times the softcap's
/// derivative), `dQ = scale · dS K`, `dK = scale · dS^T Q`, `dV = (P ∘ Z)^T dO` (dK and dV summed
/// over the query heads of each kv head), `d_sink_h = -Σ exp(sink_h - LSE) D`. Rows with no
/// visible key contribute nothing to dQ, dK, dV.
///
/// The forward is recomputed internally (row by row), so no forward output is needed.
pub fn backward(p: &Problem, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64]) -> Result<Gradients> {
    backward_impl(p, q, k, v, d_o, &|x| x)
}

/// [`forward`] with every stored intermediate passed through `round` (typically a round trip
/// through a 16-bit float type), mimicking a naive implementation that keeps tensors in the
/// 16-bit dtype but accumulates in f32: Q, K, V are rounded on entry, each score once it is
/// complete (`S = round(cap(scale * q·k) + bias)`), each probability after the softmax, and each
/// O element. Sums are accumulated in f64 (close enough to an f32 accumulator for this purpose).
/// LSE is not rounded because FlashAttention keeps it in f32; neither are the ALiBi slopes and
/// sink logits, which are f32 parameters.
///
/// With `round` the identity this is bit-identical to [`forward`].
pub fn forward_rounded(p: &Problem, q: &[f64], k: &[f64], v: &[f64], round: &dyn Fn(f64) -> f64) -> Result<Forward> {
    forward_impl(p, q, k, v, &|x| round(x))
}

/// The naive FP8 forward, the tolerance's yardstick for the FP8 kernel: inputs taken as given
/// (already the dequantized e4m3 values), each unnormalized probability `exp(S_ij - max_i)`
/// rounded through e4m3 (round to nearest even, as `cvt.rn.satfinite`), the row sum of the
/// unrounded ones, `O = round_bf16(Σ_j p̃_ij V_j / sum)` with f64 sums. Softcap, ALiBi, sinks and
/// dropout are not part of the FP8 forward and are rejected.
pub fn forward_fp8_naive(p: &Problem, q: &[f64], k: &[f64], v: &[f64]) -> Result<Forward> {
    check_lengths(p, q, k, v, None)?;
    if p.softcap > 0.0 || !p.alibi_slopes.is_empty() || !p.sinks.is_empty() || p.active_dropout().is_some() {
        return Err(Error::invalid("problem", "the FP8 forward has no softcap, ALiBi, sinks or dropout".to_string()));
    }
    let e4m3 = |x: f64| float8::F8E4M3::from_f64(x).to_f64();
    let d = p.head_dim;
    let mut o = vec![0.0; p.q_len()];
    let mut lse = vec![0.0; p.lse_len()];
    for b in 0..p.batch {
        for h in 0..p.heads {
            let head = Head::new(p, q, k, v, b, h);
            for i in 0..p.seqlen_q {
                let keys = p.key_range(i);
                let scores: Vec<f64> = keys.clone().map(|j| p.scale * dot(head.q_row(i), head.k_row(j))).collect();
                if scores.is_empty() {
                    lse[head.lse_off(i)] = f64::INFINITY;
                    continue;
                }
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                let mut out = vec![0.0; d];
                for (j, s) in keys.zip(&scores) {
                    axpy(&mut out, e4m3((s - max).exp()), head.v_row(j));
                }
                lse[head.lse_off(i)] = max + sum.ln();
                let off = head.q_off(i);
                for (x, acc) in o[off..off + d].iter_mut().zip(&out) {
                    *x = half::bf16::from_f64(acc / sum).to_f64();
                }
            }
        }
    }
    Ok(Forward { o, lse })
}

/// [`backward`] with every stored intermediate passed through `round`, on top of the rounding
/// done by [`forward_rounded`] (whose rounded P and O it uses): dO is rounded on entry, then each
/// dP element, each dS element, and each element of dQ, dK, dV. D is an f32-style internal sum
/// and is not rounded, nor is the f32 sink gradient.
///
/// With `round` the identity this is bit-identical to [`backward`].
pub fn backward_rounded(
    p: &Problem,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    d_o: &[f64],
    round: &dyn Fn(f64) -> f64,
) -> Result<Gradients> {
    backward_impl(p, q, k, v, d_o, &|x| round(x))
}

/// The typical shift of dQ and dK caused by computing D = rowsum(dO ∘ O) from O as stored in a
/// dtype of unit roundoff `u`, as FlashAttention does: each O element is off by up to u·|O|, in
/// effect independently, so D_i by about δ_i = u · ‖dO_i ∘ O_i‖₂ (one standard deviation of the
/// sum; the worst case, u · Σ_c |dO_ic · O_ic|, is far too pessimistic), dS_ij = P_ij (z_ij dP_ij
/// − D_i) c_ij by P_ij · c_ij · δ_i (c_ij the softcap derivative, 1 without softcap), and
/// dQ_ic = scale · Σ_j dS_ij K_jc, dK_jc = scale · Σ_{i, h → hk} dS_ij Q_ic accordingly (dK summed
/// over the query heads of each kv head, like the gradient itself).
/// Returns the largest such shift of one element of dQ and of dK.
///
/// A naive implementation rounds O too, but its rounding need not resemble the kernel's, so
/// this term is not covered by "twice the naive error" when it dominates: rows with one or two
/// visible keys or a very peaked softmax, where the other error terms are small.
pub fn stored_o_sensitivity(p: &Problem, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64], u: f64) -> Result<(f64, f64)> {
    check_lengths(p, q, k, v, Some(d_o))?;
    let d = p.head_dim;
    let mut dk_shift = vec![0.0; p.kv_len()];
    let mut dq_max = 0.0f64;
    for b in 0..p.batch {
        for h in 0..p.heads {
            let head = Head::new(p, q, k, v, b, h);
            for i in 0..p.seqlen_q {
                let row = head.row(i, &|x| x);
                let o_row = head.output(&row, &|x| x);
                let delta =
                    u * head.q_part(d_o, i).iter().zip(&o_row).map(|(a, b)| (a * b).powi(2)).sum::<f64>().sqrt();
                // |∂dS_ij / ∂D_i| for each visible key.
                let weights: Vec<f64> = row.probs.iter().zip(&row.cap_grad).map(|(p, c)| p * c).collect();
                for c in 0..d {
                    let dq: f64 = row.keys.clone().zip(&weights).map(|(j, w)| w * head.k_row(j)[c].abs()).sum();
                    dq_max = dq_max.max(p.scale * delta * dq);
                }
                for (j, w) in row.keys.clone().zip(&weights) {
                    let off = head.kv_off(j);
                    for (s, &qc) in dk_shift[off..off + d].iter_mut().zip(head.q_row(i)) {
                        *s += p.scale * w * delta * qc.abs();
                    }
                }
            }
        }
    }
    Ok((dq_max, dk_shift.iter().fold(0.0, |m: f64, &x| m.max(x))))
}

fn product(dims: &[usize]) -> usize {
    dims.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

/// The problem is consistent and Q, K, V (and dO) hold exactly the elements it describes.
fn check_lengths(p: &Problem, q: &[f64], k: &[f64], v: &[f64], d_o: Option<&[f64]>) -> Result<()> {
    p.validate()?;
    let expected = [("q", q.len(), p.q_len()), ("k", k.len(), p.kv_len()), ("v", v.len(), p.kv_len())];
    let d_o = d_o.map(|d_o| ("d_o", d_o.len(), p.q_len()));
    for (name, got, want) in expected.into_iter().chain(d_o) {
        if got != want {
            return Err(Error::invalid(name, format!("has {got} elements, expected {want} for {p:?}")));
        }
    }
    Ok(())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `acc += w * row`.
fn axpy(acc: &mut [f64], w: f64, row: &[f64]) {
    for (a, &x) in acc.iter_mut().zip(row) {
        *a += w * x;
    }
}

/// Read-only view of one (batch, query head) slice of the (already rounded) inputs; K and V are
/// those of the query head's kv head.
struct Head<'a> {
    p: &'a Problem,
    q: &'a [f64],
    k: &'a [f64],
    v: &'a [f64],
    b: usize,
    h: usize,
    hk: usize,
}

/// The forward quantities of one query row over its visible keys: entry `n` of each vector
/// belongs to key `keys.start + n`.
struct Row {
    keys: Range<usize>,
    /// `P_ij` (rounded, in the rounded variants).
    probs: Vec<f64>,
    /// Dropout multipliers `z_ij`: `keep / (1 - p)`, or 1 without dropout.
    drop: Vec<f64>,
    /// Softcap derivative `1 - tanh²(t_raw / softcap)`, or 1 without softcap.
    cap_grad: Vec<f64>,
    lse: f64,
}

impl<'a> Head<'a> {
    fn new(p: &'a Problem, q: &'a [f64], k: &'a [f64], v: &'a [f64], b: usize, h: usize) -> Self {
        Head { p, q, k, v, b, h, hk: p.kv_head(h) }
    }

    fn q_off(&self, i: usize) -> usize {
        ((self.b * self.p.seqlen_q + i) * self.p.heads + self.h) * self.p.head_dim
    }

    fn kv_off(&self, j: usize) -> usize {
        ((self.b * self.p.seqlen_k + j) * self.p.heads_k + self.hk) * self.p.head_dim
    }

    /// Row `i` of a tensor with Q's layout (Q itself, dO, ...).
    fn q_part<'t>(&self, t: &'t [f64], i: usize) -> &'t [f64] {
        &t[self.q_off(i)..][..self.p.head_dim]
    }

    fn q_row(&self, i: usize) -> &[f64] {
        self.q_part(self.q, i)
    }

    fn k_row(&self, j: usize) -> &[f64] {
        &self.k[self.kv_off(j)..][..self.p.head_dim]
    }

    fn v_row(&self, j: usize) -> &[f64] {
        &self.v[self.kv_off(j)..][..self.p.head_dim]
    }

    fn lse_off(&self, i: usize) -> usize {
        (self.b * self.p.heads + self.h) * self.p.seqlen_q + i
    }

    /// Scores, softmax (stable form `exp(s - max)`, the sink inside the max and the sum) and
    /// dropout multipliers of query `i`.
    fn row<R: Fn(f64) -> f64>(&self, i: usize, round: &R) -> Row {
        let p = self.p;
        let keys = p.key_range(i);
        let qi = self.q_row(i);
        let (mut scores, mut cap_grad) = (Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()));
        for j in keys.clone() {
            let raw = p.scale * dot(qi, self.k_row(j));
            let (capped, grad) = if p.softcap > 0.0 {
                let t = (raw / p.softcap).tanh();
                (p.softcap * t, 1.0 - t * t)
            } else {
                (raw, 1.0)
            };
            scores.push(round(capped + p.alibi_bias(self.b, self.h, i, j)));
            cap_grad.push(grad);
        }
        let drop = keys
            .clone()
            .map(|j| match p.active_dropout() {
                Some(d) if dropout_keeps(d, p.heads, p.first_batch + self.b, self.h, i, j) => 1.0 / (1.0 - d.p),
                Some(_) => 0.0,
                None => 1.0,
            })
            .collect();
        let sink = p.sink(self.h);
        if keys.is_empty() && sink.is_none() {
            return Row { keys, probs: scores, drop, cap_grad, lse: f64::INFINITY };
        }
        let max = scores.iter().copied().chain(sink).fold(f64::NEG_INFINITY, f64::max);
        let mut sum = sink.map_or(0.0, |s| (s - max).exp());
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let probs = scores.iter().map(|e| round(e / sum)).collect();
        Row { keys, probs, drop, cap_grad, lse: max + sum.ln() }
    }

    /// `round(Σ_j P_ij z_ij V_j)`: the (dropped) output row.
    fn output<R: Fn(f64) -> f64>(&self, row: &Row, round: &R) -> Vec<f64> {
        let mut out = vec![0.0; self.p.head_dim];
        for ((j, &pij), &z) in row.keys.clone().zip(&row.probs).zip(&row.drop) {
            axpy(&mut out, pij * z, self.v_row(j));
        }
        out.iter().map(|&o| round(o)).collect()
    }
}

fn round_all<R: Fn(f64) -> f64>(x: &[f64], round: &R) -> Vec<f64> {
    x.iter().map(|&v| round(v)).collect()
}

fn forward_impl<R: Fn(f64) -> f64>(p: &Problem, q: &[f64], k: &[f64], v: &[f64], round: &R) -> Result<Forward> {
    check_lengths(p, q, k, v, None)?;
    let (q, k, v) = (round_all(q, round), round_all(k, round), round_all(v, round));
    let d = p.head_dim;
    let mut o = vec![0.0; p.q_len()];
    let mut lse = vec![0.0; p.lse_len()];
    for b in 0..p.batch {
        for h in 0..p.heads {
            let head = Head::new(p, &q, &k, &v, b, h);
            for i in 0..p.seqlen_q {
                let row = head.row(i, round);
                lse[head.lse_off(i)] = row.lse;
                let off = head.q_off(i);
                o[off..off + d].copy_from_slice(&head.output(&row, round));
            }
        }
    }
    Ok(Forward { o, lse })
}

fn backward_impl<R: Fn(f64) -> f64>(
    p: &Problem,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    d_o: &[f64],
    round: &R,
) -> Result<Gradients> {
    check_lengths(p, q, k, v, Some(d_o))?;
    let (q, k, v) = (round_all(q, round), round_all(k, round), round_all(v, round));
    let d_o = round_all(d_o, round);
    let d = p.head_dim;
    let mut dq = vec![0.0; p.q_len()];
    // Unscaled, unrounded dK and dV sums over every (query head, query) of each kv head.
    let mut dk_acc = vec![0.0; p.kv_len()];
    let mut dv_acc = vec![0.0; p.kv_len()];
    let mut d_sinks = vec![0.0; p.sinks.len()];
    let mut acc = vec![0.0; d];
    for b in 0..p.batch {
        for h in 0..p.heads {
            let head = Head::new(p, &q, &k, &v, b, h);
            for i in 0..p.seqlen_q {
                // Recompute this row of the forward (P and O) exactly as `forward_impl` does. A
                // row with no visible key has O = 0, hence D = 0, and adds nothing below.
                let row = head.row(i, round);
                let o_row = head.output(&row, round);
                let doi = head.q_part(&d_o, i);
                let qi = head.q_row(i);
                let d_i = dot(doi, &o_row);
                if let (Some(sink), Some(grad)) = (p.sink(h), d_sinks.get_mut(h)) {
                    *grad -= (sink - row.lse).exp() * d_i;
                }
                acc.fill(0.0);
                for (n, j) in row.keys.clone().enumerate() {
                    let (pij, z) = (row.probs[n], row.drop[n]);
                    let dp = round(dot(doi, head.v_row(j)));
                    let ds = round(pij * (z * dp - d_i) * row.cap_grad[n]);
                    let off = head.kv_off(j);
                    axpy(&mut acc, ds, head.k_row(j));
                    axpy(&mut dk_acc[off..off + d], ds, qi);
                    axpy(&mut dv_acc[off..off + d], pij * z, doi);
                }
                let off = head.q_off(i);
                for (g, &a) in dq[off..off + d].iter_mut().zip(&acc) {
                    *g = round(p.scale * a);
                }
            }
        }
    }
    let dk = dk_acc.iter().map(|&a| round(p.scale * a)).collect();
    let dv = dv_acc.iter().map(|&a| round(a)).collect();
    Ok(Gradients { dq, dk, dv, d_sinks })
}

/// Rotary embedding of one row (definition 8): the first `2 · cos.len()` elements of `x` turned
/// in pairs by the angles whose cosines and sines are `cos` and `sin` (one table row, the
/// row's position's), interleaved pairs or halves.
pub fn rotary(x: &mut [f64], cos: &[f64], sin: &[f64], interleaved: bool) -> Result<()> {
    let half = cos.len();
    if sin.len() != half || 2 * half > x.len() {
        return Err(Error::invalid(
            "cos",
            format!("{half} cosines, {} sines for a row of {}: equal, at most half the row", sin.len(), x.len()),
        ));
    }
    for i in 0..half {
        let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
        let (xa, xb) = (x[a], x[b]);
        x[a] = xa * cos[i] - xb * sin[i];
        x[b] = xa * sin[i] + xb * cos[i];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rotary_turns_pairs_and_keeps_the_rest() {
        // A quarter turn of pair 0 and a half turn of pair 1, 4 rotated elements of 6.
        let (cos, sin) = ([0.0, -1.0], [1.0, 0.0]);
        let mut halves = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        rotary(&mut halves, &cos, &sin, false).unwrap();
        // Pairs (0, 2) and (1, 3).
        assert_eq!(halves, [-3.0, -2.0, 1.0, -4.0, 5.0, 6.0]);
        let mut pairs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        rotary(&mut pairs, &cos, &sin, true).unwrap();
        assert!(rotary(&mut pairs, &[0.0; 4], &[0.0; 4], true).is_err());
        // Pairs (0, 1) and (2, 3).
        assert_eq!(pairs, [-2.0, 1.0, -3.0, -4.0, 5.0, 6.0]);
    }

    use super::*;

    /// Tiny deterministic xorshift64* generator; values uniform in [-1, 1).
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            (bits as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }

        fn vec(&mut self, n: usize) -> Vec<f64> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    fn problem(batch: usize, heads: usize, sq: usize, sk: usize, d: usize, causal: bool) -> Problem {
        Problem::new(batch, heads, sq, sk, d, 1.0 / (d as f64).sqrt(), causal)
    }

    struct Inputs {
        q: Vec<f64>,
        k: Vec<f64>,
        v: Vec<f64>,
        d_o: Vec<f64>,
    }

    fn inputs(p: &Problem, seed: u64) -> Inputs {
        let mut rng = Rng::new(seed);
        Inputs { q: rng.vec(p.q_len()), k: rng.vec(p.kv_len()), v: rng.vec(p.kv_len()), d_o: rng.vec(p.q_len()) }
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// Row offset in Q layout.
    fn q_off(p: &Problem, b: usize, i: usize, h: usize) -> usize {
        ((b * p.seqlen_q + i) * p.heads + h) * p.head_dim
    }

    /// Row offset in K layout (`hk` a kv head).
    fn kv_off(p: &Problem, b: usize, j: usize, hk: usize) -> usize {
        ((b * p.seqlen_k + j) * p.heads_k + hk) * p.head_dim
    }

    fn lse_off(p: &Problem, b: usize, h: usize, i: usize) -> usize {
        (b * p.heads + h) * p.seqlen_q + i
    }

    /// O row and LSE of one query computed directly from its explicit scores (`None` = masked),
    /// sink logit, dropout multipliers and value rows: `Z = Σ exp(s_j) + exp(sink)`,
    /// `O = Σ exp(s_j) / Z · z_j · v_j`. No max shift: the test scores are small.
    fn direct_row(scores: &[Option<f64>], sink: Option<f64>, z: &[f64], v: &[&[f64]]) -> (Vec<f64>, f64) {
        let mut o = vec![0.0; v.first().map_or(0, |r| r.len())];
        if scores.iter().all(Option::is_none) && sink.is_none() {
            return (o, f64::INFINITY);
        }
        let z_sum: f64 = scores.iter().flatten().map(|s| s.exp()).sum::<f64>() + sink.map_or(0.0, f64::exp);
        for (j, s) in scores.iter().enumerate() {
            if let Some(s) = s {
                axpy(&mut o, s.exp() / z_sum * z[j], v[j]);
            }
        }
        (o, z_sum.ln())
    }

    /// `scale · q_i · k_j` for query head `h` (reading its kv head), straight from the layouts.
    fn raw_score(p: &Problem, x: &Inputs, b: usize, h: usize, i: usize, j: usize) -> f64 {
        let hk = h / (p.heads / p.heads_k);
        let qi = &x.q[q_off(p, b, i, h)..][..p.head_dim];
        let kj = &x.k[kv_off(p, b, j, hk)..][..p.head_dim];
        p.scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
    }

    fn loss(p: &Problem, x: &Inputs) -> f64 {
        forward(p, &x.q, &x.k, &x.v).unwrap().o.iter().zip(&x.d_o).map(|(o, g)| o * g).sum()
    }

    /// Checks every entry of the gradients against a central finite difference of
    /// `L = sum(O ∘ dO)` w.r.t. Q, K, V and each sink logit.
    fn check_fd(p: &Problem, x: &Inputs) {
        const H: f64 = 1e-5;
        let g = backward(p, &x.q, &x.k, &x.v, &x.d_o).unwrap();
        assert_eq!(g.d_sinks.len(), p.sinks.len());
        let grads = [("dq", &g.dq), ("dk", &g.dk), ("dv", &g.dv), ("d_sinks", &g.d_sinks)];
        for (which, (name, grad)) in grads.into_iter().enumerate() {
            for (idx, &analytic) in grad.iter().enumerate() {
                let eval = |delta: f64| {
                    let (mut p, mut x) =
                        (p.clone(), Inputs { q: x.q.clone(), k: x.k.clone(), v: x.v.clone(), d_o: x.d_o.clone() });
                    match which {
                        0 => x.q[idx] += delta,
                        1 => x.k[idx] += delta,
                        2 => x.v[idx] += delta,
                        _ => p.sinks[idx] += delta,
                    }
                    loss(&p, &x)
                };
                let fd = (eval(H) - eval(-H)) / (2.0 * H);
                assert!(
                    (fd - analytic).abs() <= 1e-6 * analytic.abs().max(1e-2),
                    "{p:?} {name}[{idx}]: analytic {analytic} vs finite difference {fd}"
                );
            }
        }
    }

    /// Every feature on at once: GQA, a window, softcap, per-(batch, head) ALiBi, sinks, dropout.
    fn everything() -> Problem {
        Problem {
            heads_k: 2,
            window: (3, 1),
            softcap: 1.5,
            alibi_slopes: vec![0.5, 0.25, 0.125, 0.0625, 0.3, 0.2, 0.1, 0.05],
            sinks: vec![0.3, -0.5, 1.0, 0.0],
            dropout: Some(Dropout { p: 0.25, seed: 0x1234_5678_9abc_def0, offset: 0x5_0000_0007 }),
            scale: 1.3,
            ..problem(2, 4, 5, 7, 4, false)
        }
    }

    #[test]
    fn new_turns_every_feature_off() {
        let p = Problem::new(2, 3, 4, 5, 6, 0.5, true);
        assert_eq!((p.heads_k, p.window, p.softcap), (3, (-1, -1), 0.0));
        assert!(p.alibi_slopes.is_empty() && p.sinks.is_empty() && p.dropout.is_none());
        assert_eq!((p.q_len(), p.kv_len(), p.lse_len()), (2 * 4 * 3 * 6, 2 * 5 * 3 * 6, 2 * 3 * 4));
        let gqa = Problem { heads_k: 1, ..p };
        assert_eq!(gqa.kv_len(), 2 * 5 * 6);
        assert_eq!((0..3).map(|h| gqa.kv_head(h)).collect::<Vec<_>>(), [0, 0, 0]);
    }

    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn mask_matches_its_definition_and_key_range_is_the_allowed_set() {
        for (sq, sk) in [(1, 1), (4, 4), (3, 7), (7, 3), (5, 6)] {
            for left in -1..4 {
                for right in -1..4 {
                    for causal in [false, true] {
                        let p = Problem { window: (left, right), ..problem(1, 1, sq, sk, 1, causal) };
                        // The contract, literally.
                        let r = if causal { if right < 0 { 0 } else { right.min(0) } } else { right };
                        for i in 0..sq {
                            let diag = i as i64 + sk as i64 - sq as i64;
                            let want: Vec<usize> = (0..sk)
                                .filter(|&j| {
                                    let j = j as i64;
                                    (left < 0 || j >= diag - left) && (r < 0 || j <= diag + r)
                                })
                                .collect();
                            let allowed: Vec<usize> = (0..sk).filter(|&j| p.allows(i, j)).collect();
                            assert_eq!(allowed, want, "{p:?} row {i}");
                            assert_eq!(p.key_range(i).collect::<Vec<_>>(), want, "{p:?} row {i}");
                        }
                    }
                }
            }
        }
        // A sliding window of 2 behind and 1 ahead of the diagonal (here diag = i + 1).
        let p = Problem { window: (2, 1), ..problem(1, 1, 5, 6, 1, false) };
        assert_eq!((0..5).map(|i| p.key_range(i)).collect::<Vec<_>>(), [0..3, 0..4, 1..5, 2..6, 3..6]);
        // Huge windows do not overflow.
        let p = Problem { window: (i64::MAX, i64::MAX), ..problem(1, 1, 3, 2, 1, false) };
        assert_eq!(p.key_range(0), 0..2);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        for (sq, sk, causal) in [(4, 4, false), (3, 6, true), (6, 3, true), (5, 5, true)] {
            let p = problem(2, 3, sq, sk, 4, causal);
            let x = inputs(&p, 1);
            let ones = vec![1.0; p.kv_len()];
            let f = forward(&p, &x.q, &x.k, &ones).unwrap();
            for b in 0..p.batch {
                for h in 0..p.heads {
                    for i in 0..sq {
                        let want = if p.key_range(i).is_empty() { 0.0 } else { 1.0 };
                        let off = q_off(&p, b, i, h);
                        for &o in &f.o[off..off + p.head_dim] {
                            assert!((o - want).abs() < 1e-14, "{p:?} row {i}: {o} != {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn lse_matches_direct_computation() {
        for causal in [false, true] {
            let p = problem(1, 2, 3, 5, 4, causal);
            let x = inputs(&p, 2);
            let f = forward(&p, &x.q, &x.k, &x.v).unwrap();
            for h in 0..p.heads {
                for i in 0..p.seqlen_q {
                    let sum: f64 =
                        (0..p.seqlen_k).filter(|&j| p.allows(i, j)).map(|j| raw_score(&p, &x, 0, h, i, j).exp()).sum();
                    let got = f.lse[lse_off(&p, 0, h, i)];
                    assert!((got - sum.ln()).abs() < 1e-13, "{got} vs {}", sum.ln());
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (sq, sk) in [(3, 7), (7, 3), (4, 4)] {
            for causal in [false, true] {
                let p = Problem { scale: 0.7, ..problem(2, 2, sq, sk, 4, causal) };
                check_fd(&p, &inputs(&p, 3 + sq as u64 * 10 + causal as u64));
            }
        }
    }

    #[test]
    fn feature_gradients_match_finite_differences() {
        let base = problem(2, 4, 5, 7, 4, false);
        let dropout = Some(Dropout { p: 0.3, seed: 42, offset: 3 });
        let cases = [
            // GQA with a sliding window.
            Problem { heads_k: 2, window: (2, 1), ..base.clone() },
            // Softcap (tight enough to bend the scores) with causal, more queries than keys.
            Problem { softcap: 0.8, scale: 2.0, ..problem(2, 2, 6, 4, 4, true) },
            // ALiBi per (batch, head) with seqlen_q < seqlen_k, and per head with causal
            // seqlen_q > seqlen_k.
            Problem { alibi_slopes: vec![0.5, 0.25, 0.7, 0.1], ..problem(2, 2, 3, 6, 4, false) },
            Problem { alibi_slopes: vec![0.5, 0.25], ..problem(2, 2, 6, 3, 4, true) },
            // Sinks, with three empty rows per head.
            Problem { sinks: vec![0.3, -0.5], ..problem(2, 2, 6, 3, 4, true) },
            // Dropout with GQA (a fixed mask for the seed, so the loss is smooth).
            Problem { heads_k: 1, dropout, ..base.clone() },
            everything(),
            Problem { causal: true, ..everything() },
        ];
        for (n, p) in cases.iter().enumerate() {
            check_fd(p, &inputs(p, 100 + n as u64));
        }
    }

    #[test]
    fn causal_is_bottom_right_aligned_when_keys_outnumber_queries() {
        let p = problem(1, 2, 2, 5, 4, true);
        assert_eq!((p.key_range(0), p.key_range(1)), (0..4, 0..5));
        assert!((0..4).all(|j| p.allows(0, j)) && !p.allows(0, 4));
        assert!((0..5).all(|j| p.allows(1, j)));

        // Query 0 must equal non-causal attention over keys 0..4 only; query 1 over all keys.
        let x = inputs(&p, 4);
        let f = forward(&p, &x.q, &x.k, &x.v).unwrap();
        let full = forward(&Problem { causal: false, ..p.clone() }, &x.q, &x.k, &x.v).unwrap();
        let trunc_p = Problem { seqlen_k: 4, causal: false, ..p.clone() };
        let kv4 = 4 * p.heads * p.head_dim;
        let trunc = forward(&trunc_p, &x.q, &x.k[..kv4], &x.v[..kv4]).unwrap();
        let d = p.head_dim;
        for h in 0..p.heads {
            let (o0, o1) = (q_off(&p, 0, 0, h), q_off(&p, 0, 1, h));
            assert_eq!(f.o[o0..o0 + d], trunc.o[o0..o0 + d]);
            assert_eq!(f.o[o1..o1 + d], full.o[o1..o1 + d]);
            assert_eq!(f.lse[lse_off(&p, 0, h, 0)], trunc.lse[lse_off(&p, 0, h, 0)]);
            assert_eq!(f.lse[lse_off(&p, 0, h, 1)], full.lse[lse_off(&p, 0, h, 1)]);
        }
    }

    #[test]
    fn window_unbounded_left_zero_right_is_causal() {
        for (sq, sk) in [(4, 4), (3, 7), (7, 3)] {
            let causal = Problem { softcap: 2.0, sinks: vec![0.1, 0.2], ..problem(2, 2, sq, sk, 4, true) };
            let window = Problem { causal: false, window: (-1, 0), ..causal.clone() };
            // Causal on top of a window with a right edge: the right edge becomes 0.
            let both = Problem { causal: true, window: (-1, 5), ..causal.clone() };
            let x = inputs(&causal, 9);
            let want =
                (forward(&causal, &x.q, &x.k, &x.v).unwrap(), backward(&causal, &x.q, &x.k, &x.v, &x.d_o).unwrap());
            for p in [window, both] {
                assert_eq!(forward(&p, &x.q, &x.k, &x.v).unwrap(), want.0);
                assert_eq!(backward(&p, &x.q, &x.k, &x.v, &x.d_o).unwrap(), want.1);
            }
        }
    }

    /// Rows that see no key (causal with more queries than keys, or a window that lies entirely
    /// before key 0): O = 0, LSE = +inf (or the sink), zero dQ, and their dO changes nothing.
    /// (No window can empty a whole problem: the last query's diagonal is key `seqlen_k - 1`.)
    #[test]
    fn rows_that_see_no_key_produce_nothing() {
        let causal = problem(2, 2, 5, 2, 4, true);
        assert_eq!((0..5).map(|i| causal.key_range(i).len()).collect::<Vec<_>>(), [0, 0, 0, 1, 2]);
        // diag = i - 4, so the window [diag - 1, diag + 1] misses every key for i < 3.
        let window = Problem { window: (1, 1), ..problem(2, 2, 7, 3, 4, false) };
        assert_eq!((0..7).map(|i| window.key_range(i)).collect::<Vec<_>>(), [0..0, 0..0, 0..0, 0..1, 0..2, 0..3, 1..3]);
        let sinks = Problem { sinks: vec![0.7, -1.2], ..window.clone() };
        for p in [causal, window, sinks] {
            let x = inputs(&p, 5);
            let f = forward(&p, &x.q, &x.k, &x.v).unwrap();
            let g = backward(&p, &x.q, &x.k, &x.v, &x.d_o).unwrap();
            // Same dO except for new random values in the empty rows.
            let mut rng = Rng::new(55);
            let mut d_o2 = x.d_o.clone();
            let d = p.head_dim;
            for b in 0..p.batch {
                for h in 0..p.heads {
                    for i in 0..p.seqlen_q {
                        let lse = f.lse[lse_off(&p, b, h, i)];
                        if !p.key_range(i).is_empty() {
                            assert!(lse.is_finite());
                            continue;
                        }
                        let off = q_off(&p, b, i, h);
                        assert!(f.o[off..off + d].iter().all(|&o| o == 0.0));
                        assert_eq!(lse, p.sinks.get(h).copied().unwrap_or(f64::INFINITY));
                        assert!(g.dq[off..off + d].iter().all(|&v| v == 0.0));
                        d_o2[off..off + d].iter_mut().for_each(|v| *v = rng.next() * 10.0);
                    }
                }
            }
            assert_ne!(d_o2, x.d_o);
            assert_eq!(backward(&p, &x.q, &x.k, &x.v, &d_o2).unwrap(), g);
        }
    }

    #[test]
    fn single_key_copies_value_row() {
        let p = problem(2, 3, 4, 1, 5, false);
        let x = inputs(&p, 6);
        let f = forward(&p, &x.q, &x.k, &x.v).unwrap();
        let d = p.head_dim;
        for b in 0..p.batch {
            for h in 0..p.heads {
                let voff = kv_off(&p, b, 0, h);
                for i in 0..p.seqlen_q {
                    let off = q_off(&p, b, i, h);
                    assert_eq!(f.o[off..off + d], x.v[voff..voff + d]);
                }
            }
        }
    }

    /// GQA is dense attention with each kv head repeated for its query heads; its dK and dV are
    /// the sums of the dense ones over each group.
    #[test]
    fn gqa_equals_repeated_kv_heads() {
        for heads_k in [1, 2, 4] {
            let p = Problem {
                heads_k,
                window: (2, 0),
                alibi_slopes: vec![0.3, 0.1, 0.2, 0.4],
                sinks: vec![0.5, 0.0, -0.5, 1.0],
                dropout: Some(Dropout { p: 0.2, seed: 7, offset: 1 }),
                ..problem(2, 4, 5, 6, 3, true)
            };
            let dense = Problem { heads_k: p.heads, ..p.clone() };
            let x = inputs(&p, 10 + heads_k as u64);
            let (group, d) = (p.heads / heads_k, p.head_dim);
            let repeat = |t: &[f64]| {
                let mut out = vec![0.0; dense.kv_len()];
                for b in 0..p.batch {
                    for j in 0..p.seqlen_k {
                        for h in 0..p.heads {
                            let src = kv_off(&p, b, j, h / group);
                            out[kv_off(&dense, b, j, h)..][..d].copy_from_slice(&t[src..src + d]);
                        }
                    }
                }
                out
            };
            let (kd, vd) = (repeat(&x.k), repeat(&x.v));
            assert_eq!(forward(&p, &x.q, &x.k, &x.v).unwrap(), forward(&dense, &x.q, &kd, &vd).unwrap());
            let g = backward(&p, &x.q, &x.k, &x.v, &x.d_o).unwrap();
            let gd = backward(&dense, &x.q, &kd, &vd, &x.d_o).unwrap();
            assert_eq!((&g.dq, &g.d_sinks), (&gd.dq, &gd.d_sinks));
            let group_sum = |t: &[f64]| {
                let mut out = vec![0.0; p.kv_len()];
                for b in 0..p.batch {
                    for j in 0..p.seqlen_k {
                        for h in 0..p.heads {
                            axpy(&mut out[kv_off(&p, b, j, h / group)..][..d], 1.0, &t[kv_off(&dense, b, j, h)..][..d]);
                        }
                    }
                }
                out
            };
            assert!(max_abs_diff(&g.dk, &group_sum(&gd.dk)) < 1e-13);
            assert!(max_abs_diff(&g.dv, &group_sum(&gd.dv)) < 1e-13);
        }
    }

    /// ALiBi is an additive bias `-slope · |i + seqlen_k - seqlen_q - j|`: build that bias matrix
    /// and check every row against a direct masked softmax with it.
    #[test]
    fn alibi_equals_an_explicit_bias() {
        let per_head = vec![0.5, 0.125];
        let per_batch_head = vec![0.5, 0.125, 1.0, 0.0625];
        for (sq, sk, causal) in [(3, 6, false), (6, 3, true), (5, 5, true), (4, 7, true)] {
            for slopes in [&per_head, &per_batch_head] {
                let p = Problem { alibi_slopes: slopes.clone(), softcap: 3.0, ..problem(2, 2, sq, sk, 4, causal) };
                let x = inputs(&p, 11);
                let f = forward(&p, &x.q, &x.k, &x.v).unwrap();
                for b in 0..p.batch {
                    for h in 0..p.heads {
                        let slope = if slopes.len() == p.heads { slopes[h] } else { slopes[b * p.heads + h] };
                        let bias: Vec<Vec<f64>> = (0..sq)
                            .map(|i| {
                                (0..sk).map(|j| -slope * (i as f64 + sk as f64 - sq as f64 - j as f64).abs()).collect()
                            })
                            .collect();
                        for i in 0..sq {
                            let scores: Vec<Option<f64>> = (0..sk)
                                .map(|j| {
                                    let t = 3.0 * (raw_score(&p, &x, b, h, i, j) / 3.0).tanh();
                                    p.allows(i, j).then_some(t + bias[i][j])
                                })
                                .collect();
                            let v: Vec<&[f64]> = (0..sk).map(|j| &x.v[kv_off(&p, b, j, h)..][..p.head_dim]).collect();
                            let (o, lse) = direct_row(&scores, None, &vec![1.0; sk], &v);
                            let off = q_off(&p, b, i, h);
                            assert!(max_abs_diff(&f.o[off..off + p.head_dim], &o) < 1e-14, "{p:?} row {i}");
                            let got = f.lse[lse_off(&p, b, h, i)];
                            assert!(got == lse || (got - lse).abs() < 1e-14, "{p:?} row {i}: {got} vs {lse}");
                        }
                    }
                }
            }
        }
    }

    /// A sink is one extra key whose score is the sink logit and whose value is zero: append a
    /// column to the head dimension (`q' = [q, 1]`, `k' = [k, 0]`, `k_sink = [0, sink / scale]`,
    /// `v' = [v, 0]`, `v_sink = 0`) and put the sink key first, where every (causal) query sees
    /// it. O, LSE and the gradients agree, and `d_sink = dK_sink[last] / scale`.
    #[test]
    fn sinks_equal_an_extra_key_with_zero_value() {
        for (sq, sk, causal) in [(4, 6, false), (6, 3, false), (3, 5, true), (4, 4, true)] {
            let p = Problem { sinks: vec![0.8, -0.4, 2.0], scale: 0.9, ..problem(2, 3, sq, sk, 3, causal) };
            let x = inputs(&p, 12);
            let (d, h_n) = (p.head_dim, p.heads);
            let ext = Problem { head_dim: d + 1, seqlen_k: sk + 1, sinks: vec![], ..p.clone() };
            let mut xe = Inputs {
                q: vec![0.0; ext.q_len()],
                k: vec![0.0; ext.kv_len()],
                v: vec![0.0; ext.kv_len()],
                d_o: vec![0.0; ext.q_len()],
            };
            for b in 0..p.batch {
                for h in 0..h_n {
                    for i in 0..sq {
                        let (src, dst) = (q_off(&p, b, i, h), q_off(&ext, b, i, h));
                        xe.q[dst..dst + d].copy_from_slice(&x.q[src..src + d]);
                        xe.q[dst + d] = 1.0;
                        xe.d_o[dst..dst + d].copy_from_slice(&x.d_o[src..src + d]);
                    }
                    xe.k[kv_off(&ext, b, 0, h) + d] = p.sinks[h] / p.scale;
                    for j in 0..sk {
                        let (src, dst) = (kv_off(&p, b, j, h), kv_off(&ext, b, j + 1, h));
                        xe.k[dst..dst + d].copy_from_slice(&x.k[src..src + d]);
                        xe.v[dst..dst + d].copy_from_slice(&x.v[src..src + d]);
                    }
                }
            }
            assert!((0..sq).all(|i| ext.allows(i, 0)), "the sink key is visible to every query");
            let (f, fe) = (forward(&p, &x.q, &x.k, &x.v).unwrap(), forward(&ext, &xe.q, &xe.k, &xe.v).unwrap());
            let (g, ge) = (
                backward(&p, &x.q, &x.k, &x.v, &x.d_o).unwrap(),
                backward(&ext, &xe.q, &xe.k, &xe.v, &xe.d_o).unwrap(),
            );
            assert!(max_abs_diff(&f.lse, &fe.lse) < 1e-14);
            let mut d_sinks = vec![0.0; h_n];
            for b in 0..p.batch {
                for h in 0..h_n {
                    for i in 0..sq {
                        let (a, e) = (q_off(&p, b, i, h), q_off(&ext, b, i, h));
                        assert!(max_abs_diff(&f.o[a..a + d], &fe.o[e..e + d]) < 1e-14);
                        assert_eq!(fe.o[e + d], 0.0);
                        assert!(max_abs_diff(&g.dq[a..a + d], &ge.dq[e..e + d]) < 1e-14);
                    }
                    for j in 0..sk {
                        let (a, e) = (kv_off(&p, b, j, h), kv_off(&ext, b, j + 1, h));
                        assert!(max_abs_diff(&g.dk[a..a + d], &ge.dk[e..e + d]) < 1e-14);
                        assert!(max_abs_diff(&g.dv[a..a + d], &ge.dv[e..e + d]) < 1e-14);
                    }
                    d_sinks[h] += ge.dk[kv_off(&ext, b, 0, h) + d] / p.scale;
                }
            }
            assert!(max_abs_diff(&g.d_sinks, &d_sinks) < 1e-13, "{:?} vs {d_sinks:?}", g.d_sinks);
        }
    }

    /// The dropout mask of a `heads`-head problem over a `batch × heads × n × n` grid.
    fn mask(d: &Dropout, batch: usize, heads: usize, n: usize) -> Vec<bool> {
        let mut out = Vec::new();
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..n {
                    out.extend((0..n).map(|j| dropout_keeps(d, heads, b, h, i, j)));
                }
            }
        }
        out
    }

    #[test]
    fn dropout_keeps_about_one_minus_p_and_is_reproducible() {
        let base = Dropout { p: 0.3, seed: 0xdead_beef_0bad_cafe, offset: 12 };
        for p in [0.1, 0.3, 0.5, 0.9] {
            let m = mask(&Dropout { p, ..base }, 2, 3, 32);
            let kept = m.iter().filter(|&&k| k).count() as f64 / m.len() as f64;
            // 6144 draws: one standard deviation is at most 0.0064, so 0.04 is over 6 sigma.
            assert!((kept - (1.0 - p)).abs() < 0.04, "p = {p}: kept {kept}");
        }
        assert!(mask(&Dropout { p: 0.0, ..base }, 1, 2, 8).iter().all(|&k| k));
        // The same seed and offset reproduce the mask; changing either half of either changes it
        // (about 2 p (1 - p) = 42% of the entries).
        let m = mask(&base, 2, 3, 16);
        assert_eq!(m, mask(&base, 2, 3, 16));
        let changes = [
            Dropout { offset: 13, ..base },
            Dropout { offset: base.offset + (1 << 32), ..base },
            Dropout { seed: base.seed ^ 1, ..base },
            Dropout { seed: base.seed ^ (1 << 40), ..base },
        ];
        for other in changes {
            let differ = m.iter().zip(mask(&other, 2, 3, 16)).filter(|(a, b)| **a != *b).count();
            assert!(differ as f64 > 0.3 * m.len() as f64, "{other:?}: only {differ} entries differ");
        }
        // Pin the index mapping: entry (b 1, h 2, i 3, j 4) of a 3-head problem is word
        // 2 (3 & 1) + (4 & 1) = 2 of the block at counter [3 >> 1, 4 >> 1, 1 * 3 + 2, offset_lo].
        let d = Dropout { p: 0.5, seed: 0x0000_0011_0000_0022, offset: 0x0000_0003_0000_0044 };
        let word = philox4x32_10([1, 2, 5, 0x44], [0x22, 0x11 + 3])[2];
        assert_eq!(dropout_keeps(&d, 3, 1, 2, 3, 4), word < 1 << 31);
    }

    /// Dropout multiplies each kept probability by 1 / (1 - p) and leaves LSE alone; p = 0 is off.
    #[test]
    fn dropout_scales_the_kept_probabilities() {
        let dropout = Dropout { p: 0.4, seed: 99, offset: 5 };
        let plain = Problem { heads_k: 1, sinks: vec![0.2, -0.3], ..problem(2, 2, 5, 6, 3, true) };
        let p = Problem { dropout: Some(dropout), ..plain.clone() };
        let x = inputs(&p, 13);
        let (f, fp) = (forward(&p, &x.q, &x.k, &x.v).unwrap(), forward(&plain, &x.q, &x.k, &x.v).unwrap());
        assert_eq!(f.lse, fp.lse);
        assert_ne!(f.o, fp.o);
        for b in 0..p.batch {
            for h in 0..p.heads {
                for i in 0..p.seqlen_q {
                    let scores: Vec<Option<f64>> =
                        (0..p.seqlen_k).map(|j| p.allows(i, j).then(|| raw_score(&p, &x, b, h, i, j))).collect();
                    let z: Vec<f64> = (0..p.seqlen_k)
                        .map(|j| if dropout_keeps(&dropout, p.heads, b, h, i, j) { 1.0 / 0.6 } else { 0.0 })
                        .collect();
                    let v: Vec<&[f64]> = (0..p.seqlen_k).map(|j| &x.v[kv_off(&p, b, j, 0)..][..p.head_dim]).collect();
                    let (o, _) = direct_row(&scores, Some(p.sinks[h]), &z, &v);
                    let off = q_off(&p, b, i, h);
                    assert!(max_abs_diff(&f.o[off..off + p.head_dim], &o) < 1e-14);
                }
            }
        }
        let off = Problem { dropout: Some(Dropout { p: 0.0, ..dropout }), ..plain.clone() };
        assert_eq!(forward(&off, &x.q, &x.k, &x.v).unwrap(), fp);
        assert_eq!(
            backward(&off, &x.q, &x.k, &x.v, &x.d_o).unwrap(),
            backward(&plain, &x.q, &x.k, &x.v, &x.d_o).unwrap()
        );
    }

    #[test]
    fn inconsistent_problems_are_typed_errors() {
        let ok = problem(2, 4, 3, 3, 2, false);
        let nan_dropout = Some(Dropout { p: f64::NAN, seed: 0, offset: 0 });
        let cases = [
            (Problem { heads_k: 0, ..ok.clone() }, "problem.heads_k"),
            (Problem { heads_k: 3, ..ok.clone() }, "problem.heads_k"),
            (Problem { heads_k: 8, ..ok.clone() }, "problem.heads_k"),
            (Problem { alibi_slopes: vec![0.1; 3], ..ok.clone() }, "problem.alibi_slopes"),
            (Problem { alibi_slopes: vec![0.1; 12], ..ok.clone() }, "problem.alibi_slopes"),
            (Problem { sinks: vec![0.1; 2], ..ok.clone() }, "problem.sinks"),
            (Problem { sinks: vec![0.1; 8], ..ok.clone() }, "problem.sinks"),
            (Problem { dropout: Some(Dropout { p: 1.0, seed: 0, offset: 0 }), ..ok.clone() }, "problem.dropout"),
            (Problem { dropout: Some(Dropout { p: -0.1, seed: 0, offset: 0 }), ..ok.clone() }, "problem.dropout"),
            (Problem { dropout: nan_dropout, ..ok.clone() }, "problem.dropout"),
            (Problem { window: (-2, 0), ..ok.clone() }, "problem.window"),
            (Problem { window: (0, i64::MIN), ..ok.clone() }, "problem.window"),
            (Problem { softcap: -1.0, ..ok.clone() }, "problem.softcap"),
            (Problem { softcap: f64::NAN, ..ok.clone() }, "problem.softcap"),
            (Problem { softcap: f64::INFINITY, ..ok.clone() }, "problem.softcap"),
        ];
        for (p, name) in cases {
            // Slices sized for the valid problem: the problem is checked first.
            let x = inputs(&ok, 14);
            let named = |e: Error| matches!(e, Error::InvalidArgument { argument, .. } if argument == name);
            assert!(named(p.validate().unwrap_err()), "{p:?}");
            assert!(named(forward(&p, &x.q, &x.k, &x.v).unwrap_err()), "{p:?}");
            assert!(named(backward(&p, &x.q, &x.k, &x.v, &x.d_o).unwrap_err()), "{p:?}");
            assert!(named(stored_o_sensitivity(&p, &x.q, &x.k, &x.v, &x.d_o, 1e-3).unwrap_err()), "{p:?}");
        }
        // The accepted edge values.
        for p in [
            Problem { heads_k: 1, alibi_slopes: vec![0.1; 8], sinks: vec![0.0; 4], ..ok.clone() },
            Problem { heads_k: 2, alibi_slopes: vec![0.1; 4], window: (0, 0), ..ok.clone() },
            Problem { dropout: Some(Dropout { p: 0.0, seed: 0, offset: 0 }), softcap: 0.0, ..ok.clone() },
        ] {
            assert_eq!(p.validate(), Ok(()), "{p:?}");
        }
        // K and V are sized by heads_k.
        let gqa = Problem { heads_k: 2, ..ok.clone() };
        let x = inputs(&ok, 15);
        let err = forward(&gqa, &x.q, &x.k, &x.v).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { argument: "k", .. }), "{err}");
    }

    #[test]
    fn rounded_variants() {
        let bf16 = |v: f64| half::bf16::from_f64(v).to_f64();
        let id = |v: f64| v;
        for p in [problem(1, 2, 6, 9, 8, true), Problem { head_dim: 8, ..everything() }] {
            let x = inputs(&p, 7);
            let exact_f = forward(&p, &x.q, &x.k, &x.v).unwrap();
            let exact_g = backward(&p, &x.q, &x.k, &x.v, &x.d_o).unwrap();
            assert_eq!(forward_rounded(&p, &x.q, &x.k, &x.v, &id).unwrap(), exact_f);
            assert_eq!(backward_rounded(&p, &x.q, &x.k, &x.v, &x.d_o, &id).unwrap(), exact_g);

            let rf = forward_rounded(&p, &x.q, &x.k, &x.v, &bf16).unwrap();
            let rg = backward_rounded(&p, &x.q, &x.k, &x.v, &x.d_o, &bf16).unwrap();
            let errs = [
                max_abs_diff(&rf.o, &exact_f.o),
                max_abs_diff(&rg.dq, &exact_g.dq),
                max_abs_diff(&rg.dk, &exact_g.dk),
                max_abs_diff(&rg.dv, &exact_g.dv),
                max_abs_diff(&rg.d_sinks, &exact_g.d_sinks),
            ];
            for e in &errs[..4] {
                assert!(*e > 0.0 && *e < 3e-2, "{p:?}: bf16 error {e} out of range ({errs:?})");
            }
            assert!(errs[4] < 3e-2, "{errs:?}");
            // Rounded outputs are representable in the rounded type; the sink gradient is not
            // rounded.
            assert!(rf.o.iter().chain(&rg.dq).chain(&rg.dk).chain(&rg.dv).all(|&v| bf16(v) == v));
        }
        // Empty-row convention survives rounding, and a sink logit is not rounded to bf16.
        let p = problem(1, 1, 3, 1, 2, true);
        let x = inputs(&p, 8);
        let rf = forward_rounded(&p, &x.q, &x.k, &x.v, &bf16).unwrap();
        assert_eq!(rf.lse[..2], [f64::INFINITY; 2]);
        assert!(rf.o[..4].iter().all(|&v| v == 0.0));
        let sink = 0.1234567;
        let rf = forward_rounded(&Problem { sinks: vec![sink], ..p }, &x.q, &x.k, &x.v, &bf16).unwrap();
        assert_eq!(rf.lse[..2], [sink; 2]);
    }

    /// The rounded forward rounds each score once it is complete (after softcap and ALiBi), and
    /// never the f32 parameters (slopes, sink logits): record what it passes to `round`.
    #[test]
    fn rounded_forward_rounds_complete_scores() {
        let p =
            Problem { softcap: 1.5, alibi_slopes: vec![0.375], sinks: vec![0.4375], ..problem(1, 1, 2, 3, 2, false) };
        let x = inputs(&p, 17);
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |v: f64| {
            seen.borrow_mut().push(v);
            v
        };
        forward_rounded(&p, &x.q, &x.k, &x.v, &record).unwrap();
        let seen = seen.into_inner();
        for i in 0..p.seqlen_q {
            for j in 0..p.seqlen_k {
                let capped = 1.5 * (raw_score(&p, &x, 0, 0, i, j) / 1.5).tanh();
                let score = capped + -0.375 * (i as f64 + 1.0 - j as f64).abs();
                assert!(seen.contains(&score), "score ({i}, {j}) = {score} not rounded as a whole");
            }
        }
        assert!(!seen.contains(&0.375) && !seen.contains(&0.4375));
    }

    /// The stored-O term follows the kv head mapping: a GQA problem's dQ term equals that of the
    /// dense problem with repeated K/V, and its dK term, a sum over each group, lies between the
    /// dense one (a single query head) and the group size times it.
    #[test]
    fn stored_o_sensitivity_accumulates_over_query_head_groups() {
        let p = Problem { heads_k: 1, softcap: 2.0, sinks: vec![0.5; 4], ..problem(1, 4, 5, 6, 3, true) };
        let dense = Problem { heads_k: p.heads, ..p.clone() };
        let x = inputs(&p, 16);
        let d = p.head_dim;
        let repeat = |t: &[f64]| -> Vec<f64> {
            (0..p.seqlen_k).flat_map(|j| (0..p.heads).flat_map(move |_| t[j * d..(j + 1) * d].to_vec())).collect()
        };
        let u = 2f64.powi(-8);
        let (dq, dk) = stored_o_sensitivity(&p, &x.q, &x.k, &x.v, &x.d_o, u).unwrap();
        let (dq1, dk1) = stored_o_sensitivity(&dense, &x.q, &repeat(&x.k), &repeat(&x.v), &x.d_o, u).unwrap();
        assert!(dq > 0.0 && dk > 0.0);
        assert!((dq - dq1).abs() <= 1e-15 * dq);
        assert!(dk > dk1 && dk <= 4.0 * dk1, "{dk} vs {dk1}");
        assert_eq!(stored_o_sensitivity(&p, &x.q, &x.k, &x.v, &x.d_o, 0.0).unwrap(), (0.0, 0.0));
    }
}
