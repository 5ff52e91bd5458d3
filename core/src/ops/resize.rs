//! Bilinear resize (`F.interpolate(mode="bilinear", align_corners=True)`) and crop, on a
//! rectangular window of a feature map: patch feature fusion resizes patches of a
//! module's output to a fixed size without copying them out first.

/// A window of a `c × h × w` map, and the `oh × ow` size it is resized to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Channels.
    pub c: usize,
    /// Full map height.
    pub h: usize,
    /// Full map width.
    pub w: usize,
    /// First window row.
    pub y0: usize,
    /// First window column.
    pub x0: usize,
    /// Window rows.
    pub ph: usize,
    /// Window columns.
    pub pw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Window {
    /// The whole `h × w` map as the window (a plain resize).
    pub const fn full(c: usize, h: usize, w: usize, oh: usize, ow: usize) -> Self {
        Window { c, h, w, y0: 0, x0: 0, ph: h, pw: w, oh, ow }
    }
    /// Output floats per image.
    pub const fn out_len(&self) -> usize {
        self.c * self.oh * self.ow
    }
    /// Full-map floats per image (the input's and input gradient's stride).
    pub const fn map_len(&self) -> usize {
        self.c * self.h * self.w
    }
    fn check(&self) {
        debug_assert!(self.ph >= 1 && self.pw >= 1);
        debug_assert!(self.y0 + self.ph <= self.h && self.x0 + self.pw <= self.w);
    }
}

/// Source taps of output index `o` along one axis: `(i0, i1, λ0, λ1)` with PyTorch's
/// align_corners arithmetic (f32 scale `(in−1)/(out−1)`, 0 for a 1-pixel output).
#[inline]
fn taps(inp: usize, out: usize, o: usize) -> (usize, usize, f32, f32) {
    let scale = if out > 1 { (inp - 1) as f32 / (out - 1) as f32 } else { 0.0 };
    let src = scale * o as f32;
    let i0 = (src as usize).min(inp - 1);
    let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
    let l1 = (src - i0 as f32).clamp(0.0, 1.0);
    (i0, i1, 1.0 - l1, l1)
}

/// Output columns whose interpolation taps are computed at once (a stack table; wider
/// outputs are done in several column blocks).
const TAP_BLOCK: usize = 128;

/// Fills `table` with the column taps of output columns `ox0..ox0 + table.len()`.
fn col_taps(s: &Window, ox0: usize, table: &mut [(usize, usize, f32, f32)]) {
    for (i, t) in table.iter_mut().enumerate() {
        *t = taps(s.pw, s.ow, ox0 + i);
    }
}

/// The horizontal interpolations of the last two source rows [`bilinear_forward`] used.
struct RowCache {
    row: [usize; 2],
    val: [[f32; TAP_BLOCK]; 2],
}

impl RowCache {
    /// The values of rows `r0 ≤ r1`, computing missing ones with `fill`. Output rows
    /// only move down the source, so the slot to reuse is the one holding neither
    /// (the older row, never needed again).
    fn get(
        &mut self,
        r0: usize,
        r1: usize,
        mut fill: impl FnMut(usize, &mut [f32; TAP_BLOCK]),
    ) -> (&[f32; TAP_BLOCK], &[f32; TAP_BLOCK]) {
        for r in [r0, r1] {
            if !self.row.contains(&r) {
                let slot = if self.row[0] == r0 || self.row[0] == r1 { 1 } else { 0 };
                fill(r, &mut self.val[slot]);
                self.row[slot] = r;
            }
        }
        let at = |r: usize| if self.row[0] == r { 0 } else { 1 };
        (&self.val[at(r0)], &self.val[at(r1)])
    }
}

