//! The checkpoint folder `train.flow_matching` writes and `sample.t2v` / `medgen sample` read.
//!
//! ```text
//! config.json                          DiT config (diffusers WanTransformer3DModel names)
//! diffusion_pytorch_model.safetensors  DiT weights, diffusers keys (LoRA merged; EMA when enabled)
//! pytorch_lora_weights.safetensors     the LoRA adapters alone, PEFT/diffusers keys (LoRA runs only)
//! latent_codec.safetensors             the patch-PCA codec the latents were made with (embedded codec only)
//! medgen.json                          what else sampling needs: text encoder, codec, video geometry
//! ```
//!
//! The folder is self-contained for the embedded defaults: `medgen sample --checkpoint DIR` needs
//! nothing else (MiniLM comes from the fetched models folder unless medgen.json names one).

use crate::latent::codec::VideoCodec;
use crate::latent::text::{TextEncoder, TextEncoderKind, resolve_dir};
use medgen_kernels::DType;
use medgen_kernels::io::safetensors::Checkpoint as StCheckpoint;
use medgen_kernels::nets::wan_dit::{WanDit, WanDitConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File names inside a checkpoint folder.
pub const META_FILE: &str = "medgen.json";
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
pub const LORA_FILE: &str = "pytorch_lora_weights.safetensors";
pub const CODEC_FILE: &str = "latent_codec.safetensors";

/// The text encoder a checkpoint was trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextSpec {
    pub kind: TextEncoderKind,
    /// Context rows (MiniLM tokens; 512 for umT5).
    pub tokens: usize,
    /// Encoder id as recorded by latent.encode_text (`minilm-384x32`).
    pub id: String,
    /// Model folder, when not the fetched default.
    pub model_dir: Option<String>,
}

/// The latent codec a checkpoint's latents come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodecSpec {
    /// `patch_pca` or `wan_vae`.
    pub kind: String,
    pub id: String,
    /// File inside the folder (patch-PCA).
    pub file: Option<String>,
    /// Wan VAE folder (outside the checkpoint).
    pub path: Option<String>,
}

/// Video geometry the model was trained at.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct VideoGeom {
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub fps: f64,
}

/// `medgen.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: String,
    pub version: u32,
    pub epoch: u64,
    pub step: u64,
    pub text_encoder: TextSpec,
    pub codec: CodecSpec,
    pub video: VideoGeom,
    /// Clips in the training pool when this checkpoint was written.
    pub clips: usize,
    /// Whether the weights are the EMA weights.
    pub ema: bool,
    /// LoRA rank, when trained with LoRA (the weights file has them merged).
    pub lora_rank: Option<usize>,
}

pub const FORMAT: &str = "medgen-checkpoint";

/// A checkpoint ready to sample with.
pub struct LoadedModel {
    pub dit: WanDit,
    pub text: Arc<TextEncoder>,
    pub codec: VideoCodec,
    pub meta: CheckpointMeta,
}

/// Loads a checkpoint whose files `file(name)` locates (a folder, or blobs of a Checkpoint record).
pub fn load_with(file: &dyn Fn(&str) -> Option<PathBuf>, base: &Path) -> Result<LoadedModel, String> {
    let need = |name: &str| file(name).filter(|p| p.is_file()).ok_or_else(|| format!("the checkpoint has no {name}"));
    let meta_path = need(META_FILE)?;
    let meta: CheckpointMeta = serde_json::from_slice(
        &std::fs::read(&meta_path).map_err(|e| format!("reading {}: {e}", meta_path.display()))?,
    )
    .map_err(|e| format!("{} is not a medgen checkpoint description: {e}", meta_path.display()))?;
    if meta.format != FORMAT || meta.version != 1 {
        return Err(format!("{}: format {:?} v{} is not {FORMAT} v1", meta_path.display(), meta.format, meta.version));
    }
    let cfg_path = need(CONFIG_FILE)?;
    let cfg = WanDitConfig::from_file(&cfg_path).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let w = need(WEIGHTS_FILE)?;
    let src = StCheckpoint::open(&w).map_err(|e| format!("{}: {e}", w.display()))?;
    let dit = WanDit::load(cfg, &src, DType::F32).map_err(|e| format!("loading the DiT from {}: {e}", w.display()))?;
    let dir = resolve_dir(meta.text_encoder.kind, meta.text_encoder.model_dir.as_deref(), base)?;
    let text = TextEncoder::load(meta.text_encoder.kind, &dir, meta.text_encoder.tokens)?;
    if text.id() != meta.text_encoder.id {
        return Err(format!(
            "the checkpoint was trained with text encoder {} but {} gives {}; use the same encoder",
            meta.text_encoder.id,
            dir.display(),
            text.id()
        ));
    }
    let codec = match meta.codec.kind.as_str() {
        "patch_pca" => {
            let f = meta.codec.file.as_deref().unwrap_or(CODEC_FILE);
            VideoCodec::patch_pca(&need(f)?)?
        }
        "wan_vae" => {
            let p = meta.codec.path.as_deref().ok_or("medgen.json names no Wan VAE path")?;
            VideoCodec::wan_vae(Path::new(p))?
        }
        other => return Err(format!("unknown latent codec kind {other:?} in medgen.json")),
    };
    if meta.codec.kind == "patch_pca" && codec.id() != meta.codec.id {
        return Err(format!("the codec file holds {} but medgen.json says {}", codec.id(), meta.codec.id));
    }
    Ok(LoadedModel { dit, text, codec, meta })
}

/// Loads a checkpoint folder.
pub fn load_dir(dir: &Path) -> Result<LoadedModel, String> {
    if !dir.is_dir() {
        return Err(format!("checkpoint folder {} does not exist", dir.display()));
    }
    let d = dir.to_path_buf();
    load_with(&move |name| Some(d.join(name)), dir)
}
