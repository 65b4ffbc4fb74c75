//! Kernel traits: the tile configuration of each kernel, kept apart from the algorithm.
//!
//! Every warp owns whole 16-row mma tiles of the tile it iterates over (query rows in the
//! forward, `M_TILES` of them; 16 key rows in the backward, shared by `D_SPLIT` warps that split
//! the columns), so the row statistics of the online softmax never leave a warp. Shared memory
//! holds 16-bit tiles in swizzled 16-byte chunks (see [`crate::tiling::tile_byte_offset`]); the
//! Hopper configurations use the 128-byte-swizzled layout that `wgmma` reads
//! ([`crate::tiling::sw128_byte_offset`]).
//!
//! Four traits, one per kernel family: [`FwdTraits`] and [`BwdTraits`] (portable), and
//! [`FwdWgmmaTraits`] and [`BwdWgmmaTraits`] (Hopper). Each configuration sets a few constants
//! (head dim, tile rows, warps or warpgroups, stages, schedule) and derives everything else as
//! associated constants: rows per warp and per block, thread count, the shared-memory offset of
//! every tile and stage, and the dynamic shared memory in total. The registry and the host read
//! the same constants, so launch shapes cannot drift from the kernels. The `FwdHdim*`, `BwdHdim*`,
//! `FwdWgmmaHdim*` and `BwdWgmmaHdim*` types are the shipped configurations (the reasons for
//! each are on the type; `benches/NOTES.md` has the measurements), and [`SUPPORTED_HEAD_DIMS`]
//! lists their head dims. The unit tests check each configuration's divisibility assumptions, that
//! the portable ones fit an A100 block's 163 KiB of shared memory (the sm_80 PTX runs there) and
//! the Hopper ones the H100's 227 KiB, and that padded head dims fit [`padding_fits`].

use crate::tiling::launch_registers;

/// Rows of one `mma.m16n8k16` tile: a warp owns a multiple of these.
pub const WARP_ROWS: u32 = 16;
/// Most 16-row tiles one warp of the forward owns (sizes its register arrays).
pub const MAX_WARP_M_TILES: usize = 2;

/// Forward tile configuration.
pub trait FwdTraits {
    const HEAD_DIM: u32;
    /// Key/value rows per shared-memory tile.
    const BLOCK_N: u32;
    const WARPS: u32;
    /// Keep each warp's Q fragments in registers for the whole block (saves one ldmatrix per
    /// mma k-step) or reload them from shared memory every K tile (saves D/4 registers).
    const Q_IN_REGISTERS: bool;
    /// 16-row mma tiles per warp. Two let every K and V fragment read from shared memory feed
    /// two mmas, halving shared-memory traffic per FLOP at the cost of registers.
    const M_TILES: u32;

    /// Query rows per warp and per thread block.
    const WARP_M: u32 = Self::M_TILES * WARP_ROWS;
    const BLOCK_M: u32 = Self::WARPS * Self::WARP_M;
    const THREADS: u32 = Self::WARPS * 32;
    const CHUNKS_PER_ROW: u32 = Self::HEAD_DIM / 8;
    const Q_TILE_BYTES: u32 = Self::BLOCK_M * Self::HEAD_DIM * 2;
    const KV_TILE_BYTES: u32 = Self::BLOCK_N * Self::HEAD_DIM * 2;
    /// Shared-memory buffers for K and V: 3 keeps two tiles in flight while one is used (2 or 3).
    const STAGES: u32 = 3;
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
    /// Warps that share the same 16 keys, each accumulating its own slice of dK and dV's
    /// columns (head_dim / D_SPLIT). Large head dims need it: 16 keys × 256 columns of dK and dV
    /// are 256 registers a thread. The warps of a group recompute the same Sᵀ and dPᵀ.
    const D_SPLIT: u32 = 1;

    /// Key rows per thread block: each group of D_SPLIT warps owns 16 keys.
    const BLOCK_N: u32 = Self::WARPS / Self::D_SPLIT * WARP_ROWS;
    const THREADS: u32 = Self::WARPS * 32;
    const CHUNKS_PER_ROW: u32 = Self::HEAD_DIM / 8;
    const KV_TILE_BYTES: u32 = Self::BLOCK_N * Self::HEAD_DIM * 2;
    const Q_TILE_BYTES: u32 = Self::BLOCK_M * Self::HEAD_DIM * 2;
    const K_OFFSET: u32 = 0;
    const V_OFFSET: u32 = Self::KV_TILE_BYTES;
    /// dSᵀ (BLOCK_N × BLOCK_M, 16-bit) goes through shared memory once per iteration so that
    /// dQ = dS·K can be split across warps by query rows.
    const DS_OFFSET: u32 = 2 * Self::KV_TILE_BYTES;
    const DS_TILE_BYTES: u32 = Self::BLOCK_N * Self::BLOCK_M * 2;
    /// Q, dO, LSE and D of the query tile are double-buffered: the next tile streams in while
    /// this one is used. One stage holds Q, dO (16-bit tiles), LSE and D (f32 per query).
    const STAGE_OFFSET: u32 = Self::DS_OFFSET + Self::DS_TILE_BYTES;
    const STAGE_BYTES: u32 = 2 * Self::Q_TILE_BYTES + 2 * Self::BLOCK_M * 4;
    const Q_IN_STAGE: u32 = 0;
    const DO_IN_STAGE: u32 = Self::Q_TILE_BYTES;
    const LSE_IN_STAGE: u32 = 2 * Self::Q_TILE_BYTES;
    const D_IN_STAGE: u32 = Self::LSE_IN_STAGE + Self::BLOCK_M * 4;
    const SMEM_BYTES: u32 = Self::STAGE_OFFSET + 2 * Self::STAGE_BYTES;
}

/// A tensor head dim `data` padded to the GEMMs' `head_dim`: the padding stays inside the last
/// 64-column panel and is whole 16-byte chunks (the Hopper kernels assert this at compile time).
pub const fn padding_fits(data: u32, head_dim: u32) -> bool {
    data <= head_dim && data + 64 > head_dim && data % 8 == 0
}

