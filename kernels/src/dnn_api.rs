//! The cuDNN 9 functions hpff calls, resolved from one library handle that hpff opens
//! itself by soname (`libcudnn.so.9`).
//!
//! Not through cudarc's cuDNN module: it tries the unversioned `libcudnn.so` first, and
//! on a machine with a system cuDNN beside a pip wheel's that name finds the other
//! installation's shim, which then refuses the wheel's already loaded sub-libraries
//! (`CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH`, met on the H200 machine). Statuses and
//! enums are plain integers here, so no value cuDNN returns can make an invalid Rust enum.

use crate::error::CudaError;
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

pub(crate) type Handle = *mut c_void;
pub(crate) type TensorDesc = *mut c_void;
pub(crate) type FilterDesc = *mut c_void;
pub(crate) type ConvDesc = *mut c_void;
type Status = u32;

/// `cudnnStatus_t`, `cudnnTensorFormat_t`, `cudnnDataType_t`, `cudnnConvolutionMode_t`,
/// `cudnnMathType_t`, `cudnnDeterminism_t` values used here (cudnn_graph.h, cudnn_cnn.h).
pub(crate) const SUCCESS: u32 = 0;
pub(crate) const NCHW: u32 = 0;
pub(crate) const FLOAT: u32 = 0;
pub(crate) const CROSS_CORRELATION: u32 = 1;
pub(crate) const DEFAULT_MATH: u32 = 0;
pub(crate) const FMA_MATH: u32 = 3;
pub(crate) const DETERMINISTIC: u32 = 1;
/// Number of algorithms per direction (`CUDNN_CONVOLUTION_*_ALGO_COUNT`).
pub(crate) const FWD_ALGOS: u32 = 8;
pub(crate) const BWD_DATA_ALGOS: u32 = 6;
pub(crate) const BWD_FILTER_ALGOS: u32 = 7;

/// `cudnnConvolution*AlgoPerf_t` (the same layout for the three directions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Perf {
    pub algo: u32,
    pub status: u32,
    pub time: f32,
    pub memory: usize,
    pub determinism: u32,
    pub math_type: u32,
    pub reserved: [c_int; 3],
}

type AlgoQuery = unsafe extern "C" fn(
    Handle,
    *mut c_void,
    *mut c_void,
    ConvDesc,
    *mut c_void,
    c_int,
    *mut c_int,
    *mut Perf,
) -> Status;
type ConvRun = unsafe extern "C" fn(
    Handle,
    *const c_void,
    *mut c_void,
    *const c_void,
    *mut c_void,
    *const c_void,
    ConvDesc,
    u32,
    *mut c_void,
    usize,
    *const c_void,
    *mut c_void,
    *mut c_void,
) -> Status;

/// Entry points of the loaded library (the handle stays open for the process).
#[derive(Debug)]
pub(crate) struct Api {
    _lib: libloading::Library,
    pub get_version: unsafe extern "C" fn() -> usize,
    pub get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    pub create: unsafe extern "C" fn(*mut Handle) -> Status,
    pub destroy: unsafe extern "C" fn(Handle) -> Status,
    pub set_stream: unsafe extern "C" fn(Handle, *mut c_void) -> Status,
    pub create_tensor: unsafe extern "C" fn(*mut TensorDesc) -> Status,
    pub set_tensor_4d: unsafe extern "C" fn(TensorDesc, u32, u32, c_int, c_int, c_int, c_int) -> Status,
    pub destroy_tensor: unsafe extern "C" fn(TensorDesc) -> Status,
    pub create_filter: unsafe extern "C" fn(*mut FilterDesc) -> Status,
    pub set_filter_4d: unsafe extern "C" fn(FilterDesc, u32, u32, c_int, c_int, c_int, c_int) -> Status,
    pub destroy_filter: unsafe extern "C" fn(FilterDesc) -> Status,
    pub create_conv: unsafe extern "C" fn(*mut ConvDesc) -> Status,
    pub set_conv_2d: unsafe extern "C" fn(ConvDesc, c_int, c_int, c_int, c_int, c_int, c_int, u32, u32) -> Status,
    pub set_conv_math: unsafe extern "C" fn(ConvDesc, u32) -> Status,
    pub set_conv_groups: unsafe extern "C" fn(ConvDesc, c_int) -> Status,
    pub destroy_conv: unsafe extern "C" fn(ConvDesc) -> Status,
    /// (handle, x, w, conv, y, requested, returned, results)
    pub fwd_algos: AlgoQuery,
    /// (handle, w, dy, conv, dx, …)
    pub bwd_data_algos: AlgoQuery,
    /// (handle, x, dy, conv, dw, …)
    pub bwd_filter_algos: AlgoQuery,
    /// (handle, α, x desc, x, w desc, w, conv, algo, workspace, bytes, β, y desc, y)
    pub forward: ConvRun,
    /// (handle, α, w desc, w, dy desc, dy, conv, algo, workspace, bytes, β, dx desc, dx)
    pub backward_data: ConvRun,
    /// (handle, α, x desc, x, dy desc, dy, conv, algo, workspace, bytes, β, dw desc, dw)
    pub backward_filter: ConvRun,
    pub add_tensor: unsafe extern "C" fn(
        Handle,
        *const c_void,
        TensorDesc,
        *const c_void,
        *const c_void,
        TensorDesc,
        *mut c_void,
    ) -> Status,
}

