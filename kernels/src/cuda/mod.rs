//! The CUDA backend: driver detection, NVRTC-compiled kernels (`kernels/cuda/*.cu`) cached on disk, cuBLAS
//! GEMMs, device storage for [`Tensor`](crate::Tensor)s and the op implementations the networks dispatch to.
//!
//! Everything CUDA is loaded with `dlopen` at run time (cudarc's `dynamic-loading`): the binary builds and
//! starts on machines without any CUDA library, and [`available`] reports [`Error::NoCuda`] there (for
//! example "no CUDA driver (libcuda.so not found): running on CPU") instead of panicking. Callers fall back
//! to the CPU backend on that error.
//!
//! # Pieces
//!
//! * Detection: [`available`] lists the devices; it checks that `libcuda` can be opened *before* any other
//!   driver call, because cudarc panics when it cannot load the library.
//! * Compilation: each `kernels/cuda/<file>.cu` is compiled by NVRTC at its first use on a device, with
//!   `--gpu-architecture=compute_<major><minor>` of that device, prefixed with `common.cuh`; the PTX is cached
//!   in `$MEDGEN_CUDA_CACHE` (or `~/.cache/medgen/cuda/`) under the blake3 hash of source, options and NVRTC
//!   version, written atomically. NVRTC is found by name (`libnvrtc.so.13`) or, when `MEDGEN_NVRTC_DIR` is
//!   set (or [`preload_nvrtc`] was called), from that folder (the PyPI wheel `nvidia-cuda-nvrtc`, see
//!   `scripts/setup.sh`). PTX must not be newer than the driver: use the NVRTC of the driver's CUDA version.
//! * Devices: one context + one stream + one cuBLAS handle per ordinal, created at first use and kept for the
//!   life of the process. All work of a device runs in order on its stream.
//! * GEMMs: cuBLAS `GemmStridedBatchedEx`, row-major convention (see `launch::gemm`), bf16 or f32 operands
//!   with fp32 compute; the output may be f32 for bf16 inputs (gradients). A bf16 operand paired with an f32
//!   one (a bf16 model's backward: f32 gradients against bf16 weights and activations) runs on TF32 tensor
//!   cores; pure f32 GEMMs (f32 models) stay exact f32. Linear layers with a bias (and
//!   [`crate::ops::linear::linear_gelu_tanh`]) run as one cuBLASLt GEMM with a fused bias / bias+GELU
//!   epilogue where `libcublasLt` is present and has an algorithm (`blaslt`), else GEMM + separate kernels;
//!   [`gemm_stats`] counts which.
//! * Ops with a CUDA path (forward and backward): linear, batched matmul, conv3d (im2col + GEMM + col2im),
//!   layer norm, RMS norm, channel RMS norm, RoPE 3D (tables uploaded once per grid and device), attention
//!   (flash forward/backward: tensor-core mma.sync kernels for bf16 with head dim 64/128 on sm_80+, checked
//!   without a GPU by the host emulation in `kernels/cuda/emu/`; general fp32-SIMT kernels otherwise), GELU (tanh and erf), SiLU, clamp, modulation, softmax, add/sub/mul/scale,
//!   sum_to_shape, cat, nearest upsampling, embedding (gather; a deterministic per-id sum backward), MSE loss;
//!   plus [`adamw_step`], [`grad_norm`] and [`clip_grad_norm`] on device buffers. With these the Wan DiT
//!   (forward, backward, flow-matching training), the Wan VAE and umT5 run on a device (`to_device` /
//!   `load_on`). CUDA tensors given to any other op (the 2-D image ops of RIFE, TransNetV2's pooling) give
//!   [`Error::NotOnDevice`].
//! * Memory: [`memory_stats`] counts the bytes device tensors hold, now and at peak (per device).
//!
//! Device dtypes: kernels load f32/bf16/f16/f64 and compute in f32; GEMMs take f32 or bf16.

#[cfg(feature = "cuda")]
mod blaslt;
#[cfg(feature = "cuda")]
mod compile;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub(crate) mod launch;
#[cfg(feature = "cuda")]
pub(crate) mod ops;
#[cfg(feature = "cuda")]
mod optim;
#[cfg(feature = "cuda")]
pub(crate) mod storage;

