//! The CUDA emulator: the CUDA executor's work on the CPU, for tests on machines without
//! a GPU (feature `emulate`).
//!
//! [`EmuExecutor`] runs the same `Encoder` as [`crate::CudaExecutor`] — every launch
//! with its grid and arguments, every GEMM with its row-major mapping, the same buffers
//! sized by the same [`Extras`] — but "device" memory is host memory (a device address is
//! a host address), each kernel is the `cu/*.cu` source compiled as host C++ and run by a
//! scheduler that gives every CUDA thread its own fiber (so `__syncthreads` is a real
//! barrier), a GEMM is the core's `sgemm`, and a cuDNN convolution the core's
//! convolution of the whole batch (with [`ConvPath::Cudnn`], the default, as on a
//! device with cuDNN; [`EmuExecutor::with_conv`] picks the im2col kernels). So the golden and finite-difference tests
//! check the executor's index arithmetic, kernels and reductions against PyTorch here;
//! what only a GPU can check is the CUDA API use (modules, cuBLAS, copies, graphs) and
//! the device's own rounding (FMA contraction by the CUDA compiler).

use crate::encode::{Encoder, Ptrs};
use crate::error::CudaError;
use crate::executor::step_scalars;
use crate::kernels::K;
use crate::launch::{check_signature, Arg, ConvCall, ConvDir, ConvPath, Gemm, Sink};
use crate::sizing::Extras;
use hpff_core::exec::{check_eval, check_train, check_unlinked, region_span, Executor, Held, Region, StepInput};
use hpff_core::plan::{Buf, Plan};
use std::fmt;

include!(concat!(env!("OUT_DIR"), "/emu_table.rs"));

/// Host memory standing in for one device allocation: 8-byte aligned, never moved.
#[derive(Debug)]
pub(crate) struct HostBuf(Vec<u64>);

impl HostBuf {
    fn new(bytes: usize) -> HostBuf {
        HostBuf(vec![0; bytes.div_ceil(8).max(1)])
    }
    pub(crate) fn addr(&self) -> u64 {
        self.0.as_ptr() as u64
    }
    pub(crate) fn bytes(&self) -> usize {
        8 * self.0.len()
    }
}

/// Runs launches and GEMMs on the CPU.
pub(crate) struct EmuSink {
    /// (address, bytes) of every buffer: each operand must lie inside one.
    pub bufs: Vec<(u64, usize)>,
    pub conv: ConvPath,
}

impl EmuSink {
    fn inside(&self, addr: u64, bytes: usize) -> bool {
        self.bufs.iter().any(|&(a, n)| addr >= a && addr + bytes as u64 <= a + n as u64)
    }
}

