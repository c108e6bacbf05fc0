//! `train.flow_matching`: incremental flow-matching training rounds over the latent pool.
//!
//! Video latents and text contexts are joined by clip id into the **pool** (a differential
//! collection: retracted clips leave it). When an epoch that added clips completes, a **round**
//! runs off the worker thread: `steps_per_clip × new clips` optimiser steps (between
//! `min_steps_per_round` and `max_steps_per_round`), each batch drawing a `replay` fraction from
//! the clips of earlier rounds, continuing the previous round's weights, optimiser moments and
//! EMA. The round ends in a checkpoint folder `outputs/<node>/epoch-<e>/` (also in the blob store;
//! the `Checkpoint` record carries the keys) and loss / grad-norm `Metric`s.
//!
//! Durability: every `checkpoint_every` steps the full training state is saved under
//! `outputs/<node>/state/<round id>/progress`; a killed run restarted with the same inputs resumes
//! the round from there, with the same subsequent losses (all randomness is a function of the
//! seed and the global step). Completed rounds are listed in `outputs/<node>/rounds.json`, so a
//! restarted run trains only on clips no earlier round saw. A round's id hashes its whole
//! history (pool, new clips, settings, previous round), so memoisation never mixes histories.

use super::checkpoint::{
    CODEC_FILE, CONFIG_FILE, CheckpointMeta, CodecSpec, FORMAT, LORA_FILE, META_FILE, TextSpec, VideoGeom, WEIGHTS_FILE,
};
use crate::api::device::Precision;
use crate::api::*;
use crate::latent::text::TextEncoderKind;
use crate::latent::{CONTEXT_TENSOR, LATENT_TENSOR, get_tensor, tensor_metadata};
use medgen_kernels::io::safetensors::{Checkpoint as StCheckpoint, save};
use medgen_kernels::nets::wan_dit::{WanDit, WanDitConfig};
use medgen_kernels::train::{FlowMatchingConfig, FlowMatchingTrainer, LoraConfig, TrainExample};
use medgen_kernels::{Device, Rng};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

pub struct TrainFlowMatching;

fn d_model() -> String {
    "scratch".into()
}
fn d_layers() -> usize {
    2
}
fn d_heads() -> usize {
    4
}
fn d_head_dim() -> usize {
    32
}
fn d_ffn() -> usize {
    512
}
fn d_freq() -> usize {
    64
}
fn d_lr() -> f64 {
    1e-4
}
fn d_wd() -> f64 {
    0.01
}
fn d_clip() -> f64 {
    1.0
}
fn d_dropout() -> f64 {
    0.1
}
fn d_shift() -> f64 {
    1.0
}
fn d_batch() -> usize {
    4
}
fn d_steps_per_clip() -> usize {
    20
}
fn d_min_steps() -> usize {
    10
}
fn d_max_steps() -> usize {
    2000
}
fn d_replay() -> f64 {
    0.5
}
fn d_every() -> usize {
    100
}
fn d_lora_alpha() -> f64 {
    16.0
}
fn d_lora_targets() -> Vec<String> {
    ["to_q", "to_k", "to_v", "to_out.0"].iter().map(|s| s.to_string()).collect()
}

