//! FlashAttention-2 kernels in Rust.
//!
//! The crate has two faces. Built for `nvptx64-nvidia-cuda` (by `cargo xtask build-ptx`) it is the
//! GPU code: the forward and backward kernels with their `extern "gpu-kernel"` entry points. Built
//! for the host it is the contract between host and kernels: the parameter block ([`params`]),
//! the tile configurations ([`traits`]), the list of entry points ([`registry`]) and the index,
//! tiling and masking math ([`tiling`], [`rotary`] for cache appends) that both sides use and that is unit-tested on the CPU.
//! The score step of every kernel ([`modifiers`]: softcap, ALiBi, sinks, dropout's Philox) is
//! shared the same way, so its arithmetic is tested on the CPU too.
//!
//! The GPU-only modules: `ptx` (all inline assembly), `tile` (the primitives), `forward` and
//! `backward` (the portable `mma.sync` kernels, sm_80 and up), `decode`, `append`, `entry`; and, only when the target
//! CPU is sm_90a, `warpgroup`, `forward_wgmma` and `backward_wgmma` (the `wgmma` kernels).
//! [`fingerprint`] exists on the host only. The panic handler traps.
#![no_std]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(
        abi_gpu_kernel,
        stdarch_nvptx,
        asm_experimental_arch,
        core_intrinsics,
        gpu_intrinsics,
        gpu_launch_sized_workgroup_mem
    )
)]
#![cfg_attr(target_arch = "nvptx64", allow(internal_features))]

#[cfg(not(target_arch = "nvptx64"))]
extern crate std;

pub mod modifiers;
pub mod params;
pub mod registry;
pub mod rotary;
pub mod tiling;
pub mod traits;

#[cfg(not(target_arch = "nvptx64"))]
pub mod fingerprint;

#[cfg(target_arch = "nvptx64")]
mod append;
#[cfg(target_arch = "nvptx64")]
mod backward;
#[cfg(all(target_arch = "nvptx64", target_feature = "sm_90a"))]
mod backward_wgmma;
#[cfg(target_arch = "nvptx64")]
mod decode;
#[cfg(target_arch = "nvptx64")]
mod entry;
#[cfg(target_arch = "nvptx64")]
mod forward;
#[cfg(all(target_arch = "nvptx64", target_feature = "sm_90a"))]
mod forward_wgmma;
#[cfg(target_arch = "nvptx64")]
mod ptx;
#[cfg(target_arch = "nvptx64")]
mod tile;
#[cfg(all(target_arch = "nvptx64", target_feature = "sm_90a"))]
mod warpgroup;

#[cfg(target_arch = "nvptx64")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Kernels are written so that no bounds check survives optimization; if one did and failed,
    // trapping makes the launch fail with CUDA_ERROR_LAUNCH_FAILED instead of writing garbage.
    // SAFETY: trapping aborts the kernel; nothing runs after it.
    unsafe { core::arch::nvptx::trap() }
}
