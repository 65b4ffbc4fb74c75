//! The parameter blocks passed by value to every kernel launch.
//!
//! One `#[repr(C)]` definition serves both sides: the host fills it, the kernels read it. Fields
//! for later features get appended here; a kernel that does not know a feature reads the
//! neutral value the host writes for it.

/// Layout of one (batch, seqlen, heads, head_dim) tensor: element strides of the three outer
/// dimensions (the last dimension is contiguous).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Strides {
    pub batch: i64,
    pub row: i64,
    pub head: i64,
}

impl Strides {
    /// Element offset of the first element of `(batch, row, head, 0)`.
    #[inline(always)]
    pub const fn offset(&self, batch: u32, row: u32, head: u32) -> i64 {
        batch as i64 * self.batch + row as i64 * self.row + head as i64 * self.head
    }
}

/// Shapes, scale and masking shared by forward and backward.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttnShape {
    pub batch: u32,
    pub heads: u32,
    /// Heads of K and V, dividing `heads` (grouped-query attention: query head `h` reads K/V head
    /// `h / (heads / heads_k)`, see [`crate::tiling::kv_head_of`]).
    pub heads_k: u32,
    pub seqlen_q: u32,
    pub seqlen_k: u32,
    pub head_dim: u32,
    /// Softmax scale (applied to Q·Kᵀ before the softmax).
    pub scale: f32,
    /// `scale · log2(e)`: the kernels work in base 2 so that each exponential is one `ex2`.
    pub scale_log2: f32,
    /// Keys allowed for query i: `i + offset - window_left ..= i + offset + window_right`, with
    /// `offset = seqlen_k - seqlen_q` (bottom-right alignment). Negative means unbounded.
    /// Causal attention is `window_left = -1, window_right = 0`.
    pub window_left: i32,
    pub window_right: i32,
    /// Where each sequence's rows live: a dense batch (all zeros), a packed variable-length
    /// batch, a KV cache with per-sequence lengths (see [`SeqLayout`] and [`AttnShape::sequence`]).
    pub layout: SeqLayout,
}

/// The addressing layer: where sequence `b`'s query and key rows live and how many there are.
/// The host fills the first part (zero means the dense case); [`AttnShape::sequence`] fills
/// the rest for one sequence, and the kernels then run exactly as on a dense batch of one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SeqLayout {
    /// i32 (batch + 1), non-decreasing: sequence b's queries are packed rows
    /// `cu_seqlens_q[b] .. cu_seqlens_q[b + 1]` (the tensors' batch strides are 0). 0: dense.
    pub cu_seqlens_q: u64,
    /// i32 (batch + 1): the same for the keys. 0: dense (or a cache, see `seqused_k`).
    pub cu_seqlens_k: u64,
    /// i32 (batch): sequence b uses only its first `seqused_k[b]` keys (a KV cache's
    /// `cache_seqlens`). 0: all of them.
    pub seqused_k: u64,
    /// i32 (batch): sequence b reads K/V batch entry `k_batch_index[b]` (`cache_batch_idx`).
    /// 0: entry b.
    pub k_batch_index: u64,
    /// Packed queries in all (the LSE is (heads, total_q) then); 0 for a dense batch.
    pub total_q: u32,
    /// Packed keys in all (rows of the grouped-heads dK/dV accumulator); 0 for a dense batch.
    pub total_k: u32,
    /// Split-KV: each (query tile, head, sequence) is cut into this many key ranges whose
    /// partial results the combine kernel merges (grid z = batch · num_splits). 0 or 1: none.
    pub num_splits: u32,
    /// The grid's query rows per sequence (`max_seqlen_q`): sizes the deterministic turn
    /// counters. 0: seqlen_q.
    pub max_seqlen_q: u32,
    /// Per sequence, filled by [`AttnShape::sequence`]: index of the sequence's row 0 of head 0
    /// in the row statistics (LSE, D, the dQ accumulator's rows), and the statistics' head stride.
    pub stat_base: i64,
    /// Per sequence: the statistics' rows in all ([`AttnShape::stat_rows`] of the whole batch),
    /// one split's share of the split-KV partials.
    pub stat_rows: i64,
    pub stat_head_stride: u32,
    /// Per sequence: the sequence's first key row in the grouped-heads dK/dV accumulator, and
    /// that accumulator's key rows in all (one half: dK's or dV's).
    pub dkv_row0: u32,
    pub dkv_keys: u32,
    /// Paged KV cache: keys live in pages of `page_size` rows (K, V of shape (pages, page_size,
    /// heads_k, head_dim), the page index in the batch stride); key `j` of sequence `b` is row
    /// `j % page_size` of page `block_table[b · block_table_stride + j / page_size]` (i32).
    /// 0: contiguous. Read by the decode kernel only.
    pub page_size: u32,
    pub block_table: u64,
    pub block_table_stride: u32,
    pub reserved: u32,
}

