//! Single-precision GEMM, the workhorse under convolution and linear layers.
//!
//! Classic Goto/BLIS structure, sized so every buffer lives on the stack (no allocator):
//! the K dimension is cut into `KC` slabs, the rows of `op(A)` into `MC` blocks packed
//! as `MR`-row micro-panels, and `op(B)` is packed one `KC × NR` micro-panel at a time
//! (small enough to stay in L1 while the whole packed A block streams past it from L2).
//! A register-blocked micro-kernel computes an `MR × NR` tile of C. op(B) is either a
//! stored matrix or a [`PackB`] source that writes the packed panels itself (a
//! convolution's column matrix gathered straight from the image, so it is never
//! materialised); either way the kernels see the same panels. A strided batch of items
//! with few columns each (a 1×1 convolution on a 7×7 map, image by image) runs as one
//! product with the items side by side ([`ColImages`]), so micro-panels do not end
//! half empty at every item's edge.
//!
//! Kernels: AVX2+FMA (`6 × 16`: 12 accumulators + 2 B rows + 1 broadcast fill the 16 ymm
//! registers without spilling, runtime-detected on x86_64) and a portable plain-loop
//! kernel (`4 × 16`) the compiler vectorizes for whatever the target has. The AVX2 kernel
//! comes in one instance per row count 1..=6, so the last row panel of a matrix whose
//! height is no multiple of 6 (the 16, 32 and 64 channels of a ResNet) is computed
//! without padding rows or a scratch tile; with it come AVX2 packers that transpose
//! 8 × 8 blocks in registers for the two layouts a scalar loop would pack one element at
//! a time (plain A, e.g. the weights of a forward pass; transposed B, e.g. the im2col
//! matrix of a weight gradient). With AVX-512F ([`super::Isa::Avx512`]) a `12 × 32`
//! kernel (24 zmm accumulators, 2 B vectors and a broadcast of the 32 zmm registers) reads
//! the same packed panels, two 6-row A panels and two 16-column B panels at a time, so
//! packing, `PackB` sources and the bits are the AVX2 kernel's. On aarch64 a NEON kernel
//! ([`super::Isa::Neon`]) computes the AVX2 kernel's `6 × 16` tile from the same panels,
//! four 4-lane vectors a row (24 accumulators, 4 B vectors and a broadcast of the 32
//! registers): the same fused chains, so the AVX2 bits.
//!
//! Every element of C is computed as one FMA chain over `p = 0..k` in order, starting from
//! `C` (accumulate) or zero, whatever the blocking; so the AVX2 result does not depend on
//! the matrix sizes around an element, and is reproducible bit for bit. The portable kernel
//! uses separate multiply and add, so its bits differ from the FMA kernel's.

use core::mem::MaybeUninit;

/// Which micro-kernel [`sgemm`] runs; exposed so benches and tests can pin one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GemmKernel {
    /// Plain loops; every target.
    Portable,
    /// NEON (aarch64): the AVX2 kernel's tile and FMA chains in 4-lane registers, so the
    /// same bits.
    Neon,
    /// AVX2 + FMA intrinsics; x86_64 CPUs that have them (checked at run time).
    Avx2Fma,
    /// AVX-512F: the AVX2 kernel's packing and FMA chains on twice the lanes and twice the
    /// rows per tile, so the same bits (x86_64 CPUs that have it, checked at run time).
    Avx512,
}

/// K-slab depth: one packed B micro-panel is `KC × NR` floats, sized to sit in L1.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const KC: usize = 192;
/// Rows of op(A) packed per block (a multiple of every `MR`); the block (216 KiB) sits
/// in L2. Every row block packs all of op(B) again (the loop nest is k slab → row block
/// → column block), so a taller block packs B less often: 144 → 288 took a 1×1
/// convolution's GEMM (256 × 3136 × 128) from 125 to 136 GFLOP/s on AVX-512; 576 gained
/// nothing more and the block lives on the stack of pool threads.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const MC: usize = 288;
/// Columns of op(B) packed per block (a multiple of every `NR`): several micro-panels
/// at once, so packing reads whole cache lines of each B row in one sweep.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) const NC: usize = 64;
// Small targets: keep the stack footprint to a few KiB.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const KC: usize = 64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const MC: usize = 24;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) const NC: usize = 16;

/// Largest `MR × NR` over all kernels (edge-tile scratch): the AVX-512 kernel's on
/// x86_64, the portable kernel's elsewhere (a microcontroller's stack is small).
#[cfg(target_arch = "x86_64")]
const MAX_TILE: usize = 12 * 32;
#[cfg(target_arch = "aarch64")]
const MAX_TILE: usize = 6 * 16;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const MAX_TILE: usize = 4 * 16;
/// Rows of a packed A micro-panel of the x86 kernels (an AVX-512 tile spans two).
const PANEL_MR: usize = 6;

/// The `NR` of every kernel: the width of the B micro-panels a [`PackB`] source writes.
pub(crate) const PANEL_NR: usize = 16;

/// An op(B) that packs itself instead of being read from a stored matrix, e.g. a
/// convolution's column matrix gathered straight from the image (see [`sgemm_packed_b`]).
pub(crate) trait PackB {
    /// Writes columns `jc..jc+ncv`, rows `pc..pc+kc` of op(B) as `[panel][p][PANEL_NR]`
    /// micro-panels, the columns of the last panel past `ncv` zero: the layout of
    /// [`pack_b`]. `out` holds `ncv.div_ceil(PANEL_NR) · kc · PANEL_NR` floats.
    fn pack(&self, jc: usize, ncv: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]);
}

