//! The `extern "gpu-kernel"` entry points: one per (kernel, dtype, configuration), each a thin
//! call into the generic kernel. Names match [`crate::registry::KERNELS`].

use crate::append::append_kv;
use crate::backward::{convert_dq, dropout_mask, flash_bwd, preprocess, reduce_kv_groups, sink_gradient};
use crate::decode::flash_decode;
use crate::forward::{combine_splits, flash_fwd};
use crate::params::{AppendParams, BwdParams, FwdParams};
use crate::tile::{Bf16, F16};
use crate::traits::{
    BwdHdim32, BwdHdim64, BwdHdim96, BwdHdim128, BwdHdim192, BwdHdim256, FwdHdim32, FwdHdim64, FwdHdim96, FwdHdim128,
    FwdHdim192, FwdHdim256,
};

macro_rules! entry {
    ($name:ident, $params:ty, $body:path) => {
        /// # Safety
        /// The host launches this with the registry's block size and shared memory on a
        /// parameter block it validated (see `flash_attn::launch`).
        // The parameter block is `#[repr(C)]` plain data; nvptx passes it as one `.param .b8[N]`
        // array, which is what the driver copies from the host. `build-ptx` checks N against
        // `size_of` for every entry point, so a change in the ABI fails the build.
        #[allow(improper_gpu_kernel_arg)]
        #[unsafe(no_mangle)]
        pub unsafe extern "gpu-kernel" fn $name(params: $params) {
            // SAFETY: forwarded from this entry point's contract.
            unsafe { $body(&params) }
        }
    };
}

/// A kernel's dense entry point, its `_mods` twin (score modifiers, dropout and sequence
/// layouts on) and its `_seq` twin (sequence layouts only).
macro_rules! pair {
    ($name:ident, $mods:ident, $seq:ident, $params:ty, $kernel:ident, $e:ty, $t:ty) => {
        entry!($name, $params, $kernel::<$e, $t, false, false>);
        entry!($mods, $params, $kernel::<$e, $t, true, true>);
        entry!($seq, $params, $kernel::<$e, $t, false, true>);
    };
}

