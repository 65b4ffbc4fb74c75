//! FlashAttention-2 forward on Hopper's warpgroup tensor cores (sm_90a).
//!
//! The algorithm is the one of [`crate::forward`]; what changes is who feeds the tensor cores.
//! Each warpgroup owns 64 query rows. Per K/V tile it issues one `wgmma` GEMM for S = Q·Kᵀ that
//! reads Q and K straight from shared memory (no `ldmatrix`, no operand registers), runs the
//! online softmax on the scores in registers (same fragment layout as `mma.sync`), and issues a
//! second GEMM for O += P·V with P from registers and V from shared memory. Small blocks (the
//! head_dim 64 configuration: four per SM) overlap one block's softmax with another's GEMMs;
//! the pipelined configuration (`FwdWgmmaTraits::PIPELINED`) also overlaps inside a warpgroup: S = Q·Kⱼᵀ and P·Vⱼ₋₁ are issued back to back, tile j's softmax
//! runs while P·V is in flight, and O is rescaled only after waiting for it. It keeps three K/V
//! stages, since tile t's stage is read in iterations t and t + 1. head_dim 192 (and 256 with
//! the score modifiers) run unpipelined on 64-key tiles, their Q and K descriptors one per
//! 64-column panel (`warpgroup::PanelDescriptors`). [`flash_fwd_wgmma_ws`], the default at
//! head_dim 96, 128 and 256, runs the pipelined loop in consumer warpgroups fed by a producer. The shipped configurations, with the reasons for each, are in
//! `traits.rs`; the shared-memory layout and descriptors in [`crate::warpgroup`]'s docs.
//!
//! Padded head dims: `DATA_HEAD_DIM` (the tensors') may be below `HEAD_DIM` (the GEMMs', whole
//! 64-column panels). The loads fill the columns past the data with zeros (`Sw128Tile` with
//! `data_chunks`: `cp.async` with no source bytes), so every product over the padded head dim
//! equals the one over the data, and only the data columns of O are written: head_dim 96 runs the
//! head_dim 128 kernel this way. Masks, grouped K/V heads, sinks and (in the `MODS` kernels) the
//! score modifiers are the portable forward's, through the same [`crate::modifiers`] calls.

use crate::forward::{
    OnlineSoftmax, online_softmax, online_softmax_deferred, online_softmax_split, rescale, write_partial,
};
use crate::modifiers::{ScoreMods, finish_row, forward_dropout, forward_scores};
use crate::params::{FwdParams, row_stat_index};
use crate::ptx::{self, cp_async_commit, cp_async_wait_all, sync_threads};
use crate::tile::{Sw64Tile, Sw128Tile, quad_sum};
use crate::tiling::{
    FP8_TRANSPOSE_KEYS, Mask, SW64_ROW_GROUP_BYTES, SW128_ROW_GROUP_BYTES, ceil_div, fp8_key_of_position, kv_head_of,
    persistent_tile, q_tile_of_block, ring_slot, split_tiles, wgmma_descriptor, wgmma_descriptor_sw64,
};
use crate::traits::{FwdWgmmaTraits, padding_fits};
use crate::warpgroup::{WS_SCORE_TILES8, Waited, WgmmaElement, WsInput, acquire, panel_descriptors, wait, wait_scores};

/// The unpipelined kernel's score tiles: 8 columns each, BLOCK_N ≤ 128 (the warp-specialized
/// one's are `warpgroup::WsScores`).
const SEQ_TILES8: usize = 16;
/// Output tiles: 8 columns each, head_dim ≤ 256.
const HEAD_DIM_TILES8: usize = 32;

/// Wait for the K/V tile this iteration uses next, make every thread's copies visible to the
/// tensor cores, and close the stage: after this barrier the previous stage may be refilled.
#[inline(always)]
fn tiles_ready<T: FwdWgmmaTraits>() {
    // The pipelined loop keeps one tile in flight, so "the next tile" is every group.
    if T::STAGES == 3 && !T::PIPELINED {
        ptx::cp_async_wait_all_but_one();
    } else {
        cp_async_wait_all();
    }
    ptx::fence_proxy_async_shared();
    sync_threads();
}

