//! Picking an executor (`--device cpu|cuda[:N]`) and moving a model in and out of one.
//!
//! Everything above this module (the training loop, `eval`, `bench`, checkpoints) works
//! on `&mut dyn Executor<Error = Error>`: whichever executor runs, the code is the same.

use crate::cpu::CpuExecutor;
use crate::dist::Comm;
use crate::error::{Error, Result};
use hpff_core::exec::{init_params, Executor, Held, Reference, Region, StepInput};
use hpff_core::plan::Plan;
use hpff_core::rng::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Every executor, once: `test name => device`. `--device` takes their names
/// ([`Device::ALL`]) and the tests' `on_every_executor!` runs each test body on every one.
/// `executors!(m, args..)` calls `m! { (args..) name => device, ... }`.
#[macro_export]
macro_rules! executors {
    ($then:path $(, $($args:tt)*)?) => {
        $then! {
            ($($($args)*)?)
            reference => $crate::device::Device::Reference,
            cpu => $crate::device::Device::Cpu,
            cuda => $crate::device::Device::Cuda(0),
            cuda_emulated => $crate::device::Device::CudaEmulated,
        }
    };
}

/// Where to run: which executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// The core's single-threaded reference executor: the code a microcontroller runs;
    /// slow, for checking the others.
    Reference,
    /// The multi-threaded CPU executor.
    #[default]
    Cpu,
    /// The CUDA executor on GPU `N` (`cuda` = `cuda:0`).
    Cuda(usize),
    /// The CUDA executor's encoding and kernels run on the CPU, convolving as cuDNN would:
    /// checks the GPU path without a GPU (slow; built with the `emulate` feature).
    CudaEmulated,
}

macro_rules! device_list {
    (() $($name:ident => $device:expr,)*) => {
        /// Every executor ([`executors!`](crate::executors)).
        pub const ALL: &'static [Device] = &[$($device),*];
    };
}

impl Device {
    executors!(device_list);