/// Params of `train.flow_matching`.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowMatchingParams {
    /// `scratch` (a new Wan-architecture DiT sized by the `scratch_*` params, channels taken from
    /// the data) or a diffusers transformer folder (`config.json` + safetensors), e.g.
    /// `Wan2.1-T2V-1.3B-Diffusers/transformer` or MedGen-1.3B's; a whole pipeline folder
    /// (`model_index.json`) means its `transformer/`.
    #[serde(default = "d_model")]
    pub model: String,
    /// Blocks of a scratch model.
    #[serde(default = "d_layers")]
    pub scratch_layers: usize,
    /// Attention heads of a scratch model.
    #[serde(default = "d_heads")]
    pub scratch_heads: usize,
    /// Width of one head of a scratch model (even, ≥ 6).
    #[serde(default = "d_head_dim")]
    pub scratch_head_dim: usize,
    /// Feed-forward width of a scratch model.
    #[serde(default = "d_ffn")]
    pub scratch_ffn_dim: usize,
    /// Timestep sinusoid width of a scratch model.
    #[serde(default = "d_freq")]
    pub scratch_freq_dim: usize,
    /// LoRA rank; absent = full fine-tune.
    #[serde(default)]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (scale alpha/rank).
    #[serde(default = "d_lora_alpha")]
    pub lora_alpha: f64,
    /// Linear layers that get adapters (suffixes of diffusers names).
    #[serde(default = "d_lora_targets")]
    pub lora_targets: Vec<String>,
    /// AdamW learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// AdamW decoupled weight decay.
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: off).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// EMA decay of the weights (absent: no EMA); checkpoints then hold the EMA weights.
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// Probability of training a step's example on the empty (zero) context.
    #[serde(default = "d_dropout")]
    pub caption_dropout: f64,
    /// Timestep shift of the σ sampling (1: uniform σ; FastVideo's Wan fine-tuning recipe uses 3).
    #[serde(default = "d_shift")]
    pub shift: f64,
    /// Examples per optimiser step (gradient accumulation: one forward/backward each).
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Steps a round spends per new clip.
    #[serde(default = "d_steps_per_clip")]
    pub steps_per_clip: usize,
    /// Fewest steps of a round that adds clips.
    #[serde(default = "d_min_steps")]
    pub min_steps_per_round: usize,
    /// Most steps of one round.
    #[serde(default = "d_max_steps")]
    pub max_steps_per_round: usize,
    /// Fraction of each batch drawn from clips of earlier rounds (when there are any).
    #[serde(default = "d_replay")]
    pub replay: f64,
    /// Save the full training state every this many steps (resume point after a crash).
    #[serde(default = "d_every")]
    pub checkpoint_every: usize,
    /// Gradient checkpointing (recompute blocks in the backward pass: less memory, more time).
    #[serde(default)]
    pub recompute_blocks: bool,
    /// Seed of initialisation, noise, timesteps, dropout and batch composition.
    #[serde(default)]
    pub seed: u64,
    /// The text encoder's folder, recorded in checkpoints for samplers (default: the fetched MiniLM).
    #[serde(default)]
    pub text_model: Option<String>,
    /// Where the DiT trains: `cpu`, `cuda`, `cuda:N` or `auto` (a CUDA request on a machine without
    /// one trains on the CPU with a warning). The noise, timesteps and batches are drawn on the host
    /// either way; a round may resume on another device. Not part of the memo.
    #[serde(default = "crate::api::device::d_device")]
    pub device: String,
    /// `f32`, or `bf16`: the DiT computes in bf16 (tensor cores on a GPU) with fp32 master weights, AdamW
    /// state and EMA (see `Precision`). Part of the memo unless f32.
    #[serde(default)]
    pub precision: Precision,
}

/// One training example: a clip's latent and text context.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Example {
    pub clip_id: String,
    pub latent: String,
    pub text: String,
    pub shape: Vec<u64>,
    pub codec: String,
    pub text_codec: String,
}

/// The previous round a round continues from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Prev {
    pub id: String,
    /// The global step it ended at.
    pub step: u64,
}

/// The global step a round ends at.
fn end_step(job: &RoundJob, p: &FlowMatchingParams) -> u64 {
    job.prev.as_ref().map(|p| p.step).unwrap_or(0) + p.steps_for(job.new.len()) as u64
}

/// A training round.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RoundJob {
    /// Round id: hash of the previous round's id, the pool, the new clips and the settings.
    pub id: String,
    pub epoch: u64,
    pub pool: Vec<Example>,
    /// Clip ids added since the previous round.
    pub new: Vec<String>,
    pub prev: Option<Prev>,
}

impl PoolItem for RoundJob {
    fn item_id(&self) -> String {
        format!("round:epoch{}", self.epoch)
    }
    fn describe(&self) -> String {
        format!(
            "training round of epoch {} ({} new clips, {} in the pool)",
            self.epoch,
            self.new.len(),
            self.pool.len()
        )
    }
    fn memo_input(&self) -> Vec<u8> {
        self.id.as_bytes().to_vec()
    }
    fn route(&self) -> u64 {
        0
    }
}

/// A completed round, as `rounds.json` lists it: the job (a restarted run replays it from the
/// memo cache, so every round's checkpoint and metrics are in the run's view again) and its
/// checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundDone {
    pub job: RoundJob,
    pub checkpoint: Checkpoint,
}

fn rounds_file(dir: &Path) -> PathBuf {
    dir.join("rounds.json")
}

