//! Loss gradients vs central finite differences of f64 reference implementations
//! (proptest), and loss values/gradients vs PyTorch literals.

use hpff_core::loss::{
    bce, cross_entropy, l2_normalize_backward, l2_normalize_forward, supcon, supcon_scratch_len, SUPCON_TEMPERATURE,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Finite-difference checks: |analytic - fd| <= FD_ATOL * max(1, |scale|) + FD_RTOL * |fd|.
/// The analytic gradients are f32 outputs of f64 math, the FD runs on the f64 reference with
/// a step small enough that its truncation error is far below these.
const FD_RTOL: f64 = 1e-4;
const FD_ATOL: f64 = 2e-5;
/// Returned loss values vs the f64 reference: relative (plus 1e-6 absolute).
const VALUE_RTOL: f64 = 1e-5;
/// PyTorch literals (computed by torch in f32): |ours - torch| <= GOLD_RTOL * max(|torch|, GOLD_FLOOR).
const GOLD_RTOL: f64 = 2e-5;
const GOLD_FLOOR: f64 = 1e-2;
const CASES: u32 = 32;

fn close(a: f64, fd: f64, scale: f64) -> bool {
    (a - fd).abs() <= FD_ATOL * scale.abs().max(1.0) + FD_RTOL * fd.abs()
}

fn assert_gold(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = GOLD_RTOL * w.abs().max(GOLD_FLOOR);
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: got {g:e}, torch {w:e}");
    }
}

/// Central difference of `f` at `x` in coordinate `k` with step `h`.
fn fd(f: &dyn Fn(&[f64]) -> f64, x: &[f64], k: usize, h: f64) -> f64 {
    let mut xp = x.to_vec();
    xp[k] = x[k] + h;
    let fp = f(&xp);
    xp[k] = x[k] - h;
    let fm = f(&xp);
    (fp - fm) / (2.0 * h)
}

// ---------------------------------------------------------------- f64 references

fn ce_ref(n: usize, c: usize, z: &[f64], y: &[u32], mean_over: usize) -> f64 {
    let mut t = 0.0;
    for i in 0..n {
        let r = &z[i * c..(i + 1) * c];
        let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        t += lse - r[y[i] as usize];
    }
    t / mean_over as f64
}

fn bce_ref(p: &[f64], t: &[f64], mean_over: usize) -> f64 {
    let mut s = 0.0;
    for (&p, &t) in p.iter().zip(t) {
        s -= t * p.ln().max(-100.0) + (1.0 - t) * (1.0 - p).ln().max(-100.0);
    }
    s / mean_over as f64
}

fn normalize_ref(n: usize, d: usize, x: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; n * d];
    for i in 0..n {
        let r = &x[i * d..(i + 1) * d];
        let nrm = r.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        for k in 0..d {
            y[i * d + k] = r[k] / nrm;
        }
    }
    y
}

/// Written straight from the reference SupConLoss (one view, contrast_mode 'all').
fn supcon_ref(n: usize, d: usize, f: &[f64], y: &[u32], temp: f64, base: f64) -> f64 {
    let dot = |i: usize, j: usize| (0..d).map(|k| f[i * d + k] * f[j * d + k]).sum::<f64>() / temp;
    let mut total = 0.0;
    for i in 0..n {
        let mx = (0..n).map(|j| dot(i, j)).fold(f64::NEG_INFINITY, f64::max);
        let denom: f64 = (0..n).filter(|&j| j != i).map(|j| (dot(i, j) - mx).exp()).sum();
        let mut s = 0.0;
        let mut cnt = 0.0;
        for j in 0..n {
            if j != i && y[j] == y[i] {
                s += (dot(i, j) - mx) - denom.ln();
                cnt += 1.0;
            }
        }
        let cnt = if cnt < 1e-6 { 1.0 } else { cnt };
        total += -(temp / base) * s / cnt;
    }
    total / n as f64
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

// ---------------------------------------------------------------- strategies

fn ce_case() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<u32>, usize, f32)> {
    (1usize..6, 2usize..8).prop_flat_map(|(n, c)| {
        (
            Just(n),
            Just(c),
            vec(-10.0f32..10.0, n * c),
            vec(0..c as u32, n),
            0usize..5,
            prop_oneof![Just(1.0f32), -3.0f32..3.0],
        )
            .prop_map(|(n, c, z, y, extra, s)| (n, c, z, y, n + extra, s))
    })
}

