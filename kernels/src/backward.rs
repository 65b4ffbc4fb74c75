//! FlashAttention-2 backward.
//!
//! Launches, in this order on one stream: [`preprocess`] computes D = rowsum(dO ∘ O) and clears the
//! f32 dQ accumulator; [`flash_bwd`] runs one block per K/V tile and query head, looping over the
//! query tiles that see it, with dK and dV accumulated in registers and dQ added to the
//! accumulator with atomics; [`convert_dq`] writes dQ in the input dtype. With grouped K/V heads
//! [`reduce_kv_groups`] then sums each group's dK and dV, and with attention sinks
//! [`sink_gradient`] computes their gradient. The row kernels run one warp per row, one 16-byte
//! chunk per lane.
//!
//! Inside [`flash_bwd`] each group of `D_SPLIT` warps owns 16 keys and works in the transposed
//! orientation (Sᵀ = K·Qᵀ), so that Pᵀ and dSᵀ come out of the accumulators already shaped as the
//! A operand of dV += Pᵀ·dO and dK += dSᵀ·Q, and a key's statistics never leave its warp. With
//! `D_SPLIT` = 2 (head_dim 192, 256) the two warps of a group compute the same Sᵀ and dPᵀ and
//! accumulate different column halves of dK and dV, which would not fit one warp's registers.
//!
//! K and V are loaded once, from the K/V head ([`kv_head_of`]). The block visits the query tiles
//! of [`Mask::query_range`] (causal and windowed blocks skip queries that see none of their keys).
//! Each tile's Q, dO, LSE and D form one shared-memory stage, double-buffered: the next tile's
//! copies (4 bytes per query for LSE and D) are issued before this tile's work. P is recomputed
//! from the forward's LSE, which already holds the sink's term, so sinks change nothing here.
//! dSᵀ goes to shared memory once, as 16-bit values; dQ += scale · dS·K is computed in units of 16
//! queries × `DQ_COLS` columns handed round-robin to the warps and added with
//! `red.global.add.v2.f32` on sm_90 (two scalar reductions on sm_80). After the loop dK (times
//! the scale) and dV are written once ([`DkvRows`]): packed into dK and dV, or, with grouped K/V
//! heads, as this query head's f32 rows of `BwdParams::dkv_accum`, so that no two blocks write the
//! same row and [`reduce_kv_groups`] adds the group in head order.
//!
//! Deterministic mode (`BwdParams::dq_semaphore` set): before adding its dQ part of a query tile,
//! a block's thread 0 spins (`ld.acquire.gpu`) until the tile's counter equals the block's turn
//! ([`dq_turn`]: its rank among the key blocks that visit the tile); after the block's barrier it
//! fences and increments the counter with release semantics, so the f32 additions into each dQ
//! element happen in key-block order on every run. Blocks wait only on lower-numbered blocks of
//! the same head, which are dispatched first. dK, dV and the sinks' gradient (a fixed-order sum)
//! are reproducible in either mode.

use crate::modifiers::Dropout;
use crate::modifiers::{ScoreMods, dv_operand, fragment_element};
use crate::params::{AttnShape, BwdParams, FwdParams, dkv_accum_half, dkv_accum_index, row_stat_index};
use crate::ptx::{self, cp_async_commit, cp_async_wait_all, sync_threads};
use crate::tile::{Element, MAX_HEAD_DIM_TILES8, MAX_SEQ_TILES8, SmemTile, accumulators_as_a, warp_sum};
use crate::tiling::{FragmentMask, Mask, ceil_div, dq_semaphore_index, dq_turn, kv_head_of, query_heads_of};
use crate::traits::{BwdTraits, ROW_KERNEL_WARPS, WARP_ROWS};

const LOG2_E: f32 = core::f32::consts::LOG2_E;

