// Tiled flash attention for [B, L, H, d] tensors (no mask), f32 / bf16 / f16 storage with fp32 accumulation.
//
// Forward (`flash_attn_fwd`): each thread owns one query row; key/value tiles of ATT_BK rows are staged in
// shared memory (converted to f32) and consumed with an online softmax (running max m, running sum l,
// rescaled accumulator), so the Lq x Lk score matrix never exists. Writes O [B, Lq, H, d] (dtype odt) and
// LSE = m + ln l [B, H, Lq] (f32) for the backward pass.
// Backward (recompute with the saved LSE): delta = rowsum(dO * O) (`attn_bwd_delta`), then
//   S = scale Q K^T, P = exp(S - LSE), dV = P^T dO, dP = dO V^T, dS = P (dP - delta),
//   dQ = scale dS K (`flash_attn_bwd_dq`, one thread per query row, K/V tiles in shared memory),
//   dK = scale dS^T Q, dV (`flash_attn_bwd_dkdv`, one thread per key row, Q/dO tiles in shared memory).
// No atomics: every output element is written by one thread, so results are deterministic. Gradients are f32,
// laid out [B, L, H, d].
// Launch: grid (ceil(L_rows / ATT_BQ), B*H), block ATT_BQ threads; `attn_bwd_delta` grid-stride over B*H*Lq.
// Limits: head dim d <= ATT_MAXD, or <= ATT_WIDE_MAXD for the `_wide` kernels (smaller tiles so the shared
// memory stays under 48 KB; e.g. the Wan VAE's single-head attention over 384 channels), checked on the host.
// Per-thread rows live in local memory: these are the general kernels (no tensor cores) for what
// attention_tc.cu does not cover (f32/f16, other head dims, pre-sm_80).

#define ATT_MAXD 128
#define ATT_BQ 64
#define ATT_BK 32
#define ATT_WIDE_MAXD 512
#define ATT_WIDE_BK 8

template <int MAXD, int BK>
__device__ __forceinline__ void attn_fwd(const void* q, int qdt, const void* k, int kdt, const void* v, int vdt,
                                         void* out, int odt, float* lse, i64 Lq, i64 Lk, i64 H, i64 D, float scale) {
    __shared__ float Ks[BK][MAXD];
    __shared__ float Vs[BK][MAXD];
    i64 bh = blockIdx.y;
    i64 b = bh / H, h = bh % H;
    i64 i = (i64)blockIdx.x * ATT_BQ + threadIdx.x;
    bool valid = i < Lq;
    float qr[MAXD], acc[MAXD];
    i64 qoff = ((b * Lq + i) * H + h) * D;
    for (int c = 0; c < D; ++c) {
        qr[c] = valid ? ld(q, qdt, qoff + c) : 0.f;
        acc[c] = 0.f;
    }
    float m = NEG_INF, l = 0.f;
    for (i64 j0 = 0; j0 < Lk; j0 += BK) {
        int bk = (int)min((i64)BK, Lk - j0);
        __syncthreads();
        for (int e = threadIdx.x; e < bk * D; e += blockDim.x) {
            int r = e / D, c = e % D;
            i64 ko = ((b * Lk + j0 + r) * H + h) * D + c;
            Ks[r][c] = ld(k, kdt, ko);
            Vs[r][c] = ld(v, vdt, ko);
        }
        __syncthreads();
        if (!valid) continue;
        float s[BK];
        float mx = m;
        for (int r = 0; r < bk; ++r) {
            float dot = 0.f;
            for (int c = 0; c < D; ++c) dot += qr[c] * Ks[r][c];
            s[r] = dot * scale;
            mx = fmaxf(mx, s[r]);
        }
        float corr = expf(m - mx);
        l *= corr;
        for (int c = 0; c < D; ++c) acc[c] *= corr;
        for (int r = 0; r < bk; ++r) {
            float p = expf(s[r] - mx);
            l += p;
            for (int c = 0; c < D; ++c) acc[c] += p * Vs[r][c];
        }
        m = mx;
    }
    if (valid) {
        float inv = 1.f / l;
        for (int c = 0; c < D; ++c) st(out, odt, qoff + c, acc[c] * inv);
        lse[bh * Lq + i] = m + logf(l);
    }
}

