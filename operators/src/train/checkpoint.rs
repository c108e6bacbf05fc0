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
//!
//! [`load_dir`] also reads a diffusers Wan2.1 text-to-video pipeline folder (`WanPipeline`, e.g.
//! Wan2.1-T2V-1.3B-Diffusers), recognised by its `model_index.json` ([`load_pipeline`]):
//!
//! ```text
//! model_index.json                     components: transformer, vae, text_encoder, tokenizer, scheduler
//! transformer/                         config.json + diffusion_pytorch_model.safetensors (or shards + index)
//! vae/                                 config.json + diffusion_pytorch_model.safetensors
//! text_encoder/                        umT5 config.json + model.safetensors (or shards + index)
//! tokenizer/                           tokenizer.json (+ spiece.model, … which are not read)
//! ```
//!
//! A Wan2.2 two-expert pipeline (e.g. Wan2.2-T2V-A14B-Diffusers: `transformer_2/` and a
//! `boundary_ratio` in `model_index.json`) loads both experts ([`LowNoiseExpert`]); sampling runs
//! the second on the steps below the boundary, as diffusers does. `expand_timesteps` (Wan2.2
//! TI2V-5B) is still refused.
//!
//! Such a folder has no medgen.json: its description is synthesised (umT5 at 512 tokens, the Wan
//! VAE from `vae/`, Wan2.1's T2V geometry 832×480, 81 frames at 16 fps). The pipeline's own
//! geometry is not read from anywhere; the `frames` / `width` / `height` sampling settings
//! override the defaults. `scheduler/scheduler_config.json`, when present, is the sampler the
//! pipeline samples with (its class, shift and options, e.g. flow_shift 5.0 for a 720p model);
//! the `sampler` and `shift` sampling settings override it.

use crate::latent::codec::VideoCodec;
use crate::latent::text::{TextEncoder, TextEncoderKind, resolve_dir};
use medgen_kernels::DType;
use medgen_kernels::io::safetensors::Checkpoint as StCheckpoint;
use medgen_kernels::nets::tokenizer::WAN_TEXT_LEN;
use medgen_kernels::nets::umt5::UMT5Config;
use medgen_kernels::nets::wan_dit::{WanDit, WanDitConfig};
use medgen_kernels::sched::SchedulerSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File names inside a checkpoint folder.
pub const META_FILE: &str = "medgen.json";
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
pub const LORA_FILE: &str = "pytorch_lora_weights.safetensors";
pub const CODEC_FILE: &str = "latent_codec.safetensors";
/// What marks a diffusers pipeline folder.
pub const PIPELINE_INDEX_FILE: &str = "model_index.json";

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
    /// Wan2.2's low-noise expert (`transformer_2` of a two-expert pipeline such as
    /// Wan2.2-T2V-A14B): it replaces `dit` on the steps whose timestep is below the boundary.
    pub low_noise: Option<LowNoiseExpert>,
    /// The sampler a diffusers pipeline folder ships (`scheduler/scheduler_config.json`): `None`
    /// when there is none (medgen's checkpoints), `Err` naming the file and the key when it asks for
    /// something medgen does not implement (an error only when sampling relies on it).
    pub scheduler: Option<Result<SchedulerSpec, String>>,
}

/// The second DiT of a Wan2.2 two-expert pipeline.
pub struct LowNoiseExpert {
    pub dit: WanDit,
    /// `boundary_ratio` of `model_index.json`: steps with timestep < ratio × num_train_timesteps
    /// use this expert (and `guidance_2`), as diffusers' `WanPipeline` does.
    pub boundary_ratio: f64,
}

