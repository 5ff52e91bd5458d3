//! The ImageNet transforms of torchvision, on decoded RGB images: training
//! `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` + horizontal flip, and
//! evaluation `Resize(size·256/224)` + `CenterCrop(size)`, both followed by
//! `ToTensor` + `Normalize(mean, std)`.
//!
//! Semantics follow torchvision (`transforms.py`, `functional.py`):
//! - [`random_resized_crop_box`] is `RandomResizedCrop.get_params`: up to 10 tries of a
//!   target area `area·U(scale)` and an aspect ratio `exp(U(ln ratio))`, `w =
//!   round(√(area·ratio))`, `h = round(√(area/ratio))` (Python's round: ties to even),
//!   accepted if `0 < w ≤ W` and `0 < h ≤ H`, with the corner `i ~ U{0..H−h}`, `j ~
//!   U{0..W−w}`; else the centre crop of the largest box whose ratio is clamped to the
//!   range. The draws come from the project's [`Rng`] (not torch's generator), in this
//!   order per try: area (`uniform_f64`), ratio (`uniform_f64`), then `below` for `i` and
//!   `j` of the accepted try; the flip is one `coin()` after the box.
//! - [`resize_shorter`] is `_compute_resized_output_size` for an `int` size: the shorter
//!   side becomes `size`, the longer `⌊size·long/short⌋`.
//! - [`center_crop_box`] is `center_crop`: top `round((H−h)/2)`, left `round((W−w)/2)`
//!   with ties to even; a crop larger than the image reads zeros outside it (torchvision
//!   pads with 0).
//! - The resize is bilinear with antialiasing, the filter of PIL's `Image.resize` and of
//!   `torch.nn.functional.interpolate(..., antialias=True)` alike: output pixel `x` has
//!   its centre at `(x + ½)·s` in the input (`s = in/out`), a triangle filter of support
//!   `max(s, 1)` weights the input pixels whose centres fall within it, the weights are
//!   normalised to sum 1; rows first, then columns. It runs in `f32` on the `u8`
//!   pixels with no rounding in between, so it is torchvision's tensor path on a float
//!   image; PIL rounds to `u8` after each pass, which moves a pixel by at most about one
//!   grey level (the test against torchvision measures both).

use hpff_core::rng::Rng;

/// `RandomResizedCrop`'s defaults.
pub const SCALE: (f64, f64) = (0.08, 1.0);
pub const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// torchvision's ImageNet normalization.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A decoded RGB image: `h × w` pixels, HWC.
#[derive(Clone, Copy, Debug)]
pub struct Rgb<'a> {
    pub px: &'a [u8],
    pub h: usize,
    pub w: usize,
}

/// Per-channel normalization of `p/255`: `(p/255 − mean[c]) / std[c]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Norm {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// torchvision's ImageNet normalization.
pub const IMAGENET: Norm = Norm { mean: IMAGENET_MEAN, std: IMAGENET_STD };

/// A crop box: top row `i`, left column `j`, height `h`, width `w` (torchvision's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    pub i: i64,
    pub j: i64,
    pub h: usize,
    pub w: usize,
}

/// Python's `round` (ties to even) of a non-negative value, as an integer.
fn round_even(v: f64) -> i64 {
    v.round_ties_even() as i64
}

/// `RandomResizedCrop.get_params` for an image of `height × width` (see the module docs
/// for the order of the draws).
pub fn random_resized_crop_box(
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut Rng,
) -> CropBox {
    let (hh, ww) = (height as f64, width as f64);
    let area = hh * ww;
    let (lr0, lr1) = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * (scale.0 + (scale.1 - scale.0) * rng.uniform_f64());
        let aspect = (lr0 + (lr1 - lr0) * rng.uniform_f64()).exp();
        let w = round_even((target * aspect).sqrt());
        let h = round_even((target / aspect).sqrt());
        if 0 < w && w as usize <= width && 0 < h && h as usize <= height {
            let (h, w) = (h as usize, w as usize);
            let i = rng.below((height - h + 1) as u64) as i64;
            let j = rng.below((width - w + 1) as u64) as i64;
            return CropBox { i, j, h, w };
        }
    }
    let in_ratio = ww / hh;
    let (lo, hi) = (ratio.0.min(ratio.1), ratio.0.max(ratio.1));
    let (h, w) = if in_ratio < lo {
        ((round_even(ww / lo) as usize).max(1), width)
    } else if in_ratio > hi {
        (height, (round_even(hh * hi) as usize).max(1))
    } else {
        (height, width)
    };
    CropBox { i: ((height - h.min(height)) / 2) as i64, j: ((width - w.min(width)) / 2) as i64, h, w }
}

