//! The hot ops of a CPU training step at ResNet-32 CIFAR shapes, on one executor chunk
//! of 8 images (the unit `hpff::cpu` hands a thread): convolution forward, input
//! gradient and weight gradient for every distinct layer shape, the GEMM under the
//! stage convolutions alone, BatchNorm forward and backward, and the decoder's bilinear
//! resize. Throughput is reported in FLOPs (convolutions, GEMM) or floats (the rest), so
//! a regression shows as a rate. Run with `cargo bench -p hpff-benches [-- FILTER]`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hpff_core::ops::{self, BatchNorm2d, Conv2d, Window};

/// Images per call: the CPU executor's chunk.
const N: usize = 8;

/// Deterministic values in [-1, 1).
fn data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn conv(c_in: usize, c_out: usize, hw: usize, stride: usize) -> Conv2d {
    Conv2d { c_in, c_out, h: hw, w: hw, k: 3, stride, pad: 1, groups: 1 }
}

/// Every distinct 3×3 convolution of ResNet-32 on 32×32 inputs.
fn shapes() -> [(&'static str, Conv2d); 6] {
    [
        ("stem_3to16_32px", conv(3, 16, 32, 1)),
        ("s1_16to16_32px", conv(16, 16, 32, 1)),
        ("down_16to32_s2", conv(16, 32, 32, 2)),
        ("s2_32to32_16px", conv(32, 32, 16, 1)),
        ("down_32to64_s2", conv(32, 64, 16, 2)),
        ("s3_64to64_8px", conv(64, 64, 8, 1)),
    ]
}

fn bench_conv(c: &mut Criterion) {
    for (name, s) in shapes() {
        let x = data(N * s.in_len(), 1);
        let w = data(s.weight_len(), 2);
        let dy = data(N * s.out_len(), 3);
        let mut y = vec![0.0; N * s.out_len()];
        let mut dx = vec![0.0; N * s.in_len()];
        let mut dw = vec![0.0; s.weight_len()];
        let mut scratch = vec![0.0; s.scratch_len()];
        let mut g = c.benchmark_group("conv");
        g.throughput(Throughput::Elements((N * s.flops()) as u64));
        g.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| ops::conv2d_forward(&s, N, black_box(&x), &w, None, &mut y, &mut scratch))
        });
        g.bench_function(BenchmarkId::new("input_grad", name), |b| {
            b.iter(|| ops::conv2d_backward_input(&s, N, black_box(&dy), &w, &mut dx, &mut scratch))
        });
        g.bench_function(BenchmarkId::new("weight_grad", name), |b| {
            b.iter(|| ops::conv2d_accumulate_weight_grad(&s, N, black_box(&x), &dy, &mut dw, None, &mut scratch))
        });
        g.finish();
    }
}

/// The forward GEMM of each stage convolution on its own (one image), against the
/// machine's FMA peak: how much of a convolution is the GEMM.
fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    for (name, m, n, k) in
        [("s1_16x1024x144", 16, 1024, 144), ("s2_32x256x288", 32, 256, 288), ("s3_64x64x576", 64, 64, 576)]
    {
        let a = data(m * k, 4);
        let b = data(k * n, 5);
        let mut out = vec![0.0; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| ops::sgemm(m, n, k, black_box(&a), k, false, &b, n, false, &mut out, n, false))
        });
    }
    g.finish();
}

fn bench_bn(c: &mut Criterion) {
    let s = BatchNorm2d { c: 16, hw: 32 * 32 };
    let x = data(N * s.len(), 6);
    let dy = data(N * s.len(), 7);
    let (mean, invstd, gamma, beta) = (vec![0.1; s.c], vec![1.2; s.c], vec![0.9; s.c], vec![0.05; s.c]);
    let mut y = vec![0.0; N * s.len()];
    let mut g = c.benchmark_group("batchnorm_s1");
    g.throughput(Throughput::Elements((N * s.len()) as u64));
    g.bench_function("stats", |b| {
        b.iter(|| {
            let (mut sum, mut sq) = (vec![0.0; s.c], vec![0.0; s.c]);
            ops::batchnorm_accumulate_sum(&s, N, black_box(&x), &mut sum);
            ops::batchnorm_accumulate_sq_dev(&s, N, &x, &mean, &mut sq);
            (sum, sq)
        })
    });
    g.bench_function("forward", |b| {
        b.iter(|| ops::batchnorm_forward(&s, N, black_box(&x), &mean, &invstd, &gamma, &beta, &mut y))
    });
    g.bench_function("backward", |b| {
        b.iter(|| {
            let (mut sd, mut sdx) = (vec![0.0; s.c], vec![0.0; s.c]);
            ops::batchnorm_accumulate_backward_sums(&s, N, black_box(&x), &dy, &mean, &invstd, &mut sd, &mut sdx);
            let count = N * s.hw;
            ops::batchnorm_backward_input(&s, N, &x, &dy, &mean, &invstd, &gamma, &sd, &sdx, count, &mut y);
        })
    });
    g.finish();
}

/// A PFF patch: one quarter of a 16-channel 32×32 map resized back to 32×32.
fn bench_resize(c: &mut Criterion) {
    let win = Window { c: 16, h: 32, w: 32, y0: 16, x0: 0, ph: 16, pw: 16, oh: 32, ow: 32 };
    let x = data(N * win.map_len(), 8);
    let dy = data(N * win.out_len(), 9);
    let mut y = vec![0.0; N * win.out_len()];
    let mut dx = vec![0.0; N * win.map_len()];
    let mut g = c.benchmark_group("resize_patch");
    g.throughput(Throughput::Elements((N * win.out_len()) as u64));
    g.bench_function("forward", |b| b.iter(|| ops::bilinear_forward(&win, N, black_box(&x), &mut y)));
    g.bench_function("backward", |b| b.iter(|| ops::bilinear_accumulate_backward(&win, N, black_box(&dy), &mut dx)));
    g.finish();
}

criterion_group!(benches, bench_conv, bench_gemm, bench_bn, bench_resize);
criterion_main!(benches);
