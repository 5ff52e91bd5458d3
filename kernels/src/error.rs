//! [`CudaError`]: why the CUDA executor cannot start or a step cannot run. Every
//! variant displays as one line; the "not on this machine" ones end with the way out
//! (`--device cpu`).

use core::fmt;
use hpff_core::exec::ExecError;

/// Why the CUDA executor cannot start or a step cannot run.
#[derive(Debug, Clone, PartialEq)]
pub enum CudaError {
    /// `libcuda.so.1` cannot be loaded (no NVIDIA driver on this machine).
    NoDriver,
    /// NVRTC (`libnvrtc.so.13`/`.12`) cannot be loaded.
    NoNvrtc,
    /// cuBLAS (`libcublas.so.13`/`.12`) cannot be loaded.
    NoCublas,
    /// cuDNN was asked for (`HPFF_CUDA_CONV=cudnn`) but cannot be used; the reason.
    NoCudnn(String),
    /// A library loads but lacks a function this crate calls (too old a CUDA).
    MissingSymbol { lib: &'static str, symbol: &'static str },
    /// A library named by `HPFF_CUDA_LIB_DIR` exists but does not load.
    LibDir { path: String, reason: String },
    /// The driver sees fewer devices than the ordinal asks for.
    NoDevice { ordinal: usize, count: usize },
    /// A CUDA driver call failed.
    Driver { call: &'static str, error: String },
    /// A cuBLAS call failed.
    Cublas { call: &'static str, status: String },
    /// An environment variable has a value this crate does not take.
    Env { var: &'static str, value: String, expected: &'static str },
    /// A cuDNN call failed.
    Cudnn { call: &'static str, status: String },
    /// An NVRTC call other than the compilation itself failed.
    Nvrtc { call: &'static str, error: String },
    /// A kernel source did not compile; `log` is NVRTC's log.
    Compile { source: &'static str, arch: String, log: String },
    /// A size does not fit the 32-bit dimensions of a launch or a GEMM.
    TooLarge { what: &'static str, value: usize },
    /// A step's batch is larger than the layout plan's, which sized the executor's buffers.
    BatchAboveLayout { batch: usize, layout: usize },
    /// The CUDA emulator (feature `emulate`) met something it cannot run.
    Emulator(String),
    /// A launch's arguments do not match its kernel's declared signature (a bug here).
    Signature { kernel: &'static str, expected: &'static str, got: String },
    /// A CUDA library panicked while loading (caught, so the process lives on).
    Panic(String),
    /// The step's inputs are wrong (shared with every executor).
    Exec(ExecError),
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaError::NoDriver => f.write_str(
                "no CUDA driver found (libcuda.so.1 is not on this machine or on LD_LIBRARY_PATH); use --device cpu",
            ),
            CudaError::NoNvrtc => f.write_str(
                "NVRTC not found (libnvrtc.so.13 or .12 is not on LD_LIBRARY_PATH or in HPFF_CUDA_LIB_DIR); \
                 install the CUDA runtime compiler or use --device cpu",
            ),
            CudaError::NoCublas => f.write_str(
                "cuBLAS not found (libcublas.so.13 or .12 is not on LD_LIBRARY_PATH or in HPFF_CUDA_LIB_DIR); \
                 install cuBLAS or use --device cpu",
            ),
            CudaError::NoCudnn(why) => write!(
                f,
                "HPFF_CUDA_CONV=cudnn but cuDNN cannot be used ({}); install cuDNN 9 or set HPFF_CUDA_CONV=im2col",
                one_line(why)
            ),
            CudaError::MissingSymbol { lib, symbol } => {
                write!(f, "{lib} lacks {symbol} (CUDA 12.0 or newer is needed); use --device cpu")
            }
            CudaError::LibDir { path, reason } => {
                write!(f, "HPFF_CUDA_LIB_DIR: cannot load {path}: {}", one_line(reason))
            }
            CudaError::NoDevice { ordinal, count } => {
                write!(f, "no CUDA device {ordinal}: the driver sees {count}; use --device cpu")
            }
            CudaError::Driver { call, error } => write!(f, "CUDA driver call {call} failed: {}", one_line(error)),
            CudaError::Cublas { call, status } => write!(f, "cuBLAS call {call} failed: {status}"),
            CudaError::Env { var, value, expected } => write!(f, "{var}={value:?}: expected {expected}"),
            CudaError::Cudnn { call, status } => write!(f, "cuDNN call {call} failed: {}", one_line(status)),
            CudaError::Nvrtc { call, error } => write!(f, "NVRTC call {call} failed: {}", one_line(error)),
            CudaError::Compile { source, arch, log } => {
                write!(f, "NVRTC could not compile {source} for {arch}: {}", one_line(log))
            }
            CudaError::TooLarge { what, value } => {
                write!(f, "{what} = {value} does not fit a 32-bit CUDA dimension")
            }
            CudaError::Signature { kernel, expected, got } => {
                write!(f, "launch of {kernel} with argument kinds {got}, the kernel takes {expected}")
            }
            CudaError::BatchAboveLayout { batch, layout } => {
                write!(f, "a step of batch {batch} on an executor laid out for batch {layout}")
            }
            CudaError::Emulator(msg) => write!(f, "CUDA emulator: {}", one_line(msg)),
            CudaError::Panic(msg) => write!(f, "a CUDA library panicked while loading: {}", one_line(msg)),
            CudaError::Exec(e) => e.fmt(f),
        }
    }
}

/// Newlines folded, so every error is one line (the full NVRTC log is in `Debug`).
fn one_line(s: &str) -> String {
    let t: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    t.join(" | ")
}

impl std::error::Error for CudaError {}

impl From<ExecError> for CudaError {
    fn from(e: ExecError) -> Self {
        CudaError::Exec(e)
    }
}

impl CudaError {
    /// A driver error, with the driver's own description of it.
    pub(crate) fn driver(call: &'static str, e: cudarc::driver::DriverError) -> Self {
        let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let error = match (name.is_empty(), text.is_empty()) {
            (true, true) => format!("{:?}", e.0),
            (false, true) => name,
            (true, false) => text,
            (false, false) => format!("{name}: {text}"),
        };
        CudaError::Driver { call, error }
    }

    pub(crate) fn cublas(call: &'static str, e: cudarc::cublas::result::CublasError) -> Self {
        CudaError::Cublas { call, status: format!("{:?}", e.0) }
    }

    pub(crate) fn nvrtc(call: &'static str, e: cudarc::nvrtc::result::NvrtcError) -> Self {
        CudaError::Nvrtc { call, error: format!("{:?}", e.0) }
    }

    /// Whether the error says that CUDA is not usable on this machine at all (rather
    /// than a failure of a working installation).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            CudaError::NoDriver
                | CudaError::NoNvrtc
                | CudaError::NoCublas
                | CudaError::MissingSymbol { .. }
                | CudaError::NoDevice { .. }
        )
    }
}

/// `usize` → `i32` for launch and GEMM dimensions.
pub(crate) fn dim_i32(what: &'static str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError::TooLarge { what, value: v })
}

/// `usize` → `i64` for element counts.
pub(crate) fn dim_i64(what: &'static str, v: usize) -> Result<i64, CudaError> {
    i64::try_from(v).map_err(|_| CudaError::TooLarge { what, value: v })
}
