//! Max pooling (the ImageNet stem's 3×3 stride-2 pad-1 pool) and its gradient.
//!
//! Padding takes no part in the max (PyTorch pads with −∞). Ties go to the first
//! maximum in the window's row-major scan, and a NaN wins over any number (the last
//! NaN of the window, by the same update rule), as in PyTorch's CPU kernel, so the gradient lands where PyTorch puts it. The backward
//! does not keep indices: it finds each window's winner again from the forward's
//! input, which the schedule has to hand (the winner depends only on that input).

/// Shape of a max-pool layer over `c` channels of `h × w` maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Window side (square).
    pub k: usize,
    pub stride: usize,
    /// Padding on every side; must be below `k` so every window holds an input pixel.
    pub pad: usize,
}

impl MaxPool2d {
    /// Output height, PyTorch's floor formula (no `ceil_mode`).
    pub const fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub const fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Input floats per image.
    pub const fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Output floats per image.
    pub const fn out_len(&self) -> usize {
        self.c * self.h_out() * self.w_out()
    }
    /// Comparisons per image (one per window tap), for throughput reports.
    pub const fn flops(&self) -> usize {
        self.out_len() * self.k * self.k
    }

    /// Input rows (or columns) `lo..hi` of output index `o` along an axis of length `len`.
    const fn span(&self, o: usize, len: usize) -> (usize, usize) {
        let start = o * self.stride;
        let lo = start.saturating_sub(self.pad);
        let end = start + self.k - self.pad;
        (lo, if end < len { end } else { len })
    }

    /// Index within one `h × w` plane of the winner of output `(oy, ox)`.
    fn argmax(&self, plane: &[f32], oy: usize, ox: usize) -> usize {
        let (y0, y1) = self.span(oy, self.h);
        let (x0, x1) = self.span(ox, self.w);
        let mut best = y0 * self.w + x0;
        let mut max = f32::NEG_INFINITY;
        for iy in y0..y1 {
            for ix in x0..x1 {
                let v = plane[iy * self.w + ix];
                if v > max || v.is_nan() {
                    max = v;
                    best = iy * self.w + ix;
                }
            }
        }
        best
    }
}

/// `y` = the max of each window of `x`, for `n` images.
pub fn maxpool_forward(s: &MaxPool2d, n: usize, x: &[f32], y: &mut [f32]) {
    debug_assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len());
    let (hw, ohw, wo) = (s.h * s.w, s.h_out() * s.w_out(), s.w_out());
    for (plane, out) in x.chunks_exact(hw).zip(y.chunks_exact_mut(ohw)).take(n * s.c) {
        for (o, v) in out.iter_mut().enumerate() {
            *v = plane[s.argmax(plane, o / wo, o % wo)];
        }
    }
}

/// Overwrites `dx` with the gradient: each output's `dy` goes to its window's winner in
/// `x` (the forward's input). Overlapping windows add in output order, as PyTorch does.
pub fn maxpool_backward(s: &MaxPool2d, n: usize, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    debug_assert!(x.len() >= n * s.in_len() && dx.len() >= n * s.in_len() && dy.len() >= n * s.out_len());
    let (hw, ohw, wo) = (s.h * s.w, s.h_out() * s.w_out(), s.w_out());
    let planes = x.chunks_exact(hw).zip(dx.chunks_exact_mut(hw)).zip(dy.chunks_exact(ohw));
    for ((plane, dplane), g) in planes.take(n * s.c) {
        dplane.fill(0.0);
        for (o, &gv) in g.iter().enumerate() {
            dplane[s.argmax(plane, o / wo, o % wo)] += gv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEM: MaxPool2d = MaxPool2d { c: 2, h: 5, w: 6, k: 3, stride: 2, pad: 1 };

    #[test]
    fn shapes_follow_the_floor_formula() {
        assert_eq!((STEM.h_out(), STEM.w_out()), (3, 3));
        let s = MaxPool2d { c: 64, h: 112, w: 112, k: 3, stride: 2, pad: 1 };
        assert_eq!((s.h_out(), s.w_out()), (56, 56));
    }

    /// A hand-worked 4×4 plane: windows at rows/cols {−1,0,1}, {1,2,3}.
    #[test]
    fn hand_worked_plane_and_ties() {
        let s = MaxPool2d { c: 1, h: 4, w: 4, k: 3, stride: 2, pad: 1 };
        #[rustfmt::skip]
        let x = [
            1.0, 5.0, 2.0, 0.0,
            3.0, 5.0, 9.0, 4.0,
            7.0, 6.0, 9.0, 8.0,
            -1.0, 2.0, 3.0, -4.0,
        ];
        let mut y = [0.0; 4];
        maxpool_forward(&s, 1, &x, &mut y);
        assert_eq!(y, [5.0, 9.0, 7.0, 9.0]);
        let mut dx = [0.0; 16];
        maxpool_backward(&s, 1, &x, &[1.0, 10.0, 100.0, 1000.0], &mut dx);
        // Output 0's tie (5 at (0,1) and (1,1)) goes to the first in scan order; outputs 1
        // and 3 tie on the 9 at (1,2) and (2,2): both take (1,2), the first.
        let mut want = [0.0; 16];
        want[1] = 1.0;
        want[6] = 10.0 + 1000.0;
        want[8] = 100.0;
        assert_eq!(dx, want);
    }

    #[test]
    fn nan_wins_and_all_negative_infinity_picks_the_first_pixel() {
        let s = MaxPool2d { c: 1, h: 2, w: 2, k: 2, stride: 2, pad: 0 };
        let mut y = [0.0];
        maxpool_forward(&s, 1, &[1.0, f32::NAN, 9.0, 2.0], &mut y);
        assert!(y[0].is_nan());
        let mut dx = [0.0; 4];
        maxpool_backward(&s, 1, &[f32::NEG_INFINITY; 4], &[3.0], &mut dx);
        assert_eq!(dx, [3.0, 0.0, 0.0, 0.0]);
    }

    /// Finite differences of L = Σ w·maxpool(x) on distinct values (no ties, so L is
    /// differentiable) against the backward, in f64 of the f32 forward.
    #[test]
    fn gradient_matches_finite_differences() {
        const N: usize = 2;
        const LEN: usize = N * STEM.in_len();
        const OUT: usize = N * STEM.out_len();
        // A permutation of distinct values, so no window has a tie and a small step keeps every winner.
        let x: [f32; LEN] = core::array::from_fn(|i| ((i * 37 + 11) % LEN) as f32 * 0.25 - 7.0);
        let w: [f32; OUT] = core::array::from_fn(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3);
        let loss = |x: &[f32; LEN]| {
            let mut y = [0.0; OUT];
            maxpool_forward(&STEM, N, x, &mut y);
            y.iter().zip(&w).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
        };
        let mut dx = [0.0; LEN];
        maxpool_backward(&STEM, N, &x, &w, &mut dx);
        let eps = 0.05;
        for i in 0..LEN {
            let (mut p, mut m) = (x, x);
            p[i] += eps;
            m[i] -= eps;
            let fd = (loss(&p) - loss(&m)) / (2.0 * eps as f64);
            assert!((fd - dx[i] as f64).abs() < 1e-4, "x[{i}]: finite difference {fd}, backward {}", dx[i]);
        }
        // Every output's gradient lands somewhere: the sum is preserved.
        let total: f64 = w.iter().map(|&v| v as f64).sum();
        assert!((dx.iter().map(|&v| v as f64).sum::<f64>() - total).abs() < 1e-4);
    }
}
