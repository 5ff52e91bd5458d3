//! The firmware (for `thumbv7em-none-eabihf`) and its host twin (any other target).
//!
//! On the microcontroller: plans the network of [`hpff_firmware::task`], trains it in a
//! `static` arena of `ARENA_FLOATS` floats (a build-time constant from the plan; the plan
//! is checked against it at start-up), evaluates, prints every step's losses, the
//! accuracy, the RAM and flash it uses and the steps per second over semihosting, and
//! exits through semihosting with status 0 only if the loss fell and the accuracy is at
//! least twice chance. No allocator is linked.
//!
//! On the host: the same steps on the same plan and data with the same reference
//! executor; `--compare DEVICE.log` checks the device's losses against the host's.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]

#[cfg(target_os = "none")]
mod device {
    use core::fmt::{self, Write};
    use core::panic::PanicInfo;
    use cortex_m_rt::{entry, exception, ExceptionFrame};
    use cortex_m_semihosting::{debug, hio, syscall};
    use hpff_firmware::report::{self, Line};
    use hpff_firmware::sizes::{ARENA_FLOATS, RAM_BYTES};
    use hpff_firmware::task;

    /// Writes one line to the host's standard output (one semihosting call).
    fn out(args: fmt::Arguments) {
        let mut line = Line::default();
        let _ = line.write_fmt(args);
        let _ = line.write_str("\n");
        if let Ok(mut s) = hio::hstdout() {
            let _ = s.write_all(line.as_str().as_bytes());
        }
    }

    /// Host wall-clock time in centiseconds (semihosting SYS_CLOCK).
    fn centiseconds() -> usize {
        // SAFETY: SYS_CLOCK takes no argument and only returns a value.
        unsafe { syscall!(CLOCK) }
    }

    extern "C" {
        // Symbols of cortex-m-rt's link.x.
        static __erodata: u32;
        static __sdata: u32;
        static __edata: u32;
        static __sbss: u32;
        static __ebss: u32;
        static _stack_start: u32;
        static _stack_end: u32;
    }

    fn addr(p: *const u32) -> usize {
        p as usize
    }

    /// Bytes of stack used so far: cortex-m-rt painted `_stack_end.._stack_start` with
    /// `STACK_PAINT_VALUE` before `main`; the lowest overwritten word is the high water.
    fn stack_high_water() -> usize {
        let (lo, hi) = (addr(&raw const _stack_end), addr(&raw const _stack_start));
        let mut p = lo;
        while p < hi {
            // SAFETY: an aligned word of RAM between the statics and the stack top.
            let w = unsafe { core::ptr::read_volatile(p as *const u32) };
            if w != cortex_m_rt::STACK_PAINT_VALUE {
                break;
            }
            p += 4;
        }
        hi - p
    }

    #[entry]
    fn main() -> ! {
        // cortex-m-rt turns these into `&'static mut` (in .bss, zeroed by the reset handler).
        static mut ARENA: [f32; ARENA_FLOATS] = [0.0; ARENA_FLOATS];
        static mut X: [f32; task::INPUT_LEN] = [0.0; task::INPUT_LEN];
        static mut Y: [u32; task::BATCH] = [0; task::BATCH];
        static mut LOSSES: [f32; task::LOSS_SLOTS] = [0.0; task::LOSS_SLOTS];
        static mut LOGITS: [f32; task::LOGITS_LEN] = [0.0; task::LOGITS_LEN];

        let ok = train(ARENA, X, Y, LOSSES, LOGITS);
        debug::exit(if ok { debug::EXIT_SUCCESS } else { debug::EXIT_FAILURE });
        loop {
            cortex_m::asm::bkpt();
        }
    }

    fn train(arena: &mut [f32], x: &mut [f32], y: &mut [u32], losses: &mut [f32], logits: &mut [f32]) -> bool {
        let plan = match task::plan() {
            Ok(p) => p,
            Err(e) => {
                out(format_args!("FAIL: plan: {e}"));
                return false;
            }
        };
        // Start-up check: the arena sized at build time is the plan's.
        if plan.arena_len() != ARENA_FLOATS {
            out(format_args!(
                "FAIL: the plan needs {} floats, the static arena holds {ARENA_FLOATS}",
                plan.arena_len()
            ));
            return false;
        }
        report::header(&plan, out);
        if !report::grouped(hpff_firmware::grouped::check(arena), out) {
            return false;
        }
        let mut line = Line::default();
        let t0 = centiseconds();
        let mut t1 = t0;
        let result = task::run(&plan, arena, x, y, losses, logits, |step, l| {
            if report::step(&mut line, step, l).is_err() {
                out(format_args!("step {step}: line too long"));
            } else {
                out(format_args!("{}", line.as_str()));
            }
            if step == task::STEPS {
                t1 = centiseconds();
            }
        });
        let t2 = centiseconds();
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                out(format_args!("FAIL: {e}"));
                return false;
            }
        };
        let (train_s, eval_s) = ((t1 - t0) as f32 / 100.0, (t2 - t1) as f32 / 100.0);
        out(format_args!(
            "time (emulated: host wall clock under QEMU, not a real Cortex-M4): {} training steps in {train_s:.2} s = {:.2} steps/s; {} eval batches in {eval_s:.2} s",
            task::STEPS,
            task::STEPS as f32 / train_s.max(0.01),
            task::EVAL_BATCHES
        ));
        // Only the addresses of the linker's symbols are taken (safe since Rust 1.82).
        let (erodata, sdata, edata, sbss, ebss, top) = (
            addr(&raw const __erodata),
            addr(&raw const __sdata),
            addr(&raw const __edata),
            addr(&raw const __sbss),
            addr(&raw const __ebss),
            addr(&raw const _stack_start),
        );
        let data = edata - sdata;
        let statics = data + (ebss - sbss);
        let stack = stack_high_water();
        out(format_args!(
            "ram: .data {data} B + .bss {} B = {statics} B static; stack high water {stack} B; total {} B of {RAM_BYTES} B (RAM {:#x}..{top:#x})",
            ebss - sbss,
            statics + stack,
            sdata
        ));
        out(format_args!("flash: {} B (vector table, .text, .rodata and the .data image)", erodata + data));
        report::outcome(&outcome, out);
        outcome.passed()
    }

    #[panic_handler]
    fn panic(info: &PanicInfo) -> ! {
        out(format_args!("FAIL: panic: {info}"));
        debug::exit(debug::EXIT_FAILURE);
        loop {
            cortex_m::asm::bkpt();
        }
    }

    #[exception]
    unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
        out(format_args!("FAIL: hard fault at pc {:#010x}", ef.pc()));
        debug::exit(debug::EXIT_FAILURE);
        loop {
            cortex_m::asm::bkpt();
        }
    }
}

#[cfg(not(target_os = "none"))]
mod host;

#[cfg(not(target_os = "none"))]
fn main() {
    std::process::exit(host::main());
}
