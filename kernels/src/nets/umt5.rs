//! The umT5 encoder, Wan2.1's text conditioning (WAN_SPEC §4): transformers'
//! `UMT5EncoderModel` / Wan's `T5Encoder` (`umt5_xxl`, encoder only), inference only.
//!
//! ```text
//! x = Embedding[ids]                                   (no scaling)
//! per layer:  y = RMS(x)                               (T5 layer norm: x·rsqrt(mean(x²)+eps)·w, no bias)
//!             s = (y·Wq)(y·Wk)ᵀ + bias_layer[bucket(j − i)] + mask_add     (NO 1/√d scaling)
//!             x = x + softmax(s)·(y·Wv)·Wo
//!             y = RMS(x)
//!             x = x + (act(y·Wi0) ⊙ (y·Wi1))·Wo_ff     (gated-gelu: act = GELU-tanh on `wi_0`)
//! x = RMS_final(x)
//! ```
//!
//! Unlike T5, every umT5 layer owns its relative-position bias table `[num_buckets, heads]`. The
//! bucket of a key/query offset is [`relative_position_bucket`] (bidirectional). Padded keys get
//! the dtype's lowest value added to their scores (as transformers and Wan do); padded queries are
//! computed but meaningless, which is why the Wan pipelines zero those rows
//! ([`UMT5Encoder::encode_for_wan`]).
//!
//! Weights load from transformers' names (`shared.weight`, `encoder.block.{i}.layer.0.SelfAttention.q.weight`, …)
//! or from the Wan2.1 original names (`token_embedding.weight`, `blocks.{i}.attn.q.weight`, …;
//! `models_t5_umt5-xxl-enc-bf16.pth` converted to safetensors), detected from the keys present.
//!
//! This file also holds the pieces the two text encoders share: [`Activation`] and the masked,
//! biased softmax attention `masked_attention`.

use serde::Deserialize;

use super::tokenizer::{TokenBatch, Tokenizer, WAN_TEXT_LEN};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::TensorSource;
use crate::ops::activation::{clamp, gelu_erf, gelu_tanh, silu, softmax};
use crate::ops::elementwise::{add, mul, scale};
use crate::ops::linear::{linear, linear_gelu_tanh, matmul};
use crate::ops::norm::rms_norm;
use crate::ops::shape::embedding;
use crate::tensor::{Device, Tensor};
use crate::verify::{Check, Fixture, Limit, VerifyOptions, compare_slices};

// ---------------------------------------------------------------------------------------------
// shared by the text encoders

/// `quick_gelu`'s slope.
const QUICK_GELU_K: f64 = 1.702;

/// A feed-forward activation named as in transformers' `ACT2FN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation (umT5's gated-gelu).
    GeluTanh,
    /// `gelu`: the exact erf form (BERT).
    GeluErf,
    /// `relu`.
    Relu,
    /// `silu` / `swish`.
    Silu,
    /// `relu6`: `min(max(x, 0), 6)`.
    Relu6,
    /// `quick_gelu`: `x·σ(1.702·x)` (CLIP's).
    QuickGelu,
}

impl Activation {
    /// Parses a transformers activation name.
    pub fn from_name(name: &str) -> Option<Activation> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_accurate" => Some(Activation::GeluTanh),
            "gelu" | "gelu_python" => Some(Activation::GeluErf),
            "relu" => Some(Activation::Relu),
            "silu" | "swish" => Some(Activation::Silu),
            "relu6" => Some(Activation::Relu6),
            "quick_gelu" => Some(Activation::QuickGelu),
            _ => None,
        }
    }

    /// `act(x·Wᵀ)`; GELU-tanh runs in the GEMM's epilogue on CUDA ([`linear_gelu_tanh`]).
    pub fn apply_linear(self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluTanh => linear_gelu_tanh(x, w, None),
            _ => self.apply(&linear(x, w, None)?),
        }
    }

    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluTanh => gelu_tanh(x),
            Activation::GeluErf => gelu_erf(x),
            Activation::Relu => clamp(x, 0.0, f64::INFINITY),
            Activation::Silu => silu(x),
            Activation::Relu6 => clamp(x, 0.0, 6.0),
            // x·σ(k·x) = silu(k·x)/k.
            Activation::QuickGelu => scale(&silu(&scale(x, QUICK_GELU_K)?)?, 1.0 / QUICK_GELU_K),
        }
    }
}

