//! FlashAttention-2 forward.
//!
//! One block per (Q tile, head, batch); each warp owns `M_TILES` × 16 query rows and keeps their
//! output accumulator and softmax statistics in registers. K and V tiles stream through
//! `STAGES` shared-memory buffers (two tiles in flight where shared memory allows). Scores never
//! leave registers: S = Q·Kᵀ, the online softmax turns S into P in place, and O += P·V. Only O
//! and the LSE are written. The score step (mask, and in the `MODS` kernels softcap, ALiBi,
//! dropout and sinks) is [`crate::modifiers`]'.
//!
//! A block loads only the K/V tiles of [`Mask::key_range`] of its queries (causal and windowed
//! blocks skip the rest), and blocks take Q tiles heaviest first ([`q_tile_of_block`]). K and V
//! are read in place at the query head's K/V head ([`kv_head_of`]): grouped-query attention costs
//! the forward nothing. Each K or V fragment a warp reads feeds the mmas of all its `M_TILES`
//! tiles, which divides shared-memory traffic per FLOP by `M_TILES` at the cost of registers;
//! with `Q_IN_REGISTERS` the Q fragments are loaded once, otherwise again for every K tile. Every
//! iteration commits one `cp.async` group, empty or not, so that "all groups but the newest"
//! always means "up to the next tile".
//!
//! Per K/V tile: S = Q·Kᵀ on K fragments from `ldmatrix`; per-element masking only in tiles that
//! [`Mask::tile_is_unmasked`] does not clear; the online softmax in base 2, which rescales O only
//! when some row's max grew by more than `RESCALE_THRESHOLD` (a warp vote); O += P·V with P packed
//! from the score accumulators into A-operand registers (`accumulators_as_a`) and V from
//! `ldmatrix.trans`. Each row starts at [`OnlineSoftmax::starting_at`]: with an attention sink, as
//! if it had seen one key of the sink's score and a zero value row, so the sink joins the
//! denominator and the LSE with no work in the loop. The epilogue reduces each row's sum over its
//! quad, normalizes O, stages it in the warp's own rows of the Q tile and writes whole 16-byte
//! chunks at the caller's strides; LSE = (max + log₂ sum) · ln 2. Rows that saw no key (and no
//! sink) write O = 0 and LSE = +∞.

use crate::modifiers::{ScoreMods, finish_row, forward_dropout, forward_scores};
use crate::params::{FwdParams, row_stat_index};
use crate::ptx::{self, cp_async_commit, cp_async_wait_all, sync_threads};
use crate::tile::{
    Element, MAX_HEAD_DIM_TILES8, MAX_HEAD_DIM_TILES16, MAX_SEQ_TILES8, SmemTile, accumulators_as_a, quad_max, quad_sum,
};
use crate::tiling::{Mask, ceil_div, kv_head_of, q_tile_of_block, split_tiles};
use crate::traits::{FwdTraits, MAX_WARP_M_TILES};

/// The running max may lag the true one by up to this much (log2 units) before the warp pays
/// for rescaling its output accumulator: P entries then stay below 2^8, which bf16, f16 and the
/// f32 sums hold without loss, and the final normalization uses the same max, so the result is
/// exact. Most K tiles after the first few skip the rescale entirely.
const RESCALE_THRESHOLD: f32 = 8.0;

/// Running max (in log2 units, i.e. times `scale · log2 e`) and sum of one lane's two rows
/// (`lane / 4` and `lane / 4 + 8` of a 16-row tile). The sum is this lane's partial sum over its
/// columns; the quad adds them up at the end.
#[derive(Clone, Copy)]
pub(crate) struct OnlineSoftmax {
    pub(crate) max: [f32; 2],
    pub(crate) sum: [f32; 2],
}

