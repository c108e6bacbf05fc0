//! Kernel launching: argument structs shared with the `.cu` files, launch shapes, the launch macro, and the
//! cuBLAS GEMM wrapper.

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{DeviceRepr, LaunchConfig};

use super::device::{CudaDevice, cuda_err};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Most dimensions a [`Strided`] view describes.
pub const MAX_RANK: usize = 8;

/// Mirror of `struct Strided` in `kernels/cuda/common.cuh`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Strided {
    shape: [i64; MAX_RANK],
    strides: [i64; MAX_RANK],
    offset: i64,
    rank: i32,
    pad: i32,
}

// SAFETY: plain-old-data, `#[repr(C)]`, layout identical to the CUDA struct.
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// The view of `t` (shape, strides, offset), broadcast to `out` (right-aligned, stride 0 on broadcast
    /// dims). Ranks above [`MAX_RANK`] are an error.
    pub fn of(t: &Tensor, out: &[usize], op: &'static str) -> Result<Strided> {
        if out.len() > MAX_RANK {
            return Err(Error::rank(op, format!("≤ {MAX_RANK} on CUDA"), out));
        }
        let b = t.broadcast_as(out)?;
        let mut s = Strided { shape: [1; MAX_RANK], strides: [0; MAX_RANK], offset: 0, rank: out.len() as i32, pad: 0 };
        for (i, (&d, &st)) in b.shape().iter().zip(b.strides()).enumerate() {
            s.shape[i] = d as i64;
            s.strides[i] = st as i64;
        }
        s.offset = b.layout().offset() as i64;
        if out.is_empty() {
            s.rank = 1;
        }
        Ok(s)
    }

    /// The view's dims as (size, stride) pairs, and its offset.
    pub fn parts(&self) -> (Vec<(i64, i64)>, i64) {
        let r = self.rank.max(0) as usize;
        ((0..r).map(|d| (self.shape[d], self.strides[d])).collect(), self.offset)
    }

    /// A view from (size, stride) pairs and an offset; more than [`MAX_RANK`] dims are an error.
    pub fn from_parts(dims: &[(i64, i64)], offset: i64, op: &'static str) -> Result<Strided> {
        if dims.len() > MAX_RANK {
            let shape: Vec<usize> = dims.iter().map(|d| d.0.max(0) as usize).collect();
            return Err(Error::rank(op, format!("≤ {MAX_RANK} on CUDA"), &shape));
        }
        let mut s =
            Strided { shape: [1; MAX_RANK], strides: [0; MAX_RANK], offset, rank: dims.len().max(1) as i32, pad: 0 };
        for (i, &(n, st)) in dims.iter().enumerate() {
            s.shape[i] = n;
            s.strides[i] = st;
        }
        Ok(s)
    }

    /// Splits the view for a reduction over the dims where `summed(d)`: (`keep`: those dims at size 1,
    /// the offset kept; `red`: only those dims, offset 0) and the number of summed elements.
    pub fn split_sum(&self, summed: impl Fn(usize) -> bool, op: &'static str) -> Result<(Strided, Strided, usize)> {
        let (dims, offset) = self.parts();
        let keep: Vec<(i64, i64)> = dims.iter().enumerate().map(|(d, &p)| if summed(d) { (1, 0) } else { p }).collect();
        let red: Vec<(i64, i64)> = dims.iter().enumerate().map(|(d, &p)| if summed(d) { p } else { (1, 0) }).collect();
        let m = red.iter().map(|p| p.0.max(0) as usize).product();
        Ok((Strided::from_parts(&keep, offset, op)?, Strided::from_parts(&red, 0, op)?, m))
    }
}

/// Mirror of `struct ConvGeo` in `kernels/cuda/conv.cu`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ConvGeo {
    pub b: i64,
    pub c: i64,
    pub t: i64,
    pub h: i64,
    pub w: i64,
    pub kt: i64,
    pub kh: i64,
    pub kw: i64,
    pub st: i64,
    pub sh: i64,
    pub sw: i64,
    pub pt: i64,
    pub ph: i64,
    pub pw: i64,
    pub to: i64,
    pub ho: i64,
    pub wo: i64,
}

// SAFETY: plain-old-data, `#[repr(C)]`, layout identical to the CUDA struct.
unsafe impl DeviceRepr for ConvGeo {}

/// The kernels' dtype code (`DT_*` in common.cuh).
pub fn dt(d: DType) -> i32 {
    match d {
        DType::F32 => 0,
        DType::BF16 => 1,
        DType::F16 => 2,
        DType::F64 => 3,
    }
}

/// Threads per block of every launch.
pub const THREADS: u32 = 256;

