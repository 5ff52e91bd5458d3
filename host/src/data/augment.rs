//! Seeded augmentation (pad, random crop, horizontal flip) and per-channel
//! normalization of `u8` images into `f32` NCHW batches.
//!
//! Random draws per image, in this order: crop row offset `below(H + 2·pad − crop + 1)`,
//! crop column offset `below(W + 2·pad − crop + 1)`, then `coin()` for the flip if
//! `flip` is on. A batch's draws are made image by image in batch order, so a batch is
//! a pure function of the generator's state.

use hpff_core::rng::Rng;
use serde::{Deserialize, Serialize};

use super::dataset::Dataset;

/// Pad by `pad` pixels on every side (mirror padding without repeating the edge, as
/// PyTorch's `reflect`, if `reflect`; zeros otherwise), take a random `crop × crop`
/// window (`crop == 0`: the input's own `h × w`), and flip it left–right with
/// probability ½ if `flip`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    pub pad: usize,
    pub reflect: bool,
    pub crop: usize,
    pub flip: bool,
}

impl Augment {
    /// Output height and width for an `h × w` input.
    pub fn output_hw(&self, h: usize, w: usize) -> (usize, usize) {
        if self.crop == 0 {
            (h, w)
        } else {
            (self.crop, self.crop)
        }
    }
}

/// Per-channel normalization of `pixel / 255`: `(v − mean[c]) / std[c]`. A single
/// value applies to every channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalize {
    /// The same mean and std for every channel.
    pub fn uniform(mean: f32, std: f32) -> Normalize {
        Normalize { mean: vec![mean], std: vec![std] }
    }

    /// torchvision's ImageNet mean and std.
    pub fn imagenet() -> Normalize {
        Normalize { mean: super::transform::IMAGENET_MEAN.to_vec(), std: super::transform::IMAGENET_STD.to_vec() }
    }

    /// `value → normalized f32` for each of the 256 byte values of channel `ch`.
    fn table(&self, ch: usize) -> [f32; 256] {
        let pick = |v: &[f32]| if v.len() == 1 { v[0] } else { v[ch] };
        let (m, s) = (pick(&self.mean), pick(&self.std));
        let mut t = [0f32; 256];
        for (v, out) in t.iter_mut().enumerate() {
            *out = (v as f32 / 255.0 - m) / s;
        }
        t
    }
}

/// The `(c, h, w)` of one image of a batch drawn from `ds` with `aug`.
pub fn batch_image_shape(ds: &Dataset, aug: Option<&Augment>) -> (usize, usize, usize) {
    let (h, w) = aug.map_or((ds.h, ds.w), |a| a.output_hw(ds.h, ds.w));
    (ds.c, h, w)
}

/// Source index of padded coordinate `p` (may be outside the image) in `0..n`, or
/// `None` for a zero-padding pixel.
fn source(p: isize, n: usize, reflect: bool) -> Option<usize> {
    if (0..n as isize).contains(&p) {
        return Some(p as usize);
    }
    if !reflect {
        return None;
    }
    if n == 1 {
        return Some(0);
    }
    let period = 2 * (n as isize - 1);
    let m = p.rem_euclid(period);
    Some(if m < n as isize { m } else { period - m } as usize)
}

