//! cuDNN convolutions: one handle on the executor's stream, the convolution workspace
//! shared with the im2col path (so the held bound does not change), and per convolution
//! shape and direction a set of descriptors with the algorithm chosen once.
//!
//! Bits repeat: the algorithm comes from cuDNN's heuristics (`cudnnGet…Algorithm_v7`,
//! whose ranking depends only on the shapes, the GPU and the library), never from
//! timing (`cudnnFind…`), and only algorithms cuDNN marks deterministic are taken. Strict
//! fp32 asks for `CUDNN_FMA_MATH` (no TF32 tensor cores); `--tf32` for cuDNN's default
//! math, which allows TF32 on Ampere and later, as PyTorch does.

use crate::dnn_api::{self as api, check, Api, ConvDesc, FilterDesc, Handle, Perf, TensorDesc};
use crate::error::{dim_i32, CudaError};
use crate::launch::{ConvCall, ConvDir};
use cudarc::driver::sys::CUstream;
use hpff_core::ops::Conv2d;
use std::cell::RefCell;
use std::ffi::c_void;

/// Most algorithms asked of the heuristics (cuDNN has at most 8 per direction).
const ALGOS: usize = 8;

/// The first algorithm the heuristics rank that succeeded, is deterministic and fits
/// `budget` workspace bytes: (algorithm, workspace bytes).
fn choose(perf: &[Perf], budget: usize) -> Option<(u32, usize)> {
    perf.iter()
        .find(|p| p.status == api::SUCCESS && p.determinism == api::DETERMINISTIC && p.memory <= budget)
        .map(|p| (p.algo, p.memory))
}

/// Descriptors of one convolution shape and batch, and its chosen algorithm.
#[derive(Debug)]
struct Prepared {
    dir: ConvDir,
    shape: Conv2d,
    n: usize,
    x: TensorDesc,
    y: TensorDesc,
    bias: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
    api: &'static Api,
    algo: u32,
    ws_bytes: usize,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created once by this value (or is null, which
        // cuDNN's destroy functions accept) and is destroyed once, here.
        unsafe {
            let a = self.api;
            let _ = (a.destroy_tensor)(self.x);
            let _ = (a.destroy_tensor)(self.y);
            let _ = (a.destroy_tensor)(self.bias);
            let _ = (a.destroy_filter)(self.w);
            let _ = (a.destroy_conv)(self.conv);
        }
    }
}

/// An NCHW f32 tensor descriptor.
fn tensor(a: &Api, n: usize, c: usize, h: usize, w: usize) -> Result<TensorDesc, CudaError> {
    let mut d: TensorDesc = core::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    check("cudnnCreateTensorDescriptor", unsafe { (a.create_tensor)(&mut d) })?;
    let dims = [dim_i32("batch", n)?, dim_i32("channels", c)?, dim_i32("height", h)?, dim_i32("width", w)?];
    // SAFETY: a descriptor just created.
    let st = unsafe { (a.set_tensor_4d)(d, api::NCHW, api::FLOAT, dims[0], dims[1], dims[2], dims[3]) };
    if let Err(e) = check("cudnnSetTensor4dDescriptor", st) {
        // SAFETY: created above, not used again.
        let _ = unsafe { (a.destroy_tensor)(d) };
        return Err(e);
    }
    Ok(d)
}

impl Prepared {
    /// Descriptors for `c` (addresses ignored); the algorithm is chosen by [`Dnn::prepare`].
    fn descriptors(a: &'static Api, c: &ConvCall, tf32: bool) -> Result<Prepared, CudaError> {
        let s = c.shape;
        let null = core::ptr::null_mut();
        let mut p = Prepared {
            dir: c.dir,
            shape: s,
            n: c.n,
            x: null,
            y: null,
            bias: null,
            w: null,
            conv: null,
            api: a,
            algo: 0,
            ws_bytes: 0,
        };
        p.x = tensor(a, c.n, s.c_in, s.h, s.w)?;
        p.y = tensor(a, c.n, s.c_out, s.h_out(), s.w_out())?;
        p.bias = tensor(a, 1, s.c_out, 1, 1)?;
        // A grouped filter is [c_out][c_in / groups][k][k], as PyTorch's.
        let (k, ci, ck) = (dim_i32("c_out", s.c_out)?, dim_i32("c_in", s.c_in / s.groups)?, dim_i32("kernel", s.k)?);
        let groups = dim_i32("groups", s.groups)?;
        let (pad, stride) = (dim_i32("padding", s.pad)?, dim_i32("stride", s.stride)?);
        // hpff's convolutions are PyTorch's: cross-correlation.
        let math = if tf32 { api::DEFAULT_MATH } else { api::FMA_MATH };
        // SAFETY: valid out-pointers; each descriptor is set right after it is created
        // (and destroyed by `p`'s drop if setting it fails).
        unsafe {
            check("cudnnCreateFilterDescriptor", (a.create_filter)(&mut p.w))?;
            check("cudnnSetFilter4dDescriptor", (a.set_filter_4d)(p.w, api::FLOAT, api::NCHW, k, ci, ck, ck))?;
            check("cudnnCreateConvolutionDescriptor", (a.create_conv)(&mut p.conv))?;
            let st = (a.set_conv_2d)(p.conv, pad, pad, stride, stride, 1, 1, api::CROSS_CORRELATION, api::FLOAT);
            check("cudnnSetConvolution2dDescriptor", st)?;
            check("cudnnSetConvolutionMathType", (a.set_conv_math)(p.conv, math))?;
            check("cudnnSetConvolutionGroupCount", (a.set_conv_groups)(p.conv, groups))?;
        }
        Ok(p)
    }
}

