// Host emulation of the CUDA features our kernel files use, so a kernel file can be compiled by a C++20 host
// compiler and run on the CPU: the attention check (kernels/tests/cuda_emu.rs) and the CPU stand-in for the CUDA
// driver (fake_cuda.cpp, which runs every kernel file this way). This checks a kernel's indexing, tiling,
// synchronisation and warp-level data exchange (shuffles, mma.sync fragment layouts) on machines without a
// GPU; it does not check performance, and it cannot find races that only the hardware's scheduling exposes.
//
// Model: the blocks of a grid run one after another on the calling thread; a block's CUDA threads are fibers
// scheduled cooperatively on that thread, so a launch is deterministic. `__shared__` becomes
// `static`, so a block's threads share it. `__syncthreads` parks a fiber until every live thread of the block
// has reached it; warp shuffles and `mma.sync` exchange values through per-warp slots between two warp
// barriers, which wait for every live lane of the warp (as `.sync.aligned` requires on the hardware). A
// barrier that can never complete (threads of one warp waiting at different barriers, or a `__syncthreads`
// some threads skip while others wait at a warp barrier) is reported as a deadlock instead of hanging.
// mma.m16n8k16 (bf16 in, f32 accumulate) follows the PTX ISA fragment layout ("Matrix Fragments for
// mma.m16n8k16 with floating point type"): groupID = lane >> 2, tig = lane & 3;
//   A (16x16, row): a0,a1 row g, cols 2 tig + {0,1}; a2,a3 row g+8; a4..a7 the same rows, cols + 8;
//   B (16x8, col):  b0,b1 rows 2 tig + {0,1}, col g; b2,b3 rows + 8;
//   C/D (16x8):     c0,c1 row g, cols 2 tig + {0,1}; c2,c3 row g+8.
// The lower-indexed element of a register pair sits in its low 16 bits.
#pragma once

#include <math.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <sys/mman.h>
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

// Switches stacks: saves the callee-saved registers (and the SSE/x87 control words) on the current stack,
// stores the stack pointer in *from, loads `to` and restores what that stack saved. A fresh fiber's stack is
// laid out by `fiber_stack` so that the first switch to it "returns" into `fiber_entry`. Hand-written because
// ucontext's swapcontext makes a signal-mask system call on every switch, which dominated the run time.
extern "C" void medgen_emu_switch(void** from, void* to);
#if defined(__x86_64__)
asm(R"(
    .text
    .weak medgen_emu_switch
    .type medgen_emu_switch, @function
medgen_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size medgen_emu_switch, .-medgen_emu_switch
)");
#else
#error "the CUDA emulation switches fiber stacks with x86-64 assembly; other hosts are not supported"
#endif

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

struct Fiber {
    void* sp = nullptr;  // saved stack pointer while not running
    State state = RUNNABLE;
};

struct Warp {
    uint64_t slot[32][8];
};

// Fiber stacks, kept between launches (kernels keep small per-thread arrays; 256 KiB leaves room for the
// attention kernels' register tiles).
constexpr size_t STACK_BYTES = 256 * 1024;

struct Block {
    unsigned n = 0;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    void* sched_sp = nullptr;  // the scheduler's stack pointer while a fiber runs
    unsigned cur = 0;
    const std::function<void()>* body = nullptr;
};

// Fiber stacks are mapped once per host thread and reused by every later launch (a fresh mapping per launch
// costs a page fault per thread per block).
inline thread_local std::vector<char*> stack_pool;

inline thread_local Block* block = nullptr;

// The error a launch ended with ("" when none); set instead of aborting so a caller (the fake driver) can
// report it as a launch failure.
inline thread_local std::string failure;

inline Warp& warp() { return block->warps[threadIdx.x / 32]; }

[[noreturn]] inline void fiber_entry() {
    Block* b = block;
    (*b->body)();
    Fiber& f = b->fibers[b->cur];
    f.state = DONE;
    medgen_emu_switch(&f.sp, b->sched_sp);
    __builtin_unreachable();
}

// A fresh fiber stack whose first switch-in enters `fiber_entry` (with the ABI's stack alignment at entry).
inline void* fiber_stack(char* base) {
    uintptr_t top = ((uintptr_t)(base + STACK_BYTES)) & ~(uintptr_t)15;
    uint64_t* sp = (uint64_t*)top;
    *--sp = 0;                          // alignment: fiber_entry starts with rsp = 8 (mod 16), as after a call
    *--sp = (uint64_t)(uintptr_t)&fiber_entry;  // popped by `ret`
    for (int i = 0; i < 6; ++i) *--sp = 0;      // rbp rbx r12 r13 r14 r15
    --sp;
    uint32_t mxcsr = 0x1f80;
    uint16_t fcw = 0x037f;
    std::memcpy((char*)sp, &mxcsr, 4);
    std::memcpy((char*)sp + 4, &fcw, 2);
    return sp;
}

// Parks the running fiber in state `s` and switches to the block's scheduler.
inline void park(State s) {
    Block* b = block;
    Fiber& f = b->fibers[b->cur];
    f.state = s;
    medgen_emu_switch(&f.sp, b->sched_sp);
}

