//! Loading the PTX and launching the kernels.
//!
//! [`FlashAttention::new`] loads the embedded PTX for the device (sm_90a on compute capability
//! 9.0, holding the `wgmma` kernels beside the portable ones; sm_80 on other 8.0+ devices, which
//! JIT-compile it), raises `MAX_DYNAMIC_SHARED_SIZE_BYTES` for kernels above 48 KiB and creates
//! the backward's scratch pool. `forward`/`backward` allocate contiguous outputs and call
//! `forward_into`/`backward_into`, which validate every argument first (`validate`), fill the
//! parameter block, pick each kernel from the registry (with the `_mods` twins when
//! `validate::needs_modifier_kernels`) and launch with `cuLaunchKernel`, the block passed by value.
//! The backward queues preprocess, main kernel, convert_dq, and where needed the grouped K/V
//! reduction (its f32 `dkv_accum` scratch only when `heads_k < heads`) and the sink gradient.
//! Everything is queued on the caller's stream; nothing synchronizes.

use crate::error::{CudaContext, Error, Result, check_raw};
use crate::scratch::ScratchPool;
use crate::tensor::{DeviceTensor, Element, TensorMut, TensorRef};
use crate::validate::{self, Arg};
use crate::{AttentionParams, CUBIN_SM80, CUBIN_SM90A, Dropout, PTX_SM80, PTX_SM90A, SM_80_PROBLEM, SM_90A_PROBLEM};
use cust::context::CurrentContext;
use cust::device::DeviceAttribute;
use cust::memory::{DeviceBuffer, DeviceSlice};
use cust::module::Module;
use cust::stream::Stream;
use flash_attn_kernels::params::{AttnShape, BwdParams, FwdParams, Modifiers};
use flash_attn_kernels::registry::{self, Flavor, KernelInfo, Role};
use flash_attn_kernels::tiling::persistent_blocks;
use std::ffi::c_void;

/// The loaded kernels, for the context that was current when [`FlashAttention::new`] ran.
pub struct FlashAttention {
    module: Module,
    /// The sm_90a PTX is loaded, and its Hopper-only kernels are used where they exist.
    hopper_kernels: bool,
    /// Kernels chosen by name, each for its role, dtype and head dim (see `with_kernel`).
    overrides: Vec<&'static KernelInfo>,
    /// The backward's and split-KV's O(seqlen) scratch memory.
    pub(crate) scratch: ScratchPool,
    /// Streaming multiprocessors of the device (the split-KV heuristic's target).
    pub(crate) sm_count: u32,
    /// `FLASH_ATTN_PERSISTENT_BLOCKS`: at most this many blocks for the persistent kernels
    /// instead of one per SM, so that tests send several tiles through each block.
    persistent_cap: Option<u32>,
    /// The module came from the build-time cubin, not the driver's JIT of the PTX.
    from_cubin: bool,
}

/// O (contiguous, the inputs' dtype) and the natural-log LSE, f32 (batch, heads, seqlen_q).
pub struct ForwardOutput<T: Element> {
    pub o: DeviceTensor<T>,
    pub lse: DeviceBuffer<f32>,
}

/// dQ (Q's shape), dK and dV (K's shape: with grouped K/V heads, the sums over each group's
/// query heads), and the sinks' gradient (`heads` floats) when the call had sinks.
pub struct Gradients<T: Element> {
    pub dq: DeviceTensor<T>,
    pub dk: DeviceTensor<T>,
    pub dv: DeviceTensor<T>,
    pub d_sinks: Option<DeviceBuffer<f32>>,
}

