// A CPU stand-in for the CUDA driver (libcuda.so) and the slices of cuBLAS (libcublas.so) and cuBLASLt
// (libcublasLt.so: matmuls with bias / GELU epilogues) that medgen-kernels calls, so the Rust CUDA backend
// (kernels/src/cuda/: buffers, launches, argument structs, GEMM operand conventions) runs end to end on
// machines without a GPU. Built and used by tests/cuda_emulated.rs, which
// runs `medgen verify --device cuda` on the committed fixtures with this library first on LD_LIBRARY_PATH.
//
// What it models:
//   * One device reporting compute capability 9.0. Device memory is host memory; every allocation sits
//     between two inaccessible pages (its end against the upper one), so a kernel or copy that runs past a
//     buffer faults at once and the fault handler names the kernel or call.
//   * Copies, memsets and GEMMs check that every byte they touch lies inside one live allocation and fail
//     with CUDA_ERROR_INVALID_VALUE / CUBLAS_STATUS_INVALID_VALUE and a message otherwise; GEMMs also check
//     cuBLAS's leading-dimension rules, and cuBLASLt matmuls that their operands keep the alignment the
//     algorithm was chosen for (allocations here are only 16-byte aligned, so a default 256-byte promise
//     fails).
//   * Modules: the PTX that NVRTC made is parsed for its `.version` (must be one a CUDA 13.0 driver loads)
//     and its `.entry` names; a function is found only when the PTX defines it. Launches run the kernel's
//     C++ build (the same .cu source, compiled against emu.h) synchronously, one block after another, with
//     the driver's launch limits checked (block ≤ 1024 threads, grid y/z ≤ 65535, dynamic shared memory).
//   * One in-order stream: every call completes before it returns, so events and synchronisation are trivial.
//   * MEDGEN_EMU_DRY_RUN=1 checks every call but runs no kernel, GEMM or copy and touches no device page: the
//     host code's allocations at full model size (a memory plan) in seconds, with meaningless results.
//     MEDGEN_EMU_MEMORY_GIB sets the device's memory (default 16).
// It does not model timing, concurrency between streams, or the hardware's memory model.

#include "emu.h"

// clang-format off
#include "../common.cuh"
#include "../elementwise.cu"
#include "../norm.cu"
#include "../rope.cu"
#include "../softmax.cu"
#include "../loss.cu"
#include "../optim.cu"
#include "../conv.cu"
#include "../attention.cu"
#include "../attention_tc.cu"
// clang-format on

#ifndef MEDGEN_EMU_SCAN

#include <signal.h>
#include <stdarg.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <utility>

namespace {

// ---- kernel registry -------------------------------------------------------------------------------------

using Invoke = void (*)(void** params);

template <class... A, size_t... I>
void invoke_with(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<std::remove_reference_t<A>*>(p[I])...);
}

template <class... A>
constexpr size_t arity(void (*)(A...)) {
    return sizeof...(A);
}

template <auto K>
void invoke_kernel(void** p) {
    invoke_with(K, p, std::make_index_sequence<arity(K)>{});
}

struct KernelEntry {
    const char* name;
    Invoke run;
};

// MEDGEN_EMU_REGISTRY names a generated file of `KERNEL(name)` lines, one per extern "C" kernel above.
#define KERNEL(name) {#name, &invoke_kernel<&name>},
const KernelEntry KERNELS[] = {
#include MEDGEN_EMU_REGISTRY
};
#undef KERNEL

// ---- state -----------------------------------------------------------------------------------------------

constexpr int OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, INVALID_DEVICE = 101,
              INVALID_IMAGE = 200, INVALID_CONTEXT = 201, INVALID_PTX = 218, UNSUPPORTED_PTX_VERSION = 222,
              INVALID_HANDLE = 400, NOT_FOUND = 500, LAUNCH_FAILED = 719;
// Device memory: 16 GiB, or MEDGEN_EMU_MEMORY_GIB.
size_t total_memory = 16ull << 30;
// MEDGEN_EMU_DRY_RUN=1: a memory plan, not a computation. Allocations are accounted but their pages never
// touched, and kernels, GEMMs, copies and memsets are checked (launch shapes, operand ranges) but not run, so
// the host code's allocation sequence at full model size runs in seconds; results are garbage.
bool dry_run = false;
constexpr size_t STATIC_SHARED_LIMIT = 48 * 1024, DYNAMIC_SHARED_OPTIN = 227 * 1024;

struct Alloc {
    size_t bytes;
    char* map;  // the whole mapping, guard pages included
    size_t map_bytes;
};

struct Function {
    std::string name;
    Invoke run;
    int max_dynamic_shared = (int)STATIC_SHARED_LIMIT;
};

struct Module {
    std::set<std::string> entries;
    // Looked-up functions, one per name, owned here: cudarc looks a kernel up before every launch.
    std::map<std::string, Function> functions;
};

std::recursive_mutex mu;
bool initialised = false;
std::map<uintptr_t, Alloc> allocs;  // keyed by the address handed out
size_t allocated = 0;
thread_local void* current_ctx = nullptr;
char primary_ctx_tag, stream_tag;
// What the device is doing, for the fault handler.
const char* volatile activity = "nothing";
char activity_buf[256];

// Names what the device does for the fault handler while it lives.
struct Activity {
    explicit Activity(const char* what, const char* name = "") {
        std::snprintf(activity_buf, sizeof activity_buf, "%s%s", what, name);
        activity = activity_buf;
    }
    ~Activity() { activity = "nothing"; }
    Activity(const Activity&) = delete;
    Activity& operator=(const Activity&) = delete;
};

