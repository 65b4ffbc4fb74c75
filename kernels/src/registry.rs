//! Every entry point in the PTX, with the launch shape the host must use for it.
//!
//! [`KERNELS`] lists each kernel as a [`KernelInfo`] (name, [`Role`], [`Dtype`], head dim, threads,
//! dynamic shared memory, rows per block, parameter-block size), built from the tile
//! configurations by `const fn`, so the host launches exactly what the kernels were compiled for.
//! Every default forward and backward main kernel (not the measurement variants) has a `_mods` twin of the same configuration that also
//! runs softcap, ALiBi and dropout; the dense kernels handle masks, grouped K/V heads and sinks.
//! [`find`] is how the host picks a kernel: by role, dtype, head dim and whether the call needs
//! the modifiers, a Hopper-only kernel first where the sm_90a PTX is loaded. Entries after the
//! defaults are measurement variants that only a choice by name reaches
//! (`FlashAttention::with_kernel`, `bench --kernel`, `FLASH_ATTN_KERNELS` in the GPU tests).
//! [`in_ptx_for`] is what `cargo xtask build-ptx` checks each PTX against.

use crate::params::{AppendParams, BwdParams, FwdParams};
use crate::tiling::{DECODE_ROWS, DECODE_WARPS, decode_block_keys, decode_smem_bytes, decode_stages};
use crate::traits::{
    BwdHdim32, BwdHdim64, BwdHdim96, BwdHdim128, BwdHdim192, BwdHdim256, BwdTraits, BwdWgmmaDeferredBeforeDpHdim128,
    BwdWgmmaDeferredHdim128, BwdWgmmaHdim32, BwdWgmmaHdim64, BwdWgmmaHdim64Narrow, BwdWgmmaHdim96, BwdWgmmaHdim128,
    BwdWgmmaHdim128Sync, BwdWgmmaHdim192, BwdWgmmaHdim192OneStage, BwdWgmmaHdim256, BwdWgmmaLateHdim256,
    BwdWgmmaTraits, BwdWgmmaWarpReductions, BwdWgmmaWsDs2Hdim64, BwdWgmmaWsDs2Hdim128, BwdWgmmaWsHdim32,
    BwdWgmmaWsHdim64, BwdWgmmaWsHdim96, BwdWgmmaWsHdim128, BwdWgmmaWsPipelinedHdim64, BwdWgmmaWsPipelinedLateHdim64,
    FwdHdim32, FwdHdim64, FwdHdim96, FwdHdim128, FwdHdim192, FwdHdim256, FwdTraits, FwdWgmmaHdim64, FwdWgmmaHdim96,
    FwdWgmmaHdim128, FwdWgmmaHdim128Sync, FwdWgmmaHdim192, FwdWgmmaHdim256, FwdWgmmaTraits, FwdWgmmaWsFp8Hdim128,
    FwdWgmmaWsFp8Hdim256, FwdWgmmaWsFp8N192Hdim128, FwdWgmmaWsFp8PingpongHdim128, FwdWgmmaWsFp8PingpongHdim256,
    FwdWgmmaWsFp8PingpongStages4Hdim256, FwdWgmmaWsFp8Poly1Hdim128, FwdWgmmaWsFp8Poly2Hdim128,
    FwdWgmmaWsFp8Stages4Hdim128, FwdWgmmaWsFp8Stages4Hdim256, FwdWgmmaWsHdim64N64, FwdWgmmaWsHdim64W2,
    FwdWgmmaWsHdim96, FwdWgmmaWsHdim128, FwdWgmmaWsHdim256, FwdWgmmaWsPersistentHdim64, FwdWgmmaWsPersistentHdim128,
    FwdWgmmaWsPersistentHdim256, FwdWgmmaWsPersistentP40Hdim128, FwdWgmmaWsPersistentP40OqHdim128,
    FwdWgmmaWsPingpongHdim128, ROW_KERNEL_THREADS,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F16,
    Bf16,
    /// FP8 e4m3 inputs (the FP8 forward; its output is bf16).
    E4m3,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Forward,
    Backward,
    BackwardPreprocess,
    BackwardConvertDq,
    /// The sinks' gradient, after the preprocess (one block per head).
    BackwardSinkGradient,
    /// Grouped K/V heads: dK and dV as sums over each group's query heads.
    BackwardReduceKv,
    /// Test only: dropout's keep decisions as bytes (`FwdParams`, written to `o`).
    DropoutMask,
    /// Split-KV: merge the splits' partial outputs by their LSEs (`FwdParams`).
    ForwardCombine,
    /// Decode against a KV cache: a K/V group's query heads and new tokens packed into one tile
    /// (`FwdParams`; grid (splits, heads_k, batch)).
    ForwardDecode,
    /// Append new keys and values to a KV cache, with rotary embedding (`AppendParams`; one
    /// warp per row).
    KvAppend,
    /// The FP8 forward's Vᵀ (`FwdParams`: V through `k`, Vᵀ into `v`; grid (padded keys / 128,
    /// heads_k · head_dim / 64, batch)).
    Fp8TransposeV,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    pub name: &'static str,
    pub role: Role,
    pub dtype: Dtype,
    /// 0 for kernels that work for any head dim.
    pub head_dim: u32,
    pub threads: u32,
    pub dynamic_smem_bytes: u32,
    /// Rows of the launch's tiled dimension one block covers (grid x = ceil(len / this)).
    pub block_rows: u32,
    /// Size of the by-value parameter block; `build-ptx` checks the PTX entry agrees.
    pub param_bytes: u32,
    /// Backward main kernels: query rows per inner iteration (sizes the deterministic mode's
    /// turn counters); 0 for the others.
    pub query_tile_rows: u32,
    /// Forward main kernels: keys per K/V tile (the split-KV heuristic's unit); 0 for the others.
    pub key_tile_rows: u32,
    /// Blocks that should share an SM: above 1, `build-ptx` asks ptxas for registers to match.
    pub min_blocks_per_sm: u32,
    /// Only in the sm_90a PTX (Hopper's `wgmma`); preferred there over the portable kernel.
    pub requires_sm90a: bool,
    /// A persistent forward: launched with `tiling::persistent_blocks` blocks (one per SM at
    /// most) that loop over the query tiles; correct over any grid. Dense kernels only.
    pub persistent: bool,
    /// A `_mods` kernel: runs the score modifiers and dropout ([`crate::modifiers`]), and the
    /// sequence layouts. The dense kernels handle masks (causal, windows), grouped K/V heads and
    /// sinks, nothing else.
    pub modifiers: bool,
    /// Resolves each block's sequence ([`crate::params::FwdParams::sequence`]: packed batches,
    /// KV caches, split-KV): the `_seq` and `_mods` kernels.
    pub sequences: bool,
    /// Never picked by [`find`]: run only when named (`FlashAttention::with_kernel`,
    /// `FLASH_ATTN_KERNELS`, `bench --kernel`). For kernels that passed their tests but whose
    /// speed is not measured yet.
    pub opt_in: bool,
}

