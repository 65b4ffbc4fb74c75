//! Appending new keys and values to a KV cache, with rotary embedding, before the attention
//! kernel of the same call reads the cache.
//!
//! One warp per row ([`crate::rotary::append_row`]: the queries to rotate, then the new keys,
//! then the new values); each lane takes 32-bit words (two elements) of the row. A key's row
//! goes to its sequence's next free position ([`crate::rotary::cache_offset`]: its cache entry or
//! its page); a query's rotated copy goes to `q_out`. Block 0 also writes the new lengths
//! (`seqlens_out`) that the attention launched after it reads as its keys per sequence. All
//! arithmetic is f32, rounded once to the element type, as the attention would see the values.

use crate::params::{AppendParams, read_index};
use crate::ptx;
use crate::rotary::{AppendTensor, Word, append_row, cache_offset, position, rotary_word, rotate};
use crate::tile::Element;
use crate::traits::{ROW_KERNEL_THREADS, ROW_KERNEL_WARPS};

/// # Safety
/// Launched with `ROW_KERNEL_THREADS` threads over `ceil(append_rows / ROW_KERNEL_WARPS)`
/// blocks on a parameter block the host validated: tensors of the stated shapes and strides
/// (even strides: words are 4-byte aligned), i32 arrays of the stated lengths, block table
/// entries naming pages of the cache, rotary tables of `rotary_rows` rows.
#[inline(always)]
pub unsafe fn append_kv<E: Element>(p: &AppendParams) {
    let tid = ptx::thread_idx();
    let block = ptx::block_idx().0;
    if block == 0 {
        let mut b = tid;
        while b < p.batch {
            // SAFETY: cache_seqlens and seqlens_out hold batch entries (caller).
            unsafe {
                let len = read_index(p.cache_seqlens, b);
                let new = len.saturating_add(p.seqlen_new).min(p.capacity);
                *(p.seqlens_out as *mut i32).wrapping_add(b as usize) = new as i32;
            }
            b += ROW_KERNEL_THREADS;
        }
    }
    let Some(row) = append_row(p, block * ROW_KERNEL_WARPS + tid / 32) else { return };
    let lane = tid % 32;
    // SAFETY: cache_seqlens holds batch entries (caller).
    let len = unsafe { read_index(p.cache_seqlens, row.batch) };
    let pos = position(p, &row, len);
    // SAFETY (of every `read`): the arrays hold the entries the layout names (caller).
    let read = |a: u64, i: u32| unsafe { read_index(a, i) };
    let (src, dst) = match row.tensor {
        AppendTensor::Query => (
            p.q as i64 + 2 * p.q_strides.offset(row.batch, row.token, row.head),
            p.q_out as i64 + 2 * p.q_out_strides.offset(row.batch, row.token, row.head),
        ),
        AppendTensor::Key | AppendTensor::Value => {
            // By value: a reference chosen at run time into the parameter block would make the
            // compiler copy the whole block to local memory.
            let (new, new_strides, cache, cache_strides) = match row.tensor {
                AppendTensor::Key => (p.k_new, p.k_new_strides, p.k_cache, p.k_cache_strides),
                _ => (p.v_new, p.v_new_strides, p.v_cache, p.v_cache_strides),
            };
            // Past the cache's capacity (unchecked lengths): nothing is written.
            let Some(at) = cache_offset(p, &cache_strides, row.batch, pos, row.head, read) else { return };
            (new as i64 + 2 * new_strides.offset(row.batch, row.token, row.head), cache as i64 + 2 * at)
        }
    };
    let rotary_dim = match row.tensor {
        AppendTensor::Value => 0,
        _ if p.rotary_cos == 0 => 0,
        _ => p.rotary_dim,
    };
    // Positions past the tables (only with unchecked lengths beyond the cache) use its last row.
    let table_row = pos.min(p.rotary_rows.max(1) - 1) as i64 * p.rotary_row_stride as i64;
    let word_at = |base: i64, w: u32| (base + 4 * w as i64) as u64;
    // SAFETY (of every `load`/`store`): words of the row, the tables' row or the destination
    // row, all inside the validated tensors; 4-byte aligned (even strides and offsets).
    let load = |addr: u64| unsafe { *(addr as *const u32) };
    let store = |addr: u64, value: u32| unsafe { *(addr as *mut u32) = value };
    let halves = |x: u32| (E::to_f32(x as u16), E::to_f32((x >> 16) as u16));
    // The tables' entry `freq` (and `freq + 1`) of this position.
    let angle = |freq: u32| {
        let at = 2 * (table_row + freq as i64);
        // SAFETY: as above; a row of the tables holds rotary_dim / 2 entries.
        let (c, s) =
            unsafe { (*((p.rotary_cos as i64 + at) as *const u16), *((p.rotary_sin as i64 + at) as *const u16)) };
        (E::to_f32(c), E::to_f32(s))
    };
    let mut w = lane;
    while w < p.head_dim / 2 {
        match rotary_word(rotary_dim, p.rotary_interleaved != 0, w) {
            Word::Copy => store(word_at(dst, w), load(word_at(src, w))),
            Word::Interleaved { freq } => {
                let (x, y) = halves(load(word_at(src, w)));
                let (c, s) = angle(freq);
                let (x, y) = rotate(x, y, c, s);
                store(word_at(dst, w), E::pack(x, y));
            }
            Word::Halves { partner, freq } => {
                let (x0, x1) = halves(load(word_at(src, w)));
                let (y0, y1) = halves(load(word_at(src, partner)));
                let ((c0, s0), (c1, s1)) = (angle(freq), angle(freq + 1));
                let ((x0, y0), (x1, y1)) = (rotate(x0, y0, c0, s0), rotate(x1, y1, c1, s1));
                store(word_at(dst, w), E::pack(x0, x1));
                store(word_at(dst, partner), E::pack(y0, y1));
            }
            Word::Partner => {}
        }
        w += 32;
    }
}
