//! The `hpff` binary run as a user runs it: `plan`, `train` on tiny generated files of
//! every dataset format, `eval`, `bench`, resume, and the one-line errors.

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn hpff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hpff"))
        .args(args)
        .env("HPFF_CACHE", "/nonexistent-hpff-cache")
        .output()
        .expect("run hpff")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: &Output) {
    assert!(o.status.success(), "hpff failed ({:?}):\nstdout:\n{}\nstderr:\n{}", o.status.code(), stdout(o), stderr(o));
}

/// Exit code 1 and exactly one line `hpff: error: …` containing every `needles`.
#[track_caller]
fn fails(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stdout: {}\nstderr: {e}", stdout(o));
    assert_eq!(e.lines().count(), 1, "not one line: {e}");
    assert!(e.starts_with("hpff: error: "), "{e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} not in {e}");
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// The tensor file a run folder's `checkpoint.json` names.
fn tensor_file(run: &Path) -> std::path::PathBuf {
    let meta = json(&std::fs::read_to_string(run.join("checkpoint.json")).unwrap());
    run.join(meta["tensors"]["file"].as_str().unwrap())
}

/// Trains one epoch on `dataset` in `data`, checks the outputs, returns the run folder.
fn train_tiny(dataset: &str, data: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--dataset",
        dataset,
        "--data-dir",
        data.to_str().unwrap(),
        "--arch",
        "resnet8",
        "--k",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--limit-train",
        "12",
        "--limit-test",
        "6",
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
    ];
    if extra.contains(&"e2e") {
        // e2e is one module: hpff refuses --k for it.
        let at = args.iter().position(|a| *a == "--k").unwrap();
        args.drain(at..at + 2);
    }
    args.extend_from_slice(extra);
    let o = hpff(&args);
    ok(&o);
    let s = stdout(&o);
    assert!(s.contains("done: test accuracy"), "{s}");
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(m.lines().count(), 1, "{m}");
    let rec = json(m.lines().next().unwrap());
    assert_eq!(rec["epoch"], 1);
    assert_eq!(rec["train_images"], 12);
    assert!(rec["eval_accuracy"].as_f64().is_some());
    for f in ["checkpoint.json", "config.toml", "summary.json"] {
        assert!(out.join(f).is_file(), "{dataset}: no {f}");
    }
    assert!(tensor_file(out).is_file(), "{dataset}: no tensor file");
    let img = image::open(out.join("curves.png")).unwrap();
    assert_eq!((img.width(), img.height()), (960, 420));
    let summary = json(&std::fs::read_to_string(out.join("summary.json")).unwrap());
    assert_eq!(summary["test_images"], 6, "{dataset}");
}

#[test]
fn plan_prints_the_memory_plan() {
    let o = hpff(&[
        "plan",
        "--arch",
        "resnet32",
        "--method",
        "infopro",
        "--hpff",
        "--k",
        "16",
        "--dataset",
        "cifar10",
        "--json",
    ]);
    ok(&o);
    let v = json(&stdout(&o));
    assert_eq!((v["k_label"].as_u64(), v["modules"].as_u64()), (Some(16), Some(15)));
    assert_eq!(v["batch"], 1024);
    assert_eq!(v["per_module"].as_array().unwrap().len(), 15);
    let m = &v["memory_bytes"];
    let sum: u64 = ["params", "grads", "momentum", "bn_state", "activations", "scratch"]
        .iter()
        .map(|k| m[k].as_u64().unwrap())
        .sum();
    assert_eq!(m["total"].as_u64(), Some(sum));
    assert_eq!(m["params"].as_u64(), Some(4 * v["params"].as_u64().unwrap()));

    // HPFF at the same K needs less activation memory than E2E.
    let e2e = json(&stdout(&hpff(&["plan", "--method", "e2e", "--dataset", "cifar10", "--json"])));
    assert!(e2e["memory_bytes"]["activations"].as_u64() > m["activations"].as_u64());
    assert!(e2e["memory_bytes"]["activations_at_32"].is_null(), "only a 16-bit plan compares with 32");

    // A 16-bit plan states the f32 bound it is compared with: e2e's is the first plan's.
    for p in ["bf16-mixed", "16-mixed"] {
        let h = json(&stdout(&hpff(&["plan", "--method", "e2e", "--dataset", "cifar10", "--precision", p, "--json"])));
        let (now, full) = (&h["memory_bytes"]["activations"], &h["memory_bytes"]["activations_at_32"]);
        assert_eq!(full, &e2e["memory_bytes"]["activations"], "{p}");
        assert!(now.as_u64().unwrap() * 100 <= full.as_u64().unwrap() * 57, "{p}: {now} of {full}");
    }
    let s = stdout(&hpff(&["plan", "--method", "e2e", "--precision", "bf16-mixed"]));
    assert!(s.contains("activations at 32") && s.contains("stay f32"), "{s}");

    let o = hpff(&["plan", "--arch", "resnet20", "--k", "4", "--batch-size", "32"]);
    ok(&o);
    let s = stdout(&o);
    assert!(s.contains("MiB") && s.contains("activations") && s.contains("K = 4"), "{s}");
    assert_eq!(s.lines().filter(|l| l.contains("net_classifier")).count(), 2, "{s}");
}

