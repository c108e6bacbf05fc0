//! `sample.t2v`: prompts × checkpoints → MP4 samples.

use super::{
    LoraSpec, LoraUse, MAX_LORA_SCALE, SampleSettings, SamplerKind, SchedulerSource, Stopped, generate,
    resolve_scheduler, sampler_name,
};
use crate::api::device::Precision;
use crate::api::loaded::LoadedCache;
use crate::api::*;
use crate::latent::codec::video_to_mp4;
use crate::train::checkpoint::{LoadedModel, load_dir, load_with};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use medgen_kernels::Device;

pub struct SampleT2v;

fn d_steps() -> usize {
    50
}
fn d_guidance() -> f64 {
    5.0
}
fn d_threads() -> usize {
    1
}

/// Params of `sample.t2v`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct T2vParams {
    /// A fixed checkpoint folder instead of the `checkpoints` port: medgen's layout (medgen.json), or
    /// a diffusers Wan2.1 text-to-video pipeline folder (model_index.json, e.g.
    /// Wan2.1-T2V-1.3B-Diffusers), which samples at 832×480, 81 frames, 16 fps unless `frames`,
    /// `width` and `height` say otherwise.
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// `unipc` (Wan's default) or `euler`. Unset: the sampler a diffusers pipeline folder ships
    /// (`scheduler/scheduler_config.json`: its class, shift and options), else `unipc`.
    #[serde(default)]
    pub sampler: Option<SamplerKind>,
    /// Sampler steps.
    #[serde(default = "d_steps")]
    pub steps: usize,
    /// Classifier-free guidance scale (1: off, one model call per step).
    #[serde(default = "d_guidance")]
    pub guidance: f64,
    /// Guidance on the low-noise expert's steps of a Wan2.2 two-expert pipeline folder
    /// (`transformer_2` + `boundary_ratio`; diffusers' `guidance_scale_2`). Unset: `guidance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_2: Option<f64>,
    /// Timestep shift (Wan: 3.0 at 480p, 5.0 at 720p). Unset: the pipeline folder's scheduler's
    /// (`flow_shift`), else 3.0.
    #[serde(default)]
    pub shift: Option<f64>,
    /// LoRA adapter files merged into the checkpoint's DiT before sampling, in order:
    /// `["adapter.safetensors", { path = "other.safetensors", scale = 0.8 }]`. PEFT/diffusers
    /// (what train.flow_matching writes as pytorch_lora_weights.safetensors), original-Wan or
    /// musubi-tuner layout. For a Wan2.2 two-expert checkpoint, `expert = "low_noise"` puts a file
    /// into the low-noise DiT (transformer_2). A changed file (size or modification time) is
    /// sampled again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lora: Vec<LoraSpec>,
    /// Noise seed; each prompt uses seed + its index in blake3 order, so samples are reproducible.
    #[serde(default)]
    pub seed: u64,
    /// Negative prompt (the unconditional branch of CFG).
    #[serde(default)]
    pub negative_prompt: String,
    /// Frames (1 + 4k); default the checkpoint's training geometry.
    #[serde(default)]
    pub frames: Option<usize>,
    /// Width; default the checkpoint's.
    #[serde(default)]
    pub width: Option<u32>,
    /// Height; default the checkpoint's.
    #[serde(default)]
    pub height: Option<u32>,
    /// Pool threads per worker.
    #[serde(default = "d_threads")]
    pub threads: usize,
    /// Where the DiT and a Wan VAE run: `cpu`, `cuda`, `cuda:N` or `auto` (a CUDA request on a machine
    /// without one runs on the CPU with a warning). Not part of the memo: a sample is not redone
    /// because it would now run elsewhere.
    #[serde(default = "crate::api::device::d_device")]
    pub device: String,
    /// DiT weights and GEMM/attention inputs: `f32`, or `bf16` (what diffusers' Wan pipelines use; half the
    /// memory and the tensor-core kernels on a GPU; fp32 accumulation, residual stream and the modules
    /// diffusers keeps in fp32). Part of the memo: bf16 samples differ slightly from f32 ones.
    #[serde(default)]
    pub precision: Precision,
}

