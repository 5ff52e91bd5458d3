//! Writers of tiny dataset files in every format `hpff` reads, for the CLI tests; a
//! small plan and a bitwise comparison, for the executor tests.
#![allow(dead_code)] // shared by several test crates, each using some of it

use std::io::Write;
use std::path::Path;

use hpff::config::{Config, DatasetName, MethodName, Setup, Shape};
use hpff_core::exec::{Executor, Region};
use hpff_core::plan::Plan;

/// Deterministic pixel noise with a class-dependent offset.
fn px(label: usize, i: usize, salt: usize) -> u8 {
    let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) % 97;
    (label * 15 + h) as u8
}

/// CIFAR-10 binary: `data_batch_{1..5}.bin` with `per_file` records each, `test_batch.bin`.
pub fn cifar10(dir: &Path, per_file: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let rec = |n: usize, salt: usize| -> Vec<u8> {
        let mut v = Vec::new();
        for k in 0..n {
            let l = (k + salt) % 10;
            v.push(l as u8);
            v.extend((0..3072).map(|i| px(l, i, salt * 1000 + k)));
        }
        v
    };
    for f in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{f}.bin")), rec(per_file, f)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), rec(test, 9)).unwrap();
}

/// CIFAR-100 binary: `train.bin`, `test.bin` (coarse and fine label bytes).
pub fn cifar100(dir: &Path, train: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let rec = |n: usize, salt: usize| -> Vec<u8> {
        let mut v = Vec::new();
        for k in 0..n {
            let fine = (k * 7 + salt) % 100;
            v.push((fine / 5) as u8);
            v.push(fine as u8);
            v.extend((0..3072).map(|i| px(fine % 10, i, salt * 1000 + k)));
        }
        v
    };
    std::fs::write(dir.join("train.bin"), rec(train, 1)).unwrap();
    std::fs::write(dir.join("test.bin"), rec(test, 2)).unwrap();
}

fn mat_el(ty: u32, data: &[u8]) -> Vec<u8> {
    let mut v = ty.to_le_bytes().to_vec();
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
    v
}

fn mat_matrix(name: &str, class: u8, dims: &[u32], ty: u32, data: &[u8]) -> Vec<u8> {
    const MI_INT8: u32 = 1;
    const MI_INT32: u32 = 5;
    const MI_UINT32: u32 = 6;
    const MI_MATRIX: u32 = 14;
    let mut body = mat_el(MI_UINT32, &[class, 0, 0, 0, 0, 0, 0, 0]);
    let d: Vec<u8> = dims.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect();
    body.extend(mat_el(MI_INT32, &d));
    body.extend(mat_el(MI_INT8, name.as_bytes()));
    body.extend(mat_el(ty, data));
    mat_el(MI_MATRIX, &body)
}

/// SVHN: a MATLAB v5 file with X (32×32×3×N uint8, column-major) and y (N×1 double, 1..=10).
pub fn svhn_mat(path: &Path, n: usize, salt: usize) {
    const MI_UINT8: u32 = 2;
    const MI_DOUBLE: u32 = 9;
    let mut out = b"MATLAB 5.0 MAT-file, written by the hpff CLI tests".to_vec();
    out.resize(116, b' ');
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&0x0100u16.to_le_bytes());
    out.extend_from_slice(b"IM");
    let labels: Vec<usize> = (0..n).map(|k| (k + salt) % 10 + 1).collect();
    let mut x = vec![0u8; 32 * 32 * 3 * n];
    for (k, &l) in labels.iter().enumerate() {
        for i in 0..32 * 32 * 3 {
            x[k * 3072 + i] = px(l % 10, i, salt * 1000 + k);
        }
    }
    out.extend(mat_matrix("X", 9, &[32, 32, 3, n as u32], MI_UINT8, &x));
    let y: Vec<u8> = labels.iter().flat_map(|&l| (l as f64).to_le_bytes()).collect();
    out.extend(mat_matrix("y", 6, &[n as u32, 1], MI_DOUBLE, &y));
    std::fs::write(path, out).unwrap();
}

