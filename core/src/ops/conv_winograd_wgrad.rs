//! Winograd F(2×2, 3×3) weight gradient of a [`Conv2d::winograd`] convolution, on
//! AVX-512F: `dw = Gᵀ [Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)] G` for each (output, input) channel
//! pair, the transpose of the forward's `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`
//! (`conv_winograd`). The 16 sums `M[ξ][c][o] = Σ_t V[ξ][t][c] · Ŷ[ξ][t][o]` are 16
//! matrix products over the tiles: 16 multiply-adds per tile and channel pair where the
//! direct kernel (`conv_wgrad`) takes 36.
//!
//! Layout ([`WgradTiles`]): a group of images is copied channels last (16 × 16
//! transposes in registers; the input with a zero border), so both transforms, `V = Bᵀ d B`
//! of each 4×4 input patch and `Ŷ = Â dY Âᵀ` of each 2×2 output-gradient tile, run on
//! vectors of 16 channels and store `[ξ][tile][channel]`. A register tile of input
//! channels × vectors of output channels then walks a block's tiles, each step one
//! broadcast of `V` per input channel (contiguous) and one load of `Ŷ` per vector: no
//! fold across lanes, and `M` stays in registers over the block (loaded from and stored
//! to the scratch once a block). (Tiles along the vectors, as the forward has them, left
//! the broadcasts 16 rows apart: a base register each, which the loop spilled.)
//! `Â = [1 0; 1 1; 1 −1; 0 1]` stands for `A` (whose last row is `(0, −1)`): the sums of
//! ξ in the last row or column come out negated, exactly (negation commutes with
//! rounding), and `Gᵀ`'s last step subtracts where it would add.
//!
//! Bits, for every `dw[o][c][tap]` (`core/tests/grad_ops.rs` writes them out): `V` of
//! each tile as the forward's (down the patch's columns, then across, `(d0 − d2, d1 + d2,
//! d2 − d1, d1 − d3)`); `Ŷ` down its two columns `(a, a + c, a − c, c)`, then across each
//! row `(p, p + q, p − q, q)`; `M[ξ][c][o]` one FMA chain from `+0` over the call's tiles
//! in order (image, tile row, tile column); then `Gᵀ M G` (down each column of `M`, then
//! across each row, `(m0 + s, (m1 − m2)·½, s − m3)` with `s = (m1 + m2)·½`), added to
//! `dw`. No sum depends on the blocks or the thread count.
//!
//! The AVX2 and NEON paths keep the direct kernel (the channels-last copy here is written
//! with AVX-512's 16-lane shuffles).

use core::arch::x86_64::*;

use super::conv_lanes::{Lanes, Zmm};
use super::conv_layout::WgradTiles;
use super::conv_shape::Conv2d;

/// The vectors of the kernels here: 16 lanes, whole loads.
type Z = Zmm<false>;
/// Floats per vector.
const W: usize = 16;

