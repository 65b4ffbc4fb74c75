//! Serving shapes: packed variable-length batches (prefill, training) and KV caches (decode),
//! with split-KV for decodes too small to fill the GPU.
//!
//! Both are an addressing layer over the same kernels: the host describes where each
//! sequence's rows live ([`flash_attn_kernels::params::SeqLayout`]: cumulative offsets, used
//! lengths, a cache's batch index), and every block of a feature (`_mods`) kernel resolves its
//! sequence (`FwdParams::sequence`) and then runs as on a dense batch of one. Blocks past a
//! sequence's end exit before loading anything, so padding costs one block launch and no work.
//!
//! Layouts, as FlashAttention's:
//! - packed tensors are one batch entry, `(1, total_tokens, heads, head_dim)`; sequence `b` is
//!   rows `cu_seqlens[b] .. cu_seqlens[b + 1]`; the LSE of a packed batch is `(heads, total_q)`;
//! - a KV cache is `(batch_cache, seqlen_cache, heads_k, head_dim)`; sequence `b` attends to
//!   the first `cache_seqlens[b]` rows of entry `cache_batch_idx[b]` (default `b`); causal
//!   masks and windows are bottom-right aligned to each sequence's own lengths.
//!
//! The offsets and lengths live on the device. Their lengths (batch + 1, batch) are always
//! checked; their values only with `check_offsets` / `check_lengths`, which copy them to the host
//! (synchronously) first. Unchecked, the kernels trust them, as FlashAttention's do: offsets
//! that are not non-decreasing or run past the tensors make the kernels read out of bounds.

use crate::AttentionParams;
use crate::error::{CudaContext, Error, Result};
use crate::launch::{FlashAttention, ForwardOutput, Gradients, forward_params, grid};
use crate::tensor::Layout;
use crate::tensor::{DeviceTensor, Element, TensorMut, TensorRef};
use crate::validate::{self, Arg, MAX_GRID_YZ, MAX_SEQLEN};
use cust::memory::{CopyDestination, DeviceBuffer, DeviceSlice};
use cust::stream::Stream;
use flash_attn_kernels::params::{AppendParams, AttnShape, Modifiers};
use flash_attn_kernels::registry::{self, Flavor, Role};
use flash_attn_kernels::rotary::append_rows;
use flash_attn_kernels::tiling::{DECODE_ROWS, choose_decode_splits, choose_splits};

/// A packed batch of variable-length sequences (FlashAttention's `flash_attn_varlen_func`
/// arguments).
#[derive(Clone, Copy)]
pub struct Varlen<'a> {
    /// i32 (batch + 1): sequence `b`'s queries are packed rows `cu_seqlens_q[b] ..
    /// cu_seqlens_q[b + 1]` of Q (and O, dO, dQ).
    pub cu_seqlens_q: &'a DeviceSlice<i32>,
    /// i32 (batch + 1): the same for K and V (and dK, dV).
    pub cu_seqlens_k: &'a DeviceSlice<i32>,
    /// The longest sequence's queries and keys (the grid is sized by them).
    pub max_seqlen_q: usize,
    pub max_seqlen_k: usize,
    /// i32 (batch): sequence `b` uses only its first `seqused_k[b]` keys.
    pub seqused_k: Option<&'a DeviceSlice<i32>>,
    /// Copy the offsets to the host and check them before launching (synchronous: they must be
    /// ready). Off, the kernels trust them.
    pub check_offsets: bool,
}

/// A KV cache for [`FlashAttention::forward_with_kvcache`] (FlashAttention's
/// `flash_attn_with_kvcache` arguments).
#[derive(Clone, Copy)]
pub struct KvCache<'a> {
    /// i32 (batch): keys in use per sequence (at most the cache's seqlen).
    pub cache_seqlens: &'a DeviceSlice<i32>,
    /// i32 (batch): the cache entry of each sequence (default: sequence `b` uses entry `b`).
    pub cache_batch_idx: Option<&'a DeviceSlice<i32>>,
    /// Split-KV: 0 chooses from the shape and the SM count ([`choose_splits`]); 1 never splits.
    pub num_splits: usize,
    /// A paged cache (vLLM's layout): i32 (batch, max_blocks_per_seq), sequence `b`'s key `j`
    /// in page `block_table[b][j / page_size]` of K, V shaped (num_pages, page_size, heads_k,
    /// head_dim); page_size a multiple of 16. Not with `cache_batch_idx`. Decode-shaped calls
    /// only (`heads / heads_k · seqlen_q ≤ 16`).
    pub block_table: Option<&'a DeviceSlice<i32>>,
    /// Copy the lengths and indices to the host and check them before launching.
    pub check_lengths: bool,
}

impl<'a> KvCache<'a> {
    pub fn new(cache_seqlens: &'a DeviceSlice<i32>) -> Self {
        KvCache { cache_seqlens, cache_batch_idx: None, num_splits: 0, block_table: None, check_lengths: false }
    }
}

/// New keys and values for [`FlashAttention::forward_with_kvcache_append`]: appended to each
/// sequence's cache at its current length before the attention reads it (FlashAttention's `k`,
/// `v`, `rotary_cos`, `rotary_sin` arguments).
#[derive(Clone, Copy)]
pub struct Append<'a, T: Element> {
    /// `(batch, seqlen_new, heads_k, head_dim)`: sequence `b`'s token `t` goes to cache position
    /// `cache_seqlens[b] + t`.
    pub k: TensorRef<'a, T>,
    pub v: TensorRef<'a, T>,
    /// Rotary embedding of the new keys (into the cache) and of the queries (the attention reads
    /// the rotated copy; `q` itself is left alone).
    pub rotary: Option<Rotary<'a, T>>,
}

