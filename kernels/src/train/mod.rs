//! Flow-matching training of the Wan DiT (WAN_SPEC §5.1–§5.2, §6): full fine-tune or LoRA,
//! AdamW on fp32 master weights, gradient accumulation, clipping, EMA, caption dropout, seeded
//! randomness and crash-safe checkpoints that resume bit for bit.
//!
//! * this file: [`FlowMatchingConfig`], [`FlowMatchingTrainer`] (`step`, `eval_loss`,
//!   `inference_model`).
//! * [`lora`]: [`LoraConfig`], [`LoraWeights`] (init, merge, gradients, PEFT/diffusers files).
//! * [`state`]: checkpoint directories (`save`, `resume`, [`latest_checkpoint`]).
//!
//! # Objective (WAN_SPEC §5.2)
//!
//! Per example: `u ~ U[0,1)` (or a logit-normal `u`, [`TimestepSampling`]), `idx = ⌊1000·u⌋`,
//! `σ = shift((999 − idx)/1000, S)` (so σ ∈ {shift(0), …, shift(0.999)}), `t = 1000·σ` fed to the
//! DiT as a float (FastVideo's bf16 rounding of `t` is not copied), `ε ~ N(0, I)`,
//! `x_σ = (1−σ)·x0 + σ·ε`, target `ε − x0`, loss `mean((v̂ − target)²)` in f32/f64 with no
//! per-σ weighting; with caption dropout the context is replaced by zeros (not the empty-prompt
//! embedding). Accumulation: each example is its own `B = 1` forward/backward, the loss and
//! gradients are averaged over the examples of the step.
//!
//! # Randomness and reproducibility
//!
//! All randomness of step `n` (0-based), example `k` is drawn from [`Rng`] seeded by
//! [`example_seed`]`(seed, n, k)`, in the fixed order: σ, caption-dropout coin, ε. Nothing is
//! carried between steps except the weights, the AdamW moments, the EMA and `n`, all of which are
//! saved exactly (f32 master weights, f32 moments), so a resumed run reproduces the losses of the
//! uninterrupted one bit for bit, given that the kernels themselves are deterministic. The
//! trainer's own reductions (loss, gradient norm) are sequential. Caveat: some CPU kernels reduce
//! parameter gradients with rayon `fold`/`reduce` over row blocks (`sum_to_shape`, the norm
//! backwards, `sum_rows`); with more than one block (≳ 16k elements per reduction) the grouping
//! can vary between runs, so for large inputs equality is to rounding, not bitwise.
//!
//! # Precision
//!
//! Trainable tensors live as f32 master weights (f64 for an f64 model). A full fine-tune of an
//! `F32`/`F64` model trains the model's own tensors; of a `BF16`/`F16` model it keeps f32 master
//! copies and refreshes the half-precision compute weights after each step. LoRA adapters are
//! always f32 (f64); the frozen base may be any dtype (merged weights are rounded to it — with a
//! bf16 base, updates below bf16 resolution of `W` are lost; use an f32 base on CPU).

pub mod lora;
pub mod state;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use lora::{LoraConfig, LoraModule, LoraWeights};
pub use state::{latest_checkpoint, step_dir_name};

use crate::dtype::{DType, Float};
use crate::error::{Error, Result};
use crate::nets::wan_dit::{GradRequest, TrainOptions, WanDit};
use crate::ops::elementwise::add;
use crate::ops::loss::mse_loss_backward;
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::sched::shift;
use crate::tensor::{Device, Tensor};

/// How the training σ is drawn (FastVideo's `weighting_scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimestepSampling {
    /// `u ~ U[0, 1)` (FastVideo's default, `weighting_scheme = ""`).
    #[default]
    Uniform,
    /// `u = sigmoid(N(mean, std))` (`"logit_normal"`; FastVideo's defaults are 0 and 1).
    LogitNormal {
        /// Mean of the normal before the sigmoid.
        mean: f64,
        /// Standard deviation of the normal before the sigmoid.
        std: f64,
    },
}

