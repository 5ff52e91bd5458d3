//! Layer math against f64 references: every backward is checked against central finite
//! differences of a naive f64 forward, under the random projection loss `L = Σ r_i·y_i`
//! (so `dL/dy = r` is what the backward receives). Plus hand-worked values, the batch
//! sub-range property, and "accumulate really adds".
//!
//! Tolerances (stated once, used everywhere):
//! - gradients: `|analytic − fd| ≤ GRAD_TOL·(1 + |fd|)`, GRAD_TOL = 1e-3;
//! - forwards:  `|ours − f64 ref| ≤ FWD_TOL·(1 + |ref|)`, FWD_TOL = 1e-4;
//! - sgemm: `|c − ref| ≤ (k+2)·2⁻²⁴·(|c₀| + Σ_p |a_ip·b_pj|)`, the textbook bound for
//!   recursive f32 summation (c₀ is the accumulated-into value).
//!
//! The finite differences use step FD_H on the f64 reference, so their own error
//! (~FD_H² curvature + 1e-16/FD_H round-off) is far below the tolerance.

use hpff_core::ops::*;
use proptest::prelude::*;

const GRAD_TOL: f64 = 1e-3;
const FWD_TOL: f64 = 1e-4;
const FD_H: f64 = 1e-5;
const CASES: u32 = 24;

// ---------- helpers ----------

/// Deterministic uniform values in [-1, 1) from a seed (splitmix64).
fn rand_vec(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn dot(r: &[f32], y: &[f64]) -> f64 {
    assert_eq!(r.len(), y.len());
    r.iter().zip(y).map(|(&a, &b)| a as f64 * b).sum()
}

fn assert_fwd(what: &str, ours: &[f32], reference: &[f64]) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    for (i, (&a, &r)) in ours.iter().zip(reference).enumerate() {
        assert!((a as f64 - r).abs() <= FWD_TOL * (1.0 + r.abs()), "{what}[{i}]: ours {a} vs ref {r}");
    }
}

/// Checks `analytic` against central differences of `loss` around `x` (one block of the
/// parameters; `loss` receives the perturbed block).
fn assert_grad(what: &str, x: &[f32], analytic: &[f32], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{what}: length");
    let mut p = to64(x);
    for i in 0..p.len() {
        let orig = p[i];
        p[i] = orig + FD_H;
        let lp = loss(&p);
        p[i] = orig - FD_H;
        let lm = loss(&p);
        p[i] = orig;
        let fd = (lp - lm) / (2.0 * FD_H);
        let a = analytic[i] as f64;
        assert!((a - fd).abs() <= GRAD_TOL * (1.0 + fd.abs()), "{what}[{i}]: analytic {a} vs fd {fd}");
    }
}

// ---------- f64 reference forwards ----------

