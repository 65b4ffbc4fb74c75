//! Benchmark grid of issue 3 on the GPU: 16k tokens per batch, model dim 2048, seqlen 512 … 16k,
//! head_dim 32, 64, 96, 128, 192 and 256, causal and not, bf16 and f16. Prints a table and
//! writes JSON Lines.
//!
//! `bench [--out FILE] [--iters N] [--head-dims 64,128] [--dtypes bf16,f16] [--seqlens 512,...]
//! [--kernels portable] [--kernel NAME,...]` (`--dtypes fp8`: the FP8 forward, see [`grid_fp8`]; `--kernel` applies
//! to every mode below too)
//!
//! `bench --features all|gqa,window_4096_0,... [--seqlens 4096,16384] [--out FILE]`: issue 9's
//! feature rows instead (head_dim 128, bf16; see [`FEATURES`]), the same rows as
//! `feature_anchors.py`, with FLOPs counted on the visible area of the mask.
//!
//! `bench --serving continuous [--out FILE]`: a continuous-batching server's attention (see
//! [`continuous`]): requests arrive, prefill packed (varlen) and write their K/V into pages, and
//! decode one token a step through the paged cache, appending as they go; reports tokens/s and
//! the P50/P99 step latency, and writes every step's schedule for `serving_replay.py`.
//!
//! `bench --serving decode,varlen [--out FILE]`: issue 10's serving rows (see [`serving`]):
//! decode against a KV cache (32 query heads over 8 KV heads, head_dim 128, bf16, seqlen_q 1 and
//! 4, split-KV chosen by the library) and a packed prefill of 64 sequences of 64 to 8192 tokens
//! (causal, forward and backward), with the dense causal forward and backward at the mean length
//! beside it; `serving_anchors.py` times the same rows with torch SDPA and FlashAttention-4.
//! `--head-dims 64,...` runs the prefill rows at those head dims instead of 128 (with `--kernel`,
//! e.g. a `_seq` twin against the default).
//!
//! Timing follows the anchors' `triton.testing.do_bench` (warmup 25 ms, rep 100 ms, median):
//! the call count fills 100 ms, and a 256 MB buffer is zeroed before each timed call, outside
//! its events, so that every call starts from a cold L2 and the GPU's power state (it runs at
//! its 700 W cap in these loops) is the anchors' too. `--iters N` instead times N calls after 3
//! warm-up calls, each synchronized, without the flush (for profilers: a known launch count).
//! FLOPs = 4 · batch · heads · seqlen² · head_dim, halved when causal; backward = 2.5 × forward.

use cust::event::{Event, EventFlags};
use cust::memory::DeviceBuffer;
use cust::stream::{Stream, StreamFlags};
use flash_attn::{AttentionParams, Element, FlashAttention, Layout, TensorMut, TensorRef};
use flash_attn_tests::{gpu_context, random_inputs};
use half::{bf16, f16};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::io::Write;

const TOKENS: usize = 16 * 1024;
const MODEL_DIM: usize = 2048;

/// The grid's head dims when `--head-dims` is not given.
const GRID_HEAD_DIMS: [usize; 6] = [32, 64, 96, 128, 192, 256];