/// One sequence's place in the batch: its lengths and where its rows start. From
/// [`SeqLayout`]'s arrays for packed batches and caches, from the strides otherwise.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqBounds {
    pub seqlen_q: u32,
    pub seqlen_k: u32,
    /// Packed row of the sequence's query 0 (0 for a dense batch).
    pub q_row0: u32,
    /// Packed row of the sequence's key 0 (0 for a dense batch).
    pub k_row0: u32,
    /// K/V batch entry the sequence reads.
    pub k_batch: u32,
}

impl SeqLayout {
    /// Sequence `batch`'s bounds, from the layout's arrays as read by `read(array, index)`; a
    /// dense batch's are `(seqlen_q, seqlen_k)` from row 0 of entry `batch`.
    #[inline(always)]
    pub fn bounds(&self, batch: u32, seqlen_q: u32, seqlen_k: u32, read: impl Fn(u64, u32) -> u32) -> SeqBounds {
        let mut b = SeqBounds { seqlen_q, seqlen_k, q_row0: 0, k_row0: 0, k_batch: batch };
        if self.cu_seqlens_q != 0 {
            b.q_row0 = read(self.cu_seqlens_q, batch);
            b.seqlen_q = read(self.cu_seqlens_q, batch + 1) - b.q_row0;
        }
        if self.cu_seqlens_k != 0 {
            b.k_row0 = read(self.cu_seqlens_k, batch);
            b.seqlen_k = read(self.cu_seqlens_k, batch + 1) - b.k_row0;
        }
        if self.seqused_k != 0 {
            b.seqlen_k = read(self.seqused_k, batch);
        }
        if self.k_batch_index != 0 {
            b.k_batch = read(self.k_batch_index, batch);
        }
        b
    }

    /// `(sequence, split)` of grid z index `z` (grid z = batch · num_splits).
    #[inline(always)]
    pub const fn split_of(&self, z: u32) -> (u32, u32) {
        if self.num_splits <= 1 { (z, 0) } else { (z / self.num_splits, z % self.num_splits) }
    }

    pub const fn splits(&self) -> u32 {
        if self.num_splits <= 1 { 1 } else { self.num_splits }
    }
}

impl AttnShape {
    /// The shape of sequence `batch` alone, with its bounds: its own `seqlen_q` and `seqlen_k`
    /// (so the mask, the modifiers and the tile ranges are the sequence's), and the row
    /// statistics' placement (`stat_base`, `stat_head_stride`, `dkv_row0`).
    #[inline(always)]
    pub fn for_sequence(&self, b: &SeqBounds, batch: u32) -> AttnShape {
        let mut s = *self;
        s.layout.stat_rows = self.stat_rows();
        s.seqlen_q = b.seqlen_q;
        s.seqlen_k = b.seqlen_k;
        if self.layout.cu_seqlens_q != 0 {
            s.layout.stat_base = b.q_row0 as i64;
            s.layout.stat_head_stride = self.layout.total_q;
        } else {
            s.layout.stat_base = batch as i64 * self.heads as i64 * self.seqlen_q as i64;
            s.layout.stat_head_stride = self.seqlen_q;
        }
        (s.layout.dkv_row0, s.layout.dkv_keys) = if self.layout.cu_seqlens_k != 0 {
            (b.k_row0, self.layout.total_k)
        } else {
            (batch * self.seqlen_k, self.batch * self.seqlen_k)
        };
        if s.layout.max_seqlen_q == 0 {
            s.layout.max_seqlen_q = self.seqlen_q;
        }
        s
    }

