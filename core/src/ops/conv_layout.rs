//! The layouts of the direct stride-1 3×3 convolution kernels (`conv_direct`,
//! `conv_wgrad`): zero-padded planes and packed weights, and the short-row copy they and
//! im2col share. Their sizes are plain arithmetic on every target, though the kernels
//! are AVX2-only: a plan made on one machine (the firmware's `build.rs` plans on the
//! build host) sizes the conv scratch as it would on any other (`Conv2d::scratch_len`).

/// The kernel size the direct kernels are built for (every "same" conv of the networks).
pub(crate) const DIRECT_K: usize = 3;
/// Output pixels per vector.
pub(crate) const LANES: usize = 8;
/// Output channels per register tile of the forward and input gradient (12 accumulators
/// + 2 loaded vectors + 1 broadcast fill the 16 ymm registers).
pub(crate) const TILE_ROWS: usize = 6;

/// Zero-padded copies of `h × w` planes for a stride-1 convolution with padding `pad`:
/// `pad` zero rows above and below, `pad` zero columns on the left, and on the right
/// enough zero columns that every row holds whole 8-pixel output vectors' taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// Only the sizes are used where the kernels are not built.
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))), allow(dead_code))]
pub(crate) struct PaddedPlanes {
    /// Plane height and width.
    pub h: usize,
    pub w: usize,
    /// Zero padding on each side.
    pub pad: usize,
    /// Output vectors per row.
    pub vectors_per_row: usize,
    /// Row stride of a padded plane.
    pub wp: usize,
}

impl PaddedPlanes {
    pub(crate) const fn of(h: usize, w: usize, pad: usize) -> PaddedPlanes {
        let vectors_per_row = w.div_ceil(LANES);
        PaddedPlanes { h, w, pad, vectors_per_row, wp: vectors_per_row * LANES + 2 * pad }
    }

    /// Floats of one padded plane.
    pub(crate) const fn plane_len(&self) -> usize {
        (self.h + 2 * self.pad) * self.wp
    }
}

/// What the direct kernels' tiles need to know of their source planes: the output map
/// they walk and where each output row's taps lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))), allow(dead_code))]
pub(crate) struct Taps {
    /// Output map height and width, and its 8-pixel vectors per row.
    pub h: usize,
    pub w: usize,
    pub vectors_per_row: usize,
    /// Floats of one source channel.
    pub plane: usize,
    /// Floats from a tap row `kh` to the next.
    pub wp: usize,
    /// Floats between the tap origins of two consecutive output rows.
    pub rstep: usize,
    /// Floats from the even-column plane to the odd-column one (stride 2; else 0).
    pub odd: usize,
}

/// The source planes of a direct kernel, filled image by image.
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
pub(crate) trait Planes {
    /// Floats of one channel's planes.
    fn plane_len(&self) -> usize;
    fn taps(&self) -> Taps;
    /// Copies `channels` planes of `src` into `dst`, padding included.
    #[inline(always)]
    fn fill(&self, channels: usize, src: &[f32], dst: &mut [f32]) {
        dst[..channels * self.plane_len()].fill(0.0);
        self.copy_rows(channels, src, dst);
    }
    /// The copy without the padding, which a caller that fills planes of one layout image
    /// after image zeroes once (the kernels never write it). Implementations are
    /// `#[inline(always)]`, so they compile into the kernels' `#[target_feature]`
    /// functions as AVX moves (compiled alone, for the baseline x86-64, they were 16-byte
    /// SSE ones).
    fn copy_rows(&self, channels: usize, src: &[f32], dst: &mut [f32]);
}

#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
impl Planes for PaddedPlanes {
    fn plane_len(&self) -> usize {
        PaddedPlanes::plane_len(self)
    }
    fn taps(&self) -> Taps {
        let (h, w, wp) = (self.h, self.w, self.wp);
        Taps { h, w, vectors_per_row: self.vectors_per_row, plane: self.plane_len(), wp, rstep: wp, odd: 0 }
    }
    /// The rows as fixed-size vector moves (a `memset`/`memmove` call per short row cost
    /// more than the copy itself).
    #[inline(always)]
    fn copy_rows(&self, channels: usize, src: &[f32], dst: &mut [f32]) {
        let (h, w, pad, wp) = (self.h, self.w, self.pad, self.wp);
        let dst = &mut dst[..channels * self.plane_len()];
        for (plane, out) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(self.plane_len())) {
            for (row, o) in plane.chunks_exact(w).zip(out[pad * wp..].chunks_exact_mut(wp)) {
                copy_short(&mut o[pad..pad + w], row);
            }
        }
    }
}