pair!(
    flash_fwd_bf16_hdim96,
    flash_fwd_bf16_hdim96_mods,
    flash_fwd_bf16_hdim96_seq,
    FwdParams,
    flash_fwd,
    Bf16,
    FwdHdim96
);
pair!(
    flash_bwd_bf16_hdim96,
    flash_bwd_bf16_hdim96_mods,
    flash_bwd_bf16_hdim96_seq,
    BwdParams,
    flash_bwd,
    Bf16,
    BwdHdim96
);
pair!(flash_fwd_f16_hdim96, flash_fwd_f16_hdim96_mods, flash_fwd_f16_hdim96_seq, FwdParams, flash_fwd, F16, FwdHdim96);
pair!(flash_bwd_f16_hdim96, flash_bwd_f16_hdim96_mods, flash_bwd_f16_hdim96_seq, BwdParams, flash_bwd, F16, BwdHdim96);
pair!(
    flash_fwd_bf16_hdim192,
    flash_fwd_bf16_hdim192_mods,
    flash_fwd_bf16_hdim192_seq,
    FwdParams,
    flash_fwd,
    Bf16,
    FwdHdim192
);
pair!(
    flash_bwd_bf16_hdim192,
    flash_bwd_bf16_hdim192_mods,
    flash_bwd_bf16_hdim192_seq,
    BwdParams,
    flash_bwd,
    Bf16,
    BwdHdim192
);
pair!(
    flash_fwd_f16_hdim192,
    flash_fwd_f16_hdim192_mods,
    flash_fwd_f16_hdim192_seq,
    FwdParams,
    flash_fwd,
    F16,
    FwdHdim192
);
pair!(
    flash_bwd_f16_hdim192,
    flash_bwd_f16_hdim192_mods,
    flash_bwd_f16_hdim192_seq,
    BwdParams,
    flash_bwd,
    F16,
    BwdHdim192
);
pair!(
    flash_fwd_bf16_hdim256,
    flash_fwd_bf16_hdim256_mods,
    flash_fwd_bf16_hdim256_seq,
    FwdParams,
    flash_fwd,
    Bf16,
    FwdHdim256
);
pair!(
    flash_bwd_bf16_hdim256,
    flash_bwd_bf16_hdim256_mods,
    flash_bwd_bf16_hdim256_seq,
    BwdParams,
    flash_bwd,
    Bf16,
    BwdHdim256
);
pair!(
    flash_fwd_f16_hdim256,
    flash_fwd_f16_hdim256_mods,
    flash_fwd_f16_hdim256_seq,
    FwdParams,
    flash_fwd,
    F16,
    FwdHdim256
);
pair!(
    flash_bwd_f16_hdim256,
    flash_bwd_f16_hdim256_mods,
    flash_bwd_f16_hdim256_seq,
    BwdParams,
    flash_bwd,
    F16,
    BwdHdim256
);
pair!(
    flash_fwd_bf16_hdim32,
    flash_fwd_bf16_hdim32_mods,
    flash_fwd_bf16_hdim32_seq,
    FwdParams,
    flash_fwd,
    Bf16,
    FwdHdim32
);
pair!(flash_fwd_f16_hdim32, flash_fwd_f16_hdim32_mods, flash_fwd_f16_hdim32_seq, FwdParams, flash_fwd, F16, FwdHdim32);
pair!(
    flash_bwd_bf16_hdim32,
    flash_bwd_bf16_hdim32_mods,
    flash_bwd_bf16_hdim32_seq,
    BwdParams,
    flash_bwd,
    Bf16,
    BwdHdim32
);
pair!(flash_bwd_f16_hdim32, flash_bwd_f16_hdim32_mods, flash_bwd_f16_hdim32_seq, BwdParams, flash_bwd, F16, BwdHdim32);
pair!(
    flash_fwd_bf16_hdim64,
    flash_fwd_bf16_hdim64_mods,
    flash_fwd_bf16_hdim64_seq,
    FwdParams,
    flash_fwd,
    Bf16,
    FwdHdim64
);
pair!(
    flash_fwd_bf16_hdim128,
    flash_fwd_bf16_hdim128_mods,
    flash_fwd_bf16_hdim128_seq,
    FwdParams,
    flash_fwd,
    Bf16,
    FwdHdim128
);
pair!(flash_fwd_f16_hdim64, flash_fwd_f16_hdim64_mods, flash_fwd_f16_hdim64_seq, FwdParams, flash_fwd, F16, FwdHdim64);
pair!(
    flash_fwd_f16_hdim128,
    flash_fwd_f16_hdim128_mods,
    flash_fwd_f16_hdim128_seq,
    FwdParams,
    flash_fwd,
    F16,
    FwdHdim128
);
pair!(
    flash_bwd_bf16_hdim64,
    flash_bwd_bf16_hdim64_mods,
    flash_bwd_bf16_hdim64_seq,
    BwdParams,
    flash_bwd,
    Bf16,
    BwdHdim64
);
pair!(
    flash_bwd_bf16_hdim128,
    flash_bwd_bf16_hdim128_mods,
    flash_bwd_bf16_hdim128_seq,
    BwdParams,
    flash_bwd,
    Bf16,
    BwdHdim128
);
pair!(flash_bwd_f16_hdim64, flash_bwd_f16_hdim64_mods, flash_bwd_f16_hdim64_seq, BwdParams, flash_bwd, F16, BwdHdim64);
pair!(
    flash_bwd_f16_hdim128,
    flash_bwd_f16_hdim128_mods,
    flash_bwd_f16_hdim128_seq,
    BwdParams,
    flash_bwd,
    F16,
    BwdHdim128
);
#[cfg(target_feature = "sm_90a")]
mod hopper {
    use super::*;
    use crate::backward_wgmma::{flash_bwd_wgmma, flash_bwd_wgmma_split};
    use crate::forward_wgmma::{flash_fwd_wgmma, flash_fwd_wgmma_ws, fp8_transpose_v};
    use crate::traits::*;
    use crate::warpgroup::E4m3;

