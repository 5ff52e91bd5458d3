//! Direct 3×3 convolution on AVX2 (and AVX-512F where the CPU has it) or NEON: the
//! forward and the input gradient of every stride-1 "same" 3×3 of a ResNet, and the
//! forward of the downsampling (stride-2) ones, without a column matrix.
//!
//! The image is copied once into zero-padded planes ([`PaddedPlanes`]; for stride 2 the
//! padded plane's even and odd columns apart, [`PhasePlanes`], so each tap's outputs
//! again read contiguous floats and the same tile walks them); a register tile
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
//! In eval the tile can finish its outputs before it leaves them: the BN after the conv,
//! a residual add and the ReLU ([`super::conv_tail`]).
//!
//! Bits: every output is one FMA chain from zero over (input channel, kh, kw) in order,
//! on every instruction set, so AVX-512, AVX2 and NEON give the same bits.
//! For the forward that is the GEMM's chain over the column-matrix rows, so its bits are
//! unchanged; the input gradient is the convolution of the padded `dy` with the weights
//! transposed and flipped, one chain over (co, kh', kw') with `kh' = k − 1 − kh`.

use super::conv_lanes::Lanes;
#[cfg(target_arch = "aarch64")]
use super::conv_lanes::Neon;
#[cfg(target_arch = "x86_64")]
use super::conv_lanes::{Ymm, Zmm, ZmmRows};
use super::conv_layout::{packed_len, PaddedPlanes, PhasePlanes, Planes, Taps, DIRECT_K, LANES, TILE_ROWS};
use super::conv_shape::Conv2d;
use super::conv_tail::{Finish, Images, Sums};
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

/// The direct convolution of one image: `out[o][p] = Σ_{c, kh, kw} A(o, c, kh·k + kw) ·
/// padded[c][p + tap shift]` for all `rows` output planes (`h × w` each, overwritten),
/// `A` packed by [`pack_forward`] or [`pack_input_grad`], each sum finished by `fin`.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `padded` holds `channels` planes of `g`, `out` holds
/// `rows · h · w` floats and `packed` the packing of `rows × channels` weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_image<const K: usize, F: Finish, const S: usize>(
    g: &Taps,
    channels: usize,
    padded: &[f32],
    packed: &[f32],
    rows: usize,
    out: &mut [f32],
    fin: F,
) {
    // SAFETY: forwarded contract.
    unsafe { walk::<Ymm, K, F, S>(g, channels, padded, packed, rows, out, fin) }
}

/// [`direct_image`] with 16-pixel vectors (two 8-pixel vectors of one row each) and a
/// tile of up to [`TILE_ROWS`] planes × 4 vectors: 24 accumulators, 4 loaded vectors and a
/// broadcast in the 32 zmm registers. Each output is the same FMA chain as there.
///
/// # Safety
/// As [`direct_image`]'s, and the CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn direct_image_512<const K: usize, F: Finish, const S: usize>(
    g: &Taps,
    channels: usize,
    padded: &[f32],
    packed: &[f32],
    rows: usize,
    out: &mut [f32],
    fin: F,
) {
    // SAFETY: forwarded contract.
    unsafe {
        if g.w == LANES && g.h.is_multiple_of(2) {
            walk::<ZmmRows, K, F, S>(g, channels, padded, packed, rows, out, fin)
        } else if g.vectors_per_row.is_multiple_of(2) {
            walk::<Zmm<false>, K, F, S>(g, channels, padded, packed, rows, out, fin)
        } else {
            walk::<Zmm<true>, K, F, S>(g, channels, padded, packed, rows, out, fin)
        }
    }
}

