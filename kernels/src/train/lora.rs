//! LoRA adapters on the DiT's linear layers (WAN_SPEC §6 "LoRA conventions"): config, PEFT-style
//! initialisation, merging into the base weights, gradients from the full weight gradient, and
//! the diffusers/PEFT file layout.
//!
//! # Math
//!
//! `W_eff = W + s·B·A` with `s = alpha/rank`, `A [rank, in]`, `B [out, rank]`; `A` starts
//! Kaiming-uniform as PEFT does it (`U(−1/√in, 1/√in)`), `B` at zero, so training starts from the
//! base model. Given the full weight gradient `dW` (what the DiT backward returns for `W_eff`),
//! `dB = s·dW·Aᵀ` and `dA = s·Bᵀ·dW` (the chain rule through `W_eff`; identical to the per-token
//! formulas of WAN_SPEC §6). The base weights stay frozen.
//!
//! # File layout (verified against diffusers 0.42.1 `WanLoraLoaderMixin` / `load_lora_adapter`)
//!
//! `pytorch_lora_weights.safetensors` with keys `transformer.{module}.lora_A.weight` `[rank, in]`
//! and `transformer.{module}.lora_B.weight` `[out, rank]`, `{module}` the diffusers module name
//! (`blocks.0.attn1.to_q`, `blocks.3.ffn.net.0.proj`, …) — the `transformer.` prefix is what
//! `LoraBaseMixin.pack_weights` adds and `load_lora_adapter(prefix="transformer")` strips.
//!
//! **alpha.** diffusers' Wan loader passes no `network_alphas`; without metadata PEFT's config
//! comes from `get_peft_kwargs`, which sets `lora_alpha = r` (scale 1). With metadata — the JSON
//! string under the safetensors `__metadata__` key `lora_adapter_metadata`, each key prefixed by
//! `transformer.` (`_pack_dict_with_prefix`) — diffusers builds `LoraConfig(**metadata)` verbatim
//! and PEFT scales by `lora_alpha / r`. So we store B unscaled and write that metadata
//! (`r`, `lora_alpha`, `target_modules` = the exact module names, `lora_dropout` 0, `bias`
//! `"none"`, `use_rslora` false): diffusers then scales exactly like [`LoraWeights::merge_into`].
//! (A file without metadata is read here with `alpha = rank`, as diffusers does.) No `.alpha`
//! tensors are written: diffusers' Wan loader rejects keys without `lora` in them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::safetensors::{Checkpoint, SafeTensorsFile, save};
use crate::io::wan_keys::original_to_diffusers;
use crate::nets::wan_dit::WanDit;
use crate::ops::elementwise::{add, scale};
use crate::ops::linear::matmul;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// What a LoRA file's PEFT metadata says about scaling.
#[derive(Debug, Default)]
struct LoraMeta {
    /// `r`, when given (must match the tensors).
    rank: Option<usize>,
    /// `lora_alpha`, when given.
    alpha: Option<f64>,
    /// `use_rslora`: PEFT scales by `alpha / √r` instead of `alpha / r`.
    rslora: bool,
}

impl LoraMeta {
    /// The factor on `B·A` for `alpha` at rank `r`.
    fn scale(&self, alpha: f64, r: usize) -> f64 {
        if self.rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 }
    }
}

/// The safetensors `__metadata__` key diffusers reads LoRA adapter metadata from.
pub const LORA_METADATA_KEY: &str = "lora_adapter_metadata";
/// The key prefix diffusers' Wan loader expects on every LoRA tensor.
pub const LORA_KEY_PREFIX: &str = "transformer.";
/// File name diffusers looks for by default (`LORA_WEIGHT_NAME_SAFE`).
pub const LORA_FILE_NAME: &str = "pytorch_lora_weights.safetensors";

/// Which linear layers get adapters, with what rank and scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank `r` (≥ 1).
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Module-name suffixes matched against the diffusers names of linear layers: a module
    /// `m` matches target `t` when `m == t` or `m` ends with `.t` (`"to_q"` → every
    /// `blocks.i.attn{1,2}.to_q`; also `"ffn.net.0.proj"`, `"ffn.net.2"`, `"attn1.to_q"`, …).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    /// The Wan T2V LoRA example of WAN_SPEC §6 (FastVideo): rank 16, alpha 32, the q/k/v/out
    /// projections of self- and cross-attention of every block.
    fn default() -> Self {
        LoraConfig { rank: 16, alpha: 32.0, targets: ["to_q", "to_k", "to_v", "to_out.0"].map(String::from).to_vec() }
    }
}