    pair!(
        flash_fwd_wgmma_bf16_hdim64,
        flash_fwd_wgmma_bf16_hdim64_mods,
        flash_fwd_wgmma_bf16_hdim64_seq,
        FwdParams,
        flash_fwd_wgmma,
        Bf16,
        FwdWgmmaHdim64
    );
    pair!(
        flash_fwd_wgmma_f16_hdim64,
        flash_fwd_wgmma_f16_hdim64_mods,
        flash_fwd_wgmma_f16_hdim64_seq,
        FwdParams,
        flash_fwd_wgmma,
        F16,
        FwdWgmmaHdim64
    );
    pair!(
        flash_fwd_wgmma_bf16_hdim128,
        flash_fwd_wgmma_bf16_hdim128_mods,
        flash_fwd_wgmma_bf16_hdim128_seq,
        FwdParams,
        flash_fwd_wgmma,
        Bf16,
        FwdWgmmaHdim128
    );
    pair!(
        flash_fwd_wgmma_f16_hdim128,
        flash_fwd_wgmma_f16_hdim128_mods,
        flash_fwd_wgmma_f16_hdim128_seq,
        FwdParams,
        flash_fwd_wgmma,
        F16,
        FwdWgmmaHdim128
    );
    pair!(
        flash_fwd_wgmma_bf16_hdim96,
        flash_fwd_wgmma_bf16_hdim96_mods,
        flash_fwd_wgmma_bf16_hdim96_seq,
        FwdParams,
        flash_fwd_wgmma,
        Bf16,
        FwdWgmmaHdim96
    );
    pair!(
        flash_fwd_wgmma_f16_hdim96,
        flash_fwd_wgmma_f16_hdim96_mods,
        flash_fwd_wgmma_f16_hdim96_seq,
        FwdParams,
        flash_fwd_wgmma,
        F16,
        FwdWgmmaHdim96
    );
    pair!(
        flash_bwd_wgmma_bf16_hdim96,
        flash_bwd_wgmma_bf16_hdim96_mods,
        flash_bwd_wgmma_bf16_hdim96_seq,
        BwdParams,
        flash_bwd_wgmma,
        Bf16,
        BwdWgmmaHdim96
    );
    pair!(
        flash_bwd_wgmma_f16_hdim96,
        flash_bwd_wgmma_f16_hdim96_mods,
        flash_bwd_wgmma_f16_hdim96_seq,
        BwdParams,
        flash_bwd_wgmma,
        F16,
        BwdWgmmaHdim96
    );
    pair!(
        flash_bwd_wgmma_bf16_hdim32,
        flash_bwd_wgmma_bf16_hdim32_mods,
        flash_bwd_wgmma_bf16_hdim32_seq,
        BwdParams,
        flash_bwd_wgmma,
        Bf16,
        BwdWgmmaHdim32
    );
    pair!(
        flash_bwd_wgmma_f16_hdim32,
        flash_bwd_wgmma_f16_hdim32_mods,
        flash_bwd_wgmma_f16_hdim32_seq,
        BwdParams,
        flash_bwd_wgmma,
        F16,
        BwdWgmmaHdim32
    );
    pair!(
        flash_fwd_wgmma_bf16_hdim192,
        flash_fwd_wgmma_bf16_hdim192_mods,
        flash_fwd_wgmma_bf16_hdim192_seq,
        FwdParams,
        flash_fwd_wgmma,
        Bf16,
        FwdWgmmaHdim192
    );
    pair!(
        flash_fwd_wgmma_f16_hdim192,
        flash_fwd_wgmma_f16_hdim192_mods,
        flash_fwd_wgmma_f16_hdim192_seq,
        FwdParams,
        flash_fwd_wgmma,
        F16,
        FwdWgmmaHdim192
    );
    pair!(
        flash_fwd_wgmma_bf16_hdim256,
        flash_fwd_wgmma_bf16_hdim256_mods,
        flash_fwd_wgmma_bf16_hdim256_seq,
        FwdParams,
        flash_fwd_wgmma,
        Bf16,
        FwdWgmmaHdim256
    );
    pair!(
        flash_fwd_wgmma_f16_hdim256,
        flash_fwd_wgmma_f16_hdim256_mods,
        flash_fwd_wgmma_f16_hdim256_seq,
        FwdParams,
        flash_fwd_wgmma,
        F16,
        FwdWgmmaHdim256
    );
    pair!(
        flash_bwd_wgmma_bf16_hdim64,
        flash_bwd_wgmma_bf16_hdim64_mods,
        flash_bwd_wgmma_bf16_hdim64_seq,
        BwdParams,
        flash_bwd_wgmma,
        Bf16,
        BwdWgmmaHdim64
    );
    pair!(
        flash_bwd_wgmma_f16_hdim64,
        flash_bwd_wgmma_f16_hdim64_mods,
        flash_bwd_wgmma_f16_hdim64_seq,
        BwdParams,
        flash_bwd_wgmma,
        F16,
        BwdWgmmaHdim64
    );
    pair!(
        flash_bwd_wgmma_bf16_hdim128,
        flash_bwd_wgmma_bf16_hdim128_mods,
        flash_bwd_wgmma_bf16_hdim128_seq,
        BwdParams,
        flash_bwd_wgmma,
        Bf16,
        BwdWgmmaHdim128
    );
    pair!(
        flash_bwd_wgmma_f16_hdim128,
        flash_bwd_wgmma_f16_hdim128_mods,
        flash_bwd_wgmma_f16_hdim128_seq,
        BwdParams,
        flash_bwd_wgmma,
        F16,
        BwdWgmmaHdim128
    );
    pair!(
        flash_bwd_wgmma_bf16_hdim256,
        flash_bwd_wgmma_bf16_hdim256_mods,
        flash_bwd_wgmma_bf16_hdim256_seq,
        BwdParams,
        flash_bwd_wgmma_split,
        Bf16,
        BwdWgmmaHdim256
    );
    pair!(
        flash_bwd_wgmma_f16_hdim256,
        flash_bwd_wgmma_f16_hdim256_mods,
        flash_bwd_wgmma_f16_hdim256_seq,
        BwdParams,
        flash_bwd_wgmma_split,
        F16,
        BwdWgmmaHdim256
    );
    pair!(
        flash_bwd_wgmma_bf16_hdim192,
        flash_bwd_wgmma_bf16_hdim192_mods,
        flash_bwd_wgmma_bf16_hdim192_seq,
        BwdParams,
        flash_bwd_wgmma_split,
        Bf16,
        BwdWgmmaHdim192
    );
    pair!(
        flash_bwd_wgmma_f16_hdim192,
        flash_bwd_wgmma_f16_hdim192_mods,
        flash_bwd_wgmma_f16_hdim192_seq,
        BwdParams,
        flash_bwd_wgmma_split,
        F16,
        BwdWgmmaHdim192
    );
    pair!(
        flash_fwd_wgmma_ws_bf16_hdim128,
        flash_fwd_wgmma_ws_bf16_hdim128_mods,
        flash_fwd_wgmma_ws_bf16_hdim128_seq,
        FwdParams,
        flash_fwd_wgmma_ws,
        Bf16,
        FwdWgmmaWsHdim128
    );
    pair!(
        flash_fwd_wgmma_ws_f16_hdim128,
        flash_fwd_wgmma_ws_f16_hdim128_mods,
        flash_fwd_wgmma_ws_f16_hdim128_seq,
        FwdParams,
        flash_fwd_wgmma_ws,
        F16,
        FwdWgmmaWsHdim128
    );
    pair!(
        flash_fwd_wgmma_ws_bf16_hdim96,
        flash_fwd_wgmma_ws_bf16_hdim96_mods,
        flash_fwd_wgmma_ws_bf16_hdim96_seq,
        FwdParams,
        flash_fwd_wgmma_ws,
        Bf16,
        FwdWgmmaWsHdim96
    );
    pair!(
        flash_fwd_wgmma_ws_f16_hdim96,
        flash_fwd_wgmma_ws_f16_hdim96_mods,
        flash_fwd_wgmma_ws_f16_hdim96_seq,
        FwdParams,
        flash_fwd_wgmma_ws,
        F16,
        FwdWgmmaWsHdim96
    );
    // No `_mods` twin: with every modifier's registers it spills past the budget; the
    // `_mods` calls at head_dim 256 run `flash_fwd_wgmma_bf16_hdim256_mods`.
    entry!(flash_fwd_wgmma_ws_bf16_hdim256, FwdParams, flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsHdim256, false, false>);
    entry!(flash_fwd_wgmma_ws_bf16_hdim256_seq, FwdParams, flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsHdim256, false, true>);
    // No `_mods` twin: with every modifier's registers it spills past the budget; the
    // `_mods` calls at head_dim 256 run `flash_fwd_wgmma_f16_hdim256_mods`.
    entry!(flash_fwd_wgmma_ws_f16_hdim256, FwdParams, flash_fwd_wgmma_ws::<F16, FwdWgmmaWsHdim256, false, false>);
    entry!(flash_fwd_wgmma_ws_f16_hdim256_seq, FwdParams, flash_fwd_wgmma_ws::<F16, FwdWgmmaWsHdim256, false, true>);
    entry!(
        flash_fwd_wgmma_ws_n64_bf16_hdim64,
        FwdParams,
        flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsHdim64N64, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_pp_bf16_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsPingpongHdim128, false, false>
    );
    entry!(flash_fwd_wgmma_bf16_hdim128_sync, FwdParams, flash_fwd_wgmma::<Bf16, FwdWgmmaHdim128Sync, false, false>);
    // v30 candidates: the persistent warp-specialized forward (dense calls).
    entry!(
        flash_fwd_wgmma_ws_pe_bf16_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsPersistentHdim128, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_pe_f16_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<F16, FwdWgmmaWsPersistentHdim128, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_pe40_bf16_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsPersistentP40Hdim128, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_pe40_f16_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<F16, FwdWgmmaWsPersistentP40Hdim128, false, false>
    );
    entry!(flash_fwd_wgmma_ws_w2_bf16_hdim64, FwdParams, flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsHdim64W2, false, false>);
    entry!(
        flash_fwd_wgmma_ws_pe40_bf16_hdim64,
        FwdParams,
        flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsPersistentHdim64, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_pe40_f16_hdim64,
        FwdParams,
        flash_fwd_wgmma_ws::<F16, FwdWgmmaWsPersistentHdim64, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_pe40q_bf16_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsPersistentP40OqHdim128, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_pe_bf16_hdim256,
        FwdParams,
        flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsPersistentHdim256, false, false>
    );
    entry!(flash_bwd_wgmma_bf16_hdim64_narrow, BwdParams, flash_bwd_wgmma::<Bf16, BwdWgmmaHdim64Narrow, false, false>);
    entry!(flash_bwd_wgmma_bf16_hdim128_sync, BwdParams, flash_bwd_wgmma::<Bf16, BwdWgmmaHdim128Sync, false, false>);
    // v27 candidates: the warp-specialized backward (a producer warpgroup, mbarrier-tracked stages).
    pair!(
        flash_bwd_wgmma_ws_bf16_hdim32,
        flash_bwd_wgmma_ws_bf16_hdim32_mods,
        flash_bwd_wgmma_ws_bf16_hdim32_seq,
        BwdParams,
        flash_bwd_wgmma,
        Bf16,
        BwdWgmmaWsHdim32
    );
    pair!(
        flash_bwd_wgmma_ws_f16_hdim32,
        flash_bwd_wgmma_ws_f16_hdim32_mods,
        flash_bwd_wgmma_ws_f16_hdim32_seq,
        BwdParams,
        flash_bwd_wgmma,
        F16,
        BwdWgmmaWsHdim32
    );
    pair!(
        flash_bwd_wgmma_ws_bf16_hdim64,
        flash_bwd_wgmma_ws_bf16_hdim64_mods,
        flash_bwd_wgmma_ws_bf16_hdim64_seq,
        BwdParams,
        flash_bwd_wgmma,
        Bf16,
        BwdWgmmaWsHdim64
    );
    pair!(
        flash_bwd_wgmma_ws_f16_hdim64,
        flash_bwd_wgmma_ws_f16_hdim64_mods,
        flash_bwd_wgmma_ws_f16_hdim64_seq,
        BwdParams,
        flash_bwd_wgmma,
        F16,
        BwdWgmmaWsHdim64
    );
    pair!(
        flash_bwd_wgmma_ws_bf16_hdim96,
        flash_bwd_wgmma_ws_bf16_hdim96_mods,
        flash_bwd_wgmma_ws_bf16_hdim96_seq,
        BwdParams,
        flash_bwd_wgmma,
        Bf16,
        BwdWgmmaWsHdim96
    );
    pair!(
        flash_bwd_wgmma_ws_f16_hdim96,
        flash_bwd_wgmma_ws_f16_hdim96_mods,
        flash_bwd_wgmma_ws_f16_hdim96_seq,
        BwdParams,
        flash_bwd_wgmma,
        F16,
        BwdWgmmaWsHdim96
    );
    pair!(
        flash_bwd_wgmma_ws_bf16_hdim128,
        flash_bwd_wgmma_ws_bf16_hdim128_mods,
        flash_bwd_wgmma_ws_bf16_hdim128_seq,
        BwdParams,
        flash_bwd_wgmma,
        Bf16,
        BwdWgmmaWsHdim128
    );
    pair!(
        flash_bwd_wgmma_ws_f16_hdim128,
        flash_bwd_wgmma_ws_f16_hdim128_mods,
        flash_bwd_wgmma_ws_f16_hdim128_seq,
        BwdParams,
        flash_bwd_wgmma,
        F16,
        BwdWgmmaWsHdim128
    );
    entry!(flash_bwd_wgmma_ws_ds2_bf16_hdim64, BwdParams, flash_bwd_wgmma::<Bf16, BwdWgmmaWsDs2Hdim64, false, false>);
    // v38: the head_dim 64 backward with its score GEMMs issued together, and the late output wait.
    entry!(
        flash_bwd_wgmma_ws_pl_bf16_hdim64,
        BwdParams,
        flash_bwd_wgmma::<Bf16, BwdWgmmaWsPipelinedHdim64, false, false>
    );
    entry!(
        flash_bwd_wgmma_ws_plw_bf16_hdim64,
        BwdParams,
        flash_bwd_wgmma::<Bf16, BwdWgmmaWsPipelinedLateHdim64, false, false>
    );
    entry!(flash_bwd_wgmma_ws_ds2_bf16_hdim128, BwdParams, flash_bwd_wgmma::<Bf16, BwdWgmmaWsDs2Hdim128, false, false>);
    // v29: the deferred dQ GEMM (one barrier a step), two schedules; v29b: per-warp dQ
    // reductions alone.
    entry!(flash_bwd_wgmma_dq_bf16_hdim128, BwdParams, flash_bwd_wgmma::<Bf16, BwdWgmmaDeferredHdim128, false, false>);
    entry!(
        flash_bwd_wgmma_dqb_bf16_hdim128,
        BwdParams,
        flash_bwd_wgmma::<Bf16, BwdWgmmaDeferredBeforeDpHdim128, false, false>
    );
    entry!(flash_bwd_wgmma_wr_bf16_hdim128, BwdParams, flash_bwd_wgmma::<Bf16, BwdWgmmaWarpReductions, false, false>);
    entry!(
        flash_bwd_wgmma_1s_bf16_hdim192,
        BwdParams,
        flash_bwd_wgmma_split::<Bf16, BwdWgmmaHdim192OneStage, false, false>
    );
    entry!(
        flash_bwd_wgmma_late_bf16_hdim256,
        BwdParams,
        flash_bwd_wgmma_split::<Bf16, BwdWgmmaLateHdim256, false, false>
    );
    // FP8 (e4m3) forward: the warp-specialized kernel on Vᵀ, and the transpose that makes Vᵀ.
    entry!(flash_fwd_wgmma_ws_fp8_hdim128, FwdParams, flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8Hdim128, false, false>);
    entry!(flash_fwd_wgmma_ws_fp8_hdim256, FwdParams, flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8Hdim256, false, false>);
    entry!(
        flash_fwd_wgmma_ws_pp_fp8_hdim256,
        FwdParams,
        flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8PingpongHdim256, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_s4_fp8_hdim256,
        FwdParams,
        flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8Stages4Hdim256, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_pps4_fp8_hdim256,
        FwdParams,
        flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8PingpongStages4Hdim256, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_pp_fp8_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8PingpongHdim128, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_s4_fp8_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8Stages4Hdim128, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_n192_fp8_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8N192Hdim128, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_px1_fp8_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8Poly1Hdim128, false, false>
    );
    entry!(
        flash_fwd_wgmma_ws_px2_fp8_hdim128,
        FwdParams,
        flash_fwd_wgmma_ws::<E4m3, FwdWgmmaWsFp8Poly2Hdim128, false, false>
    );
    // v37: the head_dim 128 `_mods` kernels without the sequence layouts, for dense calls with
    // modifiers (`Flavor::DenseModifiers`).
    entry!(flash_bwd_wgmma_bf16_hdim128_modsd, BwdParams, flash_bwd_wgmma::<Bf16, BwdWgmmaHdim128, true, false>);
    entry!(flash_bwd_wgmma_f16_hdim128_modsd, BwdParams, flash_bwd_wgmma::<F16, BwdWgmmaHdim128, true, false>);
    entry!(
        flash_fwd_wgmma_ws_bf16_hdim128_modsd,
        FwdParams,
        flash_fwd_wgmma_ws::<Bf16, FwdWgmmaWsHdim128, true, false>
    );
    entry!(flash_fwd_wgmma_ws_f16_hdim128_modsd, FwdParams, flash_fwd_wgmma_ws::<F16, FwdWgmmaWsHdim128, true, false>);
    entry!(flash_fp8_transpose_v, FwdParams, fp8_transpose_v);
}

