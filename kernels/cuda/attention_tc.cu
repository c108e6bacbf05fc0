// Tensor-core flash attention (sm_80+, bf16 q/k/v, head dim 64 or 128), [B, L, H, D] tensors, no mask.
//
// The same algorithm as attention.cu (online softmax forward saving LSE; backward by recomputation with
// delta = rowsum(dO * O) from `attn_bwd_delta` there), with the products on mma.sync.m16n8k16 (bf16 operands,
// f32 accumulators; fragment layouts in kernels/cuda/emu/emu.h). A block is TC_THREADS = 4 warps; each warp
// owns 16 rows.
//   forward  `flash_tc_fwd_d{64,128}`: a block owns 64 query rows; 64-key tiles of K and V are staged in
//            shared memory. S = Q K^T, P = exp2(S scale log2e - m) (rounded to bf16 for P V, as FlashAttention
//            does), O rescaled per tile. Writes O (dtype odt) and LSE (natural log, f32, [B, H, Lq]).
//   dQ       `flash_tc_bwd_dq_d{64,128}`: a block owns 64 query rows; 32-key tiles. dP = dO V^T,
//            dS = P (dP - delta), dQ = scale dS K.
//   dK, dV   `flash_tc_bwd_dkdv_d{64,128}`: a block owns 64 key rows (kept in shared memory); 16-query tiles.
//            dV = P^T dO, dK = scale dS^T Q.
// Every output element is written by one thread (no atomics): deterministic. dO may be any storage dtype (it
// is rounded to bf16 for the products); gradients are f32.
// Launch: grid (ceil(L_rows / 64), B*H), block TC_THREADS. The host checks: bf16 q/k/v, 16-byte aligned
// bases, D in {64, 128}, compute capability >= 8.0.

#define TC_THREADS 128
#define TC_ROWS 64
#define TC_PAD 8
#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f
#define TC_FULL 0xffffffffu

typedef unsigned short bf16_t;

__device__ __forceinline__ unsigned ld_u32(const bf16_t* p) { return *(const unsigned*)p; }

// Two bf16 from different rows as one mma operand register (`lo` in the low half).
__device__ __forceinline__ unsigned pair_u16(const bf16_t* lo, const bf16_t* hi) {
    return (unsigned)*lo | ((unsigned)*hi << 16);
}

// B fragment (k = k0 + 2 tig + {0, 1, 8, 9}, n) from a tile stored n-major (sm[n][k]: pairs contiguous).
template <int D>
__device__ __forceinline__ void b_frag_n(unsigned* b, const bf16_t (*sm)[D + TC_PAD], int n, int k0, int t) {
    b[0] = ld_u32(&sm[n][k0 + t * 2]);
    b[1] = ld_u32(&sm[n][k0 + t * 2 + 8]);
}

// B fragment (k = k0 + 2 tig + {0, 1, 8, 9}, n) from a tile stored k-major (sm[k][n]: pairs from two rows).
template <int D>
__device__ __forceinline__ void b_frag_k(unsigned* b, const bf16_t (*sm)[D + TC_PAD], int k0, int n, int t) {
    const int k = k0 + t * 2;
    b[0] = pair_u16(&sm[k][n], &sm[k + 1][n]);
    b[1] = pair_u16(&sm[k + 8][n], &sm[k + 9][n]);
}

// The A fragment of a 16 x 16 bf16 operand from the f32 accumulators of two adjacent 16 x 8 products (columns
// 0-7 in c0, 8-15 in c1): FlashAttention's reuse of S (as P or dS) as the next product's left operand.
__device__ __forceinline__ void a_frag_from_acc(unsigned* a, const float* c0, const float* c1) {
    a[0] = pack_bf16x2(c0[0], c0[1]);
    a[1] = pack_bf16x2(c0[2], c0[3]);
    a[2] = pack_bf16x2(c1[0], c1[1]);
    a[3] = pack_bf16x2(c1[2], c1[3]);
}