fn cfg_err(msg: impl Into<String>) -> Error {
    Error::Config { model: "lora", msg: msg.into() }
}

impl LoraConfig {
    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Checks rank, alpha and targets.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(cfg_err("`rank` must be ≥ 1"));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(cfg_err(format!("`alpha` = {} must be finite and > 0", self.alpha)));
        }
        if self.targets.is_empty() {
            return Err(cfg_err("`targets` is empty: name at least one linear layer (e.g. \"to_q\")"));
        }
        if let Some(t) = self.targets.iter().find(|t| t.is_empty() || t.starts_with('.') || t.ends_with('.')) {
            return Err(cfg_err(format!("target {t:?} is not a module-name suffix")));
        }
        Ok(())
    }

    /// The diffusers module names of `model`'s linear layers (2-D `.weight` with a `.bias`)
    /// that match a target, in parameter order. A target matching no linear layer is an error.
    pub fn target_modules(&self, model: &WanDit) -> Result<Vec<String>> {
        self.validate()?;
        let params = model.named_parameters();
        let names: std::collections::HashSet<&str> = params.iter().map(|(n, _)| *n).collect();
        let linears: Vec<&str> = params
            .iter()
            .filter(|(_, t)| t.rank() == 2)
            .filter_map(|(n, _)| n.strip_suffix(".weight"))
            .filter(|m| names.contains(format!("{m}.bias").as_str()))
            .collect();
        let hit = |m: &str, t: &str| m == t || m.ends_with(&format!(".{t}"));
        for t in &self.targets {
            if !linears.iter().any(|m| hit(m, t)) {
                return Err(cfg_err(format!(
                    "target {t:?} matches no linear layer of the DiT (e.g. {:?})",
                    linears.iter().take(4).collect::<Vec<_>>()
                )));
            }
        }
        Ok(linears.into_iter().filter(|m| self.targets.iter().any(|t| hit(m, t))).map(str::to_string).collect())
    }
}

/// One adapted linear layer.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// Diffusers module name, e.g. `blocks.0.attn1.to_q` (the weight is `{name}.weight`).
    pub name: String,
    /// `A [rank, in]`.
    pub a: Tensor,
    /// `B [out, rank]`.
    pub b: Tensor,
    /// A bias delta `[out]` (PEFT `lora_B.bias`, the original-Wan / musubi `.diff_b`), scaled like
    /// `B·A`: merging adds `s·bias` to the layer's bias. Read from files, never trained.
    pub bias: Option<Tensor>,
}

/// A set of LoRA adapters (f32, or f64 for an f64 model).
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// Rank.
    pub rank: usize,
    /// alpha (scale `alpha / rank`).
    pub alpha: f64,
    /// The adapted layers, in the base model's parameter order.
    pub modules: Vec<LoraModule>,
}

/// Name of A's parameter for `module` (`{module}.lora_A.weight`, no `transformer.` prefix).
pub fn lora_a_name(module: &str) -> String {
    format!("{module}.lora_A.weight")
}

/// Name of B's parameter for `module` (`{module}.lora_B.weight`, no `transformer.` prefix).
pub fn lora_b_name(module: &str) -> String {
    format!("{module}.lora_B.weight")
}

/// Which tensor of an adapter a LoRA file key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoraPart {
    A,
    B,
    Alpha,
    /// A bias delta: PEFT `lora_B.bias`, original-Wan / musubi `.diff_b`.
    Bias,
}

