//! The layouts of the direct stride-1 3×3 convolution kernels (`conv_direct`,
//! `conv_wgrad`): zero-padded planes, packed weights, image groups, and the scratch they
//! take. Plain arithmetic on every target, though the kernels are AVX2-only: a plan made
//! on one machine (the firmware's `build.rs` plans on the build host) sizes the conv
//! scratch as it would on any other.

use super::conv::Conv2d;

/// The kernel size the direct kernels are built for (every "same" conv of the networks).
pub(crate) const DIRECT_K: usize = 3;
/// Output pixels per vector.
pub(crate) const LANES: usize = 8;
/// Output channels per register tile of the forward and input gradient (12 accumulators
/// + 2 loaded vectors + 1 broadcast fill the 16 ymm registers).
pub(crate) const TILE_ROWS: usize = 6;
/// Output vectors a weight-gradient register tile should walk before its lanes are
/// folded: on small maps (8×8 is 8 vectors) one image alone leaves the fold and the `dw`
/// update a large share of the work, so several images share one fold.
const MIN_GROUP_VECTORS: usize = 128;
/// Most images in one weight-gradient group.
const MAX_GROUP: usize = 8;

/// Zero-padded copies of `h × w` planes for a stride-1 convolution with padding `pad`:
/// `pad` zero rows above and below, `pad` zero columns on the left, and on the right
/// enough zero columns that every row holds whole 8-pixel output vectors' taps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// Only the sizes are used where the kernels are not built.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
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

    /// Copies `channels` planes of `src` into `dst` (`channels · plane_len()` floats),
    /// padding included: one `fill(0.0)` of the whole region, then the rows as
    /// fixed-size vector moves (a `memset`/`memmove` call per short row cost more than
    /// the copy itself).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn fill(&self, channels: usize, src: &[f32], dst: &mut [f32]) {
        let (h, w, pad, wp) = (self.h, self.w, self.pad, self.wp);
        let dst = &mut dst[..channels * self.plane_len()];
        dst.fill(0.0);
        for (plane, out) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(self.plane_len())) {
            for (row, o) in plane.chunks_exact(w).zip(out[pad * wp..].chunks_exact_mut(wp)) {
                super::conv::copy_short(&mut o[pad..pad + w], row);
            }
        }
    }
}

/// Floats of a `[row block][channel][tap][TILE_ROWS]` packing of `rows × channels × kk`
/// weights.
pub(crate) const fn packed_len(rows: usize, channels: usize, kk: usize) -> usize {
    rows.div_ceil(TILE_ROWS) * TILE_ROWS * channels * kk
}

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Scratch floats of the forward and input gradient: the padded planes of the input
/// side, then the packed weights, whichever of the two needs more.
const fn forward_scratch_len(s: &Conv2d) -> usize {
    let (plane, kk) = (PaddedPlanes::of(s.h, s.w, s.pad).plane_len(), s.k * s.k);
    max(s.c_in * plane + packed_len(s.c_out, s.c_in, kk), s.c_out * plane + packed_len(s.c_in, s.c_out, kk))
}

/// Scratch floats one image of the weight gradient's group takes: its padded input planes
/// and its `dy` planes (padding 0, rows rounded up to whole vectors).
const fn wgrad_image_len(s: &Conv2d) -> usize {
    s.c_in * PaddedPlanes::of(s.h, s.w, s.pad).plane_len() + s.c_out * PaddedPlanes::of(s.h, s.w, 0).plane_len()
}

/// Images per group of the direct weight gradient, a function of the shape alone (its
/// sums fold once per group, so the bits depend on it): enough for 128 output vectors,
/// at most 8, and no more than fit in the scratch the other convolution calls need
/// anyway (the column matrix, or the forward's planes and packed weights).
pub(crate) const fn group_images(s: &Conv2d) -> usize {
    let vectors = s.h * s.w.div_ceil(LANES);
    let want = if vectors == 0 { 1 } else { MIN_GROUP_VECTORS.div_ceil(vectors) };
    let room = max(s.col_len(), forward_scratch_len(s)) / max(wgrad_image_len(s), 1);
    let g = if want < room { want } else { room };
    if g > MAX_GROUP {
        MAX_GROUP
    } else if g == 0 {
        1
    } else {
        g
    }
}

/// Floats of scratch the direct kernels need, whichever call.
pub(crate) const fn scratch_len(s: &Conv2d) -> usize {
    max(forward_scratch_len(s), group_images(s) * wgrad_image_len(s))
}
