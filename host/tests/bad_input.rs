//! The bad-input corpus: malformed files of every data format, malformed configs, flags
//! and checkpoints, each run through the `hpff` binary as a user would. Every case must
//! end with exit code 1 (2 for a usage error), exactly one line `hpff: error: …` that
//! names the file or flag and what is wrong, and never a panic, an abort or a hang.

mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn hpff<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hpff"))
        .args(args)
        .env("HPFF_CACHE", "/nonexistent-hpff-cache")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hpff");
    // A hang is a failure too: every case here fails fast or trains a few images.
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!(
                "hpff hung on {:?}",
                args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// One line `hpff: error: …` holding every needle, with exit code `code`.
#[track_caller]
fn refused<S: AsRef<OsStr>>(args: &[S], code: i32, needles: &[&str]) -> String {
    let o = hpff(args);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "stderr: {e}");
    assert_eq!(e.lines().count(), 1, "not one line: {e}");
    assert!(e.starts_with("hpff: error: "), "{e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} not in {e}");
    }
    e
}

/// `hpff train` of a tiny network on `dataset` in `dir`.
fn train_args(dataset: &str, dir: &Path, out: &Path) -> Vec<String> {
    let mut v: Vec<String> = ["train", "--dataset", dataset, "--data-dir"].map(String::from).to_vec();
    v.push(dir.to_str().unwrap().into());
    v.extend(
        ["--arch", "resnet8", "--k", "2", "--epochs", "1", "--batch-size", "8", "--threads", "1", "-q", "--out"]
            .map(String::from),
    );
    v.push(out.to_str().unwrap().into());
    v
}

#[track_caller]
fn data_refused(dataset: &str, dir: &Path, needles: &[&str]) {
    let out = dir.parent().unwrap().join("out");
    refused(&train_args(dataset, dir, &out), 1, needles);
}

fn gz(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut v = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut v).unwrap();
    v
}

/// A fresh copy of a generated dataset folder to spoil.
fn fresh(root: &Path, name: &str, make: impl Fn(&Path)) -> PathBuf {
    let d = root.join(name).join("data");
    make(&d);
    d
}