void report(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void report(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fputs("medgen cuda emulation: ", stderr);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
    va_end(ap);
}

void on_fault(int sig, siginfo_t* info, void*) {
    char msg[512];
    int n = std::snprintf(msg, sizeof msg,
                          "medgen cuda emulation: memory fault at %p during %s (an access outside every live "
                          "device allocation)\n",
                          info->si_addr, (const char*)activity);
    if (n > 0) (void)!write(2, msg, (size_t)std::min(n, (int)sizeof msg));
    signal(sig, SIG_DFL);
    raise(sig);
}

void install_fault_handler() {
    // The fibers run on their own stacks; the handler needs one of its own in case a stack overflowed.
    static char alt[64 * 1024];
    stack_t ss{};
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    sigaltstack(&ss, nullptr);
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
}

// The allocation holding [p, p + bytes), or nullptr.
const Alloc* find(uintptr_t p, size_t bytes) {
    auto it = allocs.upper_bound(p);
    if (it == allocs.begin()) return nullptr;
    --it;
    if (p < it->first || p + bytes > it->first + it->second.bytes) return nullptr;
    return &it->second;
}

bool check_range(const char* op, uintptr_t p, size_t bytes) {
    if (bytes == 0 || find(p, bytes)) return true;
    report("%s: [0x%llx, +%zu bytes) is not inside one live device allocation", op, (unsigned long long)p, bytes);
    return false;
}

int do_alloc(uint64_t* out, size_t bytes) {
    if (!out) return INVALID_VALUE;
    if (bytes == 0) return INVALID_VALUE;  // as cuMemAlloc
    if (allocated + bytes > total_memory) return OUT_OF_MEMORY;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t padded = (bytes + 15) / 16 * 16;
    const size_t body = (padded + page - 1) / page * page;
    const size_t total = body + 2 * page;
    // A dry run never touches the body, so it must not be charged against the host's memory either.
    void* m = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | (dry_run ? MAP_NORESERVE : 0), -1, 0);
    if (m == MAP_FAILED) return OUT_OF_MEMORY;
    char* base = (char*)m;
    if (mprotect(base + page, body, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, total);
        return OUT_OF_MEMORY;
    }
    // Fill with a NaN pattern so reads of never-written device memory show up in results.
    if (!dry_run) std::memset(base + page, 0xff, body);
    char* p = base + page + body - padded;
    allocs[(uintptr_t)p] = Alloc{bytes, base, total};
    allocated += bytes;
    *out = (uint64_t)(uintptr_t)p;
    return OK;
}

int do_free(uint64_t p) {
    auto it = allocs.find((uintptr_t)p);
    if (it == allocs.end()) {
        report("cuMemFree: 0x%llx is not the start of a live allocation", (unsigned long long)p);
        return INVALID_VALUE;
    }
    munmap(it->second.map, it->second.map_bytes);
    allocated -= it->second.bytes;
    allocs.erase(it);
    return OK;
}

// "major.minor" of the PTX `.version` directive as major * 10 + minor, or -1.
int ptx_version(const std::string& ptx) {
    auto at = ptx.find(".version");
    if (at == std::string::npos) return -1;
    int major = 0, minor = 0;
    if (std::sscanf(ptx.c_str() + at, ".version %d.%d", &major, &minor) != 2) return -1;
    return major * 10 + minor;
}

}  // namespace

// ---- driver API ------------------------------------------------------------------------------------------

extern "C" {

int cuInit(unsigned flags) {
    std::lock_guard<std::recursive_mutex> g(mu);
    if (flags != 0) return INVALID_VALUE;
    if (!initialised) {
        install_fault_handler();
        const char* dry = std::getenv("MEDGEN_EMU_DRY_RUN");
        dry_run = dry && std::strcmp(dry, "1") == 0;
        if (const char* gib = std::getenv("MEDGEN_EMU_MEMORY_GIB")) {
            char* end = nullptr;
            unsigned long long v = std::strtoull(gib, &end, 10);
            if (end && *end == 0 && v > 0) total_memory = (size_t)v << 30;
        }
        initialised = true;
    }
    return OK;
}

int cuDriverGetVersion(int* v) {
    if (!v) return INVALID_VALUE;
    *v = 13000;
    return OK;
}

int cuDeviceGetCount(int* n) {
    if (!initialised) return NOT_INITIALIZED;
    if (!n) return INVALID_VALUE;
    *n = 1;
    return OK;
}

int cuDeviceGet(int* dev, int ordinal) {
    if (!initialised) return NOT_INITIALIZED;
    if (!dev) return INVALID_VALUE;
    if (ordinal != 0) return INVALID_DEVICE;
    *dev = 0;
    return OK;
}

int cuDeviceGetName(char* name, int len, int dev) {
    if (dev != 0) return INVALID_DEVICE;
    if (!name || len <= 0) return INVALID_VALUE;
    std::snprintf(name, (size_t)len, "medgen CPU emulation (sm_90)");
    return OK;
}

int cuDeviceGetAttribute(int* v, int attr, int dev) {
    if (dev != 0) return INVALID_DEVICE;
    if (!v) return INVALID_VALUE;
    switch (attr) {
        case 1: *v = 1024; break;                         // max threads per block
        case 2: *v = 1024; break;                         // max block dim x
        case 3: *v = 1024; break;                         // max block dim y
        case 4: *v = 64; break;                           // max block dim z
        case 5: *v = 2147483647; break;                   // max grid dim x
        case 6: case 7: *v = 65535; break;                // max grid dim y, z
        case 8: *v = (int)STATIC_SHARED_LIMIT; break;     // max shared memory per block
        case 10: *v = 32; break;                          // warp size
        case 16: *v = 132; break;                         // multiprocessors
        case 75: *v = 9; break;                           // compute capability major
        case 76: *v = 0; break;                           // minor
        case 97: *v = (int)DYNAMIC_SHARED_OPTIN; break;   // max shared memory per block (opt-in)
        case 115: *v = 0; break;                          // memory pools: no, so cudarc allocates synchronously
        default: *v = 0; break;
    }
    return OK;
}

int cuDeviceTotalMem_v2(size_t* bytes, int dev) {
    if (dev != 0) return INVALID_DEVICE;
    if (!bytes) return INVALID_VALUE;
    *bytes = total_memory;
    return OK;
}

int cuDeviceGetUuid_v2(unsigned char* uuid, int dev) {
    if (dev != 0) return INVALID_DEVICE;
    std::memset(uuid, 0x5a, 16);
    return OK;
}
int cuDeviceGetUuid(unsigned char* uuid, int dev) { return cuDeviceGetUuid_v2(uuid, dev); }

int cuDevicePrimaryCtxRetain(void** ctx, int dev) {
    if (!initialised) return NOT_INITIALIZED;
    if (dev != 0) return INVALID_DEVICE;
    *ctx = &primary_ctx_tag;
    return OK;
}
int cuDevicePrimaryCtxRelease_v2(int dev) { return dev == 0 ? OK : INVALID_DEVICE; }

int cuCtxSetCurrent(void* ctx) {
    if (ctx && ctx != &primary_ctx_tag) return INVALID_CONTEXT;
    current_ctx = ctx;
    return OK;
}
int cuCtxGetCurrent(void** ctx) {
    *ctx = current_ctx;
    return OK;
}
int cuCtxGetDevice(int* dev) {
    if (!current_ctx) return INVALID_CONTEXT;
    *dev = 0;
    return OK;
}
int cuCtxSynchronize() { return current_ctx ? OK : INVALID_CONTEXT; }
int cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return OK;
}
int cuCtxSetFlags(unsigned) { return OK; }

