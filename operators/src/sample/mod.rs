//! sample: text-to-video generation with a trained checkpoint.
//!
//! [`generate`] is the whole pipeline — prompt and negative prompt through the checkpoint's text
//! encoder, Gaussian noise from the seed, the flow-matching sampler (UniPC or Euler, with the
//! timestep shift) with classifier-free guidance, then the latent codec's decoder — shared by the
//! `sample.t2v` operator and `medgen sample`.
//!
//! Which sampler: the `sampler` and `shift` settings when given; otherwise what a diffusers
//! pipeline folder ships in `scheduler/scheduler_config.json` (class, shift and options, as
//! diffusers' pipeline would sample); otherwise UniPC at shift 3 (Wan at 480p). See
//! [`resolve_scheduler`].

#[cfg(feature = "video")]
pub mod t2v;

use crate::latent::codec::VideoCodec;
use crate::train::checkpoint::{LoadedModel, LowNoiseExpert};
pub use medgen_kernels::sched::DEFAULT_SHIFT;
use medgen_kernels::sched::{SchedulerKind, SchedulerSpec, cfg_combine};
use medgen_kernels::train::lora::LoraWeights;
use medgen_kernels::{DType, Device, Rng, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// UniPC bh2, order 2 (the Wan pipelines' default).
    Unipc,
    /// FlowMatch Euler.
    Euler,
}

impl SamplerKind {
    fn scheduler(self) -> SchedulerKind {
        match self {
            SamplerKind::Unipc => SchedulerKind::UniPc,
            SamplerKind::Euler => SchedulerKind::Euler,
        }
    }

    fn of(kind: SchedulerKind) -> SamplerKind {
        match kind {
            SchedulerKind::UniPc => SamplerKind::Unipc,
            SchedulerKind::Euler => SamplerKind::Euler,
        }
    }

    /// The settings' name (`unipc`, `euler`).
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Unipc => "unipc",
            SamplerKind::Euler => "euler",
        }
    }
}

/// How a video is sampled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleSettings {
    /// The sampler; `None`: the checkpoint's scheduler, else UniPC ([`resolve_scheduler`]).
    pub sampler: Option<SamplerKind>,
    pub steps: usize,
    /// Classifier-free guidance scale (1 = no guidance: one model call per step).
    pub guidance: f64,
    /// Guidance on the low-noise expert's steps of a Wan2.2 two-expert pipeline (diffusers'
    /// `guidance_scale_2`); `None`: `guidance`.
    pub guidance_2: Option<f64>,
    /// Timestep shift (Wan: 5.0 at 720p, 3.0 at 480p); `None`: the checkpoint's scheduler's, else
    /// [`DEFAULT_SHIFT`].
    pub shift: Option<f64>,
    pub seed: u64,
    pub negative_prompt: String,
    /// Frames (1 + 4k), width, height; default the checkpoint's training geometry.
    pub frames: Option<usize>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

impl SampleSettings {
    /// The guidance of a two-expert pipeline's low-noise steps: `guidance_2`, else `guidance`.
    pub fn low_noise_guidance(&self) -> f64 {
        self.guidance_2.unwrap_or(self.guidance)
    }
}

impl Default for SampleSettings {
    fn default() -> Self {
        SampleSettings {
            sampler: None,
            steps: 50,
            guidance: 5.0,
            guidance_2: None,
            shift: None,
            seed: 0,
            negative_prompt: String::new(),
            frames: None,
            width: None,
            height: None,
        }
    }
}

fn kerr(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Why [`generate`] returned no video.
#[derive(Debug)]
pub enum Stopped {
    /// `progress` asked to stop.
    Stopped,
    /// Bad settings or a model error.
    Failed(String),
}

impl From<String> for Stopped {
    fn from(e: String) -> Self {
        Stopped::Failed(e)
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Stopped => f.write_str("stopped"),
            Stopped::Failed(e) => f.write_str(e),
        }
    }
}

/// A LoRA adapter file merged into the DiT before sampling: `"adapter.safetensors"` (scale 1) or
/// `{ path = "adapter.safetensors", scale = 0.8 }` (diffusers' `set_adapters` weight), or
/// `{ path = "low_noise_model.safetensors", expert = "low_noise" }` for the second DiT of a Wan2.2
/// two-expert checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LoraSpec {
    /// A file, at scale 1.
    Path(String),
    /// A file and the weight its update is multiplied by.
    Scaled {
        /// The LoRA safetensors file.
        path: String,
        /// Multiplies `alpha/rank` (1: as trained, 0: off).
        #[serde(default = "one")]
        scale: f64,
        /// Which DiT it adapts: `high_noise` (the default: the checkpoint's DiT, Wan2.2's
        /// high-noise expert) or `low_noise` (Wan2.2's `transformer_2`).
        #[serde(default, skip_serializing_if = "LoraExpert::is_default")]
        expert: LoraExpert,
    },
}

