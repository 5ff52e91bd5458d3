//! The dispatcher hands every op of a step to a backend exactly once, in the schedule's
//! order, and recognises the fusable runs only where their buffers chain.

use hpff_core::arch::Arch;
use hpff_core::exec::{dispatch, run_unfused, Backend, Epilogue, Run};
use hpff_core::method::{Base, Method, Precision};
use hpff_core::partition::{Partition, TableKind};
use hpff_core::plan::{op, Op, Plan};
use std::convert::Infallible;

/// Records the calls a backend gets: `(index told by begin_op, op)` per unfused call
/// and every run, fused (`fuse`) or left to the default.
struct Recorder {
    fuse: bool,
    told: Option<usize>,
    calls: Vec<(usize, Op)>,
    runs: Vec<(usize, Run)>,
    /// `(calls made before it, module)` per [`Backend::module_done`].
    done: Vec<(usize, usize)>,
}

impl Recorder {
    fn new(fuse: bool) -> Recorder {
        Recorder { fuse, told: None, calls: Vec::new(), runs: Vec::new(), done: Vec::new() }
    }

    fn call(&mut self, op: Op) -> Result<(), Infallible> {
        let index = self.told.take().expect("begin_op before every unfused op");
        self.calls.push((index, op));
        Ok(())
    }
}

macro_rules! record {
    ($($method:ident: $variant:ident),* $(,)?) => {
        $(fn $method(&mut self, a: &op::$variant) -> Result<(), Infallible> {
            self.call(Op::$variant(*a))
        })*
    };
}

impl Backend for Recorder {
    type Error = Infallible;

    fn begin_op(&mut self, index: usize, _: &Op) {
        assert!(self.told.is_none(), "begin_op twice before an op");
        self.told = Some(index);
    }

    fn run(&mut self, index: usize, run: &Run) -> Result<(), Infallible> {
        self.runs.push((index, *run));
        if self.fuse {
            let (ops, len) = run.ops();
            self.calls.extend(ops[..len].iter().enumerate().map(|(i, op)| (index + i, *op)));
            return Ok(());
        }
        run_unfused(self, index, run)
    }

    fn begin_step(&mut self) -> Result<(), Infallible> {
        self.call(Op::BeginStep)
    }

    fn module_done(&mut self, a: &op::Sgd) -> Result<(), Infallible> {
        assert!(self.told.is_some(), "module_done after begin_op of its update");
        self.done.push((self.calls.len(), a.module));
        Ok(())
    }

    record!(zero: Zero, restore: Restore, conv: Conv, bn_train: BnTrain, bn_eval: BnEval, bn_apply: BnApply,
        relu: Relu, add_relu: AddRelu, sigmoid: Sigmoid, pool: Pool, max_pool: MaxPool, linear: Linear,
        resize: Resize, crop: Crop, l2_normalize: L2Normalize, cross_entropy: CrossEntropy, bce: Bce,
        supcon: SupCon, conv_backward: ConvBackward, bn_backward: BnBackward, relu_backward: ReluBackward,
        sigmoid_backward: SigmoidBackward, pool_backward: PoolBackward, max_pool_backward: MaxPoolBackward,
        linear_backward: LinearBackward, resize_backward: ResizeBackward,
        l2_normalize_backward: L2NormalizeBackward, add: Add, narrow: Narrow, widen: Widen, sgd: Sgd, check_grads: CheckGrads, send: Send,
        recv: Recv);
}

fn plans() -> Vec<(&'static str, Plan)> {
    let w = ([0.5; 4], [0.25, 0.25, 0.25, 1.0]);
    let cifar = Arch::resnet(20, 3, 16, 10).unwrap();
    let imagenet = Arch::resnet_imagenet(18, 3, 64, 10).unwrap();
    let plan = |arch: Arch, k: usize, method: Method| {
        let part = Partition::for_k(&arch, k, TableKind::Reference).unwrap();
        Plan::new(arch, part, method, 4, w.0, w.1).unwrap()
    };
    vec![
        ("e2e", plan(cifar, 1, Method::reference(Base::E2e, false))),
        ("infopro+hpff", plan(cifar, 4, Method::reference(Base::InfoPro, true))),
        ("dgl", plan(cifar, 2, Method::reference(Base::Dgl, false))),
        (
            "e2e bf16-mixed",
            plan(cifar, 1, Method { precision: Precision::Bf16Mixed, ..Method::reference(Base::E2e, false) }),
        ),
        ("imagenet infopro+hpff", plan(imagenet, 4, Method::imagenet_reference(Base::InfoPro, true))),
    ]
}