struct Options {
    out: Option<String>,
    /// 0: the do_bench protocol; otherwise this many calls.
    iters: usize,
    /// `--head-dims`; unset, the grid runs every head dim and the serving varlen rows 128.
    head_dims: Option<Vec<usize>>,
    dtypes: Vec<String>,
    seqlens: Option<Vec<usize>>,
    portable: bool,
    kernels: Vec<String>,
    /// Feature rows by name (`all`: every one); empty: the grid.
    features: Vec<String>,
    /// Serving rows: `decode`, `varlen`, `continuous`.
    serving: Vec<String>,
    /// `--decode-points 64x32768,1x16384`: only these (batch, cache length) decode rows.
    decode_points: Vec<(usize, usize)>,
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

impl Options {
    /// The grid's head dims: `--head-dims`, or all of them.
    fn grid_head_dims(&self) -> &[usize] {
        self.head_dims.as_deref().unwrap_or(&GRID_HEAD_DIMS)
    }
}

fn options() -> Options {
    let mut o = Options {
        out: None,
        iters: 0,
        head_dims: None,
        dtypes: vec!["bf16".into(), "f16".into()],
        seqlens: None,
        portable: false,
        kernels: Vec::new(),
        features: Vec::new(),
        serving: Vec::new(),
        decode_points: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--out" => o.out = Some(v),
            "--iters" => o.iters = v.parse().unwrap_or(0),
            "--head-dims" => o.head_dims = Some(list(&v)),
            "--dtypes" => o.dtypes = list(&v),
            "--seqlens" => o.seqlens = Some(list(&v)),
            // `portable`: the mma.sync kernels also on Hopper, to compare with the wgmma ones.
            "--kernels" => o.portable = v == "portable",
            // Kernels by name, comma-separated (measurement variants from the registry).
            "--kernel" => o.kernels = list(&v),
            "--features" if v == "all" => o.features = FEATURES.iter().map(|f| f.name.to_string()).collect(),
            "--features" => o.features = list(&v),
            "--serving" => o.serving = list(&v),
            "--decode-points" => {
                o.decode_points = v
                    .split(',')
                    .filter_map(|p| p.split_once('x'))
                    .filter_map(|(b, l)| Some((b.parse().ok()?, l.parse().ok()?)))
                    .collect()
            }
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The anchors' `do_bench` warm-up and repetition budgets, in milliseconds.
const WARMUP_MS: f32 = 25.0;
const REP_MS: f32 = 100.0;
/// `do_bench`'s L2 flush: zeroing 256 MB (int32 elements) before each timed call.
const FLUSH_WORDS: usize = 256_000_000 / 4;

/// Median milliseconds of `call` on `stream`, timed as `triton.testing.do_bench` times the
/// anchors (see the module comment), or over `iters` synchronized calls when `iters > 0`.
fn time_calls(stream: &Stream, flush: &mut DeviceBuffer<u32>, iters: usize, mut call: impl FnMut()) -> f32 {
    let event = || Event::new(EventFlags::DEFAULT).unwrap();
    let mut clear_l2 = || {
        // SAFETY: the flush buffer is used only by this stream's memsets; nothing reads it.
        unsafe { flush.set_zero_async(stream).unwrap() }
    };
    if iters > 0 {
        let (start, end) = (event(), event());
        let mut times = Vec::new();
        for i in 0..iters + 3 {
            start.record(stream).unwrap();
            call();
            end.record(stream).unwrap();
            end.synchronize().unwrap();
            if i >= 3 {
                times.push(end.elapsed_time_f32(&start).unwrap());
            }
        }
        return median(times);
    }
    call();
    stream.synchronize().unwrap();
    let (start, end) = (event(), event());
    start.record(stream).unwrap();
    for _ in 0..5 {
        clear_l2();
        call();
    }
    end.record(stream).unwrap();
    end.synchronize().unwrap();
    let estimate = end.elapsed_time_f32(&start).unwrap() / 5.0;
    let count = |budget: f32| ((budget / estimate) as usize).max(1);
    for _ in 0..count(WARMUP_MS) {
        call();
    }
    let events: Vec<(Event, Event)> = (0..count(REP_MS)).map(|_| (event(), event())).collect();
    for (start, end) in &events {
        clear_l2();
        start.record(stream).unwrap();
        call();
        end.record(stream).unwrap();
    }
    stream.synchronize().unwrap();
    median(events.iter().map(|(start, end)| end.elapsed_time_f32(start).unwrap()).collect())
}

fn free_memory() -> usize {
    cust::memory::mem_get_info().map(|(free, _)| free).unwrap_or(0)
}

fn main() {
    let o = options();
    let context = match gpu_context() {
        Ok(c) => c,
        Err(why) => {
            println!("bench: no GPU ({why}); nothing to measure.");
            return;
        }
    };
    let device = cust::device::Device::get_device(0).unwrap();
    let card = device.name().unwrap_or_default();
    let mut out = o.out.as_ref().map(|p| std::fs::File::create(p).expect("cannot create --out file"));
    if !o.features.is_empty() {
        features(&o, &card, &mut out);
        drop(context);
        return;
    }
    if !o.serving.is_empty() {
        serving(&o, &card, &mut out);
        drop(context);
        return;
    }
    println!(
        "{:<5} {:>4} {:>6} {:>6} {:>4} | {:>9} {:>8} | {:>9} {:>8}",
        "dtype", "d", "causal", "seqlen", "b", "fwd ms", "TFLOP/s", "bwd ms", "TFLOP/s"
    );
    for dtype in &o.dtypes {
        match dtype.as_str() {
            "bf16" => grid::<bf16>(&o, &card, &mut out),
            "f16" => grid::<f16>(&o, &card, &mut out),
            "fp8" => grid_fp8(&o, &card, &mut out),
            other => panic!("unknown dtype {other}"),
        }
    }
    memory_report::<bf16>();
    drop(context);
}

/// The library with `--kernels portable` and every `--kernel NAME` applied (each one printed).
fn attention_for(o: &Options) -> FlashAttention {
    let mut attention = FlashAttention::new().unwrap();
    if o.portable {
        attention = attention.portable_kernels_only();
    }
    for name in &o.kernels {
        attention = attention.with_kernel(name).expect("--kernel: no such kernel here");
        println!("kernel {name}");
    }
    attention
}

fn grid<T: Element>(o: &Options, card: &str, out: &mut Option<std::fs::File>) {
    let stream = Stream::new(StreamFlags::NON_BLOCKING, None).unwrap();
    let attention = attention_for(o);
    // Every grid point holds TOKENS × MODEL_DIM elements per tensor: one set of random inputs
    // serves all of them, viewed with each point's shape.
    let mut rng = StdRng::seed_from_u64(7);
    let upload = |rng: &mut StdRng| {
        let (_, host) = random_inputs::<T>(rng, TOKENS * MODEL_DIM);
        DeviceBuffer::from_slice(bytemuck::cast_slice::<T, u16>(&host)).unwrap()
    };
    let (q, k, v, d_o) = (upload(&mut rng), upload(&mut rng), upload(&mut rng), upload(&mut rng));
    let mut flush = DeviceBuffer::<u32>::zeroed(FLUSH_WORDS).unwrap();
    let timing = if o.iters == 0 { "do_bench".to_string() } else { format!("{} calls", o.iters) };
    let dtype = if T::DTYPE == flash_attn_kernels::registry::Dtype::Bf16 { "bf16" } else { "f16" };
    for &d in o.grid_head_dims() {
        for causal in [false, true] {
            for &s in o.seqlens.as_deref().unwrap_or(&[512, 1024, 2048, 4096, 8192, 16384]) {
                let (b, h) = (TOKENS / s, MODEL_DIM / d);
                let layout = Layout::contiguous([b, s, h, d]);
                let (qv, kv, vv, dov) = (
                    TensorRef::<T>::from_slice(&q, 0, layout).unwrap(),
                    TensorRef::<T>::from_slice(&k, 0, layout).unwrap(),
                    TensorRef::<T>::from_slice(&v, 0, layout).unwrap(),
                    TensorRef::<T>::from_slice(&d_o, 0, layout).unwrap(),
                );
                let params = AttentionParams { causal, ..Default::default() };
                // Outputs are allocated once, outside the timed region, as a caching allocator
                // (PyTorch's) would hand them out: a synchronous cuMemAlloc per call adds
                // run-to-run jitter that swamps the 0.1–0.5 ms kernels at seqlen 512.
                let n = b * s * h * d;
                let mut o_buf = DeviceBuffer::<u16>::zeroed(n).unwrap();
                let mut lse = DeviceBuffer::<f32>::zeroed(b * h * s).unwrap();
                let (mut dq, mut dk, mut dv) = (
                    DeviceBuffer::<u16>::zeroed(n).unwrap(),
                    DeviceBuffer::<u16>::zeroed(n).unwrap(),
                    DeviceBuffer::<u16>::zeroed(n).unwrap(),
                );
                // The forward is timed, then the backward (reusing the last O and LSE), as the
                // anchors' do_bench times each direction on its own.
                let fms = time_calls(&stream, &mut flush, o.iters, || {
                    let o_out = TensorMut::<T>::from_slice(&mut o_buf, 0, layout).unwrap();
                    attention.forward_into(&stream, qv, kv, vv, o_out, &mut lse, &params).unwrap();
                });
                let bms = time_calls(&stream, &mut flush, o.iters, || {
                    let o_in = TensorRef::<T>::from_slice(&o_buf, 0, layout).unwrap();
                    let (dq_out, dk_out, dv_out) = (
                        TensorMut::<T>::from_slice(&mut dq, 0, layout).unwrap(),
                        TensorMut::<T>::from_slice(&mut dk, 0, layout).unwrap(),
                        TensorMut::<T>::from_slice(&mut dv, 0, layout).unwrap(),
                    );
                    attention
                        .backward_into(&stream, dov, qv, kv, vv, o_in, &lse, dq_out, dk_out, dv_out, None, &params)
                        .unwrap();
                });
                let flops = 4.0 * (b * h * s * s * d) as f64 / if causal { 2.0 } else { 1.0 };
                let (ft, bt) = (flops / fms as f64 / 1e9, 2.5 * flops / bms as f64 / 1e9);
                println!("{dtype:<5} {d:>4} {causal:>6} {s:>6} {b:>4} | {fms:>9.3} {ft:>8.1} | {bms:>9.3} {bt:>8.1}");
                if let Some(file) = out.as_mut() {
                    for (dir, ms, tf) in [("fwd", fms, ft), ("bwd", bms, bt)] {
                        writeln!(
                            file,
                            "{{\"direction\":\"{dir}\",\"dtype\":\"{dtype}\",\"head_dim\":{d},\"causal\":{causal},\"seqlen\":{s},\"batch\":{b},\"heads\":{h},\"ours_ms\":{ms:.4},\"ours_tflops\":{tf:.2},\"card\":\"{card}\",\"timing\":\"{timing}\"}}"
                        )
                        .unwrap();
                    }
                }
            }
        }
    }
}

/// `--dtypes fp8`: the FP8 forward (e4m3 Q, K, V, per-tensor descales, bf16 O) on the grid's
/// points for the FP8 head dims, timed as the grid is; the call includes Vᵀ's transpose.
fn grid_fp8(o: &Options, card: &str, out: &mut Option<std::fs::File>) {
    use flash_attn::{Descale, Fp8Ref, Fp8Scales, quantize_fp8};
    let stream = Stream::new(StreamFlags::NON_BLOCKING, None).unwrap();
    let attention = attention_for(o);
    let mut rng = StdRng::seed_from_u64(7);
    let upload = |rng: &mut StdRng| {
        let (x, _) = random_inputs::<bf16>(rng, TOKENS * MODEL_DIM);
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let bytes: Vec<u8> = quantize_fp8(&x).iter().map(|e| e.to_bits()).collect();
        DeviceBuffer::from_slice(&bytes).unwrap()
    };
    let (q, k, v) = (upload(&mut rng), upload(&mut rng), upload(&mut rng));
    let one = DeviceBuffer::from_slice(&[1f32]).unwrap();
    let scales = Fp8Scales {
        q: Some(Descale::per_tensor(&one)),
        k: Some(Descale::per_tensor(&one)),
        v: Some(Descale::per_tensor(&one)),
    };
    let mut flush = DeviceBuffer::<u32>::zeroed(FLUSH_WORDS).unwrap();
    let timing = if o.iters == 0 { "do_bench".to_string() } else { format!("{} calls", o.iters) };
    for &d in o.grid_head_dims().iter().filter(|d| flash_attn::FP8_HEAD_DIMS.contains(&(**d as u32))) {
        for causal in [false, true] {
            for &s in o.seqlens.as_deref().unwrap_or(&[512, 1024, 2048, 4096, 8192, 16384]) {
                let (b, h) = (TOKENS / s, MODEL_DIM / d);
                let layout = Layout::contiguous([b, s, h, d]);
                let (qv, kv, vv) = (
                    Fp8Ref::from_slice(&q, 0, layout).unwrap(),
                    Fp8Ref::from_slice(&k, 0, layout).unwrap(),
                    Fp8Ref::from_slice(&v, 0, layout).unwrap(),
                );
                let params = AttentionParams { causal, ..Default::default() };
                let mut o_buf = DeviceBuffer::<u16>::zeroed(b * s * h * d).unwrap();
                let mut lse = DeviceBuffer::<f32>::zeroed(b * h * s).unwrap();
                let fms = time_calls(&stream, &mut flush, o.iters, || {
                    let o_out = TensorMut::<bf16>::from_slice(&mut o_buf, 0, layout).unwrap();
                    attention.forward_fp8_into(&stream, qv, kv, vv, &scales, o_out, &mut lse, &params).unwrap();
                });
                let flops = 4.0 * (b * h * s * s * d) as f64 / if causal { 2.0 } else { 1.0 };
                let ft = flops / fms as f64 / 1e9;
                println!("{:<5} {d:>4} {causal:>6} {s:>6} {b:>4} | {fms:>9.3} {ft:>8.1} |", "fp8");
                if let Some(file) = out.as_mut() {
                    writeln!(
                        file,
                        "{{\"direction\":\"fwd\",\"dtype\":\"fp8\",\"head_dim\":{d},\"causal\":{causal},\"seqlen\":{s},\"batch\":{b},\"heads\":{h},\"ours_ms\":{fms:.4},\"ours_tflops\":{ft:.2},\"card\":\"{card}\",\"timing\":\"{timing}\"}}"
                    )
                    .unwrap();
                }
            }
        }
    }
}

/// Extra device memory of one forward at batch 4, 16 heads, seqlen 4096, head_dim 128: the
/// difference in free memory with the outputs alive.
fn memory_report<T: Element>() {
    let stream = Stream::new(StreamFlags::NON_BLOCKING, None).unwrap();
    let attention = FlashAttention::new().unwrap();
    let shape = [4, 4096, 16, 128];
    let n: usize = shape.iter().product();
    let buf = DeviceBuffer::from_slice(&vec![0x3c00u16; n]).unwrap();
    let view = TensorRef::<T>::from_slice(&buf, 0, Layout::contiguous(shape)).unwrap();
    stream.synchronize().unwrap();
    let before = free_memory();
    let out = attention.forward(&stream, view, view, view, &AttentionParams::default()).unwrap();
    stream.synchronize().unwrap();
    let after = free_memory();
    let expected = (n * 2 + 4 * 16 * 4096 * 4) as f64 / (1 << 20) as f64;
    println!(
        "extra device memory of one forward (b=4, h=16, s=4096, d=128): {:.1} MiB (O + LSE = {expected:.1} MiB)",
        before.saturating_sub(after) as f64 / (1 << 20) as f64
    );
    drop(out);
}

/// One of issue 9's feature rows: head_dim 128, bf16, 16k tokens per batch.
struct Feature {
    name: &'static str,
    heads: usize,
    heads_k: usize,
    causal: bool,
    /// (left, right), -1 = unbounded.
    window: Option<(i32, i32)>,
    softcap: Option<f32>,
    /// A random f32 sink logit per head.
    sinks: bool,
}

const fn row(name: &'static str, heads: usize, heads_k: usize) -> Feature {
    Feature { name, heads, heads_k, causal: false, window: None, softcap: None, sinks: false }
}

/// The rows of `feature_anchors.py`, in its order: `dense_h32` is the equal-heads point beside
/// `gqa`, for the ratio per FLOP.
const FEATURES: [Feature; 8] = [
    row("dense", 16, 16),
    Feature { causal: true, ..row("causal", 16, 16) },
    row("gqa", 32, 8),
    row("dense_h32", 32, 32),
    Feature { window: Some((4096, 0)), ..row("window_4096_0", 16, 16) },
    Feature { window: Some((1024, 1024)), ..row("window_1024_1024", 16, 16) },
    Feature { softcap: Some(50.0), ..row("softcap_50", 16, 16) },
    Feature { sinks: true, ..row("sinks", 16, 16) },
];

/// (query, key) pairs of one head that the mask lets through, with FlashAttention's bottom-right
/// alignment: query `i` sees key `j` iff `(left < 0 || j >= i + sk - sq - left) &&
/// (right < 0 || j <= i + sk - sq + right)`; causal means `right = 0`.
fn visible_pairs(seqlen_q: usize, seqlen_k: usize, window: Option<(i32, i32)>, causal: bool) -> u64 {
    let (left, right) = window.map_or((-1, -1), |(l, r)| (l as i64, r as i64));
    let right = if causal { 0 } else { right };
    let (sq, sk) = (seqlen_q as i64, seqlen_k as i64);
    (0..sq)
        .map(|i| {
            let diag = i + sk - sq;
            let lo = if left < 0 { 0 } else { (diag - left).max(0) };
            let hi = if right < 0 { sk - 1 } else { (diag + right).min(sk - 1) };
            (hi - lo + 1).max(0) as u64
        })
        .sum()
}

/// `--features`: our library on the feature rows, timed as the grid is; a row our library
/// rejects is written with its error.
fn features(o: &Options, card: &str, out: &mut Option<std::fs::File>) {
    const D: usize = 128;
    let stream = Stream::new(StreamFlags::NON_BLOCKING, None).unwrap();
    let attention = attention_for(o);
    let max_heads = FEATURES.iter().map(|f| f.heads).max().unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let upload = |rng: &mut StdRng| {
        let (_, host) = random_inputs::<bf16>(rng, TOKENS * max_heads * D);
        DeviceBuffer::from_slice(bytemuck::cast_slice::<bf16, u16>(&host)).unwrap()
    };
    let (q, k, v, d_o) = (upload(&mut rng), upload(&mut rng), upload(&mut rng), upload(&mut rng));
    let sink_logits: Vec<f32> = random_inputs::<bf16>(&mut rng, max_heads).0.iter().map(|&x| x as f32).collect();
    let mut flush = DeviceBuffer::<u32>::zeroed(FLUSH_WORDS).unwrap();
    let timing = if o.iters == 0 { "do_bench".to_string() } else { format!("{} calls", o.iters) };
    println!(
        "{:<17} {:>6} {:>3} {:>5} | {:>9} {:>8} | {:>9} {:>8}",
        "feature", "seqlen", "b", "h/hk", "fwd ms", "TFLOP/s", "bwd ms", "TFLOP/s"
    );
    for &s in o.seqlens.as_deref().unwrap_or(&[4096, 16384]) {
        for name in &o.features {
            let f = FEATURES.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("unknown feature {name}"));
            let (b, h, hk) = (TOKENS / s, f.heads, f.heads_k);
            let (q_layout, kv_layout) = (Layout::contiguous([b, s, h, D]), Layout::contiguous([b, s, hk, D]));
            let view = |buf, layout| TensorRef::<bf16>::from_slice(buf, 0, layout).unwrap();
            let (qv, kv, vv, dov) =
                (view(&q, q_layout), view(&k, kv_layout), view(&v, kv_layout), view(&d_o, q_layout));
            let sinks = f.sinks.then(|| DeviceBuffer::from_slice(&sink_logits[..h]).unwrap());
            let mut d_sinks = f.sinks.then(|| DeviceBuffer::<f32>::zeroed(h).unwrap());
            let params = AttentionParams {
                causal: f.causal,
                window: f.window,
                softcap: f.softcap,
                sinks: sinks.as_deref(),
                ..Default::default()
            };
            let mut o_buf = DeviceBuffer::<u16>::zeroed(b * s * h * D).unwrap();
            let mut lse = DeviceBuffer::<f32>::zeroed(b * h * s).unwrap();
            let mut dq = DeviceBuffer::<u16>::zeroed(b * s * h * D).unwrap();
            let (mut dk, mut dv) = (
                DeviceBuffer::<u16>::zeroed(b * s * hk * D).unwrap(),
                DeviceBuffer::<u16>::zeroed(b * s * hk * D).unwrap(),
            );
            // One closure for both directions, as they share O and LSE: `run(false)` is the
            // forward, `run(true)` the backward.
            let mut run = |backward: bool| {
                if !backward {
                    let o_out = TensorMut::<bf16>::from_slice(&mut o_buf, 0, q_layout).unwrap();
                    return attention.forward_into(&stream, qv, kv, vv, o_out, &mut lse, &params);
                }
                let o_in = TensorRef::<bf16>::from_slice(&o_buf, 0, q_layout).unwrap();
                let dq_out = TensorMut::<bf16>::from_slice(&mut dq, 0, q_layout).unwrap();
                let dk_out = TensorMut::<bf16>::from_slice(&mut dk, 0, kv_layout).unwrap();
                let dv_out = TensorMut::<bf16>::from_slice(&mut dv, 0, kv_layout).unwrap();
                let ds = d_sinks.as_deref_mut();
                attention.backward_into(&stream, dov, qv, kv, vv, o_in, &lse, dq_out, dk_out, dv_out, ds, &params)
            };
            let pairs = visible_pairs(s, s, f.window, f.causal);
            let mut json = format!(
                "{{\"feature\":\"{name}\",\"seqlen\":{s},\"batch\":{b},\"heads\":{h},\"heads_k\":{hk},\"head_dim\":{D},\"dtype\":\"bf16\",\"visible_pairs\":{pairs}"
            );
            // One untimed call each way: a feature our library rejects is reported, not timed.
            let check = run(false).and_then(|()| run(true)).map_err(|e| e.to_string());
            match check.and_then(|()| stream.synchronize().map_err(|e| format!("{e:?}"))) {
                Err(e) => {
                    println!("{name:<17} {s:>6} {b:>3} {h:>2}/{hk:<2} | error: {e}");
                    json += &format!(",\"error\":{e:?}");
                }
                Ok(()) => {
                    // The forward is timed, then the backward (reusing the last O and LSE).
                    let fms = time_calls(&stream, &mut flush, o.iters, || run(false).unwrap());
                    let bms = time_calls(&stream, &mut flush, o.iters, || run(true).unwrap());
                    let flops = 4.0 * (D * b * h) as f64 * pairs as f64;
                    let (ft, bt) = (flops / fms as f64 / 1e9, 2.5 * flops / bms as f64 / 1e9);
                    println!("{name:<17} {s:>6} {b:>3} {h:>2}/{hk:<2} | {fms:>9.3} {ft:>8.1} | {bms:>9.3} {bt:>8.1}");
                    json += &format!(
                        ",\"fwd_ms\":{fms:.4},\"bwd_ms\":{bms:.4},\"fwd_tflops\":{ft:.2},\"bwd_tflops\":{bt:.2}"
                    );
                }
            }
            if let Some(file) = out.as_mut() {
                writeln!(file, "{json},\"card\":\"{card}\",\"timing\":\"{timing}\"}}").unwrap();
            }
        }
    }
}

/// The decode grid of issue 10: (batch, cache length).
const DECODE: [(usize, usize); 8] =
    [(1, 1024), (1, 4096), (1, 16384), (1, 32768), (8, 4096), (8, 32768), (64, 4096), (64, 32768)];

/// The packed prefill's 64 lengths from 64 to 8192: a 64-bit LCG from seed 10, the same
/// sequence `serving_anchors.py` draws.
fn prefill_lengths() -> Vec<usize> {
    let mut x: u64 = 10;
    (0..64)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            64 + ((x >> 33) % (8192 - 64 + 1)) as usize
        })
        .collect()
}

