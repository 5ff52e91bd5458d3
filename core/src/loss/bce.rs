//! Binary cross-entropy on probabilities, as PyTorch `nn.BCELoss`.

/// Binary cross-entropy of probabilities `p` against targets `t` (same length), as
/// PyTorch `nn.BCELoss`: `loss_k = -(t_k·max(ln p_k, -100) + (1-t_k)·max(ln(1-p_k), -100))`.
/// Returns `Σ_k loss_k / mean_over` (PyTorch's `reduction='mean'` when `mean_over == p.len()`;
/// pass the full element count when working on a chunk).
///
/// Writes (overwrites) `dp_k = scale * (p_k - t_k) / max(p_k·(1-p_k), 1e-12) / mean_over`,
/// PyTorch's own backward formula. It is the exact derivative of the returned value
/// wherever `p·(1-p) >= 1e-12`; closer to 0 or 1 it is PyTorch's clamped value (so that
/// a sigmoid saturated to exactly 0.0 or 1.0 gives a finite gradient, zero after the
/// sigmoid's backward, as in the reference).
pub fn bce(p: &[f32], t: &[f32], mean_over: usize, scale: f32, dp: &mut [f32]) -> f32 {
    debug_assert!(mean_over > 0);
    debug_assert!(t.len() == p.len() && dp.len() >= p.len());
    let inv = 1.0 / mean_over as f64;
    let g = scale as f64 * inv;
    let mut total = 0.0f64;
    for ((d, &pk), &tk) in dp.iter_mut().zip(p).zip(t) {
        debug_assert!((0.0..=1.0).contains(&pk), "BCE input {pk} outside [0, 1]");
        let pk64 = pk as f64;
        // 1 - p in f32 as PyTorch does, so p = 1 - ulp/2 rounds the same way.
        let q = (1.0f32 - pk) as f64;
        let lp = libm::log(pk64).max(-100.0);
        let lq = libm::log(q).max(-100.0);
        let tk = tk as f64;
        total -= tk * lp + (1.0 - tk) * lq;
        *d = (g * (pk64 - tk) / (pk64 * q).max(1e-12)) as f32;
    }
    (total * inv) as f32
}