fn ops_of(plan: &Plan, train: bool) -> Vec<Op> {
    let mut ops = Vec::new();
    if train {
        plan.train_step(|op| ops.push(*op));
    } else {
        plan.eval_step(|op| ops.push(*op));
    }
    ops
}

fn run(plan: &Plan, train: bool, fuse: bool) -> Recorder {
    let mut r = Recorder::new(fuse);
    let Ok(()) = if train { dispatch::train_step(plan, &mut r) } else { dispatch::eval_step(plan, &mut r) };
    r
}

#[test]
fn every_op_reaches_the_backend_once_in_order() {
    for (name, plan) in plans() {
        for train in [true, false] {
            let want: Vec<(usize, Op)> = ops_of(&plan, train).into_iter().enumerate().collect();
            for fuse in [false, true] {
                let r = run(&plan, train, fuse);
                assert_eq!(r.calls, want, "{name}, train {train}, fuse {fuse}");
            }
        }
    }
}

#[test]
fn each_module_is_done_once_right_before_its_update() {
    for (name, plan) in plans() {
        let r = run(&plan, true, true);
        let updates: Vec<(usize, usize)> = (r.calls.iter().enumerate())
            .filter_map(|(i, (_, op))| match op {
                Op::Sgd(a) => Some((i, a.module)),
                _ => None,
            })
            .collect();
        assert_eq!(r.done, updates, "{name}");
        let mut modules: Vec<usize> = updates.iter().map(|u| u.1).collect();
        modules.sort();
        assert_eq!(modules, (0..plan.modules()).collect::<Vec<_>>(), "{name}: one update per module");
        assert!(run(&plan, false, true).done.is_empty(), "{name}: an evaluation updates nothing");
    }
}

#[test]
fn runs_are_found_where_their_buffers_chain() {
    for (name, plan) in plans() {
        for train in [true, false] {
            let ops = ops_of(&plan, train);
            let r = run(&plan, train, true);
            assert!(!r.runs.is_empty(), "{name}, train {train}: no run found");
            for (i, run) in &r.runs {
                let (rops, len) = run.ops();
                assert_eq!(&ops[*i..*i + len], &rops[..len], "{name}: run at {i}");
                match *run {
                    Run::ConvBnEval { conv, bn, then } => {
                        assert_eq!(conv.y, bn.x);
                        assert!(!train);
                        assert_eq!(then, Epilogue::after(bn.y, ops.get(i + 2)));
                    }
                    Run::BnTrain { bn, then } => assert_eq!(Some(then), Epilogue::after(bn.y, ops.get(i + 1))),
                    Run::BnApply { bn, then } => assert_eq!(Some(then), Epilogue::after(bn.y, ops.get(i + 1))),
                    Run::ConvBackwardRelu { conv, relu } => assert_eq!(conv.dx, Some(relu.dy)),
                    Run::ReluBackwardBn { relu, bn } => assert_eq!(relu.dy, bn.dy),
                }
            }
            // Every BN in training whose output the next op rectifies is a run's head.
            for (i, op) in ops.iter().enumerate() {
                if let Op::BnTrain(bn) = op {
                    let fused = r.runs.iter().any(|(j, _)| *j == i);
                    assert_eq!(fused, Epilogue::after(bn.y, ops.get(i + 1)).is_some(), "{name}: op {i}");
                }
            }
        }
    }
}

