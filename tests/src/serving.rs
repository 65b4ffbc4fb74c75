//! Serving-shaped cases: packed variable-length batches (forward and backward) and KV-cache
//! forwards (with cache lengths, a shuffled cache batch index and split-KV), checked sequence by
//! sequence against the f64 reference under the same tolerance rule as the dense cases: each
//! sequence is a dense problem of batch 1 (`Problem::first_batch` keeps dropout's counters the
//! packed batch's), and the comparisons run over the whole packed output.

use crate::{
    Alibi, Case, CaseOutcome, Comparison, F32_UNIT_ROUNDOFF, GpuResult, LSE_ROUNDOFF, case_strategy, compare_with,
    cuda, lib, random_inputs, seqlen, unit_roundoff,
};
use cust::memory::{CopyDestination, DeviceBuffer};
use cust::stream::Stream;
use flash_attn::reference::{self, Problem};
use flash_attn::{
    Append, AttentionParams, Element, FlashAttention, KvCache, Layout, Rotary, TensorMut, TensorRef, Varlen,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Where the keys come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Packed K/V with `cu_seqlens_k`; `seqused_k` trims each sequence's keys when set.
    Varlen { seqused_k: Option<Vec<usize>> },
    /// A cache of `cache_len` rows per entry and `cache_batch` entries; sequence b reads the
    /// first `seqlens_k[b]` rows of entry `batch_idx[b]` (identity when None). With `pages`, a
    /// paged cache instead: `pages.0` rows a page, sequence b's pages `pages.1[b]` (shuffled,
    /// from a pool with unused pages), `cache_batch` pages in all.
    KvCache {
        cache_len: usize,
        cache_batch: usize,
        batch_idx: Option<Vec<usize>>,
        num_splits: usize,
        pages: Option<(usize, Vec<Vec<usize>>)>,
        /// New keys and values appended before the attention (`seqlens_k` are the lengths
        /// before it).
        append: Option<AppendCase>,
    },
}

/// A KV-cache append: `seqlen_new` tokens a sequence, with rotary `(rotary_dim, interleaved)`.
/// `separate`: by `append_kv` and then `forward_with_kvcache` at the new lengths (the queries
/// are then not rotated), instead of `forward_with_kvcache_append`.
#[derive(Clone, Debug)]
pub struct AppendCase {
    pub seqlen_new: usize,
    pub rotary: Option<(usize, bool)>,
    pub separate: bool,
}

/// One serving case: the features of `base` (its batch is the number of sequences; seqlens
/// there are unused) with per-sequence lengths.
#[derive(Clone, Debug)]
pub struct ServingCase {
    pub base: Case,
    pub seqlens_q: Vec<usize>,
    pub seqlens_k: Vec<usize>,
    pub source: Source,
}

/// Lengths of a packed batch: empty sequences, 1, primes, tile edges.
fn packed_len() -> impl Strategy<Value = usize> {
    prop_oneof![1 => Just(0usize), 6 => seqlen()]
}

/// Packed batches: 1–5 sequences, every feature of `case_strategy`, sometimes `seqused_k`.
pub fn varlen_strategy() -> impl Strategy<Value = ServingCase> {
    (case_strategy(), 1usize..=5, any::<u64>(), any::<bool>()).prop_flat_map(|(base, batch, seed, used)| {
        (prop::collection::vec(packed_len(), batch), prop::collection::vec(packed_len(), batch)).prop_map(
            move |(mut seqlens_q, mut seqlens_k)| {
                // At least one query and one key in the batch (a tensor has rows).
                if seqlens_q.iter().all(|&n| n == 0) {
                    seqlens_q[0] = 1;
                }
                if seqlens_k.iter().all(|&n| n == 0) {
                    seqlens_k[0] = 1;
                }
                let mut rng = StdRng::seed_from_u64(seed);
                let seqused_k =
                    used.then(|| seqlens_k.iter().map(|&n| rand::Rng::gen_range(&mut rng, 0..=n)).collect());
                ServingCase { base: Case { batch, ..base }, seqlens_q, seqlens_k, source: Source::Varlen { seqused_k } }
            },
        )
    })
}

