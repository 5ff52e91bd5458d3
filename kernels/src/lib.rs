//! # hpff-kernels
//!
//! The CUDA executor of the hpff schedule will live here (NVRTC-compiled kernels,
//! cuBLAS GEMM, a device arena sized by the core's plan). Until it lands, this crate
//! compiles everywhere and every entry point returns [`CudaError::NotBuilt`], so
//! `--device cuda` fails with a clear message instead of a missing symbol.

use core::fmt;

/// Why the CUDA executor cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaError {
    /// This build has no CUDA executor yet.
    NotBuilt,
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaError::NotBuilt => {
                write!(f, "the CUDA executor is not implemented in this build of hpff; use --device cpu")
            }
        }
    }
}

impl std::error::Error for CudaError {}

/// Opens the CUDA device `ordinal`.
pub fn open_device(ordinal: usize) -> Result<(), CudaError> {
    let _ = ordinal;
    Err(CudaError::NotBuilt)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stub_says_what_is_missing() {
        let e = super::open_device(0).unwrap_err();
        assert!(e.to_string().contains("--device cpu"));
    }
}
