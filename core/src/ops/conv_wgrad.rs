//! Direct weight gradient of a stride-1 "same" 3×3 convolution on AVX2, AVX-512 or NEON,
//! for the shapes `conv_winograd_wgrad` does not take, without a column matrix: `dw[co][ci][kh][kw] += Σ_{image, oy, ox} dy[co][oy][ox] · x[ci][oy + kh − 1][ox + kw − 1]`.
//!
//! The inputs of a group of images are copied into zero-padded planes ([`PaddedPlanes`],
//! as the forward does). A register tile of [`TILE_CO`] output channels × the 3 `kw` taps
//! of one `(ci, kh)` then walks every output vector (8 pixels of one row) of the group:
//! per vector it loads the three shifted input vectors once and each channel's `dy` vector
//! once, and does 12 FMAs into 12 eight-lane accumulators. Loop order: tile over
//! (co block, ci, kh), so the block's `dy` planes stay in L1 while the input planes of
//! every `ci` pass through.
//!
//! `dy` is copied too (channel-major, like the inputs), into planes with no padding but
//! zero columns `w..` up to the next multiple of 8, so on rows narrower than a whole
//! number of vectors (`w % 8 != 0`) the lanes past the row end multiply `+0.0` into
//! their accumulator and add nothing. A group of one image whose width is a multiple of
//! 8 (32×32) reads `dy` in place: it already has that layout.
//!
//! Images are grouped so that on small maps a tile still walks enough vectors (8×8 is 8
//! per image) to amortise folding its 12 accumulators and updating `dw`; the group is a
//! function of the shape alone, so the bits depend only on how the caller cuts the batch
//! into calls, as before.
//!
//! Bits, for every element `q = (co, ci, kh, kw)` of `dw`: the call's `n` images are cut
//! into groups of [`Conv2d::weight_grad_group`] consecutive images (the last group may be shorter).
//! For each group `g` in order, lane `l` (`0..8`) is one FMA chain from `+0.0` over
//! (image of the group, oy, vector v) in order of `dy[co][oy][8v + l] · xp[ci][oy + kh][8v + l + kw]`,
//! where `xp` is the padded input (`x[ci][iy − 1][ix − 1]` inside the image, else 0) and
//! `dy[…][ox]` is `+0.0` for `ox ≥ w`. The lanes fold as
//! `S_g = ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`, and the old value enters
//! first: `dw_new = ((dw_old + S_0) + S_1) + …`.
//!
//! With AVX-512F ([`super::Isa::Avx512`]) a map whose rows are whole 16-pixel vectors (16
//! and 32 wide), or 8 wide with an even height (a vector is then two rows, the input's
//! two 8-float loads joined), runs zmm tiles of [`TILE_CO_512`] channels × 3 taps over
//! the same planes. Its bits: lane `l` (`0..16`) is the FMA chain above over the pixels
//! `16v + l` of a row (8 wide: pixel `l % 8` of row `2v + l / 8`), and the
//! lanes fold as `S_g = F(l0 + l8, l1 + l9, …, l7 + l15)` with `F` the eight-lane fold
//! above; the rest is the same. Channels past the last whole block of 4 take the AVX2
//! tiles. So the two paths differ in the last bits, as the GEMM kernels of different
//! widths do.
//!
//! On aarch64 ([`super::Isa::Neon`]) the AVX2 tile runs with each 8-lane accumulator a
//! pair of 4-lane registers, folded in the same order: the AVX2 bits.

#[cfg(target_arch = "aarch64")]
use core::arch::aarch64::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

#[cfg(target_arch = "aarch64")]
use super::conv_layout::Pair;
use super::conv_layout::{PaddedPlanes, Planes, DIRECT_K, LANES};
use super::conv_shape::Conv2d;
#[cfg(target_arch = "x86_64")]
use super::isa::{cpu_isa, Isa};

