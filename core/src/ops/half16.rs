//! The 16-bit formats a plan may keep activations in, and the two conversions by format
//! ([`crate::plan::Op::Narrow`], [`crate::plan::Op::Widen`]).

use super::{bf16_narrow, bf16_widen, f16_narrow, f16_widen};

/// A 16-bit floating-point format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Half {
    /// bfloat16: f32's exponent range, 8 significant bits (`--precision bf16-mixed`).
    Bf16,
    /// IEEE binary16: largest finite value 65504, 11 significant bits (`16-mixed`).
    F16,
}

/// Stores `x` in format `h` in `y` and rounds `x` in place to the stored values.
pub fn narrow(h: Half, x: &mut [f32], y: &mut [u16]) {
    match h {
        Half::Bf16 => bf16_narrow(x, y),
        Half::F16 => f16_narrow(x, y),
    }
}

/// `y` = `x` (format `h`) as `f32`, exactly.
pub fn widen(h: Half, x: &[u16], y: &mut [f32]) {
    match h {
        Half::Bf16 => bf16_widen(x, y),
        Half::F16 => f16_widen(x, y),
    }
}
