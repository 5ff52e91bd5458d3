//! # hpff-kernels
//!
//! The CUDA executor of the hpff schedule: [`CudaExecutor`] implements
//! [`hpff_core::exec::Executor`] with NVRTC-compiled kernels and cuBLAS GEMMs, so the
//! training loop, the CLI and the agreement tests run on it unchanged.
//!
//! ## What runs where
//! - **Host**: the plan's op sequence is turned into launches (`encode`); inputs,
//!   labels and the step scalars (lr, momentum, weight decay, Nesterov) are copied in
//!   before a step, and only the loss record (training) or the logits (eval) come back.
//! - **Device, one stream**: every op. Convolutions are cuDNN's with
//!   `HPFF_CUDA_CONV=cudnn` or `auto` (one call per convolution and direction for the
//!   whole batch, NCHW f32, deterministic algorithms chosen once per shape by cuDNN's
//!   heuristics, the weight gradient accumulated with β = 1; see `dnn.rs`). Otherwise
//!   they are im2col over a chunk of `G` images into `[c_in·k·k][G·hw_out]`, one cuBLAS
//!   SGEMM per chunk, and transposes to NCHW; the input gradient is `Wᵀ·dy` then a
//!   col2im *gather*; the weight gradient a GEMM with β = 1 per chunk, chunks in order.
//!   Linear layers are cuBLAS GEMMs. BN statistics, bias gradients and losses are fixed
//!   two-stage reductions.
//! - **CUDA graphs**: the whole op sequence of a plan is captured once (per batch size,
//!   train and eval apart) and replayed; every address is fixed and per-step values are
//!   read from device memory, so a replay equals the direct launches. If capture or
//!   instantiation fails the executor falls back to direct launches and says why in
//!   [`CudaExecutor::graph_fallback`].
//!
//! ## Environment
//! - `HPFF_CUDA_LIB_DIR` — colon-separated folders searched for `libnvrtc.so*`,
//!   `libnvrtc-builtins.so*`, `libcublasLt.so*` and `libcublas.so*` before the loader's
//!   path (e.g. a pip wheel's `nvidia/cu13/lib`). The files are opened by full path and
//!   kept open; the later load by soname then finds them. `LD_LIBRARY_PATH` works too.
//! - `HPFF_CUDA_GRAPHS=0` — launch ops directly instead of replaying graphs (debugging,
//!   profiling single kernels).
//! - `HPFF_CUDA_CONV=cudnn|im2col|auto` — the convolution path. `auto` takes cuDNN
//!   where `libcudnn.so.9` loads (from `LD_LIBRARY_PATH` or `HPFF_CUDA_LIB_DIR`) and says
//!   why not otherwise ([`CudaExecutor::conv_fallback`]); `cudnn` makes a missing cuDNN
//!   an error. Unset means `im2col` for now: the cuDNN path has run on the emulator
//!   only (its first device run met a second cuDNN on the loader's path, since fixed in
//!   `dnn_api.rs` but not yet rerun on a GPU).
//!
//! CUDA is loaded at run time (cudarc's dynamic loading; `libcuda.so.1`, and the `.13`
//! or `.12` sonames of NVRTC and cuBLAS), so this crate builds and its tests run on
//! machines without CUDA: [`CudaExecutor::new`] then returns a one-line error ending in
//! `use --device cpu`, never a panic. Every CUDA function used is checked to exist
//! before the first call; all exist since CUDA 12.0.
//!
//! ## Precision and determinism
//! Strict fp32 by default: NVRTC without fast math (`--fmad=true`, as nvcc), cuBLAS in
//! its default (non-TF32) math mode, cuDNN in `CUDNN_FMA_MATH`; [`CudaOptions::tf32`]
//! opts into TF32 GEMMs and convolutions. BN statistics and every loss accumulate in f64
//! like the core, with the core's rounding points (the mean from the f32 sum, two-pass
//! variance, the running-statistics update in f64; SGD with the core's fused/unfused
//! operations). No float atomics in our kernels: reductions are fixed-shape trees over
//! fixed slices, bilinear-resize backward and col2im are gathers, weight-gradient chunks
//! accumulate in order; cuDNN runs only algorithms it marks deterministic. So a step's
//! bits depend only on the plan (and the GPU model and the cuBLAS and cuDNN versions).
//! Agreement with the CPU executors is to about 1e-4 relative, not bit-exact (summation
//! order).
//!
//! ## Testing without a GPU
//! With the `emulate` feature, [`emu::EmuExecutor`] runs the same encoder on the CPU: the
//! `cu/*.cu` sources compiled as host C++ (`emu/shim.h`), every CUDA thread a fiber so
//! `__syncthreads` is a real barrier (`emu/runtime.cpp`), every GEMM through the core's
//! `sgemm`. The workspace's tests run every golden, finite-difference and memory test on it,
//! so the index arithmetic, the kernels and the reductions are checked against PyTorch on
//! any machine; only the CUDA API calls, graph capture and the GPU's own rounding need a
//! device (`tools/device/gpu-check.sh`).
//!
//! ## Memory held
//! [`hpff_core::exec::Held::arena`]: the plan's arena, one `cuMemAlloc` of
//! `layout.arena_len()` floats laid out exactly as the plan says.
//! [`hpff_core::exec::Held::extra`]: the convolution workspace (≤ 256 MiB, see
//! [`Extras::of`]; cuDNN's algorithms are limited to it), f64 partial sums, the loss
//! record, labels, the step scalars and the 32 MiB cuBLAS workspace — all sized once from
//! the layout plan — plus what was measured with `cuMemGetInfo` as it happened: the
//! cuBLAS and cuDNN handles (cuBLAS 13's is 64 MiB on an H200; see
//! [`CudaExecutor::setup_memory`]), each cached CUDA graph (about 10 MiB), and each plan's
//! first run (the libraries load their kernels on first use). Not counted: the CUDA
//! context, made once per process before any executor, and the NVRTC kernel modules
//! (0 bytes measured).
//!
//! ## Lockstep (feature `emulate`, with a GPU)
//! [`CudaExecutor::lockstep_train_step`] runs every launch of a step on the device and in
//! the emulator from the same buffers and reports how far each result is from its twin:
//! what the emulator cannot reproduce (cuBLAS's own paths, races, the CUDA compiler's
//! code) is found launch by launch.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod compile;
mod device;
mod dnn;
mod dnn_api;
#[cfg(feature = "emulate")]
pub mod emu;
mod encode;
mod error;
mod executor;
mod gemm;
mod graph;
mod kernels;
mod launch;
mod load;
#[cfg(feature = "emulate")]
mod lockstep;
mod sizing;

pub use compile::{compile_all, nvrtc_available, nvrtc_version};
pub use device::{device_memory_used, probe, DeviceInfo};
pub use error::CudaError;
pub use executor::{CudaExecutor, CudaOptions, CONV_ENV};
pub use graph::GRAPHS_ENV;
pub use kernels::kernel_count;
pub use launch::ConvPath;
pub use load::{preload_lib_dir, LIB_DIR_ENV};
#[cfg(feature = "emulate")]
pub use lockstep::Divergence;
pub use sizing::Extras;