/// Which twin of a main kernel a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// A dense batch, no score modifier: the dense kernel.
    Dense,
    /// Packed sequences or a KV cache, no score modifier: the `_seq` twin.
    Sequences,
    /// Softcap, ALiBi or dropout with packed sequences or a KV cache: the `_mods` twin.
    Modifiers,
    /// Softcap, ALiBi or dropout on a dense batch: the `_modsd` twin (the modifiers without the
    /// sequence layouts' registers) where one exists, else the `_mods` twin.
    DenseModifiers,
}

impl KernelInfo {
    /// Whether this kernel runs `role` for this dtype and head dim (row kernels: any head dim;
    /// the sink gradient and the dropout mask: either dtype), dense or with the score modifiers
    /// (a distinction of the forward and backward main kernels only).
    pub fn serves(&self, role: Role, dtype: Dtype, head_dim: u32, flavor: Flavor) -> bool {
        let main = matches!(role, Role::Forward | Role::Backward);
        let twin = match flavor {
            Flavor::Dense => !self.modifiers && !self.sequences,
            Flavor::Sequences => !self.modifiers && self.sequences,
            Flavor::Modifiers => self.modifiers && self.sequences,
            Flavor::DenseModifiers => self.modifiers,
        };
        self.role == role
            && (self.dtype == dtype || matches!(role, Role::BackwardSinkGradient | Role::DropoutMask))
            && (self.head_dim == 0 || self.head_dim == head_dim)
            && (!main || twin)
    }
}

/// An entry with the row kernels' launch shape; the constructors below override the fields that
/// come from a tile configuration.
const fn base(name: &'static str, role: Role, dtype: Dtype) -> KernelInfo {
    let param_bytes = match role {
        Role::Forward | Role::DropoutMask | Role::ForwardCombine | Role::ForwardDecode | Role::Fp8TransposeV => {
            core::mem::size_of::<FwdParams>()
        }
        Role::KvAppend => core::mem::size_of::<AppendParams>(),
        _ => core::mem::size_of::<BwdParams>(),
    } as u32;
    KernelInfo {
        name,
        role,
        dtype,
        head_dim: 0,
        threads: ROW_KERNEL_THREADS,
        dynamic_smem_bytes: 0,
        block_rows: ROW_KERNEL_THREADS / 32,
        param_bytes,
        query_tile_rows: 0,
        key_tile_rows: 0,
        min_blocks_per_sm: 1,
        requires_sm90a: false,
        persistent: false,
        modifiers: false,
        sequences: false,
        opt_in: false,
    }
}

const fn fwd<T: FwdTraits>(name: &'static str, dtype: Dtype) -> KernelInfo {
    KernelInfo {
        head_dim: T::HEAD_DIM,
        threads: T::THREADS,
        dynamic_smem_bytes: T::SMEM_BYTES,
        block_rows: T::BLOCK_M,
        key_tile_rows: T::BLOCK_N,
        ..base(name, Role::Forward, dtype)
    }
}

const fn fwd_wgmma<T: FwdWgmmaTraits>(name: &'static str, dtype: Dtype) -> KernelInfo {
    KernelInfo {
        head_dim: T::DATA_HEAD_DIM,
        threads: T::THREADS,
        dynamic_smem_bytes: T::SMEM_BYTES,
        block_rows: T::BLOCK_M,
        key_tile_rows: T::BLOCK_N,
        requires_sm90a: true,
        persistent: T::PERSISTENT,
        ..base(name, Role::Forward, dtype)
    }
}

/// The decode kernel for head dim `D` (see `decode.rs`: 4 warps, one 16-row packed tile), its
/// sm_90a build with three K/V stages per warp (`_sm90` names), the portable one with two.
const fn decode<const D: u32>(name: &'static str, dtype: Dtype, sm90a: bool) -> KernelInfo {
    KernelInfo {
        head_dim: D,
        threads: DECODE_WARPS * 32,
        dynamic_smem_bytes: decode_smem_bytes(D, decode_stages(sm90a)),
        requires_sm90a: sm90a,
        block_rows: DECODE_ROWS,
        key_tile_rows: decode_block_keys(D),
        ..base(name, Role::ForwardDecode, dtype)
    }
}

const fn bwd<T: BwdTraits>(name: &'static str, dtype: Dtype) -> KernelInfo {
    KernelInfo {
        head_dim: T::HEAD_DIM,
        threads: T::THREADS,
        dynamic_smem_bytes: T::SMEM_BYTES,
        block_rows: T::BLOCK_N,
        query_tile_rows: T::BLOCK_M,
        ..base(name, Role::Backward, dtype)
    }
}

const fn bwd_wgmma<T: BwdWgmmaTraits>(name: &'static str, dtype: Dtype) -> KernelInfo {
    KernelInfo {
        head_dim: T::DATA_HEAD_DIM,
        threads: T::THREADS,
        dynamic_smem_bytes: T::SMEM_BYTES,
        block_rows: T::BLOCK_N,
        query_tile_rows: T::BLOCK_M,
        min_blocks_per_sm: T::MIN_BLOCKS_PER_SM,
        requires_sm90a: true,
        ..base(name, Role::Backward, dtype)
    }
}

/// `kernel`, not picked by default ([`KernelInfo::opt_in`]): for a kernel that is tested but
/// not yet measured against the default.
const fn opt_in(kernel: KernelInfo) -> KernelInfo {
    KernelInfo { opt_in: true, ..kernel }
}

/// [`fwd_wgmma`], opt-in: a configuration kept for measuring the default against.
const fn fwd_wgmma_opt_in<T: FwdWgmmaTraits>(name: &'static str, dtype: Dtype) -> KernelInfo {
    opt_in(fwd_wgmma::<T>(name, dtype))
}

/// [`bwd_wgmma`], opt-in: a candidate measured against the default.
const fn bwd_wgmma_opt_in<T: BwdWgmmaTraits>(name: &'static str, dtype: Dtype) -> KernelInfo {
    opt_in(bwd_wgmma::<T>(name, dtype))
}

