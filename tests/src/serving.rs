//! Serving-shaped cases: packed variable-length batches (forward and backward) and KV-cache
//! forwards (with cache lengths, a shuffled cache batch index and split-KV), checked sequence by
//! sequence against the f64 reference under the same tolerance rule as the dense cases: each
//! sequence is a dense problem of batch 1 (`Problem::first_batch` keeps dropout's counters the
//! packed batch's), and the comparisons run over the whole packed output.

use crate::{
    Alibi, Case, CaseOutcome, F32_UNIT_ROUNDOFF, GpuResult, LSE_ROUNDOFF, case_strategy, compare, compare_with, cuda,
    lib, random_inputs, seqlen, unit_roundoff,
};
use cust::memory::{CopyDestination, DeviceBuffer};
use cust::stream::Stream;
use flash_attn::reference::{self, Problem};
use flash_attn::{AttentionParams, Element, FlashAttention, KvCache, Layout, TensorMut, TensorRef, Varlen};
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
    },
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
/// split-KV automatic, off, or forced to 2–16 splits.
pub fn kvcache_strategy() -> impl Strategy<Value = ServingCase> {
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
    shape.prop_map(|(base, batch, seqlen_q, cache_len, extra, shuffle, num_splits, seed, page_size)| {
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
        let seqlens_k = (0..batch)
            .map(|_| match rand::Rng::gen_range(&mut rng, 0..4) {
                0 => cache_len,
                1 => rand::Rng::gen_range(&mut rng, 0..=cache_len.min(8)),
                _ => rand::Rng::gen_range(&mut rng, 0..=cache_len),
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
            source: Source::KvCache { cache_len, cache_batch, batch_idx, num_splits, pages },
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
    let (k64, k) = random_inputs::<T>(&mut rng, kv_rows.max(1) * heads_k * d);
    let (v64, v) = random_inputs::<T>(&mut rng, kv_rows.max(1) * heads_k * d);
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
    let (qd, kd, vd, dod) = (upload(&q, &lq)?, upload(&k, &lkv)?, upload(&v, &lkv)?, upload(&d_o, &lq)?);
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
            lib(attention.forward_with_kvcache_into(
                stream,
                view(&qd, lq)?,
                view(&kd, lkv)?,
                view(&vd, lkv)?,
                lib(TensorMut::<T>::from_slice(&mut od, 0, lq))?,
                &mut lse,
                &cache,
                &params,
            ))?
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
    let mut comparisons = vec![
        compare("o", &got_o, &want_o, &naive_o, unit_roundoff::<T>()),
        compare("lse", &got_lse, &want_lse, &naive_lse, LSE_ROUNDOFF),
    ];

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
