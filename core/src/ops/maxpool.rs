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
    /// `f(output index in the plane, winner's index in the plane)` for every output of
    /// one plane, in order: on AVX2, a stride-2 pool's interior windows eight at a time
    /// ([`winners_avx2`]; a scalar scan with data-dependent jumps mispredicts on random
    /// data, and the compiler turns selects on its loop-carried maximum back into jumps);
    /// everything else by [`Self::argmax`], the same winners.
    #[inline]
    fn winners(&self, plane: &[f32], mut f: impl FnMut(usize, usize)) {
        let (ho, wo) = (self.h_out(), self.w_out());
        #[cfg(target_arch = "x86_64")]
        if self.stride == 2 && super::cpu_isa() >= super::Isa::Avx2 {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { winners_avx2(self, plane, f) };
        }
        for o in 0..ho * wo {
            f(o, self.argmax(plane, o / wo, o % wo));
        }
    }
}

/// [`MaxPool2d::winners`] for `stride == 2` with AVX2: the windows that lie wholly inside
/// the plane's columns, eight neighbours at a time as lanes (`x` deinterleaved from two
/// loads), with the scan's rule as compares and blends; the border windows by
/// [`MaxPool2d::argmax`].
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn winners_avx2(s: &MaxPool2d, plane: &[f32], mut f: impl FnMut(usize, usize)) {
    use core::arch::x86_64::*;
    let (ho, wo, w, k) = (s.h_out(), s.w_out(), s.w, s.k);
    // Output columns whose window spans k input columns: 2·ox − pad ≥ 0, 2·ox − pad + k ≤ w.
    let lo = s.pad.div_ceil(2).min(wo);
    let hi = if w + s.pad >= k { ((w + s.pad - k) / 2 + 1).clamp(lo, wo) } else { lo };
    // Plane indices fit i32 (a plane is far below 2³¹ floats).
    let lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    for oy in 0..ho {
        let (y0, y1) = s.span(oy, s.h);
        let o0 = oy * wo;
        let mut ox = 0;
        while ox < wo {
            // Up to eight interior windows (lanes past `hi` computed and dropped) whose
            // loads (16 floats from each tap) stay in the plane.
            let x0 = (2 * ox).wrapping_sub(s.pad);
            let cnt = hi.saturating_sub(ox).min(8);
            let fits = ox >= lo && cnt > 0 && (y1 - 1) * w + x0 + k - 1 + 16 <= plane.len();
            if !fits {
                f(o0 + ox, s.argmax(plane, oy, ox));
                ox += 1;
                continue;
            }
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            let mut b = _mm256_set1_epi32((y0 * w + x0) as i32);
            for iy in y0..y1 {
                for dx in 0..k {
                    let at = iy * w + x0 + dx;
                    // SAFETY: at + 16 ≤ plane.len() (`fits`, at its largest row and tap).
                    let v = unsafe {
                        let (a, c) =
                            (_mm256_loadu_ps(plane.as_ptr().add(at)), _mm256_loadu_ps(plane.as_ptr().add(at + 8)));
                        // Even elements: a0 a2 c0 c2 | a4 a6 c4 c6, then 64-bit lanes 0 2 1 3.
                        let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, c);
                        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)))
                    };
                    let take = _mm256_or_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(v, m), _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                    m = _mm256_blendv_ps(m, v, take);
                    let idx = _mm256_add_epi32(_mm256_set1_epi32(at as i32), lane2);
                    b = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(idx), take));
                }
            }
            let mut out = [0i32; 8];
            // SAFETY: an unaligned store of 8 i32 into a local array.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), b) };
            for (l, &i) in out[..cnt].iter().enumerate() {
                f(o0 + ox + l, i as usize);
            }
            ox += cnt;
        }
    }
}

/// `y` = the max of each window of `x`, for `n` images.
pub fn maxpool_forward(s: &MaxPool2d, n: usize, x: &[f32], y: &mut [f32]) {
    debug_assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len());
    let (hw, ohw) = (s.h * s.w, s.h_out() * s.w_out());
    for (plane, out) in x.chunks_exact(hw).zip(y.chunks_exact_mut(ohw)).take(n * s.c) {
        s.winners(plane, |o, i| out[o] = plane[i]);
    }
}

/// Overwrites `dx` with the gradient: each output's `dy` goes to its window's winner in
/// `x` (the forward's input). Overlapping windows add in output order, as PyTorch does.
pub fn maxpool_backward(s: &MaxPool2d, n: usize, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    debug_assert!(x.len() >= n * s.in_len() && dx.len() >= n * s.in_len() && dy.len() >= n * s.out_len());
    let (hw, ohw) = (s.h * s.w, s.h_out() * s.w_out());
    let planes = x.chunks_exact(hw).zip(dx.chunks_exact_mut(hw)).zip(dy.chunks_exact(ohw));
    for ((plane, dplane), g) in planes.take(n * s.c) {
        dplane.fill(0.0);
        s.winners(plane, |o, i| dplane[i] += g[o]);
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

    /// The winners of [`MaxPool2d::winners`] (on x86_64 the AVX2 lanes for the interior
    /// windows) are [`MaxPool2d::argmax`]'s for every output: planes wide enough for
    /// several 8-window blocks and ragged edges, with ties (values on a coarse grid),
    /// `±0.0` ties, NaNs with distinct payloads and −∞.
    #[test]
    fn lanes_pick_the_scalar_scans_winners() {
        let mut x = [0.0f32; 2 * 37 * 41];
        let mut st = 7u32;
        for (i, v) in x.iter_mut().enumerate() {
            st ^= st << 13;
            st ^= st >> 17;
            st ^= st << 5;
            *v = match st % 23 {
                0 => f32::from_bits(0x7fc0_0000 | i as u32),
                1 => -0.0,
                2 => 0.0,
                3 => f32::NEG_INFINITY,
                r => (r % 5) as f32 - 2.0,
            };
        }
        for (h, w, k, pad) in [(37, 41, 3, 1), (20, 34, 3, 1), (9, 40, 2, 0), (11, 36, 3, 0), (7, 19, 4, 1)] {
            let s = MaxPool2d { c: 2, h, w, k, stride: 2, pad };
            let hw = h * w;
            for plane in x[..2 * hw].chunks_exact(hw) {
                let mut got = [usize::MAX; 21 * 21];
                s.winners(plane, |o, i| got[o] = i);
                for o in 0..s.h_out() * s.w_out() {
                    assert_eq!(got[o], s.argmax(plane, o / s.w_out(), o % s.w_out()), "{s:?} output {o}");
                }
            }
        }
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
