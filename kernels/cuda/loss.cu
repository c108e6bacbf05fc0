// Mean-squared-error loss and squared-norm reductions (grad-norm), fp64 accumulation.
//   sq_diff_partial: part[blk] = sum over elements blk*chunk .. min(n, (blk+1)*chunk) of (p - t)^2
//                    (or p^2 when has_t == 0), one block of 256 threads per chunk, block reduction in f64;
//                    the host adds the partials in block order, so the result is deterministic.
//   mse_bwd:         dp = k * (p - t), k = 2 * dloss / n (f32 output).
// Layout: contiguous buffers. Launch: `sq_diff_partial` grid ceil(n/chunk) x 256; `mse_bwd` grid-stride x 256.

extern "C" __global__ void sq_diff_partial(const void* p, int pdt, const void* t, int tdt, int has_t, double* part,
                                           i64 n, i64 chunk) {
    __shared__ double sh[32];
    i64 i0 = (i64)blockIdx.x * chunk;
    i64 i1 = min(n, i0 + chunk);
    double acc = 0.0;
    for (i64 i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
        double d = (double)ld(p, pdt, i) - (has_t ? (double)ld(t, tdt, i) : 0.0);
        acc += d * d;
    }
    double tot = block_sum_f64(acc, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = tot;
}

extern "C" __global__ void mse_bwd(const void* p, int pdt, const void* t, int tdt, float* dp, float k, i64 n) {
    GRID_STRIDE(i, n) { dp[i] = k * (ld(p, pdt, i) - ld(t, tdt, i)); }
}