    /// Rows of the row statistics in all: `batch · heads · seqlen_q`, or `heads · total_q`
    /// for a packed batch (one split's share of the split-KV partials).
    #[inline(always)]
    pub const fn stat_rows(&self) -> i64 {
        if self.layout.cu_seqlens_q != 0 {
            self.heads as i64 * self.layout.total_q as i64
        } else {
            self.batch as i64 * self.heads as i64 * self.seqlen_q as i64
        }
    }
}

/// Read element `i` of an i32 device array (the layout's offsets and lengths).
///
/// # Safety
/// `array` points at an i32 array with more than `i` elements that the host validated.
#[inline(always)]
pub unsafe fn read_index(array: u64, i: u32) -> u32 {
    // SAFETY: forwarded from the caller.
    unsafe { *(array as *const i32).wrapping_add(i as usize) as u32 }
}

/// Forward: O = softmax(scale · Q Kᵀ) V, and the log-sum-exp of each row.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FwdParams {
    pub shape: AttnShape,
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub o: u64,
    /// f32, contiguous (batch, heads, seqlen_q), natural-log LSE; +inf for rows that see no key.
    pub lse: u64,
    pub q_strides: Strides,
    pub k_strides: Strides,
    pub v_strides: Strides,
    pub o_strides: Strides,
    /// Score modifiers and dropout: softcap, ALiBi and dropout are read by the `_mods` kernels
    /// only (the host launches one of those whenever one is on), the sinks by every forward
    /// kernel; zero means off.
    pub mods: Modifiers,
    /// Split-KV (`shape.layout.num_splits` > 1): f32 (splits, stat rows, head_dim) partial
    /// outputs, each normalized by its own split's sum, and f32 (splits, stat rows) partial
    /// LSEs (+inf where a split saw no key), merged by the combine kernel into O and the LSE.
    pub o_accum: u64,
    pub lse_accum: u64,
    /// A persistent forward's dynamic schedule (masked calls): a u32 the host zeroed, from which
    /// blocks take their query tiles after the first (`tiling::persistent_tile`'s order, numbered
    /// from the grid's block count); 0: the static schedule.
    pub tile_counter: u64,
    /// The FP8 forward's descale factors (read by its kernels only; zeros elsewhere).
    pub descales: Descales,
}

/// The FP8 forward's descale factors: a stored e4m3 element `x` of Q means `x · descale_q`, and
/// so on. Each is an f32 array read at `b · strides[t][0] + h · strides[t][1]` for batch `b` and
/// K/V head `h` (strides 0: one factor per tensor); address 0 means 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Descales {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    /// (batch, K/V head) element strides of q, k and v.
    pub strides: [[u32; 2]; 3],
}

impl Descales {
    /// The factors (Q·K, V) of batch `batch`, K/V head `kv_head`.
    ///
    /// # Safety
    /// Every nonzero address holds the factor of each (batch, K/V head) at its strides (the host
    /// checked the extents).
    #[inline(always)]
    pub unsafe fn factors(&self, batch: u32, kv_head: u32) -> (f32, f32) {
        let read = |address: u64, [bs, hs]: [u32; 2]| {
            if address == 0 {
                1.0
            } else {
                let index = batch as usize * bs as usize + kv_head as usize * hs as usize;
                // SAFETY: forwarded from the caller.
                unsafe { *(address as *const f32).wrapping_add(index) }
            }
        };
        (read(self.q, self.strides[0]) * read(self.k, self.strides[1]), read(self.v, self.strides[2]))
    }
}