#[test]
fn train_on_every_format_then_eval_and_errors() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();

    support::cifar10(&r.join("c10"), 3, 6);
    train_tiny("cifar10", &r.join("c10"), &r.join("run-c10"), &[]);
    support::cifar100(&r.join("c100"), 12, 6);
    train_tiny("cifar100", &r.join("c100"), &r.join("run-c100"), &["--method", "dgl"]);
    std::fs::create_dir_all(r.join("svhn")).unwrap();
    support::svhn_mat(&r.join("svhn/train_32x32.mat"), 12, 1);
    support::svhn_mat(&r.join("svhn/test_32x32.mat"), 6, 2);
    train_tiny("svhn", &r.join("svhn"), &r.join("run-svhn"), &["--method", "greedy"]);
    support::stl10(&r.join("stl"), 12, 6);
    train_tiny("stl10", &r.join("stl"), &r.join("run-stl"), &["--method", "e2e"]);
    support::idx_gz(&r.join("idx"), 16, 6, 16);
    train_tiny("fashion-mnist", &r.join("idx"), &r.join("run-idx"), &["--val-split", "4"]);
    support::folder(&r.join("folder"), 2, 6, 16);
    train_tiny("folder", &r.join("folder"), &r.join("run-folder"), &[]);

    // A folder with only a training split: the validation split stands in for the test.
    std::fs::remove_dir_all(r.join("folder/test")).unwrap();
    let out = r.join("run-train-only");
    let dir = r.join("folder");
    let args = ["train", "--dataset", "folder", "--data-dir", dir.to_str().unwrap(), "--arch", "resnet8"];
    let o = hpff(
        &[&args[..], &["--k", "2", "--batch-size", "4", "--val-split", "4", "--out", out.to_str().unwrap()]].concat(),
    );
    ok(&o);
    assert!(stdout(&o).contains("done: val accuracy"), "{}", stdout(&o));
    assert!(stderr(&o).contains("no test split"), "{}", stderr(&o));
    let summary = json(&std::fs::read_to_string(out.join("summary.json")).unwrap());
    assert_eq!((summary["final_split"].as_str(), summary["test_images"].as_u64()), (Some("val"), Some(4)));
    // Without a validation split a missing test split stays an error.
    fails(&hpff(&[&args[..], &["--out", r.join("x0").to_str().unwrap()]].concat()), &["test"]);

    // eval rebuilds the plan from the checkpoint.
    let run = r.join("run-c10");
    let o = hpff(&["eval", "--checkpoint", run.to_str().unwrap(), "--json"]);
    ok(&o);
    let v = json(&stdout(&o));
    assert_eq!(v["test_images"], 6);
    let acc = v["test_accuracy"].as_f64().unwrap();
    let summary = json(&std::fs::read_to_string(run.join("summary.json")).unwrap());
    assert_eq!(Some(acc), summary["test_accuracy"].as_f64());
    let o = hpff(&["eval", "--checkpoint", run.join("checkpoint.json").to_str().unwrap(), "--batch-size", "4"]);
    ok(&o);
    assert!(stdout(&o).contains("test accuracy"), "{}", stdout(&o));

    // Resuming with another architecture is refused clearly.
    let o = hpff(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--arch",
        "resnet14",
        "--epochs",
        "2",
        "--out",
        r.join("x").to_str().unwrap(),
    ]);
    fails(&o, &["does not fit this model"]);

    // A corrupt checkpoint.
    let bad = r.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(run.join("checkpoint.json"), bad.join("checkpoint.json")).unwrap();
    std::fs::write(tensor_file(&bad), b"garbage").unwrap();
    fails(&hpff(&["eval", "--checkpoint", bad.to_str().unwrap()]), &["corrupt"]);
    fails(&hpff(&["eval", "--checkpoint", r.join("none").to_str().unwrap()]), &["no checkpoint there"]);

    // Missing data: the path searched and where to get it.
    fails(
        &hpff(&["train", "--dataset", "cifar10", "--data-dir", r.join("none").to_str().unwrap()]),
        &["data_batch_1.bin", "cifar-10-binary.tar.gz"],
    );
    fails(&hpff(&["train", "--dataset", "folder"]), &["folder"]);
    // A bad file.
    std::fs::write(r.join("c10/test_batch.bin"), [1u8; 100]).unwrap();
    fails(
        &hpff(&["train", "--dataset", "cifar10", "--data-dir", r.join("c10").to_str().unwrap()]),
        &["test_batch.bin"],
    );
}