/// Hyper-parameters of flow-matching training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowMatchingConfig {
    /// AdamW learning rate (constant).
    pub lr: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (over the trainable tensors); 0 disables clipping.
    pub max_grad_norm: f64,
    /// EMA decay of the trainable tensors (`ema ← d·ema + (1−d)·θ` after every step), or none.
    pub ema_decay: Option<f64>,
    /// Probability of replacing an example's text context by zeros.
    pub caption_dropout: f64,
    /// Timestep shift `S` of the σ sampling (3 for Wan T2V 480p).
    pub shift: f64,
    /// How `u` (and so σ) is drawn.
    pub timestep_sampling: TimestepSampling,
    /// Seed of every random draw (LoRA init, σ, ε, caption dropout).
    pub seed: u64,
    /// LoRA adapters; `None` = full fine-tune.
    pub lora: Option<LoraConfig>,
    /// Gradient checkpointing: recompute each block in the backward pass.
    pub recompute_blocks: bool,
}

impl Default for FlowMatchingConfig {
    /// The FastVideo Wan full-finetune recipe of WAN_SPEC §5.2: AdamW lr 5e-5, β (0.9, 0.999),
    /// ε 1e-8, weight decay 1e-4, clip 1.0, caption dropout 0.1, shift 3, uniform σ, full
    /// activation checkpointing; no EMA (FastVideo has none), seed 0.
    fn default() -> Self {
        FlowMatchingConfig {
            lr: 5e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            max_grad_norm: 1.0,
            ema_decay: None,
            caption_dropout: 0.1,
            shift: 3.0,
            timestep_sampling: TimestepSampling::Uniform,
            seed: 0,
            lora: None,
            recompute_blocks: true,
        }
    }
}

fn cfg_err(msg: impl Into<String>) -> Error {
    Error::Config { model: "flow_matching", msg: msg.into() }
}

impl FlowMatchingConfig {
    /// The AdamW part.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Checks every field; errors name the offending one.
    pub fn validate(&self) -> Result<()> {
        let finite = |name: &str, v: f64| {
            if v.is_finite() { Ok(()) } else { Err(cfg_err(format!("`{name}` = {v} is not finite"))) }
        };
        for (n, v) in [
            ("lr", self.lr),
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
            ("caption_dropout", self.caption_dropout),
            ("shift", self.shift),
        ] {
            finite(n, v)?;
        }
        if self.lr < 0.0 {
            return Err(cfg_err(format!("`lr` = {} must be ≥ 0", self.lr)));
        }
        for (n, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(cfg_err(format!("`{n}` = {v} must be in [0, 1)")));
            }
        }
        if self.eps <= 0.0 {
            return Err(cfg_err(format!("`eps` = {} must be > 0", self.eps)));
        }
        if self.weight_decay < 0.0 {
            return Err(cfg_err(format!("`weight_decay` = {} must be ≥ 0", self.weight_decay)));
        }
        if self.max_grad_norm < 0.0 {
            return Err(cfg_err(format!("`max_grad_norm` = {} must be ≥ 0 (0 disables clipping)", self.max_grad_norm)));
        }
        if let Some(d) = self.ema_decay
            && !(d.is_finite() && (0.0..1.0).contains(&d))
        {
            return Err(cfg_err(format!("`ema_decay` = {d} must be in [0, 1)")));
        }
        if !(0.0..=1.0).contains(&self.caption_dropout) {
            return Err(cfg_err(format!("`caption_dropout` = {} must be in [0, 1]", self.caption_dropout)));
        }
        if self.shift <= 0.0 {
            return Err(cfg_err(format!("`shift` = {} must be > 0", self.shift)));
        }
        if let TimestepSampling::LogitNormal { mean, std } = self.timestep_sampling
            && !(mean.is_finite() && std.is_finite() && std >= 0.0)
        {
            return Err(cfg_err(format!("logit-normal timestep sampling: mean {mean}, std {std} (std must be ≥ 0)")));
        }
        if let Some(l) = &self.lora {
            l.validate()?;
        }
        Ok(())
    }
}

