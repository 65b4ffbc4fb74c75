//! f64 CPU reference of attention forward and backward, shared by tests and benches.
//!
//! This is deliberately the plain textbook algorithm (materialise each score row, softmax it,
//! multiply), not a tiled/online one: it is the ground truth that the GPU kernels are checked
//! against, so it must be obviously correct rather than clever. Everything is computed in `f64`.
//!
//! The `*_rounded` variants run the same computation but pass every stored intermediate through a
//! caller-supplied rounding function (e.g. to bf16). That models a *naive* low-precision
//! implementation, and FlashAttention's tolerance rule compares the kernel's error against the
//! error of such a naive implementation rather than against a fixed epsilon.
//!
//! Layouts (all contiguous, row-major):
//! * Q, O, dO, dQ: `(batch, seqlen_q, heads, head_dim)`
//! * K, V, dK, dV: `(batch, seqlen_k, heads, head_dim)`
//! * LSE (and the backward's D): `(batch, heads, seqlen_q)`
//!
//! Slices whose lengths do not match the [`Problem`] come back as [`Error::InvalidArgument`]
//! naming the slice, as everywhere in the library.

use crate::error::{Error, Result};

/// Shape of one attention problem. Q, O, dO, dQ: (batch, seqlen_q, heads, head_dim) contiguous
/// row-major; K, V, dK, dV: (batch, seqlen_k, heads, head_dim) contiguous; LSE and D:
/// (batch, heads, seqlen_q) contiguous.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Problem {
    pub batch: usize,
    pub heads: usize,
    pub seqlen_q: usize,
    pub seqlen_k: usize,
    pub head_dim: usize,
    /// Multiplier applied to `Q K^T` (usually `1 / sqrt(head_dim)`).
    pub scale: f64,
    pub causal: bool,
}

impl Problem {
    /// Number of elements of Q, O, dO and dQ (saturating: a count past `usize::MAX` matches no
    /// slice).
    pub fn q_len(&self) -> usize {
        product(&[self.batch, self.seqlen_q, self.heads, self.head_dim])
    }

    /// Number of elements of K, V, dK and dV.
    pub fn kv_len(&self) -> usize {
        product(&[self.batch, self.seqlen_k, self.heads, self.head_dim])
    }

    /// Number of elements of LSE (and of the backward's D).
    pub fn lse_len(&self) -> usize {
        product(&[self.batch, self.heads, self.seqlen_q])
    }

    /// Whether query `i` attends key `j` (for `i < seqlen_q`, `j < seqlen_k`).
    ///
    /// Causal is aligned at the bottom-right corner (FlashAttention >= 2.1): query `i` may see
    /// key `j` iff `j <= i + seqlen_k - seqlen_q`. Bottom-right alignment is what incremental
    /// decoding needs: the last query is the newest token and sees the whole KV cache. When
    /// `seqlen_q > seqlen_k` the first `seqlen_q - seqlen_k` queries therefore see no key at all.
    pub fn allows(&self, i: usize, j: usize) -> bool {
        // `j <= i + seqlen_k - seqlen_q`, rearranged so nothing underflows.
        !self.causal || j.saturating_add(self.seqlen_q) <= i.saturating_add(self.seqlen_k)
    }

    /// Number of keys query `i` attends. The allowed keys of a row are always the prefix
    /// `0..visible_keys(i)`, which the reference exploits to skip masked entries entirely.
    pub fn visible_keys(&self, i: usize) -> usize {
        if self.causal {
            i.saturating_add(self.seqlen_k).saturating_add(1).saturating_sub(self.seqlen_q).min(self.seqlen_k)
        } else {
            self.seqlen_k
        }
    }
}

/// Forward outputs: O with Q's layout, LSE with layout (batch, heads, seqlen_q).
#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    pub o: Vec<f64>,
    /// Natural-log sum-exp of each score row. `+inf` for a row with no visible key: that is
    /// FlashAttention's convention, and it makes the backward's recomputation
    /// `P = exp(S - LSE)` yield exactly 0 for such rows instead of NaN.
    pub lse: Vec<f64>,
}

/// Backward outputs: dQ with Q's layout, dK and dV with K's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
}