#[test]
fn impossible_configs_are_one_line_errors() {
    fails(&hpff(&["train", "--k", "99"]), &["K = 99", "more than the 15 blocks"]);
    fails(&hpff(&["plan", "--arch", "resnet33"]), &["no CIFAR ResNet of depth 33"]);
    fails(&hpff(&["plan", "--arch", "vgg16"]), &["unknown architecture"]);
    fails(
        &hpff(&[
            "plan",
            "--arch",
            "resnet8",
            "--k",
            "3",
            "--hpff",
            "--patches",
            "4",
            "--image-size",
            "6",
            "--in-channels",
            "1",
            "--classes",
            "10",
        ]),
        &["patch grid"],
    );
    fails(&hpff(&["plan", "--method", "e2e", "--hpff"]), &["--hpff needs a local method"]);
    // Flags only the local methods read would do nothing for e2e: refused (on the command
    // line; a config file may be shared between methods).
    fails(&hpff(&["plan", "--method", "e2e", "--k", "4"]), &["--k applies to the local methods"]);
    fails(&hpff(&["bench", "--method", "e2e", "--aux-classifier", "0c1f"]), &["--aux-classifier applies to the local"]);
    fails(&hpff(&["plan", "--aux-classifier", "9c9f"]), &["unknown aux classifier"]);
    // ResNeXt: groups need Bottlenecks, and no group may be empty.
    fails(&hpff(&["plan", "--arch", "resnext32-4x16d"]), &["need Bottleneck blocks"]);
    fails(&hpff(&["train", "--arch", "resnext50-32x4d-imagenet", "--width", "8"]), &["would have no channel"]);
    fails(&hpff(&["plan", "--arch", "resnext50-32x4-imagenet"]), &["unknown architecture"]);
    fails(&hpff(&["plan", "--splits", "1,9"]), &["split point (1, 9) does not exist"]);
    fails(&hpff(&["plan", "--dataset", "folder"]), &["--in-channels"]);
    fails(&hpff(&["train", "--device", "cuda"]), &["--device cpu"]);
    fails(&hpff(&["bench", "--device", "cuda"]), &["--device cpu"]);
    fails(&hpff(&["train", "--device", "cuda:1"]), &["--device cpu"]);
    // A split of several stages needs one process per stage.
    fails(&hpff(&["train", "--k", "3", "--pipeline", "--stages", "1,2"]), &["--stages lists 2 stages", "mpirun -np 2"]);
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, "epoch = 3\n").unwrap();
    fails(&hpff(&["train", "--config", cfg.to_str().unwrap()]), &["unknown field `epoch`"]);
    fails(&hpff(&["train", "--config", d.path().join("no.toml").to_str().unwrap()]), &["no.toml"]);
    // Usage errors are clap's: exit code 2.
    assert_eq!(hpff(&["train", "--method", "sgd"]).status.code(), Some(2));
    assert_eq!(hpff(&["train", "--bogus"]).status.code(), Some(2));
    assert_eq!(hpff(&[]).status.code(), Some(2));
}

