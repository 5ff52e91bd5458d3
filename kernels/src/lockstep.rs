//! Lockstep (feature `emulate`, and a GPU): every launch and GEMM of one training step
//! runs on the device and in the emulator from the same buffer contents, and the values
//! each one wrote are compared. Before the next launch the emulator's buffers are copied
//! to the device, so no launch inherits another's difference: a kernel (or cuBLAS call)
//! whose device result departs from its host twin is named with its op, where the golden
//! tests can only say that some gradient differs.

use crate::device::{drv, DeviceBuf, Launcher};
use crate::emu::{EmuExecutor, EmuSink};
use crate::encode::Encoder;
use crate::error::CudaError;
use crate::executor::CudaExecutor;
use crate::kernels::K;
use crate::launch::{Arg, ConvCall, ConvPath, Gemm, Sink};
use cudarc::driver::{result, CudaStream};
use hpff_core::exec::{Executor, StepInput};
use hpff_core::plan::{Op, Plan};

/// Names of the six buffers, in the order both executors list them.
const NAMES: [&str; 6] = ["arena", "conv_ws", "partials", "loss", "labels", "step"];
/// The one buffer of f64 values (partial sums); the others hold 4-byte values.
const F64_BUF: usize = 2;
/// The convolution workspace: cuDNN's scratch there is its own, so a library
/// convolution's comparison leaves it out.
const CONV_WS: usize = 1;

/// One launch or GEMM of the step and how far its device result is from the emulator's.
#[derive(Clone, Debug)]
pub struct Divergence {
    /// Position among the step's launches and GEMMs.
    pub launch: usize,
    /// Index of the plan op it belongs to, and the op.
    pub op_index: usize,
    pub op: String,
    /// Kernel name, or the GEMM's shape.
    pub what: String,
    /// Values the launch wrote (changed on either side).
    pub written: usize,
    /// Largest |device − emulated| over those values.
    pub abs: f64,
    /// `abs` relative to the largest |emulated| value written (floored at 1e-30).
    pub rel: f64,
    /// Where the largest difference is: buffer, element, device value, emulated value.
    pub at: (&'static str, usize, f64, f64),
}

impl CudaExecutor {
    /// Runs `plan`'s training step on this executor and on `emu` launch by launch (see
    /// the crate docs, "Lockstep"); both must hold the same model. Returns one entry per
    /// launch and GEMM. With `isolate`, each launch starts from the emulator's buffers and
    /// afterwards both hold the emulator's result; without it each side keeps its own
    /// results, so the entries show how a difference grows through the step.
    pub fn lockstep_train_step(
        &mut self,
        emu: &mut EmuExecutor,
        plan: &Plan,
        input: &StepInput,
        isolate: bool,
    ) -> Result<Vec<Divergence>, CudaError> {
        hpff_core::exec::check_train(self.layout(), plan, input, &vec![0.0; plan.loss_slots()])?;
        emu.stage(plan, input);
        let (launcher, dev, stream, ptrs, extras) = self.parts()?;
        let host = emu.host_bufs().map(|b| (b.addr(), b.bytes()));
        let conv = launcher.conv_path();
        let mut tee = Tee {
            dev: launcher,
            emu: EmuSink { bufs: host.to_vec(), conv },
            dev_bufs: dev,
            host,
            stream,
            isolate,
            pre: Vec::new(),
            pre_dev: Vec::new(),
            op: (0, String::new()),
            out: Vec::new(),
        };
        tee.sync_to_device()?;
        Encoder::new(&mut tee, plan, ptrs, extras).step(true)?;
        Ok(tee.out)
    }
}

/// Runs every launch on both sides and compares (see the module docs).
struct Tee<'a> {
    dev: Launcher<'a>,
    emu: EmuSink,
    dev_bufs: [&'a DeviceBuf; 6],
    /// (address, bytes) of the emulator's buffers.
    host: [(u64, usize); 6],
    stream: &'a CudaStream,
    isolate: bool,
    /// The buffers' contents before the launch: the emulator's, and the device's (the
    /// same when isolating).
    pre: Vec<Vec<u8>>,
    pre_dev: Vec<Vec<u8>>,
    op: (usize, String),
    out: Vec<Divergence>,
}

impl Tee<'_> {
    /// Bytes compared and mirrored of buffer `i`: the device allocation's size.
    fn len(&self, i: usize) -> usize {
        self.dev_bufs[i].bytes.min(self.host[i].1)
    }

    fn host_bytes(&self, i: usize) -> &[u8] {
        // SAFETY: the emulator's buffer `i` is a live host allocation of at least
        // `len(i)` bytes, owned by the executor that `lockstep_train_step` borrows
        // mutably, and no kernel runs while this slice lives.
        unsafe { std::slice::from_raw_parts(self.host[i].0 as *const u8, self.len(i)) }
    }

