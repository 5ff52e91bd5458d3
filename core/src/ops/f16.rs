//! IEEE half-precision storage of activations (`--precision 16-mixed`): the f16 forms of
//! the two conversions [`super::narrow`] and [`super::widen`] run.
//!
//! Rounding is to nearest, ties to even, as `torch.Tensor.half()` rounds: values past
//! f16's largest finite one (65504) round to infinity, those below its smallest subnormal
//! (2^-24) to zero; NaNs stay quiet NaNs. Widening is exact. On x86-64 the F16C
//! instructions convert eight values at a time (every CPU the AVX2 path runs on has
//! them); elsewhere the `half` crate's portable conversion does. Both give the same bits
//! (the tests hold the vector path to the portable one over every rounding boundary).

use half::f16;

/// Stores `x` as f16 bits in `y`, and rounds `x` in place to the same values (see
/// [`super::bf16_narrow`] for why the forward goes on from the rounded values).
pub fn f16_narrow(x: &mut [f32], y: &mut [u16]) {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if super::cpu_isa() >= super::Isa::Avx2 {
        // SAFETY: the CPU runs AVX2 and F16C (the AVX2 path requires both).
        return unsafe { narrow_f16c(x, y) };
    }
    narrow_loop(x, y)
}

/// `y = x` (f16 bits) widened to `f32` (exact).
pub fn f16_widen(x: &[u16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if super::cpu_isa() >= super::Isa::Avx2 {
        // SAFETY: as in f16_narrow.
        return unsafe { widen_f16c(x, y) };
    }
    widen_loop(x, y)
}

fn narrow_loop(x: &mut [f32], y: &mut [u16]) {
    for (v, o) in x.iter_mut().zip(y.iter_mut()) {
        let h = f16::from_f32(*v);
        *o = h.to_bits();
        *v = h.to_f32();
    }
}

fn widen_loop(x: &[u16], y: &mut [f32]) {
    for (v, o) in x.iter().zip(y.iter_mut()) {
        *o = f16::from_bits(*v).to_f32();
    }
}

/// Eight lanes at a time with `vcvtps2ph` (round to nearest even) and `vcvtph2ps`; the
/// tail through the portable loop.
///
/// # Safety
/// The CPU must support AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn narrow_f16c(x: &mut [f32], y: &mut [u16]) {
    use core::arch::x86_64::*;
    let body = x.len() / 8 * 8;
    for i in (0..body).step_by(8) {
        // SAFETY: i + 8 <= body <= len of both slices; unaligned loads and stores.
        unsafe {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(y.as_mut_ptr().add(i).cast(), h);
            _mm256_storeu_ps(x.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    narrow_loop(&mut x[body..], &mut y[body..]);
}

/// # Safety
/// The CPU must support AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_f16c(x: &[u16], y: &mut [f32]) {
    use core::arch::x86_64::*;
    let body = x.len() / 8 * 8;
    for i in (0..body).step_by(8) {
        // SAFETY: as in narrow_f16c.
        unsafe {
            let h = _mm_loadu_si128(x.as_ptr().add(i).cast());
            _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    widen_loop(&x[body..], &mut y[body..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(v: f32) -> (u16, f32) {
        let (mut x, mut y) = ([v], [0u16]);
        f16_narrow(&mut x, &mut y);
        (y[0], x[0])
    }

    #[test]
    fn rounds_to_nearest_even_by_hand() {
        // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1).
        assert_eq!(round(1.0 + 1.0 / 2048.0), (0x3c00, 1.0));
        // 1 + 3·2^-11 lies halfway between 1 + 2^-10 and 1 + 2^-9: ties to even (1 + 2^-9).
        assert_eq!(round(1.0 + 3.0 / 2048.0), (0x3c02, 1.0 + 1.0 / 512.0));
        assert_eq!(round(-2.0), (0xc000, -2.0));
        assert_eq!(round(65504.0), (0x7bff, 65504.0));
        // Half an ulp past the largest finite value (65520) is a tie that overflows.
        assert_eq!(round(65520.0), (0x7c00, f32::INFINITY));
        assert_eq!(round(65519.0), (0x7bff, 65504.0));
        // The smallest subnormal, and half of it (a tie to even: zero).
        assert_eq!(round(2f32.powi(-24)), (0x0001, 2f32.powi(-24)));
        assert_eq!(round(2f32.powi(-25)), (0x0000, 0.0));
        assert_eq!(round(-1e-30), (0x8000, -0.0));
        let (bits, back) = round(f32::NAN);
        assert!(bits & 0x7c00 == 0x7c00 && bits & 0x3ff != 0, "{bits:#06x}");
        assert!(back.is_nan());
    }

    /// The vector path (where the CPU has one) against the `half` crate's portable
    /// conversion, bit for bit: special values and, for every f32 exponent, mantissas
    /// around each rounding boundary of f16's normal and subnormal ranges, in slices of
    /// 61 (the vector body and a tail).
    #[test]
    fn rounds_as_the_half_crate_does() {
        let mut it = patterns().peekable();
        while it.peek().is_some() {
            let (mut us, mut x, mut y, mut n) = ([0u32; 61], [0f32; 61], [0u16; 61], 0);
            for u in it.by_ref().take(61) {
                (us[n], x[n]) = (u, f32::from_bits(u));
                n += 1;
            }
            f16_narrow(&mut x[..n], &mut y[..n]);
            for i in 0..n {
                let want = f16::from_f32(f32::from_bits(us[i]));
                assert_eq!(y[i], want.to_bits(), "{:#010x}", us[i]);
                assert_eq!(x[i].to_bits(), want.to_f32().to_bits(), "{:#010x}", us[i]);
            }
        }
    }

    fn patterns() -> impl Iterator<Item = u32> {
        let special =
            [0u32, 0x8000_0000, 0x7f80_0000, 0xff80_0000, 0x7fc0_0000, 0x7f80_0001, 0xffff_ffff, 0x7f7f_ffff, 1];
        let sweep = (0u32..512).flat_map(|e| {
            let lows =
                [0u32, 1, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7f_ffff, 0x12_3456, 0x40_0000, 0x7f_e000];
            lows.into_iter().map(move |m| (e << 23) | m)
        });
        special.into_iter().chain(sweep)
    }

    #[test]
    fn widening_is_exact_and_inverts_narrowing() {
        // Every f16 but the NaNs, in slices of 61.
        let mut it = (0..=u16::MAX).filter(|b| b & 0x7c00 != 0x7c00 || b & 0x3ff == 0).peekable();
        while it.peek().is_some() {
            let (mut bits, mut y, mut n) = ([0u16; 61], [0f32; 61], 0);
            for b in it.by_ref().take(61) {
                bits[n] = b;
                n += 1;
            }
            f16_widen(&bits[..n], &mut y[..n]);
            for (b, v) in bits[..n].iter().zip(&y[..n]) {
                assert_eq!(v.to_bits(), f16::from_bits(*b).to_f32().to_bits(), "{b:#06x}");
                assert_eq!(round(*v).0, *b, "{b:#06x}");
            }
        }
    }
}
