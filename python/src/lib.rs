//! `flash_attn_rs._core`: the Rust side of the Python package. The Python layer
//! (`flash_attn_rs/interface.py`) checks torch tensors, allocates outputs with torch and passes
//! each tensor here as `(address, shape, strides)` with the device ordinal and torch's current
//! stream; this module borrows them (no copies), makes the device's primary context (the one
//! torch uses) current, and calls the library's `_into` launch functions, which check every
//! argument before launching. Errors become `ValueError` (bad arguments, naming them) or
//! `RuntimeError` (CUDA's error name, unsupported devices).

use cust::context::{Context, CurrentContext};
use cust::device::Device;
use cust::memory::DeviceSlice;
use flash_attn::external::device_slice;
use flash_attn::{
    Append, AttentionParams, Descale, Dropout, Element, Error, ExternalStream, FlashAttention, Fp8Ref, Fp8Scales,
    KvCache, Layout, Rotary, TensorMut, TensorRef, Varlen,
};
use half::{bf16, f16};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::sync::{Arc, Mutex, OnceLock};

/// A tensor as the Python layer describes it: device address (bytes), shape
/// `(batch, seqlen, heads, head_dim)` and the element strides of the first three dimensions
/// (the last one is contiguous: checked in Python).
type Desc = (u64, [usize; 4], [usize; 3]);
/// A flat buffer: device address and element count.
type Buf = (u64, usize);
/// One FP8 descale tensor of shape (batch, heads_k): address, elements its strides reach, and
/// the (batch, head) element strides.
type DescaleArg = (u64, usize, usize, usize);
/// New keys and values to append, with rotary tables `(cos, sin, interleaved)`.
type AppendArgs = (Desc, Desc, Option<(Desc, Desc, bool)>);

/// Options shared by every call, in `AttentionParams`' order: softmax_scale, causal,
/// deterministic, window, softcap, alibi slopes, sinks, dropout `(p, seed, offset)`.
/// `None` from Python: every option off.
#[derive(FromPyObject, Default)]
struct Options(
    Option<f32>,
    bool,
    bool,
    Option<(i32, i32)>,
    Option<f32>,
    Option<Buf>,
    Option<Buf>,
    Option<(f32, u64, u64)>,
);

fn py_error(e: Error) -> PyErr {
    match e {
        Error::InvalidArgument { .. } | Error::UnsupportedHeadDim { .. } => PyValueError::new_err(e.to_string()),
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

/// The loaded kernels of one device, in its primary context.
struct Engine {
    context: Context,
    attention: FlashAttention,
}

static ENGINES: OnceLock<Mutex<Vec<Option<Arc<Engine>>>>> = OnceLock::new();

fn cuda<T>(r: cust::error::CudaResult<T>, operation: &'static str) -> PyResult<T> {
    use flash_attn::error::CudaContext as _;
    r.during(operation).map_err(py_error)
}

/// `cuInit`, once a process.
fn init() -> PyResult<()> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| cuda(cust::init(cust::CudaFlags::empty()), "cuInit").map_err(|e| e.to_string()))
        .clone()
        .map_err(PyRuntimeError::new_err)
}

/// Sets the thread's current context back to the one a call found (dropped at the end of the
/// call): on a host with several GPUs, torch's idea of the current device stays its own.
struct RestoreContext(cust::sys::CUcontext);

impl RestoreContext {
    fn save() -> PyResult<Self> {
        let mut current: cust::sys::CUcontext = std::ptr::null_mut();
        // SAFETY: `current` is valid for the call; the driver is initialized (`init`).
        let result = unsafe { cust::sys::cuCtxGetCurrent(&mut current) };
        flash_attn::error::check_raw(result, "cuCtxGetCurrent").map_err(py_error)?;
        Ok(RestoreContext(current))
    }
}

impl Drop for RestoreContext {
    fn drop(&mut self) {
        // SAFETY: the handle was current on this thread when the call began (or null), and a
        // context made current by torch or by us outlives the call (primary contexts are kept
        // retained). The launches are queued already and do not need it.
        unsafe { cust::sys::cuCtxSetCurrent(self.0) };
    }
}

