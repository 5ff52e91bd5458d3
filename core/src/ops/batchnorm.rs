//! BatchNorm2d with PyTorch semantics, split into passes so statistics can be summed
//! over batch chunks (and threads) before anything is normalized:
//! `accumulate_sum` → mean (sum / count) → `accumulate_sq_dev` → [`batchnorm_finalize`]
//! → [`batchnorm_forward`]; backward: `accumulate_backward_sums` → `backward_input`.
//! Two-pass variance (sum of squared deviations from the mean), sums in `f64` lanes.

use super::{fold_lanes, sum_lanes};

/// PyTorch's default epsilon.
pub const BN_EPS: f32 = 1e-5;
/// PyTorch's default running-statistics momentum.
pub const BN_MOMENTUM: f32 = 0.1;

/// Shape of a BatchNorm2d: `c` channels of `hw` pixels per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchNorm2d {
    /// Channels.
    pub c: usize,
    /// Pixels per channel plane (`h · w`).
    pub hw: usize,
}

impl BatchNorm2d {
    /// Floats per image.
    pub const fn len(&self) -> usize {
        self.c * self.hw
    }
    /// Whether an image has no elements.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Channel plane `ch` of image `i`.
#[inline]
fn plane<'a>(s: &BatchNorm2d, x: &'a [f32], i: usize, ch: usize) -> &'a [f32] {
    &x[(i * s.c + ch) * s.hw..][..s.hw]
}

/// `sum[c] += Σ x` over the `n` images (first pass of the batch mean).
pub fn batchnorm_accumulate_sum(s: &BatchNorm2d, n: usize, x: &[f32], sum: &mut [f32]) {
    debug_assert!(x.len() >= n * s.len() && sum.len() >= s.c);
    for (ch, out) in sum.iter_mut().enumerate().take(s.c) {
        let mut lanes = [0.0f64; 8];
        for i in 0..n {
            sum_lanes(plane(s, x, i, ch), &mut lanes);
        }
        *out += fold_lanes(&lanes) as f32;
    }
}

/// `acc[c] += Σ (x − mean[c])²` (second pass: numerically safe variance).
pub fn batchnorm_accumulate_sq_dev(s: &BatchNorm2d, n: usize, x: &[f32], mean: &[f32], acc: &mut [f32]) {
    debug_assert!(x.len() >= n * s.len() && acc.len() >= s.c && mean.len() >= s.c);
    for (ch, out) in acc.iter_mut().enumerate().take(s.c) {
        let m = mean[ch] as f64;
        let mut lanes = [0.0f64; 8];
        for i in 0..n {
            let p = plane(s, x, i, ch);
            let mut it = p.chunks_exact(8);
            for c8 in &mut it {
                for l in 0..8 {
                    let d = c8[l] as f64 - m;
                    lanes[l] += d * d;
                }
            }
            for (l, &v) in it.remainder().iter().enumerate() {
                let d = v as f64 - m;
                lanes[l] += d * d;
            }
        }
        *out += fold_lanes(&lanes) as f32;
    }
}

/// `mean = sum / count`, rounded exactly as [`batchnorm_finalize`] will, so the mean the
/// caller feeds to [`batchnorm_accumulate_sq_dev`] is the one that normalizes.
pub fn batchnorm_mean_from_sum(sum: &[f32], count: usize, mean: &mut [f32]) {
    let cnt = count as f64;
    for (m, &s) in mean.iter_mut().zip(sum) {
        *m = (s as f64 / cnt) as f32;
    }
}