impl FwdParams {
    /// The parameter block of sequence `batch` alone: its shape ([`AttnShape::for_sequence`])
    /// and Q, K, V, O moved to its rows, so that a kernel indexing `(batch, row, head)` at the
    /// original strides lands on the sequence's rows (packed tensors have batch stride 0, and a
    /// cache's K/V entry is `k_batch`).
    ///
    /// The parameter block a forward block runs on: for the `SEQ` kernels (`_seq`, `_mods`, which
    /// serve packed batches, KV caches and split-KV) the sequence and split of grid index
    /// `block_z` resolved into `storage`, as a dense batch of one; the dense kernels read the
    /// block as it is (and compile to the code they had before). Also the sequence's index in the
    /// batch and the split (0 and 0 when not `SEQ`).
    ///
    /// # Safety
    /// As [`FwdParams::sequence`].
    #[inline(always)]
    pub unsafe fn of_block<'a, const SEQ: bool>(
        &'a self,
        block_z: u32,
        storage: &'a mut core::mem::MaybeUninit<FwdParams>,
    ) -> (&'a FwdParams, u32, u32) {
        if !SEQ {
            return (self, 0, 0);
        }
        let (sequence_index, split) = self.shape.layout.split_of(block_z);
        // SAFETY: forwarded from the caller.
        (storage.write(unsafe { self.sequence(sequence_index) }), sequence_index, split)
    }

    /// # Safety
    /// The layout's arrays are 0 or validated (batch + 1 offsets, batch lengths and indices).
    #[inline(always)]
    pub unsafe fn sequence(&self, batch: u32) -> FwdParams {
        let shape = &self.shape;
        // SAFETY: forwarded from the caller.
        let b = shape.layout.bounds(batch, shape.seqlen_q, shape.seqlen_k, |a, i| unsafe { read_index(a, i) });
        let mut p = *self;
        p.shape = shape.for_sequence(&b, batch);
        let rows = |addr: u64, strides: &Strides, row0: u32| move_rows(addr, strides, row0, 0);
        p.q = rows(self.q, &self.q_strides, b.q_row0);
        p.o = rows(self.o, &self.o_strides, b.q_row0);
        let k_entry = b.k_batch as i64 - batch as i64;
        p.k = move_rows(self.k, &self.k_strides, b.k_row0, k_entry);
        p.v = move_rows(self.v, &self.v_strides, b.k_row0, k_entry);
        p
    }
}

/// `addr` (of 16-bit elements) moved by `row0` rows and `entries` batch entries.
#[inline(always)]
pub const fn move_rows(addr: u64, strides: &Strides, row0: u32, entries: i64) -> u64 {
    let elements = row0 as i64 * strides.row + entries * strides.batch;
    addr.wrapping_add((elements * 2) as u64)
}