/// Exact attention forward: `S = scale * Q K^T` (masked entries excluded), `P = softmax(S)` per
/// row, `O = P V`, `LSE_i = ln sum_j exp(S_ij)`. A row with no visible key gets `O = 0` and
/// `LSE = +inf`.
pub fn forward(p: &Problem, q: &[f64], k: &[f64], v: &[f64]) -> Result<Forward> {
    forward_impl(p, q, k, v, &|x| x)
}

/// Exact attention backward for upstream gradient `d_o`:
/// `D_i = sum_d dO_id O_id`, `dP = dO V^T`, `dS = P ∘ (dP - D)`, `dQ = scale · dS K`,
/// `dK = scale · dS^T Q`, `dV = P^T dO`. Rows with no visible key contribute nothing.
///
/// The forward is recomputed internally (row by row), so no forward output is needed.
pub fn backward(p: &Problem, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64]) -> Result<Gradients> {
    backward_impl(p, q, k, v, d_o, &|x| x)
}

/// [`forward`] with every stored intermediate passed through `round` (typically a round trip
/// through a 16-bit float type), mimicking a naive implementation that keeps tensors in the
/// 16-bit dtype but accumulates in f32: Q, K, V are rounded on entry, each score after its dot
/// product (`S = round(scale * q·k)`), each probability after the softmax, and each O element.
/// Sums are accumulated in f64 (close enough to an f32 accumulator for this purpose). LSE is not
/// rounded because FlashAttention keeps it in f32.
///
/// With `round` the identity this is bit-identical to [`forward`].
pub fn forward_rounded(p: &Problem, q: &[f64], k: &[f64], v: &[f64], round: &dyn Fn(f64) -> f64) -> Result<Forward> {
    forward_impl(p, q, k, v, &|x| round(x))
}

/// [`backward`] with every stored intermediate passed through `round`, on top of the rounding
/// done by [`forward_rounded`] (whose rounded P and O it uses): dO is rounded on entry, then each
/// dP element, each dS element, and each element of dQ, dK, dV. D is an f32-style internal sum
/// and is not rounded.
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
/// sum; the worst case, u · Σ_c |dO_ic · O_ic|, is far too pessimistic), dS_ij = P_ij (dP_ij − D_i)
/// by P_ij · δ_i, and dQ_ic = scale · Σ_j dS_ij K_jc, dK_jc = scale · Σ_i dS_ij Q_ic accordingly.
/// Returns the largest such shift of one element of dQ and of dK.
///
/// A naive implementation rounds O too, but its rounding need not resemble the kernel's, so
/// this term is not covered by "twice the naive error" when it dominates: rows with one or two
/// visible keys or a very peaked softmax, where the other error terms are small.
pub fn stored_o_sensitivity(p: &Problem, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64], u: f64) -> Result<(f64, f64)> {
    check_lengths(p, q, k, v, Some(d_o))?;
    let d = p.head_dim;
    let mut probs = vec![0.0; p.seqlen_k];
    let mut o_row = vec![0.0; d];
    let mut dk_shift = vec![0.0; p.seqlen_k * d];
    let (mut dq_max, mut dk_max) = (0.0f64, 0.0f64);
    for b in 0..p.batch {
        for h in 0..p.heads {
            let head = Head { p, q, k, v, b, h };
            dk_shift.fill(0.0);
            for i in 0..p.seqlen_q {
                let (n, _) = head.softmax_row(i, &mut probs, &|x| x);
                if n == 0 {
                    continue;
                }
                head.output_row(&probs[..n], &mut o_row, &|x| x);
                let off = head.q_off(i);
                let delta = u * d_o[off..off + d].iter().zip(&o_row).map(|(a, b)| (a * b).powi(2)).sum::<f64>().sqrt();
                for c in 0..d {
                    let dq: f64 = (0..n).map(|j| probs[j] * head.k_row(j)[c].abs()).sum();
                    dq_max = dq_max.max(p.scale * delta * dq);
                }
                for j in 0..n {
                    for (c, &qc) in head.q_row(i).iter().enumerate() {
                        dk_shift[j * d + c] += p.scale * probs[j] * delta * qc.abs();
                    }
                }
            }
            dk_max = dk_shift.iter().fold(dk_max, |m, &x| m.max(x));
        }
    }
    Ok((dq_max, dk_max))
}