/// Hopper forward (sm_90a, `wgmma`) tile configuration. Each warpgroup (4 warps) owns 64 query
/// rows: one `wgmma` computes its 64 × BLOCK_N scores straight from the Q and K tiles in shared
/// memory, a second adds P·V with P from registers. Tiles use the 128-byte-swizzled layout
/// (`tiling::sw128_byte_offset`), so head_dim is a multiple of 64.
pub trait FwdWgmmaTraits {
    /// The GEMMs' head dim: whole 64-column panels.
    const HEAD_DIM: u32;
    /// The tensors' head dim, at most `HEAD_DIM`: the columns past it are zeros in shared memory
    /// and are never written out (head_dim 96 runs the head_dim 128 configuration).
    const DATA_HEAD_DIM: u32 = Self::HEAD_DIM;
    /// Bytes per element of Q, K and V: 2 (bf16, f16), or 1 for the FP8 forward (e4m3).
    const ELEMENT_BYTES: u32 = 2;
    const DATA_CHUNKS: u32 = Self::DATA_HEAD_DIM * Self::ELEMENT_BYTES / 16;
    /// Keys per K/V tile: the N of the score GEMM (64 or 128).
    const BLOCK_N: u32;
    const WARPGROUPS: u32;
    /// K/V shared-memory buffers (2 or 3).
    const STAGES: u32 = 2;
    /// Overlap each tile's softmax with the previous tile's P·V GEMM (needs 3 stages, or 2 with
    /// a producer).
    const PIPELINED: bool = false;
    /// Warp-specialized: one more warpgroup, the producer, issues every load while the
    /// `WARPGROUPS` consumers compute; stages are handed over through mbarriers, not block
    /// barriers (`flash_fwd_wgmma_ws`).
    const PRODUCER: bool = false;
    /// With a producer: the two consumers take turns issuing their GEMMs (named barriers), so
    /// that one's softmax runs while the other's GEMMs hold the tensor cores.
    const PINGPONG: bool = false;
    /// With a producer: its registers per thread after `setmaxnreg` (its unrolled tile loads need
    /// more than 24 at head_dim 192/256), and the consumers' share of the rest of the SM's 64 K.
    const PRODUCER_REGISTERS: u32 = 24;
    /// Of every four 8-key score tiles, how many take their exponentials on the FMA pipe
    /// (`modifiers::exp2_poly`) rather than the MUFU, on tiles without masked scores; 0: none.
    const POLY_EXP_TILES: u32 = 0;
    /// The rest of the block's launch registers (`tiling::launch_registers`), shared by the
    /// consumers.
    const CONSUMER_REGISTERS: u32 =
        ((1 + Self::WARPGROUPS) * launch_registers(Self::THREADS) - Self::PRODUCER_REGISTERS) / Self::WARPGROUPS / 8
            * 8;
    /// With a producer, 16-bit inputs, dense calls without a mask: one block per SM loops over
    /// the query tiles (`tiling::persistent_tile`), so that the next tile's Q, K and V land under
    /// this tile's last GEMMs and epilogue instead of after a new block's start. The `_seq` and
    /// `_mods` twins of such a kernel are not persistent.
    const PERSISTENT: bool = false;
    /// Stage a persistent kernel's O in Q even where its own tile would fit (v30e's candidate).
    const O_IN_Q: bool = false;
    /// A persistent kernel's O gets its own staging tile where it fits beside Q and the stages,
    /// so that Q is free for the next tile once its last score GEMM completed; otherwise O is
    /// staged in the Q tile and Q is free after the epilogue.
    const O_OWN_STAGE: bool = Self::PERSISTENT
        && !Self::O_IN_Q
        && Self::ELEMENT_BYTES == 2
        && Self::V_OFFSET + Self::STAGES * Self::KV_TILE_BYTES + Self::Q_TILE_BYTES + Self::MBARRIER_BYTES + 1024
            <= 227 * 1024;

    /// Query rows: 64 per computing warpgroup.
    const BLOCK_M: u32 = 64 * Self::WARPGROUPS;
    const THREADS: u32 = 128 * (Self::WARPGROUPS + Self::PRODUCER as u32);
    const CHUNKS_PER_ROW: u32 = Self::HEAD_DIM * Self::ELEMENT_BYTES / 16;
    /// 128-byte panels of a Q or K row (64 columns of 16-bit elements, 128 of e4m3).
    const PANELS: u32 = Self::CHUNKS_PER_ROW / 8;
    const Q_TILE_BYTES: u32 = Self::BLOCK_M * Self::HEAD_DIM * Self::ELEMENT_BYTES;
    const KV_TILE_BYTES: u32 = Self::BLOCK_N * Self::HEAD_DIM * Self::ELEMENT_BYTES;
    /// The bf16 output staged for the epilogue's 16-byte stores: in the Q tile (its own rows) for
    /// 16-bit inputs; with e4m3 inputs the Q tile is half as large, so O goes where the K and V
    /// stages were, once both consumers are past their last GEMM (`flash_fwd_wgmma_ws`).
    /// With `O_OWN_STAGE`, in its own tile after the V stages.
    const O_STAGE_OFFSET: u32 = if Self::ELEMENT_BYTES == 1 {
        Self::K_OFFSET
    } else if Self::O_OWN_STAGE {
        Self::V_OFFSET + Self::STAGES * Self::KV_TILE_BYTES
    } else {
        Self::Q_OFFSET
    };
    const Q_OFFSET: u32 = 0;
    const K_OFFSET: u32 = Self::Q_TILE_BYTES;
    const V_OFFSET: u32 = Self::K_OFFSET + Self::STAGES * Self::KV_TILE_BYTES;
    /// The producer's mbarriers (8 bytes each): Q full, then K full, V full, K empty and V empty
    /// for every stage; persistent kernels add Q empty, two "tile index published" barriers
    /// and the two 4-byte index slots they guard (32 bytes).
    const MBARRIER_OFFSET: u32 =
        Self::V_OFFSET + Self::STAGES * Self::KV_TILE_BYTES + if Self::O_OWN_STAGE { Self::Q_TILE_BYTES } else { 0 };
    const MBARRIER_BYTES: u32 =
        if Self::PRODUCER { 8 * (1 + 4 * Self::STAGES) + 32 * Self::PERSISTENT as u32 } else { 0 };
    /// The kernel rounds its shared-memory base up to 1024 bytes (the swizzle's period): the
    /// extra kilobyte pays for that.
    const SMEM_BYTES: u32 = Self::MBARRIER_OFFSET + Self::MBARRIER_BYTES + 1024;
}

/// A Hopper forward configuration: head_dim, warpgroups per block, keys per tile, K/V stages.
pub struct FwdWgmma<const D: u32, const WARPGROUPS: u32, const BLOCK_N: u32, const STAGES: u32>;
impl<const D: u32, const W: u32, const N: u32, const S: u32> FwdWgmmaTraits for FwdWgmma<D, W, N, S> {
    const HEAD_DIM: u32 = D;
    const BLOCK_N: u32 = N;
    const WARPGROUPS: u32 = W;
    const STAGES: u32 = S;
}

/// A software-pipelined Hopper forward configuration (three stages); `DATA`, when not 0, is a
/// smaller head dim of the tensors, padded to `D` in shared memory.
pub struct FwdWgmmaPipelined<const D: u32, const WARPGROUPS: u32, const BLOCK_N: u32, const DATA: u32 = 0>;
impl<const D: u32, const W: u32, const N: u32, const DATA: u32> FwdWgmmaTraits for FwdWgmmaPipelined<D, W, N, DATA> {
    const HEAD_DIM: u32 = D;
    const DATA_HEAD_DIM: u32 = if DATA == 0 { D } else { DATA };
    const BLOCK_N: u32 = N;
    const WARPGROUPS: u32 = W;
    const STAGES: u32 = 3;
    const PIPELINED: bool = true;
}

