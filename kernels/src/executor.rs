//! [`CudaExecutor`]: the plan's arena as one device allocation, the plan's ops as
//! kernels and cuBLAS GEMMs on one stream, replayed as CUDA graphs.

use crate::device::{self, drv, DeviceBuf, DeviceInfo, Kernels, Launcher};
use crate::dnn::Dnn;
use crate::encode::{Encoder, Ptrs};
use crate::error::CudaError;
use crate::gemm::{Blas, WORKSPACE_BYTES};
use crate::graph::{self, GraphCache};
use crate::launch::ConvPath;
use crate::load;
use crate::sizing::Extras;
use cudarc::driver::{result, CudaContext, CudaStream};
use hpff_core::exec::{check_eval, check_train, check_unlinked, region_span, Executor, Held, Region, StepInput};
use hpff_core::plan::{Buf, Plan};
use std::fmt;
use std::sync::Arc;

/// How the executor computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// Let cuBLAS and cuDNN use TF32 tensor cores (10-bit mantissa products: faster,
    /// not comparable with the CPU executors at 1e-4). Off by default: strict fp32.
    pub tf32: bool,
    /// Capture each plan's step once as a CUDA graph and replay it (default); `false`,
    /// or `HPFF_CUDA_GRAPHS=0` in the environment, launches every op directly.
    pub graphs: bool,
    /// How to convolve; `None` reads [`CONV_ENV`] (`auto` there takes cuDNN where it
    /// loads and im2col otherwise, saying why in [`CudaExecutor::conv_fallback`]).
    pub conv: Option<ConvPath>,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions { tf32: false, graphs: true, conv: None }
    }
}

/// Environment variable: `cudnn` or `im2col` forces a convolution path; `auto` takes
/// cuDNN where it loads. Unset: im2col, until the cuDNN path has passed the GPU check
/// (`tools/device/gpu-check.sh` runs it with `cudnn`); it has only run on the emulator.
pub const CONV_ENV: &str = "HPFF_CUDA_CONV";

/// The convolution path asked for by [`CONV_ENV`] (`None`: automatic).
fn conv_from_env() -> Result<Option<ConvPath>, CudaError> {
    let Ok(v) = std::env::var(CONV_ENV) else { return Ok(Some(ConvPath::Im2col)) };
    match v.trim().to_ascii_lowercase().as_str() {
        "" => Ok(Some(ConvPath::Im2col)),
        "auto" => Ok(None),
        "cudnn" => Ok(Some(ConvPath::Cudnn)),
        "im2col" => Ok(Some(ConvPath::Im2col)),
        _ => Err(CudaError::Env { var: CONV_ENV, value: v, expected: "cudnn, im2col or auto" }),
    }
}

/// The CUDA executor. See the [crate docs](crate).
pub struct CudaExecutor {
    // Fields drop in declaration order: graphs, cuBLAS, modules and allocations go
    // before the stream and the context they belong to (`Drop` below makes the context
    // current and waits for the stream first).
    graphs: GraphCache,
    dnn: Option<Dnn>,
    blas: Blas,
    kernels: Kernels,
    arena: DeviceBuf,
    conv_ws: DeviceBuf,
    partials: DeviceBuf,
    loss: DeviceBuf,
    labels: DeviceBuf,
    step: DeviceBuf,
    blas_ws: DeviceBuf,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    layout: Plan,
    extras: Extras,
    info: DeviceInfo,
    opts: CudaOptions,
    use_graphs: bool,
    graph_fallback: Option<String>,
    conv_fallback: Option<String>,
    setup: Vec<(&'static str, usize)>,
    /// Device memory taken during plans' first runs (libraries' lazy loading).
    first_run_bytes: usize,
}

/// The setup stage of creating the cuBLAS handle.
const BLAS_HANDLE: &str = "cuBLAS handle";
/// The setup stage of creating the cuDNN handle.
const DNN_HANDLE: &str = "cuDNN handle";

/// Device memory used before and after each stage of building an executor.
struct SetupMemory<'a> {
    ctx: &'a CudaContext,
    last: usize,
    stages: Vec<(&'static str, usize)>,
}

impl<'a> SetupMemory<'a> {
    fn start(ctx: &'a CudaContext) -> Result<Self, CudaError> {
        Ok(SetupMemory { ctx, last: device::memory_used(ctx)?, stages: Vec::new() })
    }

