//! One test body, every executor: candle's `test_device!` pattern.
//!
//! [`on_every_executor!`](crate::on_every_executor) turns a test body `fn(Target)` into
//! one `#[test]` per executor of the registry that `--device` reads too
//! ([`hpff::executors!`]): the core's single-threaded reference, the multi-threaded CPU
//! executor, the CUDA executor, and the CUDA emulator (the CUDA executor's encoding and
//! kernels run on the CPU: `hpff_kernels::emu`). Where no CUDA device is present the
//! CUDA test prints why it checked nothing and passes — unless `HPFF_REQUIRE_CUDA=1`,
//! which makes a missing device a failure (the GPU machine's test script sets it).

use hpff::device::{self, Device, DynExecutor, ExecOptions};
use hpff_core::plan::Plan;

/// An executor a test body runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Reference,
    /// The CPU executor with this many threads.
    Cpu(usize),
    /// The CUDA executor on GPU 0, strict fp32.
    Cuda,
    /// The CUDA executor's launches and GEMMs run on the CPU, convolving as with cuDNN
    /// (the core's whole-batch convolutions stand in for cuDNN's).
    CudaEmulated,
    /// The same, convolving by the im2col kernels and GEMMs (the path without cuDNN).
    CudaEmulatedIm2col,
}

impl Target {
    /// The target a test body runs on for `device` (the CPU executor with 2 threads).
    pub fn on(device: Device) -> Target {
        match device {
            Device::Reference => Target::Reference,
            Device::Cpu => Target::Cpu(2),
            Device::Cuda(_) => Target::Cuda,
            Device::CudaEmulated => Target::CudaEmulated,
        }
    }

    /// A fresh executor laid out for `layout` (panics with the device's message if it
    /// cannot be opened: tests only open targets that [`run_on`] found present).
    pub fn open(self, layout: &Plan) -> DynExecutor {
        let opts = ExecOptions::default();
        let r = match self {
            Target::Reference => device::open(Device::Reference, layout, opts),
            Target::Cpu(threads) => device::open(Device::Cpu, layout, ExecOptions { threads, ..opts }),
            Target::Cuda => device::open(Device::Cuda(0), layout, opts),
            Target::CudaEmulated => device::open(Device::CudaEmulated, layout, opts),
            Target::CudaEmulatedIm2col => emulated_im2col(layout),
        };
        r.unwrap_or_else(|e| panic!("{self:?}: {e}"))
    }

    /// Executors that must agree with this one bit for bit: the CPU executor at 1, 2 and
    /// 3 threads; otherwise a second fresh instance of the same executor.
    pub fn bitwise_peers(self) -> Vec<Target> {
        match self {
            Target::Cpu(_) => vec![Target::Cpu(1), Target::Cpu(2), Target::Cpu(3)],
            t => vec![t, t],
        }
    }
}

#[cfg(feature = "cuda")]
fn emulated_im2col(layout: &Plan) -> hpff::error::Result<DynExecutor> {
    use hpff_kernels::{emu::EmuExecutor, ConvPath};
    Ok(device::boxed(EmuExecutor::with_conv(layout, ConvPath::Im2col)))
}

#[cfg(not(feature = "cuda"))]
fn emulated_im2col(_: &Plan) -> hpff::error::Result<DynExecutor> {
    Err(hpff::error::Error::msg("built without the cuda feature"))
}

/// Why the CUDA executor cannot run here, if it cannot.
pub fn cuda_missing() -> Option<String> {
    device::cuda_device(0).err().map(|e| e.to_string())
}

/// Runs `body` on `target`, or says plainly why not.
///
/// `HPFF_CPU_ISA` caps the CPU kernels' instruction set here as in the CLI, so every path
/// the machine has can be tested (`HPFF_CPU_ISA=scalar cargo test`): the reference and
/// CPU executors run the core's kernels on that path.
pub fn run_on(target: Target, body: fn(Target)) {
    if let Err(e) = hpff::cpu::apply_isa_env() {
        panic!("{e}");
    }
    if matches!(target, Target::CudaEmulated | Target::CudaEmulatedIm2col) && cfg!(not(feature = "cuda")) {
        println!("skipped on the CUDA emulator: hpff-tests built without its `cuda` feature");
        return;
    }
    if target == Target::Cuda {
        if let Some(why) = cuda_missing() {
            if std::env::var("HPFF_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("HPFF_REQUIRE_CUDA=1 but the CUDA executor cannot run: {why}");
            }
            println!("skipped on cuda: {why}");
            return;
        }
    }
    body(target)
}

/// `on_every_executor! { name => body; ... }`: a module `name` with one test per executor
/// of [`hpff::executors!`] (`reference`, `cpu`, `cuda`, `cuda_emulated`), each running
/// `body(Target)`.
#[macro_export]
macro_rules! on_every_executor {
    ($($name:ident => $body:expr;)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            hpff::executors!($crate::executor_tests, $body);
        }
    )*};
}

/// One `#[test]` per executor (called by [`hpff::executors!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! executor_tests {
    (($body:expr) $($test:ident => $device:expr,)*) => {$(
        #[test]
        fn $test() {
            $crate::executors::run_on($crate::executors::Target::on($device), $body)
        }
    )*};
}
