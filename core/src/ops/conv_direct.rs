//! Direct stride-1 "same" convolution on AVX2 (and AVX-512F where the CPU has it) or NEON:
//! the forward and the input gradient of every 3×3 of a ResNet but the downsampling ones,
//! without a column matrix.
//!
//! The image is copied once into zero-padded planes ([`PaddedPlanes`]); a register tile
//! of up to 6 output channels × 16 output pixels (two vectors of 8 pixels of one row, or
//! the ends of two rows) then walks the input channels and the `k × k` taps, loading each
//! tap's 8 pixels straight from the padded plane and broadcasting the weight. That is the
//! GEMM micro-kernel's arithmetic without packing op(B): the packing cost as much as the
//! product at the 16-channel layers, and the input gradient's GEMM had only `c_out` terms
//! per element (plus a col2im pass over a matrix `k²` times the image).
//!
//! With AVX-512F ([`super::Isa::Avx512`]) the tile is up to 6 planes × 4 vectors of 16
//! pixels in the 32 zmm registers: on maps whose rows hold whole pairs of 8-pixel vectors
//! (16, 28 and 32 wide, 14 too), on rows wider than 16 of an odd number of them (56: the
//! row's last vector loads only its lanes), and on 8-wide maps of even height with a
//! vector of two rows (two loads joined), so a whole 8×8 image is one tile's 4 vectors.
//! A map narrower than 16 with an odd number of 8-pixel vectors (7×7) keeps the AVX2
//! tile, which its rows fill better.
//!
//! On aarch64 ([`super::Isa::Neon`]) the AVX2 tile runs with each 8-pixel vector a pair
//! of 4-lane registers (6 planes × 2 vectors: 24 of the 32 registers accumulate).
//!
//! Bits: every output is one FMA chain from zero over (input channel, kh, kw) in order,
//! on every instruction set, so AVX-512, AVX2 and NEON give the same bits.
//! For the forward that is the GEMM's chain over the column-matrix rows, so its bits are
//! unchanged; the input gradient is the convolution of the padded `dy` with the weights
//! transposed and flipped, one chain over (co, kh', kw') with `kh' = k − 1 − kh`.

#[cfg(target_arch = "aarch64")]
use core::arch::aarch64::*;
#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

#[cfg(target_arch = "aarch64")]
use super::conv_layout::Pair;
use super::conv_layout::{packed_len, PaddedPlanes, DIRECT_K, LANES, TILE_ROWS};
use super::conv_shape::Conv2d;
#[cfg(target_arch = "x86_64")]
use super::isa::{cpu_isa, Isa};

/// Packs the forward's weights `w[o][c][t]` as `[row block][c][t][TILE_ROWS]` (rows
/// past `c_out` zero), so a tile's broadcasts walk one pointer.
fn pack_forward(s: &Conv2d, w: &[f32], out: &mut [f32]) {
    let per_row = s.c_in * s.k * s.k;
    for (b, dst) in out.chunks_exact_mut(per_row * TILE_ROWS).take(s.c_out.div_ceil(TILE_ROWS)).enumerate() {
        for i in 0..TILE_ROWS {
            let o = b * TILE_ROWS + i;
            let d = dst[i..].iter_mut().step_by(TILE_ROWS);
            if o < s.c_out {
                d.zip(&w[o * per_row..][..per_row]).for_each(|(d, &v)| *d = v);
            } else {
                d.for_each(|d| *d = 0.0);
            }
        }
    }
}