fn read_rounds(dir: &Path) -> Vec<RoundDone> {
    std::fs::read(rounds_file(dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

impl FlowMatchingParams {
    fn train_config(&self) -> FlowMatchingConfig {
        FlowMatchingConfig {
            lr: self.lr,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            ema_decay: self.ema_decay,
            caption_dropout: self.caption_dropout,
            shift: self.shift,
            seed: self.seed,
            lora: self.lora_rank.map(|rank| LoraConfig {
                rank,
                alpha: self.lora_alpha,
                targets: self.lora_targets.clone(),
            }),
            recompute_blocks: self.recompute_blocks,
            ..FlowMatchingConfig::default()
        }
    }

    fn steps_for(&self, new: usize) -> usize {
        if new == 0 {
            return 0;
        }
        (self.steps_per_clip * new).clamp(self.min_steps_per_round, self.max_steps_per_round.max(1))
    }
}

/// What a round needs besides its job.
struct RoundCtx {
    p: FlowMatchingParams,
    dir: PathBuf,
    base_dir: PathBuf,
    node: String,
    services: std::sync::Arc<dyn Services>,
    device: Device,
}

/// The transformer folder `model` names: itself, or the `transformer/` of a diffusers pipeline
/// folder (`model_index.json`, e.g. Wan2.1-T2V-1.3B-Diffusers) given whole.
fn transformer_dir(model: &Path) -> PathBuf {
    let inner = model.join("transformer");
    if !model.join("config.json").is_file()
        && model.join(crate::train::checkpoint::PIPELINE_INDEX_FILE).is_file()
        && inner.join("config.json").is_file()
    {
        inner
    } else {
        model.to_path_buf()
    }
}

impl RoundCtx {
    /// The model a run starts from (before any round).
    fn base_model(&self, first: &Example) -> Result<WanDit, ItemError> {
        if self.p.model == "scratch" {
            let (c, text_dim) = (first.shape[0] as usize, text_dim(&first.text_codec)?);
            let cfg = WanDitConfig {
                patch_size: [1, 2, 2],
                num_attention_heads: self.p.scratch_heads,
                attention_head_dim: self.p.scratch_head_dim,
                in_channels: c,
                out_channels: Some(c),
                text_dim,
                freq_dim: self.p.scratch_freq_dim,
                ffn_dim: self.p.scratch_ffn_dim,
                num_layers: self.p.scratch_layers,
                cross_attn_norm: true,
                qk_norm: Some("rms_norm_across_heads".into()),
                eps: 1e-6,
                image_dim: None,
                added_kv_proj_dim: None,
                rope_max_seq_len: 1024,
                pos_embed_seq_len: None,
            };
            let mut rng = Rng::new(self.p.seed ^ 0x6d65_6467_656e);
            return WanDit::init(cfg, &mut rng, self.p.precision.dtype())
                .map_err(|e| ItemError::invalid(format!("scratch model: {e}")));
        }
        let dir = transformer_dir(&resolve_path(&self.base_dir, &self.p.model));
        let cfg = WanDitConfig::from_file(dir.join("config.json"))
            .map_err(|e| ItemError::invalid(format!("model {}: {e}", dir.display())))?;
        let src = StCheckpoint::open(&dir).map_err(|e| ItemError::invalid(format!("model {}: {e}", dir.display())))?;
        WanDit::load(cfg, &src, self.p.precision.dtype())
            .map_err(|e| ItemError::invalid(format!("model {}: {e}", dir.display())))
    }

    fn run(&self, job: &RoundJob, ictx: &ItemCtx) -> Result<Vec<Record>, ItemError> {
        let Some(first) = job.pool.first() else {
            return Err(ItemError::invalid("a round with an empty pool"));
        };
        check_pool(&job.pool)?;
        let steps = self.p.steps_for(job.new.len());
        let state = self.dir.join("state").join(&job.id[..16]);
        let progress = state.join("progress");
        let base = self.base_model(first)?;
        // Where this round starts: its own progress (a resumed crash), the previous round's final
        // state, or a fresh trainer.
        let prev_final = job.prev.as_ref().map(|p| self.dir.join("state").join(&p.id[..16]).join("final"));
        let trainer = if progress.is_dir() {
            FlowMatchingTrainer::resume(base, &progress).map_err(|e| {
                ItemError::invalid(format!(
                    "resuming from {}: {e}; delete that folder to restart the round",
                    progress.display()
                ))
            })?
        } else if let Some(pf) = &prev_final {
            if !pf.is_dir() {
                return Err(ItemError::invalid(format!(
                    "the previous round's state {} is missing; it failed or was deleted — delete {} to retrain from \
                     the start",
                    pf.display(),
                    rounds_file(&self.dir).display()
                )));
            }
            FlowMatchingTrainer::resume(base, pf)
                .map_err(|e| ItemError::invalid(format!("resuming from {}: {e}", pf.display())))?
        } else {
            FlowMatchingTrainer::new(base, self.p.train_config()).map_err(|e| ItemError::invalid(e.to_string()))?
        };
        let mut trainer = trainer
            .to_device(self.device)
            .map_err(|e| ItemError::new(ErrorClass::Backend, format!("moving the trainer to {}: {e}", self.device)))?;
        let start_step = job.prev.as_ref().map(|p| p.step).unwrap_or(0);
        let end_step = end_step(job, &self.p);
        let new: BTreeSet<&str> = job.new.iter().map(String::as_str).collect();
        let fresh: Vec<&Example> = job.pool.iter().filter(|e| new.contains(e.clip_id.as_str())).collect();
        let old: Vec<&Example> = job.pool.iter().filter(|e| !new.contains(e.clip_id.as_str())).collect();
        let mut cache: HashMap<String, TrainExample> = HashMap::new();
        let mut metrics = Vec::new();
        let mut losses = Vec::new();
        let bar = progress_bar(&self.node, job.epoch, steps);
        while trainer.step_count() < end_step {
            if ictx.shutdown.load(Ordering::Relaxed) {
                return Err(ItemError::transient(
                    "the run is stopping; the round resumes from its last state next run",
                ));
            }
            let step = trainer.step_count();
            let picks = pick_batch(self.p.seed, step, self.p.batch_size, &fresh, &old, self.p.replay);
            let mut batch = Vec::with_capacity(picks.len());
            for e in picks {
                if !cache.contains_key(&e.clip_id) {
                    cache.insert(e.clip_id.clone(), load_example(self.services.as_ref(), e)?);
                }
                batch.push(cache[&e.clip_id].clone());
            }
            let st = trainer.step(&batch).map_err(|e| ItemError::internal(format!("training step {step}: {e}")))?;
            losses.push(st.loss);
            let subject = format!("{}/step-{:07}", self.node, st.step);
            metrics.push(Record::Metric(Metric {
                subject: subject.clone(),
                name: "train_loss".into(),
                value: F64(st.loss),
            }));
            metrics.push(Record::Metric(Metric { subject, name: "grad_norm".into(), value: F64(st.grad_norm) }));
            bar.inc(1);
            let done = trainer.step_count() - start_step;
            if self.p.checkpoint_every > 0
                && done.is_multiple_of(self.p.checkpoint_every as u64)
                && trainer.step_count() < end_step
            {
                trainer
                    .save(&progress)
                    .map_err(|e| ItemError::transient(format!("saving {}: {e}", progress.display())))?;
            }
        }
        bar.finish_and_clear();
        let fin = state.join("final");
        trainer.save(&fin).map_err(|e| ItemError::transient(format!("saving {}: {e}", fin.display())))?;
        let _ = std::fs::remove_dir_all(&progress);
        let ckpt = self.export(job, &trainer, &fin)?;
        let mut done = read_rounds(&self.dir);
        done.retain(|r| r.job.id != job.id);
        done.push(RoundDone { job: job.clone(), checkpoint: ckpt.clone() });
        let bytes = serde_json::to_vec_pretty(&done).map_err(ItemError::internal)?;
        crate::api::fsutil::atomic_write(&rounds_file(&self.dir), &bytes).map_err(ItemError::internal)?;
        let mean = if losses.is_empty() { f64::NAN } else { losses.iter().sum::<f64>() / losses.len() as f64 };
        let subject = format!("{}/epoch-{}", self.node, job.epoch);
        metrics.push(Record::Metric(Metric {
            subject: subject.clone(),
            name: "round_steps".into(),
            value: F64(steps as f64),
        }));
        metrics.push(Record::Metric(Metric {
            subject: subject.clone(),
            name: "round_clips".into(),
            value: F64(job.pool.len() as f64),
        }));
        if !losses.is_empty() {
            metrics.push(Record::Metric(Metric { subject, name: "round_loss_mean".into(), value: F64(mean) }));
        }
        let mut out = vec![Record::Checkpoint(ckpt)];
        out.extend(metrics);
        Ok(out)
    }

    /// Writes `outputs/<node>/epoch-<e>/` and puts its files into the blob store.
    fn export(&self, job: &RoundJob, trainer: &FlowMatchingTrainer, state: &Path) -> Result<Checkpoint, ItemError> {
        let first = &job.pool[0];
        let ema = self.p.ema_decay.is_some();
        let model = trainer.inference_model(ema).map_err(ItemError::internal)?;
        let dir = self.dir.join(format!("epoch-{}", job.epoch));
        let tmp = self.dir.join(format!(".epoch-{}.tmp", job.epoch));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(ItemError::internal)?;
        let cfg_json = serde_json::to_vec_pretty(&diffusers_config(model.config())).map_err(ItemError::internal)?;
        std::fs::write(tmp.join(CONFIG_FILE), cfg_json).map_err(ItemError::internal)?;
        let params = model.named_parameters();
        save(tmp.join(WEIGHTS_FILE), &params, None).map_err(ItemError::internal)?;
        if self.p.lora_rank.is_some() && state.join(LORA_FILE).is_file() {
            std::fs::copy(state.join(LORA_FILE), tmp.join(LORA_FILE)).map_err(ItemError::internal)?;
        }
        let meta_l = tensor_metadata(self.services.as_ref(), &first.latent)?;
        let codec_ref = meta_l.get("codec_ref").cloned().unwrap_or_default();
        let codec = if let Some(key) = codec_ref.strip_prefix("blob:") {
            std::fs::copy(self.services.blob_path(key), tmp.join(CODEC_FILE)).map_err(ItemError::internal)?;
            CodecSpec { kind: "patch_pca".into(), id: first.codec.clone(), file: Some(CODEC_FILE.into()), path: None }
        } else if let Some(path) = codec_ref.strip_prefix("vae:") {
            CodecSpec { kind: "wan_vae".into(), id: first.codec.clone(), file: None, path: Some(path.into()) }
        } else {
            return Err(ItemError::invalid(format!(
                "latent of clip {} does not say which codec made it (no codec_ref); re-encode it with latent.encode_video",
                first.clip_id
            )));
        };
        let fps = meta_l.get("fps").and_then(|f| f.parse::<f64>().ok()).unwrap_or(16.0);
        let (text_kind, text_id) = parse_text_codec(&first.text_codec)?;
        let tokens = text_id.rsplit_once('x').and_then(|(_, n)| n.parse::<usize>().ok()).unwrap_or(0);
        let meta = CheckpointMeta {
            format: FORMAT.into(),
            version: 1,
            epoch: job.epoch,
            step: trainer.step_count(),
            text_encoder: TextSpec {
                kind: text_kind,
                tokens,
                id: text_id,
                model_dir: self.p.text_model.as_deref().map(|d| resolve_path(&self.base_dir, d).display().to_string()),
            },
            codec,
            video: VideoGeom {
                width: first.shape[3] as u32 * 8,
                height: first.shape[2] as u32 * 8,
                frames: 1 + 4 * (first.shape[1] as usize - 1),
                fps,
            },
            clips: job.pool.len(),
            ema,
            lora_rank: self.p.lora_rank,
        };
        std::fs::write(tmp.join(META_FILE), serde_json::to_vec_pretty(&meta).map_err(ItemError::internal)?)
            .map_err(ItemError::internal)?;
        let mut blobs = BTreeMap::new();
        for entry in std::fs::read_dir(&tmp).map_err(ItemError::internal)? {
            let entry = entry.map_err(ItemError::internal)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).map_err(ItemError::internal)?;
            blobs.insert(name, self.services.blob_put(&bytes).map_err(|e| ItemError::transient(e.to_string()))?);
        }
        for f in std::fs::read_dir(&tmp).map_err(ItemError::internal)? {
            if let Ok(f) = f
                && let Ok(file) = std::fs::File::open(f.path())
            {
                let _ = file.sync_all();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).map_err(ItemError::internal)?;
        Ok(Checkpoint { epoch: job.epoch, step: trainer.step_count(), blobs })
    }
}

/// A config.json diffusers reads (`_class_name` first, then our fields).
fn diffusers_config(cfg: &WanDitConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("_class_name".into(), "WanTransformer3DModel".into());
    }
    v
}

fn progress_bar(node: &str, epoch: u64, steps: usize) -> indicatif::ProgressBar {
    let bar =
        indicatif::ProgressBar::with_draw_target(Some(steps as u64), indicatif::ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} steps {elapsed}/{eta}") {
        bar.set_style(style);
    }
    bar.set_prefix(format!("{node} epoch {epoch}"));
    bar
}

fn text_dim(text_codec: &str) -> Result<usize, ItemError> {
    let (_, id) = parse_text_codec(text_codec)?;
    id.split_once('-')
        .and_then(|(_, dims)| dims.split_once('x'))
        .and_then(|(d, _)| d.parse().ok())
        .ok_or_else(|| ItemError::invalid(format!("text codec {text_codec:?} does not name its width")))
}

fn parse_text_codec(text_codec: &str) -> Result<(TextEncoderKind, String), ItemError> {
    let id = text_codec.strip_prefix("text:").unwrap_or(text_codec);
    let kind = match id.split('-').next() {
        Some("minilm") => TextEncoderKind::Minilm,
        Some("umt5") => TextEncoderKind::Umt5,
        _ => return Err(ItemError::invalid(format!("unknown text encoder {text_codec:?}"))),
    };
    Ok((kind, id.to_string()))
}

/// All examples must share the latent codec, channels and text encoder.
fn check_pool(pool: &[Example]) -> Result<(), ItemError> {
    let first = &pool[0];
    for e in pool {
        if e.codec != first.codec || e.text_codec != first.text_codec || e.shape.first() != first.shape.first() {
            return Err(ItemError::invalid(format!(
                "clips {} and {} were encoded differently ({} / {} vs {} / {}); one model trains on one codec and one \
                 text encoder",
                first.clip_id, e.clip_id, first.codec, first.text_codec, e.codec, e.text_codec
            )));
        }
        if e.shape.len() != 4 {
            return Err(ItemError::invalid(format!(
                "latent of clip {} has shape {:?}, expected [C, F, H, W]",
                e.clip_id, e.shape
            )));
        }
    }
    Ok(())
}

/// The examples of step `step`: deterministic in (seed, step).
fn pick_batch<'a>(
    seed: u64,
    step: u64,
    n: usize,
    fresh: &[&'a Example],
    old: &[&'a Example],
    replay: f64,
) -> Vec<&'a Example> {
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ step.wrapping_add(0x5851_f42d_4c95_7f2d));
    (0..n.max(1))
        .map(|_| {
            let from_old = !old.is_empty() && (fresh.is_empty() || rng.uniform() < replay);
            let list = if from_old { old } else { fresh };
            list[(rng.next_u64() % list.len() as u64) as usize]
        })
        .collect()
}