/// The tiles of one image with `L`'s vectors (see [`direct_image`]).
///
/// # Safety
/// As [`direct_image`]'s; the caller is compiled for `L`'s set; a row holds whole
/// `L::WIDTH`-pixel vectors of its 8-pixel ones.
#[inline(always)]
unsafe fn walk<L: Lanes, const K: usize, F: Finish, const S: usize>(
    g: &Taps,
    channels: usize,
    padded: &[f32],
    packed: &[f32],
    rows: usize,
    out: &mut [f32],
    fin: F,
) {
    debug_assert!(padded.len() >= channels * g.plane && out.len() >= rows * g.h * g.w);
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
                plane: g.plane,
                wp: g.wp,
                rstep: g.rstep,
                odd: g.odd,
                a,
                src: [padded.as_ptr(); MAX_V],
                dst: [out[o0 * hw..].as_mut_ptr(); MAX_V],
                at: [o0 * hw; MAX_V],
                lanes: [0; MAX_V],
                out_row: hw,
                o0,
            };
            for j in 0..nv {
                let (oy, ox) = ((v0 + j) / per_row * L::ROWS, (v0 + j) % per_row * L::WIDTH);
                t.src[j] = t.src[j].wrapping_add(oy * g.rstep + ox);
                t.dst[j] = t.dst[j].wrapping_add(oy * g.w + ox);
                t.at[j] += oy * g.w + ox;
                t.lanes[j] = if L::ROWS == 2 { L::WIDTH } else { L::WIDTH.min(g.w - ox) };
            }
            // SAFETY: the tile's loads stay inside `padded` (PaddedPlanes: every tap of a
            // whole 8-pixel vector lies in its padded plane, and a wide vector is whole
            // 8-pixel ones of one row), its weight reads inside block o0 of `packed`, and
            // its stores (`lanes` of each vector) inside rows o0..o0+r of `out`.
            unsafe {
                match (r, nv) {
                    (6, 4) => t.run::<L, K, 6, 4, F, S>(fin),
                    (6, 3) => t.run::<L, K, 6, 3, F, S>(fin),
                    (6, 2) => t.run::<L, K, 6, 2, F, S>(fin),
                    (6, _) => t.run::<L, K, 6, 1, F, S>(fin),
                    (5, 4) => t.run::<L, K, 5, 4, F, S>(fin),
                    (5, 3) => t.run::<L, K, 5, 3, F, S>(fin),
                    (5, 2) => t.run::<L, K, 5, 2, F, S>(fin),
                    (5, _) => t.run::<L, K, 5, 1, F, S>(fin),
                    (4, 4) => t.run::<L, K, 4, 4, F, S>(fin),
                    (4, 3) => t.run::<L, K, 4, 3, F, S>(fin),
                    (4, 2) => t.run::<L, K, 4, 2, F, S>(fin),
                    (4, _) => t.run::<L, K, 4, 1, F, S>(fin),
                    (3, 4) => t.run::<L, K, 3, 4, F, S>(fin),
                    (3, 3) => t.run::<L, K, 3, 3, F, S>(fin),
                    (3, 2) => t.run::<L, K, 3, 2, F, S>(fin),
                    (3, _) => t.run::<L, K, 3, 1, F, S>(fin),
                    (2, 4) => t.run::<L, K, 2, 4, F, S>(fin),
                    (2, 3) => t.run::<L, K, 2, 3, F, S>(fin),
                    (2, 2) => t.run::<L, K, 2, 2, F, S>(fin),
                    (2, _) => t.run::<L, K, 2, 1, F, S>(fin),
                    (_, 4) => t.run::<L, K, 1, 4, F, S>(fin),
                    (_, 3) => t.run::<L, K, 1, 3, F, S>(fin),
                    (_, 2) => t.run::<L, K, 1, 2, F, S>(fin),
                    _ => t.run::<L, K, 1, 1, F, S>(fin),
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
    /// Floats of one source channel, from one tap row to the next, and between two
    /// output rows' tap origins ([`Taps`]).
    plane: usize,
    wp: usize,
    rstep: usize,
    /// Stride 2: from the even-column plane to the odd one.
    odd: usize,
    /// The tile's packed weight block.
    a: *const f32,
    /// Padded-plane address of each vector's tap (0, 0) in channel 0.
    src: [*const f32; MAX_V],
    /// Output address of each vector in the tile's first plane, and its offset in the
    /// image's output.
    dst: [*mut f32; MAX_V],
    at: [usize; MAX_V],
    /// Valid pixels of each vector (all but at the end of a row narrower than a vector).
    lanes: [usize; MAX_V],
    /// Floats between two output planes.
    out_row: usize,
    /// The tile's first output plane.
    o0: usize,
}

impl Tile {
    /// # Safety
    /// As [`walk`]'s, for this tile's `R` rows and `V` vectors.
    #[inline(always)]
    unsafe fn run<L: Lanes, const K: usize, const R: usize, const V: usize, F: Finish, const S: usize>(&self, fin: F) {
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
                        // Stride 2: taps 0 and 2 in the even-column plane, 1 in the odd one.
                        let at = if S == 1 { kw } else { [0, self.odd, 1][kw] };
                        let b: [L::V; V] =
                            core::array::from_fn(|j| L::load(rows[j].add(at), self.rstep, self.lanes[j]));
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
            // The finish reads the tile back from L1 rather than taking the accumulators:
            // its branches kept the compiler from holding them in registers (it stored
            // every one after each FMA, half the speed).
            if F::FINISHES {
                for i in 0..R {
                    let dst: [*mut f32; V] = core::array::from_fn(|j| self.dst[j].add(i * self.out_row));
                    let at: [usize; V] = core::array::from_fn(|j| self.at[j] + i * self.out_row);
                    fin.plane::<L>(self.o0 + i, &dst, &at, &self.lanes[..V]);
                }
            }
        }
    }
}