/// Output channels per register tile: 4 × 3 taps = 12 accumulators, plus the 3 shifted
/// input vectors and one `dy` vector fill the 16 ymm registers (NEON: 24 of its 32).
const TILE_CO: usize = 4;
/// The same with AVX-512F. 4 × 3 zmm accumulators: with 8 × 3 (or 6 × 3), which would
/// load the input vectors less often, LLVM spilled accumulators in the loop and the tile
/// ran slower than the AVX2 one.
#[cfg(target_arch = "x86_64")]
const TILE_CO_512: usize = 4;
/// Pixels per zmm vector.
#[cfg(target_arch = "x86_64")]
const LANES_512: usize = 2 * LANES;
/// Adds the weight gradient of `n` images of a stride-1 "same" 3×3 convolution to `dw`,
/// in the order the module doc gives.
///
/// # Safety
/// The CPU supports AVX2 and FMA (on x86).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
pub(crate) unsafe fn accumulate(s: &Conv2d, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], scratch: &mut [f32]) {
    let gx = PaddedPlanes::of(s.h, s.w, s.pad);
    let gy = PaddedPlanes::of(s.h, s.w, 0);
    assert!(s.k == DIRECT_K && s.stride == 1 && s.pad == 1);
    assert!(x.len() >= n * s.in_len() && dy.len() >= n * s.out_len() && dw.len() >= s.weight_len());
    let group = s.weight_grad_group();
    let (xplane, yplane) = (gx.plane_len(), gy.plane_len());
    let (hw, imgs_max) = (s.h * s.w, group.min(n));
    let (xpad, rest) = scratch.split_at_mut(imgs_max * s.c_in * xplane);
    let ypad = &mut rest[..s.c_out * imgs_max * yplane];
    for i0 in (0..n).step_by(group) {
        let imgs = group.min(n - i0);
        // One image whose rows are whole vectors: its dy already has the padded layout.
        let in_place = imgs == 1 && s.w.is_multiple_of(LANES);
        let ych = if in_place { hw } else { imgs * yplane };
        // The tiles never write the padding: zeroed for the first group (and for a last,
        // smaller one, whose planes lie elsewhere), it stays zero.
        if i0 == 0 || imgs < group {
            xpad[..s.c_in * imgs * xplane].fill(0.0);
            ypad[..s.c_out * imgs * yplane].fill(0.0);
        }
        // Channel-major, `[channel][image of the group]`: a tile's planes are contiguous
        // (image-major, the same plane of the group's images would lie a power of two
        // apart at 8×8 and 16×16 and evict each other from L1).
        for j in 0..imgs {
            let i = i0 + j;
            for c in 0..s.c_in {
                gx.copy_rows(1, &x[i * s.in_len() + c * hw..][..hw], &mut xpad[(c * imgs + j) * xplane..][..xplane]);
            }
            if !in_place {
                for c in 0..s.c_out {
                    gy.copy_rows(1, &dy[i * s.out_len() + c * hw..][..hw], &mut ypad[c * ych + j * yplane..][..yplane]);
                }
            }
        }
        let t = Group { h: s.h, vpr: gx.vectors_per_row, wp: gx.wp, xplane, ych, imgs };
        debug_assert!(yplane == s.h * gy.vectors_per_row * LANES);
        // The zmm tiles take the whole blocks of TILE_CO_512 channels, the AVX2 tiles the rest.
        // SAFETY: `xpad` and the dy planes hold the group as `t` describes.
        let first = unsafe { t.wide_tiles(s, xpad, if in_place { &dy[i0 * s.out_len()..] } else { ypad }, dw) };
        for co0 in (first..s.c_out).step_by(TILE_CO) {
            let r = TILE_CO.min(s.c_out - co0);
            for ci in 0..s.c_in {
                for kh in 0..DIRECT_K {
                    let q = ((co0 * s.c_in + ci) * DIRECT_K + kh) * DIRECT_K;
                    // SAFETY: the tile reads the group's dy planes of channels co0..co0+r
                    // (inside `ypad`, or inside image i0 of `dy` when in place), the
                    // group's padded planes of channel ci from tap row kh on (every tap of
                    // a whole vector lies in its padded plane), and updates
                    // dw[co0 + i][ci][kh][..3] for i < r, inside `dw` (checked above).
                    unsafe {
                        let xp = xpad.as_ptr().add(ci * imgs * xplane + kh * t.wp);
                        let yp =
                            if in_place { dy.as_ptr().add(i0 * s.out_len()) } else { ypad.as_ptr() }.add(co0 * ych);
                        let d = dw.as_mut_ptr().add(q);
                        let stride = s.c_in * DIRECT_K * DIRECT_K;
                        match (r, t.vpr) {
                            (4, 1) => t.tile::<4, 1>(xp, yp, d, stride),
                            (4, 2) => t.tile::<4, 2>(xp, yp, d, stride),
                            (4, 4) => t.tile::<4, 4>(xp, yp, d, stride),
                            (4, _) => t.tile::<4, 0>(xp, yp, d, stride),
                            (3, _) => t.tile::<3, 0>(xp, yp, d, stride),
                            (2, _) => t.tile::<2, 0>(xp, yp, d, stride),
                            _ => t.tile::<1, 0>(xp, yp, d, stride),
                        }
                    }
                }
            }
        }
    }
}