/// Loads a checkpoint whose files `file(name)` locates (a folder, or blobs of a Checkpoint record), with the
/// DiT's weights in `dtype` (`F32`, or `BF16` with diffusers' fp32-kept modules; converted tensor by tensor
/// while reading, so a bf16 model never exists in f32 on the host).
pub fn load_with(file: &dyn Fn(&str) -> Option<PathBuf>, base: &Path, dtype: DType) -> Result<LoadedModel, String> {
    let need = |name: &str| {
        file(name).filter(|p| p.is_file()).ok_or_else(|| format!("the checkpoint {} has no {name}", base.display()))
    };
    let meta_path = need(META_FILE).map_err(|_| {
        format!(
            "{} is neither a medgen checkpoint (no {META_FILE}) nor a diffusers Wan2.1 pipeline (no \
             {PIPELINE_INDEX_FILE}); give a folder train.flow_matching wrote (outputs/<node>/epoch-<n>) or a \
             pipeline folder",
            base.display()
        )
    })?;
    let meta: CheckpointMeta =
        serde_json::from_slice(&medgen_kernels::io::read_bytes(&meta_path).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{} is not a medgen checkpoint description: {e}", meta_path.display()))?;
    if meta.format != FORMAT || meta.version != 1 {
        return Err(format!("{}: format {:?} v{} is not {FORMAT} v1", meta_path.display(), meta.format, meta.version));
    }
    let v = meta.video;
    if !(v.fps.is_finite() && v.fps > 0.0 && v.fps <= 240.0)
        || v.width == 0
        || v.height == 0
        || v.width > crate::sample::MAX_SIDE
        || v.height > crate::sample::MAX_SIDE
        || v.frames == 0
        || v.frames > crate::sample::MAX_FRAMES
    {
        return Err(format!(
            "{}: video geometry {}×{}, {} frames at {} fps is out of range (sides 1–{}, frames 1–{}, fps in (0, 240])",
            meta_path.display(),
            v.width,
            v.height,
            v.frames,
            v.fps,
            crate::sample::MAX_SIDE,
            crate::sample::MAX_FRAMES
        ));
    }
    let cfg_path = need(CONFIG_FILE)?;
    let cfg = WanDitConfig::from_file(&cfg_path).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
    let w = need(WEIGHTS_FILE)?;
    let src = StCheckpoint::open(&w).map_err(|e| format!("{}: {e}", w.display()))?;
    let dit = WanDit::load(cfg, &src, dtype).map_err(|e| format!("loading the DiT from {}: {e}", w.display()))?;
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
    let (z, cfg) = (codec.latent_channels(), dit.config());
    if cfg.in_channels != z || cfg.out_dim() != z {
        return Err(format!(
            "{} has in_channels {} / out_channels {} but the latent codec {} of {} gives {z} channels: they must \
             match (does medgen.json name the codec this DiT was trained with?)",
            cfg_path.display(),
            cfg.in_channels,
            cfg.out_dim(),
            codec.id(),
            meta_path.display()
        ));
    }
    Ok(LoadedModel { dit, text, codec, meta, low_noise: None, scheduler: None })
}

/// Loads a checkpoint folder: medgen's layout, or a diffusers Wan2.1 pipeline folder (one with a
/// `model_index.json`, see [`load_pipeline`]).
/// `dtype` as in [`load_with`].
pub fn load_dir(dir: &Path, dtype: DType) -> Result<LoadedModel, String> {
    if let Some(what) = crate::api::not_a_folder(dir) {
        return Err(format!("checkpoint folder {} {what}", dir.display()));
    }
    if dir.join(PIPELINE_INDEX_FILE).is_file() {
        return load_pipeline(dir, dtype);
    }
    let d = dir.to_path_buf();
    load_with(&move |name| Some(d.join(name)), dir, dtype)
}

/// The pipeline components [`load_pipeline`] reads: (model_index.json key, class name).
const PIPELINE_COMPONENTS: [(&str, &str); 3] =
    [("transformer", "WanTransformer3DModel"), ("vae", "AutoencoderKLWan"), ("text_encoder", "UMT5EncoderModel")];

/// Components a text-to-video pipeline may have besides [`PIPELINE_COMPONENTS`] (the tokenizer is
/// not read — medgen's umT5 tokenizer is built in — and the scheduler only by [`pipeline_scheduler`]).
const PIPELINE_IGNORED: [&str; 2] = ["tokenizer", "scheduler"];

/// Where a pipeline folder keeps its sampler.
pub const SCHEDULER_CONFIG: &str = "scheduler/scheduler_config.json";

/// The sampler of a pipeline folder: `None` without `scheduler/scheduler_config.json`.
pub fn pipeline_scheduler(dir: &Path) -> Option<Result<SchedulerSpec, String>> {
    let path = dir.join(SCHEDULER_CONFIG);
    if !path.is_file() {
        return None;
    }
    Some(
        medgen_kernels::io::read_text(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| SchedulerSpec::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))),
    )
}