#[test]
fn config_file_and_resume_continue_exactly() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    support::idx_gz(&r.join("idx"), 24, 8, 16);
    let cfg = r.join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "dataset = \"fashion-mnist\"\ndata_dir = {:?}\narch = \"resnet8\"\nk = 3\nepochs = 2\nbatch_size = 8\nlr = 0.05\nthreads = 2\n",
            r.join("idx")
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (a, b) = (r.join("a"), r.join("b"));
    ok(&hpff(&["train", "--config", c, "--out", a.to_str().unwrap(), "-q"]));
    ok(&hpff(&["train", "--config", c, "--out", b.to_str().unwrap(), "--stop-after", "1", "-q"]));
    let first = json(&std::fs::read_to_string(b.join("checkpoint.json")).unwrap());
    assert_eq!(first["epoch"], 1);
    let o = hpff(&["train", "--resume", b.to_str().unwrap()]);
    ok(&o);
    assert!(stdout(&o).contains("resumed from"), "{}", stdout(&o));
    let (x, y) = (std::fs::read(tensor_file(&a)).unwrap(), std::fs::read(tensor_file(&b)).unwrap());
    let (sx, sy) =
        (safetensors::SafeTensors::deserialize(&x).unwrap(), safetensors::SafeTensors::deserialize(&y).unwrap());
    let mut names = sx.names();
    names.sort();
    assert!(names.len() > 10);
    for n in names {
        let (tx, ty) = (sx.tensor(n).unwrap(), sy.tensor(n).unwrap());
        assert!(tx.data() == ty.data(), "{n}: the resumed run differs from the straight run");
    }
    assert!(x == y, "the same tensors give different files");
    let m = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(m.lines().count(), 2);
    // The saved effective config reloads as a config file.
    let saved = std::fs::read_to_string(a.join("config.toml")).unwrap();
    assert!(saved.contains("lr = 0.05") && saved.contains("schedule = \"cosine-steps\""), "{saved}");
    ok(&hpff(&["plan", "--config", a.join("config.toml").to_str().unwrap()]));
}