impl Sink for EmuSink {
    fn launch(&mut self, k: K, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<(), CudaError> {
        check_signature(k, args)?;
        let name = k.decl().name;
        let f = trampoline(name).ok_or_else(|| CudaError::Emulator(format!("no host build of kernel {name}")))?;
        for a in args {
            if let Arg::P(p) = *a {
                if p != 0 && !self.inside(p, 0) {
                    return Err(CudaError::Emulator(format!("{name}: pointer {p:#x} outside every buffer")));
                }
            }
        }
        let slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        // SAFETY: `f` calls the kernel with arguments of its own signature (checked
        // above against the table, which a test checks against the sources); every
        // pointer argument is inside a live buffer of this executor (checked above; the
        // kernels' own indexing is what the tests exercise).
        let rc = unsafe { hpff_emu_launch(f, slots.as_ptr(), grid.0, grid.1, block) };
        if rc != 0 {
            return Err(CudaError::Emulator(format!("{name}: __syncthreads outside the emulator's fiber mode")));
        }
        Ok(())
    }

    fn gemm(&mut self, g: &Gemm) -> Result<(), CudaError> {
        if !g.valid() || !(g.beta == 0.0 || g.beta == 1.0) {
            return Err(CudaError::Emulator(format!("unsupported GEMM {g:?}")));
        }
        let [(a, al), (b, bl), (c, cl)] = g.extents();
        for (p, len) in [(a, al), (b, bl), (c, cl)] {
            if len > 0 && !self.inside(p, 4 * len) {
                return Err(CudaError::Emulator(format!("GEMM operand {p:#x}+{len} floats outside every buffer")));
            }
        }
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let (c_lo, c_hi) = (c, c + 4 * cl as u64);
        for (p, len) in [(a, al), (b, bl)] {
            if len > 0 && p < c_hi && c_lo < p + 4 * len as u64 {
                return Err(CudaError::Emulator(format!("GEMM output overlaps an input: {g:?}")));
            }
        }
        // SAFETY: each operand lies inside one live buffer (checked above), A and B do
        // not overlap C, and the buffers are not otherwise borrowed during the call.
        let (a, b, c) = unsafe {
            (
                std::slice::from_raw_parts(a as *const f32, al),
                std::slice::from_raw_parts(b as *const f32, bl),
                std::slice::from_raw_parts_mut(c as *mut f32, cl),
            )
        };
        hpff_core::ops::sgemm(g.m, g.n, g.k, a, g.lda, g.ta, b, g.ldb, g.tb, c, g.ldc, g.beta == 1.0);
        Ok(())
    }

    fn conv_path(&self) -> ConvPath {
        self.conv
    }

    fn conv(&mut self, c: &ConvCall) -> Result<(), CudaError> {
        let e = c.extents();
        for &(p, len) in &e {
            if len > 0 && !self.inside(p, 4 * len) {
                return Err(CudaError::Emulator(format!("convolution operand {p:#x}+{len} floats outside: {c:?}")));
            }
        }
        let (out, out_len) = c.written();
        for &(p, len) in e.iter().filter(|&&(p, _)| p != out) {
            if len > 0 && p < out + 4 * out_len as u64 && out < p + 4 * len as u64 {
                return Err(CudaError::Emulator(format!("convolution output overlaps an input: {c:?}")));
            }
        }
        // SAFETY: each operand lies inside one live buffer (checked above), the written
        // one overlaps no other, and the buffers are not otherwise borrowed here; only
        // the written one is made mutable.
        let ro = |(p, len): (u64, usize)| unsafe { std::slice::from_raw_parts(p as *const f32, len) };
        // SAFETY: as above.
        let out = unsafe { std::slice::from_raw_parts_mut(out as *mut f32, out_len) };
        let [x, w, y, b] = e;
        let (s, n) = (&c.shape, c.n);
        let mut scratch = vec![0.0f32; s.scratch_len()];
        use hpff_core::ops::{conv2d_accumulate_weight_grad, conv2d_backward_input, conv2d_forward};
        match c.dir {
            ConvDir::Forward => {
                let bias = (c.bias != 0).then(|| ro(b));
                conv2d_forward(s, n, ro(x), ro(w), bias, out, &mut scratch)
            }
            ConvDir::BackwardData => conv2d_backward_input(s, n, ro(y), ro(w), out, &mut scratch),
            ConvDir::BackwardFilter => conv2d_accumulate_weight_grad(s, n, ro(x), ro(y), out, None, &mut scratch),
        }
        Ok(())
    }
}

/// The CUDA executor's encoding run on the CPU. See the [module docs](self).
#[derive(Debug)]
pub struct EmuExecutor {
    layout: Plan,
    extras: Extras,
    arena: HostBuf,
    conv_ws: HostBuf,
    partials: HostBuf,
    loss: HostBuf,
    labels: HostBuf,
    step: HostBuf,
    conv: ConvPath,
}

impl EmuExecutor {
    /// An emulated executor for plans of `layout`'s parameter layout, its buffers zeroed,
    /// convolving as a device with cuDNN does.
    pub fn new(layout: &Plan) -> EmuExecutor {
        Self::with_conv(layout, ConvPath::Cudnn)
    }

