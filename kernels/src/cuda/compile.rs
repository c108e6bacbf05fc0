//! NVRTC: locating the library, compiling kernel files to PTX, and the on-disk PTX cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{CompileError, CompileOptions};

use super::{COMMON_HEADER, KernelFile};
use crate::error::{Error, Result};

/// Libraries preloaded by [`preload_nvrtc`]; kept alive for the life of the process.
static PRELOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// Loads `libnvrtc-builtins.so.13*` and `libnvrtc.so.13` from `dir` (e.g. the `nvidia/cu13/lib` folder of
/// the PyPI wheel `nvidia-cuda-nvrtc`). Once loaded, the by-name lookups of cudarc (and NVRTC's own lookup of
/// its builtins library) resolve to these files, so no `LD_LIBRARY_PATH` is needed.
pub fn preload_nvrtc(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
    let mut builtins: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so.") && !n.contains(".alt."))
        })
        .collect();
    builtins.sort();
    let main = dir.join("libnvrtc.so.13");
    if !main.is_file() || builtins.is_empty() {
        return Err(Error::NoCuda {
            reason: format!(
                "NVRTC not found in {}: expected libnvrtc.so.13 and libnvrtc-builtins.so.13.* there \
                 (run scripts/setup.sh, which installs the nvidia-cuda-nvrtc wheel into .cache/cudaenv)",
                dir.display()
            ),
        });
    }
    let mut held = PRELOADED.lock().unwrap_or_else(|e| e.into_inner());
    for path in builtins.iter().chain(std::iter::once(&main)) {
        // SAFETY: loading NVRTC runs only its ELF initialisers, which have no preconditions.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| Error::NoCuda { reason: format!("cannot load {}: {e}", path.display()) })?;
        held.push(lib);
    }
    Ok(())
}

/// Makes sure NVRTC can be loaded: from `$MEDGEN_NVRTC_DIR` when set, else by library name.
fn ensure_nvrtc() -> Result<()> {
    static STATE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let st = STATE.get_or_init(|| {
        if let Some(dir) = std::env::var_os("MEDGEN_NVRTC_DIR") {
            preload_nvrtc(Path::new(&dir)).map_err(|e| e.to_string())?;
        }
        // SAFETY: only tries to dlopen the library by its names.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            Ok(())
        } else {
            Err("NVRTC (libnvrtc.so.13) not found: set MEDGEN_NVRTC_DIR to the folder holding it (scripts/setup.sh \
                 installs it into .cache/cudaenv/lib/python3*/site-packages/nvidia/cu13/lib) or add it to \
                 LD_LIBRARY_PATH"
                .to_string())
        }
    });
    st.clone().map_err(|reason| Error::NoCuda { reason })
}

/// The NVRTC version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); the pointers are valid for the call.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Cuda { op: "nvrtc_version", msg: format!("{r:?}") });
    }
    Ok((major, minor))
}

/// The NVRTC options for a virtual architecture such as `"compute_90"`.
fn options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".to_string()]
}

/// The full source NVRTC sees for a kernel file: the common prelude, then the file.
fn full_source(file: &KernelFile) -> String {
    format!("{COMMON_HEADER}\n#line 1 \"{}\"\n{}", file.name, file.source)
}

/// Compiles a kernel file for a virtual architecture (e.g. `"compute_90"`) and returns the PTX text. No
/// cache; needs NVRTC only (no GPU, no driver).
pub fn compile_ptx(file: &KernelFile, arch: &str) -> Result<String> {
    ensure_nvrtc()?;
    let opts = CompileOptions { options: options(arch), name: Some(file.name.to_string()), ..Default::default() };
    let src = full_source(file);
    match cudarc::nvrtc::compile_ptx_with_opts(&src, opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, options, .. }) => Err(Error::CudaCompile {
            file: file.name.to_string(),
            options: options.join(" "),
            log: log.to_string_lossy().into_owned(),
        }),
        Err(e) => {
            Err(Error::CudaCompile { file: file.name.to_string(), options: arch.to_string(), log: e.to_string() })
        }
    }
}