/// # Safety
/// Launched with `T::THREADS` threads, grid `(ceil(seqlen_q / BLOCK_M), heads, batch)` and
/// `T::SMEM_BYTES` of dynamic shared memory, on a parameter block the host validated, on an
/// sm_90a device.
#[inline(always)]
pub unsafe fn flash_fwd_wgmma<E: WgmmaElement + WsInput, T: FwdWgmmaTraits, const MODS: bool, const SEQ: bool>(
    p: &FwdParams,
) {
    const { assert!(T::HEAD_DIM % 64 == 0 && T::HEAD_DIM <= 256) };
    const { assert!(T::BLOCK_N == 64 || T::BLOCK_N == 128) };
    // The generated GEMMs: 128-key tiles and the pipelined loop's waits up to head_dim 128.
    const { assert!(T::HEAD_DIM <= 128 || (T::BLOCK_N == 64 && !T::PIPELINED)) };
    const { assert!(padding_fits(T::DATA_HEAD_DIM, T::HEAD_DIM)) };
    // The block's sequence (and split) for the `SEQ` kernels (`FwdParams::of_block`).
    let mut sequence = core::mem::MaybeUninit::uninit();
    // SAFETY: the host validated the layout's arrays.
    let (p, sequence_index, split) = unsafe { p.of_block::<SEQ>(ptx::block_idx().2, &mut sequence) };
    let shape = &p.shape;
    // Blocks past this sequence's queries (a packed batch's shorter sequences) exit at once.
    if SEQ && ptx::block_idx().0 >= ceil_div(shape.seqlen_q, T::BLOCK_M) {
        return;
    }
    let mask = Mask::of(shape);
    let tid = ptx::thread_idx();
    let (warpgroup, warp, lane) = (tid / 128, tid / 32, tid % 32);
    let (block_x, head, batch) = ptx::block_idx();
    let batch = if SEQ { sequence_index } else { batch };
    let kv_head = kv_head_of(shape, head);
    // SAFETY: the host validated the modifiers' device arrays (slopes, sinks).
    let (mods, sink_log2, output_scale) = unsafe { ScoreMods::for_forward::<MODS>(p, batch, head) };
    // With split-KV the sink joins the first split only.
    let sink_log2 = if SEQ && split != 0 { f32::NEG_INFINITY } else { sink_log2 };
    let q_begin = q_tile_of_block(block_x, ceil_div(shape.seqlen_q, T::BLOCK_M)) * T::BLOCK_M;
    // Warp w of the block owns query rows 16w..16w+16 (warpgroup g: rows 64g..64g+64).
    let warp_row0 = 16 * warp;
    let warp_q0 = q_begin + warp_row0;
    let panels = T::HEAD_DIM / 64;

    let smem = ptx::dynamic_smem_base().next_multiple_of(1024);
    let tile = |offset: u32, rows: u32| Sw128Tile {
        base: smem + offset,
        rows,
        chunks_per_row: T::CHUNKS_PER_ROW,
        data_chunks: T::DATA_CHUNKS,
    };
    let q_tile = tile(T::Q_OFFSET, T::BLOCK_M);
    let k_tile = |stage: u32| tile(T::K_OFFSET + stage * T::KV_TILE_BYTES, T::BLOCK_N);
    let v_tile = |stage: u32| tile(T::V_OFFSET + stage * T::KV_TILE_BYTES, T::BLOCK_N);

    let q_ptr = (p.q as *const u16).wrapping_offset(p.q_strides.offset(batch, q_begin, head) as isize);
    let k_ptr = (p.k as *const u16).wrapping_offset(p.k_strides.offset(batch, 0, kv_head) as isize);
    let v_ptr = (p.v as *const u16).wrapping_offset(p.v_strides.offset(batch, 0, kv_head) as isize);
    let load_kv = |tile: u32, stage: u32| {
        let k_begin = tile * T::BLOCK_N;
        let rows = shape.seqlen_k - k_begin;
        // SAFETY: the host validated that K and V hold seqlen_k rows at these strides; rows past
        // the end are zero-filled without being read.
        unsafe {
            k_tile(stage).load_async(
                k_ptr.wrapping_offset(k_begin as isize * p.k_strides.row as isize),
                p.k_strides.row,
                rows,
                tid,
                T::THREADS,
            );
            v_tile(stage).load_async(
                v_ptr.wrapping_offset(k_begin as isize * p.v_strides.row as isize),
                p.v_strides.row,
                rows,
                tid,
                T::THREADS,
            );
        }
    };

    let (key_lo, key_hi) = mask.key_range(q_begin, q_begin + T::BLOCK_M);
    let tiles = (key_lo / T::BLOCK_N, ceil_div(key_hi, T::BLOCK_N));
    let (first_tile, end_tile) = if SEQ { split_tiles(tiles, split, shape.layout.splits()) } else { tiles };

    // SAFETY: as for K and V above.
    unsafe { q_tile.load_async(q_ptr, p.q_strides.row, shape.seqlen_q - q_begin, tid, T::THREADS) };
    if first_tile < end_tile {
        load_kv(first_tile, 0);
    }
    cp_async_commit();
    if T::STAGES == 3 {
        // The second tile streams in while the first one's scores are computed (the pipelined
        // loop's first refill goes to the third stage).
        if first_tile + 1 < end_tile {
            load_kv(first_tile + 1, 1);
        }
        cp_async_commit();
        ptx::cp_async_wait_all_but_one();
        ptx::fence_proxy_async_shared();
        sync_threads();
    } else {
        tiles_ready::<T>();
    }

    // Descriptors: Q and K are K-major (head_dim along a row), one per 64-column panel; V is
    // MN-major (its rows run along the keys, the GEMM's k), panels BLOCK_N · 128 bytes apart.
    let q_descs = panel_descriptors(panels, |panel| {
        wgmma_descriptor(q_tile.panel(panel, 64 * warpgroup), 16, SW128_ROW_GROUP_BYTES)
    });
    let k_descs = |stage: u32| {
        let keys = k_tile(stage);
        panel_descriptors(panels, |panel| wgmma_descriptor(keys.panel(panel, 0), 16, SW128_ROW_GROUP_BYTES))
    };
    let v_desc = |stage: u32| wgmma_descriptor(v_tile(stage).panel(0, 0), T::BLOCK_N * 128, SW128_ROW_GROUP_BYTES);

    let mut o = [[[0f32; 4]; HEAD_DIM_TILES8]; 1];
    let mut softmax = [OnlineSoftmax::starting_at(sink_log2, lane)];
    let (n_tiles8, d_tiles8) = ((T::BLOCK_N / 8) as usize, (T::HEAD_DIM / 8) as usize);
    let step = ScoreStep { warp_q0, block_n: T::BLOCK_N, mask: &mask, mods: &mods };
    let score_step =
        |s: &mut [[[f32; 4]; SEQ_TILES8]; 1], tile: u32, lane: u32| step.scores::<MODS, _>(&mut s[0], tile, lane);
    let dropout_step =
        |s: &mut [[[f32; 4]; SEQ_TILES8]; 1], tile: u32, lane: u32| step.dropout::<MODS, _>(&mut s[0], tile, lane);
    let probabilities_of = |s: &[[[f32; 4]; SEQ_TILES8]; 1]| E::probabilities(&s[0], n_tiles8);

    if !T::PIPELINED {
        for tile in first_tile..end_tile {
            let step = tile - first_tile;
            let stage = step % T::STAGES;
            // Refill the stage the previous iteration used (behind its closing barrier) with the
            // tile STAGES - 1 ahead; one group per iteration, empty or not (see `forward`).
            if tile + T::STAGES - 1 < end_tile {
                load_kv(tile + T::STAGES - 1, (step + T::STAGES - 1) % T::STAGES);
            }
            cp_async_commit();
            let lane = ptx::opaque(lane);
            let mut s = [[[0f32; 4]; SEQ_TILES8]; 1];
            // SAFETY: the whole warpgroup is here (block-uniform loop); the Q and K tiles landed
            // and were fenced for the async proxy before the last barrier.
            unsafe { E::qk(T::BLOCK_N, T::HEAD_DIM, &mut s[0], q_descs, k_descs(stage)) };
            score_step(&mut s, tile, lane);
            online_softmax(&mut softmax, &mut s, &mut o, 1, n_tiles8, d_tiles8, shape.scale_log2);
            dropout_step(&mut s, tile, lane);
            let probabilities = probabilities_of(&s);
            // SAFETY: as for the score GEMM.
            unsafe { E::pv(T::HEAD_DIM, T::BLOCK_N, &mut o[0], &probabilities, v_desc(stage)) };
            // The next tile has landed, and everyone is done with this stage.
            tiles_ready::<T>();
        }
    } else if first_tile < end_tile {
        // Software pipeline (three stages): while tile j's softmax runs on the CUDA cores, the
        // tensor cores finish O += P·V of tile j - 1. Tile t's stage is read by S = Q·Kₜᵀ in
        // iteration t and by P·Vₜ in iteration t + 1, so the refill at iteration j goes to the
        // stage of tile j - 2, released by the barrier that closed iteration j - 1. Tile
        // first + 1 is already on its way to stage 1 (prologue).
        let mut s = [[[0f32; 4]; SEQ_TILES8]; 1];
        // SAFETY: as in the loop above.
        unsafe { E::qk(T::BLOCK_N, T::HEAD_DIM, &mut s[0], q_descs, k_descs(0)) };
        score_step(&mut s, first_tile, lane);
        // O is still zero: no correction to apply.
        let _ = online_softmax_deferred(&mut softmax, &mut s, 1, n_tiles8, shape.scale_log2);
        dropout_step(&mut s, first_tile, lane);
        let mut previous = probabilities_of(&s);
        let mut previous_stage = 0;
        tiles_ready::<T>();
        for tile in first_tile + 1..end_tile {
            let step = tile - first_tile;
            let stage = step % 3;
            if tile + 1 < end_tile {
                load_kv(tile + 1, (step + 1) % 3);
            }
            cp_async_commit();
            let lane = ptx::opaque(lane);
            let mut s = [[[0f32; 4]; SEQ_TILES8]; 1];
            // SAFETY: as in the loop above; the accumulators and `previous` are left alone until
            // the waits below name them.
            unsafe {
                E::qk_issue(T::BLOCK_N, T::HEAD_DIM, &mut s[0], q_descs, k_descs(stage));
                E::pv_issue(T::HEAD_DIM, T::BLOCK_N, &mut o[0], &previous, v_desc(previous_stage));
            }
            wait(1, Waited::Scores(T::BLOCK_N, &mut s[0]));
            score_step(&mut s, tile, lane);
            let correction = online_softmax_deferred(&mut softmax, &mut s, 1, n_tiles8, shape.scale_log2);
            dropout_step(&mut s, tile, lane);
            wait(0, Waited::Output(T::HEAD_DIM, &mut o[0]));
            if let Some(correction) = correction {
                rescale(&mut o, &correction, 1, d_tiles8);
            }
            previous = probabilities_of(&s);
            previous_stage = stage;
            tiles_ready::<T>();
        }
        // SAFETY: as for the score GEMM.
        unsafe { E::pv(T::HEAD_DIM, T::BLOCK_N, &mut o[0], &previous, v_desc(previous_stage)) };
    }

    // SAFETY: every GEMM that read the Q tile has completed (the last one waited).
    unsafe {
        write_output::<E, T, MODS, SEQ>(
            p,
            (batch, head, split),
            q_tile,
            q_begin,
            warp_row0,
            lane,
            &softmax[0],
            &o[0],
            output_scale,
        )
    };
}