    /// As [`EmuExecutor::new`], convolving by `conv`'s path.
    pub fn with_conv(layout: &Plan, conv: ConvPath) -> EmuExecutor {
        let extras = Extras::of(layout);
        EmuExecutor {
            conv,
            layout: layout.clone(),
            extras,
            arena: HostBuf::new(4 * layout.arena_len()),
            conv_ws: HostBuf::new(4 * extras.conv_ws),
            partials: HostBuf::new(8 * extras.partials),
            loss: HostBuf::new(4 * extras.loss),
            labels: HostBuf::new(4 * extras.labels),
            step: HostBuf::new(4 * extras.step),
        }
    }

    pub(crate) fn host_bufs(&self) -> [&HostBuf; 6] {
        [&self.arena, &self.conv_ws, &self.partials, &self.loss, &self.labels, &self.step]
    }

    fn ptrs(&self) -> Ptrs {
        Ptrs {
            arena: self.arena.addr(),
            conv_ws: self.conv_ws.addr(),
            partials: self.partials.addr(),
            loss: self.loss.addr(),
            labels: self.labels.addr(),
            step: self.step.addr(),
        }
    }

    fn arena_f32(&mut self) -> &mut [f32] {
        let n = self.layout.arena_len();
        // SAFETY: the buffer holds at least 4·arena_len bytes, 8-byte aligned, and is
        // borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.arena.0.as_mut_ptr().cast::<f32>(), n) }
    }

    fn write<T: Copy>(buf: &mut HostBuf, src: &[T]) {
        let bytes = std::mem::size_of_val(src);
        assert!(bytes <= buf.bytes());
        // SAFETY: in bounds (asserted); plain old data copied byte for byte.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), buf.0.as_mut_ptr().cast::<u8>(), bytes) }
    }

    /// Writes a training step's input: images, labels, step scalars.
    pub(crate) fn stage(&mut self, plan: &Plan, input: &StepInput) {
        let inp: Buf = plan.input();
        self.arena_f32()[inp.off..inp.end()].copy_from_slice(input.x);
        Self::write(&mut self.labels, input.labels);
        Self::write(&mut self.step, &step_scalars(input));
    }

    fn run(&mut self, plan: &Plan, train: bool) -> Result<(), CudaError> {
        if plan.batch > self.layout.batch {
            return Err(CudaError::BatchAboveLayout { batch: plan.batch, layout: self.layout.batch });
        }
        let bufs = self.host_bufs().iter().map(|b| (b.addr(), b.bytes())).collect();
        let mut sink = EmuSink { bufs, conv: self.conv };
        Encoder::new(&mut sink, plan, self.ptrs(), self.extras).step(train)
    }
}

impl fmt::Display for EmuExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cuda emulator (the CUDA executor's kernels on the CPU, {} convolutions)", self.conv.name())
    }
}

impl Executor for EmuExecutor {
    type Error = CudaError;

    fn layout(&self) -> &Plan {
        &self.layout
    }

    fn held(&self) -> Held {
        Held { arena: 4 * self.layout.arena_len(), extra: self.extras.bytes() }
    }

    fn upload(&mut self, r: Region, offset: usize, src: &[f32]) -> Result<(), CudaError> {
        let b = region_span(&self.layout, r, offset, src.len())?;
        self.arena_f32()[b.off..b.end()].copy_from_slice(src);
        Ok(())
    }

    fn download(&mut self, r: Region, offset: usize, dst: &mut [f32]) -> Result<(), CudaError> {
        let b = region_span(&self.layout, r, offset, dst.len())?;
        dst.copy_from_slice(&self.arena_f32()[b.off..b.end()]);
        Ok(())
    }

    fn train_step(&mut self, plan: &Plan, input: &StepInput, losses: &mut [f32]) -> Result<(), CudaError> {
        check_train(&self.layout, plan, input, losses)?;
        check_unlinked(plan)?;
        self.stage(plan, input);
        self.run(plan, true)?;
        let slots = plan.loss_slots();
        losses[slots..].fill(0.0);
        // SAFETY: the loss buffer holds `extras.loss >= slots` floats, 8-byte aligned.
        let rec = unsafe { std::slice::from_raw_parts(self.loss.0.as_ptr().cast::<f32>(), slots) };
        losses[..slots].copy_from_slice(rec);
        Ok(())
    }