impl OnlineSoftmax {
    /// Where exp2's argument is measured from: the running max, or 0 while a row has seen only
    /// masked keys (max -inf), so that masked scores give exp2(-inf) = 0 rather than NaN.
    pub(crate) const EMPTY: Self = OnlineSoftmax { max: [f32::NEG_INFINITY; 2], sum: [0.0; 2] };

    /// A row's state before its first key: [`OnlineSoftmax::EMPTY`], or with an attention sink
    /// of log2 logit `sink_log2`, as if the row had seen one key of that score whose value row
    /// is zero (the quad's first lane holds its term of the sum). The sink then joins the
    /// denominator and the LSE with no work in the loop or the epilogue.
    #[inline(always)]
    pub(crate) fn starting_at(sink_log2: f32, lane: u32) -> Self {
        if sink_log2 == f32::NEG_INFINITY {
            return Self::EMPTY;
        }
        let first = if lane % 4 == 0 { 1.0 } else { 0.0 };
        OnlineSoftmax { max: [sink_log2; 2], sum: [first; 2] }
    }

    #[inline(always)]
    fn shift(&self, half: usize) -> f32 {
        if self.max[half] == f32::NEG_INFINITY { 0.0 } else { self.max[half] }
    }
}

/// Fold a new tile of raw scores into the warp's rows: update the running maxima (rescaling the
/// output accumulators only when some row's max grew by more than [`RESCALE_THRESHOLD`]), then
/// turn the scores into unnormalized probabilities in place and add them to the running sums.
#[inline(always)]
pub(crate) fn online_softmax<const M: usize, const NS: usize, const ND: usize>(
    state: &mut [OnlineSoftmax; M],
    s: &mut [[[f32; 4]; NS]; M],
    o: &mut [[[f32; 4]; ND]; M],
    m_tiles: usize,
    n_tiles: usize,
    d_tiles: usize,
    scale_log2: f32,
) {
    if let Some(correction) = online_softmax_deferred(state, s, m_tiles, n_tiles, scale_log2) {
        rescale(o, &correction, m_tiles, d_tiles);
    }
}

/// [`online_softmax`] without touching the output accumulators: returns the per-row factor
/// they must be multiplied by, if any row's max moved (for kernels whose O is still being
/// written by the tensor cores at this point).
#[inline(always)]
pub(crate) fn online_softmax_deferred<const M: usize, const NS: usize>(
    state: &mut [OnlineSoftmax; M],
    s: &mut [[[f32; 4]; NS]; M],
    m_tiles: usize,
    n_tiles: usize,
    scale_log2: f32,
) -> Option<[[f32; 2]; M]> {
    online_softmax_split(state, s, m_tiles, n_tiles, scale_log2, 0, false)
}