/// `(h, w)` after torchvision's `Resize(size)` (an `int`: the shorter side) of `h × w`.
pub fn resize_shorter(h: usize, w: usize, size: usize) -> (usize, usize) {
    if w <= h {
        (size * h / w, size)
    } else {
        (size, size * w / h)
    }
}

/// torchvision's `center_crop` box of `ch × cw` in `h × w` (negative corners when the
/// crop is larger: the outside reads zeros).
pub fn center_crop_box(h: usize, w: usize, ch: usize, cw: usize) -> CropBox {
    let off = |n: usize, c: usize| round_even((n as f64 - c as f64) / 2.0);
    CropBox { i: off(h, ch), j: off(w, cw), h: ch, w: cw }
}

/// The evaluation resize of a `size` crop: torchvision's ImageNet recipe, 256 for 224,
/// scaled to other sizes as `⌊size·256/224⌋`.
pub fn eval_resize(size: usize) -> usize {
    size * 256 / 224
}

/// Antialiased bilinear weights of one axis: for each of `out` outputs, the first input
/// index and the normalised weights over `in_len` inputs (see the module docs).
#[derive(Debug, Default)]
pub struct Taps {
    pub first: Vec<usize>,
    pub count: Vec<usize>,
    /// `out × max_count` weights, row `x` holding output `x`'s.
    pub w: Vec<f32>,
    pub max_count: usize,
}

impl Taps {
    /// Weights resizing `in_len` pixels to `out` pixels.
    pub fn new(in_len: usize, out: usize) -> Taps {
        let scale = in_len as f64 / out as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // the triangle's half-width (1) times the scale
        let max_count = (support.ceil() as usize) * 2 + 1;
        let mut t = Taps { first: vec![0; out], count: vec![0; out], w: vec![0.0; out * max_count], max_count };
        let mut ws = vec![0f64; max_count];
        for x in 0..out {
            let center = (x as f64 + 0.5) * scale;
            // C's truncating casts, as PIL and PyTorch write them.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_len as i64).max(xmin as i64) as usize;
            let n = (xmax - xmin).min(max_count);
            let mut total = 0.0;
            for (k, wk) in ws[..n].iter_mut().enumerate() {
                let d = ((k + xmin) as f64 - center + 0.5) / filterscale;
                *wk = (1.0 - d.abs()).max(0.0);
                total += *wk;
            }
            for (k, wk) in ws[..n].iter().enumerate() {
                t.w[x * max_count + k] = if total != 0.0 { (wk / total) as f32 } else { 0.0 };
            }
            t.first[x] = xmin;
            t.count[x] = n;
        }
        t
    }
}

/// Scratch of one worker: the horizontal pass's output rows and one output row.
#[derive(Debug, Default)]
pub struct Scratch {
    rows: Vec<f32>,
    acc: Vec<f32>,
}

impl Scratch {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.rows.capacity() + self.acc.capacity()) * 4
    }
}

/// One axis of a resampling: the filter from the source span to a resized length, the
/// source offset of that span, and which resized indices the output window shows.
struct Axis {
    taps: Taps,
    /// Resized length (indices outside `0..len` of the window read zeros).
    len: usize,
    /// Resized index of the window's first output.
    win: i64,
    /// Source index of the span's first pixel (outside the image reads zeros).
    src: i64,
}

impl Axis {
    /// The resized index shown at output `o`, if inside.
    fn at(&self, o: usize) -> Option<usize> {
        let v = self.win + o as i64;
        (0..self.len as i64).contains(&v).then_some(v as usize)
    }
}

