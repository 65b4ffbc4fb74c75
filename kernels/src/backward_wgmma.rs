//! FlashAttention-2 backward on Hopper's warpgroup tensor cores (sm_90a).
//!
//! Same algorithm and launches as [`crate::backward`] (preprocess, this kernel, convert_dq, and
//! the group reduction and sink gradient where needed); the main kernel's GEMMs become warpgroup
//! GEMMs. A block owns 128 keys, 64 per warpgroup, in the transposed orientation: Sᵀ = K·Qᵀ and
//! dPᵀ = V·dOᵀ read K, V, Q and dO straight from shared memory; Pᵀ and dSᵀ are formed in
//! registers and feed dV += Pᵀ·dO and dK += dSᵀ·Q as register operands; dSᵀ is stored once to
//! shared memory (swizzled) and published by a block barrier, and dQ = dS·K (both operands
//! MN-major from shared memory) is split between the two warpgroups. The exponentials run in one
//! loop for tiles the mask does not touch and another that selects masked elements to 0 after
//! `ex2` (no per-element branch).
//!
//! Schedules (`BwdWgmmaTraits`): head_dim 128 (`BwdWgmmaPipelined`) takes 64 queries per step,
//! forms Pᵀ while dPᵀ = V·dOᵀ is in flight and dSᵀ (and its store) while dV += Pᵀ·dO is, and splits
//! dQ by columns; head_dim 64 (`BwdWgmmaWide`) takes 128 queries per step (N = 128 score GEMMs,
//! k = 128 for dV and dK), forms Pᵀ before dPᵀ is issued so that two score arrays are live only
//! while dSᵀ is computed, and splits dQ by rows. head_dim 96 and 32 run these two padded, as the
//! Hopper forward does (only the data columns of dK, dV and dQ are written).
//!
//! dQ accumulation: each warpgroup stores its part of the tile's dQ (times the scale) in f32 to a
//! staging tile whose rows are padded by 32 bytes (so a half-warp's accumulator pairs hit every
//! bank once); after the step's closing barrier one thread per query row issues
//! `cp.reduce.async.bulk.global.shared::cta.add.f32` for its row, and waits for the read
//! (`cp.async.bulk.wait_group.read`) before the next step's barrier, the last point before the
//! staging is rewritten. The bulk-copy unit does the additions in L2; the threads issue no
//! per-element reductions. In deterministic mode the issuing threads also fence the async proxy
//! after the turn's acquire and wait for their reductions to complete before the barrier that
//! precedes the release. dK and dV go out through `backward::DkvRows`, as in the portable kernel.

use crate::backward::{DkvRows, dv_operands, pass_dq_turn, wait_for_dq_turn};
use crate::modifiers::{ScoreMods, fragment_element};
use crate::params::{BwdParams, row_stat_index};
use crate::ptx::{self, cp_async_commit, cp_async_wait_all, sync_threads};
use crate::tile::{Sw128Tile, accumulators_as_a};
use crate::tiling::{
    FragmentMask, Mask, SW128_ROW_GROUP_BYTES, ceil_div, dq_staging_offset, kv_head_of, ring_slot, wgmma_descriptor,
};
use crate::traits::{BwdWgmmaTraits, padding_fits};
use crate::warpgroup::{Waited, WgmmaElement, acquire, panel_descriptors, wait};

const LOG2_E: f32 = core::f32::consts::LOG2_E;

/// The barrier of the threads that compute: the whole block, or, with a producer, the two
/// consumer warpgroups (named barrier 1; the producer never takes part).
#[inline(always)]
fn compute_sync<T: BwdWgmmaTraits>() {
    if T::PRODUCER {
        // SAFETY: both consumer warpgroups reach every call in the same order (their loops are
        // block-uniform); nothing else uses barrier 1.
        unsafe { ptx::named_barrier_sync::<1, 256>() }
    } else {
        sync_threads()
    }
}

/// Make every computing thread's completed copies and stores visible to the tensor cores and
/// the bulk-copy unit, for all of them ([`compute_sync`]).
#[inline(always)]
fn shared_writes_done<T: BwdWgmmaTraits>() {
    ptx::fence_proxy_async_shared();
    compute_sync::<T>();
}

/// The producer's mbarriers (`BwdWgmmaTraits::MBARRIER_OFFSET`): K and V landed; per stage, its
/// query tile landed ("full": the producer's 128 threads arrive through `cp.async`) and every
/// consumer thread is done reading it ("empty").
#[derive(Clone, Copy)]
struct QueryRing {
    base: u32,
    stages: u32,
}

impl QueryRing {
    fn kv_full(self) -> u32 {
        self.base
    }
    fn full(self, stage: u32) -> u32 {
        self.base + 8 * (1 + stage)
    }
    fn empty(self, stage: u32) -> u32 {
        self.base + 8 * (1 + self.stages + stage)
    }
}