/// Checks a `[batch, seq]` id/mask pair: lengths, ids in `0..vocab`, mask in {0, 1}.
pub(crate) fn check_tokens(
    op: &'static str,
    ids: &[i64],
    mask: &[i64],
    shape: [usize; 2],
    vocab: usize,
) -> Result<Vec<usize>> {
    let n = shape[0] * shape[1];
    if shape[0] == 0 || shape[1] == 0 {
        return Err(Error::arg(op, format!("empty token batch {shape:?}")));
    }
    if ids.len() != n || mask.len() != n {
        return Err(Error::shape(
            op,
            format!("input_ids has {} and attention_mask {} entries for shape {shape:?}", ids.len(), mask.len()),
        ));
    }
    if let Some(bad) = mask.iter().find(|&&m| m != 0 && m != 1) {
        return Err(Error::arg(op, format!("attention_mask holds {bad}; expected only 0 and 1")));
    }
    ids.iter()
        .map(|&i| {
            usize::try_from(i)
                .ok()
                .filter(|&u| u < vocab)
                .ok_or_else(|| Error::arg(op, format!("token id {i} is outside the vocabulary of {vocab}")))
        })
        .collect()
}

/// Multi-head softmax attention over `[B, L, H·d]` projections with a key-padding mask and an
/// optional additive per-head bias `[1, H, L, L]`:
/// `softmax(scale·q·kᵀ + bias + mask_add)·v`, where `mask_add` is 0 for kept keys and the compute
/// type's lowest finite value for padded ones (transformers' `(1 − mask)·finfo.min`). Computed in
/// f32 (f64 for f64 inputs); the result has `q`'s dtype. Forward only (the text encoders are frozen).
pub(crate) fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale_by: Option<f64>,
    bias: Option<&Tensor>,
    mask: &[i64],
) -> Result<Tensor> {
    const OP: &str = "masked_attention";
    let &[b, l, inner] = q.shape() else {
        return Err(Error::rank(OP, "3 ([B, L, H·d])", q.shape()));
    };
    if k.shape() != q.shape() || v.shape() != q.shape() || heads == 0 || inner % heads != 0 || mask.len() != b * l {
        return Err(Error::shape(
            OP,
            format!("q {:?}, k {:?}, v {:?}, {heads} heads, mask of {}", q.shape(), k.shape(), v.shape(), mask.len()),
        ));
    }
    let d = inner / heads;
    let ct = if q.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let split =
        |t: &Tensor, perm: &[usize]| -> Result<Tensor> { t.to_dtype(ct)?.reshape(&[b, l, heads, d])?.permute(perm) };
    let q4 = split(q, &[0, 2, 1, 3])?; // [B, H, L, d]
    let kt = split(k, &[0, 2, 3, 1])?; // [B, H, d, L]
    let v4 = split(v, &[0, 2, 1, 3])?; // [B, H, L, d]
    let mut s = matmul(&q4, &kt)?; // [B, H, L, L]
    if let Some(sc) = scale_by {
        s = scale(&s, sc)?;
    }
    let lowest = if ct == DType::F64 { f64::MIN } else { f32::MIN as f64 };
    let add_mask: Vec<f64> = mask.iter().map(|&m| if m != 0 { 0.0 } else { lowest }).collect();
    let add_mask = Tensor::from_f64_slice(&add_mask, &[b, 1, 1, l], ct)?.to_device(q.device())?;
    let bias_and_mask = match bias {
        Some(bias) => add(&bias.to_dtype(ct)?, &add_mask)?, // [B, H, L, L], as transformers sums them first
        None => add_mask,
    };
    s = add(&s, &bias_and_mask)?;
    let p = softmax(&s)?;
    let o = matmul(&p, &v4)?; // [B, H, L, d]
    o.permute(&[0, 2, 1, 3])?.reshape(&[b, l, inner])?.to_dtype(q.dtype())
}

