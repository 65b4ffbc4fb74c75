//! Tile primitives: the element types, shared-memory tiles, their async loads, the fragment
//! loads that feed `mma.m16n8k16`, and the row operations of the online softmax.
//!
//! Fragment layouts follow the PTX ISA for `mma.m16n8k16`: a lane holds accumulator elements
//! at rows `lane / 4` and `lane / 4 + 8`, columns `2 · (lane % 4)` and `+ 1` of each 8-wide tile.
//!
//! [`Element`] (`Bf16`, `F16`: mma, pack, convert) is what the kernels are generic over.
//! [`SmemTile`] is a tile in the portable kernels' swizzled layout (`tiling::tile_byte_offset`):
//! `load_async` issues the `cp.async` copies of a whole tile across the block, zero-filling rows
//! past the sequence end without reading them, and the `a_fragment*` / `b_fragments*` methods
//! load mma operands with `ldmatrix` (`.trans` for operands whose rows run along the reduction).
//! [`Sw128Tile`] is the Hopper kernels' 128-byte-swizzled tile; its `data_chunks` zero-fill the
//! columns of a padded head dim. [`accumulators_as_a`] turns two f32 accumulator tiles into the A
//! operand of the next mma in registers, which is how P and dSᵀ reach their GEMMs without shared
//! memory. Register arrays are sized for the largest configuration (`MAX_HEAD_DIM_TILES8` etc.);
//! loops run to the configuration's count and unroll fully.

use crate::ptx;
use crate::tiling::{copy_position, sw64_byte_offset, sw128_byte_offset, tile_byte_offset};

/// Fragments are kept in fixed-size register arrays sized for the largest configuration;
/// loops run to the configuration's count and unroll, so unused slots never exist.
pub const MAX_HEAD_DIM_TILES8: usize = 32;
pub const MAX_HEAD_DIM_TILES16: usize = 16;
pub const MAX_SEQ_TILES8: usize = 16;

/// A 16-bit floating-point element type of Q, K, V and the outputs.
pub trait Element {
    fn mma(d: &mut [f32; 4], a: &[u32; 4], b: &[u32; 2]);
    /// Two f32 → packed pair, `lo` in the low half.
    fn pack(lo: f32, hi: f32) -> u32;
    fn to_f32(bits: u16) -> f32;
}

pub struct Bf16;
impl Element for Bf16 {
    #[inline(always)]
    fn mma(d: &mut [f32; 4], a: &[u32; 4], b: &[u32; 2]) {
        ptx::mma_m16n8k16_bf16(d, a, b)
    }
    #[inline(always)]
    fn pack(lo: f32, hi: f32) -> u32 {
        ptx::pack_bf16x2(lo, hi)
    }
    #[inline(always)]
    fn to_f32(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }
}

pub struct F16;
impl Element for F16 {
    #[inline(always)]
    fn mma(d: &mut [f32; 4], a: &[u32; 4], b: &[u32; 2]) {
        ptx::mma_m16n8k16_f16(d, a, b)
    }
    #[inline(always)]
    fn pack(lo: f32, hi: f32) -> u32 {
        ptx::pack_f16x2(lo, hi)
    }
    #[inline(always)]
    fn to_f32(bits: u16) -> f32 {
        ptx::f16_to_f32(bits)
    }
}

