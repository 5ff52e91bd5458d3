//! The vector registers of the direct 3×3 kernels (`conv_direct`), one type per
//! instruction set and shape of vector: the accumulating tile's loads, broadcasts and
//! FMAs, and the lane-by-lane operations a tile's store applies when a forward
//! finishes its outputs in registers (`conv_tail`: eval BN, residual, ReLU).

#[cfg(target_arch = "aarch64")]
use core::arch::aarch64::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

#[cfg(target_arch = "aarch64")]
use super::conv_layout::Pair;
use super::conv_layout::LANES;

/// The registers of one instruction set as the direct kernels' tile uses them. The
/// methods are `#[inline(always)]` and only called from `#[target_feature]` functions
/// (`conv_direct`'s `direct_image` and `direct_image_512`), so each tile is compiled
/// with its set.
pub(crate) trait Lanes {
    type V: Copy;
    /// Pixels per vector: one 8-pixel vector of a row, or two of one row.
    const WIDTH: usize;
    /// Vectors per tile: `TILE_ROWS` × `TILE_V` accumulators, `TILE_V` loaded vectors
    /// and one broadcast fill the registers (16 ymm, 32 zmm).
    const TILE_V: usize;
    /// Rows per vector: 1, or 2 when a vector is two 8-pixel rows (8-wide maps).
    const ROWS: usize = 1;
    unsafe fn zero() -> Self::V;
    /// The vector at `p` (with `ROWS` = 2: 8 floats at `p`, then 8 at `p + wp`); `n`: the
    /// lanes the tile stores (a zmm reads only those, so a row's last vector stays in the
    /// row's padded plane; the others read whole vectors, which their layouts hold).
    unsafe fn load(p: *const f32, wp: usize, n: usize) -> Self::V;
    unsafe fn splat(p: *const f32) -> Self::V;
    /// `a · b + c`, one rounding.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Stores the first `n` (≤ `WIDTH`) lanes of `v` at `d`.
    unsafe fn store(d: *mut f32, v: Self::V, n: usize);
    /// The first `n` (≤ `WIDTH`) lanes at `p` in the output's layout (where [`Lanes::store`]
    /// puts them), the others zero; reads only those `n` floats.
    unsafe fn load_out(p: *const f32, n: usize) -> Self::V;
    /// `a − b`, `a · b`, `a + b`: one rounding each, lane by lane.
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn mul(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// `if v > 0 { v } else { 0 }` lane by lane (zero for −0 and NaN, as `relu_inplace`).
    unsafe fn relu(v: Self::V) -> Self::V;
}

#[cfg(target_arch = "x86_64")]
pub(crate) struct Ymm;
/// 16-pixel vectors of one row; `MASKED`: the row's last vector is partial and reads only
/// its lanes (rows of an odd number of 8-pixel vectors, whose padded row ends 8 floats
/// short of a whole zmm). A zero-masking load costs more than a plain one even with every
/// lane set (16- and 32-wide maps lost 10–13 % with it), so whole rows keep plain loads.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Zmm<const MASKED: bool>;

// SAFETY (every method below): called only from functions compiled for the set, with
// addresses the caller's contract covers.
#[cfg(target_arch = "x86_64")]
impl Lanes for Ymm {
    type V = __m256;
    const WIDTH: usize = LANES;
    const TILE_V: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, _: usize, _: usize) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m256 {
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(d: *mut f32, v: __m256, n: usize) {
        unsafe {
            if n == LANES {
                _mm256_storeu_ps(d, v);
            } else {
                let mut tmp = [0.0f32; LANES];
                _mm256_storeu_ps(tmp.as_mut_ptr(), v);
                core::ptr::copy_nonoverlapping(tmp.as_ptr(), d, n);
            }
        }
    }
    #[inline(always)]
    unsafe fn load_out(p: *const f32, n: usize) -> __m256 {
        unsafe {
            if n == LANES {
                _mm256_loadu_ps(p)
            } else {
                let mut tmp = [0.0f32; LANES];
                core::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), n);
                _mm256_loadu_ps(tmp.as_ptr())
            }
        }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn relu(v: __m256) -> __m256 {
        // `maxps` returns its second operand unless the first is greater: 0 for −0 and NaN.
        unsafe { _mm256_max_ps(v, _mm256_setzero_ps()) }
    }
}