/// The Hopper configurations without a producer (benches/NOTES.md, v8–v11, lists the variants
/// measured). head_dim 64 (the default): one warpgroup and 64-key tiles, so four blocks share an
/// SM and one block's softmax overlaps another's GEMMs; head_dim 128: two warpgroups on 128-key
/// tiles, software pipelined (each tile's softmax runs under the previous tile's P·V), the
/// default until the warp-specialized kernel (v21), now opt-in for A/B.
pub type FwdWgmmaHdim64 = FwdWgmma<64, 1, 64, 2>;
pub type FwdWgmmaHdim128 = FwdWgmmaPipelined<128, 2, 128>;
/// head_dim 192 and 256: two warpgroups on 64-key tiles, unpipelined; three stages fit at 192
/// (193 KiB), two at 256 (193 KiB). The default at 192, and at 256 for the score modifiers
/// (the warp-specialized head_dim 256 kernel, pipelined with 128 output registers beside the
/// scores, serves the rest since v22).
pub type FwdWgmmaHdim192 = FwdWgmma<192, 2, 64, 3>;
pub type FwdWgmmaHdim256 = FwdWgmma<256, 2, 64, 2>;
/// head_dim 96 runs the head_dim 128 kernels with the last 32 columns zero in shared memory: a
/// quarter of the GEMM work is padding, but the `wgmma` rate more than pays for it (the
/// 128-byte swizzle wants whole 64-column panels). Opt-in since v21, as at 128.
pub type FwdWgmmaHdim96 = FwdWgmmaPipelined<128, 2, 128, 96>;
/// The warp-specialized Hopper forward: a producer warpgroup loads Q, K and V (`cp.async`
/// tracked by mbarriers) while `WARPGROUPS` consumers run the pipelined loop, each at its own
/// pace; `STAGES` K and `STAGES` V buffers, released separately (K after S = Q·Kᵀ, V after P·V).
pub struct FwdWgmmaWs<
    const D: u32,
    const WARPGROUPS: u32,
    const BLOCK_N: u32,
    const STAGES: u32,
    const DATA: u32 = 0,
    const PINGPONG: bool = false,
    const PERSISTENT: bool = false,
    const PRODUCER_REGS: u32 = 0,
    const O_IN_Q: bool = false,
>;
impl<
    const D: u32,
    const W: u32,
    const N: u32,
    const S: u32,
    const DATA: u32,
    const PP: bool,
    const PE: bool,
    const PR: u32,
    const OQ: bool,
> FwdWgmmaTraits for FwdWgmmaWs<D, W, N, S, DATA, PP, PE, PR, OQ>
{
    const PINGPONG: bool = PP;
    const PERSISTENT: bool = PE;
    const O_IN_Q: bool = OQ;
    // `PRODUCER_REGS` 0: 24, or 40 past head_dim 128 (the producer's wider rows).
    const PRODUCER_REGISTERS: u32 = if PR != 0 {
        PR
    } else if D > 128 {
        40
    } else {
        24
    };
    const HEAD_DIM: u32 = D;
    const DATA_HEAD_DIM: u32 = if DATA == 0 { D } else { DATA };
    const BLOCK_N: u32 = N;
    const WARPGROUPS: u32 = W;
    const STAGES: u32 = S;
    const PIPELINED: bool = true;
    const PRODUCER: bool = true;
}
/// head_dim 128 warp-specialized: two consumers on 128-key tiles, two stages each of K and V
/// (160 KiB).
pub type FwdWgmmaWsHdim128 = FwdWgmmaWs<128, 2, 128, 2>;
/// The same with the consumers' GEMMs in ping-pong order (v22, measured against it).
pub type FwdWgmmaWsPingpongHdim128 = FwdWgmmaWs<128, 2, 128, 2, 0, true>;
/// v30 candidate: the head_dim 128 warp-specialized forward, persistent (O in its own staging
/// tile, 193 KiB).
pub type FwdWgmmaWsPersistentHdim128 = FwdWgmmaWs<128, 2, 128, 2, 0, false, true>;
/// v30d candidate: the same with a 40-register producer (its tile walk spills 64 bytes at 24,
/// inside the K/V issue loop) and 232-register consumers.
pub type FwdWgmmaWsPersistentP40Hdim128 = FwdWgmmaWs<128, 2, 128, 2, 0, false, true, 40>;
/// v30e candidate: that one with O staged in Q (160 KiB, as the default; Q free after the
/// epilogue): v30d's one-tile-a-block launch ran 5% below the default at 16k.
pub type FwdWgmmaWsPersistentP40OqHdim128 = FwdWgmmaWs<128, 2, 128, 2, 0, false, true, 40, true>;
/// v30 candidate: the head_dim 256 one, persistent (O staged in Q: no room for its own tile).
pub type FwdWgmmaWsPersistentHdim256 = FwdWgmmaWs<256, 2, 64, 2, 0, false, true>;
/// head_dim 256 warp-specialized: 64-key tiles, two stages of K and V (193 KiB); the consumers
/// hold O (128 registers) beside one score tile and the previous P. (head_dim 192 the same way
/// spilled 240 bytes in the producer, whose 24-chunk rows take the general load path: not
/// shipped.)
pub type FwdWgmmaWsHdim256 = FwdWgmmaWs<256, 2, 64, 2>;
/// head_dim 64 warp-specialized, three consumers (192 query rows, 160 registers each), 64-key
/// tiles: an opt-in candidate against the one-warpgroup kernel (four blocks per SM). (128-key
/// tiles spilled 144 bytes at 160 registers.)
pub type FwdWgmmaWsHdim64N64 = FwdWgmmaWs<64, 3, 64, 2>;
/// v32 candidates (opt-in): head_dim 64 on two consumers (128 query rows, 240 registers) with
/// 128-key tiles and three stages (113 KiB), one tile a block or persistent (40-register producer,
/// O in its own tile: 129 KiB).
pub type FwdWgmmaWsHdim64W2 = FwdWgmmaWs<64, 2, 128, 3>;
pub type FwdWgmmaWsPersistentHdim64 = FwdWgmmaWs<64, 2, 128, 3, 0, false, true, 40>;
/// head_dim 96 on the warp-specialized head_dim 128 kernel, 32 columns zero-padded.
pub type FwdWgmmaWsHdim96 = FwdWgmmaWs<128, 2, 128, 2, 96>;

/// The FP8 (e4m3) forward: the warp-specialized kernel with 1-byte Q, K and a transposed V
/// (`ELEMENT_BYTES` 1), two consumers, bf16 O. Up to head_dim 128, 128-key tiles (a Vᵀ tile is
/// one 128-byte-swizzled panel); at 256, 64-key tiles (O's 128 registers leave no room for
/// 128-key scores), whose Vᵀ rows are 64 bytes, in the 64-byte swizzle. `N`, when not 0, sets
/// the keys per tile: 192 at head_dim 128 (three 64-key Vᵀ panels in the 64-byte swizzle).
pub struct FwdWgmmaWsFp8<
    const D: u32,
    const STAGES: u32,
    const PINGPONG: bool = false,
    const POLY: u32 = 0,
    const N: u32 = 0,
