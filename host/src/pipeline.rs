//! Module-parallel training (`--pipeline`): the K modules cut into W contiguous stages, one per process.
//!
//! Local learning's modules are gradient-isolated, so stage s trains its modules on step
//! t+1 while stage s+1 still trains on step t: activations flow up, each stage runs its
//! own backward and updates ([`hpff_core::plan::Plan::stage`]). Every rank reads the
//! step's images and labels itself, in the same seeded order (the decoders' targets and
//! the heads' labels are needed on every stage); only activations, and under HPFF the
//! cascade gradient at each stage boundary, cross between processes. A module sees
//! exactly the values it sees in one process, so the parameters are the same bits.

use std::ops::Range;
use std::time::Instant;

use hpff_core::exec::{Executor, StepInput};
use hpff_core::plan::Plan;

use crate::config::BalanceName;
use crate::cpu::CpuExecutor;
use crate::device::Snapshot;
use crate::dist::{Comm, StageLink};
use crate::error::{Error, Result};
use crate::metrics::plan_flops;

/// Which modules each stage (rank) trains.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    pub stages: Vec<Range<usize>>,
    /// Seconds of one training step of each module alone, when the split was balanced by
    /// measuring them (`--balance time`); empty otherwise.
    pub module_secs: Vec<f64>,
}

impl Pipeline {
    /// `plan`'s modules over the processes of `comm`, one stage each: `by_hand` modules
    /// per stage, bottom up, or, when empty, the split whose costliest stage is cheapest,
    /// by `balance` (measuring runs `threads` threads, on every rank: it is collective).
    pub fn for_job(
        plan: &Plan,
        comm: &dyn Comm,
        by_hand: &[usize],
        balance: BalanceName,
        threads: usize,
    ) -> Result<Pipeline> {
        let workers = comm.size();
        match balance {
            BalanceName::Time if by_hand.is_empty() && workers > 1 && plan.modules() >= workers => {
                let secs = measure(plan, comm, threads)?;
                Ok(Pipeline { stages: balanced(&secs, workers), module_secs: secs })
            }
            _ => Pipeline::split(plan, workers, by_hand),
        }
    }

    /// `plan`'s modules over `workers` stages: `by_hand` modules per stage, bottom up, or,
    /// when empty, the split whose costliest stage (training FLOPs of a step) is cheapest.
    pub fn split(plan: &Plan, workers: usize, by_hand: &[usize]) -> Result<Pipeline> {
        let k = plan.modules();
        if plan.method.base == hpff_core::method::Base::E2e {
            return Err(Error::msg(
                "--pipeline needs a local method: e2e trains one module end to end, so nothing is gradient-isolated to run on its own process; use greedy, dgl or infopro, or data parallelism (mpirun without --pipeline)",
            ));
        }
        if workers < 2 {
            return Err(Error::msg("--pipeline needs two or more processes (mpirun -np W)"));
        }
        if k < workers {
            return Err(Error::msg(format!(
                "--pipeline over {workers} processes needs at least {workers} modules; this plan has {k} (raise --k)"
            )));
        }
        if by_hand.is_empty() {
            let flops: Vec<f64> = module_costs(plan)?.into_iter().map(|f| f as f64).collect();
            return Ok(Pipeline { stages: balanced(&flops, workers), module_secs: Vec::new() });
        }
        if by_hand.len() != workers || by_hand.contains(&0) || by_hand.iter().sum::<usize>() != k {
            return Err(Error::msg(format!(
                "--stages {}: give {workers} positive module counts (one per process) that add up to the plan's {k} modules",
                by_hand.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
            )));
        }
        let mut first = 0;
        let stages = by_hand
            .iter()
            .map(|&n| {
                first += n;
                first - n..first
            })
            .collect();
        Ok(Pipeline { stages, module_secs: Vec::new() })
    }

    /// What the measured module times predict: the whole step's time over the slowest
    /// stage's (the speed-up over one process if the stages never waited), or `None`
    /// without measurements.
    pub fn predicted_speedup(&self) -> Option<f64> {
        if self.module_secs.is_empty() {
            return None;
        }
        let stage = |r: &Range<usize>| self.module_secs[r.clone()].iter().sum::<f64>();
        let slowest = self.stages.iter().map(stage).fold(0.0, f64::max);
        Some(self.module_secs.iter().sum::<f64>() / slowest)
    }

    /// The plan of stage `s`.
    pub fn stage_plan(&self, plan: &Plan, s: usize) -> Result<Plan> {
        Ok(plan.stage(self.stages[s].clone())?)
    }

