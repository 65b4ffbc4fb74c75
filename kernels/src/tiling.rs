//! Index, tiling and masking math shared by the kernels and the host.
//!
//! Everything here is plain integer arithmetic, compiled into the PTX and unit-tested on the CPU.
//!
//! [`Mask`] is the one definition of which keys a query sees (bottom-right aligned window; causal
//! is `(-1, 0)`); its [`Mask::key_range`] and [`Mask::query_range`] let forward and backward
//! blocks skip whole tiles, and [`Mask::tile_is_unmasked`] lets a tile skip per-element masking
//! (all three tested against brute force over shapes and windows). [`kv_head_of`] and
//! [`query_heads_of`] map query heads to K/V heads and back (GQA/MQA). The rest: the two
//! shared-memory swizzles ([`tile_byte_offset`] for `ldmatrix`, tested conflict-free for every
//! phase; [`sw128_byte_offset`] and [`wgmma_descriptor`] for `wgmma`), the deterministic
//! backward's turns ([`dq_turn`]), and the forward's heaviest-first Q tile order.

use crate::params::AttnShape;

#[inline(always)]
pub const fn ceil_div(a: u32, b: u32) -> u32 {
    a.div_ceil(b)
}

/// Which keys each query may attend to.
///
/// Queries and keys are aligned at the bottom-right corner (FlashAttention ≥ 2.1): query `i` sits
/// on the diagonal at key `i + seqlen_k - seqlen_q`. Causal attention lets query `i` see keys up to
/// that diagonal; when `seqlen_q > seqlen_k` the first `seqlen_q - seqlen_k` queries then see no
/// key at all (their output is 0 and their LSE +inf).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mask {
    pub seqlen_q: u32,
    pub seqlen_k: u32,
    /// Keys at most this far left of the diagonal; negative: unbounded.
    pub window_left: i32,
    /// Keys at most this far right of the diagonal; negative: unbounded. Causal is 0.
    pub window_right: i32,
}

impl Mask {
    #[inline(always)]
    pub const fn of(shape: &AttnShape) -> Self {
        Mask {
            seqlen_q: shape.seqlen_q,
            seqlen_k: shape.seqlen_k,
            window_left: shape.window_left,
            window_right: shape.window_right,
        }
    }

    #[inline(always)]
    const fn diagonal(&self, q: u32) -> i64 {
        q as i64 + self.seqlen_k as i64 - self.seqlen_q as i64
    }

    /// Whether query `q` attends to key `k` (both in range is part of the answer).
    #[inline(always)]
    pub const fn allows(&self, q: u32, k: u32) -> bool {
        if q >= self.seqlen_q || k >= self.seqlen_k {
            return false;
        }
        let diag = self.diagonal(q);
        let k = k as i64;
        (self.window_left < 0 || k >= diag - self.window_left as i64)
            && (self.window_right < 0 || k <= diag + self.window_right as i64)
    }

    /// The keys `[begin, end)` that some query of `[q_begin, q_end)` attends to (a superset per
    /// query: tiles inside it may still need element masks). Empty ranges come back as `begin == end`.
    #[inline(always)]
    pub const fn key_range(&self, q_begin: u32, q_end: u32) -> (u32, u32) {
        let q_end = if q_end > self.seqlen_q { self.seqlen_q } else { q_end };
        if q_begin >= q_end {
            return (0, 0);
        }
        let mut lo: i64 = 0;
        let mut hi: i64 = self.seqlen_k as i64;
        if self.window_left >= 0 {
            let l = self.diagonal(q_begin) - self.window_left as i64;
            if l > lo {
                lo = l;
            }
        }
        if self.window_right >= 0 {
            let h = self.diagonal(q_end - 1) + self.window_right as i64 + 1;
            if h < hi {
                hi = h;
            }
        }
        if hi <= lo { (0, 0) } else { (lo as u32, hi as u32) }
    }

    /// The queries `[begin, end)` that attend to some key of `[k_begin, k_end)`.
    #[inline(always)]
    pub const fn query_range(&self, k_begin: u32, k_end: u32) -> (u32, u32) {
        let k_end = if k_end > self.seqlen_k { self.seqlen_k } else { k_end };
        if k_begin >= k_end {
            return (0, 0);
        }
        let offset = self.seqlen_k as i64 - self.seqlen_q as i64;
        let mut lo: i64 = 0;
        let mut hi: i64 = self.seqlen_q as i64;
        if self.window_right >= 0 {
            // q + offset + right >= k_begin
            let l = k_begin as i64 - offset - self.window_right as i64;
            if l > lo {
                lo = l;
            }
        }
        if self.window_left >= 0 {
            // q + offset - left <= k_end - 1
            let h = k_end as i64 - 1 - offset + self.window_left as i64 + 1;
            if h < hi {
                hi = h;
            }
        }
        if hi <= lo { (0, 0) } else { (lo as u32, hi as u32) }
    }

    /// Whether every (query, key) pair of the tile is attended, so the kernel can skip the
    /// per-element mask. Tiles that overhang the sequence ends always need the mask.
    #[inline(always)]
    pub const fn tile_is_unmasked(&self, q_begin: u32, q_end: u32, k_begin: u32, k_end: u32) -> bool {
        if q_end > self.seqlen_q || k_end > self.seqlen_k || q_begin >= q_end || k_begin >= k_end {
            return false;
        }
        let right_ok = self.window_right < 0 || (k_end - 1) as i64 <= self.diagonal(q_begin) + self.window_right as i64;
        let left_ok = self.window_left < 0 || k_begin as i64 >= self.diagonal(q_end - 1) - self.window_left as i64;
        right_ok && left_ok
    }

    /// The keys query `q` attends to, as one interval: `allows(q, k) == keys_of(q).contains(k)`
    /// (for a fixed query the window and the sequence end leave one run of keys).
    #[inline(always)]
    pub const fn keys_of(&self, q: u32) -> Span {
        let (begin, end) = self.key_range(q, q.saturating_add(1));
        Span { begin, len: end - begin }
    }

    /// The queries that attend to key `k`: `allows(q, k) == queries_of(k).contains(q)`.
    #[inline(always)]
    pub const fn queries_of(&self, k: u32) -> Span {
        let (begin, end) = self.query_range(k, k.saturating_add(1));
        Span { begin, len: end - begin }
    }
}

