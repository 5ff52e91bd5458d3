//! 2-D convolution (zero padding, square kernel, channel groups, PyTorch weight layout)
//! via per-image im2col + [`sgemm`]; col2im scatters the input gradient back. A grouped
//! convolution runs each group as an ungrouped one ([`each_group`]).
//!
//! One image's column matrix is `[c_in·k·k][h_out·w_out]`, so the forward is
//! `Y[c_out × hw_out] = W[c_out × c_in·k·k] · col`. Scratch is per image, so its size does
//! not grow with the batch; a 1×1 stride-1 unpadded conv reads the input directly, and the
//! forward of a stride-1 "same" conv never materialises its column matrix: the GEMM packs
//! it straight from the image ([`ShiftedTaps`]); nor does a downsampling 1×1 onto a small
//! map, whose images run side by side in one product ([`Subsampled`]). On AVX2, AVX-512 and NEON, a stride-1
//! "same" 3×3 conv (all of a ResNet's but the downsampling ones) skips the GEMM
//! altogether: its forward, input gradient and weight gradient run the direct kernels of
//! `conv_direct` and `conv_wgrad` (the forward and input gradient as Winograd F(2×2, 3×3),
//! `conv_winograd`, where [`Conv2d::winograd`] allows: even height, width a multiple of 8,
//! 8 or more channels; the weight gradient too, `conv_winograd_wgrad`); so does a stride-2 3×3's forward (its gradients take the column
//! matrix), and eval's conv → BN (→ add, ReLU) in one pass ([`conv2d_forward_bn`]).

use core::mem::MaybeUninit;

use super::conv_layout::copy_short;
use super::conv_shape::{Conv2d, COL_BLOCK};
use super::conv_tail::{BnTail, Images};
use super::gemm::{sgemm_packed_b, sgemm_packed_b_items, PackB, PANEL_NR};
use super::{fold_lanes, sgemm, sgemm_strided_batch, sum_lanes};
#[cfg(target_arch = "x86_64")]
use super::{
    gemm::{GemmKernel, NC},
    sgemm_kernel,
};

/// One image's column matrix, [`Conv2d::block_rows`] output rows at a time in `scratch`:
/// `f(first output pixel, pixels, columns)` for each block, in order.
fn im2col_blocks(s: &Conv2d, x: &[f32], scratch: &mut [f32], mut f: impl FnMut(usize, usize, &[f32])) {
    let (ho, wo, rows, kk) = (s.h_out(), s.w_out(), s.block_rows(), s.c_in * s.k * s.k);
    for oy0 in (0..ho).step_by(rows) {
        let oy1 = (oy0 + rows).min(ho);
        let nb = (oy1 - oy0) * wo;
        let col = &mut scratch[..kk * nb];
        im2col(s, x, (oy0, oy1), col);
        f(oy0 * wo, nb, col);
    }
}

/// Unfolds output rows `oy0..oy1` of one image into their column matrix
/// (`[c_in·k·k][(oy1 − oy0)·w_out]`).
fn im2col(s: &Conv2d, x: &[f32], (oy0, oy1): (usize, usize), col: &mut [f32]) {
    let (wo, k) = (s.w_out(), s.k);
    let nb = (oy1 - oy0) * wo;
    // A stride-1 "same" convolution (every 3×3 of a ResNet but the downsampling ones):
    // output and input planes have one shape, so each column-matrix row is the input
    // plane shifted by (kh − pad)·w + (kw − pad) — one long copy — after which the
    // elements that wrapped around a row edge are zeroed.
    let same = s.same();
    for ci in 0..s.c_in {
        let plane = &x[ci * s.h * s.w..][..s.h * s.w];
        for kh in 0..k {
            for kw in 0..k {
                let row = &mut col[((ci * k + kh) * k + kw) * nb..][..nb];
                let (lo, hi) = s.valid_cols(kw);
                if same {
                    im2col_shifted(s, plane, kh, kw, (lo, hi), (oy0 * wo, oy1 * wo), row);
                    continue;
                }
                // Zero-padding columns (see zero_columns), then the rows' valid parts.
                zero_columns(row, wo, lo, hi);
                for (oy, out) in (oy0..oy1).zip(row.chunks_exact_mut(wo)) {
                    let iy = oy * s.stride + kh;
                    if iy < s.pad || iy - s.pad >= s.h {
                        out.fill(0.0);
                        continue;
                    }
                    let xrow = &plane[(iy - s.pad) * s.w..][..s.w];
                    if lo < hi {
                        // ix = ox·stride + kw − pad, in range for ox in lo..hi.
                        let ix0 = lo * s.stride + kw - s.pad;
                        if s.stride == 1 {
                            copy_short(&mut out[lo..hi], &xrow[ix0..ix0 + (hi - lo)]);
                        } else {
                            strided_copy(&mut out[lo..hi], &xrow[ix0..], s.stride);
                        }
                    }
                }
            }
        }
    }
}