/// Rotary tables: `cos` and `sin` of position `p`, frequency `i` at `(0, p, 0, i)` of shapes
/// `(1, seqlen_ro, 1, rotary_dim / 2)`, `rotary_dim` a multiple of 16 and at most head_dim,
/// `seqlen_ro` at least the cache's capacity (with a causal mask or a window and more queries
/// than new keys: capacity + seqlen_q − seqlen_new, the queries' last position). The first `rotary_dim` elements of each row are
/// turned in pairs: `(2i, 2i + 1)` when `interleaved` (GPT-J), else `(i, i + rotary_dim / 2)`
/// (GPT-NeoX). New key `t` sits at position `cache_seqlens[b] + t`; query `t` too with causal or
/// window masks, and otherwise every query at `cache_seqlens[b]` (FlashAttention's rule).
#[derive(Clone, Copy)]
pub struct Rotary<'a, T: Element> {
    pub cos: TensorRef<'a, T>,
    pub sin: TensorRef<'a, T>,
    pub interleaved: bool,
}

/// Most splits the heuristic picks (and the most a caller may ask for).
pub const MAX_SPLITS: usize = 128;

fn to_host(name: &'static str, slice: &DeviceSlice<i32>) -> Result<Vec<i32>> {
    let mut host = vec![0i32; slice.len()];
    slice.copy_to(&mut host[..]).during("cuMemcpyDtoH (offsets)").map_err(|e| match e {
        Error::Cuda { operation, name: cuda, code } => {
            Error::Cuda { operation, name: format!("{cuda} ({name})"), code }
        }
        other => other,
    })?;
    Ok(host)
}

/// `cu` (batch + 1 offsets) starts at 0, never decreases, ends at `total`, and no sequence is
/// longer than `max`.
pub(crate) fn check_cu_seqlens(name: &'static str, cu: &[i32], total: usize, max: usize) -> Result<()> {
    if cu.first() != Some(&0) {
        return Err(Error::invalid(name, format!("starts at {:?}; 0 expected", cu.first())));
    }
    for (b, pair) in cu.windows(2).enumerate() {
        if pair[1] < pair[0] {
            return Err(Error::invalid(name, format!("decreases at sequence {b}: {} then {}", pair[0], pair[1])));
        }
        let len = (pair[1] - pair[0]) as usize;
        if len > max {
            return Err(Error::invalid(name, format!("sequence {b} has {len} rows, more than max_seqlen {max}")));
        }
    }
    let last = *cu.last().unwrap_or(&0);
    if last as usize != total {
        return Err(Error::invalid(name, format!("ends at {last}, but the packed tensor has {total} rows")));
    }
    Ok(())
}

/// Each of `values` lies in `0..=max` (lengths) or `0..max` with `exclusive` (indices).
pub(crate) fn check_range(name: &'static str, values: &[i32], max: usize, exclusive: bool) -> Result<()> {
    for (b, &x) in values.iter().enumerate() {
        if x < 0 || x as usize > max || (exclusive && x as usize == max) {
            let bound = if exclusive { format!("0..{max}") } else { format!("0..={max}") };
            return Err(Error::invalid(name, format!("entry {b} is {x}, outside {bound}")));
        }
    }
    Ok(())
}

fn array_len(name: &'static str, len: usize, expected: usize, what: &str) -> Result<()> {
    if len != expected {
        return Err(Error::invalid(name, format!("holds {len} entries; {what} = {expected} expected")));
    }
    Ok(())
}

fn packed(arg: &Arg) -> Result<()> {
    if arg.layout.batch() != 1 {
        return Err(Error::invalid(
            arg.name,
            format!("batch {} in a packed batch; (1, total_tokens, heads, head_dim) expected", arg.layout.batch()),
        ));
    }
    Ok(())
}

fn seqlen_bound(name: &'static str, value: usize) -> Result<u32> {
    if value == 0 || value > MAX_SEQLEN {
        return Err(Error::invalid(name, format!("{value} is outside 1..={MAX_SEQLEN}")));
    }
    Ok(value as u32)
}

