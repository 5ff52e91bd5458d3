//! Elementwise activations and the residual/gradient add.

/// ReLU into a separate buffer, for when the pre-activation must survive (BN backward).
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = if v > 0.0 { v } else { 0.0 };
    }
}

/// ReLU in place, the common case: backward only needs the output.
pub fn relu_inplace(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = if *v > 0.0 { *v } else { 0.0 };
    }
}

/// ReLU backward from the saved *output* `y` (no need to keep the input): zeroes `dy`
/// where `y <= 0`.
pub fn relu_backward_inplace(y: &[f32], dy: &mut [f32]) {
    debug_assert_eq!(y.len(), dy.len());
    // A select, not a conditional store, so the loop vectorizes.
    for (g, &v) in dy.iter_mut().zip(y) {
        *g = if v > 0.0 { *g } else { 0.0 };
    }
}

/// Logistic sigmoid, evaluated without overflow for large `|x|`.
pub fn sigmoid_forward(x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (o, &v) in y.iter_mut().zip(x) {
        *o = if v >= 0.0 {
            1.0 / (1.0 + libm::expf(-v))
        } else {
            let e = libm::expf(v);
            e / (1.0 + e)
        };
    }
}

/// Sigmoid backward from the saved output `y`: `dx = dy · y · (1 − y)`.
pub fn sigmoid_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    debug_assert!(y.len() == dy.len() && dy.len() == dx.len());
    for ((o, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
        *o = g * v * (1.0 - v);
    }
}

/// `dst += src`: residual connections forward, and gradient accumulation backward.
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    debug_assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// `y = x·std[ch] + mean[ch]` over `n` images of `c` planes of `hw` pixels: the
/// de-normalised image that the decoders reconstruct.
pub fn denormalize(c: usize, hw: usize, n: usize, mean: &[f32], std: &[f32], x: &[f32], y: &mut [f32]) {
    for (i, (xs, ys)) in x.chunks_exact(hw).zip(y.chunks_exact_mut(hw)).take(n * c).enumerate() {
        let ch = i % c;
        for (a, b) in xs.iter().zip(ys) {
            *b = a * std[ch] + mean[ch];
        }
    }
}