/// The geometry of one group of padded images.
struct Group {
    h: usize,
    /// Output vectors per row, and the padded input's row stride.
    vpr: usize,
    wp: usize,
    /// Floats of one padded input plane and of one padded dy plane.
    xplane: usize,
    /// Floats between the group's `dy` planes of two channels.
    ych: usize,
    /// Images in the group.
    imgs: usize,
}

impl Group {
    /// One register tile: `R` output channels × 3 taps of one (ci, kh) over the group,
    /// folded and added to `d[i·stride + kw]`.
    /// `VPR` is `self.vpr` when nonzero.
    ///
    /// # Safety
    /// `xp` is tap row kh of plane ci of the group's first padded image, `yp` dy plane co0
    /// of its first image (channel-major layout), `d` `dw[co0][ci][kh][0]`; `R` channels
    /// from co0 exist; the CPU supports AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const VPR: usize>(
        &self,
        xp: *const f32,
        yp: *const f32,
        d: *mut f32,
        stride: usize,
    ) {
        // SAFETY: forwarded contract.
        unsafe { self.tile_on::<Ymm, R, VPR>(xp, yp, d, stride) }
    }

    /// [`Group::tile`] on NEON.
    ///
    /// # Safety
    /// As [`Group::tile`]'s but the CPU (NEON is part of every aarch64 CPU).
    #[cfg(target_arch = "aarch64")]
    unsafe fn tile<const R: usize, const VPR: usize>(
        &self,
        xp: *const f32,
        yp: *const f32,
        d: *mut f32,
        stride: usize,
    ) {
        // SAFETY: forwarded contract.
        unsafe { self.tile_on::<Pair, R, VPR>(xp, yp, d, stride) }
    }

    /// The tile in `L`'s 8-lane vectors.
    ///
    /// # Safety
    /// As [`Group::tile`]'s; the caller is compiled for `L`'s set.
    #[inline(always)]
    unsafe fn tile_on<L: Eight, const R: usize, const VPR: usize>(
        &self,
        xp: *const f32,
        yp: *const f32,
        d: *mut f32,
        stride: usize,
    ) {
        // VPR > 0 is `self.vpr` known at compile time (the row loop fully unrolled: at
        // 8×8 and 16×16 a row is one or two vectors), 0 reads it at run time.
        debug_assert!(VPR == 0 || VPR == self.vpr);
        // Wrapping index arithmetic: `hpff-core` keeps overflow checks in release, and a
        // checked multiply per row costs more than the row's FMAs at 8×8.
        let vpr = if VPR > 0 { VPR } else { self.vpr };
        let ys: [*const f32; R] = core::array::from_fn(|i| yp.wrapping_add(i.wrapping_mul(self.ych)));
        let row_skip = self.wp.wrapping_sub(vpr.wrapping_mul(LANES));
        let plane_skip = self.xplane.wrapping_sub(self.h.wrapping_mul(self.wp));
        // SAFETY: the caller's contract covers every address formed below.
        unsafe {
            let mut acc = [[L::zero(); DIRECT_K]; R];
            // The dy planes of one channel are consecutive, so one offset walks all the
            // group's images; the padded input planes have rows `wp` apart.
            let mut yo = 0usize;
            let mut xv = xp;
            for _ in 0..self.imgs {
                for _ in 0..self.h {
                    for _ in 0..vpr {
                        let xs: [L::V; DIRECT_K] = core::array::from_fn(|kw| L::load(xv.add(kw)));
                        for (a, y) in acc.iter_mut().zip(ys) {
                            let g = L::load(y.add(yo));
                            for kw in 0..DIRECT_K {
                                a[kw] = L::fma(g, xs[kw], a[kw]);
                            }
                        }
                        xv = xv.add(LANES);
                        yo = yo.wrapping_add(LANES);
                    }
                    xv = xv.add(row_skip);
                }
                xv = xv.add(plane_skip);
            }
            for (i, a) in acc.iter().enumerate() {
                let sums = L::fold3(a);
                let di = d.add(i * stride);
                for (kw, &v) in sums.iter().enumerate() {
                    *di.add(kw) += v;
                }
            }
        }
    }

    /// The zmm tiles where the CPU has AVX-512F and the rows are whole zmm vectors (see
    /// [`Group::tiles_512`]); the first channel they leave to the 8-lane tiles.
    ///
    /// # Safety
    /// `xpad` holds the group's padded input planes, `ys` its `dy` planes, `dw` the
    /// shape's weights; the CPU supports AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn wide_tiles(&self, s: &Conv2d, xpad: &[f32], ys: &[f32], dw: &mut [f32]) -> usize {
        let wide =
            cpu_isa() == Isa::Avx512 && (s.w.is_multiple_of(LANES_512) || (s.w == LANES && s.h.is_multiple_of(2)));
        if !wide {
            return 0;
        }
        // SAFETY: the CPU has AVX-512F (checked above); the rows are whole zmm vectors.
        unsafe { self.tiles_512(s, xpad, ys, dw) };
        s.c_out / TILE_CO_512 * TILE_CO_512
    }

    /// No wider tiles on NEON: every channel takes the 8-lane tiles.
    ///
    /// # Safety
    /// None (`unsafe` as on x86).
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn wide_tiles(&self, _: &Conv2d, _: &[f32], _: &[f32], _: &mut [f32]) -> usize {
        0
    }
}