    fn eval_step(&mut self, plan: &Plan, x: &[f32], logits: &mut [f32]) -> Result<(), CudaError> {
        check_eval(&self.layout, plan, x, logits)?;
        check_unlinked(plan)?;
        let inp = plan.input();
        self.arena_f32()[inp.off..inp.end()].copy_from_slice(x);
        self.run(plan, false)?;
        let l = plan.logits();
        logits.copy_from_slice(&self.arena_f32()[l.off..l.end()]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::BLOCK;
    use hpff_core::ops::{narrow, widen, Half};

    /// `len` values of `T` from the start of `buf`, copied out.
    fn read<T: Copy + Default>(buf: &HostBuf, len: usize) -> Vec<T> {
        let mut v = vec![T::default(); len];
        assert!(std::mem::size_of_val(v.as_slice()) <= buf.bytes());
        // SAFETY: in bounds (asserted); plain old data copied byte for byte.
        unsafe { std::ptr::copy_nonoverlapping(buf.0.as_ptr().cast::<T>(), v.as_mut_ptr(), len) };
        v
    }

    /// Runs elementwise kernel `k` over `n` items on buffers `x` and `y`.
    fn each(k: K, n: usize, x: &HostBuf, y: &HostBuf) {
        let mut sink = EmuSink { bufs: vec![(x.addr(), x.bytes()), (y.addr(), y.bytes())], conv: ConvPath::Cudnn };
        let grid = (n.div_ceil(BLOCK as usize) as u32, 1);
        sink.launch(k, grid, BLOCK, &[Arg::L(n as i64), Arg::P(x.addr()), Arg::P(y.addr())]).unwrap();
    }

    /// The CUDA sources' 16-bit conversions (integer arithmetic, run here as host C++) give
    /// the core's bits: f32 patterns around every rounding boundary of both formats
    /// narrowed (the stored bits and the rounded f32), and every 16-bit pattern widened.
    #[test]
    fn half_kernels_give_the_cores_bits() {
        let lows =
            [0u32, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x7fff, 0x8000, 0x8001, 0x1_8000, 0x7f_ffff, 0x12_3456];
        let specials = [0x7fc0_0000u32, 0xffc0_0001, 0x7f80_0001, 0x7f80_0000, 0xff80_0000];
        let xs: Vec<f32> =
            (0u32..512).flat_map(|e| lows.map(|m| (e << 23) | m)).chain(specials).map(f32::from_bits).collect();
        let all: Vec<u16> = (0..=u16::MAX).collect();
        for (h, kn, kw) in [(Half::F16, K::F16Narrow, K::F16Widen), (Half::Bf16, K::Bf16Narrow, K::Bf16Widen)] {
            let n = xs.len();
            let (mut xb, yb) = (HostBuf::new(4 * n), HostBuf::new(2 * n));
            EmuExecutor::write(&mut xb, &xs);
            each(kn, n, &xb, &yb);
            let (mut want_x, mut want_y) = (xs.clone(), vec![0u16; n]);
            narrow(h, &mut want_x, &mut want_y);
            let (got_x, got_y) = (read::<f32>(&xb, n), read::<u16>(&yb, n));
            for i in 0..n {
                let u = xs[i].to_bits();
                assert_eq!(got_y[i], want_y[i], "{h:?} narrow {u:#010x}");
                assert_eq!(got_x[i].to_bits(), want_x[i].to_bits(), "{h:?} rounded {u:#010x}");
            }
            let (mut hb, wb) = (HostBuf::new(2 * all.len()), HostBuf::new(4 * all.len()));
            EmuExecutor::write(&mut hb, &all);
            each(kw, all.len(), &hb, &wb);
            let mut want = vec![0f32; all.len()];
            widen(h, &all, &mut want);
            for (b, (g, w)) in all.iter().zip(read::<f32>(&wb, all.len()).iter().zip(&want)) {
                assert_eq!(g.to_bits(), w.to_bits(), "{h:?} widen {b:#06x}");
            }
        }
    }
}
