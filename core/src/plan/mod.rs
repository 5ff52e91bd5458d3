//! The static plan of a training step: every op in order, every tensor an arena slice.
//!
//! [`Plan::new`] turns (architecture, partition, method, batch) into sizes: the
//! parameter, gradient, momentum and BN-state regions, and the peak of an activation
//! stack on which each module's forward values, its auxiliary nets and its backward
//! temporaries are pushed and popped. Because modules are gradient-isolated, a
//! module's activations are popped when its backward ends, so the peak follows the
//! largest module (or pair, for HPFF's cascade level), not the network. The arena
//! length [`Plan::arena_len`] is the exact memory bound of a step, known before it runs.
//!
//! The schedule itself is not stored: [`Plan::train_step`] and [`Plan::eval_step`]
//! generate the ops into a callback, identically every time. Executors run them; the
//! planner's dry run measures the peak.
//!
//! ## HPFF schedule
//! The reference's forward (per batch, modules M0..M(K−1), the stem belonging to M0):
//! stem once; M0 on the x path with no loss (a reference quirk); for i = 1..K−2 the x path
//! M_i with its independent head (·wx), and the cascade y_{i−1} = M_{i−1}(y_{i−2}),
//! z = M_i(y_{i−1}) with the decoder and cascade head (·wy·λ) backpropagating through both;
//! last, CE·wx on the x path and CE·wy through M(K−2) and M(K−1) on the y path; one SGD step.
//!
//! With the same weights on the same batch, the x, y and z passes through a module compute
//! identical values, so the generator runs each module forward once and reproduces the
//! reference's gradients by routing: a module's parameters get its own losses plus what the
//! next module's cascade sends down; only the cascade part travels on to the module below.
//! Its BN running statistics are updated once per reference pass (twice for M0 and the last
//! module, three times for the others), which gives the same bits since the batch statistics
//! are the same. Modules i−1 and i are live together, as in the reference's cascade.
//!
//! With `levels = Independent` module 0 gets an independent loss too (otherwise nothing
//! would train it) and the sole level has weight 1; likewise `Cascade` alone has weight 1.
//!
//! The ImageNet reference's HPFF ([`Method::imagenet_reference`]) is this schedule with the
//! cascade level alone (weights 5 and 0.75 as λ1, λ2 at every module, the last pair by CE),
//! module 0 still run on the x path once (its loop starts with that pass, so module 0's BN
//! statistics get two updates), its own aux nets, and the decoder's output cut into
//! patches ([`crate::method::Pff::Output`]).

mod imagenet_aux;
mod layout;
pub mod op;
mod placement;
mod schedule;
mod stage;

/// Re-exported from [`crate::error`], where it lives so that `arch`, `partition` and
/// `method` need not depend on the plan that depends on them.
pub use crate::error::PlanError;
pub use imagenet_aux::{StagedDecoderP, MAX_DECODER_LAYERS};
pub use layout::{BlockP, BnP, ConvP, DecoderP, HeadP, Init, LinearP, Name, StemP, Tensor, TensorKind, MAX_HEAD_CONVS};
pub use op::{loss_record_len, Access, Buf, Elem, LossKind, LossSlot, Op, Peer, LOSS_KINDS, SLOT_BYTES};
pub use stage::{Micro, Stage};

use crate::arch::{Arch, Family};
use crate::method::{Base, Levels, Method, Pff};
use crate::partition::Partition;

/// An auxiliary net attached to a module's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuxNet {
    /// Non-HPFF local classifier, or HPFF's cascade-level classifier.
    Classifier,
    /// HPFF's independent-level classifier.
    Independent,
    Decoder,
}

impl AuxNet {
    pub const fn is_decoder(self) -> bool {
        matches!(self, AuxNet::Decoder)
    }
    /// The reference's attribute name.
    pub const fn name(self, hpff: bool) -> &'static str {
        match (self, hpff) {
            (AuxNet::Classifier, _) => "aux_classifier",
            (AuxNet::Independent, _) => "net_classifier",
            (AuxNet::Decoder, false) => "decoder",
            (AuxNet::Decoder, true) => "aux_decoder",
        }
    }
    /// The attribute name in the reference the method's auxiliary nets come from.
    pub const fn label(self, method: &Method) -> &'static str {
        match method.aux {
            Family::Cifar => self.name(method.hpff),
            Family::ImageNet => self.imagenet_name(),
        }
    }
    /// The ImageNet reference's attribute name (before the split point, `aux13_0`): its
    /// cascade nets are `aux1`/`decoder1`, its independent-path head `aux2`.
    pub const fn imagenet_name(self) -> &'static str {
        match self {
            AuxNet::Classifier => "aux1",
            AuxNet::Independent => "aux2",
            AuxNet::Decoder => "decoder1",
        }
    }
}