/// Packs the input gradient's weights `A(ci, co, t) = w[co][ci][k² − 1 − t]` as
/// [`pack_forward`] does (`[ci block][co][t][TILE_ROWS]`).
fn pack_input_grad(s: &Conv2d, w: &[f32], out: &mut [f32]) {
    let kk = s.k * s.k;
    let per_block = s.c_out * kk * TILE_ROWS;
    for (b, dst) in out.chunks_exact_mut(per_block).take(s.c_in.div_ceil(TILE_ROWS)).enumerate() {
        let (ci0, rows) = (b * TILE_ROWS, TILE_ROWS.min(s.c_in - b * TILE_ROWS));
        for (co, dc) in dst.chunks_exact_mut(kk * TILE_ROWS).enumerate() {
            // The block's rows of this co: w[co][ci0..ci0 + rows][..], contiguous.
            let src = &w[(co * s.c_in + ci0) * kk..][..rows * kk];
            for (t, d) in dc.chunks_exact_mut(TILE_ROWS).enumerate() {
                for (i, v) in d.iter_mut().enumerate() {
                    *v = if i < rows { src[i * kk + kk - 1 - t] } else { 0.0 };
                }
            }
        }
    }
}

/// The registers of one instruction set as the tile uses them. The methods are
/// `#[inline(always)]` and only called from the `#[target_feature]` functions
/// [`direct_image`] and [`direct_image_512`], so each tile is compiled with its set.
trait Lanes {
    type V: Copy;
    /// Pixels per vector: one 8-pixel vector of a row, or two of one row.
    const WIDTH: usize;
    /// Vectors per tile: [`TILE_ROWS`] × `TILE_V` accumulators, `TILE_V` loaded vectors
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
}

#[cfg(target_arch = "x86_64")]
struct Ymm;
/// 16-pixel vectors of one row; `MASKED`: the row's last vector is partial and reads only
/// its lanes (rows of an odd number of 8-pixel vectors, whose padded row ends 8 floats
/// short of a whole zmm). A zero-masking load costs more than a plain one even with every
/// lane set (16- and 32-wide maps lost 10–13 % with it), so whole rows keep plain loads.
#[cfg(target_arch = "x86_64")]
struct Zmm<const MASKED: bool>;

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
}

/// 16-pixel vectors of two 8-pixel rows (8-wide maps): each tap vector is two 8-float
/// loads from consecutive padded rows, joined (`vinsertf64x4`, AVX-512F); the output rows
/// of 8 are contiguous, so a vector stores as one.
#[cfg(target_arch = "x86_64")]
struct ZmmRows;

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
}

/// The direct convolution of one image: `out[o][p] = Σ_{c, kh, kw} A(o, c, kh·k + kw) ·
/// padded[c][p + tap shift]` for all `rows` output planes (`h × w` each, overwritten),
/// `A` packed by [`pack_forward`] or [`pack_input_grad`].
///
/// # Safety
/// The CPU supports AVX2 and FMA; `padded` holds `channels` planes of `g`, `out` holds
/// `rows · h · w` floats and `packed` the packing of `rows × channels` weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_image<const K: usize>(
    g: &PaddedPlanes,
    channels: usize,
    padded: &[f32],
    packed: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe { walk::<Ymm, K>(g, channels, padded, packed, rows, out) }
}

/// [`direct_image`] with 16-pixel vectors (two 8-pixel vectors of one row each) and a
/// tile of up to [`TILE_ROWS`] planes × 4 vectors: 24 accumulators, 4 loaded vectors and a
/// broadcast in the 32 zmm registers. Each output is the same FMA chain as there.
///
/// # Safety
/// As [`direct_image`]'s, and the CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn direct_image_512<const K: usize>(
    g: &PaddedPlanes,
    channels: usize,
    padded: &[f32],
    packed: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded contract.
    unsafe {
        if g.w == LANES && g.h.is_multiple_of(2) {
            walk::<ZmmRows, K>(g, channels, padded, packed, rows, out)
        } else if g.vectors_per_row.is_multiple_of(2) {
            walk::<Zmm<false>, K>(g, channels, padded, packed, rows, out)
        } else {
            walk::<Zmm<true>, K>(g, channels, padded, packed, rows, out)
        }
    }
}