/// `out[j] = src[j·stride]`. Stride 2 (every downsampling conv of a ResNet) as its own
/// loop over an exactly sized slice, which the compiler vectorizes with shuffles; the
/// general `step_by` loop ran element by element (im2col was a sixth of a grouped
/// stride-2 conv's time).
#[inline]
fn strided_copy(out: &mut [f32], src: &[f32], stride: usize) {
    if out.is_empty() {
        return;
    }
    if stride == 2 {
        let src = &src[..2 * out.len() - 1];
        for (j, o) in out.iter_mut().enumerate() {
            *o = src[2 * j];
        }
    } else {
        for (o, &v) in out.iter_mut().zip(src.iter().step_by(stride)) {
            *o = v;
        }
    }
}

/// `dst[j·stride] += g[j]`, the inverse of [`strided_copy`] (col2im's scatter), stride 2
/// likewise as its own loop.
#[inline]
fn strided_add(dst: &mut [f32], g: &[f32], stride: usize) {
    if g.is_empty() {
        return;
    }
    if stride == 2 {
        let dst = &mut dst[..2 * g.len() - 1];
        for (j, &v) in g.iter().enumerate() {
            dst[2 * j] += v;
        }
    } else {
        for (d, &v) in dst.iter_mut().step_by(stride).zip(g) {
            *d += v;
        }
    }
}

/// One column-matrix row of a stride-1 "same" convolution, for the output pixels
/// `b0..b1` (whole output rows): `row[p − b0] = plane[p + shift]` where that input pixel
/// lies inside the plane, else 0; `(lo, hi)` are the output columns whose input column is
/// inside the row ([`Conv2d::valid_cols`]).
fn im2col_shifted(
    s: &Conv2d,
    plane: &[f32],
    kh: usize,
    kw: usize,
    (lo, hi): (usize, usize),
    (b0, b1): (usize, usize),
    row: &mut [f32],
) {
    let (w, hw) = (s.w, s.h * s.w);
    // Flat input index p + shift, shift = (kh − pad)·w + (kw − pad), split into its
    // non-negative parts so no signed arithmetic is needed.
    let up = kh * w + kw;
    let down = s.pad * w + s.pad;
    // Valid p: down ≤ p + up < hw + down.
    let p_lo = down.saturating_sub(up).min(hw);
    let p_hi = (hw + down).saturating_sub(up).clamp(p_lo, hw);
    // The valid p inside the block, relative to it. Empty when the tap lies in the padding
    // for every output (a map smaller than the padding, like the 1×1 maps of an ImageNet
    // network's last stage at small images); then `a + up` may be below `down`.
    let (a, b) = (p_lo.clamp(b0, b1), p_hi.clamp(b0, b1));
    row[..a - b0].fill(0.0);
    if a < b {
        row[a - b0..b - b0].copy_from_slice(&plane[a + up - down..b + up - down]);
    }
    row[b - b0..].fill(0.0);
    // Columns outside lo..hi read the neighbouring input row: zero them.
    zero_columns(row, w, lo, hi);
}

/// Zeroes columns `..lo` and `hi..` of every `w`-wide row of `rows`. Column by column,
/// as strided stores: a `fill` per row of the one or two elements a padded edge has would
/// become a `memset` call per row, which cost more than im2col's whole copy.
#[inline]
fn zero_columns(rows: &mut [f32], w: usize, lo: usize, hi: usize) {
    for c in (0..lo).chain(hi..w) {
        rows[c..].iter_mut().step_by(w).for_each(|v| *v = 0.0);
    }
}

