//! What the op encoder emits: kernel launches and GEMMs, through the [`Sink`] trait.
//! The device implements it with `cuLaunchKernel`/cuBLAS; the tests implement it with
//! a recorder that checks every launch against the kernel table and every GEMM
//! operand against the buffers, without a GPU.

use crate::error::CudaError;
use crate::kernels::K;
use hpff_core::ops::Conv2d;
use hpff_core::plan::Op;

/// One kernel argument. Pointers are device addresses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Arg {
    P(u64),
    L(i64),
    I(i32),
    F(f32),
    D(f64),
}

impl Arg {
    /// The signature letter of this kind (see [`crate::kernels::KernelDecl`]).
    pub(crate) const fn code(self) -> char {
        match self {
            Arg::P(_) => 'p',
            Arg::L(_) => 'l',
            Arg::I(_) => 'i',
            Arg::F(_) => 'f',
            Arg::D(_) => 'd',
        }
    }

    /// The value in an 8-byte slot whose first bytes are the C value (little endian):
    /// `cuLaunchKernel` reads `sizeof(param)` bytes from each parameter's address.
    pub(crate) const fn slot(self) -> u64 {
        match self {
            Arg::P(p) => p,
            Arg::L(v) => v as u64,
            Arg::I(v) => v as u32 as u64,
            Arg::F(v) => v.to_bits() as u64,
            Arg::D(v) => v.to_bits(),
        }
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("kernel arguments are packed for a little-endian host");

/// Checks `args` against the declared signature of `k`.
pub(crate) fn check_signature(k: K, args: &[Arg]) -> Result<(), CudaError> {
    let d = k.decl();
    let got: String = args.iter().map(|a| a.code()).collect();
    if got != d.sig {
        return Err(CudaError::Signature { kernel: d.name, expected: d.sig, got });
    }
    Ok(())
}

/// Threads per block of every launch (the reduction kernels' fixed tree needs exactly this).
pub(crate) const BLOCK: u32 = 256;

/// Most blocks of a grid-stride launch: enough to fill any current GPU many times over;
/// the kernels loop over the rest, and their results do not depend on the grid.
pub(crate) const MAX_GRID: u64 = 1 << 16;

/// A row-major GEMM, `C[m×n] = alpha·op(A)[m×k]·op(B)[k×n] + beta·C`, on device
/// addresses, with the leading dimensions of the stored (untransposed) matrices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub ta: bool,
    pub b: u64,
    pub ldb: usize,
    pub tb: bool,
    pub c: u64,
    pub ldc: usize,
    /// 0 overwrites C, 1 accumulates.
    pub beta: f32,
}

impl Gemm {
    /// Floats spanned by A, B and C as stored (for bounds checks).
    #[cfg(any(test, feature = "emulate"))]
    pub(crate) fn extents(&self) -> [(u64, usize); 3] {
        let span =
            |rows: usize, cols: usize, ld: usize| if rows == 0 || cols == 0 { 0 } else { (rows - 1) * ld + cols };
        let (ar, ac) = if self.ta { (self.k, self.m) } else { (self.m, self.k) };
        let (br, bc) = if self.tb { (self.n, self.k) } else { (self.k, self.n) };
        [(self.a, span(ar, ac, self.lda)), (self.b, span(br, bc, self.ldb)), (self.c, span(self.m, self.n, self.ldc))]
    }

    /// Whether every leading dimension covers its stored row.
    pub(crate) fn valid(&self) -> bool {
        let a_cols = if self.ta { self.m } else { self.k };
        let b_cols = if self.tb { self.k } else { self.n };
        self.lda >= a_cols.max(1) && self.ldb >= b_cols.max(1) && self.ldc >= self.n.max(1)
    }
}

/// How the CUDA executor computes convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    /// cuDNN's convolutions (deterministic algorithms only), one call per convolution
    /// and direction; the default where cuDNN loads.
    Cudnn,
    /// im2col of a chunk of images, one cuBLAS SGEMM per chunk, and the NVRTC kernels
    /// that reorder the result: needs only cuBLAS.
    Im2col,
}

impl ConvPath {
    pub fn name(self) -> &'static str {
        match self {
            ConvPath::Cudnn => "cudnn",
            ConvPath::Im2col => "im2col",
        }
    }
}

/// Which way a [`ConvCall`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConvDir {
    /// `y = conv(x, w) (+ bias)`.
    Forward,
    /// `x = the input gradient of dy = y` (overwrites `x`).
    BackwardData,
    /// `w += the weight gradient of input x and output gradient y` (accumulates).
    BackwardFilter,
}

/// One whole-batch convolution on device addresses: the three tensors as the forward
/// pass names them (NCHW input `x` of `n` images, weights `w`, output `y`); which one is
/// written depends on `dir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvCall {
    pub dir: ConvDir,
    pub shape: Conv2d,
    pub n: usize,
    pub x: u64,
    pub w: u64,
    pub y: u64,
    /// Per-channel bias added by a forward call (0: none).
    pub bias: u64,
}

impl ConvCall {
    /// (address, floats) of x, w, y and the bias (for bounds checks: the encoder's tests
    /// and the emulator).
    #[cfg(any(test, feature = "emulate"))]
    pub(crate) fn extents(&self) -> [(u64, usize); 4] {
        let s = &self.shape;
        let bias = if self.bias == 0 { 0 } else { s.c_out };
        [(self.x, self.n * s.in_len()), (self.w, s.weight_len()), (self.y, self.n * s.out_len()), (self.bias, bias)]
    }

    /// The operand the call writes (the emulator's).
    #[cfg(feature = "emulate")]
    pub(crate) fn written(&self) -> (u64, usize) {
        let e = self.extents();
        match self.dir {
            ConvDir::Forward => e[2],
            ConvDir::BackwardData => e[0],
            ConvDir::BackwardFilter => e[1],
        }
    }
}

/// Where the encoder's work goes.
pub(crate) trait Sink {
    /// Launches `k` on a `grid` of [`BLOCK`]-thread blocks (or `block` threads).
    fn launch(&mut self, k: K, grid: (u32, u32), block: u32, args: &[Arg]) -> Result<(), CudaError>;
    /// Runs a GEMM.
    fn gemm(&mut self, g: &Gemm) -> Result<(), CudaError>;
    /// How convolutions are computed here: with [`ConvPath::Cudnn`] the encoder emits
    /// [`Sink::conv`] calls, with [`ConvPath::Im2col`] launches and GEMMs.
    fn conv_path(&self) -> ConvPath;
    /// Runs a whole-batch convolution (only asked when `conv_path` is `Cudnn`).
    fn conv(&mut self, c: &ConvCall) -> Result<(), CudaError>;
    /// Told before the launches of op `index` of the step (the lockstep comparison names
    /// the op a launch belongs to); nothing by default.
    fn begin_op(&mut self, _index: usize, _op: &Op) {}
}
