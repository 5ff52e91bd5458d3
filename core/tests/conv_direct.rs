//! The direct and Winograd stride-1 3×3 kernels (forward, input and weight gradients)
//! against a float64 convolution, on the map sizes the bit test does not reach: maps narrower than
//! one 8-pixel vector (1×1, 2×2, 4×4, 3×5), odd channel counts, batches whose images
//! share one packing of the weights, and the Winograd groups of images.

use std::sync::Mutex;

use hpff_core::ops::*;

/// `limit_isa` sets one cap for the whole process: the tests that set it take turns.
static ISA_CAP: Mutex<()> = Mutex::new(());
fn rv(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}
#[test]
fn same_3x3_convs_match_float64() {
    for &(c_in, c_out, h, w, n) in &[
        (64, 64, 4, 4, 37),
        (32, 32, 8, 8, 5),
        (16, 16, 2, 2, 3),
        (8, 8, 1, 1, 3),
        (5, 7, 3, 5, 2),
        (16, 16, 16, 16, 9),
        // Winograd shapes (even height, width a multiple of 8, 8+ channels): a group of
        // images cut short (8×8 maps go four to a group), output channels past whole
        // tiles, a map taller than wide, 56 wide (8-lane transforms under 16-lane products).
        (64, 64, 8, 8, 5),
        (16, 20, 8, 8, 6),
        (12, 8, 6, 16, 3),
        (8, 12, 56, 56, 1),
    ] {
        let s = Conv2d { c_in, c_out, h, w, k: 3, stride: 1, pad: 1, groups: 1 };
        let x = rv(1, n * s.in_len());
        let wt = rv(2, s.weight_len());
        let dy = rv(3, n * s.out_len());
        let mut scratch = vec![f32::NAN; s.scratch_len()];
        let mut y = vec![f32::NAN; n * s.out_len()];
        conv2d_forward(&s, n, &x, &wt, None, &mut y, &mut scratch);
        let mut dx = vec![f32::NAN; n * s.in_len()];
        conv2d_backward_input(&s, n, &dy, &wt, &mut dx, &mut scratch);
        let mut dw = vec![0.0; s.weight_len()];
        conv2d_accumulate_weight_grad(&s, n, &x, &dy, &mut dw, None, &mut scratch);
        let mut e = (0f64, 0f64);
        for i in 0..n {
            for co in 0..c_out {
                for oy in 0..h {
                    for ox in 0..w {
                        let mut acc = 0f64;
                        for ci in 0..c_in {
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let (iy, ix) = ((oy + kh) as isize - 1, (ox + kw) as isize - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    acc += wt[((co * c_in + ci) * 3 + kh) * 3 + kw] as f64
                                        * x[i * s.in_len() + (ci * h + iy as usize) * w + ix as usize] as f64;
                                }
                            }
                        }
                        e.0 = e.0.max((acc - y[i * s.out_len() + (co * h + oy) * w + ox] as f64).abs());
                    }
                }
            }
            for ci in 0..c_in {
                for iy in 0..h {
                    for ix in 0..w {
                        let mut acc = 0f64;
                        for co in 0..c_out {
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let (oy, ox) = ((iy + 1) as isize - kh as isize, (ix + 1) as isize - kw as isize);
                                    if oy < 0 || ox < 0 || oy >= h as isize || ox >= w as isize {
                                        continue;
                                    }
                                    acc += wt[((co * c_in + ci) * 3 + kh) * 3 + kw] as f64
                                        * dy[i * s.out_len() + (co * h + oy as usize) * w + ox as usize] as f64;
                                }
                            }
                        }
                        e.1 = e.1.max((acc - dx[i * s.in_len() + (ci * h + iy) * w + ix] as f64).abs());
                    }
                }
            }
        }
        // dw[co][ci][kh][kw] = Σ dy[co][oy][ox] · x[ci][oy + kh − 1][ox + kw − 1], against
        // the sum of the products' magnitudes (up to 3,136 of them here).
        let mut ew = 0f64;
        for co in 0..c_out {
            for ci in 0..c_in {
                for kh in 0..3 {
                    for kw in 0..3 {
                        let (mut acc, mut mag) = (0f64, 0f64);
                        for i in 0..n {
                            for oy in 0..h {
                                for ox in 0..w {
                                    let (iy, ix) = ((oy + kh) as isize - 1, (ox + kw) as isize - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let p = dy[i * s.out_len() + (co * h + oy) * w + ox] as f64
                                        * x[i * s.in_len() + (ci * h + iy as usize) * w + ix as usize] as f64;
                                    (acc, mag) = (acc + p, mag + p.abs());
                                }
                            }
                        }
                        let got = dw[((co * c_in + ci) * 3 + kh) * 3 + kw] as f64;
                        ew = ew.max((acc - got).abs() / mag.max(1e-3));
                    }
                }
            }
        }
        assert!(ew < 1e-6, "{c_in}->{c_out} {h}x{w} n={n}: weight gradient off by {ew:.1e} of its magnitude");
        // Sums of up to 576 products of values in [-0.5, 0.5): float32 rounding is ~1e-6.
        assert!(
            e.0 < 2e-5 && e.1 < 2e-5,
            "{c_in}->{c_out} {h}x{w} n={n}: forward off by {:.1e}, input gradient by {:.1e}",
            e.0,
            e.1
        );
    }
}

