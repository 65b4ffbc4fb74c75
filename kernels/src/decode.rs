//! Decode: a few new query tokens against a long KV cache, memory-bound.
//!
//! The dense forward gives every (query tile, head) a block of 64–128 query rows; a decode step
//! has one to a few tokens per head, so those tiles would be almost all padding, and each query
//! head would read its K/V head again. Here one block serves one K/V head of one sequence (and
//! one split of its keys): its 16-row Q tile packs the query heads of the K/V group and the new
//! tokens (row `r` is token `r / group` of query head `kv_head · group + r % group`;
//! FlashAttention-3's pack_gqa), so every K/V byte read feeds all of the group's heads and tokens.
//! The four warps stream different 32-key tiles (16 for head dims above 128) of the split's keys
//! through their own double-buffered `cp.async` stages, each with its own online softmax over
//! the same 16 rows, and merge at the end through shared memory: per row the largest max, each
//! warp's O and sum rescaled to it, summed in warp order. Split-KV (grid x) writes f32 partials
//! for [`crate::forward::combine_splits`], as the dense split forward does.
//!
//! Rows follow the addressing layer ([`FwdParams::sequence`]: cache lengths, the cache batch
//! index), and with a paged cache ([`crate::params::SeqLayout::page_size`]) every key row is
//! looked up in the block table. The score step is the shared one per element
//! ([`ScoreMods::score`], [`Mask::allows`] at the row's token), with each row's own head's ALiBi
//! slope; a sink joins the row's softmax once (warp 0 of split 0). Dropout is not offered here
//! (inference).

use crate::forward::{OnlineSoftmax, online_softmax};
use crate::modifiers::{ScoreMods, finish_row, fragment_element, sink_log2};
use crate::params::{FwdParams, row_stat_index};
use crate::ptx::{self, cp_async_commit, sync_threads};
use crate::tile::{Element, SmemTile, accumulators_as_a, quad_sum};
use crate::tiling::{DECODE_ROWS, DECODE_WARPS, Mask, ceil_div, decode_keys, split_tiles};

/// Where a key tile's rows live: `(first page's row-0 offset, second page's, first key of the
/// second page)` in elements from the head's base. A contiguous cache is one "page"; a tile of
/// at most 32 keys spans at most two pages of 16 or more rows, so a paged cache costs two
/// table reads per tile (the same for every lane), issued before the copies.
///
/// # Safety
/// `p` is a sequence's validated block; the table entries of keys below `k_begin + valid` exist.
#[inline(always)]
unsafe fn tile_pages(p: &FwdParams, k_begin: u32, valid: u32, page_stride: i64, row_stride: i64) -> (i64, i64, u32) {
    let layout = &p.shape.layout;
    if layout.page_size == 0 {
        return (0, 0, u32::MAX);
    }
    let page_size = layout.page_size.max(1);
    let last = k_begin + valid.max(1) - 1;
    let row0 = layout.block_table_stride * ptx::block_idx().2;
    let table = layout.block_table as *const i32;
    // SAFETY: the host validated the table: (batch, block_table_stride) i32, pages in range;
    // `last` is a key the sequence has.
    let (a, b) = unsafe {
        (
            *table.wrapping_add((row0 + k_begin / page_size) as usize),
            *table.wrapping_add((row0 + last / page_size) as usize),
        )
    };
    // Offsets such that key `j` of a page that starts at key `start` is at `offset + j · row_stride`.
    let offset = |page: i32, start: u32| page as i64 * page_stride - start as i64 * row_stride;
    let first_start = k_begin / page_size * page_size;
    let second = first_start + page_size;
    (offset(a, first_start), offset(b, second), second)
}

/// Start copying `rows` key rows from `k_begin` of K or V (`base` at this head) into `tile`:
/// whole 16-byte chunks by the warp's 32 lanes, rows past `valid` as zeros, paged rows at the
/// offsets [`tile_pages`] found.
///
/// # Safety
/// `p` is a sequence's validated block; rows below `valid` exist (in the pages the table names).
#[inline(always)]
unsafe fn load_keys(
    p: &FwdParams,
    tile: SmemTile,
    base: u64,
    row_stride: i64,
    page_stride: i64,
    rows: u32,
    k_begin: u32,
    valid: u32,
    lane: u32,
) {
    let chunks = tile.chunks_per_row;
    // SAFETY: forwarded from the caller (the tile's own rows: at most `rows` of them).
    let (first, second, second_key) = unsafe { tile_pages(p, k_begin, valid.min(rows), page_stride, row_stride) };
    let mut i = lane;
    while i < rows * chunks {
        let (row, chunk) = (i / chunks, i % chunks);
        let key = k_begin + row;
        let in_range = row < valid;
        let page = if key < second_key { first } else { second };
        let at = if in_range { page + key as i64 * row_stride } else { 0 };
        let src = (base as *const u16).wrapping_offset(at as isize + 8 * chunk as isize);
        // SAFETY: in-range rows are readable (caller); others copy no bytes from row 0.
        unsafe { ptx::cp_async_16(tile.chunk(row, chunk), src as *const u8, if in_range { 16 } else { 0 }) };
        i += 32;
    }
}