// Writes a warp's f32 accumulators [16 rows x D] (rows ra, rb = ra + 8 of this lane; rows >= L skipped)
// times `mul` to dst (row r at off + r * rs).
template <int D>
__device__ __forceinline__ void store_acc(float* dst, const float (*acc)[4], i64 off, i64 rs, i64 ra, i64 rb, i64 L,
                                          int t, float mul) {
    for (int nt = 0; nt < D / 8; ++nt) {
        const int c = nt * 8 + t * 2;
        if (ra < L) {
            dst[off + ra * rs + c] = acc[nt][0] * mul;
            dst[off + ra * rs + c + 1] = acc[nt][1] * mul;
        }
        if (rb < L) {
            dst[off + rb * rs + c] = acc[nt][2] * mul;
            dst[off + rb * rs + c + 1] = acc[nt][3] * mul;
        }
    }
}

// Rows [r0, r0 + R) of a bf16 matrix whose row r starts at base + r * rs (D contiguous elements) into
// sm[R][D + TC_PAD]; rows at or beyond r0 + nvalid become zeros. 16-byte copies.
template <int R, int D>
__device__ __forceinline__ void stage_bf16(bf16_t (*sm)[D + TC_PAD], const bf16_t* base, i64 rs, i64 r0, i64 nvalid) {
    for (int e = threadIdx.x; e < R * (D / 8); e += blockDim.x) {
        int r = e / (D / 8), c = (e % (D / 8)) * 8;
        uint4 x = {0u, 0u, 0u, 0u};
        if (r < nvalid) x = *(const uint4*)(base + (r0 + r) * rs + c);
        *(uint4*)&sm[r][c] = x;
    }
}

// The same for a matrix of any storage dtype (element (r, c) at off + r * rs + c), rounded to bf16.
template <int R, int D>
__device__ __forceinline__ void stage_any(bf16_t (*sm)[D + TC_PAD], const void* p, int dt, i64 off, i64 rs, i64 r0,
                                          i64 nvalid) {
    for (int e = threadIdx.x; e < R * D; e += blockDim.x) {
        int r = e / D, c = e % D;
        sm[r][c] = r < nvalid ? f32_to_bf16_bits(ld(p, dt, off + (r0 + r) * rs + c)) : (bf16_t)0;
    }
}

// The A fragments (16 rows x D) of rows ra, rb = ra + 8 of a bf16 matrix in global memory (zeros past Lrows).
template <int D>
__device__ __forceinline__ void load_a_rows(unsigned (*f)[4], const bf16_t* base, i64 rs, i64 ra, i64 rb, i64 Lrows,
                                            int t) {
    for (int kc = 0; kc < D / 16; ++kc) {
        int c = kc * 16 + t * 2;
        f[kc][0] = ra < Lrows ? ld_u32(base + ra * rs + c) : 0u;
        f[kc][1] = rb < Lrows ? ld_u32(base + rb * rs + c) : 0u;
        f[kc][2] = ra < Lrows ? ld_u32(base + ra * rs + c + 8) : 0u;
        f[kc][3] = rb < Lrows ? ld_u32(base + rb * rs + c + 8) : 0u;
    }
}

// A lane's place in a block: its warp, mma group g and thread-in-group t; the block's (batch, head) bh; the
// token stride rs; the element offsets of this head's token 0 in q/o/dq and in k/v/dk/dv.
struct TcLane {
    int warp, g, t;
    i64 bh, rs, qoff, koff;
};

template <int D>
__device__ __forceinline__ TcLane tc_lane(i64 Lq, i64 Lk, i64 H) {
    TcLane p;
    const int lane = threadIdx.x & 31;
    p.warp = threadIdx.x >> 5;
    p.g = lane >> 2;
    p.t = lane & 3;
    p.bh = blockIdx.y;
    const i64 b = p.bh / H, h = p.bh % H;
    p.rs = H * D;
    p.qoff = (b * Lq * H + h) * D;
    p.koff = (b * Lk * H + h) * D;
    return p;
}

template <int N>
__device__ __forceinline__ void zero_acc(float (*a)[4]) {
    for (int i = 0; i < N; ++i) a[i][0] = a[i][1] = a[i][2] = a[i][3] = 0.f;
}