#[cfg(target_arch = "x86_64")]
impl<const MASKED: bool> Lanes for Zmm<MASKED> {
    type V = __m512;
    const WIDTH: usize = 2 * LANES;
    const TILE_V: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, _: usize, n: usize) -> __m512 {
        unsafe {
            if MASKED {
                let mask: __mmask16 = if n >= 2 * LANES { 0xffff } else { (1u16 << n) - 1 };
                _mm512_maskz_loadu_ps(mask, p)
            } else {
                _mm512_loadu_ps(p)
            }
        }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        unsafe { _mm512_set1_ps(*p) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(d: *mut f32, v: __m512, n: usize) {
        let mask: __mmask16 = if n >= 2 * LANES { 0xffff } else { (1u16 << n) - 1 };
        unsafe { _mm512_mask_storeu_ps(d, mask, v) }
    }
    #[inline(always)]
    unsafe fn load_out(p: *const f32, n: usize) -> __m512 {
        unsafe {
            if n >= 2 * LANES {
                _mm512_loadu_ps(p)
            } else {
                _mm512_maskz_loadu_ps((1u16 << n) - 1, p)
            }
        }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn relu(v: __m512) -> __m512 {
        // `maxps` returns its second operand unless the first is greater: 0 for −0 and NaN.
        unsafe { _mm512_max_ps(v, _mm512_setzero_ps()) }
    }
}

/// 16-pixel vectors of two 8-pixel rows (8-wide maps): each tap vector is two 8-float
/// loads from consecutive padded rows, joined (`vinsertf64x4`, AVX-512F); the output rows
/// of 8 are contiguous, so a vector stores as one.
#[cfg(target_arch = "x86_64")]
pub(crate) struct ZmmRows;

#[cfg(target_arch = "x86_64")]
impl Lanes for ZmmRows {
    type V = __m512;
    const WIDTH: usize = 2 * LANES;
    const TILE_V: usize = 4;
    const ROWS: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, wp: usize, _: usize) -> __m512 {
        unsafe {
            let lo = _mm512_castps256_ps512(_mm256_loadu_ps(p));
            let hi = _mm256_castps_pd(_mm256_loadu_ps(p.add(wp)));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(lo), hi))
        }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> __m512 {
        unsafe { Zmm::<false>::splat(p) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { Zmm::<false>::fma(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(d: *mut f32, v: __m512, n: usize) {
        unsafe { Zmm::<false>::store(d, v, n) }
    }
    #[inline(always)]
    unsafe fn load_out(p: *const f32, n: usize) -> __m512 {
        // The two output rows of 8 are contiguous, as `store` writes them.
        unsafe { Zmm::<false>::load_out(p, n) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        unsafe { Zmm::<false>::sub(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        unsafe { Zmm::<false>::mul(a, b) }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        unsafe { Zmm::<false>::add(a, b) }
    }
    #[inline(always)]
    unsafe fn relu(v: __m512) -> __m512 {
        unsafe { Zmm::<false>::relu(v) }
    }
}

/// Each 8-pixel vector as two 4-lane registers: the AVX2 tile, fused multiply-adds lane
/// by lane (the same bits).
#[cfg(target_arch = "aarch64")]
pub(crate) struct Neon;

// SAFETY (every method): NEON is part of every aarch64 CPU; addresses as the caller's
// contract covers.
#[cfg(target_arch = "aarch64")]
impl Lanes for Neon {
    type V = Pair;
    const WIDTH: usize = LANES;
    const TILE_V: usize = 2;
    #[inline(always)]
    unsafe fn zero() -> Pair {
        Pair::zero()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32, _: usize, _: usize) -> Pair {
        unsafe { Pair::load(p) }
    }
    #[inline(always)]
    unsafe fn splat(p: *const f32) -> Pair {
        unsafe {
            let v = vld1q_dup_f32(p);
            Pair(v, v)
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Pair, b: Pair, c: Pair) -> Pair {
        Pair::fma(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(d: *mut f32, v: Pair, n: usize) {
        unsafe {
            if n == LANES {
                vst1q_f32(d, v.0);
                vst1q_f32(d.add(4), v.1);
            } else {
                let mut tmp = [0.0f32; LANES];
                vst1q_f32(tmp.as_mut_ptr(), v.0);
                vst1q_f32(tmp.as_mut_ptr().add(4), v.1);
                core::ptr::copy_nonoverlapping(tmp.as_ptr(), d, n);
            }
        }
    }
    #[inline(always)]
    unsafe fn load_out(p: *const f32, n: usize) -> Pair {
        unsafe {
            if n == LANES {
                Pair::load(p)
            } else {
                let mut tmp = [0.0f32; LANES];
                core::ptr::copy_nonoverlapping(p, tmp.as_mut_ptr(), n);
                Pair::load(tmp.as_ptr())
            }
        }
    }
    #[inline(always)]
    unsafe fn sub(a: Pair, b: Pair) -> Pair {
        unsafe { Pair(vsubq_f32(a.0, b.0), vsubq_f32(a.1, b.1)) }
    }
    #[inline(always)]
    unsafe fn mul(a: Pair, b: Pair) -> Pair {
        unsafe { Pair(vmulq_f32(a.0, b.0), vmulq_f32(a.1, b.1)) }
    }
    #[inline(always)]
    unsafe fn add(a: Pair, b: Pair) -> Pair {
        unsafe { Pair(vaddq_f32(a.0, b.0), vaddq_f32(a.1, b.1)) }
    }
    #[inline(always)]
    unsafe fn relu(v: Pair) -> Pair {
        // A select on `v > 0` (`fmax` would keep NaN and −0).
        unsafe {
            let z = vdupq_n_f32(0.0);
            Pair(vbslq_f32(vcgtq_f32(v.0, z), v.0, z), vbslq_f32(vcgtq_f32(v.1, z), v.1, z))
        }
    }
}

/// Vectors that interleave: the Winograd output tiles' even and odd columns made one
/// row (`conv_winograd`).
pub(crate) trait Zip: Lanes {
    /// `(lo, hi)`: `a0 b0 a1 b1 …` over both, lanes `0..WIDTH` of the pairs in `lo`, the
    /// rest in `hi`.
    unsafe fn zip(a: Self::V, b: Self::V) -> (Self::V, Self::V);
}

// SAFETY (every method below): register operations of the set the caller is compiled for.
#[cfg(target_arch = "x86_64")]
impl Zip for Ymm {
    #[inline(always)]
    unsafe fn zip(a: __m256, b: __m256) -> (__m256, __m256) {
        unsafe {
            // Per 128-bit half: a0 b0 a1 b1 | a4 b4 a5 b5, and a2 b2 a3 b3 | a6 b6 a7 b7.
            let (l, h) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            (_mm256_permute2f128_ps::<0x20>(l, h), _mm256_permute2f128_ps::<0x31>(l, h))
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl<const MASKED: bool> Zip for Zmm<MASKED> {
    #[inline(always)]
    unsafe fn zip(a: __m512, b: __m512) -> (__m512, __m512) {
        unsafe {
            // Index i < 16 takes a's lane i, 16 + i b's.
            let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            (_mm512_permutex2var_ps(a, lo, b), _mm512_permutex2var_ps(a, hi, b))
        }
    }
}

#[cfg(target_arch = "aarch64")]
impl Zip for Neon {
    #[inline(always)]
    unsafe fn zip(a: Pair, b: Pair) -> (Pair, Pair) {
        unsafe { (Pair(vzip1q_f32(a.0, b.0), vzip2q_f32(a.0, b.0)), Pair(vzip1q_f32(a.1, b.1), vzip2q_f32(a.1, b.1))) }
    }
}

/// Vectors that transpose a square block: the Winograd weight gradient's channels-last
/// copies and its last transform (`conv_winograd_wgrad`).
pub(crate) trait Transpose: Lanes {
    /// The `WIDTH × WIDTH` transpose of `rows[..WIDTH]` (row `i` lane `j` to row `j` lane
    /// `i`) in the first `WIDTH` rows of the result; the rest are unspecified.
    unsafe fn transpose(rows: [Self::V; 16]) -> [Self::V; 16];
}

// SAFETY (every method below): register operations of the set the caller is compiled for.
#[cfg(target_arch = "x86_64")]
impl Transpose for Ymm {
    #[inline(always)]
    unsafe fn transpose(r: [__m256; 16]) -> [__m256; 16] {
        unsafe {
            // Rows 2k and 2k + 1 interleaved by floats (in each 128-bit half).
            let t: [__m256; 8] = core::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm256_unpacklo_ps(a, b)
                } else {
                    _mm256_unpackhi_ps(a, b)
                }
            });
            // u[4k + c]: in each half L, column 4L + c of rows 4k..4k + 4.
            let u: [__m256; 8] = core::array::from_fn(|i| {
                let (k, c) = (i / 4, i % 4);
                let (a, b) = (t[4 * k + c / 2], t[4 * k + 2 + c / 2]);
                if c % 2 == 0 {
                    _mm256_shuffle_ps::<0x44>(a, b)
                } else {
                    _mm256_shuffle_ps::<0xEE>(a, b)
                }
            });
            let mut out = [_mm256_setzero_ps(); 16];
            for c in 0..4 {
                out[c] = _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]);
                out[4 + c] = _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]);
            }
            out
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl<const MASKED: bool> Transpose for Zmm<MASKED> {
    #[inline(always)]
    unsafe fn transpose(r: [__m512; 16]) -> [__m512; 16] {
        unsafe {
            // Rows 2k and 2k + 1 interleaved by floats (in each 128-bit lane).
            let t: [__m512; 16] = core::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    _mm512_unpacklo_ps(a, b)
                } else {
                    _mm512_unpackhi_ps(a, b)
                }
            });
            // u[4k + c]: in each 128-bit lane L, column 4L + c of rows 4k..4k + 4.
            let u: [__m512; 16] = core::array::from_fn(|i| {
                let (k, c) = (i / 4, i % 4);
                let (a, b) = (_mm512_castps_pd(t[4 * k + c / 2]), _mm512_castps_pd(t[4 * k + 2 + c / 2]));
                _mm512_castpd_ps(if c % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
            });
            // Row 4L + c: lane k of it is lane L of u[4k + c] (a 4 × 4 transpose of lanes).
            let mut out = [_mm512_setzero_ps(); 16];
            for c in 0..4 {
                let (a, b, cc, d) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
                let (v0, v1) = (_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b));
                let (v2, v3) = (_mm512_shuffle_f32x4::<0x88>(cc, d), _mm512_shuffle_f32x4::<0xDD>(cc, d));
                out[c] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
                out[4 + c] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
                out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
                out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
            }
            out
        }
    }
}

#[cfg(target_arch = "aarch64")]
impl Transpose for Neon {
    #[inline(always)]
    unsafe fn transpose(r: [Pair; 16]) -> [Pair; 16] {
        // The 4 × 4 transpose of four 4-lane rows.
        #[inline(always)]
        unsafe fn t4(a: float32x4_t, b: float32x4_t, c: float32x4_t, d: float32x4_t) -> [float32x4_t; 4] {
            unsafe {
                let (t0, t1) = (vreinterpretq_f64_f32(vtrn1q_f32(a, b)), vreinterpretq_f64_f32(vtrn2q_f32(a, b)));
                let (t2, t3) = (vreinterpretq_f64_f32(vtrn1q_f32(c, d)), vreinterpretq_f64_f32(vtrn2q_f32(c, d)));
                [
                    vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)),
                    vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)),
                    vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)),
                    vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)),
                ]
            }
        }
        unsafe {
            // Columns 0–3 and 4–7 of rows 0–3 and of rows 4–7.
            let a = t4(r[0].0, r[1].0, r[2].0, r[3].0);
            let b = t4(r[0].1, r[1].1, r[2].1, r[3].1);
            let c = t4(r[4].0, r[5].0, r[6].0, r[7].0);
            let d = t4(r[4].1, r[5].1, r[6].1, r[7].1);
            let mut out = [Pair::zero(); 16];
            for j in 0..4 {
                out[j] = Pair(a[j], c[j]);
                out[4 + j] = Pair(b[j], d[j]);
            }
            out
        }
    }
}
