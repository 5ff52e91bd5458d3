//! `curves.png`: loss and accuracy per epoch, drawn with a tiny built-in bitmap font.
//!
//! Left panel "LOSS": the training loss (blue) and the evaluation loss (orange).
//! Right panel "ACC %": the evaluation accuracy in percent (orange). The x axis is the
//! epoch. The key under the panels names the colours (TRAIN blue, TEST or VAL orange).

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::metrics::EpochMetrics;

/// Size of the picture.
pub const WIDTH: u32 = 960;
pub const HEIGHT: u32 = 420;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([30, 30, 30]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
const BLUE: Rgb<u8> = Rgb([31, 119, 180]);
const ORANGE: Rgb<u8> = Rgb([255, 127, 14]);

const SCALE: u32 = 2;

/// 3×5 glyphs, one row per 3 bits (msb left).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_uppercase() {
        '0' | 'O' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' | 'S' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '%' => [5, 1, 2, 4, 5],
        'A' => [2, 5, 7, 5, 5],
        'C' => [7, 4, 4, 4, 7],
        'E' => [7, 4, 7, 4, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'L' => [4, 4, 4, 4, 7],
        'N' => [5, 7, 7, 5, 5],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'Y' => [5, 5, 2, 2, 2],
        _ => [0; 5],
    }
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn text_width(s: &str) -> i64 {
    (s.chars().count() as i64) * 4 * SCALE as i64 - SCALE as i64
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, c: Rgb<u8>) {
    for (i, ch) in s.chars().enumerate() {
        let g = glyph(ch);
        let ox = x + i as i64 * 4 * SCALE as i64;
        for (r, bits) in g.iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..SCALE as i64 {
                        for dx in 0..SCALE as i64 {
                            put(img, ox + col * SCALE as i64 + dx, y + r as i64 * SCALE as i64 + dy, c);
                        }
                    }
                }
            }
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb<u8>, w: i64) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        for a in 0..w {
            for b in 0..w {
                put(img, x + a - w / 2, y + b - w / 2, c);
            }
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Round tick step (1, 2 or 5 × 10^k) giving about `n` intervals over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-12);
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    }
}

fn label(v: f64, step: f64) -> String {
    let d = if step >= 1.0 { 0 } else { (-step.log10()).ceil() as usize };
    format!("{v:.d$}")
}

struct Series<'a> {
    points: Vec<(f64, f64)>,
    colour: Rgb<u8>,
    _name: &'a str,
}

fn panel(img: &mut RgbImage, x0: i64, title: &str, series: &[Series], x_max: f64) {
    let (left, right, top, bottom) = (x0 + 70, x0 + 470, 40i64, 350i64);
    text(img, (left + right) / 2 - text_width(title) / 2, 12, title, BLACK);
    let ys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|v| v.is_finite()).collect();
    let (mut lo, mut hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        let pad = hi.abs().max(1.0) * 0.05;
        (lo, hi) = (lo - pad, hi + pad);
    }
    let ystep = nice_step(hi - lo, 5.0);
    let (lo, hi) = ((lo / ystep).floor() * ystep, (hi / ystep).ceil() * ystep);
    let (xlo, xhi) = (1.0, x_max.max(2.0));
    let px = |x: f64| left + ((x - xlo) / (xhi - xlo) * (right - left) as f64).round() as i64;
    let py = |y: f64| bottom - ((y - lo) / (hi - lo) * (bottom - top) as f64).round() as i64;
    // Grid, ticks and labels.
    let mut v = lo;
    while v <= hi + ystep * 0.5 {
        let y = py(v);
        line(img, (left, y), (right, y), GRID, 1);
        line(img, (left - 5, y), (left, y), BLACK, 1);
        let s = label(v, ystep);
        text(img, left - 9 - text_width(&s), y - 5, &s, BLACK);
        v += ystep;
    }
    let xstep = nice_step(xhi - xlo, 8.0).max(1.0);
    let mut e = (xlo / xstep).ceil() * xstep;
    if e < xlo {
        e = xlo;
    }
    let mut ticks = vec![xlo];
    while e <= xhi + 1e-9 {
        if e > xlo {
            ticks.push(e);
        }
        e += xstep;
    }
    for t in ticks {
        let x = px(t);
        line(img, (x, bottom), (x, bottom + 5), BLACK, 1);
        let s = label(t, 1.0);
        text(img, x - text_width(&s) / 2, bottom + 10, &s, BLACK);
    }
    text(img, (left + right) / 2 - text_width("EPOCH") / 2, bottom + 30, "EPOCH", BLACK);
    line(img, (left, top), (left, bottom), BLACK, 1);
    line(img, (left, bottom), (right, bottom), BLACK, 1);
    for s in series {
        let pts: Vec<(i64, i64)> = s.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (px(x), py(y))).collect();
        for w in pts.windows(2) {
            line(img, w[0], w[1], s.colour, 2);
        }
        for &p in &pts {
            line(img, p, p, s.colour, 6);
        }
    }
}