fn one() -> f64 {
    1.0
}

/// Which DiT of a checkpoint a LoRA adapts. Wan2.2 LoRAs come in pairs, one per expert
/// (`high_noise_model.safetensors`, `low_noise_model.safetensors`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoraExpert {
    /// The checkpoint's DiT (`transformer/`): a Wan2.1 model's only one, Wan2.2's high-noise
    /// expert (diffusers' default target).
    #[default]
    HighNoise,
    /// Wan2.2's low-noise expert (`transformer_2/`; diffusers' `load_into_transformer_2=True`).
    LowNoise,
}

impl LoraExpert {
    fn is_default(&self) -> bool {
        *self == LoraExpert::HighNoise
    }

    /// What follows a LoRA file's name where it is listed: nothing for the default expert.
    pub fn label(self) -> &'static str {
        match self {
            LoraExpert::HighNoise => "",
            LoraExpert::LowNoise => " (low-noise expert)",
        }
    }
}

/// A LoRA file to merge: where, how strongly, into which expert.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraUse {
    pub path: std::path::PathBuf,
    pub scale: f64,
    pub expert: LoraExpert,
}

impl LoraUse {
    /// The checkpoint's (first) DiT at `scale`.
    pub fn new(path: impl Into<std::path::PathBuf>, scale: f64) -> LoraUse {
        LoraUse { path: path.into(), scale, expert: LoraExpert::HighNoise }
    }
}

impl LoraSpec {
    /// The file as written in the graph.
    pub fn path(&self) -> &str {
        match self {
            LoraSpec::Path(p) | LoraSpec::Scaled { path: p, .. } => p,
        }
    }

    /// Its weight.
    pub fn scale(&self) -> f64 {
        match self {
            LoraSpec::Path(_) => 1.0,
            LoraSpec::Scaled { scale, .. } => *scale,
        }
    }

    /// The DiT it adapts.
    pub fn expert(&self) -> LoraExpert {
        match self {
            LoraSpec::Path(_) => LoraExpert::HighNoise,
            LoraSpec::Scaled { expert, .. } => *expert,
        }
    }
}

/// Largest |scale| a LoRA may be merged with.
pub const MAX_LORA_SCALE: f64 = 100.0;

impl LoadedModel {
    /// Merges LoRA adapter files into the DiT they name (the checkpoint's, or a Wan2.2 folder's
    /// low-noise expert), each in turn: `W + scale·(alpha/rank)·B·A` on every adapted layer. The
    /// files may be in PEFT/diffusers (what `train.flow_matching` writes), original-Wan or
    /// musubi-tuner layout ([`LoraWeights::load`]). Errors name the file. Call it before
    /// [`LoadedModel::to_device`] (the merge runs on the host, in f32).
    pub fn with_loras(mut self, loras: &[LoraUse]) -> Result<LoadedModel, String> {
        for LoraUse { path, scale, expert } in loras {
            if !scale.is_finite() || scale.abs() > MAX_LORA_SCALE {
                return Err(format!("LoRA {}: scale {scale} is not within ±{MAX_LORA_SCALE}", path.display()));
            }
            let (dit, which) = match expert {
                LoraExpert::HighNoise => (&mut self.dit, "DiT"),
                LoraExpert::LowNoise => match self.low_noise.as_mut() {
                    Some(x) => (&mut x.dit, "low-noise DiT (transformer_2)"),
                    None => {
                        return Err(format!(
                            "the LoRA {} is for the low-noise expert, but this checkpoint has one DiT (no \
                             transformer_2 with a boundary_ratio); drop `expert = \"low_noise\"` (--lora-2) or use \
                             a Wan2.2 two-expert pipeline folder",
                            path.display()
                        ));
                    }
                },
            };
            let mut lora =
                LoraWeights::load(path, DType::F32).map_err(|e| format!("reading the LoRA {}: {e}", path.display()))?;
            lora.alpha *= scale;
            *dit = lora.merge_into(dit).map_err(|e| {
                format!(
                    "the LoRA {} does not fit this checkpoint's {which} ({e}); was it trained for another model?",
                    path.display()
                )
            })?;
        }
        Ok(self)
    }

