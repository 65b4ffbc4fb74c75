//! Appending to a KV cache with rotary position embedding: the plain math of the append kernel
//! (`append.rs`): which row of the launch is which, where a position lives in a (paged) cache,
//! how a row's 32-bit words pair up for the rotation. Shared with the host, tested on the CPU.
//!
//! Rotary embedding turns each pair `(x, y)` of a row at position `p` by the angle of frequency
//! `i`: `(x cos − y sin, x sin + y cos)` with `cos = cos[p][i]`, `sin = sin[p][i]` from the
//! caller's tables. The pairs are the first `rotary_dim` elements, either interleaved
//! (`(2i, 2i + 1)`, GPT-J) or in halves (`(i, i + rotary_dim / 2)`, GPT-NeoX); the rest of the row
//! is copied.

use crate::params::{AppendParams, Strides};

/// The tensor a row of the append launch belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendTensor {
    /// A query row, rotated into `q_out`.
    Query,
    /// A new key row, rotated into the cache.
    Key,
    /// A new value row, copied into the cache.
    Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendRow {
    pub tensor: AppendTensor,
    pub batch: u32,
    pub token: u32,
    pub head: u32,
}

/// Rows of the query part of the launch (0 without `q_out`) and of each of the key and value
/// parts.
#[inline(always)]
pub const fn append_parts(p: &AppendParams) -> (u32, u32) {
    let q = if p.q_out == 0 { 0 } else { p.batch * p.seqlen_q * p.heads };
    (q, p.batch * p.seqlen_new * p.heads_k)
}

/// Rows the launch covers: the queries, then the keys, then the values.
#[inline(always)]
pub const fn append_rows(p: &AppendParams) -> u32 {
    let (q, kv) = append_parts(p);
    q + 2 * kv
}

/// Row `row` of the launch, `(batch, token, head)` with the head fastest; None past the end.
#[inline(always)]
pub const fn append_row(p: &AppendParams, row: u32) -> Option<AppendRow> {
    let (q, kv) = append_parts(p);
    let (tensor, index, heads) = if row < q {
        (AppendTensor::Query, row, p.heads)
    } else if row < q + kv {
        (AppendTensor::Key, row - q, p.heads_k)
    } else if row < q + 2 * kv {
        (AppendTensor::Value, row - q - kv, p.heads_k)
    } else {
        return None;
    };
    let tokens = match tensor {
        AppendTensor::Query => p.seqlen_q,
        _ => p.seqlen_new,
    };
    // Nonzero: a row exists, so heads and tokens are at least 1.
    let heads = if heads == 0 { 1 } else { heads };
    let tokens = if tokens == 0 { 1 } else { tokens };
    Some(AppendRow { tensor, batch: index / heads / tokens, token: index / heads % tokens, head: index % heads })
}

/// The position of a row's token: new keys at `len + token`; queries at `len + token ·
/// q_position_step`.
#[inline(always)]
pub const fn position(p: &AppendParams, row: &AppendRow, len: u32) -> u32 {
    match row.tensor {
        AppendTensor::Query => len + row.token * p.q_position_step,
        _ => len + row.token,
    }
}

/// The element offset of position `pos` of head `head` in sequence `batch`'s cache (`strides`
/// of K or V), or None past the cache's capacity. `read(array, i)` reads entry `i` of an i32
/// device array (the cache batch index, the block table).
#[inline(always)]
pub fn cache_offset(
    p: &AppendParams,
    strides: &Strides,
    batch: u32,
    pos: u32,
    head: u32,
    read: impl Fn(u64, u32) -> u32,
) -> Option<i64> {
    if pos >= p.capacity {
        return None;
    }
    if p.page_size != 0 {
        let page = read(p.block_table, batch * p.block_table_stride + pos / p.page_size);
        return Some(strides.offset(page, pos % p.page_size, head));
    }
    let entry = if p.cache_batch_idx == 0 { batch } else { read(p.cache_batch_idx, batch) };
    Some(strides.offset(entry, pos, head))
}

/// What happens to 32-bit word `word` of a row (its elements `2 · word` and `2 · word + 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    /// Past the rotary part (or no rotary): copied.
    Copy,
    /// Interleaved: the word is the pair, turned by frequency `freq`.
    Interleaved { freq: u32 },
    /// Halves: the word's two elements pair with word `partner`'s (in the second half), turned
    /// by frequencies `freq` and `freq + 1`; this word's lane writes both.
    Halves { partner: u32, freq: u32 },
    /// The second half of the halves layout: written by its partner's lane.
    Partner,
}

/// How word `word` is rotated with `rotary_dim` rotated elements (a multiple of 16; 0 for none).
#[inline(always)]
pub const fn rotary_word(rotary_dim: u32, interleaved: bool, word: u32) -> Word {
    let element = 2 * word;
    if element >= rotary_dim {
        return Word::Copy;
    }
    if interleaved {
        return Word::Interleaved { freq: word };
    }
    let half = rotary_dim / 2;
    if element < half { Word::Halves { partner: word + half / 2, freq: element } } else { Word::Partner }
}