/// The engine of device `ordinal`, made current on this thread (first use: retains the
/// primary context and loads the PTX, a few hundred milliseconds).
/// Needs `init` first (`Call::begin`).
fn engine(ordinal: u32) -> PyResult<Arc<Engine>> {
    let mut engines = ENGINES.get_or_init(|| Mutex::new(Vec::new())).lock().unwrap_or_else(|p| p.into_inner());
    let slot = ordinal as usize;
    if engines.len() <= slot {
        engines.resize(slot + 1, None);
    }
    let engine = match &engines[slot] {
        Some(e) => e.clone(),
        None => {
            let device = cuda(Device::get_device(ordinal), "cuDeviceGet")?;
            let context = cuda(Context::new(device), "cuDevicePrimaryCtxRetain")?;
            let attention = FlashAttention::new().map_err(py_error)?;
            let e = Arc::new(Engine { context, attention });
            engines[slot] = Some(e.clone());
            e
        }
    };
    cuda(CurrentContext::set_current(&engine.context), "cuCtxSetCurrent")?;
    Ok(engine)
}

/// The dtype names the Python layer passes, checked before the device is opened.
fn check_dtype(dtype: &str) -> PyResult<()> {
    match dtype {
        "bf16" | "f16" => Ok(()),
        other => Err(dtype_error(other)),
    }
}

fn dtype_error(dtype: &str) -> PyErr {
    PyTypeError::new_err(format!("dtype {dtype}: float16 or bfloat16 expected"))
}

fn stream(raw: usize) -> PyResult<ExternalStream> {
    // SAFETY: the Python layer passes the raw handle of torch's current stream on the device,
    // a live stream of the device's primary context (made current by `engine`) for the whole
    // call.
    unsafe { ExternalStream::from_raw(raw as cust::sys::CUstream) }.map_err(py_error)
}

fn layout(d: &Desc) -> Layout {
    Layout { shape: d.1, strides: d.2 }
}

// SAFETY (of every `from_raw` and `device_slice` below): the Python layer describes live torch
// tensors of the device whose primary context is current, with their true shapes, strides and
// element counts, and keeps them referenced until the call returns; the launch functions then
// check shapes and strides against one another before any launch, and everything queued reads
// or writes within those spans on torch's stream, which orders it before any later reuse of
// the memory by torch's caching allocator.
fn input<'a, T: Element>(d: &Desc) -> TensorRef<'a, T> {
    unsafe { TensorRef::from_raw(d.0, layout(d)) }
}
fn output<'a, T: Element>(d: &Desc) -> TensorMut<'a, T> {
    unsafe { TensorMut::from_raw(d.0, layout(d)) }
}
fn slice<T: cust::memory::DeviceCopy>(b: Buf) -> DeviceSlice<T> {
    unsafe { device_slice(b.0, b.1) }
}

/// Run `$body` with `$T` the element type named by `dtype`.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            "bf16" => {
                type $T = bf16;
                $body
            }
            "f16" => {
                type $T = f16;
                $body
            }
            other => Err(dtype_error(other)),
        }
    };
}

/// The flat f32/i32 buffers of one call, owned here so that `AttentionParams` can borrow them.
struct Slices {
    alibi: Option<DeviceSlice<f32>>,
    sinks: Option<DeviceSlice<f32>>,
}

impl Options {
    fn slices(&self) -> Slices {
        Slices { alibi: self.5.map(slice), sinks: self.6.map(slice) }
    }
    fn params<'a>(&self, s: &'a Slices) -> AttentionParams<'a> {
        AttentionParams {
            softmax_scale: self.0,
            causal: self.1,
            deterministic: self.2,
            window: self.3,
            softcap: self.4,
            alibi_slopes: s.alibi.as_ref(),
            sinks: s.sinks.as_ref(),
            dropout: self.7.map(|(p, seed, offset)| Dropout { p, seed, offset }),
        }
    }
}

/// What every call starts with: the dtype checked, the device's engine current, torch's
/// stream borrowed, the options' device arrays viewed.
struct Call {
    engine: Arc<Engine>,
    stream: ExternalStream,
    opts: Options,
    slices: Slices,
    _restore: RestoreContext,
}

impl Call {
    fn begin(device: u32, raw_stream: usize, dtype: &str, opts: Option<Options>) -> PyResult<Self> {
        check_dtype(dtype)?;
        let opts = opts.unwrap_or_default();
        init()?;
        let restore = RestoreContext::save()?;
        let engine = engine(device)?;
        let stream = stream(raw_stream)?;
        let slices = opts.slices();
        Ok(Call { engine, stream, opts, slices, _restore: restore })
    }

    fn params(&self) -> AttentionParams<'_> {
        self.opts.params(&self.slices)
    }
}