/// One training example: a clip's normalised latents and its text embedding.
#[derive(Debug, Clone)]
pub struct TrainExample {
    /// Latents `[C, F, H, W]` (VAE posterior mean, normalised).
    pub latent: Tensor,
    /// Text context `[Lt, text_dim]` (padded as the pipeline pads it, e.g. 512 rows).
    pub context: Tensor,
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Steps taken so far, including this one (1 after the first step).
    pub step: u64,
    /// Mean loss over the step's examples.
    pub loss: f64,
    /// Global L2 norm of the trainable tensors' gradients before clipping.
    pub grad_norm: f64,
}

/// Mixes a 64-bit value (SplitMix64 finaliser).
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Domain tags of the derived seeds.
const TAG_TRAIN: u64 = 0x7472_6169_6e00_0001;
const TAG_EVAL: u64 = 0x6576_616c_0000_0002;
const TAG_LORA_INIT: u64 = 0x6c6f_7261_0000_0003;

/// The seed of the RNG for step `step` (0-based), example `index` of a run seeded `seed`.
pub fn example_seed(seed: u64, step: u64, index: u64) -> u64 {
    mix(mix(mix(seed ^ TAG_TRAIN) ^ step) ^ index)
}

fn eval_seed(seed: u64, index: u64) -> u64 {
    mix(mix(seed ^ TAG_EVAL) ^ index)
}

/// A sampled training input.
struct Noised {
    x_t: Tensor,
    t: Tensor,
    target: Tensor,
    context: Tensor,
}

/// The trainable tensors.
#[derive(Debug, Clone)]
pub(crate) enum Trainable {
    /// Full fine-tune; `master` holds f32 copies when the model is half precision (otherwise the
    /// model's own tensors are the master weights).
    Full { master: Option<Vec<Tensor>> },
    /// LoRA on a frozen base (`model`).
    Lora(LoraWeights),
}

/// Flow-matching trainer of a [`WanDit`] (see the module docs).
#[derive(Debug, Clone)]
pub struct FlowMatchingTrainer {
    pub(crate) cfg: FlowMatchingConfig,
    /// Full fine-tune: the current weights. LoRA: the frozen base.
    pub(crate) model: WanDit,
    pub(crate) trainable: Trainable,
    pub(crate) opt: AdamW,
    /// EMA of the trainable tensors, in [`Self::trainable_names`] order.
    pub(crate) ema: Option<Vec<Tensor>>,
    pub(crate) step: u64,
    /// LoRA: fingerprint of the frozen base weights (checked on resume).
    pub(crate) base_fingerprint: Option<u64>,
}

/// The dtype master weights (and computations of the trainer) use for a model dtype.
fn master_dtype(model: DType) -> DType {
    if model == DType::F64 { DType::F64 } else { DType::F32 }
}

impl FlowMatchingTrainer {
    /// A trainer starting from `model` (step 0): validates the config, creates LoRA adapters
    /// (seeded by `cfg.seed`) or f32 master copies of a half-precision model, and the EMA.
    pub fn new(model: WanDit, cfg: FlowMatchingConfig) -> Result<Self> {
        cfg.validate()?;
        let md = master_dtype(model.dtype());
        let trainable = match &cfg.lora {
            Some(l) => {
                let mut rng = Rng::new(mix(cfg.seed ^ TAG_LORA_INIT));
                Trainable::Lora(LoraWeights::init(&model, l, &mut rng, md)?)
            }
            None if model.dtype() == md => Trainable::Full { master: None },
            None => Trainable::Full {
                master: Some(model.named_parameters().iter().map(|(_, p)| p.to_dtype(md)).collect::<Result<Vec<_>>>()?),
            },
        };
        let opt = AdamW::new(cfg.adamw())?;
        let base_fingerprint =
            matches!(trainable, Trainable::Lora(_)).then(|| state::fingerprint(&model)).transpose()?;
        let mut tr = FlowMatchingTrainer { cfg, model, trainable, opt, ema: None, step: 0, base_fingerprint };
        if tr.cfg.ema_decay.is_some() {
            // Shared storage is fine: in-place updates copy on write (`Tensor::data_mut`).
            tr.ema = Some(tr.trainable_tensors().into_iter().cloned().collect());
        }
        Ok(tr)
    }

