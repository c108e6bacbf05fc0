//! The Wan2.1 text-to-video DiT (diffusers `WanTransformer3DModel`, original `WanModel`):
//! config, weights, forward pass and hand-written backward pass (WAN_SPEC §1, §2, §6).
//!
//! * [`config`]: [`WanDitConfig`] (diffusers `config.json` names), presets, validation,
//!   parameter shapes and count.
//! * this file: [`WanDit`] — parameters under their diffusers names, loading from either key
//!   layout ([`WanDit::load`]), random initialisation ([`WanDit::init`]).
//! * [`forward`](WanDit::forward) / [`forward_train`](WanDit::forward_train): the forward pass, the
//!   latter keeping a [`Tape`] of what the backward pass needs.
//! * [`backward`](WanDit::backward): gradients of every parameter ([`Grads`]), built from the
//!   op backwards of [`crate::ops`] (no autograd).
//! * [`verify()`]: runs a `wan_dit` reference fixture.
//!
//! # Precision
//!
//! With `dtype` `F32` (or `F64`) every weight and activation has that dtype. With `BF16`/`F16`
//! weights are stored in the half type except the modules diffusers keeps in fp32
//! (`time_embedder`, every `scale_shift_table`, the `norm2` LayerNorm); linear-layer inputs are
//! rounded to the half type (bf16 GEMM inputs, f32 accumulation) while LayerNorm/RMSNorm
//! statistics, modulation, the residual stream, RoPE, softmax and the timestep embedding stay in
//! f32 (WAN_SPEC §1.5). Gradients are returned in f32 (f64 for an f64 model).

mod backward;
pub mod config;
mod forward;
mod verify;

use std::collections::HashMap;

pub use backward::{GradRequest, Grads};
pub use config::WanDitConfig;
pub use forward::{Tape, TrainOptions};
pub use verify::verify;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::source::TensorSource;
use crate::io::wan_keys::{COMFY_PREFIX, WanDitFormat, WanKeyMap, diffusers_to_original};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Indices of a linear layer's weight and bias in the parameter list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lin {
    pub w: usize,
    pub b: usize,
}

/// Parameter indices of one attention layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnIdx {
    pub q: Lin,
    pub k: Lin,
    pub v: Lin,
    pub o: Lin,
    pub norm_q: usize,
    pub norm_k: usize,
}

/// Parameter indices of one transformer block.
#[derive(Debug, Clone)]
pub(crate) struct BlockIdx {
    pub table: usize,
    pub attn1: AttnIdx,
    pub attn2: AttnIdx,
    /// `norm2` (weight, bias) when `cross_attn_norm`.
    pub norm2: Option<(usize, usize)>,
    pub ffn1: Lin,
    pub ffn2: Lin,
}

/// Parameter indices of the whole network.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    pub patch: Lin,
    pub time1: Lin,
    pub time2: Lin,
    pub time_proj: Lin,
    pub text1: Lin,
    pub text2: Lin,
    pub blocks: Vec<BlockIdx>,
    pub head_table: usize,
    pub proj_out: Lin,
}

impl Index {
    fn new(names: &[String]) -> Index {
        let pos: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        // The names come from `WanDitConfig::parameter_shapes`, which lists every name used here.
        let p = |n: &str| *pos.get(n).unwrap_or_else(|| unreachable!("parameter list lacks {n}"));
        let lin = |n: &str| Lin { w: p(&format!("{n}.weight")), b: p(&format!("{n}.bias")) };
        let attn = |pre: &str| AttnIdx {
            q: lin(&format!("{pre}.to_q")),
            k: lin(&format!("{pre}.to_k")),
            v: lin(&format!("{pre}.to_v")),
            o: lin(&format!("{pre}.to_out.0")),
            norm_q: p(&format!("{pre}.norm_q.weight")),
            norm_k: p(&format!("{pre}.norm_k.weight")),
        };
        let mut blocks = Vec::new();
        for i in 0.. {
            let b = format!("blocks.{i}");
            let Some(&table) = pos.get(format!("{b}.scale_shift_table").as_str()) else { break };
            let w2 = format!("{b}.norm2.weight");
            blocks.push(BlockIdx {
                table,
                attn1: attn(&format!("{b}.attn1")),
                attn2: attn(&format!("{b}.attn2")),
                norm2: pos.get(w2.as_str()).map(|&w| (w, p(&format!("{b}.norm2.bias")))),
                ffn1: lin(&format!("{b}.ffn.net.0.proj")),
                ffn2: lin(&format!("{b}.ffn.net.2")),
            });
        }
        Index {
            patch: lin("patch_embedding"),
            time1: lin("condition_embedder.time_embedder.linear_1"),
            time2: lin("condition_embedder.time_embedder.linear_2"),
            time_proj: lin("condition_embedder.time_proj"),
            text1: lin("condition_embedder.text_embedder.linear_1"),
            text2: lin("condition_embedder.text_embedder.linear_2"),
            blocks,
            head_table: p("scale_shift_table"),
            proj_out: lin("proj_out"),
        }
    }
}

