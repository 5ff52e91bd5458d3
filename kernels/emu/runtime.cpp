// The CUDA emulator's scheduler: runs a kernel's grid on the calling host thread, one
// block at a time. Threads of a block are fibers so that __syncthreads() is a
// real barrier: each round resumes every live thread until it reaches the barrier or
// returns. A kernel whose first thread finishes without a barrier is run the fast way
// instead, every thread as a plain call. Deterministic, single-threaded per launch.
#include <vector>

#include "shim.h"

thread_local hpff_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace {

constexpr size_t STACK_BYTES = 64 << 10;

thread_local void (*tramp)(const uint64_t*);
thread_local const uint64_t* slots;
thread_local unsigned current;
thread_local bool in_fiber;
thread_local int barriers_seen;
thread_local bool barrier_outside_fibers;
thread_local std::vector<char> stacks;
thread_local std::vector<unsigned char> done;
void fiber_entry();

}  // namespace

#if defined(__x86_64__) && defined(__linux__)
// A minimal context switch (System V x86-64): push the callee-saved registers, swap
// stack pointers, pop. ucontext would make a signal-mask system call on every switch,
// which dominated the emulator's time.
extern "C" void hpff_emu_switch(void** save_sp, void* load_sp);
asm(R"(
.text
.globl hpff_emu_switch
.type hpff_emu_switch,@function
hpff_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size hpff_emu_switch, .-hpff_emu_switch
)");

namespace {
thread_local void* sched_sp;
thread_local std::vector<void*> fiber_sp;

// A fresh stack whose first switch "returns" into fiber_entry with the ABI's alignment.
void* prepare(char* stack_lo) {
    uintptr_t top = ((uintptr_t)(stack_lo + STACK_BYTES)) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;                        // fiber_entry's (unused) return address
    *--sp = (void*)&fiber_entry;            // where the switch's `ret` goes
    for (int r = 0; r < 6; r++) *--sp = nullptr;  // rbp, rbx, r12-r15
    return sp;
}
void start_fiber(unsigned t) { fiber_sp[t] = prepare(&stacks[t * STACK_BYTES]); }
void resume(unsigned t) { hpff_emu_switch(&sched_sp, fiber_sp[t]); }
void yield() { hpff_emu_switch(&fiber_sp[current], sched_sp); }
[[noreturn]] void finish() {
    void* unused;
    hpff_emu_switch(&unused, sched_sp);
    __builtin_unreachable();
}
void reserve(unsigned block) {
    if (fiber_sp.size() < block) fiber_sp.resize(block);
}
}  // namespace
#else
#include <ucontext.h>
namespace {
thread_local ucontext_t sched;
thread_local std::vector<ucontext_t> ctxs;
void start_fiber(unsigned t) {
    getcontext(&ctxs[t]);
    ctxs[t].uc_stack.ss_sp = &stacks[t * STACK_BYTES];
    ctxs[t].uc_stack.ss_size = STACK_BYTES;
    ctxs[t].uc_link = &sched;
    makecontext(&ctxs[t], fiber_entry, 0);
}
void resume(unsigned t) { swapcontext(&sched, &ctxs[t]); }
void yield() { swapcontext(&ctxs[current], &sched); }
void finish() {}  // returning from fiber_entry resumes uc_link
void reserve(unsigned block) {
    if (ctxs.size() < block) ctxs.resize(block);
}
}  // namespace
#endif

namespace {

void fiber_entry() {
    tramp(slots);
    done[current] = 1;
    finish();
}

// Runs block (bx, by) with one fiber per thread; returns whether any thread reached a
// barrier. Each round resumes every live thread until it reaches the next barrier or
// returns, so no thread passes barrier k before all live threads have reached it.
bool run_block_fibers(unsigned bx, unsigned by, unsigned block) {
    reserve(block);
    if (stacks.size() < block * STACK_BYTES) stacks.resize(block * STACK_BYTES);
    if (done.size() < block) done.resize(block);
    for (unsigned t = 0; t < block; t++) {
        done[t] = 0;
        start_fiber(t);
    }
    blockIdx = {bx, by, 0};
    barriers_seen = 0;
    in_fiber = true;
    for (bool live = true; live;) {
        live = false;
        for (unsigned t = 0; t < block; t++) {
            if (done[t]) continue;
            current = t;
            threadIdx = {t, 0, 0};
            resume(t);
            live |= !done[t];
        }
    }
    in_fiber = false;
    return barriers_seen > 0;
}

}  // namespace

void __syncthreads() {
    if (!in_fiber) {
        barrier_outside_fibers = true;
        return;
    }
    barriers_seen++;
    yield();
}

// Runs `f` (a trampoline taking the argument slots) on a gx × gy grid of `block`-thread
// blocks. Returns 0, or 1 when a barrier was met outside the fiber mode (the emulator
// guessed wrong that the kernel had none: its results are not to be trusted).
extern "C" int hpff_emu_launch(void (*f)(const uint64_t*), const uint64_t* s, unsigned gx, unsigned gy,
                               unsigned block) {
    tramp = f;
    slots = s;
    gridDim = {gx, gy, 1};
    blockDim = {block, 1, 1};
    barrier_outside_fibers = false;
    if (gx == 0 || gy == 0 || block == 0) return 0;
    bool sync = run_block_fibers(0, 0, block);
    for (unsigned by = 0; by < gy; by++) {
        for (unsigned bx = 0; bx < gx; bx++) {
            if (bx == 0 && by == 0) continue;
            if (sync) {
                run_block_fibers(bx, by, block);
            } else {
                blockIdx = {bx, by, 0};
                for (unsigned t = 0; t < block; t++) {
                    threadIdx = {t, 0, 0};
                    f(s);
                }
            }
        }
    }
    return barrier_outside_fibers ? 1 : 0;
}