/// The tiles of one image with `L`'s vectors (see [`direct_image`]).
///
/// # Safety
/// As [`direct_image`]'s; the caller is compiled for `L`'s set; a row holds whole
/// `L::WIDTH`-pixel vectors of its 8-pixel ones.
#[inline(always)]
unsafe fn walk<L: Lanes, const K: usize>(
    g: &PaddedPlanes,
    channels: usize,
    padded: &[f32],
    packed: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    debug_assert!(padded.len() >= channels * g.plane_len() && out.len() >= rows * g.h * g.w);
    debug_assert!(packed.len() >= packed_len(rows, channels, K * K));
    // Vectors per row (per pair of rows with `L::ROWS` = 2, whose rows are one vector).
    let per_row = (g.vectors_per_row * LANES * L::ROWS).div_ceil(L::WIDTH);
    let vectors = g.h / L::ROWS * per_row;
    let hw = g.h * g.w;
    for o0 in (0..rows).step_by(TILE_ROWS) {
        let r = TILE_ROWS.min(rows - o0);
        let a = packed[o0 * channels * K * K..].as_ptr();
        for v0 in (0..vectors).step_by(L::TILE_V) {
            let nv = L::TILE_V.min(vectors - v0);
            let mut t = Tile {
                channels,
                plane: g.plane_len(),
                wp: g.wp,
                a,
                src: [padded.as_ptr(); MAX_V],
                dst: [out[o0 * hw..].as_mut_ptr(); MAX_V],
                lanes: [0; MAX_V],
                out_row: hw,
            };
            for j in 0..nv {
                let (oy, ox) = ((v0 + j) / per_row * L::ROWS, (v0 + j) % per_row * L::WIDTH);
                t.src[j] = t.src[j].wrapping_add(oy * g.wp + ox);
                t.dst[j] = t.dst[j].wrapping_add(oy * g.w + ox);
                t.lanes[j] = if L::ROWS == 2 { L::WIDTH } else { L::WIDTH.min(g.w - ox) };
            }
            // SAFETY: the tile's loads stay inside `padded` (PaddedPlanes: every tap of a
            // whole 8-pixel vector lies in its padded plane, and a wide vector is whole
            // 8-pixel ones of one row), its weight reads inside block o0 of `packed`, and
            // its stores (`lanes` of each vector) inside rows o0..o0+r of `out`.
            unsafe {
                match (r, nv) {
                    (6, 4) => t.run::<L, K, 6, 4>(),
                    (6, 3) => t.run::<L, K, 6, 3>(),
                    (6, 2) => t.run::<L, K, 6, 2>(),
                    (6, _) => t.run::<L, K, 6, 1>(),
                    (5, 4) => t.run::<L, K, 5, 4>(),
                    (5, 3) => t.run::<L, K, 5, 3>(),
                    (5, 2) => t.run::<L, K, 5, 2>(),
                    (5, _) => t.run::<L, K, 5, 1>(),
                    (4, 4) => t.run::<L, K, 4, 4>(),
                    (4, 3) => t.run::<L, K, 4, 3>(),
                    (4, 2) => t.run::<L, K, 4, 2>(),
                    (4, _) => t.run::<L, K, 4, 1>(),
                    (3, 4) => t.run::<L, K, 3, 4>(),
                    (3, 3) => t.run::<L, K, 3, 3>(),
                    (3, 2) => t.run::<L, K, 3, 2>(),
                    (3, _) => t.run::<L, K, 3, 1>(),
                    (2, 4) => t.run::<L, K, 2, 4>(),
                    (2, 3) => t.run::<L, K, 2, 3>(),
                    (2, 2) => t.run::<L, K, 2, 2>(),
                    (2, _) => t.run::<L, K, 2, 1>(),
                    (_, 4) => t.run::<L, K, 1, 4>(),
                    (_, 3) => t.run::<L, K, 1, 3>(),
                    (_, 2) => t.run::<L, K, 1, 2>(),
                    _ => t.run::<L, K, 1, 1>(),
                }
            }
        }
    }
}

/// Most vectors of any tile.
const MAX_V: usize = 4;