    /// One line per stage: its modules, training FLOPs per step and arena.
    pub fn describe(&self, plan: &Plan) -> Result<Vec<String>> {
        self.stages
            .iter()
            .enumerate()
            .map(|(s, r)| {
                let st = plan.stage(r.clone())?;
                let (f, _) = plan_flops(&st);
                Ok(format!(
                    "stage {s} (rank {s}): modules {}..={} ({} of {}), {:.2} GFLOP per step, arena {}",
                    r.start,
                    r.end - 1,
                    r.len(),
                    plan.modules(),
                    f as f64 / 1e9,
                    crate::resources::fmt_mib(Some(st.memory().total() as u64)),
                ))
            })
            .collect()
    }

    /// Stage `s`'s part of the whole model `full` (laid out by `plan`).
    pub fn restrict(&self, plan: &Plan, s: usize, full: &Snapshot) -> Result<Snapshot> {
        let st = self.stage_plan(plan, s)?.stage;
        let take = |v: &[f32], span: hpff_core::plan::Buf| v[span.off..span.end()].to_vec();
        Ok(Snapshot {
            params: take(&full.params, st.params),
            state: take(&full.state, st.state),
            momentum: take(&full.momentum, st.params),
        })
    }

    /// The whole model on rank 0 (`None` elsewhere): every stage sends its part, `mine`.
    pub fn gather(&self, plan: &Plan, comm: &dyn Comm, mine: &Snapshot) -> Result<Option<Snapshot>> {
        if comm.rank() != 0 {
            for v in [&mine.params, &mine.state, &mine.momentum] {
                comm.send_f32(0, v);
            }
            return Ok(None);
        }
        let mut full = Snapshot::zeros(plan);
        for s in 0..self.stages.len() {
            let st = self.stage_plan(plan, s)?.stage;
            let part = if s == 0 {
                mine.clone()
            } else {
                let mut p = Snapshot::zeros(&self.stage_plan(plan, s)?);
                for v in [&mut p.params, &mut p.state, &mut p.momentum] {
                    comm.recv_f32(s, v);
                }
                p
            };
            place(&mut full.params, st.params, &part.params);
            place(&mut full.state, st.state, &part.state);
            place(&mut full.momentum, st.params, &part.momentum);
        }
        Ok(Some(full))
    }
}

/// Copies a stage's `part` into the span of the whole model's `v` it came from.
fn place(v: &mut [f32], span: hpff_core::plan::Buf, part: &[f32]) {
    v[span.off..span.end()].copy_from_slice(part);
}

/// Training FLOPs of one step of each module alone (its aux nets and, under HPFF, its
/// share of the cascade included).
fn module_costs(plan: &Plan) -> Result<Vec<u64>> {
    (0..plan.modules()).map(|j| Ok(plan_flops(&plan.stage(j..j + 1)?).0)).collect()
}

/// Seconds of one training step of each module of `plan` alone on this machine: module j
/// is timed by rank j mod N (the faster of two steps, after one that touches its
/// memory), then the times are summed over the ranks, so every rank holds the same list.
fn measure(plan: &Plan, comm: &dyn Comm, threads: usize) -> Result<Vec<f64>> {
    let k = plan.modules();
    let mut secs = vec![0f64; k];
    let x = vec![0.5f32; plan.input().len];
    let labels: Vec<u32> = (0..plan.batch).map(|i| (i % plan.arch.classes) as u32).collect();
    let input = StepInput { x: &x, labels: &labels, lr: 0.0, sgd: Default::default() };
    for j in (comm.rank()..k).step_by(comm.size()) {
        let st = plan.stage(j..j + 1)?;
        let mut ex = CpuExecutor::new(&st, threads).with_link(Some(StageLink { comm: &DETACHED }));
        let mut losses = vec![0f32; st.loss_slots()];
        ex.train_step(&st, &input, &mut losses)?;
        secs[j] = f64::INFINITY;
        for _ in 0..2 {
            let t = Instant::now();
            ex.train_step(&st, &input, &mut losses)?;
            secs[j] = secs[j].min(t.elapsed().as_secs_f64());
        }
    }
    comm.sum_f64(&mut secs);
    Ok(secs)
}

/// A stage timed alone ([`measure`]): what it sends goes nowhere and what it receives is
/// zeros. It poses as the middle rank of three, so it has both neighbours.
#[derive(Debug)]
struct Detached;

static DETACHED: Detached = Detached;