/// # Safety
/// Launched with `T::THREADS` threads, grid `(ceil(seqlen_k / BLOCK_N), heads, batch)` and
/// `T::SMEM_BYTES` of dynamic shared memory, after [`preprocess`] on the same parameters.
#[inline(always)]
pub unsafe fn flash_bwd<E: Element, T: BwdTraits, const MODS: bool, const SEQ: bool>(p: &BwdParams) {
    // The block's sequence for the `SEQ` kernels (`BwdParams::of_block`).
    let mut sequence = core::mem::MaybeUninit::uninit();
    // SAFETY: the host validated the layout's arrays.
    let p = unsafe { p.of_block::<SEQ>(ptx::block_idx().2, &mut sequence) };
    let f = &p.fwd;
    let shape = &f.shape;
    // Blocks past this sequence's keys (a packed batch's shorter sequences) have nothing to do.
    if SEQ && ptx::block_idx().0 * T::BLOCK_N >= shape.seqlen_k {
        return;
    }
    let mask = Mask::of(shape);
    let tid = ptx::thread_idx();
    let (warp, lane) = (tid / 32, tid % 32);
    let (block_x, head, batch) = ptx::block_idx();
    let kv_head = kv_head_of(shape, head);
    let k_begin = block_x * T::BLOCK_N;
    // Warps `w` and `w + key_groups` share keys; `d_part` picks their slice of dK, dV columns.
    let key_groups = T::WARPS / T::D_SPLIT;
    let (key_warp, d_part) = (warp % key_groups, warp / key_groups);
    let warp_k0 = k_begin + key_warp * WARP_ROWS;

    let d_tiles16 = (T::HEAD_DIM / 16) as usize;
    let slice_tiles16 = d_tiles16 / T::D_SPLIT as usize;
    let slice16_0 = d_part * slice_tiles16 as u32;
    let m_tiles8 = (T::BLOCK_M / 8) as usize;

    let smem = ptx::dynamic_smem_base();
    let tile = |offset: u32| SmemTile { base: smem + offset, chunks_per_row: T::CHUNKS_PER_ROW };
    let (k_s, v_s) = (tile(T::K_OFFSET), tile(T::V_OFFSET));
    let ds_s = SmemTile { base: smem + T::DS_OFFSET, chunks_per_row: T::BLOCK_M / 8 };
    let stage_base = |stage: u32| smem + T::STAGE_OFFSET + stage * T::STAGE_BYTES;

    let key_rows = shape.seqlen_k - k_begin;
    // SAFETY: the host validated K and V (seqlen_k rows at these strides); rows past the end are
    // zero-filled without being read.
    unsafe {
        let k_ptr = (f.k as *const u16).wrapping_offset(f.k_strides.offset(batch, k_begin, kv_head) as isize);
        let v_ptr = (f.v as *const u16).wrapping_offset(f.v_strides.offset(batch, k_begin, kv_head) as isize);
        k_s.load_async(T::BLOCK_N, k_ptr, f.k_strides.row, key_rows, tid, T::THREADS);
        v_s.load_async(T::BLOCK_N, v_ptr, f.v_strides.row, key_rows, tid, T::THREADS);
    }

    // Start copying query tile `q_tile` (Q, dO, LSE, D) into `stage`. Rows past seqlen_q arrive
    // as zeros; the mask keeps them out of every product.
    let load_queries = |q_tile: u32, stage: u32| {
        let q_begin = q_tile * T::BLOCK_M;
        let q_rows = shape.seqlen_q - q_begin;
        let base = stage_base(stage);
        // SAFETY: Q and dO hold seqlen_q rows at these strides; LSE and D hold
        // batch · heads · seqlen_q floats; rows past the end are zero-filled without a read.
        unsafe {
            let q_ptr = (f.q as *const u16).wrapping_offset(f.q_strides.offset(batch, q_begin, head) as isize);
            let do_ptr = (p.d_o as *const u16).wrapping_offset(p.do_strides.offset(batch, q_begin, head) as isize);
            tile(base - smem + T::Q_IN_STAGE).load_async(T::BLOCK_M, q_ptr, f.q_strides.row, q_rows, tid, T::THREADS);
            tile(base - smem + T::DO_IN_STAGE).load_async(
                T::BLOCK_M,
                do_ptr,
                p.do_strides.row,
                q_rows,
                tid,
                T::THREADS,
            );
            if tid < T::BLOCK_M {
                let in_range = tid < q_rows;
                let at = row_stat_index::<SEQ>(shape, batch, head, if in_range { q_begin + tid } else { 0 }) as isize;
                let bytes = if in_range { 4 } else { 0 };
                ptx::cp_async_4(
                    base + T::LSE_IN_STAGE + 4 * tid,
                    (f.lse as *const f32).wrapping_offset(at) as *const u8,
                    bytes,
                );
                ptx::cp_async_4(
                    base + T::D_IN_STAGE + 4 * tid,
                    (p.softmax_d as *const f32).wrapping_offset(at) as *const u8,
                    bytes,
                );
            }
        }
    };

    let mut dk = [[0f32; 4]; MAX_HEAD_DIM_TILES8];
    let mut dv = [[0f32; 4]; MAX_HEAD_DIM_TILES8];
    let (query_lo, query_hi) = mask.query_range(k_begin, k_begin + T::BLOCK_N);
    let (first_tile, end_tile) = (query_lo / T::BLOCK_M, ceil_div(query_hi, T::BLOCK_M));
    if first_tile < end_tile {
        load_queries(first_tile, 0);
    }
    cp_async_commit();
    cp_async_wait_all();
    sync_threads();

    // SAFETY: the host validated the modifiers' device arrays.
    let mods = unsafe { ScoreMods::for_backward::<MODS>(f, batch, head) };
    for q_tile in first_tile..end_tile {
        let stage = (q_tile - first_tile) % 2;
        if q_tile + 1 < end_tile {
            load_queries(q_tile + 1, 1 - stage);
            cp_async_commit();
        }
        let q_begin = q_tile * T::BLOCK_M;
        let base = stage_base(stage);
        let (q_s, do_s) = (tile(base - smem + T::Q_IN_STAGE), tile(base - smem + T::DO_IN_STAGE));
        let (lse_s, d_s) = (base + T::LSE_IN_STAGE, base + T::D_IN_STAGE);
        let lane = ptx::opaque(lane);

        // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for this warp's 16 keys and the tile's BLOCK_M queries.
        let mut s = [[0f32; 4]; MAX_SEQ_TILES8];
        let mut dp = [[0f32; 4]; MAX_SEQ_TILES8];
        for kk in 0..d_tiles16 {
            let k_frag = k_s.a_fragment(key_warp * WARP_ROWS, kk as u32, lane);
            let v_frag = v_s.a_fragment(key_warp * WARP_ROWS, kk as u32, lane);
            for n in 0..m_tiles8 / 2 {
                let q_b = q_s.b_fragments(16 * n as u32, kk as u32, lane);
                E::mma(&mut s[2 * n], &k_frag, &q_b[0]);
                E::mma(&mut s[2 * n + 1], &k_frag, &q_b[1]);
                let do_b = do_s.b_fragments(16 * n as u32, kk as u32, lane);
                E::mma(&mut dp[2 * n], &v_frag, &do_b[0]);
                E::mma(&mut dp[2 * n + 1], &v_frag, &do_b[1]);
            }
        }

        // Pᵀ = exp(scale·Sᵀ - LSE) recomputed from the forward's LSE; dSᵀ = Pᵀ ∘ (dPᵀ - D)
        // (with the modifiers: `ScoreMods::probabilities` and `score_gradient`). `s` becomes Pᵀ
        // and `dp` becomes dSᵀ, in place.
        let unmasked = mask.tile_is_unmasked(q_begin, q_begin + T::BLOCK_M, warp_k0, warp_k0 + WARP_ROWS);
        let (row, _) = fragment_element(warp_k0, 0, lane, 0, 0);
        let rows = FragmentMask::of_keys(mask, row);
        for t in 0..m_tiles8 {
            let (key, col) = fragment_element(warp_k0, 0, lane, t as u32, 0);
            let query = q_begin + col;
            // SAFETY: col + 1 < BLOCK_M indexes the staged statistics.
            let stat = |base: u32, i: u32| unsafe { ptx::ld_shared_f32(base + 4 * (col + i)) };
            let (lse_log2, d) = ([stat(lse_s, 0) * LOG2_E, stat(lse_s, 1) * LOG2_E], [stat(d_s, 0), stat(d_s, 1)]);
            let visible = |e: u32| unmasked || rows.allows(e, query + e % 2);
            mods.probabilities::<MODS>(&mut s[t], query, key, shape.scale_log2, lse_log2, visible);
            for e in 0..4 {
                let (q, k) = (query + e as u32 % 2, key + 8 * (e as u32 / 2));
                dp[t][e] = mods.score_gradient::<MODS>(s[t][e], dp[t][e], d[e % 2], lse_log2[e % 2], q, k);
            }
        }

        // dV += Pᵀ·dO and dK += dSᵀ·Q over this warp's column slice (dK's scale is applied once
        // at the end).
        for kk in 0..m_tiles8 / 2 {
            let p_a = accumulators_as_a::<E>(&dv_operands::<MODS>(&s[2 * kk]), &dv_operands::<MODS>(&s[2 * kk + 1]));
            let ds_a = accumulators_as_a::<E>(&dp[2 * kk], &dp[2 * kk + 1]);
            for n in 0..slice_tiles16 {
                let do_b = do_s.b_fragments_transposed(16 * kk as u32, slice16_0 + n as u32, lane);
                E::mma(&mut dv[2 * n], &p_a, &do_b[0]);
                E::mma(&mut dv[2 * n + 1], &p_a, &do_b[1]);
                let q_b = q_s.b_fragments_transposed(16 * kk as u32, slice16_0 + n as u32, lane);
                E::mma(&mut dk[2 * n], &ds_a, &q_b[0]);
                E::mma(&mut dk[2 * n + 1], &ds_a, &q_b[1]);
            }
        }

        // dSᵀ to shared memory, so that dQ = dS·K can be split across warps by query rows. The
        // warps of a key group hold the same dSᵀ; the first writes it.
        if d_part == 0 {
            for t in 0..m_tiles8 {
                for half in 0..2 {
                    let row = key_warp * WARP_ROWS + lane / 4 + 8 * half as u32;
                    let col = 8 * t as u32 + 2 * (lane % 4);
                    let packed = E::pack(dp[t][2 * half], dp[t][2 * half + 1]);
                    // SAFETY: row < BLOCK_N and col < BLOCK_M lie inside the dSᵀ tile.
                    unsafe { ptx::st_shared_u32(ds_s.element(row, col), packed) };
                }
            }
        }
        sync_threads();

        wait_for_dq_turn::<SEQ>(p, block_x, head, q_tile, T::BLOCK_M, T::BLOCK_N, tid, sync_threads);
        // dQ += scale · dS·K, in units of 16 queries × DQ_COLS columns spread over the warps.
        let col_units = T::HEAD_DIM / T::DQ_COLS;
        let mut unit = warp;
        while unit < (T::BLOCK_M / 16) * col_units {
            let (q16, c_unit) = (unit / col_units, unit % col_units);
            let mut acc = [[0f32; 4]; MAX_HEAD_DIM_TILES8];
            let acc_tiles16 = (T::DQ_COLS / 16) as usize;
            for kk in 0..(T::BLOCK_N / 16) {
                let ds_a = ds_s.a_fragment_transposed(16 * kk, q16, lane);
                for n in 0..acc_tiles16 {
                    let k_b = k_s.b_fragments_transposed(16 * kk, c_unit * T::DQ_COLS / 16 + n as u32, lane);
                    E::mma(&mut acc[2 * n], &ds_a, &k_b[0]);
                    E::mma(&mut acc[2 * n + 1], &ds_a, &k_b[1]);
                }
            }
            for half in 0..2 {
                let row = q_begin + 16 * q16 + lane / 4 + 8 * half as u32;
                if row < shape.seqlen_q {
                    let base = row_stat_index::<SEQ>(shape, batch, head, row) * shape.head_dim as i64;
                    for t in 0..2 * acc_tiles16 {
                        let col = c_unit * T::DQ_COLS + 8 * t as u32 + 2 * (lane % 4);
                        let at = (p.dq_accum as *mut f32).wrapping_offset((base + col as i64) as isize);
                        // SAFETY: the accumulator holds batch·heads·seqlen_q·head_dim floats; col is
                        // even and rows start at multiples of head_dim, so the pair is 8-byte aligned.
                        unsafe {
                            ptx::red_add_f32x2(at, acc[t][2 * half] * shape.scale, acc[t][2 * half + 1] * shape.scale)
                        };
                    }
                }
            }
            unit += T::WARPS;
        }
        if q_tile + 1 < end_tile {
            cp_async_wait_all();
        }
        // The next tile has landed, and everyone is done with this stage and with dSᵀ.
        sync_threads();
        pass_dq_turn::<SEQ>(p, head, q_tile, T::BLOCK_M, tid);
    }

    for half in 0..2 {
        let key = warp_k0 + lane / 4 + 8 * half as u32;
        if key < shape.seqlen_k {
            let rows = DkvRows::of::<SEQ>(p, batch, key, head, kv_head);
            let pair = |t: usize| {
                let col = 16 * slice16_0 + 8 * t as u32 + 2 * (lane % 4);
                let dk_pair = [dk[t][2 * half] * shape.scale, dk[t][2 * half + 1] * shape.scale];
                (col, dk_pair, [dv[t][2 * half], dv[t][2 * half + 1]])
            };
            // SAFETY: key < seqlen_k and every col + 1 < head_dim.
            unsafe { rows.store::<E>(2 * slice_tiles16, pair) };
        }
    }
}