/// # Safety
/// Launched with `DECODE_WARPS · 32` threads, grid `(splits, heads_k, batch)` and
/// `decode_smem_bytes(D, STAGES)` of dynamic shared memory, on a validated parameter block with
/// `heads / heads_k · seqlen_q ≤ DECODE_ROWS` and no dropout.
#[inline(always)]
pub unsafe fn flash_decode<E: Element, const D: u32, const STAGES: u32>(p: &FwdParams) {
    const { assert!(D % 16 == 0 && D <= 256) };
    let keys_per_tile = decode_keys(D);
    let (split, kv_head, batch) = ptx::block_idx();
    // SAFETY: the host validated the layout's arrays.
    let p = &unsafe { p.sequence(batch) };
    let shape = &p.shape;
    // At least 1 (heads_k divides heads, host-checked), which also keeps a panic path out.
    let group = (shape.heads / shape.heads_k.max(1)).max(1);
    let mask = Mask::of(shape);
    let tid = ptx::thread_idx();
    let (warp, lane) = (tid / 32, tid % 32);
    let chunks = D / 8;
    let smem = ptx::dynamic_smem_base();
    let q_tile = SmemTile { base: smem, chunks_per_row: chunks };
    let stage_bytes = keys_per_tile * D * 2;
    let warp_base = smem + DECODE_ROWS * D * 2 + warp * 2 * STAGES * stage_bytes;
    let k_tile = |stage: u32| SmemTile { base: warp_base + stage * 2 * stage_bytes, chunks_per_row: chunks };
    let v_tile = |stage: u32| SmemTile { base: warp_base + (stage * 2 + 1) * stage_bytes, chunks_per_row: chunks };
    // Row r of the tile: token r / group of query head kv_head · group + r % group.
    let row_of = |r: u32| (r / group, kv_head * group + r % group);

    // The Q tile, all threads, rows past the tokens zero.
    let mut i = tid;
    while i < DECODE_ROWS * chunks {
        let (r, chunk) = (i / chunks, i % chunks);
        let (token, head) = row_of(r);
        let valid = token < shape.seqlen_q;
        let at = if valid { p.q_strides.offset(batch, token, head) } else { 0 };
        let src = (p.q as *const u16).wrapping_offset(at as isize + 8 * chunk as isize);
        // SAFETY: valid rows lie inside Q (host-checked); others copy no bytes.
        unsafe { ptx::cp_async_16(q_tile.chunk(r, chunk), src as *const u8, if valid { 16 } else { 0 }) };
        i += DECODE_WARPS * 32;
    }
    cp_async_commit();

    // This split's key tiles; warp w takes tiles w, w + 4, ...
    let (key_lo, key_hi) = mask.key_range(0, shape.seqlen_q);
    let tiles = split_tiles((key_lo / keys_per_tile, ceil_div(key_hi, keys_per_tile)), split, shape.layout.splits());
    // A contiguous cache's entry comes from the batch stride; a paged one's pages from the table.
    let entry = if shape.layout.page_size == 0 { batch } else { 0 };
    let k_base = p.k.wrapping_add(2 * p.k_strides.offset(entry, 0, kv_head) as u64);
    let v_base = p.v.wrapping_add(2 * p.v_strides.offset(entry, 0, kv_head) as u64);
    let load = |tile: u32, stage: u32| {
        let k_begin = tile * keys_per_tile;
        let valid = shape.seqlen_k.saturating_sub(k_begin);
        // SAFETY: the sequence's first seqlen_k keys exist (host-checked cache lengths, table).
        unsafe {
            load_keys(
                p,
                k_tile(stage),
                k_base,
                p.k_strides.row,
                p.k_strides.batch,
                keys_per_tile,
                k_begin,
                valid,
                lane,
            );
            load_keys(
                p,
                v_tile(stage),
                v_base,
                p.v_strides.row,
                p.v_strides.batch,
                keys_per_tile,
                k_begin,
                valid,
                lane,
            );
        }
    };
    // Tiles first, first + 4, ... go to stages 0, 1, ...: STAGES - 1 of them ahead.
    let first = tiles.0 + warp;
    for ahead in 0..STAGES - 1 {
        let tile = first + ahead * DECODE_WARPS;
        if tile < tiles.1 {
            load(tile, ahead);
        }
        cp_async_commit();
    }
    // The Q tile (the oldest group) has landed for the whole block.
    if STAGES == 3 {
        ptx::cp_async_wait_all_but_two();
    } else {
        ptx::cp_async_wait_all_but_one();
    }
    sync_threads();

    // Each lane's two rows: lane / 4 and lane / 4 + 8, with their heads' modifiers and sinks.
    let rows = [lane / 4, lane / 4 + 8];
    // SAFETY: the host validated the slopes and sinks.
    let mods = rows.map(|r| unsafe { ScoreMods::load(shape, &p.mods, batch, row_of(r).1) });
    let mut softmax = [OnlineSoftmax::EMPTY];
    if warp == 0 && split == 0 {
        for half in 0..2 {
            // SAFETY: as above.
            let sink = unsafe { sink_log2(&p.mods, row_of(rows[half]).1) };
            if sink != f32::NEG_INFINITY {
                softmax[0].max[half] = sink;
                softmax[0].sum[half] = if lane % 4 == 0 { 1.0 } else { 0.0 };
            }
        }
    }
    let n8 = (keys_per_tile / 8) as usize;
    let d8 = (D / 8) as usize;
    let mut o = [[[0f32; 4]; 32]; 1];
    let mut stage = 0;
    let mut tile = first;
    while tile < tiles.1 {
        // Refill the stage the previous iteration used with the tile STAGES - 1 ahead; one group
        // per iteration, empty or not, so "all but the newest STAGES - 2" is this tile.
        let ahead = tile + (STAGES - 1) * DECODE_WARPS;
        if ahead < tiles.1 {
            load(ahead, (stage + STAGES - 1) % STAGES);
        }
        cp_async_commit();
        if STAGES == 3 {
            ptx::cp_async_wait_all_but_two();
        } else {
            ptx::cp_async_wait_all_but_one();
        }
        ptx::sync_warp();
        let (keys, values) = (k_tile(stage), v_tile(stage));
        let lane = ptx::opaque(lane);
        let mut s = [[[0f32; 4]; 4]; 1];
        // Q's fragments come from shared memory each tile: registers go to O (D / 2 a lane).
        for kk in 0..(D / 16) as usize {
            let a = q_tile.a_fragment(0, kk as u32, lane);
            for n in 0..n8 / 2 {
                let b = keys.b_fragments(16 * n as u32, kk as u32, lane);
                E::mma(&mut s[0][2 * n], &a, &b[0]);
                E::mma(&mut s[0][2 * n + 1], &a, &b[1]);
            }
        }
        // The score step per element, at each row's token and head.
        let k_begin = tile * keys_per_tile;
        for t in 0..n8 {
            for e in 0..4 {
                let (r, key) = fragment_element(0, k_begin, lane, t as u32, e as u32);
                let token = r / group;
                s[0][t][e] =
                    if mask.allows(token, key) { mods[e / 2].score(s[0][t][e], token, key) } else { f32::NEG_INFINITY };
            }
        }
        online_softmax(&mut softmax, &mut s, &mut o, 1, n8, d8, shape.scale_log2);
        for kk in 0..n8 / 2 {
            let a = accumulators_as_a::<E>(&s[0][2 * kk], &s[0][2 * kk + 1]);
            for n in 0..d8 / 2 {
                let b = values.b_fragments_transposed(16 * kk as u32, n as u32, lane);
                E::mma(&mut o[0][2 * n], &a, &b[0]);
                E::mma(&mut o[0][2 * n + 1], &a, &b[1]);
            }
        }
        // Everyone in the warp is done with this stage before it is refilled.
        ptx::sync_warp();
        stage = (stage + 1) % STAGES;
        tile += DECODE_WARPS;
    }
    ptx::cp_async_wait_all();

    // Merge the warps: per row the largest max (log2 units), each warp's sum and O rescaled to
    // it, summed in warp order through shared memory (the stages are free now). Loops over the
    // 8-column tiles are outermost, so that every index into O is a constant after unrolling.
    sync_threads();
    let stats = smem + DECODE_ROWS * D * 2; // [warp][row] max, then [warp][row] sum
    let sums_at = stats + 4 * DECODE_WARPS * DECODE_ROWS;
    let partial = sums_at + 4 * DECODE_WARPS * DECODE_ROWS; // [warp][row][D] f32
    let sums = [quad_sum(softmax[0].sum[0]), quad_sum(softmax[0].sum[1])];
    if lane % 4 == 0 {
        for half in 0..2 {
            let at = 4 * (warp * DECODE_ROWS + rows[half]);
            // SAFETY: inside the block's shared memory (the stages' region).
            unsafe {
                ptx::st_shared_u32(stats + at, softmax[0].max[half].to_bits());
                ptx::st_shared_u32(sums_at + at, sums[half].to_bits());
            }
        }
    }
    sync_threads();
    let (mut max, mut sum, mut factor) = ([f32::NEG_INFINITY; 2], [0f32; 2], [0f32; 2]);
    for half in 0..2 {
        for w in 0..DECODE_WARPS {
            // SAFETY: written above.
            max[half] = max[half].max(unsafe { ptx::ld_shared_f32(stats + 4 * (w * DECODE_ROWS + rows[half])) });
        }
        let shift = if max[half] == f32::NEG_INFINITY { 0.0 } else { max[half] };
        for w in 0..DECODE_WARPS {
            let at = 4 * (w * DECODE_ROWS + rows[half]);
            // SAFETY: written above.
            let (m, s) = unsafe { (ptx::ld_shared_f32(stats + at), ptx::ld_shared_f32(sums_at + at)) };
            if s != 0.0 {
                sum[half] += s * ptx::exp2(m - shift);
            }
        }
        factor[half] = if sums[half] == 0.0 { 0.0 } else { ptx::exp2(softmax[0].max[half] - shift) };
    }
    for t in 0..d8 {
        for half in 0..2 {
            let col = 8 * t as u32 + 2 * (lane % 4);
            let at = partial + 4 * ((warp * DECODE_ROWS + rows[half]) * D + col);
            // SAFETY: inside the merge region of the block's shared memory.
            unsafe {
                ptx::st_shared_u32(at, (o[0][t][2 * half] * factor[half]).to_bits());
                ptx::st_shared_u32(at + 4, (o[0][t][2 * half + 1] * factor[half]).to_bits());
            }
        }
    }
    sync_threads();
    if warp != 0 {
        return;
    }
    // Warp 0 sums the warps' rescaled O in warp order and writes the rows.
    let lane = ptx::opaque(lane);
    let mut inv = [0f32; 2];
    let mut lse = [0f32; 2];
    let mut target = [(0u32, 0u32, false); 2];
    for half in 0..2 {
        // The whole row's sum sits in every lane of the quad: no quad reduction.
        (inv[half], lse[half]) = finish_row(max[half], sum[half]);
        let (token, head) = row_of(rows[half]);
        target[half] = (token, head, token < shape.seqlen_q);
    }
    let split_mode = shape.layout.num_splits > 1;
    for t in 0..d8 {
        for half in 0..2 {
            let (token, head, valid) = target[half];
            let col = 8 * t as u32 + 2 * (lane % 4);
            let (mut a, mut b) = (0.0f32, 0.0f32);
            for w in 0..DECODE_WARPS {
                let at = partial + 4 * ((w * DECODE_ROWS + rows[half]) * D + col);
                // SAFETY: written above.
                unsafe {
                    a += ptx::ld_shared_f32(at);
                    b += ptx::ld_shared_f32(at + 4);
                }
            }
            if !valid {
                continue;
            }
            let (a, b) = (a * inv[half], b * inv[half]);
            if split_mode {
                let at = split as i64 * shape.layout.stat_rows + row_stat_index::<true>(shape, batch, head, token);
                let out = (p.o_accum as *mut f32).wrapping_offset((at * D as i64) as isize);
                // SAFETY: inside row `at` of the partials (host-sized); 8-byte aligned (even column).
                unsafe { *(out.wrapping_add(col as usize) as *mut [f32; 2]) = [a, b] };
            } else {
                let out = (p.o as *mut u16).wrapping_offset(p.o_strides.offset(batch, token, head) as isize);
                // SAFETY: inside row (token, head) of O; 4-byte aligned (even column, aligned rows).
                unsafe { *(out.wrapping_add(col as usize) as *mut u32) = E::pack(a, b) };
            }
        }
    }
    if lane % 4 == 0 {
        for half in 0..2 {
            let (token, head, valid) = target[half];
            if !valid {
                continue;
            }
            let stat = row_stat_index::<true>(shape, batch, head, token);
            // SAFETY: the LSE (and in split mode the partial LSEs) hold the statistics' rows.
            unsafe {
                if split_mode {
                    *(p.lse_accum as *mut f32)
                        .wrapping_offset((split as i64 * shape.layout.stat_rows + stat) as isize) = lse[half];
                } else {
                    *(p.lse as *mut f32).wrapping_offset(stat as isize) = lse[half];
                }
            }
        }
    }
}
