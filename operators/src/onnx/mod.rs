//! ONNX Runtime: where the shared library is. medgen loads ONNX Runtime at run time (it is not
//! linked), from `ORT_DYLIB_PATH` if set, else from the project-local PyPI wheel that
//! `scripts/setup.sh` installs into `.cache/ortenv`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("ORT_DYLIB_PATH is {0} but no such file exists; point it at libonnxruntime.so.1.x.y or unset it")]
    BadEnv(PathBuf),
    #[error(
        "ONNX Runtime not found (looked in: {searched}); run scripts/setup.sh, or set ORT_DYLIB_PATH to a libonnxruntime.so.1.x.y (e.g. from `pip install onnxruntime`)"
    )]
    NotFound { searched: String },
}

/// The wheel's library inside a venv: `lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.*`.
fn in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    let mut found: Vec<PathBuf> = lib
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .filter_map(|e| std::fs::read_dir(e.path().join("site-packages/onnxruntime/capi")).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so.")))
        .collect();
    found.sort();
    found.pop()
}

/// Folders to look for `.cache/ortenv` in: the current folder and its ancestors, then the
/// executable's ancestors (a binary in target/release finds the checkout's cache).
fn candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        v.extend(cwd.ancestors().map(|p| p.join(".cache/ortenv")));
    }
    if let Ok(exe) = std::env::current_exe() {
        v.extend(exe.ancestors().skip(1).map(|p| p.join(".cache/ortenv")));
    }
    v.dedup();
    v
}

/// Locate the ONNX Runtime shared library.
pub fn locate_runtime() -> Result<PathBuf, LocateError> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(LocateError::BadEnv(p)) };
    }
    let cands = candidates();
    for venv in &cands {
        if let Some(lib) = in_venv(venv) {
            return Ok(lib);
        }
    }
    let searched = cands.iter().take(4).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(LocateError::NotFound { searched })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_library_inside_a_venv() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir.path().join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(super::in_venv(dir.path()), Some(capi.join("libonnxruntime.so.1.31.1")));
        assert_eq!(super::in_venv(&dir.path().join("nope")), None);
    }
}