/// Every kernel with its `_mods` twin (same configuration, `modifiers: true`) and its `_seq`
/// twin (`sequences: true`); then kernels whose dense entry and twins are built by different
/// constructors (`dense / twins`, e.g. a default dense kernel with opt-in twins); then the
/// kernels that have none.
macro_rules! registry {
    (
        paired: [$($ctor:ident::<$t:ty>($name:literal, $dtype:expr)),* $(,)?],
        split: [$($dense:ident / $twins:ident::<$st:ty>($sname:literal, $sdtype:expr)),* $(,)?],
        single: [$($single:expr),* $(,)?] $(,)?
    ) => {
        &[
            $($ctor::<$t>($name, $dtype),)*
            $(KernelInfo { name: concat!($name, "_mods"), modifiers: true, sequences: true, persistent: false, ..$ctor::<$t>($name, $dtype) },)*
            $(KernelInfo { name: concat!($name, "_seq"), sequences: true, persistent: false, ..$ctor::<$t>($name, $dtype) },)*
            $(
                $dense::<$st>($sname, $sdtype),
                KernelInfo { name: concat!($sname, "_mods"), modifiers: true, sequences: true, persistent: false, ..$twins::<$st>($sname, $sdtype) },
                KernelInfo { name: concat!($sname, "_seq"), sequences: true, persistent: false, ..$twins::<$st>($sname, $sdtype) },
            )*
            $($single,)*
        ]
    };
}