/// One micro-kernel call: the first `rows` rows and `cols` columns of a tile of C (row
/// stride `ldc`) from `kc` steps of the packed A at `ap` and the packed B at `bp`, added to
/// C's values when `load`, else from zero.
#[derive(Clone, Copy)]
struct Tile {
    rows: usize,
    cols: usize,
    kc: usize,
    ap: *const f32,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    load: bool,
}

/// A register-blocked micro-kernel: `C[MR×NR] (+)= Apanel[KC×MR]ᵀ · Bpanel[KC×NR]`, with
/// the packing routines it wants (the defaults are plain loops).
trait MicroKernel {
    const MR: usize;
    const NR: usize;
    /// Whether [`MicroKernel::run`] takes fewer than `MR` rows; otherwise the driver runs
    /// the last row panel into a scratch tile and copies the valid rows out.
    const ROW_EDGES: bool;
    /// Computes the tile `t` (`t.rows == MR` unless `ROW_EDGES`; `t.cols` a multiple of
    /// [`PANEL_NR`], `NR` unless `NR` spans several panels).
    ///
    /// # Safety
    /// `t.ap` points to the packed A floats of `t.rows` rows (`kc * MR` for a one-panel
    /// kernel; whole 6-row panels for a two-panel one), `t.bp` to `kc * cols`, and `t.c`
    /// to a `rows × cols` tile with row stride `ldc`, all valid (and `c` writable); the CPU
    /// supports the kernel's instructions.
    unsafe fn run(t: Tile);

    /// Packs op(A) as [`pack_a`] does.
    ///
    /// # Safety
    /// The CPU supports the kernel's instructions.
    #[inline(always)]
    unsafe fn pack_a(p: &Problem<'_>, ic: usize, mc: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        pack_a(p, ic, mc, pc, kc, Self::MR, out)
    }

    /// Packs op(B) as [`pack_b`] does.
    ///
    /// # Safety
    /// The CPU supports the kernel's instructions.
    #[inline(always)]
    unsafe fn pack_b(p: &Problem<'_>, jc: usize, ncv: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        pack_b(p, jc, ncv, pc, kc, Self::NR, out)
    }
}

struct Portable;

/// `kernel::<R>(t)` for `R = t.rows` (1..=6): one instance per row count of a 6-row panel.
#[cfg(any(target_arch = "x86_64", all(target_arch = "aarch64", target_feature = "neon")))]
macro_rules! by_rows {
    ($kernel:ident, $t:expr) => {
        match $t.rows {
            6 => $kernel::<6>($t),
            5 => $kernel::<5>($t),
            4 => $kernel::<4>($t),
            3 => $kernel::<3>($t),
            2 => $kernel::<2>($t),
            _ => $kernel::<1>($t),
        }
    };
}

impl MicroKernel for Portable {
    const MR: usize = 4;
    const NR: usize = 16;
    const ROW_EDGES: bool = false;
    #[inline(always)]
    unsafe fn run(t: Tile) {
        let Tile { rows, cols, kc, ap, bp, c, ldc, load } = t;
        debug_assert_eq!((rows, cols), (Portable::MR, Portable::NR));
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

/// The NEON kernel ([`GemmKernel::Neon`]): [`Avx2`]'s tile and packing.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
struct Neon;

#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
impl MicroKernel for Neon {
    const MR: usize = PANEL_MR;
    const NR: usize = PANEL_NR;
    const ROW_EDGES: bool = true;
    #[inline(always)]
    unsafe fn run(t: Tile) {
        debug_assert_eq!(t.cols, Self::NR);
        // SAFETY: forwarded contract; each instance touches only its first `R = rows`
        // rows of the tile.
        unsafe { by_rows!(kernel_neon, t) }
    }
}

/// The first `R` rows of a 6 × 16 tile in NEON registers: per `p`, the B row's four
/// 4-lane vectors, and for each row `acc += a[i] · b` fused (`vfmaq_n_f32`), which is the
/// AVX2 kernel's `fmadd(a[i], b, acc)` element by element.
///
/// # Safety
/// See [`MicroKernel::run`] with `t.rows = R`.
#[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
#[inline(always)]
unsafe fn kernel_neon<const R: usize>(t: Tile) {
    use core::arch::aarch64::*;
    let Tile { kc, ap, bp, c, ldc, load, .. } = t;
    // SAFETY: all pointer offsets stay inside the panels / tile of the contract.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = vld1q_f32(c.add(i * ldc + 4 * j));
                }
            }
        }
        let (mut a, mut b) = (ap, bp);
        for _ in 0..kc {
            let bv: [float32x4_t; 4] = core::array::from_fn(|j| vld1q_f32(b.add(4 * j)));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = *a.add(i);
                for (v, &bj) in row.iter_mut().zip(&bv) {
                    *v = vfmaq_n_f32(*v, bj, ai);
                }
            }
            a = a.add(PANEL_MR);
            b = b.add(PANEL_NR);
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                vst1q_f32(c.add(i * ldc + 4 * j), v);
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
    const ROW_EDGES: bool = true;
    #[inline(always)]
    unsafe fn run(t: Tile) {
        debug_assert_eq!(t.cols, Self::NR);
        // SAFETY: forwarded contract (AVX2+FMA support is part of it); each instance
        // touches only its first `R = rows` rows of the tile.
        unsafe { by_rows!(kernel_avx2, t) }
    }

    #[inline(always)]
    unsafe fn pack_a(p: &Problem<'_>, ic: usize, mc: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        if p.trans_a {
            // Already contiguous along the panel rows: plain copies are vector moves.
            pack_a(p, ic, mc, pc, kc, Self::MR, out)
        } else {
            // SAFETY: forwarded contract (the CPU has AVX2).
            unsafe { pack_a_rows_avx2(p, ic, mc, pc, kc, out) }
        }
    }

    #[inline(always)]
    unsafe fn pack_b(p: &Problem<'_>, jc: usize, ncv: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        if p.trans_b {
            // SAFETY: forwarded contract (the CPU has AVX2).
            unsafe { pack_b_cols_avx2(p, jc, ncv, pc, kc, out) }
        } else {
            pack_b(p, jc, ncv, pc, kc, Self::NR, out)
        }
    }
}