/// Where one key's dK and dV rows go: the outputs (input dtype, caller's strides, the K/V
/// head), or with grouped K/V heads this query head's rows of the f32 accumulator that
/// [`reduce_kv_groups`] sums over each group.
pub(crate) struct DkvRows {
    dk: *mut u8,
    dv: *mut u8,
    accumulate: bool,
}

impl DkvRows {
    #[inline(always)]
    pub(crate) fn of<const SEQ: bool>(p: &BwdParams, batch: u32, key: u32, head: u32, kv_head: u32) -> Self {
        let shape = &p.fwd.shape;
        if p.dkv_accum == 0 {
            let dk = (p.dk as *mut u16).wrapping_offset(p.dk_strides.offset(batch, key, kv_head) as isize);
            let dv = (p.dv as *mut u16).wrapping_offset(p.dv_strides.offset(batch, key, kv_head) as isize);
            return DkvRows { dk: dk as *mut u8, dv: dv as *mut u8, accumulate: false };
        }
        let dk = (p.dkv_accum as *mut f32).wrapping_offset(dkv_accum_index::<SEQ>(shape, batch, key, head) as isize);
        let dv = dk.wrapping_offset(dkv_accum_half::<SEQ>(shape) as isize);
        DkvRows { dk: dk as *mut u8, dv: dv as *mut u8, accumulate: true }
    }