/// [`online_softmax_deferred`] with `poly_tiles` of every four 8-key tiles (t % 4 ≥ 4 −
/// poly_tiles) exponentiated on the FMA pipe ([`crate::modifiers::exp2_poly`]) when `poly_ok`
/// (a tile with no masked score). `poly_tiles` is a constant of the kernel's traits; 0 compiles
/// to `online_softmax_deferred` exactly.
#[inline(always)]
pub(crate) fn online_softmax_split<const M: usize, const NS: usize>(
    state: &mut [OnlineSoftmax; M],
    s: &mut [[[f32; 4]; NS]; M],
    m_tiles: usize,
    n_tiles: usize,
    scale_log2: f32,
    poly_tiles: usize,
    poly_ok: bool,
) -> Option<[[f32; 2]; M]> {
    // This lane's maxima of the tile (scaled): whether a row grew is decided on them, before the
    // quad's shuffles, since some lane's scaled maximum is above the threshold exactly when the
    // quad's is (the scale is positive and rounding monotonic). Only a growing tile pays for the
    // two shuffle round trips (v34: they were on every tile's critical path).
    let mut lane_max = [[f32::NEG_INFINITY; 2]; M];
    let mut grew = false;
    for m in 0..m_tiles {
        for half in 0..2 {
            // Four independent chains (tile t into chain t % 4): one chain of 2 · n_tiles
            // dependent FMNMX was the longest latency of the FP8 kernel's softmax (v25).
            let mut x = [f32::NEG_INFINITY; 4];
            for t in 0..n_tiles {
                x[t % 4] = x[t % 4].max(s[m][t][2 * half]).max(s[m][t][2 * half + 1]);
            }
            lane_max[m][half] = x[0].max(x[1]).max(x[2].max(x[3])) * scale_log2;
            grew |= lane_max[m][half] > state[m].max[half] + RESCALE_THRESHOLD;
        }
    }
    let mut correction = None;
    if ptx::warp_any(grew) {
        let mut factors = [[1.0f32; 2]; M];
        for m in 0..m_tiles {
            for half in 0..2 {
                let old = state[m].max[half];
                state[m].max[half] = old.max(quad_max(lane_max[m][half]));
                factors[m][half] = ptx::exp2(old - state[m].shift(half));
                state[m].sum[half] *= factors[m][half];
            }
        }
        correction = Some(factors);
    }
    // The polynomial split is decided once per tile, around two straight-line copies of the loop
    // (a warp-uniform branch): decided per element it compiled to a branch each (v26 SASS).
    if poly_tiles > 0 && poly_ok {
        exponentiate(state, s, m_tiles, n_tiles, scale_log2, poly_tiles);
    } else {
        exponentiate(state, s, m_tiles, n_tiles, scale_log2, 0);
    }
    correction
}

/// Scores to unnormalized probabilities in place, added to the running sums; tiles with
/// t % 4 ≥ 4 − `poly_tiles` through [`crate::modifiers::exp2_poly`], the rest through the MUFU.
#[inline(always)]
fn exponentiate<const M: usize, const NS: usize>(
    state: &mut [OnlineSoftmax; M],
    s: &mut [[[f32; 4]; NS]; M],
    m_tiles: usize,
    n_tiles: usize,
    scale_log2: f32,
    poly_tiles: usize,
) {
    for m in 0..m_tiles {
        for half in 0..2 {
            let shift = state[m].shift(half);
            // The row sum in four chains, as the max.
            let mut sum = [0.0f32; 4];
            for t in 0..n_tiles {
                for j in 0..2 {
                    // One FFMA: a separate multiply and subtract (the compiler never contracts)
                    // cost the FP8 kernel an eighth of its softmax instructions (v25 SASS).
                    let x = ptx::fma(s[m][t][2 * half + j], scale_log2, -shift);
                    let p = if t % 4 + poly_tiles >= 4 { crate::modifiers::exp2_poly(x) } else { ptx::exp2(x) };
                    s[m][t][2 * half + j] = p;
                    sum[t % 4] += p;
                }
            }
            state[m].sum[half] += (sum[0] + sum[1]) + (sum[2] + sum[3]);
        }
    }
}

/// Multiply each row of the output accumulators by its correction factor.
#[inline(always)]
pub(crate) fn rescale<const M: usize, const ND: usize>(
    o: &mut [[[f32; 4]; ND]; M],
    correction: &[[f32; 2]; M],
    m_tiles: usize,
    d_tiles: usize,
) {
    for m in 0..m_tiles {
        for half in 0..2 {
            for t in 0..d_tiles {
                o[m][t][2 * half] *= correction[m][half];
                o[m][t][2 * half + 1] *= correction[m][half];
            }
        }
    }
}

/// Wait for every K/V group but the newest (with 3 stages) or for all of them (with 2).
#[inline(always)]
fn wait_for_older_tiles<T: FwdTraits>() {
    if T::STAGES == 3 {
        ptx::cp_async_wait_all_but_one();
    } else {
        cp_async_wait_all();
    }
}