/// The AVX2 micro-kernel on the first `R` rows of a 6 × 16 tile: one kernel per row
/// count, so a matrix whose height is not a multiple of 6 (the 16, 32 and 64 output
/// channels of a ResNet) wastes no FMAs on padding rows and needs no scratch tile.
///
/// # Safety
/// See [`MicroKernel::run`] with `t.rows = R`; the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const R: usize>(t: Tile) {
    use core::arch::x86_64::*;
    let Tile { kc, ap, bp, c, ldc, load, .. } = t;
    // The packed A panel is always 6 rows wide, whatever R.
    const MR: usize = 6;
    // SAFETY: all pointer offsets stay inside the panels / tile of the contract.
    unsafe {
        // As in the AVX-512 kernel: the next tile down's rows of C, requested early
        // (ResNeXt-50's convs on one thread with this kernel: input gradients 8 % faster,
        // weight gradients, whose C is in cache, 3 % slower; 2 % overall, Zen 4).
        for i in 0..R {
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add((R + i) * ldc).cast());
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if load {
            for i in 0..R {
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
            for i in 0..R {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
            }
            a = a.add(MR);
            b = b.add(16);
        }
        for i in 0..R {
            for j in 0..2 {
                _mm256_storeu_ps(c.add(i * ldc + 8 * j), acc[i][j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

/// Tiles of up to `12 × 32`: rows from two consecutive 6-row A panels, columns from two
/// consecutive 16-column B panels, all packed as for [`Avx2`].
#[cfg(target_arch = "x86_64")]
impl MicroKernel for Avx512 {
    const MR: usize = 2 * PANEL_MR;
    const NR: usize = 2 * PANEL_NR;
    const ROW_EDGES: bool = true;
    #[inline(always)]
    unsafe fn run(t: Tile) {
        // SAFETY (all arms): forwarded contract (AVX-512F support is part of it); each
        // instance touches only its first `R = rows` rows and `P·16 = cols` columns.
        unsafe {
            macro_rules! by_12_rows {
                ($p:literal) => {
                    match t.rows {
                        12 => kernel_avx512::<12, $p>(t),
                        11 => kernel_avx512::<11, $p>(t),
                        10 => kernel_avx512::<10, $p>(t),
                        9 => kernel_avx512::<9, $p>(t),
                        8 => kernel_avx512::<8, $p>(t),
                        7 => kernel_avx512::<7, $p>(t),
                        6 => kernel_avx512::<6, $p>(t),
                        5 => kernel_avx512::<5, $p>(t),
                        4 => kernel_avx512::<4, $p>(t),
                        3 => kernel_avx512::<3, $p>(t),
                        2 => kernel_avx512::<2, $p>(t),
                        _ => kernel_avx512::<1, $p>(t),
                    }
                };
            }
            if t.cols > PANEL_NR {
                by_12_rows!(2)
            } else {
                by_12_rows!(1)
            }
        }
    }

    #[inline(always)]
    unsafe fn pack_a(p: &Problem<'_>, ic: usize, mc: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        // SAFETY: forwarded contract (AVX-512F implies AVX2).
        unsafe { Avx2::pack_a(p, ic, mc, pc, kc, out) }
    }

    #[inline(always)]
    unsafe fn pack_b(p: &Problem<'_>, jc: usize, ncv: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
        // SAFETY: as above.
        unsafe { Avx2::pack_b(p, jc, ncv, pc, kc, out) }
    }
}

/// The AVX-512 micro-kernel on the first `R` rows and `P` 16-column panels of a 12 × 32
/// tile. Row `i` comes from A panel `i / 6` (`kc · 6` floats apart), panel `j` of B is
/// `kc · 16` floats after panel `j − 1`. Each element is the AVX2 kernel's FMA chain over
/// `p = 0..kc` from C or zero: the same bits.
///
/// # Safety
/// See [`MicroKernel::run`] with `t.rows = R`, `t.cols = 16·P`; the CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel_avx512<const R: usize, const P: usize>(t: Tile) {
    use core::arch::x86_64::*;
    let Tile { kc, ap, bp, c, ldc, load, .. } = t;
    const NR: usize = PANEL_NR;
    // SAFETY: all pointer offsets stay inside the panels / tile of the contract (rows
    // 6..R only when R > 6, so the second A panel is read only when it was packed).
    unsafe {
        // The next tile down (the driver's next call in most cases) reads and writes these
        // rows of C: ask for them now, so their misses overlap this tile's FMAs.
        for i in 0..R {
            let next = c.wrapping_add((R + i) * ldc);
            for j in 0..P {
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(NR * j).cast());
            }
        }
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        if load {
            for (i, row) in acc.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(c.add(i * ldc + NR * j));
                }
            }
        }
        let a_panels = [ap, ap.add(kc * PANEL_MR)];
        for q in 0..kc {
            let b: [__m512; P] = core::array::from_fn(|j| _mm512_loadu_ps(bp.add(j * kc * NR + q * NR)));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a_panels[i / PANEL_MR].add(q * PANEL_MR + i % PANEL_MR));
                for (v, bj) in row.iter_mut().zip(b) {
                    *v = _mm512_fmadd_ps(ai, bj, *v);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                _mm512_storeu_ps(c.add(i * ldc + NR * j), *v);
            }
        }
    }
}

/// Transposes the 8 × 8 block held in `r` (row t in `r[t]`): afterwards `r[u]` holds
/// column u.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose8(r: &mut [core::arch::x86_64::__m256; 8]) {
    use core::arch::x86_64::*;
    // SAFETY: shuffles on registers only; callers run inside `avx2` target-feature fns.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        r[0] = _mm256_permute2f128_ps::<0x20>(s0, s4);
        r[1] = _mm256_permute2f128_ps::<0x20>(s1, s5);
        r[2] = _mm256_permute2f128_ps::<0x20>(s2, s6);
        r[3] = _mm256_permute2f128_ps::<0x20>(s3, s7);
        r[4] = _mm256_permute2f128_ps::<0x31>(s0, s4);
        r[5] = _mm256_permute2f128_ps::<0x31>(s1, s5);
        r[6] = _mm256_permute2f128_ps::<0x31>(s2, s6);
        r[7] = _mm256_permute2f128_ps::<0x31>(s3, s7);
    }
}