    /// The trainer with the model, the trainable tensors and the EMA on `device` (the optimiser
    /// moments follow the parameters at the next step). Training then runs there: σ and ε are still
    /// drawn on the host, so a seed gives the same stream on every device.
    pub fn to_device(mut self, device: Device) -> Result<Self> {
        self.model = self.model.to_device(device)?;
        match &mut self.trainable {
            Trainable::Lora(l) => *l = l.to_device(device)?,
            Trainable::Full { master: Some(m) } => {
                for t in m.iter_mut() {
                    *t = t.to_device(device)?;
                }
            }
            Trainable::Full { master: None } => {}
        }
        if let Some(ema) = &mut self.ema {
            for t in ema.iter_mut() {
                *t = t.to_device(device)?;
            }
        }
        Ok(self)
    }

    /// Where the model computes.
    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The config.
    pub fn config(&self) -> &FlowMatchingConfig {
        &self.cfg
    }

    /// The model being trained (full fine-tune: its current weights; LoRA: the frozen base).
    pub fn model(&self) -> &WanDit {
        &self.model
    }

    /// The LoRA adapters (LoRA training only).
    pub fn lora(&self) -> Option<&LoraWeights> {
        match &self.trainable {
            Trainable::Lora(l) => Some(l),
            Trainable::Full { .. } => None,
        }
    }

    /// The AdamW optimiser (for its state; see [`AdamW::export_state`]).
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// Names of the trainable tensors (diffusers parameter names, or `{module}.lora_{A,B}.weight`).
    pub fn trainable_names(&self) -> Vec<String> {
        match &self.trainable {
            Trainable::Lora(l) => l.param_names(),
            Trainable::Full { .. } => self.model.named_parameters().iter().map(|(n, _)| n.to_string()).collect(),
        }
    }

    /// The trainable tensors (f32/f64 master values), in [`trainable_names`](Self::trainable_names) order.
    pub fn trainable_tensors(&self) -> Vec<&Tensor> {
        match &self.trainable {
            Trainable::Lora(l) => l.params(),
            Trainable::Full { master: Some(m) } => m.iter().collect(),
            Trainable::Full { master: None } => self.model.named_parameters().into_iter().map(|(_, p)| p).collect(),
        }
    }

    /// The EMA tensors in [`trainable_names`](Self::trainable_names) order (when EMA is on).
    pub fn ema_tensors(&self) -> Option<&[Tensor]> {
        self.ema.as_deref()
    }

    /// The model the current weights define (LoRA merged).
    fn current_model(&self) -> Result<WanDit> {
        match &self.trainable {
            Trainable::Lora(l) => l.merge_into(&self.model),
            Trainable::Full { .. } => Ok(self.model.clone()),
        }
    }

    /// The model to sample with: the current weights (LoRA merged), or with `ema` the EMA
    /// weights ([`Error::Config`] when EMA is off).
    pub fn inference_model(&self, ema: bool) -> Result<WanDit> {
        if !ema {
            return self.current_model();
        }
        let e = self.ema.as_ref().ok_or_else(|| cfg_err("inference_model(ema = true) but `ema_decay` is None"))?;
        match &self.trainable {
            Trainable::Lora(l) => {
                let mut lw = l.clone();
                lw.put_params(e.clone())?;
                lw.merge_into(&self.model)
            }
            Trainable::Full { .. } => {
                let mut m = self.model.clone();
                let names = self.trainable_names();
                for (n, t) in names.iter().zip(e) {
                    m.set_parameter(n, t)?;
                }
                Ok(m)
            }
        }
    }