pub const KERNELS: &[KernelInfo] = registry! {
    paired: [
        fwd_wgmma::<FwdWgmmaHdim64>("flash_fwd_wgmma_bf16_hdim64", Dtype::Bf16),
        fwd_wgmma::<FwdWgmmaHdim64>("flash_fwd_wgmma_f16_hdim64", Dtype::F16),
        // v21: the warp-specialized forward, 1.05–1.13× the pipelined one (kept, opt-in).
        fwd_wgmma::<FwdWgmmaWsHdim128>("flash_fwd_wgmma_ws_bf16_hdim128", Dtype::Bf16),
        fwd_wgmma::<FwdWgmmaWsHdim128>("flash_fwd_wgmma_ws_f16_hdim128", Dtype::F16),
        fwd_wgmma::<FwdWgmmaWsHdim96>("flash_fwd_wgmma_ws_bf16_hdim96", Dtype::Bf16),
        fwd_wgmma::<FwdWgmmaWsHdim96>("flash_fwd_wgmma_ws_f16_hdim96", Dtype::F16),
        fwd_wgmma_opt_in::<FwdWgmmaHdim128>("flash_fwd_wgmma_bf16_hdim128", Dtype::Bf16),
        fwd_wgmma_opt_in::<FwdWgmmaHdim128>("flash_fwd_wgmma_f16_hdim128", Dtype::F16),
        fwd_wgmma_opt_in::<FwdWgmmaHdim96>("flash_fwd_wgmma_bf16_hdim96", Dtype::Bf16),
        fwd_wgmma_opt_in::<FwdWgmmaHdim96>("flash_fwd_wgmma_f16_hdim96", Dtype::F16),
        fwd_wgmma::<FwdWgmmaHdim192>("flash_fwd_wgmma_bf16_hdim192", Dtype::Bf16),
        fwd_wgmma::<FwdWgmmaHdim192>("flash_fwd_wgmma_f16_hdim192", Dtype::F16),
        bwd_wgmma::<BwdWgmmaHdim128>("flash_bwd_wgmma_bf16_hdim128", Dtype::Bf16),
        bwd_wgmma::<BwdWgmmaHdim128>("flash_bwd_wgmma_f16_hdim128", Dtype::F16),
        // v27: the warp-specialized head_dim 128 backward (producer warpgroup): ±1% (v27c,
        // benches/NOTES.md); opt-in.
        bwd_wgmma_opt_in::<BwdWgmmaWsHdim128>("flash_bwd_wgmma_ws_bf16_hdim128", Dtype::Bf16),
        bwd_wgmma_opt_in::<BwdWgmmaWsHdim128>("flash_bwd_wgmma_ws_f16_hdim128", Dtype::F16),
        // v20: 1.47–1.78× the portable kernel (benches/NOTES.md).
        bwd_wgmma::<BwdWgmmaHdim256>("flash_bwd_wgmma_bf16_hdim256", Dtype::Bf16),
        bwd_wgmma::<BwdWgmmaHdim256>("flash_bwd_wgmma_f16_hdim256", Dtype::F16),
        // v28: head_dim 192 on the column-split kernel, two query-tile stages.
        bwd_wgmma::<BwdWgmmaHdim192>("flash_bwd_wgmma_bf16_hdim192", Dtype::Bf16),
        bwd_wgmma::<BwdWgmmaHdim192>("flash_bwd_wgmma_f16_hdim192", Dtype::F16),
        fwd::<FwdHdim96>("flash_fwd_bf16_hdim96", Dtype::Bf16),
        bwd::<BwdHdim96>("flash_bwd_bf16_hdim96", Dtype::Bf16),
        fwd::<FwdHdim96>("flash_fwd_f16_hdim96", Dtype::F16),
        bwd::<BwdHdim96>("flash_bwd_f16_hdim96", Dtype::F16),
        fwd::<FwdHdim192>("flash_fwd_bf16_hdim192", Dtype::Bf16),
        bwd::<BwdHdim192>("flash_bwd_bf16_hdim192", Dtype::Bf16),
        fwd::<FwdHdim192>("flash_fwd_f16_hdim192", Dtype::F16),
        bwd::<BwdHdim192>("flash_bwd_f16_hdim192", Dtype::F16),
        fwd::<FwdHdim256>("flash_fwd_bf16_hdim256", Dtype::Bf16),
        bwd::<BwdHdim256>("flash_bwd_bf16_hdim256", Dtype::Bf16),
        fwd::<FwdHdim256>("flash_fwd_f16_hdim256", Dtype::F16),
        bwd::<BwdHdim256>("flash_bwd_f16_hdim256", Dtype::F16),
        fwd::<FwdHdim32>("flash_fwd_bf16_hdim32", Dtype::Bf16),
        fwd::<FwdHdim32>("flash_fwd_f16_hdim32", Dtype::F16),
        bwd::<BwdHdim32>("flash_bwd_bf16_hdim32", Dtype::Bf16),
        bwd::<BwdHdim32>("flash_bwd_f16_hdim32", Dtype::F16),
        fwd::<FwdHdim64>("flash_fwd_bf16_hdim64", Dtype::Bf16),
        fwd::<FwdHdim128>("flash_fwd_bf16_hdim128", Dtype::Bf16),
        fwd::<FwdHdim64>("flash_fwd_f16_hdim64", Dtype::F16),
        fwd::<FwdHdim128>("flash_fwd_f16_hdim128", Dtype::F16),
        bwd::<BwdHdim64>("flash_bwd_bf16_hdim64", Dtype::Bf16),
        bwd::<BwdHdim128>("flash_bwd_bf16_hdim128", Dtype::Bf16),
        bwd::<BwdHdim64>("flash_bwd_f16_hdim64", Dtype::F16),
        bwd::<BwdHdim128>("flash_bwd_f16_hdim128", Dtype::F16),
    ],
    split: [
        // v27: the warp-specialized head_dim 32 and 64 backward, +3–6% over the all-threads-load
        // kernel at 1k–16k, and at 96 (v27c, spill-free) +1–2% at 512–16k (benches/NOTES.md),
        // serves dense calls; its `_seq` and `_mods` twins (72–136 and 256–288 spill bytes, not
        // measured) are opt-in, and those calls keep the older kernel, whose dense entry stays,
        // opt-in, for A/B.
        bwd_wgmma / bwd_wgmma_opt_in::<BwdWgmmaWsHdim32>("flash_bwd_wgmma_ws_bf16_hdim32", Dtype::Bf16),
        bwd_wgmma_opt_in / bwd_wgmma::<BwdWgmmaHdim32>("flash_bwd_wgmma_bf16_hdim32", Dtype::Bf16),
        bwd_wgmma / bwd_wgmma_opt_in::<BwdWgmmaWsHdim32>("flash_bwd_wgmma_ws_f16_hdim32", Dtype::F16),
        bwd_wgmma_opt_in / bwd_wgmma::<BwdWgmmaHdim32>("flash_bwd_wgmma_f16_hdim32", Dtype::F16),
        bwd_wgmma / bwd_wgmma_opt_in::<BwdWgmmaWsHdim64>("flash_bwd_wgmma_ws_bf16_hdim64", Dtype::Bf16),
        bwd_wgmma_opt_in / bwd_wgmma::<BwdWgmmaHdim64>("flash_bwd_wgmma_bf16_hdim64", Dtype::Bf16),
        bwd_wgmma / bwd_wgmma_opt_in::<BwdWgmmaWsHdim64>("flash_bwd_wgmma_ws_f16_hdim64", Dtype::F16),
        bwd_wgmma_opt_in / bwd_wgmma::<BwdWgmmaHdim64>("flash_bwd_wgmma_f16_hdim64", Dtype::F16),
        bwd_wgmma / bwd_wgmma_opt_in::<BwdWgmmaWsHdim96>("flash_bwd_wgmma_ws_bf16_hdim96", Dtype::Bf16),
        bwd_wgmma_opt_in / bwd_wgmma::<BwdWgmmaHdim96>("flash_bwd_wgmma_bf16_hdim96", Dtype::Bf16),
        bwd_wgmma / bwd_wgmma_opt_in::<BwdWgmmaWsHdim96>("flash_bwd_wgmma_ws_f16_hdim96", Dtype::F16),
        bwd_wgmma_opt_in / bwd_wgmma::<BwdWgmmaHdim96>("flash_bwd_wgmma_f16_hdim96", Dtype::F16),
    ],
    single: [
        // The sink gradient reads only f32 statistics: one entry serves both dtypes.
        KernelInfo {
            dynamic_smem_bytes: ROW_KERNEL_THREADS / 32 * 4,
            ..base("flash_bwd_sink_gradient", Role::BackwardSinkGradient, Dtype::Bf16)
        },
        base("flash_bwd_preprocess_bf16", Role::BackwardPreprocess, Dtype::Bf16),
        base("flash_bwd_preprocess_f16", Role::BackwardPreprocess, Dtype::F16),
        base("flash_bwd_convert_dq_bf16", Role::BackwardConvertDq, Dtype::Bf16),
        base("flash_bwd_convert_dq_f16", Role::BackwardConvertDq, Dtype::F16),
        base("flash_bwd_reduce_kv_groups_bf16", Role::BackwardReduceKv, Dtype::Bf16),
        base("flash_bwd_reduce_kv_groups_f16", Role::BackwardReduceKv, Dtype::F16),
        // Reads no tensor: one entry serves both dtypes.
        base("flash_dropout_mask", Role::DropoutMask, Dtype::Bf16),
        base("flash_fwd_combine_bf16", Role::ForwardCombine, Dtype::Bf16),
        base("flash_fwd_combine_f16", Role::ForwardCombine, Dtype::F16),
        base("flash_kv_append_bf16", Role::KvAppend, Dtype::Bf16),
        base("flash_kv_append_f16", Role::KvAppend, Dtype::F16),
        // FP8: the dense head_dim 128 and 256 kernels (bf16 O), and the V transpose they read.
        fwd_wgmma::<FwdWgmmaWsFp8Hdim128>("flash_fwd_wgmma_ws_fp8_hdim128", Dtype::E4m3),
        // head_dim 256: four stages (v31: +0 to +9% over three at 4k and 16k, causal and not).
        fwd_wgmma::<FwdWgmmaWsFp8Stages4Hdim256>("flash_fwd_wgmma_ws_s4_fp8_hdim256", Dtype::E4m3),
        fwd_wgmma_opt_in::<FwdWgmmaWsFp8Hdim256>("flash_fwd_wgmma_ws_fp8_hdim256", Dtype::E4m3),
        fwd_wgmma_opt_in::<FwdWgmmaWsFp8PingpongHdim256>("flash_fwd_wgmma_ws_pp_fp8_hdim256", Dtype::E4m3),
        fwd_wgmma_opt_in::<FwdWgmmaWsFp8PingpongStages4Hdim256>("flash_fwd_wgmma_ws_pps4_fp8_hdim256", Dtype::E4m3),
        fwd_wgmma_opt_in::<FwdWgmmaWsFp8PingpongHdim128>("flash_fwd_wgmma_ws_pp_fp8_hdim128", Dtype::E4m3),
        fwd_wgmma_opt_in::<FwdWgmmaWsFp8Stages4Hdim128>("flash_fwd_wgmma_ws_s4_fp8_hdim128", Dtype::E4m3),
        // v33: 192-key tiles at head_dim 128.
        fwd_wgmma_opt_in::<FwdWgmmaWsFp8N192Hdim128>("flash_fwd_wgmma_ws_n192_fp8_hdim128", Dtype::E4m3),
        fwd_wgmma_opt_in::<FwdWgmmaWsFp8Poly1Hdim128>("flash_fwd_wgmma_ws_px1_fp8_hdim128", Dtype::E4m3),
        fwd_wgmma_opt_in::<FwdWgmmaWsFp8Poly2Hdim128>("flash_fwd_wgmma_ws_px2_fp8_hdim128", Dtype::E4m3),
        // v27d: measurement candidates, the v27 backward with a second dSᵀ tile.
        bwd_wgmma_opt_in::<BwdWgmmaWsDs2Hdim64>("flash_bwd_wgmma_ws_ds2_bf16_hdim64", Dtype::Bf16),
        bwd_wgmma_opt_in::<BwdWgmmaWsDs2Hdim128>("flash_bwd_wgmma_ws_ds2_bf16_hdim128", Dtype::Bf16),
        // v38: head_dim 64 with Sᵀ and dPᵀ issued together; and dV, dK waited after the dQ issue.
        bwd_wgmma_opt_in::<BwdWgmmaWsPipelinedHdim64>("flash_bwd_wgmma_ws_pl_bf16_hdim64", Dtype::Bf16),
        bwd_wgmma_opt_in::<BwdWgmmaWsPipelinedLateHdim64>("flash_bwd_wgmma_ws_plw_bf16_hdim64", Dtype::Bf16),
        // v29: the deferred dQ GEMM at head_dim 128, two schedules (0.92–0.96 × the default);
        // v29b: the default schedule with v29's per-warp dQ reductions alone.
        bwd_wgmma_opt_in::<BwdWgmmaDeferredHdim128>("flash_bwd_wgmma_dq_bf16_hdim128", Dtype::Bf16),
        bwd_wgmma_opt_in::<BwdWgmmaDeferredBeforeDpHdim128>("flash_bwd_wgmma_dqb_bf16_hdim128", Dtype::Bf16),
        bwd_wgmma_opt_in::<BwdWgmmaWarpReductions>("flash_bwd_wgmma_wr_bf16_hdim128", Dtype::Bf16),
        // v28: the head_dim 192 backward with one stage (as head_dim 256), for A/B.
        bwd_wgmma_opt_in::<BwdWgmmaHdim192OneStage>("flash_bwd_wgmma_1s_bf16_hdim192", Dtype::Bf16),
        // v28b: head_dim 256 loading the next query tile after the dQ reductions (the v20 schedule).
        bwd_wgmma_opt_in::<BwdWgmmaLateHdim256>("flash_bwd_wgmma_late_bf16_hdim256", Dtype::Bf16),
        // v37: dense calls with modifiers at head_dim 128 run twins without the sequence layouts
        // (`Flavor::DenseModifiers`): spill frames 64 / 96 bytes instead of the `_mods` twins' 256 /
        // 176, softcap backward +9 to +10%, forward +6 to +8% (benches/NOTES.md).
        KernelInfo {
            name: "flash_bwd_wgmma_bf16_hdim128_modsd",
            modifiers: true,
            ..bwd_wgmma::<BwdWgmmaHdim128>("", Dtype::Bf16)
        },
        KernelInfo {
            name: "flash_bwd_wgmma_f16_hdim128_modsd",
            modifiers: true,
            ..bwd_wgmma::<BwdWgmmaHdim128>("", Dtype::F16)
        },
        KernelInfo {
            name: "flash_fwd_wgmma_ws_bf16_hdim128_modsd",
            modifiers: true,
            ..fwd_wgmma::<FwdWgmmaWsHdim128>("", Dtype::Bf16)
        },
        KernelInfo {
            name: "flash_fwd_wgmma_ws_f16_hdim128_modsd",
            modifiers: true,
            ..fwd_wgmma::<FwdWgmmaWsHdim128>("", Dtype::F16)
        },
        KernelInfo {
            threads: 128,
            block_rows: 128,
            requires_sm90a: true,
            ..base("flash_fp8_transpose_v", Role::Fp8TransposeV, Dtype::E4m3)
        },
        decode::<32>("flash_fwd_decode_bf16_hdim32_sm90", Dtype::Bf16, true),
        decode::<64>("flash_fwd_decode_bf16_hdim64_sm90", Dtype::Bf16, true),
        decode::<96>("flash_fwd_decode_bf16_hdim96_sm90", Dtype::Bf16, true),
        decode::<128>("flash_fwd_decode_bf16_hdim128_sm90", Dtype::Bf16, true),
        decode::<192>("flash_fwd_decode_bf16_hdim192_sm90", Dtype::Bf16, true),
        decode::<256>("flash_fwd_decode_bf16_hdim256_sm90", Dtype::Bf16, true),
        decode::<32>("flash_fwd_decode_f16_hdim32_sm90", Dtype::F16, true),
        decode::<64>("flash_fwd_decode_f16_hdim64_sm90", Dtype::F16, true),
        decode::<96>("flash_fwd_decode_f16_hdim96_sm90", Dtype::F16, true),
        decode::<128>("flash_fwd_decode_f16_hdim128_sm90", Dtype::F16, true),
        decode::<192>("flash_fwd_decode_f16_hdim192_sm90", Dtype::F16, true),
        decode::<256>("flash_fwd_decode_f16_hdim256_sm90", Dtype::F16, true),
        decode::<32>("flash_fwd_decode_bf16_hdim32", Dtype::Bf16, false),
        decode::<64>("flash_fwd_decode_bf16_hdim64", Dtype::Bf16, false),
        decode::<96>("flash_fwd_decode_bf16_hdim96", Dtype::Bf16, false),
        decode::<128>("flash_fwd_decode_bf16_hdim128", Dtype::Bf16, false),
        decode::<192>("flash_fwd_decode_bf16_hdim192", Dtype::Bf16, false),
        decode::<256>("flash_fwd_decode_bf16_hdim256", Dtype::Bf16, false),
        decode::<32>("flash_fwd_decode_f16_hdim32", Dtype::F16, false),
        decode::<64>("flash_fwd_decode_f16_hdim64", Dtype::F16, false),
        decode::<96>("flash_fwd_decode_f16_hdim96", Dtype::F16, false),
        decode::<128>("flash_fwd_decode_f16_hdim128", Dtype::F16, false),
        decode::<192>("flash_fwd_decode_f16_hdim192", Dtype::F16, false),
        decode::<256>("flash_fwd_decode_f16_hdim256", Dtype::F16, false),
        // Measurement variants: after the defaults, so `find` never picks them.
        fwd_wgmma::<FwdWgmmaHdim128Sync>("flash_fwd_wgmma_bf16_hdim128_sync", Dtype::Bf16),
        bwd_wgmma::<BwdWgmmaHdim64Narrow>("flash_bwd_wgmma_bf16_hdim64_narrow", Dtype::Bf16),
        bwd_wgmma::<BwdWgmmaHdim128Sync>("flash_bwd_wgmma_bf16_hdim128_sync", Dtype::Bf16),
        opt_in(fwd_wgmma::<FwdWgmmaWsPingpongHdim128>("flash_fwd_wgmma_ws_pp_bf16_hdim128", Dtype::Bf16)),
        // v30 candidates: the persistent warp-specialized forward (dense; no twins), measured in
        // benches/results/2026-12-03-h200-v30.md (24-register producer; 256 loses everywhere).
        fwd_wgmma_opt_in::<FwdWgmmaWsPersistentHdim128>("flash_fwd_wgmma_ws_pe_bf16_hdim128", Dtype::Bf16),
        fwd_wgmma_opt_in::<FwdWgmmaWsPersistentHdim128>("flash_fwd_wgmma_ws_pe_f16_hdim128", Dtype::F16),
        fwd_wgmma_opt_in::<FwdWgmmaWsPersistentHdim256>("flash_fwd_wgmma_ws_pe_bf16_hdim256", Dtype::Bf16),
        // v30f: the persistent head_dim 128 forward, chosen for dense calls of at most
        // `PERSISTENT_FORWARD_MAX_KEYS` keys (`persistent_forward`), opt-in otherwise.
        fwd_wgmma_opt_in::<FwdWgmmaWsPersistentP40Hdim128>("flash_fwd_wgmma_ws_pe40_bf16_hdim128", Dtype::Bf16),
        fwd_wgmma_opt_in::<FwdWgmmaWsPersistentP40Hdim128>("flash_fwd_wgmma_ws_pe40_f16_hdim128", Dtype::F16),
        fwd_wgmma_opt_in::<FwdWgmmaWsPersistentP40OqHdim128>("flash_fwd_wgmma_ws_pe40q_bf16_hdim128", Dtype::Bf16),
        fwd_wgmma_opt_in::<FwdWgmmaWsHdim64N64>("flash_fwd_wgmma_ws_n64_bf16_hdim64", Dtype::Bf16),
        // v32: head_dim 64 on two consumers, 128-key tiles; the persistent one is chosen for dense
        // calls of more than `PERSISTENT_FORWARD_HDIM64_MIN_KEYS` keys (`persistent_forward`).
        fwd_wgmma_opt_in::<FwdWgmmaWsHdim64W2>("flash_fwd_wgmma_ws_w2_bf16_hdim64", Dtype::Bf16),
        fwd_wgmma_opt_in::<FwdWgmmaWsPersistentHdim64>("flash_fwd_wgmma_ws_pe40_bf16_hdim64", Dtype::Bf16),
        fwd_wgmma_opt_in::<FwdWgmmaWsPersistentHdim64>("flash_fwd_wgmma_ws_pe40_f16_hdim64", Dtype::F16),
        // v22: the warp-specialized head_dim 256 forward, 1.19–1.23× the unpipelined one, dense
        // and `_seq`; with every modifier's registers it spills, so the `_mods` calls keep the
        // unpipelined kernel (whose dense and `_seq` twins stay, opt-in, for A/B). Listed before
        // those: `find` takes the first kernel that fits.
        fwd_wgmma::<FwdWgmmaWsHdim256>("flash_fwd_wgmma_ws_bf16_hdim256", Dtype::Bf16),
        fwd_wgmma::<FwdWgmmaWsHdim256>("flash_fwd_wgmma_ws_f16_hdim256", Dtype::F16),
        KernelInfo { name: "flash_fwd_wgmma_ws_bf16_hdim256_seq", sequences: true, ..fwd_wgmma::<FwdWgmmaWsHdim256>("", Dtype::Bf16) },
        KernelInfo { name: "flash_fwd_wgmma_ws_f16_hdim256_seq", sequences: true, ..fwd_wgmma::<FwdWgmmaWsHdim256>("", Dtype::F16) },
        fwd_wgmma_opt_in::<FwdWgmmaHdim256>("flash_fwd_wgmma_bf16_hdim256", Dtype::Bf16),
        fwd_wgmma_opt_in::<FwdWgmmaHdim256>("flash_fwd_wgmma_f16_hdim256", Dtype::F16),
        KernelInfo {
            name: "flash_fwd_wgmma_bf16_hdim256_mods",
            modifiers: true,
            sequences: true,
            ..fwd_wgmma::<FwdWgmmaHdim256>("", Dtype::Bf16)
        },
        KernelInfo {
            name: "flash_fwd_wgmma_f16_hdim256_mods",
            modifiers: true,
            sequences: true,
            ..fwd_wgmma::<FwdWgmmaHdim256>("", Dtype::F16)
        },
        KernelInfo { name: "flash_fwd_wgmma_bf16_hdim256_seq", sequences: true, ..fwd_wgmma_opt_in::<FwdWgmmaHdim256>("", Dtype::Bf16) },
        KernelInfo { name: "flash_fwd_wgmma_f16_hdim256_seq", sequences: true, ..fwd_wgmma_opt_in::<FwdWgmmaHdim256>("", Dtype::F16) },
    ],
};