fn conv_ref(s: &Conv2d, n: usize, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
    let (ho, wo) = (s.h_out(), s.w_out());
    let mut y = vec![0.0; n * s.c_out * ho * wo];
    for i in 0..n {
        for co in 0..s.c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b[co]);
                    // Output channel co sees the input channels of its group only.
                    let cg = s.c_in / s.groups;
                    let first = co / (s.c_out / s.groups) * cg;
                    for ci in 0..cg {
                        for kh in 0..s.k {
                            for kw in 0..s.k {
                                let iy = (oy * s.stride + kh) as isize - s.pad as isize;
                                let ix = (ox * s.stride + kw) as isize - s.pad as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xv = x[((i * s.c_in + first + ci) * s.h + iy as usize) * s.w + ix as usize];
                                acc += xv * w[((co * cg + ci) * s.k + kh) * s.k + kw];
                            }
                        }
                    }
                    y[((i * s.c_out + co) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

/// Training-mode BN output and (mean, biased var) per channel.
fn bn_train_ref(c: usize, hw: usize, n: usize, x: &[f64], g: &[f64], b: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let cnt = (n * hw) as f64;
    let mut mean = vec![0.0; c];
    let mut var = vec![0.0; c];
    for ch in 0..c {
        let vals = || (0..n).flat_map(move |i| (0..hw).map(move |j| x[(i * c + ch) * hw + j]));
        mean[ch] = vals().sum::<f64>() / cnt;
        var[ch] = vals().map(|v| (v - mean[ch]).powi(2)).sum::<f64>() / cnt;
    }
    let mut y = vec![0.0; x.len()];
    for (idx, v) in y.iter_mut().enumerate() {
        let ch = (idx / hw) % c;
        *v = (x[idx] - mean[ch]) / (var[ch] + BN_EPS as f64).sqrt() * g[ch] + b[ch];
    }
    (y, mean, var)
}

fn bilinear_ref(s: &Window, n: usize, x: &[f64]) -> Vec<f64> {
    let tap = |inp: usize, out: usize, o: usize| {
        let src = if out > 1 { o as f64 * (inp - 1) as f64 / (out - 1) as f64 } else { 0.0 };
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        (i0, i1, src - i0 as f64)
    };
    let mut y = vec![0.0; n * s.out_len()];
    for i in 0..n {
        for ch in 0..s.c {
            for oy in 0..s.oh {
                for ox in 0..s.ow {
                    let (r0, r1, ly) = tap(s.ph, s.oh, oy);
                    let (c0, c1, lx) = tap(s.pw, s.ow, ox);
                    let at = |r: usize, c: usize| x[i * s.map_len() + (ch * s.h + s.y0 + r) * s.w + s.x0 + c];
                    y[i * s.out_len() + (ch * s.oh + oy) * s.ow + ox] = (1.0 - ly)
                        * ((1.0 - lx) * at(r0, c0) + lx * at(r0, c1))
                        + ly * ((1.0 - lx) * at(r1, c0) + lx * at(r1, c1));
                }
            }
        }
    }
    y
}

// ---------- conv ----------

fn conv_shape() -> impl Strategy<Value = (Conv2d, usize, bool, u64)> {
    (
        1usize..4,
        1usize..4,
        1usize..8,
        1usize..8,
        prop::bool::ANY,
        1usize..3,
        prop::bool::ANY,
        1usize..3,
        prop::bool::ANY,
        any::<u64>(),
    )
        .prop_map(|(c_in, c_out, h, w, k3, stride, padded, n, bias, seed)| {
            let k = if k3 { 3 } else { 1 };
            let pad = if padded { k / 2 } else { 0 };
            // Padded maps may be smaller than the kernel (down to 1×1, as in the last
            // stage of an ImageNet network on small images).
            let min = k - 2 * pad;
            (Conv2d { c_in, c_out, h: h.max(min), w: w.max(min), k, stride, pad, groups: 1 }, n, bias, seed)
        })
}

/// Forward against the f64 reference, the three gradients against finite differences,
/// the batch sub-range property and "accumulate adds", for one conv shape.
fn check_conv(s: Conv2d, n: usize, with_bias: bool, seed: u64) -> Result<(), TestCaseError> {
    let x = rand_vec(seed, n * s.in_len());
    let w = rand_vec(seed ^ 1, s.weight_len());
    let b = rand_vec(seed ^ 2, s.c_out);
    let r = rand_vec(seed ^ 3, n * s.out_len());
    let bias = with_bias.then_some(&b[..]);
    let mut scratch = vec![f32::NAN; s.scratch_len()];
    let mut y = vec![f32::NAN; n * s.out_len()];
    conv2d_forward(&s, n, &x, &w, bias, &mut y, &mut scratch);
    let (x64, w64, b64) = (to64(&x), to64(&w), to64(&b));
    let b64o = with_bias.then_some(&b64[..]);
    assert_fwd("conv y", &y, &conv_ref(&s, n, &x64, &w64, b64o));

    let mut dx = vec![f32::NAN; n * s.in_len()];
    conv2d_backward_input(&s, n, &r, &w, &mut dx, &mut scratch);
    assert_grad("conv dx", &x, &dx, |xp| dot(&r, &conv_ref(&s, n, xp, &w64, b64o)));

    let mut dw = vec![0.0; s.weight_len()];
    let mut db = vec![0.0; s.c_out];
    conv2d_accumulate_weight_grad(&s, n, &x, &r, &mut dw, with_bias.then_some(&mut db[..]), &mut scratch);
    assert_grad("conv dw", &w, &dw, |wp| dot(&r, &conv_ref(&s, n, &x64, wp, b64o)));
    if with_bias {
        assert_grad("conv db", &b, &db, |bp| dot(&r, &conv_ref(&s, n, &x64, &w64, Some(bp))));
    } else {
        prop_assert!(db.iter().all(|&v| v == 0.0));
    }

    // Sub-range property: the batch in two pieces gives the same bits.
    if n == 2 {
        let mut y2 = vec![f32::NAN; n * s.out_len()];
        let (y_a, y_b) = y2.split_at_mut(s.out_len());
        conv2d_forward(&s, 1, &x[..s.in_len()], &w, bias, y_a, &mut scratch);
        conv2d_forward(&s, 1, &x[s.in_len()..], &w, bias, y_b, &mut scratch);
        prop_assert_eq!(&y, &y2);
    }
    // Accumulate adds: a second call doubles the gradient.
    let mut dw2 = dw.clone();
    conv2d_accumulate_weight_grad(&s, n, &x, &r, &mut dw2, None, &mut scratch);
    for (a, b) in dw2.iter().zip(&dw) {
        prop_assert!((a - 2.0 * b).abs() <= 1e-5 * (1.0 + b.abs()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn conv_forward_and_gradients((s, n, with_bias, seed) in conv_shape()) {
        check_conv(s, n, with_bias, seed)?;
    }

    /// The ImageNet stem's conv: 7×7 stride 2 pad 3, on even and odd sizes (some smaller
    /// than the kernel, where only the padding makes room).
    /// Grouped convolutions (ResNeXt's 3×3s: a few channels per group, stride 1 and 2,
    /// odd sizes): each group's own ungrouped path, the direct kernels included.
    #[test]
    fn grouped_conv(groups in 2usize..5, cg_in in 1usize..5, cg_out in 1usize..5, h in 3usize..11, w in 3usize..11, stride in 1usize..3, n in 1usize..3, bias: bool, seed: u64) {
        let s = Conv2d { c_in: groups * cg_in, c_out: groups * cg_out, h, w, k: 3, stride, pad: 1, groups };
        check_conv(s, n, bias, seed)?;
    }

    #[test]
    fn conv_7x7_stride2_pad3(c_in in 1usize..4, c_out in 1usize..4, h in 4usize..14, w in 4usize..14, n in 1usize..3, bias: bool, seed: u64) {
        check_conv(Conv2d { c_in, c_out, h, w, k: 7, stride: 2, pad: 3, groups: 1 }, n, bias, seed)?;
    }
}

/// 4×4 input x = 1..16, two output channels: w0 has 1 at top-left and 2 at bottom-right
/// (so y0(i,j) = x(i−1,j−1) + 2·x(i+1,j+1) + 0.5: catches a flipped kernel), w1 is all
/// ones (y1 = 3×3 neighbourhood sum − 1). Worked by hand, zero padding 1:
///   y0 = [12 14 16 0 | 20 23 26 3 | 28 35 38 7 | 0 9 10 11] + 0.5
///   y1 = [14 24 30 22 | 33 54 63 45 | 57 90 99 69 | 46 72 78 54] − 1
/// Stride 2 keeps positions (0,0) (0,2) (2,0) (2,2) of these.
#[test]
fn conv_hand_worked() {
    let x: Vec<f32> = (1..=16).map(|v| v as f32).collect();
    let mut w = vec![0.0f32; 18];
    w[0] = 1.0;
    w[8] = 2.0;
    w[9..].fill(1.0);
    let bias = [0.5f32, -1.0];
    let y0 = [12., 14., 16., 0., 20., 23., 26., 3., 28., 35., 38., 7., 0., 9., 10., 11.];
    let y1 = [14., 24., 30., 22., 33., 54., 63., 45., 57., 90., 99., 69., 46., 72., 78., 54.];
    for stride in [1, 2] {
        let s = Conv2d { c_in: 1, c_out: 2, h: 4, w: 4, k: 3, stride, pad: 1, groups: 1 };
        let mut y = vec![0.0; s.out_len()];
        let mut scratch = vec![0.0; s.scratch_len()];
        conv2d_forward(&s, 1, &x, &w, Some(&bias), &mut y, &mut scratch);
        let keep: Vec<usize> = if stride == 1 { (0..16).collect() } else { vec![0, 2, 8, 10] };
        let expect: Vec<f32> = keep.iter().map(|&i| y0[i] + 0.5).chain(keep.iter().map(|&i| y1[i] - 1.0)).collect();
        assert_eq!(y, expect, "stride {stride}");
    }
}

// ---------- max pool ----------

fn maxpool_ref(s: &MaxPool2d, n: usize, x: &[f64]) -> Vec<f64> {
    let (ho, wo) = (s.h_out() as isize, s.w_out() as isize);
    let mut y = Vec::new();
    for plane in x.chunks(s.h * s.w).take(n * s.c) {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = f64::NEG_INFINITY;
                for ky in 0..s.k as isize {
                    for kx in 0..s.k as isize {
                        let (iy, ix) = (
                            oy * s.stride as isize + ky - s.pad as isize,
                            ox * s.stride as isize + kx - s.pad as isize,
                        );
                        if iy >= 0 && ix >= 0 && (iy as usize) < s.h && (ix as usize) < s.w {
                            m = m.max(plane[iy as usize * s.w + ix as usize]);
                        }
                    }
                }
                y.push(m);
            }
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Max pool against an f64 reference and finite differences. The input is a
    /// permutation of evenly spaced values, so no window ties and the finite-difference
    /// step never changes a winner.
    #[test]
    fn maxpool_forward_and_gradient(c in 1usize..4, h in 1usize..12, w in 1usize..12, n in 1usize..3, k in 2usize..4, stride in 1usize..3, seed: u64) {
        let s = MaxPool2d { c, h: h.max(k), w: w.max(k), k, stride, pad: k / 2 };
        let len = n * s.in_len();
        let mut a = (seed as usize % len) | 1;
        while (2..=a).any(|d| a.is_multiple_of(d) && len.is_multiple_of(d)) {
            a += 2;
        }
        let x: Vec<f32> = (0..len).map(|i| ((i * a + 7) % len) as f32 / len as f32 - 0.5).collect();
        let r = rand_vec(seed ^ 3, n * s.out_len());
        let mut y = vec![f32::NAN; n * s.out_len()];
        maxpool_forward(&s, n, &x, &mut y);
        assert_fwd("maxpool", &y, &maxpool_ref(&s, n, &to64(&x)));
        let mut dx = vec![f32::NAN; len];
        maxpool_backward(&s, n, &x, &r, &mut dx);
        assert_grad("maxpool dx", &x, &dx, |xp| dot(&r, &maxpool_ref(&s, n, xp)));
    }
}

// ---------- batchnorm ----------

/// Runs the whole training-mode pipeline over the batch split in chunks of `chunk`
/// images; returns (y, dx, dgamma, dbeta, running_mean, running_var).
#[allow(clippy::type_complexity)]
fn bn_pipeline(
    s: &BatchNorm2d,
    n: usize,
    chunk: usize,
    x: &[f32],
    g: &[f32],
    b: &[f32],
    r: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (c, len, count) = (s.c, s.len(), n * s.hw);
    let mut sum = vec![0.0; c];
    let mut mean = vec![0.0; c];
    let mut sq = vec![0.0; c];
    let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
    for i in (0..n).step_by(chunk) {
        let m = chunk.min(n - i);
        batchnorm_accumulate_sum(s, m, &x[i * len..], &mut sum);
    }
    batchnorm_mean_from_sum(&sum, count, &mut mean);
    for i in (0..n).step_by(chunk) {
        let m = chunk.min(n - i);
        batchnorm_accumulate_sq_dev(s, m, &x[i * len..], &mean, &mut sq);
    }
    batchnorm_finalize(s, count, &mut sum, &mut sq, &mut rm, &mut rv, BN_MOMENTUM);
    assert_eq!(sum, mean);
    let invstd = sq;
    let mut y = vec![f32::NAN; n * len];
    let (mut sdy, mut sdyx) = (vec![0.0; c], vec![0.0; c]);
    let mut dx = vec![f32::NAN; n * len];
    for i in (0..n).step_by(chunk) {
        let m = chunk.min(n - i);
        batchnorm_forward(s, m, &x[i * len..], &mean, &invstd, g, b, &mut y[i * len..]);
        batchnorm_accumulate_backward_sums(s, m, &x[i * len..], &r[i * len..], &mean, &invstd, &mut sdy, &mut sdyx);
    }
    for i in (0..n).step_by(chunk) {
        let m = chunk.min(n - i);
        batchnorm_backward_input(
            s,
            m,
            &x[i * len..],
            &r[i * len..],
            &mean,
            &invstd,
            g,
            &sdy,
            &sdyx,
            count,
            &mut dx[i * len..],
        );
    }
    (y, dx, sdyx, sdy, rm, rv)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn batchnorm_train_forward_and_gradients(c in 1usize..4, hw in 1usize..10, n in 1usize..4, seed in any::<u64>()) {
        prop_assume!(n * hw >= 2);
        let s = BatchNorm2d { c, hw };
        let x = rand_vec(seed, n * s.len());
        let g: Vec<f32> = rand_vec(seed ^ 1, c).iter().map(|v| v + 1.5).collect();
        let b = rand_vec(seed ^ 2, c);
        let r = rand_vec(seed ^ 3, n * s.len());
        let (y, dx, dg, db, rm, rv) = bn_pipeline(&s, n, n, &x, &g, &b, &r);
        let (x64, g64, b64) = (to64(&x), to64(&g), to64(&b));
        let (yref, mean, var) = bn_train_ref(c, hw, n, &x64, &g64, &b64);
        assert_fwd("bn y", &y, &yref);
        let cnt = (n * hw) as f64;
        let rm_ref: Vec<f64> = mean.iter().map(|m| 0.1 * m).collect();
        let rv_ref: Vec<f64> = var.iter().map(|v| 0.9 + 0.1 * v * cnt / (cnt - 1.0)).collect();
        assert_fwd("bn running_mean", &rm, &rm_ref);
        assert_fwd("bn running_var", &rv, &rv_ref);
        assert_grad("bn dx", &x, &dx, |xp| dot(&r, &bn_train_ref(c, hw, n, xp, &g64, &b64).0));
        assert_grad("bn dgamma", &g, &dg, |gp| dot(&r, &bn_train_ref(c, hw, n, &x64, gp, &b64).0));
        assert_grad("bn dbeta", &b, &db, |bp| dot(&r, &bn_train_ref(c, hw, n, &x64, &g64, bp).0));

        // Chunked over the batch (as the threaded executor does): same result.
        let (y1, dx1, dg1, db1, ..) = bn_pipeline(&s, n, 1, &x, &g, &b, &r);
        for (a, bb) in y1.iter().chain(&dx1).chain(&dg1).chain(&db1).zip(y.iter().chain(&dx).chain(&dg).chain(&db)) {
            prop_assert!((a - bb).abs() <= 1e-4 * (1.0 + bb.abs()));
        }
    }

    #[test]
    fn batchnorm_eval_forward_and_gradient(c in 1usize..4, hw in 1usize..10, n in 1usize..4, seed in any::<u64>()) {
        let s = BatchNorm2d { c, hw };
        let x = rand_vec(seed, n * s.len());
        let g = rand_vec(seed ^ 1, c);
        let b = rand_vec(seed ^ 2, c);
        let rm = rand_vec(seed ^ 4, c);
        let rv: Vec<f32> = rand_vec(seed ^ 5, c).iter().map(|v| v + 1.2).collect();
        let r = rand_vec(seed ^ 3, n * s.len());
        let (mut mean, mut invstd) = (vec![0.0; c], vec![0.0; c]);
        batchnorm_eval_stats(&rm, &rv, &mut mean, &mut invstd);
        let mut y = vec![f32::NAN; n * s.len()];
        batchnorm_forward(&s, n, &x, &mean, &invstd, &g, &b, &mut y);
        let f = |xp: &[f64]| -> Vec<f64> {
            xp.iter().enumerate().map(|(i, &v)| {
                let ch = (i / hw) % c;
                (v - rm[ch] as f64) / (rv[ch] as f64 + BN_EPS as f64).sqrt() * g[ch] as f64 + b[ch] as f64
            }).collect()
        };
        assert_fwd("bn eval y", &y, &f(&to64(&x)));
        // Eval-mode input gradient is the affine map's: dx = dy·gamma·invstd.
        let dx: Vec<f32> = r.iter().enumerate().map(|(i, &d)| { let ch = (i / hw) % c; d * g[ch] * invstd[ch] }).collect();
        assert_grad("bn eval dx", &x, &dx, |xp| dot(&r, &f(xp)));
    }
}

/// x = [1, 2, 3, 4] in one channel: mean 2.5, biased var 1.25, unbiased var 5/3.
/// From running (0, 1) with momentum 0.1: mean 0.25, var 0.9 + 0.1·5/3 = 1.0666667.
#[test]
fn batchnorm_running_stats_hand_worked() {
    let s = BatchNorm2d { c: 1, hw: 2 };
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let (mut sum, mut mean, mut sq, mut rm, mut rv) = ([0.0f32], [0.0f32], [0.0f32], [0.0f32], [1.0f32]);
    batchnorm_accumulate_sum(&s, 1, &x[..2], &mut sum);
    batchnorm_accumulate_sum(&s, 1, &x[2..], &mut sum);
    assert_eq!(sum, [10.0]);
    batchnorm_mean_from_sum(&sum, 4, &mut mean);
    batchnorm_accumulate_sq_dev(&s, 2, &x, &mean, &mut sq);
    assert_eq!(sq, [5.0]);
    batchnorm_finalize(&s, 4, &mut sum, &mut sq, &mut rm, &mut rv, BN_MOMENTUM);
    assert_eq!(sum, [2.5]);
    assert!((sq[0] - 1.0 / (1.25f32 + 1e-5).sqrt()).abs() < 1e-6);
    assert!((rm[0] - 0.25).abs() < 1e-7);
    assert!((rv[0] - 1.0666667).abs() < 1e-6);
}

/// `updates` running-statistics updates from the raw sums [10, 5] of the case above: the
/// batch mean and invstd are the same for any count, and 0 updates (a recomputed forward)
/// leaves the running statistics untouched; two updates apply the momentum twice.
#[test]
fn batchnorm_update_counts() {
    let s = BatchNorm2d { c: 1, hw: 2 };
    let run = |updates: u8| {
        let (mut mean_invstd, mut running) = ([f32::NAN; 2], [0.0f32, 1.0]);
        batchnorm_update_running(&s, 4, &[10.0, 5.0], &mut mean_invstd, &mut running, updates);
        (mean_invstd, running)
    };
    let (once, after_one) = run(1);
    assert_eq!(once[0], 2.5);
    let (none, untouched) = run(0);
    assert_eq!((none[0].to_bits(), none[1].to_bits()), (once[0].to_bits(), once[1].to_bits()));
    assert_eq!(untouched, [0.0, 1.0]);
    let (twice, after_two) = run(2);
    assert_eq!(twice[1].to_bits(), once[1].to_bits());
    assert!((after_one[0] - 0.25).abs() < 1e-7 && (after_two[0] - 0.475).abs() < 1e-6);
}

// ---------- elementwise, pool, linear ----------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn relu_sigmoid_add(len in 1usize..40, seed in any::<u64>()) {
        let x: Vec<f32> = rand_vec(seed, len).iter().map(|v| v * 4.0).collect();
        let r = rand_vec(seed ^ 3, len);
        // ReLU, both forms, and backward from the output.
        let mut y = vec![f32::NAN; len];
        relu_forward(&x, &mut y);
        let mut y2 = x.clone();
        relu_inplace(&mut y2);
        prop_assert_eq!(&y, &y2);
        let relu = |xp: &[f64]| -> Vec<f64> { xp.iter().map(|v| v.max(0.0)).collect() };
        assert_fwd("relu", &y, &relu(&to64(&x)));
        let mut dx = r.clone();
        relu_backward_inplace(&y, &mut dx);
        assert_grad("relu dx", &x, &dx, |xp| dot(&r, &relu(xp)));
        // Sigmoid.
        sigmoid_forward(&x, &mut y);
        let sig = |xp: &[f64]| -> Vec<f64> { xp.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect() };
        assert_fwd("sigmoid", &y, &sig(&to64(&x)));
        sigmoid_backward(&y, &r, &mut dx);
        assert_grad("sigmoid dx", &x, &dx, |xp| dot(&r, &sig(xp)));
        // add_assign: y = a + x, so dL/dx = r.
        let a = rand_vec(seed ^ 7, len);
        let mut sum = a.clone();
        add_assign(&mut sum, &x);
        let add = |xp: &[f64]| -> Vec<f64> { xp.iter().zip(&a).map(|(v, &w)| v + w as f64).collect() };
        assert_fwd("add", &sum, &add(&to64(&x)));
        assert_grad("add dx", &x, &r, |xp| dot(&r, &add(xp)));
    }

    #[test]
    fn global_avg_pool(c in 1usize..5, hw in 1usize..20, n in 1usize..4, seed in any::<u64>()) {
        let x = rand_vec(seed, n * c * hw);
        let r = rand_vec(seed ^ 3, n * c);
        let mut y = vec![f32::NAN; n * c];
        global_avg_pool_forward(c, hw, n, &x, &mut y);
        let f = |xp: &[f64]| -> Vec<f64> { xp.chunks(hw).map(|p| p.iter().sum::<f64>() / hw as f64).collect() };
        assert_fwd("pool", &y, &f(&to64(&x)));
        let mut dx = vec![f32::NAN; x.len()];
        global_avg_pool_backward(c, hw, n, &r, &mut dx);
        assert_grad("pool dx", &x, &dx, |xp| dot(&r, &f(xp)));
    }

    #[test]
    fn linear(in_f in 1usize..12, out_f in 1usize..12, n in 1usize..5, seed in any::<u64>()) {
        let s = Linear { in_f, out_f };
        let x = rand_vec(seed, n * in_f);
        let w = rand_vec(seed ^ 1, s.weight_len());
        let b = rand_vec(seed ^ 2, out_f);
        let r = rand_vec(seed ^ 3, n * out_f);
        let f = |x: &[f64], w: &[f64], b: &[f64]| -> Vec<f64> {
            (0..n * out_f).map(|idx| {
                let (i, o) = (idx / out_f, idx % out_f);
                b[o] + (0..in_f).map(|p| x[i * in_f + p] * w[o * in_f + p]).sum::<f64>()
            }).collect()
        };
        let (x64, w64, b64) = (to64(&x), to64(&w), to64(&b));
        let mut y = vec![f32::NAN; n * out_f];
        linear_forward(&s, n, &x, &w, &b, &mut y);
        assert_fwd("linear y", &y, &f(&x64, &w64, &b64));
        let mut dx = vec![f32::NAN; n * in_f];
        linear_backward_input(&s, n, &r, &w, &mut dx);
        assert_grad("linear dx", &x, &dx, |xp| dot(&r, &f(xp, &w64, &b64)));
        let (mut dw, mut db) = (vec![0.0; s.weight_len()], vec![0.0; out_f]);
        linear_accumulate_weight_grad(&s, n, &x, &r, &mut dw, &mut db);
        assert_grad("linear dw", &w, &dw, |wp| dot(&r, &f(&x64, wp, &b64)));
        assert_grad("linear db", &b, &db, |bp| dot(&r, &f(&x64, &w64, bp)));
        // Accumulates: a second call doubles both.
        let (mut dw2, mut db2) = (dw.clone(), db.clone());
        linear_accumulate_weight_grad(&s, n, &x, &r, &mut dw2, &mut db2);
        for (a, b) in dw2.iter().chain(&db2).zip(dw.iter().chain(&db)) {
            prop_assert!((a - 2.0 * b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
    }
}

// ---------- bilinear / crop ----------

fn window() -> impl Strategy<Value = (Window, usize, u64)> {
    (
        1usize..3,
        1usize..8,
        1usize..8,
        any::<(usize, usize, usize, usize)>(),
        1usize..11,
        1usize..11,
        1usize..3,
        any::<u64>(),
    )
        .prop_map(|(c, h, w, (a, b, d, e), oh, ow, n, seed)| {
            let (y0, x0) = (a % h, b % w);
            let (ph, pw) = (1 + d % (h - y0), 1 + e % (w - x0));
            (Window { c, h, w, y0, x0, ph, pw, oh, ow }, n, seed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES * 2))]

    #[test]
    fn bilinear_window((s, n, seed) in window()) {
        let x = rand_vec(seed, n * s.map_len());
        let r = rand_vec(seed ^ 3, n * s.out_len());
        let mut y = vec![f32::NAN; n * s.out_len()];
        bilinear_forward(&s, n, &x, &mut y);
        assert_fwd("bilinear y", &y, &bilinear_ref(&s, n, &to64(&x)));
        let mut dx = vec![0.0; x.len()];
        bilinear_accumulate_backward(&s, n, &r, &mut dx);
        assert_grad("bilinear dx", &x, &dx, |xp| dot(&r, &bilinear_ref(&s, n, xp)));
        // Accumulates into what is there.
        let mut dx1 = vec![1.0; x.len()];
        bilinear_accumulate_backward(&s, n, &r, &mut dx1);
        for (a, b) in dx1.iter().zip(&dx) {
            prop_assert!((a - 1.0 - b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
        // Crop = the window copied; its backward adds r into the window.
        let sc = Window { oh: s.ph, ow: s.pw, ..s };
        let mut yc = vec![f32::NAN; n * sc.out_len()];
        crop_forward(&sc, n, &x, &mut yc);
        let rc = rand_vec(seed ^ 9, n * sc.out_len());
        let mut dxc = vec![0.0; x.len()];
        crop_accumulate_backward(&sc, n, &rc, &mut dxc);
        assert_grad("crop dx", &x, &dxc, |xp| dot(&rc, &bilinear_ref(&sc, n, xp)));
        // Bilinear at the window's own size is exactly the crop.
        let mut yb = vec![f32::NAN; n * sc.out_len()];
        bilinear_forward(&sc, n, &x, &mut yb);
        prop_assert_eq!(&yb, &yc);
        // Sub-range property.
        if n == 2 {
            let mut y2 = vec![f32::NAN; n * s.out_len()];
            let (a, b) = y2.split_at_mut(s.out_len());
            bilinear_forward(&s, 1, &x[..s.map_len()], a);
            bilinear_forward(&s, 1, &x[s.map_len()..], b);
            prop_assert_eq!(&y, &y2);
        }
    }
}

/// align_corners: [[1, 2], [3, 4]] → 3×3 samples at 0, ½, 1 on each axis:
/// [[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]].
#[test]
fn bilinear_hand_worked() {
    let s = Window::full(1, 2, 2, 3, 3);
    let mut y = [0.0f32; 9];
    bilinear_forward(&s, 1, &[1.0, 2.0, 3.0, 4.0], &mut y);
    assert_eq!(y, [1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0]);
    // 1×1 output samples the window's top-left pixel; 1×1 input broadcasts.
    let mut one = [0.0f32];
    bilinear_forward(
        &Window { y0: 1, x0: 0, ph: 1, pw: 2, ..Window::full(1, 2, 2, 1, 1) },
        1,
        &[1.0, 2.0, 3.0, 4.0],
        &mut one,
    );
    assert_eq!(one, [3.0]);
    let mut up = [0.0f32; 4];
    bilinear_forward(&Window::full(1, 1, 1, 2, 2), 1, &[7.0], &mut up);
    assert_eq!(up, [7.0; 4]);
}

/// Outputs wider than the tap table (128 columns) are interpolated in column blocks;
/// the blocks must join seamlessly, forward and backward.
#[test]
fn bilinear_wide_outputs_cross_tap_blocks() {
    let s = Window { y0: 1, x0: 2, ph: 5, pw: 7, ..Window::full(2, 8, 11, 3, 300) };
    let x = rand_vec(5, 2 * s.map_len());
    let mut y = vec![0.0f32; 2 * s.out_len()];
    bilinear_forward(&s, 2, &x, &mut y);
    let want = bilinear_ref(&s, 2, &x.iter().map(|&v| v as f64).collect::<Vec<_>>());
    for (a, b) in y.iter().zip(&want) {
        assert!((*a as f64 - b).abs() <= FWD_TOL * (1.0 + b.abs()), "{a} vs {b}");
    }
    // Backward is the adjoint of forward: <dy, F x> = <Fᵀ dy, x>.
    let dy = rand_vec(6, y.len());
    let mut dx = vec![0.0f32; x.len()];
    bilinear_accumulate_backward(&s, 2, &dy, &mut dx);
    let lhs: f64 = dy.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
    let rhs: f64 = dx.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
    assert!((lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");
}

// ---------- sgemm ----------

fn check_sgemm(
    kernel: GemmKernel,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    extra: (usize, usize, usize),
    acc: bool,
    seed: u64,
) {
    let lda = if ta { m } else { k } + extra.0;
    let ldb = if tb { k } else { n } + extra.1;
    let ldc = n + extra.2;
    let a = rand_vec(seed, (if ta { k } else { m }) * lda);
    let b = rand_vec(seed ^ 1, (if tb { n } else { k }) * ldb);
    let c0 = rand_vec(seed ^ 2, m * ldc);
    let mut c = if acc { c0.clone() } else { vec![f32::NAN; m * ldc] };
    sgemm_using(kernel, m, n, k, &a, lda, ta, &b, ldb, tb, &mut c, ldc, acc);
    let at = |i: usize, p: usize| if ta { a[p * lda + i] } else { a[i * lda + p] } as f64;
    let bt = |p: usize, j: usize| if tb { b[j * ldb + p] } else { b[p * ldb + j] } as f64;
    let u = (k + 2) as f64 * 2f64.powi(-24);
    for i in 0..m {
        for j in 0..n {
            let base = if acc { c0[i * ldc + j] as f64 } else { 0.0 };
            let r: f64 = base + (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>();
            let mag: f64 = base.abs() + (0..k).map(|p| (at(i, p) * bt(p, j)).abs()).sum::<f64>();
            let got = c[i * ldc + j] as f64;
            assert!(
                (got - r).abs() <= u * mag + 1e-30,
                "{kernel:?} m{m} n{n} k{k} ta{ta} tb{tb} ({i},{j}): {got} vs {r}"
            );
        }
        // Padding columns of C are untouched.
        for j in n..ldc {
            let before = if acc { c0[i * ldc + j] } else { f32::NAN };
            assert!(c[i * ldc + j].to_bits() == before.to_bits());
        }
    }
}

/// Every kernel; one the CPU lacks falls back to the best it has (`sgemm_using`).
const KERNELS: [GemmKernel; 4] = [GemmKernel::Portable, GemmKernel::Neon, GemmKernel::Avx2Fma, GemmKernel::Avx512];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES * 2))]

    #[test]
    fn sgemm_random(m in 1usize..40, n in 1usize..40, k in 1usize..40, ta: bool, tb: bool, extra in (0usize..3, 0usize..3, 0usize..3), acc: bool, seed: u64) {
        for kern in KERNELS {
            check_sgemm(kern, m, n, k, ta, tb, extra, acc, seed);
        }
    }
}

#[test]
fn sgemm_odd_sizes_all_transposes() {
    let sizes = [1usize, 7, 17, 33, 100];
    let mut seed = 11;
    for &m in &sizes {
        for &n in &sizes {
            for &k in &[1usize, 17, 100, 250] {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    seed += 1;
                    let kern = KERNELS[seed as usize % KERNELS.len()];
                    check_sgemm(kern, m, n, k, ta, tb, (seed as usize % 3, 1, 2), seed % 2 == 0, seed);
                }
            }
        }
    }
    // Bigger than one block in every dimension.
    for kern in KERNELS {
        check_sgemm(kern, 150, 131, 401, false, false, (0, 0, 0), true, 5);
        check_sgemm(kern, 150, 131, 401, true, true, (3, 1, 0), false, 6);
    }
}

/// The FMA kernel this CPU runs (AVX2, AVX-512 or NEON) computes each element of C as one
/// fused chain over `p = 0..k` in order, from C's old value or zero: checked bit for bit
/// against that chain written out with `mul_add`, for every transpose, with and without
/// accumulation, on sizes that leave row and column edges and span several k slabs and
/// row blocks. So the three kernels give the same bits.
#[test]
fn sgemm_is_bitwise_its_fma_chains() {
    let kern = sgemm_kernel();
    if kern == GemmKernel::Portable {
        eprintln!("sgemm_is_bitwise_its_fma_chains: skipped, this CPU runs the portable kernel (no FMA kernel)");
        return;
    }
    let mut seed = 900;
    for &(m, n, k) in &[(13usize, 40usize, 7usize), (100, 90, 300), (6, 16, 193), (1, 1, 1), (300, 17, 20)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for acc in [false, true] {
                seed += 1;
                let a = rand_vec(seed, m * k);
                let b = rand_vec(seed ^ 7, k * n);
                let mut c = rand_vec(seed ^ 9, m * n);
                let c0 = c.clone();
                let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
                sgemm(m, n, k, &a, lda, ta, &b, ldb, tb, &mut c, n, acc);
                for i in 0..m {
                    for j in 0..n {
                        let mut want = if acc { c0[i * n + j] } else { 0.0f32 };
                        for p in 0..k {
                            let av = if ta { a[p * lda + i] } else { a[i * lda + p] };
                            let bv = if tb { b[j * ldb + p] } else { b[p * ldb + j] };
                            want = av.mul_add(bv, want);
                        }
                        let got = c[i * n + j];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{kern:?} m {m} n {n} k {k} ta {ta} tb {tb} acc {acc} ({i}, {j})"
                        );
                    }
                }
            }
        }
    }
}

/// The AVX-512 kernel reads the AVX2 kernel's packed panels and computes each element as
/// the same FMA chain: bit for bit the same C, for every transpose, with and without
/// accumulation, on sizes that leave row and column edges (13 rows: a 12-row tile and
/// one; 40 and 90 columns: whole and partial 16-column panels) and several k slabs.
#[test]
fn sgemm_avx512_gives_the_avx2_bits() {
    if detected_isa() < Isa::Avx512 {
        eprintln!("sgemm_avx512_gives_the_avx2_bits: skipped, this CPU has no AVX-512F");
        return;
    }
    let mut seed = 40;
    for &(m, n, k) in
        &[(13usize, 40usize, 7usize), (100, 90, 300), (6, 16, 193), (25, 33, 64), (1, 1, 1), (72, 64, 401)]
    {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for acc in [false, true] {
                seed += 1;
                let a = rand_vec(seed, m * k);
                let b = rand_vec(seed ^ 7, k * n);
                let c0 = rand_vec(seed ^ 9, m * n);
                let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
                let mut c = [c0.clone(), c0];
                for (kern, out) in [GemmKernel::Avx2Fma, GemmKernel::Avx512].into_iter().zip(c.iter_mut()) {
                    sgemm_using(kern, m, n, k, &a, lda, ta, &b, ldb, tb, out, n, acc);
                }
                let same = c[0].iter().zip(&c[1]).all(|(u, v)| u.to_bits() == v.to_bits());
                assert!(same, "m {m} n {n} k {k} ta {ta} tb {tb} acc {acc}");
            }
        }
    }
}

/// A strided batch (op(A) packed once for every item) gives each item the bits of its own
/// `sgemm`, on the kernel this CPU runs: several row blocks of A (m > 144), k slabs,
/// edges, both transposes of A and B, overwrite and accumulate, strides with gaps; items
/// of fewer columns than a tile, which run side by side as one product (micro-panels
/// straddling two or more items).
#[test]
fn sgemm_strided_batch_gives_each_item_its_own_bits() {
    let mut seed = 500;
    for &(m, n, k, items) in
        &[(150usize, 49usize, 300usize, 3usize), (13, 40, 7, 2), (64, 196, 33, 5), (5, 3, 1, 1), (7, 5, 20, 9)]
    {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for acc in [false, true] {
                seed += 1;
                let (sb, sc) = (k * n + 3, m * n + 5);
                let a = rand_vec(seed, m * k);
                let b = rand_vec(seed ^ 7, items * sb);
                let c0 = rand_vec(seed ^ 9, items * sc);
                let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
                let mut want = c0.clone();
                for t in 0..items {
                    sgemm(m, n, k, &a, lda, ta, &b[t * sb..], ldb, tb, &mut want[t * sc..], n, acc);
                }
                let mut got = c0;
                sgemm_strided_batch(m, n, k, &a, lda, ta, (&b, ldb, tb, sb), (&mut got, n, sc), items, acc);
                let same = want.iter().zip(&got).all(|(u, v)| u.to_bits() == v.to_bits());
                assert!(same, "m {m} n {n} k {k} items {items} ta {ta} tb {tb} acc {acc}");
            }
        }
    }
}

/// The FMA kernel computes each element as one FMA chain over k, so a row of C does not
/// depend on which other rows/columns are computed with it (what makes sub-batch results
/// bit-identical whatever the blocking).
#[test]
fn sgemm_bits_independent_of_blocking() {
    let (m, n, k) = (100, 90, 300);
    let a = rand_vec(1, m * k);
    let b = rand_vec(2, k * n);
    let mut full = vec![0.0; m * n];
    sgemm(m, n, k, &a, k, false, &b, n, false, &mut full, n, false);
    for (r0, rows) in [(0usize, 1usize), (5, 7), (37, 63)] {
        let mut part = vec![0.0; rows * n];
        sgemm(rows, n, k, &a[r0 * k..], k, false, &b, n, false, &mut part, n, false);
        assert_eq!(&part[..], &full[r0 * n..(r0 + rows) * n]);
    }
    for (c0, cols) in [(0usize, 1usize), (3, 50)] {
        let mut part = vec![0.0; m * cols];
        sgemm(m, cols, k, &a, k, false, &b[c0..], n, false, &mut part, cols, false);
        for i in 0..m {
            assert_eq!(&part[i * cols..(i + 1) * cols], &full[i * n + c0..i * n + c0 + cols]);
        }
    }
}

/// The forward keeps each source row's horizontal interpolation for the output rows that
/// reuse it; its bits must be those of evaluating PyTorch's align_corners expression
/// `h0·(w0·a + w1·b) + h1·(w0·c + w1·d)` per output pixel (f32, taps as PyTorch computes
/// them), for up- and downsampling windows.
#[test]
fn bilinear_forward_is_bitwise_the_direct_expression() {
    fn taps(inp: usize, out: usize, o: usize) -> (usize, usize, f32, f32) {
        let scale = if out > 1 { (inp - 1) as f32 / (out - 1) as f32 } else { 0.0 };
        let src = scale * o as f32;
        let i0 = (src as usize).min(inp - 1);
        let i1 = if i0 < inp - 1 { i0 + 1 } else { i0 };
        let l1 = (src - i0 as f32).clamp(0.0, 1.0);
        (i0, i1, 1.0 - l1, l1)
    }
    let windows = [
        Window { y0: 8, x0: 0, ph: 8, pw: 8, ..Window::full(3, 16, 16, 16, 16) },
        Window { y0: 1, x0: 3, ph: 5, pw: 9, ..Window::full(2, 11, 13, 17, 7) },
        Window { y0: 0, x0: 0, ph: 12, pw: 12, ..Window::full(1, 12, 12, 5, 150) },
    ];
    for (k, s) in windows.into_iter().enumerate() {
        let n = 2;
        let x = rand_vec(40 + k as u64, n * s.map_len());
        let mut y = vec![f32::NAN; n * s.out_len()];
        bilinear_forward(&s, n, &x, &mut y);
        for img in 0..n {
            for ch in 0..s.c {
                let xp = &x[img * s.map_len() + ch * s.h * s.w..];
                for oy in 0..s.oh {
                    let (r0, r1, h0, h1) = taps(s.ph, s.oh, oy);
                    for ox in 0..s.ow {
                        let (c0, c1, w0, w1) = taps(s.pw, s.ow, ox);
                        let at = |r: usize, c: usize| xp[(s.y0 + r) * s.w + s.x0 + c];
                        let want = h0 * (w0 * at(r0, c0) + w1 * at(r0, c1)) + h1 * (w0 * at(r1, c0) + w1 * at(r1, c1));
                        let got = y[img * s.out_len() + (ch * s.oh + oy) * s.ow + ox];
                        assert_eq!(got.to_bits(), want.to_bits(), "window {k}, image {img}, ch {ch}, ({oy}, {ox})");
                    }
                }
            }
        }
    }
}

/// Whether a stride-1 "same" 3×3 runs the Winograd kernels (on AVX2 or NEON): even
/// height, width a multiple of 8 up to 128, 8 or more channels each side.
fn winograd_shape(s: &Conv2d) -> bool {
    let same = s.k == 3 && s.stride == 1 && s.pad == 1 && s.groups == 1;
    same && s.h.is_multiple_of(2) && s.w.is_multiple_of(8) && s.w <= 128 && s.c_in >= 8 && s.c_out >= 8
}

/// `V = Bᵀ d B` of tile `(ty, tx)` of image `img` for each of the `cin` channels of `x`
/// (`h × w` planes, the 4×4 patch zero-padded at the borders), as the Winograd kernels
/// compute it: down the patch's columns `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`, then across.
fn winograd_v(x: &[f32], (cin, h, w): (usize, usize, usize), (img, ty, tx): (usize, usize, usize)) -> Vec<[f32; 16]> {
    let bt = |d: [f32; 4]| [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]];
    let px = |c: usize, r: usize, q: usize| {
        let (iy, ix) = ((2 * ty + r).wrapping_sub(1), (2 * tx + q).wrapping_sub(1));
        if iy < h && ix < w {
            x[((img * cin + c) * h + iy) * w + ix]
        } else {
            0.0
        }
    };
    (0..cin)
        .map(|c| {
            let cols: Vec<[f32; 4]> =
                (0..4).map(|j| bt([px(c, 0, j), px(c, 1, j), px(c, 2, j), px(c, 3, j)])).collect();
            std::array::from_fn(|xi| bt([cols[0][xi / 4], cols[1][xi / 4], cols[2][xi / 4], cols[3][xi / 4]])[xi % 4])
        })
        .collect()
}

/// The Winograd F(2×2, 3×3) convolution of `n` images (`cin` planes of `h × w` in `x`)
/// with the kernels `k(o, c, tap)`, operation by operation as `ops::conv_winograd` does
/// them: `U = G g Gᵀ` (down the kernel's columns, then across, `G`'s rows `a`,
/// `((a + c) + b)·½`, `((a + c) − b)·½`, `c`), `V = Bᵀ d B` of each 4×4 padded patch
/// (down, then across: `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`), one FMA chain from 0 over
/// the input channels per ξ, and `Aᵀ m A` (down, then across: `((m0 + m1) + m2, (m1 − m2)
/// − m3)`).
fn winograd_ref(
    n: usize,
    (cin, cout, h, w): (usize, usize, usize, usize),
    x: &[f32],
    k: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let g_rows = |a: f32, b: f32, c: f32| [a, ((a + c) + b) * 0.5, ((a + c) - b) * 0.5, c];
    let at = |m: [f32; 4]| [(m[0] + m[1]) + m[2], (m[1] - m[2]) - m[3]];
    // u[o][c][4i + j]
    let u: Vec<Vec<[f32; 16]>> = (0..cout)
        .map(|o| {
            (0..cin)
                .map(|c| {
                    let cols: Vec<[f32; 4]> =
                        (0..3).map(|b| g_rows(k(o, c, b), k(o, c, 3 + b), k(o, c, 6 + b))).collect();
                    let mut u = [0.0; 16];
                    for i in 0..4 {
                        u[4 * i..4 * i + 4].copy_from_slice(&g_rows(cols[0][i], cols[1][i], cols[2][i]));
                    }
                    u
                })
                .collect()
        })
        .collect();
    let mut y = vec![0.0f32; n * cout * h * w];
    for img in 0..n {
        for ty in 0..h / 2 {
            for tx in 0..w / 2 {
                let v = winograd_v(x, (cin, h, w), (img, ty, tx));
                for o in 0..cout {
                    let m: [f32; 16] =
                        std::array::from_fn(|xi| (0..cin).fold(0.0f32, |acc, c| u[o][c][xi].mul_add(v[c][xi], acc)));
                    let cols: Vec<[f32; 2]> = (0..4).map(|j| at([m[j], m[4 + j], m[8 + j], m[12 + j]])).collect();
                    for a in 0..2 {
                        let out = at([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
                        for (b, &val) in out.iter().enumerate() {
                            y[((img * cout + o) * h + 2 * ty + a) * w + 2 * tx + b] = val;
                        }
                    }
                }
            }
        }
    }
    y
}

/// The Winograd weight gradient of `n` images, added to `dw`, operation by
/// operation as `ops::conv_winograd_wgrad` does it: `V` of each tile as [`winograd_ref`]
/// has it, `Ŷ = Â dy Âᵀ` with `Â`'s last row `(0, 1)` (down the tile's two columns
/// `(a, a + c, a − c, c)`, then across `(p, p + q, p − q, q)`), one FMA chain from `+0` per
/// `M[ξ][c][o]` over the tiles in order (image, tile row, tile column), and `Gᵀ M G`
/// (down, then across: `(m0 + s, (m1 − m2)·½, s − m3)`, `s = (m1 + m2)·½`) added to `dw`.
fn winograd_wgrad_ref(
    n: usize,
    (cin, cout, h, w): (usize, usize, usize, usize),
    (x, dy): (&[f32], &[f32]),
    dw: &mut [f32],
) {
    let gt = |a: [f32; 4]| {
        let s = (a[1] + a[2]) * 0.5;
        [a[0] + s, (a[1] - a[2]) * 0.5, s - a[3]]
    };
    let mut m = vec![[0.0f32; 16]; cout * cin];
    for img in 0..n {
        for ty in 0..h / 2 {
            for tx in 0..w / 2 {
                let v = winograd_v(x, (cin, h, w), (img, ty, tx));
                for o in 0..cout {
                    let g = |r: usize, q: usize| dy[((img * cout + o) * h + 2 * ty + r) * w + 2 * tx + q];
                    let col = |q: usize| [g(0, q), g(0, q) + g(1, q), g(0, q) - g(1, q), g(1, q)];
                    let (c0, c1) = (col(0), col(1));
                    let yh: [f32; 16] = std::array::from_fn(|xi| {
                        let (p, q) = (c0[xi / 4], c1[xi / 4]);
                        [p, p + q, p - q, q][xi % 4]
                    });
                    for c in 0..cin {
                        let mm = &mut m[o * cin + c];
                        for xi in 0..16 {
                            mm[xi] = v[c][xi].mul_add(yh[xi], mm[xi]);
                        }
                    }
                }
            }
        }
    }
    for o in 0..cout {
        for c in 0..cin {
            let mm = &m[o * cin + c];
            let cols: Vec<[f32; 3]> = (0..4).map(|j| gt([mm[j], mm[4 + j], mm[8 + j], mm[12 + j]])).collect();
            for a in 0..3 {
                let r = gt([cols[0][a], cols[1][a], cols[2][a], cols[3][a]]);
                for b in 0..3 {
                    dw[(o * cin + c) * 9 + 3 * a + b] += r[b];
                }
            }
        }
    }
}

/// With the AVX2+FMA GEMM, every convolution output is one FMA chain in a fixed order,
/// whatever the blocking of im2col and the GEMM: check the three convolution calls bit
/// for bit against those chains written out (forward: over `(ci, kh, kw)` from 0; weight
/// gradient: over images then output pixels, from the gradient's old value; input
/// gradient: each column entry a chain over output channels, added into a zeroed `dx`
/// tap by tap; but for a stride-1 "same" 3×3, which runs the direct kernel, one chain
/// from 0 over `(co, kh, kw)` with the taps in reverse; and where the Winograd kernels
/// run, [`winograd_ref`]'s operations, and [`winograd_wgrad_ref`]'s for the weight
/// gradient), on shapes whose column matrices span several
/// blocks (32×32 and 28×28 stride 1, the latter with rows that end inside an 8-pixel
/// vector), a downsampling 3×3 and 1×1, and a direct 1×1.
#[test]
fn conv_is_bitwise_its_fma_chains() {
    if sgemm_kernel() == GemmKernel::Portable {
        eprintln!(
            "conv_is_bitwise_its_fma_chains: skipped, this CPU runs the portable kernels (no AVX2+FMA or NEON, whose bits it checks)"
        );
        return;
    }
    let shapes = [
        Conv2d { c_in: 16, c_out: 16, h: 32, w: 32, k: 3, stride: 1, pad: 1, groups: 1 },
        Conv2d { c_in: 16, c_out: 12, h: 28, w: 28, k: 3, stride: 1, pad: 1, groups: 1 },
        Conv2d { c_in: 16, c_out: 32, h: 16, w: 16, k: 3, stride: 2, pad: 1, groups: 1 },
        Conv2d { c_in: 8, c_out: 16, h: 9, w: 9, k: 1, stride: 2, pad: 0, groups: 1 },
        // A downsampling 1×1 whose images run side by side in one product: 9 output
        // pixels an image (micro-panels straddle images), more rows than a GEMM row block.
        Conv2d { c_in: 20, c_out: 300, h: 6, w: 5, k: 1, stride: 2, pad: 0, groups: 1 },
        Conv2d { c_in: 8, c_out: 5, h: 6, w: 6, k: 1, stride: 1, pad: 0, groups: 1 },
        Conv2d { c_in: 5, c_out: 6, h: 7, w: 7, k: 3, stride: 1, pad: 1, groups: 1 },
        Conv2d { c_in: 3, c_out: 9, h: 8, w: 16, k: 3, stride: 1, pad: 1, groups: 1 },
        // 8-wide maps: on AVX-512 two rows per vector (4 and 3 vectors a tile).
        Conv2d { c_in: 7, c_out: 13, h: 8, w: 8, k: 3, stride: 1, pad: 1, groups: 1 },
        Conv2d { c_in: 9, c_out: 4, h: 6, w: 8, k: 3, stride: 1, pad: 1, groups: 1 },
        // Rows of an odd number of 8-pixel vectors, wider than 16: on AVX-512 the last
        // vector of a row is partial (masked loads).
        Conv2d { c_in: 4, c_out: 7, h: 5, w: 24, k: 3, stride: 1, pad: 1, groups: 1 },
        Conv2d { c_in: 3, c_out: 5, h: 3, w: 56, k: 3, stride: 1, pad: 1, groups: 1 },
        // Winograd, a group of four 8×8 images cut short.
        Conv2d { c_in: 8, c_out: 12, h: 8, w: 8, k: 3, stride: 1, pad: 1, groups: 1 },
        // Winograd: input channels past the last whole 16 (the weight gradient's last
        // transform one pair at a time), and maps wide enough that a block of the weight
        // gradient holds half an image.
        Conv2d { c_in: 20, c_out: 16, h: 8, w: 16, k: 3, stride: 1, pad: 1, groups: 1 },
        Conv2d { c_in: 16, c_out: 16, h: 16, w: 128, k: 3, stride: 1, pad: 1, groups: 1 },
    ];
    for (t, s) in shapes.into_iter().enumerate() {
        let n = 2;
        let (ho, wo, k) = (s.h_out(), s.w_out(), s.k);
        let x = rand_vec(60 + t as u64, n * s.in_len());
        let w = rand_vec(70 + t as u64, s.weight_len());
        let dy = rand_vec(80 + t as u64, n * s.out_len());
        let mut scratch = vec![0.0; s.scratch_len()];
        // The input pixel tap (kh, kw) of output pixel (oy, ox) reads, if inside.
        let src = |oy: usize, ox: usize, kh: usize, kw: usize| {
            let (iy, ix) = (oy * s.stride + kh, ox * s.stride + kw);
            (iy >= s.pad && iy - s.pad < s.h && ix >= s.pad && ix - s.pad < s.w).then(|| (iy - s.pad, ix - s.pad))
        };
        let xv = |i: usize, ci: usize, p: Option<(usize, usize)>| {
            p.map_or(0.0, |(y, x_)| x[i * s.in_len() + (ci * s.h + y) * s.w + x_])
        };

        let mut y = vec![f32::NAN; n * s.out_len()];
        conv2d_forward(&s, n, &x, &w, None, &mut y, &mut scratch);
        let mut dw = rand_vec(90 + t as u64, s.weight_len());
        let mut want_dw = dw.clone();
        conv2d_accumulate_weight_grad(&s, n, &x, &dy, &mut dw, None, &mut scratch);
        let mut dx = vec![f32::NAN; n * s.in_len()];
        conv2d_backward_input(&s, n, &dy, &w, &mut dx, &mut scratch);

        let mut want_dx = vec![0.0f32; n * s.in_len()];
        let wino = winograd_shape(&s);
        if wino {
            let fwd = winograd_ref(n, (s.c_in, s.c_out, s.h, s.w), &x, |o, c, t| w[(o * s.c_in + c) * 9 + t]);
            let bwd = winograd_ref(n, (s.c_out, s.c_in, s.h, s.w), &dy, |ci, co, t| w[(co * s.c_in + ci) * 9 + 8 - t]);
            assert!(y.iter().zip(&fwd).all(|(a, b)| a.to_bits() == b.to_bits()), "shape {t} forward (Winograd)");
            want_dx = bwd;
        }
        for i in (0..n).filter(|_| !wino) {
            for co in 0..s.c_out {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = 0.0f32;
                        for ci in 0..s.c_in {
                            for kh in 0..k {
                                for kw in 0..k {
                                    let wq = w[((co * s.c_in + ci) * k + kh) * k + kw];
                                    acc = wq.mul_add(xv(i, ci, src(oy, ox, kh, kw)), acc);
                                }
                            }
                        }
                        let got = y[i * s.out_len() + (co * ho + oy) * wo + ox];
                        assert_eq!(got.to_bits(), acc.to_bits(), "shape {t} forward");
                    }
                }
            }
            if s.stride == 1 && k == 3 && (ho, wo) == (s.h, s.w) {
                // dx[ci][iy][ix] = Σ w[co][ci][kh][kw] · dy[co][iy + pad − kh][ix + pad − kw].
                for ci in 0..s.c_in {
                    for iy in 0..s.h {
                        for ix in 0..s.w {
                            let mut acc = 0.0f32;
                            for co in 0..s.c_out {
                                for kh in (0..k).rev() {
                                    for kw in (0..k).rev() {
                                        let (oy, ox) = ((iy + s.pad).wrapping_sub(kh), (ix + s.pad).wrapping_sub(kw));
                                        let g = if oy < ho && ox < wo {
                                            dy[i * s.out_len() + (co * ho + oy) * wo + ox]
                                        } else {
                                            0.0
                                        };
                                        acc = w[((co * s.c_in + ci) * k + kh) * k + kw].mul_add(g, acc);
                                    }
                                }
                            }
                            want_dx[i * s.in_len() + (ci * s.h + iy) * s.w + ix] = acc;
                        }
                    }
                }
                continue;
            }
            for ci in 0..s.c_in {
                for kh in 0..k {
                    for kw in 0..k {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let Some((iy, ix)) = src(oy, ox, kh, kw) else { continue };
                                let mut col = 0.0f32;
                                for co in 0..s.c_out {
                                    let wq = w[((co * s.c_in + ci) * k + kh) * k + kw];
                                    col = wq.mul_add(dy[i * s.out_len() + (co * ho + oy) * wo + ox], col);
                                }
                                want_dx[i * s.in_len() + (ci * s.h + iy) * s.w + ix] += col;
                            }
                        }
                    }
                }
            }
        }
        // The Winograd weight gradient where it runs; else, a stride-1 "same" 3×3 (the
        // direct weight-gradient kernel): per group of
        // `weight_grad_group()` images, 8 lane chains from +0 over (image, oy,
        // vector), lane l taking pixel 8v + l (dy = +0 past the row end, x the padded
        // input there), folded ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)); dw_old + S_0 + S_1 + ….
        // (16 lanes on AVX-512 where the rows are whole 16-pixel vectors or pairs of 8.)
        let same3 = s.stride == 1 && k == 3 && (ho, wo) == (s.h, s.w);
        let group = s.weight_grad_group();
        if wino {
            winograd_wgrad_ref(n, (s.c_in, s.c_out, s.h, s.w), (&x, &dy), &mut want_dw);
        }
        for co in (0..s.c_out).filter(|_| !wino) {
            // AVX-512: rows of whole 16-pixel vectors, channels in whole blocks of 4, take
            // 16 lanes, lane l + 8 added to lane l before the 8-lane fold.
            // (An 8-wide map with an even height: a vector is two rows, lane l at row
            // 2v + l / 8, column l % 8.)
            let pair = wo == 8 && ho % 2 == 0;
            let wide = cpu_isa() == Isa::Avx512 && (wo % 16 == 0 || pair) && co < s.c_out / 4 * 4;
            let lanes = if wide { 16 } else { 8 };
            // Each vector's pixel per lane, in the order the kernel walks them.
            let vectors: Vec<Vec<(usize, usize)>> = if wide && pair {
                (0..ho / 2).map(|v| (0..16).map(|l| (2 * v + l / 8, l % 8)).collect()).collect()
            } else {
                (0..ho)
                    .flat_map(|oy| {
                        (0..wo.div_ceil(lanes)).map(move |v| (0..lanes).map(move |l| (oy, lanes * v + l)).collect())
                    })
                    .collect()
            };
            for ci in 0..s.c_in {
                for kh in 0..k {
                    for kw in 0..k {
                        let q = ((co * s.c_in + ci) * k + kh) * k + kw;
                        let mut acc = want_dw[q];
                        if same3 {
                            for i0 in (0..n).step_by(group) {
                                let mut l = [0.0f32; 16];
                                for i in i0..(i0 + group).min(n) {
                                    for vec in &vectors {
                                        for (a, &(oy, ox)) in l.iter_mut().zip(vec) {
                                            let g = if ox < wo {
                                                dy[i * s.out_len() + (co * ho + oy) * wo + ox]
                                            } else {
                                                0.0
                                            };
                                            *a = g.mul_add(xv(i, ci, src(oy, ox, kh, kw)), *a);
                                        }
                                    }
                                }
                                let l: [f32; 8] = std::array::from_fn(|j| if wide { l[j] + l[j + 8] } else { l[j] });
                                acc += ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
                            }
                            want_dw[q] = acc;
                            continue;
                        }
                        for i in 0..n {
                            for oy in 0..ho {
                                for ox in 0..wo {
                                    let g = dy[i * s.out_len() + (co * ho + oy) * wo + ox];
                                    acc = g.mul_add(xv(i, ci, src(oy, ox, kh, kw)), acc);
                                }
                            }
                        }
                        want_dw[q] = acc;
                    }
                }
            }
        }
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&dw), bits(&want_dw), "shape {t} weight gradient");
        assert_eq!(bits(&dx), bits(&want_dx), "shape {t} input gradient");
    }
}
