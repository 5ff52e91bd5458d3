//! The device side: opening a device, raw allocations, loaded kernel modules, and the
//! [`Sink`] that launches on the executor's stream.

use crate::compile;
use crate::dnn::Dnn;
use crate::error::CudaError;
use crate::gemm::Blas;
use crate::kernels::{Src, K};
use crate::launch::{check_signature, Arg, ConvCall, ConvPath, Gemm, Sink};
use crate::load;
use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use std::sync::Arc;

/// What [`probe`] reports about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability, `(major, minor)`: `(9, 0)` for an H100.
    pub compute_capability: (i32, i32),
    /// Bytes of device memory.
    pub total_memory: usize,
}

impl DeviceInfo {
    /// The NVRTC architecture of the device, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.compute_capability.0, self.compute_capability.1)
    }
}

pub(crate) fn drv(call: &'static str) -> impl Fn(DriverError) -> CudaError {
    move |e| CudaError::driver(call, e)
}

/// Opens (retains) the primary context of device `ordinal`, after checking that the
/// driver is there and the device exists.
pub(crate) fn open(ordinal: usize) -> Result<(Arc<CudaContext>, DeviceInfo), CudaError> {
    load::require_driver()?;
    load::no_panic(|| {
        match result::init() {
            Ok(()) => {}
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE => {
                return Err(CudaError::NoDevice { ordinal, count: 0 })
            }
            Err(e) => return Err(CudaError::driver("cuInit", e)),
        }
        let count = result::device::get_count().map_err(drv("cuDeviceGetCount"))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("cuDevicePrimaryCtxRetain"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(drv("cuDeviceGetName"))?,
            compute_capability: ctx.compute_capability().map_err(drv("cuDeviceGetAttribute"))?,
            total_memory: ctx.total_mem().map_err(drv("cuDeviceTotalMem"))?,
        };
        Ok((ctx, info))
    })
}

/// Name, compute capability and memory of device `ordinal` (no NVRTC or cuBLAS needed).
pub fn probe(ordinal: usize) -> Result<DeviceInfo, CudaError> {
    open(ordinal).map(|(_, info)| info)
}

/// Bytes of device memory in use on device `ordinal` (all processes), from cuMemGetInfo.
pub fn device_memory_used(ordinal: usize) -> Result<usize, CudaError> {
    let (ctx, _) = open(ordinal)?;
    memory_used(&ctx)
}

pub(crate) fn memory_used(ctx: &CudaContext) -> Result<usize, CudaError> {
    ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
    let (free, total) = result::mem_get_info().map_err(drv("cuMemGetInfo"))?;
    Ok(total.saturating_sub(free))
}

/// One `cuMemAlloc` allocation, freed on drop (the owner makes its context current
/// first; see `CudaExecutor`'s `Drop`).
#[derive(Debug)]
pub(crate) struct DeviceBuf {
    pub ptr: u64,
    pub bytes: usize,
}

impl DeviceBuf {
    /// `bytes` (at least 4) of device memory, unset. A plain synchronous allocation, not
    /// the stream-ordered pool, so cuMemGetInfo sees exactly what is held.
    pub(crate) fn new(bytes: usize) -> Result<DeviceBuf, CudaError> {
        let bytes = bytes.max(4);
        // SAFETY: the context is current (the executor binds it before allocating); the
        // memory is only ever accessed through kernels and copies that stay in bounds.
        let ptr = unsafe { result::malloc_sync(bytes) }.map_err(drv("cuMemAlloc"))?;
        Ok(DeviceBuf { ptr, bytes })
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAlloc and freed once; the executor synchronised its
        // stream before dropping its buffers, so no work still uses them.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// The loaded kernel modules of one context and every kernel's function handle.
#[derive(Debug)]
pub(crate) struct Kernels {
    modules: Vec<sys::CUmodule>,
    funcs: Vec<sys::CUfunction>,
}

impl Kernels {
    /// Compiles (or takes from the cache) the CUBINs for `arch` and loads them into the
    /// current context.
    pub(crate) fn load(arch: &str) -> Result<Kernels, CudaError> {
        let cubins = compile::cubins(arch)?;
        let mut k = Kernels { modules: Vec::new(), funcs: vec![core::ptr::null_mut(); K::ALL.len()] };
        for (src, cubin) in Src::ALL.into_iter().zip(cubins.iter()) {
            // SAFETY: a complete CUBIN image from NVRTC, alive during the call (the driver
            // copies it).
            let m = unsafe { result::module::load_data(cubin.as_ptr().cast()) }.map_err(drv("cuModuleLoadData"))?;
            k.modules.push(m);
            for (kernel, decl) in src.kernels() {
                let name = std::ffi::CString::new(decl.name)
                    .map_err(|_| CudaError::Nvrtc { call: "load", error: "NUL in kernel name".into() })?;
                // SAFETY: a module just loaded into the current context.
                let f = unsafe { result::module::get_function(m, name) }.map_err(drv("cuModuleGetFunction"))?;
                k.funcs[kernel as usize] = f;
            }
        }
        Ok(k)
    }
}

impl Drop for Kernels {
    fn drop(&mut self) {
        for &m in &self.modules {
            // SAFETY: loaded by cuModuleLoadData and unloaded once, after the stream
            // finished (the executor synchronises before dropping).
            let _ = unsafe { result::module::unload(m) };
        }
    }
}

/// Launches on the executor's stream: the real [`Sink`].
pub(crate) struct Launcher<'a> {
    pub stream: &'a CudaStream,
    pub kernels: &'a Kernels,
    pub blas: &'a Blas,
    /// cuDNN, when the executor convolves with it.
    pub dnn: Option<&'a Dnn>,
}

impl Sink for Launcher<'_> {
    fn launch(&mut self, k: K, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<(), CudaError> {
        check_signature(k, args)?;
        let mut slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        let mut params: Vec<*mut core::ffi::c_void> = slots.iter_mut().map(|s| (s as *mut u64).cast()).collect();
        let f = self.kernels.funcs[k as usize];
        // SAFETY: `f` is a kernel of a module loaded in this context; its arguments
        // match its declared signature (checked above, and the table is checked against
        // the sources), each slot holding the C value in its first bytes; the pointer
        // arguments are addresses inside live allocations of this executor, which the
        // encoder derived from the plan's offsets (checked against the arena's length
        // before the step). The driver copies the parameters before returning.
        unsafe { result::launch_kernel(f, (grid.0, grid.1, 1), (block, 1, 1), 0, self.stream.cu_stream(), &mut params) }
            .map_err(drv("cuLaunchKernel"))
    }

    fn gemm(&mut self, g: &Gemm) -> Result<(), CudaError> {
        if !g.valid() {
            return Err(CudaError::Cublas {
                call: "cublasSgemm",
                status: format!("invalid leading dimension in {g:?}"),
            });
        }
        self.blas.sgemm(g)
    }

    fn conv_path(&self) -> ConvPath {
        if self.dnn.is_some() {
            ConvPath::Cudnn
        } else {
            ConvPath::Im2col
        }
    }

    fn conv(&mut self, c: &ConvCall) -> Result<(), CudaError> {
        match self.dnn {
            Some(d) => d.run(c),
            None => Err(CudaError::Cudnn { call: "convolution", status: "cuDNN is not loaded".into() }),
        }
    }
}
