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

/// Index of element `(batch, key, head, 0)` of dK's half of the grouped-heads accumulator
/// ([`BwdParams::dkv_accum`]); dV's half starts [`dkv_accum_half`] floats later.
#[inline(always)]
pub const fn dkv_accum_index(shape: &AttnShape, batch: u32, key: u32, head: u32) -> i64 {
    ((batch as i64 * shape.seqlen_k as i64 + key as i64) * shape.heads as i64 + head as i64) * shape.head_dim as i64
}

/// Floats in one half (dK or dV) of the grouped-heads accumulator.
#[inline(always)]
pub const fn dkv_accum_half(shape: &AttnShape) -> i64 {
    shape.batch as i64 * shape.seqlen_k as i64 * shape.heads as i64 * shape.head_dim as i64
}

/// Index of `(batch, head, row)` in the contiguous (batch, heads, seqlen_q) LSE / D arrays.
#[inline(always)]
pub const fn row_stat_index(shape: &AttnShape, batch: u32, head: u32, row: u32) -> i64 {
    (batch as i64 * shape.heads as i64 + head as i64) * shape.seqlen_q as i64 + row as i64
}