/// Draws the curves of `records` (`eval_name` is "TEST" or "VAL").
pub fn render(records: &[EpochMetrics], eval_name: &str) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, WHITE);
    let x_max = records.iter().map(|r| r.epoch).max().unwrap_or(1) as f64;
    let train: Vec<(f64, f64)> = records.iter().map(|r| (r.epoch as f64, r.train_loss)).collect();
    let eval = |f: fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        records.iter().filter_map(|r| f(r).map(|v| (r.epoch as f64, v))).collect()
    };
    panel(
        &mut img,
        0,
        "LOSS",
        &[
            Series { points: train, colour: BLUE, _name: "train" },
            Series { points: eval(|r| r.eval_loss), colour: ORANGE, _name: "eval" },
        ],
        x_max,
    );
    panel(
        &mut img,
        480,
        "ACC %",
        &[Series { points: eval(|r| r.eval_accuracy.map(|a| 100.0 * a)), colour: ORANGE, _name: "eval" }],
        x_max,
    );
    // Key.
    let y = HEIGHT as i64 - 16;
    let mut x = 380;
    for (name, c) in [("TRAIN", BLUE), (eval_name, ORANGE)] {
        line(&mut img, (x, y + 4), (x + 24, y + 4), c, 3);
        text(&mut img, x + 32, y, name, BLACK);
        x += 40 + text_width(name) + 30;
    }
    img
}

/// Writes `curves.png`.
pub fn save(path: &Path, records: &[EpochMetrics], eval_name: &str) -> Result<()> {
    render(records, eval_name)
        .save(path)
        .map_err(|e| Error::msg(format!("{}: cannot write the plot: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u32, loss: f64, acc: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            epoch,
            lr: 0.1,
            train_loss: loss,
            losses: Default::default(),
            eval_split: acc.map(|_| "test".into()),
            eval_accuracy: acc,
            eval_loss: acc.map(|a| 1.0 - a),
            train_images: 10,
            steps: 1,
            skipped_steps: 0,
            images_per_s: 1.0,
            epoch_s: 1.0,
            elapsed_s: epoch as f64,
        }
    }

    #[test]
    fn writes_a_png_of_the_expected_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("curves.png");
        let recs: Vec<_> =
            (1..=12).map(|e| rec(e, 2.0 / e as f64, (e % 3 != 0).then_some(0.5 + e as f64 / 30.0))).collect();
        save(&p, &recs, "TEST").unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        assert!(img.pixels().any(|p| *p == BLUE));
        assert!(img.pixels().any(|p| *p == ORANGE));
        // Degenerate inputs draw without panicking.
        save(&p, &[rec(1, f64::NAN, None)], "VAL").unwrap();
        save(&p, &[], "VAL").unwrap();
        assert_eq!(nice_step(0.87, 5.0), 0.2);
        assert_eq!(label(0.4, 0.2), "0.4");
    }
}