/// Turns the summed statistics of `count = n·hw` values per channel into the batch
/// `mean` and `invstd = 1/sqrt(var + eps)` (biased variance, as PyTorch normalizes), in
/// place, and updates the running statistics with the *unbiased* variance, as PyTorch
/// does. `count == 1` (which PyTorch rejects) uses the biased variance for the update.
pub fn batchnorm_finalize(
    s: &BatchNorm2d,
    count: usize,
    sum_to_mean: &mut [f32],
    sq_dev_to_invstd: &mut [f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    momentum: f32,
) {
    debug_assert!(count > 0);
    let cnt = count as f64;
    let unbias = if count > 1 { cnt / (cnt - 1.0) } else { 1.0 };
    let mom = momentum as f64;
    for ch in 0..s.c {
        let mean = sum_to_mean[ch] as f64 / cnt;
        let var = sq_dev_to_invstd[ch] as f64 / cnt;
        running_mean[ch] = ((1.0 - mom) * running_mean[ch] as f64 + mom * mean) as f32;
        running_var[ch] = ((1.0 - mom) * running_var[ch] as f64 + mom * var * unbias) as f32;
    }
    batchnorm_batch_stats(s, count, sum_to_mean, sq_dev_to_invstd);
}

/// The batch half of [`batchnorm_finalize`]: `mean` and `invstd` from the sums, in place,
/// the running statistics left alone.
pub fn batchnorm_batch_stats(s: &BatchNorm2d, count: usize, sum_to_mean: &mut [f32], sq_dev_to_invstd: &mut [f32]) {
    let cnt = count as f64;
    for ch in 0..s.c {
        let mean = sum_to_mean[ch] as f64 / cnt;
        let var = sq_dev_to_invstd[ch] as f64 / cnt;
        sum_to_mean[ch] = mean as f32;
        sq_dev_to_invstd[ch] = (1.0 / libm::sqrt(var + BN_EPS as f64)) as f32;
    }
}

/// The end of a training-mode BN's statistics pass, shared by every executor: `raw` holds
/// the per-channel sums and squared deviations (`2·c` floats, summed over the whole
/// batch); `mean_invstd` receives the batch mean and invstd (`2·c`); the running
/// statistics are updated `updates` times with them, once per pass the reference makes
/// through the layer on the same batch (the HPFF schedule runs a module once where the
/// reference runs it up to three times). `updates == 0` is a recomputation of a forward
/// whose updates were already applied: the batch statistics only.
pub fn batchnorm_update_running(
    s: &BatchNorm2d,
    count: usize,
    raw: &[f32],
    mean_invstd: &mut [f32],
    running: &mut [f32],
    updates: u8,
) {
    let c = s.c;
    let (mean, invstd) = mean_invstd[..2 * c].split_at_mut(c);
    let (rm, rv) = running[..2 * c].split_at_mut(c);
    for _ in 0..updates.max(1) {
        mean.copy_from_slice(&raw[..c]);
        invstd.copy_from_slice(&raw[c..2 * c]);
        match updates {
            0 => batchnorm_batch_stats(s, count, mean, invstd),
            _ => batchnorm_finalize(s, count, mean, invstd, rm, rv, BN_MOMENTUM),
        }
    }
}

/// Evaluation mode: the running statistics become the `mean`/`invstd` that
/// [`batchnorm_forward`] normalizes with.
pub fn batchnorm_eval_stats(running_mean: &[f32], running_var: &[f32], mean: &mut [f32], invstd: &mut [f32]) {
    for (((m, is), &rm), &rv) in mean.iter_mut().zip(invstd.iter_mut()).zip(running_mean).zip(running_var) {
        *m = rm;
        *is = (1.0 / libm::sqrt(rv as f64 + BN_EPS as f64)) as f32;
    }
}

/// `y = (x − mean)·invstd·gamma + beta` (overwrites `y`); training or eval mode
/// depending on which statistics are passed.
pub fn batchnorm_forward(
    s: &BatchNorm2d,
    n: usize,
    x: &[f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [f32],
) {
    debug_assert!(x.len() >= n * s.len() && y.len() >= n * s.len());
    if s.hw == 0 {
        return;
    }
    for (idx, (yp, xp)) in y.chunks_exact_mut(s.hw).zip(x.chunks_exact(s.hw)).take(n * s.c).enumerate() {
        let ch = idx % s.c;
        let (m, sc, b) = (mean[ch], invstd[ch] * gamma[ch], beta[ch]);
        for (o, &v) in yp.iter_mut().zip(xp) {
            *o = (v - m) * sc + b;
        }
    }
}

/// `sum_dy[c] += Σ dy` and `sum_dy_xhat[c] += Σ dy·x̂`: the two reductions the
/// training-mode input gradient needs (and, as they are, `dbeta` and `dgamma`).
pub fn batchnorm_accumulate_backward_sums(
    s: &BatchNorm2d,
    n: usize,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    invstd: &[f32],
    sum_dy: &mut [f32],
    sum_dy_xhat: &mut [f32],
) {
    debug_assert!(x.len() >= n * s.len() && dy.len() >= n * s.len());
    for ch in 0..s.c {
        let m = mean[ch] as f64;
        let mut l_dy = [0.0f64; 8];
        let mut l_dyx = [0.0f64; 8];
        for i in 0..n {
            let xp = plane(s, x, i, ch);
            let gp = plane(s, dy, i, ch);
            let mut xi = xp.chunks_exact(8);
            let mut gi = gp.chunks_exact(8);
            for (x8, g8) in (&mut xi).zip(&mut gi) {
                for l in 0..8 {
                    let g = g8[l] as f64;
                    l_dy[l] += g;
                    l_dyx[l] += g * (x8[l] as f64 - m);
                }
            }
            for (l, (&xv, &gv)) in xi.remainder().iter().zip(gi.remainder()).enumerate() {
                let g = gv as f64;
                l_dy[l] += g;
                l_dyx[l] += g * (xv as f64 - m);
            }
        }
        sum_dy[ch] += fold_lanes(&l_dy) as f32;
        sum_dy_xhat[ch] += (fold_lanes(&l_dyx) * invstd[ch] as f64) as f32;
    }
}

/// Training-mode input gradient (overwrites `dx`), from the batch statistics and the
/// sums over all `count = N·hw` values of each channel (the whole batch, not just these
/// `n` images): `dx = gamma·invstd·(dy − Σdy/count − x̂·Σdy·x̂/count)`.
pub fn batchnorm_backward_input(
    s: &BatchNorm2d,
    n: usize,
    x: &[f32],
    dy: &[f32],
    mean: &[f32],
    invstd: &[f32],
    gamma: &[f32],
    sum_dy: &[f32],
    sum_dy_xhat: &[f32],
    count: usize,
    dx: &mut [f32],
) {
    debug_assert!(x.len() >= n * s.len() && dy.len() >= n * s.len() && dx.len() >= n * s.len());
    if s.hw == 0 {
        return;
    }
    let inv_count = 1.0 / count as f32;
    for i in 0..n {
        for ch in 0..s.c {
            let off = (i * s.c + ch) * s.hw;
            let (xp, gp) = (&x[off..][..s.hw], &dy[off..][..s.hw]);
            let dp = &mut dx[off..][..s.hw];
            let k1 = gamma[ch] * invstd[ch];
            let a = sum_dy[ch] * inv_count;
            let b = sum_dy_xhat[ch] * inv_count * invstd[ch];
            let m = mean[ch];
            for ((d, &xv), &g) in dp.iter_mut().zip(xp).zip(gp) {
                *d = k1 * (g - a - (xv - m) * b);
            }
        }
    }
}
