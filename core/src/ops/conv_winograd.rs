//! Winograd F(2×2, 3×3) for the stride-1 "same" 3×3 convolutions ([`Conv2d::winograd`]):
//! the forward (with eval's BN tail, [`super::conv_tail`]) and the input gradient (the
//! weight gradient: `conv_winograd_wgrad`).
//!
//! Each 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` of the 4×4 input patch `d` around
//! it: 16 products per (input, output) channel pair where the direct kernels take 36, so
//! 2.25× fewer multiply-adds. The transforms are additions and subtractions (G's halves
//! are exact), and the 16 products of a tile are 16 matrix products over the channels:
//! `Y[ξ][o][t] = Σ_c U[ξ][c][o] · V[ξ][c][t]` for the transformed weights `U` and the
//! transformed input `V` of a block of tiles `t`.
//!
//! Layout ([`WinoTiles`]): a few images side by side, so that a tile row across them is
//! whole 16-lane vectors (8×8 maps have 4 tiles a row: four images). Each image is first
//! copied into four column-phase planes per channel and padded row (`x[2·tx + j − 1]`
//! for `j` = 0..3), so each of a tile vector's 16 taps is one contiguous load. A block
//! of tile rows is then transformed (`V`, 16 × channels × tiles, in L2), and a register
//! tile of output channels × tile vectors walks the input channels for each ξ in turn, as
//! the GEMM micro-kernel does, on `V` as it lies; its 16 products stay in L1 until they
//! are transformed back, each output row's even and odd columns interleaved into whole
//! vectors. All of a group's images are copied before any output is written, so the
//! output may replace the input ([`Images`]). The strides between the rows a transform
//! touches at once are kept off powers of two (`WinoTiles::block_strides`): 16 rows 64
//! KiB apart shared L1 sets and evicted each other (the first version ran at half speed).
//!
//! Bits: every output is the same sequence of operations on every instruction set (the
//! transforms' additions in a fixed order, one FMA chain over the input channels per
//! product), and no output depends on which images share a block, so AVX-512, AVX2 and
//! NEON agree bit for bit and the bits do not depend on the thread count. They differ
//! from the direct kernels' single FMA chain over the 9·`c_in` taps by the transforms'
//! roundings: `core/tests/conv_direct.rs` bounds both against float64, and
//! `core/tests/grad_ops.rs` writes the operations out and checks them bit for bit.
//!
//! Measured on a 2-core Zen 4 (one thread, 8-image calls, forward): 16→16 channels on
//! 32×32 at 132 GFLOP/s of direct-convolution work (the direct kernel: ≈106), 32→32 on
//! 16×16 at 160, 64→64 on 8×8 at 162. The products take about 60 % of it; the 16-channel
//! layer's transforms weigh most, against only 16 products per tile and channel.

#[cfg(target_arch = "aarch64")]
use super::conv_lanes::Neon;
use super::conv_lanes::{Lanes, Zip};
#[cfg(target_arch = "x86_64")]
use super::conv_lanes::{Ymm, Zmm};
use super::conv_layout::{WinoTiles, WINO_TILE};
use super::conv_shape::Conv2d;
use super::conv_tail::{Finish, Images, Sums};
#[cfg(target_arch = "x86_64")]
use super::isa::{cpu_isa, Isa};

/// Forward of `n` images of a [`Conv2d::winograd`] convolution: `y = conv(x, w)`, each
/// output finished by `fin` (overwrites; `y` may be `x` itself).
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn forward<F: Finish>(s: &Conv2d, n: usize, io: Images, w: &[f32], scratch: &mut [f32], fin: F) {
    let t = WinoTiles::of(s.c_in, s.c_out, s.h, s.w);
    let call = Call { t, n, lens: (s.in_len(), s.out_len()), io, pack: Kernels::Forward(w, s.c_in), scratch, fin };
    // SAFETY: forwarded contract.
    unsafe { on_x86(call) }
}

