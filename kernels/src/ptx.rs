//! Inline PTX, one small named function per instruction. Kernels call these, never `asm!`.
//!
//! Shared-memory operands are 32-bit `.shared` window addresses (see [`shared_address`]).

use core::arch::asm;
use core::arch::nvptx;

#[cfg(target_feature = "sm_90a")]
pub mod wgmma;

#[inline(always)]
pub fn thread_idx() -> u32 {
    // SAFETY: reading a special register has no preconditions.
    unsafe { nvptx::_thread_idx_x() }
}

#[inline(always)]
pub fn block_idx() -> (u32, u32, u32) {
    // SAFETY: reading special registers has no preconditions.
    unsafe { (nvptx::_block_idx_x(), nvptx::_block_idx_y(), nvptx::_block_idx_z()) }
}

/// Barrier over the whole thread block. Every thread of the block must reach it.
#[inline(always)]
pub fn sync_threads() {
    // SAFETY: the kernels call this in block-uniform control flow only.
    unsafe { nvptx::_syncthreads() }
}

/// Barrier over the 32 lanes of this warp (orders their shared-memory accesses).
#[inline(always)]
pub fn sync_warp() {
    // SAFETY: all lanes of the warp execute it (full member mask).
    unsafe { asm!("bar.warp.sync 0xffffffff;", options(nostack)) }
}

/// Whether `x` holds in any lane of the warp (all 32 lanes must call this together).
#[inline(always)]
pub fn warp_any(x: bool) -> bool {
    let y: u32;
    // SAFETY: register-only warp vote with the full member mask.
    unsafe {
        asm!(
            "{{ .reg .pred p, q; setp.ne.u32 p, {1}, 0; vote.sync.any.pred q, p, 0xffffffff; selp.u32 {0}, 1, 0, q; }}",
            out(reg32) y, in(reg32) x as u32, options(nomem, nostack)
        )
    };
    y != 0
}

/// One 16-byte chunk: `cp.async`, `ldmatrix` rows and vector accesses need 16-byte alignment, and
/// typing the dynamic shared memory with it declares that alignment in the PTX.
#[repr(C, align(16))]
pub struct Chunk([u32; 4]);

/// 32-bit shared-window address of the launch-sized dynamic shared memory.
#[inline(always)]
pub fn dynamic_smem_base() -> u32 {
    let generic = core::intrinsics::gpu::gpu_launch_sized_workgroup_mem::<Chunk>();
    shared_address(generic as *const u8)
}

#[inline(always)]
pub fn shared_address(generic: *const u8) -> u32 {
    let shared: u64;
    // SAFETY: `cvta.to.shared` only converts an address; the caller passes a shared-memory pointer.
    unsafe { asm!("cvta.to.shared.u64 {0}, {1};", out(reg64) shared, in(reg64) generic as u64) };
    shared as u32
}

/// `D += A·B` for one 16×8×16 tile: A row-major, B column-major, bf16 inputs, f32 accumulators.
#[inline(always)]
pub fn mma_m16n8k16_bf16(d: &mut [f32; 4], a: &[u32; 4], b: &[u32; 2]) {
    // SAFETY: register-only warp-wide instruction; all 32 lanes execute it together.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{0}, {1}, {2}, {3}}};",
            inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg32) b[0], in(reg32) b[1],
        )
    }
}

/// As [`mma_m16n8k16_bf16`] with f16 inputs.
#[inline(always)]
pub fn mma_m16n8k16_f16(d: &mut [f32; 4], a: &[u32; 4], b: &[u32; 2]) {
    // SAFETY: register-only warp-wide instruction; all 32 lanes execute it together.
    unsafe {
        asm!(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{{0}, {1}, {2}, {3}}}, {{{4}, {5}, {6}, {7}}}, {{{8}, {9}}}, {{{0}, {1}, {2}, {3}}};",
            inout(reg32) d[0], inout(reg32) d[1], inout(reg32) d[2], inout(reg32) d[3],
            in(reg32) a[0], in(reg32) a[1], in(reg32) a[2], in(reg32) a[3],
            in(reg32) b[0], in(reg32) b[1],
        )
    }
}

/// Four 8×8 matrices of 16-bit elements from shared memory; lane `l` gives the row address for
/// matrix `l / 8`, row `l % 8`.
///
/// # Safety
/// `addr` is a 16-byte aligned shared address inside the block's allocation, in every lane.
#[inline(always)]
pub unsafe fn ldmatrix_x4(addr: u32) -> [u32; 4] {
    let (r0, r1, r2, r3): (u32, u32, u32, u32);
    // SAFETY: the caller guarantees the address is valid shared memory.
    unsafe {
        asm!(
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) r0, out(reg32) r1, out(reg32) r2, out(reg32) r3, in(reg32) addr,
            options(nostack),
        )
    };
    [r0, r1, r2, r3]
}