impl FlashAttention {
    /// Load the PTX for the current context's device (sm_90a PTX, with the `wgmma` kernels, on
    /// Hopper; sm_80 PTX on Ampere and newer non-Hopper parts) and raise the kernels'
    /// shared-memory limits.
    pub fn new() -> Result<Self> {
        let device = CurrentContext::get_device().during("cuCtxGetDevice")?;
        let major = device.get_attribute(DeviceAttribute::ComputeCapabilityMajor).during("cuDeviceGetAttribute")?;
        let minor = device.get_attribute(DeviceAttribute::ComputeCapabilityMinor).during("cuDeviceGetAttribute")?;
        let (arch, ptx, cubin, problem) = match (major, minor) {
            (9, 0) => ("sm_90a", PTX_SM90A, CUBIN_SM90A, SM_90A_PROBLEM),
            (8, _) => ("sm_80", PTX_SM80, CUBIN_SM80, SM_80_PROBLEM),
            (m, _) if m > 8 => ("sm_80", PTX_SM80, &[][..], SM_80_PROBLEM),
            _ => {
                let name = device.name().unwrap_or_else(|_| "this device".into());
                return Err(Error::UnsupportedDevice { name, compute_capability: (major, minor) });
            }
        };
        if let Some(problem) = problem {
            return Err(Error::PtxUnavailable { problem: problem.to_string() });
        }
        let (module, from_cubin) = load_module(ptx, cubin)?;
        for info in registry::in_ptx_for(arch).filter(|k| k.dynamic_smem_bytes > 48 * 1024) {
            let function = module.get_function(info.name).during("cuModuleGetFunction")?;
            // SAFETY: `function` is a live handle of `module`; the attribute takes a byte count
            // within the device's opt-in limit (227 KiB on Hopper, 163 KiB on A100; the kernel
            // traits keep every configuration under the smaller).
            let result = unsafe {
                cust::sys::cuFuncSetAttribute(
                    function.to_raw(),
                    cust::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    info.dynamic_smem_bytes as i32,
                )
            };
            check_raw(result, "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")?;
        }
        let scratch = ScratchPool::new(device.as_raw())?;
        let sm_count =
            device.get_attribute(DeviceAttribute::MultiprocessorCount).during("cuDeviceGetAttribute")?.max(1) as u32;
        Ok(FlashAttention {
            module,
            hopper_kernels: arch == "sm_90a",
            overrides: Vec::new(),
            scratch,
            sm_count,
            persistent_cap: std::env::var("FLASH_ATTN_PERSISTENT_BLOCKS").ok().and_then(|v| v.parse().ok()),
            from_cubin,
        })
    }

