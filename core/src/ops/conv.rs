//! 2-D convolution (zero padding, square kernel, PyTorch weight layout) via per-image
//! im2col + [`sgemm`]; col2im scatters the input gradient back.
//!
//! One image's column matrix is `[c_in·k·k][h_out·w_out]`, so the forward is
//! `Y[c_out × hw_out] = W[c_out × c_in·k·k] · col`. Scratch is per image, so its size does
//! not grow with the batch; a 1×1 stride-1 unpadded conv reads the input directly.

use super::{fold_lanes, sgemm, sum_lanes};

/// Shape of a convolution layer on `h × w` inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel size (square).
    pub k: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes, both sides).
    pub pad: usize,
}

impl Conv2d {
    /// Output height, PyTorch's floor formula.
    pub const fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Output width.
    pub const fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Input floats per image.
    pub const fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }
    /// Output floats per image.
    pub const fn out_len(&self) -> usize {
        self.c_out * self.h_out() * self.w_out()
    }
    /// Weight floats, `[c_out][c_in][kh][kw]` as PyTorch stores them.
    pub const fn weight_len(&self) -> usize {
        self.c_out * self.c_in * self.k * self.k
    }
    /// Whether the input already is the column matrix (no im2col needed).
    const fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// Scratch floats any of the three conv calls needs (one image's column matrix,
    /// 0 for a 1×1 stride-1 unpadded conv); independent of the batch size.
    pub const fn scratch_len(&self) -> usize {
        if self.direct() {
            0
        } else {
            self.c_in * self.k * self.k * self.h_out() * self.w_out()
        }
    }
    /// Forward FLOPs per image (2 per multiply-add), for throughput reports.
    pub const fn flops(&self) -> usize {
        2 * self.c_out * self.c_in * self.k * self.k * self.h_out() * self.w_out()
    }
    /// Output columns `ox` whose input column `ox·stride + kw − pad` lies inside the row.
    fn valid_cols(&self, kw: usize) -> (usize, usize) {
        let wo = self.w_out();
        let lo = if self.pad > kw { (self.pad - kw).div_ceil(self.stride) } else { 0 };
        let hi = if self.w + self.pad > kw { (self.w + self.pad - kw).div_ceil(self.stride).min(wo) } else { 0 };
        (lo.min(hi), hi)
    }
}

/// `dst.copy_from_slice(src)` for the short rows of im2col's per-row path (stride-1
/// convolutions that are not "same"), as fixed-size vector moves: `copy_from_slice`
/// calls memmove for each row, whose call and size dispatch cost more than the copy.
#[inline]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    debug_assert_eq!(n, src.len());
    if n >= 8 {
        // 8-float blocks, the last one ending at n (overlapping its predecessor).
        let mut i = 0;
        loop {
            let at = i.min(n - 8);
            let s8: &[f32; 8] = src[at..at + 8].try_into().expect("8 floats");
            let d8: &mut [f32; 8] = (&mut dst[at..at + 8]).try_into().expect("8 floats");
            *d8 = *s8;
            if at == n - 8 {
                break;
            }
            i += 8;
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v;
        }
    }
}

