//! Direct stride-1 "same" convolution on AVX2 (and AVX-512F where the CPU has it): the
//! forward and the input gradient of every 3×3 of a ResNet but the downsampling ones,
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
//! With AVX-512F ([`super::Isa::Avx512`]) a map whose rows hold whole pairs of 8-pixel
//! vectors (16 and 32 wide) runs 16-pixel vectors, a tile of up to 6 planes × 4 vectors
//! in the 32 zmm registers; narrower maps (8 wide) keep the AVX2 tile.
//!
//! Bits: every output is one FMA chain from zero over (input channel, kh, kw) in order,
//! on either instruction set, so AVX-512 and AVX2 give the same bits.
//! For the forward that is the GEMM's chain over the column-matrix rows, so its bits are
//! unchanged; the input gradient is the convolution of the padded `dy` with the weights
//! transposed and flipped, one chain over (co, kh', kw') with `kh' = k − 1 − kh`.

use core::arch::x86_64::*;

use super::conv_layout::{packed_len, PaddedPlanes, DIRECT_K, LANES, TILE_ROWS};
use super::conv_shape::Conv2d;
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

/// The direct convolution of one image: `out[o][p] = Σ_{c, kh, kw} A(o, c, kh·k + kw) ·
/// padded[c][p + tap shift]` for all `rows` output planes (`h × w` each, overwritten),
/// `A` packed by [`pack_forward`] or [`pack_input_grad`].
///
/// # Safety
/// The CPU supports AVX2 and FMA; `padded` holds `channels` planes of `g`, `out` holds
/// `rows · h · w` floats and `packed` the packing of `rows × channels` weights.
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_image<const K: usize>(
    g: &PaddedPlanes,
    channels: usize,
    padded: &[f32],
    packed: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    debug_assert!(padded.len() >= channels * g.plane_len() && out.len() >= rows * g.h * g.w);
    debug_assert!(packed.len() >= packed_len(rows, channels, K * K));
    let vectors = g.h * g.vectors_per_row;
    let hw = g.h * g.w;
    for o0 in (0..rows).step_by(TILE_ROWS) {
        let r = TILE_ROWS.min(rows - o0);
        let a = packed[o0 * channels * K * K..].as_ptr();
        for v0 in (0..vectors).step_by(2) {
            let nv = 2.min(vectors - v0);
            let mut src = [padded.as_ptr(); 2];
            let mut dst = [out[o0 * hw..].as_mut_ptr(); 2];
            let mut lanes = [0usize; 2];
            for j in 0..nv {
                let (oy, ox) = ((v0 + j) / g.vectors_per_row, (v0 + j) % g.vectors_per_row * LANES);
                src[j] = src[j].wrapping_add(oy * g.wp + ox);
                dst[j] = dst[j].wrapping_add(oy * g.w + ox);
                lanes[j] = LANES.min(g.w - ox);
            }
            let t = Tile { channels, plane: g.plane_len(), wp: g.wp, a, src, dst, lanes, out_row: hw };
            // SAFETY: the tile's loads stay inside `padded` (PaddedPlanes: every tap of a
            // whole vector lies in its padded plane), its weight reads inside block o0 of
            // `packed`, and its stores inside rows o0..o0+r of `out`.
            unsafe {
                match (r, nv) {
                    (6, 2) => t.run::<K, 6, 2>(),
                    (5, 2) => t.run::<K, 5, 2>(),
                    (4, 2) => t.run::<K, 4, 2>(),
                    (3, 2) => t.run::<K, 3, 2>(),
                    (2, 2) => t.run::<K, 2, 2>(),
                    (1, 2) => t.run::<K, 1, 2>(),
                    (6, _) => t.run::<K, 6, 1>(),
                    (5, _) => t.run::<K, 5, 1>(),
                    (4, _) => t.run::<K, 4, 1>(),
                    (3, _) => t.run::<K, 3, 1>(),
                    (2, _) => t.run::<K, 2, 1>(),
                    _ => t.run::<K, 1, 1>(),
                }
            }
        }
    }
}

/// One register tile: up to [`TILE_ROWS`] output planes × two 8-pixel vectors.
struct Tile {
    channels: usize,
    /// Floats of one padded plane, and its row stride.
    plane: usize,
    wp: usize,
    /// The tile's packed weight block.
    a: *const f32,
    /// Padded-plane address of each vector's tap (0, 0) in channel 0.
    src: [*const f32; 2],
    /// Output address of each vector in the tile's first plane.
    dst: [*mut f32; 2],
    /// Valid pixels of each vector (8 but at the end of a row narrower than a vector).
    lanes: [usize; 2],
    /// Floats between two output planes.
    out_row: usize,
}

