//! hpff-firmware: InfoPro + HPFF training on a Cortex-M, in static memory.
//!
//! [`task`] is the network, the data and the training loop; [`grouped`] checks ResNeXt's
//! grouped convolution on the device before training; [`sizes`] holds the arena's
//! size and the planned bytes by kind, computed from the same plan by the build script;
//! [`report`] writes the lines the firmware prints (and its host twin prints the same,
//! so the two logs compare line by line). `no_std`, no allocator.
#![no_std]

pub mod grouped;
pub mod task;

/// Sizes from the plan, computed at build time by `build.rs`.
pub mod sizes {
    include!(concat!(env!("OUT_DIR"), "/plan.rs"));

    /// Bytes of the step buffers beside the arena: images, labels, loss record, logits.
    pub const IO_BYTES: usize =
        4 * (super::task::INPUT_LEN + super::task::BATCH + super::task::LOSS_SLOTS + super::task::LOGITS_LEN);
    /// Bytes of the arena.
    pub const ARENA_BYTES: usize = 4 * ARENA_FLOATS;

    // Compile-time check (the build script checks it too, with a message).
    const _: () = assert!(ARENA_BYTES + IO_BYTES + STACK_RESERVE <= RAM_BYTES, "the arena does not fit the RAM budget");
    // The grouped-convolution check borrows the arena before training.
    const _: () = assert!(super::grouped::FLOATS <= ARENA_FLOATS, "the grouped-conv check does not fit the arena");
}

pub mod report {
    //! The lines both builds print. A step line carries every loss slot as the bits of
    //! its `f32`, so the host can compare the device's losses exactly.
    use crate::sizes;
    use crate::task::{self, Outcome};
    use core::fmt::{self, Write};
    use hpff_core::plan::Plan;

    /// A line assembled in a fixed buffer, then written in one go (one semihosting call).
    #[derive(Debug)]
    pub struct Line {
        buf: [u8; 512],
        len: usize,
    }

    impl Default for Line {
        fn default() -> Self {
            Line { buf: [0; 512], len: 0 }
        }
    }

    impl Line {
        pub fn as_str(&self) -> &str {
            core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<line not UTF-8>")
        }

        pub fn clear(&mut self) {
            self.len = 0;
        }
    }

    impl Write for Line {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.len + s.len();
            if end > self.buf.len() {
                return Err(fmt::Error);
            }
            self.buf[self.len..end].copy_from_slice(s.as_bytes());
            self.len = end;
            Ok(())
        }
    }

    /// The header: network, method and the planned memory, one line each.
    pub fn header(plan: &Plan, mut emit: impl FnMut(fmt::Arguments)) {
        emit(format_args!(
            "hpff-firmware: ResNet-{} width {} ({} parameters), InfoPro + HPFF, K = {} modules, {}x{} patches, precision {}; batch {}, {}x{}x{} images, {} classes",
            task::DEPTH,
            plan.arch.width,
            plan.params,
            plan.modules(),
            plan.method.patches,
            plan.method.patches,
            plan.method.precision.name(),
            plan.batch,
            task::CHANNELS,
            task::IMAGE,
            task::IMAGE,
            task::CLASSES
        ));
        for (name, bytes) in sizes::PLANNED {
            emit(format_args!("planned {name:<24} {bytes:>7} B"));
        }
        emit(format_args!(
            "planned arena (static, {} floats) {:>7} B; step buffers {} B; stack reserve {} B; budget {} B",
            sizes::ARENA_FLOATS,
            sizes::ARENA_BYTES,
            sizes::IO_BYTES,
            sizes::STACK_RESERVE,
            sizes::RAM_BYTES
        ));
        let (now, full) = (plan.memory().activations, sizes::ACTIVATIONS_F32);
        let saved = full.saturating_sub(now);
        emit(format_args!(
            "precision {}: activations {now} B planned, {full} B at 32 ({:.1} % of the RAM budget): saves {saved} B = {:.1} % of the activations, {:.1} % of the RAM",
            plan.method.precision.name(),
            pct(full, sizes::RAM_BYTES),
            pct(saved, full),
            pct(saved, sizes::RAM_BYTES)
        ));
    }

    fn pct(part: usize, whole: usize) -> f32 {
        100.0 * part as f32 / whole as f32
    }

    /// The grouped-convolution check's line; false (and a FAIL line) past its tolerance.
    pub fn grouped(worst: f32, mut emit: impl FnMut(fmt::Arguments)) -> bool {
        let s = crate::grouped::SHAPE;
        emit(format_args!(
            "grouped conv (ResNeXt 3x3: {} -> {} channels in {} groups, {}x{}, {} images): forward, input and weight gradients {:.1e} from the written-out sums (tolerance {:.0e})",
            s.c_in,
            s.c_out,
            s.groups,
            s.h,
            s.w,
            crate::grouped::N,
            worst,
            crate::grouped::TOLERANCE
        ));
        let ok = worst <= crate::grouped::TOLERANCE;
        if !ok {
            emit(format_args!("FAIL: the grouped convolution differs from its definition"));
        }
        ok
    }

    /// One step: the main loss, then every loss slot's bits.
    pub fn step(line: &mut Line, step: usize, losses: &[f32]) -> fmt::Result {
        line.clear();
        write!(line, "step {step:3} loss {:.6} bits", losses[task::main_slot()])?;
        for (i, l) in losses.iter().enumerate() {
            write!(line, "{}{:08x}", if i == 0 { ' ' } else { ',' }, l.to_bits())?;
        }
        Ok(())
    }

    /// The result lines; the last one says PASS or FAIL.
    pub fn outcome(o: &Outcome, mut emit: impl FnMut(fmt::Arguments)) {
        emit(format_args!(
            "loss (cascade CE at the classifier): mean of steps 1-{w} {:.4} -> mean of steps {}-{} {:.4}",
            o.first_mean,
            task::STEPS - task::WINDOW + 1,
            task::STEPS,
            o.last_mean,
            w = task::WINDOW
        ));
        emit(format_args!(
            "eval: {}/{} held-out images correct = {:.1}% (chance {:.1}%)",
            o.correct,
            o.total,
            100.0 * o.accuracy(),
            100.0 / task::CLASSES as f32
        ));
        if o.passed() {
            emit(format_args!("PASS: the loss fell and the accuracy is at least twice chance"));
        } else {
            emit(format_args!("FAIL: expected a falling loss and an accuracy of at least twice chance"));
        }
    }
}
