//! FP8 forward cases: random shapes, masks, grouped K/V heads and descale factors; e4m3 inputs
//! drawn fresh per case, O and the LSE poisoned before the launch, compared with the f64
//! reference on the dequantized inputs.
//!
//! Tolerances (see `run_fp8_case`): O may be off by twice the naive FP8 computation's error
//! (`reference::forward_fp8_naive`: P rounded to e4m3, O to bf16), plus one bf16 rounding, plus
//! the effect of the scores' own error; the LSE by that score error plus its f32 rounding.

use crate::{CaseOutcome, GpuResult, LSE_ROUNDOFF, compare_with, cuda, lib, max_abs_error, standard_normal};
use cust::memory::{CopyDestination, DeviceBuffer};
use cust::stream::Stream;
use flash_attn::reference::{self, Problem};
use flash_attn::{AttentionParams, Descale, F8E4M3, FlashAttention, Fp8Ref, Fp8Scales, Layout, TensorMut};
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One FP8 case, drawn from a seed.
#[derive(Clone, Debug)]
pub struct Fp8Case {
    pub seed: u64,
    pub batch: usize,
    pub heads_k: usize,
    pub group: usize,
    pub seqlen_q: usize,
    pub seqlen_k: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub window: Option<(i32, i32)>,
    /// Descales: per (batch, K/V head) when true, else one per tensor.
    pub per_head: bool,
}

impl Fp8Case {
    pub fn draw(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let long = rng.gen_bool(0.3);
        let len = |rng: &mut StdRng| if long { rng.gen_range(200..1100) } else { rng.gen_range(1..300) };
        let (seqlen_q, seqlen_k) = (len(&mut rng), len(&mut rng));
        let window = rng.gen_bool(0.15).then(|| (rng.gen_range(-1..200), rng.gen_range(-1..100)));
        Fp8Case {
            seed,
            batch: rng.gen_range(1..3),
            heads_k: rng.gen_range(1..3),
            group: [1, 1, 2, 4][rng.gen_range(0..4)],
            seqlen_q,
            seqlen_k,
            head_dim: [128, 256][rng.gen_range(0..2)],
            causal: window.is_none() && rng.gen_bool(0.4),
            window,
            per_head: rng.gen_bool(0.5),
        }
    }

    pub fn problem(&self) -> Problem {
        let heads = self.heads_k * self.group;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let mut p = Problem::new(self.batch, heads, self.seqlen_q, self.seqlen_k, self.head_dim, scale, self.causal);
        p.heads_k = self.heads_k;
        if let Some((l, r)) = self.window {
            p.window = (l as i64, r as i64);
        }
        p
    }
}

/// Standard-normal values of `(batch, seqlen, heads_k', head_dim)` stored as e4m3 after division by
/// their (batch, head) descale, and the dequantized values `stored · descale` as f64 (exact).
fn quantized(rng: &mut StdRng, shape: [usize; 4], descale: &[f32], per_head: bool) -> (Vec<F8E4M3>, Vec<f64>) {
    let [_, seqlen, heads, d] = shape;
    let n = shape.iter().product();
    let (mut stored, mut values) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for index in 0..n {
        let (b, h) = (index / (seqlen * heads * d), index / d % heads);
        // K and V's heads are the K/V heads; Q's head h reads K/V head h / group (the caller
        // passes Q's descale already expanded to its heads).
        let factor = if per_head { descale[b * heads + h] } else { descale[0] };
        let e = F8E4M3::from_f64(standard_normal(rng) / factor as f64);
        stored.push(e);
        values.push(e.to_f64() * factor as f64);
    }
    (stored, values)
}

/// The largest |score| bound `scale · Σ_d |q_id k_jd|` over visible pairs: Hopper's FP8 `wgmma`
/// adds its products with fewer mantissa bits than f32 (DeepSeek-V3's report measures about 14),
/// so each score may be off by 2⁻¹³ of that sum; we allow 2⁻¹² of the largest.
fn score_magnitude(p: &Problem, q: &[f64], k: &[f64]) -> f64 {
    let d = p.head_dim;
    let mut worst = 0.0f64;
    for b in 0..p.batch {
        for h in 0..p.heads {
            let hk = h / (p.heads / p.heads_k);
            for i in 0..p.seqlen_q {
                let qi = &q[((b * p.seqlen_q + i) * p.heads + h) * d..][..d];
                for j in p.key_range(i) {
                    let kj = &k[((b * p.seqlen_k + j) * p.heads_k + hk) * d..][..d];
                    let s: f64 = qi.iter().zip(kj).map(|(a, c)| (a * c).abs()).sum();
                    worst = worst.max(p.scale * s);
                }
            }
        }
    }
    worst
}