/// Folds the column-matrix gradient rows of `channels` consecutive input channels back
/// onto their planes (`dx` starts at the first of them), adding (`dx` zeroed by the
/// caller). Clobbers `col`.
fn col2im_add(s: &Conv2d, channels: usize, col: &mut [f32], dx: &mut [f32]) {
    let (ho, wo, k) = (s.h_out(), s.w_out(), s.k);
    let hw_o = ho * wo;
    let same = s.same();
    for ci in 0..channels {
        let plane = &mut dx[ci * s.h * s.w..][..s.h * s.w];
        for kh in 0..k {
            for kw in 0..k {
                let row = &mut col[((ci * k + kh) * k + kw) * hw_o..][..hw_o];
                let (lo, hi) = s.valid_cols(kw);
                if same {
                    col2im_shifted_add(s, kh, kw, (lo, hi), row, plane);
                    continue;
                }
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
                        strided_add(&mut xrow[ix0..], &g[lo..hi], s.stride);
                    }
                }
            }
        }
    }
}

/// The inverse of [`im2col_shifted`]: `plane[p + shift] += row[p]` over the valid `p`, as
/// one long add instead of one short add per output row. The row's columns outside
/// `lo..hi` (which would land on the neighbouring input row) are zeroed first, so they
/// add `+0.0`: that changes no bit of `dx`, which starts at `+0.0` and so never holds
/// `−0.0` (a sum only gives `−0.0` when both terms are `−0.0`).
fn col2im_shifted_add(s: &Conv2d, kh: usize, kw: usize, (lo, hi): (usize, usize), row: &mut [f32], plane: &mut [f32]) {
    let (w, hw) = (s.w, s.h * s.w);
    zero_columns(row, w, lo, hi);
    // As in im2col_shifted: shift = up − down, valid p: down ≤ p + up < hw + down.
    let up = kh * w + kw;
    let down = s.pad * w + s.pad;
    let p_lo = down.saturating_sub(up).min(hw);
    let p_hi = (hw + down).saturating_sub(up).clamp(p_lo, hw);
    if p_lo < p_hi {
        for (d, &v) in plane[p_lo + up - down..p_hi + up - down].iter_mut().zip(&row[p_lo..p_hi]) {
            *d += v;
        }
    }
}

/// Widest kernel [`ShiftedTaps`] packs (its per-`kw` column masks live on the stack).
const SHIFTED_MAX_K: usize = 8;
/// Most micro-panels one [`PackB::pack`] call asks for (the AVX2 packer's masks).
#[cfg(target_arch = "x86_64")]
const SHIFTED_MAX_PANELS: usize = NC / PANEL_NR;

/// The column matrix of one image under a stride-1 "same" convolution, as the forward
/// GEMM's op(B) (`c_in·k·k × h·w`), packed straight from the image: tap row
/// `(ci, kh, kw)` is plane `ci` shifted by `(kh − pad)·w + (kw − pad)`, with the taps
/// that land in the zero padding read as `+0.0`. The same values im2col would write, so
/// the same bits, without writing and re-reading the matrix (which cost as much as
/// packing it).
struct ShiftedTaps<'a> {
    s: &'a Conv2d,
    x: &'a [f32],
}

impl ShiftedTaps<'_> {
    /// Tap row `(ci, kh, kw)` at pixel `p`: `x[ci·h·w + p + up − down]` (`up = kh·w + kw`,
    /// `down = pad·w + pad`) when that lies inside plane `ci` and the column is inside the
    /// row, else 0 (the padding).
    fn value(&self, (ci, kh, kw): (usize, usize, usize), p: usize) -> f32 {
        let s = self.s;
        let (hw, up, down) = (s.h * s.w, kh * s.w + kw, s.pad * s.w + s.pad);
        let (lo, hi) = s.valid_cols(kw);
        let inside = (lo..hi).contains(&(p % s.w)) && (down..hw + down).contains(&(p + up));
        if inside {
            self.x[ci * hw + p + up - down]
        } else {
            0.0
        }
    }
}