/// A prompt to render with a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct SampleJob {
    /// The Checkpoint record, or None for the fixed folder.
    ckpt: Option<Checkpoint>,
    prompt: Prompt,
    /// The LoRA files merged before sampling, as [`lora_identity`] names them (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    lora: String,
}

/// The LoRA files as (resolved path, scale), and a string that changes when one of them does (its
/// path, scale, size and modification time): part of each sample's memo key.
fn lora_identity(loras: &[LoraUse]) -> String {
    loras
        .iter()
        .map(|LoraUse { path, scale, expert }| {
            let (len, mtime) = std::fs::metadata(path)
                .map(|m| {
                    let t = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                    (m.len(), t.map_or(0, |d| d.as_nanos()))
                })
                .unwrap_or((0, 0));
            format!("{}×{scale}{} ({len} B, {mtime})", path.display(), expert.label())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl PoolItem for SampleJob {
    fn item_id(&self) -> String {
        match &self.ckpt {
            Some(c) => format!("prompt:{}@epoch{}", self.prompt.prompt_id, c.epoch),
            None => format!("prompt:{}", self.prompt.prompt_id),
        }
    }
    fn describe(&self) -> String {
        format!("{:?}", self.prompt.text)
    }
    fn memo_input(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    fn route(&self) -> u64 {
        let mut h = blake3::Hasher::new();
        h.update(self.prompt.prompt_id.as_bytes());
        if let Some(c) = &self.ckpt {
            h.update(&c.epoch.to_le_bytes());
        }
        u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or([0; 8]))
    }
}

/// Loads (once per process, device and precision) the model of a checkpoint record or folder onto `device`.
fn model(
    job: &SampleJob,
    fixed: &Option<PathBuf>,
    base: &Path,
    services: &dyn Services,
    device: Device,
    precision: Precision,
    loras: &[LoraUse],
) -> Result<Arc<LoadedModel>, String> {
    // Keep a handful: each holds a whole DiT.
    static CACHE: LoadedCache<LoadedModel> = LoadedCache::new(4);
    let dt = precision.dtype();
    match (&job.ckpt, fixed) {
        (Some(c), _) => {
            let key =
                format!("{device} {precision:?} {} {}", serde_json::to_string(&c.blobs).unwrap_or_default(), job.lora);
            CACHE.get_or_load(key, || {
                let paths: BTreeMap<String, PathBuf> =
                    c.blobs.iter().map(|(n, k)| (n.clone(), services.blob_path(k))).collect();
                load_with(&move |name| paths.get(name).cloned(), base, dt)?.with_loras(loras)?.to_device(device)
            })
        }
        (None, Some(d)) => CACHE.get_or_load(format!("{device} {precision:?} {} {}", d.display(), job.lora), || {
            load_dir(d, dt)?.with_loras(loras)?.to_device(device)
        }),
        (None, None) => Err("no checkpoint: connect `checkpoints` or set `checkpoint`".into()),
    }
}

impl TypedOperator for SampleT2v {
    type Params = T2vParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "sample.t2v",
            summary: "Text-to-video sampling: every prompt with every checkpoint (or a fixed one) → H.264 MP4 samples",
            doc: "For each (checkpoint, prompt) pair — the checkpoints arriving on `checkpoints` (one per training \
                  round, so each epoch's model gets its samples) or the fixed folder `checkpoint` — encodes the \
                  prompt and `negative_prompt` with the checkpoint's text encoder, draws Gaussian latent noise from \
                  `seed` (plus a per-prompt offset), runs the flow-matching sampler (`unipc` or `euler`, `steps`, \
                  timestep `shift`; unset, a diffusers pipeline folder's own scheduler) with classifier-free \
                  guidance `guidance` — after merging any `lora` adapter files into the DiT — decodes with the \
                  checkpoint's latent codec and writes an MP4 blob at the training frame rate. Emits a Sample \
                  record per pair (settings: sampler, steps, guidance, shift, seed, prompt, seconds; `scheduler` \
                  when it is the checkpoint's, `lora` when adapters were merged). Memoised: the same checkpoint, \
                  prompt and settings are never sampled twice.",
            version: 1,
            inputs: &[
                InPort { name: "prompts", kinds: &[Kind::Prompt], required: true, doc: "prompts" },
                InPort {
                    name: "checkpoints",
                    kinds: &[Kind::Checkpoint],
                    required: false,
                    doc: "checkpoints to sample with (else `checkpoint`)",
                },
            ],
            outputs: &[OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Sample), doc: "one Sample per pair" }],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &T2vParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.steps == 0 || p.steps > 1000 {
            v.push(ParamIssue::error("steps", "between 1 and 1000", Some("steps = 50".into())));
        }
        crate::curate::check_range(&mut v, "guidance", p.guidance, 0.0, 50.0, "guidance = 5.0");
        if let Some(g) = p.guidance_2 {
            crate::curate::check_range(&mut v, "guidance_2", g, 0.0, 50.0, "guidance_2 = 3.0");
        }
        if let Some(shift) = p.shift {
            crate::curate::check_range(&mut v, "shift", shift, 0.01, 100.0, "shift = 3.0");
        }
        if let Some(f) = p.frames
            && (f == 0 || (f - 1) % 4 != 0)
        {
            v.push(ParamIssue::error("frames", format!("frames must be 1 + 4k, got {f}"), None));
        }
        if let Some(d) = &p.checkpoint {
            let path = resolve_path(&ctx.base_dir, d);
            use crate::train::checkpoint::{META_FILE, PIPELINE_INDEX_FILE};
            if !path.join(META_FILE).is_file() && !path.join(PIPELINE_INDEX_FILE).is_file() {
                v.push(ParamIssue::error(
                    "checkpoint",
                    format!(
                        "{} is not a medgen checkpoint folder (no medgen.json) or a diffusers pipeline folder \
                         (no model_index.json)",
                        path.display()
                    ),
                    Some(
                        "a folder train.flow_matching wrote (outputs/<node>/epoch-<n>) or a Wan2.1 diffusers pipeline"
                            .into(),
                    ),
                ));
            }
            // Without a `sampler`, the folder's own scheduler is used: say now if it cannot be.
            if p.sampler.is_none()
                && let Some(Err(e)) = crate::train::checkpoint::pipeline_scheduler(&path)
            {
                v.push(ParamIssue::error(
                    "sampler",
                    format!("unset, so the checkpoint's scheduler would be used, but {e}"),
                    Some("sampler = \"unipc\" (or \"euler\") and a shift".into()),
                ));
            }
        }
        for l in &p.lora {
            let path = resolve_path(&ctx.base_dir, l.path());
            if !path.is_file() {
                v.push(ParamIssue::error(
                    "lora",
                    format!("{} is not a file", path.display()),
                    Some("a LoRA safetensors file, e.g. outputs/train/epoch-0/pytorch_lora_weights.safetensors".into()),
                ));
            }
            crate::curate::check_range(&mut v, "lora.scale", l.scale(), -MAX_LORA_SCALE, MAX_LORA_SCALE, "scale = 1.0");
        }
        crate::curate::check_threads(p.threads, &mut v);
        crate::api::device::check_device(&p.device, &mut v);
        v
    }

    fn fingerprint(&self, p: &T2vParams) -> serde_json::Value {
        let mut v = serde_json::to_value(p).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("threads");
            crate::api::device::memo_params(o);
        }
        v
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &T2vParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let prompts = inputs.take(ctx.scope, "prompts").ok_or_else(|| BuildError::Invalid {
            node: ctx.node.clone(),
            message: "input `prompts` is not connected".into(),
        })?;
        let prompts = prompts.flat_map(|r| match r {
            Record::Prompt(p) => Some(p),
            _ => None,
        });
        let fixed = p.checkpoint.as_deref().map(|d| ctx.resolve(d));
        let loras: Vec<LoraUse> = p
            .lora
            .iter()
            .map(|l| LoraUse { path: ctx.resolve(l.path()), scale: l.scale(), expert: l.expert() })
            .collect();
        let lid = lora_identity(&loras);
        let jobs = match inputs.take(ctx.scope, "checkpoints") {
            Some(ckpts) => {
                let ckpts = ckpts.flat_map(|r| match r {
                    Record::Checkpoint(c) => Some(((), c)),
                    _ => None,
                });
                ckpts.join(prompts.map(|p| ((), p))).map(move |((), (c, prompt))| SampleJob {
                    ckpt: Some(c),
                    prompt,
                    lora: lid.clone(),
                })
            }
            None if fixed.is_some() => prompts.map(move |prompt| SampleJob { ckpt: None, prompt, lora: lid.clone() }),
            None => {
                return Err(BuildError::Invalid {
                    node: ctx.node.clone(),
                    message: "no checkpoint: connect `checkpoints` (a train.flow_matching node) or set `checkpoint`"
                        .into(),
                });
            }
        };
        let services = ctx.services.clone();
        let base = ctx.base_dir.clone();
        let p = p.clone();
        let device = crate::api::device::resolve_device(&p.device, "sample.t2v")
            .map_err(|message| BuildError::Invalid { node: ctx.node.clone(), message })?;
        let all =
            pool_map(ctx, jobs, PoolConfig { threads: p.threads, memoise: true }, move |job: &SampleJob, ictx| {
                let m = model(job, &fixed, &base, services.as_ref(), device, p.precision, &loras)
                    .map_err(|e| ItemError::new(ErrorClass::Backend, e))?;
                let offset = u64::from_le_bytes(
                    blake3::hash(job.prompt.prompt_id.as_bytes()).as_bytes()[..8].try_into().unwrap_or([0; 8]),
                ) % 1_000_000;
                let settings = SampleSettings {
                    sampler: p.sampler,
                    steps: p.steps,
                    guidance: p.guidance,
                    guidance_2: p.guidance_2,
                    shift: p.shift,
                    seed: p.seed.wrapping_add(offset),
                    negative_prompt: p.negative_prompt.clone(),
                    frames: p.frames,
                    width: p.width,
                    height: p.height,
                };
                let (spec, source) = resolve_scheduler(&m, &settings).map_err(|e| {
                    ItemError::new(ErrorClass::Unsupported, format!("sampling {:?}: {e}", job.prompt.text))
                })?;
                let started = std::time::Instant::now();
                let stop = ictx.shutdown.clone();
                let video = generate(&m, &job.prompt.text, &settings, &mut |_, _| {
                    !stop.load(std::sync::atomic::Ordering::Relaxed)
                })
                .map_err(|e| match e {
                    Stopped::Stopped => ItemError::transient("the run is stopping; the sample is redone next run"),
                    Stopped::Failed(e) => {
                        ItemError::new(ErrorClass::Internal, format!("sampling {:?}: {e}", job.prompt.text))
                    }
                })?;
                let key = video_to_mp4(&video, m.meta.video.fps, services.as_ref(), ictx)?;
                let mut s: BTreeMap<String, String> = BTreeMap::new();
                s.insert("sampler".into(), sampler_name(&spec).into());
                s.insert("steps".into(), settings.steps.to_string());
                s.insert("guidance".into(), settings.guidance.to_string());
                s.insert("shift".into(), spec.shift.to_string());
                if let Some(x) = &m.low_noise {
                    s.insert("boundary_ratio".into(), x.boundary_ratio.to_string());
                    s.insert("guidance_2".into(), settings.low_noise_guidance().to_string());
                }
                if !p.lora.is_empty() {
                    let names: Vec<String> =
                        p.lora.iter().map(|l| format!("{}×{}{}", l.path(), l.scale(), l.expert().label())).collect();
                    s.insert("lora".into(), names.join(", "));
                }
                if source == SchedulerSource::Checkpoint {
                    s.insert("scheduler".into(), format!("{} from the checkpoint", spec.kind.class()));
                }
                s.insert("seed".into(), settings.seed.to_string());
                s.insert("precision".into(), format!("{:?}", p.precision).to_lowercase());
                s.insert("prompt".into(), job.prompt.text.clone());
                s.insert("seconds".into(), format!("{:.2}", started.elapsed().as_secs_f64()));
                s.insert("size".into(), format!("{}x{}x{}", video.shape()[3], video.shape()[2], video.shape()[1]));
                Ok(vec![Record::Sample(Sample {
                    prompt_id: job.prompt.prompt_id.clone(),
                    checkpoint_epoch: m.meta.epoch,
                    checkpoint_step: m.meta.step,
                    video_blob: key,
                    settings: s,
                })])
            });
        let (ok, failed) = split_failures(all);
        Ok(Outputs::default().with(OUT_PORT, ok).with(FAILURES_PORT, failed))
    }
}
