// BatchNorm statistics, forward and backward, and per-channel sums (conv bias grads).
//
// A per-channel reduction over the n*hw values of a channel runs in two fixed stages:
// grid (parts, C) blocks each sum a fixed contiguous slice into a double partial
// (chan_partial_*), then one thread per channel adds the parts in order (bn_mean,
// bn_finalize, bn_backward_finalize, chan_sum_add). No atomics: the bits depend only
// on (n, C, hw, parts), which the host derives from the plan.

// Index of the j-th value of channel c (j runs over images, then pixels) in NCHW.
__device__ __forceinline__ i64 chan_index(i64 j, int c, int C, i64 hw) {
    i64 img = j / hw;
    return (img * C + c) * hw + (j - img * hw);
}

// part[c * parts + p] = sum of x over block p's slice of channel c.
extern "C" __global__ void chan_partial_sum(const float* x, int C, i64 hw, i64 total, int parts, double* part) {
    __shared__ double sh[BLOCK];
    int p = blockIdx.x, c = blockIdx.y;
    i64 lo, hi;
    part_range(total, p, parts, &lo, &hi);
    double acc = 0.0;
    for (i64 j = lo + threadIdx.x; j < hi; j += BLOCK) acc += (double)x[chan_index(j, c, C, hw)];
    double s = block_sum(acc, sh);
    if (threadIdx.x == 0) part[(i64)c * parts + p] = s;
}

// part[c * parts + p] = sum of (x - mean[c])^2 over the slice (second pass of the variance).
extern "C" __global__ void chan_partial_sqdev(const float* x, int C, i64 hw, i64 total, int parts, const float* mean,
                                              double* part) {
    __shared__ double sh[BLOCK];
    int p = blockIdx.x, c = blockIdx.y;
    i64 lo, hi;
    part_range(total, p, parts, &lo, &hi);
    double m = (double)mean[c];
    double acc = 0.0;
    for (i64 j = lo + threadIdx.x; j < hi; j += BLOCK) {
        double d = (double)x[chan_index(j, c, C, hw)] - m;
        acc += d * d;
    }
    double s = block_sum(acc, sh);
    if (threadIdx.x == 0) part[(i64)c * parts + p] = s;
}

// Backward sums: part[c*parts+p] = sum dy, part[(C+c)*parts+p] = sum dy*(x - mean[c]).
extern "C" __global__ void chan_partial_bwd(const float* x, const float* dy, int C, i64 hw, i64 total, int parts,
                                            const float* mean, double* part) {
    __shared__ double sh[BLOCK];
    int p = blockIdx.x, c = blockIdx.y;
    i64 lo, hi;
    part_range(total, p, parts, &lo, &hi);
    double m = (double)mean[c];
    double a = 0.0, b = 0.0;
    for (i64 j = lo + threadIdx.x; j < hi; j += BLOCK) {
        i64 k = chan_index(j, c, C, hw);
        double g = (double)dy[k];
        a += g;
        b += g * ((double)x[k] - m);
    }
    double sa = block_sum(a, sh);
    double sb = block_sum(b, sh);
    if (threadIdx.x == 0) {
        part[(i64)c * parts + p] = sa;
        part[(i64)(C + c) * parts + p] = sb;
    }
}

// stats = [mean | invstd | sum | sq_dev] (4C floats). Writes sum and the mean it rounds
// to, exactly as core::ops::batchnorm_mean_from_sum.
extern "C" __global__ void bn_mean(i64 C, const double* part, int parts, i64 count, float* stats) {
    FOR_EACH(c, C) {
        double s = 0.0;
        for (int p = 0; p < parts; p++) s += part[c * parts + p];
        float sf = (float)s;
        stats[2 * C + c] = sf;
        stats[c] = (float)((double)sf / (double)count);
    }
}

// Writes sq_dev, then core::ops::batchnorm_update_running: mean and invstd from the raw
// sums, and `updates` times the running statistics' momentum update (unbiased var; none
// when the forward is a recomputation).
extern "C" __global__ void bn_finalize(i64 C, const double* part, int parts, i64 count, float* stats, float* running,
                                       int updates, float momentum, float eps) {
    FOR_EACH(c, C) {
        double s = 0.0;
        for (int p = 0; p < parts; p++) s += part[c * parts + p];
        float sq = (float)s;
        stats[3 * C + c] = sq;
        float sum = stats[2 * C + c];
        double cnt = (double)count;
        double unbias = count > 1 ? cnt / (cnt - 1.0) : 1.0;
        double mom = (double)momentum;
        double mean = (double)sum / cnt;
        double var = (double)sq / cnt;
        stats[c] = (float)mean;
        stats[C + c] = (float)(1.0 / sqrt(var + (double)eps));
        for (int u = 0; u < updates; u++) {
            running[c] = (float)((1.0 - mom) * (double)running[c] + mom * mean);
            running[C + c] = (float)((1.0 - mom) * (double)running[C + c] + mom * var * unbias);
        }
    }
}

// Eval mode: mean/invstd from the running statistics (core::ops::batchnorm_eval_stats).
extern "C" __global__ void bn_eval_stats(i64 C, const float* running, float* stats, float eps) {
    FOR_EACH(c, C) {
        stats[c] = running[c];
        stats[C + c] = (float)(1.0 / sqrt((double)running[C + c] + (double)eps));
    }
}

// y = (x - mean) * (invstd * gamma) + beta over n = N*C*hw values.
extern "C" __global__ void bn_forward(i64 n, const float* x, float* y, int C, i64 hw, const float* stats,
                                      const float* gamma, const float* beta) {
    FOR_EACH(i, n) {
        int c = (int)((i / hw) % C);
        float sc = stats[C + c] * gamma[c];
        y[i] = (x[i] - stats[c]) * sc + beta[c];
    }
}

// sums = [sum_dy | sum_dy_xhat]; with `weights`, grad_gamma += sum_dy_xhat and
// grad_beta += sum_dy (grad points at the gradient of gamma, beta follows).
extern "C" __global__ void bn_backward_finalize(i64 C, const double* part, int parts, const float* stats, float* sums,
                                                float* grad, int weights) {
    FOR_EACH(c, C) {
        double a = 0.0, b = 0.0;
        for (int p = 0; p < parts; p++) a += part[c * parts + p];
        for (int p = 0; p < parts; p++) b += part[(C + c) * parts + p];
        float sdy = (float)a;
        float sdyx = (float)(b * (double)stats[C + c]);
        sums[c] = sdy;
        sums[C + c] = sdyx;
        if (weights) {
            grad[c] += sdyx;
            grad[C + c] += sdy;
        }
    }
}

// dx = gamma*invstd * (dy - sum_dy/count - (x - mean) * sum_dy_xhat/count * invstd).
extern "C" __global__ void bn_backward_input(i64 n, const float* x, const float* dy, float* dx, int C, i64 hw,
                                             const float* stats, const float* gamma, const float* sums,
                                             float inv_count) {
    FOR_EACH(i, n) {
        int c = (int)((i / hw) % C);
        float invstd = stats[C + c];
        float k1 = gamma[c] * invstd;
        float a = sums[c] * inv_count;
        float b = sums[C + c] * inv_count * invstd;
        dx[i] = k1 * (dy[i] - a - (x[i] - stats[c]) * b);
    }
}

// dst[c] += sum of the parts of channel c (conv bias gradient).
extern "C" __global__ void chan_sum_add(i64 C, const double* part, int parts, float* dst) {
    FOR_EACH(c, C) {
        double s = 0.0;
        for (int p = 0; p < parts; p++) s += part[c * parts + p];
        dst[c] += (float)s;
    }
}