/// 8-lane vectors of one instruction set, as the weight-gradient tile uses them.
trait Eight {
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    /// `a · b + c`, one rounding.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Each accumulator's lanes as `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`.
    unsafe fn fold3(a: &[Self::V; DIRECT_K]) -> [f32; DIRECT_K];
}

#[cfg(target_arch = "x86_64")]
struct Ymm;

// SAFETY (every method): called only from functions compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
impl Eight for Ymm {
    type V = __m256;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn fold3(a: &[__m256; DIRECT_K]) -> [f32; DIRECT_K] {
        unsafe { fold3(a) }
    }
}

// SAFETY (every method): NEON is part of every aarch64 CPU; addresses as the caller's
// contract covers.
#[cfg(target_arch = "aarch64")]
impl Eight for Pair {
    type V = Pair;
    #[inline(always)]
    unsafe fn zero() -> Pair {
        Pair::zero()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Pair {
        unsafe { Pair::load(p) }
    }
    #[inline(always)]
    unsafe fn fma(a: Pair, b: Pair, c: Pair) -> Pair {
        Pair::fma(a, b, c)
    }
    #[inline(always)]
    unsafe fn fold3(a: &[Pair; DIRECT_K]) -> [f32; DIRECT_K] {
        // [l0+l1, l2+l3, l4+l5, l6+l7], then [(l0+l1)+(l2+l3), (l4+l5)+(l6+l7), ..].
        a.map(|v| unsafe {
            let p = vpaddq_f32(v.0, v.1);
            let q = vpaddq_f32(p, p);
            vgetq_lane_f32::<0>(q) + vgetq_lane_f32::<1>(q)
        })
    }
}

#[cfg(target_arch = "x86_64")]
impl Group {
    /// Every zmm tile of the group: channel blocks of [`TILE_CO_512`] × input channel ×
    /// tap row, as the AVX2 loop walks its tiles. `ys` holds the group's `dy` planes
    /// (channel-major, `self.ych` apart).
    ///
    /// # Safety
    /// The CPU supports AVX-512F; the rows are whole 16-pixel vectors; `xpad` holds the
    /// group's padded input planes, `ys` its `dy` planes, `dw` the shape's weights.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn tiles_512(&self, s: &Conv2d, xpad: &[f32], ys: &[f32], dw: &mut [f32]) {
        debug_assert!((s.w.is_multiple_of(LANES_512) || s.w == LANES) && self.vpr * LANES == s.w);
        assert!(
            xpad.len() >= s.c_in * self.imgs * self.xplane
                && ys.len() >= (s.c_out - 1) * self.ych + self.imgs * s.h * s.w
        );
        let stride = s.c_in * DIRECT_K * DIRECT_K;
        for co0 in (0..s.c_out / TILE_CO_512 * TILE_CO_512).step_by(TILE_CO_512) {
            for ci in 0..s.c_in {
                for kh in 0..DIRECT_K {
                    let q = ((co0 * s.c_in + ci) * DIRECT_K + kh) * DIRECT_K;
                    // SAFETY: as the AVX2 tiles' (the lengths are asserted above); the
                    // CPU has AVX-512F (the caller's contract).
                    unsafe {
                        let xp = xpad.as_ptr().add(ci * self.imgs * self.xplane + kh * self.wp);
                        let yp = ys.as_ptr().add(co0 * self.ych);
                        let d = dw.as_mut_ptr().add(q);
                        match self.vpr {
                            1 => self.tile_512::<1, true>(xp, yp, d, stride),
                            2 => self.tile_512::<1, false>(xp, yp, d, stride),
                            4 => self.tile_512::<2, false>(xp, yp, d, stride),
                            _ => self.tile_512::<0, false>(xp, yp, d, stride),
                        }
                    }
                }
            }
        }
    }

