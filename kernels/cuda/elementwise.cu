// Elementwise kernels: strided copy/cast, broadcast binary ops, scale, fill, bias add, column sums, pointwise
// activations (SiLU, GELU tanh/erf, clamp; forward and backward), embedding gather/scatter, adaLN modulation
// x*(1+scale)+shift (forward and backward).
//
// Layout: `Strided` descriptors (common.cuh) describe arbitrary views (permutes, narrows, broadcasts) over the
// row-major output index; all other buffers are contiguous row-major.
// Launch: 1-D grid-stride (any grid, 256 threads), except `col_sum_partial` (grid (ceil(cols/256), chunks),
// 256 threads) and `modulate_bwd_params` (grid ceil(B*D/256), 256 threads).

// y[i] = x[view(i)] converted from xdt to ydt; y contiguous with n elements.
extern "C" __global__ void copy_strided(const void* x, int xdt, Strided xs, void* y, int ydt, i64 n) {
    GRID_STRIDE(i, n) { st(y, ydt, i, ld(x, xdt, strided_index(xs, i))); }
}

// y[view ys(i)] = x[view xs(i)] converted from xdt to ydt, for the row-major index i < n over the shape both
// views share: a copy into a strided destination (cat writes each piece into its slice of the output).
extern "C" __global__ void copy_into_strided(const void* x, int xdt, Strided xs, void* y, int ydt, Strided ys,
                                             i64 n) {
    GRID_STRIDE(i, n) { st(y, ydt, strided_index(ys, i), ld(x, xdt, strided_index(xs, i))); }
}

// y[o] = sum over k < m of x[keep(o) + red(k)]: `keep` maps each output element to its first input element
// (stride 0 / size 1 on the summed dims), `red` (offset 0) spans the summed dims. One thread per output,
// summing in k order (deterministic). sum_to_shape and upsample_nearest_backward.
extern "C" __global__ void sum_reduce(const void* x, int xdt, Strided keep, Strided red, float* y, i64 n, i64 m) {
    GRID_STRIDE(o, n) {
        i64 base = strided_index(keep, o);
        float acc = 0.f;
        for (i64 k = 0; k < m; ++k) acc += ld(x, xdt, base + strided_index(red, k));
        y[o] = acc;
    }
}

// y = a (op) b over the broadcast output shape (op: 0 add, 1 sub, 2 mul); as/bs map the output index to each
// operand (stride 0 on broadcast dims).
extern "C" __global__ void binary_bcast(const void* a, int adt, Strided as, const void* b, int bdt, Strided bs,
                                        void* y, int ydt, i64 n, int op) {
    GRID_STRIDE(i, n) {
        float u = ld(a, adt, strided_index(as, i));
        float v = ld(b, bdt, strided_index(bs, i));
        float r = op == 0 ? u + v : (op == 1 ? u - v : u * v);
        st(y, ydt, i, r);
    }
}

// y = s * x (contiguous).
extern "C" __global__ void scale_kernel(const void* x, int xdt, void* y, int ydt, float s, i64 n) {
    GRID_STRIDE(i, n) { st(y, ydt, i, s * ld(x, xdt, i)); }
}

// In-place x *= s for an f32 buffer (gradient clipping).
extern "C" __global__ void scale_inplace_f32(float* x, float s, i64 n) {
    GRID_STRIDE(i, n) { x[i] *= s; }
}

// y[i] = v.
extern "C" __global__ void fill(void* y, int ydt, float v, i64 n) {
    GRID_STRIDE(i, n) { st(y, ydt, i, v); }
}

// y[r, c] += b[c] for a row-major [rows, cols] buffer (linear / conv bias).
extern "C" __global__ void add_bias_rows(void* y, int ydt, const void* b, int bdt, i64 cols, i64 n) {
    GRID_STRIDE(i, n) { st(y, ydt, i, ld(y, ydt, i) + ld(b, bdt, i % cols)); }
}

// Column sums of a row-major [rows, cols] matrix over row chunks: part[chunk, c] = sum of rows
// chunk*rows_per_chunk .. min(rows, (chunk+1)*rows_per_chunk) of column c, in row order (deterministic).
// Grid (ceil(cols/256), chunks), block 256. Calling it again on `part` (rows = chunks) finishes the sum.
extern "C" __global__ void col_sum_partial(const void* x, int xdt, float* part, i64 rows, i64 cols,
                                           i64 rows_per_chunk) {
    i64 c = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    i64 chunk = blockIdx.y;
    if (c >= cols) return;
    i64 r0 = chunk * rows_per_chunk;
    i64 r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.f;
    for (i64 r = r0; r < r1; ++r) acc += ld(x, xdt, r * cols + c);
    part[chunk * cols + c] = acc;
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }

// Pointwise activations, selected by `kind` (uniform across a launch):
#define ACT_SILU 0       // x * sigmoid(x)
#define ACT_GELU_TANH 1  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
#define ACT_GELU_ERF 2   // 0.5 x (1 + erf(x / sqrt(2)))
#define ACT_CLAMP 3      // min(max(x, lo), hi); NaN stays NaN
#define GELU_K0 0.7978845608028654f
#define GELU_K1 0.044715f
#define INV_SQRT2 0.7071067811865476f
#define INV_SQRT_2PI 0.3989422804014327f