/// STL-10 binary: `{train,test}_X.bin` (96×96×3, column-major) and `{train,test}_y.bin`.
pub fn stl10(dir: &Path, train: usize, test: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (s, n) in [("train", train), ("test", test)] {
        let labels: Vec<u8> = (0..n).map(|k| (k % 10 + 1) as u8).collect();
        let mut x = Vec::new();
        for (k, &l) in labels.iter().enumerate() {
            x.extend((0..3 * 96 * 96).map(|i| px(l as usize - 1, i, k)));
        }
        std::fs::write(dir.join(format!("{s}_X.bin")), x).unwrap();
        std::fs::write(dir.join(format!("{s}_y.bin")), labels).unwrap();
    }
}

fn gz(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Fashion-MNIST-named IDX files, gzipped, with `side`×`side` images.
pub fn idx_gz(dir: &Path, train: usize, test: usize, side: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (s, n) in [("train", train), ("t10k", test)] {
        let labels: Vec<u8> = (0..n).map(|k| (k % 10) as u8).collect();
        let mut img = 0x0803u32.to_be_bytes().to_vec();
        for d in [n, side, side] {
            img.extend_from_slice(&(d as u32).to_be_bytes());
        }
        for (k, &l) in labels.iter().enumerate() {
            img.extend((0..side * side).map(|i| px(l as usize, i, k)));
        }
        let mut lab = 0x0801u32.to_be_bytes().to_vec();
        lab.extend_from_slice(&(n as u32).to_be_bytes());
        lab.extend_from_slice(&labels);
        std::fs::write(dir.join(format!("{s}-images-idx3-ubyte.gz")), gz(&img)).unwrap();
        std::fs::write(dir.join(format!("{s}-labels-idx1-ubyte.gz")), gz(&lab)).unwrap();
    }
}

/// An image folder `root/{train,test}/<class>/*.png` of `side`×`side` RGB images.
pub fn folder(root: &Path, classes: usize, per_class: usize, side: u32) {
    for split in ["train", "test"] {
        for c in 0..classes {
            let d = root.join(split).join(format!("class{c}"));
            std::fs::create_dir_all(&d).unwrap();
            for k in 0..per_class {
                let img = image::RgbImage::from_fn(side, side, |x, y| {
                    let v = px(c, (y * side + x) as usize, k);
                    image::Rgb([v, v / 2, 255 - v])
                });
                img.save(d.join(format!("{k}.png"))).unwrap();
            }
        }
    }
}

/// Fails unless `got` and `want` hold the same bits.
#[track_caller]
pub fn same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let differ = got.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(differ == 0, "{what}: {differ} of {} values differ (max |Δ| {worst:e})", got.len());
}

/// `method` (with HPFF or not) on a 4-wide ResNet-8, K = 3, one 16×16 channel, 4 classes,
/// lr 0.05: a plan of `batch` images that steps in milliseconds.
pub fn small_plan(method: MethodName, hpff: bool, batch: usize) -> (Setup, Plan) {
    let c = Config {
        dataset: Some(DatasetName::Folder),
        arch: Some("resnet8".into()),
        width: Some(4),
        method: Some(method),
        hpff: Some(hpff),
        k: Some(3),
        lr: Some(0.05),
        ..Config::default()
    };
    let setup = c.setup(Shape { c: 1, image: 16, classes: 4 }).unwrap();
    let plan = setup.plan(batch).unwrap();
    (setup, plan)
}

/// Fails unless `exec` holds `grads`, `params` and `momentum`, bit for bit, after step
/// `step` (`what` names the run).
#[track_caller]
pub fn holds(exec: &mut impl Executor, grads: &[f32], params: &[f32], momentum: &[f32], what: &str, step: usize) {
    let mut got = vec![0f32; params.len()];
    exec.download(Region::Grads, 0, &mut got).unwrap();
    same_bits(&got, grads, &format!("{what}: the averaged gradients of step {step}"));
    exec.download(Region::Params, 0, &mut got).unwrap();
    same_bits(&got, params, &format!("{what}: the parameters after step {step}"));
    exec.download(Region::Momentum, 0, &mut got).unwrap();
    same_bits(&got, momentum, &format!("{what}: the momentum after step {step}"));
}
