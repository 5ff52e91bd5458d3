//! Finding the CUDA libraries without letting cudarc panic.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcublas` lazily by soname and panics when
//! one is missing. Everything here runs before cudarc touches a library:
//!
//! 1. [`preload_lib_dir`] honours `HPFF_CUDA_LIB_DIR` (colon-separated folders): the
//!    matching `libnvrtc-builtins.so*`, `libnvrtc.so*`, `libcublasLt.so*` and
//!    `libcublas.so*` files there are opened by full path and kept open for the life of
//!    the process. glibc's `dlopen` matches an already loaded object by its SONAME, so
//!    cudarc's later `dlopen("libnvrtc.so.13")` gets that copy. (`LD_LIBRARY_PATH`
//!    works too; this variable exists for libraries that ship inside e.g. a Python
//!    wheel, where setting `LD_LIBRARY_PATH` for the whole process is unwelcome.)
//!    cuDNN's libraries are preloaded the same way, apart, because cuDNN is optional.
//! 2. `require_*` check that the library is present (cudarc's `is_culib_present`) and
//!    that every symbol this crate makes cudarc call exists in it, so a too-old CUDA is
//!    an error value, not a panic at first use.

use crate::error::CudaError;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable: folders searched for NVRTC and cuBLAS before the loader's path.
pub const LIB_DIR_ENV: &str = "HPFF_CUDA_LIB_DIR";

/// File-name prefixes preloaded from `HPFF_CUDA_LIB_DIR`, in load order (cuBLASLt before
/// cuBLAS, which needs it; NVRTC's builtins before NVRTC, which opens them by soname).
const PRELOAD: [&str; 4] = ["libnvrtc-builtins.so", "libnvrtc.so", "libcublasLt.so", "libcublas.so"];

/// Driver API functions reached through cudarc here; all exist since CUDA 12.0
/// (`cuGraphInstantiateWithFlags` since 11.4).
const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDeviceTotalMem_v2",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuGraphInstantiateWithFlags",
    "cuGraphLaunch",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemsetD8Async",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuLaunchKernel",
];

const NVRTC_SYMBOLS: &[&str] = &[
    "nvrtcVersion",
    "nvrtcCreateProgram",
    "nvrtcDestroyProgram",
    "nvrtcCompileProgram",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcAddNameExpression",
    "nvrtcGetLoweredName",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
];

const CUBLAS_SYMBOLS: &[&str] = &[
    "cublasCreate_v2",
    "cublasDestroy_v2",
    "cublasSetStream_v2",
    "cublasSetMathMode",
    "cublasSetWorkspace_v2",
    "cublasSgemm_v2",
];

/// cuDNN 9's libraries preloaded from `HPFF_CUDA_LIB_DIR`, dependencies first (the shim,
/// `libcudnn.so.9`, opens the others by soname on first use).
const CUDNN_PRELOAD: [&str; 7] = [
    "libcudnn_graph.so",
    "libcudnn_engines_runtime_compiled.so",
    "libcudnn_engines_precompiled.so",
    "libcudnn_heuristic.so",
    "libcudnn_ops.so",
    "libcudnn_cnn.so",
    "libcudnn.so",
];

/// Libraries opened from `HPFF_CUDA_LIB_DIR`, kept loaded for the whole process.
static PRELOADED: OnceLock<Result<Vec<(PathBuf, libloading::Library)>, CudaError>> = OnceLock::new();

/// Opens the libraries found in `HPFF_CUDA_LIB_DIR` (once per process); returns their paths.
pub fn preload_lib_dir() -> Result<Vec<PathBuf>, CudaError> {
    let r = PRELOADED.get_or_init(|| preload(&PRELOAD));
    match r {
        Ok(v) => Ok(v.iter().map(|(p, _)| p.clone()).collect()),
        Err(e) => Err(e.clone()),
    }
}

/// cuDNN's libraries opened from `HPFF_CUDA_LIB_DIR` (apart from the others: cuDNN is
/// optional, so failing to load it must not stop the executor).
static PRELOADED_CUDNN: OnceLock<Result<Vec<(PathBuf, libloading::Library)>, CudaError>> = OnceLock::new();