/// The kernel called `name`, if the registry has one.
pub fn by_name(name: &str) -> Option<&'static KernelInfo> {
    KERNELS.iter().find(|k| k.name == name)
}

/// The kernel for a role, dtype and head dim (head dim ignored for the row kernels, dtype for
/// the sink gradient and the dropout mask), with or without the score modifiers (`modifiers` matters for the
/// forward and backward main kernels only): with the sm_90a PTX loaded, a Hopper-only kernel
/// where one exists, else the portable one.
pub fn find(role: Role, dtype: Dtype, head_dim: u32, sm90a: bool, flavor: Flavor) -> Option<&'static KernelInfo> {
    let fits = |k: &&KernelInfo| k.serves(role, dtype, head_dim, flavor) && !k.opt_in;
    // Dense calls with modifiers prefer a twin without the sequence layouts (`_modsd`).
    let preferred = |k: &&KernelInfo| flavor == Flavor::DenseModifiers && !k.sequences;
    let pick = |hopper: bool| {
        let mut kinds = KERNELS.iter().filter(fits).filter(move |k| k.requires_sm90a == hopper);
        kinds.clone().find(preferred).or_else(|| kinds.next())
    };
    if sm90a { pick(true).or_else(|| pick(false)) } else { pick(false) }
}

/// Dense head_dim 128 forwards whose keys fit in this many run the persistent kernel
/// (`persistent_forward`): it measured +6 to +16% at 512 keys and +2 to +7% at 1k (v30g), but −1
/// to −6% from 2k (v30f) (its causal schedule keeps the tile math on the vector path;
/// benches/results/2026-12-03-h200-v30.md).
pub const PERSISTENT_FORWARD_MAX_KEYS: u32 = 1024;