impl Comm for Detached {
    fn rank(&self) -> usize {
        1
    }
    fn size(&self) -> usize {
        3
    }
    fn sum_f32(&self, _: &mut [f32]) {
        unreachable!("a stage timed alone only sends and receives")
    }
    fn sum_f64(&self, _: &mut [f64]) {
        unreachable!("a stage timed alone only sends and receives")
    }
    fn broadcast_f32(&self, _: &mut [f32]) {
        unreachable!("a stage timed alone only sends and receives")
    }
    fn gather_bytes(&self, _: &[u8]) -> Vec<u8> {
        unreachable!("a stage timed alone only sends and receives")
    }
    fn send_f32(&self, _: usize, _: &[f32]) {}
    fn recv_f32(&self, _: usize, buf: &mut [f32]) {
        buf.fill(0.0);
    }
    fn reduce_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn finish(&self) {}
}

/// The contiguous split of `costs` into `parts` ranges whose largest sum is smallest
/// (the earliest such split: ties keep more modules in the lower stages).
fn balanced(costs: &[f64], parts: usize) -> Vec<Range<usize>> {
    let k = costs.len();
    let sum = |a: usize, b: usize| costs[a..b].iter().sum::<f64>();
    // best[p][i]: the smallest largest sum of the first i modules in p + 1 parts; cut[p][i]
    // where its last part starts.
    let mut best = vec![vec![f64::INFINITY; k + 1]; parts];
    let mut cut = vec![vec![0usize; k + 1]; parts];
    for i in 1..=k {
        best[0][i] = sum(0, i);
    }
    for p in 1..parts {
        for i in p + 1..=k {
            for c in p..i {
                let v = best[p - 1][c].max(sum(c, i));
                if v < best[p][i] {
                    (best[p][i], cut[p][i]) = (v, c);
                }
            }
        }
    }
    let mut ends = vec![k];
    let mut i = k;
    for p in (1..parts).rev() {
        i = cut[p][i];
        ends.push(i);
    }
    ends.push(0);
    ends.reverse();
    ends.windows(2).map(|w| w[0]..w[1]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuExecutor;
    use hpff_core::arch::Arch;
    use hpff_core::exec::{Executor, Region, StepInput};
    use hpff_core::method::{Base, Levels, Method};
    use hpff_core::optim::Sgd;
    use hpff_core::partition::Partition;
    use hpff_core::rng::Rng;
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::Mutex;

    /// Ranks as threads of one process, joined by channels: what a pipeline stage needs of
    /// a communicator (point-to-point messages in order), without MPI.
    #[derive(Debug)]
    struct Threads {
        rank: usize,
        size: usize,
        to: Vec<Mutex<Sender<Vec<f32>>>>,
        from: Vec<Mutex<Receiver<Vec<f32>>>>,
    }

    fn threads(size: usize) -> Vec<&'static Threads> {
        let mut tx: Vec<Vec<Option<Sender<Vec<f32>>>>> = (0..size).map(|_| (0..size).map(|_| None).collect()).collect();
        let mut rx: Vec<Vec<Option<Receiver<Vec<f32>>>>> =
            (0..size).map(|_| (0..size).map(|_| None).collect()).collect();
        for a in 0..size {
            for b in 0..size {
                let (t, r) = channel();
                tx[a][b] = Some(t);
                rx[b][a] = Some(r);
            }
        }
        fn take<T>(v: &mut [Option<T>]) -> Vec<Mutex<T>> {
            v.iter_mut().map(|x| Mutex::new(x.take().expect("once"))).collect()
        }
        (0..size)
            .map(|rank| {
                let t = Threads { rank, size, to: take(&mut tx[rank]), from: take(&mut rx[rank]) };
                &*Box::leak(Box::new(t))
            })
            .collect()
    }

    impl Comm for Threads {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn sum_f32(&self, _: &mut [f32]) {
            unreachable!("a stage's executor only sends and receives")
        }
        fn sum_f64(&self, _: &mut [f64]) {
            unreachable!("a stage's executor only sends and receives")
        }
        fn broadcast_f32(&self, _: &mut [f32]) {
            unreachable!("a stage's executor only sends and receives")
        }
        fn gather_bytes(&self, _: &[u8]) -> Vec<u8> {
            unreachable!("a stage's executor only sends and receives")
        }
        fn send_f32(&self, to: usize, buf: &[f32]) {
            self.to[to].lock().unwrap().send(buf.to_vec()).expect("the other stage is alive");
        }
        fn recv_f32(&self, from: usize, buf: &mut [f32]) {
            let v = self.from[from].lock().unwrap().recv().expect("the other stage is alive");
            assert_eq!(v.len(), buf.len(), "message length from rank {from}");
            buf.copy_from_slice(&v);
        }
        fn reduce_time(&self) -> std::time::Duration {
            std::time::Duration::ZERO
        }
        fn abort(&self, code: i32) -> ! {
            panic!("abort({code})")
        }
        fn finish(&self) {}
    }

    /// `steps` training steps (each of `micro` micro-batches of `plan`'s batch) and one
    /// eval pass of `plan` on seeded data: every stage's final parameters, momentum and BN
    /// statistics (the whole model's, gathered), its loss records, and the logits.
    fn run(plan: &Plan, pipe: Option<&Pipeline>, steps: usize, micro: usize) -> (Snapshot, Vec<Vec<f32>>, Vec<f32>) {
        let model = Snapshot::init(plan, &mut Rng::new(7));
        let mut rng = Rng::new(11);
        let batches: Vec<(Vec<f32>, Vec<u32>)> = (0..steps * micro + 1)
            .map(|_| {
                let x = (0..plan.input().len).map(|_| rng.normal() as f32).collect();
                let y = (0..plan.batch).map(|_| rng.below(plan.arch.classes as u64) as u32).collect();
                (x, y)
            })
            .collect();
        let sgd = Sgd::default();
        let stage_run = |st: &Plan, link: Option<StageLink>, part: Snapshot| {
            let mut ex = CpuExecutor::new(st, 1).with_link(link);
            part.upload(&mut ex).unwrap();
            let mut records = Vec::new();
            for (i, (x, y)) in batches[..steps * micro].iter().enumerate() {
                let mut losses = vec![0f32; st.loss_slots()];
                let p = st.micro_batch(i % micro, micro, micro * st.batch);
                ex.train_step(&p, &StepInput { x, labels: y, lr: 0.05, sgd }, &mut losses).unwrap();
                records.push(losses);
            }
            let mut logits = vec![0f32; st.logits().len];
            ex.eval_step(st, &batches[steps].0, &mut logits).unwrap();
            let mut grads = vec![0f32; st.params];
            ex.download(Region::Grads, 0, &mut grads).unwrap();
            (Snapshot::download(&mut ex).unwrap(), records, logits)
        };
        let Some(p) = pipe else { return stage_run(plan, None, model) };
        let comms = threads(p.stages.len());
        let outs: Vec<_> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..p.stages.len())
                .map(|s| {
                    let st = p.stage_plan(plan, s).unwrap();
                    let part = p.restrict(plan, s, &model).unwrap();
                    let link = StageLink { comm: comms[s] };
                    sc.spawn(move || stage_run(&st, Some(link), part))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut whole = Snapshot::zeros(plan);
        let mut records = vec![vec![0f32; plan.loss_slots()]; steps * micro];
        for (s, (part, recs, _)) in outs.iter().enumerate() {
            let st = p.stage_plan(plan, s).unwrap().stage;
            place(&mut whole.params, st.params, &part.params);
            place(&mut whole.state, st.state, &part.state);
            place(&mut whole.momentum, st.params, &part.momentum);
            for (all, r) in records.iter_mut().zip(recs) {
                all.iter_mut().zip(r).for_each(|(a, b)| *a += b);
            }
        }
        (whole, records, outs.last().unwrap().2.clone())
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A pipeline trains every local method to the same bits as one process: parameters,
    /// momentum, BN statistics, every loss, and the logits of an eval pass.
    #[test]
    fn a_pipeline_gives_the_bits_of_one_process() {
        let arch = Arch::resnet(20, 3, 16, 10).unwrap();
        let part = Partition::even(&arch, 5).unwrap();
        let hpff = |levels, recompute| Method { levels, recompute, ..Method::reference(Base::InfoPro, true) };
        let methods = [
            Method::reference(Base::Greedy, false),
            Method::reference(Base::Dgl, false),
            Method::reference(Base::InfoPro, false),
            hpff(Levels::Both, false),
            hpff(Levels::Both, true),
            hpff(Levels::Cascade, false),
            hpff(Levels::Independent, false),
        ];
        for method in methods {
            let plan = Plan::new(arch, part.clone(), method, 4, [0.5; 4], [0.25; 4]).unwrap();
            let (one, one_losses, one_logits) = run(&plan, None, 3, 1);
            for split in [&[1, 4][..], &[2, 1, 2], &[1, 1, 1, 1, 1]] {
                let p = Pipeline::split(&plan, split.len(), split).unwrap();
                let (many, losses, logits) = run(&plan, Some(&p), 3, 1);
                let what = format!("{:?} hpff={} {:?} split {split:?}", method.base, method.hpff, method.levels);
                assert!(bits(&many.params) == bits(&one.params), "{what}: parameters differ");
                assert!(bits(&many.momentum) == bits(&one.momentum), "{what}: momentum differs");
                assert!(bits(&many.state) == bits(&one.state), "{what}: BN statistics differ");
                for (a, b) in losses.iter().zip(&one_losses) {
                    assert_eq!(bits(a), bits(b), "{what}: losses differ");
                }
                assert!(bits(&logits) == bits(&one_logits), "{what}: logits differ");
            }
        }
    }

    /// Micro-batches: a pipeline gives the bits of one process cutting its steps alike,
    /// and a step of micro-batches differs from a step of the whole batch (BatchNorm).
    #[test]
    fn micro_batches_in_a_pipeline_give_the_bits_of_one_process() {
        let arch = Arch::resnet(20, 3, 16, 10).unwrap();
        let part = Partition::even(&arch, 3).unwrap();
        for method in [Method::reference(Base::Dgl, false), Method::reference(Base::InfoPro, true)] {
            let plan = Plan::new(arch, part.clone(), method, 2, [0.5; 4], [0.25; 4]).unwrap();
            let (one, one_losses, _) = run(&plan, None, 2, 3);
            let p = Pipeline::split(&plan, 2, &[1, 2]).unwrap();
            let (many, losses, _) = run(&plan, Some(&p), 2, 3);
            assert!(bits(&many.params) == bits(&one.params), "{method:?}: parameters differ");
            assert!(bits(&many.momentum) == bits(&one.momentum), "{method:?}: momentum differs");
            assert!(bits(&many.state) == bits(&one.state), "{method:?}: BN statistics differ");
            assert!(losses.iter().zip(&one_losses).all(|(a, b)| bits(a) == bits(b)), "{method:?}: losses differ");
            let (whole, _, _) =
                run(&Plan::new(arch, part.clone(), method, 6, [0.5; 4], [0.25; 4]).unwrap(), None, 2, 1);
            assert!(bits(&whole.params) != bits(&one.params), "micro-batches changed nothing");
        }
    }

    #[test]
    fn a_split_by_hand_must_cover_the_modules() {
        let arch = Arch::resnet(20, 3, 16, 10).unwrap();
        let plan = Plan::new(
            arch,
            Partition::even(&arch, 4).unwrap(),
            Method::reference(Base::Dgl, false),
            2,
            [0.0; 4],
            [1.0; 4],
        )
        .unwrap();
        for bad in [&[1, 2][..], &[2, 2, 0], &[4], &[1, 1, 1]] {
            assert!(Pipeline::split(&plan, 3, bad).is_err(), "{bad:?}");
        }
        assert!(Pipeline::split(&plan, 1, &[]).is_err(), "one process");
        assert!(Pipeline::split(&plan, 5, &[]).is_err(), "more processes than modules");
        assert_eq!(Pipeline::split(&plan, 3, &[1, 2, 1]).unwrap().stages, vec![0..1, 1..3, 3..4]);
        assert_eq!(Pipeline::split(&plan, 4, &[]).unwrap().stages.len(), 4);
    }

    #[test]
    fn the_balanced_split_minimises_the_costliest_stage() {
        assert_eq!(balanced(&[1.0, 1.0, 1.0, 1.0], 2), vec![0..2, 2..4]);
        assert_eq!(balanced(&[5.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2), vec![0..1, 1..6]);
        assert_eq!(balanced(&[4.0, 4.0, 1.0, 1.0, 1.0, 1.0], 3), vec![0..1, 1..2, 2..6]);
        assert_eq!(balanced(&[3.0, 3.0, 3.0], 3), vec![0..1, 1..2, 2..3]);
        // Brute force over every 3-way split of 7 modules.
        let costs = [7.0, 2.0, 9.0, 4.0, 4.0, 1.0, 8.0];
        let got = balanced(&costs, 3);
        let worst = |r: &[Range<usize>]| r.iter().map(|r| costs[r.clone()].iter().sum::<f64>()).fold(0.0, f64::max);
        let mut best = f64::INFINITY;
        for a in 1..6 {
            for b in a + 1..7 {
                best = best.min(worst(&[0..a, a..b, b..7]));
            }
        }
        assert_eq!(worst(&got), best);
    }
}
