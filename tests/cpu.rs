//! CPU property tests of the f64 reference the GPU tests trust: on random small problems drawing
//! every feature (GQA, windows, softcap, ALiBi, sinks, dropout), its gradients match central
//! finite differences of L = sum(O ∘ dO), its softmax rows sum to one (less the sink's share),
//! and rows that see no key produce nothing.

use flash_attn::reference::{self, Dropout, Problem};
use proptest::prelude::*;

/// A random small problem and its inputs Q, K, V, dO. Each feature is drawn independently, so
/// most cases combine several: heads_k dividing heads, a window (sides -1..=3), softcap, ALiBi
/// slopes per head or per (batch, head), sinks, dropout.
fn problem() -> impl Strategy<Value = (Problem, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>)> {
    let shape = (1usize..=2, 1usize..=2, 1usize..=2, 1usize..=6, 1usize..=6, 1usize..=4, any::<bool>(), 0.1f64..2.0);
    let window = prop_oneof![Just((-1i64, -1i64)), (-1i64..=3, -1i64..=3)];
    let softcap = prop_oneof![Just(0.0), 0.5f64..3.0];
    let dropout = prop::option::weighted(
        0.4,
        (0.05f64..0.7, any::<u64>(), any::<u64>()).prop_map(|(p, seed, offset)| Dropout { p, seed, offset }),
    );
    // ALiBi: 0 = off, 1 = per head, 2 = per (batch, head).
    (shape, window, softcap, dropout, 0usize..3, any::<bool>()).prop_flat_map(
        |(
            (batch, heads_k, group, seqlen_q, seqlen_k, head_dim, causal, scale),
            window,
            softcap,
            dropout,
            alibi,
            sinks,
        )| {
            let heads = heads_k * group;
            let p = Problem {
                heads_k,
                window,
                softcap,
                dropout,
                ..Problem::new(batch, heads, seqlen_q, seqlen_k, head_dim, scale, causal)
            };
            let slopes = prop::collection::vec(0.0f64..1.0, [0, heads, batch * heads][alibi]);
            let sinks = prop::collection::vec(-2.0f64..2.0, if sinks { heads } else { 0 });
            let q = prop::collection::vec(-2.0f64..2.0, p.q_len());
            let kv = prop::collection::vec(-2.0f64..2.0, p.kv_len());
            let d_o = prop::collection::vec(-2.0f64..2.0, p.q_len());
            (Just(p), slopes, sinks, q, kv.clone(), kv, d_o)
                .prop_map(|(p, alibi_slopes, sinks, q, k, v, d_o)| (Problem { alibi_slopes, sinks, ..p }, q, k, v, d_o))
        },
    )
}

fn loss(p: &Problem, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64]) -> f64 {
    let f = reference::forward(p, q, k, v).expect("finite differences keep the lengths of valid inputs");
    f.o.iter().zip(d_o).map(|(o, g)| o * g).sum()
}

/// Central difference of the loss along one coordinate: of Q, K or V (`which` 0, 1, 2) or of
/// the sink logits (`which` 3).
fn numeric(p: &Problem, inputs: [&[f64]; 4], which: usize, at: usize) -> f64 {
    const H: f64 = 1e-5;
    let mut p = p.clone();
    let mut shifted: Vec<Vec<f64>> = inputs.iter().map(|x| x.to_vec()).collect();
    let mut eval = |delta: f64| {
        let target = if which == 3 { &mut p.sinks } else { &mut shifted[which] };
        target[at] += delta;
        loss(&p, &shifted[0], &shifted[1], &shifted[2], &shifted[3])
    };
    let up = eval(H);
    let down = eval(-2.0 * H);
    (up - down) / (2.0 * H)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn gradients_match_finite_differences((p, q, k, v, d_o) in problem()) {
        let g = reference::backward(&p, &q, &k, &v, &d_o).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(g.d_sinks.len(), p.sinks.len());
        for (which, grad) in [(0, &g.dq), (1, &g.dk), (2, &g.dv), (3, &g.d_sinks)] {
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
        // Without dropout and with V = 1 everywhere, O is the row sum of the softmax: 1 for a row
        // that sees a key, less the sink's share exp(sink - LSE), which is all of an empty row's.
        let p = Problem { dropout: None, ..p };
        let ones = vec![1.0; p.kv_len()];
        let f = reference::forward(&p, &q, &k, &ones).map_err(|e| TestCaseError::fail(e.to_string()))?;
        for b in 0..p.batch {
            for i in 0..p.seqlen_q {
                let sees = !p.key_range(i).is_empty();
                prop_assert_eq!(sees, (0..p.seqlen_k).any(|j| p.allows(i, j)));
                for h in 0..p.heads {
                    let lse = f.lse[(b * p.heads + h) * p.seqlen_q + i];
                    let sink = p.sinks.get(h).copied();
                    match (sees, sink) {
                        (true, _) => prop_assert!(lse.is_finite()),
                        (false, Some(s)) => prop_assert_eq!(lse, s),
                        (false, None) => prop_assert_eq!(lse, f64::INFINITY),
                    }
                    let expected = if sees { 1.0 - sink.map_or(0.0, |s| (s - lse).exp()) } else { 0.0 };
                    for c in 0..p.head_dim {
                        let o = f.o[((b * p.seqlen_q + i) * p.heads + h) * p.head_dim + c];
                        prop_assert!((o - expected).abs() < 1e-12, "row {} sees a key: {}, o = {} vs {}", i, sees, o, expected);
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