template <int D>
__device__ __forceinline__ void tc_fwd(const bf16_t* q, const bf16_t* k, const bf16_t* v, void* out, int odt,
                                       float* lse, i64 Lq, i64 Lk, i64 H, float scale_log2) {
    constexpr int BK = 64, KC = D / 16, NT = D / 8;
    __shared__ __align__(16) bf16_t Ks[BK][D + TC_PAD];
    __shared__ __align__(16) bf16_t Vs[BK][D + TC_PAD];
    const TcLane p = tc_lane<D>(Lq, Lk, H);
    const int g = p.g, t = p.t;
    const i64 bh = p.bh, rs = p.rs, qoff = p.qoff, koff = p.koff;
    const i64 r0 = (i64)blockIdx.x * TC_ROWS + p.warp * 16 + g, r1 = r0 + 8;
    unsigned qf[KC][4];
    load_a_rows<D>(qf, q + qoff, rs, r0, r1, Lq, t);
    float o[NT][4];
    zero_acc<NT>(o);
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    for (i64 j0 = 0; j0 < Lk; j0 += BK) {
        const i64 nk = min((i64)BK, Lk - j0);
        __syncthreads();
        stage_bf16<BK, D>(Ks, k + koff, rs, j0, nk);
        stage_bf16<BK, D>(Vs, v + koff, rs, j0, nk);
        __syncthreads();
        float s[BK / 8][4];
        zero_acc<BK / 8>(s);
        for (int nt = 0; nt < BK / 8; ++nt) {
            for (int kc = 0; kc < KC; ++kc) {
                unsigned kb[2];
                b_frag_n<D>(kb, Ks, nt * 8 + g, kc * 16, t);
                mma_bf16_16816(s[nt], qf[kc], kb);
            }
        }
        float mx0 = m0, mx1 = m1;
        for (int nt = 0; nt < BK / 8; ++nt) {
            for (int e = 0; e < 2; ++e) {
                const bool ok = nt * 8 + t * 2 + e < nk;
                s[nt][e] = ok ? s[nt][e] * scale_log2 : NEG_INF;
                s[nt][2 + e] = ok ? s[nt][2 + e] * scale_log2 : NEG_INF;
                mx0 = fmaxf(mx0, s[nt][e]);
                mx1 = fmaxf(mx1, s[nt][2 + e]);
            }
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(TC_FULL, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(TC_FULL, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(TC_FULL, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(TC_FULL, mx1, 2));
        // Column 0 of every tile is a real key, so mx0 and mx1 are finite here.
        const float c0 = exp2f(m0 - mx0), c1 = exp2f(m1 - mx1);
        m0 = mx0;
        m1 = mx1;
        l0 *= c0;
        l1 *= c1;
        for (int nt = 0; nt < NT; ++nt) {
            o[nt][0] *= c0;
            o[nt][1] *= c0;
            o[nt][2] *= c1;
            o[nt][3] *= c1;
        }
        for (int nt = 0; nt < BK / 8; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - m0);
            s[nt][1] = exp2f(s[nt][1] - m0);
            s[nt][2] = exp2f(s[nt][2] - m1);
            s[nt][3] = exp2f(s[nt][3] - m1);
            l0 += s[nt][0] + s[nt][1];
            l1 += s[nt][2] + s[nt][3];
        }
        for (int kc = 0; kc < BK / 16; ++kc) {
            unsigned pa[4], vb[2];
            a_frag_from_acc(pa, s[2 * kc], s[2 * kc + 1]);
            for (int nt = 0; nt < NT; ++nt) {
                b_frag_k<D>(vb, Vs, kc * 16, nt * 8 + g, t);
                mma_bf16_16816(o[nt], pa, vb);
            }
        }
    }
    l0 += __shfl_xor_sync(TC_FULL, l0, 1);
    l0 += __shfl_xor_sync(TC_FULL, l0, 2);
    l1 += __shfl_xor_sync(TC_FULL, l1, 1);
    l1 += __shfl_xor_sync(TC_FULL, l1, 2);
    const float i0 = 1.f / l0, i1 = 1.f / l1;
    for (int nt = 0; nt < NT; ++nt) {
        const int c = nt * 8 + t * 2;
        if (r0 < Lq) {
            st(out, odt, qoff + r0 * rs + c, o[nt][0] * i0);
            st(out, odt, qoff + r0 * rs + c + 1, o[nt][1] * i0);
        }
        if (r1 < Lq) {
            st(out, odt, qoff + r1 * rs + c, o[nt][2] * i1);
            st(out, odt, qoff + r1 * rs + c + 1, o[nt][3] * i1);
        }
    }
    if (t == 0) {
        if (r0 < Lq) lse[bh * Lq + r0] = (m0 + log2f(l0)) * TC_LN2;
        if (r1 < Lq) lse[bh * Lq + r1] = (m1 + log2f(l1)) * TC_LN2;
    }
}

template <int D>
__device__ __forceinline__ void tc_bwd_dq(const bf16_t* q, const bf16_t* k, const bf16_t* v, const void* dout,
                                          int ddt, const float* lse, const float* delta, float* dq, i64 Lq, i64 Lk,
                                          i64 H, float scale, float scale_log2) {
    constexpr int BK = 32, KC = D / 16, NT = D / 8;
    __shared__ __align__(16) bf16_t Ks[BK][D + TC_PAD];
    __shared__ __align__(16) bf16_t Vs[BK][D + TC_PAD];
    const TcLane p = tc_lane<D>(Lq, Lk, H);
    const int g = p.g, t = p.t;
    const i64 bh = p.bh, rs = p.rs, qoff = p.qoff, koff = p.koff;
    const i64 r0 = (i64)blockIdx.x * TC_ROWS + p.warp * 16 + g, r1 = r0 + 8;
    unsigned qf[KC][4], df[KC][4];
    load_a_rows<D>(qf, q + qoff, rs, r0, r1, Lq, t);
    for (int kc = 0; kc < KC; ++kc) {
        const i64 c = qoff + kc * 16 + t * 2;
        const bool a = r0 < Lq, bb = r1 < Lq;
        df[kc][0] = a ? pack_bf16x2(ld(dout, ddt, c + r0 * rs), ld(dout, ddt, c + r0 * rs + 1)) : 0u;
        df[kc][1] = bb ? pack_bf16x2(ld(dout, ddt, c + r1 * rs), ld(dout, ddt, c + r1 * rs + 1)) : 0u;
        df[kc][2] = a ? pack_bf16x2(ld(dout, ddt, c + r0 * rs + 8), ld(dout, ddt, c + r0 * rs + 9)) : 0u;
        df[kc][3] = bb ? pack_bf16x2(ld(dout, ddt, c + r1 * rs + 8), ld(dout, ddt, c + r1 * rs + 9)) : 0u;
    }
    const float ls0 = r0 < Lq ? lse[bh * Lq + r0] * TC_LOG2E : 0.f, ls1 = r1 < Lq ? lse[bh * Lq + r1] * TC_LOG2E : 0.f;
    const float de0 = r0 < Lq ? delta[bh * Lq + r0] : 0.f, de1 = r1 < Lq ? delta[bh * Lq + r1] : 0.f;
    float acc[NT][4];
    zero_acc<NT>(acc);
    for (i64 j0 = 0; j0 < Lk; j0 += BK) {
        const i64 nk = min((i64)BK, Lk - j0);
        __syncthreads();
        stage_bf16<BK, D>(Ks, k + koff, rs, j0, nk);
        stage_bf16<BK, D>(Vs, v + koff, rs, j0, nk);
        __syncthreads();
        float s[BK / 8][4], dp[BK / 8][4];
        zero_acc<BK / 8>(s);
        zero_acc<BK / 8>(dp);
        for (int nt = 0; nt < BK / 8; ++nt) {
            for (int kc = 0; kc < KC; ++kc) {
                unsigned kb[2], vb[2];
                b_frag_n<D>(kb, Ks, nt * 8 + g, kc * 16, t);
                mma_bf16_16816(s[nt], qf[kc], kb);
                b_frag_n<D>(vb, Vs, nt * 8 + g, kc * 16, t);
                mma_bf16_16816(dp[nt], df[kc], vb);
            }
        }
        // s becomes dS = P (dP - delta) (the softmax scale is applied once, at the end).
        for (int nt = 0; nt < BK / 8; ++nt) {
            for (int e = 0; e < 2; ++e) {
                const bool ok = nt * 8 + t * 2 + e < nk;
                const float p0 = ok ? exp2f(s[nt][e] * scale_log2 - ls0) : 0.f;
                const float p1 = ok ? exp2f(s[nt][2 + e] * scale_log2 - ls1) : 0.f;
                s[nt][e] = p0 * (dp[nt][e] - de0);
                s[nt][2 + e] = p1 * (dp[nt][2 + e] - de1);
            }
        }
        for (int kc = 0; kc < BK / 16; ++kc) {
            unsigned da[4], kb[2];
            a_frag_from_acc(da, s[2 * kc], s[2 * kc + 1]);
            for (int nt = 0; nt < NT; ++nt) {
                b_frag_k<D>(kb, Ks, kc * 16, nt * 8 + g, t);
                mma_bf16_16816(acc[nt], da, kb);
            }
        }
    }
    store_acc<D>(dq, acc, qoff, rs, r0, r1, Lq, t, scale);
}

template <int D>
__device__ __forceinline__ void tc_bwd_dkdv(const bf16_t* q, const bf16_t* k, const bf16_t* v, const void* dout,
                                            int ddt, const float* lse, const float* delta, float* dk, float* dv,
                                            i64 Lq, i64 Lk, i64 H, float scale, float scale_log2) {
    constexpr int BQ = 16, KC = D / 16, NT = D / 8;
    __shared__ __align__(16) bf16_t Ks[TC_ROWS][D + TC_PAD];
    __shared__ __align__(16) bf16_t Vs[TC_ROWS][D + TC_PAD];
    __shared__ __align__(16) bf16_t Qs[BQ][D + TC_PAD];
    __shared__ __align__(16) bf16_t Ds[BQ][D + TC_PAD];
    __shared__ float Ls[BQ];
    __shared__ float Es[BQ];
    const TcLane p = tc_lane<D>(Lq, Lk, H);
    const int g = p.g, t = p.t;
    const i64 bh = p.bh, rs = p.rs, qoff = p.qoff, koff = p.koff;
    const i64 key0 = (i64)blockIdx.x * TC_ROWS;
    const int kr = p.warp * 16;
    const i64 j0 = key0 + kr + g, j1 = j0 + 8;
    stage_bf16<TC_ROWS, D>(Ks, k + koff, rs, key0, min((i64)TC_ROWS, Lk - key0));
    stage_bf16<TC_ROWS, D>(Vs, v + koff, rs, key0, min((i64)TC_ROWS, Lk - key0));
    float dka[NT][4], dva[NT][4];
    zero_acc<NT>(dka);
    zero_acc<NT>(dva);
    for (i64 i0 = 0; i0 < Lq; i0 += BQ) {
        const i64 nq = min((i64)BQ, Lq - i0);
        __syncthreads();
        stage_bf16<BQ, D>(Qs, q + qoff, rs, i0, nq);
        stage_any<BQ, D>(Ds, dout, ddt, qoff, rs, i0, nq);
        for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
            Ls[r] = r < nq ? lse[bh * Lq + i0 + r] * TC_LOG2E : 0.f;
            Es[r] = r < nq ? delta[bh * Lq + i0 + r] : 0.f;
        }
        __syncthreads();
        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys x 16 queries.
        float st_[2][4], dpt[2][4];
        zero_acc<2>(st_);
        zero_acc<2>(dpt);
        for (int kc = 0; kc < KC; ++kc) {
            const int c = kc * 16 + t * 2;
            const unsigned ka[4] = {ld_u32(&Ks[kr + g][c]), ld_u32(&Ks[kr + g + 8][c]), ld_u32(&Ks[kr + g][c + 8]),
                                    ld_u32(&Ks[kr + g + 8][c + 8])};
            const unsigned va[4] = {ld_u32(&Vs[kr + g][c]), ld_u32(&Vs[kr + g + 8][c]), ld_u32(&Vs[kr + g][c + 8]),
                                    ld_u32(&Vs[kr + g + 8][c + 8])};
            for (int nt = 0; nt < 2; ++nt) {
                unsigned qb[2], db[2];
                b_frag_n<D>(qb, Qs, nt * 8 + g, kc * 16, t);
                mma_bf16_16816(st_[nt], ka, qb);
                b_frag_n<D>(db, Ds, nt * 8 + g, kc * 16, t);
                mma_bf16_16816(dpt[nt], va, db);
            }
        }
        // st_ becomes P^T, dpt becomes dS^T = P^T (dP^T - delta).
        for (int nt = 0; nt < 2; ++nt) {
            for (int e = 0; e < 2; ++e) {
                const int qi = nt * 8 + t * 2 + e;
                const bool ok = qi < nq;
                const float p0 = ok ? exp2f(st_[nt][e] * scale_log2 - Ls[qi]) : 0.f;
                const float p1 = ok ? exp2f(st_[nt][2 + e] * scale_log2 - Ls[qi]) : 0.f;
                st_[nt][e] = p0;
                st_[nt][2 + e] = p1;
                dpt[nt][e] = p0 * (dpt[nt][e] - Es[qi]);
                dpt[nt][2 + e] = p1 * (dpt[nt][2 + e] - Es[qi]);
            }
        }
        unsigned pa[4], sa[4];
        a_frag_from_acc(pa, st_[0], st_[1]);
        a_frag_from_acc(sa, dpt[0], dpt[1]);
        for (int nt = 0; nt < NT; ++nt) {
            unsigned db[2], qb[2];
            b_frag_k<D>(db, Ds, 0, nt * 8 + g, t);
            mma_bf16_16816(dva[nt], pa, db);
            b_frag_k<D>(qb, Qs, 0, nt * 8 + g, t);
            mma_bf16_16816(dka[nt], sa, qb);
        }
    }
    store_acc<D>(dk, dka, koff, rs, j0, j1, Lk, t, scale);
    store_acc<D>(dv, dva, koff, rs, j0, j1, Lk, t, 1.f);
}

#define TC_ATTENTION_KERNELS(D)                                                                                     \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                       \
        flash_tc_fwd_d##D(const void* q, const void* k, const void* v, void* out, int odt, float* lse, i64 Lq,     \
                          i64 Lk, i64 H, float scale_log2) {                                                       \
        tc_fwd<D>((const bf16_t*)q, (const bf16_t*)k, (const bf16_t*)v, out, odt, lse, Lq, Lk, H, scale_log2);      \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                       \
        flash_tc_bwd_dq_d##D(const void* q, const void* k, const void* v, const void* dout, int ddt,               \
                             const float* lse, const float* delta, float* dq, i64 Lq, i64 Lk, i64 H, float scale,  \
                             float scale_log2) {                                                                   \
        tc_bwd_dq<D>((const bf16_t*)q, (const bf16_t*)k, (const bf16_t*)v, dout, ddt, lse, delta, dq, Lq, Lk, H,   \
                     scale, scale_log2);                                                                           \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                                       \
        flash_tc_bwd_dkdv_d##D(const void* q, const void* k, const void* v, const void* dout, int ddt,             \
                               const float* lse, const float* delta, float* dk, float* dv, i64 Lq, i64 Lk, i64 H,  \
                               float scale, float scale_log2) {                                                    \
        tc_bwd_dkdv<D>((const bf16_t*)q, (const bf16_t*)k, (const bf16_t*)v, dout, ddt, lse, delta, dk, dv, Lq,    \
                       Lk, H, scale, scale_log2);                                                                  \
    }

TC_ATTENTION_KERNELS(64)
TC_ATTENTION_KERNELS(128)