/// Dense head_dim 64 forwards with more keys than this run the persistent two-consumer kernel
/// (`persistent_forward`): +3 to +10% from 1k to 16k keys without a mask and +0 to +14% causal from
/// 2k, but −4% at 512 and −10 to −22% causal at 512–1k, where the one-warpgroup kernel's four blocks
/// an SM fill the card better (v32, benches/results/2026-12-03-h200-v31.md, call 2).
pub const PERSISTENT_FORWARD_HDIM64_MIN_KEYS: u32 = 1024;

/// The persistent forward for dense calls of this dtype and head dim where it measured faster than
/// the one-tile-a-block default: head_dim 128 with a short key loop (`PERSISTENT_FORWARD_MAX_KEYS`),
/// head_dim 64 with a long one (`PERSISTENT_FORWARD_HDIM64_MIN_KEYS`); only with the sm_90a PTX
/// loaded. `None` where the default serves.
pub fn persistent_forward(dtype: Dtype, head_dim: u32, sm90a: bool, seqlen_k: u32) -> Option<&'static KernelInfo> {
    let name = match (dtype, head_dim) {
        (Dtype::Bf16, 128) if seqlen_k <= PERSISTENT_FORWARD_MAX_KEYS => "flash_fwd_wgmma_ws_pe40_bf16_hdim128",
        (Dtype::F16, 128) if seqlen_k <= PERSISTENT_FORWARD_MAX_KEYS => "flash_fwd_wgmma_ws_pe40_f16_hdim128",
        (Dtype::Bf16, 64) if seqlen_k > PERSISTENT_FORWARD_HDIM64_MIN_KEYS => "flash_fwd_wgmma_ws_pe40_bf16_hdim64",
        (Dtype::F16, 64) if seqlen_k > PERSISTENT_FORWARD_HDIM64_MIN_KEYS => "flash_fwd_wgmma_ws_pe40_f16_hdim64",
        _ => return None,
    };
    if sm90a { by_name(name) } else { None }
}