/// As [`ldmatrix_x4`], each matrix transposed.
///
/// # Safety
/// As [`ldmatrix_x4`].
#[inline(always)]
pub unsafe fn ldmatrix_x4_trans(addr: u32) -> [u32; 4] {
    let (r0, r1, r2, r3): (u32, u32, u32, u32);
    // SAFETY: the caller guarantees the address is valid shared memory.
    unsafe {
        asm!(
            "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{0}, {1}, {2}, {3}}}, [{4}];",
            out(reg32) r0, out(reg32) r1, out(reg32) r2, out(reg32) r3, in(reg32) addr,
            options(nostack),
        )
    };
    [r0, r1, r2, r3]
}

/// Asynchronous 16-byte copy global → shared, bypassing L1. Bytes past `src_bytes` (0 or 16)
/// are zero-filled, so rows beyond a sequence's end arrive as zeros without a read.
///
/// # Safety
/// `dst` is a 16-byte aligned shared address of this block; `src` is a 16-byte aligned global
/// address, readable for `src_bytes` bytes.
#[inline(always)]
pub unsafe fn cp_async_16(dst: u32, src: *const u8, src_bytes: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!(
            "cp.async.cg.shared.global [{0}], [{1}], 16, {2};",
            in(reg32) dst, in(reg64) src as u64, in(reg32) src_bytes,
            options(nostack),
        )
    }
}

/// Asynchronous 4-byte copy global → shared (through L1); zero-filled when `src_bytes` is 0.
///
/// # Safety
/// As [`cp_async_16`] with 4-byte alignment and size.
#[inline(always)]
pub unsafe fn cp_async_4(dst: u32, src: *const u8, src_bytes: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!(
            "cp.async.ca.shared.global [{0}], [{1}], 4, {2};",
            in(reg32) dst, in(reg64) src as u64, in(reg32) src_bytes,
            options(nostack),
        )
    }
}

/// Close the group of `cp.async` copies issued so far by this thread.
#[inline(always)]
pub fn cp_async_commit() {
    // SAFETY: no operands.
    unsafe { asm!("cp.async.commit_group;", options(nostack)) }
}

/// Wait until every `cp.async` group of this thread has landed. Other threads' copies become
/// visible after a following [`sync_threads`].
#[inline(always)]
pub fn cp_async_wait_all() {
    // SAFETY: no operands.
    unsafe { asm!("cp.async.wait_group 0;", options(nostack)) }
}

/// `x`, hidden from the optimizer. Fragment addresses derived from the lane index are cheap to
/// recompute but, left visible, LLVM hoists every one of them out of the tile loop and keeps them
/// all live (one register per fragment load); renewing the lane index through this once per tile
/// keeps them local to the iteration.
#[inline(always)]
pub fn opaque(x: u32) -> u32 {
    let y: u32;
    // SAFETY: a register move.
    unsafe { asm!("mov.b32 {0}, {1};", out(reg32) y, in(reg32) x, options(nomem, nostack)) };
    y
}

/// Make this thread's completed shared-memory writes (plain stores and `cp.async`) visible to
/// the async proxy, which `wgmma` reads shared memory through; a barrier after it extends that
/// to the other threads' reads.
#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
#[inline(always)]
pub fn fence_proxy_async_shared() {
    // SAFETY: a memory fence; no operands.
    unsafe { asm!("fence.proxy.async.shared::cta;", options(nostack)) }
}

/// `*addr` read with acquire semantics at GPU scope (sees everything the releasing writer saw).
///
/// # Safety
/// `addr` is a valid, 4-byte aligned global address.
#[inline(always)]
pub unsafe fn ld_acquire_gpu_u32(addr: *const u32) -> u32 {
    let v: u32;
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("ld.acquire.gpu.global.u32 {0}, [{1}];", out(reg32) v, in(reg64) addr as u64, options(nostack)) };
    v
}

/// `*addr += 1` with release semantics at GPU scope, after a GPU-scope fence: everything this
/// thread wrote or saw (through a preceding barrier, everything its block wrote) is visible to
/// whoever acquires the new value.
///
/// # Safety
/// `addr` is a valid, 4-byte aligned global address.
#[inline(always)]
pub unsafe fn fence_and_release_increment(addr: *mut u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!(
            "fence.acq_rel.gpu;",
            "red.release.gpu.global.add.u32 [{0}], 1;",
            in(reg64) addr as u64,
            options(nostack),
        )
    }
}