/// The shape of a packed batch from validated packed Q, K, V (`base`, batch 1) and the offsets.
fn varlen_shape(base: AttnShape, v: &Varlen) -> Result<AttnShape> {
    if v.cu_seqlens_q.len() < 2 || v.cu_seqlens_q.len() - 1 > MAX_GRID_YZ {
        return Err(Error::invalid(
            "varlen.cu_seqlens_q",
            format!("holds {} entries; batch + 1 with batch in 1..={MAX_GRID_YZ} expected", v.cu_seqlens_q.len()),
        ));
    }
    let batch = v.cu_seqlens_q.len() - 1;
    array_len("varlen.cu_seqlens_k", v.cu_seqlens_k.len(), batch + 1, "batch + 1")?;
    if let Some(used) = v.seqused_k {
        array_len("varlen.seqused_k", used.len(), batch, "batch")?;
    }
    let max_q = seqlen_bound("varlen.max_seqlen_q", v.max_seqlen_q)?;
    let max_k = seqlen_bound("varlen.max_seqlen_k", v.max_seqlen_k)?;
    let (total_q, total_k) = (base.seqlen_q, base.seqlen_k);
    if v.check_offsets {
        check_cu_seqlens(
            "varlen.cu_seqlens_q",
            &to_host("cu_seqlens_q", v.cu_seqlens_q)?,
            total_q as usize,
            v.max_seqlen_q,
        )?;
        let cu_k = to_host("cu_seqlens_k", v.cu_seqlens_k)?;
        check_cu_seqlens("varlen.cu_seqlens_k", &cu_k, total_k as usize, v.max_seqlen_k)?;
        if let Some(used) = v.seqused_k {
            let used = to_host("seqused_k", used)?;
            for (b, (&u, pair)) in used.iter().zip(cu_k.windows(2)).enumerate() {
                if u < 0 || u > pair[1] - pair[0] {
                    return Err(Error::invalid(
                        "varlen.seqused_k",
                        format!("entry {b} is {u}, outside 0..={} (the sequence's keys)", pair[1] - pair[0]),
                    ));
                }
            }
        }
    }
    let mut shape = base;
    shape.batch = batch as u32;
    shape.seqlen_q = max_q;
    shape.seqlen_k = max_k;
    shape.layout.cu_seqlens_q = v.cu_seqlens_q.as_device_ptr().as_raw();
    shape.layout.cu_seqlens_k = v.cu_seqlens_k.as_device_ptr().as_raw();
    shape.layout.seqused_k = v.seqused_k.map_or(0, |s| s.as_device_ptr().as_raw());
    shape.layout.total_q = total_q;
    shape.layout.total_k = total_k;
    shape.layout.max_seqlen_q = max_q;
    Ok(shape)
}

impl FlashAttention {
    /// Forward of a packed variable-length batch: Q `(1, total_q, heads, d)`, K and V
    /// `(1, total_k, heads_k, d)`; O like Q and the LSE `(heads, total_q)`. Every option of
    /// [`AttentionParams`] applies per sequence (masks bottom-right aligned to each
    /// sequence's lengths; ALiBi slopes `(heads)` or `(batch, heads)`).
    pub fn forward_varlen<T: Element>(
        &self,
        stream: &Stream,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        varlen: &Varlen,
        params: &AttentionParams,
    ) -> Result<ForwardOutput<T>> {
        let (qa, ka, va) = (Arg::of("q", &q), Arg::of("k", &k), Arg::of("v", &v));
        let shape = self.varlen_inputs(&qa, &ka, &va, varlen, params)?;
        validate::modifiers(params, &shape)?; // before allocating: bad options never allocate
        let mut o = DeviceTensor::uninitialized(q.layout().shape)?;
        let mut lse = stat_buffer(&shape)?;
        self.forward_varlen_into(stream, q, k, v, o.view_mut(), &mut lse, varlen, params)?;
        Ok(ForwardOutput { o, lse })
    }