    /// Draws σ, the dropout coin and ε for one example and builds the model inputs.
    fn noise(&self, ex: &TrainExample, rng: &mut Rng, dropout: f64, ct: DType) -> Result<Noised> {
        let cfg = &self.model.config();
        let lat = &ex.latent;
        if lat.rank() != 4 || lat.shape()[0] != cfg.in_channels {
            return Err(Error::shape(
                "FlowMatchingTrainer",
                format!("latent has shape {:?}; expected [C = {}, F, H, W]", lat.shape(), cfg.in_channels),
            ));
        }
        if cfg.out_dim() != cfg.in_channels {
            return Err(cfg_err(format!(
                "flow matching needs out_channels ({}) = in_channels ({})",
                cfg.out_dim(),
                cfg.in_channels
            )));
        }
        if ex.context.rank() != 2 || ex.context.shape()[1] != cfg.text_dim {
            return Err(Error::shape(
                "FlowMatchingTrainer",
                format!("context has shape {:?}; expected [Lt, text_dim = {}]", ex.context.shape(), cfg.text_dim),
            ));
        }
        // 1. σ on the training grid (WAN_SPEC §5.2)
        let u = match self.cfg.timestep_sampling {
            TimestepSampling::Uniform => rng.uniform(),
            TimestepSampling::LogitNormal { mean, std } => 1.0 / (1.0 + (-(mean + std * rng.normal())).exp()),
        };
        let idx = ((1000.0 * u).floor() as i64).clamp(0, 999);
        let sigma = shift((999 - idx) as f64 / 1000.0, self.cfg.shift);
        // 2. caption dropout coin (always drawn, so the stream does not depend on the rate)
        let drop = rng.uniform() < dropout;
        // 3. ε
        let shape = lat.shape().to_vec();
        let eps = rng.normal_vec(lat.numel());
        let x0 = lat.to_vec_f64()?;
        let xt: Vec<f64> = x0.iter().zip(&eps).map(|(&x, &e)| (1.0 - sigma) * x + sigma * e).collect();
        let tg: Vec<f64> = x0.iter().zip(&eps).map(|(&x, &e)| e - x).collect();
        let mut bshape = vec![1];
        bshape.extend_from_slice(&shape);
        // σ and ε are drawn on the host (the same stream on every device), then placed with the model.
        let dev = self.model.device();
        let context = if drop {
            Tensor::zeros(&[1, ex.context.shape()[0], cfg.text_dim], ex.context.dtype(), dev)?
        } else {
            ex.context.unsqueeze(0)?.to_device(dev)?
        };
        Ok(Noised {
            x_t: Tensor::from_f64_slice(&xt, &bshape, ct)?.to_device(dev)?,
            t: Tensor::from_f64_slice(&[1000.0 * sigma], &[1], ct)?.to_device(dev)?,
            target: Tensor::from_f64_slice(&tg, &bshape, ct)?.to_device(dev)?,
            context,
        })
    }