/// KV-cache forwards: 1–4 sequences of 1–8 queries (decode, speculative decode) or longer,
/// cache lengths from 0 to the cache size, a shuffled cache batch index in half the cases, and
/// split-KV automatic, off, or forced to 2–16 splits. With `append`, every case appends new
/// keys and values first (as many as the queries in most cases, lengths ending at page edges
/// often), with rotary embedding of either layout over 16 to head_dim elements in most.
pub fn kvcache_strategy(append: bool) -> impl Strategy<Value = ServingCase> {
    let shape = (
        case_strategy(),
        1usize..=4,
        prop_oneof![3 => prop::sample::select(vec![1usize, 1, 2, 4, 8]), 1 => seqlen()],
        prop_oneof![seqlen(), prop::sample::select(vec![256usize, 512, 1000, 2048])],
        0usize..=2,
        any::<bool>(),
        prop::sample::select(vec![0usize, 0, 1, 2, 3, 7, 16]),
        any::<u64>(),
        prop::sample::select(vec![0usize, 0, 16, 32, 48, 256]),
    );
    shape.prop_map(move |(base, batch, seqlen_q, cache_len, extra, shuffle, num_splits, seed, page_size)| {
        let mut rng = StdRng::seed_from_u64(seed);
        // Paged caches serve decode shapes: a K/V group's heads times the tokens fit 16 rows.
        let seqlen_q = if page_size > 0 { seqlen_q.min(16 / (base.heads / base.heads_k)).max(1) } else { seqlen_q };
        let cache_batch = batch + extra;
        let batch_idx = (shuffle || extra > 0).then(|| {
            let mut entries: Vec<usize> = (0..cache_batch).collect();
            entries.shuffle(&mut rng);
            entries.truncate(batch);
            entries
        });
        let append = append.then(|| {
            let seqlen_new = match rand::Rng::gen_range(&mut rng, 0..4) {
                0 => rand::Rng::gen_range(&mut rng, 1..=8),
                _ => seqlen_q,
            }
            .min(cache_len);
            let rotary = (rand::Rng::gen_range(&mut rng, 0..4) > 0).then(|| {
                let pairs = rand::Rng::gen_range(&mut rng, 1..=base.head_dim / 16);
                (16 * pairs, rand::Rng::r#gen(&mut rng))
            });
            AppendCase { seqlen_new, rotary, separate: rand::Rng::gen_range(&mut rng, 0..4) == 0 }
        });
        // Room for the appended tokens.
        let room = cache_len - append.as_ref().map_or(0, |a| a.seqlen_new);
        let seqlens_k = (0..batch)
            .map(|_| match rand::Rng::gen_range(&mut rng, 0..5) {
                0 => room,
                1 => rand::Rng::gen_range(&mut rng, 0..=room.min(8)),
                // Appends that start at a page edge (or a 16-key edge of a contiguous cache).
                2 => {
                    let edge = page_size.max(16);
                    rand::Rng::gen_range(&mut rng, 0..=room / edge) * edge
                }
                _ => rand::Rng::gen_range(&mut rng, 0..=room),
            })
            .collect();
        let (cache_batch, batch_idx, pages) = if page_size == 0 {
            (cache_batch, batch_idx, None)
        } else {
            // Every sequence gets cache_len's pages; the pool has some spare, shuffled.
            let per_seq = cache_len.div_ceil(page_size);
            let pool = batch * per_seq + extra + 1;
            let mut ids: Vec<usize> = (0..pool).collect();
            ids.shuffle(&mut rng);
            let tables = (0..batch).map(|b| ids[b * per_seq..(b + 1) * per_seq].to_vec()).collect();
            (pool, None, Some((page_size, tables)))
        };
        ServingCase {
            // Dropout is for training; the KV-cache forward rejects it (a typed error).
            base: Case { batch, dropout: None, deterministic: false, ..base },
            seqlens_q: vec![seqlen_q; batch],
            seqlens_k,
            source: Source::KvCache { cache_len, cache_batch, batch_idx, num_splits, pages, append },
        }
    })
}

fn offsets(lens: &[usize]) -> Vec<usize> {
    let mut cu = vec![0];
    for &n in lens {
        cu.push(cu.last().unwrap() + n);
    }
    cu
}

impl ServingCase {
    fn keys_used(&self, b: usize) -> usize {
        match &self.source {
            Source::Varlen { seqused_k: Some(used) } => used[b],
            Source::KvCache { append: Some(a), .. } => self.seqlens_k[b] + a.seqlen_new,
            _ => self.seqlens_k[b],
        }
    }

    /// Sequence `b` as a dense problem of batch 1.
    fn problem(&self, b: usize) -> Problem {
        let full = Case { seqlen_q: 1, seqlen_k: 1, ..self.base }.problem();
        let heads = full.heads;
        let alibi_slopes = match self.base.alibi {
            Alibi::PerBatchHead => full.alibi_slopes[b * heads..(b + 1) * heads].to_vec(),
            _ => full.alibi_slopes.clone(),
        };
        Problem {
            batch: 1,
            seqlen_q: self.seqlens_q[b],
            seqlen_k: self.keys_used(b),
            alibi_slopes,
            first_batch: b,
            ..full
        }
    }
}

/// Rotary tables of `rows` positions and `half` frequencies (the usual base-10000 angles),
/// rounded to the element type: (cos, sin) row-major.
fn rotary_tables<T: Element>(rows: usize, half: usize) -> (Vec<T>, Vec<T>) {
    let angle = |p: usize, i: usize| p as f64 * 10000f64.powf(-(i as f64) / half as f64);
    let table = |f: fn(f64) -> f64| {
        (0..rows).flat_map(|p| (0..half).map(move |i| T::from_f64(f(angle(p, i))))).collect::<Vec<T>>()
    };
    (table(f64::cos), table(f64::sin))
}

/// A row rotated by the reference ([`reference::rotary`]) and rounded to `T`, with per element
/// the most a kernel that rotates in f32 may round differently: where the f32 result (within
/// 2⁻²¹ · (|x cos| + |y sin|) of the exact one: three f32 roundings of at most 2⁻²⁴ each,
/// doubled) can fall on the other side of a rounding boundary of `T`, the distance to the other
/// candidate; zero elsewhere. Rounding the same exact value, both land on the same `T` value
/// everywhere else.
fn rotate_rounded<T: Element>(
    x: &[f64],
    cos: &[f64],
    sin: &[f64],
    interleaved: bool,
) -> GpuResult<(Vec<f64>, Vec<f64>)> {
    let mut exact = x.to_vec();
    lib(reference::rotary(&mut exact, cos, sin, interleaved))?;
    let half = cos.len();
    let mut magnitude = vec![0.0; x.len()];
    for i in 0..half {
        let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
        magnitude[a] = (x[a] * cos[i]).abs() + (x[b] * sin[i]).abs();
        magnitude[b] = (x[a] * sin[i]).abs() + (x[b] * cos[i]).abs();
    }
    let round = |v: f64| T::from_f64(v).to_f64();
    let rounded: Vec<f64> = exact.iter().map(|&v| round(v)).collect();
    let slack = exact
        .iter()
        .zip(&magnitude)
        .zip(&rounded)
        .map(|((&v, &m), &r)| {
            let delta = m * 2f64.powi(-21);
            (round(v - delta) - r).abs().max((round(v + delta) - r).abs())
        })
        .collect();
    Ok((rounded, slack))
}

fn view<T: Element>(buf: &DeviceBuffer<u16>, layout: Layout) -> GpuResult<TensorRef<'_, T>> {
    lib(TensorRef::<T>::from_slice(buf, 0, layout))
}

