//! cuBLAS: one handle on the executor's stream, a fixed workspace (so graph capture
//! never makes cuBLAS allocate), and the row-major → column-major mapping of [`Gemm`].

use crate::error::{dim_i32, CudaError};
use crate::launch::Gemm;
use cudarc::cublas::sys;
use cudarc::driver::sys::CUstream;

/// cuBLAS workspace bytes: NVIDIA's recommendation for Hopper (32 MiB) covers older GPUs.
pub(crate) const WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLAS handle, destroyed on drop (the context must be current then).
#[derive(Debug)]
pub(crate) struct Blas(sys::cublasHandle_t);

impl Blas {
    /// A handle with cuBLAS's defaults (see [`Blas::bind`]).
    pub(crate) fn create() -> Result<Blas, CudaError> {
        let mut h: sys::cublasHandle_t = core::ptr::null_mut();
        // SAFETY: a valid out-pointer; the context is current on this thread.
        unsafe { sys::cublasCreate_v2(&mut h) }.result().map_err(|e| CudaError::cublas("cublasCreate", e))?;
        Ok(Blas(h))
    }

    /// Binds the handle to `stream`, with `workspace` (of [`WORKSPACE_BYTES`]) and strict
    /// fp32 math unless `tf32`.
    pub(crate) fn bind(self, stream: CUstream, workspace: u64, tf32: bool) -> Result<Blas, CudaError> {
        let h = self.0;
        let blas = self;
        // SAFETY: a live handle and a stream of the current context.
        unsafe { sys::cublasSetStream_v2(h, stream as sys::cudaStream_t) }
            .result()
            .map_err(|e| CudaError::cublas("cublasSetStream", e))?;
        // SAFETY: a live handle; the workspace is a device allocation of WORKSPACE_BYTES
        // that the executor frees only after this handle.
        unsafe { sys::cublasSetWorkspace_v2(h, workspace as *mut core::ffi::c_void, WORKSPACE_BYTES) }
            .result()
            .map_err(|e| CudaError::cublas("cublasSetWorkspace", e))?;
        let mode =
            if tf32 { sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH } else { sys::cublasMath_t::CUBLAS_DEFAULT_MATH };
        // SAFETY: a live handle.
        unsafe { sys::cublasSetMathMode(h, mode) }.result().map_err(|e| CudaError::cublas("cublasSetMathMode", e))?;
        Ok(blas)
    }

    /// Enqueues `g` on the handle's stream.
    pub(crate) fn sgemm(&self, g: &Gemm) -> Result<(), CudaError> {
        let c = ColMajor::of(g)?;
        let (alpha, beta) = (1.0f32, g.beta);
        let op = |t: bool| if t { sys::cublasOperation_t::CUBLAS_OP_T } else { sys::cublasOperation_t::CUBLAS_OP_N };
        // SAFETY: the encoder checked that every operand lies inside a live device buffer
        // of this context (extents of `g`); alpha and beta are host scalars (the default
        // pointer mode), read before the call returns.
        unsafe {
            sys::cublasSgemm_v2(
                self.0,
                op(c.ta),
                op(c.tb),
                c.m,
                c.n,
                c.k,
                &alpha,
                c.a as *const f32,
                c.lda,
                c.b as *const f32,
                c.ldb,
                &beta,
                c.c as *mut f32,
                c.ldc,
            )
        }
        .result()
        .map_err(|e| CudaError::cublas("cublasSgemm", e))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created by cublasCreate and destroyed only here.
        let _ = unsafe { sys::cublasDestroy_v2(self.0) };
    }
}

/// A cuBLAS (column-major) call computing a row-major [`Gemm`]: row-major
/// `C = op(A)·op(B)` is column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`, and a row-major matrix read
/// column-major is its transpose, so the operands swap and keep their flags and
/// leading dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ColMajor {
    pub ta: bool,
    pub tb: bool,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub a: u64,
    pub lda: i32,
    pub b: u64,
    pub ldb: i32,
    pub c: u64,
    pub ldc: i32,
}

impl ColMajor {
    pub(crate) fn of(g: &Gemm) -> Result<ColMajor, CudaError> {
        Ok(ColMajor {
            ta: g.tb,
            tb: g.ta,
            m: dim_i32("gemm n", g.n)?,
            n: dim_i32("gemm m", g.m)?,
            k: dim_i32("gemm k", g.k)?,
            a: g.b,
            lda: dim_i32("gemm ldb", g.ldb)?,
            b: g.a,
            ldb: dim_i32("gemm lda", g.lda)?,
            c: g.c,
            ldc: dim_i32("gemm ldc", g.ldc)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column-major reference GEMM on host slices, as cuBLAS defines it.
    fn colmajor_ref(c: &ColMajor, a: &[f32], b: &[f32], out: &mut [f32], beta: f32) {
        let (m, n, k) = (c.m as usize, c.n as usize, c.k as usize);
        for j in 0..n {
            for i in 0..m {
                let mut s = 0.0f32;
                for p in 0..k {
                    let av = if c.ta { a[p + i * c.lda as usize] } else { a[i + p * c.lda as usize] };
                    let bv = if c.tb { b[j + p * c.ldb as usize] } else { b[p + j * c.ldb as usize] };
                    s += av * bv;
                }
                let o = &mut out[i + j * c.ldc as usize];
                *o = s + beta * *o;
            }
        }
    }

    #[test]
    fn row_major_mapping_matches_the_core_gemm() {
        // Device addresses 1, 2, 3 stand for the host slices a, b, c.
        let (m, n, k) = (3usize, 5usize, 4usize);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let lda = if ta { m } else { k } + 1;
            let ldb = if tb { k } else { n } + 2;
            let ldc = n + 3;
            let a: Vec<f32> = (0..lda * k.max(m)).map(|i| (i % 7) as f32 - 3.0).collect();
            let b: Vec<f32> = (0..ldb * k.max(n)).map(|i| (i % 5) as f32 * 0.5).collect();
            let g = Gemm { m, n, k, a: 1, lda, ta, b: 2, ldb, tb, c: 3, ldc, beta: 1.0 };
            assert!(g.valid());
            let mut want = vec![1.0f32; ldc * m];
            hpff_core::ops::sgemm(m, n, k, &a, lda, ta, &b, ldb, tb, &mut want, ldc, true);
            let cm = ColMajor::of(&g).unwrap();
            let (pa, pb) = if cm.a == 1 { (&a, &b) } else { (&b, &a) };
            let mut got = vec![1.0f32; ldc * m];
            colmajor_ref(&cm, pa, pb, &mut got, 1.0);
            for r in 0..m {
                for col in 0..n {
                    let (x, y) = (got[r * ldc + col], want[r * ldc + col]);
                    assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "ta={ta} tb={tb} ({r},{col}): {x} vs {y}");
                }
            }
        }
    }
}
