//! Single-precision GEMM, the workhorse under convolution and linear layers.
//!
//! Classic Goto/BLIS structure, sized so every buffer lives on the stack (no allocator):
//! the K dimension is cut into `KC` slabs, the rows of `op(A)` into `MC` blocks packed
//! as `MR`-row micro-panels, and `op(B)` is packed one `KC × NR` micro-panel at a time
//! (small enough to stay in L1 while the whole packed A block streams past it from L2).
//! A register-blocked micro-kernel computes an `MR × NR` tile of C.
//!
//! Kernels: AVX2+FMA (`6 × 16`: 12 accumulators + 2 B rows + 1 broadcast fill the 16 ymm
//! registers without spilling, runtime-detected on x86_64) and a portable plain-loop
//! kernel (`4 × 16`) the compiler vectorizes for whatever the target has. AVX-512 is not
//! used: its intrinsics and target feature need Rust 1.89, above this crate's MSRV, and on
//! the double-pumped AVX-512 of Zen 4 the AVX2 kernel reaches the same FMA peak.
//!
//! Every element of C is computed as one FMA chain over `p = 0..k` in order, starting from
//! `C` (accumulate) or zero, whatever the blocking; so the AVX2 result does not depend on
//! the matrix sizes around an element, and is reproducible bit for bit. The portable kernel
//! uses separate multiply and add, so its bits differ from the FMA kernel's.

use core::sync::atomic::{AtomicU8, Ordering};

/// Which micro-kernel [`sgemm`] runs; exposed so benches and tests can pin one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GemmKernel {
    /// Plain loops; every target.
    Portable,
    /// AVX2 + FMA intrinsics; x86_64 CPUs that have them (checked at run time).
    Avx2Fma,
}

/// K-slab depth: one packed B micro-panel is `KC × NR` floats, sized to sit in L1.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const KC: usize = 192;
/// Rows of op(A) packed per block (a multiple of every `MR`); the block sits in L2.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const MC: usize = 72;
/// Columns of op(B) packed per block (a multiple of every `NR`): several micro-panels
/// at once, so packing reads whole cache lines of each B row in one sweep.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const NC: usize = 64;
// Small targets: keep the stack footprint to a few KiB.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const KC: usize = 64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const MC: usize = 24;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NC: usize = 16;

/// Largest `MR × NR` over all kernels (edge-tile scratch).
const MAX_MR: usize = 6;
const MAX_NR: usize = 16;

/// A register-blocked micro-kernel: `C[MR×NR] (+)= Apanel[KC×MR]ᵀ · Bpanel[KC×NR]`.
trait MicroKernel {
    const MR: usize;
    const NR: usize;
    /// # Safety
    /// `ap` points to `kc * MR` floats, `bp` to `kc * NR` floats, and `c` to an
    /// `MR × NR` tile with row stride `ldc`, all valid (and `c` writable); the CPU
    /// supports the kernel's instructions.
    unsafe fn run(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, load: bool);
}

struct Portable;

impl MicroKernel for Portable {
    const MR: usize = 4;
    const NR: usize = 16;
    #[inline(always)]
    unsafe fn run(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, load: bool) {
        const MR: usize = Portable::MR;
        const NR: usize = Portable::NR;
        // SAFETY: the caller guarantees the sizes in the trait contract.
        let (a, b) = unsafe { (core::slice::from_raw_parts(ap, kc * MR), core::slice::from_raw_parts(bp, kc * NR)) };
        let mut acc = [[0.0f32; NR]; MR];
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    // SAFETY: (i, j) is inside the tile the caller vouches for.
                    *v = unsafe { *c.add(i * ldc + j) };
                }
            }
        }
        for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for i in 0..MR {
                let ai = ak[i];
                for j in 0..NR {
                    acc[i][j] += ai * bk[j];
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                // SAFETY: as above.
                unsafe { *c.add(i * ldc + j) = *v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl MicroKernel for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;
    #[inline(always)]
    unsafe fn run(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, load: bool) {
        // SAFETY: forwarded contract; AVX2+FMA support is part of it.
        unsafe { kernel_avx2(kc, ap, bp, c, ldc, load) }
    }
}

/// # Safety
/// See [`MicroKernel::run`]; the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, load: bool) {
    use core::arch::x86_64::*;
    const MR: usize = 6;
    // SAFETY: all pointer offsets stay inside the panels / tile of the contract.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if load {
            for i in 0..MR {
                for j in 0..2 {
                    acc[i][j] = _mm256_loadu_ps(c.add(i * ldc + 8 * j));
                }
            }
        }
        let mut a = ap;
        let mut b = bp;
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
            }
            a = a.add(MR);
            b = b.add(16);
        }
        for i in 0..MR {
            for j in 0..2 {
                _mm256_storeu_ps(c.add(i * ldc + 8 * j), acc[i][j]);
            }
        }
    }
}