    fn mark(&mut self, stage: &'static str) -> Result<(), CudaError> {
        let now = device::memory_used(self.ctx)?;
        self.stages.push((stage, now.saturating_sub(self.last)));
        self.last = now;
        Ok(())
    }
}

// SAFETY: every handle here (context, stream, modules, cuBLAS handle, graphs, device
// pointers) belongs to one CUDA context, and every method that touches them first makes
// that context current on the calling thread. cuBLAS handles may move between threads
// as long as they are not used concurrently, which `&mut self` rules out.
unsafe impl Send for CudaExecutor {}

impl fmt::Debug for CudaExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaExecutor")
            .field("info", &self.info)
            .field("arena_floats", &self.layout.arena_len())
            .field("extras", &self.extras)
            .field("opts", &self.opts)
            .field("graphs", &self.graphs.len())
            .field("graph_fallback", &self.graph_fallback)
            .finish()
    }
}

impl fmt::Display for CudaExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let precision = if self.opts.tf32 { "TF32" } else { "strict fp32" };
        let graphs = if self.use_graphs { "CUDA graphs" } else { "direct launches" };
        let conv = match &self.dnn {
            Some(d) => format!("cuDNN {} convolutions", d.version()),
            None => "im2col convolutions".into(),
        };
        write!(f, "cuda:{} ({}, {precision}, {graphs}, {conv})", self.info.ordinal, self.info.name)
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cuda:{} ({}, compute capability {}.{}, {:.1} GiB)",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_memory as f64 / (1u64 << 30) as f64
        )
    }
}

impl CudaExecutor {
    /// Bytes of the buffers the executor allocates for `layout` beside its arena (the
    /// convolution workspace, partial sums, loss record, labels, step scalars, the cuBLAS
    /// workspace). The library handles, CUDA graphs and what cuDNN and cuBLAS take on the
    /// first step come on top; [`Executor::held`] reports them as measured.
    pub fn planned_extra_bytes(layout: &Plan) -> usize {
        Extras::of(layout).bytes()
    }

    /// An executor on device `ordinal` for plans of `layout`'s parameter layout: loads
    /// the driver, NVRTC and cuBLAS (see [`crate::preload_lib_dir`]), compiles the kernels
    /// for the device, allocates the arena (zeroed) and the extra buffers.
    pub fn new(ordinal: usize, layout: &Plan, opts: CudaOptions) -> Result<Self, CudaError> {
        let (ctx, info) = device::open(ordinal)?;
        load::require_nvrtc()?;
        load::require_cublas()?;
        load::no_panic(|| Self::build(ctx, info, layout, opts))
    }

