// The CUDA dialect the kernels use, for a host C++ compiler: the CUDA emulator runs the
// `cu/*.cu` sources on the CPU (see runtime.cpp and src/emu.rs). Only what the sources
// use is here; a kernel that needs more fails to build the emulator, not silently.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <type_traits>
#include <utility>

struct hpff_dim3 {
    unsigned x, y, z;
};
// Set by the runtime before each emulated thread runs (or resumes).
extern thread_local hpff_dim3 threadIdx, blockIdx, blockDim, gridDim;
void __syncthreads();

#define __global__
// Device helpers are per source (NVRTC compiles each file alone): internal linkage here.
#define __device__ static
#define __forceinline__ inline
// One block runs at a time on a host thread, so per-block shared memory is a static of
// that host thread.
#define __shared__ static thread_local

// Rounded, unfused: the volatile keeps the compiler from contracting into an FMA.
inline float __fadd_rn(float a, float b) {
    volatile float r = a + b;
    return r;
}
inline float __fmul_rn(float a, float b) {
    volatile float r = a * b;
    return r;
}
inline float __int_as_float(int v) {
    float f;
    memcpy(&f, &v, 4);
    return f;
}
inline unsigned int __float_as_uint(float v) {
    unsigned int u;
    memcpy(&u, &v, 4);
    return u;
}
inline float __uint_as_float(unsigned int v) {
    float f;
    memcpy(&f, &v, 4);
    return f;
}
inline double __longlong_as_double(long long v) {
    double d;
    memcpy(&d, &v, 8);
    return d;
}

// Kernel arguments arrive as the 8-byte slots src/launch.rs packs for cuLaunchKernel.
template <typename T> T hpff_arg(uint64_t s) {
    if constexpr (std::is_pointer_v<T>) {
        return reinterpret_cast<T>(static_cast<uintptr_t>(s));
    } else if constexpr (std::is_same_v<T, float>) {
        uint32_t b = (uint32_t)s;
        float f;
        memcpy(&f, &b, 4);
        return f;
    } else if constexpr (std::is_same_v<T, double>) {
        double d;
        memcpy(&d, &s, 8);
        return d;
    } else {
        static_assert(std::is_integral_v<T>, "kernel arguments are pointers, integers, floats or doubles");
        return (T)(int64_t)s;
    }
}

template <typename... A, size_t... I>
void hpff_call_with(void (*f)(A...), const uint64_t* s, std::index_sequence<I...>) {
    f(hpff_arg<A>(s[I])...);
}

template <typename... A> void hpff_call(void (*f)(A...), const uint64_t* s) {
    hpff_call_with(f, s, std::index_sequence_for<A...>{});
}