/// [`pack_b`] for `trans_b` (op(B) contiguous along k, e.g. the im2col matrix in a
/// weight gradient): 8 × 8 register transposes instead of one scalar store per element.
/// Only data movement, so the product's bits are those of the plain packing.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b_cols_avx2(p: &Problem<'_>, jc: usize, ncv: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
    use core::arch::x86_64::*;
    const NR: usize = 16;
    let (k8, n8) = (kc - kc % 8, ncv - ncv % 8);
    for j0 in (0..n8).step_by(8) {
        let dst = &mut out[(j0 / NR) * kc * NR + j0 % NR..];
        let rows: [&[f32]; 8] = core::array::from_fn(|t| &p.b[(jc + j0 + t) * p.ldb + pc..][..kc]);
        for q0 in (0..k8).step_by(8) {
            // SAFETY: each load reads 8 floats of a row slice of length kc ≥ q0 + 8; each
            // store writes 8 floats at (q0 + u)·NR inside the panel `dst` (kc·NR long).
            unsafe {
                let mut r: [__m256; 8] = core::array::from_fn(|t| _mm256_loadu_ps(rows[t][q0..q0 + 8].as_ptr()));
                transpose8(&mut r);
                for (u, v) in r.iter().enumerate() {
                    let d = &mut dst[(q0 + u) * NR..][..8];
                    _mm256_storeu_ps(d.as_mut_ptr().cast::<f32>(), *v);
                }
            }
        }
        for q in k8..kc {
            for (t, row) in rows.iter().enumerate() {
                dst[q * NR + t] = MaybeUninit::new(row[q]);
            }
        }
    }
    // Columns past the last full group of 8 (and the zero padding of the last panel).
    let panels = ncv.div_ceil(NR);
    for j in n8..panels * NR {
        let dst = &mut out[(j / NR) * kc * NR + j % NR..];
        if j < ncv {
            let src = &p.b[(jc + j) * p.ldb + pc..][..kc];
            for (q, &v) in src.iter().enumerate() {
                dst[q * NR] = MaybeUninit::new(v);
            }
        } else {
            for q in 0..kc {
                dst[q * NR] = MaybeUninit::new(0.0);
            }
        }
    }
}

