//! CPU property tests of the f64 reference the GPU tests trust: on random small problems, its
//! gradients match central finite differences of L = sum(O ∘ dO), its softmax rows sum to one,
//! and rows that see no key produce nothing.

use flash_attn::reference::{self, Problem};
use proptest::prelude::*;

fn problem() -> impl Strategy<Value = (Problem, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)> {
    (1usize..=2, 1usize..=2, 1usize..=6, 1usize..=6, 1usize..=4, any::<bool>(), 0.1f64..2.0).prop_flat_map(
        |(batch, heads, seqlen_q, seqlen_k, head_dim, causal, scale)| {
            let p = Problem { batch, heads, seqlen_q, seqlen_k, head_dim, scale, causal };
            let q = prop::collection::vec(-2.0f64..2.0, p.q_len());
            let kv = prop::collection::vec(-2.0f64..2.0, p.kv_len());
            let d_o = prop::collection::vec(-2.0f64..2.0, p.q_len());
            (Just(p), q, kv.clone(), kv, d_o)
        },
    )
}

fn loss(p: &Problem, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64]) -> f64 {
    let f = reference::forward(p, q, k, v).expect("finite differences keep the lengths of valid inputs");
    f.o.iter().zip(d_o).map(|(o, g)| o * g).sum()
}

/// Central difference of the loss along one input coordinate.
fn numeric(p: &Problem, inputs: [&[f64]; 4], which: usize, at: usize) -> f64 {
    const H: f64 = 1e-5;
    let mut shifted: Vec<Vec<f64>> = inputs.iter().map(|x| x.to_vec()).collect();
    shifted[which][at] += H;
    let up = loss(p, &shifted[0], &shifted[1], &shifted[2], &shifted[3]);
    shifted[which][at] -= 2.0 * H;
    let down = loss(p, &shifted[0], &shifted[1], &shifted[2], &shifted[3]);
    (up - down) / (2.0 * H)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn gradients_match_finite_differences((p, q, k, v, d_o) in problem()) {
        let g = reference::backward(&p, &q, &k, &v, &d_o).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (which, grad) in [(0, &g.dq), (1, &g.dk), (2, &g.dv)] {
            for (at, &analytic) in grad.iter().enumerate() {
                let fd = numeric(&p, [&q, &k, &v, &d_o], which, at);
                // h = 1e-5 in f64: truncation error ~h² · |f'''| and cancellation ~1e-16 / h; both
                // far below 1e-6 relative for inputs in [-2, 2] and scales up to 2.
                prop_assert!((fd - analytic).abs() <= 1e-6 * analytic.abs().max(1e-1), "{which} {at}: fd {fd} vs {analytic}");
            }
        }
    }

    #[test]
    fn rows_are_convex_combinations_or_empty((p, q, k, _v, _d_o) in problem()) {
        // With V = 1 everywhere, O is the row sum of the softmax: 1 for a row that sees a key.
        let ones = vec![1.0; p.kv_len()];
        let f = reference::forward(&p, &q, &k, &ones).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for b in 0..p.batch {
            for i in 0..p.seqlen_q {
                for h in 0..p.heads {
                    let sees = p.visible_keys(i) > 0;
                    let lse = f.lse[(b * p.heads + h) * p.seqlen_q + i];
                    prop_assert_eq!(lse.is_infinite(), !sees);
                    for c in 0..p.head_dim {
                        let o = f.o[((b * p.seqlen_q + i) * p.heads + h) * p.head_dim + c];
                        let expected = if sees { 1.0 } else { 0.0 };
                        prop_assert!((o - expected).abs() < 1e-12, "row {} sees a key: {}, o = {}", i, sees, o);
                    }
                }
            }
        }
    }

    #[test]
    fn mismatched_lengths_are_typed_errors((p, q, k, v, d_o) in problem(), cut in 0usize..4) {
        // Each input in turn one element short (or one element long): the reference names it.
        let (mut ins, names) = ([q, k, v, d_o], ["q", "k", "v", "d_o"]);
        if ins[cut].pop().is_none() {
            ins[cut].push(0.0);
        }
        let err = reference::backward(&p, &ins[0], &ins[1], &ins[2], &ins[3]).unwrap_err();
        let named = matches!(&err, flash_attn::Error::InvalidArgument { argument, .. } if *argument == names[cut]);
        prop_assert!(named, "{}", err);
        if cut < 3 {
            prop_assert!(reference::forward(&p, &ins[0], &ins[1], &ins[2]).is_err());
        }
    }
}