    /// What `--device` accepts, for messages.
    fn choices() -> String {
        let names: Vec<String> = Device::ALL.iter().map(|d| d.to_string().replace(":0", "")).collect();
        format!("{} or cuda:N", names.join(", "))
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Device, String> {
        let bad = || format!("unknown device '{s}': use {}", Device::choices());
        if s == "cuda" {
            return Ok(Device::Cuda(0));
        }
        if let Some(n) = s.strip_prefix("cuda:") {
            return n.parse().map(Device::Cuda).map_err(|_| bad());
        }
        Device::ALL.iter().copied().find(|d| d.to_string() == s).ok_or_else(bad)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Reference => f.write_str("reference"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::CudaEmulated => f.write_str("cuda-emu"),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Device, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How to build an executor besides its device.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExecOptions {
    /// CPU worker threads (0 = all cores).
    pub threads: usize,
    /// Allow TF32 tensor-core GEMMs on the GPU (default: strict fp32).
    pub tf32: bool,
    /// Average every module's gradients over these processes before its update (data
    /// parallelism); `None` or one process: train alone.
    pub comm: Option<&'static dyn Comm>,
    /// With `comm`: BatchNorm's batch statistics over every process's images.
    pub sync_bn: bool,
    /// A pipeline stage's link to its neighbours (module parallelism).
    pub link: Option<crate::dist::StageLink>,
}

/// An executor whose errors are the CLI's.
pub type DynExecutor = Box<dyn Executor<Error = Error>>;

/// Wraps an executor so its errors become [`Error`]s.
struct Host<E>(E);

impl<E: Executor> fmt::Display for Host<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: Executor> Executor for Host<E>
where
    Error: From<E::Error>,
{
    type Error = Error;
    fn layout(&self) -> &Plan {
        self.0.layout()
    }
    fn held(&self) -> Held {
        self.0.held()
    }
    fn upload(&mut self, r: Region, offset: usize, src: &[f32]) -> Result<()> {
        Ok(self.0.upload(r, offset, src)?)
    }
    fn download(&mut self, r: Region, offset: usize, dst: &mut [f32]) -> Result<()> {
        Ok(self.0.download(r, offset, dst)?)
    }
    fn train_step(&mut self, plan: &Plan, input: &StepInput, losses: &mut [f32]) -> Result<()> {
        Ok(self.0.train_step(plan, input, losses)?)
    }
    fn eval_step(&mut self, plan: &Plan, x: &[f32], logits: &mut [f32]) -> Result<()> {
        Ok(self.0.eval_step(plan, x, logits)?)
    }
}

/// Boxes any executor behind the CLI's error type.
pub fn boxed<E: Executor + 'static>(e: E) -> DynExecutor
where
    Error: From<E::Error>,
{
    Box::new(Host(e))
}

/// An executor on `device` laid out for `layout`: its arena allocated, zeroed. On the CPU
/// the bytes it will take are checked against the memory available first.
pub fn open(device: Device, layout: &Plan, opts: ExecOptions) -> Result<DynExecutor> {
    let several = opts.comm.is_some_and(|c| c.size() > 1) || opts.link.is_some();
    Ok(match device {
        Device::Cpu => {
            if let Some(avail) = crate::resources::available_bytes() {
                let need = |p: &Plan| CpuExecutor::bytes_needed(p, opts.threads);
                crate::resources::check_fits(layout, avail, "the memory available", need)?;
            }
            boxed(
                CpuExecutor::new(layout, opts.threads)
                    .with_comm(opts.comm)
                    .with_sync_bn(opts.sync_bn)
                    .with_link(opts.link),
            )
        }
        _ if several => {
            return Err(Error::msg(format!(
                "training on several processes runs on --device cpu for now, not {device} (the GPU path, over NCCL, is not built yet)"
            )))
        }
        Device::Reference => boxed(Reference::new(layout, vec![0.0; layout.arena_len()])?),
        Device::Cuda(n) => cuda(n, layout, opts)?,
        Device::CudaEmulated => emulated(layout)?,
    })
}

#[cfg(feature = "emulate")]
fn emulated(layout: &Plan) -> Result<DynExecutor> {
    Ok(boxed(hpff_kernels::emu::EmuExecutor::with_conv(layout, hpff_kernels::ConvPath::Cudnn)))
}

#[cfg(not(feature = "emulate"))]
fn emulated(_: &Plan) -> Result<DynExecutor> {
    Err(Error::msg("this hpff was built without the CUDA emulator (cargo feature `emulate`)"))
}

/// What CUDA device `ordinal` is (name, compute capability, memory), or why it cannot be used.
#[cfg(feature = "cuda")]
pub fn cuda_device(ordinal: usize) -> Result<String> {
    Ok(hpff_kernels::probe(ordinal)?.to_string())
}

#[cfg(not(feature = "cuda"))]
pub fn cuda_device(_: usize) -> Result<String> {
    Err(Error::msg("this hpff was built without the CUDA executor (cargo feature `cuda`); use --device cpu"))
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize, layout: &Plan, opts: ExecOptions) -> Result<DynExecutor> {
    let o = hpff_kernels::CudaOptions { tf32: opts.tf32, ..Default::default() };
    let ex = hpff_kernels::CudaExecutor::new(ordinal, layout, o)?;
    if let Some(why) = ex.conv_fallback() {
        eprintln!(
            "note: convolving without cuDNN (slower): {why}; {}=im2col chooses this path without the note",
            hpff_kernels::CONV_ENV
        );
    }
    Ok(boxed(ex))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize, _: &Plan, _: ExecOptions) -> Result<DynExecutor> {
    Err(Error::msg("this hpff was built without the CUDA executor (cargo feature `cuda`); use --device cpu"))
}

/// A model's state on the host: what a checkpoint holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// [`Region::Params`].
    pub params: Vec<f32>,
    /// [`Region::BnState`].
    pub state: Vec<f32>,
    /// [`Region::Momentum`].
    pub momentum: Vec<f32>,
}

impl Snapshot {
    /// Zeroed buffers the size of `plan`'s regions.
    pub fn zeros(plan: &Plan) -> Snapshot {
        Snapshot { params: vec![0.0; plan.params], state: vec![0.0; plan.state], momentum: vec![0.0; plan.params] }
    }

    /// Parameters and BN statistics as the reference initialises them; momentum zero.
    pub fn init(plan: &Plan, rng: &mut Rng) -> Snapshot {
        let mut s = Snapshot::zeros(plan);
        init_params(plan, &mut s.params, &mut s.state, rng);
        s
    }

    /// Copies the executor's parameters, BN statistics and momentum to the host.
    pub fn download<E: Executor + ?Sized>(exec: &mut E) -> std::result::Result<Snapshot, E::Error> {
        let mut s = Snapshot::zeros(exec.layout());
        exec.download(Region::Params, 0, &mut s.params)?;
        exec.download(Region::BnState, 0, &mut s.state)?;
        exec.download(Region::Momentum, 0, &mut s.momentum)?;
        Ok(s)
    }

    /// Copies all three into the executor.
    pub fn upload<E: Executor + ?Sized>(&self, exec: &mut E) -> std::result::Result<(), E::Error> {
        exec.upload(Region::Params, 0, &self.params)?;
        exec.upload(Region::BnState, 0, &self.state)?;
        exec.upload(Region::Momentum, 0, &self.momentum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_round_trip() {
        let named = [
            ("reference", Device::Reference),
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
            ("cuda-emu", Device::CudaEmulated),
        ];
        for (s, d) in named {
            assert_eq!(s.parse::<Device>().unwrap(), d);
        }
        for d in Device::ALL {
            assert_eq!(d.to_string().parse::<Device>().unwrap(), *d);
        }
        assert_eq!(Device::ALL.len(), 4);
        assert_eq!(Device::Cuda(0).to_string(), "cuda:0");
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains("use reference, cpu, cuda, cuda-emu or cuda:N"), "{e}");
        }
    }
}
