// Bilinear resize (align_corners = true) of a window of each map, its backward, and crop.
// Window: c channels of an h x w map, rows y0..y0+ph, columns x0..x0+pw, resized to oh x ow.

// Source taps of output index o along one axis, with the core's f32 arithmetic.
__device__ __forceinline__ void taps(int inp, int out, int o, int* i0, int* i1, float* l0, float* l1) {
    float scale = out > 1 ? (float)(inp - 1) / (float)(out - 1) : 0.0f;
    float src = scale * (float)o;
    int a = (int)src;
    if (a > inp - 1) a = inp - 1;
    *i0 = a;
    *i1 = a < inp - 1 ? a + 1 : a;
    float f = src - (float)a;
    f = f < 0.0f ? 0.0f : (f > 1.0f ? 1.0f : f);
    *l1 = f;
    *l0 = 1.0f - f;
}

// First output index whose first tap is >= v (taps are monotone in o), `out` if none.
__device__ int first_tap_ge(int inp, int out, int v) {
    int lo = 0, hi = out;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        int a, b;
        float l0, l1;
        taps(inp, out, mid, &a, &b, &l0, &l1);
        if (a >= v) hi = mid; else lo = mid + 1;
    }
    return lo;
}

// n = N*c*oh*ow outputs.
extern "C" __global__ void resize_forward(i64 n, const float* x, float* y, int c, int h, int w, int y0, int x0,
                                          int ph, int pw, int oh, int ow) {
    FOR_EACH(i, n) {
        int ox = (int)(i % ow);
        int oy = (int)((i / ow) % oh);
        i64 plane = i / ((i64)oh * ow);  // img * c + ch
        const float* xp = x + plane * ((i64)h * w);
        int r0, r1, c0, c1;
        float h0, h1, w0, w1;
        taps(ph, oh, oy, &r0, &r1, &h0, &h1);
        taps(pw, ow, ox, &c0, &c1, &w0, &w1);
        const float* row0 = xp + (i64)(y0 + r0) * w + x0;
        const float* row1 = xp + (i64)(y0 + r1) * w + x0;
        y[i] = h0 * (w0 * row0[c0] + w1 * row0[c1]) + h1 * (w0 * row1[c0] + w1 * row1[c1]);
    }
}

// Column block of the core's scatter loop; the gather visits contributions in the same
// order (column block, row, column, then the four taps) so the sums round the same way.
#define TAP_BLOCK 128

// Adds the resize gradient into the window of dx as a gather: one thread per window
// pixel sums the outputs that read it. n = N*c*ph*pw; pixels outside the window are
// untouched, so tiled or overlapping windows accumulate across launches.
extern "C" __global__ void resize_backward(i64 n, const float* dy, float* dx, int c, int h, int w, int y0, int x0,
                                           int ph, int pw, int oh, int ow) {
    FOR_EACH(i, n) {
        int rx = (int)(i % pw);
        int ry = (int)((i / pw) % ph);
        i64 plane = i / ((i64)ph * pw);
        const float* gp = dy + plane * ((i64)oh * ow);
        float* d = dx + plane * ((i64)h * w) + (i64)(y0 + ry) * w + (x0 + rx);
        // Outputs whose first tap is ry-1 or ry are the only ones that can read ry.
        int ylo = first_tap_ge(ph, oh, ry - 1), yhi = first_tap_ge(ph, oh, ry + 1);
        int xlo = first_tap_ge(pw, ow, rx - 1), xhi = first_tap_ge(pw, ow, rx + 1);
        float v = *d;
        for (int b0 = (xlo / TAP_BLOCK) * TAP_BLOCK; b0 < xhi; b0 += TAP_BLOCK) {
            int bl = xlo > b0 ? xlo : b0;
            int bh = xhi < b0 + TAP_BLOCK ? xhi : b0 + TAP_BLOCK;
            for (int oy = ylo; oy < yhi; oy++) {
                int r0, r1;
                float h0, h1;
                taps(ph, oh, oy, &r0, &r1, &h0, &h1);
                if (r0 != ry && r1 != ry) continue;
                for (int ox = bl; ox < bh; ox++) {
                    int c0, c1;
                    float w0, w1;
                    taps(pw, ow, ox, &c0, &c1, &w0, &w1);
                    if (c0 != rx && c1 != rx) continue;
                    float g = gp[(i64)oy * ow + ox];
                    if (r0 == ry && c0 == rx) v = __fadd_rn(v, __fmul_rn(__fmul_rn(h0, w0), g));
                    if (r0 == ry && c1 == rx) v = __fadd_rn(v, __fmul_rn(__fmul_rn(h0, w1), g));
                    if (r1 == ry && c0 == rx) v = __fadd_rn(v, __fmul_rn(__fmul_rn(h1, w0), g));
                    if (r1 == ry && c1 == rx) v = __fadd_rn(v, __fmul_rn(__fmul_rn(h1, w1), g));
                }
            }
        }
        *d = v;
    }
}

// Copies the (oh x ow == ph x pw) window out; n = N*c*oh*ow.
extern "C" __global__ void crop_forward(i64 n, const float* x, float* y, int h, int w, int y0, int x0, int oh,
                                        int ow) {
    FOR_EACH(i, n) {
        int ox = (int)(i % ow);
        int oy = (int)((i / ow) % oh);
        i64 plane = i / ((i64)oh * ow);
        y[i] = x[plane * ((i64)h * w) + (i64)(y0 + oy) * w + x0 + ox];
    }
}