/// A conv whose output is not the next BN's input, and a BN whose output the next ReLU
/// does not read, are not runs; the same ops with chained buffers are.
#[test]
fn unchained_neighbours_are_not_runs() {
    let (_, plan) = plans().remove(0);
    let ops = ops_of(&plan, false);
    let at = ops.iter().position(|op| matches!(op, Op::Conv(_))).unwrap();
    let (Op::Conv(conv), Op::BnEval(bn)) = (ops[at], ops[at + 1]) else { panic!("a conv is followed by its BN") };
    let shifted = |b: op::Buf| op::Buf { off: b.off + 1, ..b };
    let chained = [Op::Conv(conv), Op::BnEval(bn), Op::Relu(op::Relu { x: bn.y })];
    let loose_bn = [Op::Conv(conv), Op::BnEval(op::BnEval { x: shifted(bn.x), ..bn }), Op::Relu(op::Relu { x: bn.y })];
    let loose_relu = [Op::Conv(conv), Op::BnEval(bn), Op::Relu(op::Relu { x: shifted(bn.y) })];
    let runs = |stream: &[Op]| {
        let mut r = Recorder::new(true);
        let Ok(()) = dispatch::run_ops(stream, &mut r);
        assert_eq!(r.calls.iter().map(|c| c.1).collect::<Vec<_>>(), stream);
        r.runs
    };
    let relu = Some(Epilogue::Relu(op::Relu { x: bn.y }));
    assert_eq!(runs(&chained), [(0, Run::ConvBnEval { conv, bn, then: relu })]);
    assert_eq!(runs(&loose_bn), []);
    assert_eq!(runs(&loose_relu), [(0, Run::ConvBnEval { conv, bn, then: None })]);
    // A stream that ends inside a possible run runs what it has.
    assert_eq!(runs(&chained[..2]), [(0, Run::ConvBnEval { conv, bn, then: None })]);
    assert_eq!(runs(&chained[..1]), []);
}

/// A run whose later op writes where an earlier one reads (not exactly on it) is not
/// safe to run chunk by chunk: eval's bottleneck 1×1 conv whose BN output starts where
/// its four times wider input does (ResNet-164) is such a run; every run of the basic
/// blocks' plans is safe, so they keep their fused passes.
#[test]
fn runs_whose_chunks_could_overwrite_each_others_inputs_are_told() {
    for (name, plan) in plans() {
        for train in [true, false] {
            let r = run(&plan, train, true);
            let bad: Vec<_> = r.runs.iter().filter(|(_, run)| !run.chunk_safe()).collect();
            assert!(bad.is_empty(), "{name}, train {train}: {bad:?}");
        }
    }
    let arch = Arch::resnet(164, 3, 16, 10).unwrap();
    let part = Partition::for_k(&arch, 1, TableKind::Reference).unwrap();
    let plan = Plan::new(arch, part, Method::reference(Base::E2e, false), 4, [0.5; 4], [1.0; 4]).unwrap();
    let r = run(&plan, false, true);
    let unsafe_runs: Vec<&Run> = r.runs.iter().map(|(_, run)| run).filter(|run| !run.chunk_safe()).collect();
    assert!(!unsafe_runs.is_empty(), "ResNet-164's eval has a BN output on part of its conv's input");
    for run in unsafe_runs {
        let Run::ConvBnEval { conv, bn, .. } = *run else { panic!("only eval's conv → BN: {run:?}") };
        assert!(bn.y.overlaps(&conv.x) && bn.y != conv.x, "{run:?}");
    }
    // In place (exactly on the input) is safe.
    let (Op::Conv(conv), Op::BnEval(bn)) = (ops_of(&plan, false)[0], ops_of(&plan, false)[1]) else {
        panic!("the stem's conv and BN come first")
    };
    let on = op::BnEval { y: op::Buf { len: conv.x.len, ..conv.x }, ..bn };
    assert!(Run::ConvBnEval { conv, bn: on, then: None }.chunk_safe());
    let part_on = op::BnEval { y: op::Buf { off: conv.x.off + 1, ..on.y }, ..bn };
    assert!(!Run::ConvBnEval { conv, bn: part_on, then: None }.chunk_safe());
}