    /// [`FlashAttention::forward_varlen`] into caller-provided O (Q's shape, any
    /// non-overlapping strides) and LSE (at least heads · total_q floats).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_varlen_into<T: Element>(
        &self,
        stream: &Stream,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        o: TensorMut<'_, T>,
        lse: &mut DeviceSlice<f32>,
        varlen: &Varlen,
        params: &AttentionParams,
    ) -> Result<()> {
        let (qa, ka, va) = (Arg::of("q", &q), Arg::of("k", &k), Arg::of("v", &v));
        let shape = self.varlen_inputs(&qa, &ka, &va, varlen, params)?;
        let o_ref = o.as_ref();
        let oa = Arg::of("o", &o_ref);
        validate::output(&oa, q.layout().shape)?;
        stat_len("lse", lse.len(), &shape)?;
        let mods = validate::modifiers(params, &shape)?;
        self.run_forward::<T>(stream, shape, mods, [&qa, &ka, &va, &oa], lse.as_device_ptr().as_raw())
    }

    /// Backward of [`FlashAttention::forward_varlen`]: dQ like Q, dK and dV like K (sums over
    /// each K/V head's query heads), the sinks' gradient when the call has sinks.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_varlen<T: Element>(
        &self,
        stream: &Stream,
        d_o: TensorRef<'_, T>,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        o: TensorRef<'_, T>,
        lse: &DeviceSlice<f32>,
        varlen: &Varlen,
        params: &AttentionParams,
    ) -> Result<Gradients<T>> {
        let (qa, ka, va) = (Arg::of("q", &q), Arg::of("k", &k), Arg::of("v", &v));
        if varlen.seqused_k.is_some() {
            return Err(Error::invalid(
                "varlen.seqused_k",
                "the backward takes every key of each sequence: seqused_k is for the forward only",
            ));
        }
        let shape = self.varlen_inputs(&qa, &ka, &va, varlen, params)?;
        validate::modifiers(params, &shape)?; // before allocating: bad options never allocate
        let mut dq = DeviceTensor::<T>::uninitialized(q.layout().shape)?;
        let mut dk = DeviceTensor::<T>::uninitialized(k.layout().shape)?;
        let mut dv = DeviceTensor::<T>::uninitialized(k.layout().shape)?;
        let mut d_sinks = match params.sinks {
            Some(_) => Some(DeviceBuffer::<f32>::zeroed(shape.heads as usize).during("cuMemAlloc")?),
            None => None,
        };
        let sinks_out = d_sinks.as_deref_mut();
        self.backward_varlen_into(
            stream,
            [d_o, q, k, v, o],
            lse,
            [dq.view_mut(), dk.view_mut(), dv.view_mut()],
            sinks_out,
            varlen,
            params,
        )?;
        Ok(Gradients { dq, dk, dv, d_sinks })
    }

    /// [`FlashAttention::backward_varlen`] into caller-provided dQ, dK, dV (any non-overlapping
    /// strides) and, with sinks, their gradient (`heads` floats): inputs `[d_o, q, k, v, o]`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_varlen_into<T: Element>(
        &self,
        stream: &Stream,
        [d_o, q, k, v, o]: [TensorRef<'_, T>; 5],
        lse: &DeviceSlice<f32>,
        [dq, dk, dv]: [TensorMut<'_, T>; 3],
        d_sinks: Option<&mut DeviceSlice<f32>>,
        varlen: &Varlen,
        params: &AttentionParams,
    ) -> Result<()> {
        let [qa, ka, va, oa, doa] =
            [("q", &q), ("k", &k), ("v", &v), ("o", &o), ("d_o", &d_o)].map(|(n, t)| Arg::of(n, t));
        if varlen.seqused_k.is_some() {
            return Err(Error::invalid(
                "varlen.seqused_k",
                "the backward takes every key of each sequence: seqused_k is for the forward only",
            ));
        }
        let shape = self.varlen_inputs(&qa, &ka, &va, varlen, params)?;
        validate::same_shape(&oa, q.layout().shape)?;
        validate::same_shape(&doa, q.layout().shape)?;
        stat_len("lse", lse.len(), &shape)?;
        let (dq_ref, dk_ref, dv_ref) = (dq.as_ref(), dk.as_ref(), dv.as_ref());
        let (dqa, dka, dva) = (Arg::of("dq", &dq_ref), Arg::of("dk", &dk_ref), Arg::of("dv", &dv_ref));
        validate::output(&dqa, q.layout().shape)?;
        validate::output(&dka, k.layout().shape)?;
        validate::output(&dva, k.layout().shape)?;
        let mods = validate::modifiers(params, &shape)?;
        let d_sinks = validate::sink_gradient(params, d_sinks, &shape)?;
        self.run_backward::<T>(
            stream,
            shape,
            mods,
            [&qa, &ka, &va, &oa, &doa, &dqa, &dka, &dva],
            lse.as_device_ptr().as_raw(),
            d_sinks,
            params.deterministic,
        )
    }

    fn varlen_inputs(&self, q: &Arg, k: &Arg, v: &Arg, varlen: &Varlen, params: &AttentionParams) -> Result<AttnShape> {
        packed(q)?;
        packed(k)?;
        let base = validate::inputs(q, k, v, params)?;
        varlen_shape(base, varlen)
    }

    /// Attention of Q `(batch, seqlen_q, heads, d)` against a KV cache `(batch_cache,
    /// seqlen_cache, heads_k, d)`, each sequence over its first `cache_seqlens[b]` keys (of
    /// entry `cache_batch_idx[b]`); O like Q and the LSE `(batch, heads, seqlen_q)`. Causal masks
    /// and windows are aligned to each sequence's length: query `i` sits at key position
    /// `cache_seqlens[b] - seqlen_q + i` (new tokens at the end of the cache). Decodes too small
    /// to fill the GPU split the keys across blocks and merge by LSE (`KvCache::num_splits`).
    pub fn forward_with_kvcache<T: Element>(
        &self,
        stream: &Stream,
        q: TensorRef<'_, T>,
        k_cache: TensorRef<'_, T>,
        v_cache: TensorRef<'_, T>,
        cache: &KvCache,
        params: &AttentionParams,
    ) -> Result<ForwardOutput<T>> {
        let (qa, ka, va) = (Arg::of("q", &q), Arg::of("k_cache", &k_cache), Arg::of("v_cache", &v_cache));
        let shape = self.kvcache_inputs(&qa, &ka, &va, cache, params)?;
        validate::modifiers(params, &shape)?; // before allocating: bad options never allocate
        let mut o = DeviceTensor::uninitialized(q.layout().shape)?;
        let mut lse = stat_buffer(&shape)?;
        self.forward_with_kvcache_into(stream, q, k_cache, v_cache, o.view_mut(), &mut lse, cache, params)?;
        Ok(ForwardOutput { o, lse })
    }

    /// [`FlashAttention::forward_with_kvcache`] into caller-provided O (Q's shape) and LSE
    /// (batch · heads · seqlen_q floats).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_kvcache_into<T: Element>(
        &self,
        stream: &Stream,
        q: TensorRef<'_, T>,
        k_cache: TensorRef<'_, T>,
        v_cache: TensorRef<'_, T>,
        o: TensorMut<'_, T>,
        lse: &mut DeviceSlice<f32>,
        cache: &KvCache,
        params: &AttentionParams,
    ) -> Result<()> {
        let (qa, ka, va) = (Arg::of("q", &q), Arg::of("k_cache", &k_cache), Arg::of("v_cache", &v_cache));
        let mut shape = self.kvcache_inputs(&qa, &ka, &va, cache, params)?;
        let o_ref = o.as_ref();
        let oa = Arg::of("o", &o_ref);
        validate::output(&oa, q.layout().shape)?;
        stat_len("lse", lse.len(), &shape)?;
        let mods = kvcache_modifiers(params, &shape)?;
        self.kvcache_attention::<T>(stream, &mut shape, mods, [&qa, &ka, &va, &oa], lse.as_device_ptr().as_raw(), cache)
    }

    /// [`FlashAttention::forward_with_kvcache`] after appending new keys and values (with rotary
    /// embedding when `new.rotary` is set) to the cache, as FlashAttention's
    /// `flash_attn_with_kvcache` with `k`, `v`: sequence `b` then attends to its first
    /// `cache_seqlens[b] + seqlen_new` keys, the new ones last. `cache_seqlens` itself is not
    /// changed (the caller advances it). With `check_lengths` the new lengths are checked against
    /// the cache's capacity; unchecked, rows that would land past it are dropped and the
    /// lengths are capped at it.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_kvcache_append<T: Element>(
        &self,
        stream: &Stream,
        q: TensorRef<'_, T>,
        k_cache: TensorMut<'_, T>,
        v_cache: TensorMut<'_, T>,
        new: &Append<'_, T>,
        cache: &KvCache,
        params: &AttentionParams,
    ) -> Result<ForwardOutput<T>> {
        let (k_ref, v_ref) = (k_cache.as_ref(), v_cache.as_ref());
        let (qa, ka, va) = (Arg::of("q", &q), Arg::of("k_cache", &k_ref), Arg::of("v_cache", &v_ref));
        let shape = self.kvcache_inputs(&qa, &ka, &va, cache, params)?;
        kvcache_modifiers(params, &shape)?; // before allocating: bad options never allocate
        append_params(&shape, &qa, &ka, &va, new, cache)?;
        let mut o = DeviceTensor::uninitialized(q.layout().shape)?;
        let mut lse = stat_buffer(&shape)?;
        self.forward_with_kvcache_append_into(stream, q, k_cache, v_cache, new, o.view_mut(), &mut lse, cache, params)?;
        Ok(ForwardOutput { o, lse })
    }

    /// [`FlashAttention::forward_with_kvcache_append`] into caller-provided O (Q's shape) and
    /// LSE (batch · heads · seqlen_q floats).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with_kvcache_append_into<T: Element>(
        &self,
        stream: &Stream,
        q: TensorRef<'_, T>,
        k_cache: TensorMut<'_, T>,
        v_cache: TensorMut<'_, T>,
        new: &Append<'_, T>,
        o: TensorMut<'_, T>,
        lse: &mut DeviceSlice<f32>,
        cache: &KvCache,
        params: &AttentionParams,
    ) -> Result<()> {
        let (k_ref, v_ref) = (k_cache.as_ref(), v_cache.as_ref());
        let (qa, ka, va) = (Arg::of("q", &q), Arg::of("k_cache", &k_ref), Arg::of("v_cache", &v_ref));
        let mut shape = self.kvcache_inputs(&qa, &ka, &va, cache, params)?;
        let o_ref = o.as_ref();
        let oa = Arg::of("o", &o_ref);
        validate::output(&oa, q.layout().shape)?;
        stat_len("lse", lse.len(), &shape)?;
        let mods = kvcache_modifiers(params, &shape)?;
        let mut a = append_params(&shape, &qa, &ka, &va, new, cache)?;
        let append = self.kernel(Role::KvAppend, T::DTYPE, &shape, &mods)?;

        // Stream-ordered scratch: the new lengths, and with rotary the rotated queries.
        // SAFETY: i32 has no invalid bit patterns; the append kernel writes every entry before
        // the attention reads it.
        let lengths = unsafe { self.scratch.alloc::<i32>(shape.batch as usize, stream) }?;
        a.seqlens_out = lengths.as_device_ptr().as_raw();
        let q_layout = Layout::contiguous(q.layout().shape);
        let q_rotated = match new.rotary {
            // SAFETY: u16 has no invalid bit patterns; the append kernel writes every query row
            // before the attention reads it.
            Some(_) => Some(unsafe { self.scratch.alloc::<u16>(q_layout.element_count(), stream) }?),
            None => None,
        };
        if let Some(buffer) = &q_rotated {
            a.q_out = buffer.as_device_ptr().as_raw();
            a.q_out_strides = Arg { name: "q", address: a.q_out, layout: &q_layout }.strides();
        }
        let rows = append_rows(&a);
        let launched = self.launch(stream, append, grid(append, rows, 1, 1), &a).and_then(|()| {
            shape.layout.seqused_k = a.seqlens_out;
            let q_arg = match &q_rotated {
                Some(_) => Arg { name: "q", address: a.q_out, layout: &q_layout },
                None => Arg { name: "q", address: qa.address, layout: qa.layout },
            };
            self.kvcache_attention::<T>(
                stream,
                &mut shape,
                mods,
                [&q_arg, &ka, &va, &oa],
                lse.as_device_ptr().as_raw(),
                cache,
            )
        });
        let freed = lengths.drop_async(stream).during("cuMemFreeAsync");
        let freed_q = q_rotated.map_or(Ok(()), |b| b.drop_async(stream).during("cuMemFreeAsync"));
        launched.and(freed).and(freed_q)
    }

    /// Append new keys and values to a KV cache without attending (a prompt's K/V after its
    /// prefill, into the pages a server manages): sequence `b`'s new token `t` goes to position
    /// `cache_seqlens[b] + t`, the keys turned by `new.rotary` when set. Arguments and checks as
    /// in [`FlashAttention::forward_with_kvcache_append`].
    pub fn append_kv<T: Element>(
        &self,
        stream: &Stream,
        k_cache: TensorMut<'_, T>,
        v_cache: TensorMut<'_, T>,
        new: &Append<'_, T>,
        cache: &KvCache,
    ) -> Result<()> {
        let (k_ref, v_ref) = (k_cache.as_ref(), v_cache.as_ref());
        let (ka, va) = (Arg::of("k_cache", &k_ref), Arg::of("v_cache", &v_ref));
        // The new keys stand in for the queries: the cache is checked against them.
        let na = Arg::of("append.k", &new.k);
        let params = AttentionParams::default();
        let shape = self.kvcache_inputs(&na, &ka, &va, cache, &params)?;
        let mut a = append_params(&shape, &na, &ka, &va, new, cache)?;
        let append = self.kernel(Role::KvAppend, T::DTYPE, &shape, &Modifiers::default())?;
        // The new lengths are written but unused here: they go to scratch.
        // SAFETY: i32 has no invalid bit patterns; nothing reads the buffer.
        let lengths = unsafe { self.scratch.alloc::<i32>(shape.batch as usize, stream) }?;
        a.seqlens_out = lengths.as_device_ptr().as_raw();
        let launched = self.launch(stream, append, grid(append, append_rows(&a), 1, 1), &a);
        launched.and(lengths.drop_async(stream).during("cuMemFreeAsync"))
    }

    /// The attention of a validated KV-cache call: the decode kernel for decode shapes, else the
    /// sequence forward with split-KV.
    fn kvcache_attention<T: Element>(
        &self,
        stream: &Stream,
        shape: &mut AttnShape,
        mods: Modifiers,
        args: [&Arg; 4],
        lse: u64,
        cache: &KvCache,
    ) -> Result<()> {
        if decode_shaped(shape) {
            return self.run_decode::<T>(stream, *shape, mods, args, lse, cache.num_splits);
        }
        if shape.layout.page_size != 0 {
            return Err(Error::invalid(
                "cache.block_table",
                format!(
                    "a paged cache serves decode-shaped calls (heads / heads_k · seqlen_q ≤ {DECODE_ROWS}); this one has {}",
                    shape.heads / shape.heads_k * shape.seqlen_q
                ),
            ));
        }
        shape.layout.num_splits = self.splits_for::<T>(shape, cache.num_splits)?;
        self.run_forward::<T>(stream, *shape, mods, args, lse)
    }

    /// The decode kernel (a K/V group's query heads and tokens in one tile), split-KV and the
    /// combine kernel when the grid is too small for the GPU.
    fn run_decode<T: Element>(
        &self,
        stream: &Stream,
        mut shape: AttnShape,
        mods: Modifiers,
        args: [&Arg; 4],
        lse: u64,
        requested: usize,
    ) -> Result<()> {
        let info = self.kernel(Role::ForwardDecode, T::DTYPE, &shape, &mods)?;
        let key_tiles = shape.seqlen_k.div_ceil(info.key_tile_rows);
        let splits = match requested {
            0 => choose_decode_splits(shape.heads_k * shape.batch, key_tiles, self.sm_count, 2, MAX_SPLITS as u32),
            n if n <= MAX_SPLITS => n as u32,
            n => return Err(Error::invalid("cache.num_splits", format!("{n} exceeds {MAX_SPLITS}"))),
        };
        shape.layout.num_splits = splits;
        let p = forward_params(shape, mods, args, lse);
        self.launch_split::<T>(stream, info, (splits, shape.heads_k, shape.batch), p)
    }

    /// How many key ranges a forward of `shape` splits into: `requested` (at most
    /// [`MAX_SPLITS`]), or with 0 the heuristic from the grid and the SM count.
    pub(crate) fn splits_for<T: Element>(&self, shape: &AttnShape, requested: usize) -> Result<u32> {
        let info = registry::find(Role::Forward, T::DTYPE, shape.head_dim, self.hopper_kernels(), Flavor::Sequences)
            .ok_or(Error::UnsupportedHeadDim {
                argument: "q",
                head_dim: shape.head_dim as usize,
                supported: &flash_attn_kernels::traits::SUPPORTED_HEAD_DIMS,
            })?;
        let key_tiles = shape.seqlen_k.div_ceil(info.key_tile_rows.max(1));
        let splits = match requested {
            0 => {
                let blocks = shape.seqlen_q.div_ceil(info.block_rows) * shape.heads * shape.batch;
                choose_splits(blocks, key_tiles, self.sm_count, 4, MAX_SPLITS as u32)
            }
            n if n <= MAX_SPLITS => n as u32,
            n => return Err(Error::invalid("cache.num_splits", format!("{n} exceeds {MAX_SPLITS}"))),
        };
        if splits as usize * shape.batch as usize > MAX_GRID_YZ {
            return Err(Error::invalid(
                "cache.num_splits",
                format!("{splits} splits × batch {} exceed the grid's {MAX_GRID_YZ}", shape.batch),
            ));
        }
        Ok(splits)
    }

    fn kvcache_inputs(
        &self,
        q: &Arg,
        k: &Arg,
        v: &Arg,
        cache: &KvCache,
        params: &AttentionParams,
    ) -> Result<AttnShape> {
        // Checked as Q against K, V of Q's batch (the cache's own batch may differ with
        // `cache_batch_idx`), then the cache's batch on its own.
        let batch = q.layout.batch();
        let cache_batch = k.layout.batch();
        let same_batch = |a: &Arg<'_>| {
            let mut l = *a.layout;
            l.shape[0] = batch;
            l
        };
        let (kl, vl) = (same_batch(k), same_batch(v));
        let (k1, v1) = (
            Arg { name: k.name, address: k.address, layout: &kl },
            Arg { name: v.name, address: v.address, layout: &vl },
        );
        if k.layout.shape != v.layout.shape {
            return Err(Error::invalid(
                "v_cache",
                format!("shape {:?} differs from k_cache's {:?}", v.layout.shape, k.layout.shape),
            ));
        }
        let mut shape = validate::inputs(q, &k1, &v1, params)?;
        array_len("cache.cache_seqlens", cache.cache_seqlens.len(), batch, "batch")?;
        match cache.cache_batch_idx {
            Some(_) if cache.block_table.is_some() => {
                return Err(Error::invalid(
                    "cache.cache_batch_idx",
                    "not with a block_table (the table maps the pages)",
                ));
            }
            Some(idx) => array_len("cache.cache_batch_idx", idx.len(), batch, "batch")?,
            None if cache_batch != batch && cache.block_table.is_none() => {
                return Err(Error::invalid(
                    "k_cache",
                    format!("batch {cache_batch} differs from q's {batch} and no cache_batch_idx maps them"),
                ));
            }
            None => {}
        }
        if cache.check_lengths && cache.block_table.is_none() {
            check_range(
                "cache.cache_seqlens",
                &to_host("cache_seqlens", cache.cache_seqlens)?,
                k.layout.seqlen(),
                false,
            )?;
            if let Some(idx) = cache.cache_batch_idx {
                check_range("cache.cache_batch_idx", &to_host("cache_batch_idx", idx)?, cache_batch, true)?;
            }
        }
        shape.layout.seqused_k = cache.cache_seqlens.as_device_ptr().as_raw();
        shape.layout.k_batch_index = cache.cache_batch_idx.map_or(0, |s| s.as_device_ptr().as_raw());
        if let Some(table) = cache.block_table {
            let page_size = k.layout.seqlen();
            if !page_size.is_multiple_of(16) {
                return Err(Error::invalid(
                    "k_cache",
                    format!("page size (dimension 1) {page_size} is not a multiple of 16"),
                ));
            }
            if table.is_empty() || !table.len().is_multiple_of(batch) {
                return Err(Error::invalid(
                    "cache.block_table",
                    format!("holds {} entries; (batch = {batch}, max_blocks_per_seq) expected", table.len()),
                ));
            }
            let stride = table.len() / batch;
            if cache.check_lengths {
                check_range("cache.block_table", &to_host("block_table", table)?, cache_batch, true)?;
                check_range(
                    "cache.cache_seqlens",
                    &to_host("cache_seqlens", cache.cache_seqlens)?,
                    stride * page_size,
                    false,
                )?;
            }
            // The sequences' key range: up to max_blocks_per_seq pages.
            shape.seqlen_k =
                u32::try_from(stride * page_size).ok().filter(|&n| n as usize <= MAX_SEQLEN).ok_or_else(|| {
                    Error::invalid("cache.block_table", "max_blocks_per_seq · page_size exceeds 2^30 keys")
                })?;
            shape.layout.page_size = page_size as u32;
            shape.layout.block_table = table.as_device_ptr().as_raw();
            shape.layout.block_table_stride = stride as u32;
        }
        Ok(shape)
    }
}