    /// How the kernels were loaded: `"cubin"` (assembled at build time) or `"PTX (JIT)"`.
    pub fn module_image(&self) -> &'static str {
        if self.from_cubin { "cubin" } else { "PTX (JIT)" }
    }

    pub(crate) fn hopper_kernels(&self) -> bool {
        self.hopper_kernels
    }

    /// Use only the portable `mma.sync` kernels, also on Hopper (for comparisons and for
    /// bisecting a problem to one kernel family).
    pub fn portable_kernels_only(mut self) -> Self {
        self.hopper_kernels = false;
        self
    }

    /// Run kernel `name` (from `flash_attn_kernels::registry::KERNELS`) for its role, dtype and
    /// head dim instead of the default: for measuring tile configurations against each other.
    #[doc(hidden)]
    pub fn with_kernel(mut self, name: &str) -> Option<Self> {
        let info = registry::by_name(name)?;
        if info.requires_sm90a && !self.hopper_kernels {
            return None;
        }
        self.overrides.push(info);
        Some(self)
    }

    /// Name of the forward kernel that runs for this dtype and head dim (dense, or with the
    /// score modifiers: softcap, ALiBi, dropout), if any.
    pub fn forward_kernel_name<T: Element>(&self, head_dim: usize, modifiers: bool) -> Option<&'static str> {
        let flavor = if modifiers { Flavor::DenseModifiers } else { Flavor::Dense };
        self.choose(Role::Forward, T::DTYPE, head_dim as u32, flavor).map(|k| k.name)
    }

    /// Forward into new tensors: O (contiguous) and the LSE. Queued on `stream`; no sync.
    pub fn forward<T: Element>(
        &self,
        stream: &Stream,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        params: &AttentionParams,
    ) -> Result<ForwardOutput<T>> {
        let shape = validate::inputs(&Arg::of("q", &q), &Arg::of("k", &k), &Arg::of("v", &v), params)?;
        validate::modifiers(params, &shape)?; // before allocating: bad options never allocate
        let mut o = DeviceTensor::uninitialized(validate::q_shape(&shape))?;
        let mut lse = lse_buffer(&shape)?;
        self.forward_into(stream, q, k, v, o.view_mut(), &mut lse, params)?;
        Ok(ForwardOutput { o, lse })
    }

    /// Forward into caller-provided O (any non-overlapping strides) and LSE.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_into<T: Element>(
        &self,
        stream: &Stream,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        o: TensorMut<'_, T>,
        lse: &mut DeviceSlice<f32>,
        params: &AttentionParams,
    ) -> Result<()> {
        let (qa, ka, va) = (Arg::of("q", &q), Arg::of("k", &k), Arg::of("v", &v));
        let shape = validate::inputs(&qa, &ka, &va, params)?;
        let o_ref = o.as_ref();
        let oa = Arg::of("o", &o_ref);
        validate::output(&oa, validate::q_shape(&shape))?;
        validate::lse("lse", lse.len(), &shape)?;
        let mods = validate::modifiers(params, &shape)?;
        self.run_forward::<T>(stream, shape, mods, [&qa, &ka, &va, &oa], lse.as_device_ptr().as_raw())
    }

    /// Launch a validated forward: the main kernel, and with split-KV
    /// (`shape.layout.num_splits` > 1) the combine kernel over f32 partials from the scratch pool
    /// (O(splits · batch · heads · seqlen_q · head_dim), freed in stream order).
    pub(crate) fn run_forward<T: Element>(
        &self,
        stream: &Stream,
        shape: AttnShape,
        mods: Modifiers,
        args: [&Arg; 4],
        lse: u64,
    ) -> Result<()> {
        let mut p = forward_params(shape, mods, args, lse);
        let info = self.forward_kernel::<T>(&shape, &mods)?;
        let (x, heads, _) = grid(info, shape.seqlen_q, shape.heads, shape.batch);
        if info.persistent && shape.layout.splits() == 1 {
            // One block per SM (or the test cap), each looping over the query tiles: statically
            // where every tile has the same work, else each block takes its next tile from a
            // counter as it frees up (masks: causal, windows).
            let tiles = x as u64 * heads as u64 * shape.batch as u64;
            let blocks = persistent_blocks(tiles, self.persistent_cap.unwrap_or(self.sm_count));
            let uniform = shape.window_left < 0 && shape.window_right < 0;
            if uniform {
                return self.launch(stream, info, (blocks, 1, 1), &p);
            }
            // SAFETY: u32 has no invalid bit patterns, and the counter is zeroed in stream order
            // before the kernel reads it.
            let mut counter = unsafe { self.scratch.alloc::<u32>(1, stream) }?;
            // SAFETY: the counter is ours and nothing else uses it until the launch below.
            let zeroed = unsafe { counter.set_zero_async(stream) }.during("cuMemsetD8Async");
            p.tile_counter = counter.as_device_ptr().as_raw();
            let launched = zeroed.and_then(|()| self.launch(stream, info, (blocks, 1, 1), &p));
            let freed = counter.drop_async(stream).during("cuMemFreeAsync");
            return launched.and(freed);
        }
        self.launch_split::<T>(stream, info, (x, heads, shape.batch * shape.layout.splits()), p)
    }

    /// Launch a forward kernel over `main_grid`; with split-KV (`num_splits` > 1) give it f32
    /// partials from the scratch pool (O(splits · stat rows · head_dim), freed in stream order)
    /// and queue the combine kernel that merges them into O and the LSE.
    pub(crate) fn launch_split<T: Element>(
        &self,
        stream: &Stream,
        info: &KernelInfo,
        main_grid: (u32, u32, u32),
        mut p: FwdParams,
    ) -> Result<()> {
        let shape = p.shape;
        let splits = shape.layout.splits();
        if splits == 1 {
            return self.launch(stream, info, main_grid, &p);
        }
        let combine = self.kernel(Role::ForwardCombine, T::DTYPE, &shape, &p.mods)?;
        let rows = shape.stat_rows() as usize * splits as usize;
        // SAFETY: f32 has no invalid bit patterns; every split writes each of its rows' partial
        // O and LSE before the combine kernel reads them (`forward::write_partial`, the decode
        // kernel's epilogue).
        let o_accum = unsafe { self.scratch.alloc::<f32>(rows * shape.head_dim as usize, stream) }?;
        let lse_accum = unsafe { self.scratch.alloc::<f32>(rows, stream) }?;
        p.o_accum = o_accum.as_device_ptr().as_raw();
        p.lse_accum = lse_accum.as_device_ptr().as_raw();
        let launched = self
            .launch(stream, info, main_grid, &p)
            .and_then(|()| self.launch(stream, combine, grid(combine, shape.seqlen_q, shape.heads, shape.batch), &p));
        let freed_o = o_accum.drop_async(stream).during("cuMemFreeAsync");
        let freed_l = lse_accum.drop_async(stream).during("cuMemFreeAsync");
        launched.and(freed_o).and(freed_l)
    }

    /// Backward into new tensors dQ, dK, dV (contiguous). `o` and `lse` come from the forward
    /// on the same inputs. Queued on `stream`; no sync.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Element>(
        &self,
        stream: &Stream,
        d_o: TensorRef<'_, T>,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        o: TensorRef<'_, T>,
        lse: &DeviceSlice<f32>,
        params: &AttentionParams,
    ) -> Result<Gradients<T>> {
        let [qa, ka, va, oa, doa] =
            [("q", &q), ("k", &k), ("v", &v), ("o", &o), ("d_o", &d_o)].map(|(n, t)| Arg::of(n, t));
        let shape = validate::backward_inputs([&qa, &ka, &va, &oa, &doa], lse.len(), params)?;
        validate::modifiers(params, &shape)?; // before allocating: bad options never allocate
        let mut dq = DeviceTensor::uninitialized(validate::q_shape(&shape))?;
        let mut dk = DeviceTensor::uninitialized(validate::kv_shape(&shape))?;
        let mut dv = DeviceTensor::uninitialized(validate::kv_shape(&shape))?;
        let mut d_sinks = match params.sinks {
            Some(_) => Some(DeviceBuffer::<f32>::zeroed(shape.heads as usize).during("cuMemAlloc")?),
            None => None,
        };
        let sinks_out = d_sinks.as_deref_mut();
        self.backward_into(
            stream,
            d_o,
            q,
            k,
            v,
            o,
            lse,
            dq.view_mut(),
            dk.view_mut(),
            dv.view_mut(),
            sinks_out,
            params,
        )?;
        Ok(Gradients { dq, dk, dv, d_sinks })
    }

    /// Backward into caller-provided dQ, dK, dV (any non-overlapping strides) and, when
    /// `params.sinks` is set, the sinks' gradient (`heads` floats; required then, and only then).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_into<T: Element>(
        &self,
        stream: &Stream,
        d_o: TensorRef<'_, T>,
        q: TensorRef<'_, T>,
        k: TensorRef<'_, T>,
        v: TensorRef<'_, T>,
        o: TensorRef<'_, T>,
        lse: &DeviceSlice<f32>,
        dq: TensorMut<'_, T>,
        dk: TensorMut<'_, T>,
        dv: TensorMut<'_, T>,
        d_sinks: Option<&mut DeviceSlice<f32>>,
        params: &AttentionParams,
    ) -> Result<()> {
        let [qa, ka, va, oa, doa] =
            [("q", &q), ("k", &k), ("v", &v), ("o", &o), ("d_o", &d_o)].map(|(n, t)| Arg::of(n, t));
        let shape = validate::backward_inputs([&qa, &ka, &va, &oa, &doa], lse.len(), params)?;
        let (dq_ref, dk_ref, dv_ref) = (dq.as_ref(), dk.as_ref(), dv.as_ref());
        let (dqa, dka, dva) = (Arg::of("dq", &dq_ref), Arg::of("dk", &dk_ref), Arg::of("dv", &dv_ref));
        validate::output(&dqa, validate::q_shape(&shape))?;
        validate::output(&dka, validate::kv_shape(&shape))?;
        validate::output(&dva, validate::kv_shape(&shape))?;
        let mods = validate::modifiers(params, &shape)?;
        let d_sinks = validate::sink_gradient(params, d_sinks, &shape)?;
        let lse = lse.as_device_ptr().as_raw();
        self.run_backward::<T>(
            stream,
            shape,
            mods,
            [&qa, &ka, &va, &oa, &doa, &dqa, &dka, &dva],
            lse,
            d_sinks,
            params.deterministic,
        )
    }

    /// Launch a validated backward (see the module docs for the kernels and their scratch).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_backward<T: Element>(
        &self,
        stream: &Stream,
        shape: AttnShape,
        mods: Modifiers,
        [qa, ka, va, oa, doa, dqa, dka, dva]: [&Arg; 8],
        lse: u64,
        d_sinks: u64,
        deterministic: bool,
    ) -> Result<()> {
        let main = self.kernel(Role::Backward, T::DTYPE, &shape, &mods)?;
        let pre = self.kernel(Role::BackwardPreprocess, T::DTYPE, &shape, &mods)?;
        let convert = self.kernel(Role::BackwardConvertDq, T::DTYPE, &shape, &mods)?;
        let sink_gradient = self.kernel(Role::BackwardSinkGradient, T::DTYPE, &shape, &mods)?;
        let reduce_kv = self.kernel(Role::BackwardReduceKv, T::DTYPE, &shape, &mods)?;

        // O(seqlen) scratch: D = rowsum(dO∘O) and the f32 dQ accumulator, freed in stream order.
        let rows = shape.stat_rows() as usize;
        // SAFETY: f32 has no invalid bit patterns; the preprocess kernel writes both buffers
        // before anything reads them.
        let softmax_d = unsafe { self.scratch.alloc::<f32>(rows, stream) }?;
        let dq_accum = unsafe { self.scratch.alloc::<f32>(rows * shape.head_dim as usize, stream) }?;
        // Deterministic mode: one zeroed turn counter per (batch, head, query tile).
        let semaphores = if deterministic {
            let tiles = shape.seqlen_q.div_ceil(main.query_tile_rows) as usize;
            let count = shape.batch as usize * shape.heads as usize * tiles;
            // SAFETY: u32 has no invalid bit patterns, and the buffer is zeroed in stream order
            // before the main kernel reads it.
            let mut buffer = unsafe { self.scratch.alloc::<u32>(count, stream) }?;
            // SAFETY: the buffer is ours and nothing else uses it until the launches below.
            unsafe { buffer.set_zero_async(stream) }.during("cuMemsetD8Async")?;
            Some(buffer)
        } else {
            None
        };
        // Grouped K/V heads: every query head's dK and dV rows in f32, summed per group after the
        // main kernel (O(batch · seqlen_k · heads · head_dim)).
        let grouped = shape.heads_k != shape.heads;
        let dkv_accum = if grouped {
            let keys = match shape.layout.cu_seqlens_k {
                0 => shape.batch as usize * shape.seqlen_k as usize,
                _ => shape.layout.total_k as usize,
            };
            let per_half = keys * shape.heads as usize * shape.head_dim as usize;
            // SAFETY: f32 has no invalid bit patterns; the main kernel writes every row before the
            // reduction reads it (each key block writes all its keys' rows, masked or not).
            Some(unsafe { self.scratch.alloc::<f32>(2 * per_half, stream) }?)
        } else {
            None
        };
        let p = BwdParams {
            fwd: forward_params(shape, mods, [qa, ka, va, oa], lse),
            d_o: doa.address,
            dq: dqa.address,
            dk: dka.address,
            dv: dva.address,
            dq_accum: dq_accum.as_device_ptr().as_raw(),
            softmax_d: softmax_d.as_device_ptr().as_raw(),
            do_strides: doa.strides(),
            dq_strides: dqa.strides(),
            dk_strides: dka.strides(),
            dv_strides: dva.strides(),
            dq_semaphore: semaphores.as_ref().map_or(0, |s| s.as_device_ptr().as_raw()),
            d_sinks,
            dkv_accum: dkv_accum.as_ref().map_or(0, |a| a.as_device_ptr().as_raw()),
        };
        let (b, h) = (shape.batch, shape.heads);
        let launched = self
            .launch(stream, pre, grid(pre, shape.seqlen_q, h, b), &p)
            .and_then(|()| self.launch(stream, main, grid(main, shape.seqlen_k, h, b), &p))
            .and_then(|()| self.launch(stream, convert, grid(convert, shape.seqlen_q, h, b), &p))
            .and_then(|()| match grouped {
                true => self.launch(stream, reduce_kv, grid(reduce_kv, shape.seqlen_k, shape.heads_k, b), &p),
                false => Ok(()),
            })
            .and_then(|()| match d_sinks {
                0 => Ok(()),
                _ => self.launch(stream, sink_gradient, (1, h, 1), &p),
            });
        let freed = dq_accum.drop_async(stream).during("cuMemFreeAsync");
        let freed_d = softmax_d.drop_async(stream).during("cuMemFreeAsync");
        let freed_s = semaphores.map_or(Ok(()), |s| s.drop_async(stream).during("cuMemFreeAsync"));
        let freed_kv = dkv_accum.map_or(Ok(()), |a| a.drop_async(stream).during("cuMemFreeAsync"));
        launched.and(freed).and(freed_d).and(freed_s).and(freed_kv)
    }

    /// Test only: dropout's keep decisions for a `(batch, heads, seqlen_q, seqlen_k)` problem as
    /// bytes (1 kept, 0 dropped; same layout), computed on the GPU by the generator the kernels
    /// use, so that tests can hold it against the reference's own Philox. The one place that
    /// allocates seqlen_q × seqlen_k on the device, hence limited to 2^24 entries.
    #[doc(hidden)]
    pub fn dropout_mask(&self, stream: &Stream, shape: [usize; 4], dropout: &Dropout) -> Result<DeviceBuffer<u8>> {
        let [batch, heads, seqlen_q, seqlen_k] = shape;
        let entries = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX);
        if shape.contains(&0) || entries > 1 << 24 || batch > validate::MAX_GRID_YZ || heads > validate::MAX_GRID_YZ {
            return Err(Error::invalid(
                "shape",
                format!("{shape:?}: between 1 and 2^24 entries, none zero, batch and heads at most 65535, expected"),
            ));
        }
        let dims = AttnShape {
            batch: batch as u32,
            heads: heads as u32,
            heads_k: heads as u32,
            seqlen_q: seqlen_q as u32,
            seqlen_k: seqlen_k as u32,
            head_dim: 64,
            scale: 1.0,
            scale_log2: std::f32::consts::LOG2_E,
            window_left: -1,
            window_right: -1,
            layout: Default::default(),
        };
        let params = AttentionParams { dropout: Some(*dropout), ..Default::default() };
        let mods = validate::modifiers(&params, &dims)?;
        if mods.dropout_keep_threshold == 0 {
            return Err(Error::invalid("dropout", "p = 0 drops nothing: there is no mask"));
        }
        let mask = DeviceBuffer::<u8>::zeroed(entries).during("cuMemAlloc")?;
        let p = FwdParams { shape: dims, o: mask.as_device_ptr().as_raw(), mods, ..FwdParams::default() };
        let info = self.kernel(Role::DropoutMask, registry::Dtype::Bf16, &dims, &Modifiers::default())?;
        self.launch(stream, info, grid(info, dims.seqlen_q, dims.heads, dims.batch), &p)?;
        Ok(mask)
    }

    /// The kernel for a role, dtype and head dim, with the score modifiers where the call uses
    /// them: a `with_kernel` override, else the registry's.
    pub(crate) fn kernel(
        &self,
        role: Role,
        dtype: registry::Dtype,
        shape: &AttnShape,
        mods: &Modifiers,
    ) -> Result<&'static KernelInfo> {
        self.choose(role, dtype, shape.head_dim, validate::flavor(shape, mods)).ok_or(Error::UnsupportedHeadDim {
            argument: "q",
            head_dim: shape.head_dim as usize,
            supported: &flash_attn_kernels::traits::SUPPORTED_HEAD_DIMS,
        })
    }

    /// The forward's main kernel: the registry's for the flavor, or for a dense call whose key loop
    /// suits it the persistent kernel (`registry::persistent_forward`), unless an override
    /// serves the call (so `with_kernel` and `FLASH_ATTN_KERNELS` measure what they name).
    pub(crate) fn forward_kernel<T: Element>(
        &self,
        shape: &AttnShape,
        mods: &Modifiers,
    ) -> Result<&'static KernelInfo> {
        let flavor = validate::flavor(shape, mods);
        let overridden = self.overrides.iter().any(|k| k.serves(Role::Forward, T::DTYPE, shape.head_dim, flavor));
        if flavor == Flavor::Dense
            && shape.layout.splits() == 1
            && !overridden
            && let Some(k) = registry::persistent_forward(T::DTYPE, shape.head_dim, self.hopper_kernels, shape.seqlen_k)
        {
            return Ok(k);
        }
        self.kernel(Role::Forward, T::DTYPE, shape, mods)
    }

    pub(crate) fn choose(
        &self,
        role: Role,
        dtype: registry::Dtype,
        head_dim: u32,
        flavor: Flavor,
    ) -> Option<&'static KernelInfo> {
        // An override replaces the kernel it serves (`KernelInfo::serves`, the registry's rule);
        // the measurement variants are all dense, so calls with modifiers keep their `_mods` kernel.
        let chosen = self.overrides.iter().copied().find(|k| k.serves(role, dtype, head_dim, flavor));
        chosen.or_else(|| registry::find(role, dtype, head_dim, self.hopper_kernels, flavor))
    }

    /// Launch one kernel over `grid` blocks.
    pub(crate) fn launch<P: Copy>(
        &self,
        stream: &Stream,
        info: &KernelInfo,
        grid: (u32, u32, u32),
        params: &P,
    ) -> Result<()> {
        // The registry pairs each kernel with its parameter block; a mismatch is a bug here,
        // never a user error, and `cargo xtask build-ptx` checks the PTX side of it.
        debug_assert_eq!(std::mem::size_of::<P>(), info.param_bytes as usize, "{}: wrong parameter block", info.name);
        let function = self.module.get_function(info.name).during("cuModuleGetFunction")?;
        let args = [params as *const P as *mut c_void];
        // SAFETY: the parameter block has the size and layout the entry point declares (checked
        // above and by `cargo xtask build-ptx`); every pointer in it was validated to address
        // memory of the validated shape and strides (tensors), or of the checked lengths
        // (`validate::modifiers`: ALiBi slopes of heads or batch · heads floats, sinks of heads;
        // d_sinks of at least heads; the scratch sized here: D, the dQ accumulator, the turn
        // counters, with grouped K/V heads 2 · batch · seqlen_k · heads · head_dim floats); block size and dynamic shared memory come
        // from the kernel's registry entry. The borrowed buffers outlive the call: the caller's
        // are freed with `cuMemFree`, which waits for queued kernels, and the backward's scratch
        // is freed in stream order (`cuMemFreeAsync` on this stream) after its last launch.
        let result = unsafe {
            cust::sys::cuLaunchKernel(
                function.to_raw(),
                grid.0,
                grid.1,
                grid.2,
                info.threads,
                1,
                1,
                info.dynamic_smem_bytes,
                stream.as_inner(),
                args.as_ptr() as *mut *mut c_void,
                std::ptr::null_mut(),
            )
        };
        // Straight through the driver API, so that every failure keeps CUDA's own error name.
        check_raw(result, "cuLaunchKernel")
    }
}