/// Input gradient of `n` images of a [`Conv2d::winograd`] convolution (overwrites `dx`):
/// the convolution of `dy` with `w'[ci][co][t] = w[co][ci][8 − t]`.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn backward_input(s: &Conv2d, n: usize, dy: &[f32], w: &[f32], dx: &mut [f32], scratch: &mut [f32]) {
    let t = WinoTiles::of(s.c_out, s.c_in, s.h, s.w);
    let (io, pack) = (Images::Apart(dy, dx), Kernels::Flipped(w, s.c_in));
    // SAFETY: forwarded contract.
    unsafe { on_x86(Call { t, n, lens: (s.out_len(), s.in_len()), io, pack, scratch, fin: Sums }) }
}

/// One call's arguments but its instruction set: the blocks, the images (`lens`: floats an
/// image in and out), the kernels, the scratch and the outputs' finish.
struct Call<'a, F> {
    t: WinoTiles,
    n: usize,
    lens: (usize, usize),
    io: Images<'a>,
    pack: Kernels<'a>,
    scratch: &'a mut [f32],
    fin: F,
}

/// [`run`] with AVX-512F's tile (8 output channels × 3 vectors of 16 tiles) where the CPU
/// has it, AVX2's (6 × 2 of 8: 12 accumulators of the 16 ymm) elsewhere.
///
/// # Safety
/// The CPU supports AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn on_x86<F: Finish>(call: Call<F>) {
    // SAFETY: forwarded contract; `wide` only where the CPU has AVX-512F.
    unsafe {
        if cpu_isa() == Isa::Avx512 {
            wide(call)
        } else {
            run::<Ymm, Ymm, F, 6, 2>(call)
        }
    }
}

/// [`run`] on AVX-512F: its products on zmm; its transforms on zmm where an output row is
/// whole 16-float vectors, else on ymm (8×8 and 56×56 maps).
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn wide<F: Finish>(call: Call<F>) {
    // SAFETY: forwarded contract.
    unsafe {
        if call.t.w.is_multiple_of(16) {
            run::<Zmm<false>, Zmm<false>, F, 8, 3>(call)
        } else {
            run::<Zmm<false>, Ymm, F, 8, 3>(call)
        }
    }
}

/// [`forward`] on NEON.
///
/// # Safety
/// None beyond the slices' lengths (asserted); `unsafe` as on x86.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn forward<F: Finish>(s: &Conv2d, n: usize, io: Images, w: &[f32], scratch: &mut [f32], fin: F) {
    let t = WinoTiles::of(s.c_in, s.c_out, s.h, s.w);
    let call = Call { t, n, lens: (s.in_len(), s.out_len()), io, pack: Kernels::Forward(w, s.c_in), scratch, fin };
    // SAFETY: NEON is part of every aarch64 CPU this crate builds for.
    unsafe { run::<Neon, Neon, F, 6, 2>(call) }
}

/// [`backward_input`] on NEON.
///
/// # Safety
/// None beyond the slices' lengths (asserted); `unsafe` as on x86.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn backward_input(s: &Conv2d, n: usize, dy: &[f32], w: &[f32], dx: &mut [f32], scratch: &mut [f32]) {
    let t = WinoTiles::of(s.c_out, s.c_in, s.h, s.w);
    let (io, pack) = (Images::Apart(dy, dx), Kernels::Flipped(w, s.c_in));
    // SAFETY: NEON is part of every aarch64 CPU this crate builds for.
    unsafe {
        run::<Neon, Neon, Sums, 6, 2>(Call { t, n, lens: (s.out_len(), s.in_len()), io, pack, scratch, fin: Sums })
    }
}