/// Writes images `idx` of `ds`, augmented with `aug` (if any) and normalized with
/// `norm`, into `x` (NCHW, `idx.len() × c × h × w` with the shape of
/// [`batch_image_shape`]) and their labels into `y`. Row `k`'s crop and flip come from
/// its own generator `rng(k)`: an image's augmentation does not depend on which batch,
/// or which process, prepares it.
///
/// Panics if `x` or `y` has the wrong length, an index is out of range, or `norm` has
/// neither 1 nor `ds.c` values.
pub fn fill_batch(
    ds: &Dataset,
    idx: &[usize],
    aug: Option<&Augment>,
    norm: &Normalize,
    rng: &dyn Fn(usize) -> Rng,
    x: &mut [f32],
    y: &mut [u32],
) {
    let (c, oh, ow) = batch_image_shape(ds, aug);
    let out_len = c * oh * ow;
    assert_eq!(x.len(), idx.len() * out_len, "fill_batch: x has the wrong length");
    assert_eq!(y.len(), idx.len(), "fill_batch: y has the wrong length");
    for v in [&norm.mean, &norm.std] {
        assert!(v.len() == 1 || v.len() == c, "fill_batch: normalization has {} values for {c} channels", v.len());
    }
    let tables: Vec<[f32; 256]> = (0..c).map(|ch| norm.table(ch)).collect();
    let (h, w) = (ds.h, ds.w);
    let mut rows = vec![None; oh];
    let mut cols = vec![None; ow];
    for (k, &i) in idx.iter().enumerate() {
        let src = ds.image(i);
        let dst = &mut x[k * out_len..(k + 1) * out_len];
        y[k] = ds.labels[i] as u32;
        match aug {
            None => {
                for (ch, t) in tables.iter().enumerate() {
                    let plane = h * w;
                    for (d, &s) in dst[ch * plane..(ch + 1) * plane].iter_mut().zip(&src[ch * plane..(ch + 1) * plane])
                    {
                        *d = t[s as usize];
                    }
                }
            }
            Some(a) => {
                let mut rng = rng(k);
                let oy = rng.below(((h + 2 * a.pad).saturating_sub(oh) + 1) as u64) as isize;
                let ox = rng.below(((w + 2 * a.pad).saturating_sub(ow) + 1) as u64) as isize;
                let flip = a.flip && rng.coin();
                let pad = a.pad as isize;
                for (r, s) in rows.iter_mut().enumerate() {
                    *s = source(oy + r as isize - pad, h, a.reflect);
                }
                for (q, s) in cols.iter_mut().enumerate() {
                    let q = if flip { ow - 1 - q } else { q };
                    *s = source(ox + q as isize - pad, w, a.reflect);
                }
                for (ch, t) in tables.iter().enumerate() {
                    let sp = &src[ch * h * w..(ch + 1) * h * w];
                    let zero = t[0];
                    for (r, sr) in rows.iter().enumerate() {
                        let drow = &mut dst[(ch * oh + r) * ow..(ch * oh + r + 1) * ow];
                        match sr {
                            None => drow.fill(zero),
                            Some(sr) => {
                                let srow = &sp[sr * w..(sr + 1) * w];
                                for (d, sc) in drow.iter_mut().zip(&cols) {
                                    *d = sc.map_or(zero, |sc| t[srow[sc] as usize]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::numbered_names;

    fn ds(c: usize, h: usize, w: usize, px: Vec<u8>) -> Dataset {
        Dataset {
            n: px.len() / (c * h * w),
            labels: vec![1; px.len() / (c * h * w)],
            images: px,
            c,
            h,
            w,
            classes: 2,
            class_names: numbered_names(2),
        }
    }

    /// Identity normalization up to the 1/255 scale: output × 255 = pixel.
    fn raw(d: &Dataset, aug: &Augment, rng: &Rng) -> Vec<u8> {
        let (c, h, w) = batch_image_shape(d, Some(aug));
        let mut x = vec![0.0; c * h * w];
        let mut y = vec![0];
        fill_batch(d, &[0], Some(aug), &Normalize::uniform(0.0, 1.0 / 255.0), &|_| rng.clone(), &mut x, &mut y);
        assert_eq!(y, vec![1]);
        x.iter().map(|&v| v.round() as u8).collect()
    }

    #[test]
    fn reflect_index_matches_pytorch() {
        // PyTorch reflect of [a b c] with pad 2: c b | a b c | b a
        let got: Vec<_> = (-2..5).map(|p| source(p, 3, true).unwrap()).collect();
        assert_eq!(got, vec![2, 1, 0, 1, 2, 1, 0]);
        // 2 wide, pad 4: reflection repeats with period 2
        let got: Vec<_> = (-4..6).map(|p| source(p, 2, true).unwrap()).collect();
        assert_eq!(got, vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(source(-1, 3, false), None);
        assert_eq!(source(-3, 1, true), Some(0));
    }

    #[test]
    fn reflect_pad_of_2x2_full_window() {
        // [1 2; 3 4] reflect-padded by 1 is [4 3 4 3; 2 1 2 1; 4 3 4 3; 2 1 2 1];
        // a 4×4 crop has one possible offset, no flip.
        let d = ds(1, 2, 2, vec![1, 2, 3, 4]);
        let a = Augment { pad: 1, reflect: true, crop: 4, flip: false };
        let got = raw(&d, &a, &Rng::new(0));
        assert_eq!(got, vec![4, 3, 4, 3, 2, 1, 2, 1, 4, 3, 4, 3, 2, 1, 2, 1]);
        // zero padding
        let a = Augment { pad: 1, reflect: false, crop: 4, flip: false };
        let got = raw(&d, &a, &Rng::new(0));
        assert_eq!(got, vec![0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn crop_offsets_and_flip_follow_the_rng() {
        // 3×3 image 0..9, zero-pad 1 → 5×5; 3×3 crop at (oy, ox) ∈ 0..=2.
        let d = ds(1, 3, 3, (1..=9).collect());
        let a = Augment { pad: 1, reflect: false, crop: 3, flip: true };
        for seed in 0..20 {
            let mut r = Rng::new(seed);
            let got = raw(&d, &a, &r.clone());
            let (oy, ox, flip) = (r.below(3) as isize, r.below(3) as isize, r.coin());
            let mut want = vec![];
            for i in 0..3isize {
                for j in 0..3isize {
                    let j = if flip { 2 - j } else { j };
                    let (sy, sx) = (oy + i - 1, ox + j - 1);
                    want.push(if (0..3).contains(&sy) && (0..3).contains(&sx) { (sy * 3 + sx + 1) as u8 } else { 0 });
                }
            }
            assert_eq!(got, want, "seed {seed}");
        }
        // hand-worked: offset (2, 0) without flip = rows 1..3 of the image, shifted right
        // by one column of zeros: [0 4 5; 0 7 8; 0 0 0]
        let img = d.image(0);
        let want: Vec<u8> = vec![0, img[3], img[4], 0, img[6], img[7], 0, 0, 0];
        assert_eq!(want, vec![0, 4, 5, 0, 7, 8, 0, 0, 0]);
        let mut found = false;
        for seed in 0..200 {
            let mut r = Rng::new(seed);
            if (r.below(3), r.below(3), r.coin()) == (2, 0, false) {
                assert_eq!(raw(&d, &a, &Rng::new(seed)), want);
                found = true;
                break;
            }
        }
        assert!(found);
    }

    #[test]
    fn flip_only_and_normalization_per_channel() {
        // two channels of a 1×3 image; no padding, crop = size, flip decided by the coin
        let d = ds(2, 1, 3, vec![10, 20, 30, 40, 50, 60]);
        let a = Augment { pad: 0, reflect: true, crop: 0, flip: true };
        let norm = Normalize { mean: vec![0.0, 0.5], std: vec![1.0, 0.25] };
        let mut seen = [false; 2];
        for seed in 0..16 {
            let mut r = Rng::new(seed);
            let (_, _, flip) = (r.below(1), r.below(1), r.coin());
            let mut x = vec![0.0; 6];
            fill_batch(&d, &[0], Some(&a), &norm, &|_| Rng::new(seed), &mut x, &mut [0]);
            let mut px = [10.0f32, 20.0, 30.0, 40.0, 50.0, 60.0];
            if flip {
                px.swap(0, 2);
                px.swap(3, 5);
            }
            let want: Vec<f32> =
                (0..6).map(|i| if i < 3 { px[i] / 255.0 } else { (px[i] / 255.0 - 0.5) / 0.25 }).collect();
            assert_eq!(x, want);
            seen[flip as usize] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn eval_path_uses_no_randomness_and_fills_labels() {
        let d = ds(1, 1, 2, vec![0, 255, 51, 102]);
        let norm = Normalize::uniform(0.5, 0.5);
        let mut x = vec![0.0; 4];
        let mut y = vec![9; 2];
        fill_batch(&d, &[1, 0], None, &norm, &|_| panic!("no generator without augmentation"), &mut x, &mut y);
        assert_eq!(x, vec![(0.2 - 0.5) / 0.5, (0.4 - 0.5) / 0.5, -1.0, 1.0]);
        assert_eq!(y, vec![1, 1]);
    }
}