/// Bilinear resize of the window of each of `n` maps to `oh × ow` (overwrites `y`).
pub fn bilinear_forward(s: &Window, n: usize, x_full: &[f32], y: &mut [f32]) {
    s.check();
    debug_assert!(x_full.len() >= n * s.map_len() && y.len() >= n * s.out_len());
    let plane_in = s.h * s.w;
    let mut table = [(0usize, 0usize, 0f32, 0f32); TAP_BLOCK];
    for ox0 in (0..s.ow).step_by(TAP_BLOCK) {
        let cols = &mut table[..TAP_BLOCK.min(s.ow - ox0)];
        col_taps(s, ox0, cols);
        for img in 0..n {
            for ch in 0..s.c {
                let xp = &x_full[img * s.map_len() + ch * plane_in..][..plane_in];
                let yp = &mut y[img * s.out_len() + ch * s.oh * s.ow..][..s.oh * s.ow];
                // Each source row's horizontal interpolation is computed once and kept while
                // output rows still use it (upsampling reuses a row for several output
                // rows); the output is the same expression of the same values as before.
                let mut rows = RowCache { row: [usize::MAX; 2], val: [[0.0; TAP_BLOCK]; 2] };
                for (oy, yrow) in yp.chunks_exact_mut(s.ow).enumerate() {
                    let (r0, r1, h0, h1) = taps(s.ph, s.oh, oy);
                    let horizontal = |r: usize, out: &mut [f32; TAP_BLOCK]| {
                        let row = &xp[(s.y0 + r) * s.w + s.x0..][..s.pw];
                        for (o, &(c0, c1, w0, w1)) in out.iter_mut().zip(cols.iter()) {
                            *o = w0 * row[c0] + w1 * row[c1];
                        }
                    };
                    let (a, b) = rows.get(r0, r1, horizontal);
                    for ((o, &a), &b) in yrow[ox0..].iter_mut().zip(&a[..cols.len()]).zip(&b[..cols.len()]) {
                        *o = h0 * a + h1 * b;
                    }
                }
            }
        }
    }
}

/// Adds the gradient of [`bilinear_forward`] into the window of `dx_full` (the rest of
/// the map is untouched, so overlapping or tiled windows accumulate).
pub fn bilinear_accumulate_backward(s: &Window, n: usize, dy: &[f32], dx_full: &mut [f32]) {
    s.check();
    debug_assert!(dx_full.len() >= n * s.map_len() && dy.len() >= n * s.out_len());
    let plane_in = s.h * s.w;
    let mut table = [(0usize, 0usize, 0f32, 0f32); TAP_BLOCK];
    for ox0 in (0..s.ow).step_by(TAP_BLOCK) {
        let cols = &mut table[..TAP_BLOCK.min(s.ow - ox0)];
        col_taps(s, ox0, cols);
        for img in 0..n {
            for ch in 0..s.c {
                let dxp = &mut dx_full[img * s.map_len() + ch * plane_in..][..plane_in];
                let gp = &dy[img * s.out_len() + ch * s.oh * s.ow..][..s.oh * s.ow];
                for (oy, grow) in gp.chunks_exact(s.ow).enumerate() {
                    let (r0, r1, h0, h1) = taps(s.ph, s.oh, oy);
                    let (b0, b1) = ((s.y0 + r0) * s.w + s.x0, (s.y0 + r1) * s.w + s.x0);
                    for (&g, &(c0, c1, w0, w1)) in grow[ox0..].iter().zip(cols.iter()) {
                        dxp[b0 + c0] += h0 * w0 * g;
                        dxp[b0 + c1] += h0 * w1 * g;
                        dxp[b1 + c0] += h1 * w0 * g;
                        dxp[b1 + c1] += h1 * w1 * g;
                    }
                }
            }
        }
    }
}

/// Copies the window of each map out (requires `oh == ph`, `ow == pw`); overwrites `y`.
pub fn crop_forward(s: &Window, n: usize, x_full: &[f32], y: &mut [f32]) {
    s.check();
    assert!(s.oh == s.ph && s.ow == s.pw, "crop: output size must equal the window");
    let plane_in = s.h * s.w;
    for img in 0..n {
        for ch in 0..s.c {
            let xp = &x_full[img * s.map_len() + ch * plane_in..][..plane_in];
            let yp = &mut y[img * s.out_len() + ch * s.oh * s.ow..][..s.oh * s.ow];
            for (r, yrow) in yp.chunks_exact_mut(s.ow).enumerate() {
                yrow.copy_from_slice(&xp[(s.y0 + r) * s.w + s.x0..][..s.pw]);
            }
        }
    }
}

/// Adds the gradient of [`crop_forward`] into the window of `dx_full`.
pub fn crop_accumulate_backward(s: &Window, n: usize, dy: &[f32], dx_full: &mut [f32]) {
    s.check();
    assert!(s.oh == s.ph && s.ow == s.pw, "crop: output size must equal the window");
    let plane_in = s.h * s.w;
    for img in 0..n {
        for ch in 0..s.c {
            let dxp = &mut dx_full[img * s.map_len() + ch * plane_in..][..plane_in];
            let gp = &dy[img * s.out_len() + ch * s.oh * s.ow..][..s.oh * s.ow];
            for (r, grow) in gp.chunks_exact(s.ow).enumerate() {
                let d = &mut dxp[(s.y0 + r) * s.w + s.x0..][..s.pw];
                for (a, &g) in d.iter_mut().zip(grow) {
                    *a += g;
                }
            }
        }
    }
}