/// One warp's score step on a K/V tile: its first query row, the keys per tile, the mask and
/// the modifiers.
struct ScoreStep<'a> {
    warp_q0: u32,
    block_n: u32,
    mask: &'a Mask,
    mods: &'a ScoreMods,
}

impl ScoreStep<'_> {
    /// Modifiers (MODS), then -inf for keys the mask hides (tiles wholly inside the mask skip
    /// that), on the scores of key tile `tile`.
    #[inline(always)]
    fn scores<const MODS: bool, const N: usize>(&self, s: &mut [[f32; 4]; N], tile: u32, lane: u32) {
        let k_begin = tile * self.block_n;
        let masked = !self.mask.tile_is_unmasked(self.warp_q0, self.warp_q0 + 16, k_begin, k_begin + self.block_n);
        let n_tiles8 = (self.block_n / 8) as usize;
        forward_scores::<MODS, _>(s, n_tiles8, self.warp_q0, k_begin, lane, self.mask, masked, self.mods);
    }

    /// Whether key tile `tile` has no masked score for this warp's rows (the tiles
    /// `POLY_EXP_TILES` may use the polynomial on).
    #[inline(always)]
    fn unmasked(&self, tile: u32) -> bool {
        let k_begin = tile * self.block_n;
        self.mask.tile_is_unmasked(self.warp_q0, self.warp_q0 + 16, k_begin, k_begin + self.block_n)
    }

    /// After the softmax: dropout on the probabilities (MODS only).
    #[inline(always)]
    fn dropout<const MODS: bool, const N: usize>(&self, s: &mut [[f32; 4]; N], tile: u32, lane: u32) {
        if MODS {
            let n_tiles8 = (self.block_n / 8) as usize;
            forward_dropout(s, n_tiles8, self.warp_q0, tile * self.block_n, lane, &self.mods.dropout);
        }
    }
}

/// Epilogue: normalize; stage O in this warp's own rows of `stage` (the Q tile, or for e4m3
/// inputs the bf16-sized region of `T::O_STAGE_OFFSET`), then write whole 16-byte chunks; write
/// the LSE (or, with split-KV, this split's partial rows).
///
/// # Safety
/// The tensor cores' reads of `stage` have finished (inside the last GEMM); `p` is the
/// validated parameter block the kernel runs on; all 32 lanes of the warp call this.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn write_output<E: WgmmaElement, T: FwdWgmmaTraits, const MODS: bool, const SEQ: bool>(
    p: &FwdParams,
    (batch, head, split): (u32, u32, u32),
    stage: Sw128Tile,
    q_begin: u32,
    warp_row0: u32,
    lane: u32,
    softmax: &OnlineSoftmax,
    o: &[[f32; 4]; HEAD_DIM_TILES8],
    output_scale: f32,
) {
    let shape = &p.shape;
    let warp_q0 = q_begin + warp_row0;
    let d_tiles8 = (T::HEAD_DIM / 8) as usize;
    ptx::fence_proxy_async_shared();
    let lane = ptx::opaque(lane);
    if SEQ && shape.layout.num_splits > 1 {
        // SAFETY: the host sized the partials for every split and row (`FwdParams::o_accum`).
        unsafe { write_partial(p, split, head, warp_q0 + lane / 4, lane, softmax, o, d_tiles8, output_scale) };
        return;
    }
    for half in 0..2 {
        let local_row = warp_row0 + lane / 4 + 8 * half as u32;
        let row = q_begin + local_row;
        let (inv, lse) = finish_row(softmax.max[half], quad_sum(softmax.sum[half]));
        // (The FP8 kernels' output scale is V's descale.)
        let inv = if MODS || T::ELEMENT_BYTES == 1 { inv * output_scale } else { inv };
        for t in 0..d_tiles8 {
            let packed = E::pack(o[t][2 * half] * inv, o[t][2 * half + 1] * inv);
            let col = 8 * t as u32 + 2 * (lane % 4);
            // SAFETY: the element lies in this warp's rows of the Q tile.
            unsafe { ptx::st_shared_u32(stage.chunk(local_row, col / 8) + (col % 8) * 2, packed) };
        }
        if lane % 4 == 0 && row < shape.seqlen_q {
            // SAFETY: the LSE buffer holds batch · heads · seqlen_q floats (host-checked).
            unsafe {
                *(p.lse as *mut f32).wrapping_offset(row_stat_index::<SEQ>(shape, batch, head, row) as isize) = lse
            };
        }
    }
    ptx::sync_warp();
    let mut index = lane;
    // O is 16-bit whatever the inputs: 8 columns to a chunk.
    const { assert!(T::DATA_HEAD_DIM % 8 == 0) };
    let out_chunks = T::DATA_HEAD_DIM / 8;
    while index < 16 * out_chunks {
        let (local, chunk) = (index / out_chunks, index % out_chunks);
        let row = warp_q0 + local;
        if row < shape.seqlen_q {
            // SAFETY: the chunk lies in this warp's rows of the Q tile; the destination is inside
            // row `row` of O, whose rows the host checked to be 16-byte aligned.
            unsafe {
                let v = ptx::ld_shared_v4(stage.chunk(warp_row0 + local, chunk));
                let out = (p.o as *mut u16)
                    .wrapping_offset(p.o_strides.offset(batch, row, head) as isize + 8 * chunk as isize);
                ptx::st_global_v4(out as *mut u8, v);
            }
        }
        index += 32;
    }
    if T::PERSISTENT {
        // A persistent block's next tile stages into the same rows: every lane's reads first.
        ptx::sync_warp();
    }
}

