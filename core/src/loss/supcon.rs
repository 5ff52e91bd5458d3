//! Supervised contrastive loss (Khosla et al. 2020) as the reference `SupConLoss`
//! computes it with one view per sample and `contrast_mode = 'all'`.

/// The reference temperature (and base temperature).
pub const SUPCON_TEMPERATURE: f32 = 0.07;

/// Floats of scratch [`supcon`] needs for a batch of `n`.
pub const fn supcon_scratch_len(n: usize) -> usize {
    n * n
}

/// Dimensions handled per pass of the f64 accumulator in the backward product.
const CHUNK: usize = 64;

/// Supervised contrastive loss of the already L2-normalised rows `features` (`n × d`).
///
/// With `s_ij = f_i·f_j / temperature`, `P_i = #{j ≠ i : y_j = y_i}` and
/// `lse_i = ln Σ_{k≠i} exp(s_ik)`, the value is
///
/// `loss = -(temperature / base_temperature) · (1/n) Σ_i (1/max(P_i, 1)) Σ_{j≠i, y_j=y_i} (s_ij - lse_i)`,
///
/// which is the reference's value: it subtracts the detached row max (self included)
/// from the logits before `log_prob = logits - log Σ_{k≠i} exp(logits_ik)`, and the max
/// cancels exactly. Here the log-sum-exp subtracts the max over `k ≠ i` instead (the same
/// value, but stable for features that are not normalised). An anchor with no positive
/// contributes 0 (the reference's `mask_pos_pairs < 1e-6 → 1`).
///
/// Writes (overwrites) `dfeatures = scale · dloss/dfeatures`. With
/// `G_ij = dloss/ds_ij = -(T/T_b)/n · ([y_j=y_i]/max(P_i,1) - [P_i>0]·softmax_{k≠i}(s_i)_j)`
/// for `j ≠ i` and `G_ii = 0`, `dloss/df_i = Σ_j (G_ij + G_ji) f_j / T`.
///
/// `scratch` holds at least [`supcon_scratch_len`]`(n)` floats. Deviation: for `n == 1`
/// the reference gives NaN (`log 0`); this returns 0 with a zero gradient.
pub fn supcon(
    n: usize,
    d: usize,
    features: &[f32],
    labels: &[u32],
    temperature: f32,
    base_temperature: f32,
    scale: f32,
    dfeatures: &mut [f32],
    scratch: &mut [f32],
) -> f32 {
    debug_assert!(features.len() >= n * d && dfeatures.len() >= n * d);
    debug_assert!(labels.len() >= n && scratch.len() >= supcon_scratch_len(n));
    debug_assert!(temperature > 0.0 && base_temperature > 0.0);
    let inv_t = 1.0 / temperature as f64;
    let s = &mut scratch[..n * n];

    // Similarity logits s_ij (symmetric: compute the upper triangle, mirror it).
    for i in 0..n {
        let fi = &features[i * d..(i + 1) * d];
        for j in i..n {
            let fj = &features[j * d..(j + 1) * d];
            let mut dot = 0.0f64;
            for (&a, &b) in fi.iter().zip(fj) {
                dot += a as f64 * b as f64;
            }
            let v = (dot * inv_t) as f32;
            s[i * n + j] = v;
            s[j * n + i] = v;
        }
    }

    // Per anchor: loss term, then overwrite row i of the scratch with G_i·.
    let coef = -(temperature as f64 / base_temperature as f64) / n as f64;
    let mut total = 0.0f64;
    for i in 0..n {
        let row = &mut s[i * n..(i + 1) * n];
        if n < 2 {
            row.fill(0.0);
            continue;
        }
        let yi = labels[i];
        let mut m = f64::NEG_INFINITY;
        let mut pos = 0usize;
        for j in 0..n {
            if j != i {
                m = m.max(row[j] as f64);
                if labels[j] == yi {
                    pos += 1;
                }
            }
        }
        let mut z = 0.0f64;
        let mut pos_sum = 0.0f64;
        for j in 0..n {
            if j != i {
                z += libm::exp(row[j] as f64 - m);
                if labels[j] == yi {
                    pos_sum += row[j] as f64;
                }
            }
        }
        let lse = m + libm::log(z);
        let denom = pos.max(1) as f64;
        total += (pos_sum - pos as f64 * lse) / denom;
        let has_pos = if pos > 0 { 1.0 } else { 0.0 };
        for j in 0..n {
            row[j] = if j == i {
                0.0
            } else {
                let p = libm::exp(row[j] as f64 - lse);
                let t = if labels[j] == yi { 1.0 / denom } else { 0.0 };
                (coef * (t - has_pos * p)) as f32
            };
        }
    }

    // dfeatures_i = scale/T · Σ_j (G_ij + G_ji) f_j, accumulated in f64 chunks of dims.
    let g = scale as f64 * inv_t;
    for i in 0..n {
        let mut k0 = 0;
        while k0 < d {
            let k1 = (k0 + CHUNK).min(d);
            let mut acc = [0.0f64; CHUNK];
            for j in 0..n {
                let w = s[i * n + j] as f64 + s[j * n + i] as f64;
                if w != 0.0 {
                    let fj = &features[j * d + k0..j * d + k1];
                    for (a, &f) in acc.iter_mut().zip(fj) {
                        *a += w * f as f64;
                    }
                }
            }
            for (o, &a) in dfeatures[i * d + k0..i * d + k1].iter_mut().zip(&acc) {
                *o = (g * a) as f32;
            }
            k0 = k1;
        }
    }
    (coef * total) as f32
}