/// Unfolds one image into its column matrix.
fn im2col(s: &Conv2d, x: &[f32], col: &mut [f32]) {
    let (ho, wo, k) = (s.h_out(), s.w_out(), s.k);
    let hw_o = ho * wo;
    // A stride-1 "same" convolution (every 3×3 of a ResNet but the downsampling ones):
    // output and input planes have one shape, so each column-matrix row is the input
    // plane shifted by (kh − pad)·w + (kw − pad) — one long copy — after which the
    // elements that wrapped around a row edge are zeroed.
    let same = s.stride == 1 && ho == s.h && wo == s.w;
    for ci in 0..s.c_in {
        let plane = &x[ci * s.h * s.w..][..s.h * s.w];
        for kh in 0..k {
            for kw in 0..k {
                let row = &mut col[((ci * k + kh) * k + kw) * hw_o..][..hw_o];
                let (lo, hi) = s.valid_cols(kw);
                if same {
                    im2col_shifted(s, plane, kh, kw, (lo, hi), row);
                    continue;
                }
                for (oy, out) in row.chunks_exact_mut(wo).enumerate() {
                    let iy = oy * s.stride + kh;
                    if iy < s.pad || iy - s.pad >= s.h {
                        out.fill(0.0);
                        continue;
                    }
                    let xrow = &plane[(iy - s.pad) * s.w..][..s.w];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    if lo < hi {
                        // ix = ox·stride + kw − pad, in range for ox in lo..hi.
                        let ix0 = lo * s.stride + kw - s.pad;
                        if s.stride == 1 {
                            copy_short(&mut out[lo..hi], &xrow[ix0..ix0 + (hi - lo)]);
                        } else {
                            for (j, o) in out[lo..hi].iter_mut().enumerate() {
                                *o = xrow[ix0 + j * s.stride];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One column-matrix row of a stride-1 "same" convolution: `row[p] = plane[p + shift]`
/// where that input pixel lies inside the plane, else 0; `(lo, hi)` are the output
/// columns whose input column is inside the row ([`Conv2d::valid_cols`]).
fn im2col_shifted(s: &Conv2d, plane: &[f32], kh: usize, kw: usize, (lo, hi): (usize, usize), row: &mut [f32]) {
    let (w, hw) = (s.w, s.h * s.w);
    // Flat input index p + shift, shift = (kh − pad)·w + (kw − pad), split into its
    // non-negative parts so no signed arithmetic is needed.
    let up = kh * w + kw;
    let down = s.pad * w + s.pad;
    // Valid p: down ≤ p + up < hw + down.
    let p_lo = down.saturating_sub(up).min(hw);
    let p_hi = (hw + down).saturating_sub(up).clamp(p_lo, hw);
    row[..p_lo].fill(0.0);
    // Empty when the tap lies in the padding for every output (a map smaller than the
    // padding, like the 1×1 maps of an ImageNet network's last stage at small images);
    // then `p_lo + up` may be below `down`.
    if p_lo < p_hi {
        row[p_lo..p_hi].copy_from_slice(&plane[p_lo + up - down..p_hi + up - down]);
    }
    row[p_hi..].fill(0.0);
    // Columns outside lo..hi read the neighbouring input row: zero them.
    if lo > 0 || hi < w {
        for out in row.chunks_exact_mut(w) {
            out[..lo].fill(0.0);
            out[hi..].fill(0.0);
        }
    }
}

/// Folds a column-matrix gradient back onto one image, adding (`dx` zeroed by the caller).
fn col2im_add(s: &Conv2d, col: &[f32], dx: &mut [f32]) {
    let (ho, wo, k) = (s.h_out(), s.w_out(), s.k);
    let hw_o = ho * wo;
    for ci in 0..s.c_in {
        let plane = &mut dx[ci * s.h * s.w..][..s.h * s.w];
        for kh in 0..k {
            for kw in 0..k {
                let row = &col[((ci * k + kh) * k + kw) * hw_o..][..hw_o];
                let (lo, hi) = s.valid_cols(kw);
                if lo >= hi {
                    continue;
                }
                let ix0 = lo * s.stride + kw - s.pad;
                for (oy, g) in row.chunks_exact(wo).enumerate() {
                    let iy = oy * s.stride + kh;
                    if iy < s.pad || iy - s.pad >= s.h {
                        continue;
                    }
                    let xrow = &mut plane[(iy - s.pad) * s.w..][..s.w];
                    if s.stride == 1 {
                        for (d, &v) in xrow[ix0..ix0 + (hi - lo)].iter_mut().zip(&g[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for (j, &v) in g[lo..hi].iter().enumerate() {
                            xrow[ix0 + j * s.stride] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Forward convolution of `n` images, `y = conv(x, w) + bias` (overwrites `y`).
/// `scratch` holds at least [`Conv2d::scratch_len`] floats.
pub fn conv2d_forward(
    s: &Conv2d,
    n: usize,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [f32],
) {
    let (kk, hw_o) = (s.c_in * s.k * s.k, s.h_out() * s.w_out());
    debug_assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len());
    debug_assert!(w.len() >= s.weight_len() && scratch.len() >= s.scratch_len());
    for i in 0..n {
        let xi = &x[i * s.in_len()..][..s.in_len()];
        let yi = &mut y[i * s.out_len()..][..s.out_len()];
        let col: &[f32] = if s.direct() {
            xi
        } else {
            let col = &mut scratch[..s.scratch_len()];
            im2col(s, xi, col);
            col
        };
        sgemm(s.c_out, hw_o, kk, w, kk, false, col, hw_o, false, yi, hw_o, false);
        if let Some(b) = bias {
            for (plane, &bb) in yi.chunks_exact_mut(hw_o.max(1)).zip(b) {
                for v in plane.iter_mut() {
                    *v += bb;
                }
            }
        }
    }
}

/// Gradient with respect to the input (overwrites `dx`).
pub fn conv2d_backward_input(s: &Conv2d, n: usize, dy: &[f32], w: &[f32], dx: &mut [f32], scratch: &mut [f32]) {
    let (kk, hw_o) = (s.c_in * s.k * s.k, s.h_out() * s.w_out());
    debug_assert!(dx.len() >= n * s.in_len() && dy.len() >= n * s.out_len());
    debug_assert!(w.len() >= s.weight_len() && scratch.len() >= s.scratch_len());
    for i in 0..n {
        let dyi = &dy[i * s.out_len()..][..s.out_len()];
        let dxi = &mut dx[i * s.in_len()..][..s.in_len()];
        if s.direct() {
            sgemm(kk, hw_o, s.c_out, w, kk, true, dyi, hw_o, false, dxi, hw_o, false);
        } else {
            let col = &mut scratch[..s.scratch_len()];
            sgemm(kk, hw_o, s.c_out, w, kk, true, dyi, hw_o, false, col, hw_o, false);
            dxi.fill(0.0);
            col2im_add(s, col, dxi);
        }
    }
}

/// Adds the weight gradient (and, with `dbias`, the bias gradient) of `n` images to
/// `dw`/`dbias`, so batch chunks and several losses accumulate.
pub fn conv2d_accumulate_weight_grad(
    s: &Conv2d,
    n: usize,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    scratch: &mut [f32],
) {
    let (kk, hw_o) = (s.c_in * s.k * s.k, s.h_out() * s.w_out());
    debug_assert!(x.len() >= n * s.in_len() && dy.len() >= n * s.out_len());
    debug_assert!(dw.len() >= s.weight_len() && scratch.len() >= s.scratch_len());
    for i in 0..n {
        let xi = &x[i * s.in_len()..][..s.in_len()];
        let dyi = &dy[i * s.out_len()..][..s.out_len()];
        let col: &[f32] = if s.direct() {
            xi
        } else {
            let col = &mut scratch[..s.scratch_len()];
            im2col(s, xi, col);
            col
        };
        sgemm(s.c_out, kk, hw_o, dyi, hw_o, false, col, hw_o, true, dw, kk, true);
    }
    if let Some(db) = dbias {
        for (co, d) in db.iter_mut().enumerate().take(s.c_out) {
            let mut lanes = [0.0f64; 8];
            for i in 0..n {
                sum_lanes(&dy[i * s.out_len() + co * hw_o..][..hw_o], &mut lanes);
            }
            *d += fold_lanes(&lanes) as f32;
        }
    }
}