/// Appending new keys and values to a KV cache before attending to it (`append.rs`): K/V rows
/// `(b, t, h)` of the new tensors go to position `cache_seqlens[b] + t` of sequence `b`'s cache
/// (its entry `cache_batch_idx[b]`, or its pages), with rotary embedding on the keys and, into
/// `q_out`, on the queries. Zero addresses mean off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AppendParams {
    pub batch: u32,
    /// New K/V tokens per sequence.
    pub seqlen_new: u32,
    /// Query tokens per sequence (rows rotated into `q_out`).
    pub seqlen_q: u32,
    pub heads: u32,
    pub heads_k: u32,
    pub head_dim: u32,
    pub k_new: u64,
    pub v_new: u64,
    pub k_new_strides: Strides,
    pub v_new_strides: Strides,
    /// The cache: `(entries, capacity, heads_k, d)` contiguous per entry, or with `page_size`
    /// pages `(pages, page_size, heads_k, d)` (the batch stride is then the page stride).
    pub k_cache: u64,
    pub v_cache: u64,
    pub k_cache_strides: Strides,
    pub v_cache_strides: Strides,
    /// i32 (batch): keys already in each sequence's cache.
    pub cache_seqlens: u64,
    /// i32 (batch): the cache entry of each sequence; 0: entry `b`.
    pub cache_batch_idx: u64,
    /// i32 (batch, block_table_stride): each sequence's pages; 0: a contiguous cache.
    pub block_table: u64,
    pub block_table_stride: u32,
    pub page_size: u32,
    /// Keys a sequence's cache holds (the entry's rows, or table width × page size): rows that
    /// would land past it are not written.
    pub capacity: u32,
    /// Query token `t` sits at position `cache_seqlens[b] + t · q_position_step` (1 with causal
    /// or window masks, 0 otherwise: every query at the first new position, as FlashAttention).
    pub q_position_step: u32,
    /// i32 (batch), written: `min(cache_seqlens[b] + seqlen_new, capacity)`, the keys the
    /// attention that follows sees.
    pub seqlens_out: u64,
    /// The queries and their rotated copy (`(batch, seqlen_q, heads, d)`); `q_out` 0: no copy.
    pub q: u64,
    pub q_out: u64,
    pub q_strides: Strides,
    pub q_out_strides: Strides,
    /// Rotary tables: `(rotary_rows, rotary_dim / 2)` of the element type, `rotary_row_stride`
    /// elements a row; cos 0: no rotary.
    pub rotary_cos: u64,
    pub rotary_sin: u64,
    pub rotary_row_stride: u32,
    pub rotary_rows: u32,
    /// Elements rotated at the start of each row (a multiple of 16, at most head_dim).
    pub rotary_dim: u32,
    /// Nonzero: pairs `(2i, 2i + 1)` (GPT-J); zero: halves `(i, i + rotary_dim / 2)` (GPT-NeoX).
    pub rotary_interleaved: u32,
}

/// Softcap, ALiBi, attention sinks and dropout (see [`crate::modifiers`] for the definitions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Modifiers {
    /// f32 ALiBi slopes, `alibi_batch_stride` floats per batch entry (0: one set shared by the
    /// batch), one per query head; 0: no ALiBi.
    pub alibi_slopes: u64,
    /// f32 sink logit per query head (natural-log units, like the scaled scores); 0: no sinks.
    pub sinks: u64,
    /// Dropout's Philox key (the seed) and counter offset.
    pub dropout_seed: u64,
    pub dropout_offset: u64,
    /// Scores become `softcap · tanh(scale · s / softcap)`; 0: off.
    pub softcap: f32,
    pub alibi_batch_stride: u32,
    /// A probability is kept iff its Philox word is below this; 0: no dropout.
    pub dropout_keep_threshold: u32,
    /// The kept probabilities' factor, `1 / (1 - p)`.
    pub dropout_scale: f32,
}

/// Backward: from dO (and the forward's O and LSE) to dQ, dK, dV.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BwdParams {
    pub fwd: FwdParams,
    pub d_o: u64,
    pub dq: u64,
    pub dk: u64,
    pub dv: u64,
    /// f32 (batch, heads, seqlen_q, head_dim) contiguous: dQ accumulated across K/V blocks.
    pub dq_accum: u64,
    /// f32 (batch, heads, seqlen_q): rowsum(dO ∘ O), computed by the preprocess kernel.
    pub softmax_d: u64,
    pub do_strides: Strides,
    pub dq_strides: Strides,
    pub dk_strides: Strides,
    pub dv_strides: Strides,
    /// Deterministic mode: u32 (batch, heads, ceil(seqlen_q / BLOCK_M)), zeroed, one turn counter
    /// per query tile that makes the key blocks add their dQ parts in key-block order
    /// (see [`crate::tiling::dq_turn`]). 0: reductions in any order (faster).
    pub dq_semaphore: u64,
    /// f32 (heads): the sinks' gradient, written by the sink-gradient kernel when sinks are on.
    pub d_sinks: u64,
    /// Grouped K/V heads (heads_k < heads): f32 (2, batch, seqlen_k, heads, head_dim) contiguous,
    /// each query head's dK then dV, which the group reduction sums into dK and dV. 0: the main
    /// kernel writes dK and dV itself.
    pub dkv_accum: u64,
}