/// The 3×3 kernels a call convolves with, from a conv's weights `w[co][ci][tap]` (and
/// its `c_in`): the forward's, or the input gradient's (`ci` to `co`, taps reversed).
#[derive(Clone, Copy)]
enum Kernels<'a> {
    Forward(&'a [f32], usize),
    Flipped(&'a [f32], usize),
}

impl Kernels<'_> {
    /// `g[c][tap][o]` (`o` up to `t.cout_pad`, zero past `t.cout`) for the call's `t.cin`
    /// channels `c` in and `t.cout` out: each row of `g` written in order, from taps 9
    /// floats apart (input gradient) or a kernel apart (forward).
    #[inline(always)]
    fn gather(self, t: &WinoTiles, g: &mut [f32]) {
        let op = t.cout_pad;
        let rows = g[..9 * t.cin * op].chunks_exact_mut(op);
        for (r, row) in rows.enumerate() {
            let (c, k) = (r / 9, r % 9);
            let (row, pad) = row.split_at_mut(t.cout);
            pad.fill(0.0);
            let (w, first, step) = match self {
                Kernels::Forward(w, c_in) => (w, c * 9 + k, 9 * c_in),
                // The call's `c` is the conv's output channel, its `o` the input one.
                Kernels::Flipped(w, c_in) => (w, c * c_in * 9 + 8 - k, 9),
            };
            for (d, &v) in row.iter_mut().zip(w[first..].iter().step_by(step)) {
                *d = v;
            }
        }
    }
}

/// The convolution of `n` images of `t.cin` planes (`src` floats an image) into
/// `t.cout` planes (`dst` floats), with the weights `pack` transformed: products on
/// `P`'s vectors in tiles of `R` output channels × `NV` vectors, transforms on `T`'s.
///
/// # Safety
/// The caller is compiled for `P`'s and `T`'s sets; an output row is whole `T` vectors.
#[inline(always)]
unsafe fn run<P: Lanes, T: Zip, F: Finish, const R: usize, const NV: usize>(call: Call<F>) {
    let Call { t, n, lens: (src, dst), mut io, pack, scratch, fin } = call;
    let t = &t;
    let plane = t.h * t.w;
    assert!(io.fits(n, src, dst) && src == t.cin * plane && dst == t.cout * plane && t.w.is_multiple_of(T::WIDTH));
    assert!(scratch.len() >= t.scratch_len(), "conv scratch too small");
    let (u, rest) = scratch.split_at_mut(t.weights_len());
    let (planes, rest) = rest.split_at_mut(t.planes_len());
    pack_weights(t, pack, u, rest);
    let (v, rest) = rest.split_at_mut(t.block_len(t.cin));
    let y = &mut rest[..WINO_TILE];
    // The padding rows (first and last of each channel's planes) stay zero:
    // `column_planes` writes only the image rows.
    for ch in planes.chunks_exact_mut((t.h + 2) * 4 * t.phase) {
        let (top, rest) = ch.split_at_mut(4 * t.phase);
        top.fill(0.0);
        rest[t.h * 4 * t.phase..].fill(0.0);
    }
    let cols = Cols::of(t, T::WIDTH / 2);
    for g0 in (0..n).step_by(t.images) {
        let images = t.images.min(n - g0);
        for i in 0..images {
            // SAFETY: the caller's sets: AVX-512F where `P` is 16 lanes.
            unsafe { column_planes(t, io.input(g0 + i, src), i, planes, P::WIDTH == 16) };
        }
        // SAFETY: `fits` checked the call's `n` images of `dst` floats lie at `outputs`.
        let out = unsafe { io.outputs().add(g0 * dst) };
        for ty0 in (0..t.th).step_by(t.rows) {
            let rows = t.rows.min(t.th - ty0);
            // SAFETY: the caller's sets; the blocks are `WinoTiles`' sizes (split above).
            unsafe {
                transform_input::<T>(t, planes, ty0, rows, v);
                products::<P, T, F, R, NV>(t, (u, v, y), ty0, rows, (out, g0 * dst, images), &cols, fin);
            }
        }
    }
}

/// Where each half vector of a tile row (`half` tiles) goes: its image, and the offset
/// of its first output column in the images' outputs (`2·tx` in its image).
struct Cols {
    at: [(usize, usize); 64],
}

impl Cols {
    fn of(t: &WinoTiles, half: usize) -> Cols {
        // `Conv2d::winograd` keeps maps to 128 wide: a tile row is at most 60 halves.
        assert!(t.q.is_multiple_of(half) && t.q / half <= 64, "a tile row of at most 64 half vectors");
        let mut at = [(0, 0); 64];
        for (k, c) in at.iter_mut().enumerate().take(t.q / half) {
            let (image, tx) = (k * half / t.tpr, k * half % t.tpr);
            *c = (image, image * t.cout * t.h * t.w + 2 * tx);
        }
        Cols { at }
    }
    #[inline(always)]
    fn image(&self, k: usize) -> usize {
        self.at[k].0
    }
    #[inline(always)]
    fn offset(&self, k: usize) -> usize {
        self.at[k].1
    }
}

