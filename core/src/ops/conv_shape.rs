//! The shape of a convolution layer: output size, buffer lengths, the scratch every
//! convolution call needs (the column matrix, or the direct kernels' padded planes,
//! packed weights and image groups), and which kernel path a shape takes.

use super::conv_layout::{packed_len, PaddedPlanes, PhasePlanes, WgradTiles, WinoTiles, DIRECT_K, LANES};
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
use super::{gemm::GemmKernel, sgemm_kernel};

/// Output vectors a weight-gradient register tile should walk before its lanes are
/// folded: on small maps (8×8 is 8 vectors) one image alone leaves the fold and the `dw`
/// update a large share of the work, so several images share one fold.
const MIN_GROUP_VECTORS: usize = 128;
/// Most images in one weight-gradient group.
const MAX_GROUP: usize = 8;

/// Floats of one block of the column matrix (144 KiB), see [`Conv2d::block_rows`]; also
/// the bound on the input gradient's channel groups.
pub(crate) const COL_BLOCK: usize = 36 * 1024;

/// Shape of a convolution layer on `h × w` inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel size (square).
    pub k: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes, both sides).
    pub pad: usize,
    /// Channel groups (PyTorch's `groups`, ≥ 1, dividing both channel counts): output
    /// channels of group `g` see only the input channels of group `g`.
    pub groups: usize,
}