// ---------------------------------------------------------------------------------------------
// config

/// The encoder's config, with transformers' `UMT5Config` field names and defaults (unknown
/// `config.json` fields are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UMT5Config {
    /// Vocabulary size (rows of the token embedding).
    pub vocab_size: usize,
    /// Model width.
    pub d_model: usize,
    /// Per-head width of q/k/v.
    pub d_kv: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative-position buckets (split in two halves for the bidirectional encoder).
    pub relative_attention_num_buckets: usize,
    /// Offsets at or beyond this land in the last bucket.
    pub relative_attention_max_distance: usize,
    /// RMS norm epsilon.
    pub layer_norm_epsilon: f64,
    /// `"gated-gelu"` (umT5: GELU-tanh on `wi_0` times `wi_1`), `"relu"`, `"gelu"`, `"gated-silu"`, ….
    pub feed_forward_proj: String,
    /// Padding id.
    pub pad_token_id: i64,
    /// End-of-sequence id (appended by the tokenizer).
    pub eos_token_id: i64,
}

impl Default for UMT5Config {
    /// transformers' `UMT5Config()` defaults (google/umt5-small).
    fn default() -> Self {
        UMT5Config {
            vocab_size: 250112,
            d_model: 512,
            d_kv: 64,
            d_ff: 1024,
            num_layers: 8,
            num_heads: 6,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            pad_token_id: 0,
            eos_token_id: 1,
        }
    }
}

/// The feed-forward shape a `feed_forward_proj` string implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedForward {
    /// `act(wi_0·y) ⊙ (wi_1·y)` when true, `act(wi·y)` otherwise.
    pub gated: bool,
    /// The activation.
    pub act: Activation,
}

impl UMT5Config {
    /// The umT5-XXL encoder Wan2.1 uses (google/umt5-xxl; WAN_SPEC §4.1).
    pub fn umt5_xxl_encoder() -> UMT5Config {
        UMT5Config {
            vocab_size: 256384,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            ..UMT5Config::default()
        }
    }