fn load_example(services: &dyn Services, e: &Example) -> Result<TrainExample, ItemError> {
    Ok(TrainExample {
        latent: get_tensor(services, &e.latent, LATENT_TENSOR)?,
        context: get_tensor(services, &e.text, CONTEXT_TENSOR)?,
    })
}

fn round_id(prev: Option<&str>, settings: &str, pool: &[Example], new: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(prev.unwrap_or("start").as_bytes());
    h.update(settings.as_bytes());
    h.update(&serde_json::to_vec(pool).unwrap_or_default());
    h.update(&serde_json::to_vec(new).unwrap_or_default());
    h.finalize().to_hex().to_string()
}

impl TypedOperator for TrainFlowMatching {
    type Params = FlowMatchingParams;

    fn spec(&self) -> OpSpec {
        OpSpec {
            name: "train.flow_matching",
            summary: "Flow-matching training of a Wan-architecture DiT, one incremental round per epoch of new latents",
            doc: "Joins video latents (latent.encode_video) and text contexts (latent.encode_text) by clip id into the \
                  training pool; retracted clips leave it. When an epoch that added clips completes, a round runs off \
                  the worker thread: steps_per_clip × new clips AdamW steps (clamped to [min_steps_per_round, \
                  max_steps_per_round]), batches of batch_size examples (gradient accumulation) drawing a `replay` \
                  fraction from earlier rounds' clips; objective as Wan/FastVideo: σ = shift(u), x_σ = (1−σ)x0 + σε, \
                  target ε − x0, MSE; caption dropout to the zero context; grad clip max_grad_norm; optional EMA and \
                  LoRA (lora_rank; PEFT keys so diffusers' load_lora_weights reads the adapters). `model = \
                  \"scratch\"` trains a new DiT sized by scratch_* (channels and text width from the data); a \
                  diffusers transformer folder fine-tunes it. Each round continues the previous round's weights and \
                  optimiser state, saves resume points every checkpoint_every steps (a killed run resumes with \
                  identical losses) and ends in outputs/<node>/epoch-<e>/ (config.json, \
                  diffusion_pytorch_model.safetensors, LoRA file, latent codec, medgen.json) emitted as a Checkpoint \
                  for samplers, with train_loss and grad_norm Metrics per step. rounds.json lists completed rounds: a \
                  restarted run trains only on clips no round has seen.",
            version: 1,
            inputs: &[
                InPort { name: "latents", kinds: &[Kind::Latent], required: true, doc: "video latents" },
                InPort { name: "text", kinds: &[Kind::Latent], required: true, doc: "text contexts" },
            ],
            outputs: &[
                OutPort { name: OUT_PORT, kind: OutKind::Fixed(Kind::Checkpoint), doc: "one Checkpoint per round" },
                OutPort {
                    name: "metrics",
                    kind: OutKind::Fixed(Kind::Metric),
                    doc: "train_loss, grad_norm per step; round summaries",
                },
            ],
            is_source: false,
            is_sink: false,
        }
    }