/// Bytes of each kind a training step needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Memory {
    pub params: usize,
    pub grads: usize,
    pub momentum: usize,
    pub bn_state: usize,
    /// Peak of the activation stack over the training step (forward values, aux nets, backward temporaries).
    pub activations: usize,
    /// Largest decoder working set (one patch at a time), part of `activations`.
    pub decoder: usize,
    /// Conv im2col scratch (one image at a time).
    pub scratch: usize,
    /// Peak activation stack of an eval pass.
    pub eval_activations: usize,
}

impl Memory {
    /// Bytes of the whole training arena.
    pub const fn total(&self) -> usize {
        self.params + self.grads + self.momentum + self.bn_state + self.activations + self.scratch
    }
}

/// A training and evaluation plan. Cheap to copy; builds ops on demand.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub arch: Arch,
    pub part: Partition,
    pub method: Method,
    pub batch: usize,
    /// Normalisation of the input (per channel), undone for the decoders' targets.
    pub mean: [f32; 4],
    pub std: [f32; 4],
    /// Floats of parameters (= of gradients = of momentum).
    pub params: usize,
    /// Floats of BN running statistics.
    pub state: usize,
    /// The modules this plan trains (all of them unless it is a pipeline stage).
    pub stage: Stage,
    /// Its place in a step cut into micro-batches ([`Micro::WHOLE`] unless it is one).
    pub micro: Micro,
    train_peak: usize,
    eval_peak: usize,
    decoder_peak: usize,
    scratch: usize,
}

impl Plan {
    /// Builds a plan for `method` on `arch` cut by `part`, at batch size `batch`. `mean`/`std`
    /// are the input normalisation (only the first `in_channels` entries are used).
    pub fn new(
        arch: Arch,
        part: Partition,
        method: Method,
        batch: usize,
        mean: [f32; 4],
        std: [f32; 4],
    ) -> Result<Plan, PlanError> {
        if batch == 0 {
            return Err(PlanError::ZeroBatch);
        }
        if arch.in_channels > 4 {
            return Err(PlanError::BadShape("at most 4 input channels"));
        }
        method.validate(&part)?;
        let mut plan = Plan {
            arch,
            part: if method.base == Base::E2e { Partition::even(&arch, 1)? } else { part },
            method,
            batch,
            mean,
            std,
            params: 0,
            state: 0,
            stage: Stage::whole(0, 0, 0),
            micro: Micro::WHOLE,
            train_peak: 0,
            eval_peak: 0,
            decoder_peak: 0,
            scratch: 0,
        };
        if method.aux == Family::ImageNet && arch.family != Family::ImageNet {
            return Err(PlanError::BadMethod(
                "the ImageNet auxiliary nets need an ImageNet network (resnetN-imagenet)",
            ));
        }
        if method.uses_decoder() {
            let n = method.patches;
            // Patch-input ImageNet decoders work on equal patches, down to 1/16 of the image.
            let imagenet_input = method.aux == Family::ImageNet && method.pff == Pff::Input;
            for j in 0..plan.part.modules().saturating_sub(1) {
                let (_, h, _) = plan.module_out(j);
                let uneven = imagenet_input && (h % n != 0 || (arch.image >> 4) < n);
                if h < n || !arch.image.is_multiple_of(n) || uneven {
                    return Err(PlanError::PatchGrid { patches: n, map: h, image: arch.image });
                }
            }
            if method.aux == Family::ImageNet && arch.image < 16 {
                return Err(PlanError::BadShape("the ImageNet decoders need images of at least 16 pixels"));
            }
        }
        let mut cur = layout::Cursor::new(0, 0, None);
        plan.walk(&mut cur, &mut |_, _, _| {});
        plan.params = cur.p;
        plan.state = cur.s;
        plan.stage = Stage::whole(plan.part.modules(), cur.p, cur.s);
        plan.measure();
        Ok(plan)
    }

