// Normalisations, forward and backward, fp32 statistics:
//   * LayerNorm over the last dim (optional affine weight/bias): y = (x - mean) * rstd * w + b.
//   * RMSNorm over the last dim (full width; the DiT q/k norm across heads, T5): y = x * rstd * w,
//     rstd = (mean(x^2) + eps)^-1/2.
//   * Channel RMS norm of the Wan VAE over dim 1 of [B, C, S]: y = x / max(||x||_2, 1e-12) * sqrt(C) * gamma[c].
//
// Layout: x, y, dy, dx contiguous row-major; rows = numel / D for the last-dim norms.
// Launch: row kernels one block of 256 threads per row (grid = rows); `norm_param_grads` grid
// (ceil(D/256), chunks) x 256; channel kernels one thread per (b, s) (grid ceil(B*S/256) x 256), and
// `rms_norm_channel_dgamma` one block of 256 threads per channel.

// LayerNorm forward; has_w / has_b select the affine parts.
extern "C" __global__ void layer_norm_fwd(const void* x, int xdt, const void* w, int wdt, const void* b, int bdt,
                                          void* y, int ydt, i64 D, float eps, int has_w, int has_b) {
    __shared__ float sh[32];
    i64 row = blockIdx.x;
    i64 base = row * D;
    float s = 0.f;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) s += ld(x, xdt, base + j);
    float mean = block_sum(s, sh) / (float)D;
    float v = 0.f;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        float c = ld(x, xdt, base + j) - mean;
        v += c * c;
    }
    float rstd = rsqrtf(block_sum(v, sh) / (float)D + eps);
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        float o = (ld(x, xdt, base + j) - mean) * rstd;
        if (has_w) o *= ld(w, wdt, j);
        if (has_b) o += ld(b, bdt, j);
        st(y, ydt, base + j, o);
    }
}

// LayerNorm backward for dx (f32): with g = dy * w (or dy) and yh = (x - mean) * rstd,
// dx = rstd * (g - mean(g) - yh * mean(g * yh)). Also writes the row statistics mean[row], rstd[row] for
// `norm_param_grads`.
extern "C" __global__ void layer_norm_bwd(const void* x, int xdt, const void* w, int wdt, const void* dy, int dydt,
                                          float* dx, float* mean_out, float* rstd_out, i64 D, float eps,
                                          int has_w) {
    __shared__ float sh[32];
    i64 row = blockIdx.x;
    i64 base = row * D;
    float s = 0.f;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) s += ld(x, xdt, base + j);
    float mean = block_sum(s, sh) / (float)D;
    float v = 0.f;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        float c = ld(x, xdt, base + j) - mean;
        v += c * c;
    }
    float rstd = rsqrtf(block_sum(v, sh) / (float)D + eps);
    float sg = 0.f, sgy = 0.f;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        float g = ld(dy, dydt, base + j);
        if (has_w) g *= ld(w, wdt, j);
        float yh = (ld(x, xdt, base + j) - mean) * rstd;
        sg += g;
        sgy += g * yh;
    }
    float mg = block_sum(sg, sh) / (float)D;
    float mgy = block_sum(sgy, sh) / (float)D;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        float g = ld(dy, dydt, base + j);
        if (has_w) g *= ld(w, wdt, j);
        float yh = (ld(x, xdt, base + j) - mean) * rstd;
        dx[base + j] = rstd * (g - mg - yh * mgy);
    }
    if (threadIdx.x == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

// RMSNorm forward.
extern "C" __global__ void rms_norm_fwd(const void* x, int xdt, const void* w, int wdt, void* y, int ydt, i64 D,
                                        float eps) {
    __shared__ float sh[32];
    i64 base = (i64)blockIdx.x * D;
    float s = 0.f;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        float v = ld(x, xdt, base + j);
        s += v * v;
    }
    float r = rsqrtf(block_sum(s, sh) / (float)D + eps);
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) st(y, ydt, base + j, ld(x, xdt, base + j) * r * ld(w, wdt, j));
}

// RMSNorm backward for dx (f32): r = rstd, dx = r * (dy*w - x * r^2 * mean(dy*w*x)); writes rstd_out[row].
extern "C" __global__ void rms_norm_bwd(const void* x, int xdt, const void* w, int wdt, const void* dy, int dydt,
                                        float* dx, float* rstd_out, i64 D, float eps) {
    __shared__ float sh[32];
    i64 row = blockIdx.x;
    i64 base = row * D;
    float s = 0.f, dot = 0.f;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        float v = ld(x, xdt, base + j);
        s += v * v;
        dot += ld(dy, dydt, base + j) * ld(w, wdt, j) * v;
    }
    float r = rsqrtf(block_sum(s, sh) / (float)D + eps);
    float md = block_sum(dot, sh) / (float)D;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        float v = ld(x, xdt, base + j);
        dx[base + j] = r * (ld(dy, dydt, base + j) * ld(w, wdt, j) - v * r * r * md);
    }
    if (threadIdx.x == 0) rstd_out[row] = r;
}