/// # Safety
/// Launched with `T::THREADS` threads, grid `(ceil(seqlen_k / BLOCK_N), heads, batch)` and
/// `T::SMEM_BYTES` of dynamic shared memory, after `preprocess` on the same parameters, on an
/// sm_90a device.
#[inline(always)]
pub unsafe fn flash_bwd_wgmma<E: WgmmaElement, T: BwdWgmmaTraits, const MODS: bool, const SEQ: bool>(p: &BwdParams) {
    // The generated GEMM shapes (the issue-only forms and waits stop at head_dim 128), and
    // padding that stays inside the last 64-column panel in whole chunks.
    const { assert!(T::HEAD_DIM == 64 || T::HEAD_DIM == 128) };
    const { assert!(padding_fits(T::DATA_HEAD_DIM, T::HEAD_DIM)) };
    // Without a producer the loop double-buffers (stages 0 and 1); with one, the ring's
    // mbarriers and `setmaxnreg` split (24 + 2 · 240) assume two consumers.
    const { assert!(if T::PRODUCER { T::WARPGROUPS == 2 && T::THREADS == 384 } else { T::STAGES == 2 }) };
    // A second dSᵀ tile with a producer or for the deferred dQ GEMM (the in-loop addresses
    // below pick it), which the 64-query pipelined loop runs with two of them.
    const { assert!(T::DS_BUFFERS == 1 || (T::PRODUCER || T::DEFER_DQ) && T::DS_BUFFERS == 2) };
    const { assert!(!T::DEFER_DQ || T::PIPELINED && T::BLOCK_M == 64 && T::DS_BUFFERS == 2) };
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
    // With a producer, warpgroup 0 loads and warpgroups 1 and 2 compute; `ctid` numbers the
    // computing threads from 0 (in the producer it is meaningless and unused).
    let ctid = if T::PRODUCER { tid.wrapping_sub(128) } else { tid };
    let (warpgroup, warp, lane) = (ctid / 128, ctid / 32, ctid % 32);
    let (block_x, head, batch) = ptx::block_idx();
    let kv_head = kv_head_of(shape, head);
    let k_begin = block_x * T::BLOCK_N;
    // Warp w owns keys 16w..16w+16 of the block (warpgroup g: keys 64g..64g+64).
    let warp_k0 = k_begin + 16 * warp;
    let panels = T::HEAD_DIM / 64;
    let m_tiles8 = (T::BLOCK_M / 8) as usize;

    let smem = ptx::dynamic_smem_base().next_multiple_of(1024);
    let tile = |offset: u32, rows: u32, chunks_per_row: u32, data_chunks: u32| Sw128Tile {
        base: smem + offset,
        rows,
        chunks_per_row,
        data_chunks,
    };
    let k_s = tile(T::K_OFFSET, T::BLOCK_N, T::CHUNKS_PER_ROW, T::DATA_CHUNKS);
    let v_s = tile(T::V_OFFSET, T::BLOCK_N, T::CHUNKS_PER_ROW, T::DATA_CHUNKS);
    let ds_s = tile(T::DS_OFFSET, T::BLOCK_N, T::BLOCK_M / 8, T::BLOCK_M / 8);
    let dq_s = smem + T::DQ_OFFSET;
    let stage_offset = |stage: u32| T::STAGE_OFFSET + stage * T::STAGE_BYTES;
    let q_tile = |stage: u32| tile(stage_offset(stage) + T::Q_IN_STAGE, T::BLOCK_M, T::CHUNKS_PER_ROW, T::DATA_CHUNKS);
    let do_tile =
        |stage: u32| tile(stage_offset(stage) + T::DO_IN_STAGE, T::BLOCK_M, T::CHUNKS_PER_ROW, T::DATA_CHUNKS);

    // Start copying K and V (`threads` threads, this one `tid`). Rows past the end are
    // zero-filled without being read.
    let load_keys = |tid: u32, threads: u32| {
        let key_rows = shape.seqlen_k - k_begin;
        // SAFETY: the host validated K and V (seqlen_k rows at these strides).
        unsafe {
            let k_ptr = (f.k as *const u16).wrapping_offset(f.k_strides.offset(batch, k_begin, kv_head) as isize);
            let v_ptr = (f.v as *const u16).wrapping_offset(f.v_strides.offset(batch, k_begin, kv_head) as isize);
            k_s.load_async(k_ptr, f.k_strides.row, key_rows, tid, threads);
            v_s.load_async(v_ptr, f.v_strides.row, key_rows, tid, threads);
        }
    };
    // Start copying query tile `q_tile` (Q, dO, LSE, D) into `stage`. Rows past seqlen_q arrive
    // as zeros; the mask keeps them out of every product.
    let load_queries = |tile_index: u32, stage: u32, tid: u32, threads: u32| {
        let stats = smem + stage_offset(stage);
        let rows = (q_tile(stage), do_tile(stage), stats + T::LSE_IN_STAGE, stats + T::D_IN_STAGE);
        load_query_tile::<T, SEQ>(p, (batch, head), tile_index, rows, tid, threads);
    };

    let (query_lo, query_hi) = mask.query_range(k_begin, k_begin + T::BLOCK_N);
    let (first_tile, end_tile) = (query_lo / T::BLOCK_M, ceil_div(query_hi, T::BLOCK_M));
    let ring = QueryRing { base: smem + T::MBARRIER_OFFSET, stages: T::STAGES };
    if T::PRODUCER {
        if tid == 0 {
            // SAFETY: 8-byte aligned slots of this block's shared memory (traits), initialized
            // once, before the barrier below and so before any use.
            unsafe {
                ptx::mbarrier_init(ring.kv_full(), 128);
                for stage in 0..T::STAGES {
                    ptx::mbarrier_init(ring.full(stage), 128);
                    ptx::mbarrier_init(ring.empty(stage), 256);
                }
            }
        }
        // The only block-wide barrier: every thread sees the initialized mbarriers.
        sync_threads();
        if tid < 128 {
            // The producer: K and V once, then each query tile into the next stage of the ring
            // once the consumers have released that stage's previous tile.
            ptx::setmaxnreg_dec::<24>();
            load_keys(tid, 128);
            // SAFETY: initialized mbarriers; each stage is refilled only after its empty barrier
            // completed the phase of its previous use, i.e. after every consumer's reads of it.
            unsafe {
                ptx::cp_async_mbarrier_arrive(ring.kv_full());
                for q_tile_index in first_tile..end_tile {
                    let i = q_tile_index - first_tile;
                    let (stage, parity) = ring_slot(i, T::STAGES);
                    if i >= T::STAGES {
                        ptx::mbarrier_wait(ring.empty(stage), parity ^ 1);
                    }
                    load_queries(q_tile_index, stage, tid, 128);
                    ptx::cp_async_mbarrier_arrive(ring.full(stage));
                }
            }
            // Nothing of this thread stays in flight when it exits.
            cp_async_wait_all();
            return;
        }
        ptx::setmaxnreg_inc::<240>();
        // SAFETY: initialized above; its only phase.
        unsafe { acquire(ring.kv_full(), 0) };
    } else {
        load_keys(tid, T::THREADS);
        if first_tile < end_tile {
            load_queries(first_tile, 0, tid, T::THREADS);
        }
        cp_async_commit();
        cp_async_wait_all();
        shared_writes_done::<T>();
    }
    let mut dk = [[0f32; 4]; 32];
    let mut dv = [[0f32; 4]; 32];

    // K-major descriptors of this warpgroup's 64 keys of K and V (A of the score GEMMs).
    let kv_desc =
        |t: Sw128Tile, panel: u32| wgmma_descriptor(t.panel(panel, 64 * warpgroup), 16, SW128_ROW_GROUP_BYTES);
    let k_descs = panel_descriptors(panels, |p| kv_desc(k_s, p));
    let v_descs = panel_descriptors(panels, |p| kv_desc(v_s, p));
    // dQ = dS·K: this warpgroup's columns of K (MN-major: rows along the keys, the GEMM's k).
    // With 128 queries per step each warpgroup takes 64 of them, all columns; with 64, the
    // warpgroups split the columns.
    let (dq_row0, dq_cols) =
        if T::BLOCK_M == 128 { (64 * warpgroup, T::HEAD_DIM) } else { (0, T::HEAD_DIM / T::WARPGROUPS) };
    let dq_col0 = if T::BLOCK_M == 128 { 0 } else { warpgroup * dq_cols };
    let k_for_dq =
        wgmma_descriptor(k_s.panel(dq_col0 / 64, 0) + (dq_col0 % 64) * 2, T::BLOCK_N * 128, SW128_ROW_GROUP_BYTES);
    let ds_desc = wgmma_descriptor(ds_s.panel(dq_row0 / 64, 0), T::BLOCK_N * 128, SW128_ROW_GROUP_BYTES);
    // The dSᵀ tile of the `i`-th query tile of the block (from the aligned shared-memory base
    // `base`) and the descriptor dQ = dS·K reads it through.
    let ds_of = |base: u32, i: u32| {
        let ds_s = Sw128Tile { base: base + T::DS_OFFSET + (i % T::DS_BUFFERS) * T::DS_TILE_BYTES, ..ds_s };
        (ds_s, wgmma_descriptor(ds_s.panel(dq_row0 / 64, 0), T::BLOCK_N * 128, SW128_ROW_GROUP_BYTES))
    };
    // This warpgroup's part of a tile's dQ (times the scale) into the staging rows at `dq_s`.
    // (`lane` is passed in: inside the loop it is the opaque copy, which keeps the staging
    // addresses from being hoisted into registers held across the loop.)
    let stage_dq = |acc: &[[f32; 4]; 16], dq_s: u32, lane: u32| {
        for half in 0..2 {
            let row = dq_row0 + 16 * (warp % 4) + lane / 4 + 8 * half as u32;
            for t in 0..(dq_cols / 8) as usize {
                let col = dq_col0 + 8 * t as u32 + 2 * (lane % 4);
                let at = dq_s + dq_staging_offset(row, col, T::DQ_ROW_BYTES);
                // SAFETY: row < BLOCK_M and col + 1 < HEAD_DIM lie inside the staging rows.
                unsafe { ptx::st_shared_f32x2(at, acc[t][2 * half] * shape.scale, acc[t][2 * half + 1] * shape.scale) };
            }
        }
    };

    // SAFETY: the host validated the modifiers' device arrays.
    let mods = unsafe { ScoreMods::for_backward::<MODS>(f, batch, head) };
    for q_tile_index in first_tile..end_tile {
        let (stage, parity) = ring_slot(q_tile_index - first_tile, T::STAGES);
        if T::PRODUCER {
            // SAFETY: initialized; the producer is at most STAGES uses ahead, so the phase is
            // the current or the previous one.
            unsafe { acquire(ring.full(stage), parity) };
        } else if q_tile_index + 1 < end_tile {
            load_queries(q_tile_index + 1, 1 - stage, tid, T::THREADS);
            cp_async_commit();
        }
        // With a producer the consumers have 240 registers: the dSᵀ tile's and the dQ staging's
        // addresses and the dSᵀ descriptor, re-derived from the shared-memory base each step (a
        // few instructions), stay out of the spill frame.
        let base = if T::PRODUCER { ptx::dynamic_smem_base().next_multiple_of(1024) } else { smem };
        let (ds_s, ds_desc, dq_s) = if T::PRODUCER || T::DS_BUFFERS > 1 {
            let (ds_s, ds_desc) = ds_of(base, q_tile_index - first_tile);
            (ds_s, ds_desc, base + T::DQ_OFFSET)
        } else {
            (ds_s, ds_desc, dq_s)
        };
        let q_begin = q_tile_index * T::BLOCK_M;
        let (q_s, do_s) = (q_tile(stage), do_tile(stage));
        let stats = smem + stage_offset(stage);
        let (lse_s, d_s) = (stats + T::LSE_IN_STAGE, stats + T::D_IN_STAGE);
        let lane = ptx::opaque(lane);

        // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for this warpgroup's 64 keys and the tile's 64 queries.
        let q_desc = |t: Sw128Tile, panel: u32| wgmma_descriptor(t.panel(panel, 0), 16, SW128_ROW_GROUP_BYTES);
        let (s_descs, dp_descs) =
            (panel_descriptors(panels, |p| q_desc(q_s, p)), panel_descriptors(panels, |p| q_desc(do_s, p)));
        // dO and Q in dV += Pᵀ·dO and dK += dSᵀ·Q are MN-major: their rows run along the queries,
        // the GEMMs' k. (dK's scale is applied once at the end.)
        let mn_desc = |t: Sw128Tile| wgmma_descriptor(t.panel(0, 0), T::BLOCK_M * 128, SW128_ROW_GROUP_BYTES);
        let mut s = [[0f32; 4]; 16];
        let mut dp = [[0f32; 4]; 16];

        // Pᵀ = exp(scale·Sᵀ - LSE) recomputed from the forward's LSE, in place. Tiles that need
        // no mask take a loop without one; masked elements are selected away after the
        // exponential, so that no element branches.
        let unmasked = mask.tile_is_unmasked(q_begin, q_begin + T::BLOCK_M, warp_k0, warp_k0 + 16);
        let exponentials = |s: &mut [[f32; 4]; 16], masked: bool| {
            let (row, _) = fragment_element(warp_k0, 0, lane, 0, 0);
            let rows = FragmentMask::of_keys(mask, row);
            for t in 0..m_tiles8 {
                let (key, col) = fragment_element(warp_k0, 0, lane, t as u32, 0);
                // SAFETY: col + 1 < BLOCK_M indexes the staged statistics.
                let lse = |i: u32| unsafe { ptx::ld_shared_f32(lse_s + 4 * (col + i)) } * LOG2_E;
                let visible = |e: u32| !masked || rows.allows(e, q_begin + col + e % 2);
                mods.probabilities::<MODS>(&mut s[t], q_begin + col, key, shape.scale_log2, [lse(0), lse(1)], visible);
            }
        };
        let probabilities = |s: &mut [[f32; 4]; 16]| {
            if unmasked { exponentials(s, false) } else { exponentials(s, true) }
        };
        // dSᵀ = Pᵀ ∘ (dPᵀ - D) (with the modifiers: `ScoreMods::score_gradient`), in place.
        let score_gradients = |dp: &mut [[f32; 4]; 16], s: &[[f32; 4]; 16]| {
            for t in 0..m_tiles8 {
                for e in 0..4 {
                    let (key, col) = fragment_element(warp_k0, 0, lane, t as u32, e as u32);
                    // SAFETY: as above.
                    let d = unsafe { ptx::ld_shared_f32(d_s + 4 * col) };
                    // SAFETY: as above (read only by the `_mods` kernels).
                    let lse_log2 = if MODS { (unsafe { ptx::ld_shared_f32(lse_s + 4 * col) }) * LOG2_E } else { 0.0 };
                    dp[t][e] = mods.score_gradient::<MODS>(s[t][e], dp[t][e], d, lse_log2, q_begin + col, key);
                }
            }
        };
        let fragments = |x: &[[f32; 4]; 16]| {
            let mut a = [[0u32; 4]; 8];
            #[allow(clippy::needless_range_loop)] // index loops are what unroll fully
            for kk in 0..m_tiles8 / 2 {
                a[kk] = accumulators_as_a::<E>(&x[2 * kk], &x[2 * kk + 1]);
            }
            a
        };
        // Pᵀ as dV's operand: with dropout, the dropped probabilities (`dv_operand`).
        let p_fragments = |x: &[[f32; 4]; 16]| {
            let mut a = [[0u32; 4]; 8];
            #[allow(clippy::needless_range_loop)] // index loops are what unroll fully
            for kk in 0..m_tiles8 / 2 {
                a[kk] = accumulators_as_a::<E>(&dv_operands::<MODS>(&x[2 * kk]), &dv_operands::<MODS>(&x[2 * kk + 1]));
            }
            a
        };
        // dSᵀ to shared memory (keys × queries), so that dQ = dS·K can be split over the
        // warpgroups. `frags[k][2·j + half]` holds rows lane/4 + 8·half, columns 16k + 8j + 2·(lane%4)
        // and the next one (`accumulators_as_a`).
        let store_ds = |frags: &[[u32; 4]; 8]| {
            for t in 0..m_tiles8 {
                for half in 0..2 {
                    let row = 16 * warp + lane / 4 + 8 * half as u32;
                    let col = 8 * t as u32 + 2 * (lane % 4);
                    // SAFETY: row < BLOCK_N and col < BLOCK_M lie inside the dSᵀ tile.
                    unsafe {
                        ptx::st_shared_u32(ds_s.chunk(row, col / 8) + (col % 8) * 2, frags[t / 2][2 * (t % 2) + half])
                    };
                }
            }
        };

        if T::BLOCK_M == 128 {
            // 128 queries: Pᵀ is formed before dPᵀ = V·dOᵀ starts and P and dS are packed before the
            // GEMMs that read them, so that two 64-register score arrays are live only for dSᵀ.
            // SAFETY: the whole warpgroup is here (block-uniform loop); every tile landed and was
            // fenced for the async proxy before the last barrier; each accumulator and fragment
            // array is left alone until a wait names it.
            if T::PIPELINED {
                // Sᵀ and dPᵀ back to back, Pᵀ's exponentials under dPᵀ (the register peak stays
                // the two score arrays and dK, dV).
                // SAFETY: as above.
                unsafe {
                    E::qk_issue(T::BLOCK_M, T::HEAD_DIM, &mut s, k_descs, s_descs);
                    E::qk_issue(T::BLOCK_M, T::HEAD_DIM, &mut dp, v_descs, dp_descs);
                }
                wait(1, Waited::Scores(T::BLOCK_M, &mut s));
                probabilities(&mut s);
                wait(0, Waited::Scores(T::BLOCK_M, &mut dp));
            } else {
                // SAFETY: as above.
                unsafe { E::qk(T::BLOCK_M, T::HEAD_DIM, &mut s, k_descs, s_descs) };
                probabilities(&mut s);
                // SAFETY: as above.
                unsafe { E::qk(T::BLOCK_M, T::HEAD_DIM, &mut dp, v_descs, dp_descs) };
            }
            score_gradients(&mut dp, &s);
            let p_frags = p_fragments(&s);
            // SAFETY: as above.
            unsafe { E::pv_issue(T::HEAD_DIM, T::BLOCK_M, &mut dv, &p_frags, mn_desc(do_s)) };
            let ds_frags = fragments(&dp);
            store_ds(&ds_frags);
            // SAFETY: as above.
            unsafe { E::pv_issue(T::HEAD_DIM, T::BLOCK_M, &mut dk, &ds_frags, mn_desc(q_s)) };
            if !T::LATE_OUTPUT_WAIT {
                wait(0, Waited::Outputs(T::HEAD_DIM, &mut dv, &mut dk));
            }
        } else if T::PIPELINED {
            // Each elementwise step runs while the tensor cores finish the GEMM issued before it:
            // Pᵀ under dPᵀ = V·dOᵀ, dSᵀ and its store under dV += Pᵀ·dO. With `DEFER_DQ` the
            // previous tile's dQ = dS·K goes first (its dSᵀ was published by the last barrier)
            // and is staged while the score GEMMs run.
            // On a block's first step there is no previous tile: the GEMM still runs (no branch
            // may sit between an issue and its wait, or ptxas serializes every GEMM of the
            // kernel), on K in place of dSᵀ, and its result is dropped.
            let deferred = T::DEFER_DQ && q_tile_index > first_tile;
            let mut previous_dq = [[0f32; 4]; 16];
            let previous_ds = if deferred { ds_of(base, q_tile_index - first_tile - 1).1 } else { k_for_dq };
            let before_dp = T::DEFER_DQ && T::STAGE_DQ_BEFORE_DP;
            // SAFETY: the whole warpgroup is here (block-uniform loop); every tile landed and was
            // fenced for the async proxy before the last barrier; each accumulator and fragment
            // array is left alone until a wait names it. The previous dSᵀ tile is rewritten only
            // after this warpgroup's wait for its GEMM and the next barrier.
            unsafe {
                if T::DEFER_DQ {
                    E::dq_issue(dq_cols, T::BLOCK_N, &mut previous_dq, previous_ds, k_for_dq);
                }
                E::qk_issue(T::BLOCK_M, T::HEAD_DIM, &mut s, k_descs, s_descs);
                if !before_dp {
                    E::qk_issue(T::BLOCK_M, T::HEAD_DIM, &mut dp, v_descs, dp_descs);
                }
            }
            if T::DEFER_DQ {
                wait(if before_dp { 1 } else { 2 }, Waited::Scores(dq_cols, &mut previous_dq));
            }
            if deferred {
                // This warp's reductions of the tile before have read the rows it rewrites (it
                // staged and reduced them itself).
                ptx::bulk_wait_read();
                ptx::sync_warp();
                stage_dq(&previous_dq, dq_s, lane);
            }
            if before_dp {
                // SAFETY: as above.
                unsafe { E::qk_issue(T::BLOCK_M, T::HEAD_DIM, &mut dp, v_descs, dp_descs) };
            }
            wait(1, Waited::Scores(T::BLOCK_M, &mut s));
            probabilities(&mut s);
            let p_frags = p_fragments(&s);
            // SAFETY: as above.
            unsafe { E::pv_issue(T::HEAD_DIM, T::BLOCK_M, &mut dv, &p_frags, mn_desc(do_s)) };
            wait(1, Waited::Scores(T::BLOCK_M, &mut dp));
            score_gradients(&mut dp, &s);
            let ds_frags = fragments(&dp);
            store_ds(&ds_frags);
            // SAFETY: as above.
            unsafe { E::pv_issue(T::HEAD_DIM, T::BLOCK_M, &mut dk, &ds_frags, mn_desc(q_s)) };
            wait(0, Waited::Outputs(T::HEAD_DIM, &mut dv, &mut dk));
        } else {
            // SAFETY: the whole warpgroup is here (block-uniform loop); every tile landed and was
            // fenced for the async proxy before the last barrier.
            unsafe {
                E::qk(T::BLOCK_M, T::HEAD_DIM, &mut s, k_descs, s_descs);
                E::qk(T::BLOCK_M, T::HEAD_DIM, &mut dp, v_descs, dp_descs);
            }
            probabilities(&mut s);
            score_gradients(&mut dp, &s);
            let (p_frags, ds_frags) = (p_fragments(&s), fragments(&dp));
            // SAFETY: as for the score GEMMs.
            unsafe {
                E::pv(T::HEAD_DIM, T::BLOCK_M, &mut dv, &p_frags, mn_desc(do_s));
                E::pv(T::HEAD_DIM, T::BLOCK_M, &mut dk, &ds_frags, mn_desc(q_s));
            }
            store_ds(&ds_frags);
        }
        if T::PRODUCER && !T::LATE_OUTPUT_WAIT {
            // Every GEMM on this stage's Q and dO completed and its LSE and D were read: the
            // producer may refill it.
            // SAFETY: initialized; each consumer thread arrives once per use.
            unsafe { ptx::mbarrier_arrive(ring.empty(stage)) };
        }
        if T::DEFER_DQ {
            if !T::PRODUCER && q_tile_index + 1 < end_tile {
                cp_async_wait_all();
            }
            // The step's one barrier: dSᵀ is published for the next step's dQ GEMM, the previous
            // tile's dQ rows are staged, everyone is done with this stage (and, without a
            // producer, the next tile has landed).
            shared_writes_done::<T>();
            if q_tile_index > first_tile {
                reduce_dq_warp_rows::<T, SEQ>(p, (block_x, head, batch), q_tile_index - 1, dq_s, ctid);
            }
            continue;
        }
        // The previous tile's dQ reductions have read the staging rows before anyone rewrites them.
        ptx::bulk_wait_read();
        shared_writes_done::<T>();

        // dQ += scale · dS·K for the tile's 64 queries and this warpgroup's columns, staged in
        // shared memory and added to the global accumulator by the bulk-copy unit, one row each.
        let mut acc = [[0f32; 4]; 16];
        if T::LATE_OUTPUT_WAIT {
            // dV's and dK's GEMMs ran on across the barrier; one wait covers them and dQ's.
            // SAFETY: as for the score GEMMs; dSᵀ was fenced and published by the barrier above.
            unsafe { E::dq_issue(dq_cols, T::BLOCK_N, &mut acc, ds_desc, k_for_dq) };
            wait(0, Waited::Outputs(T::HEAD_DIM, &mut dv, &mut dk));
            wait(0, Waited::Scores(dq_cols, &mut acc));
            if T::PRODUCER {
                // As above: this stage's Q and dO are read.
                // SAFETY: initialized; each consumer thread arrives once per use.
                unsafe { ptx::mbarrier_arrive(ring.empty(stage)) };
            }
        } else {
            // SAFETY: as for the score GEMMs; dSᵀ was fenced and published by the barrier above.
            unsafe { E::dq(dq_cols, T::BLOCK_N, &mut acc, ds_desc, k_for_dq) };
        }
        for half in 0..2 {
            let row = dq_row0 + 16 * (warp % 4) + lane / 4 + 8 * half as u32;
            for t in 0..(dq_cols / 8) as usize {
                let col = dq_col0 + 8 * t as u32 + 2 * (lane % 4);
                let at = dq_s + dq_staging_offset(row, col, T::DQ_ROW_BYTES);
                // SAFETY: row < BLOCK_M and col + 1 < HEAD_DIM lie inside the staging rows.
                unsafe { ptx::st_shared_f32x2(at, acc[t][2 * half] * shape.scale, acc[t][2 * half + 1] * shape.scale) };
            }
        }
        if !T::PRODUCER && q_tile_index + 1 < end_tile {
            cp_async_wait_all();
        }
        // The dQ rows are staged and everyone is done with dSᵀ (and, without a producer, the next
        // tile has landed and everyone is done with this stage).
        shared_writes_done::<T>();
        if T::WARP_REDUCTIONS {
            reduce_dq_warp_rows::<T, SEQ>(p, (block_x, head, batch), q_tile_index, dq_s, ctid);
        } else {
            reduce_dq_rows::<T, SEQ>(p, (block_x, head, batch), q_tile_index, dq_s, ctid);
        }
    }
    if T::DEFER_DQ && first_tile < end_tile {
        // The last tile's dQ, whose dSᵀ the loop's last barrier published.
        let base = if T::PRODUCER { ptx::dynamic_smem_base().next_multiple_of(1024) } else { smem };
        let (_, last_ds) = ds_of(base, end_tile - 1 - first_tile);
        let mut acc = [[0f32; 4]; 16];
        // SAFETY: as for the loop's GEMMs.
        unsafe { E::dq(dq_cols, T::BLOCK_N, &mut acc, last_ds, k_for_dq) };
        ptx::bulk_wait_read();
        ptx::sync_warp();
        stage_dq(&acc, base + T::DQ_OFFSET, ptx::opaque(lane));
        shared_writes_done::<T>();
        reduce_dq_warp_rows::<T, SEQ>(p, (block_x, head, batch), end_tile - 1, base + T::DQ_OFFSET, ctid);
    }
    ptx::bulk_wait_complete();

    for half in 0..2 {
        let key = warp_k0 + lane / 4 + 8 * half as u32;
        if key < shape.seqlen_k {
            let rows = DkvRows::of::<SEQ>(p, batch, key, head, kv_head);
            // The data columns only: the padding's gradients are zeros nobody asked for.
            let pair = |t: usize| {
                let col = 8 * t as u32 + 2 * (lane % 4);
                let dk_pair = [dk[t][2 * half] * shape.scale, dk[t][2 * half + 1] * shape.scale];
                (col, dk_pair, [dv[t][2 * half], dv[t][2 * half + 1]])
            };
            // SAFETY: key < seqlen_k and every col + 1 < head_dim.
            unsafe { rows.store::<E>((T::DATA_HEAD_DIM / 8) as usize, pair) };
        }
    }
}