    /// One optimiser step over `examples` (gradient accumulation over the examples, each its own
    /// `B = 1` forward/backward; loss and gradients averaged). The randomness of example `k` comes
    /// from [`example_seed`]`(seed, step_count(), k)`. A non-finite loss or gradient norm is
    /// [`Error::TrainingDiverged`] and changes nothing.
    pub fn step(&mut self, examples: &[TrainExample]) -> Result<StepStats> {
        if examples.is_empty() {
            return Err(Error::arg("FlowMatchingTrainer::step", "no examples"));
        }
        let ct = master_dtype(self.model.dtype());
        let model = self.current_model()?;
        let n = examples.len() as f64;
        let opts = TrainOptions { recompute_blocks: self.cfg.recompute_blocks, input_grads: false };
        let frozen_base = std::collections::HashSet::new();
        let mut loss_sum = 0.0;
        let mut acc: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut lora_acc: Vec<Tensor> = Vec::new();
        for (k, ex) in examples.iter().enumerate() {
            let mut rng = Rng::new(example_seed(self.cfg.seed, self.step, k as u64));
            let inp = self.noise(ex, &mut rng, self.cfg.caption_dropout, ct)?;
            let (pred, tape) = model.forward_train_with(&inp.x_t, &inp.t, &inp.context, opts)?;
            loss_sum += mse(&pred, &inp.target)?;
            let d_pred = mse_loss_backward(&pred, &inp.target, 1.0 / n)?;
            // LoRA: only the adapters' gradients, from their low-rank factors (no dW of the frozen base).
            let grads = match &self.trainable {
                Trainable::Lora(l) => {
                    model.backward_for(&tape, &d_pred, GradRequest { params: Some(&frozen_base), lora: Some(l) })?
                }
                Trainable::Full { .. } => model.backward(&tape, &d_pred)?,
            };
            drop(tape);
            for (i, g) in grads.lora.into_iter().enumerate() {
                match lora_acc.get_mut(i) {
                    Some(a) => *a = add(a, &g)?,
                    None => lora_acc.push(g),
                }
            }
            for (name, g) in grads.params {
                let g = g.to_dtype(ct)?;
                let sum = match acc.remove(&name) {
                    Some(a) => add(&a, &g)?,
                    None => g,
                };
                acc.insert(name, sum);
            }
        }
        let loss = loss_sum / n;
        let mut grads: Vec<Tensor> = match &self.trainable {
            Trainable::Lora(_) => lora_acc,
            Trainable::Full { .. } => {
                let names = self.trainable_names();
                names
                    .iter()
                    .map(|nm| acc.remove(nm).ok_or_else(|| Error::MissingKey(format!("gradient of {nm}"))))
                    .collect::<Result<_>>()?
            }
        };
        drop(acc);
        let grad_norm = global_norm(&grads)?;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(Error::TrainingDiverged {
                step: self.step,
                msg: format!("loss {loss}, gradient norm {grad_norm}; no update applied"),
            });
        }
        let max = self.cfg.max_grad_norm;
        if max > 0.0 && grad_norm > max {
            // torch's clip_grad_norm_: scale by max/(norm + 1e-6)
            let coef = max / (grad_norm + 1e-6);
            for g in &mut grads {
                scale_in_place(g, coef)?;
            }
        }
        self.apply_update(&grads)?;
        self.step += 1;
        Ok(StepStats { step: self.step, loss, grad_norm })
    }

    /// AdamW on the trainable tensors, refresh of the compute weights, EMA update.
    fn apply_update(&mut self, grads: &[Tensor]) -> Result<()> {
        match &mut self.trainable {
            Trainable::Lora(l) => {
                let mut p = l.take_params();
                let r = self.opt.step(&mut p, grads);
                l.put_params(p)?;
                r?;
            }
            Trainable::Full { master: Some(master) } => {
                self.opt.step(master, grads)?;
                let names: Vec<String> = self.model.named_parameters().iter().map(|(n, _)| n.to_string()).collect();
                for (n, m) in names.iter().zip(master.iter()) {
                    self.model.set_parameter(n, m)?;
                }
            }
            Trainable::Full { master: None } => {
                let mut slots = self.model.named_parameters_mut();
                let ph = DType::F32;
                let mut p: Vec<Tensor> =
                    slots.iter_mut().map(|(_, t)| std::mem::replace(&mut **t, Tensor::scalar(0.0, ph))).collect();
                let r = self.opt.step(&mut p, grads);
                for ((_, slot), t) in slots.into_iter().zip(p) {
                    *slot = t;
                }
                r?;
            }
        }
        if let (Some(decay), Some(mut ema)) = (self.cfg.ema_decay, self.ema.take()) {
            let cur = self.trainable_tensors();
            let r = ema.iter_mut().zip(cur).try_for_each(|(e, p)| ema_update(e, p, decay));
            self.ema = Some(ema);
            r?;
        }
        Ok(())
    }

    /// Mean flow-matching loss over `examples` with the current weights (LoRA merged), without
    /// updating anything and without caption dropout; the σ and ε of example `k` come from a
    /// generator seeded by `(seed, k)` only, so the same call is comparable across steps.
    pub fn eval_loss(&self, examples: &[TrainExample], seed: u64) -> Result<f64> {
        if examples.is_empty() {
            return Err(Error::arg("FlowMatchingTrainer::eval_loss", "no examples"));
        }
        let ct = master_dtype(self.model.dtype());
        let model = self.current_model()?;
        let mut sum = 0.0;
        for (k, ex) in examples.iter().enumerate() {
            let mut rng = Rng::new(eval_seed(seed, k as u64));
            let inp = self.noise(ex, &mut rng, 0.0, ct)?;
            let pred = model.forward(&inp.x_t, &inp.t, &inp.context)?;
            sum += mse(&pred, &inp.target)?;
        }
        Ok(sum / examples.len() as f64)
    }
}