/// One register tile: up to [`TILE_ROWS`] output planes × up to `L::TILE_V` vectors.
struct Tile {
    channels: usize,
    /// Floats of one padded plane, and its row stride.
    plane: usize,
    wp: usize,
    /// The tile's packed weight block.
    a: *const f32,
    /// Padded-plane address of each vector's tap (0, 0) in channel 0.
    src: [*const f32; MAX_V],
    /// Output address of each vector in the tile's first plane.
    dst: [*mut f32; MAX_V],
    /// Valid pixels of each vector (all but at the end of a row narrower than a vector).
    lanes: [usize; MAX_V],
    /// Floats between two output planes.
    out_row: usize,
}

impl Tile {
    /// # Safety
    /// As [`walk`]'s, for this tile's `R` rows and `V` vectors.
    #[inline(always)]
    unsafe fn run<L: Lanes, const K: usize, const R: usize, const V: usize>(&self) {
        // AVX2's 16 registers hold 2 vectors a tile (the match above also names wider
        // tiles, which its walk never forms).
        if V > L::TILE_V {
            return;
        }
        // SAFETY: the caller's contract covers every address formed below.
        unsafe {
            let mut acc = [[L::zero(); V]; R];
            let mut a = self.a;
            let mut src: [*const f32; V] = core::array::from_fn(|j| self.src[j]);
            for _ in 0..self.channels {
                for kh in 0..K {
                    let rows: [*const f32; V] = core::array::from_fn(|j| src[j].add(kh * self.wp));
                    for kw in 0..K {
                        let b: [L::V; V] = core::array::from_fn(|j| L::load(rows[j].add(kw), self.wp, self.lanes[j]));
                        for i in 0..R {
                            let ai = L::splat(a.add(i));
                            for j in 0..V {
                                acc[i][j] = L::fma(ai, b[j], acc[i][j]);
                            }
                        }
                        a = a.add(TILE_ROWS);
                    }
                }
                for s in src.iter_mut() {
                    *s = s.add(self.plane);
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    L::store(self.dst[j].add(i * self.out_row), *v, self.lanes[j]);
                }
            }
        }
    }
}

/// Forward of `n` images of a stride-1 "same" 3×3 convolution: `y = conv(x, w)`
/// (overwrites); the weights are packed once for all of them.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn forward(s: &Conv2d, n: usize, x: &[f32], w: &[f32], y: &mut [f32], scratch: &mut [f32]) {
    let wide = cpu_isa() == Isa::Avx512;
    assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len());
    // SAFETY: forwarded contract; `wide` when the CPU has AVX-512F.
    unsafe {
        run_images(s, n, (s.c_in, x), (s.c_out, y), |out| pack_forward(s, w, out), w, scratch, x86_image(wide, s))
    }
}

/// Input gradient of `n` images of a stride-1 "same" 3×3 convolution (overwrites `dx`):
/// the direct convolution of the padded `dy` with `w'[ci][co][t] = w[co][ci][k² − 1 − t]`.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn backward_input(s: &Conv2d, n: usize, dy: &[f32], w: &[f32], dx: &mut [f32], scratch: &mut [f32]) {
    let wide = cpu_isa() == Isa::Avx512;
    assert!(dy.len() >= n * s.out_len() && dx.len() >= n * s.in_len());
    let pack = |out: &mut [f32]| pack_input_grad(s, w, out);
    // SAFETY: forwarded contract; `wide` when the CPU has AVX-512F.
    unsafe { run_images(s, n, (s.c_out, dy), (s.c_in, dx), pack, w, scratch, x86_image(wide, s)) }
}

