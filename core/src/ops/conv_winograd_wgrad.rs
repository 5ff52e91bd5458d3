//! Winograd F(2×2, 3×3) weight gradient of a [`Conv2d::winograd`] convolution:
//! `dw = Gᵀ [Σ_tiles (A dY Aᵀ) ⊙ (Bᵀ d B)] G` for each (output, input) channel pair, the
//! transpose of the forward's `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` (`conv_winograd`). The 16 sums `M[ξ][c][o] = Σ_t V[ξ][t][c] · Ŷ[ξ][t][o]` are 16
//! matrix products over the tiles: 16 multiply-adds per tile and channel pair where the
//! direct kernel (`conv_wgrad`) takes 36.
//!
//! Layout ([`WgradTiles`]): a group of images is copied channels last (square
//! transposes in registers; the input with a zero border), so both transforms, `V = Bᵀ d B`
//! of each 4×4 input patch and `Ŷ = Â dY Âᵀ` of each 2×2 output-gradient tile, run on
//! vectors of channels and store `[ξ][tile][channel]`. A register tile of input
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
//! On AVX-512 the vectors are 16 lanes, on AVX2 8, on NEON 8 as pairs of 4-lane
//! registers; the operations per sum are the same on every set, so are the bits.

#[cfg(target_arch = "aarch64")]
use super::conv_lanes::Neon;
use super::conv_lanes::{Lanes, Transpose};
#[cfg(target_arch = "x86_64")]
use super::conv_lanes::{Ymm, Zmm};
use super::conv_layout::WgradTiles;
use super::conv_shape::Conv2d;
use super::conv_winograd::tile;
#[cfg(target_arch = "x86_64")]
use super::isa::{cpu_isa, Isa};

/// Adds the weight gradient of `n` images of a [`Conv2d::winograd`] convolution to `dw`
/// (`x` its input, `dy` its output gradient), in the order the module doc gives: on
/// AVX-512F's 16-lane vectors where the CPU has it, else AVX2's 8.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn accumulate(s: &Conv2d, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], scratch: &mut [f32]) {
    // SAFETY: forwarded contract; `wide` only where the CPU has AVX-512F.
    unsafe {
        if cpu_isa() == Isa::Avx512 {
            wide(s, n, (x, dy), dw, scratch)
        } else {
            run::<Ymm>(s, n, (x, dy), dw, scratch)
        }
    }
}

/// [`run`] on AVX-512F.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn wide(s: &Conv2d, n: usize, io: (&[f32], &[f32]), dw: &mut [f32], scratch: &mut [f32]) {
    // SAFETY: forwarded contract.
    unsafe { run::<Zmm<false>>(s, n, io, dw, scratch) }
}

/// [`accumulate`] on NEON.
///
/// # Safety
/// None beyond the slices' lengths (asserted); `unsafe` as on x86.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn accumulate(s: &Conv2d, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], scratch: &mut [f32]) {
    // SAFETY: NEON is part of every aarch64 CPU this crate builds for.
    unsafe { run::<Neon>(s, n, (x, dy), dw, scratch) }
}

/// The weight gradient on `L`'s vectors: each group of images copied channels last, then
/// block by block both transforms and the sums, then the sums transformed back.
///
/// # Safety
/// The caller is compiled for `L`'s set.
#[inline(always)]
unsafe fn run<L: Transpose>(s: &Conv2d, n: usize, (x, dy): (&[f32], &[f32]), dw: &mut [f32], scratch: &mut [f32]) {
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
            // SAFETY: the caller's set.
            unsafe {
                channels_last::<L>(&x[k * src..][..src], (t.cin, t.cin_pad), (s.h, s.w, 1), xi);
                channels_last::<L>(&dy[k * dst..][..dst], (t.cout, t.cout_pad), (s.h, s.w, 0), yi);
            }
        }
        let total = images * t.th;
        for r0 in (0..total).step_by(t.rows) {
            let rows = t.rows.min(total - r0);
            // SAFETY: the caller's set; the blocks are `WgradTiles`' sizes (split above).
            unsafe {
                transform_inputs::<L>(t, xs, (r0, rows), v);
                transform_grads::<L>(t, ys, (r0, rows), g);
                sums::<L>(t, v, g, rows * t.tpr, m);
            }
        }
    }
    // SAFETY: the caller's set.
    unsafe { transform_back::<L>(t, m, dw) };
}

