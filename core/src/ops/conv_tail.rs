//! What a direct forward convolution's tile does to its sums before it stores them:
//! nothing ([`Sums`]: training, whose BN needs the whole batch's statistics first), or,
//! in eval, the BN after the conv, then the residual added and the ReLU ([`BnTail`]),
//! while the outputs are still in registers, instead of one pass over the output per op.
//!
//! Bits: each lane gets the unfused ops' operations in their order, one rounding each:
//! `(v − mean)·(invstd·gamma) + beta` as `batchnorm_forward`, `+ residual` as
//! `add_assign`, then `relu_inplace`'s select; so the fused and unfused eval agree bit
//! for bit.

#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
use super::conv_lanes::Lanes;

/// The eval BN over a bias-free conv's output (`mean`, `invstd`, `gamma`, `beta`: one
/// per output channel), then, if given, the `residual` added (the call's images in the
/// output's layout) and, if `relu`, the ReLU.
#[derive(Clone, Copy, Debug)]
pub struct BnTail<'a> {
    pub mean: &'a [f32],
    pub invstd: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

/// A convolution's images in and out: in two buffers, or in one whose images' outputs
/// replace their inputs (as long as each other: eval's plan puts a BN's output where its
/// conv read, and a direct conv copies each image's input before writing its output).
#[derive(Debug)]
pub enum Images<'a> {
    Apart(&'a [f32], &'a mut [f32]),
    InPlace(&'a mut [f32]),
}

// Only the direct kernels take images this way.
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))), allow(dead_code))]
impl Images<'_> {
    /// Whether `n` images of `in_len` floats in and `out_len` out fit.
    pub(crate) fn fits(&self, n: usize, in_len: usize, out_len: usize) -> bool {
        match self {
            Images::Apart(x, y) => x.len() >= n * in_len && y.len() >= n * out_len,
            Images::InPlace(xy) => in_len == out_len && xy.len() >= n * in_len,
        }
    }
    /// Image `i`'s input (`len` floats each).
    pub(crate) fn input(&self, i: usize, len: usize) -> &[f32] {
        match self {
            Images::Apart(x, _) => &x[i * len..][..len],
            Images::InPlace(xy) => &xy[i * len..][..len],
        }
    }
    /// The first image's output, the others following it (where [`Images::fits`] said
    /// they fit).
    pub(crate) fn outputs(&mut self) -> *mut f32 {
        match self {
            Images::Apart(_, y) => y.as_mut_ptr(),
            Images::InPlace(xy) => xy.as_mut_ptr(),
        }
    }
    /// Image `i`'s output (`len` floats each).
    pub(crate) fn output(&mut self, i: usize, len: usize) -> &mut [f32] {
        match self {
            Images::Apart(_, y) => &mut y[i * len..][..len],
            Images::InPlace(xy) => &mut xy[i * len..][..len],
        }
    }
}

#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
/// A tile's finish of its sums.
pub(crate) trait Finish: Copy {
    /// Whether [`Finish::plane`] changes anything.
    const FINISHES: bool;
    /// The finish of the call's image `i` (each image's output `out_len` floats).
    fn image(self, i: usize, out_len: usize) -> Self;
    /// Finishes in place the vectors of channel `plane` that a tile stored: vector `j`
    /// at `dst[j]`, offset `at[j]` of the image's output, `lanes[j]` lanes (only called
    /// where `FINISHES`). Per plane, so its constants are loaded once per tile row.
    ///
    /// # Safety
    /// Called from a function compiled for `L`'s set; each vector lies within the
    /// image's output.
    unsafe fn plane<L: Lanes>(self, plane: usize, dst: &[*mut f32], at: &[usize], lanes: &[usize]);
}

#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
/// The sums as they are: a plain convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sums;

#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
impl Finish for Sums {
    const FINISHES: bool = false;
    #[inline(always)]
    fn image(self, _: usize, _: usize) -> Self {
        self
    }
    #[inline(always)]
    unsafe fn plane<L: Lanes>(self, _: usize, _: &[*mut f32], _: &[usize], _: &[usize]) {}
}

#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
impl Finish for BnTail<'_> {
    const FINISHES: bool = true;
    #[inline(always)]
    fn image(self, i: usize, out_len: usize) -> Self {
        BnTail { residual: self.residual.map(|r| &r[i * out_len..][..out_len]), ..self }
    }
    #[inline(always)]
    unsafe fn plane<L: Lanes>(self, plane: usize, dst: &[*mut f32], at: &[usize], lanes: &[usize]) {
        let (m, sc, b) = (self.mean[plane], self.invstd[plane] * self.gamma[plane], self.beta[plane]);
        let residual = self.residual.map(|r| r.as_ptr());
        // SAFETY: the caller's set and vectors; `image` cut the residual to the image's
        // output, so it holds every vector's `at..at + lanes` too.
        unsafe {
            let (m, sc, b) = (L::splat(&m), L::splat(&sc), L::splat(&b));
            for ((&d, &at), &n) in dst.iter().zip(at).zip(lanes) {
                let mut y = L::add(L::mul(L::sub(L::load_out(d, n), m), sc), b);
                if let Some(r) = residual {
                    y = L::add(y, L::load_out(r.add(at), n));
                }
                if self.relu {
                    y = L::relu(y);
                }
                L::store(d, y, n);
            }
        }
    }
}
