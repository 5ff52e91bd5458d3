//! Rough throughput numbers for the layer math; `#[ignore]`d so the suite stays fast.
//! Run: `cargo test -p hpff-core --release --test bench_ops -- --ignored --nocapture`.

use hpff_core::ops::*;
use std::time::Instant;

fn fill(v: &mut [f32], seed: u32) {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    for x in v {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        *x = (s as f32 / u32::MAX as f32) - 0.5;
    }
}

fn gflops(kernel: GemmKernel, m: usize, n: usize, k: usize, ta: bool, tb: bool) -> f64 {
    let mut a = vec![0.0; m * k];
    let mut b = vec![0.0; k * n];
    let mut c = vec![0.0; m * n];
    fill(&mut a, 1);
    fill(&mut b, 2);
    let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
    let reps = (2e9 / (2.0 * (m * n * k) as f64)).max(3.0) as usize;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..reps {
            sgemm_using(kernel, m, n, k, &a, lda, ta, &b, ldb, tb, &mut c, n, false);
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

#[test]
#[ignore]
fn bench_sgemm() {
    let runs = |k: &GemmKernel| *k <= sgemm_kernel() && (*k != GemmKernel::Neon || sgemm_kernel() == GemmKernel::Neon);
    for kern in
        [GemmKernel::Avx512, GemmKernel::Avx2Fma, GemmKernel::Neon, GemmKernel::Portable].iter().filter(|k| runs(k))
    {
        let kern = *kern;
        for &(m, n, k, ta, tb) in &[
            (64, 1024, 576, false, false),
            (16, 1024, 144, false, false),
            (64, 64, 576, false, false),
            (576, 64, 64, true, false),
            (64, 576, 64, false, true),
            (256, 256, 256, false, false),
            // ResNeXt-50 at 224², a first-stage 1×1 conv (128 → 256, 56×56) per image:
            // forward, input gradient, weight gradient; and a last-stage one (7×7).
            (256, 3136, 128, false, false),
            (128, 3136, 256, true, false),
            (256, 128, 3136, false, true),
            (2048, 49, 1024, false, false),
        ] {
            let g = gflops(kern, m, n, k, ta, tb);
            println!("{kern:?} m={m} n={n} k={k} ta={ta} tb={tb}: {g:.1} GFLOP/s");
        }
    }
}

#[test]
#[ignore]
fn bench_conv() {
    // Every instruction set this CPU has, from the widest (HPFF_CPU_ISA's sets).
    for isa in Isa::ALL.into_iter().rev().filter(|i| i.runs_here()) {
        limit_isa(Some(isa));
        println!("{}:", isa.name());
        for (c, hw) in [(16, 32), (32, 16), (64, 8), (64, 56), (128, 28), (256, 14), (512, 7)] {
            bench_conv_shape(Conv2d { c_in: c, c_out: c, h: hw, w: hw, k: 3, stride: 1, pad: 1, groups: 1 });
        }
    }
    limit_isa(None);
}

fn bench_conv_shape(s: Conv2d) {
    // The ImageNet shapes (56² … 7²) at a batch that keeps the run short.
    let n = if s.h > 32 || s.c_in > 64 { 16 } else { 128 };
    let mut x = vec![0.0; n * s.in_len()];
    let mut w = vec![0.0; s.weight_len()];
    let mut y = vec![0.0; n * s.out_len()];
    let mut dx = vec![0.0; n * s.in_len()];
    let mut dw = vec![0.0; s.weight_len()];
    let mut scratch = vec![0.0; s.scratch_len()];
    fill(&mut x, 3);
    fill(&mut w, 4);
    let time = |f: &mut dyn FnMut()| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        best
    };
    let tf = time(&mut || conv2d_forward(&s, n, &x, &w, None, &mut y, &mut scratch));
    let tbi = time(&mut || conv2d_backward_input(&s, n, &y, &w, &mut dx, &mut scratch));
    let tbw = time(&mut || conv2d_accumulate_weight_grad(&s, n, &x, &y, &mut dw, None, &mut scratch));
    let f = (s.flops() * n) as f64 / 1e9;
    println!(
        "conv {}->{} {}x{} k3 n={n}: fwd {:.2} ms ({:.1} GFLOP/s), bwd-input {:.2} ms ({:.1}), bwd-weight {:.2} ms ({:.1})",
        s.c_in, s.c_out, s.h, s.w, tf * 1e3, f / tf, tbi * 1e3, f / tbi, tbw * 1e3, f / tbw
    );
}
