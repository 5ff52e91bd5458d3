// Max pooling (the ImageNet stem's) and its gradient, with the core's rules: padding
// takes no part, ties go to the first maximum in the window's row-major scan, a NaN wins.
// The backward keeps no indices: it finds each window's winner again from the input.

// Input index (within an h x w plane) of the winner of output (oy, ox).
__device__ int maxpool_argmax(const float* plane, int h, int w, int k, int stride, int pad, int oy, int ox) {
    int y0 = oy * stride - pad, x0 = ox * stride - pad;
    int y1 = y0 + k < h ? y0 + k : h, x1 = x0 + k < w ? x0 + k : w;
    if (y0 < 0) y0 = 0;
    if (x0 < 0) x0 = 0;
    // Starting from the first pixel's value is the core's start from -inf: the first
    // pixel wins either way unless a later one is larger or NaN.
    int best = y0 * w + x0;
    float m = plane[best];
    for (int iy = y0; iy < y1; iy++) {
        for (int ix = x0; ix < x1; ix++) {
            float v = plane[iy * w + ix];
            if (v > m || v != v) {
                m = v;
                best = iy * w + ix;
            }
        }
    }
    return best;
}

// n = N*c*ho*wo outputs.
extern "C" __global__ void maxpool_forward(i64 n, const float* x, float* y, int h, int w, int k, int stride, int pad,
                                           int ho, int wo) {
    FOR_EACH(i, n) {
        int ox = (int)(i % wo);
        int oy = (int)((i / wo) % ho);
        const float* plane = x + (i / ((i64)ho * wo)) * ((i64)h * w);
        y[i] = plane[maxpool_argmax(plane, h, w, k, stride, pad, oy, ox)];
    }
}

// Overwrites dx as a gather: one thread per input pixel sums the dy of the windows it
// wins, in output order (rows, then columns) as the core's scatter adds them, so the
// bits match and no atomics are needed. n = N*c*h*w.
extern "C" __global__ void maxpool_backward(i64 n, const float* x, const float* dy, float* dx, int h, int w, int k,
                                            int stride, int pad, int ho, int wo) {
    FOR_EACH(i, n) {
        int ix = (int)(i % w);
        int iy = (int)((i / w) % h);
        i64 p = i / ((i64)h * w);
        const float* plane = x + p * ((i64)h * w);
        const float* g = dy + p * ((i64)ho * wo);
        int me = iy * w + ix;
        // Outputs whose window [o*stride - pad, o*stride - pad + k) holds this row/column.
        int oy0 = iy + pad - k + 1 > 0 ? (iy + pad - k + 1 + stride - 1) / stride : 0;
        int ox0 = ix + pad - k + 1 > 0 ? (ix + pad - k + 1 + stride - 1) / stride : 0;
        int oy1 = (iy + pad) / stride, ox1 = (ix + pad) / stride;
        if (oy1 > ho - 1) oy1 = ho - 1;
        if (ox1 > wo - 1) ox1 = wo - 1;
        float s = 0.0f;
        for (int oy = oy0; oy <= oy1; oy++) {
            for (int ox = ox0; ox <= ox1; ox++) {
                if (maxpool_argmax(plane, h, w, k, stride, pad, oy, ox) == me) s += g[oy * wo + ox];
            }
        }
        dx[i] = s;
    }
}
