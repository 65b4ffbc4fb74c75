//! Device tensors of shape (batch, seqlen, heads, head_dim) with arbitrary outer strides and a
//! contiguous last dimension.

use crate::error::{CudaContext, Error, Result};
use cust::memory::{CopyDestination, DeviceBuffer, DevicePointer, DeviceSlice};
use flash_attn_kernels::registry::Dtype;
use std::marker::PhantomData;

mod sealed {
    pub trait Sealed {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// The 16-bit floating-point types the kernels take: [`half::f16`] and [`half::bf16`].
pub trait Element: sealed::Sealed + bytemuck::Pod + Copy + Send + Sync + std::fmt::Debug + 'static {
    const DTYPE: Dtype;
    /// `x` rounded to nearest, ties to even (as the kernels' `cvt.rn` rounds).
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// A NaN, used to poison outputs in tests.
    fn nan() -> Self;
}

/// `x` with its low 32 mantissa bits folded into bit 32: half 2.7's f64 → bf16 conversion (and
/// its f16 fallback) reads only the upper 32 bits of the f64, so a value above a rounding midpoint
/// by less than 2⁻²⁰ of its magnitude took the tie's even side (1 + 2⁻⁸ + 2⁻²² → 1 in bf16, not
/// 1 + 2⁻⁷). Bit 32 lies below both types' rounding bit, so the sticky bit now sees them and the
/// rounding is to nearest even of `x` itself (on the f16c path the value is then exact in f32).
fn sticky(x: f64) -> f64 {
    let bits = x.to_bits();
    if bits & 0xFFFF_FFFF == 0 { x } else { f64::from_bits((bits | (1 << 32)) & !0xFFFF_FFFF) }
}

impl Element for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn from_f64(x: f64) -> Self {
        half::f16::from_f64(sticky(x))
    }
    fn to_f64(self) -> f64 {
        half::f16::to_f64(self)
    }
    fn nan() -> Self {
        half::f16::NAN
    }
}

impl Element for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    fn from_f64(x: f64) -> Self {
        half::bf16::from_f64(sticky(x))
    }
    fn to_f64(self) -> f64 {
        half::bf16::to_f64(self)
    }
    fn nan() -> Self {
        half::bf16::NAN
    }
}

/// Shape `(batch, seqlen, heads, head_dim)` and element strides of the three outer dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub shape: [usize; 4],
    pub strides: [usize; 3],
}

impl Layout {
    /// Row-major (batch, seqlen, heads, head_dim). Strides that would overflow saturate, and
    /// such a layout then has no [`span`](Self::span) and is rejected wherever it is used.
    pub fn contiguous(shape: [usize; 4]) -> Self {
        let [_, s, h, d] = shape;
        Layout { shape, strides: [s.saturating_mul(h).saturating_mul(d), h.saturating_mul(d), d] }
    }

    pub fn batch(&self) -> usize {
        self.shape[0]
    }
    pub fn seqlen(&self) -> usize {
        self.shape[1]
    }
    pub fn heads(&self) -> usize {
        self.shape[2]
    }
    pub fn head_dim(&self) -> usize {
        self.shape[3]
    }

    /// Elements from the first to one past the last addressed element, or None on overflow.
    pub fn span(&self) -> Option<usize> {
        if self.shape.contains(&0) {
            return Some(0);
        }
        let mut last = self.shape[3] - 1;
        for i in 0..3 {
            last = last.checked_add((self.shape[i] - 1).checked_mul(self.strides[i])?)?;
        }
        last.checked_add(1)
    }

    /// Whether distinct indices address distinct elements (required of outputs).
    pub fn is_non_overlapping(&self) -> bool {
        let mut dims: Vec<(usize, usize)> =
            (0..3).filter(|&i| self.shape[i] > 1).map(|i| (self.strides[i], self.shape[i])).collect();
        dims.sort();
        let mut extent = self.shape[3];
        for (stride, size) in dims {
            if stride < extent {
                return false;
            }
            extent = extent.saturating_add(stride.saturating_mul(size - 1));
        }
        true
    }

    /// Number of elements, saturating on overflow.
    pub fn element_count(&self) -> usize {
        self.shape.iter().fold(1usize, |n, &x| n.saturating_mul(x))
    }