    /// Store `count` pairs of dK and dV elements, pair `i` at columns `col, col + 1` given by
    /// `pair(i) = (col, dk, dv)` (the branch between the two destinations taken once).
    ///
    /// # Safety
    /// Every `col` is even with `col + 1 < head_dim`, the rows are those of a key below seqlen_k;
    /// the outputs' rows are 16-byte aligned (host-checked) and the accumulator 256-byte aligned.
    #[inline(always)]
    pub(crate) unsafe fn store<E: Element>(&self, count: usize, pair: impl Fn(usize) -> (u32, [f32; 2], [f32; 2])) {
        // SAFETY: guaranteed by the caller.
        unsafe {
            if self.accumulate {
                for i in 0..count {
                    let (col, dk, dv) = pair(i);
                    *(self.dk.wrapping_add(4 * col as usize) as *mut [f32; 2]) = dk;
                    *(self.dv.wrapping_add(4 * col as usize) as *mut [f32; 2]) = dv;
                }
            } else {
                for i in 0..count {
                    let (col, dk, dv) = pair(i);
                    *(self.dk.wrapping_add(2 * col as usize) as *mut u32) = E::pack(dk[0], dk[1]);
                    *(self.dv.wrapping_add(2 * col as usize) as *mut u32) = E::pack(dv[0], dv[1]);
                }
            }
        }
    }
}