int cuStreamCreate(void** s, unsigned) {
    *s = &stream_tag;
    return OK;
}
int cuStreamCreateWithPriority(void** s, unsigned, int) {
    *s = &stream_tag;
    return OK;
}
int cuStreamDestroy_v2(void*) { return OK; }
int cuStreamSynchronize(void*) { return current_ctx ? OK : INVALID_CONTEXT; }
int cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
int cuStreamQuery(void*) { return OK; }

using Clock = std::chrono::steady_clock;
struct Event {
    Clock::time_point at;
    bool recorded = false;
};
int cuEventCreate(void** e, unsigned) {
    *e = new Event();
    return OK;
}
int cuEventRecord(void* e, void*) {
    if (!e) return INVALID_HANDLE;
    static_cast<Event*>(e)->at = Clock::now();
    static_cast<Event*>(e)->recorded = true;
    return OK;
}
int cuEventSynchronize(void* e) { return e ? OK : INVALID_HANDLE; }
int cuEventQuery(void* e) { return e ? OK : INVALID_HANDLE; }
int cuEventElapsedTime_v2(float* ms, void* a, void* b) {
    auto* x = static_cast<Event*>(a);
    auto* y = static_cast<Event*>(b);
    if (!x || !y || !x->recorded || !y->recorded) return INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(y->at - x->at).count();
    return OK;
}
int cuEventElapsedTime(float* ms, void* a, void* b) { return cuEventElapsedTime_v2(ms, a, b); }
int cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return OK;
}

int cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    std::lock_guard<std::recursive_mutex> g(mu);
    *free_bytes = total_memory - allocated;
    *total = total_memory;
    return OK;
}

int cuMemAlloc_v2(uint64_t* p, size_t bytes) {
    std::lock_guard<std::recursive_mutex> g(mu);
    if (!current_ctx) return INVALID_CONTEXT;
    return do_alloc(p, bytes);
}
int cuMemAllocAsync(uint64_t* p, size_t bytes, void*) { return cuMemAlloc_v2(p, bytes); }
int cuMemFree_v2(uint64_t p) {
    std::lock_guard<std::recursive_mutex> g(mu);
    return do_free(p);
}
int cuMemFreeAsync(uint64_t p, void*) { return cuMemFree_v2(p); }

int cuMemcpyHtoD_v2(uint64_t dst, const void* src, size_t n) {
    std::lock_guard<std::recursive_mutex> g(mu);
    if (!check_range("cuMemcpyHtoD destination", dst, n)) return INVALID_VALUE;
    Activity act("cuMemcpyHtoD");
    if (!dry_run) std::memcpy((void*)(uintptr_t)dst, src, n);
    return OK;
}
int cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t n, void*) { return cuMemcpyHtoD_v2(dst, src, n); }
int cuMemcpyDtoH_v2(void* dst, uint64_t src, size_t n) {
    std::lock_guard<std::recursive_mutex> g(mu);
    if (!check_range("cuMemcpyDtoH source", src, n)) return INVALID_VALUE;
    Activity act("cuMemcpyDtoH");
    if (dry_run)
        std::memset(dst, 0, n);
    else
        std::memcpy(dst, (const void*)(uintptr_t)src, n);
    return OK;
}
int cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t n, void*) { return cuMemcpyDtoH_v2(dst, src, n); }
int cuMemcpyDtoD_v2(uint64_t dst, uint64_t src, size_t n) {
    std::lock_guard<std::recursive_mutex> g(mu);
    if (!check_range("cuMemcpyDtoD source", src, n) || !check_range("cuMemcpyDtoD destination", dst, n))
        return INVALID_VALUE;
    Activity act("cuMemcpyDtoD");
    if (!dry_run) std::memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n);
    return OK;
}
int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t n, void*) { return cuMemcpyDtoD_v2(dst, src, n); }
int cuMemsetD8_v2(uint64_t dst, unsigned char v, size_t n) {
    std::lock_guard<std::recursive_mutex> g(mu);
    if (!check_range("cuMemsetD8", dst, n)) return INVALID_VALUE;
    if (!dry_run) std::memset((void*)(uintptr_t)dst, v, n);
    return OK;
}
int cuMemsetD8Async(uint64_t dst, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(dst, v, n); }

int cuModuleLoadData(void** module, const void* image) {
    std::lock_guard<std::recursive_mutex> g(mu);
    if (!module || !image) return INVALID_VALUE;
    std::string ptx((const char*)image);
    int ver = ptx_version(ptx);
    if (ver < 0) {
        report("cuModuleLoadData: the image is not PTX text (no .version directive)");
        return INVALID_IMAGE;
    }
    // PTX ISA 9.0 is the newest a CUDA 13.0 driver JIT-compiles.
    if (ver > 90) {
        report("cuModuleLoadData: PTX .version %d.%d is newer than a CUDA 13.0 driver loads (9.0)", ver / 10,
               ver % 10);
        return UNSUPPORTED_PTX_VERSION;
    }
    auto m = new Module();
    for (size_t at = ptx.find(".entry"); at != std::string::npos; at = ptx.find(".entry", at + 1)) {
        size_t s = at + 6;
        while (s < ptx.size() && std::isspace((unsigned char)ptx[s])) ++s;
        size_t e = s;
        while (e < ptx.size() && (std::isalnum((unsigned char)ptx[e]) || ptx[e] == '_' || ptx[e] == '$')) ++e;
        if (e > s) m->entries.insert(ptx.substr(s, e - s));
    }
    if (m->entries.empty()) {
        delete m;
        report("cuModuleLoadData: the PTX defines no kernel");
        return INVALID_PTX;
    }
    *module = m;
    return OK;
}
int cuModuleUnload(void* m) {
    delete static_cast<Module*>(m);
    return OK;
}