/// Run one serving case on the GPU (forward, and for packed batches with `backward` the
/// backward) and compare with the reference, sequence by sequence.
pub fn run_serving_case<T: Element>(
    attention: &FlashAttention,
    stream: &Stream,
    case: &ServingCase,
    backward: bool,
) -> GpuResult<CaseOutcome> {
    let c = &case.base;
    let (heads, heads_k, d, batch) = (c.heads, c.heads_k, c.head_dim, c.batch);
    let mut rng = StdRng::seed_from_u64(c.seed);
    let total_q: usize = case.seqlens_q.iter().sum();
    let cu_q = offsets(&case.seqlens_q);
    // K/V rows: packed, or the whole cache.
    let (kv_rows, kv_shape) = match &case.source {
        Source::Varlen { .. } => {
            let total_k: usize = case.seqlens_k.iter().sum();
            (total_k, [1, total_k, heads_k, d])
        }
        Source::KvCache { pages: Some((page_size, _)), cache_batch, .. } => {
            (page_size * cache_batch, [*cache_batch, *page_size, heads_k, d])
        }
        Source::KvCache { cache_len, cache_batch, .. } => {
            (cache_len * cache_batch, [*cache_batch, *cache_len, heads_k, d])
        }
    };
    let packed = matches!(case.source, Source::Varlen { .. });
    let q_shape = if packed { [1, total_q, heads, d] } else { [batch, case.seqlens_q[0], heads, d] };
    let (q64, q) = random_inputs::<T>(&mut rng, total_q * heads * d);
    let (mut k64, k) = random_inputs::<T>(&mut rng, kv_rows.max(1) * heads_k * d);
    let (mut v64, v) = random_inputs::<T>(&mut rng, kv_rows.max(1) * heads_k * d);
    let (do64, d_o) = random_inputs::<T>(&mut rng, total_q * heads * d);
    // Zero-row tensors are not tensors: a batch of empty sequences keeps one padding row.
    let rows_or_one = |s: [usize; 4]| if s[1] == 0 { [s[0], 1, s[2], s[3]] } else { s };
    let (q_shape, kv_shape) = (rows_or_one(q_shape), rows_or_one(kv_shape));
    let (lq, lkv) = (Layout::contiguous(q_shape), Layout::contiguous(kv_shape));
    let pad = |mut x: Vec<T>, layout: &Layout| {
        x.resize(layout.element_count(), T::from_f64(0.0));
        x
    };
    let bits = |x: &[T]| -> Vec<u16> { x.iter().map(|&e| bytemuck::cast::<T, u16>(e)).collect() };
    let upload = |x: &[T], layout: &Layout| cuda(DeviceBuffer::from_slice(&bits(&pad(x.to_vec(), layout))));
    let (qd, mut kd, mut vd, dod) = (upload(&q, &lq)?, upload(&k, &lkv)?, upload(&v, &lkv)?, upload(&d_o, &lq)?);
    let nan = |layout: &Layout| {
        cuda(DeviceBuffer::from_slice(&vec![bytemuck::cast::<T, u16>(T::nan()); layout.element_count()]))
    };
    let mut od = nan(&lq)?;
    let stat_rows = heads * total_q.max(if packed { 1 } else { 0 });
    let mut lse = cuda(DeviceBuffer::from_slice(&vec![f32::NAN; stat_rows.max(1)]))?;
    let features = c.features();
    let device = |x: &[f32]| cuda((!x.is_empty()).then(|| DeviceBuffer::from_slice(x)).transpose());
    let (slopes, sinks) = (device(&features.slopes)?, device(&features.sinks)?);
    let params = AttentionParams {
        softmax_scale: c.scale,
        causal: c.causal,
        deterministic: c.deterministic,
        window: c.window,
        softcap: c.softcap,
        alibi_slopes: slopes.as_deref(),
        sinks: sinks.as_deref(),
        dropout: features.dropout,
    };
    let ints = |x: &[usize]| cuda(DeviceBuffer::from_slice(&x.iter().map(|&n| n as i32).collect::<Vec<_>>()));
    let cu_q_d = ints(&cu_q)?;
    let cu_k_d = ints(&offsets(&case.seqlens_k))?;
    let used_d = match &case.source {
        Source::Varlen { seqused_k: Some(u) } => Some(ints(u)?),
        _ => None,
    };
    let (lens_d, idx_d) = match &case.source {
        Source::KvCache { batch_idx, .. } => {
            (Some(ints(&case.seqlens_k)?), batch_idx.as_deref().map(ints).transpose()?)
        }
        _ => (None, None),
    };
    let table_d = match &case.source {
        Source::KvCache { pages: Some((_, tables)), .. } => Some(ints(&tables.concat())?),
        _ => None,
    };
    // Appends: new K/V (batch, seqlen_new, heads_k, d) and rotary tables for every position of
    // the cache (its capacity: the entry's rows, or the table's pages).
    let append = match &case.source {
        Source::KvCache { append: Some(a), cache_len, pages, .. } => Some((
            a.clone(),
            match pages {
                Some((page_size, tables)) => page_size * tables[0].len(),
                None => *cache_len,
            },
        )),
        _ => None,
    };
    let new_layout = append.as_ref().map(|(a, _)| Layout::contiguous([batch, a.seqlen_new, heads_k, d]));
    let new_len = new_layout.map_or(0, |l| l.element_count());
    let (k_new64, k_new) = random_inputs::<T>(&mut rng, new_len);
    let (v_new64, v_new) = random_inputs::<T>(&mut rng, new_len);
    // Rotated queries step with causal or window masks, and reach past the new keys' last
    // position when there are more of them (the host's rule for seqlen_ro).
    let q_step = usize::from(c.causal || c.window.is_some_and(|(l, r)| l >= 0 || r >= 0));
    let table_rows =
        |a: &AppendCase, capacity: usize| capacity + q_step * case.seqlens_q[0].saturating_sub(a.seqlen_new);
    let tables = append
        .as_ref()
        .and_then(|(a, capacity)| a.rotary.map(|(rd, _)| rotary_tables::<T>(table_rows(a, *capacity), rd / 2)));
    let table_layout = append
        .as_ref()
        .and_then(|(a, capacity)| a.rotary.map(|(rd, _)| Layout::contiguous([1, table_rows(a, *capacity), 1, rd / 2])));
    let (k_new_d, v_new_d) = match new_layout {
        Some(l) => (Some(upload(&k_new, &l)?), Some(upload(&v_new, &l)?)),
        None => (None, None),
    };
    let (cos_d, sin_d) = match (&tables, table_layout) {
        (Some((c, s)), Some(l)) => (Some(upload(c, &l)?), Some(upload(s, &l)?)),
        _ => (None, None),
    };
    let varlen = Varlen {
        cu_seqlens_q: &cu_q_d,
        cu_seqlens_k: &cu_k_d,
        max_seqlen_q: case.seqlens_q.iter().copied().max().unwrap_or(0).max(1),
        max_seqlen_k: case.seqlens_k.iter().copied().max().unwrap_or(0).max(1),
        seqused_k: used_d.as_deref(),
        check_offsets: true,
    };
    match &case.source {
        Source::Varlen { .. } => lib(attention.forward_varlen_into(
            stream,
            view(&qd, lq)?,
            view(&kd, lkv)?,
            view(&vd, lkv)?,
            lib(TensorMut::<T>::from_slice(&mut od, 0, lq))?,
            &mut lse,
            &varlen,
            &params,
        ))?,
        Source::KvCache { num_splits, .. } => {
            let cache = KvCache {
                cache_seqlens: lens_d.as_deref().unwrap(),
                cache_batch_idx: idx_d.as_deref(),
                num_splits: *num_splits,
                block_table: table_d.as_deref(),
                check_lengths: true,
            };
            match (&append, new_layout) {
                (Some((a, _)), Some(nl)) => {
                    let rotary = match (&cos_d, &sin_d, table_layout) {
                        (Some(c), Some(s), Some(tl)) => Some(Rotary {
                            cos: view(c, tl)?,
                            sin: view(s, tl)?,
                            interleaved: a.rotary.is_some_and(|(_, i)| i),
                        }),
                        _ => None,
                    };
                    let new = Append {
                        k: view(k_new_d.as_ref().unwrap(), nl)?,
                        v: view(v_new_d.as_ref().unwrap(), nl)?,
                        rotary,
                    };
                    if a.separate {
                        lib(attention.append_kv(
                            stream,
                            lib(TensorMut::<T>::from_slice(&mut kd, 0, lkv))?,
                            lib(TensorMut::<T>::from_slice(&mut vd, 0, lkv))?,
                            &new,
                            &cache,
                        ))?;
                        let grown: Vec<usize> = case.seqlens_k.iter().map(|&n| n + a.seqlen_new).collect();
                        let grown_d = ints(&grown)?;
                        let after = KvCache { cache_seqlens: &grown_d, ..cache };
                        lib(attention.forward_with_kvcache_into(
                            stream,
                            view(&qd, lq)?,
                            view(&kd, lkv)?,
                            view(&vd, lkv)?,
                            lib(TensorMut::<T>::from_slice(&mut od, 0, lq))?,
                            &mut lse,
                            &after,
                            &params,
                        ))?
                    } else {
                        lib(attention.forward_with_kvcache_append_into(
                            stream,
                            view(&qd, lq)?,
                            lib(TensorMut::<T>::from_slice(&mut kd, 0, lkv))?,
                            lib(TensorMut::<T>::from_slice(&mut vd, 0, lkv))?,
                            &new,
                            lib(TensorMut::<T>::from_slice(&mut od, 0, lq))?,
                            &mut lse,
                            &cache,
                            &params,
                        ))?
                    }
                }
                _ => lib(attention.forward_with_kvcache_into(
                    stream,
                    view(&qd, lq)?,
                    view(&kd, lkv)?,
                    view(&vd, lkv)?,
                    lib(TensorMut::<T>::from_slice(&mut od, 0, lq))?,
                    &mut lse,
                    &cache,
                    &params,
                ))?,
            }
        }
    }
    cuda(stream.synchronize())?;

    // The reference, sequence by sequence, laid out as the kernels lay out their outputs.
    let round = |x: f64| T::from_f64(x).to_f64();
    let (mut want_o, mut naive_o) = (vec![0.0; total_q * heads * d], vec![0.0; total_q * heads * d]);
    let (mut want_lse, mut naive_lse) = (vec![0.0; total_q * heads], vec![0.0; total_q * heads]);
    // Row of the K/V tensors (of heads_k · d values) holding key j of sequence b: packed,
    // a cache entry's, or through the sequence's pages (the reference gathers them).
    let key_row = |b: usize, j: usize| -> usize {
        match &case.source {
            Source::Varlen { .. } => offsets(&case.seqlens_k)[b] + j,
            Source::KvCache { pages: Some((page_size, tables)), .. } => {
                tables[b][j / page_size] * page_size + j % page_size
            }
            Source::KvCache { cache_len, batch_idx, .. } => batch_idx.as_ref().map_or(b, |i| i[b]) * cache_len + j,
        }
    };
    // The append on the reference's side: rotated new keys (rounded to T, with the slack of a
    // kernel that rotates in f32) and new values into the cache image, rotated queries.
    let mut q64 = q64;
    let mut rotated_k = vec![false; k64.len()];
    let mut k_slack = vec![0.0; k64.len()];
    let mut q_slack = vec![0.0; q64.len()];
    if let Some((a, _)) = &append {
        let half = a.rotary.map_or(0, |(rd, _)| rd / 2);
        let interleaved = a.rotary.is_some_and(|(_, i)| i);
        let (cos64, sin64): (Vec<f64>, Vec<f64>) = match &tables {
            Some((c, s)) => (c.iter().map(|x| x.to_f64()).collect(), s.iter().map(|x| x.to_f64()).collect()),
            None => (vec![], vec![]),
        };
        let turn = |x: &[f64], pos: usize| -> GpuResult<(Vec<f64>, Vec<f64>)> {
            match a.rotary {
                Some(_) => {
                    rotate_rounded::<T>(x, &cos64[pos * half..][..half], &sin64[pos * half..][..half], interleaved)
                }
                None => Ok((x.to_vec(), vec![0.0; x.len()])),
            }
        };
        for b in 0..batch {
            for t in 0..a.seqlen_new {
                let pos = case.seqlens_k[b] + t;
                for h in 0..heads_k {
                    let src = ((b * a.seqlen_new + t) * heads_k + h) * d;
                    let dst = (key_row(b, pos) * heads_k + h) * d;
                    let (kr, ks) = turn(&k_new64[src..][..d], pos)?;
                    k64[dst..][..d].copy_from_slice(&kr);
                    k_slack[dst..][..d].copy_from_slice(&ks);
                    rotated_k[dst..][..d].fill(a.rotary.is_some());
                    v64[dst..][..d].copy_from_slice(&v_new64[src..][..d]);
                }
            }
        }
        if a.rotary.is_some() && !a.separate {
            // Queries at the new positions with causal or window masks, else all at the first.
            let (step, sq) = (q_step, case.seqlens_q[0]);
            for b in 0..batch {
                for t in 0..sq {
                    let pos = case.seqlens_k[b] + t * step;
                    for h in 0..heads {
                        let at = ((b * sq + t) * heads + h) * d;
                        let (qr, qs) = turn(&q64[at..][..d], pos)?;
                        q64[at..][..d].copy_from_slice(&qr);
                        q_slack[at..][..d].copy_from_slice(&qs);
                    }
                }
            }
        }
    }
    let kv_rows_of = |b: usize| -> (usize, usize) { (key_row(b, 0), case.keys_used(b)) };
    let gather = |x: &[f64], b: usize, n: usize| -> Vec<f64> {
        (0..n).flat_map(|j| x[key_row(b, j) * heads_k * d..][..heads_k * d].iter().copied()).collect()
    };
    let per_seq: Vec<_> = (0..batch)
        .map(|b| {
            let p = case.problem(b);
            let q0 = cu_q[b];
            let qs = &q64[q0 * heads * d..][..p.seqlen_q * heads * d];
            let (ks, vs) = (gather(&k64, b, p.seqlen_k), gather(&v64, b, p.seqlen_k));
            (p, qs.to_vec(), ks, vs)
        })
        .collect();
    for (b, (p, qs, ks, vs)) in per_seq.iter().enumerate() {
        if p.seqlen_q == 0 {
            continue;
        }
        let want = lib(reference::forward(p, qs, ks, vs))?;
        let naive = lib(reference::forward_rounded(p, qs, ks, vs, &round))?;
        let q0 = cu_q[b];
        want_o[q0 * heads * d..][..want.o.len()].copy_from_slice(&want.o);
        naive_o[q0 * heads * d..][..naive.o.len()].copy_from_slice(&naive.o);
        for h in 0..heads {
            for i in 0..p.seqlen_q {
                // Packed: (heads, total_q); cache: (batch, heads, seqlen_q) = (b·heads + h)·sq + i.
                let at = if packed { h * total_q + q0 + i } else { (b * heads + h) * p.seqlen_q + i };
                want_lse[at] = want.lse[h * p.seqlen_q + i];
                naive_lse[at] = naive.lse[h * p.seqlen_q + i];
            }
        }
    }
    let mut o_image = vec![0u16; od.len()];
    cuda(od.copy_to(&mut o_image[..]))?;
    let got_o: Vec<f64> =
        o_image[..total_q * heads * d].iter().map(|&x| bytemuck::cast::<u16, T>(x).to_f64()).collect();
    let mut lse_host = vec![0f32; lse.len()];
    cuda(lse.copy_to(&mut lse_host[..]))?;
    let got_lse: Vec<f64> = lse_host[..total_q * heads].iter().map(|&x| x as f64).collect();
    // With rotary, kernel and reference may round a rotated element of q or k differently
    // (the slack above, zero for almost every element). A score moves by at most scale ·
    // Σ_d (Δq_d · max|k_d| + max|q_d| · Δk_d); the LSE by as much, and O, a convex combination
    // of V's rows whose weights move by at most twice the largest score change in sum, by
    // 2 · max|v| times it.
    let (o_extra, lse_extra) = if append.as_ref().is_some_and(|(a, _)| a.rotary.is_some()) {
        let column_max = |x: &[f64]| {
            let mut m = vec![0.0f64; d];
            for (i, v) in x.iter().enumerate() {
                m[i % d] = m[i % d].max(v.abs());
            }
            m
        };
        let (qm, km, dq, dk) = (column_max(&q64), column_max(&k64), column_max(&q_slack), column_max(&k_slack));
        let scale = c.scale.map_or(1.0 / (d as f64).sqrt(), f64::from);
        let score = scale * (0..d).map(|i| dq[i] * km[i] + qm[i] * dk[i]).sum::<f64>();
        let v_max = v64.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        (2.0 * v_max * score, score)
    } else {
        (0.0, 0.0)
    };
    let mut comparisons = vec![
        compare_with("o", &got_o, &want_o, &naive_o, unit_roundoff::<T>(), o_extra),
        compare_with("lse", &got_lse, &want_lse, &naive_lse, LSE_ROUNDOFF, lse_extra),
    ];
    if append.is_some() {
        // The caches after the append: every element the reference's, exactly, but for rotated
        // new keys, which may differ by their slack. Rows past the append are untouched.
        let image = |buf: &DeviceBuffer<u16>| -> GpuResult<Vec<f64>> {
            let mut bits = vec![0u16; buf.len()];
            cuda(buf.copy_to(&mut bits[..]))?;
            Ok(bits.iter().map(|&x| bytemuck::cast::<u16, T>(x).to_f64()).collect())
        };
        let (got_k, got_v) = (image(&kd)?, image(&vd)?);
        let excess = |got: &[f64], want: &[f64], slack: &[f64]| {
            got.iter().zip(want).zip(slack).fold(0.0f64, |m, ((g, w), s)| {
                let off = if g == w { 0.0 } else { (g - w).abs() - s };
                if off.is_nan() { f64::INFINITY } else { m.max(off.max(0.0)) }
            })
        };
        let n = k64.len();
        let v_slack = vec![0.0; n];
        let exact_k: Vec<f64> = (0..n).map(|i| if rotated_k[i] { k_slack[i] } else { 0.0 }).collect();
        for (name, got, want, slack) in [("k_cache", &got_k, &k64, &exact_k), ("v_cache", &got_v, &v64, &v_slack)] {
            comparisons.push(Comparison {
                name,
                error: excess(&got[..n], want, slack),
                naive_error: 0.0,
                tolerance: 0.0,
            });
        }
    }

    // The backward takes no `seqused_k` (a typed error, tested with the bad input).
    if backward && matches!(case.source, Source::Varlen { seqused_k: None }) {
        let (mut dqd, mut dkd, mut dvd) = (nan(&lq)?, nan(&lkv)?, nan(&lkv)?);
        let mut d_sinks = match &sinks {
            Some(_) => Some(cuda(DeviceBuffer::from_slice(&vec![f32::NAN; heads]))?),
            None => None,
        };
        lib(attention.backward_varlen_into(
            stream,
            [view(&dod, lq)?, view(&qd, lq)?, view(&kd, lkv)?, view(&vd, lkv)?, view(&od, lq)?],
            &lse,
            [
                lib(TensorMut::<T>::from_slice(&mut dqd, 0, lq))?,
                lib(TensorMut::<T>::from_slice(&mut dkd, 0, lkv))?,
                lib(TensorMut::<T>::from_slice(&mut dvd, 0, lkv))?,
            ],
            d_sinks.as_deref_mut(),
            &varlen,
            &params,
        ))?;
        cuda(stream.synchronize())?;
        let total_k = kv_rows;
        let (mut want, mut naive) = (
            [vec![0.0; total_q * heads * d], vec![0.0; total_k * heads_k * d], vec![0.0; total_k * heads_k * d]],
            [vec![0.0; total_q * heads * d], vec![0.0; total_k * heads_k * d], vec![0.0; total_k * heads_k * d]],
        );
        let (mut want_ds, mut naive_ds) =
            (vec![0.0; sinks.as_ref().map_or(0, |_| heads)], vec![0.0; sinks.as_ref().map_or(0, |_| heads)]);
        let (mut dq_shift, mut dk_shift) = (0.0f64, 0.0f64);
        for (b, (p, qs, ks, vs)) in per_seq.iter().enumerate() {
            let dos = &do64[cu_q[b] * heads * d..][..p.seqlen_q * heads * d];
            let (q0, k0) = (cu_q[b], kv_rows_of(b).0);
            if p.seqlen_q > 0 && p.seqlen_k > 0 {
                let w = lib(reference::backward(p, qs, ks, vs, dos))?;
                let n = lib(reference::backward_rounded(p, qs, ks, vs, dos, &round))?;
                let (s_q, s_k) = lib(reference::stored_o_sensitivity(p, qs, ks, vs, dos, unit_roundoff::<T>()))?;
                dq_shift = dq_shift.max(s_q);
                dk_shift = dk_shift.max(s_k);
                for (i, (wt, nt)) in [(&w.dq, &n.dq), (&w.dk, &n.dk), (&w.dv, &n.dv)].into_iter().enumerate() {
                    let row0 = if i == 0 { q0 * heads * d } else { k0 * heads_k * d };
                    want[i][row0..][..wt.len()].copy_from_slice(wt);
                    naive[i][row0..][..nt.len()].copy_from_slice(nt);
                }
                for h in 0..want_ds.len() {
                    want_ds[h] += w.d_sinks[h];
                    naive_ds[h] += n.d_sinks[h];
                }
            }
        }
        for (i, (name, buf, elems)) in [
            ("dq", &dqd, total_q * heads * d),
            ("dk", &dkd, total_k * heads_k * d),
            ("dv", &dvd, total_k * heads_k * d),
        ]
        .into_iter()
        .enumerate()
        {
            let mut image = vec![0u16; buf.len()];
            cuda(buf.copy_to(&mut image[..]))?;
            let got: Vec<f64> = image[..elems].iter().map(|&x| bytemuck::cast::<u16, T>(x).to_f64()).collect();
            let extra = [dq_shift, dk_shift, 0.0][i];
            comparisons.push(compare_with(name, &got, &want[i], &naive[i], unit_roundoff::<T>(), extra));
        }
        if let Some(buf) = &d_sinks {
            let mut got = vec![0f32; heads];
            cuda(buf.copy_to(&mut got[..]))?;
            let got: Vec<f64> = got.iter().map(|&x| x as f64).collect();
            // f32 summation over the packed rows (as for the dense cases), plus the stored-O
            // shift bounded per sequence (summed, as the gradient is).
            let mut extra = F32_UNIT_ROUNDOFF * total_q as f64 * want_ds.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            for (b, (p, qs, ks, vs)) in per_seq.iter().enumerate() {
                if p.seqlen_q == 0 {
                    continue;
                }
                let dos = &do64[cu_q[b] * heads * d..][..p.seqlen_q * heads * d];
                let f = lib(reference::forward(p, qs, ks, vs))?;
                extra += crate::sink_gradient_o_sensitivity(p, &f, dos, unit_roundoff::<T>());
            }
            comparisons.push(compare_with("d_sinks", &got, &want_ds, &naive_ds, F32_UNIT_ROUNDOFF, extra));
        }
    }
    Ok(CaseOutcome { comparisons })
}