impl PackB for ShiftedTaps<'_> {
    fn pack(&self, jc: usize, ncv: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        #[cfg(target_arch = "x86_64")]
        if sgemm_kernel() >= GemmKernel::Avx2Fma {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { self.pack_avx2(jc, ncv, pc, kc, out) };
        }
        self.pack_scalar(jc, ncv, pc, kc, out)
    }
}

impl ShiftedTaps<'_> {
    /// [`PackB::pack`] element by element, for CPUs without AVX2.
    fn pack_scalar(&self, jc: usize, ncv: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        let k = self.s.k;
        for q in 0..kc {
            let t = pc + q;
            let tap = (t / (k * k), t / k % k, t % k);
            for j in 0..ncv.div_ceil(PANEL_NR) * PANEL_NR {
                let v = if j < ncv { self.value(tap, jc + j) } else { 0.0 };
                out[(j / PANEL_NR) * kc * PANEL_NR + q * PANEL_NR + j % PANEL_NR] = MaybeUninit::new(v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl ShiftedTaps<'_> {
    /// [`PackB::pack`] in vector registers: per tap and 16 pixels, two loads whose lanes
    /// in the zero padding are cleared with an AND, and two stores. Panel by panel, so
    /// the stores run along one panel.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_avx2(&self, jc: usize, ncv: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        use core::arch::x86_64::*;
        const NR: usize = PANEL_NR;
        let s = self.s;
        let (w, hw) = (s.w, s.h * s.w);
        let panels = ncv.div_ceil(NR);
        debug_assert!(panels <= SHIFTED_MAX_PANELS);
        // Per panel: its pixel indices, and for each kw the lanes whose column is inside
        // the row (lo ≤ ox < hi); lanes past `ncv` fail the column test. Pixel indices
        // fit i32 (an image plane is far below 2³¹ floats).
        let mut pix = [[_mm256_setzero_si256(); 2]; SHIFTED_MAX_PANELS];
        let mut colmask = [[[_mm256_setzero_si256(); 2]; SHIFTED_MAX_K]; SHIFTED_MAX_PANELS];
        for r in 0..panels {
            let p0 = jc + r * NR;
            let valid = (ncv - r * NR).min(NR);
            let idx: [i32; NR] = core::array::from_fn(|l| (p0 + l) as i32);
            let ox: [i32; NR] = core::array::from_fn(|l| if l < valid { ((p0 + l) % w) as i32 } else { -1 });
            // SAFETY: unaligned loads of 8 i32 from 16-element stack arrays.
            let (idx, ox) = unsafe {
                (
                    [_mm256_loadu_si256(idx.as_ptr().cast()), _mm256_loadu_si256(idx[8..].as_ptr().cast())],
                    [_mm256_loadu_si256(ox.as_ptr().cast()), _mm256_loadu_si256(ox[8..].as_ptr().cast())],
                )
            };
            pix[r] = idx;
            for kw in 0..s.k {
                let (lo, hi) = s.valid_cols(kw);
                let (lo, hi) = (_mm256_set1_epi32(lo as i32 - 1), _mm256_set1_epi32(hi as i32));
                colmask[r][kw] = ox.map(|c| _mm256_and_si256(_mm256_cmpgt_epi32(c, lo), _mm256_cmpgt_epi32(hi, c)));
            }
        }
        let down = s.pad * w + s.pad;
        let xp = self.x.as_ptr();
        for r in 0..panels {
            let p0 = (jc + r * NR) as isize;
            let dst = &mut out[r * kc * NR..][..kc * NR];
            let (mut ci, mut kh, mut kw) = (pc / (s.k * s.k), pc / s.k % s.k, pc % s.k);
            for q in 0..kc {
                let up = kh * w + kw;
                // x index of pixel 0's tap (negative at the top of the first plane).
                let off = (ci * hw + up) as isize - down as isize;
                // The pixels whose tap lies inside its plane: down − up ≤ p < hw + down − up.
                let (p_lo, p_hi) = (down as isize - up as isize, (hw + down) as isize - up as isize);
                let [mut m0, mut m1] = colmask[r][kw];
                let d = dst[q * NR..][..NR].as_mut_ptr().cast::<f32>();
                if p0 < p_lo || p0 + NR as isize > p_hi {
                    if off + p0 < 0 || off + p0 + NR as isize > self.x.len() as isize {
                        // Past either end of the image (top taps of its first plane, bottom
                        // taps of its last): element by element.
                        for l in 0..NR {
                            let v = if r * NR + l < ncv { self.value((ci, kh, kw), p0 as usize + l) } else { 0.0 };
                            // SAFETY: lane l < NR of the 16-float slice `d` came from.
                            unsafe { *d.add(l) = v };
                        }
                    } else {
                        // Lanes whose tap falls outside the plane read the neighbouring
                        // one: clear them like the padding columns. (Masked loads would not
                        // read them at all, but cost several times a plain load on Zen 3.)
                        let (lo, hi) = (_mm256_set1_epi32(p_lo as i32 - 1), _mm256_set1_epi32(p_hi as i32));
                        let [r0, r1] =
                            pix[r].map(|p| _mm256_and_si256(_mm256_cmpgt_epi32(p, lo), _mm256_cmpgt_epi32(hi, p)));
                        m0 = _mm256_and_si256(m0, r0);
                        m1 = _mm256_and_si256(m1, r1);
                        // SAFETY: as below, with the bounds checked just above.
                        unsafe { store_masked(d, xp.offset(off + p0), m0, m1) };
                    }
                } else {
                    // SAFETY: every lane's tap lies inside plane ci, so the 16 floats at
                    // x[off + p0..] lie inside `x`; `d` is a 16-float slice.
                    unsafe { store_masked(d, xp.offset(off + p0), m0, m1) };
                }
                // Next tap, in (ci, kh, kw) order.
                kw += 1;
                if kw == s.k {
                    kw = 0;
                    kh += 1;
                    if kh == s.k {
                        kh = 0;
                        ci += 1;
                    }
                }
            }
        }
    }
}

/// `d[..16] = src[..16] & (m0, m1)`: a tap row's padding lanes cleared.
///
/// # Safety
/// `src` and `d` point to 16 readable / writable floats; the CPU supports AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_masked(d: *mut f32, src: *const f32, m0: core::arch::x86_64::__m256i, m1: core::arch::x86_64::__m256i) {
    use core::arch::x86_64::*;
    // SAFETY: forwarded contract.
    unsafe {
        _mm256_storeu_ps(d, _mm256_and_ps(_mm256_loadu_ps(src), _mm256_castsi256_ps(m0)));
        _mm256_storeu_ps(d.add(8), _mm256_and_ps(_mm256_loadu_ps(src.add(8)), _mm256_castsi256_ps(m1)));
    }
}

/// Output pixels below which a downsampling 1×1 runs its images side by side
/// ([`Subsampled`]): its packer gathers element by element, which costs more than
/// im2col's copies and the weights' vector packing once an image does at 14² outputs
/// (512 → 1024 channels: 65 → 47 GFLOP/s on a Zen 4), less at 7² (1024 → 2048: 49 → 62).
const SUBSAMPLED_BELOW: usize = 64;

/// The column matrices of `images` images under an unpadded 1×1 convolution of a stride
/// above 1, side by side, as a GEMM's op(B) (`c_in × images·h_out·w_out`): column `j` is
/// output pixel `j % (h_out·w_out)` of image `j / (h_out·w_out)`, which reads input
/// pixel `(oy·stride, ox·stride)`. The values im2col writes, so the same bits.
struct Subsampled<'a> {
    s: &'a Conv2d,
    x: &'a [f32],
    images: usize,
}