/// A cuDNN handle bound to the executor's stream, with the workspace it may use and the
/// prepared convolutions. Destroyed on drop (the context must be current then).
pub(crate) struct Dnn {
    api: &'static Api,
    h: Handle,
    tf32: bool,
    ws: u64,
    ws_bytes: usize,
    prepared: RefCell<Vec<Prepared>>,
}

impl Dnn {
    /// A handle (cuDNN allocates device memory for itself here; the executor measures
    /// it), after loading cuDNN; a descriptor is made and dropped at once, so a cuDNN
    /// whose sub-libraries do not load fails here rather than at the first convolution.
    pub(crate) fn create(tf32: bool) -> Result<Dnn, String> {
        let a = api::api()?;
        let mut h: Handle = core::ptr::null_mut();
        // SAFETY: a valid out-pointer; the context is current on this thread.
        check("cudnnCreate", unsafe { (a.create)(&mut h) }).map_err(|e| e.to_string())?;
        let d = Dnn { api: a, h, tf32, ws: 0, ws_bytes: 0, prepared: RefCell::new(Vec::new()) };
        let probe = tensor(a, 1, 1, 1, 1).map_err(|e| e.to_string())?;
        // SAFETY: created just above, not used again.
        let _ = unsafe { (a.destroy_tensor)(probe) };
        Ok(d)
    }

    /// Binds the handle to `stream` and gives it `ws_bytes` of workspace at `ws`.
    pub(crate) fn bind(mut self, stream: CUstream, ws: u64, ws_bytes: usize) -> Result<Dnn, CudaError> {
        // SAFETY: a live handle and a stream of the current context.
        check("cudnnSetStream", unsafe { (self.api.set_stream)(self.h, stream.cast()) })?;
        self.ws = ws;
        self.ws_bytes = ws_bytes;
        Ok(self)
    }

    /// The loaded library's version, e.g. `9.10.2`.
    pub(crate) fn version(&self) -> String {
        // SAFETY: no preconditions.
        let v = unsafe { (self.api.get_version)() };
        format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
    }

    /// Algorithms (and workspace bytes) chosen so far: (direction, shape, batch, algorithm).
    pub(crate) fn choices(&self) -> Vec<(ConvDir, Conv2d, usize, u32, usize)> {
        self.prepared.borrow().iter().map(|p| (p.dir, p.shape, p.n, p.algo, p.ws_bytes)).collect()
    }

    /// Asks the heuristics for `p`'s direction and keeps the first usable algorithm.
    fn choose_algo(&self, p: &mut Prepared) -> Result<(), CudaError> {
        let mut perf = [Perf::default(); ALGOS];
        let req = ALGOS as i32;
        let (a, out, mut n) = (self.api, perf.as_mut_ptr(), 0i32);
        // SAFETY: live handle and descriptors; `perf` has room for `req` records of the
        // layout cuDNN writes (`Perf` is `cudnnConvolution*AlgoPerf_t`).
        let st = unsafe {
            match p.dir {
                ConvDir::Forward => (a.fwd_algos)(self.h, p.x, p.w, p.conv, p.y, req, &mut n, out),
                ConvDir::BackwardData => (a.bwd_data_algos)(self.h, p.w, p.y, p.conv, p.x, req, &mut n, out),
                ConvDir::BackwardFilter => (a.bwd_filter_algos)(self.h, p.x, p.y, p.conv, p.w, req, &mut n, out),
            }
        };
        check("cudnnGetConvolutionAlgorithm_v7", st)?;
        let got = usize::try_from(n).unwrap_or(0).min(ALGOS);
        let (algo, ws) = choose(&perf[..got], self.ws_bytes).ok_or_else(|| CudaError::Cudnn {
            call: "cudnnGetConvolutionAlgorithm_v7",
            status: format!(
                "no deterministic algorithm within {} bytes of workspace for {:?} of {:?} at batch {}",
                self.ws_bytes, p.dir, p.shape, p.n
            ),
        })?;
        let count = match p.dir {
            ConvDir::Forward => api::FWD_ALGOS,
            ConvDir::BackwardData => api::BWD_DATA_ALGOS,
            ConvDir::BackwardFilter => api::BWD_FILTER_ALGOS,
        };
        if algo >= count {
            return Err(CudaError::Cudnn {
                call: "cudnnGetConvolutionAlgorithm_v7",
                status: format!("algorithm {algo}"),
            });
        }
        p.algo = algo;
        p.ws_bytes = ws;
        Ok(())
    }