int cuModuleGetFunction(void** f, void* module, const char* name) {
    std::lock_guard<std::recursive_mutex> g(mu);
    auto* m = static_cast<Module*>(module);
    if (!m || !f || !name) return INVALID_VALUE;
    if (!m->entries.count(name)) return NOT_FOUND;
    if (auto it = m->functions.find(name); it != m->functions.end()) {
        *f = &it->second;
        return OK;
    }
    for (const auto& k : KERNELS) {
        if (std::strcmp(k.name, name) == 0) {
            *f = &m->functions.emplace(name, Function{name, k.run}).first->second;
            return OK;
        }
    }
    report("cuModuleGetFunction: %s is in the PTX but not in the emulation's kernel table", name);
    return NOT_FOUND;
}

int cuFuncGetAttribute(int* v, int attr, void* f) {
    if (!f || !v) return INVALID_VALUE;
    switch (attr) {
        case 0: *v = 1024; break;  // max threads per block
        case 8: *v = static_cast<Function*>(f)->max_dynamic_shared; break;
        default: *v = 0; break;
    }
    return OK;
}
int cuFuncSetAttribute(void* f, int attr, int v) {
    if (!f) return INVALID_HANDLE;
    if (attr == 8) {  // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (v < 0 || (size_t)v > DYNAMIC_SHARED_OPTIN) return INVALID_VALUE;
        static_cast<Function*>(f)->max_dynamic_shared = v;
    }
    return OK;
}
int cuFuncSetCacheConfig(void*, int) { return OK; }

int cuLaunchKernel(void* func, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   unsigned shared, void*, void** params, void** extra) {
    std::lock_guard<std::recursive_mutex> g(mu);
    auto* f = static_cast<Function*>(func);
    if (!f) return INVALID_HANDLE;
    if (!current_ctx) return INVALID_CONTEXT;
    if (extra) {
        report("%s: launch with `extra` parameters is not emulated", f->name.c_str());
        return INVALID_VALUE;
    }
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || gy > 65535 || gz > 65535 ||
        (uint64_t)bx * by * bz > 1024 || bz > 64) {
        report("%s: invalid launch shape grid (%u, %u, %u) block (%u, %u, %u)", f->name.c_str(), gx, gy, gz, bx,
               by, bz);
        return INVALID_VALUE;
    }
    if (shared > (unsigned)f->max_dynamic_shared) {
        report("%s: %u bytes of dynamic shared memory exceed the function's limit %d", f->name.c_str(), shared,
               f->max_dynamic_shared);
        return INVALID_VALUE;
    }
    if (!params) return INVALID_VALUE;
    if (dry_run) return OK;
    Invoke run = f->run;
    bool ok;
    {
        Activity act("kernel ", f->name.c_str());
        ok = emu::try_launch(dim3{gx, gy, gz}, dim3{bx, by, bz}, [&] { run(params); });
    }
    if (!ok) {
        report("%s: %s", f->name.c_str(), emu::failure.c_str());
        return LAUNCH_FAILED;
    }
    return OK;
}

