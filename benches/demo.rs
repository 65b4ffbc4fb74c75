//! The main job: attention forward and backward on the GPU at a realistic shape, checked against
//! the f64 reference and timed. Without a GPU it says so and runs the CPU reference instead.
//!
//! `demo [--batch 4] [--heads 16] [--seqlen 4096] [--head-dim 128] [--causal] [--f16] [--iters 20]`

use cust::event::{Event, EventFlags};
use cust::memory::CopyDestination;
use cust::stream::{Stream, StreamFlags};
use flash_attn::reference::{self, Problem};
use flash_attn::{AttentionParams, DeviceTensor, Element, FlashAttention};
use flash_attn_tests::{Comparison, F32_UNIT_ROUNDOFF, compare, gpu_context, random_inputs, unit_roundoff};
use half::{bf16, f16};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::time::Instant;

struct Options {
    batch: usize,
    heads: usize,
    seqlen: usize,
    head_dim: usize,
    causal: bool,
    f16: bool,
    iters: usize,
    portable: bool,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        batch: 4,
        heads: 16,
        seqlen: 4096,
        head_dim: 128,
        causal: false,
        f16: false,
        iters: 20,
        portable: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<usize, String> {
            args.next().and_then(|v| v.parse().ok()).ok_or(format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--batch" => o.batch = value("--batch")?,
            "--heads" => o.heads = value("--heads")?,
            "--seqlen" => o.seqlen = value("--seqlen")?,
            "--head-dim" => o.head_dim = value("--head-dim")?,
            "--iters" => o.iters = value("--iters")?.max(1),
            "--causal" => o.causal = true,
            "--f16" => o.f16 = true,
            "--portable" => o.portable = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn main() {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::exit(2);
        }
    };
    let result = match gpu_context() {
        Err(why) => cpu_only(&why),
        Ok(context) => {
            let r = if opts.f16 { run::<f16>(&opts) } else { run::<bf16>(&opts) };
            drop(context);
            r
        }
    };
    if let Err(e) = result {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn cpu_only(why: &str) -> Result<(), String> {
    println!("No GPU here ({why}).");
    println!("The kernels were compiled to PTX and checked by ptxas (`cargo xtask build-ptx` above);");
    println!("running the f64 CPU reference on a small problem instead.");
    let p = Problem::new(1, 2, 256, 256, 128, 1.0 / 128f64.sqrt(), true);
    let mut rng = StdRng::seed_from_u64(1);
    let (q, _) = random_inputs::<bf16>(&mut rng, p.q_len());
    let (k, _) = random_inputs::<bf16>(&mut rng, p.kv_len());
    let (v, _) = random_inputs::<bf16>(&mut rng, p.kv_len());
    let (d_o, _) = random_inputs::<bf16>(&mut rng, p.q_len());
    let start = Instant::now();
    let fwd = reference::forward(&p, &q, &k, &v).map_err(|e| e.to_string())?;
    let grads = reference::backward(&p, &q, &k, &v, &d_o).map_err(|e| e.to_string())?;
    let round = |x: f64| bf16::from_f64(x).to_f64();
    let naive = reference::forward_rounded(&p, &q, &k, &v, &round).map_err(|e| e.to_string())?;
    println!(
        "reference forward+backward, batch 1, 2 heads, seqlen 256, head_dim 128, causal: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "  |O| max {:.3}, |dQ| max {:.3}; a naive bf16 computation is off by {:.2e}",
        fwd.o.iter().fold(0.0f64, |m, x| m.max(x.abs())),
        grads.dq.iter().fold(0.0f64, |m, x| m.max(x.abs())),
        compare("o", &naive.o, &fwd.o, &naive.o, 0.0).naive_error
    );
    Ok(())
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn cuda<T>(r: cust::error::CudaResult<T>) -> Result<T, String> {
    r.map_err(|e| format!("CUDA: {e:?}"))
}

/// Row-major values of (batch b, head h, rows) of a (batch, seqlen, heads, d) array.
fn slice(values: &[f64], shape: [usize; 4], b: usize, h: usize, rows: std::ops::Range<usize>) -> Vec<f64> {
    let [_, s, hs, d] = shape;
    rows.flat_map(|r| {
        let at = ((b * s + r) * hs + h) * d;
        values[at..at + d].iter().copied()
    })
    .collect()
}

fn run<T: Element>(o: &Options) -> Result<(), String> {
    let lib = |e: flash_attn::Error| e.to_string();
    let stream = cuda(Stream::new(StreamFlags::NON_BLOCKING, None))?;
    let started = std::time::Instant::now();
    let mut attention = FlashAttention::new().map_err(lib)?;
    println!("kernels loaded from the {} in {:.2} s", attention.module_image(), started.elapsed().as_secs_f64());
    if o.portable {
        attention = attention.portable_kernels_only();
    }
    // FLASH_ATTN_KERNELS=name,...: run these registry kernels in place of the defaults (as the
    // GPU tests do), e.g. to put an opt-in kernel under compute-sanitizer.
    for name in std::env::var("FLASH_ATTN_KERNELS").unwrap_or_default().split(',').filter(|n| !n.is_empty()) {
        attention = attention.with_kernel(name).ok_or(format!("FLASH_ATTN_KERNELS: no kernel {name} here"))?;
    }
    let shape = [o.batch, o.seqlen, o.heads, o.head_dim];
    let n = shape.iter().product::<usize>();
    let dtype = if o.f16 { "f16" } else { "bf16" };
    println!(
        "flash-attn demo: batch {}, heads {}, seqlen {}, head_dim {}, {}, {dtype}",
        o.batch,
        o.heads,
        o.seqlen,
        o.head_dim,
        if o.causal { "causal" } else { "not causal" }
    );
    println!("forward kernel: {}", attention.forward_kernel_name::<T>(o.head_dim, false).unwrap_or("none"));
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (q64, q) = random_inputs::<T>(&mut rng, n);
    let (k64, k) = random_inputs::<T>(&mut rng, n);
    let (v64, v) = random_inputs::<T>(&mut rng, n);
    let (do64, d_o) = random_inputs::<T>(&mut rng, n);
    let (qd, kd, vd, dod) = (
        DeviceTensor::from_host(&q, shape).map_err(lib)?,
        DeviceTensor::from_host(&k, shape).map_err(lib)?,
        DeviceTensor::from_host(&v, shape).map_err(lib)?,
        DeviceTensor::from_host(&d_o, shape).map_err(lib)?,
    );
    let params = AttentionParams { causal: o.causal, ..Default::default() };

    let (start, end) = (cuda(Event::new(EventFlags::DEFAULT))?, cuda(Event::new(EventFlags::DEFAULT))?);
    let mut fwd_ms = Vec::new();
    let mut bwd_ms = Vec::new();
    let mut last = None;
    for _ in 0..o.iters + 2 {
        cuda(start.record(&stream))?;
        let out = attention.forward(&stream, qd.view(), kd.view(), vd.view(), &params).map_err(lib)?;
        cuda(end.record(&stream))?;
        cuda(end.synchronize())?;
        fwd_ms.push(cuda(end.elapsed_time_f32(&start))?);
        cuda(start.record(&stream))?;
        let grads = attention
            .backward(&stream, dod.view(), qd.view(), kd.view(), vd.view(), out.o.view(), &out.lse, &params)
            .map_err(lib)?;
        cuda(end.record(&stream))?;
        cuda(end.synchronize())?;
        bwd_ms.push(cuda(end.elapsed_time_f32(&start))?);
        last = Some((out, grads));
    }
    // The first two runs warm up (module load, allocator) and are not timed.
    let (fwd, bwd) = (median(fwd_ms[2..].to_vec()), median(bwd_ms[2..].to_vec()));
    let flops = 4.0 * (o.batch * o.heads * o.seqlen * o.seqlen * o.head_dim) as f64 / if o.causal { 2.0 } else { 1.0 };
    println!("forward : {fwd:8.3} ms  {:6.1} TFLOP/s  (median of {})", flops / fwd as f64 / 1e9, o.iters);
    println!(
        "backward: {bwd:8.3} ms  {:6.1} TFLOP/s  (median of {}; FLOPs = 2.5 x forward)",
        2.5 * flops / bwd as f64 / 1e9,
        o.iters
    );

    // Check a slice against the f64 reference: the last 64 queries of the first and last
    // (batch, head). For those rows O, LSE and dQ depend only on the rows themselves and all of
    // K, V (bottom-right causal alignment keeps the slice's mask the same).
    let (out, grads) = last.unwrap();
    let o_host: Vec<f64> = out.o.to_host().map_err(lib)?.iter().map(|x| x.to_f64()).collect();
    let dq_host: Vec<f64> = grads.dq.to_host().map_err(lib)?.iter().map(|x| x.to_f64()).collect();
    let mut lse_host = vec![0f32; out.lse.len()];
    cuda(out.lse.copy_to(&mut lse_host[..]))?;
    let rows = o.seqlen.saturating_sub(64)..o.seqlen;
    let round = |x: f64| T::from_f64(x).to_f64();
    let mut checks: Vec<Comparison> = Vec::new();
    for (b, h) in [(0, 0), (o.batch - 1, o.heads - 1)] {
        let p = Problem::new(1, 1, rows.len(), o.seqlen, o.head_dim, 1.0 / (o.head_dim as f64).sqrt(), o.causal);
        let all = 0..o.seqlen;
        let (qs, ks, vs, dos) = (
            slice(&q64, shape, b, h, rows.clone()),
            slice(&k64, shape, b, h, all.clone()),
            slice(&v64, shape, b, h, all),
            slice(&do64, shape, b, h, rows.clone()),
        );
        let want = reference::forward(&p, &qs, &ks, &vs).map_err(|e| e.to_string())?;
        let naive = reference::forward_rounded(&p, &qs, &ks, &vs, &round).map_err(|e| e.to_string())?;
        checks.push(compare("o", &slice(&o_host, shape, b, h, rows.clone()), &want.o, &naive.o, unit_roundoff::<T>()));
        let lse: Vec<f64> = rows.clone().map(|r| lse_host[(b * o.heads + h) * o.seqlen + r] as f64).collect();
        checks.push(compare("lse", &lse, &want.lse, &naive.lse, F32_UNIT_ROUNDOFF));
        let gw = reference::backward(&p, &qs, &ks, &vs, &dos).map_err(|e| e.to_string())?;
        let gn = reference::backward_rounded(&p, &qs, &ks, &vs, &dos, &round).map_err(|e| e.to_string())?;
        checks.push(compare("dq", &slice(&dq_host, shape, b, h, rows.clone()), &gw.dq, &gn.dq, unit_roundoff::<T>()));
    }
    let mut ok = true;
    for c in &checks {
        ok &= c.passed();
        println!(
            "check {:>3} (last {} queries of two heads): max error {:.2e} <= tolerance {:.2e}: {}",
            c.name,
            rows.len(),
            c.error,
            c.tolerance,
            if c.passed() { "ok" } else { "FAILED" }
        );
    }
    println!("dK and dV depend on every query; the property tests (`bash scripts/test.sh`) check them in full.");
    if ok { Ok(()) } else { Err("a check failed".into()) }
}