entry!(flash_bwd_preprocess_bf16, BwdParams, preprocess::<Bf16>);
entry!(flash_bwd_preprocess_f16, BwdParams, preprocess::<F16>);
entry!(flash_bwd_convert_dq_bf16, BwdParams, convert_dq::<Bf16>);
entry!(flash_bwd_convert_dq_f16, BwdParams, convert_dq::<F16>);
entry!(flash_bwd_sink_gradient, BwdParams, sink_gradient);
entry!(flash_dropout_mask, FwdParams, dropout_mask);
entry!(flash_fwd_combine_bf16, FwdParams, combine_splits::<Bf16>);
entry!(flash_fwd_combine_f16, FwdParams, combine_splits::<F16>);
entry!(flash_kv_append_bf16, AppendParams, append_kv::<Bf16>);
entry!(flash_kv_append_f16, AppendParams, append_kv::<F16>);
entry!(flash_bwd_reduce_kv_groups_bf16, BwdParams, reduce_kv_groups::<Bf16>);
entry!(flash_bwd_reduce_kv_groups_f16, BwdParams, reduce_kv_groups::<F16>);
entry!(flash_fwd_decode_bf16_hdim32, FwdParams, flash_decode::<Bf16, 32, 2>);
entry!(flash_fwd_decode_bf16_hdim64, FwdParams, flash_decode::<Bf16, 64, 2>);
entry!(flash_fwd_decode_bf16_hdim96, FwdParams, flash_decode::<Bf16, 96, 2>);
entry!(flash_fwd_decode_bf16_hdim128, FwdParams, flash_decode::<Bf16, 128, 2>);
entry!(flash_fwd_decode_bf16_hdim192, FwdParams, flash_decode::<Bf16, 192, 2>);
entry!(flash_fwd_decode_bf16_hdim256, FwdParams, flash_decode::<Bf16, 256, 2>);
entry!(flash_fwd_decode_f16_hdim32, FwdParams, flash_decode::<F16, 32, 2>);
entry!(flash_fwd_decode_f16_hdim64, FwdParams, flash_decode::<F16, 64, 2>);
entry!(flash_fwd_decode_f16_hdim96, FwdParams, flash_decode::<F16, 96, 2>);
entry!(flash_fwd_decode_f16_hdim128, FwdParams, flash_decode::<F16, 128, 2>);
entry!(flash_fwd_decode_f16_hdim192, FwdParams, flash_decode::<F16, 192, 2>);
entry!(flash_fwd_decode_f16_hdim256, FwdParams, flash_decode::<F16, 256, 2>);
#[cfg(target_feature = "sm_90a")]
mod decode_sm90 {
    use super::*;
    entry!(flash_fwd_decode_bf16_hdim32_sm90, FwdParams, flash_decode::<Bf16, 32, 3>);
    entry!(flash_fwd_decode_bf16_hdim64_sm90, FwdParams, flash_decode::<Bf16, 64, 3>);
    entry!(flash_fwd_decode_bf16_hdim96_sm90, FwdParams, flash_decode::<Bf16, 96, 3>);
    entry!(flash_fwd_decode_bf16_hdim128_sm90, FwdParams, flash_decode::<Bf16, 128, 3>);
    entry!(flash_fwd_decode_bf16_hdim192_sm90, FwdParams, flash_decode::<Bf16, 192, 3>);
    entry!(flash_fwd_decode_bf16_hdim256_sm90, FwdParams, flash_decode::<Bf16, 256, 3>);
    entry!(flash_fwd_decode_f16_hdim32_sm90, FwdParams, flash_decode::<F16, 32, 3>);
    entry!(flash_fwd_decode_f16_hdim64_sm90, FwdParams, flash_decode::<F16, 64, 3>);
    entry!(flash_fwd_decode_f16_hdim96_sm90, FwdParams, flash_decode::<F16, 96, 3>);
    entry!(flash_fwd_decode_f16_hdim128_sm90, FwdParams, flash_decode::<F16, 128, 3>);
    entry!(flash_fwd_decode_f16_hdim192_sm90, FwdParams, flash_decode::<F16, 192, 3>);
    entry!(flash_fwd_decode_f16_hdim256_sm90, FwdParams, flash_decode::<F16, 256, 3>);
}
