//! Fuzz harnesses: each writes its input as the files a loader reads and loads them,
//! asserting that bad input gives a one-line error (never a panic, an abort or an
//! out-of-memory). Shared by the `cargo fuzz` targets in `fuzz/fuzz_targets/` and by
//! the regression test `host/tests/fuzz_regressions.rs`, which includes this file by
//! path and replays every input in `fuzz/regressions/<target>/`.

use std::cell::RefCell;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use hpff::checkpoint;
use hpff::data::{self, Split};
use hpff::device::Snapshot;
use hpff_core::arch::Arch;
use hpff_core::method::{Base, Method};
use hpff_core::partition::{Partition, TableKind};
use hpff_core::plan::Plan;
use hpff_core::rng::Rng;

/// A harness: runs one input.
pub type Harness = fn(&[u8]);

/// Every harness by target name.
pub const TARGETS: [(&str, Harness); 6] =
    [("idx", idx), ("cifar", cifar), ("svhn", svhn), ("stl10", stl10), ("folder", folder), ("checkpoint", checkpoint)];

thread_local! {
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// An empty folder of this thread's own (in memory where /dev/shm exists).
fn scratch() -> PathBuf {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let dir = s.get_or_insert_with(|| {
            let shm = Path::new("/dev/shm");
            let b = tempfile::Builder::new().prefix("hpff-fuzz-").tempdir_in(if shm.is_dir() {
                shm
            } else {
                Path::new("/tmp")
            });
            b.expect("a scratch folder")
        });
        let p = dir.path().join("case");
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch");
        p
    })
}

/// Two files from one input: its first two bytes (little-endian) give the first's length.
fn two(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (data, &[]);
    }
    let rest = &data[2..];
    let cut = u16::from_le_bytes([data[0], data[1]]) as usize % (rest.len() + 1);
    rest.split_at(cut)
}

/// A loader's verdict: fine, or an error of exactly one non-empty line.
fn one_line<T, E: Display>(r: Result<T, E>) {
    if let Err(e) = r {
        let s = e.to_string();
        assert!(!s.is_empty() && !s.contains('\n'), "not a one-line error: {s:?}");
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("scratch write");
}

/// IDX image and label files (plain or gzip, as the bytes say).
pub fn idx(data: &[u8]) {
    let d = scratch();
    let (a, b) = two(data);
    let (i, l) = (d.join("images-idx3-ubyte"), d.join("labels-idx1-ubyte"));
    write(&i, a);
    write(&l, b);
    one_line(data::load_idx_pair(&i, &l));
}

/// A CIFAR-10 (first byte even) or CIFAR-100 test file.
pub fn cifar(data: &[u8]) {
    let d = scratch();
    let Some((&which, rest)) = data.split_first() else { return };
    if which % 2 == 0 {
        write(&d.join("test_batch.bin"), rest);
        one_line(data::load_cifar10(&d, Split::Test));
    } else {
        write(&d.join("test.bin"), rest);
        one_line(data::load_cifar100(&d, Split::Test));
    }
}

/// An SVHN MATLAB v5 file.
pub fn svhn(data: &[u8]) {
    let p = scratch().join("test_32x32.mat");
    write(&p, data);
    one_line(data::load_svhn_mat(&p));
}

/// STL-10 image and label files.
pub fn stl10(data: &[u8]) {
    let d = scratch();
    let (x, y) = two(data);
    write(&d.join("test_X.bin"), x);
    write(&d.join("test_y.bin"), y);
    one_line(data::load_stl10(&d, Split::Test));
}

/// An image folder with one good PNG and the input as a second image (`.png` or `.jpg`
/// by the first byte): decoding, channel and size checks.
pub fn folder(data: &[u8]) {
    let d = scratch();
    let Some((&which, rest)) = data.split_first() else { return };
    std::fs::create_dir_all(d.join("a")).expect("scratch");
    std::fs::create_dir_all(d.join("b")).expect("scratch");
    let mut png = Vec::new();
    image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode");
    write(&d.join("a/0.png"), &png);
    write(&d.join(if which % 2 == 0 { "b/1.png" } else { "b/1.jpg" }), rest);
    one_line(data::load_folder(&d));
}

fn tiny_plan() -> Plan {
    let a = Arch::resnet(8, 1, 8, 10).expect("arch");
    let p = Partition::for_k(&a, 2, TableKind::Reference).expect("partition");
    Plan::new(a, p, Method::reference(Base::InfoPro, true), 2, [0.0; 4], [1.0; 4]).expect("plan")
}

/// A good checkpoint of the tiny model, made once per thread: its JSON's fields and
/// its tensor file.
struct Good {
    plan: Plan,
    meta: checkpoint::Meta,
    tensors: Vec<u8>,
}

thread_local! {
    static GOOD: Good = {
        let d = tempfile::tempdir().expect("scratch");
        let plan = tiny_plan();
        let model = Snapshot::init(&plan, &mut Rng::new(1));
        let mut meta = checkpoint::Meta {
            hpff_version: "fuzz".into(),
            config: hpff::config::Config::default().complete(),
            shape: hpff::config::Shape { c: 1, image: 8, classes: 10 },
            epoch: 1,
            global_step: 1,
            seed: 0,
            data_rng: Rng::new(0).state(),
            metrics: Vec::new(),
            best_accuracy: None,
            test: None,
            elapsed_s: 0.0,
            tensors: checkpoint::TensorFile { file: String::new(), bytes: 0, sha256: String::new() },
        };
        checkpoint::save(d.path(), &plan, &model, &mut meta).expect("a good checkpoint saves");
        let tensors = std::fs::read(d.path().join(&meta.tensors.file)).expect("tensor file");
        Good { plan, meta, tensors }
    };
}

/// A checkpoint of a tiny model: with the first byte even the input is its tensor file
/// (the JSON recording the input's true size and hash, so parsing gets past the check);
/// odd, the input is its JSON next to a good tensor file.
pub fn checkpoint(data: &[u8]) {
    let d = scratch();
    let Some((&which, rest)) = data.split_first() else { return };
    GOOD.with(|g| {
        let mut meta = g.meta.clone();
        let json = d.join(checkpoint::META_FILE);
        if which % 2 == 0 {
            write(&d.join(&meta.tensors.file), rest);
            meta.tensors.bytes = rest.len() as u64;
            meta.tensors.sha256 = checkpoint::sha256_hex(rest);
            write(&json, &serde_json::to_vec(&meta).expect("json"));
        } else {
            write(&d.join(&meta.tensors.file), &g.tensors);
            write(&json, rest);
        }
        one_line(checkpoint::load(&d).and_then(|l| l.restore(&g.plan, true)));
    });
}