    /// [`Group::tile`] in zmm registers: 4 channels × 3 taps over 16-pixel vectors. The
    /// accumulators are named variables: as an array indexed in loops, LLVM kept them on
    /// the stack (a load and a store per FMA).
    ///
    /// # Safety
    /// As [`Group::tile`] with `R` = 4, and the CPU supports AVX-512F.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn tile_512<const VPR: usize, const PAIR: bool>(
        &self,
        xp: *const f32,
        yp: *const f32,
        d: *mut f32,
        stride: usize,
    ) {
        // VPR > 0 is the row's vector count known at compile time: the row is then
        // straight-line code and the row loop the innermost, around which LLVM keeps the
        // accumulators in registers (with a loop over the vectors inside, it spilled and
        // reloaded all of them on every row). PAIR: an 8-wide map, a vector is two rows.
        debug_assert!(VPR == 0 || PAIR || VPR * LANES_512 == self.vpr * LANES);
        let vpr = if VPR > 0 { VPR } else { self.vpr / 2 };
        let (rows, wp) = (if PAIR { self.h / 2 } else { self.h }, self.wp);
        let step = if PAIR { 0 } else { LANES_512 };
        let row_skip = if PAIR { 2 * wp } else { wp.wrapping_sub(vpr.wrapping_mul(LANES_512)) };
        let ych = self.ych;
        let plane_skip = self.xplane.wrapping_sub(self.h.wrapping_mul(self.wp));
        macro_rules! tile {
            ($($y:ident $a0:ident $a1:ident $a2:ident $i:literal),*) => {
                // SAFETY: the caller's contract covers every address formed below.
                unsafe {
                    $(let $y = yp.wrapping_add(ych.wrapping_mul($i));
                      let (mut $a0, mut $a1, mut $a2) = (_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps());)*
                    let mut yo = 0usize;
                    let mut xv = xp;
                    for _ in 0..self.imgs {
                        for _ in 0..rows {
                            for _ in 0..vpr {
                                let (x0, x1, x2) = (load::<PAIR>(xv, wp), load::<PAIR>(xv.add(1), wp), load::<PAIR>(xv.add(2), wp));
                                $(let g = _mm512_loadu_ps($y.add(yo));
                                  $a0 = _mm512_fmadd_ps(g, x0, $a0);
                                  $a1 = _mm512_fmadd_ps(g, x1, $a1);
                                  $a2 = _mm512_fmadd_ps(g, x2, $a2);)*
                                xv = xv.add(step);
                                yo = yo.wrapping_add(LANES_512);
                            }
                            xv = xv.add(row_skip);
                        }
                        xv = xv.add(plane_skip);
                    }
                    $(add_folded(d.add($i * stride), [$a0, $a1, $a2]);)*
                }
            };
        }
        tile!(y0 a00 a01 a02 0, y1 a10 a11 a12 1, y2 a20 a21 a22 2, y3 a30 a31 a32 3);
    }
}