/// cust reports driver results it does not list (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION` from a
/// driver older than the PTX, for one) as `UnknownError`. Loading once more through the driver
/// API recovers CUDA's own error; this runs only after a failure.
/// The build-time cubin where there is one for this device (an sm_80 image runs on every 8.x
/// part, the sm_90a one on 9.0), else the PTX through the driver's JIT. A cubin the driver
/// refuses (an older driver than the ptxas that made it, say) falls back to the PTX;
/// `FLASH_ATTN_JIT=1` skips the cubin, to compare the two loads.
fn load_module(ptx: &str, cubin: &[u8]) -> Result<(Module, bool)> {
    let jit_only = std::env::var_os("FLASH_ATTN_JIT").is_some_and(|v| v == "1");
    if !cubin.is_empty()
        && !jit_only
        && let Ok(module) = Module::from_cubin(cubin, &[])
    {
        return Ok((module, true));
    }
    let module = Module::from_ptx(ptx, &[]).map_err(|error| module_load_error(ptx, error))?;
    Ok((module, false))
}

fn module_load_error(ptx: &str, error: cust::error::CudaError) -> Error {
    let fallback = Err::<(), _>(error).during("cuModuleLoadData (PTX)").unwrap_err();
    let Ok(image) = std::ffi::CString::new(ptx) else { return fallback };
    let mut module: cust::sys::CUmodule = std::ptr::null_mut();
    // SAFETY: `image` is a NUL-terminated PTX string that outlives the call; on success the
    // module handle is unloaded right away and never used.
    let result = unsafe { cust::sys::cuModuleLoadData(&mut module, image.as_ptr() as *const c_void) };
    if result == cust::sys::CUresult::CUDA_SUCCESS {
        // SAFETY: `module` was just loaded by this function and nothing else refers to it.
        unsafe { cust::sys::cuModuleUnload(module) };
        return fallback;
    }
    check_raw(result, "cuModuleLoadData (PTX)").err().unwrap_or(fallback)
}