/// A LoRA file key → (module, part) with the module in original Wan or diffusers dotted naming;
/// `Ok(None)` for keys diffusers skips (norm `.diff` / `.diff_b`).
///
/// A non-norm `.diff_b` is a bias delta of the layer (diffusers' `lora_B.bias`). Full weight
/// deltas (`.diff` outside norms) are refused: diffusers ignores them, other tools add them.
fn split_lora_key(key: &str) -> std::result::Result<Option<(String, LoraPart)>, String> {
    let (k, musubi) = match key.strip_prefix("lora_unet_") {
        Some(k) => (k, true),
        None => {
            (key.strip_prefix(LORA_KEY_PREFIX).or_else(|| key.strip_prefix("diffusion_model.")).unwrap_or(key), false)
        }
    };
    if (k.ends_with(".diff") || k.ends_with(".diff_b")) && k.contains("norm") {
        return Ok(None);
    }
    const PARTS: [(&str, LoraPart); 10] = [
        (".lora_A.weight", LoraPart::A),
        (".lora_A.default.weight", LoraPart::A),
        (".lora_down.weight", LoraPart::A),
        (".lora_B.weight", LoraPart::B),
        (".lora_B.default.weight", LoraPart::B),
        (".lora_up.weight", LoraPart::B),
        (".alpha", LoraPart::Alpha),
        (".lora_B.bias", LoraPart::Bias),
        (".lora_B.default.bias", LoraPart::Bias),
        (".diff_b", LoraPart::Bias),
    ];
    for (suffix, part) in PARTS {
        if let Some(module) = k.strip_suffix(suffix) {
            let module = if musubi {
                musubi_module(module).ok_or_else(|| format!("key {key:?}: {module:?} is not a Wan DiT layer"))?
            } else {
                module.to_string()
            };
            return Ok(Some((module, part)));
        }
    }
    if k.contains(".lora_") {
        return Err(format!(
            "key {key:?}: only lora_A/lora_B (lora_down/lora_up) weights and lora_B biases are supported"
        ));
    }
    if k.ends_with(".diff") {
        return Err(format!(
            "key {key:?} is a full weight delta (`.diff`), which medgen does not apply (diffusers ignores them); \
             merge it into the checkpoint instead"
        ));
    }
    Err(format!("key {key:?} is not a LoRA A/B weight, bias (`lora_B.bias` / `.diff_b`) or alpha"))
}

/// musubi-tuner's underscore module name (`blocks_0_self_attn_q`, `blocks_3_ffn_0`,
/// `text_embedding_0`, `head_head`) → the original Wan dotted name.
fn musubi_module(m: &str) -> Option<String> {
    if let Some(rest) = m.strip_prefix("blocks_") {
        let (i, tail) = rest.split_once('_')?;
        i.parse::<usize>().ok()?;
        let tail = if let Some(x) = tail.strip_prefix("self_attn_") {
            format!("self_attn.{x}")
        } else if let Some(x) = tail.strip_prefix("cross_attn_") {
            format!("cross_attn.{x}")
        } else if let Some(n) = tail.strip_prefix("ffn_") {
            format!("ffn.{n}")
        } else {
            return None;
        };
        return Some(format!("blocks.{i}.{tail}"));
    }
    for top in ["text_embedding", "time_embedding", "time_projection"] {
        if let Some(n) = m.strip_prefix(top).and_then(|r| r.strip_prefix('_')) {
            return Some(format!("{top}.{n}"));
        }
    }
    (m == "head_head").then(|| "head.head".to_string())
}

fn weight_of<'m>(model: &'m WanDit, module: &str) -> Result<&'m Tensor> {
    model.parameter(&format!("{module}.weight")).ok_or_else(|| Error::MissingKey(format!("{module}.weight")))
}

impl LoraWeights {
    /// Fresh adapters for the layers `cfg` selects: `A ~ U(−1/√in, 1/√in)` (PEFT's
    /// `kaiming_uniform_(a=√5)`), `B = 0`, in `dtype` (`F32` or `F64`).
    pub fn init(model: &WanDit, cfg: &LoraConfig, rng: &mut Rng, dtype: DType) -> Result<LoraWeights> {
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(Error::DType { op: "LoraWeights::init", dtype, msg: "adapters are f32 (or f64)".into() });
        }
        let mut modules = Vec::new();
        for name in cfg.target_modules(model)? {
            let w = weight_of(model, &name)?;
            let (out, inp) = (w.shape()[0], w.shape()[1]);
            let bound = 1.0 / (inp as f64).sqrt();
            let a = Tensor::rand_uniform(&[cfg.rank, inp], -bound, bound, dtype, rng);
            let b = Tensor::zeros(&[out, cfg.rank], dtype, crate::tensor::Device::Cpu)?;
            modules.push(LoraModule { name, a, b, bias: None });
        }
        Ok(LoraWeights { rank: cfg.rank, alpha: cfg.alpha, modules })
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The trainable tensors' names, `[A₀, B₀, A₁, B₁, …]` (see [`lora_a_name`]).
    pub fn param_names(&self) -> Vec<String> {
        self.modules.iter().flat_map(|m| [lora_a_name(&m.name), lora_b_name(&m.name)]).collect()
    }

