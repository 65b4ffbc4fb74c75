//! Kernel traits: the tile configuration of each kernel, kept apart from the algorithm.
//!
//! Every warp owns 16 rows of the tile it iterates over (query rows in the forward, key rows in
//! the backward), so the row statistics of the online softmax never leave a warp. Shared memory
//! holds 16-bit tiles in swizzled 16-byte chunks (see [`crate::tiling::tile_byte_offset`]).

/// Rows of one `mma.m16n8k16` tile, and so the rows one warp owns.
pub const WARP_ROWS: u32 = 16;

/// Forward tile configuration.
pub trait FwdTraits {
    const HEAD_DIM: u32;
    /// Key/value rows per shared-memory tile.
    const BLOCK_N: u32;
    const WARPS: u32;
    /// Keep each warp's Q fragments in registers for the whole block (saves one ldmatrix per
    /// mma k-step) or reload them from shared memory every K tile (saves D/4 registers).
    const Q_IN_REGISTERS: bool;

    /// Query rows per thread block.
    const BLOCK_M: u32 = Self::WARPS * WARP_ROWS;
    const THREADS: u32 = Self::WARPS * 32;
    const CHUNKS_PER_ROW: u32 = Self::HEAD_DIM / 8;
    const Q_TILE_BYTES: u32 = Self::BLOCK_M * Self::HEAD_DIM * 2;
    const KV_TILE_BYTES: u32 = Self::BLOCK_N * Self::HEAD_DIM * 2;
    /// K and V are double-buffered: the next tile streams in while this one is used.
    const STAGES: u32 = 2;
    const Q_OFFSET: u32 = 0;
    const K_OFFSET: u32 = Self::Q_TILE_BYTES;
    const V_OFFSET: u32 = Self::K_OFFSET + Self::STAGES * Self::KV_TILE_BYTES;
    const SMEM_BYTES: u32 = Self::V_OFFSET + Self::STAGES * Self::KV_TILE_BYTES;
}

/// Backward tile configuration: one block per `BLOCK_N` keys, iterating over `BLOCK_M` queries.
pub trait BwdTraits {
    const HEAD_DIM: u32;
    /// Query rows per inner iteration.
    const BLOCK_M: u32;
    const WARPS: u32;
    /// Columns of dQ one warp accumulates per step (bounds the live registers).
    const DQ_COLS: u32;

    /// Key rows per thread block: each warp owns 16 keys and their dK, dV rows.
    const BLOCK_N: u32 = Self::WARPS * WARP_ROWS;
    const THREADS: u32 = Self::WARPS * 32;
    const CHUNKS_PER_ROW: u32 = Self::HEAD_DIM / 8;
    const KV_TILE_BYTES: u32 = Self::BLOCK_N * Self::HEAD_DIM * 2;
    const Q_TILE_BYTES: u32 = Self::BLOCK_M * Self::HEAD_DIM * 2;
    const K_OFFSET: u32 = 0;
    const V_OFFSET: u32 = Self::KV_TILE_BYTES;
    const Q_OFFSET: u32 = 2 * Self::KV_TILE_BYTES;
    const DO_OFFSET: u32 = Self::Q_OFFSET + Self::Q_TILE_BYTES;
    /// dSᵀ (BLOCK_N × BLOCK_M, 16-bit) goes through shared memory once per iteration so that
    /// dQ = dS·K can be split across warps by query rows.
    const DS_OFFSET: u32 = Self::DO_OFFSET + Self::Q_TILE_BYTES;
    const DS_TILE_BYTES: u32 = Self::BLOCK_N * Self::BLOCK_M * 2;
    /// LSE·log2(e) and D = rowsum(dO∘O) of the current queries, f32 each.
    const LSE_OFFSET: u32 = Self::DS_OFFSET + Self::DS_TILE_BYTES;
    const D_OFFSET: u32 = Self::LSE_OFFSET + Self::BLOCK_M * 4;
    const SMEM_BYTES: u32 = Self::D_OFFSET + Self::BLOCK_M * 4;
}

pub struct FwdHdim64;
impl FwdTraits for FwdHdim64 {
    const HEAD_DIM: u32 = 64;
    const BLOCK_N: u32 = 128;
    const WARPS: u32 = 8;
    const Q_IN_REGISTERS: bool = true;
}

pub struct FwdHdim128;
impl FwdTraits for FwdHdim128 {
    const HEAD_DIM: u32 = 128;
    const BLOCK_N: u32 = 64;
    const WARPS: u32 = 8;
    const Q_IN_REGISTERS: bool = false;
}

pub struct BwdHdim64;
impl BwdTraits for BwdHdim64 {
    const HEAD_DIM: u32 = 64;
    const BLOCK_M: u32 = 64;
    const WARPS: u32 = 4;
    const DQ_COLS: u32 = 32;
}

pub struct BwdHdim128;
impl BwdTraits for BwdHdim128 {
    const HEAD_DIM: u32 = 128;
    const BLOCK_M: u32 = 32;
    const WARPS: u32 = 4;
    const DQ_COLS: u32 = 32;
}

/// The element-wise helper kernels (backward preprocess, dQ conversion): one warp per row.
pub const ROW_KERNEL_WARPS: u32 = 4;
pub const ROW_KERNEL_THREADS: u32 = ROW_KERNEL_WARPS * 32;

/// Head dims with a shipped configuration.
pub const SUPPORTED_HEAD_DIMS: [u32; 2] = [64, 128];

#[cfg(test)]
mod tests {
    use super::*;

    fn check_fwd<T: FwdTraits>() {
        assert_eq!(T::HEAD_DIM % 16, 0);
        assert_eq!(T::BLOCK_N % 16, 0);
        // cp.async tile loads: every thread moves whole 16-byte chunks, an equal number each.
        assert_eq!((T::BLOCK_M * T::CHUNKS_PER_ROW) % T::THREADS, 0);
        assert_eq!((T::BLOCK_N * T::CHUNKS_PER_ROW) % T::THREADS, 0);
        assert!(T::SMEM_BYTES <= 227 * 1024);
    }

    fn check_bwd<T: BwdTraits>() {
        assert_eq!(T::HEAD_DIM % T::DQ_COLS, 0);
        assert_eq!(T::DQ_COLS % 16, 0);
        assert_eq!(T::BLOCK_M % 16, 0);
        assert_eq!((T::BLOCK_M * T::CHUNKS_PER_ROW) % T::THREADS, 0);
        assert_eq!((T::BLOCK_N * T::CHUNKS_PER_ROW) % T::THREADS, 0);
        assert!(T::BLOCK_M <= T::THREADS, "one thread stages each query's LSE and D");
        assert!(T::SMEM_BYTES <= 227 * 1024);
    }

    #[test]
    fn shipped_configurations_are_consistent() {
        check_fwd::<FwdHdim64>();
        check_fwd::<FwdHdim128>();
        check_bwd::<BwdHdim64>();
        check_bwd::<BwdHdim128>();
    }
}