    /// Sizes the activation stack and the conv scratch by a dry run of both schedules.
    fn measure(&mut self) {
        let t = schedule::dry_run(self, true);
        let e = schedule::dry_run(self, false);
        self.train_peak = t.peak;
        self.eval_peak = e.peak;
        self.decoder_peak = t.decoder_peak;
        self.scratch = t.scratch.max(e.scratch);
    }

    /// Number of modules actually trained (the true K).
    pub fn modules(&self) -> usize {
        self.part.modules()
    }

    /// Which auxiliary nets module `j` has, in checkpoint order.
    pub fn aux_nets(&self, j: usize) -> heapless::Vec<AuxNet, 3> {
        let mut v = heapless::Vec::new();
        let last = self.part.modules() - 1;
        if self.method.base == Base::E2e || j == last {
            return v;
        }
        let dec = self.method.uses_decoder();
        if !self.method.hpff {
            let _ = v.push(AuxNet::Classifier);
            if dec {
                let _ = v.push(AuxNet::Decoder);
            }
            return v;
        }
        let lv = self.method.levels;
        let indep = match lv {
            Levels::Both => j > 0,
            Levels::Independent => true,
            Levels::Cascade => false,
        };
        let cascade = lv != Levels::Independent && j > 0;
        if indep {
            let _ = v.push(AuxNet::Independent);
        }
        if cascade {
            let _ = v.push(AuxNet::Classifier);
            if dec {
                let _ = v.push(AuxNet::Decoder);
            }
        }
        v
    }

    /// Start of the gradient region.
    pub const fn grads_off(&self) -> usize {
        self.params
    }
    /// Where the gradient of the parameter at `off` sits: the same offset in the
    /// gradient region. Every executor finds gradients through this.
    pub const fn grad_of(&self, off: usize) -> usize {
        self.params + off
    }
    /// Start of the momentum region.
    pub const fn momentum_off(&self) -> usize {
        2 * self.params
    }
    /// Start of the BN running statistics.
    pub const fn state_off(&self) -> usize {
        3 * self.params
    }
    /// Start of the activation stack.
    pub const fn act_off(&self) -> usize {
        3 * self.params + self.state
    }
    /// The conv scratch buffer (after the activation stack).
    pub fn scratch(&self) -> Buf {
        Buf::f32(self.act_off() + self.train_peak.max(self.eval_peak), self.scratch)
    }
    /// Floats the arena must hold.
    pub fn arena_len(&self) -> usize {
        self.scratch().end()
    }
    /// Where the executor puts the (normalised) input batch.
    pub fn input(&self) -> Buf {
        Buf::f32(self.act_off(), self.batch * self.arch.in_channels * self.arch.image * self.arch.image)
    }
    /// Where an eval pass leaves the logits (batch × classes).
    pub fn logits(&self) -> Buf {
        Buf::f32(self.input().end(), self.batch * self.arch.classes)
    }
    /// Loss record length: `modules × LOSS_KINDS` losses, then the non-finite flag.
    pub fn loss_slots(&self) -> usize {
        loss_record_len(self.part.modules())
    }

    /// The loss record's last slot: 1 after a training step whose gradients hold a NaN or
    /// an infinity, else 0 ([`Op::CheckGrads`]).
    pub fn nonfinite_slot(&self) -> usize {
        self.part.modules() * LOSS_KINDS
    }

    /// Bytes by kind.
    pub fn memory(&self) -> Memory {
        let f = SLOT_BYTES;
        Memory {
            params: self.params * f,
            grads: self.params * f,
            momentum: self.params * f,
            bn_state: self.state * f,
            activations: self.train_peak * f,
            decoder: self.decoder_peak * f,
            scratch: self.scratch * f,
            eval_activations: self.eval_peak * f,
        }
    }

    /// Generates the ops of one training step.
    pub fn train_step(&self, emit: impl FnMut(&Op)) {
        schedule::Gen::new(self, emit).train();
    }

    /// Generates the ops of one evaluation pass (logits at [`Plan::logits`]).
    pub fn eval_step(&self, emit: impl FnMut(&Op)) {
        schedule::Gen::new(self, emit).eval();
    }
}
