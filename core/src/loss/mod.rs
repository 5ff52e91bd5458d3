//! Losses with their gradients: softmax cross-entropy, binary cross-entropy (PyTorch
//! `nn.BCELoss`), row L2 normalisation (`F.normalize(x, dim=1)`) and the supervised
//! contrastive loss (SupCon, Khosla et al. 2020) as the reference uses it.
//!
//! Every loss returns its value and *overwrites* a gradient buffer with
//! `scale * d(value)/d(input)`, so a caller folds a loss weight (λ, wx, wy) into `scale`.
//! Reductions run in f64; inputs and outputs are f32.

mod bce;
mod cross_entropy;
mod normalize;
mod supcon;

pub use bce::bce;
pub use cross_entropy::cross_entropy;
pub use normalize::{l2_normalize_backward, l2_normalize_forward, L2_NORMALIZE_EPS};
pub use supcon::{supcon, supcon_scratch_len, SUPCON_TEMPERATURE};