    /// Parses `config.json` content (transformers names), then [`validate`](Self::validate)s it.
    pub fn from_json(json: &str) -> Result<UMT5Config> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::Config { model: "umt5", msg: format!("not JSON: {e}") })?;
        Self::from_value(&v)
    }

    /// Reads a `config.json` file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<UMT5Config> {
        let path = path.as_ref();
        let s = crate::io::read_text(path)?;
        Self::from_json(&s).map_err(|e| match e {
            Error::Config { model, msg } => Error::Config { model, msg: format!("{}: {msg}", path.display()) },
            e => e,
        })
    }

    /// From an already parsed JSON object (e.g. a fixture's `config` metadata).
    pub fn from_value(v: &serde_json::Value) -> Result<UMT5Config> {
        let cfg: UMT5Config = serde_path_to_error::deserialize(v.clone())
            .map_err(|e| Error::Config { model: "umt5", msg: format!("field `{}`: {}", e.path(), e.inner()) })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the sizes and the feed-forward kind.
    pub fn validate(&self) -> Result<()> {
        use crate::nets::{MAX_LAYERS, MAX_WIDTH, check_bounds};
        check_bounds(
            "umt5",
            &[
                ("vocab_size", self.vocab_size, 1 << 24),
                ("d_model", self.d_model, MAX_WIDTH),
                ("d_kv", self.d_kv, MAX_WIDTH),
                ("d_ff", self.d_ff, MAX_WIDTH),
                ("num_heads", self.num_heads, MAX_WIDTH),
                ("num_layers", self.num_layers, MAX_LAYERS),
                ("relative_attention_num_buckets", self.relative_attention_num_buckets, MAX_WIDTH),
                ("relative_attention_max_distance", self.relative_attention_max_distance, MAX_WIDTH),
                ("num_heads × d_kv", self.num_heads.saturating_mul(self.d_kv), MAX_WIDTH),
            ],
        )?;
        let bad = |msg: String| Err(Error::Config { model: "umt5", msg });
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
        ] {
            if v == 0 {
                return bad(format!("{name} must be > 0"));
            }
        }
        let nb = self.relative_attention_num_buckets;
        // Each direction gets ⌊nb/2⌋ buckets, half of them exact: at least 2 per direction (an odd
        // count leaves its last bucket unused, as in transformers).
        if nb < 4 {
            return bad(format!("relative_attention_num_buckets = {nb}; expected at least 4"));
        }
        if self.relative_attention_max_distance <= nb / 4 {
            return bad(format!(
                "relative_attention_max_distance = {} must exceed the exact-bucket range {}",
                self.relative_attention_max_distance,
                nb / 4
            ));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon < 0.0 {
            return bad(format!("layer_norm_epsilon = {}", self.layer_norm_epsilon));
        }
        self.feed_forward()?;
        Ok(())
    }

    /// What `feed_forward_proj` means, as transformers reads it: `"[gated-]ACT"`, and
    /// `"gated-gelu"` uses `gelu_new` (the tanh approximation).
    pub fn feed_forward(&self) -> Result<FeedForward> {
        let p = self.feed_forward_proj.as_str();
        let parts: Vec<&str> = p.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [act] => (false, *act),
            ["gated", act] => (true, *act),
            _ => {
                return Err(Error::Config {
                    model: "umt5",
                    msg: format!("feed_forward_proj {p:?} is not of the form `gated-ACT` or `ACT`"),
                });
            }
        };
        let act = if p == "gated-gelu" { "gelu_new" } else { act };
        let act = Activation::from_name(act).ok_or_else(|| Error::Config {
            model: "umt5",
            msg: format!(
                "feed_forward_proj {p:?}: activation {act:?} is not supported (gelu, gelu_new, \
                 gelu_pytorch_tanh, gelu_fast, gelu_accurate, gelu_python, relu, relu6, silu, swish, quick_gelu)"
            ),
        })?;
        Ok(FeedForward { gated, act })
    }

    /// `num_heads · d_kv`.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

/// The bucket of relative offset `relative_position = key_pos − query_pos` (T5/umT5):
/// bidirectional → half the buckets for each sign (`base = num_buckets/2` when the key is after
/// the query); within a half of `n` buckets, offsets below `n/2` get their own bucket and larger
/// ones a log-spaced bucket up to `max_distance`, clamped to `n − 1`. The log branch is evaluated in
/// f32 with the `ln(max_distance/max_exact)` denominator in f64, as PyTorch evaluates it.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut n = num_buckets as i64;
    let mut base = 0i64;
    let a = if bidirectional {
        n /= 2;
        if relative_position > 0 {
            base = n;
        }
        relative_position.unsigned_abs() as i64
    } else {
        (-relative_position.min(0)).max(0)
    };
    let max_exact = n / 2;
    let b = if a < max_exact {
        a
    } else {
        let denom = (max_distance as f64 / max_exact as f64).ln() as f32;
        let large = ((a as f32 / max_exact as f32).ln() / denom * (n - max_exact) as f32) as i64;
        (max_exact + large).min(n - 1)
    };
    (base + b) as usize
}

// ---------------------------------------------------------------------------------------------
// weights

/// Which key names a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UMT5Layout {
    /// transformers `UMT5EncoderModel` (`shared.weight`, `encoder.block.{i}.layer.…`).
    Transformers,
    /// Wan2.1 `T5Encoder` (`token_embedding.weight`, `blocks.{i}.…`).
    WanOriginal,
}