/// Forward of `n` images of a stride-1 "same" 3×3 convolution: `y = conv(x, w)`, each
/// output finished by `fin` (overwrites; `y` may be `x` itself, see [`Images`]); the
/// weights are packed once for all of them.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn forward<F: Finish>(s: &Conv2d, n: usize, io: Images, w: &[f32], scratch: &mut [f32], fin: F) {
    let wide = cpu_isa() == Isa::Avx512;
    let pack = |out: &mut [f32]| pack_forward(s, w, out);
    let sizes = ((s.c_in, s.in_len()), (s.c_out, s.out_len()));
    // SAFETY: forwarded contract; `wide` when the CPU has AVX-512F.
    unsafe {
        if s.stride == 1 {
            let g = PaddedPlanes::of(s.h, s.w, s.pad);
            run_images(s, &g, n, sizes, io, pack, scratch, x86_image::<F, 1>(wide, &g.taps()), fin)
        } else {
            let g = PhasePlanes::of(s.h, s.w);
            run_images(s, &g, n, sizes, io, pack, scratch, x86_image::<F, 2>(wide, &g.taps()), fin)
        }
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
    let pack = |out: &mut [f32]| pack_input_grad(s, w, out);
    let (g, io) = (PaddedPlanes::of(s.h, s.w, s.pad), Images::Apart(dy, dx));
    let sizes = ((s.c_out, s.out_len()), (s.c_in, s.in_len()));
    // SAFETY: forwarded contract; `wide` when the CPU has AVX-512F.
    unsafe { run_images(s, &g, n, sizes, io, pack, scratch, x86_image::<Sums, 1>(wide, &g.taps()), Sums) }
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
fn x86_image<F: Finish, const S: usize>(wide: bool, t: &Taps) -> impl ImageConv<F> {
    let v = t.vectors_per_row;
    let wide = wide && (v.is_multiple_of(2) || (t.w == LANES && t.h.is_multiple_of(2)) || t.w > 2 * LANES);
    move |g, channels, padded, packed, rows, out, fin| {
        // SAFETY: the caller's contract (see above).
        unsafe {
            if wide {
                direct_image_512::<DIRECT_K, F, S>(g, channels, padded, packed, rows, out, fin)
            } else {
                direct_image::<DIRECT_K, F, S>(g, channels, padded, packed, rows, out, fin)
            }
        }
    }
}

/// [`forward`] on NEON.
///
/// # Safety
/// None beyond the slices' lengths (asserted); `unsafe` as on x86.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn forward<F: Finish>(s: &Conv2d, n: usize, io: Images, w: &[f32], scratch: &mut [f32], fin: F) {
    let pack = |out: &mut [f32]| pack_forward(s, w, out);
    let sizes = ((s.c_in, s.in_len()), (s.c_out, s.out_len()));
    // SAFETY: NEON is part of every aarch64 CPU this crate builds for.
    unsafe {
        if s.stride == 1 {
            let g = PaddedPlanes::of(s.h, s.w, s.pad);
            run_images(s, &g, n, sizes, io, pack, scratch, neon_image::<F, 1>, fin)
        } else {
            run_images(s, &PhasePlanes::of(s.h, s.w), n, sizes, io, pack, scratch, neon_image::<F, 2>, fin)
        }
    }
}

