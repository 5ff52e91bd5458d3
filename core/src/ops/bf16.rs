//! bf16 storage of activations (`--precision bf16-mixed`): the two conversions a plan's
//! [`crate::plan::Op::Narrow`] and [`crate::plan::Op::Widen`] run.
//!
//! Rounding is to nearest, ties to even, as `torch.Tensor.bfloat16()` rounds; a NaN stays
//! a NaN (quiet), infinities stay infinities, and a value past bf16's largest finite one
//! rounds to infinity. Widening is exact. All arithmetic stays `f32`: only the copy a plan
//! keeps for backward is 16 bits.

use half::bf16;

/// Stores `x` as bf16 in `y`, and rounds `x` in place to the same values, so whatever
/// the forward computes next from `x` agrees with what the backward reads back from `y`.
pub fn bf16_narrow(x: &mut [f32], y: &mut [u16]) {
    debug_assert_eq!(x.len(), y.len());
    for (v, o) in x.iter_mut().zip(y.iter_mut()) {
        let h = bf16::from_f32(*v);
        *o = h.to_bits();
        *v = h.to_f32();
    }
}

/// `y = x` widened to `f32` (exact).
pub fn bf16_widen(x: &[u16], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (v, o) in x.iter().zip(y.iter_mut()) {
        *o = f32::from_bits((*v as u32) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(v: f32) -> (u16, f32) {
        let (mut x, mut y) = ([v], [0u16]);
        bf16_narrow(&mut x, &mut y);
        (y[0], x[0])
    }

    #[test]
    fn rounds_to_nearest_even_by_hand() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(round(1.0 + 1.0 / 256.0), (0x3f80, 1.0));
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
        assert_eq!(round(1.0 + 3.0 / 256.0), (0x3f82, 1.0 + 1.0 / 64.0));
        // Just above the tie rounds up.
        assert_eq!(round(f32::from_bits(0x3f80_8001)), (0x3f81, 1.0 + 1.0 / 128.0));
        assert_eq!(round(-2.0), (0xc000, -2.0));
        assert_eq!(round(f32::INFINITY), (0x7f80, f32::INFINITY));
        // f32::MAX is past bf16's largest finite value by more than half an ulp.
        assert_eq!(round(f32::MAX).0, 0x7f80);
        let (bits, back) = round(f32::NAN);
        assert!(bits & 0x7f80 == 0x7f80 && bits & 0x7f != 0, "{bits:#06x}");
        assert!(back.is_nan());
    }

    #[test]
    fn widening_is_exact_and_inverts_narrowing() {
        for bits in [0u16, 0x8000, 0x0001, 0x3f80, 0x7f7f, 0xff80, 0x4049] {
            let mut y = [0.0f32];
            bf16_widen(&[bits], &mut y);
            assert_eq!(round(y[0]).0, bits, "{bits:#06x}");
        }
    }
}