/// Whether the kernels' per-element masks test each fragment row's [`Span`] (one unsigned compare
/// an element, no branch: the `span-masks` feature, the v39 candidate) or call [`Mask::allows`]
/// (64-bit window arithmetic and an early return per element).
pub const SPAN_MASKS: bool = cfg!(feature = "span-masks");

/// A half-open run of indices `[begin, begin + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub begin: u32,
    pub len: u32,
}

impl Span {
    /// One unsigned compare: indices below `begin` wrap to large values.
    #[inline(always)]
    pub const fn contains(&self, i: u32) -> bool {
        i.wrapping_sub(self.begin) < self.len
    }
}

/// The mask as one thread's accumulator fragment meets it: its rows (`fragment_element`'s
/// `lane / 4` and `lane / 4 + 8`, for elements 0–1 and 2–3) are fixed, the other index runs over
/// the columns. In the forward the rows are queries; in the backward's transposed scores (Sᵀ)
/// they are keys.
#[derive(Clone, Copy, Debug)]
pub struct FragmentMask {
    mask: Mask,
    /// The first row; the second is 8 below it.
    row: u32,
    rows_are_queries: bool,
    spans: [Span; 2],
}

impl FragmentMask {
    /// Rows are queries `row` and `row + 8`; columns are keys.
    #[inline(always)]
    pub const fn of_queries(mask: Mask, row: u32) -> Self {
        let spans = [mask.keys_of(row), mask.keys_of(row.saturating_add(8))];
        FragmentMask { mask, row, rows_are_queries: true, spans }
    }

    /// Rows are keys `row` and `row + 8`; columns are queries.
    #[inline(always)]
    pub const fn of_keys(mask: Mask, row: u32) -> Self {
        let spans = [mask.queries_of(row), mask.queries_of(row.saturating_add(8))];
        FragmentMask { mask, row, rows_are_queries: false, spans }
    }

    /// Whether fragment element `e` (0–3: its row is `e / 2`) at column index `col` is attended,
    /// the way this build's kernels test it ([`SPAN_MASKS`]).
    #[inline(always)]
    pub const fn allows(&self, e: u32, col: u32) -> bool {
        if SPAN_MASKS { self.allows_by_span(e, col) } else { self.allows_by_mask(e, col) }
    }

    #[inline(always)]
    pub const fn allows_by_span(&self, e: u32, col: u32) -> bool {
        if e / 2 == 0 { self.spans[0].contains(col) } else { self.spans[1].contains(col) }
    }

    #[inline(always)]
    pub const fn allows_by_mask(&self, e: u32, col: u32) -> bool {
        let row = self.row + 8 * (e / 2);
        if self.rows_are_queries { self.mask.allows(row, col) } else { self.mask.allows(col, row) }
    }
}

/// Shared-memory tiles hold rows of 16-bit elements in 16-byte chunks (8 elements), the unit
/// of `cp.async` and of one `ldmatrix` row. The chunk index is XOR-swizzled with the row so that
/// the 8 rows one `ldmatrix` phase reads fall in 8 different 16-byte bank groups.
#[inline(always)]
pub const fn swizzle_chunk(row: u32, chunk: u32, chunks_per_row: u32) -> u32 {
    if chunks_per_row % 8 == 0 {
        // Rows of a multiple of 128 bytes all start in bank group 0: permute the low three
        // chunk bits.
        chunk ^ (row & 7)
    } else if chunks_per_row % 4 == 0 {
        // Rows of 64 bytes plus a multiple of 128 (head_dim 32, 96): odd rows start half a
        // line over, so permuting the low two chunk bits by the row pair covers all 8 groups.
        chunk ^ ((row >> 1) & 3)
    } else {
        chunk
    }
}

/// Byte offset of `(row, chunk)` in a swizzled tile with `chunks_per_row` chunks per row.
#[inline(always)]
pub const fn tile_byte_offset(row: u32, chunk: u32, chunks_per_row: u32) -> u32 {
    (row * chunks_per_row + swizzle_chunk(row, chunk, chunks_per_row)) * 16
}

/// Deterministic backward: the turn of key block `key_block` at query tile `q_tile`, i.e. how
/// many key blocks add their part of that tile's dQ before it. The key blocks that visit a query
/// tile (those whose `query_range` reaches it) are consecutive and start at the block holding
/// the tile's first visible key, so waiting for `counter == turn` and then incrementing the
/// counter fixes the order of the f32 additions, whatever the blocks' timing.
#[inline(always)]
pub const fn dq_turn(mask: &Mask, key_block: u32, q_tile: u32, block_m: u32, block_n: u32) -> u32 {
    let (key_lo, _) = mask.key_range(q_tile * block_m, (q_tile + 1) * block_m);
    key_block - key_lo / block_n
}

/// Index of the turn counter of `(batch, head, q_tile)` in the deterministic-mode array.
#[inline(always)]
pub const fn dq_semaphore_index<const SEQ: bool>(
    shape: &AttnShape,
    batch: u32,
    head: u32,
    q_tile: u32,
    block_m: u32,
) -> i64 {
    // Sized by the grid's rows per sequence (a sequence's shape, `SEQ`, carries the batch's
    // max_seqlen_q), not this sequence's.
    let rows = if SEQ { shape.layout.max_seqlen_q } else { shape.seqlen_q };
    (batch as i64 * shape.heads as i64 + head as i64) * ceil_div(rows, block_m) as i64 + q_tile as i64
}

/// Hopper's tensor-core layout ("128-byte swizzle"): a tile of `rows` rows is cut into panels of
/// 64 columns (128 bytes a row); a panel stores its rows 128 bytes apart, and the 16-byte chunk
/// `c` of row `r` sits at chunk position `c ^ (r % 8)`. `wgmma` reads this layout straight from
/// shared memory through a [`wgmma_descriptor`]; the XOR acts on address bits 4–6 against bits
/// 7–9, so every panel must start on a 1024-byte boundary.
#[inline(always)]
pub const fn sw128_byte_offset(row: u32, chunk: u32, rows: u32) -> u32 {
    (chunk / 8) * rows * 128 + row * 128 + ((chunk % 8) ^ (row % 8)) * 16
}

