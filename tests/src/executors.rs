//! One test body, every executor: candle's `test_device!` pattern.
//!
//! [`on_every_executor!`](crate::on_every_executor) turns a test body `fn(Target)` into
//! one `#[test]` per executor: the core's single-threaded reference, the multi-threaded
//! CPU executor, the CUDA executor, and the CUDA emulator (the CUDA executor's encoding
//! and kernels run on the CPU: `hpff_kernels::emu`). Where no CUDA device is present the
//! CUDA test prints why it checked nothing and passes — unless `HPFF_REQUIRE_CUDA=1`,
//! which makes a missing device a failure (the GPU machine's test script sets it).

use hpff::device::{self, Device, DynExecutor, ExecOptions};
use hpff_core::exec::Reference;
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
    /// A fresh executor laid out for `layout` (panics with the device's message if it
    /// cannot be opened: tests only open targets that [`run_on`] found present).
    pub fn open(self, layout: &Plan) -> DynExecutor {
        let r = match self {
            Target::Reference => Ok(device::boxed(Reference::new(layout, vec![0.0; layout.arena_len()]).unwrap())),
            Target::Cpu(threads) => {
                device::open(Device::Cpu, layout, ExecOptions { threads, ..ExecOptions::default() })
            }
            Target::Cuda => device::open(Device::Cuda(0), layout, ExecOptions::default()),
            Target::CudaEmulated => emulated(layout, false),
            Target::CudaEmulatedIm2col => emulated(layout, true),
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
fn emulated(layout: &Plan, im2col: bool) -> hpff::error::Result<DynExecutor> {
    use hpff_kernels::{emu::EmuExecutor, ConvPath};
    let conv = if im2col { ConvPath::Im2col } else { ConvPath::Cudnn };
    Ok(device::boxed(EmuExecutor::with_conv(layout, conv)))
}

#[cfg(not(feature = "cuda"))]
fn emulated(_: &Plan, _: bool) -> hpff::error::Result<DynExecutor> {
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

/// `on_every_executor! { name => body; ... }`: a module `name` with the tests
/// `reference`, `cpu`, `cuda` and `cuda_emulated`, each running `body(Target)`.
#[macro_export]
macro_rules! on_every_executor {
    ($($name:ident => $body:expr;)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn reference() {
                $crate::executors::run_on($crate::executors::Target::Reference, $body)
            }
            #[test]
            fn cpu() {
                $crate::executors::run_on($crate::executors::Target::Cpu(2), $body)
            }
            #[test]
            fn cuda() {
                $crate::executors::run_on($crate::executors::Target::Cuda, $body)
            }
            #[test]
            fn cuda_emulated() {
                $crate::executors::run_on($crate::executors::Target::CudaEmulated, $body)
            }
        }
    )*};
}