/// One rotary pair turned by the angle whose cosine and sine are given.
#[inline(always)]
pub fn rotate(x: f32, y: f32, cos: f32, sin: f32) -> (f32, f32) {
    (x * cos - y * sin, x * sin + y * cos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn params() -> AppendParams {
        AppendParams {
            batch: 3,
            seqlen_new: 2,
            seqlen_q: 5,
            heads: 4,
            heads_k: 2,
            head_dim: 64,
            q_out: 1,
            capacity: 40,
            ..Default::default()
        }
    }

    #[test]
    fn rows_cover_queries_then_keys_then_values_once() {
        let p = params();
        assert_eq!(append_rows(&p), 3 * 5 * 4 + 2 * 3 * 2 * 2);
        let rows: Vec<_> = (0..append_rows(&p)).map(|r| append_row(&p, r).unwrap()).collect();
        assert_eq!(append_row(&p, append_rows(&p)), None);
        for tensor in [AppendTensor::Query, AppendTensor::Key, AppendTensor::Value] {
            let (tokens, heads) = if tensor == AppendTensor::Query { (5, 4) } else { (2, 2) };
            let mut seen: Vec<_> =
                rows.iter().filter(|r| r.tensor == tensor).map(|r| (r.batch, r.token, r.head)).collect();
            seen.sort();
            let all: Vec<_> =
                (0..3).flat_map(|b| (0..tokens).flat_map(move |t| (0..heads).map(move |h| (b, t, h)))).collect();
            assert_eq!(seen, all, "{tensor:?}");
        }
        // Without a rotated query copy the launch starts with the keys.
        let p = AppendParams { q_out: 0, ..params() };
        assert_eq!(append_row(&p, 0).unwrap().tensor, AppendTensor::Key);
    }

    #[test]
    fn positions_follow_the_cache_length() {
        let p = params();
        let key = AppendRow { tensor: AppendTensor::Key, batch: 0, token: 1, head: 0 };
        let query = AppendRow { tensor: AppendTensor::Query, batch: 0, token: 3, head: 0 };
        assert_eq!(position(&p, &key, 10), 11);
        assert_eq!(position(&AppendParams { q_position_step: 1, ..p }, &query, 10), 13);
        assert_eq!(position(&AppendParams { q_position_step: 0, ..p }, &query, 10), 10);
    }

    #[test]
    fn cache_offsets_go_through_the_batch_index_or_the_pages() {
        let strides = Strides { batch: 1000, row: 10, head: 1 };
        let none = |_: u64, _: u32| -> u32 { panic!("no array to read") };
        let p = params();
        assert_eq!(cache_offset(&p, &strides, 2, 7, 1, none), Some(2 * 1000 + 70 + 1));
        assert_eq!(cache_offset(&p, &strides, 2, 40, 1, none), None);
        // Entry 2 maps to cache entry 5.
        let indexed = AppendParams { cache_batch_idx: 8, ..p };
        assert_eq!(cache_offset(&indexed, &strides, 2, 7, 0, |_, i| [0, 0, 5][i as usize]), Some(5070));
        // Pages of 16, 3 a sequence: sequence 1's position 20 is row 4 of its second page (9).
        let paged = AppendParams { block_table: 8, block_table_stride: 3, page_size: 16, capacity: 48, ..p };
        let table = [0u32, 1, 2, 7, 9, 3];
        assert_eq!(cache_offset(&paged, &strides, 1, 20, 0, |_, i| table[i as usize]), Some(9 * 1000 + 40));
    }

    #[test]
    fn words_pair_up_as_each_layout_says() {
        // Halves of 32 rotated elements: words 0..8 hold the first half and pair with 8..16.
        assert_eq!(rotary_word(32, false, 0), Word::Halves { partner: 8, freq: 0 });
        assert_eq!(rotary_word(32, false, 7), Word::Halves { partner: 15, freq: 14 });
        assert_eq!(rotary_word(32, false, 8), Word::Partner);
        assert_eq!(rotary_word(32, false, 16), Word::Copy);
        assert_eq!(rotary_word(32, true, 5), Word::Interleaved { freq: 5 });
        assert_eq!(rotary_word(32, true, 16), Word::Copy);
        assert_eq!(rotary_word(0, false, 0), Word::Copy);
        // Every element of the rotary part is written exactly once.
        for interleaved in [false, true] {
            let mut hits = [0u32; 64];
            for w in 0..32 {
                match rotary_word(48, interleaved, w) {
                    Word::Copy | Word::Interleaved { .. } => {
                        hits[2 * w as usize] += 1;
                        hits[2 * w as usize + 1] += 1;
                    }
                    Word::Halves { partner, .. } => {
                        for e in [2 * w, 2 * w + 1, 2 * partner, 2 * partner + 1] {
                            hits[e as usize] += 1;
                        }
                    }
                    Word::Partner => {}
                }
            }
            assert!(hits.iter().all(|&h| h == 1), "{interleaved}: {hits:?}");
        }
    }

    #[test]
    fn a_quarter_turn_maps_x_to_y() {
        let (x, y) = rotate(1.0, 0.0, 0.0, 1.0);
        assert_eq!((x, y), (0.0, 1.0));
        let (x, y) = rotate(0.6, 0.8, 0.6, -0.8);
        assert!((x - 1.0).abs() < 1e-6 && y.abs() < 1e-6);
    }
}