/// The column-parity planes of a stride-2 3×3 convolution's zero-padded input (padding
/// 1): per channel the padded plane's even columns (E), then its odd ones (O), `h + 2`
/// rows of `wq` floats each. Output pixel `ox`'s taps `kw` = 0, 1, 2 are `E[ox]`, `O[ox]`,
/// `E[ox + 1]`, so each tap's outputs are contiguous floats, as in a stride-1 conv's
/// padded plane, and the same tile walks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PhasePlanes {
    /// Input height and width.
    pub h: usize,
    pub w: usize,
    /// Output height and width, and the output's 8-pixel vectors per row.
    pub h_out: usize,
    pub w_out: usize,
    pub vectors_per_row: usize,
    /// Floats per row of a parity plane: every vector's taps, the last one's `E[ox + 1]`
    /// included.
    pub wq: usize,
}

impl PhasePlanes {
    /// The planes of an `h × w` input (stride 2, padding 1, 3×3).
    pub(crate) const fn of(h: usize, w: usize) -> PhasePlanes {
        let (h_out, w_out) = (h.div_ceil(2), w.div_ceil(2));
        let vectors_per_row = w_out.div_ceil(LANES);
        PhasePlanes { h, w, h_out, w_out, vectors_per_row, wq: vectors_per_row * LANES + 1 }
    }
    /// Floats of one channel's two planes.
    pub(crate) const fn plane_len(&self) -> usize {
        2 * (self.h + 2) * self.wq
    }
}

#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
impl Planes for PhasePlanes {
    fn plane_len(&self) -> usize {
        PhasePlanes::plane_len(self)
    }
    fn taps(&self) -> Taps {
        let (h, w, wq) = (self.h_out, self.w_out, self.wq);
        let odd = (self.h + 2) * wq;
        Taps { h, w, vectors_per_row: self.vectors_per_row, plane: self.plane_len(), wp: wq, rstep: 2 * wq, odd }
    }
    #[inline(always)]
    fn copy_rows(&self, channels: usize, src: &[f32], dst: &mut [f32]) {
        let (h, w, wq) = (self.h, self.w, self.wq);
        let planes = dst[..channels * self.plane_len()].chunks_exact_mut(self.plane_len());
        for (plane, out) in src.chunks_exact(h * w).zip(planes) {
            let (even, odd) = out.split_at_mut((h + 2) * wq);
            for (r, row) in plane.chunks_exact(w).enumerate() {
                // Input column c is padded column c + 1: odd c's go to E[(c + 1) / 2],
                // even c's to O[c / 2].
                let (e, o) = (&mut even[(r + 1) * wq..][..wq], &mut odd[(r + 1) * wq..][..wq]);
                for (j, pair) in row.chunks(2).enumerate() {
                    o[j] = pair[0];
                    if let Some(&v) = pair.get(1) {
                        e[j + 1] = v;
                    }
                }
            }
        }
    }
}

/// The blocks of a Winograd F(2×2, 3×3) convolution (`conv_winograd`) from `cin` to
/// `cout` channels on `h × w` maps: 2×2 output tiles, `tpr` to a tile row; `images`
/// images side by side so that a tile row across them (`q` tiles) is whole 16-lane
/// vectors; `rows` tile rows a block. Plain arithmetic on every target, as the padded
/// planes' (the plan sizes the scratch the same everywhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))), allow(dead_code))]
pub(crate) struct WinoTiles {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    /// Tiles per tile row of one image (`w / 2`) and tile rows (`h / 2`).
    pub tpr: usize,
    pub th: usize,
    /// Images side by side, and the tiles of a tile row across them (`images · tpr`).
    pub images: usize,
    pub q: usize,
    /// Tile rows per block.
    pub rows: usize,
    /// Floats of a column-phase row: `q`, and one for the stores one tile to the side
    /// to spill into (a wider, aligned row ran 8 % slower: more to write and read).
    pub phase: usize,
    /// Output channels of the transformed weights' rows, rounded up to whole vectors.
    pub cout_pad: usize,
}

