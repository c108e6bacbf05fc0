//! Checkpoint I/O: safetensors loading (single files and sharded checkpoints), PyTorch zip
//! checkpoints ([`pth`], a restricted unpickler), the
//! [`TensorSource`] abstraction networks load weights through, and the Wan DiT key mappings.

pub mod pth;
pub mod safetensors;
pub mod source;
pub mod wan_keys;

pub use source::{Prefixed, TensorSource};

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
