//! Fully connected layer, `y = x Wᵀ + b` with PyTorch's `[out_f][in_f]` weight layout.

use super::sgemm;

/// Shape of a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Input features per sample.
    pub in_f: usize,
    /// Output features per sample.
    pub out_f: usize,
}

impl Linear {
    /// Weight floats, `[out_f][in_f]` as PyTorch stores them (checkpoints load as is).
    pub const fn weight_len(&self) -> usize {
        self.out_f * self.in_f
    }
}

/// `y[n×out_f] = x[n×in_f] · Wᵀ + b` (overwrites `y`).
pub fn linear_forward(s: &Linear, n: usize, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    if n == 0 || s.out_f == 0 {
        return;
    }
    debug_assert!(b.len() >= s.out_f);
    sgemm(n, s.out_f, s.in_f, x, s.in_f, false, w, s.in_f, true, y, s.out_f, false);
    for row in y.chunks_exact_mut(s.out_f).take(n) {
        for (v, &bb) in row.iter_mut().zip(b) {
            *v += bb;
        }
    }
}

/// `dx[n×in_f] = dy[n×out_f] · W` (overwrites `dx`).
pub fn linear_backward_input(s: &Linear, n: usize, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    if n == 0 || s.in_f == 0 {
        return;
    }
    sgemm(n, s.in_f, s.out_f, dy, s.out_f, false, w, s.in_f, false, dx, s.in_f, false);
}

/// `dW += dyᵀ · x`, `db += Σ_n dy` (adds, so batch chunks accumulate).
pub fn linear_accumulate_weight_grad(s: &Linear, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32]) {
    if n == 0 || s.out_f == 0 {
        return;
    }
    sgemm(s.out_f, s.in_f, n, dy, s.out_f, true, x, s.in_f, false, dw, s.in_f, true);
    debug_assert!(db.len() >= s.out_f);
    for (o, d) in db.iter_mut().enumerate().take(s.out_f) {
        let mut acc = 0.0f64;
        for i in 0..n {
            acc += dy[i * s.out_f + o] as f64;
        }
        *d += acc as f32;
    }
}
