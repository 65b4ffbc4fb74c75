//! Stream-ordered scratch memory for the backward (D, the f32 dQ accumulator, the deterministic
//! mode's turn counters, with grouped K/V heads each query head's f32 dK/dV rows), from a memory pool of our own that keeps freed memory for the next
//! call.
//!
//! The device's default pool returns freed memory to the driver at every synchronization, so a
//! backward that allocated its O(seqlen) scratch there paid for mapping it again on every call:
//! about 0.3 ms per call at batch 32, seqlen 512 (ncu kernel times against event times, v12 in
//! `benches/NOTES.md`), a third of the whole backward. A private pool leaves the process-wide
//! default alone.

use crate::error::{Result, check_raw};
use cust::memory::{DeviceBuffer, DeviceCopy, DevicePointer};
use cust::stream::Stream;
use cust::sys;

pub(crate) struct ScratchPool {
    pool: sys::CUmemoryPool,
}

impl ScratchPool {
    /// A pool on `device` (an ordinal) that never trims memory it holds.
    pub(crate) fn new(device: i32) -> Result<Self> {
        // SAFETY: zero is a valid bit pattern for this plain C struct (null pointers, zero
        // enums and counts); the fields that matter are set below.
        let mut props: sys::CUmemPoolProps = unsafe { std::mem::zeroed() };
        props.allocType = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        props.handleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_NONE;
        props.location = sys::CUmemLocation { type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE, id: device };
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: both pointers are valid for the call; a context is current (the caller loaded
        // a module in it).
        check_raw(unsafe { sys::cuMemPoolCreate(&mut pool, &props) }, "cuMemPoolCreate")?;
        let pool = ScratchPool { pool };
        let mut keep_everything: u64 = u64::MAX;
        // SAFETY: the release threshold attribute takes a pointer to a u64.
        let result = unsafe {
            sys::cuMemPoolSetAttribute(
                pool.pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut keep_everything as *mut u64 as *mut std::ffi::c_void,
            )
        };
        check_raw(result, "cuMemPoolSetAttribute(RELEASE_THRESHOLD)")?;
        Ok(pool)
    }

    /// `len` uninitialized elements, usable by work queued on `stream` after this call; give
    /// them back with `drop_async` on the same stream.
    ///
    /// # Safety
    /// `T` has no invalid bit patterns, or the memory is written before it is read.
    pub(crate) unsafe fn alloc<T: DeviceCopy>(&self, len: usize, stream: &Stream) -> Result<DeviceBuffer<T>> {
        let len = len.max(1);
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: `ptr` is valid for the call, the pool and the stream are live handles.
        let result = unsafe {
            sys::cuMemAllocFromPoolAsync(&mut ptr, len * std::mem::size_of::<T>(), self.pool, stream.as_inner())
        };
        check_raw(result, "cuMemAllocFromPoolAsync")?;
        // SAFETY: `ptr` addresses `len` elements of `T` (the pool aligns to at least 256 bytes)
        // that nobody else owns; `DeviceBuffer` frees them with `cuMemFree[Async]`, which takes
        // pool allocations.
        Ok(unsafe { DeviceBuffer::from_raw_parts(DevicePointer::from_raw(ptr), len) })
    }
}

impl Drop for ScratchPool {
    fn drop(&mut self) {
        // SAFETY: the pool is ours; the driver defers the release while frees queued on
        // streams are outstanding.
        unsafe { sys::cuMemPoolDestroy(self.pool) };
    }
}

// SAFETY: a pool handle may be used from any thread; the driver serializes its operations.
unsafe impl Send for ScratchPool {}
// SAFETY: as above; `alloc` takes `&self` and the driver call is thread-safe.
unsafe impl Sync for ScratchPool {}
