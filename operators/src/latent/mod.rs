//! latent: text and video encoding into the latent space the DiT trains on, and back.
//!
//! * `latent.encode_text` ([`encode_text`]): captions (or prompts) → text-context blobs (MiniLM
//!   token states for the embedded default, umT5 for Wan checkpoints).
//! * `latent.encode_video` ([`encode_video`]): clips → latent blobs through the Wan VAE or the
//!   embedded patch-PCA codec, which it fits from the dataset by a streaming covariance reduction.
//! * `latent.decode_video` ([`decode_video`]): latents → MP4, to look at what the codec keeps.
//!
//! Blobs are safetensors files in the run store (one tensor each: `latent [C, F, H, W]` or
//! `context [L, D]`), so any tool that reads safetensors reads our caches — the FastVideo
//! "precomputed latents" workflow, filled incrementally and memoised per clip.

pub mod text;

#[cfg(feature = "video")]
pub mod codec;
#[cfg(feature = "video")]
pub mod decode_video;
pub mod encode_text;
#[cfg(feature = "video")]
pub mod encode_video;

use crate::api::{ItemError, Services};
use medgen_kernels::Tensor;
use medgen_kernels::io::safetensors::{SafeTensorsFile, save};
use std::collections::HashMap;

/// Name of the tensor in a video-latent blob.
pub const LATENT_TENSOR: &str = "latent";
/// Name of the tensor in a text-context blob.
pub const CONTEXT_TENSOR: &str = "context";

/// Store one tensor as a safetensors blob (atomic, content-addressed); returns the blob key.
pub fn put_tensor(
    services: &dyn Services,
    name: &str,
    t: &Tensor,
    metadata: &[(&str, &str)],
) -> Result<String, ItemError> {
    let tmp_dir = services.tmp_dir();
    std::fs::create_dir_all(&tmp_dir)
        .map_err(|e| ItemError::transient(format!("cannot create {}: {e}", tmp_dir.display())))?;
    let tmp =
        tempfile::Builder::new().prefix("tensor-").suffix(".safetensors").tempfile_in(&tmp_dir).map_err(|e| {
            ItemError::transient(format!("cannot create a temporary file in {}: {e}", tmp_dir.display()))
        })?;
    let meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    save(tmp.path(), &[(name, t)], (!meta.is_empty()).then_some(meta))
        .map_err(|e| ItemError::transient(format!("writing tensor {name}: {e}")))?;
    services.blob_put_file(tmp.path()).map_err(|e| ItemError::transient(e.to_string()))
}

/// The `__metadata__` of a safetensors blob.
pub fn tensor_metadata(services: &dyn Services, key: &str) -> Result<HashMap<String, String>, ItemError> {
    let path = services.blob_path(key);
    let file = SafeTensorsFile::open(&path).map_err(|e| ItemError::unreadable(format!("blob {key}: {e}")))?;
    Ok(file.user_metadata().cloned().unwrap_or_default())
}

/// Load one tensor of a safetensors blob (f32).
pub fn get_tensor(services: &dyn Services, key: &str, name: &str) -> Result<Tensor, ItemError> {
    let path = services.blob_path(key);
    if !path.is_file() {
        return Err(ItemError::unreadable(format!(
            "blob {key} is missing from the run store ({}); re-run the node that wrote it",
            path.display()
        )));
    }
    let file = SafeTensorsFile::open(&path).map_err(|e| ItemError::unreadable(format!("blob {key}: {e}")))?;
    let t = file.load(name).map_err(|e| ItemError::unreadable(format!("blob {key}: {e}")))?;
    t.to_dtype(medgen_kernels::DType::F32).map_err(|e| ItemError::unreadable(format!("blob {key}: {e}")))
}