const UNKNOWN: u8 = 0;
static DETECTED: AtomicU8 = AtomicU8::new(UNKNOWN);

fn encode(k: GemmKernel) -> u8 {
    match k {
        GemmKernel::Portable => 1,
        GemmKernel::Avx2Fma => 2,
    }
}

/// The fastest kernel this CPU supports; detected once, then cached (no std, so no
/// `is_x86_feature_detected!`).
pub fn sgemm_kernel() -> GemmKernel {
    match DETECTED.load(Ordering::Relaxed) {
        1 => GemmKernel::Portable,
        2 => GemmKernel::Avx2Fma,
        _ => {
            let k = detect();
            DETECTED.store(encode(k), Ordering::Relaxed);
            k
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> GemmKernel {
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) || x86_has_avx2_fma() {
        GemmKernel::Avx2Fma
    } else {
        GemmKernel::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> GemmKernel {
    GemmKernel::Portable
}

// `__cpuid` became a safe fn in newer toolchains; the `unsafe` blocks keep the MSRV happy.
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn x86_has_avx2_fma() -> bool {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    // SAFETY: CPUID exists on every x86_64 CPU.
    let max_leaf = unsafe { __cpuid(0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    // SAFETY: leaf 1 exists (max_leaf >= 7).
    let l1 = unsafe { __cpuid(1) };
    let fma = l1.ecx & (1 << 12) != 0;
    let osxsave = l1.ecx & (1 << 27) != 0;
    let avx = l1.ecx & (1 << 28) != 0;
    if !(fma && osxsave && avx) {
        return false;
    }
    // SAFETY: OSXSAVE is set, so XGETBV is available.
    let xcr0 = unsafe { xgetbv0() };
    // The OS must save XMM (bit 1) and YMM (bit 2) state.
    if xcr0 & 0b110 != 0b110 {
        return false;
    }
    // SAFETY: leaf 7 exists (checked above).
    let l7 = unsafe { __cpuid_count(7, 0) };
    l7.ebx & (1 << 5) != 0
}

/// # Safety
/// The CPU must support XGETBV (CPUID.1:ECX.OSXSAVE).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: forwarded contract.
    unsafe { core::arch::x86_64::_xgetbv(0) }
}

/// Row-major `C[m×n] (+)= op(A)[m×k] · op(B)[k×n]`, the one matrix product every layer
/// reduces to. `op(A) = Aᵀ` when `trans_a` (A then stored `k×m`, row stride `lda`), the
/// same for B. With `accumulate` the product is added to C, otherwise C is overwritten
/// (C is never read then, so it may hold garbage or NaN).
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &[f32],
    ldb: usize,
    trans_b: bool,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    sgemm_using(sgemm_kernel(), m, n, k, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate);
}

/// [`sgemm`] with a chosen kernel, for tests and benches comparing kernels; a kernel the
/// CPU lacks falls back to the best one it has.
pub fn sgemm_using(
    kernel: GemmKernel,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &[f32],
    ldb: usize,
    trans_b: bool,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Shape checks: once per call, so the packing and kernels may trust them.
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "sgemm: C too small");
    if k == 0 {
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
    assert!(lda >= ac && a.len() >= (ar - 1) * lda + ac, "sgemm: A too small");
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    assert!(ldb >= bc && b.len() >= (br - 1) * ldb + bc, "sgemm: B too small");
    let p = Problem { m, n, k, a, lda, trans_a, b, ldb, trans_b, ldc, accumulate };
    let kernel = kernel.min(sgemm_kernel());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2Fma => {
            // SAFETY: `kernel <= sgemm_kernel()`, so the CPU has AVX2 and FMA.
            unsafe { sgemm_avx2(&p, c) }
        }
        _ => driver::<Portable>(&p, c),
    }
}

struct Problem<'a> {
    m: usize,
    n: usize,
    k: usize,
    a: &'a [f32],
    lda: usize,
    trans_a: bool,
    b: &'a [f32],
    ldb: usize,
    trans_b: bool,
    ldc: usize,
    accumulate: bool,
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sgemm_avx2(p: &Problem<'_>, c: &mut [f32]) {
    driver::<Avx2>(p, c)
}

/// The blocked loop nest. Inlined into each ISA entry point so packing is compiled for
/// the same instruction set as the kernel.
#[inline(always)]
fn driver<K: MicroKernel>(p: &Problem<'_>, c: &mut [f32]) {
    let mut apack = [0.0f32; MC * KC];
    let mut bpack = [0.0f32; KC * NC];
    let mut tile = [0.0f32; MAX_MR * MAX_NR];
    let (mr, nr) = (K::MR, K::NR);
    debug_assert!(MC % mr == 0 && NC % nr == 0 && nr <= MAX_NR && mr <= MAX_MR);
    let ldc = p.ldc;
    let mut pc = 0;
    while pc < p.k {
        let kc = KC.min(p.k - pc);
        let load = p.accumulate || pc > 0;
        let mut ic = 0;
        while ic < p.m {
            let mc = MC.min(p.m - ic);
            pack_a(p, ic, mc, pc, kc, mr, &mut apack);
            let mut jc = 0;
            while jc < p.n {
                let ncv = NC.min(p.n - jc);
                pack_b(p, jc, ncv, pc, kc, nr, &mut bpack);
                let mut jr = 0;
                while jr < ncv {
                    let nv = nr.min(ncv - jr);
                    let mut ir = 0;
                    while ir < mc {
                        let mv = mr.min(mc - ir);
                        let ap = apack[ir * kc..].as_ptr();
                        let bp = bpack[jr * kc..].as_ptr();
                        let (i0, j0) = (ic + ir, jc + jr);
                        if mv == mr && nv == nr {
                            // SAFETY: the packed panels hold kc*MR / kc*NR floats; the tile
                            // rows i0..i0+MR and columns j0..j0+NR lie inside C (checked
                            // by the asserts in `sgemm_using`); the caller picked a kernel
                            // the CPU supports.
                            unsafe { K::run(kc, ap, bp, c.as_mut_ptr().add(i0 * ldc + j0), ldc, load) };
                        } else {
                            if load {
                                for i in 0..mv {
                                    let row = &c[(i0 + i) * ldc + j0..][..nv];
                                    tile[i * nr..i * nr + nv].copy_from_slice(row);
                                }
                            }
                            // SAFETY: as above, with the local MR×NR `tile` as C.
                            unsafe { K::run(kc, ap, bp, tile.as_mut_ptr(), nr, load) };
                            for i in 0..mv {
                                let row = &mut c[(i0 + i) * ldc + j0..][..nv];
                                row.copy_from_slice(&tile[i * nr..i * nr + nv]);
                            }
                        }
                        ir += mr;
                    }
                    jr += nr;
                }
                jc += NC;
            }
            ic += mc;
        }
        pc += kc;
    }
}

/// Packs rows `ic..ic+mc`, columns `pc..pc+kc` of op(A) as `MR`-row micro-panels
/// (`[panel][p][MR]`), zero-padding the last panel.
#[inline(always)]
fn pack_a(p: &Problem<'_>, ic: usize, mc: usize, pc: usize, kc: usize, mr: usize, out: &mut [f32]) {
    let panels = mc.div_ceil(mr);
    for r in 0..panels {
        let dst = &mut out[r * kc * mr..(r + 1) * kc * mr];
        let rows = mr.min(mc - r * mr);
        let i0 = ic + r * mr;
        if p.trans_a {
            // op(A)(i, q) = a[q*lda + i]: contiguous in i.
            for q in 0..kc {
                let src = &p.a[(pc + q) * p.lda + i0..][..rows];
                let d = &mut dst[q * mr..(q + 1) * mr];
                if rows == MAX_MR && mr == MAX_MR {
                    // Fixed length: vector moves instead of a memmove call per row.
                    let s6: &[f32; MAX_MR] = src.try_into().expect("rows == MAX_MR");
                    let d6: &mut [f32; MAX_MR] = d.try_into().expect("mr == MAX_MR");
                    *d6 = *s6;
                } else {
                    d[..rows].copy_from_slice(src);
                    d[rows..].fill(0.0);
                }
            }
        } else {
            // op(A)(i, q) = a[i*lda + q]: contiguous in q.
            for i in 0..rows {
                let src = &p.a[(i0 + i) * p.lda + pc..][..kc];
                for (q, &v) in src.iter().enumerate() {
                    dst[q * mr + i] = v;
                }
            }
            if rows < mr {
                for q in 0..kc {
                    dst[q * mr + rows..(q + 1) * mr].fill(0.0);
                }
            }
        }
    }
}

/// Packs columns `jc..jc+ncv`, rows `pc..pc+kc` of op(B) as `[panel][p][NR]`
/// micro-panels, zero-padding the columns of the last panel past `ncv`.
#[inline(always)]
fn pack_b(p: &Problem<'_>, jc: usize, ncv: usize, pc: usize, kc: usize, nr: usize, out: &mut [f32]) {
    let panels = ncv.div_ceil(nr);
    if p.trans_b {
        // op(B)(q, j) = b[j*ldb + q]: contiguous in q.
        for j in 0..ncv {
            let src = &p.b[(jc + j) * p.ldb + pc..][..kc];
            let dst = &mut out[(j / nr) * kc * nr + j % nr..];
            for (q, &v) in src.iter().enumerate() {
                dst[q * nr] = v;
            }
        }
        let tail = ncv % nr;
        if tail != 0 {
            let dst = &mut out[(panels - 1) * kc * nr..][..kc * nr];
            for q in 0..kc {
                dst[q * nr + tail..(q + 1) * nr].fill(0.0);
            }
        }
    } else {
        // op(B)(q, j) = b[q*ldb + j]: contiguous in j.
        for q in 0..kc {
            let src = &p.b[(pc + q) * p.ldb + jc..][..ncv];
            for (r, chunk) in src.chunks(nr).enumerate() {
                let d = &mut out[r * kc * nr + q * nr..][..nr];
                // A fixed-length copy compiles to a few vector moves; a runtime-length
                // `copy_from_slice` would call memmove for every 64 bytes.
                match (<&[f32; MAX_NR]>::try_from(chunk), <&mut [f32; MAX_NR]>::try_from(&mut *d)) {
                    (Ok(src16), Ok(dst16)) => *dst16 = *src16,
                    _ => {
                        d[..chunk.len()].copy_from_slice(chunk);
                        d[chunk.len()..].fill(0.0);
                    }
                }
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], i: usize, j: usize) -> f64 {
        let _ = (m, n);
        (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum()
    }

    #[test]
    fn small_product_all_kernels() {
        let (m, n, k) = (5, 27, 300);
        let mut a = [0.0f32; 5 * 300];
        let mut b = [0.0f32; 300 * 27];
        for (i, v) in a.iter_mut().enumerate() {
            *v = ((i * 7 % 13) as f32 - 6.0) * 0.1;
        }
        for (i, v) in b.iter_mut().enumerate() {
            *v = ((i * 5 % 11) as f32 - 5.0) * 0.1;
        }
        for kern in [GemmKernel::Portable, GemmKernel::Avx2Fma] {
            let mut c = [f32::NAN; 5 * 27];
            sgemm_using(kern, m, n, k, &a, k, false, &b, n, false, &mut c, n, false);
            for i in 0..m {
                for j in 0..n {
                    let r = naive(m, n, k, &a, &b, i, j);
                    assert!((c[i * n + j] as f64 - r).abs() < 1e-3, "{kern:?} {i} {j}");
                }
            }
        }
    }

    #[test]
    fn k_zero_overwrites_or_keeps() {
        let mut c = [3.0f32; 4];
        sgemm(2, 2, 0, &[], 1, false, &[], 2, false, &mut c, 2, true);
        assert_eq!(c, [3.0; 4]);
        sgemm(2, 2, 0, &[], 1, false, &[], 2, false, &mut c, 2, false);
        assert_eq!(c, [0.0; 4]);
    }
}