impl PackB for Subsampled<'_> {
    fn pack(&self, jc: usize, ncv: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        let s = self.s;
        let (wo, hw_o, hw) = (s.w_out(), s.h_out() * s.w_out(), s.h * s.w);
        debug_assert!(jc + ncv <= self.images * hw_o);
        for (r, panel) in out[..ncv.div_ceil(PANEL_NR) * kc * PANEL_NR].chunks_exact_mut(kc * PANEL_NR).enumerate() {
            // Each lane's input pixel in channel 0 (None past the last column).
            let at: [Option<usize>; PANEL_NR] = core::array::from_fn(|l| {
                let j = jc + r * PANEL_NR + l;
                let (t, p) = (j / hw_o, j % hw_o);
                (j < jc + ncv).then(|| t * s.in_len() + (p / wo) * s.stride * s.w + (p % wo) * s.stride)
            });
            for (q, d) in panel.chunks_exact_mut(PANEL_NR).enumerate() {
                let plane = (pc + q) * hw;
                for (o, a) in d.iter_mut().zip(at) {
                    *o = MaybeUninit::new(a.map_or(0.0, |a| self.x[a + plane]));
                }
            }
        }
    }
}

/// Runs a grouped convolution as its groups' ungrouped ones: `f(group shape, image,
/// group)` for every image, and within it every group, in order. Each group's planes and
/// weights are contiguous, so every path of the ungrouped code serves it unchanged (the
/// direct kernels walk output pixels in their vectors, so a group's few channels still
/// fill them); one image at a time, so each group's `dw` sums its images in order.
fn each_group(s: &Conv2d, n: usize, mut f: impl FnMut(&Conv2d, usize, usize)) {
    // A shape from a plan always divides (`Arch::with_groups`); one built by hand may not.
    assert!(s.groups_divide(), "conv groups must divide both channel counts: {s:?}");
    let g = s.group();
    for i in 0..n {
        for j in 0..s.groups {
            f(&g, i, j);
        }
    }
}