/// The 64-byte swizzle (`wgmma` swizzle mode 2), for K-major operands of 64 bytes a row (the FP8
/// forward's Vᵀ tile of 64 keys): rows 64 bytes apart, the 16-byte chunk `c` (0..4) of row `r` at
/// chunk position `c ^ (r / 2 % 4)`. The XOR acts on address bits 4–5 against bits 7–8, so the
/// tile must start on a 512-byte boundary (one 8-row group, [`SW64_ROW_GROUP_BYTES`]).
#[inline(always)]
pub const fn sw64_byte_offset(row: u32, chunk: u32) -> u32 {
    row * 64 + ((chunk % 4) ^ (row / 2 % 4)) * 16
}

/// Bytes of one 8-row group of a 64-byte-swizzled tile: the stride between row groups.
pub const SW64_ROW_GROUP_BYTES: u32 = 512;

/// Byte offset of f32 element `(row, col)` in the backward's dQ staging tile, whose rows are
/// `row_bytes` apart: `4 · head_dim + 32`, so that each row stays one contiguous bulk reduction
/// into the global accumulator (16-byte aligned) while the accumulator pairs a half-warp stores
/// (rows `r..r + 4`, columns `c, c + 2, c + 4, c + 6` and the next ones) fall in 16 distinct bank
/// pairs.
#[inline(always)]
pub const fn dq_staging_offset(row: u32, col: u32, row_bytes: u32) -> u32 {
    row * row_bytes + 4 * col
}

/// Bytes of one 8-row group of a 128-byte-swizzled panel: the stride between row groups.
pub const SW128_ROW_GROUP_BYTES: u32 = 1024;

/// A `wgmma` shared-memory matrix descriptor for a 128-byte-swizzled operand at shared address
/// `addr`: bits 0–13 the address, 16–29 the leading-dimension byte offset, 32–45 the
/// stride-dimension byte offset (all three in 16-byte units), 62–63 the swizzle mode (1 = 128 B).
/// For an operand stored K-major (rows along M or N, the reduction dimension along a row) the
/// stride offset steps from one 8-row group to the next and the leading offset is unused; for an
/// MN-major operand (rows along K) the stride offset steps between 8-row groups along K and the
/// leading offset between 64-column panels along N.
#[inline(always)]
pub const fn wgmma_descriptor(addr: u32, leading_bytes: u32, stride_bytes: u32) -> u64 {
    descriptor_with_swizzle(addr, leading_bytes, stride_bytes, 1)
}

/// [`wgmma_descriptor`] for a 64-byte-swizzled K-major operand ([`sw64_byte_offset`]; swizzle
/// mode 2): the stride offset steps between 8-row groups ([`SW64_ROW_GROUP_BYTES`]).
#[inline(always)]
pub const fn wgmma_descriptor_sw64(addr: u32, leading_bytes: u32, stride_bytes: u32) -> u64 {
    descriptor_with_swizzle(addr, leading_bytes, stride_bytes, 2)
}

#[inline(always)]
const fn descriptor_with_swizzle(addr: u32, leading_bytes: u32, stride_bytes: u32, mode: u64) -> u64 {
    ((addr as u64 >> 4) & 0x3fff)
        | (((leading_bytes as u64 >> 4) & 0x3fff) << 16)
        | (((stride_bytes as u64 >> 4) & 0x3fff) << 32)
        | (mode << 62)
}

/// The K/V head that query head `head` reads: heads are grouped evenly over `heads_k`
/// (grouped-query attention; `heads_k == heads` is the plain case). Written without a panicking division: the host
/// guarantees `heads_k` divides `heads`, and a zero would fall back to the head itself.
#[inline(always)]
pub const fn kv_head_of(shape: &AttnShape, head: u32) -> u32 {
    head / group_size(shape)
}

/// The query heads `[begin, end)` that read K/V head `kv_head` (all of them attend with it).
#[inline(always)]
pub const fn query_heads_of(shape: &AttnShape, kv_head: u32) -> (u32, u32) {
    let group = group_size(shape);
    (kv_head * group, (kv_head + 1) * group)
}

/// Query heads per K/V head, `heads / heads_k`; 1 where that is not positive (never for a
/// validated shape), so that no caller divides by zero.
#[inline(always)]
const fn group_size(shape: &AttnShape) -> u32 {
    match shape.heads.checked_div(shape.heads_k) {
        Some(g) if g > 0 => g,
        _ => 1,
    }
}

/// The (row, chunk) that thread `tid` of `threads` copies in its `i`-th step of a tile load,
/// chunks numbered row by row: chunk `tid + i · threads`. When `threads` is a multiple of the
/// row's chunk count, every step keeps the thread's chunk column and moves it
/// `threads / chunks_per_row` rows down, written so that the compiler sees it (the swizzle term
/// and the column are then computed once per tile).
#[inline(always)]
pub const fn copy_position(tid: u32, i: u32, threads: u32, chunks_per_row: u32) -> (u32, u32) {
    if threads.is_multiple_of(chunks_per_row) {
        (tid / chunks_per_row + i * (threads / chunks_per_row), tid % chunks_per_row)
    } else {
        let index = tid + i * threads;
        (index / chunks_per_row, index % chunks_per_row)
    }
}

/// Split-KV: the key tiles `first..end` a block covers cut into `splits` near-equal ranges
/// (the first ones one tile longer); range `split` of them, empty when there are fewer tiles
/// than splits. `splits` 1 is the whole range.
#[inline(always)]
pub const fn split_tiles((first, end): (u32, u32), split: u32, splits: u32) -> (u32, u32) {
    if splits <= 1 {
        return (first, end);
    }
    let n = if end > first { end - first } else { 0 };
    let (per, extra) = (n / splits, n % splits);
    let lo = first + split * per + if split < extra { split } else { extra };
    let len = per + if split < extra { 1 } else { 0 };
    (lo, lo + len)
}