/// 16 floats at `p`, or with `PAIR` 8 at `p` and 8 at `p + wp` (two rows of an 8-wide map).
///
/// # Safety
/// The CPU supports AVX-512F; the floats read lie in one allocation.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load<const PAIR: bool>(p: *const f32, wp: usize) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        if PAIR {
            let lo = _mm512_castps256_ps512(_mm256_loadu_ps(p));
            let hi = _mm256_castps_pd(_mm256_loadu_ps(p.add(wp)));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(lo), hi))
        } else {
            _mm512_loadu_ps(p)
        }
    }
}

/// Adds the three folded zmm accumulators of one channel to `d[0..3]`: lanes `l` and
/// `l + 8` first, then [`fold3`]'s eight-lane fold.
///
/// # Safety
/// The CPU supports AVX-512F; `d` points at three writable floats.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn add_folded(d: *mut f32, a: [__m512; DIRECT_K]) {
    // SAFETY: register operations, and the caller's three floats at `d`.
    unsafe {
        let halves: [__m256; DIRECT_K] = core::array::from_fn(|kw| {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a[kw])));
            _mm256_add_ps(_mm512_castps512_ps256(a[kw]), hi)
        });
        for (kw, v) in fold3(&halves).into_iter().enumerate() {
            *d.add(kw) += v;
        }
    }
}

/// Folds three accumulators' lanes, each as `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`.
///
/// # Safety
/// The CPU supports AVX2 (an `unsafe fn`: safe `#[target_feature]` functions need a
/// newer Rust than the crate's MSRV).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn fold3(a: &[__m256; DIRECT_K]) -> [f32; DIRECT_K] {
    // hadd(u, v) = [u0+u1, u2+u3, v0+v1, v2+v3 | u4+u5, u6+u7, v4+v5, v6+v7]; twice gives
    // each vector's (l0+l1)+(l2+l3) in the low half and (l4+l5)+(l6+l7) in the high half.
    // SAFETY: register shuffles and adds, and an unaligned store of 4 floats into a
    // 4-float array; the CPU has AVX2 (the caller's contract).
    unsafe {
        let h01 = _mm256_hadd_ps(a[0], a[1]);
        let h2 = _mm256_hadd_ps(a[2], a[2]);
        let h = _mm256_hadd_ps(h01, h2);
        let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        let mut out = [0.0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), s);
        [out[0], out[1], out[2]]
    }
}
