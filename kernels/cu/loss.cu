// Losses with their gradients (cross-entropy, BCE, SupCon) and row L2 normalisation.
// Sums run in double; a loss value is added to its f32 slot of the loss record by one
// thread after a fixed-order reduction.

// Mean softmax cross-entropy over n rows in one block; dz = scale * gradient.
extern "C" __global__ void cross_entropy(int n, int classes, const float* z, const unsigned int* labels, float* dz,
                                         float scale, float* loss, int slot) {
    __shared__ double sh[BLOCK];
    double inv = 1.0 / (double)n;
    double g = (double)scale * inv;
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += BLOCK) {
        const float* row = z + (i64)i * classes;
        float* drow = dz + (i64)i * classes;
        int y = (int)labels[i];
        float mf = __int_as_float(0xff800000);  // -inf
        for (int c = 0; c < classes; c++) mf = fmaxf(mf, row[c]);
        double m = (double)mf;
        double s = 0.0;
        for (int c = 0; c < classes; c++) s += exp((double)row[c] - m);
        double lse = m + log(s);
        acc += lse - (double)row[y];
        double inv_s = 1.0 / s;
        for (int c = 0; c < classes; c++) {
            double p = exp((double)row[c] - m) * inv_s;
            double t = c == y ? 1.0 : 0.0;
            drow[c] = (float)(g * (p - t));
        }
    }
    double total = block_sum(acc, sh);
    if (threadIdx.x == 0) loss[slot] += (float)(total * inv);
}

// BCE on probabilities (PyTorch nn.BCELoss: logs clamped at -100, gradient denominator
// clamped at 1e-12); block p writes dp for its slice and its loss partial to part[p].
extern "C" __global__ void bce_partial(i64 len, int parts, const float* p, const float* t, float* dp, float scale,
                                       i64 mean_over, double* part) {
    __shared__ double sh[BLOCK];
    double inv = 1.0 / (double)mean_over;
    double g = (double)scale * inv;
    i64 lo, hi;
    part_range(len, blockIdx.x, parts, &lo, &hi);
    double acc = 0.0;
    for (i64 k = lo + threadIdx.x; k < hi; k += BLOCK) {
        float pk = p[k];
        double p64 = (double)pk;
        double q = (double)(1.0f - pk);  // 1 - p rounded in f32, as PyTorch
        double lp = fmax(log(p64), -100.0);
        double lq = fmax(log(q), -100.0);
        double tk = (double)t[k];
        acc -= tk * lp + (1.0 - tk) * lq;
        dp[k] = (float)(g * (p64 - tk) / fmax(p64 * q, 1e-12));
    }
    double s = block_sum(acc, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// loss[slot] += (float)(sum of part[0..parts) in order * mult); launched as one thread.
extern "C" __global__ void loss_finalize(int parts, const double* part, double mult, float* loss, int slot) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double s = 0.0;
    for (int i = 0; i < parts; i++) s += part[i];
    loss[slot] += (float)(s * mult);
}

// SupCon similarity logits s[i][j] = f_i . f_j / T (n*n items; symmetric by construction:
// the products are the same in either order).
extern "C" __global__ void supcon_sim(i64 nn, int n, int d, const float* f, float* s, double inv_t) {
    FOR_EACH(q, nn) {
        i64 i = q / n, j = q % n;
        const float* fi = f + i * d;
        const float* fj = f + j * d;
        double dot = 0.0;
        for (int k = 0; k < d; k++) dot += (double)fi[k] * (double)fj[k];
        s[q] = (float)(dot * inv_t);
    }
}

// Per anchor i: the loss term (pos_sum - P_i * lse_i) / max(P_i, 1) into term[i], and row i
// of s overwritten with G_i. = coef * ([y_j = y_i]/max(P_i,1) - [P_i > 0] softmax_{k!=i}(s_i)_j).
extern "C" __global__ void supcon_rows(i64 n, const unsigned int* labels, float* s, double* term, double coef) {
    FOR_EACH(i, n) {
        float* row = s + i * n;
        if (n < 2) {
            for (i64 j = 0; j < n; j++) row[j] = 0.0f;
            term[i] = 0.0;
            continue;
        }
        unsigned int yi = labels[i];
        double m = __longlong_as_double(0xfff0000000000000ULL);  // -inf
        i64 pos = 0;
        for (i64 j = 0; j < n; j++) {
            if (j != i) {
                m = fmax(m, (double)row[j]);
                if (labels[j] == yi) pos++;
            }
        }
        double z = 0.0, pos_sum = 0.0;
        for (i64 j = 0; j < n; j++) {
            if (j != i) {
                z += exp((double)row[j] - m);
                if (labels[j] == yi) pos_sum += (double)row[j];
            }
        }
        double lse = m + log(z);
        double denom = (double)(pos > 1 ? pos : 1);
        term[i] = (pos_sum - (double)pos * lse) / denom;
        double has_pos = pos > 0 ? 1.0 : 0.0;
        for (i64 j = 0; j < n; j++) {
            if (j == i) {
                row[j] = 0.0f;
            } else {
                double p = exp((double)row[j] - lse);
                double t = labels[j] == yi ? 1.0 / denom : 0.0;
                row[j] = (float)(coef * (t - has_pos * p));
            }
        }
    }
}

// df[i][k] = g * sum_j (G_ij + G_ji) f[j][k], one thread per (i, k), j in order.
extern "C" __global__ void supcon_grad(i64 nd, int n, int d, const float* f, const float* s, float* df, double g) {
    FOR_EACH(q, nd) {
        i64 i = q / d, k = q % d;
        double acc = 0.0;
        for (i64 j = 0; j < n; j++) {
            double wgt = (double)s[i * n + j] + (double)s[j * n + i];
            if (wgt != 0.0) acc += wgt * (double)f[j * d + k];
        }
        df[q] = (float)(g * acc);
    }
}

// y_i = x_i / max(||x_i||, 1e-12), one thread per row.
extern "C" __global__ void l2norm_forward(i64 n, int d, const float* x, float* y) {
    FOR_EACH(i, n) {
        const float* xr = x + i * d;
        float* yr = y + i * d;
        double ss = 0.0;
        for (int k = 0; k < d; k++) ss += (double)xr[k] * (double)xr[k];
        double inv = 1.0 / fmax(sqrt(ss), 1e-12);
        for (int k = 0; k < d; k++) yr[k] = (float)((double)xr[k] * inv);
    }
}

// dx_i = (dy_i - y_i (y_i . dy_i)) / r, or dy_i / eps below the clamp.
extern "C" __global__ void l2norm_backward(i64 n, int d, const float* x, const float* dy, float* dx) {
    FOR_EACH(i, n) {
        const float* xr = x + i * d;
        const float* gr = dy + i * d;
        float* dr = dx + i * d;
        double ss = 0.0;
        for (int k = 0; k < d; k++) ss += (double)xr[k] * (double)xr[k];
        double r = sqrt(ss);
        if (r >= 1e-12) {
            double inv = 1.0 / r;
            double dot = 0.0;
            for (int k = 0; k < d; k++) dot += (double)xr[k] * (double)gr[k];
            dot *= inv;
            for (int k = 0; k < d; k++) dr[k] = (float)(((double)gr[k] - (double)xr[k] * inv * dot) * inv);
        } else {
            double inv = 1.0 / 1e-12;
            for (int k = 0; k < d; k++) dr[k] = (float)((double)gr[k] * inv);
        }
    }
}