/// Wait until at most one `cp.async` group of this thread is still in flight (the newest).
#[inline(always)]
pub fn cp_async_wait_all_but_one() {
    // SAFETY: no operands.
    unsafe { asm!("cp.async.wait_group 1;", options(nostack)) }
}

/// 2^x, the hardware approximation (relative error about 2^-22), flushing denormals.
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    let y: f32;
    // SAFETY: register-only arithmetic.
    unsafe { asm!("ex2.approx.ftz.f32 {0}, {1};", out(reg32) y, in(reg32) x, options(pure, nomem, nostack)) };
    y
}

/// log2(x), the hardware approximation.
#[inline(always)]
pub fn log2(x: f32) -> f32 {
    let y: f32;
    // SAFETY: register-only arithmetic.
    unsafe { asm!("lg2.approx.ftz.f32 {0}, {1};", out(reg32) y, in(reg32) x, options(pure, nomem, nostack)) };
    y
}

/// 1/x, the hardware approximation (about 1 ulp), flushing denormals.
#[inline(always)]
pub fn rcp(x: f32) -> f32 {
    let y: f32;
    // SAFETY: register-only arithmetic.
    unsafe { asm!("rcp.approx.ftz.f32 {0}, {1};", out(reg32) y, in(reg32) x, options(pure, nomem, nostack)) };
    y
}

/// Exchange with the lane whose index differs in the bits of `mask` (butterfly), whole warp.
#[inline(always)]
pub fn shfl_xor(x: f32, mask: u32) -> f32 {
    let y: f32;
    // SAFETY: all 32 lanes execute the shuffle together (full member mask).
    unsafe {
        asm!("shfl.sync.bfly.b32 {0}, {1}, {2}, 0x1f, 0xffffffff;", out(reg32) y, in(reg32) x, in(reg32) mask, options(nomem, nostack))
    };
    y
}

/// Two f32 → packed bf16x2 (round to nearest even); `lo` lands in the low half.
#[inline(always)]
pub fn pack_bf16x2(lo: f32, hi: f32) -> u32 {
    let d: u32;
    // SAFETY: register-only conversion.
    unsafe {
        asm!("cvt.rn.bf16x2.f32 {0}, {1}, {2};", out(reg32) d, in(reg32) hi, in(reg32) lo, options(pure, nomem, nostack))
    };
    d
}

/// Two f32 → packed f16x2 (round to nearest even); `lo` lands in the low half.
#[inline(always)]
pub fn pack_f16x2(lo: f32, hi: f32) -> u32 {
    let d: u32;
    // SAFETY: register-only conversion.
    unsafe {
        asm!("cvt.rn.f16x2.f32 {0}, {1}, {2};", out(reg32) d, in(reg32) hi, in(reg32) lo, options(pure, nomem, nostack))
    };
    d
}

/// f16 bits → f32.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let y: f32;
    // SAFETY: register-only conversion.
    unsafe { asm!("cvt.f32.f16 {0}, {1};", out(reg32) y, in(reg16) bits, options(pure, nomem, nostack)) };
    y
}

/// 32-bit store to shared memory.
///
/// # Safety
/// `addr` is a 4-byte aligned shared address of this block.
#[inline(always)]
pub unsafe fn st_shared_u32(addr: u32, value: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("st.shared.b32 [{0}], {1};", in(reg32) addr, in(reg32) value, options(nostack)) }
}

/// 16-byte load from shared memory.
///
/// # Safety
/// `addr` is a 16-byte aligned shared address of this block.
#[inline(always)]
pub unsafe fn ld_shared_v4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("ld.shared.v4.b32 {{{0}, {1}, {2}, {3}}}, [{4}];", out(reg32) a, out(reg32) b, out(reg32) c, out(reg32) d, in(reg32) addr, options(nostack))
    };
    [a, b, c, d]
}

/// 16-byte store to global memory.
///
/// # Safety
/// `ptr` is a 16-byte aligned, writable global address.
#[inline(always)]
pub unsafe fn st_global_v4(ptr: *mut u8, v: [u32; 4]) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("st.global.v4.b32 [{0}], {{{1}, {2}, {3}, {4}}};", in(reg64) ptr as u64, in(reg32) v[0], in(reg32) v[1], in(reg32) v[2], in(reg32) v[3], options(nostack))
    }
}

/// 32-bit float load from shared memory.
///
/// # Safety
/// `addr` is a 4-byte aligned shared address of this block.
#[inline(always)]
pub unsafe fn ld_shared_f32(addr: u32) -> f32 {
    let y: f32;
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("ld.shared.f32 {0}, [{1}];", out(reg32) y, in(reg32) addr, options(readonly, nostack)) };
    y
}