impl UMT5Layout {
    /// Detects the layout from the keys of `src`.
    pub fn detect(src: &dyn TensorSource) -> Result<UMT5Layout> {
        if src.contains("encoder.final_layer_norm.weight") {
            Ok(UMT5Layout::Transformers)
        } else if src.contains("norm.weight") && src.contains("blocks.0.attn.q.weight") {
            Ok(UMT5Layout::WanOriginal)
        } else {
            Err(Error::UnknownFormat(
                "not a umT5 encoder checkpoint: expected transformers keys (`encoder.final_layer_norm.weight`, \
                 `encoder.block.0.layer.0.SelfAttention.q.weight`, …) or Wan2.1 keys (`norm.weight`, \
                 `blocks.0.attn.q.weight`, …)"
                    .into(),
            ))
        }
    }

    /// The checkpoint name of weight `what` of layer `i` (names as in [`UMT5Layout::Transformers`]'s
    /// per-layer suffixes: `q`, `k`, `v`, `o`, `rel`, `norm1`, `norm2`, `wi_0`, `wi_1`, `wi`, `wo`).
    fn layer_key(self, i: usize, what: &str) -> String {
        match self {
            UMT5Layout::Transformers => {
                let p = format!("encoder.block.{i}.layer");
                match what {
                    "q" | "k" | "v" | "o" => format!("{p}.0.SelfAttention.{what}.weight"),
                    "rel" => format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                    "norm1" => format!("{p}.0.layer_norm.weight"),
                    "norm2" => format!("{p}.1.layer_norm.weight"),
                    _ => format!("{p}.1.DenseReluDense.{what}.weight"),
                }
            }
            UMT5Layout::WanOriginal => {
                let p = format!("blocks.{i}");
                match what {
                    "q" | "k" | "v" | "o" => format!("{p}.attn.{what}.weight"),
                    "rel" => format!("{p}.pos_embedding.embedding.weight"),
                    "norm1" | "norm2" => format!("{p}.{what}.weight"),
                    "wi_0" => format!("{p}.ffn.gate.0.weight"),
                    "wi_1" => format!("{p}.ffn.fc1.weight"),
                    "wo" => format!("{p}.ffn.fc2.weight"),
                    other => format!("{p}.ffn.{other}.weight"),
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Layer {
    norm1: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    /// `[num_buckets, heads]`.
    rel: Tensor,
    norm2: Tensor,
    /// `wi_0` (gated) or `wi`.
    wi: Tensor,
    /// `wi_1` (gated only).
    wi_1: Option<Tensor>,
    wo: Tensor,
}

/// The umT5 encoder with its weights.
#[derive(Debug, Clone)]
pub struct UMT5Encoder {
    cfg: UMT5Config,
    ffn: FeedForward,
    dtype: DType,
    layout: UMT5Layout,
    embed: Tensor,
    layers: Vec<Layer>,
    final_norm: Tensor,
}

impl UMT5Encoder {
    /// Loads the weights from `src` (layout detected from its keys), converted to `dtype`; every
    /// shape is checked against `cfg`.
    pub fn load(cfg: UMT5Config, src: &dyn TensorSource, dtype: DType) -> Result<UMT5Encoder> {
        cfg.validate()?;
        let ffn = cfg.feed_forward()?;
        let layout = UMT5Layout::detect(src)?;
        if layout == UMT5Layout::WanOriginal && !ffn.gated {
            return Err(Error::Config {
                model: "umt5",
                msg: "Wan2.1 checkpoints have a gated feed-forward; feed_forward_proj must be gated".into(),
            });
        }
        let (d, inner, ff, nb, h) =
            (cfg.d_model, cfg.inner_dim(), cfg.d_ff, cfg.relative_attention_num_buckets, cfg.num_heads);
        let embed_keys: &[&str] = match layout {
            UMT5Layout::Transformers => &["shared.weight", "encoder.embed_tokens.weight"],
            UMT5Layout::WanOriginal => &["token_embedding.weight"],
        };
        let embed_key =
            embed_keys.iter().find(|k| src.contains(k)).ok_or_else(|| Error::MissingKey(embed_keys.join(" (or) ")))?;
        let embed = src.load_checked(embed_key, &[cfg.vocab_size, d], dtype)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let w = |what: &str, shape: &[usize]| src.load_checked(&layout.layer_key(i, what), shape, dtype);
            let (wi, wi_1) =
                if ffn.gated { (w("wi_0", &[ff, d])?, Some(w("wi_1", &[ff, d])?)) } else { (w("wi", &[ff, d])?, None) };
            layers.push(Layer {
                norm1: w("norm1", &[d])?,
                q: w("q", &[inner, d])?,
                k: w("k", &[inner, d])?,
                v: w("v", &[inner, d])?,
                o: w("o", &[d, inner])?,
                // the bias table stays f32 (it is added to f32 scores)
                rel: src.load_checked(&layout.layer_key(i, "rel"), &[nb, h], DType::F32)?,
                norm2: w("norm2", &[d])?,
                wi,
                wi_1,
                wo: w("wo", &[d, ff])?,
            });
        }
        let final_key = match layout {
            UMT5Layout::Transformers => "encoder.final_layer_norm.weight",
            UMT5Layout::WanOriginal => "norm.weight",
        };
        let final_norm = src.load_checked(final_key, &[d], dtype)?;
        Ok(UMT5Encoder { cfg, ffn, dtype, layout, embed, layers, final_norm })
    }

    /// The encoder with its weights on `device` (the small relative-position tables stay on the
    /// host, where the per-call bias is built). Token ids and masks are always host slices.
    pub fn to_device(&self, device: Device) -> Result<UMT5Encoder> {
        let mv = |t: &Tensor| t.to_device(device);
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    norm1: mv(&l.norm1)?,
                    q: mv(&l.q)?,
                    k: mv(&l.k)?,
                    v: mv(&l.v)?,
                    o: mv(&l.o)?,
                    rel: l.rel.clone(),
                    norm2: mv(&l.norm2)?,
                    wi: mv(&l.wi)?,
                    wi_1: l.wi_1.as_ref().map(mv).transpose()?,
                    wo: mv(&l.wo)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(UMT5Encoder {
            cfg: self.cfg.clone(),
            ffn: self.ffn,
            dtype: self.dtype,
            layout: self.layout,
            embed: mv(&self.embed)?,
            layers,
            final_norm: mv(&self.final_norm)?,
        })
    }

    /// Where the weights live.
    pub fn device(&self) -> Device {
        self.embed.device()
    }

    /// The config.
    pub fn config(&self) -> &UMT5Config {
        &self.cfg
    }

    /// The key layout the weights were loaded from.
    pub fn layout(&self) -> UMT5Layout {
        self.layout
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The per-head bias `[1, H, L, L]` of one layer for sequence length `l`.
    fn position_bias(&self, layer: &Layer, buckets: &[usize], l: usize) -> Result<Tensor> {
        let h = self.cfg.num_heads;
        let table = layer.rel.to_vec_f32()?;
        let mut out = vec![0f32; h * l * l];
        for (hi, plane) in out.chunks_mut(l * l).enumerate() {
            for (o, &bk) in plane.iter_mut().zip(buckets) {
                *o = table[bk * h + hi];
            }
        }
        Tensor::from_vec(out, &[1, h, l, l])
    }

    /// `last_hidden_state [B, L, d_model]` for `ids`/`mask` of shape `[B, L]` (row-major).
    /// Rows at padded positions are computed but meaningless (see [`encode_for_wan`](Self::encode_for_wan)).
    pub fn forward(&self, ids: &[i64], mask: &[i64], shape: [usize; 2]) -> Result<Tensor> {
        let idx = check_tokens("umt5", ids, mask, shape, self.cfg.vocab_size)?;
        let [b, l] = shape;
        let eps = self.cfg.layer_norm_epsilon;
        let buckets: Vec<usize> = (0..l * l)
            .map(|n| {
                let (i, j) = (n / l, n % l);
                relative_position_bucket(
                    j as i64 - i as i64,
                    true,
                    self.cfg.relative_attention_num_buckets,
                    self.cfg.relative_attention_max_distance,
                )
            })
            .collect();
        let mut x = embedding(&idx, &[b, l], &self.embed)?;
        for layer in &self.layers {
            let y = rms_norm(&x, &layer.norm1, eps)?;
            let (q, k, v) = (linear(&y, &layer.q, None)?, linear(&y, &layer.k, None)?, linear(&y, &layer.v, None)?);
            let bias = self.position_bias(layer, &buckets, l)?.to_device(x.device())?;
            let a = masked_attention(&q, &k, &v, self.cfg.num_heads, None, Some(&bias), mask)?;
            x = add(&x, &linear(&a, &layer.o, None)?)?;
            let y = rms_norm(&x, &layer.norm2, eps)?;
            let mut hdn = self.ffn.act.apply_linear(&y, &layer.wi)?;
            if let Some(wi_1) = &layer.wi_1 {
                hdn = mul(&hdn, &linear(&y, wi_1, None)?)?;
            }
            x = add(&x, &linear(&hdn, &layer.wo, None)?)?;
        }
        rms_norm(&x, &self.final_norm, eps)
    }

    /// The encoder output for a tokenised batch with every padded row (mask 0) set to exactly
    /// zero — the DiT context (WAN_SPEC §4.4 step 4). `[B, L, d_model]` in the weights' dtype.
    pub fn encode_tokens_for_wan(&self, tokens: &TokenBatch) -> Result<Tensor> {
        let hidden = self.forward(&tokens.ids, &tokens.attention_mask, tokens.shape())?;
        let d = self.cfg.d_model;
        let mut data = hidden.to_vec_f64()?;
        for (row, &m) in data.chunks_mut(d).zip(&tokens.attention_mask) {
            if m == 0 {
                row.fill(0.0);
            }
        }
        Tensor::from_f64_slice(&data, hidden.shape(), hidden.dtype())?.to_device(hidden.device())
    }

    /// Prompts → Wan2.1 text context `[B, 512, d_model]`: cleaned and tokenised as the pipelines do
    /// ([`Tokenizer::encode_umt5`]: `</s>` appended, cut/padded to 512 with `<pad>` = 0), encoded
    /// over all 512 positions with the mask, rows past each prompt's true length zeroed.
    pub fn encode_for_wan<S: AsRef<str>>(&self, tokenizer: &Tokenizer, prompts: &[S]) -> Result<Tensor> {
        let tokens = tokenizer.encode_umt5(prompts, WAN_TEXT_LEN)?;
        self.encode_tokens_for_wan(&tokens)
    }
}

/// The positions of `[B, L, d]` data whose mask is 1, gathered row by row.
pub(crate) fn valid_rows(data: &[f64], mask: &[i64], d: usize) -> Vec<f64> {
    data.chunks(d).zip(mask).filter(|(_, m)| **m != 0).flat_map(|(r, _)| r.iter().copied()).collect()
}

/// Runs a `umt5` fixture (`in.input_ids`, `in.attention_mask`, `out.last_hidden_state`, `w.*`):
/// compares the valid (mask 1) positions only, absolute limit 1e-5 by default.
pub fn verify(fx: &Fixture, opts: &VerifyOptions) -> Result<Vec<Check>> {
    let cfg = UMT5Config::from_value(&fx.config).map_err(|e| fx.error(e.to_string()))?;
    let enc = UMT5Encoder::load(cfg, &fx.weights(), opts.dtype)?.to_device(fx.device)?;
    let (ids, ishape) = fx.input_ints("input_ids")?;
    let (mask, mshape) = fx.input_ints("attention_mask")?;
    let &[b, l] = ishape.as_slice() else {
        return Err(fx.error(format!("in.input_ids has shape {ishape:?}; expected [B, L]")));
    };
    if mshape != ishape {
        return Err(fx.error(format!("in.attention_mask {mshape:?} does not match in.input_ids {ishape:?}")));
    }
    let got = enc.forward(&ids, &mask, [b, l])?;
    let want = fx.output("last_hidden_state")?;
    if want.shape() != got.shape() {
        return Err(fx.error(format!(
            "out.last_hidden_state is {:?}; the encoder gives {:?}",
            want.shape(),
            got.shape()
        )));
    }
    let d = enc.cfg.d_model;
    let (g, w) = (valid_rows(&got.to_vec_f64()?, &mask, d), valid_rows(&want.to_vec_f64()?, &mask, d));
    if g.is_empty() {
        return Err(fx.error("in.attention_mask marks no position valid: there is nothing to compare"));
    }
    Ok(vec![compare_slices(
        "out.last_hidden_state (valid positions)",
        &g,
        &w,
        opts.limit(Limit::Abs(fx.abs_limit(1e-5))),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_forward_kinds() {
        let ff = |p: &str| UMT5Config { feed_forward_proj: p.into(), ..UMT5Config::default() }.feed_forward();
        assert_eq!(ff("gated-gelu").unwrap(), FeedForward { gated: true, act: Activation::GeluTanh });
        assert_eq!(ff("gelu").unwrap(), FeedForward { gated: false, act: Activation::GeluErf });
        assert_eq!(ff("relu").unwrap(), FeedForward { gated: false, act: Activation::Relu });
        assert_eq!(ff("gated-silu").unwrap(), FeedForward { gated: true, act: Activation::Silu });
        assert!(ff("gated-foo").is_err());
        assert!(ff("a-b-c").is_err());
        assert_eq!(ff("gated-quick_gelu").unwrap(), FeedForward { gated: true, act: Activation::QuickGelu });
        assert_eq!(ff("relu6").unwrap(), FeedForward { gated: false, act: Activation::Relu6 });
        let xs = [-8f32, -1.5, -0.1, 0.0, 0.3, 2.0, 7.5];
        let x = Tensor::from_vec(xs.to_vec(), &[xs.len()]).unwrap();
        let q = Activation::QuickGelu.apply(&x).unwrap().to_vec_f32().unwrap();
        let r6 = Activation::Relu6.apply(&x).unwrap().to_vec_f32().unwrap();
        for ((v, q), r) in xs.iter().zip(q).zip(r6) {
            let want = v / (1.0 + (-1.702 * v).exp());
            assert!((q - want).abs() <= 1e-6 * (1.0 + want.abs()), "quick_gelu({v}) = {q}, want {want}");
            assert_eq!(r, v.clamp(0.0, 6.0));
        }
    }

    #[test]
    fn config_parsing_and_validation() {
        let c = UMT5Config::from_json(r#"{"d_model": 32, "num_heads": 4, "d_kv": 8, "architectures": ["x"]}"#).unwrap();
        assert_eq!((c.d_model, c.inner_dim(), c.vocab_size), (32, 32, 250112));
        assert!(UMT5Config::from_json(r#"{"d_model": 0}"#).is_err());
        assert!(UMT5Config::from_json(r#"{"relative_attention_num_buckets": 3}"#).is_err());
        assert!(UMT5Config::from_json(r#"{"relative_attention_num_buckets": 7}"#).is_ok());
        assert!(UMT5Config::from_json(r#"{"d_model": "big"}"#).unwrap_err().to_string().contains("d_model"));
        let x = UMT5Config::umt5_xxl_encoder();
        assert_eq!((x.vocab_size, x.d_model, x.inner_dim(), x.d_ff, x.num_layers), (256384, 4096, 4096, 10240, 24));
    }
}
