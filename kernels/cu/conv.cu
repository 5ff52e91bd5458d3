// Convolution helpers around cuBLAS SGEMM, on a chunk of G images at a time.
//
// The column matrix of a chunk is [c_in*k*k][G*hw_out] (row-major), so one GEMM covers
// G images. GEMM outputs are [c_out][G*hw_out] and are transposed to NCHW here.
// col2im is a gather: each input pixel sums the column entries that read it, in the
// core's (kh, kw) order, so it needs no atomics and its bits are fixed.

// col[r][g*hw + oy*wo + ox] with r = (ci*k + kh)*k + kw; x points at the chunk's first image.
extern "C" __global__ void im2col(i64 n, const float* x, float* col, int c_in, int h, int w, int k, int stride,
                                  int pad, int wo, i64 hw, int G) {
    FOR_EACH(i, n) {
        i64 cols = (i64)G * hw;
        i64 r = i / cols;
        i64 q = i - r * cols;
        i64 g = q / hw;
        i64 pix = q - g * hw;
        int oy = (int)(pix / wo), ox = (int)(pix % wo);
        int ci = (int)(r / (k * k));
        int kk = (int)(r % (k * k));
        int kh = kk / k, kw = kk % k;
        int iy = oy * stride + kh - pad;
        int ix = ox * stride + kw - pad;
        float v = 0.0f;
        if (iy >= 0 && iy < h && ix >= 0 && ix < w) v = x[((g * c_in + ci) * h + iy) * (i64)w + ix];
        col[i] = v;
    }
}

// y[g][co][p] = rows[co][g*hw + p] (+ bias[co] when bias is not null); n = G*c_out*hw.
extern "C" __global__ void rows_to_nchw(i64 n, const float* rows, float* y, const float* bias, int c_out, i64 hw,
                                        int G) {
    FOR_EACH(i, n) {
        i64 per = (i64)c_out * hw;
        i64 g = i / per;
        i64 q = i - g * per;
        i64 co = q / hw;
        i64 p = q - co * hw;
        float v = rows[co * ((i64)G * hw) + g * hw + p];
        y[i] = bias ? v + bias[co] : v;
    }
}

// rows[co][g*hw + p] = dy[g][co][p]; n = G*c_out*hw.
extern "C" __global__ void nchw_to_rows(i64 n, const float* dy, float* rows, int c_out, i64 hw, int G) {
    FOR_EACH(i, n) {
        i64 per = (i64)c_out * hw;
        i64 g = i / per;
        i64 q = i - g * per;
        i64 co = q / hw;
        i64 p = q - co * hw;
        rows[co * ((i64)G * hw) + g * hw + p] = dy[i];
    }
}

// dx[g][ci][iy][ix] = sum over (kh, kw) of dcol[(ci*k+kh)*k+kw][g*hw + oy*wo + ox] with
// oy*stride + kh - pad = iy and ox*stride + kw - pad = ix; overwrites dx. n = G*c_in*h*w.
extern "C" __global__ void col2im(i64 n, const float* dcol, float* dx, int c_in, int h, int w, int k, int stride,
                                  int pad, int ho, int wo, int G) {
    FOR_EACH(i, n) {
        i64 hw_in = (i64)h * w;
        i64 plane = i / hw_in;
        int pix = (int)(i - plane * hw_in);
        int ci = (int)(plane % c_in);
        i64 g = plane / c_in;
        int iy = pix / w, ix = pix % w;
        i64 hw = (i64)ho * wo;
        i64 cols = (i64)G * hw;
        float v = 0.0f;
        for (int kh = 0; kh < k; kh++) {
            int ty = iy + pad - kh;
            if (ty < 0 || ty % stride != 0) continue;
            int oy = ty / stride;
            if (oy >= ho) continue;
            for (int kw = 0; kw < k; kw++) {
                int tx = ix + pad - kw;
                if (tx < 0 || tx % stride != 0) continue;
                int ox = tx / stride;
                if (ox >= wo) continue;
                v += dcol[(i64)((ci * k + kh) * k + kw) * cols + g * hw + (i64)oy * wo + ox];
            }
        }
        dx[i] = v;
    }
}