// Parameter gradients of LayerNorm / RMSNorm over row chunks (finished by col_sum_partial over the chunks):
//   dw_part[chunk, j] = sum_rows dy[r, j] * (x[r, j] - mean[r]) * rstd[r]   (mean = 0 when mean == NULL)
//   db_part[chunk, j] = sum_rows dy[r, j]                                    (skipped when db_part == NULL)
extern "C" __global__ void norm_param_grads(const void* x, int xdt, const void* dy, int dydt, const float* mean,
                                            const float* rstd, float* dw_part, float* db_part, i64 rows, i64 D,
                                            i64 rows_per_chunk) {
    i64 j = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 chunk = blockIdx.y;
    if (j >= D) return;
    i64 r0 = chunk * rows_per_chunk;
    i64 r1 = min(rows, r0 + rows_per_chunk);
    float aw = 0.f, ab = 0.f;
    for (i64 r = r0; r < r1; ++r) {
        float g = ld(dy, dydt, r * D + j);
        float m = mean ? mean[r] : 0.f;
        aw += g * (ld(x, xdt, r * D + j) - m) * rstd[r];
        ab += g;
    }
    dw_part[chunk * D + j] = aw;
    if (db_part) db_part[chunk * D + j] = ab;
}

#define CHANNEL_NORM_EPS 1e-12f

// Channel RMS norm forward over dim 1 of x [B, C, S].
extern "C" __global__ void rms_norm_channel_fwd(const void* x, int xdt, const void* gamma, int gdt, void* y,
                                                int ydt, i64 B, i64 C, i64 S) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= B * S) return;
    i64 b = t / S, s = t % S;
    float acc = 0.f;
    for (i64 c = 0; c < C; ++c) {
        float v = ld(x, xdt, (b * C + c) * S + s);
        acc += v * v;
    }
    float n = fmaxf(sqrtf(acc), CHANNEL_NORM_EPS);
    float sc = sqrtf((float)C);
    for (i64 c = 0; c < C; ++c) {
        i64 i = (b * C + c) * S + s;
        st(y, ydt, i, ld(x, xdt, i) / n * (sc * ld(gamma, gdt, c)));
    }
}

// Channel RMS norm backward for dx (f32): g = dy * gamma * sqrt(C), n = ||x||,
// dx = g/n - x * (sum_c g x) / n^3 where n > 1e-12, else g / 1e-12. Writes the clamped norms [B, S].
extern "C" __global__ void rms_norm_channel_bwd(const void* x, int xdt, const void* gamma, int gdt, const void* dy,
                                                int dydt, float* dx, float* norms, i64 B, i64 C, i64 S) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= B * S) return;
    i64 b = t / S, s = t % S;
    float sc = sqrtf((float)C);
    float acc = 0.f, dot = 0.f;
    for (i64 c = 0; c < C; ++c) {
        i64 i = (b * C + c) * S + s;
        float v = ld(x, xdt, i);
        acc += v * v;
        dot += ld(dy, dydt, i) * ld(gamma, gdt, c) * sc * v;
    }
    float n = fmaxf(sqrtf(acc), CHANNEL_NORM_EPS);
    bool above = n > CHANNEL_NORM_EPS;
    for (i64 c = 0; c < C; ++c) {
        i64 i = (b * C + c) * S + s;
        float g = ld(dy, dydt, i) * ld(gamma, gdt, c) * sc;
        dx[i] = above ? g / n - ld(x, xdt, i) * dot / (n * n * n) : g / CHANNEL_NORM_EPS;
    }
    norms[t] = n;
}

// dgamma[c] = sqrt(C) * sum_{b,s} dy * x / norms[b, s]; one block of 256 threads per channel.
extern "C" __global__ void rms_norm_channel_dgamma(const void* x, int xdt, const void* dy, int dydt,
                                                   const float* norms, float* dgamma, i64 B, i64 C, i64 S) {
    __shared__ float sh[32];
    i64 c = blockIdx.x;
    float acc = 0.f;
    for (i64 t = threadIdx.x; t < B * S; t += blockDim.x) {
        i64 b = t / S, s = t % S;
        i64 i = (b * C + c) * S + s;
        acc += ld(dy, dydt, i) * ld(x, xdt, i) / norms[t];
    }
    float tot = block_sum(acc, sh);
    if (threadIdx.x == 0) dgamma[c] = tot * sqrtf((float)C);
}