/// The AVX-512 kernel gives the AVX2 kernel's bits (each output is the same FMA chain):
/// maps whose rows hold whole pairs of 8-pixel vectors (32, 16 and 12 wide, the last with
/// a masked end) take the 16-pixel path; maps at most 8 wide and 24 wide stay on AVX2.
/// (A zmm holding two rows of an 8-wide map, joined by a 256-bit insert per tap, ran at
/// 78 GFLOP/s against the AVX2 tile's 113 on a Sapphire Rapids core, so it was dropped.)
/// The Winograd kernels' shapes too: the same operations per lane on either set, the
/// weight gradient's included.
/// The cap is global, but this file's other test gets correct results from either path.
#[test]
fn avx512_gives_the_avx2_bits() {
    let _cap = ISA_CAP.lock().unwrap_or_else(|e| e.into_inner());
    if detected_isa() < Isa::Avx512 {
        println!("skipped: this CPU has no AVX-512F (detected {:?}); the wide path is untested here", detected_isa());
        return;
    }
    for &(c_in, c_out, h, w, n) in &[
        (3, 16, 32, 32, 2),
        (16, 16, 16, 16, 3),
        (16, 13, 32, 32, 2),
        (7, 5, 5, 12, 3),
        (4, 6, 8, 8, 2),
        (6, 13, 9, 8, 2),
        (5, 7, 7, 7, 3),
        (3, 5, 4, 4, 2),
        (8, 8, 1, 1, 3),
        (2, 9, 3, 24, 2),
        // Winograd: 16-lane transforms, 8-lane ones (8 and 56 wide), a short group.
        (16, 16, 32, 32, 2),
        (64, 20, 8, 8, 5),
        (8, 16, 56, 56, 1),
    ] {
        let s = Conv2d { c_in, c_out, h, w, k: 3, stride: 1, pad: 1, groups: 1 };
        let (x, wt, dy) = (rv(4, n * s.in_len()), rv(5, s.weight_len()), rv(6, n * s.out_len()));
        let run = |isa: Option<Isa>| {
            limit_isa(isa);
            let mut scratch = vec![f32::NAN; s.scratch_len()];
            let (mut y, mut dx) = (vec![f32::NAN; n * s.out_len()], vec![f32::NAN; n * s.in_len()]);
            conv2d_forward(&s, n, &x, &wt, None, &mut y, &mut scratch);
            conv2d_backward_input(&s, n, &dy, &wt, &mut dx, &mut scratch);
            let mut dw = vec![0.0; s.weight_len()];
            conv2d_accumulate_weight_grad(&s, n, &x, &dy, &mut dw, None, &mut scratch);
            limit_isa(None);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            (bits(&y), bits(&dx), bits(&dw))
        };
        let (narrow, wide) = (run(Some(Isa::Avx2)), run(None));
        assert!(narrow.0 == wide.0, "forward of {s:?}");
        assert!(narrow.1 == wide.1, "input gradient of {s:?}");
        // The Winograd weight gradient is the same operations on either set (the direct
        // one folds 16 lanes on AVX-512, 8 on AVX2: other last bits).
        let winograd = h % 2 == 0 && w % 8 == 0 && w <= 128 && c_in >= 8 && c_out >= 8;
        assert!(!winograd || narrow.2 == wide.2, "weight gradient of {s:?}");
    }
}