    /// A contiguous layout whose elements can all be addressed, or an error naming `argument`.
    pub(crate) fn checked_contiguous(argument: &'static str, shape: [usize; 4]) -> Result<Self> {
        let layout = Layout::contiguous(shape);
        match shape.iter().try_fold(1usize, |n, &x| n.checked_mul(x)) {
            Some(n) if n <= isize::MAX as usize / 2 => Ok(layout),
            _ => Err(Error::invalid(argument, format!("shape {shape:?} has too many elements"))),
        }
    }
}

/// An owned device tensor.
pub struct DeviceTensor<T: Element> {
    buffer: DeviceBuffer<u16>,
    layout: Layout,
    _element: PhantomData<T>,
}

impl<T: Element> DeviceTensor<T> {
    /// Copy a row-major host array of shape `shape` to the device.
    pub fn from_host(data: &[T], shape: [usize; 4]) -> Result<Self> {
        let layout = Layout::checked_contiguous("shape", shape)?;
        if data.len() != layout.element_count() {
            return Err(Error::invalid(
                "data",
                format!("{} elements given for shape {shape:?} ({} expected)", data.len(), layout.element_count()),
            ));
        }
        let buffer = DeviceBuffer::from_slice(bytemuck::cast_slice::<T, u16>(data)).during("copy to device")?;
        Ok(DeviceTensor { buffer, layout, _element: PhantomData })
    }

    /// A contiguous tensor with every element set to `value` (filled on the device).
    pub fn filled(shape: [usize; 4], value: T) -> Result<Self> {
        let mut tensor = Self::uninitialized(shape)?;
        tensor.fill(value)?;
        Ok(tensor)
    }

    /// A contiguous tensor whose contents are unspecified (outputs allocated by the library).
    pub(crate) fn uninitialized(shape: [usize; 4]) -> Result<Self> {
        let layout = Layout::checked_contiguous("shape", shape)?;
        // SAFETY: u16 has no invalid bit patterns; every element is written by a kernel before
        // the tensor is handed out.
        let buffer = unsafe { DeviceBuffer::uninitialized(layout.element_count().max(1)) }.during("allocate")?;
        Ok(DeviceTensor { buffer, layout, _element: PhantomData })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Copy back to the host, row-major (blocks until the copy is done). The copy is ordered with
    /// the legacy default stream only: synchronize the stream that wrote the tensor first.
    pub fn to_host(&self) -> Result<Vec<T>> {
        let mut bits = vec![0u16; self.layout.element_count()];
        self.buffer.index(..bits.len()).copy_to(&mut bits[..]).during("copy to host")?;
        Ok(bytemuck::cast_slice(&bits).to_vec())
    }

    /// Overwrite every element (used to poison outputs in tests). Like [`to_host`](Self::to_host)
    /// this is ordered with the legacy default stream only: synchronize the streams that use the
    /// tensor first.
    pub fn fill(&mut self, value: T) -> Result<()> {
        self.buffer.set_16(bytemuck::cast::<T, u16>(value)).during("cuMemsetD16")
    }

    pub fn view(&self) -> TensorRef<'_, T> {
        TensorRef { ptr: self.buffer.as_device_ptr(), layout: self.layout, _borrow: PhantomData }
    }

    pub fn view_mut(&mut self) -> TensorMut<'_, T> {
        TensorMut { ptr: self.buffer.as_device_ptr(), layout: self.layout, _borrow: PhantomData }
    }
}

use cust::memory::GpuBuffer as _;

/// A borrowed tensor: any device memory holding elements of `T` at the given layout.
#[derive(Clone, Copy)]
pub struct TensorRef<'a, T: Element> {
    pub(crate) ptr: DevicePointer<u16>,
    pub(crate) layout: Layout,
    pub(crate) _borrow: PhantomData<&'a T>,
}

/// A mutably borrowed tensor (outputs).
pub struct TensorMut<'a, T: Element> {
    pub(crate) ptr: DevicePointer<u16>,
    pub(crate) layout: Layout,
    pub(crate) _borrow: PhantomData<&'a mut T>,
}