struct ErrorText {
    int code;
    const char* name;
    const char* text;
};
const ErrorText ERRORS[] = {
    {OK, "CUDA_SUCCESS", "no error"},
    {INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {INVALID_PTX, "CUDA_ERROR_INVALID_PTX", "a PTX JIT compilation failed"},
    {UNSUPPORTED_PTX_VERSION, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
     "the provided PTX was compiled with an unsupported toolchain"},
    {INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
};

// The entry of an error code, or nullptr (then the call fails as the driver's does for an unknown code).
const ErrorText* error_text(int e) {
    for (const auto& x : ERRORS)
        if (x.code == e) return &x;
    return nullptr;
}

int cuGetErrorString(int e, const char** s) {
    const ErrorText* x = error_text(e);
    *s = x ? x->text : "unknown error";
    return x ? OK : INVALID_VALUE;
}
int cuGetErrorName(int e, const char** s) {
    const ErrorText* x = error_text(e);
    *s = x ? x->name : "CUDA_ERROR_UNKNOWN";
    return x ? OK : INVALID_VALUE;
}

}  // extern "C"

// ---- cuBLAS ----------------------------------------------------------------------------------------------

namespace {

constexpr int BLAS_OK = 0, BLAS_NOT_INITIALIZED = 1, BLAS_INVALID_VALUE = 7, BLAS_NOT_SUPPORTED = 15;
constexpr int R_32F = 0, R_16F = 2, R_16BF = 14;
constexpr int COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77, COMPUTE_32F_FAST_16BF = 75;

struct BlasHandle {
    void* stream = nullptr;
};

size_t dtype_bytes(int t) { return t == R_32F ? 4 : (t == R_16F || t == R_16BF) ? 2 : 0; }

double load(const void* p, int t, int64_t i) {
    switch (t) {
        case R_16BF: return emu::bf16(((const uint16_t*)p)[i]);
        case R_16F: return emu_f16_to_f32(((const uint16_t*)p)[i]);
        default: return ((const float*)p)[i];
    }
}

void store(void* p, int t, int64_t i, double v) {
    switch (t) {
        case R_16BF: ((uint16_t*)p)[i] = f32_to_bf16_bits((float)v); break;
        case R_16F: ((uint16_t*)p)[i] = emu_f32_to_f16((float)v); break;
        default: ((float*)p)[i] = (float)v; break;
    }
}

// The matrices of one operand: `rows` x `cols` column-major with leading dimension `ld`, `batch` of them
// `stride` elements apart. Checks they lie inside one allocation.
bool check_operand(const char* op, const char* what, const void* p, int t, int64_t rows, int64_t cols, int64_t ld,
                   int64_t stride, int batch) {
    if (ld < std::max<int64_t>(1, rows)) {
        report("%s: %s leading dimension %lld < its %lld rows", op, what, (long long)ld, (long long)rows);
        return false;
    }
    if (stride < 0) {
        report("%s: %s has a negative batch stride", op, what);
        return false;
    }
    int64_t last = (cols - 1) * ld + (rows - 1) + (int64_t)(batch - 1) * stride;
    size_t bytes = (size_t)(last + 1) * dtype_bytes(t);
    char label[96];
    std::snprintf(label, sizeof label, "%s %s", op, what);
    return check_range(label, (uintptr_t)p, bytes);
}

// What a GEMM does to `alpha·acc + beta·C` before storing it (cuBLASLt epilogues; plain cuBLAS: none).
struct Epilogue {
    const void* bias = nullptr;  // one value per row of the output, of type bias_type
    int bias_type = R_32F;
    bool gelu = false;  // GELU with the tanh approximation
};

// An f32 value rounded to TF32 (10 mantissa bits, to nearest), as tensor cores see f32 operands under
// COMPUTE_32F_FAST_TF32.
float tf32(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & ~0x1fffu;  // leave inf / NaN alone
    std::memcpy(&v, &u, 4);
    return v;
}

double gelu_tanh(double v) { return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

// Column-major D[m, n] = epilogue(alpha op(A)[m, k] op(B)[k, n] + beta C) over `batch` matrices, accumulating in
// double (cuBLAS accumulates in f32; the difference is far inside every tolerance the tests use). C and D may
// be the same matrix. `fast_tf32`: f32 operands are rounded to TF32 first. Operands were checked by the caller.
void gemm_core(int ta, int tb, int64_t m, int64_t n, int64_t k, double al, const void* A, int at, int64_t lda,
               int64_t sa, const void* B, int bt, int64_t ldb, int64_t sb, double be, const void* C, int ct,
               int64_t ldc, int64_t sc, void* D, int dt, int64_t ldd, int64_t sd, int64_t batch, const Epilogue& ep,
               bool fast_tf32) {
    auto in = [&](const void* p, int t, int64_t i) {
        float v = (float)load(p, t, i);
        return fast_tf32 && t == R_32F ? tf32(v) : v;
    };
    // op(A) row by row and one column of op(B) at a time, both unpacked to contiguous f32, so the dot
    // products walk memory in order whatever the operands' layouts.
    std::vector<float> a((size_t)m * (size_t)k), col((size_t)k);
    for (int64_t b = 0; b < batch; ++b) {
        if (ta) {
            for (int64_t i = 0; i < m; ++i)
                for (int64_t l = 0; l < k; ++l) a[i * k + l] = in(A, at, b * sa + i * lda + l);
        } else {
            for (int64_t l = 0; l < k; ++l)
                for (int64_t i = 0; i < m; ++i) a[i * k + l] = in(A, at, b * sa + l * lda + i);
        }
        for (int64_t j = 0; j < n; ++j) {
            for (int64_t l = 0; l < k; ++l) col[l] = in(B, bt, b * sb + (tb ? l * ldb + j : j * ldb + l));
            for (int64_t i = 0; i < m; ++i) {
                const float* row = &a[i * k];
                double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
                int64_t l = 0;
                for (; l + 4 <= k; l += 4) {
                    s0 += (double)row[l] * col[l];
                    s1 += (double)row[l + 1] * col[l + 1];
                    s2 += (double)row[l + 2] * col[l + 2];
                    s3 += (double)row[l + 3] * col[l + 3];
                }
                for (; l < k; ++l) s0 += (double)row[l] * col[l];
                double v = al * ((s0 + s1) + (s2 + s3));
                if (be != 0.0) v += be * load(C, ct, b * sc + j * ldc + i);
                if (ep.bias) v += load(ep.bias, ep.bias_type, i);
                if (ep.gelu) v = gelu_tanh(v);
                store(D, dt, b * sd + j * ldd + i, v);
            }
        }
    }
}

}  // namespace

extern "C" {

int cublasCreate_v2(void** h) {
    if (!initialised) return BLAS_NOT_INITIALIZED;
    *h = new BlasHandle();
    return BLAS_OK;
}
int cublasDestroy_v2(void* h) {
    delete static_cast<BlasHandle*>(h);
    return BLAS_OK;
}
int cublasSetStream_v2(void* h, void* s) {
    if (!h) return BLAS_NOT_INITIALIZED;
    static_cast<BlasHandle*>(h)->stream = s;
    return BLAS_OK;
}
int cublasSetWorkspace_v2(void* h, void*, size_t) { return h ? BLAS_OK : BLAS_NOT_INITIALIZED; }
int cublasSetMathMode(void* h, int) { return h ? BLAS_OK : BLAS_NOT_INITIALIZED; }
int cublasSetPointerMode_v2(void* h, int mode) { return h ? (mode == 0 ? BLAS_OK : BLAS_NOT_SUPPORTED) : 1; }
int cublasGetPointerMode_v2(void* h, int* mode) {
    if (!h) return BLAS_NOT_INITIALIZED;
    *mode = 0;
    return BLAS_OK;
}
const char* cublasGetStatusString(int s) {
    switch (s) {
        case BLAS_OK: return "CUBLAS_STATUS_SUCCESS";
        case BLAS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case BLAS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case BLAS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

// Column-major C[m, n] = alpha op(A)[m, k] op(B)[k, n] + beta C over `batch` matrices.
int cublasGemmStridedBatchedEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A,
                               int at, int lda, long long sa, const void* B, int bt, int ldb, long long sb,
                               const void* beta, void* C, int ct, int ldc, long long sc, int batch, int compute,
                               int algo) {
    std::lock_guard<std::recursive_mutex> g(mu);
    (void)algo;
    if (!h) return BLAS_NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || (ta != 0 && ta != 1) || (tb != 0 && tb != 1)) {
        report("cublasGemmStridedBatchedEx: bad sizes or operations (m %d n %d k %d batch %d)", m, n, k, batch);
        return BLAS_INVALID_VALUE;
    }
    if (compute != COMPUTE_32F && compute != COMPUTE_32F_FAST_TF32 && compute != COMPUTE_32F_FAST_16BF) {
        report("cublasGemmStridedBatchedEx: compute type %d is not emulated", compute);
        return BLAS_NOT_SUPPORTED;
    }
    if (!dtype_bytes(at) || !dtype_bytes(bt) || !dtype_bytes(ct) || at != bt) {
        report("cublasGemmStridedBatchedEx: dtypes A %d B %d C %d are not a cuBLAS combination", at, bt, ct);
        return BLAS_NOT_SUPPORTED;
    }
    if (ldc < std::max(1, m)) {
        report("cublasGemmStridedBatchedEx: ldc %d < m %d", ldc, m);
        return BLAS_INVALID_VALUE;
    }
    if (m == 0 || n == 0 || batch == 0) return BLAS_OK;
    const double al = *(const float*)alpha, be = *(const float*)beta;
    const int64_t ar = ta ? k : m, ac = ta ? m : k, br = tb ? n : k, bc = tb ? k : n;
    const char* op = "cublasGemmStridedBatchedEx";
    if (k > 0 && (!check_operand(op, "A", A, at, ar, ac, lda, sa, batch) ||
                  !check_operand(op, "B", B, bt, br, bc, ldb, sb, batch)))
        return BLAS_INVALID_VALUE;
    if (!check_operand(op, "C", C, ct, m, n, ldc, sc, batch)) return BLAS_INVALID_VALUE;
    if (dry_run) return BLAS_OK;
    Activity act("cublasGemmStridedBatchedEx");
    gemm_core(ta, tb, m, n, k, al, A, at, lda, sa, B, bt, ldb, sb, be, C, ct, ldc, sc, C, ct, ldc, sc, batch,
              Epilogue{}, compute == COMPUTE_32F_FAST_TF32);
    return BLAS_OK;
}

int cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda,
                 const void* B, int bt, int ldb, const void* beta, void* C, int ct, int ldc, int compute, int algo) {
    return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, at, lda, 0, B, bt, ldb, 0, beta, C, ct, ldc, 0,
                                      1, compute, algo);
}

}  // extern "C"