/// Adds the weight gradient of `n` images of a [`Conv2d::winograd`] convolution to `dw`
/// (`x` its input, `dy` its output gradient), in the order the module doc gives.
///
/// # Safety
/// The CPU supports AVX-512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn accumulate(s: &Conv2d, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], scratch: &mut [f32]) {
    let t = &WgradTiles::of(s.c_in, s.c_out, s.h, s.w);
    let (src, dst, hw) = (s.in_len(), s.out_len(), s.h * s.w);
    assert!(x.len() >= n * src && dy.len() >= n * dst && dw.len() >= s.weight_len());
    assert!(scratch.len() >= t.scratch_len(), "conv scratch too small");
    let (xs, rest) = scratch.split_at_mut(t.inputs_len());
    let (ys, rest) = rest.split_at_mut(t.grads_len());
    let (v, rest) = rest.split_at_mut(16 * t.block_stride(t.cin_pad));
    let (g, rest) = rest.split_at_mut(16 * t.block_stride(t.cout_pad));
    let m = &mut rest[..t.sums_len()];
    m.fill(0.0);
    // The border stays zero: the copies write only the image pixels.
    xs.fill(0.0);
    for g0 in (0..n).step_by(t.images) {
        let images = t.images.min(n - g0);
        for i in 0..images {
            let k = g0 + i;
            let (xi, yi) = (&mut xs[i * (s.h + 2) * (s.w + 2) * t.cin_pad..], &mut ys[i * hw * t.cout_pad..]);
            // SAFETY: AVX-512F (this function's set).
            unsafe {
                channels_last(&x[k * src..][..src], (t.cin, t.cin_pad), (s.h, s.w, 1), xi);
                channels_last(&dy[k * dst..][..dst], (t.cout, t.cout_pad), (s.h, s.w, 0), yi);
            }
        }
        let total = images * t.th;
        for r0 in (0..total).step_by(t.rows) {
            let rows = t.rows.min(total - r0);
            // SAFETY: this function's set; the blocks are `WgradTiles`' sizes (split above).
            unsafe {
                transform_inputs(t, xs, (r0, rows), v);
                transform_grads(t, ys, (r0, rows), g);
                sums(t, v, g, rows * t.tpr, m);
            }
        }
    }
    // SAFETY: this function's set.
    unsafe { transform_back(t, m, dw) };
}