impl Tile {
    /// # Safety
    /// As [`direct_image`]'s, for this tile's `R` rows and `V` vectors.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const K: usize, const R: usize, const V: usize>(&self) {
        // SAFETY: the caller's contract covers every address formed below.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            let mut a = self.a;
            let mut src = self.src;
            for _ in 0..self.channels {
                for kh in 0..K {
                    let rows: [*const f32; V] = core::array::from_fn(|j| src[j].add(kh * self.wp));
                    for kw in 0..K {
                        let b: [__m256; V] = core::array::from_fn(|j| _mm256_loadu_ps(rows[j].add(kw)));
                        for i in 0..R {
                            let ai = _mm256_broadcast_ss(&*a.add(i));
                            for j in 0..V {
                                acc[i][j] = _mm256_fmadd_ps(ai, b[j], acc[i][j]);
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
                    let d = self.dst[j].add(i * self.out_row);
                    if self.lanes[j] == LANES {
                        _mm256_storeu_ps(d, *v);
                    } else {
                        let mut tmp = [0.0f32; LANES];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), *v);
                        core::ptr::copy_nonoverlapping(tmp.as_ptr(), d, self.lanes[j]);
                    }
                }
            }
        }
    }
}

/// [`direct_image`] with 16-pixel vectors (two 8-pixel vectors of one row each) and a
/// tile of up to [`TILE_ROWS`] planes × 4 vectors: 24 accumulators, 4 loaded vectors and a
/// broadcast in the 32 zmm registers. Each output is the same FMA chain as there.
///
/// # Safety
/// As [`direct_image`]'s, and the CPU supports AVX-512F; `g.vectors_per_row` is even.
#[target_feature(enable = "avx512f")]
unsafe fn direct_image_512<const K: usize>(
    g: &PaddedPlanes,
    channels: usize,
    padded: &[f32],
    packed: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    debug_assert!(padded.len() >= channels * g.plane_len() && out.len() >= rows * g.h * g.w);
    debug_assert!(packed.len() >= packed_len(rows, channels, K * K) && g.vectors_per_row.is_multiple_of(2));
    let pairs_per_row = g.vectors_per_row / 2;
    let pairs = g.h * pairs_per_row;
    let hw = g.h * g.w;
    for o0 in (0..rows).step_by(TILE_ROWS) {
        let r = TILE_ROWS.min(rows - o0);
        let a = packed[o0 * channels * K * K..].as_ptr();
        for v0 in (0..pairs).step_by(WIDE_V) {
            let nv = WIDE_V.min(pairs - v0);
            let mut src = [padded.as_ptr(); WIDE_V];
            let mut dst = [out[o0 * hw..].as_mut_ptr(); WIDE_V];
            let mut lanes = [0usize; WIDE_V];
            for j in 0..nv {
                let (oy, ox) = ((v0 + j) / pairs_per_row, (v0 + j) % pairs_per_row * 2 * LANES);
                src[j] = src[j].wrapping_add(oy * g.wp + ox);
                dst[j] = dst[j].wrapping_add(oy * g.w + ox);
                lanes[j] = (2 * LANES).min(g.w - ox);
            }
            let t = Tile512 { channels, plane: g.plane_len(), wp: g.wp, a, src, dst, lanes, out_row: hw };
            // SAFETY: as in direct_image: a 16-pixel vector is two whole 8-pixel vectors
            // of one row, whose taps lie in the padded plane; stores are masked to `lanes`.
            unsafe {
                match (r, nv) {
                    (6, 4) => t.run::<K, 6, 4>(),
                    (6, 3) => t.run::<K, 6, 3>(),
                    (6, 2) => t.run::<K, 6, 2>(),
                    (6, _) => t.run::<K, 6, 1>(),
                    (5, 4) => t.run::<K, 5, 4>(),
                    (5, 3) => t.run::<K, 5, 3>(),
                    (5, 2) => t.run::<K, 5, 2>(),
                    (5, _) => t.run::<K, 5, 1>(),
                    (4, 4) => t.run::<K, 4, 4>(),
                    (4, 3) => t.run::<K, 4, 3>(),
                    (4, 2) => t.run::<K, 4, 2>(),
                    (4, _) => t.run::<K, 4, 1>(),
                    (3, 4) => t.run::<K, 3, 4>(),
                    (3, 3) => t.run::<K, 3, 3>(),
                    (3, 2) => t.run::<K, 3, 2>(),
                    (3, _) => t.run::<K, 3, 1>(),
                    (2, 4) => t.run::<K, 2, 4>(),
                    (2, 3) => t.run::<K, 2, 3>(),
                    (2, 2) => t.run::<K, 2, 2>(),
                    (2, _) => t.run::<K, 2, 1>(),
                    (_, 4) => t.run::<K, 1, 4>(),
                    (_, 3) => t.run::<K, 1, 3>(),
                    (_, 2) => t.run::<K, 1, 2>(),
                    _ => t.run::<K, 1, 1>(),
                }
            }
        }
    }
}

/// 16-pixel vectors per AVX-512 tile.
const WIDE_V: usize = 4;

/// One AVX-512 register tile: up to [`TILE_ROWS`] output planes × [`WIDE_V`] 16-pixel
/// vectors (fields as [`Tile`]'s).
struct Tile512 {
    channels: usize,
    plane: usize,
    wp: usize,
    a: *const f32,
    src: [*const f32; WIDE_V],
    dst: [*mut f32; WIDE_V],
    lanes: [usize; WIDE_V],
    out_row: usize,
}