// ---- cuBLASLt ----------------------------------------------------------------------------------------------
// The matmul path medgen uses for fused epilogues: handle, matrix layouts, matmul descriptor, preference,
// heuristic and cublasLtMatmul. The heuristic "chooses" an algorithm that records what it was chosen for
// (the problem and the alignments the preference promised, 256 bytes unless set, as in cuBLASLt); the matmul
// then refuses operands the algorithm was not chosen for, so a stale cached algorithm or an alignment promise
// the pointers do not keep fails here as it could on a GPU.

namespace {

constexpr int LT_EPI_DEFAULT = 1, LT_EPI_BIAS = 4, LT_EPI_GELU = 32, LT_EPI_GELU_BIAS = 36;
constexpr uint64_t LT_ALGO_MAGIC = 0x6d656467656e4c74ull;  // "medgenLt"

struct LtLayout {
    int type;
    uint64_t rows, cols;
    int64_t ld;
    int32_t batch = 1;
    int64_t stride = 0;
    int32_t order = 0;  // CUBLASLT_ORDER_COL
};

struct LtDesc {
    int compute, scale;
    int32_t ta = 0, tb = 0, tc = 0;
    uint32_t epilogue = LT_EPI_DEFAULT;
    uint64_t bias = 0;
    int32_t bias_type = -1;  // -1: the output's type
    int32_t pointer_mode = 0;
};

struct LtPref {
    uint64_t max_workspace = 0;
    uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D
};

// What cublasLtMatmulAlgo_t (8 x u64) carries here.
struct LtAlgo {
    uint64_t magic;
    uint64_t m, n, k;
    uint32_t align[4];
    uint32_t epilogue;
    int32_t types;  // A | B << 8 | D << 16
    uint64_t pad;
};
static_assert(sizeof(LtAlgo) == 64, "cublasLtMatmulAlgo_t is 64 bytes");

struct LtHeuristicResult {
    LtAlgo algo;
    size_t workspace;
    int state;
    float waves;
    int reserved[4];
};

template <class T>
int set_attr(T& field, const void* buf, size_t size, const char* what) {
    if (!buf || size != sizeof(T)) {
        report("%s: attribute buffer of %zu bytes, expected %zu", what, size, sizeof(T));
        return BLAS_INVALID_VALUE;
    }
    std::memcpy(&field, buf, sizeof(T));
    return BLAS_OK;
}

uint32_t alignment_of(const void* p) {
    uintptr_t v = (uintptr_t)p;
    uint32_t a = 1;
    while (a < 256 && v % (a * 2) == 0) a *= 2;
    return v == 0 ? 256 : a;
}

// Rows/cols of op(X) for a layout and a transpose flag.
void op_shape(const LtLayout& l, int32_t t, uint64_t* r, uint64_t* c) {
    *r = t ? l.cols : l.rows;
    *c = t ? l.rows : l.cols;
}

// The inner dimension k: the columns of op(A).
uint64_t lt_inner(const LtDesc& d, const LtLayout& a) { return d.ta ? a.rows : a.cols; }

// The checks the heuristic and the matmul share: a problem cuBLASLt can run. Returns a cuBLAS status.
int lt_validate(const char* op, const LtDesc* d, const LtLayout* a, const LtLayout* b, const LtLayout* c,
                const LtLayout* dd) {
    if (!d || !a || !b || !c || !dd) {
        report("%s: a descriptor is null", op);
        return BLAS_INVALID_VALUE;
    }
    if ((d->compute != COMPUTE_32F && d->compute != COMPUTE_32F_FAST_TF32) || d->scale != R_32F) {
        report("%s: compute type %d / scale type %d is not emulated (medgen uses COMPUTE_32F[_FAST_TF32], R_32F)", op,
               d->compute, d->scale);
        return BLAS_NOT_SUPPORTED;
    }
    if (d->tc != 0 || d->pointer_mode != 0 || a->order || b->order || c->order || dd->order) {
        report("%s: transposed C, device pointer mode or non-column-major orders are not emulated", op);
        return BLAS_NOT_SUPPORTED;
    }
    if (!dtype_bytes(a->type) || a->type != b->type || !dtype_bytes(dd->type)) {
        report("%s: dtypes A %d B %d D %d are not a cuBLASLt combination", op, a->type, b->type, dd->type);
        return BLAS_NOT_SUPPORTED;
    }
    if (c->type != dd->type || c->rows != dd->rows || c->cols != dd->cols || c->ld != dd->ld || c->batch != dd->batch) {
        report("%s: C and D layouts differ (only C = D layouts are emulated)", op);
        return BLAS_NOT_SUPPORTED;
    }
    uint64_t ar, ac, br, bc;
    op_shape(*a, d->ta, &ar, &ac);
    op_shape(*b, d->tb, &br, &bc);
    if (ar != dd->rows || bc != dd->cols || ac != br) {
        report("%s: op(A) %llux%llu times op(B) %llux%llu does not give D %llux%llu", op, (unsigned long long)ar,
               (unsigned long long)ac, (unsigned long long)br, (unsigned long long)bc, (unsigned long long)dd->rows,
               (unsigned long long)dd->cols);
        return BLAS_INVALID_VALUE;
    }
    if (a->batch != dd->batch || b->batch != dd->batch || dd->batch < 1) {
        report("%s: batch counts A %d B %d D %d differ", op, a->batch, b->batch, dd->batch);
        return BLAS_INVALID_VALUE;
    }
    switch (d->epilogue) {
        case LT_EPI_DEFAULT: case LT_EPI_BIAS: case LT_EPI_GELU: case LT_EPI_GELU_BIAS: break;
        default:
            report("%s: epilogue %u is not emulated", op, d->epilogue);
            return BLAS_NOT_SUPPORTED;
    }
    return BLAS_OK;
}

int lt_types(const LtLayout* a, const LtLayout* b, const LtLayout* d) { return a->type | b->type << 8 | d->type << 16; }

}  // namespace