/// `addr[0] += a; addr[1] += b` in global memory. On sm_90 one vector reduction covers both, so
/// a quad's reductions fill whole 32-byte sectors; older targets issue two scalar ones.
///
/// # Safety
/// `addr` is an 8-byte aligned pair of writable global f32.
#[inline(always)]
pub unsafe fn red_add_f32x2(addr: *mut f32, a: f32, b: f32) {
    #[cfg(target_feature = "sm_90")]
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("red.global.add.v2.f32 [{0}], {{{1}, {2}}};", in(reg64) addr as u64, in(reg32) a, in(reg32) b, options(nostack))
    }
    #[cfg(not(target_feature = "sm_90"))]
    // SAFETY: guaranteed by the caller.
    unsafe {
        red_add_f32(addr, a);
        red_add_f32(addr.wrapping_add(1), b);
    }
}

/// `*addr += value` in global memory, without returning the old value.
/// (The sm_90 build reaches only the vector form above.)
///
/// # Safety
/// `addr` is a 4-byte aligned, writable global f32.
#[cfg_attr(target_feature = "sm_90", allow(dead_code))]
#[inline(always)]
pub unsafe fn red_add_f32(addr: *mut f32, value: f32) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("red.global.add.f32 [{0}], {1};", in(reg64) addr as u64, in(reg32) value, options(nostack)) }
}

/// a·b + c rounded once (the compiler never contracts a multiply and an add on its own).
#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    let y: f32;
    // SAFETY: register-only arithmetic.
    unsafe {
        asm!("fma.rn.f32 {0}, {1}, {2}, {3};", out(reg32) y, in(reg32) a, in(reg32) b, in(reg32) c, options(pure, nomem, nostack))
    };
    y
}

/// Store two f32 to 8-byte aligned shared memory.
///
/// # Safety
/// `addr` is an 8-byte aligned shared-memory address inside the block's allocation.
#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
#[inline(always)]
pub unsafe fn st_shared_f32x2(addr: u32, a: f32, b: f32) {
    // SAFETY: guaranteed by the caller.
    unsafe { asm!("st.shared.v2.f32 [{0}], {{{1}, {2}}};", in(reg32) addr, in(reg32) a, in(reg32) b, options(nostack)) }
}

/// Start `dst[i] += src[i]` for `bytes / 4` floats, read from shared memory by the bulk-copy
/// unit (the async proxy) and added in global memory; part of this thread's next
/// [`bulk_commit_group`].
///
/// # Safety
/// `dst` is a 16-byte aligned global range of `bytes` writable floats, `src` a 16-byte aligned
/// shared range of `bytes`, `bytes` a multiple of 16; the shared data was made visible to the
/// async proxy (`fence_proxy_async_shared`, then a barrier if other threads wrote it) and stays
/// unchanged until [`bulk_wait_read`] returns.
#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
#[inline(always)]
pub unsafe fn bulk_reduce_add_f32(dst: *mut f32, src: u32, bytes: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!(
            "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [{0}], [{1}], {2};",
            in(reg64) dst as u64,
            in(reg32) src,
            in(reg32) bytes,
            options(nostack),
        )
    }
}

/// Close this thread's bulk operations issued since the last commit into one group.
#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
#[inline(always)]
pub fn bulk_commit_group() {
    // SAFETY: no operands.
    unsafe { asm!("cp.async.bulk.commit_group;", options(nostack)) }
}

/// Wait until every bulk group of this thread has finished reading its shared-memory source.
#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
#[inline(always)]
pub fn bulk_wait_read() {
    // SAFETY: no operands; orders later shared-memory writes after the bulk reads.
    unsafe { asm!("cp.async.bulk.wait_group.read 0;", options(nostack)) }
}

/// Wait until every bulk group of this thread has completed, writes included, and order them
/// before this thread's later generic-proxy memory operations.
#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
#[inline(always)]
pub fn bulk_wait_complete() {
    // SAFETY: no operands.
    unsafe { asm!("cp.async.bulk.wait_group 0;", options(nostack)) }
    fence_proxy_async();
}

/// Order this thread's earlier generic-proxy memory operations (an acquire, say) before its
/// later async-proxy ones (a bulk reduction).
#[cfg_attr(not(target_feature = "sm_90a"), allow(dead_code))]
#[inline(always)]
pub fn fence_proxy_async() {
    // SAFETY: a memory fence; no operands.
    unsafe { asm!("fence.proxy.async;", options(nostack)) }
}