/// `model_index.json` keys of Wan2.2's two-expert pipelines.
const SECOND_TRANSFORMER: &str = "transformer_2";
const BOUNDARY_RATIO: &str = "boundary_ratio";

/// Wan2.1 T2V's default geometry (the diffusers `WanPipeline` defaults, 480p).
pub const PIPELINE_VIDEO: VideoGeom = VideoGeom { width: 832, height: 480, frames: 81, fps: 16.0 };

/// The class a `model_index.json` entry names: `["diffusers", "WanTransformer3DModel"]` →
/// `Some(Some("WanTransformer3DModel"))`; `[null, null]` (an absent optional component) →
/// `Some(None)`; a value that is no `[library, class]` pair (a config value) → `None`.
fn component_class(v: &serde_json::Value) -> Option<Option<&str>> {
    match v.as_array().map(Vec::as_slice) {
        Some([lib, class]) if lib.is_null() && class.is_null() => Some(None),
        Some([lib, serde_json::Value::String(class)]) if lib.is_string() || lib.is_null() => Some(Some(class.as_str())),
        _ => None,
    }
}

/// Checks that `model_index.json` describes a Wan text-to-video pipeline; returns its entries.
fn check_model_index(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let bytes = medgen_kernels::io::read_bytes(path).map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let serde_json::Value::Object(obj) = v else { return Err(format!("{} is not a JSON object", path.display())) };
    let pipeline = obj.get("_class_name").and_then(|c| c.as_str()).unwrap_or("(no _class_name)");
    for (key, want) in PIPELINE_COMPONENTS {
        match obj.get(key).map(|e| (e, component_class(e))) {
            Some((_, Some(Some(class)))) if class == want => {}
            Some((_, Some(Some(class)))) => {
                return Err(format!(
                    "{}: {pipeline} has {key} {class}, but a Wan2.1 text-to-video pipeline needs {want}",
                    path.display()
                ));
            }
            Some((e, _)) => {
                return Err(format!("{}: {pipeline} has {key} = {e}, expected [\"…\", \"{want}\"]", path.display()));
            }
            None => return Err(format!("{}: {pipeline} has no {key} ({want}) component", path.display())),
        }
    }
    for (key, e) in &obj {
        if key.starts_with('_')
            || PIPELINE_IGNORED.contains(&key.as_str())
            || PIPELINE_COMPONENTS.iter().any(|(k, _)| k == key)
        {
            continue;
        }
        // Wan2.2's two experts: a second transformer and the timestep boundary between them.
        if key == SECOND_TRANSFORMER {
            match component_class(e) {
                Some(None) | Some(Some("WanTransformer3DModel")) => continue,
                _ => {
                    return Err(format!(
                        "{}: {pipeline} has {key} = {e}; a second expert must be a WanTransformer3DModel",
                        path.display()
                    ));
                }
            }
        }
        if key == BOUNDARY_RATIO && (e.is_null() || e.as_f64().is_some_and(|r| (0.0..=1.0).contains(&r))) {
            continue;
        }
        match component_class(e) {
            Some(None) => {}
            Some(Some(class)) => {
                return Err(format!(
                    "{}: {pipeline} has component `{key}` ({class}); only Wan2.1 text-to-video pipelines \
                     (transformer, vae, text_encoder, tokenizer, scheduler) can be sampled",
                    path.display()
                ));
            }
            // Pipeline settings: unset ones (Wan2.2's `boundary_ratio: null`, `expand_timesteps:
            // false`) are what Wan2.1 does; any other changes the sampling this loader implements.
            None if e.is_null() || e == &serde_json::Value::Bool(false) => {}
            None => {
                return Err(format!(
                    "{}: {pipeline} sets `{key}` = {e}, which Wan2.1 text-to-video sampling does not support",
                    path.display()
                ));
            }
        }
    }
    Ok(obj)
}