    /// The trainable tensors in [`param_names`](Self::param_names) order.
    pub fn params(&self) -> Vec<&Tensor> {
        self.modules.iter().flat_map(|m| [&m.a, &m.b]).collect()
    }

    /// Moves the trainable tensors out (leaving placeholders), in
    /// [`param_names`](Self::param_names) order; put them back with
    /// [`put_params`](Self::put_params).
    pub(crate) fn take_params(&mut self) -> Vec<Tensor> {
        let ph = || Tensor::scalar(0.0, DType::F32);
        self.modules
            .iter_mut()
            .flat_map(|m| [std::mem::replace(&mut m.a, ph()), std::mem::replace(&mut m.b, ph())])
            .collect()
    }

    /// Inverse of [`take_params`](Self::take_params) (also used to install EMA copies).
    pub(crate) fn put_params(&mut self, params: Vec<Tensor>) -> Result<()> {
        if params.len() != 2 * self.modules.len() {
            return Err(Error::arg(
                "LoraWeights",
                format!("{} tensors for {} modules", params.len(), self.modules.len()),
            ));
        }
        let mut it = params.into_iter();
        for m in &mut self.modules {
            m.a = it.next().unwrap_or_else(|| unreachable!("length checked"));
            m.b = it.next().unwrap_or_else(|| unreachable!("length checked"));
        }
        Ok(())
    }