__device__ __forceinline__ float act_value(int kind, float v, float lo, float hi) {
    switch (kind) {
        case ACT_SILU: return v * sigmoidf_(v);
        case ACT_GELU_TANH: return 0.5f * v * (1.f + tanhf(GELU_K0 * (v + GELU_K1 * v * v * v)));
        case ACT_GELU_ERF: return 0.5f * v * (1.f + erff(v * INV_SQRT2));
        default: return v != v ? v : fminf(fmaxf(v, lo), hi);  // NaN stays NaN, as in torch.clamp
    }
}

// d act / dx at v (clamp: 1 strictly inside (lo, hi), else 0).
__device__ __forceinline__ float act_grad(int kind, float v, float lo, float hi) {
    switch (kind) {
        case ACT_SILU: {
            float s = sigmoidf_(v);
            return s * (1.f + v * (1.f - s));
        }
        case ACT_GELU_TANH: {
            float t = tanhf(GELU_K0 * (v + GELU_K1 * v * v * v));
            return 0.5f * (1.f + t) + 0.5f * v * (1.f - t * t) * GELU_K0 * (1.f + 3.f * GELU_K1 * v * v);
        }
        case ACT_GELU_ERF: return 0.5f * (1.f + erff(v * INV_SQRT2)) + v * INV_SQRT_2PI * expf(-0.5f * v * v);
        default: return (v > lo && v < hi) ? 1.f : 0.f;
    }
}

extern "C" __global__ void act_fwd(const void* x, int xdt, void* y, int ydt, i64 n, int kind, float lo, float hi) {
    GRID_STRIDE(i, n) { st(y, ydt, i, act_value(kind, ld(x, xdt, i), lo, hi)); }
}

// dx = dy * act'(x).
extern "C" __global__ void act_bwd(const void* x, int xdt, const void* dy, int dydt, void* dx, int dxdt, i64 n,
                                   int kind, float lo, float hi) {
    GRID_STRIDE(i, n) { st(dx, dxdt, i, ld(dy, dydt, i) * act_grad(kind, ld(x, xdt, i), lo, hi)); }
}

// Embedding lookup: y[r, c] = table[ids[r], c] for a row-major [V, d] table; n = rows * d.
extern "C" __global__ void embedding_gather(const void* table, int tdt, const i64* ids, void* y, int ydt, i64 d,
                                            i64 n) {
    GRID_STRIDE(i, n) {
        i64 r = i / d, c = i % d;
        st(y, ydt, i, ld(table, tdt, ids[r] * d + c));
    }
}

// Embedding backward without atomics: `plan` holds, for u uniq ids, [uniq ids (u) | starts (u + 1) | rows (m)],
// the rows of each id listed in increasing order. dtable[uniq[k], c] = sum over its rows r of dy[r, c], in row
// order (deterministic, the CPU's order). Rows of ids that never occur are left as they are (zero-filled by the
// caller). n = u * d.
extern "C" __global__ void embedding_scatter(const void* dy, int dydt, const i64* plan, i64 u, float* dtable, i64 d,
                                             i64 n) {
    const i64* uniq = plan;
    const i64* starts = plan + u;
    const i64* rows = plan + 2 * u + 1;
    GRID_STRIDE(i, n) {
        i64 k = i / d, c = i % d;
        float acc = 0.f;
        for (i64 j = starts[k]; j < starts[k + 1]; ++j) acc += ld(dy, dydt, rows[j] * d + c);
        dtable[uniq[k] * d + c] = acc;
    }
}

// y[b, l, d] = x[b, l, d] * (1 + scale[b, d]) + shift[b, d]; x contiguous [B, L, D], n = B*L*D.
extern "C" __global__ void modulate_fwd(const void* x, int xdt, const void* shift, int shdt, const void* scale,
                                        int scdt, void* y, int ydt, i64 L, i64 D, i64 n) {
    GRID_STRIDE(i, n) {
        i64 b = i / (L * D), d = i % D;
        float s = ld(scale, scdt, b * D + d), h = ld(shift, shdt, b * D + d);
        st(y, ydt, i, ld(x, xdt, i) * (1.f + s) + h);
    }
}

// dx = dy * (1 + scale[b, d]).
extern "C" __global__ void modulate_bwd_dx(const void* dy, int dydt, const void* scale, int scdt, void* dx,
                                           int dxdt, i64 L, i64 D, i64 n) {
    GRID_STRIDE(i, n) {
        i64 b = i / (L * D), d = i % D;
        st(dx, dxdt, i, ld(dy, dydt, i) * (1.f + ld(scale, scdt, b * D + d)));
    }
}

// dshift[b, d] = sum_l dy[b, l, d]; dscale[b, d] = sum_l dy[b, l, d] * x[b, l, d] (f32, token order).
// One thread per (b, d): grid ceil(B*D/256), block 256.
extern "C" __global__ void modulate_bwd_params(const void* x, int xdt, const void* dy, int dydt, float* dshift,
                                               float* dscale, i64 B, i64 L, i64 D) {
    i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= B * D) return;
    i64 b = t / D, d = t % D;
    float s0 = 0.f, s1 = 0.f;
    for (i64 l = 0; l < L; ++l) {
        i64 i = (b * L + l) * D + d;
        float g = ld(dy, dydt, i);
        s0 += g;
        s1 += g * ld(x, xdt, i);
    }
    dshift[t] = s0;
    dscale[t] = s1;
}