/// [`pack_a`] for plain A (contiguous along k, e.g. the weights in a forward pass):
/// the 6 rows of a panel, padded to 8 with zeros, go through 8 × 8 register transposes.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a_rows_avx2(p: &Problem<'_>, ic: usize, mc: usize, pc: usize, kc: usize, out: &mut [MaybeUninit<f32>]) {
    use core::arch::x86_64::*;
    const MR: usize = 6;
    let k8 = kc - kc % 8;
    for r in 0..mc.div_ceil(MR) {
        let dst = &mut out[r * kc * MR..(r + 1) * kc * MR];
        let nrows = MR.min(mc - r * MR);
        let i0 = ic + r * MR;
        let rows: [Option<&[f32]>; MR] =
            core::array::from_fn(|i| (i < nrows).then(|| &p.a[(i0 + i) * p.lda + pc..][..kc]));
        for q0 in (0..k8).step_by(8) {
            // SAFETY: loads read 8 floats of row slices of length kc ≥ q0 + 8. Stores: the
            // first 7 write 8 floats at (q0 + u)·6, the last two of which the next store
            // overwrites; the 8th writes exactly 6 floats (a 4- and a 2-float store), so
            // nothing lands past (q0 + 8)·6 ≤ kc·6, the panel's end.
            unsafe {
                let mut v = [_mm256_setzero_ps(); 8];
                for (i, row) in rows.iter().enumerate() {
                    if let Some(row) = row {
                        v[i] = _mm256_loadu_ps(row[q0..q0 + 8].as_ptr());
                    }
                }
                transpose8(&mut v);
                let base = dst[q0 * MR..(q0 + 8) * MR].as_mut_ptr().cast::<f32>();
                for (u, col) in v.iter().take(7).enumerate() {
                    _mm256_storeu_ps(base.add(u * MR), *col);
                }
                let last = base.add(7 * MR);
                _mm_storeu_ps(last, _mm256_castps256_ps128(v[7]));
                _mm_storel_pd(last.add(4).cast::<f64>(), _mm_castps_pd(_mm256_extractf128_ps::<1>(v[7])));
            }
        }
        for q in k8..kc {
            for (i, row) in rows.iter().enumerate() {
                dst[q * MR + i] = MaybeUninit::new(row.map_or(0.0, |row| row[q]));
            }
        }
    }
}

/// The fastest kernel the CPU kernels may use ([`super::cpu_isa`]: detected once, capped
/// by [`super::limit_isa`]).
pub fn sgemm_kernel() -> GemmKernel {
    match super::cpu_isa() {
        super::Isa::Avx512 => GemmKernel::Avx512,
        super::Isa::Avx2 => GemmKernel::Avx2Fma,
        super::Isa::Neon => GemmKernel::Neon,
        super::Isa::Scalar => GemmKernel::Portable,
    }
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
    if k == 0 {
        assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "sgemm: C too small");
        if !accumulate {
            for row in c.chunks_mut(ldc).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    check_a_c(m, n, k, a, lda, trans_a, c, ldc);
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    assert!(ldb >= bc && b.len() >= (br - 1) * ldb + bc, "sgemm: B too small");
    run(kernel, &Problem { m, n, k, a, lda, trans_a, b, ldb, trans_b, packer: None, cols: None, ldc, accumulate }, c);
}

/// [`sgemm`] with op(B) (`k × n`) supplied by a [`PackB`] source rather than stored:
/// the same blocking and kernels, so the same bits as `sgemm` on the matrix it packs.
pub(crate) fn sgemm_packed_b(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &dyn PackB,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if m == 0 || n == 0 || k == 0 {
        // Every caller has k > 0; the stored-matrix path handles k == 0 (no B is read).
        return sgemm(m, n, k, a, lda, trans_a, &[], n, false, c, ldc, accumulate);
    }
    check_a_c(m, n, k, a, lda, trans_a, c, ldc);
    run(sgemm_kernel(), &packed((m, n, k, a, lda, trans_a), b, None, ldc, accumulate), c);
}

/// The problem of a [`PackB`] source's op(B) (`(m, n, k, a, lda, trans_a)` as for
/// [`sgemm`]), its columns as item runs when `cols` is set.
fn packed<'a>(
    (m, n, k, a, lda, trans_a): (usize, usize, usize, &'a [f32], usize, bool),
    b: &'a dyn PackB,
    cols: Option<ColImages>,
    ldc: usize,
    accumulate: bool,
) -> Problem<'a> {
    Problem { m, n, k, a, lda, trans_a, b: &[], ldb: n, trans_b: false, packer: Some(b), cols, ldc, accumulate }
}

/// [`sgemm_packed_b`] over `items` products side by side: op(B) has `items · per`
/// columns (the packer's), and C's columns are item runs ([`ColImages`]): item `t`'s
/// `per` columns start at float `t · stride_c` of `c` (row stride `ldc`). Overwrites C.
/// Each element of C gets the bits `sgemm` gives it alone.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm_packed_b_items(
    m: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    b: &dyn PackB,
    (per, items): (usize, usize),
    (c, ldc, stride_c): (&mut [f32], usize, usize),
) {
    if m == 0 || per == 0 || items == 0 {
        return;
    }
    assert!(k > 0, "sgemm: a packed B has k > 0");
    let last = items - 1;
    check_a_c(m, per, k, a, lda, trans_a, &c[last * stride_c..], ldc);
    let cols = Some(ColImages { per, b: 0, c: stride_c });
    run(sgemm_kernel(), &packed((m, items * per, k, a, lda, trans_a), b, cols, ldc, false), c);
}