/// `U[ξ][c][o]` (`o` padded to `cout_pad` with zeros) of the kernels `k`:
/// `G g Gᵀ` with `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`, computed along `o` (so the
/// arithmetic runs on vectors); `tmp` holds [`WinoTiles::pack_len`] floats. Inlined into
/// the caller's set, as [`column_planes`].
#[inline(always)]
fn pack_weights(t: &WinoTiles, kernels: Kernels, u: &mut [f32], tmp: &mut [f32]) {
    let op = t.cout_pad;
    let (u, slack) = u.split_at_mut(16 * t.cin * op);
    slack.fill(0.0);
    let (g, gg) = tmp[..t.pack_len()].split_at_mut(9 * t.cin * op);
    kernels.gather(t, g);
    for (c, g) in g.chunks_exact(9 * op).enumerate() {
        // G·g: for each kernel column b, rows b, 3 + b, 6 + b, 9 + b of `gg`.
        for b in 0..3 {
            let col = |a: usize| &g[(3 * a + b) * op..][..op];
            g_rows(col(0), col(1), col(2), gg.chunks_exact_mut(op).skip(b).step_by(3));
        }
        // (G·g)·Gᵀ: row i of G·g gives U[4i..4i + 4][c].
        let mut dst = u.chunks_exact_mut(op).skip(c).step_by(t.cin);
        for i in 0..4 {
            let row = |b: usize| &gg[(3 * i + b) * op..][..op];
            g_rows(row(0), row(1), row(2), dst.by_ref().take(4));
        }
    }
}

/// The four rows of `G·(a, b, c)`: `a`, `((a + c) + b)·½`, `((a + c) − b)·½`, `c`.
fn g_rows<'a>(a: &[f32], b: &[f32], c: &[f32], mut out: impl Iterator<Item = &'a mut [f32]>) {
    let mut next = || out.next().expect("four rows");
    next().copy_from_slice(a);
    let (r1, r2) = (next(), next());
    for (((d1, d2), (&a, &b)), &c) in r1.iter_mut().zip(r2.iter_mut()).zip(a.iter().zip(b)).zip(c) {
        *d1 = ((a + c) + b) * 0.5;
        *d2 = ((a + c) - b) * 0.5;
    }
    next().copy_from_slice(c);
}

/// Copies image `x` into slot `slot` of the column-phase planes: phase `j` of padded row
/// `r + 1` holds `x[r][2·tx + j − 1]` at tile column `tx` (zero outside the row). Each
/// row is split into its even and odd columns a few vectors at a time (the widest whole
/// number of vectors of `tpr`; 16 lanes only where `wide`), and each half stored twice,
/// once a tile to the side (the store past the slot's end lands in the next slot, which
/// is written after it, or in the float past `q`; the one before its start in the
/// previous slot, whose padding it then restores, or in the phase before's float past `q`).
///
/// # Safety
/// The caller is compiled for the set the split takes: AVX-512F where `wide`, AVX2, or
/// NEON.
#[inline(always)]
unsafe fn column_planes(t: &WinoTiles, x: &[f32], slot: usize, planes: &mut [f32], wide: bool) {
    let (tpr, ph) = (t.tpr, t.phase);
    let step = if wide && tpr.is_multiple_of(16) {
        16
    } else if tpr.is_multiple_of(8) {
        8
    } else {
        4
    };
    assert!(x.len() >= t.cin * t.h * t.w && planes.len() >= t.planes_len() && tpr.is_multiple_of(4) && slot < t.images);
    let (src, dst) = (x.as_ptr(), planes.as_mut_ptr());
    for c in 0..t.cin {
        for r in 0..t.h {
            // SAFETY: row r's `w` floats are in `x`; the four phase rows of padded row
            // r + 1 are in the planes, and the slot's tiles plus one each side within
            // them (`ph` leaves one float past `q`; phase 3's store one before its start
            // lands in phase 2's).
            unsafe {
                let (s, d) = (src.add((c * t.h + r) * t.w), dst.add((c * (t.h + 2) + r + 1) * 4 * ph + slot * tpr));
                for tx in (0..tpr).step_by(step) {
                    split(step, s.add(2 * tx), d.add(tx), ph);
                }
                // The padding either side: phase 0 of the first tile, phase 3 of the last;
                // and the previous slot's last, which the store one tile left overwrote.
                *d = 0.0;
                *d.add(3 * ph + tpr - 1) = 0.0;
                if slot > 0 {
                    *d.add(3 * ph - 1) = 0.0;
                }
            }
        }
    }
}