/// Eval's forward of `n` images of a bias-free convolution with the BN after it (and the
/// residual and ReLU of `tail`) finished in the kernel's registers: `y = tail(conv(x,
/// w))`, the bits of [`conv2d_forward`], [`super::batchnorm_forward`], [`super::add_assign`]
/// and [`super::relu_inplace`] one after the other, without the conv's own output; `io`
/// may hold `y` in the place of `x` ([`Images::InPlace`]). Only where the conv runs the
/// direct kernels; returns `false` (and writes nothing) for any other, which the caller
/// runs op by op.
pub fn conv2d_forward_bn(s: &Conv2d, n: usize, io: Images, w: &[f32], tail: &BnTail, scratch: &mut [f32]) -> bool {
    if !s.runs_direct_forward() {
        return false;
    }
    let c = s.c_out;
    assert!(tail.mean.len() >= c && tail.invstd.len() >= c && tail.gamma.len() >= c && tail.beta.len() >= c);
    assert!(tail.residual.is_none_or(|r| r.len() >= n * s.out_len()), "residual shorter than the output");
    // SAFETY: runs_direct_forward checked the CPU runs the direct kernels (AVX2 and FMA,
    // or NEON), which the Winograd ones need too.
    #[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
    unsafe {
        if s.runs_winograd() {
            super::conv_winograd::forward(s, n, io, w, scratch, *tail)
        } else {
            super::conv_direct::forward(s, n, io, w, scratch, *tail)
        }
    }
    #[cfg(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))))]
    let _ = (io, w, scratch);
    true
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
    if s.groups > 1 {
        return each_group(s, n, |g, i, j| {
            let b = bias.map(|b| &b[j * g.c_out..][..g.c_out]);
            let (x, w) = (&x[i * s.in_len() + j * g.in_len()..], &w[j * g.weight_len()..]);
            conv2d_forward(g, 1, x, w, b, &mut y[i * s.out_len() + j * g.out_len()..], scratch);
        });
    }
    if s.runs_direct_forward() {
        // SAFETY: runs_direct_forward checked the CPU runs the direct kernels (AVX2 and
        // FMA, or NEON).
        #[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
        unsafe {
            let io = Images::Apart(x, y);
            if s.runs_winograd() {
                super::conv_winograd::forward(s, n, io, w, scratch, super::conv_tail::Sums)
            } else {
                super::conv_direct::forward(s, n, io, w, scratch, super::conv_tail::Sums)
            }
        }
    }
    if s.direct() {
        // A 1×1: every image's product with the weights packed once (the bits of one
        // product per image).
        let (b, c) = ((x, hw_o, false, s.in_len()), (&mut y[..], hw_o, s.out_len()));
        sgemm_strided_batch(s.c_out, hw_o, kk, w, kk, false, b, c, n, false);
    } else if s.strided_1x1() && hw_o < SUBSAMPLED_BELOW {
        // A downsampling 1×1 onto a small map: the images side by side as one product,
        // its B packed straight from their every `stride`-th pixel, so the weights are
        // packed once, not once an image (which cost a 14² → 7² shortcut, 1024 → 2048
        // channels, a third of its time).
        let b = Subsampled { s, x, images: n };
        sgemm_packed_b_items(s.c_out, kk, w, kk, false, &b, (hw_o, n), (y, hw_o, s.out_len()));
    }
    for i in 0..n {
        let xi = &x[i * s.in_len()..][..s.in_len()];
        let yi = &mut y[i * s.out_len()..][..s.out_len()];
        if s.direct() || (s.strided_1x1() && hw_o < SUBSAMPLED_BELOW) || s.runs_direct_forward() {
            // Computed above for all images at once.
        } else if s.same() && s.k <= SHIFTED_MAX_K {
            let taps = ShiftedTaps { s, x: xi };
            sgemm_packed_b(s.c_out, hw_o, kk, w, kk, false, &taps, yi, hw_o, false);
        } else {
            // Column block by column block: each output element is still one FMA chain
            // over all of k, so the blocking changes no bit.
            im2col_blocks(s, xi, scratch, |p0, nb, col| {
                sgemm(s.c_out, nb, kk, w, kk, false, col, nb, false, &mut yi[p0..], hw_o, false);
            });
        }
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
    let (k2, hw_o) = (s.k * s.k, s.h_out() * s.w_out());
    let kk = s.c_in * k2;
    debug_assert!(dx.len() >= n * s.in_len() && dy.len() >= n * s.out_len());
    debug_assert!(w.len() >= s.weight_len() && scratch.len() >= s.scratch_len());
    if s.groups > 1 {
        return each_group(s, n, |g, i, j| {
            let (dy, w) = (&dy[i * s.out_len() + j * g.out_len()..], &w[j * g.weight_len()..]);
            conv2d_backward_input(g, 1, dy, w, &mut dx[i * s.in_len() + j * g.in_len()..], scratch);
        });
    }
    if s.runs_direct() {
        // SAFETY: runs_direct checked the CPU runs the direct kernels (AVX2 and FMA, or NEON).
        #[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
        unsafe {
            if s.runs_winograd() {
                super::conv_winograd::backward_input(s, n, dy, w, dx, scratch)
            } else {
                super::conv_direct::backward_input(s, n, dy, w, dx, scratch)
            }
        }
        return;
    }
    if s.direct() {
        // A 1×1: every image's product with the weights packed once (the bits of one
        // product per image).
        let (b, c) = ((dy, hw_o, false, s.out_len()), (&mut dx[..], hw_o, s.in_len()));
        return sgemm_strided_batch(kk, hw_o, s.c_out, w, kk, true, b, c, n, false);
    }
    for i in 0..n {
        let dyi = &dy[i * s.out_len()..][..s.out_len()];
        let dxi = &mut dx[i * s.in_len()..][..s.in_len()];
        // A few input channels at a time, so their column-matrix rows are still in
        // cache when col2im folds them back (one 16-channel 32×32 image's matrix
        // is 576 KiB). A channel's rows feed only its own plane of `dx`, so every
        // `dx` element still sums its taps in the same order.
        dxi.fill(0.0);
        let rows = k2 * hw_o;
        let group = (COL_BLOCK / rows.max(1)).clamp(1, s.c_in);
        for c0 in (0..s.c_in).step_by(group) {
            let cs = group.min(s.c_in - c0);
            let col = &mut scratch[..cs * rows];
            sgemm(cs * k2, hw_o, s.c_out, &w[c0 * k2..], kk, true, dyi, hw_o, false, col, hw_o, false);
            col2im_add(s, cs, col, &mut dxi[c0 * s.h * s.w..]);
        }
    }
}

/// Adds the weight gradient (and, with `dbias`, the bias gradient) of `n` images to
/// `dw`/`dbias`, so batch chunks and several losses accumulate. A stride-1 "same" 3×3 on
/// AVX2, AVX-512 or NEON runs the Winograd kernel of `conv_winograd_wgrad.rs` where
/// [`Conv2d::winograd`] allows, else the direct one of `conv_wgrad.rs`, for all `n` images
/// (their summation orders are documented there); the rest sum each element as one FMA
/// chain over the pixels.
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
    if s.groups > 1 {
        each_group(s, n, |g, i, j| {
            let (x, dy) = (&x[i * s.in_len() + j * g.in_len()..], &dy[i * s.out_len() + j * g.out_len()..]);
            conv2d_accumulate_weight_grad(g, 1, x, dy, &mut dw[j * g.weight_len()..], None, scratch);
        });
    } else if s.runs_direct() {
        // SAFETY: runs_direct checked the CPU runs the direct kernels (AVX2 and FMA, or
        // NEON), which the Winograd ones need too.
        #[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
        unsafe {
            if s.runs_winograd() {
                super::conv_winograd_wgrad::accumulate(s, n, x, dy, dw, scratch)
            } else {
                super::conv_wgrad::accumulate(s, n, x, dy, dw, scratch)
            }
        }
    } else {
        for i in 0..n {
            let xi = &x[i * s.in_len()..][..s.in_len()];
            let dyi = &dy[i * s.out_len()..][..s.out_len()];
            if s.direct() {
                sgemm(s.c_out, kk, hw_o, dyi, hw_o, false, xi, hw_o, true, dw, kk, true);
            } else {
                // Block by block of pixels (the GEMM's k), accumulating: each element of `dw`
                // is the same FMA chain over the pixels in order as in one call.
                im2col_blocks(s, xi, scratch, |p0, nb, col| {
                    sgemm(s.c_out, kk, nb, &dyi[p0..], hw_o, false, col, nb, true, dw, kk, true);
                });
            }
        }
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

// The AVX2 packer's test: the other architectures pack with the scalar loops only.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The vector packer writes exactly the scalar one's floats (and so im2col's), for
    /// shapes whose rows do not line up with panels, a 3-channel stem and a 5×5 kernel,
    /// across several column blocks and k slabs (`pack` is the vector packer wherever the
    /// CPU has AVX2 — every machine CI runs on).
    #[test]
    fn shifted_taps_vector_packing_matches_scalar() {
        let shapes = [
            Conv2d { c_in: 3, c_out: 16, h: 32, w: 32, k: 3, stride: 1, pad: 1, groups: 1 },
            Conv2d { c_in: 4, c_out: 8, h: 7, w: 9, k: 3, stride: 1, pad: 1, groups: 1 },
            Conv2d { c_in: 2, c_out: 8, h: 6, w: 5, k: 5, stride: 1, pad: 2, groups: 1 },
        ];
        let mut x = [0.0f32; 3 * 32 * 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = (i % 97) as f32 - 40.0;
        }
        for s in &shapes {
            let taps = ShiftedTaps { s, x: &x[..s.in_len()] };
            let (kk, n) = (s.c_in * s.k * s.k, s.h * s.w);
            for (pc, kc) in [(0, kk.min(20)), (kk / 3, kk - kk / 3)] {
                for jc in (0..n).step_by(NC) {
                    let ncv = NC.min(n - jc);
                    let len = ncv.div_ceil(PANEL_NR) * kc * PANEL_NR;
                    let mut a = [MaybeUninit::new(f32::NAN); 64 * NC];
                    let mut b = [MaybeUninit::new(f32::NAN); 64 * NC];
                    taps.pack(jc, ncv, pc, kc, &mut a[..len]);
                    taps.pack_scalar(jc, ncv, pc, kc, &mut b[..len]);
                    for i in 0..len {
                        // SAFETY: both packers write every float of the first `len`.
                        let (u, v) = unsafe { (a[i].assume_init(), b[i].assume_init()) };
                        assert_eq!(u.to_bits(), v.to_bits(), "{s:?} pc {pc} jc {jc} at {i}");
                    }
                }
            }
        }
    }
}