/// Resamples `px` (HWC RGB, `h × w`) along `ay`, `ax` into the `out × out` window, flips
/// it left–right if `flip`, normalises it and writes CHW `dst`: rows first (only the
/// source rows the window reads, only its columns), then columns.
fn resample(
    img: Rgb,
    ay: &Axis,
    ax: &Axis,
    out: usize,
    flip: bool,
    norm: &Norm,
    scratch: &mut Scratch,
    dst: &mut [f32],
) {
    let Rgb { px, h, w } = img;
    let (mean, std) = (&norm.mean, &norm.std);
    let mut acc = std::mem::take(&mut scratch.acc);
    assert_eq!(px.len(), h * w * 3, "resample: pixels do not match {h}×{w}×3");
    assert_eq!(dst.len(), 3 * out * out, "resample: dst is not 3×{out}×{out}");
    let (ty, tx) = (&ay.taps, &ax.taps);
    // The span rows (relative to ay.src) the window's rows read.
    let (mut r0, mut r1) = (usize::MAX, 0);
    for y in 0..out {
        if let Some(ry) = ay.at(y) {
            r0 = r0.min(ty.first[ry]);
            r1 = r1.max(ty.first[ry] + ty.count[ry]);
        }
    }
    let r0 = r0.min(r1);
    // Horizontal pass, in [0, 255].
    let rows = &mut scratch.rows;
    rows.clear();
    rows.resize((r1 - r0) * out * 3, 0.0);
    for r in r0..r1 {
        let sy = ay.src + r as i64;
        if !(0..h as i64).contains(&sy) {
            continue; // zeros
        }
        let src = &px[sy as usize * w * 3..(sy as usize + 1) * w * 3];
        let drow = &mut rows[(r - r0) * out * 3..(r - r0 + 1) * out * 3];
        for x in 0..out {
            let Some(rx) = ax.at(x) else { continue };
            let (f, n) = (tx.first[rx], tx.count[rx]);
            let mut a = [0f32; 3];
            for (k, &wk) in tx.w[rx * tx.max_count..rx * tx.max_count + n].iter().enumerate() {
                let sx = ax.src + (f + k) as i64;
                if (0..w as i64).contains(&sx) {
                    let p = &src[sx as usize * 3..sx as usize * 3 + 3];
                    a[0] += wk * p[0] as f32;
                    a[1] += wk * p[1] as f32;
                    a[2] += wk * p[2] as f32;
                }
            }
            let dx = if flip { out - 1 - x } else { x };
            drow[dx * 3..dx * 3 + 3].copy_from_slice(&a);
        }
    }
    // Vertical pass and normalization, into CHW.
    let plane = out * out;
    let scale: [f32; 3] = core::array::from_fn(|c| 1.0 / (255.0 * std[c]));
    let shift: [f32; 3] = core::array::from_fn(|c| mean[c] / std[c]);
    acc.clear();
    acc.resize(out * 3, 0.0);
    for y in 0..out {
        acc.fill(0.0);
        if let Some(ry) = ay.at(y) {
            let (f, n) = (ty.first[ry], ty.count[ry]);
            for k in 0..n {
                let wk = ty.w[ry * ty.max_count + k];
                let srow = &rows[(f + k - r0) * out * 3..(f + k - r0 + 1) * out * 3];
                for (a, &s) in acc.iter_mut().zip(srow) {
                    *a += wk * s;
                }
            }
        }
        for x in 0..out {
            for c in 0..3 {
                dst[c * plane + y * out + x] = acc[x * 3 + c] * scale[c] - shift[c];
            }
        }
    }
    scratch.acc = acc;
}

/// torchvision's `resized_crop` + optional `hflip` + normalization: resizes the `crop`
/// of the HWC RGB image `px` (`h × w`; outside the image reads 0) to `out × out` with
/// the antialiased bilinear filter, flips it left–right if `flip`, and normalises each
/// value `p/255` as `(p/255 − mean[c]) / std[c]` into CHW `dst`.
pub fn resized_crop(
    img: Rgb,
    crop: CropBox,
    out: usize,
    flip: bool,
    norm: &Norm,
    scratch: &mut Scratch,
    dst: &mut [f32],
) {
    let ay = Axis { taps: Taps::new(crop.h, out), len: out, win: 0, src: crop.i };
    let ax = Axis { taps: Taps::new(crop.w, out), len: out, win: 0, src: crop.j };
    resample(img, &ay, &ax, out, flip, norm, scratch, dst);
}

/// The training transform of one image: a [`random_resized_crop_box`], a coin for the
/// flip, then [`resized_crop`].
pub fn train_transform(img: Rgb, out: usize, norm: &Norm, rng: &mut Rng, scratch: &mut Scratch, dst: &mut [f32]) {
    let b = random_resized_crop_box(img.h, img.w, SCALE, RATIO, rng);
    let flip = rng.coin();
    resized_crop(img, b, out, flip, norm, scratch, dst);
}