/// [`backward_input`] on NEON.
///
/// # Safety
/// None beyond the slices' lengths (asserted); `unsafe` as on x86.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn backward_input(s: &Conv2d, n: usize, dy: &[f32], w: &[f32], dx: &mut [f32], scratch: &mut [f32]) {
    let pack = |out: &mut [f32]| pack_input_grad(s, w, out);
    let (g, io) = (PaddedPlanes::of(s.h, s.w, s.pad), Images::Apart(dy, dx));
    let sizes = ((s.c_out, s.out_len()), (s.c_in, s.in_len()));
    // SAFETY: NEON is part of every aarch64 CPU this crate builds for.
    unsafe { run_images(s, &g, n, sizes, io, pack, scratch, neon_image::<Sums, 1>, Sums) }
}

/// One image on NEON (see [`direct_image`]).
#[cfg(target_arch = "aarch64")]
fn neon_image<F: Finish, const S: usize>(
    g: &Taps,
    channels: usize,
    padded: &[f32],
    packed: &[f32],
    rows: usize,
    out: &mut [f32],
    fin: F,
) {
    // SAFETY: `run_images` hands in whole padded planes and packed weights of `rows ×
    // channels`, and `rows` output planes.
    unsafe { walk::<Neon, DIRECT_K, F, S>(g, channels, padded, packed, rows, out, fin) }
}

/// One image's direct convolution, with [`direct_image`]'s arguments.
trait ImageConv<F>: Fn(&Taps, usize, &[f32], &[f32], usize, &mut [f32], F) {}
impl<F, T: Fn(&Taps, usize, &[f32], &[f32], usize, &mut [f32], F)> ImageConv<F> for T {}

/// The direct convolution of `n` images of `channels` planes (`src_len` floats an
/// image) into `rows` planes (`dst_len`; `io` the images in and out), with the weights
/// packed once by `pack` into `scratch`, each image copied into `g`'s planes, then
/// convolved by `image` (arguments as [`direct_image`]'s) with its part of `fin`.
///
/// # Safety
/// `image` may be called with whole planes of `g` for `channels`, the packing of `rows ×
/// channels` weights and `rows` output planes of `g.taps()`'s map.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn run_images<F: Finish>(
    s: &Conv2d,
    g: &impl Planes,
    n: usize,
    ((channels, src_len), (rows, dst_len)): ((usize, usize), (usize, usize)),
    io: Images,
    pack: impl FnOnce(&mut [f32]),
    scratch: &mut [f32],
    image: impl ImageConv<F>,
    fin: F,
) {
    let taps = g.taps();
    assert!(s.k == DIRECT_K && s.pad == 1 && (s.same() || s.stride == 2) && s.groups == 1);
    assert!(io.fits(n, src_len, dst_len) && dst_len == rows * taps.h * taps.w);
    let (padded, packed) = scratch.split_at_mut(channels * g.plane_len());
    assert!(packed.len() >= packed_len(rows, channels, DIRECT_K * DIRECT_K), "conv scratch too small");
    pack(packed);
    let mut io = io;
    for i in 0..n {
        // Image i's input is copied whole before its output is written (what lets the
        // output replace the input in place).
        let si = io.input(i, src_len);
        // The kernels never write the padding: zeroed with the first image, it stays zero.
        if i == 0 {
            g.fill(channels, si, padded);
        } else {
            g.copy_rows(channels, si, padded);
        }
        image(&taps, channels, padded, packed, rows, io.output(i, dst_len), fin.image(i, dst_len));
    }
}