/// The score modifiers of a KV-cache call: every one but dropout (inference).
fn kvcache_modifiers(params: &AttentionParams, shape: &AttnShape) -> Result<Modifiers> {
    let mods = validate::modifiers(params, shape)?;
    if mods.dropout_keep_threshold != 0 {
        return Err(Error::invalid("params.dropout", "the KV-cache forward is inference: no dropout"));
    }
    Ok(mods)
}

/// The append kernel's parameters from a validated KV-cache call (`shape`, with the cache's
/// capacity as `seqlen_k`) and the new keys, values and rotary tables, all checked here; the
/// scratch addresses (`seqlens_out`, `q_out`) are the caller's to fill.
fn append_params<T: Element>(
    shape: &AttnShape,
    q: &Arg,
    k_cache: &Arg,
    v_cache: &Arg,
    new: &Append<'_, T>,
    cache: &KvCache,
) -> Result<AppendParams> {
    let (k, v) = (Arg::of("append.k", &new.k), Arg::of("append.v", &new.v));
    k.check_basic()?;
    v.check_basic()?;
    let seqlen_new = k.layout.seqlen();
    let expected = [shape.batch as usize, seqlen_new, shape.heads_k as usize, shape.head_dim as usize];
    if k.layout.shape != expected {
        return Err(Error::invalid(
            "append.k",
            format!("shape {:?}; (batch, seqlen_new, heads_k, head_dim) = {expected:?} expected", k.layout.shape),
        ));
    }
    if v.layout.shape != expected {
        return Err(Error::invalid(
            "append.v",
            format!("shape {:?} differs from append.k's {expected:?}", v.layout.shape),
        ));
    }
    let capacity = shape.seqlen_k;
    if seqlen_new > capacity as usize {
        return Err(Error::invalid(
            "append.k",
            format!("{seqlen_new} new tokens do not fit a cache of {capacity} keys a sequence"),
        ));
    }
    let rows = shape.batch as u64
        * (shape.seqlen_q as u64 * shape.heads as u64 + 2 * seqlen_new as u64 * shape.heads_k as u64);
    if rows > i32::MAX as u64 {
        return Err(Error::invalid("append.k", format!("{rows} rows to append and rotate exceed 2^31")));
    }
    if cache.check_lengths {
        let lens = to_host("cache_seqlens", cache.cache_seqlens)?;
        check_range("cache.cache_seqlens", &lens, capacity as usize - seqlen_new, false).map_err(|e| match e {
            Error::InvalidArgument { argument, problem } => Error::InvalidArgument {
                argument,
                problem: format!("{problem}: with {seqlen_new} new tokens the cache holds {capacity}"),
            },
            other => other,
        })?;
    }
    let mut a = AppendParams {
        batch: shape.batch,
        seqlen_new: seqlen_new as u32,
        seqlen_q: shape.seqlen_q,
        heads: shape.heads,
        heads_k: shape.heads_k,
        head_dim: shape.head_dim,
        k_new: k.address,
        v_new: v.address,
        k_new_strides: k.strides(),
        v_new_strides: v.strides(),
        k_cache: k_cache.address,
        v_cache: v_cache.address,
        k_cache_strides: k_cache.strides(),
        v_cache_strides: v_cache.strides(),
        cache_seqlens: cache.cache_seqlens.as_device_ptr().as_raw(),
        cache_batch_idx: shape.layout.k_batch_index,
        block_table: shape.layout.block_table,
        block_table_stride: shape.layout.block_table_stride,
        page_size: shape.layout.page_size,
        capacity,
        q_position_step: (shape.window_left >= 0 || shape.window_right >= 0) as u32,
        q: q.address,
        q_strides: q.strides(),
        ..Default::default()
    };
    if let Some(r) = &new.rotary {
        let (cos, sin) = (Arg::of("append.rotary.cos", &r.cos), Arg::of("append.rotary.sin", &r.sin));
        cos.check_basic()?;
        sin.check_basic()?;
        let [one, rows, one_h, half] = cos.layout.shape;
        let rotary_dim = 2 * half;
        if one != 1 || one_h != 1 || !rotary_dim.is_multiple_of(16) || rotary_dim > shape.head_dim as usize {
            return Err(Error::invalid(
                "append.rotary.cos",
                format!(
                    "shape {:?}; (1, seqlen_ro, 1, rotary_dim / 2) with rotary_dim a multiple of 16 and at most head_dim {} expected",
                    cos.layout.shape, shape.head_dim
                ),
            ));
        }
        if sin.layout.shape != cos.layout.shape {
            return Err(Error::invalid(
                "append.rotary.sin",
                format!("shape {:?} differs from cos's {:?}", sin.layout.shape, cos.layout.shape),
            ));
        }
        // Keys land at positions below the capacity; queries rotated at stepping positions
        // (causal or windowed calls) reach `seqlen_q - seqlen_new` further when there are more
        // queries than new keys.
        let needed =
            capacity as usize + (a.q_position_step as usize) * (shape.seqlen_q as usize).saturating_sub(seqlen_new);
        if rows < needed {
            return Err(Error::invalid(
                "append.rotary.cos",
                format!(
                    "{rows} positions; the cache holds {capacity} and queries reach position {} (seqlen_ro ≥ {needed} expected)",
                    needed - 1
                ),
            ));
        }
        if cos.layout.strides[1] != sin.layout.strides[1] {
            return Err(Error::invalid("append.rotary.sin", "row stride differs from cos's"));
        }
        a.rotary_cos = cos.address;
        a.rotary_sin = sin.address;
        a.rotary_row_stride = u32::try_from(cos.layout.strides[1])
            .map_err(|_| Error::invalid("append.rotary.cos", "row stride exceeds 2^32 elements"))?;
        a.rotary_rows = u32::try_from(rows).unwrap_or(u32::MAX);
        a.rotary_dim = rotary_dim as u32;
        a.rotary_interleaved = r.interleaved as u32;
    }
    Ok(a)
}