/// `(ceil(rows / block_rows), heads, batch)`: the grid of a kernel tiled over `rows`.
pub(crate) fn grid(info: &KernelInfo, rows: u32, heads: u32, batch: u32) -> (u32, u32, u32) {
    (rows.div_ceil(info.block_rows), heads, batch)
}

/// The forward's parameter block from validated Q, K, V, O, the LSE buffer and the modifiers
/// (the backward carries the same block).
pub(crate) fn forward_params(shape: AttnShape, mods: Modifiers, [q, k, v, o]: [&Arg; 4], lse: u64) -> FwdParams {
    FwdParams {
        shape,
        q: q.address,
        k: k.address,
        v: v.address,
        o: o.address,
        lse,
        q_strides: q.strides(),
        k_strides: k.strides(),
        v_strides: v.strides(),
        o_strides: o.strides(),
        mods,
        o_accum: 0,
        lse_accum: 0,
        tile_counter: 0,
        descales: Default::default(),
    }
}

fn lse_buffer(shape: &AttnShape) -> Result<DeviceBuffer<f32>> {
    let rows = shape.batch as usize * shape.heads as usize * shape.seqlen_q as usize;
    // SAFETY: f32 has no invalid bit patterns; the forward writes every row's LSE.
    unsafe { DeviceBuffer::uninitialized(rows) }.during("cuMemAlloc")
}