/// The kernels a PTX built for `arch` holds.
pub fn in_ptx_for(arch: &str) -> impl Iterator<Item = &'static KernelInfo> + '_ {
    KERNELS.iter().filter(move |k| !k.requires_sm90a || arch == "sm_90a")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_head_dim_has_forward_and_backward_for_both_dtypes() {
        for &d in &crate::traits::SUPPORTED_HEAD_DIMS {
            for dtype in [Dtype::F16, Dtype::Bf16] {
                for role in [
                    Role::Forward,
                    Role::Backward,
                    Role::BackwardPreprocess,
                    Role::BackwardConvertDq,
                    Role::BackwardSinkGradient,
                    Role::BackwardReduceKv,
                    Role::DropoutMask,
                    Role::ForwardCombine,
                    Role::ForwardDecode,
                ] {
                    for sm90a in [false, true] {
                        for flavor in [Flavor::Dense, Flavor::Sequences, Flavor::Modifiers, Flavor::DenseModifiers] {
                            let k = find(role, dtype, d, sm90a, flavor)
                                .unwrap_or_else(|| panic!("{role:?} {dtype:?} {d} {flavor:?}"));
                            assert!(sm90a || !k.requires_sm90a);
                            if matches!(role, Role::Forward | Role::Backward) {
                                let suffix = match flavor {
                                    Flavor::Dense => !k.name.ends_with("_mods") && !k.name.ends_with("_seq"),
                                    Flavor::Sequences => k.name.ends_with("_seq"),
                                    Flavor::Modifiers => k.name.ends_with("_mods"),
                                    Flavor::DenseModifiers => k.name.ends_with("_mods") || k.name.ends_with("_modsd"),
                                };
                                assert!(suffix, "{flavor:?}: {}", k.name);
                            }
                        }
                    }
                }
            }
        }
        assert!(find(Role::Forward, Dtype::Bf16, 80, true, Flavor::Dense).is_none());
        assert!(find(Role::Forward, Dtype::Bf16, 128, true, Flavor::Dense).unwrap().requires_sm90a);
    }

    #[test]
    fn hopper_kernels_where_they_pay() {
        // benches/NOTES.md v14b–d, v20, v28: the forward on `wgmma` from head_dim 64 up (96
        // padded to 128), the backward everywhere (32 padded to 64; 192 and 256 on the
        // column-split kernel); the head_dim 32 forward stays portable.
        for dtype in [Dtype::F16, Dtype::Bf16] {
            for (role, hopper) in [
                (Role::Forward, [false, true, true, true, true, true]),
                (Role::Backward, [true, true, true, true, true, true]),
            ] {
                for (d, expected) in crate::traits::SUPPORTED_HEAD_DIMS.iter().zip(hopper) {
                    for flavor in [Flavor::Dense, Flavor::Sequences, Flavor::Modifiers] {
                        let k = find(role, dtype, *d, true, flavor).unwrap();
                        assert_eq!(k.requires_sm90a, expected, "{role:?} {dtype:?} {d}: {}", k.name);
                        assert_eq!(k.head_dim, *d);
                    }
                }
            }
        }
    }

    #[test]
    fn the_persistent_forward_serves_short_calls_at_128_and_long_ones_at_64() {
        for dtype in [Dtype::Bf16, Dtype::F16] {
            for keys in [1, 512, PERSISTENT_FORWARD_MAX_KEYS] {
                let k = persistent_forward(dtype, 128, true, keys).expect("a persistent kernel");
                assert!(k.persistent && k.opt_in && k.dtype == dtype && k.head_dim == 128);
                assert!(k.serves(Role::Forward, dtype, 128, Flavor::Dense));
            }
            assert!(persistent_forward(dtype, 128, true, PERSISTENT_FORWARD_MAX_KEYS + 1).is_none());
            // Not without the sm_90a PTX, and not at other head dims (96 runs padded on 128's
            // one-tile-a-block kernel; the persistent kernel's data head dim is 128).
            assert!(persistent_forward(dtype, 128, false, 512).is_none());
            for d in [32, 64, 96, 192, 256] {
                assert!(persistent_forward(dtype, d, true, 512).is_none());
            }
            // head_dim 64: the other way round, long key loops only.
            for keys in [PERSISTENT_FORWARD_HDIM64_MIN_KEYS + 1, 4096, 1 << 20] {
                let k = persistent_forward(dtype, 64, true, keys).expect("a persistent kernel");
                assert!(k.persistent && k.opt_in && k.dtype == dtype && k.head_dim == 64);
                assert!(k.serves(Role::Forward, dtype, 64, Flavor::Dense));
            }
            assert!(persistent_forward(dtype, 64, true, PERSISTENT_FORWARD_HDIM64_MIN_KEYS).is_none());
            assert!(persistent_forward(dtype, 64, false, 4096).is_none());
        }
    }

    #[test]
    fn the_warp_specialized_forward_is_the_default_where_it_exists() {
        // v21/v22: head_dim 96, 128 (every flavor) and 256 (dense and `_seq`; `_mods` keeps the
        // unpipelined kernel, the warp-specialized twin would spill).
        for (d, flavor, name) in [
            (96, Flavor::Modifiers, "flash_fwd_wgmma_ws_bf16_hdim96_mods"),
            (128, Flavor::Dense, "flash_fwd_wgmma_ws_bf16_hdim128"),
            (128, Flavor::Sequences, "flash_fwd_wgmma_ws_bf16_hdim128_seq"),
            (256, Flavor::Dense, "flash_fwd_wgmma_ws_bf16_hdim256"),
            (256, Flavor::Sequences, "flash_fwd_wgmma_ws_bf16_hdim256_seq"),
            (256, Flavor::Modifiers, "flash_fwd_wgmma_bf16_hdim256_mods"),
        ] {
            assert_eq!(find(Role::Forward, Dtype::Bf16, d, true, flavor).map(|k| k.name), Some(name));
        }
    }

    #[test]
    fn dense_calls_with_modifiers_take_the_modsd_twins_at_128() {
        // v37: on Hopper the twins without the sequence layouts; packed sequences keep `_mods`, and
        // without the sm_90a PTX the portable `_mods` kernels serve both.
        for (dtype, dt) in [(Dtype::Bf16, "bf16"), (Dtype::F16, "f16")] {
            for (role, kind) in [(Role::Forward, "fwd_wgmma_ws"), (Role::Backward, "bwd_wgmma")] {
                let name = |suffix: &str| std::format!("flash_{kind}_{dt}_hdim128_{suffix}");
                let dense = find(role, dtype, 128, true, Flavor::DenseModifiers).unwrap();
                assert_eq!(dense.name, name("modsd"));
                let packed = find(role, dtype, 128, true, Flavor::Modifiers).unwrap();
                assert!(packed.sequences && packed.name.ends_with("_mods"), "{}", packed.name);
                let portable = find(role, dtype, 128, false, Flavor::DenseModifiers).unwrap();
                assert!(!portable.requires_sm90a && portable.name.ends_with("_mods"), "{}", portable.name);
            }
            // Elsewhere dense calls with modifiers run the `_mods` twin.
            let k = find(Role::Backward, dtype, 64, true, Flavor::DenseModifiers).unwrap();
            assert!(k.name.ends_with("_mods"), "{}", k.name);
        }
    }

    #[test]
    fn the_warp_specialized_backward_serves_dense_calls_at_32_64_and_96() {
        // v27: dense calls at head_dim 32, 64 and 96 run the producer kernel; sequence layouts
        // and modifiers keep the all-threads-load kernel, and 128 keeps it for every flavor.
        for dtype in [Dtype::Bf16, Dtype::F16] {
            for (d, flavor, ws) in [
                (32, Flavor::Dense, true),
                (64, Flavor::Dense, true),
                (64, Flavor::Sequences, false),
                (64, Flavor::Modifiers, false),
                (96, Flavor::Dense, true),
                (96, Flavor::Sequences, false),
                (128, Flavor::Dense, false),
            ] {
                let k = find(Role::Backward, dtype, d, true, flavor).unwrap();
                let prefix = if dtype == Dtype::Bf16 { "flash_bwd_wgmma_ws_bf16_" } else { "flash_bwd_wgmma_ws_f16_" };
                assert_eq!(k.name.starts_with(prefix), ws, "{d} {flavor:?}: {}", k.name);
                assert_eq!(k.threads, if ws { 384 } else { 256 });
            }
        }
    }

    #[test]
    fn opt_in_kernels_are_reached_only_by_name() {
        let opt_in = || KERNELS.iter().filter(|k| k.opt_in);
        // The pipelined head_dim 96/128 forward (two dtypes, three flavors), the ping-pong one,
        // the unpipelined 256 one (two dtypes, dense and `_seq`), a head_dim 64 candidate and
        // four FP8 candidates; v27's warp-specialized backward at 128 (two dtypes, three flavors),
        // its `_seq`/`_mods` twins at 32, 64 and 96, the dense kernels it replaced there, and two
        // measurement candidates (v27d); the one-stage head_dim 192 backward (v28) and the late-load
        // head_dim 256 one (v20's schedule, v28b); the deferred-dQ and per-warp reduction candidates (v29);
        // the persistent forward (v30: 128 in both dtypes, 256 in bf16); the two-consumer head_dim 64
        // forwards (v32: plain, and persistent in both dtypes); three head_dim 256 FP8 candidates (v31:
        // three stages, ping-pong, both on four stages); the 192-key FP8 head_dim 128 forward (v33);
        // the two pipelined head_dim 64 backwards (v38).
        assert_eq!(opt_in().count(), 22 + 6 + 12 + 6 + 2 + 2 + 3 + 3 + 3 + 3 + 3 + 1 + 2);
        // Persistent kernels are dense forwards; their twins (none yet) would not be.
        for k in KERNELS.iter().filter(|k| k.persistent) {
            assert!(k.role == Role::Forward && !k.sequences && !k.modifiers && k.requires_sm90a, "{}", k.name);
        }
        for k in opt_in() {
            assert_eq!(by_name(k.name).map(|b| b.name), Some(k.name));
            let flavor = if k.modifiers && k.sequences {
                Flavor::Modifiers
            } else if k.modifiers {
                Flavor::DenseModifiers
            } else if k.sequences {
                Flavor::Sequences
            } else {
                Flavor::Dense
            };
            assert_ne!(find(k.role, k.dtype, k.head_dim, true, flavor).map(|f| f.name), Some(k.name));
        }
    }

    #[test]
    fn decode_kernels_fit_their_devices() {
        // The sm_80 PTX runs on an A100 (163 KiB a block); sm_90a on an H100/H200 (227 KiB).
        for k in KERNELS.iter().filter(|k| k.role == Role::ForwardDecode) {
            let limit = if k.requires_sm90a { 227 } else { 163 } * 1024;
            assert!(k.dynamic_smem_bytes <= limit, "{}: {} bytes", k.name, k.dynamic_smem_bytes);
        }
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in KERNELS.iter().enumerate() {
            assert!(KERNELS[i + 1..].iter().all(|b| b.name != a.name));
        }
    }
}