fn prob() -> impl Strategy<Value = f32> {
    prop_oneof![1e-4f32..1e-2, 1e-2f32..0.99, 0.99f32..0.9999]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn cross_entropy_gradient((n, c, z, y, mean_over, scale) in ce_case()) {
        let mut dz = vec![f32::NAN; n * c];
        let v = cross_entropy(n, c, &z, &y, mean_over, scale, &mut dz);
        let z64 = to64(&z);
        let f = |x: &[f64]| ce_ref(n, c, x, &y, mean_over);
        let want = f(&z64);
        prop_assert!((v as f64 - want).abs() <= VALUE_RTOL * want.abs() + 1e-6, "value {v} vs {want}");
        for k in 0..n * c {
            let g = scale as f64 * fd(&f, &z64, k, 1e-5);
            prop_assert!(close(dz[k] as f64, g, scale as f64), "dlogits[{k}] {} vs fd {g}", dz[k]);
        }
    }

    #[test]
    fn bce_gradient(
        (p, t) in (1usize..12).prop_flat_map(|m| (vec(prob(), m), vec(0.0f32..=1.0, m))),
        extra in 0usize..4,
        scale in prop_oneof![Just(1.0f32), -3.0f32..3.0],
    ) {
        let m = p.len();
        let mean_over = m + extra;
        let mut dp = vec![f32::NAN; m];
        let v = bce(&p, &t, mean_over, scale, &mut dp);
        let (p64, t64) = (to64(&p), to64(&t));
        let f = |x: &[f64]| bce_ref(x, &t64, mean_over);
        let want = f(&p64);
        prop_assert!((v as f64 - want).abs() <= VALUE_RTOL * want.abs() + 1e-6, "value {v} vs {want}");
        for k in 0..m {
            let h = 1e-3 * p64[k].min(1.0 - p64[k]);
            let g = scale as f64 * fd(&f, &p64, k, h);
            prop_assert!(close(dp[k] as f64, g, scale as f64), "dp[{k}] {} vs fd {g} (p {})", dp[k], p[k]);
        }
    }

    #[test]
    fn l2_normalize_gradient(
        (n, d, x, dy) in (1usize..5, 1usize..9).prop_flat_map(|(n, d)| {
            (Just(n), Just(d), vec(-3.0f32..3.0, n * d), vec(-2.0f32..2.0, n * d))
        }),
    ) {
        for i in 0..n {
            let nrm: f32 = x[i * d..(i + 1) * d].iter().map(|v| v * v).sum::<f32>().sqrt();
            prop_assume!(nrm > 1e-2);
        }
        let mut y = vec![f32::NAN; n * d];
        l2_normalize_forward(n, d, &x, &mut y);
        let x64 = to64(&x);
        let yr = normalize_ref(n, d, &x64);
        for k in 0..n * d {
            prop_assert!((y[k] as f64 - yr[k]).abs() <= 1e-6, "y[{k}] {} vs {}", y[k], yr[k]);
        }
        let mut dx = vec![f32::NAN; n * d];
        l2_normalize_backward(n, d, &x, &dy, &mut dx);
        let dy64 = to64(&dy);
        let f = |x: &[f64]| normalize_ref(n, d, x).iter().zip(&dy64).map(|(a, b)| a * b).sum::<f64>();
        for k in 0..n * d {
            let g = fd(&f, &x64, k, 1e-6);
            prop_assert!(close(dx[k] as f64, g, 1.0), "dx[{k}] {} vs fd {g}", dx[k]);
        }
    }

    #[test]
    fn supcon_gradient(
        (n, d, x, y) in (1usize..8, prop_oneof![1usize..6, 60usize..70]).prop_flat_map(|(n, d)| {
            // Labels from 3 classes over up to 7 samples: many batches have a singleton class.
            (Just(n), Just(d), vec(-1.0f32..1.0, n * d), vec(0u32..3, n))
        }),
        temp in prop_oneof![Just(SUPCON_TEMPERATURE), Just(0.1f32), Just(0.5f32)],
        scale in prop_oneof![Just(1.0f32), -2.0f32..2.0],
    ) {
        for i in 0..n {
            let nrm: f32 = x[i * d..(i + 1) * d].iter().map(|v| v * v).sum::<f32>().sqrt();
            prop_assume!(nrm > 1e-2);
        }
        // Normalised features, as the loss expects (the FD still treats them as free).
        let mut f32s = vec![0.0f32; n * d];
        l2_normalize_forward(n, d, &x, &mut f32s);
        let mut df = vec![f32::NAN; n * d];
        let mut scratch = vec![f32::NAN; supcon_scratch_len(n)];
        let v = supcon(n, d, &f32s, &y, temp, SUPCON_TEMPERATURE, scale, &mut df, &mut scratch);
        let f64s = to64(&f32s);
        let (t, b) = (temp as f64, SUPCON_TEMPERATURE as f64);
        let f = |x: &[f64]| supcon_ref(n, d, x, &y, t, b);
        if n == 1 {
            // Deviation: the reference gives NaN (log 0); we give 0 and no gradient.
            prop_assert_eq!(v, 0.0);
            prop_assert!(df.iter().all(|&g| g == 0.0));
            return Ok(());
        }
        let want = f(&f64s);
        prop_assert!((v as f64 - want).abs() <= VALUE_RTOL * want.abs() + 1e-5, "value {v} vs {want}");
        for k in 0..n * d {
            let g = scale as f64 * fd(&f, &f64s, k, 1e-6);
            prop_assert!(close(df[k] as f64, g, scale as f64), "df[{k}] {} vs fd {g}", df[k]);
        }
    }
}