/// The producer's mbarriers (`FwdWgmmaTraits::MBARRIER_OFFSET`): "full" ones complete when a
/// tile has landed (the producer's 128 threads arrive through `cp.async`), "empty" ones when
/// every consumer thread is done reading a stage.
#[derive(Clone, Copy)]
struct Stages {
    base: u32,
    stages: u32,
}

impl Stages {
    fn q_full(self) -> u32 {
        self.base
    }
    fn k_full(self, stage: u32) -> u32 {
        self.base + 8 * (1 + stage)
    }
    fn v_full(self, stage: u32) -> u32 {
        self.base + 8 * (1 + self.stages + stage)
    }
    fn k_empty(self, stage: u32) -> u32 {
        self.base + 8 * (1 + 2 * self.stages + stage)
    }
    fn v_empty(self, stage: u32) -> u32 {
        self.base + 8 * (1 + 3 * self.stages + stage)
    }
    /// Persistent kernels: completes when every consumer thread is done with the Q tile.
    fn q_empty(self) -> u32 {
        self.base + 8 * (1 + 4 * self.stages)
    }
    /// Persistent kernels with the dynamic schedule: completes when the producer's first thread
    /// has written the next tile's index to slot `slot` (two, alternating).
    fn tile_ready(self, slot: u32) -> u32 {
        self.base + 8 * (2 + 4 * self.stages + slot)
    }
    fn tile_slot(self, slot: u32) -> u32 {
        self.base + 8 * (4 + 4 * self.stages) + 4 * slot
    }

    /// Tile `i` of the block's loop (counted from its first tile): its stage and the parity of
    /// that stage's use (each stage's barriers complete one phase per use).
    fn of(self, i: u32) -> (u32, u32) {
        ring_slot(i, self.stages)
    }
}

/// A block's walk over its query tiles. A plain block has one, its own; a persistent block
/// takes round after round of [`persistent_tile`]'s order, statically (tile
/// `round · blocks + block`) or, with `FwdParams::tile_counter`, dynamically: the first tile is
/// the block's own, then the producer's first thread (the publisher) takes the next index from
/// the counter while the current tile loads, and hands each one to the block's other threads
/// through two alternating shared-memory slots, each with an mbarrier.
struct TileWalk {
    /// Tiles handed out so far (in the loop body: the current tile's number plus one).
    n: u32,
    /// The publisher's next index, taken from the counter one tile ahead.
    fetched: u32,
}

impl TileWalk {
    /// The number of the tile the last [`TileWalk::next`] handed out (0 for the first).
    #[inline(always)]
    fn current(&self) -> u32 {
        self.n - 1
    }

    /// The next query tile as (block_x, head, batch), or `None`: the block is done. Every thread
    /// of the block calls this once per tile, in the same order. `own`: the plain block's tile;
    /// the rest is read afresh each call (special registers, the parameter block), so that
    /// nothing of it stays live across a tile's loop.
    ///
    /// # Safety
    /// With the dynamic schedule `p.tile_counter` is a zeroed u32 of this launch and the slots'
    /// mbarriers were initialized with a count of 1; a slot is republished only after every
    /// thread read it (the publisher reaches tile n + 2 after waiting for Q's release of tile
    /// n, which needs every thread past tile n's start).
    #[inline(always)]
    unsafe fn next(
        &mut self,
        persistent: bool,
        dynamic: bool,
        publisher: bool,
        p: &FwdParams,
        q_tiles: u32,
        own: (u32, u32, u32),
        bars: Stages,
    ) -> Option<(u32, u32, u32)> {
        let n = self.n;
        self.n += 1;
        if !persistent {
            return if n == 0 { Some(own) } else { None };
        }
        let ((x, y, z), (gx, gy, gz)) = (ptx::block_idx(), ptx::grid_dim());
        let (block, blocks) = (x + gx * (y + gy * z), gx * gy * gz);
        let counter = p.tile_counter as *mut u32;
        let t = if n == 0 {
            block
        } else if !dynamic {
            n.wrapping_mul(blocks).wrapping_add(block)
        } else {
            // Tile n ≥ 1 goes through a ring of two slots, one use each.
            let (slot, parity) = ring_slot(n - 1, 2);
            // SAFETY: as the caller guarantees.
            unsafe {
                if publisher {
                    ptx::st_shared_u32(bars.tile_slot(slot), self.fetched);
                    ptx::mbarrier_arrive(bars.tile_ready(slot));
                    self.fetched
                } else {
                    ptx::mbarrier_wait(bars.tile_ready(slot), parity);
                    ptx::ld_shared_u32(bars.tile_slot(slot))
                }
            }
        };
        let tile = persistent_tile(0, t, blocks, (q_tiles, p.shape.heads, p.shape.batch));
        if publisher && dynamic && tile.is_some() {
            // SAFETY: the counter is this launch's (the caller).
            self.fetched = blocks.wrapping_add(unsafe { ptx::atomic_inc_global_u32(counter) });
        }
        if !dynamic {
            return tile;
        }
        // The same tile in every lane, but read from shared memory: broadcast it, which keeps
        // the tile's mask selects branch-free (the stage and descriptor math stays on the vector
        // path all the same: the static schedule is a separate instance for that, v30f).
        let ((x, head, batch), some) = match tile {
            Some(t) => (t, 1),
            None => ((0, 0, 0), 0),
        };
        let b = ptx::warp_broadcast;
        if b(some) != 0 { Some((b(x), b(head), b(batch))) } else { None }
    }
}