/// Grouped K/V heads: dK and dV of each K/V head as the sums of its query heads' rows in the f32
/// accumulator, in head order (deterministic). One warp per key row, 8 columns per lane.
///
/// # Safety
/// Launched with `ROW_KERNEL_THREADS` threads and grid `(ceil(seqlen_k / ROW_KERNEL_WARPS),
/// heads_k, batch)` after the main kernel wrote every query head's rows of `dkv_accum`.
#[inline(always)]
pub unsafe fn reduce_kv_groups<E: Element>(p: &BwdParams) {
    let tid = ptx::thread_idx();
    let (block_x, kv_head, batch) = ptx::block_idx();
    // SAFETY: the host validated the layout's arrays.
    let p = &unsafe { p.sequence(batch) };
    let shape = &p.fwd.shape;
    let (key, lane) = (block_x * ROW_KERNEL_WARPS + tid / 32, tid % 32);
    if key >= shape.seqlen_k {
        return;
    }
    let (first, end) = query_heads_of(shape, kv_head);
    let accum = p.dkv_accum as *const f32;
    let half = dkv_accum_half::<true>(shape) as usize;
    let mut chunk = lane;
    while chunk < shape.head_dim / 8 {
        let at = 8 * chunk as usize;
        let (mut dk, mut dv) = ([0f32; 8], [0f32; 8]);
        for head in first..end {
            let row = dkv_accum_index::<true>(shape, batch, key, head) as usize + at;
            // SAFETY: the accumulator holds 2 · batch · seqlen_k · heads · head_dim floats,
            // 256-byte aligned; row + 8 stays inside this head's row (head_dim % 8 == 0).
            let (k8, v8) = unsafe {
                (*(accum.wrapping_add(row) as *const [f32; 8]), *(accum.wrapping_add(half + row) as *const [f32; 8]))
            };
            for i in 0..8 {
                dk[i] += k8[i];
                dv[i] += v8[i];
            }
        }
        let pack =
            |x: [f32; 8]| Chunk([E::pack(x[0], x[1]), E::pack(x[2], x[3]), E::pack(x[4], x[5]), E::pack(x[6], x[7])]);
        let dk_row = (p.dk as *mut u16).wrapping_offset(p.dk_strides.offset(batch, key, kv_head) as isize);
        let dv_row = (p.dv as *mut u16).wrapping_offset(p.dv_strides.offset(batch, key, kv_head) as isize);
        // SAFETY: key < seqlen_k and the chunk's 8 columns lie inside dK's and dV's rows, which
        // are 16-byte aligned (host-checked).
        unsafe {
            *(dk_row.wrapping_add(at) as *mut Chunk) = pack(dk);
            *(dv_row.wrapping_add(at) as *mut Chunk) = pack(dv);
        }
        chunk += 32;
    }
}

