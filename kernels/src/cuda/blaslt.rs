//! cuBLASLt GEMMs with a fused epilogue: `y = x·Wᵀ + b` and `y = gelu_tanh(x·Wᵀ + b)` in one kernel, the
//! bias added (and the GELU applied) to the fp32 accumulator before the single rounding to the output
//! dtype. Without the epilogue a linear layer writes its output, then a second kernel reads and writes it
//! again to add the bias (and a third for the GELU): at the 1.3B DiT's 32,760 tokens that is ~1.2 GB of
//! extra traffic per FFN in bf16.
//!
//! cuBLASLt is optional: when `libcublasLt.so` cannot be opened, or its heuristic offers no algorithm for a
//! problem (dtype combination, alignment), [`gemm_epilogue`] answers `Ok(false)` and the caller runs the
//! plain cuBLAS GEMM and the separate kernels; the caller [`count`]s both outcomes for [`super::gemm_stats`].
//!
//! Conventions are those of [`super::launch::gemm`]: row-major operands, computed as the column-major
//! `Cᵀ = op(B)ᵀ · op(A)ᵀ`, so cuBLASLt's "A" is our `b`, its "B" our `a`, and its `D` has `n` rows — the
//! bias vector runs along `n`, the output features.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::cublaslt::sys as lt;
use cudarc::driver::CudaSlice;

use super::device::{CudaDevice, cuda_err};
use super::launch::{GemmOperand, check_gemm, use_tf32};
use crate::dtype::DType;
use crate::error::{Error, Result};

/// What the epilogue does to `acc = op(A)·op(B)` before the output is rounded and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    /// `acc + bias`.
    Bias,
    /// `gelu_tanh(acc + bias)`.
    GeluTanhBias,
    /// `gelu_tanh(acc)`.
    GeluTanh,
}

impl Epilogue {
    fn code(self) -> lt::cublasLtEpilogue_t {
        match self {
            Epilogue::Bias => lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::GeluTanhBias => lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
            Epilogue::GeluTanh => lt::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU,
        }
    }

    fn has_bias(self) -> bool {
        !matches!(self, Epilogue::GeluTanh)
    }
}

/// GEMMs that ran with a fused epilogue, and those that fell back to GEMM + separate kernels: in the process,
/// and in the calling thread.
static FUSED: AtomicU64 = AtomicU64::new(0);
static UNFUSED: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static THREAD: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Counts one GEMM that wanted an epilogue as fused or not.
pub(crate) fn count(fused: bool) {
    if fused { &FUSED } else { &UNFUSED }.fetch_add(1, Ordering::Relaxed);
    THREAD.with(|t| {
        let (f, u) = t.get();
        t.set(if fused { (f + 1, u) } else { (f, u + 1) });
    });
}

/// (fused, unfused) of the process, or of the calling thread.
pub(crate) fn counts(thread: bool) -> (u64, u64) {
    if thread { THREAD.with(|t| t.get()) } else { (FUSED.load(Ordering::Relaxed), UNFUSED.load(Ordering::Relaxed)) }
}

/// Hopper's recommended cuBLASLt workspace (older GPUs need 4 MiB; a larger one is harmless).
const WORKSPACE_BYTES: usize = 32 << 20;

/// Everything the heuristic's answer depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Problem {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    ab: DType,
    d: DType,
    tf32: bool,
    epilogue: Epilogue,
    /// Alignment in bytes (power of two, ≤ 256) of cuBLASLt's A, B and D.
    align: [u32; 3],
}

/// A device's cuBLASLt handle, its workspace, and the algorithm chosen per problem (`None`: no algorithm,
/// fall back).
pub(crate) struct BlasLt {
    handle: lt::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    algos: Mutex<HashMap<Problem, Option<lt::cublasLtMatmulAlgo_t>>>,
}

// SAFETY: the handle is only used with the device's single stream, under the per-call descriptors; cuBLASLt
// handles are thread-safe for that use.
unsafe impl Send for BlasLt {}
unsafe impl Sync for BlasLt {}

impl Drop for BlasLt {
    fn drop(&mut self) {
        // SAFETY: the handle came from cublasLtCreate and is not used after this.
        unsafe { lt::cublasLtDestroy(self.handle) };
    }
}

fn check(op: &'static str, s: lt::cublasStatus_t) -> Result<()> {
    if s == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS { Ok(()) } else { Err(cuda_err(op, format!("{s:?}"))) }
}

impl BlasLt {
    /// A handle and workspace on `dev`, or `None` when `libcublasLt` is not installed.
    pub(crate) fn new(dev: &CudaDevice) -> Result<Option<BlasLt>> {
        // SAFETY: only tries to dlopen the library by its names.
        if !unsafe { lt::is_culib_present() } {
            return Ok(None);
        }
        dev.ctx.bind_to_thread().map_err(|e| cuda_err("cublasLt", e))?;
        let mut handle: lt::cublasLtHandle_t = std::ptr::null_mut();
        // SAFETY: writes one handle.
        check("cublasLtCreate", unsafe { lt::cublasLtCreate(&mut handle) })?;
        // SAFETY: the buffer is only handed to cuBLASLt as scratch space.
        let workspace = unsafe { dev.stream.alloc::<u8>(WORKSPACE_BYTES) }.map_err(|e| cuda_err("cublasLt", e))?;
        Ok(Some(BlasLt { handle, workspace, algos: Mutex::new(HashMap::new()) }))
    }
}