/// Splits the `2·n` floats at `s` (`n` = 16, 8 or 4) into evens, stored at phase 1 and
/// one tile left at phase 3, and odds, at phase 2 and one tile right at phase 0 (phase
/// `j` at `d + j·ph`).
///
/// # Safety
/// As [`column_planes`]'s, with the floats read and written in bounds.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn split(n: usize, s: *const f32, d: *mut f32, ph: usize) {
    use core::arch::x86_64::*;
    // SAFETY: the caller's contract (16 lanes only on AVX-512F).
    unsafe {
        let (e, o) = (d.add(ph), d.add(2 * ph));
        let (e3, o0) = (d.add(3 * ph - 1), d.add(1));
        match n {
            16 => {
                let (a, b) = (_mm512_loadu_ps(s), _mm512_loadu_ps(s.add(16)));
                let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                let (ev, od) = (_mm512_permutex2var_ps(a, ie, b), _mm512_permutex2var_ps(a, io, b));
                _mm512_storeu_ps(e3, ev);
                _mm512_storeu_ps(o0, od);
                _mm512_storeu_ps(e, ev);
                _mm512_storeu_ps(o, od);
            }
            8 => {
                let (a, b) = (_mm256_loadu_ps(s), _mm256_loadu_ps(s.add(8)));
                // Within each 128-bit half, then the halves' 64-bit pairs in order.
                let ev =
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(_mm256_shuffle_ps::<0x88>(a, b))));
                let od =
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(_mm256_shuffle_ps::<0xDD>(a, b))));
                _mm256_storeu_ps(e3, ev);
                _mm256_storeu_ps(o0, od);
                _mm256_storeu_ps(e, ev);
                _mm256_storeu_ps(o, od);
            }
            _ => {
                let (a, b) = (_mm_loadu_ps(s), _mm_loadu_ps(s.add(4)));
                let (ev, od) = (_mm_shuffle_ps::<0x88>(a, b), _mm_shuffle_ps::<0xDD>(a, b));
                _mm_storeu_ps(e3, ev);
                _mm_storeu_ps(o0, od);
                _mm_storeu_ps(e, ev);
                _mm_storeu_ps(o, od);
            }
        }
    }
}

/// [`split`] on NEON, 4 lanes a vector.
///
/// # Safety
/// As on x86.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn split(n: usize, s: *const f32, d: *mut f32, ph: usize) {
    use core::arch::aarch64::*;
    // SAFETY: the caller's contract.
    unsafe {
        for k in (0..n).step_by(4) {
            let (a, b) = (vld1q_f32(s.add(2 * k)), vld1q_f32(s.add(2 * k + 4)));
            let (ev, od) = (vuzp1q_f32(a, b), vuzp2q_f32(a, b));
            let d = d.add(k);
            vst1q_f32(d.add(3 * ph - 1), ev);
            vst1q_f32(d.add(1), od);
            vst1q_f32(d.add(ph), ev);
            vst1q_f32(d.add(2 * ph), od);
        }
    }
}