/// Start copying query tile `tile_index` of (`batch`, `head`) into shared memory: Q and dO into
/// their tiles, the rows' LSE and D (f32) to the two addresses. Rows past seqlen_q arrive as
/// zeros; the mask keeps them out of every product. All `threads` loading threads call it
/// (`tid` < `threads`, at least `BLOCK_M` of them).
#[inline(always)]
fn load_query_tile<T: BwdWgmmaTraits, const SEQ: bool>(
    p: &BwdParams,
    (batch, head): (u32, u32),
    tile_index: u32,
    (q_s, do_s, lse_s, d_s): (Sw128Tile, Sw128Tile, u32, u32),
    tid: u32,
    threads: u32,
) {
    let (f, shape) = (&p.fwd, &p.fwd.shape);
    let q_begin = tile_index * T::BLOCK_M;
    let q_rows = shape.seqlen_q - q_begin;
    // SAFETY: Q and dO hold seqlen_q rows at these strides; LSE and D hold
    // batch · heads · seqlen_q floats; rows past the end are zero-filled without a read.
    unsafe {
        let q_ptr = (f.q as *const u16).wrapping_offset(f.q_strides.offset(batch, q_begin, head) as isize);
        let do_ptr = (p.d_o as *const u16).wrapping_offset(p.do_strides.offset(batch, q_begin, head) as isize);
        q_s.load_async(q_ptr, f.q_strides.row, q_rows, tid, threads);
        do_s.load_async(do_ptr, p.do_strides.row, q_rows, tid, threads);
        if tid < T::BLOCK_M {
            let in_range = tid < q_rows;
            let at = row_stat_index::<SEQ>(shape, batch, head, if in_range { q_begin + tid } else { 0 }) as isize;
            let bytes = if in_range { 4 } else { 0 };
            ptx::cp_async_4(lse_s + 4 * tid, (f.lse as *const f32).wrapping_offset(at) as *const u8, bytes);
            ptx::cp_async_4(d_s + 4 * tid, (p.softmax_d as *const f32).wrapping_offset(at) as *const u8, bytes);
        }
    }
}

