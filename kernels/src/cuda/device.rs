//! Driver detection and the per-ordinal device cache (context, stream, cuBLAS handle, loaded modules).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};

use super::blaslt::BlasLt;
use super::{DeviceInfo, KERNEL_FILES, compile};
use crate::error::{Error, Result};

/// A CUDA device in use: its context, the one stream all its work runs on, and lazily created cuBLAS handle
/// and kernel modules.
pub(crate) struct CudaDevice {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// `compute_<major><minor>`.
    pub arch: String,
    blas: Mutex<Option<Arc<cudarc::cublas::CudaBlas>>>,
    /// cuBLASLt: unset until first use, then `None` where the library is missing.
    blas_lt: OnceLock<Option<Arc<BlasLt>>>,
    /// Loaded modules by kernel file, each with the functions looked up in it so far.
    modules: Mutex<HashMap<&'static str, LoadedModule>>,
}

/// A loaded kernel module and the functions looked up in it (one `cuModuleGetFunction` per kernel, not one
/// per launch).
struct LoadedModule {
    module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({}, {})", self.ordinal, self.arch)
    }
}

pub(crate) fn cuda_err(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Cuda { op, msg: e.to_string() }
}

/// Checks the driver library and initialises it; returns the device count.
fn init_driver() -> Result<usize> {
    static STATE: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            // cudarc panics on the first driver call when libcuda cannot be loaded: check first.
            // SAFETY: only tries to dlopen the library by its names.
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                return Err("no CUDA driver (libcuda.so not found): running on CPU".to_string());
            }
            cudarc::driver::result::init()
                .map_err(|e| format!("CUDA driver found but cuInit failed ({e}): running on CPU"))?;
            let n = cudarc::driver::result::device::get_count()
                .map_err(|e| format!("CUDA driver found but cannot count devices ({e}): running on CPU"))?;
            if n <= 0 {
                return Err("CUDA driver found but no CUDA device: running on CPU".to_string());
            }
            Ok(n as usize)
        })
        .clone()
        .map_err(|reason| Error::NoCuda { reason })
}

/// All devices with their properties.
pub(crate) fn list_devices() -> Result<Vec<DeviceInfo>> {
    let n = init_driver()?;
    (0..n)
        .map(|i| {
            let d = device(i)?;
            Ok(DeviceInfo {
                ordinal: i,
                name: d.ctx.name().map_err(|e| cuda_err("available", e))?,
                compute_capability: d.ctx.compute_capability().map_err(|e| cuda_err("available", e))?,
                total_memory: d.ctx.total_mem().map_err(|e| cuda_err("available", e))?,
            })
        })
        .collect()
}

/// The device of an ordinal, created at first use.
pub(crate) fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let n = init_driver()?;
    if ordinal >= n {
        return Err(Error::NoCuda { reason: format!("CUDA device {ordinal} requested but only {n} present") });
    }
    let mut map = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("cuda device", e))?;
    // One stream per device orders all work, so cudarc's per-buffer event tracking is not needed.
    // SAFETY: no buffer of this context is shared with another stream.
    unsafe { ctx.disable_event_tracking() };
    let (major, minor) = ctx.compute_capability().map_err(|e| cuda_err("cuda device", e))?;
    let stream = ctx.default_stream();
    let d = Arc::new(CudaDevice {
        ordinal,
        ctx,
        stream,
        arch: format!("compute_{major}{minor}"),
        blas: Mutex::new(None),
        blas_lt: OnceLock::new(),
        modules: Mutex::new(HashMap::new()),
    });
    map.insert(ordinal, d.clone());
    Ok(d)
}

impl CudaDevice {
    /// Compute capability as `10 * major + minor` (90 for `compute_90`).
    pub fn compute_capability(&self) -> u32 {
        self.arch.trim_start_matches("compute_").parse().unwrap_or(0)
    }

    /// The cuBLAS handle (bound to this device's stream), created at first use.
    pub fn blas(&self) -> Result<Arc<cudarc::cublas::CudaBlas>> {
        let mut b = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = &*b {
            return Ok(h.clone());
        }
        // SAFETY: only tries to dlopen the library by its names.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(Error::NoCuda {
                reason: "cuBLAS (libcublas.so.13) not found: install the CUDA 13 runtime".into(),
            });
        }
        let h = Arc::new(cudarc::cublas::CudaBlas::new(self.stream.clone()).map_err(|e| cuda_err("cublas", e))?);
        *b = Some(h.clone());
        Ok(h)
    }

    /// The cuBLASLt handle, created at first use; `None` where `libcublasLt` is not installed (callers then
    /// run unfused GEMMs). A failure to create it on a present library is an error.
    pub fn blas_lt(&self) -> Result<Option<&Arc<BlasLt>>> {
        if let Some(h) = self.blas_lt.get() {
            return Ok(h.as_ref());
        }
        let h = BlasLt::new(self)?.map(Arc::new);
        Ok(self.blas_lt.get_or_init(|| h).as_ref())
    }

    /// A kernel of a `kernels/cuda/*.cu` file; the file is compiled (or read from the PTX cache) and loaded
    /// at its first use, and each function looked up once.
    pub fn function(&self, file: &'static str, kernel: &'static str) -> Result<CudaFunction> {
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = match mods.entry(file) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let kf = KERNEL_FILES
                    .iter()
                    .find(|k| k.name == file)
                    .ok_or_else(|| Error::Cuda { op: "load kernel", msg: format!("unknown kernel file {file}") })?;
                let ptx = compile::cached_ptx(kf, &self.arch)?;
                let module = self
                    .ctx
                    .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
                    .map_err(|e| cuda_err("load kernel module", format!("{file}: {e}")))?;
                e.insert(LoadedModule { module, functions: HashMap::new() })
            }
        };
        if let Some(f) = loaded.functions.get(kernel) {
            return Ok(f.clone());
        }
        let f = loaded
            .module
            .load_function(kernel)
            .map_err(|e| cuda_err("load kernel", format!("{file}::{kernel}: {e}")))?;
        loaded.functions.insert(kernel, f.clone());
        Ok(f)
    }

    /// Waits for all work queued on the device.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| cuda_err("synchronize", e))
    }
}