    /// Copies the emulator's buffers to the device and keeps them as the "before".
    fn sync_to_device(&mut self) -> Result<(), CudaError> {
        self.pre.clear();
        self.pre_dev.clear();
        for i in 0..6 {
            let bytes = self.host_bytes(i).to_vec();
            // SAFETY: the device buffer holds at least `bytes.len()` bytes (len(i)); the
            // copy completes before the stream synchronises below, while `bytes` lives.
            unsafe { result::memcpy_htod_async(self.dev_bufs[i].ptr, &bytes[..], self.stream.cu_stream()) }
                .map_err(drv("cuMemcpyHtoDAsync"))?;
            self.pre_dev.push(bytes.clone());
            self.pre.push(bytes);
        }
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    /// The emulator's address for device address `p` (same buffer, same offset).
    fn to_host(&self, p: u64) -> u64 {
        for (i, b) in self.dev_bufs.iter().enumerate() {
            if p >= b.ptr && p < b.ptr + b.bytes as u64 {
                return self.host[i].0 + (p - b.ptr);
            }
        }
        p // null, or outside every buffer: the emulator refuses it with its own error
    }

    /// Compares what the launch just wrote on both sides (leaving out buffer `skip`, if
    /// any), then re-aligns the device.
    fn compare(&mut self, what: String, skip: Option<usize>) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))?;
        let mut d = Divergence {
            launch: self.out.len(),
            op_index: self.op.0,
            op: self.op.1.clone(),
            what,
            written: 0,
            abs: 0.0,
            rel: 0.0,
            at: ("", 0, 0.0, 0.0),
        };
        let mut scale = 0f64;
        let mut devs = Vec::with_capacity(6);
        for i in 0..6 {
            let mut dev = vec![0u8; self.len(i)];
            // SAFETY: `dev` has the device buffer's compared length; the copy completes
            // at the synchronisation below, while `dev` lives.
            unsafe { result::memcpy_dtoh_async(&mut dev[..], self.dev_bufs[i].ptr, self.stream.cu_stream()) }
                .map_err(drv("cuMemcpyDtoHAsync"))?;
            self.stream.synchronize().map_err(drv("cuStreamSynchronize"))?;
            let w = if i == F64_BUF { 8 } else { 4 };
            let val = |b: &[u8], k: usize| -> f64 {
                if w == 8 {
                    f64::from_le_bytes(b[8 * k..8 * k + 8].try_into().unwrap_or([0; 8]))
                } else {
                    f32::from_le_bytes(b[4 * k..4 * k + 4].try_into().unwrap_or([0; 4])) as f64
                }
            };
            let (host, pre, pre_dev) = (self.host_bytes(i), &self.pre[i], &self.pre_dev[i]);
            let compared = if skip == Some(i) { 0 } else { dev.len() / w };
            for k in 0..compared {
                let r = w * k..w * k + w;
                if dev[r.clone()] == pre_dev[r.clone()] && host[r.clone()] == pre[r.clone()] {
                    continue;
                }
                d.written += 1;
                let (x, e) = (val(&dev, k), val(host, k));
                scale = scale.max(e.abs());
                let diff = if x.to_bits() == e.to_bits() { 0.0 } else { (x - e).abs() };
                let diff = if diff.is_nan() { f64::INFINITY } else { diff };
                if diff > d.abs {
                    d.abs = diff;
                    d.at = (NAMES[i], k, x, e);
                }
            }
            devs.push(dev);
        }
        d.rel = d.abs / scale.max(1e-30);
        self.out.push(d);
        if self.isolate {
            return self.sync_to_device();
        }
        self.pre = (0..6).map(|i| self.host_bytes(i).to_vec()).collect();
        self.pre_dev = devs;
        Ok(())
    }
}

impl Sink for Tee<'_> {
    fn launch(&mut self, k: K, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<(), CudaError> {
        self.dev.launch(k, grid, block, args)?;
        let host: Vec<Arg> =
            args.iter().map(|&a| if let Arg::P(p) = a { Arg::P(self.to_host(p)) } else { a }).collect();
        self.emu.launch(k, grid, block, &host)?;
        self.compare(k.decl().name.to_string(), None)
    }

    fn gemm(&mut self, g: &Gemm) -> Result<(), CudaError> {
        self.dev.gemm(g)?;
        let h = Gemm { a: self.to_host(g.a), b: self.to_host(g.b), c: self.to_host(g.c), ..*g };
        self.emu.gemm(&h)?;
        let t = |t: bool| if t { "ᵀ" } else { "" };
        self.compare(format!("gemm {}×{}×{} A{} B{} β={}", g.m, g.n, g.k, t(g.ta), t(g.tb), g.beta), None)
    }

    fn conv_path(&self) -> ConvPath {
        self.dev.conv_path()
    }

    fn conv(&mut self, c: &ConvCall) -> Result<(), CudaError> {
        self.dev.conv(c)?;
        let h = ConvCall {
            x: self.to_host(c.x),
            w: self.to_host(c.w),
            y: self.to_host(c.y),
            bias: self.to_host(c.bias),
            ..*c
        };
        self.emu.conv(&h)?;
        let s = &c.shape;
        let what =
            format!("cudnn {:?} {}x{}x{}x{} k{} s{} -> {}", c.dir, c.n, s.c_in, s.h, s.w, s.k, s.stride, s.c_out);
        self.compare(what, Some(CONV_WS))
    }

    fn begin_op(&mut self, index: usize, op: &Op) {
        self.op = (index, format!("{op:?}"));
    }
}