/// Owns a cuBLASLt descriptor and destroys it when dropped.
struct Desc<T: Copy> {
    raw: T,
    destroy: unsafe fn(T) -> lt::cublasStatus_t,
}

impl<T: Copy> Drop for Desc<T> {
    fn drop(&mut self) {
        // SAFETY: `raw` was created by the matching create call and is dropped once.
        unsafe { (self.destroy)(self.raw) };
    }
}

fn lt_dtype(d: DType) -> Option<lt::cudaDataType> {
    match d {
        DType::F32 => Some(lt::cudaDataType::CUDA_R_32F),
        DType::BF16 => Some(lt::cudaDataType::CUDA_R_16BF),
        DType::F16 => Some(lt::cudaDataType::CUDA_R_16F),
        DType::F64 => None,
    }
}

/// The largest power of two (≤ 256) dividing a device address: what cuBLASLt may assume about it.
fn alignment(p: u64) -> u32 {
    if p == 0 { 256 } else { 1u32 << p.trailing_zeros().min(8) }
}

/// A column-major `rows × cols` matrix layout with leading dimension `ld`.
fn layout(t: lt::cudaDataType, rows: usize, cols: usize, ld: usize) -> Result<Desc<lt::cublasLtMatrixLayout_t>> {
    let mut raw: lt::cublasLtMatrixLayout_t = std::ptr::null_mut();
    // SAFETY: writes one descriptor.
    check("cublasLtMatrixLayoutCreate", unsafe {
        lt::cublasLtMatrixLayoutCreate(&mut raw, t, rows as u64, cols as u64, ld as i64)
    })?;
    Ok(Desc { raw, destroy: lt::cublasLtMatrixLayoutDestroy })
}

fn set_desc<V>(d: lt::cublasLtMatmulDesc_t, attr: lt::cublasLtMatmulDescAttributes_t, v: &V) -> Result<()> {
    // SAFETY: `v` is the attribute's C type (the callers pass i32/u32 enums, device pointers as u64).
    check("cublasLtMatmulDescSetAttribute", unsafe {
        lt::cublasLtMatmulDescSetAttribute(d, attr, v as *const V as *const c_void, std::mem::size_of::<V>())
    })
}

fn set_pref<V>(p: lt::cublasLtMatmulPreference_t, attr: lt::cublasLtMatmulPreferenceAttributes_t, v: &V) -> Result<()> {
    // SAFETY: as in `set_desc`.
    check("cublasLtMatmulPreferenceSetAttribute", unsafe {
        lt::cublasLtMatmulPreferenceSetAttribute(p, attr, v as *const V as *const c_void, std::mem::size_of::<V>())
    })
}

