//! bf16 storage of activations (`--precision bf16-mixed`): the two conversions a plan's
//! [`crate::plan::Op::Narrow`] and [`crate::plan::Op::Widen`] run.
//!
//! Rounding is to nearest, ties to even, as `torch.Tensor.bfloat16()` rounds; a NaN stays
//! a NaN (quiet), infinities stay infinities, and a value past bf16's largest finite one
//! rounds to infinity. Widening is exact. All arithmetic stays `f32`: only the copy a plan
//! keeps for backward is 16 bits.

/// Stores `x` as bf16 in `y`, and rounds `x` in place to the same values, so whatever
/// the forward computes next from `x` agrees with what the backward reads back from `y`.
///
/// The rounding is `half::bf16::from_f32`'s (the tests hold it to that bit for bit),
/// written without branches so that the loop vectorizes: adding 0x7fff plus the lowest
/// kept bit rounds to nearest even in the integer domain; NaNs are kept quiet instead.
/// Integer arithmetic only, so every instruction set gives the same bits.
pub fn bf16_narrow(x: &mut [f32], y: &mut [u16]) {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if super::cpu_isa() >= super::Isa::Avx2 {
        // SAFETY: the CPU runs AVX2 (cpu_isa never returns a set it lacks).
        return unsafe { narrow_avx2(x, y) };
    }
    narrow_loop(x, y)
}

/// `y = x` widened to `f32` (exact).
pub fn bf16_widen(x: &[u16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if super::cpu_isa() >= super::Isa::Avx2 {
        // SAFETY: as in bf16_narrow.
        return unsafe { widen_avx2(x, y) };
    }
    widen_loop(x, y)
}

#[inline(always)]
fn narrow_loop(x: &mut [f32], y: &mut [u16]) {
    for (v, o) in x.iter_mut().zip(y.iter_mut()) {
        let u = v.to_bits();
        let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16;
        let h = if u & 0x7fff_ffff > 0x7f80_0000 { (u >> 16) | 0x40 } else { rounded };
        *o = h as u16;
        // `h` is never a signalling NaN, so this is `bf16::to_f32` without its NaN branch.
        *v = f32::from_bits(h << 16);
    }
}

#[inline(always)]
fn widen_loop(x: &[u16], y: &mut [f32]) {
    // `bf16::to_f32`'s bits (a NaN comes back quiet) as a select, so the loop vectorizes.
    for (v, o) in x.iter().zip(y.iter_mut()) {
        let u = *v as u32;
        let q = if u & 0x7fff > 0x7f80 { u | 0x40 } else { u };
        *o = f32::from_bits(q << 16);
    }
}

/// The same loop compiled for AVX2 (the host build's baseline is SSE2): 8 lanes.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn narrow_avx2(x: &mut [f32], y: &mut [u16]) {
    narrow_loop(x, y)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn widen_avx2(x: &[u16], y: &mut [f32]) {
    widen_loop(x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

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

    /// The `half` crate's rounding, bit for bit, over special values and a sweep of bit
    /// patterns (every exponent, mantissas around each rounding boundary).
    #[test]
    fn rounds_as_the_half_crate_does() {
        for u in patterns() {
            let want = bf16::from_f32(f32::from_bits(u)).to_bits();
            let (got, back) = round(f32::from_bits(u));
            assert_eq!(got, want, "{u:#010x}");
            assert_eq!(back.to_bits(), (want as u32) << 16, "{u:#010x}");
        }
    }

    fn patterns() -> impl Iterator<Item = u32> {
        let special = [
            0u32,
            0x8000_0000,
            0x7f80_0000,
            0xff80_0000,
            0x7fc0_0000,
            0x7f80_0001,
            0xffff_ffff,
            0x7f7f_ffff,
            0x0000_0001,
        ];
        let sweep = (0u32..512).flat_map(|e| {
            let lows = [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff, 0x1_7fff, 0x1_8000, 0x1_8001, 0x7f_ffff, 0x12_3456];
            lows.into_iter().map(move |m| (e << 23) | m)
        });
        special.into_iter().chain(sweep)
    }

    /// Every bf16 pattern widens to `half`'s `to_f32` bits, in slices of 61 (the vector
    /// body and a tail).
    #[test]
    fn widens_as_the_half_crate_does() {
        let mut it = (0..=u16::MAX).peekable();
        while it.peek().is_some() {
            let (mut bits, mut y, mut n) = ([0u16; 61], [0f32; 61], 0);
            for b in it.by_ref().take(61) {
                bits[n] = b;
                n += 1;
            }
            bf16_widen(&bits[..n], &mut y[..n]);
            for (b, v) in bits[..n].iter().zip(&y[..n]) {
                assert_eq!(v.to_bits(), bf16::from_bits(*b).to_f32().to_bits(), "{b:#06x}");
            }
        }
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
