//! Training checkpoints: one directory per save, written atomically, resumable bit for bit.
//!
//! # Directory layout
//!
//! * `config.json` — the DiT config under its diffusers names (plus `_class_name`).
//! * full fine-tune: `diffusion_pytorch_model.safetensors` — the f32 (f64) master weights under
//!   diffusers keys (loadable by [`WanDit::load`] and by diffusers);
//!   LoRA: `pytorch_lora_weights.safetensors` — the adapters in the PEFT/diffusers layout
//!   ([`super::lora`]).
//! * `training_state.safetensors` — tensors `optimizer.exp_avg.{name}`,
//!   `optimizer.exp_avg_sq.{name}` (AdamW moments, shaped like the parameter) and `ema.{name}`
//!   (when EMA is on), `{name}` a trainable tensor's name; `__metadata__`: `format`
//!   ([`STATE_FORMAT`]), `step`, `optimizer_step`, `mode` (`full`/`lora`), `model_dtype`,
//!   `trainer_config` (the [`FlowMatchingConfig`] as JSON) and, for LoRA, `base_fingerprint`
//!   (a hash of the frozen base weights, checked on resume).
//!
//! # Atomicity
//!
//! [`FlowMatchingTrainer::save`] writes `{dir}.tmp-{pid}-{nanos}`, fsyncs every file and the
//! directory, then renames it to `{dir}` (an existing `{dir}` is first renamed aside to
//! `{dir}.tmp-old-…` and removed afterwards) and fsyncs the parent. A crash leaves either the
//! old or the new checkpoint plus possibly a `*.tmp-*` directory, which [`latest_checkpoint`]
//! ignores and [`FlowMatchingTrainer::resume`] removes. Saving each checkpoint to a fresh
//! `step-NNNNNNNN` directory ([`FlowMatchingTrainer::save_step`]) never replaces anything.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use super::lora::{LORA_FILE_NAME, LoraWeights};
use super::{FlowMatchingConfig, FlowMatchingTrainer, Trainable, master_dtype, mix};
use crate::error::{Error, Result};
use crate::io::safetensors::{Checkpoint, SafeTensorsFile, save};
use crate::nets::wan_dit::{WanDit, WanDitConfig};
use crate::optim::AdamWState;
use crate::tensor::Tensor;

/// The `format` metadata value of `training_state.safetensors`.
pub const STATE_FORMAT: &str = "medgen.flow_matching.v1";
/// File name of the training state.
pub const STATE_FILE_NAME: &str = "training_state.safetensors";
/// File name of full fine-tune weights (diffusers' `SAFETENSORS_WEIGHTS_NAME`).
pub const WEIGHTS_FILE_NAME: &str = "diffusion_pytorch_model.safetensors";
/// File name of the DiT config.
pub const CONFIG_FILE_NAME: &str = "config.json";

/// The directory name [`FlowMatchingTrainer::save_step`] uses for `step`: `step-NNNNNNNN`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

fn ck_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::TrainingCheckpoint { path: path.to_path_buf(), msg: msg.into() }
}

/// The newest complete checkpoint under `root` (the `step-N` directory with the largest `N`
/// holding a `training_state.safetensors`), ignoring `*.tmp-*` leftovers; `None` when `root`
/// does not exist or holds none.
pub fn latest_checkpoint(root: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(root)(e)),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for e in entries {
        let e = e.map_err(io(root))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("step-").and_then(|d| d.parse::<u64>().ok()) else { continue };
        let p = e.path();
        if p.join(STATE_FILE_NAME).is_file() && best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, p));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// A hash of every parameter's name, shape, dtype and bits (per parameter in parallel,
/// combined in order).
pub(crate) fn fingerprint(model: &WanDit) -> Result<u64> {
    let per: Vec<u64> = model
        .named_parameters()
        .par_iter()
        .map(|(name, t)| {
            let mut h =
                mix(name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)));
            for &d in t.shape() {
                h = mix(h ^ d as u64);
            }
            h = mix(h ^ t.dtype().size_in_bytes() as u64);
            for v in t.to_vec_f64()?.iter() {
                h = mix(h ^ v.to_bits());
            }
            Ok(h)
        })
        .collect::<Result<_>>()?;
    Ok(per.into_iter().fold(0u64, |h, x| mix(h ^ x)))
}