/// `--serving`: decode against a KV cache and a packed causal prefill (see the module docs).
fn serving(o: &Options, card: &str, out: &mut Option<std::fs::File>) {
    const D: usize = 128;
    const H: usize = 32;
    const HK: usize = 8;
    let stream = Stream::new(StreamFlags::NON_BLOCKING, None).unwrap();
    let attention = attention_for(o);
    let mut rng = StdRng::seed_from_u64(10);
    let mut flush = DeviceBuffer::<u32>::zeroed(FLUSH_WORDS).unwrap();
    let timing = if o.iters == 0 { "do_bench".to_string() } else { format!("{} calls", o.iters) };
    let upload = |rng: &mut StdRng, n: usize| {
        // Random values are costly to draw on the host for 4 GB caches: one 16M-element block,
        // repeated.
        let block = 1 << 24;
        let (_, host) = random_inputs::<bf16>(rng, n.min(block));
        let buf = DeviceBuffer::<u16>::zeroed(n).unwrap();
        let bits: &[u16] = bytemuck::cast_slice(&host);
        let mut at = 0;
        while at < n {
            let len = (n - at).min(bits.len());
            let mut part = buf.index(at..at + len);
            cust::memory::CopyDestination::copy_from(&mut part, &bits[..len]).unwrap();
            at += len;
        }
        buf
    };
    let emit = |out: &mut Option<std::fs::File>, json: String| {
        if let Some(file) = out.as_mut() {
            writeln!(file, "{json},\"card\":\"{card}\",\"timing\":\"{timing}\"}}").unwrap();
        }
    };
    if o.serving.iter().any(|s| s == "overhead") {
        // The per-call cost of the Rust API at a shape too small to fill the GPU (batch 1,
        // seqlen 128, 16 heads, head_dim 128, bf16): 1000 back-to-back forwards, host time per
        // call and GPU time per call (events around all of them), for the Python package's
        // overhead to be held against (python/scripts/bench_py.py measures the same shape).
        let shape = [1, 128, 16, 128];
        let n = shape.iter().product::<usize>();
        let (q, k, v) = (upload(&mut rng, n), upload(&mut rng, n), upload(&mut rng, n));
        let mut o_buf = DeviceBuffer::<u16>::zeroed(n).unwrap();
        let mut lse = DeviceBuffer::<f32>::zeroed(16 * 128).unwrap();
        let layout = Layout::contiguous(shape);
        let params = AttentionParams::default();
        let mut call = || {
            let (qv, kv, vv) = (
                TensorRef::<bf16>::from_slice(&q, 0, layout).unwrap(),
                TensorRef::<bf16>::from_slice(&k, 0, layout).unwrap(),
                TensorRef::<bf16>::from_slice(&v, 0, layout).unwrap(),
            );
            let ov = TensorMut::<bf16>::from_slice(&mut o_buf, 0, layout).unwrap();
            attention.forward_into(&stream, qv, kv, vv, ov, &mut lse, &params).unwrap();
        };
        for _ in 0..100 {
            call();
        }
        stream.synchronize().unwrap();
        let calls = 1000;
        let (start, end) = (Event::new(EventFlags::DEFAULT).unwrap(), Event::new(EventFlags::DEFAULT).unwrap());
        let t0 = std::time::Instant::now();
        start.record(&stream).unwrap();
        for _ in 0..calls {
            call();
        }
        let host_us = t0.elapsed().as_secs_f64() * 1e6 / calls as f64;
        end.record(&stream).unwrap();
        end.synchronize().unwrap();
        let wall_us = t0.elapsed().as_secs_f64() * 1e6 / calls as f64;
        let gpu_us = end.elapsed_time_f32(&start).unwrap() as f64 * 1e3 / calls as f64;
        println!(
            "overhead (1x128x16x128 bf16 forward, {calls} calls): host {host_us:.2} us/call, wall {wall_us:.2} us/call, events {gpu_us:.2} us/call"
        );
        emit(
            out,
            format!(
                "{{\"row\":\"overhead\",\"api\":\"rust\",\"batch\":1,\"seqlen\":128,\"heads\":16,\"head_dim\":128,\"calls\":{calls},\"host_us_per_call\":{host_us:.3},\"wall_us_per_call\":{wall_us:.3},\"event_us_per_call\":{gpu_us:.3}"
            ),
        );
    }
    if o.serving.iter().any(|s| s == "continuous") {
        for page_size in [16, 256] {
            continuous(&attention, &stream, page_size, &timing, card, out);
        }
    }
    if o.serving.iter().any(|s| s == "decode") {
        println!("{:>5} {:>6} {:>3} {:>4} | {:>9} {:>8}", "batch", "cache", "sq", "page", "us", "GB/s");
        let points = if o.decode_points.is_empty() { DECODE.to_vec() } else { o.decode_points.clone() };
        for &(b, cache_len) in &points {
            let kv_len = b * cache_len * HK * D;
            let (k, v) = (upload(&mut rng, kv_len), upload(&mut rng, kv_len));
            let lens = DeviceBuffer::from_slice(&vec![cache_len as i32; b]).unwrap();
            // Paged: the same cache as pages in a shuffled order (seqlen_q 1).
            let mut order: Vec<i32> = (0..(b * cache_len / 16) as i32).collect();
            rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
            for (sq, page_size) in [(1usize, 0usize), (4, 0), (1, 16), (1, 256)] {
                let q = upload(&mut rng, b * sq * H * D);
                let mut o_buf = DeviceBuffer::<u16>::zeroed(b * sq * H * D).unwrap();
                let mut lse = DeviceBuffer::<f32>::zeroed(b * H * sq).unwrap();
                let kl = match page_size {
                    0 => Layout::contiguous([b, cache_len, HK, D]),
                    n => Layout::contiguous([b * cache_len / n, n, HK, D]),
                };
                let ql = Layout::contiguous([b, sq, H, D]);
                let qv = TensorRef::<bf16>::from_slice(&q, 0, ql).unwrap();
                let (kv, vv) = (
                    TensorRef::<bf16>::from_slice(&k, 0, kl).unwrap(),
                    TensorRef::<bf16>::from_slice(&v, 0, kl).unwrap(),
                );
                // Pages of `page_size` rows, shuffled: a permutation of the page ids.
                let table: Vec<i32> = match page_size {
                    0 => vec![0],
                    n => {
                        let pages = (b * cache_len / n) as i32;
                        order.iter().copied().filter(|&x| x < pages).collect()
                    }
                };
                let table_d = DeviceBuffer::from_slice(&table).unwrap();
                let cache = flash_attn::KvCache {
                    block_table: (page_size > 0).then_some(&*table_d),
                    ..flash_attn::KvCache::new(&lens)
                };
                let params = AttentionParams::default();
                let mut run = || {
                    let o_out = TensorMut::<bf16>::from_slice(&mut o_buf, 0, ql).unwrap();
                    attention.forward_with_kvcache_into(&stream, qv, kv, vv, o_out, &mut lse, &cache, &params)
                };
                run().unwrap();
                stream.synchronize().unwrap();
                let ms = time_calls(&stream, &mut flush, o.iters, || run().unwrap());
                let bytes = 2.0 * kv_len as f64 * 2.0;
                let gbps = bytes / (ms as f64 * 1e-3) / 1e9;
                println!("{b:>5} {cache_len:>6} {sq:>3} {page_size:>4} | {:>9.1} {gbps:>8.0}", ms * 1e3);
                emit(
                    out,
                    format!(
                        "{{\"row\":\"decode\",\"batch\":{b},\"cache_len\":{cache_len},\"seqlen_q\":{sq},\"page_size\":{page_size},\"heads\":{H},\"heads_k\":{HK},\"head_dim\":{D},\"ours_us\":{:.2},\"ours_gbps\":{gbps:.1}",
                        ms * 1e3
                    ),
                );
            }
        }
    }
    // Varlen rows at head_dim 128, or at each `--head-dims` entry when that flag is given.
    for &d in o.head_dims.as_deref().unwrap_or(&[D]).iter().filter(|_| o.serving.iter().any(|s| s == "varlen")) {
        let lens = prefill_lengths();
        let total: usize = lens.iter().sum();
        let mut cu = vec![0i32];
        for &n in &lens {
            cu.push(cu.last().unwrap() + n as i32);
        }
        let max = *lens.iter().max().unwrap();
        let mean = total / lens.len();
        let pairs: u64 = lens.iter().map(|&n| (n * (n + 1) / 2) as u64).sum();
        let cu_d = DeviceBuffer::from_slice(&cu).unwrap();
        let (q, k, v, d_o) = (
            upload(&mut rng, total * H * d),
            upload(&mut rng, total * HK * d),
            upload(&mut rng, total * HK * d),
            upload(&mut rng, total * H * d),
        );
        let (ql, kl) = (Layout::contiguous([1, total, H, d]), Layout::contiguous([1, total, HK, d]));
        let view = |buf, layout| TensorRef::<bf16>::from_slice(buf, 0, layout).unwrap();
        let (qv, kv, vv, dov) = (view(&q, ql), view(&k, kl), view(&v, kl), view(&d_o, ql));
        let varlen = flash_attn::Varlen {
            cu_seqlens_q: &cu_d,
            cu_seqlens_k: &cu_d,
            max_seqlen_q: max,
            max_seqlen_k: max,
            seqused_k: None,
            check_offsets: true,
        };
        let params = AttentionParams { causal: true, ..Default::default() };
        let mut o_buf = DeviceBuffer::<u16>::zeroed(total * H * d).unwrap();
        let mut lse = DeviceBuffer::<f32>::zeroed(total * H).unwrap();
        let (mut dq, mut dk, mut dv) = (
            DeviceBuffer::<u16>::zeroed(total * H * d).unwrap(),
            DeviceBuffer::<u16>::zeroed(total * HK * d).unwrap(),
            DeviceBuffer::<u16>::zeroed(total * HK * d).unwrap(),
        );
        let mut run = |backward: bool| {
            if !backward {
                let o_out = TensorMut::<bf16>::from_slice(&mut o_buf, 0, ql).unwrap();
                return attention.forward_varlen_into(&stream, qv, kv, vv, o_out, &mut lse, &varlen, &params);
            }
            let o_in = TensorRef::<bf16>::from_slice(&o_buf, 0, ql).unwrap();
            let outs = [
                TensorMut::<bf16>::from_slice(&mut dq, 0, ql).unwrap(),
                TensorMut::<bf16>::from_slice(&mut dk, 0, kl).unwrap(),
                TensorMut::<bf16>::from_slice(&mut dv, 0, kl).unwrap(),
            ];
            attention.backward_varlen_into(&stream, [dov, qv, kv, vv, o_in], &lse, outs, None, &varlen, &params)
        };
        run(false).unwrap();
        run(true).unwrap();
        stream.synchronize().unwrap();
        let fms = time_calls(&stream, &mut flush, o.iters, || run(false).unwrap());
        let bms = time_calls(&stream, &mut flush, o.iters, || run(true).unwrap());
        let flops = 4.0 * (d * H) as f64 * pairs as f64;
        let (ft, bt) = (flops / fms as f64 / 1e9, 2.5 * flops / bms as f64 / 1e9);
        println!(
            "varlen prefill: {} sequences, {total} tokens (mean {mean}, max {max}): fwd {fms:.3} ms {ft:.1} TFLOP/s, bwd {bms:.3} ms {bt:.1} TFLOP/s",
            lens.len()
        );
        emit(
            out,
            format!(
                "{{\"row\":\"varlen\",\"sequences\":{},\"total_tokens\":{total},\"mean_len\":{mean},\"max_len\":{max},\"visible_pairs\":{pairs},\"heads\":{H},\"heads_k\":{HK},\"head_dim\":{d},\"causal\":true,\"fwd_ms\":{fms:.4},\"bwd_ms\":{bms:.4},\"fwd_tflops\":{ft:.2},\"bwd_tflops\":{bt:.2}",
                lens.len()
            ),
        );
        // The dense batch at the mean length beside it: 64 sequences of `mean` tokens.
        let (b, s) = (lens.len(), mean);
        let (ql, kl) = (Layout::contiguous([b, s, H, d]), Layout::contiguous([b, s, HK, d]));
        let (qv, kv, vv, dov) = (view(&q, ql), view(&k, kl), view(&v, kl), view(&d_o, ql));
        let mut run = |backward: bool| {
            if !backward {
                let o_out = TensorMut::<bf16>::from_slice(&mut o_buf, 0, ql).unwrap();
                return attention.forward_into(&stream, qv, kv, vv, o_out, &mut lse, &params);
            }
            let o_in = TensorRef::<bf16>::from_slice(&o_buf, 0, ql).unwrap();
            let dq_out = TensorMut::<bf16>::from_slice(&mut dq, 0, ql).unwrap();
            let dk_out = TensorMut::<bf16>::from_slice(&mut dk, 0, kl).unwrap();
            let dv_out = TensorMut::<bf16>::from_slice(&mut dv, 0, kl).unwrap();
            attention.backward_into(&stream, dov, qv, kv, vv, o_in, &lse, dq_out, dk_out, dv_out, None, &params)
        };
        run(false).unwrap();
        run(true).unwrap();
        stream.synchronize().unwrap();
        let fms = time_calls(&stream, &mut flush, o.iters, || run(false).unwrap());
        let bms = time_calls(&stream, &mut flush, o.iters, || run(true).unwrap());
        let pairs = (b * s * (s + 1) / 2) as u64;
        let flops = 4.0 * (d * H) as f64 * pairs as f64;
        let (ft, bt) = (flops / fms as f64 / 1e9, 2.5 * flops / bms as f64 / 1e9);
        println!(
            "dense at the mean length: {b} x {s}: fwd {fms:.3} ms {ft:.1} TFLOP/s, bwd {bms:.3} ms {bt:.1} TFLOP/s"
        );
        emit(
            out,
            format!(
                "{{\"row\":\"dense_mean\",\"batch\":{b},\"seqlen\":{s},\"visible_pairs\":{pairs},\"heads\":{H},\"heads_k\":{HK},\"head_dim\":{d},\"causal\":true,\"fwd_ms\":{fms:.4},\"bwd_ms\":{bms:.4},\"fwd_tflops\":{ft:.2},\"bwd_tflops\":{bt:.2}"
            ),
        );
    }
}