/// # Safety
/// Launched with `T::THREADS` threads, grid `(ceil(seqlen_q / BLOCK_M), heads, batch)` and
/// `T::SMEM_BYTES` of dynamic shared memory, on a parameter block the host validated.
#[inline(always)]
pub unsafe fn flash_fwd<E: Element, T: FwdTraits, const MODS: bool, const SEQ: bool>(p: &FwdParams) {
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
    let (warp, lane) = (tid / 32, tid % 32);
    let (block_x, head, batch) = ptx::block_idx();
    let batch = if SEQ { sequence_index } else { batch };
    let kv_head = kv_head_of(shape, head);
    // SAFETY: the host validated the modifiers' device arrays (slopes, sinks).
    let (mods, sink_log2, output_scale) = unsafe { ScoreMods::for_forward::<MODS>(p, batch, head) };
    // With split-KV the sink joins the first split only.
    let sink_log2 = if SEQ && split != 0 { f32::NEG_INFINITY } else { sink_log2 };
    let q_begin = q_tile_of_block(block_x, ceil_div(shape.seqlen_q, T::BLOCK_M)) * T::BLOCK_M;
    let warp_row0 = warp * T::WARP_M;
    let warp_q0 = q_begin + warp_row0;

    let (d_tiles8, d_tiles16) = ((T::HEAD_DIM / 8) as usize, (T::HEAD_DIM / 16) as usize);
    let n_tiles8 = (T::BLOCK_N / 8) as usize;
    let m_tiles = T::M_TILES as usize;

    let smem = ptx::dynamic_smem_base();
    let q_tile = SmemTile { base: smem + T::Q_OFFSET, chunks_per_row: T::CHUNKS_PER_ROW };
    let k_tile = |stage: u32| SmemTile {
        base: smem + T::K_OFFSET + stage * T::KV_TILE_BYTES,
        chunks_per_row: T::CHUNKS_PER_ROW,
    };
    let v_tile = |stage: u32| SmemTile {
        base: smem + T::V_OFFSET + stage * T::KV_TILE_BYTES,
        chunks_per_row: T::CHUNKS_PER_ROW,
    };

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
                T::BLOCK_N,
                k_ptr.wrapping_offset(k_begin as isize * p.k_strides.row as isize),
                p.k_strides.row,
                rows,
                tid,
                T::THREADS,
            );
            v_tile(stage).load_async(
                T::BLOCK_N,
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
    unsafe { q_tile.load_async(T::BLOCK_M, q_ptr, p.q_strides.row, shape.seqlen_q - q_begin, tid, T::THREADS) };
    if first_tile < end_tile {
        load_kv(first_tile, 0);
    }
    cp_async_commit();
    if T::STAGES == 3 {
        if first_tile + 1 < end_tile {
            load_kv(first_tile + 1, 1);
        }
        cp_async_commit();
    }
    wait_for_older_tiles::<T>();
    sync_threads();

    let mut q_frag = [[[0u32; 4]; MAX_HEAD_DIM_TILES16]; MAX_WARP_M_TILES];
    if T::Q_IN_REGISTERS {
        for m in 0..m_tiles {
            for kk in 0..d_tiles16 {
                q_frag[m][kk] = q_tile.a_fragment(warp_row0 + 16 * m as u32, kk as u32, lane);
            }
        }
    }
    let mut o = [[[0f32; 4]; MAX_HEAD_DIM_TILES8]; MAX_WARP_M_TILES];
    let mut softmax = [OnlineSoftmax::starting_at(sink_log2, lane); MAX_WARP_M_TILES];

    for tile in first_tile..end_tile {
        let step = tile - first_tile;
        let stage = step % T::STAGES;
        // Refill the stage the previous iteration used (behind its closing barrier) with the
        // tile STAGES - 1 ahead. Every iteration commits one group, empty or not, so that
        // "all but the newest group" always means "up to the next tile".
        if tile + T::STAGES - 1 < end_tile {
            load_kv(tile + T::STAGES - 1, (step + T::STAGES - 1) % T::STAGES);
        }
        cp_async_commit();
        let (keys, values) = (k_tile(stage), v_tile(stage));
        let lane = ptx::opaque(lane);

        // S = Q·Kᵀ for this warp's rows and the tile's BLOCK_N keys; each K fragment feeds
        // every m tile.
        let mut s = [[[0f32; 4]; MAX_SEQ_TILES8]; MAX_WARP_M_TILES];
        for kk in 0..d_tiles16 {
            let mut a = [[0u32; 4]; MAX_WARP_M_TILES];
            for m in 0..m_tiles {
                a[m] = if T::Q_IN_REGISTERS {
                    q_frag[m][kk]
                } else {
                    q_tile.a_fragment(warp_row0 + 16 * m as u32, kk as u32, lane)
                };
            }
            for n in 0..n_tiles8 / 2 {
                let b = keys.b_fragments(16 * n as u32, kk as u32, lane);
                for m in 0..m_tiles {
                    E::mma(&mut s[m][2 * n], &a[m], &b[0]);
                    E::mma(&mut s[m][2 * n + 1], &a[m], &b[1]);
                }
            }
        }

        let k_begin = tile * T::BLOCK_N;
        let masked = !mask.tile_is_unmasked(warp_q0, warp_q0 + T::WARP_M, k_begin, k_begin + T::BLOCK_N);
        for m in 0..m_tiles {
            forward_scores::<MODS, _>(
                &mut s[m],
                n_tiles8,
                warp_q0 + 16 * m as u32,
                k_begin,
                lane,
                &mask,
                masked,
                &mods,
            );
        }

        online_softmax(&mut softmax, &mut s, &mut o, m_tiles, n_tiles8, d_tiles8, shape.scale_log2);
        if MODS {
            for m in 0..m_tiles {
                forward_dropout(&mut s[m], n_tiles8, warp_q0 + 16 * m as u32, k_begin, lane, &mods.dropout);
            }
        }

        // O += P·V, P taken straight from the score registers; each V fragment feeds every
        // m tile.
        for kk in 0..n_tiles8 / 2 {
            let mut a = [[0u32; 4]; MAX_WARP_M_TILES];
            for m in 0..m_tiles {
                a[m] = accumulators_as_a::<E>(&s[m][2 * kk], &s[m][2 * kk + 1]);
            }
            for n in 0..d_tiles16 {
                let b = values.b_fragments_transposed(16 * kk as u32, n as u32, lane);
                for m in 0..m_tiles {
                    E::mma(&mut o[m][2 * n], &a[m], &b[0]);
                    E::mma(&mut o[m][2 * n + 1], &a[m], &b[1]);
                }
            }
        }

        // The next tile has landed, and everyone is done with this stage.
        wait_for_older_tiles::<T>();
        sync_threads();
    }

    // Epilogue: normalize; stage O in this warp's own rows of the Q tile (no other warp reads
    // them, and every read of Q is behind the loop's last barrier), then write whole 16-byte
    // chunks to global memory; write the LSE. The warp barrier orders this warp's own reads of
    // Q (the fragments read before a loop that may have run no iteration) before the stores.
    ptx::sync_warp();
    let lane = ptx::opaque(lane);
    if SEQ && shape.layout.num_splits > 1 {
        for m in 0..m_tiles {
            let row0 = warp_q0 + 16 * m as u32 + lane / 4;
            // SAFETY: the host sized the partials for every split and row (`FwdParams::o_accum`).
            unsafe { write_partial(p, split, head, row0, lane, &softmax[m], &o[m], d_tiles8, output_scale) };
        }
        return;
    }
    for m in 0..m_tiles {
        for half in 0..2 {
            let local_row = warp_row0 + 16 * m as u32 + lane / 4 + 8 * half as u32;
            let row = q_begin + local_row;
            let (inv, lse) = finish_row(softmax[m].max[half], quad_sum(softmax[m].sum[half]));
            let inv = if MODS { inv * output_scale } else { inv };
            for t in 0..d_tiles8 {
                let packed = E::pack(o[m][t][2 * half] * inv, o[m][t][2 * half + 1] * inv);
                // SAFETY: the element lies in this warp's rows of the Q tile.
                unsafe { ptx::st_shared_u32(q_tile.element(local_row, 8 * t as u32 + 2 * (lane % 4)), packed) };
            }
            if lane % 4 == 0 && row < shape.seqlen_q {
                // SAFETY: the LSE buffer holds batch · heads · seqlen_q floats (host-checked).
                unsafe {
                    *(p.lse as *mut f32).wrapping_offset(row_stat_index::<SEQ>(shape, batch, head, row) as isize) = lse
                };
            }
        }
    }
    ptx::sync_warp();
    let mut index = lane;
    while index < T::WARP_M * T::CHUNKS_PER_ROW {
        let (local, chunk) = (index / T::CHUNKS_PER_ROW, index % T::CHUNKS_PER_ROW);
        let row = warp_q0 + local;
        if row < shape.seqlen_q {
            // SAFETY: the chunk lies in this warp's rows of the Q tile; the destination is inside
            // row `row` of O, whose rows the host checked to be 16-byte aligned.
            unsafe {
                let v = ptx::ld_shared_v4(q_tile.chunk(warp_row0 + local, chunk));
                let out = (p.o as *mut u16)
                    .wrapping_offset(p.o_strides.offset(batch, row, head) as isize + 8 * chunk as isize);
                ptx::st_global_v4(out as *mut u8, v);
            }
        }
        index += 32;
    }
}