/// Eval's conv with its BN, residual and ReLU finished in the kernel's registers gives
/// the bits of the ops one by one (conv, BN, add, ReLU), on every set this CPU runs and
/// every shape of tile (16- and 32-wide rows, 8-wide pairs of rows, partial row ends, 7×7
/// and maps narrower than a vector), with a NaN and signed zeros in the input; and says
/// `false`, writing nothing, where the conv has no direct kernel.
#[test]
fn fused_eval_bn_gives_the_unfused_bits() {
    let _cap = ISA_CAP.lock().unwrap_or_else(|e| e.into_inner());
    let direct: &[Isa] = if cfg!(target_arch = "x86_64") { &[Isa::Avx2, Isa::Avx512] } else { &[Isa::Neon] };
    let sets: Vec<Isa> = direct.iter().copied().filter(|&i| i <= detected_isa()).collect();
    println!("sets tried: {sets:?} (detected {:?})", detected_isa());
    for &(c_in, c_out, h, w, n) in &[
        (3, 16, 32, 32, 2),
        (16, 16, 32, 32, 3),
        (16, 13, 16, 16, 3),
        (6, 6, 8, 8, 3),
        (7, 5, 5, 12, 3),
        (7, 7, 7, 7, 3),
        (5, 5, 4, 4, 2),
        (2, 9, 3, 24, 2),
        (3, 4, 5, 28, 2),
        (2, 3, 3, 56, 2),
        // Winograd, in place too: a group cut short, and 8-lane transforms.
        (16, 16, 8, 8, 5),
        (8, 8, 56, 56, 1),
    ] {
        let s = Conv2d { c_in, c_out, h, w, k: 3, stride: 1, pad: 1, groups: 1 };
        let mut x = rv(7, n * s.in_len());
        (x[0], x[1], x[2]) = (f32::NAN, -0.0, 0.0);
        let wt = rv(8, s.weight_len());
        let (mean, gamma, beta, residual) = (rv(9, c_out), rv(10, c_out), rv(11, c_out), rv(12, n * s.out_len()));
        let invstd: Vec<f32> = rv(13, c_out).iter().map(|v| 1.0 + v).collect();
        let same = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan()))
        };
        for isa in sets.iter().copied().map(Some).chain([None]) {
            limit_isa(isa);
            let mut scratch = vec![f32::NAN; s.scratch_len()];
            for (add, relu) in [(false, false), (false, true), (true, true), (true, false)] {
                let tail = BnTail {
                    mean: &mean,
                    invstd: &invstd,
                    gamma: &gamma,
                    beta: &beta,
                    residual: add.then_some(&residual[..]),
                    relu,
                };
                let mut h_ = vec![f32::NAN; n * s.out_len()];
                conv2d_forward(&s, n, &x, &wt, None, &mut h_, &mut scratch);
                let bn = BatchNorm2d { c: c_out, hw: h * w };
                let mut want = vec![f32::NAN; n * s.out_len()];
                batchnorm_forward(&bn, n, &h_, &mean, &invstd, &gamma, &beta, &mut want);
                if add {
                    add_assign(&mut want, &residual);
                }
                if relu {
                    relu_inplace(&mut want);
                }
                let mut y = vec![f32::NAN; n * s.out_len()];
                assert!(conv2d_forward_bn(&s, n, Images::Apart(&x, &mut y), &wt, &tail, &mut scratch), "{s:?} direct");
                assert!(same(&y, &want), "{s:?} add {add} relu {relu} on {isa:?}");
                if c_in == c_out {
                    let mut xy = x.clone();
                    assert!(conv2d_forward_bn(&s, n, Images::InPlace(&mut xy), &wt, &tail, &mut scratch));
                    assert!(same(&xy, &want), "{s:?} in place, add {add} relu {relu} on {isa:?}");
                }
            }
        }
        limit_isa(Some(Isa::Scalar));
        let mut y = vec![1.5f32; n * s.out_len()];
        let tail = BnTail { mean: &mean, invstd: &invstd, gamma: &gamma, beta: &beta, residual: None, relu: true };
        let mut scratch = vec![f32::NAN; s.scratch_len()];
        assert!(!conv2d_forward_bn(&s, n, Images::Apart(&x, &mut y), &wt, &tail, &mut scratch), "scalar: no direct");
        assert!(y.iter().all(|&v| v == 1.5), "nothing written");
        limit_isa(None);
    }
}