/// Whether a KV-cache call runs the decode kernel: a K/V group's query heads times the new
/// tokens fit its 16-row tile.
pub(crate) fn decode_shaped(shape: &AttnShape) -> bool {
    shape.heads / shape.heads_k * shape.seqlen_q <= DECODE_ROWS
}

/// The row statistics (LSE) of a call: heads · total_q floats for a packed batch, else batch ·
/// heads · seqlen_q.
fn stat_buffer(shape: &AttnShape) -> Result<DeviceBuffer<f32>> {
    // SAFETY: f32 has no invalid bit patterns; the forward writes every row's LSE.
    unsafe { DeviceBuffer::<f32>::uninitialized(shape.stat_rows() as usize) }.during("cuMemAlloc")
}

fn stat_len(name: &'static str, len: usize, shape: &AttnShape) -> Result<()> {
    let rows = shape.stat_rows() as usize;
    if len < rows {
        return Err(Error::invalid(name, format!("holds {len} floats; {rows} (one per query row and head) needed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argument<T: std::fmt::Debug>(r: Result<T>) -> &'static str {
        match r {
            Err(Error::InvalidArgument { argument, .. }) => argument,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn offsets_are_checked_against_the_packed_tensor() {
        assert!(check_cu_seqlens("cu", &[0, 3, 3, 10], 10, 7).is_ok());
        // Not starting at 0, decreasing, a sequence over max, not ending at the total.
        for (cu, total, max) in
            [(&[1, 3, 10][..], 10, 9), (&[0, 5, 4, 10], 10, 9), (&[0, 8, 10], 10, 7), (&[0, 3, 9], 10, 9)]
        {
            assert_eq!(argument(check_cu_seqlens("cu", cu, total, max)), "cu", "{cu:?}");
        }
    }

    #[test]
    fn lengths_and_indices_stay_in_range() {
        assert!(check_range("lens", &[0, 5, 16], 16, false).is_ok());
        assert_eq!(argument(check_range("lens", &[17], 16, false)), "lens");
        assert_eq!(argument(check_range("lens", &[-1], 16, false)), "lens");
        assert!(check_range("idx", &[0, 2], 3, true).is_ok());
        assert_eq!(argument(check_range("idx", &[3], 3, true)), "idx");
    }
}