/// Start copying `rows` rows of `chunks_per_row` 16-byte chunks from global memory (row `r` at
/// `src + r · row_stride` elements of `T`, the tensor's element type; rows from `valid_rows` on read as zeros, and in every row the chunks
/// from `data_chunks` on, which pad a head dim up to whole panels) to the shared addresses
/// `dst(row, chunk)`. All `threads` threads call this, thread `tid` taking every `threads`-th chunk.
///
/// The loop is counted, not "while index < chunks": with the trip count a constant of the tile
/// configuration it unrolls completely. When `threads` is a multiple of `chunks_per_row`, a
/// thread's rows are `tid / chunks_per_row` plus multiples of `threads / chunks_per_row`, so the
/// swizzle term and the chunk are computed once, and whole tiles (every tile but a sequence's
/// last) skip the per-row range selects. Configurations where it is not (head_dim 192: 24
/// chunks for 256 threads; the portable head_dim 96: 12) take the general path on every tile.
///
/// # Safety
/// `tid < threads`; `src` points at row 0 of a tensor whose rows are `row_stride` elements apart,
/// 16-byte aligned, with `valid_rows` rows of `16 · data_chunks` readable bytes
/// (`data_chunks ≤ chunks_per_row`); `dst` gives 16-byte aligned shared addresses the block owns.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn copy_rows_async<T>(
    rows: u32,
    chunks_per_row: u32,
    data_chunks: u32,
    src: *const T,
    row_stride: i64,
    valid_rows: u32,
    tid: u32,
    threads: u32,
    dst: impl Fn(u32, u32) -> u32,
) {
    // Renewed per call, as in the fragment loads: left visible, LLVM hoists every chunk's
    // addresses out of the tile loop and keeps them all live across it.
    let tid = ptx::opaque(tid);
    // Elements per 16-byte chunk.
    let per_chunk = (16 / core::mem::size_of::<T>()) as isize;
    let chunks = rows * chunks_per_row;
    let per_thread = chunks.div_ceil(threads);
    let uniform_rows = threads % chunks_per_row == 0;
    let position = |i: u32| copy_position(tid, i, threads, chunks_per_row);
    let exists = |i: u32| chunks % threads == 0 || tid + i * threads < chunks;
    if valid_rows >= rows && uniform_rows {
        // A whole tile: a thread's chunks are a fixed number of rows apart in global memory.
        // The thread's chunk column is the same in every row: padding or data throughout.
        let (row0, chunk) = position(0);
        let data = chunk < data_chunks;
        let first = src
            .wrapping_offset(row0 as isize * row_stride as isize + if data { chunk as isize * per_chunk } else { 0 });
        let step = (threads / chunks_per_row) as isize * row_stride as isize;
        for i in 0..per_thread {
            if exists(i) {
                let (row, chunk) = position(i);
                // SAFETY: every row of the tile is readable per the caller; the copy is 16 bytes
                // within one row of 8 · data_chunks elements, or none for padding.
                unsafe {
                    ptx::cp_async_16(
                        dst(row, chunk),
                        first.wrapping_offset(i as isize * step) as *const u8,
                        if data { 16 } else { 0 },
                    )
                };
            }
        }
    } else {
        for i in 0..per_thread {
            if exists(i) {
                let (row, chunk) = position(i);
                let data = chunk < data_chunks;
                let in_range = row < valid_rows && data;
                // Out-of-range rows and padding copy zero bytes; their address is clamped to
                // row 0, and padding to chunk 0, so that it still points into the tensor.
                let src_row = if row < valid_rows { row } else { 0 };
                let src_chunk = if data { chunk } else { 0 };
                // SAFETY: in-range rows are readable per the caller; the copy is 16 bytes within
                // one row of 8 · data_chunks elements.
                unsafe {
                    let from =
                        src.wrapping_offset(src_row as isize * row_stride as isize + src_chunk as isize * per_chunk);
                    ptx::cp_async_16(dst(row, chunk), from as *const u8, if in_range { 16 } else { 0 });
                }
            }
        }
    }
}

/// A swizzled tile of 16-bit elements in shared memory.
#[derive(Clone, Copy)]
pub struct SmemTile {
    pub base: u32,
    pub chunks_per_row: u32,
}

impl SmemTile {
    #[inline(always)]
    pub fn chunk(&self, row: u32, chunk: u32) -> u32 {
        self.base + tile_byte_offset(row, chunk, self.chunks_per_row)
    }

    #[inline(always)]
    pub fn element(&self, row: u32, col: u32) -> u32 {
        self.chunk(row, col / 8) + (col % 8) * 2
    }