/// `items` products that share A: `C_t (+)= op(A) · op(B_t)` for `t < items`, where `B_t`
/// starts at float `t · stride_b` of `b` and `C_t` at float `t · stride_c` of `c` (the
/// strided batch of cuBLAS). Each block of op(A) is packed once for all of them, so a
/// convolution's weights are not packed again for every image; every `C_t` gets the bits
/// [`sgemm`] gives it alone.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_strided_batch(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    trans_a: bool,
    (b, ldb, trans_b, stride_b): (&[f32], usize, bool, usize),
    (c, ldc, stride_c): (&mut [f32], usize, usize),
    items: usize,
    accumulate: bool,
) {
    if items == 0 || m == 0 || n == 0 {
        return;
    }
    if k == 0 || items == 1 {
        // No B is read (k = 0), or nothing to share: one call each.
        for t in 0..items {
            let bt = if k == 0 { &[][..] } else { &b[t * stride_b..] };
            sgemm(m, n, k, a, lda, trans_a, bt, ldb, trans_b, &mut c[t * stride_c..], ldc, accumulate);
        }
        return;
    }
    let last = items - 1;
    check_a_c(m, n, k, a, lda, trans_a, &c[last * stride_c..], ldc);
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    assert!(ldb >= bc && b.len() >= last * stride_b + (br - 1) * ldb + bc, "sgemm: B too small");
    let p = Problem { m, n, k, a, lda, trans_a, b, ldb, trans_b, packer: None, cols: None, ldc, accumulate };
    if !trans_b && n < SIDE_BY_SIDE_BELOW && !n.is_multiple_of(2 * PANEL_NR) {
        // Few columns an item, the last micro-panel partly empty (a 7×7 map's 49 columns
        // fill 49 of 64 lanes): the items side by side as one product of items·n columns.
        let cols = ColImages { per: n, b: stride_b, c: stride_c };
        return run(sgemm_kernel(), &Problem { n: items * n, cols: Some(cols), ..p }, c);
    }
    run_batch(sgemm_kernel(), &p, Batch { items, b: stride_b, c: stride_c }, c);
}

/// [`sgemm_strided_batch`] puts its items side by side when they have fewer columns
/// than this (and no multiple of the widest tile): a 28×28 map's 784 columns and below.
const SIDE_BY_SIDE_BELOW: usize = 1024;

/// The columns of op(B) (stored, not transposed) and of C as runs of `per` columns, one
/// per item of a strided batch: column `j` is column `j % per` of item `j / per`, whose B
/// starts `b` floats and whose C starts `c` floats after the previous item's (`b` unused
/// where a [`PackB`] source packs op(B)).
#[derive(Clone, Copy)]
struct ColImages {
    per: usize,
    b: usize,
    c: usize,
}

impl ColImages {
    /// Float offset of column `j` in row 0 of the stored op(B).
    fn b_at(self, j: usize) -> usize {
        (j / self.per) * self.b + j % self.per
    }
    /// Float offset of column `j` in row 0 of C.
    fn c_at(self, j: usize) -> usize {
        (j / self.per) * self.c + j % self.per
    }
    /// Whether columns `j0..j0 + cols` lie in one item (so they are contiguous in C).
    fn one_item(self, j0: usize, cols: usize) -> bool {
        j0 % self.per + cols <= self.per
    }
}

/// [`pack_b`] of a stored, untransposed op(B) whose columns are item runs
/// ([`ColImages`]): a micro-panel inside one item is copied row by row as in `pack_b`,
/// one that straddles two items element by element.
#[inline(always)]
fn pack_b_items(
    p: &Problem<'_>,
    ci: ColImages,
    jc: usize,
    ncv: usize,
    pc: usize,
    kc: usize,
    out: &mut [MaybeUninit<f32>],
) {
    const NR: usize = PANEL_NR;
    for r in 0..ncv.div_ceil(NR) {
        let (j0, lanes) = (jc + r * NR, NR.min(ncv - r * NR));
        let dst = &mut out[r * kc * NR..][..kc * NR];
        if lanes == NR && ci.one_item(j0, NR) {
            let base = ci.b_at(j0);
            for (q, d) in dst.chunks_exact_mut(NR).enumerate() {
                let src: &[f32; NR] = p.b[base + (pc + q) * p.ldb..][..NR].try_into().expect("NR floats");
                let d: &mut [MaybeUninit<f32>; NR] = d.try_into().expect("NR floats");
                *d = src.map(MaybeUninit::new);
            }
        } else {
            let at: [Option<usize>; NR] = core::array::from_fn(|l| (l < lanes).then(|| ci.b_at(j0 + l)));
            for (q, d) in dst.chunks_exact_mut(NR).enumerate() {
                let row = (pc + q) * p.ldb;
                for (o, a) in d.iter_mut().zip(at) {
                    *o = MaybeUninit::new(a.map_or(0.0, |a| p.b[a + row]));
                }
            }
        }
    }
}

/// The shape checks of A and C (`m, n, k > 0`): once per call, so the packing and kernels
/// may trust them.
#[allow(clippy::too_many_arguments)]
fn check_a_c(m: usize, n: usize, k: usize, a: &[f32], lda: usize, trans_a: bool, c: &[f32], ldc: usize) {
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "sgemm: C too small");
    let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
    assert!(lda >= ac && a.len() >= (ar - 1) * lda + ac, "sgemm: A too small");
}

/// Runs a checked problem on `kernel`, or on the best one the CPU has if it lacks it.
fn run(kernel: GemmKernel, p: &Problem<'_>, c: &mut [f32]) {
    run_batch(kernel, p, Batch::ONE, c)
}

/// [`run`] over a checked batch.
fn run_batch(kernel: GemmKernel, p: &Problem<'_>, batch: Batch, c: &mut [f32]) {
    let kernel = kernel.min(sgemm_kernel());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2Fma => {
            // SAFETY: `kernel <= sgemm_kernel()`, so the CPU has AVX2 and FMA.
            unsafe { sgemm_avx2(p, batch, c) }
        }
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => {
            // SAFETY: `kernel <= sgemm_kernel()`, so the CPU has AVX-512F (and AVX2, FMA).
            unsafe { sgemm_avx512(p, batch, c) }
        }
        // Every aarch64 CPU the crate is built for has NEON (checked at compile time).
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        GemmKernel::Neon => driver_batch::<Neon>(p, batch, c),
        // A kernel of the other architecture (a test pinning it) runs the portable loops.
        _ => driver_batch::<Portable>(p, batch, c),
    }
}

