// Shared prelude of every kernels/cuda/*.cu file. The Rust side (kernels/src/cuda/compile.rs) prepends this
// text to each kernel file before handing it to NVRTC, so the kernel files need no #include: nothing here
// depends on a header (not even cuda_bf16.h / cuda_fp16.h; the half types are converted with bit operations
// and PTX `cvt`, which NVRTC always accepts).
//
// Conventions used by all kernels:
//   * Storage dtypes are passed at run time as an int code (DT_*); every kernel loads through `ld` and stores
//     through `st`, computing in f32 (fp32 accumulation for bf16/f16 inputs). The dtype branch is uniform
//     across a launch, so it costs no divergence.
//   * Element counts and indices are 64-bit (`i64`).
//   * Elementwise kernels use grid-stride loops, so any 1-D grid is correct; the host launches
//     min(ceil(n/256), 65535*8) blocks of 256 threads.
//   * Row kernels (norms, softmax) use one block of ROW_THREADS threads per row.

typedef long long i64;
typedef unsigned long long u64;

#define DT_F32 0
#define DT_BF16 1
#define DT_F16 2
#define DT_F64 3

#define MAX_RANK 8
#define ROW_THREADS 256
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_bits_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest even, NaN stays NaN (quiet), like half::bf16::from_f32.
__device__ __forceinline__ unsigned short f32_to_bf16_bits(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float f16_bits_to_f32(unsigned short h) {
#ifdef MEDGEN_EMU
    return emu_f16_to_f32(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ unsigned short f32_to_f16_bits(float f) {
#ifdef MEDGEN_EMU
    return emu_f32_to_f16(f);
#else
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

// Two f32 rounded to bf16 (nearest even) and packed: `lo` in the low 16 bits (the lower-indexed element of an
// mma operand pair).
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
#if defined(MEDGEN_EMU) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 800
    return (unsigned)f32_to_bf16_bits(lo) | ((unsigned)f32_to_bf16_bits(hi) << 16);
#else
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// d[0..4] += A * B for one warp-wide mma.m16n8k16 (bf16 operands, f32 accumulators); fragment layouts as in
// the PTX ISA (see kernels/cuda/emu/emu.h). Needs sm_80 or newer; the host only launches kernels that use it
// on such devices.
__device__ __forceinline__ void mma_bf16_16816(float* d, const unsigned* a, const unsigned* b) {
#ifdef MEDGEN_EMU
    emu_mma_m16n8k16_bf16(d, a, b);
#elif __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}

// Element i of a buffer of dtype dt, as f32.
__device__ __forceinline__ float ld(const void* p, int dt, i64 i) {
    switch (dt) {
        case DT_BF16: return bf16_bits_to_f32(((const unsigned short*)p)[i]);
        case DT_F16: return f16_bits_to_f32(((const unsigned short*)p)[i]);
        case DT_F64: return (float)((const double*)p)[i];
        default: return ((const float*)p)[i];
    }
}

// Stores v (rounded to dtype dt) as element i.
__device__ __forceinline__ void st(void* p, int dt, i64 i, float v) {
    switch (dt) {
        case DT_BF16: ((unsigned short*)p)[i] = f32_to_bf16_bits(v); break;
        case DT_F16: ((unsigned short*)p)[i] = f32_to_f16_bits(v); break;
        case DT_F64: ((double*)p)[i] = (double)v; break;
        default: ((float*)p)[i] = v; break;
    }
}

// A strided view: element with row-major linear index `lin` over `shape` lives at
// offset + sum(coord[d] * strides[d]) (strides 0 on broadcast dims). Mirrors `Strided` in
// kernels/src/cuda/launch.rs (#[repr(C)], 8 + 8 + 1 i64 and 2 i32).
struct Strided {
    i64 shape[MAX_RANK];
    i64 strides[MAX_RANK];
    i64 offset;
    int rank;
    int pad_;
};

__device__ __forceinline__ i64 strided_index(const Strided& s, i64 lin) {
    i64 idx = s.offset;
    for (int d = s.rank - 1; d >= 0; --d) {
        i64 n = s.shape[d];
        idx += (lin % n) * s.strides[d];
        lin /= n;
    }
    return idx;
}

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total. `sh` needs 32
// floats. Deterministic: the grouping depends on blockDim only.
__device__ __forceinline__ float block_sum(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    float t = 0.f;
    for (int w = 0; w < nw; ++w) t += sh[w];
    return t;
}

__device__ __forceinline__ double block_sum_f64(double v, double* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    double t = 0.0;
    for (int w = 0; w < nw; ++w) t += sh[w];
    return t;
}

__device__ __forceinline__ float block_max(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    int nw = (blockDim.x + 31) >> 5;
    float t = NEG_INF;
    for (int w = 0; w < nw; ++w) t = fmaxf(t, sh[w]);
    return t;
}