    /// The model with its DiT (and a Wan VAE codec) on `device`; the text encoder stays on the
    /// host (one call per prompt). A no-op for the CPU.
    pub fn to_device(self, device: Device) -> Result<LoadedModel, String> {
        if device == Device::Cpu && self.dit.device() == Device::Cpu {
            return Ok(self);
        }
        let dit = self.dit.to_device(device).map_err(|e| format!("moving the DiT to {device}: {e}"))?;
        let low_noise = match self.low_noise {
            Some(x) => Some(LowNoiseExpert {
                dit: x.dit.to_device(device).map_err(|e| format!("moving the low-noise DiT to {device}: {e}"))?,
                ..x
            }),
            None => None,
        };
        let codec = match self.codec {
            VideoCodec::WanVae(vae, id) if vae.device() != device => {
                let path = self.meta.codec.path.as_deref().ok_or("medgen.json names no Wan VAE path")?;
                VideoCodec::wan_vae_on(std::path::Path::new(path), device).map_err(|e| format!("{e} ({id})"))?
            }
            c => c,
        };
        Ok(LoadedModel { dit, codec, low_noise, ..self })
    }
}

/// Where the sampler came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerSource {
    /// The checkpoint's `scheduler/scheduler_config.json` (with any setting applied on top).
    Checkpoint,
    /// The settings and medgen's defaults.
    Settings,
}

/// The sampler `s` asks for with checkpoint `m`:
/// - `sampler` unset: the checkpoint's scheduler when it has one (an error if that one asks for
///   something medgen does not implement, naming the file and the key), else UniPC;
/// - `sampler` set to the checkpoint's scheduler's kind: that scheduler, options included;
/// - `sampler` set to the other kind: medgen's options for it, keeping the checkpoint's shift;
/// - `shift` set: it replaces the shift in every case.
pub fn resolve_scheduler(m: &LoadedModel, s: &SampleSettings) -> Result<(SchedulerSpec, SchedulerSource), String> {
    let (mut spec, source) = match (&m.scheduler, s.sampler) {
        (Some(Ok(spec)), None) => (spec.clone(), SchedulerSource::Checkpoint),
        (Some(Ok(spec)), Some(k)) if spec.kind == k.scheduler() => (spec.clone(), SchedulerSource::Checkpoint),
        (Some(Ok(spec)), Some(k)) => (
            SchedulerSpec {
                shift: spec.shift,
                train_timesteps: spec.train_timesteps,
                ..SchedulerSpec::new(k.scheduler())
            },
            SchedulerSource::Checkpoint,
        ),
        (Some(Err(e)), None) => {
            return Err(format!(
                "{e}. Set `sampler` (unipc or euler) and `shift` to sample this checkpoint with medgen's samplers instead"
            ));
        }
        (Some(Err(_)) | None, k) => {
            (SchedulerSpec::new(k.unwrap_or(SamplerKind::Unipc).scheduler()), SchedulerSource::Settings)
        }
    };
    if let Some(shift) = s.shift {
        if !(shift.is_finite() && shift > 0.0) {
            return Err(format!("shift must be a positive number, got {shift}"));
        }
        spec.shift = shift;
    }
    Ok((spec, source))
}

/// The settings' sampler name for a resolved scheduler.
pub fn sampler_name(spec: &SchedulerSpec) -> &'static str {
    SamplerKind::of(spec.kind).name()
}

/// Longest video sampled (frames): far beyond what fits any device, short of exhausting the host
/// on a typo.
pub const MAX_FRAMES: usize = 4097;
/// Longest side sampled, pixels.
pub const MAX_SIDE: u32 = 8192;