>;
impl<const D: u32, const S: u32, const PP: bool, const POLY: u32, const N: u32> FwdWgmmaTraits
    for FwdWgmmaWsFp8<D, S, PP, POLY, N>
{
    const PINGPONG: bool = PP;
    const POLY_EXP_TILES: u32 = POLY;
    const HEAD_DIM: u32 = D;
    const ELEMENT_BYTES: u32 = 1;
    const PRODUCER_REGISTERS: u32 = if D > 128 { 40 } else { 24 };
    const BLOCK_N: u32 = if N != 0 {
        N
    } else if D > 128 {
        64
    } else {
        128
    };
    const WARPGROUPS: u32 = 2;
    const STAGES: u32 = S;
    const PIPELINED: bool = true;
    const PRODUCER: bool = true;
}
/// head_dim 128 FP8: three stages of K and Vᵀ (16 KiB each; 113 KiB in all).
pub type FwdWgmmaWsFp8Hdim128 = FwdWgmmaWsFp8<128, 3>;
/// Candidates (v25, opt-in): the consumers in ping-pong order, and four stages.
pub type FwdWgmmaWsFp8PingpongHdim128 = FwdWgmmaWsFp8<128, 3, true>;
pub type FwdWgmmaWsFp8Stages4Hdim128 = FwdWgmmaWsFp8<128, 4>;
/// Candidate (v33, opt-in): 192-key tiles (FlashAttention-3 uses 224 at head_dim 128): half as many
/// tiles' fixed costs (GEMM issue, waits, row reductions, barriers) per score. Three stages of 24
/// KiB K and Vᵀ tiles (161 KiB); scores 96, P 24 and O 64 registers a thread.
pub type FwdWgmmaWsFp8N192Hdim128 = FwdWgmmaWsFp8<128, 3, false, 0, 192>;
/// Candidates (v26, opt-in): a quarter or half of the exponentials on the FMA pipe.
pub type FwdWgmmaWsFp8Poly1Hdim128 = FwdWgmmaWsFp8<128, 3, false, 1>;
pub type FwdWgmmaWsFp8Poly2Hdim128 = FwdWgmmaWsFp8<128, 3, false, 2>;
/// head_dim 256 FP8: 64-key tiles, three stages of K and Vᵀ (16 KiB each; 129 KiB in all). (With
/// 128-key tiles it spilled 216 bytes: O's 128 registers beside 128-key scores and P.)
pub type FwdWgmmaWsFp8Hdim256 = FwdWgmmaWsFp8<256, 3>;
/// Candidates (v31, opt-in): head_dim 256 FP8 with the consumers in ping-pong order, and with four
/// stages (161 KiB).
pub type FwdWgmmaWsFp8PingpongHdim256 = FwdWgmmaWsFp8<256, 3, true>;
pub type FwdWgmmaWsFp8Stages4Hdim256 = FwdWgmmaWsFp8<256, 4>;
/// v31b candidate (opt-in): both, ping-pong on four stages.
pub type FwdWgmmaWsFp8PingpongStages4Hdim256 = FwdWgmmaWsFp8<256, 4, true>;

/// The unpipelined head_dim 128 forward, kept for comparison (`bench --kernel NAME`).
pub type FwdWgmmaHdim128Sync = FwdWgmma<128, 2, 128, 2>;

/// Hopper backward (sm_90a, `wgmma`) tile configuration: two warpgroups of 64 keys each, 64
/// queries per iteration (one 128-byte panel of dSᵀ). Every GEMM reads its shared-memory
/// operands in the 128-byte-swizzled layout; head_dim is 64 or 128.
pub trait BwdWgmmaTraits {
    /// The GEMMs' head dim; `DATA_HEAD_DIM` the tensors' (see [`FwdWgmmaTraits::DATA_HEAD_DIM`]).
    const HEAD_DIM: u32;
    const DATA_HEAD_DIM: u32 = Self::HEAD_DIM;
    const DATA_CHUNKS: u32 = Self::DATA_HEAD_DIM / 8;
    const WARPGROUPS: u32 = 2;
    const BLOCK_M: u32 = 64;
    const BLOCK_N: u32 = 64 * Self::WARPGROUPS;
    /// A producer warpgroup (warpgroup 0) that issues every load, tracked by mbarriers, while
    /// the `WARPGROUPS` consumers compute ([`BwdWgmmaWs`]).
    const PRODUCER: bool = false;
    const THREADS: u32 = 128 * (Self::WARPGROUPS + Self::PRODUCER as u32);
    /// Query-tile stages (Q, dO, LSE, D) in the ring.
    const STAGES: u32 = 2;
    const CHUNKS_PER_ROW: u32 = Self::HEAD_DIM / 8;
    const KV_TILE_BYTES: u32 = Self::BLOCK_N * Self::HEAD_DIM * 2;
    const Q_TILE_BYTES: u32 = Self::BLOCK_M * Self::HEAD_DIM * 2;
    const K_OFFSET: u32 = 0;
    const V_OFFSET: u32 = Self::KV_TILE_BYTES;
    const DS_OFFSET: u32 = 2 * Self::KV_TILE_BYTES;
    const DS_TILE_BYTES: u32 = Self::BLOCK_N * Self::BLOCK_M * 2;
    /// dSᵀ tiles, taken in turn by the query tiles (two only in a measurement candidate).
    const DS_BUFFERS: u32 = 1;
    const STAGE_OFFSET: u32 = Self::DS_OFFSET + Self::DS_BUFFERS * Self::DS_TILE_BYTES;
    /// Q, dO (16-bit tiles) and LSE, D (f32 per query), padded to keep the next stage's tiles
    /// on 1024-byte boundaries.
    const STAGE_BYTES: u32 = 2 * Self::Q_TILE_BYTES + 1024;
    const Q_IN_STAGE: u32 = 0;
    const DO_IN_STAGE: u32 = Self::Q_TILE_BYTES;
    const LSE_IN_STAGE: u32 = 2 * Self::Q_TILE_BYTES;
    const D_IN_STAGE: u32 = Self::LSE_IN_STAGE + Self::BLOCK_M * 4;
    /// The tile's dQ in f32, row-major, each row padded by 32 bytes: a warp's accumulator
    /// stores then touch every bank once per half-warp, and each row stays one contiguous
    /// bulk reduction into the global accumulator.
    const DQ_OFFSET: u32 = Self::STAGE_OFFSET + Self::STAGES * Self::STAGE_BYTES;
    const DQ_ROW_BYTES: u32 = Self::HEAD_DIM * 4 + 32;
    /// With a producer: K/V's "full" mbarrier, then a "full" and an "empty" one per stage.
    const MBARRIER_OFFSET: u32 = Self::DQ_OFFSET + Self::BLOCK_M * Self::DQ_ROW_BYTES;
    const MBARRIER_BYTES: u32 = if Self::PRODUCER { 8 * (1 + 2 * Self::STAGES) } else { 0 };
    /// Plus 1024 for rounding the base up to the swizzle's period.
    const SMEM_BYTES: u32 = Self::MBARRIER_OFFSET + Self::MBARRIER_BYTES + 1024;
    /// Blocks per SM to budget registers for: two let one block's softmax and barriers
    /// overlap the other's GEMMs.
    const MIN_BLOCKS_PER_SM: u32 = 1;
    /// Overlap each elementwise step with the GEMM issued before it.
    const PIPELINED: bool = false;
    /// The column-split kernel with one stage: load the next query tile as soon as both
    /// warpgroups' dV and dK GEMMs are done with the stage (one more barrier a step), under the
    /// dQ GEMM, instead of after the dQ reductions.
    const EARLY_LOAD: bool = false;
    /// The 64-query pipelined kernel (two dSᵀ tiles): issue each tile's dQ GEMM at the top of
    /// the next step, ahead of its score GEMMs, and stage it under them, so that a step has one
    /// barrier instead of two; each warp reduces the dQ rows it staged itself.
    const DEFER_DQ: bool = false;
    /// With `DEFER_DQ`: issue dQ and Sᵀ, stage dQ, then issue dPᵀ, so that dQ's accumulators
    /// are never live beside both score arrays (32 registers fewer at the peak); otherwise both
    /// score GEMMs run under the staging.
    const STAGE_DQ_BEFORE_DP: bool = false;
    /// dQ reduced by each warp for the rows and columns it staged (16 × 64, one 256-byte bulk
    /// reduction a row from lanes 0–15) instead of one 512-byte reduction a row from the first
    /// 64 threads; implied by `DEFER_DQ`, which needs it.
    const WARP_REDUCTIONS: bool = Self::DEFER_DQ;
    /// The 128-query loop: leave dV's and dK's GEMMs in flight across the step's barrier and
    /// wait for them after issuing the dQ GEMM (v38 candidate).
    const LATE_OUTPUT_WAIT: bool = false;
}

