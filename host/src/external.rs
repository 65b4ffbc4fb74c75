//! Memory and streams that another runtime owns (PyTorch's caching allocator and current
//! stream): how the Python package hands torch's tensors and stream to the launch functions
//! without copying them.

use crate::error::{Error, Result};
use crate::tensor::{Element, Layout, TensorMut, TensorRef};
use cust::memory::{DevicePointer, DeviceSlice};
use cust::stream::Stream;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Deref;

/// A CUDA stream created elsewhere, usable wherever the library takes a [`Stream`]. Dropping it
/// leaves the stream alone.
pub struct ExternalStream {
    stream: ManuallyDrop<Stream>,
}

impl ExternalStream {
    /// Borrow the stream `raw` (null is the legacy default stream).
    ///
    /// # Safety
    /// `raw` is null or a live `CUstream` of the context current on the calling thread, and
    /// stays live while this value is in use.
    pub unsafe fn from_raw(raw: cust::sys::CUstream) -> Result<Self> {
        // cust 0.3's `Stream` is a struct whose one field is the handle, and it has no
        // constructor from a handle. `transmute` checks at compile time that the two have one
        // size, so the field is the whole value; the check below catches any other layout.
        // SAFETY: every bit pattern of a handle is a valid `Stream` value of that layout; the
        // value is never dropped (ManuallyDrop), so the stream is never destroyed through it.
        let stream = ManuallyDrop::new(unsafe { std::mem::transmute::<cust::sys::CUstream, Stream>(raw) });
        if stream.as_inner() != raw {
            return Err(Error::invalid("stream", "cust's Stream layout is not the bare handle this build expects"));
        }
        Ok(ExternalStream { stream })
    }
}

impl Deref for ExternalStream {
    type Target = Stream;
    fn deref(&self) -> &Stream {
        &self.stream
    }
}

impl<'a, T: Element> TensorRef<'a, T> {
    /// View device memory at `address` (bytes) holding elements of `T` at `layout`. The
    /// launch functions check alignment, strides and shapes as for any tensor.
    ///
    /// # Safety
    /// `address` is device memory of the current context that holds the layout's whole span
    /// (`Layout::span` elements) and stays allocated, and unwritten by others, for `'a`.
    pub unsafe fn from_raw(address: u64, layout: Layout) -> Self {
        TensorRef { ptr: DevicePointer::from_raw(address), layout, _borrow: PhantomData }
    }
}

impl<'a, T: Element> TensorMut<'a, T> {
    /// As [`TensorRef::from_raw`], for outputs.
    ///
    /// # Safety
    /// As [`TensorRef::from_raw`]; besides, nothing else reads or writes the span during `'a`.
    pub unsafe fn from_raw(address: u64, layout: Layout) -> Self {
        TensorMut { ptr: DevicePointer::from_raw(address), layout, _borrow: PhantomData }
    }
}

/// `len` elements of `T` at device address `address`, as the slice type the launch functions
/// take for LSE buffers, sequence offsets, lengths and tables.
///
/// # Safety
/// `address` is device memory of the current context holding `len` elements of `T`, allocated
/// for as long as the slice is used.
pub unsafe fn device_slice<T: cust::memory::DeviceCopy>(address: u64, len: usize) -> DeviceSlice<T> {
    // SAFETY: the caller's guarantee above is cust's requirement.
    unsafe { DeviceSlice::from_raw_parts(DevicePointer::from_raw(address), len) }
}