    fn check(&self, p: &FlowMatchingParams, ctx: &CheckCtx) -> Vec<ParamIssue> {
        let mut v = Vec::new();
        if p.model != "scratch" {
            let dir = transformer_dir(&resolve_path(&ctx.base_dir, &p.model));
            if !dir.join("config.json").is_file() {
                v.push(ParamIssue::error(
                    "model",
                    format!(
                        "{} is not a diffusers transformer folder (no config.json) or a pipeline folder with one in \
                         transformer/",
                        dir.display()
                    ),
                    Some("model = \"scratch\", or the `transformer` folder of a Wan2.1 diffusers checkpoint".into()),
                ));
            }
        } else if p.scratch_head_dim < 6
            || !p.scratch_head_dim.is_multiple_of(2)
            || p.scratch_heads == 0
            || p.scratch_layers == 0
        {
            v.push(ParamIssue::error(
                "scratch_head_dim",
                "scratch models need ≥ 1 layer and head, and an even head width ≥ 6",
                None,
            ));
        }
        if let Some(r) = p.lora_rank
            && r == 0
        {
            v.push(ParamIssue::error("lora_rank", "at least 1 (or leave it out for a full fine-tune)", None));
        }
        crate::curate::check_range(&mut v, "lr", p.lr, 0.0, 1.0, "lr = 1e-4");
        crate::curate::check_range(&mut v, "caption_dropout", p.caption_dropout, 0.0, 1.0, "caption_dropout = 0.1");
        crate::curate::check_range(&mut v, "replay", p.replay, 0.0, 1.0, "replay = 0.5");
        crate::curate::check_range(&mut v, "shift", p.shift, 0.01, 100.0, "shift = 1.0");
        if let Some(d) = p.ema_decay {
            crate::curate::check_range(&mut v, "ema_decay", d, 0.0, 0.999999, "ema_decay = 0.999");
        }
        if p.batch_size == 0 {
            v.push(ParamIssue::error("batch_size", "at least 1", None));
        }
        if p.min_steps_per_round > p.max_steps_per_round {
            v.push(ParamIssue::error("min_steps_per_round", "larger than max_steps_per_round", None));
        }
        crate::api::device::check_device(&p.device, &mut v);
        v
    }