/// The continuous-batching workload: `REQUESTS` requests with prompts of 128–4096 tokens and
/// outputs of 32–512 (a 64-bit LCG from seed 7, as `serving_replay.py`), one arriving every
/// other step, at most `SLOTS` running. Each step admits waiting requests while the prompt
/// budget lasts, prefills them packed (causal `forward_varlen`) and writes their K/V into their
/// pages (`append_kv`), then decodes one token for every request admitted in an earlier step
/// (`forward_with_kvcache_append`: the new token's K/V appended, then attention through the
/// block table). Pages (of `page_size` keys, a shuffled pool) are taken at admission for prompt
/// and output and given back when the request finishes.
struct Workload {
    prompts: Vec<usize>,
    outputs: Vec<usize>,
}

const REQUESTS: usize = 256;
const SLOTS: usize = 64;
const MAX_PROMPT: usize = 4096;
const MAX_OUTPUT: usize = 512;
const PREFILL_BUDGET: usize = 8192;

fn workload() -> Workload {
    let mut x: u64 = 7;
    let mut draw = |lo: usize, hi: usize| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        lo + ((x >> 33) % (hi - lo + 1) as u64) as usize
    };
    let (mut prompts, mut outputs) = (Vec::new(), Vec::new());
    for _ in 0..REQUESTS {
        prompts.push(draw(128, MAX_PROMPT));
        outputs.push(draw(32, MAX_OUTPUT));
    }
    Workload { prompts, outputs }
}