    /// The adapters on `device` (the model they adapt must be there too).
    pub fn to_device(&self, device: crate::tensor::Device) -> Result<LoraWeights> {
        let modules = self
            .modules
            .iter()
            .map(|m| {
                Ok(LoraModule {
                    name: m.name.clone(),
                    a: m.a.to_device(device)?,
                    b: m.b.to_device(device)?,
                    bias: m.bias.as_ref().map(|t| t.to_device(device)).transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(LoraWeights { rank: self.rank, alpha: self.alpha, modules })
    }

    /// Checks that every adapter fits `model`'s layer shapes.
    pub fn check_against(&self, model: &WanDit) -> Result<()> {
        for m in &self.modules {
            let w = weight_of(model, &m.name)?;
            let (out, inp) = (w.shape()[0], w.shape()[1]);
            let want_a = [self.rank, inp];
            let want_b = [out, self.rank];
            if m.a.shape() != want_a {
                return Err(Error::WeightShape {
                    name: lora_a_name(&m.name),
                    expected: want_a.to_vec(),
                    got: m.a.shape().to_vec(),
                });
            }
            if m.b.shape() != want_b {
                return Err(Error::WeightShape {
                    name: lora_b_name(&m.name),
                    expected: want_b.to_vec(),
                    got: m.b.shape().to_vec(),
                });
            }
            if let Some(bias) = &m.bias {
                let name = format!("{}.bias", m.name);
                model.parameter(&name).ok_or_else(|| Error::MissingKey(name.clone()))?;
                if bias.shape() != [out] {
                    return Err(Error::WeightShape {
                        name: format!("{}.lora_B.bias", m.name),
                        expected: vec![out],
                        got: bias.shape().to_vec(),
                    });
                }
            }
        }
        Ok(())
    }

    /// `base` with every adapted weight replaced by `W + s·B·A` and, for adapters with a bias
    /// delta, its bias by `b + s·bias` (computed in the adapters' dtype, then stored in the
    /// weight's dtype — note that a bf16 base rounds small updates away). Unadapted parameters
    /// are shared with `base`, not copied.
    pub fn merge_into(&self, base: &WanDit) -> Result<WanDit> {
        self.check_against(base)?;
        let mut merged = base.clone();
        let s = self.scale();
        for m in &self.modules {
            let wname = format!("{}.weight", m.name);
            let w = weight_of(base, &m.name)?;
            let delta = scale(&matmul(&m.b, &m.a)?, s)?;
            let w_eff = add(&w.to_dtype(delta.dtype())?, &delta)?;
            merged.set_parameter(&wname, &w_eff)?;
            if let Some(bias) = &m.bias {
                let bname = format!("{}.bias", m.name);
                let b = base.parameter(&bname).ok_or_else(|| Error::MissingKey(bname.clone()))?;
                let b_eff = add(&b.to_dtype(bias.dtype())?, &scale(bias, s)?)?;
                merged.set_parameter(&bname, &b_eff)?;
            }
        }
        Ok(merged)
    }

    /// Adapter gradients `[dA₀, dB₀, …]` from the full gradients of the merged model
    /// (`grads[{module}.weight] = dW`): `dA = s·Bᵀ·dW`, `dB = s·dW·Aᵀ`.
    pub fn grads_from_full(&self, grads: &BTreeMap<String, Tensor>) -> Result<Vec<Tensor>> {
        let s = self.scale();
        let mut out = Vec::with_capacity(2 * self.modules.len());
        for m in &self.modules {
            let wname = format!("{}.weight", m.name);
            let dw = grads.get(&wname).ok_or_else(|| Error::MissingKey(format!("gradient of {wname}")))?;
            let dw = dw.to_dtype(m.a.dtype())?;
            out.push(scale(&matmul(&m.b.transpose(0, 1)?, &dw)?, s)?);
            out.push(scale(&matmul(&dw, &m.a.transpose(0, 1)?)?, s)?);
        }
        Ok(out)
    }

    /// The diffusers/PEFT adapter metadata (without the `transformer.` prefix).
    pub fn peft_metadata(&self) -> Value {
        // An integral alpha is written as an integer (PEFT's `lora_alpha: int`), otherwise as a float.
        let alpha = if self.alpha.fract() == 0.0 && self.alpha.abs() < 1e15 {
            json!(self.alpha as i64)
        } else {
            json!(self.alpha)
        };
        let mut meta = json!({
            "r": self.rank,
            "lora_alpha": alpha,
            "target_modules": self.modules.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
            "lora_dropout": 0.0,
            "bias": "none",
            "use_rslora": false,
            "use_dora": false,
            "init_lora_weights": true,
        });
        // PEFT ≥ 0.14's switch for `lora_B.bias` (only written when there are any).
        if self.modules.iter().any(|m| m.bias.is_some()) {
            meta["lora_bias"] = json!(true);
        }
        meta
    }

    /// Writes the adapters in the diffusers/PEFT layout (see the module docs) to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let names: Vec<(String, &Tensor)> = self
            .modules
            .iter()
            .flat_map(|m| {
                [
                    Some((format!("{LORA_KEY_PREFIX}{}", lora_a_name(&m.name)), &m.a)),
                    Some((format!("{LORA_KEY_PREFIX}{}", lora_b_name(&m.name)), &m.b)),
                    m.bias.as_ref().map(|t| (format!("{LORA_KEY_PREFIX}{}.lora_B.bias", m.name), t)),
                ]
                .into_iter()
                .flatten()
            })
            .collect();
        let tensors: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let meta: serde_json::Map<String, Value> = match self.peft_metadata() {
            Value::Object(o) => o.into_iter().map(|(k, v)| (format!("{LORA_KEY_PREFIX}{k}"), v)).collect(),
            _ => unreachable!("peft_metadata is an object"),
        };
        let mut md = HashMap::new();
        md.insert("format".to_string(), "pt".to_string());
        md.insert(LORA_METADATA_KEY.to_string(), Value::Object(meta).to_string());
        save(path, &tensors, Some(md))
    }

    /// The PEFT metadata of a LoRA file (none: PEFT's defaults, `alpha = r`), refusing what
    /// the merge does not reproduce.
    fn metadata(file: &SafeTensorsFile, bad: &dyn Fn(String) -> Error) -> Result<LoraMeta> {
        let Some(raw) = file.user_metadata().and_then(|m| m.get(LORA_METADATA_KEY)) else {
            return Ok(LoraMeta::default());
        };
        let v: Value = serde_json::from_str(raw).map_err(|e| bad(format!("{LORA_METADATA_KEY} is not JSON: {e}")))?;
        let get = |k: &str| v.get(format!("{LORA_KEY_PREFIX}{k}")).or_else(|| v.get(k)).filter(|x| !x.is_null());
        if get("alpha_pattern").and_then(Value::as_object).is_some_and(|o| !o.is_empty())
            || get("rank_pattern").and_then(Value::as_object).is_some_and(|o| !o.is_empty())
        {
            return Err(bad("per-module rank/alpha patterns are not supported".into()));
        }
        let flag = |k: &str| -> Result<bool> {
            match get(k) {
                None => Ok(false),
                Some(x) => x.as_bool().ok_or_else(|| bad(format!("metadata {k} = {x} is not true or false"))),
            }
        };
        if flag("use_dora")? {
            return Err(bad(
                "use_dora = true: DoRA adapters (a learned magnitude per output row) are not supported; merge \
                 the adapter into the weights with PEFT (`merge_and_unload`) and load the merged checkpoint"
                    .into(),
            ));
        }
        let alpha = match get("lora_alpha") {
            None => None,
            Some(x) => Some(
                x.as_f64()
                    .filter(|a| a.is_finite())
                    .ok_or_else(|| bad(format!("metadata lora_alpha = {x} is not a number")))?,
            ),
        };
        let rank = match get("r") {
            None => None,
            Some(x) => {
                Some(x.as_u64().filter(|r| *r >= 1).ok_or_else(|| bad(format!("metadata r = {x} is not a rank ≥ 1")))?
                    as usize)
            }
        };
        Ok(LoraMeta { rank, alpha, rslora: flag("use_rslora")? })
    }

    /// Reads adapters from a LoRA file in any of the layouts diffusers' Wan loader reads:
    /// - PEFT/diffusers: `transformer.{module}.lora_{A,B}[.default].weight`, alpha from the
    ///   `lora_adapter_metadata` or, absent that, `alpha = rank`;
    /// - original Wan names (`diffusion_model.blocks.0.self_attn.q.lora_{A,B}.weight`, or
    ///   `lora_down` / `lora_up` with a per-module `.alpha`);
    /// - musubi-tuner / kohya (`lora_unet_blocks_0_self_attn_q.lora_down.weight`, `.lora_up`, `.alpha`).
    ///
    /// A per-module `.alpha` is folded into `lora_A` (`A·alpha/rank`, then the file's scale is 1), as
    /// diffusers converts such files. Bias deltas (`lora_B.bias`, and `.diff_b` outside norms) are
    /// kept with their module and scaled like it, as PEFT's `lora_bias` does; diffusers applies the
    /// original-Wan ones and drops musubi ones with a warning, medgen applies both. Norm `.diff` /
    /// `.diff_b` keys (zeros in the files that carry them) are skipped as diffusers skips them;
    /// other keys are refused by name. Tensors are converted to `dtype`. Ranks must agree across
    /// modules. Metadata `use_rslora` scales by `alpha/√rank`, as PEFT does; `use_dora` is refused.
    pub fn load(path: &Path, dtype: DType) -> Result<LoraWeights> {
        let bad = |msg: String| Error::SafeTensors { path: path.to_path_buf(), msg };
        let file = SafeTensorsFile::open(path)?;
        let ck = Checkpoint::open_file(path)?;
        let mut a: BTreeMap<String, String> = BTreeMap::new();
        let mut b: BTreeMap<String, String> = BTreeMap::new();
        let mut alphas: BTreeMap<String, String> = BTreeMap::new();
        let mut biases: BTreeMap<String, String> = BTreeMap::new();
        for key in ck.keys() {
            let Some((module, part)) = split_lora_key(key).map_err(bad)? else { continue };
            let module = original_to_diffusers(&format!("{module}.weight"))
                .and_then(|w| w.strip_suffix(".weight").map(str::to_string))
                .unwrap_or(module);
            let (slot, what) = match part {
                LoraPart::A => (&mut a, "lora_A"),
                LoraPart::B => (&mut b, "lora_B"),
                LoraPart::Alpha => (&mut alphas, "alpha"),
                LoraPart::Bias => (&mut biases, "bias"),
            };
            if slot.insert(module.clone(), key.to_string()).is_some() {
                return Err(bad(format!("module {module:?} has two {what} tensors")));
            }
        }
        if let Some(m) = alphas.keys().find(|m| !a.contains_key(*m)) {
            return Err(bad(format!("module {m:?} has an alpha but no lora_A / lora_down weight")));
        }
        // A time-projection bias without its weights (AccVideo's files) is dropped, as diffusers
        // drops it; any other lone bias is refused.
        biases.retain(|m, _| a.contains_key(m) || m != "condition_embedder.time_proj");
        if let Some((m, key)) = biases.iter().find(|(m, _)| !a.contains_key(*m)) {
            return Err(bad(format!(
                "{key}: a bias delta for {m:?} without lora_A / lora_B weights (bias-only adapters are not supported)"
            )));
        }
        if a.keys().ne(b.keys()) {
            let lone: Vec<&String> =
                a.keys().filter(|k| !b.contains_key(*k)).chain(b.keys().filter(|k| !a.contains_key(*k))).collect();
            return Err(bad(format!("modules without both lora_A and lora_B: {lone:?}")));
        }
        if a.is_empty() {
            return Err(bad("no LoRA tensors".into()));
        }
        let meta = Self::metadata(&file, &bad)?;
        let mut modules = Vec::new();
        let mut rank = None;
        for (module, ka) in &a {
            let mut ta = ck.load_as(ka, dtype)?;
            let tb = ck.load_as(&b[module], dtype)?;
            if ta.rank() != 2 || tb.rank() != 2 || ta.shape()[0] != tb.shape()[1] {
                return Err(bad(format!(
                    "{module}: lora_A {:?} and lora_B {:?} do not form [r, in] / [out, r]",
                    ta.shape(),
                    tb.shape()
                )));
            }
            if let Some(kalpha) = alphas.get(module) {
                // Float in the files we know; an integer scalar is read too.
                let alpha = match ck.load_as(kalpha, DType::F32) {
                    Ok(t) => t.to_vec_f32()?,
                    Err(Error::UnsupportedStoredDType { .. }) => {
                        file.load_ints(kalpha)?.0.into_iter().map(|v| v as f32).collect()
                    }
                    Err(e) => return Err(e),
                };
                let (&[alpha], r) = (alpha.as_slice(), ta.shape()[0]) else {
                    return Err(bad(format!("{kalpha}: an alpha is one number, got {} values", alpha.len())));
                };
                if !alpha.is_finite() || r == 0 {
                    return Err(bad(format!("{kalpha} = {alpha} (rank {r})")));
                }
                ta = scale(&ta, meta.scale(alpha as f64, r))?.to_dtype(dtype)?;
            } else if !alphas.is_empty()
                && let Some(alpha) = meta.alpha
            {
                // Other modules carry their own alpha tensors (folded into lora_A): this one
                // takes the metadata's.
                let r = ta.shape()[0];
                ta = scale(&ta, meta.scale(alpha, r))?.to_dtype(dtype)?;
            }
            let bias = match biases.get(module) {
                Some(kb) => {
                    let t = ck.load_as(kb, dtype)?;
                    if t.shape() != [tb.shape()[0]] {
                        return Err(bad(format!(
                            "{kb}: a bias delta of shape {:?} for lora_B {:?} (want [{}])",
                            t.shape(),
                            tb.shape(),
                            tb.shape()[0]
                        )));
                    }
                    Some(t)
                }
                None => None,
            };
            for (t, which) in [(&ta, "lora_A"), (&tb, "lora_B")].into_iter().chain(bias.as_ref().map(|t| (t, "bias"))) {
                if t.to_vec_f32()?.iter().any(|v| !v.is_finite()) {
                    return Err(bad(format!("{module}: {which} holds NaN or infinite values")));
                }
            }
            let r = ta.shape()[0];
            if *rank.get_or_insert(r) != r {
                return Err(bad(format!("{module}: rank {r} differs from the other modules' {}", rank.unwrap_or(0))));
            }
            modules.push(LoraModule { name: module.clone(), a: ta, b: tb, bias });
        }
        let rank = rank.unwrap_or_else(|| unreachable!("non-empty"));
        if let Some(r) = meta.rank
            && r != rank
        {
            return Err(bad(format!("metadata r = {r} but the tensors have rank {rank}")));
        }
        // The merge scales by alpha / rank: per-module alphas are folded into lora_A above.
        let alpha = if alphas.is_empty() {
            meta.scale(meta.alpha.unwrap_or(rank as f64), rank) * rank as f64
        } else {
            rank as f64
        };
        Ok(LoraWeights { rank, alpha, modules })
    }
}