extern "C" {

int cublasLtCreate(void** h) {
    if (!initialised) return BLAS_NOT_INITIALIZED;
    *h = new BlasHandle();
    return BLAS_OK;
}
int cublasLtDestroy(void* h) {
    delete static_cast<BlasHandle*>(h);
    return BLAS_OK;
}
const char* cublasLtGetStatusString(int s) { return cublasGetStatusString(s); }
const char* cublasLtGetStatusName(int s) { return cublasGetStatusString(s); }

int cublasLtMatrixLayoutCreate(void** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (!l || !dtype_bytes(type)) return BLAS_INVALID_VALUE;
    if (ld < (int64_t)std::max<uint64_t>(1, rows)) {
        report("cublasLtMatrixLayoutCreate: leading dimension %lld < %llu rows", (long long)ld, (unsigned long long)rows);
        return BLAS_INVALID_VALUE;
    }
    *l = new LtLayout{type, rows, cols, ld};
    return BLAS_OK;
}
int cublasLtMatrixLayoutDestroy(void* l) {
    delete static_cast<LtLayout*>(l);
    return BLAS_OK;
}
int cublasLtMatrixLayoutSetAttribute(void* l, int attr, const void* buf, size_t size) {
    auto* x = static_cast<LtLayout*>(l);
    if (!x) return BLAS_NOT_INITIALIZED;
    const char* w = "cublasLtMatrixLayoutSetAttribute";
    switch (attr) {
        case 0: return set_attr(x->type, buf, size, w);
        case 1: return set_attr(x->order, buf, size, w);
        case 5: return set_attr(x->batch, buf, size, w);
        case 6: return set_attr(x->stride, buf, size, w);
        default: report("%s: attribute %d is not emulated", w, attr); return BLAS_NOT_SUPPORTED;
    }
}

int cublasLtMatmulDescCreate(void** d, int compute, int scale) {
    if (!d) return BLAS_INVALID_VALUE;
    *d = new LtDesc{compute, scale};
    return BLAS_OK;
}
int cublasLtMatmulDescDestroy(void* d) {
    delete static_cast<LtDesc*>(d);
    return BLAS_OK;
}
int cublasLtMatmulDescSetAttribute(void* d, int attr, const void* buf, size_t size) {
    auto* x = static_cast<LtDesc*>(d);
    if (!x) return BLAS_NOT_INITIALIZED;
    const char* w = "cublasLtMatmulDescSetAttribute";
    switch (attr) {
        case 2: return set_attr(x->pointer_mode, buf, size, w);
        case 3: return set_attr(x->ta, buf, size, w);
        case 4: return set_attr(x->tb, buf, size, w);
        case 5: return set_attr(x->tc, buf, size, w);
        case 7: return set_attr(x->epilogue, buf, size, w);
        case 8: return set_attr(x->bias, buf, size, w);
        case 26: return set_attr(x->bias_type, buf, size, w);
        default: report("%s: attribute %d is not emulated", w, attr); return BLAS_NOT_SUPPORTED;
    }
}

int cublasLtMatmulPreferenceCreate(void** p) {
    if (!p) return BLAS_INVALID_VALUE;
    *p = new LtPref();
    return BLAS_OK;
}
int cublasLtMatmulPreferenceDestroy(void* p) {
    delete static_cast<LtPref*>(p);
    return BLAS_OK;
}
int cublasLtMatmulPreferenceSetAttribute(void* p, int attr, const void* buf, size_t size) {
    auto* x = static_cast<LtPref*>(p);
    if (!x) return BLAS_NOT_INITIALIZED;
    const char* w = "cublasLtMatmulPreferenceSetAttribute";
    switch (attr) {
        case 1: return set_attr(x->max_workspace, buf, size, w);
        case 5: case 6: case 7: case 8: {
            uint32_t v = 0;
            int r = set_attr(v, buf, size, w);
            if (r != BLAS_OK) return r;
            if (v == 0 || (v & (v - 1)) != 0) {
                report("%s: alignment %u is not a power of two", w, v);
                return BLAS_INVALID_VALUE;
            }
            x->align[attr - 5] = v;
            return BLAS_OK;
        }
        default: report("%s: attribute %d is not emulated", w, attr); return BLAS_NOT_SUPPORTED;
    }
}

int cublasLtMatmulAlgoGetHeuristic(void* h, void* desc, void* a, void* b, void* c, void* d, void* pref, int requested,
                                   LtHeuristicResult* results, int* count) {
    std::lock_guard<std::recursive_mutex> g(mu);
    const char* op = "cublasLtMatmulAlgoGetHeuristic";
    if (!h) return BLAS_NOT_INITIALIZED;
    if (!pref || requested < 1 || !results || !count) return BLAS_INVALID_VALUE;
    auto* dx = static_cast<LtDesc*>(desc);
    auto *la = static_cast<LtLayout*>(a), *lb = static_cast<LtLayout*>(b), *dd = static_cast<LtLayout*>(d);
    int r = lt_validate(op, dx, la, lb, static_cast<LtLayout*>(c), dd);
    *count = 0;
    if (r != BLAS_OK) return r;
    const auto* p = static_cast<LtPref*>(pref);
    // Kernels need at least element alignment.
    if (p->align[0] < dtype_bytes(la->type) || p->align[1] < dtype_bytes(lb->type) ||
        p->align[3] < dtype_bytes(dd->type))
        return BLAS_NOT_SUPPORTED;
    LtAlgo algo{};
    algo.magic = LT_ALGO_MAGIC;
    algo.m = dd->rows;
    algo.n = dd->cols;
    algo.k = lt_inner(*dx, *la);
    std::memcpy(algo.align, p->align, sizeof algo.align);
    algo.epilogue = dx->epilogue;
    algo.types = lt_types(la, lb, dd);
    results[0] = LtHeuristicResult{algo, 0, BLAS_OK, 1.0f, {0, 0, 0, 0}};
    *count = 1;
    return BLAS_OK;
}

int cublasLtMatmul(void* h, void* desc, const void* alpha, const void* A, void* adesc, const void* B, void* bdesc,
                   const void* beta, const void* C, void* cdesc, void* D, void* ddesc, const void* algo_p,
                   void* workspace, size_t workspace_bytes, void* stream) {
    std::lock_guard<std::recursive_mutex> g(mu);
    (void)stream;
    const char* op = "cublasLtMatmul";
    if (!h) return BLAS_NOT_INITIALIZED;
    auto* dx = static_cast<LtDesc*>(desc);
    auto *la = static_cast<LtLayout*>(adesc), *lb = static_cast<LtLayout*>(bdesc);
    auto *lc = static_cast<LtLayout*>(cdesc), *ld = static_cast<LtLayout*>(ddesc);
    int r = lt_validate(op, dx, la, lb, lc, ld);
    if (r != BLAS_OK) return r;
    if (!algo_p) {
        report("%s: no algorithm given (medgen always passes the heuristic's)", op);
        return BLAS_INVALID_VALUE;
    }
    LtAlgo algo;
    std::memcpy(&algo, algo_p, sizeof algo);
    const uint64_t k = lt_inner(*dx, *la);
    if (algo.magic != LT_ALGO_MAGIC || algo.m != ld->rows || algo.n != ld->cols || algo.k != k ||
        algo.epilogue != dx->epilogue || algo.types != lt_types(la, lb, ld)) {
        report("%s: the algorithm was chosen for another problem (%llux%llux%llu, epilogue %u)", op,
               (unsigned long long)algo.m, (unsigned long long)algo.n, (unsigned long long)algo.k, algo.epilogue);
        return BLAS_INVALID_VALUE;
    }
    const void* ptrs[4] = {A, B, C, D};
    const char* names[4] = {"A", "B", "C", "D"};
    for (int i = 0; i < 4; ++i) {
        if (alignment_of(ptrs[i]) < algo.align[i]) {
            report("%s: %s at %p is %u-byte aligned but the algorithm was chosen for %u-byte alignment", op, names[i],
                   ptrs[i], alignment_of(ptrs[i]), algo.align[i]);
            return BLAS_INVALID_VALUE;
        }
    }
    if (workspace_bytes > 0 && !check_range("cublasLtMatmul workspace", (uintptr_t)workspace, workspace_bytes))
        return BLAS_INVALID_VALUE;
    const bool bias = dx->epilogue == LT_EPI_BIAS || dx->epilogue == LT_EPI_GELU_BIAS;
    Epilogue ep;
    ep.gelu = dx->epilogue == LT_EPI_GELU || dx->epilogue == LT_EPI_GELU_BIAS;
    if (bias) {
        ep.bias = (const void*)(uintptr_t)dx->bias;
        ep.bias_type = dx->bias_type < 0 ? ld->type : dx->bias_type;
        if (!dtype_bytes(ep.bias_type)) return BLAS_NOT_SUPPORTED;
        if (!ep.bias) {
            report("%s: a bias epilogue without CUBLASLT_MATMUL_DESC_BIAS_POINTER", op);
            return BLAS_INVALID_VALUE;
        }
        if (!check_range("cublasLtMatmul bias", (uintptr_t)ep.bias, ld->rows * dtype_bytes(ep.bias_type)))
            return BLAS_INVALID_VALUE;
    }
    const int64_t m = (int64_t)ld->rows, n = (int64_t)ld->cols, kk = (int64_t)k;
    const int batch = ld->batch;
    if (m == 0 || n == 0) return BLAS_OK;
    // The stored matrices (before any transpose) must lie in their allocations.
    if (kk > 0 && (!check_operand(op, "A", A, la->type, (int64_t)la->rows, (int64_t)la->cols, la->ld, la->stride,
                                  batch) ||
                   !check_operand(op, "B", B, lb->type, (int64_t)lb->rows, (int64_t)lb->cols, lb->ld, lb->stride,
                                  batch)))
        return BLAS_INVALID_VALUE;
    const double al = *(const float*)alpha, be = *(const float*)beta;
    if (be != 0.0 && !check_operand(op, "C", C, lc->type, m, n, lc->ld, lc->stride, batch)) return BLAS_INVALID_VALUE;
    if (!check_operand(op, "D", D, ld->type, m, n, ld->ld, ld->stride, batch)) return BLAS_INVALID_VALUE;
    if (dry_run) return BLAS_OK;
    Activity act(op);
    gemm_core(dx->ta, dx->tb, m, n, kk, al, A, la->type, la->ld, la->stride, B, lb->type, lb->ld, lb->stride, be, C,
              lc->type, lc->ld, lc->stride, D, ld->type, ld->ld, ld->stride, batch, ep,
              dx->compute == COMPUTE_32F_FAST_TF32);
    return BLAS_OK;
}

}  // extern "C"

#endif  // MEDGEN_EMU_SCAN