/// One run of the workload through the library (see [`Workload`]); a JSON row per step
/// (`"row":"step"`: the prefilled requests and prompt lengths, the decoded requests and their
/// cache lengths before the step, the GPU time of the step) and a summary row.
fn continuous(
    attention: &FlashAttention,
    stream: &Stream,
    page_size: usize,
    timing: &str,
    card: &str,
    out: &mut Option<std::fs::File>,
) {
    const D: usize = 128;
    const H: usize = 32;
    const HK: usize = 8;
    let w = workload();
    let per_seq = (MAX_PROMPT + MAX_OUTPUT).div_ceil(page_size);
    let pool = SLOTS * per_seq;
    let mut rng = StdRng::seed_from_u64(11);
    let mut free: Vec<usize> = (0..pool).collect();
    rand::seq::SliceRandom::shuffle(&mut free[..], &mut rng);
    let random = |rng: &mut StdRng, n: usize| {
        let (_, host) = random_inputs::<bf16>(rng, n.min(1 << 22));
        let bits: Vec<u16> = bytemuck::cast_slice(&host).to_vec();
        let data: Vec<u16> = bits.iter().copied().cycle().take(n).collect();
        DeviceBuffer::from_slice(&data).unwrap()
    };
    let cache_layout = Layout::contiguous([pool, page_size, HK, D]);
    let (mut k_cache, mut v_cache) = (
        DeviceBuffer::<u16>::zeroed(cache_layout.element_count()).unwrap(),
        DeviceBuffer::<u16>::zeroed(cache_layout.element_count()).unwrap(),
    );
    // Prompt tokens (any content: the timing does not depend on it) and decode inputs.
    let (pq, pk, pv) = (
        random(&mut rng, PREFILL_BUDGET.max(MAX_PROMPT) * H * D),
        random(&mut rng, PREFILL_BUDGET.max(MAX_PROMPT) * HK * D),
        random(&mut rng, PREFILL_BUDGET.max(MAX_PROMPT) * HK * D),
    );
    let (dq, dk, dv) =
        (random(&mut rng, SLOTS * H * D), random(&mut rng, SLOTS * HK * D), random(&mut rng, SLOTS * HK * D));
    let mut o_buf = DeviceBuffer::<u16>::zeroed(PREFILL_BUDGET.max(MAX_PROMPT) * H * D).unwrap();
    let mut lse = DeviceBuffer::<f32>::zeroed(PREFILL_BUDGET.max(MAX_PROMPT) * H).unwrap();
    let zero = DeviceBuffer::from_slice(&[0i32]).unwrap();
    let causal = AttentionParams { causal: true, ..Default::default() };
    let event = || Event::new(EventFlags::DEFAULT).unwrap();
    let (start, end) = (event(), event());

    // Request state: pages, tokens in the cache, tokens generated.
    let mut pages: Vec<Vec<usize>> = vec![Vec::new(); REQUESTS];
    let mut length = vec![0usize; REQUESTS];
    let mut generated = vec![0usize; REQUESTS];
    let (mut waiting, mut running): (std::collections::VecDeque<usize>, Vec<usize>) = Default::default();
    let (mut arrived, mut step) = (0usize, 0usize);
    let (mut step_us, mut prefill_tokens, mut decode_tokens) = (Vec::new(), 0usize, 0usize);
    while arrived < REQUESTS || !waiting.is_empty() || !running.is_empty() {
        // One arrival every other step.
        if step % 2 == 0 && arrived < REQUESTS {
            waiting.push_back(arrived);
            arrived += 1;
        }
        let decoding = running.clone();
        let mut admitted = Vec::new();
        let mut budget = PREFILL_BUDGET;
        while let Some(&r) = waiting.front() {
            if running.len() + admitted.len() >= SLOTS || (w.prompts[r] > budget && !admitted.is_empty()) {
                break;
            }
            waiting.pop_front();
            budget = budget.saturating_sub(w.prompts[r]);
            let need = (w.prompts[r] + w.outputs[r]).div_ceil(page_size);
            pages[r] = free.split_off(free.len() - need);
            admitted.push(r);
        }
        // Host-side preparation (before the step's events): offsets, tables, lengths.
        let table_row = |r: usize| {
            let mut row: Vec<i32> = pages[r].iter().map(|&p| p as i32).collect();
            row.resize(per_seq, 0);
            row
        };
        let prompt_lens: Vec<usize> = admitted.iter().map(|&r| w.prompts[r]).collect();
        let total: usize = prompt_lens.iter().sum();
        let mut cu = vec![0i32];
        for &n in &prompt_lens {
            cu.push(cu.last().unwrap() + n as i32);
        }
        let cu_d = DeviceBuffer::from_slice(&cu).unwrap();
        let tables: Vec<DeviceBuffer<i32>> =
            admitted.iter().map(|&r| DeviceBuffer::from_slice(&table_row(r)).unwrap()).collect();
        let decode_lens: Vec<usize> = decoding.iter().map(|&r| length[r]).collect();
        let lens_d =
            DeviceBuffer::from_slice(&decode_lens.iter().map(|&n| n as i32).collect::<Vec<_>>().max_len_one()).unwrap();
        let table_d =
            DeviceBuffer::from_slice(&decoding.iter().flat_map(|&r| table_row(r)).collect::<Vec<_>>().max_len_one())
                .unwrap();

        start.record(stream).unwrap();
        if !admitted.is_empty() {
            let max = *prompt_lens.iter().max().unwrap();
            let (ql, kl) = (Layout::contiguous([1, total, H, D]), Layout::contiguous([1, total, HK, D]));
            let view = |buf, layout| TensorRef::<bf16>::from_slice(buf, 0, layout).unwrap();
            let varlen = flash_attn::Varlen {
                cu_seqlens_q: &cu_d,
                cu_seqlens_k: &cu_d,
                max_seqlen_q: max,
                max_seqlen_k: max,
                seqused_k: None,
                check_offsets: false,
            };
            let o_out = TensorMut::<bf16>::from_slice(&mut o_buf, 0, ql).unwrap();
            attention
                .forward_varlen_into(
                    stream,
                    view(&pq, ql),
                    view(&pk, kl),
                    view(&pv, kl),
                    o_out,
                    &mut lse,
                    &varlen,
                    &causal,
                )
                .unwrap();
            // Each prompt's K/V into its pages.
            let mut row0 = 0;
            for (i, &n) in prompt_lens.iter().enumerate() {
                let nl = Layout::contiguous([1, n, HK, D]);
                let new = flash_attn::Append {
                    k: TensorRef::<bf16>::from_slice(&pk, row0 * HK * D, nl).unwrap(),
                    v: TensorRef::<bf16>::from_slice(&pv, row0 * HK * D, nl).unwrap(),
                    rotary: None,
                };
                let cache = flash_attn::KvCache { block_table: Some(&tables[i]), ..flash_attn::KvCache::new(&zero) };
                let kc = TensorMut::<bf16>::from_slice(&mut k_cache, 0, cache_layout).unwrap();
                let vc = TensorMut::<bf16>::from_slice(&mut v_cache, 0, cache_layout).unwrap();
                attention.append_kv(stream, kc, vc, &new, &cache).unwrap();
                row0 += n;
            }
        }
        if !decoding.is_empty() {
            let b = decoding.len();
            let (ql, nl) = (Layout::contiguous([b, 1, H, D]), Layout::contiguous([b, 1, HK, D]));
            let new = flash_attn::Append {
                k: TensorRef::<bf16>::from_slice(&dk, 0, nl).unwrap(),
                v: TensorRef::<bf16>::from_slice(&dv, 0, nl).unwrap(),
                rotary: None,
            };
            let cache = flash_attn::KvCache { block_table: Some(&table_d), ..flash_attn::KvCache::new(&lens_d) };
            let kc = TensorMut::<bf16>::from_slice(&mut k_cache, 0, cache_layout).unwrap();
            let vc = TensorMut::<bf16>::from_slice(&mut v_cache, 0, cache_layout).unwrap();
            let o_out = TensorMut::<bf16>::from_slice(&mut o_buf, 0, ql).unwrap();
            let q = TensorRef::<bf16>::from_slice(&dq, 0, ql).unwrap();
            attention
                .forward_with_kvcache_append_into(
                    stream,
                    q,
                    kc,
                    vc,
                    &new,
                    o_out,
                    &mut lse,
                    &cache,
                    &AttentionParams::default(),
                )
                .unwrap();
        }
        end.record(stream).unwrap();
        end.synchronize().unwrap();
        let us = end.elapsed_time_f32(&start).unwrap() as f64 * 1e3;
        if !admitted.is_empty() || !decoding.is_empty() {
            step_us.push(us);
        }
        prefill_tokens += total;
        decode_tokens += decoding.len();
        if let Some(file) = out.as_mut() {
            let list = |x: &[usize]| x.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
            writeln!(
                file,
                "{{\"row\":\"step\",\"page_size\":{page_size},\"step\":{step},\"prefill_ids\":[{}],\"prefill\":[{}],\"decode_ids\":[{}],\"decode\":[{}],\"ours_us\":{us:.2},\"card\":\"{card}\"}}",
                list(&admitted),
                list(&prompt_lens),
                list(&decoding),
                list(&decode_lens)
            )
            .unwrap();
        }
        // After the step: prompts are in the cache (their first token came with the prefill),
        // decoded requests hold one more key; finished requests free their pages.
        for &r in &admitted {
            length[r] = w.prompts[r];
            generated[r] = 1;
        }
        running.extend(admitted);
        for &r in &decoding {
            length[r] += 1;
            generated[r] += 1;
        }
        running.retain(|&r| {
            let done = generated[r] >= w.outputs[r];
            if done {
                free.append(&mut pages[r]);
            }
            !done
        });
        step += 1;
    }
    let total_ms = step_us.iter().sum::<f64>() / 1e3;
    let tokens = prefill_tokens + decode_tokens;
    let mut sorted = step_us.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let (p50, p99) = (pct(0.5), pct(0.99));
    let rate = tokens as f64 / (total_ms * 1e-3);
    println!(
        "continuous batching, pages of {page_size}: {REQUESTS} requests, {} steps, {prefill_tokens} prefill + {decode_tokens} decode tokens in {total_ms:.1} ms: {rate:.0} tokens/s, step P50 {p50:.1} us, P99 {p99:.1} us",
        step_us.len()
    );
    if let Some(file) = out.as_mut() {
        writeln!(
            file,
            "{{\"row\":\"continuous\",\"page_size\":{page_size},\"requests\":{REQUESTS},\"slots\":{SLOTS},\"steps\":{},\"prefill_tokens\":{prefill_tokens},\"decode_tokens\":{decode_tokens},\"attention_ms\":{total_ms:.3},\"tokens_per_s\":{rate:.0},\"p50_us\":{p50:.2},\"p99_us\":{p99:.2},\"heads\":{H},\"heads_k\":{HK},\"head_dim\":{D},\"card\":\"{card}\",\"timing\":\"{timing}; events around each step\"}}",
            step_us.len()
        )
        .unwrap();
    }
}