#[test]
fn malformed_idx_files() {
    let t = tempfile::tempdir().unwrap();
    let make = |d: &Path| support::idx_gz(d, 16, 8, 8);
    let labels = "t10k-labels-idx1-ubyte.gz";
    let images = "t10k-images-idx3-ubyte.gz";

    let d = fresh(t.path(), "empty", make);
    std::fs::write(d.join(labels), b"").unwrap();
    data_refused("fashion-mnist", &d, &[labels, "truncated: 0 bytes"]);

    let d = fresh(t.path(), "magic", make);
    let mut b = gunzip(&std::fs::read(d.join(images)).unwrap());
    b[3] = 0x04;
    std::fs::write(d.join(images), gz(&b)).unwrap();
    data_refused("fashion-mnist", &d, &[images, "bad magic number 0x00000804"]);

    // A header promising 4 billion images in a few hundred bytes: no allocation of that.
    let d = fresh(t.path(), "lying", make);
    let mut b = gunzip(&std::fs::read(d.join(images)).unwrap());
    b[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(d.join(images), gz(&b)).unwrap();
    data_refused("fashion-mnist", &d, &[images, "truncated", "4294967295 images of 8×8"]);

    let d = fresh(t.path(), "zero-dims", make);
    let mut b = gunzip(&std::fs::read(d.join(images)).unwrap());
    b[8..12].copy_from_slice(&0u32.to_be_bytes());
    std::fs::write(d.join(images), gz(&b)).unwrap();
    data_refused("fashion-mnist", &d, &[images, "image size 0×8 is empty"]);

    let d = fresh(t.path(), "label", make);
    let mut b = gunzip(&std::fs::read(d.join(labels)).unwrap());
    b[8 + 3] = 10;
    std::fs::write(d.join(labels), gz(&b)).unwrap();
    data_refused("fashion-mnist", &d, &[labels, "label 10 of item 3 is out of range (expected 0..=9)"]);

    let d = fresh(t.path(), "count", make);
    let mut b = gunzip(&std::fs::read(d.join(labels)).unwrap());
    b.pop();
    b[4..8].copy_from_slice(&7u32.to_be_bytes());
    std::fs::write(d.join(labels), gz(&b)).unwrap();
    data_refused("fashion-mnist", &d, &[labels, "wrong size: 7 labels but", "holds 8 images"]);

    // A gzip stream cut in half.
    let d = fresh(t.path(), "torn-gzip", make);
    let b = std::fs::read(d.join(images)).unwrap();
    std::fs::write(d.join(images), &b[..b.len() / 2]).unwrap();
    data_refused("fashion-mnist", &d, &[images]);
}

#[test]
fn malformed_cifar_svhn_and_stl10_files() {
    let t = tempfile::tempdir().unwrap();
    let c10 = |d: &Path| support::cifar10(d, 4, 4);
    let d = fresh(t.path(), "c10-size", c10);
    std::fs::write(d.join("test_batch.bin"), [1u8; 100]).unwrap();
    data_refused("cifar10", &d, &["test_batch.bin", "wrong size"]);
    let d = fresh(t.path(), "c10-empty", c10);
    std::fs::write(d.join("data_batch_3.bin"), b"").unwrap();
    data_refused("cifar10", &d, &["data_batch_3.bin"]);
    let d = fresh(t.path(), "c10-label", c10);
    let mut b = std::fs::read(d.join("data_batch_2.bin")).unwrap();
    b[3073] = 10;
    std::fs::write(d.join("data_batch_2.bin"), b).unwrap();
    data_refused("cifar10", &d, &["data_batch_2.bin", "label 10 of item 1 is out of range"]);
    let d = fresh(t.path(), "c100-label", |d| support::cifar100(d, 8, 4));
    let mut b = std::fs::read(d.join("train.bin")).unwrap();
    b[1] = 100;
    std::fs::write(d.join("train.bin"), b).unwrap();
    data_refused("cifar100", &d, &["train.bin", "label 100 of item 0 is out of range"]);

    let svhn = |d: &Path| {
        std::fs::create_dir_all(d).unwrap();
        support::svhn_mat(&d.join("train_32x32.mat"), 8, 1);
        support::svhn_mat(&d.join("test_32x32.mat"), 4, 2);
    };
    let d = fresh(t.path(), "svhn-trunc", svhn);
    let b = std::fs::read(d.join("test_32x32.mat")).unwrap();
    std::fs::write(d.join("test_32x32.mat"), &b[..b.len() - 50]).unwrap();
    data_refused("svhn", &d, &["test_32x32.mat", "truncated"]);
    let d = fresh(t.path(), "svhn-magic", svhn);
    let mut b = std::fs::read(d.join("test_32x32.mat")).unwrap();
    b[126..128].copy_from_slice(b"XX");
    std::fs::write(d.join("test_32x32.mat"), b).unwrap();
    data_refused("svhn", &d, &["test_32x32.mat", "bad magic number"]);
    let d = fresh(t.path(), "svhn-label", svhn);
    let mut b = std::fs::read(d.join("test_32x32.mat")).unwrap();
    let n = b.len();
    b[n - 8..].copy_from_slice(&11f64.to_le_bytes());
    std::fs::write(d.join("test_32x32.mat"), b).unwrap();
    data_refused("svhn", &d, &["test_32x32.mat", "label 11", "out of range"]);
    let d = fresh(t.path(), "svhn-short", svhn);
    std::fs::write(d.join("train_32x32.mat"), b"MATLAB").unwrap();
    data_refused("svhn", &d, &["train_32x32.mat", "truncated: 6 bytes"]);

    let stl = |d: &Path| support::stl10(d, 4, 2);
    let d = fresh(t.path(), "stl-size", stl);
    std::fs::write(d.join("test_X.bin"), [0u8; 1000]).unwrap();
    data_refused("stl10", &d, &["test_X.bin", "wrong size"]);
    let d = fresh(t.path(), "stl-label", stl);
    std::fs::write(d.join("test_y.bin"), [0u8, 1]).unwrap();
    data_refused("stl10", &d, &["test_y.bin", "label 0 of item 0 is out of range"]);
    let d = fresh(t.path(), "stl-count", stl);
    std::fs::write(d.join("train_y.bin"), [1u8, 2, 3]).unwrap();
    data_refused("stl10", &d, &["train_y.bin"]);
}

#[test]
fn malformed_image_folders() {
    let t = tempfile::tempdir().unwrap();
    let f = |d: &Path| support::folder(d, 2, 3, 8);
    let d = fresh(t.path(), "undecodable", f);
    std::fs::write(d.join("test/class1/1.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    data_refused("folder", &d, &["class1/1.png", "undecodable image"]);
    let d = fresh(t.path(), "size", f);
    image::RgbImage::new(9, 8).save(d.join("train/class0/1.png")).unwrap();
    data_refused("folder", &d, &["class0/1.png: wrong size: image is 9×8"]);
    // Images too small for the network: the shape the data gave, named.
    let tiny = fresh(t.path(), "tiny", |d: &Path| support::folder(d, 2, 3, 2));
    data_refused("folder", &tiny, &["--arch resnet8 on inputs of 3 channel(s), 2×2", "at least 4 pixels"]);
    let d = fresh(t.path(), "empty-class", f);
    for k in 0..3 {
        std::fs::remove_file(d.join(format!("train/class1/{k}.png"))).unwrap();
    }
    data_refused("folder", &d, &["class1: empty class folder"]);
    // Same class count, different names: labels would mean different classes.
    let d = fresh(t.path(), "names", f);
    std::fs::rename(d.join("test/class1"), d.join("test/classX")).unwrap();
    data_refused("folder", &d, &["class 1 is \"class1\" in the training split but \"classX\" in the test split"]);
    // No split folders: not silently tested on the training images.
    let d = fresh(t.path(), "no-split", f);
    let flat = d.join("train");
    refused(&train_args("folder", &flat, &t.path().join("o")), 1, &["no test/ or val/ split", "--val-split"]);
    // … unless a validation split is asked for.
    let mut args = train_args("folder", &flat, &t.path().join("o"));
    args.extend(["--val-split", "2"].map(String::from));
    let o = hpff(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no test split found"));

    // Paths that are not UTF-8 (Linux paths are bytes) cannot be recorded in the run's
    // config and checkpoint: refused up front, shown as far as they can be.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = t.path().join(OsStr::from_bytes(b"caf\xe9"));
        f(&odd);
        let mut args: Vec<&OsStr> = vec![OsStr::new("train"), OsStr::new("--dataset"), OsStr::new("folder")];
        args.extend([OsStr::new("--data-dir"), odd.as_os_str()]);
        args.extend(["--arch", "resnet8", "--k", "2", "--epochs", "1", "--batch-size", "4", "-q"].map(OsStr::new));
        refused(&args, 1, &["--data-dir ", "caf\u{FFFD}: the path is not valid UTF-8"]);
        let out = t.path().join(OsStr::from_bytes(b"out-\xff"));
        let good = fresh(t.path(), "good", f);
        let good = good.to_str().unwrap();
        let mut args: Vec<&OsStr> = vec![OsStr::new("train"), OsStr::new("--dataset"), OsStr::new("folder")];
        args.extend([OsStr::new("--data-dir"), OsStr::new(good), OsStr::new("--out"), out.as_os_str()]);
        refused(&args, 1, &["--out ", "out-\u{FFFD}: the path is not valid UTF-8"]);
        assert!(!out.exists(), "nothing written");
    }
}

#[test]
fn malformed_configs_and_absurd_flags() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("c.toml");
    let with = |text: &[u8]| {
        std::fs::write(&cfg, text).unwrap();
        vec!["train".to_string(), "--config".into(), cfg.to_str().unwrap().into()]
    };
    refused(
        &with(b"seed = 1\nepochs = \"many\"\n"),
        1,
        &["c.toml: bad config at line 2 (\"epochs = \\\"many\\\"\")", "expected u32"],
    );
    refused(&with(b"batch_size = -3\n"), 1, &["c.toml", "batch_size"]);
    refused(&with(b"[[[\n"), 1, &["c.toml"]);
    refused(&with(b"\xff\xfe\x00garbage"), 1, &["c.toml"]);
    refused(&with(b"lr = 1e400\n"), 1, &["c.toml"]);
    refused(&with(b"momentum = 1.5\n"), 1, &["--momentum must be in [0, 1), not 1.5"]);

    let out = t.path().join("o").to_str().unwrap().to_string();
    let plan = |extra: &[&str]| -> Vec<String> { ["plan"].iter().chain(extra).map(|s| s.to_string()).collect() };
    let train = |extra: &[&str]| -> Vec<String> {
        ["train", "-q", "--out", out.as_str()].iter().chain(extra).map(|s| s.to_string()).collect()
    };
    // Absurd numbers: refused before anything is allocated or spawned.
    refused(&train(&["--batch-size", "1000000000000"]), 1, &["beyond any machine's memory"]);
    refused(&plan(&["--image-size", "1000000000"]), 1, &["beyond any machine's memory"]);
    refused(&train(&["--feature-dim", "1000000000"]), 1, &["beyond any machine's memory"]);
    refused(&train(&["--batch-size", "0"]), 1, &["batch size must be at least 1"]);
    refused(&train(&["--threads", "100000"]), 1, &["--threads 100000 is more than 1024"]);
    refused(&train(&["--epochs", "0"]), 1, &["--epochs must be at least 1"]);
    refused(&train(&["--eval-every", "0"]), 1, &["--eval-every must be at least 1"]);
    refused(&train(&["--k", "1000000"]), 1, &["K = 1000000 modules is more than"]);
    refused(&train(&["--patches", "1000000"]), 1, &["patch grid"]);
    refused(&train(&["--lr", "nan"]), 1, &["--lr must be a positive number, not NaN"]);
    refused(&train(&["--lr=-1"]), 1, &["--lr must be a positive number"]);
    refused(&train(&["--weight-decay=-1"]), 1, &["--weight-decay must be a number ≥ 0"]);
    refused(&train(&["--gamma", "0"]), 1, &["--gamma must be a positive number"]);
    refused(&train(&["--gamma", "1e39"]), 1, &["--gamma must be a positive number, not inf"]);
    refused(&train(&["--wx=-1"]), 1, &["--wx must be a finite number ≥ 0, not -1"]);
    refused(&train(&["--wy", "nan"]), 1, &["--wy must be a finite number ≥ 0, not NaN"]);
    refused(&train(&["--lambda1", "5,1e39"]), 1, &["--lambda1 must be a finite number ≥ 0, not 1000"]);
    refused(&train(&["--lambda2=-0.5,0"]), 1, &["--lambda2 must be a finite number ≥ 0, not -0.5"]);
    refused(
        &train(&["--method", "e2e", "--local-loss", "contrast"]),
        1,
        &["--local-loss applies to the local methods"],
    );
    refused(&train(&["--method", "e2e", "--k", "4"]), 1, &["--k applies to the local methods"]);
    refused(&train(&["--method", "dgl", "--patches", "4"]), 1, &["--patches cuts InfoPro's decoder into patches"]);
    refused(&train(&["--precision", "bf16"]), 2, &["invalid value 'bf16' for '--precision"]);
    refused(&train(&["--val-split", "100000000"]), 1, &["--val-split 100000000 leaves no training images"]);
    refused(&train(&["--arch", "resnet1000000000"]), 1, &["no CIFAR ResNet of depth 1000000000"]);
    // More than the machine has: refused before allocating, with a batch that fits.
    refused(
        &["bench", "--batch-size", "400000", "--arch", "resnet8", "--k", "2"],
        1,
        &["but the memory available is", "would fit"],
    );
    // Over --memory-limit (activations): refused with what fits.
    refused(&["bench", "--arch", "resnet8", "--k", "2", "--memory-limit", "1MiB"], 1, &["over the limit of 1.0 MiB"]);
    refused(&train(&["--memory-limit", "lots"]), 1, &["--memory-limit \"lots\": expected a size"]);
    // Usage errors (clap's): exit 2, one line too.
    refused(&train(&["--batch-size", "x"]), 2, &["invalid value 'x' for '--batch-size"]);
    refused(&train(&["--bogus"]), 2, &["unexpected argument '--bogus'"]);
    refused(&train(&["--epochs", "99999999999"]), 2, &["--epochs"]);
}

/// A tensor of a checkpoint: name, shape, little-endian bytes.
type Item = (String, Vec<usize>, Vec<u8>);

#[test]
fn malformed_checkpoints() {
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("c10");
    support::cifar10(&data, 4, 4);
    let run = t.path().join("run");
    let mut args = train_args("cifar10", &data, &run);
    args.extend(["--limit-train", "8", "--limit-test", "4"].map(String::from));
    let o = hpff(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("checkpoint.json")).unwrap()).unwrap();
    let tensors = meta["tensors"]["file"].as_str().unwrap().to_string();
    let copy = |name: &str| {
        let d = t.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["checkpoint.json", tensors.as_str()] {
            std::fs::copy(run.join(f), d.join(f)).unwrap();
        }
        d
    };
    let eval = |d: &Path| {
        vec!["eval".to_string(), "--checkpoint".into(), d.to_str().unwrap().into(), "--threads".into(), "1".into()]
    };
    // Another architecture's checkpoint, resumed with other flags.
    let other: Vec<String> = ["train", "--resume", run.to_str().unwrap(), "--arch", "resnet14", "--epochs", "2", "-q"]
        .map(String::from)
        .to_vec();
    refused(&other, 1, &["does not fit this model", "--arch"]);
    // Tampered: one bit of the tensor file.
    let d = copy("tampered");
    let mut b = std::fs::read(d.join(&tensors)).unwrap();
    let n = b.len();
    b[n - 5] ^= 0x10;
    std::fs::write(d.join(&tensors), b).unwrap();
    refused(&eval(&d), 1, &[&tensors, "corrupt or was interrupted"]);
    // Truncated (a copy that stopped half-way).
    let d = copy("truncated");
    let b = std::fs::read(d.join(&tensors)).unwrap();
    std::fs::write(d.join(&tensors), &b[..b.len() / 2]).unwrap();
    refused(&eval(&d), 1, &[&tensors, "corrupt or was interrupted"]);
    // The tensor file missing.
    let d = copy("missing");
    std::fs::remove_file(d.join(&tensors)).unwrap();
    refused(&eval(&d), 1, &[&tensors, "cannot read"]);
    // A tensor missing, and one of the wrong shape, with the JSON's hash updated so the
    // content check passes and the shape check must catch it.
    let respin = |name: &str, edit: &dyn Fn(&mut Vec<Item>)| {
        let d = copy(name);
        let bytes = std::fs::read(d.join(&tensors)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut items: Vec<Item> =
            st.tensors().into_iter().map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec())).collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        edit(&mut items);
        let views: Vec<(String, safetensors::tensor::TensorView)> = items
            .iter()
            .map(|(n, s, d)| {
                (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
            })
            .collect();
        let out = safetensors::serialize(views, &None).unwrap();
        std::fs::write(d.join(&tensors), &out).unwrap();
        let mut m = meta.clone();
        m["tensors"]["bytes"] = out.len().into();
        use sha2::Digest;
        m["tensors"]["sha256"] =
            sha2::Sha256::digest(&out).iter().map(|x| format!("{x:02x}")).collect::<String>().into();
        std::fs::write(d.join("checkpoint.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        d
    };
    let d = respin("no-tensor", &|items| items.retain(|(n, _, _)| n != "conv1.weight"));
    refused(&eval(&d), 1, &["does not fit this model: it has no tensor conv1.weight"]);
    let d = respin("shape", &|items| {
        let t = items.iter_mut().find(|(n, _, _)| n == "fc64.bias").unwrap();
        t.1 = vec![2, t.1[0] / 2];
    });
    refused(&eval(&d), 1, &["does not fit this model: fc64.bias is F32 [2, 5] there, F32 [10] here"]);
    let d = respin("extra", &|items| items.push(("stowaway".into(), vec![1], vec![0; 4])));
    refused(&eval(&d), 1, &["it has 1 tensor(s) this model lacks, e.g. stowaway"]);
    // Broken JSON: garbage, a wrong type, a tensor file outside the folder.
    let d = copy("json");
    std::fs::write(d.join("checkpoint.json"), b"{\"epoch\": ").unwrap();
    refused(&eval(&d), 1, &["checkpoint.json: not a valid hpff checkpoint"]);
    let mut m = meta.clone();
    m["epoch"] = "one".into();
    std::fs::write(d.join("checkpoint.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    refused(&eval(&d), 1, &["checkpoint.json: not a valid hpff checkpoint"]);
    let mut m = meta.clone();
    m["tensors"]["file"] = "/etc/passwd".into();
    std::fs::write(d.join("checkpoint.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    refused(&eval(&d), 1, &["not a file name in its folder"]);
    refused(&eval(&t.path().join("nowhere")), 1, &["no checkpoint there"]);
    let mut small = eval(&run);
    small.extend(["--memory-limit", "64KiB"].map(String::from));
    refused(&small, 1, &["an eval pass at batch 8 needs", "over the limit of 0.1 MiB", "fits"]);
}
