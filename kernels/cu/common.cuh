// Shared by every kernel source (prepended by the Rust side; NVRTC gets no include path).
// No headers: NVRTC's built-in math (exp, log, sqrt, fmaf, ...) is enough.

typedef long long i64;

// Every reduction kernel runs with exactly this many threads per block, so the shape
// of the shared-memory tree below (and with it the rounding) is fixed.
#define BLOCK 256

// Grid-stride loop over `n` items: the result does not depend on the grid size.
#define FOR_EACH(i, n) \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

__device__ __forceinline__ i64 imin64(i64 a, i64 b) { return a < b ? a : b; }

// Sums one double per thread over the block with a fixed tree (deterministic).
// `sh` holds BLOCK doubles; every thread of the block must call this.
__device__ double block_sum(double v, double* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = BLOCK / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

// The contiguous slice [lo, hi) of `total` items that block `p` of `parts` owns.
__device__ __forceinline__ void part_range(i64 total, int p, int parts, i64* lo, i64* hi) {
    i64 len = (total + parts - 1) / parts;
    *lo = imin64((i64)p * len, total);
    *hi = imin64(*lo + len, total);
}