    fn build(ctx: Arc<CudaContext>, info: DeviceInfo, layout: &Plan, opts: CudaOptions) -> Result<Self, CudaError> {
        ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        let mut setup = SetupMemory::start(&ctx)?;
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        setup.mark("stream")?;
        let kernels = Kernels::load(&info.arch())?;
        setup.mark("kernel modules")?;
        let extras = Extras::of(layout);
        let arena = DeviceBuf::new(4 * layout.arena_len())?;
        setup.mark("arena")?;
        let conv_ws = DeviceBuf::new(4 * extras.conv_ws)?;
        let partials = DeviceBuf::new(8 * extras.partials)?;
        let loss = DeviceBuf::new(4 * extras.loss)?;
        let labels = DeviceBuf::new(4 * extras.labels)?;
        let step = DeviceBuf::new(4 * extras.step)?;
        let blas_ws = DeviceBuf::new(WORKSPACE_BYTES)?;
        setup.mark("extra buffers")?;
        let blas = Blas::create()?;
        setup.mark(BLAS_HANDLE)?;
        let blas = blas.bind(stream.cu_stream(), blas_ws.ptr, opts.tf32)?;
        setup.mark("cuBLAS stream and workspace")?;
        let want = match opts.conv {
            Some(c) => Some(c),
            None => conv_from_env()?,
        };
        let (dnn, conv_fallback) = match want {
            Some(ConvPath::Im2col) => (None, None),
            _ => match Dnn::create(opts.tf32) {
                Ok(d) => {
                    setup.mark(DNN_HANDLE)?;
                    (Some(d.bind(stream.cu_stream(), conv_ws.ptr, conv_ws.bytes)?), None)
                }
                Err(why) if want == Some(ConvPath::Cudnn) => return Err(CudaError::NoCudnn(why)),
                Err(why) => (None, Some(why)),
            },
        };
        let setup = setup.stages;
        for b in [&arena, &conv_ws, &partials, &loss, &labels, &step] {
            // SAFETY: a live allocation of `b.bytes` bytes of this context; stream-ordered
            // before any use of it.
            unsafe { result::memset_d8_async(b.ptr, 0, b.bytes, stream.cu_stream()) }
                .map_err(drv("cuMemsetD8Async"))?;
        }
        stream.synchronize().map_err(drv("cuStreamSynchronize"))?;
        Ok(CudaExecutor {
            graphs: GraphCache::default(),
            dnn,
            blas,
            kernels,
            arena,
            conv_ws,
            partials,
            loss,
            labels,
            step,
            blas_ws,
            stream,
            ctx,
            layout: layout.clone(),
            extras,
            info,
            opts,
            use_graphs: opts.graphs && graph::graphs_enabled(),
            graph_fallback: None,
            conv_fallback,
            setup,
            first_run_bytes: 0,
        })
    }

    /// Device memory the cuBLAS and cuDNN handles took for themselves when created
    /// (measured; cuBLAS 13's is 64 MiB on an H200), counted in [`Held::extra`].
    fn handle_bytes(&self) -> usize {
        self.setup.iter().filter(|(stage, _)| [BLAS_HANDLE, DNN_HANDLE].contains(stage)).map(|s| s.1).sum()
    }

    /// How this executor convolves.
    pub fn conv_path(&self) -> ConvPath {
        if self.dnn.is_some() {
            ConvPath::Cudnn
        } else {
            ConvPath::Im2col
        }
    }

    /// Why cuDNN is not used, when it was not asked for explicitly and could not be used.
    pub fn conv_fallback(&self) -> Option<&str> {
        self.conv_fallback.as_deref()
    }

    /// The cuDNN algorithm chosen for each convolution met so far: one line each
    /// (direction, shape, batch, algorithm number, workspace bytes).
    pub fn conv_algorithms(&self) -> Vec<String> {
        let Some(d) = &self.dnn else { return Vec::new() };
        d.choices()
            .into_iter()
            .map(|(dir, s, n, algo, ws)| {
                format!(
                    "{dir:?} {}x{}x{}x{} k{} s{} -> {}: algo {algo}, workspace {ws} B",
                    n, s.c_in, s.h, s.w, s.k, s.stride, s.c_out
                )
            })
            .collect()
    }