/// Whether diffusers keeps a parameter in fp32 in a half-precision model
/// (`_keep_in_fp32_modules`: `time_embedder`, `scale_shift_table`, `norm1/2/3`).
fn kept_in_fp32(name: &str) -> bool {
    name.split('.').any(|c| matches!(c, "time_embedder" | "scale_shift_table" | "norm1" | "norm2" | "norm3"))
}

/// The Wan2.1 DiT with its weights.
#[derive(Debug, Clone)]
pub struct WanDit {
    cfg: WanDitConfig,
    dtype: DType,
    names: Vec<String>,
    params: Vec<Tensor>,
    pub(crate) idx: Index,
}

impl WanDit {
    /// The storage dtype of parameter `name` in a model of dtype `dtype`.
    fn param_dtype(name: &str, dtype: DType) -> DType {
        match dtype {
            DType::BF16 | DType::F16 if kept_in_fp32(name) => DType::F32,
            d => d,
        }
    }

    fn check_dtype(dtype: DType) -> Result<()> {
        // Every storage dtype works; the check exists so that a future one is a conscious choice.
        match dtype {
            DType::F32 | DType::BF16 | DType::F16 | DType::F64 => Ok(()),
        }
    }

    fn assemble(cfg: WanDitConfig, dtype: DType, names: Vec<String>, params: Vec<Tensor>) -> WanDit {
        let idx = Index::new(&names);
        WanDit { cfg, dtype, names, params, idx }
    }

    /// Loads the weights from a checkpoint (or any [`TensorSource`]) in the diffusers, original
    /// or ComfyUI key layout (detected with [`crate::io::wan_keys`]), converting to `dtype`.
    ///
    /// Every tensor's shape is checked against the config ([`Error::WeightShape`] names the
    /// stored key); a missing tensor is [`Error::MissingKey`] with the name as the checkpoint's
    /// layout spells it; tensors the config does not use (more blocks, image-to-video extras) are
    /// an [`Error::Config`] listing them, since they mean the config does not match the file.
    pub fn load(cfg: WanDitConfig, src: &dyn TensorSource, dtype: DType) -> Result<WanDit> {
        cfg.validate()?;
        Self::check_dtype(dtype)?;
        let stored_names = src.names();
        let keys = WanKeyMap::new(stored_names.iter().map(String::as_str))?;
        let shapes = cfg.parameter_shapes();
        let mut names = Vec::with_capacity(shapes.len());
        let mut params = Vec::with_capacity(shapes.len());
        for (name, shape) in &shapes {
            let stored = keys.to_stored.get(name).ok_or_else(|| {
                Error::MissingKey(match keys.format {
                    WanDitFormat::Diffusers => name.clone(),
                    WanDitFormat::Original => diffusers_to_original(name).unwrap_or_else(|| name.clone()),
                    WanDitFormat::ComfyUi => {
                        format!("{COMFY_PREFIX}{}", diffusers_to_original(name).unwrap_or_else(|| name.clone()))
                    }
                })
            })?;
            params.push(src.load_checked(stored, shape, Self::param_dtype(name, dtype))?);
            names.push(name.clone());
        }
        let used: std::collections::HashSet<&str> = shapes.iter().map(|(n, _)| n.as_str()).collect();
        let mut extra: Vec<&str> = keys
            .to_stored
            .iter()
            .filter(|(d, _)| !used.contains(d.as_str()))
            .map(|(_, s)| s.as_str())
            .chain(keys.unmapped.iter().map(String::as_str))
            .collect();
        if !extra.is_empty() {
            extra.sort();
            let n = extra.len();
            extra.truncate(6);
            return Err(Error::Config {
                model: "wan_dit",
                msg: format!(
                    "the checkpoint holds {n} tensor(s) this config does not use (e.g. {extra:?}); \
                     does config.json match the checkpoint (num_layers, cross_attn_norm, text-to-video)?"
                ),
            });
        }
        Ok(Self::assemble(cfg, dtype, names, params))
    }