fn product(dims: &[usize]) -> usize {
    dims.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

/// Q, K, V (and dO) hold exactly the elements `p` describes.
fn check_lengths(p: &Problem, q: &[f64], k: &[f64], v: &[f64], d_o: Option<&[f64]>) -> Result<()> {
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

/// Read-only view of one (batch, head) slice of the (already rounded) inputs.
struct Head<'a> {
    p: &'a Problem,
    q: &'a [f64],
    k: &'a [f64],
    v: &'a [f64],
    b: usize,
    h: usize,
}

impl Head<'_> {
    fn q_off(&self, i: usize) -> usize {
        ((self.b * self.p.seqlen_q + i) * self.p.heads + self.h) * self.p.head_dim
    }

    fn kv_off(&self, j: usize) -> usize {
        ((self.b * self.p.seqlen_k + j) * self.p.heads + self.h) * self.p.head_dim
    }

    fn q_row(&self, i: usize) -> &[f64] {
        &self.q[self.q_off(i)..][..self.p.head_dim]
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

    /// Writes the softmax probabilities of query `i` into `probs[..n]` and returns `(n, lse)`,
    /// where `n` is the number of visible keys. Uses the stable form `exp(s - max)`.
    fn softmax_row<R: Fn(f64) -> f64>(&self, i: usize, probs: &mut [f64], round: &R) -> (usize, f64) {
        let n = self.p.visible_keys(i);
        if n == 0 {
            return (0, f64::INFINITY);
        }
        let qi = self.q_row(i);
        let row = &mut probs[..n];
        let mut max = f64::NEG_INFINITY;
        for (j, s) in row.iter_mut().enumerate() {
            *s = round(self.p.scale * dot(qi, self.k_row(j)));
            max = max.max(*s);
        }
        let mut sum = 0.0;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        for e in row.iter_mut() {
            *e = round(*e / sum);
        }
        (n, max + sum.ln())
    }

    /// `out = round(probs · V)` for a row whose probabilities are `probs` (visible keys only).
    fn output_row<R: Fn(f64) -> f64>(&self, probs: &[f64], out: &mut [f64], round: &R) {
        out.fill(0.0);
        for (j, &w) in probs.iter().enumerate() {
            axpy(out, w, self.v_row(j));
        }
        for o in out.iter_mut() {
            *o = round(*o);
        }
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
    let mut probs = vec![0.0; p.seqlen_k];
    let mut acc = vec![0.0; d];
    for b in 0..p.batch {
        for h in 0..p.heads {
            let head = Head { p, q: &q, k: &k, v: &v, b, h };
            for i in 0..p.seqlen_q {
                let (n, l) = head.softmax_row(i, &mut probs, round);
                lse[head.lse_off(i)] = l;
                head.output_row(&probs[..n], &mut acc, round);
                let off = head.q_off(i);
                o[off..off + d].copy_from_slice(&acc);
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
    let (d, sk) = (p.head_dim, p.seqlen_k);
    let mut dq = vec![0.0; p.q_len()];
    let mut dk = vec![0.0; p.kv_len()];
    let mut dv = vec![0.0; p.kv_len()];
    let mut probs = vec![0.0; sk];
    let mut ds = vec![0.0; sk];
    let mut o_row = vec![0.0; d];
    let mut acc = vec![0.0; d];
    // Per-head accumulators for dK / dV, rows of length `d` indexed by key.
    let mut dk_acc = vec![0.0; sk * d];
    let mut dv_acc = vec![0.0; sk * d];
    for b in 0..p.batch {
        for h in 0..p.heads {
            let head = Head { p, q: &q, k: &k, v: &v, b, h };
            dk_acc.fill(0.0);
            dv_acc.fill(0.0);
            for i in 0..p.seqlen_q {
                // Recompute this row of the forward (P and O) exactly as `forward_impl` does.
                let (n, _) = head.softmax_row(i, &mut probs, round);
                if n == 0 {
                    // No visible key: O row is 0, P row empty, dQ row stays 0.
                    continue;
                }
                let probs = &probs[..n];
                head.output_row(probs, &mut o_row, round);
                let off = head.q_off(i);
                let doi = &d_o[off..off + d];
                let qi = head.q_row(i);
                let d_i = dot(doi, &o_row);
                for (j, (s, &pij)) in ds.iter_mut().zip(probs).enumerate() {
                    let dp = round(dot(doi, head.v_row(j)));
                    *s = round(pij * (dp - d_i));
                }
                acc.fill(0.0);
                for (j, (&sij, &pij)) in ds[..n].iter().zip(probs).enumerate() {
                    axpy(&mut acc, sij, head.k_row(j));
                    axpy(&mut dk_acc[j * d..(j + 1) * d], sij, qi);
                    axpy(&mut dv_acc[j * d..(j + 1) * d], pij, doi);
                }
                for (g, &a) in dq[off..off + d].iter_mut().zip(&acc) {
                    *g = round(p.scale * a);
                }
            }
            for j in 0..sk {
                let off = head.kv_off(j);
                let src = j * d..(j + 1) * d;
                for (g, &a) in dk[off..off + d].iter_mut().zip(&dk_acc[src.clone()]) {
                    *g = round(p.scale * a);
                }
                for (g, &a) in dv[off..off + d].iter_mut().zip(&dv_acc[src]) {
                    *g = round(a);
                }
            }
        }
    }
    Ok(Gradients { dq, dk, dv })
}

#[cfg(test)]
mod tests {
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
        Problem { batch, heads, seqlen_q: sq, seqlen_k: sk, head_dim: d, scale: 1.0 / (d as f64).sqrt(), causal }
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

    /// O row offset in Q layout.
    fn q_off(p: &Problem, b: usize, i: usize, h: usize) -> usize {
        ((b * p.seqlen_q + i) * p.heads + h) * p.head_dim
    }

    fn lse_off(p: &Problem, b: usize, h: usize, i: usize) -> usize {
        (b * p.heads + h) * p.seqlen_q + i
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
                        let want = if p.visible_keys(i) > 0 { 1.0 } else { 0.0 };
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
                    let qi = &x.q[q_off(&p, 0, i, h)..][..p.head_dim];
                    let mut sum = 0.0;
                    for j in 0..p.seqlen_k {
                        if p.allows(i, j) {
                            let kj = &x.k[((j * p.heads) + h) * p.head_dim..][..p.head_dim];
                            let s: f64 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                            sum += (p.scale * s).exp();
                        }
                    }
                    let got = f.lse[lse_off(&p, 0, h, i)];
                    assert!((got - sum.ln()).abs() < 1e-13, "{got} vs {}", sum.ln());
                }
            }
        }
    }

    fn loss(p: &Problem, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64]) -> f64 {
        forward(p, q, k, v).unwrap().o.iter().zip(d_o).map(|(o, g)| o * g).sum()
    }

    /// Checks every entry of `grad` against a central finite difference of `L = sum(O ∘ dO)`
    /// w.r.t. the input selected by `which` (0 = Q, 1 = K, 2 = V).
    fn check_fd(p: &Problem, x: &Inputs, which: usize, grad: &[f64]) {
        const H: f64 = 1e-5;
        let n = grad.len();
        for idx in 0..n {
            let eval = |delta: f64| {
                let (mut q, mut k, mut v) = (x.q.clone(), x.k.clone(), x.v.clone());
                match which {
                    0 => q[idx] += delta,
                    1 => k[idx] += delta,
                    _ => v[idx] += delta,
                }
                loss(p, &q, &k, &v, &x.d_o)
            };
            let fd = (eval(H) - eval(-H)) / (2.0 * H);
            let g = grad[idx];
            assert!(
                (fd - g).abs() <= 1e-6 * g.abs().max(1e-2),
                "{p:?} input {which} idx {idx}: analytic {g} vs finite difference {fd}"
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for (sq, sk) in [(3, 7), (7, 3), (4, 4)] {
            for causal in [false, true] {
                let mut p = problem(2, 2, sq, sk, 4, causal);
                p.scale = 0.7;
                let x = inputs(&p, 3 + sq as u64 * 10 + causal as u64);
                let g = backward(&p, &x.q, &x.k, &x.v, &x.d_o).unwrap();
                check_fd(&p, &x, 0, &g.dq);
                check_fd(&p, &x, 1, &g.dk);
                check_fd(&p, &x, 2, &g.dv);
            }
        }
    }

    #[test]
    fn causal_is_bottom_right_aligned_when_keys_outnumber_queries() {
        let p = problem(1, 2, 2, 5, 4, true);
        assert_eq!((p.visible_keys(0), p.visible_keys(1)), (4, 5));
        assert!((0..4).all(|j| p.allows(0, j)) && !p.allows(0, 4));
        assert!((0..5).all(|j| p.allows(1, j)));

        // Query 0 must equal non-causal attention over keys 0..4 only; query 1 over all keys.
        let x = inputs(&p, 4);
        let f = forward(&p, &x.q, &x.k, &x.v).unwrap();
        let full = forward(&Problem { causal: false, ..p }, &x.q, &x.k, &x.v).unwrap();
        let trunc_p = Problem { seqlen_k: 4, causal: false, ..p };
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
    fn causal_queries_beyond_keys_see_nothing() {
        let p = problem(2, 2, 5, 2, 4, true);
        assert_eq!((0..5).map(|i| p.visible_keys(i)).collect::<Vec<_>>(), [0, 0, 0, 1, 2]);
        let x = inputs(&p, 5);
        let f = forward(&p, &x.q, &x.k, &x.v).unwrap();
        let g = backward(&p, &x.q, &x.k, &x.v, &x.d_o).unwrap();
        // Same dO except for new random values in the three empty rows.
        let mut rng = Rng::new(55);
        let mut d_o2 = x.d_o.clone();
        let d = p.head_dim;
        for b in 0..p.batch {
            for h in 0..p.heads {
                for i in 0..3 {
                    let off = q_off(&p, b, i, h);
                    assert!(f.o[off..off + d].iter().all(|&o| o == 0.0));
                    assert_eq!(f.lse[lse_off(&p, b, h, i)], f64::INFINITY);
                    assert!(g.dq[off..off + d].iter().all(|&v| v == 0.0));
                    d_o2[off..off + d].iter_mut().for_each(|v| *v = rng.next() * 10.0);
                }
                for i in 3..5 {
                    assert!(f.lse[lse_off(&p, b, h, i)].is_finite());
                }
            }
        }
        let g2 = backward(&p, &x.q, &x.k, &x.v, &d_o2).unwrap();
        assert_eq!(g.dk, g2.dk);
        assert_eq!(g.dv, g2.dv);
        assert_eq!(g.dq, g2.dq);
    }

    #[test]
    fn single_key_copies_value_row() {
        let p = problem(2, 3, 4, 1, 5, false);
        let x = inputs(&p, 6);
        let f = forward(&p, &x.q, &x.k, &x.v).unwrap();
        let d = p.head_dim;
        for b in 0..p.batch {
            for h in 0..p.heads {
                let voff = (b * p.heads + h) * d;
                for i in 0..p.seqlen_q {
                    let off = q_off(&p, b, i, h);
                    assert_eq!(f.o[off..off + d], x.v[voff..voff + d]);
                }
            }
        }
    }

    #[test]
    fn rounded_variants() {
        let p = problem(1, 2, 6, 9, 8, true);
        let x = inputs(&p, 7);
        let exact_f = forward(&p, &x.q, &x.k, &x.v).unwrap();
        let exact_g = backward(&p, &x.q, &x.k, &x.v, &x.d_o).unwrap();

        let id = |v: f64| v;
        assert_eq!(forward_rounded(&p, &x.q, &x.k, &x.v, &id).unwrap(), exact_f);
        assert_eq!(backward_rounded(&p, &x.q, &x.k, &x.v, &x.d_o, &id).unwrap(), exact_g);

        let bf16 = |v: f64| half::bf16::from_f64(v).to_f64();
        let rf = forward_rounded(&p, &x.q, &x.k, &x.v, &bf16).unwrap();
        let rg = backward_rounded(&p, &x.q, &x.k, &x.v, &x.d_o, &bf16).unwrap();
        let errs = [
            max_abs_diff(&rf.o, &exact_f.o),
            max_abs_diff(&rg.dq, &exact_g.dq),
            max_abs_diff(&rg.dk, &exact_g.dk),
            max_abs_diff(&rg.dv, &exact_g.dv),
        ];
        for e in errs {
            assert!(e > 0.0 && e < 3e-2, "bf16 error {e} out of range ({errs:?})");
        }
        // Rounded outputs are representable in the rounded type.
        assert!(rf.o.iter().chain(&rg.dq).all(|&v| bf16(v) == v));
        // Empty-row convention survives rounding.
        let p = problem(1, 1, 3, 1, 2, true);
        let x = inputs(&p, 8);
        let rf = forward_rounded(&p, &x.q, &x.k, &x.v, &bf16).unwrap();
        assert_eq!(rf.lse[..2], [f64::INFINITY; 2]);
        assert!(rf.o[..4].iter().all(|&v| v == 0.0));
    }
}