/// Row-major `C[m, n] = epilogue(op(A)[m, k] · op(B)[k, n] (+ bias[n]))`, one matrix, fp32 compute (TF32 as
/// [`use_tf32`] says); operands
/// as in [`super::launch::gemm`], `c` the output (address, dtype), `bias` a dense vector of `n` elements of
/// `c`'s dtype (ignored by [`Epilogue::GeluTanh`]). `Ok(false)`: cuBLASLt cannot run it here, nothing was
/// written; the caller computes it another way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_epilogue(
    dev: &CudaDevice,
    m: usize,
    n: usize,
    k: usize,
    a: GemmOperand,
    b: GemmOperand,
    c: (u64, DType),
    bias: u64,
    epilogue: Epilogue,
) -> Result<bool> {
    const OP: &str = "cublasLt gemm";
    let Some(blt) = dev.blas_lt()? else { return Ok(false) };
    if m == 0 || n == 0 || k == 0 {
        return Err(Error::arg(OP, format!("empty GEMM {m}x{n}x{k}: the caller handles it")));
    }
    check_gemm(OP, [m, n, k, 1], &a, &b)?;
    let (Some(ab), Some(dt)) = (lt_dtype(a.dtype), lt_dtype(c.1)) else { return Ok(false) };
    // The bias has no alignment preference; epilogue kernels read it in 16-byte vectors.
    if epilogue.has_bias() && alignment(bias) < 16 {
        return Ok(false);
    }
    let problem = Problem {
        m,
        n,
        k,
        ta: a.trans,
        tb: b.trans,
        ab: a.dtype,
        d: c.1,
        tf32: use_tf32(&a, &b),
        epilogue,
        align: [alignment(b.ptr), alignment(a.ptr), alignment(c.0)],
    };
    // A problem known to have no algorithm falls back before any descriptor is made.
    let cached = blt.algos.lock().unwrap_or_else(|e| e.into_inner()).get(&problem).copied();
    if matches!(cached, Some(None)) {
        return Ok(false);
    }
    dev.ctx.bind_to_thread().map_err(|e| cuda_err(OP, e))?;

    // cuBLASLt's A = our B: stored [n, k] row-major (= column-major k × n, ld k) when transposed, else
    // [k, n] (= column-major n × k, ld n). Its B = our A likewise; D is column-major n × m, ld n.
    let la = if b.trans { layout(ab, k, n, k)? } else { layout(ab, n, k, n)? };
    let lb = if a.trans { layout(ab, m, k, m)? } else { layout(ab, k, m, k)? };
    let ld = layout(dt, n, m, n)?;
    let compute = if problem.tf32 {
        lt::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
    } else {
        lt::cublasComputeType_t::CUBLAS_COMPUTE_32F
    };
    let mut desc: lt::cublasLtMatmulDesc_t = std::ptr::null_mut();
    // SAFETY: writes one descriptor.
    check("cublasLtMatmulDescCreate", unsafe {
        lt::cublasLtMatmulDescCreate(&mut desc, compute, lt::cudaDataType::CUDA_R_32F)
    })?;
    let desc = Desc { raw: desc, destroy: lt::cublasLtMatmulDescDestroy };
    use lt::cublasLtMatmulDescAttributes_t as DA;
    // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
    let op_of = |t: bool| i32::from(t);
    set_desc(desc.raw, DA::CUBLASLT_MATMUL_DESC_TRANSA, &op_of(b.trans))?;
    set_desc(desc.raw, DA::CUBLASLT_MATMUL_DESC_TRANSB, &op_of(a.trans))?;
    set_desc(desc.raw, DA::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue.code())?;
    if epilogue.has_bias() {
        set_desc(desc.raw, DA::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias)?;
    }

    let algo = match cached {
        Some(algo) => algo,
        None => {
            let found = heuristic(blt, &desc, &la, &lb, &ld, &problem)?;
            blt.algos.lock().unwrap_or_else(|e| e.into_inner()).insert(problem, found);
            found
        }
    };
    let Some(algo) = algo else { return Ok(false) };
    let (alpha, beta) = (1f32, 0f32);
    let ws = {
        use cudarc::driver::DevicePtr as _;
        let (p, _sync) = blt.workspace.device_ptr(&dev.stream);
        p
    };
    // SAFETY: the descriptors describe the buffers the callers checked (dense row-major matrices of the
    // stated shapes, a bias of n elements); C is not read (beta = 0) and D = C; the workspace is the
    // handle's own buffer of the size the preference promised.
    check(OP, unsafe {
        lt::cublasLtMatmul(
            blt.handle,
            desc.raw,
            (&alpha) as *const f32 as *const c_void,
            b.ptr as *const c_void,
            la.raw,
            a.ptr as *const c_void,
            lb.raw,
            (&beta) as *const f32 as *const c_void,
            c.0 as *const c_void,
            ld.raw,
            c.0 as *mut c_void,
            ld.raw,
            &algo,
            ws as *mut c_void,
            WORKSPACE_BYTES,
            dev.stream.cu_stream() as lt::cudaStream_t,
        )
    })?;
    Ok(true)
}

/// cuBLASLt's first choice for `problem` within our workspace and the operands' actual alignments (the
/// preference defaults to 256-byte alignment, which views into a buffer do not have), or `None`.
fn heuristic(
    blt: &BlasLt,
    desc: &Desc<lt::cublasLtMatmulDesc_t>,
    la: &Desc<lt::cublasLtMatrixLayout_t>,
    lb: &Desc<lt::cublasLtMatrixLayout_t>,
    ld: &Desc<lt::cublasLtMatrixLayout_t>,
    problem: &Problem,
) -> Result<Option<lt::cublasLtMatmulAlgo_t>> {
    let mut pref: lt::cublasLtMatmulPreference_t = std::ptr::null_mut();
    // SAFETY: writes one descriptor.
    check("cublasLtMatmulPreferenceCreate", unsafe { lt::cublasLtMatmulPreferenceCreate(&mut pref) })?;
    let pref = Desc { raw: pref, destroy: lt::cublasLtMatmulPreferenceDestroy };
    use lt::cublasLtMatmulPreferenceAttributes_t as PA;
    set_pref(pref.raw, PA::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &(WORKSPACE_BYTES as u64))?;
    let [aa, ab, ad] = problem.align;
    set_pref(pref.raw, PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa)?;
    set_pref(pref.raw, PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab)?;
    set_pref(pref.raw, PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad)?;
    set_pref(pref.raw, PA::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad)?;
    // SAFETY: an all-zero result is a valid value of this plain C struct.
    let mut result: lt::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
    let mut count = 0i32;
    // SAFETY: one result slot, the descriptors are live.
    let s = unsafe {
        lt::cublasLtMatmulAlgoGetHeuristic(
            blt.handle,
            desc.raw,
            la.raw,
            lb.raw,
            ld.raw,
            ld.raw,
            pref.raw,
            1,
            &mut result,
            &mut count,
        )
    };
    match s {
        lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS
            if count > 0 && result.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS =>
        {
            Ok(Some(result.algo))
        }
        lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS | lt::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => Ok(None),
        other => Err(cuda_err("cublasLtMatmulAlgoGetHeuristic", format!("{other:?}"))),
    }
}