// ---------------------------------------------------------------- PyTorch literals
//
// Generated with PyTorch 2.x (CPU, f32):
//
// import torch, torch.nn.functional as F
// def lit(t): return "[" + ", ".join(repr(float(v)) for v in t.detach().flatten().tolist()) + "]"
// z = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.25, 0.0, -1.5, 2.0], [10.0, -10.0, 4.0, 7.5]], requires_grad=True)
// y = torch.tensor([2, 0, 3])
// l = F.cross_entropy(z, y); l.backward(); print(l.item(), lit(z.grad))                     # CE
// z.grad = None; l = F.cross_entropy(z, y, reduction='sum') / 5; (l * 0.5).backward()
// print(l.item(), lit(z.grad))                                                               # CE5
// p = torch.tensor([0.0, 1.0, 0.25, 0.9, 0.5, 1e-3], requires_grad=True)
// t = torch.tensor([0.3, 0.6, 0.0, 1.0, 0.5, 0.8])
// l = torch.nn.BCELoss()(p, t); l.backward(); print(l.item(), lit(p.grad))                  # BCE
// x = torch.tensor([[0.3, -1.2, 0.8], [1.0, 0.5, -0.25], [0.9, 0.3, -0.4], [-0.7, 0.2, 0.4]])
// f = F.normalize(x, dim=1).detach().requires_grad_(True); print(lit(f))                    # SCF (pasted as shortest f32 decimals)
// l = supcon(f, torch.tensor([0, 1, 0, 2])); l.backward(); print(l.item(), lit(f.grad))     # SC
// f.grad = None; l = supcon(f, lab, 0.5, 0.07); l.backward(); print(l.item(), lit(f.grad))  # SC2
// xx = x.clone().requires_grad_(True)
// dy = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, 1.0], [-0.3, 0.3, 0.7], [1.0, 1.0, -1.0]])
// yy = F.normalize(xx, dim=1); (yy * dy).sum().backward(); print(lit(yy), lit(xx.grad))     # NRM
//
// where `supcon(features, labels, temperature=0.07, base_temperature=0.07)` is the reference
// SupConLoss.forward body verbatim with `features.unsqueeze(1)` (one view), contrast_mode
// 'all', and `mask_pos_pairs = torch.where(mask_pos_pairs < 1e-6, 1, mask_pos_pairs)`.