impl Conv2d {
    /// Output height, PyTorch's floor formula.
    pub const fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Output width.
    pub const fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Input floats per image.
    pub const fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }
    /// Output floats per image.
    pub const fn out_len(&self) -> usize {
        self.c_out * self.h_out() * self.w_out()
    }
    /// Weight floats, `[c_out][c_in / groups][kh][kw]` as PyTorch stores them.
    pub const fn weight_len(&self) -> usize {
        self.c_out * (self.c_in / self.groups) * self.k * self.k
    }
    /// One group's convolution: `c_in / groups` to `c_out / groups` channels, one group
    /// (the shape itself when `groups` is 1). Group `g` reads input planes
    /// `g·c_in/groups..`, writes output planes `g·c_out/groups..` and owns the `g`-th
    /// `weight_len()` block of the weights.
    pub const fn group(&self) -> Conv2d {
        Conv2d { c_in: self.c_in / self.groups, c_out: self.c_out / self.groups, groups: 1, ..*self }
    }
    /// Whether `groups` is at least 1 and divides both channel counts.
    pub const fn groups_divide(&self) -> bool {
        self.groups >= 1 && self.c_in.is_multiple_of(self.groups) && self.c_out.is_multiple_of(self.groups)
    }
    /// Whether the input already is the column matrix (no im2col needed).
    pub(crate) const fn direct(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
    /// An unpadded 1×1 of stride > 1 (a ResNet's downsampling shortcut).
    pub(crate) const fn strided_1x1(&self) -> bool {
        self.k == 1 && self.stride > 1 && self.pad == 0
    }
    /// A stride-1 convolution whose output has the input's shape (every 3×3 of a ResNet
    /// but the downsampling ones): each column-matrix row is an input plane shifted.
    pub(crate) const fn same(&self) -> bool {
        self.stride == 1 && self.h_out() == self.h && self.w_out() == self.w
    }
    /// Scratch floats any of the three conv calls needs (one image's column matrix,
    /// 0 for a 1×1 stride-1 unpadded conv); independent of the batch size.
    pub const fn scratch_len(&self) -> usize {
        if self.groups > 1 {
            // Every call runs group by group (`conv.rs`).
            return self.group().scratch_len();
        }
        if self.direct() {
            return 0;
        }
        let col = self.col_len();
        // On every target, so plans agree across machines (see `conv_layout`).
        if self.same() && self.k == DIRECT_K {
            let padded = max(direct_scratch_len(self), winograd_scratch_len(self));
            return if padded > col { padded } else { col };
        }
        if self.halves() {
            let planes = self.c_in * PhasePlanes::of(self.h, self.w).plane_len() + packed_len(self.c_out, self.c_in, 9);
            return if planes > col { planes } else { col };
        }
        col
    }
    /// Floats of one image's column matrix.
    pub(crate) const fn col_len(&self) -> usize {
        self.c_in * self.k * self.k * self.h_out() * self.w_out()
    }
    /// Images per group of the direct weight gradient (AVX2, stride-1 "same" 3×3): its
    /// lanes are folded once per group, so its summation order depends on this (see
    /// `core/tests/grad_ops.rs`); a function of the shape alone.
    pub const fn weight_grad_group(&self) -> usize {
        if self.groups > 1 {
            // Grouped convs run image by image and group by group (`conv.rs`).
            return 1;
        }
        group_images(self)
    }
    /// Whether the forward and input gradient run [`super::conv_direct`]'s kernels, and
    /// the weight gradient [`super::conv_wgrad`]'s.
    #[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
    pub(crate) fn runs_direct(&self) -> bool {
        // The kernels of the set that runs: AVX2 (or AVX-512) on x86, NEON on aarch64.
        self.groups == 1 && self.same() && self.k == DIRECT_K && sgemm_kernel() >= GemmKernel::Neon
    }
    #[cfg(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))))]
    pub(crate) fn runs_direct(&self) -> bool {
        false
    }
    /// A stride-1 "same" 3×3 that [`super::conv_winograd`] takes: even height, width a
    /// multiple of 8 up to 128 (its output rows are whole 8-float vectors, and a row of
    /// tiles across its images fits its tables), 8 or more channels each side (fewer leave
    /// its products too short to pay for the transforms).
    pub(crate) const fn winograd(&self) -> bool {
        self.groups == 1
            && self.same()
            && self.k == DIRECT_K
            && self.pad == 1
            && self.h.is_multiple_of(2)
            && self.w.is_multiple_of(8)
            && self.w <= 128
            && self.c_in >= 8
            && self.c_out >= 8
    }
    /// Whether the forward and input gradient run [`super::conv_winograd`] (and the
    /// weight gradient [`super::conv_winograd_wgrad`]): a [`Conv2d::winograd`] shape where
    /// the direct kernels run.
    #[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
    pub(crate) fn runs_winograd(&self) -> bool {
        self.winograd() && self.runs_direct()
    }
    /// A stride-2 3×3 with padding 1 (a ResNet's downsampling 3×3).
    pub(crate) const fn halves(&self) -> bool {
        self.groups == 1 && self.stride == 2 && self.k == DIRECT_K && self.pad == 1
    }
    /// Whether the forward runs [`super::conv_direct`]'s kernels: every conv whose
    /// gradients do ([`Conv2d::runs_direct`]), and the stride-2 3×3s, whose gradients
    /// take the column matrix.
    #[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
    pub(crate) fn runs_direct_forward(&self) -> bool {
        self.runs_direct() || (self.halves() && sgemm_kernel() >= GemmKernel::Neon)
    }
    #[cfg(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))))]
    pub(crate) fn runs_direct_forward(&self) -> bool {
        false
    }
    /// Forward FLOPs per image (2 per multiply-add), for throughput reports.
    pub const fn flops(&self) -> usize {
        2 * self.weight_len() * self.h_out() * self.w_out()
    }
    /// Output rows per block of the forward and weight-gradient column matrix: the block
    /// (`c_in·k·k × rows·w_out` floats) is kept to [`COL_BLOCK`] floats so it is still in
    /// L2 when the GEMM packs it right after im2col wrote it (a whole 16-channel 32×32
    /// image's matrix, 576 KiB, is not).
    pub(crate) fn block_rows(&self) -> usize {
        let per_row = self.c_in * self.k * self.k * self.w_out();
        (COL_BLOCK / per_row.max(1)).clamp(1, self.h_out().max(1))
    }
    /// Output columns `ox` whose input column `ox·stride + kw − pad` lies inside the row.
    pub(crate) fn valid_cols(&self, kw: usize) -> (usize, usize) {
        let wo = self.w_out();
        let lo = if self.pad > kw { (self.pad - kw).div_ceil(self.stride) } else { 0 };
        let hi = if self.w + self.pad > kw { (self.w + self.pad - kw).div_ceil(self.stride).min(wo) } else { 0 };
        (lo.min(hi), hi)
    }
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
const fn group_images(s: &Conv2d) -> usize {
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

/// Floats of scratch the Winograd forward, input gradient or weight gradient needs (0 for
/// other shapes).
const fn winograd_scratch_len(s: &Conv2d) -> usize {
    if !s.winograd() {
        return 0;
    }
    let (f, b) = (WinoTiles::of(s.c_in, s.c_out, s.h, s.w), WinoTiles::of(s.c_out, s.c_in, s.h, s.w));
    let wgrad = WgradTiles::of(s.c_in, s.c_out, s.h, s.w);
    max(max(f.scratch_len(), b.scratch_len()), wgrad.scratch_len())
}

/// Floats of scratch the direct kernels need, whichever call.
const fn direct_scratch_len(s: &Conv2d) -> usize {
    max(forward_scratch_len(s), group_images(s) * wgrad_image_len(s))
}