    /// Start copying `rows` rows (of which the first `valid_rows` exist; the rest read as zeros)
    /// from global memory. All `threads` threads of the block call this; completion is
    /// [`ptx::cp_async_commit`] + [`ptx::cp_async_wait_all`] + a barrier.
    ///
    /// # Safety
    /// `tid < threads`; `src` points at row 0 of a tensor whose rows are `row_stride` elements
    /// apart, 16-byte aligned, with `valid_rows` rows of `8 · chunks_per_row` readable elements.
    #[inline(always)]
    pub unsafe fn load_async(
        &self,
        rows: u32,
        src: *const u16,
        row_stride: i64,
        valid_rows: u32,
        tid: u32,
        threads: u32,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            let chunks = self.chunks_per_row;
            copy_rows_async(rows, chunks, chunks, src, row_stride, valid_rows, tid, threads, |r, c| self.chunk(r, c))
        }
    }

    /// A fragment (m16 × k16) of a row-major operand whose rows are tile rows `row0..row0+16`
    /// and whose k runs along the tile's columns from `k16 · 16`.
    #[inline(always)]
    pub fn a_fragment(&self, row0: u32, k16: u32, lane: u32) -> [u32; 4] {
        let addr = self.chunk(row0 + lane % 16, 2 * k16 + lane / 16);
        // SAFETY: the row and chunk lie inside the tile by the caller's loop bounds.
        unsafe { ptx::ldmatrix_x4(addr) }
    }

    /// A fragment (m16 × k16) whose m runs along the tile's columns from `m16 · 16` and whose k
    /// runs along tile rows `k0..k0+16`: the transpose of what is stored.
    #[inline(always)]
    pub fn a_fragment_transposed(&self, k0: u32, m16: u32, lane: u32) -> [u32; 4] {
        let matrix = lane / 8;
        let addr = self.chunk(k0 + (matrix / 2) * 8 + lane % 8, 2 * m16 + matrix % 2);
        // SAFETY: as in `a_fragment`.
        unsafe { ptx::ldmatrix_x4_trans(addr) }
    }

    /// B fragments (k16 × n8, two adjacent n tiles) where n runs along tile rows `n0..n0+16` and
    /// k along the columns from `k16 · 16` (K in S = Q·Kᵀ). Returns `[tile n0, tile n0 + 8]`.
    #[inline(always)]
    pub fn b_fragments(&self, n0: u32, k16: u32, lane: u32) -> [[u32; 2]; 2] {
        let matrix = lane / 8;
        let addr = self.chunk(n0 + (matrix / 2) * 8 + lane % 8, 2 * k16 + matrix % 2);
        // SAFETY: as in `a_fragment`.
        let r = unsafe { ptx::ldmatrix_x4(addr) };
        [[r[0], r[1]], [r[2], r[3]]]
    }

    /// B fragments (k16 × n8, two adjacent n tiles) where k runs along tile rows `k0..k0+16` and
    /// n along the columns from `n16 · 16` (V in O = P·V). Returns `[tile n16·2, tile n16·2 + 1]`.
    #[inline(always)]
    pub fn b_fragments_transposed(&self, k0: u32, n16: u32, lane: u32) -> [[u32; 2]; 2] {
        let matrix = lane / 8;
        let addr = self.chunk(k0 + (matrix % 2) * 8 + lane % 8, 2 * n16 + matrix / 2);
        // SAFETY: as in `a_fragment`.
        let r = unsafe { ptx::ldmatrix_x4_trans(addr) };
        [[r[0], r[1]], [r[2], r[3]]]
    }
}

/// A tile of 16-bit elements in shared memory in the 128-byte-swizzled layout that `wgmma`
/// reads (see [`sw128_byte_offset`]); `base` is 1024-byte aligned.
#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
#[derive(Clone, Copy)]
pub struct Sw128Tile {
    pub base: u32,
    pub rows: u32,
    pub chunks_per_row: u32,
    /// Chunks per row that hold data in global memory; the rest pad the row to whole 64-column
    /// panels and are loaded as zeros.
    pub data_chunks: u32,
}