const CE_Z: [f32; 12] = [1.0, -2.0, 0.5, 3.0, 0.25, 0.0, -1.5, 2.0, 10.0, -10.0, 4.0, 7.5];
const CE_Y: [u32; 3] = [2, 0, 3];

#[test]
fn cross_entropy_matches_torch() {
    let mut dz = [0.0f32; 12];
    let v = cross_entropy(3, 4, &CE_Z, &CE_Y, 3, 1.0, &mut dz);
    assert_gold("CE value", &[v], &[2.441861152648926]);
    #[rustfmt::skip]
    assert_gold("CE grad", &dz, &[
        0.036851245909929276, 0.001834715949371457, -0.3109819293022156, 0.2722959518432617,
        -0.2900836169719696, 0.0336829274892807, 0.007515676319599152, 0.24888500571250916,
        0.3073432445526123, 6.334811564201459e-10, 0.0007618278614245355, -0.30810508131980896,
    ]);
    // mean_over = 5 (a chunk of a larger batch) and scale 0.5.
    let v = cross_entropy(3, 4, &CE_Z, &CE_Y, 5, 0.5, &mut dz);
    assert_gold("CE5 value", &[v], &[1.4651167392730713]);
    #[rustfmt::skip]
    assert_gold("CE5 grad", &dz, &[
        0.011055373586714268, 0.0005504147848114371, -0.09329457581043243, 0.0816887840628624,
        -0.08702508360147476, 0.010104878805577755, 0.0022547028493136168, 0.07466550171375275,
        0.09220297634601593, 1.9004434137492865e-10, 0.00022854834969621152, -0.09243152290582657,
    ]);
}

#[test]
fn cross_entropy_chunks_sum_to_the_batch() {
    let mut whole = [0.0f32; 12];
    let v = cross_entropy(3, 4, &CE_Z, &CE_Y, 3, 1.0, &mut whole);
    let mut parts = [0.0f32; 12];
    let (a, b) = parts.split_at_mut(4);
    let v1 = cross_entropy(1, 4, &CE_Z[..4], &CE_Y[..1], 3, 1.0, a);
    let v2 = cross_entropy(2, 4, &CE_Z[4..], &CE_Y[1..], 3, 1.0, b);
    assert!((v1 + v2 - v).abs() <= 1e-6);
    assert_eq!(parts, whole);
}

#[test]
fn bce_matches_torch_including_clamp() {
    let p = [0.0f32, 1.0, 0.25, 0.9, 0.5, 1e-3];
    let t = [0.3f32, 0.6, 0.0, 1.0, 0.5, 0.8];
    let mut dp = [0.0f32; 6];
    let v = bce(&p, &t, 6, 1.0, &mut dp);
    // p = 0 and p = 1 hit the -100 clamp: 0.3*100 + 0.6*100 of the total.
    assert_gold("BCE value", &[v], &[12.768765449523926]);
    assert_gold(
        "BCE grad",
        &dp,
        &[-50000003072.0, 66666663936.0, 0.2222222238779068, -0.18518519401550293, 0.0, -133.2999725341797],
    );
}

