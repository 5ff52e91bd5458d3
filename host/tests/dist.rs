//! Data-parallel training on MPI (built with `--features mpi`).
//!
//! A plain binary, not a libtest harness: MPI must own the process. Started by cargo (no
//! launcher around it), it starts itself under `mpirun -np 2` and `-np 3` for the checks
//! that need a communicator in the test process (exact gradient averaging, the same
//! parameters on every rank, a panicking rank ending the job), then drives `hpff` under
//! mpirun (bit-identical reruns, bad input, mismatched ranks, a killed rank), and a
//! pipeline of stages (`--pipeline`) against one process.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hpff::config::MethodName;
use hpff::cpu::CpuExecutor;
use hpff::device::Snapshot;
use hpff::dist::Comm;
use hpff_core::exec::{Executor, Region, StepInput};
use hpff_core::optim::sgd_step;
use hpff_core::rng::Rng;
use support::{holds, same_bits, small_plan};

/// Every method, with HPFF on the method it is defined for.
const METHODS: [(MethodName, bool); 5] = [
    (MethodName::E2e, false),
    (MethodName::Greedy, false),
    (MethodName::Dgl, false),
    (MethodName::Infopro, false),
    (MethodName::Infopro, true),
];

/// What a rank started by this test does (the parent sets it).
const MODE: &str = "HPFF_DIST_TEST_MODE";

fn main() {
    if hpff::dist::launched_size().is_some_and(|n| n > 1) {
        rank_main();
        return;
    }
    if Command::new("mpirun").arg("--version").output().is_err() {
        println!("dist: SKIPPED (all checks): no `mpirun` on PATH; apt-get install openmpi-bin libopenmpi-dev");
        return;
    }
    let t0 = Instant::now();
    for np in [2, 3] {
        let o = wait(mpirun(np, &std::env::current_exe().unwrap(), &[]).env(MODE, "exact"), 300);
        assert!(o.status.success(), "the exactness checks failed at -np {np}:\n{}", text(&o));
        print!("{}", String::from_utf8_lossy(&o.stdout));
    }
    a_panicking_rank_ends_the_job();
    a_stuck_rank_ends_the_job();
    cli_checks();
    println!("dist: all checks passed in {:.1} s", t0.elapsed().as_secs_f64());
}

