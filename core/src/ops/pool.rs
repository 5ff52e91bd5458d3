//! Global average pooling (the ResNet head).

use super::{fold_lanes, sum_lanes};

/// `y[i][c] = mean over hw of x[i][c]`; `y` is `n × c`, the linear layer's input.
pub fn global_avg_pool_forward(c: usize, hw: usize, n: usize, x: &[f32], y: &mut [f32]) {
    debug_assert!(x.len() >= n * c * hw && y.len() >= n * c);
    let inv = 1.0 / hw as f64;
    for (plane, out) in x.chunks_exact(hw).zip(y.iter_mut()).take(n * c) {
        let mut lanes = [0.0f64; 8];
        sum_lanes(plane, &mut lanes);
        *out = (fold_lanes(&lanes) * inv) as f32;
    }
}

/// Spreads `dy[i][c] / hw` over each plane; overwrites `dx`.
pub fn global_avg_pool_backward(c: usize, hw: usize, n: usize, dy: &[f32], dx: &mut [f32]) {
    debug_assert!(dx.len() >= n * c * hw && dy.len() >= n * c);
    let inv = 1.0 / hw as f32;
    for (plane, &g) in dx.chunks_exact_mut(hw).zip(dy).take(n * c) {
        plane.fill(g * inv);
    }
}