/// One image's `channels` planes of `h × w` in `src` into `dst` channels last (`cpad`
/// floats a pixel, zero past `channels`), inside a border of `pad` pixels (which it does
/// not write): `L::WIDTH` channels × as many pixels at a time (an image's pixels are whole
/// 16s: even height, width a multiple of 8).
///
/// # Safety
/// The caller is compiled for `L`'s set.
#[inline(always)]
unsafe fn channels_last<L: Transpose>(
    src: &[f32],
    (channels, cpad): (usize, usize),
    (h, w, pad): (usize, usize, usize),
    dst: &mut [f32],
) {
    let (hw, wp, lw) = (h * w, w + 2 * pad, L::WIDTH);
    assert!(src.len() >= channels * hw && dst.len() >= (h + 2 * pad) * wp * cpad && hw.is_multiple_of(lw));
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: rows c < channels of `lw` pixels from p lie in `src`; pixel (r, col) of the
    // map, channels c0..c0 + lw ≤ cpad, in `dst` (`at` walks them: `cpad` floats a pixel,
    // the border's `2·pad` more at a row's end).
    unsafe {
        let skip = 2 * pad * cpad;
        for c0 in (0..cpad).step_by(lw) {
            let (mut at, mut col) = (d.add((pad * wp + pad) * cpad + c0), 0);
            let rows = s.add(c0 * hw);
            for p in (0..hw).step_by(lw) {
                let block: [L::V; 16] = core::array::from_fn(|k| {
                    if k < lw && c0 + k < channels {
                        L::load(rows.add(k * hw + p), 0, lw)
                    } else {
                        L::zero()
                    }
                });
                for &v in L::transpose(block).iter().take(lw) {
                    L::store(at, v, lw);
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

/// `V[ξ][tile][c] = (Bᵀ d B)[ξ]` of the block's tiles (tile rows `r0..r0 + rows` of the
/// group) into `v` (ξ [`WgradTiles::block_stride`] apart), from the group's
/// channels-last, bordered input: down each of the patch's columns, then across.
///
/// # Safety
/// The caller is compiled for `L`'s set.
#[inline(always)]
unsafe fn transform_inputs<L: Lanes>(t: &WgradTiles, xs: &[f32], (r0, rows): (usize, usize), v: &mut [f32]) {
    let (cp, vx, wp, lw) = (t.cin_pad, t.block_stride(t.cin_pad), t.w + 2, L::WIDTH);
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
                for c in (0..cp).step_by(lw) {
                    let col = |j: usize| bt::<L>(core::array::from_fn(|a| L::load(s.add(patch[4 * a + j] + c), 0, lw)));
                    let cols = [col(0), col(1), col(2), col(3)];
                    // ξ in order, a pointer stepped by `vx` (offsets would not stay in registers).
                    let mut at = d.add(c);
                    for i in 0..4 {
                        for r in bt::<L>([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]) {
                            L::store(at, r, lw);
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
/// The caller is compiled for `L`'s set.
#[inline(always)]
unsafe fn bt<L: Lanes>([a, b, c, d]: [L::V; 4]) -> [L::V; 4] {
    // SAFETY: the caller's contract.
    unsafe { [L::sub(a, c), L::add(b, c), L::sub(c, b), L::sub(b, d)] }
}

/// `Ŷ[ξ][tile][o] = (Â dy Âᵀ)[ξ]` of the block's tiles into `g` (ξ
/// [`WgradTiles::block_stride`] apart), from the group's channels-last output gradient.
///
/// # Safety
/// The caller is compiled for `L`'s set.
#[inline(always)]
unsafe fn transform_grads<L: Lanes>(t: &WgradTiles, ys: &[f32], (r0, rows): (usize, usize), g: &mut [f32]) {
    let (op, gx, lw) = (t.cout_pad, t.block_stride(t.cout_pad), L::WIDTH);
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
                for o in (0..op).step_by(lw) {
                    let [a, b, c, e] = px.map(|k| L::load(s.add(k + o), 0, lw));
                    let col0 = [a, L::add(a, c), L::sub(a, c), c];
                    let col1 = [b, L::add(b, e), L::sub(b, e), e];
                    let mut at = d.add(o);
                    for i in 0..4 {
                        let (p, q) = (col0[i], col1[i]);
                        for r in [p, L::add(p, q), L::sub(p, q), q] {
                            L::store(at, r, lw);
                            at = at.add(gx);
                        }
                    }
                }
                (s, d) = (s.add(2 * op), d.add(op));
            }
        }
    }
}

/// Adds the block's `tiles` products to `M[ξ][c][o]`: per ξ, register tiles
/// (`conv_winograd::tile`) of input channels × vectors of output channels, each
/// element's FMA chain continued. AVX-512:
/// 16 × 1 for 16 output channels, else 8 × up to 3 (at most 24 accumulators of the 32
/// zmm); 8 lanes: 4 × up to 3 (12 of the 16 ymm; NEON's pairs, 24 of its 32).
///
/// # Safety
/// The caller is compiled for `L`'s set; `v` and `g` hold the block's transforms.
#[inline(always)]
unsafe fn sums<L: Lanes>(t: &WgradTiles, v: &[f32], g: &[f32], tiles: usize, m: &mut [f32]) {
    let (cp, op, lw) = (t.cin_pad, t.cout_pad, L::WIDTH);
    let (vx, gx) = (t.block_stride(cp), t.block_stride(op));
    assert!(v.len() >= 16 * vx && g.len() >= 16 * gx && m.len() >= t.sums_len() && tiles <= t.rows * t.tpr);
    let (vp, gp, mp) = (v.as_ptr(), g.as_ptr(), m.as_mut_ptr());
    let vectors = op / lw;
    // Rows past `cin` (up to a whole 4, 8 or 16, within `cin_pad`) multiply the zero padding.
    let r = match (lw, vectors) {
        (16, 1) => 16,
        (16, _) => 8,
        _ => 4,
    };
    // SAFETY: every tile reads tiles < `tiles` of channels < cin_pad of `V` and vectors
    // < op / lw of `Ŷ`, and updates those of M.
    unsafe {
        for xi in 0..16 {
            let mut ov = 0;
            while ov < vectors {
                // Threes, but never a last one alone (too few accumulators to hide the
                // FMA latency): 4 vectors go 2 + 2, 8 go 3 + 3 + 2.
                let nv = if vectors - ov == 4 { 2 } else { 3.min(vectors - ov) };
                for c0 in (0..t.cin).step_by(r) {
                    let vv = (vp.add(xi * vx + c0), cp);
                    let gg = (gp.add(xi * gx + ov * lw), op);
                    let mm = (mp.add((xi * cp + c0) * op + ov * lw), op);
                    match (r, nv) {
                        (16, _) => tile::<L, 16, 1, true>(vv, gg, tiles, mm, 16),
                        (8, 1) => tile::<L, 8, 1, true>(vv, gg, tiles, mm, 8),
                        (8, 2) => tile::<L, 8, 2, true>(vv, gg, tiles, mm, 8),
                        (8, _) => tile::<L, 8, 3, true>(vv, gg, tiles, mm, 8),
                        (_, 1) => tile::<L, 4, 1, true>(vv, gg, tiles, mm, 4),
                        (_, 2) => tile::<L, 4, 2, true>(vv, gg, tiles, mm, 4),
                        _ => tile::<L, 4, 3, true>(vv, gg, tiles, mm, 4),
                    }
                }
                ov += nv;
            }
        }
    }
}

/// `dw[o][c] += Gᵀ M G` for every channel pair, `M` read at `[ξ][c][o]` (the last row
/// and column of ξ negated, see the module doc): down each column, then across each row.
/// Blocks of `L::WIDTH` input channels on vectors of as many output channels, their
/// `WIDTH × 9` results transposed `WIDTH` rows at a time into each output channel's
/// contiguous run of `dw`; the channels past the last whole block one pair at a time
/// ([`transform_back_one`], the same operations).
///
/// # Safety
/// The caller is compiled for `L`'s set.
#[inline(always)]
unsafe fn transform_back<L: Transpose>(t: &WgradTiles, m: &[f32], dw: &mut [f32]) {
    let lw = L::WIDTH;
    let (cp, op, whole) = (t.cin_pad, t.cout_pad, t.cin / lw * lw);
    assert!(m.len() >= t.sums_len() && dw.len() >= t.cout * t.cin * 9);
    let (mp, dp) = (m.as_ptr(), dw.as_mut_ptr());
    // SAFETY: M's rows c < cin_pad, vectors o0 < cout_pad; dw's runs of output channels
    // o < cout, input channels c0..c0 + lw ≤ cin.
    unsafe {
        let half = L::splat(&0.5);
        let gt = |a: [L::V; 4]| {
            let s = L::mul(L::add(a[1], a[2]), half);
            [L::add(a[0], s), L::mul(L::sub(a[1], a[2]), half), L::sub(s, a[3])]
        };
        for o0 in (0..op).step_by(lw) {
            for c0 in (0..whole).step_by(lw) {
                let mut res = [L::zero(); 9 * 16];
                for c in 0..lw {
                    let at = |xi: usize| L::load(mp.add((xi * cp + c0 + c) * op + o0), 0, lw);
                    let cols: [[L::V; 3]; 4] = core::array::from_fn(|j| gt([at(j), at(4 + j), at(8 + j), at(12 + j)]));
                    for a in 0..3 {
                        let r = gt([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
                        res[9 * c + 3 * a..][..3].copy_from_slice(&r);
                    }
                }
                for k in 0..9 {
                    let rows: [L::V; 16] = core::array::from_fn(|i| if i < lw { res[lw * k + i] } else { L::zero() });
                    let out = L::transpose(rows);
                    for (j, &v) in out.iter().enumerate().take(lw.min(t.cout.saturating_sub(o0))) {
                        let d = dp.add(((o0 + j) * t.cin + c0) * 9 + lw * k);
                        L::store(d, L::add(L::load(d, 0, lw), v), lw);
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