/// A Hopper backward configuration: head_dim, warpgroups per block (64 keys each), blocks per
/// SM to budget registers for.
pub struct BwdWgmma<const D: u32, const WARPGROUPS: u32, const MIN_BLOCKS: u32>;
impl<const D: u32, const W: u32, const B: u32> BwdWgmmaTraits for BwdWgmma<D, W, B> {
    const HEAD_DIM: u32 = D;
    const WARPGROUPS: u32 = W;
    const MIN_BLOCKS_PER_SM: u32 = B;
}
pub type BwdWgmmaHdim64 = BwdWgmmaWide<64>;
pub type BwdWgmmaHdim128 = BwdWgmmaPipelined<128>;
/// head_dim 96 on the head_dim 128 backward, padded as [`FwdWgmmaHdim96`].
pub type BwdWgmmaHdim96 = BwdWgmmaPipelined<128, 96>;
/// head_dim 32 on the head_dim 64 backward, padded likewise: half the GEMM work is padding, yet
/// it outruns the portable kernel (benches/NOTES.md, v14d). The forward stays portable: the
/// head_dim 64 forward at half rate would be slower than it.
pub type BwdWgmmaHdim32 = BwdWgmmaWide<64, 32>;
/// Kept for comparison (`bench --kernel NAME`): the 64-query pipelined head_dim 64 backward and
/// the unpipelined head_dim 128 one.
pub type BwdWgmmaHdim64Narrow = BwdWgmmaPipelined<64>;
pub type BwdWgmmaHdim128Sync = BwdWgmma<128, 2, 1>;

/// head_dim 256 on `wgmma` (`backward_wgmma::flash_bwd_wgmma_split`): both warpgroups on the
/// same 64 keys, dK, dV and dQ split by columns (128 each), one Q/dO stage (204 KiB), loaded
/// early (v28b: +2–11% over loading after the dQ reductions).
pub type BwdWgmmaHdim256 = BwdWgmmaSplit<256, 1, true>;
/// head_dim 192 on the same kernel (v28): the warpgroups compute overlapping 128-column halves
/// (0..128 and 64..192) and keep 96 columns each; two Q/dO stages fit (205 KiB), so the next
/// query tile loads during the step.
pub type BwdWgmmaHdim192 = BwdWgmmaSplit<192, 2>;
/// Kept for comparison (`bench --kernel NAME`): head_dim 192 with one stage, as head_dim 256.
pub type BwdWgmmaHdim192OneStage = BwdWgmmaSplit<192, 1>;
/// Kept for comparison (opt-in): head_dim 256 loading the next tile after the dQ reductions (v20).
pub type BwdWgmmaLateHdim256 = BwdWgmmaSplit<256, 1, false>;

/// The column-split Hopper backward: 64 keys and 64 queries a step, two warpgroups, `STAGES`
/// query-tile stages (the dQ staging rows follow them); `EARLY` as [`BwdWgmmaTraits::EARLY_LOAD`].
pub struct BwdWgmmaSplit<const D: u32, const STAGES: u32 = 1, const EARLY: bool = false>;
impl<const D: u32, const S: u32, const E: bool> BwdWgmmaTraits for BwdWgmmaSplit<D, S, E> {
    const HEAD_DIM: u32 = D;
    const BLOCK_N: u32 = 64;
    const STAGES: u32 = S;
    const EARLY_LOAD: bool = E;
}

/// The software-pipelined Hopper backward (two warpgroups); `DATA` as for
/// [`FwdWgmmaPipelined`].
pub struct BwdWgmmaPipelined<const D: u32, const DATA: u32 = 0>;
impl<const D: u32, const DATA: u32> BwdWgmmaTraits for BwdWgmmaPipelined<D, DATA> {
    const HEAD_DIM: u32 = D;
    const DATA_HEAD_DIM: u32 = if DATA == 0 { D } else { DATA };
    const PIPELINED: bool = true;
}

/// The software-pipelined backward with the dQ GEMM deferred to the next step
/// ([`BwdWgmmaTraits::DEFER_DQ`]; two dSᵀ tiles, +16 KiB at head_dim 128).
pub struct BwdWgmmaDeferred<const D: u32, const DATA: u32 = 0, const BEFORE_DP: bool = false>;
impl<const D: u32, const DATA: u32, const B: bool> BwdWgmmaTraits for BwdWgmmaDeferred<D, DATA, B> {
    const HEAD_DIM: u32 = D;
    const DATA_HEAD_DIM: u32 = if DATA == 0 { D } else { DATA };
    const PIPELINED: bool = true;
    const DS_BUFFERS: u32 = 2;
    const DEFER_DQ: bool = true;
    const STAGE_DQ_BEFORE_DP: bool = B;
}
/// v29 measurement candidates (opt-in; 0.92–0.96 × the default, benches/NOTES.md): head_dim 128
/// with the deferred dQ GEMM, staged under both score GEMMs or before dPᵀ is issued.
pub type BwdWgmmaDeferredHdim128 = BwdWgmmaDeferred<128>;
pub type BwdWgmmaDeferredBeforeDpHdim128 = BwdWgmmaDeferred<128, 0, true>;
/// v29b (opt-in): the default head_dim 128 schedule with v29's per-warp dQ reductions only.
pub struct BwdWgmmaWarpReductions;
impl BwdWgmmaTraits for BwdWgmmaWarpReductions {
    const HEAD_DIM: u32 = 128;
    const PIPELINED: bool = true;
    const WARP_REDUCTIONS: bool = true;
}

/// 128 queries per step (head_dim 64): twice the work per barrier and per staged tile, N = 128
/// score GEMMs; dQ is split over the warpgroups by rows.
pub struct BwdWgmmaWide<const D: u32, const DATA: u32 = 0>;
impl<const D: u32, const DATA: u32> BwdWgmmaTraits for BwdWgmmaWide<D, DATA> {
    const HEAD_DIM: u32 = D;
    const DATA_HEAD_DIM: u32 = if DATA == 0 { D } else { DATA };
    const BLOCK_M: u32 = 128;
}

/// v38 candidates (opt-in): the 128-query loop with Sᵀ and dPᵀ issued back to back and Pᵀ's
/// exponentials under dPᵀ (`PIPELINED`); `LATE` as [`BwdWgmmaTraits::LATE_OUTPUT_WAIT`].
pub struct BwdWgmmaWidePipelined<const D: u32, const LATE: bool = false>;
impl<const D: u32, const LATE: bool> BwdWgmmaTraits for BwdWgmmaWidePipelined<D, LATE> {
    const HEAD_DIM: u32 = D;
    const BLOCK_M: u32 = 128;
    const PIPELINED: bool = true;
    const LATE_OUTPUT_WAIT: bool = LATE;
}