/// The turn counter of query tile `q_tile` of query head `head` (this block's batch) in deterministic mode
/// (null otherwise).
#[inline(always)]
fn dq_semaphore<const SEQ: bool>(p: &BwdParams, head: u32, q_tile: u32, block_m: u32) -> *mut u32 {
    if p.dq_semaphore == 0 {
        return core::ptr::null_mut();
    }
    let (_, _, batch) = ptx::block_idx();
    let index = dq_semaphore_index::<SEQ>(&p.fwd.shape, batch, head, q_tile, block_m);
    (p.dq_semaphore as *mut u32).wrapping_offset(index as isize)
}

/// Deterministic mode: before this block adds its part of query tile `q_tile`'s dQ, wait until
/// the key blocks before it have added theirs. Every computing thread calls this (`tid` counts
/// them from 0); `sync` is the barrier of those threads (the whole block, or the consumer
/// warpgroups of a warp-specialized kernel).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn wait_for_dq_turn<const SEQ: bool>(
    p: &BwdParams,
    key_block: u32,
    head: u32,
    q_tile: u32,
    block_m: u32,
    block_n: u32,
    tid: u32,
    sync: impl Fn(),
) {
    let counter = dq_semaphore::<SEQ>(p, head, q_tile, block_m);
    if counter.is_null() {
        return;
    }
    if tid == 0 {
        let turn = dq_turn(&Mask::of(&p.fwd.shape), key_block, q_tile, block_m, block_n);
        // SAFETY: the host allocated one zeroed counter per (batch, head, query tile).
        while unsafe { ptx::ld_acquire_gpu_u32(counter) } != turn {}
    }
    sync();
}

/// Deterministic mode: hand query tile `q_tile` to the next key block. Called by every thread
/// after a barrier that follows all of this block's dQ reductions for the tile.
#[inline(always)]
pub(crate) fn pass_dq_turn<const SEQ: bool>(p: &BwdParams, head: u32, q_tile: u32, block_m: u32, tid: u32) {
    let counter = dq_semaphore::<SEQ>(p, head, q_tile, block_m);
    if tid == 0 && !counter.is_null() {
        // SAFETY: as in `wait_for_dq_turn`.
        unsafe { ptx::fence_and_release_increment(counter) };
    }
}

/// The dropped probabilities of one accumulator tile as dV's operand ([`dv_operand`]).
#[inline(always)]
pub(crate) fn dv_operands<const MODS: bool>(p: &[f32; 4]) -> [f32; 4] {
    p.map(dv_operand::<MODS>)
}