/// The host's split-KV choice: enough splits that `blocks` (query tiles · heads · batch) fill
/// `sms` multiprocessors about `waves` times over, each split keeping at least `min_tiles` key
/// tiles of the `key_tiles` a block sees, at most `max_splits`. 1 when the grid already fills the
/// GPU or the keys are few.
pub const fn choose_splits(blocks: u32, key_tiles: u32, sms: u32, min_tiles: u32, max_splits: u32) -> u32 {
    if blocks == 0 || key_tiles == 0 || blocks >= sms {
        return 1;
    }
    // Blocks wanted: two per SM hide the epilogue and the tail.
    let wanted = ceil_div(2 * sms, blocks);
    let by_keys = if min_tiles == 0 { key_tiles } else { key_tiles / min_tiles };
    let mut s = wanted;
    if s > by_keys {
        s = by_keys;
    }
    if s > max_splits {
        s = max_splits;
    }
    if s < 1 { 1 } else { s }
}

/// The decode kernel's split-KV choice. A decode block takes most of an SM's shared memory
/// (`decode_smem_bytes`: one block per SM on Hopper and A100), so `groups · splits` blocks run in
/// whole waves of `sms`; a wave lasts as long as its blocks' key blocks plus about one key
/// block's worth of fixed cost (launch, the Q tile, filling the pipeline). The choice minimises
/// `waves · (ceil(key_blocks / s) + 1)` over `s` in `1..=max_splits` with at least `min_blocks`
/// key blocks a split, the smallest `s` on ties. (Measured on the H200 in v18: the 2-per-SM
/// rule of [`choose_splits`] left the last of 2.4 waves 40% full at batch 8.)
pub const fn choose_decode_splits(groups: u32, key_blocks: u32, sms: u32, min_blocks: u32, max_splits: u32) -> u32 {
    if groups == 0 || key_blocks == 0 || sms == 0 {
        return 1;
    }
    let by_keys = if min_blocks == 0 { key_blocks } else { key_blocks / min_blocks };
    let limit = if by_keys < max_splits { by_keys } else { max_splits };
    let (mut best, mut best_cost) = (1u32, u64::MAX);
    let mut s = 1u32;
    while s <= limit {
        let waves = ceil_div(groups * s, sms) as u64;
        let cost = waves * (ceil_div(key_blocks, s) as u64 + 1);
        if cost < best_cost {
            (best, best_cost) = (s, cost);
        }
        s += 1;
    }
    best
}

// The decode kernel's shape (`decode.rs`), shared with the registry and the host.

/// Warps per block, each streaming its own key tiles.
pub const DECODE_WARPS: u32 = 4;
/// Packed query rows (one mma tile): group · seqlen_q must fit.
pub const DECODE_ROWS: u32 = 16;

/// Keys per warp tile for head dim `d`.
pub const fn decode_keys(d: u32) -> u32 {
    if d <= 128 { 32 } else { 16 }
}

/// K/V stages per warp of the decode kernel: three on Hopper (two tiles in flight per warp: a
/// decode is bound by the bytes in flight), two where shared memory is an A100's 163 KiB.
pub const fn decode_stages(sm90a: bool) -> u32 {
    if sm90a { 3 } else { 2 }
}

/// Dynamic shared memory of the decode kernel for head dim `d`: the Q tile and each warp's
/// K and V stages (the merge reuses the stages).
pub const fn decode_smem_bytes(d: u32, stages: u32) -> u32 {
    DECODE_ROWS * d * 2 + DECODE_WARPS * stages * 2 * decode_keys(d) * d * 2
}

/// Keys one block iteration covers (the split heuristic's unit).
pub const fn decode_block_keys(d: u32) -> u32 {
    DECODE_WARPS * decode_keys(d)
}

/// Grid dimension x of the forward: Q tiles, issued heaviest first for causal masks.
#[inline(always)]
pub const fn q_tile_of_block(block_x: u32, num_q_tiles: u32) -> u32 {
    num_q_tiles - 1 - block_x
}

/// The persistent forward's tile schedule: a grid of `blocks` blocks loops over the
/// `q_tiles · heads · batch` query tiles of a dense call, block `block` taking tile
/// `round · blocks + block` in round `round`. Tiles run in the order a one-tile-a-block grid
/// `(q_tiles, heads, batch)` issues its blocks (query tile fastest, heaviest first through
/// [`q_tile_of_block`]), so that the blocks running together share one head's K and V in L2
/// (v30's first order, query-tile rank first across all heads, streamed every head's K and V
/// at once and lost 4–17%). Returns `(block_x, head, batch)` as that grid would hold them, or
/// `None` once the block has no tile left (every later round of it is past the end too). A
/// static schedule balances only uniform work: for masked calls (causal, windows) the blocks
/// take tile indices in this order from a counter as they free up (`FwdParams::tile_counter`),
/// which is what the hardware does for a one-tile-a-block grid.
pub const fn persistent_tile(
    round: u32,
    block: u32,
    blocks: u32,
    (q_tiles, heads, batch): (u32, u32, u32),
) -> Option<(u32, u32, u32)> {
    let t = round as u64 * blocks as u64 + block as u64;
    if t >= q_tiles as u64 * heads as u64 * batch as u64 {
        return None;
    }
    // (Checked: no panic path in the kernels; `t` < the tile count makes the divisors nonzero.)
    let (Some(rank), Some(pair)) = (t.checked_rem(q_tiles as u64), t.checked_div(q_tiles as u64)) else {
        return None;
    };
    let pair = pair as u32;
    match (pair.checked_rem(heads), pair.checked_div(heads)) {
        (Some(head), Some(batch)) => Some((rank as u32, head, batch)),
        _ => None,
    }
}

/// Registers per thread a block of `threads` threads gets at launch (`.maxntid`): 64 K over the
/// threads, in multiples of 8, at most 255. A warp-specialized block's `setmaxnreg` splits share
/// this pool: a raising warpgroup gets only what the others handed back, not the SM's 64 K.
pub const fn launch_registers(threads: u32) -> u32 {
    let per_thread = 65536 / if threads == 0 { 1 } else { threads } / 8 * 8;
    if per_thread > 255 { 255 } else { per_thread }
}

/// Blocks of a persistent forward launch: one per SM, never more than there are tiles.
pub const fn persistent_blocks(tiles: u64, sm_count: u32) -> u32 {
    let sms = if sm_count == 0 { 1 } else { sm_count };
    if tiles < sms as u64 { tiles as u32 } else { sms }
}