#[cfg(feature = "cuda")]
pub use compile::{KernelResources, compile_ptx, kernel_resources, nvrtc_version, preload_nvrtc};
#[cfg(feature = "cuda")]
pub use optim::{adamw_step, clip_grad_norm, grad_norm};
#[cfg(feature = "cuda")]
pub(crate) use storage::CudaStorage;

use crate::error::Result;

/// One CUDA device as seen by [`available`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Ordinal (`Device::Cuda(ordinal)`).
    pub ordinal: usize,
    /// Marketing name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability `(major, minor)`, e.g. `(9, 0)`.
    pub compute_capability: (i32, i32),
    /// Total device memory in bytes.
    pub total_memory: usize,
}

/// A kernel source file of `kernels/cuda/` and the `extern "C"` kernels it must define.
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    /// File name, e.g. `"norm.cu"`.
    pub name: &'static str,
    /// The source text (without the `common.cuh` prelude).
    pub source: &'static str,
    /// Kernel entry points the launchers use.
    pub kernels: &'static [&'static str],
}

/// The shared prelude prepended to every kernel file.
pub const COMMON_HEADER: &str = include_str!("../../cuda/common.cuh");

/// Every kernel file with its kernels.
pub const KERNEL_FILES: &[KernelFile] = &[
    KernelFile {
        name: "elementwise.cu",
        source: include_str!("../../cuda/elementwise.cu"),
        kernels: &[
            "copy_strided",
            "copy_into_strided",
            "sum_reduce",
            "binary_bcast",
            "scale_kernel",
            "scale_inplace_f32",
            "fill",
            "add_bias_rows",
            "col_sum_partial",
            "act_fwd",
            "act_bwd",
            "embedding_gather",
            "embedding_scatter",
            "modulate_fwd",
            "modulate_bwd_dx",
            "modulate_bwd_params",
        ],
    },
    KernelFile {
        name: "norm.cu",
        source: include_str!("../../cuda/norm.cu"),
        kernels: &[
            "layer_norm_fwd",
            "layer_norm_bwd",
            "rms_norm_fwd",
            "rms_norm_bwd",
            "norm_param_grads",
            "rms_norm_channel_fwd",
            "rms_norm_channel_bwd",
            "rms_norm_channel_dgamma",
        ],
    },
    KernelFile {
        name: "softmax.cu",
        source: include_str!("../../cuda/softmax.cu"),
        kernels: &["softmax_fwd", "softmax_bwd"],
    },
    KernelFile { name: "rope.cu", source: include_str!("../../cuda/rope.cu"), kernels: &["rope3d"] },
    KernelFile {
        name: "attention.cu",
        source: include_str!("../../cuda/attention.cu"),
        kernels: &[
            "flash_attn_fwd",
            "attn_bwd_delta",
            "flash_attn_bwd_dq",
            "flash_attn_bwd_dkdv",
            "flash_attn_fwd_wide",
            "flash_attn_bwd_dq_wide",
            "flash_attn_bwd_dkdv_wide",
        ],
    },
    KernelFile {
        name: "attention_tc.cu",
        source: include_str!("../../cuda/attention_tc.cu"),
        kernels: &[
            "flash_tc_fwd_d64",
            "flash_tc_bwd_dq_d64",
            "flash_tc_bwd_dkdv_d64",
            "flash_tc_fwd_d128",
            "flash_tc_bwd_dq_d128",
            "flash_tc_bwd_dkdv_d128",
        ],
    },
    KernelFile { name: "conv.cu", source: include_str!("../../cuda/conv.cu"), kernels: &["im2col3d", "col2im3d"] },
    KernelFile {
        name: "loss.cu",
        source: include_str!("../../cuda/loss.cu"),
        kernels: &["sq_diff_partial", "mse_bwd"],
    },
    KernelFile { name: "optim.cu", source: include_str!("../../cuda/optim.cu"), kernels: &["adamw_step"] },
];