/// What ptxas allots one kernel for a real architecture: the limits a module load on the GPU enforces
/// (48 KB of static shared memory per block) and the numbers that bound occupancy and speed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelResources {
    /// The kernel's (entry function's) name.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block, bytes.
    pub shared_bytes: u32,
    /// Bytes spilled to local memory (stores) per thread.
    pub spill_store_bytes: u32,
    /// Per-thread stack frame, bytes (local arrays live here).
    pub stack_bytes: u32,
}

/// Compiles a kernel file all the way to machine code for a real architecture (e.g. `"sm_90"`) with
/// NVRTC's built-in ptxas and returns every kernel's resources from its verbose report. Needs NVRTC only
/// (no GPU): a kernel that ptxas rejects, or that would not load on the device, fails here instead of on
/// the GPU.
pub fn kernel_resources(file: &KernelFile, sm: &str) -> Result<Vec<KernelResources>> {
    use cudarc::nvrtc::result as nv;
    ensure_nvrtc()?;
    let fail = |log: String| Error::CudaCompile { file: file.name.to_string(), options: sm.to_string(), log };
    let src = std::ffi::CString::new(full_source(file)).map_err(|e| fail(e.to_string()))?;
    let name = std::ffi::CString::new(file.name).map_err(|e| fail(e.to_string()))?;
    let prog = nv::create_program(&src, Some(&name)).map_err(|e| fail(e.to_string()))?;
    let opts = [format!("--gpu-architecture={sm}"), "--std=c++17".into(), "--ptxas-options=-v".into()];
    // SAFETY: `prog` was just created and is destroyed once, below.
    let compiled = unsafe { nv::compile_program(prog, &opts) };
    // SAFETY: as above.
    let log = unsafe { nv::get_program_log(prog) }
        .map(|l| l.iter().map(|&c| c as u8).take_while(|&c| c != 0).map(char::from).collect::<String>())
        .unwrap_or_default();
    // SAFETY: as above; not used afterwards.
    let _ = unsafe { nv::destroy_program(prog) };
    if compiled.is_err() {
        return Err(fail(log));
    }
    Ok(parse_ptxas_report(&log))
}

/// The per-kernel numbers of a `ptxas -v` report.
fn parse_ptxas_report(log: &str) -> Vec<KernelResources> {
    let num = |line: &str, unit: &str| -> Option<u32> {
        let at = line.find(unit)?;
        line[..at].trim_end().rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let mut out: Vec<KernelResources> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let kernel = rest.split('\'').next().unwrap_or_default().to_string();
            out.push(KernelResources { kernel, ..Default::default() });
        } else if let Some(k) = out.last_mut() {
            if line.contains("bytes stack frame") {
                k.stack_bytes = num(line, "bytes stack frame").unwrap_or(0);
                k.spill_store_bytes = num(line, "bytes spill stores").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = num(line, "registers").unwrap_or(0);
                k.shared_bytes = num(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

/// The PTX cache folder: `$MEDGEN_CUDA_CACHE`, else `$HOME/.cache/medgen/cuda`, else none.
fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MEDGEN_CUDA_CACHE") {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/medgen/cuda"))
}

/// PTX for a kernel file and architecture, from the disk cache or freshly compiled (then cached). A cache
/// that cannot be read or written is skipped: compilation still works.
pub(crate) fn cached_ptx(file: &KernelFile, arch: &str) -> Result<String> {
    let (major, minor) = nvrtc_version()?;
    let src = full_source(file);
    let mut h = blake3::Hasher::new();
    h.update(src.as_bytes());
    h.update(b"\0");
    h.update(options(arch).join(" ").as_bytes());
    h.update(format!("\0nvrtc {major}.{minor}").as_bytes());
    let key = h.finalize().to_hex();
    let path = cache_dir().map(|d| d.join(format!("{key}.ptx")));
    if let Some(p) = &path
        && let Ok(ptx) = std::fs::read_to_string(p)
        && ptx.contains(".entry")
        && !ptx.contains('\0')
    {
        return Ok(ptx);
    }
    let ptx = compile_ptx(file, arch)?;
    if let Some(p) = &path {
        let _ = write_atomic(p, ptx.as_bytes());
    }
    Ok(ptx)
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp =
        dir.join(format!(".{}.{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("ptx"), std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