    /// Device memory (cuMemGetInfo, the whole device) taken by each stage of building this
    /// executor: stream, kernel modules, arena, extra buffers, cuBLAS handle. Diagnostics:
    /// another process allocating at the same time shows up here too.
    pub fn setup_memory(&self) -> &[(&'static str, usize)] {
        &self.setup
    }

    /// The device this executor runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Sizes of the buffers held besides the arena.
    pub fn extras(&self) -> Extras {
        self.extras
    }

    /// Whether steps are captured and replayed as CUDA graphs (off with
    /// `HPFF_CUDA_GRAPHS=0`, or after a capture failed).
    pub fn graphs_enabled(&self) -> bool {
        self.use_graphs
    }

    /// Why graph capture was given up for direct launches, if it was (said once, here).
    pub fn graph_fallback(&self) -> Option<&str> {
        self.graph_fallback.as_deref()
    }

    /// Bytes of device memory in use on this device (all processes), from cuMemGetInfo.
    pub fn device_memory_used(&self) -> Result<usize, CudaError> {
        device::memory_used(&self.ctx)
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.bind()?;
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    /// The buffers sized from the layout (labels, partial sums) bound the batch.
    fn check_batch(&self, plan: &Plan) -> Result<(), CudaError> {
        if plan.batch > self.layout.batch {
            return Err(CudaError::BatchAboveLayout { batch: plan.batch, layout: self.layout.batch });
        }
        Ok(())
    }

    fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))
    }

    fn ptrs(&self) -> Ptrs {
        Ptrs {
            arena: self.arena.ptr,
            conv_ws: self.conv_ws.ptr,
            partials: self.partials.ptr,
            loss: self.loss.ptr,
            labels: self.labels.ptr,
            step: self.step.ptr,
        }
    }

    /// Copies `src` to device address `dst` (stream-ordered; the driver stages pageable
    /// memory before returning, so `src` may go away afterwards).
    fn htod<T>(&self, dst: u64, src: &[T]) -> Result<(), CudaError> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: `dst` starts `size_of_val(src)` bytes inside a live allocation of this
        // context (callers derive it from a checked arena span or a buffer sized for the
        // layout's batch, which bounds every step's).
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }.map_err(drv("cuMemcpyHtoDAsync"))
    }

    /// Copies from device address `src` into `dst` and waits for it.
    fn dtoh<T>(&self, dst: &mut [T], src: u64) -> Result<(), CudaError> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: as in htod; `dst` is borrowed until the stream synchronises below.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }.map_err(drv("cuMemcpyDtoHAsync"))?;
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    /// Enqueues the copies of a training step's input: images, labels, step scalars.
    pub(crate) fn stage(&self, plan: &Plan, input: &StepInput) -> Result<(), CudaError> {
        self.htod(self.arena_addr(plan.input()), input.x)?;
        self.htod(self.labels.ptr, input.labels)?;
        self.htod(self.step.ptr, &step_scalars(input))
    }

    /// What the lockstep comparison drives: a launcher, the six buffers (in the
    /// emulator's order: arena, conv_ws, partials, loss, labels, step), the stream, and
    /// the encoder's addresses and sizes. Binds the context.
    #[cfg(feature = "emulate")]
    pub(crate) fn parts(&self) -> Result<(Launcher<'_>, [&DeviceBuf; 6], &CudaStream, Ptrs, Extras), CudaError> {
        self.bind()?;
        let bufs = [&self.arena, &self.conv_ws, &self.partials, &self.loss, &self.labels, &self.step];
        let launcher = self.launcher();
        Ok((launcher, bufs, &self.stream, self.ptrs(), self.extras))
    }

    /// The sink that enqueues on this executor's stream.
    fn launcher(&self) -> Launcher<'_> {
        Launcher { stream: &self.stream, kernels: &self.kernels, blas: &self.blas, dnn: self.dnn.as_ref() }
    }

    fn arena_addr(&self, b: Buf) -> u64 {
        self.arena.ptr + 4 * b.off as u64
    }

    /// Enqueues the ops of `plan` (training step or eval pass): direct launches the first
    /// time a plan runs (a warm-up), a capture the second time, a replay after that; or
    /// always direct launches when graphs are off. The device memory a plan's first run
    /// takes (cuDNN and cuBLAS load kernels into the context on first use) is measured
    /// and counted as held.
    fn run(&mut self, plan: &Plan, train: bool) -> Result<(), CudaError> {
        let ptrs = self.ptrs();
        let stream = self.stream.cu_stream();
        if let Some(g) = self.graphs.get(train, plan).filter(|_| self.use_graphs) {
            return g.launch(stream);
        }
        let first = !self.graphs.warmed(train, plan);
        if first || !self.use_graphs {
            let before = device::memory_used(&self.ctx)?;
            let mut sink = self.launcher();
            Encoder::new(&mut sink, plan, ptrs, self.extras).step(train)?;
            if first {
                self.first_run_bytes += device::memory_used(&self.ctx)?.saturating_sub(before);
            }
            return Ok(());
        }
        let mut sink = self.launcher();
        let extras = self.extras;
        let before = device::memory_used(&self.ctx)?;
        match graph::capture(stream, || Encoder::new(&mut sink, plan, ptrs, extras).step(train)) {
            Ok(g) => {
                let bytes = device::memory_used(&self.ctx)?.saturating_sub(before);
                g.launch(stream)?;
                self.graphs.insert(train, plan, g, bytes);
                Ok(())
            }
            Err(why) => {
                self.use_graphs = false;
                self.graphs.clear();
                self.graph_fallback = Some(why);
                let mut sink = self.launcher();
                Encoder::new(&mut sink, plan, ptrs, self.extras).step(train)
            }
        }
    }
}