#[derive(Clone, Copy)]
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
    /// Packs op(B) in place of `b` (then empty) when set.
    packer: Option<&'a dyn PackB>,
    /// op(B)'s (stored, not transposed) and C's columns as runs of images, when set.
    cols: Option<ColImages>,
    ldc: usize,
    accumulate: bool,
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sgemm_avx2(p: &Problem<'_>, batch: Batch, c: &mut [f32]) {
    driver_batch::<Avx2>(p, batch, c)
}

/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn sgemm_avx512(p: &Problem<'_>, batch: Batch, c: &mut [f32]) {
    driver_batch::<Avx512>(p, batch, c)
}

/// Problems that share op(A): item `t` takes B from float `t · b` of `p.b` and C from
/// float `t · c` of `c` (cuBLAS's strided batch).
#[derive(Clone, Copy)]
struct Batch {
    items: usize,
    b: usize,
    c: usize,
}

impl Batch {
    const ONE: Batch = Batch { items: 1, b: 0, c: 0 };
}

/// The blocked loop nest, over a batch: each block of op(A) is packed once and used for
/// every item, which computes exactly what its own call would (the same packing, tiles
/// and chains), so the bits are those of one call per item. Inlined into each ISA entry
/// point so packing is compiled for the same instruction set as the kernel.
#[inline(always)]
fn driver_batch<K: MicroKernel>(p: &Problem<'_>, batch: Batch, c: &mut [f32]) {
    // Packing writes every float of a panel the kernel reads (zero padding included), so
    // the buffers need no clearing: a 100 KiB memset per call showed in profiles of the
    // per-image convolution GEMMs.
    let mut apack = [MaybeUninit::<f32>::uninit(); MC * KC];
    let mut bpack = [MaybeUninit::<f32>::uninit(); KC * NC];
    let mut tile = [0.0f32; MAX_TILE];
    let (mr, nr) = (K::MR, K::NR);
    debug_assert!(MC.is_multiple_of(mr) && NC.is_multiple_of(nr) && nr * mr <= MAX_TILE);
    debug_assert!(p.packer.is_none() || nr.is_multiple_of(PANEL_NR));
    debug_assert!(batch.items == 1 || p.packer.is_none());
    let ldc = p.ldc;
    let mut pc = 0;
    while pc < p.k {
        let kc = KC.min(p.k - pc);
        let load = p.accumulate || pc > 0;
        let mut ic = 0;
        while ic < p.m {
            let mc = MC.min(p.m - ic);
            // SAFETY: the caller picked a kernel the CPU supports.
            unsafe { K::pack_a(p, ic, mc, pc, kc, &mut apack) };
            for t in 0..batch.items {
                let p = &Problem { b: &p.b[t * batch.b..], ..*p };
                let c = &mut c[t * batch.c..];
                let mut jc = 0;
                while jc < p.n {
                    let ncv = NC.min(p.n - jc);
                    match (p.packer, p.cols) {
                        (Some(src), _) => src.pack(jc, ncv, pc, kc, &mut bpack),
                        (None, Some(ci)) => pack_b_items(p, ci, jc, ncv, pc, kc, &mut bpack),
                        // SAFETY: as above.
                        (None, None) => unsafe { K::pack_b(p, jc, ncv, pc, kc, &mut bpack) },
                    }
                    let mut jr = 0;
                    while jr < ncv {
                        let nv = nr.min(ncv - jr);
                        let mut ir = 0;
                        while ir < mc {
                            let mv = mr.min(mc - ir);
                            let ap = apack[ir * kc..].as_ptr().cast::<f32>();
                            let bp = bpack[jr * kc..].as_ptr().cast::<f32>();
                            let (i0, j0) = (ic + ir, jc + jr);
                            // Whole B panels the tile reads (the last one zero-padded).
                            let cols = nv.div_ceil(PANEL_NR) * PANEL_NR;
                            let rows = if K::ROW_EDGES { mv } else { mr };
                            // C's columns j0..j0+nv: contiguous from `cj`, unless they
                            // straddle two items placed side by side.
                            let one = p.cols.is_none_or(|ci| ci.one_item(j0, nv));
                            let cj = p.cols.map_or(j0, |ci| ci.c_at(j0));
                            if one && cols == nv && (mv == mr || K::ROW_EDGES) {
                                // SAFETY: the packed panels hold the floats of the mv rows and
                                // nv columns, written by the packing above; the tile rows
                                // i0..i0+mv and columns j0..j0+nv lie inside C (checked by
                                // the asserts in `sgemm_using` / `sgemm_strided_batch`, for
                                // item runs at their item's offset `cj`); the kernel takes mv
                                // rows (mv == MR or ROW_EDGES) and nv columns (whole panels);
                                // the caller picked a kernel the CPU supports.
                                unsafe {
                                    K::run(Tile {
                                        rows: mv,
                                        cols: nv,
                                        kc,
                                        ap,
                                        bp,
                                        c: c.as_mut_ptr().add(i0 * ldc + cj),
                                        ldc,
                                        load,
                                    })
                                };
                            } else {
                                // Through the local MR×NR `tile`: the columns in runs that
                                // lie in one item (one run unless they straddle items).
                                let runs = |f: &mut dyn FnMut(usize, usize, usize)| match p.cols {
                                    Some(ci) if !one => {
                                        let mut j = 0;
                                        while j < nv {
                                            let len = (ci.per - (j0 + j) % ci.per).min(nv - j);
                                            f(j, ci.c_at(j0 + j), len);
                                            j += len;
                                        }
                                    }
                                    _ => f(0, cj, nv),
                                };
                                if load {
                                    runs(&mut |j, at, len| {
                                        for i in 0..mv {
                                            let t = &mut tile[i * nr + j..][..len];
                                            t.copy_from_slice(&c[(i0 + i) * ldc + at..][..len]);
                                        }
                                    });
                                }
                                // SAFETY: as above, with the local MR×NR `tile` as C, `rows`
                                // (mv, or MR for a kernel without row edges, whose packed
                                // panel is MR rows) and the whole panels' `cols`.
                                unsafe { K::run(Tile { rows, cols, kc, ap, bp, c: tile.as_mut_ptr(), ldc: nr, load }) };
                                runs(&mut |j, at, len| {
                                    for i in 0..mv {
                                        c[(i0 + i) * ldc + at..][..len].copy_from_slice(&tile[i * nr + j..][..len]);
                                    }
                                });
                            }
                            ir += mr;
                        }
                        jr += nr;
                    }
                    jc += NC;
                }
            }
            ic += mc;
        }
        pc += kc;
    }
}

