// Host emulation of the CUDA features our kernel files use, so a kernel file can be compiled by a C++20 host
// compiler and run on the CPU (kernels/tests/cuda_emu.rs). This checks a kernel's indexing, tiling,
// synchronisation and warp-level data exchange (shuffles, mma.sync fragment layouts) on machines without a
// GPU; it does not check performance, and it cannot find races that only the hardware's scheduling exposes.
//
// Model: one std::thread per CUDA thread; the blocks of a grid run one after another. `__shared__` becomes
// `static`, so a block's threads share it. `__syncthreads` is a block barrier. A warp is 32 consecutive
// threads of a 1-D block; warp shuffles and `mma.sync` exchange values through per-warp slots between two warp
// barriers, so every lane of the warp must reach them (as `.sync.aligned` requires on the hardware).
// mma.m16n8k16 (bf16 in, f32 accumulate) follows the PTX ISA fragment layout ("Matrix Fragments for
// mma.m16n8k16 with floating point type"): groupID = lane >> 2, tig = lane & 3;
//   A (16x16, row): a0,a1 row g, cols 2 tig + {0,1}; a2,a3 row g+8; a4..a7 the same rows, cols + 8;
//   B (16x8, col):  b0,b1 rows 2 tig + {0,1}, col g; b2,b3 rows + 8;
//   C/D (16x8):     c0,c1 row g, cols 2 tig + {0,1}; c2,c3 row g+8.
// The lower-indexed element of a register pair sits in its low 16 bits.
#pragma once

#include <math.h>

#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define MEDGEN_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(n)

using std::max;
using std::min;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
    unsigned x, y, z, w;
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {
struct Warp {
    std::barrier<> bar{32};
    uint64_t slot[32][8];
};
struct Block {
    std::barrier<> bar;
    std::vector<std::unique_ptr<Warp>> warps;
    explicit Block(unsigned n) : bar(n) {
        for (unsigned w = 0; w < (n + 31) / 32; ++w) warps.push_back(std::make_unique<Warp>());
    }
};
inline thread_local Block* block = nullptr;

inline Warp& warp() { return *block->warps[threadIdx.x / 32]; }

// Runs `body` as the kernel over grid x block (1-D blocks, 2-D grids), one block at a time.
inline void launch(dim3 grid, dim3 blk, const std::function<void()>& body) {
    if (blk.y != 1 || blk.z != 1 || blk.x % 32 != 0) {
        std::fprintf(stderr, "emu: blocks must be 1-D with a multiple of 32 threads\n");
        std::abort();
    }
    for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            Block b(blk.x);
            std::vector<std::thread> ts;
            ts.reserve(blk.x);
            for (unsigned tx = 0; tx < blk.x; ++tx) {
                ts.emplace_back([&, tx] {
                    threadIdx = dim3{tx, 0, 0};
                    blockIdx = dim3{bx, by, 0};
                    blockDim = blk;
                    gridDim = grid;
                    block = &b;
                    body();
                });
            }
            for (auto& t : ts) t.join();
        }
    }
}

inline float bf16(uint32_t bits) {
    uint32_t u = bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
}  // namespace emu

inline void __syncthreads() { emu::block->bar.arrive_and_wait(); }

inline void __trap() { std::abort(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8);
    emu::Warp& w = emu::warp();
    unsigned lane = threadIdx.x & 31;
    std::memcpy(&w.slot[lane][0], &v, sizeof(T));
    w.bar.arrive_and_wait();
    T r;
    std::memcpy(&r, &w.slot[lane ^ (unsigned)lane_mask][0], sizeof(T));
    w.bar.arrive_and_wait();
    return r;
}

template <class To, class From>
inline To emu_bits(From x) {
    static_assert(sizeof(To) == sizeof(From));
    To y;
    std::memcpy(&y, &x, sizeof(To));
    return y;
}
inline float __int_as_float(int i) { return emu_bits<float>(i); }
inline float __uint_as_float(unsigned u) { return emu_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return emu_bits<unsigned>(f); }
inline int __float_as_int(float f) { return emu_bits<int>(f); }

inline float emu_f16_to_f32(unsigned short h) { return (float)emu_bits<_Float16>(h); }
inline unsigned short emu_f32_to_f16(float f) { return emu_bits<unsigned short>((_Float16)f); }

// d += A (16x16 bf16) * B (16x8 bf16), f32 accumulate, fragments as in the header comment.
inline void emu_mma_m16n8k16_bf16(float* d, const unsigned* a, const unsigned* b) {
    emu::Warp& w = emu::warp();
    unsigned lane = threadIdx.x & 31;
    for (int i = 0; i < 4; ++i) w.slot[lane][i] = a[i];
    w.slot[lane][4] = b[0];
    w.slot[lane][5] = b[1];
    w.bar.arrive_and_wait();
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        unsigned g = l >> 2, t = l & 3;
        for (int i = 0; i < 8; ++i) {
            uint32_t reg = (uint32_t)w.slot[l][i / 2];
            float x = emu::bf16((reg >> (16 * (i & 1))) & 0xffffu);
            unsigned row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            unsigned col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
            A[row][col] = x;
        }
        for (int i = 0; i < 4; ++i) {
            uint32_t reg = (uint32_t)w.slot[l][4 + i / 2];
            float x = emu::bf16((reg >> (16 * (i & 1))) & 0xffffu);
            B[t * 2 + (i & 1) + (i >= 2 ? 8 : 0)][g] = x;
        }
    }
    w.bar.arrive_and_wait();
    unsigned g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        unsigned row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
        float s = 0.f;
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
        d[i] += s;
    }
}