fn fsync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

fn fsync_dir(path: &Path) -> Result<()> {
    // Directories can be opened read-only and fsynced on Unix; elsewhere this is best effort.
    match File::open(path) {
        Ok(f) => {
            let _ = f.sync_all();
            Ok(())
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// Removes `{dir}.tmp-*` siblings of `dir` (leftovers of interrupted saves).
fn clean_leftovers(dir: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else { return Ok(()) };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let prefix = format!("{}.tmp-", name.to_string_lossy());
    for e in std::fs::read_dir(parent).map_err(io(parent))? {
        let e = e.map_err(io(parent))?;
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let p = e.path();
            if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) }.map_err(io(&p))?;
        }
    }
    Ok(())
}

impl FlowMatchingTrainer {
    /// Writes the full training state into `dir`, atomically (see the module docs).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let name = dir.file_name().ok_or_else(|| ck_err(dir, "the checkpoint path has no directory name"))?;
        let name = name.to_string_lossy().into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        );
        let tmp = parent.join(format!("{name}.tmp-{nonce}"));
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        if let Err(e) = self.write_files(&tmp) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        fsync_dir(&tmp)?;
        if dir.exists() {
            let old = parent.join(format!("{name}.tmp-old-{nonce}"));
            std::fs::rename(dir, &old).map_err(io(dir))?;
            std::fs::rename(&tmp, dir).map_err(io(dir))?;
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        } else {
            std::fs::rename(&tmp, dir).map_err(io(dir))?;
        }
        fsync_dir(&parent)
    }

    /// [`save`](Self::save) into `root/step-NNNNNNNN` (the current step count); returns that path.
    pub fn save_step(&self, root: &Path) -> Result<PathBuf> {
        let dir = root.join(step_dir_name(self.step));
        self.save(&dir)?;
        Ok(dir)
    }

    fn write_files(&self, dir: &Path) -> Result<()> {
        // config.json
        let mut cfg_json = serde_json::to_value(self.model.config())
            .map_err(|e| ck_err(dir, format!("cannot serialise the DiT config: {e}")))?;
        if let Value::Object(o) = &mut cfg_json {
            o.insert("_class_name".into(), Value::String("WanTransformer3DModel".into()));
        }
        let p = dir.join(CONFIG_FILE_NAME);
        let text = serde_json::to_string_pretty(&cfg_json).map_err(|e| ck_err(&p, e.to_string()))?;
        std::fs::write(&p, text).map_err(io(&p))?;
        fsync_file(&p)?;

        // weights
        let names = self.trainable_names();
        let tensors = self.trainable_tensors();
        let (mode, wp) = match &self.trainable {
            Trainable::Lora(l) => {
                let p = dir.join(LORA_FILE_NAME);
                l.save(&p)?;
                ("lora", p)
            }
            Trainable::Full { .. } => {
                let p = dir.join(WEIGHTS_FILE_NAME);
                let list: Vec<(&str, &Tensor)> =
                    names.iter().map(String::as_str).zip(tensors.iter().copied()).collect();
                let mut md = HashMap::new();
                md.insert("format".to_string(), "pt".to_string());
                save(&p, &list, Some(md))?;
                ("full", p)
            }
        };
        fsync_file(&wp)?;

        // training state
        let os = self.opt.export_state()?;
        let mut owned: Vec<(String, Tensor)> = Vec::new();
        if !os.exp_avg.is_empty() {
            if os.exp_avg.len() != names.len() {
                return Err(ck_err(
                    dir,
                    format!("optimiser holds {} moments for {} tensors", os.exp_avg.len(), names.len()),
                ));
            }
            for ((n, t), (m, v)) in names.iter().zip(&tensors).zip(os.exp_avg.iter().zip(&os.exp_avg_sq)) {
                owned.push((format!("optimizer.exp_avg.{n}"), m.reshape(t.shape())?));
                owned.push((format!("optimizer.exp_avg_sq.{n}"), v.reshape(t.shape())?));
            }
        }
        if let Some(ema) = &self.ema {
            for (n, e) in names.iter().zip(ema) {
                owned.push((format!("ema.{n}"), e.clone()));
            }
        }
        let mut md = HashMap::new();
        md.insert("format".to_string(), STATE_FORMAT.to_string());
        md.insert("step".to_string(), self.step.to_string());
        md.insert("optimizer_step".to_string(), os.step.to_string());
        md.insert("mode".to_string(), mode.to_string());
        md.insert("model_dtype".to_string(), format!("{:?}", self.model.dtype()));
        md.insert(
            "trainer_config".to_string(),
            serde_json::to_string(&self.cfg).map_err(|e| ck_err(dir, format!("cannot serialise the config: {e}")))?,
        );
        if let Some(f) = self.base_fingerprint {
            md.insert("base_fingerprint".to_string(), format!("{f:016x}"));
        }
        let p = dir.join(STATE_FILE_NAME);
        let list: Vec<(&str, &Tensor)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
        save(&p, &list, Some(md))?;
        fsync_file(&p)
    }

    /// Resumes from a checkpoint directory written by [`save`](Self::save). `base` is the model
    /// the run started from: for LoRA its weights must be the same (checked by fingerprint); for
    /// a full fine-tune only its config and dtype are used (the weights come from the
    /// checkpoint). Removes `{dir}.tmp-*` leftovers of interrupted saves. A missing or incomplete
    /// directory, or one that does not fit `base`, is [`Error::TrainingCheckpoint`].
    pub fn resume(base: WanDit, dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ck_err(dir, "no such checkpoint directory"));
        }
        clean_leftovers(dir)?;
        let sp = dir.join(STATE_FILE_NAME);
        if !sp.is_file() {
            return Err(ck_err(dir, format!("incomplete checkpoint: {STATE_FILE_NAME} is missing")));
        }
        let file = SafeTensorsFile::open(&sp)?;
        let md = file.user_metadata().cloned().unwrap_or_default();
        let get = |k: &str| md.get(k).ok_or_else(|| ck_err(&sp, format!("metadata lacks `{k}`")));
        if get("format")? != STATE_FORMAT {
            return Err(ck_err(&sp, format!("format {:?}, expected {STATE_FORMAT:?}", md["format"])));
        }
        let num = |k: &str| -> Result<u64> { get(k)?.parse().map_err(|e| ck_err(&sp, format!("`{k}`: {e}"))) };
        let step = num("step")?;
        let opt_step = num("optimizer_step")?;
        let cfg: FlowMatchingConfig = serde_json::from_str(get("trainer_config")?)
            .map_err(|e| ck_err(&sp, format!("`trainer_config` is not a trainer config: {e}")))?;
        let want_dtype = format!("{:?}", base.dtype());
        if *get("model_dtype")? != want_dtype {
            return Err(ck_err(
                &sp,
                format!("saved from a {} model, resumed with a {want_dtype} one", md["model_dtype"]),
            ));
        }
        let mode = get("mode")?.as_str();
        if (mode == "lora") != cfg.lora.is_some() || !matches!(mode, "lora" | "full") {
            return Err(ck_err(&sp, format!("mode {mode:?} does not match the trainer config")));
        }
        let dit_cfg = WanDitConfig::from_file(dir.join(CONFIG_FILE_NAME))?;
        if &dit_cfg != base.config() {
            return Err(ck_err(dir, format!("{CONFIG_FILE_NAME} does not match the base model's config")));
        }
        let md_dtype = master_dtype(base.dtype());

        let mut tr = match &cfg.lora {
            None => {
                let wp = dir.join(WEIGHTS_FILE_NAME);
                if !wp.is_file() {
                    return Err(ck_err(dir, format!("incomplete checkpoint: {WEIGHTS_FILE_NAME} is missing")));
                }
                let ck = Checkpoint::open_file(&wp)?;
                let model = WanDit::load(dit_cfg, &ck, base.dtype())?;
                drop(base);
                let mut tr = FlowMatchingTrainer::new(model, cfg.clone())?;
                if let Trainable::Full { master: Some(master) } = &mut tr.trainable {
                    // The exact f32 master weights, not the half-precision model's.
                    let names: Vec<String> = tr.model.named_parameters().iter().map(|(n, _)| n.to_string()).collect();
                    for (n, m) in names.iter().zip(master.iter_mut()) {
                        *m = ck.load_shaped(n, m.shape(), md_dtype)?;
                    }
                }
                tr
            }
            Some(lc) => {
                let lp = dir.join(LORA_FILE_NAME);
                if !lp.is_file() {
                    return Err(ck_err(dir, format!("incomplete checkpoint: {LORA_FILE_NAME} is missing")));
                }
                let mut tr = FlowMatchingTrainer::new(base, cfg.clone())?;
                let saved_fp = get("base_fingerprint")?;
                let fp = format!("{:016x}", tr.base_fingerprint.unwrap_or(0));
                if *saved_fp != fp {
                    return Err(ck_err(
                        dir,
                        "the base model's weights differ from those the LoRA run started from (fingerprint mismatch)",
                    ));
                }
                let loaded = LoraWeights::load(&lp, md_dtype)?;
                if loaded.rank != lc.rank || loaded.alpha != lc.alpha {
                    return Err(ck_err(
                        &lp,
                        format!(
                            "rank {} / alpha {} in the file, {} / {} in the config",
                            loaded.rank, loaded.alpha, lc.rank, lc.alpha
                        ),
                    ));
                }
                let Trainable::Lora(lw) = &mut tr.trainable else { unreachable!("LoRA config gives LoRA trainable") };
                let mut by_name: HashMap<String, (Tensor, Tensor)> =
                    loaded.modules.into_iter().map(|m| (m.name, (m.a, m.b))).collect();
                for m in &mut lw.modules {
                    let (a, b) = by_name
                        .remove(&m.name)
                        .ok_or_else(|| ck_err(&lp, format!("no adapter for {} (a target of the config)", m.name)))?;
                    m.a = a;
                    m.b = b;
                }
                if !by_name.is_empty() {
                    let extra: Vec<&String> = by_name.keys().collect();
                    return Err(ck_err(&lp, format!("adapters for modules the config does not target: {extra:?}")));
                }
                lw.check_against(&tr.model)?;
                tr
            }
        };

        // optimiser moments and EMA, by trainable name
        let names = tr.trainable_names();
        let shapes: Vec<Vec<usize>> = tr.trainable_tensors().iter().map(|t| t.shape().to_vec()).collect();
        let load = |key: String, shape: &[usize]| -> Result<Tensor> {
            let t = file.load(&key).map_err(|e| match e {
                Error::MissingKey(k) => ck_err(&sp, format!("tensor {k:?} is missing")),
                e => e,
            })?;
            if t.shape() != shape {
                return Err(Error::WeightShape { name: key, expected: shape.to_vec(), got: t.shape().to_vec() });
            }
            t.to_dtype(md_dtype)
        };
        if opt_step > 0 {
            let mut exp_avg = Vec::with_capacity(names.len());
            let mut exp_avg_sq = Vec::with_capacity(names.len());
            for (n, s) in names.iter().zip(&shapes) {
                exp_avg.push(load(format!("optimizer.exp_avg.{n}"), s)?.reshape(&[s.iter().product()])?);
                exp_avg_sq.push(load(format!("optimizer.exp_avg_sq.{n}"), s)?.reshape(&[s.iter().product()])?);
            }
            tr.opt.import_state(AdamWState { step: opt_step, exp_avg, exp_avg_sq })?;
        }
        if tr.cfg.ema_decay.is_some() {
            tr.ema = Some(names.iter().zip(&shapes).map(|(n, s)| load(format!("ema.{n}"), s)).collect::<Result<_>>()?);
        }
        tr.step = step;
        Ok(tr)
    }

    /// [`resume`](Self::resume) from the [`latest_checkpoint`] under `root`; `Ok(None)` (and
    /// `base` dropped) when there is none yet.
    pub fn resume_latest(base: WanDit, root: &Path) -> Result<Option<Self>> {
        match latest_checkpoint(root)? {
            Some(dir) => Self::resume(base, &dir).map(Some),
            None => Ok(None),
        }
    }
}
