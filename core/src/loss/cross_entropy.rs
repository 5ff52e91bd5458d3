//! Softmax cross-entropy (PyTorch `F.cross_entropy` with integer labels).

/// Softmax cross-entropy over the rows of `logits` (`n × classes`, row-major).
///
/// Returns `Σ_i loss_i / mean_over`, where `loss_i = logsumexp(z_i) - z_i[y_i]`. Pass
/// `mean_over == n` for PyTorch's batch mean; a caller that works on a chunk of a batch
/// passes the full batch size, so that the chunks' values (and gradients) sum to the
/// whole batch's.
///
/// Writes (overwrites) `dlogits[i*classes + c] = scale * (softmax(z_i)[c] - [c == y_i]) / mean_over`,
/// i.e. `scale` times the gradient of the returned value.
///
/// Numerically stable: the log-sum-exp subtracts the row maximum; sums run in f64.
pub fn cross_entropy(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    mean_over: usize,
    scale: f32,
    dlogits: &mut [f32],
) -> f32 {
    debug_assert!(classes > 0 && mean_over > 0);
    debug_assert!(logits.len() >= n * classes && dlogits.len() >= n * classes);
    debug_assert!(labels.len() >= n);
    let inv = 1.0 / mean_over as f64;
    let g = scale as f64 * inv;
    let mut total = 0.0f64;
    for i in 0..n {
        let row = &logits[i * classes..(i + 1) * classes];
        let drow = &mut dlogits[i * classes..(i + 1) * classes];
        let y = labels[i] as usize;
        debug_assert!(y < classes, "label {y} out of range for {classes} classes");
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let mut s = 0.0f64;
        for &z in row {
            s += libm::exp(z as f64 - m);
        }
        let lse = m + libm::log(s);
        total += lse - row[y] as f64;
        let inv_s = 1.0 / s;
        for (c, (d, &z)) in drow.iter_mut().zip(row).enumerate() {
            let p = libm::exp(z as f64 - m) * inv_s;
            let t = if c == y { 1.0 } else { 0.0 };
            *d = (g * (p - t)) as f32;
        }
    }
    (total * inv) as f32
}