/// Floats of the products of one Winograd register tile for all 16 ξ (at most 8
/// output channels × 3 vectors of 16 tiles, each ξ one cache line apart from a power of
/// two), kept in L1 until their output transform.
pub(crate) const WINO_TILE: usize = 16 * (8 * 3 * 16 + 16);

/// Floats of a Winograd block's transformed input at most (unless one tile row takes
/// more): 256 KiB, in L2 (a whole image group of CIFAR maps, so its products walk long
/// rows of tiles).
const WINO_BLOCK: usize = 1 << 16;

impl WinoTiles {
    pub(crate) const fn of(cin: usize, cout: usize, h: usize, w: usize) -> WinoTiles {
        let (tpr, th) = (w / 2, h / 2);
        let mut images = 1;
        while !(images * tpr).is_multiple_of(16) {
            images += 1;
        }
        let q = images * tpr;
        let per_row = 16 * cin * q;
        let rows = if WINO_BLOCK / per_row == 0 {
            1
        } else if WINO_BLOCK / per_row > th {
            th
        } else {
            WINO_BLOCK / per_row
        };
        WinoTiles { cin, cout, h, w, tpr, th, images, q, rows, phase: q + 1, cout_pad: cout.div_ceil(16) * 16 }
    }
    /// Floats of the transformed weights (`[16][cin][cout_pad]`, and a tile's reach past
    /// the last row).
    pub(crate) const fn weights_len(&self) -> usize {
        16 * self.cin * self.cout_pad + 16
    }
    /// Floats of the input's column planes: per channel and padded row, the four column
    /// phases `x[2·tx + j − 1]` of every tile column of the images side by side.
    pub(crate) const fn planes_len(&self) -> usize {
        self.cin * (self.h + 2) * 4 * self.phase
    }
    /// Floats between a block's rows of one channel (its tiles, and one vector more), and
    /// between its rows of one ξ (`channels` rows, and one cache line more): no power of
    /// two, so the 16 rows a transform reads or writes at once fall in different L1 sets
    /// (with power-of-two strides they evicted each other: 2× slower).
    pub(crate) const fn block_strides(&self, channels: usize) -> (usize, usize) {
        let row = self.rows * self.q + 16;
        (row, channels * row + 16)
    }
    /// Floats of a block's transformed input (16 ξ of `channels` rows).
    pub(crate) const fn block_len(&self, channels: usize) -> usize {
        16 * self.block_strides(channels).1
    }
    /// Floats the weights' transform takes before the blocks do: every kernel's taps
    /// along `o`, and 12 rows of `G·g`.
    pub(crate) const fn pack_len(&self) -> usize {
        (9 * self.cin + 12) * self.cout_pad
    }
    /// Scratch floats of one call.
    pub(crate) const fn scratch_len(&self) -> usize {
        let blocks = self.block_len(self.cin) + WINO_TILE;
        self.weights_len() + self.planes_len() + if blocks > self.pack_len() { blocks } else { self.pack_len() }
    }
}

/// The blocks of a Winograd weight gradient (`conv_winograd_wgrad`) from `cin` to `cout`
/// channels on `h × w` maps, everything channels last (channels padded to whole 16s):
/// `images` consecutive images copied at a time (as many as a block of transformed
/// tiles holds, at least one), and `rows` tile rows of them a block (tile rows counted
/// across the group's images, one after the other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))), allow(dead_code))]
pub(crate) struct WgradTiles {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub cin_pad: usize,
    pub cout_pad: usize,
    /// Tiles per tile row (`w / 2`) and tile rows (`h / 2`) of one image.
    pub tpr: usize,
    pub th: usize,
    pub images: usize,
    pub rows: usize,
}