/// `V[ξ][c][t] = (Bᵀ d B)[ξ]` for the tiles of tile rows `ty0..ty0 + rows`, with
/// `Bᵀ = [1 0 −1 0; 0 1 1 0; 0 −1 1 0; 0 1 0 −1]`: down each of the patch's columns,
/// then across.
///
/// # Safety
/// The caller is compiled for `T`'s set; `t.q` is whole `T` vectors.
#[inline(always)]
unsafe fn transform_input<T: Lanes>(t: &WinoTiles, planes: &[f32], ty0: usize, rows: usize, v: &mut [f32]) {
    let (q, ph, wv) = (t.q, t.phase, T::WIDTH);
    let ((bs, xs), down) = (t.block_strides(t.cin), 4 * ph);
    assert!(planes.len() >= t.planes_len() && v.len() >= t.block_len(t.cin) && ty0 + rows <= t.th);
    let (p, vp) = (planes.as_ptr(), v.as_mut_ptr());
    // SAFETY: row `2·ty + i` (i < 4) of channel c lies in the planes for ty < th, each
    // phase row `q` floats of whole vectors (`ph` apart, a patch row's `down`); `V`'s
    // rows are `bs` apart, its ξ `xs`.
    unsafe {
        for c in 0..t.cin {
            let (src, dst) = (p.add((c * (t.h + 2) + 2 * ty0) * down), vp.add(c * bs));
            for ry in 0..rows {
                let (src, dst) = (src.add(2 * ry * down), dst.add(ry * q));
                for q0 in (0..q).step_by(wv) {
                    // Column j of the patch: phase j of the four rows.
                    let (p, d) = (src.add(q0), dst.add(q0));
                    let c0 = bt::<T>(load4::<T>(p, down));
                    let c1 = bt::<T>(load4::<T>(p.add(ph), down));
                    let c2 = bt::<T>(load4::<T>(p.add(2 * ph), down));
                    let c3 = bt::<T>(load4::<T>(p.add(3 * ph), down));
                    // Row i across: ξ = 4i..4i + 4.
                    store4::<T>(d, xs, bt::<T>([c0[0], c1[0], c2[0], c3[0]]));
                    store4::<T>(d.add(4 * xs), xs, bt::<T>([c0[1], c1[1], c2[1], c3[1]]));
                    store4::<T>(d.add(8 * xs), xs, bt::<T>([c0[2], c1[2], c2[2], c3[2]]));
                    store4::<T>(d.add(12 * xs), xs, bt::<T>([c0[3], c1[3], c2[3], c3[3]]));
                }
            }
        }
    }
}

/// `Bᵀ (a, b, c, d)`: `(a − c, b + c, c − b, b − d)`.
///
/// # Safety
/// The caller is compiled for `T`'s set.
#[inline(always)]
unsafe fn bt<T: Lanes>([a, b, c, d]: [T::V; 4]) -> [T::V; 4] {
    // SAFETY: the caller's contract.
    unsafe { [T::sub(a, c), T::add(b, c), T::sub(c, b), T::sub(b, d)] }
}

/// `Aᵀ (a, b, c, d)`: `((a + b) + c, (b − c) − d)`.
///
/// # Safety
/// The caller is compiled for `T`'s set.
#[inline(always)]
unsafe fn at<T: Lanes>([a, b, c, d]: [T::V; 4]) -> [T::V; 2] {
    // SAFETY: the caller's contract.
    unsafe { [T::add(T::add(a, b), c), T::sub(T::sub(b, c), d)] }
}

/// The vectors at `p`, `p + step`, `p + 2·step` and `p + 3·step`.
///
/// # Safety
/// The caller is compiled for `T`'s set; the vectors are readable.
#[inline(always)]
unsafe fn load4<T: Lanes>(p: *const f32, step: usize) -> [T::V; 4] {
    let w = T::WIDTH;
    // SAFETY: the caller's contract.
    unsafe {
        [T::load(p, 0, w), T::load(p.add(step), 0, w), T::load(p.add(2 * step), 0, w), T::load(p.add(3 * step), 0, w)]
    }
}