/// Generates a video `[3, T, H, W]` in `[-1, 1]` for `prompt`; `progress(step, steps)` is called
/// after every sampler step and stops the sampling by returning false (a run shutting down).
pub fn generate(
    m: &LoadedModel,
    prompt: &str,
    s: &SampleSettings,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Tensor, Stopped> {
    let frames = s.frames.unwrap_or(m.meta.video.frames);
    let width = s.width.unwrap_or(m.meta.video.width);
    let height = s.height.unwrap_or(m.meta.video.height);
    if frames == 0 || !(frames - 1).is_multiple_of(4) || frames > MAX_FRAMES {
        return Err(format!("frames must be 1 + 4k, at most {MAX_FRAMES}, got {frames}").into());
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(format!("{width}×{height}: each side at most {MAX_SIDE} pixels").into());
    }
    let guidance_2 = s.low_noise_guidance();
    if !s.guidance.is_finite() || !guidance_2.is_finite() {
        return Err(format!("guidance ({}, {guidance_2}) must be a number", s.guidance).into());
    }
    let (spec, _) = resolve_scheduler(m, s)?;
    let [_, ph, pw] = m.dit.config().patch_size;
    if width == 0
        || height == 0
        || !(width as usize).is_multiple_of(8 * pw)
        || !(height as usize).is_multiple_of(8 * ph)
    {
        return Err(
            format!("{width}×{height} is not a multiple of {}×{} (codec ×8, DiT patches)", 8 * pw, 8 * ph).into()
        );
    }
    if s.steps == 0 {
        return Err(Stopped::Failed("steps must be at least 1".into()));
    }
    // The DiT runs where its weights are (see [`LoadedModel::to_device`]); the sampler's update,
    // the noise and the text contexts are computed on the host and moved there each step.
    let dev = m.dit.device();
    // Wan2.2 two-expert pipelines: below this timestep the low-noise expert runs (diffusers:
    // `t >= boundary_ratio · num_train_timesteps` stays on the first transformer).
    let boundary = m.low_noise.as_ref().map(|x| x.boundary_ratio * spec.train_timesteps as f64);
    let c = m.dit.config().in_channels;
    let shape = [1, c, 1 + (frames - 1) / 4, height as usize / 8, width as usize / 8];
    let mut rng = Rng::new(s.seed);
    let mut x = Tensor::randn(&shape, 1.0, DType::F32, &mut rng);
    let texts = [prompt, s.negative_prompt.as_str()];
    let ctx = m.text.encode(&texts)?;
    if let Some(bad) = ctx.to_vec_f32().map_err(kerr)?.into_iter().find(|v| !v.is_finite()) {
        return Err(Stopped::Failed(format!(
            "the text encoder's output holds {bad}: a broken text encoder checkpoint (NaN or infinite weights), or \
             an overflow in its precision"
        )));
    }
    let cond = ctx.narrow(0, 0, 1).and_then(|t| t.to_device(dev)).map_err(kerr)?;
    let uncond = ctx.narrow(0, 1, 1).and_then(|t| t.to_device(dev)).map_err(kerr)?;
    let mut sampler = spec.sampler(s.steps).map_err(kerr)?;
    let n = sampler.len();
    for i in 0..n {
        let t = Tensor::from_vec(vec![sampler.timestep(i)], &[1]).and_then(|t| t.to_device(dev)).map_err(kerr)?;
        let xd = x.to_device(dev).map_err(kerr)?;
        let (dit, guidance) = match (&m.low_noise, boundary) {
            (Some(low), Some(b)) if (sampler.timestep(i) as f64) < b => (&low.dit, guidance_2),
            _ => (&m.dit, s.guidance),
        };
        let v_c = dit.forward(&xd, &t, &cond).map_err(kerr)?;
        let v = if (guidance - 1.0).abs() > 1e-12 {
            let v_u = dit.forward(&xd, &t, &uncond).map_err(kerr)?;
            cfg_combine(&v_c, &v_u, guidance).map_err(kerr)?
        } else {
            v_c
        };
        x = sampler.step(&v, &x).map_err(kerr)?;
        // A NaN or an infinity never recovers and would be written as a black video.
        if let Some(bad) = x.to_vec_f32().map_err(kerr)?.into_iter().find(|v| !v.is_finite()) {
            return Err(Stopped::Failed(format!(
                "the sample became {bad} at step {} of {n} (timestep {}): the DiT's output is not finite — a \
                 broken checkpoint or LoRA, or an overflow in {:?}",
                i + 1,
                sampler.timestep(i),
                m.dit.dtype()
            )));
        }
        if !progress(i + 1, n) {
            return Err(Stopped::Stopped);
        }
    }
    let z = x.squeeze(0).map_err(kerr)?;
    // `video_to_rgb` refuses non-finite frames (a broken decoder) when the video is written.
    Ok(m.codec.decode(&z)?)
}

#[cfg(test)]
mod lora_spec_tests {
    use super::{LoraExpert, LoraSpec};
    use serde_json::json;

    /// The graph forms of `lora` entries, and the memo fingerprint of the default expert: it is
    /// left out, so graphs written before `expert` existed keep their memo keys.
    #[test]
    fn lora_entries_parse_and_keep_old_fingerprints() {
        let specs: Vec<LoraSpec> = serde_json::from_value(json!([
            "a.safetensors",
            { "path": "b.safetensors", "scale": 0.6 },
            { "path": "c.safetensors", "expert": "low_noise" },
        ]))
        .unwrap();
        let seen: Vec<(&str, f64, LoraExpert)> = specs.iter().map(|s| (s.path(), s.scale(), s.expert())).collect();
        assert_eq!(
            seen,
            [
                ("a.safetensors", 1.0, LoraExpert::HighNoise),
                ("b.safetensors", 0.6, LoraExpert::HighNoise),
                ("c.safetensors", 1.0, LoraExpert::LowNoise),
            ]
        );
        assert_eq!(serde_json::to_value(&specs[1]).unwrap(), json!({ "path": "b.safetensors", "scale": 0.6 }));
        assert!(serde_json::from_value::<LoraSpec>(json!({ "path": "d", "expert": "middle" })).is_err());
    }
}