impl WgradTiles {
    pub(crate) const fn of(cin: usize, cout: usize, h: usize, w: usize) -> WgradTiles {
        let (tpr, th, cin_pad, cout_pad) = (w / 2, h / 2, cin.div_ceil(16) * 16, cout.div_ceil(16) * 16);
        // Rows of transformed input (or gradient, the wider of the two) a block holds.
        let wide = if cin_pad > cout_pad { cin_pad } else { cout_pad };
        let per_row = 16 * wide * tpr;
        let fit = if WINO_BLOCK / per_row == 0 { 1 } else { WINO_BLOCK / per_row };
        let images = if fit / th == 0 { 1 } else { fit / th };
        let rows = if fit < images * th { fit } else { images * th };
        WgradTiles { cin, cout, h, w, cin_pad, cout_pad, tpr, th, images, rows }
    }
    /// Floats of the group's input, channels last with a zero border of one pixel.
    pub(crate) const fn inputs_len(&self) -> usize {
        self.images * (self.h + 2) * (self.w + 2) * self.cin_pad
    }
    /// Floats of the group's output gradient, channels last.
    pub(crate) const fn grads_len(&self) -> usize {
        self.images * self.h * self.w * self.cout_pad
    }
    /// Floats between a block's transforms of two ξ, `channels` (padded) a tile: its
    /// tiles, and a cache line more (16 rows a power of two apart would share L1 sets).
    pub(crate) const fn block_stride(&self, channels: usize) -> usize {
        self.rows * self.tpr * channels + 16
    }
    /// Floats of the sums `M[ξ][cin_pad][cout_pad]` that are transformed back.
    pub(crate) const fn sums_len(&self) -> usize {
        16 * self.cin_pad * self.cout_pad
    }
    /// Scratch floats of one call: the group's copies, a block's two transforms, the sums.
    pub(crate) const fn scratch_len(&self) -> usize {
        let blocks = 16 * (self.block_stride(self.cin_pad) + self.block_stride(self.cout_pad));
        self.inputs_len() + self.grads_len() + blocks + self.sums_len()
    }
}

/// Floats of a `[row block][channel][tap][TILE_ROWS]` packing of `rows × channels × kk`
/// weights.
pub(crate) const fn packed_len(rows: usize, channels: usize, kk: usize) -> usize {
    rows.div_ceil(TILE_ROWS) * TILE_ROWS * channels * kk
}

/// `dst.copy_from_slice(src)` for short rows (im2col's per-row path, the direct kernels'
/// padded planes), as fixed-size vector moves: `copy_from_slice`
/// calls memmove for each row, whose call and size dispatch cost more than the copy.
#[inline(always)]
pub(crate) fn copy_short(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    debug_assert_eq!(n, src.len());
    if n >= 8 {
        // 8-float blocks, the last one ending at n (overlapping its predecessor).
        let mut i = 0;
        loop {
            let at = i.min(n - 8);
            let s8: &[f32; 8] = src[at..at + 8].try_into().expect("8 floats");
            let d8: &mut [f32; 8] = (&mut dst[at..at + 8]).try_into().expect("8 floats");
            *d8 = *s8;
            if at == n - 8 {
                break;
            }
            i += 8;
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v;
        }
    }
}

/// An 8-lane vector on NEON: two 4-lane registers (lanes 0–3, 4–7), with the operations
/// the direct kernels use lane by lane.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
#[derive(Clone, Copy)]
pub(crate) struct Pair(pub core::arch::aarch64::float32x4_t, pub core::arch::aarch64::float32x4_t);

// SAFETY (every method): NEON is part of every aarch64 CPU this is built for; addresses
// as the caller's contract covers.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
impl Pair {
    #[inline(always)]
    pub(crate) fn zero() -> Pair {
        use core::arch::aarch64::vdupq_n_f32;
        // SAFETY: a register operation.
        unsafe { Pair(vdupq_n_f32(0.0), vdupq_n_f32(0.0)) }
    }
    /// The 8 floats at `p`.
    ///
    /// # Safety
    /// `p` points at 8 readable floats.
    #[inline(always)]
    pub(crate) unsafe fn load(p: *const f32) -> Pair {
        use core::arch::aarch64::vld1q_f32;
        // SAFETY: the caller's contract.
        unsafe { Pair(vld1q_f32(p), vld1q_f32(p.add(4))) }
    }
    /// `a · b + c` lane by lane, one rounding (the AVX2 `fmadd`).
    #[inline(always)]
    pub(crate) fn fma(a: Pair, b: Pair, c: Pair) -> Pair {
        use core::arch::aarch64::vfmaq_f32;
        // SAFETY: register operations.
        unsafe { Pair(vfmaq_f32(c.0, a.0, b.0), vfmaq_f32(c.1, a.1, b.1)) }
    }
}