/// The FP8 P·V product's key order. The e4m3 `wgmma` takes its A operand (P) from registers in
/// 32-key steps, thread `lane` holding positions `4 · (lane % 4) + 0..4` and `16 +` those of
/// its two rows, while the score accumulators leave it keys `2 · (lane % 4) + {0, 1}` of each
/// 8-key tile. Rather than shuffle P, the 32 key positions of each step are read in this order:
/// position `16h + 4q + r` holds key `16h + 8 · (r / 2) + 2q + r % 2` (`h` < 2, `q`, `r` < 4), so a
/// thread packs its own scores, in accumulator order, straight into the operand. Vᵀ is stored
/// in the same order (`flash_fp8_transpose_v`), which makes the product the one over the keys.
pub const fn fp8_key_of_position(position: u32) -> u32 {
    let (h, q, r) = (position / 16, position / 4 % 4, position % 4);
    32 * (position / 32) + 16 * (h % 2) + 8 * (r / 2) + 2 * q + r % 2
}

/// Keys per block of the FP8 forward's V transpose (`fp8_transpose_v`).
pub const FP8_TRANSPOSE_KEYS: u32 = 128;

/// Keys of the FP8 forward's transposed V (`Vᵀ`, one row per head-dim column): seqlen_k rounded
/// up to whole key tiles of `block_n` (64, 128 or 192), then to whole transpose blocks (the
/// columns past seqlen_k are zeros), at least one.
pub const fn fp8_transposed_keys(seqlen_k: u32, block_n: u32) -> u32 {
    let tiles = ceil_div(if seqlen_k == 0 { 1 } else { seqlen_k }, block_n);
    ceil_div(tiles * block_n, FP8_TRANSPOSE_KEYS) * FP8_TRANSPOSE_KEYS
}

/// Use `i` (counted from 0) of a ring of `stages` buffers, each guarded by mbarriers that complete
/// one phase per use: the buffer and the parity of that use's phase.
pub const fn ring_slot(i: u32, stages: u32) -> (u32, u32) {
    (i % stages, (i / stages) % 2)
}

#[cfg(test)]
mod tests {
    use super::{fp8_key_of_position, fp8_transposed_keys, ring_slot};

    #[test]
    fn ring_slots_cycle_and_flip_parity_per_round() {
        for stages in 1..=4 {
            for i in 0..40 {
                let (stage, parity) = ring_slot(i, stages);
                assert!(stage < stages);
                // The next use of the same buffer is one round later, at the other parity.
                assert_eq!(ring_slot(i + stages, stages), (stage, parity ^ 1));
                // Consecutive uses take consecutive buffers.
                assert_eq!(ring_slot(i + 1, stages).0, (stage + 1) % stages);
            }
        }
        assert_eq!(ring_slot(0, 2), (0, 0));
        assert_eq!(ring_slot(5, 2), (1, 0));
    }

    #[test]
    fn fp8_key_order_is_a_permutation_matching_the_accumulators() {
        // Within each 32-key step, a bijection.
        let mut seen = [false; 64];
        for position in 0..64 {
            let key = fp8_key_of_position(position);
            assert_eq!(key / 32, position / 32);
            assert!(!seen[key as usize]);
            seen[key as usize] = true;
        }
        // Register r of A-fragment half h of lane q holds position 16h + 4q + r; the thread's
        // score accumulators hold keys 8t + 2q + e of tiles t, elements e < 2. Packing tile
        // 2h + r / 2, element r % 2 into that byte must name the key at that position.
        for q in 0..4 {
            for h in 0..2 {
                for r in 0..4 {
                    let (tile, element) = (2 * h + r / 2, r % 2);
                    assert_eq!(fp8_key_of_position(16 * h + 4 * q + r), 8 * tile + 2 * q + element);
                }
            }
        }
    }

    #[test]
    fn fp8_transposed_keys_are_whole_tiles() {
        assert_eq!(fp8_transposed_keys(1, 128), 128);
        assert_eq!(fp8_transposed_keys(128, 128), 128);
        assert_eq!(fp8_transposed_keys(129, 128), 256);
        assert_eq!(fp8_transposed_keys(0, 128), 128);
        // 64-key tiles (head_dim 256): still whole transpose blocks of 128 keys.
        for seqlen_k in [0, 1, 63, 64, 65, 128, 129, 1000] {
            let keys = fp8_transposed_keys(seqlen_k, 64);
            assert!(keys % 128 == 0 && keys >= seqlen_k && keys < seqlen_k.max(1) + 128);
        }
        // 192-key tiles (head_dim 128 candidate): whole tiles, then whole transpose blocks.
        assert_eq!(fp8_transposed_keys(0, 192), 256);
        assert_eq!(fp8_transposed_keys(192, 192), 256);
        assert_eq!(fp8_transposed_keys(193, 192), 384);
        assert_eq!(fp8_transposed_keys(385, 192), 640);
        for seqlen_k in 0..2000 {
            let keys = fp8_transposed_keys(seqlen_k, 192);
            assert!(keys % 128 == 0 && keys >= seqlen_k.max(1).div_ceil(192) * 192, "{seqlen_k}");
            assert!(keys < seqlen_k.max(1).div_ceil(192) * 192 + 128, "{seqlen_k}");
        }
    }

    #[test]
    fn split_ranges_partition_the_key_tiles() {
        for first in [0u32, 3] {
            for n in 0..40u32 {
                for splits in 1..20u32 {
                    let mut next = first;
                    let mut longest = 0;
                    let mut shortest = u32::MAX;
                    for split in 0..splits {
                        let (lo, hi) = super::split_tiles((first, first + n), split, splits);
                        assert_eq!(lo, next, "ranges follow each other");
                        assert!(hi >= lo);
                        longest = longest.max(hi - lo);
                        shortest = shortest.min(hi - lo);
                        next = hi;
                    }
                    assert_eq!(next, first + n, "ranges cover every tile");
                    assert!(longest - shortest <= 1, "near-equal");
                }
            }
        }
        assert_eq!(super::split_tiles((5, 5), 0, 4), (5, 5));
    }