/// The warp-specialized Hopper backward: configuration `B`'s loop in two consumer warpgroups
/// (240 registers each after `setmaxnreg`) fed by a producer warpgroup (24), which loads K and V
/// once and every query tile's Q, dO, LSE and D into a ring of `STAGES` stages, each tracked by
/// a "full" and an "empty" mbarrier; the consumers meet at named barriers, never the producer.
pub struct BwdWgmmaWs<B, const STAGES: u32, const DS_BUFFERS: u32 = 1>(core::marker::PhantomData<B>);
impl<B: BwdWgmmaTraits, const S: u32, const DS: u32> BwdWgmmaTraits for BwdWgmmaWs<B, S, DS> {
    const DS_BUFFERS: u32 = DS;
    const HEAD_DIM: u32 = B::HEAD_DIM;
    const DATA_HEAD_DIM: u32 = B::DATA_HEAD_DIM;
    const BLOCK_M: u32 = B::BLOCK_M;
    const PIPELINED: bool = B::PIPELINED;
    const DEFER_DQ: bool = B::DEFER_DQ;
    const STAGE_DQ_BEFORE_DP: bool = B::STAGE_DQ_BEFORE_DP;
    const WARP_REDUCTIONS: bool = B::WARP_REDUCTIONS;
    const LATE_OUTPUT_WAIT: bool = B::LATE_OUTPUT_WAIT;
    const PRODUCER: bool = true;
    const STAGES: u32 = S;
}
/// v27: the head_dim 64 and 128 backward, warp-specialized, two stages (166 and 180 KiB; three
/// stages measured the same, v27).
pub type BwdWgmmaWsHdim64 = BwdWgmmaWs<BwdWgmmaHdim64, 2>;
pub type BwdWgmmaWsHdim128 = BwdWgmmaWs<BwdWgmmaHdim128, 2>;
/// head_dim 96 and 32 on them, padded as [`BwdWgmmaHdim96`] and [`BwdWgmmaHdim32`]. The dense
/// default at 32, 64 and 96 (v27, v27c); 128 stays opt-in (±1%).
pub type BwdWgmmaWsHdim96 = BwdWgmmaWs<BwdWgmmaHdim96, 2>;
pub type BwdWgmmaWsHdim32 = BwdWgmmaWs<BwdWgmmaHdim32, 2>;
/// Measurement candidates (v27d, opt-in): v27's kernels with a second dSᵀ tile and nothing else
/// changed, to isolate one of v27b's three changes (+32 / +16 KiB of shared memory).
pub type BwdWgmmaWsDs2Hdim64 = BwdWgmmaWs<BwdWgmmaHdim64, 2, 2>;
pub type BwdWgmmaWsDs2Hdim128 = BwdWgmmaWs<BwdWgmmaHdim128, 2, 2>;
/// v38 candidates: the head_dim 64 default with the pipelined score GEMMs, and with the late
/// output wait besides.
pub type BwdWgmmaWsPipelinedHdim64 = BwdWgmmaWs<BwdWgmmaWidePipelined<64>, 2>;
pub type BwdWgmmaWsPipelinedLateHdim64 = BwdWgmmaWs<BwdWgmmaWidePipelined<64, true>, 2>;

pub struct FwdHdim32;
impl FwdTraits for FwdHdim32 {
    const HEAD_DIM: u32 = 32;
    const BLOCK_N: u32 = 64;
    const WARPS: u32 = 4;
    const Q_IN_REGISTERS: bool = true;
    const M_TILES: u32 = 2;
}

pub struct FwdHdim96;
impl FwdTraits for FwdHdim96 {
    const HEAD_DIM: u32 = 96;
    const BLOCK_N: u32 = 64;
    const WARPS: u32 = 4;
    const Q_IN_REGISTERS: bool = false;
    const M_TILES: u32 = 2;
}

pub struct FwdHdim192;
impl FwdTraits for FwdHdim192 {
    const HEAD_DIM: u32 = 192;
    const BLOCK_N: u32 = 64;
    const WARPS: u32 = 8;
    const Q_IN_REGISTERS: bool = false;
    const M_TILES: u32 = 1;
    // Three stages would take 192 KiB, more than an A100 block may have.
    const STAGES: u32 = 2;
}

pub struct FwdHdim256;
impl FwdTraits for FwdHdim256 {
    const HEAD_DIM: u32 = 256;
    const BLOCK_N: u32 = 32;
    const WARPS: u32 = 8;
    const Q_IN_REGISTERS: bool = false;
    const M_TILES: u32 = 1;
}

pub struct FwdHdim64;
impl FwdTraits for FwdHdim64 {
    const HEAD_DIM: u32 = 64;
    const BLOCK_N: u32 = 64;
    const WARPS: u32 = 4;
    const Q_IN_REGISTERS: bool = true;
    const M_TILES: u32 = 2;
}

pub struct FwdHdim128;
impl FwdTraits for FwdHdim128 {
    const HEAD_DIM: u32 = 128;
    const BLOCK_N: u32 = 32;
    const WARPS: u32 = 4;
    const Q_IN_REGISTERS: bool = false;
    const M_TILES: u32 = 2;
}

pub struct BwdHdim32;
impl BwdTraits for BwdHdim32 {
    const HEAD_DIM: u32 = 32;
    const BLOCK_M: u32 = 64;
    const WARPS: u32 = 8;
    const DQ_COLS: u32 = 32;
}

pub struct BwdHdim96;
impl BwdTraits for BwdHdim96 {
    const HEAD_DIM: u32 = 96;
    const BLOCK_M: u32 = 64;
    const WARPS: u32 = 8;
    const DQ_COLS: u32 = 32;
}

pub struct BwdHdim192;
impl BwdTraits for BwdHdim192 {
    const HEAD_DIM: u32 = 192;
    const BLOCK_M: u32 = 32;
    const WARPS: u32 = 8;
    const DQ_COLS: u32 = 64;
    const D_SPLIT: u32 = 2;
}

pub struct BwdHdim256;
impl BwdTraits for BwdHdim256 {
    const HEAD_DIM: u32 = 256;
    const BLOCK_M: u32 = 32;
    const WARPS: u32 = 8;
    const DQ_COLS: u32 = 32;
    const D_SPLIT: u32 = 2;
}

pub struct BwdHdim64;
impl BwdTraits for BwdHdim64 {
    const HEAD_DIM: u32 = 64;
    const BLOCK_M: u32 = 64;
    const WARPS: u32 = 8;
    const DQ_COLS: u32 = 32;
}

pub struct BwdHdim128;
impl BwdTraits for BwdHdim128 {
    const HEAD_DIM: u32 = 128;
    const BLOCK_M: u32 = 32;
    const WARPS: u32 = 8;
    const DQ_COLS: u32 = 32;
}

/// The element-wise helper kernels (backward preprocess, dQ conversion): one warp per row.
pub const ROW_KERNEL_WARPS: u32 = 4;
pub const ROW_KERNEL_THREADS: u32 = ROW_KERNEL_WARPS * 32;

/// Head dims with a shipped configuration.
pub const SUPPORTED_HEAD_DIMS: [u32; 6] = [32, 64, 96, 128, 192, 256];

#[cfg(test)]
mod tests {
    use super::*;

