//! Row-wise L2 normalisation, `F.normalize(x, p=2, dim=1)`, with its backward.

/// PyTorch's default `eps` of `F.normalize`.
pub const L2_NORMALIZE_EPS: f64 = 1e-12;

/// `y_i = x_i / max(||x_i||, 1e-12)` for each row of the `n × d` matrix `x` (overwrites `y`).
pub fn l2_normalize_forward(n: usize, d: usize, x: &[f32], y: &mut [f32]) {
    debug_assert!(x.len() >= n * d && y.len() >= n * d);
    for i in 0..n {
        let xr = &x[i * d..(i + 1) * d];
        let yr = &mut y[i * d..(i + 1) * d];
        let inv = 1.0 / row_norm(xr).max(L2_NORMALIZE_EPS);
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v as f64 * inv) as f32;
        }
    }
}

/// Backward of [`l2_normalize_forward`] (overwrites `dx`): with `r = ||x_i||`,
/// `dx_i = (dy_i - y_i (y_i·dy_i)) / r` when `r >= eps`, and `dy_i / eps` below it (where
/// the clamp makes the denominator constant, as in PyTorch).
pub fn l2_normalize_backward(n: usize, d: usize, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    debug_assert!(x.len() >= n * d && dy.len() >= n * d && dx.len() >= n * d);
    for i in 0..n {
        let xr = &x[i * d..(i + 1) * d];
        let dyr = &dy[i * d..(i + 1) * d];
        let dxr = &mut dx[i * d..(i + 1) * d];
        let r = row_norm(xr);
        if r >= L2_NORMALIZE_EPS {
            let inv = 1.0 / r;
            // y·dy with y = x / r.
            let mut dot = 0.0f64;
            for (&a, &b) in xr.iter().zip(dyr) {
                dot += a as f64 * b as f64;
            }
            let dot = dot * inv;
            for ((o, &a), &b) in dxr.iter_mut().zip(xr).zip(dyr) {
                *o = ((b as f64 - a as f64 * inv * dot) * inv) as f32;
            }
        } else {
            let inv = 1.0 / L2_NORMALIZE_EPS;
            for (o, &b) in dxr.iter_mut().zip(dyr) {
                *o = (b as f64 * inv) as f32;
            }
        }
    }
}

fn row_norm(x: &[f32]) -> f64 {
    let mut s = 0.0f64;
    for &v in x {
        s += v as f64 * v as f64;
    }
    libm::sqrt(s)
}