    /// The index of `c`'s prepared descriptors, made (and its algorithm chosen) the
    /// first time its shape, batch and direction are met. The executor runs every plan
    /// once directly before capturing it, so this never happens inside a capture.
    fn prepare(&self, c: &ConvCall) -> Result<usize, CudaError> {
        let found = self.prepared.borrow().iter().position(|p| p.dir == c.dir && p.shape == c.shape && p.n == c.n);
        if let Some(i) = found {
            return Ok(i);
        }
        let mut p = Prepared::descriptors(self.api, c, self.tf32)?;
        self.choose_algo(&mut p)?;
        let mut v = self.prepared.borrow_mut();
        v.push(p);
        Ok(v.len() - 1)
    }

    /// Enqueues `c` on the handle's stream.
    pub(crate) fn run(&self, c: &ConvCall) -> Result<(), CudaError> {
        let i = self.prepare(c)?;
        let v = self.prepared.borrow();
        let p = &v[i];
        let (one, zero) = (1.0f32, 0.0f32);
        let (alpha, a1) = (&one as *const f32 as *const c_void, &one as *const f32 as *const c_void);
        let beta0 = &zero as *const f32 as *const c_void;
        let ws = self.ws as *mut c_void;
        // SAFETY: live handle and descriptors matching the call's shapes; every address
        // lies in a live device buffer of this context (the encoder derives them from
        // the plan, and the tests check them against the buffers); the algorithm was
        // returned for these descriptors with a workspace need of `p.ws_bytes` <= the
        // workspace's size; alpha and beta are host f32s read before the call returns.
        let a = self.api;
        unsafe {
            match c.dir {
                ConvDir::Forward => {
                    let (x, w, y) = (c.x as *const c_void, c.w as *const c_void, c.y as *mut c_void);
                    let st = (a.forward)(self.h, alpha, p.x, x, p.w, w, p.conv, p.algo, ws, p.ws_bytes, beta0, p.y, y);
                    check("cudnnConvolutionForward", st)?;
                    if c.bias != 0 {
                        let st = (a.add_tensor)(self.h, alpha, p.bias, c.bias as *const c_void, a1, p.y, y);
                        check("cudnnAddTensor", st)?;
                    }
                }
                ConvDir::BackwardData => {
                    let (w, dy, dx) = (c.w as *const c_void, c.y as *const c_void, c.x as *mut c_void);
                    let st = (a.backward_data)(
                        self.h, alpha, p.w, w, p.y, dy, p.conv, p.algo, ws, p.ws_bytes, beta0, p.x, dx,
                    );
                    check("cudnnConvolutionBackwardData", st)?;
                }
                ConvDir::BackwardFilter => {
                    let (x, dy, dw) = (c.x as *const c_void, c.y as *const c_void, c.w as *mut c_void);
                    // β = 1: the weight gradient accumulates over the step's losses.
                    let st = (a.backward_filter)(
                        self.h, alpha, p.x, x, p.y, dy, p.conv, p.algo, ws, p.ws_bytes, a1, p.w, dw,
                    );
                    check("cudnnConvolutionBackwardFilter", st)?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Dnn {
    fn drop(&mut self) {
        // Descriptors first, then the handle.
        self.prepared.borrow_mut().clear();
        // SAFETY: created by cudnnCreate and destroyed only here.
        let _ = unsafe { (self.api.destroy)(self.h) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perf(algo: u32, status: u32, memory: usize, determinism: u32) -> Perf {
        Perf { algo, status, memory, determinism, ..Perf::default() }
    }

    #[test]
    fn takes_the_first_deterministic_algorithm_that_fits() {
        let (ok, bad) = (api::SUCCESS, 3000);
        let ranked =
            [perf(0, ok, 0, 0), perf(1, bad, 0, 1), perf(2, ok, 1 << 30, 1), perf(3, ok, 4096, 1), perf(4, ok, 0, 1)];
        assert_eq!(choose(&ranked, 1 << 20), Some((3, 4096)));
        assert_eq!(choose(&ranked, 1 << 30), Some((2, 1 << 30)));
        assert_eq!(choose(&ranked, 0), Some((4, 0)));
        assert_eq!(choose(&ranked[..2], 1 << 30), None);
    }
}
