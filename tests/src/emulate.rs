//! A CPU model of the kernels' arithmetic, for reasoning about tolerances without a GPU.
//!
//! It follows the kernels' numerics, not their tiling: scores and every product accumulate in
//! f32; the forward rounds the unnormalized probabilities to the element type for P·V, divides by
//! the f32 sum of the unrounded ones and rounds O; the backward takes D = rowsum(dO ∘ O) from that
//! rounded O, recomputes P from the f32 LSE, rounds P for dV and dS for dK and dQ, and rounds the
//! outputs. Summation order within a row differs from the tensor cores', which moves results by
//! f32 rounding only. On the case the H100 failed in the v7 property run it reproduces the GPU's
//! dQ error to four digits (tests/results/2026-11-25-h100-property-tests-v7.md).

use flash_attn::Element;
use flash_attn::reference::Problem;

/// Outputs in the layouts of [`flash_attn::reference`].
pub struct Emulated {
    pub o: Vec<f64>,
    pub lse: Vec<f64>,
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
}

/// Forward and backward of `p` as the kernels compute them, with softmax scale `scale` in f32.
pub fn kernels<T: Element>(p: &Problem, scale: f32, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64]) -> Emulated {
    let round = |x: f32| T::from_f64(x as f64).to_f64() as f32;
    let (h, d, sq, sk) = (p.heads, p.head_dim, p.seqlen_q, p.seqlen_k);
    let mut out = Emulated {
        o: vec![0.0; p.q_len()],
        lse: vec![0.0; p.lse_len()],
        dq: vec![0.0; p.q_len()],
        dk: vec![0.0; p.kv_len()],
        dv: vec![0.0; p.kv_len()],
    };
    for b in 0..p.batch {
        for hh in 0..h {
            let q_at = |i: usize| ((b * sq + i) * h + hh) * d;
            let k_at = |j: usize| ((b * sk + j) * h + hh) * d;
            let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(&a, &b)| a as f32 * b as f32).sum::<f32>();
            let (mut dk, mut dv) = (vec![0f32; sk * d], vec![0f32; sk * d]);
            for i in 0..sq {
                let (qi, doi) = (&q[q_at(i)..q_at(i) + d], &d_o[q_at(i)..q_at(i) + d]);
                let scores: Vec<Option<f32>> =
                    (0..sk).map(|j| p.allows(i, j).then(|| dot(qi, &k[k_at(j)..k_at(j) + d]) * scale)).collect();
                let max = scores.iter().flatten().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                out.lse[(b * h + hh) * sq + i] = f64::INFINITY;
                if max == f32::NEG_INFINITY {
                    continue; // no visible key: O = 0, LSE = +inf, no gradient
                }
                let unnormalized: Vec<f32> = scores.iter().map(|s| s.map_or(0.0, |s| (s - max).exp())).collect();
                let sum: f32 = unnormalized.iter().sum();
                let lse = max + sum.ln();
                let o: Vec<f32> = (0..d)
                    .map(|c| {
                        let acc: f32 = (0..sk).map(|j| round(unnormalized[j]) * v[k_at(j) + c] as f32).sum();
                        round(acc / sum)
                    })
                    .collect();
                let big_d: f32 = (0..d).map(|c| doi[c] as f32 * o[c]).sum();
                let mut dq = vec![0f32; d];
                for j in 0..sk {
                    let Some(s) = scores[j] else { continue };
                    let prob = (s - lse).exp();
                    let dp = dot(doi, &v[k_at(j)..k_at(j) + d]);
                    let ds = round(prob * (dp - big_d));
                    for c in 0..d {
                        dv[j * d + c] += round(prob) * doi[c] as f32;
                        dk[j * d + c] += ds * qi[c] as f32;
                        dq[c] += ds * k[k_at(j) + c] as f32;
                    }
                }
                for c in 0..d {
                    out.o[q_at(i) + c] = o[c] as f64;
                    out.dq[q_at(i) + c] = round(dq[c] * scale) as f64;
                }
                out.lse[(b * h + hh) * sq + i] = lse as f64;
            }
            for j in 0..sk {
                for c in 0..d {
                    out.dk[k_at(j) + c] = round(dk[j * d + c] * scale) as f64;
                    out.dv[k_at(j) + c] = round(dv[j * d + c]) as f64;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Case, F32_UNIT_ROUNDOFF, compare, compare_with, random_inputs, unit_roundoff};
    use flash_attn::reference;
    use half::bf16;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The problem and the inputs `run_case` drew for a bf16 case when these failures were
    /// recorded (same generator, same order), rounded as the test kit rounded then: with half
    /// 2.7's own `bf16::from_f64`, whose ties ignore the f64's low 32 bits (corrected since v24,
    /// which moves a few of these inputs by one unit and so no longer reproduces the runs).
    fn bf16_inputs(case: &Case) -> (Problem, [Vec<f64>; 4]) {
        let p = case.problem();
        let mut rng = StdRng::seed_from_u64(case.seed);
        let lens = [p.q_len(), p.kv_len(), p.kv_len(), p.q_len()];
        let mut draw = |n: usize| -> Vec<f64> {
            (0..n).map(|_| bf16::from_f64(crate::standard_normal(&mut rng)).to_f64()).collect()
        };
        (p, lens.map(|n| draw(n)))
    }

    /// The one case the H100 failed (v7 run, old bound 2.433e-3): the model reproduces the
    /// GPU's 2.683e-3, and the current bound admits it.
    #[test]
    fn the_recorded_h100_failure_is_kernel_arithmetic_and_fits_the_bound() {
        let case = Case { seed: 17175172606630142381, ..Case::dense(1, 2, 1, 3, 32, false) };
        let (p, [q, k, v, d_o]) = bf16_inputs(&case);
        let model = kernels::<bf16>(&p, 1.0 / 32f32.sqrt(), &q, &k, &v, &d_o);
        let round = |x: f64| bf16::from_f64(x).to_f64();
        let exact = reference::backward(&p, &q, &k, &v, &d_o).unwrap();
        let naive = reference::backward_rounded(&p, &q, &k, &v, &d_o, &round).unwrap();
        let c = compare("dq", &model.dq, &exact.dq, &naive.dq, unit_roundoff::<bf16>());
        assert!((c.error - 2.683e-3).abs() < 5e-7, "model error {:.4e}", c.error);
        assert!((c.naive_error - 1.206e-3).abs() < 5e-7, "naive error {:.4e}", c.naive_error);
        assert!(c.passed(), "{c:?}");
    }

    /// The v11 GPU run's one failure (portable head_dim 256 backward, one query, 97 keys,
    /// softmax scale 1.21): dK 2.163e-1 against a bound of 2.155e-1 (naive 1.050e-1). The model
    /// of the kernels' arithmetic lands at the same distance from the exact gradient, so it is
    /// rounding (D = rowsum(dO ∘ O) from the bf16 O, scaled up by a peaked softmax), not a bug.
    #[test]
    fn the_v11_failure_is_kernel_arithmetic() {
        let case = Case { seed: 13604030930923466508, scale: Some(1.2115306), ..Case::dense(3, 1, 1, 97, 256, false) };
        let (p, [q, k, v, d_o]) = bf16_inputs(&case);
        let model = kernels::<bf16>(&p, 1.2115306, &q, &k, &v, &d_o);
        let round = |x: f64| bf16::from_f64(x).to_f64();
        let exact = reference::backward(&p, &q, &k, &v, &d_o).unwrap();
        let naive = reference::backward_rounded(&p, &q, &k, &v, &d_o, &round).unwrap();
        let plain = compare("dk", &model.dk, &exact.dk, &naive.dk, unit_roundoff::<bf16>());
        assert!((plain.naive_error - 1.050e-1).abs() < 5e-4, "naive error {:.4e}", plain.naive_error);
        // The model's accumulation order is not the kernel's, so agreement is to 0.2%, not exact.
        assert!((plain.error - 2.163e-1).abs() < 5e-4, "model error {:.4e}", plain.error);
        assert!(!plain.passed(), "the old bound rejects it, as on the GPU");
        let (_, dk_shift) = reference::stored_o_sensitivity(&p, &q, &k, &v, &d_o, unit_roundoff::<bf16>()).unwrap();
        let c = compare_with("dk", &model.dk, &exact.dk, &naive.dk, unit_roundoff::<bf16>(), dk_shift);
        eprintln!("{c:?} (stored-O term {dk_shift:.3e})");
        assert!(c.passed(), "{c:?}");
    }

    /// The model agrees with the exact reference to within the bound on ordinary inputs.
    #[test]
    fn the_model_is_close_to_the_reference() {
        let p = Problem::new(1, 2, 37, 53, 64, 0.125, true);
        let mut rng = StdRng::seed_from_u64(3);
        let (q, _) = random_inputs::<bf16>(&mut rng, p.q_len());
        let (k, _) = random_inputs::<bf16>(&mut rng, p.kv_len());
        let (v, _) = random_inputs::<bf16>(&mut rng, p.kv_len());
        let (d_o, _) = random_inputs::<bf16>(&mut rng, p.q_len());
        let model = kernels::<bf16>(&p, 0.125, &q, &k, &v, &d_o);
        let round = |x: f64| bf16::from_f64(x).to_f64();
        let (fwd, nfwd) =
            (reference::forward(&p, &q, &k, &v).unwrap(), reference::forward_rounded(&p, &q, &k, &v, &round).unwrap());
        let (bwd, nbwd) = (
            reference::backward(&p, &q, &k, &v, &d_o).unwrap(),
            reference::backward_rounded(&p, &q, &k, &v, &d_o, &round).unwrap(),
        );
        let u = unit_roundoff::<bf16>();
        for c in [
            compare("o", &model.o, &fwd.o, &nfwd.o, u),
            compare("lse", &model.lse, &fwd.lse, &nfwd.lse, F32_UNIT_ROUNDOFF),
            compare("dq", &model.dq, &bwd.dq, &nbwd.dq, u),
            compare("dk", &model.dk, &bwd.dk, &nbwd.dk, u),
            compare("dv", &model.dv, &bwd.dv, &nbwd.dv, u),
        ] {
            assert!(c.passed(), "{c:?}");
        }
        // The stored-O term stays small next to the bound on ordinary rows.
        let (dq_shift, dk_shift) = reference::stored_o_sensitivity(&p, &q, &k, &v, &d_o, u).unwrap();
        let (dq, dk) = (compare("dq", &model.dq, &bwd.dq, &nbwd.dq, u), compare("dk", &model.dk, &bwd.dk, &nbwd.dk, u));
        eprintln!(
            "ordinary rows: dq term {dq_shift:.2e} vs bound {:.2e}, dk term {dk_shift:.2e} vs {:.2e}",
            dq.tolerance, dk.tolerance
        );
        assert!(dq_shift < 0.5 * dq.tolerance && dk_shift < 0.5 * dk.tolerance);
    }
}
