// Elementwise activations, adds, pooling, bias helpers and the SGD step.
// Every kernel here is a grid-stride loop whose first argument is the item count.

extern "C" __global__ void fill_f32(i64 n, float* x, float v) {
    FOR_EACH(i, n) x[i] = v;
}

extern "C" __global__ void relu_inplace(i64 n, float* x) {
    FOR_EACH(i, n) {
        float v = x[i];
        x[i] = v > 0.0f ? v : 0.0f;
    }
}

// y = relu(y + x): the end of a residual block.
extern "C" __global__ void add_relu(i64 n, float* y, const float* x) {
    FOR_EACH(i, n) {
        float v = y[i] + x[i];
        y[i] = v > 0.0f ? v : 0.0f;
    }
}

extern "C" __global__ void add_assign(i64 n, float* y, const float* x) {
    FOR_EACH(i, n) y[i] += x[i];
}

// bf16 storage (--precision bf16-mixed), as the core's bf16_narrow / bf16_widen: y gets
// x rounded to nearest even (a NaN stays a quiet NaN) and x is rounded in place to the
// same value, so the forward goes on from what the backward will read back.
extern "C" __global__ void bf16_narrow(i64 n, float* x, unsigned short* y) {
    FOR_EACH(i, n) {
        unsigned int u = __float_as_uint(x[i]);
        unsigned int h = (u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        y[i] = (unsigned short)h;
        x[i] = __uint_as_float(h << 16);
    }
}

// Exact; a NaN comes back quiet (as the half crate widens one).
extern "C" __global__ void bf16_widen(i64 n, const unsigned short* x, float* y) {
    FOR_EACH(i, n) {
        unsigned int u = x[i];
        y[i] = __uint_as_float(((u & 0x7fffu) > 0x7f80u ? u | 0x40u : u) << 16);
    }
}

// f16 storage (--precision 16-mixed), as the core's f16_narrow / f16_widen (F16C's and the
// half crate's bits), in integer arithmetic so that every device and the emulator agree:
// round to nearest even; 65520 and above overflow to infinity; below 2^-14 the subnormals
// (m·2^-24), below 2^-25 zero; a NaN stays a quiet NaN with its payload's top bits.
__device__ unsigned int f16_bits(float v) {
    unsigned int u = __float_as_uint(v), s = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return s | 0x7e00u | ((a & 0x7fffffu) >> 13);
    if (a >= 0x477ff000u) return s | 0x7c00u;
    if (a >= 0x38800000u) {
        unsigned int r = a - 0x38000000u;  // exponent rebiased from 127 to 15
        return s | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
    }
    if (a < 0x33000000u) return s;
    unsigned int shift = 126u - (a >> 23), m = (a & 0x7fffffu) | 0x800000u;
    unsigned int q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    return s | (q + (rem > half || (rem == half && (q & 1u)) ? 1u : 0u));
}

__device__ float f16_value(unsigned int h) {
    unsigned int s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return __uint_as_float(s | (m ? 0x7fc00000u : 0x7f800000u) | (m << 13));
    if (e != 0u) return __uint_as_float(s | ((e + 112u) << 23) | (m << 13));
    float r = (float)m * 5.9604644775390625e-8f;  // m·2^-24, exact
    return s ? -r : r;
}

extern "C" __global__ void f16_narrow(i64 n, float* x, unsigned short* y) {
    FOR_EACH(i, n) {
        unsigned int h = f16_bits(x[i]);
        y[i] = (unsigned short)h;
        x[i] = f16_value(h);
    }
}

extern "C" __global__ void f16_widen(i64 n, const unsigned short* x, float* y) {
    FOR_EACH(i, n) y[i] = f16_value(x[i]);
}

// Overflow-free logistic, the same two branches as the core.
extern "C" __global__ void sigmoid_forward(i64 n, const float* x, float* y) {
    FOR_EACH(i, n) {
        float v = x[i];
        if (v >= 0.0f) {
            y[i] = 1.0f / (1.0f + expf(-v));
        } else {
            float e = expf(v);
            y[i] = e / (1.0f + e);
        }
    }
}

extern "C" __global__ void sigmoid_backward(i64 n, const float* y, const float* dy, float* dx) {
    FOR_EACH(i, n) {
        float v = y[i];
        dx[i] = dy[i] * v * (1.0f - v);
    }
}

// dy <- dy * [y > 0] in place (y is the ReLU's output).
extern "C" __global__ void relu_backward(i64 n, const float* y, float* dy) {
    FOR_EACH(i, n) {
        if (!(y[i] > 0.0f)) dy[i] = 0.0f;
    }
}

// y = x * std[ch] + mean[ch]: the de-normalised image (at most 4 channels).
extern "C" __global__ void restore(i64 n, const float* x, float* y, int c, i64 hw, float m0, float m1, float m2,
                                   float m3, float s0, float s1, float s2, float s3) {
    FOR_EACH(i, n) {
        int ch = (int)((i / hw) % c);
        float m = ch == 0 ? m0 : ch == 1 ? m1 : ch == 2 ? m2 : m3;
        float s = ch == 0 ? s0 : ch == 1 ? s1 : ch == 2 ? s2 : s3;
        y[i] = x[i] * s + m;
    }
}

// y[i][o] += b[o] over a row-major rows x cols matrix (n = rows * cols).
extern "C" __global__ void add_row_bias(i64 n, float* y, const float* b, int cols) {
    FOR_EACH(i, n) y[i] += b[i % cols];
}

// db[o] += sum over rows of dy[r][o], one thread per column, rows in order (f64).
extern "C" __global__ void col_sum_add(i64 cols, const float* dy, float* db, int rows) {
    FOR_EACH(o, cols) {
        double acc = 0.0;
        for (int r = 0; r < rows; r++) acc += (double)dy[(i64)r * cols + o];
        db[o] += (float)acc;
    }
}

// Global average pooling: one thread per (image, channel) plane, summed in order (f64).
extern "C" __global__ void pool_forward(i64 planes, const float* x, float* y, i64 hw) {
    FOR_EACH(p, planes) {
        const float* xp = x + p * hw;
        double acc = 0.0;
        for (i64 k = 0; k < hw; k++) acc += (double)xp[k];
        y[p] = (float)(acc * (1.0 / (double)hw));
    }
}

extern "C" __global__ void pool_backward(i64 n, const float* dy, float* dx, i64 hw) {
    float inv = 1.0f / (float)hw;
    FOR_EACH(i, n) dx[i] = dy[i / hw] * inv;
}

// One SGD step (PyTorch's rounding, as core::optim::sgd_step): `step` holds
// [lr, momentum, weight_decay, nesterov] in device memory so a replayed graph sees
// each step's values. The __f*_rn intrinsics keep the unfused multiply-then-add
// where the core rounds twice.
extern "C" __global__ void sgd_step(i64 n, float* p, const float* g, float* mom, const float* step) {
    float lr = step[0], m = step[1], wd = step[2];
    bool nesterov = step[3] != 0.0f;
    FOR_EACH(i, n) {
        float pv = p[i];
        float d = g[i];
        if (wd != 0.0f) d = fmaf(pv, wd, d);
        if (m != 0.0f) {
            float nb = __fadd_rn(__fmul_rn(m, mom[i]), d);
            mom[i] = nb;
            d = nesterov ? fmaf(nb, m, d) : nb;
        }
        p[i] = fmaf(d, -lr, pv);
    }
}

// loss[slot] = 1 if any of the n gradients is NaN or infinite (else it keeps the 0 that
// BeginStep wrote). Threads that find one all store the same value, so the result does
// not depend on which of them writes last.
extern "C" __global__ void flag_nonfinite(i64 n, const float* g, float* loss, int slot) {
    FOR_EACH(i, n) {
        if (!isfinite(g[i])) loss[slot] = 1.0f;
    }
}