    /// Random initialisation for training from scratch, as the diffusers module constructors
    /// do it: every linear layer and the patch-embedding convolution get PyTorch's default
    /// `U(−1/√fan_in, 1/√fan_in)` for weight and bias, RMSNorm/LayerNorm weights 1 and biases 0,
    /// and the modulation tables (`blocks.i.scale_shift_table`, `scale_shift_table`)
    /// `randn/√D`. diffusers' T2V model has no zero-initialised parameters (unlike the original
    /// Wan repository's `init_weights`, which zeroes the output projection).
    pub fn init(cfg: WanDitConfig, rng: &mut Rng, dtype: DType) -> Result<WanDit> {
        cfg.validate()?;
        Self::check_dtype(dtype)?;
        let d = cfg.inner_dim();
        let shapes = cfg.parameter_shapes();
        let fan_in: HashMap<String, usize> = shapes
            .iter()
            .filter(|(n, _)| n.ends_with(".weight") && shapes.iter().any(|(m, _)| *m == n.replace(".weight", ".bias")))
            .map(|(n, s)| (n.trim_end_matches(".weight").to_string(), s[1..].iter().product()))
            .collect();
        let mut names = Vec::with_capacity(shapes.len());
        let mut params = Vec::with_capacity(shapes.len());
        for (name, shape) in shapes {
            let pd = Self::param_dtype(&name, dtype);
            let module = name.rsplit_once('.').map(|(m, _)| m).unwrap_or("");
            let t = if name.ends_with("scale_shift_table") {
                Tensor::randn(&shape, 1.0 / (d as f64).sqrt(), pd, rng)
            } else if name.contains("norm") {
                let v = if name.ends_with(".weight") { 1.0 } else { 0.0 };
                Tensor::full(&shape, v, pd, crate::tensor::Device::Cpu)?
            } else {
                let fi = *fan_in.get(module).unwrap_or_else(|| unreachable!("{name} is a linear or conv parameter"));
                let bound = 1.0 / (fi as f64).sqrt();
                Tensor::rand_uniform(&shape, -bound, bound, pd, rng)
            };
            names.push(name);
            params.push(t);
        }
        Ok(Self::assemble(cfg, dtype, names, params))
    }

    /// The model with every parameter on `device` (a no-op copy for parameters already there).
    /// Inputs must live on the same device: `forward` and `backward` run where the weights are.
    pub fn to_device(&self, device: crate::tensor::Device) -> Result<WanDit> {
        let params = self.params.iter().map(|p| p.to_device(device)).collect::<Result<Vec<_>>>()?;
        Ok(WanDit {
            cfg: self.cfg.clone(),
            dtype: self.dtype,
            names: self.names.clone(),
            params,
            idx: self.idx.clone(),
        })
    }

    /// Where the weights live.
    pub fn device(&self) -> crate::tensor::Device {
        self.params.first().map(Tensor::device).unwrap_or(crate::tensor::Device::Cpu)
    }

    /// The config.
    pub fn config(&self) -> &WanDitConfig {
        &self.cfg
    }

    /// The model dtype given at load/init time.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every parameter with its diffusers name, in [`WanDitConfig::parameter_shapes`] order.
    pub fn named_parameters(&self) -> Vec<(&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.params).collect()
    }

    /// Mutable access to every parameter (for optimisers), with its diffusers name.
    pub fn named_parameters_mut(&mut self) -> Vec<(&str, &mut Tensor)> {
        self.names.iter().map(String::as_str).zip(self.params.iter_mut()).collect()
    }

    /// One parameter by diffusers name.
    pub fn parameter(&self, name: &str) -> Option<&Tensor> {
        self.names.iter().position(|n| n == name).map(|i| &self.params[i])
    }

    /// Replaces one parameter (same shape; converted to the parameter's dtype and moved to its device).
    pub fn set_parameter(&mut self, name: &str, value: &Tensor) -> Result<()> {
        let i = self.names.iter().position(|n| n == name).ok_or_else(|| Error::MissingKey(name.to_string()))?;
        if value.shape() != self.params[i].shape() {
            return Err(Error::WeightShape {
                name: name.to_string(),
                expected: self.params[i].shape().to_vec(),
                got: value.shape().to_vec(),
            });
        }
        self.params[i] = value.to_device(self.params[i].device())?.to_dtype(self.params[i].dtype())?;
        Ok(())
    }

    /// Parameter by index.
    pub(crate) fn p(&self, i: usize) -> &Tensor {
        &self.params[i]
    }

    /// Parameter names, index-aligned with the internal parameter list.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// The dtype linear-layer inputs are rounded to (`None`: keep the activation's dtype).
    pub(crate) fn gemm_input_dtype(&self) -> Option<DType> {
        matches!(self.dtype, DType::BF16 | DType::F16).then_some(self.dtype)
    }
}
