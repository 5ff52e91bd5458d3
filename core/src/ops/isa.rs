//! Which vector instructions the CPU kernels use: detected once with `cpuid` (no std, so
//! no `is_x86_feature_detected!`), and capped by [`limit_isa`] (the host maps
//! `HPFF_CPU_ISA=avx512|avx2|neon|scalar` to it, for tests and for users).
//!
//! - [`Isa::Avx512`]: AVX-512F besides AVX2 + FMA. The GEMM micro-kernel, and the direct
//!   3×3 convolutions on maps 16 or 32 wide (or 8 wide, two rows a vector) run 16-pixel
//!   vectors: the GEMM, forward and input gradient with the same FMA chain per output as
//!   the AVX2 kernels (the same bits), the weight gradient with 16 lane chains (other
//!   last bits, documented in `conv_wgrad`).
//! - [`Isa::Avx2`]: AVX2 + FMA (+ F16C), the GEMM micro-kernel and every direct kernel.
//! - [`Isa::Neon`]: aarch64's Advanced SIMD (every aarch64 CPU has it): the AVX2 GEMM
//!   tile and direct kernels, each 8-pixel vector a pair of 4-lane registers, so the
//!   same FMA chains, folds and bits as AVX2.
//! - [`Isa::Scalar`]: the portable loops (every target).
//!
//! The order says which sets a cap allows (`Scalar < Neon < Avx2 < Avx512`); a CPU has
//! only the x86 or only the Arm ones.

use core::sync::atomic::{AtomicU8, Ordering};

/// The vector instruction sets the kernels are written for, in increasing order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Neon,
    Avx2,
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512];

    /// The name `HPFF_CPU_ISA` and `hpff bench` use.
    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Neon => "neon",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The set named `name` (see [`Isa::name`]).
    pub fn parse(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU can run the set's kernels (as the path that runs, when capped to it).
    pub fn runs_here(self) -> bool {
        let d = detected_isa();
        match self {
            Isa::Scalar => true,
            Isa::Neon => d == Isa::Neon,
            Isa::Avx2 | Isa::Avx512 => d >= Isa::Avx2 && self <= d,
        }
    }

    const fn code(self) -> u8 {
        self as u8 + 1
    }

    fn of_code(c: u8) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.code() == c)
    }
}

const UNKNOWN: u8 = 0;
static DETECTED: AtomicU8 = AtomicU8::new(UNKNOWN);
static LIMIT: AtomicU8 = AtomicU8::new(UNKNOWN);

/// The richest set this CPU supports, whatever the limit.
pub fn detected_isa() -> Isa {
    if let Some(i) = Isa::of_code(DETECTED.load(Ordering::Relaxed)) {
        return i;
    }
    let i = detect();
    DETECTED.store(i.code(), Ordering::Relaxed);
    i
}

/// The set the kernels use: the richest this CPU runs within the cap of [`limit_isa`]
/// (the detected one without a cap; a cap of the other architecture's sets leaves
/// [`Isa::Scalar`]).
pub fn cpu_isa() -> Isa {
    let d = detected_isa();
    match Isa::of_code(LIMIT.load(Ordering::Relaxed)) {
        None => d,
        Some(cap) => Isa::ALL.into_iter().rev().find(|i| *i <= cap && i.runs_here()).unwrap_or(Isa::Scalar),
    }
}

/// Caps the set the kernels use from now on (`None`: no cap). Set it before the first
/// step: a run whose kernels change mid-way changes its bits (AVX2 ↔ scalar; AVX-512 and
/// AVX2 give the same bits).
pub fn limit_isa(limit: Option<Isa>) {
    LIMIT.store(limit.map_or(UNKNOWN, Isa::code), Ordering::Relaxed);
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    let (avx2, avx512) = x86_features();
    let avx2 = avx2 || cfg!(all(target_feature = "avx2", target_feature = "fma", target_feature = "f16c"));
    match (avx2, avx512) {
        (true, true) => Isa::Avx512,
        (true, false) => Isa::Avx2,
        _ => Isa::Scalar,
    }
}

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
fn detect() -> Isa {
    Isa::Neon
}

#[cfg(not(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon"))))]
fn detect() -> Isa {
    Isa::Scalar
}

/// (AVX2 + FMA + F16C, AVX-512F), each with the OS saving the registers it needs.
// `__cpuid` became a safe fn in newer toolchains; the `unsafe` blocks keep older ones happy.
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn x86_features() -> (bool, bool) {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID exists on every x86_64 CPU.
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 7 {
        return (false, false);
    }
    // SAFETY: leaf 1 exists (max_leaf >= 7).
    let l1 = unsafe { __cpuid(1) };
    let fma = l1.ecx & (1 << 12) != 0;
    // F16C (the f16 conversions of `--precision 16-mixed`): on every AVX2 CPU made, but
    // the AVX2 path requires it rather than assume it.
    let f16c = l1.ecx & (1 << 29) != 0;
    let osxsave = l1.ecx & (1 << 27) != 0;
    let avx = l1.ecx & (1 << 28) != 0;
    if !(fma && f16c && osxsave && avx) {
        return (false, false);
    }
    // SAFETY: OSXSAVE is set, so XGETBV is available.
    let xcr0 = unsafe { xgetbv0() };
    // SAFETY: leaf 7 exists (checked above).
    let l7 = unsafe { __cpuid_count(7, 0) };
    // The OS must save XMM and YMM state (XCR0 bits 1, 2), and for AVX-512 the opmask
    // and both halves of the 32 ZMM registers (bits 5, 6, 7).
    let avx2 = xcr0 & 0b110 == 0b110 && l7.ebx & (1 << 5) != 0;
    let avx512 = avx2 && xcr0 & 0b1110_0000 == 0b1110_0000 && l7.ebx & (1 << 16) != 0;
    (avx2, avx512)
}

/// # Safety
/// The CPU must support XGETBV (CPUID.1:ECX.OSXSAVE).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: forwarded contract.
    unsafe { core::arch::x86_64::_xgetbv(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for i in Isa::ALL {
            assert_eq!(Isa::parse(i.name()), Some(i));
            assert_eq!(Isa::of_code(i.code()), Some(i));
        }
        assert_eq!(Isa::parse("sse"), None);
        assert!(Isa::Scalar < Isa::Neon && Isa::Neon < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        // Each architecture detects its own sets only.
        let d = detected_isa();
        if cfg!(target_arch = "x86_64") {
            assert_ne!(d, Isa::Neon);
        } else if cfg!(target_arch = "aarch64") {
            assert_eq!(d, Isa::Neon);
        }
    }
}
