//! Where a module's tensors lie in the arena: module by module.
//!
//! The checkpoint order (the reference's `state_dict`, which [`Plan::for_each_tensor`]
//! lists and the initialisation draws in) is the stem, every block, the classifier, then
//! each module's auxiliary nets, so one module's tensors would lie in two ranges. The
//! arena lays them out module by module instead: module j's part of the backbone (the
//! stem with module 0, the classifier with the last module), then its auxiliary nets. One
//! module's parameters, gradients, momentum and BN statistics are then one span each
//! ([`Plan::module_params`]): what its update, a gradient all-reduce at
//! [`crate::exec::Backend::module_done`] and a pipeline stage take.
//!
//! The layout code ([`super::layout`]) hands out offsets in checkpoint order;
//! [`Placement`] moves each to the arena's. Both orders keep every tensor's elements
//! contiguous and in the same order, so only offsets change: the initialisation draws and
//! the checkpoint's bytes are those of the checkpoint order.

use super::layout::{Cursor, Part, Tensor, TensorKind};
use super::{Buf, Plan};
use crate::partition::MAX_MODULES;

/// Module boundaries in checkpoint order, for one region (parameters or BN statistics).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    modules: usize,
    /// Where module j's part of the backbone begins; `backbone[modules]` is the end of
    /// the classifier, which is `aux[0]`.
    backbone: [usize; MAX_MODULES + 1],
    /// Where module j's auxiliary nets begin; `aux[modules]` is the region's end.
    aux: [usize; MAX_MODULES + 1],
}

impl Bounds {
    const fn new(modules: usize) -> Bounds {
        Bounds { modules, backbone: [0; MAX_MODULES + 1], aux: [0; MAX_MODULES + 1] }
    }

    fn mark(&mut self, part: Part, j: usize, at: usize) {
        match part {
            Part::Backbone => self.backbone[j] = at,
            Part::Aux => self.aux[j] = at,
        }
    }

    /// Where module `j` begins in the arena's order (`j` = modules: the region's end).
    fn start(&self, j: usize) -> usize {
        self.backbone[j] + self.aux[j] - self.aux[0]
    }

    /// The arena offset of checkpoint-order offset `off`.
    fn place(&self, off: usize) -> usize {
        let k = self.modules;
        let last_at_or_below = |starts: &[usize]| starts.partition_point(|&s| s <= off) - 1;
        if off < self.aux[0] {
            // In module j's backbone part: after the aux nets of the modules before j.
            let j = last_at_or_below(&self.backbone[..k]);
            off + (self.aux[j] - self.aux[0])
        } else {
            // In module j's aux nets: after the backbone parts of modules 0..=j.
            let j = last_at_or_below(&self.aux[..k]);
            off - self.aux[0] + self.backbone[j + 1]
        }
    }

    fn module(&self, j: usize) -> Buf {
        Buf::f32(self.start(j), self.start(j + 1) - self.start(j))
    }
}

/// Moves offsets from the checkpoint order to the arena's (see the [module docs](self)).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placement {
    params: Bounds,
    state: Bounds,
}

impl Placement {
    /// One walk over `plan`'s whole model.
    pub(crate) fn of(plan: &Plan) -> Placement {
        let k = plan.part.modules();
        let (mut params, mut state) = (Bounds::new(k), Bounds::new(k));
        plan.walk(&mut Cursor::new(0, 0, None), &mut |part, j, cur| {
            params.mark(part, j, cur.p);
            state.mark(part, j, cur.s);
        });
        Placement { params, state }
    }

    /// The arena offset (whole model) of a parameter at checkpoint-order offset `off`.
    pub(crate) fn param(&self, off: usize) -> usize {
        self.params.place(off)
    }

    /// The same for a BN running statistic.
    pub(crate) fn state(&self, off: usize) -> usize {
        self.state.place(off)
    }

    /// Module `j`'s parameters in the whole model's parameter region.
    pub(crate) fn module_params(&self, j: usize) -> Buf {
        self.params.module(j)
    }

    /// Module `j`'s BN running statistics in the whole model's statistics region.
    pub(crate) fn module_state(&self, j: usize) -> Buf {
        self.state.module(j)
    }
}

impl Plan {
    /// Calls `f` for every parameter and BN running statistic, in checkpoint order, at
    /// its arena offset (module by module, see the [module docs](self)). A pipeline stage
    /// ([`Plan::stage`]) lists only its own tensors, at its own offsets.
    pub fn for_each_tensor(&self, mut f: impl FnMut(Tensor)) {
        let (stage, place) = (self.stage, Placement::of(self));
        let mut g = |t: Tensor| {
            let off = match t.kind {
                TensorKind::Param => stage.param(place.param(t.off)),
                TensorKind::State => stage.state_of(place.state(t.off)),
            };
            if let Some(off) = off {
                f(Tensor { off, ..t });
            }
        };
        self.walk(&mut Cursor::new(0, 0, Some(&mut g)), &mut |_, _, _| {});
    }

    /// The parameters of module `j` in the whole model's parameter region: one span,
    /// its part of the backbone then its auxiliary nets.
    pub fn module_params(&self, j: usize) -> Buf {
        Placement::of(self).module_params(j)
    }

    /// The BN running statistics of module `j`, laid out as [`Plan::module_params`].
    pub fn module_state(&self, j: usize) -> Buf {
        Placement::of(self).module_state(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three modules: backbone parts of 10, 20, 30 (+5 classifier), aux nets of 4, 0, —.
    fn bounds() -> Bounds {
        let mut b = Bounds::new(3);
        b.backbone[..4].copy_from_slice(&[0, 10, 30, 65]);
        b.aux[..4].copy_from_slice(&[65, 69, 69, 69]);
        b
    }

    #[test]
    fn modules_are_laid_out_one_after_the_other() {
        let b = bounds();
        assert_eq!([b.module(0), b.module(1), b.module(2)], [Buf::f32(0, 14), Buf::f32(14, 20), Buf::f32(34, 35)]);
        // Module 0: backbone in place, its aux nets right after it.
        assert_eq!([b.place(0), b.place(9), b.place(65), b.place(68)], [0, 9, 10, 13]);
        // Module 1's backbone moves past module 0's aux nets; the last module's classifier too.
        assert_eq!([b.place(10), b.place(29), b.place(30), b.place(64)], [14, 33, 34, 68]);
    }

    #[test]
    fn placement_is_a_permutation() {
        let b = bounds();
        let mut seen = [false; 69];
        for off in 0..69 {
            let p = b.place(off);
            assert!(!seen[p], "{off} -> {p} twice");
            seen[p] = true;
        }
    }
}
