//! Learning-rate schedules of the reference `train.py` (`adjust_learning_rate`).
//!
//! Epochs are 1-based: the reference calls `adjust_learning_rate(optimizer, epoch + 1)`
//! before each epoch, so `lr(1)` is the rate of the first epoch. Arithmetic runs in f64
//! in the reference's own evaluation order (Python floats) and rounds to f32 at the end,
//! which is also where PyTorch rounds the rate (the kernel's `alpha = -lr`).

/// A learning rate per epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LrSchedule {
    /// Cosine annealing with a linear warm-up, the reference's
    ///
    /// ```text
    /// e <= W:  lr = 0.5·base·(1 + cos(π·e/E))·(e - 1)/W + floor·(W + 1 - e)/W
    /// e >  W:  lr = 0.5·base·(1 + cos(π·e/E))
    /// ```
    ///
    /// with `E = epochs`, `W = warmup_epochs` and `floor = warmup_floor`; the reference
    /// hard-codes `W = 10` (its literals 10 and 11) and `floor = 0.01`. `W = 0` disables
    /// the warm-up.
    Cosine { base_lr: f32, epochs: u32, warmup_epochs: u32, warmup_floor: f32 },
    /// `base_lr · gamma^k` where `k` counts the milestones `<= epoch` among the first
    /// `n_milestones` (the reference multiplies the rate by `gamma` when the epoch is a
    /// milestone: `[80, 120]`, gamma 0.1).
    Step { base_lr: f32, milestones: [u32; 4], n_milestones: usize, gamma: f32 },
    /// A fixed rate.
    Constant { lr: f32 },
}

impl LrSchedule {
    /// The reference's warm-up length.
    pub const REFERENCE_WARMUP_EPOCHS: u32 = 10;
    /// The reference's warm-up starting rate.
    pub const REFERENCE_WARMUP_FLOOR: f32 = 0.01;

    /// The reference cosine schedule (10-epoch warm-up from 0.01).
    pub const fn reference_cosine(base_lr: f32, epochs: u32) -> Self {
        LrSchedule::Cosine {
            base_lr,
            epochs,
            warmup_epochs: Self::REFERENCE_WARMUP_EPOCHS,
            warmup_floor: Self::REFERENCE_WARMUP_FLOOR,
        }
    }

    /// The reference step schedule: ×0.1 at epochs 80 and 120.
    pub const fn reference_step(base_lr: f32) -> Self {
        LrSchedule::Step { base_lr, milestones: [80, 120, 0, 0], n_milestones: 2, gamma: 0.1 }
    }

    /// The learning rate of (1-based) epoch `epoch`.
    pub fn lr(&self, epoch: u32) -> f32 {
        let lr = match *self {
            LrSchedule::Cosine { base_lr, epochs, warmup_epochs, warmup_floor } => {
                let e = epoch as f64;
                let w = warmup_epochs as f64;
                let base = base_lr as f64;
                let c = 1.0 + libm::cos(core::f64::consts::PI * e / epochs.max(1) as f64);
                if warmup_epochs > 0 && epoch <= warmup_epochs {
                    0.5 * base * c * (e - 1.0) / w + warmup_floor as f64 * (w + 1.0 - e) / w
                } else {
                    0.5 * base * c
                }
            }
            LrSchedule::Step { base_lr, milestones, n_milestones, gamma } => {
                let mut lr = base_lr as f64;
                for &ms in &milestones[..n_milestones.min(milestones.len())] {
                    if epoch >= ms {
                        lr *= gamma as f64;
                    }
                }
                lr
            }
            LrSchedule::Constant { lr } => lr as f64,
        };
        lr as f32
    }
}