/// `mpirun` on this machine for `np` processes of `exe args` (more processes than cores,
/// as root in a container; no shared-memory single copy, which containers often forbid).
fn mpirun(np: usize, exe: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()])
        .arg(exe)
        .args(args)
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("HPFF_CACHE", "/nonexistent-hpff-cache")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs `c` to its end, failing the test (and killing it) after `secs` seconds.
#[track_caller]
fn wait(c: &mut Command, secs: u64) -> Output {
    let child = c.spawn().expect("mpirun starts");
    let t0 = Instant::now();
    let pid = child.id();
    let out = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !out.is_finished() {
        if t0.elapsed() > Duration::from_secs(secs) {
            // SAFETY: signalling a child process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the MPI job did not end within {secs} s (a hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    out.join().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

// ---------------------------------------------------------------- inside the MPI job

fn rank_main() {
    let comm = hpff::dist::init().unwrap_or_else(|e| panic!("joining the job: {e}"));
    match std::env::var(MODE).as_deref() {
        Ok("exact") => {
            background_sums_finish_by_polling(comm);
            for (method, hpff) in METHODS {
                steps_average_gradients_exactly(comm, method, hpff);
                sync_bn_matches_one_process(comm, method, hpff);
            }
            if comm.rank() == 0 {
                println!(
                    "dist -np {}: gradients are the rank-order mean and parameters agree; --sync-bn matches one process; every method",
                    comm.size()
                );
            }
        }
        Ok("panic") => {
            if comm.rank() == 1 {
                panic!("a deliberate panic on rank 1");
            }
            // The others wait for rank 1 in a collective it never joins.
            comm.sum_f32(&mut [1.0]);
        }
        Ok("stuck") => {
            if comm.rank() == 1 {
                // Alive, never joining: the others' watchdog must end the job.
                std::thread::sleep(Duration::from_secs(120));
            }
            comm.sum_f32(&mut [1.0]);
        }
        m => panic!("unknown {MODE} {m:?}"),
    }
    comm.finish();
}

/// Three sums started in the background, a blocking sum on the world meanwhile, then
/// polls alone (no wait) finish them, oldest first, with the rank-order sum's bits.
fn background_sums_finish_by_polling(comm: &'static dyn Comm) {
    let (n, me) = (comm.size(), comm.rank());
    let value = |r: usize, b: usize, i: usize| ((r * 7 + b * 3 + i) % 11) as f32 * 0.1 + 1e-3 * r as f32;
    let lens = [10_007, 2, 1];
    let mut bufs: Vec<Vec<f32>> =
        lens.iter().enumerate().map(|(b, &l)| (0..l).map(|i| value(me, b, i)).collect()).collect();
    let (started0, hidden0) = comm.background_sums();
    // SAFETY: `bufs` is neither touched nor dropped until every sum reports done below.
    let mut sums: Vec<_> = bufs.iter_mut().map(|b| unsafe { comm.start_sum_f32(b.as_mut_ptr(), b.len()) }).collect();
    let mut other = [me as f32 + 1.0];
    comm.sum_f32(&mut other);
    assert_eq!(other[0], (1..=n).sum::<usize>() as f32, "a blocking sum beside background ones");
    let t0 = Instant::now();
    for s in &mut sums {
        while !s.poll() {
            assert!(t0.elapsed() < Duration::from_secs(60), "a background sum did not finish by polling");
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    drop(sums);
    for (b, buf) in bufs.iter().enumerate() {
        let want: Vec<f32> = (0..lens[b]).map(|i| (1..n).fold(value(0, b, i), |acc, r| acc + value(r, b, i))).collect();
        same_bits(buf, &want, &format!("background sum {b} at -np {n}"));
    }
    assert_eq!(comm.background_sums(), (started0 + 3, hidden0 + 3), "three sums, all seen done by a poll");
    if me == 0 {
        println!(
            "dist -np {n}: background sums finish by polling alone, beside a blocking sum, with the rank-order bits"
        );
    }
}

/// Three steps on `comm` at a global batch of 4 images per rank: after each, the
/// executor's gradients are bit for bit the rank-order mean of the gradients each rank's
/// images give alone (recomputed here by one-process executors), and its parameters and
/// momentum those of the core's SGD applied to that mean; then every rank holds the same
/// parameters.
fn steps_average_gradients_exactly(comm: &'static dyn Comm, method: MethodName, hpff: bool) {
    let (n, local) = (comm.size(), 4);
    let (setup, plan) = small_plan(method, hpff, local);
    let what = format!("{method:?}{} at -np {n}", if hpff { "+HPFF" } else { "" });
    let init = Snapshot::init(&plan, &mut Rng::new(11));
    let mut job = CpuExecutor::new(&plan, 1).with_comm(Some(comm));
    init.upload(&mut job).unwrap();
    let mut alone: Vec<CpuExecutor> = (0..n).map(|_| CpuExecutor::new(&plan, 1)).collect();
    let (mut params, mut momentum) = (init.params.clone(), vec![0f32; plan.params]);
    let mut rng = Rng::new(5);
    let mut losses = vec![0f32; plan.loss_slots()];
    for step in 0..3 {
        // One global batch, the same on every rank; rank r takes images r, r + n, ….
        let img = plan.input().len / local;
        let x: Vec<f32> = (0..img * local * n).map(|_| rng.normal() as f32).collect();
        let y: Vec<u32> = (0..local * n).map(|_| rng.below(4) as u32).collect();
        let shard = |r: usize| -> (Vec<f32>, Vec<u32>) {
            let rows: Vec<usize> = (0..local).map(|i| r + i * n).collect();
            (
                rows.iter().flat_map(|&i| x[i * img..(i + 1) * img].to_vec()).collect(),
                rows.iter().map(|&i| y[i]).collect(),
            )
        };
        let lr = 0.05;
        let (mx, my) = shard(comm.rank());
        job.train_step(&plan, &StepInput { x: &mx, labels: &my, lr, sgd: setup.sgd }, &mut losses).unwrap();
        let mut mean = vec![0f32; plan.params];
        for (r, exec) in alone.iter_mut().enumerate() {
            Snapshot { params: params.clone(), ..init.clone() }.upload(exec).unwrap();
            let (sx, sy) = shard(r);
            exec.train_step(&plan, &StepInput { x: &sx, labels: &sy, lr, sgd: setup.sgd }, &mut losses).unwrap();
            let mut g = vec![0f32; plan.params];
            exec.download(Region::Grads, 0, &mut g).unwrap();
            if r == 0 {
                mean = g;
            } else {
                mean.iter_mut().zip(&g).for_each(|(m, g)| *m += g);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f32);
        sgd_step(&setup.sgd, lr, &mut params, &mean, &mut momentum);
        holds(&mut job, &mean, &params, &momentum, &what, step);
    }
    let mut mine = vec![0f32; plan.params];
    job.download(Region::Params, 0, &mut mine).unwrap();
    let bytes: Vec<u8> = mine.iter().flat_map(|v| v.to_le_bytes()).collect();
    let all = comm.gather_bytes(&bytes);
    for (r, theirs) in all.chunks(bytes.len()).enumerate() {
        assert!(theirs == &bytes[..], "{what}: rank {r}'s parameters differ from rank {}'s", comm.rank());
    }
}

/// `--sync-bn`: N processes at a global batch B end three steps where one process at B
/// ends them, up to the rounding of other summation orders (max |Δ| ≤ 1e-5 on every
/// parameter), BN running statistics included.
fn sync_bn_matches_one_process(comm: &'static dyn Comm, method: MethodName, hpff: bool) {
    let (n, local) = (comm.size(), 4);
    let (setup, plan) = small_plan(method, hpff, local);
    let (_, whole) = small_plan(method, hpff, local * n);
    let what = format!("--sync-bn {method:?}{} at -np {n}", if hpff { "+HPFF" } else { "" });
    let init = Snapshot::init(&plan, &mut Rng::new(13));
    let mut job = CpuExecutor::new(&plan, 1).with_comm(Some(comm)).with_sync_bn(true);
    let mut one = CpuExecutor::new(&whole, 1);
    init.upload(&mut job).unwrap();
    init.upload(&mut one).unwrap();
    let mut rng = Rng::new(21);
    let mut losses = vec![0f32; plan.loss_slots()];
    let mut whole_losses = vec![0f32; whole.loss_slots()];
    let img = plan.input().len / local;
    for _ in 0..3 {
        let x: Vec<f32> = (0..img * local * n).map(|_| rng.normal() as f32).collect();
        let y: Vec<u32> = (0..local * n).map(|_| rng.below(4) as u32).collect();
        let rows: Vec<usize> = (0..local).map(|i| comm.rank() + i * n).collect();
        let mx: Vec<f32> = rows.iter().flat_map(|&i| x[i * img..(i + 1) * img].to_vec()).collect();
        let my: Vec<u32> = rows.iter().map(|&i| y[i]).collect();
        job.train_step(&plan, &StepInput { x: &mx, labels: &my, lr: 0.05, sgd: setup.sgd }, &mut losses).unwrap();
        one.train_step(&whole, &StepInput { x: &x, labels: &y, lr: 0.05, sgd: setup.sgd }, &mut whole_losses).unwrap();
    }
    for (region, len, name) in [
        (Region::Params, plan.params, "parameters"),
        (Region::Momentum, plan.params, "momentum"),
        (Region::BnState, plan.state, "BN running statistics"),
    ] {
        let (mut a, mut b) = (vec![0f32; len], vec![0f32; len]);
        job.download(region, 0, &mut a).unwrap();
        one.download(region, 0, &mut b).unwrap();
        let worst = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{what}: the {name} after 3 steps differ from one process's by up to {worst:e}");
    }
}

// ---------------------------------------------------------------- around the MPI job

fn a_panicking_rank_ends_the_job() {
    let t0 = Instant::now();
    let o = wait(mpirun(3, &std::env::current_exe().unwrap(), &[]).env(MODE, "panic"), 60);
    let secs = t0.elapsed().as_secs_f64();
    assert!(!o.status.success(), "a job with a panicking rank must fail:\n{}", text(&o));
    assert!(text(&o).contains("a deliberate panic on rank 1"), "{}", text(&o));
    assert!(secs < 30.0, "the job took {secs:.1} s to end after a panic");
    println!("dist: a panicking rank ends the job in {secs:.1} s");
}

fn a_stuck_rank_ends_the_job() {
    let t0 = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let o = wait(mpirun(2, &exe, &[]).env(MODE, "stuck").env("HPFF_MPI_TIMEOUT", "3"), 60);
    let secs = t0.elapsed().as_secs_f64();
    assert!(!o.status.success(), "a job with a stuck rank must fail:\n{}", text(&o));
    assert!(text(&o).contains("one is stuck or unreachable"), "{}", text(&o));
    assert!(secs < 30.0, "the job took {secs:.1} s to end with a 3 s limit");
    println!("dist: a stuck rank ends the job in {secs:.1} s (HPFF_MPI_TIMEOUT=3)");
}

fn hpff() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hpff"))
}

/// `hpff train` on the image folder at `data` into `out`.
fn train_args(data: &Path, out: &Path, batch: usize, epochs: usize) -> Vec<String> {
    let mut v: Vec<String> =
        ["train", "--dataset", "folder", "--arch", "resnet8", "--width", "4", "--k", "2"].map(String::from).to_vec();
    v.extend(["--data-dir".into(), data.display().to_string(), "--out".into(), out.display().to_string()]);
    v.extend(["--batch-size".into(), batch.to_string(), "--epochs".into(), epochs.to_string()]);
    v.extend(["--threads", "1", "-q"].map(String::from));
    v
}

fn hpff_job(np: usize, args: &[String]) -> Command {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    mpirun(np, &hpff(), &a)
}

/// The checkpoint's tensor bytes.
fn tensors(run: &Path) -> Vec<u8> {
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("checkpoint.json")).unwrap()).unwrap();
    std::fs::read(run.join(j["tensors"]["file"].as_str().unwrap())).unwrap()
}

fn cli_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    support::folder(&data, 4, 10, 16);
    // Two runs at one world size end bit for bit alike; one process writes.
    for np in [2, 3] {
        let runs: Vec<PathBuf> = (0..2).map(|i| tmp.path().join(format!("np{np}-{i}"))).collect();
        for r in &runs {
            let o = wait(&mut hpff_job(np, &train_args(&data, r, 6, 2)), 300);
            assert!(o.status.success(), "mpirun -np {np} hpff train failed:\n{}", text(&o));
        }
        assert!(tensors(&runs[0]) == tensors(&runs[1]), "two -np {np} runs end with different checkpoints");
        let m = std::fs::read_to_string(runs[0].join("metrics.jsonl")).unwrap();
        assert_eq!(m.lines().count(), 2, "one writer: one metrics line per epoch\n{m}");
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(runs[0].join("summary.json")).unwrap()).unwrap();
        assert!(s.to_string().contains("\"test_accuracy\""), "{s}");
    }
    println!("dist: mpirun -np 2 and -np 3 hpff train rerun bit for bit");

    // Stopped after epoch 1 and resumed at the same process count: the straight run's end.
    let r = tmp.path().join("resumed");
    let mut a = train_args(&data, &r, 6, 2);
    a.extend(["--stop-after".into(), "1".into()]);
    let o = wait(&mut hpff_job(2, &a), 300);
    assert!(o.status.success(), "{}", text(&o));
    let resume = ["train".into(), "--resume".into(), r.display().to_string(), "-q".into()];
    let o = wait(&mut hpff_job(2, &resume), 300);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        tensors(&r) == tensors(&tmp.path().join("np2-0")),
        "a resumed -np 2 run ends elsewhere than a straight one"
    );
    println!("dist: a resumed -np 2 run ends bit for bit where a straight one does");
    // Resumed at another process count: it runs (each global batch still holds the same
    // images; only the per-process BN batches change).
    let r3 = tmp.path().join("resumed-at-3");
    let mut a = train_args(&data, &r3, 6, 2);
    a.extend(["--stop-after".into(), "1".into()]);
    assert!(wait(&mut hpff_job(2, &a), 300).status.success());
    let o = wait(&mut hpff_job(3, &["train".into(), "--resume".into(), r3.display().to_string(), "-q".into()]), 300);
    assert!(o.status.success(), "resuming a -np 2 run at -np 3: {}", text(&o));
    let m = std::fs::read_to_string(r3.join("metrics.jsonl")).unwrap();
    assert_eq!(m.lines().count(), 2, "{m}");
    println!("dist: a -np 2 run resumes at -np 3");

    let bad = |np: usize, args: Vec<String>, want: &str| {
        let o = wait(&mut hpff_job(np, &args), 60);
        let t = text(&o);
        assert!(!o.status.success() && t.contains(want), "expected an error with {want:?}:\n{t}");
        assert!(!t.contains("panicked"), "{t}");
    };
    let out = tmp.path().join("bad");
    bad(3, train_args(&data, &out, 8, 1), "must divide evenly over the 3 processes");
    bad(3, train_args(&data, &out, 2, 1), "smaller than the 3 processes");
    // Ranks that disagree (MPMD: rank 1 gets another learning rate).
    let mut a = train_args(&data, &out, 6, 1);
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "1"]).arg(hpff()).args(&a).arg(":");
    a.extend(["--lr".into(), "0.3".into()]);
    c.args(["-np", "1"]).arg(hpff()).args(&a);
    c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none").stdout(Stdio::piped()).stderr(Stdio::piped());
    let o = wait(&mut c, 60);
    assert!(!o.status.success() && text(&o).contains("rank 1 has another"), "{}", text(&o));
    println!("dist: bad batch sizes and mismatched ranks are one-line errors");

    bench_reports_the_whole_job();
    a_killed_rank_ends_the_job(&data, &tmp.path().join("killed"), &[]);
    pipeline_checks(&data, tmp.path());
}