impl BwdParams {
    /// [`FwdParams::sequence`] for the backward: dO and dQ move with Q, dK and dV with K.
    ///
    /// The parameter block a backward block runs on: for the `SEQ` kernels the sequence of grid
    /// index `block_z` resolved into `storage`, as a dense batch of one; the dense kernels read
    /// the block as it is (see [`FwdParams::of_block`]).
    ///
    /// # Safety
    /// As [`FwdParams::sequence`].
    #[inline(always)]
    pub unsafe fn of_block<'a, const SEQ: bool>(
        &'a self,
        block_z: u32,
        storage: &'a mut core::mem::MaybeUninit<BwdParams>,
    ) -> &'a BwdParams {
        if !SEQ {
            return self;
        }
        // SAFETY: forwarded from the caller.
        storage.write(unsafe { self.sequence(block_z) })
    }

    /// # Safety
    /// As [`FwdParams::sequence`].
    #[inline(always)]
    pub unsafe fn sequence(&self, batch: u32) -> BwdParams {
        let mut p = *self;
        // SAFETY: forwarded from the caller.
        p.fwd = unsafe { self.fwd.sequence(batch) };
        let shape = &self.fwd.shape;
        // SAFETY: as above (the same reads again; they hit the cache).
        let b = shape.layout.bounds(batch, shape.seqlen_q, shape.seqlen_k, |a, i| unsafe { read_index(a, i) });
        p.d_o = move_rows(self.d_o, &self.do_strides, b.q_row0, 0);
        p.dq = move_rows(self.dq, &self.dq_strides, b.q_row0, 0);
        p.dk = move_rows(self.dk, &self.dk_strides, b.k_row0, 0);
        p.dv = move_rows(self.dv, &self.dv_strides, b.k_row0, 0);
        p
    }
}

/// Index of element `(batch, key, head, 0)` of dK's half of the grouped-heads accumulator
/// ([`BwdParams::dkv_accum`]); dV's half starts [`dkv_accum_half`] floats later.
/// With `SEQ`, `shape` is a sequence's ([`AttnShape::for_sequence`]), which places it; with
/// `SEQ` false (the dense kernels, whose shape is the batch's) the dense formula.
#[inline(always)]
pub const fn dkv_accum_index<const SEQ: bool>(shape: &AttnShape, batch: u32, key: u32, head: u32) -> i64 {
    let row0 = if SEQ { shape.layout.dkv_row0 as i64 } else { batch as i64 * shape.seqlen_k as i64 };
    ((row0 + key as i64) * shape.heads as i64 + head as i64) * shape.head_dim as i64
}

/// Floats in one half (dK or dV) of the grouped-heads accumulator.
/// `shape` is a sequence's ([`AttnShape::for_sequence`]): `dkv_keys` is `total_k` for a packed
/// batch, else `batch · seqlen_k`; with `SEQ` false the dense batch's `batch · seqlen_k`.
#[inline(always)]
pub const fn dkv_accum_half<const SEQ: bool>(shape: &AttnShape) -> i64 {
    let keys = if SEQ { shape.layout.dkv_keys as i64 } else { shape.batch as i64 * shape.seqlen_k as i64 };
    keys * shape.heads as i64 * shape.head_dim as i64
}