/// The step scalars a kernel reads from device memory: lr, momentum, weight decay, Nesterov.
pub(crate) fn step_scalars(input: &StepInput) -> [f32; 4] {
    let sgd = input.sgd;
    [input.lr, sgd.momentum, sgd.weight_decay, if sgd.nesterov { 1.0 } else { 0.0 }]
}

impl Drop for CudaExecutor {
    fn drop(&mut self) {
        // The fields free device objects: make the context current here and let queued
        // work finish first. Errors cannot be reported from a drop.
        if self.ctx.bind_to_thread().is_ok() {
            let _ = self.stream.synchronize();
        }
    }
}

impl Executor for CudaExecutor {
    type Error = CudaError;

    fn layout(&self) -> &Plan {
        &self.layout
    }

    fn held(&self) -> Held {
        let buffers: usize = [&self.conv_ws, &self.partials, &self.loss, &self.labels, &self.step, &self.blas_ws]
            .iter()
            .map(|b| b.bytes)
            .sum();
        let measured = self.handle_bytes() + self.graphs.bytes() + self.first_run_bytes;
        Held { arena: 4 * self.layout.arena_len(), extra: buffers + measured }
    }

    fn upload(&mut self, r: Region, offset: usize, src: &[f32]) -> Result<(), CudaError> {
        let b = region_span(&self.layout, r, offset, src.len())?;
        self.bind()?;
        self.htod(self.arena_addr(b), src)?;
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    fn download(&mut self, r: Region, offset: usize, dst: &mut [f32]) -> Result<(), CudaError> {
        let b = region_span(&self.layout, r, offset, dst.len())?;
        self.bind()?;
        self.dtoh(dst, self.arena_addr(b))
    }

    fn train_step(&mut self, plan: &Plan, input: &StepInput, losses: &mut [f32]) -> Result<(), CudaError> {
        check_train(&self.layout, plan, input, losses)?;
        check_unlinked(plan)?;
        self.check_batch(plan)?;
        self.bind()?;
        self.stage(plan, input)?;
        self.run(plan, true)?;
        // The loss record is the only thing a training step sends back.
        let slots = plan.loss_slots();
        // As the reference, which zeroes the whole record it is handed.
        losses[slots..].fill(0.0);
        self.dtoh(&mut losses[..slots], self.loss.ptr)
    }

    fn eval_step(&mut self, plan: &Plan, x: &[f32], logits: &mut [f32]) -> Result<(), CudaError> {
        check_eval(&self.layout, plan, x, logits)?;
        check_unlinked(plan)?;
        self.check_batch(plan)?;
        self.bind()?;
        self.htod(self.arena_addr(plan.input()), x)?;
        self.run(plan, false)?;
        self.dtoh(logits, self.arena_addr(plan.logits()))
    }
}