/// Add query tile `q_tile_index`'s staged dQ rows (at `dq_s`, fenced for the async proxy and
/// published by the barrier just before) to the global accumulator: one bulk reduction per row,
/// issued by the first `BLOCK_M` computing threads (`tid` numbers them), in key-block turns in
/// deterministic mode. All computing threads call it; the rows must not be rewritten before a
/// `bulk_wait_read`.
#[inline(always)]
fn reduce_dq_rows<T: BwdWgmmaTraits, const SEQ: bool>(
    p: &BwdParams,
    (block_x, head, batch): (u32, u32, u32),
    q_tile_index: u32,
    dq_s: u32,
    tid: u32,
) {
    let shape = &p.fwd.shape;
    wait_for_dq_turn::<SEQ>(p, block_x, head, q_tile_index, T::BLOCK_M, T::BLOCK_N, tid, compute_sync::<T>);
    let deterministic = p.dq_semaphore != 0;
    let row = q_tile_index * T::BLOCK_M + tid;
    if tid < T::BLOCK_M && row < shape.seqlen_q {
        if deterministic {
            ptx::fence_proxy_async();
        }
        let base = row_stat_index::<SEQ>(shape, batch, head, row) * shape.head_dim as i64;
        // SAFETY: the accumulator holds batch·heads·seqlen_q·head_dim floats, rows of
        // head_dim·4 bytes (a multiple of 16) in a 256-byte aligned allocation; the staged row
        // was fenced for the async proxy before the caller's barrier and is rewritten only after
        // a later `bulk_wait_read`.
        unsafe {
            ptx::bulk_reduce_add_f32(
                (p.dq_accum as *mut f32).wrapping_offset(base as isize),
                dq_s + dq_staging_offset(tid, 0, T::DQ_ROW_BYTES),
                T::DATA_HEAD_DIM * 4,
            )
        };
        ptx::bulk_commit_group();
    }
    if deterministic {
        // The next key block may add only once these rows are in global memory.
        ptx::bulk_wait_complete();
        compute_sync::<T>();
    }
    pass_dq_turn::<SEQ>(p, head, q_tile_index, T::BLOCK_M, tid);
}