    #[test]
    fn split_choice_fills_the_gpu_only_when_needed() {
        use super::choose_splits;
        // Decode, batch 1, 32 heads, 32k keys in 128-key tiles: up to the cap.
        assert_eq!(choose_splits(32, 256, 132, 4, 64), 9);
        // A full grid needs no split; nor do few keys.
        assert_eq!(choose_splits(264, 256, 132, 4, 64), 1);
        assert_eq!(choose_splits(8, 3, 132, 4, 64), 1);
        // Bounded by the keys and by the cap.
        assert_eq!(choose_splits(1, 16, 132, 4, 64), 4);
        assert_eq!(choose_splits(1, 10_000, 132, 4, 64), 64);
        assert_eq!(choose_splits(0, 10, 132, 4, 64), 1);
    }

    #[test]
    fn decode_splits_fill_whole_waves() {
        use super::{choose_decode_splits, decode_smem_bytes, decode_stages};
        // One decode block per SM: two do not fit 228 KiB (Hopper) or 164 KiB (A100).
        assert!(2 * decode_smem_bytes(128, decode_stages(true)) > 228 * 1024);
        assert!(2 * decode_smem_bytes(128, decode_stages(false)) > 164 * 1024);
        // Batch 8 × 8 K/V heads, 4k keys in 128-key blocks: two splits, 128 blocks in one wave
        // (five would make 320 blocks: two full waves and one 42% full).
        assert_eq!(choose_decode_splits(64, 32, 132, 2, 128), 2);
        assert_eq!(choose_decode_splits(64, 256, 132, 2, 128), 2);
        // Batch 1: 16 splits fill one wave of 128 blocks.
        assert_eq!(choose_decode_splits(8, 128, 132, 2, 128), 16);
        assert_eq!(choose_decode_splits(8, 256, 132, 2, 128), 16);
        // A grid of several waves already: no split; few keys: bounded by them.
        assert_eq!(choose_decode_splits(512, 256, 132, 2, 128), 1);
        assert_eq!(choose_decode_splits(8, 8, 132, 2, 128), 4);
        assert_eq!(choose_decode_splits(8, 1, 132, 2, 128), 1);
        assert_eq!(choose_decode_splits(0, 10, 132, 2, 128), 1);
        // Every choice is within the bounds.
        for groups in [1, 3, 8, 64, 100, 131, 132, 133, 1000] {
            for key_blocks in [1, 2, 7, 64, 1000] {
                let s = choose_decode_splits(groups, key_blocks, 132, 2, 128);
                assert!(s >= 1 && s <= 128 && (s == 1 || s <= key_blocks / 2), "{groups} {key_blocks}: {s}");
            }
        }
    }

    #[test]
    fn dq_staging_stores_are_conflict_free_and_rows_bulk_aligned() {
        for head_dim in [64u32, 128] {
            let row_bytes = 4 * head_dim + 32;
            assert_eq!(row_bytes % 16, 0, "bulk reductions read 16-byte aligned rows");
            // One `st.shared.v2.f32` of a warp: lane l stores row r0 + l / 4, columns
            // c0 + 2·(l % 4) and the next. Shared memory serves 8-byte accesses a half-warp per
            // wavefront: its 16 lanes must cover 32 distinct banks.
            for r0 in (0..64).step_by(8) {
                for c0 in (0..head_dim).step_by(8) {
                    for half_warp in 0..2u32 {
                        let mut banks = [false; 32];
                        for lane in 16 * half_warp..16 * half_warp + 16 {
                            let at = dq_staging_offset(r0 + lane / 4, c0 + 2 * (lane % 4), row_bytes);
                            assert_eq!(at % 8, 0);
                            for word in [at / 4, at / 4 + 1] {
                                let bank = (word % 32) as usize;
                                assert!(!banks[bank], "d{head_dim} rows {r0}+ cols {c0}+: bank {bank} twice");
                                banks[bank] = true;
                            }
                        }
                    }
                }
            }
        }
    }

    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn masks() -> Vec<Mask> {
        let mut out = Vec::new();
        for &(sq, sk) in &[(1, 1), (1, 7), (7, 1), (5, 5), (13, 29), (29, 13), (64, 64), (3, 100)] {
            for &(l, r) in &[(-1, -1), (-1, 0), (0, 0), (3, 2), (-1, 5), (4, -1)] {
                out.push(Mask { seqlen_q: sq, seqlen_k: sk, window_left: l, window_right: r });
            }
        }
        out
    }

    #[test]
    fn spans_are_exactly_the_mask() {
        let mut extra = masks();
        // Long sequences and windows near the ends, and the largest indices.
        for &(sq, sk) in &[(4096, 4096), (1000, 5000), (5000, 1000)] {
            for &(l, r) in &[(-1, 0), (128, 0), (1000, 1000), (0, -1)] {
                extra.push(Mask { seqlen_q: sq, seqlen_k: sk, window_left: l, window_right: r });
            }
        }
        for m in extra {
            let (sq, sk) = (m.seqlen_q, m.seqlen_k);
            // Indices past both ends (a tile overhanging the sequence) and the wrap-around edge.
            let qs: Vec<u32> = (0..sq.min(70) + 3).chain([sq / 2, sq.saturating_sub(1), sq + 40, u32::MAX]).collect();
            let ks: Vec<u32> = (0..sk.min(70) + 3).chain([sk / 2, sk.saturating_sub(1), sk + 40, u32::MAX]).collect();
            for &q in &qs {
                let keys = m.keys_of(q);
                for &k in &ks {
                    let want = m.allows(q, k);
                    assert_eq!(keys.contains(k), want, "{m:?} q {q} k {k}");
                    assert_eq!(m.queries_of(k).contains(q), want, "{m:?} q {q} k {k}");
                }
            }
            // The fragment view: both rows, both orientations, both tests, against the mask.
            for &r in qs.iter().filter(|&&r| r < u32::MAX - 8).take(40) {
                let (fq, fk) = (FragmentMask::of_queries(m, r), FragmentMask::of_keys(m, r));
                for e in 0..4 {
                    let row = r + 8 * (e / 2);
                    for &c in ks.iter().chain(&qs) {
                        let (by_q, by_k) = (m.allows(row, c), m.allows(c, row));
                        assert_eq!((fq.allows_by_span(e, c), fq.allows_by_mask(e, c)), (by_q, by_q), "{m:?} {row} {c}");
                        assert_eq!((fk.allows_by_span(e, c), fk.allows_by_mask(e, c)), (by_k, by_k), "{m:?} {row} {c}");
                        assert_eq!((fq.allows(e, c), fk.allows(e, c)), (by_q, by_k));
                    }
                }
            }
        }
    }