/// Opens the weights `stem`.safetensors (or its sharded index) in `dir`, else the one
/// safetensors file or index the folder holds.
fn open_weights(dir: &Path, stem: &str) -> Result<StCheckpoint, String> {
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    let single = dir.join(format!("{stem}.safetensors"));
    let r = if index.is_file() {
        StCheckpoint::open_index(&index)
    } else if single.is_file() {
        StCheckpoint::open_file(&single)
    } else {
        StCheckpoint::open(dir)
    };
    r.map_err(|e| format!("weights in {}: {e}", dir.display()))
}

/// Loads a diffusers Wan2.1 text-to-video pipeline folder (`model_index.json`, `transformer/`,
/// `vae/`, `text_encoder/`, `tokenizer/`) and synthesises its [`CheckpointMeta`] (see the module
/// doc). The text encoder's width must equal the DiT's `text_dim` and the VAE's `z_dim` its
/// `in_channels` / `out_channels`; both are checked before the large weights are read. The DiT is read in
/// `dtype` (see [`load_with`]).
pub fn load_pipeline(dir: &Path, dtype: DType) -> Result<LoadedModel, String> {
    let index = dir.join(PIPELINE_INDEX_FILE);
    let components = check_model_index(&index)?;
    for (key, _) in PIPELINE_COMPONENTS {
        let d = dir.join(key);
        if !d.is_dir() {
            return Err(format!(
                "{} names a {key} but the pipeline folder has no {key}/ ({})",
                index.display(),
                d.display()
            ));
        }
    }
    let (dit_dir, vae_dir, text_dir) = (dir.join("transformer"), dir.join("vae"), dir.join("text_encoder"));
    let dit_cfg_path = dit_dir.join(CONFIG_FILE);
    // Both config readers name the file in their errors.
    let cfg = WanDitConfig::from_file(&dit_cfg_path).map_err(|e| e.to_string())?;
    let text_cfg_path = text_dir.join(CONFIG_FILE);
    let text_cfg = UMT5Config::from_file(&text_cfg_path).map_err(|e| e.to_string())?;
    if cfg.text_dim != text_cfg.d_model {
        return Err(format!(
            "{} has text_dim {} but the text encoder of {} has d_model {}: they must match",
            dit_cfg_path.display(),
            cfg.text_dim,
            text_cfg_path.display(),
            text_cfg.d_model
        ));
    }
    let codec = VideoCodec::wan_vae(&vae_dir)?;
    let z = codec.latent_channels();
    if cfg.in_channels != z || cfg.out_dim() != z {
        return Err(format!(
            "{} has in_channels {} / out_channels {} but the VAE of {} has z_dim {z}: they must match",
            dit_cfg_path.display(),
            cfg.in_channels,
            cfg.out_dim(),
            vae_dir.join(CONFIG_FILE).display()
        ));
    }
    let text = TextEncoder::load(TextEncoderKind::Umt5, &text_dir, WAN_TEXT_LEN)?;
    // The loaded encoder's width is its config's; kept as the invariant sampling relies on.
    if text.dim() != cfg.text_dim {
        return Err(format!(
            "{} has text_dim {} but {} gives {}-wide contexts",
            dit_cfg_path.display(),
            cfg.text_dim,
            text_dir.display(),
            text.dim()
        ));
    }
    let src = open_weights(&dit_dir, "diffusion_pytorch_model")?;
    let dit = WanDit::load(cfg.clone(), &src, dtype)
        .map_err(|e| format!("loading the DiT from {}: {e}", dit_dir.display()))?;
    let low_noise = load_low_noise_expert(dir, &index, &components, &cfg, dtype)?;
    let meta = CheckpointMeta {
        format: FORMAT.into(),
        version: 1,
        epoch: 0,
        step: 0,
        text_encoder: TextSpec {
            kind: TextEncoderKind::Umt5,
            tokens: WAN_TEXT_LEN,
            id: text.id(),
            model_dir: Some(text_dir.display().to_string()),
        },
        codec: CodecSpec {
            kind: "wan_vae".into(),
            id: codec.id(),
            file: None,
            path: Some(vae_dir.display().to_string()),
        },
        video: PIPELINE_VIDEO,
        clips: 0,
        ema: false,
        lora_rank: None,
    };
    Ok(LoadedModel { dit, text, codec, meta, low_noise, scheduler: pipeline_scheduler(dir) })
}