/// The sinks' gradient, dσ_h = −Σ_{b,i} exp(σ_h − LSE_bhi) · D_bhi, one block per query head
/// (grid y), summed in a fixed order so that it is bitwise reproducible: each thread adds rows
/// `tid, tid + THREADS, …`, then a tree over the threads.
///
/// # Safety
/// Launched with `ROW_KERNEL_THREADS` threads and grid `(1, heads, 1)` after [`preprocess`], on a
/// validated parameter block with sinks (`sinks`, `d_sinks`: `heads` floats).
#[inline(always)]
pub unsafe fn sink_gradient(p: &BwdParams) {
    const THREADS: u32 = crate::traits::ROW_KERNEL_THREADS;
    let shape = &p.fwd.shape;
    let tid = ptx::thread_idx();
    let (_, head, _) = ptx::block_idx();
    // SAFETY: the host passes `heads` sink logits and a `heads`-float gradient.
    let sink = unsafe { *(p.fwd.mods.sinks as *const f32).wrapping_add(head as usize) };
    let mut sum = 0.0f32;
    for batch in 0..shape.batch {
        // SAFETY: the host validated the layout's arrays.
        let shape = &unsafe { p.fwd.sequence(batch) }.shape;
        let mut row = tid;
        while row < shape.seqlen_q {
            let at = row_stat_index::<true>(shape, batch, head, row) as usize;
            // SAFETY: LSE and D hold batch · heads · seqlen_q floats.
            let (lse, d) =
                unsafe { (*(p.fwd.lse as *const f32).wrapping_add(at), *(p.softmax_d as *const f32).wrapping_add(at)) };
            sum += ptx::exp2((sink - lse) * LOG2_E) * d;
            row += THREADS;
        }
    }
    // Fixed-order reduction: within each warp by butterflies, then warp 0 over the warps' sums.
    let sum = warp_sum(sum);
    let smem = ptx::dynamic_smem_base();
    if tid % 32 == 0 {
        // SAFETY: the launch gives THREADS / 32 floats of dynamic shared memory.
        unsafe { ptx::st_shared_u32(smem + 4 * (tid / 32), sum.to_bits()) };
    }
    sync_threads();
    if tid == 0 {
        let mut total = 0.0;
        for w in 0..THREADS / 32 {
            // SAFETY: as above.
            total += unsafe { ptx::ld_shared_f32(smem + 4 * w) };
        }
        // SAFETY: as above.
        unsafe { *(p.d_sinks as *mut f32).wrapping_add(head as usize) = -total };
    }
}

/// The query row (with its head and batch) of this warp in a row kernel, and the lane; `None`
/// for warps past seqlen_q (the sequence's, for which `shape` must be resolved).
#[inline(always)]
fn row_kernel_position(shape: &AttnShape) -> Option<(u32, u32, u32, u32)> {
    let tid = ptx::thread_idx();
    let (block_x, head, batch) = ptx::block_idx();
    let row = block_x * ROW_KERNEL_WARPS + tid / 32;
    (row < shape.seqlen_q).then_some((row, head, batch, tid % 32))
}

/// This row kernel's sequence's parameter block ([`BwdParams::sequence`]).
///
/// # Safety
/// The host validated the layout's arrays.
#[inline(always)]
unsafe fn row_kernel_sequence(p: &BwdParams) -> BwdParams {
    let (_, _, batch) = ptx::block_idx();
    // SAFETY: forwarded from the caller.
    unsafe { p.sequence(batch) }
}

/// Test only: dropout's keep decisions as bytes (1 kept, 0 dropped), `(batch, heads, seqlen_q,
/// seqlen_k)` contiguous at `p.o`, from the same [`crate::modifiers::Dropout`] the attention
/// kernels use, so that a test can hold them against the reference's own Philox. One warp per
/// query row.
///
/// # Safety
/// Launched with `ROW_KERNEL_THREADS` threads and grid `(ceil(seqlen_q / ROW_KERNEL_WARPS),
/// heads, batch)`, `p.o` holding batch · heads · seqlen_q · seqlen_k bytes.
#[inline(always)]
pub unsafe fn dropout_mask(p: &FwdParams) {
    let shape = &p.shape;
    let Some((row, head, batch, lane)) = row_kernel_position(shape) else { return };
    let dropout = Dropout::new(&p.mods, batch * shape.heads + head);
    let row_index = (batch as i64 * shape.heads as i64 + head as i64) * shape.seqlen_q as i64 + row as i64;
    let base = (row_index * shape.seqlen_k as i64) as usize;
    let mut key = lane;
    while key < shape.seqlen_k {
        // SAFETY: guaranteed by the caller: the byte lies inside the mask buffer.
        unsafe { *(p.o as *mut u8).wrapping_add(base + key as usize) = dropout.keeps(row, key) as u8 };
        key += 32;
    }
}