#[test]
fn bench_reports_one_json_object() {
    let o = hpff(&[
        "bench",
        "--arch",
        "resnet8",
        "--k",
        "2",
        "--batch-size",
        "8",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    ok(&o);
    let v = json(&stdout(&o));
    for k in [
        "train_images_per_s",
        "eval_images_per_s",
        "train_gflops_per_s",
        "arena_bytes",
        "executor_extra_bytes",
        "peak_rss_bytes",
    ] {
        assert!(v.get(k).is_some(), "no {k} in {v}");
    }
    assert!(v["train_images_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["train_flops_per_step"].as_u64().unwrap() > v["eval_flops_per_pass"].as_u64().unwrap());
}

#[test]
fn installed_fashion_mnist() {
    let sys = Path::new("/usr/share/datasets/fashion-mnist");
    if !sys.join("train-images-idx3-ubyte.gz").exists() {
        // CI installs the package; a green run must not mean "not tested".
        assert!(
            std::env::var_os("HPFF_ALLOW_MISSING_DATA").is_some(),
            "{} is absent: install the Debian package dataset-fashion-mnist, or set HPFF_ALLOW_MISSING_DATA=1 to skip this test",
            sys.display()
        );
        eprintln!("note: {} is absent and HPFF_ALLOW_MISSING_DATA is set; skipping", sys.display());
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    let o = hpff(&[
        "train",
        "--arch",
        "resnet8",
        "--k",
        "2",
        "--limit-train",
        "1024",
        "--limit-test",
        "512",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--threads",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    ok(&o);
    let s = stdout(&o);
    assert!(s.contains("data: 1024 train / 512 test images, 1×28×28, 10 classes"), "{s}");
    let summary = json(&std::fs::read_to_string(out.join("summary.json")).unwrap());
    let acc = summary["test_accuracy"].as_f64().unwrap();
    eprintln!("Fashion-MNIST, 1024 images, 1 epoch of resnet8 infopro+hpff K=2: test accuracy {acc:.3}");
    assert!(acc > 0.3, "{acc}");
}

#[test]
fn plan_lists_ops_and_chooses_from_a_memory_limit() {
    let o =
        hpff(&["plan", "--arch", "resnet20", "--method", "infopro", "--hpff", "--batch-size", "8", "--json", "--ops"]);
    ok(&o);
    let v = json(&stdout(&o));
    let train = &v["ops"]["train"];
    let peak = train["peak_bytes"].as_u64().unwrap();
    assert!(peak <= v["memory_bytes"]["activations"].as_u64().unwrap());
    let ops = train["ops"].as_array().unwrap();
    assert_eq!(ops[0]["op"], "begin_step");
    assert!(ops.iter().any(|op| op["op"] == "bn_apply"), "backward recomputes ReLU outputs");

    let o = hpff(&["plan", "--dataset", "cifar10", "--arch", "resnet110", "--memory-limit", "64MiB", "--json"]);
    ok(&o);
    let v = json(&stdout(&o));
    assert!(v["memory_bytes"]["activations"].as_u64().unwrap() <= 64 << 20);
    assert_eq!(v["memory_limit"]["bytes"], 64 << 20);

    let o = hpff(&["plan", "--dataset", "cifar10", "--method", "e2e", "--memory-limit", "1MiB"]);
    fails(&o, &["nothing fits in 1.0 MiB", "the smallest plan"]);
    let o = hpff(&["plan", "--memory-limit", "64XB"]);
    fails(&o, &["--memory-limit \"64XB\""]);
}

/// `root/{train,val}/<class>/*.JPEG` of varied sizes (ImageNet's layout).
fn varied_folder(root: &Path, per_class: usize) {
    for (split, n) in [("train", per_class), ("val", 3)] {
        for c in 0..3u32 {
            let d = root.join(split).join(format!("n0{c}"));
            std::fs::create_dir_all(&d).unwrap();
            for k in 0..n as u32 {
                let (w, h) = (24 + (k * 17 + c * 5) % 90, 20 + (k * 31 + c * 11) % 80);
                let img = image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([(60 * c + x) as u8, (y * 3) as u8, (k * 9) as u8])
                });
                img.save(d.join(format!("{k:04}.JPEG"))).unwrap();
            }
        }
    }
}

#[test]
fn train_streams_an_image_folder_of_varied_sizes() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("imgs");
    varied_folder(&data, 8);
    let out = d.path().join("run");
    let dir = data.to_str().unwrap();
    let base: Vec<&str> =
        format!("train --dataset folder --data-dir {dir} --arch resnet8 --k 2 --epochs 1 --threads 2")
            .leak()
            .split(' ')
            .collect();
    let o = hpff(&[&base[..], &["--stream", "16", "--batch-size", "5", "--out", out.to_str().unwrap()]].concat());
    ok(&o);
    let s = stdout(&o);
    for needle in [
        "data: 24 train / 9 test images, 3×16×16, 3 classes; augmentation RandomResizedCrop(16",
        "stream: 2 decoding threads, 2 batches prepared ahead; memory bound",
        "stream memory bound at the largest image so far: ",
        "done: test accuracy",
    ] {
        assert!(s.contains(needle), "{needle:?} not in {s}");
    }
    assert!(std::fs::read_to_string(out.join("config.toml")).unwrap().contains("stream = 16"));
    // eval of a streamed run streams its test split through the evaluation transform.
    let o = hpff(&["eval", "--checkpoint", out.to_str().unwrap(), "--json"]);
    ok(&o);
    let v = json(&stdout(&o));
    let summary = json(&std::fs::read_to_string(out.join("summary.json")).unwrap());
    assert_eq!((v["test_images"].as_u64(), v["test_accuracy"].as_f64()), (Some(9), summary["test_accuracy"].as_f64()));
    // A corrupt image ends the run with one line naming it.
    let bad = data.join("train/n01/0003.JPEG");
    std::fs::write(&bad, b"\xff\xd8\xff garbage").unwrap();
    let o = hpff(&[&base[..], &["--stream", "16", "--out", d.path().join("x").to_str().unwrap()]].concat());
    fails(&o, &[bad.to_str().unwrap(), "undecodable image"]);
    // --stream reads image folders only.
    fails(
        &hpff(&["train", "--dataset", "cifar10", "--stream", "--out", d.path().join("y").to_str().unwrap()]),
        &["--stream"],
    );
}