impl Tile512 {
    /// # Safety
    /// As [`direct_image_512`]'s, for this tile's `R` rows and `V` vectors.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const K: usize, const R: usize, const V: usize>(&self) {
        // SAFETY: the caller's contract covers every address formed below.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            let mut a = self.a;
            let mut src = self.src;
            for _ in 0..self.channels {
                for kh in 0..K {
                    let rows: [*const f32; V] = core::array::from_fn(|j| src[j].add(kh * self.wp));
                    for kw in 0..K {
                        let b: [__m512; V] = core::array::from_fn(|j| _mm512_loadu_ps(rows[j].add(kw)));
                        for i in 0..R {
                            let ai = _mm512_set1_ps(*a.add(i));
                            for j in 0..V {
                                acc[i][j] = _mm512_fmadd_ps(ai, b[j], acc[i][j]);
                            }
                        }
                        a = a.add(TILE_ROWS);
                    }
                }
                for s in src.iter_mut().take(V) {
                    *s = s.add(self.plane);
                }
            }
            for (i, row) in acc.iter().enumerate() {
                for (j, v) in row.iter().enumerate() {
                    let d = self.dst[j].add(i * self.out_row);
                    let mask: __mmask16 = if self.lanes[j] >= 2 * LANES { 0xffff } else { (1u16 << self.lanes[j]) - 1 };
                    _mm512_mask_storeu_ps(d, mask, *v);
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
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn forward(s: &Conv2d, n: usize, x: &[f32], w: &[f32], y: &mut [f32], scratch: &mut [f32]) {
    // SAFETY: forwarded contract; `wide` when the CPU has AVX-512F.
    unsafe { forward_on(cpu_isa() == Isa::Avx512, s, n, x, w, y, scratch) }
}

/// [`forward`], with 16-pixel vectors when `wide`.
///
/// # Safety
/// The CPU supports AVX2 and FMA, and AVX-512F when `wide`.
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_on(wide: bool, s: &Conv2d, n: usize, x: &[f32], w: &[f32], y: &mut [f32], scratch: &mut [f32]) {
    assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len());
    // SAFETY: forwarded contract.
    unsafe { run_images(wide, s, n, (s.c_in, x), (s.c_out, y), |out| pack_forward(s, w, out), w, scratch) }
}

/// Input gradient of `n` images of a stride-1 "same" 3×3 convolution (overwrites `dx`):
/// the direct convolution of the padded `dy` with `w'[ci][co][t] = w[co][ci][k² − 1 − t]`.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn backward_input(s: &Conv2d, n: usize, dy: &[f32], w: &[f32], dx: &mut [f32], scratch: &mut [f32]) {
    // SAFETY: forwarded contract; `wide` when the CPU has AVX-512F.
    unsafe { backward_input_on(cpu_isa() == Isa::Avx512, s, n, dy, w, dx, scratch) }
}

/// [`backward_input`], with 16-pixel vectors when `wide`.
///
/// # Safety
/// The CPU supports AVX2 and FMA, and AVX-512F when `wide`.
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_input_on(
    wide: bool,
    s: &Conv2d,
    n: usize,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(dy.len() >= n * s.out_len() && dx.len() >= n * s.in_len());
    // SAFETY: forwarded contract.
    unsafe { run_images(wide, s, n, (s.c_out, dy), (s.c_in, dx), |out| pack_input_grad(s, w, out), w, scratch) }
}

/// The direct convolution of `n` images of `(channels, src)` planes into `(rows, dst)`
/// planes (all `h × w`), with the weights packed once by `pack`; with 16-pixel vectors
/// where rows allow when `wide`.
///
/// # Safety
/// The CPU supports AVX2 and FMA, and AVX-512F when `wide`.
#[target_feature(enable = "avx2,fma")]
unsafe fn run_images(
    wide: bool,
    s: &Conv2d,
    n: usize,
    (channels, src): (usize, &[f32]),
    (rows, dst): (usize, &mut [f32]),
    pack: impl FnOnce(&mut [f32]),
    w: &[f32],
    scratch: &mut [f32],
) {
    let g = PaddedPlanes::of(s.h, s.w, s.pad);
    let hw = s.h * s.w;
    assert!(s.k == DIRECT_K && s.same() && w.len() >= s.weight_len());
    let (padded, packed) = scratch.split_at_mut(channels * g.plane_len());
    assert!(packed.len() >= packed_len(rows, channels, DIRECT_K * DIRECT_K), "conv scratch too small");
    pack(packed);
    // 16-pixel vectors need rows of whole pairs of 8-pixel vectors.
    let wide = wide && g.vectors_per_row.is_multiple_of(2);
    for (si, di) in src.chunks_exact(channels * hw).zip(dst.chunks_exact_mut(rows * hw)).take(n) {
        g.fill(channels, si, padded);
        // SAFETY: `padded` holds `channels` planes, `di` `rows` planes, `packed` the
        // weights of `rows × channels`; `wide` only where the caller found AVX-512F.
        unsafe {
            if wide {
                direct_image_512::<DIRECT_K>(&g, channels, padded, packed, rows, di)
            } else {
                direct_image::<DIRECT_K>(&g, channels, padded, packed, rows, di)
            }
        }
    }
}