/// Dense forward: O and the LSE `(batch, heads, seqlen_q)` into the given tensors.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn forward(
    device: u32,
    raw_stream: usize,
    dtype: &str,
    q: Desc,
    k: Desc,
    v: Desc,
    o: Desc,
    lse: Buf,
    opts: Option<Options>,
) -> PyResult<()> {
    let call = Call::begin(device, raw_stream, dtype, opts)?;
    let (e, s, params) = (&call.engine, &call.stream, call.params());
    let mut lse = slice::<f32>(lse);
    by_dtype!(dtype, T => e.attention.forward_into::<T>(s, input(&q), input(&k), input(&v), output(&o), &mut lse, &params).map_err(py_error))
}

/// Dense backward into dQ, dK, dV (and the sinks' gradient).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn backward(
    device: u32,
    raw_stream: usize,
    dtype: &str,
    inputs: [Desc; 5],
    lse: Buf,
    grads: [Desc; 3],
    d_sinks: Option<Buf>,
    opts: Option<Options>,
) -> PyResult<()> {
    let call = Call::begin(device, raw_stream, dtype, opts)?;
    let (e, s, params) = (&call.engine, &call.stream, call.params());
    let lse = slice::<f32>(lse);
    let mut d_sinks = d_sinks.map(slice::<f32>);
    let [d_o, q, k, v, o] = inputs;
    let [dq, dk, dv] = grads;
    by_dtype!(dtype, T => e
        .attention
        .backward_into::<T>(s, input(&d_o), input(&q), input(&k), input(&v), input(&o), &lse, output(&dq), output(&dk), output(&dv), d_sinks.as_mut(), &params)
        .map_err(py_error))
}

/// `Varlen` from the offsets, the longest lengths and `seqused_k`.
#[derive(FromPyObject)]
struct VarlenArgs(Buf, Buf, usize, usize, Option<Buf>);

struct VarlenSlices(DeviceSlice<i32>, DeviceSlice<i32>, usize, usize, Option<DeviceSlice<i32>>);

impl VarlenArgs {
    fn slices(&self) -> VarlenSlices {
        VarlenSlices(slice(self.0), slice(self.1), self.2, self.3, self.4.map(slice))
    }
}

impl VarlenSlices {
    fn varlen(&self) -> Varlen<'_> {
        Varlen {
            cu_seqlens_q: &self.0,
            cu_seqlens_k: &self.1,
            max_seqlen_q: self.2,
            max_seqlen_k: self.3,
            seqused_k: self.4.as_ref(),
            // The offsets come from torch and may still be in flight on its stream: the
            // kernels take them as they are (FlashAttention's contract), checked where the
            // Python layer can (lengths and dtypes).
            check_offsets: false,
        }
    }
}

/// Packed variable-length forward: Q `(1, total_q, heads, d)`, LSE `(heads, total_q)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn forward_varlen(
    device: u32,
    raw_stream: usize,
    dtype: &str,
    q: Desc,
    k: Desc,
    v: Desc,
    o: Desc,
    lse: Buf,
    varlen: VarlenArgs,
    opts: Option<Options>,
) -> PyResult<()> {
    let call = Call::begin(device, raw_stream, dtype, opts)?;
    let (e, s, params) = (&call.engine, &call.stream, call.params());
    let vs = varlen.slices();
    let mut lse = slice::<f32>(lse);
    by_dtype!(dtype, T => e
        .attention
        .forward_varlen_into::<T>(s, input(&q), input(&k), input(&v), output(&o), &mut lse, &vs.varlen(), &params)
        .map_err(py_error))
}

/// Packed variable-length backward.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn backward_varlen(
    device: u32,
    raw_stream: usize,
    dtype: &str,
    inputs: [Desc; 5],
    lse: Buf,
    grads: [Desc; 3],
    d_sinks: Option<Buf>,
    varlen: VarlenArgs,
    opts: Option<Options>,
) -> PyResult<()> {
    let call = Call::begin(device, raw_stream, dtype, opts)?;
    let (e, s, params) = (&call.engine, &call.stream, call.params());
    let vs = varlen.slices();
    let lse = slice::<f32>(lse);
    let mut d_sinks = d_sinks.map(slice::<f32>);
    let [d_o, q, k, v, o] = inputs;
    let [dq, dk, dv] = grads;
    by_dtype!(dtype, T => e
        .attention
        .backward_varlen_into::<T>(
            s,
            [input(&d_o), input(&q), input(&k), input(&v), input(&o)],
            &lse,
            [output(&dq), output(&dk), output(&dv)],
            d_sinks.as_mut(),
            &vs.varlen(),
            &params,
        )
        .map_err(py_error))
}