/// Index of `(head, row)` of a sequence in the row statistics (LSE, D): contiguous
/// (batch, heads, seqlen_q) for a dense batch, (heads, total_q) for a packed one. `shape` is
/// the sequence's ([`AttnShape::for_sequence`]), which places it. With `SEQ` false (the dense
/// kernels, whose shape is the whole dense batch's) the dense formula.
#[inline(always)]
pub const fn row_stat_index<const SEQ: bool>(shape: &AttnShape, batch: u32, head: u32, row: u32) -> i64 {
    if SEQ {
        shape.layout.stat_base + head as i64 * shape.layout.stat_head_stride as i64 + row as i64
    } else {
        (batch as i64 * shape.heads as i64 + head as i64) * shape.seqlen_q as i64 + row as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout's arrays read on the host (the same code the kernels run on the device).
    fn bounds(layout: &SeqLayout, batch: u32, sq: u32, sk: u32) -> SeqBounds {
        layout.bounds(batch, sq, sk, |a, i| unsafe { read_index(a, i) })
    }

    #[test]
    fn a_dense_batch_is_every_entry_whole() {
        let shape = AttnShape { batch: 3, heads: 2, seqlen_q: 5, seqlen_k: 7, ..AttnShape::default() };
        let b = bounds(&shape.layout, 2, 5, 7);
        assert_eq!(b, SeqBounds { seqlen_q: 5, seqlen_k: 7, q_row0: 0, k_row0: 0, k_batch: 2 });
        let s = shape.for_sequence(&b, 2);
        // The dense formulas: (batch, heads, seqlen_q) statistics, batch · seqlen_k key rows.
        for (head, row) in [(0, 0), (1, 4)] {
            assert_eq!(row_stat_index::<true>(&s, 2, head, row), row_stat_index::<false>(&shape, 2, head, row));
        }
        assert_eq!(dkv_accum_index::<true>(&s, 2, 3, 1), dkv_accum_index::<false>(&shape, 2, 3, 1));
        assert_eq!(dkv_accum_half::<true>(&s), dkv_accum_half::<false>(&shape));
        assert_eq!(s.layout.stat_rows, 30);
        assert_eq!(shape.layout.split_of(4), (4, 0));
    }

    #[test]
    fn packed_sequences_and_caches_resolve_to_their_rows() {
        let (cu_q, cu_k, used, idx) = ([0i32, 4, 4, 9], [0i32, 10, 12, 20], [3i32, 2, 0], [2i32, 0, 1]);
        let layout = SeqLayout {
            cu_seqlens_q: cu_q.as_ptr() as u64,
            cu_seqlens_k: cu_k.as_ptr() as u64,
            total_q: 9,
            total_k: 20,
            num_splits: 4,
            ..SeqLayout::default()
        };
        let shape =
            AttnShape { batch: 3, heads: 2, seqlen_q: 5, seqlen_k: 10, head_dim: 8, layout, ..AttnShape::default() };
        let b = bounds(&layout, 2, 5, 10);
        assert_eq!(b, SeqBounds { seqlen_q: 5, seqlen_k: 8, q_row0: 4, k_row0: 12, k_batch: 2 });
        let s = shape.for_sequence(&b, 2);
        // (heads, total_q) statistics: head 1, row 3 of sequence 2 is 9 + 4 + 3.
        assert_eq!(row_stat_index::<true>(&s, 2, 1, 3), 16);
        assert_eq!(s.layout.stat_rows, 18);
        // Key 1 of sequence 2 is packed row 13 of the (total_k, heads, d) accumulator.
        assert_eq!(dkv_accum_index::<true>(&s, 2, 1, 1), (13 * 2 + 1) * 8);
        assert_eq!(dkv_accum_half::<true>(&s), 20 * 2 * 8);
        assert_eq!(shape.layout.split_of(11), (2, 3));
        // A cache: lengths in use and a batch map.
        let cache =
            SeqLayout { seqused_k: used.as_ptr() as u64, k_batch_index: idx.as_ptr() as u64, ..SeqLayout::default() };
        assert_eq!(bounds(&cache, 0, 1, 64), SeqBounds { seqlen_q: 1, seqlen_k: 3, q_row0: 0, k_row0: 0, k_batch: 2 });
        assert_eq!(bounds(&cache, 2, 1, 64).seqlen_k, 0);
        // K moves to its cache entry: entry 2 from batch 0 at batch stride 1000 elements.
        let strides = Strides { batch: 1000, row: 16, head: 8 };
        assert_eq!(move_rows(0x1000, &strides, 0, 2), 0x1000 + 4000);
        assert_eq!(move_rows(0x1000, &strides, 3, 0), 0x1000 + 96);
    }
}