/// Opens the files of `HPFF_CUDA_LIB_DIR` matching `prefixes`, in that order.
fn preload(prefixes: &[&str]) -> Result<Vec<(PathBuf, libloading::Library)>, CudaError> {
    let dirs = std::env::var_os(LIB_DIR_ENV).unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&dirs).filter(|d| !d.as_os_str().is_empty()).collect();
    let mut loaded = Vec::new();
    for prefix in prefixes {
        let Some(path) = dirs.iter().find_map(|d| pick(d, prefix)) else { continue };
        // SAFETY: loading a CUDA library runs its initialisers, which have no
        // preconditions; the handle lives in a static for the rest of the process, so
        // nothing that resolves symbols through it can outlive it.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => loaded.push((path, lib)),
            Err(e) => return Err(CudaError::LibDir { path: path.display().to_string(), reason: e.to_string() }),
        }
    }
    Ok(loaded)
}

/// The file of `dir` for library `prefix` (`libnvrtc.so` matches `libnvrtc.so`,
/// `libnvrtc.so.13`, `libnvrtc.so.13.0.48`): the greatest name, so the newest major wins
/// and a versioned name wins over the bare development symlink.
fn pick(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut best: Option<String> = None;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let rest = match name.strip_prefix(prefix) {
            Some(r) => r,
            None => continue,
        };
        // Only `prefix` itself or `prefix.<digits and dots>`.
        let ok =
            rest.is_empty() || (rest.starts_with('.') && rest[1..].chars().all(|c| c.is_ascii_digit() || c == '.'));
        if ok && best.as_ref().is_none_or(|b| name > *b) {
            best = Some(name);
        }
    }
    best.map(|b| dir.join(b))
}

/// Runs `f`, turning a panic inside a CUDA library wrapper into an error value.
pub(crate) fn no_panic<T>(f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(CudaError::Panic(msg))
        }
    }
}

fn check_symbols(
    lib: &'static libloading::Library,
    name: &'static str,
    syms: &[&'static str],
) -> Result<(), CudaError> {
    for &s in syms {
        // SAFETY: only the address is looked up; nothing is called through it.
        let found = unsafe { lib.get::<*const core::ffi::c_void>(s.as_bytes()) }.is_ok();
        if !found {
            return Err(CudaError::MissingSymbol { lib: name, symbol: s });
        }
    }
    Ok(())
}

/// The driver is loadable and has every function used here.
pub fn require_driver() -> Result<(), CudaError> {
    preload_lib_dir()?;
    // SAFETY: is_culib_present only tries to dlopen the candidate names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    // SAFETY: the library is present (checked above), so culib() does not panic.
    no_panic(|| check_symbols(unsafe { cudarc::driver::sys::culib() }, "libcuda", DRIVER_SYMBOLS))
}

/// NVRTC is loadable and has every function used here.
pub fn require_nvrtc() -> Result<(), CudaError> {
    preload_lib_dir()?;
    // SAFETY: as in require_driver.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::NoNvrtc);
    }
    // SAFETY: present, checked above.
    no_panic(|| check_symbols(unsafe { cudarc::nvrtc::sys::culib() }, "libnvrtc", NVRTC_SYMBOLS))
}

/// Preloads cuDNN's libraries from `HPFF_CUDA_LIB_DIR` (once); `dnn_api` then opens
/// the shim by soname. An `Err` holds the reason (the executor then convolves without it).
pub(crate) fn preload_cudnn() -> Result<(), String> {
    preload_lib_dir().map_err(|e| e.to_string())?;
    match PRELOADED_CUDNN.get_or_init(|| preload(&CUDNN_PRELOAD)) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// cuBLAS is loadable and has every function used here.
pub fn require_cublas() -> Result<(), CudaError> {
    preload_lib_dir()?;
    // SAFETY: as in require_driver.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(CudaError::NoCublas);
    }
    // SAFETY: present, checked above.
    no_panic(|| check_symbols(unsafe { cudarc::cublas::sys::culib() }, "libcublas", CUBLAS_SYMBOLS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_greatest_versioned_name() {
        let dir = std::env::temp_dir().join(format!("hpff-kernels-pick-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in ["libnvrtc.so", "libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc-builtins.so.13.2", "libnvrtc.so.bak~"] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        assert_eq!(pick(&dir, "libnvrtc.so"), Some(dir.join("libnvrtc.so.13")));
        assert_eq!(pick(&dir, "libnvrtc-builtins.so"), Some(dir.join("libnvrtc-builtins.so.13.2")));
        assert_eq!(pick(&dir, "libcublas.so"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
