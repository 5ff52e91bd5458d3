//! Run-time compilation of the kernel sources with NVRTC, to a CUBIN for one
//! architecture (`sm_90` for an H100), cached per architecture for the process.
//!
//! Options: `--std=c++17 -default-device --fmad=true`, no fast math (IEEE division and
//! square root, denormals kept). Every kernel of the table is registered as a name
//! expression, so a kernel missing from its source (or not `extern "C"`) fails the
//! compilation here instead of the module load on a GPU.

use crate::error::CudaError;
use crate::kernels::{Src, COMMON, KERNELS};
use crate::load;
use cudarc::nvrtc::{result, sys};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::{Arc, Mutex, OnceLock};

/// The CUBIN of every source, in [`Src::ALL`] order.
pub(crate) type Cubins = Arc<Vec<Vec<u8>>>;

static CACHE: OnceLock<Mutex<HashMap<String, Cubins>>> = OnceLock::new();

/// Checks that NVRTC can be loaded and has every function this crate uses.
pub fn nvrtc_available() -> Result<(), CudaError> {
    load::require_nvrtc()
}

/// NVRTC's version, `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), CudaError> {
    load::require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers; the library and symbol were checked above.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result().map_err(|e| CudaError::nvrtc("nvrtcVersion", e))?;
    Ok((major, minor))
}

/// Compiles every source for `arch` (e.g. `sm_80`); returns the number of kernels.
/// Uses (and fills) the process cache.
pub fn compile_all(arch: &str) -> Result<usize, CudaError> {
    cubins(arch)?;
    Ok(KERNELS.len())
}

/// The CUBINs for `arch`, compiled on first use.
pub(crate) fn cubins(arch: &str) -> Result<Cubins, CudaError> {
    let valid = arch.strip_prefix("sm_").is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric()));
    if !valid {
        return Err(CudaError::Nvrtc {
            call: "compile",
            error: format!("architecture {arch:?} is not of the form sm_XY"),
        });
    }
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(c) = cache.lock().map_err(|_| poisoned())?.get(arch) {
        return Ok(c.clone());
    }
    load::require_nvrtc()?;
    // Compile outside the lock: a second thread compiling the same arch only wastes time.
    let mut out = Vec::with_capacity(Src::ALL.len());
    for src in Src::ALL {
        out.push(load::no_panic(|| compile_source(src, arch))?);
    }
    let c: Cubins = Arc::new(out);
    cache.lock().map_err(|_| poisoned())?.insert(arch.to_string(), c.clone());
    Ok(c)
}

fn poisoned() -> CudaError {
    CudaError::Nvrtc { call: "compile", error: "the kernel cache lock is poisoned".into() }
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

impl Program {
    fn log(&self) -> String {
        // SAFETY: a live program.
        match unsafe { result::get_program_log(self.0) } {
            Ok(raw) => {
                let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Err(e) => format!("(no log: {e:?})"),
        }
    }
}

fn compile_source(src: Src, arch: &str) -> Result<Vec<u8>, CudaError> {
    let text = format!("{COMMON}\n#line 1 \"{}\"\n{}", src.name(), src.text());
    let code = CString::new(text).map_err(|_| CudaError::Nvrtc { call: "compile", error: "NUL in source".into() })?;
    let name =
        CString::new(src.name()).map_err(|_| CudaError::Nvrtc { call: "compile", error: "NUL in name".into() })?;
    let prog =
        Program(result::create_program(&code, Some(&name)).map_err(|e| CudaError::nvrtc("nvrtcCreateProgram", e))?);
    let names: Vec<CString> = src
        .kernels()
        .map(|(_, d)| CString::new(d.name))
        .collect::<Result<_, _>>()
        .map_err(|_| CudaError::Nvrtc { call: "compile", error: "NUL in kernel name".into() })?;
    for n in &names {
        // SAFETY: a live program and a NUL-terminated name that outlives the call.
        unsafe { sys::nvrtcAddNameExpression(prog.0, n.as_ptr()) }
            .result()
            .map_err(|e| CudaError::nvrtc("nvrtcAddNameExpression", e))?;
    }
    let opts =
        [format!("--gpu-architecture={arch}"), "--std=c++17".into(), "-default-device".into(), "--fmad=true".into()];
    // SAFETY: a live program; the options hold no NUL bytes.
    if let Err(e) = unsafe { result::compile_program(prog.0, &opts) } {
        let log = prog.log();
        let log = if log.trim().is_empty() { format!("{e:?}") } else { log };
        return Err(CudaError::Compile { source: src.name(), arch: arch.to_string(), log });
    }
    for (n, (_, d)) in names.iter().zip(src.kernels()) {
        let mut lowered: *const core::ffi::c_char = core::ptr::null();
        // SAFETY: a compiled program, a registered name expression and a valid out-pointer.
        unsafe { sys::nvrtcGetLoweredName(prog.0, n.as_ptr(), &mut lowered) }
            .result()
            .map_err(|e| CudaError::nvrtc("nvrtcGetLoweredName", e))?;
        // SAFETY: NVRTC returns a NUL-terminated string owned by the program, alive here.
        let l = if lowered.is_null() { "" } else { unsafe { CStr::from_ptr(lowered) }.to_str().unwrap_or("") };
        if l != d.name {
            return Err(CudaError::Compile {
                source: src.name(),
                arch: arch.to_string(),
                log: format!("kernel {} is not extern \"C\" (lowered to {l:?})", d.name),
            });
        }
    }
    let mut size = 0usize;
    // SAFETY: a compiled program and a valid out-pointer.
    unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
        .result()
        .map_err(|e| CudaError::nvrtc("nvrtcGetCUBINSize", e))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: the buffer holds the `size` bytes NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| CudaError::nvrtc("nvrtcGetCUBIN", e))?;
    if cubin.is_empty() {
        return Err(CudaError::Compile { source: src.name(), arch: arch.to_string(), log: "empty CUBIN".into() });
    }
    Ok(cubin)
}