/// `--pipeline` at -np 2 and 3 ends with one process's checkpoint, bit for bit, for every
/// local method; resumes where a straight run ends; refuses bad splits; a killed stage
/// ends the job.
fn pipeline_checks(data: &Path, tmp: &Path) {
    let methods: [&[&str]; 4] =
        [&["--method", "greedy"], &["--method", "dgl"], &["--method", "infopro"], &["--method", "infopro", "--hpff"]];
    let args = |out: &Path, m: &[&str], epochs: usize| {
        let mut a = with_k(train_args(data, out, 6, epochs), 3);
        a.extend(m.iter().map(|s| s.to_string()));
        a.push("--pipeline".into());
        a
    };
    for m in methods {
        let one = tmp.join(format!("pipe{}-1", m.join("")));
        let o = wait(Command::new(hpff()).args(args(&one, m, 2)), 300);
        assert!(
            o.status.success(),
            "one process {m:?}:
{}",
            text(&o)
        );
        for np in [2, 3] {
            let r = tmp.join(format!("pipe{}-{np}", m.join("")));
            let o = wait(&mut hpff_job(np, &args(&r, m, 2)), 300);
            assert!(
                o.status.success(),
                "mpirun -np {np} hpff train --pipeline {m:?}:
{}",
                text(&o)
            );
            assert!(tensors(&r) == tensors(&one), "--pipeline at -np {np} {m:?} ends elsewhere than one process");
            let acc = |r: &Path| std::fs::read_to_string(r.join("summary.json")).unwrap().contains("test_accuracy");
            assert!(acc(&r), "a summary with the test accuracy");
        }
    }
    println!("dist: --pipeline at -np 2 and 3 ends with one process's checkpoint, bit for bit (greedy, DGL, InfoPro, InfoPro+HPFF)");
    // Micro-batches (4 of 6 images' batches, so partial ones too): as one process cutting alike.
    let micro: &[&str] = &["--method", "infopro", "--hpff", "--micro-batches", "2"];
    let one = tmp.join("pipe-micro-1");
    let o = wait(Command::new(hpff()).args(args(&one, micro, 2)), 300);
    assert!(o.status.success(), "one process {micro:?}:\n{}", text(&o));
    let r = tmp.join("pipe-micro-3");
    let o = wait(&mut hpff_job(3, &args(&r, micro, 2)), 300);
    assert!(o.status.success(), "mpirun -np 3 {micro:?}:\n{}", text(&o));
    assert!(tensors(&r) == tensors(&one), "--micro-batches 2 at -np 3 ends elsewhere than one process");
    println!("dist: --pipeline --micro-batches 2 at -np 3 ends with one process's checkpoint, bit for bit");
    let hp: &[&str] = &["--method", "infopro", "--hpff"];
    let r = tmp.join("pipe-resumed");
    let mut a = args(&r, hp, 2);
    a.extend(["--stop-after".into(), "1".into()]);
    assert!(wait(&mut hpff_job(2, &a), 300).status.success());
    let o = wait(&mut hpff_job(2, &["train".into(), "--resume".into(), r.display().to_string(), "-q".into()]), 300);
    assert!(o.status.success(), "{}", text(&o));
    assert!(tensors(&r) == tensors(&tmp.join(format!("pipe{}-1", hp.join("")))), "a resumed pipeline ends elsewhere");
    println!("dist: a resumed --pipeline run ends bit for bit where one process does");
    let bad = |np: usize, extra: &[&str], want: &str| {
        let mut a = args(&tmp.join("pipe-bad"), hp, 1);
        a.extend(extra.iter().map(|s| s.to_string()));
        let o = wait(&mut hpff_job(np, &a), 60);
        let t = text(&o);
        assert!(
            !o.status.success() && t.contains(want),
            "expected an error with {want:?}:
{t}"
        );
        assert!(!t.contains("panicked"), "{t}");
    };
    bad(2, &["--stages", "1,1"], "add up to the plan's 3 modules");
    bad(4, &[], "needs at least 4 modules");
    bad(2, &["--on-nonfinite", "skip"], "with --pipeline a NaN or infinity stops the run");
    bad(2, &["--micro-batches", "4"], "--micro-batches 4 must divide --batch-size 6");
    // e2e is one module: without --k, which hpff refuses for it.
    let mut e2e = args(&tmp.join("pipe-e2e"), &["--method", "e2e"], 1);
    let at = e2e.iter().position(|a| a == "--k").expect("train_args sets --k");
    e2e.drain(at..at + 2);
    let o = wait(&mut hpff_job(2, &e2e), 60);
    assert!(!o.status.success() && text(&o).contains("--pipeline needs a local method"), "{}", text(&o));
    println!("dist: bad pipeline splits are one-line errors");
    a_killed_rank_ends_the_job(data, &tmp.join("pipe-killed"), &["--pipeline"]);
}