/// Run one FP8 case on the GPU and compare with the reference.
pub fn run_fp8_case(attention: &FlashAttention, stream: &Stream, case: &Fp8Case) -> GpuResult<CaseOutcome> {
    let p = case.problem();
    let mut rng = StdRng::seed_from_u64(case.seed ^ 0x5eed_f8f8);
    let (b, hk, heads, d) = (p.batch, p.heads_k, p.heads, p.head_dim);
    // Descale factors in [0.25, 4): per (batch, K/V head), or one per tensor.
    let count = if case.per_head { b * hk } else { 1 };
    let mut draw = || (0..count).map(|_| 2f32.powf(rng.gen_range(-2.0..2.0))).collect::<Vec<f32>>();
    let (dq, dk, dv) = (draw(), draw(), draw());
    // Q's descale is indexed by K/V head: expand it to Q's heads for the quantization.
    let dq_by_q_head: Vec<f32> = if case.per_head {
        (0..b * heads).map(|i| dq[(i / heads) * hk + (i % heads) / (heads / hk)]).collect()
    } else {
        dq.clone()
    };
    let q_shape = [b, p.seqlen_q, heads, d];
    let kv_shape = [b, p.seqlen_k, hk, d];
    let (q8, q64) = quantized(&mut rng, q_shape, &dq_by_q_head, case.per_head);
    let (k8, k64) = quantized(&mut rng, kv_shape, &dk, case.per_head);
    let (v8, v64) = quantized(&mut rng, kv_shape, &dv, case.per_head);

    let upload = |x: &[F8E4M3]| cuda(DeviceBuffer::from_slice(&x.iter().map(|e| e.to_bits()).collect::<Vec<u8>>()));
    let (qd, kd, vd) = (upload(&q8)?, upload(&k8)?, upload(&v8)?);
    let (dqd, dkd, dvd) = (
        cuda(DeviceBuffer::from_slice(&dq))?,
        cuda(DeviceBuffer::from_slice(&dk))?,
        cuda(DeviceBuffer::from_slice(&dv))?,
    );
    let descale = |values| if case.per_head { Descale::per_head(values, hk) } else { Descale::per_tensor(values) };
    let scales = Fp8Scales { q: Some(descale(&dqd)), k: Some(descale(&dkd)), v: Some(descale(&dvd)) };
    let (lq, lkv) = (Layout::contiguous(q_shape), Layout::contiguous(kv_shape));
    // Poisoned outputs: every element the kernel should write starts as NaN.
    let mut od = cuda(DeviceBuffer::from_slice(&vec![bf16::NAN.to_bits(); p.q_len()]))?;
    let mut lse = cuda(DeviceBuffer::from_slice(&vec![f32::NAN; p.lse_len()]))?;
    let params = AttentionParams { causal: case.causal, window: case.window, ..Default::default() };
    lib(attention.forward_fp8_into(
        stream,
        lib(Fp8Ref::from_slice(&qd, 0, lq))?,
        lib(Fp8Ref::from_slice(&kd, 0, lkv))?,
        lib(Fp8Ref::from_slice(&vd, 0, lkv))?,
        &scales,
        lib(TensorMut::<bf16>::from_slice(&mut od, 0, lq))?,
        &mut lse,
        &params,
    ))?;
    cuda(stream.synchronize())?;

    let want = lib(reference::forward(&p, &q64, &k64, &v64))?;
    let naive = lib(reference::forward_fp8_naive(&p, &q64, &k64, &v64))?;
    let mut o_bits = vec![0u16; p.q_len()];
    cuda(od.copy_to(&mut o_bits[..]))?;
    let o: Vec<f64> = o_bits.iter().map(|&x| bf16::from_bits(x).to_f64()).collect();
    let mut lse_host = vec![0f32; p.lse_len()];
    cuda(lse.copy_to(&mut lse_host[..]))?;
    let lse64: Vec<f64> = lse_host.iter().map(|&x| x as f64).collect();
    // A score error ε moves each probability by a factor within e^{±2ε} (the row's normalizer
    // moves too), so O, a convex combination of V's rows, moves by at most 2ε · max|V| (to first
    // order; ε is below 10⁻² here), and the LSE by at most ε.
    let score_error = 2f64.powi(-12) * score_magnitude(&p, &q64, &k64);
    let v_max = v64.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let comparisons = vec![
        compare_with("o", &o, &want.o, &naive.o, 2f64.powi(-8), 2.0 * score_error * v_max),
        compare_with("lse", &lse64, &want.lse, &naive.lse, LSE_ROUNDOFF, score_error),
    ];
    Ok(CaseOutcome { comparisons })
}

/// The RMS and largest error of O against the reference, for the accuracy record (FP8 beside
/// bf16 on the same dequantized inputs).
pub fn o_error(got: &[f64], want: &[f64]) -> (f64, f64) {
    let finite: Vec<(f64, f64)> = got.iter().zip(want).filter(|(_, w)| w.is_finite()).map(|(g, w)| (*g, *w)).collect();
    let rms = (finite.iter().map(|(g, w)| (g - w).powi(2)).sum::<f64>() / finite.len().max(1) as f64).sqrt();
    (rms, max_abs_error(got, want))
}