/// The evaluation transform of one image: resize the shorter side to
/// [`eval_resize`]`(out)`, centre-crop `out × out` (torchvision resizes the whole image and
/// crops the result; only the cropped outputs are computed here, with the same weights).
pub fn eval_transform(img: Rgb, out: usize, norm: &Norm, scratch: &mut Scratch, dst: &mut [f32]) {
    let (h, w) = (img.h, img.w);
    let (rh, rw) = resize_shorter(h, w, eval_resize(out));
    let b = center_crop_box(rh, rw, out, out);
    let ay = Axis { taps: Taps::new(h, rh), len: rh, win: b.i, src: 0 };
    let ax = Axis { taps: Taps::new(w, rw), len: rw, win: b.j, src: 0 };
    resample(img, &ay, &ax, out, false, norm, scratch, dst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    fn fixture() -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imagenet_transforms.safetensors");
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (made by tools/transforms/make_fixture.py)", p.display()))
    }

    fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
        st.tensor(name).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    fn u8s(st: &SafeTensors, name: &str) -> Vec<u8> {
        st.tensor(name).unwrap().data().to_vec()
    }

    /// PIL's u8 HWC output as the pipeline's normalized CHW values.
    fn pil_normalized(hwc: &[u8], out: usize) -> Vec<f32> {
        let plane = out * out;
        let mut v = vec![0f32; 3 * plane];
        for (k, p) in hwc.chunks_exact(3).enumerate() {
            for c in 0..3 {
                v[c * plane + k] = (p[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
        v
    }

    /// Largest |a − b| in units of one grey level (1/255 before normalization).
    fn max_err_levels(a: &[f32], b: &[f32], out: usize) -> f32 {
        assert_eq!(a.len(), b.len());
        let plane = out * out;
        a.iter()
            .zip(b)
            .enumerate()
            .map(|(k, (x, y))| (x - y).abs() * IMAGENET_STD[k / plane] * 255.0)
            .fold(0.0, f32::max)
    }

    fn run(px: &[u8], h: usize, w: usize, bx: Option<CropBox>, flip: bool, out: usize) -> Vec<f32> {
        let mut dst = vec![0f32; 3 * out * out];
        let mut s = Scratch::default();
        let img = Rgb { px, h, w };
        match bx {
            Some(b) => resized_crop(img, b, out, flip, &IMAGENET, &mut s, &mut dst),
            None => eval_transform(img, out, &IMAGENET, &mut s, &mut dst),
        }
        dst
    }

    #[test]
    fn matches_torchvision_on_the_fixture() {
        let bytes = fixture();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        let cases: Vec<serde_json::Value> = serde_json::from_str(&meta["cases"]).unwrap();
        let (mut worst_tensor, mut worst_pil) = (0f32, 0f32);
        for c in &cases {
            let name = c["name"].as_str().unwrap();
            let g = |k: &str| c[k].as_u64().unwrap() as usize;
            let (h, w, out) = (g("h"), g("w"), g("out"));
            let flip = c["flip"].as_bool().unwrap();
            let bx = c["box"].as_array().map(|b| {
                let v: Vec<i64> = b.iter().map(|x| x.as_i64().unwrap()).collect();
                CropBox { i: v[0], j: v[1], h: v[2] as usize, w: v[3] as usize }
            });
            let px = u8s(&st, &format!("{name}.image"));
            let got = run(&px, h, w, bx, flip, out);
            if st.tensor(&format!("{name}.tensor")).is_ok() {
                // torchvision's float path: the same arithmetic up to f32 rounding.
                let e = max_err_levels(&got, &f32s(&st, &format!("{name}.tensor")), out);
                assert!(e < 2e-3, "{name}: tensor path differs by {e} grey levels");
                worst_tensor = worst_tensor.max(e);
            }
            // PIL rounds to u8 after each of its two passes: at most about one level apart.
            let e = max_err_levels(&got, &pil_normalized(&u8s(&st, &format!("{name}.pil")), out), out);
            assert!(e <= 1.01, "{name}: PIL path differs by {e} grey levels");
            worst_pil = worst_pil.max(e);
        }
        // Through a JPEG: the `image` crate's decoder against PIL's libjpeg.
        let jpeg = u8s(&st, "jpeg.bytes");
        let img = image::load_from_memory(&jpeg).unwrap().into_rgb8();
        let (h, w) = (img.height() as usize, img.width() as usize);
        let ours = img.into_raw();
        let theirs = u8s(&st, "jpeg.decoded");
        let dec = ours.iter().zip(&theirs).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        let mean_dec = ours.iter().zip(&theirs).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / ours.len() as f64;
        let bx = Some(CropBox { i: 12, j: 9, h: 100, w: 80 });
        let e_rrc = max_err_levels(&run(&ours, h, w, bx, true, 64), &pil_normalized(&u8s(&st, "jpeg.rrc"), 64), 64);
        let e_eval =
            max_err_levels(&run(&ours, h, w, None, false, 64), &pil_normalized(&u8s(&st, "jpeg.eval"), 64), 64);
        eprintln!(
            "vs torchvision: tensor path max {worst_tensor:.2e} grey levels, PIL path max {worst_pil:.3}; \
             JPEG decode max {dec} (mean {mean_dec:.3}) levels, after the transforms max {e_rrc:.2} (crop) / {e_eval:.2} (eval)"
        );
        // Decoders differ in IDCT and chroma upsampling (10 levels at worst on this noisy
        // image, 0.39 on average); the resize averages that down to about 2.5.
        assert!(dec <= 12 && mean_dec < 1.0, "decoders differ by {dec} (mean {mean_dec})");
        assert!(e_rrc <= 4.0 && e_eval <= 4.0, "{e_rrc} {e_eval}");
    }

    #[test]
    fn crop_box_semantics() {
        // A 1-row image can never hold a box of 8% of its area with ratio ≤ 4/3: the
        // fallback is the centre crop with the ratio clamped to 4/3.
        let mut r = Rng::new(0);
        assert_eq!(random_resized_crop_box(1, 1000, SCALE, RATIO, &mut r), CropBox { i: 0, j: 499, h: 1, w: 1 });
        assert_eq!(random_resized_crop_box(1000, 3, SCALE, RATIO, &mut r), CropBox { i: 498, j: 0, h: 4, w: 3 });
        // In range: every box fits, the ratio and area are within bounds (up to rounding).
        for seed in 0..500 {
            let mut r = Rng::new(seed);
            let (h, w) = (50 + seed as usize % 300, 40 + (seed as usize * 7) % 400);
            let b = random_resized_crop_box(h, w, SCALE, RATIO, &mut r);
            assert!(b.i >= 0 && b.j >= 0 && b.i as usize + b.h <= h && b.j as usize + b.w <= w, "{b:?} in {h}×{w}");
            let again = random_resized_crop_box(h, w, SCALE, RATIO, &mut Rng::new(seed));
            assert_eq!(b, again, "seeded");
        }
        // Python's round: ties to even.
        assert_eq!((round_even(0.5), round_even(1.5), round_even(2.5)), (0, 2, 2));
        assert_eq!(center_crop_box(257, 256, 224, 224), CropBox { i: 16, j: 16, h: 224, w: 224 });
        assert_eq!(center_crop_box(259, 256, 224, 224).i, 18); // round(17.5) = 18
        assert_eq!(center_crop_box(261, 256, 224, 224).i, 18); // round(18.5) = 18
        assert_eq!(resize_shorter(375, 500, 256), (256, 341));
        assert_eq!(resize_shorter(500, 375, 256), (341, 256));
        assert_eq!((eval_resize(224), eval_resize(64), eval_resize(32)), (256, 73, 36));
    }

    #[test]
    fn flat_images_stay_flat_and_flip_mirrors() {
        let (h, w) = (37, 53);
        let px: Vec<u8> = (0..h * w).flat_map(|_| [10u8, 128, 250]).collect();
        for out in [8, 64] {
            let v = run(&px, h, w, Some(CropBox { i: 3, j: 4, h: 20, w: 31 }), false, out);
            for c in 0..3 {
                let want = ([10.0, 128.0, 250.0][c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
                assert!(v[c * out * out..(c + 1) * out * out].iter().all(|x| (x - want).abs() < 1e-4));
            }
        }
        let px: Vec<u8> = (0..h * w).flat_map(|k| [(k % w) as u8 * 4, (k / w) as u8, 7]).collect();
        let b = Some(CropBox { i: 2, j: 5, h: 30, w: 40 });
        let (a, f) = (run(&px, h, w, b, false, 16), run(&px, h, w, b, true, 16));
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(a[y * 16 + x], f[y * 16 + 15 - x]);
            }
        }
    }
}