/// [`reduce_dq_rows`] for the deferred dQ GEMM (`BwdWgmmaTraits::DEFER_DQ`, dQ split by columns):
/// each warp adds the part it staged, its 16 rows × its warpgroup's columns, one bulk reduction
/// per row from its first 16 lanes, so that the warp's own `bulk_wait_read` (and a warp barrier)
/// is all that orders its next staging stores after those reads.
#[inline(always)]
fn reduce_dq_warp_rows<T: BwdWgmmaTraits, const SEQ: bool>(
    p: &BwdParams,
    (block_x, head, batch): (u32, u32, u32),
    q_tile_index: u32,
    dq_s: u32,
    tid: u32,
) {
    let shape = &p.fwd.shape;
    wait_for_dq_turn::<SEQ>(p, block_x, head, q_tile_index, T::BLOCK_M, T::BLOCK_N, tid, compute_sync::<T>);
    let deterministic = p.dq_semaphore != 0;
    let (warpgroup, warp, lane) = (tid / 128, tid / 32, tid % 32);
    let row_in_tile = 16 * (warp % 4) + lane;
    let row = q_tile_index * T::BLOCK_M + row_in_tile;
    let cols = T::HEAD_DIM / T::WARPGROUPS;
    let col0 = warpgroup * cols;
    // The data columns of this warpgroup's part (head_dim 96 on 128: 64 and 32).
    let data_cols = T::DATA_HEAD_DIM.min(col0 + cols).saturating_sub(col0);
    if lane < 16 && row < shape.seqlen_q && data_cols > 0 {
        if deterministic {
            ptx::fence_proxy_async();
        }
        let base = row_stat_index::<SEQ>(shape, batch, head, row) * shape.head_dim as i64 + col0 as i64;
        // SAFETY: as in `reduce_dq_rows`; col0 + data_cols <= head_dim, and col0 · 4 is a
        // multiple of 16.
        unsafe {
            ptx::bulk_reduce_add_f32(
                (p.dq_accum as *mut f32).wrapping_offset(base as isize),
                dq_s + dq_staging_offset(row_in_tile, col0, T::DQ_ROW_BYTES),
                data_cols * 4,
            )
        };
        ptx::bulk_commit_group();
    }
    if deterministic {
        ptx::bulk_wait_complete();
        compute_sync::<T>();
    }
    pass_dq_turn::<SEQ>(p, head, q_tile_index, T::BLOCK_M, tid);
}