/// The warp-specialized forward (`FwdWgmmaTraits::PRODUCER`): warpgroup 0 is the producer, which
/// lowers its registers (`PRODUCER_REGISTERS`) and only issues `cp.async` copies (Q once, then K and V of every
/// tile into `STAGES` buffers each), each tile's arrival tracked by an mbarrier; warpgroups
/// 1..=WARPGROUPS are the consumers (64 query rows each), which raise theirs to the rest and run the
/// pipelined loop of [`flash_fwd_wgmma`] with no load instruction and no block barrier: S = Q·Kⱼᵀ
/// and P·Vⱼ₋₁ issued together, tile j's softmax under P·V, a K stage released once its S is
/// computed, a V stage once its P·V is. Each consumer runs at its own pace, so one's softmax
/// can fall under the other's GEMMs. Masks, modifiers and layouts as in [`flash_fwd_wgmma`].
///
/// # Safety
/// As [`flash_fwd_wgmma`], with `T::THREADS` threads (the producer included).
#[inline(always)]
pub unsafe fn flash_fwd_wgmma_ws<E: WsInput, T: FwdWgmmaTraits, const MODS: bool, const SEQ: bool>(p: &FwdParams) {
    // A persistent kernel's dynamic schedule (masked calls: a tile counter) is its own instance:
    // with the tile read from shared memory ptxas keeps everything computed from it (the ring
    // position, the stage addresses, the wgmma descriptors) on the vector path, 12% more
    // instructions in the loop (v30e, ncu). The static schedule's tiles come from the block and
    // grid indices, as uniform to ptxas as a one-tile-a-block kernel's.
    // SAFETY: as the caller guarantees.
    unsafe {
        if T::PERSISTENT && !SEQ && p.tile_counter != 0 {
            flash_fwd_wgmma_ws_walk::<E, T, MODS, SEQ, true>(p)
        } else {
            flash_fwd_wgmma_ws_walk::<E, T, MODS, SEQ, false>(p)
        }
    }
}

/// [`flash_fwd_wgmma_ws`] for one kind of tile walk: `DYNAMIC`, tiles from the counter.
///
/// # Safety
/// As [`flash_fwd_wgmma_ws`]; `DYNAMIC` only with a persistent kernel's zeroed counter.
#[inline(always)]
unsafe fn flash_fwd_wgmma_ws_walk<
    E: WsInput,
    T: FwdWgmmaTraits,
    const MODS: bool,
    const SEQ: bool,
    const DYNAMIC: bool,