/// KV-cache forward; with `append = (k, v, rotary)` the new keys and values are written into
/// the cache first (rotary = `(cos, sin, interleaved)` with tables `(1, seqlen_ro, 1, r / 2)`).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn forward_kvcache(
    device: u32,
    raw_stream: usize,
    dtype: &str,
    q: Desc,
    k_cache: Desc,
    v_cache: Desc,
    o: Desc,
    lse: Buf,
    cache_seqlens: Buf,
    cache_batch_idx: Option<Buf>,
    block_table: Option<Buf>,
    num_splits: usize,
    append: Option<AppendArgs>,
    opts: Option<Options>,
) -> PyResult<()> {
    let call = Call::begin(device, raw_stream, dtype, opts)?;
    let (e, s, params) = (&call.engine, &call.stream, call.params());
    let (lens, idx, table) =
        (slice::<i32>(cache_seqlens), cache_batch_idx.map(slice::<i32>), block_table.map(slice::<i32>));
    let cache = KvCache {
        cache_seqlens: &lens,
        cache_batch_idx: idx.as_ref(),
        num_splits,
        block_table: table.as_ref(),
        // The lengths come from torch and may still be in flight on its stream.
        check_lengths: false,
    };
    let mut lse = slice::<f32>(lse);
    by_dtype!(dtype, T => match &append {
        None => e
            .attention
            .forward_with_kvcache_into::<T>(s, input(&q), input(&k_cache), input(&v_cache), output(&o), &mut lse, &cache, &params)
            .map_err(py_error),
        Some((k, v, rotary)) => {
            let new = Append::<T> {
                k: input(k),
                v: input(v),
                rotary: rotary.as_ref().map(|(c, s, interleaved)| Rotary { cos: input(c), sin: input(s), interleaved: *interleaved }),
            };
            e.attention
                .forward_with_kvcache_append_into::<T>(s, input(&q), output(&k_cache), output(&v_cache), &new, output(&o), &mut lse, &cache, &params)
                .map_err(py_error)
        }
    })
}

/// The kernels' supported head dims, and whether a CUDA device can be opened (for the tests'
/// skip decisions; never raises).
/// FP8 forward: e4m3 Q, K, V with optional descales (q, k, v), O (bf16) and the LSE into the
/// given tensors.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn forward_fp8(
    device: u32,
    raw_stream: usize,
    q: Desc,
    k: Desc,
    v: Desc,
    o: Desc,
    lse: Buf,
    descales: [Option<DescaleArg>; 3],
    opts: Option<Options>,
) -> PyResult<()> {
    let call = Call::begin(device, raw_stream, "bf16", opts)?;
    let (e, s, params) = (&call.engine, &call.stream, call.params());
    let mut lse = slice::<f32>(lse);
    let slices = descales.map(|d| d.map(|(address, len, _, _)| slice::<f32>((address, len))));
    let descale = |i: usize| {
        let (values, (_, _, batch_stride, head_stride)) = (slices[i].as_ref()?, descales[i]?);
        Some(Descale { values, batch_stride, head_stride })
    };
    let scales = Fp8Scales { q: descale(0), k: descale(1), v: descale(2) };
    // SAFETY: as for `input` above (the Python layer checked the dtype: float8_e4m3fn).
    let fp8 = |d: &Desc| unsafe { Fp8Ref::from_raw(d.0, layout(d)) };
    e.attention
        .forward_fp8_into(s, fp8(&q), fp8(&k), fp8(&v), &scales, output::<bf16>(&o), &mut lse, &params)
        .map_err(py_error)
}

#[pyfunction]
fn supported_head_dims() -> Vec<u32> {
    flash_attn::SUPPORTED_HEAD_DIMS.to_vec()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(forward, m)?)?;
    m.add_function(wrap_pyfunction!(backward, m)?)?;
    m.add_function(wrap_pyfunction!(forward_varlen, m)?)?;
    m.add_function(wrap_pyfunction!(backward_varlen, m)?)?;
    m.add_function(wrap_pyfunction!(forward_kvcache, m)?)?;
    m.add_function(wrap_pyfunction!(forward_fp8, m)?)?;
    m.add_function(wrap_pyfunction!(supported_head_dims, m)?)?;
    m.add("MAX_SPLITS", flash_attn::serving::MAX_SPLITS)?;
    Ok(())
}