/// The head_dim 192 and 256 backward (`BwdWgmmaSplit`): both warpgroups work on the block's 64
/// keys and split every head_dim-wide product by columns, so that each holds dK and dV for 128
/// columns (128 accumulator registers a thread instead of the 256 a 64-key split by keys would
/// need). At head_dim 256 the halves are disjoint; at 192 warpgroup 0 computes columns 0..128
/// and warpgroup 1 columns 64..192, because an MN-major operand must start on a 64-column panel
/// (a 96-column half would start inside one), and each keeps only its own 96 ([`owned_tiles`]).
///
/// Per 64-query step: warpgroup 0 computes Sᵀ = K·Qᵀ and Pᵀ while warpgroup 1 computes
/// dPᵀ = V·dOᵀ (M = 64 keys, N = 64 queries, k = head_dim). Pᵀ (f32) goes to warpgroup 1 through
/// the dQ staging rows, free at that point; warpgroup 1 forms dSᵀ and stores it to shared memory
/// (swizzled), from where warpgroup 0 reads its fragments and the dQ GEMM reads it as an
/// operand. Then each warpgroup runs dV += Pᵀ·dO, dK += dSᵀ·Q and dQ = dS·K for its 128 columns
/// (N = 128, k = 64). Query tiles (Q, dO, LSE, D) take `STAGES` stages in turn: with one
/// (head_dim 256: K, V 64 KiB, the stage 65 KiB, dQ staging 66 KiB) the next tile loads after
/// the step's GEMMs; with two (head_dim 192, 205 KiB) it loads during the step. dQ is reduced
/// into the global accumulator as in [`flash_bwd_wgmma`] (one bulk reduction a row, after the step).
///
/// # Safety
/// As [`flash_bwd_wgmma`].
#[inline(always)]
pub unsafe fn flash_bwd_wgmma_split<E: WgmmaElement, T: BwdWgmmaTraits, const MODS: bool, const SEQ: bool>(
    p: &BwdParams,
) {
    // The generated shapes: qk 64 × 192 or 256, pv and dq N = 128 over k = 64.
    const { assert!(matches!(T::HEAD_DIM, 192 | 256) && T::BLOCK_N == 64 && T::BLOCK_M == 64 && T::WARPGROUPS == 2) };
    const { assert!(T::STAGES == 1 || T::STAGES == 2) };
    const { assert!(padding_fits(T::DATA_HEAD_DIM, T::HEAD_DIM)) };
    let mut sequence = core::mem::MaybeUninit::uninit();
    // SAFETY: the host validated the layout's arrays.
    let p = unsafe { p.of_block::<SEQ>(ptx::block_idx().2, &mut sequence) };
    let f = &p.fwd;
    let shape = &f.shape;
    if SEQ && ptx::block_idx().0 * T::BLOCK_N >= shape.seqlen_k {
        return;
    }
    let mask = Mask::of(shape);
    let tid = ptx::thread_idx();
    let (warpgroup, warp, lane) = (tid / 128, tid / 32, tid % 32);
    let wg_tid = tid % 128;
    let (block_x, head, batch) = ptx::block_idx();
    let kv_head = kv_head_of(shape, head);
    let k_begin = block_x * T::BLOCK_N;
    // Warp w of either warpgroup holds keys 16(w mod 4)..+16 of the block in its score fragments.
    let warp_k0 = k_begin + 16 * (warp % 4);
    // The 128 columns of dK, dV and dQ this warpgroup computes, from a panel boundary (of which
    // it owns half the head dim: `owned_tiles`).
    let col0 = (T::HEAD_DIM - 128) * warpgroup;
    let m_tiles8 = (T::BLOCK_M / 8) as usize;

    let smem = ptx::dynamic_smem_base().next_multiple_of(1024);
    let tile = |offset: u32, rows: u32, chunks_per_row: u32, data_chunks: u32| Sw128Tile {
        base: smem + offset,
        rows,
        chunks_per_row,
        data_chunks,
    };
    let k_s = tile(T::K_OFFSET, T::BLOCK_N, T::CHUNKS_PER_ROW, T::DATA_CHUNKS);
    let v_s = tile(T::V_OFFSET, T::BLOCK_N, T::CHUNKS_PER_ROW, T::DATA_CHUNKS);
    let ds_s = tile(T::DS_OFFSET, T::BLOCK_N, T::BLOCK_M / 8, T::BLOCK_M / 8);
    let dq_s = smem + T::DQ_OFFSET;
    // Stage `stage`'s Q and dO tiles and LSE and D rows.
    let stage_tiles = |stage: u32| {
        let at = T::STAGE_OFFSET + stage * T::STAGE_BYTES;
        (
            tile(at + T::Q_IN_STAGE, T::BLOCK_M, T::CHUNKS_PER_ROW, T::DATA_CHUNKS),
            tile(at + T::DO_IN_STAGE, T::BLOCK_M, T::CHUNKS_PER_ROW, T::DATA_CHUNKS),
            smem + at + T::LSE_IN_STAGE,
            smem + at + T::D_IN_STAGE,
        )
    };

    let key_rows = shape.seqlen_k - k_begin;
    // SAFETY: the host validated K and V (seqlen_k rows at these strides); rows past the end are
    // zero-filled without being read.
    unsafe {
        let k_ptr = (f.k as *const u16).wrapping_offset(f.k_strides.offset(batch, k_begin, kv_head) as isize);
        let v_ptr = (f.v as *const u16).wrapping_offset(f.v_strides.offset(batch, k_begin, kv_head) as isize);
        k_s.load_async(k_ptr, f.k_strides.row, key_rows, tid, T::THREADS);
        v_s.load_async(v_ptr, f.v_strides.row, key_rows, tid, T::THREADS);
    }
    // Query tile `tile_index` (Q, dO, LSE, D) into stage `stage`; rows past seqlen_q arrive as zeros.
    let load_queries = |tile_index: u32, stage: u32| {
        load_query_tile::<T, SEQ>(p, (batch, head), tile_index, stage_tiles(stage), tid, T::THREADS)
    };

    let mut dk = [[0f32; 4]; 32];
    let mut dv = [[0f32; 4]; 32];
    let (query_lo, query_hi) = mask.query_range(k_begin, k_begin + T::BLOCK_N);
    let (first_tile, end_tile) = (query_lo / T::BLOCK_M, ceil_div(query_hi, T::BLOCK_M));
    if first_tile < end_tile {
        load_queries(first_tile, 0);
    }
    cp_async_commit();
    cp_async_wait_all();
    shared_writes_done::<T>();

    // Warpgroup 0: A = K (Sᵀ); warpgroup 1: A = V (dPᵀ); every 64-column panel, K-major.
    let panels = T::HEAD_DIM / 64;
    let kv = if warpgroup == 0 { k_s } else { v_s };
    let a_descs = panel_descriptors(panels, |p| wgmma_descriptor(kv.panel(p, 0), 16, SW128_ROW_GROUP_BYTES));
    // dO and Q as MN-major B operands of dV and dK, from this warpgroup's first column panel.
    let mn_desc = |t: Sw128Tile| wgmma_descriptor(t.panel(col0 / 64, 0), T::BLOCK_M * 128, SW128_ROW_GROUP_BYTES);
    let k_for_dq = wgmma_descriptor(k_s.panel(col0 / 64, 0), T::BLOCK_N * 128, SW128_ROW_GROUP_BYTES);
    let ds_desc = wgmma_descriptor(ds_s.panel(0, 0), T::BLOCK_N * 128, SW128_ROW_GROUP_BYTES);
    // Pᵀ handed from warpgroup 0 to warpgroup 1: pair j of a thread's fragment at
    // (j · 128 + thread) · 8 bytes of the staging rows (consecutive threads, consecutive words).
    let p_slot = |j: usize| dq_s + (j as u32 * 128 + wg_tid) * 8;
    // The dSᵀ tile's address of a fragment pair (row = key in the block, col = query in the tile).
    let ds_at = |t: usize, half: u32| {
        let row = 16 * (warp % 4) + lane / 4 + 8 * half;
        let col = 8 * t as u32 + 2 * (lane % 4);
        ds_s.chunk(row, col / 8) + (col % 8) * 2
    };

    // SAFETY: the host validated the modifiers' device arrays.
    let mods = unsafe { ScoreMods::for_backward::<MODS>(f, batch, head) };
    for q_tile_index in first_tile..end_tile {
        let q_begin = q_tile_index * T::BLOCK_M;
        let stage = (q_tile_index - first_tile) % T::STAGES;
        if T::STAGES > 1 && q_tile_index + 1 < end_tile {
            // The other stage's last reader was the previous step, which ended at a barrier.
            load_queries(q_tile_index + 1, (stage + 1) % T::STAGES);
            cp_async_commit();
        }
        let (q_s, do_s, lse_s, d_s) = stage_tiles(stage);
        let qdo = if warpgroup == 0 { q_s } else { do_s };
        let b_descs = panel_descriptors(panels, |p| wgmma_descriptor(qdo.panel(p, 0), 16, SW128_ROW_GROUP_BYTES));
        let lane = ptx::opaque(lane);
        let mut s = [[0f32; 4]; 16];
        // SAFETY: the whole warpgroup is here (block-uniform loop, warpgroup-uniform branch);
        // every tile landed and was fenced for the async proxy before the last barrier.
        unsafe { E::qk(T::BLOCK_M, T::HEAD_DIM, &mut s, a_descs, b_descs) };
        if warpgroup == 0 {
            let unmasked = mask.tile_is_unmasked(q_begin, q_begin + T::BLOCK_M, warp_k0, warp_k0 + 16);
            let exponentials = |s: &mut [[f32; 4]; 16], masked: bool| {
                let (row, _) = fragment_element(warp_k0, 0, lane, 0, 0);
                let rows = FragmentMask::of_keys(mask, row);
                for t in 0..m_tiles8 {
                    let (key, col) = fragment_element(warp_k0, 0, lane, t as u32, 0);
                    // SAFETY: col + 1 < BLOCK_M indexes the staged statistics.
                    let lse = |i: u32| unsafe { ptx::ld_shared_f32(lse_s + 4 * (col + i)) } * LOG2_E;
                    let visible = |e: u32| !masked || rows.allows(e, q_begin + col + e % 2);
                    mods.probabilities::<MODS>(
                        &mut s[t],
                        q_begin + col,
                        key,
                        shape.scale_log2,
                        [lse(0), lse(1)],
                        visible,
                    );
                }
            };
            if unmasked {
                exponentials(&mut s, false)
            } else {
                exponentials(&mut s, true)
            }
            for t in 0..m_tiles8 {
                for half in 0..2 {
                    // SAFETY: p_slot stays inside the staging rows, which the previous step's
                    // reductions finished reading before the last barrier.
                    unsafe { ptx::st_shared_f32x2(p_slot(2 * t + half), s[t][2 * half], s[t][2 * half + 1]) };
                }
            }
        }
        sync_threads();
        // Warpgroup 1: Pᵀ from warpgroup 0 in place of dPᵀ, and dSᵀ = Pᵀ ∘ (dPᵀ - D) packed two
        // tiles at a time (so that no third 64-register array is live), then stored.
        let mut ds_frags = [[0u32; 4]; 8];
        if warpgroup == 1 {
            #[allow(clippy::needless_range_loop)] // index loops are what unroll fully
            for kk in 0..m_tiles8 / 2 {
                let mut ds = [[0f32; 4]; 2];
                for u in 0..2 {
                    let t = 2 * kk + u;
                    for e in 0..4 {
                        let (key, col) = fragment_element(warp_k0, 0, lane, t as u32, e as u32);
                        // SAFETY: written by the same thread index of warpgroup 0 before the
                        // barrier; col < BLOCK_M indexes the staged statistics.
                        let (prob, d) = unsafe {
                            (
                                ptx::ld_shared_f32(p_slot(2 * t + e / 2) + 4 * (e as u32 % 2)),
                                ptx::ld_shared_f32(d_s + 4 * col),
                            )
                        };
                        // SAFETY: as above (read only by the `_mods` kernels).
                        let lse_log2 =
                            if MODS { (unsafe { ptx::ld_shared_f32(lse_s + 4 * col) }) * LOG2_E } else { 0.0 };
                        ds[u][e] = mods.score_gradient::<MODS>(prob, s[t][e], d, lse_log2, q_begin + col, key);
                        s[t][e] = prob;
                    }
                }
                ds_frags[kk] = accumulators_as_a::<E>(&ds[0], &ds[1]);
            }
            for t in 0..m_tiles8 {
                for half in 0..2 {
                    // SAFETY: inside the dSᵀ tile.
                    unsafe { ptx::st_shared_u32(ds_at(t, half as u32), ds_frags[t / 2][2 * (t % 2) + half]) };
                }
            }
        }
        let mut p_frags = [[0u32; 4]; 8];
        #[allow(clippy::needless_range_loop)] // index loops are what unroll fully
        for kk in 0..m_tiles8 / 2 {
            p_frags[kk] =
                accumulators_as_a::<E>(&dv_operands::<MODS>(&s[2 * kk]), &dv_operands::<MODS>(&s[2 * kk + 1]));
        }
        shared_writes_done::<T>();
        if warpgroup == 0 {
            for t in 0..m_tiles8 {
                for half in 0..2 {
                    // SAFETY: stored by warpgroup 1 before the barrier (a 32-bit load; the bits
                    // are kept as they are).
                    ds_frags[t / 2][2 * (t % 2) + half] =
                        unsafe { ptx::ld_shared_f32(ds_at(t, half as u32)) }.to_bits();
                }
            }
        }
        // SAFETY: as for the score GEMMs; dSᵀ was fenced and published by the barrier above, and
        // each accumulator and fragment array is left alone until the wait names it.
        unsafe {
            E::pv_issue(128, T::BLOCK_M, &mut dv, &p_frags, mn_desc(do_s));
            E::pv_issue(128, T::BLOCK_M, &mut dk, &ds_frags, mn_desc(q_s));
        }
        wait(0, Waited::Outputs(128, &mut dv, &mut dk));
        let early_load = T::STAGES == 1 && T::EARLY_LOAD && q_tile_index + 1 < end_tile;
        if early_load {
            // Both warpgroups are done with Q, dO, LSE and D (dQ reads only dSᵀ and K): the next
            // tile loads under the dQ GEMM, its staging and its reductions.
            compute_sync::<T>();
            load_queries(q_tile_index + 1, 0);
            cp_async_commit();
        }
        let mut acc = [[0f32; 4]; 16];
        // SAFETY: as above.
        unsafe { E::dq(128, T::BLOCK_N, &mut acc, ds_desc, k_for_dq) };
        for half in 0..2 {
            let row = 16 * (warp % 4) + lane / 4 + 8 * half as u32;
            owned_tiles::<T>(warpgroup, |t| {
                let col = col0 + 8 * t as u32 + 2 * (lane % 4);
                let at = dq_s + dq_staging_offset(row, col, T::DQ_ROW_BYTES);
                // SAFETY: row < BLOCK_M and col + 1 < HEAD_DIM lie inside the staging rows, which
                // warpgroup 1 finished reading Pᵀ from before the last barrier.
                unsafe { ptx::st_shared_f32x2(at, acc[t][2 * half] * shape.scale, acc[t][2 * half + 1] * shape.scale) };
            });
        }
        // dQ staged; everyone is done with the stage and with dSᵀ.
        shared_writes_done::<T>();
        reduce_dq_rows::<T, SEQ>(p, (block_x, head, batch), q_tile_index, dq_s, tid);
        if T::STAGES == 1 && !T::EARLY_LOAD && q_tile_index + 1 < end_tile {
            load_queries(q_tile_index + 1, 0);
            cp_async_commit();
        }
        // The staging rows are read before the next step hands Pᵀ through them.
        ptx::bulk_wait_read();
        cp_async_wait_all();
        shared_writes_done::<T>();
    }
    ptx::bulk_wait_complete();

    for half in 0..2 {
        let key = warp_k0 + lane / 4 + 8 * half as u32;
        if key < shape.seqlen_k {
            let rows = DkvRows::of::<SEQ>(p, batch, key, head, kv_head);
            let pair = |t: usize| {
                let col = col0 + 8 * t as u32 + 2 * (lane % 4);
                let dk_pair = [dk[t][2 * half] * shape.scale, dk[t][2 * half + 1] * shape.scale];
                (col, dk_pair, [dv[t][2 * half], dv[t][2 * half + 1]])
            };
            let (owned, skip) = owned_tile_range::<T>();
            // SAFETY: key < seqlen_k and every col + 1 < head_dim (owned columns only).
            unsafe {
                if skip == 0 || warpgroup == 0 {
                    rows.store::<E>(owned, pair)
                } else {
                    rows.store::<E>(owned, |t| pair(t + skip))
                }
            };
        }
    }
}

/// The split kernel's owned accumulator tiles (8 columns each) of its 16: a count, and how many
/// warpgroup 1 skips (the columns both compute at head_dim 192; none at 256). Warpgroup 0 owns
/// the first `count`, warpgroup 1 the last.
const fn owned_tile_range<T: BwdWgmmaTraits>() -> (usize, usize) {
    ((T::HEAD_DIM / 16) as usize, ((256 - T::HEAD_DIM) / 16) as usize)
}

/// `f(t)` for each tile `t` this warpgroup owns ([`owned_tile_range`]), with `t` a constant in
/// each unrolled call, so that accumulator arrays indexed by it stay in registers.
#[inline(always)]
fn owned_tiles<T: BwdWgmmaTraits>(warpgroup: u32, mut f: impl FnMut(usize)) {
    let (owned, skip) = owned_tile_range::<T>();
    if skip == 0 || warpgroup == 0 {
        for t in 0..owned {
            f(t)
        }
    } else {
        for t in skip..skip + owned {
            f(t)
        }
    }
}
