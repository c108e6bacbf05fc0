//! Checkpoint I/O: safetensors loading (single files and sharded checkpoints), PyTorch zip
//! checkpoints ([`pth`], a restricted unpickler), the
//! [`TensorSource`] abstraction networks load weights through, and the Wan DiT key mappings.

pub mod pth;
pub mod safetensors;
pub mod source;
pub mod wan_keys;

pub use source::{Prefixed, TensorSource};

use crate::error::{Error, Result};
use std::path::Path;

/// Opens a model file for reading, refusing what is not a regular file (a folder, a FIFO that
/// would block forever, a device) with the reason instead of the OS's ("No such device").
pub fn open_file(path: &Path) -> Result<std::fs::File> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        let what = if meta.is_dir() { "a folder" } else { "not a regular file (a pipe, socket or device)" };
        return Err(io(std::io::Error::other(format!("{what}, where a file was expected"))));
    }
    std::fs::File::open(path).map_err(io)
}

/// Reads a (JSON) text file through [`open_file`].
pub fn read_text(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut s = String::new();
    open_file(path)?.read_to_string(&mut s).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    Ok(s)
}

/// Reads a binary file through [`open_file`].
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut b = Vec::new();
    open_file(path)?.read_to_end(&mut b).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    Ok(b)
}

/// What a file that failed to parse as `expected` looks like instead, from its first bytes (a
/// zip archive, a pickle, JSON), for the error message.
pub fn looks_like(head: &[u8]) -> Option<&'static str> {
    match head {
        [b'P', b'K', 3, 4, ..] => Some("a zip archive (a PyTorch .pt/.pth/.bin checkpoint?)"),
        [0x80, 2..=5, ..] => Some("a Python pickle (a legacy PyTorch checkpoint?)"),
        _ => match head.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{' | b'[') => Some("JSON text"),
            _ => None,
        },
    }
}

/// A model file `scripts/fetch-models.sh` fetched, by its path under `.cache/models/`:
/// `$MEDGEN_MODELS_DIR/<rel>` when that variable is set, else the first `.cache/models/<rel>` that
/// exists under `extra_starts`, the current folder, the executable's folder or their ancestors.
/// `None` when there is none.
pub fn fetched_model(rel: &str, extra_starts: &[&std::path::Path]) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(dir) = std::env::var_os("MEDGEN_MODELS_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join(rel)).filter(|p| p.is_file());
    }
    let mut starts: Vec<PathBuf> = extra_starts.iter().map(|p| p.to_path_buf()).collect();
    starts.extend(std::env::current_dir().ok());
    starts.extend(std::env::current_exe().ok());
    starts
        .iter()
        .flat_map(|s| s.ancestors().map(|a| a.join(".cache/models").join(rel)).collect::<Vec<_>>())
        .find(|p| p.is_file())
}
