//! Stochastic gradient descent with momentum, weight decay and Nesterov, as one step of
//! PyTorch's `torch.optim.SGD` (single-tensor path, `dampening = 0`).

/// SGD hyper-parameters. [`Default`] is the reference recipe: momentum 0.9, weight decay
/// 1e-4, Nesterov.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd { momentum: 0.9, weight_decay: 1e-4, nesterov: true }
    }
}

/// One SGD step over `params` with gradients `grads` and momentum buffer `momentum_buf`
/// (all the same length; start the buffer at zero):
///
/// ```text
/// d   = g + wd·p
/// buf = momentum·buf + d        (a zero buffer gives PyTorch's first-step buf = d)
/// d   = nesterov ? d + momentum·buf : buf
/// p   = p - lr·d
/// ```
///
/// The rounding follows PyTorch's CPU kernels, which evaluate `a.add(b, alpha)` as one
/// fused multiply-add `fma(b, alpha, a)` and `buf.mul_(m)` as its own rounding, so results
/// are bit-identical to `torch.optim.SGD` on CPU (checked in `tests/optim_golden.rs`).
/// A zero weight decay or momentum skips that term, as PyTorch does.
pub fn sgd_step(cfg: &Sgd, lr: f32, params: &mut [f32], grads: &[f32], momentum_buf: &mut [f32]) {
    debug_assert!(grads.len() == params.len());
    let m = cfg.momentum;
    let wd = cfg.weight_decay;
    let neg_lr = -lr;
    if m != 0.0 {
        debug_assert!(momentum_buf.len() == params.len());
        for ((p, &g), b) in params.iter_mut().zip(grads).zip(momentum_buf.iter_mut()) {
            let mut d = g;
            if wd != 0.0 {
                d = libm::fmaf(*p, wd, d);
            }
            // buf.mul_(m) rounds, then add_(d, alpha = 1) rounds once more.
            let nb = m * *b + d;
            *b = nb;
            if cfg.nesterov {
                d = libm::fmaf(nb, m, d);
            } else {
                d = nb;
            }
            *p = libm::fmaf(d, neg_lr, *p);
        }
    } else {
        for (p, &g) in params.iter_mut().zip(grads) {
            let mut d = g;
            if wd != 0.0 {
                d = libm::fmaf(*p, wd, d);
            }
            *p = libm::fmaf(d, neg_lr, *p);
        }
    }
}