/// Wan2.2's low-noise expert: `transformer_2/` when `model_index.json` (`v`, read from `index`) names one and sets a
/// `boundary_ratio` (without a ratio diffusers never calls it, so it is not loaded). Its config
/// must take the same latents and text as the first expert's.
fn load_low_noise_expert(
    dir: &Path,
    index: &Path,
    v: &serde_json::Map<String, serde_json::Value>,
    first: &WanDitConfig,
    dtype: DType,
) -> Result<Option<LowNoiseExpert>, String> {
    let named = v.get(SECOND_TRANSFORMER).and_then(component_class).flatten().is_some();
    let ratio = v.get(BOUNDARY_RATIO).and_then(|r| r.as_f64());
    if let (false, Some(r)) = (named, ratio) {
        return Err(format!(
            "{} sets boundary_ratio = {r} but names no transformer_2: the low-noise steps would have no model",
            index.display()
        ));
    }
    let (true, Some(boundary_ratio)) = (named, ratio) else {
        if named {
            tracing::warn!(
                pipeline = %dir.display(),
                "model_index.json names a transformer_2 but no boundary_ratio: diffusers never uses it, nor does medgen"
            );
        }
        return Ok(None);
    };
    let d = dir.join(SECOND_TRANSFORMER);
    let cfg = WanDitConfig::from_file(d.join(CONFIG_FILE)).map_err(|e| e.to_string())?;
    if (cfg.in_channels, cfg.out_dim(), cfg.text_dim) != (first.in_channels, first.out_dim(), first.text_dim)
        || cfg.patch_size != first.patch_size
    {
        return Err(format!(
            "{} takes {} latent channels, patches {:?} and {}-wide text, but transformer/ takes {}, {:?} and {}: \
             the two experts must match",
            d.join(CONFIG_FILE).display(),
            cfg.in_channels,
            cfg.patch_size,
            cfg.text_dim,
            first.in_channels,
            first.patch_size,
            first.text_dim
        ));
    }
    let src = open_weights(&d, "diffusion_pytorch_model")?;
    let dit = WanDit::load(cfg, &src, dtype).map_err(|e| format!("loading the DiT from {}: {e}", d.display()))?;
    Ok(Some(LowNoiseExpert { dit, boundary_ratio }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file, or a folder of something else, is named with what to give instead.
    #[test]
    fn wrong_folders_say_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(WEIGHTS_FILE);
        std::fs::write(&file, b"x").unwrap();
        let e = load_dir(&file, DType::F32).err().unwrap();
        assert!(e.contains("is a file, not a folder") && e.contains(&dir.path().display().to_string()), "{e}");
        let e = load_dir(&dir.path().join("missing"), DType::F32).err().unwrap();
        assert!(e.ends_with("does not exist"), "{e}");
        let e = load_dir(dir.path(), DType::F32).err().unwrap();
        assert!(e.contains(&format!("no {META_FILE}")) && e.contains(&format!("no {PIPELINE_INDEX_FILE}")), "{e}");
    }
}