/// Split-KV epilogue: rows `row0` and `row0 + 8` of this lane's 16-row tile, normalized by this
/// split's own sum, to the f32 partials (`FwdParams::o_accum`, `lse_accum`), +inf LSE where the
/// split saw no key. Straight from the accumulators: each lane writes its two columns of every
/// 8-column tile (decode-sized tiles, where this is not the bottleneck).
///
/// # Safety
/// `p` is a sequence's validated block in split mode: the partials hold `splits · stat_rows`
/// rows of `head_dim` floats (and one float each).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn write_partial<const ND: usize>(
    p: &FwdParams,
    split: u32,
    head: u32,
    row0: u32,
    lane: u32,
    softmax: &OnlineSoftmax,
    o: &[[f32; 4]; ND],
    d_tiles8: usize,
    output_scale: f32,
) {
    let shape = &p.shape;
    // The 8-column tiles outermost: every index into O is a constant after unrolling.
    let mut at = [0i64; 2];
    let mut inv = [0f32; 2];
    for half in 0..2 {
        let row = row0 + 8 * half as u32;
        let (i, lse) = finish_row(softmax.max[half], quad_sum(softmax.sum[half]));
        inv[half] = i * output_scale;
        at[half] = split as i64 * shape.layout.stat_rows + row_stat_index::<true>(shape, 0, head, row);
        if lane % 4 == 0 && row < shape.seqlen_q {
            // SAFETY: inside the partial LSEs (caller).
            unsafe { *(p.lse_accum as *mut f32).wrapping_offset(at[half] as isize) = lse };
        }
    }
    for t in 0..d_tiles8 {
        for half in 0..2 {
            let col = 8 * t + 2 * (lane % 4) as usize;
            if row0 + 8 * (half as u32) < shape.seqlen_q && col < shape.head_dim as usize {
                let out = (p.o_accum as *mut f32).wrapping_offset((at[half] * shape.head_dim as i64) as isize);
                let v = [o[t][2 * half] * inv[half], o[t][2 * half + 1] * inv[half]];
                // SAFETY: inside row `at` of the partials (caller); 8-byte aligned (even column).
                unsafe { *(out.wrapping_add(col) as *mut [f32; 2]) = v };
            }
        }
    }
}

