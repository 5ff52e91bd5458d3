//! Writers of tiny dataset files in every format `hpff` reads, for the CLI tests, and
//! a bitwise comparison.
#![allow(dead_code)] // shared by several test crates, each using some of it

use std::io::Write;
use std::path::Path;

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