    #[test]
    fn causal_is_bottom_right_aligned() {
        let m = Mask { seqlen_q: 2, seqlen_k: 5, window_left: -1, window_right: 0 };
        // Last query sees every key; the first sees all but the last.
        assert!((0..5).all(|k| m.allows(1, k)));
        assert!((0..4).all(|k| m.allows(0, k)) && !m.allows(0, 4));
        let tall = Mask { seqlen_q: 5, seqlen_k: 2, window_left: -1, window_right: 0 };
        // seqlen_q > seqlen_k: the first three queries see nothing.
        assert!((0..3).all(|q| (0..2).all(|k| !tall.allows(q, k))));
        assert!(tall.allows(3, 0) && !tall.allows(3, 1) && tall.allows(4, 1));
    }

    #[test]
    fn key_range_covers_exactly_the_attended_keys() {
        for m in masks() {
            for qb in 0..m.seqlen_q {
                for qe in qb + 1..=m.seqlen_q.min(qb + 9) {
                    let (lo, hi) = m.key_range(qb, qe);
                    let attended: Vec<u32> = (0..m.seqlen_k).filter(|&k| (qb..qe).any(|q| m.allows(q, k))).collect();
                    match (attended.first(), attended.last()) {
                        (Some(&a), Some(&b)) => assert_eq!((lo, hi), (a, b + 1), "{m:?} q {qb}..{qe}"),
                        _ => assert_eq!(lo, hi, "{m:?} q {qb}..{qe}"),
                    }
                }
            }
        }
    }

    #[test]
    fn query_range_covers_exactly_the_attending_queries() {
        for m in masks() {
            for kb in 0..m.seqlen_k {
                for ke in kb + 1..=m.seqlen_k.min(kb + 9) {
                    let (lo, hi) = m.query_range(kb, ke);
                    let attending: Vec<u32> = (0..m.seqlen_q).filter(|&q| (kb..ke).any(|k| m.allows(q, k))).collect();
                    match (attending.first(), attending.last()) {
                        (Some(&a), Some(&b)) => assert_eq!((lo, hi), (a, b + 1), "{m:?} k {kb}..{ke}"),
                        _ => assert_eq!(lo, hi, "{m:?} k {kb}..{ke}"),
                    }
                }
            }
        }
    }

    #[test]
    fn unmasked_tiles_really_are() {
        for m in masks() {
            for qb in 0..m.seqlen_q + 2 {
                for kb in 0..m.seqlen_k + 2 {
                    for (qe, ke) in [(qb + 1, kb + 1), (qb + 4, kb + 3), (qb + 8, kb + 8)] {
                        let all = (qb..qe).all(|q| (kb..ke).all(|k| m.allows(q, k)));
                        assert_eq!(m.tile_is_unmasked(qb, qe, kb, ke), all, "{m:?} {qb}..{qe} x {kb}..{ke}");
                    }
                }
            }
        }
    }

