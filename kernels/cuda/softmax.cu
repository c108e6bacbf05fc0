// Softmax over the last dim (max-subtracted), forward and backward from the output.
//   forward:  y = exp(x - max) / sum exp(x - max)
//   backward: dx = y * (dy - sum(dy * y))   (dx in f32)
// Layout: contiguous row-major [rows, D]. Launch: one block of 256 threads per row (grid = rows).

extern "C" __global__ void softmax_fwd(const void* x, int xdt, void* y, int ydt, i64 D) {
    __shared__ float sh[32];
    i64 base = (i64)blockIdx.x * D;
    float m = NEG_INF;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) m = fmaxf(m, ld(x, xdt, base + j));
    m = block_max(m, sh);
    float s = 0.f;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) s += expf(ld(x, xdt, base + j) - m);
    float inv = 1.f / block_sum(s, sh);
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) st(y, ydt, base + j, expf(ld(x, xdt, base + j) - m) * inv);
}

extern "C" __global__ void softmax_bwd(const void* y, int ydt, const void* dy, int dydt, float* dx, i64 D) {
    __shared__ float sh[32];
    i64 base = (i64)blockIdx.x * D;
    float dot = 0.f;
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) dot += ld(y, ydt, base + j) * ld(dy, dydt, base + j);
    dot = block_sum(dot, sh);
    for (i64 j = threadIdx.x; j < D; j += blockDim.x) {
        dx[base + j] = ld(y, ydt, base + j) * (ld(dy, dydt, base + j) - dot);
    }
}