// delta[b, h, i] = sum_c dO[b, i, h, c] * O[b, i, h, c]; n = B*H*Lq.
extern "C" __global__ void attn_bwd_delta(const void* o, int odt, const void* dout, int ddt, float* delta, i64 Lq,
                                          i64 H, i64 D, i64 n) {
    GRID_STRIDE(t, n) {
        i64 bh = t / Lq, i = t % Lq;
        i64 b = bh / H, h = bh % H;
        i64 off = ((b * Lq + i) * H + h) * D;
        float s = 0.f;
        for (i64 c = 0; c < D; ++c) s += ld(dout, ddt, off + c) * ld(o, odt, off + c);
        delta[t] = s;
    }
}

// dQ, one thread per query row.
template <int MAXD, int BK>
__device__ __forceinline__ void attn_bwd_dq(const void* q, int qdt, const void* k, int kdt, const void* v, int vdt,
                                            const void* dout, int ddt, const float* lse, const float* delta,
                                            float* dq, i64 Lq, i64 Lk, i64 H, i64 D, float scale) {
    __shared__ float Ks[BK][MAXD];
    __shared__ float Vs[BK][MAXD];
    i64 bh = blockIdx.y;
    i64 b = bh / H, h = bh % H;
    i64 i = (i64)blockIdx.x * ATT_BQ + threadIdx.x;
    bool valid = i < Lq;
    float qr[MAXD], dor[MAXD], acc[MAXD];
    i64 qoff = ((b * Lq + i) * H + h) * D;
    for (int c = 0; c < D; ++c) {
        qr[c] = valid ? ld(q, qdt, qoff + c) : 0.f;
        dor[c] = valid ? ld(dout, ddt, qoff + c) : 0.f;
        acc[c] = 0.f;
    }
    float li = valid ? lse[bh * Lq + i] : 0.f;
    float di = valid ? delta[bh * Lq + i] : 0.f;
    for (i64 j0 = 0; j0 < Lk; j0 += BK) {
        int bk = (int)min((i64)BK, Lk - j0);
        __syncthreads();
        for (int e = threadIdx.x; e < bk * D; e += blockDim.x) {
            int r = e / D, c = e % D;
            i64 ko = ((b * Lk + j0 + r) * H + h) * D + c;
            Ks[r][c] = ld(k, kdt, ko);
            Vs[r][c] = ld(v, vdt, ko);
        }
        __syncthreads();
        if (!valid) continue;
        for (int r = 0; r < bk; ++r) {
            float s = 0.f, dp = 0.f;
            for (int c = 0; c < D; ++c) {
                s += qr[c] * Ks[r][c];
                dp += dor[c] * Vs[r][c];
            }
            float p = expf(s * scale - li);
            float ds = p * (dp - di) * scale;
            for (int c = 0; c < D; ++c) acc[c] += ds * Ks[r][c];
        }
    }
    if (valid) {
        for (int c = 0; c < D; ++c) dq[qoff + c] = acc[c];
    }
}