/// Stores `v` at `p`, `p + step`, `p + 2·step` and `p + 3·step`.
///
/// # Safety
/// The caller is compiled for `T`'s set; the vectors are writable.
#[inline(always)]
unsafe fn store4<T: Lanes>(p: *mut f32, step: usize, v: [T::V; 4]) {
    let w = T::WIDTH;
    // SAFETY: the caller's contract.
    unsafe {
        T::store(p, v[0], w);
        T::store(p.add(step), v[1], w);
        T::store(p.add(2 * step), v[2], w);
        T::store(p.add(3 * step), v[3], w);
    }
}

/// The block's outputs, one register tile of tiles at a time: its 16 products `Y[ξ][o][t]
/// = Σ_c U[ξ][c][o] · V[ξ][c][t]` (into `y`, in L1), then their output transform
/// ([`transform_output`]), so the products never leave L1.
///
/// # Safety
/// The caller is compiled for `P`'s and `T`'s sets; the block's tiles are whole `P`
/// vectors; `R × NV` vectors fit [`WINO_TILE`]; `R` divides 16 or the weights' slack
/// covers its last tile's rows.
#[inline(always)]
unsafe fn products<P: Lanes, T: Zip, F: Finish, const R: usize, const NV: usize>(
    t: &WinoTiles,
    (u, v, y): (&[f32], &[f32], &mut [f32]),
    ty0: usize,
    rows: usize,
    out: (*mut f32, usize, usize),
    cols: &Cols,
    fin: F,
) {
    let ((bs, vx), op, wv, tiles) = (t.block_strides(t.cin), t.cout_pad, P::WIDTH, rows * t.q);
    // The tile's products: a row of `NV` vectors per output channel, `yx` per ξ.
    let (yr, yx) = (NV * wv, R * NV * wv + 16);
    assert!(
        u.len() >= t.weights_len() && v.len() >= t.block_len(t.cin) && tiles < bs && 16 * yx <= y.len().min(WINO_TILE)
    );
    let (up, vp, yp) = (u.as_ptr(), v.as_ptr(), y.as_mut_ptr());
    // SAFETY: every tile reads rows c < cin of `U` (rows o0..o0 + R within `op` plus the
    // slack) and of `V` (tiles < bs), and writes its `rows` channels of `y`.
    unsafe {
        for o0 in (0..t.cout).step_by(R) {
            let (u, chans) = (up.add(o0), R.min(t.cout - o0));
            for t0 in (0..tiles).step_by(NV * wv) {
                let nv = NV.min((tiles - t0) / wv);
                for xi in 0..16 {
                    let (u, v, y) = ((u.add(xi * t.cin * op), op), (vp.add(xi * vx + t0), bs), (yp.add(xi * yx), yr));
                    match nv {
                        1 => tile::<P, R, 1, false>(u, v, t.cin, y, chans),
                        2 => tile::<P, R, 2, false>(u, v, t.cin, y, chans),
                        _ => tile::<P, R, NV, false>(u, v, t.cin, y, chans),
                    }
                }
                let products = (yp as *const f32, yr, yx);
                transform_output::<T, F>(t, products, (o0, chans), (ty0, t0, nv * wv), out, cols, fin);
            }
        }
    }
}

/// One register tile, the Winograd kernels' matrix products: `out[r][j] (+)= Σ_{k < steps}
/// a[k][r] · b[k][j]` for `R` rows (broadcast from `a`, consecutive floats, `sa` floats a
/// step) × `NV` vectors (from `b`, `sb` a step), one FMA chain per element, from zero or
/// (with `ACC`) continued from `out`; stores its first `rows` rows (`so` floats apart).
/// The forward's: output channels × tiles over the input channels; the weight
/// gradient's (`conv_winograd_wgrad`): input channels × output channels over the tiles.
///
/// # Safety
/// The caller is compiled for `L`'s set; `a` and `b` hold `steps` steps of `R` floats and
/// `NV` vectors; `out` the rows stored (and, with `ACC`, all `R` rows loaded).
#[inline(always)]
pub(super) unsafe fn tile<L: Lanes, const R: usize, const NV: usize, const ACC: bool>(
    (a, sa): (*const f32, usize),
    (b, sb): (*const f32, usize),
    steps: usize,
    (out, so): (*mut f32, usize),
    rows: usize,
) {
    let w = L::WIDTH;
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc: [[L::V; NV]; R] = if ACC {
            core::array::from_fn(|r| core::array::from_fn(|j| L::load(out.add(r * so + j * w), 0, w)))
        } else {
            [[L::zero(); NV]; R]
        };
        let (mut a, mut b) = (a, b);
        for _ in 0..steps {
            let x: [L::V; NV] = core::array::from_fn(|j| L::load(b.add(j * w), 0, w));
            for (r, acc) in acc.iter_mut().enumerate() {
                let s = L::splat(a.add(r));
                for (acc, &x) in acc.iter_mut().zip(&x) {
                    *acc = L::fma(s, x, *acc);
                }
            }
            (a, b) = (a.add(sa), b.add(sb));
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            for (j, &v) in acc.iter().enumerate() {
                L::store(out.add(r * so + j * w), v, w);
            }
        }
    }
}