#[rustfmt::skip]
const SC_F: [f32; 12] = [
    0.20365328, -0.8146131, 0.5430754,
    0.8728715, 0.43643576, -0.21821788,
    0.8741573, 0.2913858, -0.38851437,
    -0.84270096, 0.24077171, 0.48154342,
];

#[test]
fn l2_normalize_matches_torch() {
    let x = [0.3f32, -1.2, 0.8, 1.0, 0.5, -0.25, 0.9, 0.3, -0.4, -0.7, 0.2, 0.4];
    let dy = [0.5f32, -1.0, 2.0, 0.0, 1.0, 1.0, -0.3, 0.3, 0.7, 1.0, 1.0, -1.0];
    let mut y = [0.0f32; 12];
    l2_normalize_forward(4, 3, &x, &mut y);
    let want: Vec<f64> = SC_F.iter().map(|&v| v as f64).collect();
    assert_gold("normalize y", &y, &want);
    let mut dx = [0.0f32; 12];
    l2_normalize_backward(4, 3, &x, &dy, &mut dx);
    #[rustfmt::skip]
    assert_gold("normalize dx", &dx, &[
        0.06256628036499023, 0.4285791516304016, 0.6194062829017639,
        -0.166261225938797, 0.7897409200668335, 0.9144368171691895,
        0.08796551823616028, 0.4178362488746643, 0.5112994909286499,
        0.104683518409729, 1.5179086923599243, -0.5757585167884827,
    ]);
    // Zero row: the clamp makes the gradient dy / eps, as in PyTorch.
    let mut dz = [0.0f32; 2];
    l2_normalize_backward(1, 2, &[0.0, 0.0], &[1e-13, -2e-13], &mut dz);
    assert!((dz[0] - 0.1).abs() < 1e-7 && (dz[1] + 0.2).abs() < 1e-7);
}

#[test]
fn supcon_matches_torch() {
    let labels = [0u32, 1, 0, 2];
    let mut df = [0.0f32; 12];
    let mut scratch = [0.0f32; supcon_scratch_len(4)];
    let v = supcon(4, 3, &SC_F, &labels, SUPCON_TEMPERATURE, SUPCON_TEMPERATURE, 1.0, &mut df, &mut scratch);
    assert_gold("SupCon value", &[v], &[5.071165084838867]);
    #[rustfmt::skip]
    assert_gold("SupCon grad", &df, &[
        -8.398384094238281, -1.1666882038116455, 4.096011161804199,
        3.163435935974121, 0.8748817443847656, -1.277030110359192,
        1.7227662801742554, 7.137227535247803, -4.498368263244629,
        0.6258534789085388, -2.5034139156341553, 1.6689424514770508,
    ]);
    // temperature 0.5 against base 0.07, scale 2 (gradient doubles, value does not).
    let v = supcon(4, 3, &SC_F, &labels, 0.5, SUPCON_TEMPERATURE, 2.0, &mut df, &mut scratch);
    assert_gold("SupCon(T=0.5) value", &[v], &[6.784150123596191]);
    let want: Vec<f64> = [
        -5.440517902374268,
        -0.8907270431518555,
        2.7493999004364014,
        3.0228779315948486,
        0.11111974716186523,
        -0.6998558044433594,
        1.5593875646591187,
        6.15556526184082,
        -3.8160130977630615,
        0.3752168118953705,
        -1.1859580278396606,
        0.7744894623756409,
    ]
    .iter()
    .map(|v| 2.0 * v)
    .collect();
    assert_gold("SupCon(T=0.5) grad", &df, &want);
}

#[test]
fn supcon_without_positives_is_zero() {
    let mut df = [1.0f32; 12];
    let mut scratch = [0.0f32; 16];
    let v = supcon(4, 3, &SC_F, &[0, 1, 2, 3], 0.07, 0.07, 1.0, &mut df, &mut scratch);
    assert_eq!(v, 0.0);
    assert!(df.iter().all(|&g| g == 0.0));
}