    fn check_fwd<T: FwdTraits>() {
        assert_eq!(T::HEAD_DIM % 16, 0);
        assert_eq!(T::BLOCK_N % 16, 0);
        // cp.async tile loads: every thread moves whole 16-byte chunks, an equal number each.
        assert_eq!((T::BLOCK_M * T::CHUNKS_PER_ROW) % T::THREADS, 0);
        assert_eq!((T::BLOCK_N * T::CHUNKS_PER_ROW) % T::THREADS, 0);
        // The sm_80 PTX must also fit an A100 block (163 KiB); the H100 allows 227 KiB.
        assert!(T::SMEM_BYTES <= 163 * 1024, "{} bytes", T::SMEM_BYTES);
        assert!(T::M_TILES as usize <= MAX_WARP_M_TILES);
        assert!(T::STAGES == 2 || T::STAGES == 3);
    }

    fn check_bwd<T: BwdTraits>() {
        assert_eq!(T::HEAD_DIM % T::DQ_COLS, 0);
        assert_eq!(T::WARPS % T::D_SPLIT, 0);
        assert_eq!((T::HEAD_DIM / T::D_SPLIT) % 16, 0, "each warp's dK, dV slice is whole 16-column tiles");
        assert_eq!(T::DQ_COLS % 16, 0);
        assert_eq!(T::BLOCK_M % 16, 0);
        assert_eq!((T::BLOCK_M * T::CHUNKS_PER_ROW) % T::THREADS, 0);
        assert_eq!((T::BLOCK_N * T::CHUNKS_PER_ROW) % T::THREADS, 0);
        assert!(T::BLOCK_M <= T::THREADS, "one thread stages each query's LSE and D");
        assert_eq!(T::STAGE_BYTES % 16, 0, "stages keep 16-byte alignment");
        assert!(T::SMEM_BYTES <= 163 * 1024, "{} bytes", T::SMEM_BYTES);
    }

    fn check_fwd_wgmma<T: FwdWgmmaTraits>() {
        // Whole 128-byte panels, and the GEMM shapes `scripts/gen_wgmma.py` generates.
        assert!([64, 128, 192, 256].contains(&T::HEAD_DIM));
        assert!(T::BLOCK_N == 64 || T::BLOCK_N == 128 || T::BLOCK_N == 192 && T::ELEMENT_BYTES == 1);
        assert!(T::HEAD_DIM <= 128 || (T::BLOCK_N == 64 && (!T::PIPELINED || T::PRODUCER)) || T::ELEMENT_BYTES == 1);
        // Padding stays within the last panel, in whole chunks.
        assert!(padding_fits(T::DATA_HEAD_DIM, T::HEAD_DIM));
        assert!(T::STAGES == 2 || T::STAGES == 3 || T::STAGES == 4 && T::PRODUCER);
        assert!(T::POLY_EXP_TILES <= 4);
        assert!(!T::PIPELINED || T::STAGES == 3 || T::PRODUCER);
        // The producer's loop is the pipelined one; its mbarriers are 8-byte aligned.
        assert!(!T::PRODUCER || T::PIPELINED && T::MBARRIER_OFFSET % 8 == 0);
        assert!(!T::PINGPONG || T::PRODUCER && T::WARPGROUPS == 2);
        // setmaxnreg takes multiples of 8 in 24..=256, and the split fits the SM.
        if T::PRODUCER {
            for n in [T::PRODUCER_REGISTERS, T::CONSUMER_REGISTERS] {
                assert!(n % 8 == 0 && (24..=256).contains(&n));
            }
            // The pool the consumers raise from is the block's launch registers (64 K over its
            // threads, in multiples of 8), not the SM's 64 K: (32, 240) hung (v30c).
            let launch = launch_registers(T::THREADS);
            assert!(T::PRODUCER_REGISTERS + T::WARPGROUPS * T::CONSUMER_REGISTERS <= (1 + T::WARPGROUPS) * launch);
        }
        // Every panel starts on a 1024-byte boundary of the aligned base (and so does every stage,
        // V's too: a 64-key FP8 Vᵀ tile's 64-byte swizzle needs its 512-byte period).
        assert_eq!(T::Q_TILE_BYTES % 1024, 0);
        assert_eq!(T::KV_TILE_BYTES % 1024, 0);
        // FP8: the bf16 O staged over the K and V stages fits them; 8-bit GEMMs on 128- or 192-key
        // tiles (64-key ones at head_dim 256).
        if T::ELEMENT_BYTES == 1 {
            assert!(T::BLOCK_M * T::HEAD_DIM * 2 <= 2 * T::STAGES * T::KV_TILE_BYTES);
            assert!(matches!((T::HEAD_DIM, T::BLOCK_N), (128, 128) | (128, 192) | (256, 64)) && T::PRODUCER);
        }
        // Persistent: 16-bit, with a producer; its own O tile 1024-aligned and clear of the
        // stages and the mbarriers.
        if T::PERSISTENT {
            assert!(T::PRODUCER && T::ELEMENT_BYTES == 2);
            if T::O_OWN_STAGE {
                assert_eq!(T::O_STAGE_OFFSET % 1024, 0);
                assert!(T::O_STAGE_OFFSET >= T::V_OFFSET + T::STAGES * T::KV_TILE_BYTES);
                assert!(T::O_STAGE_OFFSET + T::Q_TILE_BYTES <= T::MBARRIER_OFFSET);
            } else {
                assert_eq!(T::O_STAGE_OFFSET, T::Q_OFFSET);
            }
        }
        // Hopper's opt-in limit per block: 227 KiB.
        assert!(T::SMEM_BYTES <= 227 * 1024, "{} bytes", T::SMEM_BYTES);
    }

    fn check_bwd_wgmma<T: BwdWgmmaTraits>() {
        assert!(T::HEAD_DIM == 64 || T::HEAD_DIM == 128 || matches!(T::HEAD_DIM, 192 | 256) && T::BLOCK_N == 64);
        // dQ = dS·K is split by columns over the warpgroups: generated widths 32 and 64.
        assert!(
            (T::WARPGROUPS == 1 || T::WARPGROUPS == 2) && T::BLOCK_M == 64
                || T::BLOCK_M == 128 && T::WARPGROUPS == 2 && T::HEAD_DIM == 64
        );
        for offset in [T::V_OFFSET, T::DS_OFFSET, T::STAGE_OFFSET, T::STAGE_BYTES, T::DO_IN_STAGE] {
            assert_eq!(offset % 1024, 0);
        }
        assert!(2 * T::BLOCK_M * 4 <= 1024, "LSE and D fit the stage's padding");
        // Bulk reductions need 16-byte aligned rows; the padding keeps (8·row + column) mod 32
        // distinct over a half-warp's accumulator pairs.
        assert_eq!(T::DQ_OFFSET % 16, 0);
        assert_eq!(T::DQ_ROW_BYTES % 128, 32);
        assert!(T::SMEM_BYTES * T::MIN_BLOCKS_PER_SM <= 227 * 1024, "{} bytes", T::SMEM_BYTES);
        // Padding within the last panel, in whole chunks; the bulk reduction of a dQ row (the
        // data columns only) stays a multiple of 16 bytes.
        assert!(padding_fits(T::DATA_HEAD_DIM, T::HEAD_DIM));
        // The producer: two consumers (named barriers of 256 threads), 8-byte aligned mbarriers,
        // and the kernel's `setmaxnreg` split, 24 + 2 · 240, within the block's launch registers
        // (3 · 168 at 384 threads), the pool `setmaxnreg.inc` draws from.
        assert!((1..=3).contains(&T::STAGES));
        if T::PRODUCER {
            assert!(T::WARPGROUPS == 2 && T::THREADS == 384 && T::HEAD_DIM <= 128);
            assert_eq!(T::MBARRIER_OFFSET % 8, 0);
            assert!(24 + 2 * 240 <= 3 * launch_registers(T::THREADS));
        }
        // The deferred dQ GEMM: the 64-query pipelined loop, whose dQ is split by columns (each
        // warp reduces its own 16 rows × 64 columns), reading the previous tile's dSᵀ while the
        // next one is written.
        if T::DEFER_DQ {
            assert!(T::PIPELINED && T::BLOCK_M == 64 && T::BLOCK_N == 128 && T::HEAD_DIM == 128);
            assert_eq!(T::DS_BUFFERS, 2);
        }
        // Per-warp reductions: the column split of the 64-query kernels.
        assert!(!T::WARP_REDUCTIONS || T::BLOCK_M == 64 && T::WARPGROUPS == 2);
        // The late output wait: the 128-query loop's one dQ GEMM after its barrier.
        assert!(!T::LATE_OUTPUT_WAIT || T::BLOCK_M == 128 && !T::DEFER_DQ);
    }