#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
impl Sw128Tile {
    #[inline(always)]
    pub fn chunk(&self, row: u32, chunk: u32) -> u32 {
        self.base + sw128_byte_offset(row, chunk, self.rows)
    }

    /// Shared address of 64-column panel `panel`, from row `row` (a multiple of 8).
    #[inline(always)]
    pub fn panel(&self, panel: u32, row: u32) -> u32 {
        self.base + panel * self.rows * 128 + row * 128
    }

    /// Start copying all `rows` rows (the first `valid_rows` exist; the rest read as zeros) from
    /// global memory, `data_chunks` chunks of each (the padding reads as zeros); all `threads`
    /// threads call this. `T` is the tensor's element type (`u16`, or `u8` for e4m3), the stride
    /// counts its elements. Completion as for [`SmemTile::load_async`].
    ///
    /// # Safety
    /// As [`SmemTile::load_async`], with rows of `16 · data_chunks` readable bytes.
    #[inline(always)]
    pub unsafe fn load_async<T>(&self, src: *const T, row_stride: i64, valid_rows: u32, tid: u32, threads: u32) {
        // SAFETY: forwarded from the caller.
        unsafe {
            let (rows, chunks, data) = (self.rows, self.chunks_per_row, self.data_chunks);
            copy_rows_async(rows, chunks, data, src, row_stride, valid_rows, tid, threads, |r, c| self.chunk(r, c))
        }
    }
}

/// A 64-byte-swizzled tile (`tiling::sw64_byte_offset`): `rows` rows of 64 bytes, four 16-byte
/// chunks each, the base 512-byte aligned. The FP8 forward's Vᵀ tile of 64 keys (one row per
/// head-dim column) is one, read by `wgmma` through `tiling::wgmma_descriptor_sw64`.
pub struct Sw64Tile {
    pub base: u32,
    pub rows: u32,
}

#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
impl Sw64Tile {
    /// Start copying all `rows` rows, 64 bytes each, from global memory (row `r` at
    /// `src + r · row_stride` elements of `T`); all `threads` threads call this. Completion as for
    /// [`SmemTile::load_async`].
    ///
    /// # Safety
    /// As [`SmemTile::load_async`], with every one of the `rows` rows holding 64 readable bytes.
    #[inline(always)]
    pub unsafe fn load_async<T>(&self, src: *const T, row_stride: i64, tid: u32, threads: u32) {
        let base = self.base;
        // SAFETY: forwarded from the caller.
        unsafe {
            copy_rows_async(self.rows, 4, 4, src, row_stride, self.rows, tid, threads, |r, c| {
                base + sw64_byte_offset(r, c)
            })
        }
    }
}

/// Accumulator tiles `2j` and `2j + 1` (16 × 16 of f32) as the A operand of the next mma.
#[inline(always)]
pub fn accumulators_as_a<E: Element>(left: &[f32; 4], right: &[f32; 4]) -> [u32; 4] {
    [E::pack(left[0], left[1]), E::pack(left[2], left[3]), E::pack(right[0], right[1]), E::pack(right[2], right[3])]
}

/// Row `lane / 4 + 8 · half` of an accumulator tile lives in the 4 lanes of a quad: combine.
#[inline(always)]
pub fn quad_max(x: f32) -> f32 {
    let x = x.max(ptx::shfl_xor(x, 1));
    x.max(ptx::shfl_xor(x, 2))
}

#[inline(always)]
pub fn quad_sum(x: f32) -> f32 {
    let x = x + ptx::shfl_xor(x, 1);
    x + ptx::shfl_xor(x, 2)
}

#[inline(always)]
pub fn warp_sum(mut x: f32) -> f32 {
    let mut mask = 16;
    while mask > 0 {
        x += ptx::shfl_xor(x, mask);
        mask /= 2;
    }
    x
}