/// One image's `channels` planes of `h × w` in `src` into `dst` channels last (`cpad`
/// floats a pixel, zero past `channels`), inside a border of `pad` pixels (which it does
/// not write): 16 channels × 16 pixels at a time (an image's pixels are whole 16s: even
/// height, width a multiple of 8).
///
/// # Safety
/// The caller is compiled for AVX-512F.
#[inline(always)]
unsafe fn channels_last(
    src: &[f32],
    (channels, cpad): (usize, usize),
    (h, w, pad): (usize, usize, usize),
    dst: &mut [f32],
) {
    let (hw, wp) = (h * w, w + 2 * pad);
    assert!(src.len() >= channels * hw && dst.len() >= (h + 2 * pad) * wp * cpad && hw.is_multiple_of(W));
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: rows c < channels of 16 pixels from p lie in `src`; pixel (r, col) of the
    // map, channels c0..c0 + 16 ≤ cpad, in `dst` (`at` walks them: `cpad` floats a pixel,
    // the border's `2·pad` more at a row's end).
    unsafe {
        let skip = 2 * pad * cpad;
        for c0 in (0..cpad).step_by(W) {
            let (mut at, mut col) = (d.add((pad * wp + pad) * cpad + c0), 0);
            let rows = s.add(c0 * hw);
            for p in (0..hw).step_by(W) {
                let rows: [__m512; W] = core::array::from_fn(|k| {
                    if c0 + k < channels {
                        _mm512_loadu_ps(rows.add(k * hw + p))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for v in transpose(rows) {
                    _mm512_storeu_ps(at, v);
                    at = at.add(cpad);
                    col += 1;
                    if col == w {
                        (at, col) = (at.add(skip), 0);
                    }
                }
            }
        }
    }
}

/// The 16 × 16 transpose of `r` (row `i` lane `j` to row `j` lane `i`): pairs of rows
/// interleaved by floats, then by pairs of floats, then 128-bit lanes exchanged twice.
///
/// # Safety
/// The caller is compiled for AVX-512F.
#[inline(always)]
unsafe fn transpose(r: [__m512; 16]) -> [__m512; 16] {
    // SAFETY: register operations of the caller's set.
    unsafe {
        // t[2k], t[2k + 1]: rows 2k and 2k + 1 interleaved, floats 0–1 and 2–3 of each lane.
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

/// `V[ξ][tile][c] = (Bᵀ d B)[ξ]` of the block's tiles (tile rows `r0..r0 + rows` of the
/// group) into `v` (ξ [`WgradTiles::block_stride`] apart), from the group's
/// channels-last, bordered input: down each of the patch's columns, then across.
///
/// # Safety
/// The caller is compiled for AVX-512F.
#[inline(always)]
unsafe fn transform_inputs(t: &WgradTiles, xs: &[f32], (r0, rows): (usize, usize), v: &mut [f32]) {
    let (cp, vx, wp) = (t.cin_pad, t.block_stride(t.cin_pad), t.w + 2);
    assert!(xs.len() >= t.inputs_len() && v.len() >= 16 * vx && r0 + rows <= t.images * t.th);
    let (src, dst) = (xs.as_ptr(), v.as_mut_ptr());
    // The patch's pixel (a, b) from its corner in floats (hoisted: index arithmetic is
    // overflow-checked in this crate).
    let patch: [usize; 16] = core::array::from_fn(|k| (k / 4 * wp + k % 4) * cp);
    // SAFETY: the 4×4 patch of bordered pixels (2ty + a, 2tx + b) of a group image lies
    // in `xs`; tile `rr·tpr + tx` < rows·tpr of every ξ in `v`.
    unsafe {
        let mut d = dst;
        for rr in 0..rows {
            let (image, ty) = ((r0 + rr) / t.th, (r0 + rr) % t.th);
            let mut s = src.add(((image * (t.h + 2) + 2 * ty) * wp) * cp);
            for _ in 0..t.tpr {
                for c in (0..cp).step_by(W) {
                    let col = |j: usize| bt(core::array::from_fn(|a| Z::load(s.add(patch[4 * a + j] + c), 0, W)));
                    let cols = [col(0), col(1), col(2), col(3)];
                    // ξ in order, a pointer stepped by `vx` (offsets would not stay in registers).
                    let mut at = d.add(c);
                    for i in 0..4 {
                        for r in bt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]) {
                            Z::store(at, r, W);
                            at = at.add(vx);
                        }
                    }
                }
                (s, d) = (s.add(2 * cp), d.add(cp));
            }
        }
    }
}

/// `Bᵀ (a, b, c, d)`: `(a − c, b + c, c − b, b − d)`.
///
/// # Safety
/// The caller is compiled for AVX-512F.
#[inline(always)]
unsafe fn bt([a, b, c, d]: [__m512; 4]) -> [__m512; 4] {
    // SAFETY: the caller's contract.
    unsafe { [Z::sub(a, c), Z::add(b, c), Z::sub(c, b), Z::sub(b, d)] }
}

/// `Ŷ[ξ][tile][o] = (Â dy Âᵀ)[ξ]` of the block's tiles into `g` (ξ
/// [`WgradTiles::block_stride`] apart), from the group's channels-last output gradient.
///
/// # Safety
/// The caller is compiled for AVX-512F.
#[inline(always)]
unsafe fn transform_grads(t: &WgradTiles, ys: &[f32], (r0, rows): (usize, usize), g: &mut [f32]) {
    let (op, gx) = (t.cout_pad, t.block_stride(t.cout_pad));
    assert!(ys.len() >= t.grads_len() && g.len() >= 16 * gx && r0 + rows <= t.images * t.th);
    let (src, dst) = (ys.as_ptr(), g.as_mut_ptr());
    // The tile's pixels from its corner in floats (hoisted, as above).
    let px = [0, op, t.w * op, (t.w + 1) * op];
    // SAFETY: pixels (2ty + a, 2tx + b) of a group image lie in `ys`; tile `rr·tpr + tx`
    // < rows·tpr of every ξ in `g`.
    unsafe {
        let mut d = dst;
        for rr in 0..rows {
            let (image, ty) = ((r0 + rr) / t.th, (r0 + rr) % t.th);
            let mut s = src.add((image * t.h + 2 * ty) * t.w * op);
            for _ in 0..t.tpr {
                for o in (0..op).step_by(W) {
                    let [a, b, c, e] = px.map(|k| Z::load(s.add(k + o), 0, W));
                    let col0 = [a, Z::add(a, c), Z::sub(a, c), c];
                    let col1 = [b, Z::add(b, e), Z::sub(b, e), e];
                    let mut at = d.add(o);
                    for i in 0..4 {
                        let (p, q) = (col0[i], col1[i]);
                        for r in [p, Z::add(p, q), Z::sub(p, q), q] {
                            Z::store(at, r, W);
                            at = at.add(gx);
                        }
                    }
                }
                (s, d) = (s.add(2 * op), d.add(op));
            }
        }
    }
}

/// Adds the block's `tiles` products to `M[ξ][c][o]`: per ξ, register tiles of input
/// channels × vectors of output channels (16 × 1 for 16 output channels, else 8 × up to
/// 3: at most 24 accumulators of the 32 zmm), each element's FMA chain continued.
///
/// # Safety
/// The caller is compiled for AVX-512F; `v` and `g` hold the block's transforms.
#[inline(always)]
unsafe fn sums(t: &WgradTiles, v: &[f32], g: &[f32], tiles: usize, m: &mut [f32]) {
    let (cp, op) = (t.cin_pad, t.cout_pad);
    let (vx, gx) = (t.block_stride(cp), t.block_stride(op));
    assert!(v.len() >= 16 * vx && g.len() >= 16 * gx && m.len() >= t.sums_len() && tiles <= t.rows * t.tpr);
    let (vp, gp, mp) = (v.as_ptr(), g.as_ptr(), m.as_mut_ptr());
    let vectors = op / W;
    // Rows past `cin` (up to a whole 8 or 16, within `cin_pad`) multiply the zero padding.
    let r = if vectors == 1 { 16 } else { 8 };
    // SAFETY: every tile reads tiles < `tiles` of channels < cin_pad of `V` and vectors
    // < op / 16 of `Ŷ`, and updates those of M.
    unsafe {
        for xi in 0..16 {
            for ov in (0..vectors).step_by(3) {
                for c0 in (0..t.cin).step_by(r) {
                    let vv = (vp.add(xi * vx + c0), cp);
                    let gg = (gp.add(xi * gx + ov * W), op);
                    let mm = (mp.add((xi * cp + c0) * op + ov * W), op);
                    match (r, vectors - ov) {
                        (16, _) => tile::<16, 1>(vv, gg, tiles, mm),
                        (_, 1) => tile::<8, 1>(vv, gg, tiles, mm),
                        (_, 2) => tile::<8, 2>(vv, gg, tiles, mm),
                        _ => tile::<8, 3>(vv, gg, tiles, mm),
                    }
                }
            }
        }
    }
}

/// One register tile: `M[c0 + r][o-vector j] += Σ_{k < count} V[k][c0 + r] · Ŷ[k][j]` for
/// `R` channels (a tile `cp` floats in `V`) and `NV` vectors (`op` in `Ŷ`, a channel's
/// row `op` in `M`), each element one FMA chain continued from its value in `M`.
///
/// # Safety
/// The caller is compiled for AVX-512F; the tiles, channels and vectors lie in the slices.
#[inline(always)]
unsafe fn tile<const R: usize, const NV: usize>(
    (v, cp): (*const f32, usize),
    (g, op): (*const f32, usize),
    count: usize,
    (m, ms): (*mut f32, usize),
) {
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc: [[__m512; NV]; R] =
            core::array::from_fn(|r| core::array::from_fn(|j| Z::load(m.add(r * ms + j * W), 0, W)));
        let (mut v, mut g) = (v, g);
        for _ in 0..count {
            let y: [__m512; NV] = core::array::from_fn(|j| Z::load(g.add(j * W), 0, W));
            for (r, a) in acc.iter_mut().enumerate() {
                let b = Z::splat(v.add(r));
                for (a, &y) in a.iter_mut().zip(&y) {
                    *a = Z::fma(b, y, *a);
                }
            }
            (v, g) = (v.add(cp), g.add(op));
        }
        for (r, a) in acc.iter().enumerate() {
            for (j, &s) in a.iter().enumerate() {
                Z::store(m.add(r * ms + j * W), s, W);
            }
        }
    }
}

/// `dw[o][c] += Gᵀ M G` for every channel pair, `M` read at `[ξ][c][o]` (the last row
/// and column of ξ negated, see the module doc): down each column, then across each row.
/// Blocks of 16 input channels on vectors of 16 output channels, 16 × 9 results that 9
/// transposes turn into each output channel's 144 contiguous floats of `dw`; the channels
/// past the last whole 16 one at a time ([`transform_back_one`], the same operations).
///
/// # Safety
/// The caller is compiled for AVX-512F.
#[inline(always)]
unsafe fn transform_back(t: &WgradTiles, m: &[f32], dw: &mut [f32]) {
    let (cp, op, whole) = (t.cin_pad, t.cout_pad, t.cin / W * W);
    assert!(m.len() >= t.sums_len() && dw.len() >= t.cout * t.cin * 9);
    let (mp, dp) = (m.as_ptr(), dw.as_mut_ptr());
    // SAFETY: M's rows c < cin_pad, vectors o0 < cout_pad; dw's runs of output channels
    // o < cout, input channels c0..c0 + 16 ≤ cin.
    unsafe {
        let half = _mm512_set1_ps(0.5);
        let gt = |a: [__m512; 4]| {
            let s = _mm512_mul_ps(_mm512_add_ps(a[1], a[2]), half);
            [_mm512_add_ps(a[0], s), _mm512_mul_ps(_mm512_sub_ps(a[1], a[2]), half), _mm512_sub_ps(s, a[3])]
        };
        for o0 in (0..op).step_by(W) {
            for c0 in (0..whole).step_by(W) {
                let mut res = [_mm512_setzero_ps(); 9 * W];
                for c in 0..W {
                    let at = |xi: usize| _mm512_loadu_ps(mp.add((xi * cp + c0 + c) * op + o0));
                    let cols: [[__m512; 3]; 4] =
                        core::array::from_fn(|j| gt([at(j), at(4 + j), at(8 + j), at(12 + j)]));
                    for a in 0..3 {
                        let r = gt([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
                        res[9 * c + 3 * a..][..3].copy_from_slice(&r);
                    }
                }
                for k in 0..9 {
                    let rows: [__m512; W] = core::array::from_fn(|i| res[W * k + i]);
                    for (j, v) in transpose(rows).into_iter().enumerate().take(t.cout.saturating_sub(o0)) {
                        let d = dp.add(((o0 + j) * t.cin + c0) * 9 + W * k);
                        _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), v));
                    }
                }
            }
        }
    }
    transform_back_one(t, m, whole, dw);
}

/// [`transform_back`] of the input channels from `c_first` on, one pair at a time.
fn transform_back_one(t: &WgradTiles, m: &[f32], c_first: usize, dw: &mut [f32]) {
    // Gᵀ (m0, m1, m2, m3) with m3 negated.
    let gt = |a: [f32; 4]| {
        let s = (a[1] + a[2]) * 0.5;
        [a[0] + s, (a[1] - a[2]) * 0.5, s - a[3]]
    };
    let (cp, op) = (t.cin_pad, t.cout_pad);
    for o in 0..t.cout {
        for c in c_first..t.cin {
            let at = |xi: usize| m[(xi * cp + c) * op + o];
            let cols: [[f32; 3]; 4] = core::array::from_fn(|j| gt([at(j), at(4 + j), at(8 + j), at(12 + j)]));
            let d = &mut dw[(o * t.cin + c) * 9..][..9];
            for a in 0..3 {
                let r = gt([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
                for b in 0..3 {
                    d[3 * a + b] += r[b];
                }
            }
        }
    }
}