>(
    p: &FwdParams,
) {
    const { assert!(T::PRODUCER && T::PIPELINED && (T::WARPGROUPS == 2 || T::WARPGROUPS == 3)) };
    // The register splits the `setmaxnreg` calls below spell out.
    const { assert!(matches!((T::PRODUCER_REGISTERS, T::CONSUMER_REGISTERS), (24, 240) | (40, 232) | (24, 160))) };
    // The generated issue-only GEMMs: 64- or 128-key tiles up to head_dim 128, 64-key tiles above.
    const { assert!(T::HEAD_DIM <= 128 || T::BLOCK_N == 64 || E::BYTES == 1) };
    // e4m3 inputs: the traits' element size, and the output staged over the K/V stages after a
    // barrier of the two consumers (named barrier 3).
    const { assert!(E::BYTES == T::ELEMENT_BYTES && (E::BYTES == 2 || T::WARPGROUPS == 2 && !MODS)) };
    let fp8 = E::BYTES == 1;
    const { assert!(!T::PINGPONG || T::WARPGROUPS == 2) };
    const { assert!(padding_fits(T::DATA_HEAD_DIM, T::HEAD_DIM)) };
    // Persistent: 16-bit inputs (the FP8 output staging reuses the K/V stages), dense calls only.
    const { assert!(!T::PERSISTENT || E::BYTES == 2) };
    let persistent = T::PERSISTENT && !SEQ;
    let mut sequence = core::mem::MaybeUninit::uninit();
    // SAFETY: the host validated the layout's arrays.
    let (p, sequence_index, split) = unsafe { p.of_block::<SEQ>(ptx::block_idx().2, &mut sequence) };
    let shape = &p.shape;
    let q_tiles = ceil_div(shape.seqlen_q, T::BLOCK_M);
    if SEQ && ptx::block_idx().0 >= q_tiles {
        return;
    }
    let mask = Mask::of(shape);
    let tid = ptx::thread_idx();
    // The block's query tiles (one, its own, unless persistent; blocks are counted over all
    // three grid dimensions, so any grid is correct).
    let own = || {
        let (x, y, z) = ptx::block_idx();
        (x, y, if SEQ { sequence_index } else { z })
    };
    // The tile's first query row and its key tiles (this split's, with split-KV).
    let key_tiles = |q_begin: u32| {
        let (key_lo, key_hi) = mask.key_range(q_begin, q_begin + T::BLOCK_M);
        let tiles = (key_lo / T::BLOCK_N, ceil_div(key_hi, T::BLOCK_N));
        if SEQ { split_tiles(tiles, split, shape.layout.splits()) } else { tiles }
    };

    let smem = ptx::dynamic_smem_base().next_multiple_of(1024);
    let tile = |offset: u32, rows: u32| Sw128Tile {
        base: smem + offset,
        rows,
        chunks_per_row: T::CHUNKS_PER_ROW,
        data_chunks: T::DATA_CHUNKS,
    };
    let q_tile = tile(T::Q_OFFSET, T::BLOCK_M);
    let k_tile = |stage: u32| tile(T::K_OFFSET + stage * T::KV_TILE_BYTES, T::BLOCK_N);
    // With e4m3 the stage holds Vᵀ: head_dim rows of the tile's keys, one 128-byte panel (128
    // keys) or, for 64- and 192-key tiles (`vt_sw64`), one or three panels of 64 keys: head_dim
    // rows of 64 bytes each, in the 64-byte swizzle.
    let vt_sw64 = fp8 && T::BLOCK_N != 128;
    let v_tile = |stage: u32| {
        let base = T::V_OFFSET + stage * T::KV_TILE_BYTES;
        let chunks = T::BLOCK_N / 16;
        if fp8 {
            Sw128Tile { base: smem + base, rows: T::HEAD_DIM, chunks_per_row: chunks, data_chunks: chunks }
        } else {
            tile(base, T::BLOCK_N)
        }
    };
    let vt64_tile = |stage: u32, panel: u32| Sw64Tile {
        base: smem + T::V_OFFSET + stage * T::KV_TILE_BYTES + panel * T::HEAD_DIM * 64,
        rows: T::HEAD_DIM,
    };
    let bars = Stages { base: smem + T::MBARRIER_OFFSET, stages: T::STAGES };
    let consumer_threads = 128 * T::WARPGROUPS;
    if tid == 0 {
        // SAFETY: 8-byte aligned slots of this block's shared memory (traits), initialized once,
        // before the barrier below and so before any use.
        unsafe {
            ptx::mbarrier_init(bars.q_full(), 128);
            for stage in 0..T::STAGES {
                ptx::mbarrier_init(bars.k_full(stage), 128);
                ptx::mbarrier_init(bars.v_full(stage), 128);
                ptx::mbarrier_init(bars.k_empty(stage), consumer_threads);
                ptx::mbarrier_init(bars.v_empty(stage), consumer_threads);
            }
            if persistent {
                ptx::mbarrier_init(bars.q_empty(), consumer_threads);
                ptx::mbarrier_init(bars.tile_ready(0), 1);
                ptx::mbarrier_init(bars.tile_ready(1), 1);
            }
        }
    }
    // The only block-wide barrier: every thread sees the initialized mbarriers.
    sync_threads();

    if tid < 128 {
        // (`setmaxnreg` takes an immediate: the shipped splits, constant-folded.)
        match T::PRODUCER_REGISTERS {
            24 => ptx::setmaxnreg_dec::<24>(),
            _ => ptx::setmaxnreg_dec::<40>(),
        }
        let at = |base: u64, offset: i64| (base as *const E::Stored).wrapping_offset(offset as isize);
        let (k_row, v_row) = (p.k_strides.row, p.v_strides.row);
        // K/V tiles loaded for the block's earlier query tiles: the ring's uses go on from there.
        let mut ring = 0;
        let mut tiles = TileWalk { n: 0, fetched: 0 };
        // SAFETY: the host zeroed the counter for this launch; the slots' barriers were
        // initialized above (`TileWalk::next`).
        while let Some((block_x, head, batch)) =
            unsafe { tiles.next(persistent, DYNAMIC, tid == 0, p, q_tiles, own(), bars) }
        {
            let kv_head = kv_head_of(shape, head);
            let q_begin = q_tile_of_block(block_x, q_tiles) * T::BLOCK_M;
            let (first_tile, end_tile) = key_tiles(q_begin);
            let q_ptr = at(p.q, p.q_strides.offset(batch, q_begin, head));
            let k_ptr = at(p.k, p.k_strides.offset(batch, 0, kv_head));
            let v_ptr = at(p.v, p.v_strides.offset(batch, 0, kv_head));
            // SAFETY: the host validated Q, K and V (rows at these strides; rows past the ends
            // are zero-filled without being read; Vᵀ holds whole key tiles of every head-dim
            // row); each stage is refilled only after its empty barrier completed the phase of
            // its previous use, i.e. after every consumer's GEMMs on it, and the Q tile (after
            // the first) only after Q's empty barrier completed the previous tile's phase.
            unsafe {
                let n = tiles.current();
                if n > 0 {
                    ptx::mbarrier_wait(bars.q_empty(), (n % 2) ^ 1);
                }
                q_tile.load_async(q_ptr, p.q_strides.row, shape.seqlen_q - q_begin, tid, 128);
                ptx::cp_async_mbarrier_arrive(bars.q_full());
                for tile in first_tile..end_tile {
                    let i = ring + tile - first_tile;
                    let (stage, parity) = bars.of(i);
                    let k_begin = tile * T::BLOCK_N;
                    let rows = shape.seqlen_k - k_begin;
                    if i >= T::STAGES {
                        ptx::mbarrier_wait(bars.k_empty(stage), parity ^ 1);
                    }
                    k_tile(stage).load_async(
                        k_ptr.wrapping_offset(k_begin as isize * k_row as isize),
                        k_row,
                        rows,
                        tid,
                        128,
                    );
                    ptx::cp_async_mbarrier_arrive(bars.k_full(stage));
                    if i >= T::STAGES {
                        ptx::mbarrier_wait(bars.v_empty(stage), parity ^ 1);
                    }
                    if fp8 {
                        // Vᵀ: all head_dim rows, the tile's keys from byte k_begin of each.
                        let keys = v_ptr.wrapping_offset(k_begin as isize);
                        if vt_sw64 {
                            for panel in 0..T::BLOCK_N / 64 {
                                let panel_keys = keys.wrapping_offset(64 * panel as isize);
                                vt64_tile(stage, panel).load_async(panel_keys, v_row, tid, 128);
                            }
                        } else {
                            v_tile(stage).load_async(keys, v_row, T::HEAD_DIM, tid, 128);
                        }
                    } else {
                        let rows_from = v_ptr.wrapping_offset(k_begin as isize * v_row as isize);
                        v_tile(stage).load_async(rows_from, v_row, rows, tid, 128);
                    }
                    ptx::cp_async_mbarrier_arrive(bars.v_full(stage));
                }
            }
            ring += end_tile.saturating_sub(first_tile);
        }
        // Nothing of this thread stays in flight when it exits.
        cp_async_wait_all();
        return;
    }
    match T::CONSUMER_REGISTERS {
        240 => ptx::setmaxnreg_inc::<240>(),
        232 => ptx::setmaxnreg_inc::<232>(),
        _ => ptx::setmaxnreg_inc::<160>(),
    }

    // Consumer warp w (0..8) owns query rows 16w..16w+16 of the block.
    let ctid = tid - 128;
    let (warpgroup, warp, lane) = (ctid / 128, ctid / 32, ctid % 32);
    let warp_row0 = 16 * warp;
    let panels = T::PANELS;
    let q_descs = panel_descriptors(panels, |panel| {
        wgmma_descriptor(q_tile.panel(panel, 64 * warpgroup), 16, SW128_ROW_GROUP_BYTES)
    });
    let k_descs = |stage: u32| {
        let keys = k_tile(stage);
        panel_descriptors(panels, |panel| wgmma_descriptor(keys.panel(panel, 0), 16, SW128_ROW_GROUP_BYTES))
    };
    // V is MN-major (its rows run along the keys); Vᵀ K-major, as K.
    let v_desc = |stage: u32| {
        if vt_sw64 {
            // (The GEMM steps from panel to panel itself.)
            return wgmma_descriptor_sw64(vt64_tile(stage, 0).base, 16, SW64_ROW_GROUP_BYTES);
        }
        let (leading, stride) =
            if fp8 { (16, SW128_ROW_GROUP_BYTES) } else { (T::BLOCK_N * 128, SW128_ROW_GROUP_BYTES) };
        wgmma_descriptor(v_tile(stage).panel(0, 0), leading, stride)
    };
    let (n_tiles8, d_tiles8) = ((T::BLOCK_N / 8) as usize, (T::HEAD_DIM / 8) as usize);
    // Ping-pong (T::PINGPONG): consumer c issues its GEMMs only on its turn (named barrier 1 + c)
    // and then passes the turn to the other (barrier 2 - c); both run the same number of issue
    // points per query tile (the first S, one per loop iteration, the last P·V), consumer 0
    // going first. The last pass of consumer 1 is left out: nobody would take it (on a
    // persistent block's next tile, its first arrive below stands for it).
    let take_turn = || {
        if T::PINGPONG {
            // SAFETY: both consumers' 256 threads pair every wait with the other's pass.
            unsafe {
                if warpgroup == 0 { ptx::named_barrier_sync::<1, 256>() } else { ptx::named_barrier_sync::<2, 256>() }
            }
        }
    };
    let pass_turn = |last: bool| {
        if T::PINGPONG && !(last && warpgroup == 1) {
            // SAFETY: as above.
            unsafe {
                if warpgroup == 0 {
                    ptx::named_barrier_arrive::<2, 256>()
                } else {
                    ptx::named_barrier_arrive::<1, 256>()
                }
            }
        }
    };
    // Persistent: Q is free for the next tile once this thread's last GEMM on it completed
    // (with O's own staging tile: the last score GEMM) or, when O is staged in Q, after the
    // epilogue.
    let release_q = |last_scores: bool| {
        if persistent && T::O_OWN_STAGE && last_scores {
            // SAFETY: as for the stages' arrives below (one arrive per thread and tile).
            unsafe { ptx::mbarrier_arrive(bars.q_empty()) };
        }
    };
    let mut ring = 0;
    let mut tiles = TileWalk { n: 0, fetched: 0 };
    // SAFETY: as for the producer.
    while let Some((block_x, head, batch)) = unsafe { tiles.next(persistent, DYNAMIC, false, p, q_tiles, own(), bars) }
    {
        let kv_head = kv_head_of(shape, head);
        let q_begin = q_tile_of_block(block_x, q_tiles) * T::BLOCK_M;
        let (first_tile, end_tile) = key_tiles(q_begin);
        let warp_q0 = q_begin + warp_row0;
        // SAFETY: the host validated the modifiers' device arrays (slopes, sinks).
        let (mods, sink_log2, output_scale) = unsafe { ScoreMods::for_forward::<MODS>(p, batch, head) };
        let sink_log2 = if SEQ && split != 0 { f32::NEG_INFINITY } else { sink_log2 };
        // e4m3: the descale factors, Q's and K's into the softmax scale, V's into the output's.
        let (scale_log2, output_scale) = if fp8 {
            // SAFETY: the host checked the descale arrays' extents.
            let (qk, v) = unsafe { p.descales.factors(batch, kv_head) };
            (shape.scale_log2 * qk, v)
        } else {
            (shape.scale_log2, output_scale)
        };
        let step = ScoreStep { warp_q0, block_n: T::BLOCK_N, mask: &mask, mods: &mods };

        let mut o = [[[0f32; 4]; HEAD_DIM_TILES8]; 1];
        let mut softmax = [OnlineSoftmax::starting_at(sink_log2, lane)];
        // SAFETY (every wait and arrive below): the barriers were initialized before the block
        // barrier; each consumer thread arrives once per use of a stage (and of Q), after its
        // GEMMs on it completed, and waits for the phase of the use it is at (the producer is at
        // most one round of the ring, and one use of Q, ahead of the slowest consumer).
        unsafe { acquire(bars.q_full(), tiles.current() % 2) };
        if first_tile < end_tile {
            if T::PINGPONG && warpgroup == 1 {
                // SAFETY: as above (consumer 0's first turn).
                unsafe { ptx::named_barrier_arrive::<1, 256>() }
            }
            let (stage, parity) = bars.of(ring);
            let mut s = [[[0f32; 4]; WS_SCORE_TILES8]; 1];
            // SAFETY: the whole warpgroup is here (warpgroup-uniform control flow); Q and the
            // first K tile landed and were fenced for the async proxy; `s` is left alone until
            // the wait.
            unsafe {
                acquire(bars.k_full(stage), parity);
                take_turn();
                E::issue_scores(T::BLOCK_N, T::HEAD_DIM, &mut s[0], q_descs, k_descs(stage));
                pass_turn(false);
            }
            wait_scores(0, T::BLOCK_N, &mut s[0]);
            // SAFETY: this thread's score GEMM on the stage has completed.
            unsafe { ptx::mbarrier_arrive(bars.k_empty(stage)) };
            release_q(first_tile + 1 == end_tile);
            step.scores::<MODS, _>(&mut s[0], first_tile, lane);
            // O is still zero: no correction to apply.
            let poly = (T::POLY_EXP_TILES as usize, T::POLY_EXP_TILES > 0 && step.unmasked(first_tile));
            let _ = online_softmax_split(&mut softmax, &mut s, 1, n_tiles8, scale_log2, poly.0, poly.1);
            step.dropout::<MODS, _>(&mut s[0], first_tile, lane);
            let mut previous = E::probabilities(&s[0], n_tiles8);
            for tile in first_tile + 1..end_tile {
                let i = ring + tile - first_tile;
                let (stage, parity) = bars.of(i);
                let (previous_stage, previous_parity) = bars.of(i - 1);
                let lane = ptx::opaque(lane);
                let mut s = [[[0f32; 4]; WS_SCORE_TILES8]; 1];
                // SAFETY: as above; the accumulators and `previous` are left alone until the
                // waits below name them.
                unsafe {
                    acquire(bars.k_full(stage), parity);
                    acquire(bars.v_full(previous_stage), previous_parity);
                    take_turn();
                    E::issue_scores(T::BLOCK_N, T::HEAD_DIM, &mut s[0], q_descs, k_descs(stage));
                    E::issue_output(T::HEAD_DIM, T::BLOCK_N, &mut o[0], &previous, v_desc(previous_stage));
                    pass_turn(false);
                }
                wait_scores(1, T::BLOCK_N, &mut s[0]);
                // SAFETY: this thread's score GEMM on the stage has completed.
                unsafe { ptx::mbarrier_arrive(bars.k_empty(stage)) };
                release_q(tile + 1 == end_tile);
                step.scores::<MODS, _>(&mut s[0], tile, lane);
                let poly = (T::POLY_EXP_TILES as usize, T::POLY_EXP_TILES > 0 && step.unmasked(tile));
                let correction = online_softmax_split(&mut softmax, &mut s, 1, n_tiles8, scale_log2, poly.0, poly.1);
                step.dropout::<MODS, _>(&mut s[0], tile, lane);
                wait(0, Waited::Output(T::HEAD_DIM, &mut o[0]));
                // SAFETY: this thread's P·V GEMM on the previous stage has completed.
                unsafe { ptx::mbarrier_arrive(bars.v_empty(previous_stage)) };
                if let Some(correction) = correction {
                    rescale(&mut o, &correction, 1, d_tiles8);
                }
                previous = E::probabilities(&s[0], n_tiles8);
            }
            let (last_stage, last_parity) = bars.of(ring + end_tile - 1 - first_tile);
            // SAFETY: as for the score GEMM.
            unsafe {
                acquire(bars.v_full(last_stage), last_parity);
                take_turn();
                E::issue_output(T::HEAD_DIM, T::BLOCK_N, &mut o[0], &previous, v_desc(last_stage));
                pass_turn(true);
            }
            wait(0, Waited::Output(T::HEAD_DIM, &mut o[0]));
            if persistent {
                // SAFETY: this thread's last P·V GEMM on the stage has completed (without a
                // persistent loop the producer loads nothing more, and nobody waits for it).
                unsafe { ptx::mbarrier_arrive(bars.v_empty(last_stage)) };
            }
        } else {
            release_q(true);
        }
        // With e4m3 inputs O is staged over the K/V stages: both consumers must be past their
        // GEMMs (every load landed before its tile's GEMM, so the producer is done too).
        let stage = if fp8 {
            // SAFETY: both consumers (256 threads) reach this once.
            unsafe { ptx::named_barrier_sync::<3, 256>() };
            let chunks = T::HEAD_DIM * 2 / 16;
            Sw128Tile { base: smem + T::O_STAGE_OFFSET, rows: T::BLOCK_M, chunks_per_row: chunks, data_chunks: chunks }
        } else {
            tile(T::O_STAGE_OFFSET, T::BLOCK_M)
        };
        // SAFETY: every GEMM that read the staging area has completed (the last one waited; with
        // e4m3, the other consumer's too, by the barrier); O's own staging tile is read by
        // nothing but this warp's epilogue.
        unsafe {
            write_output::<E::Out, T, MODS, SEQ>(
                p,
                (batch, head, split),
                stage,
                q_begin,
                warp_row0,
                lane,
                &softmax[0],
                &o[0],
                output_scale,
            )
        };
        if persistent && !T::O_OWN_STAGE {
            // SAFETY: as above; this warp's epilogue reads of the Q tile are done.
            unsafe { ptx::mbarrier_arrive(bars.q_empty()) };
        }
        ring += end_tile.saturating_sub(first_tile);
    }
}

