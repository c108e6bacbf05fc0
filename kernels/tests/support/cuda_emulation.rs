//! Test support: the C++ compiler, the NVRTC folder, and the CPU stand-in for the CUDA driver and cuBLAS
//! (`kernels/cuda/emu/fake_cuda.cpp`) built into a temporary folder, so a child process started with
//! [`Emulation::command`] runs medgen's CUDA backend end to end without a GPU.
//!
//! Shared by `kernels/tests/` and the top-level `tests/` through `#[path]`; each user takes what it needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    if here.join("kernels/cuda").is_dir() { here.to_path_buf() } else { here.parent().expect("a parent").to_path_buf() }
}

/// A C++20 compiler: `$CXX`, else `c++`, `g++` or `clang++`. Panics with the fix when there is none.
pub fn compiler() -> String {
    if let Ok(c) = std::env::var("CXX") {
        return c;
    }
    for c in ["c++", "g++", "clang++"] {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return c.to_string();
        }
    }
    panic!("no C++ compiler found: install g++ (scripts/setup.sh does) or set CXX");
}

/// The NVRTC folder: `$MEDGEN_NVRTC_DIR`, else the wheel that scripts/setup.sh installs in `.cache/cudaenv`.
pub fn nvrtc_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("MEDGEN_NVRTC_DIR") {
        return Some(PathBuf::from(d));
    }
    let lib = repo_root().join(".cache/cudaenv/lib");
    std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/nvidia/cu13/lib"))
        .find(|p| p.join("libnvrtc.so.13").is_file())
}

/// The names of the `extern "C"` functions *defined* (not only declared) in preprocessed C++ text: with the
/// emulation's `__global__` expanding to nothing, these are exactly the kernels.
pub fn defined_c_functions(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("extern \"C\"") {
        rest = &rest[at + "extern \"C\"".len()..];
        let s = rest.trim_start();
        let Some(s) = s.strip_prefix("void") else { continue };
        if !s.starts_with(char::is_whitespace) {
            continue;
        }
        let s = s.trim_start();
        let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
        let (name, s) = s.split_at(end);
        let Some(s) = s.trim_start().strip_prefix('(') else { continue };
        // Past the parameter list (no nested parentheses in kernel signatures) to `{` (a definition) or `;`.
        let Some(close) = s.find(')') else { continue };
        if !name.is_empty() && s[close + 1..].trim_start().starts_with('{') {
            names.push(name.to_string());
        }
    }
    names
}

/// A built emulation library in a temporary folder.
pub struct Emulation {
    _dir: tempfile::TempDir,
    lib_dir: PathBuf,
    nvrtc: PathBuf,
}

impl Emulation {
    /// Compiles `fake_cuda.cpp` with every kernel file (its kernel table generated from the preprocessed
    /// source) into `libcuda.so`, with `libcublas.so` a link to it. Panics with the reason on failure: a
    /// missing compiler or NVRTC fails the test, it does not skip it.
    pub fn build() -> Emulation {
        let nvrtc = nvrtc_dir().unwrap_or_else(|| {
            panic!(
                "NVRTC not found: run scripts/setup.sh (it installs the pinned nvidia-cuda-nvrtc wheel into \
                 .cache/cudaenv) or set MEDGEN_NVRTC_DIR"
            )
        });
        let emu = repo_root().join("kernels/cuda/emu");
        let src = emu.join("fake_cuda.cpp");
        let text = std::fs::read_to_string(&src).expect("read fake_cuda.cpp");
        for e in std::fs::read_dir(repo_root().join("kernels/cuda")).expect("kernels/cuda").flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".cu") {
                assert!(
                    text.contains(&format!("#include \"../{name}\"")),
                    "kernels/cuda/{name} is not included in kernels/cuda/emu/fake_cuda.cpp: add it there"
                );
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let cxx = compiler();
        let scan = Command::new(&cxx)
            .args(["-std=c++20", "-E", "-P", "-DMEDGEN_EMU_SCAN"])
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
        assert!(scan.status.success(), "{cxx} -E failed:\n{}", String::from_utf8_lossy(&scan.stderr));
        let kernels = defined_c_functions(&String::from_utf8_lossy(&scan.stdout));
        assert!(kernels.len() >= 10, "only {} kernels found in the preprocessed kernel files", kernels.len());
        let registry = dir.path().join("registry.inc");
        let lines: String = kernels.iter().map(|k| format!("KERNEL({k})\n")).collect();
        std::fs::write(&registry, lines).expect("write the kernel table");
        let lib = dir.path().join("libcuda.so");
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", "-fno-strict-aliasing", "-Wall", "-Werror"])
            .arg(format!("-DMEDGEN_EMU_REGISTRY=\"{}\"", registry.display()))
            .arg("-o")
            .arg(&lib)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("running {cxx}: {e}"));
        assert!(out.status.success(), "{cxx} could not build the emulation:\n{}", String::from_utf8_lossy(&out.stderr));
        for name in ["libcublas.so", "libcublasLt.so"] {
            std::os::unix::fs::symlink("libcuda.so", dir.path().join(name)).expect("link the cuBLAS names");
        }
        Emulation { lib_dir: dir.path().to_path_buf(), _dir: dir, nvrtc }
    }

    /// `program` set up to find the emulated driver and cuBLAS (first on `LD_LIBRARY_PATH`) and NVRTC.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        let mut path = std::ffi::OsString::from(self.lib_dir.as_os_str());
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
            path.push(":");
            path.push(old);
        }
        c.env("LD_LIBRARY_PATH", path).env("MEDGEN_NVRTC_DIR", &self.nvrtc);
        c
    }
}