/// `y[i][o][oy][ox] = Σ w[o][c][kh][kw] · x[i][c][2oy + kh − 1][2ox + kw − 1]` in float64.
fn stride2_reference(s: &Conv2d, n: usize, x: &[f32], wt: &[f32]) -> Vec<f64> {
    let (ho, wo) = (s.h_out(), s.w_out());
    let mut y = vec![0f64; n * s.out_len()];
    for i in 0..n {
        for o in 0..s.c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = 0f64;
                    for c in 0..s.c_in {
                        for kh in 0..3 {
                            for kw in 0..3 {
                                let (iy, ix) = ((2 * oy + kh) as isize - 1, (2 * ox + kw) as isize - 1);
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                acc += wt[((o * s.c_in + c) * 3 + kh) * 3 + kw] as f64
                                    * x[i * s.in_len() + (c * s.h + iy as usize) * s.w + ix as usize] as f64;
                            }
                        }
                    }
                    y[i * s.out_len() + (o * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

/// The stride-2 3×3 forward on the direct kernels (column-parity planes) against float64,
/// on every tile shape its output maps take (16-wide rows, 8×8 as pairs of rows, 7×7, a
/// 28-wide row's partial end, a 56-wide one's odd vector count, 2×2, odd inputs), the
/// same bits on AVX2 and AVX-512, and with eval's BN finished in the tile.
#[test]
fn stride2_3x3_forward_matches_float64_on_every_set() {
    let _cap = ISA_CAP.lock().unwrap_or_else(|e| e.into_inner());
    let direct: &[Isa] = if cfg!(target_arch = "x86_64") { &[Isa::Avx2, Isa::Avx512] } else { &[Isa::Neon] };
    let sets: Vec<Isa> = direct.iter().copied().filter(|&i| i <= detected_isa()).collect();
    println!("sets tried: {sets:?} (detected {:?})", detected_isa());
    for &(c_in, c_out, h, w, n) in &[
        (16, 32, 32, 32, 2),
        (8, 13, 16, 16, 3),
        (5, 7, 14, 14, 2),
        (3, 4, 56, 56, 1),
        (2, 3, 112, 112, 1),
        (3, 3, 4, 4, 2),
        (4, 6, 15, 9, 2),
        (3, 5, 7, 7, 3),
        (2, 2, 1, 1, 2),
    ] {
        let s = Conv2d { c_in, c_out, h, w, k: 3, stride: 2, pad: 1, groups: 1 };
        let (x, wt) = (rv(21, n * s.in_len()), rv(22, s.weight_len()));
        let want = stride2_reference(&s, n, &x, &wt);
        let mut bits: Option<Vec<u32>> = None;
        for &isa in &sets {
            limit_isa(Some(isa));
            let mut scratch = vec![f32::NAN; s.scratch_len()];
            let mut y = vec![f32::NAN; n * s.out_len()];
            conv2d_forward(&s, n, &x, &wt, None, &mut y, &mut scratch);
            let err = y.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
            assert!(err < 2e-5, "{s:?} on {isa:?}: max error {err:e}");
            let b: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
            assert!(bits.as_ref().is_none_or(|p| *p == b), "{s:?}: {isa:?} differs from the narrower set");
            bits = Some(b);
            let (mean, gamma, beta) = (rv(23, c_out), rv(24, c_out), rv(25, c_out));
            let invstd: Vec<f32> = rv(26, c_out).iter().map(|v| 1.0 + v).collect();
            let residual = rv(27, n * s.out_len());
            let tail = BnTail {
                mean: &mean,
                invstd: &invstd,
                gamma: &gamma,
                beta: &beta,
                residual: Some(&residual),
                relu: true,
            };
            let mut fused = vec![f32::NAN; n * s.out_len()];
            assert!(conv2d_forward_bn(&s, n, Images::Apart(&x, &mut fused), &wt, &tail, &mut scratch));
            let mut unfused = vec![f32::NAN; n * s.out_len()];
            let bn = BatchNorm2d { c: c_out, hw: s.h_out() * s.w_out() };
            batchnorm_forward(&bn, n, &y, &mean, &invstd, &gamma, &beta, &mut unfused);
            add_assign(&mut unfused, &residual);
            relu_inplace(&mut unfused);
            assert!(fused.iter().zip(&unfused).all(|(a, b)| a.to_bits() == b.to_bits()), "{s:?} fused on {isa:?}");
        }
    }
    limit_isa(None);
}