    fn fingerprint(&self, p: &FlowMatchingParams) -> serde_json::Value {
        let mut v = serde_json::to_value(p).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            crate::api::device::memo_params(o);
        }
        v
    }

    fn build<'s>(
        &self,
        ctx: &mut BuildCtx<'s>,
        p: &FlowMatchingParams,
        mut inputs: Inputs<'s>,
    ) -> Result<Outputs<'s>, BuildError> {
        let take = |inputs: &mut Inputs<'s>, port: &str| {
            inputs.take(ctx.scope, port).ok_or_else(|| BuildError::Invalid {
                node: ctx.node.clone(),
                message: format!("input `{port}` is not connected"),
            })
        };
        let latents = take(&mut inputs, "latents")?;
        let text = take(&mut inputs, "text")?;
        let videos = latents.flat_map(|r| match r {
            Record::Latent(l) if !l.latent_blob.is_empty() => Some((l.clip_id.clone(), l)),
            _ => None,
        });
        let texts = text.flat_map(|r| match r {
            Record::Latent(l) => l.text_blob.clone().map(|t| (l.clip_id.clone(), (t, l.codec.clone()))),
            _ => None,
        });
        let examples = videos.join(texts).map(|(clip_id, (l, (text, text_codec)))| Example {
            clip_id,
            latent: l.latent_blob,
            text,
            shape: l.shape,
            codec: l.codec,
            text_codec,
        });
        let dir = ctx.services.outputs_dir().join(&ctx.node);
        let settings = serde_json::to_string(p).unwrap_or_default();
        // Completed rounds of earlier runs: replayed (from the memo cache) at this run's first
        // epoch, and the next round continues the last one.
        let mut replay: Vec<RoundJob> = read_rounds(&dir).into_iter().map(|r| r.job).collect();
        let mut last: Option<(String, u64, BTreeSet<String>)> =
            replay.last().map(|j| (j.id.clone(), end_step(j, p), j.pool.iter().map(|e| e.clip_id.clone()).collect()));
        let params = p.clone();
        let jobs =
            on_epochs(ctx.scope, examples, &format!("{}:rounds", ctx.node), move |view: EpochView<'_, Example>| {
                let mut jobs: Vec<RoundJob> = std::mem::take(&mut replay);
                let pool: Vec<Example> = view.contents.keys().cloned().collect();
                let new: Vec<String> = pool
                    .iter()
                    .filter(|e| !last.as_ref().is_some_and(|(_, _, seen)| seen.contains(&e.clip_id)))
                    .map(|e| e.clip_id.clone())
                    .collect();
                if pool.is_empty() || new.is_empty() {
                    return jobs;
                }
                let prev = last.as_ref().map(|(id, step, _)| Prev { id: id.clone(), step: *step });
                let id = round_id(prev.as_ref().map(|p| p.id.as_str()), &settings, &pool, &new);
                let job = RoundJob { id, epoch: view.epoch, pool, new, prev };
                // The next round continues this one (the job finds its state by id).
                last = Some((
                    job.id.clone(),
                    end_step(&job, &params),
                    job.pool.iter().map(|e| e.clip_id.clone()).collect(),
                ));
                jobs.push(job);
                jobs
            });
        let device = crate::api::device::resolve_device(&p.device, "train.flow_matching")
            .map_err(|message| BuildError::Invalid { node: ctx.node.clone(), message })?;
        let rc = RoundCtx {
            p: p.clone(),
            dir,
            base_dir: ctx.base_dir.clone(),
            node: ctx.node.clone(),
            services: ctx.services.clone(),
            device,
        };
        let all = pool_map(ctx, jobs, PoolConfig { threads: 1, memoise: true }, move |job: &RoundJob, ictx| {
            rc.run(job, ictx)
        });
        let (ok, failed) = split_failures(all);
        let ckpts = ok.clone().filter(|r| matches!(r, Record::Checkpoint(_)));
        let metrics = ok.filter(|r| matches!(r, Record::Metric(_)));
        Ok(Outputs::default().with(OUT_PORT, ckpts).with("metrics", metrics).with(FAILURES_PORT, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_folder_means_its_transformer() {
        let tmp = tempfile::tempdir().unwrap();
        let (pipe, plain) = (tmp.path().join("pipe"), tmp.path().join("plain"));
        std::fs::create_dir_all(pipe.join("transformer")).unwrap();
        std::fs::write(pipe.join("model_index.json"), "{}").unwrap();
        std::fs::write(pipe.join("transformer/config.json"), "{}").unwrap();
        std::fs::create_dir_all(&plain).unwrap();
        std::fs::write(plain.join("config.json"), "{}").unwrap();
        assert_eq!(transformer_dir(&pipe), pipe.join("transformer"));
        assert_eq!(transformer_dir(&plain), plain);
        assert_eq!(transformer_dir(&tmp.path().join("none")), tmp.path().join("none"));
    }
}