    #[test]
    fn swizzle_is_a_permutation_of_each_row() {
        for cpr in [4u32, 8, 12, 16, 24, 32] {
            for row in 0..64 {
                let mut seen: Vec<u32> = (0..cpr).map(|c| swizzle_chunk(row, c, cpr)).collect();
                seen.sort();
                assert_eq!(seen, (0..cpr).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn ldmatrix_phases_are_free_of_bank_conflicts() {
        // One ldmatrix phase reads one 16-byte chunk from each of 8 consecutive rows.
        for cpr in [4u32, 8, 12, 16, 24, 32] {
            for first in (0..64).step_by(8) {
                for chunk in 0..cpr {
                    let mut groups: Vec<u32> =
                        (first..first + 8).map(|r| (tile_byte_offset(r, chunk, cpr) / 16) % 8).collect();
                    groups.sort();
                    groups.dedup();
                    assert_eq!(groups.len(), 8, "cpr {cpr} rows {first}.. chunk {chunk}");
                }
            }
        }
    }

    /// The key blocks that visit each query tile (by the backward's loop bounds) are exactly
    /// turns 0, 1, 2, … in key-block order.
    #[test]
    fn dq_turns_number_the_visiting_key_blocks_in_order() {
        for (seqlen_q, seqlen_k) in [(1u32, 1u32), (64, 64), (100, 300), (300, 100), (257, 129), (1000, 1000)] {
            for (window_left, window_right) in [(-1, -1), (-1, 0), (5, 0), (70, 3), (-1, 40), (0, 0)] {
                let mask = Mask { seqlen_q, seqlen_k, window_left, window_right };
                for (block_m, block_n) in [(64u32, 128u32), (32, 128), (64, 64), (16, 32)] {
                    let mut visitors: Vec<Vec<u32>> = vec![Vec::new(); ceil_div(seqlen_q, block_m) as usize];
                    for n in 0..ceil_div(seqlen_k, block_n) {
                        let (lo, hi) = mask.query_range(n * block_n, (n + 1) * block_n);
                        for m in lo / block_m..ceil_div(hi, block_m) {
                            visitors[m as usize].push(n);
                        }
                    }
                    for (m, blocks) in visitors.iter().enumerate() {
                        let turns: Vec<u32> =
                            blocks.iter().map(|&n| dq_turn(&mask, n, m as u32, block_m, block_n)).collect();
                        assert_eq!(
                            turns,
                            (0..blocks.len() as u32).collect::<Vec<_>>(),
                            "{mask:?} {block_m}x{block_n} tile {m}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn sw128_layout_is_a_permutation_of_whole_panels() {
        for (rows, chunks) in [(64u32, 8u32), (128, 16), (128, 8), (192, 32)] {
            let mut seen: Vec<u32> =
                (0..rows).flat_map(|r| (0..chunks).map(move |c| sw128_byte_offset(r, c, rows))).collect();
            seen.sort();
            assert_eq!(seen, (0..rows * chunks).map(|i| i * 16).collect::<Vec<_>>());
            // Panel p of every row lies inside [p·rows·128, (p+1)·rows·128).
            for r in 0..rows {
                for c in 0..chunks {
                    let panel = sw128_byte_offset(r, c, rows) / (rows * 128);
                    assert_eq!(panel, c / 8);
                }
            }
        }
    }

    #[test]
    fn sw128_matches_the_hardware_address_swizzle() {
        // With 1024-byte aligned panels the layout is "XOR address bits 4-6 with bits 7-9" of
        // the unswizzled row-major panel address.
        for row in 0..64u32 {
            for chunk in 0..8u32 {
                let linear = row * 128 + chunk * 16;
                let hw = linear ^ (((linear >> 7) & 7) << 4);
                assert_eq!(sw128_byte_offset(row, chunk, 64), hw);
            }
        }
    }

    #[test]
    fn sw64_matches_the_hardware_address_swizzle_and_permutes_rows() {
        // With a 512-byte aligned tile the layout is "XOR address bits 4-5 with bits 7-8" of the
        // unswizzled row-major address (rows of 64 bytes), and each row keeps its own 64 bytes.
        let mut seen = Vec::new();
        for row in 0..256u32 {
            for chunk in 0..4u32 {
                let linear = row * 64 + chunk * 16;
                let hw = linear ^ (((linear >> 7) & 3) << 4);
                let offset = sw64_byte_offset(row, chunk);
                assert_eq!(offset, hw);
                assert_eq!(offset / 64, row);
                seen.push(offset);
            }
        }
        seen.sort();
        assert_eq!(seen, (0..256 * 4).map(|i| i * 16).collect::<Vec<_>>());
        let d = wgmma_descriptor_sw64(0x1_2340, 16, SW64_ROW_GROUP_BYTES);
        assert_eq!((d & 0x3fff, (d >> 16) & 0x3fff, (d >> 32) & 0x3fff, d >> 62), (0x1234, 1, 32, 2));
    }

    #[test]
    fn wgmma_descriptor_fields() {
        let d = wgmma_descriptor(0x1_2340, 16384, 1024);
        assert_eq!(d & 0x3fff, 0x1234);
        assert_eq!((d >> 16) & 0x3fff, 1024);
        assert_eq!((d >> 32) & 0x3fff, 64);
        assert_eq!(d >> 62, 1);
        // Adding a byte offset to the address is adding offset / 16 to the descriptor while the
        // address stays below 256 KiB.
        assert_eq!(wgmma_descriptor(0x1_2340 + 32, 16384, 1024), d + 2);
    }

    #[test]
    fn kv_heads_are_grouped_evenly() {
        let mut shape = AttnShape { heads: 8, heads_k: 2, ..AttnShape::default() };
        assert_eq!((0..8).map(|h| kv_head_of(&shape, h)).collect::<Vec<_>>(), [0, 0, 0, 0, 1, 1, 1, 1]);
        shape.heads_k = 8;
        assert_eq!(kv_head_of(&shape, 5), 5);
        shape.heads_k = 0;
        assert_eq!(kv_head_of(&shape, 5), 5);
    }

    #[test]
    fn copy_positions_cover_each_chunk_once() {
        // Tile shapes of the shipped configurations and a few that do not divide evenly.
        for (rows, chunks_per_row, threads) in [
            (64u32, 8u32, 128u32),
            (128, 16, 256),
            (128, 8, 384),
            (64, 4, 128),
            (32, 12, 128),
            (64, 24, 256),
            (16, 12, 64),
        ] {
            let chunks = rows * chunks_per_row;
            let mut seen = vec![0u32; chunks as usize];
            for tid in 0..threads {
                for i in 0..chunks.div_ceil(threads) {
                    let index = tid + i * threads;
                    if index >= chunks {
                        continue;
                    }
                    let (row, chunk) = copy_position(tid, i, threads, chunks_per_row);
                    assert_eq!((row, chunk), (index / chunks_per_row, index % chunks_per_row));
                    seen[(row * chunks_per_row + chunk) as usize] += 1;
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{rows}x{chunks_per_row} by {threads}");
        }
    }

    #[test]
    fn query_heads_of_a_kv_head_are_its_group() {
        for (heads, heads_k) in [(8u32, 2u32), (4, 4), (6, 1)] {
            let shape = AttnShape { heads, heads_k, ..AttnShape::default() };
            let mut all = Vec::new();
            for kv in 0..heads_k {
                let group = query_heads_of(&shape, kv);
                assert_eq!(group, (kv * heads / heads_k, (kv + 1) * heads / heads_k));
                assert!((group.0..group.1).all(|h| kv_head_of(&shape, h) == kv));
                all.extend(group.0..group.1);
            }
            assert_eq!(all, (0..heads).collect::<Vec<_>>());
        }
    }

    #[test]
    fn persistent_schedule_covers_every_tile_once_in_grid_order() {
        for (blocks, grid) in [(1, (3, 2, 2)), (3, (4, 3, 2)), (7, (5, 1, 3)), (132, (128, 16, 1)), (5, (1, 1, 1))] {
            let total = grid.0 * grid.1 * grid.2;
            let mut seen = vec![0u32; total as usize];
            for block in 0..blocks {
                let mut round = 0;
                while let Some((x, head, batch)) = persistent_tile(round, block, blocks, grid) {
                    assert!(x < grid.0 && head < grid.1 && batch < grid.2);
                    // The order of a one-tile-a-block grid: x fastest, then head, then batch.
                    let linear = (batch * grid.1 + head) * grid.0 + x;
                    assert_eq!(linear, round * blocks + block);
                    seen[linear as usize] += 1;
                    round += 1;
                }
                // Nothing is handed out after the first miss.
                assert!((round..round + 4).all(|r| persistent_tile(r, block, blocks, grid).is_none()));
            }
            assert!(seen.iter().all(|&n| n == 1), "blocks {blocks}, grid {grid:?}: {seen:?}");
        }
        // A grid of one tile a block is the identity.
        assert_eq!(persistent_tile(0, 2 + 4 * (1 + 3 * 1), 24, (4, 3, 2)), Some((2, 1, 1)));
        assert_eq!(persistent_blocks(10, 132), 10);
        assert_eq!(persistent_blocks(1 << 40, 132), 132);
        assert_eq!(persistent_blocks(5, 0), 1);
    }

    #[test]
    fn heaviest_q_tile_first() {
        assert_eq!(q_tile_of_block(0, 5), 4);
        assert_eq!(q_tile_of_block(4, 5), 0);
    }
}