/// Packs rows `ic..ic+mc`, columns `pc..pc+kc` of op(A) as `MR`-row micro-panels
/// (`[panel][p][MR]`), zero-padding the last panel.
#[inline(always)]
fn pack_a(p: &Problem<'_>, ic: usize, mc: usize, pc: usize, kc: usize, mr: usize, out: &mut [MaybeUninit<f32>]) {
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
                if rows == PANEL_MR && mr == PANEL_MR {
                    // Fixed length: vector moves instead of a memmove call per row.
                    let s6: &[f32; PANEL_MR] = src.try_into().expect("rows == PANEL_MR");
                    let d6: &mut [MaybeUninit<f32>; PANEL_MR] = d.try_into().expect("mr == PANEL_MR");
                    *d6 = s6.map(MaybeUninit::new);
                } else {
                    for (o, &v) in d.iter_mut().zip(src.iter().chain(core::iter::repeat(&0.0))) {
                        *o = MaybeUninit::new(v);
                    }
                }
            }
        } else {
            // op(A)(i, q) = a[i*lda + q]: contiguous in q.
            for i in 0..rows {
                let src = &p.a[(i0 + i) * p.lda + pc..][..kc];
                for (q, &v) in src.iter().enumerate() {
                    dst[q * mr + i] = MaybeUninit::new(v);
                }
            }
            for q in 0..kc {
                dst[q * mr + rows..(q + 1) * mr].fill(MaybeUninit::new(0.0));
            }
        }
    }
}

/// Packs columns `jc..jc+ncv`, rows `pc..pc+kc` of op(B) as `[panel][p][NR]`
/// micro-panels, zero-padding the columns of the last panel past `ncv`.
#[inline(always)]
fn pack_b(p: &Problem<'_>, jc: usize, ncv: usize, pc: usize, kc: usize, nr: usize, out: &mut [MaybeUninit<f32>]) {
    let panels = ncv.div_ceil(nr);
    if p.trans_b {
        // op(B)(q, j) = b[j*ldb + q]: contiguous in q.
        for j in 0..ncv {
            let src = &p.b[(jc + j) * p.ldb + pc..][..kc];
            let dst = &mut out[(j / nr) * kc * nr + j % nr..];
            for (q, &v) in src.iter().enumerate() {
                dst[q * nr] = MaybeUninit::new(v);
            }
        }
        let tail = ncv % nr;
        if tail != 0 {
            let dst = &mut out[(panels - 1) * kc * nr..][..kc * nr];
            for q in 0..kc {
                dst[q * nr + tail..(q + 1) * nr].fill(MaybeUninit::new(0.0));
            }
        }
    } else {
        // op(B)(q, j) = b[q*ldb + j]: contiguous in j.
        for q in 0..kc {
            let src = &p.b[(pc + q) * p.ldb + jc..][..ncv];
            for (r, chunk) in src.chunks(nr).enumerate() {
                let d = &mut out[r * kc * nr + q * nr..][..nr];
                // A fixed-length copy compiles to a few vector moves; a runtime-length
                // copy would call memmove for every 64 bytes.
                match (<&[f32; PANEL_NR]>::try_from(chunk), <&mut [MaybeUninit<f32>; PANEL_NR]>::try_from(&mut *d)) {
                    (Ok(src16), Ok(dst16)) => *dst16 = src16.map(MaybeUninit::new),
                    _ => {
                        for (o, &v) in d.iter_mut().zip(chunk.iter().chain(core::iter::repeat(&0.0))) {
                            *o = MaybeUninit::new(v);
                        }
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
        for kern in [GemmKernel::Portable, GemmKernel::Neon, GemmKernel::Avx2Fma, GemmKernel::Avx512] {
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