/// Split-KV: merge each row's partial results by their LSEs, `lse = log Σ exp(lse_s)` and
/// `O = Σ exp(lse_s − lse) · O_s` over the splits that saw a key, into O (the caller's dtype
/// and strides) and the LSE; a row no split saw is O = 0, LSE = +inf as in the forward. One
/// warp per row, 8 columns per lane.
///
/// # Safety
/// Launched with `ROW_KERNEL_THREADS` threads and grid `(ceil(seqlen_q / ROW_KERNEL_WARPS), heads,
/// batch)` after the split forward on the same validated parameter block.
#[inline(always)]
pub unsafe fn combine_splits<E: Element>(p: &FwdParams) {
    let tid = ptx::thread_idx();
    let (block_x, head, batch) = ptx::block_idx();
    // SAFETY: the host validated the layout's arrays.
    let p = &unsafe { p.sequence(batch) };
    let shape = &p.shape;
    let (row, lane) = (block_x * crate::traits::ROW_KERNEL_WARPS + tid / 32, tid % 32);
    if row >= shape.seqlen_q {
        return;
    }
    let splits = shape.layout.splits();
    let stride = shape.layout.stat_rows;
    let stat = row_stat_index::<true>(shape, batch, head, row);
    let lse_at = |s: u32| {
        // SAFETY: the partials hold splits · stat_rows floats (caller).
        unsafe { *(p.lse_accum as *const f32).wrapping_offset((s as i64 * stride + stat) as isize) }
    };
    let mut max = f32::NEG_INFINITY;
    for s in 0..splits {
        let l = lse_at(s);
        if l != f32::INFINITY {
            max = max.max(l);
        }
    }
    let mut sum = 0.0f32;
    if max != f32::NEG_INFINITY {
        for s in 0..splits {
            let l = lse_at(s);
            if l != f32::INFINITY {
                sum += ptx::exp2((l - max) * core::f32::consts::LOG2_E);
            }
        }
    }
    let lse = if sum == 0.0 { f32::INFINITY } else { max + ptx::log2(sum) * core::f32::consts::LN_2 };
    let mut chunk = lane;
    while chunk < shape.head_dim / 8 {
        let mut acc = [0f32; 8];
        if sum != 0.0 {
            for s in 0..splits {
                let l = lse_at(s);
                if l == f32::INFINITY {
                    continue;
                }
                let w = ptx::exp2((l - lse) * core::f32::consts::LOG2_E);
                let at = ((s as i64 * stride + stat) * shape.head_dim as i64) as usize + 8 * chunk as usize;
                // SAFETY: inside the row's partial output (caller); 16-byte aligned (head_dim % 8 == 0,
                // a 256-byte aligned buffer).
                let (lo, hi) = unsafe {
                    let base = (p.o_accum as *const f32).wrapping_add(at);
                    (*(base as *const [f32; 4]), *(base.wrapping_add(4) as *const [f32; 4]))
                };
                for i in 0..4 {
                    acc[i] += w * lo[i];
                    acc[4 + i] += w * hi[i];
                }
            }
        }
        let packed =
            [E::pack(acc[0], acc[1]), E::pack(acc[2], acc[3]), E::pack(acc[4], acc[5]), E::pack(acc[6], acc[7])];
        let out = (p.o as *mut u16).wrapping_offset(p.o_strides.offset(batch, row, head) as isize + 8 * chunk as isize);
        // SAFETY: inside row `row` of O, whose rows the host checked to be 16-byte aligned.
        unsafe { ptx::st_global_v4(out as *mut u8, packed) };
        chunk += 32;
    }
    if lane == 0 {
        // SAFETY: the LSE buffer holds the statistics' rows (host-checked).
        unsafe { *(p.lse as *mut f32).wrapping_offset(stat as isize) = lse };
    }
}