/// The soname opened (after `crate::load` preloaded the files of `HPFF_CUDA_LIB_DIR`,
/// this finds that copy; otherwise the loader's path).
const SONAME: &str = "libcudnn.so.9";

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The loaded API, or why cuDNN cannot be used.
pub(crate) fn api() -> Result<&'static Api, String> {
    API.get_or_init(|| crate::load::preload_cudnn().and_then(|()| open())).as_ref().map_err(Clone::clone)
}

fn open() -> Result<Api, String> {
    // SAFETY: loading cuDNN runs its initialisers, which have no preconditions; the
    // library stays open inside the static `Api` for the rest of the process.
    let lib = unsafe { libloading::Library::new(SONAME) }.map_err(|e| format!("{SONAME}: {e}"))?;
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol is cuDNN 9's function of that name, whose C signature
            // is the field's type (cudnn_graph.h / cudnn_cnn.h); the pointer is used only
            // while `lib` is open (it lives in the same `Api`).
            *unsafe { lib.get($name.as_bytes()) }.map_err(|_| format!("{SONAME} lacks {}", $name))?
        };
    }
    Ok(Api {
        get_version: sym!("cudnnGetVersion"),
        get_error_string: sym!("cudnnGetErrorString"),
        create: sym!("cudnnCreate"),
        destroy: sym!("cudnnDestroy"),
        set_stream: sym!("cudnnSetStream"),
        create_tensor: sym!("cudnnCreateTensorDescriptor"),
        set_tensor_4d: sym!("cudnnSetTensor4dDescriptor"),
        destroy_tensor: sym!("cudnnDestroyTensorDescriptor"),
        create_filter: sym!("cudnnCreateFilterDescriptor"),
        set_filter_4d: sym!("cudnnSetFilter4dDescriptor"),
        destroy_filter: sym!("cudnnDestroyFilterDescriptor"),
        create_conv: sym!("cudnnCreateConvolutionDescriptor"),
        set_conv_2d: sym!("cudnnSetConvolution2dDescriptor"),
        set_conv_math: sym!("cudnnSetConvolutionMathType"),
        set_conv_groups: sym!("cudnnSetConvolutionGroupCount"),
        destroy_conv: sym!("cudnnDestroyConvolutionDescriptor"),
        fwd_algos: sym!("cudnnGetConvolutionForwardAlgorithm_v7"),
        bwd_data_algos: sym!("cudnnGetConvolutionBackwardDataAlgorithm_v7"),
        bwd_filter_algos: sym!("cudnnGetConvolutionBackwardFilterAlgorithm_v7"),
        forward: sym!("cudnnConvolutionForward"),
        backward_data: sym!("cudnnConvolutionBackwardData"),
        backward_filter: sym!("cudnnConvolutionBackwardFilter"),
        add_tensor: sym!("cudnnAddTensor"),
        _lib: lib,
    })
}

/// `Ok` for success, else the call and cuDNN's name for the status.
pub(crate) fn check(call: &'static str, st: Status) -> Result<(), CudaError> {
    if st == SUCCESS {
        return Ok(());
    }
    let name = match api() {
        // SAFETY: cudnnGetErrorString takes any status and returns a static C string.
        Ok(a) => unsafe {
            let p = (a.get_error_string)(st);
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        },
        Err(_) => String::new(),
    };
    Err(CudaError::Cudnn { call, status: format!("{name} ({st})") })
}