/// One image on x86: with 16-pixel vectors (`wide`, AVX-512F) where a row is whole pairs
/// of 8-pixel vectors, two rows of 8, or wider than 16 (its last vector partial); a map
/// narrower than 16 with an odd number of 8-pixel vectors (7×7) fills more of a ymm than
/// of a zmm.
///
/// # Safety (of the function returned)
/// The CPU supports AVX2 and FMA, and AVX-512F when `wide`; the arguments are
/// [`direct_image`]'s.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn x86_image(wide: bool, s: &Conv2d) -> impl Fn(&PaddedPlanes, usize, &[f32], &[f32], usize, &mut [f32]) {
    let v = PaddedPlanes::of(s.h, s.w, s.pad).vectors_per_row;
    let wide = wide && (v.is_multiple_of(2) || (s.w == LANES && s.h.is_multiple_of(2)) || s.w > 2 * LANES);
    move |g, channels, padded, packed, rows, out| {
        // SAFETY: the caller's contract (see above).
        unsafe {
            if wide {
                direct_image_512::<DIRECT_K>(g, channels, padded, packed, rows, out)
            } else {
                direct_image::<DIRECT_K>(g, channels, padded, packed, rows, out)
            }
        }
    }
}

/// [`forward`] on NEON.
///
/// # Safety
/// None beyond the slices' lengths (asserted); `unsafe` as on x86.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn forward(s: &Conv2d, n: usize, x: &[f32], w: &[f32], y: &mut [f32], scratch: &mut [f32]) {
    assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len());
    // SAFETY: NEON is part of every aarch64 CPU this crate builds for.
    unsafe { run_images(s, n, (s.c_in, x), (s.c_out, y), |out| pack_forward(s, w, out), w, scratch, neon_image) }
}

/// [`backward_input`] on NEON.
///
/// # Safety
/// None beyond the slices' lengths (asserted); `unsafe` as on x86.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn backward_input(s: &Conv2d, n: usize, dy: &[f32], w: &[f32], dx: &mut [f32], scratch: &mut [f32]) {
    assert!(dy.len() >= n * s.out_len() && dx.len() >= n * s.in_len());
    let pack = |out: &mut [f32]| pack_input_grad(s, w, out);
    // SAFETY: NEON is part of every aarch64 CPU this crate builds for.
    unsafe { run_images(s, n, (s.c_out, dy), (s.c_in, dx), pack, w, scratch, neon_image) }
}

/// One image on NEON (see [`direct_image`]).
#[cfg(target_arch = "aarch64")]
fn neon_image(g: &PaddedPlanes, channels: usize, padded: &[f32], packed: &[f32], rows: usize, out: &mut [f32]) {
    // SAFETY: `run_images` hands in whole padded planes and packed weights of `rows ×
    // channels`, and `rows` output planes.
    unsafe { walk::<Neon, DIRECT_K>(g, channels, padded, packed, rows, out) }
}

/// Each 8-pixel vector as two 4-lane registers: the AVX2 tile, fused multiply-adds lane
/// by lane (the same bits).
#[cfg(target_arch = "aarch64")]
struct Neon;

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
}

/// The direct convolution of `n` images of `(channels, src)` planes into `(rows, dst)`
/// planes (all `h × w`), with the weights packed once by `pack`, each image by `image`
/// (arguments as [`direct_image`]'s).
///
/// # Safety
/// `image` may be called with whole padded planes of `channels`, the packing of `rows ×
/// channels` weights and `rows` output planes.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn run_images(
    s: &Conv2d,
    n: usize,
    (channels, src): (usize, &[f32]),
    (rows, dst): (usize, &mut [f32]),
    pack: impl FnOnce(&mut [f32]),
    w: &[f32],
    scratch: &mut [f32],
    image: impl Fn(&PaddedPlanes, usize, &[f32], &[f32], usize, &mut [f32]),
) {
    let g = PaddedPlanes::of(s.h, s.w, s.pad);
    let hw = s.h * s.w;
    assert!(s.k == DIRECT_K && s.same() && w.len() >= s.weight_len());
    let (padded, packed) = scratch.split_at_mut(channels * g.plane_len());
    assert!(packed.len() >= packed_len(rows, channels, DIRECT_K * DIRECT_K), "conv scratch too small");
    pack(packed);
    for (si, di) in src.chunks_exact(channels * hw).zip(dst.chunks_exact_mut(rows * hw)).take(n) {
        g.fill(channels, si, padded);
        image(&g, channels, padded, packed, rows, di);
    }
}