/// The outputs of a register tile's products: channels `o0..o0 + chans`, the block's
/// tiles `t0..t0 + span` (block of tile rows from `ty0`). `Aᵀ m A` with `Aᵀ = [1 1 1 0;
/// 0 1 −1 −1]` (down each column, then across), each output row's even and odd columns
/// interleaved, stored into the `images` images at `out` (call offset `at0`, `t.cout`
/// planes an image) and finished by `fin`. Products `(y, yr, yx)`: channel rows `yr`
/// apart, ξ `yx`.
///
/// # Safety
/// The caller is compiled for `T`'s set; an output row and `span` are whole `T` vectors;
/// `out` holds `images` images' outputs.
#[inline(always)]
unsafe fn transform_output<T: Zip, F: Finish>(
    t: &WinoTiles,
    (y, yr, yx): (*const f32, usize, usize),
    (o0, chans): (usize, usize),
    (ty0, t0, span): (usize, usize, usize),
    (out, at0, images): (*mut f32, usize, usize),
    cols: &Cols,
    fin: F,
) {
    let (q, wv, plane) = (t.q, T::WIDTH, t.h * t.w);
    // SAFETY: reads the tile's products; each store is `wv` floats of one output row (a
    // half vector's tiles lie in one image, as `tpr` is whole half vectors).
    unsafe {
        for o in o0..o0 + chans {
            let src = y.add((o - o0) * yr);
            // The first vector's tile row and place in it; then counted, not divided.
            let (mut next_ty, mut q0) = (ty0 + t0 / q, t0 % q);
            for tv in (t0..t0 + span).step_by(wv) {
                // Half vectors k and k + 1 of tile row `ty`.
                let (ty, k) = (next_ty, q0 / wv * 2);
                (next_ty, q0) = if q0 + wv == q { (ty + 1, 0) } else { (ty, q0 + wv) };
                if cols.image(k) >= images {
                    continue;
                }
                // Column j of the products: ξ = j, 4 + j, 8 + j, 12 + j.
                let p = src.add(tv - t0);
                let c0 = at::<T>(load4::<T>(p, 4 * yx));
                let c1 = at::<T>(load4::<T>(p.add(yx), 4 * yx));
                let c2 = at::<T>(load4::<T>(p.add(2 * yx), 4 * yx));
                let c3 = at::<T>(load4::<T>(p.add(3 * yx), 4 * yx));
                let (mut ptrs, mut ats, mut n) = ([core::ptr::null_mut(); 4], [0; 4], 0);
                let row0 = o * plane + 2 * ty * t.w;
                for (a, row) in [(0, row0), (1, row0 + t.w)] {
                    let [even, odd] = at::<T>([c0[a], c1[a], c2[a], c3[a]]);
                    let (lo, hi) = T::zip(even, odd);
                    for (h, v) in [(k, lo), (k + 1, hi)] {
                        if cols.image(h) < images {
                            let off = cols.offset(h) + row;
                            T::store(out.add(off), v, wv);
                            (ptrs[n], ats[n], n) = (out.add(off), at0 + off, n + 1);
                        }
                    }
                }
                if F::FINISHES {
                    fin.plane::<T>(o, &ptrs[..n], &ats[..n], &[wv; 4][..n]);
                }
            }
        }
    }
}