// Runs one block to completion; false (with `failure` set) on a deadlock.
inline bool run_block(Block& b, dim3 bid, dim3 grid, dim3 blk) {
    for (unsigned t = 0; t < b.n; ++t) {
        Fiber& f = b.fibers[t];
        f.state = RUNNABLE;
        f.sp = fiber_stack(stack_pool[t]);
    }
    unsigned done = 0;
    while (done < b.n) {
        for (unsigned t = 0; t < b.n; ++t) {
            if (b.fibers[t].state != RUNNABLE) continue;
            b.cur = t;
            threadIdx = dim3{t, 0, 0};
            blockIdx = bid;
            blockDim = blk;
            gridDim = grid;
            medgen_emu_switch(&b.sched_sp, b.fibers[t].sp);
            if (b.fibers[t].state == DONE) ++done;
        }
        if (done == b.n) break;
        // Every fiber is parked or done: release the barriers that are complete.
        bool released = false;
        for (unsigned w = 0; w * 32 < b.n; ++w) {
            unsigned lo = w * 32, hi = std::min(b.n, lo + 32), waiting = 0, live = 0;
            for (unsigned t = lo; t < hi; ++t) {
                if (b.fibers[t].state == DONE) continue;
                ++live;
                if (b.fibers[t].state == AT_WARP_BARRIER) ++waiting;
            }
            if (live > 0 && waiting == live) {
                for (unsigned t = lo; t < hi; ++t)
                    if (b.fibers[t].state == AT_WARP_BARRIER) b.fibers[t].state = RUNNABLE;
                released = true;
            }
        }
        if (!released) {
            unsigned at_block = 0;
            for (auto& f : b.fibers) at_block += f.state == AT_BLOCK_BARRIER;
            if (at_block == b.n - done) {
                for (auto& f : b.fibers)
                    if (f.state == AT_BLOCK_BARRIER) f.state = RUNNABLE;
                released = true;
            }
        }
        if (!released) {
            char msg[160];
            std::snprintf(msg, sizeof msg,
                          "deadlock in block (%u, %u, %u): threads wait at different barriers (%u of %u done)",
                          bid.x, bid.y, bid.z, done, b.n);
            failure = msg;
            return false;
        }
    }
    return true;
}

// Runs `body` as the kernel over grid x block (1-D blocks of a multiple of 32 threads, at most 1024; 3-D grids),
// one block at a time on the calling thread. False (with `failure` set) on a bad shape or a deadlock.
inline bool try_launch(dim3 grid, dim3 blk, const std::function<void()>& body) {
    failure.clear();
    if (blk.y != 1 || blk.z != 1 || blk.x % 32 != 0 || blk.x == 0 || blk.x > 1024) {
        failure = "blocks must be 1-D with a multiple of 32 threads, at most 1024";
        return false;
    }
    Block b;
    b.n = blk.x;
    b.fibers.resize(b.n);
    b.warps.resize((b.n + 31) / 32);
    b.body = &body;
    while (stack_pool.size() < b.n) {
        // One inaccessible page below each stack turns an overflow into a fault instead of silent corruption.
        const size_t guard = 4096;
        void* s = mmap(nullptr, STACK_BYTES + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s == MAP_FAILED || mprotect(s, guard, PROT_NONE) != 0) {
            failure = "cannot map fiber stacks";
            return false;
        }
        stack_pool.push_back((char*)s + guard);
    }
    Block* outer = block;
    block = &b;
    bool ok = true;
    for (unsigned bz = 0; ok && bz < grid.z; ++bz)
        for (unsigned by = 0; ok && by < grid.y; ++by)
            for (unsigned bx = 0; ok && bx < grid.x; ++bx) ok = run_block(b, dim3{bx, by, bz}, grid, blk);
    block = outer;
    return ok;
}

// try_launch, aborting with the message on failure (the standalone kernel checks).
inline void launch(dim3 grid, dim3 blk, const std::function<void()>& body) {
    if (!try_launch(grid, blk, body)) {
        std::fprintf(stderr, "emu: %s\n", failure.c_str());
        std::abort();
    }
}

inline float bf16(uint32_t bits) {
    uint32_t u = bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
}  // namespace emu

inline void __syncthreads() { emu::park(emu::AT_BLOCK_BARRIER); }
inline void __syncwarp_emu() { emu::park(emu::AT_WARP_BARRIER); }

inline void __trap() { std::abort(); }

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8);
    emu::Warp& w = emu::warp();
    unsigned lane = threadIdx.x & 31;
    std::memcpy(&w.slot[lane][0], &v, sizeof(T));
    __syncwarp_emu();
    T r;
    std::memcpy(&r, &w.slot[lane ^ (unsigned)lane_mask][0], sizeof(T));
    __syncwarp_emu();
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
    __syncwarp_emu();
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
    __syncwarp_emu();
    unsigned g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; ++i) {
        unsigned row = i < 2 ? g : g + 8, col = t * 2 + (i & 1);
        float s = 0.f;
        for (int k = 0; k < 16; ++k) s += A[row][k] * B[k][col];
        d[i] += s;
    }
}