// dK and dV, one thread per key row.
template <int MAXD, int BK>
__device__ __forceinline__ void attn_bwd_dkdv(const void* q, int qdt, const void* k, int kdt, const void* v,
                                              int vdt, const void* dout, int ddt, const float* lse,
                                              const float* delta, float* dk, float* dv, i64 Lq, i64 Lk, i64 H,
                                              i64 D, float scale) {
    __shared__ float Qs[BK][MAXD];
    __shared__ float Ds[BK][MAXD];
    __shared__ float Ls[BK];
    __shared__ float Es[BK];
    i64 bh = blockIdx.y;
    i64 b = bh / H, h = bh % H;
    i64 j = (i64)blockIdx.x * ATT_BQ + threadIdx.x;
    bool valid = j < Lk;
    float kr[MAXD], vr[MAXD], dka[MAXD], dva[MAXD];
    i64 koff = ((b * Lk + j) * H + h) * D;
    for (int c = 0; c < D; ++c) {
        kr[c] = valid ? ld(k, kdt, koff + c) : 0.f;
        vr[c] = valid ? ld(v, vdt, koff + c) : 0.f;
        dka[c] = 0.f;
        dva[c] = 0.f;
    }
    for (i64 i0 = 0; i0 < Lq; i0 += BK) {
        int bq = (int)min((i64)BK, Lq - i0);
        __syncthreads();
        for (int e = threadIdx.x; e < bq * D; e += blockDim.x) {
            int r = e / D, c = e % D;
            i64 qo = ((b * Lq + i0 + r) * H + h) * D + c;
            Qs[r][c] = ld(q, qdt, qo);
            Ds[r][c] = ld(dout, ddt, qo);
        }
        for (int r = threadIdx.x; r < bq; r += blockDim.x) {
            Ls[r] = lse[bh * Lq + i0 + r];
            Es[r] = delta[bh * Lq + i0 + r];
        }
        __syncthreads();
        if (!valid) continue;
        for (int r = 0; r < bq; ++r) {
            float s = 0.f, dp = 0.f;
            for (int c = 0; c < D; ++c) {
                s += Qs[r][c] * kr[c];
                dp += Ds[r][c] * vr[c];
            }
            float p = expf(s * scale - Ls[r]);
            float ds = p * (dp - Es[r]) * scale;
            for (int c = 0; c < D; ++c) {
                dva[c] += p * Ds[r][c];
                dka[c] += ds * Qs[r][c];
            }
        }
    }
    if (valid) {
        for (int c = 0; c < D; ++c) {
            dk[koff + c] = dka[c];
            dv[koff + c] = dva[c];
        }
    }
}

// The instantiations: head dim <= ATT_MAXD, and the wide ones for head dim <= ATT_WIDE_MAXD.
#define ATT_KERNELS(SUFFIX, MD, TB)                                                                                \
    extern "C" __global__ void flash_attn_fwd##SUFFIX(const void* q, int qdt, const void* k, int kdt,             \
                                                      const void* v, int vdt, void* out, int odt, float* lse,     \
                                                      i64 Lq, i64 Lk, i64 H, i64 D, float scale) {                \
        attn_fwd<MD, TB>(q, qdt, k, kdt, v, vdt, out, odt, lse, Lq, Lk, H, D, scale);                             \
    }                                                                                                             \
    extern "C" __global__ void flash_attn_bwd_dq##SUFFIX(                                                         \
        const void* q, int qdt, const void* k, int kdt, const void* v, int vdt, const void* dout, int ddt,        \
        const float* lse, const float* delta, float* dq, i64 Lq, i64 Lk, i64 H, i64 D, float scale) {             \
        attn_bwd_dq<MD, TB>(q, qdt, k, kdt, v, vdt, dout, ddt, lse, delta, dq, Lq, Lk, H, D, scale);              \
    }                                                                                                             \
    extern "C" __global__ void flash_attn_bwd_dkdv##SUFFIX(                                                       \
        const void* q, int qdt, const void* k, int kdt, const void* v, int vdt, const void* dout, int ddt,        \
        const float* lse, const float* delta, float* dk, float* dv, i64 Lq, i64 Lk, i64 H, i64 D, float scale) {  \
        attn_bwd_dkdv<MD, TB>(q, qdt, k, kdt, v, vdt, dout, ddt, lse, delta, dk, dv, Lq, Lk, H, D, scale);        \
    }

ATT_KERNELS(, ATT_MAXD, ATT_BK)
ATT_KERNELS(_wide, ATT_WIDE_MAXD, ATT_WIDE_BK)