/// `mean((pred − target)²)` accumulated sequentially in f64 (deterministic, unlike a parallel
/// reduction whose split points may vary).
fn mse(pred: &Tensor, target: &Tensor) -> Result<f64> {
    if pred.shape() != target.shape() {
        return Err(Error::shape("flow matching loss", format!("{:?} vs {:?}", pred.shape(), target.shape())));
    }
    let p = pred.to_vec_f64()?;
    let t = target.to_vec_f64()?;
    let s: f64 = p.iter().zip(&t).map(|(a, b)| (a - b) * (a - b)).sum();
    Ok(s / p.len().max(1) as f64)
}

/// Global L2 norm, summed per tensor sequentially in f64 (deterministic); device gradients use
/// the device reduction of [`crate::optim::grad_norm`] (also deterministic).
fn global_norm(grads: &[Tensor]) -> Result<f64> {
    if grads.iter().any(|g| g.device() != Device::Cpu) {
        return crate::optim::grad_norm(grads);
    }
    let mut total = 0.0;
    for g in grads {
        total += g.cpu_data::<f64>("grad norm")?.iter().map(|x| x * x).sum::<f64>();
    }
    Ok(total.sqrt())
}

fn scale_in_place(g: &mut Tensor, coef: f64) -> Result<()> {
    if g.device() != Device::Cpu {
        *g = crate::ops::elementwise::scale(g, coef)?;
        return Ok(());
    }
    fn go<T: Float>(g: &mut Tensor, coef: f64) -> Result<()> {
        let c = T::from_f64(coef);
        g.data_mut::<T>()?.iter_mut().for_each(|x| *x *= c);
        Ok(())
    }
    match g.dtype() {
        DType::F64 => go::<f64>(g, coef),
        DType::F32 => go::<f32>(g, coef),
        d => Err(Error::DType { op: "gradient clipping", dtype: d, msg: "gradients are f32 or f64".into() }),
    }
}

fn ema_update(e: &mut Tensor, p: &Tensor, decay: f64) -> Result<()> {
    if e.device() != Device::Cpu || p.device() != Device::Cpu {
        use crate::ops::elementwise::scale;
        *e = add(&scale(e, decay)?, &scale(&p.to_device(e.device())?, 1.0 - decay)?)?.to_dtype(e.dtype())?;
        return Ok(());
    }
    fn go<T: Float>(e: &mut Tensor, p: &Tensor, decay: f64) -> Result<()> {
        let pd = p.cpu_data::<T>("ema")?;
        let ed = e.data_mut::<T>()?;
        if ed.len() != pd.len() {
            return Err(Error::shape("ema", format!("{} vs {} elements", ed.len(), pd.len())));
        }
        let (d, one_m) = (T::from_f64(decay), T::from_f64(1.0 - decay));
        ed.iter_mut().zip(pd.iter()).for_each(|(e, &p)| *e = d * *e + one_m * p);
        Ok(())
    }
    match e.dtype() {
        DType::F64 => go::<f64>(e, p, decay),
        DType::F32 => go::<f32>(e, p, decay),
        d => Err(Error::DType { op: "ema", dtype: d, msg: "EMA tensors are f32 or f64".into() }),
    }
}