/// Eight 16-bit elements or four f32: the unit of the row kernels' global accesses.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Chunk([u32; 4]);

/// D = rowsum(dO ∘ O) per query row, and a cleared dQ accumulator row. One warp per row, one
/// 16-byte chunk (8 elements) per lane: whole sectors and a quarter of the instructions of
/// element-wise accesses.
///
/// # Safety
/// Launched with `ROW_KERNEL_THREADS` threads and grid `(ceil(seqlen_q / ROW_KERNEL_WARPS), heads,
/// batch)` on a validated parameter block (rows 16-byte aligned, head_dim a multiple of 8).
#[inline(always)]
pub unsafe fn preprocess<E: Element>(p: &BwdParams) {
    // SAFETY: the host validated the layout's arrays.
    let p = &unsafe { row_kernel_sequence(p) };
    let shape = &p.fwd.shape;
    let Some((row, head, batch, lane)) = row_kernel_position(shape) else { return };
    let o = (p.fwd.o as *const u16).wrapping_offset(p.fwd.o_strides.offset(batch, row, head) as isize);
    let d_o = (p.d_o as *const u16).wrapping_offset(p.do_strides.offset(batch, row, head) as isize);
    let stat = row_stat_index::<true>(shape, batch, head, row);
    let accum = (p.dq_accum as *mut f32).wrapping_offset((stat * shape.head_dim as i64) as isize);
    let mut sum = 0.0f32;
    let mut chunk = lane;
    while chunk < shape.head_dim / 8 {
        let at = 8 * chunk as usize;
        // SAFETY: row < seqlen_q and the chunk's 8 columns lie inside O, dO and the accumulator
        // row; all three are 16-byte aligned there (host-checked rows, head_dim % 8 == 0, and a
        // 256-byte aligned accumulator).
        unsafe {
            let (o8, do8) = (*(o.wrapping_add(at) as *const Chunk), *(d_o.wrapping_add(at) as *const Chunk));
            for i in 0..4 {
                let (a, b) = (o8.0[i], do8.0[i]);
                sum += E::to_f32(a as u16) * E::to_f32(b as u16);
                sum += E::to_f32((a >> 16) as u16) * E::to_f32((b >> 16) as u16);
            }
            ptx::st_global_v4(accum.wrapping_add(at) as *mut u8, [0; 4]);
            ptx::st_global_v4(accum.wrapping_add(at + 4) as *mut u8, [0; 4]);
        }
        chunk += 32;
    }
    let sum = warp_sum(sum);
    if lane == 0 {
        // SAFETY: D holds batch·heads·seqlen_q floats.
        unsafe { *(p.softmax_d as *mut f32).wrapping_offset(stat as isize) = sum };
    }
}

/// dQ (input dtype, caller's strides) from the f32 accumulator. One warp per row, 8 columns per
/// lane.
///
/// # Safety
/// As [`preprocess`], after [`flash_bwd`] completed on the same parameters.
#[inline(always)]
pub unsafe fn convert_dq<E: Element>(p: &BwdParams) {
    // SAFETY: the host validated the layout's arrays.
    let p = &unsafe { row_kernel_sequence(p) };
    let shape = &p.fwd.shape;
    let Some((row, head, batch, lane)) = row_kernel_position(shape) else { return };
    let stat = row_stat_index::<true>(shape, batch, head, row);
    let accum = (p.dq_accum as *const f32).wrapping_offset((stat * shape.head_dim as i64) as isize);
    let dq = (p.dq as *mut u16).wrapping_offset(p.dq_strides.offset(batch, row, head) as isize);
    let mut chunk = lane;
    while chunk < shape.head_dim / 8 {
        let at = 8 * chunk as usize;
        // SAFETY: as in `preprocess`: inside row `row` of dQ and of the accumulator, 16-byte aligned.
        unsafe {
            let (lo, hi) = (*(accum.wrapping_add(at) as *const Chunk), *(accum.wrapping_add(at + 4) as *const Chunk));
            let f = |x: u32| f32::from_bits(x);
            let packed = Chunk([
                E::pack(f(lo.0[0]), f(lo.0[1])),
                E::pack(f(lo.0[2]), f(lo.0[3])),
                E::pack(f(hi.0[0]), f(hi.0[1])),
                E::pack(f(hi.0[2]), f(hi.0[3])),
            ]);
            *(dq.wrapping_add(at) as *mut Chunk) = packed;
        }
        chunk += 32;
    }
}