/// `args` with `--k k`.
fn with_k(mut args: Vec<String>, k: usize) -> Vec<String> {
    let at = args.iter().position(|x| x == "--k").expect("train_args sets --k");
    args[at + 1] = k.to_string();
    args
}

/// `hpff bench --json` under mpirun: one JSON object (rank 0's) for the whole job.
fn bench_reports_the_whole_job() {
    let args: Vec<String> = "bench --arch resnet8 --k 3 --batch-size 8 --steps 2 --warmup 1 --threads 1 --json"
        .split(' ')
        .map(String::from)
        .collect();
    let o = wait(&mut hpff_job(2, &args), 120);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one report from rank 0:\n{out}");
    let j: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(j["processes"], 2, "{j}");
    let share = j["allreduce_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "all-reduce share {share}");
    let hidden = j["allreduce_overlapped"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&hidden), "overlapped share {hidden}");
    println!(
        "dist: hpff bench under mpirun reports the job (all-reduce {:.1}% of a step, {:.0}% of the sums overlapped)",
        100.0 * share,
        100.0 * hidden
    );
}

/// kill -9 of one rank in the middle of training ends the job within 30 s, non-zero, and
/// the last checkpoint loads.
fn a_killed_rank_ends_the_job(data: &Path, out: &Path, extra: &[&str]) {
    let mut a = train_args(data, out, 2, 200);
    a.extend(extra.iter().map(|s| s.to_string()));
    let mut job: Child = hpff_job(2, &a).spawn().unwrap();
    let t0 = Instant::now();
    while !out.join("checkpoint.json").exists() {
        assert!(job.try_wait().unwrap().is_none(), "the job ended before its first checkpoint");
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ranks = children(job.id());
    assert_eq!(ranks.len(), 2, "the two ranks of mpirun {}: {ranks:?}", job.id());
    // SAFETY: signalling a process this test started (through mpirun).
    unsafe { libc::kill(ranks[1], libc::SIGKILL) };
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        if t1.elapsed() > Duration::from_secs(30) {
            let _ = job.kill();
            panic!("the job still runs 30 s after one of its ranks was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = t1.elapsed().as_secs_f64();
    assert!(!status.success(), "a job with a killed rank must fail");
    let o =
        Command::new(hpff()).args(["eval", "--checkpoint"]).arg(out).args(["--data-dir"]).arg(data).output().unwrap();
    assert!(o.status.success(), "the last checkpoint must load:\n{}", text(&o));
    println!("dist: a killed rank {extra:?} ends the job in {secs:.1} s; the last checkpoint loads");
}

/// The processes whose parent is `pid` (mpirun's ranks on this machine).
fn children(pid: u32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid …; comm may hold spaces, so read after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) && stat.contains("(hpff)") {
            v.push(e.file_name().to_string_lossy().parse().unwrap());
        }
    }
    v.sort();
    v
}