fn check_extent(argument: &'static str, slice_len: usize, offset: usize, layout: &Layout) -> Result<()> {
    let span = layout
        .span()
        .ok_or_else(|| Error::invalid(argument, format!("layout {layout:?} overflows the address space")))?;
    let end = offset.checked_add(span).ok_or_else(|| Error::invalid(argument, "offset plus extent overflows"))?;
    if end > slice_len {
        return Err(Error::invalid(
            argument,
            format!("layout {layout:?} at offset {offset} reaches element {end} of a {slice_len}-element buffer"),
        ));
    }
    Ok(())
}

impl<'a, T: Element> TensorRef<'a, T> {
    /// View `layout` inside `buffer` (16-bit elements), starting `offset` elements in.
    pub fn from_slice(buffer: &'a DeviceSlice<u16>, offset: usize, layout: Layout) -> Result<Self> {
        check_extent("buffer", buffer.len(), offset, &layout)?;
        Ok(TensorRef { ptr: buffer.as_device_ptr().wrapping_add(offset), layout, _borrow: PhantomData })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }
}

impl<'a, T: Element> TensorMut<'a, T> {
    /// View `layout` inside `buffer` (16-bit elements), starting `offset` elements in.
    pub fn from_slice(buffer: &'a mut DeviceSlice<u16>, offset: usize, layout: Layout) -> Result<Self> {
        check_extent("buffer", buffer.len(), offset, &layout)?;
        Ok(TensorMut { ptr: buffer.as_device_ptr().wrapping_add(offset), layout, _borrow: PhantomData })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn as_ref(&self) -> TensorRef<'_, T> {
        TensorRef { ptr: self.ptr, layout: self.layout, _borrow: PhantomData }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_f64_rounds_to_nearest_even_on_all_bits() {
        let bf16 = |v: f64| <half::bf16 as Element>::from_f64(v).to_f64();
        let f16 = |v: f64| <half::f16 as Element>::from_f64(v).to_f64();
        // Just above the midpoint of bf16's 1.375 and 1.3828125 (a rotated key of the
        // kvcache_append flake): the deciding bit, 2⁻²², is in the f64's low word.
        let v = 1.375 + 2f64.powi(-8) + 2f64.powi(-22);
        assert_eq!(half::bf16::from_f64(v).to_f64(), 1.375, "half's own rounding, corrected here");
        assert_eq!((bf16(v), bf16(-v), bf16(1.375 + 2f64.powi(-8))), (1.3828125, -1.3828125, 1.375));
        assert_eq!(f16(1.0 + 2f64.powi(-11) + 2f64.powi(-40)), 1.0 + 2f64.powi(-10));
        assert_eq!(f16(1.0 + 2f64.powi(-11)), 1.0);
        assert!(bf16(f64::NAN).is_nan());
    }

    #[test]
    fn contiguous_layout_spans_its_elements() {
        let l = Layout::contiguous([2, 3, 4, 8]);
        assert_eq!(l.strides, [96, 32, 8]);
        assert_eq!(l.span(), Some(192));
        assert!(l.is_non_overlapping());
    }

    #[test]
    fn packed_qkv_views_do_not_overlap_each_other_but_strides_are_checked() {
        // Q, K, V interleaved per token: row stride 3·h·d, each a head-major slice.
        let l = Layout { shape: [2, 5, 4, 64], strides: [5 * 3 * 4 * 64, 3 * 4 * 64, 64] };
        assert!(l.is_non_overlapping());
        assert_eq!(l.span(), Some(3840 + 4 * 768 + 3 * 64 + 64));
        let broadcast = Layout { shape: [2, 5, 4, 64], strides: [0, 256, 64] };
        assert!(!broadcast.is_non_overlapping());
        let tangled = Layout { shape: [1, 5, 4, 64], strides: [0, 64, 64] };
        assert!(!tangled.is_non_overlapping());
    }

    #[test]
    fn overflowing_layouts_have_no_span() {
        let l = Layout { shape: [usize::MAX, 2, 1, 1], strides: [2, 1, 1] };
        assert_eq!(l.span(), None);
        assert_eq!(Layout::contiguous([0, 3, 4, 8]).span(), Some(0));
    }
}