/// The CUDA devices of this machine, or [`Error::NoCuda`] saying why there are none ("no CUDA driver
/// (libcuda.so not found): running on CPU", "CUDA driver found but no device", the crate built without the
/// `cuda` feature, …). Never panics.
pub fn available() -> Result<Vec<DeviceInfo>> {
    #[cfg(feature = "cuda")]
    {
        device::list_devices()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(crate::error::Error::NoCuda { reason: "built without the `cuda` feature: running on CPU".into() })
    }
}

/// Waits until all work queued on CUDA device `ordinal` has finished (for timings; transfers to the host
/// synchronise by themselves).
pub fn synchronize(ordinal: usize) -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        device::device(ordinal)?.synchronize()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        Err(crate::error::Error::NoCuda { reason: "built without the `cuda` feature".into() })
    }
}

/// Device memory held by tensors on one device (see [`memory_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes held by live tensors now.
    pub held: usize,
    /// The most bytes held at once since the process started or [`reset_peak_memory`].
    pub peak: usize,
}

/// Tensor memory on CUDA device `ordinal`: what live tensors hold and the peak (PyTorch's
/// `memory_allocated` / `max_memory_allocated`, without allocator rounding). Zero without the
/// `cuda` feature or before anything was allocated there.
pub fn memory_stats(ordinal: usize) -> MemoryStats {
    #[cfg(feature = "cuda")]
    {
        let (held, peak) = storage::memory(ordinal);
        MemoryStats { held, peak }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = ordinal;
        MemoryStats::default()
    }
}

/// Restarts the peak of [`memory_stats`] on device `ordinal` from what is held now.
pub fn reset_peak_memory(ordinal: usize) {
    #[cfg(feature = "cuda")]
    storage::reset_peak(ordinal);
    #[cfg(not(feature = "cuda"))]
    let _ = ordinal;
}

/// How the GEMMs with an epilogue (linear layers with a bias, fused linear + GELU) ran since the process
/// started, over all devices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GemmStats {
    /// One cuBLASLt GEMM with the bias (and GELU) fused into its epilogue.
    pub fused: u64,
    /// A plain cuBLAS GEMM followed by separate bias / GELU kernels: cuBLASLt missing, no algorithm for the
    /// dtypes or alignment, or a bias of another dtype than the output.
    pub unfused: u64,
}

/// Counts of fused and unfused epilogue GEMMs in this process (see [`GemmStats`]); zero without the `cuda`
/// feature.
pub fn gemm_stats() -> GemmStats {
    gemm_stats_of(false)
}

/// As [`gemm_stats`], counting only the GEMMs the calling thread ran.
pub fn thread_gemm_stats() -> GemmStats {
    gemm_stats_of(true)
}

fn gemm_stats_of(thread: bool) -> GemmStats {
    #[cfg(feature = "cuda")]
    {
        let (fused, unfused) = blaslt::counts(thread);
        GemmStats { fused, unfused }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = thread;
        GemmStats::default()
    }
}

/// The CUDA libraries the backend opens at run time, as found on this machine (for `medgen doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaLibraries {
    /// `libcuda.so` (the driver).
    pub driver: bool,
    /// `libcublas.so.13`: every GEMM.
    pub cublas: bool,
    /// `libcublasLt.so.13`: GEMMs with fused bias / GELU epilogues (without it those run as separate kernels).
    pub cublas_lt: bool,
    /// NVRTC's version, or why it cannot be loaded (kernels are compiled with it at first use).
    pub nvrtc: std::result::Result<(i32, i32), String>,
}

/// Which of the CUDA libraries can be loaded here (tries to `dlopen` each; never panics).
pub fn libraries() -> CudaLibraries {
    #[cfg(feature = "cuda")]
    {
        // SAFETY: each call only tries to dlopen the library by its names.
        unsafe {
            CudaLibraries {
                driver: cudarc::driver::sys::is_culib_present(),
                cublas: cudarc::cublas::sys::is_culib_present(),
                cublas_lt: cudarc::cublaslt::sys::is_culib_present(),
                nvrtc: nvrtc_version().map_err(|e| e.to_string()),
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let no = "built without the `cuda` feature".to_string();
        CudaLibraries { driver: false, cublas: false, cublas_lt: false, nvrtc: Err(no) }
    }
}

/// Whether at least one CUDA device is usable (see [`available`]).
pub fn is_available() -> bool {
    available().is_ok_and(|d| !d.is_empty())
}