/// Vᵀ for the FP8 forward (`FwdWgmmaWsFp8`): V read through `p.k` at `p.k_strides` (batch,
/// row, head; bytes), written to `p.v` as (batch, K/V head, head-dim row, key) at `p.v_strides`,
/// the keys of every 32 in [`fp8_key_of_position`] order and zeros from seqlen_k to the padded
/// length (`tiling::fp8_transposed_keys`).
///
/// Grid (padded keys / 128, heads_k · head_dim / 64, batch), 128 threads: warp w of a block owns
/// head-dim columns 16w..16w+16 of the block's 64, and lane (c, h, q) = (lane / 8, lane / 4 % 2,
/// lane % 4) the positions 32c + 16h + 4q..+4 of the block's 128 keys. A lane reads its four
/// keys' 16 columns and writes four bytes to each of the 16 Vᵀ rows; the 32 lanes of a warp
/// write 128 contiguous bytes of a row per store.
///
/// # Safety
/// Launched with that grid on a parameter block whose V (`k`) holds seqlen_k rows of head_dim
/// bytes at 16-byte aligned strides, and whose Vᵀ (`v`) holds the padded rows described above.
#[inline(always)]
pub unsafe fn fp8_transpose_v(p: &FwdParams) {
    let shape = &p.shape;
    let (block_x, block_y, batch) = ptx::block_idx();
    // (At least 1, so that the division below has no panic path; the host launches head_dim ≥ 64.)
    let column_blocks = (shape.head_dim / 64).max(1);
    let (kv_head, column_block) = (block_y / column_blocks, block_y % column_blocks);
    let tid = ptx::thread_idx();
    let (warp, lane) = (tid / 32, tid % 32);
    let column0 = 64 * column_block + 16 * warp;
    let position0 = FP8_TRANSPOSE_KEYS * block_x + 32 * (lane / 8) + 16 * (lane / 4 % 2) + 4 * (lane % 4);
    let src = (p.k as *const u8).wrapping_offset((p.k_strides.offset(batch, 0, kv_head) + column0 as i64) as isize);
    let mut rows = [[0u32; 4]; 4];
    for (r, row) in rows.iter_mut().enumerate() {
        let key = fp8_key_of_position(position0 + r as u32);
        if key < shape.seqlen_k {
            // SAFETY: a row of V below seqlen_k, 16 bytes from a 16-byte aligned column.
            *row = unsafe { ptx::ld_global_nc_v4(src.wrapping_offset(key as isize * p.k_strides.row as isize)) };
        }
    }
    let dst = (p.v as *mut u8).wrapping_offset((p.v_strides.offset(batch, 0, kv_head) + position0 as i64) as isize);
    for j in 0..16 {
        let byte = |r: usize| (rows[r][j / 4] >> (8 * (j % 4))) & 0xff;
        let word = byte(0) | byte(1) << 8 | byte(2) << 16 | byte(3) << 24;
        // SAFETY: inside Vᵀ row column0 + j (the host sized it), 4-byte aligned.
        unsafe {
            ptx::st_global_u32(dst.wrapping_offset((column0 + j as u32) as isize * p.v_strides.row as isize), word)
        };
    }
}