/// Grid-stride launch over `n` items.
pub fn cfg_elems(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65535 * 8) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// One block per row.
pub fn cfg_rows(rows: usize) -> Result<LaunchConfig> {
    if rows > i32::MAX as usize {
        return Err(Error::arg("cuda launch", format!("{rows} rows exceed the grid limit")));
    }
    Ok(LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// A 2-D grid `(x, y)` of 256-thread blocks.
pub fn cfg_2d(x: usize, y: usize, threads: u32) -> Result<LaunchConfig> {
    if y > 65535 || x > i32::MAX as usize {
        return Err(Error::arg("cuda launch", format!("grid ({x}, {y}) exceeds the limits")));
    }
    Ok(LaunchConfig {
        grid_dim: (x.max(1) as u32, y.max(1) as u32, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Launches `file::kernel` on `dev`'s stream with the given arguments (each any `DeviceRepr` value: `u64`
/// device pointers, `i32` dtype codes, `i64` sizes, `f32` scalars, [`Strided`], [`ConvGeo`]).
macro_rules! launch {
    ($dev:expr, $file:literal, $kernel:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        let dev: &$crate::cuda::device::CudaDevice = &$dev;
        let f = dev.function($file, $kernel)?;
        // All argument temporaries live until the end of this statement, i.e. through the launch.
        // SAFETY: the argument list matches the kernel's signature in kernels/cuda/$file, and every pointer
        // addresses a live buffer of the size the kernel indexes (checked by the callers).
        let r = unsafe { dev.stream.launch_builder(&f) $(.arg(&$arg))* .launch($cfg) };
        r.map(|_| ()).map_err(|e| $crate::cuda::device::cuda_err($kernel, e))
    }};
}
pub(crate) use launch;

/// One operand of [`gemm`]: device address, dtype and whether the stored matrix is the transpose.
#[derive(Debug, Clone, Copy)]
pub struct GemmOperand {
    /// Device address of the first matrix of the batch.
    pub ptr: u64,
    /// Element dtype (f32 or bf16; both operands must have the same one).
    pub dtype: DType,
    /// `false`: stored row-major as the matrix itself; `true`: stored row-major as its transpose.
    pub trans: bool,
    /// Elements between consecutive matrices of the batch (0: shared by every batch entry).
    pub batch_stride: i64,
    /// f32 data of a bf16 computation: the GEMM may round it to TF32 on tensor cores (see [`use_tf32`]).
    pub tf32: bool,
}

/// Whether a GEMM's fp32 compute may run on TF32 tensor cores: when an f32 operand allows it (f32 gradients
/// of a bf16 model). Exact f32 otherwise (f32 models; bf16 operands run on bf16 tensor cores either way).
pub fn use_tf32(a: &GemmOperand, b: &GemmOperand) -> bool {
    a.dtype == DType::F32 && (a.tf32 || b.tf32)
}

fn cuda_dtype(d: DType, op: &'static str) -> Result<cudaDataType> {
    match d {
        DType::F32 => Ok(cudaDataType::CUDA_R_32F),
        DType::BF16 => Ok(cudaDataType::CUDA_R_16BF),
        DType::F16 => Ok(cudaDataType::CUDA_R_16F),
        DType::F64 => Err(Error::DType { op, dtype: d, msg: "CUDA GEMMs take f32, bf16 or f16".into() }),
    }
}

/// What cuBLAS and cuBLASLt both require of a GEMM: sizes (`[m, n, k, batch]`) in their int range and
/// operands of one dtype.
pub fn check_gemm(op: &'static str, sizes: [usize; 4], a: &GemmOperand, b: &GemmOperand) -> Result<()> {
    if sizes.iter().any(|&s| s > i32::MAX as usize) {
        let [m, n, k, batch] = sizes;
        return Err(Error::arg(op, format!("GEMM {m}x{n}x{k} (batch {batch}) exceeds the cuBLAS int range")));
    }
    if a.dtype != b.dtype {
        return Err(Error::DType {
            op,
            dtype: b.dtype,
            msg: format!("operands must share a dtype, A is {:?}", a.dtype),
        });
    }
    Ok(())
}

/// Row-major batched GEMM `C[m, n] = alpha · op(A)[m, k] · op(B)[k, n] + beta · C` with fp32 compute, over
/// `batch` matrices. `A` is stored `[m, k]` (or `[k, m]` when `trans`), `B` `[k, n]` (or `[n, k]`), `C`
/// `[m, n]`, all row-major and densely packed. cuBLAS is column-major, so this computes
/// `Cᵀ = op(B)ᵀ · op(A)ᵀ`: B is passed first, and a row-major `[r, c]` matrix is a column-major `[c, r]` one.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    dev: &CudaDevice,
    m: usize,
    n: usize,
    k: usize,
    a: GemmOperand,
    b: GemmOperand,
    c: (u64, DType, i64),
    alpha: f32,
    beta: f32,
    batch: usize,
) -> Result<()> {
    const OP: &str = "gemm";
    if m == 0 || n == 0 || batch == 0 {
        return Ok(());
    }
    check_gemm(OP, [m, n, k, batch], &a, &b)?;
    let blas = dev.blas()?;
    dev.ctx.bind_to_thread().map_err(|e| cuda_err(OP, e))?;
    let (ta, lda) = if b.trans { (cublasOperation_t::CUBLAS_OP_T, k) } else { (cublasOperation_t::CUBLAS_OP_N, n) };
    let (tb, ldb) = if a.trans { (cublasOperation_t::CUBLAS_OP_T, m) } else { (cublasOperation_t::CUBLAS_OP_N, k) };
    let (k_i, lda_i, ldb_i) = (k.max(1) as i32, lda.max(1) as i32, ldb.max(1) as i32);
    // SAFETY: the pointers address buffers holding `batch` packed matrices of the documented shapes
    // (checked by the callers); alpha/beta are f32 as COMPUTE_32F requires.
    unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            *blas.handle(),
            ta,
            tb,
            n as i32,
            m as i32,
            k_i,
            (&alpha) as *const f32 as *const c_void,
            b.ptr as *const c_void,
            cuda_dtype(b.dtype, OP)?,
            lda_i,
            b.batch_stride,
            a.ptr as *const c_void,
            cuda_dtype(a.dtype, OP)?,
            ldb_i,
            a.batch_stride,
            (&beta) as *const f32 as *const c_void,
            c.0 as *mut c_void,
            cuda_dtype(c.1, OP)?,
            n as i32,
            c.2,
            batch as i32,
            if use_tf32(&a, &b) {
                cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
            } else {
                cublasComputeType_t::CUBLAS_COMPUTE_32F
            },
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| cuda_err(OP, e))
}