    #[test]
    fn shipped_configurations_are_consistent() {
        check_bwd_wgmma::<BwdWgmmaWsHdim64>();
        check_bwd_wgmma::<BwdWgmmaWsHdim128>();
        check_bwd_wgmma::<BwdWgmmaWsHdim96>();
        check_bwd_wgmma::<BwdWgmmaWsHdim32>();
        check_bwd_wgmma::<BwdWgmmaWsDs2Hdim64>();
        check_bwd_wgmma::<BwdWgmmaWsDs2Hdim128>();
        check_bwd_wgmma::<BwdWgmmaWsPipelinedHdim64>();
        check_bwd_wgmma::<BwdWgmmaWsPipelinedLateHdim64>();
        check_bwd_wgmma::<BwdWgmmaHdim64>();
        check_bwd_wgmma::<BwdWgmmaHdim128>();
        check_bwd_wgmma::<BwdWgmma<64, 1, 2>>();
        check_bwd_wgmma::<BwdWgmmaPipelined<64>>();
        check_bwd_wgmma::<BwdWgmmaPipelined<128>>();
        check_bwd_wgmma::<BwdWgmmaWide<64>>();
        check_bwd_wgmma::<BwdWgmmaHdim96>();
        check_bwd_wgmma::<BwdWgmmaHdim32>();
        check_bwd_wgmma::<BwdWgmmaHdim256>();
        check_bwd_wgmma::<BwdWgmmaHdim192>();
        check_bwd_wgmma::<BwdWgmmaHdim192OneStage>();
        check_bwd_wgmma::<BwdWgmmaLateHdim256>();
        check_bwd_wgmma::<BwdWgmmaDeferredHdim128>();
        check_bwd_wgmma::<BwdWgmmaDeferredBeforeDpHdim128>();
        check_bwd_wgmma::<BwdWgmmaWarpReductions>();
        // The second dSᵀ tile fits beside the two stages (201 728 bytes without a producer).
        assert_eq!(BwdWgmmaDeferredHdim128::SMEM_BYTES, 201_728);
        // The split kernel hands Pᵀ (a 64 × 64 f32 tile: 32 floats a thread) through the dQ
        // staging rows.
        assert!(128 * 32 * 4 <= BwdWgmmaHdim256::BLOCK_M * BwdWgmmaHdim256::DQ_ROW_BYTES);
        assert!(128 * 32 * 4 <= BwdWgmmaHdim192::BLOCK_M * BwdWgmmaHdim192::DQ_ROW_BYTES);
        // head_dim 192's two stages fit where head_dim 256's second would not.
        assert_eq!(BwdWgmmaHdim192::SMEM_BYTES, 209_920);
        assert!(BwdWgmmaSplit::<256, 2>::SMEM_BYTES > 227 * 1024);
        check_fwd_wgmma::<FwdWgmmaHdim64>();
        check_fwd_wgmma::<FwdWgmmaHdim128>();
        check_fwd_wgmma::<FwdWgmmaHdim128Sync>();
        check_fwd_wgmma::<FwdWgmmaWsHdim128>();
        check_fwd_wgmma::<FwdWgmmaWsPingpongHdim128>();
        check_fwd_wgmma::<FwdWgmmaWsHdim96>();
        check_fwd_wgmma::<FwdWgmmaWsHdim64N64>();
        check_fwd_wgmma::<FwdWgmmaWsHdim256>();
        check_fwd_wgmma::<FwdWgmmaWsPersistentHdim128>();
        check_fwd_wgmma::<FwdWgmmaWsPersistentHdim256>();
        assert!(FwdWgmmaWsPersistentHdim128::O_OWN_STAGE && !FwdWgmmaWsPersistentHdim256::O_OWN_STAGE);
        // The non-persistent layouts are unchanged.
        assert_eq!(FwdWgmmaWsHdim128::SMEM_BYTES, 160 * 1024 + 8 * 9 + 1024);
        check_fwd_wgmma::<FwdWgmmaWsFp8Hdim128>();
        check_fwd_wgmma::<FwdWgmmaWsFp8PingpongHdim128>();
        check_fwd_wgmma::<FwdWgmmaWsFp8Stages4Hdim128>();
        check_fwd_wgmma::<FwdWgmmaWsFp8N192Hdim128>();
        check_fwd_wgmma::<FwdWgmmaWsFp8Poly1Hdim128>();
        check_fwd_wgmma::<FwdWgmmaWsFp8Poly2Hdim128>();
        check_fwd_wgmma::<FwdWgmmaWsFp8Hdim256>();
        check_fwd_wgmma::<FwdWgmmaWsFp8PingpongHdim256>();
        check_fwd_wgmma::<FwdWgmmaWsFp8Stages4Hdim256>();
        check_fwd_wgmma::<FwdWgmmaWsFp8PingpongStages4Hdim256>();
        check_fwd_wgmma::<FwdWgmmaWsHdim64W2>();
        check_fwd_wgmma::<FwdWgmmaWsPersistentHdim64>();
        check_fwd_wgmma::<FwdWgmmaHdim192>();
        check_fwd_wgmma::<FwdWgmmaHdim256>();
        check_fwd_wgmma::<FwdWgmmaHdim96>();
        check_fwd_wgmma::<FwdWgmmaPipelined<64, 1, 64>>();
        check_fwd::<FwdHdim32>();
        check_fwd::<FwdHdim64>();
        check_fwd::<FwdHdim96>();
        check_fwd::<FwdHdim128>();
        check_fwd::<FwdHdim192>();
        check_fwd::<FwdHdim256>();
        check_bwd::<BwdHdim32>();
        check_bwd::<BwdHdim64>();
        check_bwd::<BwdHdim96>();
        check_bwd::<BwdHdim128>();
        check_bwd::<BwdHdim192>();
        check_bwd::<BwdHdim256>();
    }
}