/// A device array needs at least one entry: an empty list becomes `[0]` (unused then).
trait MaxLenOne {
    fn max_len_one(self) -> Self;
}

impl MaxLenOne for Vec<i32> {
    fn max_len_one(mut self) -> Self {
        if self.is_empty() {
            self.push(0);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::visible_pairs;

    #[test]
    fn visible_pairs_match_a_brute_force_count() {
        let windows = [None, Some((0, 0)), Some((3, -1)), Some((-1, 2)), Some((2, 5)), Some((40, 0)), Some((-1, -1))];
        for (sq, sk) in [(1, 1), (7, 7), (5, 13), (13, 5), (16, 16), (1, 9), (9, 1)] {
            for window in windows {
                for causal in [false, true] {
                    let (left, right) = window.unwrap_or((-1, -1));
                    let right = if causal { 0 } else { right };
                    let (sq_, sk_) = (sq as i64, sk as i64);
                    let mut want = 0;
                    for i in 0..sq_ {
                        for j in 0..sk_ {
                            let diag = i + sk_ - sq_;
                            want += ((left < 0 || j >= diag - left as i64) && (right < 0 || j <= diag + right as i64))
                                as u64;
                        }
                    }
                    assert_eq!(visible_pairs(sq, sk, window, causal), want, "{sq}x{sk} {window:?} causal {causal}");
                }
            }
        }
        assert_eq!(visible_pairs(4096, 4096, None, true), 4096 * 4097 / 2);
        assert_eq!(visible_pairs(4096, 4096, Some((4096, 0)), false), 4096 * 4097 / 2);
    }
}
